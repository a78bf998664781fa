//! What follows a run's end: its dependants queued or failed, retention, and the
//! experiment's state, serialised per experiment.

use super::checkpoints::retain;
use super::*;

/// The advisory-lock key space of experiment-state settlement (`"SETT"`, xor the id).
const SETTLE_LOCK: i64 = 0x5345_5454_0000_0000;

/// After a run reaches a final state: queue dependants whose needs all succeeded (or fail
/// them if this one did not), apply checkpoint retention, settle the experiment's state.
/// `experiment` is the run's.
pub(super) async fn settle(
    tx: &mut Tx<'_>,
    run: i64,
    experiment: i64,
    state: RunState,
) -> Result<()> {
    if state == RunState::Succeeded {
        sqlx::query(
            "UPDATE runs r SET state = $2, queued_at = clock_timestamp() WHERE r.state = $3 \
             AND r.id IN (SELECT run_id FROM run_deps WHERE upstream_id = $1) \
             AND NOT EXISTS (SELECT 1 FROM run_deps d JOIN runs u ON u.id = d.upstream_id \
                             WHERE d.run_id = r.id AND u.state <> $4)",
        )
        .bind(run)
        .bind(RunState::Queued)
        .bind(RunState::Pending)
        .bind(RunState::Succeeded)
        .execute(&mut **tx)
        .await?;
    } else {
        // Fail everything downstream, transitively.
        let name: String = sqlx::query_scalar("SELECT name FROM runs WHERE id = $1")
            .bind(run)
            .fetch_one(&mut **tx)
            .await?;
        sqlx::query(
            "WITH RECURSIVE down(id) AS (SELECT run_id FROM run_deps WHERE upstream_id = $1 \
             UNION SELECT d.run_id FROM run_deps d JOIN down ON d.upstream_id = down.id) \
             UPDATE runs SET state = $3, error = $2 WHERE id IN (SELECT id FROM down) AND state = $4",
        )
        .bind(run)
        .bind(format!("upstream run {name} {state}"))
        .bind(RunState::Failed)
        .bind(RunState::Pending)
        .execute(&mut **tx)
        .await?;
    }
    // A stopped run is finished like a succeeded one: its checkpoints compete for `best`.
    retain(
        tx,
        run,
        matches!(state, RunState::Succeeded | RunState::Stopped),
    )
    .await?;
    // Two runs of one experiment ending at once would each see the other still running
    // (neither commit is visible to the other's statement) and leave the experiment running
    // for ever. A lock per experiment orders them: the statement after it takes a fresh
    // snapshot, which sees the run that ended first. An advisory lock, not the experiment
    // row's: every event insert holds that row's key-share lock, which a row lock would
    // wait on (and deadlock with the other run's settle).
    lock_experiment(tx, experiment).await?;
    // The unended states are literals, as in `runs_unended_by_experiment`'s predicate, so a
    // cached plan uses that index.
    sqlx::query(
        "UPDATE experiments e SET state = CASE \
            WHEN EXISTS (SELECT 1 FROM runs WHERE experiment_id = e.id AND state = $2) THEN $3 \
            WHEN EXISTS (SELECT 1 FROM runs WHERE experiment_id = e.id AND state = $4) THEN $5 \
            ELSE $6 END \
         WHERE e.id = $1 AND NOT EXISTS (SELECT 1 FROM runs WHERE experiment_id = e.id \
                                         AND state IN ('pending', 'queued', 'running'))",
    )
    .bind(experiment)
    .bind(RunState::Failed)
    .bind(ExperimentState::Failed)
    .bind(RunState::Cancelled)
    .bind(ExperimentState::Cancelled)
    .bind(ExperimentState::Succeeded)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Takes the experiment's settlement lock until the transaction ends: settlement and
/// anything that adds runs to the experiment (`extend`) happen one at a time.
pub(super) async fn lock_experiment(tx: &mut Tx<'_>, experiment: i64) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1 # $2)")
        .bind(SETTLE_LOCK)
        .bind(experiment)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The settlement statement and `runs_unended_by_experiment` name the unended states as
    /// literals (so a cached plan can use the index): they must be exactly these.
    #[test]
    fn the_literal_unended_states_are_the_unended_states() {
        assert_eq!(
            super::unended_run_states(),
            ["pending", "queued", "running"]
        );
    }
}
