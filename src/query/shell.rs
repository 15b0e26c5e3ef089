//! The interactive SQL shell of `lakepipe sql` (no query given): line editing, history in
//! `~/.lakepipe_history`, statements ending in `;`, and a few backslash commands.

use rustyline::error::ReadlineError;

use super::{execute, format, list_tables, Engine, Format, Request};
use crate::lake::Lake;

const HELP: &str = "Statements end with ';'. Commands: \\d (tables), \\d TABLE (its columns), \\f table|csv|json (output format), \\e datafusion|duckdb (engine), \\q (quit).\n\
Table functions: as_of('t', version | TIMESTAMP '…'), history('t'), changes('t', from[, to]), freshness().";

/// Run the shell until `\q` or end of input.
pub async fn run_shell(lake: &Lake, mut fmt: Format, mut engine: Engine) -> Result<(), super::QueryError> {
    let mut editor = rustyline::DefaultEditor::new().map_err(|e| super::QueryError::Format(e.to_string()))?;
    let history = std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".lakepipe_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!("lakepipe SQL over {} — {HELP}", lake.root());
    let mut buffer = String::new();
    loop {
        let prompt = match (buffer.is_empty(), engine) {
            (true, Engine::Datafusion) => "lakepipe> ",
            (true, Engine::Duckdb) => "lakepipe[duckdb]> ",
            (false, _) => "     ...> ",
        };
        let line = match editor.readline(prompt) {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(_) => break,
        };
        let trimmed = line.trim();
        if buffer.is_empty() && trimmed.starts_with('\\') {
            let _ = editor.add_history_entry(trimmed);
            let mut parts = trimmed.split_whitespace();
            match parts.next() {
                Some("\\q") => break,
                Some("\\d") => match parts.next() {
                    Some(table) => run_and_print(lake, &format!("DESCRIBE \"{}\"", table.replace('"', "")), engine, fmt).await,
                    None => match list_tables(lake).await {
                        Ok(t) => println!("{}", t.join("\n")),
                        Err(e) => eprintln!("error: {e}"),
                    },
                },
                Some("\\f") => match parts.next() {
                    Some("table") => fmt = Format::Table,
                    Some("csv") => fmt = Format::Csv,
                    Some("json") => fmt = Format::Json,
                    _ => eprintln!("usage: \\f table|csv|json"),
                },
                Some("\\e") => match parts.next().map(str::parse::<Engine>) {
                    Some(Ok(e)) => engine = e,
                    Some(Err(reason)) => eprintln!("{reason}"),
                    None => println!("engine: {engine:?}"),
                },
                _ => println!("{HELP}"),
            }
            continue;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if !trimmed.ends_with(';') {
            continue;
        }
        let sql = std::mem::take(&mut buffer);
        let _ = editor.add_history_entry(sql.trim());
        run_and_print(lake, &sql, engine, fmt).await;
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}

/// Run one statement and print its result (or its error) with the row count and the time.
async fn run_and_print(lake: &Lake, sql: &str, engine: Engine, fmt: Format) {
    let started = std::time::Instant::now();
    match execute(lake, &Request { sql, engine, read_only: true, ..Default::default() }).await {
        Ok((schema, batches)) => match format(&schema, &batches, fmt) {
            Ok(text) => {
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                println!("{text}\n({rows} rows in {:.3} s)", started.elapsed().as_secs_f64());
            }
            Err(e) => eprintln!("error: {e}"),
        },
        Err(e) => eprintln!("error: {e}"),
    }
}
