//! Diagnostic: can the generator draw the data when told exactly what to draw? Fits the CPU
//! config's G (fresh, seeded) to the first 64 training images from 64 fixed latents by pixel
//! L1 + L2, no discriminator, and writes the real images above their fits. If G fits birds
//! with one colour per part here but a GAN run draws colour swirls, G's capacity is not the
//! limit; the adversarial signal is.
//!
//! `cargo run --release -p plume-worker --example fit_generator -- DATASET_DIR STEPS LR OUT.png`

use plume_worker::dataset::{Dataset, Partition};
use plume_worker::nn::adam::Adam;
use plume_worker::nn::trainable_vars;
use plume_worker::stylegan::generator::Generator;
use plume_worker::stylegan::NetworkConfig;
use std::path::PathBuf;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, steps, lr, out] = &args[..] else {
        anyhow::bail!("usage: fit_generator DATASET_DIR STEPS LR OUT.png");
    };
    let (steps, lr): (i64, f64) = (steps.parse()?, lr.parse()?);
    tch::manual_seed(0);
    let ds = Dataset::open(&PathBuf::from(dir))?;
    let net = NetworkConfig::default();
    let idx: Vec<usize> = ds
        .partition(Partition::Train)
        .into_iter()
        .take(64)
        .collect();
    let real = ds.load_images(&idx, net.resolution)?;
    let vs = VarStore::new(Device::Cpu);
    let g = Generator::new(&vs.root(), &net);
    let z = Tensor::randn([idx.len() as i64, net.z_dim], (Kind::Float, Device::Cpu));
    let mut opt = Adam::new(trainable_vars(&vs), lr, 0.0, 0.99, 1e-8);
    for step in 0..steps {
        let diff = g.generate(&z, 1.0) - &real;
        let loss = diff.abs().mean(None) + diff.square().mean(None);
        opt.zero_grad();
        loss.backward();
        opt.step();
        if step % 100 == 0 || step == steps - 1 {
            println!("step {step}: L1 + L2 = {:.4}", loss.double_value(&[]));
        }
    }
    let fit = tch::no_grad(|| g.generate(&z, 1.0)).clamp(-1.0, 1.0);
    let both = Tensor::cat(&[real.narrow(0, 0, 16), fit.narrow(0, 0, 16)], 0);
    plume_worker::picture::image_grid(&both, 8, 4, &[]).save(&PathBuf::from(out))?;
    println!("real (top two rows) and fitted (bottom two) -> {out}");
    Ok(())
}
