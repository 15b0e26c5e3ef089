//! The brokers page's API: what each broker `serve` knows of (Kafka and Iggy) holds, read
//! outside every consumer group ([`crate::source::inspect`]).
//!
//! * `GET /api/brokers`: per broker, its topics with each partition's log start, end and the
//!   lake's offset and lag; its consumer groups with, per partition, the offset the group
//!   stored on the broker, the lake's offset (for the source whose offsets the lake keeps
//!   under that group) and the lag. The lake is the truth for lakepipe's own groups (the
//!   broker's copy is advisory), so their lag is counted from it.
//! * `GET /api/brokers/{broker}/topics/{topic}/messages?limit=N&before=CURSOR&partition=P`:
//!   the topic's newest messages, newest first, each with its validation against the topic's
//!   spec (`valid`, or the dead-letter kind and reason it would get). `next` is the cursor of
//!   the page before (`null`: the first message was reached).
//!
//! Each request takes a query turn ([`super::limits::QueryGate`]): a broker that is slow to
//! answer holds at most the turns a query could.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{error, ServerConfig};
use crate::source::iggy::IggyAddress;
use crate::source::inspect::{newest_first, Tail, TailMessage, TailRange, TopicView};
use crate::source::{SourceError, TopicPartition};

/// How long a broker may take to answer one request of the page.
const BROKER_TIMEOUT: Duration = Duration::from_secs(8);
/// The most messages one tail page returns.
const MAX_TAIL: usize = 200;
/// The most bytes of a payload a tail page shows (the validation reads all of it).
const SHOWN_PAYLOAD: usize = 4096;

/// Where a broker is.
#[derive(Debug, Clone)]
pub enum Address {
    /// A Kafka cluster: bootstrap servers and the `[kafka]` client settings.
    Kafka {
        /// Bootstrap servers.
        brokers: String,
        /// The `[kafka]` client settings.
        extra: BTreeMap<String, String>,
    },
    /// An Iggy server.
    Iggy(IggyAddress),
}

/// A broker the page shows.
#[derive(Debug, Clone)]
pub struct Broker {
    /// `kafka` or `iggy` (the page's and the URL's name for it).
    pub name: String,
    /// Where it is.
    pub address: Address,
    /// The source name the lake keeps this broker's offsets under.
    pub source_name: String,
}

/// What the brokers page reads.
pub struct Inspect {
    /// The brokers, at most one of each kind.
    pub brokers: Vec<Broker>,
    /// Topic specs by name, to validate the tail's messages.
    pub specs: BTreeMap<String, crate::spec::TopicSpec>,
    /// Larger messages are invalid.
    pub max_message_bytes: usize,
    /// The lake's offsets, looked up at most once per [`LAKE_MAX_AGE`] (the page refreshes
    /// every 5 s, from each open page; each lookup reads the recent commits of every table).
    pub lake_offsets: tokio::sync::Mutex<Option<LakeOffsets>>,
}

/// The lake's offsets as last looked up, and when.
pub type LakeOffsets = (std::time::Instant, Result<Vec<OffsetKeyed>, String>);

/// How old the lake's offsets may be when the page shows them again.
const LAKE_MAX_AGE: Duration = Duration::from_secs(3);

impl Inspect {
    /// The brokers a config names: Kafka at `brokers` (when set) or a `kafka://` router
    /// member, and Iggy at `iggy` or an `iggy://` router member. The lake's offsets of each
    /// are those under `source_name` for the kind ingest reads (`--iggy` makes it Iggy), and
    /// under the default name (`kafka`, `iggy`) for the other.
    pub fn from_config(cfg: &crate::config::Config) -> Result<Self, crate::config::ConfigError> {
        use crate::publish::BrokerUrl;
        let mut kafka = cfg.is_set("brokers").then(|| cfg.brokers.clone());
        let mut iggy = None;
        if !cfg.iggy.trim().is_empty() {
            iggy = Some(IggyAddress::parse(&cfg.iggy).map_err(|message| {
                crate::config::ConfigError::Invalid {
                    origin: Some("iggy".into()),
                    message,
                }
            })?);
        }
        if !cfg.primary.trim().is_empty() {
            for (_, url) in cfg.router_options()?.brokers {
                match url {
                    BrokerUrl::Kafka(b) => kafka = kafka.or(Some(b)),
                    BrokerUrl::Iggy(a) => iggy = iggy.or(Some(a)),
                }
            }
        }
        let reads_iggy = !cfg.iggy.trim().is_empty();
        let mut brokers = Vec::new();
        if let Some(b) = kafka {
            let source_name = if reads_iggy {
                "kafka".to_string()
            } else {
                cfg.source_name.clone()
            };
            brokers.push(Broker {
                name: "kafka".into(),
                address: Address::Kafka {
                    brokers: b,
                    extra: cfg.kafka.clone(),
                },
                source_name,
            });
        }
        if let Some(a) = iggy {
            let source_name = if reads_iggy {
                cfg.source_name.clone()
            } else {
                "iggy".to_string()
            };
            brokers.push(Broker {
                name: "iggy".into(),
                address: Address::Iggy(a),
                source_name,
            });
        }
        Ok(Inspect {
            brokers,
            specs: cfg.all_specs()?,
            max_message_bytes: cfg.max_message_bytes,
            lake_offsets: Default::default(),
        })
    }
}

impl Broker {
    fn display(&self) -> String {
        match &self.address {
            Address::Kafka { brokers, .. } => brokers.clone(),
            Address::Iggy(a) => a.display(),
        }
    }

    /// Topics, with one topic only when `only` names it.
    async fn topics(&self, only: Option<&str>) -> Result<Vec<TopicView>, SourceError> {
        match &self.address {
            Address::Kafka { brokers, extra } => {
                crate::source::kafka::inspect::topics(brokers, extra, only, BROKER_TIMEOUT).await
            }
            Address::Iggy(a) => crate::source::iggy::inspect::topics(a, only, BROKER_TIMEOUT).await,
        }
    }

    async fn groups(
        &self,
        topics: &[TopicView],
    ) -> Result<Vec<crate::source::inspect::GroupView>, SourceError> {
        match &self.address {
            Address::Kafka { brokers, extra } => {
                let partitions: Vec<TopicPartition> = topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| (t.name.clone(), p.partition)))
                    .collect();
                crate::source::kafka::inspect::groups(brokers, extra, &partitions, BROKER_TIMEOUT)
                    .await
            }
            Address::Iggy(a) => {
                crate::source::iggy::inspect::groups(a, topics, BROKER_TIMEOUT).await
            }
        }
    }

    async fn tail(&self, topic: &str, ranges: &[TailRange]) -> Result<Tail, SourceError> {
        match &self.address {
            Address::Kafka { brokers, extra } => {
                crate::source::kafka::inspect::tail(brokers, extra, topic, ranges, BROKER_TIMEOUT)
                    .await
            }
            Address::Iggy(a) => {
                crate::source::iggy::inspect::tail(a, topic, ranges, BROKER_TIMEOUT).await
            }
        }
    }
}

fn find<'a>(cfg: &'a ServerConfig, name: &str) -> Option<&'a Broker> {
    cfg.inspect
        .iter()
        .flat_map(|i| i.brokers.iter())
        .find(|b| b.name == name)
}

fn no_broker(cfg: &ServerConfig, name: &str) -> Response {
    let names: Vec<&str> = cfg
        .inspect
        .iter()
        .flat_map(|i| i.brokers.iter())
        .map(|b| b.name.as_str())
        .collect();
    let known = if names.is_empty() {
        "none: start serve with --brokers, --primary or --iggy".to_string()
    } else {
        names.join(", ")
    };
    error(
        StatusCode::NOT_FOUND,
        format!("no broker `{name}` (known: {known})"),
    )
}

fn broker_failed(e: &SourceError) -> Response {
    let status = match e {
        SourceError::UnknownTopic { .. } => StatusCode::NOT_FOUND,
        SourceError::Config { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_GATEWAY,
    };
    error(status, e.to_string())
}

/// A topic name both brokers accept (Kafka's rule: 1 to 249 of `[A-Za-z0-9._-]`).
fn valid_topic(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// The lake's offsets, at most [`LAKE_MAX_AGE`] old.
async fn lake_offsets(cfg: &ServerConfig, inspect: &Inspect) -> Result<Vec<OffsetKeyed>, String> {
    let mut cached = inspect.lake_offsets.lock().await;
    if let Some((_, found)) = cached
        .as_ref()
        .filter(|(at, _)| at.elapsed() < LAKE_MAX_AGE)
    {
        return found.clone();
    }
    let found = crate::query::functions::lake_offsets(&cfg.lake)
        .await
        .map_err(|e| e.to_string());
    *cached = Some((std::time::Instant::now(), found.clone()));
    found
}

/// `GET /api/brokers`.
pub async fn brokers(State(cfg): State<Arc<ServerConfig>>) -> Response {
    let _turn = match cfg.queries.enter().await {
        Ok(t) => t,
        Err(busy) => return busy,
    };
    let Some(inspect) = &cfg.inspect else {
        return Json(json!({"brokers": []})).into_response();
    };
    // The lake's offsets, by (source, group, topic, partition); a lake that cannot be read
    // leaves them out, and says so.
    let (lake, lake_error) = match lake_offsets(&cfg, inspect).await {
        Ok(all) => (all, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let mut out = Vec::new();
    for b in &inspect.brokers {
        let mine: Vec<&OffsetKeyed> = lake
            .iter()
            .filter(|(_, k, _)| k.source == b.source_name)
            .collect();
        let mut entry = json!({"name": b.name, "address": b.display(), "source_name": b.source_name, "lake_error": lake_error});
        let topics = match b.topics(None).await {
            Ok(t) => t,
            Err(e) => {
                entry["error"] = json!(e.to_string());
                out.push(entry);
                continue;
            }
        };
        let ends: HashMap<TopicPartition, i64> = topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .filter_map(|p| Some(((t.name.clone(), p.partition), p.end?)))
            })
            .collect();
        entry["topics"] = json!(topics
            .iter()
            .map(|t| json!({"name": t.name, "partitions": t.partitions.iter().map(|p| json!({"partition": p.partition, "start": p.start, "end": p.end})).collect::<Vec<_>>()}))
            .collect::<Vec<_>>());
        // Groups: the broker's list, and lakepipe's groups the lake knows (a broker may list
        // none, or forget an idle group).
        let listed = match b.groups(&topics).await {
            Ok(g) => g,
            Err(e) => {
                entry["groups_error"] = json!(e.to_string());
                Vec::new()
            }
        };
        entry["groups"] = json!(groups_with_lag(&listed, &mine, &ends));
        out.push(entry);
    }
    Json(json!({"brokers": out})).into_response()
}

/// A lake offset: the table, the partition it names and the next offset to read.
pub type OffsetKeyed = (String, crate::lake::commit::OffsetKey, i64);

/// One group's position in one partition: as the broker stores it and as the lake does.
#[derive(Default)]
struct Position {
    broker: Option<i64>,
    lake: Option<i64>,
}

/// The groups the broker lists and lakepipe's groups the lake knows (a broker may list none,
/// or forget an idle group), each with its partitions' offsets and lag: counted from the lake
/// where it has the partition, else from the broker's stored offset.
fn groups_with_lag(
    listed: &[crate::source::inspect::GroupView],
    lake: &[&OffsetKeyed],
    ends: &HashMap<TopicPartition, i64>,
) -> Vec<Value> {
    let mut groups: BTreeMap<String, Value> = BTreeMap::new();
    let mut rows: BTreeMap<(String, TopicPartition), Position> = BTreeMap::new();
    for g in listed {
        groups.insert(
            g.name.clone(),
            json!({"name": g.name, "state": g.state, "members": g.members}),
        );
        for o in &g.offsets {
            rows.entry((g.name.clone(), (o.topic.clone(), o.partition)))
                .or_default()
                .broker = Some(o.next);
        }
    }
    for (_, k, next) in lake {
        groups
            .entry(k.group.clone())
            .or_insert_with(|| json!({"name": k.group, "state": null, "members": null}));
        let row = rows
            .entry((k.group.clone(), (k.topic.clone(), k.partition)))
            .or_default();
        // Two tables may keep the same partition (a topic routed twice): the larger.
        row.lake = row.lake.max(Some(*next));
    }
    for (name, g) in groups.iter_mut() {
        let parts: Vec<Value> = rows
            .iter()
            .filter(|((group, _), _)| group == name)
            .map(|((_, tp), at)| {
                let end = ends.get(tp).copied();
                let lag = end.zip(at.lake.or(at.broker)).map(|(e, o)| (e - o).max(0));
                json!({"topic": tp.0, "partition": tp.1, "broker_offset": at.broker, "lake_offset": at.lake, "end": end, "lag": lag})
            })
            .collect();
        g["partitions"] = json!(parts);
    }
    groups.into_values().collect()
}

/// Query of the tail.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailQuery {
    /// Messages per page (default 20, at most 200).
    pub limit: Option<usize>,
    /// The cursor a page returned as `next`: `partition:offset,…`, the offset each
    /// partition's page ends before.
    pub before: Option<String>,
    /// One partition only.
    pub partition: Option<i32>,
}

fn parse_cursor(text: &str) -> Result<HashMap<i32, i64>, String> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (p, o) = item
                .split_once(':')
                .ok_or_else(|| format!("bad cursor item `{item}`: use partition:offset"))?;
            let offset: i64 = o
                .trim()
                .parse()
                .ok()
                .filter(|o| *o >= 0)
                .ok_or_else(|| format!("bad offset in `{item}`"))?;
            Ok((
                p.trim()
                    .parse()
                    .map_err(|_| format!("bad partition in `{item}`"))?,
                offset,
            ))
        })
        .collect()
}

/// `GET /api/brokers/{broker}/topics/{topic}/messages`.
pub async fn messages(
    State(cfg): State<Arc<ServerConfig>>,
    UrlPath((broker, topic)): UrlPath<(String, String)>,
    Query(q): Query<TailQuery>,
) -> Response {
    let Some(b) = find(&cfg, &broker).cloned() else {
        return no_broker(&cfg, &broker);
    };
    if !valid_topic(&topic) {
        return error(
            StatusCode::BAD_REQUEST,
            "a topic name is 1 to 249 letters, digits, `.`, `_` or `-`",
        );
    }
    let limit = q.limit.unwrap_or(20);
    if limit == 0 || limit > MAX_TAIL {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_TAIL}"),
        );
    }
    let cursor = match q.before.as_deref().map(parse_cursor).transpose() {
        Ok(c) => c,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let _turn = match cfg.queries.enter().await {
        Ok(t) => t,
        Err(busy) => return busy,
    };
    let topics = match b.topics(Some(&topic)).await {
        Ok(t) => t,
        Err(e) => return broker_failed(&e),
    };
    let Some(view) = topics.into_iter().next() else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no topic `{topic}` on {}", b.display()),
        );
    };
    if let Some(p) = q
        .partition
        .filter(|p| !view.partitions.iter().any(|v| v.partition == *p))
    {
        return error(
            StatusCode::NOT_FOUND,
            format!("topic `{topic}` has no partition {p}"),
        );
    }
    // A first page needs every partition's end: one left out would never be paged.
    let selected = || {
        view.partitions
            .iter()
            .filter(|p| q.partition.is_none_or(|only| only == p.partition))
    };
    if cursor.is_none() {
        if let Some(p) = selected().find(|p| p.end.is_none()) {
            return error(
                StatusCode::BAD_GATEWAY,
                format!("partition {} of `{topic}` gave no end offset within {BROKER_TIMEOUT:?}; try again", p.partition),
            );
        }
    }
    // Each partition's page: the `limit` offsets below its cursor (first page: its end).
    let ranges: Vec<TailRange> = selected()
        .filter_map(|p| {
            let start = p.start.unwrap_or(0);
            let before = match &cursor {
                Some(c) => *c.get(&p.partition)?,
                None => p.end?,
            };
            let before = p.end.map_or(before, |end| before.min(end));
            Some(TailRange {
                partition: p.partition,
                start,
                from: before.saturating_sub(limit as i64).max(start),
                before,
            })
        })
        .collect();
    let tail = match b.tail(&topic, &ranges).await {
        Ok(t) => t,
        Err(e) => return broker_failed(&e),
    };
    let incomplete: Vec<Value> = tail
        .incomplete
        .iter()
        .map(|(p, why)| json!({"partition": p, "reason": why}))
        .collect();
    let next = next_cursor(&ranges, tail, limit);
    let page = next.page;
    let cursor = (!next.cursor.is_empty()).then(|| {
        next.cursor
            .iter()
            .map(|(p, o)| format!("{p}:{o}"))
            .collect::<Vec<_>>()
            .join(",")
    });
    // Checking up to `limit` whole payloads is CPU work: off the server's threads.
    let decoder = inspect_decoder(&cfg, &topic);
    let validated = decoder.is_some();
    let shown = match tokio::task::spawn_blocking(move || {
        page.iter()
            .map(|m| describe(m, decoder.as_ref()))
            .collect::<Vec<Value>>()
    })
    .await
    {
        Ok(shown) => shown,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    Json(json!({"broker": b.name, "topic": topic, "messages": shown, "next": cursor, "incomplete": incomplete, "validated": validated})).into_response()
}

/// A page of the tail and where the next one ends in each partition.
struct Paged {
    page: Vec<TailMessage>,
    cursor: BTreeMap<i32, i64>,
}

/// The newest `limit` messages of a read, and each partition's next cursor: below the lowest
/// offset shown; where the partition showed nothing, where this page began (a range not read
/// whole, or one whose messages were all older than those shown), or, for a range that held
/// no message, its start. A partition whose cursor reaches its first offset is finished.
fn next_cursor(ranges: &[TailRange], tail: Tail, limit: usize) -> Paged {
    let read: std::collections::BTreeSet<i32> = tail.messages.iter().map(|m| m.partition).collect();
    let page = newest_first(tail.messages, limit);
    let mut cursor = BTreeMap::new();
    for r in ranges {
        let incomplete = tail.incomplete.iter().any(|(p, _)| *p == r.partition);
        let lowest = page
            .iter()
            .filter(|m| m.partition == r.partition)
            .map(|m| m.offset)
            .min();
        let at = match lowest {
            Some(o) => o,
            None if incomplete || read.contains(&r.partition) => r.before,
            None => r.from,
        };
        let start = tail
            .starts
            .get(&r.partition)
            .map_or(r.start, |s| (*s).max(r.start));
        if at > start {
            cursor.insert(r.partition, at);
        }
    }
    Paged { page, cursor }
}

fn inspect_decoder(cfg: &ServerConfig, topic: &str) -> Option<crate::decode::Decoder> {
    let inspect = cfg.inspect.as_ref()?;
    crate::decode::Decoder::new(inspect.specs.get(topic)?.clone(), inspect.max_message_bytes).ok()
}

fn text_of(bytes: &[u8], limit: usize) -> (String, bool) {
    let cut = bytes.len() > limit;
    let mut end = bytes.len().min(limit);
    // Whole UTF-8 characters only.
    while end > 0 && end < bytes.len() && (bytes[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    (String::from_utf8_lossy(&bytes[..end]).into_owned(), cut)
}

fn describe(m: &TailMessage, decoder: Option<&crate::decode::Decoder>) -> Value {
    let (payload, truncated) = m
        .payload
        .as_deref()
        .map(|p| text_of(p, SHOWN_PAYLOAD))
        .map_or((None, false), |(t, c)| (Some(t), c));
    let timestamp = m
        .timestamp_ms
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let validation = decoder.map(|d| {
        match d.decode(
            m.key.as_deref(),
            m.payload.as_deref(),
            m.partition,
            m.offset,
        ) {
            Ok(_) => json!({"valid": true}),
            Err(e) => json!({"valid": false, "kind": e.kind.as_str(), "error": e.message}),
        }
    });
    json!({
        "partition": m.partition, "offset": m.offset, "timestamp": timestamp,
        "key": m.key.as_deref().map(|k| text_of(k, 256).0), "payload": payload, "payload_truncated": truncated,
        "tombstone": m.payload.is_none(), "validation": validation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_and_bad_ones_are_refused() {
        let c = parse_cursor("0:15,2:7").unwrap();
        assert_eq!((c[&0], c[&2]), (15, 7));
        for bad in ["0", "x:1", "0:y", "0:1:2", "0:-5", "0:-9223372036854775808"] {
            assert!(parse_cursor(bad).is_err(), "{bad}");
        }
    }

    fn range(partition: i32, from: i64, before: i64) -> TailRange {
        TailRange {
            partition,
            start: 0,
            from,
            before,
        }
    }

    fn msg(partition: i32, offset: i64) -> TailMessage {
        TailMessage {
            partition,
            offset,
            timestamp_ms: Some(offset),
            key: None,
            payload: None,
        }
    }

    /// A range not read whole keeps its cursor (nothing below it is skipped); a range that held
    /// nothing, or lies below the first offset the read found, finishes its partition.
    #[test]
    fn cursors_never_pass_what_was_not_read() {
        let ranges = [
            range(0, 10, 20),
            range(1, 5, 15),
            range(2, 0, 4),
            range(3, 30, 40),
        ];
        let tail = Tail {
            messages: (10..20).map(|o| msg(0, o)).collect(),
            incomplete: vec![(1, "timed out".into())],
            starts: [(2, 4), (3, 35)].into_iter().collect(),
        };
        let next = next_cursor(&ranges, tail, 4);
        assert_eq!(
            next.page.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![19, 18, 17, 16]
        );
        assert_eq!(
            next.cursor,
            [(0, 16), (1, 15)].into_iter().collect::<BTreeMap<_, _>>()
        );
    }

    #[test]
    fn shown_text_stops_at_a_whole_character() {
        assert_eq!(text_of("aé".as_bytes(), 2), ("a".to_string(), true));
        assert_eq!(text_of(b"abc", 10), ("abc".to_string(), false));
    }
}
