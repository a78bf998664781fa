//! Probes of generator training regimes other than `pretrain-generator`'s (issue 10), scored
//! exactly as `pretrain-generator` scores itself (judge-FID, precision/recall, colour
//! coverage, facing over 1000 samples against 1000 test images), with a sample grid per
//! evaluation. None of them reached the targets; they are kept so that the numbers in
//! `experiments/results/2026-11-27-generator.md` §8 can be reproduced.
//!
//! `cargo run --release -p plume-worker --example regime_probes -- MODE DATA JUDGE STEPS EVAL_EVERY OUT_PREFIX [key=value ...]`
//!
//! - `imle` (`k`=8, `lr`=0.0025): implicit maximum likelihood (Li & Malik 2018). Each real
//!   image is matched to the nearest (pixel L2) of `k` x batch fresh samples and G is pulled
//!   towards it from that sample's latent: mode covering by construction.
//! - `vae` (`beta`=1, `rec`=1, `lr`=0.0025, `adv`=0): G as the decoder of a VAE (a conv
//!   encoder gives z, then mapping and synthesis); `beta` weighs the KL per 3072 pixel values.
//!   `adv`=1 adds the non-saturating loss on prior samples and trains D (VAE-GAN).
//! - `aux` (`lambda`=1, `lr`=0.0025, `batch`=16, `beta1`=0, `gamma`=5, `ema`=5000,
//!   `device`=cpu): the GAN regime plus an attribute head on D's features, trained on the
//!   reals' labels, and a CatGAN term for G: each fake should read as one value per attribute
//!   group (low conditional entropy) while the batch spreads over the values (high marginal
//!   entropy). `lambda`=0 is the plain regime (the control); `beta1` sets Adam's first moment;
//!   `ms` > 0 adds the mode-seeking term of MSGAN (Mao et al. 2019) with that weight.
//! - `cond` (`lr`=0.0025, `batch`=16, `gamma`=5, `ema`=5000, `ch`=64): G and D conditioned
//!   on the attribute labels as in StyleGAN2-ADA (G's mapping reads half z, half an embedding
//!   of the one-hot labels; D adds a projection term); fakes and samples take the labels of
//!   random training images, so samples follow the data's label distribution.
//! - `agan` (`rec`=10, `code`=1, `recd`=1, `lr`=0.0025, `gamma`=5): α-GAN (Rosca et al.
//!   2017): the GAN regime plus an encoder trained with G to reconstruct the reals (pixel L1,
//!   weight `rec`), a code discriminator that holds the encoder's codes to the prior, and
//!   reconstructions shown to D as fakes.
//! - `dcgan` (`batch`=64): a plain DCGAN (transposed convs with batch norm, Adam 2e-4 and
//!   beta1 0.5), not a StyleGAN2: whether a simple GAN does better on these birds.

use anyhow::Context;
use plume_jobs::AugmentConfig;
use plume_worker::dataset::{Dataset, Partition};
use plume_worker::nn::adam::Adam;
use plume_worker::nn::layers::lrelu;
use plume_worker::nn::{named_vars, set_requires_grad, trainable_vars};
use plume_worker::stylegan::generator::Generator;
use plume_worker::stylegan::pretrain::Gan;
use plume_worker::stylegan::scoring::{self, JudgeForMetrics};
use plume_worker::stylegan::{augment, loss, NetworkConfig};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;
use tch::nn::{self, Module, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// What every probe shares: the data, the judge, the options and the reporting.
struct Harness {
    ds: Dataset,
    images: Tensor,
    labels: Tensor,
    judge: JudgeForMetrics,
    device: Device,
    steps: i64,
    every: i64,
    out: String,
    opts: HashMap<String, String>,
    started: Instant,
}

impl Harness {
    fn opt(&self, key: &str, default: f64) -> anyhow::Result<f64> {
        match self.opts.get(key) {
            Some(v) => v.parse().with_context(|| format!("{key}={v}")),
            None => Ok(default),
        }
    }

    /// A random batch of `b` training images (half mirrored) and their labels.
    fn batch(&self, b: i64) -> (Tensor, Tensor) {
        let idx = Tensor::randint(self.images.size()[0], [b], (Kind::Int64, self.device));
        (
            augment::random_xflip(&self.images.index_select(0, &idx)),
            self.labels.index_select(0, &idx),
        )
    }

    /// Prints the scores of `fake` (1000 images) and writes the first 64 as a grid.
    fn report(&self, step: i64, fake: &Tensor) -> anyhow::Result<()> {
        let shown: Vec<String> = self
            .judge
            .score_images(fake, 1000, &self.ds.groups)
            .iter()
            .filter(|(k, _)| !k.contains("/coverage/") && !k.contains("/top_share/"))
            .map(|(k, v)| format!("{}={v:.3}", k.trim_start_matches("gen/")))
            .collect();
        println!(
            "step {step} ({:.0} s): {}",
            self.started.elapsed().as_secs_f64(),
            shown.join(" ")
        );
        plume_worker::picture::image_grid(&fake.narrow(0, 0, 64).clamp(-1.0, 1.0), 8, 4, &[])
            .save(&PathBuf::from(format!("{}-{step}.png", self.out)))?;
        Ok(())
    }

    fn report_generator(&self, step: i64, g: &Generator) -> anyhow::Result<()> {
        self.report(
            step,
            &scoring::generated_images(g, 1000, 0xF1D, self.device),
        )
    }
}

/// The EMA of G's weights and the tracked `w_avg`, as `pretrain-generator` keeps them.
struct Averaging {
    g_params: Vec<(String, Tensor)>,
    ema_params: Vec<(String, Tensor)>,
    half_life: f64,
}

impl Averaging {
    fn new(gan: &Gan, half_life: f64) -> Averaging {
        let g_params = trainable_vars(&gan.g_vs);
        let ema_params = named_vars(&gan.ema_vs)
            .into_iter()
            .filter(|(n, _)| g_params.iter().any(|(m, _)| m == n))
            .collect();
        Averaging {
            g_params,
            ema_params,
            half_life,
        }
    }

    /// The EMA of G's weights only (a conditional G tracks no unconditional `w_avg`).
    fn update_ema_only(&self, _gan: &mut Gan, step: i64, b: i64) {
        let beta = loss::ema_beta(b, (step + 1) * b, self.half_life, 0.05);
        loss::ema_update(&self.ema_params, &self.g_params, beta);
    }

    fn update(&self, gan: &mut Gan, step: i64, b: i64) {
        self.update_ema_only(gan, step, b);
        tch::no_grad(|| {
            let z = Tensor::randn([64, gan.net.z_dim], (Kind::Float, gan.g.w_avg.device()));
            let m = gan.g.mapping.forward(&z).mean_dim(0, false, None);
            let updated = &m + (&gan.g.w_avg - &m) * 0.99;
            gan.g.w_avg.copy_(&updated);
            gan.g_ema.w_avg.copy_(&gan.g.w_avg);
        });
    }
}

/// One D update of the GAN regime (logistic loss, lazy R1 every 16 steps), with an extra
/// loss on D's features of the reals.
fn d_step(
    gan: &mut Gan,
    d_params: &[(String, Tensor)],
    step: i64,
    real: &Tensor,
    gamma: f64,
    extra: &dyn Fn(&Tensor) -> Tensor,
) -> f64 {
    let aug = |x: &Tensor| augment::diff_augment(x, &AugmentConfig::default());
    set_requires_grad(d_params, true);
    let (b, device) = (real.size()[0], real.device());
    let fake = tch::no_grad(|| {
        gan.g.generate(
            &Tensor::randn([b, gan.net.z_dim], (Kind::Float, device)),
            1.0,
        )
    });
    let (real_logits, real_features) = gan.d.forward_with_features(&aug(real));
    let ld =
        loss::discriminator_loss(&real_logits, &gan.d.forward(&aug(&fake))) + extra(&real_features);
    gan.d_opt.zero_grad();
    ld.backward();
    gan.d_opt.step();
    if step % 16 == 0 {
        let r = real.detach().set_requires_grad(true);
        let r1 = loss::r1_penalty(&r, &gan.d.forward(&aug(&r)));
        gan.d_opt.zero_grad();
        (&r1 * (gamma / 2.0 * 16.0)).backward();
        gan.d_opt.step();
    }
    ld.double_value(&[])
}

fn imle(h: &Harness) -> anyhow::Result<()> {
    let (k, lr, b) = (h.opt("k", 8.0)? as i64, h.opt("lr", 0.0025)?, 16);
    let net = NetworkConfig::default();
    let mut gan = Gan::new(&net, lr, 16, 4, false, 1, h.device);
    let averaging = Averaging::new(&gan, 5000.0);
    for step in 0..=h.steps {
        if step % h.every == 0 {
            h.report_generator(step, &gan.g_ema)?;
        }
        if step == h.steps {
            break;
        }
        tch::manual_seed(1000 + step);
        let (real, _) = h.batch(b);
        let z_nearest = tch::no_grad(|| {
            let z = Tensor::randn([k * b, net.z_dim], (Kind::Float, h.device));
            let fake = gan.g.generate(&z, 1.0).view([k * b, -1]);
            let nearest = Tensor::cdist(&real.view([b, -1]), &fake, 2.0, None).argmin(1, false);
            z.index_select(0, &nearest)
        });
        let diff = gan.g.generate(&z_nearest, 1.0) - &real;
        let l = diff.abs().mean(None) + diff.square().mean(None);
        gan.g_opt.zero_grad();
        l.backward();
        gan.g_opt.step();
        averaging.update(&mut gan, step, b);
        if step % 100 == 0 {
            println!("step {step}: L1 + L2 {:.4}", l.double_value(&[]));
        }
    }
    Ok(())
}

fn vae(h: &Harness) -> anyhow::Result<()> {
    let (beta, rec_weight, lr) = (
        h.opt("beta", 1.0)?,
        h.opt("rec", 1.0)?,
        h.opt("lr", 0.0025)?,
    );
    let adversarial = h.opt("adv", 0.0)? > 0.0;
    let (net, b, device) = (NetworkConfig::default(), 16, h.device);
    let mut gan = Gan::new(&net, lr, 16, 4, false, 1, device);
    let averaging = Averaging::new(&gan, 5000.0);
    let e_vs = nn::VarStore::new(device);
    let conv = |i, o, stride| {
        let config = nn::ConvConfig {
            stride,
            padding: 1,
            ..Default::default()
        };
        nn::conv2d(e_vs.root(), i, o, 3, config)
    };
    let encoder = nn::seq()
        .add(conv(3, 64, 1))
        .add_fn(lrelu)
        .add(conv(64, 64, 2))
        .add_fn(lrelu)
        .add(conv(64, 128, 2))
        .add_fn(lrelu)
        .add(conv(128, 128, 2))
        .add_fn(lrelu)
        .add_fn(|x| x.flatten(1, -1))
        .add(nn::linear(
            e_vs.root(),
            128 * 16,
            2 * net.z_dim,
            Default::default(),
        ));
    let mut e_opt = Adam::new(trainable_vars(&e_vs), lr, 0.0, 0.99, 1e-8);
    let d_params = trainable_vars(&gan.d_vs);
    let aug = |x: &Tensor| augment::diff_augment(x, &AugmentConfig::default());
    for step in 0..=h.steps {
        if step % h.every == 0 {
            h.report_generator(step, &gan.g_ema)?;
        }
        if step == h.steps {
            break;
        }
        tch::manual_seed(1000 + step);
        let (real, _) = h.batch(b);
        let stats = encoder.forward(&real);
        let mu = stats.narrow(1, 0, net.z_dim);
        let logvar = stats.narrow(1, net.z_dim, net.z_dim).clamp(-12.0, 4.0);
        let z = &mu + (&logvar * 0.5).exp() * mu.randn_like();
        let diff = gan.g.generate(&z, 1.0) - &real;
        let rec = diff.abs().mean(None) + diff.square().mean(None);
        let kl = ((mu.square() + logvar.exp() - &logvar - 1.0).sum_dim_intlist(1, false, None)
            * 0.5)
            .mean(None);
        let mut l = (&rec + &kl * (beta / 3072.0)) * rec_weight;
        if adversarial {
            set_requires_grad(&d_params, false);
            let prior = Tensor::randn([b, net.z_dim], (Kind::Float, device));
            l += loss::generator_loss(&gan.d.forward(&aug(&gan.g.generate(&prior, 1.0))));
        }
        gan.g_opt.zero_grad();
        e_opt.zero_grad();
        l.backward();
        gan.g_opt.step();
        e_opt.step();
        if adversarial {
            let none = |_: &Tensor| Tensor::zeros([], (Kind::Float, device));
            d_step(&mut gan, &d_params, step, &real, 5.0, &none);
        }
        averaging.update(&mut gan, step, b);
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

fn entropy(p: &Tensor) -> Tensor {
    -(p * (p + 1e-8).log()).sum_dim_intlist(-1, false, None)
}

fn aux(h: &Harness) -> anyhow::Result<()> {
    let lambda = h.opt("lambda", 1.0)?;
    let (lr, b) = (h.opt("lr", 0.0025)?, h.opt("batch", 16.0)? as i64);
    let (gamma, beta1) = (h.opt("gamma", 5.0)?, h.opt("beta1", 0.0)?);
    let mode_seeking = h.opt("ms", 0.0)?;
    let (net, device) = (NetworkConfig::default(), h.device);
    let sizes: Vec<i64> = h.ds.groups.iter().map(|g| g.values.len() as i64).collect();
    let mut gan = Gan::new(&net, lr, 16, 4, false, 1, device);
    gan.g_opt.beta1 = beta1;
    gan.d_opt.beta1 = beta1;
    let averaging = Averaging::new(&gan, h.opt("ema", 5000.0)?);
    let a_vs = nn::VarStore::new(device);
    let head = nn::linear(
        a_vs.root(),
        net.channels(4),
        sizes.iter().sum(),
        Default::default(),
    );
    let mut a_opt = Adam::new(trainable_vars(&a_vs), lr, 0.0, 0.99, 1e-8);
    let d_params = trainable_vars(&gan.d_vs);
    let aug = |x: &Tensor| augment::diff_augment(x, &AugmentConfig::default());
    // Per attribute group, the head's log-probabilities.
    let groups = |features: &Tensor| -> Vec<Tensor> {
        head.forward(features)
            .split_with_sizes(sizes.as_slice(), 1)
            .iter()
            .map(|l| l.log_softmax(1, Kind::Float))
            .collect()
    };
    for step in 0..=h.steps {
        if step % h.every == 0 {
            h.report_generator(step, &gan.g_ema)?;
        }
        if step == h.steps {
            break;
        }
        tch::manual_seed(1000 + step);
        let (real, labels) = h.batch(b);
        set_requires_grad(&d_params, false);
        let z = Tensor::randn([b, net.z_dim], (Kind::Float, device));
        let fake = gan.g.generate(&z, 1.0);
        let (logits, features) = gan.d.forward_with_features(&aug(&fake));
        let mut lg = loss::generator_loss(&logits);
        if mode_seeking > 0.0 {
            // MSGAN: pairs (i, i + b/2) whose latents differ should differ as images.
            let half = b / 2;
            let image_gap = (fake.narrow(0, 0, half) - fake.narrow(0, half, half))
                .abs()
                .mean(None);
            let latent_gap = (z.narrow(0, 0, half) - z.narrow(0, half, half))
                .abs()
                .mean(None);
            lg += (latent_gap / (image_gap + 1e-5)) * mode_seeking;
        }
        if lambda > 0.0 {
            for lp in groups(&features) {
                let p = lp.exp();
                lg += (entropy(&p).mean(None) - entropy(&p.mean_dim(0, false, None))) * lambda;
            }
        }
        gan.g_opt.zero_grad();
        lg.backward();
        gan.g_opt.step();
        a_opt.zero_grad();
        let head_loss = |features: &Tensor| {
            let mut ce = Tensor::zeros([], (Kind::Float, device));
            if lambda > 0.0 {
                for (g, lp) in groups(features).iter().enumerate() {
                    let target = labels.select(1, g as i64);
                    ce += lp.g_nll_loss(&target, None::<Tensor>, tch::Reduction::Mean, -1);
                }
            }
            ce
        };
        let ld = d_step(&mut gan, &d_params, step, &real, gamma, &head_loss);
        a_opt.step();
        averaging.update(&mut gan, step, b);
        if step % 200 == 0 {
            println!(
                "step {step}: loss_g {:.3} loss_d (+ head) {ld:.3}",
                lg.double_value(&[])
            );
        }
    }
    Ok(())
}

fn shallow(v: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    v.iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect()
}

/// One-hot attribute vectors `[B, sum of group sizes]` from value indices `[B, groups]`.
fn one_hot_labels(labels: &Tensor, sizes: &[i64]) -> Tensor {
    let parts: Vec<Tensor> = sizes
        .iter()
        .enumerate()
        .map(|(g, &n)| labels.select(1, g as i64).one_hot(n).to_kind(Kind::Float))
        .collect();
    Tensor::cat(&parts, 1)
}

/// The conditional regime (StyleGAN2-ADA's conditioning): G's mapping reads
/// `[z_half, embed(c)]`, D adds a projection term `<features, embed_d(c)>`; fakes take the
/// labels of other training images, so samples follow the data's label distribution.
fn cond(h: &Harness) -> anyhow::Result<()> {
    let (lr, b) = (h.opt("lr", 0.0025)?, h.opt("batch", 16.0)? as i64);
    let gamma = h.opt("gamma", 5.0)?;
    let ch = h.opt("ch", 64.0)? as i64;
    let net = NetworkConfig {
        channel_max: ch,
        ..NetworkConfig::default()
    };
    let device = h.device;
    let sizes: Vec<i64> = h.ds.groups.iter().map(|g| g.values.len() as i64).collect();
    let c_dim: i64 = sizes.iter().sum();
    let half = net.z_dim / 2;
    let mut gan = Gan::new(&net, lr, 16, 4, false, 1, device);
    let averaging = Averaging::new(&gan, h.opt("ema", 5000.0)?);
    let e_vs = nn::VarStore::new(device);
    let embed = nn::linear(e_vs.root() / "g", c_dim, half, Default::default());
    let proj = nn::linear(
        e_vs.root() / "d",
        c_dim,
        net.channels(4),
        Default::default(),
    );
    let g_embed_params: Vec<(String, Tensor)> = trainable_vars(&e_vs)
        .into_iter()
        .filter(|(n, _)| n.starts_with("g."))
        .collect();
    let d_proj_params: Vec<(String, Tensor)> = trainable_vars(&e_vs)
        .into_iter()
        .filter(|(n, _)| n.starts_with("d."))
        .collect();
    let ema_embed: Vec<Tensor> = g_embed_params
        .iter()
        .map(|(_, t)| t.detach().copy())
        .collect();
    let mut ge_opt = Adam::new(shallow(&g_embed_params), lr, 0.0, 0.99, 1e-8);
    let mut dp_opt = Adam::new(shallow(&d_proj_params), lr, 0.0, 0.99, 1e-8);
    let d_params = trainable_vars(&gan.d_vs);
    let aug = |x: &Tensor| augment::diff_augment(x, &AugmentConfig::default());
    let z_of = |z: &Tensor, c: &Tensor| Tensor::cat(&[z.narrow(1, 0, half), embed.forward(c)], 1);
    let scale = 1.0 / (net.channels(4) as f64).sqrt();
    let logit = |gan: &Gan, x: &Tensor, c: &Tensor| {
        let (l, f) = gan.d.forward_with_features(x);
        l + (f * proj.forward(c)).sum_dim_intlist(1, false, None) * scale
    };
    let n_train = h.labels.size()[0];
    let fake_labels = |n: i64| {
        let idx = Tensor::randint(n_train, [n], (Kind::Int64, device));
        one_hot_labels(&h.labels.index_select(0, &idx), &sizes)
    };
    for step in 0..=h.steps {
        if step % h.every == 0 {
            // Score g_ema with the averaged label embedding swapped in.
            let raw: Vec<Tensor> = g_embed_params
                .iter()
                .map(|(_, t)| t.detach().copy())
                .collect();
            tch::no_grad(|| {
                for ((_, t), e) in g_embed_params.iter().zip(&ema_embed) {
                    t.shallow_clone().copy_(e);
                }
            });
            let fake = tch::no_grad(|| {
                tch::manual_seed(0xF1D);
                let mut out = Vec::new();
                for _ in 0..10 {
                    let z = Tensor::randn([100, net.z_dim], (Kind::Float, device));
                    let c = fake_labels(100);
                    out.push(gan.g_ema.generate(&z_of(&z, &c), 1.0).clamp(-1.0, 1.0));
                }
                Tensor::cat(&out, 0)
            });
            tch::no_grad(|| {
                for ((_, t), r) in g_embed_params.iter().zip(&raw) {
                    t.shallow_clone().copy_(r);
                }
            });
            h.report(step, &fake)?;
        }
        if step == h.steps {
            break;
        }
        tch::manual_seed(1000 + step);
        let (real, labels) = h.batch(b);
        let c_real = one_hot_labels(&labels, &sizes);
        // G step.
        set_requires_grad(&d_params, false);
        set_requires_grad(&d_proj_params, false);
        let z = Tensor::randn([b, net.z_dim], (Kind::Float, device));
        let c = fake_labels(b);
        let fake = gan.g.generate(&z_of(&z, &c), 1.0);
        let lg = loss::generator_loss(&logit(&gan, &aug(&fake), &c));
        gan.g_opt.zero_grad();
        ge_opt.zero_grad();
        lg.backward();
        gan.g_opt.step();
        ge_opt.step();
        // D step.
        set_requires_grad(&d_params, true);
        set_requires_grad(&d_proj_params, true);
        let c = fake_labels(b);
        let fake = tch::no_grad(|| {
            let z = Tensor::randn([b, net.z_dim], (Kind::Float, device));
            gan.g.generate(&z_of(&z, &c), 1.0)
        });
        let ld = loss::discriminator_loss(
            &logit(&gan, &aug(&real), &c_real),
            &logit(&gan, &aug(&fake), &c),
        );
        gan.d_opt.zero_grad();
        dp_opt.zero_grad();
        ld.backward();
        gan.d_opt.step();
        dp_opt.step();
        if step % 16 == 0 {
            let r = real.detach().set_requires_grad(true);
            let r1 = loss::r1_penalty(&r, &logit(&gan, &aug(&r), &c_real));
            gan.d_opt.zero_grad();
            dp_opt.zero_grad();
            (&r1 * (gamma / 2.0 * 16.0)).backward();
            gan.d_opt.step();
            dp_opt.step();
        }
        averaging.update_ema_only(&mut gan, step, b);
        let beta = loss::ema_beta(b, (step + 1) * b, averaging.half_life, 0.05);
        tch::no_grad(|| {
            for ((_, t), e) in g_embed_params.iter().zip(&ema_embed) {
                let v = t.lerp(e, beta);
                e.shallow_clone().copy_(&v);
            }
        });
        if step % 200 == 0 {
            println!(
                "step {step}: loss_g {:.3} loss_d {:.3}",
                lg.double_value(&[]),
                ld.double_value(&[])
            );
        }
    }
    Ok(())
}

/// α-GAN (Rosca et al. 2017): the GAN regime plus an encoder E: x -> z trained with G to
/// reconstruct the reals (pixel L1, weight `rec`), a code discriminator that holds E's codes
/// to the prior (directions only: the mapping's PixelNorm ignores |z|), and the
/// reconstructions shown to D as fakes too. Reconstruction anchors G to every real image from
/// the first step, which the adversarial signal alone does not within a CPU budget.
fn agan(h: &Harness) -> anyhow::Result<()> {
    let (lr, b) = (h.opt("lr", 0.0025)?, h.opt("batch", 16.0)? as i64);
    let (gamma, rec_weight) = (h.opt("gamma", 5.0)?, h.opt("rec", 10.0)?);
    let (code_weight, rec_to_d) = (h.opt("code", 1.0)?, h.opt("recd", 1.0)? > 0.0);
    let (net, device) = (NetworkConfig::default(), h.device);
    let mut gan = Gan::new(&net, lr, 16, 4, false, 1, device);
    let averaging = Averaging::new(&gan, h.opt("ema", 5000.0)?);
    let e_vs = nn::VarStore::new(device);
    let conv = |p: nn::Path, i, o, stride| {
        let config = nn::ConvConfig {
            stride,
            padding: 1,
            ..Default::default()
        };
        nn::conv2d(p, i, o, 3, config)
    };
    let e = e_vs.root() / "e";
    let encoder = nn::seq()
        .add(conv(&e / 0, 3, 64, 1))
        .add_fn(lrelu)
        .add(conv(&e / 1, 64, 64, 2))
        .add_fn(lrelu)
        .add(conv(&e / 2, 64, 128, 2))
        .add_fn(lrelu)
        .add(conv(&e / 3, 128, 128, 2))
        .add_fn(lrelu)
        .add_fn(|x| x.flatten(1, -1))
        .add(nn::linear(&e / 4, 128 * 16, net.z_dim, Default::default()));
    let c = e_vs.root() / "c";
    let code_d = nn::seq()
        .add(nn::linear(&c / 0, net.z_dim, 256, Default::default()))
        .add_fn(lrelu)
        .add(nn::linear(&c / 1, 256, 256, Default::default()))
        .add_fn(lrelu)
        .add(nn::linear(&c / 2, 256, 1, Default::default()));
    let all = trainable_vars(&e_vs);
    let e_params: Vec<(String, Tensor)> = all
        .iter()
        .filter(|(n, _)| n.starts_with("e."))
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let c_params: Vec<(String, Tensor)> = all
        .iter()
        .filter(|(n, _)| n.starts_with("c."))
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let mut e_opt = Adam::new(shallow(&e_params), lr, 0.0, 0.99, 1e-8);
    let mut c_opt = Adam::new(shallow(&c_params), lr, 0.0, 0.99, 1e-8);
    let d_params = trainable_vars(&gan.d_vs);
    let aug = |x: &Tensor| augment::diff_augment(x, &AugmentConfig::default());
    let unit = |z: &Tensor| z * (z.square().mean_dim(1, true, None) + 1e-8).rsqrt();
    for step in 0..=h.steps {
        if step % h.every == 0 {
            h.report_generator(step, &gan.g_ema)?;
        }
        if step == h.steps {
            break;
        }
        tch::manual_seed(1000 + step);
        let (real, _) = h.batch(b);
        // G and E.
        set_requires_grad(&d_params, false);
        set_requires_grad(&c_params, false);
        let code = unit(&encoder.forward(&real));
        let recon = gan.g.generate(&code, 1.0);
        let rec = (&recon - &real).abs().mean(None);
        let prior = Tensor::randn([b, net.z_dim], (Kind::Float, device));
        let fake = gan.g.generate(&prior, 1.0);
        let mut l = loss::generator_loss(&gan.d.forward(&aug(&fake))) + &rec * rec_weight;
        if rec_to_d {
            l += loss::generator_loss(&gan.d.forward(&aug(&recon)));
        }
        l += loss::generator_loss(&code_d.forward(&code)) * code_weight;
        gan.g_opt.zero_grad();
        e_opt.zero_grad();
        l.backward();
        gan.g_opt.step();
        e_opt.step();
        // Code discriminator: prior directions against E's.
        set_requires_grad(&c_params, true);
        let lc = loss::discriminator_loss(
            &code_d.forward(&unit(&prior)),
            &code_d.forward(&code.detach()),
        );
        c_opt.zero_grad();
        lc.backward();
        c_opt.step();
        // D: reals against prior samples (and reconstructions).
        let recon = recon.detach();
        let extra = |_: &Tensor| Tensor::zeros([], (Kind::Float, device));
        let ld = d_step(&mut gan, &d_params, step, &real, gamma, &extra);
        if rec_to_d {
            let lr_d = loss::generator_loss(&-gan.d.forward(&aug(&recon)));
            gan.d_opt.zero_grad();
            lr_d.backward();
            gan.d_opt.step();
        }
        averaging.update(&mut gan, step, b);
        if step % 100 == 0 {
            println!(
                "step {step}: rec {:.4} loss_g+ {:.3} loss_d {ld:.3} code_d {:.3}",
                rec.double_value(&[]),
                l.double_value(&[]),
                lc.double_value(&[])
            );
        }
    }
    Ok(())
}

fn dcgan(h: &Harness) -> anyhow::Result<()> {
    const Z: i64 = 128;
    let (b, device) = (h.opt("batch", 64.0)? as i64, h.device);
    tch::manual_seed(1);
    let g_vs = nn::VarStore::new(device);
    let d_vs = nn::VarStore::new(device);
    let (gp, dp) = (g_vs.root(), d_vs.root());
    let up = |name: &str, i, o| {
        let config = nn::ConvTransposeConfig {
            stride: 2,
            padding: 1,
            bias: false,
            ..Default::default()
        };
        nn::conv_transpose2d(&gp / name, i, o, 4, config)
    };
    let bn = |p: &nn::Path, name: &str, c| nn::batch_norm2d(p / name, c, Default::default());
    let g = nn::seq_t()
        .add(nn::linear(&gp / "fc", Z, 256 * 16, Default::default()))
        .add_fn(|x| x.view([-1, 256, 4, 4]))
        .add(bn(&gp, "bn0", 256))
        .add_fn(|x| x.relu())
        .add(up("up1", 256, 128))
        .add(bn(&gp, "bn1", 128))
        .add_fn(|x| x.relu())
        .add(up("up2", 128, 64))
        .add(bn(&gp, "bn2", 64))
        .add_fn(|x| x.relu())
        .add(up("up3", 64, 3))
        .add_fn(|x| x.tanh());
    let down = |name: &str, i, o| {
        let config = nn::ConvConfig {
            stride: 2,
            padding: 1,
            ..Default::default()
        };
        nn::conv2d(&dp / name, i, o, 4, config)
    };
    let d = nn::seq_t()
        .add(down("c1", 3, 64))
        .add_fn(|x| x.leaky_relu())
        .add(down("c2", 64, 128))
        .add(bn(&dp, "bn2", 128))
        .add_fn(|x| x.leaky_relu())
        .add(down("c3", 128, 256))
        .add(bn(&dp, "bn3", 256))
        .add_fn(|x| x.leaky_relu())
        .add_fn(|x| x.flatten(1, -1))
        .add(nn::linear(&dp / "out", 256 * 16, 1, Default::default()));
    let adam = nn::Adam {
        beta1: 0.5,
        ..Default::default()
    };
    let (mut g_opt, mut d_opt) = (adam.build(&g_vs, 2e-4)?, adam.build(&d_vs, 2e-4)?);
    for step in 0..=h.steps {
        if step % h.every == 0 {
            tch::manual_seed(0xF1D);
            let z = Tensor::randn([1000, Z], (Kind::Float, device));
            h.report(step, &tch::no_grad(|| g.forward_t(&z, false)))?;
        }
        if step == h.steps {
            break;
        }
        tch::manual_seed(1000 + step);
        let (real, _) = h.batch(b);
        let fake = g.forward_t(&Tensor::randn([b, Z], (Kind::Float, device)), true);
        let ld = (-d.forward_t(&real, true)).softplus().mean(None)
            + d.forward_t(&fake.detach(), true).softplus().mean(None);
        d_opt.zero_grad();
        ld.backward();
        d_opt.step();
        let lg = (-d.forward_t(&fake, true)).softplus().mean(None);
        g_opt.zero_grad();
        lg.backward();
        g_opt.step();
        if step % 200 == 0 {
            println!(
                "step {step}: loss_d {:.3} loss_g {:.3}",
                ld.double_value(&[]),
                lg.double_value(&[])
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, dir, judge, steps, every, out, rest @ ..] = &args[..] else {
        anyhow::bail!(
            "usage: regime_probes imle|vae|aux|cond|agan|dcgan DATA JUDGE STEPS EVAL_EVERY OUT_PREFIX [key=value ...]"
        );
    };
    let opts: HashMap<String, String> = rest
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("{kv}: expected key=value"))
        })
        .collect::<anyhow::Result<_>>()?;
    let device = plume_worker::parse_device(opts.get("device").map_or("cpu", |d| d.as_str()))
        .map_err(anyhow::Error::msg)?;
    let ds = Dataset::open(&PathBuf::from(dir))?;
    let train = ds.partition(Partition::Train);
    let images = ds.load_images(&train, 32)?.to_device(device);
    let labels = ds.label_tensor(&train).to_device(device);
    let test = ds
        .load_images(&ds.partition(Partition::Test), 32)?
        .to_device(device);
    let judge = plume_worker::judge::train::load(&PathBuf::from(judge), "judge", device)?;
    let h = Harness {
        judge: JudgeForMetrics::new(judge, &test, 1000),
        ds,
        images,
        labels,
        device,
        steps: steps.parse()?,
        every: every.parse()?,
        out: out.clone(),
        opts,
        started: Instant::now(),
    };
    match mode.as_str() {
        "imle" => imle(&h),
        "vae" => vae(&h),
        "aux" => aux(&h),
        "dcgan" => dcgan(&h),
        "cond" => cond(&h),
        "agan" => agan(&h),
        other => anyhow::bail!("unknown mode {other:?}: imle, vae, aux, cond, agan or dcgan"),
    }
}
