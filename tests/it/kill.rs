//! Crash safety and scale-out: `kill -9` during ingest, repeatedly, then a restart; and two
//! processes in one consumer group. The table must equal the model exactly: no loss, no
//! duplicates, every dead letter once.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use lakepipe::generate::{generate, GenerateOptions};
use rand::{Rng, SeedableRng};

use crate::harness::{produce_to_partition_on, Fixture, LakeKind, Model, Msg};

/// Members that die time out of the group after 6 s.
pub const KAFKA_CONFIG: &str = "[kafka]\n\"session.timeout.ms\" = \"6000\"\n";

/// Generated transactions for one partition, with keys unique to that partition.
fn partition_messages(partition: i32, count: usize) -> Vec<Msg> {
    partition_messages_from(partition, count, 1000 + partition as u64)
}

/// [`partition_messages`] from another seed: more versions of (some of) the same keys.
pub fn partition_messages_from(partition: i32, count: usize, seed: u64) -> Vec<Msg> {
    let opts = GenerateOptions {
        shape: "transactions".into(),
        count,
        update_ratio: 0.3,
        late_ratio: 0.1,
        delete_ratio: 0.05,
        invalid_ratio: 0.03,
        days: 3,
        seed,
    };
    generate(&opts, 1_750_000_000_000)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let k = k.map(|k| String::from_utf8(k).unwrap().replace("txn_", &format!("p{partition}_txn_")));
            let v = v.map(|v| String::from_utf8(v).unwrap().replace("txn_", &format!("p{partition}_txn_")));
            (k, v)
        })
        .collect()
}

pub async fn produce_model(fx: &Fixture, partitions: i32, per_partition: usize) -> Model {
    let mut model = Model::default();
    for p in 0..partitions {
        let msgs = partition_messages(p, per_partition);
        produce_to_partition_on(&fx.brokers, &fx.topic, p, &msgs).await;
        model.apply("transactions", p, 0, &msgs);
    }
    model
}

/// Compare the lake with the model, through lakepipe's SQL and through Python `deltalake`.
pub fn assert_matches(fx: &Fixture, model: &Model) {
    let rows = fx.sql(&format!(
        "SELECT transaction_id, status, CAST(timestamp AS VARCHAR) AS ts FROM {} ORDER BY transaction_id",
        fx.topic
    ));
    let keys: Vec<&str> = rows.iter().map(|r| r["transaction_id"].as_str().unwrap()).collect();
    let distinct: BTreeSet<&str> = keys.iter().copied().collect();
    assert_eq!(keys.len(), distinct.len(), "duplicate keys in the table");
    let got: BTreeMap<String, (String, i64)> = rows
        .iter()
        .map(|r| {
            let ts = chrono::DateTime::parse_from_rfc3339(&crate::harness::canonical(&r["ts"])).unwrap().timestamp_micros();
            (r["transaction_id"].as_str().unwrap().to_string(), (r["status"].as_str().unwrap().to_string(), ts))
        })
        .collect();
    let want: BTreeMap<String, (String, i64)> =
        model.rows.iter().map(|(k, (ts, body))| (k.clone(), (body["status"].as_str().unwrap().to_string(), *ts))).collect();
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).take(5).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).take(5).collect();
    assert_eq!(got.len(), want.len(), "row count; missing e.g. {missing:?}, extra e.g. {extra:?}");
    assert!(got == want, "table differs from the model; missing e.g. {missing:?}, extra e.g. {extra:?}");

    let dead = fx.sql(&format!("SELECT _partition, _offset FROM dead_letters WHERE _topic = '{}'", fx.topic));
    let dead: Vec<(i32, i64)> = dead.iter().map(|r| (r["_partition"].as_i64().unwrap() as i32, r["_offset"].as_i64().unwrap())).collect();
    let dead_set: BTreeSet<(i32, i64)> = dead.iter().copied().collect();
    assert_eq!(dead.len(), dead_set.len(), "a dead letter was written twice");
    assert_eq!(dead_set, model.invalid.iter().copied().collect::<BTreeSet<_>>(), "dead letters differ");

    let cross = fx.cross_read("deltalake", &fx.topic, &["transaction_id", "status"]);
    let cross: BTreeMap<String, String> = cross.into_iter().map(|r| (r["transaction_id"].clone().unwrap(), r["status"].clone().unwrap())).collect();
    let want_status: BTreeMap<String, String> = want.iter().map(|(k, (s, _))| (k.clone(), s.clone())).collect();
    assert!(cross == want_status, "Python deltalake disagrees ({} rows vs {})", cross.len(), want_status.len());
}

/// Wait until the lake holds every row and dead letter of the model.
pub async fn converge(fx: &Fixture, model: &Model, log: &std::path::Path, within: Duration) {
    let want = model.rows.len() as i64;
    let deadline = Instant::now() + within;
    // The tables exist once the ingest has started.
    while !std::fs::read_to_string(log).unwrap_or_default().contains("ingest started") {
        assert!(Instant::now() < deadline, "the ingest never started (log {})", log.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let n = fx.sql_now(&format!("SELECT count(*) AS n FROM {}", fx.topic))[0]["n"].as_i64().unwrap();
        let dead = fx.sql_now(&format!("SELECT count(*) AS n FROM dead_letters WHERE _topic = '{}'", fx.topic))[0]["n"].as_i64().unwrap();
        if n == want && dead == model.invalid.len() as i64 {
            return;
        }
        assert!(Instant::now() < deadline, "no convergence: {n} of {want} rows (log {})", log.display());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `kill -9` a continuous ingest `times` times, each after 0.2–2.5 s (a random seed, printed),
/// without waiting for it to own partitions.
pub async fn kill_randomly(fx: &Fixture, log: &std::path::Path, times: usize) {
    use rand::{Rng, SeedableRng};
    let seed: u64 = rand::random();
    eprintln!("random kills: seed {seed}, log {}", log.display());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..times {
        let mut child = spawn_ingest(fx, log);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..2500))).await;
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

pub fn spawn_ingest(fx: &Fixture, log: &std::path::Path) -> crate::harness::Reaped {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    fx.cmd("ingest")
        .args(["--trigger-interval", "100ms", "--max-batch-records", "250"])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map(crate::harness::Reaped::new)
        .unwrap()
}

pub fn count_in(log: &std::path::Path, needle: &str) -> usize {
    std::fs::read_to_string(log).map(|t| t.matches(needle).count()).unwrap_or(0)
}

/// `kill -9` an ingest `kills` times; with `feed`, that many more records arrive on one
/// partition just before each kill, so that every process is killed with work in hand.
async fn kill_nine(kind: LakeKind, per_partition: usize, kills: usize, feed: usize) {
    let fx = Fixture::new(kind, "transactions", 3, KAFKA_CONFIG).await;
    let mut model = produce_model(&fx, 3, per_partition).await;
    let mut next_offset = [per_partition as i64; 3];
    let log = std::env::temp_dir().join(format!("{}.log", fx.topic));
    let seed: u64 = rand::random();
    eprintln!("kill -9 test: seed {seed}, log {}", log.display());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..kills {
        let assigned_before = count_in(&log, "assigned;");
        let mut child = spawn_ingest(&fx, &log);
        // Wait until this process owns partitions (a killed member must first time out of the
        // group), then kill it at a random moment of its work.
        let deadline = Instant::now() + Duration::from_secs(60);
        while count_in(&log, "assigned;") == assigned_before {
            assert!(Instant::now() < deadline, "ingest was never assigned partitions (log {})", log.display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let wait = rng.gen_range(300..6500);
        if feed > 0 {
            let p = i % 3;
            let more = partition_messages_from(p as i32, feed, 5000 + i as u64);
            produce_to_partition_on(&fx.brokers, &fx.topic, p as i32, &more).await;
            model.apply("transactions", p as i32, next_offset[p], &more);
            next_offset[p] += more.len() as i64;
        }
        tokio::time::sleep(Duration::from_millis(wait)).await;
        // SIGKILL: no chance to flush or clean up.
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!("kill {i} {wait} ms after assignment; {} batches committed so far", count_in(&log, "batch committed"));
    }
    let committed_before_restart = fx.sql(&format!("SELECT count(*) AS n FROM {}", fx.topic))[0]["n"].as_i64().unwrap();
    eprintln!("rows committed before the final restart: {committed_before_restart}");
    assert!(committed_before_restart > 0, "the killed runs committed nothing; the test would prove little (log {})", log.display());
    fx.ingest_once();
    assert_matches(&fx, &model);
    // A further run changes nothing.
    let v = fx.table_version(&fx.topic);
    fx.ingest_once();
    assert_eq!(fx.table_version(&fx.topic), v);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_nine_local() {
    kill_nine(LakeKind::Local, 3000, 4, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_nine_s3() {
    kill_nine(LakeKind::S3, 1500, 3, 0).await;
}

async fn two_consumers(kind: LakeKind) {
    let fx = Fixture::new(kind, "transactions", 4, KAFKA_CONFIG).await;
    let log = std::env::temp_dir().join(format!("{}.log", fx.topic));
    let a = spawn_ingest(&fx, &log);
    let b = spawn_ingest(&fx, &log);
    // Let both join the group before data arrives, so both get partitions.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let model = produce_model(&fx, 4, 1000).await;
    converge(&fx, &model, &log, Duration::from_secs(120)).await;
    let mut summaries = Vec::new();
    for child in [a, b] {
        // SIGTERM: a graceful stop that commits the open batch.
        unsafe { libc_kill(child.id() as i32, 15) };
        let out = child.take().wait_with_output().unwrap();
        assert!(out.status.success(), "ingest did not stop cleanly (log {})", log.display());
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        summaries.push(summary);
    }
    for s in &summaries {
        assert!(s["consumed"].as_u64().unwrap() > 0, "both group members must have ingested: {summaries:?}");
    }
    assert_matches(&fx, &model);
}

extern "C" {
    #[link_name = "kill"]
    pub fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_consumers_local() {
    two_consumers(LakeKind::Local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_consumers_s3() {
    two_consumers(LakeKind::S3).await;
}

/// The soak: `kill -9` fifty times (`LAKEPIPE_DEV_SOAK_KILLS`) at random moments against an S3
/// lake, with 300 more records arriving before each kill, then `--once` and the row-by-row
/// comparison. Run by `scripts/soak.sh`; the regular
/// suite runs the shorter tests above.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a soak of many minutes: run scripts/soak.sh"]
async fn kill_nine_soak() {
    let kills = std::env::var("LAKEPIPE_DEV_SOAK_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    kill_nine(LakeKind::S3, 1000, kills, 300).await;
}
