//! The demo: generate data for all five topics, ingest it once into the lake, and print a
//! latest-version query.

use crate::config::Config;
use crate::generate::{generate, produce, GenerateOptions};
use crate::ingest::{self, IngestOptions, IngestSummary};
use crate::source::kafka::{ensure_topics, KafkaProducer};

/// The query printed at the end of the demo.
pub const DEMO_QUERY: &str = "SELECT date, currency, count(*) AS transactions, sum(amount) AS revenue \
     FROM transactions WHERE status = 'completed' GROUP BY date, currency ORDER BY date, currency";

/// Produce `count` messages to each built-in topic in two halves, ingesting once after each,
/// so the second run shows updates, deletes and late records applied against stored rows.
pub async fn run(cfg: &Config, count: usize) -> Result<IngestSummary, anyhow_free::DemoError> {
    // The demo's data is the built-in topics' (a config's own specs select only those).
    let mut cfg = cfg.clone();
    if cfg.topics.is_empty() {
        cfg.topics = crate::spec::builtin_specs().into_keys().collect();
    }
    let cfg = &cfg;
    let topics: Vec<String> = cfg.selected_specs()?.into_iter().map(|s| s.name).collect();
    ensure_topics(&cfg.brokers, &cfg.kafka, &topics, 3, cfg.connect()).await?;
    let producer = KafkaProducer::new(&cfg.brokers, &cfg.kafka)?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut halves: Vec<(String, Vec<crate::generate::Message>)> = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        let opts = GenerateOptions { shape: topic.clone(), count, seed: 7 + i as u64, ..Default::default() };
        let mut msgs = generate(&opts, now).map_err(anyhow_free::DemoError::Generate)?;
        let second = msgs.split_off(msgs.len() / 2);
        produce(&producer, topic, msgs, None).await?;
        halves.push((topic.clone(), second));
    }
    let first = ingest::run(cfg, IngestOptions { once: true, ..Default::default() }).await?;
    tracing::info!(?first, "first half ingested");
    for (topic, msgs) in halves {
        produce(&producer, &topic, msgs, None).await?;
    }
    let second = ingest::run(cfg, IngestOptions { once: true, ..Default::default() }).await?;
    tracing::info!(?second, "second half ingested");
    Ok(second)
}

/// Errors of the demo (kept free of `anyhow`, which stays at the binary's edge).
pub mod anyhow_free {
    /// What can stop the demo.
    #[derive(Debug, thiserror::Error)]
    pub enum DemoError {
        /// Configuration.
        #[error(transparent)]
        Config(#[from] crate::config::ConfigError),
        /// Broker.
        #[error(transparent)]
        Source(#[from] crate::source::SourceError),
        /// Ingest.
        #[error(transparent)]
        Ingest(#[from] crate::ingest::IngestError),
        /// Generator.
        #[error("{0}")]
        Generate(String),
    }
}
