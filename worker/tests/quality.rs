//! The documented CPU configs reach their targets: the judge is >= 95% accurate on held-out
//! synthetic birds, and a short StyleGAN2 pretraining in the new regime draws many colours in
//! every colour group with none taking over (coverage, which a collapsed generator cannot fake
//! the way it can improve judge-FID), and the linear-direction baseline M0 edits that
//! generator's sampled styles better than chance and leaves a no-op edit alone. One test,
//! because the generator is scored by the judge trained first and M0 needs both.
//! Thresholds: see `COLOURS_MIN`, `TOP_SHARE_MAX` and `M0_EDIT_SUCCESS_MIN`.

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

/// The fewest colours (of 15) the judge must read in every colour group after the short run,
/// and the largest share one colour may take. Measured at 1000-1200 steps
/// (experiments/results/2026-11-27-generator.md): the new regime 12-13 colours and top share
/// 0.26-0.45 over four runs (seeds 1-3, two judges); the old regime 6-8 and 0.40-0.92 over
/// three; an untrained generator 9-10 and 0.29-0.35.
const COLOURS_MIN: f64 = 11.0;
const TOP_SHARE_MAX: f64 = 0.6;

/// M0's edit success on 200 requests that each change one colour (chance: 1/15 = 0.067).
/// Measured: 0.235 on this test's 1200-step generator, 0.315 on the 7000-step
/// generator-cpu.yaml one (experiments/results/2026-11-27-methods.md); 2x chance leaves room
/// for another machine's trajectory.
const M0_EDIT_SUCCESS_MIN: f64 = 0.13;

fn series(metrics: &[serde_json::Value], key: &str) -> Vec<(i64, f64)> {
    metrics
        .iter()
        .filter_map(|m| Some((m["step"].as_i64()?, m.get(key)?.as_f64()?)))
        .collect()
}

#[test]
fn judge_is_accurate_and_a_short_pretraining_covers_the_colours() {
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
    let gen_yaml = fs::read_to_string(repo.join("experiments/jobs/generator-test.yaml")).unwrap();
    let gen_yaml = gen_yaml.replace(
        "judge: JUDGE_CHECKPOINT",
        &format!("judge: {}", ckpt.display()),
    );
    let gen = run_job(&gen_yaml, tmp.path(), "generator");
    let last = |key: &str| {
        let s = series(&gen, key);
        eprintln!("{key} by step: {s:?}");
        *s.last().unwrap_or_else(|| panic!("{key} reported"))
    };
    let (first_step, _) = series(&gen, "gen/colours_min")[0];
    assert_eq!(first_step, 0, "the untrained generator is scored at step 0");
    let (step, colours_min) = last("gen/colours_min");
    let (_, top_share) = last("gen/top_share_max");
    let (_, facing) = last("gen/facing_right");
    let (_, recall) = last("gen/recall");
    eprintln!("step {step}: colours_min {colours_min}, top_share_max {top_share:.3}, facing_right {facing:.3}, recall {recall:.3}");
    assert!(
        colours_min >= COLOURS_MIN,
        "a colour group shows only {colours_min} of 15 colours (need {COLOURS_MIN})"
    );
    assert!(
        top_share <= TOP_SHARE_MAX,
        "one colour takes {top_share:.3} of a colour group (at most {TOP_SHARE_MAX})"
    );
    // Facing: new regime 0.40-0.53, old 0.17-0.66 (it settles on one side).
    assert!(
        (0.25..=0.75).contains(&facing),
        "{facing:.3} of the birds face right"
    );
    // Judge-FID falls at least two-fold (new regime 3.2-8.3x over the same runs, old 1.7x at
    // 1000 steps): a weak check, since FID also falls for blobs; coverage is the real one.
    let fid = series(&gen, "gen/judge_fid");
    let (untrained, trained) = (fid[0].1, fid.last().unwrap().1);
    assert!(
        trained * 2.0 <= untrained,
        "judge-FID went from {untrained:.1} to {trained:.1}: not two-fold better"
    );

    // M0 on this generator's sampled styles (labelled by the critic).
    let generator = tmp
        .path()
        .join("generator/checkpoints/step-00001200.safetensors");
    let dataset = "{kind: synthetic-birds, images: 8000, resolution: 32, seed: 7}";
    common::run_job(
        tmp.path(),
        "styles",
        &format!(
            "kind: invert\ndataset: {dataset}\ngenerator: {}\ncritic: {}\nmode: sampled\nlimit: 2000\nbatch: 200\nseed: 1\n",
            generator.display(),
            ckpt.display()
        ),
    );
    let styles = tmp
        .path()
        .join("styles/checkpoints/step-00002000.safetensors");
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
    let identity = eval["eval/identity"].as_f64().unwrap();
    eprintln!("M0: edit_success {success:.3}, identity {identity:.3}");
    assert!(
        success >= M0_EDIT_SUCCESS_MIN,
        "M0 edit success {success:.3} < {M0_EDIT_SUCCESS_MIN} (chance 0.067)"
    );
    // The no-op edit (the source's own caption) changes nothing the judge can read.
    assert_eq!(
        identity, 1.0,
        "M0 moved a bird asked for what it already is"
    );
}
