//! Diagnostic: what the generator metrics read for real images and for degraded reals
//! (blurred, noised, repeated, superposed), scored exactly as `pretrain-generator` scores its
//! samples: what a recall of 0.5 or a judge-FID of 1500 looks like, in images.
//!
//! `cargo run --release -p plume-worker --example metric_calibration -- JUDGE DATASET_DIR [OUT_DIR]`
//! (with `OUT_DIR`, a grid of the first 32 images of each case).
use plume_worker::dataset::{Dataset, Partition};
use plume_worker::stylegan::scoring;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn blur(x: &Tensor, sigma: f64) -> Tensor {
    let r = (3.0 * sigma).ceil() as i64;
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let s: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / s).collect();
    let kt = Tensor::from_slice(&k);
    let n = k.len() as i64;
    let kh = kt.view([1, 1, 1, n]).repeat([3, 1, 1, 1]);
    let kv = kt.view([1, 1, n, 1]).repeat([3, 1, 1, 1]);
    let y = x.pad([r, r, 0, 0], "replicate", None).conv2d(
        &kh,
        None::<Tensor>,
        [1, 1],
        [0, 0],
        [1, 1],
        3,
    );
    y.pad([0, 0, r, r], "replicate", None)
        .conv2d(&kv, None::<Tensor>, [1, 1], [0, 0], [1, 1], 3)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (judge, dir, out) = match &args[..] {
        [judge, dir] => (judge, dir, None),
        [judge, dir, out] => (judge, dir, Some(PathBuf::from(out))),
        _ => anyhow::bail!("usage: metric_calibration JUDGE DATASET_DIR [OUT_DIR]"),
    };
    let device = Device::Cpu;
    let judge = plume_worker::judge::train::load(&PathBuf::from(judge), "judge", device)?;
    let ds = Dataset::open(&PathBuf::from(dir))?;
    let test = ds.load_images(&ds.partition(Partition::Test), 32)?;
    let train = ds.load_images(&ds.partition(Partition::Train), 32)?;
    let n = 1000;
    let judge = scoring::JudgeForMetrics::new(judge, &test, n);
    let reals = train.narrow(0, 0, n);
    let mean = reals.mean_dim([0i64].as_slice(), true, Kind::Float);
    let cases: Vec<(String, Tensor)> = vec![
        ("train reals".into(), reals.shallow_clone()),
        ("train reals x-flipped".into(), reals.flip([3])),
        ("blur 0.5".into(), blur(&reals, 0.5)),
        ("blur 0.8".into(), blur(&reals, 0.8)),
        ("blur 1.2".into(), blur(&reals, 1.2)),
        (
            "down16-up".into(),
            reals
                .upsample_bilinear2d([16, 16], false, None, None)
                .upsample_bilinear2d([32, 32], false, None, None),
        ),
        (
            "noise 0.1".into(),
            (&reals + Tensor::randn_like(&reals) * 0.1).clamp(-1, 1),
        ),
        ("mix 0.8 real + 0.2 mean".into(), &reals * 0.8 + &mean * 0.2),
        (
            "100 distinct reals x10".into(),
            reals.narrow(0, 0, 100).repeat([10, 1, 1, 1]),
        ),
        (
            "300 distinct reals, repeated".into(),
            Tensor::cat(
                &[
                    reals.narrow(0, 0, 300).repeat([3, 1, 1, 1]),
                    reals.narrow(0, 0, 100),
                ],
                0,
            ),
        ),
        (
            "avg of 2 reals".into(),
            (&reals + reals.roll([1], [0])) * 0.5,
        ),
    ];
    for (i, (name, imgs)) in cases.into_iter().enumerate() {
        if let Some(out) = &out {
            std::fs::create_dir_all(out)?;
            plume_worker::picture::image_grid(&imgs.narrow(0, 0, 32).clamp(-1.0, 1.0), 8, 4, &[])
                .save(&out.join(format!("{i:02}.png")))?;
        }
        let s = judge.score_images(&imgs, n, &ds.groups);
        let get = |k: &str| {
            s.iter()
                .find(|(n, _)| n == k)
                .map(|x| x.1)
                .unwrap_or(f64::NAN)
        };
        println!(
            "| {name} | {:.0} | {:.3} | {:.3} | {} | {:.3} | {:.3} |",
            get("gen/judge_fid"),
            get("gen/precision"),
            get("gen/recall"),
            get("gen/colours_min"),
            get("gen/top_share_max"),
            get("gen/facing_right")
        );
    }
    Ok(())
}
