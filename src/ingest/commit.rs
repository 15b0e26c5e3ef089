//! The two-step commit of a batch (dead letters, then each topic's table), its retries, and
//! the restart of partitions whose offsets another writer moved.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::batch::{DecodedBatch, MsgRef};
use super::partitions::PartState;
use super::pipeline::Pipeline;
use super::IngestError;
use crate::config::Config;
use crate::config::OnDataLoss;
use crate::lake::commit::{OffsetKey, OffsetRange, SkippedRange};
use crate::lake::tables::{TableResult, TopicBatch};
use crate::lake::LakeError;
use crate::source::{Polled, SourceError, TopicPartition};

pub(super) fn offset_key(cfg: &Config, topic: &str, partition: i32) -> OffsetKey {
    OffsetKey { source: cfg.source_name.clone(), group: cfg.group.clone(), topic: topic.to_string(), partition }
}


impl Pipeline<'_> {
    pub(super) async fn flush_with_retry(&mut self) -> Result<bool, IngestError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.flush().await {
                Ok(done) => return Ok(done),
                Err(e) if e.is_retryable() && attempt < 5 => {
                    tracing::warn!(error = %e, attempt, "batch commit failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * attempt as u64)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Commit the open batch. Safe to call again after a failure: progress already committed
    /// is recorded in `parts` and skipped.
    /// Returns `false` when the batch was dropped because another writer moved the offsets.
    pub(super) async fn flush(&mut self) -> Result<bool, IngestError> {
        if !self.parts.values().any(|s| s.has_progress()) {
            self.clear_pending();
            self.take_stash();
            return Ok(true);
        }
        let started = Instant::now();
        if self.decoded.is_none() {
            self.decoded = Some(self.decode_batch().await?);
        }
        let Some(DecodedBatch { records, letters, consumed, consumed_per_topic, dead_lettered }) = &mut self.decoded else {
            return Err(IngestError::Internal("the decoded batch vanished".into()));
        };
        let (consumed, dead_lettered) = (*consumed, *dead_lettered);

        // 1. Dead letters first: then every dead letter below a data table's offset is stored.
        let mut dead_parts: Vec<TopicPartition> = letters.iter().map(|d| (d.topic.clone(), d.partition)).collect();
        dead_parts.sort();
        dead_parts.dedup();
        let dead_ranges: Vec<OffsetRange> = dead_parts
            .iter()
            .filter_map(|tp| {
                let s = self.parts.get(tp)?;
                Some(OffsetRange { key: offset_key(self.cfg, &tp.0, tp.1), start: s.dead, end: s.next? })
            })
            .collect();
        if !dead_ranges.is_empty() {
            match self.tables.append_dead_letters(letters, &dead_ranges, &self.cfg.source_name).await {
                Ok(_) => {
                    for r in &dead_ranges {
                        if let Some(s) = self.parts.get_mut(&(r.key.topic.clone(), r.key.partition)) {
                            s.dead = Some(r.end);
                        }
                    }
                    self.summary.dead_lettered += letters.len() as u64;
                    for d in letters.iter() {
                        self.metrics.dead_lettered.with_label_values(&[d.topic.as_str(), d.error.kind.as_str()]).inc();
                    }
                    // Stored: a retry of this batch's commit must not append them again.
                    letters.clear();
                }
                Err(LakeError::Fenced { .. }) => return self.refence(None).await,
                Err(e) => return Err(e.into()),
            }
        }

        // 2. Each topic's rows and offsets, in one commit per table, concurrently.
        let mut work: HashMap<String, Vec<OffsetRange>> = HashMap::new();
        for ((topic, p), s) in &self.parts {
            if s.has_progress() {
                if let Some(end) = s.next {
                    work.entry(topic.clone()).or_default().push(OffsetRange { key: offset_key(self.cfg, topic, *p), start: s.start, end });
                }
            }
        }
        // The offsets each topic's commit moves past unread (`on_data_loss = "skip"`).
        let mut skipped: HashMap<String, Vec<SkippedRange>> = HashMap::new();
        for ((topic, p), s) in &self.parts {
            if s.has_progress() {
                let all = s.skipped.iter().map(|(from, to)| SkippedRange { key: offset_key(self.cfg, topic, *p), from: *from, to: *to });
                skipped.entry(topic.clone()).or_default().extend(all);
            }
        }
        let source_name = self.cfg.source_name.clone();
        let batches: Vec<TopicBatch<'_>> = work
            .iter()
            .map(|(topic, ranges)| TopicBatch {
                topic,
                records: records.get(topic).map_or(&[][..], |r| r.as_slice()),
                ranges,
                skipped: skipped.get(topic).map_or(&[][..], |r| r.as_slice()),
            })
            .collect();
        // Keep reading while the tables commit: the broker's next messages go to the stash.
        let mut read_error = None;
        let results = {
            let mut all = self.tables.upsert(batches, &source_name);
            loop {
                let room = self.cfg.max_batch_records.saturating_sub(self.stash.len());
                tokio::select! {
                    r = &mut all => break r,
                    polled = self.source.next(Duration::from_millis(50), room), if room > 0 && read_error.is_none() => match polled {
                        Ok(Polled::Messages(batch)) => self.stash.extend(MsgRef::all(self.pool.submit(batch))),
                        Ok(Polled::Nothing) => {}
                        Err(e) => read_error = Some(e),
                    },
                }
            }
        };
        let mut first_error = None;
        let mut fenced = Vec::new();
        let mut committed = Vec::new();
        for TableResult { topic: name, result, seconds } in results {
            let ranges = work.get(&name).map_or(&[][..], |r| r.as_slice());
            let valid = records.get(&name).map_or(0, |r| r.len());
            match result {
                Ok(out) => {
                    self.summary.add(&out);
                    self.summary.valid += valid as u64;
                    self.metrics.valid.with_label_values(&[name.as_str()]).inc_by(valid as u64);
                    self.metrics.record_upsert(&name, valid, &out, seconds);
                    tracing::debug!(table = %name, ?out, "committed");
                    for r in ranges {
                        if let Some(s) = self.parts.get_mut(&(name.clone(), r.key.partition)) {
                            s.start = Some(r.end);
                            s.skipped.clear();
                        }
                        committed.push(((name.clone(), r.key.partition), r.end));
                    }
                    let lost: i64 = skipped.get(&name).into_iter().flatten().map(|r| r.to - r.from).sum();
                    if lost > 0 {
                        self.summary.skipped_offsets += lost as u64;
                        self.metrics.skipped_offsets.with_label_values(&[name.as_str()]).inc_by(lost as u64);
                    }
                }
                Err(LakeError::Fenced { .. }) => fenced.push(name),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.source.commit_advisory(&committed);
        if let Some(e) = first_error {
            return Err(e.into());
        }
        self.summary.consumed += consumed;
        self.summary.batches += 1;
        for (topic, n) in consumed_per_topic.iter() {
            self.metrics.consumed.with_label_values(&[topic.as_str()]).inc_by(*n);
        }
        self.metrics.batch_seconds.with_label_values(&["all"]).observe(started.elapsed().as_secs_f64());
        self.update_lag();
        tracing::info!(
            messages = consumed,
            dead_letters = dead_lettered,
            tables = committed.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch committed"
        );
        if !fenced.is_empty() {
            return self.refence(Some(&fenced)).await;
        }
        self.clear_pending();
        self.take_stash();
        // What was read before the error is in the next batch.
        if let Some(e) = read_error {
            return Err(e.into());
        }
        Ok(true)
    }

    /// Another writer moved offsets under us: drop the batch and restart the affected
    /// partitions (all, when `topics` is `None`) at the lake's offsets.
    pub(super) async fn refence(&mut self, topics: Option<&[String]>) -> Result<bool, IngestError> {
        let tps: Vec<TopicPartition> =
            self.parts.keys().filter(|(t, _)| topics.is_none_or(|ts| ts.contains(t))).cloned().collect();
        tracing::warn!(partitions = tps.len(), "offsets moved by another writer; re-reading from the lake's offsets");
        let starts = self.loader.load(&tps).await.map_err(IngestError::Rebalance)?;
        let seeks: Vec<(TopicPartition, Option<i64>)> = tps.iter().map(|tp| (tp.clone(), starts.get(tp).and_then(|s| s.data))).collect();
        // Seek before adopting the new starts: if the seek fails, the run stops rather than
        // commit offsets for messages it never read.
        self.source.seek(&seeks)?;
        for tp in &tps {
            let s = starts.get(tp).cloned().unwrap_or_default();
            // The end `--once` works toward stays; only the offsets start again.
            let (listed, stop, stop_fixed) = self.parts.get(tp).map_or((None, None, false), |o| (o.listed, o.stop, o.stop_fixed));
            // Another writer committed past this run's end (a member beside a direct
            // `--once`, an overlapping run): it read those offsets, so the log reaches them,
            // and the end is at least there. Otherwise the run could never count as done.
            let stop = match (stop, s.data) {
                (Some(stop), Some(start)) => Some(stop.max(start)),
                (stop, _) => stop,
            };
            let state = PartState { start: s.data, dead: s.dead, since: Some(Instant::now()), origin: s.data, listed, stop, stop_fixed, ..Default::default() };
            self.parts.insert(tp.clone(), state);
        }
        self.clear_pending();
        // The stashed messages of the partitions that seeked come again; the others continue.
        self.stash.retain(|r| {
            let (t, m) = r.get();
            !tps.iter().any(|(tt, p)| tt == t && *p == m.partition)
        });
        self.take_stash();
        Ok(false)
    }

    /// Go on after `e` when it says offsets are outside the broker's log and
    /// `on_data_loss = "skip"` moved a partition past offsets the broker deleted unread (the
    /// error does not name the partition: every one is checked); otherwise stop on it (see
    /// [`Pipeline::keep_reads`]).
    pub(super) async fn survive(&mut self, e: IngestError) -> Result<(), IngestError> {
        if self.cfg.on_data_loss == OnDataLoss::Skip && matches!(e, IngestError::Source(SourceError::OutOfRange { .. })) {
            // The error can come with the poll that brought an assignment: then it may be
            // about a partition no longer held, and every partition held was sought to the
            // lake's offset again, where a real loss shows again.
            if self.sync_assignment().await? {
                return Ok(());
            }
            let tps: Vec<TopicPartition> = self.parts.keys().cloned().collect();
            match self.skip_lost(&tps) {
                Ok(0) => {}
                Ok(_) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Err(self.keep_reads(e).await)
    }

    /// Stop on `e`; when it says offsets are outside the broker's log, or that a partition
    /// cannot advance, commit what was read first: the broker may no longer hold those rows
    /// (retention moved its log start past the lake's offset while they sat in the open
    /// batch), and the next run stops at the same gap or message, not before it.
    pub(super) async fn keep_reads(&mut self, e: IngestError) -> IngestError {
        if matches!(e, IngestError::Source(SourceError::OutOfRange { .. } | SourceError::Stuck { .. })) {
            match self.flush_with_retry().await {
                // A source error from `flush` is a read made while the commit ran, after it
                // succeeded (the same stop, met again).
                Ok(_) | Err(IngestError::Source(_)) => tracing::info!("committed what was read before stopping"),
                Err(f) => tracing::warn!(error = %f, "could not commit what was read before stopping"),
            }
        }
        e
    }
}
