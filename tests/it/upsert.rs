//! Upsert semantics end to end: out-of-order updates, late records, deletes (flag and
//! tombstone), partition moves, every kind of dead letter, and `--once` idempotence; checked
//! through lakepipe's SQL and through Python `deltalake` and DuckDB's `delta` extension.

use std::collections::BTreeMap;

use serde_json::json;

use crate::harness::{produce_to_partition, Fixture, LakeKind, Msg};

fn txn(id: &str, ts: &str, status: &str, amount: &str) -> Msg {
    let body = format!(r#"{{"transaction_id":"{id}","user_id":"u1","amount":{amount},"currency":"EUR","status":"{status}","timestamp":"{ts}"}}"#);
    (Some(id.to_string()), Some(body))
}

fn delete(id: &str, ts: &str) -> Msg {
    (Some(id.to_string()), Some(json!({"transaction_id": id, "timestamp": ts, "_deleted": true}).to_string()))
}

/// Phase one, all to partition 0, offsets 0.. in this order.
fn phase_one() -> (Vec<Msg>, Vec<&'static str>) {
    let big = format!(r#"{{"transaction_id":"big","user_id":"u","amount":1,"currency":"EUR","status":"pending","timestamp":"2024-01-01T00:00:00Z","pad":"{}"}}"#, "x".repeat(3000));
    let msgs = vec![
        txn("t1", "2024-01-01T10:00:00Z", "pending", "10.50"),
        txn("t1", "2024-01-01T11:00:00Z", "completed", "10.50"),
        txn("t1", "2024-01-01T09:00:00Z", "failed", "99"), // late: loses to 11:00
        txn("t2", "2024-01-02T00:00:00Z", "pending", "5"),
        txn("t3", "2024-01-01T08:00:00Z", "pending", "1.25"),
        delete("t3", "2024-01-01T08:30:00Z"),
        txn("t4", "2024-01-01T08:00:00Z", "pending", "7"),
        (Some("t4".into()), None), // tombstone
        txn("t5", "2024-01-01T23:59:59Z", "pending", "3"),
        txn("t5", "2024-01-03T00:00:01+00:00", "completed", "3"), // moves to 2024-01-03
        txn("t6", "2024-01-01T12:00:00+02:00", "pending", "1234567890123456.78"),
        (Some("bad1".into()), Some("{not json".into())),
        (Some("bad2".into()), Some(r#"{"transaction_id":"bad2","user_id":"u","currency":"EUR","status":"pending","timestamp":1}"#.into())),
        (Some("bad3".into()), Some(r#"{"transaction_id":"bad3","user_id":"u","amount":"ten","currency":"EUR","status":"pending","timestamp":1}"#.into())),
        (Some("bad4".into()), Some(r#"{"transaction_id":"bad4","user_id":"u","amount":1,"currency":"EUR","status":"lost","timestamp":1}"#.into())),
        (Some("bad5".into()), Some(r#"{"transaction_id":"bad5","user_id":"u","amount":1,"currency":"EUR","status":"pending","timestamp":"yesterday"}"#.into())),
        (Some("bad6".into()), Some(r#"{"transaction_id":"bad6","user_id":"u","amount":-1,"currency":"EUR","status":"pending","timestamp":1}"#.into())),
        (Some("bad7".into()), Some(r#"{"transaction_id":"bad7","user_id":"u","amount":1,"currency":"eur","status":"pending","timestamp":1}"#.into())),
        (Some("bad8".into()), Some("[1,2,3]".into())),
        (None, None), // tombstone without a key
        (Some("big".into()), Some(big)),
    ];
    let kinds = vec![
        "malformed_json",
        "missing_field",
        "wrong_type",
        "invalid_enum",
        "bad_timestamp",
        "out_of_range",
        "invalid_format",
        "not_an_object",
        "bad_tombstone",
        "too_large",
    ];
    (msgs, kinds)
}

fn phase_two() -> Vec<Msg> {
    vec![
        txn("t1", "2024-01-01T10:30:00Z", "refunded", "1"),  // older than stored 11:00: stale
        txn("t2", "2024-01-02T06:00:00Z", "completed", "5"), // newer: update
        txn("t5", "2024-01-01T00:00:00Z", "failed", "3"),    // late: the row stays on 2024-01-03
        txn("t3", "2024-01-01T09:00:00Z", "completed", "2"), // re-insert after delete
        delete("t6", "2024-01-01T09:00:00Z"),                // older than the row (10:00Z): ignored
    ]
}

async fn upsert_semantics(kind: LakeKind) {
    let fx = Fixture::new(kind, "transactions", 2, "max_message_bytes = 2000").await;
    let (one, kinds) = phase_one();
    produce_to_partition(&fx.topic, 0, &one).await;
    // One record on partition 1, so two partitions carry offsets.
    produce_to_partition(&fx.topic, 1, &[txn("p1", "2024-01-05T00:00:00Z", "completed", "8")]).await;
    fx.ingest_once();

    let rows = fx.sql(&format!("SELECT transaction_id, status, CAST(amount AS VARCHAR) AS amount, CAST(date AS VARCHAR) AS date FROM {} ORDER BY transaction_id", fx.topic));
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r["transaction_id"].as_str().unwrap().to_string(), r["status"].as_str().unwrap().to_string(), r["date"].as_str().unwrap().to_string()))
        .collect();
    let want = vec![
        ("p1".to_string(), "completed".to_string(), "2024-01-05".to_string()),
        ("t1".into(), "completed".into(), "2024-01-01".into()),
        ("t2".into(), "pending".into(), "2024-01-02".into()),
        ("t5".into(), "completed".into(), "2024-01-03".into()),
        ("t6".into(), "pending".into(), "2024-01-01".into()),
    ];
    assert_eq!(got, want, "after phase one");
    let t6 = rows.iter().find(|r| r["transaction_id"] == "t6").unwrap();
    assert_eq!(t6["amount"].as_str().unwrap(), "1234567890123456.78", "decimals are exact");

    // Dead letters: one per bad record, with its kind, offset and raw payload.
    let dl = fx.sql(&format!("SELECT error_kind, _offset, payload_text, error_message FROM dead_letters WHERE _topic = '{}' ORDER BY _offset", fx.topic));
    let got_kinds: Vec<&str> = dl.iter().map(|r| r["error_kind"].as_str().unwrap()).collect();
    assert_eq!(got_kinds, kinds);
    let offsets: Vec<i64> = dl.iter().map(|r| r["_offset"].as_i64().unwrap()).collect();
    assert_eq!(offsets, (11..=20).collect::<Vec<i64>>());
    assert_eq!(dl[0]["payload_text"], "{not json");
    assert!(dl[2]["error_message"].as_str().unwrap().contains("amount"), "the message names the field: {}", dl[2]);

    // Phase two: stale, update, late partition move, re-insert, ignored old delete.
    let v1 = fx.sql(&format!("SELECT max(version) AS v FROM history('{}')", fx.topic))[0]["v"].as_i64().unwrap();
    produce_to_partition(&fx.topic, 0, &phase_two()).await;
    fx.ingest_once();
    // The change feed of phase two, however it was batched: t2 updated, t3 inserted, nothing else.
    let changes = fx.sql(&format!(
        "SELECT transaction_id, _change_type, status FROM changes('{}', {}) ORDER BY transaction_id, _change_type",
        fx.topic,
        v1 + 1
    ));
    let got: Vec<(String, String, String)> = changes
        .iter()
        .map(|r| (r["transaction_id"].as_str().unwrap().into(), r["_change_type"].as_str().unwrap().into(), r["status"].as_str().unwrap().into()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("t2".to_string(), "update_postimage".to_string(), "completed".to_string()),
            ("t2".into(), "update_preimage".into(), "pending".into()),
            ("t3".into(), "insert".into(), "completed".into()),
        ]
    );
    // Time travel back to the end of phase one.
    let before = fx.sql(&format!("SELECT transaction_id, status FROM as_of('{}', {v1}) ORDER BY transaction_id", fx.topic));
    let ids: Vec<&str> = before.iter().map(|r| r["transaction_id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["p1", "t1", "t2", "t5", "t6"]);
    assert_eq!(before[2]["status"], "pending");
    let rows = fx.sql(&format!("SELECT transaction_id, status, CAST(date AS VARCHAR) AS date, _partition, _offset FROM {} ORDER BY transaction_id", fx.topic));
    let got: BTreeMap<String, (String, String)> = rows
        .iter()
        .map(|r| (r["transaction_id"].as_str().unwrap().to_string(), (r["status"].as_str().unwrap().to_string(), r["date"].as_str().unwrap().to_string())))
        .collect();
    let want: BTreeMap<String, (String, String)> = [
        ("p1", "completed", "2024-01-05"),
        ("t1", "completed", "2024-01-01"),
        ("t2", "completed", "2024-01-02"),
        ("t3", "completed", "2024-01-01"),
        ("t5", "completed", "2024-01-03"),
        ("t6", "pending", "2024-01-01"),
    ]
    .iter()
    .map(|(k, s, d)| (k.to_string(), (s.to_string(), d.to_string())))
    .collect();
    assert_eq!(got, want, "after phase two");
    let t2 = rows.iter().find(|r| r["transaction_id"] == "t2").unwrap();
    assert_eq!((t2["_partition"].as_i64(), t2["_offset"].as_i64()), (Some(0), Some(22)), "provenance of the winning record");

    // --once again: nothing new, so no new version in either table.
    let v_data = fx.table_version(&fx.topic);
    let v_dead = fx.table_version("dead_letters");
    fx.ingest_once();
    assert_eq!(fx.table_version(&fx.topic), v_data, "a second --once run must not commit");
    assert_eq!(fx.table_version("dead_letters"), v_dead);
    let dl_count = fx.sql(&format!("SELECT count(*) AS n FROM dead_letters WHERE _topic = '{}'", fx.topic));
    assert_eq!(dl_count[0]["n"], 10);

    // freshness(): offsets, the broker's end and the lag per partition; the newest event per date.
    let fresh = fx.sql(&format!(
        "SELECT partition, committed_offset, high_watermark, lag FROM freshness() WHERE scope = 'partition' AND table_name = '{}' AND consumer_group = '{}' ORDER BY partition",
        fx.topic, fx.group
    ));
    let got: Vec<(i64, i64, i64, i64)> = fresh
        .iter()
        .map(|r| (r["partition"].as_i64().unwrap(), r["committed_offset"].as_i64().unwrap(), r["high_watermark"].as_i64().unwrap(), r["lag"].as_i64().unwrap()))
        .collect();
    assert_eq!(got, vec![(0, 26, 26, 0), (1, 1, 1, 0)]);
    let dates = fx.sql(&format!(
        "SELECT CAST(date AS VARCHAR) AS d, CAST(newest_event_time AS VARCHAR) AS newest, rows FROM freshness() WHERE scope = 'date' AND table_name = '{}' ORDER BY date",
        fx.topic
    ));
    assert_eq!(dates.len(), 4, "{dates:?}");
    assert_eq!(dates[2]["d"], "2024-01-03");
    assert!(dates[2]["newest"].as_str().unwrap().starts_with("2024-01-03T00:00:01"), "{dates:?}");

    // The audit agrees: every committed message is in the lake exactly once.
    let out = fx.cmd("audit").args(["--topics", &fx.topic, "--group", &fx.group]).output().unwrap();
    assert!(out.status.success(), "audit: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK: exactly once"));

    // Readers we did not write see exactly the same rows.
    let readers: &[&str] = if kind == LakeKind::Local { &["deltalake", "duckdb"] } else { &["deltalake"] };
    for reader in readers {
        let mut rows = fx.cross_read(reader, &fx.topic, &["transaction_id", "status", "date", "amount"]);
        rows.sort_by(|a, b| a["transaction_id"].cmp(&b["transaction_id"]));
        let got: BTreeMap<String, (String, String)> = rows
            .iter()
            .map(|r| (r["transaction_id"].clone().unwrap(), (r["status"].clone().unwrap(), r["date"].clone().unwrap())))
            .collect();
        assert_eq!(got, want, "{reader} disagrees");
        let t6 = rows.iter().find(|r| r["transaction_id"].as_deref() == Some("t6")).unwrap();
        assert_eq!(t6["amount"].as_deref(), Some("1234567890123456.78"), "{reader}: exact decimal");
        let dead = fx.cross_read(reader, "dead_letters", &["_topic", "_offset"]);
        assert_eq!(dead.iter().filter(|r| r["_topic"].as_deref() == Some(fx.topic.as_str())).count(), 10, "{reader}: dead letters");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upsert_semantics_local() {
    upsert_semantics(LakeKind::Local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upsert_semantics_s3() {
    upsert_semantics(LakeKind::S3).await;
}
