//! The StyleGAN2 residual discriminator with minibatch standard deviation.

use super::NetworkConfig;
use crate::nn::layers::{downsample2, EqualConv2d, EqualLinear};
use tch::nn::Path;
use tch::Tensor;

struct ResBlock {
    conv0: EqualConv2d,
    conv1: EqualConv2d,
    skip: EqualConv2d,
}

impl ResBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let skip = self.skip.forward(&downsample2(x));
        let y = self.conv0.forward(x);
        let y = downsample2(&self.conv1.forward(&y));
        (y + skip) * std::f64::consts::FRAC_1_SQRT_2
    }
}

/// D: image -> realness logit.
pub struct Discriminator {
    from_rgb: EqualConv2d,
    blocks: Vec<ResBlock>,
    mbstd_group: i64,
    conv: EqualConv2d,
    fc: EqualLinear,
    out: EqualLinear,
}

impl Discriminator {
    /// Builds D's variables under `p`.
    pub fn new(p: &Path, cfg: &NetworkConfig) -> Self {
        let top = cfg.resolution;
        let mut blocks = Vec::new();
        let mut res = top;
        while res > 4 {
            let (cin, cout) = (cfg.channels(res), cfg.channels(res / 2));
            let bp = p / format!("b{res}");
            blocks.push(ResBlock {
                conv0: EqualConv2d::new(&bp / "conv0", cin, cin, 3, true, true),
                conv1: EqualConv2d::new(&bp / "conv1", cin, cout, 3, true, true),
                skip: EqualConv2d::new(&bp / "skip", cin, cout, 1, false, false),
            });
            res /= 2;
        }
        let c4 = cfg.channels(4);
        Discriminator {
            from_rgb: EqualConv2d::new(
                p / format!("b{top}") / "fromrgb",
                3,
                cfg.channels(top),
                1,
                true,
                true,
            ),
            blocks,
            mbstd_group: 4,
            conv: EqualConv2d::new(p / "b4" / "conv", c4 + 1, c4, 3, true, true),
            fc: EqualLinear::new(p / "b4" / "fc", c4 * 16, c4, 1.0, 0.0, true),
            out: EqualLinear::new(p / "b4" / "out", c4, 1, 1.0, 0.0, false),
        }
    }

    /// Appends the standard deviation over groups of samples as one extra channel, so D can
    /// see a lack of variety (mode collapse).
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
        let mut x = self.from_rgb.forward(img);
        for b in &self.blocks {
            x = b.forward(&x);
        }
        let x = self.conv.forward(&self.minibatch_stddev(&x));
        let x = self.fc.forward(&x.flatten(1, -1));
        self.out.forward(&x).squeeze_dim(1)
    }
}
