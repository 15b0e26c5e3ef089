//! The last stable offset of each partition, from librdkafka's statistics: the only place
//! librdkafka reports it. `rd_kafka_get_watermark_offsets` gives the high watermark, which
//! a `read_committed` consumer cannot reach while a transaction is open.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Deserialize;

use crate::source::TopicPartition;

/// How often librdkafka reports its statistics: how stale a last stable offset can be.
pub(super) const INTERVAL_MS: &str = "1000";

/// Each partition's last stable offset, as of librdkafka's last report.
#[derive(Debug, Default)]
pub struct StableEnds(Mutex<HashMap<TopicPartition, i64>>);

#[derive(Deserialize)]
struct Report {
    #[serde(default)]
    topics: HashMap<String, ReportTopic>,
}

#[derive(Deserialize)]
struct ReportTopic {
    #[serde(default)]
    partitions: HashMap<String, ReportPartition>,
}

#[derive(Deserialize)]
struct ReportPartition {
    partition: i32,
    hi_offset: i64,
    ls_offset: i64,
}

impl StableEnds {
    /// Take the offsets of one statistics report (JSON); a report that does not parse changes
    /// nothing.
    pub(super) fn update(&self, json: &[u8]) {
        let report: Report = match serde_json::from_slice(json) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "cannot parse librdkafka's statistics");
                return;
            }
        };
        let mut ends = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (topic, t) in report.topics {
            // Partition -1 is librdkafka's internal one for messages not yet partitioned.
            for p in t
                .partitions
                .into_values()
                .filter(|p| p.partition >= 0 && p.hi_offset >= 0)
            {
                ends.insert((topic.clone(), p.partition), p.ls_offset);
            }
        }
    }

    /// The end a `read_committed` reader can reach, given the high watermark of the latest
    /// fetch response (`live`): the reported last stable offset, at most `live`. A report is
    /// up to [`INTERVAL_MS`] old, so this can be a little low (harmless: `--once` takes the
    /// larger of it and the end listed at assignment), but never inside a transaction that
    /// opened since (the high watermark would be, and `--once` would wait for it). `None`
    /// before the first report that names the partition.
    pub(super) fn end(&self, topic: &str, partition: i32, live: i64) -> Option<i64> {
        let ends = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let ls = *ends.get(&(topic.to_string(), partition))?;
        // A broker without last stable offsets reports -1; librdkafka then uses the high watermark.
        Some(if ls >= 0 { ls.min(live) } else { live })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_transaction_holds_the_end_at_the_last_stable_offset() {
        let ends = StableEnds::default();
        assert_eq!(ends.end("t", 0, 50), None, "no report yet");
        ends.update(
            br#"{"name":"c","topics":{"t":{"topic":"t","partitions":{
                "0":{"partition":0,"hi_offset":120,"ls_offset":100,"lo_offset":0},
                "1":{"partition":1,"hi_offset":80,"ls_offset":80},
                "-1":{"partition":-1,"hi_offset":-1,"ls_offset":-1}}}}}"#,
        );
        assert_eq!(
            ends.end("t", 0, 125),
            Some(100),
            "a transaction is open from 100"
        );
        assert_eq!(
            ends.end("t", 1, 90),
            Some(80),
            "no transaction open at the report: its end, not a later high watermark"
        );
        assert_eq!(ends.end("t", 2, 10), None);
        // The transaction ends: the next report says so.
        ends.update(br#"{"topics":{"t":{"partitions":{"0":{"partition":0,"hi_offset":121,"ls_offset":121}}}}}"#);
        assert_eq!(ends.end("t", 0, 125), Some(121));
        // A report that does not parse changes nothing.
        ends.update(b"{not json");
        assert_eq!(ends.end("t", 0, 121), Some(121));
        // A broker that reports no last stable offset.
        ends.update(br#"{"topics":{"u":{"partitions":{"0":{"partition":0,"hi_offset":7,"ls_offset":-1}}}}}"#);
        assert_eq!(ends.end("u", 0, 7), Some(7));
    }
}
