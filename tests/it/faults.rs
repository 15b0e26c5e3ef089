//! Faults from outside the process, during a continuous ingest: S3 that hangs, S3 that drops
//! connections, a broker that hangs. Each ends with a row-by-row comparison against the model
//! and `lakepipe audit`: 0 rows lost, 0 duplicated. The ingest may ride a fault out or exit; if
//! it exits, it must exit non-zero and name the failing service.
//!
//! S3 faults go through a TCP proxy of the test's own between lakepipe and the shared
//! LocalStack, so no other test sees them; the broker fault uses a tansu of the test's own.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{Fixture, LakeKind, Model, Reaped};
use crate::kill::{assert_matches, converge, produce_model, spawn_ingest, KAFKA_CONFIG};

const PASS: u8 = 0;
/// Connections stay open; nothing is forwarded either way.
const HANG: u8 = 1;
/// Every connection, open or new, is closed at once.
const DROP: u8 = 2;

/// A TCP proxy whose behaviour the test switches: pass, hang or drop.
struct FaultProxy {
    port: u16,
    mode: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    async fn start(upstream: String) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(PASS));
        let m = mode.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (m, upstream) = (m.clone(), upstream.clone());
                tokio::spawn(async move {
                    if m.load(Ordering::SeqCst) == DROP {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pipe(cr, sw, m.clone()) => {}
                        _ = pipe(sr, cw, m.clone()) => {}
                    }
                });
            }
        });
        FaultProxy { port, mode, task }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            match mode.load(Ordering::SeqCst) {
                HANG => tokio::time::sleep(Duration::from_millis(50)).await,
                DROP => return,
                _ => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Whether the table reaches the model's row count within `within`, while the ingest runs.
async fn rows_while_alive(
    fx: &Fixture,
    model: &Model,
    child: &mut Reaped,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    while child.alive() && Instant::now() < deadline {
        if fx.sql_now(&format!("SELECT count(*) AS n FROM {}", fx.topic))[0]["n"]
            .as_i64()
            .unwrap()
            == model.rows.len() as i64
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// `lakepipe audit` finds every broker record in the lake exactly once.
fn audit_clean(fx: &Fixture) {
    let out = fx
        .cmd("audit")
        .args(["--json", "--topics", &fx.topic, "--group", &fx.group])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit found a problem:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Drain what is left with `--once` after a fault. tansu 0.6's group coordinator can stop
/// assigning partitions for minutes after a broker hang or a member killed mid-rebalance
/// (tansu-specific; Kafka expires the dead member after its session): then `--once` must
/// fail loudly rather than report success, and the broker, restarted on its persistent
/// storage, forms the group again. Returns whether the restart was needed.
fn drain_after_fault(fx: &Fixture, broker: &mut crate::harness::Tansu) -> bool {
    let out = fx
        .cmd("ingest")
        .arg("--once")
        .args(["--trigger-interval", "500ms", "--once-timeout", "30s"])
        .output()
        .unwrap();
    if out.status.success() {
        return false;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--once did not reach the end of every partition"),
        "--once failed for another reason:\n{err}"
    );
    eprintln!("tansu assigned no partitions after the fault; restarting it on its storage (tansu-specific)");
    broker.kill();
    broker.restart();
    fx.ingest_once();
    true
}

/// Stop the ingest with SIGTERM; if the fault made it exit already, it must have exited
/// non-zero naming `service`. Returns whether it rode the fault out.
fn stop_ingest(child: Reaped, service: &[&str], log: &std::path::Path) -> bool {
    let mut child = child.take();
    if let Ok(Some(status)) = child.try_wait() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            !status.success(),
            "the ingest exited 0 during a fault (log {})",
            log.display()
        );
        let last = text
            .lines()
            .rev()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default();
        assert!(
            service.iter().any(|s| last.contains(s)),
            "the ingest exited without naming {service:?}: {last:?} (log {})",
            log.display()
        );
        return false;
    }
    unsafe { crate::kill::libc_kill(child.id() as i32, 15) };
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "the ingest did not stop cleanly after the fault (log {})",
        log.display()
    );
    true
}

/// Produce in two halves, with the S3 fault between; then finish with `--once`.
async fn s3_fault(mode: u8, fault_for: Duration) {
    let fx = Fixture::new(LakeKind::S3, "transactions", 3, KAFKA_CONFIG).await;
    let proxy = FaultProxy::start(
        std::env::var("AWS_ENDPOINT_URL")
            .unwrap()
            .trim_start_matches("http://")
            .to_string(),
    )
    .await;
    let log = std::env::temp_dir().join(format!("{}.log", fx.topic));
    let mut model = produce_model(&fx, 3, 800).await;
    let child = {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        fx.cmd("ingest")
            .args(["--trigger-interval", "200ms", "--max-batch-records", "300"])
            .env("AWS_ENDPOINT_URL", proxy.endpoint())
            .stdout(std::process::Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map(Reaped::new)
            .unwrap()
    };
    // The fault starts while the first half is still being committed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("batch committed")
    {
        assert!(
            Instant::now() < deadline,
            "nothing committed before the fault (log {})",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.set(mode);
    // More data arrives during the fault.
    let second = crate::kill::partition_messages_from(0, 400, 9);
    crate::harness::produce_to_partition_on(&fx.brokers, &fx.topic, 0, &second).await;
    model.apply("transactions", 0, 800, &second);
    tokio::time::sleep(fault_for).await;
    proxy.set(PASS);
    let mut child = child;
    if child.alive() {
        converge(&fx, &model, &log, Duration::from_secs(120)).await;
    }
    let rode_out = stop_ingest(child, &["lake", "S3", "s3://"], &log);
    eprintln!(
        "S3 fault (mode {mode}): the ingest {}",
        if rode_out {
            "rode it out"
        } else {
            "exited non-zero, naming S3"
        }
    );
    fx.ingest_once();
    assert_matches(&fx, &model);
    audit_clean(&fx);
}

/// S3 hangs for 20 s mid-stream (every connection stalls, none is closed).
#[tokio::test(flavor = "multi_thread")]
async fn s3_hang_loses_and_duplicates_nothing() {
    s3_fault(HANG, Duration::from_secs(20)).await;
}

/// S3 drops every connection for 8 s mid-stream.
#[tokio::test(flavor = "multi_thread")]
async fn s3_connection_drops_lose_and_duplicate_nothing() {
    s3_fault(DROP, Duration::from_secs(8)).await;
}

/// What happens to the test's own broker mid-stream.
#[derive(Clone, Copy, PartialEq)]
enum BrokerFault {
    /// SIGSTOP for 15 s, then SIGCONT.
    Hang,
    /// SIGKILL, then a restart on its persistent storage.
    Restart,
}

/// A continuous ingest from a tansu of the test's own (persistent S3 storage, not the memory
/// engine) meets `fault` after it has read the first data; more data arrives once the broker is
/// back. The ingest may ride the fault out or exit naming Kafka; what is left is drained, and
/// the lake must equal the model.
async fn broker_fault(fault: BrokerFault) {
    let mut broker = crate::harness::Tansu::start(
        "s3://data-pipeline-bucket/",
        &crate::harness::unique("fault"),
    );
    let fx = Fixture::new_on(
        &broker.address(),
        LakeKind::Local,
        "transactions",
        3,
        KAFKA_CONFIG,
    )
    .await;
    let log = std::env::temp_dir().join(format!("{}.log", fx.topic));
    let mut model = produce_model(&fx, 3, 600).await;
    let child = spawn_ingest(&fx, &log);
    converge(&fx, &model, &log, Duration::from_secs(120)).await;
    match fault {
        BrokerFault::Hang => {
            unsafe { crate::kill::libc_kill(broker.pid() as i32, 19) }; // SIGSTOP
            tokio::time::sleep(Duration::from_secs(15)).await;
            unsafe { crate::kill::libc_kill(broker.pid() as i32, 18) }; // SIGCONT
        }
        BrokerFault::Restart => {
            broker.kill();
            tokio::time::sleep(Duration::from_secs(3)).await;
            broker.restart();
        }
    }
    let second = crate::kill::partition_messages_from(1, 400, 11);
    crate::harness::produce_to_partition_on(&fx.brokers, &fx.topic, 1, &second).await;
    model.apply("transactions", 1, 600, &second);
    let mut child = child;
    let converged = rows_while_alive(
        &fx,
        &model,
        &mut child,
        Duration::from_secs(if fault == BrokerFault::Hang { 60 } else { 150 }),
    )
    .await;
    let rode_out = stop_ingest(child, &["Kafka"], &log);
    eprintln!(
        "broker {}: the ingest {}; it {} the data sent afterwards",
        if fault == BrokerFault::Hang {
            "hang"
        } else {
            "restart"
        },
        if rode_out {
            "rode it out"
        } else {
            "exited non-zero, naming Kafka"
        },
        if converged { "read" } else { "did not read" }
    );
    match fault {
        // tansu's coordinator can stop assigning after a SIGCONT (see `drain_after_fault`).
        BrokerFault::Hang => {
            drain_after_fault(&fx, &mut broker);
        }
        BrokerFault::Restart => {
            fx.ingest_once();
        }
    }
    assert_matches(&fx, &model);
    audit_clean(&fx);
}

/// The broker hangs for 15 s (SIGSTOP, then SIGCONT) during a continuous ingest.
#[tokio::test(flavor = "multi_thread")]
async fn broker_hang_loses_and_duplicates_nothing() {
    broker_fault(BrokerFault::Hang).await;
}

/// The broker is killed with SIGKILL and restarted on its persistent storage during a
/// continuous ingest.
#[tokio::test(flavor = "multi_thread")]
async fn broker_restart_loses_and_duplicates_nothing() {
    broker_fault(BrokerFault::Restart).await;
}

/// Two members ingest continuously into an S3 lake while a third joins and leaves ten times,
/// alternately stopped with SIGTERM and killed with SIGKILL, and data keeps arriving.
#[tokio::test(flavor = "multi_thread")]
async fn rebalance_storm_loses_and_duplicates_nothing() {
    let mut broker = crate::harness::Tansu::start(
        "s3://data-pipeline-bucket/",
        &crate::harness::unique("storm"),
    );
    let fx = Fixture::new_on(
        &broker.address(),
        LakeKind::S3,
        "transactions",
        4,
        KAFKA_CONFIG,
    )
    .await;
    let log = std::env::temp_dir().join(format!("{}.log", fx.topic));
    let mut model = produce_model(&fx, 4, 400).await;
    let members = [spawn_ingest(&fx, &log), spawn_ingest(&fx, &log)];
    let mut next_offset = [400i64; 4];
    let (mut terms, mut kills) = (0, 0);
    for round in 0..10u64 {
        let before = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("assigned;")
            .count();
        let mut third = spawn_ingest(&fx, &log);
        // Leave after the group assigned the newcomer (or after 8 s, mid-rebalance).
        let deadline = Instant::now() + Duration::from_secs(8);
        while std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("assigned;")
            .count()
            == before
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(300 + 200 * (round % 4))).await;
        let p = (round % 4) as i32;
        let more = crate::kill::partition_messages_from(p, 100, 100 + round);
        crate::harness::produce_to_partition_on(&fx.brokers, &fx.topic, p, &more).await;
        model.apply("transactions", p, next_offset[p as usize], &more);
        next_offset[p as usize] += more.len() as i64;
        if round % 2 == 0 {
            unsafe { crate::kill::libc_kill(third.id() as i32, 15) };
            terms += 1;
        } else {
            third.kill().unwrap();
            kills += 1;
        }
        let _ = third.wait();
    }
    eprintln!("rebalance storm: the third member left {terms} times by SIGTERM and {kills} times by SIGKILL");
    // The two members must ride the storm and stop cleanly; `--once` drains what is left
    // once the dead members' sessions (6 s) have timed out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for m in members {
        assert!(
            stop_ingest(m, &[], &log),
            "a continuous member exited during the storm (log {})",
            log.display()
        );
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    let restarted = drain_after_fault(&fx, &mut broker);
    eprintln!(
        "rebalance storm: drained {}",
        if restarted {
            "after a broker restart"
        } else {
            "by --once at once"
        }
    );
    assert_matches(&fx, &model);
    audit_clean(&fx);
}
