//! `plume-worker edit`: edit one image with a caption using a trained text checkpoint.
//! A dataset image uses its stored style; a PNG from elsewhere is inverted first.

use super::bert::TextEncoder;
use super::methods::{edit_images, Method, Nets, StyleHeads};
use super::train::TextConfig;
use crate::dataset::OpenDataset;
use crate::nn::checkpoint::Checkpoint;
use crate::nn::named_vars;
use crate::picture::{tensor_to_rgb, Canvas, LINE_H};
use crate::stylegan::pretrain::load_generator;
use crate::styles::invert::{optimise_styles, InvertConfig, InvertMode};
use crate::styles::{generator_fingerprint, Styles};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// What to edit.
pub struct EditRequest<'a> {
    /// A `train-text` checkpoint.
    pub checkpoint: &'a Path,
    /// A dataset image id, or a PNG path.
    pub image: &'a str,
    /// The caption describing the wanted image.
    pub caption: &'a str,
    /// For M2 on a PNG: a caption describing the input (M2 edits by the difference).
    pub source_caption: Option<&'a str>,
    /// Where the picture (input | G(w) | edited) goes.
    pub out: &'a Path,
}

/// Runs an edit; returns a one-line description.
pub fn edit(req: &EditRequest, device: Device) -> anyhow::Result<String> {
    let ckpt = Checkpoint::load(req.checkpoint)?;
    ckpt.expect_kind("train-text")?;
    let cfg: TextConfig = serde_json::from_str(ckpt.meta("job.config")?)?;
    let loaded = Loaded::from_checkpoint(&ckpt, &cfg, req.checkpoint, device)?;
    let res = loaded.g.cfg.resolution;
    let source = match req.image.parse::<u32>() {
        Ok(id) => Source::dataset_image(&cfg, id, &loaded.fingerprint, res, device)?,
        Err(_) => Source::png(
            Path::new(req.image),
            &cfg,
            &loaded,
            req.source_caption,
            device,
        )?,
    };
    let nets = Nets {
        enc: &loaded.enc,
        heads: &loaded.heads,
        g: &loaded.g,
        critic: Some(&loaded.critic),
    };
    let sources = source.caption.as_deref().map(|s| [s]);
    anyhow::ensure!(
        cfg.method != Method::Reconstruction || sources.is_some(),
        "method reconstruction edits by the difference of two captions: pass --source-caption"
    );
    let out = tch::no_grad(|| {
        edit_images(
            cfg.method,
            &nets,
            &source.w,
            &source.image,
            &[req.caption],
            sources.as_ref().map(|s| &s[..]),
        )
    })?;
    let row = [source.image.clamp(-1.0, 1.0), out.source, out.edited];
    save_picture(&Tensor::cat(&row, 0), res, req.caption, req.out)?;
    Ok(format!(
        "edited {} with {:?} ({:?}) -> {}",
        req.image,
        req.caption,
        cfg.method,
        req.out.display()
    ))
}

/// The networks a `train-text` checkpoint edits with: the frozen generator it was trained
/// on (checked by fingerprint), BERT and the heads restored, and the critic.
struct Loaded {
    fingerprint: String,
    _g_vs: tch::nn::VarStore,
    g: crate::stylegan::generator::Generator,
    enc: TextEncoder,
    heads: StyleHeads,
    critic: crate::judge::train::Trained,
}

impl Loaded {
    fn from_checkpoint(
        ckpt: &Checkpoint,
        cfg: &TextConfig,
        ckpt_path: &Path,
        device: Device,
    ) -> anyhow::Result<Self> {
        let gen_ckpt = Checkpoint::load(&cfg.generator)?;
        let fingerprint = generator_fingerprint(&gen_ckpt)?;
        anyhow::ensure!(
            ckpt.meta("text.generator")? == fingerprint,
            "{}: the generator at {} changed since this checkpoint was trained",
            ckpt_path.display(),
            cfg.generator.display()
        );
        let (g_vs, g) = load_generator(&gen_ckpt, device)?;
        drop(gen_ckpt);
        let enc = TextEncoder::load(
            &PathBuf::from(ckpt.meta("text.bert_dir")?),
            device,
            cfg.max_tokens,
        )?;
        enc.restore_from(ckpt)?;
        let critic = crate::judge::train::load(&cfg.judge, "critic", device)?;
        let heads = StyleHeads::for_config(cfg, &enc, g.cfg.w_dim, &critic, device)?;
        ckpt.restore("heads.", &named_vars(&heads.vs))?;
        Ok(Loaded {
            fingerprint,
            _g_vs: g_vs,
            g,
            enc,
            heads,
            critic,
        })
    }
}

/// The image to edit, its style and (when known) a caption describing it.
struct Source {
    image: Tensor,
    w: Tensor,
    caption: Option<String>,
}

impl Source {
    /// A dataset image by id, with its stored style and its first caption.
    fn dataset_image(
        cfg: &TextConfig,
        id: u32,
        fingerprint: &str,
        res: u32,
        device: Device,
    ) -> anyhow::Result<Self> {
        let ds = cfg.dataset.open()?;
        let i = ds.images.iter().position(|im| im.id == id).ok_or_else(|| {
            anyhow::anyhow!(
                "image id {id} is not in the dataset ({} images)",
                ds.images.len()
            )
        })?;
        let styles = Styles::load(&cfg.styles, fingerprint)?;
        let rows = Vec::<i64>::try_from(&styles.index)?;
        let row = rows.iter().position(|&r| r == i as i64).ok_or_else(|| {
            anyhow::anyhow!("image {id} has no stored style; pass it as a PNG to invert it")
        })?;
        let w = styles.w.get(row as i64).select(0, 0).unsqueeze(0);
        Ok(Source {
            image: ds.load_images(&[i], res)?.to_device(device),
            w: w.to_device(device),
            caption: ds.captions[i].first().cloned(),
        })
    }

    /// A square PNG from elsewhere, resized to the generator's resolution and inverted.
    fn png(
        path: &Path,
        cfg: &TextConfig,
        loaded: &Loaded,
        caption: Option<&str>,
        device: Device,
    ) -> anyhow::Result<Self> {
        let res = loaded.g.cfg.resolution;
        let img = image::open(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .to_rgb8();
        anyhow::ensure!(
            img.width() == img.height(),
            "{}: the image is {}x{}; it must be square (the generator makes {res}x{res})",
            path.display(),
            img.width(),
            img.height()
        );
        let img = image::imageops::resize(&img, res, res, image::imageops::FilterType::Triangle);
        let data: Vec<f32> = img
            .pixels()
            .flat_map(|p| p.0)
            .map(|v| v as f32 / 127.5 - 1.0)
            .collect();
        let image = Tensor::from_slice(&data)
            .view([1, res as i64, res as i64, 3])
            .permute([0, 3, 1, 2])
            .contiguous()
            .to_device(device);
        let inv = InvertConfig {
            dataset: cfg.dataset.clone(),
            generator: cfg.generator.clone(),
            critic: None,
            mode: InvertMode::Optimise,
            limit: None,
            steps: 200,
            batch: 1,
            lr: 0.1,
            w_plus: false,
            feature_weight: 1.0,
            seed: 0,
            checkpoint_every: 1,
        };
        let (w, _) = optimise_styles(&loaded.g, Some(&loaded.critic), &image, &inv, 0);
        Ok(Source {
            image,
            w: w.select(1, 0),
            caption: caption.map(str::to_owned),
        })
    }
}

/// Writes input | G(w) | edited side by side, captioned, to `out`.
fn save_picture(row: &Tensor, res: u32, caption: &str, out: &Path) -> anyhow::Result<()> {
    let scale = (128 / res).max(1);
    let cell = res * scale;
    let mut canvas = Canvas::new(
        3 * (cell + 4) + 4,
        cell + 8 + 3 * LINE_H * 2,
        [255, 255, 255],
    );
    for (j, rgb) in tensor_to_rgb(&row.to_kind(Kind::Float)).iter().enumerate() {
        canvas.blit(4 + j as u32 * (cell + 4), 4, res, res, rgb, scale);
    }
    canvas.text_wrapped(
        4,
        cell + 8,
        &format!("input | G(w) | edited: {caption}"),
        canvas.width - 8,
        2,
        [20, 20, 20],
    );
    canvas
        .save(out)
        .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))
}
