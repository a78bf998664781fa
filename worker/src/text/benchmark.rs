//! The edit benchmark (ml.md section 6): a fixed, seeded list of edit requests on test images,
//! each changing exactly one attribute in the caption, scored by the judge (never used in a
//! loss). Needs a dataset with the synthetic-birds vocabulary (captions are rebuilt from
//! attributes) and part masks.

use super::methods::{edit_images, Method, Nets};
use crate::dataset::render::BirdAttributes;
use crate::dataset::synth::caption;
use crate::dataset::vocab::{Group, PHRASINGS};
use crate::dataset::{Dataset, Partition};
use crate::judge::fid::{frechet_distance, Gaussian};
use crate::judge::train::Trained;
use crate::nn::layers::resize_square;
use crate::picture::{tensor_to_rgb, Canvas, CHAR_W};
use crate::stylegan::scoring::real_features;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

/// One request: change `group` of dataset image `image` to `new_value`.
#[derive(Debug, Clone)]
pub struct EditRequest {
    /// Dataset index of the source image; `None` for a sampled style, whose source image
    /// is G(w) itself.
    pub image: Option<usize>,
    /// Row of the image in the styles.
    pub style_row: i64,
    /// Index into `Group::ALL`.
    pub group: usize,
    /// The value before.
    pub old_value: usize,
    /// The value asked for.
    pub new_value: usize,
    /// The caption describing the source.
    pub source_caption: String,
    /// The same phrasing with the one attribute changed.
    pub target_caption: String,
}

/// Placeholder naming a group in the phrasings.
fn slot(group: Group) -> &'static str {
    match group {
        Group::BreastColour => "{breast}",
        Group::WingColour => "{wing}",
        Group::CrownColour => "{crown}",
        Group::UpperpartsColour => "{upper}",
        Group::BillLength => "{bill}",
        Group::Size => "{size}",
        Group::Background => "{bg}",
    }
}

fn attributes_from(values: &[usize]) -> BirdAttributes {
    BirdAttributes {
        breast: values[0],
        wing: values[1],
        crown: values[2],
        upper: values[3],
        bill: values[4],
        size: values[5],
        background: values[6],
    }
}

/// Checks the dataset speaks the synthetic-birds vocabulary (the benchmark rebuilds captions).
pub fn check_vocabulary(ds: &Dataset) -> anyhow::Result<()> {
    let names: Vec<&str> = ds.groups.iter().map(|g| g.name.as_str()).collect();
    let want: Vec<&str> = Group::ALL.iter().map(|g| g.cub_name()).collect();
    anyhow::ensure!(names == want, "the edit benchmark needs the synthetic-birds attribute groups {want:?}; this dataset has {names:?}");
    Ok(())
}

/// A source an edit request may start from: a dataset image or a sampled style.
#[derive(Debug, Clone)]
pub struct Source {
    /// Dataset index (`None`: the style was sampled; its image is G(w)).
    pub image: Option<usize>,
    /// Row in the styles.
    pub style_row: i64,
    /// Attribute values (index per group of `Group::ALL`).
    pub values: Vec<usize>,
}

/// The sources of dataset mode: images of `partition` that have styles and full labels.
/// `style_rows[i]` is the styles row of dataset image i (or -1).
pub fn dataset_sources(ds: &Dataset, style_rows: &[i64], partition: Partition) -> Vec<Source> {
    ds.partition(partition)
        .into_iter()
        .filter(|&i| {
            style_rows.get(i).is_some_and(|&r| r >= 0) && ds.labels[i].iter().all(|&v| v >= 0)
        })
        .map(|i| Source {
            image: Some(i),
            style_row: style_rows[i],
            values: ds.labels[i].iter().map(|&v| v as usize).collect(),
        })
        .collect()
}

/// Every caption the templates give a bird with these attribute values.
pub fn captions_of(values: &[usize]) -> Vec<String> {
    let attrs = attributes_from(values);
    PHRASINGS.iter().map(|p| caption(p, &attrs)).collect()
}

/// The fixed request list: `count` requests on `sources`, seeded.
pub fn requests(
    ds: &Dataset,
    sources: &[Source],
    count: usize,
    seed: u64,
) -> anyhow::Result<Vec<EditRequest>> {
    check_vocabulary(ds)?;
    anyhow::ensure!(
        !sources.is_empty(),
        "no test image has styles: run `invert` over the test split too"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let source = sources.choose(&mut rng).expect("non-empty");
        let values = &source.values;
        // Edit the attributes a caption can name and the judge can see: the four colours.
        let group = rng.random_range(0..4);
        let n_values = Group::ALL[group].values().len();
        let new_value = (values[group] + rng.random_range(1..n_values)) % n_values;
        let phrasings: Vec<&str> = PHRASINGS
            .iter()
            .copied()
            .filter(|p| p.contains(slot(Group::ALL[group])))
            .collect();
        let phrasing = *phrasings
            .choose(&mut rng)
            .expect("every colour group has phrasings");
        let mut changed = values.clone();
        changed[group] = new_value;
        out.push(EditRequest {
            image: source.image,
            style_row: source.style_row,
            group,
            old_value: values[group],
            new_value,
            source_caption: caption(phrasing, &attributes_from(values)),
            target_caption: caption(phrasing, &attributes_from(&changed)),
        });
    }
    Ok(out)
}

/// Benchmark results.
pub struct BenchmarkResult {
    /// `(metric name, value)` in report order: the headline metrics, then edit success per
    /// edited group (`eval/edit_success/<group>`).
    pub metrics: Vec<(String, f64)>,
    /// The edit gallery (source | reconstruction | edited, with the requested change).
    pub gallery_png: Vec<u8>,
}

/// Harmonic mean (0 when any value is 0): high only when every value is.
pub fn harmonic(values: &[f64]) -> f64 {
    if values.iter().any(|&v| v <= 0.0) {
        return 0.0;
    }
    values.len() as f64 / values.iter().map(|v| 1.0 / v).sum::<f64>()
}

/// Part labels `[B, R, R]` (on the CPU) of generated images by the critic's segmentation
/// head, at the images' resolution.
pub fn critic_parts(critic: &Trained, images: &Tensor) -> anyhow::Result<Tensor> {
    let res = images.size()[2];
    tch::no_grad(|| {
        let logits = critic
            .net
            .forward(&resize_square(images, critic.resolution))
            .part_logits
            .ok_or_else(|| anyhow::anyhow!("this critic has no part segmentation head"))?;
        Ok(logits
            .upsample_nearest2d([res, res], None, None)
            .argmax(1, false)
            .to_device(tch::Device::Cpu))
    })
}

/// Runs the requests through a method and scores them with the judge.
pub fn run_benchmark(
    method: Method,
    nets: &Nets,
    judge: &Trained,
    ds: &Dataset,
    styles_w: &Tensor,
    reqs: &[EditRequest],
    test_features: Option<&Gaussian>,
) -> anyhow::Result<BenchmarkResult> {
    let res = nets.g.cfg.resolution;
    let mut tally = Tally::default();
    let mut edited_all = Vec::new();
    let mut gallery_rows: Vec<(Vec<Tensor>, String)> = Vec::new();
    for (c, chunk) in reqs.chunks(32).enumerate() {
        let (real, masks, w_src) = chunk_sources(nets, ds, styles_w, chunk, c)?;
        let targets: Vec<&str> = chunk.iter().map(|r| r.target_caption.as_str()).collect();
        let sources: Vec<&str> = chunk.iter().map(|r| r.source_caption.as_str()).collect();
        let out =
            tch::no_grad(|| edit_images(method, nets, &w_src, &real, &targets, Some(&sources)))?;
        // The no-op edit: the source's own caption as the target should change nothing.
        let same =
            tch::no_grad(|| edit_images(method, nets, &w_src, &real, &sources, Some(&sources)))?;
        let (edited, source) = (out.edited, out.source);
        let grounding = out.grounding.map(|m| m.to_device(tch::Device::Cpu));
        // Both edits render G(w_src) with the same noise, so one reading of it serves both.
        let (pe, ps) = (
            read_attributes(judge, &edited),
            read_attributes(judge, &source),
        );
        let agree = read_attributes(judge, &same.edited).eq_tensor(&ps);
        tally.identical += agree.sum(Kind::Float).double_value(&[]);
        tally.identical_n += agree.numel() as f64;
        let diff = (&edited - &source)
            .abs()
            .mean_dim(1, false, None)
            .to_device(tch::Device::Cpu)
            / 2.0; // [B, R, R] in [0, 1]
        for (k, r) in chunk.iter().enumerate() {
            let k64 = k as i64;
            let read = Readings {
                edited: &pe,
                source: &ps,
                mask: &masks.get(k64),
                grounding: grounding.as_ref().map(|m| m.get(k64)),
                diff: &diff.get(k64),
            };
            tally.add(r, k64, &read);
            if gallery_rows.len() < 12 {
                let mut cells = vec![
                    real.get(k64).unsqueeze(0).to_device(tch::Device::Cpu),
                    source.get(k64).unsqueeze(0),
                    edited.get(k64).unsqueeze(0),
                ];
                if let Some(map) = &read.grounding {
                    cells.push(map.unsqueeze(0).repeat([1, 3, 1, 1]) * 2.0 - 1.0);
                }
                gallery_rows.push((cells, request_label(r)));
            }
        }
        edited_all.push(edited);
    }
    let mut metrics = tally.metrics(reqs.len() as f64, method);
    if let Some(test_features) = test_features {
        let edited = Tensor::cat(&edited_all, 0);
        let realism = frechet_distance(
            test_features,
            &Gaussian::fit(&real_features(judge, &edited)),
        );
        metrics.push(("eval/realism".to_string(), realism));
    }
    Ok(BenchmarkResult {
        metrics,
        gallery_png: gallery(&gallery_rows, res),
    })
}

/// One chunk's source images, part masks and styles. Dataset sources are real images with
/// drawn part masks; sampled sources are G(w) with the critic's part segmentation.
fn chunk_sources(
    nets: &Nets,
    ds: &Dataset,
    styles_w: &Tensor,
    chunk: &[EditRequest],
    c: usize,
) -> anyhow::Result<(Tensor, Tensor, Tensor)> {
    let (g, device) = (nets.g, styles_w.device());
    let res = g.cfg.resolution;
    let idx: Option<Vec<usize>> = chunk.iter().map(|r| r.image).collect();
    let rows: Vec<i64> = chunk.iter().map(|r| r.style_row).collect();
    let w_rows = styles_w.index_select(0, &Tensor::from_slice(&rows).to_device(device));
    let real = match &idx {
        Some(idx) => ds.load_images(idx, res)?.to_device(device),
        None => crate::styles::render_styles(g, &w_rows.narrow(1, 0, 1), 0x5A3D ^ c as u64),
    };
    let masks = match &idx {
        Some(idx) => ds
            .load_masks(idx, res)?
            .ok_or_else(|| anyhow::anyhow!("the edit benchmark needs part masks"))?,
        None => critic_parts(
            nets.critic.ok_or_else(|| {
                anyhow::anyhow!("sampled sources need the critic's part segmentation")
            })?,
            &real,
        )?,
    };
    Ok((real, masks, w_rows.select(1, 0)))
}

/// The judge's attribute values of images, on the CPU.
fn read_attributes(judge: &Trained, images: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let out = judge.net.forward(&resize_square(images, judge.resolution));
        judge
            .net
            .predict(&out.attr_logits)
            .to_device(tch::Device::Cpu)
    })
}

/// `group: old -> new`, as the gallery writes a request.
fn request_label(r: &EditRequest) -> String {
    let group = Group::ALL[r.group];
    let name = group
        .cub_name()
        .trim_start_matches("has_")
        .replace("_color", "");
    format!(
        "{name}: {} -> {}",
        group.values()[r.old_value],
        group.values()[r.new_value]
    )
}

/// The pointing game's tolerance in pixels at `resolution`: its 15 px at 224 px, scaled
/// (2 px at 32 px), so that a map as coarse as M4's grid of visual tokens can hit a part.
pub fn pointing_tolerance(resolution: i64) -> i64 {
    (15.0 * resolution as f64 / 224.0).round() as i64
}

/// What the benchmark read of one request's edit.
struct Readings<'a> {
    /// The judge's values of the edited images and of G(w_src), `[B, groups]`.
    edited: &'a Tensor,
    source: &'a Tensor,
    /// This source's part mask.
    mask: &'a Tensor,
    /// M4's grounding map of this request.
    grounding: Option<Tensor>,
    /// Mean |edited - source| per pixel, in [0, 1].
    diff: &'a Tensor,
}

/// The benchmark's running counts.
#[derive(Default)]
struct Tally {
    success: f64,
    /// Per group: (edits that reached the value, requests).
    group_success: [(f64, f64); Group::ALL.len()],
    preserved: f64,
    preserved_n: f64,
    /// Per edited group: (other attributes kept, other attributes read).
    group_preserved: [(f64, f64); Group::ALL.len()],
    region: f64,
    pointed: f64,
    pointed_n: f64,
    identical: f64,
    identical_n: f64,
}

impl Tally {
    /// Scores request `r`, row `k` of its chunk.
    fn add(&mut self, r: &EditRequest, k: i64, read: &Readings) {
        self.group_success[r.group].1 += 1.0;
        if read.edited.int64_value(&[k, r.group as i64]) == r.new_value as i64 {
            self.success += 1.0;
            self.group_success[r.group].0 += 1.0;
        }
        for h in 0..read.edited.size()[1] {
            if h != r.group as i64 {
                self.preserved_n += 1.0;
                self.group_preserved[r.group].1 += 1.0;
                if read.edited.int64_value(&[k, h]) == read.source.int64_value(&[k, h]) {
                    self.preserved += 1.0;
                    self.group_preserved[r.group].0 += 1.0;
                }
            }
        }
        let mut inside = read.mask.zeros_like().to_kind(Kind::Bool);
        for &p in Group::ALL[r.group].parts() {
            inside = inside.logical_or(&read.mask.eq(p));
        }
        if let (Some(map), false) = (&read.grounding, Group::ALL[r.group].parts().is_empty()) {
            // Pointing game: the map's peak falls on a part the edit concerns, or within the
            // game's tolerance of one.
            let peak = map.flatten(0, -1).argmax(0, false).int64_value(&[]);
            let t = pointing_tolerance(read.mask.size()[0]);
            let near = inside
                .to_kind(Kind::Float)
                .view([1, 1, read.mask.size()[0], read.mask.size()[1]])
                .max_pool2d([2 * t + 1, 2 * t + 1], [1, 1], [t, t], [1, 1], false);
            self.pointed_n += 1.0;
            if near.flatten(0, -1).double_value(&[peak]) > 0.0 {
                self.pointed += 1.0;
            }
        }
        let outside = inside.logical_not().to_kind(Kind::Float);
        let l1 = (read.diff * &outside).sum(Kind::Float).double_value(&[])
            / outside.sum(Kind::Float).double_value(&[]).max(1.0);
        self.region += 1.0 - l1;
    }

    /// The benchmark's metrics over `n` requests (realism is added by the caller).
    fn metrics(&self, n: f64, method: Method) -> Vec<(String, f64)> {
        let edit_success = self.success / n;
        let attr_preservation = self.preserved / self.preserved_n.max(1.0);
        let region_preservation = self.region / n;
        let score = harmonic(&[edit_success, attr_preservation, region_preservation]);
        let mut metrics = vec![
            ("eval/edit_success".to_string(), edit_success),
            ("eval/attr_preservation".to_string(), attr_preservation),
            ("eval/region_preservation".to_string(), region_preservation),
            ("eval/score".to_string(), score),
            (
                "eval/identity".to_string(),
                self.identical / self.identical_n.max(1.0),
            ),
        ];
        if method == Method::VisualGrounding && self.pointed_n > 0.0 {
            metrics.push(("eval/grounding".to_string(), self.pointed / self.pointed_n));
        }
        for ((group, (hit, n)), (kept, read)) in Group::ALL
            .iter()
            .zip(&self.group_success)
            .zip(&self.group_preserved)
        {
            if *n > 0.0 {
                metrics.push((format!("eval/edit_success/{}", group.cub_name()), hit / n));
            }
            if *read > 0.0 {
                metrics.push((
                    format!("eval/attr_preservation/{}", group.cub_name()),
                    kept / read,
                ));
            }
        }
        metrics
    }
}

/// Rows of source | G(w_src) | edited (| M4's grounding map), each with the requested change
/// written beside it.
fn gallery(rows: &[(Vec<Tensor>, String)], res: u32) -> Vec<u8> {
    let scale = (96 / res).max(1);
    let cell = res * scale;
    let columns = rows.first().map_or(3, |(cells, _)| cells.len()) as u32;
    let text_w = 40 * CHAR_W * 2;
    let row_h = cell + 6;
    let mut canvas = Canvas::new(
        columns * (cell + 4) + text_w + 8,
        14 + rows.len() as u32 * row_h,
        [255, 255, 255],
    );
    let header = if columns > 3 {
        "source | G(w_src) | edited | grounding"
    } else {
        "source | G(w_src) | edited"
    };
    canvas.text(4, 2, header, 2, [40, 40, 40]);
    for (i, (cells, label)) in rows.iter().enumerate() {
        let y = 14 + i as u32 * row_h;
        for (j, img) in cells.iter().enumerate() {
            let rgb = &tensor_to_rgb(img)[0];
            canvas.blit(4 + j as u32 * (cell + 4), y, res, res, rgb, scale);
        }
        canvas.text(
            4 + columns * (cell + 4) + 4,
            y + cell / 2 - 6,
            label,
            2,
            [20, 20, 20],
        );
    }
    canvas.to_png()
}
