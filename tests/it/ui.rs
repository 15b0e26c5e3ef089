//! The web UI, end to end in headless Chromium (Playwright), against a real `lakepipe serve`,
//! broker and lake. Screenshots of each page are kept in `$LAKEPIPE_DEV_UI_SHOTS` (the suite sets it
//! to a folder in the cache) as test artefacts.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{brokers, produce_to_partition, Fixture, LakeKind};

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn web_ui_in_a_real_browser() {
    let (Ok(node_path), Ok(chromium)) = (std::env::var("LAKEPIPE_DEV_UI_NODE_PATH"), std::env::var("LAKEPIPE_DEV_CHROMIUM")) else {
        panic!("LAKEPIPE_DEV_UI_NODE_PATH / LAKEPIPE_DEV_CHROMIUM are not set: run the suite with scripts/test.sh, which installs playwright-core and Chromium");
    };
    let fx = Fixture::new(LakeKind::Local, "transactions", 1, "").await;
    // One record and one dead letter, so the overview and the dead-letter browser have data.
    let good = r#"{"transaction_id":"seed-1","user_id":"u","amount":5,"currency":"EUR","status":"pending","timestamp":"2026-01-01T09:00:00Z"}"#;
    produce_to_partition(&fx.topic, 0, &[(Some("seed-1".into()), Some(good.into())), (Some("x".into()), Some("{not json".into()))]).await;
    fx.ingest_once();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _srv = Server(
        fx.cmd("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("LAKEPIPE_API_TOKEN", "ui-secret")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "serve did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let shots = std::env::var("LAKEPIPE_DEV_UI_SHOTS").unwrap_or_else(|_| std::env::temp_dir().join("lakepipe-ui-shots").display().to_string());
    std::fs::create_dir_all(&shots).unwrap();
    let ingest: Vec<String> = [
        env!("CARGO_BIN_EXE_lakepipe"), "ingest", "--once", "--config", fx.config.to_str().unwrap(), "--brokers", &brokers(), "--lake", &fx.lake,
        "--topics", &fx.topic, "--group", &fx.group, "--trigger-interval", "500ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let script = crate::harness::repo_file("tests/ui/ui_test.cjs");
    let out = Command::new("node")
        .arg(script)
        .env("NODE_PATH", &node_path)
        .env("CHROMIUM", &chromium)
        .env("LAKEPIPE_DEV_UI_URL", format!("http://127.0.0.1:{port}/"))
        .env("LAKEPIPE_DEV_UI_TOPIC", &fx.topic)
        .env("LAKEPIPE_DEV_UI_GROUP", &fx.group)
        .env("LAKEPIPE_DEV_UI_TOKEN", "ui-secret")
        .env("LAKEPIPE_DEV_UI_INGEST", serde_json::to_string(&ingest).unwrap())
        .env("LAKEPIPE_DEV_UI_SHOTS", &shots)
        .env("LAKEPIPE_LOG", "warn")
        .env("LAKEPIPE_ONCE_TIMEOUT", "90s")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the browser test failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.matches("ok: ").count() >= 20, "{stdout}");
    for page in ["overview", "entry", "upload", "tables", "sql", "dead_letters", "brokers"] {
        let png = std::path::Path::new(&shots).join(format!("{page}.png"));
        assert!(std::fs::metadata(&png).map(|m| m.len() > 10_000).unwrap_or(false), "no screenshot {}", png.display());
    }
}
