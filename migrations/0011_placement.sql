-- Placement and priorities (issue 12).
--   runs.gpus, runs.min_gpu_memory_mb: what a run asks for (`resources:`); 0 GPUs means any
--     one device slot, a CPU slot included.
--   runs.devices: the devices of its worker the running attempt holds, so a worker with
--     several slots hands each device to one run at a time.
--   experiments.priority: higher first; equal priorities share workers (fewest running runs
--     first, then the one served least recently, experiments.last_claim_at).
ALTER TABLE runs ADD COLUMN gpus INT NOT NULL DEFAULT 0 CHECK (gpus BETWEEN 0 AND 64);
ALTER TABLE runs ADD COLUMN min_gpu_memory_mb BIGINT NOT NULL DEFAULT 0 CHECK (min_gpu_memory_mb >= 0);
ALTER TABLE runs ADD COLUMN devices TEXT[] NOT NULL DEFAULT '{}';
ALTER TABLE experiments ADD COLUMN priority INT NOT NULL DEFAULT 0;
ALTER TABLE experiments ADD COLUMN last_claim_at TIMESTAMPTZ;
-- Claims look for the oldest queued run of one experiment at a time.
CREATE INDEX runs_queued_by_experiment ON runs (experiment_id, queued_at, id) WHERE state = 'queued';
-- Fair share counts each experiment's running runs at every claim.
CREATE INDEX runs_running_by_experiment ON runs (experiment_id) WHERE state = 'running';
