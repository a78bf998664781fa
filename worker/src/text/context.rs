//! What a text job reads besides the trained networks' state (`TextContext`): the data, the
//! frozen generator and judges, BERT, fresh heads, and the benchmark's fixed requests.

use super::benchmark::{check_vocabulary, dataset_sources, requests, run_benchmark, Source};
use super::bert::{default_model_dir, TextEncoder};
use super::methods::{Method, Nets, StyleHeads};
use super::train::TextConfig;
use crate::dataset::{Dataset, OpenDataset, Partition};
use crate::job::Reporter;
use crate::judge::fid::Gaussian;
use crate::stylegan::scoring::real_features;
use crate::styles::{load_frozen_generator, Styles};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// Everything a text job reads besides the trained networks' state: data, the frozen
/// generator and judges, BERT, fresh heads, and the benchmark's fixed requests.
pub struct TextContext {
    pub(super) ds: crate::dataset::Dataset,
    pub(super) fingerprint: String,
    pub(super) g: crate::stylegan::generator::Generator,
    pub(super) _g_vs: tch::nn::VarStore,
    pub(super) styles_w: Tensor,
    pub(super) style_rows: Vec<i64>,
    /// Sampled styles only: the critic's attribute values of each row.
    pub(super) sampled: Option<Vec<Vec<usize>>>,
    pub(super) critic: crate::judge::train::Trained,
    pub(super) judge: crate::judge::train::Trained,
    pub(super) bert_dir: PathBuf,
    pub(super) enc: TextEncoder,
    pub(super) heads: StyleHeads,
    pub(super) reqs: Vec<super::benchmark::EditRequest>,
    pub(super) test_features: Gaussian,
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
        let heads = StyleHeads::for_config(cfg, &enc, g.cfg.w_dim, &critic, device)?;
        let style_rows = style_rows(&ds, &styles)?;
        let sampled = sampled_values(&ds, &styles)?;
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

    pub(super) fn nets(&self) -> Nets<'_> {
        Nets {
            enc: &self.enc,
            heads: &self.heads,
            g: &self.g,
            critic: Some(&self.critic),
        }
    }

    /// Runs the edit benchmark and reports its metrics and gallery at `step`.
    pub(super) fn evaluate(
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

/// The style row of every dataset image (-1 where the styles file has none).
fn style_rows(ds: &Dataset, styles: &Styles) -> anyhow::Result<Vec<i64>> {
    let mut rows = vec![-1i64; ds.images.len()];
    for (row, &i) in Vec::<i64>::try_from(&styles.index)?.iter().enumerate() {
        if (0..ds.images.len() as i64).contains(&i) {
            rows[i as usize] = row as i64;
        }
    }
    Ok(rows)
}

/// Sampled styles only: the critic's attribute values of each row.
fn sampled_values(ds: &Dataset, styles: &Styles) -> anyhow::Result<Option<Vec<Vec<usize>>>> {
    let Some(l) = &styles.labels else {
        return Ok(None);
    };
    let n = l.size()[0];
    anyhow::ensure!(
        n >= 2,
        "sampled styles: at least 2 rows are needed, got {n}"
    );
    let flat = Vec::<i64>::try_from(&l.flatten(0, -1))?;
    Ok(Some(
        flat.chunks(ds.groups.len())
            .map(|r| r.iter().map(|&v| v.max(0) as usize).collect())
            .collect(),
    ))
}

/// Rows of sampled styles that train; the rest (a tenth, at least one) are benchmark sources.
pub(super) fn sampled_split(rows: usize) -> usize {
    rows - (rows / 10).max(1)
}
