//! The experiment file as written: its serde shape, every part of it with the place the YAML
//! parser found it, the checks on its top-level fields, and the context that turns a place
//! into a file, line and column.

use super::*;
use plume_jobs::yaml::{self, Location, Spanned};
use serde::de::{Deserializer, MapAccess, Visitor};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExperimentFile {
    pub(super) name: Spanned<String>,
    pub(super) dataset: Spanned<Mapping>,
    #[serde(default)]
    pub(super) stages: IndexMap<Spanned<String>, Spanned<Entry>>,
    pub(super) runs: Spanned<Vec<Spanned<Entry>>>,
    /// Fields every entry of `runs` gets unless it sets them itself (one budget for all).
    #[serde(default)]
    pub(super) run_defaults: Mapping,
    #[serde(default)]
    pub(super) sweep: Option<Spanned<IndexMap<Spanned<String>, Spanned<Value>>>>,
    #[serde(default)]
    pub(super) objective: Option<Spanned<Objective>>,
    #[serde(default = "d_restarts")]
    pub(super) max_restarts: u32,
    #[serde(default)]
    pub(super) checkpoints: Option<Spanned<Retention>>,
    /// Adaptive early stopping of the `runs:` (ASHA).
    #[serde(default)]
    pub(super) search: Option<Spanned<super::search::Search>>,
    /// Higher goes first (-1000..=1000).
    #[serde(default)]
    pub(super) priority: Option<Spanned<i32>>,
}

fn d_restarts() -> u32 {
    2
}

/// A stage or run as written: the fields Plume reads itself, and the job's own config.
#[derive(Debug, Default)]
pub(super) struct Entry {
    /// Runs have `name:`; stages are named by their key.
    pub(super) name: Option<Spanned<String>>,
    pub(super) job: Option<Spanned<String>>,
    pub(super) needs: Vec<Spanned<String>>,
    /// `Some` when written (only runs may ablate).
    pub(super) ablate: Option<IndexMap<Spanned<String>, Spanned<Vec<Value>>>>,
    /// What the run needs of its worker, when written.
    pub(super) resources: Option<Spanned<Resources>>,
    /// Everything else: the job's config, checked later exactly as the worker parses it.
    pub(super) config: Mapping,
    /// Where each key of `config` is written, so an error in a job field points at it.
    pub(super) config_keys: HashMap<String, Location>,
}

/// Reads an entry key by key, so the fields Plume reads keep their places (serde's
/// `flatten` would buffer them and lose every position).
impl<'de> serde::Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = Entry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping with `job:` and the job's fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry, A::Error> {
                let mut e = Entry::default();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    match key.value.as_str() {
                        "name" => e.name = Some(map.next_value()?),
                        "job" => e.job = Some(map.next_value()?),
                        "needs" => e.needs = map.next_value()?,
                        "ablate" => e.ablate = Some(map.next_value()?),
                        "resources" => e.resources = Some(map.next_value()?),
                        _ => {
                            let value: Value = map.next_value()?;
                            e.config_keys.insert(key.value.clone(), key.referenced);
                            e.config.insert(key.value, value);
                        }
                    }
                }
                Ok(e)
            }
        }
        d.deserialize_map(EntryVisitor)
    }
}

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.contains("..")
}

pub(super) const NAME_RULE: &str =
    "1 to 64 characters of letters, digits, '-', '_' or '.', starting with a letter or digit, no '..'";

/// The file being parsed, to turn places into errors.
pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
}

impl Ctx<'_> {
    /// An error at a place the parser recorded.
    pub(super) fn err(&self, at: &Location, message: String) -> ExperimentError {
        let (line, column) = yaml::position(at);
        ExperimentError {
            file: self.file.into(),
            line,
            column,
            message,
        }
    }

    /// An error about the whole file (line 0).
    pub(super) fn whole(&self, message: String) -> ExperimentError {
        ExperimentError {
            file: self.file.into(),
            line: 0,
            column: 0,
            message,
        }
    }
}

/// Reads the file: its size, its shape (unknown fields and wrong types are errors, placed by
/// the parser), and the top-level fields serde cannot check.
pub(super) fn read(ctx: &Ctx, src: &str) -> Result<ExperimentFile, ExperimentError> {
    if src.len() > MAX_EXPERIMENT_BYTES {
        return Err(ctx.whole(format!(
            "the file is {} bytes; experiments are at most {MAX_EXPERIMENT_BYTES} bytes",
            src.len()
        )));
    }
    let parsed: ExperimentFile = yaml::from_str(src).map_err(|e| ExperimentError {
        file: ctx.file.into(),
        line: e.line,
        column: e.column,
        message: e.message,
    })?;
    let name = &parsed.name;
    if !valid_name(&name.value) {
        return Err(ctx.err(
            &name.referenced,
            format!(
                "experiment name {:?} is not allowed: {NAME_RULE}",
                name.value
            ),
        ));
    }
    if !parsed.dataset.value.contains_key("kind") {
        return Err(ctx.err(
            &parsed.dataset.referenced,
            "dataset needs a `kind` (synthetic-birds or cub)".into(),
        ));
    }
    // Sizes a machine cannot honour are refused here, at the dataset's own line; a dataset
    // that does not even parse is reported by the first job that reads it, field by field.
    let dataset = serde_json::from_value::<plume_jobs::DatasetSpec>(Value::Object(
        parsed.dataset.value.clone(),
    ));
    if let Ok(Err(e)) = dataset.map(|d| d.validate()) {
        return Err(ctx.err(&parsed.dataset.referenced, format!("dataset: {e}")));
    }
    if let Some(objective) = &parsed.objective {
        let metric = &objective.value.metric;
        if metric.is_empty() || metric.len() > 128 {
            return Err(ctx.err(
                &objective.referenced,
                "objective.metric must be a metric name such as eval/score".into(),
            ));
        }
    }
    if let Some(checkpoints) = &parsed.checkpoints {
        if checkpoints.value.keep.latest == 0 {
            return Err(ctx.err(
                &checkpoints.referenced,
                "checkpoints.keep.latest must be at least 1 (resumes and downstream runs need the last checkpoint)".into(),
            ));
        }
    }
    if let Some(search) = &parsed.search {
        super::search::check(search, ctx)?;
    }
    if let Some(p) = parsed
        .priority
        .as_ref()
        .filter(|p| !(-1000..=1000).contains(&p.value))
    {
        return Err(ctx.err(
            &p.referenced,
            format!("priority must be -1000..=1000, not {}", p.value),
        ));
    }
    if parsed.runs.value.is_empty() && parsed.stages.is_empty() {
        return Err(ctx.err(
            &parsed.runs.referenced,
            "an experiment needs at least one run".into(),
        ));
    }
    Ok(parsed)
}
