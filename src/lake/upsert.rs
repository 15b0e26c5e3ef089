//! Upsert: Hudi copy-on-write semantics with a global key index.
//!
//! For one batch of one topic: keep the latest record per key ([`precombine`]), find the live
//! files that hold those keys ([`KeyIndex`]), and rewrite only those files: a stored row is
//! replaced (or deleted) when the incoming record's precombine value is not older, and the
//! incoming record is dropped as stale otherwise. New and updated rows are written to the
//! partition of their own date, so an update that changes date moves the row. The removes, the
//! adds and the batch's source offsets commit together as one Delta version.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::ObjectStoreExt;

use arrow::array::{new_null_array, ArrayRef, BooleanArray, Date32Array};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use deltalake::kernel::{Action, Add};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaTable;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use super::commit::{commit_advancing, fence, stored_offset, txn_actions, OffsetKey, OffsetRange, SkippedRange};
use super::index::{i64_values, read_file, KeyIndex, KeyOrder, RowKeys, SortedKeys};
use super::{Lake, LakeError};
use crate::batch::{arrow_schema, group_by_key, resolve, to_record_batch, Provenance, Resolution};
use crate::decode::Record;
use crate::spec::{meta, TopicSpec};
use crate::FastMap;

/// Below this many rows, building and writing stay on one core: threads cost more than they save.
const MIN_PARALLEL_ROWS: usize = 16_384;

/// How often a batch is recomputed after commit conflicts before giving up.
pub const MAX_COMMIT_ATTEMPTS: u32 = 30;

/// What one upsert did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UpsertOutcome {
    /// The committed version (`None` when there was nothing to commit).
    pub version: Option<u64>,
    /// Keys that did not exist before.
    pub inserted: u64,
    /// Stored rows replaced by a newer record.
    pub updated: u64,
    /// Stored rows deleted.
    pub deleted: u64,
    /// Incoming records older than the stored row, dropped.
    pub stale: u64,
    /// Files written.
    pub files_added: u64,
    /// Files replaced.
    pub files_removed: u64,
    /// Untouched rows copied into rewritten files.
    pub rows_rewritten: u64,
    /// Commit attempts (1 without conflicts).
    pub attempts: u32,
}

/// Parquet settings for data files: zstd, with bloom filters on the key columns sized for
/// `rows` distinct keys (parquet's default, when `None`, sizes them for a million: 1 MB a
/// file), and no dictionary for a one-column key (unique in the table, so a dictionary never
/// pays).
pub fn writer_properties(key_cols: &[String], rows: Option<usize>) -> WriterProperties {
    let mut b = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default()));
    for k in key_cols {
        b = b.set_column_bloom_filter_enabled(ColumnPath::from(k.as_str()), true);
        if let Some(n) = rows {
            b = b.set_column_bloom_filter_max_ndv(ColumnPath::from(k.as_str()), n.max(1) as u64);
        }
    }
    if let [k] = key_cols {
        b = b.set_column_dictionary_enabled(ColumnPath::from(k.as_str()), false);
    }
    b.build()
}

/// The order of a one-field key, for pruning files by their key range.
fn single_key_order(spec: &TopicSpec) -> Option<KeyOrder> {
    match spec.key.as_slice() {
        [one] => spec.field(one).and_then(|f| KeyOrder::of(&f.kind)),
        _ => None,
    }
}

/// A topic's Delta table, opened for upserts.
pub struct TopicTable {
    name: String,
    spec: TopicSpec,
    schema: SchemaRef,
    table: DeltaTable,
    index: KeyIndex,
    /// The version this process last committed, with the offsets it stored (by `txn` appId):
    /// while the table is still at that version, they need no log replay to be known.
    committed: Option<(u64, HashMap<String, i64>)>,
}

impl TopicTable {
    /// Open (or create) the table of a topic.
    pub async fn open(lake: &Lake, spec: TopicSpec) -> Result<Self, LakeError> {
        let schema = arrow_schema(&spec);
        let props = [(crate::query::functions::KEY_PROPERTY, spec.key.join(",")), ("lakepipe.precombine", spec.precombine.clone()), ("lakepipe.partition_time", spec.partition_time.clone())];
        let table = lake.open_or_create_with(&spec.name, &schema, &[meta::DATE], &props).await?;
        Ok(TopicTable {
            name: spec.name.clone(),
            index: KeyIndex::new(spec.key.clone(), single_key_order(&spec)),
            committed: None,
            schema,
            table,
            spec,
        })
    }

    /// Files whose keys the index has read, and file reads that key ranges avoided.
    pub fn index_reads(&self) -> (u64, u64) {
        (self.index.files_read, self.index.files_pruned)
    }

    /// The table name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next offset stored for a partition, read from the latest version.
    pub async fn stored_offset(&mut self, key: &OffsetKey) -> Result<Option<i64>, LakeError> {
        self.table.update_state().await.map_err(|e| LakeError::delta(&self.name, e))?;
        stored_offset(&self.table, &self.name, key).await
    }

    /// Upsert `records` (in stream order) and move `ranges` to their end offsets, atomically.
    pub async fn upsert(&mut self, records: &[Record], ranges: &[OffsetRange], prov: &Provenance<'_>) -> Result<UpsertOutcome, LakeError> {
        self.upsert_skipping(records, ranges, &[], prov).await
    }

    /// [`TopicTable::upsert`], recording in the commit the offsets within `ranges` that were
    /// deleted from the broker before they were read (see [`SkippedRange`]).
    pub async fn upsert_skipping(&mut self, records: &[Record], ranges: &[OffsetRange], skipped: &[SkippedRange], prov: &Provenance<'_>) -> Result<UpsertOutcome, LakeError> {
        if records.is_empty() && ranges.is_empty() {
            return Ok(UpsertOutcome::default());
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_upsert(records, ranges, skipped, prov).await {
                Ok(mut out) => {
                    out.attempts = attempt;
                    return Ok(out);
                }
                Err(LakeError::Conflict { .. }) if attempt < MAX_COMMIT_ATTEMPTS => {
                    let jitter = rand::random::<u64>() % 100;
                    tracing::debug!(table = %self.name, attempt, "commit conflict; recomputing the batch");
                    tokio::time::sleep(Duration::from_millis(20 * attempt as u64 + jitter)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_upsert(&mut self, records: &[Record], ranges: &[OffsetRange], skipped: &[SkippedRange], prov: &Provenance<'_>) -> Result<UpsertOutcome, LakeError> {
        let name = self.name.clone();
        self.refresh().await?;
        self.fence(ranges).await?;
        let groups = group_by_key(records);
        let keys = SortedKeys::new(groups.iter().map(|g| records[g[0]].key.as_str()));
        let (live, holder) = self.index.locate(&self.table, &name, &keys).await?;

        // Which keys have a stored row, and in which file.
        // A FastMap: every stored row of a rewritten file is looked up here.
        let mut by_file: HashMap<Arc<str>, FastMap<&str, usize>> = HashMap::new();
        for (g, group) in groups.iter().enumerate() {
            let key = records[group[0]].key.as_str();
            if let Some(path) = holder.get(key) {
                by_file.entry(path.clone()).or_default().insert(key, g);
            }
        }

        // Read the files to rewrite, one per core at a time, each filtered as soon as it is read.
        let store = self.table.object_store();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // (Spawned lazily: `buffer_unordered` pulls the next read only when one finishes.)
        // Owned paths: a closure over borrowed ones makes this future not provably `Send`.
        let paths: Vec<Arc<str>> = by_file.keys().cloned().collect();
        let mut contents = futures::stream::iter(paths)
            .map(|path| {
                let file = &live[&path];
                let (store, object, size) = (store.clone(), file.object_store_path(), file.size().max(0) as u64);
                let day = file_day(&file.partition_values_map());
                tokio::spawn(async move { (path, day, read_file(store, object, size, None).await) })
            })
            .buffer_unordered(cores);

        let mut decided: Vec<Option<(Resolution, bool)>> = vec![None; groups.len()];
        let mut removes: Vec<Action> = Vec::new();
        let mut remainders: Vec<(i32, RecordBatch)> = Vec::new();
        let mut out = UpsertOutcome::default();
        let pre_col = self.spec.precombine.clone();
        while let Some(read) = contents.next().await {
            let (path, day, batches) = read.map_err(|e| LakeError::data(&name, e))?;
            let wanted = &by_file[&path];
            let day = day.ok_or_else(|| LakeError::data(&name, format!("file {path} has no date partition")))?;
            let batches = batches.map_err(|e| LakeError::data(&name, e))?;
            let mut dropped_any = false;
            let mut kept: Vec<RecordBatch> = Vec::new();
            for b in batches {
                let keys = RowKeys::new(&b, &self.spec.key).map_err(|e| LakeError::data(&name, e))?;
                let pres = i64_values(&b, &pre_col).map_err(|e| LakeError::data(&name, e))?;
                let mut mask = Vec::with_capacity(b.num_rows());
                for (row, pre) in pres.iter().enumerate() {
                    let keep = match wanted.get(keys.get(row).as_ref()) {
                        None => true,
                        Some(&g) => {
                            let (res, stale) = resolve(records, &groups[g], Some(*pre));
                            out.stale += stale;
                            decided[g] = Some((res, true));
                            res == Resolution::Unchanged
                        }
                    };
                    dropped_any |= !keep;
                    mask.push(keep);
                }
                kept.push(filter_record_batch(&b, &BooleanArray::from(mask)).map_err(|e| LakeError::data(&name, e))?);
            }
            if dropped_any {
                removes.push(Action::Remove(live[&path].remove_action(true)));
                for b in kept {
                    if b.num_rows() > 0 {
                        out.rows_rewritten += b.num_rows() as u64;
                        remainders.push((day, conform(&b, &self.schema, day).map_err(|e| LakeError::data(&name, e))?));
                    }
                }
            }
        }

        let mut rows: Vec<&Record> = Vec::new();
        for (g, group) in groups.iter().enumerate() {
            let (res, stored) = match decided[g] {
                Some(d) => d,
                None => (resolve(records, group, None).0, false),
            };
            match res {
                Resolution::Unchanged => {}
                Resolution::Delete => {
                    out.deleted += 1;
                }
                Resolution::Upsert(i) => {
                    if stored {
                        out.updated += 1;
                    } else {
                        out.inserted += 1;
                    }
                    rows.push(&records[i]);
                }
            }
        }

        // Everything to write, by day: new and updated rows, then the rows kept from rewritten files.
        let mut by_day: BTreeMap<i32, Vec<RecordBatch>> = BTreeMap::new();
        let mut new_by_day: BTreeMap<i32, Vec<&Record>> = BTreeMap::new();
        for r in &rows {
            new_by_day.entry(r.date).or_default().push(r);
        }
        for (day, batch) in self.build_batches(&new_by_day, prov).map_err(|e| LakeError::data(&name, e))? {
            by_day.entry(day).or_default().push(batch);
        }
        for (day, b) in remainders {
            by_day.entry(day).or_default().push(b);
        }
        let adds = self.write_days(by_day).await?;
        out.files_added = adds.len() as u64;
        out.files_removed = removes.len() as u64;

        let operation = if removes.is_empty() {
            DeltaOperation::Write { mode: SaveMode::Append, partition_by: Some(vec![meta::DATE.to_string()]), predicate: None }
        } else {
            DeltaOperation::Merge {
                predicate: None,
                merge_predicate: Some(format!("key ({}) matches, precombine `{}`", self.spec.key.join(", "), self.spec.precombine)),
                matched_predicates: vec![],
                not_matched_predicates: vec![],
                not_matched_by_source_predicates: vec![],
            }
        };
        let mut actions = removes;
        actions.extend(adds.iter().cloned().map(Action::Add));
        actions.extend(txn_actions(ranges));
        let mut lakepipe = serde_json::json!({
            "inserted": out.inserted, "updated": out.updated, "deleted": out.deleted, "stale": out.stale,
            "offsets": ranges.iter().map(|r| serde_json::json!({"topic": r.key.topic, "partition": r.key.partition, "source": r.key.source, "group": r.key.group, "start": r.start, "end": r.end})).collect::<Vec<_>>(),
        });
        if !skipped.is_empty() {
            lakepipe["skipped"] = skipped.iter().map(SkippedRange::to_json).collect();
        }
        let metadata = HashMap::from([("lakepipe".to_string(), lakepipe)]);
        match commit_advancing(&mut self.table, &name, actions, operation, metadata).await {
            Ok(version) => {
                out.version = Some(version);
                self.committed = Some((version, ranges.iter().map(|r| (r.key.app_id(), r.end)).collect()));
                Ok(out)
            }
            // The files of a commit that reported failure are left for vacuum, never deleted:
            // the log entry may exist even when the call failed (a lost reply, or a failed
            // post-commit checkpoint), and then those files are live.
            Err(e) => Err(e),
        }
    }

    /// Load the commits of other writers. After this process's own commit the state is already
    /// current (see `commit_advancing`): one existence check of the next log entry replaces the
    /// log listing and replay. A commit that lands after the check makes ours conflict.
    async fn refresh(&mut self) -> Result<(), LakeError> {
        let ours = self.committed.as_ref().map(|(v, _)| *v);
        if let Some(v) = self.table.version().filter(|v| Some(*v) == ours) {
            let next = deltalake::logstore::commit_uri_from_version(Some(v + 1));
            if let Err(deltalake::ObjectStoreError::NotFound { .. }) = self.table.object_store().head(&next).await {
                return Ok(());
            }
        }
        self.table.update_state().await.map_err(|e| LakeError::delta(&self.name, e))
    }

    /// The offset fence (see [`fence`]), without replaying the log for offsets this process
    /// committed in the version the table is still at.
    async fn fence(&self, ranges: &[OffsetRange]) -> Result<(), LakeError> {
        let known = self.committed.as_ref().filter(|(v, _)| self.table.version() == Some(*v)).map(|(_, m)| m);
        let unknown: Vec<OffsetRange> =
            ranges.iter().filter(|r| known.and_then(|m| m.get(&r.key.app_id())).is_none_or(|end| Some(*end) != r.start)).cloned().collect();
        fence(&self.table, &self.name, &unknown).await
    }

    /// The Arrow batches of the new rows, by day, built on every core when there are many.
    fn build_batches(&self, by_day: &BTreeMap<i32, Vec<&Record>>, prov: &Provenance<'_>) -> Result<Vec<(i32, RecordBatch)>, arrow::error::ArrowError> {
        let total: usize = by_day.values().map(Vec::len).sum();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let piece = total.div_ceil(cores).max(MIN_PARALLEL_ROWS);
        let pieces: Vec<(i32, &[&Record])> = by_day.iter().flat_map(|(day, recs)| recs.chunks(piece).map(move |c| (*day, c))).collect();
        let build = |(day, recs): &(i32, &[&Record])| to_record_batch(&self.spec, &self.schema, recs.iter().copied(), prov).map(|b| (*day, b));
        if pieces.len() < 2 {
            return pieces.iter().map(build).collect();
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = pieces.iter().map(|p| scope.spawn(move || build(p))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        })
    }

    /// Write the batches of each day as new data files over one writer per core, so that
    /// encoding and compression run in parallel. Days stay whole unless one day alone is more
    /// than a writer's share (as when a batch covers one or two days): then it is split, and
    /// that day gets one file per writer. Returns the `add` actions.
    async fn write_days(&self, by_day: BTreeMap<i32, Vec<RecordBatch>>) -> Result<Vec<Add>, LakeError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shares = writer_shares(by_day, cores);
        let mut tasks = Vec::new();
        for batches in shares {
            let name = self.name.clone();
            let rows = batches.iter().map(RecordBatch::num_rows).sum();
            let mut writer = RecordBatchWriter::for_table(&self.table)
                .map_err(|e| LakeError::delta(&name, e))?
                .with_writer_properties(writer_properties(&self.spec.key, Some(rows)));
            tasks.push(tokio::spawn(async move {
                for b in batches {
                    writer.write(b).await.map_err(|e| LakeError::delta(&name, e))?;
                }
                writer.flush().await.map_err(|e| LakeError::delta(&name, e))
            }));
        }
        let mut adds = Vec::new();
        for done in futures::future::try_join_all(tasks).await.map_err(|e| LakeError::data(&self.name, e))? {
            adds.extend(done?);
        }
        Ok(adds)
    }
}

/// Spread the batches of each day over at most `cores` writers, by rows: whole days, largest
/// first, to the least loaded writer; a day larger than a writer's share is cut into shares.
fn writer_shares(by_day: BTreeMap<i32, Vec<RecordBatch>>, cores: usize) -> Vec<Vec<RecordBatch>> {
    let total: usize = by_day.values().flatten().map(RecordBatch::num_rows).sum();
    let share = total.div_ceil(cores).max(MIN_PARALLEL_ROWS);
    let mut units: Vec<(usize, Vec<RecordBatch>)> = Vec::new();
    for batches in by_day.into_values() {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows <= share {
            units.push((rows, batches));
            continue;
        }
        let mut unit = (0, Vec::new());
        for b in batches {
            let mut at = 0;
            while at < b.num_rows() {
                let take = (share - unit.0).min(b.num_rows() - at);
                unit.1.push(b.slice(at, take));
                unit.0 += take;
                at += take;
                if unit.0 == share {
                    units.push(std::mem::take(&mut unit));
                }
            }
        }
        if unit.0 > 0 {
            units.push(unit);
        }
    }
    units.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut shares: Vec<(usize, Vec<RecordBatch>)> = (0..cores.min(units.len()).max(1)).map(|_| (0, Vec::new())).collect();
    for (n, batches) in units {
        // The largest unit left goes to the least loaded writer.
        if let Some(share) = shares.iter_mut().min_by_key(|(load, _)| *load) {
            share.0 += n;
            share.1.extend(batches);
        }
    }
    shares.into_iter().filter(|(n, _)| *n > 0).map(|(_, b)| b).collect()
}

/// The `date` partition of a file as days since the epoch.
pub(crate) fn file_day(values: &HashMap<String, Option<String>>) -> Option<i32> {
    let text = values.get(meta::DATE)?.as_ref()?;
    let d = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    Some((d - epoch).num_days() as i32)
}

/// Shape rows read from a data file (which lacks the partition column) as the table schema.
pub(crate) fn conform(batch: &RecordBatch, schema: &SchemaRef, day: i32) -> Result<RecordBatch, arrow::error::ArrowError> {
    let n = batch.num_rows();
    let cols: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| {
            if f.name() == meta::DATE {
                return Ok(Arc::new(Date32Array::from(vec![day; n])) as ArrayRef);
            }
            match batch.column_by_name(f.name()) {
                Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
                Some(c) => cast(c, f.data_type()),
                None => Ok(new_null_array(f.data_type(), n)),
            }
        })
        .collect::<Result<_, _>>()?;
    RecordBatch::try_new(schema.clone(), cols)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Decoder;
    use crate::spec::builtin_specs;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn parses_partition_dates() {
        let m = HashMap::from([(meta::DATE.to_string(), Some("1970-01-03".to_string()))]);
        assert_eq!(file_day(&m), Some(2));
        assert_eq!(file_day(&HashMap::new()), None);
    }

    fn rec(d: &Decoder, key: &str, ts_ms: i64, status: &str, deleted: bool, offset: i64) -> Record {
        let body = if deleted {
            serde_json::json!({"transaction_id": key, "timestamp": ts_ms, "_deleted": true})
        } else {
            serde_json::json!({"transaction_id": key, "user_id": "u", "amount": 1, "currency": "EUR", "status": status, "timestamp": ts_ms})
        };
        d.decode(None, Some(body.to_string().as_bytes()), 0, offset).unwrap()
    }

    fn range(start: Option<i64>, end: i64) -> Vec<OffsetRange> {
        vec![OffsetRange { key: OffsetKey { source: "kafka".into(), group: "g".into(), topic: "transactions".into(), partition: 0 }, start, end }]
    }

    async fn contents(lake: &Lake) -> BTreeMap<String, (String, String)> {
        let (_, batches) = crate::query::run(lake, "SELECT transaction_id, status, CAST(date AS VARCHAR) AS d FROM transactions").await.unwrap();
        let mut out = BTreeMap::new();
        for b in batches {
            let ids = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
            let st = arrow::compute::cast(b.column(1), &arrow::datatypes::DataType::Utf8).unwrap();
            let d = arrow::compute::cast(b.column(2), &arrow::datatypes::DataType::Utf8).unwrap();
            let (ids, st, d) = (arrow::array::as_string_array(&ids), arrow::array::as_string_array(&st), arrow::array::as_string_array(&d));
            for i in 0..b.num_rows() {
                assert!(out.insert(ids.value(i).to_string(), (st.value(i).to_string(), d.value(i).to_string())).is_none(), "duplicate key");
            }
        }
        out
    }

    const DAY: i64 = 86_400_000;

    #[tokio::test(flavor = "multi_thread")]
    async fn second_writer_sees_first_writers_files_and_fences() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::parse(dir.path().to_str().unwrap()).unwrap();
        let spec = builtin_specs()["transactions"].clone();
        let d = Decoder::new(spec.clone(), 1 << 20).unwrap();
        let mut a = TopicTable::open(&lake, spec.clone()).await.unwrap();
        let mut b = TopicTable::open(&lake, spec.clone()).await.unwrap();
        let prov = Provenance::now("kafka", "transactions");
        let out = a.upsert(&[rec(&d, "k1", DAY, "pending", false, 0), rec(&d, "k2", DAY, "pending", false, 1)], &range(None, 2), &prov).await.unwrap();
        assert_eq!((out.inserted, out.files_added), (2, 1));
        // B's batch started from the same (empty) offset: it must be fenced off.
        let err = b.upsert(&[rec(&d, "k1", 2 * DAY, "failed", false, 0)], &range(None, 1), &prov).await.unwrap_err();
        assert!(matches!(err, LakeError::Fenced { found: Some(2), .. }), "{err}");
        // From the right offset, B updates A's row (moving it to another day) and deletes k2.
        let out = b
            .upsert(&[rec(&d, "k1", 2 * DAY + 5, "completed", false, 2), rec(&d, "k2", DAY + 1, "", true, 3)], &range(Some(2), 4), &prov)
            .await
            .unwrap();
        assert_eq!((out.updated, out.deleted, out.files_removed), (1, 1, 1));
        // A's index is stale; it must still find k1 in B's file and see it is newer.
        let out = a.upsert(&[rec(&d, "k1", 2 * DAY, "refunded", false, 4)], &range(Some(4), 5), &prov).await.unwrap();
        assert_eq!(out.stale, 1);
        let got = contents(&lake).await;
        assert_eq!(got, BTreeMap::from([("k1".to_string(), ("completed".to_string(), "1970-01-03".to_string()))]));
        assert_eq!(a.stored_offset(&range(None, 0)[0].key).await.unwrap(), Some(5));
    }

    /// New tables store the key as not null; a table created while it was nullable keeps its
    /// schema and goes on taking upserts and deletes (the writer takes a not-null column into a
    /// nullable one).
    #[tokio::test(flavor = "multi_thread")]
    async fn key_columns_are_not_null_and_older_nullable_tables_still_take_upserts() {
        let spec = builtin_specs()["transactions"].clone();
        let d = Decoder::new(spec.clone(), 1 << 20).unwrap();
        let prov = Provenance::now("kafka", "transactions");
        let nullable = |lake: &Lake| {
            let s = arrow_schema(&spec);
            let fields: Vec<_> = s.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
            let s = Arc::new(arrow::datatypes::Schema::new(fields));
            let lake = lake.clone();
            async move { lake.open_or_create("transactions", &s, &[meta::DATE]).await.unwrap() }
        };
        for old in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let lake = Lake::parse(dir.path().to_str().unwrap()).unwrap();
            if old {
                nullable(&lake).await;
            }
            let mut t = TopicTable::open(&lake, spec.clone()).await.unwrap();
            t.upsert(&[rec(&d, "k1", DAY, "pending", false, 0), rec(&d, "k2", DAY, "pending", false, 1)], &range(None, 2), &prov).await.unwrap();
            let out = t.upsert(&[rec(&d, "k1", DAY, "completed", false, 2), rec(&d, "k2", DAY, "", true, 3)], &range(Some(2), 4), &prov).await.unwrap();
            assert_eq!((out.updated, out.deleted), (1, 1), "old table: {old}");
            assert_eq!(contents(&lake).await, BTreeMap::from([("k1".to_string(), ("completed".to_string(), "1970-01-02".to_string()))]));
            let table = lake.open_existing("transactions").await.unwrap();
            let stored = table.snapshot().unwrap().schema();
            for f in stored.fields() {
                let key = spec.key.contains(f.name());
                assert_eq!(f.is_nullable(), old || !key, "old table: {old}, column {}", f.name());
            }
        }
    }

    /// Batches of (day, value) rows, and the values each day must end with.
    fn day_batches(days: &[(i32, Vec<usize>)]) -> (BTreeMap<i32, Vec<RecordBatch>>, BTreeMap<i32, Vec<i64>>) {
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("day", arrow::datatypes::DataType::Int32, false),
            arrow::datatypes::Field::new("v", arrow::datatypes::DataType::Int64, false),
        ]));
        let (mut by_day, mut want) = (BTreeMap::<i32, Vec<RecordBatch>>::new(), BTreeMap::<i32, Vec<i64>>::new());
        let mut next = 0i64;
        for (day, sizes) in days {
            for &n in sizes {
                let vals: Vec<i64> = (next..next + n as i64).collect();
                next += n as i64;
                let cols: Vec<ArrayRef> = vec![Arc::new(arrow::array::Int32Array::from(vec![*day; n])), Arc::new(arrow::array::Int64Array::from(vals.clone()))];
                by_day.entry(*day).or_default().push(RecordBatch::try_new(schema.clone(), cols).unwrap());
                want.entry(*day).or_default().extend(vals);
            }
        }
        (by_day, want)
    }

    fn rows_by_day(shares: &[Vec<RecordBatch>]) -> BTreeMap<i32, Vec<i64>> {
        let mut got = BTreeMap::<i32, Vec<i64>>::new();
        for b in shares.iter().flatten() {
            let days = arrow::array::as_primitive_array::<arrow::datatypes::Int32Type>(b.column(0));
            let vals = arrow::array::as_primitive_array::<arrow::datatypes::Int64Type>(b.column(1));
            for i in 0..b.num_rows() {
                got.entry(days.value(i)).or_default().push(vals.value(i));
            }
        }
        got.values_mut().for_each(|v| v.sort_unstable());
        got
    }

    #[test]
    fn one_large_day_is_split_over_every_writer() {
        let (by_day, want) = day_batches(&[(3, vec![60_000, 40_000])]);
        let shares = writer_shares(by_day, 2);
        assert_eq!(shares.len(), 2);
        let rows: Vec<usize> = shares.iter().map(|s| s.iter().map(RecordBatch::num_rows).sum()).collect();
        assert_eq!(rows, vec![50_000, 50_000]);
        assert_eq!(rows_by_day(&shares), want);
        // A small day is never cut: it would only make more files.
        let (by_day, _) = day_batches(&[(1, vec![100, 200])]);
        assert_eq!(writer_shares(by_day, 2).len(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]
        /// However days are spread and cut over writers, every row of every day is written
        /// exactly once, by at most one writer per core.
        #[test]
        fn writer_shares_keep_every_row_once(
            days in proptest::collection::vec((0i32..30, proptest::collection::vec(1usize..30_000, 1..4)), 1..6),
            cores in 1usize..5,
        ) {
            let (by_day, want) = day_batches(&days);
            let shares = writer_shares(by_day, cores);
            prop_assert!(!shares.is_empty() && shares.len() <= cores);
            prop_assert!(shares.iter().all(|s| s.iter().map(RecordBatch::num_rows).sum::<usize>() > 0));
            prop_assert_eq!(rows_by_day(&shares), want);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 6, .. ProptestConfig::default() })]
        /// Random batches of inserts, updates, late records and deletes over few keys: the
        /// table always equals a sequential model of the rules.
        #[test]
        fn upserts_match_sequential_model(batches in proptest::collection::vec(
            proptest::collection::vec((0u8..6, 0i64..6, 0u8..10), 1..12), 1..5)) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let dir = tempfile::tempdir().unwrap();
                let lake = Lake::parse(dir.path().to_str().unwrap()).unwrap();
                let spec = builtin_specs()["transactions"].clone();
                let d = Decoder::new(spec.clone(), 1 << 20).unwrap();
                let mut t = TopicTable::open(&lake, spec).await.unwrap();
                let prov = Provenance::now("kafka", "transactions");
                let mut model: BTreeMap<String, (i64, String, i64)> = BTreeMap::new();
                let mut offset = 0i64;
                for batch in &batches {
                    let start = offset;
                    let mut recs = Vec::new();
                    for (k, day, op) in batch {
                        let key = format!("k{k}");
                        // Times within a day vary with the offset so ties and moves both occur.
                        let ts = day * DAY + (offset % 3) * 1000;
                        let deleted = *op == 0;
                        let status = if op % 2 == 0 { "completed" } else { "pending" };
                        recs.push(rec(&d, &key, ts, status, deleted, offset));
                        offset += 1;
                    }
                    // Model: every record in stream order against the current row.
                    for r in &recs {
                        let status = match &r.values[4] { crate::decode::Value::Str(s) => s.clone(), _ => String::new() };
                        let newer = model.get(&r.key).is_none_or(|(sts, _, _)| r.precombine >= *sts);
                        if newer {
                            if r.deleted { model.remove(&r.key); } else { model.insert(r.key.clone(), (r.precombine, status, r.precombine.div_euclid(DAY * 1000))); }
                        }
                    }
                    t.upsert(&recs, &range(if start == 0 { None } else { Some(start) }, offset), &prov).await.unwrap();
                    let got = contents(&lake).await;
                    let want: BTreeMap<String, (String, String)> = model
                        .iter()
                        .map(|(k, (_, s, day))| (k.clone(), (s.clone(), (chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Days::new(*day as u64)).to_string())))
                        .collect();
                    assert_eq!(got, want);
                }
            });
        }
    }

    /// A topic keyed on one field of `kind`, ordered by `seq`, partitioned by `ts`.
    fn keyed_on(kind: crate::spec::FieldType) -> TopicSpec {
        use crate::spec::{FieldSpec, FieldType};
        let field = |name: &str, kind: FieldType| FieldSpec { name: name.into(), required: true, kind };
        let spec = TopicSpec {
            name: "keyed".into(),
            key: vec!["k".into()],
            precombine: "seq".into(),
            partition_time: "ts".into(),
            fields: vec![field("k", kind), field("seq", FieldType::Long { min: None, max: None }), field("ts", FieldType::Timestamp)],
        };
        spec.check().unwrap();
        spec
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 8, .. ProptestConfig::default() })]
        /// For every type a key may have (string, long, timestamp), rounds of writes of the same
        /// keys with a growing `seq` keep exactly one row per key, at its latest round: files
        /// written earlier must be found through their statistics, whatever form those take
        /// (timestamps are ISO text there, truncated to milliseconds, but microseconds in keys).
        #[test]
        fn every_key_type_upserts_in_place(
            kind in 0usize..3,
            keys in proptest::collection::btree_set(-5_000_000i64..5_000_000, 1..12),
            rounds in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 12), 2..4),
        ) {
            use crate::spec::FieldType;
            let (field_kind, literal): (FieldType, fn(i64) -> serde_json::Value) = match kind {
                0 => (FieldType::String { allowed: None, pattern: None }, |v| serde_json::json!(format!("key-{v}"))),
                1 => (FieldType::Long { min: None, max: None }, |v| serde_json::json!(v)),
                // Microsecond timestamps a few seconds apart: several share a millisecond.
                _ => (FieldType::Timestamp, |v| {
                    let t = chrono::DateTime::from_timestamp_micros(1_767_261_600_000_000 + v).unwrap();
                    serde_json::json!(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                }),
            };
            let spec = keyed_on(field_kind);
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let dir = tempfile::tempdir().unwrap();
                let lake = Lake::parse(dir.path().to_str().unwrap()).unwrap();
                let d = Decoder::new(spec.clone(), 1 << 20).unwrap();
                let mut t = TopicTable::open(&lake, spec).await.unwrap();
                let prov = Provenance::now("kafka", "keyed");
                let keys: Vec<i64> = keys.into_iter().collect();
                let mut model: BTreeMap<String, i64> = BTreeMap::new();
                let mut offset = 0i64;
                for (round, picks) in rounds.iter().enumerate() {
                    let start = offset;
                    let mut recs = Vec::new();
                    // Round 0 writes every key; later rounds a random subset.
                    for (i, k) in keys.iter().enumerate() {
                        if round > 0 && !picks[i] {
                            continue;
                        }
                        let body = serde_json::json!({"k": literal(*k), "seq": round, "ts": 1_767_261_600_000i64});
                        let r = d.decode(None, Some(body.to_string().as_bytes()), 0, offset).unwrap();
                        model.insert(r.key.clone(), round as i64);
                        recs.push(r);
                        offset += 1;
                    }
                    if recs.is_empty() {
                        continue;
                    }
                    t.upsert(&recs, &range(if start == 0 { None } else { Some(start) }, offset), &prov).await.unwrap();
                }
                let (_, batches) = crate::query::run(&lake, "SELECT k, seq FROM keyed").await.unwrap();
                let mut got: BTreeMap<String, i64> = BTreeMap::new();
                for b in &batches {
                    let keys = RowKeys::new(b, &["k".to_string()]).unwrap();
                    let seqs = i64_values(b, "seq").unwrap();
                    for (row, seq) in seqs.into_iter().enumerate() {
                        assert!(got.insert(keys.get(row).into_owned(), seq).is_none(), "duplicate key {}", keys.get(row));
                    }
                }
                assert_eq!(got, model);
            });
        }
    }
}
