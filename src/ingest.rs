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
use crate::source::kafka::{consumer_fault, ConsumerFault, KafkaSource};
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
    /// `--once` did not bring every partition to the end offset it took at the start; what
    /// was read is committed, and a later run continues from there.
    #[error("--once did not reach the end of every partition: {0}")]
    Incomplete(String),
}

impl IngestError {
    /// Whether a restart may succeed without the user changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            IngestError::Config(e) => e.is_retryable(),
            IngestError::Source(e) => e.is_retryable(),
            IngestError::Lake(e) => e.is_retryable(),
            IngestError::Rebalance(_) | IngestError::Incomplete(_) => true,
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

/// `--once`: a partition of the selected topics that another member of the group holds.
#[derive(Debug, Clone, Copy)]
struct OtherPart {
    /// The log start and end when this run first looked (`None`: the broker did not say).
    listed: Option<(i64, i64)>,
    /// The topic table's offset at the last look.
    stored: Option<i64>,
}

impl OtherPart {
    /// Committed (by whichever member) up to the end it had when this run first looked.
    fn done(&self) -> bool {
        self.listed.is_some_and(|(lo, hi)| self.stored.unwrap_or(lo) >= hi)
    }
}

/// A partition's log start and end from a ListOffsets answer and the last fetch response:
/// the larger of each (tansu 0.6 lists an end below the true one).
fn log_bounds(listed: Option<(i64, i64)>, fetched: Option<(Option<i64>, i64)>) -> (Option<i64>, Option<i64>) {
    (listed.map(|(lo, _)| lo).max(fetched.and_then(|(lo, _)| lo)), listed.map(|(_, hi)| hi).max(fetched.map(|(_, hi)| hi)))
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
    /// The log start and end the broker listed at assignment (ListOffsets).
    listed: Option<(i64, i64)>,
    /// `--once`: the end offset to reach: the listed end, raised to the first end seen in a
    /// fetch response (exact where ListOffsets under-states it, as on tansu 0.6). Fixed
    /// once known, so that a producer that keeps writing cannot keep the run going.
    stop: Option<i64>,
    /// `stop` has taken the fetch response's end into account.
    stop_fixed: bool,
    /// When this process started reading the partition.
    since: Option<Instant>,
    /// A message arrived since then.
    got_message: bool,
    /// Already re-read from the beginning because the broker returned nothing.
    rewound: bool,
    /// The stored offset when this process started reading the partition.
    origin: Option<i64>,
    /// Since when the stored offset has looked outside the broker's log (see
    /// [`Pipeline::check_offsets`]).
    out_of_log_since: Option<Instant>,
    /// A message of this partition arrived since the consumer was last sought.
    delivered: bool,
    /// A gap before the first message after a seek was checked by reading from the log start.
    gap_checked: bool,
    /// A gap was found: drop this partition's messages until it is read from the log start.
    rewind_pending: bool,
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

    /// `--once`: the partition's position (or, with nothing read or stored, its log start)
    /// has reached `stop`.
    fn reached_stop(&self, log_start: Option<i64>) -> bool {
        let at = self.position().or(log_start).unwrap_or(0);
        self.stop_fixed && self.stop.is_some_and(|stop| at >= stop)
    }

    /// `--once`: committed up to `stop` (nothing left to read or to commit). A stored offset
    /// beyond `stop` is not done but suspect: [`Pipeline::check_offsets`] decides whether the
    /// log was replaced, or `stop` came from a stale watermark.
    fn committed_to_stop(&self, log_start: Option<i64>) -> bool {
        let at = self.start.or(log_start).unwrap_or(0);
        !self.has_progress() && self.stop_fixed && self.stop.is_some_and(|stop| at >= stop && self.start.is_none_or(|s| s <= stop))
    }

    /// The consumer has moved past offsets that carried no data for the application (transaction
    /// markers, aborted records): take `position` as the next offset, so that the commit covers
    /// them and the stored offset reaches the log end. Only valid when every message below
    /// `position` has been taken, i.e. with no messages waiting outside the batch.
    #[must_use]
    fn skip_to(&mut self, position: i64) -> bool {
        if self.position().is_some_and(|p| position > p) {
            self.next = Some(position);
            self.got_message = true;
            return true;
        }
        false
    }

    /// The stored offset no longer fits the broker's log (`log_start`..=`end`): a message to
    /// stop on, naming both offsets.
    fn out_of_log(&self, tp: &TopicPartition, log_start: Option<i64>, end: Option<i64>) -> Option<String> {
        let stored = self.start?;
        if let Some(lo) = log_start.filter(|lo| stored < *lo) {
            return Some(format!(
                "{}/{}: the lake's offset {stored} is below the log start {lo}: offsets {stored}..{lo} were deleted (retention, DeleteRecords) before they were ingested",
                tp.0, tp.1
            ));
        }
        if let Some(end) = end.filter(|end| stored > *end) {
            return Some(format!(
                "{}/{}: the lake's offset {stored} is past the log end {end}: the topic or cluster was replaced; ingest it under a new --source-name to start over deliberately",
                tp.0, tp.1
            ));
        }
        None
    }
}

/// How long a partition with data beyond its offset may deliver nothing before it is re-read.
const STALL_AFTER: Duration = Duration::from_secs(4);

/// How long a stored offset must look outside the broker's log before the run stops on it.
const OUT_OF_LOG_CONFIRM: Duration = Duration::from_secs(3);

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
        Err(KafkaError::MessageConsumptionFatal(code)) => Err(IngestError::Source(SourceError::Stuck {
            brokers: k.brokers().to_string(),
            reason: format!("fatal consumer error: {code}"),
        })),
        Err(KafkaError::MessageConsumption(code)) => match consumer_fault(code) {
            ConsumerFault::Transient => {
                tracing::warn!(error = %code, "consumer error; librdkafka retries");
                Ok(None)
            }
            // The lake's offset is outside the broker's log: retention removed messages that
            // were never ingested, or the log was replaced. Never skipped silently; the
            // pipeline names the partitions (see `Pipeline::explain_out_of_range`).
            ConsumerFault::OutOfRange => Err(IngestError::Source(SourceError::OutOfRange {
                brokers: k.brokers().to_string(),
                reason: format!("{code}: a stored offset is outside the broker's log"),
            })),
            ConsumerFault::Stuck => Err(IngestError::Source(SourceError::Stuck {
                brokers: k.brokers().to_string(),
                reason: match code {
                    RDKafkaErrorCode::NotImplemented | RDKafkaErrorCode::UnsupportedCompressionType => {
                        format!("{code}: a batch uses a compression codec this build cannot read")
                    }
                    _ => code.to_string(),
                },
            })),
        },
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
        self.cached_watermarks(topic, partition).map(|(_, hi)| hi)
    }

    /// The log start (when reported) and end from the last fetch, without a broker round trip.
    fn cached_watermarks(&self, topic: &str, partition: i32) -> Option<(Option<i64>, i64)> {
        match self {
            Source::Kafka(k) => k.cached_watermarks(topic, partition),
            Source::Iggy(i) => i.end_offset(topic, partition).map(|end| (None, end)),
        }
    }

    /// The log start and end the broker lists now (Kafka's ListOffsets; Iggy: none).
    fn listed_watermarks(&self, partitions: &[TopicPartition], timeout: Duration) -> HashMap<TopicPartition, (i64, i64)> {
        match self {
            Source::Kafka(k) => k.listed_watermarks(partitions, timeout),
            Source::Iggy(_) => HashMap::new(),
        }
    }

    /// Every partition of the subscribed topics, this member's or not. Iggy's reader holds
    /// every partition itself, so it has none that are another's.
    fn all_partitions(&self, timeout: Duration) -> Result<Vec<TopicPartition>, IngestError> {
        match self {
            Source::Kafka(k) => Ok(k.all_partitions(timeout)?),
            Source::Iggy(_) => Ok(Vec::new()),
        }
    }

    /// The client's position in each partition, past transaction markers (Kafka only).
    fn positions(&self) -> Vec<(TopicPartition, i64)> {
        match self {
            Source::Kafka(k) => k.positions(),
            Source::Iggy(_) => Vec::new(),
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
        others: BTreeMap::new(),
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
    /// `--once`: the partitions of the topics that other members hold, with the log start and
    /// end each had when this run first looked, and the lake's offset at the last look.
    others: BTreeMap<TopicPartition, OtherPart>,
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
        let result = self.run_inner().await;
        // A stored offset outside the broker's log is reported by librdkafka without the
        // partition: name it, with both offsets, from the lake and the broker.
        match result {
            Err(IngestError::Source(SourceError::OutOfRange { brokers, reason })) => {
                let tps: Vec<TopicPartition> = self.parts.keys().cloned().collect();
                let named = self.explain_out_of_range(&tps);
                let reason = if named.is_empty() { reason } else { format!("{reason}: {}", named.join("; ")) };
                Err(IngestError::Source(SourceError::OutOfRange { brokers, reason }))
            }
            other => other,
        }
    }

    async fn run_inner(&mut self) -> Result<IngestSummary, IngestError> {
        let trigger = self.cfg.trigger();
        let once_timeout = self.cfg.once_timeout();
        // `--once`: the last time a partition moved toward its end (or partitions were given).
        let mut last_progress = Instant::now();
        let mut last_positions = 0i64;
        let mut last_stall_check = Instant::now();
        let mut last_lag_report = Instant::now();
        let mut last_others_check = Instant::now() - Duration::from_secs(60);
        let mut shutdown = Box::pin(shutdown_signal());
        loop {
            // Messages taken from the stash of the last commit may have found a gap.
            self.apply_rewinds()?;
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
            if self.sync_assignment().await? {
                // What this poll returned may predate the new assignment; every partition was
                // sought to the lake's offset, so it comes again.
                if self.assigned && !self.parts.is_empty() {
                    last_progress = Instant::now();
                }
                continue;
            }
            if let Polled::Messages(batch) = event {
                for r in MsgRef::all(self.pool.submit(batch)) {
                    self.take(r);
                }
                self.apply_rewinds()?;
            }
            if last_stall_check.elapsed() >= Duration::from_millis(500) {
                last_stall_check = Instant::now();
                self.fix_stops();
                self.skip_markers();
                self.check_offsets()?;
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
            if !self.opts.once {
                continue;
            }
            // `--once`: done when every partition of the topics is committed up to the end it
            // had at the start, this member's by this member, the others' by whichever member
            // holds them; failed when none has moved for `once_timeout`.
            let assigned = self.assigned && !self.parts.is_empty();
            let mut positions: i64 = self.parts.values().filter_map(PartState::position).sum();
            positions += self.others.values().filter_map(|o| o.stored).sum::<i64>();
            if positions != last_positions {
                last_positions = positions;
                last_progress = Instant::now();
            }
            let own_done = if assigned && self.parts.iter().all(|(tp, s)| s.reached_stop(self.log_start(tp, s))) {
                if !(self.flush_with_retry().await? && self.parts.iter().all(|(tp, s)| s.committed_to_stop(self.log_start(tp, s)))) {
                    // Fenced, or a rebalance: the partitions restart at the lake's offsets.
                    last_progress = Instant::now();
                    continue;
                }
                true
            } else {
                // An empty assignment may only be a step of a rebalance (dead members keep
                // partitions until their session times out): the others decide.
                !assigned && self.generation > 0
            };
            if own_done && last_others_check.elapsed() >= Duration::from_secs(2) {
                last_others_check = Instant::now();
                if self.others_done().await? {
                    break;
                }
            }
            if last_progress.elapsed() >= once_timeout {
                // Keep what was read: a later run continues from there.
                self.flush_with_retry().await?;
                return Err(IngestError::Incomplete(self.describe_lag(assigned, once_timeout)));
            }
            if last_lag_report.elapsed() >= Duration::from_secs(30) && last_progress.elapsed() >= Duration::from_secs(10) {
                last_lag_report = Instant::now();
                tracing::warn!(waiting = %self.describe_lag(assigned, last_progress.elapsed()), "--once is waiting for data it has not received yet");
            }
        }
        self.progress.finish();
        Ok(self.summary.clone())
    }

    /// `--once`: whether every partition of the topics that this member does not hold is
    /// committed in the lake up to the end it had when this run first looked at it. Dead
    /// members keep their partitions until their session times out, and live ones may still be
    /// reading theirs: success means the whole topic set is in the lake, not only this share.
    async fn others_done(&mut self) -> Result<bool, IngestError> {
        let all = self.source.all_partitions(self.cfg.connect())?;
        let theirs: Vec<TopicPartition> = all.into_iter().filter(|tp| !self.parts.contains_key(tp)).collect();
        self.others.retain(|tp, _| theirs.contains(tp));
        if theirs.is_empty() {
            return Ok(true);
        }
        let unlisted: Vec<TopicPartition> = theirs.iter().filter(|tp| self.others.get(*tp).is_none_or(|o| o.listed.is_none())).cloned().collect();
        let listed = if unlisted.is_empty() { HashMap::new() } else { self.source.listed_watermarks(&unlisted, self.cfg.connect()) };
        let starts = self.loader.load(&theirs).await.map_err(IngestError::Rebalance)?;
        for tp in &theirs {
            let o = self.others.entry(tp.clone()).or_insert(OtherPart { listed: None, stored: None });
            if o.listed.is_none() {
                o.listed = listed.get(tp).copied();
            }
            o.stored = starts.get(tp).and_then(|s| s.data);
        }
        Ok(self.others.values().all(OtherPart::done))
    }

    /// The first existing offset of a partition, as listed or fetched.
    fn log_start(&self, tp: &TopicPartition, s: &PartState) -> Option<i64> {
        log_bounds(s.listed, self.source.cached_watermarks(&tp.0, tp.1)).0
    }

    /// Why `--once` is not finished: each partition short of its end, with its lag, or that
    /// no partition is assigned.
    fn describe_lag(&self, assigned: bool, quiet_for: Duration) -> String {
        if !assigned {
            return format!(
                "the group coordinator assigned this member no partitions for {quiet_for:?} (other members may hold them, or the coordinator is still rebalancing)"
            );
        }
        let mut behind: Vec<String> = self
            .parts
            .iter()
            .filter(|(tp, s)| !s.committed_to_stop(self.log_start(tp, s)))
            .map(|((t, p), s)| {
                let at = s.start.or(self.log_start(&(t.clone(), *p), s)).unwrap_or(0);
                match s.stop.filter(|_| s.stop_fixed) {
                    Some(stop) => format!("{t}/{p} committed to {at} of {stop} (lag {})", (stop - at).max(0)),
                    None => format!("{t}/{p} committed to {at}, end unknown (no fetch response from the broker)"),
                }
            })
            .collect();
        behind.extend(self.others.iter().filter(|(_, o)| !o.done()).map(|((t, p), o)| {
            let at = o.stored.or(o.listed.map(|(lo, _)| lo)).unwrap_or(0);
            match o.listed {
                Some((_, hi)) => format!("{t}/{p} (held by another member) committed to {at} of {hi} (lag {})", (hi - at).max(0)),
                None => format!("{t}/{p} (held by another member) committed to {at}, end unknown"),
            }
        }));
        behind.sort();
        format!("no progress for {quiet_for:?}; {}", behind.join(", "))
    }

    /// Each of `tps` whose stored offset is outside the broker's log, by a fresh listing and
    /// the last fetch response.
    fn explain_out_of_range(&self, tps: &[TopicPartition]) -> Vec<String> {
        let listed = self.source.listed_watermarks(tps, self.cfg.connect());
        let mut out: Vec<String> = tps
            .iter()
            .filter_map(|tp| {
                let s = self.parts.get(tp)?;
                // Without a fresh listing there is no verdict.
                let listed = Some(*listed.get(tp)?);
                let (start, end) = log_bounds(listed, self.source.cached_watermarks(&tp.0, tp.1));
                s.out_of_log(tp, start, end)
            })
            .collect();
        out.sort();
        out
    }

    /// Stop on a stored offset outside the broker's log: below its start (data deleted before
    /// it was ingested) or past its end (the log was replaced). The watermarks librdkafka
    /// caches can predate this assignment (another member committed further while this one
    /// was not fetching the partition), and tansu 0.6 lists an end below the true one, so a
    /// verdict counts only when it has held for [`OUT_OF_LOG_CONFIRM`] and a fresh listing
    /// still agrees. On Kafka the fetch itself fails with `OFFSET_OUT_OF_RANGE` at once.
    fn check_offsets(&mut self) -> Result<(), IngestError> {
        let mut confirm = Vec::new();
        for (tp, s) in self.parts.iter_mut() {
            let cached = self.source.cached_watermarks(&tp.0, tp.1);
            let (start, end) = log_bounds(s.listed, cached);
            // The end only once a fetch response has given it: the listed one can be low.
            if s.out_of_log(tp, start, end.filter(|_| cached.is_some())).is_none() {
                s.out_of_log_since = None;
                continue;
            }
            let since = *s.out_of_log_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= OUT_OF_LOG_CONFIRM {
                confirm.push(tp.clone());
            }
        }
        if confirm.is_empty() {
            return Ok(());
        }
        let bad = self.explain_out_of_range(&confirm);
        if bad.is_empty() {
            for tp in &confirm {
                if let Some(s) = self.parts.get_mut(tp) {
                    s.out_of_log_since = None;
                    // The stored offset is inside the log: the end is at least there.
                    if let (Some(stop), Some(start)) = (s.stop, s.start) {
                        s.stop = Some(stop.max(start));
                    }
                }
            }
            return Ok(());
        }
        let brokers = match &self.source {
            Source::Kafka(k) => k.brokers().to_string(),
            Source::Iggy(i) => i.display(),
        };
        Err(IngestError::Source(SourceError::OutOfRange { brokers, reason: bad.join("; ") }))
    }

    /// Move each partition past offsets the consumer skipped without handing over a message
    /// (transaction markers, aborted records), so that commits and `--once` reach the log end.
    fn skip_markers(&mut self) {
        // Messages read during a commit wait in the stash: the consumer's position counts
        // them, the batch does not yet.
        if !self.stash.is_empty() {
            return;
        }
        for (tp, position) in self.source.positions() {
            if let Some(s) = self.parts.get_mut(&tp) {
                if s.skip_to(position) {
                    tracing::debug!(topic = %tp.0, partition = tp.1, position, "moved past offsets without data (transaction markers)");
                }
            }
        }
    }

    /// Adopt a new assignment from the rebalance callback: drop the open batch and the stash,
    /// read each partition's offsets from the lake again, and seek every partition there
    /// before anything is taken. The callback's own reading can predate a commit that was in
    /// flight when it ran, and the consumer may already have delivered messages past it.
    /// Returns whether the assignment changed.
    async fn sync_assignment(&mut self) -> Result<bool, IngestError> {
        let (generation, assigned, partitions) = {
            let state = self.source.assignment().lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = &state.error {
                return Err(IngestError::Rebalance(e.clone()));
            }
            if state.generation == self.generation {
                return Ok(false);
            }
            (state.generation, state.assigned, state.partitions.keys().cloned().collect::<Vec<TopicPartition>>())
        };
        self.generation = generation;
        self.assigned = assigned;
        self.metrics.set_ready(assigned);
        if self.pending_records > 0 || !self.stash.is_empty() {
            tracing::info!(dropped = self.pending_records + self.stash.len(), "rebalance: dropping the uncommitted batch; it is re-read from the lake's offsets");
        }
        self.clear_pending();
        self.stash.clear();
        let starts = if partitions.is_empty() { HashMap::new() } else { self.loader.load(&partitions).await.map_err(IngestError::Rebalance)? };
        let seeks: Vec<(TopicPartition, Option<i64>)> = partitions.iter().map(|tp| (tp.clone(), starts.get(tp).and_then(|s| s.data))).collect();
        if !seeks.is_empty() {
            self.source.seek(&seeks)?;
        }
        let listed = self.source.listed_watermarks(&partitions, self.cfg.connect());
        self.parts = partitions
            .iter()
            .map(|tp| {
                let s = starts.get(tp).cloned().unwrap_or_default();
                let listed = listed.get(tp).copied();
                let state = PartState {
                    start: s.data,
                    dead: s.dead,
                    since: Some(Instant::now()),
                    origin: s.data,
                    listed,
                    stop: listed.map(|(_, hi)| hi),
                    ..Default::default()
                };
                (tp.clone(), state)
            })
            .collect();
        Ok(true)
    }

    fn clear_pending(&mut self) {
        self.pending.clear();
        self.decoded = None;
        self.pending_records = 0;
        self.pending_bytes = 0;
        self.opened = Instant::now();
    }

    /// Take a message into the open batch; returns whether it was new (not below the
    /// partition's position).
    fn take(&mut self, r: MsgRef) -> bool {
        let (topic, m) = r.get();
        let (partition, offset, bytes) = (m.partition, m.offset, m.payload.as_ref().map_or(0, |p| p.len()));
        // Messages come in runs from one partition: its key is built once per run.
        if !matches!(&self.last_tp, Some((t, p)) if t == topic && *p == partition) {
            self.last_tp = Some((topic.to_string(), partition));
        }
        let kafka = matches!(self.source, Source::Kafka(_));
        let Some(tp) = &self.last_tp else { return false };
        let Some(state) = self.parts.get_mut(tp) else { return false };
        if state.rewind_pending {
            return false; // read again from the log start
        }
        // The first message after a seek must be the one the seek asked for. tansu 0.6 answers a
        // fetch that starts inside a record batch with the next batch, which skipped the rest
        // of the first (a whole range committed without its rows). A gap here is read again
        // from the log start once; one that is still there is real (compaction, transaction
        // markers) and is taken.
        let first = !std::mem::replace(&mut state.delivered, true);
        if first && kafka && !state.gap_checked && state.position().is_some_and(|n| offset > n) {
            tracing::warn!(topic = %tp.0, partition = tp.1, expected = state.position(), got = offset, "the broker skipped offsets after a seek; reading the partition again from its start");
            state.rewind_pending = true;
            state.gap_checked = true;
            return false;
        }
        if state.position().is_some_and(|n| offset < n) {
            return false; // already committed or already in this batch
        }
        state.next = Some(offset + 1);
        state.got_message = true;
        self.pending_bytes += bytes;
        self.pending_records += 1;
        self.pending.entry_ref(tp.0.as_str()).or_default().push(r);
        true
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

    /// Seek the partitions whose first message after a seek came after a gap (see
    /// [`Pipeline::take`]) to their log start; what is below the stored offset is skipped.
    fn apply_rewinds(&mut self) -> Result<(), IngestError> {
        let mut seeks = Vec::new();
        for (tp, s) in self.parts.iter_mut().filter(|(_, s)| s.rewind_pending) {
            s.rewind_pending = false;
            s.delivered = false;
            s.rewound = true;
            seeks.push((tp.clone(), None));
        }
        if !seeks.is_empty() {
            self.source.seek(&seeks)?;
        }
        Ok(())
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
                // Reading from the start is itself the check for skipped offsets.
                state.delivered = false;
                state.gap_checked = true;
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

    /// `--once`: raise each partition's stop offset to the first end a fetch response gives.
    fn fix_stops(&mut self) {
        for ((topic, p), state) in self.parts.iter_mut() {
            // A second after assignment, so that the fetch response's end is this assignment's
            // and not one librdkafka kept from an earlier one.
            if state.stop_fixed || state.since.is_none_or(|t| t.elapsed() < Duration::from_secs(1)) {
                continue;
            }
            if let Some(hi) = self.source.cached_high_watermark(topic, *p) {
                state.stop = Some(state.stop.map_or(hi, |s| s.max(hi)));
                state.stop_fixed = true;
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
            // The end `--once` works toward stays; only the offsets start again.
            let (listed, stop, stop_fixed) = self.parts.get(tp).map_or((None, None, false), |o| (o.listed, o.stop, o.stop_fixed));
            let state = PartState { start: s.data, dead: s.dead, since: Some(Instant::now()), origin: s.data, listed, stop, stop_fixed, ..Default::default() };
            self.parts.insert(tp.clone(), state);
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


#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> TopicPartition {
        ("t".to_string(), 0)
    }

    fn part(start: Option<i64>, next: Option<i64>, stop: i64) -> PartState {
        PartState { start, next, stop: Some(stop), stop_fixed: true, ..Default::default() }
    }

    #[test]
    fn once_is_done_only_when_committed_to_the_end() {
        // Read to the end but not committed: reached, not done.
        let s = part(Some(10), Some(20), 20);
        assert!(s.reached_stop(None) && !s.committed_to_stop(None));
        // Committed to the end.
        let s = part(Some(20), None, 20);
        assert!(s.reached_stop(None) && s.committed_to_stop(None));
        // Short of the end.
        let s = part(Some(15), Some(19), 20);
        assert!(!s.reached_stop(None) && !s.committed_to_stop(None));
        // An end not yet confirmed by a fetch response never counts.
        let mut s = part(Some(20), None, 20);
        s.stop_fixed = false;
        assert!(!s.reached_stop(None) && !s.committed_to_stop(None));
        // Stored beyond the end: suspect (a replaced log, or a stale end), never done.
        let s = part(Some(5_000), None, 50);
        assert!(!s.committed_to_stop(None));
        // Nothing stored: an empty partition, or one whose records all expired, is at its log start.
        let s = part(None, None, 7);
        assert!(s.committed_to_stop(Some(7)) && !s.committed_to_stop(Some(3)) && !s.committed_to_stop(None));
    }

    /// Transaction markers (and aborted records) are never delivered: the last data message is
    /// below the log end, and only the consumer's position says the rest holds no data. tansu
    /// 0.6 refuses EndTxn, so this is the test of that path; it is not exercised end to end.
    #[test]
    fn transaction_markers_move_the_offset_to_the_log_end() {
        // Data 0..=97 taken, a commit marker at 98, aborted records 99..=101 and their marker at
        // 102: the consumer stands at 103, the log end.
        let mut s = part(Some(50), Some(98), 103);
        assert!(!s.reached_stop(None));
        assert!(s.skip_to(103));
        assert!(s.reached_stop(None) && s.has_progress());
        // The commit stores 103; the next run starts there, not behind the markers.
        s.start = s.next.take();
        assert!(s.committed_to_stop(None));
        // A position at or behind the batch (a seek back, a message in flight) changes nothing.
        assert!(!s.skip_to(103) && !s.skip_to(60));
        assert_eq!(s.position(), Some(103));
    }

    #[test]
    fn a_stored_offset_outside_the_log_is_named_with_both_offsets() {
        let s = part(Some(40), None, 100);
        assert!(s.out_of_log(&tp(), Some(0), Some(100)).is_none());
        assert!(s.out_of_log(&tp(), Some(40), Some(40)).is_none(), "at the end exactly is fine");
        let below = s.out_of_log(&tp(), Some(60), Some(100)).unwrap();
        assert!(below.contains("t/0") && below.contains("40 is below the log start 60"), "{below}");
        let past = s.out_of_log(&tp(), Some(0), Some(30)).unwrap();
        assert!(past.contains("t/0") && past.contains("40 is past the log end 30") && past.contains("--source-name"), "{past}");
        // Nothing stored: nothing to compare.
        assert!(part(None, None, 0).out_of_log(&tp(), Some(60), Some(30)).is_none());
    }

    #[test]
    fn another_members_partition_is_done_when_the_lake_reaches_its_end() {
        let o = |listed, stored| OtherPart { listed, stored };
        assert!(o(Some((0, 50)), Some(50)).done());
        assert!(!o(Some((0, 50)), Some(49)).done());
        assert!(!o(Some((0, 50)), None).done());
        // Empty, or every record expired, and never ingested: nothing to do.
        assert!(o(Some((50, 50)), None).done());
        // The broker did not list it: not known to be done.
        assert!(!o(None, Some(1_000)).done());
    }
}
