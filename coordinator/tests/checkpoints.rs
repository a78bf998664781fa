//! Checkpoints in two parts, with a real PostgreSQL: resume state (optimizer moments) stays
//! only in a run's latest checkpoint, and in a finished run's only when the experiment keeps
//! it; downloads are weights-only unless asked; garbage collection leaves no chunk behind
//! that nothing references, and never one that something does.

use plume_coordinator::blobs;
use plume_coordinator::states::Outcome;
use plume_coordinator::store::{Claimant, Fence, Series, Store, StoreError};
use std::collections::BTreeMap;
use std::time::Duration;

use plume_coordinator::pg::PrivatePostgres;

/// A text-like checkpoint at `step`: a frozen tensor shared by every step, trained weights and
/// Adam moments that change each step (the moments span several chunks).
fn text_checkpoint(step: u8) -> (Vec<u8>, Vec<u8>) {
    let state = vec![step; 2 * blobs::MAX_CHUNK + 400];
    let file = blobs::f32_checkpoint(
        "train-text",
        &[
            ("bert.frozen", vec![1u8; 4096]),
            ("bert.top", vec![step.wrapping_add(100); 8192]),
            ("bert.opt.top.m", state.clone()),
            ("bert.opt.steps", vec![step; 4]),
        ],
        Some(&["bert.opt.top.m", "bert.opt.steps"]),
    );
    (file, state)
}

/// Tensor names of a safetensors file.
fn tensor_names(data: &[u8]) -> Vec<String> {
    let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&data[8..8 + n]).unwrap();
    let mut names: Vec<String> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    names.sort();
    names
}

async fn chunk_present(store: &Store, bytes: &[u8]) -> bool {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM blob_chunks WHERE hash = $1")
        .bind(blobs::sha256(bytes))
        .fetch_one(&store.pool)
        .await
        .unwrap()
        > 0
}

/// Every stored chunk is referenced by some checkpoint or artifact, and `chunk_refs` (what
/// garbage collection reads) lists exactly the checkpoints' chunks.
async fn no_garbage(store: &Store) -> bool {
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&store.pool)
            .await
            .unwrap()
    };
    let unreferenced = count(
        "SELECT count(*) FROM blob_chunks b WHERE NOT EXISTS (SELECT 1 FROM checkpoints c WHERE b.hash = ANY(c.chunks)) \
         AND NOT EXISTS (SELECT 1 FROM artifacts a WHERE b.hash = ANY(a.chunks))",
    )
    .await;
    let unlisted = count(
        "SELECT count(*) FROM checkpoints c CROSS JOIN LATERAL unnest(c.chunks) AS u(h) \
         WHERE NOT EXISTS (SELECT 1 FROM chunk_refs r WHERE r.hash = u.h AND r.checkpoint_id = c.id)",
    )
    .await;
    let stale = count(
        "SELECT count(*) FROM chunk_refs r JOIN checkpoints c ON c.id = r.checkpoint_id \
         WHERE NOT r.hash = ANY(c.chunks)",
    )
    .await;
    unreferenced == 0 && unlisted == 0 && stale == 0
}

async fn report(store: &Store, f: Fence, step: i64, score: f64) {
    let mut batch = BTreeMap::new();
    batch.insert(
        "eval/score".to_string(),
        Series {
            steps: vec![step],
            values: vec![score],
        },
    );
    store.ingest(f, step, &batch).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_state_lives_only_where_a_resume_needs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let pg = PrivatePostgres::start_in_background(tmp.path().join("pg"))
        .await
        .unwrap();
    let store = Store::connect(&pg.url, Duration::from_secs(30))
        .await
        .unwrap();
    let yaml = |name: &str, keep: &str| {
        format!(
            "name: {name}\ndataset: {{kind: cub, path: x}}\nruns:\n  - {{name: a, job: train-judge, steps: 3}}\n\
             objective: {{metric: eval/score, mode: max}}\ncheckpoints: {{keep: {keep}}}\n"
        )
    };
    let plain = yaml("plain", "{best: 1, latest: 1}");
    let exp = plume_coordinator::experiment::parse("plain.yaml", &plain).unwrap();
    let (exp_id, _) = store.submit(&exp, "plain.yaml", &plain).await.unwrap();
    let kinds = vec!["train-judge".to_string()];
    let w = store
        .register_worker("w", serde_json::json!({}))
        .await
        .unwrap();
    let claim = store
        .claim(&Claimant::one_slot(w, &kinds))
        .await
        .unwrap()
        .unwrap();
    let f = claim.fence;

    // Step 1 scores best; 2 and 3 worse.
    let (file1, state1) = text_checkpoint(1);
    report(&store, f, 1, 0.9).await;
    let (id1, _) = store.store_checkpoint(f, 1, &file1).await.unwrap();
    let rows = store.checkpoints(f.run).await.unwrap();
    assert_eq!(rows[0].state_size, state1.len() as i64 + 4);
    assert!(!rows[0].state_dropped);
    // Alone, it is the latest: a resume gets the whole file back, byte for byte.
    let (whole, sha, _) = store.checkpoint_bytes(id1, true).await.unwrap();
    assert_eq!(whole, file1);
    assert_eq!(sha, blobs::sha256_hex(&file1));
    // Everyone else gets the weights alone, with a SHA-256 of what they got.
    let (weights, sha, _) = store.checkpoint_bytes(id1, false).await.unwrap();
    assert_eq!(tensor_names(&weights), ["bert.frozen", "bert.top"]);
    assert_eq!(sha, blobs::sha256_hex(&weights));
    assert!(weights.len() < 20_000, "{}", weights.len());

    // A newer checkpoint lands: the older one gives up its state, and its state's chunks go.
    let (file2, state2) = text_checkpoint(2);
    report(&store, f, 2, 0.5).await;
    let (id2, _) = store.store_checkpoint(f, 2, &file2).await.unwrap();
    let rows = store.checkpoints(f.run).await.unwrap();
    assert_eq!((rows[0].state_size, rows[0].state_dropped), (0, true));
    assert!(rows[1].state_size > 0);
    assert!(!chunk_present(&store, &state1[..blobs::MAX_CHUNK]).await);
    assert!(chunk_present(&store, &state2[..blobs::MAX_CHUNK]).await);
    assert!(no_garbage(&store).await);
    // The rewritten checkpoint is the same weights-only file, under its new SHA-256.
    let (after, sha, _) = store.checkpoint_bytes(id1, false).await.unwrap();
    assert_eq!(after, weights);
    assert_eq!(sha, rows[0].sha256);
    assert_eq!(rows[0].size, weights.len() as i64);
    // Asking for state that is gone says so and names the setting that keeps it.
    match store.checkpoint_bytes(id1, true).await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("final_state"), "{m}"),
        other => panic!("expected a clear refusal, got {:?}", other.map(|r| r.2)),
    }
    assert_eq!(store.checkpoint_bytes(id2, true).await.unwrap().0, file2);

    // The run finishes: retention keeps best (1) and latest (3) and drops the final state.
    let (file3, _) = text_checkpoint(3);
    report(&store, f, 3, 0.1).await;
    store.store_checkpoint(f, 3, &file3).await.unwrap();
    store
        .finish(f, Outcome::Succeeded, "done", 3)
        .await
        .unwrap();
    let rows = store.checkpoints(f.run).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.step).collect::<Vec<_>>(), [1, 3]);
    assert!(rows.iter().all(|r| r.state_size == 0 && r.state_dropped));
    assert!(!chunk_present(&store, &state2[..blobs::MAX_CHUNK]).await);
    assert!(no_garbage(&store).await);
    // Storage: two weights-only files, the frozen tensor stored once.
    let storage = store.storage(exp_id).await.unwrap();
    assert_eq!(storage.state_bytes, 0);
    assert_eq!(
        storage.weight_bytes,
        rows.iter().map(|r| r.size).sum::<i64>()
    );
    assert!(storage.stored_bytes < storage.weight_bytes, "{storage:?}");
    let run = storage.runs[&f.run];
    assert_eq!(run.checkpoints, 2);
    assert_eq!(run.own_stored_bytes, storage.stored_bytes);

    // With `keep.final_state`, a finished run keeps the state of its last checkpoint.
    let keeping = yaml("keeping", "{latest: 1, final_state: true}");
    let exp = plume_coordinator::experiment::parse("keeping.yaml", &keeping).unwrap();
    store.submit(&exp, "keeping.yaml", &keeping).await.unwrap();
    let f = store
        .claim(&Claimant::one_slot(w, &kinds))
        .await
        .unwrap()
        .unwrap()
        .fence;
    let (file4, _) = text_checkpoint(4);
    let (id4, _) = store.store_checkpoint(f, 1, &file4).await.unwrap();
    store
        .finish(f, Outcome::Succeeded, "done", 1)
        .await
        .unwrap();
    assert_eq!(store.checkpoint_bytes(id4, true).await.unwrap().0, file4);
    assert!(no_garbage(&store).await);
}
