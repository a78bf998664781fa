//! The experiment as a graph: its entries (stages first, then runs), their names, jobs and
//! methods checked, and their `needs`: known, acyclic, of a kind the job can use, and on a
//! single run.

use super::file::{valid_name, Ctx, Entry, ExperimentFile, NAME_RULE};
use super::*;
use plume_jobs::yaml::{Location, Spanned};

/// One stage or run entry, before expansion.
pub(super) struct Base<'a> {
    pub(super) name: &'a str,
    /// Where the name is written (a stage's key, a run's `name:` value).
    pub(super) at: Location,
    pub(super) job: &'a str,
    pub(super) entry: &'a Entry,
    /// Runs are expanded by their ablations and the sweep; stages run once.
    pub(super) is_run: bool,
}

impl Base<'_> {
    pub(super) fn needs(&self) -> &[Spanned<String>] {
        &self.entry.needs
    }
}

/// Every entry and where to find it by name.
pub(super) struct Entries<'a> {
    pub(super) bases: Vec<Base<'a>>,
    pub(super) index: HashMap<&'a str, usize>,
}

/// A stage or run with what every entry must have: a name and a job.
fn base<'a>(
    name: &'a Spanned<String>,
    entry: &'a Spanned<Entry>,
    is_run: bool,
    ctx: &Ctx,
) -> Result<Base<'a>, ExperimentError> {
    let Some(job) = &entry.value.job else {
        return Err(ctx.err(
            &entry.referenced,
            format!(
                "{}: needs `job:`, one of {}",
                name.value,
                plume_jobs::JOB_KINDS.join(", ")
            ),
        ));
    };
    if !plume_jobs::JOB_KINDS.contains(&job.value.as_str()) {
        return Err(ctx.err(
            &job.referenced,
            format!(
                "{}: unknown job {:?}; expected one of {}",
                name.value,
                job.value,
                plume_jobs::JOB_KINDS.join(", ")
            ),
        ));
    }
    Ok(Base {
        name: &name.value,
        at: name.referenced,
        job: &job.value,
        entry: &entry.value,
        is_run,
    })
}

impl<'a> Entries<'a> {
    /// The entries of `parsed`, stages first, each checked on its own.
    pub(super) fn collect(
        parsed: &'a ExperimentFile,
        ctx: &Ctx,
    ) -> Result<Entries<'a>, ExperimentError> {
        let mut bases: Vec<Base<'a>> = Vec::new();
        for (name, e) in &parsed.stages {
            if let Some(n) = &e.value.name {
                return Err(ctx.err(
                    &n.referenced,
                    format!(
                        "{}: a stage is named by its key; remove `name:`",
                        name.value
                    ),
                ));
            }
            if let Some((path, _)) = e.value.ablate.as_ref().and_then(|a| a.first()) {
                return Err(ctx.err(
                    &path.referenced,
                    format!("{}: only runs can ablate; move it to `runs:`", name.value),
                ));
            }
            bases.push(base(name, e, false, ctx)?);
        }
        for e in &parsed.runs.value {
            let Some(name) = &e.value.name else {
                return Err(ctx.err(&e.referenced, "every run needs a `name:`".into()));
            };
            bases.push(base(name, e, true, ctx)?);
        }
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, b) in bases.iter().enumerate() {
            if !valid_name(b.name) {
                return Err(ctx.err(
                    &b.at,
                    format!("name {:?} is not allowed: {NAME_RULE}", b.name),
                ));
            }
            if index.insert(b.name, i).is_some() {
                return Err(ctx.err(
                    &b.at,
                    format!(
                        "{:?} is defined twice; stage and run names must be unique",
                        b.name
                    ),
                ));
            }
            check_fields(b, ctx)?;
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
            for n in b.needs() {
                if !index.contains_key(n.value.as_str()) {
                    return Err(ctx.err(
                        &n.referenced,
                        format!(
                            "{}: needs {:?}, which is not a stage or run of this experiment",
                            b.name, n.value
                        ),
                    ));
                }
            }
        }
        let graph: Vec<(&str, Vec<&str>)> = bases
            .iter()
            .map(|b| (b.name, b.needs().iter().map(|n| n.value.as_str()).collect()))
            .collect();
        let order = topo_order(&graph).map_err(|cycle| {
            // Point at the first `needs` along the cycle.
            let first = self.get(&cycle[0]);
            let at = first
                .needs()
                .iter()
                .find(|n| n.value == cycle[1])
                .map_or(first.at, |n| n.referenced);
            ctx.err(
                &at,
                format!("`needs` forms a cycle: {}", cycle.join(" -> ")),
            )
        })?;
        let swept = parsed.sweep.is_some();
        for b in bases.iter() {
            for n in b.needs() {
                let up = self.get(&n.value);
                if input_field(b.job, up.job).is_none() {
                    return Err(ctx.err(
                        &n.referenced,
                        format!(
                            "{}: a {} job cannot use the output of {} (a {} job)",
                            b.name, b.job, n.value, up.job
                        ),
                    ));
                }
                let ablated = up.entry.ablate.as_ref().is_some_and(|a| !a.is_empty());
                if ablated || (swept && up.is_run) {
                    return Err(ctx.err(
                        &n.referenced,
                        format!(
                            "{}: needs {:?}, which expands into several runs; depend on a single run or stage",
                            b.name, n.value
                        ),
                    ));
                }
            }
        }
        Ok(order)
    }
}

/// The checks of one entry's own fields that need no other entry.
fn check_fields(b: &Base, ctx: &Ctx) -> Result<(), ExperimentError> {
    let keys = &b.entry.config_keys;
    if let Some(at) = keys.get("kind") {
        return Err(ctx.err(
            at,
            format!("{}: use `job:` for the job kind, not `kind:`", b.name),
        ));
    }
    if let Some(Value::String(m)) = b.entry.config.get("method") {
        if !plume_jobs::Method::ALL.iter().any(|x| x.name() == m) {
            return Err(ctx.err(
                &keys["method"],
                format!(
                    "{}: unknown method {m:?}; expected one of {}",
                    b.name,
                    plume_jobs::Method::ALL.map(|x| x.name()).join(", ")
                ),
            ));
        }
    }
    for (path, values) in b.entry.ablate.iter().flatten() {
        if values.value.is_empty() {
            return Err(ctx.err(
                &path.referenced,
                format!("{}: ablate.{} lists no values", b.name, path.value),
            ));
        }
    }
    Ok(())
}

/// Config field an upstream run's checkpoint fills in a downstream job.
pub(super) fn input_field(downstream: &str, upstream: &str) -> Option<&'static str> {
    match (downstream, upstream) {
        ("invert", "train-judge") => Some("critic"),
        (_, "train-judge") if downstream != "train-judge" => Some("judge"),
        ("invert" | "train-text", "pretrain-generator" | "import-generator") => Some("generator"),
        ("train-text", "invert") => Some("styles"),
        ("evaluate", "train-text") => Some("checkpoint"),
        ("probe", "probe") => Some("upstream"),
        _ => None,
    }
}

/// Dependency order (Kahn's algorithm, stable); on a cycle, the names along it.
fn topo_order(nodes: &[(&str, Vec<&str>)]) -> Result<Vec<usize>, Vec<String>> {
    let idx: BTreeMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.0, i)).collect();
    let mut state = vec![0u8; nodes.len()]; // 0 new, 1 on stack, 2 done
    let mut order = Vec::new();
    fn visit(
        i: usize,
        nodes: &[(&str, Vec<&str>)],
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
        for n in &nodes[i].1 {
            if let Some(&j) = idx.get(n) {
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
