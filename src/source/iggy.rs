//! Apache Iggy: addresses, the producer (the router's Iggy member) and the source (`ingest
//! --iggy`).
//!
//! The source reads every partition of the selected topics itself (Iggy has no consumer-group
//! rebalancing to follow), starting each at the offset stored in the lake, exactly like the Kafka
//! source; the server's consumer offsets are never used.
//!
//! A lakepipe topic is an Iggy topic of the same name inside one stream (`lakepipe` unless the
//! URL names another: `iggy://user:pass@host:port/stream`). The record key travels in the user
//! header `key` (a UTF-8 key of 1 to 255 bytes; any other key in raw chunks, see
//! [`KEY_HEADER`]); a delete (tombstone) is the header `tombstone` with a one-byte payload, since
//! Iggy payloads cannot be empty. Records are spread over partitions by a hash of the key and
//! sent one request per partition; each request is acknowledged only after the server has
//! flushed the partition to disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use iggy::prelude::*;
use tokio::sync::Mutex;

use crate::publish::Message;

/// Partitions of a topic the producer creates on first use.
const DEFAULT_PARTITIONS: u32 = 3;
/// How long connecting and each request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where an Iggy server is, and which stream holds lakepipe's topics.
#[derive(Clone, PartialEq, Eq)]
pub struct IggyAddress {
    user: String,
    password: String,
    host: String,
    /// The stream.
    pub stream: String,
}

impl std::fmt::Debug for IggyAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

impl IggyAddress {
    /// Parse `iggy://user:pass@host:port[/stream]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let usage = "an Iggy URL is iggy://user:password@host:port[/stream]";
        let rest = url.strip_prefix("iggy://").ok_or_else(|| usage.to_string())?;
        let (creds, rest) = rest.rsplit_once('@').ok_or_else(|| format!("the Iggy URL has no user and password: {usage}"))?;
        let (user, password) = creds.split_once(':').ok_or_else(|| format!("the Iggy URL has no password: {usage}"))?;
        let (host, stream) = match rest.split_once('/') {
            Some((h, s)) if !s.is_empty() => (h, s),
            Some((h, _)) => (h, "lakepipe"),
            None => (rest, "lakepipe"),
        };
        if user.is_empty() || host.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
            return Err(usage.to_string());
        }
        if [':', '@', '?', '/'].iter().any(|c| password.contains(*c)) {
            return Err("the Iggy password may not contain ':', '@', '?' or '/'".into());
        }
        Ok(IggyAddress { user: user.into(), password: password.into(), host: host.into(), stream: stream.into() })
    }

    /// The URL without the password.
    pub fn display(&self) -> String {
        format!("iggy://{}:***@{}/{}", self.user, self.host, self.stream)
    }

    /// Connect and log in (the client library logs in during `connect`).
    pub async fn connect(&self) -> Result<IggyClient, String> {
        let conn = format!("iggy://{}:{}@{}?reconnection_retries=2", self.user, self.password, self.host);
        let client = IggyClient::from_connection_string(&conn).map_err(|e| format!("{}: {e}", self.display()))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, client.connect()).await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(format!("cannot connect to {}: {e}", self.display())),
            Err(_) => Err(format!("cannot connect to {} within {REQUEST_TIMEOUT:?}", self.display())),
        }
    }
}

/// Create the stream and topic if missing; returns the topic's partition ids.
pub async fn ensure_topic(client: &IggyClient, stream: &str, topic: &str, partitions: u32) -> Result<Vec<u32>, String> {
    let s = Identifier::named(stream).map_err(|e| e.to_string())?;
    let t = Identifier::named(topic).map_err(|e| e.to_string())?;
    if matches!(client.get_stream(&s).await, Ok(None)) {
        match client.create_stream(stream).await {
            Ok(_) | Err(IggyError::StreamNameAlreadyExists(_)) => {}
            Err(e) => return Err(format!("cannot create stream `{stream}`: {e}")),
        }
    }
    let details = match client.get_topic(&s, &t).await {
        Ok(Some(d)) => d,
        _ => {
            match client.create_topic(&s, topic, partitions, CompressionAlgorithm::None, None, IggyExpiry::NeverExpire, MaxTopicSize::ServerDefault).await {
                Ok(_) | Err(IggyError::TopicNameAlreadyExists(..)) => {}
                Err(e) => return Err(format!("cannot create topic `{stream}/{topic}`: {e}")),
            }
            client.get_topic(&s, &t).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("topic `{stream}/{topic}` vanished"))?
        }
    };
    let mut ids: Vec<u32> = details.partitions.iter().map(|p| p.id).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// FNV-1a: a stable hash of the key, so a key always lands on the same partition.
fn partition_of(key: Option<&[u8]>, partitions: &[u32], fallback: usize) -> u32 {
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
fn key_headers(key: &[u8], headers: &mut BTreeMap<HeaderKey, HeaderValue>) -> Result<(), String> {
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
fn key_and_tombstone(m: &IggyMessage) -> Result<(Option<Vec<u8>>, bool), String> {
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

/// A connected client, with each topic's partition ids.
type Connected = (Arc<IggyClient>, HashMap<String, Vec<u32>>);

/// Publishes to one Iggy server; connects on first use and again after a failure.
pub struct IggyProducer {
    address: IggyAddress,
    state: Mutex<Option<Connected>>,
}

impl IggyProducer {
    /// A producer for `address` (no connection yet).
    pub fn new(address: IggyAddress) -> Self {
        IggyProducer { address, state: Mutex::new(None) }
    }

    fn message(key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<IggyMessage, String> {
        let mut headers = BTreeMap::new();
        if let Some(k) = key {
            key_headers(k, &mut headers)?;
        }
        let body = match payload {
            Some(p) if !p.is_empty() => Bytes::copy_from_slice(p),
            _ => {
                headers.insert(HeaderKey::try_from(TOMBSTONE_HEADER).map_err(|e| e.to_string())?, HeaderValue::try_from("1").map_err(|e| e.to_string())?);
                Bytes::from_static(b"\0")
            }
        };
        IggyMessage::builder().payload(body).user_headers(headers).build().map_err(|e| e.to_string())
    }

    /// Publish a batch and wait until the server has flushed it to disk.
    pub async fn send(&self, topic: &str, batch: &[Message]) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut state = self.state.lock().await;
        if state.is_none() {
            *state = Some((Arc::new(self.address.connect().await?), HashMap::new()));
        }
        let result = async {
            let Some((client, topics)) = state.as_mut() else { return Err("not connected".to_string()) };
            let partitions = match topics.get(topic) {
                Some(p) => p.clone(),
                None => {
                    let p = ensure_topic(client, &self.address.stream, topic, DEFAULT_PARTITIONS).await?;
                    topics.insert(topic.to_string(), p.clone());
                    p
                }
            };
            if partitions.is_empty() {
                return Err(format!("topic `{topic}` has no partitions"));
            }
            let mut by_partition: BTreeMap<u32, Vec<IggyMessage>> = BTreeMap::new();
            for (i, (k, p)) in batch.iter().enumerate() {
                by_partition.entry(partition_of(k.as_deref(), &partitions, i)).or_default().push(Self::message(k.as_deref(), p.as_deref())?);
            }
            let s = Identifier::named(&self.address.stream).map_err(|e| e.to_string())?;
            let t = Identifier::named(topic).map_err(|e| e.to_string())?;
            for (partition, mut messages) in by_partition {
                let partitioning = Partitioning::partition_id(partition);
                let send = client.send_messages(&s, &t, &partitioning, &mut messages);
                tokio::time::timeout(REQUEST_TIMEOUT, send).await.map_err(|_| "Iggy send timed out".to_string())?.map_err(|e| e.to_string())?;
                let flush = client.flush_unsaved_buffer(&s, &t, partition, true);
                tokio::time::timeout(REQUEST_TIMEOUT, flush).await.map_err(|_| "Iggy flush timed out".to_string())?.map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            // Reconnect next time (the server may have restarted).
            if let Some((client, _)) = state.take() {
                let _ = client.shutdown().await;
            }
        }
        result
    }
}

/// One message read ahead, with its topic.
type Queued = (String, crate::source::RawMessage);

/// Reads Iggy partitions from the lake's offsets.
pub struct IggySource {
    address: IggyAddress,
    client: IggyClient,
    /// The (static) assignment: every partition of every topic.
    pub assignment: Arc<std::sync::Mutex<crate::source::Assignment>>,
    next: std::sync::Mutex<BTreeMap<crate::source::TopicPartition, u64>>,
    ends: std::sync::Mutex<HashMap<crate::source::TopicPartition, i64>>,
    buffer: std::sync::Mutex<std::collections::VecDeque<Queued>>,
    cursor: std::sync::Mutex<usize>,
    /// Partitions where a poll met a message the server cannot read: read one message at a
    /// time there, so that everything before it is read and the error names it exactly.
    careful: std::sync::Mutex<std::collections::HashSet<crate::source::TopicPartition>>,
}

fn source_err(address: &IggyAddress, reason: impl std::fmt::Display) -> crate::source::SourceError {
    crate::source::SourceError::Broker { brokers: address.display(), reason: reason.to_string() }
}

impl IggySource {
    /// Connect, check the topics, and start every partition at the lake's offset.
    pub async fn connect(address: IggyAddress, topics: &[String], loader: Arc<dyn crate::source::StartLoader>) -> Result<Self, crate::source::SourceError> {
        let client = address.connect().await.map_err(|reason| crate::source::SourceError::Unreachable { brokers: address.display(), reason })?;
        let s = Identifier::named(&address.stream).map_err(|e| source_err(&address, e))?;
        let mut partitions = Vec::new();
        let mut ends = HashMap::new();
        for topic in topics {
            let t = Identifier::named(topic).map_err(|e| source_err(&address, e))?;
            let details = match client.get_topic(&s, &t).await {
                Ok(Some(d)) => d,
                _ => return Err(crate::source::SourceError::UnknownTopic { topic: topic.clone(), brokers: address.display() }),
            };
            for p in &details.partitions {
                let tp = (topic.clone(), p.id as i32);
                ends.insert(tp.clone(), if p.messages_count == 0 { 0 } else { p.current_offset as i64 + 1 });
                partitions.push(tp);
            }
        }
        let starts = loader.load(&partitions).await.map_err(|e| source_err(&address, format!("cannot read stored offsets from the lake: {e}")))?;
        let mut assignment = crate::source::Assignment { generation: 1, assigned: true, ..Default::default() };
        let mut next = BTreeMap::new();
        for tp in partitions {
            let s = starts.get(&tp).cloned().unwrap_or_default();
            let end = ends.get(&tp).copied().unwrap_or(0);
            if s.data.is_some_and(|d| d > end) {
                // The server lost messages the lake already has (reset, or the topic was
                // re-created). Never skip silently.
                return Err(crate::source::SourceError::OutOfRange { brokers: address.display(), reason: format!("{}/{}: the lake's offset {} is past the partition's end {end} (server reset or topic re-created); see docs/DESIGN.md", tp.0, tp.1, s.data.unwrap_or(0)) });
            }
            next.insert(tp.clone(), s.data.unwrap_or(0).max(0) as u64);
            assignment.partitions.insert(tp, s);
        }
        Ok(IggySource {
            address,
            client,
            assignment: Arc::new(std::sync::Mutex::new(assignment)),
            next: std::sync::Mutex::new(next),
            ends: std::sync::Mutex::new(ends),
            buffer: Default::default(),
            cursor: Default::default(),
            careful: Default::default(),
        })
    }

    /// The next message, polling partitions in turn; `None` when nothing arrived in `wait`.
    pub async fn recv(&self, wait: Duration, max: u32) -> Result<Option<Queued>, crate::source::SourceError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(m) = self.buffer.lock().ok().and_then(|mut b| b.pop_front()) {
                return Ok(Some(m));
            }
            let parts: Vec<(crate::source::TopicPartition, u64)> = self.next.lock().map(|n| n.iter().map(|(k, v)| (k.clone(), *v)).collect()).unwrap_or_default();
            if parts.is_empty() {
                tokio::time::sleep_until(deadline).await;
                return Ok(None);
            }
            let mut got_any = false;
            for _ in 0..parts.len() {
                let i = self.cursor.lock().map(|mut c| {
                    *c = (*c + 1) % parts.len();
                    *c
                });
                let ((topic, partition), offset) = &parts[i.unwrap_or(0)];
                let s = Identifier::named(&self.address.stream).map_err(|e| source_err(&self.address, e))?;
                let t = Identifier::named(topic).map_err(|e| source_err(&self.address, e))?;
                let consumer = Consumer::default();
                let strategy = PollingStrategy::offset(*offset);
                let tp = (topic.clone(), *partition);
                let careful = self.careful.lock().is_ok_and(|c| c.contains(&tp));
                let count = if careful { 1 } else { max.max(1) };
                let poll = self.client.poll_messages(&s, &t, Some(*partition as u32), &consumer, &strategy, count, false);
                let polled = match tokio::time::timeout(REQUEST_TIMEOUT, poll).await {
                    Err(_) => return Err(source_err(&self.address, "poll timed out")),
                    // The partition holds this offset (its end is past it) yet the server will
                    // not read it: Iggy 0.8.0 leaves a partition so after a SIGKILL during a
                    // write, for any read that crosses the damage, across restarts
                    // (docs/DESIGN.md). Retrying cannot help; skipping would lose messages.
                    Ok(Err(IggyError::InvalidOffset(_))) if !careful => {
                        // Somewhere in this read: read one at a time up to it.
                        if let Ok(mut c) = self.careful.lock() {
                            c.insert(tp);
                        }
                        continue;
                    }
                    Ok(Err(IggyError::InvalidOffset(_))) => {
                        let end = self.end_offset(topic, *partition).unwrap_or(0);
                        return Err(crate::source::SourceError::Stuck {
                            brokers: self.address.display(),
                            reason: format!("{topic}/{partition}: the server cannot read the message at offset {offset} (invalid_offset), though the partition's end is {end}: Iggy 0.8 leaves the message it was writing when it was killed so (docs/DESIGN.md); everything before it was read"),
                        });
                    }
                    Ok(Err(e)) => return Err(source_err(&self.address, e)),
                    Ok(Ok(polled)) => polled,
                };
                let end = if polled.messages.is_empty() && *offset == 0 { 0 } else { polled.current_offset as i64 + 1 };
                if let Ok(mut ends) = self.ends.lock() {
                    let e = ends.entry(tp.clone()).or_insert(0);
                    *e = (*e).max(end);
                }
                if let Some(first) = polled.messages.first() {
                    if first.header.offset > *offset {
                        // Messages between the lake's offset and the first one returned are gone
                        // (expired before ingest). Never skip silently.
                        return Err(crate::source::SourceError::OutOfRange { brokers: self.address.display(), reason: format!("{topic}/{partition}: offsets {offset}..{} expired before they were ingested", first.header.offset) });
                    }
                }
                let mut last = None;
                let mut buffer = self.buffer.lock().map_err(|_| source_err(&self.address, "poisoned buffer"))?;
                for m in polled.messages.iter().filter(|m| m.header.offset >= *offset) {
                    let (key, tombstone) = key_and_tombstone(m).map_err(|e| crate::source::SourceError::Stuck { brokers: self.address.display(), reason: format!("{topic}/{partition} at offset {}: {e}", m.header.offset) })?;
                    buffer.push_back((
                        topic.clone(),
                        crate::source::RawMessage {
                            partition: *partition,
                            offset: m.header.offset as i64,
                            key,
                            payload: (!tombstone).then(|| m.payload.to_vec()),
                            timestamp_ms: Some((m.header.timestamp / 1000) as i64),
                        },
                    ));
                    last = Some(m.header.offset);
                }
                drop(buffer);
                if let Some(l) = last {
                    got_any = true;
                    if let Ok(mut n) = self.next.lock() {
                        n.insert(tp, l + 1);
                    }
                    break;
                }
            }
            if !got_any {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                tokio::time::sleep(left.min(Duration::from_millis(100))).await;
            }
        }
    }

    /// The partition's end (next offset to be written), as last seen.
    pub fn end_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.ends.lock().ok().and_then(|e| e.get(&(topic.to_string(), partition)).copied())
    }

    /// Restart partitions at new offsets (after a fence); drops what is buffered for them.
    pub fn seek(&self, starts: &[(crate::source::TopicPartition, Option<i64>)]) {
        if let (Ok(mut next), Ok(mut buffer)) = (self.next.lock(), self.buffer.lock()) {
            for (tp, o) in starts {
                next.insert(tp.clone(), o.unwrap_or(0).max(0) as u64);
                buffer.retain(|(t, m)| !(t == &tp.0 && m.partition == tp.1));
            }
        }
    }

    /// The address, for messages.
    pub fn display(&self) -> String {
        self.address.display()
    }
}


impl crate::source::Source for IggySource {
    fn kind(&self) -> &'static str {
        "iggy"
    }

    fn describe(&self) -> String {
        self.display()
    }

    /// Up to `max` messages: what one poll of the server returned (a partition's worth) and
    /// whatever else is already read ahead. A failed poll that may pass is logged and retried
    /// after a pause.
    fn next(&self, wait: Duration, max: usize) -> futures::future::BoxFuture<'_, Result<crate::source::Polled, crate::source::SourceError>> {
        use crate::source::Polled;
        Box::pin(async move {
            match self.recv(wait, max.min(10_000) as u32).await {
                Ok(Some((topic, m))) => {
                    let mut messages = vec![(topic.into(), m)];
                    if let Ok(mut buffer) = self.buffer.lock() {
                        let more = buffer.len().min(max.saturating_sub(1));
                        messages.extend(buffer.drain(..more).map(|(t, m)| (t.into(), m)));
                    }
                    Ok(Polled::Messages(messages))
                }
                Ok(None) => Ok(Polled::Nothing),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "Iggy poll failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Ok(Polled::Nothing)
                }
                Err(e) => Err(e),
            }
        })
    }

    fn assignment_change(&self, seen: u64) -> Result<Option<crate::source::AssignmentChange>, String> {
        self.assignment.lock().unwrap_or_else(|p| p.into_inner()).change_since(seen)
    }

    fn seek(&self, starts: &[(crate::source::TopicPartition, Option<i64>)]) -> Result<(), crate::source::SourceError> {
        IggySource::seek(self, starts);
        Ok(())
    }

    fn cached_watermarks(&self, topic: &str, partition: i32) -> Option<(Option<i64>, i64)> {
        self.end_offset(topic, partition).map(|end| (None, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_and_hides_the_password() {
        let a = IggyAddress::parse("iggy://iggy:s3cret@127.0.0.1:8090").unwrap();
        assert_eq!(a.stream, "lakepipe");
        assert_eq!(a.display(), "iggy://iggy:***@127.0.0.1:8090/lakepipe");
        assert!(!format!("{a:?}").contains("s3cret"));
        assert_eq!(IggyAddress::parse("iggy://u:p@h:1/events").unwrap().stream, "events");
        for bad in ["iggy://h:1", "iggy://u@h:1", "iggy://u:p@h", "iggy://u:p@:1", "kafka://h:1", "iggy://u:p:q@h:1"] {
            assert!(IggyAddress::parse(bad).is_err(), "{bad}");
        }
    }

    /// Every key survives the trip through headers: none, empty, a header's worth, longer,
    /// and bytes that are not UTF-8.
    #[test]
    fn any_key_round_trips_through_headers() {
        let long: Vec<u8> = (0..10_000).map(|i| b'a' + (i % 26) as u8).collect();
        let keys: Vec<Option<Vec<u8>>> =
            vec![None, Some(vec![]), Some(b"k".to_vec()), Some(vec![b'x'; 255]), Some(vec![b'y'; 256]), Some(long), Some(vec![0xff, 0x00, 0xfe])];
        for key in keys {
            let m = IggyProducer::message(key.as_deref(), Some(b"{}")).unwrap();
            assert_eq!(key_and_tombstone(&m).unwrap(), (key.clone(), false), "{:?}", key.as_ref().map(|k| k.len()));
        }
    }

    #[test]
    fn keys_stay_on_one_partition() {
        let parts = [0, 1, 2];
        let p = partition_of(Some(b"user-7"), &parts, 0);
        assert!((0..10).all(|i| partition_of(Some(b"user-7"), &parts, i) == p));
        let spread: std::collections::BTreeSet<u32> = (0..50).map(|i| partition_of(Some(format!("k{i}").as_bytes()), &parts, 0)).collect();
        assert_eq!(spread.len(), 3);
    }

    /// Against a real server (`IGGY_URL`).
    #[tokio::test]
    #[ignore = "needs an Iggy server: scripts/test.sh starts one and runs the Iggy tests (`--ignored iggy`) with IGGY_URL"]
    async fn publishes_to_a_real_server() {
        let url = std::env::var("IGGY_URL").expect("IGGY_URL names an Iggy server (scripts/test.sh starts one)");
        let address = IggyAddress::parse(&url).unwrap();
        let producer = IggyProducer::new(address.clone());
        let topic = format!("lakepipe_test_{}", std::process::id());
        let keys: Vec<Vec<u8>> = vec![b"k1".to_vec(), b"k2".to_vec(), vec![b'z'; 1000], vec![0xff, 0xfe], vec![]];
        let batch: Vec<Message> = keys.iter().enumerate().map(|(i, k)| (Some(k.clone()), (i != 1).then(|| b"{}".to_vec()))).collect();
        producer.send(&topic, &batch).await.unwrap();
        let client = address.connect().await.unwrap();
        let parts = ensure_topic(&client, &address.stream, &topic, DEFAULT_PARTITIONS).await.unwrap();
        assert_eq!(parts.len(), DEFAULT_PARTITIONS as usize);
        // Every key comes back as it was sent, from the server.
        let (s, t) = (Identifier::named(&address.stream).unwrap(), Identifier::named(&topic).unwrap());
        let mut got = Vec::new();
        for p in parts {
            let polled = client.poll_messages(&s, &t, Some(p), &Consumer::default(), &PollingStrategy::offset(0), 100, false).await.unwrap();
            got.extend(polled.messages.iter().map(|m| key_and_tombstone(m).unwrap().0.unwrap()));
        }
        got.sort();
        let mut want = keys;
        want.sort();
        assert_eq!(got, want);
    }
}
