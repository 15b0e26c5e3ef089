//! Query: SQL over the lake with two engines, DataFusion and DuckDB ([`duck`]). Every Delta
//! table under the lake root is visible by name (each topic table and `dead_letters`), at its
//! latest version, with the table functions `as_of`, `history`, `changes` and `freshness`
//! ([`functions`]). [`execute`] is the one entry point for the CLI, the shell and the API.

pub mod allow;
pub mod depth;
pub mod duck;
pub mod functions;
pub mod shell;
pub mod yielding;

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::DeltaTableBuilder;

use crate::lake::{Lake, LakeError};

/// Errors of the query layer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The lake could not be read.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// The SQL failed to plan or run.
    #[error("query failed: {0}")]
    Sql(String),
    /// The engine failed internally (not the query's fault).
    #[error("query engine failed: {0}")]
    Engine(String),
    /// The result could not be formatted.
    #[error("cannot format the result: {0}")]
    Format(String),
    /// The result could not be written to a file.
    #[error("cannot write {path}: {reason}")]
    Export {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

impl QueryError {
    /// Whether the user must change the query (or name a table, a version or a file that is
    /// there).
    pub fn is_user_error(&self) -> bool {
        match self {
            QueryError::Sql(_) | QueryError::Export { .. } => true,
            QueryError::Lake(e) => e.is_user_error(),
            QueryError::Engine(_) | QueryError::Format(_) => false,
        }
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header row.
    Csv,
    /// One JSON array of row objects.
    Json,
}

/// The query engines. Both see the same tables and table functions and give the same results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// Apache DataFusion (through delta-rs).
    #[default]
    Datafusion,
    /// Embedded DuckDB.
    Duckdb,
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "datafusion" => Ok(Engine::Datafusion),
            "duckdb" => Ok(Engine::Duckdb),
            other => Err(format!("unknown engine `{other}`: use datafusion or duckdb")),
        }
    }
}

/// One statement to run.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// The SQL (one statement; a trailing `;` is ignored).
    pub sql: &'a str,
    /// The engine.
    pub engine: Engine,
    /// The broker, for `freshness()`.
    pub broker: Option<&'a functions::BrokerInfo>,
    /// Stop after this many rows.
    pub limit: Option<usize>,
    /// Refuse DDL, DML and statements that change state (the lake changes only through
    /// `ingest`, which keeps its offsets with its rows). The HTTP API and the CLI set this.
    pub read_only: bool,
    /// Also shut the engine off from the machine: DuckDB without file and network access and
    /// with its configuration locked, DataFusion without its information schema. The HTTP API
    /// sets this; the CLI does not, so that an analyst can join a local file.
    pub sandboxed: bool,
    /// The query's memory budget in bytes (`query_memory`): DataFusion's memory pool (sorts,
    /// joins and aggregates spill to disk beyond it, or the query fails cleanly) and DuckDB's
    /// `memory_limit`. `None`: unbounded.
    pub memory: Option<usize>,
    /// Threads DuckDB may use for the query (`None`: one per core).
    pub threads: Option<usize>,
    /// Collecting rows stops once they take more than this many bytes of Arrow memory (`None`:
    /// all of them), so a huge result is not held whole before it is cut: DataFusion stops
    /// pulling its stream, DuckDB (sandboxed runs) stops fetching its streaming result.
    pub max_bytes: Option<usize>,
}

/// A statement's result.
#[derive(Debug)]
pub struct Answer {
    /// The result's columns.
    pub schema: Arc<arrow::datatypes::Schema>,
    /// Its rows.
    pub batches: Vec<RecordBatch>,
    /// Whether collecting stopped at [`Request::max_bytes`], so more rows may follow.
    pub cut: bool,
}

/// The stack that the threads running queries need (the runtime's workers and its blocking
/// threads): planning, printing and freeing an expression recurse once per level, and a
/// [`depth::MAX_DEPTH`]-deep one took about 8 MiB in a debug build.
pub const STACK_SIZE: usize = 64 << 20;

/// Run one statement on the chosen engine and collect the result. Run it on a thread with a
/// stack of [`STACK_SIZE`].
pub async fn execute(lake: &Lake, req: &Request<'_>) -> Result<(Arc<arrow::datatypes::Schema>, Vec<RecordBatch>), QueryError> {
    execute_bounded(lake, req).await.map(|a| (a.schema, a.batches))
}

/// [`execute`], collecting rows only up to [`Request::max_bytes`].
pub async fn execute_bounded(lake: &Lake, req: &Request<'_>) -> Result<Answer, QueryError> {
    let sql = req.sql.trim().trim_end_matches(';');
    depth::check(sql)?;
    let result = match req.engine {
        Engine::Duckdb => {
            let opts = duck::DuckOptions { limit: req.limit, sandboxed: req.sandboxed, read_only: req.read_only, memory: req.memory, threads: req.threads, max_bytes: req.max_bytes };
            match duck::run(lake, sql, req.broker, &opts).await {
                Err(QueryError::Sql(m)) if m.contains("Out of Memory Error") => Err(QueryError::Sql(over_budget(req.memory, &m))),
                other => other,
            }
        }
        Engine::Datafusion => {
            use deltalake::datafusion::execution::context::SQLOptions;
            if req.sandboxed {
                allow::datafusion_statement(sql)?;
            }
            let ctx = session(lake, req.broker, Some(sql), !req.sandboxed, req.memory).await?;
            let options = SQLOptions::new().with_allow_ddl(!req.read_only).with_allow_dml(!req.read_only).with_allow_statements(!req.read_only);
            let failed = |e: DataFusionError| match e.find_root() {
                DataFusionError::ResourcesExhausted(m) => QueryError::Sql(over_budget(req.memory, m)),
                _ => QueryError::Sql(df_message(&e)),
            };
            match ctx.sql_with_options(sql, options).await {
                Err(e) => Err(failed(e)),
                Ok(mut df) => {
                    if req.sandboxed {
                        let tables: std::collections::BTreeSet<String> = ctx
                            .catalog("datafusion")
                            .and_then(|c| c.schema("public"))
                            .map(|s| s.table_names().into_iter().map(|t| t.to_ascii_lowercase()).collect())
                            .unwrap_or_default();
                        allow::datafusion_plan(df.logical_plan(), &tables)?;
                    }
                    if let Some(limit) = req.limit {
                        df = df.limit(0, Some(limit)).map_err(failed)?;
                    }
                    let schema = Arc::new(df.schema().as_arrow().clone());
                    let Some(cap) = req.max_bytes else {
                        return df.collect().await.map_err(failed).map(|batches| Answer { schema, batches, cut: false });
                    };
                    let mut stream = df.execute_stream().await.map_err(failed)?;
                    let (mut batches, mut bytes, mut cut) = (Vec::new(), 0usize, false);
                    while let Some(b) = futures::TryStreamExt::try_next(&mut stream).await.map_err(failed)? {
                        bytes += b.get_array_memory_size();
                        batches.push(b);
                        if bytes > cap {
                            cut = true;
                            break;
                        }
                    }
                    Ok(Answer { schema, batches, cut })
                }
            }
        }
    };
    match result {
        Err(QueryError::Sql(message)) => Err(in_user_words(lake, message).await),
        other => other,
    }
}

/// The message of a query that needed more memory than its budget.
pub(crate) fn over_budget(budget: Option<usize>, engine_message: &str) -> String {
    let budget = budget.map_or(String::new(), |b| format!(" of {} MiB", b >> 20));
    format!("the query needs more memory than its budget{budget} (query_memory): {engine_message}")
}

/// A DataFusion error's own message, without the variant's prefix ("Error during planning: ",
/// "External error: ").
fn df_message(e: &DataFusionError) -> String {
    match e {
        DataFusionError::External(inner) => inner.to_string(),
        DataFusionError::Context(_, inner) => df_message(inner),
        other => other.message().to_string(),
    }
}

/// A query error in the user's words: a table that is not there is named with the lake and the
/// tables it does hold, on both engines.
async fn in_user_words(lake: &Lake, message: String) -> QueryError {
    let Some(table) = missing_table(&message) else { return QueryError::Sql(message) };
    let tables = list_tables(lake).await.unwrap_or_default();
    // The lake has it: the engine's message is about something else (a schema, a CTE).
    if tables.iter().any(|t| t.eq_ignore_ascii_case(&table)) {
        return QueryError::Sql(message);
    }
    let known = if tables.is_empty() { " (it holds no table yet)".to_string() } else { format!(" (tables: {})", tables.join(", ")) };
    QueryError::Lake(LakeError::NoTable { table, lake: lake.root().to_string(), known })
}

/// The table a "no such table" message names: DataFusion's "table 'datafusion.public.t' not
/// found", DuckDB's "Table with name t does not exist", lakepipe's "no table `t` in the lake".
fn missing_table(message: &str) -> Option<String> {
    let between = |start: &str, end: &str| -> Option<String> {
        let rest = &message[message.find(start)? + start.len()..];
        Some(rest[..rest.find(end)?].to_string())
    };
    between("table '", "' not found")
        .map(|t| t.rsplit('.').next().unwrap_or_default().to_string())
        .or_else(|| between("Table with name ", " does not exist"))
        .or_else(|| between("no table `", "` in the lake"))
}

/// Names of the Delta tables directly under the lake root.
pub async fn list_tables(lake: &Lake) -> Result<Vec<String>, LakeError> {
    let root = DeltaTableBuilder::from_url(lake.root().clone())
        .and_then(|b| b.with_storage_options(lake.storage_options().clone()).build())
        .map_err(|e| LakeError::BadUri { uri: lake.root().to_string(), reason: e.to_string() })?;
    let listing = root
        .object_store()
        .list_with_delimiter(None)
        .await
        .map_err(|e| LakeError::Unreachable { uri: lake.root().to_string(), reason: e.to_string() })?;
    let mut names: Vec<String> = listing.common_prefixes.iter().filter_map(|p| p.filename().map(|s| s.to_string())).collect();
    names.sort();
    Ok(names)
}

/// Register one table of the lake, at its latest version, if it exists.
async fn register(ctx: &SessionContext, lake: &Lake, name: &str) -> Result<(), QueryError> {
    let Some(table) = lake.open(name).await? else { return Ok(()) };
    let provider = table.table_provider().await.map_err(|e| QueryError::Sql(e.to_string()))?;
    table.update_datafusion_session(&ctx.state()).map_err(|e| QueryError::Sql(e.to_string()))?;
    ctx.register_table(name, provider).map_err(|e| QueryError::Sql(e.to_string()))?;
    Ok(())
}

/// A DataFusion session with the lake's tables registered: those that `sql` names when it is
/// given and parses, else every table; with the information schema when asked, and a memory
/// pool of `memory` bytes when given. Tables are opened concurrently.
pub async fn session(
    lake: &Lake,
    broker: Option<&functions::BrokerInfo>,
    sql: Option<&str>,
    information_schema: bool,
    memory: Option<usize>,
) -> Result<SessionContext, QueryError> {
    use deltalake::datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
    use deltalake::datafusion::execution::runtime_env::RuntimeEnvBuilder;
    // `SHOW TABLES` and `SHOW COLUMNS` read the information schema. The read-only API keeps it
    // off: `df_settings` shows the server's settings (issue #15 decides what it may show).
    let config = deltalake::datafusion::prelude::SessionConfig::new().with_information_schema(information_schema);
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(bytes) = memory {
        // Fair: each spilling operator gets its share, so one sort cannot starve a join. The
        // largest consumers are named in the error.
        let consumers = std::num::NonZeroUsize::new(3).unwrap_or(std::num::NonZeroUsize::MIN);
        runtime = runtime.with_memory_pool(Arc::new(TrackConsumersPool::new(FairSpillPool::new(bytes), consumers)));
    }
    let runtime = runtime.build_arc().map_err(|e| QueryError::Engine(e.to_string()))?;
    let state = deltalake::datafusion::execution::session_state::SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(yielding::YieldAfterFanOut))
        .build();
    let ctx = SessionContext::new_with_state(state);
    functions::register_all(&ctx, lake, broker);
    let mut names = list_tables(lake).await?;
    if let Some(named) = sql.and_then(|sql| referenced_tables(&ctx, sql)).filter(|n| !n.is_empty()) {
        names.retain(|n| named.iter().any(|r| r.eq_ignore_ascii_case(n)));
    }
    for registered in futures::future::join_all(names.iter().map(|name| register(&ctx, lake, name))).await {
        registered?;
    }
    Ok(ctx)
}

/// The bare table names a statement refers to, if it parses.
fn referenced_tables(ctx: &SessionContext, sql: &str) -> Option<Vec<String>> {
    let state = ctx.state();
    let statement = state.sql_to_statement(sql, &deltalake::datafusion::config::Dialect::Generic).ok()?;
    let refs = state.resolve_table_references(&statement).ok()?;
    // `SHOW TABLES` reads only the information schema, which lists every registered table.
    Some(refs.iter().filter(|r| r.schema() != Some("information_schema")).map(|r| r.table().to_string()).collect())
}

/// Run a statement over some tables and stream the result batch by batch.
pub async fn stream(lake: &Lake, tables: &[&str], sql: &str) -> Result<deltalake::datafusion::execution::SendableRecordBatchStream, QueryError> {
    let ctx = SessionContext::new();
    functions::register_all(&ctx, lake, None);
    for name in tables {
        register(&ctx, lake, name).await?;
    }
    let df = ctx.sql(sql).await.map_err(|e| QueryError::Sql(e.to_string()))?;
    df.execute_stream().await.map_err(|e| QueryError::Sql(e.to_string()))
}

/// Run one statement on DataFusion and collect the result.
pub async fn run(lake: &Lake, sql: &str) -> Result<(Arc<arrow::datatypes::Schema>, Vec<RecordBatch>), QueryError> {
    execute(lake, &Request { sql, ..Default::default() }).await
}

/// Format batches as text: a table (NULL shown as `NULL`), CSV (NULL as an empty field) or a
/// JSON array of objects (NULL as `null`, every column in every object). Timestamps with a
/// time zone print in RFC 3339 with `Z` for UTC.
pub fn format(schema: &Arc<arrow::datatypes::Schema>, batches: &[RecordBatch], format: Format) -> Result<String, QueryError> {
    let err = |e: arrow::error::ArrowError| QueryError::Format(e.to_string());
    let batches = &batches.iter().map(utc_display).collect::<Result<Vec<_>, _>>().map_err(err)?;
    match format {
        Format::Table => {
            if batches.iter().all(|b| b.num_rows() == 0) {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Ok(format!("(0 rows; columns: {})", names.join(", ")));
            }
            let options = arrow::util::display::FormatOptions::default().with_null("NULL");
            Ok(arrow::util::pretty::pretty_format_batches_with_options(batches, &options).map_err(err)?.to_string())
        }
        Format::Csv => {
            let mut buf = Vec::new();
            {
                let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(&mut buf);
                if batches.is_empty() {
                    w.write(&RecordBatch::new_empty(schema.clone())).map_err(err)?;
                }
                for b in batches {
                    w.write(b).map_err(err)?;
                }
            }
            String::from_utf8(buf).map_err(|e| QueryError::Format(e.to_string()))
        }
        Format::Json => {
            let mut buf = Vec::new();
            {
                // Null fields are kept (`"x": null`), so every object has every column.
                let mut w = arrow::json::WriterBuilder::new().with_explicit_nulls(true).build::<_, arrow::json::writer::JsonArray>(&mut buf);
                let refs: Vec<&RecordBatch> = batches.iter().collect();
                w.write_batches(&refs).map_err(err)?;
                w.finish().map_err(err)?;
            }
            let text = String::from_utf8(buf).map_err(|e| QueryError::Format(e.to_string()))?;
            Ok(if text.trim().is_empty() { "[]".to_string() } else { text })
        }
    }
}

/// `batch` with its timestamps that carry no time zone (a `TIMESTAMP '…'` literal, DataFusion's
/// `now()`) or a zero offset marked as UTC, so that every timestamp prints in one RFC 3339 form
/// ending in `Z`, as the lake's own (UTC) columns and the DuckDB engine's do.
fn utc_display(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::datatypes::{DataType, Field, Schema};
    let naive = |f: &Field| matches!(f.data_type(), DataType::Timestamp(_, tz) if tz.as_deref().is_none_or(|z| z == "+00:00" || z == "+00"));
    if !batch.schema().fields().iter().any(|f| naive(f)) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        match f.data_type() {
            DataType::Timestamp(unit, _) if naive(f) => {
                let to = DataType::Timestamp(*unit, Some("UTC".into()));
                columns.push(arrow::compute::cast(c, &to)?);
                fields.push(f.as_ref().clone().with_data_type(to));
            }
            _ => {
                columns.push(c.clone());
                fields.push(f.as_ref().clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// Write a result to `path`: Parquet (zstd) for `.parquet`, CSV with a header for `.csv`.
pub fn export(schema: &Arc<arrow::datatypes::Schema>, batches: &[RecordBatch], path: &std::path::Path) -> Result<u64, QueryError> {
    let err = |reason: String| QueryError::Export { path: path.display().to_string(), reason };
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    let file = || std::fs::File::create(path).map_err(|e| err(e.to_string()));
    let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    match ext.as_str() {
        "parquet" => {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(parquet::basic::ZstdLevel::default()))
                .build();
            let mut w = parquet::arrow::ArrowWriter::try_new(file()?, schema.clone(), Some(props)).map_err(|e| err(e.to_string()))?;
            for b in batches {
                w.write(b).map_err(|e| err(e.to_string()))?;
            }
            w.close().map_err(|e| err(e.to_string()))?;
        }
        "csv" => {
            let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(file()?);
            if batches.is_empty() {
                w.write(&RecordBatch::new_empty(schema.clone())).map_err(|e| err(e.to_string()))?;
            }
            for b in batches {
                w.write(b).map_err(|e| err(e.to_string()))?;
            }
        }
        _ => return Err(err("the file name must end in .parquet or .csv".into())),
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    /// NULL reads `NULL` in a table and `null` in JSON (the field is kept); every timestamp
    /// prints in one RFC 3339 form with `Z`, with a time zone or without.
    #[test]
    fn values_print_one_way() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("naive", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("utc", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
        ]));
        let ts = 1_767_261_600_000; // 2026-01-01T10:00:00Z
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![None::<&str>])),
                Arc::new(TimestampMillisecondArray::from(vec![ts])),
                Arc::new(TimestampMillisecondArray::from(vec![ts]).with_timezone("UTC")),
            ],
        )
        .unwrap();
        let table = format(&schema, std::slice::from_ref(&batch), Format::Table).unwrap();
        assert!(table.contains("| NULL | 2026-01-01T10:00:00Z | 2026-01-01T10:00:00Z |"), "{table}");
        let json = format(&schema, std::slice::from_ref(&batch), Format::Json).unwrap();
        assert_eq!(json.trim(), r#"[{"s":null,"naive":"2026-01-01T10:00:00Z","utc":"2026-01-01T10:00:00Z"}]"#);
        let csv = format(&schema, &[batch], Format::Csv).unwrap();
        assert_eq!(csv, "s,naive,utc\n,2026-01-01T10:00:00Z,2026-01-01T10:00:00Z\n");
    }
}
