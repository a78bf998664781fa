//! The seed's text-to-style methods (ml.md section 5): the style heads on BERT, their
//! predictions, and the edits they make through a frozen generator. What each method trains
//! with is in `losses`.
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

use crate::dataset::vocab::{group_of_part_word, mentioned_values, Group, COLOURS};
pub use plume_jobs::{
    ContrastStyles, EditForm, LossWeights, Method, PreservationGroups, ReconstructionTarget,
    TextConfig,
};

/// Side length of M4's grid of visual tokens (GRID x GRID tokens). An 8 x 8 grid (the
/// critic's own at 32 px) points finer but makes BERT's sequence 4x as long as the caption's
/// and M4's step about 3x as slow on CPU; the benchmark's pointing game allows its tolerance.
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
    /// `edit: residual`: delta(h, w_src - w_avg), two layers, the last starting near zero
    /// so that an untrained edit returns about the source.
    residual: Option<(nn::Linear, nn::Linear)>,
    visual: Option<VisualTokens>,
    /// M0's fitted directions (not trained by gradients; stored with the heads).
    pub directions: Option<Directions>,
    /// How [`StyleHeads::edit`] moves a source style.
    pub form: EditForm,
}

/// How the heads edit: the form of the edit and the initial bias of the blend weights v.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EditSpec {
    /// Blend or residual.
    pub form: EditForm,
    /// Initial bias of v (sigmoid(-3) = 0.05: an untrained blend keeps the source).
    pub v_bias: f64,
}

impl From<&TextConfig> for EditSpec {
    fn from(cfg: &TextConfig) -> Self {
        EditSpec {
            form: cfg.edit,
            v_bias: cfg.v_bias,
        }
    }
}

impl Default for EditSpec {
    fn default() -> Self {
        EditSpec {
            form: EditForm::Blend,
            v_bias: -3.0,
        }
    }
}

/// M0: the mean style of every attribute value, `[values of all groups, w_dim]` in
/// `Group::ALL` order, and the step size chosen on the training split.
pub struct Directions {
    /// Class means of W.
    pub means: Tensor,
    /// Step size `[1]`.
    pub alpha: Tensor,
}

/// Row of `(group, value)` in a table with one row per value of every group, in
/// `Group::ALL` order (M0's class means).
pub fn value_row(group: Group, value: usize) -> i64 {
    let before: usize = Group::ALL
        .iter()
        .take_while(|g| **g != group)
        .map(|g| g.values().len())
        .sum();
    (before + value) as i64
}

/// The mean style of every attribute value over labelled styles `w` `[N, w_dim]` with labels
/// `[N, groups]` (-1 unlabelled), one row per value (`value_row`); a value no style has gets
/// the overall mean, so it defines no direction.
pub fn class_means(w: &Tensor, labels: &Tensor) -> Tensor {
    let overall = w.mean_dim(0, false, None);
    let mut means = Vec::new();
    for (g, group) in Group::ALL.iter().enumerate() {
        let column = labels.select(1, g as i64);
        for v in 0..group.values().len() {
            let rows = column.eq(v as i64).nonzero().squeeze_dim(1);
            means.push(if rows.size()[0] == 0 {
                overall.shallow_clone()
            } else {
                w.index_select(0, &rows).mean_dim(0, false, None)
            });
        }
    }
    Tensor::stack(&means, 0)
}

impl Directions {
    fn row(group: Group, value: usize) -> i64 {
        value_row(group, value)
    }

    /// The mean style of `value` of `group`.
    pub fn mean(&self, group: Group, value: usize) -> Tensor {
        self.means.get(Self::row(group, value))
    }

    /// The mean over a group's values (each value weighted equally).
    pub fn group_mean(&self, group: Group) -> Tensor {
        let n = group.values().len() as i64;
        self.means
            .narrow(0, Self::row(group, 0), n)
            .mean_dim(0, false, None)
    }
}

impl StyleHeads {
    /// Heads from BERT width `hidden` to `w_dim`; with `visual_channels` (the critic's grid
    /// channels) also M4's visual-token embedding.
    pub fn new(
        device: tch::Device,
        hidden: i64,
        w_dim: i64,
        visual_channels: Option<i64>,
        spec: EditSpec,
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
        // v starts at sigmoid(v_bias) everywhere, whatever the caption.
        let v = nn::linear(
            &root / "v",
            hidden,
            w_dim,
            nn::LinearConfig {
                ws_init: nn::Init::Const(0.0),
                bs_init: Some(nn::Init::Const(spec.v_bias)),
                bias: true,
            },
        );
        let residual = (spec.form == EditForm::Residual).then(|| {
            (
                nn::linear(&root / "d1", hidden + w_dim, 512, Default::default()),
                nn::linear(
                    &root / "d2",
                    512,
                    w_dim,
                    // Small, not zero: gradients reach BERT from the first step.
                    nn::LinearConfig {
                        ws_init: nn::Init::Randn {
                            mean: 0.0,
                            stdev: 1e-3,
                        },
                        bs_init: Some(nn::Init::Const(0.0)),
                        bias: true,
                    },
                ),
            )
        });
        StyleHeads {
            vs,
            p1,
            p2,
            v,
            residual,
            visual,
            directions: None,
            form: spec.form,
        }
    }

    /// Adds M0's direction store (zeros until [`StyleHeads::set_directions`]).
    fn with_directions(mut self, w_dim: i64) -> StyleHeads {
        let values: usize = Group::ALL.iter().map(|g| g.values().len()).sum();
        let root = self.vs.root() / "m0";
        self.directions = Some(Directions {
            means: root.zeros_no_train("means", &[values as i64, w_dim]),
            alpha: root.zeros_no_train("alpha", &[1]),
        });
        self
    }

    /// M0: stores the fitted class means and step size.
    pub fn set_directions(&self, means: &Tensor, alpha: f64) -> anyhow::Result<()> {
        let d = self
            .directions
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("these heads have no M0 directions"))?;
        anyhow::ensure!(
            means.size() == d.means.size(),
            "M0 means: expected {:?}, got {:?}",
            d.means.size(),
            means.size()
        );
        tch::no_grad(|| {
            d.means.shallow_clone().copy_(means);
            let _ = d.alpha.shallow_clone().fill_(alpha);
        });
        Ok(())
    }

    /// Fresh heads for a `train-text` config, sized for `enc` and the generator's `w_dim`.
    pub fn for_config(
        cfg: &plume_jobs::TextConfig,
        enc: &TextEncoder,
        w_dim: i64,
        critic: &Trained,
        device: tch::Device,
    ) -> anyhow::Result<StyleHeads> {
        StyleHeads::for_method(
            cfg.method,
            device,
            enc.bert.config.hidden_size,
            w_dim,
            Some(critic),
            EditSpec::from(cfg),
        )
    }

    /// Heads for `method` (M4 needs the critic to size its visual tokens).
    pub fn for_method(
        method: Method,
        device: tch::Device,
        hidden: i64,
        w_dim: i64,
        critic: Option<&Trained>,
        spec: EditSpec,
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
        let heads = StyleHeads::new(device, hidden, w_dim, visual, spec);
        Ok(if method == Method::LinearDirections {
            heads.with_directions(w_dim)
        } else {
            heads
        })
    }

    fn heads(&self, pooled: &Tensor, g: &Generator) -> (Tensor, Tensor) {
        let p = self.p2.forward(&self.p1.forward(pooled).leaky_relu()) + g.w_avg.unsqueeze(0);
        let v = self.v.forward(pooled).sigmoid();
        (p, v)
    }

    /// The edited style for captions encoded as `pred` applied to `w_src`, and (residual
    /// form) the step delta.
    pub fn edit(
        &self,
        pred: &Prediction,
        w_src: &Tensor,
        g: &Generator,
    ) -> (Tensor, Option<Tensor>) {
        match &self.residual {
            Some((d1, d2)) => {
                let centred = w_src - g.w_avg.unsqueeze(0);
                let x = Tensor::cat(&[pred.pooled.shallow_clone(), centred], 1);
                let delta = d2.forward(&d1.forward(&x).leaky_relu());
                (w_src + &delta, Some(delta))
            }
            None => (blend(&pred.p, &pred.v, w_src), None),
        }
    }
}

/// What the heads read from a batch of captions: BERT's pooled output, the style p
/// `[B, w_dim]` and the blend weights v in (0, 1) `[B, w_dim]`.
pub struct Prediction {
    /// BERT's pooled output, scaled to unit variance per dimension.
    pub pooled: Tensor,
    /// Predicted style.
    pub p: Tensor,
    /// Blend weights.
    pub v: Tensor,
}

/// Predictions for a batch of captions.
pub fn predict(
    enc: &TextEncoder,
    heads: &StyleHeads,
    g: &Generator,
    captions: &[&str],
) -> anyhow::Result<Prediction> {
    let batch = enc.tokenize(captions)?;
    let out = enc.bert.forward(&batch.ids, &batch.mask);
    let pooled = mean_pool_normalised(&out.hidden, &batch.mask)
        * (enc.bert.config.hidden_size as f64).sqrt();
    let (p, v) = heads.heads(&pooled, g);
    Ok(Prediction { pooled, p, v })
}

/// M4's predictions for captions about source images `[B, 3, R, R]`.
pub struct Grounded {
    /// What the heads read from the caption tokens' pooled output.
    pub pred: Prediction,
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
    let pred = Prediction { pooled, p, v };
    let word_to_image = out
        .last_attention
        .mean_dim(1, false, None)
        .narrow(1, 0, t)
        .narrow(2, t, k);
    Ok(Grounded {
        pred,
        word_to_image,
        tokens: batch.tokens,
    })
}

/// Per token of a caption (`tokens` as the tokenizer gives them, word pieces marked `##`):
/// the colour group a "colour part" phrase gives it, for the colour word's and the part
/// word's tokens (`a red breast`: `red` and `breast` -> breast colour), else `None`.
pub fn colour_word_groups(tokens: &[String]) -> Vec<Option<Group>> {
    // Whole words and the tokens each spans.
    let mut words: Vec<(String, Vec<usize>)> = Vec::new();
    for (j, tok) in tokens.iter().enumerate() {
        match (tok.strip_prefix("##"), words.last_mut()) {
            (Some(rest), Some(word)) => {
                word.0.push_str(rest);
                word.1.push(j);
            }
            _ => words.push((tok.to_lowercase(), vec![j])),
        }
    }
    let mut out = vec![None; tokens.len()];
    for pair in words.windows(2) {
        let (colour, part) = (&pair[0], &pair[1]);
        if !COLOURS.iter().any(|(name, _)| *name == colour.0) {
            continue;
        }
        if let Some(group) = group_of_part_word(&part.0) {
            for &j in colour.1.iter().chain(&part.1) {
                out[j] = Some(group);
            }
        }
    }
    out
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

/// M0's edit: for every group the target caption names, step from the source's value (read
/// from the source caption; the group's mean when it does not say) toward the named value,
/// `w_src + alpha * (mean(named) - mean(source value))`.
pub fn linear_edit(
    directions: &Directions,
    w_src: &Tensor,
    targets: &[&str],
    sources: Option<&[&str]>,
) -> Tensor {
    let alpha = directions.alpha.double_value(&[0]);
    let steps: Vec<Tensor> = targets
        .iter()
        .enumerate()
        .map(|(i, target)| {
            let source_values = sources
                .and_then(|s| s.get(i))
                .map(|s| mentioned_values(s))
                .unwrap_or_default();
            let mut step = w_src.get(0).zeros_like();
            for (group, value) in mentioned_values(target) {
                let from = match source_values.iter().find(|(g, _)| *g == group) {
                    Some(&(_, old)) if old == value => continue,
                    Some(&(_, old)) => directions.mean(group, old),
                    None => directions.group_mean(group),
                };
                step += directions.mean(group, value) - from;
            }
            step
        })
        .collect();
    w_src + Tensor::stack(&steps, 0) * alpha
}

/// Edits source styles with target captions as each method defines it (used by the
/// benchmark and by `plume-worker edit`, so both edit the same way). M2 moves `w_src` by the
/// text direction `s(target) - s(source)`, so it needs the source captions; M1 and M3 edit
/// `w_src` with the target caption's prediction (blend or residual, as the heads were built);
/// M4 does the same from caption + source image and, given source captions, keeps the edit
/// inside the region its changed words attend to; M0 steps along its class-mean directions.
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
            let s_t = predict(nets.enc, nets.heads, g, targets)?.p;
            let s_s = predict(nets.enc, nets.heads, g, sources)?.p;
            (w_src + s_t - s_s, None)
        }
        Method::VisualGrounding => {
            let pred = predict_grounded(nets, targets, source_images)?;
            let map = match sources {
                Some(_) => Some(grounding_map(&pred, sources, g.cfg.resolution as i64)?),
                None => None,
            };
            (nets.heads.edit(&pred.pred, w_src, g).0, map)
        }
        Method::LinearDirections => {
            let directions = nets.heads.directions.as_ref().ok_or_else(|| {
                anyhow::anyhow!("these heads have no M0 directions (not a linear-directions model)")
            })?;
            (linear_edit(directions, w_src, targets, sources), None)
        }
        Method::Weighted | Method::Contrastive => {
            let pred = predict(nets.enc, nets.heads, g, targets)?;
            (nets.heads.edit(&pred, w_src, g).0, None)
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
