//! What every probe shares: the data, the judge, the options, the reporting, the EMA
//! and one D update of the GAN regime.

use super::*;

/// What every probe shares: the data, the judge, the options and the reporting.
pub(super) struct Harness {
    pub(super) ds: Dataset,
    pub(super) images: Tensor,
    pub(super) labels: Tensor,
    pub(super) judge: JudgeForMetrics,
    pub(super) device: Device,
    pub(super) steps: i64,
    pub(super) every: i64,
    pub(super) out: String,
    pub(super) opts: HashMap<String, String>,
    pub(super) started: Instant,
}

impl Harness {
    pub(super) fn opt(&self, key: &str, default: f64) -> anyhow::Result<f64> {
        match self.opts.get(key) {
            Some(v) => v.parse().with_context(|| format!("{key}={v}")),
            None => Ok(default),
        }
    }

    /// A random batch of `b` training images (half mirrored) and their labels.
    pub(super) fn batch(&self, b: i64) -> (Tensor, Tensor) {
        let idx = Tensor::randint(self.images.size()[0], [b], (Kind::Int64, self.device));
        (
            augment::random_xflip(&self.images.index_select(0, &idx)),
            self.labels.index_select(0, &idx),
        )
    }

    /// Prints the scores of `fake` (1000 images) and writes the first 64 as a grid.
    pub(super) fn report(&self, step: i64, fake: &Tensor) -> anyhow::Result<()> {
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

    /// The start of step `step` of a probe's loop: scores `g` on evaluation steps, reseeds
    /// from the step, and says whether to train (false once the steps are done).
    pub(super) fn begin_step(&self, step: i64, g: &Generator) -> anyhow::Result<bool> {
        if step % self.every == 0 {
            self.report_generator(step, g)?;
        }
        if step == self.steps {
            return Ok(false);
        }
        tch::manual_seed(1000 + step);
        Ok(true)
    }

    pub(super) fn report_generator(&self, step: i64, g: &Generator) -> anyhow::Result<()> {
        self.report(
            step,
            &scoring::generated_images(g, 1000, 0xF1D, self.device),
        )
    }
}

/// The trainable variables of `vs` whose names start with `prefix` (one optimizer per part
/// of a probe's extra networks).
pub(super) fn vars_under(vs: &nn::VarStore, prefix: &str) -> Vec<(String, Tensor)> {
    trainable_vars(vs)
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .collect()
}

/// The EMA of G's weights and the tracked `w_avg`, as `pretrain-generator` keeps them.
pub(super) struct Averaging {
    pub(super) g_params: Vec<(String, Tensor)>,
    pub(super) ema_params: Vec<(String, Tensor)>,
    pub(super) half_life: f64,
}

impl Averaging {
    pub(super) fn new(gan: &Gan, half_life: f64) -> Averaging {
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
    pub(super) fn update_ema_only(&self, step: i64, b: i64) {
        let beta = loss::ema_beta(b, (step + 1) * b, self.half_life, 0.05);
        loss::ema_update(&self.ema_params, &self.g_params, beta);
    }

    pub(super) fn update(&self, gan: &mut Gan, step: i64, b: i64) {
        self.update_ema_only(step, b);
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
pub(super) fn d_step(
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
