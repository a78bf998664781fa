//! Fuzzing the two parsers every client's text reaches: `experiment::parse` (the coordinator
//! runs it on every submit) and `JobSpec::from_yaml` (the worker runs it on every job). The
//! inputs are the repository's own experiment and job files, mutated by proptest: bytes
//! flipped, YAML tokens inserted (flow and block openers, anchors, aliases, tags, merge keys,
//! odd scalars), regions deleted and duplicated. Neither parser may panic, and none may take
//! more than a second on any input (the budgets keep refusals to milliseconds; a second is a
//! stall guard that holds on any machine, not a speed target).
//!
//! The suite runs a short pass (`PLUME_FUZZ_SECONDS`, default 5). The long run of issue 13:
//! `PLUME_FUZZ_SECONDS=600 cargo test --release -p plume-coordinator --test fuzz_parsers -- --nocapture`.

use plume_coordinator::experiment::parse;
use plume_jobs::JobSpec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// Tokens that stress a YAML parser and Plume's readers.
const TOKENS: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    ": ",
    ", ",
    "- ",
    "\n",
    "\n  ",
    "\n    - ",
    "&a ",
    "*a",
    "&b [*a, *a]",
    "!!str ",
    "!!binary ",
    "!custom ",
    "? ",
    "|\n  ",
    ">-\n  ",
    "\"",
    "'",
    "#",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "<<: *a\n",
    ".nan",
    ".inf",
    "-.inf",
    "-1",
    "1e309",
    "99999999999999999999",
    "~",
    "null",
    "true",
    "0x1F",
    "0o17",
    "1_000",
    "\t",
    "\u{0}",
    "\u{feff}",
    "\u{202e}",
    "name: x\n",
    "steps: ",
    "batch: ",
    "ablate: {",
    "sweep: {",
    "needs: [",
    "job: train-text",
    "kind: invert\n",
    "search: {random: 1000}",
    "log_uniform: [1e-9, 1]",
    "dataset: {kind: cub, path: /}",
    "run_defaults: {",
    "..",
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, usize),
    Delete(usize, usize),
    Duplicate(usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Flip(p, b)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(p, t)| Mutation::Insert(p, t)),
        (any::<usize>(), 1usize..64).prop_map(|(p, n)| Mutation::Delete(p, n)),
        (any::<usize>(), 1usize..256, any::<usize>())
            .prop_map(|(p, n, at)| Mutation::Duplicate(p, n, at)),
    ]
}

fn apply(seed: &str, mutations: &[Mutation]) -> String {
    let mut b = seed.as_bytes().to_vec();
    for m in mutations {
        let len = b.len().max(1);
        match *m {
            Mutation::Flip(p, x) if !b.is_empty() => b[p % len] = x,
            Mutation::Flip(..) => {}
            Mutation::Insert(p, t) => {
                let at = p % (b.len() + 1);
                b.splice(at..at, TOKENS[t].bytes());
            }
            Mutation::Delete(p, n) if !b.is_empty() => {
                let at = p % len;
                b.drain(at..(at + n).min(b.len()));
            }
            Mutation::Delete(..) => {}
            Mutation::Duplicate(p, n, at) if !b.is_empty() => {
                let from = p % len;
                let part: Vec<u8> = b[from..(from + n).min(b.len())].to_vec();
                let to = at % (b.len() + 1);
                b.splice(to..to, part);
            }
            Mutation::Duplicate(..) => {}
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// The repository's experiment and job files.
fn corpus() -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
    let mut files = Vec::new();
    for dir in [root.clone(), root.join("jobs")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    assert!(files.len() >= 5, "the corpus needs the repository's files");
    files
}

#[test]
fn the_parsers_never_panic_or_stall_on_mutated_files() {
    let seconds: u64 = std::env::var("PLUME_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let corpus = corpus();
    let input = (0..corpus.len(), prop::collection::vec(mutation(), 1..12))
        .prop_map(move |(i, ms)| apply(&corpus[i], &ms));
    let worst = RefCell::new((Duration::ZERO, String::new()));
    let mut executions = 0u64;
    let (mut accepted, mut refused) = (0u64, 0u64);
    let started = Instant::now();
    let mut round = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&round.to_le_bytes());
        let config = Config {
            cases: 500,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        let counts = RefCell::new((0u64, 0u64, 0u64));
        runner
            .run(&input, |text| {
                for which in 0..2 {
                    let t = Instant::now();
                    let ok = match which {
                        0 => parse("fuzz.yaml", &text).is_ok(),
                        _ => JobSpec::from_yaml(&text, "fuzz").is_ok(),
                    };
                    let took = t.elapsed();
                    let mut c = counts.borrow_mut();
                    c.0 += 1;
                    if ok {
                        c.1 += 1
                    } else {
                        c.2 += 1
                    }
                    let mut w = worst.borrow_mut();
                    if took > w.0 {
                        *w = (took, text.chars().take(200).collect());
                    }
                    prop_assert!(took < Duration::from_secs(1), "took {took:?}");
                }
                Ok(())
            })
            .unwrap();
        let c = counts.into_inner();
        executions += c.0;
        accepted += c.1;
        refused += c.2;
        round += 1;
    }
    let (w, text) = worst.into_inner();
    println!(
        "fuzz: {executions} parses in {:.0} s ({accepted} accepted, {refused} refused), worst {:.2} ms on {text:?}",
        started.elapsed().as_secs_f64(),
        w.as_secs_f64() * 1e3
    );
    assert!(executions > 0);
}
