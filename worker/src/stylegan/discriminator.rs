//! The StyleGAN2 residual discriminator with minibatch standard deviation, computing the same
//! function as rosinality's `model.py` `Discriminator` (downsampling by the [1, 3, 3, 1] blur
//! and a stride-2 conv), with that module's `state_dict()` names and shapes
//! (`convs.0.0.weight`, `convs.1.conv2.1.weight`, `final_linear.1.bias`, ...).

use super::NetworkConfig;
use crate::nn::layers::{blur_kernel, flops, lrelu, upfirdn2d, EqualLinear};
use tch::nn::{Init, Path};
use tch::Tensor;

/// rosinality's `ConvLayer`: optional blur + stride-2 downsampling, an equalized-lr conv, and
/// a fused bias + leaky ReLU. As an `nn.Sequential` its parts are numbered: `0` is the blur when
/// downsampling (a constant, not stored here), then the conv, then the activation's bias.
struct ConvLayer {
    weight: Tensor,
    /// The bias of the fused activation (or none: the 1x1 skip convs).
    bias: Option<Tensor>,
    weight_gain: f64,
    down_blur: Option<Tensor>,
}

impl ConvLayer {
    fn new(p: &Path, in_ch: i64, out_ch: i64, k: i64, down: bool, activate: bool) -> Self {
        let first = i64::from(down);
        ConvLayer {
            weight: (p / first).var(
                "weight",
                &[out_ch, in_ch, k, k],
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            ),
            bias: activate.then(|| (p / (first + 1)).var("bias", &[out_ch], Init::Const(0.0))),
            weight_gain: 1.0 / ((in_ch * k * k) as f64).sqrt(),
            down_blur: down.then(|| blur_kernel(1.0, p.device())),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let k = self.weight.size()[2];
        let (x, stride, pad) = match &self.down_blur {
            Some(kernel) => {
                // rosinality: p = (4 - 2) + (k - 1), padded ((p + 1) / 2, p / 2).
                let p = 2 + (k - 1);
                (upfirdn2d(x, kernel, 1, 1, ((p + 1) / 2, p / 2)), 2, 0)
            }
            None => (x.shallow_clone(), 1, k / 2),
        };
        let ws = self.weight.size();
        let xs = x.size();
        flops::add(
            2.0 * (xs[0] * xs[2] * xs[3] * ws[0] * ws[1] * ws[2] * ws[3]) as f64
                / (stride * stride) as f64,
        );
        let y = x.conv2d(
            &(&self.weight * self.weight_gain),
            None::<Tensor>,
            [stride, stride],
            [pad, pad],
            [1, 1],
            1,
        );
        match &self.bias {
            Some(b) => lrelu(&(y + b.view([1, -1, 1, 1]))),
            None => y,
        }
    }
}

struct ResBlock {
    conv1: ConvLayer,
    conv2: ConvLayer,
    skip: ConvLayer,
}

impl ResBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.conv2.forward(&self.conv1.forward(x));
        (y + self.skip.forward(x)) * std::f64::consts::FRAC_1_SQRT_2
    }
}

/// D: image -> realness logit.
pub struct Discriminator {
    from_rgb: ConvLayer,
    blocks: Vec<ResBlock>,
    mbstd_group: i64,
    final_conv: ConvLayer,
    fc: EqualLinear,
    out: EqualLinear,
}

impl Discriminator {
    /// Builds D's variables under `p`.
    pub fn new(p: &Path, cfg: &NetworkConfig) -> Self {
        let convs = p / "convs";
        let top = cfg.resolution;
        let mut blocks = Vec::new();
        let mut res = top;
        while res > 4 {
            let (cin, cout) = (cfg.channels(res), cfg.channels(res / 2));
            let bp = &convs / (blocks.len() + 1);
            blocks.push(ResBlock {
                conv1: ConvLayer::new(&(&bp / "conv1"), cin, cin, 3, false, true),
                conv2: ConvLayer::new(&(&bp / "conv2"), cin, cout, 3, true, true),
                skip: ConvLayer::new(&(&bp / "skip"), cin, cout, 1, true, false),
            });
            res /= 2;
        }
        let c4 = cfg.channels(4);
        Discriminator {
            from_rgb: ConvLayer::new(&(&convs / 0), 3, cfg.channels(top), 1, false, true),
            blocks,
            mbstd_group: 4,
            final_conv: ConvLayer::new(&(p / "final_conv"), c4 + 1, c4, 3, false, true),
            fc: EqualLinear::new(p / "final_linear" / 0, c4 * 16, c4, 1.0, 0.0, true),
            out: EqualLinear::new(p / "final_linear" / 1, c4, 1, 1.0, 0.0, false),
        }
    }

    /// Appends the standard deviation over groups of samples as one extra channel, so D can
    /// see a lack of variety (mode collapse). Sample `j` is grouped with `j ± B/g` (the
    /// reference's `view(group, -1, ...)`); a batch the group size does not divide uses one
    /// group per sample instead of failing.
    fn minibatch_stddev(&self, x: &Tensor) -> Tensor {
        let [b, c, h, w] = x.size()[..] else {
            unreachable!()
        };
        let g = self.mbstd_group.min(b);
        let g = if b % g == 0 { g } else { 1 };
        let y = x.reshape([g, b / g, c, h, w]);
        let y = (y.var_dim(0, false, false) + 1e-8).sqrt(); // [b/g, c, h, w]
        let y = y.mean_dim([1i64, 2, 3].as_slice(), false, None); // [b/g]
        let y = y
            .view([1, b / g, 1, 1, 1])
            .expand([g, b / g, 1, h, w], false)
            .reshape([b, 1, h, w]);
        Tensor::cat(&[x.shallow_clone(), y], 1)
    }

    /// `[B, 3, res, res] -> [B]` logits.
    pub fn forward(&self, img: &Tensor) -> Tensor {
        self.forward_with_features(img).0
    }

    /// The logits and the features under them (`[B, channels(4)]`, after the first linear
    /// layer), which an auxiliary head can read.
    pub fn forward_with_features(&self, img: &Tensor) -> (Tensor, Tensor) {
        let mut x = self.from_rgb.forward(img);
        for b in &self.blocks {
            x = b.forward(&x);
        }
        let x = self.final_conv.forward(&self.minibatch_stddev(&x));
        let features = self.fc.forward(&x.flatten(1, -1));
        (self.out.forward(&features).squeeze_dim(1), features)
    }
}
