//! Cutting files into content-addressed chunks. Checkpoints (safetensors) are cut at tensor
//! boundaries, so an unchanged tensor (a frozen BERT layer shared by many runs) hashes the same
//! in every checkpoint and is stored once.

use sha2::{Digest, Sha256};
use std::ops::Range;

/// Largest chunk.
pub const MAX_CHUNK: usize = 4 << 20;

/// SHA-256 of bytes.
pub fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

/// SHA-256 of bytes, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha256(data))
}

/// Fixed-size chunks (pictures and anything without structure).
pub fn split_plain(data: &[u8]) -> Vec<Range<usize>> {
    limit(0..data.len())
}

fn limit(r: Range<usize>) -> Vec<Range<usize>> {
    if r.is_empty() {
        return Vec::new();
    }
    (r.start..r.end)
        .step_by(MAX_CHUNK)
        .map(|s| s..(s + MAX_CHUNK).min(r.end))
        .collect()
}

/// Chunks of a safetensors file: the header, then each tensor's bytes (split at
/// [`MAX_CHUNK`]), covering the file exactly. Fails on anything that is not safetensors.
pub fn split_checkpoint(data: &[u8]) -> Result<Vec<Range<usize>>, String> {
    if data.len() < 8 {
        return Err("shorter than a safetensors header".into());
    }
    let n = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) as usize;
    if n > 100 << 20 || 8 + n > data.len() {
        return Err("bad safetensors header length".into());
    }
    let header: serde_json::Value =
        serde_json::from_slice(&data[8..8 + n]).map_err(|e| format!("bad header: {e}"))?;
    let map = header.as_object().ok_or("header is not an object")?;
    let base = 8 + n;
    let mut ranges: Vec<Range<usize>> = Vec::new();
    for (name, v) in map {
        if name == "__metadata__" {
            continue;
        }
        let offs = v
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .and_then(|o| Some((o[0].as_u64()? as usize, o[1].as_u64()? as usize)))
            .ok_or_else(|| format!("tensor {name}: no data_offsets"))?;
        if offs.0 > offs.1 || base + offs.1 > data.len() {
            return Err(format!("tensor {name}: offsets outside the file"));
        }
        ranges.push(base + offs.0..base + offs.1);
    }
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<usize>> = Vec::new();
    out.push(0..base);
    let mut at = base;
    for r in ranges {
        if r.start < at {
            return Err("overlapping tensors".into());
        }
        out.extend(limit(at..r.start));
        out.extend(limit(r.clone()));
        at = r.end;
    }
    out.extend(limit(at..data.len()));
    Ok(out.into_iter().filter(|r| !r.is_empty()).collect())
}
