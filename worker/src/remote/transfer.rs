//! Moving bytes to and from the coordinator: checkpoint and artifact uploads, input
//! downloads (checked against their sha256), log batches, and the retry that carries each
//! through a coordinator restart.

use super::*;

/// Downloads a checkpoint into the cache (once; verified by its SHA-256). A coordinator that
/// goes away mid-download (restart) is waited for, as every other report is.
pub(super) async fn download(
    c: &mut Client,
    fence: pb::Fence,
    id: i64,
    with_state: bool,
    cache: &Path,
) -> anyhow::Result<PathBuf> {
    let path = cache.join(if with_state {
        format!("checkpoint-{id}.safetensors")
    } else {
        format!("checkpoint-{id}-weights.safetensors")
    });
    if path.is_file() {
        return Ok(path);
    }
    let (data, sha) = retry("download", || {
        let mut c = c.clone();
        async move {
            let mut stream = c
                .download(pb::DownloadRequest {
                    checkpoint_id: id,
                    fence: Some(fence),
                    with_state,
                })
                .await?
                .into_inner();
            let mut data = Vec::new();
            let mut sha = String::new();
            while let Some(chunk) = stream.message().await? {
                if !chunk.sha256.is_empty() {
                    sha = chunk.sha256;
                }
                data.extend_from_slice(&chunk.data);
            }
            Ok((data, sha))
        }
    })
    .await
    .map_err(|s| anyhow::anyhow!("downloading checkpoint {id}: {}", s.message()))?;
    anyhow::ensure!(
        format!("{:x}", Sha256::digest(&data)) == sha,
        "checkpoint {id} arrived corrupt"
    );
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, &data)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Calls `f` until it succeeds; waits out an unreachable coordinator. `Stale` and other
/// refusals end the retries.
pub(super) async fn retry<T, F, Fut>(what: &str, mut f: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut wait = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(s)
                if matches!(
                    s.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
                ) =>
            {
                eprintln!(
                    "{what}: coordinator unavailable ({}); retrying",
                    s.message()
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(3));
            }
            Err(s) => return Err(s),
        }
    }
}

pub(super) async fn send_logs(
    c: &mut Client,
    fence: pb::Fence,
    lines: Vec<String>,
) -> Result<(), Status> {
    retry("logs", || {
        let mut c = c.clone();
        let lines = lines.clone();
        async move {
            c.report_logs(pb::LogBatch {
                fence: Some(fence),
                lines,
            })
            .await
        }
    })
    .await
    .map(|_| ())
}

pub(super) async fn upload(
    c: &mut Client,
    fence: pb::Fence,
    step: i64,
    name: &str,
    data: Vec<u8>,
    checkpoint: bool,
) -> Result<(), Status> {
    let sha = format!("{:x}", Sha256::digest(&data));
    let data = Arc::new(data);
    retry("upload", || {
        let mut c = c.clone();
        let data = data.clone();
        let header = pb::UploadHeader {
            fence: Some(fence),
            step,
            name: name.to_owned(),
            size: data.len() as u64,
            sha256: sha.clone(),
        };
        async move {
            let n = data.len().div_ceil(1 << 20).max(1);
            let chunks: Vec<pb::UploadChunk> = (0..n)
                .map(|i| pb::UploadChunk {
                    header: (i == 0).then(|| header.clone()),
                    data: data[(i << 20).min(data.len())..((i + 1) << 20).min(data.len())].to_vec(),
                })
                .collect();
            let stream = tokio_stream::iter(chunks);
            if checkpoint {
                c.upload_checkpoint(stream).await
            } else {
                c.upload_artifact(stream).await
            }
        }
    })
    .await
    .map(|_| ())
}
