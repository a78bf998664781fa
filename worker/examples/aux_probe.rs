//! Probe: the GAN regime plus an auxiliary attribute head on D's features (trained on reals'
//! labels), and a CatGAN-style G term: each fake should read as one value per attribute group
//! (low conditional entropy) while the batch spreads over the values (high marginal entropy).
//!
//! `cargo run --release -p plume-worker --example aux_probe -- DATA JUDGE STEPS LAMBDA LR BATCH EVAL_EVERY OUT_PREFIX`

use plume_jobs::AugmentConfig;
use plume_worker::dataset::{Dataset, Partition};
use plume_worker::nn::adam::Adam;
use plume_worker::nn::{named_vars, set_requires_grad, trainable_vars};
use plume_worker::stylegan::pretrain::{self, Gan};
use plume_worker::stylegan::{augment, loss, NetworkConfig};
use std::path::PathBuf;
use std::time::Instant;
use tch::{nn, nn::Module, nn::VarStore, Device, Kind, Tensor};

fn entropy(p: &Tensor) -> Tensor {
    -(p * (p + 1e-8).log()).sum_dim_intlist(-1, false, None)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, judge, steps, lambda, lr, batch, every, out, rest @ ..] = &args[..] else {
        anyhow::bail!(
            "usage: aux_probe DATA JUDGE STEPS LAMBDA LR BATCH EVAL_EVERY OUT_PREFIX [cuda]"
        );
    };
    let (steps, lambda, lr, b, every): (i64, f64, f64, i64, i64) = (
        steps.parse()?,
        lambda.parse()?,
        lr.parse()?,
        batch.parse()?,
        every.parse()?,
    );
    let device = if rest.first().is_some_and(|d| d == "cuda") {
        Device::Cuda(0)
    } else {
        Device::Cpu
    };
    let gamma: f64 = std::env::var("GAMMA")
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(5.0);
    let half_life: f64 = std::env::var("EMA")
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(5000.0);
    let ds = Dataset::open(&PathBuf::from(dir))?;
    let net = NetworkConfig::default();
    let train = ds.partition(Partition::Train);
    let images = ds.load_images(&train, net.resolution)?.to_device(device);
    let labels = ds.label_tensor(&train).to_device(device);
    let n = images.size()[0];
    let test = ds
        .load_images(&ds.partition(Partition::Test), net.resolution)?
        .to_device(device);
    let judge = plume_worker::judge::train::load(&PathBuf::from(judge), "judge", device)?;
    let judge = pretrain::JudgeForMetrics::new(judge, &test, 1000);
    let sizes: Vec<i64> = ds.groups.iter().map(|g| g.values.len() as i64).collect();
    let total: i64 = sizes.iter().sum();
    let augment_cfg = AugmentConfig::default();
    let aug = |x: &Tensor| augment::diff_augment(x, &augment_cfg);

    let mut gan = Gan::new(&net, lr, 16, 4, false, 1, device);
    // Adam's first-moment decay for G and D (StyleGAN2 uses 0).
    if let Some(beta1) = std::env::var("BETA1")
        .ok()
        .and_then(|g| g.parse::<f64>().ok())
    {
        gan.g_opt.beta1 = beta1;
        gan.d_opt.beta1 = beta1;
    }
    let a_vs = VarStore::new(device);
    let head = nn::linear(a_vs.root(), net.channels(4), total, Default::default());
    let mut a_opt = Adam::new(trainable_vars(&a_vs), lr, 0.0, 0.99, 1e-8);
    let g_params = trainable_vars(&gan.g_vs);
    let d_params = trainable_vars(&gan.d_vs);
    let ema_params: Vec<(String, Tensor)> = named_vars(&gan.ema_vs)
        .into_iter()
        .filter(|(n, _)| g_params.iter().any(|(m, _)| m == n))
        .collect();
    // Per-group log-probabilities from the head's logits.
    let split = |logits: &Tensor| -> Vec<Tensor> {
        logits
            .split_with_sizes(sizes.as_slice(), 1)
            .iter()
            .map(|l| l.log_softmax(1, Kind::Float))
            .collect()
    };
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
        tch::manual_seed(1000 + step);
        let idx = Tensor::randint(n, [b], (Kind::Int64, device));
        let real = augment::random_xflip(&images.index_select(0, &idx));
        let y = labels.index_select(0, &idx);
        let z = || Tensor::randn([b, net.z_dim], (Kind::Float, device));

        // G: adversarial + CatGAN term through the frozen D and head.
        set_requires_grad(&d_params, false);
        let fake = gan.g.generate(&z(), 1.0);
        let (logits, feats) = gan.d.forward_with_features(&aug(&fake));
        let mut lg = loss::generator_loss(&logits);
        let mut cond = Tensor::zeros([], (Kind::Float, device));
        let mut marg = Tensor::zeros([], (Kind::Float, device));
        if lambda > 0.0 {
            for lp in split(&head.forward(&feats)) {
                let p = lp.exp();
                cond += entropy(&p).mean(None);
                marg += entropy(&p.mean_dim(0, false, None));
            }
            lg += (&cond - &marg) * lambda;
        }
        gan.g_opt.zero_grad();
        a_opt.zero_grad();
        lg.backward();
        gan.g_opt.step();
        tch::no_grad(|| {
            let w = gan.g.mapping.forward(&z());
            let m = w.mean_dim(0, false, None);
            let updated = &m + (&gan.g.w_avg - &m) * 0.995;
            gan.g.w_avg.copy_(&updated);
        });

        // D: logistic loss + the head's cross-entropy on reals' labels.
        set_requires_grad(&d_params, true);
        let fake = tch::no_grad(|| gan.g.generate(&z(), 1.0));
        let (real_logits, real_feats) = gan.d.forward_with_features(&aug(&real));
        let fake_logits = gan.d.forward(&aug(&fake));
        let mut ld = loss::discriminator_loss(&real_logits, &fake_logits);
        let mut ce_total = Tensor::zeros([], (Kind::Float, device));
        if lambda > 0.0 {
            for (g, lp) in split(&head.forward(&real_feats)).iter().enumerate() {
                let target = y.select(1, g as i64);
                ce_total += lp.g_nll_loss(&target, None::<Tensor>, tch::Reduction::Mean, -1);
            }
            ld += &ce_total;
        }
        gan.d_opt.zero_grad();
        a_opt.zero_grad();
        ld.backward();
        gan.d_opt.step();
        a_opt.step();
        if step % 16 == 0 {
            let r = real.detach().set_requires_grad(true);
            let logits = gan.d.forward(&aug(&r));
            let r1 = loss::r1_penalty(&r, &logits);
            gan.d_opt.zero_grad();
            (&r1 * (gamma / 2.0 * 16.0)).backward();
            gan.d_opt.step();
        }
        let beta = loss::ema_beta(b, (step + 1) * b, half_life, 0.05);
        loss::ema_update(&ema_params, &g_params, beta);
        tch::no_grad(|| gan.g_ema.w_avg.copy_(&gan.g.w_avg));
        if step % 200 == 0 {
            println!(
                "step {step}: loss_g {:.3} loss_d {:.3} ce {:.3} cond_ent {:.3} marg_ent {:.3}",
                lg.double_value(&[]),
                ld.double_value(&[]),
                ce_total.double_value(&[]),
                cond.double_value(&[]),
                marg.double_value(&[])
            );
        }
    }
    Ok(())
}
