//! The DuckDB engine: the same SQL, tables and table functions as the DataFusion engine,
//! answered by an embedded DuckDB (the `duckdb` crate, bundled).
//!
//! Each query gets a fresh in-memory DuckDB database:
//!
//! 1. The statement is parsed (DuckDB dialect) to find the lake tables it names and the
//!    lakepipe table functions it calls (`as_of`, `changes`, `history`, `freshness`).
//! 2. Each named table becomes a view over the lake scan (`scan.rs`), a table function that
//!    streams the table's current snapshot (only the live files of the latest Delta version,
//!    through delta-rs), with only the columns DuckDB asks for, as DuckDB pulls the rows. Each
//!    table function call is evaluated by the same code the DataFusion engine uses, so both
//!    engines start from identical rows; its result crosses into DuckDB over the Arrow C Data
//!    Interface and the call is rewritten to read it.
//! 3. The statement runs with a budget: DuckDB's `memory_limit` and `threads`.
//! 4. DuckDB runs the statement; the result comes back over the same interface as arrow batches,
//!    so formatting and export are shared with the DataFusion engine.
//!
//! Sandboxed runs (the HTTP API) disable DuckDB's external access and lock its configuration
//! before the user's statement runs, so file readers, `ATTACH`, `INSTALL`/`LOAD` and `SET` fail
//! inside DuckDB too. There, DuckDB's own parser must find one statement, it must prepare as a
//! `SELECT`, its plan may scan only the loaded tables and the allowed table functions
//! ([`super::allow`]), and the prepared statement is what runs. Dropping the future of
//! a running query (a timeout) interrupts DuckDB.

mod db;
pub(crate) mod scan;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::datafusion::sql::sqlparser::ast::{Ident, ObjectName, ObjectNamePart, Statement, TableAlias, TableFactor, Visit, VisitMut, Visitor, VisitorMut};
use deltalake::datafusion::sql::sqlparser::dialect::DuckDbDialect;
use deltalake::datafusion::sql::sqlparser::parser::Parser;
use futures::StreamExt;

use super::functions::{self, BrokerInfo};
use super::{Answer, QueryError};
use crate::lake::Lake;
use db::{Database, Interrupt, InterruptOnDrop};

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
    /// Sandboxed runs: stop reading the result once its Arrow batches hold more than this.
    pub max_bytes: Option<usize>,
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
        } else if let TableFactor::Table { name, args: None, alias, .. } = factor {
            if let Some(ident) = last_ident(name) {
                self.0.relations.insert(ident.value.to_ascii_lowercase());
            }
            if let Some(a) = alias {
                self.0.relations.insert(a.name.value.to_ascii_lowercase());
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
/// then gets the text unchanged, with a view over every lake table.
fn parse(sql: &str) -> Option<Statement> {
    let mut statements = Parser::parse_sql(&DuckDbDialect {}, sql).ok()?;
    (statements.len() == 1).then(|| statements.remove(0))
}

/// Opens a lake table's stream for the lake scan: a task on this runtime reads the table's
/// live files with the columns asked for and hands batches over as DuckDB takes them (two
/// ahead at most). The task stops when DuckDB drops the stream.
fn opener(ctx: SessionContext) -> scan::Open {
    let runtime = tokio::runtime::Handle::current();
    Box::new(move |name, columns| {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let (ctx, name, columns) = (ctx.clone(), name.to_string(), columns.to_vec());
        runtime.spawn(async move {
            let stream = async {
                let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
                ctx.table(name.as_str()).await?.select_columns(&columns)?.execute_stream().await
            };
            match stream.await {
                Err(e) => {
                    let _ = tx.send(Err(e.to_string())).await;
                }
                Ok(mut stream) => {
                    while let Some(batch) = stream.next().await {
                        let failed = batch.is_err();
                        if tx.send(batch.map_err(|e| e.to_string())).await.is_err() || failed {
                            break;
                        }
                    }
                }
            }
        });
        rx
    })
}

/// Run one statement on DuckDB over the lake.
pub async fn run(lake: &Lake, sql: &str, broker: Option<&BrokerInfo>, opts: &DuckOptions) -> Result<Answer, QueryError> {
    let mut statement = parse(sql);
    if opts.read_only && statement.as_ref().is_some_and(|s| !reads_only(s)) {
        return Err(QueryError::Sql("not allowed: only queries run here (SELECT, WITH, DESCRIBE, SHOW): the lake changes only through `lakepipe ingest`".into()));
    }
    // The API: one reading query on the statement as sqlparser reads it (DuckDB folds a
    // setting's value into the plan, where no check could see it), so the API runs only what
    // sqlparser parses, with no comment inside a comment (DuckDB nests them, sqlparser does
    // not: the two would read different statements); then DuckDB's own parser and plan
    // decide, in `query_checked`.
    if opts.sandboxed {
        let Some(s) = &statement else {
            return Err(QueryError::Sql("cannot parse the query (DuckDB dialect as lakepipe reads it); the API runs only statements it can check".into()));
        };
        super::allow::no_nested_comments(sql)?;
        super::allow::one_query(std::slice::from_ref(s))?;
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

    // The lake tables become views over the lake scan: DuckDB reads only the columns it needs,
    // as it pulls them, from one snapshot per table. A table whose columns alone the statement
    // looks at (`DESCRIBE t`, `SHOW TABLES`) is an empty table instead, so that DuckDB shows
    // which columns may not be null (a view cannot say).
    let lake_ctx = SessionContext::new();
    for registered in futures::future::join_all(tables.iter().map(|name| super::register(&lake_ctx, lake, name))).await {
        registered?;
    }
    let mut sources = Vec::new();
    let mut inputs: Vec<(String, SchemaRef, Vec<RecordBatch>)> = Vec::new();
    for name in &tables {
        let df = lake_ctx.table(name.as_str()).await.map_err(|e| QueryError::Sql(e.to_string()))?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        if statement.is_none() || needs.relations.contains(&name.to_ascii_lowercase()) {
            sources.push(scan::Source { name: name.clone(), schema });
        } else {
            inputs.push((name.clone(), schema, Vec::new()));
        }
    }
    let open = opener(lake_ctx);
    let mut loaded_bytes = 0usize;
    let mut rewritten = BTreeMap::new();
    if !needs.calls.is_empty() {
        let ctx = SessionContext::new();
        functions::register_all(&ctx, lake, broker);
        for (i, call) in needs.calls.iter().enumerate() {
            let df = ctx.sql(&format!("SELECT * FROM {call}")).await.map_err(|e| QueryError::Sql(e.to_string()))?;
            let schema = Arc::new(df.schema().as_arrow().clone());
            let batches = df.collect().await.map_err(|e| QueryError::Sql(e.to_string()))?;
            // The copies count against the budget before DuckDB sees them.
            loaded_bytes += batches.iter().map(RecordBatch::get_array_memory_size).sum::<usize>();
            if let Some(budget) = opts.memory.filter(|m| loaded_bytes > *m) {
                return Err(QueryError::Sql(super::over_budget(Some(budget), &format!("the table functions' results take more than {} MiB", budget >> 20))));
            }
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

    let loaded: BTreeSet<String> = inputs.iter().map(|(name, _, _)| name.to_ascii_lowercase()).chain(sources.iter().map(|s| s.name.to_ascii_lowercase())).collect();
    let handle = Interrupt::default();
    let _guard = InterruptOnDrop(handle.clone());
    let sandboxed = opts.sandboxed;
    let (memory, threads, max_bytes) = (opts.memory, opts.threads, opts.max_bytes);
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
        db.scan_tables(sources, open)?;
        for (name, schema, batches) in inputs {
            handle.check()?;
            db.load(&name, &schema, &batches)?;
        }
        if sandboxed {
            // Nothing a setting's value could show about the machine: the directories that
            // derive from the home directory are set to none.
            for setting in ["home_directory", "extension_directory", "secret_directory"] {
                db.execute(&format!("SET {setting} = '/nonexistent'"))?;
            }
            db.execute("SET enable_external_access = false")?;
            db.execute("SET lock_configuration = true")?;
        }
        handle.check()?;
        let result = if sandboxed {
            db.query_checked(&text, |plan| super::allow::duckdb_plan(plan, &loaded), max_bytes).map(|f| Answer { schema: f.schema, batches: f.batches, cut: f.cut })
        } else {
            db.query(&text).map(|(schema, batches)| Answer { schema, batches, cut: false })
        };
        handle.check()?;
        result
    })
    .await
    .map_err(|e| QueryError::Engine(format!("the DuckDB worker failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
