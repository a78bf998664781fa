//! The experiment as a graph: its entries (stages first, then runs), their names, jobs and
//! methods checked, and their `needs`: known, acyclic, of a kind the job can use, and on a
//! single run.

use super::file::{valid_name, Ctx, ExperimentFile, NAME_RULE};
use super::*;

/// One stage or run entry, before expansion.
pub(super) struct Base<'a> {
    pub(super) name: &'a str,
    pub(super) job: &'a str,
    pub(super) needs: &'a [String],
    pub(super) config: &'a Mapping,
    /// `Some` for runs (which ablations and sweeps expand), `None` for stages.
    pub(super) ablate: Option<&'a IndexMap<String, Vec<Value>>>,
}

/// Every entry and where to find it by name.
pub(super) struct Entries<'a> {
    pub(super) bases: Vec<Base<'a>>,
    pub(super) index: HashMap<&'a str, usize>,
}

impl<'a> Entries<'a> {
    /// The entries of `parsed`, stages first, each checked on its own.
    pub(super) fn collect(
        parsed: &'a ExperimentFile,
        ctx: &Ctx,
    ) -> Result<Entries<'a>, ExperimentError> {
        let mut bases: Vec<Base<'a>> = Vec::new();
        for (name, e) in &parsed.stages {
            bases.push(Base {
                name,
                job: &e.job,
                needs: &e.needs,
                config: &e.config,
                ablate: None,
            });
        }
        for r in &parsed.runs {
            bases.push(Base {
                name: &r.name,
                job: &r.job,
                needs: &r.needs,
                config: &r.config,
                ablate: Some(&r.ablate),
            });
        }
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, b) in bases.iter().enumerate() {
            if !valid_name(b.name) {
                return Err(ctx.err_at(
                    None,
                    b.name,
                    format!("name {:?} is not allowed: {NAME_RULE}", b.name),
                ));
            }
            if index.insert(b.name, i).is_some() {
                return Err(ctx.err_at(
                    None,
                    b.name,
                    format!(
                        "{:?} is defined twice; stage and run names must be unique",
                        b.name
                    ),
                ));
            }
            if !plume_jobs::JOB_KINDS.contains(&b.job) {
                return Err(ctx.err_at(
                    Some(b.name),
                    b.job,
                    format!(
                        "{}: unknown job {:?}; expected one of {}",
                        b.name,
                        b.job,
                        plume_jobs::JOB_KINDS.join(", ")
                    ),
                ));
            }
            for key in ["kind", "dataset"] {
                if b.config.contains_key(key) && key == "kind" {
                    return Err(ctx.err_at(
                        Some(b.name),
                        "kind",
                        format!("{}: use `job:` for the job kind, not `kind:`", b.name),
                    ));
                }
            }
            if let Some(Value::String(m)) = b.config.get("method") {
                if !plume_jobs::Method::ALL.iter().any(|x| x.name() == m) {
                    return Err(ctx.err_at(
                        Some(b.name),
                        m,
                        format!(
                            "{}: unknown method {m:?}; expected one of {}",
                            b.name,
                            plume_jobs::Method::ALL.map(|x| x.name()).join(", ")
                        ),
                    ));
                }
            }
            if let Some(ab) = b.ablate {
                for (path, values) in ab {
                    if values.is_empty() {
                        return Err(ctx.err_at(
                            Some(b.name),
                            path,
                            format!("{}: ablate.{path} lists no values", b.name),
                        ));
                    }
                }
            }
        }
        Ok(Entries { bases, index })
    }

    /// The entry named `name` (known to exist).
    pub(super) fn get(&self, name: &str) -> &Base<'a> {
        &self.bases[self.index[name]]
    }

    /// Checks every `needs` and returns the entries in dependency order.
    pub(super) fn check_needs(
        &self,
        parsed: &ExperimentFile,
        ctx: &Ctx,
    ) -> Result<Vec<usize>, ExperimentError> {
        let (bases, index) = (&self.bases, &self.index);
        // Needs: known names first, then no cycles, then a config field for each.
        for b in bases.iter() {
            for n in b.needs {
                if !index.contains_key(n.as_str()) {
                    return Err(ctx.err_at(
                        Some(b.name),
                        n,
                        format!(
                            "{}: needs {n:?}, which is not a stage or run of this experiment",
                            b.name
                        ),
                    ));
                }
            }
        }
        let order = topo_order(&bases.iter().map(|b| (b.name, b.needs)).collect::<Vec<_>>())
            .map_err(|cycle| {
                ctx.err_at(
                    Some(&cycle[0]),
                    "needs",
                    format!("`needs` forms a cycle: {}", cycle.join(" -> ")),
                )
            })?;
        for b in bases.iter() {
            for n in b.needs {
                let up = self.get(n);
                if input_field(b.job, up.job).is_none() {
                    return Err(ctx.err_at(
                        Some(b.name),
                        n,
                        format!(
                            "{}: a {} job cannot use the output of {n} (a {} job)",
                            b.name, b.job, up.job
                        ),
                    ));
                }
                if up.ablate.is_some_and(|a| !a.is_empty())
                    || (parsed.sweep.is_some() && parsed.runs.iter().any(|r| r.name == *n))
                {
                    return Err(ctx.err_at(
                    Some(b.name),
                    n,
                    format!("{}: needs {n:?}, which expands into several runs; depend on a single run or stage", b.name),
                ));
                }
            }
        }
        Ok(order)
    }
}

/// Config field an upstream run's checkpoint fills in a downstream job.
pub(super) fn input_field(downstream: &str, upstream: &str) -> Option<&'static str> {
    match (downstream, upstream) {
        ("invert", "train-judge") => Some("critic"),
        (_, "train-judge") if downstream != "train-judge" => Some("judge"),
        ("invert" | "train-text", "pretrain-generator" | "import-generator") => Some("generator"),
        ("train-text", "invert") => Some("styles"),
        ("evaluate", "train-text") => Some("checkpoint"),
        _ => None,
    }
}

/// Dependency order (Kahn's algorithm, stable); on a cycle, the names along it.
fn topo_order(nodes: &[(&str, &[String])]) -> Result<Vec<usize>, Vec<String>> {
    let idx: BTreeMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.0, i)).collect();
    let mut state = vec![0u8; nodes.len()]; // 0 new, 1 on stack, 2 done
    let mut order = Vec::new();
    fn visit(
        i: usize,
        nodes: &[(&str, &[String])],
        idx: &BTreeMap<&str, usize>,
        state: &mut [u8],
        order: &mut Vec<usize>,
        stack: &mut Vec<usize>,
    ) -> Result<(), Vec<String>> {
        match state[i] {
            2 => return Ok(()),
            1 => {
                let from = stack.iter().position(|&s| s == i).unwrap_or(0);
                let mut cycle: Vec<String> = stack[from..]
                    .iter()
                    .map(|&s| nodes[s].0.to_string())
                    .collect();
                cycle.push(nodes[i].0.to_string());
                return Err(cycle);
            }
            _ => {}
        }
        state[i] = 1;
        stack.push(i);
        for n in nodes[i].1 {
            if let Some(&j) = idx.get(n.as_str()) {
                visit(j, nodes, idx, state, order, stack)?;
            }
        }
        stack.pop();
        state[i] = 2;
        order.push(i);
        Ok(())
    }
    for i in 0..nodes.len() {
        visit(i, nodes, &idx, &mut state, &mut order, &mut Vec::new())?;
    }
    Ok(order)
}
