//! How good a generator is, beyond judge-FID (ml.md §2), all read by the judge, which no
//! training loss sees:
//! - precision and recall in the judge's embedding space (Kynkäänniemi et al. 2019, k = 3):
//!   are the samples on the data manifold, and is the data covered by the samples;
//! - attribute coverage: per attribute group, how many values the judge reads among the
//!   samples, and the largest share one value takes (a collapsed G draws few colours);
//! - facing balance: the share of birds facing right, from the judge's part segmentation.
//!
//! FID alone can improve while every sample is the same blob; these cannot.

use crate::dataset::vocab::PARTS;
use crate::judge::train::Trained;
use crate::nn::layers::resize_square;
use tch::{Kind, Tensor};

/// The judge's reading of a set of images.
pub struct Reading {
    /// Embeddings `[N, D]`.
    pub embedding: Tensor,
    /// Predicted value per group `[N, groups]`.
    pub values: Tensor,
    /// Per image: facing right (from the part segmentation), when the judge segments the
    /// synthetic birds' parts.
    pub facing_right: Option<Tensor>,
}

impl Reading {
    /// The reading of the first `n` images (all of them if there are fewer).
    pub fn first(&self, n: i64) -> Reading {
        let n = n.min(self.values.size()[0]);
        Reading {
            embedding: self.embedding.narrow(0, 0, n),
            values: self.values.narrow(0, 0, n),
            facing_right: self.facing_right.as_ref().map(|f| f.narrow(0, 0, n)),
        }
    }
}

/// Runs the judge over `images` (`[N, 3, R, R]` in [-1, 1]) in batches.
pub fn read(judge: &Trained, images: &Tensor) -> Reading {
    tch::no_grad(|| {
        let n = images.size()[0];
        let (mut emb, mut vals, mut facing) = (Vec::new(), Vec::new(), Vec::new());
        for s in (0..n).step_by(250) {
            let batch = resize_square(&images.narrow(0, s, 250.min(n - s)), judge.resolution);
            let out = judge.net.forward(&batch);
            vals.push(judge.net.predict(&out.attr_logits));
            emb.push(out.embedding);
            if let Some(parts) = out
                .part_logits
                .filter(|_| judge.net.parts() == PARTS.len() as i64)
            {
                facing.push(facing_right(&parts));
            }
        }
        Reading {
            embedding: Tensor::cat(&emb, 0),
            values: Tensor::cat(&vals, 0),
            facing_right: (!facing.is_empty()).then(|| Tensor::cat(&facing, 0)),
        }
    })
}

/// A bird faces right when its head (crown, head, bill, eye) lies right of its tail: the
/// x-centroids of the two part groups' probability mass. `[B, parts, H, W]` logits -> `[B]`.
fn facing_right(part_logits: &Tensor) -> Tensor {
    let probs = part_logits.softmax(1, Kind::Float);
    let w = probs.size()[3];
    let xs = Tensor::arange(w, (Kind::Float, probs.device())).view([1, 1, w]);
    let centroid = |parts: &[i64]| {
        let idx = Tensor::from_slice(parts).to_device(probs.device());
        let mass = probs
            .index_select(1, &idx)
            .sum_dim_intlist([1i64].as_slice(), false, None); // [B, H, W]
        (&mass * &xs).sum_dim_intlist([1i64, 2].as_slice(), false, None)
            / (mass.sum_dim_intlist([1i64, 2].as_slice(), false, None) + 1e-6)
    };
    let head = centroid(&[4, 5, 6, 8]);
    let tail = centroid(&[7]);
    head.gt_tensor(&tail)
}

/// Distance from each row of `a` to its k-th nearest other row.
fn kth_neighbour_radius(a: &Tensor, k: i64) -> Tensor {
    let d = Tensor::cdist(a, a, 2.0, None::<i64>);
    // The smallest distance is the row itself (0); the k-th neighbour is at index k.
    d.topk(k + 1, 1, false, true).0.select(1, k)
}

/// Share of `queries` inside at least one of the balls (`centres`, `radii`).
fn inside_any(queries: &Tensor, centres: &Tensor, radii: &Tensor) -> f64 {
    let d = Tensor::cdist(queries, centres, 2.0, None::<i64>); // [Q, C]
    d.le_tensor(&radii.unsqueeze(0))
        .any_dim(1, false)
        .to_kind(Kind::Float)
        .mean(None)
        .double_value(&[])
}

/// Improved precision and recall with k-NN manifolds (k = 3).
pub fn precision_recall(real: &Tensor, fake: &Tensor) -> (f64, f64) {
    tch::no_grad(|| {
        let k = 3;
        let precision = inside_any(fake, real, &kth_neighbour_radius(real, k));
        let recall = inside_any(real, fake, &kth_neighbour_radius(fake, k));
        (precision, recall)
    })
}

/// Coverage of one attribute group among a set of images.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupCoverage {
    /// Values read at least a tenth of their fair share (`n / (10 * values)` times): a stray
    /// misreading does not count as drawing a colour.
    pub covered: usize,
    /// Values in the group.
    pub values: usize,
    /// The largest share any one value takes.
    pub top_share: f64,
}

/// Coverage of group `g` with `values` values in a reading.
pub fn group_coverage(reading: &Reading, g: i64, values: usize) -> GroupCoverage {
    let col = reading.values.select(1, g);
    let n = col.size()[0] as f64;
    let counts = col.bincount(None::<Tensor>, values as i64);
    let counts: Vec<i64> = Vec::try_from(&counts).expect("int64 counts");
    let floor = n / (10.0 * values as f64);
    GroupCoverage {
        covered: counts.iter().filter(|&&c| c as f64 >= floor).count(),
        values,
        top_share: counts.iter().copied().max().unwrap_or(0) as f64 / n.max(1.0),
    }
}

/// Share of images facing right.
pub fn facing_share(reading: &Reading) -> Option<f64> {
    reading
        .facing_right
        .as_ref()
        .map(|f| f.to_kind(Kind::Float).mean(None).double_value(&[]))
}
