//! Expansion: every entry into its runs (one per ablation value and sweep point), each
//! run's config assembled and checked exactly as the worker will parse it.

use super::file::{Ctx, ExperimentFile};
use super::graph::{input_field, Base, Entries};
use super::*;
use plume_jobs::yaml::{self, Location, Spanned};

/// A value set on top of an entry's config: one ablation value or one sweep coordinate,
/// with the place it came from for errors.
#[derive(Debug, Clone)]
pub(super) struct Override {
    /// Dotted config path (`losses.preservation`).
    pub(super) path: String,
    pub(super) value: Value,
    pub(super) at: Location,
}

/// The runs of the experiment, in dependency order.
pub(super) fn plan(
    parsed: &ExperimentFile,
    entries: &Entries,
    order: &[usize],
    ctx: &Ctx,
) -> Result<Vec<PlannedRun>, ExperimentError> {
    let sweep_points = match &parsed.sweep {
        Some(s) => super::sweep::points(s, ctx)?,
        None => vec![Vec::new()],
    };
    // Count first: refusing a file that expands too far must not cost checking its runs.
    let count: usize = entries
        .bases
        .iter()
        .map(|b| match b.is_run {
            true => ablation_count(b).saturating_mul(sweep_points.len()),
            false => 1,
        })
        .fold(0usize, usize::saturating_add);
    if count > MAX_RUNS {
        return Err(ctx.err(
            &parsed.runs.referenced,
            format!("the experiment expands into {count} runs; at most {MAX_RUNS} are allowed"),
        ));
    }
    let once = [Vec::new()];
    let mut runs = Vec::new();
    for &i in order {
        let b = &entries.bases[i];
        let (variants, points) = if b.is_run {
            (
                ablation_variants(b.entry.ablate.as_ref()),
                &sweep_points[..],
            )
        } else {
            (vec![Vec::new()], &once[..])
        };
        for v in &variants {
            for p in points {
                let overrides: Vec<Override> = v.iter().chain(p.iter()).cloned().collect();
                runs.push(plan_run(parsed, entries, b, &overrides, ctx)?);
            }
        }
    }
    Ok(runs)
}

/// One run: the entry's config with the run defaults and its overrides, checked as the
/// worker will parse it.
fn plan_run(
    parsed: &ExperimentFile,
    entries: &Entries,
    b: &Base,
    overrides: &[Override],
    ctx: &Ctx,
) -> Result<PlannedRun, ExperimentError> {
    let config = assemble(parsed, b, overrides, ctx)?;
    check_as_the_worker_will(&config, entries, b, overrides, ctx)?;
    check_search_budget(parsed, &config, b, overrides, ctx)?;
    let name = if overrides.is_empty() {
        b.name.to_string()
    } else {
        let values: Vec<String> = overrides
            .iter()
            .map(|o| format!("{}={}", o.path, short(&o.value)))
            .collect();
        format!("{}@{}", b.name, values.join(","))
    };
    let inputs = b
        .needs()
        .iter()
        .map(|n| {
            let up = entries.get(&n.value);
            let field = input_field(b.job, up.job).expect("checked with the needs");
            (field.to_string(), n.value.clone())
        })
        .collect();
    Ok(PlannedRun {
        name,
        job: b.job.into(),
        config: yaml::to_string(&Value::Object(config.clone()))
            .map_err(|e| ctx.err(&b.at, e.message))?,
        total_steps: config.get("steps").and_then(Value::as_i64).unwrap_or(0),
        inputs,
        method: config
            .get("method")
            .and_then(Value::as_str)
            .map(String::from),
        params: overrides
            .iter()
            .map(|o| (o.path.clone(), short(&o.value)))
            .collect(),
        is_run: b.is_run,
        resources: resources(parsed, b, ctx)?,
    })
}

/// The entry's `resources:`, else (runs only) `run_defaults.resources`, else none.
fn resources(parsed: &ExperimentFile, b: &Base, ctx: &Ctx) -> Result<Resources, ExperimentError> {
    let (r, at) = match (&b.entry.resources, parsed.run_defaults.get("resources")) {
        (Some(r), _) => (r.value, &r.referenced),
        (None, Some(v)) if b.is_run => {
            let r: Resources = serde_json::from_value(v.clone())
                .map_err(|e| ctx.err(&b.at, format!("{}: run_defaults.resources: {e}", b.name)))?;
            (r, &b.at)
        }
        _ => return Ok(Resources::default()),
    };
    r.check()
        .map_err(|m| ctx.err(at, format!("{}: {m}", b.name)))?;
    Ok(r)
}

/// Under `search.asha`, every run's `steps` is the full budget `max_steps`: the rungs stop
/// runs early, nothing else shortens them.
fn check_search_budget(
    parsed: &ExperimentFile,
    config: &Mapping,
    b: &Base,
    overrides: &[Override],
    ctx: &Ctx,
) -> Result<(), ExperimentError> {
    let Some(search) = parsed.search.as_ref().filter(|_| b.is_run) else {
        return Ok(());
    };
    let steps = config.get("steps").and_then(Value::as_i64);
    if steps == Some(search.value.asha.max_steps) {
        return Ok(());
    }
    let at = overrides
        .iter()
        .find(|o| o.path == "steps")
        .map(|o| &o.at)
        .or_else(|| b.entry.config_keys.get("steps"))
        .unwrap_or(&b.at);
    Err(ctx.err(
        at,
        format!(
            "{}: steps is {}, but search.asha.max_steps is {}; under ASHA every run's steps is \
             the full budget",
            b.name,
            steps.map_or("not set".to_string(), |s| s.to_string()),
            search.value.asha.max_steps
        ),
    ))
}

/// The job's config: kind and dataset, the run defaults (runs only), the entry's own fields,
/// then the overrides.
fn assemble(
    parsed: &ExperimentFile,
    b: &Base,
    overrides: &[Override],
    ctx: &Ctx,
) -> Result<Mapping, ExperimentError> {
    let mut config = Mapping::new();
    config.insert("kind".into(), Value::String(b.job.into()));
    config.insert(
        "dataset".into(),
        Value::Object(parsed.dataset.value.clone()),
    );
    if b.is_run {
        for (k, val) in parsed
            .run_defaults
            .iter()
            .filter(|(k, _)| *k != "resources")
        {
            config.insert(k.clone(), val.clone());
        }
    }
    for (k, val) in &b.entry.config {
        config.insert(k.clone(), val.clone());
    }
    for o in overrides {
        set_path(&mut config, &o.path, o.value.clone())
            .map_err(|m| ctx.err(&o.at, format!("{}: {m}", b.name)))?;
    }
    Ok(config)
}

/// Parses the run's config exactly as the worker will (`JobSpec::from_yaml`, range checks
/// included), with the upstream checkpoints stood in for by placeholders. An error points
/// at the field the user wrote: the override that set it, else the entry's key, else the
/// entry.
fn check_as_the_worker_will(
    config: &Mapping,
    entries: &Entries,
    b: &Base,
    overrides: &[Override],
    ctx: &Ctx,
) -> Result<(), ExperimentError> {
    let mut check = config.clone();
    for n in b.needs() {
        let up = entries.get(&n.value);
        let field = input_field(b.job, up.job).expect("checked with the needs");
        check.insert(
            field.into(),
            Value::String(format!("upstream-{}.safetensors", n.value)),
        );
    }
    let text = yaml::to_string(&Value::Object(check)).map_err(|e| ctx.err(&b.at, e.message))?;
    let Err(e) = plume_jobs::JobSpec::from_yaml(&text, b.name) else {
        return Ok(());
    };
    let field = match &e {
        // The generated document's positions mean nothing to the user; its top-level key
        // at that line is the field they wrote.
        plume_jobs::JobError::Yaml {
            line: Some(l),
            column,
            ..
        } => yaml::key_path_at(&text, *l, column.unwrap_or(1))
            .into_iter()
            .next(),
        plume_jobs::JobError::Invalid { rule, .. } => Some(top_field(rule)),
        _ => None,
    };
    let detail = e.detail();
    let message = match &field {
        Some(f) if !detail.contains(f.as_str()) => format!("{}: {f}: {detail}", b.name),
        _ => format!("{}: {detail}", b.name),
    };
    let at = field
        .and_then(|f| {
            let by_override = overrides
                .iter()
                .find(|o| o.path.split('.').next() == Some(f.as_str()));
            by_override
                .map(|o| o.at)
                .or_else(|| b.entry.config_keys.get(&f).copied())
        })
        .unwrap_or(b.at);
    Err(ctx.err(&at, message))
}

/// The top-level config field a rule names (`losses` for `losses.preservation`).
fn top_field(rule: &plume_jobs::ConfigError) -> String {
    use plume_jobs::ConfigError;
    match rule {
        ConfigError::OutOfRange { field, .. } | ConfigError::Invalid { field, .. } => {
            field.split('.').next().unwrap_or_default().to_string()
        }
        ConfigError::In { section, .. } => section.to_string(),
    }
}

/// How many variants a run's ablations make.
fn ablation_count(b: &Base) -> usize {
    b.entry
        .ablate
        .iter()
        .flatten()
        .map(|(_, values)| values.value.len().max(1))
        .fold(1usize, usize::saturating_mul)
}

/// Every combination of a run's ablation values, in the order written.
fn ablation_variants(
    ablate: Option<&IndexMap<Spanned<String>, Spanned<Vec<Value>>>>,
) -> Vec<Vec<Override>> {
    let mut variants: Vec<Vec<Override>> = vec![Vec::new()];
    for (path, values) in ablate.into_iter().flatten() {
        variants = variants
            .into_iter()
            .flat_map(|v| {
                values.value.iter().map(move |x| {
                    let mut v = v.clone();
                    v.push(Override {
                        path: path.value.clone(),
                        value: x.clone(),
                        at: path.referenced,
                    });
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
        other => other.to_string(),
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
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Mapping::new()));
        cur = entry
            .as_object_mut()
            .ok_or_else(|| format!("{path}: {p} is not a mapping"))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}
