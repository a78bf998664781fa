//! `plume table`: one row per run and one column per metric, the form a results section
//! takes (a methods table, a sweep's grid). Plain text for the terminal, Markdown to paste
//! into a results file.

use crate::states::RunState;
use plume_proto::v1 as pb;

/// Which value of a metric's history a column shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stat {
    /// The last reported value (the final evaluation).
    Last,
    /// The smallest value.
    Min,
    /// The largest value.
    Max,
}

/// The metrics shown when none are asked for: every headline evaluation metric, `eval/*` and
/// `gen/*` (one `/`, so per-group breakdowns such as `gen/coverage/has_wing_color` stay out,
/// and not the per-step losses) that some run reported, the objective first.
pub fn default_metrics(d: &pb::ExperimentDetail) -> Vec<String> {
    let objective = d
        .summary
        .as_ref()
        .map(|s| {
            s.objective
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    // Training metrics (losses, logits, R1, timings) come every few steps; evaluations every
    // hundreds.
    let per_step = |m: &pb::MetricSummary, step: i64| m.count >= 10 && m.count * 50 > step;
    let mut names: Vec<String> = d
        .runs
        .iter()
        .flat_map(|r| r.metrics.iter().filter(move |m| !per_step(m, r.step)))
        .map(|m| m.name.clone())
        .filter(|n| {
            (n.starts_with("eval/") || n.starts_with("gen/")) && n.matches('/').count() == 1
        })
        .collect();
    names.sort();
    names.dedup();
    if let Some(i) = names.iter().position(|n| *n == objective) {
        let o = names.remove(i);
        names.insert(0, o);
    }
    names
}

/// The table of `metrics` over the runs that reported at least one of them.
pub fn render(d: &pb::ExperimentDetail, metrics: &[String], stat: Stat, markdown: bool) -> String {
    let mut header = vec!["run".to_string(), "state".to_string(), "step".to_string()];
    header.extend(metrics.iter().cloned());
    let mut rows = Vec::new();
    for r in &d.runs {
        let cells: Vec<String> = metrics
            .iter()
            .map(|name| {
                r.metrics
                    .iter()
                    .find(|m| &m.name == name)
                    .map_or_else(String::new, |m| {
                        let v = match stat {
                            Stat::Last => m.last,
                            Stat::Min => m.min,
                            Stat::Max => m.max,
                        };
                        format_value(v)
                    })
            })
            .collect();
        if cells.iter().all(String::is_empty) {
            continue;
        }
        let mut row = vec![
            r.name.clone(),
            RunState::name_of(r.state).to_string(),
            r.step.to_string(),
        ];
        row.extend(cells);
        rows.push(row);
    }
    if markdown {
        let mut out = format!("| {} |\n", header.join(" | "));
        out += &format!("|{}\n", "---|".repeat(header.len()));
        for row in rows {
            out += &format!("| {} |\n", row.join(" | "));
        }
        return out;
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (s, w))| {
                if c == 0 {
                    format!("{s:<w$}")
                } else {
                    format!("{s:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = line(&header) + "\n";
    for row in &rows {
        out += &(line(row) + "\n");
    }
    out
}

/// Four significant digits, without exponent for ordinary magnitudes.
fn format_value(v: f64) -> String {
    if v == 0.0 || (1e-3..1e6).contains(&v.abs()) {
        let decimals = (3 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
        format!("{v:.decimals$}")
    } else {
        format!("{v:.3e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(name: &str, last: f64, min: f64, max: f64) -> pb::MetricSummary {
        pb::MetricSummary {
            name: name.into(),
            last,
            min,
            max,
            last_step: 1,
            count: 2,
        }
    }

    fn detail() -> pb::ExperimentDetail {
        pb::ExperimentDetail {
            summary: Some(pb::ExperimentSummary {
                objective: "eval/score (max)".into(),
                ..Default::default()
            }),
            runs: vec![
                pb::RunSummary {
                    name: "judge".into(),
                    state: RunState::Succeeded.into(),
                    step: 500,
                    metrics: vec![metric("judge/accuracy", 0.9, 0.1, 0.9)],
                    ..Default::default()
                },
                pb::RunSummary {
                    name: "m0".into(),
                    state: RunState::Succeeded.into(),
                    step: 1,
                    metrics: vec![
                        metric("eval/edit_success", 0.315, 0.315, 0.315),
                        metric("eval/score", 0.4305, 0.4305, 0.4305),
                        metric("eval/realism", 1849.8227, 1849.8227, 1849.8227),
                    ],
                    ..Default::default()
                },
                pb::RunSummary {
                    name: "m3".into(),
                    state: RunState::Running.into(),
                    step: 100,
                    metrics: vec![
                        metric("eval/score", 0.2, 0.1, 0.25),
                        metric("gen/coverage/has_wing_color", 3.0, 3.0, 3.0),
                        pb::MetricSummary {
                            count: 100,
                            ..metric("gen/loss_g", 2.0, 1.0, 3.0)
                        },
                    ],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn the_objective_leads_and_breakdowns_stay_out() {
        assert_eq!(
            default_metrics(&detail()),
            vec!["eval/score", "eval/edit_success", "eval/realism"]
        );
    }

    #[test]
    fn rows_are_the_runs_with_any_of_the_metrics() {
        let d = detail();
        let m = default_metrics(&d);
        let md = render(&d, &m, Stat::Last, true);
        assert_eq!(
            md,
            "| run | state | step | eval/score | eval/edit_success | eval/realism |\n\
             |---|---|---|---|---|---|\n\
             | m0 | succeeded | 1 | 0.4305 | 0.3150 | 1850 |\n\
             | m3 | running | 100 | 0.2000 |  |  |\n"
        );
        let best = render(&d, &m[..1], Stat::Max, false);
        assert!(best.lines().nth(2).unwrap().ends_with("0.2500"), "{best}");
        assert_eq!(render(&d, &m, Stat::Last, false).lines().count(), 3);
    }
}
