//! The read-only HTTP API of `lakepipe serve`, driven with curl.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{produce_to_partition, Fixture, LakeKind, Msg};

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn serve(fx: &Fixture, env: &[(&str, &str)]) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = fx.cmd("serve");
    cmd.args(["--listen", &format!("127.0.0.1:{port}")]).stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Server { child, port }
}

/// curl: returns (status, headers, body).
pub(crate) fn curl(port: u16, method: &str, path: &str, body: Option<&Value>, token: Option<&str>) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("h");
    let mut c = Command::new("curl");
    c.args(["-s", "-X", method, "-D", headers.to_str().unwrap(), "--max-time", "60"]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", &b.to_string()]);
    }
    c.arg(format!("http://127.0.0.1:{port}{path}"));
    let out = c.output().unwrap();
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let h = std::fs::read_to_string(&headers).unwrap_or_default();
    let status = h.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, h.to_ascii_lowercase(), out.stdout)
}

/// curl: POST the JSON in `file` (too large for an argument), with `args`; returns stdout.
fn post_file(port: u16, path: &str, file: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "120", "-H", "Content-Type: application/json"])
        .args(args)
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn q(sql: &str, format: &str) -> Value {
    q_on("datafusion", sql, format)
}

fn q_on(engine: &str, sql: &str, format: &str) -> Value {
    serde_json::json!({"sql": sql, "engine": engine, "format": format})
}

const ENGINES: [&str; 2] = ["datafusion", "duckdb"];

#[tokio::test(flavor = "multi_thread")]
async fn read_only_api_with_token_limits_and_clear_errors() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 1, "").await;
    let msgs: Vec<Msg> = (0..12)
        .map(|i| (Some(format!("t{i}")), Some(format!(r#"{{"transaction_id":"t{i}","user_id":"u","amount":{i}.5,"currency":"EUR","status":"completed","timestamp":{}}}"#, 1_700_000_000_000i64 + i))))
        .collect();
    produce_to_partition(&fx.topic, 0, &msgs).await;
    fx.ingest_once();
    let srv = serve(&fx, &[("LAKEPIPE_API_TOKEN", "s3cret"), ("LAKEPIPE_MAX_RESULT_ROWS", "5")]);
    let sql = format!("SELECT transaction_id, amount FROM {} ORDER BY transaction_id", fx.topic);

    // The token.
    assert_eq!(curl(srv.port, "POST", "/query", Some(&q(&sql, "json")), None).0, 401);
    assert_eq!(curl(srv.port, "POST", "/query", Some(&q(&sql, "json")), Some("wrong")).0, 401);
    assert_eq!(curl(srv.port, "GET", "/health/live", None, None).0, 200, "health needs no token");

    // JSON: the same array of row objects as the CLI, cut at the row limit and marked.
    let cli = fx.sql(&sql);
    for engine in ENGINES {
        let (status, headers, body) = curl(srv.port, "POST", "/query", Some(&q_on(engine, &sql, "json")), Some("s3cret"));
        assert_eq!(status, 200, "{engine}: {}", String::from_utf8_lossy(&body));
        let rows: Vec<Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(rows.len(), 5, "{engine}");
        assert_eq!(rows[0]["transaction_id"], "t0", "{engine}");
        assert!(headers.contains("x-lakepipe-truncated: first 5 rows"), "{engine}: {headers}");
        crate::harness::same_rows(&rows, &cli[..5], &sql);
    }
    let (status, _, body) = curl(srv.port, "POST", "/query", Some(&q_on("sqlite", &sql, "json")), Some("s3cret"));
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("use datafusion or duckdb"), "{}", String::from_utf8_lossy(&body));

    // CSV and Arrow IPC (read back with pyarrow).
    let (_, headers, body) = curl(srv.port, "POST", "/query", Some(&q(&format!("SELECT count(*) AS n FROM {}", fx.topic), "csv")), Some("s3cret"));
    assert!(headers.contains("content-type: text/csv"));
    assert_eq!(String::from_utf8_lossy(&body), "n\n12\n");
    let (_, headers, body) = curl(srv.port, "POST", "/query", Some(&q(&sql, "arrow")), Some("s3cret"));
    assert!(headers.contains("application/vnd.apache.arrow.stream"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.arrows");
    std::fs::write(&file, &body).unwrap();
    let code = "import sys, pyarrow.ipc as ipc\nt = ipc.open_stream(open(sys.argv[1], 'rb')).read_all()\nprint(t.num_rows, t.column('transaction_id')[0])";
    let out = Command::new(crate::harness::python()).args(["-c", code, file.to_str().unwrap()]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5 t0", "{}", String::from_utf8_lossy(&out.stderr));

    // Read-only: every kind of write, DDL, setting and file read is a 400 with a clear message.
    for bad in [
        format!("INSERT INTO {} SELECT * FROM {}", fx.topic, fx.topic),
        format!("UPDATE {} SET status = 'failed'", fx.topic),
        format!("DELETE FROM {}", fx.topic),
        format!("DROP TABLE {}", fx.topic),
        "CREATE TABLE x AS SELECT 1".to_string(),
        format!("COPY {} TO '/tmp/x.csv'", fx.topic),
        "SET datafusion.execution.batch_size = 1".to_string(),
        "SELECT * FROM read_parquet('/etc/hosts')".to_string(),
        format!("WITH a AS (SELECT 1) DELETE FROM {}", fx.topic),
        "ATTACH '/tmp/x.duckdb' AS x".to_string(),
        "INSTALL httpfs".to_string(),
        "LOAD httpfs".to_string(),
        "PRAGMA enable_profiling".to_string(),
        "SET enable_external_access = true".to_string(),
        "SELECT * FROM read_text('/etc/hostname')".to_string(),
        "SELECT getenv('HOME') AS h".to_string(),
    ] {
        for engine in ENGINES {
            let (status, _, body) = curl(srv.port, "POST", "/query", Some(&q_on(engine, &bad, "json")), Some("s3cret"));
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(status, 400, "{engine}: {bad}: {v}");
            assert!(v["error"].as_str().unwrap().contains("read-only") || v["error"].as_str().unwrap().contains("not allowed"), "{engine}: {bad}: {v}");
        }
    }
    let rows = fx.sql(&format!("SELECT count(*) AS n FROM {}", fx.topic));
    assert_eq!(rows[0]["n"], 12, "nothing was changed");

    // A bad query: 400 with the engine's message, never a 500.
    for engine in ENGINES {
        let (status, _, body) = curl(srv.port, "POST", "/query", Some(&q_on(engine, &format!("SELECT nope FROM {}", fx.topic), "json")), Some("s3cret"));
        assert_eq!(status, 400, "{engine}");
        assert!(String::from_utf8_lossy(&body).contains("nope"), "{engine}: {}", String::from_utf8_lossy(&body));
    }
    let (status, _, _) = curl(srv.port, "POST", "/query", Some(&serde_json::json!({"sql": 5})), Some("s3cret"));
    assert_eq!(status, 400);

    // Tables and history.
    let (status, _, body) = curl(srv.port, "GET", "/tables", None, Some("s3cret"));
    assert_eq!(status, 200);
    let tables: Vec<Value> = serde_json::from_slice(&body).unwrap();
    let t = tables.iter().find(|t| t["name"] == fx.topic.as_str()).unwrap();
    assert_eq!(t["rows"], 12);
    assert!(t["schema"].as_array().unwrap().iter().any(|c| c["name"] == "amount" && c["type"].as_str().unwrap().contains("decimal")), "{t}");
    let (status, _, body) = curl(srv.port, "GET", &format!("/tables/{}/history", fx.topic), None, Some("s3cret"));
    assert_eq!(status, 200);
    let history: Vec<Value> = serde_json::from_slice(&body).unwrap();
    assert_eq!(history.last().unwrap()["rows_inserted"], 12);
    assert_eq!(curl(srv.port, "GET", "/tables/nope/history", None, Some("s3cret")).0, 404);
    assert_eq!(curl(srv.port, "GET", "/tables/..%2F..%2Fetc/history", None, Some("s3cret")).0, 400, "no escaping the lake");
    let (status, _, body) = curl(srv.port, "POST", "/query", Some(&q("SELECT * FROM history('../x')", "json")), Some("s3cret"));
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    drop(srv);

    // A query that outlives the timeout gets a 400.
    let slow = serve(&fx, &[("LAKEPIPE_QUERY_TIMEOUT", "1ms")]);
    let (status, _, body) = curl(slow.port, "POST", "/query", Some(&q(&sql, "json")), None);
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("longer than the limit"), "{}", String::from_utf8_lossy(&body));
    drop(slow);

    // DuckDB is interrupted mid-query (not left running): a query of minutes ends at the
    // limit, and the server answers the next query at once.
    let slow = serve(&fx, &[("LAKEPIPE_QUERY_TIMEOUT", "2s")]);
    let started = std::time::Instant::now();
    let long = "SELECT sum(r.range * 2) AS s FROM range(1000000000000) AS r";
    let (status, _, body) = curl(slow.port, "POST", "/query", Some(&q_on("duckdb", long, "json")), None);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("longer than the limit"), "{}", String::from_utf8_lossy(&body));
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "the timeout did not stop the query");
    let (status, _, body) = curl(slow.port, "POST", "/query", Some(&q_on("duckdb", &format!("SELECT count(*) AS n FROM {}", fx.topic), "json")), None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()[0]["n"], 12);
}

/// A statement nested too deeply is a 400 on both engines, and the server stays up: one
/// `SELECT 1+1+…` of 900,000 terms (1.8 MB) overflowed a worker's stack and killed `serve`.
/// An expression just inside the bound runs, on the server's worker threads as in the CLI
/// (it needed about 8 MiB of stack in a debug build; a worker had 2 MiB).
#[tokio::test(flavor = "multi_thread")]
async fn deep_expressions_get_a_400_and_the_server_stays_up() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 1, "").await;
    let srv = serve(&fx, &[]);
    let dir = tempfile::tempdir().unwrap();
    let post = |engine: &str, terms: usize| {
        let file = dir.path().join("body.json");
        std::fs::write(&file, q_on(engine, &format!("SELECT {}", vec!["1"; terms].join("+")), "json").to_string()).unwrap();
        let text = post_file(srv.port, "/query", &file, &["-o", "-", "-w", "\n%{http_code}"]);
        let (body, status) = text.rsplit_once('\n').unwrap_or((&text, "0"));
        (status.parse::<u16>().unwrap_or(0), body.to_string())
    };
    for engine in ENGINES {
        let (status, body) = post(engine, 900_000);
        assert_eq!(status, 400, "{engine}: {body}");
        assert!(body.contains("nests expressions too deeply"), "{engine}: {body}");
        assert_eq!(curl(srv.port, "GET", "/health/live", None, None).0, 200, "{engine}: serve went down");
    }
    let (status, body) = post("datafusion", 900);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("900"), "{body}");
    assert_eq!(curl(srv.port, "GET", "/health/live", None, None).0, 200, "serve went down");
}

/// The token is checked before the body is read: a 32 MB upload without it gets its 401 at
/// once, with (almost) nothing sent. The route took up to 256 MiB into memory first.
#[tokio::test(flavor = "multi_thread")]
async fn the_token_is_checked_before_the_body_is_read() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 1, "").await;
    let srv = serve(&fx, &[("LAKEPIPE_API_TOKEN", "s3cret")]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.json");
    let size = 32usize << 20;
    std::fs::write(&file, vec![b' '; size]).unwrap();
    for path in [format!("/topics/{}/records", fx.topic), "/query".to_string()] {
        let text = post_file(srv.port, &path, &file, &["-o", "/dev/null", "-w", "%{http_code} %{size_upload}"]);
        let (status, sent) = text.split_once(' ').unwrap_or((&text, "0"));
        assert_eq!(status, "401", "{path}: {text}");
        let sent: f64 = sent.parse().unwrap_or(f64::MAX);
        assert!(sent < (1 << 20) as f64, "{path}: the server read {sent} bytes of {size} before refusing");
    }
}
