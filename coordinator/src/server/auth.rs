//! Who may call: the live token hashes, cached in memory for the services' synchronous
//! checks and refreshed from Postgres (the truth) every `Intervals::token_refresh`, and at
//! once after a rotation here. Another coordinator on the same database sees a rotation
//! within one refresh.

use crate::store::{token_hash, LiveToken, SeedMode, Seeded, Store, TokenRole};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

/// The tokens the services accept.
#[derive(Default)]
pub struct Tokens {
    live: RwLock<Vec<LiveToken>>,
}

/// A fresh random token: 32 bytes as hex.
pub fn random_token() -> String {
    use rand::Rng;
    let mut b = [0u8; 32];
    rand::rng().fill(&mut b);
    hex::encode(b)
}

impl Tokens {
    /// Whether `token` is a live token of `role`. Compares against every live hash without
    /// stopping early, so timing says nothing about which (if any) matched.
    pub fn accepts(&self, role: TokenRole, token: &str) -> bool {
        if token.is_empty() {
            return false;
        }
        let got = token_hash(token);
        let now = SystemTime::now();
        self.live
            .read()
            .expect("token lock")
            .iter()
            .fold(false, |ok, t| {
                let same = t.sha256.iter().zip(got).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0;
                ok | (same && t.role == role && t.expires.is_none_or(|e| now < e))
            })
    }

    /// Re-reads the live tokens from the store.
    pub async fn refresh(&self, store: &Store) -> Result<(), crate::store::StoreError> {
        let live = store.live_tokens().await?;
        *self.live.write().expect("token lock") = live;
        Ok(())
    }

    /// Keeps the cache fresh while it is in use; stops when the coordinator is dropped.
    pub fn spawn_refresh(self: &Arc<Self>, store: Store, every: Duration) {
        let weak: Weak<Tokens> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(tokens) = weak.upgrade() else { return };
                if let Err(e) = tokens.refresh(&store).await {
                    tracing::warn!("refreshing tokens: {e}");
                }
            }
        });
    }
}

/// Seeds the tokens given at start; warns when a given token was rotated away and is refused.
pub async fn seed(
    store: &Store,
    role: TokenRole,
    token: Option<&str>,
    mode: SeedMode,
) -> anyhow::Result<()> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        let any = store.live_tokens().await?.iter().any(|t| t.role == role);
        anyhow::ensure!(
            any,
            "no {0} token yet: give one at the first start (--{0}-token or PLUME_{1}_TOKEN)",
            role.name(),
            role.name().to_uppercase()
        );
        return Ok(());
    };
    if store.seed_token(role, token, mode).await? == Seeded::Superseded {
        eprintln!(
            "warning: the {} token given at start was rotated away and is refused; the \
             database's tokens rule (see `plume token rotate`)",
            role.name()
        );
    }
    Ok(())
}
