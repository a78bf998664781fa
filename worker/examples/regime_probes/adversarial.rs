//! Variations of the GAN regime: an attribute head with a CatGAN term (and MSGAN's
//! mode-seeking term), conditioning on the labels, and α-GAN.

use super::*;

pub(super) fn entropy(p: &Tensor) -> Tensor {
    -(p * (p + 1e-8).log()).sum_dim_intlist(-1, false, None)
}

pub(super) fn aux(h: &Harness) -> anyhow::Result<()> {
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
        if !h.begin_step(step, &gan.g_ema)? {
            break;
        }
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

/// One-hot attribute vectors `[B, sum of group sizes]` from value indices `[B, groups]`.
pub(super) fn one_hot_labels(labels: &Tensor, sizes: &[i64]) -> Tensor {
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
pub(super) fn cond(h: &Harness) -> anyhow::Result<()> {
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
    let g_embed_params = vars_under(&e_vs, "g.");
    let d_proj_params = vars_under(&e_vs, "d.");
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
        averaging.update_ema_only(step, b);
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
pub(super) fn agan(h: &Harness) -> anyhow::Result<()> {
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
    let e_params = vars_under(&e_vs, "e.");
    let c_params = vars_under(&e_vs, "c.");
    let mut e_opt = Adam::new(shallow(&e_params), lr, 0.0, 0.99, 1e-8);
    let mut c_opt = Adam::new(shallow(&c_params), lr, 0.0, 0.99, 1e-8);
    let d_params = trainable_vars(&gan.d_vs);
    let aug = |x: &Tensor| augment::diff_augment(x, &AugmentConfig::default());
    let unit = |z: &Tensor| z * (z.square().mean_dim(1, true, None) + 1e-8).rsqrt();
    for step in 0..=h.steps {
        if !h.begin_step(step, &gan.g_ema)? {
            break;
        }
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
