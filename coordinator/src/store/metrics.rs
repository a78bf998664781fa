//! Metric points and logs: ingestion (packed series, overwritten on an exact resume),
//! per-metric summaries, one metric's curve and the log tail.

use super::*;

/// How a metric's stored summary (`s`) takes in a batch's (`EXCLUDED`): the `SET` list of
/// both summary upserts, a literal for `concat!`.
macro_rules! summary_merge {
    () => {
        "last_value = CASE WHEN EXCLUDED.last_step >= s.last_step THEN EXCLUDED.last_value \
                      ELSE s.last_value END, \
         last_step = GREATEST(s.last_step, EXCLUDED.last_step), \
         min_value = LEAST(s.min_value, EXCLUDED.min_value), \
         max_value = GREATEST(s.max_value, EXCLUDED.max_value), count = s.count + EXCLUDED.count"
    };
}

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

/// What ingesting a metric batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    /// False when the batch was a resend already applied.
    pub applied: bool,
    /// The experiment's search did not promote the run at a rung: it must stop.
    pub stop: bool,
}

impl Store {
    /// [`Store::ingest_judged`], saying only whether the batch was applied.
    pub async fn ingest(
        &self,
        f: Fence,
        seq: i64,
        batch: &BTreeMap<String, Series>,
    ) -> Result<bool> {
        Ok(self.ingest_judged(f, seq, batch).await?.applied)
    }

    /// Ingests one metric batch: fence check, then in one statement idempotency by `(run,
    /// attempt, seq)`, the packed rows, checkpoint objectives and summaries; and, under
    /// `search.asha`, the decisions of the rungs the batch reaches.
    pub async fn ingest_judged(
        &self,
        f: Fence,
        seq: i64,
        batch: &BTreeMap<String, Series>,
    ) -> Result<Ingested> {
        let mut tx = self.pool.begin().await?;
        let leased = lock_fence(&mut tx, f).await?;
        let chunks = Chunks::pack(batch);
        let (objective_steps, objective_values): (&[i64], &[f64]) = batch
            .get(&leased.objective)
            .map_or((&[], &[]), |s| (&s.steps, &s.values));
        let sums = Summaries::of(batch);
        // Idempotency, the packed rows, the checkpoints' objective and the summaries in one
        // statement, each part only when the batch is new: every metric report passes here.
        // Concurrent batches of one run wait on the summaries' rows, so those are written
        // last: the upsert first counts what the other parts wrote (10,000-point batches
        // ingested 30% slower when the summaries went first).
        let query = sqlx::query(concat!(
            "WITH fresh AS (INSERT INTO metric_batches (run_id, attempt, seq) VALUES ($1, $2, $3) \
                            ON CONFLICT DO NOTHING RETURNING run_id), \
             chunks AS (INSERT INTO metric_chunks (run_id, name, first_step, last_step, steps, \
                                                   vals, overview_steps, overview_vals) \
                 SELECT $1, c.* FROM UNNEST($4::text[], $5::int8[], $6::int8[], $7::bytea[], \
                     $8::bytea[], $9::bytea[], $10::bytea[]) c WHERE EXISTS (SELECT 1 FROM fresh) \
                 RETURNING 1), \
             objective AS (UPDATE checkpoints c SET objective = p.v \
                 FROM UNNEST($11::int8[], $12::float8[]) AS p(s, v) \
                 WHERE c.run_id = $1 AND c.step = p.s AND EXISTS (SELECT 1 FROM fresh) \
                 RETURNING 1), \
             summaries AS (INSERT INTO metric_summaries AS s (run_id, name, last_step, \
                                   last_value, min_value, max_value, count) \
                 SELECT $1, m.* FROM UNNEST($13::text[], $14::int8[], $15::float8[], \
                     $16::float8[], $17::float8[], $18::int8[]) m \
                 WHERE EXISTS (SELECT 1 FROM fresh) \
                 AND (SELECT count(*) FROM chunks) + (SELECT count(*) FROM objective) >= 0 \
                 ON CONFLICT (run_id, name) DO UPDATE SET ",
            summary_merge!(),
            ") SELECT count(*) FROM fresh",
        ))
        .bind(f.run)
        .bind(f.attempt)
        .bind(seq)
        .bind(&chunks.names)
        .bind(&chunks.firsts)
        .bind(&chunks.lasts)
        .bind(&chunks.steps)
        .bind(&chunks.vals)
        .bind(&chunks.overview_steps)
        .bind(&chunks.overview_vals)
        .bind(objective_steps)
        .bind(objective_values);
        let fresh: i64 = sums.bind(query).fetch_one(&mut *tx).await?.get(0);
        if fresh == 0 {
            tx.commit().await?;
            return Ok(Ingested {
                applied: false,
                stop: false,
            });
        }
        let stop = match leased
            .search
            .as_ref()
            .and_then(|s| Some((s, batch.get(&s.asha.metric)?)))
        {
            Some((s, series)) => {
                super::search::observe(&mut tx, leased.experiment, f.run, &s.asha, series).await?
            }
            None => false,
        };
        tx.commit().await?;
        Ok(Ingested {
            applied: true,
            stop,
        })
    }

    /// Appends log lines of an attempt. One statement, fence included: the lease check
    /// holds the run's row (shared) while the lines go in.
    pub async fn append_logs(&self, f: Fence, lines: &[String]) -> Result<()> {
        let leased: Option<i64> = sqlx::query_scalar(
            "WITH lease AS (SELECT id FROM runs WHERE id = $1 AND attempt = $2 \
                            AND lease_worker = $3 AND state = $5 AND lease_expires > now() \
                            FOR SHARE), \
             added AS (INSERT INTO logs (run_id, attempt, line) \
                       SELECT lease.id, $2, UNNEST($4::text[]) FROM lease) \
             SELECT id FROM lease",
        )
        .bind(f.run)
        .bind(f.attempt)
        .bind(f.worker)
        .bind(lines)
        .bind(RunState::Running)
        .fetch_optional(&self.pool)
        .await?;
        leased.map(|_| ()).ok_or(StoreError::Stale {
            run: f.run,
            attempt: f.attempt,
            worker: f.worker,
        })
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
}

/// Merges each series into the run's summaries (last by step, min, max, count): one
/// statement for any number of metrics. Used by ingestion and by the rebuild after a resume.
pub(super) async fn merge_summaries(
    tx: &mut Tx<'_>,
    run: i64,
    series: &BTreeMap<String, Series>,
) -> Result<()> {
    let sums = Summaries::of(series);
    if sums.names.is_empty() {
        return Ok(());
    }
    let query = sqlx::query(concat!(
        "INSERT INTO metric_summaries AS s (run_id, name, last_step, last_value, min_value, \
         max_value, count) SELECT $1, * FROM UNNEST($2::text[], $3::int8[], $4::float8[], \
         $5::float8[], $6::float8[], $7::int8[]) ON CONFLICT (run_id, name) DO UPDATE SET ",
        summary_merge!()
    ))
    .bind(run);
    sums.bind(query).execute(&mut **tx).await?;
    Ok(())
}

/// Each metric's summary of a batch, as columns.
#[derive(Debug, Default)]
struct Summaries {
    names: Vec<String>,
    last_steps: Vec<i64>,
    last_values: Vec<f64>,
    mins: Vec<f64>,
    maxs: Vec<f64>,
    counts: Vec<i64>,
}

/// A statement with its parameters bound so far.
type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

impl Summaries {
    /// Binds the columns, in this order, as the next six parameters of `query`.
    fn bind<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        query
            .bind(&self.names)
            .bind(&self.last_steps)
            .bind(&self.last_values)
            .bind(&self.mins)
            .bind(&self.maxs)
            .bind(&self.counts)
    }

    fn of(series: &BTreeMap<String, Series>) -> Summaries {
        let mut out = Summaries::default();
        for (name, s) in series {
            let Some((i_last, _)) = s.steps.iter().enumerate().max_by_key(|(i, st)| (**st, *i))
            else {
                continue;
            };
            out.names.push(name.clone());
            out.last_steps.push(s.steps[i_last]);
            out.last_values.push(s.values[i_last]);
            out.mins
                .push(s.values.iter().copied().fold(f64::INFINITY, f64::min));
            out.maxs
                .push(s.values.iter().copied().fold(f64::NEG_INFINITY, f64::max));
            out.counts.push(s.steps.len() as i64);
        }
        out
    }
}

/// A batch's points packed into one `metric_chunks` row per metric, as columns.
#[derive(Debug, Default)]
struct Chunks {
    names: Vec<String>,
    firsts: Vec<i64>,
    lasts: Vec<i64>,
    steps: Vec<Vec<u8>>,
    vals: Vec<Vec<u8>>,
    overview_steps: Vec<Option<Vec<u8>>>,
    overview_vals: Vec<Option<Vec<u8>>>,
}

impl Chunks {
    fn pack(batch: &BTreeMap<String, Series>) -> Chunks {
        let mut out = Chunks::default();
        for (name, s) in batch {
            let (Some(first), Some(last)) = (s.steps.iter().min(), s.steps.iter().max()) else {
                continue;
            };
            out.names.push(name.clone());
            out.firsts.push(*first);
            out.lasts.push(*last);
            out.steps.push(pack_i64(&s.steps));
            out.vals.push(pack_f64(&s.values));
            let (os, ov) = packed_overview(s);
            out.overview_steps.push(os);
            out.overview_vals.push(ov);
        }
        out
    }
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
