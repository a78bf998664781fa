//! `search:`: adaptive early stopping. Today one strategy, ASHA (Li et al., "A System for
//! Massively Parallel Hyperparameter Tuning", 2020), asynchronous: each run is judged the
//! moment it reaches a rung, against the runs that rung has seen so far.

use super::file::Ctx;
use super::{ExperimentError, Mode};
use plume_jobs::yaml::Spanned;

/// The `search:` section.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Search {
    /// Asynchronous successive halving over the experiment's `runs:`.
    pub asha: Asha,
}

/// What a run's budget is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    /// Training steps.
    Steps,
}

/// ASHA's settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asha {
    /// The metric runs are compared on (e.g. `eval/score`).
    pub metric: String,
    /// Whether larger (`max`) or smaller (`min`) is better.
    pub mode: Mode,
    /// What the rungs count.
    #[serde(default = "steps")]
    pub resource: Resource,
    /// The first rung.
    pub min_steps: i64,
    /// Every run's full budget (its `steps`).
    pub max_steps: i64,
    /// η: rung k is at `min_steps * η^k`, and the top 1/η of a rung go on.
    #[serde(default = "three")]
    pub reduction_factor: u32,
}

fn steps() -> Resource {
    Resource::Steps
}

fn three() -> u32 {
    3
}

impl Asha {
    /// The rungs' steps: `min_steps * η^k` below `max_steps`.
    pub fn rungs(&self) -> Vec<i64> {
        let mut r = vec![];
        let mut s = self.min_steps;
        while s < self.max_steps {
            r.push(s);
            s = s.saturating_mul(self.reduction_factor as i64);
        }
        r
    }

    /// Whether the run ranked `rank` (1 = best) among `seen` values at a rung goes on: it
    /// must be in the top `ceil(seen / η)`, so the first run at a rung always goes on.
    pub fn promotes(&self, rank: usize, seen: usize) -> bool {
        rank <= seen.div_ceil(self.reduction_factor as usize).max(1)
    }

    /// Whether `a` is better than `b` (NaN is worse than anything).
    pub fn better(&self, a: f64, b: f64) -> bool {
        match (a.is_nan(), b.is_nan()) {
            (true, _) => false,
            (false, true) => true,
            _ => match self.mode {
                Mode::Max => a > b,
                Mode::Min => a < b,
            },
        }
    }
}

/// Checks the section's values.
pub(super) fn check(s: &Spanned<Search>, ctx: &Ctx) -> Result<(), ExperimentError> {
    let a = &s.value.asha;
    let err = |m: String| Err(ctx.err(&s.referenced, format!("search.asha: {m}")));
    if a.metric.is_empty() || a.metric.len() > 128 {
        return err("metric must be a metric name such as eval/score".into());
    }
    if !(2..=100).contains(&a.reduction_factor) {
        return err(format!(
            "reduction_factor must be 2..=100, not {}",
            a.reduction_factor
        ));
    }
    if !(1..=10_000_000).contains(&a.min_steps) {
        return err(format!(
            "min_steps must be 1..=10000000, not {}",
            a.min_steps
        ));
    }
    if a.max_steps > 10_000_000 || a.max_steps <= a.min_steps {
        return err(format!(
            "max_steps must be above min_steps ({}) and at most 10000000, not {}",
            a.min_steps, a.max_steps
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asha(min: i64, max: i64, eta: u32) -> Asha {
        Asha {
            metric: "m".into(),
            mode: Mode::Max,
            resource: Resource::Steps,
            min_steps: min,
            max_steps: max,
            reduction_factor: eta,
        }
    }

    #[test]
    fn rungs_and_promotion() {
        assert_eq!(asha(10, 270, 3).rungs(), [10, 30, 90]);
        assert_eq!(asha(10, 100, 2).rungs(), [10, 20, 40, 80]);
        let a = asha(1, 9, 3);
        // Seen 1: the only one goes on; seen 3: only the best; seen 4: the best two.
        assert!(a.promotes(1, 1));
        assert!(a.promotes(1, 3) && !a.promotes(2, 3));
        assert!(a.promotes(2, 4) && !a.promotes(3, 4));
        assert!(a.better(2.0, 1.0) && !a.better(f64::NAN, 1.0) && a.better(0.0, f64::NAN));
    }
}
