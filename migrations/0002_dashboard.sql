-- The dashboard's wall-time axis: when the coordinator stored each chunk of points.
ALTER TABLE metric_chunks ADD COLUMN reported_at TIMESTAMPTZ NOT NULL DEFAULT now();
-- Live streams read a run's chunks newer than a cursor (chunk id).
CREATE INDEX metric_chunks_run_cursor ON metric_chunks (run_id, id);
