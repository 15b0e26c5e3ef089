//! The Iggy source under the faults the Kafka source is held to: `kill -9` of the ingest, again
//! and again, and restarts of the Iggy server under a running ingest. The table must equal the
//! model exactly: no loss, no duplicates, every dead letter once.
//!
//! `#[ignore]`d like the other Iggy tests: `scripts/test.sh` runs them (`--ignored iggy`) when
//! it could start a server.

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use iggy::prelude::*;
use lakepipe::source::iggy::IggyAddress;

use crate::harness::{Fixture, LakeKind, Model, Reaped};
use crate::iggy::{produce_to_iggy_partition, wait_for_members, Iggy};
use crate::kill::{assert_matches, converge, count_in, partition_messages_from};

/// The fixture's topic on `iggy`, with `per_partition` messages in each of 3 partitions.
struct IggyLake {
    fx: Fixture,
    url: String,
    model: Model,
    next_offset: [i64; 3],
}

impl IggyLake {
    async fn new(iggy: &Iggy, per_partition: usize) -> IggyLake {
        let fx = Fixture::new(LakeKind::Local, "transactions", 1, "").await;
        let mut lake = IggyLake {
            fx,
            url: iggy.url(),
            model: Model::default(),
            next_offset: [0; 3],
        };
        for p in 0..3 {
            lake.feed(p, per_partition, 1000 + p as u64).await;
        }
        lake
    }

    /// `count` more messages on partition `p` (seeded), in the model too.
    async fn feed(&mut self, p: usize, count: usize, seed: u64) {
        let msgs = partition_messages_from(p as i32, count, seed);
        produce_to_iggy_partition(&self.url, &self.fx.topic, p as u32, &msgs).await;
        self.model
            .apply("transactions", p as i32, self.next_offset[p], &msgs);
        self.next_offset[p] += msgs.len() as i64;
    }

    /// A continuous ingest of this topic from Iggy, logging to `log`.
    fn spawn(&self, log: &std::path::Path) -> Reaped {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        self.fx
            .cmd("ingest")
            .args([
                "--iggy",
                &self.url,
                "--trigger-interval",
                "100ms",
                "--max-batch-records",
                "250",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(Reaped::new)
            .unwrap()
    }

    /// Wait up to `within` until one member of the group holds all three partitions.
    async fn held_whole(&self, within: Duration) {
        wait_for_members(&self.url, &self.fx.topic, &self.fx.group, within, |m| {
            m == [3]
        })
        .await;
    }

    /// `ingest --once` from Iggy.
    fn once(&self) -> Output {
        let out = self
            .fx
            .cmd("ingest")
            .arg("--once")
            .args(["--iggy", &self.url, "--trigger-interval", "500ms"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ingest --once from Iggy failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// `kill -9` of an Iggy ingest ten times, each at a random moment of its work with more data
/// just arrived, then `--once`: the table equals the model, and a further `--once` commits
/// nothing.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs an Iggy server: scripts/test.sh starts one and runs the Iggy tests (`--ignored iggy`)"]
async fn iggy_ingest_killed_ten_times_loses_and_duplicates_nothing() {
    let iggy = Iggy::start();
    let mut lake = IggyLake::new(&iggy, 1500).await;
    let log = std::env::temp_dir().join(format!("{}.log", lake.fx.topic));
    let seed: u64 = rand::random();
    eprintln!(
        "kill -9 of the Iggy ingest: seed {seed}, log {}",
        log.display()
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..10 {
        let started_before = count_in(&log, "ingest started");
        let mut child = lake.spawn(&log).take();
        let deadline = Instant::now() + Duration::from_secs(60);
        while count_in(&log, "ingest started") == started_before {
            assert!(
                Instant::now() < deadline,
                "the ingest never started (log {})",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        lake.feed(i % 3, 200, 5000 + i as u64).await;
        let wait = rng.gen_range(200..2500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!(
            "kill {i} {wait} ms after start; {} batches committed so far",
            count_in(&log, "batch committed")
        );
    }
    let committed = lake
        .fx
        .sql_now(&format!("SELECT count(*) AS n FROM {}", lake.fx.topic))[0]["n"]
        .as_i64()
        .unwrap();
    assert!(
        committed > 0,
        "the killed runs committed nothing; the test would prove little (log {})",
        log.display()
    );
    eprintln!(
        "rows committed before the final run: {committed} of {}",
        lake.model.rows.len()
    );
    lake.once();
    assert_matches(&lake.fx, &lake.model);
    let v = lake.fx.table_version(&lake.fx.topic);
    lake.once();
    assert_eq!(
        lake.fx.table_version(&lake.fx.topic),
        v,
        "a further --once committed again"
    );
}

/// The Iggy server is SIGKILLed twice under a running ingest and restarted with its data, with
/// more messages after each restart: the ingest joins its group again and the table converges
/// to the model.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs an Iggy server: scripts/test.sh starts one and runs the Iggy tests (`--ignored iggy`)"]
async fn iggy_server_restarts_under_a_running_ingest() {
    let mut iggy = Iggy::start();
    let mut lake = IggyLake::new(&iggy, 500).await;
    let log = std::env::temp_dir().join(format!("{}.log", lake.fx.topic));
    eprintln!("Iggy restarts: log {}", log.display());
    let _ingest = lake.spawn(&log);
    lake.held_whole(Duration::from_secs(30)).await;
    for round in 0..2u64 {
        // Killed between requests of the test's producer: every message sent was acknowledged
        // and saved (fsync, a save per message).
        iggy.kill();
        tokio::time::sleep(Duration::from_secs(3)).await;
        iggy.restart();
        let _ = iggy.messages(&lake.fx.topic).await;
        for p in 0..3 {
            lake.feed(p, 150, 7000 + 10 * round + p as u64).await;
        }
        lake.held_whole(Duration::from_secs(60)).await;
    }
    converge(&lake.fx, &lake.model, &log, Duration::from_secs(120)).await;
    assert_matches(&lake.fx, &lake.model);
}

/// An Iggy server with segments of 1 KiB (a few messages each) and its cleaner every second,
/// and `topic` on it with 3 partitions, `expiry` and `max_size`.
async fn server_that_deletes(
    topic: &str,
    expiry: IggyExpiry,
    max_size: MaxTopicSize,
) -> (Iggy, IggyClient) {
    let iggy = Iggy::start_with(&[
        ("IGGY_SYSTEM_SEGMENT_SIZE", "1 KiB"),
        ("IGGY_DATA_MAINTENANCE_MESSAGES_CLEANER_ENABLED", "true"),
        ("IGGY_DATA_MAINTENANCE_MESSAGES_INTERVAL", "1 s"),
    ]);
    let address = IggyAddress::parse(&iggy.url()).unwrap();
    let client = address.connect().await.unwrap();
    client.create_stream(&address.stream).await.unwrap();
    let s = Identifier::named(&address.stream).unwrap();
    client
        .create_topic(
            &s,
            topic,
            3,
            CompressionAlgorithm::None,
            None,
            expiry,
            max_size,
        )
        .await
        .unwrap();
    (iggy, client)
}

/// Each partition's first offset the server still has (`None`: it holds no message), and its
/// count of messages.
async fn first_offsets(client: &IggyClient, topic: &str) -> Vec<(Option<u64>, u64)> {
    let (s, t) = (
        Identifier::named("lakepipe").unwrap(),
        Identifier::named(topic).unwrap(),
    );
    let details = client.get_topic(&s, &t).await.unwrap().unwrap();
    let mut out = Vec::new();
    for p in 0..3u32 {
        let polled = client
            .poll_messages(
                &s,
                &t,
                Some(p),
                &Consumer::default(),
                &PollingStrategy::first(),
                1,
                false,
            )
            .await
            .unwrap();
        let count = details
            .partitions
            .iter()
            .find(|x| x.id == p)
            .map_or(0, |x| x.messages_count);
        out.push((polled.messages.first().map(|m| m.header.offset), count));
    }
    out
}

/// The oldest segments were deleted before the first ingest (the topic outgrew its size
/// limit, and Iggy deletes the topic's oldest segments, whichever partition they are in): a
/// partition that still has messages starts at its first, as a Kafka ingest starts at the log
/// start (it used to fail with "expired before they were ingested"; Iggy answers a poll below
/// its first message with nothing, not with that message), and a partition that has none left
/// starts at its end, where it used to be refused as a reset server. The table holds exactly
/// what the server still had, and each partition is committed to its end.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs an Iggy server: scripts/test.sh starts one and runs the Iggy tests (`--ignored iggy`)"]
async fn a_fresh_iggy_ingest_starts_after_deleted_segments() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 1, "").await;
    let max = MaxTopicSize::Custom(IggyByteSize::from(8 * 1024u64));
    let (iggy, client) = server_that_deletes(&fx.topic, IggyExpiry::NeverExpire, max).await;
    let url = iggy.url();
    let n = 120;
    let msgs: Vec<Vec<crate::harness::Msg>> = (0..3)
        .map(|p| partition_messages_from(p, n, 100 + p as u64))
        .collect();
    for (p, m) in msgs.iter().enumerate() {
        for chunk in m.chunks(5) {
            produce_to_iggy_partition(&url, &fx.topic, p as u32, chunk).await;
        }
    }
    // Both cases at once: a partition with its first messages gone, and one with none left;
    // and settled: the cleaner runs every second and may delete more over a few rounds (a CI
    // run saw partition 1 lose more between this reading and the ingest), so the same
    // reading twice, 3 s apart.
    let deadline = Instant::now() + Duration::from_secs(40);
    let firsts = loop {
        let firsts = first_offsets(&client, &fx.topic).await;
        let partly = firsts.iter().any(|(f, _)| f.is_some_and(|f| f > 0));
        let wholly = firsts.iter().any(|(f, _)| f.is_none());
        if partly && wholly {
            tokio::time::sleep(Duration::from_secs(3)).await;
            if first_offsets(&client, &fx.topic).await == firsts {
                break firsts;
            }
            continue;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not delete segments as the test needs ({firsts:?})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "first offset the server still has, and its message count, per partition: {firsts:?}"
    );
    let mut model = Model::default();
    for (p, (first, _)) in firsts.iter().enumerate() {
        if let Some(first) = first {
            let first = *first as usize;
            model.apply("transactions", p as i32, first as i64, &msgs[p][first..]);
        }
    }
    let out = fx
        .cmd("ingest")
        .arg("--once")
        .args(["--iggy", &url, "--trigger-interval", "500ms"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "a fresh ingest of a topic with deleted segments: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_matches(&fx, &model);
    let sql = format!("SELECT partition, committed_offset FROM freshness() WHERE scope = 'partition' AND table_name = '{}' ORDER BY partition", fx.topic);
    let rows = fx.sql_now(&sql);
    let committed: Vec<i64> = rows
        .iter()
        .map(|r| r["committed_offset"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(
        committed,
        vec![n as i64; 3],
        "each partition committed to its end: {rows:?}"
    );

    // The brokers page's tail shows exactly what the server still has, and ends at each
    // partition's first offset: no run of empty pages below it.
    let srv = crate::api::serve(&fx, &[("LAKEPIPE_PRIMARY", url.as_str())]);
    let limit = 7;
    let base = format!("/api/brokers/iggy/topics/{}/messages?limit={limit}", fx.topic);
    let (shown, pages) = crate::brokers::page_all(srv.port, &base, limit);
    let got: std::collections::BTreeSet<(i64, i64)> = shown
        .iter()
        .map(|m| (m["partition"].as_i64().unwrap(), m["offset"].as_i64().unwrap()))
        .collect();
    let want: std::collections::BTreeSet<(i64, i64)> = firsts
        .iter()
        .enumerate()
        .filter_map(|(p, (first, _))| Some((p as i64, (*first)? as i64)))
        .flat_map(|(p, first)| (first..n as i64).map(move |o| (p, o)))
        .collect();
    assert_eq!(got.len(), shown.len(), "a message shown twice");
    assert_eq!(got, want, "the tail shows what the server holds");
    assert!(
        pages <= want.len().div_ceil(limit) + 3,
        "{pages} pages for {} messages of {limit}: empty pages below the first offsets",
        want.len()
    );
}

/// A member that stops (SIGSTOP) keeps its partitions: Iggy counts a client in the group while
/// its connection lives (its heartbeat check is off by default). `ingest --once` beside it
/// gets at most a partition the server takes from it after `rebalancing_timeout`; after
/// `once_group_wait` with nothing moving it leaves the group and reads every partition directly,
/// and finishes exactly. The stopped member, resumed, finds its offsets moved in the lake and
/// writes nothing twice.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs an Iggy server: scripts/test.sh starts one and runs the Iggy tests (`--ignored iggy`)"]
async fn iggy_once_reads_directly_beside_a_stopped_member() {
    let iggy = Iggy::start();
    let mut lake = IggyLake::new(&iggy, 300).await;
    let log = std::env::temp_dir().join(format!("{}.log", lake.fx.topic));
    eprintln!("a stopped member: log {}", log.display());
    let mut member = lake.spawn(&log).take();
    lake.held_whole(Duration::from_secs(30)).await;
    converge(&lake.fx, &lake.model, &log, Duration::from_secs(60)).await;
    let pid = member.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    for p in 0..3 {
        lake.feed(p, 200, 9000 + p as u64).await;
    }
    let started = Instant::now();
    let out = lake
        .fx
        .cmd("ingest")
        .arg("--once")
        .args(["--iggy", &lake.url, "--trigger-interval", "500ms"])
        .env("LAKEPIPE_ONCE_GROUP_WAIT", "5s")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "--once beside a stopped member: {stderr}"
    );
    eprintln!(
        "--once beside a stopped member took {:?}; it read directly: {}",
        started.elapsed(),
        stderr.contains("reading every partition directly")
    );
    assert_matches(&lake.fx, &lake.model);
    // Resumed, the old member commits nothing twice (its offsets moved in the lake).
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_secs(5)).await;
    member.kill().unwrap();
    member.wait().unwrap();
    assert_matches(&lake.fx, &lake.model);
}

/// A message Iggy 0.8 cannot read: a data directory kept from a failover run whose server was
/// SIGKILLed during a write (`tests/fixtures/iggy-0.8-unreadable-message.tar.gz`; every poll
/// that covers offset 161 of partition 0 fails with `invalid_offset`, across restarts, while
/// offsets 0..161 and those after it read). By default `--once` commits everything before it
/// and stops, naming it; with `--on-data-loss skip` it skips exactly that offset, records it in
/// the commit as a skipped range (as offsets a broker deleted), reads everything after it, and
/// the audit owes nothing for it.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs an Iggy server: scripts/test.sh starts one and runs the Iggy tests (`--ignored iggy`)"]
async fn an_unreadable_iggy_message_stops_the_ingest_or_is_skipped_exactly() {
    let iggy = Iggy::start_on_archive(&crate::harness::repo_file(
        "tests/fixtures/iggy-0.8-unreadable-message.tar.gz",
    ));
    let topic = "t_iggy_failover_30634_0_1feef40b";
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lakepipe.toml");
    std::fs::write(
        &config,
        format!("[specs.{topic}]\nextends = \"transactions\"\n"),
    )
    .unwrap();
    let lake = dir.path().join("lake").display().to_string();
    let bin = env!("CARGO_BIN_EXE_lakepipe");
    let run = |args: &[&str]| {
        std::process::Command::new(bin)
            .args(args)
            .args(["--config", config.to_str().unwrap(), "--lake", &lake])
            .env("LAKEPIPE_LOG", "warn,lakepipe=info")
            .env("LAKEPIPE_ONCE_TIMEOUT", "60s")
            .output()
            .unwrap()
    };
    let ingest = |skip: bool| {
        let mut args = vec![
            "ingest",
            "--once",
            "--iggy",
            Box::leak(iggy.url().into_boxed_str()),
            "--topics",
            topic,
            "--trigger-interval",
            "500ms",
        ];
        if skip {
            args.extend(["--on-data-loss", "skip"]);
        }
        run(&args)
    };
    let sql = |q: String| -> Vec<serde_json::Value> {
        let out = run(&["sql", "--format", "json", &q]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let p0 = |lake_rows: &[serde_json::Value]| lake_rows[0]["n"].as_i64().unwrap_or(-1);

    let out = ingest(false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(&format!("{topic}/0"))
            && stderr.contains("cannot read the message at offset 161"),
        "{stderr}"
    );
    let before = sql(format!(
        "SELECT count(*) AS n, max(_offset) AS hi FROM {topic} WHERE _partition = 0"
    ));
    assert_eq!(
        before[0]["hi"].as_i64(),
        Some(160),
        "everything before it was committed: {before:?}"
    );

    let out = ingest(true);
    assert!(
        out.status.success(),
        "with on_data_loss = skip: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = sql(format!("SELECT count(*) AS n, min(_offset) FILTER (WHERE _offset > 160) AS lo FROM {topic} WHERE _partition = 0"));
    assert_eq!(
        after[0]["lo"].as_i64(),
        Some(162),
        "read on from the offset after it: {after:?}"
    );
    assert!(p0(&after) > p0(&before), "{after:?}");
    let h = sql(format!(
        "SELECT skipped FROM history('{topic}') WHERE skipped IS NOT NULL"
    ));
    assert_eq!(h.len(), 1, "one commit records the skip: {h:?}");
    let named: serde_json::Value = serde_json::from_str(h[0]["skipped"].as_str().unwrap()).unwrap();
    assert_eq!(
        (
            named[0]["partition"].as_i64(),
            named[0]["from"].as_i64(),
            named[0]["to"].as_i64()
        ),
        (Some(0), Some(161), Some(162)),
        "{named}"
    );
    let out = run(&["audit", "--json", "--topics", topic, "--iggy", &iggy.url()]);
    assert!(
        out.status.success(),
        "the audit owes nothing for the skipped message: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
