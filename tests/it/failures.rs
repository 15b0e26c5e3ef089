//! Failures of the setup get a clear message and a non-zero exit, and commit nothing.

use std::process::Command;

use crate::harness::{brokers, s3_root, unique, Fixture, LakeKind};

fn lakepipe() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lakepipe"));
    c.env("LAKEPIPE_CONNECT_TIMEOUT", "4s");
    c
}

fn fails_with(mut c: Command, needle: &str) -> String {
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected failure, got success; stderr:\n{stderr}");
    assert!(stderr.contains(needle), "stderr lacks {needle:?}:\n{stderr}");
    assert!(!stderr.contains("panicked"), "no panics:\n{stderr}");
    stderr
}

#[test]
fn bad_flag() {
    let mut c = lakepipe();
    c.args(["ingest", "--brokerz", "x"]);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected argument '--brokerz'"));
}

#[test]
fn bad_config_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "brokerz = \"x\"\n").unwrap();
    let mut c = lakepipe();
    c.args(["ingest", "--config", cfg.to_str().unwrap()]);
    fails_with(c, "unknown field `brokerz`");
    let mut c = lakepipe();
    c.args(["ingest", "--trigger-interval", "soonish"]);
    fails_with(c, "not a duration");
}

#[test]
fn topic_without_spec() {
    let mut c = lakepipe();
    c.args(["ingest", "--topics", "no_such_spec", "--lake", "/tmp/unused-lake"]);
    fails_with(c, "unknown topic `no_such_spec`");
}

#[tokio::test(flavor = "multi_thread")]
async fn topic_missing_on_broker() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("never_created");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, format!("[specs.{topic}]\nextends = \"log_events\"\n")).unwrap();
    let lake = dir.path().join("lake");
    let mut c = lakepipe();
    c.args(["ingest", "--once", "--config", cfg.to_str().unwrap(), "--brokers", &brokers(), "--lake", lake.to_str().unwrap(), "--topics", &topic]);
    fails_with(c, &format!("topic `{topic}` does not exist"));
    assert!(!lake.join(&topic).exists(), "no table may be created for a failed start");
}

#[test]
fn broker_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = lakepipe();
    c.args(["ingest", "--once", "--brokers", "127.0.0.1:9", "--lake", dir.path().join("lake").to_str().unwrap()]);
    fails_with(c, "cannot reach Kafka brokers at 127.0.0.1:9");
}

#[test]
fn bucket_missing() {
    let mut c = lakepipe();
    c.args(["ingest", "--once", "--brokers", &brokers(), "--lake", &format!("s3://{}/x", unique("nobucket").replace('_', "-"))]);
    fails_with(c, "does not exist");
}

#[test]
fn bucket_unreachable() {
    let mut c = lakepipe();
    c.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
    c.args(["ingest", "--once", "--brokers", &brokers(), "--lake", &format!("{}/x", s3_root())]);
    fails_with(c, "cannot reach the lake");
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_errors_are_clear() {
    let fx = Fixture::new(LakeKind::Local, "log_events", 1, "").await;
    fx.ingest_once();
    let out = fx.cmd("sql").arg("SELECT nope FROM no_table").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no_table"), "{stderr}");
}
