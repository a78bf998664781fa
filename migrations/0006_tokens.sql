-- Access tokens, stored as SHA-256 hashes only: a copy of the database (a backup, a dump)
-- reveals no token. `plume token rotate` adds a token and gives the live ones of its role an
-- expiry (now, or after a grace period); a token past its expiry is refused.
CREATE TABLE tokens (
    id         BIGSERIAL PRIMARY KEY,
    role       TEXT NOT NULL CHECK (role IN ('user', 'worker')),
    sha256     BYTEA NOT NULL UNIQUE CHECK (length(sha256) = 32),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- NULL: live until the next rotation.
    expires_at TIMESTAMPTZ
);
CREATE INDEX tokens_role ON tokens (role);
