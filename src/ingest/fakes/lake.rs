//! The fake lake: rows, dead letters, stored offsets and fences, with faults for the next
//! commits.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

use super::lock;
use crate::lake::commit::OffsetRange;
use crate::lake::dead_letters::DeadLetter;
use crate::lake::tables::{TableResult, Tables, TopicBatch};
use crate::lake::upsert::UpsertOutcome;
use crate::lake::LakeError;
use crate::source::{PartitionStarts, StartLoader, TopicPartition};

/// What a fake commit does instead of succeeding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::ingest) enum Fault {
    /// Conflicts with a concurrent commit once, then commits (as the Delta retry loop does).
    Conflict,
    /// Fails before committing; retryable (a storage error) or not.
    Fail { retryable: bool },
    /// Commits, then reports a retryable failure (the reply was lost).
    LostReply,
    /// Commits after this long.
    Delay(Duration),
    /// Never returns.
    Hang,
}

/// One row the fake lake holds, as its commit wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::ingest) struct Row {
    pub(in crate::ingest) partition: i32,
    pub(in crate::ingest) offset: i64,
    pub(in crate::ingest) key: String,
    pub(in crate::ingest) deleted: bool,
}

/// The lake's side: rows, dead letters, stored offsets, and faults for the next commits.
#[derive(Debug, Default)]
pub(in crate::ingest) struct Store {
    /// Each topic's rows, in commit order.
    pub(in crate::ingest) rows: BTreeMap<String, Vec<Row>>,
    /// Dead letters: partition and offset.
    pub(in crate::ingest) dead: Vec<(TopicPartition, i64)>,
    /// The topic tables' stored offsets.
    pub(in crate::ingest) offsets: HashMap<TopicPartition, i64>,
    /// `dead_letters`' stored offsets.
    pub(in crate::ingest) dead_offsets: HashMap<TopicPartition, i64>,
    /// Faults of the next commits (dead letters and upserts), in order.
    pub(in crate::ingest) faults: VecDeque<Fault>,
    /// Commits made.
    pub(in crate::ingest) commits: u64,
    /// Commits refused by the fence.
    pub(in crate::ingest) fenced: u64,
    /// The ranges the topic tables' commits recorded as deleted unread
    /// (`on_data_loss = "skip"`): partition, from, to.
    pub(in crate::ingest) skipped: Vec<(TopicPartition, i64, i64)>,
}

impl Store {
    /// Every range starts at the stored offset (`None`: nothing stored), or the commit is fenced.
    fn fence(
        stored: &HashMap<TopicPartition, i64>,
        table: &str,
        ranges: &[OffsetRange],
    ) -> Result<(), LakeError> {
        for r in ranges {
            let tp = (r.key.topic.clone(), r.key.partition);
            if stored.get(&tp).copied() != r.start {
                return Err(LakeError::Fenced {
                    table: table.to_string(),
                    partition: tp.1,
                    expected: r.start,
                    found: stored.get(&tp).copied(),
                });
            }
        }
        Ok(())
    }

    fn advance(stored: &mut HashMap<TopicPartition, i64>, ranges: &[OffsetRange]) {
        for r in ranges {
            stored.insert((r.key.topic.clone(), r.key.partition), r.end);
        }
    }

    /// Another writer commits `tp` up to `end`, with these rows (a member of the same group).
    pub(in crate::ingest) fn commit_as_other(
        &mut self,
        tp: &TopicPartition,
        rows: Vec<Row>,
        end: i64,
    ) {
        self.rows.entry(tp.0.clone()).or_default().extend(rows);
        self.offsets.insert(tp.clone(), end);
        self.commits += 1;
    }
}

/// The lake in memory; clones share it.
#[derive(Debug, Clone, Default)]
pub(in crate::ingest) struct FakeTables(pub(in crate::ingest) Arc<Mutex<Store>>);

impl FakeTables {
    /// The next commits meet these faults, in order.
    pub(in crate::ingest) fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        lock(&self.0).faults.extend(faults);
    }

    fn fault(&self) -> Option<Fault> {
        lock(&self.0).faults.pop_front()
    }
}

/// Fails, hangs, or returns the attempts a commit took (1, or 2 after a conflict), and whether
/// to report a lost reply after committing.
async fn meet(fault: Option<Fault>, table: &str) -> Result<(u32, bool), LakeError> {
    match fault {
        None => Ok((1, false)),
        Some(Fault::Conflict) => Ok((2, false)),
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            Ok((1, false))
        }
        Some(Fault::LostReply) => Ok((1, true)),
        Some(Fault::Fail { retryable: true }) => Err(LakeError::Storage {
            table: table.into(),
            reason: "injected storage failure".into(),
        }),
        Some(Fault::Fail { retryable: false }) => Err(LakeError::Data {
            table: table.into(),
            reason: "injected fatal failure".into(),
        }),
        Some(Fault::Hang) => std::future::pending().await,
    }
}

fn lost_reply(table: &str) -> LakeError {
    LakeError::Storage {
        table: table.into(),
        reason: "injected: committed, but the reply was lost".into(),
    }
}

impl StartLoader for FakeTables {
    fn load<'a>(
        &'a self,
        partitions: &'a [TopicPartition],
    ) -> BoxFuture<'a, Result<HashMap<TopicPartition, PartitionStarts>, String>> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            let s = lock(&self.0);
            Ok(partitions
                .iter()
                .map(|tp| {
                    (
                        tp.clone(),
                        PartitionStarts {
                            data: s.offsets.get(tp).copied(),
                            dead: s.dead_offsets.get(tp).copied(),
                        },
                    )
                })
                .collect())
        })
    }
}

impl Tables for FakeTables {
    fn starts(&self) -> Arc<dyn StartLoader> {
        Arc::new(self.clone())
    }

    fn append_dead_letters<'a>(
        &'a mut self,
        letters: &'a [DeadLetter],
        ranges: &'a [OffsetRange],
        _source_name: &'a str,
    ) -> BoxFuture<'a, Result<(), LakeError>> {
        Box::pin(async move {
            let fault = self.fault();
            tokio::task::yield_now().await;
            let (_, lost) = meet(fault, "dead_letters").await?;
            let mut s = lock(&self.0);
            Store::fence(&s.dead_offsets, "dead_letters", ranges)?;
            s.dead.extend(
                letters
                    .iter()
                    .map(|d| ((d.topic.clone(), d.partition), d.offset)),
            );
            Store::advance(&mut s.dead_offsets, ranges);
            s.commits += 1;
            if lost {
                return Err(lost_reply("dead_letters"));
            }
            Ok(())
        })
    }

    fn upsert<'a>(
        &'a mut self,
        work: Vec<TopicBatch<'a>>,
        _source_name: &'a str,
    ) -> BoxFuture<'a, Vec<TableResult>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for b in work {
                let fault = self.fault();
                tokio::task::yield_now().await;
                let result = match meet(fault, b.topic).await {
                    Err(e) => Err(e),
                    Ok((attempts, lost)) => {
                        let mut s = lock(&self.0);
                        match Store::fence(&s.offsets, b.topic, b.ranges) {
                            Err(e) => {
                                s.fenced += 1;
                                Err(e)
                            }
                            Ok(()) => {
                                let rows = b.records.iter().map(|r| Row {
                                    partition: r.partition,
                                    offset: r.offset,
                                    key: r.key.clone(),
                                    deleted: r.deleted,
                                });
                                s.rows.entry(b.topic.to_string()).or_default().extend(rows);
                                Store::advance(&mut s.offsets, b.ranges);
                                let skipped = b.skipped.iter().map(|r| ((r.key.topic.clone(), r.key.partition), r.from, r.to));
                                s.skipped.extend(skipped);
                                s.commits += 1;
                                if lost {
                                    Err(lost_reply(b.topic))
                                } else {
                                    Ok(UpsertOutcome {
                                        inserted: b.records.len() as u64,
                                        attempts,
                                        ..Default::default()
                                    })
                                }
                            }
                        }
                    }
                };
                out.push(TableResult {
                    topic: b.topic.to_string(),
                    result,
                    seconds: 0.0,
                });
            }
            out
        })
    }
}
