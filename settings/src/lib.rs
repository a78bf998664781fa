//! Layered settings of `plume` and `plume-worker`. Each setting is a flag of the binary, and
//! can also come from, in rising precedence:
//! 1. `plume.toml` in the user config dir (`$XDG_CONFIG_HOME/plume/` or `~/.config/plume/`);
//! 2. `plume.toml` in the current directory (the project's);
//! 3. a `PLUME_*` environment variable;
//! 4. the flag itself.
//!
//! The files are read with the `config` crate, each key under the binary's section (`[plume]`
//! or `[worker]`). File values become the flags' defaults, so clap's own precedence (flag over
//! variable over default) does the layering. Every file and environment value is checked with
//! its flag's own parser first, so a bad one names its source and key; an unknown key is an
//! error too. [`report`] says where each setting came from, never showing a token.

use clap::{Arg, ArgMatches, Command};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The settings one binary takes from files and variables: its section and its keys (flag
/// ids, as in `--work-dir` -> `work_dir`).
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// `plume` or `worker`.
    pub section: &'static str,
    /// The flags a file or variable may set.
    pub keys: &'static [&'static str],
}

/// Whether a key's value is never shown (tokens, and a database URL's password).
fn secret(key: &str) -> bool {
    key.contains("token") || key == "database_url"
}

/// Sections a file may have (one per binary).
const SECTIONS: &[&str] = &["plume", "worker"];

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The command line.
    Flag,
    /// An environment variable.
    Env(String),
    /// A `plume.toml`.
    File(PathBuf),
    /// The flag's built-in default (or unset).
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Source::Flag => write!(f, "flag"),
            Source::Env(v) => write!(f, "environment ({v})"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Default => write!(f, "default"),
        }
    }
}

/// One setting as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Its key.
    pub key: String,
    /// Its value (`None`: unset); a token's is never kept.
    pub value: Option<String>,
    /// Where it came from.
    pub source: Source,
}

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A file that is not valid TOML, or has a section this binary does not know.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value its flag refuses.
    #[error("{source_name}: {key} = {value:?}: {message}")]
    BadValue {
        /// The file or variable.
        source_name: String,
        /// `section.key`.
        key: String,
        /// The value written.
        value: String,
        /// The flag parser's reason.
        message: String,
    },
    /// The command line itself (clap's error, with its own formatting, help and version).
    #[error(transparent)]
    Args(#[from] clap::Error),
}

/// The settings files, lowest precedence first: the user's, then the project's (cwd).
pub fn files(cwd: &Path) -> Vec<PathBuf> {
    let user = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("plume").join("plume.toml"));
    user.into_iter()
        .chain(std::iter::once(cwd.join("plume.toml")))
        .collect()
}

/// A value from a file, with the file.
#[derive(Debug, Clone)]
struct FileValue {
    value: String,
    path: PathBuf,
}

/// The values of `spec`'s section in `paths` (later files win); unknown keys and sections are
/// errors naming the file.
fn read_files(
    paths: &[PathBuf],
    spec: &Spec,
) -> Result<BTreeMap<String, FileValue>, SettingsError> {
    let mut out = BTreeMap::new();
    for path in paths.iter().filter(|p| p.is_file()) {
        let err = |message: String| SettingsError::File {
            path: path.clone(),
            message,
        };
        let cfg = config::Config::builder()
            .add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml))
            .build()
            .map_err(|e| err(e.to_string()))?;
        let top = cfg
            .clone()
            .try_deserialize::<BTreeMap<String, config::Value>>()
            .map_err(|e| err(e.to_string()))?;
        if let Some(bad) = top.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
            return Err(err(format!(
                "unknown section [{bad}]; the sections are [plume] and [worker]"
            )));
        }
        let Ok(table) = cfg.get_table(spec.section) else {
            continue;
        };
        for (key, v) in table {
            let name = format!("{}.{key}", spec.section);
            if !spec.keys.contains(&key.as_str()) {
                return Err(err(format!(
                    "unknown key {name}; [{}] takes {}",
                    spec.section,
                    spec.keys.join(", ")
                )));
            }
            let value = v.into_string().map_err(|_| SettingsError::BadValue {
                source_name: path.display().to_string(),
                key: name.clone(),
                value: String::new(),
                message: "expected a single value (a string, number or boolean)".into(),
            })?;
            out.insert(
                key,
                FileValue {
                    value,
                    path: path.clone(),
                },
            );
        }
    }
    Ok(out)
}

/// Applies `f` to the argument `id` of `cmd` and of every subcommand that has it.
fn mut_everywhere(cmd: Command, id: &str, f: &dyn Fn(Arg) -> Arg) -> Command {
    let mut cmd = if cmd.get_arguments().any(|a| a.get_id() == id) {
        cmd.mut_arg(id, f)
    } else {
        cmd
    };
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for s in subs {
        cmd = cmd.mut_subcommand(s, |sc| mut_everywhere(sc, id, f));
    }
    cmd
}

/// The first command in the tree with argument `id`, and the argument.
fn find<'a>(cmd: &'a Command, id: &str) -> Option<(&'a Command, &'a Arg)> {
    if let Some(a) = cmd.get_arguments().find(|a| a.get_id() == id) {
        return Some((cmd, a));
    }
    cmd.get_subcommands().find_map(|s| find(s, id))
}

/// Checks `value` with the flag's own parser, by parsing `--flag value` with a command that
/// has that flag alone.
fn check(arg: &Arg, value: &str) -> Result<(), String> {
    if !arg.get_action().takes_values() {
        return match value {
            "true" | "false" => Ok(()),
            _ => Err("expected true or false".into()),
        };
    }
    let long = arg.get_long().unwrap_or(arg.get_id().as_str());
    let probe = Command::new("check")
        .no_binary_name(true)
        .arg(arg.clone().required(false).env(None::<&str>));
    probe
        .try_get_matches_from([format!("--{long}"), value.to_string()])
        .map(|_| ())
        .map_err(|e| {
            let text = e.to_string();
            text.lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_string()
        })
}

/// The environment variable of a key: the flag's own, else `PLUME_<KEY>`.
fn env_name(cmd: &Command, key: &str) -> String {
    find(cmd, key)
        .and_then(|(_, a)| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("PLUME_{}", key.to_uppercase()))
}

/// Parses `args` with `cmd`, the settings of `spec` layered under the flags (see the module).
/// Returns the matches and where each setting came from.
pub fn parse(
    cmd: Command,
    spec: &Spec,
    args: Vec<OsString>,
    cwd: &Path,
) -> Result<(ArgMatches, Vec<Setting>), SettingsError> {
    let paths = files(cwd);
    let from_files = read_files(&paths, spec)?;
    let mut cmd = cmd;
    for key in spec.keys {
        let env = env_name(&cmd, key);
        cmd = mut_everywhere(cmd, key, &|a: Arg| a.env(env.clone()));
    }
    let mut report = vec![];
    for key in spec.keys {
        let Some((_, arg)) = find(&cmd, key) else {
            continue;
        };
        let env = env_name(&cmd, key);
        let env_value = std::env::var(&env).ok().filter(|v| !v.is_empty());
        let file = from_files.get(*key);
        for (value, source_name) in [
            (env_value.clone(), format!("environment variable {env}")),
            (
                file.map(|f| f.value.clone()),
                file.map_or(String::new(), |f| f.path.display().to_string()),
            ),
        ] {
            if let Some(v) = value {
                check(arg, &v).map_err(|message| SettingsError::BadValue {
                    source_name,
                    key: format!("{}.{key}", spec.section),
                    value: v.clone(),
                    message,
                })?;
            }
        }
        let default = arg
            .get_default_values()
            .first()
            .map(|d| d.to_string_lossy().into_owned());
        let (value, source) = match (env_value, file) {
            (Some(v), _) => (Some(v), Source::Env(env)),
            (None, Some(f)) => (Some(f.value.clone()), Source::File(f.path.clone())),
            (None, None) => (default, Source::Default),
        };
        report.push(Setting {
            key: key.to_string(),
            value: value.filter(|_| !secret(key)),
            source,
        });
    }
    for (key, f) in &from_files {
        let v = f.value.clone();
        cmd = mut_everywhere(cmd, key, &|a: Arg| a.default_value(v.clone()));
    }
    let matches = cmd.try_get_matches_from(args)?;
    flags_over_report(&matches, &mut report);
    Ok((matches, report))
}

/// [`parse`] of this process's command line into `C`, for a binary's `main`: clap's own
/// errors (and `--help`, `--version`) exit as clap exits them; a bad setting exits with
/// status 2, naming its source and key.
pub fn parse_or_exit<C: clap::Parser>(spec: &Spec, cwd: &Path) -> (C, Vec<Setting>) {
    let parsed = parse(C::command(), spec, std::env::args_os().collect(), cwd)
        .and_then(|(m, s)| Ok((C::from_arg_matches(&m)?, s)));
    match parsed {
        Ok(x) => x,
        Err(SettingsError::Args(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

/// Marks the settings given as flags on this command line.
fn flags_over_report(matches: &ArgMatches, report: &mut [Setting]) {
    let mut m = Some(matches);
    while let Some(cur) = m {
        for s in report.iter_mut() {
            if cur.try_contains_id(&s.key).unwrap_or(false)
                && cur.value_source(&s.key) == Some(clap::parser::ValueSource::CommandLine)
            {
                s.source = Source::Flag;
                if !secret(&s.key) {
                    s.value = cur
                        .get_raw(&s.key)
                        .and_then(|mut v| v.next())
                        .map(|v| v.to_string_lossy().into_owned());
                }
            }
        }
        m = cur.subcommand().map(|(_, sub)| sub);
    }
}

/// `plume config`'s table: each setting, its value (tokens: only whether one is set) and its
/// source; then the files looked at.
pub fn report(settings: &[Setting], cwd: &Path) -> String {
    let mut out = String::new();
    let width = settings.iter().map(|s| s.key.len()).max().unwrap_or(0);
    for s in settings {
        let value = match (&s.value, secret(&s.key)) {
            (_, true) if s.source != Source::Default => "(set; not shown)".to_string(),
            (Some(v), _) => v.clone(),
            (None, _) => "(unset)".to_string(),
        };
        out.push_str(&format!(
            "  {:<width$}  {:<40}  {}\n",
            s.key, value, s.source
        ));
    }
    out.push_str("files, lowest precedence first:\n");
    for f in files(cwd) {
        let state = if f.is_file() { "" } else { " (absent)" };
        out.push_str(&format!("  {}{state}\n", f.display()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> Command {
        Command::new("t")
            .arg(
                Arg::new("slots")
                    .long("slots")
                    .value_parser(clap::value_parser!(u32).range(1..=64)),
            )
            .arg(Arg::new("name").long("name").default_value("w"))
            .arg(Arg::new("token").long("token"))
    }

    const SPEC: Spec = Spec {
        section: "worker",
        keys: &["slots", "name", "token"],
    };

    #[test]
    fn a_bad_file_value_names_the_file_and_key() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("plume.toml"), "[worker]\nslots = 100\n").unwrap();
        let e = parse(cmd(), &SPEC, vec!["t".into()], d.path()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("plume.toml: worker.slots = \"100\""),
            "{text}"
        );
        assert!(text.contains("100 is not in 1..=64"), "{text}");
        std::fs::write(d.path().join("plume.toml"), "[worker]\nsluts = 1\n").unwrap();
        let e = parse(cmd(), &SPEC, vec!["t".into()], d.path()).unwrap_err();
        assert!(e.to_string().contains("unknown key worker.sluts"), "{e}");
    }

    #[test]
    fn a_flag_beats_the_file_and_the_file_beats_the_default() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("plume.toml"),
            "[worker]\nslots = 3\nname = \"from-file\"\ntoken = \"secret\"\n",
        )
        .unwrap();
        let (m, report) = parse(
            cmd(),
            &SPEC,
            vec!["t".into(), "--slots".into(), "5".into()],
            d.path(),
        )
        .unwrap();
        assert_eq!(m.get_one::<u32>("slots"), Some(&5));
        assert_eq!(m.get_one::<String>("name").unwrap(), "from-file");
        let slots = report.iter().find(|s| s.key == "slots").unwrap();
        assert_eq!(
            (slots.value.as_deref(), &slots.source),
            (Some("5"), &Source::Flag)
        );
        let token = report.iter().find(|s| s.key == "token").unwrap();
        assert_eq!(token.value, None, "tokens are never kept");
        assert!(!super::report(&report, d.path()).contains("secret"));
    }
}
