//! A query's result as a response body (JSON, CSV or an Arrow IPC stream), cut at the first
//! `max_result_rows` rows and at `max_result_bytes` bytes of body, whichever comes first.
//!
//! The body is built in chunks of rows, each encoded on its own and appended only if it still
//! fits; the chunk that does not fit is halved until its longest fitting prefix is found. So
//! the body never exceeds the limit, it ends at a whole row, and no more than one chunk is
//! encoded beyond what is sent.

use std::sync::Arc;

use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;

use crate::query::{format, Format, QueryError};

/// Rows encoded at a time.
const CHUNK: usize = 1024;

/// The body formats of `POST /query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One JSON array of row objects.
    Json,
    /// CSV with a header row.
    Csv,
    /// An Arrow IPC stream.
    Arrow,
}

impl BodyFormat {
    /// The format a request names (`json` when it names none).
    pub fn parse(name: Option<&str>) -> Result<Self, String> {
        match name.unwrap_or("json") {
            "json" => Ok(BodyFormat::Json),
            "csv" => Ok(BodyFormat::Csv),
            "arrow" => Ok(BodyFormat::Arrow),
            other => Err(format!("unknown format `{other}`: use json, csv or arrow")),
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            BodyFormat::Json => "application/json",
            BodyFormat::Csv => "text/csv",
            BodyFormat::Arrow => "application/vnd.apache.arrow.stream",
        }
    }
}

/// An encoded result.
#[derive(Debug)]
pub struct Body {
    /// The bytes to send.
    pub bytes: Vec<u8>,
    /// Rows in the body.
    pub rows: usize,
    /// Why the body holds fewer rows than the result, if it does (`x-lakepipe-truncated`).
    pub truncated: Option<String>,
}

/// One format's pieces: what opens the body, one chunk's rows, and what closes it.
struct Encoder {
    format: BodyFormat,
    schema: Arc<Schema>,
    /// The body of zero rows, split where rows go.
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl Encoder {
    fn new(format: BodyFormat, schema: Arc<Schema>) -> Result<Self, QueryError> {
        let (head, tail) = match format {
            BodyFormat::Json => (b"[".to_vec(), b"]".to_vec()),
            BodyFormat::Csv => (
                crate::query::format(&schema, &[], Format::Csv)?.into_bytes(),
                Vec::new(),
            ),
            BodyFormat::Arrow => {
                let empty = arrow_stream(&schema, &[])?;
                // A stream ends with an 8-byte end-of-stream marker after its schema message.
                let split = empty.len().saturating_sub(8);
                (empty[..split].to_vec(), empty[split..].to_vec())
            }
        };
        Ok(Encoder {
            format,
            schema,
            head,
            tail,
        })
    }

    /// The bytes of `rows` that go between the head and the tail; `first` when no rows
    /// precede them.
    fn rows(&self, rows: &RecordBatch, first: bool) -> Result<Vec<u8>, QueryError> {
        let batch = std::slice::from_ref(rows);
        Ok(match self.format {
            BodyFormat::Json => {
                let text = format(&self.schema, batch, Format::Json)?;
                let inner = text.trim().trim_start_matches('[').trim_end_matches(']');
                if first || inner.is_empty() {
                    inner.as_bytes().to_vec()
                } else {
                    [b",", inner.as_bytes()].concat()
                }
            }
            BodyFormat::Csv => {
                let text = format(&self.schema, batch, Format::Csv)?.into_bytes();
                text[self.head.len().min(text.len())..].to_vec()
            }
            // Each chunk carries its own dictionaries, which replace the previous ones: a
            // valid IPC stream.
            BodyFormat::Arrow => {
                let stream = arrow_stream(&self.schema, batch)?;
                stream[self.head.len().min(stream.len())
                    ..stream.len().saturating_sub(self.tail.len())]
                    .to_vec()
            }
        })
    }
}

fn arrow_stream(schema: &Arc<Schema>, batches: &[RecordBatch]) -> Result<Vec<u8>, QueryError> {
    let mut buf = Vec::new();
    let written = (|| {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, schema)?;
        for b in batches {
            w.write(b)?;
        }
        w.finish()
    })();
    written.map_err(|e| QueryError::Format(e.to_string()))?;
    Ok(buf)
}

/// Encode the first `max_rows` rows of `batches`, stopping at the last whole row that keeps
/// the body within `max_bytes`.
pub fn encode(
    schema: &Arc<Schema>,
    batches: &[RecordBatch],
    format: BodyFormat,
    max_rows: usize,
    max_bytes: usize,
) -> Result<Body, QueryError> {
    let encoder = Encoder::new(format, schema.clone())?;
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut out = encoder.head.clone();
    let budget = max_bytes.saturating_sub(encoder.tail.len());
    let mut rows = 0;
    let mut full = false;
    'batches: for batch in batches {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let n = CHUNK.min(batch.num_rows() - offset).min(max_rows - rows);
            if n == 0 {
                break 'batches;
            }
            let chunk = batch.slice(offset, n);
            let left = budget.saturating_sub(out.len());
            // The most rows of the chunk that fit: `lo` rows do (encoded as `best`); `hi` rows
            // do not (`n + 1`: not known). The whole chunk first, when its Arrow size suggests
            // it may fit; else (rows of megabytes each) grown from one row, so that the work
            // stays in proportion to the body, not to the chunk.
            let (mut lo, mut hi, mut best) = (0, n + 1, Vec::new());
            if chunk.get_array_memory_size() <= left {
                let bytes = encoder.rows(&chunk, rows == 0)?;
                if bytes.len() <= left {
                    (lo, best) = (n, bytes);
                } else {
                    hi = n;
                }
            }
            let mut probe = 1;
            while lo < n && probe < hi {
                let bytes = encoder.rows(&chunk.slice(0, probe), rows == 0)?;
                if bytes.len() > left {
                    hi = probe;
                } else {
                    (lo, best) = (probe, bytes);
                    probe = (probe * 2).min(n);
                }
            }
            while lo < n && hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                let bytes = encoder.rows(&chunk.slice(0, mid), rows == 0)?;
                if bytes.len() <= left {
                    (lo, best) = (mid, bytes);
                } else {
                    hi = mid;
                }
            }
            if lo == n {
                out.extend_from_slice(&best);
                rows += n;
                offset += n;
                continue;
            }
            out.extend_from_slice(&best);
            rows += lo;
            full = true;
            break 'batches;
        }
    }
    out.extend_from_slice(&encoder.tail);
    let truncated = if full {
        Some(format!(
            "first {rows} rows (max_result_bytes: {max_bytes} bytes)"
        ))
    } else if total > rows {
        Some(format!("first {rows} rows"))
    } else {
        None
    };
    Ok(Body {
        bytes: out,
        rows,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};

    fn batches() -> (Arc<Schema>, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let make = |from: i64, n: i64| {
            let ids: Vec<i64> = (from..from + n).collect();
            let texts: Vec<Option<String>> = ids
                .iter()
                .map(|i| (i % 7 != 0).then(|| format!("row \"{i}\",\n")))
                .collect();
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(ids)),
                    Arc::new(StringArray::from(texts)),
                ],
            )
            .unwrap()
        };
        (
            schema.clone(),
            vec![make(0, 1500), make(1500, 10), make(1510, 2600)],
        )
    }

    /// Whole: the body is what `format` gives for the whole result, in every format, and the
    /// Arrow stream reads back; cut: each body is within the limit, ends at a row, holds the
    /// most rows that fit, and parses.
    #[test]
    fn bodies_are_whole_or_cut_at_a_row_within_the_limit() {
        let (schema, batches) = batches();
        let total = 4110;
        for f in [BodyFormat::Json, BodyFormat::Csv, BodyFormat::Arrow] {
            let whole = encode(&schema, &batches, f, usize::MAX, usize::MAX).unwrap();
            assert_eq!(
                (whole.rows, whole.truncated.as_deref()),
                (total, None),
                "{f:?}"
            );
            match f {
                BodyFormat::Json => assert_eq!(
                    whole.bytes,
                    format(&schema, &batches, Format::Json)
                        .unwrap()
                        .trim()
                        .as_bytes()
                ),
                BodyFormat::Csv => assert_eq!(
                    whole.bytes,
                    format(&schema, &batches, Format::Csv).unwrap().as_bytes()
                ),
                BodyFormat::Arrow => assert_eq!(read_arrow(&whole.bytes), total),
            }
            let by_rows = encode(&schema, &batches, f, 1600, usize::MAX).unwrap();
            assert_eq!(
                (by_rows.rows, by_rows.truncated.as_deref()),
                (1600, Some("first 1600 rows")),
                "{f:?}"
            );
            for limit in [0, 40, 1000, 20_000, whole.bytes.len() - 1] {
                let cut = encode(&schema, &batches, f, usize::MAX, limit).unwrap();
                assert!(
                    cut.bytes.len() <= limit.max(empty_len(&schema, f)),
                    "{f:?} at {limit}: {} bytes",
                    cut.bytes.len()
                );
                assert!(
                    cut.truncated
                        .as_deref()
                        .is_some_and(|t| t.contains("max_result_bytes")),
                    "{f:?} at {limit}"
                );
                let one_more = encode(&schema, &batches, f, cut.rows + 1, usize::MAX).unwrap();
                assert!(
                    one_more.bytes.len() > limit,
                    "{f:?} at {limit}: {} rows fit, one more would too",
                    cut.rows
                );
                let rows = match f {
                    BodyFormat::Json => {
                        serde_json::from_slice::<Vec<serde_json::Value>>(&cut.bytes)
                            .unwrap()
                            .len()
                    }
                    BodyFormat::Csv => arrow::csv::ReaderBuilder::new(schema.clone())
                        .with_header(true)
                        .build(&cut.bytes[..])
                        .unwrap()
                        .map(|b| b.unwrap().num_rows())
                        .sum(),
                    BodyFormat::Arrow => read_arrow(&cut.bytes),
                };
                assert_eq!(rows, cut.rows, "{f:?} at {limit}");
            }
        }
    }

    fn empty_len(schema: &Arc<Schema>, f: BodyFormat) -> usize {
        encode(schema, &[], f, 0, usize::MAX).unwrap().bytes.len()
    }

    fn read_arrow(bytes: &[u8]) -> usize {
        let reader = arrow::ipc::reader::StreamReader::try_new(bytes, None).unwrap();
        reader.map(|b| b.unwrap().num_rows()).sum()
    }
}
