-- Plume's store. Postgres is the single source of truth: the coordinator keeps nothing that
-- is not here, so a restarted coordinator recovers everything.

CREATE TABLE experiments (
    id               BIGSERIAL PRIMARY KEY,
    name             TEXT NOT NULL,
    file_name        TEXT NOT NULL,
    yaml             TEXT NOT NULL,
    objective_metric TEXT NOT NULL,
    objective_mode   TEXT NOT NULL CHECK (objective_mode IN ('max', 'min')),
    max_restarts     INT NOT NULL CHECK (max_restarts >= 0),
    keep_best        INT NOT NULL CHECK (keep_best >= 0),
    keep_latest      INT NOT NULL CHECK (keep_latest >= 1),
    state            TEXT NOT NULL DEFAULT 'running'
                     CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX experiments_name ON experiments (name, id DESC);

CREATE TABLE workers (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT NOT NULL,
    capabilities  JSONB NOT NULL,
    registered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A run's life: pending (waiting for its needs) -> queued -> running -> succeeded | failed |
-- cancelled; running -> queued when its attempt is lost and restarts remain.
CREATE TABLE runs (
    id               BIGSERIAL PRIMARY KEY,
    experiment_id    BIGINT NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    name             TEXT NOT NULL,
    job_kind         TEXT NOT NULL,
    config           TEXT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempt          INT NOT NULL DEFAULT 0,
    lease_worker     BIGINT REFERENCES workers (id),
    lease_expires    TIMESTAMPTZ,
    cancel_requested BOOLEAN NOT NULL DEFAULT false,
    step             BIGINT NOT NULL DEFAULT 0,
    total_steps      BIGINT NOT NULL DEFAULT 0,
    error            TEXT,
    queued_at        TIMESTAMPTZ,
    UNIQUE (experiment_id, name),
    -- Exactly the running runs hold a lease.
    CHECK ((state = 'running') = (lease_worker IS NOT NULL AND lease_expires IS NOT NULL))
);
CREATE INDEX runs_queued ON runs (queued_at, id) WHERE state = 'queued';
CREATE INDEX runs_leases ON runs (lease_expires) WHERE state = 'running';

CREATE FUNCTION runs_check_transition() RETURNS trigger AS $$
BEGIN
    IF OLD.state = NEW.state THEN
        RETURN NEW;
    END IF;
    IF (OLD.state, NEW.state) IN (
        ('pending', 'queued'), ('pending', 'cancelled'), ('pending', 'failed'),
        ('queued', 'running'), ('queued', 'cancelled'), ('queued', 'failed'),
        ('running', 'queued'), ('running', 'succeeded'), ('running', 'failed'),
        ('running', 'cancelled')) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'run %: illegal state change % -> %', OLD.id, OLD.state, NEW.state;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER runs_transition BEFORE UPDATE OF state ON runs
    FOR EACH ROW EXECUTE FUNCTION runs_check_transition();

-- `run_id` needs `upstream_id`; its final checkpoint fills the config field `field`.
CREATE TABLE run_deps (
    run_id      BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    upstream_id BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    field       TEXT NOT NULL,
    PRIMARY KEY (run_id, upstream_id, field)
);
CREATE INDEX run_deps_upstream ON run_deps (upstream_id);

CREATE TABLE attempts (
    run_id            BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attempt           INT NOT NULL,
    worker_id         BIGINT NOT NULL REFERENCES workers (id),
    state             TEXT NOT NULL DEFAULT 'running'
                      CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled', 'lost')),
    started_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    ended_at          TIMESTAMPTZ,
    resumed_from_step BIGINT NOT NULL DEFAULT 0,
    message           TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, attempt)
);

-- Idempotency of metric batches: a resent (run, attempt, seq) is acknowledged, not re-applied.
CREATE TABLE metric_batches (
    run_id  BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attempt INT NOT NULL,
    seq     BIGINT NOT NULL,
    PRIMARY KEY (run_id, attempt, seq)
);

-- Metric points, one row per (batch, metric name) with the points packed (little-endian i64
-- steps, f64 values): a row per point caps ingestion near 0.24 M rows/s on these machines;
-- packed rows go much further. A curve is the concatenation of its rows by first_step. Points
-- after a resumed attempt's starting step are cut from these rows when it starts, so no
-- (run, name, step) appears twice.
CREATE TABLE metric_chunks (
    id         BIGSERIAL PRIMARY KEY,
    run_id     BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    first_step BIGINT NOT NULL,
    last_step  BIGINT NOT NULL,
    steps      BYTEA NOT NULL,
    vals       BYTEA NOT NULL
);
CREATE INDEX metric_chunks_curve ON metric_chunks (run_id, name, first_step);

-- Per run and metric: what list pages and `best` read instead of raw points.
CREATE TABLE metric_summaries (
    run_id     BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    last_step  BIGINT NOT NULL,
    last_value DOUBLE PRECISION NOT NULL,
    min_value  DOUBLE PRECISION NOT NULL,
    max_value  DOUBLE PRECISION NOT NULL,
    count      BIGINT NOT NULL,
    PRIMARY KEY (run_id, name)
);

-- Content-addressed chunks of checkpoints and artifacts. Checkpoints are cut at tensor
-- boundaries, so tensors that did not change (a frozen BERT layer, shared by many runs) are
-- stored once.
CREATE TABLE blob_chunks (
    hash BYTEA PRIMARY KEY,
    size INT NOT NULL,
    data BYTEA NOT NULL
);
-- Tensors are incompressible: skip pglz, which costs CPU and saves nothing.
ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE checkpoints (
    id         BIGSERIAL PRIMARY KEY,
    run_id     BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attempt    INT NOT NULL,
    step       BIGINT NOT NULL,
    size       BIGINT NOT NULL,
    sha256     TEXT NOT NULL,
    chunks     BYTEA[] NOT NULL,
    -- The experiment's objective metric at this step (NULL until reported).
    objective  DOUBLE PRECISION,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (run_id, step)
);
CREATE INDEX checkpoints_chunks ON checkpoints USING gin (chunks);

CREATE TABLE artifacts (
    id         BIGSERIAL PRIMARY KEY,
    run_id     BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step       BIGINT NOT NULL,
    name       TEXT NOT NULL,
    size       BIGINT NOT NULL,
    chunks     BYTEA[] NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (run_id, name, step)
);
CREATE INDEX artifacts_chunks ON artifacts USING gin (chunks);

-- What happened, for people: state changes, lost attempts, restarts, cancels.
CREATE TABLE events (
    id            BIGSERIAL PRIMARY KEY,
    experiment_id BIGINT REFERENCES experiments (id) ON DELETE CASCADE,
    run_id        BIGINT REFERENCES runs (id) ON DELETE CASCADE,
    at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    kind          TEXT NOT NULL,
    message       TEXT NOT NULL
);
CREATE INDEX events_experiment ON events (experiment_id, id);

CREATE TABLE logs (
    id      BIGSERIAL PRIMARY KEY,
    run_id  BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attempt INT NOT NULL,
    at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    line    TEXT NOT NULL
);
CREATE INDEX logs_run ON logs (run_id, id);
