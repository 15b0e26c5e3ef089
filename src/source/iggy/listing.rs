//! What the source asks the server besides messages: each partition's end, and how often a
//! failure that repeats every poll is logged.

use std::collections::HashMap;
use std::time::Duration;

use iggy::prelude::*;
use tokio::time::Instant;

use super::{IggyAddress, REQUEST_TIMEOUT};
use crate::source::TopicPartition;

/// One warning per [`Quiet::EVERY`] for failures that repeat every poll.
#[derive(Default)]
pub(super) struct Quiet(std::sync::Mutex<Option<Instant>>);

impl Quiet {
    const EVERY: Duration = Duration::from_secs(10);

    /// Whether to log this failure (the first, or the first after [`Quiet::EVERY`]).
    pub(super) fn warn_now(&self) -> bool {
        let Ok(mut last) = self.0.lock() else { return true };
        if last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

pub(super) fn source_err(address: &IggyAddress, reason: impl std::fmt::Display) -> crate::source::SourceError {
    crate::source::SourceError::Broker { brokers: address.display(), reason: reason.to_string() }
}

/// Each partition of `topics` with its first offset (0: Iggy does not list it) and its end
/// (the next offset to be written), as the server lists them now.
pub(super) async fn list(client: &IggyClient, address: &IggyAddress, topics: &[String]) -> Result<HashMap<TopicPartition, (i64, i64)>, crate::source::SourceError> {
    let s = Identifier::named(&address.stream).map_err(|e| source_err(address, e))?;
    let mut out = HashMap::new();
    for topic in topics {
        let t = Identifier::named(topic).map_err(|e| source_err(address, e))?;
        let details = match tokio::time::timeout(REQUEST_TIMEOUT, client.get_topic(&s, &t)).await {
            Ok(Ok(Some(d))) => d,
            Ok(Ok(None)) => return Err(crate::source::SourceError::UnknownTopic { topic: topic.clone(), brokers: address.display() }),
            Ok(Err(e)) => return Err(source_err(address, format!("cannot list topic `{topic}`: {e}"))),
            Err(_) => return Err(source_err(address, format!("listing topic `{topic}` timed out"))),
        };
        for p in &details.partitions {
            // A partition whose messages have all expired keeps its offset (no messages, an
            // offset past 0).
            let end = if p.messages_count == 0 && p.current_offset == 0 { 0 } else { p.current_offset as i64 + 1 };
            out.insert((topic.clone(), p.id as i32), (0, end));
        }
    }
    Ok(out)
}
