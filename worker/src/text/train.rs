//! Job `train-text`: trains BERT and the style heads with one method's recipe against the
//! frozen generator, and runs the edit benchmark periodically (so eval curves exist).

use super::benchmark::{
    captions_of, check_vocabulary, critic_parts, dataset_sources, harmonic, requests,
    run_benchmark, Source,
};
use super::bert::{default_model_dir, TextEncoder, UNSTORED_BERT_KEY};
use super::losses::{loss_terms, total_loss, Example, Recipe};
use super::methods::{EditSpec, Method, Nets, StyleHeads};
use crate::dataset::OpenDataset;
use crate::dataset::Partition;
use crate::job::{step_loop, Cadence, CancelToken, Outcome, Reporter, Task, TrainingJob};
use crate::judge::fid::Gaussian;
use crate::nn::adam::Adam;
use crate::nn::checkpoint::{self, Checkpoint};
use crate::nn::{named_vars, trainable_vars};
use crate::stylegan::scoring::real_features;
use crate::styles::{load_frozen_generator, render_styles, Styles};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

pub use plume_jobs::{EvaluateConfig, TextConfig};

/// Everything a text job reads besides the trained networks' state: data, the frozen
/// generator and judges, BERT, fresh heads, and the benchmark's fixed requests.
pub struct TextContext {
    ds: crate::dataset::Dataset,
    fingerprint: String,
    g: crate::stylegan::generator::Generator,
    _g_vs: tch::nn::VarStore,
    styles_w: Tensor,
    style_rows: Vec<i64>,
    /// Sampled styles only: the critic's attribute values of each row.
    sampled: Option<Vec<Vec<usize>>>,
    critic: crate::judge::train::Trained,
    judge: crate::judge::train::Trained,
    bert_dir: PathBuf,
    enc: TextEncoder,
    heads: StyleHeads,
    reqs: Vec<super::benchmark::EditRequest>,
    test_features: Gaussian,
}

impl TextContext {
    /// Loads what `cfg` names; `judge` overrides the config's judge checkpoint (evaluate).
    pub fn load(
        cfg: &TextConfig,
        judge_override: Option<&Path>,
        eval_edits: usize,
        device: Device,
    ) -> anyhow::Result<TextContext> {
        let ds = cfg.dataset.open()?;
        check_vocabulary(&ds)?;
        let (fingerprint, g_vs, g) = load_frozen_generator(&cfg.generator, device)?;
        let styles = Styles::load(&cfg.styles, &fingerprint)?;
        let styles_w = styles.w.to_device(device);
        let critic = crate::judge::train::load(&cfg.judge, "critic", device)?;
        let judge =
            crate::judge::train::load(judge_override.unwrap_or(&cfg.judge), "judge", device)?;
        let bert_dir =
            cfg.bert.clone().or_else(default_model_dir).ok_or_else(|| {
                anyhow::anyhow!("no BERT weights: set `bert:` or run scripts/setup")
            })?;
        let enc = TextEncoder::load(&bert_dir, device, cfg.max_tokens)?;
        enc.freeze_lower_layers(cfg.freeze_layers);
        tch::manual_seed(cfg.seed as i64);
        let heads = StyleHeads::for_method(
            cfg.method,
            device,
            enc.bert.config.hidden_size,
            g.cfg.w_dim,
            Some(&critic),
            EditSpec::from(cfg),
        )?;
        // Style row of every dataset image (-1 where the styles file has none).
        let mut style_rows = vec![-1i64; ds.images.len()];
        for (row, &i) in Vec::<i64>::try_from(&styles.index)?.iter().enumerate() {
            if (0..ds.images.len() as i64).contains(&i) {
                style_rows[i as usize] = row as i64;
            }
        }
        let sampled: Option<Vec<Vec<usize>>> = match &styles.labels {
            Some(l) => {
                let n = l.size()[0];
                let flat = Vec::<i64>::try_from(&l.flatten(0, -1))?;
                let g = ds.groups.len();
                anyhow::ensure!(
                    n >= 2,
                    "sampled styles: at least 2 rows are needed, got {n}"
                );
                Some(
                    flat.chunks(g)
                        .map(|r| r.iter().map(|&v| v.max(0) as usize).collect())
                        .collect(),
                )
            }
            None => None,
        };
        let sources: Vec<Source> = match &sampled {
            None => dataset_sources(&ds, &style_rows, Partition::Test),
            Some(labels) => (sampled_split(labels.len())..labels.len())
                .map(|r| Source {
                    image: None,
                    style_row: r as i64,
                    values: labels[r].clone(),
                })
                .collect(),
        };
        let reqs = requests(&ds, &sources, eval_edits, cfg.seed ^ 0xED17)?;
        let test = ds.partition(Partition::Test);
        let test_features = Gaussian::fit(&real_features(
            &judge,
            &ds.load_images(&test, g.cfg.resolution)?.to_device(device),
        ));
        Ok(TextContext {
            ds,
            fingerprint,
            g,
            _g_vs: g_vs,
            styles_w,
            style_rows,
            sampled,
            critic,
            judge,
            bert_dir,
            enc,
            heads,
            reqs,
            test_features,
        })
    }

    fn nets(&self) -> Nets<'_> {
        Nets {
            enc: &self.enc,
            heads: &self.heads,
            g: &self.g,
            critic: Some(&self.critic),
        }
    }

    /// Runs the edit benchmark and reports its metrics and gallery at `step`.
    fn evaluate(
        &self,
        method: Method,
        step: i64,
        reporter: &mut dyn Reporter,
    ) -> anyhow::Result<()> {
        let result = run_benchmark(
            method,
            &self.nets(),
            &self.judge,
            &self.ds,
            &self.styles_w,
            &self.reqs,
            Some(&self.test_features),
        )?;
        let named: Vec<(&str, f64)> = result
            .metrics
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        reporter.metrics(step, &named)?;
        reporter.artifact(step, "edits", &result.gallery_png)?;
        reporter.log(&format!(
            "step {step}: {}",
            result
                .metrics
                .iter()
                .map(|(k, v)| format!("{k}={v:.4}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        Ok(())
    }
}

/// Runs `train-text`.
pub fn run(
    cfg: &TextConfig,
    resume: Option<&Path>,
    device: Device,
    reporter: &mut dyn Reporter,
    cancel: &CancelToken,
) -> anyhow::Result<Outcome> {
    let ctx = TextContext::load(cfg, None, cfg.eval_edits, device)?;
    let (ds, g, enc, heads) = (&ctx.ds, &ctx.g, &ctx.enc, &ctx.heads);
    let fingerprint = &ctx.fingerprint;
    let bert_dir = &ctx.bert_dir;
    let style_rows = &ctx.style_rows;
    let mut bert_opt = Adam::new(trainable_vars(&enc.vs), cfg.lr_bert, 0.9, 0.999, 1e-8);
    let mut head_opt = Adam::new(trainable_vars(&heads.vs), cfg.lr_heads, 0.9, 0.999, 1e-8);
    // Training examples, their part masks (drawn ones, or the critic's segmentation of G(w);
    // only the unedited-region loss reads them), and the same examples as edit sources (M0
    // chooses its step size on them).
    let needs_masks = cfg.losses.unedited_region > 0.0
        && matches!(
            cfg.method,
            Method::Weighted | Method::Contrastive | Method::VisualGrounding
        );
    let (images, labels, w_train, train_captions, masks, train_sources) = match &ctx.sampled {
        None => {
            let train: Vec<usize> = ds
                .partition(Partition::Train)
                .into_iter()
                .filter(|&i| style_rows[i] >= 0 && !ds.captions[i].is_empty())
                .collect();
            anyhow::ensure!(
                train.len() >= 2,
                "only {} training images have styles and captions",
                train.len()
            );
            let images = ds.load_images(&train, g.cfg.resolution)?.to_device(device);
            let labels = ds.label_tensor(&train).to_device(device);
            let rows =
                Tensor::from_slice(&train.iter().map(|&i| style_rows[i]).collect::<Vec<_>>())
                    .to_device(device);
            let w = ctx.styles_w.index_select(0, &rows).select(1, 0);
            let captions: Vec<Vec<String>> =
                train.iter().map(|&i| ds.captions[i].clone()).collect();
            let masks = match needs_masks {
                true => ds
                    .load_masks(&train, g.cfg.resolution)?
                    .map(|m| m.to_device(device)),
                false => None,
            };
            let sources = dataset_sources(ds, style_rows, Partition::Train);
            (images, labels, w, captions, masks, sources)
        }
        // Sampled styles: the first 90% train (images G(w), captions from the templates of
        // the critic's labels); the rest are the benchmark's sources.
        Some(values) => {
            let n = sampled_split(values.len()) as i64;
            let w = ctx.styles_w.narrow(0, 0, n);
            let images = Tensor::cat(
                &(0..n)
                    .step_by(64)
                    .map(|k| render_styles(g, &w.narrow(0, k, 64.min(n - k)), 0x7EA1 ^ k as u64))
                    .collect::<Vec<_>>(),
                0,
            );
            let flat: Vec<i64> = values[..n as usize]
                .iter()
                .flat_map(|r| r.iter().map(|&v| v as i64))
                .collect();
            let labels = Tensor::from_slice(&flat)
                .view([n, ds.groups.len() as i64])
                .to_device(device);
            let captions = values[..n as usize]
                .iter()
                .map(|v| captions_of(v))
                .collect();
            let masks = match needs_masks {
                true => Some(
                    Tensor::cat(
                        &(0..n)
                            .step_by(256)
                            .map(|k| {
                                critic_parts(&ctx.critic, &images.narrow(0, k, 256.min(n - k)))
                            })
                            .collect::<anyhow::Result<Vec<_>>>()?,
                        0,
                    )
                    .to_device(device),
                ),
                false => None,
            };
            let sources = (0..n as usize)
                .map(|r| Source {
                    image: None,
                    style_row: r as i64,
                    values: values[r].clone(),
                })
                .collect();
            (images, labels, w.select(1, 0), captions, masks, sources)
        }
    };

    let mut step = 0;
    if let Some(path) = resume {
        let ckpt = Checkpoint::load(path)?;
        ckpt.expect_kind("train-text")?;
        ckpt.expect_resume_state()?;
        enc.restore_from(&ckpt)?;
        ckpt.restore("heads.", &named_vars(&heads.vs))?;
        bert_opt.restore(&ckpt, "bert.opt.")?;
        head_opt.restore(&ckpt, "heads.opt.")?;
        step = ckpt.step;
    }
    let recipe = Recipe::from(cfg);
    reporter.log(&format!("train-text {:?} on {device:?}: {} training examples with styles{}, {} edit requests, steps {step}..{}", cfg.method, train_captions.len(), if ctx.sampled.is_some() { " (sampled)" } else { "" }, ctx.reqs.len(), cfg.steps));
    let nets = ctx.nets();
    let evaluate =
        |step: i64, reporter: &mut dyn Reporter| ctx.evaluate(cfg.method, step, reporter);
    // The BERT weights training changes (none for M0, which never steps BERT); checkpoints
    // store only these, and the fingerprint of the rest, which `bert_dir` supplies.
    let stored_bert = if cfg.method == Method::LinearDirections {
        Vec::new()
    } else {
        trainable_vars(&enc.vs)
    };
    let unstored_bert = enc.unstored_fingerprint(&stored_bert);
    let save = |step: i64,
                bert_opt: &Adam,
                head_opt: &Adam,
                reporter: &mut dyn Reporter|
     -> anyhow::Result<()> {
        let mut weights = checkpoint::prefixed("bert.", &stored_bert);
        weights.extend(checkpoint::prefixed("heads.", &named_vars(&heads.vs)));
        let mut state = checkpoint::prefixed("bert.opt.", &bert_opt.state());
        state.extend(checkpoint::prefixed("heads.opt.", &head_opt.state()));
        let mut meta = BTreeMap::new();
        meta.insert("text.generator".into(), fingerprint.clone());
        meta.insert("text.bert_dir".into(), bert_dir.display().to_string());
        meta.insert(UNSTORED_BERT_KEY.into(), unstored_bert.clone());
        meta.insert("job.config".into(), serde_json::to_string(cfg)?);
        let path = reporter.checkpoint_path(step)?;
        checkpoint::save(
            &path,
            "train-text",
            step,
            &meta,
            &checkpoint::Parts { weights, state },
        )?;
        reporter.checkpoint_written(step, &path)
    };
    if cfg.method == Method::LinearDirections {
        // M0 is fitted in closed form, in one step (`steps` does not apply).
        fit_linear_directions(&ctx, cfg, &w_train, &labels, &train_sources, reporter)?;
        evaluate(1, reporter)?;
        save(1, &bert_opt, &head_opt, reporter)?;
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
        cfg,
        recipe,
        nets,
        bert_opt,
        head_opt,
        train_captions: &train_captions,
        images,
        w_train,
        labels,
        masks,
        save: &save,
        evaluate: &evaluate,
    };
    step_loop(&mut job, step, &cadence, reporter, cancel)
}

/// Writes a checkpoint from the BERT and head optimizers' state.
type SaveText<'a> = &'a dyn Fn(i64, &Adam, &Adam, &mut dyn Reporter) -> anyhow::Result<()>;

/// `train-text` as the step loop drives it.
struct TextTraining<'a> {
    cfg: &'a TextConfig,
    recipe: Recipe,
    nets: Nets<'a>,
    bert_opt: Adam,
    head_opt: Adam,
    /// Per training example: its captions, one drawn per step.
    train_captions: &'a [Vec<String>],
    images: Tensor,
    w_train: Tensor,
    labels: Tensor,
    masks: Option<Tensor>,
    save: SaveText<'a>,
    evaluate: &'a dyn Fn(i64, &mut dyn Reporter) -> anyhow::Result<()>,
}

impl TrainingJob for TextTraining<'_> {
    fn train_step(&mut self, _step: i64, seed: u64) -> anyhow::Result<Vec<(String, f64)>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let idx: Vec<i64> = (0..self.cfg.batch)
            .map(|_| rng.random_range(0..self.train_captions.len() as i64))
            .collect();
        let captions: Vec<&str> = idx
            .iter()
            .map(|&k| {
                let c = &self.train_captions[k as usize];
                c[rng.random_range(0..c.len())].as_str()
            })
            .collect();
        let sel = Tensor::from_slice(&idx).to_device(self.images.device());
        let (x, w, l) = (
            self.images.index_select(0, &sel),
            self.w_train.index_select(0, &sel),
            self.labels.index_select(0, &sel),
        );
        let m = self.masks.as_ref().map(|m| m.index_select(0, &sel));
        let ex = Example {
            images: &x,
            w: &w,
            captions,
            labels: &l,
            masks: m.as_ref(),
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
            Task::Evaluate => (self.evaluate)(step, reporter),
            Task::Checkpoint => (self.save)(step, &self.bert_opt, &self.head_opt, reporter),
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
    use crate::dataset::vocab::Group;
    let overall = w.mean_dim(0, false, None);
    let mut means = Vec::new();
    for (g, group) in Group::ALL.iter().enumerate() {
        let column = labels.select(1, g as i64);
        for v in 0..group.values().len() {
            let rows = column.eq(v as i64).nonzero().squeeze_dim(1);
            means.push(if rows.size()[0] == 0 {
                overall.shallow_clone()
            } else {
                w.index_select(0, &rows).mean_dim(0, false, None)
            });
        }
    }
    let means = Tensor::stack(&means, 0);
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

/// Rows of sampled styles that train; the rest (a tenth, at least one) are benchmark sources.
fn sampled_split(rows: usize) -> usize {
    rows - (rows / 10).max(1)
}
