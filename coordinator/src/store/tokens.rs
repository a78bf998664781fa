//! Access tokens as SHA-256 hashes: seeding at start, rotation, and the live set that the
//! services check requests against.

use super::*;

/// Who a token lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenRole {
    /// The CLI, the dashboard, the Python client.
    User,
    /// Worker processes.
    Worker,
}

impl TokenRole {
    /// The name stored in the `role` column.
    pub fn name(self) -> &'static str {
        match self {
            TokenRole::User => "user",
            TokenRole::Worker => "worker",
        }
    }

    fn parse(s: &str) -> Option<TokenRole> {
        match s {
            "user" => Some(TokenRole::User),
            "worker" => Some(TokenRole::Worker),
            _ => None,
        }
    }
}

/// A token the services accept, until `expires` if it is set.
#[derive(Debug, Clone)]
pub struct LiveToken {
    /// Its role.
    pub role: TokenRole,
    /// SHA-256 of the token.
    pub sha256: [u8; 32],
    /// When a rotation ends it (None: live until the next rotation).
    pub expires: Option<std::time::SystemTime>,
}

/// What seeding a token at start did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seeded {
    /// The role had no token: this one is now its token.
    Inserted,
    /// The token is already live.
    AlreadyLive,
    /// The role's tokens were rotated since: this one is not accepted.
    Superseded,
}

/// How a token given at start is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedMode {
    /// Only into a role with no token yet (`plume serve`: after a rotation the database
    /// rules, and a restart with the old token in its environment does not revive it).
    IfNone,
    /// In place of every other token of the role (`plume up`, which writes fresh tokens to
    /// its endpoint file at each start).
    Replace,
}

/// SHA-256 of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Serialises every change to the tokens (two coordinators seeding on one database, a
/// rotation during a start) for the rest of the transaction.
async fn lock_tokens(tx: &mut Tx<'_>) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('plume-tokens'))")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Store {
    /// Takes `token` as a token of `role` according to `mode`.
    pub async fn seed_token(&self, role: TokenRole, token: &str, mode: SeedMode) -> Result<Seeded> {
        let hash = token_hash(token);
        let mut tx = self.pool.begin().await?;
        lock_tokens(&mut tx).await?;
        let (known, live): (i64, bool) = sqlx::query_as(
            "SELECT count(*), COALESCE(bool_or(sha256 = $2 AND \
             (expires_at IS NULL OR expires_at > now())), false) \
             FROM tokens WHERE role = $1",
        )
        .bind(role.name())
        .bind(&hash[..])
        .fetch_one(&mut *tx)
        .await?;
        let seeded = match mode {
            SeedMode::IfNone if live => Seeded::AlreadyLive,
            SeedMode::IfNone if known > 0 => Seeded::Superseded,
            _ => {
                sqlx::query(
                    "UPDATE tokens SET expires_at = now() WHERE role = $1 AND sha256 <> $2 \
                     AND (expires_at IS NULL OR expires_at > now())",
                )
                .bind(role.name())
                .bind(&hash[..])
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO tokens (role, sha256) VALUES ($1, $2) \
                     ON CONFLICT (sha256) DO UPDATE SET expires_at = NULL, role = $1",
                )
                .bind(role.name())
                .bind(&hash[..])
                .execute(&mut *tx)
                .await?;
                if live {
                    Seeded::AlreadyLive
                } else {
                    Seeded::Inserted
                }
            }
        };
        tx.commit().await?;
        Ok(seeded)
    }

    /// Makes `token` a token of `role` and ends the others of that role after `grace`;
    /// returns when they end.
    pub async fn rotate_token(
        &self,
        role: TokenRole,
        token: &str,
        grace: Duration,
    ) -> Result<std::time::SystemTime> {
        let mut tx = self.pool.begin().await?;
        lock_tokens(&mut tx).await?;
        let ends: sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc> =
            sqlx::query_scalar("SELECT now() + make_interval(secs => $1::float8)")
                .bind(grace.as_secs_f64())
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query(
            "UPDATE tokens SET expires_at = LEAST(COALESCE(expires_at, $2), $2) \
             WHERE role = $1 AND (expires_at IS NULL OR expires_at > now())",
        )
        .bind(role.name())
        .bind(ends)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO tokens (role, sha256) VALUES ($1, $2)")
            .bind(role.name())
            .bind(&token_hash(token)[..])
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ends.into())
    }

    /// Every token not yet expired.
    pub async fn live_tokens(&self) -> Result<Vec<LiveToken>> {
        let rows: Vec<(
            String,
            Vec<u8>,
            Option<sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc>>,
        )> = sqlx::query_as(
            "SELECT role, sha256, expires_at FROM tokens \
                 WHERE expires_at IS NULL OR expires_at > now()",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(role, hash, expires)| {
                Some(LiveToken {
                    role: TokenRole::parse(&role)?,
                    sha256: hash.try_into().ok()?,
                    expires: expires.map(Into::into),
                })
            })
            .collect())
    }
}
