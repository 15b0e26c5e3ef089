//! What a sandboxed query (the HTTP API) may run and read. Each engine decides with its own
//! parser and planner, never with a scan of the text:
//!
//! * **One query.** DataFusion's parser must read exactly one `SELECT`/`WITH … SELECT`
//!   ([`datafusion_statement`]); on DuckDB, DuckDB's own parser must find exactly one statement
//!   and the prepared statement must be a `SELECT` (`duck::db`), and that prepared statement is
//!   what runs.
//! * **The lake and nothing else.** The engine's plan may scan only the lake's tables and the
//!   table functions in [`TABLE_FUNCTIONS`] ([`datafusion_plan`], [`duckdb_plan`]): every file
//!   reader, settings, catalog or extension function is refused because it is not on the list,
//!   however it is spelled, quoted or reached (DuckDB's `pg_catalog.pg_settings` is a view over
//!   `duckdb_settings()`, and its plan shows that).
//! * **No settings by value.** DuckDB folds `current_setting('…')` into a constant while
//!   planning, so it cannot be seen in a plan: the scalar functions in [`SCALARS_DENIED`] are
//!   refused on the statement as the engine's dialect parses it.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use deltalake::datafusion::common::tree_node::TreeNodeRecursion;
use deltalake::datafusion::logical_expr::LogicalPlan;
use deltalake::datafusion::sql::sqlparser::ast::{
    visit_expressions, Expr, SetExpr, Statement, TableFactor, Visit, Visitor,
};

use super::QueryError;

/// The table functions a sandboxed query may call: lakepipe's own and the generators.
pub const TABLE_FUNCTIONS: [&str; 7] = [
    "as_of",
    "changes",
    "history",
    "freshness",
    "generate_series",
    "range",
    "unnest",
];

/// Scalar functions that show the server's settings or environment.
pub const SCALARS_DENIED: [&str; 3] = ["current_setting", "getenv", "duckdb_secret_directory"];

fn refused(what: impl std::fmt::Display) -> QueryError {
    QueryError::Sql(format!("not allowed: {what}"))
}

fn not_listed(name: &str) -> QueryError {
    refused(format!(
        "`{name}` is neither a table of the lake nor one of the table functions {}: the API reads no files, settings or catalog",
        TABLE_FUNCTIONS.join(", ")
    ))
}

/// The error for a statement that is not a query, named by its first word.
fn not_a_query(statement: &impl std::fmt::Display) -> QueryError {
    let text = statement.to_string();
    let kind = text
        .split_whitespace()
        .next()
        .unwrap_or("this")
        .to_ascii_uppercase();
    refused(format!(
        "the API is read-only: {kind} statements do not run here; only SELECT and WITH queries do"
    ))
}

/// Whether a query's body only reads (`WITH … INSERT` parses as a query too).
fn reads_only(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(_) | SetExpr::Values(_) | SetExpr::Table(_) => true,
        SetExpr::Query(q) => reads_only(&q.body),
        SetExpr::SetOperation { left, right, .. } => reads_only(left) && reads_only(right),
        _ => false,
    }
}

/// One query that only reads, as `statements` (the engine's parse of the text) hold it, with
/// only the table functions allowed and none of [`SCALARS_DENIED`].
pub fn one_query(statements: &[Statement]) -> Result<(), QueryError> {
    let [statement] = statements else {
        return Err(refused(format!(
            "send exactly one statement (got {})",
            statements.len()
        )));
    };
    let Statement::Query(query) = statement else {
        return Err(not_a_query(statement));
    };
    let ctes_read_only = query
        .with
        .as_ref()
        .is_none_or(|w| w.cte_tables.iter().all(|c| reads_only(&c.query.body)));
    if !reads_only(&query.body) || !ctes_read_only {
        return Err(refused(
            "the API is read-only: only SELECT and WITH … SELECT queries run here",
        ));
    }
    calls(statement)
}

/// The table functions `statement` calls are in [`TABLE_FUNCTIONS`], and it calls none of
/// [`SCALARS_DENIED`].
pub fn calls(statement: &Statement) -> Result<(), QueryError> {
    struct TableFunctions(Option<String>);
    impl Visitor for TableFunctions {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            let name = match factor {
                TableFactor::Table {
                    name,
                    args: Some(_),
                    ..
                }
                | TableFactor::Function { name, .. } => name,
                _ => return ControlFlow::Continue(()),
            };
            let name = name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(|i| i.value.to_ascii_lowercase())
                .unwrap_or_default();
            if TABLE_FUNCTIONS.contains(&name.as_str()) {
                return ControlFlow::Continue(());
            }
            self.0 = Some(name);
            ControlFlow::Break(())
        }
    }
    let mut functions = TableFunctions(None);
    let _ = statement.visit(&mut functions);
    if let Some(name) = functions.0 {
        return Err(not_listed(&name));
    }
    let found = visit_expressions(statement, |e| match e {
        Expr::Function(f) => {
            let name = f
                .name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(|i| i.value.to_ascii_lowercase())
                .unwrap_or_default();
            if SCALARS_DENIED.contains(&name.as_str()) {
                ControlFlow::Break(name)
            } else {
                ControlFlow::Continue(())
            }
        }
        _ => ControlFlow::Continue(()),
    });
    match found {
        ControlFlow::Break(name) => Err(refused(format!(
            "`{name}` shows the server's settings or environment"
        ))),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// No block comment inside a block comment: DuckDB nests them and sqlparser does not, so the
/// two would read different statements out of the same text.
pub fn no_nested_comments(sql: &str) -> Result<(), QueryError> {
    use deltalake::datafusion::sql::sqlparser::dialect::DuckDbDialect;
    use deltalake::datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};
    let tokens = Tokenizer::new(&DuckDbDialect {}, sql)
        .tokenize()
        .map_err(|e| QueryError::Sql(format!("cannot parse the query: {e}")))?;
    let nested = tokens.iter().any(
        |t| matches!(t, Token::Whitespace(Whitespace::MultiLineComment(c)) if c.contains("/*")),
    );
    if nested {
        return Err(refused("a comment inside a comment (DuckDB nests them; the check would read another statement than DuckDB runs)"));
    }
    Ok(())
}

/// DataFusion: `sql` as DataFusion's parser reads it is one query that only reads.
pub fn datafusion_statement(sql: &str) -> Result<(), QueryError> {
    use deltalake::datafusion::sql::parser::{DFParser, Statement as DfStatement};
    use deltalake::datafusion::sql::sqlparser::dialect::GenericDialect;
    let parsed = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})
        .map_err(|e| QueryError::Sql(format!("cannot parse the query: {e}")))?;
    let mut statements = Vec::new();
    for s in parsed {
        match s {
            DfStatement::Statement(s) => statements.push(*s),
            other => {
                return Err(not_a_query(&other));
            }
        }
    }
    one_query(&statements)
}

/// DataFusion: the plan writes and changes nothing, and scans only `tables` and the allowed
/// table functions (subqueries included).
pub fn datafusion_plan(plan: &LogicalPlan, tables: &BTreeSet<String>) -> Result<(), QueryError> {
    let mut bad = None;
    let _ = plan.apply_with_subqueries(|p| {
        match p {
            LogicalPlan::Dml(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Statement(_) => {
                bad = Some(refused(format!(
                    "the API is read-only: the plan holds a {}",
                    p.display()
                )));
            }
            LogicalPlan::TableScan(scan) => {
                // A table function's scan is named `f()` (or `f` beside a LATERAL).
                let name = scan
                    .table_name
                    .table()
                    .trim_end_matches("()")
                    .to_ascii_lowercase();
                if !tables.contains(&name) && !TABLE_FUNCTIONS.contains(&name.as_str()) {
                    bad = Some(not_listed(&name));
                }
            }
            _ => {}
        }
        Ok(if bad.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    bad.map_or(Ok(()), Err)
}

/// DuckDB's physical operators that only read or compute (its `PhysicalOperatorType` names,
/// less those that write, change the catalog or settings, or run other statements). A table
/// function's scan is named after the function instead.
pub const DUCKDB_OPERATORS: [&str; 44] = [
    "SEQ_SCAN", "TABLE_SCAN", "DUMMY_SCAN", "CHUNK_SCAN", "COLUMN_DATA_SCAN", "DELIM_SCAN", "EXPRESSION_SCAN", "POSITIONAL_SCAN", "CTE_SCAN",
    "REC_CTE_SCAN", "REC_REC_CTE_SCAN", "EMPTY_RESULT", "PROJECTION", "FILTER", "ORDER_BY", "TOP_N", "LIMIT", "LIMIT_PERCENT",
    "STREAMING_LIMIT", "RESERVOIR_SAMPLE", "STREAMING_SAMPLE", "WINDOW", "STREAMING_WINDOW", "UNNEST", "UNGROUPED_AGGREGATE",
    "HASH_GROUP_BY", "PERFECT_HASH_GROUP_BY", "PARTITIONED_AGGREGATE", "HASH_JOIN", "NESTED_LOOP_JOIN", "BLOCKWISE_NL_JOIN",
    "PIECEWISE_MERGE_JOIN", "IE_JOIN", "ASOF_JOIN", "CROSS_PRODUCT", "POSITIONAL_JOIN", "LEFT_DELIM_JOIN", "RIGHT_DELIM_JOIN",
    "UNION", "CTE", "REC_CTE", "REC_KEY_CTE", "INOUT_FUNCTION", "RESULT_COLLECTOR",
];

/// DuckDB: the plan that `EXPLAIN (FORMAT JSON)` gives scans only `tables` (the copies of the
/// lake's tables and of the table functions' results) and the allowed table functions.
///
/// It fails closed: every operator must be one that only reads ([`DUCKDB_OPERATORS`]), or the
/// scan of a table function it names (checked against the list above).
pub fn duckdb_plan(json: &str, tables: &BTreeSet<String>) -> Result<(), QueryError> {
    fn walk(node: &serde_json::Value, tables: &BTreeSet<String>) -> Result<(), QueryError> {
        if let Some(nodes) = node.as_array() {
            return nodes.iter().try_for_each(|n| walk(n, tables));
        }
        let info = &node["extra_info"];
        let operator = node["name"].as_str().map(|n| n.trim().to_ascii_uppercase()).unwrap_or_default();
        let function_scan = info["Function"].as_str().is_some_and(|f| f.trim().eq_ignore_ascii_case(&operator));
        if !function_scan && !DUCKDB_OPERATORS.contains(&operator.as_str()) {
            return Err(refused(format!("DuckDB plans an operator this check does not know (`{operator}`): only reading operators run here")));
        }
        // A table function's scan names it under "Function"; an in-out table function (one
        // fed by rows, as `unnest` in a lateral join) under "Name". Any other value there
        // (a list, say) is not one this check can read: refused.
        let in_out = node["name"]
            .as_str()
            .is_some_and(|n| n.trim() == "INOUT_FUNCTION");
        for key in ["Function", "Name"]
            .into_iter()
            .filter(|k| *k == "Function" || in_out)
        {
            let value = &info[key];
            if value.is_null() {
                continue;
            }
            let name = value
                .as_str()
                .map(|f| f.trim().to_ascii_lowercase())
                .unwrap_or_else(|| value.to_string());
            // The lake scan reads only the tables this query loaded (see `duck::scan`).
            if !TABLE_FUNCTIONS.contains(&name.as_str()) && name != super::duck::scan::FUNCTION {
                return Err(not_listed(&name));
            }
        }
        if let Some(table) = info["Table"].as_str() {
            // DuckDB names a table with its catalog and schema: the copies are in `memory.main`.
            let name = table.trim().to_ascii_lowercase();
            let name = name.strip_prefix("memory.main.").unwrap_or(&name);
            // A name DuckDB quotes (`"my-topic"`) is the name inside the quotes.
            let name = match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
                Some(quoted) => quoted.replace("\"\"", "\""),
                None => name.to_string(),
            };
            if !tables.contains(&name) {
                return Err(not_listed(&name));
            }
        }
        node["children"].as_array().map_or(Ok(()), |children| {
            children.iter().try_for_each(|c| walk(c, tables))
        })
    }
    let plan: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| QueryError::Engine(format!("DuckDB's plan is not the JSON expected: {e}")))?;
    walk(&plan, tables)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::datafusion::sql::sqlparser::dialect::DuckDbDialect;
    use deltalake::datafusion::sql::sqlparser::parser::Parser;

    #[test]
    fn one_reading_query() {
        for ok in [
            "SELECT 1",
            "WITH x AS (SELECT * FROM t) SELECT count(*) FROM x",
            "SELECT * FROM changes('t', 1)",
            "VALUES (1)",
        ] {
            assert!(datafusion_statement(ok).is_ok(), "{ok}");
        }
        for bad in [
            "INSERT INTO t VALUES (1)",
            "SELECT 1; SELECT 2",
            "WITH a AS (SELECT 1) DELETE FROM t",
            "COPY t TO 'x.csv'",
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "SET x = 1",
            "SELECT current_setting('temp_directory')",
            "SELECT \"CURRENT_SETTING\"('x')",
            "SELECT 1 WHERE getenv('HOME') IS NOT NULL",
            "SELECT * FROM read_parquet('/etc/hosts')",
            "SELECT * FROM t JOIN \"Read_CSV\"('x') ON true",
        ] {
            let e = datafusion_statement(bad).unwrap_err().to_string();
            assert!(e.contains("not allowed"), "{bad}: {e}");
        }
        let duck = Parser::parse_sql(
            &DuckDbDialect {},
            "SELECT (SELECT current_setting('memory_limit'))",
        )
        .unwrap();
        assert!(one_query(&duck).is_err());
    }

    #[test]
    fn duckdb_plans_scan_only_the_lake_and_the_generators() {
        let tables: BTreeSet<String> = ["t".to_string()].into();
        let scan = |key: &str, name: &str| {
            format!(
                r#"[{{"name":"PROJECTION","children":[{{"name":"{}","children":[],"extra_info":{{"{key}":"{name}"}}}}],"extra_info":{{}}}}]"#,
                if key == "Table" { "SEQ_SCAN" } else { name }
            )
        };
        assert!(duckdb_plan(&scan("Table", "t"), &tables).is_ok());
        assert!(duckdb_plan(&scan("Table", "memory.main.t"), &tables).is_ok());
        let quoted: BTreeSet<String> = ["my-topic".to_string()].into();
        let plan = r#"[{"name":"SEQ_SCAN","children":[],"extra_info":{"Table":"memory.main.\"My-Topic\""}}]"#;
        assert!(duckdb_plan(plan, &quoted).is_ok());
        let in_out = |name: &str| {
            format!(
                r#"[{{"name":"INOUT_FUNCTION","children":[],"extra_info":{{"Name":"{name}"}}}}]"#
            )
        };
        assert!(duckdb_plan(&in_out("UNNEST"), &tables).is_ok());
        assert!(duckdb_plan(&in_out("SUMMARY"), &tables).is_err());
        let listed =
            r#"[{"name":"READ_CSV","children":[],"extra_info":{"Function":["READ_CSV","x"]}}]"#;
        assert!(
            duckdb_plan(listed, &tables).is_err(),
            "a value this check cannot read is refused"
        );
        assert!(no_nested_comments("SELECT 1 /* a */ AS x").is_ok());
        assert!(no_nested_comments(
            r#"SELECT 1 AS a /* /* */, 2 AS "*/, current_setting('x') AS v --""#
        )
        .is_err());
        assert!(duckdb_plan(&scan("Function", "GENERATE_SERIES"), &tables).is_ok());
        assert!(duckdb_plan(&scan("Function", "LAKEPIPE_SCAN"), &tables).is_ok());
        // Fail closed: an operator that writes, or one this check does not know, is refused.
        for operator in ["COPY_TO_FILE", "INSERT", "EXPLAIN_ANALYZE", "SOMETHING_NEW"] {
            let plan = format!(r#"[{{"name":"{operator}","children":[],"extra_info":{{}}}}]"#);
            let e = duckdb_plan(&plan, &tables).unwrap_err().to_string();
            assert!(e.contains("not allowed") && e.contains(operator), "{e}");
        }
        for (key, name) in [
            ("Function", "DUCKDB_SETTINGS"),
            ("Function", "READ_CSV"),
            ("Table", "secret_table"),
            ("Table", "system.main.t"),
        ] {
            let e = duckdb_plan(&scan(key, name), &tables)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("not allowed") && e.contains(&name.to_ascii_lowercase()),
                "{e}"
            );
        }
    }
}
