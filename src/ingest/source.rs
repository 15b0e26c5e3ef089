//! What the loop does about its source: the rewinds that make inexact fetches (tansu 0.6)
//! exact.

use tokio::time::Instant;

use super::partitions::{deleted_unread, STALL_AFTER};
use super::pipeline::Pipeline;
use super::IngestError;
use crate::source::SourceError;

impl Pipeline<'_> {
    /// Seek the partitions whose first message after a seek came after a gap (see
    /// [`Pipeline::take`]) back below it; what is below the stored offset is skipped.
    pub(super) fn apply_rewinds(&mut self) -> Result<(), IngestError> {
        let mut seeks = Vec::new();
        for (tp, s) in self.parts.iter_mut().filter(|(_, s)| s.rewind_pending) {
            s.rewind_pending = false;
            s.delivered = false;
            // Only a read from the log start is final: after a shorter step back, a broker that
            // answers a fetch from inside a batch with nothing still counts as stalled, once the
            // stall window has passed since this seek.
            s.rewound = s.rewind_to.is_none();
            if s.rewind_to.is_some() {
                s.since = Some(Instant::now());
            }
            seeks.push((tp.clone(), s.rewind_to));
        }
        if !seeks.is_empty() {
            self.source.seek(&seeks)?;
        }
        Ok(())
    }

    /// The partitions reading again from below a gap (see
    /// [`super::partitions::PartState::step_back`]) that have not delivered since: when the broker refuses an offset as outside its log and every
    /// stored offset is inside it, retention moved the log start past such a step back in the
    /// moment after it was listed. librdkafka stops fetching a partition it refused, so the
    /// run stops; the next one lists the log start again.
    pub(super) fn refused_step_backs(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .parts
            .iter()
            .filter(|(_, s)| s.step_back > 0 && !s.delivered)
            .filter_map(|((t, p), s)| {
                let from = s.rewind_to?;
                Some(format!("{t}/{p}: the read again from offset {from}, below a gap after the lake's offset, fell below the log start as retention moved it; run again"))
            })
            .collect();
        out.sort();
        out
    }

    /// `on_data_loss = "fail"`: stop on the partitions whose first message after a seek came
    /// after offsets the broker had deleted unread (see [`Pipeline::take`]), committing what
    /// was read before them first.
    pub(super) async fn stop_on_deleted(&mut self) -> Result<(), IngestError> {
        if self.parts.values().all(|s| s.lost_unread.is_none()) {
            return Ok(());
        }
        if let Err(e) = self.flush_with_retry().await {
            tracing::warn!(error = %e, "could not commit what was read before stopping");
        }
        let mut named: Vec<String> = self
            .parts
            .iter()
            .filter_map(|(tp, s)| s.lost_unread.map(|(from, to)| deleted_unread(tp, s.start.unwrap_or(from), from, to)))
            .collect();
        named.sort();
        Err(IngestError::Source(SourceError::OutOfRange { brokers: self.source.describe(), reason: named.join("; ") }))
    }

    /// Some brokers (tansu 0.6) return nothing when a fetch starts inside a producer's record
    /// batch, which is where a stored offset usually points. A partition that has data beyond
    /// its offset but delivers nothing for a while is re-read from the beginning; messages below
    /// the stored offset are skipped, so this costs time, never correctness. "Data beyond" is
    /// data below the last stable offset: a partition caught up to an open transaction (which
    /// holds that offset below the high watermark) delivers nothing, rightly.
    pub(super) fn rewind_stalled(&mut self) -> Result<(), IngestError> {
        // The workaround is for tansu's fetch; other sources read at exact offsets.
        if !self.inexact_seeks {
            return Ok(());
        }
        let mut stalled = Vec::new();
        for ((topic, p), state) in self.parts.iter_mut() {
            if state.got_message || state.rewound || state.since.is_none_or(|t| t.elapsed() < STALL_AFTER) {
                continue;
            }
            let Some(end) = self.source.cached_stable_end(topic, *p) else { continue };
            if state.start.is_some_and(|s| end > s) {
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

}
