//! Following runs live, written once for both of its readers: gRPC `WatchMetrics` (the CLI's
//! `plume watch`) and the dashboard's server-sent events. A follower holds a cursor per run
//! (the id of the last metric chunk it has seen), reads what came after in bounded pieces, and
//! reports the runs whose progress changed; its readers only format what it saw.

use crate::states::RunState;
use crate::store::{NewChunk, RunProgress, Store, StoreError};
use std::collections::{BTreeMap, HashMap};

/// Most chunks read per look (a reader far behind catches up in pieces).
pub const CHUNKS_PER_READ: i64 = 2000;

/// Some runs of one experiment, followed from per-run cursors.
pub struct Follower {
    store: Store,
    experiment: i64,
    cursors: BTreeMap<i64, i64>,
    with_points: bool,
    /// The last progress reported per run: (state, step, total steps, attempt).
    reported: HashMap<i64, (RunState, i64, i64, i32)>,
}

/// What one look saw.
pub struct Look {
    /// New metric chunks in id order (none when points are not followed).
    pub chunks: Vec<NewChunk>,
    /// Whether the chunks reached the present (otherwise look again at once).
    pub caught_up: bool,
    /// Followed runs whose state, step or attempt changed since the last look, with whether
    /// the state itself changed.
    pub changed: Vec<(RunProgress, bool)>,
    /// Every followed run has ended and every point was read: nothing more will come.
    pub finished: bool,
}

impl Follower {
    /// Follows the runs `cursors` names (run id -> chunk id to start after; 0 from the
    /// start), with or without their metric points.
    pub fn new(
        store: Store,
        experiment: i64,
        cursors: BTreeMap<i64, i64>,
        with_points: bool,
    ) -> Follower {
        Follower {
            store,
            experiment,
            cursors,
            with_points,
            reported: HashMap::new(),
        }
    }

    /// The cursors after the last look.
    pub fn cursors(&self) -> &BTreeMap<i64, i64> {
        &self.cursors
    }

    /// Reads the points after the cursors (advancing them) and the runs' progress.
    pub async fn look(&mut self) -> Result<Look, StoreError> {
        let mut chunks = Vec::new();
        if self.with_points {
            let pairs: Vec<(i64, i64)> = self.cursors.iter().map(|(r, c)| (*r, *c)).collect();
            chunks = self.store.chunks_after(&pairs, CHUNKS_PER_READ).await?;
            for ch in &chunks {
                self.cursors.insert(ch.run, ch.id);
            }
        }
        let caught_up = (chunks.len() as i64) < CHUNKS_PER_READ;
        let mut changed = Vec::new();
        let mut all_ended = true;
        for row in self.store.progress(self.experiment).await? {
            if !self.cursors.contains_key(&row.id) {
                continue;
            }
            all_ended &= row.state.is_final();
            let now = (row.state, row.step, row.total_steps, row.attempt);
            let before = self.reported.insert(row.id, now);
            if before != Some(now) {
                let state_changed = before.is_none_or(|b| b.0 != row.state);
                changed.push((row, state_changed));
            }
        }
        Ok(Look {
            chunks,
            caught_up,
            changed,
            finished: all_ended && caught_up,
        })
    }
}
