//! The Delta log, read directly: one commit's actions, for `history` and `changes`, and the
//! ranges commits skipped, for `audit`.

use std::collections::HashMap;

use deltalake::{DeltaTable, Path};
use object_store::ObjectStoreExt;

use super::commit::SkippedRange;
use super::LakeError;

/// An `add` or `remove` action.
#[derive(Debug, Clone, PartialEq)]
pub struct FileAction {
    /// Path relative to the table root, as in the log (URL-encoded).
    pub path: String,
    /// Partition values.
    pub partition_values: HashMap<String, Option<String>>,
    /// Size in bytes, when recorded.
    pub size: Option<i64>,
    /// Whether the action changes data (compaction writes `false`).
    pub data_change: bool,
}

impl FileAction {
    /// The object-store path of the file.
    pub fn object_path(&self) -> Path {
        Path::from_url_path(&self.path).unwrap_or_else(|_| Path::from(self.path.as_str()))
    }
}

/// One commit of a table.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// Version.
    pub version: u64,
    /// Commit time, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    /// Operation name (WRITE, MERGE, OPTIMIZE, …).
    pub operation: Option<String>,
    /// lakepipe's own commit metadata (counts and offsets), when the commit is lakepipe's.
    pub lakepipe: Option<serde_json::Value>,
    /// Files added.
    pub adds: Vec<FileAction>,
    /// Files removed.
    pub removes: Vec<FileAction>,
    /// Application transactions: appId → version.
    pub txns: Vec<(String, i64)>,
}

fn file_action(v: &serde_json::Value) -> FileAction {
    FileAction {
        path: v["path"].as_str().unwrap_or_default().to_string(),
        partition_values: v["partitionValues"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_string))).collect())
            .unwrap_or_default(),
        size: v["size"].as_i64(),
        data_change: v["dataChange"].as_bool().unwrap_or(true),
    }
}

/// Read commit `version`, or `None` when its log entry no longer exists (log clean-up).
pub async fn read_commit(table: &DeltaTable, name: &str, version: u64) -> Result<Option<Commit>, LakeError> {
    let store = table.object_store();
    let path = Path::from(format!("_delta_log/{version:020}.json"));
    let (bytes, modified) = match store.get(&path).await {
        Ok(r) => {
            let modified = Some(r.meta.last_modified.timestamp_millis());
            (r.bytes().await.map_err(|e| LakeError::data(name, e))?, modified)
        }
        Err(deltalake::ObjectStoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(LakeError::data(name, e)),
    };
    let mut c = Commit { version, ..Default::default() };
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| LakeError::data(name, format!("bad log line in version {version}: {e}")))?;
        if let Some(a) = v.get("add") {
            c.adds.push(file_action(a));
        } else if let Some(r) = v.get("remove") {
            c.removes.push(file_action(r));
        } else if let Some(t) = v.get("txn") {
            c.txns.push((t["appId"].as_str().unwrap_or_default().to_string(), t["version"].as_i64().unwrap_or_default()));
        } else if let Some(ci) = v.get("commitInfo") {
            c.timestamp_ms = ci["timestamp"].as_i64();
            c.operation = ci["operation"].as_str().map(str::to_string);
            c.lakepipe = ci.get("lakepipe").cloned();
        }
    }
    // Without in-commit timestamps, a version's time is its log file's modification time (as
    // time travel uses it); commitInfo's own timestamp is only a fallback.
    if modified.is_some() {
        c.timestamp_ms = modified;
    }
    Ok(Some(c))
}

/// Every range a commit still in the log recorded as skipped (`on_data_loss = "skip"`), with
/// the version that committed past it, oldest first. Reads each commit once, 16 at a time;
/// commits whose log entry was cleaned up are no longer known.
pub async fn skipped_ranges(table: &DeltaTable, name: &str) -> Result<Vec<(u64, SkippedRange)>, LakeError> {
    use futures::{StreamExt, TryStreamExt};
    let latest = table.version().unwrap_or(0);
    let commits: Vec<Option<Commit>> = futures::stream::iter(0..=latest).map(|v| read_commit(table, name, v)).buffered(16).try_collect().await?;
    Ok(commits
        .into_iter()
        .flatten()
        .flat_map(|c| {
            let ranges = c.lakepipe.as_ref().map(SkippedRange::from_metadata).unwrap_or_default();
            ranges.into_iter().map(move |r| (c.version, r))
        })
        .collect())
}
