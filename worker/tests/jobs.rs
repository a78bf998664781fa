//! `plume-worker run` as a real process: exact resume, Ctrl-C, and bad inputs.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::worker;

fn run(job: &Path, out: &Path, extra: &[&str]) -> Output {
    worker()
        .arg("run")
        .arg(job)
        .arg("--out")
        .arg(out)
        .args(["--device", "cpu"])
        .args(extra)
        .output()
        .expect("spawn plume-worker")
}

fn tiny_pretrain(steps: i64) -> String {
    format!(
        "kind: pretrain-generator
dataset: {{kind: synthetic-birds, images: 200, resolution: 32, seed: 3}}
network: {{resolution: 32, z_dim: 32, w_dim: 32, mapping_layers: 2, channel_base: 256, channel_max: 16}}
steps: {steps}
batch: 8
seed: 5
r1_interval: 4
pl_weight: 1.0
pl_interval: 3
checkpoint_every: 6
sample_every: 100
eval_every: 100
"
    )
}

/// Per step, every loss-like metric the run reported.
fn losses(out: &Path) -> BTreeMap<i64, BTreeMap<String, f64>> {
    let text = fs::read_to_string(out.join("metrics.jsonl")).expect("metrics.jsonl");
    let mut by_step: BTreeMap<i64, BTreeMap<String, f64>> = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let step = v["step"].as_i64().unwrap();
        for (k, val) in v.as_object().unwrap() {
            if k.starts_with("gen/") && k != "gen/images_per_s" && k != "gen/step_ms" {
                let prev = by_step
                    .entry(step)
                    .or_default()
                    .insert(k.clone(), val.as_f64().unwrap());
                assert!(prev.is_none(), "{k} reported twice at step {step}");
            }
        }
    }
    by_step
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(snapshot(&p));
            } else {
                out.insert(p.clone(), fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn resuming_gives_the_same_losses_at_every_step_as_one_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (full_job, half_job) = (tmp.path().join("full.yaml"), tmp.path().join("half.yaml"));
    fs::write(&full_job, tiny_pretrain(12)).unwrap();
    fs::write(&half_job, tiny_pretrain(6)).unwrap();

    let whole = tmp.path().join("whole");
    let o = run(&full_job, &whole, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let split = tmp.path().join("split");
    let o = run(&half_job, &split, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ckpt = split.join("checkpoints/step-00000006.safetensors");
    assert!(ckpt.is_file());
    let o = run(&full_job, &split, &["--resume", ckpt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let (a, b) = (losses(&whole), losses(&split));
    assert_eq!(
        a.keys().copied().collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    // Every regulariser ran at least once in the resumed half, so its state was restored too.
    for key in ["gen/loss_g", "gen/loss_d", "gen/r1", "gen/path_length"] {
        assert!(
            a.range(7..).any(|(_, m)| m.contains_key(key)),
            "{key} never ran after step 6"
        );
    }
    assert_eq!(
        a, b,
        "losses differ between the uninterrupted and the resumed run"
    );
    // And the final weights, EMA, optimizer moments agree bit for bit.
    let (wa, wb) = (
        fs::read(whole.join("checkpoints/step-00000012.safetensors")).unwrap(),
        fs::read(split.join("checkpoints/step-00000012.safetensors")).unwrap(),
    );
    let (ta, tb) = (
        safetensors::SafeTensors::deserialize(&wa).unwrap(),
        safetensors::SafeTensors::deserialize(&wb).unwrap(),
    );
    let mut names = ta.names();
    names.sort();
    assert!(
        names.len() > 50
            && names.iter().any(|n| n.starts_with("G_ema."))
            && names.iter().any(|n| n.ends_with(".m"))
    );
    let mut other = tb.names();
    other.sort();
    assert_eq!(names, other);
    for n in names {
        assert!(
            ta.tensor(n).unwrap().data() == tb.tensor(n).unwrap().data(),
            "tensor {n} differs after resume"
        );
    }
}

#[test]
fn interrupt_writes_a_final_checkpoint_that_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("long.yaml");
    fs::write(
        &job,
        tiny_pretrain(100_000).replace("checkpoint_every: 6", "checkpoint_every: 100000"),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let mut child = worker()
        .arg("run")
        .arg(&job)
        .arg("--out")
        .arg(&out)
        .args(["--device", "cpu"])
        .spawn()
        .unwrap();
    // Wait until training is under way.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while losses_len(&out) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "training never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "cancelled runs exit 130");
    let latest = fs::read_to_string(out.join("checkpoints/latest")).expect("a final checkpoint");
    let ckpt = out.join("checkpoints").join(latest.trim());
    let last_step = *losses(&out).keys().last().unwrap();
    assert!(
        ckpt.to_string_lossy()
            .ends_with(&format!("step-{last_step:08}.safetensors")),
        "{} vs step {last_step}",
        ckpt.display()
    );
    // Resume for a few more steps.
    fs::write(&job, tiny_pretrain(last_step + 2)).unwrap();
    let o = run(&job, &out, &["--resume", ckpt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(*losses(&out).keys().last().unwrap(), last_step + 2);
}

fn losses_len(out: &Path) -> usize {
    fs::read_to_string(out.join("metrics.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn expect_failure(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should fail; stderr: {err}");
    assert!(!err.contains("panicked"), "must not panic: {err}");
    for n in needles {
        assert!(err.contains(n), "error should mention {n:?}: {err}");
    }
}

#[test]
fn bad_jobs_and_checkpoints_get_clear_errors_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let good_job = tmp.path().join("good.yaml");
    fs::write(&good_job, tiny_pretrain(6)).unwrap();
    let out = tmp.path().join("out");
    let o = run(&good_job, &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ckpt = out.join("checkpoints/step-00000006.safetensors");
    let before = snapshot(&out);

    let bad = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        fs::write(&p, text).unwrap();
        p
    };
    // Unknown job kind.
    let o = run(
        &bad("kind.yaml", "kind: train-dragon\nsteps: 3\n"),
        &out,
        &[],
    );
    expect_failure(
        &o,
        &[
            "kind.yaml:1",
            "unknown job kind `train-dragon`",
            "pretrain-generator",
        ],
    );
    // Unknown field, with its line.
    let o = run(
        &bad(
            "field.yaml",
            &format!("{}learning_rate: 0.1\n", tiny_pretrain(6)),
        ),
        &out,
        &[],
    );
    expect_failure(&o, &["field.yaml:", "unknown field `learning_rate`"]);
    // Wrong type.
    let o = run(
        &bad(
            "type.yaml",
            &tiny_pretrain(6).replace("steps: 6", "steps: many"),
        ),
        &out,
        &[],
    );
    expect_failure(&o, &["type.yaml:4:", "steps"]);
    // Out-of-range value.
    let o = run(
        &bad(
            "range.yaml",
            &tiny_pretrain(6).replace("batch: 8", "batch: 0"),
        ),
        &out,
        &[],
    );
    expect_failure(&o, &["batch must be"]);
    // Not YAML at all.
    let o = run(&bad("junk.yaml", "kind: [unclosed\n"), &out, &[]);
    expect_failure(&o, &["junk.yaml:"]);

    // Truncated checkpoint.
    let bytes = fs::read(&ckpt).unwrap();
    let truncated = tmp.path().join("truncated.safetensors");
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let o = run(&good_job, &out, &["--resume", truncated.to_str().unwrap()]);
    expect_failure(&o, &["truncated.safetensors", "truncated"]);

    // A tensor of the wrong shape: the error names the key and both shapes.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let key = "G.conv1.activate.bias";
    let idx = tensors
        .iter()
        .position(|(n, _)| n == key)
        .expect("bias tensor");
    let data = tensors[idx].1.data();
    let half = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![data.len() / 8],
        &data[..data.len() / 2],
    )
    .unwrap();
    tensors[idx].1 = half;
    let reshaped = tmp.path().join("reshaped.safetensors");
    safetensors::serialize_to_file(tensors, header.metadata().clone(), &reshaped).unwrap();
    let o = run(&good_job, &out, &["--resume", reshaped.to_str().unwrap()]);
    expect_failure(&o, &[key, "[8]", "[16]"]);

    // A checkpoint of another job kind.
    let judge_job = bad("judge.yaml", "kind: train-judge\ndataset: {kind: synthetic-birds, images: 200, resolution: 32, seed: 3}\nsteps: 1\n");
    let o = run(&judge_job, &out, &["--resume", ckpt.to_str().unwrap()]);
    expect_failure(&o, &["pretrain-generator", "train-judge"]);

    // A huge job file.
    let huge = tmp.path().join("huge.yaml");
    fs::write(&huge, "x".repeat(3 << 20)).unwrap();
    let o = run(&huge, &out, &[]);
    expect_failure(&o, &["huge.yaml", "limit"]);

    assert!(
        snapshot(&out) == before,
        "a failed run changed the output directory"
    );
}
