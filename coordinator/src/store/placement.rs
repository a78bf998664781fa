//! Placement. A worker advertises device slots (GPUs with their memory, or CPU slots); each
//! running attempt holds some of them. A free slot takes the first queued run that fits the
//! worker's free devices, looking at experiments in fair-share order (`fair_share`). Queue
//! positions replay that order; a run that no connected worker could ever host says why.

use super::*;
use std::collections::HashSet;

/// The advisory-lock key space of one worker's claims (`"PLAC"`, xor the worker id): its
/// slots claim one at a time, so two never take the same device.
const PLACEMENT_LOCK: i64 = 0x504C_4143_0000_0000;

/// One device slot of a worker, as it registered it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Device {
    /// Unique within the worker (`cuda:0`, `cpu:1`).
    pub name: String,
    /// `cuda` or `cpu`.
    pub kind: String,
    /// 0 when unknown.
    #[serde(default)]
    pub memory_bytes: u64,
}

impl Device {
    fn is_gpu(&self) -> bool {
        self.kind == "cuda"
    }

    fn memory_mb(&self) -> i64 {
        (self.memory_bytes / 1_000_000) as i64
    }
}

/// The devices in a worker's registered capabilities; a registration without `device_info`
/// (an older worker) is one slot.
pub fn worker_devices(caps: &serde_json::Value) -> Vec<Device> {
    let listed: Vec<Device> = caps
        .get("device_info")
        .and_then(|d| serde_json::from_value(d.clone()).ok())
        .unwrap_or_default();
    if !listed.is_empty() {
        return listed;
    }
    let name = caps
        .get("devices")
        .and_then(|d| d.get(0))
        .and_then(|d| d.as_str())
        .unwrap_or("cpu")
        .to_lowercase();
    let kind = if name.starts_with("cuda") {
        "cuda"
    } else {
        "cpu"
    };
    vec![Device {
        name,
        kind: kind.into(),
        memory_bytes: 0,
    }]
}

/// The devices a run takes from the free ones: any one slot when it asks for no GPU, else
/// `gpus` free GPUs with at least `min_mb` each. `None` when it does not fit.
pub fn pick(free: &[Device], gpus: i32, min_mb: i64) -> Option<Vec<String>> {
    if gpus <= 0 {
        return free.first().map(|d| vec![d.name.clone()]);
    }
    let fit: Vec<String> = free
        .iter()
        .filter(|d| d.is_gpu() && d.memory_mb() >= min_mb)
        .take(gpus as usize)
        .map(|d| d.name.clone())
        .collect();
    (fit.len() == gpus as usize).then_some(fit)
}

/// The job kinds in a worker's registered capabilities.
fn job_kinds(caps: &serde_json::Value) -> Vec<String> {
    caps.get("job_kinds")
        .and_then(|k| serde_json::from_value(k.clone()).ok())
        .unwrap_or_default()
}

/// A worker as its claims see it: what it runs and its device slots, read once per session
/// from its registration rather than at every claim.
#[derive(Debug, Clone)]
pub struct Claimant {
    /// Worker id.
    pub worker: i64,
    /// Job kinds it runs.
    pub kinds: Vec<String>,
    /// All its device slots, busy or not.
    pub devices: Vec<Device>,
}

impl Claimant {
    /// From the capabilities the worker registered.
    pub fn from_capabilities(worker: i64, caps: &serde_json::Value) -> Claimant {
        Claimant {
            worker,
            kinds: job_kinds(caps),
            devices: worker_devices(caps),
        }
    }

    /// One CPU slot running `kinds` (tests and benchmarks that claim for a registration
    /// without a worker process).
    pub fn one_slot(worker: i64, kinds: &[String]) -> Claimant {
        Claimant {
            worker,
            kinds: kinds.to_vec(),
            devices: worker_devices(&serde_json::Value::Null),
        }
    }
}

/// Why no connected worker can ever host a run of `kind` asking for `gpus` GPUs of `min_mb`
/// each; `None` when one can (the run only waits its turn).
pub fn unhostable(kind: &str, gpus: i32, min_mb: i64, workers: &[Claimant]) -> Option<String> {
    if workers.is_empty() {
        return Some("no worker is connected".into());
    }
    let able: Vec<&Claimant> = workers
        .iter()
        .filter(|w| w.kinds.iter().any(|k| k == kind))
        .collect();
    if able.is_empty() {
        return Some(format!("no connected worker runs {kind} jobs"));
    }
    if able
        .iter()
        .any(|w| pick(&w.devices, gpus, min_mb).is_some())
    {
        return None;
    }
    let most = able
        .iter()
        .map(|w| {
            w.devices
                .iter()
                .filter(|d| d.is_gpu() && d.memory_mb() >= min_mb)
                .count()
        })
        .max()
        .unwrap_or(0);
    Some(format!(
        "needs {gpus} GPU(s){} on one worker; the connected workers have at most {most}",
        if min_mb > 0 {
            format!(" of at least {:.1} GB", min_mb as f64 / 1000.0)
        } else {
            String::new()
        }
    ))
}

/// A run chosen for a worker, locked, with the devices it takes.
pub(super) struct Picked {
    pub(super) row: sqlx::postgres::PgRow,
    pub(super) experiment: i64,
    pub(super) devices: Vec<String>,
}

/// Chooses (and locks) the run a free slot of `worker` takes, if any fits, looking at the
/// `experiments` in that order.
pub(super) async fn pick_run(
    tx: &mut Tx<'_>,
    worker: &Claimant,
    experiments: &[i64],
) -> Result<Option<Picked>> {
    let devices = &worker.devices;
    // A one-slot worker asks only when its slot is free: nothing to lock or subtract.
    let mut used: HashSet<String> = HashSet::new();
    if devices.len() > 1 {
        sqlx::query("SELECT pg_advisory_xact_lock($1 # $2)")
            .bind(PLACEMENT_LOCK)
            .bind(worker.worker)
            .execute(&mut **tx)
            .await?;
        used = sqlx::query_scalar(
            "SELECT unnest(devices) FROM runs WHERE state = $2 AND lease_worker = $1",
        )
        .bind(worker.worker)
        .bind(RunState::Running)
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .collect();
    }
    let free: Vec<Device> = devices
        .iter()
        .filter(|d| !used.contains(&d.name))
        .cloned()
        .collect();
    if free.is_empty() {
        return Ok(None);
    }
    let gpu_mb: Vec<i64> = free
        .iter()
        .filter(|d| d.is_gpu())
        .map(Device::memory_mb)
        .collect();
    // The state is a literal, as in `runs_queued_by_experiment`'s predicate: with a bound
    // state a cached (generic) plan cannot use that index, and Postgres would plan every
    // claim anew.
    for &experiment in experiments {
        let row = sqlx::query(
            "SELECT r.id, r.name, r.job_kind, r.config, r.attempt, r.gpus, r.min_gpu_memory_mb, \
             e.name AS exp FROM runs r JOIN experiments e ON e.id = r.experiment_id \
             WHERE r.experiment_id = $1 AND r.state = 'queued' AND r.job_kind = ANY($2) \
             AND (r.gpus = 0 OR r.gpus <= (SELECT count(*) FROM unnest($3::int8[]) m \
                                            WHERE m >= r.min_gpu_memory_mb)) \
             ORDER BY r.queued_at, r.id LIMIT 1 FOR UPDATE OF r SKIP LOCKED",
        )
        .bind(experiment)
        .bind(&worker.kinds)
        .bind(&gpu_mb)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else { continue };
        let devices = pick(&free, row.get("gpus"), row.get("min_gpu_memory_mb"))
            .expect("the query only returns runs that fit the free devices");
        return Ok(Some(Picked {
            row,
            experiment,
            devices,
        }));
    }
    Ok(None)
}

/// Every queued run's position and, where no connected worker can host it, the reason.
#[derive(Debug, Default)]
pub struct QueueView {
    /// Run id -> position (1 = next).
    pub positions: HashMap<i64, i32>,
    /// Run id -> why it cannot start on any connected worker.
    pub reasons: HashMap<i64, String>,
    /// Experiment id -> the position of its first queued run.
    pub first: HashMap<i64, i32>,
}

impl Store {
    /// The queue as workers will take it (see the module's doc).
    pub async fn queue(&self) -> Result<QueueView> {
        let shares = self.shares().await?;
        let runs: Vec<(i64, i64, String, i32, i64)> = sqlx::query_as(
            "SELECT id, experiment_id, job_kind, gpus, min_gpu_memory_mb FROM runs \
             WHERE state = $1 ORDER BY queued_at, id",
        )
        .bind(RunState::Queued)
        .fetch_all(&self.pool)
        .await?;
        let mut queued: HashMap<i64, Vec<i64>> = HashMap::new();
        for (id, exp, ..) in &runs {
            queued.entry(*exp).or_default().push(*id);
        }
        let mut view = QueueView::default();
        for (i, id) in queue_order(&shares, &queued).into_iter().enumerate() {
            view.positions.insert(id, i as i32 + 1);
        }
        for (exp, ids) in &queued {
            if let Some(p) = ids.iter().filter_map(|id| view.positions.get(id)).min() {
                view.first.insert(*exp, *p);
            }
        }
        let workers = self.live_workers().await?;
        for (id, _, kind, gpus, min_mb) in &runs {
            if let Some(why) = unhostable(kind, *gpus, *min_mb, &workers) {
                view.reasons.insert(*id, why);
            }
        }
        Ok(view)
    }

    /// Workers heard from within a lease.
    pub async fn live_workers(&self) -> Result<Vec<Claimant>> {
        let rows: Vec<(i64, serde_json::Value)> = sqlx::query_as(
            "SELECT id, capabilities FROM workers \
             WHERE last_seen > now() - make_interval(secs => $1)",
        )
        .bind(self.lease_secs())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|(id, caps)| Claimant::from_capabilities(*id, caps))
            .collect())
    }

    /// A registered worker as its claims see it, marked alive (a session opens); `None` for
    /// an unknown id (a reconnecting worker keeps its id while the database knows it).
    pub async fn claimant(&self, worker: i64) -> Result<Option<Claimant>> {
        let caps: Option<serde_json::Value> = sqlx::query_scalar(
            "UPDATE workers SET last_seen = now() WHERE id = $1 RETURNING capabilities",
        )
        .bind(worker)
        .fetch_optional(&self.pool)
        .await?;
        Ok(caps.map(|caps| Claimant::from_capabilities(worker, &caps)))
    }

    /// Records that a worker is alive (its idle heartbeats; running ones renew a lease).
    pub async fn touch_worker(&self, worker: i64) -> Result<()> {
        sqlx::query("UPDATE workers SET last_seen = now() WHERE id = $1")
            .bind(worker)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(name: &str, gb: u64) -> Device {
        Device {
            name: name.into(),
            kind: "cuda".into(),
            memory_bytes: gb * 1_000_000_000,
        }
    }

    #[test]
    fn pick_takes_enough_gpus_with_enough_memory_or_nothing() {
        let free = [gpu("cuda:0", 24), gpu("cuda:1", 80), gpu("cuda:2", 80)];
        assert_eq!(pick(&free, 0, 0), Some(vec!["cuda:0".to_string()]));
        assert_eq!(
            pick(&free, 2, 40_000),
            Some(vec!["cuda:1".into(), "cuda:2".into()])
        );
        assert_eq!(pick(&free, 3, 40_000), None);
        assert_eq!(pick(&free[..1], 2, 0), None);
        let cpu = Device {
            name: "cpu:0".into(),
            kind: "cpu".into(),
            memory_bytes: 0,
        };
        assert_eq!(pick(std::slice::from_ref(&cpu), 1, 0), None);
        assert_eq!(pick(&[cpu], 0, 0), Some(vec!["cpu:0".to_string()]));
    }

    #[test]
    fn unhostable_names_what_is_missing() {
        let w = |devices| Claimant {
            worker: 1,
            kinds: vec!["probe".into()],
            devices,
        };
        assert_eq!(
            unhostable("probe", 0, 0, &[]).as_deref(),
            Some("no worker is connected")
        );
        let one = [w(vec![gpu("cuda:0", 24)])];
        assert_eq!(unhostable("probe", 1, 0, &one), None);
        assert_eq!(
            unhostable("train-text", 1, 0, &one).as_deref(),
            Some("no connected worker runs train-text jobs")
        );
        assert_eq!(
            unhostable("probe", 2, 0, &one).as_deref(),
            Some("needs 2 GPU(s) on one worker; the connected workers have at most 1")
        );
        assert_eq!(
            unhostable("probe", 1, 40_000, &one).as_deref(),
            Some("needs 1 GPU(s) of at least 40.0 GB on one worker; the connected workers have at most 0")
        );
    }
}
