//! The open batch: message references into decoded chunks, the stash of messages read during
//! a commit, and the batch decoded once for its commit.

use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::Instant;

use super::pipeline::Pipeline;
use super::IngestError;
use crate::config::OnDataLoss;
use crate::decode::pool::Chunk;
use crate::lake::dead_letters::DeadLetter;
use crate::source::RawMessage;
use crate::FastMap;

/// One message of a decoded (or decoding) poll.
pub(super) struct MsgRef {
    pub(super) chunk: Arc<Chunk>,
    pub(super) idx: usize,
}

impl MsgRef {
    /// Every message of a chunk, in order.
    pub(super) fn all(chunk: Arc<Chunk>) -> impl Iterator<Item = MsgRef> {
        (0..chunk.len()).map(move |idx| MsgRef { chunk: chunk.clone(), idx })
    }

    pub(super) fn get(&self) -> (&str, &RawMessage) {
        self.chunk.get(self.idx)
    }
}

/// A closed batch, decoded once and kept until it commits (or is dropped).
#[derive(Default)]
pub(super) struct DecodedBatch {
    /// Valid records per topic, in stream order.
    pub(super) records: HashMap<String, Vec<crate::decode::Record>>,
    /// Dead letters not yet stored (emptied once they are).
    pub(super) letters: Vec<DeadLetter>,
    /// Messages taken from the batch.
    pub(super) consumed: u64,
    pub(super) consumed_per_topic: Vec<(String, u64)>,
    /// Dead letters in the batch.
    pub(super) dead_lettered: usize,
}

impl Pipeline<'_> {
    pub(super) fn clear_pending(&mut self) {
        self.pending.clear();
        self.decoded = None;
        self.pending_records = 0;
        self.pending_bytes = 0;
        self.opened = Instant::now();
    }

    /// Take a message into the open batch; returns whether it was new (not below the
    /// partition's position).
    pub(super) fn take(&mut self, r: MsgRef) -> bool {
        let (topic, m) = r.get();
        let (partition, offset, bytes) = (m.partition, m.offset, m.payload.as_ref().map_or(0, |p| p.len()));
        // Messages come in runs from one partition: its key is built once per run.
        if !matches!(&self.last_tp, Some((t, p)) if t == topic && *p == partition) {
            self.last_tp = Some((topic.to_string(), partition));
        }
        let inexact = self.inexact_seeks;
        let once = self.opts.once;
        let Some(tp) = &self.last_tp else { return false };
        let Some(state) = self.parts.get_mut(tp) else { return false };
        if state.rewind_pending || state.lost_unread.is_some() {
            return false; // read again from below a gap; or the run stops on deleted offsets
        }
        // The first message after a seek must be the one the seek asked for. tansu 0.6 answers a
        // fetch that starts inside a record batch with the next batch, which skipped the rest
        // of the first (a whole range committed without its rows). On Kafka a gap there is
        // real (a compacted range, a transaction marker). Either way the partition is read
        // again from a little below the offset sought, further each time, until a message at
        // or below it comes (then what follows is exact) or the log start is reached (then a
        // gap still there is real, and is taken); never from the log start at once, which
        // re-read a whole compacted partition after every assignment.
        let first = !std::mem::replace(&mut state.delivered, true);
        if first && inexact && !state.gap_checked {
            if let Some(sought) = state.position().filter(|n| offset > *n) {
                let log_start = super::partitions::log_bounds(state.listed, self.source.cached_watermarks(&tp.0, tp.1)).0;
                state.step_back(sought, log_start);
                tracing::debug!(topic = %tp.0, partition = tp.1, sought, got = offset, from = ?state.rewind_to, "the broker skipped offsets after a seek; reading again from below them");
                return false;
            }
        }
        if first && state.step_back > 0 && state.position().is_some_and(|n| offset <= n) {
            state.step_back = 0; // read from below the offset sought: what follows is exact
        }
        if state.position().is_some_and(|n| offset < n) {
            return false; // already committed or already in this batch
        }
        if let Some(sought) = state.position().filter(|n| first && offset > *n) {
            // A gap that starts below the log start began with offsets retention deleted
            // before they were read: the rest of the gap (markers, compaction) is normal.
            let log_start = super::partitions::log_bounds(state.listed, self.source.cached_watermarks(&tp.0, tp.1)).0;
            if let Some(lo) = log_start.filter(|lo| *lo > sought) {
                if self.cfg.on_data_loss == OnDataLoss::Fail {
                    state.lost_unread = Some((sought, lo));
                    return false;
                }
                state.record_skip(tp, sought, lo);
            }
            state.gap_taken = true;
        }
        // `--once` owes the data up to the end it fixed at the start, and no more: what a
        // producer writes meanwhile is the next run's. Taking it would move the stored offset
        // past that end, where the run never counts as done.
        if once && state.beyond_stop(offset) {
            state.got_message = true; // the partition delivers: no stall to re-read for
            return false;
        }
        state.next = Some(offset + 1);
        state.got_message = true;
        self.pending_bytes += bytes;
        self.pending_records += 1;
        self.pending.entry_ref(tp.0.as_str()).or_default().push(r);
        true
    }

    /// Whether the open batch holds `max_batch_records` or `max_batch_bytes`.
    pub(super) fn is_full(&self) -> bool {
        self.pending_records >= self.cfg.max_batch_records || self.pending_bytes >= self.cfg.max_batch_bytes
    }

    /// Take the messages read during a commit, in order, into the new batch.
    pub(super) fn take_stash(&mut self) {
        for r in std::mem::take(&mut self.stash) {
            self.take(r);
        }
    }

    /// Decode the open batch: its records per topic, in stream order, and its dead letters.
    /// Messages below a partition's stored offset, or read twice, are left out; most chunks
    /// were decoded in the background while the batch filled.
    pub(super) async fn decode_batch(&self) -> Result<DecodedBatch, IngestError> {
        let mut out = DecodedBatch::default();
        for (topic, refs) in &self.pending {
            let before = out.consumed;
            let mut recs = Vec::with_capacity(refs.len());
            // Each partition's stored data and dead-letter offsets, looked up once per batch.
            let stored: FastMap<i32, (Option<i64>, Option<i64>)> = self
                .parts
                .iter()
                .filter(|((t, _), _)| t == topic)
                .map(|((_, p), s)| (*p, (s.start, s.dead)))
                .collect();
            type Pick = fn(&(Option<i64>, Option<i64>)) -> Option<i64>;
            let below = |m: &RawMessage, pick: Pick| {
                stored.get(&m.partition).and_then(pick).is_some_and(|o| m.offset < o)
            };
            let mut ready: Option<usize> = None; // the chunk last waited for (its address)
            for r in refs {
                let (_, m) = r.get();
                if below(m, |s| s.0) {
                    continue; // already committed
                }
                let at = Arc::as_ptr(&r.chunk) as usize;
                if ready != Some(at) {
                    r.chunk.ready().await;
                    ready = Some(at);
                }
                let Some(result) = r.chunk.take(r.idx) else {
                    return Err(IngestError::Internal(format!("message {topic}/{}@{} was not decoded", m.partition, m.offset)));
                };
                out.consumed += 1;
                match result {
                    Ok(rec) => recs.push(rec),
                    Err(error) => {
                        if below(m, |s| s.1) {
                            continue; // already in dead_letters
                        }
                        out.letters.push(DeadLetter {
                            topic: topic.clone(),
                            partition: m.partition,
                            offset: m.offset,
                            key: m.key.clone(),
                            payload: m.payload.clone(),
                            message_timestamp_ms: m.timestamp_ms,
                            error,
                        });
                    }
                }
            }
            out.consumed_per_topic.push((topic.clone(), out.consumed - before));
            out.records.insert(topic.clone(), recs);
        }
        out.dead_lettered = out.letters.len();
        Ok(out)
    }
}
