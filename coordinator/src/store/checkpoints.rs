//! Checkpoints and artifacts: content-addressed chunks, retention, storage accounting and
//! garbage collection of chunks no checkpoint uses.

use super::curves::value_at;
use super::*;

/// A stored checkpoint of a run.
#[derive(Debug, Clone)]
pub struct CheckpointRow {
    /// Id (for downloads).
    pub id: i64,
    /// Step.
    pub step: i64,
    /// Attempt that wrote it.
    pub attempt: i32,
    /// Bytes.
    pub size: i64,
    /// Of those, bytes of resume state (optimizer moments...): 0 once dropped.
    pub state_size: i64,
    /// Whether its resume state was dropped (a newer checkpoint landed, or the run finished).
    pub state_dropped: bool,
    /// SHA-256 (hex).
    pub sha256: String,
    /// The experiment's objective at this step.
    pub objective: Option<f64>,
    /// Unix seconds.
    pub created: i64,
}

/// What one run's checkpoints weigh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStorage {
    /// How many it keeps.
    pub checkpoints: i64,
    /// Bytes of weights (and headers) as files.
    pub weight_bytes: i64,
    /// Bytes of resume state as files.
    pub state_bytes: i64,
    /// Bytes of the chunks no other run of the experiment references.
    pub own_stored_bytes: i64,
}

/// What an experiment's checkpoints weigh: as files (weights + state) and as stored (each
/// distinct chunk once); the difference is what dedup saved.
#[derive(Debug, Clone, Default)]
pub struct Storage {
    /// By run id.
    pub runs: BTreeMap<i64, RunStorage>,
    /// Bytes of weights as files.
    pub weight_bytes: i64,
    /// Bytes of resume state as files.
    pub state_bytes: i64,
    /// Bytes of distinct chunks as stored (encoded).
    pub stored_bytes: i64,
    /// Bytes of distinct chunks as files (what storing them unencoded would take).
    pub distinct_bytes: i64,
}

/// A stored picture of a run.
#[derive(Debug, Clone)]
pub struct ArtifactRow {
    /// Id.
    pub id: i64,
    /// Name (`samples.png`, `edits.png`, ...).
    pub name: String,
    /// Step.
    pub step: i64,
    /// Bytes.
    pub size: i64,
}

impl Store {
    /// Stores a checkpoint file: chunks at tensor boundaries, each stored once by content.
    /// Returns `(checkpoint id, bytes newly stored)`.
    pub async fn store_checkpoint(&self, f: Fence, step: i64, data: &[u8]) -> Result<(i64, u64)> {
        let chunks = blobs::split_checkpoint(data)
            .map_err(|e| StoreError::Invalid(format!("not a checkpoint: {e}")))?;
        let parts = blobs::part_sizes(data)
            .map_err(|e| StoreError::Invalid(format!("not a checkpoint: {e}")))?;
        let mut tx = self.pool.begin().await?;
        let leased = lock_fence(&mut tx, f).await?;
        chunk_lock(&mut tx, false).await?;
        let (hashes, new_bytes) = store_chunks(&mut tx, data, &chunks, true).await?;
        let objective = value_at(&mut tx, f.run, &leased.objective, step).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO checkpoints (run_id, attempt, step, size, sha256, chunks, objective, state_size) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT (run_id, step) DO UPDATE SET \
             attempt = EXCLUDED.attempt, size = EXCLUDED.size, sha256 = EXCLUDED.sha256, \
             chunks = EXCLUDED.chunks, objective = EXCLUDED.objective, state_size = EXCLUDED.state_size \
             RETURNING id",
        )
        .bind(f.run)
        .bind(f.attempt)
        .bind(step)
        .bind(data.len() as i64)
        .bind(blobs::sha256_hex(data))
        .bind(&hashes)
        .bind(objective)
        .bind(parts.state as i64)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        // A resume reads only the latest checkpoint: the older ones give up their state. Only
        // when there is some (usually one older checkpoint), in a transaction of its own that
        // takes the chunk lock exclusively before anything else (an upload holds it shared,
        // and upgrading would deadlock two uploads); most uploads take no exclusive lock.
        let older: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM checkpoints WHERE run_id = $1 AND step < $2 AND state_size > 0",
        )
        .bind(f.run)
        .bind(step)
        .fetch_all(&self.pool)
        .await?;
        if !older.is_empty() {
            let mut tx = self.pool.begin().await?;
            chunk_lock(&mut tx, true).await?;
            drop_states(&mut tx, &older, Vec::new()).await?;
            tx.commit().await?;
        }
        Ok((id, new_bytes))
    }

    /// Stores a picture of a run.
    pub async fn store_artifact(
        &self,
        f: Fence,
        step: i64,
        name: &str,
        data: &[u8],
    ) -> Result<(i64, u64)> {
        let chunks = blobs::split_plain(data);
        let mut tx = self.pool.begin().await?;
        lock_fence(&mut tx, f).await?;
        chunk_lock(&mut tx, false).await?;
        let (hashes, new_bytes) = store_chunks(&mut tx, data, &chunks, false).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO artifacts (run_id, step, name, size, chunks) VALUES ($1,$2,$3,$4,$5) \
             ON CONFLICT (run_id, name, step) DO UPDATE SET size = EXCLUDED.size, chunks = EXCLUDED.chunks \
             RETURNING id",
        )
        .bind(f.run)
        .bind(step)
        .bind(name)
        .bind(data.len() as i64)
        .bind(&hashes)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((id, new_bytes))
    }

    /// The bytes of a checkpoint with its SHA-256 and step: the whole file, or with
    /// `with_state` false its weights alone (what every reader but a resume needs).
    pub async fn checkpoint_bytes(
        &self,
        id: i64,
        with_state: bool,
    ) -> Result<(Vec<u8>, String, i64)> {
        type Row = (Vec<Vec<u8>>, String, i64, i64, bool);
        let row: Option<Row> = sqlx::query_as(
            "SELECT chunks, sha256, step, state_size, state_dropped FROM checkpoints WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let (hashes, sha, step, state_size, dropped) =
            row.ok_or_else(|| StoreError::NotFound(format!("no checkpoint {id}")))?;
        if with_state && dropped {
            return Err(StoreError::Invalid(format!(
                "checkpoint {id} (step {step}) holds weights only: resume state is kept in a \
                 run's latest checkpoint, and in a finished run's only with \
                 `checkpoints: {{keep: {{final_state: true}}}}`"
            )));
        }
        let mut conn = self.pool.acquire().await?;
        if !with_state && state_size > 0 {
            if let Some((w, kept)) = layout_without_state(&mut conn, id, &hashes).await? {
                let mut data = w.header;
                data.extend(chunk_data(&mut conn, &kept).await?);
                let sha = blobs::sha256_hex(&data);
                return Ok((data, sha, step));
            }
        }
        Ok((chunk_data(&mut conn, &hashes).await?, sha, step))
    }

    /// The bytes of an artifact.
    pub async fn artifact_bytes(&self, id: i64) -> Result<Vec<u8>> {
        let hashes: Option<Vec<Vec<u8>>> =
            sqlx::query_scalar("SELECT chunks FROM artifacts WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let hashes = hashes.ok_or_else(|| StoreError::NotFound(format!("no artifact {id}")))?;
        self.read_chunks(&hashes).await
    }

    pub(super) async fn read_chunks(&self, hashes: &[Vec<u8>]) -> Result<Vec<u8>> {
        chunk_data(&mut *self.pool.acquire().await?, hashes).await
    }

    /// Checkpoints of a run, by step.
    pub async fn checkpoints(&self, run: i64) -> Result<Vec<CheckpointRow>> {
        let rows = sqlx::query(
            "SELECT id, step, attempt, size, sha256, objective, extract(epoch FROM created_at)::int8, \
             state_size, state_dropped FROM checkpoints WHERE run_id = $1 ORDER BY step",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| CheckpointRow {
                id: r.get(0),
                step: r.get(1),
                attempt: r.get(2),
                size: r.get(3),
                sha256: r.get(4),
                objective: r.get(5),
                created: r.get(6),
                state_size: r.get(7),
                state_dropped: r.get(8),
            })
            .collect())
    }

    /// Deletes checkpoints and then the chunks nothing references any more; returns the
    /// bytes freed. (Retention does the same for a finished run; `plume bench storage`
    /// measures this at scale.)
    pub async fn delete_checkpoints(&self, ids: &[i64]) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        chunk_lock(&mut tx, true).await?;
        let deleted: Vec<Vec<Vec<u8>>> =
            sqlx::query_scalar("DELETE FROM checkpoints WHERE id = ANY($1) RETURNING chunks")
                .bind(ids)
                .fetch_all(&mut *tx)
                .await?;
        let candidates: Vec<Vec<u8>> = deleted.into_iter().flatten().collect();
        let freed = collect_garbage(&mut tx, &candidates).await?;
        tx.commit().await?;
        Ok(freed)
    }

    /// What an experiment's checkpoints weigh, per run and in all: weights and resume state
    /// as files, the chunks only that run references, and the distinct chunks stored.
    pub async fn storage(&self, experiment: i64) -> Result<Storage> {
        let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT c.run_id, count(*), sum(c.size - c.state_size)::int8, sum(c.state_size)::int8 \
             FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.experiment_id = $1 GROUP BY c.run_id",
        )
        .bind(experiment)
        .fetch_all(&self.pool)
        .await?;
        let own: HashMap<i64, i64> = sqlx::query_as(
            "WITH refs AS (SELECT DISTINCT c.run_id, unnest(c.chunks) AS h FROM checkpoints c \
                 JOIN runs r ON r.id = c.run_id WHERE r.experiment_id = $1), \
             owners AS (SELECT h, min(run_id) AS run_id FROM refs GROUP BY h HAVING count(*) = 1) \
             SELECT o.run_id, sum(octet_length(b.data))::int8 FROM owners o JOIN blob_chunks b ON b.hash = o.h \
             GROUP BY o.run_id",
        )
        .bind(experiment)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();
        let (stored, distinct): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT sum(octet_length(b.data))::int8, sum(b.size)::int8 FROM blob_chunks b \
             WHERE b.hash IN (SELECT unnest(c.chunks) FROM checkpoints c JOIN runs r ON r.id = c.run_id \
             WHERE r.experiment_id = $1)",
        )
        .bind(experiment)
        .fetch_one(&self.pool)
        .await?;
        let runs: BTreeMap<i64, RunStorage> = rows
            .into_iter()
            .map(|(run, n, weights, state)| {
                (
                    run,
                    RunStorage {
                        checkpoints: n,
                        weight_bytes: weights,
                        state_bytes: state,
                        own_stored_bytes: own.get(&run).copied().unwrap_or(0),
                    },
                )
            })
            .collect();
        Ok(Storage {
            weight_bytes: runs.values().map(|r| r.weight_bytes).sum(),
            state_bytes: runs.values().map(|r| r.state_bytes).sum(),
            stored_bytes: stored.unwrap_or(0),
            distinct_bytes: distinct.unwrap_or(0),
            runs,
        })
    }

    /// Pictures of a run (sample grids, edit galleries), by name then step.
    pub async fn artifacts(&self, run: i64) -> Result<Vec<ArtifactRow>> {
        let rows: Vec<(i64, String, i64, i64)> = sqlx::query_as(
            "SELECT id, name, step, size FROM artifacts WHERE run_id = $1 ORDER BY name, step",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name, step, size)| ArtifactRow {
                id,
                name,
                step,
                size,
            })
            .collect())
    }

    /// The experiment and run names of a checkpoint (for its download's file name).
    pub async fn checkpoint_owner(&self, id: i64) -> Result<(String, String)> {
        sqlx::query_as(
            "SELECT e.name, r.name FROM checkpoints x JOIN runs r ON r.id = x.run_id \
             JOIN experiments e ON e.id = r.experiment_id WHERE x.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no checkpoint {id}")))
    }
}

/// Uploads hold this lock shared, garbage collection exclusively: a chunk an upload found
/// already present cannot be collected before the upload's row references it.
pub(super) async fn chunk_lock(tx: &mut Tx<'_>, exclusive: bool) -> Result<()> {
    let q = if exclusive {
        "SELECT pg_advisory_xact_lock(7262)"
    } else {
        "SELECT pg_advisory_xact_lock_shared(7262)"
    };
    sqlx::query(q).execute(&mut **tx).await?;
    Ok(())
}

/// Stores chunks not yet present; returns their hashes in order and the bytes newly stored.
/// With `tensors`, every chunk after the first (the safetensors header) is tensor data and is
/// kept in its smallest encoding ([`blobs::encode_tensor_chunk`]); only new chunks are encoded.
pub(super) async fn store_chunks(
    tx: &mut Tx<'_>,
    data: &[u8],
    ranges: &[std::ops::Range<usize>],
    tensors: bool,
) -> Result<(Vec<Vec<u8>>, u64)> {
    let hashes: Vec<Vec<u8>> = ranges
        .iter()
        .map(|r| blobs::sha256(&data[r.clone()]))
        .collect();
    let present: std::collections::HashSet<Vec<u8>> =
        sqlx::query_scalar("SELECT hash FROM blob_chunks WHERE hash = ANY($1)")
            .bind(&hashes)
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect();
    let mut seen = std::collections::HashSet::new();
    let new: Vec<usize> = (0..ranges.len())
        .filter(|&i| !present.contains(&hashes[i]) && seen.insert(hashes[i].clone()))
        .collect();
    let mut new_bytes = 0u64;
    // Insert 16 chunks (at most 64 MiB) per statement.
    for group in new.chunks(16) {
        let mut g_hashes = Vec::new();
        let (mut sizes, mut codes, mut datas) = (Vec::new(), Vec::new(), Vec::new());
        for &i in group {
            let bytes = &data[ranges[i].clone()];
            let (encoding, stored) = if tensors && i > 0 {
                blobs::encode_tensor_chunk(bytes)
            } else {
                (blobs::Encoding::Raw, bytes.to_vec())
            };
            g_hashes.push(hashes[i].clone());
            sizes.push(bytes.len() as i32);
            codes.push(encoding as i16);
            datas.push(stored);
        }
        let inserted: Vec<i32> = sqlx::query_scalar(
            "INSERT INTO blob_chunks (hash, size, encoding, data) \
             SELECT * FROM UNNEST($1::bytea[], $2::int4[], $3::int2[], $4::bytea[]) \
             ON CONFLICT (hash) DO NOTHING RETURNING octet_length(data)",
        )
        .bind(&g_hashes)
        .bind(&sizes)
        .bind(&codes)
        .bind(&datas)
        .fetch_all(&mut **tx)
        .await?;
        new_bytes += inserted.iter().map(|&s| s as u64).sum::<u64>();
    }
    Ok((hashes, new_bytes))
}

/// Keeps a finished run's `latest` checkpoints by step and `best` by objective; deletes the
/// rest, drops the resume state of a succeeded run (unless its experiment keeps the final
/// state), and deletes the chunks no checkpoint or artifact references any more.
pub(super) async fn retain(tx: &mut Tx<'_>, run: i64, succeeded: bool) -> Result<()> {
    // One statement for both (every run's end passes here): the deleted checkpoints' chunks,
    // then, for a succeeded run, the kept ones that still hold resume state (the snapshot
    // still lists the deleted ones: they are left out by id).
    type Row = (Option<Vec<Vec<u8>>>, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(
        "WITH policy AS (SELECT e.keep_best, e.keep_latest, e.objective_mode, e.keep_final_state \
                         FROM runs r JOIN experiments e ON e.id = r.experiment_id WHERE r.id = $1), \
         ranked AS (SELECT c.id, \
             row_number() OVER (ORDER BY c.step DESC) AS by_step, \
             row_number() OVER (ORDER BY CASE WHEN (SELECT objective_mode FROM policy) = 'max' \
                 THEN -c.objective ELSE c.objective END ASC NULLS LAST) AS by_objective, \
             c.objective FROM checkpoints c WHERE c.run_id = $1), \
         deleted AS (DELETE FROM checkpoints WHERE id IN (SELECT id FROM ranked \
             WHERE by_step > (SELECT keep_latest FROM policy) \
             AND (objective IS NULL OR by_objective > (SELECT keep_best FROM policy))) \
             RETURNING id, chunks) \
         SELECT chunks, NULL::int8 FROM deleted \
         UNION ALL \
         SELECT NULL, c.id FROM checkpoints c WHERE $2 AND c.run_id = $1 AND c.state_size > 0 \
             AND NOT (SELECT keep_final_state FROM policy) \
             AND c.id NOT IN (SELECT id FROM deleted)",
    )
    .bind(run)
    .bind(succeeded)
    .fetch_all(&mut **tx)
    .await?;
    let mut orphans: Vec<Vec<u8>> = vec![];
    let mut with_state: Vec<i64> = vec![];
    for (chunks, id) in rows {
        orphans.extend(chunks.into_iter().flatten());
        with_state.extend(id);
    }
    if orphans.is_empty() && with_state.is_empty() {
        return Ok(());
    }
    chunk_lock(tx, true).await?;
    drop_states(tx, &with_state, orphans).await
}

/// Drops the resume state of checkpoints `ids`, then collects their freed chunks together
/// with `orphans` (chunks the caller already unreferenced). The caller holds the chunk lock
/// exclusively.
pub(super) async fn drop_states(
    tx: &mut Tx<'_>,
    ids: &[i64],
    mut orphans: Vec<Vec<u8>>,
) -> Result<()> {
    for &id in ids {
        orphans.extend(drop_state(tx, id).await?);
    }
    collect_garbage(tx, &orphans).await?;
    Ok(())
}

/// A stored checkpoint's weights-only form: the new header and the chunks it keeps, or
/// `None` when there is no state to drop (or the file is laid out otherwise than Plume
/// writes them, which is logged and then kept whole).
pub(super) async fn layout_without_state(
    conn: &mut sqlx::PgConnection,
    id: i64,
    hashes: &[Vec<u8>],
) -> Result<Option<(blobs::WithoutState, Vec<Vec<u8>>)>> {
    let Some(header_hash) = hashes.first() else {
        return Ok(None);
    };
    let rows: Vec<(Vec<u8>, i32)> =
        sqlx::query_as("SELECT hash, size FROM blob_chunks WHERE hash = ANY($1)")
            .bind(hashes)
            .fetch_all(&mut *conn)
            .await?;
    let sizes: HashMap<Vec<u8>, usize> = rows.into_iter().map(|(h, n)| (h, n as usize)).collect();
    let chunk_sizes: Vec<usize> = hashes[1..]
        .iter()
        .map(|h| sizes.get(h).copied().unwrap_or(0))
        .collect();
    let header = chunk_data(&mut *conn, std::slice::from_ref(header_hash)).await?;
    match blobs::without_state(&header, &chunk_sizes) {
        Ok(Some(w)) => {
            let kept = hashes[1..]
                .iter()
                .zip(&w.keep)
                .filter(|(_, k)| **k)
                .map(|(h, _)| h.clone())
                .collect();
            Ok(Some((w, kept)))
        }
        Ok(None) => Ok(None),
        Err(e) => {
            tracing::warn!("checkpoint {id}: resume state kept ({e})");
            Ok(None)
        }
    }
}

/// The bytes of chunks, in order, decoded.
pub(super) async fn chunk_data(
    conn: &mut sqlx::PgConnection,
    hashes: &[Vec<u8>],
) -> Result<Vec<u8>> {
    let rows: Vec<(Vec<u8>, i32, i16, Vec<u8>)> =
        sqlx::query_as("SELECT hash, size, encoding, data FROM blob_chunks WHERE hash = ANY($1)")
            .bind(hashes)
            .fetch_all(&mut *conn)
            .await?;
    let mut by_hash: HashMap<Vec<u8>, Vec<u8>> = HashMap::with_capacity(rows.len());
    for (hash, size, code, data) in rows {
        let corrupt = |m: String| StoreError::Invalid(format!("chunk {}: {m}", hex::encode(&hash)));
        let encoding = blobs::Encoding::from_code(code)
            .ok_or_else(|| corrupt(format!("unknown encoding {code}")))?;
        let bytes = blobs::decode_chunk(encoding, &data, size as usize).map_err(corrupt)?;
        by_hash.insert(hash, bytes);
    }
    let mut out = Vec::new();
    for h in hashes {
        out.extend_from_slice(
            by_hash.get(h).ok_or_else(|| {
                StoreError::NotFound(format!("chunk {} is missing", hex::encode(h)))
            })?,
        );
    }
    Ok(out)
}

/// Rewrites checkpoint `id` without its resume state: a new header chunk and the weights'
/// chunks, unchanged (see [`blobs::without_state`]). Returns the chunks it no longer
/// references, for [`collect_garbage`]. The caller holds the chunk lock exclusively.
pub(super) async fn drop_state(tx: &mut Tx<'_>, id: i64) -> Result<Vec<Vec<u8>>> {
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT chunks FROM checkpoints WHERE id = $1")
        .bind(id)
        .fetch_one(&mut **tx)
        .await?;
    let Some((rewritten, kept)) = layout_without_state(tx, id, &hashes).await? else {
        sqlx::query("UPDATE checkpoints SET state_size = 0 WHERE id = $1")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        return Ok(Vec::new());
    };
    let mut file = rewritten.header.clone();
    file.extend(chunk_data(tx, &kept).await?);
    let (mut new_hashes, _) = store_chunks(
        tx,
        &rewritten.header,
        std::slice::from_ref(&(0..rewritten.header.len())),
        false,
    )
    .await?;
    new_hashes.extend(kept);
    sqlx::query(
        "UPDATE checkpoints SET chunks = $2, size = $3, sha256 = $4, state_size = 0, \
         state_dropped = true WHERE id = $1",
    )
    .bind(id)
    .bind(&new_hashes)
    .bind(file.len() as i64)
    .bind(blobs::sha256_hex(&file))
    .execute(&mut **tx)
    .await?;
    Ok(hashes
        .into_iter()
        .filter(|h| !new_hashes.contains(h))
        .collect())
}

/// Deletes those of `candidates` that no checkpoint or artifact references; returns the
/// logical bytes freed. Each candidate is one lookup in `chunk_refs`, so the cost grows with
/// what was deleted, not with what is stored. The caller holds the chunk lock exclusively.
pub(super) async fn collect_garbage(tx: &mut Tx<'_>, candidates: &[Vec<u8>]) -> Result<u64> {
    if candidates.is_empty() {
        return Ok(0);
    }
    let mut unique = candidates.to_vec();
    unique.sort();
    unique.dedup();
    // `chunk_refs` (kept by triggers) says which rows reference a chunk: one index lookup per
    // candidate, whatever else is stored.
    let freed: Option<i64> = sqlx::query_scalar(
        "WITH cand AS (SELECT DISTINCT unnest($1::bytea[]) AS h), \
         gone AS (DELETE FROM blob_chunks b USING cand WHERE b.hash = cand.h \
                  AND NOT EXISTS (SELECT 1 FROM chunk_refs r WHERE r.hash = b.hash) RETURNING b.size) \
         SELECT sum(size)::int8 FROM gone",
    )
    .bind(&unique)
    .fetch_one(&mut **tx)
    .await?;
    Ok(freed.unwrap_or(0) as u64)
}
