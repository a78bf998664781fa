//! ASHA's rung decisions, taken inside the ingestion of the metric batch that reaches a rung,
//! so a decision and the points it was made on commit together. Decisions of one experiment
//! are serialised by an advisory lock: each run is ranked against every value its rung has
//! recorded before it.

use super::*;
use crate::experiment::search::Asha;

impl Store {
    /// The ASHA rungs a run reached, in order.
    pub async fn rungs(&self, run: i64) -> Result<Vec<plume_proto::v1::RungResult>> {
        let rows: Vec<(i32, i64, f64, i32, i32, bool)> = sqlx::query_as(
            "SELECT rung, step, value, rank, seen, promoted FROM asha_rungs WHERE run_id = $1 \
             ORDER BY rung",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(rung, step, value, rank, seen, promoted)| plume_proto::v1::RungResult {
                    rung,
                    step,
                    value,
                    rank,
                    seen,
                    promoted,
                },
            )
            .collect())
    }
}

/// The advisory-lock key of an experiment's rungs.
fn rung_lock(exp: i64) -> i64 {
    0x4153_4841_0000_0000 ^ exp
}

/// Records the rungs `series` (the ASHA metric's new points) reaches for `run`, and decides
/// each. Returns whether the run must stop: a rung did not promote it, now or before.
pub(super) async fn observe(
    tx: &mut Tx<'_>,
    exp: i64,
    run: i64,
    asha: &Asha,
    series: &Series,
) -> Result<bool> {
    let last: Option<(i32, bool)> = sqlx::query_as(
        "SELECT rung, promoted FROM asha_rungs WHERE run_id = $1 ORDER BY rung DESC LIMIT 1",
    )
    .bind(run)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some((_, false)) = last {
        return Ok(true);
    }
    let next = last.map_or(0, |(k, _)| k as usize + 1);
    for (k, &rung_step) in asha.rungs().iter().enumerate().skip(next) {
        let Some(i) = series.steps.iter().position(|&s| s >= rung_step) else {
            break;
        };
        let (step, value) = (series.steps[i], series.values[i]);
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(rung_lock(exp))
            .execute(&mut **tx)
            .await?;
        let others: Vec<f64> = sqlx::query_scalar(
            "SELECT value FROM asha_rungs WHERE experiment_id = $1 AND rung = $2",
        )
        .bind(exp)
        .bind(k as i32)
        .fetch_all(&mut **tx)
        .await?;
        let rank = 1 + others.iter().filter(|&&o| asha.better(o, value)).count();
        let seen = others.len() + 1;
        let promoted = asha.promotes(rank, seen);
        sqlx::query(
            "INSERT INTO asha_rungs (experiment_id, run_id, rung, step, value, rank, seen, promoted) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(exp)
        .bind(run)
        .bind(k as i32)
        .bind(step)
        .bind(value)
        .bind(rank as i32)
        .bind(seen as i32)
        .bind(promoted)
        .execute(&mut **tx)
        .await?;
        let verdict = if promoted { "promoted" } else { "stopped" };
        let message = format!(
            "ASHA rung {k} (step {rung_step}): {} {value:.4} at step {step}, rank {rank} of \
             {seen} (the top {} go on): {verdict}",
            asha.metric,
            seen.div_ceil(asha.reduction_factor as usize).max(1)
        );
        event(tx, run, "asha", &message).await?;
        if !promoted {
            sqlx::query("UPDATE runs SET stop_requested = true WHERE id = $1")
                .bind(run)
                .execute(&mut **tx)
                .await?;
            return Ok(true);
        }
    }
    Ok(false)
}
