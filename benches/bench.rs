//! Helpers for `scripts/bench.sh`: the benchmark data and the ingest ceiling.
//!
//! * `gen --count N --out FILE [--base B --update-ratio R --seed S]` writes `transactions`
//!   records of about 300 bytes as NDJSON. With `--base`, a share `R` of the records update keys
//!   `0..B` (written earlier) with newer timestamps, and the rest are new keys from `B` on.
//! * `ceiling FILE OUT` is the ingest ceiling: one core decodes the NDJSON with arrow-json and
//!   writes zstd Parquet; no broker, no Delta. Prints `{"records":…,"seconds":…}`.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use rand::{Rng, SeedableRng};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn num(args: &[String], name: &str, default: f64) -> f64 {
    arg(args, name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

const STATUSES: [&str; 4] = ["pending", "completed", "failed", "refunded"];
const CURRENCIES: [&str; 5] = ["EUR", "USD", "GBP", "JPY", "CHF"];
const METHODS: [&str; 4] = ["card", "paypal", "bank_transfer", "apple_pay"];
const MERCHANTS: [&str; 6] = ["acme-books", "north-coffee", "globex-travel", "initech-software", "umbrella-pharmacy", "stark-hardware"];

fn gen(args: &[String]) -> std::io::Result<()> {
    let count = num(args, "--count", 100_000.0) as u64;
    let base = num(args, "--base", 0.0) as u64;
    let ratio = num(args, "--update-ratio", 0.0);
    let seed = num(args, "--seed", 7.0) as u64;
    let out = arg(args, "--out").unwrap_or_else(|| "bench.ndjson".into());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut w = BufWriter::new(std::fs::File::create(&out)?);
    // Event times over the last 7 days; updates are newer than anything in the base file.
    let start_ms: i64 = 1_767_225_600_000; // 2026-01-01
    let mut next_new = base;
    let mut bytes = 0usize;
    for i in 0..count {
        let update = base > 0 && rng.gen::<f64>() < ratio;
        let (key, ts) = if update {
            // Mostly recent keys: real updates touch recent records.
            let back = (rng.gen::<f64>().powi(3) * base as f64) as u64;
            (base - 1 - back.min(base - 1), start_ms + 8 * 86_400_000 + i as i64)
        } else {
            let k = next_new;
            next_new += 1;
            (k, start_ms + (k as i64 * 7 * 86_400_000) / (base + count).max(1) as i64)
        };
        let ts = chrono::DateTime::from_timestamp_millis(ts).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)).unwrap_or_default();
        let line = format!(
            r#"{{"transaction_id":"txn-{key:010}","user_id":"user-{:07}","amount":{}.{:02},"currency":"{}","status":"{}","payment_method":"{}","merchant":"{}","timestamp":"{ts}","channel":"{}","note":"order {key} via checkout v2; gift wrap: no; coupon: none"}}"#,
            rng.gen_range(0..500_000),
            rng.gen_range(1..2_000),
            rng.gen_range(0..100),
            CURRENCIES[rng.gen_range(0..CURRENCIES.len())],
            if update { "completed" } else { STATUSES[rng.gen_range(0..STATUSES.len())] },
            METHODS[rng.gen_range(0..METHODS.len())],
            MERCHANTS[rng.gen_range(0..MERCHANTS.len())],
            if rng.gen_bool(0.5) { "web" } else { "mobile" },
        );
        bytes += line.len() + 1;
        writeln!(w, "{line}")?;
    }
    w.flush()?;
    println!("{{\"records\":{count},\"bytes\":{bytes},\"avg_bytes\":{}}}", bytes as u64 / count.max(1));
    Ok(())
}

fn ceiling(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let input = args.get(1).ok_or("usage: ceiling FILE OUT")?;
    let out = args.get(2).ok_or("usage: ceiling FILE OUT")?;
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("transaction_id", DataType::Utf8, false),
        Field::new("user_id", DataType::Utf8, false),
        Field::new("amount", DataType::Decimal128(38, 9), false),
        Field::new("currency", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("payment_method", DataType::Utf8, true),
        Field::new("merchant", DataType::Utf8, true),
        Field::new("timestamp", ts, false),
        Field::new("channel", DataType::Utf8, true),
        Field::new("note", DataType::Utf8, true),
    ]));
    let started = Instant::now();
    let reader = arrow::json::ReaderBuilder::new(schema.clone()).with_batch_size(65_536).build(BufReader::new(std::fs::File::open(input)?))?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(parquet::basic::ZstdLevel::default()))
        .build();
    let mut writer = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(out)?, schema, Some(props))?;
    let mut records = 0usize;
    for batch in reader {
        let batch = batch?;
        records += batch.num_rows();
        writer.write(&batch)?;
    }
    writer.close()?;
    let seconds = started.elapsed().as_secs_f64();
    println!("{{\"records\":{records},\"seconds\":{seconds:.4}}}");
    Ok(())
}

/// Lines in a file (for checks in the driver).
fn count(args: &[String]) -> std::io::Result<()> {
    let n = BufReader::new(std::fs::File::open(&args[1])?).lines().count();
    println!("{n}");
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let result: Result<(), Box<dyn std::error::Error>> = match args.first().map(String::as_str) {
        Some("gen") => gen(&args).map_err(Into::into),
        Some("ceiling") => ceiling(&args),
        Some("count") => count(&args).map_err(Into::into),
        _ => Err("usage: bench gen|ceiling|count …".into()),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
