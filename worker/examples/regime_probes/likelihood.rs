//! Likelihood-style regimes with the StyleGAN2 generator: IMLE and the VAE (and VAE-GAN).

use super::*;

pub(super) fn imle(h: &Harness) -> anyhow::Result<()> {
    let (k, lr, b) = (h.opt("k", 8.0)? as i64, h.opt("lr", 0.0025)?, 16);
    let net = NetworkConfig::default();
    let mut gan = Gan::new(&net, lr, 16, 4, false, 1, h.device);
    let averaging = Averaging::new(&gan, 5000.0);
    for step in 0..=h.steps {
        if !h.begin_step(step, &gan.g_ema)? {
            break;
        }
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

pub(super) fn vae(h: &Harness) -> anyhow::Result<()> {
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
        if !h.begin_step(step, &gan.g_ema)? {
            break;
        }
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
