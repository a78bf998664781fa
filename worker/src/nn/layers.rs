//! StyleGAN2's building blocks (Karras et al. 2020): equalized-learning-rate layers and the
//! modulated + demodulated convolution.
//!
//! Equalized learning rate: weights are stored N(0, 1) (divided by the lr multiplier) and
//! scaled by He's constant at run time, so Adam sees every layer at the same scale.

use std::borrow::Borrow;
use tch::nn::{Init, Path};
use tch::Tensor;

/// Gain that keeps leaky-ReLU(0.2) activations at unit variance (StyleGAN uses sqrt(2)).
pub const ACT_GAIN: f64 = std::f64::consts::SQRT_2;

/// Leaky ReLU with slope 0.2, scaled by [`ACT_GAIN`].
pub fn lrelu(x: &Tensor) -> Tensor {
    x.maximum(&(x * 0.2)) * ACT_GAIN
}

/// Forward FLOPs counted by layers (multiply-add = 2), for the benchmark's FLOP/s column.
pub mod flops {
    use std::cell::Cell;
    thread_local!(static COUNTER: Cell<Option<f64>> = const { Cell::new(None) });
    /// Starts counting on this thread.
    pub fn start() {
        COUNTER.with(|c| c.set(Some(0.0)));
    }
    /// Stops counting and returns the total.
    pub fn stop() -> f64 {
        COUNTER.with(|c| c.take().unwrap_or(0.0))
    }
    /// Adds to the count if counting.
    pub fn add(n: f64) {
        COUNTER.with(|c| {
            if let Some(v) = c.get() {
                c.set(Some(v + n))
            }
        });
    }
}

/// A fully connected layer with equalized learning rate and an optional fused activation.
pub struct EqualLinear {
    /// `[out, in]`, stored as N(0,1)/lr_mul.
    pub weight: Tensor,
    /// `[out]`, stored as bias_init/lr_mul.
    pub bias: Tensor,
    weight_gain: f64,
    lr_mul: f64,
    activate: bool,
}

impl EqualLinear {
    /// A layer `in_dim -> out_dim`; `bias_init` is the bias's effective initial value.
    pub fn new<'a>(
        p: impl Borrow<Path<'a>>,
        in_dim: i64,
        out_dim: i64,
        lr_mul: f64,
        bias_init: f64,
        activate: bool,
    ) -> Self {
        let p = p.borrow();
        EqualLinear {
            weight: p.var(
                "weight",
                &[out_dim, in_dim],
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0 / lr_mul,
                },
            ),
            bias: p.var("bias", &[out_dim], Init::Const(bias_init / lr_mul)),
            weight_gain: lr_mul / (in_dim as f64).sqrt(),
            lr_mul,
            activate,
        }
    }

    /// `x: [B, in] -> [B, out]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let s = self.weight.size();
        flops::add(2.0 * (x.size()[0] * s[0] * s[1]) as f64);
        let y = x.linear(
            &(&self.weight * self.weight_gain),
            Some(&(&self.bias * self.lr_mul)),
        );
        if self.activate {
            lrelu(&y)
        } else {
            y
        }
    }
}

/// A k x k convolution with equalized learning rate (discriminator and judges' convs).
pub struct EqualConv2d {
    /// `[out, in, k, k]`.
    pub weight: Tensor,
    /// `[out]`, if any.
    pub bias: Option<Tensor>,
    weight_gain: f64,
    activate: bool,
}

impl EqualConv2d {
    /// A conv `in_ch -> out_ch` with a `k x k` kernel and "same" padding.
    pub fn new<'a>(
        p: impl Borrow<Path<'a>>,
        in_ch: i64,
        out_ch: i64,
        k: i64,
        bias: bool,
        activate: bool,
    ) -> Self {
        let p = p.borrow();
        EqualConv2d {
            weight: p.var(
                "weight",
                &[out_ch, in_ch, k, k],
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            ),
            bias: bias.then(|| p.var("bias", &[out_ch], Init::Const(0.0))),
            weight_gain: 1.0 / ((in_ch * k * k) as f64).sqrt(),
            activate,
        }
    }

    /// `[B, in, H, W] -> [B, out, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let ws = self.weight.size();
        let xs = x.size();
        flops::add(2.0 * (xs[0] * xs[2] * xs[3] * ws[0] * ws[1] * ws[2] * ws[3]) as f64);
        let pad = ws[2] / 2;
        let y = x.conv2d(
            &(&self.weight * self.weight_gain),
            self.bias.as_ref(),
            [1, 1],
            [pad, pad],
            [1, 1],
            1,
        );
        if self.activate {
            lrelu(&y)
        } else {
            y
        }
    }
}

/// How the modulated conv is computed; both give the same result (tested against the
/// reference fixture).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModConvImpl {
    /// The reference form (rosinality's fused path): per-sample weights, one grouped conv
    /// with `groups = batch`.
    Grouped,
    /// Scale activations instead of weights: `conv(x * s, W) * d`. One dense conv for the
    /// whole batch, several times faster on CPU; NVlabs and rosinality's non-fused path.
    Batched,
}

/// The normalised outer product of StyleGAN2's [1, 3, 3, 1] filter, times `gain`
/// (`factor^2` when it follows an upsampling, so the zeros inserted do not dim the image).
pub fn blur_kernel(gain: f64, device: tch::Device) -> Tensor {
    let k = Tensor::from_slice(&[1f32, 3., 3., 1.]).to_device(device);
    let k2 = k.unsqueeze(1).matmul(&k.unsqueeze(0));
    &k2 / k2.sum(tch::Kind::Float) * gain
}

/// `upfirdn2d` as rosinality and NVlabs define it: insert `up - 1` zeros after every pixel,
/// pad by `pad = (before, after)` on both axes, convolve each channel with `kernel`
/// (`[kh, kw]`, flipped as a true convolution), keep every `down`-th pixel.
pub fn upfirdn2d(x: &Tensor, kernel: &Tensor, up: i64, down: i64, pad: (i64, i64)) -> Tensor {
    let [b, c, h, w] = x.size()[..] else {
        panic!("upfirdn2d expects [B, C, H, W], got {:?}", x.size())
    };
    let mut y = x.shallow_clone();
    let (mut h, mut w) = (h, w);
    if up > 1 {
        y = y
            .reshape([b, c, h, 1, w, 1])
            .constant_pad_nd([0, up - 1, 0, 0, 0, up - 1])
            .reshape([b, c, h * up, w * up]);
        h *= up;
        w *= up;
    }
    y = y.constant_pad_nd([pad.0, pad.1, pad.0, pad.1]);
    let [kh, kw] = kernel.size()[..] else {
        panic!("upfirdn2d expects a 2-d kernel")
    };
    flops::add(
        2.0 * (b * c * (h + pad.0 + pad.1) * (w + pad.0 + pad.1) * kh * kw) as f64
            / (down * down) as f64,
    );
    // One depthwise conv (groups = channels): much faster on CPU than a conv over
    // `[B*C, 1, H, W]`, which libtorch runs through its slow single-channel path.
    let k = kernel
        .flip([0, 1])
        .to_kind(x.kind())
        .view([1, 1, kh, kw])
        .expand([c, 1, kh, kw], false);
    y.conv2d(&k, None::<Tensor>, [down, down], [0, 0], [1, 1], c)
}

/// StyleGAN2's modulated convolution with optional demodulation and optional 2x
/// upsampling (transposed conv, then the [1, 3, 3, 1] blur), exactly as rosinality's
/// `ModulatedConv2d` (variable names and shapes included, so its checkpoints load as they are).
pub struct ModulatedConv2d {
    /// `[1, out, in, k, k]`, N(0, 1).
    pub weight: Tensor,
    /// Affine map from w to the per-input-channel styles (bias initialised to 1).
    pub modulation: EqualLinear,
    weight_gain: f64,
    demodulate: bool,
    /// The blur after the transposed conv, when upsampling (a constant, not a variable).
    up_blur: Option<Tensor>,
}

impl ModulatedConv2d {
    /// A modulated conv `in_ch -> out_ch` with a `k x k` kernel, styled from `w_dim`,
    /// doubling the resolution when `up`.
    pub fn new<'a>(
        p: impl Borrow<Path<'a>>,
        in_ch: i64,
        out_ch: i64,
        k: i64,
        w_dim: i64,
        demodulate: bool,
        up: bool,
    ) -> Self {
        let p = p.borrow();
        ModulatedConv2d {
            weight: p.var(
                "weight",
                &[1, out_ch, in_ch, k, k],
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            ),
            modulation: EqualLinear::new(p / "modulation", w_dim, in_ch, 1.0, 1.0, false),
            weight_gain: 1.0 / ((in_ch * k * k) as f64).sqrt(),
            demodulate,
            up_blur: up.then(|| blur_kernel(4.0, p.device())),
        }
    }

    /// Per-sample styles `[B, in]` for latents `[B, w_dim]`.
    pub fn styles(&self, w: &Tensor) -> Tensor {
        self.modulation.forward(w)
    }

    /// `x: [B, in, H, W]`, `w: [B, w_dim]` -> `[B, out, H, W]` (`2H, 2W` when upsampling).
    pub fn forward(&self, x: &Tensor, w: &Tensor, imp: ModConvImpl) -> Tensor {
        let styles = self.styles(w);
        self.forward_styles(x, &styles, imp)
    }

    /// The convolution for given styles `[B, in]`.
    pub fn forward_styles(&self, x: &Tensor, styles: &Tensor, imp: ModConvImpl) -> Tensor {
        let [_, o, i, k, _] = self.weight.size()[..] else {
            unreachable!("5-d weight")
        };
        let [b, _, h, w] = x.size()[..] else {
            panic!("modulated conv expects [B, C, H, W], got {:?}", x.size())
        };
        let up = self.up_blur.is_some();
        // A transposed conv does the same multiply-adds per input pixel as a plain one.
        flops::add(2.0 * (b * h * w * o * i * k * k) as f64);
        let pad = k / 2;
        let weight = self.weight.squeeze_dim(0) * self.weight_gain; // [out, in, k, k]
        let y = match imp {
            ModConvImpl::Grouped => {
                // [B, out, in, k, k]
                let mut wgt = weight.unsqueeze(0) * styles.view([b, 1, i, 1, 1]);
                if self.demodulate {
                    let d = (wgt
                        .square()
                        .sum_dim_intlist([2i64, 3, 4].as_slice(), true, None)
                        + 1e-8)
                        .rsqrt();
                    wgt *= d;
                }
                let x = x.reshape([1, b * i, h, w]);
                let y = if up {
                    // Transposed conv wants [in, out, k, k] per group.
                    conv_transpose_x2(&x, &wgt.transpose(1, 2).reshape([b * i, o, k, k]), b)
                } else {
                    x.conv2d(
                        &wgt.reshape([b * o, i, k, k]),
                        None::<Tensor>,
                        [1, 1],
                        [pad, pad],
                        [1, 1],
                        b,
                    )
                };
                let s = y.size();
                y.reshape([b, o, s[2], s[3]])
            }
            ModConvImpl::Batched => {
                let xs = x * styles.view([b, i, 1, 1]);
                let y = if up {
                    conv_transpose_x2(&xs, &weight.transpose(0, 1), 1)
                } else {
                    xs.conv2d(&weight, None::<Tensor>, [1, 1], [pad, pad], [1, 1], 1)
                };
                if self.demodulate {
                    // sum_{i,kh,kw} (W s)^2 = s^2 . sum_{kh,kw} W^2
                    let wsq = weight
                        .square()
                        .sum_dim_intlist([2i64, 3].as_slice(), false, None); // [out, in]
                    let d = (styles.square().matmul(&wsq.tr()) + 1e-8).rsqrt(); // [B, out]
                    y * d.view([b, o, 1, 1])
                } else {
                    y
                }
            }
        };
        match &self.up_blur {
            // rosinality: p = (4 - 2) - (k - 1); pad = ((p + 1) / 2 + 1, p / 2 + 1).
            Some(kernel) => {
                let p = (4 - 2) - (k - 1);
                upfirdn2d(
                    &y,
                    kernel,
                    1,
                    1,
                    ((p + 1).div_euclid(2) + 1, p.div_euclid(2) + 1),
                )
            }
            None => y,
        }
    }
}

/// The stride-2 transposed conv of an upsampling modulated conv (no padding: the blur after it
/// crops back to exactly twice the size).
fn conv_transpose_x2(x: &Tensor, weight: &Tensor, groups: i64) -> Tensor {
    x.conv_transpose2d(
        weight,
        None::<Tensor>,
        [2, 2],
        [0, 0],
        [0, 0],
        groups,
        [1, 1],
    )
}

/// StyleGAN2's 2x upsampling (toRGB skips): zero insertion and the [1, 3, 3, 1] filter.
pub fn upsample2(x: &Tensor) -> Tensor {
    upfirdn2d(x, &blur_kernel(4.0, x.device()), 2, 1, (2, 1))
}

/// Bilinear x2 upsampling (the judge's segmentation head).
pub fn upsample2_bilinear(x: &Tensor) -> Tensor {
    let s = x.size();
    x.upsample_bilinear2d([s[2] * 2, s[3] * 2], false, None, None)
}

/// Resizes square images `[B, C, H, H]` to `res` pixels (bilinear); a no-op at that size.
/// Used where one network looks at another's images (judge on generator output).
pub fn resize_square(img: &Tensor, res: i64) -> Tensor {
    if img.size()[2] == res {
        img.shallow_clone()
    } else {
        img.upsample_bilinear2d([res, res], false, None, None)
    }
}
