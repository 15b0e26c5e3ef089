//! The source (`ingest --iggy`): reads the partitions its consumer group gives it ([`group`]),
//! or every partition (a direct reader), from the lake's offsets.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use iggy::prelude::*;
use tokio::time::Instant;

use super::group::{Group, Held};
use super::listing::{list, source_err, Quiet};
use super::keys::key_and_tombstone;
use super::{IggyAddress, REQUEST_TIMEOUT};
use crate::source::TopicPartition;

/// How often a member looks at its group: which partitions it holds, and storing the lake's
/// offsets so that a partition being handed over moves.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// One message read ahead, with its topic.
type Queued = (String, crate::source::RawMessage);

/// Reads Iggy partitions from the lake's offsets.
pub struct IggySource {
    address: IggyAddress,
    client: IggyClient,
    /// The partitions this member reads: those its group gives it, or all of them.
    pub assignment: Arc<std::sync::Mutex<crate::source::Assignment>>,
    /// The consumer group, for a member of one (`None`: a direct reader of every partition).
    group: Option<Group>,
    /// Every partition of the topics.
    all: Vec<TopicPartition>,
    /// When the group was last looked at; the lake's offsets to store there at the next look.
    looked: tokio::sync::Mutex<Option<Instant>>,
    committed: std::sync::Mutex<HashMap<TopicPartition, i64>>,
    /// Each partition's first and next offset, as the server last listed them.
    listed: std::sync::Mutex<HashMap<TopicPartition, (i64, i64)>>,
    next: std::sync::Mutex<BTreeMap<crate::source::TopicPartition, u64>>,
    ends: std::sync::Mutex<HashMap<crate::source::TopicPartition, i64>>,
    buffer: std::sync::Mutex<std::collections::VecDeque<Queued>>,
    cursor: std::sync::Mutex<usize>,
    /// Partitions where a poll met a message the server cannot read: read one message at a
    /// time there, so that everything before it is read and the error names it exactly.
    careful: std::sync::Mutex<std::collections::HashSet<crate::source::TopicPartition>>,
    /// Partitions with no offset in the lake: read from the first message the server still has
    /// (the ones before may have expired), as the Kafka source starts at the log start.
    fresh: std::sync::Mutex<std::collections::HashSet<TopicPartition>>,
    /// Fresh partitions whose every message had expired: the offset they start at (their end),
    /// for the ingest loop to commit without a message ([`crate::source::Source::positions`]).
    jumped: std::sync::Mutex<HashMap<TopicPartition, i64>>,
    /// Held partitions the server answered as not held, since when.
    not_held: std::sync::Mutex<HashMap<TopicPartition, Instant>>,
    /// When a failure was last logged: while the server is down, one line every 10 s.
    quiet: Quiet,
    /// `on_data_loss = "skip"`: skip a message the server cannot read (else stop on it).
    skip_unreadable: bool,
    /// Partitions stopped at such a message: the offset past it, their log start from then on.
    unreadable: std::sync::Mutex<HashMap<TopicPartition, i64>>,
}

impl IggySource {
    /// Connect, check the topics and every partition's offset in the lake against the server,
    /// and join the consumer group `group` (`None`: read every partition, outside any group).
    /// Each partition read starts at the lake's offset.
    pub async fn connect(address: IggyAddress, topics: &[String], loader: Arc<dyn crate::source::StartLoader>, group: Option<&str>) -> Result<Self, crate::source::SourceError> {
        let client = address.connect().await.map_err(|reason| crate::source::SourceError::Unreachable { brokers: address.display(), reason })?;
        let listed = list(&client, &address, topics).await?;
        let mut partitions: Vec<TopicPartition> = listed.keys().cloned().collect();
        partitions.sort();
        let ends: HashMap<TopicPartition, i64> = listed.iter().map(|(tp, (_, end))| (tp.clone(), *end)).collect();
        let group = group.map(|name| Group::new(name, &address.stream));
        let held = match &group {
            None => partitions.iter().cloned().collect(),
            Some(g) => {
                g.join(&client, topics).await.map_err(|reason| source_err(&address, reason))?;
                match g.held(&client, &partitions).await.map_err(|reason| source_err(&address, reason))? {
                    Held::Partitions(held) => held,
                    Held::NotMember => return Err(source_err(&address, format!("joined the consumer group `{}`, yet the server does not count this client a member", g.name()))),
                }
            }
        };
        let starts = loader.load(&partitions).await.map_err(|e| source_err(&address, format!("cannot read stored offsets from the lake: {e}")))?;
        let mut assignment = crate::source::Assignment { generation: 1, assigned: true, ..Default::default() };
        let mut next = BTreeMap::new();
        let mut fresh = std::collections::HashSet::new();
        for tp in partitions.iter().cloned() {
            let s = starts.get(&tp).cloned().unwrap_or_default();
            let end = ends.get(&tp).copied().unwrap_or(0);
            // A partition whose only message (offset 0) expired is listed like an empty one.
            if s.data.is_some_and(|d| d > end && !(end == 0 && d == 1)) {
                // The server lost messages the lake already has (reset, or the topic was
                // re-created). Never skip silently.
                return Err(crate::source::SourceError::OutOfRange { brokers: address.display(), reason: format!("{}/{}: the lake's offset {} is past the partition's end {end} (server reset or topic re-created); see docs/DESIGN.md", tp.0, tp.1, s.data.unwrap_or(0)) });
            }
            if held.contains(&tp) {
                if s.data.is_none() {
                    fresh.insert(tp.clone());
                }
                next.insert(tp.clone(), s.data.unwrap_or(0).max(0) as u64);
                assignment.partitions.insert(tp, s);
            }
        }
        Ok(IggySource {
            address,
            client,
            assignment: Arc::new(std::sync::Mutex::new(assignment)),
            group,
            all: partitions,
            looked: tokio::sync::Mutex::new(Some(Instant::now())),
            committed: Default::default(),
            listed: std::sync::Mutex::new(listed),
            next: std::sync::Mutex::new(next),
            ends: std::sync::Mutex::new(ends),
            buffer: Default::default(),
            cursor: Default::default(),
            careful: Default::default(),
            fresh: std::sync::Mutex::new(fresh),
            jumped: Default::default(),
            not_held: Default::default(),
            quiet: Default::default(),
            skip_unreadable: false,
            unreadable: Default::default(),
        })
    }

    /// The next message, polling partitions in turn; `None` when nothing arrived in `wait`.
    pub async fn recv(&self, wait: Duration, max: u32) -> Result<Option<Queued>, crate::source::SourceError> {
        let deadline = tokio::time::Instant::now() + wait;
        self.look().await;
        loop {
            if let Some(m) = self.buffer.lock().ok().and_then(|mut b| b.pop_front()) {
                return Ok(Some(m));
            }
            let parts: Vec<(crate::source::TopicPartition, u64)> = self.next.lock().map(|n| n.iter().map(|(k, v)| (k.clone(), *v)).collect()).unwrap_or_default();
            if parts.is_empty() {
                tokio::time::sleep_until(deadline).await;
                return Ok(None);
            }
            let mut got_any = false;
            for _ in 0..parts.len() {
                let i = self.cursor.lock().map(|mut c| {
                    *c = (*c + 1) % parts.len();
                    *c
                });
                let ((topic, partition), offset) = &parts[i.unwrap_or(0)];
                let s = Identifier::named(&self.address.stream).map_err(|e| source_err(&self.address, e))?;
                let t = Identifier::named(topic).map_err(|e| source_err(&self.address, e))?;
                let consumer = match &self.group {
                    Some(g) => g.consumer().map_err(|e| source_err(&self.address, e))?,
                    None => Consumer::default(),
                };
                let tp = (topic.clone(), *partition);
                let fresh = self.fresh.lock().is_ok_and(|f| f.contains(&tp));
                // Iggy answers a poll below the first message it still has with nothing (not
                // with that message): a partition new to the lake is read from its first.
                let strategy = if fresh { PollingStrategy::first() } else { PollingStrategy::offset(*offset) };
                if self.unreadable.lock().is_ok_and(|u| u.get(&tp) == Some(&(*offset as i64 + 1))) {
                    // Waiting for the ingest loop to skip the unreadable message.
                    continue;
                }
                let careful = self.careful.lock().is_ok_and(|c| c.contains(&tp));
                let count = if careful { 1 } else { max.max(1) };
                let poll = self.client.poll_messages(&s, &t, Some(*partition as u32), &consumer, &strategy, count, false);
                let polled = match tokio::time::timeout(REQUEST_TIMEOUT, poll).await {
                    Err(_) => return Err(source_err(&self.address, "poll timed out")),
                    // The partition holds this offset (its end is past it) yet the server will
                    // not read it: Iggy 0.8.0 leaves a partition so after a SIGKILL during a
                    // write, for any read that crosses the damage, across restarts
                    // (docs/DESIGN.md). Retrying cannot help; skipping would lose messages.
                    Ok(Err(IggyError::InvalidOffset(_))) if !careful => {
                        // Somewhere in this read: read one at a time up to it.
                        if let Ok(mut c) = self.careful.lock() {
                            c.insert(tp);
                        }
                        continue;
                    }
                    Ok(Err(IggyError::InvalidOffset(_))) if self.skip_unreadable => {
                        // `on_data_loss = "skip"`: the message is lost to every reader. Its
                        // partition's log starts past it from now on; the ingest loop skips
                        // exactly it and records the range in its commit.
                        let floor = *offset as i64 + 1;
                        if let Ok(mut u) = self.unreadable.lock() {
                            if u.insert(tp.clone(), floor) != Some(floor) {
                                tracing::warn!(topic = %topic, partition, offset, "the server cannot read this message (invalid_offset; Iggy 0.8 after a kill during a write): skipping exactly it (on_data_loss = skip); the commit records it");
                            }
                        }
                        continue;
                    }
                    Ok(Err(IggyError::InvalidOffset(_))) => {
                        let end = self.end_offset(topic, *partition).unwrap_or(0);
                        return Err(crate::source::SourceError::Stuck {
                            brokers: self.address.display(),
                            reason: format!("{topic}/{partition}: the server cannot read the message at offset {offset} (invalid_offset), though the partition's end is {end}: Iggy 0.8 leaves the message it was writing when it was killed so (docs/DESIGN.md); everything before it was read"),
                        });
                    }
                    Ok(Err(e)) => return Err(source_err(&self.address, e)),
                    Ok(Ok(polled)) => polled,
                };
                // A partition this member does not hold is answered with no message, partition
                // 0 and offset 0: certain for another partition, and for partition 0 once the
                // server lists it with two messages or more (one with a message or none answers
                // alike).
                let listed_end = self.listed.lock().ok().and_then(|l| l.get(&tp).map(|(_, end)| *end)).unwrap_or(0);
                let not_held = polled.messages.is_empty() && (polled.partition_id != *partition as u32 || (polled.current_offset == 0 && listed_end > 1));
                if self.group.is_some() && not_held && self.not_held_for_long(&tp) {
                    // The group moved the partition on, which the next look adopts; answers
                    // like this for longer mean this member's idea of its id is wrong.
                    if let Some(g) = &self.group {
                        g.forget().await;
                    }
                }
                if polled.messages.is_empty() && polled.partition_id != *partition as u32 {
                    continue;
                }
                if !not_held {
                    if let Ok(mut n) = self.not_held.lock() {
                        n.remove(&tp);
                    }
                }
                let end = if polled.messages.is_empty() && *offset == 0 { 0 } else { polled.current_offset as i64 + 1 };
                if let Ok(mut ends) = self.ends.lock() {
                    let e = ends.entry(tp.clone()).or_insert(0);
                    *e = (*e).max(end);
                }
                if let Some(first) = polled.messages.first() {
                    if first.header.offset > *offset && fresh {
                        tracing::info!(topic = %topic, partition, first = first.header.offset, "a partition new to the lake starts at the first message the server still has (the ones before it expired)");
                    } else if first.header.offset > *offset {
                        // Messages between the lake's offset and the first one returned are gone
                        // (expired before ingest). Never skip silently.
                        return Err(crate::source::SourceError::OutOfRange { brokers: self.address.display(), reason: format!("{topic}/{partition}: offsets {offset}..{} expired before they were ingested", first.header.offset) });
                    }
                    if fresh {
                        if let Ok(mut f) = self.fresh.lock() {
                            f.remove(&tp);
                        }
                    }
                } else if let Some(end) = if fresh && !not_held { self.emptied_end(topic, *partition).await } else { None } {
                    // A partition new to the lake whose every message expired (a fresh listing
                    // says so): nothing to read below its end, which the lake's offset moves to
                    // without a message.
                    tracing::info!(topic = %topic, partition, end, "a partition new to the lake holds no message any more (all expired): it starts at its end");
                    if let (Ok(mut next), Ok(mut f), Ok(mut jumped)) = (self.next.lock(), self.fresh.lock(), self.jumped.lock()) {
                        next.insert(tp.clone(), end as u64);
                        f.remove(&tp);
                        jumped.insert(tp.clone(), end);
                    }
                    continue;
                }
                let mut last = None;
                let mut buffer = self.buffer.lock().map_err(|_| source_err(&self.address, "poisoned buffer"))?;
                for m in polled.messages.iter().filter(|m| m.header.offset >= *offset) {
                    let (key, tombstone) = key_and_tombstone(m).map_err(|e| crate::source::SourceError::Stuck { brokers: self.address.display(), reason: format!("{topic}/{partition} at offset {}: {e}", m.header.offset) })?;
                    buffer.push_back((
                        topic.clone(),
                        crate::source::RawMessage {
                            partition: *partition,
                            offset: m.header.offset as i64,
                            key,
                            payload: (!tombstone).then(|| m.payload.to_vec()),
                            timestamp_ms: Some((m.header.timestamp / 1000) as i64),
                        },
                    ));
                    last = Some(m.header.offset);
                }
                drop(buffer);
                if let Some(l) = last {
                    got_any = true;
                    if let Ok(mut n) = self.next.lock() {
                        n.insert(tp, l + 1);
                    }
                    break;
                }
            }
            if !got_any {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                tokio::time::sleep(left.min(Duration::from_millis(100))).await;
            }
        }
    }

    /// In a consumer group, at most every [`LOOK_EVERY`]: store the lake's offsets as the
    /// group's, list the partitions' ends, and see which partitions this member holds; a
    /// change becomes a new assignment generation, which the ingest loop adopts (dropping
    /// what it has not committed and reading on from the lake's offsets). Failures are logged
    /// and the member keeps reading what it has.
    async fn look(&self) {
        let Some(group) = &self.group else { return };
        let mut looked = self.looked.lock().await;
        if looked.is_some_and(|t| t.elapsed() < LOOK_EVERY) {
            return;
        }
        *looked = Some(Instant::now());
        let committed: Vec<(TopicPartition, i64)> = self.committed.lock().map(|c| c.iter().map(|(k, v)| (k.clone(), *v)).collect()).unwrap_or_default();
        group.store(&self.client, &committed).await;
        let mut topics: Vec<String> = self.all.iter().map(|(t, _)| t.clone()).collect();
        topics.dedup();
        match list(&self.client, &self.address, &topics).await {
            Ok(l) => {
                if let Ok(mut listed) = self.listed.lock() {
                    *listed = l;
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot list the Iggy partitions"),
        }
        let held = match group.held(&self.client, &self.all).await {
            Ok(Held::Partitions(held)) => held,
            Ok(Held::NotMember) => {
                tracing::warn!(group = group.name(), "the Iggy server no longer counts this member in its consumer group (it restarted?); joining again");
                if let Err(reason) = group.join(&self.client, &topics).await {
                    if self.quiet.warn_now() {
                        tracing::warn!(%reason, "cannot join the Iggy consumer group again; retrying every second (logged every 10 s)");
                    }
                }
                return;
            }
            Err(reason) => {
                if self.quiet.warn_now() {
                    tracing::warn!(%reason, "cannot look at the Iggy consumer group; reading the partitions this member had (logged every 10 s)");
                }
                return;
            }
        };
        let mut assignment = self.assignment.lock().unwrap_or_else(|p| p.into_inner());
        let had: std::collections::BTreeSet<TopicPartition> = assignment.partitions.keys().cloned().collect();
        if had == held {
            return;
        }
        for tp in had.difference(&held) {
            if let (Ok(mut next), Ok(mut buffer), Ok(mut careful), Ok(mut committed)) = (self.next.lock(), self.buffer.lock(), self.careful.lock(), self.committed.lock()) {
                next.remove(tp);
                buffer.retain(|(t, m)| !(t == &tp.0 && m.partition == tp.1));
                careful.remove(tp);
                committed.remove(tp);
            }
            if let (Ok(mut fresh), Ok(mut jumped), Ok(mut not_held)) = (self.fresh.lock(), self.jumped.lock(), self.not_held.lock()) {
                fresh.remove(tp);
                jumped.remove(tp);
                not_held.remove(tp);
            }
        }
        assignment.partitions = held.iter().map(|tp| (tp.clone(), Default::default())).collect();
        assignment.generation += 1;
        assignment.assigned = true;
        tracing::info!(group = group.name(), generation = assignment.generation, partitions = ?held, "the Iggy consumer group changed this member's partitions");
    }

    /// Past a message the server cannot read, the partition's log start, but only once the lake
    /// stands exactly at that message: everything before it is in the lake, so the ingest loop
    /// skips that message alone (never messages read ahead and not yet committed).
    fn floor(&self, tp: &TopicPartition) -> Option<i64> {
        let floor = self.unreadable.lock().ok()?.get(tp).copied()?;
        (self.committed.lock().ok()?.get(tp) == Some(&(floor - 1))).then_some(floor)
    }

    /// Whether `topic/partition` answered "not held" for longer than two looks at the group.
    fn not_held_for_long(&self, tp: &TopicPartition) -> bool {
        let Ok(mut n) = self.not_held.lock() else { return false };
        let since = *n.entry(tp.clone()).or_insert_with(Instant::now);
        if since.elapsed() > 3 * LOOK_EVERY {
            n.clear();
            return true;
        }
        false
    }

    /// The end of `topic/partition` when the server lists it with no message left though it
    /// held some (every one expired).
    async fn emptied_end(&self, topic: &str, partition: i32) -> Option<i64> {
        let (s, t) = (Identifier::named(&self.address.stream).ok()?, Identifier::named(topic).ok()?);
        match tokio::time::timeout(REQUEST_TIMEOUT, self.client.get_topic(&s, &t)).await {
            Ok(Ok(Some(d))) => d.partitions.iter().find(|p| p.id as i32 == partition && p.messages_count == 0 && p.current_offset > 0).map(|p| p.current_offset as i64 + 1),
            _ => None,
        }
    }

    /// The partition's end (next offset to be written), as last seen.
    pub fn end_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.ends.lock().ok().and_then(|e| e.get(&(topic.to_string(), partition)).copied())
    }

    /// Restart partitions at new offsets (after a fence); drops what is buffered for them.
    pub fn seek(&self, starts: &[(crate::source::TopicPartition, Option<i64>)]) {
        // Only partitions this member holds: a look may have just given one away.
        let held: Vec<TopicPartition> = self.assignment.lock().map(|a| a.partitions.keys().cloned().collect()).unwrap_or_default();
        if let (Ok(mut next), Ok(mut buffer)) = (self.next.lock(), self.buffer.lock()) {
            for (tp, o) in starts.iter().filter(|(tp, _)| held.contains(tp)) {
                next.insert(tp.clone(), o.unwrap_or(0).max(0) as u64);
                buffer.retain(|(t, m)| !(t == &tp.0 && m.partition == tp.1));
                if let (Ok(mut careful), Ok(mut committed), Ok(mut unreadable)) = (self.careful.lock(), self.committed.lock(), self.unreadable.lock()) {
                    // Sought to the lake's offset: where the lake stands. Past an unreadable
                    // message, it is done with; below it, it is found again on the way.
                    if let Some(o) = o {
                        committed.insert(tp.clone(), *o);
                    }
                    if unreadable.remove(tp).is_some_and(|floor| o.is_some_and(|o| o >= floor)) {
                        careful.remove(tp);
                    }
                }
                if let (Ok(mut fresh), Ok(mut jumped)) = (self.fresh.lock(), self.jumped.lock()) {
                    jumped.remove(tp);
                    if o.is_none() {
                        fresh.insert(tp.clone());
                    } else {
                        fresh.remove(tp);
                    }
                }
            }
        }
    }

    /// Skip a message the server cannot read, as `on_data_loss = "skip"` skips deleted offsets
    /// (else the source stops on it).
    pub fn skip_unreadable(mut self, skip: bool) -> Self {
        self.skip_unreadable = skip;
        self
    }

    /// Seek each partition stopped at a message the server cannot read past it (the audit's
    /// reader, with [`IggySource::skip_unreadable`]); returns each with that message's offset.
    pub fn step_over_unreadable(&self) -> Vec<(TopicPartition, i64)> {
        let stuck: Vec<(TopicPartition, i64)> = self.unreadable.lock().map(|u| u.iter().map(|(tp, floor)| (tp.clone(), *floor)).collect()).unwrap_or_default();
        let seeks: Vec<(TopicPartition, Option<i64>)> = stuck.iter().map(|(tp, floor)| (tp.clone(), Some(*floor))).collect();
        self.seek(&seeks);
        stuck.into_iter().map(|(tp, floor)| (tp, floor - 1)).collect()
    }

    /// Read only `keep` from now on (the audit reads the partitions the lake has offsets for).
    pub fn retain(&self, keep: &[TopicPartition]) {
        if let Ok(mut next) = self.next.lock() {
            next.retain(|tp, _| keep.contains(tp));
        }
    }

    /// The partitions this source reads.
    pub fn partitions(&self) -> Vec<TopicPartition> {
        self.next.lock().map(|n| n.keys().cloned().collect()).unwrap_or_default()
    }

    /// The address, for messages.
    pub fn display(&self) -> String {
        self.address.display()
    }
}


impl crate::source::Source for IggySource {
    fn kind(&self) -> &'static str {
        "iggy"
    }

    fn describe(&self) -> String {
        self.display()
    }

    /// Up to `max` messages: what one poll of the server returned (a partition's worth) and
    /// whatever else is already read ahead. A failed poll that may pass is logged and retried
    /// after a pause.
    fn next(&self, wait: Duration, max: usize) -> futures::future::BoxFuture<'_, Result<crate::source::Polled, crate::source::SourceError>> {
        use crate::source::Polled;
        Box::pin(async move {
            match self.recv(wait, max.min(10_000) as u32).await {
                Ok(Some((topic, m))) => {
                    let mut messages = vec![(topic.into(), m)];
                    if let Ok(mut buffer) = self.buffer.lock() {
                        let more = buffer.len().min(max.saturating_sub(1));
                        messages.extend(buffer.drain(..more).map(|(t, m)| (t.into(), m)));
                    }
                    Ok(Polled::Messages(messages))
                }
                Ok(None) => Ok(Polled::Nothing),
                Err(e) if e.is_retryable() => {
                    if self.quiet.warn_now() {
                        tracing::warn!(error = %e, "Iggy poll failed; retrying twice a second (logged every 10 s)");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Ok(Polled::Nothing)
                }
                Err(e) => Err(e),
            }
        })
    }

    fn assignment_change(&self, seen: u64) -> Result<Option<crate::source::AssignmentChange>, String> {
        self.assignment.lock().unwrap_or_else(|p| p.into_inner()).change_since(seen)
    }

    fn seek(&self, starts: &[(crate::source::TopicPartition, Option<i64>)]) -> Result<(), crate::source::SourceError> {
        IggySource::seek(self, starts);
        Ok(())
    }

    /// The start is known only past a message the server cannot read (with `on_data_loss =
    /// "skip"`): the loop then skips exactly it, as offsets a broker deleted.
    fn cached_watermarks(&self, topic: &str, partition: i32) -> Option<(Option<i64>, i64)> {
        let floor = self.floor(&(topic.to_string(), partition));
        self.end_offset(topic, partition).map(|end| (floor, end.max(floor.unwrap_or(0))))
    }

    /// As the last look at the group listed them (in a group, at most [`LOOK_EVERY`] old), or
    /// at start.
    fn listed_watermarks(&self, partitions: &[TopicPartition], _timeout: Duration) -> HashMap<TopicPartition, (i64, i64)> {
        let Ok(listed) = self.listed.lock().map(|l| l.clone()) else { return HashMap::new() };
        partitions.iter().filter_map(|tp| listed.get(tp).map(|(lo, hi)| (tp.clone(), ((*lo).max(self.floor(tp).unwrap_or(0)), *hi)))).collect()
    }

    fn all_partitions(&self, _timeout: Duration) -> Result<Vec<TopicPartition>, crate::source::SourceError> {
        Ok(if self.group.is_some() { self.all.clone() } else { Vec::new() })
    }

    /// `--once`, when this member's group keeps partitions from it: a reader of exactly
    /// `starts` outside any group, as assignment `generation` (the loop seeks it to the lake's
    /// offsets). Dropping this member closes its connection, which leaves the group.
    fn direct(&self, starts: &[(TopicPartition, Option<i64>)], generation: u64) -> Result<Option<Box<dyn crate::source::Source>>, crate::source::SourceError> {
        let Some(runtime) = tokio::runtime::Handle::try_current().ok().filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread) else { return Ok(None) };
        if self.group.is_none() {
            return Ok(None);
        }
        let keep: Vec<TopicPartition> = starts.iter().map(|(tp, _)| tp.clone()).collect();
        let mut topics: Vec<String> = keep.iter().map(|(t, _)| t.clone()).collect();
        topics.sort();
        topics.dedup();
        let connect = IggySource::connect(self.address.clone(), &topics, Arc::new(crate::source::NoStoredOffsets), None);
        let source = tokio::task::block_in_place(|| runtime.block_on(connect))?.skip_unreadable(self.skip_unreadable);
        // This member goes: leave the group and close the connection now (the client's own
        // heartbeat task would keep it, and its partitions, until the process exits).
        if let Some(g) = &self.group {
            let mut topics: Vec<String> = self.all.iter().map(|(t, _)| t.clone()).collect();
            topics.dedup();
            tokio::task::block_in_place(|| {
                runtime.block_on(async {
                    g.leave(&self.client, &topics).await;
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, self.client.shutdown()).await;
                })
            });
        }
        source.retain(&keep);
        if let Ok(mut a) = source.assignment.lock() {
            a.generation = generation;
            a.partitions.retain(|tp, _| keep.contains(tp));
        }
        Ok(Some(Box::new(source)))
    }

    /// Fresh partitions whose messages had all expired start at their end: nothing below it
    /// was handed over, and none of it is waiting in the read-ahead.
    fn positions(&self) -> Vec<(TopicPartition, i64)> {
        let (Ok(buffer), Ok(jumped)) = (self.buffer.lock(), self.jumped.lock()) else { return Vec::new() };
        jumped.iter().filter(|(tp, _)| !buffer.iter().any(|(t, m)| t == &tp.0 && m.partition == tp.1)).map(|(tp, o)| (tp.clone(), *o)).collect()
    }

    /// Kept for the next look at the group, which stores them there.
    fn commit_advisory(&self, offsets: &[(TopicPartition, i64)]) {
        let held: Vec<TopicPartition> = self.assignment.lock().map(|a| a.partitions.keys().cloned().collect()).unwrap_or_default();
        if let Ok(mut committed) = self.committed.lock() {
            committed.extend(offsets.iter().filter(|(tp, _)| held.contains(tp)).cloned());
        }
    }
}
