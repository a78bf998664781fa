//! `plume bench --suite parser`: how long the experiment parser takes to refuse hostile
//! files (and to accept the largest legal one), each up to the size limit. The coordinator
//! parses what any client sends, so every row must stay in milliseconds.

use crate::experiment::{parse, MAX_EXPERIMENT_BYTES};
use std::fmt::Write;
use std::time::Instant;

/// A valid experiment head that the hostile parts are appended to or inserted in.
const HEAD: &str =
    "name: hostile\ndataset: {kind: synthetic-birds, images: 200, resolution: 32, seed: 3}\n";

/// One run line; `{NAME}` is replaced.
const RUN: &str = "  - {name: {NAME}, job: train-judge, steps: 4, batch: 4}\n";

/// The hostile inputs: (what, text, accepted?).
fn cases() -> Vec<(&'static str, String, bool)> {
    let fill = |unit: &str, head: &str, tail: &str| {
        let n = (MAX_EXPERIMENT_BYTES - head.len() - tail.len()) / unit.len();
        format!("{head}{}{tail}", unit.repeat(n))
    };
    let mut aliases = String::from("run_defaults:\n  a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let items = vec![format!("*a{}", i - 1); 9].join(", ");
        aliases += &format!("  a{i}: &a{i} [{items}]\n");
    }
    let mut keys = format!("{HEAD}runs: []\nrun_defaults:\n");
    let mut k = 0;
    while keys.len() + 16 < MAX_EXPERIMENT_BYTES {
        keys += &format!("  k{k}: 1\n");
        k += 1;
    }
    let mut many_runs = format!("{HEAD}runs:\n");
    let mut k = 0;
    while k <= 2000 {
        many_runs += &RUN.replace("{NAME}", &format!("r{k}"));
        k += 1;
    }
    vec![
        (
            "256 KiB of nested [ in a sweep",
            fill("[", &format!("{HEAD}runs: []\nsweep: {{lr: "), ""),
            false,
        ),
        (
            "256 KiB of nested block lists",
            fill("- ", &format!("{HEAD}runs:\n"), ""),
            false,
        ),
        (
            "256 KiB of nested {a: in run_defaults",
            fill("{a: ", &format!("{HEAD}runs: []\nrun_defaults: "), ""),
            false,
        ),
        (
            "alias bomb (9^9 nodes once expanded)",
            format!("{HEAD}{aliases}runs: []\n"),
            false,
        ),
        (
            "256 KiB mapping of distinct keys in run_defaults",
            keys,
            false,
        ),
        (
            "256 KiB single scalar",
            fill(
                "x",
                &format!("{HEAD}runs: []\nrun_defaults: {{note: \""),
                "\"}\n",
            ),
            false,
        ),
        (
            "one byte over the size limit",
            "#".repeat(MAX_EXPERIMENT_BYTES + 1),
            false,
        ),
        (
            "largest legal: a 2,000-point sweep grid",
            format!(
                "{HEAD}runs:\n{}sweep: {{lr: [{}], batch: [{}]}}\n",
                RUN.replace("{NAME}", "r"),
                vec!["0.001"; 40].join(", "),
                (1..=50)
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            true,
        ),
        ("2,001 runs, one over the limit", many_runs, false),
    ]
}

/// Times every case (median and worst of 5 after one warm-up) and checks it is refused (or
/// accepted) as expected.
pub fn suite(out: &mut String) -> anyhow::Result<()> {
    for (what, text, ok) in cases() {
        let mut times = Vec::new();
        for _ in 0..6 {
            let t = Instant::now();
            let r = parse("hostile.yaml", &text);
            times.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(
                r.is_ok() == ok,
                "{what}: expected ok={ok}, got {:?}",
                r.err()
            );
        }
        let mut t = times[1..].to_vec();
        t.sort_by(f64::total_cmp);
        let _ = writeln!(
            out,
            "{:<64} {:>10.2} ms median, {:.2} ms max ({} KiB)",
            format!("parser: {what}"),
            t[t.len() / 2],
            t[t.len() - 1],
            text.len() / 1024
        );
    }
    Ok(())
}
