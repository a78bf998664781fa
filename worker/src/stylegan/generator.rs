//! The StyleGAN2 generator: mapping network f: z -> w and synthesis network g: w+ -> image
//! (constant 4x4 input, modulated/demodulated 3x3 convs, per-layer noise, skip toRGB).

use super::NetworkConfig;
use crate::nn::layers::{lrelu, upsample2, EqualLinear, ModConvImpl, ModulatedConv2d};
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

/// Mapping network: normalised z through `mapping_layers` FC layers with lr multiplier 0.01.
pub struct Mapping {
    layers: Vec<EqualLinear>,
}

impl Mapping {
    fn new(p: &Path, cfg: &NetworkConfig) -> Self {
        let layers = (0..cfg.mapping_layers)
            .map(|i| {
                EqualLinear::new(
                    p / format!("fc{i}"),
                    if i == 0 { cfg.z_dim } else { cfg.w_dim },
                    cfg.w_dim,
                    0.01,
                    0.0,
                    true,
                )
            })
            .collect();
        Mapping { layers }
    }

    /// `z: [B, z_dim] -> w: [B, w_dim]`.
    pub fn forward(&self, z: &Tensor) -> Tensor {
        let mut x = z * (z.square().mean_dim(1, true, None) + 1e-8).rsqrt();
        for l in &self.layers {
            x = l.forward(&x);
        }
        x
    }
}

/// Modulated conv + noise + bias + activation.
struct StyledConv {
    conv: ModulatedConv2d,
    noise_strength: Tensor,
    bias: Tensor,
    up: bool,
}

impl StyledConv {
    fn new(p: &Path, in_ch: i64, out_ch: i64, w_dim: i64, up: bool) -> Self {
        StyledConv {
            conv: ModulatedConv2d::new(p / "conv", in_ch, out_ch, 3, w_dim, true),
            noise_strength: p.var("noise_strength", &[1], Init::Const(0.0)),
            bias: p.var("bias", &[out_ch], Init::Const(0.0)),
            up,
        }
    }

    fn forward(&self, x: &Tensor, w: &Tensor, imp: ModConvImpl) -> Tensor {
        let x = if self.up {
            upsample2(x)
        } else {
            x.shallow_clone()
        };
        let y = self.conv.forward(&x, w, imp);
        let s = y.size();
        let noise = Tensor::randn([s[0], 1, s[2], s[3]], (Kind::Float, y.device()));
        lrelu(&(y + noise * &self.noise_strength + self.bias.view([1, -1, 1, 1])))
    }
}

/// 1x1 modulated conv to RGB, without demodulation.
struct ToRgb {
    conv: ModulatedConv2d,
    bias: Tensor,
}

impl ToRgb {
    fn new(p: &Path, in_ch: i64, w_dim: i64) -> Self {
        ToRgb {
            conv: ModulatedConv2d::new(p / "conv", in_ch, 3, 1, w_dim, false),
            bias: p.var("bias", &[3], Init::Const(0.0)),
        }
    }

    fn forward(&self, x: &Tensor, w: &Tensor, skip: Option<&Tensor>, imp: ModConvImpl) -> Tensor {
        let y = self.conv.forward(x, w, imp) + self.bias.view([1, 3, 1, 1]);
        match skip {
            Some(s) => y + upsample2(s),
            None => y,
        }
    }
}

/// One resolution doubling: upsampling conv, conv, toRGB.
struct Block {
    conv0: StyledConv,
    conv1: StyledConv,
    to_rgb: ToRgb,
}

/// The full generator. `w_avg` is the tracked mean of w (for truncation); it is a buffer,
/// not a trained parameter.
pub struct Generator {
    /// Sizes.
    pub cfg: NetworkConfig,
    /// z -> w.
    pub mapping: Mapping,
    constant: Tensor,
    conv1: StyledConv,
    to_rgb1: ToRgb,
    blocks: Vec<Block>,
    /// Running mean of w.
    pub w_avg: Tensor,
    /// Which modulated-conv implementation to run.
    pub modconv: ModConvImpl,
}

impl Generator {
    /// Builds the generator's variables under `p`.
    pub fn new(p: &Path, cfg: &NetworkConfig) -> Self {
        let c4 = cfg.channels(4);
        let mut blocks = Vec::new();
        let mut in_ch = c4;
        for l in 3..=cfg.log2_res() {
            let res = 1u32 << l;
            let out = cfg.channels(res);
            let bp = p / format!("b{res}");
            blocks.push(Block {
                conv0: StyledConv::new(&(&bp / "conv0"), in_ch, out, cfg.w_dim, true),
                conv1: StyledConv::new(&(&bp / "conv1"), out, out, cfg.w_dim, false),
                to_rgb: ToRgb::new(&(&bp / "torgb"), out, cfg.w_dim),
            });
            in_ch = out;
        }
        let b4 = p / "b4";
        let w_avg = p.zeros_no_train("w_avg", &[cfg.w_dim]);
        Generator {
            cfg: cfg.clone(),
            mapping: Mapping::new(&(p / "mapping"), cfg),
            constant: b4.var(
                "const",
                &[1, c4, 4, 4],
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            ),
            conv1: StyledConv::new(&(&b4 / "conv1"), c4, c4, cfg.w_dim, false),
            to_rgb1: ToRgb::new(&(&b4 / "torgb"), c4, cfg.w_dim),
            blocks,
            w_avg,
            modconv: ModConvImpl::Batched,
        }
    }

    /// How many w vectors the synthesis network consumes (W+ has this many copies).
    pub fn num_ws(&self) -> i64 {
        2 * self.blocks.len() as i64 + 2
    }

    /// Truncation towards `w_avg`: `w_avg + psi (w - w_avg)`.
    pub fn truncate(&self, w: &Tensor, psi: f64) -> Tensor {
        if psi == 1.0 {
            return w.shallow_clone();
        }
        &self.w_avg + (w - &self.w_avg) * psi
    }

    /// Synthesis from `ws: [B, num_ws, w_dim]` to images `[B, 3, res, res]` (about [-1, 1]).
    pub fn synthesis(&self, ws: &Tensor) -> Tensor {
        let b = ws.size()[0];
        let w_at = |i: i64| ws.select(1, i);
        let imp = self.modconv;
        let x = self.constant.expand([b, -1, -1, -1], false);
        let mut x = self.conv1.forward(&x, &w_at(0), imp);
        let mut rgb = self.to_rgb1.forward(&x, &w_at(1), None, imp);
        for (i, blk) in self.blocks.iter().enumerate() {
            let k = 1 + 2 * i as i64;
            x = blk.conv0.forward(&x, &w_at(k), imp);
            x = blk.conv1.forward(&x, &w_at(k + 1), imp);
            rgb = blk.to_rgb.forward(&x, &w_at(k + 2), Some(&rgb), imp);
        }
        rgb
    }

    /// Broadcasts `w: [B, w_dim]` to `[B, num_ws, w_dim]`.
    pub fn broadcast(&self, w: &Tensor) -> Tensor {
        w.unsqueeze(1).expand([-1, self.num_ws(), -1], false)
    }

    /// z -> image, with optional truncation.
    pub fn generate(&self, z: &Tensor, psi: f64) -> Tensor {
        let w = self.truncate(&self.mapping.forward(z), psi);
        self.synthesis(&self.broadcast(&w))
    }
}
