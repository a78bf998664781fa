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
    let g = nets.g;
    let res = g.cfg.resolution;
    let device = styles_w.device();
    let mut success = 0f64;
    let mut group_success = vec![(0f64, 0f64); Group::ALL.len()];
    let mut preserved = 0f64;
    let mut preserved_n = 0f64;
    let mut region = 0f64;
    let (mut pointed, mut pointed_n) = (0f64, 0f64);
    let (mut identical, mut identical_n) = (0f64, 0f64);
    let mut edited_all = Vec::new();
    let mut gallery_rows: Vec<(Vec<Tensor>, String)> = Vec::new();
    let groups = ds.groups.len() as i64;
    for (c, chunk) in reqs.chunks(32).enumerate() {
        // Dataset sources are real images with drawn part masks; sampled sources are G(w)
        // with the critic's part segmentation.
        let idx: Option<Vec<usize>> = chunk.iter().map(|r| r.image).collect();
        let rows = Tensor::from_slice(&chunk.iter().map(|r| r.style_row).collect::<Vec<_>>())
            .to_device(device);
        let w_rows = styles_w.index_select(0, &rows);
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
        let w_src = w_rows.select(1, 0);
        let targets: Vec<&str> = chunk.iter().map(|r| r.target_caption.as_str()).collect();
        let sources: Vec<&str> = chunk.iter().map(|r| r.source_caption.as_str()).collect();
        let out =
            tch::no_grad(|| edit_images(method, nets, &w_src, &real, &targets, Some(&sources)))?;
        // The no-op edit: the source's own caption as the target should change nothing.
        let same =
            tch::no_grad(|| edit_images(method, nets, &w_src, &real, &sources, Some(&sources)))?;
        // The judge's attribute values of images, on the CPU.
        let read = |images: &Tensor| {
            tch::no_grad(|| {
                judge
                    .net
                    .predict(
                        &judge
                            .net
                            .forward(&resize_square(images, judge.resolution))
                            .attr_logits,
                    )
                    .to_device(tch::Device::Cpu)
            })
        };
        let (edited, source) = (out.edited, out.source);
        let grounding = out.grounding.map(|m| m.to_device(tch::Device::Cpu));
        // Both edits render G(w_src) with the same noise, so one reading of it serves both.
        let (pe, ps) = (read(&edited), read(&source));
        let agree = read(&same.edited).eq_tensor(&ps);
        identical += agree.sum(Kind::Float).double_value(&[]);
        identical_n += agree.numel() as f64;
        let diff = (&edited - &source)
            .abs()
            .mean_dim(1, false, None)
            .to_device(tch::Device::Cpu)
            / 2.0; // [B, R, R] in [0, 1]
        for (k, r) in chunk.iter().enumerate() {
            let k64 = k as i64;
            group_success[r.group].1 += 1.0;
            if pe.int64_value(&[k64, r.group as i64]) == r.new_value as i64 {
                success += 1.0;
                group_success[r.group].0 += 1.0;
            }
            for h in 0..groups {
                if h != r.group as i64 {
                    preserved_n += 1.0;
                    if pe.int64_value(&[k64, h]) == ps.int64_value(&[k64, h]) {
                        preserved += 1.0;
                    }
                }
            }
            let mask = masks.get(k64);
            let mut inside = mask.zeros_like().to_kind(Kind::Bool);
            for &p in Group::ALL[r.group].parts() {
                inside = inside.logical_or(&mask.eq(p));
            }
            if let (Some(map), false) = (&grounding, Group::ALL[r.group].parts().is_empty()) {
                // Pointing game: the map's peak falls on a part the edit concerns.
                let peak = map
                    .get(k64)
                    .flatten(0, -1)
                    .argmax(0, false)
                    .int64_value(&[]);
                pointed_n += 1.0;
                if inside.flatten(0, -1).int64_value(&[peak]) != 0 {
                    pointed += 1.0;
                }
            }
            let outside = inside.logical_not().to_kind(Kind::Float);
            let d = diff.get(k64);
            let l1 = (d * &outside).sum(Kind::Float).double_value(&[])
                / outside.sum(Kind::Float).double_value(&[]).max(1.0);
            region += 1.0 - l1;
            if gallery_rows.len() < 12 {
                let g_name = Group::ALL[r.group]
                    .cub_name()
                    .trim_start_matches("has_")
                    .replace("_color", "");
                let label = format!(
                    "{g_name}: {} -> {}",
                    Group::ALL[r.group].values()[r.old_value],
                    Group::ALL[r.group].values()[r.new_value]
                );
                let mut cells = vec![
                    real.get(k64).unsqueeze(0).to_device(tch::Device::Cpu),
                    source.get(k64).unsqueeze(0),
                    edited.get(k64).unsqueeze(0),
                ];
                if let Some(map) = &grounding {
                    cells.push(map.get(k64).unsqueeze(0).repeat([1, 3, 1, 1]) * 2.0 - 1.0);
                }
                gallery_rows.push((cells, label));
            }
        }
        edited_all.push(edited);
    }
    let n = reqs.len() as f64;
    let edit_success = success / n;
    let attr_preservation = preserved / preserved_n.max(1.0);
    let region_preservation = region / n;
    let score = harmonic(&[edit_success, attr_preservation, region_preservation]);
    let mut metrics = vec![
        ("eval/edit_success".to_string(), edit_success),
        ("eval/attr_preservation".to_string(), attr_preservation),
        ("eval/region_preservation".to_string(), region_preservation),
    ];
    if let Some(test_features) = test_features {
        let edited = Tensor::cat(&edited_all, 0);
        let realism = frechet_distance(
            test_features,
            &Gaussian::fit(&real_features(judge, &edited)),
        );
        metrics.push(("eval/realism".to_string(), realism));
    }
    metrics.push(("eval/score".to_string(), score));
    metrics.push((
        "eval/identity".to_string(),
        identical / identical_n.max(1.0),
    ));
    if method == Method::VisualGrounding && pointed_n > 0.0 {
        metrics.push(("eval/grounding".to_string(), pointed / pointed_n));
    }
    for (group, (hit, n)) in Group::ALL.iter().zip(&group_success) {
        if *n > 0.0 {
            metrics.push((format!("eval/edit_success/{}", group.cub_name()), hit / n));
        }
    }
    Ok(BenchmarkResult {
        metrics,
        gallery_png: gallery(&gallery_rows, res),
    })
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
