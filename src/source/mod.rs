//! Sources: where messages come from: Kafka ([`kafka`]) and Apache Iggy ([`iggy`]); every source starts each
//! partition at the offset stored in the lake, through a [`StartLoader`].

pub mod iggy;
pub mod kafka;

use std::collections::HashMap;

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
    #[error("Kafka error on {brokers}: {reason}")]
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
