//! Differentiable augmentation of every discriminator input (DiffAugment, Zhao et al. 2020):
//! reals, fakes in D's step, fakes in G's step and the reals R1 differentiates through. With a
//! few thousand training images D otherwise memorises them within ~2k steps and G collapses
//! (ml.md §2). Every op is built from indexing, masking and arithmetic, so it supports the
//! double backward that R1 needs (grid sampling does not). Randomness comes from torch's
//! generator, which the training loop reseeds every step, so resumes stay exact.

use plume_jobs::AugmentConfig;
use tch::{Kind, Tensor};

/// Applies the configured ops to `x: [B, C, H, W]`, independently per sample.
pub fn diff_augment(x: &Tensor, cfg: &AugmentConfig) -> Tensor {
    let mut x = x.shallow_clone();
    if cfg.colour {
        x = colour(&x);
    }
    if cfg.translation > 0.0 {
        x = translate(&x, cfg.translation);
    }
    if cfg.cutout > 0.0 {
        x = cutout(&x, cfg.cutout);
    }
    x
}

/// Brightness (±0.5), saturation (×0..2) and contrast (×0.5..1.5), per sample.
fn colour(x: &Tensor) -> Tensor {
    let b = x.size()[0];
    let opts = (Kind::Float, x.device());
    let x = x + (Tensor::rand([b, 1, 1, 1], opts) - 0.5);
    let mean = x.mean_dim(1, true, None);
    let x = (&x - &mean) * (Tensor::rand([b, 1, 1, 1], opts) * 2.0) + &mean;
    let mean = x.mean_dim([1i64, 2, 3].as_slice(), true, None);
    (&x - &mean) * (Tensor::rand([b, 1, 1, 1], opts) + 0.5) + &mean
}

/// Integer shifts of up to `ratio` of the side in each axis, zero-filled.
fn translate(x: &Tensor, ratio: f64) -> Tensor {
    let [b, _, h, w] = x.size()[..] else {
        unreachable!("[B, C, H, W]")
    };
    let dev = x.device();
    let (sh, sw) = (
        ((h as f64 * ratio + 0.5) as i64).max(1),
        ((w as f64 * ratio + 0.5) as i64).max(1),
    );
    let ty = Tensor::randint_low(-sh, sh + 1, [b, 1, 1], (Kind::Int64, dev));
    let tx = Tensor::randint_low(-sw, sw + 1, [b, 1, 1], (Kind::Int64, dev));
    let gb = Tensor::arange(b, (Kind::Int64, dev))
        .view([b, 1, 1])
        .expand([b, h, w], false);
    // Index into a copy padded by one zero pixel; shifts past the edge land on the padding.
    let gy = (Tensor::arange(h, (Kind::Int64, dev)).view([1, h, 1]) + ty + 1)
        .clamp(0, h + 1)
        .expand([b, h, w], false);
    let gx = (Tensor::arange(w, (Kind::Int64, dev)).view([1, 1, w]) + tx + 1)
        .clamp(0, w + 1)
        .expand([b, h, w], false);
    let padded = x.constant_pad_nd([1, 1, 1, 1]).permute([0, 2, 3, 1]); // [B, H+2, W+2, C]
    padded
        .index(&[Some(gb), Some(gy), Some(gx)])
        .permute([0, 3, 1, 2])
}

/// Zeroes one square of side `ratio` of the image at a random place per sample.
fn cutout(x: &Tensor, ratio: f64) -> Tensor {
    let [b, _, h, w] = x.size()[..] else {
        unreachable!("[B, C, H, W]")
    };
    let dev = x.device();
    let (ch, cw) = (
        (h as f64 * ratio + 0.5) as i64,
        (w as f64 * ratio + 0.5) as i64,
    );
    let cy = Tensor::randint(h + (1 - ch % 2), [b, 1, 1], (Kind::Int64, dev)) - ch / 2;
    let cx = Tensor::randint(w + (1 - cw % 2), [b, 1, 1], (Kind::Int64, dev)) - cw / 2;
    let yy = Tensor::arange(h, (Kind::Int64, dev)).view([1, h, 1]);
    let xx = Tensor::arange(w, (Kind::Int64, dev)).view([1, 1, w]);
    let inside_y = yy.ge_tensor(&cy).logical_and(&yy.lt_tensor(&(&cy + ch)));
    let inside_x = xx.ge_tensor(&cx).logical_and(&xx.lt_tensor(&(&cx + cw)));
    let keep = inside_y
        .logical_and(&inside_x)
        .logical_not()
        .to_kind(x.kind());
    x * keep.unsqueeze(1)
}

/// Mirrors a random half of the batch left-right (the reals' x-flip; not differentiable
/// because nothing needs gradients of the dataset).
pub fn random_xflip(x: &Tensor) -> Tensor {
    let b = x.size()[0];
    let flip = Tensor::rand([b, 1, 1, 1], (Kind::Float, x.device())).lt(0.5);
    x.flip([3]).where_self(&flip, x)
}
