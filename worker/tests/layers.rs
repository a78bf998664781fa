//! StyleGAN2's building blocks against their definitions.

use plume_worker::nn::layers::{EqualConv2d, EqualLinear, ModConvImpl, ModulatedConv2d};
use plume_worker::stylegan::discriminator::Discriminator;
use plume_worker::stylegan::loss::{ema_beta, ema_update, r1_penalty};
use plume_worker::stylegan::NetworkConfig;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// The textbook per-sample modulated convolution: scale the weight by the sample's styles,
/// demodulate, convolve that one sample.
fn reference_modconv(conv: &ModulatedConv2d, x: &Tensor, styles: &Tensor, demod: bool) -> Tensor {
    let [_, o, i, k, _] = conv.weight.size()[..] else {
        unreachable!()
    };
    let weight = conv.weight.squeeze_dim(0);
    let gain = 1.0 / ((i * k * k) as f64).sqrt();
    let outs: Vec<Tensor> = (0..x.size()[0])
        .map(|b| {
            let mut w = &weight * gain * styles.get(b).view([1, i, 1, 1]);
            if demod {
                let d = (w
                    .square()
                    .sum_dim_intlist([1i64, 2, 3].as_slice(), true, None)
                    + 1e-8)
                    .rsqrt();
                w *= d;
            }
            assert_eq!(w.size(), vec![o, i, k, k]);
            x.get(b)
                .unsqueeze(0)
                .conv2d(&w, None::<Tensor>, [1, 1], [k / 2, k / 2], [1, 1], 1)
        })
        .collect();
    Tensor::cat(&outs, 0)
}

#[test]
fn grouped_and_batched_modconv_equal_the_per_sample_reference() {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    for (k, demod) in [(3, true), (1, false), (3, false)] {
        let conv = ModulatedConv2d::new(
            vs.root() / format!("c{k}{demod}"),
            12,
            10,
            k,
            16,
            demod,
            false,
        );
        let x = Tensor::randn([5, 12, 9, 9], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([5, 16], (Kind::Float, Device::Cpu));
        let styles = conv.styles(&w);
        let reference = reference_modconv(&conv, &x, &styles, demod);
        for imp in [ModConvImpl::Grouped, ModConvImpl::Batched] {
            let y = conv.forward(&x, &w, imp);
            assert_eq!(y.size(), reference.size());
            let err = max_abs_diff(&y, &reference);
            assert!(err < 1e-4, "{imp:?} k={k} demod={demod}: max diff {err}");
        }
    }
}

#[test]
fn demodulated_outputs_have_unit_variance() {
    tch::manual_seed(1);
    let vs = VarStore::new(Device::Cpu);
    let conv = ModulatedConv2d::new(vs.root() / "c", 64, 64, 3, 32, true, false);
    let x = Tensor::randn([16, 64, 18, 18], (Kind::Float, Device::Cpu));
    // Styles far from 1, so demodulation has something to undo.
    let w = Tensor::randn([16, 32], (Kind::Float, Device::Cpu)) * 3.0;
    for imp in [ModConvImpl::Grouped, ModConvImpl::Batched] {
        let y = conv.forward(&x, &w, imp).narrow(2, 1, 16).narrow(3, 1, 16); // interior: no padding
        let var = y.var(true).double_value(&[]);
        assert!((var - 1.0).abs() < 0.05, "{imp:?}: variance {var}");
    }
    // Without demodulation the variance follows the styles instead.
    let plain = ModulatedConv2d::new(vs.root() / "p", 64, 64, 3, 32, false, false);
    let var = plain
        .forward(&x, &w, ModConvImpl::Batched)
        .narrow(2, 1, 16)
        .narrow(3, 1, 16)
        .var(true)
        .double_value(&[]);
    assert!(
        var > 2.0,
        "undemodulated variance {var} should reflect the large styles"
    );
}

#[test]
fn equalized_learning_rate_scales_weights_at_run_time() {
    tch::manual_seed(2);
    let vs = VarStore::new(Device::Cpu);
    let lin = EqualLinear::new(vs.root() / "fc", 512, 256, 0.01, 0.0, false);
    // Stored N(0, 1/lr_mul^2): Adam's steps are lr_mul times smaller in effect (mapping net).
    let stored_std = lin.weight.std(true).double_value(&[]);
    assert!((stored_std - 100.0).abs() < 2.0, "stored std {stored_std}");
    let x = Tensor::randn([256, 512], (Kind::Float, Device::Cpu));
    let y = lin.forward(&x);
    let manual = x.matmul(&(&lin.weight * (0.01 / 512f64.sqrt())).tr()) + &lin.bias * 0.01;
    assert!(max_abs_diff(&y, &manual) < 1e-4);
    let std = y.std(true).double_value(&[]);
    assert!((std - 1.0).abs() < 0.05, "output std {std}");
    let conv = EqualConv2d::new(vs.root() / "conv", 32, 48, 3, true, false);
    assert!((conv.weight.std(true).double_value(&[]) - 1.0).abs() < 0.05);
    let x = Tensor::randn([8, 32, 18, 18], (Kind::Float, Device::Cpu));
    let std = conv
        .forward(&x)
        .narrow(2, 1, 16)
        .narrow(3, 1, 16)
        .std(true)
        .double_value(&[]);
    assert!((std - 1.0).abs() < 0.05, "conv output std {std}");
}

#[test]
fn r1_penalty_equals_a_finite_difference_estimate() {
    tch::manual_seed(3);
    let mut vs = VarStore::new(Device::Cpu);
    let cfg = NetworkConfig {
        resolution: 8,
        z_dim: 8,
        w_dim: 8,
        mapping_layers: 1,
        channel_base: 64,
        channel_max: 8,
        input: plume_jobs::MappingInput::Latent,
    };
    let d = Discriminator::new(&vs.root(), &cfg);
    vs.double();
    let x = Tensor::randn([4, 3, 8, 8], (Kind::Double, Device::Cpu));
    let xg = x.set_requires_grad(true);
    let penalty = r1_penalty(&xg, &d.forward(&xg)).double_value(&[]);
    let f = |t: &Tensor| tch::no_grad(|| d.forward(t).sum(Kind::Double).double_value(&[]));
    let flat = x.flatten(0, -1);
    let eps = 1e-5;
    let mut sum_sq = 0.0;
    for j in 0..flat.size()[0] {
        let bump = |sign: f64| {
            let t = flat.copy();
            let _ = t.get(j).g_add_scalar_(sign * eps);
            f(&t.view([4, 3, 8, 8]))
        };
        let g = (bump(1.0) - bump(-1.0)) / (2.0 * eps);
        sum_sq += g * g;
    }
    let fd = sum_sq / 4.0;
    assert!(penalty > 0.0);
    assert!(
        ((penalty - fd) / fd).abs() < 1e-5,
        "autograd {penalty} vs finite differences {fd}"
    );
}

#[test]
fn ema_follows_its_update_rule_and_half_life() {
    let p = vec![("w".to_string(), Tensor::from_slice(&[1.0f32, 2.0, 3.0]))];
    let e = vec![("w".to_string(), Tensor::from_slice(&[0.0f32, 0.0, 6.0]))];
    ema_update(&e, &p, 0.9);
    let got = Vec::<f32>::try_from(&e[0].1).unwrap();
    let want = [0.1f32, 0.2, 0.9 * 6.0 + 0.1 * 3.0];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
    // After half_life images, the old average keeps half its weight.
    let beta = ema_beta(16, 1_000_000, 2000.0, 0.05);
    assert!((beta.powf(2000.0 / 16.0) - 0.5).abs() < 1e-9);
    // Ramp-up: early in training the half-life is at most rampup x images seen.
    let early = ema_beta(16, 1600, 2000.0, 0.05);
    assert!((early - 0.5f64.powf(16.0 / 80.0)).abs() < 1e-12);
}
