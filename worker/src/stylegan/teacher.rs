//! `pretrain-generator` with `objective: teacher` (ml.md §2): on synthetic birds the renderer
//! teaches the generator. Every step draws fresh scenes from a stream no dataset uses, renders
//! them, and trains G(mapping(scene code)) toward the renders with a part-weighted L1 + L2.
//! There is no discriminator and nothing to overfit (no scene is seen twice).
//!
//! Evaluation scores the EMA generator on held-out scenes the way the bar reads it:
//! the judge's reading of each attribute on G's picture against its reading of the render of
//! the same scene (`gen/read/<group>`, `gen/read_real/<group>`, `gen/read_rel_min` over the
//! colour groups), plus judge-FID, precision/recall, coverage and facing of those pictures.
//! Without a judge it still reports the held-out pixel error.

use super::generator::{Generator, NoiseMode};
use super::scoring::JudgeForMetrics;
use crate::dataset::scene::{self, Scene, SceneStream};
use crate::dataset::{AttributeGroup, OpenDataset};
use crate::job::{step_loop, CancelToken, Outcome, Reporter, Task, Timing, TrainingJob};
use crate::nn::adam::Adam;
use crate::nn::checkpoint::{self, Checkpoint};
use crate::nn::{named_vars, trainable_vars};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use plume_jobs::PretrainConfig;

/// The part-weighted pixel loss of G's pictures against the renders: `parts` are the render's
/// part labels `[B, R, R]` (0 = background).
pub fn teacher_loss(fake: &Tensor, real: &Tensor, parts: &Tensor, cfg: &PretrainConfig) -> Tensor {
    let t = &cfg.teacher;
    let bird = parts.gt(0).to_kind(Kind::Float).unsqueeze(1);
    let weight = bird * (t.bird_weight - 1.0) + 1.0;
    let d = fake - real;
    let per_pixel = d.abs() * t.l1 + d.square() * t.l2;
    (per_pixel * weight).mean(Kind::Float)
}

/// The part each colour group paints (breast, wing, crown, upperparts' body), in `PARTS`.
const COLOUR_PARTS: [(usize, i64); 4] = [(0, 2), (1, 3), (2, 4), (3, 1)];

/// The probe's colour reading, which needs no judge: per colour group, the share of images
/// whose mean colour over the render's mask of that part is nearest (in RGB) to the scene's
/// colour among the 15 palette colours. `images` `[N, 3, R, R]` in [-1, 1], `parts` the
/// renders' labels `[N, R, R]`, `labels` the scenes' values `[N, 7]`. Real renders read
/// 0.99+ on breast and wing and about 0.97 on the small crown (colour jitter and
/// anti-aliased edges).
pub fn mask_colour_reading(images: &Tensor, parts: &Tensor, labels: &Tensor) -> [f64; 4] {
    tch::no_grad(|| {
        let device = images.device();
        let palette: Vec<f32> = crate::dataset::vocab::COLOURS
            .iter()
            .flat_map(|(_, rgb)| rgb.map(|c| c as f32 / 127.5 - 1.0))
            .collect();
        let palette = Tensor::from_slice(&palette).view([15, 3]).to_device(device);
        COLOUR_PARTS.map(|(group, part)| {
            let mask = parts.eq(part).to_kind(Kind::Float).unsqueeze(1); // [N, 1, R, R]
            let area = mask.sum_dim_intlist([2i64, 3].as_slice(), false, None); // [N, 1]
            let mean = (images * &mask).sum_dim_intlist([2i64, 3].as_slice(), false, None)
                / area.clamp_min(1.0); // [N, 3]
            let nearest = Tensor::cdist(&mean, &palette, 2.0, None::<i64>).argmin(1, false);
            let visible = area.squeeze_dim(1).gt(0);
            let hit = nearest
                .eq_tensor(&labels.select(1, group as i64))
                .logical_and(&visible);
            hit.to_kind(Kind::Float).sum(Kind::Float).double_value(&[])
                / visible
                    .to_kind(Kind::Float)
                    .sum(Kind::Float)
                    .double_value(&[])
                    .max(1.0)
        })
    })
}

/// A batch of rendered scenes, made on a helper thread while the previous step trains.
struct RenderedBatch {
    step: i64,
    codes: Tensor,
    images: Tensor,
    parts: Tensor,
}

/// The scenes of training step `step`: indices `step * batch ..` of the training stream.
fn training_batch(cfg: &PretrainConfig, step: i64) -> RenderedBatch {
    let b = cfg.batch as usize;
    let scenes = SceneStream::Training.scenes(cfg.seed, step as u64 * b as u64, b);
    let (images, parts) = scene::render_batch(&scenes, cfg.network.resolution);
    RenderedBatch {
        step,
        codes: scene::codes(&scenes),
        images,
        parts,
    }
}

/// Renders training batches ahead of the step loop, from `first` on, two at a time.
fn prefetch(cfg: &PretrainConfig, first: i64) -> mpsc::Receiver<RenderedBatch> {
    let (tx, rx) = mpsc::sync_channel(2);
    let cfg = cfg.clone();
    std::thread::spawn(move || {
        for step in first..cfg.steps {
            if tx.send(training_batch(&cfg, step)).is_err() {
                return;
            }
        }
    });
    rx
}

/// The held-out scenes, their renders and what the judge reads of the renders.
struct HeldOut {
    codes: Tensor,
    renders: Tensor,
    parts: Tensor,
    labels: Tensor,
}

impl HeldOut {
    fn new(cfg: &PretrainConfig, device: Device) -> HeldOut {
        let scenes: Vec<Scene> =
            SceneStream::HeldOut.scenes(cfg.seed, 0, cfg.teacher.heldout_scenes as usize);
        let (renders, parts) = scene::render_batch(&scenes, cfg.network.resolution);
        HeldOut {
            codes: scene::codes(&scenes).to_device(device),
            renders: renders.to_device(device),
            parts: parts.to_device(device),
            labels: scene::labels(&scenes).to_device(device),
        }
    }
}

/// G, its EMA copy and G's optimizer.
struct Student {
    g_vs: VarStore,
    g: Generator,
    ema_vs: VarStore,
    g_ema: Generator,
    g_params: Vec<(String, Tensor)>,
    ema_params: Vec<(String, Tensor)>,
    opt: Adam,
}

impl Student {
    fn new(cfg: &PretrainConfig, device: Device) -> Student {
        tch::manual_seed(cfg.seed as i64);
        let g_vs = VarStore::new(device);
        let mut g = Generator::new(&g_vs.root(), &cfg.network);
        let (ema_vs, mut g_ema, ema_params) = super::pretrain::ema_copy(&g_vs, &cfg.network);
        // The target has no per-pixel randomness to explain: G is a function of the scene.
        g.noise = NoiseMode::Fixed;
        g_ema.noise = NoiseMode::Fixed;
        let g_params = trainable_vars(&g_vs);
        let opt = Adam::new(
            crate::nn::shallow(&g_params),
            cfg.lr,
            cfg.teacher.beta1,
            0.99,
            1e-8,
        );
        Student {
            g_vs,
            g,
            ema_vs,
            g_ema,
            g_params,
            ema_params,
            opt,
        }
    }

    /// The EMA generator's `w_avg`: the mean w over the renderer's prior (exact, not a running
    /// mean: every later job's truncation and centring reads it).
    fn refresh_w_avg(&self, device: Device) {
        tch::no_grad(|| {
            let codes = self.g_ema.prior_inputs(4096, 0x3A7C, device);
            let mean = self.g_ema.mapping.forward(&codes).mean_dim(0, false, None);
            self.g_ema.w_avg.shallow_clone().copy_(&mean);
            self.g.w_avg.shallow_clone().copy_(&mean);
        });
    }

    fn parts(&self) -> checkpoint::Parts {
        let weights = checkpoint::prefixed("G_ema.", &named_vars(&self.ema_vs));
        let mut state = checkpoint::prefixed("G.", &named_vars(&self.g_vs));
        state.extend(checkpoint::prefixed("G.opt.", &self.opt.state()));
        checkpoint::Parts { weights, state }
    }

    fn restore(&mut self, ckpt: &Checkpoint) -> anyhow::Result<()> {
        ckpt.expect_resume_state()?;
        ckpt.restore("G.", &named_vars(&self.g_vs))?;
        ckpt.restore("G_ema.", &named_vars(&self.ema_vs))?;
        self.opt.restore(ckpt, "G.opt.")?;
        Ok(())
    }
}

/// Runs `pretrain-generator` with `objective: teacher`.
pub fn run(
    cfg: &PretrainConfig,
    resume: Option<&Path>,
    device: Device,
    reporter: &mut dyn Reporter,
    cancel: &CancelToken,
) -> anyhow::Result<Outcome> {
    let ds = cfg.dataset.open()?;
    anyhow::ensure!(
        ds.groups.len() == 7,
        "the teacher needs the synthetic birds' 7 attribute groups; the dataset has {}",
        ds.groups.len()
    );
    let judge = cfg
        .judge
        .as_ref()
        .map(|path| super::pretrain::judge_for_metrics(path, cfg, &ds, device))
        .transpose()?;
    let mut student = Student::new(cfg, device);
    let mut step = 0;
    if let Some(path) = resume {
        let ckpt = super::pretrain::resume_checkpoint(path, cfg)?;
        student.restore(&ckpt)?;
        step = ckpt.step;
    }
    let heldout = HeldOut::new(cfg, device);
    // The renders do not change: the judge reads them once.
    let real_rates = judge.as_ref().map(|judge| {
        let real = judge.read(&heldout.renders);
        read_rates(&real.values, &heldout.labels, &ds.groups)
    });
    if let Some(rates) = &real_rates {
        let shown: Vec<String> = rates.iter().map(|(g, r)| format!("{g} {r:.3}")).collect();
        reporter.log(&format!(
            "the judge reads the renders of {} held-out scenes at: {}",
            cfg.teacher.heldout_scenes,
            shown.join(", ")
        ));
    }
    reporter.log(&format!(
        "pretrain-generator (teacher) on {device:?}: fresh scenes at {} px, steps {step}..{} of batch {}, {} held-out scenes",
        cfg.network.resolution, cfg.steps, cfg.batch, cfg.teacher.heldout_scenes
    ));
    let cadence = super::pretrain::cadence(cfg);
    let mut job = TeacherTraining {
        cfg,
        device,
        batches: prefetch(cfg, step),
        student,
        heldout,
        judge: judge.zip(real_rates),
        groups: ds.groups.clone(),
    };
    step_loop(&mut job, step, &cadence, reporter, cancel)
}

/// Per group, the share of images whose judge reading is the scene's value.
fn read_rates(values: &Tensor, labels: &Tensor, groups: &[AttributeGroup]) -> Vec<(String, f64)> {
    groups
        .iter()
        .enumerate()
        .map(|(g, group)| {
            let hit = values
                .select(1, g as i64)
                .eq_tensor(&labels.select(1, g as i64))
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[]);
            (group.name.clone(), hit)
        })
        .collect()
}

/// `pretrain-generator` (teacher) as the step loop drives it.
struct TeacherTraining<'a> {
    cfg: &'a PretrainConfig,
    device: Device,
    batches: mpsc::Receiver<RenderedBatch>,
    student: Student,
    heldout: HeldOut,
    /// The judge, with its reading of the held-out renders per group.
    judge: Option<(JudgeForMetrics, Vec<(String, f64)>)>,
    groups: Vec<AttributeGroup>,
}

impl TeacherTraining<'_> {
    fn batch(&mut self, step: i64) -> RenderedBatch {
        match self.batches.recv() {
            Ok(b) if b.step == step => b,
            // The helper is behind a resume or gone: render here.
            _ => {
                self.batches = prefetch(self.cfg, step + 1);
                training_batch(self.cfg, step)
            }
        }
    }

    fn save(&self, step: i64, reporter: &mut dyn Reporter) -> anyhow::Result<()> {
        let cfg = self.cfg;
        self.student.refresh_w_avg(self.device);
        let mut meta = BTreeMap::new();
        meta.insert(
            "generator.network".into(),
            serde_json::to_string(&cfg.network)?,
        );
        meta.insert(
            "generator.num_ws".into(),
            self.student.g.num_ws().to_string(),
        );
        meta.insert("generator.objective".into(), "teacher".into());
        meta.insert(
            "generator.scene_code_version".into(),
            scene::SCENE_CODE_VERSION.to_string(),
        );
        meta.insert(
            "generator.images_seen".into(),
            (step * cfg.batch).to_string(),
        );
        meta.insert("job.config".into(), serde_json::to_string(cfg)?);
        checkpoint::write(
            reporter,
            "pretrain-generator",
            step,
            &meta,
            &self.student.parts(),
        )
    }

    /// The EMA generator on the held-out scenes: pixel error, and with a judge the attribute
    /// readings against the renders' and the generator metrics.
    fn evaluate(&self, step: i64, reporter: &mut dyn Reporter) -> anyhow::Result<()> {
        let t = Instant::now();
        let h = &self.heldout;
        let g = &self.student.g_ema;
        let n = h.codes.size()[0];
        let fake = tch::no_grad(|| {
            let parts: Vec<Tensor> = (0..n)
                .step_by(250)
                .map(|s| g.generate(&h.codes.narrow(0, s, 250.min(n - s)), 1.0))
                .collect();
            Tensor::cat(&parts, 0).clamp(-1.0, 1.0)
        });
        let l1 = (&fake - &h.renders)
            .abs()
            .mean(Kind::Float)
            .double_value(&[]);
        let mut values = vec![("gen/heldout_l1".to_string(), l1)];
        let masked = mask_colour_reading(&fake, &h.parts, &h.labels);
        // The first four groups are the colour groups, in `COLOUR_PARTS` order.
        for (group, r) in self.groups.iter().zip(masked) {
            values.push((format!("gen/mask_read/{}", group.name), r));
        }
        values.push((
            "gen/mask_read_min".into(),
            masked.into_iter().fold(f64::INFINITY, f64::min),
        ));
        if let Some((judge, real_rates)) = &self.judge {
            let fake_reading = judge.read(&fake);
            let fake_rates = read_rates(&fake_reading.values, &h.labels, &self.groups);
            let mut rel_min = f64::INFINITY;
            for ((name, f), (_, r)) in fake_rates.iter().zip(real_rates) {
                values.push((format!("gen/read/{name}"), *f));
                values.push((format!("gen/read_real/{name}"), *r));
                if name.ends_with("_color") {
                    rel_min = rel_min.min(f / r.max(1e-9));
                }
            }
            values.push(("gen/read_rel_min".into(), rel_min));
            values.extend(judge.score_reading(&fake_reading, n, &self.groups));
        }
        let named: Vec<(&str, f64)> = values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        reporter.metrics(step, &named)?;
        let shown: Vec<String> = values
            .iter()
            .filter(|(k, _)| {
                !k.contains("/coverage/") && !k.contains("/top_share/") && !k.contains("_real/")
            })
            .map(|(k, v)| format!("{k} = {v:.4}"))
            .collect();
        reporter.log(&format!(
            "step {step} ({} images): {} ({:.1} s)",
            step * self.cfg.batch,
            shown.join(", "),
            t.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// Rows of renders, then the EMA generator's and the raw G's pictures of the same held-out
    /// scenes: the teacher and the student side by side.
    fn samples(&self) -> Vec<u8> {
        tch::no_grad(|| {
            // Up to three groups of 8 scenes (fewer when there are fewer held-out scenes).
            let cols = 8.min(self.heldout.codes.size()[0]);
            let groups = (self.heldout.codes.size()[0] / cols).min(3);
            let n = cols * groups;
            let codes = self.heldout.codes.narrow(0, 0, n);
            let renders = self.heldout.renders.narrow(0, 0, n);
            let ema = self.student.g_ema.generate(&codes, 1.0).clamp(-1.0, 1.0);
            let raw = self.student.g.generate(&codes, 1.0).clamp(-1.0, 1.0);
            let mut rows = Vec::new();
            let mut labels = Vec::new();
            for r in 0..groups {
                for (name, t) in [("render", &renders), ("G_ema", &ema), ("G", &raw)] {
                    rows.push(t.narrow(0, r * cols, cols));
                    labels.push(name.to_string());
                }
            }
            let all = Tensor::cat(&rows, 0);
            let scale = (128 / self.cfg.network.resolution).max(1);
            crate::picture::image_grid(&all, cols as u32, scale, &labels).to_png()
        })
    }
}

impl TrainingJob for TeacherTraining<'_> {
    fn train_step(&mut self, step: i64, _seed: u64) -> anyhow::Result<Vec<(String, f64)>> {
        let batch = self.batch(step);
        let (codes, real, parts) = (
            batch.codes.to_device(self.device),
            batch.images.to_device(self.device),
            batch.parts.to_device(self.device),
        );
        let s = &mut self.student;
        let w = s.g.mapping.forward(&codes);
        let fake = s.g.synthesis(&s.g.broadcast(&w));
        let loss = teacher_loss(&fake, &real, &parts, self.cfg);
        s.opt.zero_grad();
        loss.backward();
        s.opt.step();
        let b = self.cfg.batch;
        let beta = super::loss::ema_beta(
            b,
            (step + 1) * b,
            self.cfg.ema_half_life_images,
            self.cfg.ema_rampup,
        );
        super::loss::ema_update(&s.ema_params, &s.g_params, beta);
        let l1 = tch::no_grad(|| (&fake - &real).abs().mean(Kind::Float).double_value(&[]));
        Ok(vec![
            ("gen/teacher_loss".into(), loss.double_value(&[])),
            ("gen/teacher_l1".into(), l1),
        ])
    }

    fn run_task(
        &mut self,
        task: Task,
        step: i64,
        reporter: &mut dyn Reporter,
    ) -> anyhow::Result<()> {
        match task {
            Task::Evaluate => self.evaluate(step, reporter),
            Task::Samples => reporter.artifact(step, "samples", &self.samples()),
            Task::Checkpoint => self.save(step, reporter),
        }
    }

    fn progress_shows(&self, metric: &str) -> bool {
        metric == "gen/teacher_loss"
    }

    fn timing(&self) -> Option<Timing> {
        Some(Timing {
            step_ms: "gen/step_ms",
            items_per_s: "gen/images_per_s",
            items_per_step: self.cfg.batch as f64,
        })
    }
}
