//! The brokers as the loop sees them (Kafka or Iggy), and the rewinds that make tansu 0.6's
//! inexact fetches exact.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;

use super::partitions::STALL_AFTER;
use super::pipeline::Pipeline;
use super::IngestError;
use crate::source::kafka::{consumer_fault, ConsumerFault, KafkaSource};
use crate::source::{RawMessage, SourceError, StartLoader, TopicPartition};

/// One poll of the consumer, owned.
pub(super) enum Polled {
    /// Messages in arrival order, with their topics.
    Messages(Vec<(Arc<str>, RawMessage)>),
    Nothing,
}

/// At most this many messages are taken from the consumer's queue per poll: it amortises the
/// timer and the event loop over many messages without starving the loop's other duties.
pub(super) const MAX_PER_POLL: usize = 4096;

/// Where messages come from: a Kafka consumer-group member, or an Iggy reader of every
/// partition. Both start each partition at the lake's offset.
pub(super) enum Source {
    Kafka(KafkaSource),
    Iggy(crate::source::iggy::IggySource),
}

/// A message or event from the Kafka consumer: `Ok(None)` for events that carry no data.
/// `topic` holds the last message's topic name, shared rather than copied per message.
pub(super) fn kafka_event(k: &KafkaSource, polled: KafkaResult<BorrowedMessage<'_>>, topic: &mut Option<Arc<str>>) -> Result<Option<(Arc<str>, RawMessage)>, IngestError> {
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
        Err(KafkaError::MessageConsumptionFatal(code)) => Err(IngestError::Source(SourceError::Stuck {
            brokers: k.brokers().to_string(),
            reason: format!("fatal consumer error: {code}"),
        })),
        Err(KafkaError::MessageConsumption(code)) => match consumer_fault(code) {
            ConsumerFault::Transient => {
                tracing::warn!(error = %code, "consumer error; librdkafka retries");
                Ok(None)
            }
            // The lake's offset is outside the broker's log: retention removed messages that
            // were never ingested, or the log was replaced. Never skipped silently; the
            // pipeline names the partitions (see `Pipeline::explain_out_of_range`).
            ConsumerFault::OutOfRange => Err(IngestError::Source(SourceError::OutOfRange {
                brokers: k.brokers().to_string(),
                reason: format!("{code}: a stored offset is outside the broker's log"),
            })),
            ConsumerFault::Stuck => Err(IngestError::Source(SourceError::Stuck {
                brokers: k.brokers().to_string(),
                reason: match code {
                    RDKafkaErrorCode::NotImplemented | RDKafkaErrorCode::UnsupportedCompressionType => {
                        format!("{code}: a batch uses a compression codec this build cannot read")
                    }
                    _ => code.to_string(),
                },
            })),
        },
        Err(e) => {
            tracing::warn!(error = %e, "consumer error");
            Ok(None)
        }
    }
}

impl Source {
    /// The next messages, or nothing within `wait`.
    pub(super) async fn next(&self, wait: Duration, max: usize) -> Result<Polled, IngestError> {
        match self {
            Source::Kafka(k) => {
                let Ok(first) = tokio::time::timeout(wait, k.consumer.recv()).await else { return Ok(Polled::Nothing) };
                let mut topic = None;
                let mut out: Vec<(Arc<str>, RawMessage)> = kafka_event(k, first, &mut topic)?.into_iter().collect();
                if out.is_empty() {
                    return Ok(Polled::Nothing);
                }
                // Whatever else is already queued, without waiting.
                while out.len() < max.min(MAX_PER_POLL) {
                    match k.consumer.recv().now_or_never() {
                        Some(polled) => match kafka_event(k, polled, &mut topic)? {
                            Some(m) => out.push(m),
                            None => break,
                        },
                        None => break,
                    }
                }
                Ok(Polled::Messages(out))
            }
            Source::Iggy(i) => match i.recv(wait, max.min(10_000) as u32).await {
                Ok(Some((topic, m))) => Ok(Polled::Messages(vec![(topic.into(), m)])),
                Ok(None) => Ok(Polled::Nothing),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "Iggy poll failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Ok(Polled::Nothing)
                }
                Err(e) => Err(e.into()),
            },
        }
    }

    pub(super) fn assignment(&self) -> &Arc<std::sync::Mutex<crate::source::kafka::Assignment>> {
        match self {
            Source::Kafka(k) => &k.assignment,
            Source::Iggy(i) => &i.assignment,
        }
    }

    pub(super) fn cached_high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        self.cached_watermarks(topic, partition).map(|(_, hi)| hi)
    }

    /// The log start (when reported) and end from the last fetch, without a broker round trip.
    pub(super) fn cached_watermarks(&self, topic: &str, partition: i32) -> Option<(Option<i64>, i64)> {
        match self {
            Source::Kafka(k) => k.cached_watermarks(topic, partition),
            Source::Iggy(i) => i.end_offset(topic, partition).map(|end| (None, end)),
        }
    }

    /// The log start and end the broker lists now (Kafka's ListOffsets; Iggy: none).
    pub(super) fn listed_watermarks(&self, partitions: &[TopicPartition], timeout: Duration) -> HashMap<TopicPartition, (i64, i64)> {
        match self {
            Source::Kafka(k) => k.listed_watermarks(partitions, timeout),
            Source::Iggy(_) => HashMap::new(),
        }
    }

    /// Every partition of the subscribed topics, this member's or not. Iggy's reader holds
    /// every partition itself, so it has none that are another's.
    pub(super) fn all_partitions(&self, timeout: Duration) -> Result<Vec<TopicPartition>, IngestError> {
        match self {
            Source::Kafka(k) => Ok(k.all_partitions(timeout)?),
            Source::Iggy(_) => Ok(Vec::new()),
        }
    }

    /// The client's position in each partition, past transaction markers (Kafka only).
    pub(super) fn positions(&self) -> Vec<(TopicPartition, i64)> {
        match self {
            Source::Kafka(k) => k.positions(),
            Source::Iggy(_) => Vec::new(),
        }
    }

    pub(super) fn commit_advisory(&self, offsets: &[(TopicPartition, i64)]) {
        if let Source::Kafka(k) = self {
            k.commit_advisory(offsets);
        }
    }

    pub(super) fn seek(&self, starts: &[(TopicPartition, Option<i64>)]) -> Result<(), SourceError> {
        match self {
            Source::Kafka(k) => k.seek(starts),
            Source::Iggy(i) => {
                i.seek(starts);
                Ok(())
            }
        }
    }

    /// `_source` of the rows: the kind of broker.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Source::Kafka(_) => "kafka",
            Source::Iggy(_) => "iggy",
        }
    }
}


impl Pipeline<'_> {
    /// Seek the partitions whose first message after a seek came after a gap (see
    /// [`Pipeline::take`]) to their log start; what is below the stored offset is skipped.
    pub(super) fn apply_rewinds(&mut self) -> Result<(), IngestError> {
        let mut seeks = Vec::new();
        for (tp, s) in self.parts.iter_mut().filter(|(_, s)| s.rewind_pending) {
            s.rewind_pending = false;
            s.delivered = false;
            s.rewound = true;
            seeks.push((tp.clone(), None));
        }
        if !seeks.is_empty() {
            self.source.seek(&seeks)?;
        }
        Ok(())
    }

    /// Some brokers (tansu 0.6) return nothing when a fetch starts inside a producer's record
    /// batch, which is where a stored offset usually points. A partition that has data beyond
    /// its offset but delivers nothing for a while is re-read from the beginning; messages below
    /// the stored offset are skipped, so this costs time, never correctness.
    pub(super) fn rewind_stalled(&mut self) -> Result<(), IngestError> {
        // The workaround is for tansu's fetch; Iggy reads at exact offsets.
        if matches!(self.source, Source::Iggy(_)) {
            return Ok(());
        }
        let mut stalled = Vec::new();
        for ((topic, p), state) in self.parts.iter_mut() {
            if state.got_message || state.rewound || state.since.is_none_or(|t| t.elapsed() < STALL_AFTER) {
                continue;
            }
            let Some(hwm) = self.source.cached_high_watermark(topic, *p) else { continue };
            if state.start.is_some_and(|s| hwm > s) {
                state.rewound = true;
                // Reading from the start is itself the check for skipped offsets.
                state.delivered = false;
                state.gap_checked = true;
                stalled.push(((topic.clone(), *p), None));
            }
        }
        if !stalled.is_empty() {
            let names: Vec<String> = stalled.iter().map(|((t, p), _)| format!("{t}/{p}")).collect();
            tracing::warn!(partitions = ?names, "the broker returns no data from the stored offset although more exists; re-reading from the beginning and skipping what is committed");
            self.source.seek(&stalled)?;
        }
        Ok(())
    }

    /// `--once` on Kafka, when the group has given this member no partitions and nothing has
    /// moved for `waited`: leave the group and read every partition of the topics directly,
    /// from the lake's offsets. Exactly-once does not rest on the coordinator: the lake's
    /// offset fences stop this run, or any member still writing, from committing a range twice.
    /// Returns whether it did (not on Iggy, whose reader holds every partition already).
    pub(super) async fn read_directly(&mut self, waited: Duration) -> Result<bool, IngestError> {
        let Source::Kafka(k) = &self.source else { return Ok(false) };
        let all = k.all_partitions(self.cfg.connect())?;
        if all.is_empty() {
            return Ok(false);
        }
        let starts = self.loader.load(&all).await.map_err(IngestError::Rebalance)?;
        let seeks: Vec<(TopicPartition, Option<i64>)> = all.iter().map(|tp| (tp.clone(), starts.get(tp).and_then(|s| s.data))).collect();
        tracing::warn!(
            partitions = all.len(),
            ?waited,
            "--once: the group assigned this member no partitions and nothing moved; leaving the group and reading every partition directly (the lake's offset fences keep this exactly once)"
        );
        let topics: Vec<String> = self.tables.keys().cloned().collect();
        let direct = KafkaSource::direct(&self.cfg.brokers, &self.cfg.group, &topics, &self.cfg.kafka, self.loader.clone(), &seeks, self.generation + 1)?;
        // Dropping the member leaves the group (a blocking close).
        let member = std::mem::replace(&mut self.source, Source::Kafka(direct));
        tokio::task::block_in_place(|| drop(member));
        self.direct = true;
        Ok(true)
    }
}
