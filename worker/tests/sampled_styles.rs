//! `invert` with `mode: sampled` (ml.md section 3): styles drawn from the mapping network are
//! exact (the stored w is f(z) for the job's seeded z), labelled by the critic's predictions
//! of G(w), and a text method trains on them and is benchmarked on held-out samples.

mod common;

use common::{run_job, worker};
use plume_worker::job::step_seed;
use plume_worker::nn::checkpoint::Checkpoint;
use plume_worker::nn::layers::resize_square;
use plume_worker::stylegan::pretrain::load_generator;
use plume_worker::styles::{generator_fingerprint, render_styles, Styles};
use std::fs;
use tch::{Device, Kind, Tensor};

#[test]
fn sampled_styles_are_exact_labelled_and_train_a_method() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let dataset = "{kind: synthetic-birds, images: 200, resolution: 32, seed: 3}";
    let gen = run_job(d, "gen", &format!("kind: pretrain-generator\ndataset: {dataset}\nnetwork: {{resolution: 32, z_dim: 32, w_dim: 32, channel_base: 256, channel_max: 16}}\nsteps: 2\nbatch: 4\n")).join("checkpoints/step-00000002.safetensors");
    let judge = run_job(d, "judge", &format!("kind: train-judge\ndataset: {dataset}\nsteps: 2\nbatch: 4\nnet: {{channels: [8, 8, 8], hidden: 16}}\n")).join("checkpoints/step-00000002.safetensors");

    // Without a critic nothing could label the samples: refused before anything runs.
    let bad = d.join("bad.yaml");
    fs::write(
        &bad,
        format!(
            "kind: invert\ndataset: {dataset}\ngenerator: {}\nmode: sampled\n",
            gen.display()
        ),
    )
    .unwrap();
    let o = worker()
        .arg("run")
        .arg(&bad)
        .arg("--out")
        .arg(d.join("bad"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("mode: sampled needs `critic`"), "{err}");
    assert!(!d.join("bad/checkpoints").exists());

    let out = run_job(
        d,
        "sampled",
        &format!(
            "kind: invert\ndataset: {dataset}\ngenerator: {}\ncritic: {}\nmode: sampled\nlimit: 60\nbatch: 32\nseed: 5\n",
            gen.display(),
            judge.display()
        ),
    );
    let styles_path = out.join("checkpoints/step-00000060.safetensors");
    let ckpt = Checkpoint::load(&gen).unwrap();
    let fingerprint = generator_fingerprint(&ckpt).unwrap();
    let (_vs, g) = load_generator(&ckpt, Device::Cpu).unwrap();
    let styles = Styles::load(&styles_path, &fingerprint).unwrap();
    assert_eq!(styles.w.size(), [60, 1, 32]);
    let labels = styles.labels.as_ref().expect("sampled styles carry labels");
    assert_eq!(labels.size(), [60, 7]);
    assert_eq!(
        Vec::<i64>::try_from(&styles.index).unwrap(),
        vec![-1i64; 60]
    );
    assert_eq!(
        styles.recon_error.abs().sum(Kind::Float).double_value(&[]),
        0.0
    );

    // Exact: the first batch's w is the mapping of the job's seeded z.
    let seed = step_seed(5, 0);
    let w = tch::no_grad(|| {
        tch::manual_seed(seed as i64);
        let z = Tensor::randn([32, 32], (Kind::Float, Device::Cpu));
        g.mapping.forward(&z)
    });
    let stored = styles.w.narrow(0, 0, 32).select(1, 0);
    let diff = (&stored - &w).abs().max().double_value(&[]);
    assert!(diff < 1e-6, "stored w differs from f(z) by {diff}");
    // Labelled by the critic's predictions of G(w).
    let critic = plume_worker::judge::train::load(&judge, "critic", Device::Cpu).unwrap();
    let predicted = tch::no_grad(|| {
        let img = render_styles(&g, &styles.w.narrow(0, 0, 32), seed);
        critic.net.predict(
            &critic
                .net
                .forward(&resize_square(&img, critic.resolution))
                .attr_logits,
        )
    });
    assert!(predicted.equal(&labels.narrow(0, 0, 32)));

    // A method trains on the samples and is benchmarked on the held-out ones.
    let text = run_job(
        d,
        "m3",
        &format!("kind: train-text\ndataset: {dataset}\ngenerator: {}\nstyles: {}\njudge: {}\nmethod: contrastive\nsteps: 3\nbatch: 4\nmax_tokens: 32\neval_every: 3\neval_edits: 8\ncheckpoint_every: 3\n", gen.display(), styles_path.display(), judge.display()),
    );
    let metrics = common::metrics(&text);
    let last = metrics
        .iter()
        .rev()
        .find(|m| m.get("eval/score").is_some())
        .expect("benchmark metrics");
    assert_eq!(last["step"], 3);
    for key in [
        "eval/edit_success",
        "eval/attr_preservation",
        "eval/region_preservation",
        "eval/score",
    ] {
        let v = last[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
    }
    assert!(metrics
        .iter()
        .any(|m| m["loss/total"].as_f64().is_some_and(f64::is_finite)));
    assert!(text.join("artifacts/edits-00000003.png").is_file());
    let log = fs::read_to_string(text.join("log.txt")).unwrap();
    assert!(
        log.contains("training examples with styles (sampled)"),
        "the log should say the styles were sampled: {log}"
    );
}
