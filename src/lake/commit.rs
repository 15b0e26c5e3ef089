//! Commit: data and source offsets in one Delta commit, with an offset fence.
//!
//! Each (source, consumer group, topic, partition) has a Delta `txn` action whose `appId` is
//! [`app_id`] and whose `version` is the next offset to read. A batch that started reading
//! partition `p` at offset `o` may only commit if the table still says `o` for `p`
//! ([`fence`]); otherwise another writer has processed that range and the batch is dropped.
//! Commits never rebase silently: any concurrent commit makes this one fail with
//! [`LakeError::Conflict`], and the caller recomputes against the new version.

use std::collections::HashMap;

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, FinalizedCommit};
use deltalake::kernel::{Action, Transaction};
use deltalake::protocol::DeltaOperation;
use deltalake::{DeltaTable, DeltaTableError};

use super::LakeError;

/// Identifies a source partition whose offsets are stored in a table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OffsetKey {
    /// Source name (`kafka` by default; distinct per cluster).
    pub source: String,
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
}

impl OffsetKey {
    /// The Delta `txn` appId for this partition.
    pub fn app_id(&self) -> String {
        app_id(&self.source, &self.group, &self.topic, self.partition)
    }

    /// The partition an [`app_id`] names (`None`: not one of lakepipe's).
    pub fn parse_app_id(id: &str) -> Option<Self> {
        // lakepipe:<source>:<group>:<topic>:<partition>; source and group hold no `:`.
        let rest = id.strip_prefix("lakepipe:")?;
        let (source, rest) = rest.split_once(':')?;
        let (group, rest) = rest.split_once(':')?;
        let (topic, partition) = rest.rsplit_once(':')?;
        Some(OffsetKey { source: source.into(), group: group.into(), topic: topic.into(), partition: partition.parse().ok()? })
    }
}

/// The Delta `txn` appId of a source partition.
pub fn app_id(source: &str, group: &str, topic: &str, partition: i32) -> String {
    format!("lakepipe:{source}:{group}:{topic}:{partition}")
}

/// The next offset stored in the table for a partition, if any.
pub async fn stored_offset(table: &DeltaTable, name: &str, key: &OffsetKey) -> Result<Option<i64>, LakeError> {
    let snapshot = table.snapshot().map_err(|e| LakeError::delta(name, e))?;
    snapshot
        .transaction_version(table.log_store().as_ref(), key.app_id())
        .await
        .map_err(|e| LakeError::delta(name, e))
}

/// One partition's share of a batch: it read `[start, end)`; `start` is what the table held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRange {
    /// Which partition.
    pub key: OffsetKey,
    /// The stored offset the batch started from (`None`: nothing stored yet).
    pub start: Option<i64>,
    /// The next offset to read after this batch.
    pub end: i64,
}

/// Offsets `[from, to)` of a partition that the broker deleted (retention, DeleteRecords)
/// before they were read, and that a commit moves past under `on_data_loss = "skip"`. The
/// commit records them in its `lakepipe` metadata (key `skipped`), where `history()` and
/// `audit` find them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRange {
    /// Which partition.
    pub key: OffsetKey,
    /// The first offset lost.
    pub from: i64,
    /// The log start the broker reported: the first offset not lost.
    pub to: i64,
}

impl SkippedRange {
    /// The range as a commit records it.
    pub fn to_json(&self) -> serde_json::Value {
        let k = &self.key;
        serde_json::json!({"topic": k.topic, "partition": k.partition, "source": k.source, "group": k.group, "from": self.from, "to": self.to})
    }

    /// The ranges a commit's `lakepipe` metadata records (none for other commits).
    pub fn from_metadata(lakepipe: &serde_json::Value) -> Vec<SkippedRange> {
        let Some(all) = lakepipe.get("skipped").and_then(|s| s.as_array()) else { return Vec::new() };
        all.iter()
            .filter_map(|v| {
                let text = |f: &str| v.get(f).and_then(|x| x.as_str()).map(str::to_string);
                let key = OffsetKey { source: text("source")?, group: text("group")?, topic: text("topic")?, partition: i32::try_from(v.get("partition")?.as_i64()?).ok()? };
                Some(SkippedRange { key, from: v.get("from")?.as_i64()?, to: v.get("to")?.as_i64()? })
            })
            .collect()
    }
}

/// Check that the table still holds each range's start offset.
pub async fn fence(table: &DeltaTable, name: &str, ranges: &[OffsetRange]) -> Result<(), LakeError> {
    // Each lookup replays the log's `txn` actions on a blocking thread: look them up together.
    let found = futures::future::try_join_all(ranges.iter().map(|r| stored_offset(table, name, &r.key))).await?;
    for (r, found) in ranges.iter().zip(found) {
        if found != r.start {
            return Err(LakeError::Fenced { table: name.to_string(), partition: r.key.partition, expected: r.start, found });
        }
    }
    Ok(())
}

/// The `txn` actions that move every range to its end offset.
pub fn txn_actions(ranges: &[OffsetRange]) -> Vec<Action> {
    let now = chrono::Utc::now().timestamp_millis();
    ranges
        .iter()
        .map(|r| Action::Txn(Transaction::new_with_last_update(r.key.app_id(), r.end, Some(now))))
        .collect()
}

/// Commit `actions` as exactly the next version after the table's loaded snapshot, and move
/// the table's state to that version (so that the next batch's refresh reads nothing new
/// unless another writer committed). Returns the new version.
pub async fn commit_advancing(
    table: &mut DeltaTable,
    name: &str,
    actions: Vec<Action>,
    operation: DeltaOperation,
    app_metadata: HashMap<String, serde_json::Value>,
) -> Result<u64, LakeError> {
    let done = commit_to(table, name, actions, operation, app_metadata).await?;
    let version = done.version();
    table.state = Some(done.snapshot);
    Ok(version)
}

/// Commit `actions` as exactly the next version after the table's loaded snapshot.
/// Returns the new version.
pub async fn commit(
    table: &DeltaTable,
    name: &str,
    actions: Vec<Action>,
    operation: DeltaOperation,
    app_metadata: HashMap<String, serde_json::Value>,
) -> Result<u64, LakeError> {
    Ok(commit_to(table, name, actions, operation, app_metadata).await?.version())
}

async fn commit_to(
    table: &DeltaTable,
    name: &str,
    actions: Vec<Action>,
    operation: DeltaOperation,
    app_metadata: HashMap<String, serde_json::Value>,
) -> Result<FinalizedCommit, LakeError> {
    let snapshot = table.snapshot().map_err(|e| LakeError::delta(name, e))?;
    // Built from `CommitProperties` so the post-commit hook writes a checkpoint every
    // `delta.checkpointInterval` commits; never rebase (`max_retries = 0`).
    let props = CommitProperties::default().with_max_retries(0).with_create_checkpoint(true);
    let result = CommitBuilder::from(props)
        .with_actions(actions)
        .with_app_metadata(app_metadata)
        .with_max_retries(0)
        .build(Some(snapshot), table.log_store(), operation)
        .await;
    match result {
        Ok(done) => Ok(done),
        Err(e) if is_conflict(&e) => Err(LakeError::Conflict { table: name.to_string(), reason: e.to_string() }),
        Err(e) => Err(LakeError::delta(name, e)),
    }
}

fn is_conflict(e: &DeltaTableError) -> bool {
    use deltalake::kernel::transaction::TransactionError as T;
    match e {
        DeltaTableError::VersionAlreadyExists(_) => true,
        DeltaTableError::Transaction { source } => {
            matches!(source, T::VersionAlreadyExists(_) | T::MaxCommitAttempts(_) | T::CommitConflict(_))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_read_back_as_the_partitions_they_name() {
        let key = OffsetKey { source: "iggy".into(), group: "g".into(), topic: "t.x-1".into(), partition: 7 };
        assert_eq!(OffsetKey::parse_app_id(&key.app_id()), Some(key));
        for other in ["lakepipe:a:b:c", "lakepipe:a:b:c:x", "spark:a:b:c:1", ""] {
            assert_eq!(OffsetKey::parse_app_id(other), None, "{other}");
        }
    }

    #[test]
    fn app_ids_are_distinct_per_source_group_topic_partition() {
        let k = |s: &str, g: &str, t: &str, p| OffsetKey { source: s.into(), group: g.into(), topic: t.into(), partition: p };
        let ids: std::collections::HashSet<String> = [
            k("kafka", "g", "t", 0),
            k("kafka", "g", "t", 1),
            k("kafka", "h", "t", 0),
            k("iggy", "g", "t", 0),
            k("kafka", "g", "u", 0),
        ]
        .iter()
        .map(|k| k.app_id())
        .collect();
        assert_eq!(ids.len(), 5);
        assert_eq!(app_id("kafka", "lakepipe", "transactions", 3), "lakepipe:kafka:lakepipe:transactions:3");
    }

    #[test]
    fn skipped_ranges_round_trip_through_commit_metadata() {
        let key = OffsetKey { source: "kafka".into(), group: "g".into(), topic: "t".into(), partition: 2 };
        let r = SkippedRange { key, from: 40, to: 60 };
        let meta = serde_json::json!({"inserted": 1, "skipped": [r.to_json()]});
        assert_eq!(SkippedRange::from_metadata(&meta), vec![r]);
        assert!(SkippedRange::from_metadata(&serde_json::json!({"inserted": 1})).is_empty());
    }

    #[test]
    fn txn_actions_carry_end_offsets() {
        let r = OffsetRange {
            key: OffsetKey { source: "kafka".into(), group: "g".into(), topic: "t".into(), partition: 2 },
            start: Some(5),
            end: 9,
        };
        match &txn_actions(&[r])[0] {
            Action::Txn(t) => assert_eq!((t.app_id.as_str(), t.version), ("lakepipe:kafka:g:t:2", 9)),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[cfg(test)]
mod long_log {
    use super::*;
    use crate::lake::Lake;

    /// Measurement, not a timed assertion: `cargo test --release -- --ignored long_log --nocapture`.
    /// Builds a table with `LAKEPIPE_DEV_LONG_LOG_COMMITS` commits (default 10,000; a checkpoint
    /// every 10) and times opening it.
    #[tokio::test(flavor = "multi_thread")]
    #[ignore]
    async fn open_table_with_many_commits() {
        let dir = tempfile::tempdir().unwrap();
        let every: u64 = std::env::var("LAKEPIPE_DEV_LONG_LOG_CHECKPOINT").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
        let lake = Lake::parse(dir.path().to_str().unwrap()).unwrap().with_checkpoint_interval(every);
        let schema = crate::lake::dead_letters::schema();
        let mut table = lake.open_or_create("t", &schema, &["date"]).await.unwrap();
        let n: i64 = std::env::var("LAKEPIPE_DEV_LONG_LOG_COMMITS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
        let started = std::time::Instant::now();
        for i in 0..n {
            table.update_state().await.unwrap();
            let action = Action::Txn(Transaction::new("lakepipe:kafka:g:t:0", i + 1));
            let op = DeltaOperation::Write { mode: deltalake::protocol::SaveMode::Append, partition_by: None, predicate: None };
            commit(&table, "t", vec![action], op, HashMap::new()).await.unwrap();
        }
        eprintln!("{n} commits written in {:?}", started.elapsed());
        let t0 = std::time::Instant::now();
        let opened = lake.open("t").await.unwrap().unwrap();
        eprintln!("opened version {:?} in {:?}", opened.version(), t0.elapsed());
        assert_eq!(opened.version(), Some(n as u64));
        let key = OffsetKey { source: "kafka".into(), group: "g".into(), topic: "t".into(), partition: 0 };
        let t1 = std::time::Instant::now();
        assert_eq!(stored_offset(&opened, "t", &key).await.unwrap(), Some(n));
        eprintln!("read the stored offset in {:?}", t1.elapsed());
    }
}
