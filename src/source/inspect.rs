//! What a broker holds, as the brokers page of the web UI shows it: topics with their
//! partitions' first and next offsets, consumer groups with the offsets they stored, and the
//! newest messages of a topic, read back page by page. Every read is outside any consumer
//! group (nothing joins, nothing commits), so inspecting never moves an ingest's partitions.

use serde::Serialize;

/// One partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionView {
    /// Partition number (Kafka: from 0; Iggy: from 1).
    pub partition: i32,
    /// The first offset the broker still holds (`None`: the broker does not say).
    pub start: Option<i64>,
    /// The next offset to be written (the high watermark); `None`: no answer in time.
    pub end: Option<i64>,
}

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicView {
    /// Topic name.
    pub name: String,
    /// Its partitions, in order.
    pub partitions: Vec<PartitionView>,
}

/// A consumer group as the broker knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupView {
    /// Group name.
    pub name: String,
    /// The broker's word for its state (Kafka: `Stable`, `Empty`, …), if it has one.
    pub state: Option<String>,
    /// Members now.
    pub members: usize,
    /// The next offset the group would read, per partition it stored one for.
    pub offsets: Vec<GroupOffset>,
}

/// A group's stored position in one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The next offset the group would read.
    pub next: i64,
}

/// One message read back for the tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailMessage {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The broker's timestamp in milliseconds.
    pub timestamp_ms: Option<i64>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Payload (`None`: a tombstone).
    pub payload: Option<Vec<u8>>,
}

/// Which offsets of one partition a tail page reads: `[from, before)`, where `from` is never
/// below `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailRange {
    /// Partition.
    pub partition: i32,
    /// The partition's first offset (the lowest a read may start from).
    pub start: i64,
    /// The first offset wanted.
    pub from: i64,
    /// One past the last offset wanted.
    pub before: i64,
}

/// What a tail read returns: the messages of each range read whole, the ranges it could not
/// read whole (with why; none of their messages are returned, so a page never passes a
/// partial read off as whole, and its cursor never moves past what was not read), and the
/// first offsets it learned on the way (Iggy lists none).
#[derive(Debug, Default)]
pub struct Tail {
    /// Messages, in any order.
    pub messages: Vec<TailMessage>,
    /// `(partition, reason)` for each range not read whole.
    pub incomplete: Vec<(i32, String)>,
    /// A partition's first offset, where the read found it (its end: the partition is empty).
    pub starts: std::collections::BTreeMap<i32, i64>,
}

/// The newest `limit` messages across `candidates` (each partition's messages sorted by
/// offset), merged by timestamp, newest first. Each partition keeps a run of its highest
/// offsets, so the next page of a partition starts exactly below the lowest kept one.
pub fn newest_first(mut candidates: Vec<TailMessage>, limit: usize) -> Vec<TailMessage> {
    use std::collections::BTreeMap;
    candidates.sort_by_key(|m| (m.partition, m.offset));
    let mut by_partition: BTreeMap<i32, Vec<TailMessage>> = BTreeMap::new();
    for m in candidates {
        by_partition.entry(m.partition).or_default().push(m);
    }
    let mut out = Vec::with_capacity(limit);
    while out.len() < limit {
        // The partition whose highest unkept message is newest (ties: the lower partition).
        let pick = by_partition
            .iter()
            .filter_map(|(p, ms)| ms.last().map(|m| (m.timestamp_ms.unwrap_or(i64::MIN), -*p)))
            .max()
            .map(|(_, p)| -p);
        let Some(p) = pick else { break };
        let Some(m) = by_partition.get_mut(&p).and_then(Vec::pop) else {
            break;
        };
        out.push(m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(partition: i32, offset: i64, ts: i64) -> TailMessage {
        TailMessage {
            partition,
            offset,
            timestamp_ms: Some(ts),
            key: None,
            payload: None,
        }
    }

    /// Each partition keeps its highest offsets, even where its timestamps go backwards, so a
    /// page's cursor (the lowest kept offset per partition) skips nothing.
    #[test]
    fn merges_by_time_keeping_each_partitions_newest_run() {
        let got = newest_first(
            vec![
                m(0, 1, 10),
                m(0, 2, 30),
                m(0, 3, 20),
                m(1, 7, 25),
                m(1, 8, 26),
            ],
            3,
        );
        let picked: Vec<(i32, i64)> = got.iter().map(|m| (m.partition, m.offset)).collect();
        assert_eq!(picked, vec![(1, 8), (1, 7), (0, 3)]);
        let all = newest_first(vec![m(0, 1, 10), m(1, 2, 10)], 10);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].partition, 0, "ties go to the lower partition");
    }
}
