-- `plume rerun`: a failed or cancelled run may go back to pending (then queued), and its
-- restart budget counts lost attempts from `restart_base`, the attempt it was rerun at.
ALTER TABLE runs ADD COLUMN restart_base INT NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION runs_check_transition() RETURNS trigger AS $$
BEGIN
    IF OLD.state = NEW.state THEN
        RETURN NEW;
    END IF;
    IF (OLD.state, NEW.state) IN (
        ('pending', 'queued'), ('pending', 'cancelled'), ('pending', 'failed'),
        ('queued', 'running'), ('queued', 'cancelled'), ('queued', 'failed'),
        ('running', 'queued'), ('running', 'succeeded'), ('running', 'failed'),
        ('running', 'cancelled'), ('failed', 'pending'), ('cancelled', 'pending')) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'run %: illegal state change % -> %', OLD.id, OLD.state, NEW.state;
END
$$ LANGUAGE plpgsql;
