//! The lake as the ingest loop sees it: the [`Tables`] trait (stored offsets, the dead-letter
//! commit, each topic's upsert) and [`DeltaTables`], its Delta implementation. The loop's own
//! tests drive it with an in-memory one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;

use super::commit::{stored_offset, OffsetKey, OffsetRange, SkippedRange};
use super::dead_letters::{DeadLetter, DeadLetterTable, TABLE as DEAD_LETTERS};
use super::upsert::{TopicTable, UpsertOutcome};
use super::{Lake, LakeError};
use crate::decode::Record;
use crate::enrich::Provenance;
use crate::source::{PartitionStarts, StartLoader, TopicPartition};
use crate::spec::TopicSpec;

/// One topic's share of a batch: its valid records in stream order, and the offset ranges
/// of its partitions that the commit moves.
pub struct TopicBatch<'a> {
    /// The topic (and its table).
    pub topic: &'a str,
    /// Valid records, in stream order.
    pub records: &'a [Record],
    /// Each partition's range: the stored offset the commit expects, and its new end.
    pub ranges: &'a [OffsetRange],
    /// Offsets within `ranges` deleted from the broker before they were read
    /// (`on_data_loss = "skip"`), recorded in the commit.
    pub skipped: &'a [SkippedRange],
}

/// How one topic's commit ended.
pub struct TableResult {
    /// The topic.
    pub topic: String,
    /// Committed (with the conflicts it retried), fenced by another writer, or failed.
    pub result: Result<UpsertOutcome, LakeError>,
    /// How long the commit took.
    pub seconds: f64,
}

/// What the ingest loop needs from the lake. Each commit carries the offsets it covers and is
/// fenced: it fails with [`LakeError::Fenced`] when a range's start is not the offset stored
/// in the table (another writer moved it), and then changes nothing.
pub trait Tables: Send {
    /// Each partition's stored offsets, read fresh (another writer may have moved them); the
    /// loader is shared with sources that assign partitions themselves.
    fn starts(&self) -> Arc<dyn StartLoader>;

    /// Append `letters` to `dead_letters` and move `ranges` there, in one commit.
    fn append_dead_letters<'a>(&'a mut self, letters: &'a [DeadLetter], ranges: &'a [OffsetRange], source_name: &'a str) -> BoxFuture<'a, Result<(), LakeError>>;

    /// Upsert each topic's batch and move its ranges, one commit per table, concurrently; one
    /// result per batch given. Each row's `_source` is `source_name`, the source the ingest
    /// reads (`kafka` or `iggy` unless named).
    fn upsert<'a>(&'a mut self, work: Vec<TopicBatch<'a>>, source_name: &'a str) -> BoxFuture<'a, Vec<TableResult>>;
}

/// Reads stored start offsets from the lake (fresh table loads, as another writer may have
/// moved them).
pub struct LakeStarts {
    lake: Lake,
    source: String,
    group: String,
}

impl LakeStarts {
    /// The offsets of `source` and consumer `group` in `lake`.
    pub fn new(lake: Lake, source: &str, group: &str) -> Self {
        LakeStarts { lake, source: source.to_string(), group: group.to_string() }
    }
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
                    starts.data = stored_offset(t, topic, &key).await.map_err(|e| e.to_string())?;
                }
                if let Some(d) = &dead {
                    starts.dead = stored_offset(d, DEAD_LETTERS, &key).await.map_err(|e| e.to_string())?;
                }
                out.insert((topic.clone(), *partition), starts);
            }
            Ok(out)
        })
    }
}

/// The Delta tables of the selected topics and `dead_letters`.
pub struct DeltaTables {
    topics: BTreeMap<String, TopicTable>,
    dead: DeadLetterTable,
    starts: Arc<LakeStarts>,
}

impl DeltaTables {
    /// Open (or create) the tables of `specs` and `dead_letters`; `starts` reads the offsets.
    pub async fn open(lake: &Lake, specs: &[TopicSpec], starts: Arc<LakeStarts>) -> Result<Self, LakeError> {
        let mut topics = BTreeMap::new();
        for spec in specs {
            topics.insert(spec.name.clone(), TopicTable::open(lake, spec.clone()).await?);
        }
        let dead = DeadLetterTable::open(lake).await?;
        Ok(DeltaTables { topics, dead, starts })
    }
}

impl Tables for DeltaTables {
    fn starts(&self) -> Arc<dyn StartLoader> {
        self.starts.clone()
    }

    fn append_dead_letters<'a>(&'a mut self, letters: &'a [DeadLetter], ranges: &'a [OffsetRange], source_name: &'a str) -> BoxFuture<'a, Result<(), LakeError>> {
        Box::pin(async move { self.dead.append(letters, ranges, source_name).await.map(|_| ()) })
    }

    fn upsert<'a>(&'a mut self, work: Vec<TopicBatch<'a>>, source_name: &'a str) -> BoxFuture<'a, Vec<TableResult>> {
        let mut work: HashMap<&str, TopicBatch<'a>> = work.into_iter().map(|b| (b.topic, b)).collect();
        let mut unknown: Vec<TableResult> = Vec::new();
        let mut futures = Vec::new();
        for (name, table) in self.topics.iter_mut() {
            if let Some(batch) = work.remove(name.as_str()) {
                futures.push(upsert_one(table, batch, source_name));
            }
        }
        for (topic, _) in work {
            let result = Err(LakeError::data(topic, "no table was opened for this topic (a bug in lakepipe)"));
            unknown.push(TableResult { topic: topic.to_string(), result, seconds: 0.0 });
        }
        Box::pin(async move {
            let mut out = futures::future::join_all(futures).await;
            out.extend(unknown);
            out
        })
    }
}

/// One topic's commit, timed.
async fn upsert_one<'a>(table: &'a mut TopicTable, batch: TopicBatch<'a>, source_name: &'a str) -> TableResult {
    let prov = Provenance::now(source_name, batch.topic);
    let t0 = Instant::now();
    let result = table.upsert_skipping(batch.records, batch.ranges, batch.skipped, &prov).await;
    TableResult { topic: batch.topic.to_string(), result, seconds: t0.elapsed().as_secs_f64() }
}
