//! The loop: poll, take, commit, `--once`'s check after each turn; the assignment from the
//! source.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::batch::{DecodedBatch, MsgRef};
use super::once::{OnceStep, OnceWatch, OtherPart};
use super::partitions::PartState;
use super::{IngestError, IngestOptions, IngestSummary};
use crate::config::Config;
use crate::decode::pool::DecodePool;
use crate::lake::tables::Tables;
use crate::metrics::Metrics;
use crate::source::{Polled, Source, SourceError, StartLoader, TopicPartition};
use crate::FastMap;

pub(super) struct Pipeline<'c> {
    pub(super) cfg: &'c Config,
    pub(super) progress: crate::progress::Progress,
    pub(super) metrics: Arc<Metrics>,
    pub(super) opts: IngestOptions,
    pub(super) source: Box<dyn Source>,
    /// [`Source::inexact_seeks`], asked once: [`Pipeline::take`] reads it per message.
    pub(super) inexact_seeks: bool,
    /// Each partition's stored offsets (from [`Tables::starts`]).
    pub(super) loader: Arc<dyn StartLoader>,
    pub(super) tables: Box<dyn Tables>,
    /// Decodes each poll's messages in the background.
    pub(super) pool: DecodePool,
    /// The open batch, decoded: kept across retries of its commit.
    pub(super) decoded: Option<DecodedBatch>,
    pub(super) parts: FastMap<TopicPartition, PartState>,
    pub(super) generation: u64,
    pub(super) assigned: bool,
    /// `--once` left the group and reads every partition itself (see
    /// [`Pipeline::read_directly`]).
    pub(super) direct: bool,
    /// `--once`: the partitions of the topics that other members hold, with the log start and
    /// end each had when this run first looked, and the lake's offset at the last look.
    pub(super) others: BTreeMap<TopicPartition, OtherPart>,
    pub(super) pending: FastMap<String, Vec<MsgRef>>,
    /// The partition of the last message taken (see [`Pipeline::take`]).
    pub(super) last_tp: Option<TopicPartition>,
    pub(super) pending_records: usize,
    pub(super) pending_bytes: usize,
    /// Messages read while a batch was committing: the next batch's first messages. Taken as
    /// soon as the commit ends, before any later message, so that no offset is skipped.
    pub(super) stash: Vec<MsgRef>,
    pub(super) opened: Instant,
    pub(super) summary: IngestSummary,
    /// Resolves when the run is asked to stop (SIGTERM, SIGINT).
    pub(super) shutdown: BoxFuture<'static, ()>,
}

impl<'c> Pipeline<'c> {
    /// A loop over `source` and `tables` that decodes in `pool`, before any assignment.
    pub(super) fn new(
        cfg: &'c Config,
        opts: IngestOptions,
        source: Box<dyn Source>,
        tables: Box<dyn Tables>,
        pool: DecodePool,
        metrics: Arc<Metrics>,
        shutdown: BoxFuture<'static, ()>,
    ) -> Self {
        Pipeline {
            shutdown,
            cfg,
            progress: crate::progress::Progress::new(opts.once && opts.progress, "messages"),
            metrics,
            opts,
            inexact_seeks: source.inexact_seeks(),
            source,
            loader: tables.starts(),
            tables,
            pool,
            decoded: None,
            parts: FastMap::default(),
            generation: 0,
            assigned: false,
            direct: false,
            others: BTreeMap::new(),
            pending: FastMap::default(),
            last_tp: None,
            pending_records: 0,
            pending_bytes: 0,
            stash: Vec::new(),
            opened: Instant::now(),
            summary: IngestSummary::default(),
        }
    }

    pub(super) async fn run(&mut self) -> Result<IngestSummary, IngestError> {
        let result = self.run_inner().await;
        // A stored offset outside the broker's log is reported by librdkafka without the
        // partition: name it, with both offsets, from the lake and the broker.
        match result {
            Err(IngestError::Source(SourceError::OutOfRange { brokers, reason })) => {
                let tps: Vec<TopicPartition> = self.parts.keys().cloned().collect();
                let mut named = self.explain_out_of_range(&tps);
                if named.is_empty() {
                    named = self.refused_step_backs();
                }
                named.retain(|n| !reason.contains(n.as_str()));
                let reason = if named.is_empty() { reason } else { format!("{reason}: {}", named.join("; ")) };
                Err(IngestError::Source(SourceError::OutOfRange { brokers, reason }))
            }
            other => other,
        }
    }

    pub(super) async fn run_inner(&mut self) -> Result<IngestSummary, IngestError> {
        let trigger = self.cfg.trigger();
        let mut watch = OnceWatch::new();
        let mut last_stall_check = Instant::now();
        loop {
            // Messages taken from the stash of the last commit may have found a gap.
            self.apply_rewinds()?;
            self.stop_on_deleted().await?;
            let mut wait = trigger.saturating_sub(self.opened.elapsed()).max(Duration::from_millis(10));
            if self.opts.once {
                wait = wait.min(Duration::from_millis(200));
            }
            // A full batch (the stash of the last commit can fill one) is committed first.
            let event = if self.is_full() {
                Polled::Nothing
            } else {
                tokio::select! {
                    _ = &mut self.shutdown => {
                        tracing::info!("shutdown requested; committing the open batch");
                        if !self.flush_with_retry().await? {
                            tracing::warn!("the open batch was dropped: another writer owns its partitions");
                        }
                        if self.opts.once {
                            return self.interrupted().await;
                        }
                        break;
                    }
                    r = self.source.next(wait, self.cfg.max_batch_records - self.pending_records) => match r {
                        Ok(polled) => polled,
                        Err(e) => {
                            self.survive(e.into()).await?;
                            Polled::Nothing
                        }
                    },
                }
            };
            if self.sync_assignment().await? {
                // What this poll returned may predate the new assignment; every partition was
                // sought to the lake's offset, so it comes again.
                if self.assigned && !self.parts.is_empty() {
                    watch.progressed();
                }
                continue;
            }
            if let Polled::Messages(batch) = event {
                for r in MsgRef::all(self.pool.submit(batch)) {
                    self.take(r);
                }
                self.apply_rewinds()?;
                self.stop_on_deleted().await?;
            }
            if last_stall_check.elapsed() >= Duration::from_millis(500) {
                last_stall_check = Instant::now();
                self.fix_stops();
                self.skip_markers();
                if let Err(e) = self.check_offsets() {
                    return Err(self.keep_reads(e).await);
                }
                self.rewind_stalled()?;
                self.update_lag();
                self.show_progress();
            }
            let progress = self.parts.values().any(|s| s.has_progress());
            if !progress {
                self.opened = Instant::now();
            }
            if progress && (self.is_full() || self.opened.elapsed() >= trigger) {
                // A read during the commit can meet offsets the broker deleted.
                if let Err(e) = self.flush_with_retry().await {
                    self.survive(e).await?;
                }
            }
            if self.opts.once && self.once_step(&mut watch).await? == OnceStep::Done {
                break;
            }
        }
        self.progress.finish();
        Ok(self.summary.clone())
    }

    /// Adopt a new assignment from the rebalance callback: drop the open batch and the stash,
    /// read each partition's offsets from the lake again, and seek every partition there
    /// before anything is taken. The callback's own reading can predate a commit that was in
    /// flight when it ran, and the consumer may already have delivered messages past it.
    /// Returns whether the assignment changed.
    pub(super) async fn sync_assignment(&mut self) -> Result<bool, IngestError> {
        let Some(change) = self.source.assignment_change(self.generation).map_err(IngestError::Rebalance)? else { return Ok(false) };
        let (generation, assigned, partitions) = (change.generation, change.assigned, change.partitions);
        self.generation = generation;
        self.assigned = assigned;
        self.metrics.set_ready(assigned);
        if self.pending_records > 0 || !self.stash.is_empty() {
            tracing::info!(dropped = self.pending_records + self.stash.len(), "rebalance: dropping the uncommitted batch; it is re-read from the lake's offsets");
        }
        self.clear_pending();
        self.stash.clear();
        let starts = if partitions.is_empty() { HashMap::new() } else { self.loader.load(&partitions).await.map_err(IngestError::Rebalance)? };
        let seeks: Vec<(TopicPartition, Option<i64>)> = partitions.iter().map(|tp| (tp.clone(), starts.get(tp).and_then(|s| s.data))).collect();
        if !seeks.is_empty() {
            self.source.seek(&seeks)?;
        }
        let listed = self.source.listed_watermarks(&partitions, self.cfg.connect());
        self.parts = partitions
            .iter()
            .map(|tp| {
                let s = starts.get(tp).cloned().unwrap_or_default();
                let listed = listed.get(tp).copied();
                let state = PartState {
                    start: s.data,
                    dead: s.dead,
                    since: Some(Instant::now()),
                    origin: s.data,
                    listed,
                    stop: listed.map(|(_, hi)| hi),
                    ..Default::default()
                };
                (tp.clone(), state)
            })
            .collect();
        Ok(true)
    }

    /// `--once`: messages read since assignment, of those up to each partition's stop offset.
    pub(super) fn show_progress(&self) {
        let mut done = 0u64;
        let mut total = Some(0u64);
        for s in self.parts.values() {
            let origin = s.origin.unwrap_or(0);
            done += (s.position().unwrap_or(origin) - origin).max(0) as u64;
            total = match (total, s.stop) {
                (Some(t), Some(stop)) => Some(t + (stop - origin).max(0) as u64),
                _ => None,
            };
        }
        self.progress.set(done, total);
    }

    /// Publish committed offsets and lag (to the last stable offset of fetch responses).
    pub(super) fn update_lag(&self) {
        for ((topic, p), s) in &self.parts {
            let part = p.to_string();
            if let Some(c) = s.start {
                self.metrics.committed_offset.with_label_values(&[topic.as_str(), part.as_str()]).set(c);
            }
            if let Some(h) = self.source.cached_stable_end(topic, *p) {
                let lag = (h - s.start.unwrap_or(0)).max(0);
                self.metrics.consumer_lag.with_label_values(&[topic.as_str(), part.as_str()]).set(lag);
            }
        }
    }
}
