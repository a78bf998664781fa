-- Adaptive search (ASHA). An experiment may carry `search` (its YAML section as JSON). Each
-- run that reaches a rung gets a row in asha_rungs with its value there and whether it went
-- on; one that did not is asked to stop (`stop_requested`, passed to its worker like a
-- cancel) and ends `stopped`: not cancelled, not failed. Its checkpoints follow retention and
-- `best` considers them.
ALTER TABLE experiments ADD COLUMN search JSONB;
ALTER TABLE runs ADD COLUMN stop_requested BOOLEAN NOT NULL DEFAULT false;

ALTER TABLE runs DROP CONSTRAINT runs_state_check;
ALTER TABLE runs ADD CONSTRAINT runs_state_check CHECK (state IN
    ('pending', 'queued', 'running', 'succeeded', 'failed', 'cancelled', 'stopped'));
ALTER TABLE attempts DROP CONSTRAINT attempts_state_check;
ALTER TABLE attempts ADD CONSTRAINT attempts_state_check CHECK (state IN
    ('running', 'succeeded', 'failed', 'cancelled', 'lost', 'stopped'));

CREATE OR REPLACE FUNCTION runs_check_transition() RETURNS trigger AS $$
BEGIN
    IF OLD.state = NEW.state THEN
        RETURN NEW;
    END IF;
    IF (OLD.state, NEW.state) IN (
        ('pending', 'queued'), ('pending', 'cancelled'), ('pending', 'failed'),
        ('queued', 'running'), ('queued', 'cancelled'), ('queued', 'failed'),
        ('queued', 'stopped'),
        ('running', 'queued'), ('running', 'succeeded'), ('running', 'failed'),
        ('running', 'cancelled'), ('running', 'stopped'),
        ('failed', 'pending'), ('cancelled', 'pending')) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'run %: illegal state change % -> %', OLD.id, OLD.state, NEW.state;
END
$$ LANGUAGE plpgsql;

CREATE TABLE asha_rungs (
    experiment_id BIGINT NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    run_id        BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    -- k: the rung at min_steps * reduction_factor^k steps.
    rung          INT NOT NULL CHECK (rung >= 0),
    -- The step the value was read at (the first report at or past the rung).
    step          BIGINT NOT NULL,
    value         DOUBLE PRECISION NOT NULL,
    -- Its rank among the values the rung had seen, itself included (1 = best), and how many.
    rank          INT NOT NULL,
    seen          INT NOT NULL,
    promoted      BOOLEAN NOT NULL,
    decided_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, rung)
);
CREATE INDEX asha_rungs_experiment ON asha_rungs (experiment_id, rung);
