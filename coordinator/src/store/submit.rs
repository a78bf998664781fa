//! Storing experiments: a new one (`plume submit`), or new runs and sweep points added to one
//! that exists (`plume submit --extend`), which reuses the runs it already has, and so their
//! checkpoints, instead of training them again.

use super::*;
use crate::experiment::PlannedRun;

/// What `extend` did.
#[derive(Debug, Clone, Default)]
pub struct Extension {
    /// The runs added, in dependency order.
    pub added: Vec<RunRow>,
    /// Runs of the file that already existed with the same job, config and needs: reused.
    pub reused: Vec<String>,
    /// Runs of the experiment that the file does not name: kept as they are.
    pub untouched: Vec<String>,
    /// Added runs that wait on an existing run which failed or was cancelled, with it.
    pub blocked: Vec<(String, String)>,
}

/// An existing run as an extension compares it.
struct Existing {
    id: i64,
    job_kind: String,
    config: String,
    state: RunState,
    gpus: i32,
    min_gpu_memory_mb: i64,
    /// `(field, upstream run name)`, sorted.
    inputs: Vec<(String, String)>,
}

impl Store {
    /// Stores a validated experiment: its runs (those without needs queued at once), their
    /// dependencies and a submit event, in one transaction.
    pub async fn submit(
        &self,
        exp: &Experiment,
        file_name: &str,
        yaml: &str,
    ) -> Result<(i64, Vec<RunRow>)> {
        let mut tx = self.pool.begin().await?;
        let id = insert_experiment(&mut tx, exp, file_name, yaml).await?;
        let mut ids: HashMap<String, i64> = HashMap::new();
        let mut rows = Vec::new();
        for r in &exp.runs {
            let state = if r.inputs.is_empty() {
                RunState::Queued
            } else {
                RunState::Pending
            };
            rows.push(insert_run(&mut tx, id, r, state, &mut ids).await?);
        }
        experiment_event(
            &mut tx,
            id,
            "submitted",
            &format!("{} runs from {file_name}", exp.runs.len()),
        )
        .await?;
        tx.commit().await?;
        Ok((id, rows))
    }

    /// Adds the runs of `exp` that experiment `id` lacks. A run it already has must match
    /// exactly (job, config, needs) and is reused with its checkpoints; the experiment-wide
    /// settings (objective, restarts, retention, search) must match too. Any conflict is an
    /// error listing every one, and nothing is stored. New runs whose needs have all
    /// succeeded are queued at once. With `dry_run` it reports the same and stores nothing
    /// (the transaction is rolled back).
    pub async fn extend(
        &self,
        id: i64,
        exp: &Experiment,
        file_name: &str,
        dry_run: bool,
    ) -> Result<Extension> {
        let mut tx = self.pool.begin().await?;
        // Serialises with the settlement of this experiment's runs, so the experiment's state
        // is recomputed after the runs are added.
        super::settle::lock_experiment(&mut tx, id).await?;
        let mut conflicts = setting_conflicts(&mut tx, id, exp).await?;
        let existing = existing_runs(&mut tx, id).await?;
        let mut ext = Extension::default();
        let mut fresh: Vec<&PlannedRun> = vec![];
        for r in &exp.runs {
            match existing.get(&r.name) {
                None => fresh.push(r),
                Some(old) => match run_conflict(old, r) {
                    Some(c) => conflicts.push(c),
                    None => ext.reused.push(r.name.clone()),
                },
            }
        }
        let total = existing.len() + fresh.len();
        if total > crate::experiment::MAX_RUNS {
            conflicts.push(format!(
                "the experiment would have {total} runs; at most {} are allowed",
                crate::experiment::MAX_RUNS
            ));
        }
        if !conflicts.is_empty() {
            return Err(StoreError::Invalid(format!(
                "{file_name} conflicts with experiment {id}; nothing was changed:\n  - {}",
                conflicts.join("\n  - ")
            )));
        }
        let named: std::collections::HashSet<&str> =
            exp.runs.iter().map(|r| r.name.as_str()).collect();
        ext.untouched = existing
            .keys()
            .filter(|n| !named.contains(n.as_str()))
            .cloned()
            .collect();
        ext.untouched.sort();
        let mut ids: HashMap<String, i64> =
            existing.iter().map(|(n, e)| (n.clone(), e.id)).collect();
        for r in fresh {
            let state = first_state(r, &existing, &mut ext.blocked);
            ext.added
                .push(insert_run(&mut tx, id, r, state, &mut ids).await?);
        }
        if !ext.added.is_empty() {
            sqlx::query("UPDATE experiments SET state = $2 WHERE id = $1")
                .bind(id)
                .bind(ExperimentState::Running)
                .execute(&mut *tx)
                .await?;
        }
        experiment_event(
            &mut tx,
            id,
            "extended",
            &format!(
                "{} runs added from {file_name}, {} reused",
                ext.added.len(),
                ext.reused.len()
            ),
        )
        .await?;
        if dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(ext)
    }
}

/// An added run starts queued when every run it needs already exists and succeeded, pending
/// otherwise; one that waits on a run that ended without succeeding is noted in `blocked`.
fn first_state(
    r: &PlannedRun,
    existing: &HashMap<String, Existing>,
    blocked: &mut Vec<(String, String)>,
) -> RunState {
    let mut state = RunState::Queued;
    for (_, up) in &r.inputs {
        match existing.get(up).map(|e| e.state) {
            Some(RunState::Succeeded) => {}
            Some(s @ (RunState::Failed | RunState::Cancelled | RunState::Stopped)) => {
                blocked.push((r.name.clone(), format!("{up} ({s})")));
                state = RunState::Pending;
            }
            _ => state = RunState::Pending,
        }
    }
    state
}

/// Why an existing run cannot stand for the file's run of the same name, if it cannot.
fn run_conflict(old: &Existing, r: &PlannedRun) -> Option<String> {
    let mut inputs = r.inputs.clone();
    inputs.sort();
    if old.job_kind != r.job {
        Some(format!(
            "run {} exists as a {} job; the file makes it a {} job",
            r.name, old.job_kind, r.job
        ))
    } else if old.inputs != inputs {
        Some(format!(
            "run {} exists with different needs ({}); the file gives {}",
            r.name,
            needs_text(&old.inputs),
            needs_text(&inputs)
        ))
    } else if (old.gpus, old.min_gpu_memory_mb)
        != (r.resources.gpus as i32, r.resources.min_gpu_memory_mb())
    {
        Some(format!(
            "run {} exists asking for {} GPU(s) of {} MB; the file asks for {} of {} MB",
            r.name,
            old.gpus,
            old.min_gpu_memory_mb,
            r.resources.gpus,
            r.resources.min_gpu_memory_mb()
        ))
    } else if old.config != r.config {
        let keys = differing_keys(&old.config, &r.config);
        Some(format!(
            "run {} exists with a different config ({} differ{}); rename the run in the file \
             to add it as a new one",
            r.name,
            keys.join(", "),
            if keys.len() == 1 { "s" } else { "" }
        ))
    } else {
        None
    }
}

/// The experiment-wide settings of `exp` that differ from experiment `id`'s.
async fn setting_conflicts(tx: &mut Tx<'_>, id: i64, exp: &Experiment) -> Result<Vec<String>> {
    type Settings = (
        String,
        String,
        String,
        i32,
        i32,
        i32,
        bool,
        Option<serde_json::Value>,
    );
    let row: Option<Settings> = sqlx::query_as(
        "SELECT name, objective_metric, objective_mode, max_restarts, keep_best, keep_latest, \
         keep_final_state, search FROM experiments WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((name, metric, mode, restarts, best, latest, final_state, search)) = row else {
        return Err(StoreError::NotFound(format!("no experiment {id}")));
    };
    let mut out = vec![];
    let mut differ = |what: &str, old: String, new: String| {
        if old != new {
            out.push(format!(
                "{what} is {old} in the experiment; the file has {new}"
            ));
        }
    };
    differ("name", name, exp.name.clone());
    differ(
        "objective",
        format!("{metric} ({mode})"),
        format!("{} ({})", exp.objective.metric, exp.objective.mode.as_str()),
    );
    differ(
        "max_restarts",
        restarts.to_string(),
        exp.max_restarts.to_string(),
    );
    differ(
        "checkpoints.keep",
        format!("best {best}, latest {latest}, final_state {final_state}"),
        format!(
            "best {}, latest {}, final_state {}",
            exp.retention.keep.best, exp.retention.keep.latest, exp.retention.keep.final_state
        ),
    );
    let new_search = exp
        .search
        .as_ref()
        .map(|s| serde_json::to_value(s).expect("search serializes"));
    if search != new_search {
        let show = |s: &Option<serde_json::Value>| {
            s.as_ref().map_or("none".to_string(), |v| v.to_string())
        };
        out.push(format!(
            "search is {} in the experiment; the file has {}",
            show(&search),
            show(&new_search)
        ));
    }
    Ok(out)
}

/// The experiment's runs by name, with their needs.
async fn existing_runs(tx: &mut Tx<'_>, id: i64) -> Result<HashMap<String, Existing>> {
    type Row = (i64, String, String, String, RunState, i32, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, name, job_kind, config, state, gpus, min_gpu_memory_mb FROM runs \
         WHERE experiment_id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    let deps: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT d.run_id, d.field, u.name FROM run_deps d JOIN runs u ON u.id = d.upstream_id \
         WHERE u.experiment_id = $1",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    let mut by_id: HashMap<i64, Vec<(String, String)>> = HashMap::new();
    for (run, field, up) in deps {
        by_id.entry(run).or_default().push((field, up));
    }
    Ok(rows
        .into_iter()
        .map(
            |(id, name, job_kind, config, state, gpus, min_gpu_memory_mb)| {
                let mut inputs = by_id.remove(&id).unwrap_or_default();
                inputs.sort();
                (
                    name,
                    Existing {
                        id,
                        job_kind,
                        config,
                        state,
                        gpus,
                        min_gpu_memory_mb,
                        inputs,
                    },
                )
            },
        )
        .collect())
}

/// `generator <- generator, styles <- styles`.
fn needs_text(inputs: &[(String, String)]) -> String {
    if inputs.is_empty() {
        return "none".into();
    }
    inputs
        .iter()
        .map(|(f, u)| format!("{f} <- {u}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The top-level keys whose blocks differ between two job YAMLs as expansion writes them (a
/// key at column 0, its value on the same line or indented below).
fn differing_keys(old: &str, new: &str) -> Vec<String> {
    fn blocks(y: &str) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        let mut key = String::new();
        for line in y.lines() {
            if !line.starts_with([' ', '-', '#']) && !line.is_empty() {
                key = line.split(':').next().unwrap_or_default().to_string();
            }
            let block = out.entry(key.clone()).or_default();
            block.push_str(line);
            block.push('\n');
        }
        out
    }
    let (a, b) = (blocks(old), blocks(new));
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.dedup();
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        keys.push("the text".into());
    }
    keys
}

/// Inserts one planned run and its dependencies (`ids` maps run names, including earlier
/// ones of this call, to ids).
async fn insert_run(
    tx: &mut Tx<'_>,
    experiment: i64,
    r: &PlannedRun,
    state: RunState,
    ids: &mut HashMap<String, i64>,
) -> Result<RunRow> {
    let run_id: i64 = sqlx::query_scalar(
        "INSERT INTO runs (experiment_id, name, job_kind, config, state, total_steps, method, params, \
         queued_at, gpus, min_gpu_memory_mb) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8, CASE WHEN $5 = $9 THEN clock_timestamp() END, $10, $11) \
         RETURNING id",
    )
    .bind(experiment)
    .bind(&r.name)
    .bind(&r.job)
    .bind(&r.config)
    .bind(state)
    .bind(r.total_steps)
    .bind(&r.method)
    .bind(sqlx::types::Json(&r.params))
    .bind(RunState::Queued)
    .bind(r.resources.gpus as i32)
    .bind(r.resources.min_gpu_memory_mb())
    .fetch_one(&mut **tx)
    .await?;
    for (field, up) in &r.inputs {
        sqlx::query("INSERT INTO run_deps (run_id, upstream_id, field) VALUES ($1,$2,$3)")
            .bind(run_id)
            .bind(ids[up.as_str()])
            .bind(field)
            .execute(&mut **tx)
            .await?;
    }
    ids.insert(r.name.clone(), run_id);
    Ok(RunRow {
        id: run_id,
        name: r.name.clone(),
        job_kind: r.job.clone(),
        state,
        attempt: 0,
        config: r.config.clone(),
        step: 0,
        total_steps: r.total_steps,
        error: None,
        method: r.method.clone(),
        params: r.params.clone(),
        gpus: r.resources.gpus as i32,
        min_gpu_memory_mb: r.resources.min_gpu_memory_mb(),
        devices: vec![],
    })
}

/// An event about the experiment as a whole.
async fn experiment_event(tx: &mut Tx<'_>, id: i64, kind: &str, message: &str) -> Result<()> {
    sqlx::query("INSERT INTO events (experiment_id, kind, message) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(kind)
        .bind(message)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The experiment's own row (its search as JSON); returns its id.
async fn insert_experiment(
    tx: &mut Tx<'_>,
    exp: &Experiment,
    file_name: &str,
    yaml: &str,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO experiments (name, file_name, yaml, objective_metric, objective_mode, \
         max_restarts, keep_best, keep_latest, keep_final_state, search, priority) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11) RETURNING id",
    )
    .bind(&exp.name)
    .bind(file_name)
    .bind(yaml)
    .bind(&exp.objective.metric)
    .bind(exp.objective.mode.as_str())
    .bind(exp.max_restarts as i32)
    .bind(exp.retention.keep.best as i32)
    .bind(exp.retention.keep.latest as i32)
    .bind(exp.retention.keep.final_state)
    .bind(
        exp.search
            .as_ref()
            .map(|s| serde_json::to_value(s).expect("search serializes")),
    )
    .bind(exp.priority)
    .fetch_one(&mut **tx)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::differing_keys;

    #[test]
    fn differing_keys_names_the_changed_blocks() {
        let old = "kind: train-text\nlr_heads: 0.001\nlosses:\n  preservation: 1\nsteps: 200\n";
        let new = "kind: train-text\nlr_heads: 0.003\nlosses:\n  preservation: 3\nsteps: 200\n";
        assert_eq!(differing_keys(old, new), ["losses", "lr_heads"]);
        let added =
            "kind: train-text\nlr_heads: 0.001\nlosses:\n  preservation: 1\nsteps: 200\nseed: 2\n";
        assert_eq!(differing_keys(old, added), ["seed"]);
    }
}
