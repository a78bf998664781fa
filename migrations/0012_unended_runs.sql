-- Every run's end asks whether its experiment still has runs that have not ended (settle);
-- without this index that question walked all of a large sweep's runs, most of them ended
-- (0.25 ms per finished run in `plume bench --suite scheduling` at 10,000 runs).
CREATE INDEX runs_unended_by_experiment ON runs (experiment_id)
    WHERE state IN ('pending', 'queued', 'running');
