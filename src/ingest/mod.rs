//! The ingest loop: source → decode → batch → lake, one micro-batch at a time.
//!
//! A batch closes at `trigger_interval`, `max_batch_records` or `max_batch_bytes`, whichever
//! comes first. Closing it commits, in order: the batch's dead letters (with their offsets) to
//! `dead_letters`, then each topic's upsert (with its offsets) to the topic table. See
//! `docs/DESIGN.md` for why that order, together with the per-table offset fences, gives
//! exactly-once results across crashes, restarts and rebalances.
//!
//! | file | holds |
//! |---|---|
//! | `pipeline.rs` | the loop and the assignment |
//! | `partitions.rs` | each partition's offsets, log bounds, its `--once` end, markers, offsets outside the log, stalls |
//! | `once.rs` | `--once`: done, failed, interrupted; the partitions other members hold; the direct read |
//! | `batch.rs` | the open batch, the stash and the message references |
//! | `commit.rs` | the two-step commit (dead letters, then tables), its retries, fences |
//! | `source.rs` | the rewinds after a gap or a stall (tansu's inexact fetches) |
//! | `fakes/`, `tests.rs`, `tests/` | (tests) an in-memory broker and lake, and the loop's scenarios on them (`tests/loss.rs`: deleted offsets) |
//! | `model.rs` | (tests) the model-based property test of exactly-once on the fakes |

mod batch;
mod commit;
mod once;
mod partitions;
mod pipeline;
mod source;
#[cfg(test)]
mod fakes;
#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::decode::pool::DecodePool;
use crate::decode::Decoder;
use crate::lake::tables::{DeltaTables, LakeStarts, Tables};
use crate::lake::upsert::UpsertOutcome;
use crate::lake::LakeError;
use crate::metrics::Metrics;
use crate::source::kafka::KafkaSource;
use crate::source::{Source, SourceError};
use pipeline::Pipeline;

/// Errors that stop the ingest.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The broker side failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The lake side failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// Stored offsets could not be read during a rebalance; nothing was committed.
    #[error("rebalance failed: {0}")]
    Rebalance(String),
    /// A bug in lakepipe (such as a decoder thread that panicked); nothing was committed.
    #[error("internal error: {0}")]
    Internal(String),
    /// `--once` did not bring every partition to the end offset it took at the start; what
    /// was read is committed, and a later run continues from there.
    #[error("--once did not reach the end of every partition: {0}")]
    Incomplete(String),
    /// `--once` was stopped by SIGTERM or SIGINT before every partition reached its end; what
    /// was read is committed, and a later run continues from there.
    #[error("--once was interrupted (SIGTERM or SIGINT) before every partition reached its end; what was read is committed and the next run continues from there: {0}")]
    Interrupted(String),
}

impl IngestError {
    /// Whether a restart may succeed without the user changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            IngestError::Config(e) => e.is_retryable(),
            IngestError::Source(e) => e.is_retryable(),
            IngestError::Lake(e) => e.is_retryable(),
            IngestError::Rebalance(_) | IngestError::Incomplete(_) | IngestError::Interrupted(_) => true,
            IngestError::Internal(_) => false,
        }
    }
}

/// Counters for one ingest run.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct IngestSummary {
    /// Messages read (after skipping those already committed).
    pub consumed: u64,
    /// Messages that passed validation.
    pub valid: u64,
    /// Messages written to `dead_letters`.
    pub dead_lettered: u64,
    /// Keys inserted.
    pub inserted: u64,
    /// Rows updated.
    pub updated: u64,
    /// Rows deleted.
    pub deleted: u64,
    /// Records older than the stored row.
    pub stale: u64,
    /// Batches committed.
    pub batches: u64,
    /// Commits that had to be recomputed after a conflict.
    pub conflicts: u64,
    /// Offsets deleted from the broker before they were read, committed past with
    /// `on_data_loss = "skip"` (each range is in its commit's metadata).
    pub skipped_offsets: u64,
}

impl IngestSummary {
    fn add(&mut self, o: &UpsertOutcome) {
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.deleted += o.deleted;
        self.stale += o.stale;
        self.conflicts += o.attempts.saturating_sub(1) as u64;
    }
}

/// Options of one run.
#[derive(Clone, Default)]
pub struct IngestOptions {
    /// Drain each partition to its end, commit and return.
    pub once: bool,
    /// Where to record metrics (a private registry when `None`).
    pub metrics: Option<Arc<Metrics>>,
    /// Show a progress bar (`--once` on a terminal).
    pub progress: bool,
}

/// Run the ingest until shutdown (or, with `once`, until every partition is drained).
pub async fn run(cfg: &Config, opts: IngestOptions) -> Result<IngestSummary, IngestError> {
    let specs = cfg.selected_specs()?;
    let lake = cfg.lake()?;
    lake.check(cfg.connect()).await?;
    let starts = Arc::new(LakeStarts::new(lake.clone(), &cfg.source_name, &cfg.group));
    let topics: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    // Check the broker and the topics before creating any table.
    let source: Box<dyn Source> = if cfg.iggy.trim().is_empty() {
        Box::new(KafkaSource::connect(&cfg.brokers, &cfg.group, &topics, &cfg.kafka, starts.clone(), cfg.connect()).await?)
    } else {
        let address = crate::source::iggy::IggyAddress::parse(&cfg.iggy).map_err(|message| ConfigError::Invalid { origin: Some("iggy".into()), message })?;
        Box::new(crate::source::iggy::IggySource::connect(address, &topics, starts.clone(), Some(&cfg.group)).await?.skip_unreadable(cfg.on_data_loss == crate::config::OnDataLoss::Skip))
    };
    let mut decoders = HashMap::new();
    for spec in &specs {
        decoders.insert(spec.name.clone(), Decoder::new(spec.clone(), cfg.max_message_bytes).map_err(ConfigError::from)?);
    }
    let tables: Box<dyn Tables> = Box::new(DeltaTables::open(&lake, &specs, starts).await?);
    tracing::info!(brokers = %cfg.brokers, lake = %lake.root(), group = %cfg.group, topics = ?topics, once = opts.once, "ingest started");
    let metrics = match &opts.metrics {
        Some(m) => m.clone(),
        None => Metrics::new().map_err(|e| IngestError::Rebalance(e.to_string()))?,
    };
    let pool = DecodePool::new(decoders, std::thread::available_parallelism().map_or(1, |n| n.get()))
        .map_err(|e| IngestError::Internal(format!("cannot start the decoder threads: {e}")))?;
    let mut pipe = Pipeline::new(cfg, opts, source, tables, pool, metrics, Box::pin(shutdown_signal()));
    pipe.run().await
}

/// Resolves at SIGTERM or SIGINT (Ctrl-C): the ingest commits its open batch and stops;
/// `serve` finishes the requests in flight and stops.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

