//! The Kafka consumer as the ingest loop sees it: its messages and errors, and the
//! [`Source`] trait over [`KafkaSource`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;

use super::KafkaSource;
use crate::source::{AssignmentChange, Polled, RawMessage, Source, SourceError, TopicPartition};

/// At most this many messages are taken from the consumer's queue per poll: it amortises the
/// timer and the event loop over many messages without starving the loop's other duties.
const MAX_PER_POLL: usize = 4096;

/// A message or event from the consumer: `Ok(None)` for events that carry no data. `topic`
/// holds the last message's topic name, shared rather than copied per message.
fn kafka_event(k: &KafkaSource, polled: KafkaResult<BorrowedMessage<'_>>, topic: &mut Option<Arc<str>>) -> Result<Option<(Arc<str>, RawMessage)>, SourceError> {
    match polled {
        Ok(m) => Ok(Some((
            match topic {
                Some(t) if **t == *m.topic() => t.clone(),
                _ => topic.insert(Arc::from(m.topic())).clone(),
            },
            RawMessage {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| k.to_vec()),
                payload: m.payload().map(|p| p.to_vec()),
                timestamp_ms: m.timestamp().to_millis(),
            },
        ))),
        Err(KafkaError::PartitionEOF(_)) => Ok(None),
        Err(KafkaError::MessageConsumptionFatal(code)) => Err(SourceError::Stuck {
            brokers: k.brokers().to_string(),
            reason: format!("fatal consumer error: {code}"),
        }),
        Err(KafkaError::MessageConsumption(code)) => match consumer_fault(code) {
            ConsumerFault::Transient => {
                tracing::warn!(error = %code, "consumer error; librdkafka retries");
                Ok(None)
            }
            // The lake's offset is outside the broker's log: retention removed messages that
            // were never ingested, or the log was replaced. Never skipped silently; the
            // ingest loop names the partitions.
            ConsumerFault::OutOfRange => Err(SourceError::OutOfRange {
                brokers: k.brokers().to_string(),
                reason: format!("{code}: a stored offset is outside the broker's log"),
            }),
            ConsumerFault::Stuck => Err(SourceError::Stuck {
                brokers: k.brokers().to_string(),
                reason: match code {
                    RDKafkaErrorCode::NotImplemented | RDKafkaErrorCode::UnsupportedCompressionType => {
                        format!("{code}: a batch uses a compression codec this build cannot read")
                    }
                    _ => code.to_string(),
                },
            }),
        },
        Err(e) => {
            tracing::warn!(error = %e, "consumer error");
            Ok(None)
        }
    }
}

impl Source for KafkaSource {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn describe(&self) -> String {
        self.brokers().to_string()
    }

    fn next(&self, wait: Duration, max: usize) -> BoxFuture<'_, Result<Polled, SourceError>> {
        Box::pin(async move {
            let Ok(first) = tokio::time::timeout(wait, self.consumer.recv()).await else { return Ok(Polled::Nothing) };
            let mut topic = None;
            let mut out: Vec<(Arc<str>, RawMessage)> = kafka_event(self, first, &mut topic)?.into_iter().collect();
            if out.is_empty() {
                return Ok(Polled::Nothing);
            }
            // Whatever else is already queued, without waiting.
            while out.len() < max.min(MAX_PER_POLL) {
                match self.consumer.recv().now_or_never() {
                    Some(polled) => match kafka_event(self, polled, &mut topic)? {
                        Some(m) => out.push(m),
                        None => break,
                    },
                    None => break,
                }
            }
            Ok(Polled::Messages(out))
        })
    }

    fn assignment_change(&self, seen: u64) -> Result<Option<AssignmentChange>, String> {
        self.assignment.lock().unwrap_or_else(|p| p.into_inner()).change_since(seen)
    }

    fn seek(&self, starts: &[(TopicPartition, Option<i64>)]) -> Result<(), SourceError> {
        KafkaSource::seek(self, starts)
    }

    fn cached_watermarks(&self, topic: &str, partition: i32) -> Option<(Option<i64>, i64)> {
        KafkaSource::cached_watermarks(self, topic, partition)
    }

    fn cached_stable_end(&self, topic: &str, partition: i32) -> Option<i64> {
        KafkaSource::cached_stable_end(self, topic, partition)
    }

    fn listed_watermarks(&self, partitions: &[TopicPartition], timeout: Duration) -> HashMap<TopicPartition, (i64, i64)> {
        KafkaSource::listed_watermarks(self, partitions, timeout)
    }

    fn fetched_ends(&self, partitions: &[TopicPartition], timeout: Duration) -> HashMap<TopicPartition, i64> {
        KafkaSource::fetched_ends(self, partitions, timeout)
    }

    fn all_partitions(&self, timeout: Duration) -> Result<Vec<TopicPartition>, SourceError> {
        KafkaSource::all_partitions(self, timeout)
    }

    fn positions(&self) -> Vec<(TopicPartition, i64)> {
        KafkaSource::positions(self)
    }

    fn commit_advisory(&self, offsets: &[(TopicPartition, i64)]) {
        KafkaSource::commit_advisory(self, offsets)
    }

    /// tansu 0.6 answers a fetch that starts inside a record batch with the next batch, or
    /// with nothing.
    fn inexact_seeks(&self) -> bool {
        true
    }

    fn direct(&self, starts: &[(TopicPartition, Option<i64>)], generation: u64) -> Result<Option<Box<dyn Source>>, SourceError> {
        let direct = KafkaSource::direct(&self.brokers, &self.group, &self.topics, &self.extra, self.loader.clone(), starts, generation)?;
        Ok(Some(Box::new(direct)))
    }
}

/// What a consumer error means for the partition it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerFault {
    /// The client retries by itself (connections, leadership moves, timeouts): log and go on.
    Transient,
    /// The stored offset is outside the broker's log: messages were deleted before they were
    /// ingested, or the log was replaced. Never skipped silently.
    OutOfRange,
    /// The partition cannot advance past this error without a change by the user (a codec
    /// the build lacks, a corrupt or oversized batch, a missing permission).
    Stuck,
}

/// Classify an error that librdkafka reports on the consumer queue. Codes not named here are
/// taken as transient: librdkafka reports many passing conditions this way, and a partition
/// that really stops is still caught, by `--once`'s deadline or the lag.
pub fn consumer_fault(code: RDKafkaErrorCode) -> ConsumerFault {
    use RDKafkaErrorCode as C;
    match code {
        C::OffsetOutOfRange | C::AutoOffsetReset => ConsumerFault::OutOfRange,
        C::NotImplemented
        | C::BadCompression
        | C::BadMessage
        | C::InvalidMessage
        | C::InvalidRecord
        | C::UnsupportedCompressionType
        | C::MessageSizeTooLarge
        | C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication => ConsumerFault::Stuck,
        _ => ConsumerFault::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_errors_are_classified() {
        use RDKafkaErrorCode as C;
        for code in [C::NotImplemented, C::BadCompression, C::UnsupportedCompressionType, C::TopicAuthorizationFailed, C::MessageSizeTooLarge] {
            assert_eq!(consumer_fault(code), ConsumerFault::Stuck, "{code:?}");
        }
        for code in [C::OffsetOutOfRange, C::AutoOffsetReset] {
            assert_eq!(consumer_fault(code), ConsumerFault::OutOfRange, "{code:?}");
        }
        for code in [C::BrokerTransportFailure, C::AllBrokersDown, C::NotLeaderForPartition, C::RequestTimedOut] {
            assert_eq!(consumer_fault(code), ConsumerFault::Transient, "{code:?}");
        }
    }
}
