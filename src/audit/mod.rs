//! Audit: prove exactly-once for each topic and partition.
//!
//! For every partition, the audit re-reads the broker's log from its start up to the offsets
//! committed in the lake, and recomputes the expected latest version of every key with the
//! same rules as the ingest (a left fold over the stream, so batch boundaries do not matter),
//! and the expected dead letters. It then streams the live table and `dead_letters` and compares.
//!
//! Cost: one sequential read of each partition up to its committed offset, and one scan of
//! the key and provenance columns of the table. Memory holds one entry per live key (the key,
//! its precombine value and the source position of its winning message), never the records.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use arrow::array::{Array, Int32Array, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use futures::StreamExt;
use serde::Serialize;

mod log;

use crate::batch::{resolve, Resolution};
use crate::decode::Decoder;
use crate::lake::commit::{stored_offset, OffsetKey};
use crate::lake::dead_letters::TABLE as DEAD_LETTERS;
use crate::lake::index::row_keys;
use crate::lake::log::skipped_ranges;
use crate::lake::{Lake, LakeError};
use crate::spec::{meta, TopicSpec};

/// Errors that stop an audit (as opposed to findings, which it reports).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The lake could not be read.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// The broker could not be read.
    #[error("cannot read {topic} from {brokers}: {reason}")]
    Broker {
        /// Topic.
        topic: String,
        /// Bootstrap servers.
        brokers: String,
        /// Underlying error.
        reason: String,
    },
    /// Scanning a table failed.
    #[error("cannot scan `{table}`: {reason}")]
    Scan {
        /// Table.
        table: String,
        /// Underlying error.
        reason: String,
    },
}

/// One kind of violation in one topic, with a count and a few examples.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// `missing_key`, `extra_key`, `stale_row`, `duplicate_key`, `dead_letter_without_bad_message`,
    /// `bad_message_without_dead_letter`, `duplicate_dead_letter` or `offset_beyond_log`.
    pub kind: String,
    /// Topic.
    pub topic: String,
    /// How many.
    pub count: u64,
    /// Up to five examples.
    pub examples: Vec<String>,
}

/// What the audit saw of one partition.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct PartitionAudit {
    /// Partition.
    pub partition: i32,
    /// Next offset stored in the topic table.
    pub committed: Option<i64>,
    /// Next offset stored in `dead_letters`.
    pub dead_letters_committed: Option<i64>,
    /// First offset the broker still holds (what the audit could cover from).
    pub covered_from: Option<i64>,
    /// The broker's high watermark.
    pub high_watermark: Option<i64>,
    /// Messages re-read.
    pub messages_read: u64,
    /// Messages not yet committed to the lake (not a violation).
    pub lag: Option<i64>,
    /// Offsets the ingest moved past unread because the broker had deleted them
    /// (`on_data_loss = "skip"`), as recorded by commits still in the table's log.
    pub skipped: Vec<SkippedAudit>,
}

/// A range of offsets deleted from the broker before the ingest read them, which it skipped
/// (`on_data_loss = "skip"`): data lost on purpose, not an exactly-once violation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SkippedAudit {
    /// The first offset lost.
    pub from: i64,
    /// The first offset after them (the broker's log start then).
    pub to: i64,
    /// The table version whose commit moved past them.
    pub version: u64,
}

/// The audit of one topic.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TopicAudit {
    /// Topic.
    pub topic: String,
    /// Keys the table should hold.
    pub expected_rows: u64,
    /// Rows the table holds.
    pub table_rows: u64,
    /// Whether the broker still holds every committed message (else the audit is partial).
    pub complete_history: bool,
    /// Per partition.
    pub partitions: Vec<PartitionAudit>,
}

/// The whole audit.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AuditReport {
    /// Per topic.
    pub topics: Vec<TopicAudit>,
    /// Violations.
    pub findings: Vec<Finding>,
}

impl AuditReport {
    /// Whether no violation was found.
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }

    /// A human-readable summary.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut losses = String::new();
        for t in &self.topics {
            out.push_str(&format!(
                "{}: {} rows, {} expected{}\n",
                t.topic,
                t.table_rows,
                t.expected_rows,
                if t.complete_history { "" } else { " (broker no longer holds all committed messages: partial audit)" }
            ));
            for p in &t.partitions {
                out.push_str(&format!(
                    "  partition {}: committed {:?}, dead letters {:?}, high watermark {:?}, lag {:?}, re-read {} from {:?}\n",
                    p.partition, p.committed, p.dead_letters_committed, p.high_watermark, p.lag, p.messages_read, p.covered_from
                ));
                for s in &p.skipped {
                    let (topic, part, n) = (&t.topic, p.partition, s.to - s.from);
                    losses.push_str(&format!(
                        "DATA LOSS (on_data_loss = skip) in {topic}/{part}: offsets {}..{} ({n} offsets) were deleted from the broker before they were read; version {} committed past them\n",
                        s.from, s.to, s.version
                    ));
                }
            }
        }
        out.push_str(&losses);
        if self.findings.is_empty() {
            out.push_str("OK: exactly once — every committed message is in the lake once, and nothing else is.\n");
        }
        for f in &self.findings {
            out.push_str(&format!("VIOLATION {} in {}: {} (e.g. {})\n", f.kind, f.topic, f.count, f.examples.join(", ")));
        }
        out
    }
}

#[derive(Default)]
struct Tally {
    counts: BTreeMap<&'static str, (u64, Vec<String>)>,
}

impl Tally {
    fn add(&mut self, kind: &'static str, example: impl FnOnce() -> String) {
        let e = self.counts.entry(kind).or_default();
        e.0 += 1;
        if e.1.len() < 5 {
            e.1.push(example());
        }
    }

    fn into_findings(self, topic: &str) -> Vec<Finding> {
        self.counts
            .into_iter()
            .map(|(kind, (count, examples))| Finding { kind: kind.to_string(), topic: topic.to_string(), count, examples })
            .collect()
    }
}

/// Where to audit.
pub struct AuditOptions<'a> {
    /// Bootstrap servers.
    pub brokers: &'a str,
    /// Consumer group whose offsets are audited.
    pub group: &'a str,
    /// Source name of the stored offsets.
    pub source_name: &'a str,
    /// Extra librdkafka settings.
    pub kafka: &'a BTreeMap<String, String>,
    /// Read the topics from this Iggy server (`iggy://…`) instead of Kafka.
    pub iggy: Option<&'a str>,
    /// Stop reading a partition after this long without a message.
    pub idle: Duration,
    /// Largest message accepted (as in the ingest).
    pub max_message_bytes: usize,
}

/// Audit every topic in `specs` whose table exists.
pub async fn audit(lake: &Lake, specs: &[TopicSpec], opts: &AuditOptions<'_>) -> Result<AuditReport, AuditError> {
    let mut report = AuditReport::default();
    let dead = lake.open(DEAD_LETTERS).await?;
    for spec in specs {
        let Some(table) = lake.open(&spec.name).await? else { continue };
        let (topic_audit, findings) = audit_topic(lake, &table, dead.as_ref(), spec, opts).await?;
        report.topics.push(topic_audit);
        report.findings.extend(findings);
    }
    Ok(report)
}

struct Expected {
    precombine: i64,
    partition: i32,
    offset: i64,
    seen: bool,
}

async fn audit_topic(
    lake: &Lake,
    table: &deltalake::DeltaTable,
    dead: Option<&deltalake::DeltaTable>,
    spec: &TopicSpec,
    opts: &AuditOptions<'_>,
) -> Result<(TopicAudit, Vec<Finding>), AuditError> {
    let topic = spec.name.as_str();
    let from = match opts.iggy {
        Some(url) => crate::source::iggy::IggyAddress::parse(url).map(|a| a.display()).unwrap_or_else(|_| "Iggy".into()),
        None => opts.brokers.to_string(),
    };
    let broker_err = |reason: String| AuditError::Broker { topic: topic.to_string(), brokers: from.clone(), reason };
    let (mut log, partitions) = match opts.iggy {
        Some(url) => log::Log::iggy(url, topic).await,
        None => log::Log::kafka(opts.brokers, opts.kafka, topic),
    }
    .map_err(broker_err)?;

    let mut parts: BTreeMap<i32, PartitionAudit> = BTreeMap::new();
    let mut tally = Tally::default();
    let mut to_read = Vec::new();
    for &p in &partitions {
        let key = OffsetKey { source: opts.source_name.into(), group: opts.group.into(), topic: topic.into(), partition: p };
        let committed = stored_offset(table, topic, &key).await?;
        let dead_committed = match dead {
            Some(d) => stored_offset(d, DEAD_LETTERS, &key).await?,
            None => None,
        };
        parts.insert(p, PartitionAudit { partition: p, committed, dead_letters_committed: dead_committed, ..Default::default() });
        if committed.unwrap_or(0).max(dead_committed.unwrap_or(0)) > 0 {
            to_read.push(p);
        }
    }

    // The ranges this source and group skipped, from the commits still in the log.
    for (version, r) in skipped_ranges(table, topic).await? {
        if r.key.source == opts.source_name && r.key.group == opts.group {
            if let Some(a) = parts.get_mut(&r.key.partition) {
                a.skipped.push(SkippedAudit { from: r.from, to: r.to, version });
            }
        }
    }

    // Re-read the log up to the committed offsets.
    let decoder = Decoder::new(spec.clone(), opts.max_message_bytes).map_err(|e| broker_err(e.to_string()))?;
    let mut expected: HashMap<String, Expected> = HashMap::new();
    let mut bad: HashSet<(i32, i64)> = HashSet::new();
    let mut last_read: HashMap<i32, i64> = HashMap::new();
    let target = |a: &PartitionAudit| a.committed.unwrap_or(0).max(a.dead_letters_committed.unwrap_or(0));
    if !to_read.is_empty() {
        log.start(topic, &to_read).map_err(broker_err)?;
        let mut done: HashSet<i32> = parts.values().filter(|a| target(a) == 0).map(|a| a.partition).collect();
        while done.len() < parts.len() {
            let msg = match log.next(opts.idle).await.map_err(broker_err)? {
                None => break,
                Some(m) => m,
            };
            let (p, off) = (msg.partition, msg.offset);
            let Some(a) = parts.get_mut(&p) else { continue };
            if off >= target(a) {
                done.insert(p);
                continue;
            }
            a.covered_from.get_or_insert(off);
            a.messages_read += 1;
            last_read.insert(p, off);
            if off + 1 >= target(a) {
                done.insert(p);
            }
            // Skipped on purpose: neither a row nor a dead letter is owed (a broker that still
            // holds them had not deleted them everywhere, as with a replica behind).
            if a.skipped.iter().any(|s| (s.from..s.to).contains(&off)) {
                continue;
            }
            match decoder.decode(msg.key.as_deref(), msg.payload.as_deref(), p, off) {
                Err(_) => {
                    bad.insert((p, off));
                }
                Ok(r) if a.committed.is_some_and(|c| off < c) => {
                    let cur = expected.get(&r.key).map(|e| e.precombine);
                    let recs = [r];
                    match resolve(&recs, &[0], cur).0 {
                        Resolution::Upsert(_) => {
                            let [r] = recs;
                            expected.insert(r.key, Expected { precombine: r.precombine, partition: p, offset: off, seen: false });
                        }
                        Resolution::Delete => {
                            expected.remove(&recs[0].key);
                        }
                        Resolution::Unchanged => {}
                    }
                }
                Ok(_) => {}
            }
        }
    }
    // A partition that stopped short of its committed offset: either the offset is beyond the
    // log (a finding, below) or the broker stopped answering (no conclusion possible).
    for a in parts.values() {
        let t = target(a);
        if t == 0 || a.messages_read > 0 && a.covered_from.is_some_and(|f| f + a.messages_read as i64 >= t) {
            continue;
        }
        let hwm = log.end(topic, a.partition);
        if hwm.is_some_and(|h| h < t) {
            continue;
        }
        if last_read.get(&a.partition).is_some_and(|&o| o + 1 >= t) {
            continue;
        }
        return Err(broker_err(format!(
            "partition {}: no message for {:?} before reaching the committed offset {t} (last read {:?}, high watermark {hwm:?}); the audit cannot conclude",
            a.partition,
            opts.idle,
            last_read.get(&a.partition)
        )));
    }
    // A message the broker could not serve (Iggy 0.8 after a kill during a write) is owed
    // nothing only where a commit recorded it as skipped: else the audit cannot prove it.
    for &(p, off) in log.stepped_over() {
        if let Some(a) = parts.get(&p).filter(|a| off < target(a) && !a.skipped.iter().any(|s| (s.from..s.to).contains(&off))) {
            tally.add("unreadable_message", || format!("partition {} offset {off}: the broker cannot serve it, and no commit recorded it as skipped", a.partition));
        }
    }
    let mut complete = true;
    for a in parts.values_mut() {
        a.high_watermark = log.end(topic, a.partition);
        if let (Some(h), Some(c)) = (a.high_watermark, a.committed) {
            a.lag = Some((h - c).max(0));
        }
        let t = target(a);
        if let Some(h) = a.high_watermark {
            if t > h {
                tally.add("offset_beyond_log", || format!("partition {} committed {t} > high watermark {h}", a.partition));
            }
        }
        if a.covered_from.is_some_and(|f| f > 0) || (t > 0 && a.messages_read == 0) {
            complete = false;
        }
    }

    // Stream the table's keys, provenance, source and precombine value.
    let key_cols: Vec<String> = spec.key.clone();
    let cols: Vec<String> = key_cols
        .iter()
        .chain([meta::PARTITION.to_string(), meta::OFFSET.to_string(), meta::SOURCE.to_string(), spec.precombine.clone()].iter())
        .map(|c| format!("\"{c}\""))
        .collect();
    let sql = format!("SELECT {} FROM \"{}\"", cols.join(", "), topic);
    let mut extra_seen: HashSet<String> = HashSet::new();
    let mut table_rows = 0u64;
    let mut stream = crate::query::stream(lake, &[topic], &sql).await.map_err(|e| AuditError::Scan { table: topic.into(), reason: e.to_string() })?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| AuditError::Scan { table: topic.into(), reason: e.to_string() })?;
        let keys = row_keys(&batch, &key_cols).map_err(|e| AuditError::Scan { table: topic.into(), reason: e })?;
        let (ps, os) = provenance(&batch, meta::PARTITION, meta::OFFSET).map_err(|e| AuditError::Scan { table: topic.into(), reason: e })?;
        let (sources, precombines) = source_and_precombine(&batch, &spec.precombine).map_err(|e| AuditError::Scan { table: topic.into(), reason: e })?;
        for (i, key) in keys.into_iter().enumerate() {
            table_rows += 1;
            // A row another source wrote (a table two clusters feed after a failover): it is
            // that source's to account for, unless it holds a key this source owes, where it
            // may stand in for this source's version only if it is as new or newer.
            if sources[i].as_deref() != Some(opts.source_name) {
                let other = sources[i].as_deref().unwrap_or("no source");
                match expected.get_mut(&key) {
                    Some(e) if e.seen => tally.add("duplicate_key", || key.clone()),
                    Some(e) => {
                        e.seen = true;
                        if precombines[i] < e.precombine {
                            tally.add("stale_row", || format!("{key}: table has {other}'s {}/{}, older than {}/{} here", ps[i], os[i], e.partition, e.offset));
                        }
                    }
                    None if !extra_seen.insert(key.clone()) => tally.add("duplicate_key", || key.clone()),
                    None => {}
                }
                continue;
            }
            match expected.get_mut(&key) {
                Some(e) if e.seen => tally.add("duplicate_key", || key.clone()),
                Some(e) => {
                    e.seen = true;
                    if (e.partition, e.offset) != (ps[i], os[i]) {
                        tally.add("stale_row", || format!("{key}: table has {}/{}, expected {}/{}", ps[i], os[i], e.partition, e.offset));
                    }
                }
                None => {
                    if !extra_seen.insert(key.clone()) {
                        tally.add("duplicate_key", || key.clone());
                    } else if complete {
                        tally.add("extra_key", || format!("{key} ({}/{})", ps[i], os[i]));
                    }
                }
            }
        }
    }
    let expected_rows = expected.len() as u64;
    for (key, e) in &expected {
        if !e.seen {
            tally.add("missing_key", || format!("{key} ({}/{})", e.partition, e.offset));
        }
    }

    // Dead letters: each bad message below the data table's offset exactly once, nothing else.
    if dead.is_some() {
        let sql = format!(
            "SELECT _partition, _offset FROM \"{DEAD_LETTERS}\" WHERE _topic = '{}' AND _source = '{}'",
            topic.replace('\'', "''"),
            opts.source_name.replace('\'', "''")
        );
        let mut stream = crate::query::stream(lake, &[DEAD_LETTERS], &sql).await.map_err(|e| AuditError::Scan { table: DEAD_LETTERS.into(), reason: e.to_string() })?;
        let mut seen: HashSet<(i32, i64)> = HashSet::new();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| AuditError::Scan { table: DEAD_LETTERS.into(), reason: e.to_string() })?;
            let (ps, os) = provenance(&batch, meta::PARTITION, meta::OFFSET).map_err(|e| AuditError::Scan { table: DEAD_LETTERS.into(), reason: e })?;
            for (p, o) in ps.into_iter().zip(os) {
                if !seen.insert((p, o)) {
                    tally.add("duplicate_dead_letter", || format!("{p}/{o}"));
                } else if !bad.contains(&(p, o)) && parts.get(&p).and_then(|a| a.covered_from).is_some_and(|f| o >= f) {
                    tally.add("dead_letter_without_bad_message", || format!("{p}/{o}"));
                }
            }
        }
        for &(p, o) in &bad {
            let required = parts.get(&p).and_then(|a| a.committed).is_some_and(|c| o < c);
            if required && !seen.contains(&(p, o)) {
                tally.add("bad_message_without_dead_letter", || format!("{p}/{o}"));
            }
        }
    }
    let audit = TopicAudit { topic: topic.to_string(), expected_rows, table_rows, complete_history: complete, partitions: parts.into_values().collect() };
    Ok((audit, tally.into_findings(topic)))
}

fn provenance(batch: &arrow::record_batch::RecordBatch, p: &str, o: &str) -> Result<(Vec<i32>, Vec<i64>), String> {
    let pc = cast(batch.column_by_name(p).ok_or(format!("no column {p}"))?, &DataType::Int32).map_err(|e| e.to_string())?;
    let oc = cast(batch.column_by_name(o).ok_or(format!("no column {o}"))?, &DataType::Int64).map_err(|e| e.to_string())?;
    let pc = pc.as_any().downcast_ref::<Int32Array>().ok_or("bad partition column")?;
    let oc = oc.as_any().downcast_ref::<Int64Array>().ok_or("bad offset column")?;
    Ok(((0..pc.len()).map(|i| pc.value(i)).collect(), (0..oc.len()).map(|i| oc.value(i)).collect()))
}

/// Each row's source name and precombine value (a timestamp in microseconds, as the decoder
/// reads it, or a long).
fn source_and_precombine(batch: &arrow::record_batch::RecordBatch, precombine: &str) -> Result<(Vec<Option<String>>, Vec<i64>), String> {
    let sc = cast(batch.column_by_name(meta::SOURCE).ok_or(format!("no column {}", meta::SOURCE))?, &DataType::Utf8).map_err(|e| e.to_string())?;
    let sc = sc.as_any().downcast_ref::<arrow::array::StringArray>().ok_or("bad source column")?;
    let column = batch.column_by_name(precombine).ok_or(format!("no column {precombine}"))?;
    let micros = match column.data_type() {
        DataType::Timestamp(_, tz) => cast(column, &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, tz.clone())).and_then(|c| cast(&c, &DataType::Int64)),
        _ => cast(column, &DataType::Int64),
    }
    .map_err(|e| e.to_string())?;
    let pc = micros.as_any().downcast_ref::<Int64Array>().ok_or("bad precombine column")?;
    Ok(((0..sc.len()).map(|i| sc.is_valid(i).then(|| sc.value(i).to_string())).collect(), (0..pc.len()).map(|i| if pc.is_valid(i) { pc.value(i) } else { i64::MIN }).collect()))
}
