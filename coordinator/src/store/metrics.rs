//! Metric points and logs: ingestion (packed series, overwritten on an exact resume),
//! summaries, curves, the best checkpoint by a metric, and the chunks a live view follows.

use super::*;

/// Summary of one metric of a run.
#[derive(Debug, Clone)]
pub struct MetricSummary {
    /// Metric name.
    pub name: String,
    /// Last value.
    pub last: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Step of the last value.
    pub last_step: i64,
    /// Points.
    pub count: i64,
}

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

pub(super) fn pack_i64(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(super) fn pack_f64(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(super) fn unpack_i64(b: &[u8]) -> Vec<i64> {
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

pub(super) fn unpack_f64(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// Points of one metric in a batch.
#[derive(Debug, Default, Clone)]
pub struct Series {
    /// Steps, in report order.
    pub steps: Vec<i64>,
    /// Values.
    pub values: Vec<f64>,
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
    /// Ingests one metric batch: fence check, idempotency by `(run, attempt, seq)`, one insert
    /// of packed rows, one upsert of summaries, one update of checkpoint objectives.
    pub async fn ingest(
        &self,
        f: Fence,
        seq: i64,
        batch: &BTreeMap<String, Series>,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        lock_fence(&mut tx, f).await?;
        let fresh = sqlx::query(
            "INSERT INTO metric_batches (run_id, attempt, seq) VALUES ($1,$2,$3) ON CONFLICT DO NOTHING",
        )
        .bind(f.run)
        .bind(f.attempt)
        .bind(seq)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            tx.commit().await?;
            return Ok(false);
        }
        insert_series(&mut tx, f.run, batch).await?;
        let objective = objective_metric(&mut tx, f.run).await?;
        if let Some(s) = batch.get(&objective) {
            sqlx::query(
                "UPDATE checkpoints c SET objective = p.v FROM UNNEST($2::int8[], $3::float8[]) AS p(s, v) \
                 WHERE c.run_id = $1 AND c.step = p.s",
            )
            .bind(f.run)
            .bind(&s.steps)
            .bind(&s.values)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Appends log lines of an attempt.
    pub async fn append_logs(&self, f: Fence, lines: &[String]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        lock_fence(&mut tx, f).await?;
        sqlx::query("INSERT INTO logs (run_id, attempt, line) SELECT $1, $2, UNNEST($3::text[])")
            .bind(f.run)
            .bind(f.attempt)
            .bind(lines)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Metric summaries of a run.
    pub async fn summaries(&self, run: i64) -> Result<Vec<MetricSummary>> {
        let rows: Vec<(String, f64, f64, f64, i64, i64)> = sqlx::query_as(
            "SELECT name, last_value, min_value, max_value, last_step, count FROM metric_summaries \
             WHERE run_id = $1 ORDER BY name",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(name, last, min, max, last_step, count)| MetricSummary {
                name,
                last,
                min,
                max,
                last_step,
                count,
            })
            .collect())
    }

    /// One metric curve of a run, by step.
    pub async fn curve(&self, run: i64, name: &str) -> Result<Series> {
        let rows: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT steps, vals FROM metric_chunks WHERE run_id = $1 AND name = $2 ORDER BY first_step, id",
        )
        .bind(run)
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        let mut s = Series::default();
        for (st, va) in rows {
            s.steps.extend(unpack_i64(&st));
            s.values.extend(unpack_f64(&va));
        }
        Ok(s)
    }

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

    /// The last `tail` log lines of a run.
    pub async fn logs(&self, run: i64, tail: i64) -> Result<Vec<String>> {
        let mut lines: Vec<(i32, String)> = sqlx::query_as(
            "SELECT attempt, line FROM logs WHERE run_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(run)
        .bind(tail)
        .fetch_all(&self.pool)
        .await?;
        lines.reverse();
        Ok(lines
            .into_iter()
            .map(|(a, l)| format!("[attempt {a}] {l}"))
            .collect())
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

/// Merges each series into the run's summaries (last by step, min, max, count): one
/// statement for any number of metrics. Used by ingestion and by the rebuild after a resume.
pub(super) async fn merge_summaries(
    tx: &mut Tx<'_>,
    run: i64,
    series: &BTreeMap<String, Series>,
) -> Result<()> {
    let mut names = Vec::new();
    let (mut lasts, mut last_values, mut mins, mut maxs, mut counts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (name, s) in series {
        let Some((i_last, _)) = s.steps.iter().enumerate().max_by_key(|(i, st)| (**st, *i)) else {
            continue;
        };
        names.push(name.clone());
        lasts.push(s.steps[i_last]);
        last_values.push(s.values[i_last]);
        mins.push(s.values.iter().copied().fold(f64::INFINITY, f64::min));
        maxs.push(s.values.iter().copied().fold(f64::NEG_INFINITY, f64::max));
        counts.push(s.steps.len() as i64);
    }
    if names.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO metric_summaries AS s (run_id, name, last_step, last_value, min_value, max_value, count) \
         SELECT $1, * FROM UNNEST($2::text[], $3::int8[], $4::float8[], $5::float8[], $6::float8[], $7::int8[]) \
         ON CONFLICT (run_id, name) DO UPDATE SET \
         last_value = CASE WHEN EXCLUDED.last_step >= s.last_step THEN EXCLUDED.last_value ELSE s.last_value END, \
         last_step = GREATEST(s.last_step, EXCLUDED.last_step), \
         min_value = LEAST(s.min_value, EXCLUDED.min_value), \
         max_value = GREATEST(s.max_value, EXCLUDED.max_value), count = s.count + EXCLUDED.count",
    )
    .bind(run)
    .bind(&names)
    .bind(&lasts)
    .bind(&last_values)
    .bind(&mins)
    .bind(&maxs)
    .bind(&counts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A chunk's stored overview (`crate::downsample::overview`), packed; `None` when short.
pub(super) fn packed_overview(s: &Series) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    match crate::downsample::overview(&s.values) {
        Some(keep) => {
            let st: Vec<i64> = keep.iter().map(|&i| s.steps[i]).collect();
            let va: Vec<f64> = keep.iter().map(|&i| s.values[i]).collect();
            (Some(pack_i64(&st)), Some(pack_f64(&va)))
        }
        None => (None, None),
    }
}

/// Packs each metric's points into one row, then merges the summaries. Two statements per
/// batch.
pub(super) async fn insert_series(
    tx: &mut Tx<'_>,
    run: i64,
    batch: &BTreeMap<String, Series>,
) -> Result<()> {
    let mut names = Vec::new();
    let (mut firsts, mut lasts, mut steps, mut vals) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut o_steps, mut o_vals) = (Vec::new(), Vec::new());
    for (name, s) in batch {
        let (Some(first), Some(last)) = (s.steps.iter().min(), s.steps.iter().max()) else {
            continue;
        };
        names.push(name.clone());
        firsts.push(*first);
        lasts.push(*last);
        steps.push(pack_i64(&s.steps));
        vals.push(pack_f64(&s.values));
        let (os, ov) = packed_overview(s);
        o_steps.push(os);
        o_vals.push(ov);
    }
    if names.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO metric_chunks (run_id, name, first_step, last_step, steps, vals, overview_steps, overview_vals) \
         SELECT $1, * FROM UNNEST($2::text[], $3::int8[], $4::int8[], $5::bytea[], $6::bytea[], $7::bytea[], $8::bytea[])",
    )
    .bind(run)
    .bind(&names)
    .bind(&firsts)
    .bind(&lasts)
    .bind(&steps)
    .bind(&vals)
    .bind(&o_steps)
    .bind(&o_vals)
    .execute(&mut **tx)
    .await?;
    merge_summaries(tx, run, batch).await
}

/// Removes every point after `step` (and pictures after it), then rebuilds the run's
/// summaries from what is left.
pub(super) async fn truncate_after(tx: &mut Tx<'_>, run: i64, step: i64) -> Result<()> {
    sqlx::query("DELETE FROM metric_chunks WHERE run_id = $1 AND first_step > $2")
        .bind(run)
        .bind(step)
        .execute(&mut **tx)
        .await?;
    let straddling: Vec<(i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT id, steps, vals FROM metric_chunks WHERE run_id = $1 AND last_step > $2",
    )
    .bind(run)
    .bind(step)
    .fetch_all(&mut **tx)
    .await?;
    for (id, st, va) in straddling {
        let (s, v): (Vec<i64>, Vec<f64>) = unpack_i64(&st)
            .into_iter()
            .zip(unpack_f64(&va))
            .filter(|(s, _)| *s <= step)
            .unzip();
        let last = s.iter().copied().max().unwrap_or(step);
        let kept = Series {
            steps: s,
            values: v,
        };
        let (os, ov) = packed_overview(&kept);
        sqlx::query(
            "UPDATE metric_chunks SET steps = $2, vals = $3, last_step = $4, overview_steps = $5, \
             overview_vals = $6 WHERE id = $1",
        )
        .bind(id)
        .bind(pack_i64(&kept.steps))
        .bind(pack_f64(&kept.values))
        .bind(last)
        .bind(os)
        .bind(ov)
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query("DELETE FROM artifacts WHERE run_id = $1 AND step > $2")
        .bind(run)
        .bind(step)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM metric_summaries WHERE run_id = $1")
        .bind(run)
        .execute(&mut **tx)
        .await?;
    let rows: Vec<(String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT name, steps, vals FROM metric_chunks WHERE run_id = $1 ORDER BY first_step, id",
    )
    .bind(run)
    .fetch_all(&mut **tx)
    .await?;
    let mut all: BTreeMap<String, Series> = BTreeMap::new();
    for (name, st, va) in rows {
        let s = all.entry(name).or_default();
        s.steps.extend(unpack_i64(&st));
        s.values.extend(unpack_f64(&va));
    }
    merge_summaries(tx, run, &all).await
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
