//! Diagnostic: the generator metrics `pretrain-generator` reports (judge-FID, precision and
//! recall, colour coverage, facing balance), for any `pretrain-generator` checkpoint, an
//! imported one included (`plume-worker import stylegan2 --from rosinality g_ema.pt`), plus
//! its sample grid. Lets a model trained elsewhere, e.g. by rosinality's own code, be scored
//! exactly as Plume scores its own.
//!
//! `cargo run --release -p plume-worker --example generator_metrics -- GENERATOR JUDGE DATASET_DIR IMAGES OUT.png`

use plume_worker::dataset::{Dataset, Partition};
use plume_worker::nn::checkpoint::Checkpoint;
use plume_worker::stylegan::generator::NoiseMode;
use plume_worker::stylegan::{pretrain, scoring};
use std::path::PathBuf;
use tch::Device;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [generator, judge, dir, images, out] = &args[..] else {
        anyhow::bail!("usage: generator_metrics GENERATOR JUDGE DATASET_DIR IMAGES OUT.png");
    };
    let n: i64 = images.parse()?;
    let device = Device::Cpu;
    let ckpt = Checkpoint::load(&PathBuf::from(generator))?;
    let (_vs, mut g) = pretrain::load_generator(&ckpt, device)?;
    // As during training: fresh noise per sample.
    g.noise = NoiseMode::Random;
    let judge = plume_worker::judge::train::load(&PathBuf::from(judge), "judge", device)?;
    let ds = Dataset::open(&PathBuf::from(dir))?;
    let test = ds.load_images(&ds.partition(Partition::Test), g.cfg.resolution)?;
    // Scored by the same code as `pretrain-generator` scores its own.
    let judge = scoring::JudgeForMetrics::new(judge, &test, n);
    for (k, v) in judge.score(&g, n, n, 0xF1D, &ds.groups, device) {
        println!("{k} = {v:.4}");
    }
    std::fs::write(out, scoring::sample_grid(&g, device))?;
    println!("wrote {out}");
    Ok(())
}
