//! Styles of the training images (w_gt, ml.md section 3): the `invert` job and the styles
//! file the text jobs read. A styles file records which generator it belongs to (a
//! fingerprint of the generator's weights), and loading it for another generator fails.

pub mod invert;
pub mod scene;

use crate::nn::checkpoint::{Checkpoint, CheckpointError};
use std::path::Path;
use tch::{Kind, Tensor};

/// SHA-256 over the EMA generator's tensors (names, shapes and bytes) of a
/// `pretrain-generator` checkpoint: the identity of "the frozen generator".
pub fn generator_fingerprint(ckpt: &Checkpoint) -> Result<String, CheckpointError> {
    ckpt.expect_kind("pretrain-generator")?;
    Ok(crate::nn::checkpoint::fingerprint(
        ckpt.tensors_with_prefix("G_ema."),
    ))
}

/// The frozen generator of a `pretrain-generator` checkpoint (its EMA weights, whose variable
/// store must outlive it) and its fingerprint: what every styles and text job starts from.
pub fn load_frozen_generator(
    path: &Path,
    device: tch::Device,
) -> anyhow::Result<(
    String,
    tch::nn::VarStore,
    crate::stylegan::generator::Generator,
)> {
    let ckpt = Checkpoint::load(path)?;
    let fingerprint = generator_fingerprint(&ckpt)?;
    let (vs, g) = crate::stylegan::pretrain::load_generator(&ckpt, device)?;
    Ok((fingerprint, vs, g))
}

/// The metadata every styles file carries: whose generator, how many styles of what shape,
/// and the job that made them.
pub fn styles_meta(
    cfg: &plume_jobs::InvertConfig,
    fingerprint: &str,
    count: usize,
    num_ws: i64,
    w_dim: i64,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("styles.generator".into(), fingerprint.to_string());
    meta.insert(
        "styles.generator_path".into(),
        cfg.generator.display().to_string(),
    );
    meta.insert("styles.count".into(), count.to_string());
    meta.insert("styles.num_ws".into(), num_ws.to_string());
    meta.insert("styles.w_dim".into(), w_dim.to_string());
    meta.insert("job.config".into(), serde_json::to_string(cfg)?);
    Ok(meta)
}

/// The styles of a set of images.
pub struct Styles {
    /// `[N, num_ws, w_dim]` (num_ws = 1 unless inverted into W+).
    pub w: Tensor,
    /// Dataset indices `[N]` (int64) of the images the styles reproduce (optimise mode),
    /// or -1 for generated images (sampled mode).
    pub index: Tensor,
    /// Per-image reconstruction error (mean absolute pixel error in [-1, 1] units).
    pub recon_error: Tensor,
    /// Fingerprint of the generator the styles belong to.
    pub generator: String,
    /// Sampled styles only: the critic's attribute labels of each G(w) `[N, groups]`
    /// (int64); `None` for styles of dataset images.
    pub labels: Option<Tensor>,
}

/// Renders one image per style row `[B, 1, w_dim]` with the generator's noise inputs drawn
/// from `seed`: how sampled styles are seen, both when labelled and when trained on.
pub fn render_styles(g: &crate::stylegan::generator::Generator, w: &Tensor, seed: u64) -> Tensor {
    tch::no_grad(|| {
        tch::manual_seed(seed as i64);
        g.synthesis(&w.expand([-1, g.num_ws(), -1], false))
    })
}

/// A styles file belongs to another generator than the one a job uses.
#[derive(Debug, thiserror::Error)]
#[error("{path}: styles belong to generator {found}, but this job uses generator {expected}; run `invert` for this generator")]
pub struct ForeignStyles {
    /// The styles file.
    pub path: String,
    /// Fingerprint of the job's generator.
    pub expected: String,
    /// Fingerprint recorded in the styles file.
    pub found: String,
}

impl Styles {
    /// Loads a styles file (an `invert` checkpoint) and checks it belongs to `generator`.
    pub fn load(path: &Path, generator_fingerprint: &str) -> anyhow::Result<Styles> {
        let ckpt = Checkpoint::load(path)?;
        ckpt.expect_kind("invert")?;
        let found = ckpt.meta("styles.generator")?.to_owned();
        if found != generator_fingerprint {
            return Err(ForeignStyles {
                path: path.display().to_string(),
                expected: generator_fingerprint.into(),
                found,
            }
            .into());
        }
        let n: i64 = ckpt.meta("styles.count")?.parse()?;
        let num_ws: i64 = ckpt.meta("styles.num_ws")?.parse()?;
        let w_dim: i64 = ckpt.meta("styles.w_dim")?.parse()?;
        let labels = match ckpt.meta("styles.mode").unwrap_or("optimise") {
            "sampled" => {
                let groups: i64 = ckpt.meta("styles.groups")?.parse()?;
                Some(ckpt.tensor("labels", &[n, groups])?.to_kind(Kind::Int64))
            }
            _ => None,
        };
        Ok(Styles {
            w: ckpt.tensor("w", &[n, num_ws, w_dim])?.shallow_clone(),
            index: ckpt.tensor("index", &[n])?.to_kind(Kind::Int64),
            recon_error: ckpt.tensor("recon_error", &[n])?.shallow_clone(),
            generator: found,
            labels,
        })
    }
}
