//! The record key and the tombstone flag in Iggy headers, and the partition a key goes to.

use std::collections::BTreeMap;

use iggy::prelude::*;

/// FNV-1a: a stable hash of the key, so a key always lands on the same partition.
pub(super) fn partition_of(key: Option<&[u8]>, partitions: &[u32], fallback: usize) -> u32 {
    let i = match key {
        Some(k) => k.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3)) as usize,
        None => fallback,
    };
    partitions[i % partitions.len()]
}

/// The key header: a UTF-8 key of 1 to 255 bytes (the most a header value holds).
pub const KEY_HEADER: &str = "key";
/// Any other key (empty, longer, or not UTF-8): its length in `key.len`, its bytes in raw
/// chunks of up to 255 bytes, `key.0`, `key.1`…
const KEY_LEN_HEADER: &str = "key.len";
const KEY_CHUNK: usize = 255;

fn header_key(name: &str) -> Result<HeaderKey, String> {
    HeaderKey::try_from(name).map_err(|e| e.to_string())
}

/// The headers that carry `key`.
pub(super) fn key_headers(key: &[u8], headers: &mut BTreeMap<HeaderKey, HeaderValue>) -> Result<(), String> {
    match std::str::from_utf8(key) {
        Ok(text) if (1..=KEY_CHUNK).contains(&key.len()) => {
            headers.insert(header_key(KEY_HEADER)?, HeaderValue::try_from(text).map_err(|e| e.to_string())?);
        }
        _ => {
            headers.insert(header_key(KEY_LEN_HEADER)?, HeaderValue::from(key.len() as u64));
            for (i, chunk) in key.chunks(KEY_CHUNK).enumerate() {
                headers.insert(header_key(&format!("key.{i}"))?, HeaderValue::try_from(chunk).map_err(|e| e.to_string())?);
            }
        }
    }
    Ok(())
}

/// A message's key (`None` for none), however it was written, and whether it is a tombstone,
/// from its headers parsed once.
pub(super) fn key_and_tombstone(m: &IggyMessage) -> Result<(Option<Vec<u8>>, bool), String> {
    let headers = m.user_headers_map().map_err(|e| e.to_string())?.unwrap_or_default();
    let tombstone = headers.contains_key(&header_key(TOMBSTONE_HEADER)?);
    Ok((message_key(&headers)?, tombstone))
}

/// The key in `headers`, however it was written; `None` for none.
fn message_key(headers: &BTreeMap<HeaderKey, HeaderValue>) -> Result<Option<Vec<u8>>, String> {
    let header = |name: &str| Ok::<_, String>(headers.get(&header_key(name)?));
    if let Some(v) = header(KEY_HEADER)? {
        return Ok(Some(v.as_str().map_err(|e| format!("key header: {e}"))?.as_bytes().to_vec()));
    }
    let Some(len) = header(KEY_LEN_HEADER)? else { return Ok(None) };
    let len = len.as_uint64().map_err(|e| format!("key length header: {e}"))? as usize;
    let mut key = Vec::with_capacity(len.min(1 << 20));
    for i in 0..len.div_ceil(KEY_CHUNK) {
        let chunk = header(&format!("key.{i}"))?.ok_or_else(|| format!("key chunk {i} is missing"))?;
        key.extend_from_slice(chunk.as_raw().map_err(|e| format!("key chunk {i}: {e}"))?);
    }
    if key.len() != len {
        return Err(format!("the key has {} bytes, its length header says {len}", key.len()));
    }
    Ok(Some(key))
}
/// The tombstone header.
pub const TOMBSTONE_HEADER: &str = "tombstone";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_on_one_partition() {
        let parts = [0, 1, 2];
        let p = partition_of(Some(b"user-7"), &parts, 0);
        assert!((0..10).all(|i| partition_of(Some(b"user-7"), &parts, i) == p));
        let spread: std::collections::BTreeSet<u32> = (0..50).map(|i| partition_of(Some(format!("k{i}").as_bytes()), &parts, 0)).collect();
        assert_eq!(spread.len(), 3);
    }
}
