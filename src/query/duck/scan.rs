//! Lake tables as DuckDB reads them: a table function, `lakepipe_scan('t')`, fed batch by batch
//! from a stream of the table's rows, with a view per table over it.
//!
//! DuckDB tells the function which columns the query reads (projection pushdown), and only
//! those are read. Rows reach DuckDB as it pulls them, through a channel of two batches, so
//! memory does not grow with the table for a query that filters or aggregates. Each scan opens
//! a stream of its own: a self-join reads the table twice, from the same snapshot. Batches
//! become DuckDB vectors through DuckDB's own Arrow conversion (`duckdb_data_chunk_from_arrow`),
//! which keeps the Arrow buffers rather than copying them where it can.

use std::ffi::{c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use arrow::array::{make_array, Array, ArrayRef, StructArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow::record_batch::RecordBatch;
use duckdb::ffi;

use crate::query::QueryError;

/// The table function's name.
pub(crate) const FUNCTION: &str = "lakepipe_scan";

/// A table's rows, batch by batch; an error ends the scan with its message.
pub(super) type Batches = tokio::sync::mpsc::Receiver<Result<RecordBatch, String>>;

/// Opens a stream of table `name`'s rows with only `columns` (in that order).
pub(super) type Open = Box<dyn Fn(&str, &[String]) -> Batches + Send + Sync>;

/// A lake table the function can read: its name and the schema of the batches its stream gives.
pub(super) struct Source {
    pub(super) name: String,
    pub(super) schema: SchemaRef,
}

/// What DuckDB keeps for the function (its extra info): the tables, their DuckDB column types
/// and how to open them.
struct Registered {
    /// The connection whose settings convert Arrow (`duckdb_data_chunk_from_arrow` needs one).
    con: usize,
    tables: Vec<Table>,
    open: Open,
}

struct Table {
    name: String,
    /// The schema DuckDB receives: UTC timestamps as plain `TIMESTAMP` (see [`duck_type`]).
    schema: SchemaRef,
    types: Vec<LogicalType>,
}

/// A DuckDB logical type, destroyed with its owner.
struct LogicalType(ffi::duckdb_logical_type);

// SAFETY: a logical type is an immutable value once created; DuckDB reads it from any thread.
unsafe impl Send for LogicalType {}
// SAFETY: as above.
unsafe impl Sync for LogicalType {}

impl Drop for LogicalType {
    fn drop(&mut self) {
        // SAFETY: the type was created by DuckDB for this owner alone, and is destroyed once.
        unsafe { ffi::duckdb_destroy_logical_type(&mut self.0) };
    }
}

/// The bundled DuckDB has no ICU, so `TIMESTAMPTZ` arithmetic such as `date_trunc` would fail;
/// every lakepipe timestamp is UTC, so DuckDB gets plain `TIMESTAMP`s.
pub(super) fn duck_type(t: &DataType) -> DataType {
    match t {
        DataType::Timestamp(unit, Some(_)) => DataType::Timestamp(*unit, None),
        other => other.clone(),
    }
}

fn duck_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_data_type(duck_type(f.data_type())))
            .collect::<Vec<Field>>(),
    ))
}

/// `batch`'s columns as `target` types them: a time zone dropped without touching the values,
/// anything else cast.
fn conform(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, String> {
    let columns = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(column, field)| -> Result<ArrayRef, String> {
            let want = field.data_type();
            match (column.data_type(), want) {
                (have, want) if have == want => Ok(column.clone()),
                (DataType::Timestamp(a, _), DataType::Timestamp(b, None)) if a == b => {
                    let data = column
                        .to_data()
                        .into_builder()
                        .data_type(want.clone())
                        .build()
                        .map_err(|e| e.to_string())?;
                    Ok(make_array(data))
                }
                _ => arrow::compute::cast(column, want).map_err(|e| e.to_string()),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(target.clone(), columns).map_err(|e| e.to_string())
}

/// DuckDB's conversion of an Arrow schema.
struct Converted(ffi::duckdb_arrow_converted_schema);

// SAFETY: the converted schema is only read after it is built.
unsafe impl Send for Converted {}
// SAFETY: as above.
unsafe impl Sync for Converted {}

impl Converted {
    fn new(con: usize, schema: &Schema) -> Result<Self, String> {
        let mut ffi_schema = FFI_ArrowSchema::try_from(schema).map_err(|e| e.to_string())?;
        let mut out: ffi::duckdb_arrow_converted_schema = std::ptr::null_mut();
        // SAFETY: the connection is open; DuckDB reads the schema (which we release on drop)
        // and writes `out` on success.
        unsafe {
            super::db::take_error(ffi::duckdb_schema_from_arrow(
                con as ffi::duckdb_connection,
                &mut ffi_schema as *mut FFI_ArrowSchema as *mut ffi::ArrowSchema,
                &mut out,
            ))?
        };
        if out.is_null() {
            return Err("DuckDB could not read the table's Arrow schema".into());
        }
        Ok(Converted(out))
    }

    /// `batch` (in the converted schema) as a DuckDB data chunk, which owns the Arrow buffers.
    fn chunk(&self, con: usize, batch: RecordBatch) -> Result<Chunk, String> {
        let data = StructArray::from(batch).into_data();
        let mut array = FFI_ArrowArray::new(&data);
        let mut chunk: ffi::duckdb_data_chunk = std::ptr::null_mut();
        // SAFETY: the array matches the converted schema; DuckDB takes ownership of its buffers
        // (it clears `release`, so dropping `array` afterwards frees nothing twice).
        unsafe {
            super::db::take_error(ffi::duckdb_data_chunk_from_arrow(
                con as ffi::duckdb_connection,
                &mut array as *mut FFI_ArrowArray as *mut ffi::ArrowArray,
                self.0,
                &mut chunk,
            ))?
        };
        if chunk.is_null() {
            return Err("DuckDB could not convert a batch".into());
        }
        Ok(Chunk(chunk))
    }
}

impl Drop for Converted {
    fn drop(&mut self) {
        // SAFETY: created by `duckdb_schema_from_arrow`, destroyed once.
        unsafe { ffi::duckdb_destroy_arrow_converted_schema(&mut self.0) };
    }
}

struct Chunk(ffi::duckdb_data_chunk);

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: created by `duckdb_data_chunk_from_arrow`, destroyed once; vectors that
        // reference its buffers keep them alive.
        unsafe { ffi::duckdb_destroy_data_chunk(&mut self.0) };
    }
}

/// DuckDB's column types for `schema`, as its own Arrow conversion gives them.
fn column_types(con: usize, schema: &SchemaRef) -> Result<Vec<LogicalType>, String> {
    let converted = Converted::new(con, schema)?;
    let chunk = converted.chunk(con, RecordBatch::new_empty(schema.clone()))?;
    Ok((0..schema.fields().len())
        // SAFETY: the chunk has one vector per field; the returned type is ours to destroy.
        .map(|i| {
            LogicalType(unsafe {
                ffi::duckdb_vector_get_column_type(ffi::duckdb_data_chunk_get_vector(
                    chunk.0,
                    i as ffi::idx_t,
                ))
            })
        })
        .collect())
}

/// Registers `lakepipe_scan` on connection `con` over `sources`.
pub(super) fn register(
    con: ffi::duckdb_connection,
    sources: Vec<Source>,
    open: Open,
) -> Result<(), QueryError> {
    let engine = |e: String| QueryError::Engine(format!("DuckDB: {e}"));
    let tables = sources
        .into_iter()
        .map(|s| {
            let schema = duck_schema(&s.schema);
            let types = column_types(con as usize, &schema)?;
            Ok(Table {
                name: s.name,
                schema,
                types,
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(engine)?;
    let registered = Box::new(Registered {
        con: con as usize,
        tables,
        open,
    });
    let name = CString::new(FUNCTION).map_err(|e| engine(e.to_string()))?;
    // SAFETY: the function is configured, registered (DuckDB copies it into its catalog, which
    // takes the extra info and frees it with `drop_box`) and its handle destroyed.
    unsafe {
        let mut function = ffi::duckdb_create_table_function();
        ffi::duckdb_table_function_set_name(function, name.as_ptr());
        let mut varchar = ffi::duckdb_create_logical_type(ffi::DUCKDB_TYPE_DUCKDB_TYPE_VARCHAR);
        ffi::duckdb_table_function_add_parameter(function, varchar);
        ffi::duckdb_destroy_logical_type(&mut varchar);
        ffi::duckdb_table_function_supports_projection_pushdown(function, true);
        ffi::duckdb_table_function_set_bind(function, Some(bind));
        ffi::duckdb_table_function_set_init(function, Some(init));
        ffi::duckdb_table_function_set_function(function, Some(scan));
        ffi::duckdb_table_function_set_extra_info(
            function,
            Box::into_raw(registered) as *mut c_void,
            Some(drop_box::<Registered>),
        );
        let state = ffi::duckdb_register_table_function(con, function);
        ffi::duckdb_destroy_table_function(&mut function);
        if state != ffi::DuckDBSuccess {
            return Err(engine("cannot register the lake scan".into()));
        }
    }
    Ok(())
}

/// Frees what `Box::into_raw` gave DuckDB.
///
/// # Safety
/// `p` must come from `Box::<T>::into_raw` and be freed once.
unsafe extern "C" fn drop_box<T>(p: *mut c_void) {
    // SAFETY: as the caller promises.
    drop(unsafe { Box::from_raw(p as *mut T) });
}

/// Runs a callback body, turning a panic into an error (a panic must not cross into C).
fn guarded(body: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(body))
        .unwrap_or_else(|_| Err("the lake scan failed (internal error)".into()))
}

fn c_message(m: &str) -> CString {
    CString::new(m.replace('\0', " ")).unwrap_or_default()
}

unsafe extern "C" fn bind(info: ffi::duckdb_bind_info) {
    let result = guarded(|| {
        // SAFETY: the extra info is the `Registered` set at registration, alive with the catalog.
        let registered = unsafe { &*(ffi::duckdb_bind_get_extra_info(info) as *const Registered) };
        // SAFETY: the function takes one VARCHAR parameter; the value and its text are freed here.
        let name = unsafe {
            let mut value = ffi::duckdb_bind_get_parameter(info, 0);
            let text = ffi::duckdb_get_varchar(value);
            let name = if text.is_null() {
                String::new()
            } else {
                CStr::from_ptr(text).to_string_lossy().into_owned()
            };
            ffi::duckdb_free(text as *mut c_void);
            ffi::duckdb_destroy_value(&mut value);
            name
        };
        let index = registered
            .tables
            .iter()
            .position(|t| t.name.eq_ignore_ascii_case(&name))
            .ok_or_else(|| format!("`{name}` is not a lake table this query reads"))?;
        let table = &registered.tables[index];
        for (field, ty) in table.schema.fields().iter().zip(&table.types) {
            let column = c_message(field.name());
            // SAFETY: DuckDB copies the name and the type.
            unsafe { ffi::duckdb_bind_add_result_column(info, column.as_ptr(), ty.0) };
        }
        // SAFETY: DuckDB frees the bind data with `drop_box`.
        unsafe {
            ffi::duckdb_bind_set_bind_data(
                info,
                Box::into_raw(Box::new(index)) as *mut c_void,
                Some(drop_box::<usize>),
            )
        };
        Ok(())
    });
    if let Err(e) = result {
        // SAFETY: DuckDB copies the message.
        unsafe { ffi::duckdb_bind_set_error(info, c_message(&e).as_ptr()) };
    }
}

/// One scan's state: the stream and where the current batch has been read to.
struct Scan {
    con: usize,
    /// For each output column, its place in the batches read; `None` for DuckDB's row id,
    /// answered with row numbers.
    columns: Vec<Option<usize>>,
    schema: SchemaRef,
    converted: Converted,
    pending: Mutex<Pending>,
}

struct Pending {
    batches: Batches,
    batch: Option<RecordBatch>,
    offset: usize,
    row: i64,
}

unsafe extern "C" fn init(info: ffi::duckdb_init_info) {
    let result = guarded(|| {
        // SAFETY: extra info and bind data are those set by `register` and `bind`.
        let (registered, index) = unsafe {
            (
                &*(ffi::duckdb_init_get_extra_info(info) as *const Registered),
                *(ffi::duckdb_init_get_bind_data(info) as *const usize),
            )
        };
        let table = &registered.tables[index];
        let fields = table.schema.fields();
        // SAFETY: reading the projection DuckDB asks for.
        let wanted: Vec<usize> = unsafe {
            (0..ffi::duckdb_init_get_column_count(info))
                .map(|i| ffi::duckdb_init_get_column_index(info, i) as usize)
                .collect()
        };
        let mut read: Vec<usize> = Vec::new();
        let columns = wanted
            .iter()
            .map(|&i| {
                (i < fields.len()).then(|| {
                    read.iter().position(|&r| r == i).unwrap_or_else(|| {
                        read.push(i);
                        read.len() - 1
                    })
                })
            })
            .collect();
        // Only row ids (`count(*)`): one column is read to count the rows.
        if read.is_empty() && !fields.is_empty() {
            read.push(0);
        }
        let schema = Arc::new(table.schema.project(&read).map_err(|e| e.to_string())?);
        let names: Vec<String> = read.iter().map(|&i| fields[i].name().clone()).collect();
        let converted = Converted::new(registered.con, &schema)?;
        let batches = (registered.open)(&table.name, &names);
        let scan = Scan {
            con: registered.con,
            columns,
            schema,
            converted,
            pending: Mutex::new(Pending {
                batches,
                batch: None,
                offset: 0,
                row: 0,
            }),
        };
        // SAFETY: DuckDB frees the init data with `drop_box`; one thread reads the stream.
        unsafe {
            ffi::duckdb_init_set_init_data(
                info,
                Box::into_raw(Box::new(scan)) as *mut c_void,
                Some(drop_box::<Scan>),
            );
            ffi::duckdb_init_set_max_threads(info, 1);
        }
        Ok(())
    });
    if let Err(e) = result {
        // SAFETY: DuckDB copies the message.
        unsafe { ffi::duckdb_init_set_error(info, c_message(&e).as_ptr()) };
    }
}

unsafe extern "C" fn scan(info: ffi::duckdb_function_info, output: ffi::duckdb_data_chunk) {
    let result = guarded(|| {
        // SAFETY: the init data is the `Scan` set by `init`.
        let scan = unsafe { &*(ffi::duckdb_function_get_init_data(info) as *const Scan) };
        fill(scan, output)
    });
    if let Err(e) = result {
        // SAFETY: DuckDB copies the message.
        unsafe { ffi::duckdb_function_set_error(info, c_message(&e).as_ptr()) };
    }
}

/// Fills `output` with the next rows, at most one DuckDB vector's worth; none when the stream
/// has ended.
fn fill(scan: &Scan, output: ffi::duckdb_data_chunk) -> Result<(), String> {
    // SAFETY: a plain query of DuckDB's constant.
    let capacity = unsafe { ffi::duckdb_vector_size() } as usize;
    let mut pending = scan
        .pending
        .lock()
        .map_err(|_| "the lake scan failed (poisoned)".to_string())?;
    let piece = loop {
        if let Some(batch) = &pending.batch {
            if pending.offset < batch.num_rows() {
                let n = capacity.min(batch.num_rows() - pending.offset);
                let piece = batch.slice(pending.offset, n);
                pending.offset += n;
                break Some(piece);
            }
        }
        match pending.batches.blocking_recv() {
            None => break None,
            Some(Err(e)) => return Err(e),
            Some(Ok(batch)) => {
                pending.batch = Some(conform(&batch, &scan.schema)?);
                pending.offset = 0;
            }
        }
    };
    let Some(piece) = piece else {
        // SAFETY: `output` is the chunk DuckDB passed in.
        unsafe { ffi::duckdb_data_chunk_set_size(output, 0) };
        return Ok(());
    };
    let rows = piece.num_rows();
    let chunk = scan.converted.chunk(scan.con, piece)?;
    for (j, column) in scan.columns.iter().enumerate() {
        // SAFETY: `output` has one vector per projected column, in DuckDB's order.
        let out = unsafe { ffi::duckdb_data_chunk_get_vector(output, j as ffi::idx_t) };
        match column {
            // SAFETY: both vectors have the same type; `out` shares the chunk's buffers.
            Some(k) => unsafe {
                ffi::duckdb_vector_reference_vector(
                    out,
                    ffi::duckdb_data_chunk_get_vector(chunk.0, *k as ffi::idx_t),
                )
            },
            None => row_numbers(out, pending.row, rows)?,
        }
    }
    pending.row += rows as i64;
    // SAFETY: every vector holds `rows` values.
    unsafe { ffi::duckdb_data_chunk_set_size(output, rows as ffi::idx_t) };
    Ok(())
}

/// DuckDB's row id column: row numbers from `first`.
fn row_numbers(out: ffi::duckdb_vector, first: i64, rows: usize) -> Result<(), String> {
    // SAFETY: the type is read and destroyed; the data is written only when it is a BIGINT
    // vector, which holds at least `rows` (at most one vector's worth) i64 values.
    unsafe {
        let mut ty = ffi::duckdb_vector_get_column_type(out);
        let bigint = ffi::duckdb_get_type_id(ty) == ffi::DUCKDB_TYPE_DUCKDB_TYPE_BIGINT;
        ffi::duckdb_destroy_logical_type(&mut ty);
        if !bigint {
            return Err("the lake scan was asked for a column it does not have".into());
        }
        let data =
            std::slice::from_raw_parts_mut(ffi::duckdb_vector_get_data(out) as *mut i64, rows);
        for (i, v) in data.iter_mut().enumerate() {
            *v = first + i as i64;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::db::{Database, Interrupt};
    use super::*;
    use arrow::array::{
        Date32Array, Decimal128Array, Int64Array, StringViewArray, TimestampMicrosecondArray,
    };
    use arrow::datatypes::TimeUnit;

    fn table(n: i64, start: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8View, true),
            Field::new("amount", DataType::Decimal128(38, 9), true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("day", DataType::Date32, false),
        ]));
        let ids = start..start + n;
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(ids.clone())),
                Arc::new(StringViewArray::from_iter(ids.clone().map(|i| {
                    (i % 7 != 0).then(|| format!("a rather long name {i}"))
                }))),
                Arc::new(
                    Decimal128Array::from_iter_values(
                        ids.clone().map(|i| i as i128 * 1_000_000_001),
                    )
                    .with_precision_and_scale(38, 9)
                    .unwrap(),
                ),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        ids.clone().map(|i| 1_767_225_600_000_000 + i * 60_000_000),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(Date32Array::from_iter_values(
                    ids.map(|i| 20_454 + (i / 1000) as i32),
                )),
            ],
        )
        .unwrap()
    }

    /// A database over `batches`, and the columns each scan opened.
    fn database(batches: Vec<RecordBatch>, fail: bool) -> (Database, Arc<Mutex<Vec<Vec<String>>>>) {
        let opened = Arc::new(Mutex::new(Vec::new()));
        let log = opened.clone();
        let schema = batches[0].schema();
        let open: Open = Box::new(move |_, columns| {
            log.lock().unwrap().push(columns.to_vec());
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            let batches = batches.clone();
            let columns = columns.to_vec();
            std::thread::spawn(move || {
                for b in batches {
                    let idx: Vec<usize> = columns
                        .iter()
                        .map(|c| b.schema().index_of(c).unwrap())
                        .collect();
                    if tx.blocking_send(Ok(b.project(&idx).unwrap())).is_err() {
                        return;
                    }
                }
                if fail {
                    let _ = tx.blocking_send(Err("the store went away".into()));
                }
            });
            rx
        });
        let db = Database::open(&Interrupt::default()).unwrap();
        db.scan_tables(
            vec![Source {
                name: "t".into(),
                schema,
            }],
            open,
        )
        .unwrap();
        (db, opened)
    }

    fn value(db: &Database, sql: &str) -> String {
        let (_, out) = db
            .query(&format!("SELECT CAST(({sql}) AS VARCHAR) AS v"))
            .unwrap();
        let v = arrow::compute::cast(out[0].column(0), &DataType::Utf8).unwrap();
        v.as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap()
            .value(0)
            .to_string()
    }

    #[test]
    fn streams_only_the_columns_read() {
        // Batches larger and smaller than DuckDB's vector, so slices start mid-batch.
        let (db, opened) = database(
            vec![table(3000, 0), table(2000, 3000), table(5, 5000)],
            false,
        );
        assert_eq!(value(&db, "SELECT count(*) FROM t"), "5005");
        assert_eq!(
            value(&db, "SELECT sum(amount) FROM t"),
            "12522510.012522510"
        );
        assert_eq!(
            value(
                &db,
                "SELECT count(name) FROM t WHERE day > DATE '2026-01-01'"
            ),
            (4005 - 4005 / 7).to_string()
        );
        assert_eq!(
            value(
                &db,
                "SELECT max(name) FROM t WHERE id BETWEEN 3990 AND 3999"
            ),
            "a rather long name 3999"
        );
        assert_eq!(
            value(&db, "SELECT date_trunc('hour', max(ts)) FROM t"),
            "2026-01-04 11:00:00"
        );
        // A self-join: two scans, each with a stream of its own.
        assert_eq!(
            value(&db, "SELECT count(*) FROM t a JOIN t b ON a.id = b.id + 1"),
            "5004"
        );
        let opened = opened.lock().unwrap().clone();
        assert_eq!(opened[1], vec!["amount".to_string()]);
        assert_eq!(opened[2].len(), 2, "{opened:?}");
        assert_eq!(opened.len(), 7, "{opened:?}");
        assert!(opened.iter().all(|c| c.len() <= 2), "{opened:?}");
        // The views describe the table without reading it.
        let (_, out) = db.query("DESCRIBE t").unwrap();
        assert_eq!(out[0].num_rows(), 5);
    }

    /// A table many times larger than DuckDB's memory limit aggregates: rows stream through.
    #[test]
    fn aggregates_a_table_larger_than_the_memory_limit() {
        let schema = Arc::new(Schema::new(vec![Field::new("i", DataType::Int64, false), Field::new("s", DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..8192)),
                Arc::new(arrow::array::StringArray::from_iter_values((0..8192).map(|i| format!("{i:0>100}")))),
            ],
        )
        .unwrap();
        // 8192 rows of about 110 bytes, 256 times: 230 MB, against a limit of 32 MiB.
        let open: Open = Box::new(move |_, columns| {
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            let idx: Vec<usize> = columns.iter().map(|c| batch.schema().index_of(c).unwrap()).collect();
            let piece = batch.project(&idx).unwrap();
            std::thread::spawn(move || (0..256).all(|_| tx.blocking_send(Ok(piece.clone())).is_ok()));
            rx
        });
        let db = Database::open(&Interrupt::default()).unwrap();
        db.execute("SET memory_limit = '32MiB'").unwrap();
        db.scan_tables(vec![Source { name: "t".into(), schema }], open).unwrap();
        assert_eq!(value(&db, "SELECT count(*) FILTER (WHERE i % 2 = 0) FROM t WHERE s LIKE '%2'"), ((0..8192).filter(|i| i % 10 == 2).count() * 256).to_string());
        assert_eq!(value(&db, "SELECT max(s) FROM t"), format!("{:0>100}", 8191));
    }

    #[test]
    fn a_failing_stream_fails_the_query() {
        let (db, _) = database(vec![table(10, 0)], true);
        let err = db.query("SELECT count(*) FROM t").unwrap_err();
        assert!(err.to_string().contains("the store went away"), "{err}");
        let err = db.query("SELECT * FROM lakepipe_scan('u')").unwrap_err();
        assert!(err.to_string().contains("`u` is not a lake table"), "{err}");
    }
}
