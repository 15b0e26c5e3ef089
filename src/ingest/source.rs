//! What the loop does about its source: the rewinds that make inexact fetches (tansu 0.6)
//! exact.

use super::partitions::STALL_AFTER;
use super::pipeline::Pipeline;
use super::IngestError;

impl Pipeline<'_> {
    /// Seek the partitions whose first message after a seek came after a gap (see
    /// [`Pipeline::take`]) back below it; what is below the stored offset is skipped.
    pub(super) fn apply_rewinds(&mut self) -> Result<(), IngestError> {
        let mut seeks = Vec::new();
        for (tp, s) in self.parts.iter_mut().filter(|(_, s)| s.rewind_pending) {
            s.rewind_pending = false;
            s.delivered = false;
            // Only a read from the log start is final: after a shorter step back, a broker that
            // answers a fetch from inside a batch with nothing still counts as stalled.
            s.rewound = s.rewind_to.is_none();
            seeks.push((tp.clone(), s.rewind_to));
        }
        if !seeks.is_empty() {
            self.source.seek(&seeks)?;
        }
        Ok(())
    }

    /// The broker refused an offset as outside its log while steps back after gaps were in
    /// flight: retention may have moved the log start past one of them since it was listed.
    /// Those partitions are read from the log start instead; returns whether there were any
    /// (if the error was another partition's, it comes again, and then the run stops on it).
    pub(super) fn step_backs_to_log_start(&mut self) -> bool {
        let mut any = false;
        for s in self.parts.values_mut().filter(|s| s.step_back > 0 && s.rewind_to.is_some() && !s.delivered) {
            s.rewind_to = None;
            s.gap_checked = true;
            s.rewind_pending = true;
            any = true;
        }
        if any {
            tracing::warn!("the broker refused a step back after a gap as outside its log; reading from the log start");
        }
        any
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
