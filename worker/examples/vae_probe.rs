//! Probe: StyleGAN2's G trained as the decoder of a VAE (encoder -> z -> mapping -> synthesis),
//! optionally with the adversarial loss on prior samples on top (VAE-GAN).
//!
//! `cargo run --release -p plume-worker --example vae_probe -- DATA JUDGE STEPS BETA ADV LR EVAL_EVERY OUT_PREFIX`

use plume_jobs::{AugmentConfig, DatasetSpec, PretrainConfig};
use plume_worker::dataset::{Dataset, Partition};
use plume_worker::nn::adam::Adam;
use plume_worker::nn::layers::lrelu;
use plume_worker::nn::{named_vars, set_requires_grad, trainable_vars};
use plume_worker::stylegan::pretrain::{self, Gan};
use plume_worker::stylegan::{augment, loss, NetworkConfig};
use std::path::PathBuf;
use std::time::Instant;
use tch::{nn, nn::Module, nn::VarStore, Device, Kind, Tensor};

fn encoder(p: &nn::Path, z_dim: i64) -> nn::Sequential {
    let c = |i, o, s| {
        nn::conv2d(
            p,
            i,
            o,
            3,
            nn::ConvConfig {
                stride: s,
                padding: 1,
                ..Default::default()
            },
        )
    };
    nn::seq()
        .add(c(3, 64, 1))
        .add_fn(lrelu)
        .add(c(64, 64, 2))
        .add_fn(lrelu)
        .add(c(64, 128, 2))
        .add_fn(lrelu)
        .add(c(128, 128, 2))
        .add_fn(lrelu)
        .add_fn(|x| x.flatten(1, -1))
        .add(nn::linear(p, 128 * 16, 2 * z_dim, Default::default()))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, judge, steps, beta, adv, lr, every, out, ..] = &args[..] else {
        anyhow::bail!("usage: vae_probe DATA JUDGE STEPS BETA ADV LR EVAL_EVERY OUT_PREFIX");
    };
    let (steps, beta, rec_weight, lr, every): (i64, f64, f64, f64, i64) = (
        steps.parse()?,
        beta.parse()?,
        adv.parse()?,
        lr.parse()?,
        every.parse()?,
    );
    let b = 16i64;
    let device = Device::Cpu;
    let ds = Dataset::open(&PathBuf::from(dir))?;
    let net = NetworkConfig::default();
    let images = ds.load_images(&ds.partition(Partition::Train), net.resolution)?;
    let n = images.size()[0];
    let test = ds.load_images(&ds.partition(Partition::Test), net.resolution)?;
    let judge = plume_worker::judge::train::load(&PathBuf::from(judge), "judge", device)?;
    let judge = pretrain::JudgeForMetrics::new(judge, &test, 1000);
    let cfg = PretrainConfig {
        dataset: DatasetSpec::Cub {
            path: PathBuf::from(dir),
        },
        network: net.clone(),
        steps,
        batch: b,
        lr,
        seed: 1,
        r1_gamma: 5.0,
        r1_interval: 16,
        pl_weight: 0.0,
        pl_interval: 4,
        style_mixing: 0.9,
        ema_half_life_images: 5000.0,
        ema_rampup: 0.05,
        judge: None,
        fid_images: 1000,
        eval_every: every,
        sample_every: every,
        checkpoint_every: every,
        augment: AugmentConfig::default(),
        xflip: true,
        metric_images: 1000,
    };
    let mut gan = Gan::new(&net, lr, 16, 4, false, 1, device);
    let e_vs = VarStore::new(device);
    let enc = encoder(&e_vs.root(), net.z_dim);
    let mut e_opt = Adam::new(trainable_vars(&e_vs), lr, 0.0, 0.99, 1e-8);
    let g_params = trainable_vars(&gan.g_vs);
    let ema_params: Vec<(String, Tensor)> = named_vars(&gan.ema_vs)
        .into_iter()
        .filter(|(n, _)| g_params.iter().any(|(m, _)| m == n))
        .collect();
    let adv = args.get(8).is_some_and(|a| a == "adv");
    let d_params = trainable_vars(&gan.d_vs);
    let t0 = Instant::now();
    for step in 0..=steps {
        if step % every == 0 {
            let scores = judge.score(&gan.g_ema, 1000, 1000, 0xF1D, &ds.groups, device);
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
                pretrain::sample_grid(&gan.g_ema, device),
            )?;
        }
        if step == steps {
            break;
        }
        let seed = 1000 + step as u64;
        tch::manual_seed(seed as i64);
        let idx = Tensor::randint(n, [b], (Kind::Int64, device));
        let real = augment::random_xflip(&images.index_select(0, &idx));
        // VAE step.
        let stats = enc.forward(&real);
        let mu = stats.narrow(1, 0, net.z_dim);
        let logvar = stats.narrow(1, net.z_dim, net.z_dim).clamp(-12.0, 4.0);
        let z = &mu + (&logvar * 0.5).exp() * mu.randn_like();
        let w = gan.g.mapping.forward(&z);
        let recon = gan.g.synthesis(&gan.g.broadcast(&w));
        let d = &recon - &real;
        let rec = d.abs().mean(None) + d.square().mean(None);
        let kl = ((mu.square() + logvar.exp() - &logvar - 1.0).sum_dim_intlist(1, false, None)
            * 0.5)
            .mean(None);
        let mut l = (&rec + &kl * (beta / 3072.0)) * rec_weight;
        let aug = |x: &Tensor| augment::diff_augment(x, &cfg.augment);
        if adv {
            // Adversarial loss on prior samples, through a frozen D.
            set_requires_grad(&d_params, false);
            let zp = Tensor::randn([b, net.z_dim], (Kind::Float, device));
            let fake = gan.g.generate(&zp, 1.0);
            l += loss::generator_loss(&gan.d.forward(&aug(&fake)));
        }
        gan.g_opt.zero_grad();
        e_opt.zero_grad();
        l.backward();
        gan.g_opt.step();
        e_opt.step();
        if adv {
            set_requires_grad(&d_params, true);
            let fake = tch::no_grad(|| {
                gan.g
                    .generate(&Tensor::randn([b, net.z_dim], (Kind::Float, device)), 1.0)
            });
            let ld =
                loss::discriminator_loss(&gan.d.forward(&aug(&real)), &gan.d.forward(&aug(&fake)));
            gan.d_opt.zero_grad();
            ld.backward();
            gan.d_opt.step();
            if step % 16 == 0 {
                let r = real.detach().set_requires_grad(true);
                let logits = gan.d.forward(&aug(&r));
                let r1 = loss::r1_penalty(&r, &logits);
                gan.d_opt.zero_grad();
                (&r1 * (cfg.r1_gamma / 2.0 * 16.0)).backward();
                gan.d_opt.step();
            }
        }
        let beta_ema = loss::ema_beta(b, (step + 1) * b, 5000.0, 0.05);
        loss::ema_update(&ema_params, &g_params, beta_ema);
        tch::no_grad(|| {
            let w = gan
                .g
                .mapping
                .forward(&Tensor::randn([64, net.z_dim], (Kind::Float, device)));
            let m = w.mean_dim(0, false, None);
            let updated = &m + (&gan.g.w_avg - &m) * 0.99;
            gan.g.w_avg.copy_(&updated);
            gan.g_ema.w_avg.copy_(&gan.g.w_avg);
        });
        if step % 100 == 0 {
            println!(
                "step {step}: rec {:.4} kl {:.1}",
                rec.double_value(&[]),
                kl.double_value(&[])
            );
        }
    }
    Ok(())
}
