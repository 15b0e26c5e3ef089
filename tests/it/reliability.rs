//! `--once` finishes or fails: every codec producers use is read, a stored offset outside the
//! broker's log stops the run with both offsets named, a member that gets no partitions reports
//! success only with the whole topic in the lake, and a topic keyed on a timestamp upserts in place.

use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, Instant};

use lakepipe::enrich::Provenance;
use lakepipe::lake::commit::{OffsetKey, OffsetRange};
use lakepipe::lake::upsert::TopicTable;
use lakepipe::lake::Lake;

use crate::harness::{brokers, python, Fixture, LakeKind};
use crate::kill::{assert_matches, kill_randomly, produce_model, spawn_ingest, KAFKA_CONFIG};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Produce with Python `confluent-kafka` (a client we did not write), one compression codec
/// per partition: `(partition, codec, count)`.
fn produce_compressed(topic: &str, plan: &[(i32, &str, usize)]) {
    let script = r#"
import json, sys
from confluent_kafka import Producer
brokers, topic, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
for partition, codec, count in plan:
    p = Producer({"bootstrap.servers": brokers, "compression.type": codec, "linger.ms": 20, "enable.idempotence": True})
    for i in range(count):
        key = f"{codec}-{i:05d}"
        body = {"transaction_id": key, "user_id": "u", "amount": 1.5, "currency": "EUR", "status": "pending", "timestamp": 1750000000000 + i}
        p.produce(topic, json.dumps(body).encode(), key=key.encode(), partition=partition)
    assert p.flush(30) == 0, "unacknowledged messages"
"#;
    let plan = serde_json::to_string(plan).unwrap();
    let out = std::process::Command::new(python())
        .args(["-c", script, &brokers(), topic, &plan])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "confluent-kafka producer failed: {}",
        stderr(&out)
    );
}

/// zstd, lz4, snappy and gzip batches all reach the lake; zstd used to stall its partition
/// (the default librdkafka build lacks it) while `--once` exited 0.
#[tokio::test(flavor = "multi_thread")]
async fn every_producer_codec_is_read() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 4, "").await;
    let plan = [
        (0, "zstd", 700),
        (1, "lz4", 600),
        (2, "snappy", 500),
        (3, "gzip", 400),
    ];
    produce_compressed(&fx.topic, &plan);
    fx.ingest_once();
    let rows = fx.sql(&format!("SELECT _partition AS p, count(*) AS n, count(DISTINCT transaction_id) AS k FROM {} GROUP BY _partition ORDER BY p", fx.topic));
    let got: Vec<(i64, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["p"].as_i64().unwrap(),
                r["n"].as_i64().unwrap(),
                r["k"].as_i64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(i64, i64, i64)> = plan
        .iter()
        .map(|(p, _, n)| (*p as i64, *n as i64, *n as i64))
        .collect();
    assert_eq!(got, want, "every record of every codec, once");
}

/// Store an offset for partition 0 in the lake as an earlier run against another log would
/// have: an offsets-only commit (no rows).
async fn store_offset(fx: &Fixture, end: i64) {
    let lake = Lake::parse(&fx.lake).unwrap();
    let cfg =
        lakepipe::config::Config::load(Some(fx.config.as_path()), Vec::new(), &Default::default())
            .unwrap();
    let spec = cfg.all_specs().unwrap()[&fx.topic].clone();
    let mut table = TopicTable::open(&lake, spec).await.unwrap();
    let key = OffsetKey {
        source: "kafka".into(),
        group: fx.group.clone(),
        topic: fx.topic.clone(),
        partition: 0,
    };
    table
        .upsert(
            &[],
            &[OffsetRange {
                key,
                start: None,
                end,
            }],
            &Provenance::now("kafka", &fx.topic),
        )
        .await
        .unwrap();
}

/// The lake's offset is past the partition's end (a new cluster or a re-created topic behind
/// the same `--source-name`): the run stops at once, naming the partition and both offsets,
/// instead of waiting for offsets that will never come and exiting 0.
#[tokio::test(flavor = "multi_thread")]
async fn stored_offset_past_the_log_end_is_refused() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 1, "").await;
    produce_compressed(&fx.topic, &[(0, "none", 50)]);
    store_offset(&fx, 5_000).await;
    let started = Instant::now();
    let out = fx.cmd("ingest").arg("--once").output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "must fail:\n{err}");
    // The end named is the broker's; tansu 0.6 can list less than 50 when no fetch response
    // has given the exact end yet.
    assert!(
        err.contains(&format!(
            "{}/0: the lake's offset 5000 is past the log end",
            fx.topic
        )),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "it must stop at once, not at a deadline: {:?}",
        started.elapsed()
    );
    // Nothing was written: the offsets stay where they were.
    let n = fx.sql(&format!("SELECT count(*) AS n FROM {}", fx.topic))[0]["n"]
        .as_i64()
        .unwrap();
    assert_eq!(n, 0);
}

/// `--once` in a group whose other members are continuous ingests: the range assignor gives
/// the topic's one partition to whichever member sorts first, so the `--once` member usually
/// gets nothing. It must not report success until the whole topic is in the lake (committed by
/// whichever member holds it), and must not fail just because another member did the work.
#[tokio::test(flavor = "multi_thread")]
async fn once_beside_other_members_succeeds_only_with_the_whole_topic_in_the_lake() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 1, KAFKA_CONFIG).await;
    let model = produce_model(&fx, 1, 200).await;
    let log = std::env::temp_dir().join(format!("{}.log", fx.topic));
    let holders = [spawn_ingest(&fx, &log), spawn_ingest(&fx, &log)];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("assigned;")
    {
        assert!(
            Instant::now() < deadline,
            "the continuous members were never assigned (log {})",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = fx
        .cmd("ingest")
        .arg("--once")
        .args(["--once-timeout", "60s"])
        .output()
        .unwrap();
    // Checked before the holders stop: what `--once` reported must already be in the lake.
    let err = stderr(&out);
    assert!(
        out.status.success(),
        "--once must succeed once the others committed the topic:\n{err}"
    );
    assert_matches(&fx, &model);
    drop(holders);
}

/// The `--once` of the issue: a continuous ingest killed with SIGKILL at random moments, many
/// times, without waiting for it to own partitions, then `--once` at once. The dead members
/// still hold partitions (until their session times out and a join evicts them), so this run
/// must either read everything or fail naming what another member holds: exiting 0 with data
/// unread is the failure this guards. After the sessions time out, `--once` must read
/// everything and the table must equal the model.
#[tokio::test(flavor = "multi_thread")]
async fn once_after_random_kills_reads_everything() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 4, KAFKA_CONFIG).await;
    let model = produce_model(&fx, 4, 1500).await;
    let log = std::env::temp_dir().join(format!("{}.log", fx.topic));
    kill_randomly(&fx, &log, 8).await;
    let out = fx
        .cmd("ingest")
        .arg("--once")
        .args(["--trigger-interval", "500ms", "--once-timeout", "20s"])
        .output()
        .unwrap();
    let err = stderr(&out);
    if out.status.success() {
        eprintln!("--once right after the kills was given every partition");
        assert_matches(&fx, &model);
    } else {
        assert!(
            err.contains("--once did not reach the end of every partition")
                && (err.contains("held by another member") || err.contains("no partitions")),
            "{err}"
        );
        eprintln!(
            "--once right after the kills failed as it must: {}",
            err.lines().last().unwrap_or_default()
        );
    }
    // The dead members' sessions (6 s) time out; the next join evicts them.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let out = fx
        .cmd("ingest")
        .arg("--once")
        .args(["--trigger-interval", "500ms"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "--once after the sessions timed out failed:\n{}",
        stderr(&out)
    );
    assert_matches(&fx, &model);
}

/// A topic keyed on a timestamp: the second run's versions replace the first's (statistics of
/// a timestamp column are ISO text, the batch's keys microseconds; they used to never match,
/// so every update became an insert).
#[tokio::test(flavor = "multi_thread")]
async fn timestamp_keys_upsert_in_place() {
    let fx = Fixture::new(LakeKind::Local, "sensor_data", 2, "").await;
    let spec = format!(
        "[specs.{}]\nkey = [\"ts\"]\nprecombine = \"seq\"\npartition_time = \"ts\"\nfields = [\n  {{ name = \"ts\", required = true, type = \"timestamp\" }},\n  {{ name = \"seq\", required = true, type = \"long\" }},\n]\n",
        fx.topic
    );
    std::fs::write(&fx.config, spec).unwrap();
    let times = [
        "2026-01-01T10:00:00.000001Z",
        "2026-01-01T10:00:00.000999Z",
        "2026-01-01T10:00:00.5Z",
        "2026-01-02T00:00:00Z",
        "2025-12-31T23:59:59.999999Z",
    ];
    for seq in [1, 2] {
        let msgs: Vec<crate::harness::Msg> = times
            .iter()
            .map(|t| {
                (
                    None,
                    Some(serde_json::json!({"ts": t, "seq": seq}).to_string()),
                )
            })
            .collect();
        crate::harness::produce_to_partition(&fx.topic, seq - 1, &msgs).await;
        fx.ingest_once();
    }
    let rows = fx.sql(&format!(
        "SELECT CAST(ts AS VARCHAR) AS ts, seq FROM {} ORDER BY ts",
        fx.topic
    ));
    let got: BTreeMap<String, i64> = rows
        .iter()
        .map(|r| {
            (
                crate::harness::canonical(&r["ts"]),
                r["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows.len(),
        times.len(),
        "one row per timestamp key: {rows:?}"
    );
    assert!(
        got.values().all(|s| *s == 2),
        "every key at its second version: {got:?}"
    );
}
