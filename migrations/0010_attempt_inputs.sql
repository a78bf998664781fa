-- Lineage: the upstream checkpoints each attempt was handed, as [[field, checkpoint id], ...],
-- so a rerun or an extension can be seen (and tested) to reuse a stage's checkpoint rather
-- than train it again.
ALTER TABLE attempts ADD COLUMN inputs JSONB NOT NULL DEFAULT '[]';
