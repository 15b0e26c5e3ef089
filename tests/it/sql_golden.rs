//! Every analyst query in `sql/` runs against a lake built from fixed data on both engines: the
//! DataFusion result must equal the golden file in `sql/expected/` (sqllogictest-style), and
//! DuckDB's must equal DataFusion's. `LAKEPIPE_DEV_BLESS=1` rewrites
//! the golden files after a deliberate change.

use lakepipe::decode::Decoder;
use lakepipe::enrich::Provenance;
use lakepipe::generate::{generate, GenerateOptions};
use lakepipe::lake::commit::{OffsetKey, OffsetRange};
use lakepipe::lake::dead_letters::{DeadLetter, DeadLetterTable};
use lakepipe::lake::upsert::TopicTable;
use lakepipe::lake::Lake;

/// Four topics, each written in two batches (so the change feed has several versions).
async fn build_lake(lake: &Lake) {
    let mut dead = DeadLetterTable::open(lake).await.unwrap();
    for (i, topic) in ["user_events", "transactions", "sensor_data", "log_events"].iter().enumerate() {
        let spec = lakepipe::spec::builtin_specs()[*topic].clone();
        let d = Decoder::new(spec.clone(), 1 << 20).unwrap();
        let opts = GenerateOptions { shape: topic.to_string(), count: 600, seed: 99 + i as u64, update_ratio: 0.3, ..Default::default() };
        let msgs = generate(&opts, 1_767_225_600_000).unwrap(); // 2026-01-01T00:00:00Z
        let mut table = TopicTable::open(lake, spec).await.unwrap();
        let key = OffsetKey { source: "kafka".into(), group: "golden".into(), topic: topic.to_string(), partition: 0 };
        let mut start = None;
        let mut dead_start = None;
        for half in msgs.chunks(300).enumerate().map(|(h, c)| (h as i64 * 300, c)) {
            let (first, chunk) = half;
            let mut records = Vec::new();
            let mut letters = Vec::new();
            for (j, (k, v)) in chunk.iter().enumerate() {
                let offset = first + j as i64;
                match d.decode(k.as_deref(), v.as_deref(), 0, offset) {
                    Ok(r) => records.push(r),
                    Err(error) => letters.push(DeadLetter { topic: topic.to_string(), partition: 0, offset, key: k.clone(), payload: v.clone(), message_timestamp_ms: None, error }),
                }
            }
            let end = first + chunk.len() as i64;
            let range = vec![OffsetRange { key: key.clone(), start, end }];
            if !letters.is_empty() {
                dead.append(&letters, &[OffsetRange { key: key.clone(), start: dead_start, end }], "kafka").await.unwrap();
                dead_start = Some(end);
            }
            table.upsert(&records, &range, &Provenance::now("kafka", topic)).await.unwrap();
            start = Some(end);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn analyst_queries_match_golden_files() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::parse(dir.path().join("lake").to_str().unwrap()).unwrap();
    build_lake(&lake).await;
    let root = crate::harness::repo_file("");
    let bless = std::env::var_os("LAKEPIPE_DEV_BLESS").is_some();
    let mut files: Vec<_> = std::fs::read_dir(root.join("sql")).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "sql")).collect();
    files.sort();
    assert!(files.len() >= 5, "sql/ must hold the analyst queries");
    let mut failures = Vec::new();
    for file in &files {
        let sql = std::fs::read_to_string(file).unwrap();
        let (schema, batches) = lakepipe::query::run(&lake, sql.trim().trim_end_matches(';'))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let got = lakepipe::query::format(&schema, &batches, lakepipe::query::Format::Csv).unwrap();
        // DuckDB must give the same rows (compared value by value: see `same_rows`).
        let duck = lakepipe::query::Request { sql: &sql, engine: lakepipe::query::Engine::Duckdb, ..Default::default() };
        let (duck_schema, duck_batches) = lakepipe::query::execute(&lake, &duck).await.unwrap_or_else(|e| panic!("{} on duckdb: {e}", file.display()));
        let as_rows = |schema, batches| -> Vec<serde_json::Value> {
            serde_json::from_str(&lakepipe::query::format(schema, batches, lakepipe::query::Format::Json).unwrap()).unwrap()
        };
        crate::harness::same_rows(&as_rows(&schema, &batches), &as_rows(&duck_schema, &duck_batches), &file.display().to_string());
        let rows = got.lines().count().saturating_sub(1);
        assert!(rows > 0, "{} returned no rows on the golden lake; the test would prove little", file.display());
        let golden = root.join("sql/expected").join(file.file_stem().unwrap()).with_extension("csv");
        if bless {
            std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!("{}: result differs from {}\n--- want\n{want}\n--- got\n{got}", file.display(), golden.display())),
            Err(_) => failures.push(format!("{}: no golden file {} (run once with LAKEPIPE_DEV_BLESS=1 and review it)", file.display(), golden.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The analysts' notebook runs headless against a lake this test made, and draws its plots.
#[tokio::test(flavor = "multi_thread")]
async fn notebook_runs_headless() {
    let dir = tempfile::tempdir().unwrap();
    let lake_dir = dir.path().join("lake");
    let lake = Lake::parse(lake_dir.to_str().unwrap()).unwrap();
    build_lake(&lake).await;
    let root = crate::harness::repo_file("");
    let executed = dir.path().join("executed.ipynb");
    let code = r#"
import sys, nbformat, nbclient
nb = nbformat.read(sys.argv[1], as_version=4)
nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": sys.argv[3]}}).execute()
nbformat.write(nb, sys.argv[2])
images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
print(images)
print(text)
"#;
    let out = std::process::Command::new(crate::harness::python())
        .args(["-c", code, root.join("notebooks/lake_tour.ipynb").to_str().unwrap(), executed.to_str().unwrap(), root.join("notebooks").to_str().unwrap()])
        .env("LAKEPIPE_LAKE", &lake_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the notebook failed:\n{}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    let mut lines = stdout.lines();
    let images: usize = lines.next().unwrap().trim().parse().unwrap();
    assert!(images >= 2, "expected two plots, got {images}");
    assert!(stdout.contains("transactions") && stdout.contains("malformed_json"), "{stdout}");
}
