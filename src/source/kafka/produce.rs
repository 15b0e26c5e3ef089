//! Kafka's writing side: creating topics and the idempotent producer (`generate`, the demo,
//! and the router's Kafka member).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::client_config;
use crate::source::SourceError;

/// The `[kafka]` properties an admin client accepts: the connection and security ones, not a
/// producer's or a consumer's (librdkafka warns about those on an admin client).
fn admin_properties(extra: &std::collections::BTreeMap<String, String>) -> std::collections::BTreeMap<String, String> {
    extra
        .iter()
        .filter(|(k, _)| ["security.", "ssl.", "ssl_", "sasl.", "client.", "socket.", "broker.", "metadata.", "enable.ssl"].iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Create the topics that are missing (used by `generate` and the demo), with the `[kafka]`
/// properties (TLS, SASL) of the cluster.
pub async fn ensure_topics(
    brokers: &str,
    extra: &std::collections::BTreeMap<String, String>,
    topics: &[String],
    partitions: i32,
    timeout: Duration,
) -> Result<(), SourceError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, &admin_properties(extra))
        .create()
        .map_err(|e| SourceError::Config { reason: e.to_string() })?;
    let md = tokio::task::block_in_place(|| admin.inner().fetch_metadata(None, timeout))
        .map_err(|e| SourceError::Unreachable { brokers: brokers.to_string(), reason: e.to_string() })?;
    let missing: Vec<&String> = topics.iter().filter(|t| !md.topics().iter().any(|m| m.name() == t.as_str() && !m.partitions().is_empty())).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let new: Vec<NewTopic> = missing.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new().operation_timeout(Some(timeout)))
        .await
        .map_err(|e| SourceError::Broker { brokers: brokers.to_string(), reason: e.to_string() })?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(SourceError::Broker { brokers: brokers.to_string(), reason: format!("create topic {t}: {code}") }),
        }
    }
    // Wait until the new topics show up in metadata.
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let md = tokio::task::block_in_place(|| admin.inner().fetch_metadata(None, Duration::from_secs(5)))
            .map_err(|e| SourceError::Unreachable { brokers: brokers.to_string(), reason: e.to_string() })?;
        if missing.iter().all(|t| md.topics().iter().any(|m| m.name() == t.as_str() && !m.partitions().is_empty())) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(SourceError::Broker { brokers: brokers.to_string(), reason: "created topics did not appear in metadata".into() });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An idempotent producer with `acks=all`.
pub struct KafkaProducer {
    producer: FutureProducer,
    brokers: String,
}

impl KafkaProducer {
    /// Create a producer.
    pub fn new(brokers: &str, extra: &std::collections::BTreeMap<String, String>) -> Result<Self, SourceError> {
        let mut cfg = client_config(brokers, &Default::default());
        cfg.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5").set("message.timeout.ms", "30000");
        for (k, v) in extra {
            cfg.set(k, v);
        }
        let producer = cfg.create().map_err(|e| SourceError::Config { reason: e.to_string() })?;
        Ok(KafkaProducer { producer, brokers: brokers.to_string() })
    }

    /// Send many messages and wait until the broker acknowledged each one.
    pub async fn send_all(&self, topic: &str, messages: impl IntoIterator<Item = (Option<Vec<u8>>, Option<Vec<u8>>)>) -> Result<usize, SourceError> {
        let mut pending = futures::stream::FuturesOrdered::new();
        let mut sent = 0;
        use futures::StreamExt;
        for (key, payload) in messages {
            let producer = self.producer.clone();
            let topic = topic.to_string();
            pending.push_back(async move {
                let mut rec: FutureRecord<'_, Vec<u8>, Vec<u8>> = FutureRecord::to(&topic);
                if let Some(k) = key.as_ref() {
                    rec = rec.key(k);
                }
                if let Some(p) = payload.as_ref() {
                    rec = rec.payload(p);
                }
                producer.send(rec, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e)
            });
            if pending.len() >= 10_000 {
                if let Some(r) = pending.next().await {
                    r.map_err(|e: KafkaError| SourceError::Broker { brokers: self.brokers.clone(), reason: e.to_string() })?;
                    sent += 1;
                }
            }
        }
        while let Some(r) = pending.next().await {
            r.map_err(|e: KafkaError| SourceError::Broker { brokers: self.brokers.clone(), reason: e.to_string() })?;
            sent += 1;
        }
        Ok(sent)
    }
}
