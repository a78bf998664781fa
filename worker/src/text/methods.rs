//! The seed's text-to-style methods (ml.md section 5) as loss recipes over a frozen generator.
//!
//! Every loss term has a weight; a weight of 0 removes the term (it is not computed, so
//! nothing of it reaches the gradient). The generator is frozen: its variables never require
//! gradients, but gradients flow through it into BERT and the heads.
//!
//! Implemented: M1 `weighted`, M2 `reconstruction`, M3 `contrastive`. M4 `visual-grounding`
//! is not implemented yet and is refused with a clear error.

use super::bert::{mean_pool_normalised, TextEncoder};
use crate::judge::train::Trained;
use crate::nn::layers::resize_square;
use crate::stylegan::generator::Generator;
use tch::nn::{self, Module, VarStore};
use tch::{Kind, Tensor};

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
    /// M4: VisualBERT-style grounding (not implemented yet).
    VisualGrounding,
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
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights {
            image: 1.0,
            style: 1.0,
            sparsity: 0.01,
            contrastive: 1.0,
            preservation: 1.0,
            reconstruction: 1.0,
            feature: 0.1,
        }
    }
}

/// The trainable heads on top of BERT's pooled output.
pub struct StyleHeads {
    /// Owns the heads' variables.
    pub vs: VarStore,
    p1: nn::Linear,
    p2: nn::Linear,
    v: nn::Linear,
}

impl StyleHeads {
    /// Heads from BERT width `hidden` to `w_dim`.
    pub fn new(device: tch::Device, hidden: i64, w_dim: i64) -> StyleHeads {
        let vs = VarStore::new(device);
        let root = vs.root();
        let p1 = nn::linear(&root / "p1", hidden, 512, Default::default());
        let p2 = nn::linear(&root / "p2", 512, w_dim, Default::default());
        // v starts near 0.5 everywhere, neither copying the source nor ignoring it.
        let v = nn::linear(
            &root / "v",
            hidden,
            w_dim,
            nn::LinearConfig {
                ws_init: nn::Init::Const(0.0),
                ..Default::default()
            },
        );
        StyleHeads { vs, p1, p2, v }
    }
}

/// Predictions for a batch of captions: style p `[B, w_dim]` (offset from `w_avg`) and
/// weights v in (0, 1) `[B, w_dim]`.
pub fn predict(
    enc: &TextEncoder,
    heads: &StyleHeads,
    g: &Generator,
    captions: &[&str],
) -> anyhow::Result<(Tensor, Tensor)> {
    let batch = enc.tokenize(captions)?;
    let out = enc.bert.forward(&batch.ids, &batch.mask);
    let pooled = mean_pool_normalised(&out.hidden, &batch.mask)
        * (enc.bert.config.hidden_size as f64).sqrt();
    let p = heads.p2.forward(&heads.p1.forward(&pooled).leaky_relu()) + g.w_avg.unsqueeze(0);
    let v = heads.v.forward(&pooled).sigmoid();
    Ok((p, v))
}

/// M1/M3's edit: `v * p + (1 - v) * w_src`.
fn blend(p: &Tensor, v: &Tensor, w_src: &Tensor) -> Tensor {
    v * p + (1.0 - v) * w_src
}

/// The style an edit asks for, as each method defines it (used by the benchmark and by
/// `plume-worker edit`): M2 moves `w_src` by the text direction `s(target) - s(source)`, so it
/// needs the source captions; the others blend `w_src` with the target caption's prediction.
pub fn edited_style(
    method: Method,
    nets: &Nets,
    w_src: &Tensor,
    targets: &[&str],
    sources: Option<&[&str]>,
) -> anyhow::Result<Tensor> {
    match method {
        Method::Reconstruction => {
            let sources = sources.ok_or_else(|| anyhow::anyhow!("method reconstruction edits by the difference of two captions: a source caption is needed"))?;
            let (s_t, _) = predict(nets.enc, nets.heads, nets.g, targets)?;
            let (s_s, _) = predict(nets.enc, nets.heads, nets.g, sources)?;
            Ok(w_src + s_t - s_s)
        }
        Method::VisualGrounding => {
            anyhow::bail!("method visual-grounding (M4) is not implemented yet")
        }
        _ => {
            let (p, v) = predict(nets.enc, nets.heads, nets.g, targets)?;
            Ok(blend(&p, &v, w_src))
        }
    }
}

/// One training batch: images, their true styles, one caption each, and attribute labels.
pub struct Example<'a> {
    /// `[B, 3, R, R]` in [-1, 1].
    pub images: &'a Tensor,
    /// `[B, w_dim]`.
    pub w: &'a Tensor,
    /// One caption per image.
    pub captions: Vec<&'a str>,
    /// `[B, groups]` attribute value indices (-1 unlabelled).
    pub labels: &'a Tensor,
}

fn render(g: &Generator, w: &Tensor) -> Tensor {
    g.synthesis(&g.broadcast(w))
}

/// A method with its loss settings.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// Which method.
    pub method: Method,
    /// Weight of every term.
    pub weights: LossWeights,
    /// M3's reconstruction target.
    pub target: ReconstructionTarget,
    /// M3's InfoNCE temperature.
    pub temperature: f64,
}

/// The networks a recipe uses: the trained text side and the frozen image side.
pub struct Nets<'a> {
    /// BERT (trained, lower layers possibly frozen).
    pub enc: &'a TextEncoder,
    /// The style heads (trained).
    pub heads: &'a StyleHeads,
    /// The frozen generator.
    pub g: &'a Generator,
    /// The frozen critic, needed by the preservation and feature terms.
    pub critic: Option<&'a Trained>,
}

/// The loss terms of a recipe on one batch as `(name, weight, unweighted value)`, only those
/// with weight > 0. The example's partner r is the previous example of the batch.
pub fn loss_terms(
    recipe: &Recipe,
    nets: &Nets,
    ex: &Example,
) -> anyhow::Result<Vec<(&'static str, f64, Tensor)>> {
    let Recipe {
        method,
        weights,
        target,
        temperature,
    } = recipe;
    let (enc, heads, g, critic) = (nets.enc, nets.heads, nets.g, nets.critic);
    let b = ex.images.size()[0];
    anyhow::ensure!(b >= 2, "a batch needs at least 2 examples to form pairs");
    let roll = |t: &Tensor| t.roll([1], [0]);
    let mut terms: Vec<(&'static str, f64, Tensor)> = Vec::new();
    match method {
        Method::Weighted => {
            let (p, v) = predict(enc, heads, g, &ex.captions)?;
            let w_src = roll(ex.w);
            let w_hat = blend(&p, &v, &w_src);
            if weights.image > 0.0 {
                terms.push((
                    "image",
                    weights.image,
                    (render(g, &w_hat) - ex.images).abs().mean(None),
                ));
            }
            if weights.style > 0.0 {
                terms.push(("style", weights.style, (&w_hat - ex.w).square().mean(None)));
            }
            if weights.sparsity > 0.0 {
                terms.push(("sparsity", weights.sparsity, v.mean(None)));
            }
        }
        Method::Reconstruction => {
            let (s, _) = predict(enc, heads, g, &ex.captions)?;
            if weights.image > 0.0 {
                terms.push((
                    "image",
                    weights.image,
                    (render(g, &s) - ex.images).abs().mean(None),
                ));
            }
            if weights.style > 0.0 {
                terms.push(("style", weights.style, (&s - ex.w).square().mean(None)));
            }
        }
        Method::Contrastive => {
            let (p, _) = predict(enc, heads, g, &ex.captions)?;
            if weights.contrastive > 0.0 {
                let a = &p
                    / p.norm_scalaropt_dim(2, [1i64].as_slice(), true)
                        .clamp_min(1e-8);
                let wn = ex.w
                    / ex.w
                        .norm_scalaropt_dim(2, [1i64].as_slice(), true)
                        .clamp_min(1e-8);
                let logits = a.matmul(&wn.tr()) / *temperature;
                let diag = Tensor::arange(b, (Kind::Int64, p.device()));
                terms.push((
                    "contrastive",
                    weights.contrastive,
                    logits.cross_entropy_for_logits(&diag),
                ));
            }
            let needs_edit = weights.preservation > 0.0 || weights.reconstruction > 0.0;
            if needs_edit {
                // Edit image i with its partner's caption.
                let partner: Vec<&str> = (0..b as usize)
                    .map(|i| ex.captions[(i + b as usize - 1) % b as usize])
                    .collect();
                let (p_r, v_r) = predict(enc, heads, g, &partner)?;
                let w_hat = blend(&p_r, &v_r, ex.w);
                let edited = render(g, &w_hat);
                if weights.preservation > 0.0 {
                    let c = critic.ok_or_else(|| {
                        anyhow::anyhow!(
                            "the preservation loss needs a critic (a train-judge checkpoint)"
                        )
                    })?;
                    let out = c.net.forward(&resize_square(&edited, c.resolution));
                    terms.push((
                        "preservation",
                        weights.preservation,
                        c.net.attribute_loss(&out.attr_logits, &roll(ex.labels)),
                    ));
                }
                if weights.reconstruction > 0.0 {
                    let mut rec = (&edited - ex.images).abs().mean(None);
                    if *target == ReconstructionTarget::Both {
                        rec += (&edited - roll(ex.images)).abs().mean(None);
                    }
                    if weights.feature > 0.0 {
                        let c = critic.ok_or_else(|| {
                            anyhow::anyhow!(
                                "the feature term needs a critic (a train-judge checkpoint)"
                            )
                        })?;
                        let fe = c.net.forward(&resize_square(&edited, c.resolution)).grid;
                        let fi = tch::no_grad(|| {
                            c.net.forward(&resize_square(ex.images, c.resolution)).grid
                        });
                        rec += (fe - fi).square().mean(None) * weights.feature;
                    }
                    terms.push(("reconstruction", weights.reconstruction, rec));
                }
            }
        }
        Method::VisualGrounding => {
            anyhow::bail!("method visual-grounding (M4) is not implemented yet")
        }
    }
    Ok(terms)
}

/// Sum of weighted terms.
pub fn total_loss(terms: &[(&'static str, f64, Tensor)]) -> Option<Tensor> {
    terms.iter().map(|(_, w, t)| t * *w).reduce(|a, b| a + b)
}
