//! Job `train-text`: trains BERT and the style heads with one method's recipe against the
//! frozen generator, and runs the edit benchmark periodically (so eval curves exist).

use super::benchmark::{
    captions_of, critic_parts, dataset_sources, harmonic, requests, run_benchmark, Source,
};
use super::bert::UNSTORED_BERT_KEY;
use super::context::{sampled_split, TextContext};
use super::losses::{loss_terms, total_loss, Example, Recipe};
use super::methods::{class_means, Method, Nets};
use crate::dataset::Partition;
use crate::job::{step_loop, Cadence, CancelToken, Outcome, Reporter, Task, TrainingJob};
use crate::nn::adam::Adam;
use crate::nn::checkpoint::{self, Checkpoint};
use crate::nn::{named_vars, trainable_vars};
use crate::styles::render_styles;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Tensor};

pub use plume_jobs::{EvaluateConfig, TextConfig};

/// Runs `train-text`.
pub fn run(
    cfg: &TextConfig,
    resume: Option<&Path>,
    device: Device,
    reporter: &mut dyn Reporter,
    cancel: &CancelToken,
) -> anyhow::Result<Outcome> {
    let ctx = TextContext::load(cfg, None, cfg.eval_edits, device)?;
    // Part masks: only the unedited-region and M4's grounding losses read them.
    let needs_masks = (cfg.losses.unedited_region > 0.0
        && matches!(
            cfg.method,
            Method::Weighted | Method::Contrastive | Method::VisualGrounding
        ))
        || (cfg.losses.grounding > 0.0 && cfg.method == Method::VisualGrounding);
    let mut set = match &ctx.sampled {
        None => TrainingSet::from_dataset(&ctx, needs_masks, device)?,
        Some(values) => TrainingSet::from_sampled(&ctx, values, needs_masks, device)?,
    };
    if cfg.losses.edit_style > 0.0 && cfg.method != Method::LinearDirections {
        set.class_means = Some(class_means(&set.w, &set.labels));
    }
    let mut bert_opt = Adam::new(trainable_vars(&ctx.enc.vs), cfg.lr_bert, 0.9, 0.999, 1e-8);
    let mut head_opt = Adam::new(
        trainable_vars(&ctx.heads.vs),
        cfg.lr_heads,
        0.9,
        0.999,
        1e-8,
    );
    let mut step = 0;
    if let Some(path) = resume {
        let ckpt = Checkpoint::load(path)?;
        ckpt.expect_kind("train-text")?;
        ckpt.expect_resume_state()?;
        ctx.enc.restore_from(&ckpt)?;
        ckpt.restore("heads.", &named_vars(&ctx.heads.vs))?;
        bert_opt.restore(&ckpt, "bert.opt.")?;
        head_opt.restore(&ckpt, "heads.opt.")?;
        step = ckpt.step;
    }
    reporter.log(&format!(
        "train-text {:?} on {device:?}: {} training examples with styles{}, {} edit requests, steps {step}..{}",
        cfg.method,
        set.captions.len(),
        if ctx.sampled.is_some() { " (sampled)" } else { "" },
        ctx.reqs.len(),
        cfg.steps
    ));
    let saver = TextSaver::new(&ctx, cfg);
    if cfg.method == Method::LinearDirections {
        // M0 is fitted in closed form, in one step (`steps` does not apply).
        fit_linear_directions(&ctx, cfg, &set.w, &set.labels, &set.sources, reporter)?;
        ctx.evaluate(cfg.method, 1, reporter)?;
        saver.save(1, &bert_opt, &head_opt, reporter)?;
        reporter.finish("linear-directions fitted");
        return Ok(Outcome::Completed { step: 1 });
    }
    let cadence = Cadence {
        evaluate_at_start: true,
        ..Cadence::per_step(
            "train-text",
            cfg.steps,
            cfg.seed,
            vec![
                (Task::Evaluate, cfg.eval_every),
                (Task::Checkpoint, cfg.checkpoint_every),
            ],
        )
    };
    let mut job = TextTraining {
        ctx: &ctx,
        cfg,
        recipe: Recipe::from(cfg),
        nets: ctx.nets(),
        bert_opt,
        head_opt,
        set,
        saver,
    };
    step_loop(&mut job, step, &cadence, reporter, cancel)
}

/// The training examples: images, styles w, attribute labels, captions, part masks when a
/// loss reads them, and the same examples as edit sources (M0 chooses its step size on them).
struct TrainingSet {
    images: Tensor,
    labels: Tensor,
    /// One style per example, `[N, w_dim]`.
    w: Tensor,
    /// Per example: its captions, one drawn per step.
    captions: Vec<Vec<String>>,
    masks: Option<Tensor>,
    sources: Vec<Source>,
    /// The class mean of the styles per attribute value (the `edit_style` term's directions).
    class_means: Option<Tensor>,
}

impl TrainingSet {
    /// Inverted styles: the training partition's images that have a style and captions.
    fn from_dataset(ctx: &TextContext, needs_masks: bool, device: Device) -> anyhow::Result<Self> {
        let (ds, resolution) = (&ctx.ds, ctx.g.cfg.resolution);
        let train: Vec<usize> = ds
            .partition(Partition::Train)
            .into_iter()
            .filter(|&i| ctx.style_rows[i] >= 0 && !ds.captions[i].is_empty())
            .collect();
        anyhow::ensure!(
            train.len() >= 2,
            "only {} training images have styles and captions",
            train.len()
        );
        let rows: Vec<i64> = train.iter().map(|&i| ctx.style_rows[i]).collect();
        let rows = Tensor::from_slice(&rows).to_device(device);
        let masks = match needs_masks {
            true => ds
                .load_masks(&train, resolution)?
                .map(|m| m.to_device(device)),
            false => None,
        };
        Ok(TrainingSet {
            images: ds.load_images(&train, resolution)?.to_device(device),
            labels: ds.label_tensor(&train).to_device(device),
            w: ctx.styles_w.index_select(0, &rows).select(1, 0),
            captions: train.iter().map(|&i| ds.captions[i].clone()).collect(),
            masks,
            sources: dataset_sources(ds, &ctx.style_rows, Partition::Train),
            class_means: None,
        })
    }

    /// Sampled styles: the first 90% train (images G(w), captions from the templates of the
    /// critic's labels `values`, masks from the critic's segmentation); the rest are the
    /// benchmark's sources.
    fn from_sampled(
        ctx: &TextContext,
        values: &[Vec<usize>],
        needs_masks: bool,
        device: Device,
    ) -> anyhow::Result<Self> {
        let n = sampled_split(values.len()) as i64;
        let w = ctx.styles_w.narrow(0, 0, n);
        let images = Tensor::cat(
            &(0..n)
                .step_by(64)
                .map(|k| render_styles(&ctx.g, &w.narrow(0, k, 64.min(n - k)), 0x7EA1 ^ k as u64))
                .collect::<Vec<_>>(),
            0,
        );
        let flat: Vec<i64> = values[..n as usize]
            .iter()
            .flat_map(|r| r.iter().map(|&v| v as i64))
            .collect();
        let labels = Tensor::from_slice(&flat)
            .view([n, ctx.ds.groups.len() as i64])
            .to_device(device);
        let masks = match needs_masks {
            true => {
                let chunks = (0..n)
                    .step_by(256)
                    .map(|k| critic_parts(&ctx.critic, &images.narrow(0, k, 256.min(n - k))))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Some(Tensor::cat(&chunks, 0).to_device(device))
            }
            false => None,
        };
        let sources = (0..n as usize)
            .map(|r| Source {
                image: None,
                style_row: r as i64,
                values: values[r].clone(),
            })
            .collect();
        Ok(TrainingSet {
            images,
            labels,
            w: w.select(1, 0),
            captions: values[..n as usize]
                .iter()
                .map(|v| captions_of(v))
                .collect(),
            masks,
            sources,
            class_means: None,
        })
    }
}

/// Writes `train-text` checkpoints: the BERT weights training changes (none for M0, which
/// never steps BERT), the heads and both optimizers' state, with the fingerprint of the BERT
/// weights it does not store (which `bert_dir` supplies on load).
struct TextSaver<'a> {
    ctx: &'a TextContext,
    cfg: &'a TextConfig,
    stored_bert: Vec<(String, Tensor)>,
    unstored_bert: String,
}

impl<'a> TextSaver<'a> {
    fn new(ctx: &'a TextContext, cfg: &'a TextConfig) -> Self {
        let stored_bert = if cfg.method == Method::LinearDirections {
            Vec::new()
        } else {
            trainable_vars(&ctx.enc.vs)
        };
        let unstored_bert = ctx.enc.unstored_fingerprint(&stored_bert);
        TextSaver {
            ctx,
            cfg,
            stored_bert,
            unstored_bert,
        }
    }

    fn save(
        &self,
        step: i64,
        bert_opt: &Adam,
        head_opt: &Adam,
        reporter: &mut dyn Reporter,
    ) -> anyhow::Result<()> {
        let mut weights = checkpoint::prefixed("bert.", &self.stored_bert);
        weights.extend(checkpoint::prefixed(
            "heads.",
            &named_vars(&self.ctx.heads.vs),
        ));
        let mut state = checkpoint::prefixed("bert.opt.", &bert_opt.state());
        state.extend(checkpoint::prefixed("heads.opt.", &head_opt.state()));
        let mut meta = BTreeMap::new();
        meta.insert("text.generator".into(), self.ctx.fingerprint.clone());
        meta.insert(
            "text.bert_dir".into(),
            self.ctx.bert_dir.display().to_string(),
        );
        meta.insert(UNSTORED_BERT_KEY.into(), self.unstored_bert.clone());
        meta.insert("job.config".into(), serde_json::to_string(self.cfg)?);
        let parts = checkpoint::Parts { weights, state };
        checkpoint::write(reporter, "train-text", step, &meta, &parts)
    }
}

/// `train-text` as the step loop drives it.
struct TextTraining<'a> {
    ctx: &'a TextContext,
    cfg: &'a TextConfig,
    recipe: Recipe,
    nets: Nets<'a>,
    bert_opt: Adam,
    head_opt: Adam,
    set: TrainingSet,
    saver: TextSaver<'a>,
}

impl TrainingJob for TextTraining<'_> {
    fn train_step(&mut self, _step: i64, seed: u64) -> anyhow::Result<Vec<(String, f64)>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let idx: Vec<i64> = (0..self.cfg.batch)
            .map(|_| rng.random_range(0..self.set.captions.len() as i64))
            .collect();
        let captions: Vec<&str> = idx
            .iter()
            .map(|&k| {
                let c = &self.set.captions[k as usize];
                c[rng.random_range(0..c.len())].as_str()
            })
            .collect();
        let set = &self.set;
        let sel = Tensor::from_slice(&idx).to_device(set.images.device());
        let (x, w, l) = (
            set.images.index_select(0, &sel),
            set.w.index_select(0, &sel),
            set.labels.index_select(0, &sel),
        );
        let m = set.masks.as_ref().map(|m| m.index_select(0, &sel));
        let ex = Example {
            images: &x,
            w: &w,
            captions,
            labels: &l,
            masks: m.as_ref(),
            class_means: set.class_means.as_ref(),
        };
        let terms = loss_terms(&self.recipe, &self.nets, &ex)?;
        let total = total_loss(&terms).ok_or_else(|| {
            anyhow::anyhow!("every loss weight of this method is 0: nothing to train")
        })?;
        self.bert_opt.zero_grad();
        self.head_opt.zero_grad();
        total.backward();
        self.bert_opt.step();
        self.head_opt.step();
        let mut metrics: Vec<(String, f64)> = terms
            .iter()
            .map(|(k, _, t)| (format!("loss/{k}"), t.double_value(&[])))
            .collect();
        metrics.push(("loss/total".into(), total.double_value(&[])));
        Ok(metrics)
    }

    fn run_task(
        &mut self,
        task: Task,
        step: i64,
        reporter: &mut dyn Reporter,
    ) -> anyhow::Result<()> {
        match task {
            Task::Evaluate => self.ctx.evaluate(self.cfg.method, step, reporter),
            Task::Checkpoint => self
                .saver
                .save(step, &self.bert_opt, &self.head_opt, reporter),
            Task::Samples => Ok(()),
        }
    }

    fn progress_shows(&self, metric: &str) -> bool {
        metric == "loss/total"
    }
}

/// Runs `evaluate`: loads the checkpoint's networks and reports the benchmark at its step.
pub fn evaluate(
    cfg: &EvaluateConfig,
    device: Device,
    reporter: &mut dyn Reporter,
) -> anyhow::Result<Outcome> {
    let ckpt = Checkpoint::load(&cfg.checkpoint)?;
    ckpt.expect_kind("train-text")?;
    let text: TextConfig = serde_json::from_str(ckpt.meta("job.config")?)?;
    let ctx = TextContext::load(
        &text,
        cfg.judge.as_deref(),
        cfg.edits.unwrap_or(text.eval_edits),
        device,
    )?;
    anyhow::ensure!(
        ckpt.meta("text.generator")? == ctx.fingerprint,
        "{}: the generator at {} changed since this checkpoint was trained",
        cfg.checkpoint.display(),
        text.generator.display()
    );
    ctx.enc.restore_from(&ckpt)?;
    ckpt.restore("heads.", &named_vars(&ctx.heads.vs))?;
    reporter.log(&format!(
        "evaluate {:?} checkpoint {} (step {}) on {} edit requests",
        text.method,
        cfg.checkpoint.display(),
        ckpt.step,
        ctx.reqs.len()
    ));
    ctx.evaluate(text.method, ckpt.step, reporter)?;
    reporter.finish(&format!("evaluated step {}", ckpt.step));
    Ok(Outcome::Completed { step: ckpt.step })
}

/// M0: the class mean of the training styles for every attribute value (a value no training
/// example has gets the overall mean, i.e. no direction), then the step size among
/// `cfg.alphas` whose edits of the training split the critic scores best (harmonic mean of
/// edit success and attribute preservation; the judge never sees this choice).
fn fit_linear_directions(
    ctx: &TextContext,
    cfg: &TextConfig,
    w: &Tensor,
    labels: &Tensor,
    sources: &[Source],
    reporter: &mut dyn Reporter,
) -> anyhow::Result<()> {
    let means = class_means(w, labels);
    let reqs = requests(&ctx.ds, sources, cfg.eval_edits, cfg.seed ^ 0xA1FA)?;
    let mut best = (f64::NEG_INFINITY, cfg.alphas[0]);
    for &alpha in &cfg.alphas {
        ctx.heads.set_directions(&means, alpha)?;
        let result = run_benchmark(
            Method::LinearDirections,
            &ctx.nets(),
            &ctx.critic,
            &ctx.ds,
            &ctx.styles_w,
            &reqs,
            None,
        )?;
        let get = |k: &str| {
            result
                .metrics
                .iter()
                .find(|(name, _)| name == k)
                .map_or(0.0, |(_, v)| *v)
        };
        let (success, preservation) = (get("eval/edit_success"), get("eval/attr_preservation"));
        let score = harmonic(&[success, preservation]);
        reporter.log(&format!(
            "linear-directions alpha {alpha}: on {} training-split edits the critic reads edit_success {success:.3}, attr_preservation {preservation:.3}",
            reqs.len()
        ));
        if score > best.0 {
            best = (score, alpha);
        }
    }
    ctx.heads.set_directions(&means, best.1)?;
    reporter.metrics(1, &[("m0/alpha", best.1)])?;
    reporter.log(&format!("linear-directions: alpha {} chosen", best.1));
    Ok(())
}
