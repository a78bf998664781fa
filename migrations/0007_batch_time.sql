-- When each metric batch was accepted, so an audit (`plume chaos`) can prove that no attempt
-- wrote after it ended: a stale write that slipped past the fence would carry a later time
-- than its attempt's `ended_at`. Checkpoints, artifacts and logs carry their times already.
ALTER TABLE metric_batches ADD COLUMN at TIMESTAMPTZ NOT NULL DEFAULT now();
