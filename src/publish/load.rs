//! File loads: NDJSON, JSON arrays and CSV, validated record by record against the topic's spec
//! before anything is produced. An invalid record is reported with its file and line and
//! skipped; every valid one is published (through the router), none is dropped.
//!
//! CSV cells are typed by the spec (numbers, booleans, timestamps) so that a CSV row and the
//! same row as JSON become the same record; an empty cell is a missing value.

use std::path::{Path, PathBuf};

use serde_json::value::RawValue;
use serde_json::Value;

use super::Message;
use crate::decode::Decoder;
use crate::spec::{FieldType, TopicSpec};

/// File formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FileFormat {
    /// From the extension (`.csv`; `.json` holding an array; otherwise one JSON object a line).
    Auto,
    /// One JSON object per line.
    Ndjson,
    /// One JSON array of objects.
    Json,
    /// CSV with a header row.
    Csv,
}

/// A record that failed validation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rejected {
    /// The file.
    pub file: String,
    /// 1-based line (for CSV: of the row; for arrays: where the element starts).
    pub line: u64,
    /// 0-based index of the record in the file (what the HTTP ingest reports).
    pub index: usize,
    /// Why.
    pub error: String,
}

/// The valid records of a file (as messages) and the rejected ones.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Valid records, keyed by their record key.
    pub messages: Vec<Message>,
    /// Invalid records.
    pub rejected: Vec<Rejected>,
}

/// Errors that stop reading a file (as opposed to a bad record in it).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Line numbers of byte positions that only move forward: counts each byte once.
struct Lines<'a> {
    text: &'a [u8],
    pos: usize,
    line: u64,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Lines { text: text.as_bytes(), pos: 0, line: 1 }
    }

    fn at(&mut self, byte: usize) -> u64 {
        let byte = byte.min(self.text.len());
        if byte < self.pos {
            self.pos = 0;
            self.line = 1;
        }
        self.line += self.text[self.pos..byte].iter().filter(|b| **b == b'\n').count() as u64;
        self.pos = byte;
        self.line
    }
}

/// Validate `payload` (JSON text) and turn it into a message keyed by its record key.
fn check(decoder: &Decoder, payload: &str) -> Result<Message, String> {
    let record = decoder.decode(None, Some(payload.as_bytes()), 0, 0).map_err(|e| e.to_string())?;
    Ok((Some(record.key.into_bytes()), Some(payload.as_bytes().to_vec())))
}

/// Parse records of `text` in `format` (not `Auto`), validating each.
pub fn parse_text(text: &str, format: FileFormat, spec: &TopicSpec, decoder: &Decoder, file: &str) -> Parsed {
    let mut out = Parsed::default();
    let push = |out: &mut Parsed, index: usize, line: u64, result: Result<Message, String>| match result {
        Ok(m) => out.messages.push(m),
        Err(error) => out.rejected.push(Rejected { file: file.to_string(), line, index, error }),
    };
    match format {
        FileFormat::Ndjson | FileFormat::Auto => {
            let mut index = 0;
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                push(&mut out, index, i as u64 + 1, check(decoder, line.trim()));
                index += 1;
            }
        }
        FileFormat::Json => {
            let mut lines = Lines::new(text);
            let start = text.find(|c: char| !c.is_whitespace()).unwrap_or(text.len());
            if !text[start..].starts_with('[') {
                let line = lines.at(start);
                push(&mut out, 0, line, Err("malformed_json: a JSON file must hold one array of records".into()));
                return out;
            }
            let mut pos = start + 1;
            let mut index = 0;
            let skip_ws = |pos: usize| pos + text[pos..].find(|c: char| !c.is_whitespace()).unwrap_or(text.len() - pos);
            loop {
                pos = skip_ws(pos);
                // After an element: `,` then the next element, or `]` and nothing but whitespace.
                if index > 0 {
                    match text[pos..].chars().next() {
                        Some(',') => pos = skip_ws(pos + 1),
                        Some(']') => {
                            let end = skip_ws(pos + 1);
                            if end < text.len() {
                                let line = lines.at(end);
                                push(&mut out, index, line, Err("malformed_json: text after the end of the array".into()));
                            }
                            break;
                        }
                        _ => {
                            let line = lines.at(pos);
                            push(&mut out, index, line, Err("malformed_json: expected `,` or `]` after a record; the rest of the array is not read".into()));
                            break;
                        }
                    }
                } else if text[pos..].starts_with(']') {
                    break;
                }
                if pos >= text.len() {
                    let line = lines.at(pos);
                    push(&mut out, index, line, Err("malformed_json: the array is not closed".into()));
                    break;
                }
                let mut stream = serde_json::Deserializer::from_str(&text[pos..]).into_iter::<&RawValue>();
                let line = lines.at(pos);
                match stream.next() {
                    Some(Ok(raw)) => {
                        push(&mut out, index, line, check(decoder, raw.get()));
                        pos += stream.byte_offset();
                        index += 1;
                    }
                    Some(Err(e)) => {
                        // The elements after a malformed one cannot be delimited.
                        push(&mut out, index, line + e.line() as u64 - 1, Err(format!("malformed_json: {e}; the rest of the array is not read")));
                        break;
                    }
                    None => break,
                }
            }
        }
        FileFormat::Csv => parse_csv(text, spec, decoder, &mut out, file),
    }
    out
}

/// A CSV cell as the JSON text the spec expects. Numbers keep their exact text (a decimal such
/// as `1234567890123456.78` must not pass through a float).
fn cell_json(kind: &FieldType, cell: &str) -> String {
    let text = || Value::String(cell.to_string()).to_string();
    let number = || if serde_json::from_str::<serde_json::Number>(cell).is_ok() { cell.to_string() } else { text() };
    match kind {
        FieldType::Long { .. } | FieldType::Double { .. } | FieldType::Decimal { .. } => number(),
        FieldType::Boolean => match cell.to_ascii_lowercase().as_str() {
            "true" | "t" | "1" | "yes" => "true".into(),
            "false" | "f" | "0" | "no" => "false".into(),
            _ => text(),
        },
        // Epoch milliseconds stay numbers; RFC 3339 text stays text.
        FieldType::Timestamp if !cell.is_empty() && cell.bytes().all(|b| b.is_ascii_digit()) && cell.len() < 17 => cell.to_string(),
        FieldType::Json { .. } => serde_json::from_str::<Value>(cell).map(|v| v.to_string()).unwrap_or_else(|_| text()),
        _ => text(),
    }
}

fn parse_csv(text: &str, spec: &TopicSpec, decoder: &Decoder, out: &mut Parsed, file: &str) {
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(text.as_bytes());
    let headers: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(|s| s.trim().to_string()).collect(),
        Err(e) => {
            out.rejected.push(Rejected { file: file.to_string(), line: 1, index: 0, error: format!("malformed_csv: {e}") });
            return;
        }
    };
    for (index, row) in reader.records().enumerate() {
        let line = row.as_ref().ok().and_then(|r| r.position()).map(|p| p.line()).unwrap_or(index as u64 + 2);
        let result = row.map_err(|e| format!("malformed_csv: {e}")).and_then(|row| {
            let mut parts = Vec::new();
            for (name, cell) in headers.iter().zip(row.iter()) {
                if cell.is_empty() {
                    continue;
                }
                let value = match spec.fields.iter().find(|f| &f.name == name) {
                    Some(f) => cell_json(&f.kind, cell),
                    None if name == "_deleted" => cell_json(&FieldType::Boolean, cell),
                    None => Value::String(cell.to_string()).to_string(),
                };
                parts.push(format!("{}:{value}", Value::String(name.clone())));
            }
            check(decoder, &format!("{{{}}}", parts.join(",")))
        });
        match result {
            Ok(m) => out.messages.push(m),
            Err(error) => out.rejected.push(Rejected { file: file.to_string(), line, index, error }),
        }
    }
}

/// The format of `path` under `format`.
pub fn resolve_format(path: &Path, text: &str, format: FileFormat) -> FileFormat {
    if format != FileFormat::Auto {
        return format;
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    match ext.as_str() {
        "csv" => FileFormat::Csv,
        _ if text.trim_start().starts_with('[') => FileFormat::Json,
        _ => FileFormat::Ndjson,
    }
}

/// Read and validate one file.
pub fn parse_file(path: &PathBuf, format: FileFormat, spec: &TopicSpec, decoder: &Decoder) -> Result<Parsed, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::Read { path: path.display().to_string(), reason: e.to_string() })?;
    let format = resolve_format(path, &text, format);
    Ok(parse_text(&text, format, spec, decoder, &path.display().to_string()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::spec::builtin_specs;

    fn txn_decoder() -> (TopicSpec, Decoder) {
        let spec = builtin_specs()["transactions"].clone();
        (spec.clone(), Decoder::new(spec, 1 << 20).unwrap())
    }

    const GOOD: &str = r#"{"transaction_id":"t1","user_id":"u1","amount":12.5,"currency":"EUR","status":"completed","timestamp":"2026-01-01T10:00:00Z"}"#;

    #[test]
    fn ndjson_reports_bad_lines_and_keeps_good_ones() {
        let (spec, d) = txn_decoder();
        let text = format!("{GOOD}\n\n{{not json\n{}\n", GOOD.replace("12.5", "\"x\""));
        let p = parse_text(&text, FileFormat::Ndjson, &spec, &d, "f.ndjson");
        assert_eq!(p.messages.len(), 1);
        assert_eq!(p.messages[0].0.as_deref(), Some(&b"t1"[..]));
        let lines: Vec<(u64, usize)> = p.rejected.iter().map(|r| (r.line, r.index)).collect();
        assert_eq!(lines, vec![(3, 1), (4, 2)]);
        assert!(p.rejected[1].error.contains("amount"), "{:?}", p.rejected[1]);
    }

    #[test]
    fn json_arrays_give_element_lines() {
        let (spec, d) = txn_decoder();
        let text = format!("[\n  {GOOD},\n  {},\n  {}\n]\n", GOOD.replace("t1", "t2"), GOOD.replace("EUR", "EURO"));
        let p = parse_text(&text, FileFormat::Json, &spec, &d, "f.json");
        assert_eq!(p.messages.len(), 2, "{:?}", p.rejected);
        assert_eq!(p.rejected.len(), 1);
        assert_eq!((p.rejected[0].line, p.rejected[0].index), (4, 2));
        let broken = format!("[{GOOD},\n{{\"a\": ]");
        let p = parse_text(&broken, FileFormat::Json, &spec, &d, "f.json");
        assert_eq!((p.messages.len(), p.rejected.len(), p.rejected[0].line), (1, 1, 2));
    }

    #[test]
    fn csv_cells_are_typed_by_the_spec() {
        let (spec, d) = txn_decoder();
        let text = "transaction_id,user_id,amount,currency,status,timestamp\n\
                    t1,u1,12.50,EUR,completed,2026-01-01T10:00:00Z\n\
                    t2,u1,abc,EUR,completed,1767261600000\n\
                    \"t3\",\"u,2\",1,USD,pending,1767261600000\n";
        let p = parse_text(text, FileFormat::Csv, &spec, &d, "f.csv");
        assert_eq!(p.messages.len(), 2, "{:?}", p.rejected);
        assert_eq!((p.rejected[0].line, p.rejected[0].index), (3, 1));
        let payload: Value = serde_json::from_slice(p.messages[1].1.as_deref().unwrap()).unwrap();
        assert_eq!(payload["user_id"], "u,2");
        assert_eq!(payload["timestamp"], 1_767_261_600_000i64);
        let exact = "transaction_id,user_id,amount,currency,status,timestamp\nt9,u,1234567890123456.78,EUR,pending,1767261600000\n";
        let p = parse_text(exact, FileFormat::Csv, &spec, &d, "f.csv");
        let text = String::from_utf8(p.messages[0].1.clone().unwrap()).unwrap();
        assert!(text.contains("\"amount\":1234567890123456.78"), "decimals keep their text: {text}");
    }

    #[test]
    fn json_arrays_are_strict() {
        let (spec, d) = txn_decoder();
        for bad in [format!("[{GOOD} {GOOD}]"), format!("[{GOOD}]\n[{GOOD}]"), format!("[{GOOD},,{GOOD}]")] {
            let p = parse_text(&bad, FileFormat::Json, &spec, &d, "f.json");
            assert_eq!(p.rejected.len(), 1, "{bad}: {:?}", p.rejected);
        }
        let p = parse_text("[]", FileFormat::Json, &spec, &d, "f.json");
        assert!(p.messages.is_empty() && p.rejected.is_empty());
    }

    proptest! {
        /// Whatever the mix, every line is either published or reported, once.
        #[test]
        fn every_record_is_published_or_reported(kinds in proptest::collection::vec(0u8..4, 0..60)) {
            let (spec, d) = txn_decoder();
            let lines: Vec<String> = kinds.iter().enumerate().map(|(i, k)| match k {
                0 => GOOD.replace("t1", &format!("t{i}")),
                1 => "{broken".to_string(),
                2 => GOOD.replace("EUR", "EURO"),
                _ => GOOD.replace("t1", &format!("t{i}")).replace("12.5", "0.25"),
            }).collect();
            let p = parse_text(&lines.join("\n"), FileFormat::Ndjson, &spec, &d, "f");
            prop_assert_eq!(p.messages.len() + p.rejected.len(), kinds.len());
            let bad: Vec<u64> = kinds.iter().enumerate().filter(|(_, k)| **k == 1 || **k == 2).map(|(i, _)| i as u64 + 1).collect();
            prop_assert_eq!(p.rejected.iter().map(|r| r.line).collect::<Vec<_>>(), bad);
        }
    }
}
