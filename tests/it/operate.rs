//! Operating the lake: metrics scraped during a real ingest, the exactly-once audit on a
//! correct and on a damaged lake, compaction, vacuum and checkpoints, and maintenance running
//! beside a live ingest.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deltalake::kernel::{Action, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use lakepipe::lake::commit::{app_id, commit};
use lakepipe::lake::Lake;
use serde_json::Value;

use crate::harness::{free_port, produce_to_partition, produce_to_partition_on, unique, Fixture, LakeKind, Msg, Tansu};
use crate::kill::{assert_matches, produce_model, spawn_ingest, KAFKA_CONFIG};

/// A plain HTTP/1.0 GET against the ingest's own server.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn metric(body: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    body.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

fn txn(id: &str, ts: i64, status: &str) -> Msg {
    (Some(id.into()), Some(format!(r#"{{"transaction_id":"{id}","user_id":"u","amount":1,"currency":"EUR","status":"{status}","timestamp":{ts}}}"#)))
}

async fn wait_for_metric(port: u16, name: &str, labels: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, body)) = std::panic::catch_unwind(|| http_get(port, "/metrics")) {
            if metric(&body, name, labels) == Some(want) {
                return body;
            }
            assert!(Instant::now() < deadline, "{name}{{{labels}}} never reached {want}:\n{body}");
        }
        assert!(Instant::now() < deadline, "metrics endpoint never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_match_what_was_produced() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 1, "").await;
    let port = free_port();
    let log = std::env::temp_dir().join(format!("{}.log", fx.topic));
    let child = fx
        .cmd("ingest")
        .args(["--trigger-interval", "200ms", "--metrics-addr", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map(crate::harness::Reaped::new)
        .unwrap();
    let t = fx.topic.clone();
    let mut first: Vec<Msg> = (0..30).map(|i| txn(&format!("k{i}"), 1000, "pending")).collect();
    first.push((Some("bad1".into()), Some("{oops".into())));
    first.push((Some("bad2".into()), Some(r#"{"transaction_id":"bad2","timestamp":1}"#.into())));
    first.push((Some("bad3".into()), Some(r#"{"transaction_id":"b3","user_id":"u","amount":1,"currency":"EUR","status":"lost","timestamp":1}"#.into())));
    produce_to_partition(&t, 0, &first).await;
    wait_for_metric(port, "lakepipe_rows_inserted_total", &format!("topic=\"{t}\""), 30.0).await;

    let mut second: Vec<Msg> = (0..5).map(|i| txn(&format!("k{i}"), 2000, "completed")).collect();
    second.push(txn("k5", 500, "failed")); // stale
    second.push((Some("k6".into()), Some(r#"{"transaction_id":"k6","timestamp":3000,"_deleted":true}"#.to_string())));
    second.push((Some("k7".into()), Some(r#"{"transaction_id":"k7","timestamp":3000,"_deleted":true}"#.to_string())));
    produce_to_partition(&t, 0, &second).await;
    let body = wait_for_metric(port, "lakepipe_rows_deleted_total", &format!("topic=\"{t}\""), 2.0).await;

    let topic = format!("topic=\"{t}\"");
    assert_eq!(metric(&body, "lakepipe_records_consumed_total", &topic), Some(41.0));
    assert_eq!(metric(&body, "lakepipe_records_valid_total", &topic), Some(38.0));
    assert_eq!(metric(&body, "lakepipe_rows_updated_total", &topic), Some(5.0));
    assert_eq!(metric(&body, "lakepipe_records_stale_total", &topic), Some(1.0));
    for kind in ["malformed_json", "missing_field", "invalid_enum"] {
        assert_eq!(metric(&body, "lakepipe_records_dead_lettered_total", &format!("kind=\"{kind}\",{topic}")), Some(1.0), "{kind}");
    }
    assert_eq!(metric(&body, "lakepipe_committed_offset", &format!("partition=\"0\",{topic}")), Some(41.0));
    assert_eq!(metric(&body, "lakepipe_consumer_lag_messages", &format!("partition=\"0\",{topic}")), Some(0.0));
    assert!(body.contains("# TYPE lakepipe_commit_duration_seconds histogram"));
    assert!(metric(&body, "lakepipe_commit_duration_seconds_count", &format!("table=\"{t}\"")).unwrap() >= 2.0);
    assert_eq!(http_get(port, "/health/live").0, 200);
    assert_eq!(http_get(port, "/health/ready").0, 200);
    unsafe { crate::kill::libc_kill(child.id() as i32, 15) };
    let out = child.take().wait_with_output().unwrap();
    assert!(out.status.success(), "log {}", log.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs() {
    let fx = Fixture::new(LakeKind::Local, "log_events", 1, "").await;
    let out = fx.cmd("ingest").args(["--once", "--log-format", "json"]).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = stderr.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(lines.iter().any(|l| l["fields"]["message"] == "ingest started"), "{stderr}");
}

fn audit(fx: &Fixture) -> (bool, Value) {
    let out = fx.cmd("audit").args(["--json", "--topics", &fx.topic, "--group", &fx.group]).env("LAKEPIPE_CONNECT_TIMEOUT", "5s").output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report)
}

fn kinds(report: &Value) -> BTreeSet<String> {
    report["findings"].as_array().unwrap().iter().map(|f| f["kind"].as_str().unwrap().to_string()).collect()
}

async fn open(fx: &Fixture, table: &str) -> deltalake::DeltaTable {
    Lake::parse(&fx.lake).unwrap().open(table).await.unwrap().unwrap()
}

fn write_op() -> DeltaOperation {
    DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None }
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_passes_then_finds_each_kind_of_damage() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 2, KAFKA_CONFIG).await;
    let model = produce_model(&fx, 2, 800).await;
    fx.ingest_once();
    assert_matches(&fx, &model);
    let (ok, report) = audit(&fx);
    assert!(ok, "a correct lake must pass: {report:#}");
    let t = &report["topics"][0];
    assert_eq!(t["expected_rows"], t["table_rows"]);
    assert_eq!(t["expected_rows"].as_u64().unwrap() as usize, model.rows.len());
    assert_eq!(t["complete_history"], true);

    // 1. Remove a committed data file from the log: its keys go missing.
    let table = open(&fx, &fx.topic).await;
    let file = table.snapshot().unwrap().log_data().iter().next().unwrap();
    commit(&table, &fx.topic, vec![Action::Remove(file.remove_action(true))], write_op(), Default::default()).await.unwrap();
    let (ok, report) = audit(&fx);
    assert!(!ok);
    assert_eq!(kinds(&report), BTreeSet::from(["missing_key".to_string()]), "{report:#}");

    // 2. Duplicate rows: reference another live file a second time under a new name.
    let table = open(&fx, &fx.topic).await;
    let file = table.snapshot().unwrap().log_data().iter().next().unwrap();
    #[allow(deprecated)]
    let mut add = file.add_action();
    let copy = format!("{}-copy.parquet", add.path.trim_end_matches(".parquet"));
    let lake_dir = std::fs::canonicalize(&fx.lake).unwrap().join(&fx.topic);
    std::fs::copy(lake_dir.join(&add.path), lake_dir.join(&copy)).unwrap();
    add.path = copy;
    commit(&table, &fx.topic, vec![Action::Add(add)], write_op(), Default::default()).await.unwrap();
    let (_, report) = audit(&fx);
    assert!(kinds(&report).contains("duplicate_key"), "{report:#}");

    // 3. Rewind partition 0's offset: the table now holds rows from beyond it.
    let table = open(&fx, &fx.topic).await;
    let id = app_id("kafka", &fx.group, &fx.topic, 0);
    commit(&table, &fx.topic, vec![Action::Txn(Transaction::new(&id, 400))], write_op(), Default::default()).await.unwrap();
    let (_, report) = audit(&fx);
    let k = kinds(&report);
    assert!(k.contains("extra_key") || k.contains("stale_row"), "{report:#}");

    // 4. An offset beyond the broker's log.
    let table = open(&fx, &fx.topic).await;
    let id = app_id("kafka", &fx.group, &fx.topic, 1);
    commit(&table, &fx.topic, vec![Action::Txn(Transaction::new(&id, 1_000_000))], write_op(), Default::default()).await.unwrap();
    let (_, report) = audit(&fx);
    assert!(kinds(&report).contains("offset_beyond_log"), "{report:#}");

    // 5. Lose a dead-letter file.
    let dead = open(&fx, "dead_letters").await;
    let file = dead.snapshot().unwrap().log_data().iter().next().unwrap();
    commit(&dead, "dead_letters", vec![Action::Remove(file.remove_action(true))], write_op(), Default::default()).await.unwrap();
    let (_, report) = audit(&fx);
    assert!(kinds(&report).contains("bad_message_without_dead_letter"), "{report:#}");
}

/// One table fed by two clusters, each ingested under its own source name (a lake after a
/// failover): each source audits clean on its own. The other source's rows are its own to
/// account for, and a key both sources sent is vouched for by whichever version won, as long as
/// it is as new as the one this source owes. Before, auditing one source reported every row of
/// the other as an `extra_key`.
#[tokio::test(flavor = "multi_thread")]
async fn each_source_of_a_shared_table_audits_on_its_own() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 1, "").await;
    let west = Tansu::start("memory://tansu/", &unique("west"));
    lakepipe::source::kafka::ensure_topics(&west.address(), &Default::default(), std::slice::from_ref(&fx.topic), 1, Duration::from_secs(20)).await.unwrap();
    // East: k0..k99. West: k50..k149, newer where they overlap, and an older k10.
    let east: Vec<Msg> = (0..100).map(|i| txn(&format!("k{i}"), 1_750_000_000_000 + i, "pending")).collect();
    let mut west_msgs: Vec<Msg> = (50..150).map(|i| txn(&format!("k{i}"), 1_750_000_100_000 + i, "completed")).collect();
    west_msgs.push(txn("k10", 1_740_000_000_000, "failed"));
    produce_to_partition(&fx.topic, 0, &east).await;
    produce_to_partition_on(&west.address(), &fx.topic, 0, &west_msgs).await;
    let run = |sub: &str, name: &str, brokers: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_lakepipe"))
            .args([sub, "--config", fx.config.to_str().unwrap(), "--brokers", brokers, "--lake", &fx.lake, "--topics", &fx.topic, "--group", &fx.group, "--source-name", name])
            .args(extra)
            .env("LAKEPIPE_LOG", "warn")
            .env("LAKEPIPE_ONCE_TIMEOUT", "90s")
            .output()
            .unwrap()
    };
    let sides = [("east", fx.brokers.clone()), ("west", west.address())];
    for (name, brokers) in &sides {
        let out = run("ingest", name, brokers, &["--once", "--trigger-interval", "500ms"]);
        assert!(out.status.success(), "ingest {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let rows = fx.sql(&format!("SELECT _source, count(*) AS n FROM {} GROUP BY _source ORDER BY _source", fx.topic));
    assert_eq!(rows, vec![serde_json::json!({"_source": "east", "n": 50}), serde_json::json!({"_source": "west", "n": 100})], "east keeps k0..k49 (k10 too: west's is older)");
    for (name, brokers) in &sides {
        let out = run("audit", name, brokers, &["--json"]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{name}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert!(out.status.success(), "{name} must audit clean on its own: {report:#}");
    }
}

/// A range the ingest skipped with `on_data_loss = "skip"` (the broker had deleted it) is
/// named by `history()` on both engines, by Python `deltalake` in the commit's own metadata,
/// and by the audit, which owes no row for it and still finds the lake exact. tansu 0.6 deletes
/// nothing (no retention, no DeleteRecords), so the skip is committed here as the ingest
/// commits it; the ingest's side is tested on the fakes (`src/ingest/tests.rs`).
#[tokio::test(flavor = "multi_thread")]
async fn a_skipped_range_is_named_by_history_and_the_audit() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 1, "").await;
    let msgs = |r: std::ops::Range<i64>| r.map(|i| txn(&format!("k{i}"), 1_750_000_000_000 + i, "pending")).collect::<Vec<_>>();
    produce_to_partition(&fx.topic, 0, &msgs(0..40)).await;
    fx.ingest_once();
    produce_to_partition(&fx.topic, 0, &msgs(40..60)).await;
    // The commit the ingest makes when offsets 40..60 were deleted before it read them.
    let lake = Lake::parse(&fx.lake).unwrap();
    let cfg = lakepipe::config::Config::load(Some(fx.config.as_path()), Vec::new(), &Default::default()).unwrap();
    let mut table = lakepipe::lake::upsert::TopicTable::open(&lake, cfg.all_specs().unwrap()[&fx.topic].clone()).await.unwrap();
    let key = lakepipe::lake::commit::OffsetKey { source: "kafka".into(), group: fx.group.clone(), topic: fx.topic.clone(), partition: 0 };
    let range = lakepipe::lake::commit::OffsetRange { key: key.clone(), start: Some(40), end: 60 };
    let skipped = lakepipe::lake::commit::SkippedRange { key, from: 40, to: 60 };
    let prov = lakepipe::enrich::Provenance::now("kafka", &fx.topic);
    let out = table.upsert_skipping(&[], &[range], &[skipped], &prov).await.unwrap();
    let version = out.version.unwrap();
    produce_to_partition(&fx.topic, 0, &msgs(60..70)).await;
    fx.ingest_once();

    let rows = fx.sql(&format!("SELECT count(*) AS n, min(_offset) AS lo, max(_offset) AS hi FROM {} WHERE _offset >= 40", fx.topic));
    assert_eq!((rows[0]["n"].as_i64(), rows[0]["lo"].as_i64(), rows[0]["hi"].as_i64()), (Some(10), Some(60), Some(69)));
    let h = fx.sql(&format!("SELECT version, skipped FROM history('{}') WHERE skipped IS NOT NULL", fx.topic));
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["version"].as_u64(), Some(version));
    let named: Value = serde_json::from_str(h[0]["skipped"].as_str().unwrap()).unwrap();
    assert_eq!((named[0]["partition"].as_i64(), named[0]["from"].as_i64(), named[0]["to"].as_i64()), (Some(0), Some(40), Some(60)));

    // A reader we did not write finds the range in the commit's metadata.
    let code = "import sys, json\nfrom deltalake import DeltaTable\nfor c in DeltaTable(sys.argv[1]).history():\n    s = (c.get('lakepipe') or {}).get('skipped')\n    if s: print(json.dumps([c['version'], s]))";
    let out = Command::new(crate::harness::python()).args(["-c", code, &fx.table_uri(&fx.topic)]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[0][0].as_u64(), seen[0][1][0]["from"].as_i64(), seen[0][1][0]["to"].as_i64()), (Some(version), Some(40), Some(60)));

    // The audit owes nothing for the range, and names it.
    let (ok, report) = audit(&fx);
    assert!(ok, "the lake is exact apart from the range skipped on purpose: {report:#}");
    let p = &report["topics"][0]["partitions"][0];
    assert_eq!(p["skipped"], serde_json::json!([{"from": 40, "to": 60, "version": version}]), "{report:#}");
    let text = fx.cmd("audit").args(["--topics", &fx.topic, "--group", &fx.group]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("DATA LOSS (on_data_loss = skip) in {}/0: offsets 40..60 (20 offsets)", fx.topic)), "{text}");
}

fn file_count(fx: &Fixture) -> usize {
    let code = "import sys\nfrom deltalake import DeltaTable\nprint(len(DeltaTable(sys.argv[1]).file_uris()), flush=True)\nimport os\nos._exit(0)";
    let out = Command::new(crate::harness::python()).args(["-c", code, &fx.table_uri(&fx.topic)]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn compaction_vacuum_and_checkpoints() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 2, "checkpoint_interval = 5").await;
    let model = produce_model(&fx, 2, 600).await;
    let out = fx.cmd("ingest").args(["--once", "--max-batch-records", "40"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_matches(&fx, &model);
    let before = file_count(&fx);
    let query = format!("SELECT transaction_id, status, CAST(amount AS VARCHAR) AS a, CAST(date AS VARCHAR) AS d FROM {} ORDER BY transaction_id", fx.topic);
    let rows_before = fx.sql(&query);
    let lake_dir = std::fs::canonicalize(&fx.lake).unwrap().join(&fx.topic);
    assert!(lake_dir.join("_delta_log/_last_checkpoint").exists(), "a checkpoint is written every 5 commits");

    let out = fx.cmd("compact").args(["--table", &fx.topic, "--target-file-size", "100000000"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = file_count(&fx);
    assert!(after < before, "compaction must reduce the file count ({before} -> {after})");
    assert!(after <= 4, "one file per date partition expected, got {after}");
    assert_eq!(fx.sql(&query), rows_before, "compaction changes no result");
    let (ok, report) = audit(&fx);
    assert!(ok, "{report:#}");
    let out = fx.cmd("compact").args(["--table", &fx.topic, "--zorder", "user_id,amount"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fx.sql(&query), rows_before, "Z-ordering changes no result");

    // Upserts after compaction find their keys in the compacted files.
    let updates: Vec<Msg> = model.rows.iter().take(20).map(|(k, (ts, _))| txn(k, ts / 1000 + 1, "refunded")).collect();
    produce_to_partition(&fx.topic, 0, &updates).await;
    fx.ingest_once();
    let refunded = fx.sql(&format!("SELECT count(*) AS n FROM {} WHERE status = 'refunded' AND transaction_id IN ({})", fx.topic,
        updates.iter().map(|(k, _)| format!("'{}'", k.as_ref().unwrap())).collect::<Vec<_>>().join(",")));
    assert_eq!(refunded[0]["n"], 20);
    let dupes = fx.sql(&format!("SELECT count(*) - count(DISTINCT transaction_id) AS d FROM {}", fx.topic));
    assert_eq!(dupes[0]["d"], 0);

    // Vacuum: an unsafe retention is refused, a forced one deletes the replaced files.
    let parquet_files = || std::fs::read_dir(&lake_dir).unwrap().flatten().filter(|d| d.file_name().to_string_lossy().starts_with("date=")).flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten()).filter(|f| f.path().extension().is_some_and(|e| e == "parquet")).count();
    let on_disk = parquet_files();
    let out = fx.cmd("vacuum").args(["--table", &fx.topic, "--retain-hours", "1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to vacuum"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(parquet_files(), on_disk, "a refused vacuum deletes nothing");
    // A dry run lists what the vacuum would delete, and deletes nothing.
    let out = fx.cmd("vacuum").args(["--table", &fx.topic, "--retain-hours", "0", "--force", "--dry-run"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<&str> = report[0]["would_delete"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert!(!listed.is_empty() && report[0]["files_deleted"] == listed.len(), "{report}");
    assert!(listed.iter().all(|f| lake_dir.join(f).is_file()), "each file listed is on disk: {listed:?}");
    assert_eq!(parquet_files(), on_disk, "a dry run deletes nothing");
    let out = fx.cmd("vacuum").args(["--table", &fx.topic, "--retain-hours", "0", "--force"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(parquet_files() < on_disk, "forced vacuum deletes replaced files");
    assert_eq!(parquet_files(), on_disk - listed.len(), "it deletes what the dry run listed");
    assert!(listed.iter().all(|f| !lake_dir.join(f).exists()));
    assert_eq!(parquet_files(), file_count(&fx), "only live files remain");
    let cross = fx.cross_read("deltalake", &fx.topic, &["transaction_id"]);
    assert_eq!(cross.len(), model.rows.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn maintenance_beside_a_live_ingest_loses_nothing() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 3, KAFKA_CONFIG).await;
    let log = std::env::temp_dir().join(format!("{}.log", fx.topic));
    let mut ingest = spawn_ingest(&fx, &log);
    let model = produce_model(&fx, 3, 1200).await;
    let want = model.rows.len() as i64;
    let mut compactions = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = fx.cmd("compact").args(["--target-file-size", "100000000"]).output().unwrap();
        assert!(out.status.success(), "compaction beside ingest failed: {}", String::from_utf8_lossy(&out.stderr));
        compactions += 1;
        let out = fx.cmd("vacuum").args(["--retain-hours", "168"]).output().unwrap();
        assert!(out.status.success(), "vacuum beside ingest failed: {}", String::from_utf8_lossy(&out.stderr));
        let n = fx.sql_now(&format!("SELECT count(*) AS n FROM {}", fx.topic))[0]["n"].as_i64().unwrap();
        let dead = fx.sql_now(&format!("SELECT count(*) AS n FROM dead_letters WHERE _topic = '{}'", fx.topic))[0]["n"].as_i64().unwrap();
        if n == want && dead == model.invalid.len() as i64 && compactions >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "ingest did not converge beside maintenance: {n}/{want} (log {})", log.display());
    }
    ingest.kill().unwrap();
    ingest.wait().unwrap();
    assert_matches(&fx, &model);
    let (ok, report) = audit(&fx);
    assert!(ok, "{report:#}");
}

/// On a terminal, long work shows an indicatif bar with rate and ETA; in logs, it does not.
#[tokio::test(flavor = "multi_thread")]
async fn progress_bar_only_on_a_terminal() {
    let fx = Fixture::new(LakeKind::Local, "log_events", 1, "").await;
    let msgs: Vec<Msg> = (0..5)
        .map(|i| (Some(format!("l{i}")), Some(format!(r#"{{"log_id":"l{i}","service":"api","level":"INFO","message":"m","timestamp":{i}}}"#))))
        .collect();
    produce_to_partition(&fx.topic, 0, &msgs).await;
    fx.ingest_once();
    let bin = env!("CARGO_BIN_EXE_lakepipe");
    let command = format!("{bin} compact --lake {} --target-file-size 1000000", fx.lake);
    let out = Command::new("script").args(["-qec", &command, "/dev/null"]).output().unwrap();
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(tty.contains("tables (") && tty.contains("ETA"), "no progress bar on a terminal:\n{tty}");
    let plain = fx.cmd("compact").args(["--target-file-size", "1000000"]).output().unwrap();
    assert!(plain.status.success());
    assert!(!String::from_utf8_lossy(&plain.stderr).contains("ETA"), "a bar in plain logs");
}
