//! What the audit reads from a broker: a topic's partitions, their messages from the start up
//! to the offsets the lake committed, and each partition's end. Kafka through a consumer of its
//! own (outside the ingest's group, committing nothing); Iggy through a direct reader (outside
//! the ingest's consumer group, storing nothing).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::source::iggy::{IggyAddress, IggySource};
use crate::source::{NoStoredOffsets, Polled, RawMessage, Source, TopicPartition};

/// A reader of one topic's log.
pub(super) enum Log {
    /// Kafka.
    Kafka(StreamConsumer),
    /// Iggy, with the messages of its last poll not yet taken, and the (partition, offset) of
    /// each message the server could not read.
    Iggy(Box<IggySource>, VecDeque<RawMessage>, Vec<(i32, i64)>),
}

impl Log {
    /// A reader of `topic` on the Kafka brokers `brokers`, with its partitions.
    pub(super) fn kafka(
        brokers: &str,
        extra: &BTreeMap<String, String>,
        topic: &str,
    ) -> Result<(Log, Vec<i32>), String> {
        let mut cfg = crate::source::kafka::client_config(brokers, extra);
        cfg.set(
            "group.id",
            format!("lakepipe-audit-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
        let consumer: StreamConsumer = cfg.create().map_err(|e| e.to_string())?;
        let md = tokio::task::block_in_place(|| {
            consumer.fetch_metadata(Some(topic), Duration::from_secs(15))
        })
        .map_err(|e| e.to_string())?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        Ok((Log::Kafka(consumer), partitions))
    }

    /// A reader of `topic` on the Iggy server at `url`, with its partitions.
    pub(super) async fn iggy(url: &str, topic: &str) -> Result<(Log, Vec<i32>), String> {
        let address = IggyAddress::parse(url)?;
        let source = IggySource::connect(
            address,
            &[topic.to_string()],
            Arc::new(NoStoredOffsets),
            None,
        )
        .await
        .map_err(|e| e.to_string())?
        .skip_unreadable(true);
        let partitions = source.partitions().into_iter().map(|(_, p)| p).collect();
        Ok((
            Log::Iggy(Box::new(source), VecDeque::new(), Vec::new()),
            partitions,
        ))
    }

    /// Read `partitions` of `topic` from their start.
    pub(super) fn start(&mut self, topic: &str, partitions: &[i32]) -> Result<(), String> {
        match self {
            Log::Kafka(consumer) => {
                let mut tpl = TopicPartitionList::new();
                for &p in partitions {
                    tpl.add_partition_offset(topic, p, Offset::Beginning)
                        .map_err(|e| e.to_string())?;
                }
                consumer.assign(&tpl).map_err(|e| e.to_string())
            }
            Log::Iggy(source, ..) => {
                let keep: Vec<TopicPartition> =
                    partitions.iter().map(|p| (topic.to_string(), *p)).collect();
                source.retain(&keep);
                Ok(())
            }
        }
    }

    /// The next message; `None` after `idle` without one.
    pub(super) async fn next(&mut self, idle: Duration) -> Result<Option<RawMessage>, String> {
        match self {
            Log::Kafka(consumer) => match tokio::time::timeout(idle, consumer.recv()).await {
                Err(_) => Ok(None),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok(m)) => Ok(Some(RawMessage {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    timestamp_ms: None,
                })),
            },
            Log::Iggy(source, ready, stepped) => {
                // A message the server cannot read (Iggy 0.8 after a kill during a write) is
                // stepped over: the lake can hold nothing from it, and owes nothing for it only
                // where its commit recorded the skip (the audit's skipped ranges).
                for _ in 0..2 {
                    if !ready.is_empty() {
                        break;
                    }
                    if let Polled::Messages(messages) = Source::next(source.as_ref(), idle, 10_000)
                        .await
                        .map_err(|e| e.to_string())?
                    {
                        ready.extend(messages.into_iter().map(|(_, m)| m));
                    }
                    for ((topic, partition), offset) in source.step_over_unreadable() {
                        tracing::warn!(%topic, partition, offset, "the Iggy server cannot read this message; the audit steps over it");
                        stepped.push((partition, offset));
                    }
                }
                Ok(ready.pop_front())
            }
        }
    }

    /// The (partition, offset) of each message the broker could not serve, stepped over.
    pub(super) fn stepped_over(&self) -> &[(i32, i64)] {
        match self {
            Log::Kafka(_) => &[],
            Log::Iggy(_, _, stepped) => stepped,
        }
    }

    /// The partition's end: from fetch responses when known, else from the broker.
    pub(super) fn end(&self, topic: &str, partition: i32) -> Option<i64> {
        match self {
            Log::Kafka(consumer) => {
                if let Some(hi) =
                    crate::source::kafka::cached_high_watermark(consumer.client(), topic, partition)
                {
                    return Some(hi);
                }
                // Partitions that were not read: ask the broker (tansu reports the last batch's
                // base + 1 here, which can only under-state the end, never hide an offset
                // beyond it).
                tokio::task::block_in_place(|| {
                    consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))
                })
                .ok()
                .map(|(_, h)| h)
            }
            Log::Iggy(source, ..) => source.end_offset(topic, partition),
        }
    }
}
