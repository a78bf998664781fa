//! `plume-worker`: runs Plume's ML jobs locally, or for a coordinator
//! (`plume-worker --coordinator URL --token T [--device cpu|cuda:N]`).

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use plume_worker::dataset::synth::{write_dataset, SynthSpec};
use plume_worker::dataset::{sheet, Dataset};
use plume_worker::job::{CancelToken, LocalDirReporter, Outcome};
use plume_worker::runner::{self, JobSpec};
use std::path::{Path, PathBuf};

/// Plume's worker: datasets, StyleGAN2 pretraining, judges, benchmarks.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Serve a coordinator at this URL instead of running a subcommand.
    #[arg(long)]
    coordinator: Option<String>,
    /// Worker token of the coordinator.
    #[arg(long, env = "PLUME_WORKER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the worker token (first line), instead of --token: batch jobs read it
    /// from the user's own files so the token never sits in a job script or environment.
    #[arg(long, env = "PLUME_WORKER_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Exit after this many seconds without a run (for batch systems such as Slurm, so an
    /// allocation is handed back when the queue drains).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=604_800))]
    idle_exit: Option<u64>,
    /// Devices for the coordinator's jobs: cpu, cuda, cuda:N, auto, or a list such as
    /// cuda:0,cuda:1 (one slot per GPU: that many runs at once, or one run using several).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Runs at once on a CPU device (each gets one slot); GPUs have one slot each.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    slots: Option<u32>,
    /// Advertise COUNT GPUs of GB gigabytes each (e.g. 2x24) while running every job on the
    /// CPU: for testing placement without GPUs.
    #[arg(long, value_name = "COUNTxGB")]
    simulate_gpus: Option<String>,
    /// Worker name shown by the coordinator.
    #[arg(long)]
    name: Option<String>,
    /// Directory for running jobs' checkpoints and downloaded inputs.
    #[arg(long, default_value = ".plume-worker")]
    work_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// The merged settings (plume.toml files, PLUME_* variables, flags) and where each came
    /// from; tokens are never printed.
    Config,
    /// Render or inspect datasets in the CUB-200-2011 layout.
    Dataset {
        #[command(subcommand)]
        command: DatasetCommand,
    },
    /// Run one job from a YAML file, writing metrics.jsonl, checkpoints/ and artifacts/ to --out.
    Run {
        /// The job file (`kind: pretrain-generator | train-judge | invert`, plus its fields).
        job: PathBuf,
        /// Output directory (created; reused when resuming).
        #[arg(long)]
        out: PathBuf,
        /// Continue from this checkpoint.
        #[arg(long)]
        resume: Option<PathBuf>,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Edit one image with a caption using a `train-text` checkpoint.
    Edit {
        /// The `train-text` checkpoint.
        #[arg(long)]
        checkpoint: PathBuf,
        /// A dataset image id, or a PNG file (inverted first).
        #[arg(long)]
        image: String,
        /// What the edited bird should look like.
        #[arg(long)]
        caption: String,
        /// A caption of the input (needed by method `reconstruction` for a PNG).
        #[arg(long)]
        source_caption: Option<String>,
        /// Output PNG (input | G(w) | edited).
        #[arg(long)]
        out: PathBuf,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Bring a published model into Plume's format.
    Import {
        #[command(subcommand)]
        what: ImportCommand,
    },
    /// Print performance tables.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Render synthetic birds.
    Synth {
        /// Output directory (must be empty or absent).
        #[arg(long)]
        out: PathBuf,
        /// Number of images.
        #[arg(long, default_value_t = 6000)]
        images: u32,
        /// Side length: 32, 64 or 128.
        #[arg(long, default_value_t = 32)]
        resolution: u32,
        /// Renderer seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Print counts and attribute balance, and write a contact sheet PNG.
    Show {
        /// The dataset directory.
        dir: PathBuf,
        /// Where to write the contact sheet (default: DIR/contact_sheet.png).
        #[arg(long)]
        sheet: Option<PathBuf>,
        /// Images on the sheet.
        #[arg(long, default_value_t = 36)]
        count: usize,
    },
}

#[derive(Subcommand)]
enum ImportCommand {
    /// A StyleGAN2 generator (`g_ema`, else `g`, else a bare state dict) -> a Plume generator
    /// checkpoint that invert, train-text, evaluate and edit load like a trained one.
    Stylegan2 {
        /// The project whose checkpoint format FILE is in.
        #[arg(long = "from", value_enum)]
        format: ImportFormat,
        /// A `.pt` (read through the venv's torch) or `.safetensors`.
        file: PathBuf,
        /// The Plume checkpoint to write (nothing is written on any error).
        #[arg(long)]
        out: PathBuf,
    },
}

/// `--from` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ImportFormat {
    /// rosinality/stylegan2-pytorch.
    Rosinality,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// G+D training step time, images/s, peak memory and FLOP/s.
    Generator {
        /// Timed steps per configuration.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// BERT encoding throughput (captions/s at batch 1 and 64).
    Text {
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

/// The settings a `plume.toml` (`[worker]`) or a `PLUME_*` variable may give (flag ids; see
/// the `plume-settings` crate).
const SETTINGS: plume_settings::Spec = plume_settings::Spec {
    section: "worker",
    keys: &[
        "coordinator",
        "token",
        "token_file",
        "device",
        "slots",
        "simulate_gpus",
        "name",
        "work_dir",
        "idle_exit",
    ],
};

fn main() -> Result<()> {
    let cwd = std::env::current_dir().context("the current directory")?;
    let (mut cli, settings) = plume_settings::parse_or_exit::<Cli>(&SETTINGS, &cwd);
    let Some(command) = cli.command.take() else {
        return serve_remote(cli);
    };
    match command {
        Command::Config => {
            println!("plume-worker's settings ([worker] in plume.toml, PLUME_* variables, flags):");
            print!("{}", plume_settings::report(&settings, &cwd));
            Ok(())
        }
        Command::Dataset {
            command:
                DatasetCommand::Synth {
                    out,
                    images,
                    resolution,
                    seed,
                },
        } => synth_dataset(&out, images, resolution, seed),
        Command::Dataset {
            command: DatasetCommand::Show { dir, sheet, count },
        } => show_dataset(&dir, sheet, count),
        Command::Run {
            job,
            out,
            resume,
            device,
        } => run_local(&job, &out, resume.as_deref(), &device),
        Command::Bench {
            what: BenchCommand::Generator { steps, device },
        } => {
            let device = plume_worker::parse_device(&device).map_err(anyhow::Error::msg)?;
            print!("{}", plume_worker::bench::generator(steps, device)?);
            Ok(())
        }
        Command::Bench {
            what: BenchCommand::Text { device },
        } => {
            let device = plume_worker::parse_device(&device).map_err(anyhow::Error::msg)?;
            print!("{}", plume_worker::bench::text(device)?);
            Ok(())
        }
        Command::Edit {
            checkpoint,
            image,
            caption,
            source_caption,
            out,
            device,
        } => {
            let device = plume_worker::parse_device(&device).map_err(anyhow::Error::msg)?;
            let req = plume_worker::text::edit::EditRequest {
                checkpoint: &checkpoint,
                image: &image,
                caption: &caption,
                source_caption: source_caption.as_deref(),
                out: &out,
            };
            println!("{}", plume_worker::text::edit::edit(&req, device)?);
            Ok(())
        }
        Command::Import {
            what: ImportCommand::Stylegan2 { format, file, out },
        } => import_stylegan2(format, &file, &out),
    }
}

/// No subcommand: a worker serving a coordinator until told to stop.
fn serve_remote(cli: Cli) -> Result<()> {
    let Some(coordinator) = cli.coordinator else {
        anyhow::bail!("give a subcommand (see --help) or --coordinator URL --token T");
    };
    let token = match (cli.token, &cli.token_file) {
        (Some(t), _) => t,
        (None, Some(f)) => read_token_file(f)?,
        (None, None) => anyhow::bail!(
            "--token, --token-file (or PLUME_WORKER_TOKEN, PLUME_WORKER_TOKEN_FILE) is needed \
             with --coordinator"
        ),
    };
    let slots = match &cli.simulate_gpus {
        Some(spec) => plume_worker::slots::simulated(spec).map_err(anyhow::Error::msg)?,
        None => {
            plume_worker::slots::from_flags(&cli.device, cli.slots).map_err(anyhow::Error::msg)?
        }
    };
    let name = cli.name.unwrap_or_else(|| {
        format!(
            "{}-{}",
            std::fs::read_to_string("/etc/hostname")
                .unwrap_or_default()
                .trim(),
            std::process::id()
        )
    });
    plume_worker::remote::serve(plume_worker::remote::RemoteOptions {
        coordinator,
        token,
        slots,
        name,
        work_dir: cli.work_dir,
        idle_exit: cli.idle_exit.map(std::time::Duration::from_secs),
        slurm_job_id: std::env::var("SLURM_JOB_ID").ok().filter(|s| !s.is_empty()),
    })
}

/// The token in `path`: its first line, trimmed; an empty or unreadable file is an error.
fn read_token_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the worker token from {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    anyhow::ensure!(!token.is_empty(), "{} holds no token", path.display());
    Ok(token.to_string())
}

/// `dataset synth`: renders a synthetic-birds dataset, with progress.
fn synth_dataset(out: &Path, images: u32, resolution: u32, seed: u64) -> Result<()> {
    let spec = SynthSpec {
        images,
        resolution,
        seed,
    };
    let t = std::time::Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    write_dataset(out, &spec, |done, total| {
        if tty {
            eprint!("\rrendered {done}/{total}");
        } else if done == total || done % 2000 == 0 {
            eprintln!("rendered {done}/{total}");
        }
    })?;
    if tty {
        eprintln!();
    }
    println!(
        "wrote {images} images at {resolution} px to {} in {:.1} s",
        out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `dataset show`: a dataset's summary and contact sheet.
fn show_dataset(dir: &Path, sheet_path: Option<PathBuf>, count: usize) -> Result<()> {
    let ds = Dataset::open(dir)?;
    print!("{}", sheet::summary(&ds));
    let path = sheet_path.unwrap_or_else(|| dir.join("contact_sheet.png"));
    sheet::contact_sheet(&ds, count, &path)?;
    println!("contact sheet: {}", path.display());
    Ok(())
}

/// `run`: one job to a local directory; Ctrl-C checkpoints and stops, a second one aborts.
fn run_local(job: &Path, out: &Path, resume: Option<&Path>, device: &str) -> Result<()> {
    let spec = JobSpec::from_file(job)?;
    let device = plume_worker::parse_device(device).map_err(anyhow::Error::msg)?;
    if let Some(r) = resume {
        // Check the checkpoint before anything is written: a truncated or foreign file
        // must leave the output directory untouched.
        let ckpt = plume_worker::nn::checkpoint::Checkpoint::load(r)?;
        ckpt.expect_kind(spec.kind())?;
    }
    let mut reporter =
        LocalDirReporter::create(out).with_context(|| format!("creating {}", out.display()))?;
    let cancel = CancelToken::default();
    let handler_token = cancel.clone();
    ctrlc::set_handler(move || {
        if handler_token.is_cancelled() {
            eprintln!("\nsecond interrupt: exiting without a final checkpoint");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: writing a final checkpoint (press Ctrl-C again to abort)");
        handler_token.cancel();
    })?;
    match runner::run(&spec, resume, device, &mut reporter, &cancel)? {
        Outcome::Completed { step } => {
            println!("completed at step {step}; results in {}", out.display());
            Ok(())
        }
        Outcome::Cancelled { step } => {
            println!(
                "cancelled at step {step}; resume with --resume {}",
                out.join("checkpoints")
                    .join(format!("step-{step:08}.safetensors"))
                    .display()
            );
            std::process::exit(130);
        }
    }
}

/// `import stylegan2`: a published generator as a Plume checkpoint.
fn import_stylegan2(format: ImportFormat, file: &Path, out: &Path) -> Result<()> {
    use plume_worker::stylegan::import::{import, GeneratorFormat};
    let format = match format {
        ImportFormat::Rosinality => GeneratorFormat::Rosinality,
    };
    let done = import(format, file, None, out)?;
    let n = done.network;
    println!(
        "imported {} tensors: {} px, z {} -> w {} ({} mapping layers), channels {} at 4 px .. {} at {} px -> {}",
        done.tensors,
        n.resolution,
        n.z_dim,
        n.w_dim,
        n.mapping_layers,
        n.channels(4),
        n.channels(n.resolution),
        n.resolution,
        out.display()
    );
    Ok(())
}
