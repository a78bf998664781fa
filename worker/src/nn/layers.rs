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

/// How the modulated conv is computed; both give the same result (tested).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModConvImpl {
    /// The textbook form: per-sample weights, one grouped conv with `groups = batch`.
    Grouped,
    /// Scale activations instead of weights: `conv(x * s, W) * d`. One dense conv for the
    /// whole batch, which is several times faster on CPU; NVlabs uses it during training.
    Batched,
}

/// StyleGAN2's modulated convolution with optional demodulation.
pub struct ModulatedConv2d {
    /// `[out, in, k, k]`, N(0, 1).
    pub weight: Tensor,
    /// Affine map from w to the per-input-channel styles (bias initialised to 1).
    pub modulation: EqualLinear,
    weight_gain: f64,
    demodulate: bool,
}

impl ModulatedConv2d {
    /// A modulated conv `in_ch -> out_ch` with a `k x k` kernel, styled from `w_dim`.
    pub fn new<'a>(
        p: impl Borrow<Path<'a>>,
        in_ch: i64,
        out_ch: i64,
        k: i64,
        w_dim: i64,
        demodulate: bool,
    ) -> Self {
        let p = p.borrow();
        ModulatedConv2d {
            weight: p.var(
                "weight",
                &[out_ch, in_ch, k, k],
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            ),
            modulation: EqualLinear::new(p / "modulation", w_dim, in_ch, 1.0, 1.0, false),
            weight_gain: 1.0 / ((in_ch * k * k) as f64).sqrt(),
            demodulate,
        }
    }

    /// Per-sample styles `[B, in]` for latents `[B, w_dim]`.
    pub fn styles(&self, w: &Tensor) -> Tensor {
        self.modulation.forward(w)
    }

    /// `x: [B, in, H, W]`, `w: [B, w_dim]` -> `[B, out, H, W]`.
    pub fn forward(&self, x: &Tensor, w: &Tensor, imp: ModConvImpl) -> Tensor {
        let styles = self.styles(w);
        self.forward_styles(x, &styles, imp)
    }

    /// The convolution for given styles `[B, in]`.
    pub fn forward_styles(&self, x: &Tensor, styles: &Tensor, imp: ModConvImpl) -> Tensor {
        let [o, i, k, _] = self.weight.size()[..] else {
            unreachable!("4-d weight")
        };
        let [b, _, h, w] = x.size()[..] else {
            panic!("modulated conv expects [B, C, H, W], got {:?}", x.size())
        };
        flops::add(2.0 * (b * h * w * o * i * k * k) as f64);
        let pad = k / 2;
        let weight = &self.weight * self.weight_gain;
        match imp {
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
                let y = x.reshape([1, b * i, h, w]).conv2d(
                    &wgt.reshape([b * o, i, k, k]),
                    None::<Tensor>,
                    [1, 1],
                    [pad, pad],
                    [1, 1],
                    b,
                );
                y.reshape([b, o, h, w])
            }
            ModConvImpl::Batched => {
                let y = (x * styles.view([b, i, 1, 1])).conv2d(
                    &weight,
                    None::<Tensor>,
                    [1, 1],
                    [pad, pad],
                    [1, 1],
                    1,
                );
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
        }
    }
}

/// Bilinear x2 upsampling: the separable [1, 3, 3, 1]/4 filter of StyleGAN2's upfirdn.
pub fn upsample2(x: &Tensor) -> Tensor {
    let s = x.size();
    x.upsample_bilinear2d([s[2] * 2, s[3] * 2], false, None, None)
}

/// 2x2 average-pool downsampling.
pub fn downsample2(x: &Tensor) -> Tensor {
    x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>)
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
