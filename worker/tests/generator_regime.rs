//! The pieces of the generator's training regime and its scorecard, against their definitions:
//! DiffAugment ops (exact shifts, cutout area, gradients through them, R1's double backward),
//! x-flips, k-NN precision/recall and attribute coverage, and the anti-aliased renderer.

use plume_jobs::AugmentConfig;
use plume_worker::dataset::render::{bird_for, render};
use plume_worker::stylegan::augment::{diff_augment, random_xflip};
use plume_worker::stylegan::metrics::{group_coverage, precision_recall, Reading};
use tch::{Device, Kind, Tensor};

fn cfg(translation: f64, cutout: f64, colour: bool) -> AugmentConfig {
    AugmentConfig {
        translation,
        cutout,
        colour,
    }
}

#[test]
fn translation_shifts_whole_images_by_at_most_an_eighth_and_fills_zeros() {
    tch::manual_seed(3);
    let x = Tensor::rand([64, 3, 32, 32], (Kind::Float, Device::Cpu)) + 1.0; // > 0 everywhere
    let y = diff_augment(&x, &cfg(0.125, 0.0, false));
    let mut shifted = 0;
    for b in 0..64 {
        // Find the shift that maps x[b] onto y[b] where y is not the zero fill.
        let (xb, yb) = (x.get(b), y.get(b));
        let found = (-4i64..=4)
            .flat_map(|dy| (-4i64..=4).map(move |dx| (dy, dx)))
            .find(|&(dy, dx)| {
                let (h0, h1) = ((-dy).max(0), 32 - dy.max(0));
                let (w0, w1) = ((-dx).max(0), 32 - dx.max(0));
                let got = yb.narrow(1, h0, h1 - h0).narrow(2, w0, w1 - w0);
                let want = xb.narrow(1, h0 + dy, h1 - h0).narrow(2, w0 + dx, w1 - w0);
                let zeros = yb.eq(0.0).sum(Kind::Int64).int64_value(&[]);
                (got - want).abs().max().double_value(&[]) == 0.0
                    && zeros == 3 * (32 * 32 - (h1 - h0) * (w1 - w0))
            });
        let (dy, dx) = found.unwrap_or_else(|| panic!("sample {b}: not a shift of at most 4 px"));
        shifted += i32::from(dy != 0 || dx != 0);
    }
    assert!(shifted > 48, "only {shifted} of 64 samples moved");
}

#[test]
fn cutout_zeroes_about_a_quarter_and_gradients_flow_through_every_op() {
    tch::manual_seed(4);
    let x =
        (Tensor::rand([256, 3, 32, 32], (Kind::Float, Device::Cpu)) + 1.0).set_requires_grad(true);
    let y = diff_augment(&x, &cfg(0.0, 0.5, false));
    let zero_share = y
        .eq(0.0)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    // A 16 x 16 square at a random centre, clipped at the edges: between 1/16 and 1/4.
    assert!(
        (0.12..=0.25).contains(&zero_share),
        "zeroed share {zero_share}"
    );
    // Gradients reach the input through colour, translation and cutout, and R1's double
    // backward (a gradient of a gradient) works through them.
    let y = diff_augment(&x, &cfg(0.125, 0.5, true));
    let grad = Tensor::run_backward(&[(y.square()).sum(Kind::Float)], &[&x], true, true);
    assert!(grad[0].abs().sum(Kind::Float).double_value(&[]) > 0.0);
    let second = Tensor::run_backward(&[grad[0].square().sum(Kind::Float)], &[&x], false, false);
    assert!(second[0].isfinite().all().int64_value(&[]) == 1);
}

#[test]
fn xflip_mirrors_about_half_the_batch() {
    tch::manual_seed(5);
    let x = Tensor::rand([400, 3, 8, 8], (Kind::Float, Device::Cpu));
    let y = random_xflip(&x);
    let mut flipped = 0;
    for b in 0..400 {
        let (xb, yb) = (x.get(b), y.get(b));
        if (&yb - xb.flip([2])).abs().max().double_value(&[]) == 0.0 {
            flipped += 1;
        } else {
            assert_eq!((&yb - &xb).abs().max().double_value(&[]), 0.0);
        }
    }
    assert!((160..=240).contains(&flipped), "{flipped} of 400 flipped");
}

fn reading(embedding: Tensor, values: Tensor) -> Reading {
    Reading {
        embedding,
        values,
        facing_right: None,
    }
}

#[test]
fn precision_and_recall_tell_a_collapsed_generator_from_a_good_one() {
    tch::manual_seed(6);
    let real = Tensor::randn([1000, 16], (Kind::Float, Device::Cpu));
    // A good generator: another sample of the same distribution (k = 3 balls in 16
    // dimensions cover about 80% of a second sample).
    let good = Tensor::randn([1000, 16], (Kind::Float, Device::Cpu));
    let (p, r) = precision_recall(&real, &good);
    assert!(
        p > 0.7 && r > 0.7,
        "same distribution: precision {p}, recall {r}"
    );
    // A collapsed one: every sample near one real point. Precise, but no recall.
    let blob =
        real.get(0).unsqueeze(0) + Tensor::randn([1000, 16], (Kind::Float, Device::Cpu)) * 0.01;
    let (p, r) = precision_recall(&real, &blob);
    assert!(p > 0.9 && r < 0.02, "collapsed: precision {p}, recall {r}");
    // Far off the data: neither.
    let (p, r) = precision_recall(&real, &(good + 10.0));
    assert!(
        p < 0.01 && r < 0.01,
        "off the manifold: precision {p}, recall {r}"
    );
}

#[test]
fn coverage_counts_values_read_a_tenth_of_their_fair_share() {
    // 1400 readings of a 15-value group: values 0..13 get 100 each, value 13 gets 9 (below the
    // floor of 1400 / 150 = 9.3), value 14 gets 91.
    let mut v: Vec<i64> = (0..13).flat_map(|c| std::iter::repeat_n(c, 100)).collect();
    v.extend(std::iter::repeat_n(13, 9));
    v.extend(std::iter::repeat_n(14, 91));
    let values = Tensor::from_slice(&v).view([-1, 1]);
    let r = reading(Tensor::zeros([1400, 2], (Kind::Float, Device::Cpu)), values);
    let c = group_coverage(&r, 0, 15);
    assert_eq!((c.covered, c.values), (14, 15));
    assert!((c.top_share - 100.0 / 1400.0).abs() < 1e-9);
}

#[test]
fn renders_are_anti_aliased_deterministic_and_keep_thin_parts() {
    let (attrs, pose, _) = bird_for(7, 11);
    let a = render(&attrs, &pose, 32);
    let b = render(&attrs, &pose, 32);
    assert_eq!(a.rgb, b.rgb, "same seed, same bytes");
    assert_eq!(a.parts, b.parts);
    // Anti-aliased: each 32 px pixel is the mean over its area, so it matches a 128 px render
    // averaged over 4 x 4 blocks. Measured over the whole image (mostly flat areas): 0.52
    // levels of 255 off; one sample per pixel (SUPERSAMPLE = 1) is 1.45 off.
    let fine = render(&attrs, &pose, 128);
    let mut diff = 0f64;
    for y in 0..32 {
        for x in 0..32 {
            for c in 0..3 {
                let mut sum = 0u32;
                for dy in 0..4 {
                    for dx in 0..4 {
                        sum += fine.rgb[((y * 4 + dy) * 128 + x * 4 + dx) * 3 + c] as u32;
                    }
                }
                diff += (sum as f64 / 16.0 - a.rgb[(y * 32 + x) * 3 + c] as f64).abs();
            }
        }
    }
    let mean = diff / (32.0 * 32.0 * 3.0);
    eprintln!("mean |32 px - box-filtered 128 px| = {mean:.2} levels");
    assert!(
        mean < 1.0,
        "32 px render is not the area mean: {mean:.2} levels off"
    );
    // Legs (label 9) and the eye (8) survive at 32 px in every bird of a sample.
    for i in 0..50 {
        let (attrs, pose, _) = bird_for(7, i);
        let r = render(&attrs, &pose, 32);
        for part in [8u8, 9] {
            let px = r.parts.iter().filter(|&&p| p == part).count();
            assert!(px >= 1, "bird {i}: part {part} has no pixel");
        }
    }
}
