//! Table functions for analysts: `as_of` (time travel), `history` (one row per commit) and
//! `changes` (every row inserted, updated or deleted in a version range, Hudi-style
//! incremental query), derived exactly from the Delta log.

mod freshness;
mod lazy;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray, UInt32Array};
use arrow::compute::{concat_batches, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use deltalake::datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use deltalake::datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use deltalake::datafusion::logical_expr::Expr;
use deltalake::DeltaTable;
use object_store::ObjectStoreExt;

use crate::lake::commit::SkippedRange;
use crate::lake::index::{read_file, row_keys};
use crate::lake::log::{read_commit, Commit};
use crate::lake::upsert::{conform, file_day};
use crate::lake::{Lake, LakeError};
use crate::spec::meta;

pub use freshness::{freshness, freshness_schema, lake_offsets, table_offsets, BrokerInfo, Freshness};
use lazy::Lazy;

fn plan_err(msg: impl Into<String>) -> DataFusionError {
    DataFusionError::Plan(msg.into())
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

fn string_arg(exprs: &[Expr], i: usize, func: &str) -> DfResult<String> {
    match exprs.get(i) {
        Some(Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _)) => Ok(s.clone()),
        _ => Err(plan_err(format!("{func}: argument {} must be a string literal (a table name)", i + 1))),
    }
}

/// A version number, or a point in time.
enum Point {
    Version(u64),
    Time(chrono::DateTime<chrono::Utc>),
}

fn point_arg(exprs: &[Expr], i: usize, func: &str) -> DfResult<Option<Point>> {
    let bad = || plan_err(format!("{func}: argument {} must be a version number or TIMESTAMP '…'", i + 1));
    let Some(e) = exprs.get(i) else { return Ok(None) };
    let parse_time = |s: &str| -> DfResult<Point> {
        let t = chrono::DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&chrono::Utc))
            .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").map(|n| n.and_utc()))
            .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").map(|n| n.and_utc()))
            .map_err(|_| bad())?;
        Ok(Point::Time(t))
    };
    let from_scalar = |v: &ScalarValue| -> DfResult<Point> {
        match v {
            ScalarValue::Int64(Some(n)) if *n >= 0 => Ok(Point::Version(*n as u64)),
            ScalarValue::Int32(Some(n)) if *n >= 0 => Ok(Point::Version(*n as u64)),
            ScalarValue::UInt64(Some(n)) => Ok(Point::Version(*n)),
            ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => parse_time(s),
            ScalarValue::TimestampNanosecond(Some(n), _) => Ok(Point::Time(chrono::DateTime::from_timestamp_nanos(*n))),
            ScalarValue::TimestampMicrosecond(Some(n), _) => chrono::DateTime::from_timestamp_micros(*n).map(Point::Time).ok_or_else(bad),
            ScalarValue::TimestampMillisecond(Some(n), _) => chrono::DateTime::from_timestamp_millis(*n).map(Point::Time).ok_or_else(bad),
            ScalarValue::TimestampSecond(Some(n), _) => chrono::DateTime::from_timestamp(*n, 0).map(Point::Time).ok_or_else(bad),
            _ => Err(bad()),
        }
    };
    match e {
        Expr::Literal(v, _) => from_scalar(v).map(Some),
        Expr::Cast(c) => match c.expr.as_ref() {
            Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _) => parse_time(s).map(Some),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

async fn open(lake: &Lake, name: &str) -> DfResult<DeltaTable> {
    lake.open_existing(name).await.map_err(ext)
}


fn ext(e: LakeError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Register `as_of`, `history`, `changes` and `freshness` on a session.
pub fn register_all(ctx: &deltalake::datafusion::prelude::SessionContext, lake: &Lake, broker: Option<&BrokerInfo>) {
    ctx.register_udtf("freshness", Arc::new(Freshness { lake: lake.clone(), broker: broker.cloned() }));
    ctx.register_udtf("as_of", Arc::new(AsOf { lake: lake.clone() }));
    ctx.register_udtf("history", Arc::new(History { lake: lake.clone() }));
    ctx.register_udtf("changes", Arc::new(Changes { lake: lake.clone() }));
}

/// `as_of('t', version)` or `as_of('t', TIMESTAMP '…')`: the table as it was.
#[derive(Debug)]
pub struct AsOf {
    /// The lake.
    pub lake: Lake,
}

impl TableFunctionImpl for AsOf {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let name = string_arg(exprs, 0, "as_of")?;
        let point = point_arg(exprs, 1, "as_of")?.ok_or_else(|| plan_err("as_of('table', version | TIMESTAMP '…') needs two arguments"))?;
        block(async {
            let mut table = open(&self.lake, &name).await?;
            let latest = table.version().unwrap_or(0);
            match point {
                Point::Version(v) if v > latest => {
                    return Err(plan_err(format!("as_of('{name}', {v}): `{name}` has versions 0 to {latest}")));
                }
                Point::Version(v) => table.load_version(v).await,
                Point::Time(t) => table.load_with_datetime(t).await,
            }
            .map_err(|e| plan_err(format!("as_of('{name}'): {e}")))?;
            table.table_provider().await.map_err(|e| DataFusionError::External(Box::new(e)))
        })
    }
}

/// The schema of `history(…)`.
pub fn history_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("version", DataType::Int64, false),
        Field::new("timestamp", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
        Field::new("operation", DataType::Utf8, true),
        Field::new("rows_inserted", DataType::Int64, true),
        Field::new("rows_updated", DataType::Int64, true),
        Field::new("rows_deleted", DataType::Int64, true),
        Field::new("files_added", DataType::Int64, false),
        Field::new("files_removed", DataType::Int64, false),
        Field::new("offsets", DataType::Utf8, true),
        // Offsets the commit moved past unread, deleted from the broker (`on_data_loss = "skip"`).
        Field::new("skipped", DataType::Utf8, true),
    ]))
}

/// Every commit of a table still in its log, oldest first.
pub async fn history(lake: &Lake, name: &str) -> Result<RecordBatch, LakeError> {
    let table = lake.open_existing(name).await?;
    let latest = table.version().unwrap_or(0);
    let mut commits = Vec::new();
    for v in 0..=latest {
        if let Some(c) = read_commit(&table, name, v).await? {
            commits.push(c);
        }
    }
    history_batch(&commits).map_err(|e| LakeError::data(name, e))
}

/// A commit's skipped ranges as a JSON array of `{topic, partition, source, group, from, to}`
/// (`None` when it skipped nothing).
fn skipped(c: &Commit) -> Option<String> {
    let ranges = SkippedRange::from_metadata(c.lakepipe.as_ref()?);
    (!ranges.is_empty()).then(|| serde_json::Value::Array(ranges.iter().map(SkippedRange::to_json).collect()).to_string())
}

fn history_batch(commits: &[Commit]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let count = |c: &Commit, k: &str| c.lakepipe.as_ref().and_then(|m| m[k].as_i64());
    let offsets = |c: &Commit| {
        (!c.txns.is_empty()).then(|| serde_json::Value::Object(c.txns.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect()).to_string())
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(commits.iter().map(|c| c.version as i64))),
        Arc::new(TimestampMillisecondArray::from(commits.iter().map(|c| c.timestamp_ms).collect::<Vec<_>>()).with_timezone("UTC")),
        Arc::new(StringArray::from(commits.iter().map(|c| c.operation.clone()).collect::<Vec<_>>())),
        Arc::new(Int64Array::from(commits.iter().map(|c| count(c, "inserted")).collect::<Vec<_>>())),
        Arc::new(Int64Array::from(commits.iter().map(|c| count(c, "updated")).collect::<Vec<_>>())),
        Arc::new(Int64Array::from(commits.iter().map(|c| count(c, "deleted")).collect::<Vec<_>>())),
        Arc::new(Int64Array::from_iter_values(commits.iter().map(|c| c.adds.len() as i64))),
        Arc::new(Int64Array::from_iter_values(commits.iter().map(|c| c.removes.len() as i64))),
        Arc::new(StringArray::from(commits.iter().map(offsets).collect::<Vec<_>>())),
        Arc::new(StringArray::from(commits.iter().map(skipped).collect::<Vec<_>>())),
    ];
    RecordBatch::try_new(history_schema(), cols)
}

/// `history('t')`.
#[derive(Debug)]
pub struct History {
    /// The lake.
    pub lake: Lake,
}

impl TableFunctionImpl for History {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let name = string_arg(args.exprs(), 0, "history")?;
        let lake = self.lake.clone();
        Ok(Lazy::table(
            history_schema(),
            move || {
                let (lake, name) = (lake.clone(), name.clone());
                async move { history(&lake, &name).await }
            },
        ))
    }
}

/// A table's columns at its loaded version, in Arrow.
fn table_schema(table: &DeltaTable, name: &str) -> Result<SchemaRef, LakeError> {
    let snapshot = table.snapshot().map_err(|e| LakeError::delta(name, e))?;
    let arrow_schema: arrow::datatypes::Schema = deltalake::kernel::engine::arrow_conversion::TryIntoArrow::try_into_arrow(snapshot.schema().as_ref())
        .map_err(|e: deltalake::arrow::error::ArrowError| LakeError::data(name, e))?;
    Ok(Arc::new(arrow_schema))
}

/// The schema of `changes('t', …)`: the table's columns, then the change's type, version and
/// time.
fn change_schema(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("_change_type", DataType::Utf8, false));
    fields.push(Field::new("_commit_version", DataType::Int64, false));
    fields.push(Field::new("_commit_timestamp", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true));
    Arc::new(Schema::new(fields))
}

/// Every row inserted, updated or deleted by versions `from..=to` of a table.
///
/// Derived from each commit's data-changing actions: rows of removed files against rows of
/// added files, matched by record key. A row copied unchanged into a rewritten file (same
/// source partition and offset) is not a change. Compaction (`dataChange = false`) is skipped.
pub async fn changes(lake: &Lake, name: &str, from: u64, to: Option<u64>) -> Result<RecordBatch, LakeError> {
    let table = lake.open_existing(name).await?;
    let latest = table.version().unwrap_or(0);
    let to = to.unwrap_or(latest).min(latest);
    let schema = table_schema(&table, name)?;
    let spec_key = key_columns(&table, name, &schema);
    let out_schema = change_schema(&schema);
    let store = table.object_store();
    let mut out: Vec<RecordBatch> = Vec::new();
    for v in from..=to {
        let Some(c) = read_commit(&table, name, v).await? else {
            return Err(LakeError::data(name, format!("version {v} is no longer in the log; changes are available from the oldest retained version")));
        };
        let read = |actions: Vec<crate::lake::log::FileAction>| {
            let store = store.clone();
            let schema = schema.clone();
            async move {
                let mut batches = Vec::new();
                for a in actions.into_iter().filter(|a| a.data_change) {
                    let day = file_day(&a.partition_values).unwrap_or(0);
                    let size = match a.size {
                        Some(s) => s as u64,
                        None => store.head(&a.object_path()).await.map_err(|e| e.to_string())?.size,
                    };
                    let read = read_file(store.clone(), a.object_path(), size, None)
                        .await
                        .map_err(|e| format!("{} (was it vacuumed? changes need the files of every version in the range): {e}", a.path))?;
                    for b in read {
                        batches.push(conform(&b, &schema, day).map_err(|e| e.to_string())?);
                    }
                }
                concat_batches(&schema, &batches).map_err(|e| e.to_string())
            }
        };
        let removed = read(c.removes.clone()).await.map_err(|e| LakeError::data(name, e))?;
        let added = read(c.adds.clone()).await.map_err(|e| LakeError::data(name, e))?;
        let rk = row_keys(&removed, &spec_key).map_err(|e| LakeError::data(name, e))?;
        let ak = row_keys(&added, &spec_key).map_err(|e| LakeError::data(name, e))?;
        // A row's identity: the source message that wrote it (source, partition, offset).
        let prov = |b: &RecordBatch| -> Vec<(Option<String>, Option<i32>, Option<i64>)> {
            let s = b.column_by_name(meta::SOURCE).and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned());
            let p = b.column_by_name(meta::PARTITION).and_then(|c| c.as_any().downcast_ref::<arrow::array::Int32Array>().cloned());
            let o = b.column_by_name(meta::OFFSET).and_then(|c| c.as_any().downcast_ref::<arrow::array::Int64Array>().cloned());
            (0..b.num_rows())
                .map(|i| (s.as_ref().map(|a| a.value(i).to_string()), p.as_ref().map(|a| a.value(i)), o.as_ref().map(|a| a.value(i))))
                .collect()
        };
        let (rp, ap) = (prov(&removed), prov(&added));
        let added_by_key: HashMap<&str, usize> = ak.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
        let removed_by_key: HashMap<&str, usize> = rk.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
        let mut picks: Vec<(bool, u32, &'static str)> = Vec::new(); // (from added?, row, kind)
        for (i, k) in rk.iter().enumerate() {
            match added_by_key.get(k.as_str()) {
                Some(&j) if ap[j] == rp[i] => {} // copied unchanged
                Some(&j) => {
                    picks.push((false, i as u32, "update_preimage"));
                    picks.push((true, j as u32, "update_postimage"));
                }
                None => picks.push((false, i as u32, "delete")),
            }
        }
        for (j, k) in ak.iter().enumerate() {
            if !removed_by_key.contains_key(k.as_str()) {
                picks.push((true, j as u32, "insert"));
            }
        }
        if picks.is_empty() {
            continue;
        }
        let mut parts = Vec::new();
        for (from_added, src) in [(false, &removed), (true, &added)] {
            let rows: Vec<(u32, &'static str)> = picks.iter().filter(|p| p.0 == from_added).map(|p| (p.1, p.2)).collect();
            if rows.is_empty() {
                continue;
            }
            let idx = UInt32Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>());
            let mut cols: Vec<ArrayRef> = src.columns().iter().map(|c| take(c.as_ref(), &idx, None)).collect::<Result<_, _>>().map_err(|e| LakeError::data(name, e))?;
            cols.push(Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())));
            cols.push(Arc::new(Int64Array::from(vec![v as i64; rows.len()])));
            cols.push(Arc::new(TimestampMillisecondArray::from(vec![c.timestamp_ms; rows.len()]).with_timezone("UTC")));
            parts.push(RecordBatch::try_new(out_schema.clone(), cols).map_err(|e| LakeError::data(name, e))?);
        }
        out.extend(parts);
    }
    concat_batches(&out_schema, &out).map_err(|e| LakeError::data(name, e))
}

/// The key columns of a table, as recorded in its `lakepipe.key` property at creation.
fn key_columns(table: &DeltaTable, name: &str, schema: &SchemaRef) -> Vec<String> {
    let recorded = table
        .snapshot()
        .ok()
        .and_then(|s| s.metadata().configuration().get(KEY_PROPERTY).cloned())
        .map(|k| crate::config::split_list(&k));
    recorded.filter(|k| !k.is_empty()).unwrap_or_else(|| {
        if name == crate::lake::dead_letters::TABLE {
            vec![meta::TOPIC.into(), meta::PARTITION.into(), meta::OFFSET.into()]
        } else {
            schema.fields().iter().take(1).map(|f| f.name().clone()).collect()
        }
    })
}

/// Table property holding the record key columns, comma separated.
pub const KEY_PROPERTY: &str = "lakepipe.key";

/// `changes('t', from_version[, to_version])`.
#[derive(Debug)]
pub struct Changes {
    /// The lake.
    pub lake: Lake,
}

impl TableFunctionImpl for Changes {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let name = string_arg(exprs, 0, "changes")?;
        let version = |i| match point_arg(exprs, i, "changes")? {
            None => Ok(None),
            Some(Point::Version(v)) => Ok(Some(v)),
            Some(Point::Time(_)) => Err(plan_err("changes: versions must be numbers")),
        };
        let from = version(1)?.ok_or_else(|| plan_err("changes('table', from_version[, to_version]) needs a start version"))?;
        let to = version(2)?;
        // The schema now (the table's columns); the rows when the query scans them.
        let schema = block(async {
            let table = self.lake.open_existing(&name).await?;
            table_schema(&table, &name).map(|s| change_schema(&s))
        })
        .map_err(ext)?;
        let lake = self.lake.clone();
        Ok(Lazy::table(
            schema,
            move || {
                let (lake, name) = (lake.clone(), name.clone());
                async move { changes(&lake, &name, from, to).await }
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Decoder;
    use crate::enrich::Provenance;
    use crate::lake::commit::{OffsetKey, OffsetRange};
    use crate::lake::upsert::TopicTable;
    use serde_json::{json, Value};

    const DAY: i64 = 86_400_000;

    fn rec(d: &Decoder, key: &str, ts: i64, status: &str, deleted: bool, offset: i64) -> crate::decode::Record {
        let body = if deleted {
            json!({"transaction_id": key, "timestamp": ts, "_deleted": true})
        } else {
            json!({"transaction_id": key, "user_id": "u", "amount": 1, "currency": "EUR", "status": status, "timestamp": ts})
        };
        d.decode(None, Some(body.to_string().as_bytes()), 0, offset).unwrap()
    }

    async fn rows(lake: &Lake, sql: &str) -> Vec<Value> {
        let (schema, batches) = crate::query::run(lake, sql).await.unwrap();
        let text = crate::query::format(&schema, &batches, crate::query::Format::Json).unwrap();
        serde_json::from_str::<Value>(&text).unwrap().as_array().cloned().unwrap()
    }

    fn pairs(rows: &[Value], a: &str, b: &str) -> Vec<(String, String)> {
        rows.iter().map(|r| (r[a].as_str().unwrap_or_default().to_string(), r[b].to_string().trim_matches('"').to_string())).collect()
    }

    /// A `transactions` table in a new lake (kept while the directory lives), and its decoder.
    async fn transactions_table() -> (tempfile::TempDir, Lake, Decoder, TopicTable) {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::parse(dir.path().to_str().unwrap()).unwrap();
        let spec = crate::spec::builtin_specs()["transactions"].clone();
        let d = Decoder::new(spec.clone(), 1 << 20).unwrap();
        let t = TopicTable::open(&lake, spec).await.unwrap();
        (dir, lake, d, t)
    }

    /// Ground truth across versions: inserts, an update, a delete, an untouched row copied into a
    /// rewritten file (not a change), and a partition move.
    #[tokio::test(flavor = "multi_thread")]
    async fn as_of_history_and_changes_are_exact() {
        let (_dir, lake, d, mut t) = transactions_table().await;
        let prov = Provenance::now("kafka", "transactions");
        let range = |s: Option<i64>, e| vec![OffsetRange { key: OffsetKey { source: "kafka".into(), group: "g".into(), topic: "transactions".into(), partition: 0 }, start: s, end: e }];
        // v1
        let v1 = [rec(&d, "k1", DAY, "pending", false, 0), rec(&d, "k2", DAY, "pending", false, 1), rec(&d, "k3", 2 * DAY, "pending", false, 2), rec(&d, "k5", DAY, "pending", false, 3)];
        t.upsert(&v1, &range(None, 4), &prov).await.unwrap();
        // v2: update k1, delete k2, insert k4; k5 is copied unchanged into the rewritten file.
        let v2 = [rec(&d, "k1", DAY + 1, "completed", false, 4), rec(&d, "k2", DAY + 1, "", true, 5), rec(&d, "k4", DAY, "failed", false, 6)];
        t.upsert(&v2, &range(Some(4), 7), &prov).await.unwrap();
        // v3: k3 moves from day 2 to day 3.
        let v3 = [rec(&d, "k3", 3 * DAY, "refunded", false, 7)];
        t.upsert(&v3, &range(Some(7), 8), &prov).await.unwrap();

        let c = rows(&lake, "SELECT transaction_id, _change_type, _commit_version, status, CAST(date AS VARCHAR) AS d FROM changes('transactions', 2, 3) ORDER BY _commit_version, transaction_id, _change_type").await;
        let got: Vec<(String, String, i64, String, String)> = c
            .iter()
            .map(|r| (r["transaction_id"].as_str().unwrap().into(), r["_change_type"].as_str().unwrap().into(), r["_commit_version"].as_i64().unwrap(), r["status"].as_str().unwrap().into(), r["d"].as_str().unwrap().into()))
            .collect();
        let want = vec![
            ("k1".to_string(), "update_postimage".to_string(), 2, "completed".to_string(), "1970-01-02".to_string()),
            ("k1".into(), "update_preimage".into(), 2, "pending".into(), "1970-01-02".into()),
            ("k2".into(), "delete".into(), 2, "pending".into(), "1970-01-02".into()),
            ("k4".into(), "insert".into(), 2, "failed".into(), "1970-01-02".into()),
            ("k3".into(), "update_postimage".into(), 3, "refunded".into(), "1970-01-04".into()),
            ("k3".into(), "update_preimage".into(), 3, "pending".into(), "1970-01-03".into()),
        ];
        assert_eq!(got, want);
        let inserts = rows(&lake, "SELECT count(*) AS n FROM changes('transactions', 1, 1) WHERE _change_type = 'insert'").await;
        assert_eq!(inserts[0]["n"], 4);

        let at1 = rows(&lake, "SELECT transaction_id, status FROM as_of('transactions', 1) ORDER BY transaction_id").await;
        assert_eq!(pairs(&at1, "transaction_id", "status"), vec![("k1".into(), "pending".into()), ("k2".into(), "pending".into()), ("k3".into(), "pending".into()), ("k5".into(), "pending".into())]);
        let now = rows(&lake, "SELECT transaction_id, status FROM transactions ORDER BY transaction_id").await;
        assert_eq!(pairs(&now, "transaction_id", "status"), vec![("k1".into(), "completed".into()), ("k3".into(), "refunded".into()), ("k4".into(), "failed".into()), ("k5".into(), "pending".into())]);

        let h = rows(&lake, "SELECT version, operation, rows_inserted, rows_updated, rows_deleted, files_added, files_removed, offsets, CAST(timestamp AS VARCHAR) AS ts FROM history('transactions') ORDER BY version").await;
        assert_eq!(h.len(), 4);
        assert_eq!((h[2]["rows_inserted"].as_i64(), h[2]["rows_updated"].as_i64(), h[2]["rows_deleted"].as_i64()), (Some(1), Some(1), Some(1)));
        assert_eq!(h[2]["operation"], "MERGE");
        assert!(h[2]["offsets"].as_str().unwrap().contains("\"lakepipe:kafka:g:transactions:0\":7"), "{}", h[2]);
        assert_eq!(h[0]["operation"], "CREATE TABLE");
        // Time travel by timestamp: the time of version 1 gives version 1.
        let ts = h[1]["ts"].as_str().unwrap();
        let by_time = rows(&lake, &format!("SELECT count(*) AS n FROM as_of('transactions', TIMESTAMP '{ts}') WHERE status = 'pending'")).await;
        assert_eq!(by_time[0]["n"], 4);
        // Errors are clear.
        let err = crate::query::run(&lake, "SELECT * FROM as_of('nope', 1)").await.unwrap_err().to_string();
        assert!(err.contains("no table `nope`"), "{err}");
    }

    /// A commit that moved past offsets deleted from the broker (`on_data_loss = "skip"`)
    /// names them in `history()`; other commits show none.
    #[tokio::test(flavor = "multi_thread")]
    async fn history_names_the_offsets_a_commit_skipped() {
        let (_dir, lake, d, mut t) = transactions_table().await;
        let prov = Provenance::now("kafka", "transactions");
        let key = OffsetKey { source: "kafka".into(), group: "g".into(), topic: "transactions".into(), partition: 3 };
        let range = |s: Option<i64>, e| vec![OffsetRange { key: key.clone(), start: s, end: e }];
        t.upsert(&[rec(&d, "k1", DAY, "pending", false, 0)], &range(None, 20), &prov).await.unwrap();
        let skipped = [SkippedRange { key: key.clone(), from: 20, to: 60 }];
        t.upsert_skipping(&[rec(&d, "k2", DAY, "pending", false, 60)], &range(Some(20), 61), &skipped, &prov).await.unwrap();
        let h = rows(&lake, "SELECT version, skipped FROM history('transactions') ORDER BY version").await;
        assert_eq!(h.len(), 3);
        assert!(h[1]["skipped"].is_null(), "{}", h[1]);
        let got: Value = serde_json::from_str(h[2]["skipped"].as_str().unwrap()).unwrap();
        assert_eq!(got, json!([{"topic": "transactions", "partition": 3, "source": "kafka", "group": "g", "from": 20, "to": 60}]));
        let table = lake.open("transactions").await.unwrap().unwrap();
        let all = crate::lake::log::skipped_ranges(&table, "transactions").await.unwrap();
        assert_eq!(all, vec![(2, skipped[0].clone())]);
    }
}
