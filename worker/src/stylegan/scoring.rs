//! How a generator is scored while it trains and after: its samples read by the judge
//! (judge-FID, precision/recall, colour coverage, facing; the metrics themselves are in
//! `metrics`), and the sample grid people look at. `pretrain-generator` reports these at every
//! eval; the diagnostics in `worker/examples/` score other generators with the same code.

use super::generator::Generator;
use super::metrics;
use crate::judge::fid::{frechet_distance, Gaussian};
use crate::nn::layers::resize_square;
use tch::{Device, Tensor};

/// Generates `n` images with `g` from its prior under a fixed seed, in batches, clamped to
/// [-1, 1].
pub fn generated_images(g: &Generator, n: i64, seed: u64, device: Device) -> Tensor {
    tch::no_grad(|| {
        let inputs = g.prior_inputs(n, seed, device);
        let images: Vec<Tensor> = (0..n)
            .step_by(100)
            .map(|s| {
                g.generate(&inputs.narrow(0, s, 100.min(n - s)), 1.0)
                    .clamp(-1.0, 1.0)
            })
            .collect();
        Tensor::cat(&images, 0)
    })
}

/// The judge, and what it reads of the test images once per job.
pub struct JudgeForMetrics {
    net: crate::judge::train::Trained,
    fid_reference: Gaussian,
    test_reading: Option<metrics::Reading>,
}

impl JudgeForMetrics {
    /// The data as the judge reads it, as one log line: training images scored against the
    /// test images exactly as samples are, the ceiling a generator is measured against. None
    /// when the metrics beyond FID are off.
    pub fn data_ceiling(
        &self,
        train_images: &Tensor,
        groups: &[crate::dataset::AttributeGroup],
    ) -> Option<String> {
        let real = self.test_reading.as_ref()?;
        let n = real.values.size()[0].min(train_images.size()[0]);
        let train_reading = metrics::read(&self.net, &train_images.narrow(0, 0, n));
        let (precision, recall) =
            metrics::precision_recall(&real.embedding, &train_reading.embedding);
        let mut summary = vec![
            format!("gen/precision = {precision:.3}"),
            format!("gen/recall = {recall:.3}"),
        ];
        summary.extend(
            generator_metrics(real, real, groups)
                .into_iter()
                .filter(|(k, _)| {
                    k == "gen/colours_min" || k == "gen/top_share_max" || k == "gen/facing_right"
                })
                .map(|(k, v)| format!("{k} = {v:.3}")),
        );
        Some(format!(
            "the data as the judge reads it ({} test images; precision and recall of as many training images against them): {}",
            real.values.size()[0],
            summary.join(", ")
        ))
    }

    /// Reads the test images once: all of them for FID, the first `metric_images` for the
    /// other metrics (none when 0).
    pub fn new(
        net: crate::judge::train::Trained,
        test_images: &Tensor,
        metric_images: i64,
    ) -> JudgeForMetrics {
        let reading = metrics::read(&net, test_images);
        JudgeForMetrics {
            fid_reference: Gaussian::fit(&reading.embedding),
            test_reading: (metric_images > 0).then(|| reading.first(metric_images)),
            net,
        }
    }

    /// Judge-FID over `fid_images` samples of `g` and [`generator_metrics`] over
    /// `metric_images`, from fixed latents (`seed`): what `pretrain-generator` reports.
    #[allow(clippy::too_many_arguments)]
    pub fn score(
        &self,
        g: &Generator,
        fid_images: i64,
        metric_images: i64,
        seed: u64,
        groups: &[crate::dataset::AttributeGroup],
        device: Device,
    ) -> Vec<(String, f64)> {
        let n = fid_images.max(metric_images);
        self.score_images(&generated_images(g, n, seed, device), fid_images, groups)
    }

    /// Judge-FID over the first `fid_images` of `fake` and [`generator_metrics`] over all of
    /// them: the same scores for images from any source (a probe's other generator, say).
    pub fn score_images(
        &self,
        fake: &Tensor,
        fid_images: i64,
        groups: &[crate::dataset::AttributeGroup],
    ) -> Vec<(String, f64)> {
        self.score_reading(&self.read(fake), fid_images, groups)
    }

    /// The judge's reading of `images` (`[N, 3, R, R]` in [-1, 1]).
    pub fn read(&self, images: &Tensor) -> metrics::Reading {
        metrics::read(&self.net, images)
    }

    /// [`JudgeForMetrics::score_images`] for images the judge has already read.
    pub fn score_reading(
        &self,
        fake: &metrics::Reading,
        fid_images: i64,
        groups: &[crate::dataset::AttributeGroup],
    ) -> Vec<(String, f64)> {
        let fid = frechet_distance(
            &self.fid_reference,
            &Gaussian::fit(&fake.embedding.narrow(0, 0, fid_images)),
        );
        let mut values = vec![("gen/judge_fid".to_string(), fid)];
        if let Some(real) = &self.test_reading {
            values.extend(generator_metrics(fake, real, groups));
        }
        values
    }
}

/// Precision/recall, per-group coverage and top share, their summaries over the colour
/// groups (`gen/colours_min`: the fewest colours any colour group shows; `gen/top_share_max`:
/// the largest share one colour takes in any colour group) and the facing balance.
pub fn generator_metrics(
    fake: &metrics::Reading,
    real: &metrics::Reading,
    groups: &[crate::dataset::AttributeGroup],
) -> Vec<(String, f64)> {
    let (precision, recall) = metrics::precision_recall(&real.embedding, &fake.embedding);
    let mut out = vec![
        ("gen/precision".to_string(), precision),
        ("gen/recall".to_string(), recall),
    ];
    let (mut colours_min, mut top_share_max) = (f64::INFINITY, 0f64);
    for (g, group) in groups.iter().enumerate() {
        let c = metrics::group_coverage(fake, g as i64, group.values.len());
        out.push((format!("gen/coverage/{}", group.name), c.covered as f64));
        out.push((format!("gen/top_share/{}", group.name), c.top_share));
        if group.name.ends_with("_color") {
            colours_min = colours_min.min(c.covered as f64);
            top_share_max = top_share_max.max(c.top_share);
        }
    }
    if colours_min.is_finite() {
        out.push(("gen/colours_min".into(), colours_min));
        out.push(("gen/top_share_max".into(), top_share_max));
    }
    if let Some(f) = metrics::facing_share(fake) {
        out.push(("gen/facing_right".into(), f));
    }
    out
}

/// Embeds real images with the judge in batches.
pub fn real_features(judge: &crate::judge::train::Trained, images: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let n = images.size()[0];
        let feats: Vec<Tensor> = (0..n)
            .step_by(256)
            .map(|s| {
                judge
                    .net
                    .forward(&resize_square(
                        &images.narrow(0, s, 256.min(n - s)),
                        judge.resolution,
                    ))
                    .embedding
            })
            .collect();
        Tensor::cat(&feats, 0)
    })
}

/// The sample grid: 4 rows without truncation, 4 rows at psi = 0.7, from fixed z.
pub fn sample_grid(g: &Generator, device: Device) -> Vec<u8> {
    tch::no_grad(|| {
        let z = g.prior_inputs(32, 20_240_601, device);
        let a = g.generate(&z, 1.0);
        let b = g.generate(&z, 0.7);
        let all = Tensor::cat(&[a, b], 0).clamp(-1.0, 1.0);
        let labels: Vec<String> = (0..8)
            .map(|r| {
                if r < 4 {
                    "psi 1.0".to_string()
                } else {
                    "psi 0.7".to_string()
                }
            })
            .collect();
        crate::picture::image_grid(&all, 8, (128 / g.cfg.resolution).max(1), &labels).to_png()
    })
}
