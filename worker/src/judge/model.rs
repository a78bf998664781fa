//! A small convolutional network with an attribute head (one softmax per attribute group) and,
//! where the dataset has masks, a part-segmentation head. Its pooled features also serve as
//! the embedding for judge-FID, and its feature grid as M4's visual tokens.

use crate::nn::layers::{upsample2_bilinear, EqualConv2d, EqualLinear};
use tch::nn::Path;
use tch::{Kind, Tensor};

pub use plume_jobs::JudgeNetConfig;

/// What the network sees of an image.
pub struct JudgeOutput {
    /// Concatenated per-group logits `[B, sum of group sizes]`.
    pub attr_logits: Tensor,
    /// Part logits `[B, parts, H, W]`, if the net has a segmentation head.
    pub part_logits: Option<Tensor>,
    /// Pooled embedding `[B, hidden]` (FID features).
    pub embedding: Tensor,
    /// Feature grid `[B, C, H/4, W/4]`.
    pub grid: Tensor,
}

/// The attribute classifier + part segmenter.
pub struct JudgeNet {
    /// Values per attribute group, in dataset order.
    pub group_sizes: Vec<i64>,
    /// Channels of the feature grid (`JudgeOutput::grid`).
    pub grid_channels: i64,
    c1a: EqualConv2d,
    c1b: EqualConv2d,
    c2a: EqualConv2d,
    c2b: EqualConv2d,
    c3a: EqualConv2d,
    c3b: EqualConv2d,
    fc: EqualLinear,
    attr: EqualLinear,
    seg: Option<SegHead>,
}

/// The part segmenter: the quarter-resolution grid, reduced and upsampled, joined with the
/// full-resolution features.
struct SegHead {
    reduce: EqualConv2d,
    mid: EqualConv2d,
    out: EqualConv2d,
}

impl JudgeNet {
    /// Builds the network under `p` for the dataset's groups and part count (0: no masks).
    pub fn new(p: &Path, cfg: &JudgeNetConfig, group_sizes: &[i64], parts: i64) -> Self {
        let [a, b, c] = cfg.channels;
        let total: i64 = group_sizes.iter().sum();
        JudgeNet {
            group_sizes: group_sizes.to_vec(),
            grid_channels: c,
            c1a: EqualConv2d::new(p / "c1a", 3, a, 3, true, true),
            c1b: EqualConv2d::new(p / "c1b", a, a, 3, true, true),
            c2a: EqualConv2d::new(p / "c2a", a, b, 3, true, true),
            c2b: EqualConv2d::new(p / "c2b", b, b, 3, true, true),
            c3a: EqualConv2d::new(p / "c3a", b, c, 3, true, true),
            c3b: EqualConv2d::new(p / "c3b", c, c, 3, true, true),
            fc: EqualLinear::new(
                p / "fc",
                c * 16 + parts * (a + 4),
                cfg.hidden,
                1.0,
                0.0,
                true,
            ),
            attr: EqualLinear::new(p / "attr", cfg.hidden, total, 1.0, 0.0, false),
            seg: (parts > 0).then(|| SegHead {
                reduce: EqualConv2d::new(p / "seg_reduce", c, a, 1, true, true),
                mid: EqualConv2d::new(p / "seg_mid", 2 * a, a, 3, true, true),
                out: EqualConv2d::new(p / "seg_out", a, parts, 1, true, false),
            }),
        }
    }

    /// Runs the network on images in [-1, 1].
    pub fn forward(&self, x: &Tensor) -> JudgeOutput {
        let pool = |t: &Tensor| t.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>);
        let f1 = self.c1b.forward(&self.c1a.forward(x));
        let f2 = self.c2b.forward(&self.c2a.forward(&pool(&f1)));
        let grid = self.c3b.forward(&self.c3a.forward(&pool(&f2)));
        // A 4x4 layout, not a global average: which colour sits where (breast vs wing) is
        // the whole question, so the head must see positions.
        let layout = grid.adaptive_avg_pool2d([4, 4]).flatten(1, -1);
        // With a segmenter, the head also sees each part's mean features, mean colour and area
        // (soft, from the predicted part probabilities): "what colour is the breast" becomes
        // nearly linear, which is why the judge learns in a few hundred steps.
        let (features, part_logits) = match &self.seg {
            Some(seg) => {
                let up = upsample2_bilinear(&upsample2_bilinear(&seg.reduce.forward(&grid)));
                let mid = seg.mid.forward(&Tensor::cat(&[up, f1.shallow_clone()], 1));
                let logits = seg.out.forward(&mid);
                let probs = logits.softmax(1, Kind::Float); // [B, K, H, W]
                let area = probs.mean_dim([2i64, 3].as_slice(), false, None); // [B, K]
                let values = Tensor::cat(&[mid, x.shallow_clone()], 1); // [B, a+3, H, W]
                let per_part = probs
                    .flatten(2, -1)
                    .matmul(&values.flatten(2, -1).transpose(1, 2)); // [B, K, a+3]
                let per_part =
                    per_part / (area.unsqueeze(2) * (x.size()[2] * x.size()[3]) as f64 + 1e-3);
                let feats = Tensor::cat(&[layout, per_part.flatten(1, -1), area * 10.0], 1);
                (feats, Some(logits))
            }
            None => (layout, None),
        };
        let embedding = self.fc.forward(&features);
        let attr_logits = self.attr.forward(&embedding);
        JudgeOutput {
            attr_logits,
            part_logits,
            embedding,
            grid,
        }
    }

    /// Number of part labels the segmentation head predicts (0 without one).
    pub fn parts(&self) -> i64 {
        self.seg
            .as_ref()
            .map(|seg| seg.out.weight.size()[0])
            .unwrap_or(0)
    }

    /// Splits concatenated logits into one tensor per group.
    pub fn group_logits(&self, attr_logits: &Tensor) -> Vec<Tensor> {
        attr_logits.split_with_sizes(self.group_sizes.as_slice(), 1)
    }

    /// Mean cross-entropy over groups, ignoring unlabelled (-1) entries.
    pub fn attribute_loss(&self, attr_logits: &Tensor, labels: &Tensor) -> Tensor {
        let mut total = Tensor::zeros([], (Kind::Float, attr_logits.device()));
        for (g, logits) in self.group_logits(attr_logits).iter().enumerate() {
            let target = labels.select(1, g as i64);
            total +=
                logits.cross_entropy_loss::<Tensor>(&target, None, tch::Reduction::Mean, -1, 0.0);
        }
        total / self.group_sizes.len() as f64
    }

    /// Predicted value index per group `[B, groups]`.
    pub fn predict(&self, attr_logits: &Tensor) -> Tensor {
        let preds: Vec<Tensor> = self
            .group_logits(attr_logits)
            .iter()
            .map(|l| l.argmax(1, true))
            .collect();
        Tensor::cat(&preds, 1)
    }
}
