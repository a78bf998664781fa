//! The loss recipes of the methods (ml.md section 5): the terms each method trains with, by
//! weight, over a frozen generator. A weight of 0 removes its term (it is not computed, so
//! nothing of it reaches the gradient); gradients reach BERT and the heads, never the
//! generator or the critic.

use super::methods::*;
use crate::dataset::vocab::{mentioned_values, Group, PARTS};
use crate::nn::layers::resize_square;
use crate::stylegan::generator::Generator;
use tch::{Kind, Tensor};

/// One training batch: images, their true styles, one caption each, attribute labels and
/// part masks.
pub struct Example<'a> {
    /// `[B, 3, R, R]` in [-1, 1].
    pub images: &'a Tensor,
    /// `[B, w_dim]`.
    pub w: &'a Tensor,
    /// One caption per image.
    pub captions: Vec<&'a str>,
    /// `[B, groups]` attribute value indices (-1 unlabelled).
    pub labels: &'a Tensor,
    /// `[B, R, R]` part labels of `PARTS` (needed by `unedited_region`).
    pub masks: Option<&'a Tensor>,
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
    /// Which groups preservation asks for.
    pub preservation_groups: PreservationGroups,
    /// Raw or centred styles in the contrastive loss.
    pub contrast: ContrastStyles,
}

impl From<&TextConfig> for Recipe {
    fn from(cfg: &TextConfig) -> Self {
        Recipe {
            method: cfg.method,
            weights: cfg.losses.clone(),
            target: cfg.reconstruction_target,
            temperature: cfg.temperature,
            preservation_groups: cfg.preservation_groups,
            contrast: cfg.contrast,
        }
    }
}

impl Recipe {
    /// The recipe of `method` with the fixed defaults (mentioned groups, centred styles).
    pub fn new(method: Method, weights: LossWeights) -> Recipe {
        Recipe {
            method,
            weights,
            target: ReconstructionTarget::Input,
            temperature: 0.1,
            preservation_groups: PreservationGroups::Mentioned,
            contrast: ContrastStyles::Centred,
        }
    }
}

/// Per caption and attribute group (`Group::ALL` order, `[B, groups]`): whether the caption
/// names the group, and the value it names (0 where it does not).
pub fn mentions(captions: &[&str], device: tch::Device) -> (Tensor, Tensor) {
    let groups = Group::ALL.len();
    let mut named = vec![false; captions.len() * groups];
    let mut values = vec![0i64; captions.len() * groups];
    for (i, c) in captions.iter().enumerate() {
        for (group, value) in mentioned_values(c) {
            let g = Group::ALL
                .iter()
                .position(|h| *h == group)
                .expect("a known group");
            named[i * groups + g] = true;
            values[i * groups + g] = value as i64;
        }
    }
    let shape = [captions.len() as i64, groups as i64];
    (
        Tensor::from_slice(&named).view(shape).to_device(device),
        Tensor::from_slice(&values).view(shape).to_device(device),
    )
}

/// The labels an edit of a source (labels `source`) with a caption should show: the values
/// the caption names where it names them, the source's elsewhere. `named` and `values` come
/// from [`mentions`].
pub fn edit_targets(named: &Tensor, values: &Tensor, source: &Tensor) -> Tensor {
    values.where_self(named, source)
}

/// Per pixel `[B, R, R]` (1 = keep): outside the parts of the groups that `changed`
/// (`[B, groups]` bool) alters, by part labels `masks` (`[B, R, R]`).
pub fn unedited_region(changed: &Tensor, masks: &Tensor) -> Tensor {
    let device = masks.device();
    let parts = PARTS.len() as i64;
    let mut membership = vec![0f32; Group::ALL.len() * parts as usize];
    for (g, group) in Group::ALL.iter().enumerate() {
        for &p in group.parts() {
            membership[g * parts as usize + p as usize] = 1.0;
        }
    }
    let membership = Tensor::from_slice(&membership)
        .view([Group::ALL.len() as i64, parts])
        .to_device(device);
    let edited_parts = changed.to_kind(Kind::Float).matmul(&membership).gt(0.0); // [B, P]
    let b = masks.size()[0];
    let inside = edited_parts
        .gather(1, &masks.view([b, -1]), false)
        .view_as(masks);
    inside.logical_not().to_kind(Kind::Float)
}

/// The loss terms of a recipe on one batch as `(name, weight, unweighted value)`, only those
/// with weight > 0. The example's partner r is the previous example of the batch.
///
/// Besides each method's own terms (ml.md section 5), M1, M3 and M4 share the terms of
/// editing a source with another caption (the partner's): `preservation` (the critic reads
/// what the caption names, and by default the source's values elsewhere), `unedited_region`
/// (pixels outside the changed parts stay), `delta` (residual form: small steps) and
/// `identity` (a bird edited with its own caption keeps its style).
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
        preservation_groups,
        contrast,
    } = recipe;
    let (enc, heads, g, critic) = (nets.enc, nets.heads, nets.g, nets.critic);
    let b = ex.images.size()[0];
    anyhow::ensure!(b >= 2, "a batch needs at least 2 examples to form pairs");
    let roll = |t: &Tensor| t.roll([1], [0]);
    let mut terms: Vec<(&'static str, f64, Tensor)> = Vec::new();
    let grounded = *method == Method::VisualGrounding;
    // What each caption asks for: its own prediction (M1, M3) or, for M4, the caption read
    // with another bird's image, so that predicting w_i means applying caption i to another
    // bird (as an edit does).
    let own = |images: &Tensor| -> anyhow::Result<Prediction> {
        if grounded {
            Ok(predict_grounded(nets, &ex.captions, images)?.pred)
        } else {
            predict(enc, heads, g, &ex.captions)
        }
    };
    match method {
        Method::LinearDirections => {
            anyhow::bail!("method linear-directions is fitted, not trained by a loss")
        }
        Method::Reconstruction => {
            let s = predict(enc, heads, g, &ex.captions)?.p;
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
            return Ok(terms);
        }
        Method::Weighted => {
            // The seed's pair: an unrelated bird's style edited with caption i gives bird i.
            let pred = own(ex.images)?;
            let (w_hat, _) = heads.edit(&pred, &roll(ex.w), g);
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
            if weights.sparsity > 0.0 && heads.form == EditForm::Blend {
                terms.push(("sparsity", weights.sparsity, pred.v.mean(None)));
            }
            if weights.identity > 0.0 {
                let (w_id, _) = heads.edit(&pred, ex.w, g);
                terms.push((
                    "identity",
                    weights.identity,
                    (w_id - ex.w).square().mean(None),
                ));
            }
        }
        Method::Contrastive | Method::VisualGrounding => {
            let pred = own(&roll(ex.images))?;
            if weights.contrastive > 0.0 {
                let centre = |t: &Tensor| match contrast {
                    ContrastStyles::Raw => t.shallow_clone(),
                    ContrastStyles::Centred => t - g.w_avg.unsqueeze(0),
                };
                let unit = |t: Tensor| {
                    let n = t
                        .norm_scalaropt_dim(2, [1i64].as_slice(), true)
                        .clamp_min(1e-8);
                    t / n
                };
                let logits = unit(centre(&pred.p)).matmul(&unit(centre(ex.w)).tr()) / *temperature;
                let diag = Tensor::arange(b, (Kind::Int64, pred.p.device()));
                terms.push((
                    "contrastive",
                    weights.contrastive,
                    logits.cross_entropy_for_logits(&diag),
                ));
            }
            if weights.identity > 0.0 {
                // Caption i read with bird i's own image (M4) edits bird i into itself.
                let pred = if grounded { own(ex.images)? } else { pred };
                let (w_id, _) = heads.edit(&pred, ex.w, g);
                terms.push((
                    "identity",
                    weights.identity,
                    (w_id - ex.w).square().mean(None),
                ));
            }
        }
    }

    // Edit image i with its partner's caption.
    let rec_on = weights.reconstruction > 0.0
        && matches!(method, Method::Contrastive | Method::VisualGrounding);
    let needs_edit = weights.preservation > 0.0
        || weights.unedited_region > 0.0
        || rec_on
        || (weights.delta > 0.0 && heads.form == EditForm::Residual);
    if !needs_edit {
        return Ok(terms);
    }
    let partner: Vec<&str> = (0..b as usize)
        .map(|i| ex.captions[(i + b as usize - 1) % b as usize])
        .collect();
    let pred_r = if grounded {
        predict_grounded(nets, &partner, ex.images)?.pred
    } else {
        predict(enc, heads, g, &partner)?
    };
    let (w_hat, delta) = heads.edit(&pred_r, ex.w, g);
    let edited = render(g, &w_hat);
    let (named, values) = mentions(&partner, ex.labels.device());
    if weights.preservation > 0.0 {
        let c = critic.ok_or_else(|| {
            anyhow::anyhow!("the preservation loss needs a critic (a train-judge checkpoint)")
        })?;
        let wanted = match preservation_groups {
            PreservationGroups::All => roll(ex.labels),
            PreservationGroups::Mentioned => edit_targets(&named, &values, ex.labels),
        };
        let out = c.net.forward(&resize_square(&edited, c.resolution));
        terms.push((
            "preservation",
            weights.preservation,
            c.net.attribute_loss(&out.attr_logits, &wanted),
        ));
    }
    if weights.unedited_region > 0.0 {
        let masks = ex.masks.ok_or_else(|| {
            anyhow::anyhow!("the unedited_region loss needs part masks of the training images")
        })?;
        // A group changes where the caption names a value other than the source's (an
        // unlabelled source value counts as changed).
        let changed = named.logical_and(&values.ne_tensor(ex.labels));
        let keep = unedited_region(&changed, masks).unsqueeze(1);
        let source = tch::no_grad(|| render(g, ex.w));
        let l1 = ((&edited - source).abs() * &keep).sum(Kind::Float)
            / (keep.sum(Kind::Float) * 3.0).clamp_min(1.0);
        terms.push(("unedited_region", weights.unedited_region, l1));
    }
    if let (Some(delta), true) = (&delta, weights.delta > 0.0) {
        terms.push(("delta", weights.delta, delta.square().mean(None)));
    }
    if rec_on {
        let mut rec = (&edited - ex.images).abs().mean(None);
        if *target == ReconstructionTarget::Both {
            rec += (&edited - roll(ex.images)).abs().mean(None);
        }
        if weights.feature > 0.0 {
            let c = critic.ok_or_else(|| {
                anyhow::anyhow!("the feature term needs a critic (a train-judge checkpoint)")
            })?;
            let fe = c.net.forward(&resize_square(&edited, c.resolution)).grid;
            let fi = tch::no_grad(|| c.net.forward(&resize_square(ex.images, c.resolution)).grid);
            rec += (fe - fi).square().mean(None) * weights.feature;
        }
        terms.push(("reconstruction", weights.reconstruction, rec));
    }
    Ok(terms)
}

/// Sum of weighted terms.
pub fn total_loss(terms: &[(&'static str, f64, Tensor)]) -> Option<Tensor> {
    terms.iter().map(|(_, w, t)| t * *w).reduce(|a, b| a + b)
}
