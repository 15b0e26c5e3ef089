//! `--once` as a scheduled job: when the run is done (every partition of the topics, this
//! member's and the others', committed to the end it had at the start), when it has failed
//! (nothing moved for `once_timeout`), and when it reads every partition itself because the
//! group gives it none.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::partitions::PartState;
use super::pipeline::Pipeline;
use super::{IngestError, IngestSummary};
use crate::source::TopicPartition;

/// `--once`: a partition of the selected topics that another member of the group holds.
#[derive(Debug, Clone, Copy)]
pub(super) struct OtherPart {
    /// The log start and end when this run first looked (`None`: the broker did not say).
    pub(super) listed: Option<(i64, i64)>,
    /// The topic table's offset at the last look.
    pub(super) stored: Option<i64>,
}

impl OtherPart {
    /// Committed (by whichever member) up to the end it had when this run first looked.
    pub(super) fn done(&self) -> bool {
        self.listed
            .is_some_and(|(lo, hi)| self.stored.unwrap_or(lo) >= hi)
    }
}

/// `--once`'s clocks, kept across the loop's turns.
pub(super) struct OnceWatch {
    /// The last time a partition moved toward its end (or partitions were given).
    last_progress: Instant,
    /// The sum of every partition's position at the last look: progress when it changes.
    last_positions: i64,
    last_lag_report: Instant,
    last_others_check: Instant,
}

impl OnceWatch {
    pub(super) fn new() -> Self {
        let now = Instant::now();
        OnceWatch {
            last_progress: now,
            last_positions: 0,
            last_lag_report: now,
            last_others_check: now.checked_sub(Duration::from_secs(60)).unwrap_or(now),
        }
    }

    /// Partitions were given: the wait for progress starts again.
    pub(super) fn progressed(&mut self) {
        self.last_progress = Instant::now();
    }
}

/// What the loop does after [`Pipeline::once_step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnceStep {
    /// Go on reading.
    Go,
    /// Every partition of the topics is committed to its end: the run succeeded.
    Done,
}

impl Pipeline<'_> {
    /// `--once`, after each turn of the loop: done when every partition of the topics is
    /// committed up to the end it had at the start, this member's by this member, the others'
    /// by whichever member holds them; failed ([`IngestError::Incomplete`]) when none has moved
    /// for `once_timeout`.
    pub(super) async fn once_step(&mut self, w: &mut OnceWatch) -> Result<OnceStep, IngestError> {
        let assigned = self.assigned && !self.parts.is_empty();
        let mut positions: i64 = self.parts.values().filter_map(PartState::position).sum();
        positions += self.others.values().filter_map(|o| o.stored).sum::<i64>();
        if positions != w.last_positions {
            w.last_positions = positions;
            w.last_progress = Instant::now();
        }
        let own_done = if assigned
            && self
                .parts
                .iter()
                .all(|(tp, s)| s.reached_stop(self.log_start(tp, s)))
        {
            if !(self.flush_with_retry().await?
                && self
                    .parts
                    .iter()
                    .all(|(tp, s)| s.committed_to_stop(self.log_start(tp, s))))
            {
                // Fenced, or a rebalance: the partitions restart at the lake's offsets.
                w.last_progress = Instant::now();
                return Ok(OnceStep::Go);
            }
            true
        } else {
            // An empty assignment may only be a step of a rebalance (dead members keep
            // partitions until their session times out): the others decide.
            !assigned && self.generation > 0
        };
        // The others are watched also before the group has given this member anything:
        // their commits count as progress, so that it does not read directly beside a group
        // that is working. It is not done then, though: on tansu 0.6 the listed end of a
        // partition never fetched is low, and only reading (or an assignment) makes it exact.
        let watch_others = own_done || (!assigned && self.generation == 0);
        if watch_others && w.last_others_check.elapsed() >= Duration::from_secs(2) {
            w.last_others_check = Instant::now();
            if self.others_done().await? && own_done {
                return Ok(OnceStep::Done);
            }
        }
        // Nothing moves, and the group keeps partitions from this member: it gave it none (a
        // coordinator that assigns nothing), or its own are done and the rest are held by
        // members that neither commit them nor give them up (killed members until their
        // session ends). Read them itself.
        let held_elsewhere = !assigned || (own_done && !self.others.is_empty());
        if held_elsewhere
            && !self.direct
            && w.last_progress.elapsed() >= self.cfg.once_group_wait()
            && self.read_directly(w.last_progress.elapsed()).await?
        {
            w.last_progress = Instant::now();
            return Ok(OnceStep::Go);
        }
        if w.last_progress.elapsed() >= self.cfg.once_timeout() {
            // Keep what was read: a later run continues from there.
            self.flush_with_retry().await?;
            return Err(IngestError::Incomplete(
                self.describe_lag(assigned, self.cfg.once_timeout()),
            ));
        }
        if w.last_lag_report.elapsed() >= Duration::from_secs(30)
            && w.last_progress.elapsed() >= Duration::from_secs(10)
        {
            w.last_lag_report = Instant::now();
            tracing::warn!(waiting = %self.describe_lag(assigned, w.last_progress.elapsed()), "--once is waiting for data it has not received yet");
        }
        Ok(OnceStep::Go)
    }

    /// `--once`: whether every partition of the topics that this member does not hold is
    /// committed in the lake up to the end it had when this run first looked at it. Dead
    /// members keep their partitions until their session times out, and live ones may still be
    /// reading theirs: success means the whole topic set is in the lake, not only this share.
    pub(super) async fn others_done(&mut self) -> Result<bool, IngestError> {
        let all = self.source.all_partitions(self.cfg.connect())?;
        let theirs: Vec<TopicPartition> = all
            .into_iter()
            .filter(|tp| !self.parts.contains_key(tp))
            .collect();
        self.others.retain(|tp, _| theirs.contains(tp));
        if theirs.is_empty() {
            return Ok(true);
        }
        let unlisted: Vec<TopicPartition> = theirs
            .iter()
            .filter(|tp| self.others.get(*tp).is_none_or(|o| o.listed.is_none()))
            .cloned()
            .collect();
        let listed = if unlisted.is_empty() {
            HashMap::new()
        } else {
            let mut listed = self.source.listed_watermarks(&unlisted, self.cfg.connect());
            // tansu 0.6 lists an end below the true one: with it alone, a partition another
            // member committed past its last batch's base counted as done with the rest unread.
            for (tp, end) in self.source.fetched_ends(&unlisted, self.cfg.connect()) {
                if let Some((_, hi)) = listed.get_mut(&tp) {
                    *hi = (*hi).max(end);
                }
            }
            listed
        };
        let starts = self
            .loader
            .load(&theirs)
            .await
            .map_err(IngestError::Rebalance)?;
        for tp in &theirs {
            let o = self.others.entry(tp.clone()).or_insert(OtherPart {
                listed: None,
                stored: None,
            });
            if o.listed.is_none() {
                o.listed = listed.get(tp).copied();
            }
            o.stored = starts.get(tp).and_then(|s| s.data);
        }
        Ok(self.others.values().all(OtherPart::done))
    }

    /// `--once` stopped by a signal, after its last commit: a success only when every
    /// partition of the topics is committed to its end (this member's and the others', as the
    /// loop decides it); otherwise [`IngestError::Interrupted`], naming what is left.
    pub(super) async fn interrupted(&mut self) -> Result<IngestSummary, IngestError> {
        let assigned = self.assigned && !self.parts.is_empty();
        let own_done = if assigned {
            self.parts
                .iter()
                .all(|(tp, s)| s.committed_to_stop(self.log_start(tp, s)))
        } else {
            self.generation > 0
        };
        if own_done && self.others_done().await? {
            self.progress.finish();
            return Ok(self.summary.clone());
        }
        let behind = self.behind();
        Err(IngestError::Interrupted(
            if !assigned && self.generation == 0 {
                "the group had not assigned this member any partitions yet".to_string()
            } else if behind.is_empty() {
                "the ends of the partitions were not known yet".to_string()
            } else {
                behind.join(", ")
            },
        ))
    }

    /// Why `--once` is not finished: each partition short of its end, with its lag, or that
    /// no partition is assigned.
    pub(super) fn describe_lag(&self, assigned: bool, quiet_for: Duration) -> String {
        if !assigned {
            return format!(
                "the group coordinator assigned this member no partitions for {quiet_for:?} (other members may hold them, or the coordinator is still rebalancing)"
            );
        }
        format!(
            "no progress for {quiet_for:?}; {}",
            self.behind().join(", ")
        )
    }

    /// Each partition (this member's or another's) not yet committed to its end, with its
    /// committed offset, its end and its lag.
    pub(super) fn behind(&self) -> Vec<String> {
        let mut behind: Vec<String> = self
            .parts
            .iter()
            .filter(|(tp, s)| !s.committed_to_stop(self.log_start(tp, s)))
            .map(|((t, p), s)| {
                let at = s.start.or(self.log_start(&(t.clone(), *p), s)).unwrap_or(0);
                match s.stop.filter(|_| s.stop_fixed) {
                    Some(stop) => format!("{t}/{p} committed to {at} of {stop} (lag {})", (stop - at).max(0)),
                    None => format!("{t}/{p} committed to {at}, end unknown (no fetch response from the broker)"),
                }
            })
            .collect();
        behind.extend(
            self.others
                .iter()
                .filter(|(_, o)| !o.done())
                .map(|((t, p), o)| {
                    let at = o.stored.or(o.listed.map(|(lo, _)| lo)).unwrap_or(0);
                    match o.listed {
                        Some((_, hi)) => format!(
                            "{t}/{p} (held by another member) committed to {at} of {hi} (lag {})",
                            (hi - at).max(0)
                        ),
                        None => format!(
                            "{t}/{p} (held by another member) committed to {at}, end unknown"
                        ),
                    }
                }),
        );
        behind.sort();
        behind
    }

    /// `--once` on Kafka, when the group has given this member no partitions and nothing has
    /// moved for `waited`: leave the group and read every partition of the topics directly,
    /// from the lake's offsets. Exactly-once does not rest on the coordinator: the lake's
    /// offset fences stop this run, or any member still writing, from committing a range twice.
    /// Returns whether it did (not on a source that has no direct reader yet, as Iggy's).
    pub(super) async fn read_directly(&mut self, waited: Duration) -> Result<bool, IngestError> {
        let all = self.source.all_partitions(self.cfg.connect())?;
        if all.is_empty() {
            return Ok(false);
        }
        let starts = self
            .loader
            .load(&all)
            .await
            .map_err(IngestError::Rebalance)?;
        let seeks: Vec<(TopicPartition, Option<i64>)> = all
            .iter()
            .map(|tp| (tp.clone(), starts.get(tp).and_then(|s| s.data)))
            .collect();
        let Some(direct) = self.source.direct(&seeks, self.generation + 1)? else {
            return Ok(false);
        };
        let why = if self.parts.is_empty() {
            "the group assigned this member no partitions"
        } else {
            "this member's partitions are done and the others' are held by members that do not commit them"
        };
        tracing::warn!(
            partitions = all.len(),
            ?waited,
            "--once: {why}, and nothing moved; leaving the group and reading every partition directly (the lake's offset fences keep this exactly once)"
        );
        // Dropping the member leaves the group (a blocking close).
        let member = std::mem::replace(&mut self.source, direct);
        self.inexact_seeks = self.source.inexact_seeks();
        if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            tokio::task::block_in_place(|| drop(member));
        } else {
            drop(member);
        }
        self.direct = true;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_members_partition_is_done_when_the_lake_reaches_its_end() {
        let o = |listed, stored| OtherPart { listed, stored };
        assert!(o(Some((0, 50)), Some(50)).done());
        assert!(!o(Some((0, 50)), Some(49)).done());
        assert!(!o(Some((0, 50)), None).done());
        // Empty, or every record expired, and never ingested: nothing to do.
        assert!(o(Some((50, 50)), None).done());
        // The broker did not list it: not known to be done.
        assert!(!o(None, Some(1_000)).done());
    }
}
