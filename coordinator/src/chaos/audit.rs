//! What `plume chaos` checks once the experiment is over, from the database and the raw
//! points: runs finished, points lost, duplicates, stale writes, and `best` against the
//! argmax over the stored curves. Each check can fail; the table says which.

use crate::store::Store;
use plume_proto::v1 as pb;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// How many of each fault.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FaultCounts {
    /// `kill -9` of a worker (restarted at once).
    pub worker_kills: u32,
    /// `kill -9` of the coordinator, restarted on the same port.
    pub coordinator_kills: u32,
    /// `pg_ctl restart -m fast`.
    pub pg_restarts: u32,
    /// A worker holding a run SIGSTOPped past its lease, then SIGCONTed.
    pub stops: u32,
}

impl FaultCounts {
    /// All faults.
    pub fn total(&self) -> u32 {
        self.worker_kills + self.coordinator_kills + self.pg_restarts + self.stops
    }
}

/// The result of a chaos run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Faults asked for.
    pub planned: FaultCounts,
    /// Faults injected before the experiment ended.
    pub injected: FaultCounts,
    /// Runs in the experiment.
    pub runs: u64,
    /// Runs that succeeded.
    pub succeeded: u64,
    /// Attempts over all runs (1 per run without faults).
    pub attempts: u64,
    /// Per-step metric points missing from a finished run's curves (steps 1 to its last
    /// checkpoint, which is its last step).
    pub points_lost: u64,
    /// (run, metric, step) stored more than once.
    pub duplicate_points: u64,
    /// Metric batches, checkpoints, artifacts and log lines stored after their attempt ended.
    pub stale_writes_accepted: u64,
    /// Writes of ended attempts that the coordinator refused (from the workers' logs).
    pub stale_writes_refused: u64,
    /// `best`'s top checkpoint is the argmax of the objective over the stored points at the
    /// checkpoints' steps.
    pub best_matches: bool,
    /// What `best` said and what the points say.
    pub best_detail: String,
    /// Seconds from submit to the experiment's end.
    pub wall_secs: f64,
}

impl Report {
    /// Whether every goal is met.
    pub fn passed(&self) -> bool {
        self.injected == self.planned
            && self.runs > 0
            && self.succeeded == self.runs
            && self.points_lost == 0
            && self.duplicate_points == 0
            && self.stale_writes_accepted == 0
            && self.best_matches
    }

    /// The report as a Markdown table.
    pub fn table(&self) -> String {
        let ok = |b: bool| if b { "yes" } else { "**NO**" };
        let (p, i) = (self.planned, self.injected);
        let mut t = String::new();
        let _ = writeln!(t, "| check | goal | measured | met |");
        let _ = writeln!(t, "|---|---|---|---|");
        let mut row = |check: &str, goal: &str, got: String, met: bool| {
            let _ = writeln!(t, "| {check} | {goal} | {got} | {} |", ok(met));
        };
        row(
            "faults injected (worker kill -9 / coordinator kill -9 / pg restart / SIGSTOP)",
            &format!(
                "{} / {} / {} / {}",
                p.worker_kills, p.coordinator_kills, p.pg_restarts, p.stops
            ),
            format!(
                "{} / {} / {} / {}",
                i.worker_kills, i.coordinator_kills, i.pg_restarts, i.stops
            ),
            i == p,
        );
        row(
            "runs finished",
            "100%",
            format!(
                "{}/{} ({:.0}%), {} attempts",
                self.succeeded,
                self.runs,
                100.0 * self.succeeded as f64 / self.runs.max(1) as f64,
                self.attempts
            ),
            self.runs > 0 && self.succeeded == self.runs,
        );
        row(
            "metric points lost before each run's last checkpoint",
            "0",
            self.points_lost.to_string(),
            self.points_lost == 0,
        );
        row(
            "duplicate (metric, step) points",
            "0",
            self.duplicate_points.to_string(),
            self.duplicate_points == 0,
        );
        row(
            "stale writes accepted",
            "0",
            format!(
                "{} ({} refused)",
                self.stale_writes_accepted, self.stale_writes_refused
            ),
            self.stale_writes_accepted == 0,
        );
        row(
            "`best` == argmax from raw points",
            "yes",
            self.best_detail.clone(),
            self.best_matches,
        );
        let _ = writeln!(t, "\nwall time {:.0} s", self.wall_secs);
        t
    }
}

/// Points lost and duplicated over every curve of the experiment's runs. A metric reported
/// at steps 1 and 2 is a per-step metric: its steps must be exactly 1..=the run's last step.
pub async fn curve_damage(store: &Store, exp: i64) -> anyhow::Result<(u64, u64)> {
    let series: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT r.id, s.name, r.step FROM metric_summaries s JOIN runs r ON r.id = s.run_id \
         WHERE r.experiment_id = $1 ORDER BY r.id, s.name",
    )
    .bind(exp)
    .fetch_all(&store.pool)
    .await?;
    let (mut lost, mut dup) = (0u64, 0u64);
    for (run, name, last_step) in series {
        let mut steps = store.curve(run, &name).await?.steps;
        let n = steps.len();
        steps.sort_unstable();
        steps.dedup();
        dup += (n - steps.len()) as u64;
        if steps.starts_with(&[1, 2]) {
            let present = steps.iter().filter(|&&s| s >= 1 && s <= last_step).count();
            lost += (last_step as u64).saturating_sub(present as u64);
        }
    }
    Ok((lost, dup))
}

/// Writes stored with a time after their attempt's end.
pub async fn stale_writes(store: &Store, exp: i64) -> anyhow::Result<u64> {
    let n: i64 = sqlx::query_scalar(
        "WITH a AS (SELECT a.run_id, a.attempt, a.ended_at FROM attempts a \
                    JOIN runs r ON r.id = a.run_id \
                    WHERE r.experiment_id = $1 AND a.ended_at IS NOT NULL) \
         SELECT (SELECT count(*) FROM metric_batches b JOIN a USING (run_id, attempt) \
                 WHERE b.at > a.ended_at) \
              + (SELECT count(*) FROM checkpoints c JOIN a USING (run_id, attempt) \
                 WHERE c.created_at > a.ended_at) \
              + (SELECT count(*) FROM logs l JOIN a USING (run_id, attempt) \
                 WHERE l.at > a.ended_at)",
    )
    .bind(exp)
    .fetch_one(&store.pool)
    .await?;
    Ok(n as u64)
}

/// Whether `best`'s top checkpoint holds the best objective value among the stored points at
/// every checkpoint's step (ties: any of the best).
pub async fn best_check(
    store: &Store,
    exp: i64,
    best: &pb::BestReply,
    metric: &str,
    maximise: bool,
) -> anyhow::Result<(bool, String)> {
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT c.id, c.run_id, c.step FROM checkpoints c JOIN runs r ON r.id = c.run_id \
         WHERE r.experiment_id = $1",
    )
    .bind(exp)
    .fetch_all(&store.pool)
    .await?;
    let mut curves: BTreeMap<i64, crate::store::Series> = BTreeMap::new();
    let mut scores: BTreeMap<i64, f64> = BTreeMap::new();
    for (id, run, step) in rows {
        let c = match curves.entry(run) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(store.curve(run, metric).await?)
            }
        };
        if let Some(i) = c.steps.iter().position(|&s| s == step) {
            scores.insert(id, c.values[i]);
        }
    }
    let better = |a: f64, b: f64| if maximise { a.max(b) } else { a.min(b) };
    let start = if maximise {
        f64::NEG_INFINITY
    } else {
        f64::INFINITY
    };
    let argmax = scores.values().copied().fold(start, better);
    let Some(top) = best.checkpoints.first() else {
        return Ok((false, "`best` returned nothing".into()));
    };
    let at_top = scores.get(&top.checkpoint_id).copied();
    let ok = argmax.is_finite() && at_top == Some(argmax) && (top.value - argmax).abs() < 1e-12;
    Ok((
        ok,
        format!(
            "best: checkpoint {} = {:.4}; argmax over {} checkpoints' points: {argmax:.4}",
            top.checkpoint_id,
            top.value,
            scores.len()
        ),
    ))
}
