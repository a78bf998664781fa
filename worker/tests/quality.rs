//! The documented CPU configs reach their targets: the judge is >= 95% accurate on held-out
//! synthetic birds, and the linear-direction baseline M0, on the shipped teacher generator
//! (`models/teacher-birds-32.safetensors`, imported as the quickstart imports it) with its exact
//! scene styles, performs the edits the captions ask for and leaves the other attributes and a
//! no-op edit alone. One test, because M0 is scored by the judge trained first.
//! (The short adversarial pretraining this test once ran was chaotic across CPU families:
//! it failed a clean clone on an Intel Xeon. Everything here after the judge is inference on
//! fixed weights.) Thresholds: see `M0_EDIT_SUCCESS_MIN` and `M0_PRESERVATION_MIN`.

mod common;

use std::fs;
use std::path::Path;

fn run_job(job_yaml: &str, dir: &Path, name: &str) -> Vec<serde_json::Value> {
    let out = common::run_job(dir, name, job_yaml);
    eprintln!(
        "{name}:\n{}",
        fs::read_to_string(out.join("log.txt")).unwrap_or_default()
    );
    common::metrics(&out)
}

/// M0's edit success and attribute preservation on 200 requests that each change one
/// attribute, on the shipped generator (chance edit success: about 0.07). Measured in
/// experiments/results/2026-12-07-teacher-generator.md.
const M0_EDIT_SUCCESS_MIN: f64 = 0.8;
const M0_PRESERVATION_MIN: f64 = 0.8;

fn series(metrics: &[serde_json::Value], key: &str) -> Vec<(i64, f64)> {
    metrics
        .iter()
        .filter_map(|m| Some((m["step"].as_i64()?, m.get(key)?.as_f64()?)))
        .collect()
}

#[test]
fn judge_is_accurate_and_m0_edits_the_shipped_generator() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // The judge exactly as documented in experiments/jobs/judge-cpu.yaml.
    let judge_yaml = fs::read_to_string(repo.join("experiments/jobs/judge-cpu.yaml")).unwrap();
    let judge = run_job(&judge_yaml, tmp.path(), "judge");
    let acc = series(&judge, "judge/attr_accuracy");
    let (_, final_acc) = *acc.last().expect("judge accuracy reported");
    eprintln!("judge held-out attribute accuracy by step: {acc:?}");
    assert!(
        final_acc >= 0.95,
        "judge held-out attribute accuracy {final_acc:.4} < 0.95"
    );
    let miou = series(&judge, "judge/seg_miou");
    assert!(miou.last().unwrap().1 > 0.5, "judge part mIoU {miou:?}");

    let ckpt = tmp
        .path()
        .join("judge/checkpoints/step-00000800.safetensors");
    assert!(ckpt.is_file(), "judge checkpoint at step 800");

    // The shipped generator, imported, and the exact styles of the dataset's images.
    let dataset = "{kind: synthetic-birds, images: 8000, resolution: 32, seed: 7}";
    let shipped = repo.join("models/teacher-birds-32.safetensors");
    common::run_job(
        tmp.path(),
        "generator",
        &format!(
            "kind: import-generator\ndataset: {dataset}\nfrom: plume\npath: {}\n",
            shipped.display()
        ),
    );
    let generator = tmp
        .path()
        .join("generator/checkpoints/step-00000000.safetensors");
    let styles = run_job(
        &format!(
            "kind: invert\ndataset: {dataset}\ngenerator: {}\nmode: scene\nlimit: 3000\nbatch: 250\n",
            generator.display()
        ),
        tmp.path(),
        "styles",
    );
    let recon = styles
        .iter()
        .find_map(|m| m.get("styles/recon_l1")?.as_f64())
        .expect("styles report their reconstruction error");
    // G(w_gt) against the dataset's own images: the generator draws the scenes it is given.
    assert!(recon < 0.1, "G(w_gt) is {recon:.4} from the images (L1)");
    let styles = tmp
        .path()
        .join("styles/checkpoints/step-00003000.safetensors");
    let m0 = run_job(
        &format!(
            "kind: train-text\ndataset: {dataset}\ngenerator: {}\nstyles: {}\njudge: {}\nmethod: linear-directions\nsteps: 1\neval_edits: 200\n",
            generator.display(),
            styles.display(),
            ckpt.display()
        ),
        tmp.path(),
        "m0",
    );
    let eval = m0
        .iter()
        .find(|m| m.get("eval/edit_success").is_some())
        .expect("M0 is benchmarked");
    let success = eval["eval/edit_success"].as_f64().unwrap();
    let preservation = eval["eval/attr_preservation"].as_f64().unwrap();
    let identity = eval["eval/identity"].as_f64().unwrap();
    eprintln!("M0: edit_success {success:.3}, attr_preservation {preservation:.3}, identity {identity:.3}");
    assert!(
        success >= M0_EDIT_SUCCESS_MIN,
        "M0 edit success {success:.3} < {M0_EDIT_SUCCESS_MIN} (chance 0.067)"
    );
    assert!(
        preservation >= M0_PRESERVATION_MIN,
        "M0 attribute preservation {preservation:.3} < {M0_PRESERVATION_MIN}"
    );
    // The no-op edit (the source's own caption) changes nothing the judge can read.
    assert_eq!(
        identity, 1.0,
        "M0 moved a bird asked for what it already is"
    );
}
