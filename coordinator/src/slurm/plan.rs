//! What the launcher does next, from what Slurm and the store say: a pure function, so the
//! scaling rule is tested without a cluster.

use std::time::Duration;

/// A worker job as `squeue` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchJob {
    /// Slurm's job id.
    pub id: String,
    /// Where Slurm has it.
    pub state: BatchState,
}

/// The Slurm job states the launcher tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchState {
    /// Waiting for an allocation (PENDING, REQUEUED, ...): costs nothing yet, cancelled first.
    Pending,
    /// Allocated (RUNNING, CONFIGURING): its worker may not have registered yet.
    Running,
    /// On its way out (COMPLETING, ...): counts for nothing.
    Ending,
}

impl BatchState {
    /// Slurm's `%T` state name.
    pub fn parse(state: &str) -> BatchState {
        match state {
            "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD" => {
                BatchState::Pending
            }
            "RUNNING" | "CONFIGURING" | "RESIZING" | "SIGNALING" => BatchState::Running,
            _ => BatchState::Ending,
        }
    }
}

/// What the store knows of the worker in a Slurm job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobWorker {
    /// Its Slurm job.
    pub job_id: String,
    /// It holds a run's lease.
    pub busy: bool,
    /// Since its last run ended (or it registered), when not busy.
    pub idle: Duration,
}

/// The launcher's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Worker jobs kept even with nothing queued.
    pub min_workers: u32,
    /// Worker jobs never exceeded.
    pub max_workers: u32,
    /// An idle worker above the minimum is cancelled after this long.
    pub idle_timeout: Duration,
}

/// One round's decision.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// New worker jobs to submit.
    pub submit: u32,
    /// Jobs to cancel, with why.
    pub cancel: Vec<(String, &'static str)>,
}

/// Scales the worker jobs to the queue: `want = clamp(queued + busy, min, max)`. With fewer
/// live jobs, submit the difference; with more, cancel the surplus: pending jobs first (they
/// hold nothing), then workers idle past the timeout, longest idle first. A job whose worker
/// has not registered yet is never cancelled: it is about to take a run.
pub fn plan(queued: u64, jobs: &[BatchJob], workers: &[JobWorker], bounds: Bounds) -> Plan {
    let live: Vec<&BatchJob> = jobs
        .iter()
        .filter(|j| j.state != BatchState::Ending)
        .collect();
    let worker_of = |id: &str| workers.iter().find(|w| w.job_id == id);
    let busy = live
        .iter()
        .filter(|j| worker_of(&j.id).is_some_and(|w| w.busy))
        .count() as u64;
    let want = (queued + busy).clamp(bounds.min_workers as u64, bounds.max_workers as u64);
    let have = live.len() as u64;
    if have < want {
        return Plan {
            submit: (want - have) as u32,
            cancel: vec![],
        };
    }
    let mut surplus = (have - want) as usize;
    let mut cancel = vec![];
    // Newest pending jobs first: Slurm ids grow, and the oldest is nearest to starting.
    let mut pending: Vec<&BatchJob> = live
        .iter()
        .copied()
        .filter(|j| j.state == BatchState::Pending)
        .collect();
    pending.sort_by_key(|j| std::cmp::Reverse(numeric(&j.id)));
    for j in pending.into_iter().take(surplus) {
        cancel.push((j.id.clone(), "not needed: the queue is shorter"));
    }
    surplus -= cancel.len();
    let mut idle: Vec<&JobWorker> = live
        .iter()
        .filter(|j| j.state == BatchState::Running)
        .filter_map(|j| worker_of(&j.id))
        .filter(|w| !w.busy && w.idle >= bounds.idle_timeout)
        .collect();
    idle.sort_by_key(|w| std::cmp::Reverse(w.idle));
    for w in idle.into_iter().take(surplus) {
        cancel.push((w.job_id.clone(), "idle past the timeout"));
    }
    Plan { submit: 0, cancel }
}

/// A Slurm id's number for ordering (array and het-job suffixes sort after).
fn numeric(id: &str) -> u64 {
    id.split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds {
        min_workers: 1,
        max_workers: 3,
        idle_timeout: Duration::from_secs(60),
    };

    fn job(id: &str, state: BatchState) -> BatchJob {
        BatchJob {
            id: id.into(),
            state,
        }
    }

    fn worker(id: &str, busy: bool, idle_s: u64) -> JobWorker {
        JobWorker {
            job_id: id.into(),
            busy,
            idle: Duration::from_secs(idle_s),
        }
    }

    #[test]
    fn scales_up_to_the_queue_within_the_maximum() {
        assert_eq!(plan(2, &[], &[], B).submit, 2);
        assert_eq!(plan(10, &[], &[], B).submit, 3);
        // A busy worker counts towards demand; a pending job towards capacity.
        let jobs = [job("7", BatchState::Running), job("8", BatchState::Pending)];
        assert_eq!(plan(2, &jobs, &[worker("7", true, 0)], B).submit, 1);
        // An ending job is not capacity.
        assert_eq!(plan(0, &[job("9", BatchState::Ending)], &[], B).submit, 1);
    }

    #[test]
    fn keeps_the_minimum_and_cancels_pending_before_idle() {
        let jobs = [
            job("5", BatchState::Running),
            job("6", BatchState::Running),
            job("7", BatchState::Pending),
            job("8", BatchState::Pending),
        ];
        let workers = [worker("5", false, 600), worker("6", false, 30)];
        let p = plan(0, &jobs, &workers, B);
        assert_eq!(p.submit, 0);
        let ids: Vec<&str> = p.cancel.iter().map(|(id, _)| id.as_str()).collect();
        // Surplus 3: both pending (newest first), then the worker idle past the timeout; the
        // one idle for 30 s stays as the minimum.
        assert_eq!(ids, ["8", "7", "5"]);
    }

    #[test]
    fn never_cancels_busy_starting_or_recently_idle_workers() {
        let jobs = [
            job("1", BatchState::Running),
            job("2", BatchState::Running),
            job("3", BatchState::Running),
        ];
        let workers = [worker("1", true, 0), worker("2", false, 59)];
        assert_eq!(plan(0, &jobs, &workers, B), Plan::default());
    }

    #[test]
    fn parses_slurm_states() {
        assert_eq!(BatchState::parse("PENDING"), BatchState::Pending);
        assert_eq!(BatchState::parse("RUNNING"), BatchState::Running);
        assert_eq!(BatchState::parse("COMPLETING"), BatchState::Ending);
        assert_eq!(BatchState::parse("CANCELLED"), BatchState::Ending);
    }
}
