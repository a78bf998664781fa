//! Experiment YAML: parsing, validation and expansion into runs.
//!
//! An experiment names a dataset, shared `stages` (generator, judges, styles), `runs` (one
//! per method, each possibly with `ablate`), an optional `sweep` over the runs, an `objective`,
//! `max_restarts` and a checkpoint retention policy. Every error names the file, the line and
//! column, and the form that was expected; nothing is stored for an experiment that fails.

use indexmap::IndexMap;
use rand::{Rng, SeedableRng};
use serde_yaml::{Mapping, Value};
use std::collections::{BTreeMap, HashMap};

/// Largest experiment file accepted (checked before parsing).
pub const MAX_EXPERIMENT_BYTES: usize = 256 * 1024;
/// Most runs one experiment may expand into.
pub const MAX_RUNS: usize = 2000;

/// An experiment that failed validation.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ExperimentError {
    /// The file name given at submit.
    pub file: String,
    /// 1-based line (0 when the whole file is concerned).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExperimentFile {
    name: String,
    dataset: Mapping,
    #[serde(default)]
    stages: IndexMap<String, Entry>,
    runs: Vec<RunEntry>,
    /// Fields every entry of `runs` gets unless it sets them itself (one budget for all).
    #[serde(default)]
    run_defaults: Mapping,
    #[serde(default)]
    sweep: Option<IndexMap<String, Value>>,
    #[serde(default)]
    objective: Objective,
    #[serde(default = "d_restarts")]
    max_restarts: u32,
    #[serde(default)]
    checkpoints: Retention,
}

fn d_restarts() -> u32 {
    2
}

#[derive(Debug, serde::Deserialize)]
struct Entry {
    job: String,
    #[serde(default)]
    needs: Vec<String>,
    #[serde(flatten)]
    config: Mapping,
}

#[derive(Debug, serde::Deserialize)]
struct RunEntry {
    name: String,
    job: String,
    #[serde(default)]
    needs: Vec<String>,
    #[serde(default)]
    ablate: IndexMap<String, Vec<Value>>,
    #[serde(flatten)]
    config: Mapping,
}

/// What "best" means for this experiment.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    /// Metric name, e.g. `eval/score`.
    pub metric: String,
    /// `max` or `min`.
    pub mode: Mode,
}

impl Default for Objective {
    fn default() -> Self {
        Objective {
            metric: "eval/score".into(),
            mode: Mode::Max,
        }
    }
}

/// Direction of the objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Larger is better.
    Max,
    /// Smaller is better.
    Min,
}

impl Mode {
    /// `"max"` or `"min"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Max => "max",
            Mode::Min => "min",
        }
    }
}

/// Which checkpoints of a run are kept once it finishes.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep rules.
    pub keep: Keep,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep: Keep {
                best: 2,
                latest: 1,
                final_state: false,
            },
        }
    }
}

/// Keep the `best` checkpoints by objective and the `latest` ones by step.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keep {
    /// By objective.
    #[serde(default)]
    pub best: u32,
    /// By step (at least 1: downstream runs and resumes need the last one).
    #[serde(default = "one")]
    pub latest: u32,
    /// Keep a finished run's resume state (optimizer moments) in its last checkpoint, so it
    /// can later be continued exactly. Off by default: only a run that may still resume
    /// needs it, and it is most of a checkpoint's bytes.
    #[serde(default)]
    pub final_state: bool,
}

fn one() -> u32 {
    1
}

/// A validated, expanded experiment.
#[derive(Debug, Clone)]
pub struct Experiment {
    /// Its name.
    pub name: String,
    /// The objective.
    pub objective: Objective,
    /// Restarts allowed per run after lost attempts.
    pub max_restarts: u32,
    /// Retention.
    pub retention: Retention,
    /// Runs in dependency order (every run comes after the runs it needs).
    pub runs: Vec<PlannedRun>,
}

/// One run of an expanded experiment.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    /// Unique within the experiment: the stage key, the run name, or the run name with its
    /// ablation and sweep values (`m3@losses.preservation=0`).
    pub name: String,
    /// Job kind.
    pub job: String,
    /// The job's YAML (kind, dataset and config; upstream checkpoints are filled in by the
    /// worker from `inputs`).
    pub config: String,
    /// Total steps (from the config's `steps`, 0 if absent).
    pub total_steps: i64,
    /// `(config field, upstream run name)`.
    pub inputs: Vec<(String, String)>,
    /// The job's `method` (train-text), if it has one.
    pub method: Option<String>,
    /// The ablation and sweep values the run was expanded with (`losses.preservation` ->
    /// `1`), as its name shows them. Stored with the run, so nothing parses names.
    pub params: BTreeMap<String, String>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.contains("..")
}

const NAME_RULE: &str =
    "1 to 64 characters of letters, digits, '-', '_' or '.', starting with a letter or digit, no '..'";

/// Config field an upstream run's checkpoint fills in a downstream job.
fn input_field(downstream: &str, upstream: &str) -> Option<&'static str> {
    match (downstream, upstream) {
        ("invert", "train-judge") => Some("critic"),
        (_, "train-judge") if downstream != "train-judge" => Some("judge"),
        ("invert" | "train-text", "pretrain-generator" | "import-generator") => Some("generator"),
        ("train-text", "invert") => Some("styles"),
        ("evaluate", "train-text") => Some("checkpoint"),
        _ => None,
    }
}

struct Ctx<'a> {
    file: &'a str,
    src: &'a str,
}

impl Ctx<'_> {
    /// An error at the first line where `needle` occurs (after the first line holding
    /// `anchor`, when given), else at the top of the file.
    fn err_at(&self, anchor: Option<&str>, needle: &str, message: String) -> ExperimentError {
        let mut start = 0;
        if let Some(a) = anchor {
            if let Some(i) = self.src.find(a) {
                start = i;
            }
        }
        let (line, column) = match self.src[start..].find(needle) {
            Some(off) => {
                let at = start + off;
                let line = self.src[..at].matches('\n').count() + 1;
                let column = at - self.src[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
                (line, column)
            }
            None => (1, 1),
        };
        ExperimentError {
            file: self.file.into(),
            line,
            column,
            message,
        }
    }
}

/// Parses, validates and expands an experiment.
pub fn parse(file: &str, src: &str) -> Result<Experiment, ExperimentError> {
    let ctx = Ctx { file, src };
    if src.len() > MAX_EXPERIMENT_BYTES {
        return Err(ExperimentError {
            file: file.into(),
            line: 0,
            column: 0,
            message: format!(
                "the file is {} bytes; experiments are at most {MAX_EXPERIMENT_BYTES} bytes",
                src.len()
            ),
        });
    }
    let parsed: ExperimentFile = serde_yaml::from_str(src).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        ExperimentError {
            file: file.into(),
            line,
            column,
            message: e
                .to_string()
                .split(" at line ")
                .next()
                .unwrap_or_default()
                .to_string(),
        }
    })?;
    if !valid_name(&parsed.name) {
        return Err(ctx.err_at(
            None,
            "name:",
            format!(
                "experiment name {:?} is not allowed: {NAME_RULE}",
                parsed.name
            ),
        ));
    }
    if !parsed.dataset.contains_key("kind") {
        return Err(ctx.err_at(
            None,
            "dataset",
            "dataset needs a `kind` (synthetic-birds or cub)".into(),
        ));
    }
    if parsed.objective.metric.is_empty() || parsed.objective.metric.len() > 128 {
        return Err(ctx.err_at(
            None,
            "objective",
            "objective.metric must be a metric name such as eval/score".into(),
        ));
    }
    if parsed.checkpoints.keep.latest == 0 {
        return Err(ctx.err_at(
            None,
            "latest",
            "checkpoints.keep.latest must be at least 1 (resumes and downstream runs need the last checkpoint)".into(),
        ));
    }
    if parsed.runs.is_empty() && parsed.stages.is_empty() {
        return Err(ctx.err_at(None, "runs", "an experiment needs at least one run".into()));
    }

    // Every entry, stages first: (name, job, needs, config, is_run index).
    struct Base<'a> {
        name: &'a str,
        job: &'a str,
        needs: &'a [String],
        config: &'a Mapping,
        ablate: Option<&'a IndexMap<String, Vec<Value>>>,
    }
    let mut bases: Vec<Base> = Vec::new();
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
    // Needs: known names first, then no cycles, then a config field for each.
    for b in &bases {
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
    let order = topo_order(&bases.iter().map(|b| (b.name, b.needs)).collect::<Vec<_>>()).map_err(
        |cycle| {
            ctx.err_at(
                Some(&cycle[0]),
                "needs",
                format!("`needs` forms a cycle: {}", cycle.join(" -> ")),
            )
        },
    )?;
    for b in &bases {
        for n in b.needs {
            let up = &bases[index[n.as_str()]];
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

    let sweep_points = match &parsed.sweep {
        Some(s) => expand_sweep(s).map_err(|m| ctx.err_at(None, "sweep", m))?,
        None => vec![Vec::new()],
    };

    let mut runs = Vec::new();
    for &i in &order {
        let b = &bases[i];
        let is_run = b.ablate.is_some();
        let mut variants: Vec<Vec<(String, Value)>> = vec![Vec::new()];
        if let Some(ab) = b.ablate {
            for (path, values) in ab {
                variants = variants
                    .into_iter()
                    .flat_map(|v| {
                        values.iter().map(move |x| {
                            let mut v = v.clone();
                            v.push((path.clone(), x.clone()));
                            v
                        })
                    })
                    .collect();
            }
        }
        let points: &[Vec<(String, Value)>] = if is_run {
            &sweep_points
        } else {
            &[Vec::new()][..]
        };
        for v in &variants {
            for p in points {
                let overrides: Vec<(String, Value)> = v.iter().chain(p.iter()).cloned().collect();
                let mut config = Mapping::new();
                config.insert("kind".into(), Value::String(b.job.into()));
                config.insert("dataset".into(), Value::Mapping(parsed.dataset.clone()));
                if is_run {
                    for (k, val) in &parsed.run_defaults {
                        config.insert(k.clone(), val.clone());
                    }
                }
                for (k, val) in b.config {
                    config.insert(k.clone(), val.clone());
                }
                for (path, val) in &overrides {
                    set_path(&mut config, path, val.clone())
                        .map_err(|m| ctx.err_at(Some(b.name), path, format!("{}: {m}", b.name)))?;
                }
                let name = if overrides.is_empty() {
                    b.name.to_string()
                } else {
                    format!(
                        "{}@{}",
                        b.name,
                        overrides
                            .iter()
                            .map(|(k, v)| format!("{k}={}", short(v)))
                            .collect::<Vec<_>>()
                            .join(",")
                    )
                };
                let total_steps = config.get("steps").and_then(Value::as_i64).unwrap_or(0);
                let method = config
                    .get("method")
                    .and_then(Value::as_str)
                    .map(String::from);
                let params = overrides
                    .iter()
                    .map(|(k, v)| (k.clone(), short(v)))
                    .collect();
                let inputs = b
                    .needs
                    .iter()
                    .map(|n| {
                        let up = &bases[index[n.as_str()]];
                        (
                            input_field(b.job, up.job)
                                .expect("checked above")
                                .to_string(),
                            n.clone(),
                        )
                    })
                    .collect();
                // The job's own fields are checked here, exactly as the worker will parse
                // them, with the upstream checkpoints stood in for by placeholders.
                let mut check = config.clone();
                for n in b.needs {
                    let up = &bases[index[n.as_str()]];
                    let field = input_field(b.job, up.job).expect("checked above");
                    check.insert(
                        Value::String(field.into()),
                        Value::String(format!("upstream-{n}.safetensors")),
                    );
                }
                let text = serde_yaml::to_string(&Value::Mapping(check))
                    .map_err(|e| ctx.err_at(Some(b.name), b.name, e.to_string()))?;
                // The generated document's positions mean nothing to the user: point at the
                // entry instead.
                let spec = plume_jobs::JobSpec::from_yaml(&text, b.name).map_err(|e| {
                    ctx.err_at(Some(b.name), b.name, format!("{}: {}", b.name, e.detail()))
                })?;
                spec.validate().map_err(|m| {
                    ctx.err_at(
                        Some(b.name),
                        b.name,
                        format!("{name_hint}: {m}", name_hint = b.name),
                    )
                })?;
                let config = serde_yaml::to_string(&Value::Mapping(config))
                    .map_err(|e| ctx.err_at(Some(b.name), b.name, e.to_string()))?;
                runs.push(PlannedRun {
                    name,
                    job: b.job.into(),
                    config,
                    total_steps,
                    inputs,
                    method,
                    params,
                });
                if runs.len() > MAX_RUNS {
                    return Err(ctx.err_at(
                        None,
                        "runs",
                        format!("the experiment expands into more than {MAX_RUNS} runs"),
                    ));
                }
            }
        }
    }
    Ok(Experiment {
        name: parsed.name,
        objective: parsed.objective,
        max_restarts: parsed.max_restarts,
        retention: parsed.checkpoints,
        runs,
    })
}

/// A value as written in a run name.
fn short(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                format!("{f:.4e}")
                    .replace(".0000e", "e")
                    .trim_end_matches("e0")
                    .to_string()
            } else {
                n.to_string()
            }
        }
        Value::Bool(b) => b.to_string(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// Sets `a.b.c` in a mapping, creating intermediate mappings.
fn set_path(map: &mut Mapping, path: &str, value: Value) -> Result<(), String> {
    let parts: Vec<&str> = path.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "{path:?} is not a dotted config path like losses.preservation"
        ));
    }
    let mut cur = map;
    for p in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(Value::String((*p).into()))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        cur = entry
            .as_mapping_mut()
            .ok_or_else(|| format!("{path}: {p} is not a mapping"))?;
    }
    cur.insert(Value::String(parts[parts.len() - 1].into()), value);
    Ok(())
}

/// Sweep points: a grid over lists, or `search: {random: N, seed: S}` drawing N points (lists
/// uniformly, `uniform: [a, b]`, `log_uniform: [a, b]`, `int_uniform: [a, b]`).
fn expand_sweep(sweep: &IndexMap<String, Value>) -> Result<Vec<Vec<(String, Value)>>, String> {
    let mut random: Option<(u64, u64)> = None;
    let mut params: Vec<(String, &Value)> = Vec::new();
    for (k, v) in sweep {
        if k == "search" {
            let m = v
                .as_mapping()
                .ok_or("sweep.search must be {random: N, seed: S} or {grid: true}")?;
            for (sk, sv) in m {
                match sk.as_str() {
                    Some("random") => {
                        let n = sv
                            .as_u64()
                            .filter(|n| (1..=1000).contains(n))
                            .ok_or("sweep.search.random must be a count from 1 to 1000")?;
                        random = Some((n, random.map_or(0, |r| r.1)));
                    }
                    Some("seed") => {
                        let s = sv.as_u64().ok_or("sweep.search.seed must be an integer")?;
                        random = Some((random.map_or(0, |r| r.0), s));
                    }
                    Some("grid") => {}
                    _ => return Err("sweep.search accepts random, seed or grid".into()),
                }
            }
        } else {
            params.push((k.clone(), v));
        }
    }
    if params.is_empty() {
        return Err("the sweep has no parameters".into());
    }
    enum Dist {
        List(Vec<Value>),
        Uniform(f64, f64),
        LogUniform(f64, f64),
        IntUniform(i64, i64),
    }
    let mut dists = Vec::new();
    for (k, v) in &params {
        let d = match v {
            Value::Sequence(s) if s.is_empty() => {
                return Err(format!("sweep.{k} lists no values"));
            }
            Value::Sequence(s) => Dist::List(s.clone()),
            Value::Mapping(m) if m.len() == 1 => {
                let (dk, dv) = m.iter().next().expect("one entry");
                let pair = dv
                    .as_sequence()
                    .filter(|s| s.len() == 2)
                    .and_then(|s| Some((s[0].as_f64()?, s[1].as_f64()?)))
                    .ok_or(format!("sweep.{k}: expected [low, high]"))?;
                if pair.0 >= pair.1 || pair.0.is_nan() || pair.1.is_nan() {
                    return Err(format!("sweep.{k}: low must be below high"));
                }
                match dk.as_str() {
                    Some("uniform") => Dist::Uniform(pair.0, pair.1),
                    Some("log_uniform") if pair.0 > 0.0 => Dist::LogUniform(pair.0, pair.1),
                    Some("log_uniform") => {
                        return Err(format!("sweep.{k}: log_uniform needs positive bounds"))
                    }
                    Some("int_uniform") => Dist::IntUniform(pair.0 as i64, pair.1 as i64),
                    _ => {
                        return Err(format!(
                            "sweep.{k}: expected a list of values or one of uniform, log_uniform, int_uniform"
                        ))
                    }
                }
            }
            _ => {
                return Err(format!(
                    "sweep.{k}: expected a list of values or {{log_uniform: [low, high]}}"
                ))
            }
        };
        dists.push(d);
    }
    match random {
        Some((0, _)) => Err("sweep.search needs random: N".into()),
        Some((n, seed)) => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            Ok((0..n)
                .map(|_| {
                    params
                        .iter()
                        .zip(&dists)
                        .map(|((k, _), d)| {
                            let v = match d {
                                Dist::List(l) => l[rng.random_range(0..l.len())].clone(),
                                Dist::Uniform(a, b) => Value::from(rng.random_range(*a..*b)),
                                Dist::LogUniform(a, b) => {
                                    Value::from(rng.random_range(a.ln()..b.ln()).exp())
                                }
                                Dist::IntUniform(a, b) => Value::from(rng.random_range(*a..=*b)),
                            };
                            (k.clone(), v)
                        })
                        .collect()
                })
                .collect())
        }
        None => {
            let mut points: Vec<Vec<(String, Value)>> = vec![Vec::new()];
            for ((k, _), d) in params.iter().zip(&dists) {
                let Dist::List(values) = d else {
                    return Err(format!(
                        "sweep.{k} is a distribution; add search: {{random: N}} to draw from it"
                    ));
                };
                points = points
                    .into_iter()
                    .flat_map(|p| {
                        values.iter().map(move |v| {
                            let mut p = p.clone();
                            p.push((k.clone(), v.clone()));
                            p
                        })
                    })
                    .collect();
                if points.len() > MAX_RUNS {
                    return Err(format!("the sweep grid has more than {MAX_RUNS} points"));
                }
            }
            Ok(points)
        }
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
