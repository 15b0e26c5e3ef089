//! Each partition's offsets and the rules on them: log bounds, the `--once` end and whether
//! it is reached, transaction markers, steps back after a gap, and stored offsets outside the
//! log.

use std::time::Duration;

use tokio::time::Instant;

use super::pipeline::Pipeline;
use super::IngestError;
use crate::config::OnDataLoss;
use crate::source::{SourceError, TopicPartition};

/// A partition's log start and end from a ListOffsets answer and the last fetch response:
/// the larger of each (tansu 0.6 lists an end below the true one).
pub(super) fn log_bounds(listed: Option<(i64, i64)>, fetched: Option<(Option<i64>, i64)>) -> (Option<i64>, Option<i64>) {
    (listed.map(|(lo, _)| lo).max(fetched.and_then(|(lo, _)| lo)), listed.map(|(_, hi)| hi).max(fetched.map(|(_, hi)| hi)))
}

/// Per-partition progress.
#[derive(Debug, Clone, Default)]
pub(super) struct PartState {
    /// Offset stored in the topic table (where this batch started).
    pub(super) start: Option<i64>,
    /// Offset stored in `dead_letters`.
    pub(super) dead: Option<i64>,
    /// Next offset after the last message taken into the batch.
    pub(super) next: Option<i64>,
    /// The log start and end the broker listed at assignment (ListOffsets).
    pub(super) listed: Option<(i64, i64)>,
    /// `--once`: the end offset to reach: the listed end, raised to the first end seen in a
    /// fetch response (exact where ListOffsets under-states it, as on tansu 0.6). Fixed
    /// once known, so that a producer that keeps writing cannot keep the run going.
    pub(super) stop: Option<i64>,
    /// `stop` has taken the fetch response's end into account.
    pub(super) stop_fixed: bool,
    /// When this process started reading the partition.
    pub(super) since: Option<Instant>,
    /// A message arrived since then.
    pub(super) got_message: bool,
    /// Already re-read from the beginning because the broker returned nothing.
    pub(super) rewound: bool,
    /// The stored offset when this process started reading the partition.
    pub(super) origin: Option<i64>,
    /// Since when the stored offset has looked outside the broker's log (see
    /// [`Pipeline::check_offsets`]).
    pub(super) out_of_log_since: Option<Instant>,
    /// A message of this partition arrived since the consumer was last sought.
    pub(super) delivered: bool,
    /// A gap before the first message after a seek was checked by reading from the log start.
    pub(super) gap_checked: bool,
    /// A gap was found: drop this partition's messages until it is read again from
    /// `rewind_to`.
    pub(super) rewind_pending: bool,
    /// Where the partition is read again from after a gap (`None`: the log start).
    pub(super) rewind_to: Option<i64>,
    /// How far below the offset sought the last re-read after a gap started (0: none).
    pub(super) step_back: i64,
    /// The first message taken after the last seek came after a gap that was accepted (see
    /// [`Pipeline::take`]): the batch does not run on from the lake's offset.
    pub(super) gap_taken: bool,
    /// Offsets `[from, to)` deleted from the broker before they were read, moved past with
    /// `on_data_loss = "skip"`: the next commit records them.
    pub(super) skipped: Vec<(i64, i64)>,
    /// A gap after a seek began with offsets `[from, to)` that the broker deleted before they
    /// were read (`on_data_loss = "fail"`): nothing more is taken, and the run stops on it.
    pub(super) lost_unread: Option<(i64, i64)>,
}

impl PartState {
    pub(super) fn position(&self) -> Option<i64> {
        self.next.or(self.start)
    }

    pub(super) fn has_progress(&self) -> bool {
        match (self.next, self.start) {
            (Some(n), Some(s)) => n > s,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// A gap after a seek to `sought`: read again from further below it than the last time
    /// ([`FIRST_STEP_BACK`], then four times as far each time), or from the log start once that
    /// is as far; a gap still there after reading from the log start is real.
    pub(super) fn step_back(&mut self, sought: i64, log_start: Option<i64>) {
        self.step_back = if self.step_back == 0 { FIRST_STEP_BACK } else { self.step_back.saturating_mul(4) };
        let from = sought.saturating_sub(self.step_back);
        // Never below the log start: Kafka refuses that offset (`auto.offset.reset=error`).
        self.rewind_to = log_start.filter(|lo| from > *lo && from > 0).map(|_| from);
        self.gap_checked = self.rewind_to.is_none();
        self.rewind_pending = true;
    }

    /// `--once`: the partition's position (or, with nothing read or stored, its log start)
    /// has reached `stop`.
    pub(super) fn reached_stop(&self, log_start: Option<i64>) -> bool {
        let at = self.position().or(log_start).unwrap_or(0);
        self.stop_fixed && self.stop.is_some_and(|stop| at >= stop)
    }

    /// `--once`: committed up to `stop` (nothing left to read or to commit). A stored offset
    /// beyond `stop` is not done but suspect: [`Pipeline::check_offsets`] decides whether the
    /// log was replaced, or `stop` came from a stale watermark.
    pub(super) fn committed_to_stop(&self, log_start: Option<i64>) -> bool {
        let at = self.start.or(log_start).unwrap_or(0);
        !self.has_progress() && self.stop_fixed && self.stop.is_some_and(|stop| at >= stop && self.start.is_none_or(|s| s <= stop))
    }

    /// `--once`: `offset` is at or past the end this run owes, once that end is fixed.
    pub(super) fn beyond_stop(&self, offset: i64) -> bool {
        self.stop_fixed && self.stop.is_some_and(|stop| offset >= stop)
    }

    /// The consumer has moved past offsets that carried no data for the application (transaction
    /// markers, aborted records): take `position` as the next offset, so that the commit covers
    /// them and the stored offset reaches the log end. Only valid when every message below
    /// `position` has been taken, i.e. with no messages waiting outside the batch. With nothing
    /// stored or read, the partition was read from `log_start`, and the markers count from
    /// there (a partition that holds only markers, such as one aborted transaction, must reach
    /// its end too).
    #[must_use]
    pub(super) fn skip_to(&mut self, position: i64, log_start: Option<i64>) -> bool {
        if self.position().or(log_start).is_some_and(|p| position > p) {
            self.next = Some(position);
            self.got_message = true;
            return true;
        }
        false
    }

    /// The offsets `[from, to)` the broker deleted before this run read them: from where
    /// reading stands to `log_start`. Rows read into the open batch are not lost (they are
    /// committed before the run stops on a gap, or with the skip); after a gap that was
    /// accepted, the batch does not cover the offsets below it, and they count from the
    /// stored offset (or the end of a range already skipped).
    pub(super) fn lost(&self, log_start: Option<i64>) -> Option<(i64, i64)> {
        let stored = self.start?;
        let floor = self.skipped.last().map_or(stored, |(_, to)| stored.max(*to));
        let read_to = if self.gap_taken { floor } else { self.next.map_or(floor, |n| n.max(floor)) };
        log_start.filter(|lo| read_to < *lo).map(|lo| (read_to, lo))
    }

    /// `on_data_loss = "skip"`: `[from, to)` was deleted before it was read; the batch's commit
    /// records it.
    pub(super) fn record_skip(&mut self, tp: &TopicPartition, from: i64, to: i64) {
        tracing::warn!(topic = %tp.0, partition = tp.1, from, to, "offsets were deleted from the broker before they were read (retention, DeleteRecords); skipping them (on_data_loss = skip): the next commit records the range");
        self.skipped.push((from, to));
    }

    /// `on_data_loss = "skip"`: move past `[from, to)`, which the broker deleted before it was
    /// read; the batch's commit records the range. Returns whether the consumer must be sought
    /// to `to` (reading stands below it).
    #[must_use]
    pub(super) fn skip_lost(&mut self, tp: &TopicPartition, from: i64, to: i64) -> bool {
        self.record_skip(tp, from, to);
        self.out_of_log_since = None;
        // `--once`: the log reaches at least its start.
        self.stop = self.stop.map(|stop| stop.max(to));
        if self.next.is_some_and(|n| n >= to) {
            return false;
        }
        self.next = Some(to);
        // A fresh read from `to`: its first message is checked as after any seek.
        self.delivered = false;
        self.gap_checked = false;
        self.gap_taken = false;
        self.rewind_pending = false;
        self.rewind_to = None;
        self.step_back = 0;
        self.rewound = false;
        self.got_message = false;
        self.since = Some(Instant::now());
        true
    }

    /// The stored offset no longer fits the broker's log (`log_start`..=`end`): a message to
    /// stop on, naming both offsets.
    pub(super) fn out_of_log(&self, tp: &TopicPartition, log_start: Option<i64>, end: Option<i64>) -> Option<String> {
        let stored = self.start?;
        if let Some((read_to, lo)) = self.lost(log_start) {
            return Some(deleted_unread(tp, stored, read_to, lo));
        }
        if let Some(end) = end.filter(|end| stored > *end) {
            return Some(format!(
                "{}/{}: the lake's offset {stored} is past the log end {end}: the topic or cluster was replaced; ingest it under a new --source-name to start over deliberately",
                tp.0, tp.1
            ));
        }
        None
    }
}

/// The message that names offsets `read_to..lo` of `tp` as deleted before they were read.
pub(super) fn deleted_unread(tp: &TopicPartition, stored: i64, read_to: i64, lo: i64) -> String {
    format!(
        "{}/{}: the lake's offset {stored} (read to {read_to}) is below the log start {lo}: offsets {read_to}..{lo} were deleted (retention, DeleteRecords) before they were ingested",
        tp.0, tp.1
    )
}

/// How far below the offset sought the first re-read after a gap starts (see
/// [`PartState::step_back`]): a marker or a compacted range costs about this many messages
/// read again, a tansu record batch a few such steps.
pub(super) const FIRST_STEP_BACK: i64 = 1024;

/// How long a partition with data beyond its offset may deliver nothing before it is re-read.
pub(super) const STALL_AFTER: Duration = Duration::from_secs(4);

/// How long a stored offset must look outside the broker's log before the run stops on it.
pub(super) const OUT_OF_LOG_CONFIRM: Duration = Duration::from_secs(3);


impl Pipeline<'_> {
    /// The first existing offset of a partition, as listed or fetched.
    pub(super) fn log_start(&self, tp: &TopicPartition, s: &PartState) -> Option<i64> {
        log_bounds(s.listed, self.source.cached_watermarks(&tp.0, tp.1)).0
    }

    /// Each of `tps` whose stored offset is outside the broker's log, by a fresh listing and
    /// the last fetch response.
    pub(super) fn explain_out_of_range(&self, tps: &[TopicPartition]) -> Vec<String> {
        let listed = self.source.listed_watermarks(tps, self.cfg.connect());
        let mut out: Vec<String> = tps
            .iter()
            .filter_map(|tp| {
                let s = self.parts.get(tp)?;
                // Without a fresh listing there is no verdict.
                let listed = Some(*listed.get(tp)?);
                let (start, end) = log_bounds(listed, self.source.cached_watermarks(&tp.0, tp.1));
                s.out_of_log(tp, start, end)
            })
            .collect();
        out.sort();
        out
    }

    /// Stop on a stored offset outside the broker's log: below its start (data deleted before
    /// it was ingested) or past its end (the log was replaced). The watermarks librdkafka
    /// caches can predate this assignment (another member committed further while this one
    /// was not fetching the partition), and tansu 0.6 lists an end below the true one, so a
    /// verdict counts only when it has held for [`OUT_OF_LOG_CONFIRM`] and a fresh listing
    /// still agrees. On Kafka the fetch itself fails with `OFFSET_OUT_OF_RANGE` at once.
    pub(super) fn check_offsets(&mut self) -> Result<(), IngestError> {
        let mut confirm = Vec::new();
        for (tp, s) in self.parts.iter_mut() {
            let cached = self.source.cached_watermarks(&tp.0, tp.1);
            let (start, end) = log_bounds(s.listed, cached);
            // The end only once a fetch response has given it: the listed one can be low.
            if s.out_of_log(tp, start, end.filter(|_| cached.is_some())).is_none() {
                s.out_of_log_since = None;
                continue;
            }
            let since = *s.out_of_log_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= OUT_OF_LOG_CONFIRM {
                confirm.push(tp.clone());
            }
        }
        if confirm.is_empty() {
            return Ok(());
        }
        if self.cfg.on_data_loss == OnDataLoss::Skip {
            self.skip_lost(&confirm)?;
        }
        let bad = self.explain_out_of_range(&confirm);
        if bad.is_empty() {
            for tp in &confirm {
                if let Some(s) = self.parts.get_mut(tp) {
                    s.out_of_log_since = None;
                    // The stored offset is inside the log: the end is at least there.
                    if let (Some(stop), Some(start)) = (s.stop, s.start) {
                        s.stop = Some(stop.max(start));
                    }
                }
            }
            return Ok(());
        }
        Err(IngestError::Source(SourceError::OutOfRange { brokers: self.source.describe(), reason: bad.join("; ") }))
    }

    /// `on_data_loss = "skip"`: move each of `tps` whose unread offsets the broker deleted (by a
    /// fresh listing) past them, and seek it there. Returns how many moved.
    pub(super) fn skip_lost(&mut self, tps: &[TopicPartition]) -> Result<usize, IngestError> {
        let listed = self.source.listed_watermarks(tps, self.cfg.connect());
        let mut seeks = Vec::new();
        let mut moved = 0;
        for tp in tps {
            // Without a fresh listing there is no verdict.
            let Some(listed) = listed.get(tp).copied() else { continue };
            let (log_start, _) = log_bounds(Some(listed), self.source.cached_watermarks(&tp.0, tp.1));
            let Some(s) = self.parts.get_mut(tp) else { continue };
            let Some((from, to)) = s.lost(log_start) else { continue };
            if s.skip_lost(tp, from, to) {
                seeks.push((tp.clone(), Some(to)));
            }
            moved += 1;
        }
        if !seeks.is_empty() {
            self.source.seek(&seeks)?;
        }
        Ok(moved)
    }

    /// Move each partition past offsets the consumer skipped without handing over a message
    /// (transaction markers, aborted records), so that commits and `--once` reach the log end.
    pub(super) fn skip_markers(&mut self) {
        // Messages read during a commit wait in the stash: the consumer's position counts
        // them, the batch does not yet.
        if !self.stash.is_empty() {
            return;
        }
        let once = self.opts.once;
        for (tp, position) in self.source.positions() {
            let log_start = self.parts.get(&tp).and_then(|s| self.log_start(&tp, s));
            if let Some(s) = self.parts.get_mut(&tp) {
                // `--once` leaves the messages past its end untaken (see `take`): the position
                // may be beyond them, and only the offsets below the end were all taken.
                let position = match s.stop.filter(|_| once && s.stop_fixed) {
                    Some(stop) => position.min(stop),
                    None => position,
                };
                if s.skip_to(position, log_start) {
                    tracing::debug!(topic = %tp.0, partition = tp.1, position, "moved past offsets without data (transaction markers)");
                }
            }
        }
    }

    /// `--once`: raise each partition's stop offset to the first end a fetch response gives:
    /// the last stable offset, since a transaction still open past it may never end.
    pub(super) fn fix_stops(&mut self) {
        for ((topic, p), state) in self.parts.iter_mut() {
            // A second after assignment, so that the fetch response's end is this assignment's
            // and not one librdkafka kept from an earlier one.
            if state.stop_fixed || state.since.is_none_or(|t| t.elapsed() < Duration::from_secs(1)) {
                continue;
            }
            if let Some(hi) = self.source.cached_stable_end(topic, *p) {
                // What this run read is in the log, so the end is at least there: the last
                // stable offset comes from statistics up to a second old, and tansu lists a low
                // end; a stop below what was read could never count as committed to. Not the
                // stored offset: one past the log's end means the log was replaced, and
                // `check_offsets` stops the run on it.
                let end = state.next.map_or(hi, |read| read.max(hi));
                state.stop = Some(state.stop.map_or(end, |s| s.max(end)));
                state.stop_fixed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> TopicPartition {
        ("t".to_string(), 0)
    }

    fn part(start: Option<i64>, next: Option<i64>, stop: i64) -> PartState {
        PartState { start, next, stop: Some(stop), stop_fixed: true, ..Default::default() }
    }

    #[test]
    fn once_owes_nothing_past_its_fixed_end() {
        let s = part(Some(10), Some(20), 30);
        assert!(!s.beyond_stop(29));
        assert!(s.beyond_stop(30));
        assert!(s.beyond_stop(31));
        // Before the end is fixed, the listed end may be low (tansu): nothing is refused.
        let unfixed = PartState { stop_fixed: false, ..s };
        assert!(!unfixed.beyond_stop(31));
    }

    #[test]
    fn once_is_done_only_when_committed_to_the_end() {
        // Read to the end but not committed: reached, not done.
        let s = part(Some(10), Some(20), 20);
        assert!(s.reached_stop(None) && !s.committed_to_stop(None));
        // Committed to the end.
        let s = part(Some(20), None, 20);
        assert!(s.reached_stop(None) && s.committed_to_stop(None));
        // Short of the end.
        let s = part(Some(15), Some(19), 20);
        assert!(!s.reached_stop(None) && !s.committed_to_stop(None));
        // An end not yet confirmed by a fetch response never counts.
        let mut s = part(Some(20), None, 20);
        s.stop_fixed = false;
        assert!(!s.reached_stop(None) && !s.committed_to_stop(None));
        // Stored beyond the end: suspect (a replaced log, or a stale end), never done.
        let s = part(Some(5_000), None, 50);
        assert!(!s.committed_to_stop(None));
        // Nothing stored: an empty partition, or one whose records all expired, is at its log start.
        let s = part(None, None, 7);
        assert!(s.committed_to_stop(Some(7)) && !s.committed_to_stop(Some(3)) && !s.committed_to_stop(None));
    }

    /// Transaction markers (and aborted records) are never delivered: the last data message is
    /// below the log end, and only the consumer's position says the rest holds no data. tansu
    /// 0.6 refuses EndTxn, so this is the test of that path; it is not exercised end to end.
    #[test]
    fn transaction_markers_move_the_offset_to_the_log_end() {
        // Data 0..=97 taken, a commit marker at 98, aborted records 99..=101 and their marker at
        // 102: the consumer stands at 103, the log end.
        let mut s = part(Some(50), Some(98), 103);
        assert!(!s.reached_stop(None));
        assert!(s.skip_to(103, None));
        assert!(s.reached_stop(None) && s.has_progress());
        // The commit stores 103; the next run starts there, not behind the markers.
        s.start = s.next.take();
        assert!(s.committed_to_stop(None));
        // A position at or behind the batch (a seek back, a message in flight) changes nothing.
        assert!(!s.skip_to(103, None) && !s.skip_to(60, None));
        // Nothing stored or read, and only markers from the log start: they are skipped too.
        let mut only_markers = part(None, None, 2);
        assert!(!only_markers.skip_to(2, None), "without the log start there is no verdict");
        assert!(only_markers.skip_to(2, Some(0)) && only_markers.reached_stop(Some(0)));
        assert_eq!(s.position(), Some(103));
    }

    #[test]
    fn a_stored_offset_outside_the_log_is_named_with_both_offsets() {
        let s = part(Some(40), None, 100);
        assert!(s.out_of_log(&tp(), Some(0), Some(100)).is_none());
        assert!(s.out_of_log(&tp(), Some(40), Some(40)).is_none(), "at the end exactly is fine");
        let below = s.out_of_log(&tp(), Some(60), Some(100)).unwrap();
        assert!(below.contains("t/0") && below.contains("40 (read to 40) is below the log start 60"), "{below}");
        // Rows read past the new log start are in the batch, not lost: no verdict on them.
        let read = part(Some(40), Some(70), 100);
        assert!(read.out_of_log(&tp(), Some(60), Some(100)).is_none());
        let gap = read.out_of_log(&tp(), Some(80), Some(100)).unwrap();
        assert!(gap.contains("offsets 70..80 were deleted"), "{gap}");
        // A batch that began after an accepted gap does not cover 40..60: judged from 40.
        let after_gap = PartState { gap_taken: true, ..part(Some(40), Some(70), 100) };
        assert!(after_gap.out_of_log(&tp(), Some(60), Some(100)).unwrap().contains("offsets 40..60 were deleted"));
        let past = s.out_of_log(&tp(), Some(0), Some(30)).unwrap();
        assert!(past.contains("t/0") && past.contains("40 is past the log end 30") && past.contains("--source-name"), "{past}");
        // Nothing stored: nothing to compare.
        assert!(part(None, None, 0).out_of_log(&tp(), Some(60), Some(30)).is_none());
    }

}

