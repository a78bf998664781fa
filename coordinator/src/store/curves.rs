//! Reading metrics back: the best checkpoints by a metric, the values at a step, curves with
//! wall-clock times, and the chunks a live view follows.

use super::metrics::{unpack_f64, unpack_i64};
use super::*;

/// A checkpoint ranked by `best`.
#[derive(Debug, Clone)]
pub struct Ranked {
    /// Checkpoint id.
    pub id: i64,
    /// Run id.
    pub run_id: i64,
    /// Run name.
    pub run: String,
    /// Step.
    pub step: i64,
    /// Metric value at that step.
    pub value: f64,
    /// Bytes.
    pub size: i64,
    /// SHA-256 (hex).
    pub sha256: String,
}

/// Points of one metric with the wall time (Unix seconds) each was stored at.
#[derive(Debug, Default, Clone)]
pub struct TimedSeries {
    /// Steps, ascending.
    pub steps: Vec<i64>,
    /// Values.
    pub values: Vec<f64>,
    /// Unix seconds.
    pub times: Vec<f64>,
}

/// What [`Store::timed_curves`] read.
#[derive(Debug, Default, Clone)]
pub struct TimedCurves {
    /// By metric: every point, or for the metrics in `overview` their chunks' overviews.
    pub curves: BTreeMap<String, TimedSeries>,
    /// By metric: how many points are stored (in the chunks the range touches).
    pub totals: BTreeMap<String, usize>,
    /// Metrics read from overviews.
    pub overview: Vec<String>,
    /// The run's stream cursor at the time of this read.
    pub cursor: i64,
}

/// A chunk of one run's points, as live streams send them.
#[derive(Debug, Clone)]
pub struct NewChunk {
    /// Run id.
    pub run: i64,
    /// Chunk id (the run's stream cursor after it).
    pub id: i64,
    /// Metric.
    pub name: String,
    /// When it was stored (Unix seconds).
    pub time: f64,
    /// The points.
    pub series: Series,
}

impl Store {
    /// Checkpoints of an experiment ranked by `metric` (the objective's stored values, or for
    /// another metric its value at each checkpoint's step).
    pub async fn best(
        &self,
        experiment: i64,
        metric: &str,
        mode: Mode,
        top: usize,
    ) -> Result<Vec<Ranked>> {
        let objective: String =
            sqlx::query_scalar("SELECT objective_metric FROM experiments WHERE id = $1")
                .bind(experiment)
                .fetch_one(&self.pool)
                .await?;
        let order = match mode {
            Mode::Max => "DESC",
            Mode::Min => "ASC",
        };
        if metric == objective {
            let rows = sqlx::query(&format!(
                "SELECT c.id, c.run_id, r.name, c.step, c.objective, c.size, c.sha256 FROM checkpoints c \
                 JOIN runs r ON r.id = c.run_id WHERE r.experiment_id = $1 AND c.objective IS NOT NULL \
                 ORDER BY c.objective {order}, c.id LIMIT $2"
            ))
            .bind(experiment)
            .bind(top as i64)
            .fetch_all(&self.pool)
            .await?;
            return Ok(rows
                .into_iter()
                .map(|r| Ranked {
                    id: r.get("id"),
                    run_id: r.get("run_id"),
                    run: r.get("name"),
                    step: r.get("step"),
                    value: r.get("objective"),
                    size: r.get("size"),
                    sha256: r.get("sha256"),
                })
                .collect());
        }
        let rows = sqlx::query(
            "SELECT c.id, c.run_id, r.name, c.step, c.size, c.sha256 FROM checkpoints c \
             JOIN runs r ON r.id = c.run_id WHERE r.experiment_id = $1",
        )
        .bind(experiment)
        .fetch_all(&self.pool)
        .await?;
        let mut ranked = Vec::new();
        let mut conn = self.pool.acquire().await?;
        for r in rows {
            let run_id: i64 = r.get("run_id");
            let step: i64 = r.get("step");
            if let Some(value) = value_at(&mut conn, run_id, metric, step).await? {
                ranked.push(Ranked {
                    id: r.get("id"),
                    run_id,
                    run: r.get("name"),
                    step,
                    value,
                    size: r.get("size"),
                    sha256: r.get("sha256"),
                });
            }
        }
        ranked.sort_by(|a, b| {
            let o = a.value.total_cmp(&b.value);
            if mode == Mode::Max {
                o.reverse()
            } else {
                o
            }
        });
        ranked.truncate(top);
        Ok(ranked)
    }

    /// Every metric a run reported at exactly `step`, in one query.
    pub async fn metrics_at(&self, run: i64, step: i64) -> Result<BTreeMap<String, f64>> {
        let rows: Vec<(String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT name, steps, vals FROM metric_chunks WHERE run_id = $1 AND first_step <= $2 \
             AND last_step >= $2 ORDER BY id",
        )
        .bind(run)
        .bind(step)
        .fetch_all(&self.pool)
        .await?;
        let mut out = BTreeMap::new();
        for (name, st, va) in rows {
            for (s, v) in unpack_i64(&st).into_iter().zip(unpack_f64(&va)) {
                if s == step {
                    out.insert(name.clone(), v);
                }
            }
        }
        Ok(out)
    }

    /// Curves of a run with each point's wall time (when its chunk was stored), optionally
    /// only the steps in `[from, to]`, for drawing at about `target` points: a curve long
    /// enough is read from its chunks' overviews (see `crate::downsample::overview`) instead
    /// of every point. Also the true point counts, and the run's stream cursor: everything
    /// is read in one snapshot, so every chunk with a larger id arrived after this read.
    pub async fn timed_curves(
        &self,
        run: i64,
        names: &[String],
        range: (Option<i64>, Option<i64>),
        target: usize,
    ) -> Result<TimedCurves> {
        let (from, to) = range;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let filter = "run_id = $1 AND (cardinality($2::text[]) = 0 OR name = ANY($2)) \
             AND ($3::int8 IS NULL OR last_step >= $3) AND ($4::int8 IS NULL OR first_step <= $4)";
        // octet_length reads a stored value's size without decompressing it.
        let counts: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT name, sum(octet_length(steps) / 8)::int8 FROM metric_chunks WHERE {filter} GROUP BY name"
        ))
        .bind(run)
        .bind(names)
        .bind(from)
        .bind(to)
        .fetch_all(&mut *tx)
        .await?;
        let coarse: Vec<String> = counts
            .iter()
            .filter(|(_, n)| crate::downsample::overview_suffices(*n as usize, target))
            .map(|(name, _)| name.clone())
            .collect();
        let rows = sqlx::query(&format!(
            "SELECT name, \
             CASE WHEN name = ANY($5) AND overview_steps IS NOT NULL THEN overview_steps ELSE steps END, \
             CASE WHEN name = ANY($5) AND overview_vals IS NOT NULL THEN overview_vals ELSE vals END, \
             extract(epoch FROM reported_at)::float8 FROM metric_chunks WHERE {filter} \
             ORDER BY name, first_step, id"
        ))
        .bind(run)
        .bind(names)
        .bind(from)
        .bind(to)
        .bind(&coarse)
        .fetch_all(&mut *tx)
        .await?;
        let cursor: i64 =
            sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM metric_chunks WHERE run_id = $1")
                .bind(run)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        let mut curves: BTreeMap<String, TimedSeries> = BTreeMap::new();
        let (lo, hi) = (from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX));
        for row in rows {
            let time: f64 = row.get(3);
            let s = curves.entry(row.get(0)).or_default();
            let steps = unpack_i64(row.get(1));
            let values = unpack_f64(row.get(2));
            for (step, value) in steps.into_iter().zip(values) {
                if (lo..=hi).contains(&step) {
                    s.steps.push(step);
                    s.values.push(value);
                    s.times.push(time);
                }
            }
        }
        Ok(TimedCurves {
            curves,
            totals: counts.into_iter().map(|(n, c)| (n, c as usize)).collect(),
            overview: coarse,
            cursor,
        })
    }

    /// Chunks of several runs newer than each run's cursor, oldest first, at most `limit`:
    /// what a live stream sends next. One statement for any number of runs.
    pub async fn chunks_after(&self, cursors: &[(i64, i64)], limit: i64) -> Result<Vec<NewChunk>> {
        let (runs, afters): (Vec<i64>, Vec<i64>) = cursors.iter().copied().unzip();
        let rows = sqlx::query(
            "SELECT c.run_id, c.id, c.name, c.steps, c.vals, extract(epoch FROM c.reported_at)::float8 \
             FROM UNNEST($1::int8[], $2::int8[]) AS k(run, after) \
             JOIN metric_chunks c ON c.run_id = k.run AND c.id > k.after ORDER BY c.id LIMIT $3",
        )
        .bind(&runs)
        .bind(&afters)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| NewChunk {
                run: r.get(0),
                id: r.get(1),
                name: r.get(2),
                time: r.get(5),
                series: Series {
                    steps: unpack_i64(r.get(3)),
                    values: unpack_f64(r.get(4)),
                },
            })
            .collect())
    }
}

/// The value of `name` at `step` (its last point at or before it).
pub(super) async fn value_at(
    conn: &mut sqlx::PgConnection,
    run: i64,
    name: &str,
    step: i64,
) -> Result<Option<f64>> {
    let rows: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT steps, vals FROM metric_chunks WHERE run_id = $1 AND name = $2 AND first_step <= $3 \
         ORDER BY first_step DESC, id DESC LIMIT 4",
    )
    .bind(run)
    .bind(name)
    .bind(step)
    .fetch_all(&mut *conn)
    .await?;
    let mut best: Option<(i64, f64)> = None;
    for (st, va) in rows {
        for (s, v) in unpack_i64(&st).into_iter().zip(unpack_f64(&va)) {
            if s <= step && best.is_none_or(|(bs, _)| s >= bs) {
                best = Some((s, v));
            }
        }
    }
    Ok(best.filter(|(s, _)| *s == step).map(|(_, v)| v))
}
