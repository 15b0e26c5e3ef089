//! The ingest loop: source → decode → batch → lake, one micro-batch at a time.
//!
//! A batch closes at `trigger_interval`, `max_batch_records` or `max_batch_bytes`, whichever
//! comes first. Closing it commits, in order: the batch's dead letters (with their offsets) to
//! `dead_letters`, then each topic's upsert (with its offsets) to the topic table. See
//! `docs/DESIGN.md` for why that order, together with the per-table offset fences, gives
//! exactly-once results across crashes, restarts and rebalances.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;
use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::FastMap;
use crate::decode::pool::{Chunk, DecodePool};
use crate::decode::Decoder;
use crate::enrich::Provenance;
use crate::metrics::Metrics;
use crate::lake::commit::{OffsetKey, OffsetRange};
use crate::lake::dead_letters::{DeadLetter, DeadLetterTable, TABLE as DEAD_LETTERS};
use crate::lake::upsert::{TopicTable, UpsertOutcome};
use crate::lake::{Lake, LakeError};
use crate::source::kafka::KafkaSource;
use crate::source::{PartitionStarts, RawMessage, SourceError, StartLoader, TopicPartition};

/// Errors that stop the ingest.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The broker side failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The lake side failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// Stored offsets could not be read during a rebalance; nothing was committed.
    #[error("rebalance failed: {0}")]
    Rebalance(String),
    /// A bug in lakepipe (such as a decoder thread that panicked); nothing was committed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl IngestError {
    /// Whether a restart may succeed without the user changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            IngestError::Config(e) => e.is_retryable(),
            IngestError::Source(e) => e.is_retryable(),
            IngestError::Lake(e) => e.is_retryable(),
            IngestError::Rebalance(_) => true,
            IngestError::Internal(_) => false,
        }
    }
}

/// Counters for one ingest run.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct IngestSummary {
    /// Messages read (after skipping those already committed).
    pub consumed: u64,
    /// Messages that passed validation.
    pub valid: u64,
    /// Messages written to `dead_letters`.
    pub dead_lettered: u64,
    /// Keys inserted.
    pub inserted: u64,
    /// Rows updated.
    pub updated: u64,
    /// Rows deleted.
    pub deleted: u64,
    /// Records older than the stored row.
    pub stale: u64,
    /// Batches committed.
    pub batches: u64,
    /// Commits that had to be recomputed after a conflict.
    pub conflicts: u64,
}

impl IngestSummary {
    fn add(&mut self, o: &UpsertOutcome) {
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.deleted += o.deleted;
        self.stale += o.stale;
        self.conflicts += o.attempts.saturating_sub(1) as u64;
    }
}

/// Reads start offsets from the lake (fresh table loads, as another writer may have moved them).
struct LakeStarts {
    lake: Lake,
    source: String,
    group: String,
}

impl StartLoader for LakeStarts {
    fn load<'a>(&'a self, partitions: &'a [TopicPartition]) -> BoxFuture<'a, Result<HashMap<TopicPartition, PartitionStarts>, String>> {
        Box::pin(async move {
            let mut out = HashMap::new();
            let dead = self.lake.open(DEAD_LETTERS).await.map_err(|e| e.to_string())?;
            let mut tables = HashMap::new();
            for (topic, partition) in partitions {
                if !tables.contains_key(topic) {
                    tables.insert(topic.clone(), self.lake.open(topic).await.map_err(|e| e.to_string())?);
                }
                let key = OffsetKey { source: self.source.clone(), group: self.group.clone(), topic: topic.clone(), partition: *partition };
                let mut starts = PartitionStarts::default();
                if let Some(Some(t)) = tables.get(topic) {
                    starts.data = crate::lake::commit::stored_offset(t, topic, &key).await.map_err(|e| e.to_string())?;
                }
                if let Some(d) = &dead {
                    starts.dead = crate::lake::commit::stored_offset(d, DEAD_LETTERS, &key).await.map_err(|e| e.to_string())?;
                }
                out.insert((topic.clone(), *partition), starts);
            }
            Ok(out)
        })
    }
}

/// Per-partition progress.
#[derive(Debug, Clone, Default)]
struct PartState {
    /// Offset stored in the topic table (where this batch started).
    start: Option<i64>,
    /// Offset stored in `dead_letters`.
    dead: Option<i64>,
    /// Next offset after the last message taken into the batch.
    next: Option<i64>,
    /// `--once`: the end offset seen first after assignment (from fetch responses).
    stop: Option<i64>,
    /// `--once`: reached `stop`.
    drained: bool,
    /// When this process started reading the partition.
    since: Option<Instant>,
    /// A message arrived since then.
    got_message: bool,
    /// Already re-read from the beginning because the broker returned nothing.
    rewound: bool,
    /// The stored offset when this process started reading the partition.
    origin: Option<i64>,
}

impl PartState {
    fn position(&self) -> Option<i64> {
        self.next.or(self.start)
    }

    fn has_progress(&self) -> bool {
        match (self.next, self.start) {
            (Some(n), Some(s)) => n > s,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

/// How long a partition with data beyond its offset may deliver nothing before it is re-read.
const STALL_AFTER: Duration = Duration::from_secs(4);

/// One poll of the consumer, owned.
enum Polled {
    /// Messages in arrival order, with their topics.
    Messages(Vec<(Arc<str>, RawMessage)>),
    Nothing,
}

/// At most this many messages are taken from the consumer's queue per poll: it amortises the
/// timer and the event loop over many messages without starving the loop's other duties.
const MAX_PER_POLL: usize = 4096;

/// Where messages come from: a Kafka consumer-group member, or an Iggy reader of every
/// partition. Both start each partition at the lake's offset.
enum Source {
    Kafka(KafkaSource),
    Iggy(crate::source::iggy::IggySource),
}

/// A message or event from the Kafka consumer: `Ok(None)` for events that carry no data.
/// `topic` holds the last message's topic name, shared rather than copied per message.
fn kafka_event(k: &KafkaSource, polled: KafkaResult<BorrowedMessage<'_>>, topic: &mut Option<Arc<str>>) -> Result<Option<(Arc<str>, RawMessage)>, IngestError> {
    match polled {
        Ok(m) => Ok(Some((
            match topic {
                Some(t) if **t == *m.topic() => t.clone(),
                _ => topic.insert(Arc::from(m.topic())).clone(),
            },
            RawMessage {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| k.to_vec()),
                payload: m.payload().map(|p| p.to_vec()),
                timestamp_ms: m.timestamp().to_millis(),
            },
        ))),
        Err(KafkaError::PartitionEOF(_)) => Ok(None),
        Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange)) => {
            // The lake's offset is outside the broker's log: retention removed messages that
            // were never ingested, or the topic was re-created. Never skip silently.
            Err(IngestError::Source(SourceError::Broker {
                brokers: k.brokers().to_string(),
                reason: "a stored offset is out of the broker's range (messages deleted by retention before ingest, or the topic was re-created); see docs/DESIGN.md".into(),
            }))
        }
        Err(e) => {
            tracing::warn!(error = %e, "consumer error");
            Ok(None)
        }
    }
}

impl Source {
    /// The next messages, or nothing within `wait`.
    async fn next(&self, wait: Duration, max: usize) -> Result<Polled, IngestError> {
        match self {
            Source::Kafka(k) => {
                let Ok(first) = tokio::time::timeout(wait, k.consumer.recv()).await else { return Ok(Polled::Nothing) };
                let mut topic = None;
                let mut out: Vec<(Arc<str>, RawMessage)> = kafka_event(k, first, &mut topic)?.into_iter().collect();
                if out.is_empty() {
                    return Ok(Polled::Nothing);
                }
                // Whatever else is already queued, without waiting.
                while out.len() < max.min(MAX_PER_POLL) {
                    match k.consumer.recv().now_or_never() {
                        Some(polled) => match kafka_event(k, polled, &mut topic)? {
                            Some(m) => out.push(m),
                            None => break,
                        },
                        None => break,
                    }
                }
                Ok(Polled::Messages(out))
            }
            Source::Iggy(i) => match i.recv(wait, max.min(10_000) as u32).await {
                Ok(Some((topic, m))) => Ok(Polled::Messages(vec![(topic.into(), m)])),
                Ok(None) => Ok(Polled::Nothing),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "Iggy poll failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Ok(Polled::Nothing)
                }
                Err(e) => Err(e.into()),
            },
        }
    }

    fn assignment(&self) -> &Arc<std::sync::Mutex<crate::source::kafka::Assignment>> {
        match self {
            Source::Kafka(k) => &k.assignment,
            Source::Iggy(i) => &i.assignment,
        }
    }

    fn cached_high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        match self {
            Source::Kafka(k) => k.cached_high_watermark(topic, partition),
            Source::Iggy(i) => i.end_offset(topic, partition),
        }
    }

    fn commit_advisory(&self, offsets: &[(TopicPartition, i64)]) {
        if let Source::Kafka(k) = self {
            k.commit_advisory(offsets);
        }
    }

    fn seek(&self, starts: &[(TopicPartition, Option<i64>)]) -> Result<(), SourceError> {
        match self {
            Source::Kafka(k) => k.seek(starts),
            Source::Iggy(i) => {
                i.seek(starts);
                Ok(())
            }
        }
    }

    /// `_source` of the rows: the kind of broker.
    fn kind(&self) -> &'static str {
        match self {
            Source::Kafka(_) => "kafka",
            Source::Iggy(_) => "iggy",
        }
    }
}

/// One message of a decoded (or decoding) poll.
struct MsgRef {
    chunk: Arc<Chunk>,
    idx: usize,
}

impl MsgRef {
    /// Every message of a chunk, in order.
    fn all(chunk: Arc<Chunk>) -> impl Iterator<Item = MsgRef> {
        (0..chunk.len()).map(move |idx| MsgRef { chunk: chunk.clone(), idx })
    }

    fn get(&self) -> (&str, &RawMessage) {
        self.chunk.get(self.idx)
    }
}

/// A closed batch, decoded once and kept until it commits (or is dropped).
#[derive(Default)]
struct DecodedBatch {
    /// Valid records per topic, in stream order.
    records: HashMap<String, Vec<crate::decode::Record>>,
    /// Dead letters not yet stored (emptied once they are).
    letters: Vec<DeadLetter>,
    /// Messages taken from the batch.
    consumed: u64,
    consumed_per_topic: Vec<(String, u64)>,
    /// Dead letters in the batch.
    dead_lettered: usize,
}

fn offset_key(cfg: &Config, topic: &str, partition: i32) -> OffsetKey {
    OffsetKey { source: cfg.source_name.clone(), group: cfg.group.clone(), topic: topic.to_string(), partition }
}

/// Options of one run.
#[derive(Clone, Default)]
pub struct IngestOptions {
    /// Drain each partition to its end, commit and return.
    pub once: bool,
    /// Where to record metrics (a private registry when `None`).
    pub metrics: Option<Arc<Metrics>>,
    /// Show a progress bar (`--once` on a terminal).
    pub progress: bool,
}

/// Run the ingest until shutdown (or, with `once`, until every partition is drained).
pub async fn run(cfg: &Config, opts: IngestOptions) -> Result<IngestSummary, IngestError> {
    let specs = cfg.selected_specs()?;
    let lake = cfg.lake()?;
    lake.check(cfg.connect()).await?;
    let loader = Arc::new(LakeStarts { lake: lake.clone(), source: cfg.source_name.clone(), group: cfg.group.clone() });
    let topics: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    // Check the broker and the topics before creating any table.
    let source = if cfg.iggy.trim().is_empty() {
        Source::Kafka(KafkaSource::connect(&cfg.brokers, &cfg.group, &topics, &cfg.kafka, loader.clone(), cfg.connect()).await?)
    } else {
        let address = crate::source::iggy::IggyAddress::parse(&cfg.iggy).map_err(|message| ConfigError::Invalid { origin: Some("iggy".into()), message })?;
        Source::Iggy(crate::source::iggy::IggySource::connect(address, &topics, loader.clone()).await?)
    };
    let mut tables = BTreeMap::new();
    let mut decoders = HashMap::new();
    for spec in &specs {
        decoders.insert(spec.name.clone(), Decoder::new(spec.clone(), cfg.max_message_bytes).map_err(ConfigError::from)?);
        tables.insert(spec.name.clone(), TopicTable::open(&lake, spec.clone()).await?);
    }
    let dead = DeadLetterTable::open(&lake).await?;
    tracing::info!(brokers = %cfg.brokers, lake = %lake.root(), group = %cfg.group, topics = ?topics, once = opts.once, "ingest started");
    let metrics = match &opts.metrics {
        Some(m) => m.clone(),
        None => Metrics::new().map_err(|e| IngestError::Rebalance(e.to_string()))?,
    };
    let progress = crate::progress::Progress::new(opts.once && opts.progress, "messages");
    let mut pipe = Pipeline {
        cfg,
        progress,
        metrics,
        opts,
        source,
        loader,
        tables,
        pool: DecodePool::new(decoders, std::thread::available_parallelism().map_or(1, |n| n.get()))
            .map_err(|e| IngestError::Internal(format!("cannot start the decoder threads: {e}")))?,
        decoded: None,
        dead,
        parts: FastMap::default(),
        generation: 0,
        assigned: false,
        pending: FastMap::default(),
        last_tp: None,
        pending_records: 0,
        pending_bytes: 0,
        stash: Vec::new(),
        opened: Instant::now(),
        summary: IngestSummary::default(),
    };
    pipe.run().await
}

struct Pipeline<'c> {
    cfg: &'c Config,
    progress: crate::progress::Progress,
    metrics: Arc<Metrics>,
    opts: IngestOptions,
    source: Source,
    loader: Arc<LakeStarts>,
    tables: BTreeMap<String, TopicTable>,
    /// Decodes each poll's messages in the background.
    pool: DecodePool,
    /// The open batch, decoded: kept across retries of its commit.
    decoded: Option<DecodedBatch>,
    dead: DeadLetterTable,
    parts: FastMap<TopicPartition, PartState>,
    generation: u64,
    assigned: bool,
    pending: FastMap<String, Vec<MsgRef>>,
    /// The partition of the last message taken (see [`Pipeline::take`]).
    last_tp: Option<TopicPartition>,
    pending_records: usize,
    pending_bytes: usize,
    /// Messages read while a batch was committing: the next batch's first messages. Taken as
    /// soon as the commit ends, before any later message, so that no offset is skipped.
    stash: Vec<MsgRef>,
    opened: Instant,
    summary: IngestSummary,
}

impl Pipeline<'_> {
    async fn run(&mut self) -> Result<IngestSummary, IngestError> {
        let trigger = self.cfg.trigger();
        let idle = self.cfg.idle();
        let mut last_activity = Instant::now();
        let mut waiting_since = Instant::now();
        let mut last_stall_check = Instant::now();
        let join_limit = idle.max(Duration::from_secs(90));
        let mut shutdown = Box::pin(shutdown_signal());
        loop {
            let mut wait = trigger.saturating_sub(self.opened.elapsed()).max(Duration::from_millis(10));
            if self.opts.once {
                wait = wait.min(Duration::from_millis(200));
            }
            // A full batch (the stash of the last commit can fill one) is committed first.
            let event = if self.is_full() {
                Polled::Nothing
            } else {
                tokio::select! {
                    _ = &mut shutdown => {
                        tracing::info!("shutdown requested; committing the open batch");
                        if !self.flush_with_retry().await? {
                            tracing::warn!("the open batch was dropped: another writer owns its partitions");
                        }
                        break;
                    }
                    r = self.source.next(wait, self.cfg.max_batch_records - self.pending_records) => r?,
                }
            };
            if self.sync_assignment()? {
                last_activity = Instant::now();
                waiting_since = Instant::now();
            }
            match event {
                Polled::Messages(batch) => {
                    last_activity = Instant::now();
                    for r in MsgRef::all(self.pool.submit(batch)) {
                        self.take(r);
                    }
                }
                Polled::Nothing => {}
            }
            if last_stall_check.elapsed() >= Duration::from_millis(500) {
                last_stall_check = Instant::now();
                self.rewind_stalled()?;
                self.update_lag();
                self.show_progress();
            }
            let progress = self.parts.values().any(|s| s.has_progress());
            if !progress {
                self.opened = Instant::now();
            }
            if progress && (self.is_full() || self.opened.elapsed() >= trigger) {
                self.flush_with_retry().await?;
            }
            if self.opts.once {
                if !self.assigned {
                    if waiting_since.elapsed() > join_limit {
                        return Err(IngestError::Rebalance(format!("no partitions were assigned by the group coordinator within {join_limit:?}")));
                    }
                    continue;
                }
                self.check_drained();
                // An empty assignment may only be a step of a rebalance (members that died
                // have not timed out yet): it ends by the idle timeout, not at once.
                let drained = !self.parts.is_empty() && self.parts.values().all(|s| s.drained);
                let idle_out = last_activity.elapsed() >= idle;
                if drained || idle_out {
                    if idle_out && !drained {
                        let waiting: Vec<String> =
                            self.parts.iter().filter(|(_, s)| !s.drained).map(|((t, p), _)| format!("{t}/{p}")).collect();
                        tracing::warn!(?waiting, "no message for {idle:?}; finishing without an end-of-partition signal");
                    }
                    if self.flush_with_retry().await? {
                        break;
                    }
                    // Fenced: the partitions restart at the lake's offsets; keep draining.
                    last_activity = Instant::now();
                }
            }
        }
        self.progress.finish();
        Ok(self.summary.clone())
    }

    /// Adopt a new assignment from the rebalance callback: drop the open batch, restart at the
    /// lake's offsets.
    /// Returns whether the assignment changed.
    fn sync_assignment(&mut self) -> Result<bool, IngestError> {
        let state = self.source.assignment().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = &state.error {
            return Err(IngestError::Rebalance(e.clone()));
        }
        if state.generation == self.generation {
            return Ok(false);
        }
        self.generation = state.generation;
        self.assigned = state.assigned;
        self.metrics.set_ready(state.assigned);
        self.parts = state
            .partitions
            .iter()
            .map(|(tp, s)| (tp.clone(), PartState { start: s.data, dead: s.dead, since: Some(Instant::now()), origin: s.data, ..Default::default() }))
            .collect();
        drop(state);
        if self.pending_records > 0 {
            tracing::info!(dropped = self.pending_records, "rebalance: dropping the uncommitted batch; it is re-read from the lake's offsets");
        }
        self.clear_pending();
        self.stash.clear();
        Ok(true)
    }

    fn clear_pending(&mut self) {
        self.pending.clear();
        self.decoded = None;
        self.pending_records = 0;
        self.pending_bytes = 0;
        self.opened = Instant::now();
    }

    fn take(&mut self, r: MsgRef) {
        let (topic, m) = r.get();
        let (partition, offset, bytes) = (m.partition, m.offset, m.payload.as_ref().map_or(0, |p| p.len()));
        // Messages come in runs from one partition: its key is built once per run.
        if !matches!(&self.last_tp, Some((t, p)) if t == topic && *p == partition) {
            self.last_tp = Some((topic.to_string(), partition));
        }
        let Some(tp) = &self.last_tp else { return };
        let Some(state) = self.parts.get_mut(tp) else { return };
        if state.position().is_some_and(|n| offset < n) {
            return; // already committed or already in this batch
        }
        state.next = Some(offset + 1);
        state.got_message = true;
        if self.opts.once {
            if state.stop.is_none() {
                state.stop = self.source.cached_high_watermark(&tp.0, tp.1);
            }
            state.drained = state.stop.is_some_and(|s| offset + 1 >= s);
        }
        self.pending_bytes += bytes;
        self.pending_records += 1;
        self.pending.entry_ref(tp.0.as_str()).or_default().push(r);
    }

    /// `--once`: messages read since assignment, of those up to each partition's stop offset.
    fn show_progress(&self) {
        let mut done = 0u64;
        let mut total = Some(0u64);
        for s in self.parts.values() {
            let origin = s.origin.unwrap_or(0);
            done += (s.position().unwrap_or(origin) - origin).max(0) as u64;
            total = match (total, s.stop) {
                (Some(t), Some(stop)) => Some(t + (stop - origin).max(0) as u64),
                _ => None,
            };
        }
        self.progress.set(done, total);
    }

    /// Publish committed offsets and lag (high watermark from fetch responses).
    fn update_lag(&self) {
        for ((topic, p), s) in &self.parts {
            let part = p.to_string();
            if let Some(c) = s.start {
                self.metrics.committed_offset.with_label_values(&[topic.as_str(), part.as_str()]).set(c);
            }
            if let Some(h) = self.source.cached_high_watermark(topic, *p) {
                let lag = (h - s.start.unwrap_or(0)).max(0);
                self.metrics.consumer_lag.with_label_values(&[topic.as_str(), part.as_str()]).set(lag);
            }
        }
    }

    /// Some brokers (tansu 0.6) return nothing when a fetch starts inside a producer's record
    /// batch, which is where a stored offset usually points. A partition that has data beyond
    /// its offset but delivers nothing for a while is re-read from the beginning; messages below
    /// the stored offset are skipped, so this costs time, never correctness.
    fn rewind_stalled(&mut self) -> Result<(), IngestError> {
        // The workaround is for tansu's fetch; Iggy reads at exact offsets.
        if matches!(self.source, Source::Iggy(_)) {
            return Ok(());
        }
        let mut stalled = Vec::new();
        for ((topic, p), state) in self.parts.iter_mut() {
            if state.got_message || state.rewound || state.since.is_none_or(|t| t.elapsed() < STALL_AFTER) {
                continue;
            }
            let Some(hwm) = self.source.cached_high_watermark(topic, *p) else { continue };
            if state.start.is_some_and(|s| hwm > s) {
                state.rewound = true;
                stalled.push(((topic.clone(), *p), None));
            }
        }
        if !stalled.is_empty() {
            let names: Vec<String> = stalled.iter().map(|((t, p), _)| format!("{t}/{p}")).collect();
            tracing::warn!(partitions = ?names, "the broker returns no data from the stored offset although more exists; re-reading from the beginning and skipping what is committed");
            self.source.seek(&stalled)?;
        }
        Ok(())
    }

    /// `--once`: a partition is drained when its position reaches the first high watermark
    /// seen after assignment. The watermark comes from fetch responses (no broker round trip),
    /// so this also works where end-of-partition events or ListOffsets are unreliable.
    fn check_drained(&mut self) {
        for ((topic, p), state) in self.parts.iter_mut() {
            if state.drained {
                continue;
            }
            if state.stop.is_none() {
                state.stop = self.source.cached_high_watermark(topic, *p);
            }
            if let Some(stop) = state.stop {
                if state.position().unwrap_or(0) >= stop {
                    state.drained = true;
                }
            }
        }
    }

    async fn flush_with_retry(&mut self) -> Result<bool, IngestError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.flush().await {
                Ok(done) => return Ok(done),
                Err(e) if e.is_retryable() && attempt < 5 => {
                    tracing::warn!(error = %e, attempt, "batch commit failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * attempt as u64)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Decode the open batch: its records per topic, in stream order, and its dead letters.
    /// Messages below a partition's stored offset, or read twice, are left out; most chunks
    /// were decoded in the background while the batch filled.
    async fn decode_batch(&self) -> Result<DecodedBatch, IngestError> {
        let mut out = DecodedBatch::default();
        for (topic, refs) in &self.pending {
            let before = out.consumed;
            let mut recs = Vec::with_capacity(refs.len());
            // Each partition's stored data and dead-letter offsets, looked up once per batch.
            let stored: FastMap<i32, (Option<i64>, Option<i64>)> = self
                .parts
                .iter()
                .filter(|((t, _), _)| t == topic)
                .map(|((_, p), s)| (*p, (s.start, s.dead)))
                .collect();
            type Pick = fn(&(Option<i64>, Option<i64>)) -> Option<i64>;
            let below = |m: &RawMessage, pick: Pick| {
                stored.get(&m.partition).and_then(pick).is_some_and(|o| m.offset < o)
            };
            let mut ready: Option<usize> = None; // the chunk last waited for (its address)
            for r in refs {
                let (_, m) = r.get();
                if below(m, |s| s.0) {
                    continue; // already committed
                }
                let at = Arc::as_ptr(&r.chunk) as usize;
                if ready != Some(at) {
                    r.chunk.ready().await;
                    ready = Some(at);
                }
                let Some(result) = r.chunk.take(r.idx) else {
                    return Err(IngestError::Internal(format!("message {topic}/{}@{} was not decoded", m.partition, m.offset)));
                };
                out.consumed += 1;
                match result {
                    Ok(rec) => recs.push(rec),
                    Err(error) => {
                        if below(m, |s| s.1) {
                            continue; // already in dead_letters
                        }
                        out.letters.push(DeadLetter {
                            topic: topic.clone(),
                            partition: m.partition,
                            offset: m.offset,
                            key: m.key.clone(),
                            payload: m.payload.clone(),
                            message_timestamp_ms: m.timestamp_ms,
                            error,
                        });
                    }
                }
            }
            out.consumed_per_topic.push((topic.clone(), out.consumed - before));
            out.records.insert(topic.clone(), recs);
        }
        out.dead_lettered = out.letters.len();
        Ok(out)
    }

    /// Commit the open batch. Safe to call again after a failure: progress already committed
    /// is recorded in `parts` and skipped.
    /// Returns `false` when the batch was dropped because another writer moved the offsets.
    async fn flush(&mut self) -> Result<bool, IngestError> {
        if !self.parts.values().any(|s| s.has_progress()) {
            self.clear_pending();
            self.take_stash();
            return Ok(true);
        }
        let started = Instant::now();
        if self.decoded.is_none() {
            self.decoded = Some(self.decode_batch().await?);
        }
        let Some(DecodedBatch { records, letters, consumed, consumed_per_topic, dead_lettered }) = &mut self.decoded else {
            return Err(IngestError::Internal("the decoded batch vanished".into()));
        };
        let (consumed, dead_lettered) = (*consumed, *dead_lettered);

        // 1. Dead letters first: then every dead letter below a data table's offset is stored.
        let mut dead_parts: Vec<TopicPartition> = letters.iter().map(|d| (d.topic.clone(), d.partition)).collect();
        dead_parts.sort();
        dead_parts.dedup();
        let dead_ranges: Vec<OffsetRange> = dead_parts
            .iter()
            .filter_map(|tp| {
                let s = self.parts.get(tp)?;
                Some(OffsetRange { key: offset_key(self.cfg, &tp.0, tp.1), start: s.dead, end: s.next? })
            })
            .collect();
        if !dead_ranges.is_empty() {
            match self.dead.append(letters, &dead_ranges, &self.cfg.source_name).await {
                Ok(_) => {
                    for r in &dead_ranges {
                        if let Some(s) = self.parts.get_mut(&(r.key.topic.clone(), r.key.partition)) {
                            s.dead = Some(r.end);
                        }
                    }
                    self.summary.dead_lettered += letters.len() as u64;
                    for d in letters.iter() {
                        self.metrics.dead_lettered.with_label_values(&[d.topic.as_str(), d.error.kind.as_str()]).inc();
                    }
                    // Stored: a retry of this batch's commit must not append them again.
                    letters.clear();
                }
                Err(LakeError::Fenced { .. }) => return self.refence(None).await,
                Err(e) => return Err(e.into()),
            }
        }

        // 2. Each topic's rows and offsets, in one commit per table, concurrently.
        let mut work: HashMap<String, Vec<OffsetRange>> = HashMap::new();
        for ((topic, p), s) in &self.parts {
            if s.has_progress() {
                if let Some(end) = s.next {
                    work.entry(topic.clone()).or_default().push(OffsetRange { key: offset_key(self.cfg, topic, *p), start: s.start, end });
                }
            }
        }
        let source_kind = self.source.kind();
        let empty = Vec::new();
        let futures = self.tables.iter_mut().filter_map(|(name, table)| {
            let ranges = work.get(name)?;
            let recs = records.get(name).unwrap_or(&empty);
            Some(async move {
                let prov = Provenance::now(source_kind, name);
                let t0 = Instant::now();
                let result = table.upsert(recs, ranges, &prov).await;
                (name.clone(), ranges, recs.len(), result, t0.elapsed().as_secs_f64())
            })
        });
        // Keep reading while the tables commit: the broker's next messages go to the stash.
        let mut read_error = None;
        let results = {
            let mut all = std::pin::pin!(futures::future::join_all(futures));
            loop {
                let room = self.cfg.max_batch_records.saturating_sub(self.stash.len());
                tokio::select! {
                    r = &mut all => break r,
                    polled = self.source.next(Duration::from_millis(50), room), if room > 0 && read_error.is_none() => match polled {
                        Ok(Polled::Messages(batch)) => self.stash.extend(MsgRef::all(self.pool.submit(batch))),
                        Ok(Polled::Nothing) => {}
                        Err(e) => read_error = Some(e),
                    },
                }
            }
        };
        let mut first_error = None;
        let mut fenced = Vec::new();
        let mut committed = Vec::new();
        for (name, ranges, valid, result, seconds) in results {
            match result {
                Ok(out) => {
                    self.summary.add(&out);
                    self.summary.valid += valid as u64;
                    self.metrics.valid.with_label_values(&[name.as_str()]).inc_by(valid as u64);
                    self.metrics.record_upsert(&name, valid, &out, seconds);
                    tracing::debug!(table = %name, ?out, "committed");
                    for r in ranges {
                        if let Some(s) = self.parts.get_mut(&(name.clone(), r.key.partition)) {
                            s.start = Some(r.end);
                        }
                        committed.push(((name.clone(), r.key.partition), r.end));
                    }
                }
                Err(LakeError::Fenced { .. }) => fenced.push(name),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.source.commit_advisory(&committed);
        if let Some(e) = first_error {
            return Err(e.into());
        }
        self.summary.consumed += consumed;
        self.summary.batches += 1;
        for (topic, n) in consumed_per_topic.iter() {
            self.metrics.consumed.with_label_values(&[topic.as_str()]).inc_by(*n);
        }
        self.metrics.batch_seconds.with_label_values(&["all"]).observe(started.elapsed().as_secs_f64());
        self.update_lag();
        tracing::info!(
            messages = consumed,
            dead_letters = dead_lettered,
            tables = committed.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch committed"
        );
        if !fenced.is_empty() {
            return self.refence(Some(&fenced)).await;
        }
        if let Some(e) = read_error {
            return Err(e);
        }
        self.clear_pending();
        self.take_stash();
        Ok(true)
    }

    /// Whether the open batch holds `max_batch_records` or `max_batch_bytes`.
    fn is_full(&self) -> bool {
        self.pending_records >= self.cfg.max_batch_records || self.pending_bytes >= self.cfg.max_batch_bytes
    }

    /// Take the messages read during a commit, in order, into the new batch.
    fn take_stash(&mut self) {
        for r in std::mem::take(&mut self.stash) {
            self.take(r);
        }
    }

    /// Another writer moved offsets under us: drop the batch and restart the affected
    /// partitions (all, when `topics` is `None`) at the lake's offsets.
    async fn refence(&mut self, topics: Option<&[String]>) -> Result<bool, IngestError> {
        let tps: Vec<TopicPartition> =
            self.parts.keys().filter(|(t, _)| topics.is_none_or(|ts| ts.contains(t))).cloned().collect();
        tracing::warn!(partitions = tps.len(), "offsets moved by another writer; re-reading from the lake's offsets");
        let starts = self.loader.load(&tps).await.map_err(IngestError::Rebalance)?;
        let seeks: Vec<(TopicPartition, Option<i64>)> = tps.iter().map(|tp| (tp.clone(), starts.get(tp).and_then(|s| s.data))).collect();
        // Seek before adopting the new starts: if the seek fails, the run stops rather than
        // commit offsets for messages it never read.
        self.source.seek(&seeks)?;
        for tp in &tps {
            let s = starts.get(tp).cloned().unwrap_or_default();
            self.parts.insert(tp.clone(), PartState { start: s.data, dead: s.dead, since: Some(Instant::now()), origin: s.data, ..Default::default() });
        }
        self.clear_pending();
        // The stashed messages of the partitions that seeked come again; the others continue.
        self.stash.retain(|r| {
            let (t, m) = r.get();
            !tps.iter().any(|(tt, p)| tt == t && *p == m.partition)
        });
        self.take_stash();
        Ok(false)
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

