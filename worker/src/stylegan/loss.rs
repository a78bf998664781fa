//! StyleGAN2's losses and regularisers (NVlabs `training/loss.py`, StyleGAN2Loss), and the
//! EMA rule for the averaged generator.

use tch::Tensor;

/// Non-saturating generator loss: softplus(-D(G(z))).
pub fn generator_loss(fake_logits: &Tensor) -> Tensor {
    (-fake_logits).softplus().mean(None)
}

/// Logistic discriminator loss: softplus(D(G(z))) + softplus(-D(x)).
pub fn discriminator_loss(real_logits: &Tensor, fake_logits: &Tensor) -> Tensor {
    fake_logits.softplus().mean(None) + (-real_logits).softplus().mean(None)
}

/// The R1 gradient penalty E[|grad_x D(x)|^2] on real images (Mescheder et al. 2018), without
/// the gamma/2 factor. `real` must require grad and `logits = D(real)`. The graph is kept so
/// the penalty can itself be differentiated.
pub fn r1_penalty(real: &Tensor, logits: &Tensor) -> Tensor {
    let grads = Tensor::run_backward(&[logits.sum(None)], &[real], true, true);
    grads[0]
        .square()
        .sum_dim_intlist([1i64, 2, 3].as_slice(), false, None)
        .mean(None)
}

/// Path-length regulariser: lengths |J_w^T y| for random image-space y, and the penalty
/// against the running mean `pl_mean` (updated in place with decay 0.01).
pub fn path_length_penalty(images: &Tensor, ws: &Tensor, pl_mean: &mut Tensor) -> Tensor {
    let s = images.size();
    let noise = images.randn_like() / ((s[2] * s[3]) as f64).sqrt();
    let grads = Tensor::run_backward(&[(images * noise).sum(None)], &[ws], true, true);
    let lengths = grads[0]
        .square()
        .sum_dim_intlist([2i64].as_slice(), false, None)
        .mean_dim(1, false, None)
        .sqrt();
    let mean_now = lengths.mean(None).detach();
    let updated = &*pl_mean + (mean_now - &*pl_mean) * 0.01;
    tch::no_grad(|| pl_mean.copy_(&updated));
    (lengths - &*pl_mean).square().mean(None)
}

/// EMA decay for one step: the averaged weights have a half-life of `half_life_images`
/// training images, ramped up early in training (`rampup` x images seen so far).
pub fn ema_beta(batch: i64, images_seen: i64, half_life_images: f64, rampup: f64) -> f64 {
    let mut half_life = half_life_images;
    if rampup > 0.0 {
        half_life = half_life.min(images_seen as f64 * rampup);
    }
    0.5f64.powf(batch as f64 / half_life.max(1e-8))
}

/// `ema <- beta * ema + (1 - beta) * param` for each pair.
pub fn ema_update(ema: &[(String, Tensor)], params: &[(String, Tensor)], beta: f64) {
    tch::no_grad(|| {
        for ((_, e), (_, p)) in ema.iter().zip(params) {
            let updated = p + (e - p) * beta;
            e.shallow_clone().copy_(&updated);
        }
    });
}
