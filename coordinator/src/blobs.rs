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
    let header = parse_header(data)?;
    let base = header.len;
    let mut ranges: Vec<Range<usize>> = Vec::new();
    for (name, r) in header.tensors()? {
        if base + r.end > data.len() {
            return Err(format!("tensor {name}: offsets outside the file"));
        }
        ranges.push(base + r.start..base + r.end);
    }
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

/// How a stored chunk's bytes are kept (`blob_chunks.encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As they are.
    Raw = 0,
    /// f32 values split into byte planes: the three low planes as they are, then the high
    /// plane (sign and exponent) deflated. Weights' exponents repeat, their mantissas do not.
    F32HighPlane = 1,
}

impl Encoding {
    /// From the stored code.
    pub fn from_code(code: i16) -> Option<Encoding> {
        match code {
            0 => Some(Encoding::Raw),
            1 => Some(Encoding::F32HighPlane),
            _ => None,
        }
    }
}

/// The smallest way to keep a tensor chunk: the f32 high plane deflated when that saves at
/// least 4% (what is left of a trained tensor: about 14%), else the bytes as they are.
pub fn encode_tensor_chunk(data: &[u8]) -> (Encoding, Vec<u8>) {
    use std::io::Write as _;
    if data.len() < 4096 || !data.len().is_multiple_of(4) {
        return (Encoding::Raw, data.to_vec());
    }
    let n = data.len() / 4;
    let mut out = Vec::with_capacity(data.len());
    for plane in 0..3 {
        out.extend(data.iter().skip(plane).step_by(4));
    }
    let high: Vec<u8> = data.iter().skip(3).step_by(4).copied().collect();
    let mut z = flate2::write::DeflateEncoder::new(out, flate2::Compression::fast());
    z.write_all(&high).expect("writing to memory");
    let out = z.finish().expect("writing to memory");
    if out.len() + n / 25 > data.len() {
        return (Encoding::Raw, data.to_vec());
    }
    (Encoding::F32HighPlane, out)
}

/// The bytes of a stored chunk of logical size `size`.
pub fn decode_chunk(encoding: Encoding, stored: &[u8], size: usize) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    match encoding {
        Encoding::Raw => Ok(stored.to_vec()),
        Encoding::F32HighPlane => {
            let n = size / 4;
            if !size.is_multiple_of(4) || stored.len() < 3 * n {
                return Err("an f32 chunk shorter than its planes".into());
            }
            let mut high = Vec::with_capacity(n);
            flate2::read::DeflateDecoder::new(&stored[3 * n..])
                .take(n as u64 + 1)
                .read_to_end(&mut high)
                .map_err(|e| format!("corrupt high plane: {e}"))?;
            if high.len() != n {
                return Err("the high plane has the wrong length".into());
            }
            let mut out = vec![0u8; size];
            for (i, v) in out.chunks_exact_mut(4).enumerate() {
                v[0] = stored[i];
                v[1] = stored[n + i];
                v[2] = stored[2 * n + i];
                v[3] = high[i];
            }
            Ok(out)
        }
    }
}

/// Metadata key (written by the worker) listing, as a JSON array, the tensors that are
/// resume state: optimizer moments, a GAN's discriminator, counters.
pub const STATE_KEY: &str = "plume.state";

/// Metadata key set on a checkpoint whose resume state was dropped.
pub const STATE_DROPPED_KEY: &str = "plume.state_dropped";

/// How a checkpoint's bytes split between what every reader needs and what only a resume
/// needs (the header counts as weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartSizes {
    /// Header and weight tensors.
    pub weights: u64,
    /// Resume-state tensors.
    pub state: u64,
}

/// A safetensors header, parsed: its length in bytes (with the 8-byte prefix) and JSON.
struct Header {
    len: usize,
    map: serde_json::Map<String, serde_json::Value>,
}

fn parse_header(data: &[u8]) -> Result<Header, String> {
    if data.len() < 8 {
        return Err("shorter than a safetensors header".into());
    }
    let n = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) as usize;
    if n > 100 << 20 || 8 + n > data.len() {
        return Err("bad safetensors header length".into());
    }
    let value: serde_json::Value =
        serde_json::from_slice(&data[8..8 + n]).map_err(|e| format!("bad header: {e}"))?;
    match value {
        serde_json::Value::Object(map) => Ok(Header { len: 8 + n, map }),
        _ => Err("header is not an object".into()),
    }
}

impl Header {
    /// The names listed as resume state (none for files written before the split).
    fn state_names(&self) -> std::collections::HashSet<String> {
        self.map
            .get("__metadata__")
            .and_then(|m| m.get(STATE_KEY))
            .and_then(|v| v.as_str())
            .and_then(|s| serde_json::from_str::<Vec<String>>(s).ok())
            .unwrap_or_default()
            .into_iter()
            .collect()
    }

    /// Each tensor's name and data range (relative to the end of the header), by offset.
    fn tensors(&self) -> Result<Vec<(String, Range<usize>)>, String> {
        let mut out = Vec::new();
        for (name, v) in &self.map {
            if name == "__metadata__" {
                continue;
            }
            let offs = v
                .get("data_offsets")
                .and_then(|o| o.as_array())
                .filter(|o| o.len() == 2)
                .and_then(|o| Some((o[0].as_u64()? as usize, o[1].as_u64()? as usize)))
                .ok_or_else(|| format!("tensor {name}: no data_offsets"))?;
            if offs.0 > offs.1 {
                return Err(format!("tensor {name}: bad data_offsets"));
            }
            out.push((name.clone(), offs.0..offs.1));
        }
        out.sort_by_key(|(_, r)| r.start);
        Ok(out)
    }
}

/// The weights/state split of a whole checkpoint file.
pub fn part_sizes(data: &[u8]) -> Result<PartSizes, String> {
    let header = parse_header(data)?;
    let state = header.state_names();
    let mut sizes = PartSizes {
        weights: data.len() as u64,
        state: 0,
    };
    for (name, r) in header.tensors()? {
        if state.contains(&name) {
            sizes.state += r.len() as u64;
            sizes.weights -= r.len() as u64;
        }
    }
    Ok(sizes)
}

/// A checkpoint rewritten without its resume state, in terms of its stored chunks.
#[derive(Debug)]
pub struct WithoutState {
    /// The new header (a new chunk; the old one is the first chunk).
    pub header: Vec<u8>,
    /// For each old chunk after the header: whether the weights-only file keeps it.
    pub keep: Vec<bool>,
    /// Bytes of the new file.
    pub size: u64,
}

/// Rewrites a checkpoint without its resume state, from its header chunk and the sizes of
/// its other chunks (in file order), without touching tensor bytes: chunks are cut at tensor
/// boundaries, so the weights-only file is a new header followed by a subset of the old
/// chunks. `None` when the checkpoint has no state to drop.
pub fn without_state(
    header_chunk: &[u8],
    chunk_sizes: &[usize],
) -> Result<Option<WithoutState>, String> {
    let header = parse_header(header_chunk)?;
    if header.len != header_chunk.len() {
        return Err("the first chunk is not exactly the header".into());
    }
    let state = header.state_names();
    if state.is_empty() {
        return Ok(None);
    }
    let tensors = header.tensors()?;
    // Which tensor each chunk belongs to, by walking both in file order.
    let mut keep = Vec::with_capacity(chunk_sizes.len());
    let (mut at, mut t) = (0usize, 0usize);
    for &size in chunk_sizes {
        while t < tensors.len() && tensors[t].1.end <= at {
            t += 1;
        }
        let owner = tensors
            .get(t)
            .filter(|(_, r)| r.start <= at && at + size <= r.end)
            .ok_or("a chunk does not lie inside one tensor")?;
        keep.push(!state.contains(&owner.0));
        at += size;
    }
    if tensors.last().map_or(0, |(_, r)| r.end) != at {
        return Err("the chunks do not cover the tensors".into());
    }
    let mut map = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, r) in &tensors {
        if state.contains(name) {
            continue;
        }
        let mut entry = header.map[name].clone();
        entry["data_offsets"] = serde_json::json!([offset, offset + r.len()]);
        offset += r.len();
        map.insert(name.clone(), entry);
    }
    let mut meta = header
        .map
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .cloned()
        .unwrap_or_default();
    meta.remove(STATE_KEY);
    meta.insert(STATE_DROPPED_KEY.into(), "true".into());
    map.insert("__metadata__".into(), serde_json::Value::Object(meta));
    let mut json = serde_json::to_vec(&map).expect("JSON serializes");
    // safetensors pads its header with spaces so that tensor data starts 8-byte aligned.
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    let size = (bytes.len() + offset) as u64;
    Ok(Some(WithoutState {
        header: bytes,
        keep,
        size,
    }))
}

/// A safetensors file of F32 tensors `(name, little-endian bytes)` in this data order, with
/// `plume.kind` and, when `state` is given, the resume-state list in its metadata: the
/// checkpoints tests and benchmarks upload without libtorch.
pub fn f32_checkpoint(kind: &str, tensors: &[(&str, Vec<u8>)], state: Option<&[&str]>) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    let mut at = 0;
    for (name, bytes) in tensors {
        map.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": [bytes.len() / 4], "data_offsets": [at, at + bytes.len()]}),
        );
        at += bytes.len();
    }
    let mut meta = serde_json::json!({"plume.kind": kind});
    if let Some(state) = state {
        meta[STATE_KEY] = serde_json::to_string(state).expect("strings").into();
    }
    map.insert("__metadata__".into(), meta);
    let json = serde_json::to_vec(&map).expect("JSON");
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    for (_, bytes) in tensors {
        out.extend(bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tensors: &[(&str, Vec<u8>)], state: &[&str]) -> Vec<u8> {
        f32_checkpoint("train-text", tensors, Some(state))
    }

    #[test]
    fn dropping_state_keeps_the_weights_chunks_and_rewrites_only_the_header() {
        let big_state = vec![7u8; 2 * MAX_CHUNK + 12]; // three chunks
        let tensors = [
            ("a", vec![1u8; 16]),
            ("a.opt.m", big_state.clone()),
            ("c", vec![3u8; 12]),
            ("steps", vec![9u8; 4]),
        ];
        let data = file(&tensors, &["a.opt.m", "steps"]);
        assert_eq!(
            part_sizes(&data).unwrap(),
            PartSizes {
                weights: data.len() as u64 - big_state.len() as u64 - 4,
                state: big_state.len() as u64 + 4,
            }
        );
        let ranges = split_checkpoint(&data).unwrap();
        let sizes: Vec<usize> = ranges[1..].iter().map(|r| r.len()).collect();
        assert_eq!(sizes.len(), 6, "a, three state chunks, c, steps");
        let w = without_state(&data[ranges[0].clone()], &sizes)
            .unwrap()
            .expect("has state");
        assert_eq!(w.keep, [true, false, false, false, true, false]);
        let mut rebuilt = w.header.clone();
        for (r, keep) in ranges[1..].iter().zip(&w.keep) {
            if *keep {
                rebuilt.extend_from_slice(&data[r.clone()]);
            }
        }
        assert_eq!(rebuilt.len() as u64, w.size);
        // The result is a checkpoint again: same weights, no state, marked as such.
        let header = parse_header(&rebuilt).unwrap();
        assert_eq!(header.len % 8, 0, "tensor data stays 8-byte aligned");
        let names: Vec<String> = header.tensors().unwrap().into_iter().map(|t| t.0).collect();
        assert_eq!(names, ["a", "c"]);
        let ranges2 = split_checkpoint(&rebuilt).unwrap();
        assert_eq!(&rebuilt[ranges2[1].clone()], &[1u8; 16]);
        assert_eq!(&rebuilt[ranges2[2].clone()], &[3u8; 12]);
        assert!(header.state_names().is_empty());
        assert_eq!(header.map["__metadata__"][STATE_DROPPED_KEY], "true");
        assert_eq!(header.map["__metadata__"]["plume.kind"], "train-text");
        assert_eq!(part_sizes(&rebuilt).unwrap().state, 0);
        // Nothing left to drop the second time.
        let sizes2: Vec<usize> = ranges2[1..].iter().map(|r| r.len()).collect();
        assert!(without_state(&rebuilt[ranges2[0].clone()], &sizes2)
            .unwrap()
            .is_none());
    }

    #[test]
    fn tensor_chunks_round_trip_through_their_encoding() {
        // Weights-like values: small magnitudes, so their exponents repeat.
        let mut x = 12345u64;
        let floats: Vec<u8> = (0..50_000)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let v = ((x % 20_000) as f32 - 10_000.0) * 1e-6;
                v.to_le_bytes()
            })
            .collect();
        let (enc, stored) = encode_tensor_chunk(&floats);
        assert_eq!(enc, Encoding::F32HighPlane);
        assert!(stored.len() < floats.len() * 9 / 10, "{}", stored.len());
        assert_eq!(decode_chunk(enc, &stored, floats.len()).unwrap(), floats);
        // Random bytes do not compress: kept as they are.
        let noise: Vec<u8> = (0..40_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let (enc, stored) = encode_tensor_chunk(&noise);
        if enc == Encoding::Raw {
            assert_eq!(stored, noise);
        }
        assert_eq!(decode_chunk(enc, &stored, noise.len()).unwrap(), noise);
        // A damaged stored chunk is an error, not wrong bytes.
        let (enc, mut stored) = encode_tensor_chunk(&floats);
        stored.truncate(stored.len() - 10);
        assert!(decode_chunk(enc, &stored, floats.len()).is_err());
    }

    #[test]
    fn a_layout_that_does_not_match_the_header_is_refused() {
        let data = file(&[("a", vec![1u8; 16]), ("s", vec![2u8; 8])], &["s"]);
        let ranges = split_checkpoint(&data).unwrap();
        let header = &data[ranges[0].clone()];
        assert!(without_state(header, &[16]).is_err(), "too few chunks");
        assert!(
            without_state(header, &[10, 14]).is_err(),
            "a chunk across tensors"
        );
        assert!(without_state(&header[..header.len() - 1], &[16, 8]).is_err());
    }
}
