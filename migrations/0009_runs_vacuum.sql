-- Claims scan the partial index of queued runs from its oldest entry, and every claimed run
-- leaves a dead entry there until `runs` is vacuumed (issue 12's scheduling bench: 1.3 ms
-- per claim after thousands of claims). Vacuum `runs` after 2% of it changes rather than 20%.
ALTER TABLE runs SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 200);
