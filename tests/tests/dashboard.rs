//! The dashboard in a real headless Chromium, against a real coordinator process, real
//! workers and a real PostgreSQL: sign-in, the experiments page, a run page whose curve grows
//! while a worker reports and that resumes without gaps or duplicates across a coordinator
//! `kill -9`, the compare view, and an evaluation's edit gallery. Screenshots of each go to
//! `target/tmp/dashboard-screenshots/`. Also: no unauthenticated read or mutation, and the
//! JSON API's errors.

use plume_coordinator::pg::{free_port, PrivatePostgres};
use plume_system_tests::Browser;
use plume_system_tests::{coordinator, worker, Kill, USER};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The ablated run's name, URL-encoded: generated names hold `@`, `=` and `,`.
const M3: &str = "m3%40losses.preservation%3D1%2Ctemperature%3D1e-1";

const EXPERIMENT: &str = "name: dash
dataset: {kind: synthetic-birds, images: 200, resolution: 32, seed: 3}
stages:
  judge: {job: train-judge, steps: 4, batch: 4, net: {channels: [8, 8, 8], hidden: 16}, checkpoint_every: 2}
  generator: {job: pretrain-generator, needs: [judge], steps: 1200, batch: 4, checkpoint_every: 200, eval_every: 5000, sample_every: 5000, fid_images: 16, network: {resolution: 32, z_dim: 32, w_dim: 32, channel_base: 256, channel_max: 16}}
  styles: {job: invert, needs: [generator, judge], steps: 3, batch: 100, limit: 200}
runs:
  - {name: m1, job: train-text, method: weighted, needs: [generator, styles, judge], steps: 6, batch: 4, max_tokens: 32, eval_every: 3, eval_edits: 8, checkpoint_every: 3}
  - {name: m3, job: train-text, method: contrastive, needs: [generator, styles, judge], steps: 6, batch: 4, max_tokens: 32, eval_every: 3, eval_edits: 8, checkpoint_every: 3, ablate: {losses.preservation: [1], temperature: [0.1]}}
objective: {metric: eval/score, mode: max}
max_restarts: 3
";

/// `(status, JSON body)` of an HTTP request; `auth` is a header pair.
fn http(method: &str, url: &str, auth: Option<(&str, &str)>, body: Option<&str>) -> (u16, Value) {
    let mut req = ureq::request(method, url).timeout(Duration::from_secs(30));
    if let Some((k, v)) = auth {
        req = req.set(k, v);
    }
    let res = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    let r = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return (0, json!({ "error": e.to_string() })),
    };
    let code = r.status();
    let text = r.into_string().unwrap_or_default();
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn bearer() -> Option<(&'static str, &'static str)> {
    Some(("Authorization", "Bearer user-token-for-tests"))
}

fn wait(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run_of<'a>(detail: &'a Value, name: &str) -> &'a Value {
    detail["runs"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no run {name} in {detail}"))
}

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots")
}

#[test]
fn dashboard_in_headless_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    let pg = PrivatePostgres::start(&d.join("pg"), free_port().unwrap()).unwrap();
    let (port, web) = (free_port().unwrap(), free_port().unwrap());
    let log = d.join("coordinator.log");
    let mut coord = coordinator(&pg.url, port, Some(web), &log);
    let base = format!("http://127.0.0.1:{web}");
    let api = |path: &str| format!("{base}/api{path}");
    wait("the dashboard", 30, || {
        http("GET", &api("/experiments"), bearer(), None).0 == 200
    });
    let mut workers: Vec<Kill> = (0..2)
        .map(|i| worker(port, &format!("w{i}"), &d.join(format!("w{i}"))))
        .collect();

    // Nothing is read or changed without the user token.
    let (code, body) = http("GET", &api("/experiments"), None, None);
    assert_eq!(code, 401, "{body}");
    let wrong = Some(("Authorization", "Bearer not-the-token"));
    assert_eq!(http("GET", &api("/experiments"), wrong, None).0, 401);
    let (code, _) = http("POST", &api("/experiments"), None, Some(EXPERIMENT));
    assert_eq!(code, 401);
    // Bad input: a clear error, nothing stored.
    let (code, body) = http(
        "POST",
        &api("/experiments?file=bad.yaml"),
        bearer(),
        Some("name: bad\nruns: [\n"),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("bad.yaml"),
        "{body}"
    );
    let (code, body) = http(
        "GET",
        &api("/experiments/dash/runs/x/curves?method=random"),
        bearer(),
        None,
    );
    assert_eq!(code, 404, "{body}");
    assert_eq!(
        http("GET", &api("/experiments"), bearer(), None).1["experiments"],
        json!([])
    );

    let (code, body) = http(
        "POST",
        &api("/experiments?file=dash.yaml"),
        bearer(),
        Some(EXPERIMENT),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["name"], "dash");
    let (code, body) = http(
        "GET",
        &api("/experiments/dash/runs/generator/curves?method=random"),
        bearer(),
        None,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("minmax or lttb"));
    let (code, body) = http(
        "GET",
        &api("/experiments/dash/best?bogus=1"),
        bearer(),
        None,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("bogus"), "{body}");
    let (code, body) = http(
        "GET",
        &api("/experiments/dash/stream?runs=m1"),
        bearer(),
        None,
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not a run id"),
        "{body}"
    );
    let (code, body) = http(
        "GET",
        &api("/experiments/dash/stream?after=1%3Ax"),
        bearer(),
        None,
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        http("POST", &api("/login"), None, Some("{\"token\": 1}")).0,
        400
    );
    assert_eq!(
        http("POST", &api("/login"), None, Some("{\"token\": \"guess\"}")).0,
        401
    );
    // A cookie alone cannot change anything without the anti-forgery header.
    let cookie = Some(("Cookie", "plume_token=user-token-for-tests"));
    for action in ["cancel", "rerun"] {
        let (code, body) = http(
            "POST",
            &api(&format!("/experiments/dash/{action}")),
            cookie,
            None,
        );
        assert_eq!(code, 403, "{action}: {body}");
    }
    let detail = http("GET", &api("/experiments/dash"), cookie, None).1;
    assert_eq!(detail["summary"]["state"], "running");
    assert!(detail["runs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["state"] != "cancelled"));

    let shots = screenshots();
    let b = Browser::start(1400, 1000).expect("headless Chromium");
    // Sign in through the form.
    b.goto(&format!("{base}/")).unwrap();
    b.wait_for(
        "the sign-in form",
        Duration::from_secs(20),
        "return document.getElementById('token') !== null",
    )
    .unwrap();
    b.eval(
        "document.getElementById('token').value = arguments[0]; \
         document.querySelector('form.login').requestSubmit();",
        json!([USER]),
    )
    .unwrap();
    b.wait_for(
        "the experiments page to list the experiment",
        Duration::from_secs(20),
        "return document.querySelector('#experiments tr[data-experiment=\"dash\"] a') !== null",
    )
    .unwrap();
    b.screenshot(&shots.join("experiments.png")).unwrap();

    // A run page's curve grows while the worker reports.
    wait("the generator to run", 120, || {
        let d = http("GET", &api("/experiments/dash"), bearer(), None).1;
        run_of(&d, "generator")["state"] == "running"
            && run_of(&d, "generator")["step"].as_i64() > Some(20)
    });
    b.goto(&format!("{base}/#/e/dash/r/generator")).unwrap();
    let points = "const c = document.querySelector('[data-metric=\"gen/loss_g\"] canvas'); \
                  return c ? Number(c.dataset.points || 0) : 0;";
    let first = b
        .wait_for("the loss curve", Duration::from_secs(30), points)
        .unwrap()
        .as_i64()
        .unwrap();
    let grown = b
        .wait_for(
            "the curve to gain points",
            Duration::from_secs(60),
            &format!("const n = (() => {{ {points} }})(); return n > {first} ? n : 0;"),
        )
        .unwrap();
    eprintln!("run page: {first} points, then {grown}");
    b.screenshot(&shots.join("run-live.png")).unwrap();

    // The coordinator dies and comes back; the page's stream resumes where it stopped.
    drop(coord);
    std::thread::sleep(Duration::from_secs(1));
    coord = coordinator(&pg.url, port, Some(web), &log);
    // Then the workers die after a checkpoint: a new attempt resumes from it and reports
    // the steps after it again, which the page must replace, not append.
    wait("a generator checkpoint", 120, || {
        let r = http(
            "GET",
            &api("/experiments/dash/runs/generator"),
            bearer(),
            None,
        )
        .1;
        r["checkpoints"].as_array().is_some_and(|c| !c.is_empty())
            && r["run"]["step"].as_i64() > Some(300)
    });
    workers.clear();
    workers.push(worker(port, "w2", &d.join("w2")));
    wait("the generator to finish", 240, || {
        let d = http("GET", &api("/experiments/dash"), bearer(), None).1;
        d["runs"].is_array() && run_of(&d, "generator")["state"] == "succeeded"
    });
    let detail = http("GET", &api("/experiments/dash"), bearer(), None).1;
    let stored = run_of(&detail, "generator")["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "gen/loss_g")
        .unwrap()["count"]
        .as_i64()
        .unwrap();
    assert!(stored < 2000, "no downsampling in this check ({stored})");
    let attempts = run_of(&detail, "generator")["attempts"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        attempts.len() >= 2 && attempts.last().unwrap()["resumed_from_step"].as_i64() > Some(0),
        "the generator should have resumed from a checkpoint: {attempts:?}"
    );
    // Every stored point is drawn exactly once: no gap and no duplicate after the reconnect.
    let drawn = b
        .wait_for(
            "the page to hold every stored point",
            Duration::from_secs(30),
            &format!("const n = (() => {{ {points} }})(); return n === {stored} ? n : 0;"),
        )
        .unwrap();
    assert_eq!(drawn.as_i64(), Some(stored));
    b.wait_for(
        "the page to show the run succeeded",
        Duration::from_secs(20),
        "return document.querySelector('.page-head .badge.succeeded') !== null",
    )
    .unwrap();

    // The compare view overlays two runs.
    wait("the text runs", 300, || {
        let d = http("GET", &api("/experiments/dash"), bearer(), None).1;
        d["summary"]["state"] != "running"
    });
    let detail = http("GET", &api("/experiments/dash"), bearer(), None).1;
    assert_eq!(detail["summary"]["state"], "succeeded", "{detail}");
    b.goto(&format!(
        "{base}/#/e/dash/compare?run=m1&run={M3}&metric=loss%2Ftotal&smooth=0"
    ))
    .unwrap();
    let overlay = b
        .wait_for(
            "two runs overlaid",
            Duration::from_secs(20),
            "const items = document.querySelectorAll('#compare-chart .legend-item'); \
             const c = document.querySelector('#compare-chart canvas'); \
             return items.length === 2 && Number(c.dataset.points) >= 12 ? c.dataset.points : '';",
        )
        .unwrap();
    eprintln!("compare: {overlay} points over two runs");
    b.screenshot(&shots.join("compare.png")).unwrap();

    // The gallery shows a real PNG an evaluation produced.
    b.goto(&format!("{base}/#/e/dash/r/m1")).unwrap();
    let size = b
        .wait_for(
            "the edit gallery",
            Duration::from_secs(20),
            "const img = document.querySelector('#gallery figure[data-artifact=\"edits\"] img'); \
             if (!img || !img.complete || img.naturalWidth === 0) return ''; \
             img.scrollIntoView(); return img.naturalWidth + 'x' + img.naturalHeight;",
        )
        .unwrap();
    eprintln!("gallery image {size}");
    b.screenshot(&shots.join("gallery.png")).unwrap();

    let errors: Vec<String> = b
        .console()
        .into_iter()
        .filter(|l| l.contains("Uncaught") || l.contains("Content Security Policy"))
        .collect();
    assert!(errors.is_empty(), "page errors: {errors:#?}");
    eprintln!("screenshots in {}", shots.display());
    drop(coord);
}
