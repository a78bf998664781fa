//! Live views: `watch` (terminal loss curves) and the follow loop of `up --submit`.

use super::*;
use crate::inspect::{print_best, print_experiment, print_storage};
use crate::runs::submit;

/// Arguments of `plume watch`.
#[derive(clap::Args)]
pub struct WatchArgs {
    /// Experiment id or name.
    pub experiment: String,
    /// Only this run.
    #[arg(long)]
    pub run: Option<String>,
    /// Only these metrics (repeatable).
    #[arg(long)]
    pub metric: Vec<String>,
    /// Print once and exit instead of following.
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// Curves by run, by metric.
type Charts = BTreeMap<String, BTreeMap<String, (Vec<i64>, Vec<f64>)>>;

/// `plume watch`.
pub async fn watch_command(args: WatchArgs) -> Result<()> {
    let WatchArgs {
        experiment,
        run,
        metric,
        once,
        conn,
    } = args;
    watch(&conn, &experiment, run, metric, once).await
}

/// Terminal line charts: one per metric, every run overlaid with its own symbol.
fn chart(
    metric: &str,
    curves: &BTreeMap<String, (Vec<i64>, Vec<f64>)>,
    w: usize,
    h: usize,
) -> String {
    const MARKS: [char; 8] = ['*', 'o', '+', 'x', '#', '@', '%', '&'];
    let pts: Vec<(i64, f64)> = curves
        .values()
        .flat_map(|(s, v)| s.iter().copied().zip(v.iter().copied()))
        .filter(|(_, v)| v.is_finite())
        .collect();
    if pts.is_empty() {
        return String::new();
    }
    let (x0, x1) = (
        pts.iter().map(|p| p.0).min().unwrap_or(0),
        pts.iter().map(|p| p.0).max().unwrap_or(1),
    );
    let (y0, y1) = (
        pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
        pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
    );
    let xs = (x1 - x0).max(1) as f64;
    let ys = if y1 > y0 { y1 - y0 } else { 1.0 };
    let mut grid = vec![vec![' '; w]; h];
    for (i, (s, v)) in curves.values().enumerate() {
        for (x, y) in s.iter().zip(v) {
            if !y.is_finite() {
                continue;
            }
            let c = (((*x - x0) as f64 / xs) * (w - 1) as f64).round() as usize;
            let r = (((y - y0) / ys) * (h - 1) as f64).round() as usize;
            grid[h - 1 - r.min(h - 1)][c.min(w - 1)] = MARKS[i % MARKS.len()];
        }
    }
    let mut out = format!("{metric}\n");
    for (i, row) in grid.iter().enumerate() {
        let label = if i == 0 {
            format!("{y1:>10.4}")
        } else if i == h - 1 {
            format!("{y0:>10.4}")
        } else {
            " ".repeat(10)
        };
        out.push_str(&format!("{label} |{}\n", row.iter().collect::<String>()));
    }
    out.push_str(&format!(
        "{} +{}\n{} {:<w$}{}\n",
        " ".repeat(10),
        "-".repeat(w),
        " ".repeat(10),
        x0,
        x1,
        w = w.saturating_sub(x1.to_string().len())
    ));
    let legend: Vec<String> = curves
        .keys()
        .enumerate()
        .map(|(i, r)| format!("{} {r}", MARKS[i % MARKS.len()]))
        .collect();
    out.push_str(&format!("{}   {}\n", " ".repeat(10), legend.join("   ")));
    out
}

async fn watch(
    conn: &Conn,
    experiment: &str,
    run: Option<String>,
    metrics: Vec<String>,
    once: bool,
) -> Result<()> {
    let mut c = connect(conn).await?;
    let mut stream = c
        .watch_metrics(pb::WatchRequest {
            experiment: experiment.into(),
            run: run.unwrap_or_default(),
            metrics: metrics.clone(),
            backlog_only: once,
        })
        .await
        .map_err(grpc)?
        .into_inner();
    // metric -> run -> curve
    let mut data: Charts = BTreeMap::new();
    let mut states: BTreeMap<String, RunState> = BTreeMap::new();
    let mut last_draw = Instant::now() - Duration::from_secs(10);
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let draw = |data: &Charts, states: &BTreeMap<String, RunState>| {
        let mut out = String::new();
        if tty {
            out.push_str("\x1b[2J\x1b[H");
        }
        out.push_str(&format!(
            "{experiment}: {}\n\n",
            states
                .iter()
                .map(|(r, s)| format!("{r} {s}"))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
        let shown: Vec<&String> = if metrics.is_empty() {
            // Default: losses first, then eval metrics; at most 6 charts.
            let mut names: Vec<&String> = data.keys().collect();
            names.sort_by_key(|n| {
                (
                    !n.starts_with("loss/total"),
                    !n.starts_with("eval/score"),
                    !n.starts_with("loss"),
                    (*n).clone(),
                )
            });
            names.into_iter().take(6).collect()
        } else {
            data.keys().collect()
        };
        for m in shown {
            out.push_str(&chart(m, &data[m], 64, 10));
            out.push('\n');
        }
        print!("{out}");
        let _ = std::io::stdout().flush();
    };
    while let Some(u) = stream.message().await.map_err(grpc)? {
        if let Ok(state) = RunState::try_from(u.run_state) {
            states.insert(u.run.clone(), state);
        } else {
            let e = data.entry(u.name).or_default().entry(u.run).or_default();
            e.0.extend(u.steps);
            e.1.extend(u.values);
        }
        if !once && last_draw.elapsed() > Duration::from_millis(1000) {
            draw(&data, &states);
            last_draw = Instant::now();
        }
    }
    draw(&data, &states);
    Ok(())
}

/// Submits, prints progress until every run ended, then the best checkpoint.
pub(crate) async fn follow(conn: &Conn, file: &Path) -> Result<()> {
    let reply = submit(conn, file, false).await?;
    let mut c = connect(conn).await?;
    let id = reply.experiment_id.to_string();
    let started = Instant::now();
    let mut last_line = String::new();
    loop {
        let d = c
            .get_experiment(pb::GetRequest {
                experiment: id.clone(),
            })
            .await
            .map_err(grpc)?
            .into_inner();
        let s = d.summary.clone().unwrap_or_default();
        let running: Vec<String> = d
            .runs
            .iter()
            .filter(|r| r.state == i32::from(RunState::Running))
            .map(|r| format!("{} {}/{}", r.name, r.step, r.total_steps))
            .collect();
        let done = d.runs.iter().filter(|r| r.ended).count();
        let line = format!(
            "[{:>4}s] {done}/{} runs done; running: {}",
            started.elapsed().as_secs(),
            d.runs.len(),
            if running.is_empty() {
                "-".into()
            } else {
                running.join(", ")
            }
        );
        if line != last_line {
            println!("{line}");
            last_line = line;
        }
        let state = ExperimentState::try_from(s.state).map_err(|e| anyhow::anyhow!(e))?;
        if state.is_final() {
            println!();
            print_experiment(&d, true);
            print_storage(&d);
            let b = c
                .best_checkpoints(pb::BestRequest {
                    experiment: id.clone(),
                    metric: String::new(),
                    top: 3,
                })
                .await
                .map_err(grpc)?
                .into_inner();
            println!();
            print_best(&b, false);
            if state != ExperimentState::Succeeded {
                bail!("experiment {} ended {state}", s.name);
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
