//! The crate's errors: what is wrong with a job configuration ([`ConfigError`]) and why a job
//! file could not be read ([`JobError`]). Callers match on them or print them; nobody parses
//! their text.

use std::path::PathBuf;

/// A configuration value that breaks a rule serde cannot express.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A number outside the range a real machine can honour (NaN included).
    #[error("{field} must be in {range}, got {got}")]
    OutOfRange {
        /// The field, as written in YAML (`losses.preservation`).
        field: String,
        /// The allowed range, `LO..=HI`.
        range: String,
        /// The value given.
        got: String,
    },
    /// Any other rule: the field and the whole sentence to show.
    #[error("{message}")]
    Invalid {
        /// The field, as written in YAML.
        field: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// An error inside a nested section (`network: ...`).
    #[error("{section}: {inner}")]
    In {
        /// The section's name.
        section: &'static str,
        /// The error inside it (shown in this one's message, so not a `source`).
        inner: Box<ConfigError>,
    },
}

impl ConfigError {
    /// A rule other than a range, with its message.
    pub fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a job could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// Larger than [`crate::MAX_JOB_FILE_BYTES`].
    #[error("{}: {len} bytes is larger than the {limit}-byte limit for a job file", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// Not UTF-8.
    #[error("{}: not valid UTF-8", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },
    /// Not YAML, or not the shape of the kind's configuration (unknown field, wrong type).
    #[error("{origin}{}: {message}", location(*line, *column))]
    Yaml {
        /// Where the text came from.
        origin: String,
        /// 1-based line, when the parser knows it.
        line: Option<usize>,
        /// 1-based column, when the parser knows it.
        column: Option<usize>,
        /// The parser's message.
        message: String,
    },
    /// `kind:` missing, not a string, or not a known kind.
    #[error("{origin}{}: {message}", location(*line, None))]
    Kind {
        /// Where the text came from.
        origin: String,
        /// The `kind:` line, when there is one.
        line: Option<usize>,
        /// What is wrong with it.
        message: String,
    },
    /// Parsed, but a value breaks a rule.
    #[error("{origin}: {rule}")]
    Invalid {
        /// Where the text came from.
        origin: String,
        /// The rule broken (shown in this one's message, so not a `source`).
        rule: ConfigError,
    },
}

impl JobError {
    /// The message without its origin and position, for callers that point at the error
    /// themselves (the experiment parser points at the YAML entry the job came from).
    pub fn detail(&self) -> String {
        match self {
            JobError::Yaml { message, .. } | JobError::Kind { message, .. } => message.clone(),
            JobError::Invalid { rule, .. } => rule.to_string(),
            other => other.to_string(),
        }
    }
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}
