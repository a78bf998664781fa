//! `train-text` (the methods and their loss weights) and `evaluate`.

use crate::*;
#[allow(unused_imports)]
use std::path::PathBuf;

/// Which recipe trains BERT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// M1: predicted edit p and per-dimension weights v; w_hat = v p + (1 - v) w_src.
    Weighted,
    /// M2: predict the whole style; edit by the text direction s(c_t) - s(c_s).
    Reconstruction,
    /// M3: contrastive + preservation + reconstruction (the seed's main method).
    Contrastive,
    /// M4: VisualBERT-style single-stream encoder over caption + image grid; M3's losses.
    VisualGrounding,
    /// M0: no BERT; one direction in W per attribute value (class means of labelled styles),
    /// the value read from the caption with the dataset vocabulary. The ceiling of what the
    /// generator can express.
    LinearDirections,
}

impl Method {
    /// Every method, in the order of the methods table.
    pub const ALL: [Method; 5] = [
        Method::LinearDirections,
        Method::Weighted,
        Method::Reconstruction,
        Method::Contrastive,
        Method::VisualGrounding,
    ];

    /// The name a config gives (`method: ...`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Weighted => "weighted",
            Method::Reconstruction => "reconstruction",
            Method::Contrastive => "contrastive",
            Method::VisualGrounding => "visual-grounding",
            Method::LinearDirections => "linear-directions",
        }
    }
}

/// How M1, M3 and M4 turn a caption's prediction into the edited style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EditForm {
    /// The seed's blend `v * p + (1 - v) * w_src`.
    Blend,
    /// `w_src + delta(h, w_src - w_avg)`, with `losses.delta` penalising |delta|^2: the edit
    /// is anchored at the source by construction.
    Residual,
}

/// Which attribute groups the preservation loss asks the edited image to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PreservationGroups {
    /// Every group, all taken from the caption's bird (the seed's first recipe: it teaches
    /// the heads to ignore the source and draw one average bird).
    All,
    /// The groups the caption mentions take the caption's values; the others the source's.
    Mentioned,
}

/// What the contrastive loss compares predicted styles with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContrastStyles {
    /// Raw w, which share a large common component (every pair looks alike).
    Raw,
    /// w - w_avg.
    Centred,
}

/// What `reconstruction` compares an edited image against (M3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReconstructionTarget {
    /// The input image only.
    Input,
    /// The input image and the image the new caption came from.
    Both,
}

/// Weights of every loss term (0 switches a term off).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossWeights {
    /// Pixel L1 between the generated and the target image (M1, M2).
    pub image: f64,
    /// Squared error between predicted and true style (M1, M2).
    pub style: f64,
    /// Mean of the style weights v (M1), so that a sentence controls few dimensions.
    pub sparsity: f64,
    /// InfoNCE between predicted styles and the batch's true styles (M3).
    pub contrastive: f64,
    /// The critic sees in the edited image what the new caption says (M3).
    pub preservation: f64,
    /// The edited image stays close to the input (M3): pixel L1 ...
    pub reconstruction: f64,
    /// ... plus this weight times the critic's feature distance.
    pub feature: f64,
    /// Editing a bird with its own caption returns its style: |edit(w_i, c_i) - w_i|^2
    /// (M1, M3, M4).
    pub identity: f64,
    /// Editing a bird with another caption keeps every pixel outside the parts of the groups
    /// that change: L1 against G(w_src) there (M1, M3, M4).
    pub unedited_region: f64,
    /// `edit: residual`: |delta|^2 of the source edit.
    pub delta: f64,
    /// Editing a bird with another caption gives the style M0 would: the source moved along
    /// the class-mean directions of the values the caption changes, |edit(w_i, c_r) -
    /// (w_i + sum of mean(new) - mean(old))|^2 summed over W's dimensions, for each method's
    /// own edit (M2's is w_i + s(c_r) - s(c_i)). It needs the training images'
    /// attribute labels, not a block-structured W; on a block-structured W it is exact.
    pub edit_style: f64,
    /// M4: each colour word and its part word attend, in BERT's last layer, to the visual
    /// tokens where that part of the image is (cross-entropy against the part's share of each
    /// grid cell, from the training image's part mask): the seed's alignment of the words
    /// with image sub-regions.
    pub grounding: f64,
}

/// The fixed recipes' weights. The terms on rendered pixels (`image`, `preservation`,
/// `reconstruction`, `unedited_region`) are off: each renders the edit through the generator
/// (a step about twice as slow on CPU), and at equal steps the style-level terms
/// (`edit_style`, `identity`, `contrastive`, `style`) teach the edits that the benchmark
/// scores (`experiments/methods-table.yaml` has a row with them back on). The seed's recipes
/// set them back.
impl Default for LossWeights {
    fn default() -> Self {
        LossWeights {
            image: 0.0,
            style: 1.0,
            sparsity: 0.01,
            contrastive: 1.0,
            preservation: 0.0,
            reconstruction: 0.0,
            feature: 0.1,
            identity: 1.0,
            unedited_region: 0.0,
            delta: 0.1,
            edit_style: 1.0,
            grounding: 1.0,
        }
    }
}

/// Configuration of `train-text`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    /// The images and captions.
    pub dataset: DatasetSpec,
    /// The frozen generator (`pretrain-generator` checkpoint).
    pub generator: PathBuf,
    /// Styles of the images (`invert` checkpoint) for that generator.
    pub styles: PathBuf,
    /// `train-judge` checkpoint: its critic may enter losses, its judge only scores.
    pub judge: PathBuf,
    /// Which method.
    pub method: Method,
    /// Loss weights (0 switches a term off).
    #[serde(default)]
    pub losses: LossWeights,
    /// M3's reconstruction target.
    #[serde(default = "d_target")]
    pub reconstruction_target: ReconstructionTarget,
    /// M3's InfoNCE temperature.
    #[serde(default = "d_temperature")]
    pub temperature: f64,
    /// How the edit moves the source style (M1, M3, M4).
    #[serde(default = "d_edit")]
    pub edit: EditForm,
    /// Initial bias of the blend weights v: sigmoid(-3) = 0.05, so an untrained edit keeps
    /// the source (0 is the seed's 0.5).
    #[serde(default = "d_v_bias")]
    pub v_bias: f64,
    /// Which groups preservation asks for.
    #[serde(default = "d_preservation_groups")]
    pub preservation_groups: PreservationGroups,
    /// Raw or centred styles in the contrastive loss.
    #[serde(default = "d_contrast")]
    pub contrast: ContrastStyles,
    /// M0: the step sizes tried on the training split's edits (scored by the critic).
    #[serde(default = "d_alphas")]
    pub alphas: Vec<f64>,
    /// Freeze BERT's embeddings and this many lowest layers.
    #[serde(default)]
    pub freeze_layers: i64,
    /// HuggingFace BERT directory (default: all-MiniLM-L6-v2 from the set-up venv).
    #[serde(default)]
    pub bert: Option<PathBuf>,
    /// Longest caption in tokens (longer ones are truncated).
    #[serde(default = "d_max_tokens")]
    pub max_tokens: usize,
    /// Training steps.
    pub steps: i64,
    /// Batch size.
    #[serde(default = "d_batch")]
    pub batch: i64,
    /// Adam learning rate of BERT.
    #[serde(default = "d_lr_bert")]
    pub lr_bert: f64,
    /// Adam learning rate of the heads.
    #[serde(default = "d_lr_heads")]
    pub lr_heads: f64,
    /// Seed of heads, data order and the benchmark's requests.
    #[serde(default)]
    pub seed: u64,
    /// Run the edit benchmark every this many steps (and at the end).
    #[serde(default = "d_every")]
    pub eval_every: i64,
    /// Edit requests per benchmark.
    #[serde(default = "d_edits")]
    pub eval_edits: usize,
    /// Checkpoint every this many steps (and at the end).
    #[serde(default = "d_every")]
    pub checkpoint_every: i64,
}

fn d_target() -> ReconstructionTarget {
    ReconstructionTarget::Input
}
fn d_temperature() -> f64 {
    0.1
}
fn d_edit() -> EditForm {
    EditForm::Blend
}
fn d_v_bias() -> f64 {
    -3.0
}
fn d_preservation_groups() -> PreservationGroups {
    PreservationGroups::Mentioned
}
fn d_contrast() -> ContrastStyles {
    ContrastStyles::Centred
}
fn d_alphas() -> Vec<f64> {
    vec![0.5, 1.0, 1.5, 2.0, 3.0]
}
fn d_max_tokens() -> usize {
    64
}
fn d_batch() -> i64 {
    16
}
fn d_lr_bert() -> f64 {
    1e-4
}
fn d_lr_heads() -> f64 {
    1e-3
}
fn d_every() -> i64 {
    200
}
fn d_edits() -> usize {
    200
}

impl TextConfig {
    /// Range checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("steps", self.steps, 1, 10_000_000)?;
        check_range("batch", self.batch, 2, 4096)?;
        check_range("lr_bert", self.lr_bert, 0.0, 1.0)?;
        check_range("lr_heads", self.lr_heads, 1e-8, 1.0)?;
        check_range("temperature", self.temperature, 1e-4, 100.0)?;
        check_range("v_bias", self.v_bias, -20.0, 20.0)?;
        if self.alphas.is_empty() || self.alphas.len() > 32 {
            return Err(ConfigError::invalid(
                "alphas",
                format!("alphas: give 1 to 32 step sizes, got {}", self.alphas.len()),
            ));
        }
        for &a in &self.alphas {
            check_range("alphas", a, 0.0, 100.0)?;
        }
        for (name, w) in [
            ("image", self.losses.image),
            ("style", self.losses.style),
            ("sparsity", self.losses.sparsity),
            ("contrastive", self.losses.contrastive),
            ("preservation", self.losses.preservation),
            ("reconstruction", self.losses.reconstruction),
            ("feature", self.losses.feature),
            ("identity", self.losses.identity),
            ("unedited_region", self.losses.unedited_region),
            ("delta", self.losses.delta),
            ("edit_style", self.losses.edit_style),
            ("grounding", self.losses.grounding),
        ] {
            check_range(&format!("losses.{name}"), w, 0.0, 1e6)?;
        }
        check_range("freeze_layers", self.freeze_layers, 0, 1000)?;
        check_range("max_tokens", self.max_tokens, 2, 512)?;
        check_range("eval_every", self.eval_every, 1, i64::MAX)?;
        check_range("eval_edits", self.eval_edits, 2, 100_000)?;
        check_range("checkpoint_every", self.checkpoint_every, 1, i64::MAX)?;
        Ok(())
    }
}

/// Configuration of `evaluate`: the edit benchmark on a `train-text` checkpoint.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateConfig {
    /// The `train-text` checkpoint; its stored config names data, generator and styles.
    pub checkpoint: PathBuf,
    /// Another `train-judge` checkpoint to score with (default: the one it trained with).
    #[serde(default)]
    pub judge: Option<PathBuf>,
    /// Edit requests (default: the checkpoint's `eval_edits`).
    #[serde(default)]
    pub edits: Option<usize>,
}

impl EvaluateConfig {
    /// Range checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(n) = self.edits {
            check_range("edits", n, 2, 100_000)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Method;

    #[test]
    fn method_names_are_what_configs_parse() {
        for m in Method::ALL {
            let parsed: Method = crate::yaml::from_str(m.name()).unwrap();
            assert_eq!(parsed, m);
        }
    }
}
