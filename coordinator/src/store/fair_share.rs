//! Fair share: the order in which experiments' queued runs are taken. Higher `priority`
//! first; among equal priorities the experiment with the fewest running runs, then the one
//! served least recently; within an experiment, the oldest queued run. Queue positions
//! replay that order ([`queue_order`]); claims follow it from a copy each coordinator keeps
//! for a few milliseconds ([`ClaimMemory`]).

use super::*;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// How stale an experiment's "last served" time in Postgres may be: fair share alternates
/// experiments by it, and writing it at every claim would cost a statement per run.
const SERVED_EVERY: Duration = Duration::from_millis(20);

/// How long a coordinator claims by the experiment order it last read. Reading it counts
/// each experiment's running runs: a statement per claim at hundreds of claims a second.
/// A claim that finds nothing in a recent order reads it again, so new work is never missed;
/// a newly submitted higher priority waits at most this long.
const ORDER_FOR: Duration = Duration::from_millis(50);

/// What this coordinator remembers between claims (see [`Store::claim_order`] and
/// [`Store::served`]).
#[derive(Debug, Default)]
pub(super) struct ClaimMemory {
    /// The experiments with queued runs in claim order, as last read and since served.
    order: Vec<Share>,
    /// When `order` was read.
    read_at: Option<Instant>,
    /// When each experiment's `last_claim_at` was last written.
    written: HashMap<i64, Instant>,
}

impl ClaimMemory {
    /// Moves `experiment` back in the remembered order as fair share would after serving it
    /// at `micros` (unix microseconds): one more running run, served last.
    fn serve(&mut self, experiment: i64, micros: i64) {
        if let Some(s) = self.order.iter_mut().find(|s| s.experiment == experiment) {
            s.serve(micros);
        }
        self.order.sort_by_key(Share::key);
    }
}

/// An experiment's place in the fair-share order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// Its id.
    pub experiment: i64,
    /// Its priority.
    pub priority: i32,
    /// Its running runs.
    pub running: i64,
    /// When it was last served (unix microseconds; `None`: never).
    pub last_claim: Option<i64>,
}

impl Share {
    /// What serving the experiment one run at `at` does to its place: one more running run,
    /// served last.
    fn serve(&mut self, at: i64) {
        self.running += 1;
        self.last_claim = Some(at);
    }

    /// Smaller goes first.
    fn key(&self) -> (i32, i64, i64, i64) {
        (
            -self.priority,
            self.running,
            self.last_claim.unwrap_or(i64::MIN),
            self.experiment,
        )
    }
}

/// The order in which queued runs would be taken if every one fitted: `queued` is each
/// experiment's queued runs, oldest first. Returns run ids, next first.
pub fn queue_order(shares: &[Share], queued: &HashMap<i64, Vec<i64>>) -> Vec<i64> {
    let mut heap: BinaryHeap<std::cmp::Reverse<Share>> = shares
        .iter()
        .filter(|s| queued.get(&s.experiment).is_some_and(|q| !q.is_empty()))
        .map(|s| std::cmp::Reverse(*s))
        .collect();
    let mut next: HashMap<i64, usize> = HashMap::new();
    let mut order = vec![];
    let mut clock = i64::MAX / 2;
    while let Some(std::cmp::Reverse(mut s)) = heap.pop() {
        let runs = &queued[&s.experiment];
        let i = next.entry(s.experiment).or_default();
        order.push(runs[*i]);
        *i += 1;
        if *i < runs.len() {
            clock += 1;
            s.serve(clock);
            heap.push(std::cmp::Reverse(s));
        }
    }
    order
}

impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Share {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl Store {
    /// The experiments with queued runs in claim order, and whether they were just read
    /// (not this coordinator's recent copy; `reread` forces a read).
    pub(super) async fn claim_order(&self, reread: bool) -> Result<(Vec<i64>, bool)> {
        if !reread {
            let memory = self.claim_memory.lock().expect("never poisoned");
            if memory.read_at.is_some_and(|at| at.elapsed() < ORDER_FOR) {
                return Ok((memory.order.iter().map(|s| s.experiment).collect(), false));
            }
        }
        let mut order = self.shares().await?;
        order.sort_by_key(Share::key);
        let experiments = order.iter().map(|s| s.experiment).collect();
        let mut memory = self.claim_memory.lock().expect("never poisoned");
        memory.order = order;
        memory.read_at = Some(Instant::now());
        Ok((experiments, true))
    }

    /// Records that an experiment was just served: this coordinator's copy of the order moves
    /// it back as fair share would (one more running run, served now), and Postgres's
    /// `last_claim_at` (fair share's "least recently served" across coordinators) follows at
    /// most every `SERVED_EVERY`. After the claim commits, in its own statement: inside the
    /// claim it would hold the experiment's row lock, and every slot claiming from the
    /// experiment would wait on it.
    pub(super) async fn served(&self, experiment: i64) -> Result<()> {
        let now = Instant::now();
        {
            let mut memory = self.claim_memory.lock().expect("never poisoned");
            let micros = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            memory.serve(experiment, micros);
            if memory
                .written
                .get(&experiment)
                .is_some_and(|at| now.duration_since(*at) < SERVED_EVERY)
            {
                return Ok(());
            }
            if memory.written.len() > 1024 {
                memory
                    .written
                    .retain(|_, at| now.duration_since(*at) < SERVED_EVERY);
            }
            memory.written.insert(experiment, now);
        }
        sqlx::query(
            "UPDATE experiments SET last_claim_at = clock_timestamp() WHERE id = $1 \
             AND (last_claim_at IS NULL OR last_claim_at < clock_timestamp() - $2::interval)",
        )
        .bind(experiment)
        .bind(SERVED_EVERY)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The running experiments that have queued runs, with what fair share orders them by.
    /// The states are literals, as in the partial indexes' predicates (a cached plan uses
    /// them). "Has a queued run" is a scalar subquery, not EXISTS, so that it stays one index
    /// probe per experiment: a generic plan made while the queue was small turned EXISTS into
    /// a scan of every queued run.
    pub(super) async fn shares(&self) -> Result<Vec<Share>> {
        type Row = (i64, i32, i64, Option<i64>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT e.id, e.priority, \
             (SELECT count(*) FROM runs x WHERE x.experiment_id = e.id AND x.state = 'running'), \
             (extract(epoch FROM e.last_claim_at) * 1e6)::int8 \
             FROM experiments e WHERE e.state = $1 AND (SELECT true FROM runs q \
             WHERE q.experiment_id = e.id AND q.state = 'queued' LIMIT 1)",
        )
        .bind(ExperimentState::Running)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(experiment, priority, running, last_claim)| Share {
                experiment,
                priority,
                running,
                last_claim,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_order_alternates_equal_priorities_like_the_queue_order() {
        let share = |experiment, priority| Share {
            experiment,
            priority,
            running: 0,
            last_claim: None,
        };
        let shares = [share(1, 0), share(2, 0), share(3, 5)];
        let mut memory = ClaimMemory {
            order: shares.to_vec(),
            ..Default::default()
        };
        memory.order.sort_by_key(Share::key);
        // Each experiment has plenty queued: claims take the head of the order each time.
        let mut served = vec![];
        for t in 0..5 {
            let head = memory.order[0].experiment;
            served.push(head);
            memory.serve(head, 1_000 + t);
        }
        assert_eq!(served, [3, 3, 3, 3, 3], "a higher priority is served first");
        memory.order.retain(|s| s.experiment != 3);
        let mut served = vec![];
        for t in 0..4 {
            let head = memory.order[0].experiment;
            served.push(head);
            memory.serve(head, 2_000 + t);
        }
        assert_eq!(served, [1, 2, 1, 2]);
        let queued: HashMap<i64, Vec<i64>> = [(1, vec![10, 11]), (2, vec![20, 21])].into();
        let order = queue_order(&[share(1, 0), share(2, 0)], &queued);
        assert_eq!(
            order,
            [10, 20, 11, 21],
            "the queue view promises the same alternation"
        );
    }

    #[test]
    fn queue_order_puts_priority_first_and_alternates_equal_priorities() {
        let share = |experiment, priority, running| Share {
            experiment,
            priority,
            running,
            last_claim: None,
        };
        let queued: HashMap<i64, Vec<i64>> = [
            (1, vec![10, 11, 12]),
            (2, vec![20, 21, 22]),
            (3, vec![30, 31]),
        ]
        .into();
        // 3 has the higher priority; 1 and 2 alternate, 2 first since 1 already runs a run.
        let order = queue_order(&[share(1, 0, 1), share(2, 0, 0), share(3, 5, 0)], &queued);
        assert_eq!(order, [30, 31, 20, 10, 21, 11, 22, 12]);
    }
}
