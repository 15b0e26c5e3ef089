//! `freshness()`: per topic table, each source partition's committed offset against the
//! broker's high watermark, each `date` partition's newest event, and the last commit.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use deltalake::datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use deltalake::datafusion::common::Result as DfResult;

use super::{plan_err, Lazy};
use crate::lake::commit::OffsetKey;
use crate::lake::log::read_commit;
use crate::lake::{Lake, LakeError};

/// Where `freshness()` finds the broker.
#[derive(Debug, Clone)]
pub struct BrokerInfo {
    /// The source name whose offsets this broker holds.
    pub source_name: String,
    /// The broker's high watermarks (its address and `[kafka]` properties are theirs),
    /// shared by every query of the process.
    pub watermarks: Arc<crate::source::kafka::watermarks::Watermarks>,
}

impl BrokerInfo {
    /// The broker at `brokers`, holding `source_name`'s offsets.
    pub fn new(brokers: &str, source_name: &str, kafka: &std::collections::BTreeMap<String, String>) -> Self {
        let watermarks = Arc::new(crate::source::kafka::watermarks::Watermarks::new(brokers, kafka));
        BrokerInfo { source_name: source_name.to_string(), watermarks }
    }
}

/// The schema of `freshness()`.
pub fn freshness_schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("scope", DataType::Utf8, false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, true),
        Field::new("consumer_group", DataType::Utf8, true),
        Field::new("partition", DataType::Int32, true),
        Field::new("committed_offset", DataType::Int64, true),
        Field::new("high_watermark", DataType::Int64, true),
        Field::new("lag", DataType::Int64, true),
        Field::new("date", DataType::Date32, true),
        Field::new("newest_event_time", ts(), true),
        Field::new("rows", DataType::Int64, true),
        Field::new("last_commit", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
    ]))
}

#[derive(Default)]
struct FreshRow {
    scope: &'static str,
    table: String,
    source: Option<String>,
    group: Option<String>,
    /// The topic of a partition row (the table may hold another topic's offsets).
    topic: Option<String>,
    partition: Option<i32>,
    committed: Option<i64>,
    hwm: Option<i64>,
    date: Option<i32>,
    newest: Option<i64>,
    rows: Option<i64>,
    last_commit: Option<i64>,
}

/// Per topic table: for each source partition its committed offset, the broker's high
/// watermark and the lag; for each `date` partition the newest event time and row count; and
/// the time of the last commit. With it, SQL can tell whether `date = today` is complete.
pub async fn freshness(lake: &Lake, broker: Option<&BrokerInfo>) -> Result<RecordBatch, LakeError> {
    let mut out: Vec<FreshRow> = Vec::new();
    let mut wanted: Vec<(String, i32)> = Vec::new();
    let tables = crate::query::list_tables(lake).await?;
    for name in tables.iter().filter(|t| t.as_str() != crate::lake::dead_letters::TABLE) {
        let Some(table) = lake.open(name).await? else { continue };
        let latest = table.version().unwrap_or(0);
        let last_commit = read_commit(&table, name, latest).await?.and_then(|c| c.timestamp_ms);
        for (key, committed) in table_offsets(&table, name).await? {
            // Offsets of the local cluster are compared with its broker (below); other sources'
            // are not.
            if broker.is_some_and(|b| key.source == b.source_name) {
                wanted.push((key.topic.clone(), key.partition));
            }
            out.push(FreshRow {
                scope: "partition",
                table: name.clone(),
                source: Some(key.source),
                group: Some(key.group),
                topic: Some(key.topic),
                partition: Some(key.partition),
                committed: Some(committed),
                last_commit,
                ..Default::default()
            });
        }
        // Newest event per date partition.
        let time_col = table
            .snapshot()
            .ok()
            .and_then(|s| s.metadata().configuration().get("lakepipe.partition_time").cloned())
            .unwrap_or_else(|| "timestamp".to_string());
        let sql = format!("SELECT CAST(date AS INT) AS d, CAST(max(\"{time_col}\") AS BIGINT) AS newest, count(*) AS n FROM \"{name}\" GROUP BY date");
        let mut stream = crate::query::stream(lake, &[name.as_str()], &sql).await.map_err(|e| LakeError::data(name, e))?;
        use futures::StreamExt;
        while let Some(b) = stream.next().await {
            let b = b.map_err(|e| LakeError::data(name, e))?;
            let d = crate::lake::index::i64_values(&b, "d").map_err(|e| LakeError::data(name, e))?;
            let newest = crate::lake::index::i64_values(&b, "newest").map_err(|e| LakeError::data(name, e))?;
            let n = crate::lake::index::i64_values(&b, "n").map_err(|e| LakeError::data(name, e))?;
            for i in 0..b.num_rows() {
                out.push(FreshRow {
                    scope: "date",
                    table: name.clone(),
                    date: Some(d[i] as i32),
                    newest: (newest[i] != i64::MIN).then_some(newest[i]),
                    rows: Some(n[i]),
                    last_commit,
                    ..Default::default()
                });
            }
        }
    }
    if let Some(b) = broker {
        fill_watermarks(&mut out, b, &wanted).await;
    }
    out.sort_by(|a, b| (a.table.as_str(), a.scope, a.partition, a.date).cmp(&(b.table.as_str(), b.scope, b.partition, b.date)));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(out.iter().map(|r| r.scope).collect::<Vec<_>>())),
        Arc::new(StringArray::from(out.iter().map(|r| r.table.as_str()).collect::<Vec<_>>())),
        Arc::new(StringArray::from(out.iter().map(|r| r.source.clone()).collect::<Vec<_>>())),
        Arc::new(StringArray::from(out.iter().map(|r| r.group.clone()).collect::<Vec<_>>())),
        Arc::new(arrow::array::Int32Array::from(out.iter().map(|r| r.partition).collect::<Vec<_>>())),
        Arc::new(Int64Array::from(out.iter().map(|r| r.committed).collect::<Vec<_>>())),
        Arc::new(Int64Array::from(out.iter().map(|r| r.hwm).collect::<Vec<_>>())),
        Arc::new(Int64Array::from(out.iter().map(|r| r.hwm.zip(r.committed).map(|(h, c)| (h - c).max(0))).collect::<Vec<_>>())),
        Arc::new(arrow::array::Date32Array::from(out.iter().map(|r| r.date).collect::<Vec<_>>())),
        Arc::new(arrow::array::TimestampMicrosecondArray::from(out.iter().map(|r| r.newest).collect::<Vec<_>>()).with_timezone("UTC")),
        Arc::new(Int64Array::from(out.iter().map(|r| r.rows).collect::<Vec<_>>())),
        Arc::new(TimestampMillisecondArray::from(out.iter().map(|r| r.last_commit).collect::<Vec<_>>()).with_timezone("UTC")),
    ];
    RecordBatch::try_new(freshness_schema(), cols).map_err(|e| LakeError::data("freshness", e))
}

/// The source offsets a table holds: the newest `txn` of each source partition in its last
/// 200 commits, as the next offset to read.
pub async fn table_offsets(table: &deltalake::DeltaTable, name: &str) -> Result<Vec<(OffsetKey, i64)>, LakeError> {
    let latest = table.version().unwrap_or(0);
    let mut offsets: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for v in (latest.saturating_sub(200)..=latest).rev() {
        if let Some(c) = read_commit(table, name, v).await? {
            for (id, off) in c.txns {
                offsets.entry(id).or_insert(off);
            }
        }
    }
    Ok(offsets.into_iter().filter_map(|(id, next)| Some((OffsetKey::parse_app_id(&id)?, next))).collect())
}

/// Every topic table's source offsets (see [`table_offsets`]), by table.
pub async fn lake_offsets(lake: &Lake) -> Result<Vec<(String, OffsetKey, i64)>, LakeError> {
    let mut out = Vec::new();
    for name in crate::query::list_tables(lake).await?.into_iter().filter(|t| t.as_str() != crate::lake::dead_letters::TABLE) {
        let Some(table) = lake.open(&name).await? else { continue };
        out.extend(table_offsets(&table, &name).await?.into_iter().map(|(k, o)| (name.clone(), k, o)));
    }
    Ok(out)
}

/// How long `freshness()` waits for the broker's high watermarks, in all.
const WATERMARK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Fill in each partition row's high watermark from the broker, in one bounded lookup; a
/// broker that does not answer leaves them NULL, with one warning.
async fn fill_watermarks(out: &mut [FreshRow], broker: &BrokerInfo, wanted: &[(String, i32)]) {
    if wanted.is_empty() {
        return;
    }
    let marks = match broker.watermarks.get(wanted, WATERMARK_TIMEOUT).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "freshness(): no high watermarks from the broker; high_watermark and lag are NULL");
            return;
        }
    };
    for row in out.iter_mut().filter(|r| r.scope == "partition" && r.source.as_deref() == Some(broker.source_name.as_str())) {
        let topic = row.topic.clone().unwrap_or_default();
        row.hwm = row.partition.and_then(|p| marks.get(&(topic, p)).copied());
    }
}

/// `freshness()`.
#[derive(Debug)]
pub struct Freshness {
    /// The lake.
    pub lake: Lake,
    /// The broker, when known.
    pub broker: Option<BrokerInfo>,
}

impl TableFunctionImpl for Freshness {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        if !args.exprs().is_empty() {
            return Err(plan_err("freshness() takes no arguments"));
        }
        let (lake, broker) = (self.lake.clone(), self.broker.clone());
        Ok(Lazy::table(
            freshness_schema(),
            move || {
                let (lake, broker) = (lake.clone(), broker.clone());
                async move { freshness(&lake, broker.as_ref()).await }
            },
        ))
    }
}
