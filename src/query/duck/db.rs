//! The DuckDB side of the engine: an in-memory database over the C API, tables loaded from
//! Arrow batches over the C Data Interface, results read back the same way, and the interrupt
//! that a timeout sends.

use std::ffi::{CStr, CString};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, StructArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow::record_batch::RecordBatch;
use duckdb::ffi;

use crate::query::QueryError;

/// The connection of a running query, so that a timeout can interrupt it, and a flag that
/// stops the work between statements (DuckDB clears its own interrupt at each new statement).
#[derive(Clone, Default)]
pub(super) struct Interrupt(Arc<Mutex<Option<usize>>>, Arc<std::sync::atomic::AtomicBool>);

impl Interrupt {
    pub(super) fn check(&self) -> Result<(), QueryError> {
        if self.1.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(QueryError::Sql("the query was cancelled (time limit)".into()));
        }
        Ok(())
    }
}

/// Interrupts DuckDB when the query's future is dropped before it finished.
pub(super) struct InterruptOnDrop(pub(super) Interrupt);

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

/// A result: its schema, its batches and whether they stop short of it (`cut`).
pub(super) struct Fetched {
    pub(super) schema: SchemaRef,
    pub(super) batches: Vec<RecordBatch>,
    pub(super) cut: bool,
}

/// An in-memory DuckDB database with one connection.
pub(super) struct Database {
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

/// A message DuckDB owns, copied ("unknown error" for none).
///
/// # Safety
/// `p` must be null or a NUL-terminated string that lives for the call.
pub(super) unsafe fn message(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: as the caller promises.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// DuckDB's error message, and the error destroyed.
///
/// # Safety
/// `error` must be null or error data from DuckDB that is not used after this call.
pub(super) unsafe fn take_error(mut error: ffi::duckdb_error_data) -> Result<(), String> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: `error` is valid; its message lives until it is destroyed below.
    let result = unsafe {
        if ffi::duckdb_error_data_has_error(error) {
            Err(message(ffi::duckdb_error_data_message(error)))
        } else {
            Ok(())
        }
    };
    // SAFETY: destroyed once, here.
    unsafe { ffi::duckdb_destroy_error_data(&mut error) };
    result
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
            other => super::scan::duck_type(other),
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
    pub(super) fn open(interrupt: &Interrupt) -> Result<Self, QueryError> {
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
    pub(super) fn execute(&self, sql: &str) -> Result<(), QueryError> {
        self.query(sql).map(|_| ())
    }

    /// Create table `name` from Arrow batches.
    pub(super) fn load(&self, name: &str, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<(), QueryError> {
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

    /// Make each of `sources` a view named after it, over the lake scan
    /// ([`super::scan`]): DuckDB reads their rows from `open` as it needs them.
    pub(super) fn scan_tables(&self, sources: Vec<super::scan::Source>, open: super::scan::Open) -> Result<(), QueryError> {
        let names: Vec<String> = sources.iter().map(|s| s.name.clone()).collect();
        super::scan::register(self.con, sources, open)?;
        for name in names {
            let quoted = name.replace('"', "\"\"");
            let literal = name.replace('\'', "''");
            self.execute(&format!("CREATE VIEW \"{quoted}\" AS SELECT * FROM {}('{literal}')", super::scan::FUNCTION))?;
        }
        Ok(())
    }

    /// Run one statement and collect its result as Arrow batches.
    pub(super) fn query(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        let text = c_string(sql)?;
        let mut res: ffi::duckdb_arrow = std::ptr::null_mut();
        // SAFETY: the connection is open; `res` is written (or left null on an internal failure).
        let state = unsafe { ffi::duckdb_query_arrow(self.con, text.as_ptr(), &mut res) };
        // SAFETY: `res` came from `duckdb_query_arrow` and is not used again.
        unsafe { Self::collect(state, res) }
    }

    /// Run `sql` only when DuckDB's own parser finds exactly one statement in it, that
    /// statement prepares as a `SELECT`, and `check` accepts its plan (`EXPLAIN (FORMAT JSON)`);
    /// what runs is that prepared statement.
    /// The result streams from DuckDB chunk by chunk and stops once its Arrow batches hold more
    /// than `max_bytes` (then `cut` is true), so DuckDB computes no more of it than that.
    pub(super) fn query_checked(&self, sql: &str, check: impl Fn(&str) -> Result<(), QueryError>, max_bytes: Option<usize>) -> Result<Fetched, QueryError> {
        let text = c_string(sql)?;
        let mut extracted: ffi::duckdb_extracted_statements = std::ptr::null_mut();
        // SAFETY: the connection is open; `extracted` is written and destroyed below.
        let count = unsafe { ffi::duckdb_extract_statements(self.con, text.as_ptr(), &mut extracted) };
        let result = (|| {
            if count == 0 {
                // SAFETY: `extracted` holds the parser's message until it is destroyed below.
                let msg = unsafe { message(ffi::duckdb_extract_statements_error(extracted)) };
                return Err(QueryError::Sql(if msg.is_empty() { "there is no statement to run".into() } else { msg }));
            }
            if count != 1 {
                return Err(QueryError::Sql(format!("not allowed: send exactly one statement (DuckDB's parser found {count})")));
            }
            let mut prepared: ffi::duckdb_prepared_statement = std::ptr::null_mut();
            // SAFETY: `extracted` holds one statement; `prepared` is destroyed below.
            let state = unsafe { ffi::duckdb_prepare_extracted_statement(self.con, extracted, 0, &mut prepared) };
            let run = (|| {
                if state != ffi::DuckDBSuccess {
                    // SAFETY: `prepared` holds the binder's message until it is destroyed below.
                    let msg = unsafe { message(ffi::duckdb_prepare_error(prepared)) };
                    let refused = msg.contains("Permission Error") || msg.contains("disabled by configuration");
                    return Err(QueryError::Sql(if refused { format!("not allowed: {msg}") } else { msg }));
                }
                // SAFETY: `prepared` is a successfully prepared statement.
                if unsafe { ffi::duckdb_prepared_statement_type(prepared) } != ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_SELECT {
                    return Err(QueryError::Sql("not allowed: the API is read-only: only SELECT and WITH queries run here".into()));
                }
                check(&self.plan(sql)?)?;
                // DuckDB clears an interrupt at each statement: one sent during the checks
                // would be lost.
                self.interrupt.check()?;
                // SAFETY: `prepared` is a successfully prepared statement.
                unsafe { self.stream(prepared, max_bytes) }
            })();
            // SAFETY: `prepared` came from `duckdb_prepare_extracted_statement`, destroyed once.
            unsafe { ffi::duckdb_destroy_prepare(&mut prepared) };
            run
        })();
        // SAFETY: `extracted` came from `duckdb_extract_statements` and is destroyed once.
        unsafe { ffi::duckdb_destroy_extracted(&mut extracted) };
        result
    }

    /// Run a prepared statement with a streaming result, converted chunk by chunk to Arrow, and
    /// stop once the batches hold more than `max_bytes`.
    ///
    /// # Safety
    /// `prepared` must be a successfully prepared statement.
    unsafe fn stream(&self, prepared: ffi::duckdb_prepared_statement, max_bytes: Option<usize>) -> Result<Fetched, QueryError> {
        // SAFETY: an all-zero `duckdb_result` is the empty value DuckDB expects to fill.
        let mut result: ffi::duckdb_result = unsafe { std::mem::zeroed() };
        // SAFETY: as the caller promises; `result` is destroyed below, whatever the state.
        let state = unsafe { ffi::duckdb_execute_prepared_streaming(prepared, &mut result) };
        let out = if state != ffi::DuckDBSuccess {
            // SAFETY: a failed result holds its message until it is destroyed.
            Err(QueryError::Sql(unsafe { message(ffi::duckdb_result_error(&mut result)) }))
        } else {
            let mut options: ffi::duckdb_arrow_options = std::ptr::null_mut();
            // SAFETY: the connection is open; the options are destroyed below.
            unsafe { ffi::duckdb_connection_get_arrow_options(self.con, &mut options) };
            // SAFETY: `result` is a successful streaming result, read before it is destroyed.
            let read = unsafe { Self::read_stream(&mut result, options, max_bytes) };
            // SAFETY: destroyed once, here.
            unsafe { ffi::duckdb_destroy_arrow_options(&mut options) };
            read
        };
        // SAFETY: destroyed once, here.
        unsafe { ffi::duckdb_destroy_result(&mut result) };
        out
    }

    /// The schema and chunks of a streaming result, as Arrow.
    ///
    /// # Safety
    /// `result` must be a successful result and `options` the connection's Arrow options.
    unsafe fn read_stream(result: &mut ffi::duckdb_result, options: ffi::duckdb_arrow_options, max_bytes: Option<usize>) -> Result<Fetched, QueryError> {
        let arrow_err = |e: arrow::error::ArrowError| QueryError::Engine(e.to_string());
        // SAFETY: reading the result's columns; each type is destroyed after the conversion.
        let (schema, ffi_schema) = unsafe {
            let n = ffi::duckdb_column_count(result);
            let mut types: Vec<ffi::duckdb_logical_type> = (0..n).map(|i| ffi::duckdb_column_logical_type(result, i)).collect();
            let mut names: Vec<*const std::os::raw::c_char> = (0..n).map(|i| ffi::duckdb_column_name(result, i)).collect();
            let mut ffi_schema = FFI_ArrowSchema::empty();
            let converted = take_error(ffi::duckdb_to_arrow_schema(options, types.as_mut_ptr(), names.as_mut_ptr(), n, &mut ffi_schema as *mut FFI_ArrowSchema as *mut ffi::ArrowSchema));
            for t in &mut types {
                ffi::duckdb_destroy_logical_type(t);
            }
            converted.map_err(|e| engine_err(&e))?;
            (Arc::new(Schema::try_from(&ffi_schema).map_err(arrow_err)?), ffi_schema)
        };
        let (mut batches, mut bytes) = (Vec::new(), 0usize);
        let cut = loop {
            // SAFETY: the result is alive; a chunk is destroyed once converted.
            let mut chunk = unsafe { ffi::duckdb_fetch_chunk(*result) };
            if chunk.is_null() {
                // SAFETY: as above; a failure while streaming leaves its message on the result.
                let err = unsafe { ffi::duckdb_result_error(result) };
                if !err.is_null() {
                    // SAFETY: the message lives until the result is destroyed.
                    return Err(QueryError::Sql(unsafe { message(err) }));
                }
                break false;
            }
            let mut array = FFI_ArrowArray::empty();
            // SAFETY: DuckDB copies the chunk into an array of its own, released by `from_ffi`.
            let converted = unsafe { take_error(ffi::duckdb_data_chunk_to_arrow(options, chunk, &mut array as *mut FFI_ArrowArray as *mut ffi::ArrowArray)) };
            // SAFETY: destroyed once, here.
            unsafe { ffi::duckdb_destroy_data_chunk(&mut chunk) };
            converted.map_err(|e| engine_err(&e))?;
            // SAFETY: `array` is in the layout `ffi_schema` describes; ownership moves.
            let data = unsafe { arrow::ffi::from_ffi(array, &ffi_schema) }.map_err(arrow_err)?;
            let batch = RecordBatch::try_new(schema.clone(), StructArray::from(data).into_parts().1).map_err(arrow_err)?;
            bytes += batch.get_array_memory_size();
            if batch.num_rows() > 0 {
                batches.push(batch);
            }
            if max_bytes.is_some_and(|m| bytes > m) {
                break true;
            }
        };
        let (schema, batches) = from_duckdb(&schema, &batches)?;
        Ok(Fetched { schema, batches, cut })
    }

    /// DuckDB's physical plan of `sql` as JSON.
    fn plan(&self, sql: &str) -> Result<String, QueryError> {
        let (_, batches) = self.query(&format!("EXPLAIN (FORMAT JSON) {sql}"))?;
        let value = batches.first().filter(|b| b.num_columns() == 2 && b.num_rows() > 0).and_then(|b| {
            let text = arrow::compute::cast(b.column(1), &DataType::Utf8).ok()?;
            Some(text.as_any().downcast_ref::<arrow::array::StringArray>()?.value(0).to_string())
        });
        value.ok_or_else(|| engine_err("EXPLAIN gave no plan"))
    }

    /// The batches of an arrow result, and destroy it.
    ///
    /// # Safety
    /// `res` must be null or an arrow result that is not used after this call.
    unsafe fn collect(state: ffi::duckdb_state, mut res: ffi::duckdb_arrow) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        let result = if res.is_null() {
            Err(engine_err("the query failed without a message"))
        } else if state != ffi::DuckDBSuccess {
            // SAFETY: `res` is a valid result; the message lives until it is destroyed below.
            Err(QueryError::Sql(unsafe { message(ffi::duckdb_query_arrow_error(res)) }))
        } else {
            // SAFETY: `res` is a successful result, read before it is destroyed below.
            unsafe { Self::fetch(res) }
        };
        if !res.is_null() {
            // SAFETY: `res` is destroyed once, here.
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
