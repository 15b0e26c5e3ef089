//! The brokers page's view of an Iggy server ([`crate::source::inspect`]): the stream's
//! topics with each partition's end, each topic's consumer groups with the offsets they
//! stored, and a topic's newest messages. The tail polls as a consumer of its own with
//! `auto_commit` off, so it stores nothing and joins no group.

use std::time::Duration;

use iggy::prelude::*;

use super::keys::key_and_tombstone;
use super::listing::{list, source_err};
use super::{IggyAddress, REQUEST_TIMEOUT};
use crate::source::inspect::{
    GroupOffset, GroupView, PartitionView, Tail, TailMessage, TailRange, TopicView,
};
use crate::source::SourceError;

/// The consumer id the tail polls as (a plain consumer: Iggy keeps no state for it unless it
/// stores an offset, which the tail never does).
const TAIL_CONSUMER: u32 = 0x7a11;

async fn timed<T>(
    address: &IggyAddress,
    what: &str,
    f: impl std::future::Future<Output = Result<T, IggyError>>,
) -> Result<T, SourceError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(source_err(address, format!("{what}: {e}"))),
        Err(_) => Err(source_err(
            address,
            format!("{what} timed out after {REQUEST_TIMEOUT:?}"),
        )),
    }
}

fn ident(address: &IggyAddress, name: &str) -> Result<Identifier, SourceError> {
    Identifier::named(name).map_err(|e| source_err(address, format!("`{name}`: {e}")))
}

async fn connect(address: &IggyAddress) -> Result<IggyClient, SourceError> {
    address
        .connect()
        .await
        .map_err(|reason| SourceError::Unreachable {
            brokers: address.display(),
            reason,
        })
}

/// Connect, run `work` on the client within `timeout`, and shut the client down on every path
/// (a client dropped without it keeps its heartbeat task and its connection).
async fn with_client<T>(
    address: &IggyAddress,
    timeout: Duration,
    work: impl AsyncFnOnce(&IggyClient) -> Result<T, SourceError>,
) -> Result<T, SourceError> {
    let client = connect(address).await?;
    let out = tokio::time::timeout(timeout, work(&client)).await;
    let _ = client.shutdown().await;
    out.map_err(|_| source_err(address, format!("no whole answer within {timeout:?}")))?
}

/// The stream's topics, or only the one named `only`, with their partitions' ends (Iggy does
/// not list a partition's first offset), within `timeout`. A stream not created yet has no
/// topics.
pub async fn topics(
    address: &IggyAddress,
    only: Option<&str>,
    timeout: Duration,
) -> Result<Vec<TopicView>, SourceError> {
    with_client(address, timeout, async |client: &IggyClient| {
        let names: Vec<String> = match only {
            Some(name) => vec![name.to_string()],
            None => {
                let s = ident(address, &address.stream)?;
                match timed(address, "get_stream", client.get_stream(&s)).await? {
                    Some(stream) => stream.topics.into_iter().map(|t| t.name).collect(),
                    None => Vec::new(),
                }
            }
        };
        let mut by_topic: std::collections::BTreeMap<String, Vec<PartitionView>> =
            names.iter().map(|n| (n.clone(), Vec::new())).collect();
        for ((topic, partition), (_, end)) in list(client, address, &names).await? {
            by_topic.entry(topic).or_default().push(PartitionView {
                partition,
                start: None,
                end: Some(end),
            });
        }
        Ok(by_topic
            .into_iter()
            .map(|(name, mut partitions)| {
                partitions.sort_by_key(|p| p.partition);
                TopicView { name, partitions }
            })
            .collect())
    })
    .await
}

/// The consumer groups of `topics` (Iggy keeps them per topic: a name on several topics is
/// one entry), each with the offsets it stored, as the next offset it would read, within
/// `timeout`.
pub async fn groups(
    address: &IggyAddress,
    topics: &[TopicView],
    timeout: Duration,
) -> Result<Vec<GroupView>, SourceError> {
    with_client(address, timeout, async |client: &IggyClient| {
        let s = ident(address, &address.stream)?;
        let mut by_name: std::collections::BTreeMap<String, GroupView> = Default::default();
        for topic in topics {
            let t = ident(address, &topic.name)?;
            for g in timed(
                address,
                "get_consumer_groups",
                client.get_consumer_groups(&s, &t),
            )
            .await?
            {
                let view = by_name.entry(g.name.clone()).or_insert_with(|| GroupView {
                    name: g.name.clone(),
                    state: None,
                    members: 0,
                    offsets: Vec::new(),
                });
                view.members = view.members.max(g.members_count as usize);
                let consumer =
                    Consumer::group(Identifier::numeric(g.id).map_err(|e| source_err(address, e))?);
                for p in &topic.partitions {
                    let stored = timed(
                        address,
                        "get_consumer_offset",
                        client.get_consumer_offset(&consumer, &s, &t, Some(p.partition as u32)),
                    )
                    .await?;
                    // Iggy stores the last offset consumed.
                    if let Some(o) = stored {
                        view.offsets.push(GroupOffset {
                            topic: topic.name.clone(),
                            partition: p.partition,
                            next: o.stored_offset as i64 + 1,
                        });
                    }
                }
            }
        }
        Ok(by_name.into_values().collect())
    })
    .await
}

/// The most messages one poll asks for.
const POLL_COUNT: i64 = 1000;

/// The messages of each range of `topic`, within `timeout`. Iggy reads at exact offsets; a
/// read from below a partition's first message (deleted segments) gets nothing, or the
/// messages from the first one on, and learns that offset either way. A range
/// that cannot be read whole (a message the server cannot read, a poll that failed) is
/// reported, not returned.
pub async fn tail(
    address: &IggyAddress,
    topic: &str,
    ranges: &[TailRange],
    timeout: Duration,
) -> Result<Tail, SourceError> {
    with_client(address, timeout, async |client: &IggyClient| {
        let (s, t) = (ident(address, &address.stream)?, ident(address, topic)?);
        let consumer =
            Consumer::new(Identifier::numeric(TAIL_CONSUMER).map_err(|e| source_err(address, e))?);
        let mut out = Tail::default();
        for r in ranges.iter().filter(|r| r.from < r.before) {
            let read = Range {
                client,
                s: &s,
                t: &t,
                consumer: &consumer,
                range: *r,
            };
            match read.messages().await {
                Ok((messages, start)) => {
                    out.messages.extend(messages);
                    if let Some(start) = start {
                        out.starts.insert(r.partition, start);
                    }
                }
                Err(reason) => out.incomplete.push((r.partition, reason)),
            }
        }
        Ok(out)
    })
    .await
}

/// One partition's read of a tail.
struct Range<'a> {
    client: &'a IggyClient,
    s: &'a Identifier,
    t: &'a Identifier,
    consumer: &'a Consumer,
    range: TailRange,
}

impl Range<'_> {
    async fn poll(
        &self,
        strategy: &PollingStrategy,
        count: i64,
    ) -> Result<Vec<IggyMessage>, String> {
        let poll = self.client.poll_messages(
            self.s,
            self.t,
            Some(self.range.partition as u32),
            self.consumer,
            strategy,
            count.clamp(1, POLL_COUNT) as u32,
            false,
        );
        match tokio::time::timeout(REQUEST_TIMEOUT, poll).await {
            Ok(Ok(polled)) => Ok(polled.messages),
            Ok(Err(e)) => Err(format!("polling: {e}")),
            Err(_) => Err(format!("a poll timed out after {REQUEST_TIMEOUT:?}")),
        }
    }

    /// The range's messages, polled up to its end, and the partition's first offset if the
    /// read found the range's start below it.
    async fn messages(&self) -> Result<(Vec<TailMessage>, Option<i64>), String> {
        let TailRange { from, before, .. } = self.range;
        let (mut next, mut out, mut start) = (from, Vec::new(), None);
        while next < before {
            let mut polled = self
                .poll(&PollingStrategy::offset(next as u64), before - next)
                .await?;
            if polled.is_empty() && next == from {
                // Iggy 0.8 answers a poll below a partition's first message with nothing.
                let first = self.poll(&PollingStrategy::first(), 1).await?;
                match first.first().map(|m| m.header.offset as i64) {
                    // Nothing at all: the partition is empty below its end.
                    None => return Ok((out, Some(before))),
                    Some(f) if f > next => {
                        start = Some(f);
                        next = f;
                        continue;
                    }
                    Some(_) => {}
                }
            }
            let Some(last) = polled.last().map(|m| m.header.offset as i64) else {
                return Err(format!(
                    "no message from offset {next} although the partition holds offsets up to {}",
                    before - 1
                ));
            };
            // Or with the first message it still has (Iggy's offsets have no gaps of their
            // own: what is missing below it was deleted).
            let head = polled.first().map_or(next, |m| m.header.offset as i64);
            if next == from && head > from {
                start = Some(head);
            }
            for m in polled
                .drain(..)
                .filter(|m| (from..before).contains(&(m.header.offset as i64)))
            {
                let (key, tombstone) = key_and_tombstone(&m)
                    .map_err(|e| format!("offset {}: {e}", m.header.offset))?;
                out.push(TailMessage {
                    partition: self.range.partition,
                    offset: m.header.offset as i64,
                    timestamp_ms: Some((m.header.timestamp / 1000) as i64),
                    key,
                    payload: (!tombstone).then(|| m.payload.to_vec()),
                });
            }
            if last < next {
                return Err(format!(
                    "a poll from offset {next} answered from offset {last}"
                ));
            }
            next = last + 1;
        }
        Ok((out, start))
    }
}
