//! Job `invert`: the style w_gt of every image.
//!
//! - `optimise` (projector-style, after NVlabs' `projector.py`): start at `w_avg`, optimise w
//!   (or W+) so that G(w) matches the image under pixel L1 plus the critic's feature
//!   distance, with a ramped learning rate and decaying noise on w. The generator's noise
//!   inputs are held fixed per batch (reseeded before every forward). This is the only option
//!   for real CUB images.
//!
//! - `sampled` (ml.md's cheap alternative for synthetic pipelines): draw z, take w = f(z),
//!   render G(w) and label it with the critic's attribute predictions. The styles are exact
//!   (no reconstruction error); text jobs caption them from the synthetic dataset's
//!   templates, train on 90% of them and run the edit benchmark on the rest.

use super::{load_frozen_generator, render_styles};
use crate::dataset::Dataset;
use crate::dataset::OpenDataset;
use crate::job::{step_loop, Cadence, CancelToken, Outcome, Reporter, Task, TrainingJob};
use crate::nn::adam::Adam;
use crate::nn::checkpoint::{self, Checkpoint};
use crate::nn::layers::resize_square;
use crate::stylegan::generator::Generator;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub use plume_jobs::{InvertConfig, InvertMode};

/// NVlabs' projector schedule: learning rate ramps up over the first 5% and down (cosine)
/// over the last 25%; the noise added to w decays to zero by 75%.
fn schedule(step: i64, steps: i64, lr: f64) -> (f64, f64) {
    let t = step as f64 / steps as f64;
    let noise = (1.0 - t / 0.75).max(0.0).powi(2) * 0.05;
    let down = ((1.0 - t) / 0.25).min(1.0);
    let ramp = 0.5 - 0.5 * (down * std::f64::consts::PI).cos();
    (lr * ramp * (t / 0.05).min(1.0), noise)
}

/// Optimises the styles of `targets` (`[B, 3, R, R]` in [-1, 1]). Returns w `[B, num_ws, w_dim]`
/// (num_ws = 1 unless `w_plus`) and the per-image mean absolute error of G(w).
pub fn optimise_styles(
    g: &crate::stylegan::generator::Generator,
    critic: Option<&crate::judge::train::Trained>,
    targets: &Tensor,
    cfg: &InvertConfig,
    noise_seed: u64,
) -> (Tensor, Tensor) {
    let b = targets.size()[0];
    let device = targets.device();
    // Spread of w around w_avg, for the optimisation noise (NVlabs: 10k samples).
    let w_std = tch::no_grad(|| {
        let w = g
            .mapping
            .forward(&g.prior_inputs(2000, noise_seed ^ 0x5EED, device));
        ((w - &g.w_avg).square().sum(Kind::Float) / 2000.0)
            .sqrt()
            .double_value(&[])
    });
    let copies = if cfg.w_plus { g.num_ws() } else { 1 };
    let w = g
        .w_avg
        .view([1, 1, -1])
        .repeat([b, copies, 1])
        .detach()
        .set_requires_grad(true);
    let mut opt = Adam::new(
        vec![("w".into(), w.shallow_clone())],
        cfg.lr,
        0.9,
        0.999,
        1e-8,
    );
    let critic_target =
        critic.map(|c| tch::no_grad(|| c.net.forward(&resize_square(targets, c.resolution)).grid));
    let render = |ws: &Tensor| {
        tch::manual_seed(noise_seed as i64);
        let ws = if cfg.w_plus {
            ws.shallow_clone()
        } else {
            ws.expand([-1, g.num_ws(), -1], false)
        };
        g.synthesis(&ws)
    };
    for step in 0..cfg.steps {
        let (lr, noise) = schedule(step, cfg.steps, cfg.lr);
        opt.lr = lr;
        tch::manual_seed((noise_seed as i64).wrapping_add(step + 1));
        let w_noisy = &w + w.randn_like() * (w_std * noise);
        let img = render(&w_noisy);
        let mut loss = (&img - targets).abs().mean(None);
        if let (Some(c), Some(t)) = (critic, &critic_target) {
            let f = c.net.forward(&resize_square(&img, c.resolution)).grid;
            loss += (f - t).square().mean(None) * cfg.feature_weight;
        }
        opt.zero_grad();
        loss.backward();
        opt.step();
    }
    let w = w.detach();
    let err = tch::no_grad(|| {
        (render(&w) - targets)
            .abs()
            .mean_dim([1i64, 2, 3].as_slice(), false, None)
    });
    (w, err)
}

/// Runs `invert`. Its checkpoints are partial styles files (images done so far); the last
/// one is the styles file the text jobs read.
pub fn run(
    cfg: &InvertConfig,
    resume: Option<&Path>,
    device: Device,
    reporter: &mut dyn Reporter,
    cancel: &CancelToken,
) -> anyhow::Result<Outcome> {
    match cfg.mode {
        InvertMode::Sampled => return run_sampled(cfg, device, reporter, cancel),
        InvertMode::Scene => return super::scene::run(cfg, device, reporter),
        InvertMode::Optimise => {}
    }
    let ds: Dataset = cfg.dataset.open()?;
    let (fingerprint, _g_vs, g) = load_frozen_generator(&cfg.generator, device)?;
    let critic = cfg
        .critic
        .as_ref()
        .map(|p| crate::judge::train::load(p, "critic", device))
        .transpose()?;
    let res = g.cfg.resolution;
    let total = cfg.limit.unwrap_or(usize::MAX).min(ds.images.len());
    let copies = if cfg.w_plus { g.num_ws() } else { 1 };
    let (mut ws, mut errs): (Vec<Tensor>, Vec<Tensor>) = (Vec::new(), Vec::new());
    let mut done = 0usize;
    if let Some(path) = resume {
        let ckpt = Checkpoint::load(path)?;
        ckpt.expect_kind("invert")?;
        anyhow::ensure!(
            ckpt.meta("styles.generator")? == fingerprint,
            "{}: partial styles of another generator",
            path.display()
        );
        done = ckpt.step as usize;
        ws.push(
            ckpt.tensor("w", &[done as i64, copies, g.cfg.w_dim])?
                .to_device(device),
        );
        errs.push(
            ckpt.tensor("recon_error", &[done as i64])?
                .to_device(device),
        );
    }
    reporter.log(&format!(
        "invert on {device:?}: {total} images at {res} px, {} steps each, batch {}, generator {}",
        cfg.steps,
        cfg.batch,
        &fingerprint[..12]
    ));
    let cadence = Cadence {
        name: "invert",
        steps: total as i64,
        stride: cfg.batch,
        seed: cfg.seed,
        every: vec![(Task::Checkpoint, cfg.checkpoint_every as i64)],
        evaluate_at_start: false,
    };
    let mut job = Inversion {
        cfg,
        ds: &ds,
        g: &g,
        critic: critic.as_ref(),
        total,
        ws,
        errs,
        fingerprint: &fingerprint,
        copies,
    };
    let outcome = step_loop(&mut job, done as i64, &cadence, reporter, cancel)?;
    if let Outcome::Completed { .. } = outcome {
        let all = Tensor::cat(&job.errs, 0);
        reporter.log(&format!(
            "reconstruction L1: mean {:.4}, max {:.4}",
            all.mean(None).double_value(&[]),
            all.max().double_value(&[])
        ));
    }
    Ok(outcome)
}

/// `invert` as the step loop drives it: a step inverts the next batch of images, and the
/// step count is the number of images done.
struct Inversion<'a> {
    cfg: &'a InvertConfig,
    ds: &'a Dataset,
    g: &'a Generator,
    critic: Option<&'a crate::judge::train::Trained>,
    total: usize,
    /// Styles and reconstruction errors of the images done, batch by batch.
    ws: Vec<Tensor>,
    errs: Vec<Tensor>,
    /// The generator's fingerprint, which the styles belong to.
    fingerprint: &'a str,
    /// Styles per image: the generator's w+ count, or 1.
    copies: i64,
}

impl Inversion<'_> {
    /// The styles of the images done so far (a partial file resumes; the last is the job's
    /// output).
    fn save(&self, done: usize, reporter: &mut dyn Reporter) -> anyhow::Result<()> {
        let (cfg, g, copies) = (self.cfg, self.g, self.copies);
        let device = g.w_avg.device();
        let w = if self.ws.is_empty() {
            Tensor::zeros([0, copies, g.cfg.w_dim], (Kind::Float, device))
        } else {
            Tensor::cat(&self.ws, 0)
        };
        let e = if self.errs.is_empty() {
            Tensor::zeros([0], (Kind::Float, device))
        } else {
            Tensor::cat(&self.errs, 0)
        };
        let index = Tensor::arange(done as i64, (Kind::Float, device));
        let meta = super::styles_meta(cfg, self.fingerprint, done, copies, g.cfg.w_dim)?;
        let parts = checkpoint::Parts::weights(vec![
            ("w".into(), w),
            ("index".into(), index),
            ("recon_error".into(), e),
        ]);
        checkpoint::write(reporter, "invert", done as i64, &meta, &parts)
    }
}

impl TrainingJob for Inversion<'_> {
    fn train_step(&mut self, done: i64, seed: u64) -> anyhow::Result<Vec<(String, f64)>> {
        let done = done as usize;
        let n = (self.cfg.batch as usize).min(self.total - done);
        let idx: Vec<usize> = (done..done + n).collect();
        let targets = self
            .ds
            .load_images(&idx, self.g.cfg.resolution)?
            .to_device(self.g.w_avg.device());
        let (w, err) = optimise_styles(self.g, self.critic, &targets, self.cfg, seed);
        let mean = err.mean(None).double_value(&[]);
        self.ws.push(w);
        self.errs.push(err);
        Ok(vec![("styles/recon_l1".into(), mean)])
    }

    fn run_task(
        &mut self,
        task: Task,
        done: i64,
        reporter: &mut dyn Reporter,
    ) -> anyhow::Result<()> {
        match task {
            Task::Checkpoint => self.save(done as usize, reporter),
            Task::Evaluate | Task::Samples => Ok(()),
        }
    }
}

/// `mode: sampled`: `limit` (default: the dataset's size) styles drawn from the mapping
/// network, labelled by the critic. One styles file at the end (drawing is cheap, so a
/// cancelled or resumed job simply draws again: the draw is seeded, so the result is the
/// same).
fn run_sampled(
    cfg: &InvertConfig,
    device: Device,
    reporter: &mut dyn Reporter,
    cancel: &CancelToken,
) -> anyhow::Result<Outcome> {
    let ds: Dataset = cfg.dataset.open()?;
    crate::text::benchmark::check_vocabulary(&ds)?;
    let (fingerprint, _g_vs, g) = load_frozen_generator(&cfg.generator, device)?;
    let critic_path = cfg
        .critic
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("mode: sampled needs `critic`"))?;
    let critic = crate::judge::train::load(critic_path, "critic", device)?;
    let total = cfg.limit.unwrap_or(ds.images.len()).max(1);
    let groups = ds.groups.len() as i64;
    reporter.log(&format!(
        "invert (sampled) on {device:?}: {total} styles from generator {}, labelled by the critic",
        &fingerprint[..12]
    ));
    let (mut ws, mut labels) = (Vec::new(), Vec::new());
    let mut done = 0usize;
    while done < total {
        if cancel.is_cancelled() {
            reporter.finish(&format!(
                "cancelled after drawing {done} styles (none kept)"
            ));
            return Ok(Outcome::Cancelled { step: 0 });
        }
        let n = (cfg.batch as usize).min(total - done);
        let seed = crate::job::step_seed(cfg.seed, done as i64);
        let (w, label) = tch::no_grad(|| {
            let w = g
                .mapping
                .forward(&g.prior_inputs(n as i64, seed, device))
                .unsqueeze(1);
            let img = render_styles(&g, &w, seed);
            let out = critic.net.forward(&resize_square(&img, critic.resolution));
            (w, critic.net.predict(&out.attr_logits))
        });
        anyhow::ensure!(
            label.size() == [n as i64, groups],
            "the critic predicts {:?} labels, the dataset has {groups} attribute groups",
            label.size()
        );
        ws.push(w);
        labels.push(label);
        done += n;
        reporter.progress(done as i64, total as i64, &[]);
    }
    let w = Tensor::cat(&ws, 0);
    let labels = Tensor::cat(&labels, 0);
    reporter.log(&distinct_labels(&ds, &labels));
    save_sampled(cfg, &fingerprint, g.cfg.w_dim, w, &labels, reporter)?;
    reporter.metrics(total as i64, &[("styles/recon_l1", 0.0)])?;
    reporter.finish(&format!("invert (sampled) finished: {total} styles"));
    Ok(Outcome::Completed { step: total as i64 })
}

/// How varied the critic finds the samples: distinct values seen per attribute group.
fn distinct_labels(ds: &Dataset, labels: &Tensor) -> String {
    let distinct: Vec<String> = (0..labels.size()[1])
        .map(|k| {
            let col = Vec::<i64>::try_from(&labels.select(1, k).to_device(Device::Cpu))
                .unwrap_or_default();
            let set: std::collections::BTreeSet<i64> = col.into_iter().collect();
            format!("{}={}", ds.groups[k as usize].name, set.len())
        })
        .collect();
    format!("distinct critic labels per group: {}", distinct.join(" "))
}

/// Writes the sampled styles with the critic's labels, as the styles file train-text reads.
fn save_sampled(
    cfg: &InvertConfig,
    fingerprint: &str,
    w_dim: i64,
    w: Tensor,
    labels: &Tensor,
    reporter: &mut dyn Reporter,
) -> anyhow::Result<()> {
    let (total, device) = (labels.size()[0], labels.device());
    let groups = labels.size()[1];
    let mut meta = super::styles_meta(cfg, fingerprint, total as usize, 1, w_dim)?;
    meta.insert("styles.mode".into(), "sampled".into());
    meta.insert("styles.groups".into(), groups.to_string());
    checkpoint::write(
        reporter,
        "invert",
        total,
        &meta,
        &checkpoint::Parts::weights(vec![
            ("w".into(), w),
            (
                "index".into(),
                Tensor::full([total], -1.0, (Kind::Float, device)),
            ),
            (
                "recon_error".into(),
                Tensor::zeros([total], (Kind::Float, device)),
            ),
            ("labels".into(), labels.to_kind(Kind::Float)),
        ]),
    )
}
