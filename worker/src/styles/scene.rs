//! `invert` with `mode: scene`: the exact styles of a synthetic dataset's images under a
//! teacher-trained generator, w_gt = mapping(scene code of image i), read from the dataset's
//! scenes file. Nothing is optimised; the reconstruction error G(w_gt) against the image is
//! still measured and stored, so a poor generator shows in the styles as it would after an
//! inversion.

use super::load_frozen_generator;
use crate::dataset::scene::{self, read_scenes};
use crate::dataset::{Dataset, OpenDataset};
use crate::job::{Outcome, Reporter};
use crate::nn::checkpoint;
use plume_jobs::{InvertConfig, MappingInput};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Runs `invert` in scene mode (one styles file; reading codes is cheap, so a cancelled or
/// resumed job starts again).
pub fn run(
    cfg: &InvertConfig,
    device: Device,
    reporter: &mut dyn Reporter,
) -> anyhow::Result<Outcome> {
    let ds: Dataset = cfg.dataset.open()?;
    let (fingerprint, _g_vs, g) = load_frozen_generator(&cfg.generator, device)?;
    anyhow::ensure!(
        g.cfg.input == MappingInput::Scene,
        "{}: mode: scene needs a generator that reads scene codes (a pretrain-generator with objective: teacher); this one reads z: use mode: optimise",
        cfg.generator.display()
    );
    let by_id: HashMap<u32, scene::Scene> = read_scenes(&ds.root)?.into_iter().collect();
    let total = cfg.limit.unwrap_or(usize::MAX).min(ds.images.len());
    let scenes = ds.images[..total]
        .iter()
        .map(|e| {
            by_id.get(&e.id).copied().ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: image {} has no scene",
                    ds.root.join(scene::SCENES_FILE).display(),
                    e.id
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    reporter.log(&format!(
        "invert (scene) on {device:?}: exact styles of {total} images from their scene codes, generator {}",
        &fingerprint[..12]
    ));
    let (mut ws, mut errs) = (Vec::new(), Vec::new());
    let batch = cfg.batch.max(1) as usize;
    for start in (0..total).step_by(batch) {
        let n = batch.min(total - start);
        let codes = scene::codes(&scenes[start..start + n]).to_device(device);
        let idx: Vec<usize> = (start..start + n).collect();
        let images = ds.load_images(&idx, g.cfg.resolution)?.to_device(device);
        let (w, err) = tch::no_grad(|| {
            let w = g.mapping.forward(&codes);
            let err = (g.synthesis(&g.broadcast(&w)) - &images).abs().mean_dim(
                [1i64, 2, 3].as_slice(),
                false,
                None,
            );
            (w.unsqueeze(1), err)
        });
        ws.push(w);
        errs.push(err);
        reporter.progress((start + n) as i64, total as i64, &[]);
    }
    let w = Tensor::cat(&ws, 0);
    let err = Tensor::cat(&errs, 0);
    let mean = err.mean(Kind::Float).double_value(&[]);
    reporter.metrics(total as i64, &[("styles/recon_l1", mean)])?;
    reporter.log(&format!(
        "reconstruction L1 of G(w_gt) against the images: mean {mean:.4}, max {:.4}",
        err.max().double_value(&[])
    ));
    let mut meta = super::styles_meta(cfg, &fingerprint, total, 1, g.cfg.w_dim)?;
    meta.insert("styles.mode".into(), "scene".into());
    let index = Tensor::arange(total as i64, (Kind::Float, device));
    checkpoint::write(
        reporter,
        "invert",
        total as i64,
        &meta,
        &checkpoint::Parts::weights(vec![
            ("w".into(), w),
            ("index".into(), index),
            ("recon_error".into(), err),
        ]),
    )?;
    reporter.finish(&format!("invert finished: {total} exact styles"));
    Ok(Outcome::Completed { step: total as i64 })
}
