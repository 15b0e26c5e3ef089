//! Sources: where messages come from: Kafka ([`kafka`]) and Apache Iggy ([`iggy`]); every source starts each
//! partition at the offset stored in the lake, through a [`StartLoader`]. The ingest loop sees
//! either through the [`Source`] trait; tests drive it with an in-memory one.

pub mod iggy;
pub mod inspect;
pub mod kafka;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

/// A topic and partition.
pub type TopicPartition = (String, i32);

/// Where a partition's committed data stands in the lake.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionStarts {
    /// Next offset stored in the topic table (`None`: nothing yet, start at the beginning).
    pub data: Option<i64>,
    /// Next offset stored in `dead_letters`.
    pub dead: Option<i64>,
}

/// Reads stored start offsets for assigned partitions.
pub trait StartLoader: Send + Sync {
    /// Load the starts of these partitions.
    fn load<'a>(&'a self, partitions: &'a [TopicPartition]) -> BoxFuture<'a, Result<HashMap<TopicPartition, PartitionStarts>, String>>;
}

/// No stored offsets: every partition starts at the beginning (the audit's reader, and a
/// direct reader whose starts the ingest loop seeks to itself).
pub struct NoStoredOffsets;

impl StartLoader for NoStoredOffsets {
    fn load<'a>(&'a self, _partitions: &'a [TopicPartition]) -> BoxFuture<'a, Result<HashMap<TopicPartition, PartitionStarts>, String>> {
        Box::pin(async { Ok(HashMap::new()) })
    }
}

/// One poll of a source: messages in arrival order, each with its topic (shared, not copied
/// per message), or nothing within the wait.
pub enum Polled {
    /// Messages in arrival order, with their topics.
    Messages(Vec<(Arc<str>, RawMessage)>),
    /// Nothing arrived.
    Nothing,
}

/// The partitions a source reads, as its rebalances (Kafka) or its setup (Iggy) left them.
#[derive(Debug, Default)]
pub struct Assignment {
    /// Bumped on every assignment change.
    pub generation: u64,
    /// Currently assigned partitions and where each started.
    pub partitions: HashMap<TopicPartition, PartitionStarts>,
    /// Whether partitions are currently assigned (false between a revoke and the next assign).
    pub assigned: bool,
    /// Set when stored offsets could not be read: the loop must stop without committing.
    pub error: Option<String>,
}


impl Assignment {
    /// The assignment, when its generation is not `seen`; the error when the stored offsets
    /// could not be read for it.
    pub fn change_since(&self, seen: u64) -> Result<Option<AssignmentChange>, String> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.generation == seen {
            return Ok(None);
        }
        Ok(Some(AssignmentChange { generation: self.generation, assigned: self.assigned, partitions: self.partitions.keys().cloned().collect() }))
    }
}

/// A new assignment, as the ingest loop adopts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentChange {
    /// Bumped on every change.
    pub generation: u64,
    /// Whether partitions are assigned (false between a revoke and the next assign).
    pub assigned: bool,
    /// The partitions now assigned.
    pub partitions: Vec<TopicPartition>,
}

/// What the ingest loop needs from a broker: messages, the assignment and its changes,
/// positions and seeks, the log's bounds, and the partitions of the topics. Kafka
/// ([`kafka::KafkaSource`]) and Iggy ([`iggy::IggySource`]) implement it; the loop's own
/// tests use an in-memory one. Offsets always come from the lake: a source never decides
/// where a partition starts.
pub trait Source: Send + Sync {
    /// `_source` of the rows: the kind of broker (`kafka`, `iggy`).
    fn kind(&self) -> &'static str;

    /// The broker's address, for messages (never a secret).
    fn describe(&self) -> String;

    /// The next messages (at most `max`), or [`Polled::Nothing`] within `wait`. Cancel safe:
    /// the loop drops a poll that has not finished, and no message may be lost with it.
    fn next(&self, wait: Duration, max: usize) -> BoxFuture<'_, Result<Polled, SourceError>>;

    /// The assignment, when its generation is not `seen` (see [`Assignment::change_since`]).
    fn assignment_change(&self, seen: u64) -> Result<Option<AssignmentChange>, String>;

    /// Read each partition next from the given offset (`None`: the log start).
    fn seek(&self, starts: &[(TopicPartition, Option<i64>)]) -> Result<(), SourceError>;

    /// The log start (when reported) and end from the last fetch, without a broker round trip.
    fn cached_watermarks(&self, topic: &str, partition: i32) -> Option<(Option<i64>, i64)>;

    /// The log end from the last fetch, without a broker round trip.
    fn cached_high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        self.cached_watermarks(topic, partition).map(|(_, hi)| hi)
    }

    /// The end a reader of committed data can reach, from the last fetch: the last stable
    /// offset, below the high watermark while a transaction is open (records of an open
    /// transaction are not delivered to a `read_committed` consumer until it ends); `None`
    /// while unknown. `--once` owes the data up to it, and a partition caught up to it is not
    /// stalled.
    fn cached_stable_end(&self, topic: &str, partition: i32) -> Option<i64> {
        self.cached_high_watermark(topic, partition)
    }

    /// The end of each of `partitions` from a fetch response, for partitions this member does
    /// not read: tansu 0.6 lists an end below the true one (the last batch's base + 1). A
    /// source whose listing is exact returns nothing.
    fn fetched_ends(&self, _partitions: &[TopicPartition], _timeout: Duration) -> HashMap<TopicPartition, i64> {
        HashMap::new()
    }

    /// The log start and end the broker lists now, for the partitions it answered (none when
    /// the broker has no such request).
    fn listed_watermarks(&self, _partitions: &[TopicPartition], _timeout: Duration) -> HashMap<TopicPartition, (i64, i64)> {
        HashMap::new()
    }

    /// Every partition of the topics that another reader may hold (a group's other members);
    /// none for a source that reads every partition itself.
    fn all_partitions(&self, _timeout: Duration) -> Result<Vec<TopicPartition>, SourceError> {
        Ok(Vec::new())
    }

    /// The client's position in each partition, past offsets that carry no data for the
    /// application (transaction markers); none where every offset is a message.
    fn positions(&self) -> Vec<(TopicPartition, i64)> {
        Vec::new()
    }

    /// Tell the broker how far the lake has committed (advisory: restarts read the lake).
    fn commit_advisory(&self, _offsets: &[(TopicPartition, i64)]) {}

    /// Whether a fetch may start later than the offset sought, or return nothing from inside a
    /// record batch (tansu 0.6): the loop then checks the first message after each seek, and
    /// re-reads a partition that delivers nothing from its log start.
    fn inexact_seeks(&self) -> bool {
        false
    }

    /// A reader of exactly `starts` outside any group, as assignment `generation` (`--once`
    /// when the group assigns nothing); `None` when this source needs no group.
    fn direct(&self, _starts: &[(TopicPartition, Option<i64>)], _generation: u64) -> Result<Option<Box<dyn Source>>, SourceError> {
        Ok(None)
    }
}

/// A raw message, as the source delivered it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawMessage {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Message key.
    pub key: Option<Vec<u8>>,
    /// Payload (`None`: a tombstone).
    pub payload: Option<Vec<u8>>,
    /// Broker timestamp in milliseconds.
    pub timestamp_ms: Option<i64>,
}

/// Errors of the source layer.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The brokers did not answer.
    #[error("cannot reach Kafka brokers at {brokers}: {reason}")]
    Unreachable {
        /// Bootstrap servers.
        brokers: String,
        /// Underlying error.
        reason: String,
    },
    /// A topic does not exist on the broker.
    #[error("topic `{topic}` does not exist on {brokers} (create it, or produce to it with `lakepipe generate`)")]
    UnknownTopic {
        /// Topic.
        topic: String,
        /// Bootstrap servers.
        brokers: String,
    },
    /// Client configuration rejected by librdkafka.
    #[error("invalid Kafka client configuration: {reason}")]
    Config {
        /// Underlying error.
        reason: String,
    },
    /// The lake's offsets and the broker's log disagree (messages gone before ingest): never
    /// skipped silently, never retried.
    #[error("offsets out of range on {brokers}: {reason}")]
    OutOfRange {
        /// The broker.
        brokers: String,
        /// What is missing.
        reason: String,
    },
    /// A partition cannot advance: the broker delivers something this client cannot read or is
    /// not allowed to (a codec the build lacks, a corrupt or oversized batch, a missing ACL).
    /// Retrying reads the same bytes again, so it is not retryable.
    #[error("a partition cannot advance on {brokers}: {reason}")]
    Stuck {
        /// The broker.
        brokers: String,
        /// The broker's or the codec's error.
        reason: String,
    },
    /// A broker request failed.
    #[error("broker error on {brokers}: {reason}")]
    Broker {
        /// Bootstrap servers.
        brokers: String,
        /// Underlying error.
        reason: String,
    },
}

impl SourceError {
    /// Whether retrying may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SourceError::Unreachable { .. } | SourceError::Broker { .. })
    }

    /// Whether the user must fix something.
    pub fn is_user_error(&self) -> bool {
        matches!(self, SourceError::UnknownTopic { .. } | SourceError::Config { .. })
    }
}
