//! The read-only check of `POST /query`: one `SELECT`/`WITH` query that reads no file.

use deltalake::datafusion::sql::sqlparser::ast::{visit_relations, Statement};
use deltalake::datafusion::sql::sqlparser::dialect::GenericDialect;
use deltalake::datafusion::sql::sqlparser::parser::Parser;

/// Table functions that read files, URLs or the environment: refused by the read-only API.
/// (The DuckDB engine also runs with external access disabled, so one missing here still fails.)
const FILE_READERS: [&str; 25] = [
    "read_parquet", "parquet_scan", "parquet_metadata", "parquet_schema", "parquet_file_metadata", "parquet_kv_metadata",
    "read_csv", "read_csv_auto", "sniff_csv", "read_json", "read_json_auto", "read_json_objects", "read_ndjson",
    "read_ndjson_auto", "read_ndjson_objects", "read_text", "read_blob", "read_xlsx", "delta_scan", "iceberg_scan",
    "glob", "query_table", "getenv", "duckdb_secrets", "duckdb_settings",
];

/// Check that `sql` is one read-only query. Returns the reason when it is not.
pub fn check_read_only(sql: &str) -> Result<(), String> {
    // Before anything parses it: a deep expression would overflow the parser's callers.
    crate::query::depth::check(sql).map_err(|e| e.to_string())?;
    let statements = Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| format!("cannot parse the query: {e}"))?;
    let [statement] = statements.as_slice() else {
        return Err(format!("send exactly one statement (got {})", statements.len()));
    };
    let Statement::Query(query) = statement else {
        let kind = statement.to_string().split_whitespace().next().unwrap_or("this").to_ascii_uppercase();
        return Err(format!("the API is read-only: {kind} statements are not allowed; only SELECT and WITH queries are"));
    };
    // `WITH … INSERT/UPDATE/DELETE/MERGE` parses as a query too: only reading bodies pass.
    use deltalake::datafusion::sql::sqlparser::ast::SetExpr;
    fn reads_only(body: &SetExpr) -> bool {
        match body {
            SetExpr::Select(_) | SetExpr::Values(_) | SetExpr::Table(_) => true,
            SetExpr::Query(q) => reads_only(&q.body),
            SetExpr::SetOperation { left, right, .. } => reads_only(left) && reads_only(right),
            _ => false,
        }
    }
    let ctes_read_only = query.with.as_ref().is_none_or(|w| w.cte_tables.iter().all(|c| reads_only(&c.query.body)));
    if !reads_only(&query.body) || !ctes_read_only {
        return Err("the API is read-only: only SELECT and WITH … SELECT queries are allowed".into());
    }
    let mut bad = None;
    let _ = visit_relations(statement, |name| {
        let n = name.to_string().to_ascii_lowercase();
        if FILE_READERS.contains(&n.as_str()) || n.contains('/') || n.contains("://") {
            bad = Some(n);
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    // Table functions appear as relations with arguments; also scan the text for file readers.
    let lower = sql.to_ascii_lowercase();
    if bad.is_none() {
        bad = FILE_READERS.iter().find(|f| lower.contains(&format!("{f}("))).map(|f| f.to_string());
    }
    match bad {
        Some(f) => Err(format!("the API is read-only: reading files (`{f}`) is not allowed; query the lake's tables by name")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_guard() {
        assert!(check_read_only("SELECT 1").is_ok());
        assert!(check_read_only("WITH x AS (SELECT * FROM transactions) SELECT count(*) FROM x").is_ok());
        assert!(check_read_only("SELECT * FROM changes('transactions', 1)").is_ok());
        for bad in [
            "INSERT INTO transactions VALUES (1)",
            "UPDATE transactions SET status = 'x'",
            "DELETE FROM transactions",
            "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE",
            "CREATE TABLE x (a INT)",
            "DROP TABLE transactions",
            "ALTER TABLE transactions ADD COLUMN x INT",
            "COPY transactions TO 'out.csv'",
            "ATTACH 'file.db'",
            "INSTALL httpfs",
            "LOAD httpfs",
            "PRAGMA version",
            "SET x = 1",
            "SELECT * FROM read_parquet('/etc/passwd')",
            "SELECT * FROM read_csv_auto('x.csv')",
            "SELECT 1; SELECT 2",
            "WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a",
            "WITH a AS (SELECT 1) DELETE FROM t",
        ] {
            assert!(check_read_only(bad).is_err(), "{bad} must be refused");
        }
    }
}
