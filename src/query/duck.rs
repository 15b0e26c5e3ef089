//! The DuckDB engine: the same SQL, tables and table functions as the DataFusion engine,
//! answered by an embedded DuckDB (the `duckdb` crate, bundled).
//!
//! Each query gets a fresh in-memory DuckDB database:
//!
//! 1. The statement is parsed (DuckDB dialect) to find the lake tables it names and the
//!    lakepipe table functions it calls (`as_of`, `changes`, `history`, `freshness`).
//! 2. Each named table is read at its current snapshot (only the live files of the latest Delta
//!    version, through delta-rs) and each table function is evaluated by the same code the
//!    DataFusion engine uses, so both engines start from identical rows.
//! 3. The Arrow batches cross into DuckDB over the Arrow C Data Interface (no copy through Rust
//!    types, and no dependency on the arrow version DuckDB's crate links), become DuckDB tables
//!    named after the lake tables, and the function calls are rewritten to read their results.
//! 4. DuckDB runs the statement; the result comes back over the same interface as arrow batches,
//!    so formatting and export are shared with the DataFusion engine.
//!
//! Sandboxed runs (the HTTP API) disable DuckDB's external access and lock its configuration
//! before the user's statement runs, so file readers, `ATTACH`, `INSTALL`/`LOAD` and `SET` fail
//! inside DuckDB too, whatever the static read-only check let through. Dropping the future of
//! a running query (a timeout) interrupts DuckDB.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, CString};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, StructArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow::record_batch::RecordBatch;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::datafusion::sql::sqlparser::ast::{Ident, ObjectName, ObjectNamePart, Statement, TableAlias, TableFactor, Visit, VisitMut, Visitor, VisitorMut};
use deltalake::datafusion::sql::sqlparser::dialect::DuckDbDialect;
use deltalake::datafusion::sql::sqlparser::parser::Parser;
use duckdb::ffi;
use futures::TryStreamExt;

use super::functions::{self, BrokerInfo};
use super::QueryError;
use crate::lake::Lake;

/// The lakepipe table functions, evaluated before DuckDB sees the statement.
const TABLE_FUNCTIONS: [&str; 4] = ["as_of", "changes", "history", "freshness"];

/// How to run one statement on DuckDB.
#[derive(Debug, Clone, Default)]
pub struct DuckOptions {
    /// Stop after this many rows.
    pub limit: Option<usize>,
    /// Disable external access (files, network, extensions) and lock the configuration.
    pub sandboxed: bool,
    /// Refuse a statement that writes (INSERT, CREATE, COPY …): it would change only DuckDB's
    /// copy of the tables, or files on the machine.
    pub read_only: bool,
    /// DuckDB's `memory_limit` in bytes (`None`: its default, 80% of RAM).
    pub memory: Option<usize>,
    /// DuckDB's `threads` (`None`: one per core).
    pub threads: Option<usize>,
}

/// Whether a statement only reads: a query, or a look at the tables (`DESCRIBE`, `SHOW`,
/// `EXPLAIN`).
fn reads_only(statement: &Statement) -> bool {
    matches!(
        statement,
        Statement::Query(_) | Statement::ExplainTable { .. } | Statement::Explain { .. } | Statement::ShowTables { .. } | Statement::ShowColumns { .. }
    )
}

/// What a statement needs from the lake.
#[derive(Debug, Default)]
struct Needs {
    /// Lower-cased names of plain relations (candidates for lake tables).
    relations: BTreeSet<String>,
    /// Table-function calls, as DataFusion SQL text (`changes('t', 3)`).
    calls: BTreeSet<String>,
    /// Tables whose columns alone the statement needs (`DESCRIBE t`), no rows; `all_schemas`:
    /// every table's (`SHOW TABLES`).
    schemas: BTreeSet<String>,
    all_schemas: bool,
}

impl Needs {
    /// What a statement about tables rather than rows needs: their columns, not their data.
    fn schema_statements(&mut self, statement: &Statement) {
        match statement {
            Statement::ExplainTable { table_name, .. } => {
                if let Some(ident) = last_ident(table_name) {
                    self.schemas.insert(ident.value.to_ascii_lowercase());
                }
            }
            Statement::ShowTables { .. } => self.all_schemas = true,
            _ => {}
        }
    }
}

fn last_ident(name: &ObjectName) -> Option<&Ident> {
    name.0.last().and_then(ObjectNamePart::as_ident)
}

fn is_table_function(name: &ObjectName) -> bool {
    name.0.len() == 1 && last_ident(name).is_some_and(|i| TABLE_FUNCTIONS.contains(&i.value.to_ascii_lowercase().as_str()))
}

/// The text of a table-function call without its alias, as both engines parse it.
fn call_text(factor: &TableFactor) -> Option<String> {
    let TableFactor::Table { name, args: Some(args), .. } = factor else { return None };
    if !is_table_function(name) {
        return None;
    }
    let args: Vec<String> = args.args.iter().map(|a| a.to_string()).collect();
    Some(format!("{}({})", name.to_string().to_ascii_lowercase(), args.join(", ")))
}

struct Collect<'a>(&'a mut Needs);

impl Visitor for Collect<'_> {
    type Break = ();
    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        if let Some(call) = call_text(factor) {
            self.0.calls.insert(call);
        } else if let TableFactor::Table { name, args: None, .. } = factor {
            if let Some(ident) = last_ident(name) {
                self.0.relations.insert(ident.value.to_ascii_lowercase());
            }
        }
        ControlFlow::Continue(())
    }
}

/// Replaces each table-function call by the DuckDB table holding its result.
struct Rewrite<'a>(&'a BTreeMap<String, String>);

impl VisitorMut for Rewrite<'_> {
    type Break = ();
    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let Some(table) = call_text(factor).and_then(|c| self.0.get(&c)) else { return ControlFlow::Continue(()) };
        if let TableFactor::Table { name, args, alias, .. } = factor {
            // Keep the name the statement refers to the call by (`history.version`).
            if alias.is_none() {
                *alias = last_ident(name).map(|i| TableAlias { name: Ident::new(i.value.to_ascii_lowercase()), columns: vec![], explicit: true, at: None });
            }
            *name = ObjectName::from(vec![Ident::with_quote('"', table.clone())]);
            *args = None;
        }
        ControlFlow::Continue(())
    }
}

/// Parse `sql` as one DuckDB statement. `None` when the parser does not know the syntax: DuckDB
/// then gets the text unchanged, with every lake table loaded.
fn parse(sql: &str) -> Option<Statement> {
    let mut statements = Parser::parse_sql(&DuckDbDialect {}, sql).ok()?;
    (statements.len() == 1).then(|| statements.remove(0))
}

/// Run one statement on DuckDB over the lake.
pub async fn run(lake: &Lake, sql: &str, broker: Option<&BrokerInfo>, opts: &DuckOptions) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    let mut statement = parse(sql);
    if opts.read_only && statement.as_ref().is_some_and(|s| !reads_only(s)) {
        return Err(QueryError::Sql("only queries run here (SELECT, WITH, DESCRIBE, SHOW): the lake changes only through `lakepipe ingest`".into()));
    }
    let mut needs = Needs::default();
    if let Some(s) = &statement {
        let _ = s.visit(&mut Collect(&mut needs));
        needs.schema_statements(s);
    }
    let existing = super::list_tables(lake).await?;
    let wanted = |t: &String| {
        let t = t.to_ascii_lowercase();
        needs.relations.contains(&t) || needs.schemas.contains(&t) || needs.all_schemas
    };
    let tables: Vec<String> = match &statement {
        Some(_) => existing.into_iter().filter(wanted).collect(),
        None => existing,
    };

    let mut inputs: Vec<(String, SchemaRef, Vec<RecordBatch>)> = Vec::new();
    for name in &tables {
        // Only the columns, when that is all the statement looks at.
        let rows_needed = statement.is_none() || needs.relations.contains(&name.to_ascii_lowercase());
        let limit = if rows_needed { "" } else { " LIMIT 0" };
        let mut stream = super::stream(lake, &[name.as_str()], &format!("SELECT * FROM \"{name}\"{limit}")).await?;
        let schema = stream.schema();
        let mut batches = Vec::new();
        while let Some(b) = stream.try_next().await.map_err(|e| QueryError::Sql(e.to_string()))? {
            batches.push(b);
        }
        inputs.push((name.clone(), schema, batches));
    }
    let mut rewritten = BTreeMap::new();
    if !needs.calls.is_empty() {
        let ctx = SessionContext::new();
        functions::register_all(&ctx, lake, broker);
        for (i, call) in needs.calls.iter().enumerate() {
            let df = ctx.sql(&format!("SELECT * FROM {call}")).await.map_err(|e| QueryError::Sql(e.to_string()))?;
            let schema = Arc::new(df.schema().as_arrow().clone());
            let batches = df.collect().await.map_err(|e| QueryError::Sql(e.to_string()))?;
            let table = format!("__lakepipe_fn_{i}");
            inputs.push((table.clone(), schema, batches));
            rewritten.insert(call.clone(), table);
        }
    }
    let text = match (&mut statement, rewritten.is_empty()) {
        (Some(s), false) => {
            let _ = VisitMut::visit(s, &mut Rewrite(&rewritten));
            s.to_string()
        }
        _ => sql.to_string(),
    };
    let text = match opts.limit {
        Some(n) => format!("SELECT * FROM (\n{text}\n) AS __lakepipe_limited LIMIT {n}"),
        None => text,
    };

    let handle = Interrupt::default();
    let _guard = InterruptOnDrop(handle.clone());
    let sandboxed = opts.sandboxed;
    let (memory, threads) = (opts.memory, opts.threads);
    tokio::task::spawn_blocking(move || {
        handle.check()?;
        let db = Database::open(&handle)?;
        // Before the tables load: their copies count against the budget too.
        if let Some(bytes) = memory {
            db.execute(&format!("SET memory_limit = '{}KiB'", (bytes >> 10).max(1)))?;
        }
        if let Some(n) = threads {
            db.execute(&format!("SET threads = {}", n.max(1)))?;
        }
        for (name, schema, batches) in inputs {
            handle.check()?;
            db.load(&name, &schema, &batches)?;
        }
        if sandboxed {
            db.execute("SET enable_external_access = false")?;
            db.execute("SET lock_configuration = true")?;
        }
        handle.check()?;
        let result = db.query(&text);
        handle.check()?;
        result
    })
    .await
    .map_err(|e| QueryError::Engine(format!("the DuckDB worker failed: {e}")))?
}

/// The connection of a running query, so that a timeout can interrupt it, and a flag that
/// stops the work between statements (DuckDB clears its own interrupt at each new statement).
#[derive(Clone, Default)]
struct Interrupt(Arc<Mutex<Option<usize>>>, Arc<std::sync::atomic::AtomicBool>);

impl Interrupt {
    fn check(&self) -> Result<(), QueryError> {
        if self.1.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(QueryError::Sql("the query was cancelled (time limit)".into()));
        }
        Ok(())
    }
}

/// Interrupts DuckDB when the query's future is dropped before it finished.
struct InterruptOnDrop(Interrupt);

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        self.0 .1.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(guard) = self.0 .0.lock() {
            if let Some(con) = *guard {
                // SAFETY: the connection stays open while it is registered here; `Database::drop`
                // unregisters it under the same lock before disconnecting.
                unsafe { ffi::duckdb_interrupt(con as ffi::duckdb_connection) };
            }
        }
    }
}

/// An in-memory DuckDB database with one connection.
struct Database {
    db: ffi::duckdb_database,
    con: ffi::duckdb_connection,
    interrupt: Interrupt,
    /// This query's own spill directory (DuckDB's default `.tmp` would be shared by every
    /// query of the process, and left readable by the sandbox).
    spill: std::path::PathBuf,
}

fn engine_err(what: &str) -> QueryError {
    QueryError::Engine(format!("DuckDB: {what}"))
}

fn c_string(s: &str) -> Result<CString, QueryError> {
    CString::new(s).map_err(|_| QueryError::Sql("the statement contains a NUL byte".into()))
}

/// Cast columns to what DuckDB takes in: plain strings and binaries instead of view and
/// dictionary columns, and UTC timestamps as plain `TIMESTAMP`. (The bundled DuckDB has no ICU,
/// so `TIMESTAMPTZ` arithmetic such as `date_trunc` would fail; every lakepipe timestamp is UTC.)
fn to_duckdb(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    fn plain(t: &DataType) -> DataType {
        match t {
            DataType::Utf8View => DataType::Utf8,
            DataType::BinaryView => DataType::Binary,
            DataType::Dictionary(_, v) => plain(v),
            DataType::Timestamp(unit, Some(_)) => DataType::Timestamp(*unit, None),
            other => other.clone(),
        }
    }
    cast_all(schema, batches, plain)
}

/// Results come back with timestamps marked UTC again, as DataFusion returns them.
fn from_duckdb(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    cast_all(schema, batches, |t| match t {
        DataType::Timestamp(unit, None) => DataType::Timestamp(*unit, Some("UTC".into())),
        other => other.clone(),
    })
}

fn cast_all(schema: &SchemaRef, batches: &[RecordBatch], map: impl Fn(&DataType) -> DataType) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    let fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone().with_data_type(map(f.data_type()))).collect();
    let target = Arc::new(Schema::new(fields));
    if target == *schema {
        return Ok((target, batches.to_vec()));
    }
    let out = batches
        .iter()
        .map(|b| {
            let columns = b
                .columns()
                .iter()
                .zip(target.fields())
                .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
                .collect::<Result<Vec<_>, _>>()?;
            RecordBatch::try_new(target.clone(), columns)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| QueryError::Engine(e.to_string()))?;
    Ok((target, out))
}

impl Database {
    fn open(interrupt: &Interrupt) -> Result<Self, QueryError> {
        let mut db: ffi::duckdb_database = std::ptr::null_mut();
        // SAFETY: a null path opens an in-memory database; `db` is written on success.
        if unsafe { ffi::duckdb_open(std::ptr::null(), &mut db) } != ffi::DuckDBSuccess {
            return Err(engine_err("cannot open an in-memory database"));
        }
        let mut con: ffi::duckdb_connection = std::ptr::null_mut();
        // SAFETY: `db` is open; `con` is written on success.
        if unsafe { ffi::duckdb_connect(db, &mut con) } != ffi::DuckDBSuccess {
            // SAFETY: `db` is open and unused.
            unsafe { ffi::duckdb_close(&mut db) };
            return Err(engine_err("cannot connect"));
        }
        if let Ok(mut g) = interrupt.0.lock() {
            *g = Some(con as usize);
        }
        let spill = std::env::temp_dir().join(format!("lakepipe-duckdb-{}", uuid::Uuid::new_v4()));
        let database = Database { db, con, interrupt: interrupt.clone(), spill };
        // Never reach for the network to fetch an extension.
        database.execute("SET autoinstall_known_extensions = false")?;
        database.execute("SET autoload_known_extensions = false")?;
        let spill = database.spill.display().to_string().replace('\'', "''");
        database.execute(&format!("SET temp_directory = '{spill}'"))?;
        Ok(database)
    }

    /// Run a statement and discard its result.
    fn execute(&self, sql: &str) -> Result<(), QueryError> {
        self.query(sql).map(|_| ())
    }

    /// Create table `name` from Arrow batches.
    fn load(&self, name: &str, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<(), QueryError> {
        let (schema, batches) = to_duckdb(schema, batches)?;
        let batch = arrow::compute::concat_batches(&schema, &batches).map_err(|e| QueryError::Engine(e.to_string()))?;
        let data = StructArray::from(batch).into_data();
        let mut array = FFI_ArrowArray::new(&data);
        let mut ffi_schema = FFI_ArrowSchema::try_from(data.data_type()).map_err(|e| QueryError::Engine(e.to_string()))?;
        let view = c_string("__lakepipe_scan")?;
        let mut stream: ffi::duckdb_arrow_stream = std::ptr::null_mut();
        // SAFETY: DuckDB borrows the schema and array (it installs no-op release callbacks on its
        // copies); both outlive the stream, which is destroyed below before they are dropped.
        let state = unsafe {
            ffi::duckdb_arrow_array_scan(
                self.con,
                view.as_ptr(),
                &mut ffi_schema as *mut FFI_ArrowSchema as ffi::duckdb_arrow_schema,
                &mut array as *mut FFI_ArrowArray as ffi::duckdb_arrow_array,
                &mut stream,
            )
        };
        let result = if state == ffi::DuckDBSuccess {
            let quoted = name.replace('"', "\"\"");
            self.execute(&format!("CREATE TABLE \"{quoted}\" AS SELECT * FROM __lakepipe_scan"))
                .and_then(|_| self.execute("DROP VIEW __lakepipe_scan"))
                // CREATE TABLE AS keeps no constraint: say which columns are not null (the key).
                .and_then(|_| {
                    schema.fields().iter().filter(|f| !f.is_nullable()).try_for_each(|f| {
                        let column = f.name().replace('"', "\"\"");
                        self.execute(&format!("ALTER TABLE \"{quoted}\" ALTER COLUMN \"{column}\" SET NOT NULL"))
                    })
                })
        } else {
            Err(engine_err(&format!("cannot read table `{name}` over the Arrow C interface")))
        };
        if !stream.is_null() {
            // SAFETY: the stream was created by `duckdb_arrow_array_scan` and is no longer used.
            unsafe { ffi::duckdb_destroy_arrow_stream(&mut stream) };
        }
        drop(array);
        drop(ffi_schema);
        result
    }

    /// Run one statement and collect its result as Arrow batches.
    fn query(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        let text = c_string(sql)?;
        let mut res: ffi::duckdb_arrow = std::ptr::null_mut();
        // SAFETY: the connection is open; `res` is written (or left null on an internal failure).
        let state = unsafe { ffi::duckdb_query_arrow(self.con, text.as_ptr(), &mut res) };
        let result = if res.is_null() {
            Err(engine_err("the query failed without a message"))
        } else if state != ffi::DuckDBSuccess {
            // SAFETY: `res` is a valid result; the message lives until it is destroyed below.
            let msg = unsafe {
                let p = ffi::duckdb_query_arrow_error(res);
                if p.is_null() { "unknown error".to_string() } else { CStr::from_ptr(p).to_string_lossy().into_owned() }
            };
            Err(QueryError::Sql(msg))
        } else {
            // SAFETY: `res` is a successful result, read before it is destroyed below.
            unsafe { Self::fetch(res) }
        };
        if !res.is_null() {
            // SAFETY: `res` came from `duckdb_query_arrow` and is destroyed once.
            unsafe { ffi::duckdb_destroy_arrow(&mut res) };
        }
        result
    }

    /// Read a result's schema and every chunk.
    ///
    /// # Safety
    /// `res` must be a successful, not yet destroyed arrow result.
    unsafe fn fetch(res: ffi::duckdb_arrow) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        let mut ffi_schema = FFI_ArrowSchema::empty();
        let mut schema_ptr = &mut ffi_schema as *mut FFI_ArrowSchema;
        // SAFETY: DuckDB writes the schema into the struct `schema_ptr` points at.
        if unsafe { ffi::duckdb_query_arrow_schema(res, &mut schema_ptr as *mut *mut FFI_ArrowSchema as *mut ffi::duckdb_arrow_schema) } != ffi::DuckDBSuccess {
            return Err(engine_err("cannot read the result's schema"));
        }
        let schema = Arc::new(Schema::try_from(&ffi_schema).map_err(|e| QueryError::Engine(e.to_string()))?);
        let mut batches = Vec::new();
        loop {
            let mut array = FFI_ArrowArray::empty();
            let mut array_ptr = &mut array as *mut FFI_ArrowArray;
            // SAFETY: DuckDB writes the next chunk into the struct `array_ptr` points at, or
            // leaves it released when the result is exhausted.
            if unsafe { ffi::duckdb_query_arrow_array(res, &mut array_ptr as *mut *mut FFI_ArrowArray as *mut ffi::duckdb_arrow_array) } != ffi::DuckDBSuccess {
                return Err(QueryError::Sql("the query failed while its result was read".into()));
            }
            if array.is_released() {
                break;
            }
            // SAFETY: `array` is a chunk in the layout `ffi_schema` describes; ownership moves.
            let data = unsafe { arrow::ffi::from_ffi(array, &ffi_schema) }.map_err(|e| QueryError::Engine(e.to_string()))?;
            let columns = StructArray::from(data).into_parts().1;
            batches.push(RecordBatch::try_new(schema.clone(), columns).map_err(|e| QueryError::Engine(e.to_string()))?);
        }
        let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        from_duckdb(&schema, &batches)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Ok(mut g) = self.interrupt.0.lock() {
            *g = None;
        }
        // SAFETY: both handles are open and closed exactly once, the connection first.
        unsafe {
            ffi::duckdb_disconnect(&mut self.con);
            ffi::duckdb_close(&mut self.db);
        }
        let _ = std::fs::remove_dir_all(&self.spill);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Decimal128Array, Int64Array, StringArray, StringViewArray};

    fn needs(sql: &str) -> Needs {
        let mut n = Needs::default();
        let _ = parse(sql).unwrap().visit(&mut Collect(&mut n));
        n
    }

    #[test]
    fn finds_tables_and_calls() {
        let n = needs("WITH x AS (SELECT * FROM Transactions) SELECT * FROM x JOIN changes('transactions', 0, 3) c ON true, history('t') h");
        assert!(n.relations.contains("transactions") && n.relations.contains("x"));
        assert_eq!(n.calls.iter().cloned().collect::<Vec<_>>(), vec!["changes('transactions', 0, 3)".to_string(), "history('t')".to_string()]);
    }

    #[test]
    fn rewrites_calls_keeping_aliases() {
        let mut s = parse("SELECT c.v FROM as_of('t', TIMESTAMP '2026-01-01 00:00:00') AS c WHERE c.v IN (SELECT v FROM freshness())").unwrap();
        let mut n = Needs::default();
        let _ = s.visit(&mut Collect(&mut n));
        let map: BTreeMap<String, String> = n.calls.iter().enumerate().map(|(i, c)| (c.clone(), format!("f{i}"))).collect();
        let _ = VisitMut::visit(&mut s, &mut Rewrite(&map));
        let text = s.to_string();
        assert!(text.contains("FROM \"f0\" AS c") || text.contains("FROM \"f1\" AS c"), "{text}");
        assert!(!text.contains("as_of(") && !text.contains("freshness("), "{text}");
        assert!(text.contains("AS freshness"), "an unaliased call keeps its name: {text}");
    }

    #[test]
    fn round_trips_arrow_through_duckdb() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8View, true),
            Field::new("amount", DataType::Decimal128(38, 9), true),
        ]));
        let n = 5000; // more than one DuckDB vector
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..n)),
                Arc::new(StringViewArray::from_iter((0..n).map(|i| (i % 7 != 0).then(|| format!("n{i}"))))),
                Arc::new(Decimal128Array::from_iter_values((0..n).map(|i| i as i128 * 1_000_000_001)).with_precision_and_scale(38, 9).unwrap()),
            ],
        )
        .unwrap();
        let db = Database::open(&Interrupt::default()).unwrap();
        db.load("t", &schema, &[batch]).unwrap();
        let (_, out) = db.query("SELECT count(*) AS n, count(name) AS named, CAST(sum(amount) AS VARCHAR) AS total, max(name) AS top FROM t").unwrap();
        let b = &out[0];
        assert_eq!(b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0), n);
        assert_eq!(b.column(1).as_any().downcast_ref::<Int64Array>().unwrap().value(0), n - (n + 6) / 7);
        let text = |i: usize| b.column(i).as_any().downcast_ref::<StringArray>().unwrap().value(0).to_string();
        assert_eq!(text(2), "12497500.012497500");
        assert_eq!(text(3), "n999");
        // UTC timestamps: hour arithmetic works without ICU, and results come back marked UTC.
        let ts_schema = Arc::new(Schema::new(vec![Field::new("ts", DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())), false)]));
        let ts = arrow::array::TimestampMicrosecondArray::from(vec![1_767_225_600_000_000 + 5_400_000_000]).with_timezone("UTC");
        db.load("e", &ts_schema, &[RecordBatch::try_new(ts_schema.clone(), vec![Arc::new(ts)]).unwrap()]).unwrap();
        let (schema, out) = db.query("SELECT date_trunc('hour', ts) AS h FROM e").unwrap();
        assert_eq!(schema.field(0).data_type(), &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())));
        let h = out[0].column(0).as_any().downcast_ref::<arrow::array::TimestampMicrosecondArray>().unwrap().value(0);
        assert_eq!(h, 1_767_225_600_000_000 + 3_600_000_000, "01:30 truncates to 01:00 UTC");
        let err = db.query("SELECT nope FROM t").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn sandbox_blocks_files_and_settings() {
        let db = Database::open(&Interrupt::default()).unwrap();
        db.execute("SET enable_external_access = false").unwrap();
        db.execute("SET lock_configuration = true").unwrap();
        assert!(db.query("SELECT * FROM read_csv('/etc/hostname')").is_err());
        assert!(db.query("SET enable_external_access = true").is_err());
        assert!(db.query("SELECT 1 AS x").is_ok());
    }
}
