//! The brokers page's view of an Iggy server ([`crate::source::inspect`]): the stream's
//! topics with each partition's end, each topic's consumer groups with the offsets they
//! stored, and a topic's newest messages. The tail polls as a consumer of its own with
//! `auto_commit` off, so it stores nothing and joins no group.

use iggy::prelude::*;

use super::keys::key_and_tombstone;
use super::listing::source_err;
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

/// The end Iggy's listing implies: the next offset to be written.
fn end_of(p: &Partition) -> i64 {
    if p.messages_count == 0 && p.current_offset == 0 {
        0
    } else {
        p.current_offset as i64 + 1
    }
}

/// The stream's topics, or only the one named `only`, with their partitions' ends (Iggy does
/// not list a partition's first offset). A stream not created yet has no topics.
pub async fn topics(
    address: &IggyAddress,
    only: Option<&str>,
) -> Result<Vec<TopicView>, SourceError> {
    let client = connect(address).await?;
    let s = ident(address, &address.stream)?;
    let listed: Vec<Identifier> = match only {
        Some(name) => vec![ident(address, name)?],
        None => match timed(address, "get_stream", client.get_stream(&s)).await? {
            Some(stream) => stream
                .topics
                .iter()
                .map(|t| Identifier::numeric(t.id))
                .collect::<Result<_, _>>()
                .map_err(|e| source_err(address, e))?,
            None => Vec::new(),
        },
    };
    let mut out = Vec::new();
    for t in listed {
        let Some(details) = timed(address, "get_topic", client.get_topic(&s, &t)).await? else {
            continue;
        };
        let mut partitions: Vec<PartitionView> = details
            .partitions
            .iter()
            .map(|p| PartitionView {
                partition: p.id as i32,
                start: None,
                end: Some(end_of(p)),
            })
            .collect();
        partitions.sort_by_key(|p| p.partition);
        out.push(TopicView {
            name: details.name,
            partitions,
        });
    }
    let _ = client.shutdown().await;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The consumer groups of `topics` (Iggy keeps them per topic: a name on several topics is
/// one entry), each with the offsets it stored, as the next offset it would read.
pub async fn groups(
    address: &IggyAddress,
    topics: &[TopicView],
) -> Result<Vec<GroupView>, SourceError> {
    let client = connect(address).await?;
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
    let _ = client.shutdown().await;
    Ok(by_name.into_values().collect())
}

/// The messages of each range of `topic`. Iggy reads at exact offsets; a range whose start
/// has expired reads from the first message the server still has.
pub async fn tail(
    address: &IggyAddress,
    topic: &str,
    ranges: &[TailRange],
) -> Result<Tail, SourceError> {
    let client = connect(address).await?;
    let (s, t) = (ident(address, &address.stream)?, ident(address, topic)?);
    let consumer =
        Consumer::new(Identifier::numeric(TAIL_CONSUMER).map_err(|e| source_err(address, e))?);
    let mut out = Tail::default();
    for r in ranges.iter().filter(|r| r.from < r.before) {
        let count = u32::try_from(r.before - r.from).unwrap_or(u32::MAX);
        let (at, first) = (
            PollingStrategy::offset(r.from as u64),
            PollingStrategy::first(),
        );
        let poll = |strategy| {
            client.poll_messages(
                &s,
                &t,
                Some(r.partition as u32),
                &consumer,
                strategy,
                count,
                false,
            )
        };
        let mut polled = timed(address, "poll_messages", poll(&at)).await?;
        if polled.messages.is_empty() {
            // Iggy 0.8 answers a poll below a partition's first message with nothing.
            polled = timed(address, "poll_messages", poll(&first)).await?;
        }
        for m in polled
            .messages
            .iter()
            .filter(|m| (r.from..r.before).contains(&(m.header.offset as i64)))
        {
            let (key, tombstone) = match key_and_tombstone(m) {
                Ok(k) => k,
                Err(e) => {
                    out.incomplete
                        .push((r.partition, format!("offset {}: {e}", m.header.offset)));
                    continue;
                }
            };
            out.messages.push(TailMessage {
                partition: r.partition,
                offset: m.header.offset as i64,
                timestamp_ms: Some((m.header.timestamp / 1000) as i64),
                key,
                payload: (!tombstone).then(|| m.payload.to_vec()),
            });
        }
    }
    let _ = client.shutdown().await;
    Ok(out)
}
