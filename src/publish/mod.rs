//! Publish: the write path of producers, upstream of the lake. Records reach a broker in four
//! ways (generated, loaded from files, posted over HTTP, or already on Iggy), and every producer
//! publishes through one [`router::Router`] over N brokers, each Kafka or Iggy, each with a
//! [`breaker::Breaker`].
//!
//! Brokers are named by URL: `kafka://host:port[,host:port…]` or `iggy://user:pass@host:port`.
//! A bare `host:port[,…]` (the `--brokers` flag) means one Kafka cluster.

pub mod breaker;
pub mod load;
pub mod router;

use std::time::Duration;

use crate::source::iggy::{IggyAddress, IggyProducer};
use crate::source::kafka::KafkaProducer;
use router::{Router, Sink, Strategy};

/// A record to publish: key and payload (`None` payload: a delete).
pub type Message = (Option<Vec<u8>>, Option<Vec<u8>>);

/// The largest record (key and value together) the Kafka producer takes: its
/// `message.max.bytes` (librdkafka's default 1,000,000 unless `[kafka]` sets another). A larger
/// record fails in the producer before any broker sees it, so it is the sender's to fix and
/// must not count against a broker's breaker.
pub fn max_record_bytes(kafka: &std::collections::BTreeMap<String, String>) -> usize {
    kafka.get("message.max.bytes").and_then(|v| v.trim().parse().ok()).unwrap_or(1_000_000)
}

/// The records of `messages` larger than `limit` (key and value together): (index, bytes).
pub fn oversized(messages: &[Message], limit: usize) -> Vec<(usize, usize)> {
    let size = |(k, v): &Message| k.as_ref().map_or(0, Vec::len) + v.as_ref().map_or(0, Vec::len);
    messages.iter().enumerate().map(|(i, m)| (i, size(m))).filter(|&(_, bytes)| bytes > limit).collect()
}

/// Errors of the publish path.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A broker URL or router setting is wrong (the user's to fix).
    #[error("{0}")]
    Config(String),
    /// No broker acknowledged the batch; nothing of it counts as published (retryable).
    #[error("no broker acknowledged the batch: {0}")]
    AllBrokersFailed(String),
}

impl PublishError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PublishError::AllBrokersFailed(_))
    }
}

/// Where a broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerUrl {
    /// A Kafka cluster: bootstrap servers.
    Kafka(String),
    /// An Iggy server.
    Iggy(IggyAddress),
}

impl BrokerUrl {
    /// Parse `kafka://…`, `iggy://…` or a bare Kafka bootstrap list.
    pub fn parse(url: &str) -> Result<Self, PublishError> {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix("kafka://") {
            if rest.is_empty() || rest.split(',').any(|h| !h.contains(':')) {
                return Err(PublishError::Config(format!("`{url}`: a Kafka URL is kafka://host:port[,host:port…]")));
            }
            return Ok(BrokerUrl::Kafka(rest.to_string()));
        }
        if url.starts_with("iggy://") {
            return IggyAddress::parse(url).map(BrokerUrl::Iggy).map_err(PublishError::Config);
        }
        if url.contains("://") {
            return Err(PublishError::Config(format!("`{}`: a broker URL starts with kafka:// or iggy://", redact(url))));
        }
        if url.is_empty() {
            return Err(PublishError::Config("an empty broker address".into()));
        }
        Ok(BrokerUrl::Kafka(url.to_string()))
    }

    /// The address with any password removed, for logs and `/health`.
    pub fn display(&self) -> String {
        match self {
            BrokerUrl::Kafka(b) => format!("kafka://{b}"),
            BrokerUrl::Iggy(a) => a.display(),
        }
    }
}

/// `scheme://user:secret@host` → `scheme://user:***@host`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// A connected broker client.
pub enum Client {
    /// Kafka (idempotent, `acks=all`).
    Kafka(KafkaProducer),
    /// Iggy.
    Iggy(IggyProducer),
}

impl Sink for Client {
    async fn send<'a>(&'a self, topic: &'a str, batch: &'a [Message]) -> Result<(), String> {
        match self {
            Client::Kafka(p) => p.send_all(topic, batch.iter().cloned()).await.map(|_| ()).map_err(|e| e.to_string()),
            Client::Iggy(p) => p.send(topic, batch).await.map_err(|e| e.to_string()),
        }
    }
}

/// Router settings.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// Brokers in priority order: `(role, url)`.
    pub brokers: Vec<(String, BrokerUrl)>,
    /// How to pick.
    pub strategy: Strategy,
    /// The breaker thresholds.
    pub breaker: breaker::BreakerConfig,
    /// How long one broker may take to acknowledge a batch before the next is tried.
    pub attempt_timeout: Duration,
    /// Extra librdkafka producer settings.
    pub kafka: std::collections::BTreeMap<String, String>,
}

/// Connect every broker and build the router.
pub async fn connect(opts: &RouterOptions) -> Result<Router<Client>, PublishError> {
    let mut members = Vec::new();
    for (role, url) in &opts.brokers {
        let client = match url {
            BrokerUrl::Kafka(brokers) => {
                // The router decides when to move on to the next broker; librdkafka keeps
                // retrying in the background for as long as the last broker may take
                // (a batch that lands twice is harmless downstream).
                let mut extra = opts.kafka.clone();
                let timeout_ms = router::SINGLE_BROKER_TIMEOUT.as_millis() as u64;
                extra.entry("message.timeout.ms".into()).or_insert_with(|| timeout_ms.to_string());
                Client::Kafka(KafkaProducer::new(brokers, &extra).map_err(|e| PublishError::Config(e.to_string()))?)
            }
            BrokerUrl::Iggy(addr) => Client::Iggy(IggyProducer::new(addr.clone())),
        };
        members.push((role.clone(), url.display(), client));
    }
    Router::new(members, opts.strategy, opts.breaker, opts.attempt_timeout)
}

/// What a publish run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PublishSummary {
    /// Records acknowledged.
    pub published: u64,
    /// Records acknowledged, per broker role.
    pub per_broker: std::collections::BTreeMap<String, u64>,
    /// Batches that went to another broker than the first one tried.
    pub failovers: u64,
}

/// Create `topics` on every Kafka member that answers (Iggy topics are created on first send).
/// A member that is down is reported and skipped: the router will route around it.
pub async fn ensure_topics(opts: &RouterOptions, topics: &[String], partitions: i32, timeout: Duration) -> Result<(), PublishError> {
    let mut errors = Vec::new();
    for (role, url) in &opts.brokers {
        if let BrokerUrl::Kafka(brokers) = url {
            if let Err(e) = crate::source::kafka::ensure_topics(brokers, &opts.kafka, topics, partitions, timeout).await {
                tracing::warn!(broker = %role, error = %e, "cannot create topics on this broker");
                errors.push(format!("{role}: {e}"));
            }
        }
    }
    if !errors.is_empty() && errors.len() == opts.brokers.len() {
        return Err(PublishError::AllBrokersFailed(errors.join("; ")));
    }
    Ok(())
}

/// Publish `messages` in batches of `batch_size` (at most `rate` records a second, if set),
/// advancing `progress`. Stops at the first batch no broker acknowledged: everything before it
/// is acknowledged, nothing after it was sent.
pub async fn publish_all<S: Sink>(
    router: &Router<S>,
    topic: &str,
    messages: &[Message],
    batch_size: usize,
    rate: Option<f64>,
    progress: &crate::progress::Progress,
) -> Result<PublishSummary, (PublishSummary, PublishError)> {
    let mut summary = PublishSummary::default();
    let chunk = match rate {
        Some(r) => ((r / 10.0).ceil() as usize).clamp(1, batch_size.max(1)),
        None => batch_size.max(1),
    };
    let total = messages.len() as u64;
    for part in messages.chunks(chunk) {
        let started = tokio::time::Instant::now();
        match router.publish(topic, part).await {
            Ok(d) => {
                summary.published += part.len() as u64;
                *summary.per_broker.entry(d.broker).or_default() += part.len() as u64;
                if !d.failed_over_from.is_empty() {
                    summary.failovers += 1;
                }
            }
            Err(e) => return Err((summary, e)),
        }
        progress.set(summary.published, Some(total));
        if let Some(r) = rate {
            tokio::time::sleep_until(started + Duration::from_secs_f64(part.len() as f64 / r)).await;
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_broker_urls() {
        assert_eq!(BrokerUrl::parse("kafka://a:1,b:2").unwrap(), BrokerUrl::Kafka("a:1,b:2".into()));
        assert_eq!(BrokerUrl::parse("127.0.0.1:9092").unwrap(), BrokerUrl::Kafka("127.0.0.1:9092".into()));
        assert!(BrokerUrl::parse("kafka://").is_err());
        assert!(BrokerUrl::parse("kafka://nohost").is_err());
        let e = BrokerUrl::parse("pulsar://u:topsecret@h:1").unwrap_err().to_string();
        assert!(e.contains("kafka:// or iggy://") && !e.contains("topsecret"), "{e}");
        let iggy = BrokerUrl::parse("iggy://iggy:pw@127.0.0.1:8090").unwrap();
        assert!(!iggy.display().contains("pw"), "{}", iggy.display());
        assert!(BrokerUrl::parse("iggy://127.0.0.1").is_err());
    }
}
