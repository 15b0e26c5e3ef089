//! In-memory fakes of a broker ([`FakeSource`]) and of the lake ([`FakeTables`]), for the
//! loop's unit and model tests: partitions as vectors, assignments that change at any moment,
//! injected broker errors, transaction markers and retention gaps; tables with stored offsets,
//! fences, conflicts, failures, lost replies and hangs. The real I/O paths are tested against
//! tansu and LocalStack; these test the logic between them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::source::{Assignment, AssignmentChange, PartitionStarts, Polled, RawMessage, Source, SourceError, TopicPartition};

mod lake;
pub(super) use lake::{FakeTables, Fault, Row};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One offset of a fake partition's log.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Entry {
    /// A message (`payload` `None`: a tombstone).
    Message { key: Option<Vec<u8>>, payload: Option<Vec<u8>> },
    /// A transaction marker: it takes an offset and is never delivered.
    Marker,
    /// A message compaction removed: nothing is there any more.
    Removed,
}

/// The broker's side: the logs, their log starts, and errors to return.
#[derive(Debug, Default)]
pub(super) struct Logs {
    /// Every partition's log, from offset 0.
    pub(super) logs: BTreeMap<TopicPartition, Vec<Entry>>,
    /// The first offset retention kept (0 when absent).
    pub(super) log_start: HashMap<TopicPartition, i64>,
    /// What the next polls return instead of messages, in order.
    pub(super) errors: VecDeque<SourceError>,
    /// Where each producer batch begins (each [`FakeBroker::produce`] writes one).
    pub(super) batches: BTreeMap<TopicPartition, std::collections::BTreeSet<i64>>,
    /// How a fetch that starts inside a batch is answered.
    pub(super) fetch: Fetch,
    /// The loop checks fetches as inexact even when they are exact, as it does on every Kafka
    /// broker (see [`Source::inexact_seeks`]).
    pub(super) checks: bool,
    /// Direct readers (outside the group) created.
    pub(super) directs: u64,
    /// The first offset of each partition's open transaction: the last stable offset, which
    /// a `read_committed` reader does not read past.
    pub(super) open: HashMap<TopicPartition, i64>,
    /// Seeks to the log start (re-reads, or partitions with nothing stored).
    pub(super) start_seeks: u64,
    /// The last stable offset of an old statistics report, where set: the end reported is
    /// never above it. And listings that name no partition (a broker that lists nothing).
    pub(super) stale_report: Option<i64>,
    pub(super) unlisted: bool,
    /// Retention that moves a partition's log start (the last number) at a seek to an offset
    /// (the middle one): the moment between listing the log start and fetching.
    pub(super) expire_at_seek: Option<(TopicPartition, i64, i64)>,
}

/// How the fake broker answers a fetch that starts inside a producer batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Fetch {
    /// From the offset asked for (Kafka).
    #[default]
    Exact,
    /// From the next batch (tansu 0.6): the rest of the first batch is skipped; nothing while
    /// there is no next batch.
    NextBatch,
    /// With nothing, for as long as the fetch starts there (tansu 0.6).
    Nothing,
}

impl Logs {
    fn start(&self, tp: &TopicPartition) -> i64 {
        self.log_start.get(tp).copied().unwrap_or(0)
    }

    fn end(&self, tp: &TopicPartition) -> i64 {
        self.logs.get(tp).map_or(0, |l| l.len() as i64)
    }

    fn stable_end(&self, tp: &TopicPartition) -> i64 {
        self.open.get(tp).copied().unwrap_or_else(|| self.end(tp))
    }

    /// The end ListOffsets gives: tansu 0.6 (a fetch that is not exact) lists the last
    /// batch's base + 1, below the true end.
    fn listed_end(&self, tp: &TopicPartition) -> i64 {
        let end = self.stable_end(tp);
        if self.fetch == Fetch::Exact {
            return end;
        }
        let last_base = self.batches.get(tp).and_then(|b| b.range(..end).next_back().copied());
        last_base.map_or(end, |base| (base + 1).min(end))
    }
}

/// A broker with partitions held in memory; cheap to clone, every clone sees the same logs.
#[derive(Debug, Clone, Default)]
pub(super) struct FakeBroker(pub(super) Arc<Mutex<Logs>>);

impl FakeBroker {
    /// A broker with these partitions, empty.
    pub(super) fn new(partitions: &[TopicPartition]) -> Self {
        let b = FakeBroker::default();
        lock(&b.0).logs = partitions.iter().map(|tp| (tp.clone(), Vec::new())).collect();
        b
    }

    /// Append entries to a partition's log.
    pub(super) fn produce(&self, tp: &TopicPartition, entries: impl IntoIterator<Item = Entry>) {
        let mut logs = lock(&self.0);
        let log = logs.logs.entry(tp.clone()).or_default();
        let first = log.len() as i64;
        log.extend(entries);
        if log.len() as i64 > first {
            logs.batches.entry(tp.clone()).or_default().insert(first);
        }
    }

    /// Append entries in a transaction that stays open (until [`FakeBroker::end_transaction`]).
    pub(super) fn produce_in_transaction(&self, tp: &TopicPartition, entries: impl IntoIterator<Item = Entry>) {
        let end = lock(&self.0).end(tp);
        lock(&self.0).open.entry(tp.clone()).or_insert(end);
        self.produce(tp, entries);
    }

    /// Commit the open transaction: its marker is appended, and its records become readable.
    pub(super) fn end_transaction(&self, tp: &TopicPartition) {
        self.finish_transaction(tp, true);
    }

    /// End the open transaction, if any: committed, its records become readable; aborted,
    /// they are never delivered (as markers are not). Every entry since the transaction
    /// began belongs to it.
    pub(super) fn finish_transaction(&self, tp: &TopicPartition, commit: bool) {
        let Some(first) = lock(&self.0).open.remove(tp) else { return };
        if !commit {
            if let Some(log) = lock(&self.0).logs.get_mut(tp) {
                for e in log.iter_mut().skip(first as usize) {
                    *e = Entry::Marker;
                }
            }
        }
        self.produce(tp, [Entry::Marker]);
    }

    /// Whether a transaction is open on the partition.
    pub(super) fn in_transaction(&self, tp: &TopicPartition) -> bool {
        lock(&self.0).open.contains_key(tp)
    }

    /// Answer fetches that start inside a batch this way from now on; `checks`: the loop
    /// checks them as inexact even when they are exact.
    pub(super) fn fetch(&self, fetch: Fetch, checks: bool) {
        let mut logs = lock(&self.0);
        logs.fetch = fetch;
        logs.checks = checks;
    }

    /// Compaction: the messages at these offsets are gone (the log's offsets stay; markers
    /// stay too).
    pub(super) fn compact(&self, tp: &TopicPartition, offsets: std::ops::Range<i64>) {
        let mut logs = lock(&self.0);
        if let Some(log) = logs.logs.get_mut(tp) {
            for o in offsets {
                if let Some(e @ Entry::Message { .. }) = log.get_mut(o as usize) {
                    *e = Entry::Removed;
                }
            }
        }
    }

    /// Retention: the log now starts at `start`.
    pub(super) fn expire(&self, tp: &TopicPartition, start: i64) {
        lock(&self.0).log_start.insert(tp.clone(), start);
    }

    /// The next poll of any member fails with `e`.
    pub(super) fn fail_next_poll(&self, e: SourceError) {
        lock(&self.0).errors.push_back(e);
    }

    /// A member of the group with nothing assigned yet.
    pub(super) fn member(&self) -> FakeSource {
        FakeSource { broker: self.clone(), reader: Arc::new(Mutex::new(Reader::default())), direct_allowed: true }
    }

    /// The entries of a partition's log.
    pub(super) fn log(&self, tp: &TopicPartition) -> Vec<Entry> {
        lock(&self.0).logs.get(tp).cloned().unwrap_or_default()
    }

    /// Every partition.
    pub(super) fn partitions(&self) -> Vec<TopicPartition> {
        lock(&self.0).logs.keys().cloned().collect()
    }
}

/// A member's side: its assignment and where it reads.
#[derive(Debug, Default)]
pub(super) struct Reader {
    pub(super) assignment: Assignment,
    /// The next offset each assigned partition delivers.
    pub(super) positions: BTreeMap<TopicPartition, i64>,
    /// Partitions not fetched since they were sought (or assigned).
    pub(super) sought: std::collections::BTreeSet<TopicPartition>,
    /// Partitions sought to their log start (or assigned without an offset): the start when
    /// they are next fetched, as librdkafka resolves `Offset::Beginning`, not when sought.
    pub(super) beginning: std::collections::BTreeSet<TopicPartition>,
}

/// One member reading a [`FakeBroker`]. Clones share the member: a test keeps one to change
/// the assignment while the loop holds another.
#[derive(Debug, Clone)]
pub(super) struct FakeSource {
    broker: FakeBroker,
    pub(super) reader: Arc<Mutex<Reader>>,
    /// Whether [`Source::direct`] gives a reader outside the group.
    pub(super) direct_allowed: bool,
}

impl FakeSource {
    /// A rebalance: the member now holds `partitions` (none: a revoke), read from the log
    /// start until the loop seeks them to the lake's offsets, as a new generation.
    pub(super) fn assign(&self, partitions: &[TopicPartition]) {
        // Locks in one order everywhere: the broker's, then the member's.
        let logs = lock(&self.broker.0);
        let mut r = lock(&self.reader);
        r.assignment.generation += 1;
        tracing::debug!(generation = r.assignment.generation, ?partitions, "fake: assign");
        r.assignment.assigned = !partitions.is_empty();
        r.assignment.partitions = partitions.iter().map(|tp| (tp.clone(), PartitionStarts::default())).collect();
        r.positions = partitions.iter().map(|tp| (tp.clone(), logs.start(tp))).collect();
        r.sought = partitions.iter().cloned().collect();
        r.beginning = partitions.iter().cloned().collect();
    }

    /// The partitions and positions, polled in turn from the lowest.
    fn take(&self, max: usize) -> Result<Vec<(Arc<str>, RawMessage)>, SourceError> {
        let mut logs = lock(&self.broker.0);
        if let Some(e) = logs.errors.pop_front() {
            return Err(e);
        }
        let mut r = lock(&self.reader);
        let mut out = Vec::new();
        let tps: Vec<TopicPartition> = r.positions.keys().cloned().collect();
        for tp in tps {
            // A partition this poll has no room for is not fetched at all: its position and
            // its pending seek stay as they are.
            if out.len() >= max {
                break;
            }
            let start = logs.start(&tp);
            if r.beginning.remove(&tp) {
                r.positions.insert(tp.clone(), start);
            }
            let mut at = r.positions[&tp];
            if at < start {
                // What other partitions delivered is handed over first: the error comes with
                // the next poll, as librdkafka's error events do.
                if !out.is_empty() {
                    break;
                }
                // `auto.offset.reset=error`, as the Kafka source sets it.
                return Err(SourceError::OutOfRange { brokers: "fake".into(), reason: format!("{}/{}: offset {at} is below the log start {start}", tp.0, tp.1) });
            }
            let log = logs.logs.get(&tp).map(Vec::as_slice).unwrap_or_default();
            let topic: Arc<str> = Arc::from(tp.0.as_str());
            // A fetch from inside a producer batch, on a broker that cannot start there.
            let inside = (at as usize) < log.len() && at > start && !logs.batches.get(&tp).is_some_and(|b| b.contains(&at));
            if inside && r.sought.contains(&tp) {
                match logs.fetch {
                    Fetch::Exact => {}
                    Fetch::Nothing => continue,
                    // Nothing until a later batch exists: the client's position stays.
                    Fetch::NextBatch => match logs.batches.get(&tp).and_then(|b| b.range(at..).next().copied()) {
                        Some(next) => at = next,
                        None => continue,
                    },
                }
            }
            r.sought.remove(&tp);
            let from = at;
            // `read_committed`: nothing at or past an open transaction.
            let stable = logs.stable_end(&tp) as usize;
            while out.len() < max && (at as usize) < stable.min(log.len()) {
                if let Entry::Message { key, payload } = &log[at as usize] {
                    out.push((topic.clone(), RawMessage { partition: tp.1, offset: at, key: key.clone(), payload: payload.clone(), timestamp_ms: Some(0) }));
                }
                at += 1;
            }
            tracing::debug!(?tp, from, to = at, "fake: fetched");
            r.positions.insert(tp, at);
        }
        drop(logs);
        Ok(out)
    }
}

impl Source for FakeSource {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn describe(&self) -> String {
        "fake".into()
    }

    fn next(&self, wait: Duration, max: usize) -> BoxFuture<'_, Result<Polled, SourceError>> {
        Box::pin(async move {
            // A real poll yields to the runtime, so that other tasks can run. Before taking:
            // the loop drops a poll that has not finished (cancel safety), and messages taken
            // must be handed over in the same step, as the Kafka consumer's are.
            tokio::task::yield_now().await;
            let got = self.take(max.max(1))?;
            if !got.is_empty() {
                return Ok(Polled::Messages(got));
            }
            tokio::time::sleep(wait).await;
            Ok(Polled::Nothing)
        })
    }

    fn assignment_change(&self, seen: u64) -> Result<Option<AssignmentChange>, String> {
        lock(&self.reader).assignment.change_since(seen)
    }

    fn seek(&self, starts: &[(TopicPartition, Option<i64>)]) -> Result<(), SourceError> {
        let mut logs = lock(&self.broker.0);
        let mut r = lock(&self.reader);
        for (tp, o) in starts {
            tracing::debug!(?tp, ?o, "fake: seek");
            // A consumer fetches only what it is assigned: a seek of a partition revoked in the
            // meantime (a commit's re-fence racing a rebalance) starts no fetch.
            if !r.assignment.partitions.contains_key(tp) {
                continue;
            }
            if o.is_none() {
                logs.start_seeks += 1;
            } else if let Some((etp, _, start)) = logs.expire_at_seek.take_if(|(etp, at, _)| etp == tp && Some(*at) == *o) {
                logs.log_start.insert(etp, start);
            }
            r.positions.insert(tp.clone(), o.unwrap_or_else(|| logs.start(tp)));
            r.sought.insert(tp.clone());
            if o.is_none() {
                r.beginning.insert(tp.clone());
            } else {
                r.beginning.remove(tp);
            }
        }
        Ok(())
    }

    fn cached_watermarks(&self, topic: &str, partition: i32) -> Option<(Option<i64>, i64)> {
        let logs = lock(&self.broker.0);
        let tp = (topic.to_string(), partition);
        logs.logs.contains_key(&tp).then(|| (Some(logs.start(&tp)), logs.end(&tp)))
    }

    fn cached_stable_end(&self, topic: &str, partition: i32) -> Option<i64> {
        let logs = lock(&self.broker.0);
        let tp = (topic.to_string(), partition);
        logs.logs.contains_key(&tp).then(|| logs.stable_end(&tp).min(logs.stale_report.unwrap_or(i64::MAX)))
    }

    /// `read_committed`: ListOffsets gives the last stable offset as the end (on tansu, the
    /// last batch's base + 1).
    fn listed_watermarks(&self, partitions: &[TopicPartition], _timeout: Duration) -> HashMap<TopicPartition, (i64, i64)> {
        let logs = lock(&self.broker.0);
        partitions.iter().filter(|tp| logs.logs.contains_key(*tp) && !logs.unlisted).map(|tp| (tp.clone(), (logs.start(tp), logs.listed_end(tp)))).collect()
    }

    /// A fetch response's end is exact on every broker.
    fn fetched_ends(&self, partitions: &[TopicPartition], _timeout: Duration) -> HashMap<TopicPartition, i64> {
        let logs = lock(&self.broker.0);
        partitions.iter().filter(|tp| logs.logs.contains_key(*tp) && !logs.unlisted).map(|tp| (tp.clone(), logs.stable_end(tp))).collect()
    }

    fn all_partitions(&self, _timeout: Duration) -> Result<Vec<TopicPartition>, SourceError> {
        Ok(self.broker.partitions())
    }

    fn inexact_seeks(&self) -> bool {
        let logs = lock(&self.broker.0);
        logs.fetch != Fetch::Exact || logs.checks
    }

    fn positions(&self) -> Vec<(TopicPartition, i64)> {
        // A position at the log start not yet resolved by a fetch is unknown (librdkafka's
        // OFFSET_INVALID).
        let r = lock(&self.reader);
        r.positions.iter().filter(|(tp, _)| !r.beginning.contains(*tp)).map(|(tp, o)| (tp.clone(), *o)).collect()
    }

    fn direct(&self, starts: &[(TopicPartition, Option<i64>)], generation: u64) -> Result<Option<Box<dyn Source>>, SourceError> {
        if !self.direct_allowed {
            return Ok(None);
        }
        let direct = FakeSource { broker: self.broker.clone(), reader: Arc::new(Mutex::new(Reader::default())), direct_allowed: false };
        lock(&self.broker.0).directs += 1;
        {
            let logs = lock(&self.broker.0);
            let mut r = lock(&direct.reader);
            r.assignment = Assignment { generation, assigned: true, error: None, partitions: starts.iter().map(|(tp, _)| (tp.clone(), PartitionStarts::default())).collect() };
            r.positions = starts.iter().map(|(tp, o)| (tp.clone(), o.unwrap_or_else(|| logs.start(tp)))).collect();
            r.sought = starts.iter().map(|(tp, _)| tp.clone()).collect();
            r.beginning = starts.iter().filter(|(_, o)| o.is_none()).map(|(tp, _)| tp.clone()).collect();
        }
        Ok(Some(Box::new(direct)))
    }
}
