//! Iggy consumer groups: which partitions this member reads, and handing them over.
//!
//! Every `ingest --iggy` process joins one Iggy consumer group per topic (named like the
//! Kafka group, `group` in the config), and the server shares the topic's partitions among
//! the members. The group decides only who reads what: where a partition starts is still the
//! offset in the lake, committed in the same Delta commit as the rows.
//!
//! - **Which partitions are this member's.** Iggy 0.8 lists a group's members under ids of its
//!   own, not the clients' (and answers a lookup of a partition's group offset alike whether
//!   the member holds it or not). A joining member gets the next id above the group's
//!   highest, so the member compares the ids before and after its join: the one new id is
//!   its own (with none or two new, another client joined at once: it leaves and joins
//!   again). Its partitions are then those listed under that id, including any it is handing
//!   over. The client's id tells whether the connection is still the one that joined: a
//!   reconnected client (the server restarted) joins again.
//! - **Handing a partition over.** When a member joins, the server takes partitions from the
//!   others cooperatively: a partition moves once the group's stored offset has reached the
//!   last offset its holder polled (or after the server's `rebalancing_timeout`, 30 s by
//!   default). The holder stores the lake's committed offset there after each commit, so a
//!   partition moves only when what was read from it is in the lake, and the new holder
//!   starts from the lake where the old one stopped.
//! - **Leaving.** A process that exits or is killed drops its connection, and the server gives
//!   its partitions to the others at once. After a server restart the member is no longer in
//!   the group and joins again.

use std::collections::BTreeSet;

use iggy::prelude::*;

use super::REQUEST_TIMEOUT;
use crate::source::TopicPartition;

/// What a look at the group found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Held {
    /// The partitions this member holds now.
    Partitions(BTreeSet<TopicPartition>),
    /// The server no longer counts this client a member (it restarted, or the connection
    /// was replaced): join again.
    NotMember,
}

/// The consumer group `name` on the topics of one stream.
#[derive(Debug)]
pub(super) struct Group {
    name: String,
    stream: String,
    /// The client that joined, and its member id in each topic's group.
    me: tokio::sync::Mutex<Option<(u32, std::collections::HashMap<String, u32>)>>,
}

fn ident(name: &str) -> Result<Identifier, String> {
    Identifier::named(name).map_err(|e| e.to_string())
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, IggyError>>,
) -> Result<T, IggyError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!("Iggy {what} timed out after {REQUEST_TIMEOUT:?}");
            Err(IggyError::Error)
        }
    }
}

/// How many times a join is tried again when another client joined at the same moment.
const JOIN_TRIES: u32 = 10;

impl Group {
    pub(super) fn new(name: &str, stream: &str) -> Self {
        Group {
            name: name.to_string(),
            stream: stream.to_string(),
            me: Default::default(),
        }
    }

    /// The group's name.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The group as a polling consumer.
    pub(super) fn consumer(&self) -> Result<Consumer, String> {
        Ok(Consumer::group(ident(&self.name)?))
    }

    /// The member ids of the group on `topic` (none when it has no such group).
    async fn member_ids(&self, client: &IggyClient, topic: &str) -> Result<BTreeSet<u32>, String> {
        Ok(self
            .members(client, topic)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Each member of the group on `topic`: its id and its partitions.
    async fn members(
        &self,
        client: &IggyClient,
        topic: &str,
    ) -> Result<Vec<(u32, Vec<u32>)>, String> {
        let (s, t, g) = (ident(&self.stream)?, ident(topic)?, ident(&self.name)?);
        match timed("get_consumer_group", client.get_consumer_group(&s, &t, &g)).await {
            Ok(Some(details)) => Ok(details
                .members
                .into_iter()
                .map(|m| (m.id, m.partitions))
                .collect()),
            Ok(None) => Ok(Vec::new()),
            Err(e) => Err(format!(
                "cannot read the consumer group `{}` on `{}/{topic}`: {e}",
                self.name, self.stream
            )),
        }
    }

    /// Forget this member's id: the next look joins again.
    pub(super) async fn forget(&self) {
        if self.me.lock().await.take().is_some() {
            tracing::warn!(group = %self.name, "the Iggy server keeps answering that this member does not hold partitions listed under its id; joining the group again");
        }
    }

    /// Leave the group on each topic (advisory: closing the connection leaves it too).
    pub(super) async fn leave(&self, client: &IggyClient, topics: &[String]) {
        let (Ok(s), Ok(g)) = (ident(&self.stream), ident(&self.name)) else {
            return;
        };
        for topic in topics {
            if let Ok(t) = ident(topic) {
                let _ = timed(
                    "leave_consumer_group",
                    client.leave_consumer_group(&s, &t, &g),
                )
                .await;
            }
        }
        *self.me.lock().await = None;
    }

    /// Create the group on each topic if it is missing, and join it, learning this member's id.
    pub(super) async fn join(&self, client: &IggyClient, topics: &[String]) -> Result<(), String> {
        let (s, g) = (ident(&self.stream)?, ident(&self.name)?);
        // Until the new id is known (a join cut short leaves none, and the next look joins).
        *self.me.lock().await = None;
        let client_id = timed("get_me", client.get_me())
            .await
            .map_err(|e| format!("cannot read this client's id: {e}"))?
            .client_id;
        let mut ids = std::collections::HashMap::new();
        for topic in topics {
            let t = ident(topic)?;
            match timed(
                "create_consumer_group",
                client.create_consumer_group(&s, &t, &self.name),
            )
            .await
            {
                Ok(_) | Err(IggyError::ConsumerGroupNameAlreadyExists(..)) => {}
                Err(e) => {
                    return Err(format!(
                        "cannot create the consumer group `{}` on `{}/{topic}`: {e}",
                        self.name, self.stream
                    ))
                }
            }
            let mut tries = 0;
            let id = loop {
                let before = self.member_ids(client, topic).await?;
                timed(
                    "join_consumer_group",
                    client.join_consumer_group(&s, &t, &g),
                )
                .await
                .map_err(|e| {
                    format!(
                        "cannot join the consumer group `{}` on `{}/{topic}`: {e}",
                        self.name, self.stream
                    )
                })?;
                let new: Vec<u32> = self
                    .member_ids(client, topic)
                    .await?
                    .difference(&before)
                    .copied()
                    .collect();
                if let [id] = new[..] {
                    break id;
                }
                tries += 1;
                if tries >= JOIN_TRIES {
                    return Err(format!("cannot tell this member's id in the consumer group `{}` on `{}/{topic}`: other clients kept joining at the same moment", self.name, self.stream));
                }
                let _ = timed(
                    "leave_consumer_group",
                    client.leave_consumer_group(&s, &t, &g),
                )
                .await;
                tokio::time::sleep(std::time::Duration::from_millis(
                    50 + 50 * u64::from(client_id % 7),
                ))
                .await;
            };
            ids.insert(topic.clone(), id);
        }
        *self.me.lock().await = Some((client_id, ids));
        Ok(())
    }

    /// Which of `all` this member holds now (including partitions it is handing over).
    pub(super) async fn held(
        &self,
        client: &IggyClient,
        all: &[TopicPartition],
    ) -> Result<Held, String> {
        let Some((client_id, ids)) = self.me.lock().await.clone() else {
            return Ok(Held::NotMember);
        };
        let now = timed("get_me", client.get_me())
            .await
            .map_err(|e| format!("cannot read this client's id: {e}"))?
            .client_id;
        if now != client_id {
            return Ok(Held::NotMember);
        }
        let mut held = BTreeSet::new();
        let mut topics: Vec<&String> = all.iter().map(|(t, _)| t).collect();
        topics.dedup();
        for topic in topics {
            let Some(id) = ids.get(topic) else {
                return Ok(Held::NotMember);
            };
            let members = self.members(client, topic).await?;
            let Some((_, partitions)) = members.iter().find(|(m, _)| m == id) else {
                return Ok(Held::NotMember);
            };
            held.extend(
                partitions
                    .iter()
                    .map(|p| (topic.clone(), *p as i32))
                    .filter(|tp| all.contains(tp)),
            );
        }
        Ok(Held::Partitions(held))
    }
    /// Store `next - 1`, the last offset in the lake, as the group's offset of each partition:
    /// a partition being handed over moves once it reaches what this member polled. Advisory:
    /// a failure is logged, and the next look at the group stores it again.
    pub(super) async fn store(&self, client: &IggyClient, committed: &[(TopicPartition, i64)]) {
        let (Ok(s), Ok(consumer)) = (ident(&self.stream), self.consumer()) else {
            return;
        };
        for ((topic, partition), next) in committed {
            let (Ok(t), Some(last)) = (ident(topic), next.checked_sub(1).filter(|l| *l >= 0))
            else {
                continue;
            };
            if let Err(e) = timed(
                "store_consumer_offset",
                client.store_consumer_offset(
                    &consumer,
                    &s,
                    &t,
                    Some(*partition as u32),
                    last as u64,
                ),
            )
            .await
            {
                tracing::debug!(error = %e, topic = %topic, partition, "storing the Iggy group offset failed (advisory)");
            }
        }
    }
}
