//! `--once` as a scheduled job uses it: it ends beside a producer that keeps writing, owing
//! the data up to the end it saw at the start, and a run interrupted by SIGTERM exits non-zero
//! unless it had reached that end.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{send_with, Fixture, LakeKind, Reaped};
use crate::kill::{
    assert_matches, kill_randomly, partition_messages_from, produce_model, spawn_ingest,
    KAFKA_CONFIG,
};

/// The keys of the rows in the fixture's table now.
fn keys_in_lake(fx: &Fixture) -> BTreeSet<String> {
    fx.sql_now(&format!("SELECT transaction_id FROM {}", fx.topic))
        .iter()
        .map(|r| r["transaction_id"].as_str().unwrap().to_string())
        .collect()
}

/// Wait up to 90 s for `needle` in the log; fail with `what` (and the log's path) otherwise.
async fn wait_for_line(log: &std::path::Path, needle: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(needle)
    {
        assert!(Instant::now() < deadline, "{what} (log {})", log.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `--once` with `once_group_wait = wait`: it must succeed; says whether it left the group.
fn once_with_group_wait(fx: &Fixture, wait: &str, args: &[&str]) {
    let out = fx
        .cmd("ingest")
        .arg("--once")
        .args(args)
        .env("LAKEPIPE_ONCE_GROUP_WAIT", wait)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "--once (once_group_wait {wait}) failed:\n{err}"
    );
    if err.contains("reading every partition directly") {
        eprintln!(
            "the group gave --once nothing; it left the group and read every partition itself"
        );
    } else {
        eprintln!("the group gave --once its partitions");
    }
}

/// Wait for the child with a bound; kill it and fail if the bound passes.
fn wait_bounded(child: Reaped, bound: Duration, what: &str) -> std::process::Output {
    let mut child = child;
    let deadline = Instant::now() + bound;
    while child.alive() {
        assert!(
            Instant::now() < deadline,
            "{what} was still running after {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.take().wait_with_output().unwrap()
}

/// A producer writes 200 records a second to the partition for the whole run. `--once` must
/// end (its end is the one it saw at the start, not the moving one), exit 0, and hold
/// everything produced before it started.
#[tokio::test(flavor = "multi_thread")]
async fn once_ends_beside_a_live_producer() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 1, KAFKA_CONFIG).await;
    let model = produce_model(&fx, 1, 3000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (stop, brokers, topic) = (stop.clone(), fx.brokers.clone(), fx.topic.clone());
        tokio::spawn(async move {
            let p: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("linger.ms", "5")
                .create()
                .unwrap();
            // Other keys than the model's (another seed), 10 every 50 ms: 200 a second.
            let live = partition_messages_from(0, 20_000, 77);
            for chunk in live.chunks(10) {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                send_with(&p, &topic, 0, chunk).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let child = fx
        .cmd("ingest")
        .arg("--once")
        .args(["--trigger-interval", "500ms", "--once-timeout", "30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(Reaped::new)
        .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        wait_bounded(
            child,
            Duration::from_secs(90),
            "--once beside a live producer",
        )
    })
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    producer.await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "--once beside a live producer must succeed:\n{err}"
    );
    let have = keys_in_lake(&fx);
    let missing: Vec<&String> = model
        .rows
        .keys()
        .filter(|k| !have.contains(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "rows produced before the run are missing, e.g. {missing:?}"
    );
}

/// SIGTERM while `--once` still has its data to read: what was read is committed and
/// the run exits non-zero, naming why. Exit 0 is allowed only with everything in the lake.
/// The next `--once` reads the rest, and the table equals the model.
#[tokio::test(flavor = "multi_thread")]
async fn once_interrupted_by_sigterm_exits_non_zero() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 2, KAFKA_CONFIG).await;
    let model = produce_model(&fx, 2, 10_000).await;
    let log = std::env::temp_dir().join(format!("{}.log", fx.topic));
    let child = fx
        .cmd("ingest")
        .arg("--once")
        .args(["--trigger-interval", "500ms", "--max-batch-records", "300"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map(Reaped::new)
        .unwrap();
    // The run has started and joins the group: all of its data is still unread.
    wait_for_line(&log, "ingest started", "the ingest never started").await;
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = tokio::task::spawn_blocking(move || {
        wait_bounded(child, Duration::from_secs(60), "--once after SIGTERM")
    })
    .await
    .unwrap();
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    if out.status.success() {
        // Only a run that had reached its end may say so.
        assert_matches(&fx, &model);
        eprintln!("the run had finished before SIGTERM arrived");
    } else if std::os::unix::process::ExitStatusExt::signal(&out.status) == Some(libc::SIGTERM) {
        // The signal came before the handler was installed: the default action, also non-zero.
        eprintln!("SIGTERM ended the process before its handler was installed");
    } else {
        assert!(
            err.contains("interrupted"),
            "the error must say the run was interrupted:\n{err}"
        );
        let have = keys_in_lake(&fx);
        assert!(
            have.len() < model.rows.len(),
            "a run that read everything exited non-zero:\n{err}"
        );
    }
    fx.ingest_once();
    assert_matches(&fx, &model);
}

/// The kill sequence that left tansu 0.6's coordinator assigning nothing for 300 s: a
/// continuous ingest `kill -9`ed 12 times at random moments, then `--once` at once. The dead
/// members hold partitions until their sessions time out, and the coordinator may assign
/// nothing for minutes. `--once` must not depend on it: after `once_group_wait` with nothing
/// assigned and nothing moving, it reads every partition itself from the lake's offsets, and
/// the table equals the model.
///
/// It was ignored for a while: in one of four full runs (random-kill seed
/// 8240776160044099405) `--once` exited 0 with a partition's tail unread, and in others it
/// failed after `once_timeout`. The causes, each now a unit test in `ingest::tests` that failed
/// before its fix: another member's partition counted as done at tansu's low listed end, and a
/// gone member holding the rest of the topic after this member's own partitions were done.
/// With the first fix, 14 of 15 runs were exact and the other failed after `once_timeout`
/// (the second case); with both, 8 of 8.
#[tokio::test(flavor = "multi_thread")]
async fn once_reads_every_partition_itself_when_the_group_assigns_nothing() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 2, KAFKA_CONFIG).await;
    let model = produce_model(&fx, 2, 500).await;
    let log = std::env::temp_dir().join(format!("{}.log", fx.topic));
    kill_randomly(&fx, &log, 12).await;
    once_with_group_wait(
        &fx,
        "5s",
        &["--trigger-interval", "500ms", "--once-timeout", "60s"],
    );
    assert_matches(&fx, &model);
}

/// The path above, beside a live member: a continuous member holds the topic's one partition
/// (the range assignor usually keeps it there when `--once` joins), and with
/// `once_group_wait = 0s` a `--once` that is given nothing leaves the group at once and reads
/// the partition itself while the member reads and commits it too. The lake's fences must
/// keep the result exact.
#[tokio::test(flavor = "multi_thread")]
async fn once_outside_the_group_beside_a_member_is_exact() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 1, KAFKA_CONFIG).await;
    let model = produce_model(&fx, 1, 3000).await;
    let log = std::env::temp_dir().join(format!("{}.log", fx.topic));
    let member = spawn_ingest(&fx, &log);
    wait_for_line(&log, "assigned;", "the member was never assigned").await;
    once_with_group_wait(
        &fx,
        "0s",
        &["--trigger-interval", "200ms", "--max-batch-records", "250"],
    );
    assert_matches(&fx, &model);
    drop(member);
    assert_matches(&fx, &model);
}
