//! Probe: IMLE (Li & Malik 2018) training of the CPU config's G. Each step, each real image of
//! the batch is matched to the nearest of K*B fresh samples (pixel L2), and G is pulled
//! towards the real image from that sample's latent. Mode covering by construction.
//!
//! `cargo run --release -p plume-worker --example imle_probe -- DATA JUDGE STEPS K LR EVAL_EVERY OUT_PREFIX`

use plume_worker::dataset::{Dataset, Partition};
use plume_worker::nn::adam::Adam;
use plume_worker::nn::{named_vars, trainable_vars};
use plume_worker::stylegan::generator::Generator;
use plume_worker::stylegan::{augment, loss, pretrain, NetworkConfig};
use std::path::PathBuf;
use std::time::Instant;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, judge, steps, k, lr, every, out] = &args[..] else {
        anyhow::bail!("usage: imle_probe DATA JUDGE STEPS K LR EVAL_EVERY OUT_PREFIX");
    };
    let (steps, k, lr, every): (i64, i64, f64, i64) =
        (steps.parse()?, k.parse()?, lr.parse()?, every.parse()?);
    let b = 16i64;
    tch::manual_seed(1);
    let device = Device::Cpu;
    let ds = Dataset::open(&PathBuf::from(dir))?;
    let net = NetworkConfig {
        z_dim: 128,
        w_dim: 128,
        mapping_layers: 2,
        channel_base: 2048,
        channel_max: 64,
        ..NetworkConfig::default()
    };
    let images = ds.load_images(&ds.partition(Partition::Train), net.resolution)?;
    let n = images.size()[0];
    let test = ds.load_images(&ds.partition(Partition::Test), net.resolution)?;
    let judge = plume_worker::judge::train::load(&PathBuf::from(judge), "judge", device)?;
    let judge = pretrain::JudgeForMetrics::new(judge, &test, 1000);

    let vs = VarStore::new(device);
    let mut g = Generator::new(&vs.root(), &net);
    let mut ema_vs = VarStore::new(device);
    let mut g_ema = Generator::new(&ema_vs.root(), &net);
    ema_vs.copy(&vs)?;
    ema_vs.freeze();
    let params = trainable_vars(&vs);
    let ema_params: Vec<(String, Tensor)> = named_vars(&ema_vs)
        .into_iter()
        .filter(|(n, _)| params.iter().any(|(m, _)| m == n))
        .collect();
    let mut opt = Adam::new(trainable_vars(&vs), lr, 0.0, 0.99, 1e-8);
    let t0 = Instant::now();
    for step in 0..=steps {
        if step % every == 0 {
            let scores = judge.score(&g_ema, 1000, 1000, 0xF1D, &ds.groups, device);
            let shown: Vec<String> = scores
                .iter()
                .filter(|(k, _)| !k.contains("/coverage/") && !k.contains("/top_share/"))
                .map(|(k, v)| format!("{}={v:.3}", k.trim_start_matches("gen/")))
                .collect();
            println!(
                "step {step} ({:.0} s): {}",
                t0.elapsed().as_secs_f64(),
                shown.join(" ")
            );
            std::fs::write(
                format!("{out}-{step}.png"),
                pretrain::sample_grid(&g_ema, device),
            )?;
        }
        if step == steps {
            break;
        }
        let idx = Tensor::randint(n, [b], (Kind::Int64, device));
        let real = augment::random_xflip(&images.index_select(0, &idx));
        let z_sel = tch::no_grad(|| {
            let z = Tensor::randn([k * b, net.z_dim], (Kind::Float, device));
            let fake = g.generate(&z, 1.0).view([k * b, -1]);
            let d = Tensor::cdist(&real.view([b, -1]), &fake, 2.0, None);
            let nearest = d.argmin(1, false);
            z.index_select(0, &nearest)
        });
        let w = g.mapping.forward(&z_sel);
        let fake = g.synthesis(&g.broadcast(&w));
        let diff = fake - &real;
        let l = diff.abs().mean(None) + diff.square().mean(None);
        opt.zero_grad();
        l.backward();
        opt.step();
        tch::no_grad(|| {
            let m = w.mean_dim(0, false, None);
            let updated = &m + (&g.w_avg - &m) * 0.995;
            g.w_avg.copy_(&updated);
            g_ema.w_avg.copy_(&g.w_avg);
        });
        let beta = loss::ema_beta(b, (step + 1) * b, 5000.0, 0.05);
        loss::ema_update(&ema_params, &params, beta);
        if step % 100 == 0 {
            println!("step {step}: loss {:.4}", l.double_value(&[]));
        }
    }
    Ok(())
}
