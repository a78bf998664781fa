//! Experiment YAML: the bad-input suite (every case a clear error with a location) and the
//! expansion of stages, ablations and sweeps.

use plume_coordinator::experiment::parse;

const GOOD: &str = "name: methods
dataset: {kind: synthetic-birds, images: 200, resolution: 32, seed: 3}
stages:
  judge: {job: train-judge, steps: 4}
  generator: {job: pretrain-generator, needs: [judge], steps: 4}
  styles: {job: invert, needs: [generator, judge], steps: 3}
runs:
  - {name: m1, job: train-text, method: weighted, needs: [generator, styles, judge], steps: 4}
  - name: m3
    job: train-text
    method: contrastive
    needs: [generator, styles, judge]
    steps: 4
    ablate: {losses.preservation: [0, 1], reconstruction_target: [input, both]}
objective: {metric: eval/score, mode: max}
max_restarts: 3
checkpoints: {keep: {best: 2, latest: 1}}
";

#[test]
fn stages_ablations_and_inputs_expand_in_dependency_order() {
    let e = parse("methods.yaml", GOOD).unwrap();
    let names: Vec<&str> = e.runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names[..4], ["judge", "generator", "styles", "m1"]);
    assert_eq!(e.runs.len(), 4 + 4, "m3 has a 2x2 ablation");
    assert!(names.contains(&"m3@losses.preservation=0,reconstruction_target=both"));
    let styles = &e.runs[2];
    assert_eq!(
        styles.inputs,
        vec![
            ("generator".to_string(), "generator".to_string()),
            ("critic".to_string(), "judge".to_string())
        ]
    );
    let m3 = e
        .runs
        .iter()
        .find(|r| r.name == "m3@losses.preservation=0,reconstruction_target=both")
        .unwrap();
    let cfg: plume_jobs::yaml::Value = plume_jobs::yaml::from_str(&m3.config).unwrap();
    assert_eq!(cfg["kind"], "train-text");
    assert_eq!(cfg["losses"]["preservation"], 0);
    assert_eq!(cfg["reconstruction_target"], "both");
    assert_eq!(cfg["dataset"]["kind"], "synthetic-birds");
    assert_eq!(m3.total_steps, 4);
    // Its method and values are data, so no reader parses the name.
    assert_eq!(m3.method.as_deref(), Some("contrastive"));
    assert_eq!(
        m3.params.iter().collect::<Vec<_>>(),
        [
            (&"losses.preservation".to_string(), &"0".to_string()),
            (&"reconstruction_target".to_string(), &"both".to_string())
        ]
    );
    assert!(styles.params.is_empty() && styles.method.is_none());
}

#[test]
fn sweeps_are_grids_or_seeded_random_draws() {
    let grid = GOOD.replace(
        "objective:",
        "sweep: {lr_heads: [0.001, 0.01], batch: [8, 16]}\nobjective:",
    );
    let grid = grid.replace(
        "    ablate: {losses.preservation: [0, 1], reconstruction_target: [input, both]}\n",
        "",
    );
    let e = parse("s.yaml", &grid).unwrap();
    assert_eq!(e.runs.len(), 3 + 2 * 4);
    let random = grid.replace(
        "sweep: {lr_heads: [0.001, 0.01], batch: [8, 16]}",
        "sweep: {lr_heads: {log_uniform: [1e-5, 1e-3]}, batch: [8, 16], search: {random: 5, seed: 9}}",
    );
    let a = parse("s.yaml", &random).unwrap();
    let b = parse("s.yaml", &random).unwrap();
    assert_eq!(a.runs.len(), 3 + 2 * 5);
    let lrs: Vec<f64> = a
        .runs
        .iter()
        .filter(|r| r.name.starts_with("m1@"))
        .map(|r| {
            plume_jobs::yaml::from_str::<plume_jobs::yaml::Value>(&r.config).unwrap()["lr_heads"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(lrs.len(), 5);
    assert!(lrs.iter().all(|&x| (1e-5..=1e-3).contains(&x)), "{lrs:?}");
    assert_eq!(
        a.runs.iter().map(|r| &r.config).collect::<Vec<_>>(),
        b.runs.iter().map(|r| &r.config).collect::<Vec<_>>(),
        "same seed, same draws"
    );
}

/// Nine levels of nine aliases each (9^9 nodes if expanded), as mapping entries indented by
/// `indent`.
fn alias_bomb(indent: &str) -> String {
    let mut text = format!("{indent}a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let items = vec![format!("*a{}", i - 1); 9].join(", ");
        text += &format!("{indent}a{i}: &a{i} [{items}]\n");
    }
    text
}

/// Each case: the YAML, a fragment the error must contain, and the exact line and column the
/// parser placed it at ((0, 0): the whole file).
#[test]
fn bad_experiments_get_clear_located_errors() {
    let billion_laughs = "name: lol\na: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\ndataset: {kind: cub, path: x}\nruns: []\n";
    let huge = format!("name: big\n# {}\n", "x".repeat(50 << 20));
    let cases: Vec<(String, &str, (usize, usize))> = vec![
        (
            GOOD.replace("runs:\n", "runs:\n  - {name: [oops\n"),
            "",
            (10, 3),
        ),
        (
            GOOD.replace("max_restarts: 3", "max_restart: 3"),
            "unknown field `max_restart`",
            (16, 1),
        ),
        (
            GOOD.replace("max_restarts: 3", "max_restarts: lots"),
            "invalid u32",
            (16, 15),
        ),
        (
            GOOD.replace("needs: [judge], steps: 4}", "needs: [styles], steps: 4}"),
            "cycle",
            (5, 48),
        ),
        (
            GOOD.replace("method: weighted", "method: telepathy"),
            "unknown method \"telepathy\"",
            (8, 33),
        ),
        (
            GOOD.replace("job: invert", "job: invertt"),
            "unknown job \"invertt\"",
            (6, 17),
        ),
        (
            GOOD.replace("needs: [generator, judge]", "needs: [generatr, judge]"),
            "not a stage or run",
            (6, 33),
        ),
        (
            GOOD.replace("objective:", "sweep: {lr_heads: []}\nobjective:"),
            "lists no values",
            (15, 9),
        ),
        (
            GOOD.replace("objective:", "sweep: {}\nobjective:"),
            "no parameters",
            (15, 8),
        ),
        (
            GOOD.replace("[0, 1], reconstruction_target", "[], reconstruction_target"),
            "lists no values",
            (14, 14),
        ),
        (
            GOOD.replace("name: m1,", "name: ../../etc/passwd,"),
            "not allowed",
            (8, 12),
        ),
        (
            GOOD.replace("name: methods", "name: \"a/b\""),
            "not allowed",
            (1, 7),
        ),
        (
            GOOD.replace("name: m1,", "name: judge,"),
            "defined twice",
            (8, 12),
        ),
        (
            GOOD.replace("mode: max", "mode: maximal"),
            "unknown variant",
            (15, 39),
        ),
        (
            GOOD.replace("latest: 1", "latest: 0"),
            "at least 1",
            (17, 14),
        ),
        (
            GOOD.replace(
                "{job: train-judge, steps: 4}",
                "{job: train-judge, kind: x}",
            ),
            "use `job:`",
            (4, 29),
        ),
        (
            GOOD.replace(
                "objective:",
                "  - {name: ev, job: evaluate, needs: [m3]}\nobjective:",
            ),
            "several runs",
            (15, 39),
        ),
        (
            GOOD.replace(
                "needs: [generator, styles, judge], steps: 4}",
                "needs: [m3], steps: 4}",
            ),
            "cannot use the output",
            (8, 59),
        ),
        (
            GOOD.replace(
                "objective:",
                "sweep: {lr: {log_uniform: [1e-3, 1e-5]}, search: {random: 2}}\nobjective:",
            ),
            "low must be below high",
            (15, 9),
        ),
        (
            GOOD.replace(
                "objective:",
                "sweep: {lr: {log_uniform: [1e-5, 1e-3]}}\nobjective:",
            ),
            "search: {random: N}",
            (15, 9),
        ),
        (
            GOOD.replace("images: 200,", "images: 4000000000,"),
            "dataset: images must be in 1..=1000000, got 4000000000",
            (2, 10),
        ),
        (
            GOOD.replace("resolution: 32,", "resolution: 48,"),
            "dataset: the renderer draws [32, 64, 128] px, got 48",
            (2, 10),
        ),
        (
            GOOD.replace(
                "{job: train-judge, steps: 4}",
                "{job: train-judge, stpes: 4}",
            ),
            "judge: unknown field `stpes`",
            (4, 29),
        ),
        (
            GOOD.replace(
                "{job: train-judge, steps: 4}",
                "{job: train-judge, steps: -4}",
            ),
            "judge: steps must be in",
            (4, 29),
        ),
        (
            GOOD.replace(
                "method: weighted, needs",
                "method: weighted, lr_bert: fast, needs",
            ),
            "m1: lr_bert: invalid floating point",
            (8, 51),
        ),
        ("just a string".into(), "expected mapping", (1, 1)),
        ("".into(), "", (1, 1)),
        (billion_laughs.into(), "unknown field `a`", (2, 1)),
        (
            GOOD.replace(
                "objective:",
                &format!(
                    "sweep: {{lr_heads: [{}]}}\nobjective:",
                    vec!["0.001"; 401].join(", ")
                ),
            ),
            "expands into 2008 runs; at most 2000",
            (8, 3),
        ),
        (
            GOOD.replace(
                "objective:",
                &format!("run_defaults:\n{}objective:", alias_bomb("  ")),
            ),
            "once its aliases are expanded",
            (20, 12),
        ),
        (
            GOOD.replace(
                "objective:",
                &format!("sweep: {{lr: {}}}\nobjective:", "[".repeat(100_000)),
            ),
            "depth 32",
            (15, 44),
        ),
        (huge, "at most", (0, 0)),
        (
            GOOD.replace(
                "objective:",
                "search: {asha: {metric: eval/score, mode: max, min_steps: 1, max_steps: 4, reduction_factor: 1}}\nobjective:",
            ),
            "search.asha: reduction_factor must be 2..=100",
            (15, 9),
        ),
        (
            GOOD.replace(
                "objective:",
                "search: {asha: {metric: eval/score, mode: max, min_steps: 1, max_steps: 9}}\nobjective:",
            ),
            "m1: steps is 4, but search.asha.max_steps is 9",
            (8, 86),
        ),
        (
            GOOD.replace(
                "objective:",
                "search: {asha: {metric: eval/score, mode: best, min_steps: 1, max_steps: 4}}\nobjective:",
            ),
            "unknown variant `best`",
            (15, 43),
        ),
    ];
    assert!(cases.len() >= 15);
    for (i, (yaml, fragment, at)) in cases.iter().enumerate() {
        let e = match parse("exp.yaml", yaml) {
            Ok(_) => panic!("case {i} was accepted"),
            Err(e) => e,
        };
        let text = e.to_string();
        assert!(text.starts_with("exp.yaml:"), "case {i}: {text}");
        assert!(
            text.contains(fragment),
            "case {i}: {text:?} lacks {fragment:?}"
        );
        assert_eq!((e.line, e.column), *at, "case {i}: {text}");
        assert!(text.len() < 2000, "case {i}: error too long");
    }
}

/// Every experiment the repository documents (`experiments/*.yaml`) parses, validates and
/// expands, so a stale field fails the suite rather than a user's `plume up`.
#[test]
fn every_experiment_in_the_repository_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let src = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let e = parse(&name, &src).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert!(!e.runs.is_empty(), "{name}: no runs");
            seen.push(name);
        }
    }
    for must in [
        "quickstart.yaml",
        "methods-table.yaml",
        "generator-sweep.yaml",
    ] {
        assert!(
            seen.iter().any(|s| s == must),
            "{must} missing from {seen:?}"
        );
    }
}
