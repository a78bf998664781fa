//! `invert`, `train-text` and `evaluate` as real processes on a tiny pipeline: every method
//! trains, reports its losses and the edit benchmark, and writes a gallery and a checkpoint.

mod common;

use common::{run_job as worker, worker as worker_cmd};
use std::fs;
use std::path::Path;

#[test]
fn every_method_trains_and_is_benchmarked() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let dataset = "{kind: synthetic-birds, images: 200, resolution: 32, seed: 3}";
    let gen = worker(d, "gen", &format!("kind: pretrain-generator\ndataset: {dataset}\nnetwork: {{resolution: 32, z_dim: 32, w_dim: 32, channel_base: 256, channel_max: 16}}\nsteps: 2\nbatch: 4\n")).join("checkpoints/step-00000002.safetensors");
    let judge = worker(d, "judge", &format!("kind: train-judge\ndataset: {dataset}\nsteps: 2\nbatch: 4\nnet: {{channels: [8, 8, 8], hidden: 16}}\n")).join("checkpoints/step-00000002.safetensors");
    let styles = worker(
        d,
        "styles",
        &format!(
            "kind: invert\ndataset: {dataset}\ngenerator: {}\ncritic: {}\nsteps: 3\nbatch: 100\n",
            gen.display(),
            judge.display()
        ),
    )
    .join("checkpoints/step-00000200.safetensors");
    assert!(styles.is_file());
    for (name, method, extra) in [
        ("m1", "weighted", ""),
        ("m2", "reconstruction", ""),
        (
            "m3",
            "contrastive",
            "reconstruction_target: both\nfreeze_layers: 3\n",
        ),
        (
            "m3-pixels-no-edit-style",
            "contrastive",
            "losses: {preservation: 1, reconstruction: 1, unedited_region: 1, edit_style: 0}\n",
        ),
        ("m4", "visual-grounding", ""),
        (
            "m3-seed-recipe",
            "contrastive",
            "edit: blend\nv_bias: 0\npreservation_groups: all\ncontrast: raw\nlosses: {identity: 0, edit_style: 0, preservation: 1, reconstruction: 1}\n",
        ),
        ("m1-residual", "weighted", "edit: residual\n"),
        ("m0", "linear-directions", "alphas: [0.5, 2]\n"),
    ] {
        let out = worker(
            d,
            name,
            &format!("kind: train-text\ndataset: {dataset}\ngenerator: {}\nstyles: {}\njudge: {}\nmethod: {method}\n{extra}steps: 3\nbatch: 4\nmax_tokens: 32\neval_every: 3\neval_edits: 8\ncheckpoint_every: 3\n", gen.display(), styles.display(), judge.display()),
        );
        let metrics = common::metrics(&out);
        let evals: Vec<&serde_json::Value> = metrics
            .iter()
            .filter(|m| m.get("eval/score").is_some())
            .collect();
        // M0 is fitted in one step (its step size chosen on the training split).
        assert_eq!(
            evals
                .iter()
                .map(|m| m["step"].as_i64().unwrap())
                .collect::<Vec<_>>(),
            if name == "m0" { vec![1] } else { vec![0, 3] },
            "{name}: benchmark at start and end"
        );
        let eval = evals[evals.len() - 1];
        for key in [
            "eval/edit_success",
            "eval/attr_preservation",
            "eval/region_preservation",
            "eval/score",
            "eval/identity",
        ] {
            let v = eval[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{name}: {key} = {v}");
        }
        assert!(eval["eval/realism"].as_f64().unwrap() >= 0.0);
        if name == "m0" {
            let alpha = metrics
                .iter()
                .find_map(|m| m.get("m0/alpha").and_then(|v| v.as_f64()))
                .expect("M0 reports its step size");
            assert!([0.5, 2.0].contains(&alpha), "alpha {alpha}");
            assert!(out.join("artifacts/edits-00000001.png").is_file());
            assert!(out.join("checkpoints/step-00000001.safetensors").is_file());
            continue;
        }
        let losses: Vec<&str> = metrics
            .iter()
            .flat_map(|m| m.as_object().unwrap().keys())
            .filter(|k| k.starts_with("loss/"))
            .map(String::as_str)
            .collect();
        assert!(losses.contains(&"loss/total"), "{name}");
        if name == "m3-pixels-no-edit-style" {
            for term in ["loss/preservation", "loss/reconstruction", "loss/unedited_region"] {
                assert!(losses.contains(&term), "{name} lacks {term}");
            }
            assert!(
                !losses.contains(&"loss/edit_style"),
                "a zero weight must remove the term"
            );
        }
        if name == "m1" {
            for term in ["loss/sparsity", "loss/identity", "loss/edit_style"] {
                assert!(losses.contains(&term), "m1 lacks {term}");
            }
            // The pixel terms are off in the fixed recipes.
            for term in ["loss/image", "loss/preservation", "loss/unedited_region"] {
                assert!(!losses.contains(&term), "m1 has {term}");
            }
        }
        if name == "m4" {
            assert!(losses.contains(&"loss/grounding"), "m4 lacks its grounding term");
        }
        if name == "m1-residual" {
            assert!(losses.contains(&"loss/delta") && !losses.contains(&"loss/sparsity"));
        }
        if name == "m3-seed-recipe" {
            assert!(!losses.contains(&"loss/identity") && !losses.contains(&"loss/edit_style"));
            assert!(losses.contains(&"loss/preservation") && losses.contains(&"loss/reconstruction"));
        }
        let grounding = eval.get("eval/grounding").and_then(|v| v.as_f64());
        if name == "m4" {
            let g = grounding.expect("M4 reports eval/grounding");
            assert!((0.0..=1.0).contains(&g), "grounding {g}");
        } else {
            assert!(grounding.is_none(), "{name}: only M4 grounds");
        }
        assert!(
            out.join("artifacts/edits-00000003.png").is_file(),
            "{name}: gallery"
        );
        assert!(
            out.join("checkpoints/step-00000003.safetensors").is_file(),
            "{name}: checkpoint"
        );
    }
    // Editing for a person: a dataset image by id, a PNG from elsewhere (inverted first), and
    // bad inputs that must fail cleanly.
    let m1 = d.join("m1/checkpoints/step-00000003.safetensors");
    let edit_with = |checkpoint: &Path, image: &str, caption: &str, out: &Path| {
        worker_cmd()
            .args([
                "edit",
                "--checkpoint",
                checkpoint.to_str().unwrap(),
                "--image",
                image,
                "--caption",
                caption,
                "--out",
                out.to_str().unwrap(),
                "--device",
                "cpu",
            ])
            .output()
            .unwrap()
    };
    let edit = |image: &str, caption: &str, out: &Path| edit_with(&m1, image, caption, out);
    let o = edit(
        "17",
        "this bird has a red breast and black wings",
        &d.join("edit17.png"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(image::open(d.join("edit17.png")).is_ok());
    let png = d.join("outside.png");
    image::RgbImage::from_fn(48, 48, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 5) as u8, 90])
    })
    .save(&png)
    .unwrap();
    let o = edit(png.to_str().unwrap(), "", &d.join("edit_png.png"));
    assert!(
        o.status.success(),
        "empty caption on an inverted PNG: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let wide = d.join("wide.png");
    image::RgbImage::new(64, 32).save(&wide).unwrap();
    let o = edit(wide.to_str().unwrap(), "a red bird", &d.join("never.png"));
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("must be square"));
    assert!(!d.join("never.png").exists());
    let o = edit("999999", "a red bird", &d.join("never.png"));
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not in the dataset")
    );

    // M4 edits a dataset image from the command line too (grounded, given its caption).
    let m4 = d.join("m4/checkpoints/step-00000003.safetensors");
    let o = edit_with(
        &m4,
        "17",
        "this bird has a red breast and black wings",
        &d.join("edit_m4.png"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(image::open(d.join("edit_m4.png")).is_ok());

    // M0 edits from the command line with its fitted directions.
    let m0 = d.join("m0/checkpoints/step-00000001.safetensors");
    let o = edit_with(&m0, "17", "a bird with red wings", &d.join("edit_m0.png"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(image::open(d.join("edit_m0.png")).is_ok());

    // `evaluate` re-scores a checkpoint on its own: the same requests and networks give the
    // same numbers as the evaluation inside training.
    let ev = worker(
        d,
        "eval-m1",
        &format!("kind: evaluate\ncheckpoint: {}\n", m1.display()),
    );
    let again = common::metrics(&ev);
    let trained = common::metrics(&d.join("m1"));
    let at3 = trained
        .iter()
        .find(|m| m["step"] == 3 && m.get("eval/score").is_some())
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["step"], 3);
    for key in [
        "eval/edit_success",
        "eval/attr_preservation",
        "eval/region_preservation",
    ] {
        let (a, b) = (again[0][key].as_f64().unwrap(), at3[key].as_f64().unwrap());
        assert!((a - b).abs() < 1e-9, "{key}: evaluate {a} vs training {b}");
    }
    assert!(ev.join("artifacts/edits-00000003.png").is_file());
    let job = d.join("bad-eval.yaml");
    fs::write(
        &job,
        format!("kind: evaluate\ncheckpoint: {}\n", styles.display()),
    )
    .unwrap();
    let o = worker_cmd()
        .args([
            "run",
            job.to_str().unwrap(),
            "--out",
            d.join("bad-eval").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("train-text"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
