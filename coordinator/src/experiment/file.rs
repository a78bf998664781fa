//! The experiment file as written: its serde shape, the checks on its top-level fields, and
//! the context that turns an error into a file, line and column.

use super::*;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExperimentFile {
    pub(super) name: String,
    pub(super) dataset: Mapping,
    #[serde(default)]
    pub(super) stages: IndexMap<String, Entry>,
    pub(super) runs: Vec<RunEntry>,
    /// Fields every entry of `runs` gets unless it sets them itself (one budget for all).
    #[serde(default)]
    pub(super) run_defaults: Mapping,
    #[serde(default)]
    pub(super) sweep: Option<IndexMap<String, Value>>,
    #[serde(default)]
    pub(super) objective: Objective,
    #[serde(default = "d_restarts")]
    pub(super) max_restarts: u32,
    #[serde(default)]
    pub(super) checkpoints: Retention,
}

fn d_restarts() -> u32 {
    2
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct Entry {
    pub(super) job: String,
    #[serde(default)]
    pub(super) needs: Vec<String>,
    #[serde(flatten)]
    pub(super) config: Mapping,
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct RunEntry {
    pub(super) name: String,
    pub(super) job: String,
    #[serde(default)]
    pub(super) needs: Vec<String>,
    #[serde(default)]
    pub(super) ablate: IndexMap<String, Vec<Value>>,
    #[serde(flatten)]
    pub(super) config: Mapping,
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

pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
    pub(super) src: &'a str,
}

impl Ctx<'_> {
    /// An error at the first line where `needle` occurs (after the first line holding
    /// `anchor`, when given), else at the top of the file.
    pub(super) fn err_at(
        &self,
        anchor: Option<&str>,
        needle: &str,
        message: String,
    ) -> ExperimentError {
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

/// Reads the file: its size, its shape (unknown fields and wrong types are errors), and the
/// top-level fields serde cannot check.
pub(super) fn read(ctx: &Ctx) -> Result<ExperimentFile, ExperimentError> {
    let (file, src) = (ctx.file, ctx.src);
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
    Ok(parsed)
}
