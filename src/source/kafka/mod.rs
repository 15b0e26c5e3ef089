//! The Kafka source: a consumer-group member whose partitions always start at the offsets
//! stored in the lake, never at Kafka's own committed offsets.
//!
//! On every assignment the rebalance callback reads each partition's `txn` offsets from the
//! topic table and from `dead_letters`, and assigns the partitions at the data table's offset.
//! Kafka commits are made after each Delta commit, for monitoring tools only.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{Assignment, PartitionStarts, SourceError, StartLoader, TopicPartition};

pub mod inspect;
mod poll;
mod produce;
mod stats;
pub mod watermarks;

pub use poll::{consumer_fault, ConsumerFault};
pub use produce::{ensure_topics, KafkaProducer};
pub use stats::StableEnds;

/// Consumer context that assigns partitions at the lake's offsets.
pub struct LakeOffsetsContext {
    loader: Arc<dyn StartLoader>,
    runtime: tokio::runtime::Handle,
    /// Shared with the ingest loop.
    pub assignment: Arc<Mutex<Assignment>>,
    /// Each partition's last stable offset, from librdkafka's statistics.
    pub stable: StableEnds,
}

impl LakeOffsetsContext {
    fn new(loader: Arc<dyn StartLoader>, assignment: Arc<Mutex<Assignment>>) -> Self {
        LakeOffsetsContext { loader, runtime: tokio::runtime::Handle::current(), assignment, stable: StableEnds::default() }
    }
}

impl ClientContext for LakeOffsetsContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            // End-of-partition also arrives through the consumer; not an error.
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => tracing::trace!(reason, "end of partition"),
            e => tracing::warn!(error = %e, reason, "librdkafka"),
        }
    }

    fn stats_raw(&self, statistics: &[u8]) {
        self.stable.update(statistics);
    }
}

impl ConsumerContext for LakeOffsetsContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let tps: Vec<TopicPartition> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
                let loader = self.loader.clone();
                let handle = self.runtime.clone();
                let wanted = tps.clone();
                // The callback is synchronous; read the lake on the runtime without stalling it.
                let loaded = tokio::task::block_in_place(move || handle.block_on(loader.load(&wanted)));
                let mut state = self.assignment.lock().unwrap_or_else(|p| p.into_inner());
                state.generation += 1;
                state.assigned = true;
                match loaded {
                    Ok(starts) => {
                        for (topic, partition) in &tps {
                            let s = starts.get(&(topic.clone(), *partition)).cloned().unwrap_or_default();
                            let offset = s.data.map(Offset::Offset).unwrap_or(Offset::Beginning);
                            if let Err(e) = tpl.set_partition_offset(topic, *partition, offset) {
                                state.error = Some(format!("cannot set start offset of {topic}/{partition}: {e}"));
                            }
                            state.partitions.insert((topic.clone(), *partition), s);
                        }
                        tracing::info!(partitions = tps.len(), "assigned; starting at the lake's offsets");
                        if let Err(e) = consumer.assign(tpl) {
                            state.error = Some(format!("assign failed: {e}"));
                        }
                    }
                    Err(e) => {
                        state.error = Some(format!("cannot read stored offsets from the lake: {e}"));
                        let _ = consumer.unassign();
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut state = self.assignment.lock().unwrap_or_else(|p| p.into_inner());
                state.generation += 1;
                state.assigned = false;
                state.partitions.clear();
                let _ = consumer.unassign();
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error");
                let mut state = self.assignment.lock().unwrap_or_else(|p| p.into_inner());
                state.generation += 1;
                state.assigned = false;
                state.partitions.clear();
                let _ = consumer.unassign();
            }
        }
    }
}

/// Base librdkafka settings shared by consumers and producers, plus the user's overrides: the
/// one place every Kafka client of lakepipe (ingest, producers, audit, freshness) starts from.
pub(crate) fn client_config(brokers: &str, extra: &std::collections::BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c.set("socket.connection.setup.timeout.ms", "10000");
    c.set("log_level", "3");
    for (k, v) in extra {
        c.set(k, v);
    }
    c
}

/// A short-lived client whose caller reports an unreachable broker once: librdkafka's log
/// lines and error callbacks (a few per connection attempt) stay quiet.
pub(crate) struct Quiet;
impl ClientContext for Quiet {
    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, _: &str, _: &str) {}
    fn error(&self, _: rdkafka::error::KafkaError, _: &str) {}
}
impl rdkafka::consumer::ConsumerContext for Quiet {}

/// A consumer for a short lookup, outside every consumer group: with the `[kafka]` settings,
/// auto-commit off, `settings` on top, and a throwaway group id unless `group` names one
/// (librdkafka assigns partitions only with a group id; nothing subscribes, so nothing
/// joins). The one way lakepipe's lookups (watermarks, the brokers page) read a broker.
pub(crate) fn lookup_consumer(brokers: &str, extra: &std::collections::BTreeMap<String, String>, group: Option<&str>, settings: &[(&str, &str)]) -> Result<BaseConsumer<Quiet>, SourceError> {
    let mut cfg = client_config(brokers, extra);
    cfg.set("enable.auto.commit", "false");
    cfg.set("group.id", group.map_or_else(|| format!("lakepipe-lookup-{}", uuid::Uuid::new_v4()), str::to_string));
    for (k, v) in settings {
        cfg.set(*k, *v);
    }
    cfg.create_with_context(Quiet).map_err(|e| SourceError::Config { reason: e.to_string() })
}

/// Each of `partitions`' log start (where the response carried it) and end, from fetch
/// responses at each log's end (exact even where ListOffsets is not), polled until every
/// partition answered or `deadline`; partitions that gave no answer in time are left out.
pub(crate) fn fetched_watermarks(consumer: &BaseConsumer<Quiet>, partitions: &[TopicPartition], deadline: std::time::Instant) -> Result<HashMap<TopicPartition, (Option<i64>, i64)>, KafkaError> {
    let mut out = HashMap::new();
    if partitions.is_empty() {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    for (t, p) in partitions {
        tpl.add_partition_offset(t, *p, Offset::End)?;
    }
    consumer.assign(&tpl)?;
    while out.len() < partitions.len() && std::time::Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(50));
        for (t, p) in partitions {
            if let Some(w) = cached_watermarks(consumer.client(), t, *p) {
                out.insert((t.clone(), *p), w);
            }
        }
    }
    Ok(out)
}

/// The high watermark of each of `partitions` ([`fetched_watermarks`]), by one consumer with
/// the `[kafka]` settings, within `timeout` in all. A broker that does not answer is one
/// error, not a wait and a log line per partition; partitions that gave no answer in time are
/// left out.
pub async fn high_watermarks(brokers: &str, extra: &std::collections::BTreeMap<String, String>, partitions: &[TopicPartition], timeout: Duration) -> Result<HashMap<TopicPartition, i64>, SourceError> {
    let (brokers, extra, partitions) = (brokers.to_string(), extra.clone(), partitions.to_vec());
    let failed = brokers.clone();
    let work = move || -> Result<HashMap<TopicPartition, i64>, SourceError> {
        let unreachable = |reason: String| SourceError::Unreachable { brokers: brokers.clone(), reason };
        let consumer = lookup_consumer(&brokers, &extra, None, &[])?;
        let deadline = std::time::Instant::now() + timeout;
        consumer.fetch_metadata(None, timeout).map_err(|e| unreachable(format!("no answer within {timeout:?}: {e}")))?;
        let marks = fetched_watermarks(&consumer, &partitions, deadline).map_err(|e| unreachable(e.to_string()))?;
        Ok(marks.into_iter().map(|(tp, (_, hi))| (tp, hi)).collect())
    };
    tokio::task::spawn_blocking(work).await.map_err(|e| SourceError::Broker { brokers: failed, reason: format!("the watermark lookup failed: {e}") })?
}

/// A consumer-group member for the given topics.
pub struct KafkaSource {
    /// The consumer.
    pub consumer: StreamConsumer<LakeOffsetsContext>,
    /// The current assignment.
    pub assignment: Arc<Mutex<Assignment>>,
    brokers: String,
    /// The subscribed topics.
    topics: Vec<String>,
    /// The group, the `[kafka]` properties and the lake's offsets: what a direct reader of
    /// the same topics needs (see [`KafkaSource::direct`]).
    group: String,
    extra: std::collections::BTreeMap<String, String>,
    loader: Arc<dyn StartLoader>,
}

impl Drop for KafkaSource {
    /// Leave the group before the client is dropped. rust-rdkafka's own close waits in polls of
    /// 100 ms, so it returns up to 100 ms after the group was left; librdkafka's blocking close
    /// returns as soon as it is done (revoke, LeaveGroup), and the client's close then finds
    /// the consumer closed. That wait ended every `ingest --once` run.
    fn drop(&mut self) {
        // SAFETY: the handle is valid until the consumer field is dropped, after this.
        unsafe { rdkafka::bindings::rd_kafka_consumer_close(self.consumer.client().native_ptr()) };
    }
}

impl KafkaSource {
    /// Connect, check that every topic exists, and subscribe.
    pub async fn connect(
        brokers: &str,
        group: &str,
        topics: &[String],
        extra: &std::collections::BTreeMap<String, String>,
        loader: Arc<dyn StartLoader>,
        timeout: Duration,
    ) -> Result<Self, SourceError> {
        let cfg = consumer_config(brokers, group, extra)?;
        let assignment = Arc::new(Mutex::new(Assignment::default()));
        let ctx = LakeOffsetsContext::new(loader.clone(), assignment.clone());
        let consumer: StreamConsumer<LakeOffsetsContext> =
            cfg.create_with_context(ctx).map_err(|e| SourceError::Config { reason: e.to_string() })?;
        check_topics(consumer.client(), brokers, topics, timeout).await?;
        let names: Vec<&str> = topics.iter().map(|s| s.as_str()).collect();
        consumer.subscribe(&names).map_err(|e| SourceError::Broker { brokers: brokers.to_string(), reason: e.to_string() })?;
        Ok(KafkaSource { consumer, assignment, brokers: brokers.to_string(), topics: topics.to_vec(), group: group.to_string(), extra: extra.clone(), loader })
    }

    /// A consumer outside the group protocol that reads `starts` itself, each partition from
    /// the given offset (`None`: the log start), as assignment `generation`. For `--once` when
    /// the group coordinator assigns nothing: exactly-once does not need the coordinator, since
    /// the lake's offset fences stop any other writer of the same partitions. No rebalance
    /// ever changes this assignment.
    pub fn direct(
        brokers: &str,
        group: &str,
        topics: &[String],
        extra: &std::collections::BTreeMap<String, String>,
        loader: Arc<dyn StartLoader>,
        starts: &[(TopicPartition, Option<i64>)],
        generation: u64,
    ) -> Result<Self, SourceError> {
        let cfg = consumer_config(brokers, group, extra)?;
        let partitions = starts.iter().map(|(tp, o)| (tp.clone(), PartitionStarts { data: *o, dead: None })).collect();
        let assignment = Arc::new(Mutex::new(Assignment { generation, partitions, assigned: true, error: None }));
        let ctx = LakeOffsetsContext::new(loader.clone(), assignment.clone());
        let consumer: StreamConsumer<LakeOffsetsContext> =
            cfg.create_with_context(ctx).map_err(|e| SourceError::Config { reason: e.to_string() })?;
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in starts {
            tpl.add_partition_offset(t, *p, o.map(Offset::Offset).unwrap_or(Offset::Beginning))
                .map_err(|e| SourceError::Broker { brokers: brokers.to_string(), reason: format!("{t}/{p}: {e}") })?;
        }
        consumer.assign(&tpl).map_err(|e| SourceError::Broker { brokers: brokers.to_string(), reason: format!("assign: {e}") })?;
        Ok(KafkaSource { consumer, assignment, brokers: brokers.to_string(), topics: topics.to_vec(), group: group.to_string(), extra: extra.clone(), loader })
    }

    /// The bootstrap servers.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }
}

/// The consumer's settings: lakepipe's, then the user's `[kafka]` overrides, except those
/// lakepipe manages.
fn consumer_config(brokers: &str, group: &str, extra: &std::collections::BTreeMap<String, String>) -> Result<ClientConfig, SourceError> {
    let mut cfg = client_config(brokers, &std::collections::BTreeMap::new());
    cfg.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error")
        .set("enable.partition.eof", "true")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "600000")
        // `fetch.wait.max.ms` stays librdkafka's 500 ms: Kafka answers a fetch as soon as
        // there is data (`fetch.min.bytes` = 1), so the wait bounds only idle fetches, two a
        // second per broker (10 ms sent about a hundred). tansu 0.6 holds every fetch for the
        // full wait, data or not: against it, set `[kafka] "fetch.wait.max.ms" = "10"` (the
        // scripts do, through LAKEPIPE_KAFKA__FETCH_WAIT_MAX_MS).
        // While a batch commits, the local queue fills; past `queued.min.messages` (100,000
        // by default) librdkafka pauses fetching for `fetch.queue.backoff.ms` (1 s), which
        // left the consumer idle after every commit. Keep fetching up to the byte bound.
        .set("queued.min.messages", "1000000")
        // The consumer's own stash holds up to a batch while a commit runs: a smaller
        // prefetch than librdkafka's 64 MB keeps the two within the memory budget.
        .set("queued.max.messages.kbytes", "32768")
        .set("fetch.queue.backoff.ms", "20")
        .set("partition.assignment.strategy", "range")
        // Records of aborted transactions never reach the lake (librdkafka's default, made
        // explicit); transaction markers are skipped through the consumer's position.
        .set("isolation.level", "read_committed")
        // The last stable offset of a fetch response reaches the application only through
        // the statistics: `--once` ends there, not at a high watermark an open transaction holds.
        .set("statistics.interval.ms", stats::INTERVAL_MS);
    for (k, v) in extra {
        if k == "partition.assignment.strategy" && v.contains("cooperative") {
            return Err(SourceError::Config { reason: "cooperative rebalancing is not supported; use range or roundrobin".into() });
        }
        if ["enable.auto.commit", "auto.offset.reset", "group.id", "isolation.level", "statistics.interval.ms"].contains(&k.as_str()) {
            return Err(SourceError::Config { reason: format!("`{k}` is managed by lakepipe and cannot be overridden") });
        }
        cfg.set(k, v);
    }
    Ok(cfg)
}

impl KafkaSource {
    /// Every partition of the subscribed topics, assigned to this member or not.
    pub fn all_partitions(&self, timeout: Duration) -> Result<Vec<TopicPartition>, SourceError> {
        let md = tokio::task::block_in_place(|| self.consumer.fetch_metadata(None, timeout))
            .map_err(|e| SourceError::Broker { brokers: self.brokers.clone(), reason: e.to_string() })?;
        let mut out: Vec<TopicPartition> = md
            .topics()
            .iter()
            .filter(|t| self.topics.iter().any(|n| n == t.name()))
            .flat_map(|t| t.partitions().iter().map(|p| (t.name().to_string(), p.id())))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The high watermark seen in fetch responses (no broker round trip), if known.
    pub fn cached_high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        cached_high_watermark(self.consumer.client(), topic, partition)
    }

    /// Tell Kafka how far the lake has committed (advisory: restarts read the lake).
    pub fn commit_advisory(&self, offsets: &[(TopicPartition, i64)]) {
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in offsets {
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!(error = %e, "advisory Kafka commit failed");
            }
        }
    }

    /// Each partition's log start and end as the broker lists them (ListOffsets), for the
    /// partitions it answered within `timeout`. tansu 0.6 lists the last batch's base offset
    /// plus one as the end, below the true end: combine it with
    /// [`KafkaSource::cached_watermarks`].
    ///
    /// Two requests per partition leader in all (one for the starts, one for the ends), not
    /// two per partition one after another: the assignment blocks the poll loop while it
    /// lists, and with many partitions and a slow leader that used to outlast
    /// `max.poll.interval.ms`. With `read_committed` the end is the last stable offset.
    pub fn listed_watermarks(&self, partitions: &[TopicPartition], timeout: Duration) -> HashMap<TopicPartition, (i64, i64)> {
        if partitions.is_empty() {
            return HashMap::new();
        }
        match self.list_offsets(partitions, Offset::Beginning, timeout).and_then(|starts| Ok((starts, self.list_offsets(partitions, Offset::End, timeout)?))) {
            Ok((starts, ends)) => {
                let out: HashMap<TopicPartition, (i64, i64)> =
                    partitions.iter().filter_map(|tp| Some((tp.clone(), (*starts.get(tp)?, *ends.get(tp)?)))).collect();
                if out.len() < partitions.len() {
                    tracing::warn!(unlisted = partitions.len() - out.len(), "the broker did not list some partitions' offsets; relying on fetch responses for them");
                }
                out
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list offsets in one request; listing each partition");
                self.listed_one_by_one(partitions, timeout)
            }
        }
    }

    /// ListOffsets at `at` (the log start or end) for every partition, one request per leader;
    /// the partitions the broker answered without an error.
    fn list_offsets(&self, partitions: &[TopicPartition], at: Offset, timeout: Duration) -> Result<HashMap<TopicPartition, i64>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in partitions {
            tpl.add_partition_offset(t, *p, at)?;
        }
        let listed = tokio::task::block_in_place(|| self.consumer.offsets_for_times(tpl, timeout))?;
        Ok(listed
            .elements()
            .iter()
            .filter(|e| e.error().is_ok())
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
                _ => None,
            })
            .collect())
    }

    /// [`KafkaSource::listed_watermarks`] one partition at a time, for a broker that refuses
    /// the batched form.
    fn listed_one_by_one(&self, partitions: &[TopicPartition], timeout: Duration) -> HashMap<TopicPartition, (i64, i64)> {
        let mut out = HashMap::new();
        for (t, p) in partitions {
            match tokio::task::block_in_place(|| self.consumer.fetch_watermarks(t, *p, timeout)) {
                Ok(w) => {
                    out.insert((t.clone(), *p), w);
                }
                Err(e) => tracing::warn!(topic = %t, partition = p, error = %e, "cannot list the partition's offsets; relying on fetch responses"),
            }
        }
        out
    }

    /// The end a `read_committed` reader can reach (see [`StableEnds::end`]); `None` before
    /// librdkafka's first statistics report that names the partition.
    pub fn cached_stable_end(&self, topic: &str, partition: i32) -> Option<i64> {
        let live = self.cached_high_watermark(topic, partition)?;
        self.consumer.context().stable.end(topic, partition, live)
    }

    /// The end of each of `partitions` from one fetch response each, by a short-lived consumer
    /// outside the group (see [`high_watermarks`]); empty when the broker does not answer.
    pub fn fetched_ends(&self, partitions: &[TopicPartition], timeout: Duration) -> HashMap<TopicPartition, i64> {
        let lookup = high_watermarks(&self.brokers, &self.extra, partitions, timeout);
        match tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(lookup)) {
            Ok(ends) => ends,
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch the partitions' ends; relying on the listed ones");
                HashMap::new()
            }
        }
    }

    /// The log start and end librdkafka last saw in a fetch response (no broker round trip).
    pub fn cached_watermarks(&self, topic: &str, partition: i32) -> Option<(Option<i64>, i64)> {
        cached_watermarks(self.consumer.client(), topic, partition)
    }

    /// Where librdkafka stands in each assigned partition: one past the last message or
    /// transaction marker handed to the application. Markers are never delivered as messages,
    /// so this is how a consumer learns that the offsets below it hold no more data.
    pub fn positions(&self) -> Vec<(TopicPartition, i64)> {
        let Ok(tpl) = self.consumer.position() else { return Vec::new() };
        tpl.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
                _ => None,
            })
            .collect()
    }

    /// Move partitions to new start offsets after a fence (another writer committed).
    pub fn seek(&self, starts: &[(TopicPartition, Option<i64>)]) -> Result<(), SourceError> {
        for ((t, p), o) in starts {
            let offset = o.map(Offset::Offset).unwrap_or(Offset::Beginning);
            self.consumer
                .seek(t, *p, offset, Duration::from_secs(10))
                .map_err(|e| SourceError::Broker { brokers: self.brokers.clone(), reason: format!("seek {t}/{p}: {e}") })?;
        }
        Ok(())
    }
}

/// The high watermark librdkafka last saw in a fetch response for a partition, if any. Exact
/// even on brokers whose ListOffsets under-states the log end (tansu 0.6).
pub fn cached_high_watermark<C: ClientContext>(client: &rdkafka::client::Client<C>, topic: &str, partition: i32) -> Option<i64> {
    cached_watermarks(client, topic, partition).map(|(_, hi)| hi)
}

/// The log start (if reported) and high watermark from the last fetch response.
pub(crate) fn cached_watermarks<C: ClientContext>(client: &rdkafka::client::Client<C>, topic: &str, partition: i32) -> Option<(Option<i64>, i64)> {
    let topic = CString::new(topic).ok()?;
    let (mut lo, mut hi) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid for the client's lifetime, the topic is a valid C
    // string, and librdkafka only writes the two out-parameters.
    let err = unsafe { rdkafka::bindings::rd_kafka_get_watermark_offsets(client.native_ptr(), topic.as_ptr(), partition, &mut lo, &mut hi) };
    (err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && hi >= 0).then_some(((lo >= 0).then_some(lo), hi))
}

/// Fail clearly when the brokers cannot be reached or a topic does not exist.
async fn check_topics<C: ClientContext>(client: &rdkafka::client::Client<C>, brokers: &str, topics: &[String], timeout: Duration) -> Result<(), SourceError> {
    let md = tokio::task::block_in_place(|| client.fetch_metadata(None, timeout)).map_err(|e| SourceError::Unreachable {
        brokers: brokers.to_string(),
        reason: e.to_string(),
    })?;
    for t in topics {
        let found = md.topics().iter().find(|m| m.name() == t);
        match found {
            Some(m) if m.error().is_none() && !m.partitions().is_empty() => {}
            _ => return Err(SourceError::UnknownTopic { topic: t.clone(), brokers: brokers.to_string() }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The build reads every codec producers use and speaks TLS and SASL (PLAIN, SCRAM,
    /// OAUTHBEARER); librdkafka's default build lacks zstd, and a zstd batch stalled its
    /// partition.
    #[test]
    fn librdkafka_has_every_codec_and_security_feature() {
        let native = ClientConfig::new().create_native_config().unwrap();
        let features = native.get("builtin.features").unwrap();
        let have: Vec<&str> = features.split(',').collect();
        for want in ["gzip", "snappy", "lz4", "zstd", "ssl", "sasl_plain", "sasl_scram", "sasl_oauthbearer"] {
            assert!(have.contains(&want), "librdkafka lacks {want}: {features}");
        }
    }
}
