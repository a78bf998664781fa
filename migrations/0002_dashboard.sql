-- The dashboard's wall-time axis: when the coordinator stored each chunk of points.
ALTER TABLE metric_chunks ADD COLUMN reported_at TIMESTAMPTZ NOT NULL DEFAULT now();
-- A level of detail for long curves: each chunk's first, min, max and last point per bucket
-- of 64 (NULL for chunks too short to gain from it). A chart of a million points reads these
-- (1/16 of the bytes) instead of every point, and still sees every extreme.
ALTER TABLE metric_chunks ADD COLUMN overview_steps BYTEA;
ALTER TABLE metric_chunks ADD COLUMN overview_vals BYTEA;
-- Live streams read a run's chunks newer than a cursor (chunk id).
CREATE INDEX metric_chunks_run_cursor ON metric_chunks (run_id, id);
