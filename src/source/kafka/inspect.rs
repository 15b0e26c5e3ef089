//! The brokers page's view of a Kafka cluster ([`crate::source::inspect`]): topics with each
//! partition's log start and end, the consumer groups with the offsets they committed, and a
//! topic's newest messages. Each call uses a short-lived client that joins no group and
//! commits nothing.
//!
//! The ends come from fetch responses, which are exact even where ListOffsets under-states
//! them (tansu 0.6 lists the last batch's base offset plus one). The tail reads a range by
//! fetching from its first offset; tansu 0.6 answers a fetch that starts inside a producer's
//! record batch with nothing, or with the next batch, so a read whose first message is not
//! the one it asked for steps back (eight times as far each time, never below the log start)
//! until it covers the range.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::{cached_watermarks, fetched_watermarks, lookup_consumer, Quiet};
use crate::source::inspect::{
    GroupOffset, GroupView, PartitionView, Tail, TailMessage, TailRange, TopicView,
};
use crate::source::{SourceError, TopicPartition};

/// The most groups whose offsets are asked for.
const MAX_GROUPS: usize = 100;
/// How long a partition of a tail may deliver nothing before its read steps back (fetches
/// wait at most 100 ms for data, so this is several empty answers).
const STALL: Duration = Duration::from_millis(700);
/// How much further back each step back starts, as a multiple of the span read before: a
/// producer's batch holds up to thousands of messages, and each step costs a [`STALL`].
const STEP_BACK: i64 = 8;

/// A lookup consumer ([`lookup_consumer`]) that reports a read below the log start as an
/// error (never a silent jump to the end) and the log end as an event, with short fetch waits.
fn consumer(
    brokers: &str,
    extra: &BTreeMap<String, String>,
    group: Option<&str>,
) -> Result<BaseConsumer<Quiet>, SourceError> {
    let settings = [
        ("auto.offset.reset", "error"),
        ("enable.partition.eof", "true"),
        ("fetch.wait.max.ms", "100"),
    ];
    lookup_consumer(brokers, extra, group, &settings)
}

/// Run blocking librdkafka calls off the runtime's threads.
async fn blocking<T: Send + 'static>(
    brokers: &str,
    work: impl FnOnce() -> Result<T, SourceError> + Send + 'static,
) -> Result<T, SourceError> {
    let brokers = brokers.to_string();
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| SourceError::Broker {
            brokers,
            reason: format!("the lookup failed: {e}"),
        })?
}

/// Every topic (but the broker's own, named `__…`), or only the one named `only`, with its
/// partitions' log starts and ends, within `timeout` in all; a partition that gave no answer
/// in time has no end.
pub async fn topics(
    brokers: &str,
    extra: &BTreeMap<String, String>,
    only: Option<&str>,
    timeout: Duration,
) -> Result<Vec<TopicView>, SourceError> {
    let (b, extra, only) = (brokers.to_string(), extra.clone(), only.map(str::to_string));
    blocking(brokers, move || {
        let unreachable = |reason: String| SourceError::Unreachable {
            brokers: b.clone(),
            reason,
        };
        let consumer = consumer(&b, &extra, None)?;
        let deadline = Instant::now() + timeout;
        let md = consumer
            .fetch_metadata(only.as_deref(), timeout)
            .map_err(|e| unreachable(format!("no answer within {timeout:?}: {e}")))?;
        let mut listed: Vec<(String, Vec<i32>)> = md
            .topics()
            .iter()
            .filter(|t| !t.name().starts_with("__") && t.error().is_none())
            .map(|t| {
                (
                    t.name().to_string(),
                    t.partitions().iter().map(|p| p.id()).collect(),
                )
            })
            .collect();
        listed.sort();
        let partitions: Vec<TopicPartition> = listed
            .iter()
            .flat_map(|(t, parts)| parts.iter().map(move |p| (t.clone(), *p)))
            .collect();
        let marks = fetched_watermarks(&consumer, &partitions, deadline)
            .map_err(|e| unreachable(e.to_string()))?;
        // Fetch responses carry the log start too, but not every broker fills it in: list
        // the missing ones in one request.
        let starts = log_starts(&consumer, &listed, &marks, deadline);
        Ok(listed
            .into_iter()
            .map(|(name, parts)| {
                let partitions = parts
                    .into_iter()
                    .map(|p| {
                        let tp = (name.clone(), p);
                        let (lo, hi) = marks
                            .get(&tp)
                            .map(|(lo, hi)| (*lo, Some(*hi)))
                            .unwrap_or((None, None));
                        PartitionView {
                            partition: p,
                            start: lo.or_else(|| starts.get(&tp).copied()),
                            end: hi,
                        }
                    })
                    .collect();
                TopicView { name, partitions }
            })
            .collect())
    })
    .await
}

/// ListOffsets at the log start for the partitions whose fetch response did not say.
fn log_starts(
    consumer: &BaseConsumer<Quiet>,
    listed: &[(String, Vec<i32>)],
    marks: &HashMap<TopicPartition, (Option<i64>, i64)>,
    deadline: Instant,
) -> HashMap<TopicPartition, i64> {
    let mut tpl = TopicPartitionList::new();
    for (t, parts) in listed {
        for p in parts.iter().filter(|p| {
            marks
                .get(&(t.clone(), **p))
                .is_none_or(|(lo, _)| lo.is_none())
        }) {
            let _ = tpl.add_partition_offset(t, *p, Offset::Beginning);
        }
    }
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(500));
    if tpl.count() == 0 {
        return HashMap::new();
    }
    match consumer.offsets_for_times(tpl, left) {
        Ok(found) => found
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) if e.error().is_ok() => {
                    Some(((e.topic().to_string(), e.partition()), o))
                }
                _ => None,
            })
            .collect(),
        Err(_) => HashMap::new(),
    }
}

/// The consumer groups the broker lists (at most 100), each with the offsets it
/// committed in `partitions`, asked within `timeout` after the listing.
pub async fn groups(
    brokers: &str,
    extra: &BTreeMap<String, String>,
    partitions: &[TopicPartition],
    timeout: Duration,
) -> Result<Vec<GroupView>, SourceError> {
    let (b, extra, partitions) = (brokers.to_string(), extra.clone(), partitions.to_vec());
    blocking(brokers, move || {
        let consumer = consumer(&b, &extra, None)?;
        let list = consumer
            .fetch_group_list(None, timeout)
            .map_err(|e| SourceError::Broker {
                brokers: b.clone(),
                reason: format!("cannot list the consumer groups: {e}"),
            })?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        for g in list
            .groups()
            .iter()
            .filter(|g| matches!(g.protocol_type(), "consumer" | ""))
            .take(MAX_GROUPS)
        {
            // Within `timeout` in all: groups past it are listed without offsets.
            let left = deadline.saturating_duration_since(Instant::now());
            let offsets = if partitions.is_empty() || left.is_zero() {
                Vec::new()
            } else {
                committed(&b, &extra, g.name(), &partitions, left)
            };
            out.push(GroupView {
                name: g.name().to_string(),
                state: Some(g.state().to_string()).filter(|s| !s.is_empty()),
                members: g.members().len(),
                offsets,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    })
    .await
}

/// The offsets `group` committed in `partitions` (OffsetFetch; nothing joins the group).
fn committed(
    brokers: &str,
    extra: &BTreeMap<String, String>,
    group: &str,
    partitions: &[TopicPartition],
    timeout: Duration,
) -> Vec<GroupOffset> {
    let Ok(consumer) = consumer(brokers, extra, Some(group)) else {
        return Vec::new();
    };
    let mut tpl = TopicPartitionList::new();
    for (t, p) in partitions {
        let _ = tpl.add_partition(t, *p);
    }
    let Ok(found) = consumer.committed_offsets(tpl, timeout) else {
        return Vec::new();
    };
    let mut out: Vec<GroupOffset> = found
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(GroupOffset {
                topic: e.topic().to_string(),
                partition: e.partition(),
                next: o,
            }),
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    out
}

/// One partition's read of a tail.
struct Read {
    range: TailRange,
    /// Where the current read started.
    at: i64,
    /// The first offset delivered since then.
    first: Option<i64>,
    got: BTreeMap<i64, TailMessage>,
    since: Instant,
    done: bool,
}

impl Read {
    /// Whether the read covers the range's start: it began at or below it, or at the log
    /// start (below which nothing exists).
    fn covers_start(&self) -> bool {
        self.first.is_some_and(|f| f <= self.range.from) || self.at <= self.range.start
    }

    /// Step back [`STEP_BACK`] times as far from the range's end, never below the log start;
    /// `false` when the read already starts there.
    fn step_back(&mut self) -> bool {
        if self.at <= self.range.start {
            return false;
        }
        let span = (self.range.before - self.at).max(1);
        self.at = (self.range.before - STEP_BACK * span).max(self.range.start);
        self.first = None;
        self.since = Instant::now();
        true
    }
}

/// The messages of each range of `topic`, within `timeout` in all.
pub async fn tail(
    brokers: &str,
    extra: &BTreeMap<String, String>,
    topic: &str,
    ranges: &[TailRange],
    timeout: Duration,
) -> Result<Tail, SourceError> {
    let (b, extra, topic, ranges) = (
        brokers.to_string(),
        extra.clone(),
        topic.to_string(),
        ranges.to_vec(),
    );
    blocking(brokers, move || {
        let failed = |reason: String| SourceError::Broker { brokers: b.clone(), reason };
        let consumer = consumer(&b, &extra, None)?;
        let now = Instant::now();
        let deadline = now + timeout;
        let mut reads: BTreeMap<i32, Read> = ranges
            .iter()
            .filter(|r| r.from < r.before)
            .map(|r| (r.partition, Read { range: *r, at: r.from, first: None, got: BTreeMap::new(), since: now, done: false }))
            .collect();
        // The whole assignment: at the start, and when a seek is refused.
        let assign = |reads: &BTreeMap<i32, Read>| -> Result<(), SourceError> {
            let mut tpl = TopicPartitionList::new();
            for (p, r) in reads.iter().filter(|(_, r)| !r.done) {
                tpl.add_partition_offset(&topic, *p, Offset::Offset(r.at)).map_err(|e| failed(e.to_string()))?;
            }
            consumer.assign(&tpl).map_err(|e| failed(e.to_string()))
        };
        assign(&reads)?;
        while reads.values().any(|r| !r.done) && Instant::now() < deadline {
            // The partitions whose read starts again further back.
            let mut moved = Vec::new();
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    if let Some(r) = reads.get_mut(&m.partition()).filter(|r| !r.done) {
                        let offset = m.offset();
                        r.first.get_or_insert(offset);
                        r.since = Instant::now();
                        if !r.covers_start() {
                            // The read began past the offset it asked for (tansu's answer from
                            // inside a batch): what it skipped may hold the range's start.
                            if r.step_back() {
                                moved.push(r.range.partition);
                            }
                        } else {
                            if (r.range.from..r.range.before).contains(&offset) {
                                let timestamp_ms = m.timestamp().to_millis();
                                r.got.insert(offset, TailMessage { partition: r.range.partition, offset, timestamp_ms, key: m.key().map(<[u8]>::to_vec), payload: m.payload().map(<[u8]>::to_vec) });
                            }
                            r.done = offset + 1 >= r.range.before;
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if let Some(r) = reads.get_mut(&p).filter(|r| !r.done) {
                        // The end of the log: whatever the range holds past here was never written.
                        if r.first.is_none() || r.covers_start() {
                            r.done = true;
                        }
                    }
                }
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset))) => {
                    return Err(failed("the offsets asked for are no longer in the log (retention moved its start); reload the page".into()));
                }
                Some(Err(_)) | None => {}
            }
            for r in reads.values_mut().filter(|r| !r.done && r.first.is_none()) {
                // The stall counts from the partition's first fetch response (a slow connection
                // is not a stall).
                if cached_watermarks(consumer.client(), &topic, r.range.partition).is_none() {
                    r.since = Instant::now();
                    continue;
                }
                if r.since.elapsed() < STALL {
                    continue;
                }
                // Nothing at all from where the read began (tansu, inside a batch).
                if r.step_back() {
                    moved.push(r.range.partition);
                } else {
                    r.since = Instant::now();
                }
            }
            // Only the partitions that step back start again; the others read on.
            let seek = |p: i32| consumer.seek(&topic, p, Offset::Offset(reads[&p].at), Duration::from_secs(1));
            if moved.iter().any(|p| seek(*p).is_err()) {
                assign(&reads)?;
            }
        }
        let mut out = Tail::default();
        for (p, r) in reads {
            if r.done {
                out.messages.extend(r.got.into_values());
            } else {
                out.incomplete.push((p, format!("offsets {}..{} were not all read within {timeout:?} (the read began at {})", r.range.from, r.range.before, r.at)));
            }
        }
        Ok(out)
    })
    .await
}
