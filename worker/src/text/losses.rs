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
    /// The class mean of the training styles for every attribute value (`class_means`),
    /// the directions the `edit_style` term's targets step along.
    pub class_means: Option<&'a Tensor>,
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
            let g = group.index();
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

/// The styles M0 would give sources `w` (`[B, w_dim]`, labels `[B, groups]`, -1 unlabelled)
/// edited with `captions`: for every group a caption names with a value other than the
/// source's, a step from the source value's class mean (the group's mean when unlabelled) to
/// the named value's. `means` comes from [`class_means`].
pub fn edit_style_targets(
    w: &Tensor,
    labels: &Tensor,
    captions: &[&str],
    means: &Tensor,
) -> anyhow::Result<Tensor> {
    let (b, values) = (captions.len(), means.size()[0] as usize);
    let groups = Group::ALL.len();
    let labels = Vec::<i64>::try_from(labels.flatten(0, -1).to_device(tch::Device::Cpu))?;
    anyhow::ensure!(
        labels.len() == b * groups,
        "edit_style: {} labels for {b} captions of {groups} groups",
        labels.len()
    );
    // Signed counts of class means per example: +1 for the named value, -1 for the source's.
    let mut steps = vec![0f32; b * values];
    for (i, caption) in captions.iter().enumerate() {
        for (group, value) in mentioned_values(caption) {
            let g = group.index();
            let old = labels[i * groups + g];
            if old == value as i64 {
                continue;
            }
            steps[i * values + value_row(group, value) as usize] += 1.0;
            if old >= 0 {
                steps[i * values + value_row(group, old as usize) as usize] -= 1.0;
            } else {
                let n = group.values().len();
                for v in 0..n {
                    steps[i * values + value_row(group, v) as usize] -= 1.0 / n as f32;
                }
            }
        }
    }
    let steps = Tensor::from_slice(&steps)
        .view([b as i64, values as i64])
        .to_device(w.device());
    Ok(w + steps.matmul(means))
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

/// One weighted loss term: its name (reported as `loss/NAME`), weight and value.
pub type Term = (&'static str, f64, Tensor);

/// The recipe's loss terms on one batch, each with its weight (terms of weight 0 are left
/// out): the method's own terms, then the terms on an edit of each image with its partner's
/// caption.
pub fn loss_terms(recipe: &Recipe, nets: &Nets, ex: &Example) -> anyhow::Result<Vec<Term>> {
    let b = ex.images.size()[0];
    anyhow::ensure!(b >= 2, "a batch needs at least 2 examples to form pairs");
    let mut terms = match recipe.method {
        Method::LinearDirections => {
            anyhow::bail!("method linear-directions is fitted, not trained by a loss")
        }
        Method::Reconstruction => return reconstruction_terms(recipe, nets, ex),
        Method::Weighted => weighted_terms(recipe, nets, ex)?,
        Method::Contrastive | Method::VisualGrounding => contrastive_terms(recipe, nets, ex)?,
    };
    terms.extend(edit_terms(recipe, nets, ex)?);
    Ok(terms)
}

/// The batch rolled by one: example i's partner is example i - 1.
fn roll(t: &Tensor) -> Tensor {
    t.roll([1], [0])
}

/// The partners' captions, in the order of [`roll`].
fn partners<'a>(captions: &[&'a str]) -> Vec<&'a str> {
    let b = captions.len();
    (0..b).map(|i| captions[(i + b - 1) % b]).collect()
}

/// What each caption asks for: its own prediction (M1, M3) or, for M4, the caption read
/// with `images`.
fn own_prediction(
    recipe: &Recipe,
    nets: &Nets,
    ex: &Example,
    images: &Tensor,
) -> anyhow::Result<Prediction> {
    if recipe.method == Method::VisualGrounding {
        Ok(predict_grounded(nets, &ex.captions, images)?.pred)
    } else {
        predict(nets.enc, nets.heads, nets.g, &ex.captions)
    }
}

/// M2: the caption's style, compared with the image and its style.
fn reconstruction_terms(recipe: &Recipe, nets: &Nets, ex: &Example) -> anyhow::Result<Vec<Term>> {
    let w = &recipe.weights;
    let s = predict(nets.enc, nets.heads, nets.g, &ex.captions)?.p;
    let mut terms = Vec::new();
    if w.image > 0.0 {
        let l1 = (render(nets.g, &s) - ex.images).abs().mean(None);
        terms.push(("image", w.image, l1));
    }
    if w.style > 0.0 {
        terms.push(("style", w.style, (&s - ex.w).square().mean(None)));
    }
    if w.edit_style > 0.0 {
        // M2's own edit of bird i with its partner's caption, by the text direction.
        let partner = partners(&ex.captions);
        let s_r = predict(nets.enc, nets.heads, nets.g, &partner)?.p;
        let w_hat = ex.w + s_r - &s;
        terms.push((
            "edit_style",
            w.edit_style,
            edit_style_loss(&w_hat, ex, &partner)?,
        ));
    }
    Ok(terms)
}

/// The `edit_style` term of edits `w_hat` of the batch's birds with `captions`: the squared
/// distance, summed over W's dimensions (the few that a caption changes carry the signal), to
/// the style M0 would give.
fn edit_style_loss(w_hat: &Tensor, ex: &Example, captions: &[&str]) -> anyhow::Result<Tensor> {
    let means = ex.class_means.ok_or_else(|| {
        anyhow::anyhow!("the edit_style loss needs the class means of the training styles")
    })?;
    let target = edit_style_targets(ex.w, ex.labels, captions, means)?;
    Ok((w_hat - target)
        .square()
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
        .mean(Kind::Float))
}

/// M1, the seed's pair: an unrelated bird's style edited with caption i gives bird i.
fn weighted_terms(recipe: &Recipe, nets: &Nets, ex: &Example) -> anyhow::Result<Vec<Term>> {
    let (w, heads, g) = (&recipe.weights, nets.heads, nets.g);
    let pred = own_prediction(recipe, nets, ex, ex.images)?;
    let (w_hat, _) = heads.edit(&pred, &roll(ex.w), g);
    let mut terms = Vec::new();
    if w.image > 0.0 {
        let l1 = (render(g, &w_hat) - ex.images).abs().mean(None);
        terms.push(("image", w.image, l1));
    }
    if w.style > 0.0 {
        terms.push(("style", w.style, (&w_hat - ex.w).square().mean(None)));
    }
    if w.sparsity > 0.0 && heads.form == EditForm::Blend {
        terms.push(("sparsity", w.sparsity, pred.v.mean(None)));
    }
    if w.identity > 0.0 {
        let (w_id, _) = heads.edit(&pred, ex.w, g);
        terms.push(("identity", w.identity, (w_id - ex.w).square().mean(None)));
    }
    Ok(terms)
}

/// M3 and M4: each caption's predicted style against every style of the batch (InfoNCE),
/// and the identity edit.
fn contrastive_terms(recipe: &Recipe, nets: &Nets, ex: &Example) -> anyhow::Result<Vec<Term>> {
    let (w, heads, g) = (&recipe.weights, nets.heads, nets.g);
    // M4 reads caption i with bird i's own image, one pass for both terms.
    let pred = own_prediction(recipe, nets, ex, ex.images)?;
    let mut terms = Vec::new();
    if w.contrastive > 0.0 {
        let centre = |t: &Tensor| match recipe.contrast {
            ContrastStyles::Raw => t.shallow_clone(),
            ContrastStyles::Centred => t - g.w_avg.unsqueeze(0),
        };
        let unit = |t: Tensor| {
            let n = t
                .norm_scalaropt_dim(2, [1i64].as_slice(), true)
                .clamp_min(1e-8);
            t / n
        };
        let logits = unit(centre(&pred.p)).matmul(&unit(centre(ex.w)).tr()) / recipe.temperature;
        let diag = Tensor::arange(ex.images.size()[0], (Kind::Int64, pred.p.device()));
        let nce = logits.cross_entropy_for_logits(&diag);
        terms.push(("contrastive", w.contrastive, nce));
    }
    if w.identity > 0.0 {
        let (w_id, _) = heads.edit(&pred, ex.w, g);
        terms.push(("identity", w.identity, (w_id - ex.w).square().mean(None)));
    }
    Ok(terms)
}

/// The terms on image i edited with its partner's caption: preservation (the critic reads
/// the asked values), unedited region (pixels outside the changed parts stay), the residual
/// form's delta penalty, reconstruction (M3, M4), and the style M0 would give (`edit_style`).
/// The edit is rendered only when a term looks at pixels.
fn edit_terms(recipe: &Recipe, nets: &Nets, ex: &Example) -> anyhow::Result<Vec<Term>> {
    let (w, heads, g) = (&recipe.weights, nets.heads, nets.g);
    let rec_on = w.reconstruction > 0.0
        && matches!(recipe.method, Method::Contrastive | Method::VisualGrounding);
    let needs_pixels = w.preservation > 0.0 || w.unedited_region > 0.0 || rec_on;
    let grounding_on = w.grounding > 0.0 && recipe.method == Method::VisualGrounding;
    let needs_edit = needs_pixels
        || grounding_on
        || w.edit_style > 0.0
        || (w.delta > 0.0 && heads.form == EditForm::Residual);
    if !needs_edit {
        return Ok(Vec::new());
    }
    let partner = partners(&ex.captions);
    // M4 reads each partner caption with image i; its attention is what `grounding` trains.
    let (pred_r, attention) = if recipe.method == Method::VisualGrounding {
        let read = predict_grounded(nets, &partner, ex.images)?;
        (read.pred, Some((read.word_to_image, read.tokens)))
    } else {
        (predict(nets.enc, heads, g, &partner)?, None)
    };
    let (w_hat, delta) = heads.edit(&pred_r, ex.w, g);
    let mut terms = Vec::new();
    if w.edit_style > 0.0 {
        let loss = edit_style_loss(&w_hat, ex, &partner)?;
        terms.push(("edit_style", w.edit_style, loss));
    }
    if let (Some(delta), true) = (&delta, w.delta > 0.0) {
        terms.push(("delta", w.delta, delta.square().mean(None)));
    }
    if let (Some((attention, tokens)), true) = (&attention, grounding_on) {
        let masks = ex.masks.ok_or_else(|| {
            anyhow::anyhow!("the grounding loss needs part masks of the training images")
        })?;
        if let Some(loss) = grounding_loss(attention, tokens, masks)? {
            terms.push(("grounding", w.grounding, loss));
        }
    }
    if !needs_pixels {
        return Ok(terms);
    }
    let edited = render(g, &w_hat);
    let (named, values) = mentions(&partner, ex.labels.device());
    if w.preservation > 0.0 {
        let wanted = match recipe.preservation_groups {
            PreservationGroups::All => roll(ex.labels),
            PreservationGroups::Mentioned => edit_targets(&named, &values, ex.labels),
        };
        terms.push((
            "preservation",
            w.preservation,
            preservation(nets, &edited, &wanted)?,
        ));
    }
    if w.unedited_region > 0.0 {
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
        terms.push(("unedited_region", w.unedited_region, l1));
    }
    if rec_on {
        let rec = reconstruction(recipe, nets, ex, &edited)?;
        terms.push(("reconstruction", w.reconstruction, rec));
    }
    Ok(terms)
}

/// M4's grounding term: the cross-entropy of each colour word's and part word's attention
/// over the visual tokens (`attention` `[B, T, K]`, renormalised over the K tokens) against
/// the share of that part in each grid cell of the image the caption was read with (`masks`
/// `[B, R, R]`). `None` when no caption has a colour phrase whose part is in view.
pub fn grounding_loss(
    attention: &Tensor,
    tokens: &[Vec<String>],
    masks: &Tensor,
) -> anyhow::Result<Option<Tensor>> {
    let [b, t, k] = attention.size()[..] else {
        anyhow::bail!("unexpected attention shape {:?}", attention.size())
    };
    let grid = (k as f64).sqrt().round() as i64;
    anyhow::ensure!(grid * grid == k, "{k} visual tokens are not a square grid");
    let device = attention.device();
    // Per image and colour group, the part's share of each grid cell `[B, groups, K]`.
    let groups = &Group::ALL[..4];
    let shares: Vec<Tensor> = groups
        .iter()
        .map(|group| {
            let mut inside = masks.zeros_like().to_kind(Kind::Bool);
            for &p in group.parts() {
                inside = inside.logical_or(&masks.eq(p));
            }
            let share = inside
                .to_kind(Kind::Float)
                .unsqueeze(1)
                .adaptive_avg_pool2d([grid, grid])
                .view([b, k]);
            &share
                / share
                    .sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
                    .clamp_min(1e-8)
        })
        .collect();
    let shares = Tensor::stack(&shares, 1).to_device(device);
    let (mut rows, mut cols, mut parts) = (Vec::new(), Vec::new(), Vec::new());
    for (i, toks) in tokens.iter().enumerate() {
        for (j, group) in colour_word_groups(toks).into_iter().enumerate() {
            let Some(gi) = group.map(Group::index).filter(|&i| i < groups.len()) else {
                continue;
            };
            if (j as i64) < t {
                rows.push(i as i64);
                cols.push(j as i64);
                parts.push(gi as i64);
            }
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let index = |v: &[i64]| Tensor::from_slice(v).to_device(device);
    let (rows, cols, parts) = (index(&rows), index(&cols), index(&parts));
    let attn = attention.index(&[Some(&rows), Some(&cols)]);
    let attn = &attn
        / attn
            .sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
            .clamp_min(1e-12);
    let target = shares.index(&[Some(&rows), Some(&parts)]);
    // A part hidden in this view has no cells to point at.
    let seen = target
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
        .gt(0.5)
        .to_kind(Kind::Float);
    let ce = -(target * (attn + 1e-8).log()).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    Ok(Some(
        (ce * &seen).sum(Kind::Float) / seen.sum(Kind::Float).clamp_min(1.0),
    ))
}

/// The critic's attribute loss of the edited images against the wanted values.
fn preservation(nets: &Nets, edited: &Tensor, wanted: &Tensor) -> anyhow::Result<Tensor> {
    let c = nets.critic.ok_or_else(|| {
        anyhow::anyhow!("the preservation loss needs a critic (a train-judge checkpoint)")
    })?;
    let out = c.net.forward(&resize_square(edited, c.resolution));
    Ok(c.net.attribute_loss(&out.attr_logits, wanted))
}

/// L1 of the edit against the source image (and its partner's, with target `both`), plus
/// the critic-feature term when weighted.
fn reconstruction(
    recipe: &Recipe,
    nets: &Nets,
    ex: &Example,
    edited: &Tensor,
) -> anyhow::Result<Tensor> {
    let mut rec = (edited - ex.images).abs().mean(None);
    if recipe.target == ReconstructionTarget::Both {
        rec += (edited - roll(ex.images)).abs().mean(None);
    }
    if recipe.weights.feature > 0.0 {
        let c = nets.critic.ok_or_else(|| {
            anyhow::anyhow!("the feature term needs a critic (a train-judge checkpoint)")
        })?;
        let fe = c.net.forward(&resize_square(edited, c.resolution)).grid;
        let fi = tch::no_grad(|| c.net.forward(&resize_square(ex.images, c.resolution)).grid);
        rec += (fe - fi).square().mean(None) * recipe.weights.feature;
    }
    Ok(rec)
}

/// Sum of weighted terms.
pub fn total_loss(terms: &[Term]) -> Option<Tensor> {
    terms.iter().map(|(_, w, t)| t * *w).reduce(|a, b| a + b)
}
