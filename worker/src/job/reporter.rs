//! Where a job's results go. A job never writes files itself: it hands metrics, checkpoints,
//! pictures and log lines to a [`Reporter`]. The local-directory reporter here serves the
//! command line and tests; the coordinator's gRPC reporter implements the same trait.

use indicatif::{ProgressBar, ProgressStyle};
use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The sink of everything a job produces.
pub trait Reporter {
    /// Scalar metrics at a step (one line per call in `metrics.jsonl`).
    fn metrics(&mut self, step: i64, values: &[(&str, f64)]) -> anyhow::Result<()>;
    /// Where the job should write the checkpoint for `step` (the job writes it atomically).
    fn checkpoint_path(&mut self, step: i64) -> anyhow::Result<PathBuf>;
    /// The checkpoint for `step` is complete at `path`.
    fn checkpoint_written(&mut self, step: i64, path: &Path) -> anyhow::Result<()>;
    /// A picture (PNG bytes) such as a sample grid or a gallery.
    fn artifact(&mut self, step: i64, name: &str, png: &[u8]) -> anyhow::Result<()>;
    /// A human-readable log line.
    fn log(&mut self, line: &str);
    /// Progress of the job's main loop, with the latest losses to show.
    fn progress(&mut self, step: i64, total: i64, losses: &[(&str, f64)]);
    /// The job's main loop is over.
    fn finish(&mut self, message: &str);
}

/// Reports into a directory: `metrics.jsonl`, `checkpoints/`, `artifacts/`, `log.txt`, with a
/// progress bar on a terminal and plain log lines otherwise.
///
/// Nothing is created until the job first reports, so a job that fails validation (a bad
/// resume checkpoint, say) leaves the directory exactly as it was.
pub struct LocalDirReporter {
    dir: PathBuf,
    metrics: Option<File>,
    log: Option<File>,
    bar: Option<ProgressBar>,
    last_line: Instant,
    started: Instant,
    quiet: bool,
}

impl LocalDirReporter {
    /// A reporter into `dir` (created on first write; appended to on resume).
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !dir.is_file(),
            "{} is a file, not a directory",
            dir.display()
        );
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} eta {eta} {msg}")
                    .expect("static template"),
            );
            bar
        });
        Ok(LocalDirReporter {
            dir: dir.to_owned(),
            metrics: None,
            log: None,
            bar,
            last_line: Instant::now(),
            started: Instant::now(),
            quiet: false,
        })
    }

    /// Silences the progress output (tests, benchmarks).
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        self
    }

    /// The output directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open(dir: &Path, slot: &mut Option<File>, name: &str) -> std::io::Result<()> {
        if slot.is_none() {
            fs::create_dir_all(dir)?;
            *slot = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(name))?,
            );
        }
        Ok(())
    }

    fn println(&self, line: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
}

fn format_losses(losses: &[(&str, f64)]) -> String {
    losses
        .iter()
        .map(|(k, v)| format!("{k}={v:.4}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Reporter for LocalDirReporter {
    fn metrics(&mut self, step: i64, values: &[(&str, f64)]) -> anyhow::Result<()> {
        let mut obj = serde_json::Map::new();
        obj.insert("step".into(), step.into());
        obj.insert(
            "time".into(),
            serde_json::json!(self.started.elapsed().as_secs_f64()),
        );
        for (k, v) in values {
            // JSON has no NaN/inf: keep them visible as strings instead of dropping the point.
            let value = if v.is_finite() {
                serde_json::json!(v)
            } else {
                serde_json::json!(v.to_string())
            };
            obj.insert((*k).to_owned(), value);
        }
        Self::open(&self.dir, &mut self.metrics, "metrics.jsonl")?;
        writeln!(
            self.metrics.as_mut().expect("opened above"),
            "{}",
            serde_json::Value::Object(obj)
        )?;
        Ok(())
    }

    fn checkpoint_path(&mut self, step: i64) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join("checkpoints");
        fs::create_dir_all(&dir)?;
        Ok(dir.join(format!("step-{step:08}.safetensors")))
    }

    fn checkpoint_written(&mut self, step: i64, path: &Path) -> anyhow::Result<()> {
        let latest = self.dir.join("checkpoints").join("latest");
        let tmp = latest.with_extension("tmp");
        fs::write(
            &tmp,
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )?;
        fs::rename(tmp, latest)?;
        self.log(&format!("checkpoint at step {step}: {}", path.display()));
        Ok(())
    }

    fn artifact(&mut self, step: i64, name: &str, png: &[u8]) -> anyhow::Result<()> {
        anyhow::ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "artifact name {name:?} must be [A-Za-z0-9_-]+"
        );
        let dir = self.dir.join("artifacts");
        fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}-{step:08}.png"));
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, png)?;
        fs::rename(&tmp, &path)?;
        Ok(())
    }

    fn log(&mut self, line: &str) {
        if Self::open(&self.dir, &mut self.log, "log.txt").is_ok() {
            let _ = writeln!(self.log.as_mut().expect("opened above"), "{line}");
        }
        self.println(line);
    }

    fn progress(&mut self, step: i64, total: i64, losses: &[(&str, f64)]) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => {
                b.set_length(total as u64);
                b.set_position(step as u64);
                b.set_message(format_losses(losses));
            }
            None => {
                if self.last_line.elapsed() >= Duration::from_secs(10) || step == total {
                    self.last_line = Instant::now();
                    let secs = self.started.elapsed().as_secs_f64();
                    eprintln!(
                        "step {step}/{total} ({:.1} s) {}",
                        secs,
                        format_losses(losses)
                    );
                }
            }
        }
    }

    fn finish(&mut self, message: &str) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        self.log(message);
    }
}
