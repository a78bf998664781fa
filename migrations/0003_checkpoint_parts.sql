-- Checkpoints in two parts: weights, which every reader needs, and resume state (optimizer
-- moments, a GAN's discriminator), which only a resume needs. Only a run's latest checkpoint
-- keeps its state, and a finished run's only when its experiment asks (keep.final_state).
-- `state_size`: bytes of resume state the checkpoint still carries (0 once dropped);
-- `state_dropped`: whether it was dropped (a download `--with-state` then says so).
ALTER TABLE checkpoints ADD COLUMN state_size BIGINT NOT NULL DEFAULT 0;
ALTER TABLE checkpoints ADD COLUMN state_dropped BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE experiments ADD COLUMN keep_final_state BOOLEAN NOT NULL DEFAULT false;
-- How a chunk's bytes are kept: 0 as they are; 1 as the three low byte planes of its f32
-- values followed by the deflated high plane (sign and exponent, which repeat; about 14% of a
-- trained tensor's bytes saved). `size` stays the logical size; `data` may be shorter.
ALTER TABLE blob_chunks ADD COLUMN encoding SMALLINT NOT NULL DEFAULT 0;

-- Which checkpoint or artifact references which chunk, kept by triggers, so that garbage
-- collection asks the index about the chunks of what it deleted instead of scanning every
-- row's chunk array (issue 15: 16,000 chunks out of 10,000 checkpoints).
CREATE TABLE chunk_refs (
    hash          BYTEA NOT NULL,
    checkpoint_id BIGINT REFERENCES checkpoints (id) ON DELETE CASCADE,
    artifact_id   BIGINT REFERENCES artifacts (id) ON DELETE CASCADE
);
CREATE INDEX chunk_refs_hash ON chunk_refs (hash);
CREATE INDEX chunk_refs_checkpoint ON chunk_refs (checkpoint_id);
CREATE INDEX chunk_refs_artifact ON chunk_refs (artifact_id);
INSERT INTO chunk_refs (hash, checkpoint_id) SELECT DISTINCT unnest(chunks), id FROM checkpoints;
INSERT INTO chunk_refs (hash, artifact_id) SELECT DISTINCT unnest(chunks), id FROM artifacts;

-- One trigger function for both tables: a row's refs are rewritten from its `chunks`.
CREATE FUNCTION sync_chunk_refs() RETURNS trigger AS $$
BEGIN
    IF TG_TABLE_NAME = 'checkpoints' THEN
        DELETE FROM chunk_refs WHERE checkpoint_id = NEW.id;
        INSERT INTO chunk_refs (hash, checkpoint_id) SELECT DISTINCT unnest(NEW.chunks), NEW.id;
    ELSE
        DELETE FROM chunk_refs WHERE artifact_id = NEW.id;
        INSERT INTO chunk_refs (hash, artifact_id) SELECT DISTINCT unnest(NEW.chunks), NEW.id;
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER checkpoints_chunk_refs AFTER INSERT OR UPDATE OF chunks ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION sync_chunk_refs();
CREATE TRIGGER artifacts_chunk_refs AFTER INSERT OR UPDATE OF chunks ON artifacts
    FOR EACH ROW EXECUTE FUNCTION sync_chunk_refs();
