//! `plume bench --suite dashboard`: the run page's curve request and, with headless
//! Chromium, the page's load to the curve drawn.

use super::*;

/// The dashboard on one run with a 1 M-point curve: the JSON API's downsampled curve (the
/// request a run page makes) and, when headless Chromium is installed, the run page's load
/// from navigation start to the curve drawn.
pub(super) async fn dashboard_suite(b: &mut Bench, out: &mut String) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let web = tokio::spawn(crate::web::serve(
        b.coordinator.clone(),
        listener,
        std::future::pending(),
    ));
    let mut w = worker_client(&b.addr).await?;
    let wid = register(&mut w, "bench-dashboard").await?;
    let name = format!("dash-{}", b.stamp);
    let fence = leased_run(&mut b.user, &b.store, wid, &name).await?;
    report_million_points(&mut w, fence).await?;
    sqlx::query("ANALYZE").execute(&b.store.pool).await?;
    let url =
        format!("{base}/api/experiments/{name}/runs/r0/curves?names=loss%2Ftotal&points=2000");
    let api = tokio::task::spawn_blocking(move || curve_request_timings(&url)).await??;
    let (mut minmax, mut lttb) = api;
    for (label, t) in [("min/max", &mut minmax), ("LTTB", &mut lttb)] {
        let _ = writeln!(
            out,
            "{:<64} {:>10.2} ms median, {:.2} ms p90",
            format!("dashboard API: 1 M-point curve -> 2,000 points ({label})"),
            percentile(&mut t.clone(), 0.5),
            percentile(t, 0.9)
        );
    }
    let page = format!("{base}/#/e/{name}/r/r0");
    let load = tokio::task::spawn_blocking(move || page_loads(&base, &page)).await?;
    match load {
        Ok(mut l) => {
            let _ = writeln!(
                out,
                "{:<64} {:>10.0} ms median, {:.0} ms max",
                "dashboard page: run with a 1 M-point curve, navigation -> drawn",
                percentile(&mut l.clone(), 0.5),
                percentile(&mut l, 1.0)
            );
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "{:<64} {:>10}",
                "dashboard page: run with a 1 M-point curve",
                format!("not measured: {e}")
            );
        }
    }
    web.abort();
    Ok(())
}

/// Five loads of the run page (after one warm-up), navigation start to the 1 M-point curve
/// drawn, in ms.
#[cfg(feature = "page-bench")]
fn page_loads(base: &str, page: &str) -> anyhow::Result<Vec<f64>> {
    let browser = plume_webdriver::Browser::start(1400, 1000)?;
    browser.goto(&format!("{base}/#token={USER}"))?;
    browser.wait_for(
        "sign-in",
        Duration::from_secs(20),
        "return document.body.dataset.ready === '/'",
    )?;
    let mut loads = Vec::new();
    for _ in 0..6 {
        browser.goto("about:blank")?;
        browser.goto(page)?;
        let v = browser.wait_for(
            "the 1 M-point chart",
            Duration::from_secs(30),
            "const c = document.querySelector('[data-metric=\"loss/total\"] canvas'); \
             return c && c.dataset.firstDraw ? Number(c.dataset.firstDraw) : 0;",
        )?;
        loads.push(v.as_f64().unwrap_or(f64::NAN));
    }
    Ok(loads[1..].to_vec())
}

/// Without the WebDriver client, the page's load is not measured, and the table says how to
/// measure it.
#[cfg(not(feature = "page-bench"))]
fn page_loads(_base: &str, _page: &str) -> anyhow::Result<Vec<f64>> {
    anyhow::bail!(
        "built without the browser (cargo run --release -p plume-coordinator --features page-bench -- bench --suite dashboard)"
    )
}

/// 30 timed requests (after one warm-up) of the run page's downsampled curve, by min/max and
/// by LTTB, each checked to keep the spike and at most 2,000 points.
fn curve_request_timings(url: &str) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut timings = (Vec::new(), Vec::new());
    for method in ["minmax", "lttb"] {
        for i in 0..31 {
            let t = Instant::now();
            let body: serde_json::Value = ureq::get(&format!("{url}&method={method}"))
                .set("Authorization", &format!("Bearer {USER}"))
                .call()?
                .into_json()?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let c = &body["curves"]["loss/total"];
            anyhow::ensure!(
                c["total"] == 1_000_000,
                "expected 1 M points: {}",
                c["total"]
            );
            let kept = c["values"].as_array().map_or(0, Vec::len);
            anyhow::ensure!(kept <= 2000, "{kept} points");
            let spike = c["values"]
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x == 25.0));
            anyhow::ensure!(spike, "{method} dropped the spike");
            if i > 0 {
                // The first request warms the connection pool and Postgres' cache.
                if method == "minmax" {
                    &mut timings.0
                } else {
                    &mut timings.1
                }
                .push(ms);
            }
        }
    }
    Ok(timings)
}

/// 1 M points of one metric in 100 batches, as a long run reports them, plus a short second
/// metric so the page draws more than one chart.
async fn report_million_points(w: &mut WorkerClient, fence: pb::Fence) -> anyhow::Result<()> {
    let total = 1_000_000usize;
    let per_batch = 10_000usize;
    let t = Instant::now();
    for k in 0..total / per_batch {
        let steps: Vec<i64> = (0..per_batch).map(|s| (k * per_batch + s) as i64).collect();
        let mut values: Vec<f64> = steps
            .iter()
            .map(|&s| 2.0 / (1.0 + s as f64 * 1e-4) + 0.05 * ((s * 7919 % 101) as f64 / 101.0))
            .collect();
        if k == 37 {
            values[4242] = 25.0; // one spike the downsampled curve must keep
        }
        let mut batch = pb::MetricBatch {
            fence: Some(fence),
            seq: k as u64 + 1,
            names: vec!["loss/total".into(), "eval/score".into()],
            name_index: vec![0; per_batch],
            steps,
            values,
            times: vec![],
        };
        if k % 10 == 9 {
            batch.name_index.push(1);
            batch.steps.push(((k + 1) * per_batch) as i64);
            batch.values.push(k as f64 / 100.0);
        }
        w.report_metrics(batch).await?;
    }
    eprintln!(
        "bench: 1 M points reported in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
