//! A global key index: which live file holds each record key.
//!
//! This is the analogue of Hudi's global index. It is built once per process by reading only
//! the key columns of every live file, then kept current: after each refresh only files that
//! appeared since (written by this or another process) are read. Entries that point at files
//! no longer live are ignored, so removals cost nothing. An upsert therefore touches exactly
//! the files that hold its keys, whatever the size of the table.

use std::collections::{HashMap, HashSet};
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

/// Encode the key of every row of `batch` (which holds the key columns).
pub fn row_keys(batch: &RecordBatch, key_cols: &[String]) -> Result<Vec<String>, String> {
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
    let mut keys = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
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
        keys.push(key);
    }
    Ok(keys)
}

/// The values of an integer or timestamp column as `i64` (nulls as `i64::MIN`).
pub fn i64_values(batch: &RecordBatch, col: &str) -> Result<Vec<i64>, String> {
    let c = batch.column_by_name(col).ok_or_else(|| format!("column `{col}` missing from file"))?;
    let c = cast(c, &DataType::Int64).map_err(|e| e.to_string())?;
    let c = c.as_any().downcast_ref::<Int64Array>().ok_or("not an integer column")?;
    Ok((0..c.len()).map(|i| if c.is_null(i) { i64::MIN } else { c.value(i) }).collect())
}

/// Key → live file.
#[derive(Debug, Default)]
pub struct KeyIndex {
    key_cols: Vec<String>,
    known: HashSet<Arc<str>>,
    map: HashMap<String, Arc<str>>,
    /// Files read by refreshes so far (a measure of index cost).
    pub files_read: u64,
}

impl KeyIndex {
    /// An empty index over these key columns.
    pub fn new(key_cols: Vec<String>) -> Self {
        KeyIndex { key_cols, ..Default::default() }
    }

    /// Bring the index up to the table's loaded snapshot, reading keys of files it has not seen.
    /// Returns the live files by path.
    pub async fn refresh(&mut self, table: &DeltaTable, name: &str) -> Result<HashMap<Arc<str>, LogicalFileView>, LakeError> {
        let snapshot = table.snapshot().map_err(|e| LakeError::delta(name, e))?;
        let live: HashMap<Arc<str>, LogicalFileView> =
            snapshot.log_data().iter().map(|f| (Arc::<str>::from(f.path().as_ref()), f)).collect();
        let new: Vec<(Arc<str>, Path, u64)> = live
            .iter()
            .filter(|(p, _)| !self.known.contains(*p))
            .map(|(p, f)| (p.clone(), f.object_store_path(), f.size().max(0) as u64))
            .collect();
        let store = table.object_store();
        let cols = self.key_cols.clone();
        let results: Vec<(Arc<str>, Vec<String>)> = futures::stream::iter(new)
            .map(|(p, path, size)| {
                let store = store.clone();
                let cols = cols.clone();
                async move {
                    let batches = read_file(store, path, size, Some(&cols)).await.map_err(|e| e.to_string())?;
                    let mut keys = Vec::new();
                    for b in &batches {
                        keys.extend(row_keys(b, &cols)?);
                    }
                    Ok::<_, String>((p, keys))
                }
            })
            .buffer_unordered(8)
            .try_collect()
            .await
            .map_err(|e| LakeError::data(name, e))?;
        for (path, keys) in results {
            self.files_read += 1;
            for k in keys {
                self.map.insert(k, path.clone());
            }
        }
        self.known = live.keys().cloned().collect();
        // Drop entries of dead files now and then, to bound memory.
        if self.map.len() > 1024 && self.map.len() % 64 == 0 {
            let known = &self.known;
            self.map.retain(|_, p| known.contains(p));
        }
        Ok(live)
    }

    /// The live file holding `key`, if any.
    pub fn lookup(&self, key: &str) -> Option<&Arc<str>> {
        self.map.get(key).filter(|p| self.known.contains(*p))
    }

    /// Record that `key` now lives in `path` (or nowhere, for `None`).
    pub fn set(&mut self, key: &str, path: Option<Arc<str>>) {
        match path {
            Some(p) => {
                self.known.insert(p.clone());
                self.map.insert(key.to_string(), p);
            }
            None => {
                self.map.remove(key);
            }
        }
    }

    /// Forget that a file is live (it was removed).
    pub fn forget_file(&mut self, path: &str) {
        self.known.remove(path);
    }

    /// Number of keys indexed.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
