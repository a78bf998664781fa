//! Job `pretrain-generator`: trains StyleGAN2 on a dataset's training partition, with lazy R1,
//! optional path-length regularisation, style mixing, an EMA generator and tracked `w_avg`.
//! Reports losses every step, judge-FID and sample grids periodically, and checkpoints that
//! hold everything needed to continue exactly (G, D, EMA, w_avg, Adam moments, pl_mean, step;
//! the RNG needs no state because every step reseeds from `(seed, step)`).

use super::augment;
use super::discriminator::Discriminator;
use super::generator::Generator;
use super::loss;
use super::scoring::{sample_grid, JudgeForMetrics};
use super::NetworkConfig;
use crate::dataset::OpenDataset;
use crate::dataset::{AttributeGroup, Partition};
use crate::job::{step_loop, Cadence, CancelToken, Outcome, Reporter, Task, Timing, TrainingJob};
use crate::nn::adam::Adam;
use crate::nn::checkpoint::{self, Checkpoint};
use crate::nn::{named_vars, set_requires_grad, shallow, trainable_vars};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

pub use plume_jobs::PretrainConfig;

/// The GAN under training: G, D, the EMA copy of G, their optimizers and regulariser state.
pub struct Gan {
    /// Sizes.
    pub net: NetworkConfig,
    /// G's store.
    pub g_vs: VarStore,
    /// The trained generator.
    pub g: Generator,
    /// D's store.
    pub d_vs: VarStore,
    /// The discriminator.
    pub d: Discriminator,
    /// EMA store.
    pub ema_vs: VarStore,
    /// The averaged generator (used for samples, FID and by every later job).
    pub g_ema: Generator,
    g_params: Vec<(String, Tensor)>,
    d_params: Vec<(String, Tensor)>,
    ema_params: Vec<(String, Tensor)>,
    /// G's optimizer.
    pub g_opt: Adam,
    /// D's optimizer.
    pub d_opt: Adam,
    /// Running mean of path lengths.
    pub pl_mean: Tensor,
}

/// A frozen copy of the generator in `g_vs` (its EMA, starting equal to it), and the copy's
/// variables that shadow G's trainable ones, in the same order (what the EMA update moves).
pub(super) fn ema_copy(
    g_vs: &VarStore,
    net: &NetworkConfig,
) -> (VarStore, Generator, Vec<(String, Tensor)>) {
    let mut ema_vs = VarStore::new(g_vs.device());
    let g_ema = Generator::new(&ema_vs.root(), net);
    ema_vs.copy(g_vs).expect("same structure");
    ema_vs.freeze();
    let g_params = trainable_vars(g_vs);
    let ema_params = named_vars(&ema_vs)
        .into_iter()
        .filter(|(n, _)| g_params.iter().any(|(m, _)| m == n))
        .collect();
    (ema_vs, g_ema, ema_params)
}

/// Lazy regularisation rescales Adam so that regularised and plain steps balance
/// (StyleGAN2 appendix B): lr * c and beta^c with c = interval / (interval + 1).
fn lazy_adam(params: Vec<(String, Tensor)>, lr: f64, interval: i64) -> Adam {
    let c = interval as f64 / (interval as f64 + 1.0);
    Adam::new(params, lr * c, 0.0, 0.99f64.powf(c), 1e-8)
}

impl Gan {
    /// A freshly initialised GAN (seeded).
    pub fn new(
        net: &NetworkConfig,
        cfg_lr: f64,
        r1_interval: i64,
        pl_interval: i64,
        pl_on: bool,
        seed: u64,
        device: Device,
    ) -> Gan {
        tch::manual_seed(seed as i64);
        let g_vs = VarStore::new(device);
        let g = Generator::new(&g_vs.root(), net);
        let d_vs = VarStore::new(device);
        let d = Discriminator::new(&d_vs.root(), net);
        let (ema_vs, g_ema, ema_params) = ema_copy(&g_vs, net);
        let g_params = trainable_vars(&g_vs);
        let d_params = trainable_vars(&d_vs);
        let g_opt = if pl_on {
            lazy_adam(shallow(&g_params), cfg_lr, pl_interval)
        } else {
            Adam::new(shallow(&g_params), cfg_lr, 0.0, 0.99, 1e-8)
        };
        let d_opt = lazy_adam(shallow(&d_params), cfg_lr, r1_interval);
        Gan {
            net: net.clone(),
            g_vs,
            g,
            d_vs,
            d,
            ema_vs,
            g_ema,
            g_params,
            d_params,
            ema_params,
            g_opt,
            d_opt,
            pl_mean: Tensor::zeros([], (Kind::Float, device)),
        }
    }

    /// The EMA generator is what every later job reads; the trained G, D, their optimizers
    /// and the path-length mean only serve a resume.
    fn parts(&self) -> checkpoint::Parts {
        let weights = checkpoint::prefixed("G_ema.", &named_vars(&self.ema_vs));
        let mut state = checkpoint::prefixed("G.", &named_vars(&self.g_vs));
        state.extend(checkpoint::prefixed("D.", &named_vars(&self.d_vs)));
        state.extend(checkpoint::prefixed("G.opt.", &self.g_opt.state()));
        state.extend(checkpoint::prefixed("D.opt.", &self.d_opt.state()));
        state.push(("pl_mean".into(), self.pl_mean.view([1])));
        checkpoint::Parts { weights, state }
    }

    fn restore(&mut self, ckpt: &Checkpoint) -> anyhow::Result<()> {
        ckpt.expect_resume_state()?;
        ckpt.restore("G.", &named_vars(&self.g_vs))?;
        ckpt.restore("D.", &named_vars(&self.d_vs))?;
        ckpt.restore("G_ema.", &named_vars(&self.ema_vs))?;
        self.g_opt.restore(ckpt, "G.opt.")?;
        self.d_opt.restore(ckpt, "D.opt.")?;
        let pl = ckpt.tensor("pl_mean", &[1])?;
        tch::no_grad(|| {
            self.pl_mean
                .copy_(&pl.view([]).to_device(self.pl_mean.device()))
        });
        Ok(())
    }

    /// Latents for a batch, with style mixing: `[B, num_ws, w_dim]` and the plain w `[B, w_dim]`.
    fn sample_ws(
        &self,
        b: i64,
        mixing: f64,
        rng: &mut ChaCha8Rng,
        device: Device,
    ) -> (Tensor, Tensor) {
        let z = Tensor::randn([b, self.net.z_dim], (Kind::Float, device));
        let w = self.g.mapping.forward(&z);
        let mut ws = self.g.broadcast(&w);
        if mixing > 0.0 && rng.random_bool(mixing) {
            let cutoff = rng.random_range(1..self.g.num_ws());
            let z2 = Tensor::randn([b, self.net.z_dim], (Kind::Float, device));
            ws = self.g.mix(&w, &self.g.mapping.forward(&z2), cutoff);
        }
        (ws, w)
    }

    /// One training step (G update, optional path-length update, D update, optional R1
    /// update, EMA). Returns the metrics of the step.
    pub fn train_step(
        &mut self,
        cfg: &PretrainConfig,
        step: i64,
        real: &Tensor,
        rng: &mut ChaCha8Rng,
    ) -> Vec<(&'static str, f64)> {
        let mut out = Vec::new();
        self.g_step(cfg, step, real.size()[0], rng, real.device(), &mut out);
        self.d_step(cfg, step, real, rng, &mut out);
        // EMA of G's weights; w_avg is copied, not averaged.
        let b = real.size()[0];
        let beta = loss::ema_beta(b, (step + 1) * b, cfg.ema_half_life_images, cfg.ema_rampup);
        loss::ema_update(&self.ema_params, &self.g_params, beta);
        tch::no_grad(|| self.g_ema.w_avg.copy_(&self.g.w_avg));
        out
    }

    /// G: the non-saturating loss through a frozen D, the w_avg update, and the lazy
    /// path-length regulariser on its interval.
    fn g_step(
        &mut self,
        cfg: &PretrainConfig,
        step: i64,
        b: i64,
        rng: &mut ChaCha8Rng,
        device: Device,
        out: &mut Vec<(&'static str, f64)>,
    ) {
        set_requires_grad(&self.d_params, false);
        set_requires_grad(&self.g_params, true);
        let (ws, w) = self.sample_ws(b, cfg.style_mixing, rng, device);
        let fake = self.g.synthesis(&ws);
        let fake_logits = self.d.forward(&augmented(cfg, &fake));
        let loss_g = loss::generator_loss(&fake_logits);
        self.g_opt.zero_grad();
        loss_g.backward();
        self.g_opt.step();
        out.push(("gen/loss_g", loss_g.double_value(&[])));
        tch::no_grad(|| {
            let updated =
                w.mean_dim(0, false, None) + (&self.g.w_avg - w.mean_dim(0, false, None)) * 0.995;
            self.g.w_avg.copy_(&updated);
        });
        if cfg.pl_weight > 0.0 && step % cfg.pl_interval == 0 {
            let pb = (b / 2).max(1);
            let (ws, _) = self.sample_ws(pb, cfg.style_mixing, rng, device);
            let images = self.g.synthesis(&ws);
            let penalty = loss::path_length_penalty(&images, &ws, &mut self.pl_mean);
            self.g_opt.zero_grad();
            (&penalty * (cfg.pl_weight * cfg.pl_interval as f64)).backward();
            self.g_opt.step();
            out.push(("gen/path_length", penalty.double_value(&[])));
        }
    }

    /// D: the logistic loss on reals against fresh fakes, and the lazy R1 penalty on its
    /// interval. Leaves G's parameters trainable again.
    fn d_step(
        &mut self,
        cfg: &PretrainConfig,
        step: i64,
        real: &Tensor,
        rng: &mut ChaCha8Rng,
        out: &mut Vec<(&'static str, f64)>,
    ) {
        set_requires_grad(&self.g_params, false);
        set_requires_grad(&self.d_params, true);
        let fake = tch::no_grad(|| {
            let (ws, _) = self.sample_ws(real.size()[0], cfg.style_mixing, rng, real.device());
            self.g.synthesis(&ws)
        });
        let real_logits = self.d.forward(&augmented(cfg, real));
        let fake_logits = self.d.forward(&augmented(cfg, &fake));
        let loss_d = loss::discriminator_loss(&real_logits, &fake_logits);
        self.d_opt.zero_grad();
        loss_d.backward();
        self.d_opt.step();
        out.push(("gen/loss_d", loss_d.double_value(&[])));
        out.push(("gen/d_real", real_logits.mean(None).double_value(&[])));
        out.push(("gen/d_fake", fake_logits.mean(None).double_value(&[])));
        // How far apart D holds reals and fakes: it grows without bound when D overfits.
        out.push((
            "gen/d_gap",
            (real_logits.mean(None) - fake_logits.mean(None)).double_value(&[]),
        ));
        if cfg.r1_gamma > 0.0 && step % cfg.r1_interval == 0 {
            // The gradient is taken at the un-augmented reals, through the augmentation.
            let real = real.detach().set_requires_grad(true);
            let logits = self.d.forward(&augmented(cfg, &real));
            let r1 = loss::r1_penalty(&real, &logits);
            self.d_opt.zero_grad();
            (&r1 * (cfg.r1_gamma / 2.0 * cfg.r1_interval as f64)).backward();
            self.d_opt.step();
            out.push(("gen/r1", r1.double_value(&[])));
        }
        set_requires_grad(&self.g_params, true);
    }
}

/// The judge that scores a generator's samples, fitted to the dataset's test images (either
/// objective).
pub(super) fn judge_for_metrics(
    path: &Path,
    cfg: &PretrainConfig,
    ds: &crate::dataset::Dataset,
    device: Device,
) -> anyhow::Result<JudgeForMetrics> {
    let net = crate::judge::train::load(path, "judge", device)?;
    let test = ds.partition(Partition::Test);
    let test_images = ds
        .load_images(&test, cfg.network.resolution)?
        .to_device(device);
    // One pass of the judge over the test images serves FID and the other metrics.
    Ok(JudgeForMetrics::new(net, &test_images, cfg.metric_images))
}

/// [`judge_for_metrics`], and a log line of what the training images themselves score (the
/// ceiling any generator can reach).
fn metrics_judge(
    path: &Path,
    cfg: &PretrainConfig,
    ds: &crate::dataset::Dataset,
    images: &Tensor,
    reporter: &mut dyn Reporter,
) -> anyhow::Result<JudgeForMetrics> {
    let judge = judge_for_metrics(path, cfg, ds, images.device())?;
    if let Some(line) = judge.data_ceiling(images, &ds.groups) {
        reporter.log(&line);
    }
    Ok(judge)
}

/// What D sees of `x`: DiffAugment's view when augmentation is on, else `x`.
fn augmented(cfg: &PretrainConfig, x: &Tensor) -> Tensor {
    if cfg.augment.is_on() {
        augment::diff_augment(x, &cfg.augment)
    } else {
        x.shallow_clone()
    }
}

/// Builds the frozen EMA generator from a loaded `pretrain-generator` checkpoint (callers
/// keep the checkpoint to fingerprint it, so the file is read once).
pub fn load_generator(ckpt: &Checkpoint, device: Device) -> anyhow::Result<(VarStore, Generator)> {
    ckpt.expect_kind("pretrain-generator")?;
    let net: NetworkConfig = serde_json::from_str(ckpt.meta("generator.network")?)?;
    let mut vs = VarStore::new(device);
    let mut g = Generator::new(&vs.root(), &net);
    ckpt.restore("G_ema.", &named_vars(&vs))?;
    vs.freeze();
    // Frozen use: G(w) depends on w alone.
    g.noise = super::generator::NoiseMode::Fixed;
    Ok((vs, g))
}

/// Runs `pretrain-generator`.
pub fn run(
    cfg: &PretrainConfig,
    resume: Option<&Path>,
    device: Device,
    reporter: &mut dyn Reporter,
    cancel: &CancelToken,
) -> anyhow::Result<Outcome> {
    if cfg.objective == plume_jobs::Objective::Teacher {
        return super::teacher::run(cfg, resume, device, reporter, cancel);
    }
    let ds = cfg.dataset.open()?;
    let res = cfg.network.resolution;
    let train_idx = ds.partition(Partition::Train);
    anyhow::ensure!(
        train_idx.len() >= 2,
        "the training partition has {} images; need at least 2",
        train_idx.len()
    );
    let images = ds.load_images(&train_idx, res)?.to_device(device);
    let n = images.size()[0];

    let judge = match &cfg.judge {
        Some(p) => Some(metrics_judge(p, cfg, &ds, &images, reporter)?),
        None => None,
    };

    let mut gan = Gan::new(
        &cfg.network,
        cfg.lr,
        cfg.r1_interval,
        cfg.pl_interval,
        cfg.pl_weight > 0.0,
        cfg.seed,
        device,
    );
    let mut step = 0;
    if let Some(path) = resume {
        let ckpt = resume_checkpoint(path, cfg)?;
        gan.restore(&ckpt)?;
        step = ckpt.step;
    }

    // Only now, with every input checked, does the job write anything.
    reporter.log(&format!("pretrain-generator on {device:?}: {n} training images at {res} px, steps {step}..{} of batch {}", cfg.steps, cfg.batch));
    let cadence = cadence(cfg);
    let mut job = PretrainTraining {
        cfg,
        gan,
        images,
        judge,
        groups: ds.groups.clone(),
    };
    step_loop(&mut job, step, &cadence, reporter, cancel)
}

/// When `pretrain-generator` evaluates, draws samples and checkpoints (either objective).
pub(super) fn cadence(cfg: &PretrainConfig) -> Cadence {
    Cadence {
        evaluate_at_start: true,
        ..Cadence::per_step(
            "pretrain-generator",
            cfg.steps,
            cfg.seed,
            vec![
                (Task::Evaluate, cfg.eval_every),
                (Task::Samples, cfg.sample_every),
                (Task::Checkpoint, cfg.checkpoint_every),
            ],
        )
    }
}

/// The checkpoint a `pretrain-generator` job resumes from: its kind and network must be the
/// job's.
pub(super) fn resume_checkpoint(path: &Path, cfg: &PretrainConfig) -> anyhow::Result<Checkpoint> {
    let ckpt = Checkpoint::load(path)?;
    ckpt.expect_kind("pretrain-generator")?;
    let saved: NetworkConfig = serde_json::from_str(ckpt.meta("generator.network")?)?;
    anyhow::ensure!(
        saved == cfg.network,
        "{}: checkpoint network {saved:?} differs from the job's {:?}",
        path.display(),
        cfg.network
    );
    Ok(ckpt)
}

/// `pretrain-generator` as the step loop drives it.
struct PretrainTraining<'a> {
    cfg: &'a PretrainConfig,
    gan: Gan,
    /// The training partition, on the device.
    images: Tensor,
    /// Scores samples when the job names a judge.
    judge: Option<JudgeForMetrics>,
    /// The dataset's attribute groups, which the judge's coverage metrics read.
    groups: Vec<AttributeGroup>,
}

impl PretrainTraining<'_> {
    /// Both networks, G_ema and (for resumes) the optimizers' state.
    fn save(&self, step: i64, reporter: &mut dyn Reporter) -> anyhow::Result<()> {
        let (cfg, gan) = (self.cfg, &self.gan);
        let mut meta = BTreeMap::new();
        meta.insert(
            "generator.network".into(),
            serde_json::to_string(&cfg.network)?,
        );
        meta.insert("generator.num_ws".into(), gan.g.num_ws().to_string());
        meta.insert("job.config".into(), serde_json::to_string(cfg)?);
        checkpoint::write(reporter, "pretrain-generator", step, &meta, &gan.parts())
    }

    /// The judge's scores of G_ema's samples (FID, precision, recall, coverage), when the
    /// job names a judge.
    fn evaluate(&self, step: i64, reporter: &mut dyn Reporter) -> anyhow::Result<()> {
        let Some(judge) = &self.judge else {
            return Ok(());
        };
        let cfg = self.cfg;
        let t = Instant::now();
        let values = judge.score(
            &self.gan.g_ema,
            cfg.fid_images,
            cfg.metric_images,
            cfg.seed ^ 0xF1D,
            &self.groups,
            self.images.device(),
        );
        let named: Vec<(&str, f64)> = values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        reporter.metrics(step, &named)?;
        let shown: Vec<String> = values
            .iter()
            .filter(|(k, _)| !k.contains("/coverage/") && !k.contains("/top_share/"))
            .map(|(k, v)| format!("{k} = {v:.4}"))
            .collect();
        reporter.log(&format!(
            "step {step}: {} ({:.1} s)",
            shown.join(", "),
            t.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

impl TrainingJob for PretrainTraining<'_> {
    fn train_step(&mut self, step: i64, seed: u64) -> anyhow::Result<Vec<(String, f64)>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = self.images.size()[0];
        let idx: Vec<i64> = (0..self.cfg.batch)
            .map(|_| rng.random_range(0..n))
            .collect();
        let real = self
            .images
            .index_select(0, &Tensor::from_slice(&idx).to_device(self.images.device()));
        let real = if self.cfg.xflip {
            augment::random_xflip(&real)
        } else {
            real
        };
        let metrics = self.gan.train_step(self.cfg, step, &real, &mut rng);
        Ok(metrics
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect())
    }

    fn run_task(
        &mut self,
        task: Task,
        step: i64,
        reporter: &mut dyn Reporter,
    ) -> anyhow::Result<()> {
        match task {
            Task::Evaluate => self.evaluate(step, reporter),
            Task::Samples => {
                let device = self.images.device();
                reporter.artifact(step, "samples", &sample_grid(&self.gan.g_ema, device))?;
                // The raw G beside the EMA: averaging can hide a G that hops between modes.
                reporter.artifact(step, "samples_raw", &sample_grid(&self.gan.g, device))
            }
            Task::Checkpoint => self.save(step, reporter),
        }
    }

    fn progress_shows(&self, metric: &str) -> bool {
        metric == "gen/loss_g" || metric == "gen/loss_d"
    }

    fn timing(&self) -> Option<Timing> {
        Some(Timing {
            step_ms: "gen/step_ms",
            items_per_s: "gen/images_per_s",
            items_per_step: self.cfg.batch as f64,
        })
    }
}
