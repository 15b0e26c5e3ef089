//! Helpers for `scripts/bench.sh`: the benchmark data and the ingest ceiling.
//!
//! * `gen --count N --out FILE [--base B --update-ratio R --seed S]` writes `transactions`
//!   records of about 300 bytes as NDJSON. With `--base`, a share `R` of the records update keys
//!   `0..B` (written earlier) with newer timestamps, and the rest are new keys from `B` on.
//! * `ceiling FILE OUT` is the ingest ceiling: one core decodes the NDJSON with arrow-json and
//!   writes zstd Parquet; no broker, no Delta. Prints `{"records":…,"seconds":…}`.
//! * `table --lake DIR --rows N --per-day D` builds a lakepipe `transactions` table of `N` rows
//!   in-process (no broker), `D` records per event day, committed in chunks as an ingest would.
//! * `upsert --lake DIR --batch FILE [--parquet OUT]` opens the table cold and upserts the batch
//!   as one micro-batch, timing it; prints seconds, files read and pruned, and peak RSS. With
//!   `--parquet`, it only writes the batch in the table's schema plus `_deleted` (for MERGE).
//!
//! With `--per-day D`, `gen` spreads keys at `D` per day and picks updated and deleted keys
//! with an exponential age of mean one day, as status changes follow purchases; `--delete-ratio`
//! adds deletes (full records with `"_deleted": true`).

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use lakepipe::batch::Provenance;
use lakepipe::decode::Decoder;
use lakepipe::lake::commit::{OffsetKey, OffsetRange};
use lakepipe::lake::upsert::TopicTable;
use lakepipe::lake::Lake;
use lakepipe::spec::builtin_specs;
use rand::{Rng, SeedableRng};

// The same allocator as the `lakepipe` binary, so the in-process figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// Event time of new key `k`, in ms.
fn new_key_ms(k: u64, base: u64, count: u64, per_day: u64) -> i64 {
    if per_day > 0 {
        START_MS + (k as i64 * 86_400_000) / per_day as i64
    } else {
        START_MS + (k as i64 * 7 * 86_400_000) / (base + count).max(1) as i64
    }
}

const START_MS: i64 = 1_767_225_600_000; // 2026-01-01

/// One `transactions` record of about 300 bytes.
fn line(rng: &mut rand::rngs::StdRng, key: u64, ts_ms: i64, update: bool, deleted: bool) -> String {
    let ts = chrono::DateTime::from_timestamp_millis(ts_ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)).unwrap_or_default();
    format!(
        r#"{{"transaction_id":"txn-{key:010}","user_id":"user-{:07}","amount":{}.{:02},"currency":"{}","status":"{}","payment_method":"{}","merchant":"{}","timestamp":"{ts}","channel":"{}","note":"order {key} via checkout v2; gift wrap: no; coupon: none"{}}}"#,
        rng.gen_range(0..500_000),
        rng.gen_range(1..2_000),
        rng.gen_range(0..100),
        CURRENCIES[rng.gen_range(0..CURRENCIES.len())],
        if update { "completed" } else { STATUSES[rng.gen_range(0..STATUSES.len())] },
        METHODS[rng.gen_range(0..METHODS.len())],
        MERCHANTS[rng.gen_range(0..MERCHANTS.len())],
        if rng.gen_bool(0.5) { "web" } else { "mobile" },
        if deleted { r#","_deleted":true"# } else { "" },
    )
}

fn gen(args: &[String]) -> std::io::Result<()> {
    let count = num(args, "--count", 100_000.0) as u64;
    let base = num(args, "--base", 0.0) as u64;
    let ratio = num(args, "--update-ratio", 0.0);
    let delete_ratio = num(args, "--delete-ratio", 0.0);
    let per_day = num(args, "--per-day", 0.0) as u64;
    let seed = num(args, "--seed", 7.0) as u64;
    let out = arg(args, "--out").unwrap_or_else(|| "bench.ndjson".into());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut w = BufWriter::new(std::fs::File::create(&out)?);
    // Updates are newer than anything in the base.
    let newest = new_key_ms(base + count, base, count, per_day) + 86_400_000;
    let mut next_new = base;
    let mut bytes = 0usize;
    for i in 0..count {
        let draw = rng.gen::<f64>();
        let (update, deleted) = (base > 0 && draw < ratio + delete_ratio, base > 0 && draw < delete_ratio);
        let (key, ts) = if update {
            // Mostly recent keys: real updates touch recent records.
            let back = if per_day > 0 {
                (-(1.0 - rng.gen::<f64>()).ln() * per_day as f64) as u64
            } else {
                (rng.gen::<f64>().powi(3) * base as f64) as u64
            };
            (base - 1 - back.min(base - 1), newest + i as i64)
        } else {
            let k = next_new;
            next_new += 1;
            (k, new_key_ms(k, base, count, per_day))
        };
        let line = line(&mut rng, key, ts, update, deleted);
        bytes += line.len() + 1;
        writeln!(w, "{line}")?;
    }
    w.flush()?;
    println!("{{\"records\":{count},\"bytes\":{bytes},\"avg_bytes\":{}}}", bytes as u64 / count.max(1));
    Ok(())
}

fn offsets(start: Option<i64>, end: i64) -> Vec<OffsetRange> {
    let key = OffsetKey { source: "kafka".into(), group: "bench".into(), topic: "transactions".into(), partition: 0 };
    vec![OffsetRange { key, start, end }]
}

/// Peak resident memory of this process, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kb.unwrap_or(0.0) / 1024.0
}

async fn table(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let rows = num(args, "--rows", 1_000_000.0) as u64;
    let per_day = num(args, "--per-day", 150_000.0) as u64;
    let chunk = num(args, "--chunk", 250_000.0) as u64;
    let lake = Lake::parse(&arg(args, "--lake").ok_or("--lake DIR")?)?;
    let spec = builtin_specs()["transactions"].clone();
    let decoder = Decoder::new(spec.clone(), 1 << 20)?;
    let mut table = TopicTable::open(&lake, spec).await?;
    let prov = Provenance::now("kafka", "transactions");
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let started = Instant::now();
    let (mut offset, mut files) = (0u64, 0u64);
    while offset < rows {
        let end = (offset + chunk).min(rows);
        let records = (offset..end)
            .map(|k| decoder.decode(None, Some(line(&mut rng, k, new_key_ms(k, 0, 0, per_day), false, false).as_bytes()), 0, k as i64))
            .collect::<Result<Vec<_>, _>>()?;
        let out = table.upsert(&records, &offsets((offset > 0).then_some(offset as i64), end as i64), &prov).await?;
        files += out.files_added;
        offset = end;
    }
    println!("{{\"rows\":{rows},\"files\":{files},\"seconds\":{:.3}}}", started.elapsed().as_secs_f64());
    Ok(())
}

async fn upsert(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let lake = Lake::parse(&arg(args, "--lake").ok_or("--lake DIR")?)?;
    let spec = builtin_specs()["transactions"].clone();
    let decoder = Decoder::new(spec.clone(), 1 << 20)?;
    let text = std::fs::read_to_string(arg(args, "--batch").ok_or("--batch FILE")?)?;
    let started = Instant::now();
    let key = offsets(None, 0).remove(0).key;
    let mut table = TopicTable::open(&lake, spec.clone()).await?;
    let start = table.stored_offset(&key).await?.unwrap_or(0);
    let records = text
        .lines()
        .enumerate()
        .map(|(i, l)| decoder.decode(None, Some(l.as_bytes()), 0, start + i as i64))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(out) = arg(args, "--parquet") {
        // The batch as MERGE's source: the table's columns, plus `_deleted`.
        let schema = lakepipe::batch::arrow_schema(&spec);
        let batch = lakepipe::batch::to_record_batch(&spec, &schema, records.iter(), &Provenance::now("kafka", "transactions"))?;
        let deleted = arrow::array::BooleanArray::from(records.iter().map(|r| r.deleted).collect::<Vec<_>>());
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("_deleted", DataType::Boolean, false));
        let mut cols = batch.columns().to_vec();
        cols.push(Arc::new(deleted));
        let batch = arrow::record_batch::RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?;
        let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(out)?, batch.schema(), None)?;
        w.write(&batch)?;
        w.close()?;
        return Ok(());
    }
    let n = records.len() as i64;
    let out = table.upsert(&records, &offsets(Some(start), start + n), &Provenance::now("kafka", "transactions")).await?;
    let (read, pruned) = table.index_reads();
    println!(
        "{{\"records\":{n},\"seconds\":{:.4},\"inserted\":{},\"updated\":{},\"deleted\":{},\"files_read_for_keys\":{read},\"files_pruned\":{pruned},\"files_rewritten\":{},\"peak_rss_mib\":{:.1}}}",
        started.elapsed().as_secs_f64(),
        out.inserted,
        out.updated,
        out.deleted,
        out.files_removed,
        peak_rss_mib()
    );
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
    // As `lakepipe ingest` does.
    lakepipe::tune_allocator_for_ingest();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let runtime = || tokio::runtime::Builder::new_multi_thread().enable_all().build();
    let result: Result<(), Box<dyn std::error::Error>> = match args.first().map(String::as_str) {
        Some("table") => runtime().map_err(Into::into).and_then(|rt| rt.block_on(table(&args))),
        Some("upsert") => runtime().map_err(Into::into).and_then(|rt| rt.block_on(upsert(&args))),
        Some("gen") => gen(&args).map_err(Into::into),
        Some("ceiling") => ceiling(&args),
        Some("count") => count(&args).map_err(Into::into),
        _ => Err("usage: bench gen|ceiling|count|table|upsert …".into()),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
