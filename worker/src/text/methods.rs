//! The seed's text-to-style methods (ml.md section 5) as loss recipes over a frozen generator.
//!
//! Every loss term has a weight; a weight of 0 removes the term (it is not computed, so
//! nothing of it reaches the gradient). The generator is frozen: its variables never require
//! gradients, but gradients flow through it into BERT and the heads.
//!
//! M1 `weighted`, M2 `reconstruction`, M3 `contrastive` and M4 `visual-grounding`. M4 runs
//! BERT single-stream over the caption and a grid of the critic's features of the source
//! image; its last layer's word-to-image attention gives the grounding map that confines an
//! edit to the region the changed words point at.

use super::bert::{mean_pool_normalised, TextEncoder};
use crate::judge::train::Trained;
use crate::nn::layers::resize_square;
use crate::stylegan::generator::Generator;
use tch::nn::{self, Module, VarStore};
use tch::{Kind, Tensor};

pub use plume_jobs::{LossWeights, Method, ReconstructionTarget};

/// Side length of M4's grid of visual tokens (GRID x GRID tokens).
pub const GRID: i64 = 4;

/// M4's visual tokens: the critic's feature grid pooled to `GRID` x `GRID`, projected to
/// BERT's width, plus their own position and segment embeddings (VisualBERT).
struct VisualTokens {
    proj: nn::Linear,
    position: Tensor,
    segment: Tensor,
    norm: nn::LayerNorm,
}

/// The trainable heads on top of BERT's pooled output (and M4's visual-token embedding, so
/// that everything trained besides BERT lives in one variable store).
pub struct StyleHeads {
    /// Owns the heads' variables.
    pub vs: VarStore,
    p1: nn::Linear,
    p2: nn::Linear,
    v: nn::Linear,
    visual: Option<VisualTokens>,
}

impl StyleHeads {
    /// Heads from BERT width `hidden` to `w_dim`; with `visual_channels` (the critic's grid
    /// channels) also M4's visual-token embedding.
    pub fn new(
        device: tch::Device,
        hidden: i64,
        w_dim: i64,
        visual_channels: Option<i64>,
    ) -> StyleHeads {
        let vs = VarStore::new(device);
        let root = vs.root();
        let visual = visual_channels.map(|c| {
            let v = &root / "visual";
            VisualTokens {
                proj: nn::linear(&v / "proj", c, hidden, Default::default()),
                position: v.var(
                    "position",
                    &[GRID * GRID, hidden],
                    nn::Init::Randn {
                        mean: 0.0,
                        stdev: 0.02,
                    },
                ),
                segment: v.var(
                    "segment",
                    &[hidden],
                    nn::Init::Randn {
                        mean: 0.0,
                        stdev: 0.02,
                    },
                ),
                norm: nn::layer_norm(&v / "norm", vec![hidden], Default::default()),
            }
        });
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
        StyleHeads {
            vs,
            p1,
            p2,
            v,
            visual,
        }
    }

    /// Heads for `method` (M4 needs the critic to size its visual tokens).
    pub fn for_method(
        method: Method,
        device: tch::Device,
        hidden: i64,
        w_dim: i64,
        critic: Option<&Trained>,
    ) -> anyhow::Result<StyleHeads> {
        let visual = match method {
            Method::VisualGrounding => Some(
                critic
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "method visual-grounding needs a critic for its image tokens"
                        )
                    })?
                    .net
                    .grid_channels,
            ),
            _ => None,
        };
        Ok(StyleHeads::new(device, hidden, w_dim, visual))
    }

    fn heads(&self, pooled: &Tensor, g: &Generator) -> (Tensor, Tensor) {
        let p = self.p2.forward(&self.p1.forward(pooled).leaky_relu()) + g.w_avg.unsqueeze(0);
        let v = self.v.forward(pooled).sigmoid();
        (p, v)
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
    Ok(heads.heads(&pooled, g))
}

/// M4's predictions for captions about source images `[B, 3, R, R]`.
pub struct Grounded {
    /// Style p `[B, w_dim]`.
    pub p: Tensor,
    /// Weights v `[B, w_dim]`.
    pub v: Tensor,
    /// Last-layer attention of each caption token to each visual token, averaged over heads,
    /// `[B, T, GRID * GRID]`.
    pub word_to_image: Tensor,
    /// The real tokens of each caption.
    pub tokens: Vec<Vec<String>>,
}

/// M4: BERT over `[caption tokens; visual tokens of the source image]`; p and v from the
/// caption tokens' pooled output (so the heads match M1's), attention kept for grounding.
pub fn predict_grounded(
    nets: &Nets,
    captions: &[&str],
    images: &Tensor,
) -> anyhow::Result<Grounded> {
    let (enc, heads) = (nets.enc, nets.heads);
    let visual = heads.visual.as_ref().ok_or_else(|| {
        anyhow::anyhow!("these heads have no visual tokens (not a visual-grounding model)")
    })?;
    let critic = nets
        .critic
        .ok_or_else(|| anyhow::anyhow!("method visual-grounding needs the critic's features"))?;
    let batch = enc.tokenize(captions)?;
    let text = enc.bert.embed(&batch.ids);
    let [b, t, _] = text.size()[..] else {
        anyhow::bail!("unexpected embedding shape {:?}", text.size())
    };
    // The image is data: the critic is frozen and no gradient needs to reach the pixels.
    let grid = tch::no_grad(|| {
        critic
            .net
            .forward(&resize_square(images, critic.resolution))
            .grid
            .adaptive_avg_pool2d([GRID, GRID])
    });
    let tokens = grid.flatten(2, -1).transpose(1, 2); // [B, K, C]
    let tokens = visual
        .norm
        .forward(&(visual.proj.forward(&tokens) + visual.position.unsqueeze(0) + &visual.segment));
    let k = GRID * GRID;
    let x = Tensor::cat(&[text, tokens], 1);
    let mask = Tensor::cat(
        &[
            batch.mask.shallow_clone(),
            Tensor::ones([b, k], (Kind::Int64, batch.mask.device())),
        ],
        1,
    );
    let out = enc.bert.encode(&x, &mask);
    let pooled = mean_pool_normalised(&out.hidden.narrow(1, 0, t), &batch.mask)
        * (enc.bert.config.hidden_size as f64).sqrt();
    let (p, v) = heads.heads(&pooled, nets.g);
    let word_to_image = out
        .last_attention
        .mean_dim(1, false, None)
        .narrow(1, 0, t)
        .narrow(2, t, k);
    Ok(Grounded {
        p,
        v,
        word_to_image,
        tokens: batch.tokens,
    })
}

/// Where an edit points: for each example, the attention of the target caption's words that
/// the source caption lacks (all words when nothing differs or there is no source), as a map
/// `[B, 1, R, R]` scaled so its peak is 1.
pub fn grounding_map(
    pred: &Grounded,
    sources: Option<&[&str]>,
    resolution: i64,
) -> anyhow::Result<Tensor> {
    let [b, t, k] = pred.word_to_image.size()[..] else {
        anyhow::bail!("unexpected attention shape")
    };
    let mut select = vec![0f32; (b * t) as usize];
    for (i, toks) in pred.tokens.iter().enumerate() {
        let source_words: std::collections::HashSet<String> = sources
            .and_then(|s| s.get(i))
            .map(|s| {
                s.to_lowercase()
                    .split(|c: char| !c.is_alphanumeric())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let is_word = |tok: &str| tok.chars().any(char::is_alphanumeric) && !tok.starts_with('[');
        let changed: Vec<usize> = toks
            .iter()
            .enumerate()
            .filter(|(_, tok)| is_word(tok) && !source_words.contains(tok.trim_start_matches("##")))
            .map(|(j, _)| j)
            .collect();
        let chosen: Vec<usize> = if changed.is_empty() || sources.is_none() {
            (0..toks.len()).filter(|&j| is_word(&toks[j])).collect()
        } else {
            changed
        };
        for j in chosen.into_iter().filter(|&j| (j as i64) < t) {
            select[i * t as usize + j] = 1.0;
        }
    }
    let device = pred.word_to_image.device();
    let select = Tensor::from_slice(&select)
        .view([b, t, 1])
        .to_device(device);
    let map = (&pred.word_to_image * &select).sum_dim_intlist([1i64].as_slice(), false, None)
        / select
            .sum_dim_intlist([1i64].as_slice(), false, None)
            .clamp_min(1.0); // [B, K]
    anyhow::ensure!(
        k == GRID * GRID,
        "expected {} visual tokens, got {k}",
        GRID * GRID
    );
    // Scale after upsampling: bilinear interpolation lowers a single-cell peak.
    let map = map.view([b, 1, GRID, GRID]).upsample_bilinear2d(
        [resolution, resolution],
        false,
        None,
        None,
    );
    let peak = map
        .flatten(1, -1)
        .amax([1i64].as_slice(), true)
        .clamp_min(1e-12)
        .view([b, 1, 1, 1]);
    Ok(map / peak)
}

/// M1/M3's edit: `v * p + (1 - v) * w_src`.
fn blend(p: &Tensor, v: &Tensor, w_src: &Tensor) -> Tensor {
    v * p + (1.0 - v) * w_src
}

/// An edit, rendered: what the source style looks like, the edited image, and (M4) where
/// the edit was grounded.
pub struct EditedImages {
    /// The source style `[B, w_dim]` moved as the method says.
    pub w_hat: Tensor,
    /// G(w_src) `[B, 3, R, R]`, clamped to [-1, 1].
    pub source: Tensor,
    /// The edited image `[B, 3, R, R]`, clamped (M4: blended into `source` by the grounding map).
    pub edited: Tensor,
    /// M4's grounding map `[B, 1, R, R]` (peak 1), when source captions were given.
    pub grounding: Option<Tensor>,
}

/// Edits source styles with target captions as each method defines it (used by the
/// benchmark and by `plume-worker edit`, so both edit the same way). M2 moves `w_src` by the
/// text direction `s(target) - s(source)`, so it needs the source captions; M1 and M3 blend
/// `w_src` with the target caption's prediction; M4 does the same from caption + source image
/// and, given source captions, keeps the edit inside the region its changed words attend to.
/// Both renders use the same noise (seed 7) so that differences come from the style alone.
pub fn edit_images(
    method: Method,
    nets: &Nets,
    w_src: &Tensor,
    source_images: &Tensor,
    targets: &[&str],
    sources: Option<&[&str]>,
) -> anyhow::Result<EditedImages> {
    let g = nets.g;
    let (w_hat, grounding) = match method {
        Method::Reconstruction => {
            let sources = sources.ok_or_else(|| anyhow::anyhow!("method reconstruction edits by the difference of two captions: a source caption is needed"))?;
            let (s_t, _) = predict(nets.enc, nets.heads, g, targets)?;
            let (s_s, _) = predict(nets.enc, nets.heads, g, sources)?;
            (w_src + s_t - s_s, None)
        }
        Method::VisualGrounding => {
            let pred = predict_grounded(nets, targets, source_images)?;
            let map = match sources {
                Some(_) => Some(grounding_map(&pred, sources, g.cfg.resolution as i64)?),
                None => None,
            };
            (blend(&pred.p, &pred.v, w_src), map)
        }
        _ => {
            let (p, v) = predict(nets.enc, nets.heads, g, targets)?;
            (blend(&p, &v, w_src), None)
        }
    };
    tch::manual_seed(7);
    let source = g.synthesis(&g.broadcast(w_src)).clamp(-1.0, 1.0);
    tch::manual_seed(7);
    let raw = g.synthesis(&g.broadcast(&w_hat)).clamp(-1.0, 1.0);
    let edited = match &grounding {
        Some(m) => &raw * m + &source * (1.0 - m),
        None => raw,
    };
    Ok(EditedImages {
        w_hat,
        source,
        edited,
        grounding,
    })
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
        Method::Contrastive | Method::VisualGrounding => {
            let grounded = *method == Method::VisualGrounding;
            // M4 reads an image with every caption: caption i with its partner's image, so
            // that predicting w_i means applying caption i to another bird (as an edit does).
            let partner_images = roll(ex.images);
            let p = if grounded {
                predict_grounded(nets, &ex.captions, &partner_images)?.p
            } else {
                predict(enc, heads, g, &ex.captions)?.0
            };
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
                let (p_r, v_r) = if grounded {
                    let pred = predict_grounded(nets, &partner, ex.images)?;
                    (pred.p, pred.v)
                } else {
                    predict(enc, heads, g, &partner)?
                };
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
    }
    Ok(terms)
}

/// Sum of weighted terms.
pub fn total_loss(terms: &[(&'static str, f64, Tensor)]) -> Option<Tensor> {
    terms.iter().map(|(_, w, t)| t * *w).reduce(|a, b| a + b)
}
