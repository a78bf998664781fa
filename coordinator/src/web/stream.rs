//! Live metric streams as server-sent events.
//!
//! A stream follows some runs of one experiment. Its position is a cursor per run (the id of
//! the last metric chunk sent), and every `points` event carries all cursors as its event
//! id, so a browser's `EventSource` that reconnects sends them back in `Last-Event-ID` and the
//! stream resumes exactly where it stopped: no gap, and nothing sent twice. A page that first
//! loads downsampled curves passes the cursor of that read as `after`.
//!
//! Events:
//! - `points`: `{"run": name, "metrics": {metric: {"steps", "values", "times"}}}`.
//! - `run`: `{"run", "state", "ended", "step", "total_steps", "attempt"}` when any of those
//!   changed (`ended`: the state is final).
//!   A new attempt that resumed from a checkpoint re-reports the steps after it; clients
//!   replace their points from the first re-reported step on.
//! - `done`: every followed run has ended and every point was sent; the client should close.

use super::{ApiError, ApiQuery};
use crate::follow::{Follower, Look};
use crate::server::Coordinator;
use crate::store::Store;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Query of `GET /api/experiments/{exp}/stream`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Comma-separated run ids (empty: every run). Ids, not names: generated run names
    /// hold commas (`m3@a=0,b=1`).
    #[serde(default)]
    pub runs: String,
    /// Cursors `runid:chunkid,...` to start after (a run without one starts at its first
    /// point); `Last-Event-ID` wins over this.
    #[serde(default)]
    pub after: String,
    /// `false`: only run state events (for pages that show no curves).
    #[serde(default)]
    pub points: Option<bool>,
}

/// Parses `runid:chunkid,...`.
pub fn parse_cursors(s: &str) -> Result<HashMap<i64, i64>, ApiError> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (r, c) = p
                .split_once(':')
                .ok_or_else(|| ApiError::bad_request(format!("bad cursor {p:?}")))?;
            let r = r.parse::<i64>();
            let c = c.parse::<i64>();
            match (r, c) {
                (Ok(r), Ok(c)) => Ok((r, c)),
                _ => Err(ApiError::bad_request(format!("bad cursor {p:?}"))),
            }
        })
        .collect()
}

/// Formats cursors as `runid:chunkid,...` (an SSE id: no newlines).
pub fn format_cursors(c: &BTreeMap<i64, i64>) -> String {
    c.iter()
        .map(|(r, k)| format!("{r}:{k}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `GET /api/experiments/{exp}/stream?runs=ID,ID&after=&points=`.
pub async fn stream(
    State(c): State<Coordinator>,
    Path(exp): Path<String>,
    ApiQuery(q): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let store = c.store().clone();
    let poll = c.intervals().follow_poll;
    let exp = store.resolve_experiment(&exp).await?;
    let runs = selected_runs(&store, exp, &q.runs).await?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let given = parse_cursors(resume.unwrap_or(&q.after))?;
    let cursors: BTreeMap<i64, i64> = runs
        .iter()
        .map(|(id, _)| (*id, given.get(id).copied().unwrap_or(0)))
        .collect();
    let names: HashMap<i64, String> = runs.into_iter().collect();
    let mut follower = Follower::new(store, exp, cursors, q.points.unwrap_or(true));
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(16);
    tokio::spawn(async move {
        loop {
            let Ok(look) = follower.look().await else {
                return;
            };
            let id = format_cursors(follower.cursors());
            let finished = look.finished;
            let caught_up = look.caught_up;
            for ev in look_events(look, &names, &id) {
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            if finished {
                let _ = tx.send(Ok(Event::default().event("done").data("{}"))).await;
                return;
            }
            if caught_up {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

/// The experiment's runs, or those of `wanted_ids` (comma-separated run ids) when given.
async fn selected_runs(
    store: &Store,
    exp: i64,
    wanted_ids: &str,
) -> Result<Vec<(i64, String)>, ApiError> {
    let mut runs: Vec<(i64, String)> = store
        .runs(exp)
        .await?
        .into_iter()
        .map(|r| (r.id, r.name))
        .collect();
    let wanted: Vec<i64> = wanted_ids
        .split(',')
        .filter(|r| !r.is_empty())
        .map(|r| {
            r.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("runs: {r:?} is not a run id")))
        })
        .collect::<Result<_, _>>()?;
    if !wanted.is_empty() {
        if let Some(missing) = wanted.iter().find(|w| !runs.iter().any(|r| r.0 == **w)) {
            return Err(ApiError {
                code: axum::http::StatusCode::NOT_FOUND,
                message: format!("no run with id {missing} in this experiment"),
            });
        }
        runs.retain(|r| wanted.contains(&r.0));
    }
    Ok(runs)
}

/// One look's events: points first, so a `run` event saying "succeeded" follows the run's
/// last points; one `points` event per run, its metrics merged in chunk order; then a `run`
/// event per changed run.
fn look_events(look: Look, names: &HashMap<i64, String>, id: &str) -> Vec<Event> {
    // One event per run and look, its metrics merged in chunk order.
    let mut by_run: BTreeMap<i64, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
    for ch in look.chunks {
        let m = by_run.entry(ch.run).or_default();
        let e = m
            .entry(ch.name)
            .or_insert_with(|| json!({"steps": [], "values": [], "times": []}));
        let n = ch.series.steps.len();
        extend(&mut e["steps"], ch.series.steps.iter().map(|s| json!(s)));
        extend(&mut e["values"], ch.series.values.iter().map(|v| json!(v)));
        extend(&mut e["times"], std::iter::repeat_n(json!(ch.time), n));
    }
    let points = by_run.into_iter().map(|(run, metrics)| {
        let data = json!({"run": names[&run], "metrics": metrics});
        Event::default()
            .event("points")
            .id(id)
            .data(data.to_string())
    });
    let runs = look.changed.into_iter().map(|(r, _)| {
        let data = json!({"run": r.name, "state": r.state, "ended": r.state.is_final(),
            "step": r.step, "total_steps": r.total_steps, "attempt": r.attempt,
            "error": r.error});
        Event::default().event("run").data(data.to_string())
    });
    points.chain(runs).collect()
}

fn extend(array: &mut serde_json::Value, items: impl Iterator<Item = serde_json::Value>) {
    if let Some(a) = array.as_array_mut() {
        a.extend(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let c: BTreeMap<i64, i64> = [(3, 17), (12, 4000)].into_iter().collect();
        let s = format_cursors(&c);
        assert_eq!(s, "3:17,12:4000");
        let back = parse_cursors(&s).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[&12], 4000);
        assert!(parse_cursors("").unwrap().is_empty());
        for bad in ["3", "x:1", "1:y", "1:2,\n"] {
            assert!(parse_cursors(bad).is_err(), "{bad:?}");
        }
    }
}
