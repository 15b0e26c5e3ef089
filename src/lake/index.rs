//! Finding the live files that hold a batch's keys: Hudi's global index, done with statistics.
//!
//! Every Delta `add` carries the minimum and maximum of each column, so the range of keys a
//! file may hold is known without opening it. For a batch, only the files whose key range
//! covers one of the batch's keys are probed, and a probe reads just the key column. Appends
//! of new keys (beyond every file's range) therefore read nothing, and updates read the few
//! files their keys fall in, whatever the size of the table. Nothing is cached but the ranges,
//! so memory does not grow with the table and a cold start costs what a warm batch does; the
//! probe always runs against the snapshot being committed on, so other writers' files are
//! never missed. Keys spread uniformly (UUIDs) defeat range pruning: then every key column is
//! read for every batch, as with Hudi's simple index.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use deltalake::kernel::LogicalFileView;
use deltalake::{DeltaTable, ObjectStore, Path};
use futures::{StreamExt, TryStreamExt};
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};

use super::LakeError;
use crate::decode::KEY_SEPARATOR;
use crate::spec::FieldType;
use crate::{FastMap, FastSet};

/// Read a Parquet file of the table, optionally only some columns.
// `ParquetObjectReader` is deprecated in parquet 59 but is what deltalake 1.1 itself uses.
#[allow(deprecated)]
pub async fn read_file(
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
    columns: Option<&[String]>,
) -> Result<Vec<RecordBatch>, parquet::errors::ParquetError> {
    let reader = ParquetObjectReader::new(store, path).with_file_size(size);
    let mut builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
    if let Some(cols) = columns {
        let schema = builder.schema().clone();
        let idx: Vec<usize> = cols.iter().filter_map(|c| schema.index_of(c).ok()).collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), idx);
        builder = builder.with_projection(mask);
    }
    builder.build()?.try_collect().await
}

/// The keys of a batch's rows, borrowed from a single string key column when possible.
pub enum RowKeys {
    /// One string key column.
    Str(StringArray),
    /// Several columns (or an integer one), encoded per row.
    Parts(Vec<ArrayRef>),
}

impl RowKeys {
    /// The key columns of `batch`.
    pub fn new(batch: &RecordBatch, key_cols: &[String]) -> Result<Self, String> {
        let cols: Vec<ArrayRef> = key_cols
            .iter()
            .map(|c| {
                let col = batch.column_by_name(c).ok_or_else(|| format!("key column `{c}` missing from file"))?;
                let target = match col.data_type() {
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
                    _ => DataType::Int64,
                };
                cast(col, &target).map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        if let [one] = cols.as_slice() {
            if let Some(s) = one.as_any().downcast_ref::<StringArray>() {
                return Ok(RowKeys::Str(s.clone()));
            }
        }
        Ok(RowKeys::Parts(cols))
    }

    /// The key of `row`.
    pub fn get(&self, row: usize) -> Cow<'_, str> {
        match self {
            RowKeys::Str(s) => Cow::Borrowed(s.value(row)),
            RowKeys::Parts(cols) => {
                let mut key = String::new();
                for (i, col) in cols.iter().enumerate() {
                    if i > 0 {
                        key.push(KEY_SEPARATOR);
                    }
                    if let Some(s) = col.as_any().downcast_ref::<StringArray>() {
                        key.push_str(s.value(row));
                    } else if let Some(n) = col.as_any().downcast_ref::<Int64Array>() {
                        key.push_str(&n.value(row).to_string());
                    }
                }
                Cow::Owned(key)
            }
        }
    }
}

/// Encode the key of every row of `batch` (which holds the key columns).
pub fn row_keys(batch: &RecordBatch, key_cols: &[String]) -> Result<Vec<String>, String> {
    let keys = RowKeys::new(batch, key_cols)?;
    Ok((0..batch.num_rows()).map(|row| keys.get(row).into_owned()).collect())
}

/// The values of an integer or timestamp column as `i64` (nulls as `i64::MIN`).
pub fn i64_values(batch: &RecordBatch, col: &str) -> Result<Vec<i64>, String> {
    let c = batch.column_by_name(col).ok_or_else(|| format!("column `{col}` missing from file"))?;
    let c = cast(c, &DataType::Int64).map_err(|e| e.to_string())?;
    let c = c.as_any().downcast_ref::<Int64Array>().ok_or("not an integer column")?;
    Ok((0..c.len()).map(|i| if c.is_null(i) { i64::MIN } else { c.value(i) }).collect())
}

/// The range of keys a file can hold, from the `minValues`/`maxValues` of its Delta statistics.
///
/// Only single-column keys have a range. String bounds are compared as byte prefixes, so a
/// writer that truncates long string statistics can never make a file look as if it cannot
/// hold a key that it does hold.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyRange {
    /// A string key column.
    Str {
        /// The smallest key, or a prefix of it.
        min: String,
        /// The largest key, or a prefix of it (possibly rounded up).
        max: String,
    },
    /// An integer key column.
    Int {
        /// The smallest key.
        min: i64,
        /// The largest key.
        max: i64,
    },
}

/// How a single key column's values are ordered: the domain of both its statistics and the
/// batch's encoded keys, which must agree for a range to rule a file out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrder {
    /// Strings, compared as bytes.
    Text,
    /// Integers; encoded keys are their decimal digits.
    Integer,
    /// UTC timestamps in microseconds; encoded keys are the microseconds' digits, while Delta
    /// statistics hold ISO 8601 text truncated to milliseconds.
    TimestampMicros,
}

impl KeyOrder {
    /// The order of a key field of this type (`None`: no range pruning, always probe).
    pub fn of(kind: &FieldType) -> Option<KeyOrder> {
        match kind {
            FieldType::String { .. } => Some(KeyOrder::Text),
            FieldType::Long { .. } => Some(KeyOrder::Integer),
            FieldType::Timestamp => Some(KeyOrder::TimestampMicros),
            _ => None,
        }
    }
}

/// Microseconds of an ISO 8601 timestamp as Delta statistics write it: with `Z` or an offset,
/// or without one (timestamp_ntz), at any sub-second precision.
fn stats_timestamp_micros(text: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_micros());
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|t| t.and_utc().timestamp_micros())
}

/// How far a timestamp statistic may be from the value it stands for: writers truncate (or
/// round) them to milliseconds.
const TIMESTAMP_STATS_SLACK_MICROS: i64 = 1_000;

impl KeyRange {
    /// The range of the single key column `col` in a file's JSON statistics, if recorded in
    /// the form `order` expects. Anything else gives `None`, so the file is always probed.
    pub fn from_stats(stats: &str, col: &str, order: KeyOrder) -> Option<KeyRange> {
        use serde_json::Value::{Number, String as Text};
        let v: serde_json::Value = serde_json::from_str(stats).ok()?;
        let (min, max) = (v.get("minValues")?.get(col)?, v.get("maxValues")?.get(col)?);
        // A null count equal to the row count would leave no bounds; a partial one is fine
        // because null keys are never stored.
        match (order, min, max) {
            (KeyOrder::Text, Text(a), Text(b)) => Some(KeyRange::Str { min: a.clone(), max: b.clone() }),
            (KeyOrder::Integer, Number(a), Number(b)) => Some(KeyRange::Int { min: a.as_i64()?, max: b.as_i64()? }),
            (KeyOrder::TimestampMicros, Text(a), Text(b)) => Some(KeyRange::Int {
                min: stats_timestamp_micros(a)?.saturating_sub(TIMESTAMP_STATS_SLACK_MICROS),
                max: stats_timestamp_micros(b)?.saturating_add(TIMESTAMP_STATS_SLACK_MICROS),
            }),
            _ => None,
        }
    }

    /// Whether any of `keys` may be in a file with this range.
    pub fn may_hold_any(&self, keys: &SortedKeys<'_>) -> bool {
        match self {
            KeyRange::Str { min, max } => {
                let below_max = |k: &str| {
                    let k = k.as_bytes();
                    k[..k.len().min(max.len())] <= *max.as_bytes()
                };
                // Most batches miss most files entirely: decide on the batch's bounds first.
                match (keys.min, keys.max) {
                    (Some(lo), Some(hi)) if hi.as_bytes() >= min.as_bytes() && below_max(lo) => {}
                    _ => return false,
                }
                // The smallest key not below `min`; prefixes preserve order, so if its prefix is
                // above `max` every later key's is too.
                let strings = keys.strings();
                let i = strings.partition_point(|k| k.as_bytes() < min.as_bytes());
                strings.get(i).is_some_and(|k| below_max(k))
            }
            KeyRange::Int { min, max } => {
                let ints = keys.ints();
                let i = ints.partition_point(|k| k < min);
                ints.get(i).is_some_and(|k| k <= max)
            }
        }
    }
}

/// The distinct keys of a batch, for range checks; sorted only when a range check needs it.
#[derive(Debug, Default)]
pub struct SortedKeys<'a> {
    keys: Vec<&'a str>,
    min: Option<&'a str>,
    max: Option<&'a str>,
    strings: std::sync::OnceLock<Vec<&'a str>>,
    ints: std::sync::OnceLock<Vec<i64>>,
}

impl<'a> SortedKeys<'a> {
    /// The keys of a batch (distinct).
    pub fn new(keys: impl IntoIterator<Item = &'a str>) -> Self {
        let keys: Vec<&str> = keys.into_iter().collect();
        let (min, max) = (keys.iter().min().copied(), keys.iter().max().copied());
        SortedKeys { keys, min, max, ..Default::default() }
    }

    fn strings(&self) -> &[&'a str] {
        self.strings.get_or_init(|| {
            let mut v = self.keys.clone();
            v.sort_unstable();
            v.dedup();
            v
        })
    }

    fn ints(&self) -> &[i64] {
        self.ints.get_or_init(|| {
            let mut v: Vec<i64> = self.keys.iter().filter_map(|k| k.parse().ok()).collect();
            v.sort_unstable();
            v
        })
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys as an owned set, for probes that run on other threads.
    fn set(&self) -> Arc<FastSet<String>> {
        Arc::new(self.keys.iter().map(|k| k.to_string()).collect())
    }
}

/// Locates a batch's keys in the live files of a table (see the module docs).
#[derive(Debug, Default)]
pub struct KeyIndex {
    key_cols: Vec<String>,
    /// The order of a single key column (`None`: composite, or a type without ranges).
    order: Option<KeyOrder>,
    /// Live files with their key range (`None`: no usable statistics, always probed).
    ranges: HashMap<Arc<str>, Option<KeyRange>>,
    /// Key columns read so far (a measure of index cost).
    pub files_read: u64,
    /// Probes that key ranges avoided so far.
    pub files_pruned: u64,
}

/// The live files of a snapshot by path, and the live file holding each stored key of a batch.
pub type Located = (HashMap<Arc<str>, LogicalFileView>, FastMap<String, Arc<str>>);

impl KeyIndex {
    /// An index over these key columns; `order` is that of a single key column, and files are
    /// pruned by key range only when it is known.
    pub fn new(key_cols: Vec<String>, order: Option<KeyOrder>) -> Self {
        KeyIndex { key_cols, order, ..Default::default() }
    }

    /// Find which live files of the table's loaded snapshot hold `keys`.
    pub async fn locate(&mut self, table: &DeltaTable, name: &str, keys: &SortedKeys<'_>) -> Result<Located, LakeError> {
        let snapshot = table.snapshot().map_err(|e| LakeError::delta(name, e))?;
        let live: HashMap<Arc<str>, LogicalFileView> =
            snapshot.log_data().iter().map(|f| (Arc::<str>::from(f.path().as_ref()), f)).collect();
        self.ranges.retain(|p, _| live.contains_key(p));
        let single = match (self.key_cols.as_slice(), self.order) {
            ([one], Some(order)) => Some((one.clone(), order)),
            _ => None,
        };
        for (p, f) in &live {
            if !self.ranges.contains_key(p) {
                let range = single.as_ref().and_then(|(c, order)| KeyRange::from_stats(&f.stats()?, c, *order));
                self.ranges.insert(p.clone(), range);
            }
        }
        let probes: Vec<(Arc<str>, Path, u64)> = if keys.is_empty() {
            Vec::new()
        } else {
            self.ranges
                .iter()
                .filter(|(_, r)| r.as_ref().is_none_or(|r| r.may_hold_any(keys)))
                .filter_map(|(p, _)| live.get(p).map(|f| (p.clone(), f.object_store_path(), f.size().max(0) as u64)))
                .collect()
        };
        self.files_pruned += (live.len() - probes.len()) as u64;
        self.files_read += probes.len() as u64;
        let store = table.object_store();
        let wanted = if probes.is_empty() { Arc::default() } else { keys.set() };
        let found: Vec<(Arc<str>, Vec<String>)> = futures::stream::iter(probes)
            .map(|(p, path, size)| {
                let (store, cols, wanted) = (store.clone(), self.key_cols.clone(), wanted.clone());
                // Spawned, so that probes decode on every core.
                tokio::spawn(async move {
                    let batches = read_file(store, path, size, Some(&cols)).await.map_err(|e| e.to_string())?;
                    let mut hits = Vec::new();
                    for b in &batches {
                        let keys = RowKeys::new(b, &cols)?;
                        for row in 0..b.num_rows() {
                            let k = keys.get(row);
                            if wanted.contains(k.as_ref()) {
                                hits.push(k.into_owned());
                            }
                        }
                    }
                    Ok::<_, String>((p, hits))
                })
            })
            .buffer_unordered(8)
            .map(|joined| joined.map_err(|e| e.to_string()).and_then(|r| r))
            .try_collect()
            .await
            .map_err(|e| LakeError::data(name, e))?;
        let mut holder = FastMap::default();
        for (path, hits) in found {
            for k in hits {
                holder.insert(k, path.clone());
            }
        }
        Ok((live, holder))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_ranges_from_delta_stats() {
        let stats = r#"{"numRecords":2,"minValues":{"id":"a-1","n":3},"maxValues":{"id":"a-9","n":40}}"#;
        assert_eq!(KeyRange::from_stats(stats, "id", KeyOrder::Text), Some(KeyRange::Str { min: "a-1".into(), max: "a-9".into() }));
        assert_eq!(KeyRange::from_stats(stats, "n", KeyOrder::Integer), Some(KeyRange::Int { min: 3, max: 40 }));
        assert_eq!(KeyRange::from_stats(stats, "other", KeyOrder::Text), None);
        assert_eq!(KeyRange::from_stats("not json", "id", KeyOrder::Text), None);
        // Statistics of another form than the key's are no range at all (always probed).
        assert_eq!(KeyRange::from_stats(stats, "id", KeyOrder::Integer), None);
        assert_eq!(KeyRange::from_stats(stats, "id", KeyOrder::TimestampMicros), None);
        let int = KeyRange::Int { min: 3, max: 40 };
        assert!(int.may_hold_any(&SortedKeys::new(["1", "40"])));
        assert!(!int.may_hold_any(&SortedKeys::new(["1", "41", "x"])));
    }

    #[test]
    fn timestamp_ranges_are_in_microseconds_and_cover_truncation() {
        // Delta writes timestamp statistics as text truncated to milliseconds.
        let stats = r#"{"minValues":{"ts":"2026-01-01T10:00:00.000Z"},"maxValues":{"ts":"2026-01-01T10:00:01.250Z"}}"#;
        let r = KeyRange::from_stats(stats, "ts", KeyOrder::TimestampMicros).unwrap();
        let base = 1_767_261_600_000_000i64; // 2026-01-01T10:00:00Z
        // The stored maximum may be 10:00:01.250999: a key there must still be probed.
        for us in [base, base + 1_250_999, base + 500_000] {
            assert!(r.may_hold_any(&SortedKeys::new([us.to_string().as_str()])), "{us}");
        }
        for us in [base - 2_000, base + 1_253_000, 0] {
            assert!(!r.may_hold_any(&SortedKeys::new([us.to_string().as_str()])), "{us}");
        }
        let ntz = r#"{"minValues":{"ts":"2026-01-01T10:00:00.000"},"maxValues":{"ts":"2026-01-01T10:00:00.000"}}"#;
        assert!(KeyRange::from_stats(ntz, "ts", KeyOrder::TimestampMicros).unwrap().may_hold_any(&SortedKeys::new([base.to_string().as_str()])));
    }

    proptest! {
        /// A file's range, even with bounds truncated to a prefix, never rules out a key the
        /// file holds; and with exact bounds it rules out every batch that misses the range.
        #[test]
        fn ranges_never_hide_a_stored_key(
            file in proptest::collection::btree_set("[a-c]{0,6}", 1..8),
            batch in proptest::collection::vec("[a-c]{0,6}", 1..8),
            cut in 0usize..7,
        ) {
            let (min, max) = (file.first().unwrap().clone(), file.last().unwrap().clone());
            let keys = SortedKeys::new(batch.iter().map(String::as_str));
            let hit = batch.iter().any(|k| file.contains(k));
            let exact = KeyRange::Str { min: min.clone(), max: max.clone() };
            let in_range = batch.iter().any(|k| *k >= min && *k <= max);
            // Exact bounds admit a key only in range or extending `max` (the prefix rule).
            let admissible = batch.iter().any(|k| *k >= min && (*k <= max || k.starts_with(max.as_str())));
            let said = exact.may_hold_any(&keys);
            prop_assert!(!in_range || said);
            prop_assert!(!said || admissible);
            let truncated = KeyRange::Str { min: min[..min.len().min(cut)].to_string(), max: max[..max.len().min(cut)].to_string() };
            if hit {
                prop_assert!(exact.may_hold_any(&keys));
                prop_assert!(truncated.may_hold_any(&keys));
            }
        }
    }
}
