//! Expansion: every entry into its runs (one per ablation value and sweep point), each
//! run's config assembled and checked exactly as the worker will parse it.

use super::file::{Ctx, ExperimentFile};
use super::graph::{input_field, Base, Entries};
use super::*;

/// The runs of the experiment, in dependency order.
pub(super) fn plan(
    parsed: &ExperimentFile,
    entries: &Entries,
    order: &[usize],
    ctx: &Ctx,
) -> Result<Vec<PlannedRun>, ExperimentError> {
    let bases = &entries.bases;
    let sweep_points = match &parsed.sweep {
        Some(s) => expand_sweep(s).map_err(|m| ctx.err_at(None, "sweep", m))?,
        None => vec![Vec::new()],
    };

    let mut runs = Vec::new();
    for &i in order {
        let b = &bases[i];
        let is_run = b.ablate.is_some();
        let variants = match b.ablate {
            Some(ab) => ablation_variants(ab),
            None => vec![Vec::new()],
        };
        let points: &[Vec<(String, Value)>] = if is_run {
            &sweep_points
        } else {
            &[Vec::new()][..]
        };
        for v in &variants {
            for p in points {
                let overrides: Vec<(String, Value)> = v.iter().chain(p.iter()).cloned().collect();
                runs.push(plan_run(parsed, entries, b, &overrides, ctx)?);
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
    Ok(runs)
}

/// One run: the entry's config with the run defaults, its overrides (ablation and sweep
/// values) set, checked as the worker will parse it.
fn plan_run(
    parsed: &ExperimentFile,
    entries: &Entries,
    b: &Base,
    overrides: &[(String, Value)],
    ctx: &Ctx,
) -> Result<PlannedRun, ExperimentError> {
    let is_run = b.ablate.is_some();
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
    for (path, val) in overrides {
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
            let up = entries.get(n);
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
        let up = entries.get(n);
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
    // `from_yaml` also checks the values' ranges (`JobSpec::validate`).
    plume_jobs::JobSpec::from_yaml(&text, b.name)
        .map_err(|e| ctx.err_at(Some(b.name), b.name, format!("{}: {}", b.name, e.detail())))?;
    let config = serde_yaml::to_string(&Value::Mapping(config))
        .map_err(|e| ctx.err_at(Some(b.name), b.name, e.to_string()))?;
    Ok(PlannedRun {
        name,
        job: b.job.into(),
        config,
        total_steps,
        inputs,
        method,
        params,
    })
}

/// Every combination of a run's ablation values, in the order written.
fn ablation_variants(ablate: &IndexMap<String, Vec<Value>>) -> Vec<Vec<(String, Value)>> {
    let mut variants: Vec<Vec<(String, Value)>> = vec![Vec::new()];
    for (path, values) in ablate {
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
    variants
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
