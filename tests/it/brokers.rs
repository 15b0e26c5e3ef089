//! The brokers page's API against real brokers: tansu here, and Iggy in the Iggy pass
//! (`iggy_brokers_page_…`, in [`crate::iggy`]'s way: ignored unless a server runs). Each checks
//! the topic's ends, the ingest group's lake offsets and lag, and that paging the tail back
//! shows every message exactly once, newest first, with the validation its spec gives,
//! without joining or moving any group.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::api::{curl, serve};
use crate::harness::{produce_to_partition, Fixture, LakeKind, Msg};

/// Messages for a partition: every fifth is not JSON (a dead letter); `(messages, valid?)`.
pub fn messages(prefix: &str, n: usize) -> (Vec<Msg>, Vec<bool>) {
    let valid = |i: usize| i % 5 != 3;
    let msgs = (0..n)
        .map(|i| {
            let key = format!("{prefix}{i}");
            let body = if valid(i) {
                format!(r#"{{"transaction_id":"{key}","user_id":"u","amount":{i}.5,"currency":"EUR","status":"completed","timestamp":"2026-01-01T09:00:00Z"}}"#)
            } else {
                "{not json".to_string()
            };
            (Some(key), Some(body))
        })
        .collect();
    (msgs, (0..n).map(valid).collect())
}

fn get(port: u16, path: &str) -> (u16, Value) {
    let (status, _, body) = curl(port, "GET", path, None, None);
    (
        status,
        serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!("{path}: not JSON ({e}): {}", String::from_utf8_lossy(&body))
        }),
    )
}

/// What the page must show of one broker's topic: `ends[i]` is partition `parts[i]`'s end,
/// `lake[i]` its offset in the lake under `group`; `valid[(p, o)]` each message's validity.
pub struct Expected<'a> {
    pub broker: &'a str,
    pub topic: &'a str,
    pub group: &'a str,
    pub parts: Vec<i32>,
    pub ends: Vec<i64>,
    pub lake: Vec<i64>,
    pub valid: BTreeMap<(i32, i64), bool>,
}

/// Every message of the tail at `base` (a messages URL with its `limit`), following the
/// cursors from the newest page to the last, and the number of pages; every page whole.
pub fn page_all(port: u16, base: &str, limit: usize) -> (Vec<Value>, usize) {
    let (mut cursor, mut seen, mut pages) = (None::<String>, Vec::new(), 0);
    loop {
        let path = match &cursor {
            Some(c) => format!("{base}&before={c}"),
            None => base.to_string(),
        };
        let (status, page) = get(port, &path);
        assert_eq!(status, 200, "{path}: {page}");
        assert_eq!(page["incomplete"], serde_json::json!([]), "{page}");
        let shown = page["messages"].as_array().unwrap();
        assert!(shown.len() <= limit);
        seen.extend(shown.iter().cloned());
        pages += 1;
        assert!(pages < 1000, "the cursor does not move: {page}");
        match page["next"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return (seen, pages),
        }
    }
}

/// Check `/api/brokers` and page the tail back to the first message, `limit` at a time.
pub fn check_page(port: u16, want: &Expected, limit: usize) {
    let (status, all) = get(port, "/api/brokers");
    assert_eq!(status, 200, "{all}");
    let broker = all["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == want.broker)
        .unwrap_or_else(|| panic!("no broker {}: {all}", want.broker));
    assert!(broker["error"].is_null(), "{broker}");
    let topic = broker["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == want.topic)
        .unwrap_or_else(|| panic!("no topic {}: {broker}", want.topic));
    let ends: Vec<(i64, i64)> = topic["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap(),
                p["end"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let want_ends: Vec<(i64, i64)> = want
        .parts
        .iter()
        .zip(&want.ends)
        .map(|(p, e)| (*p as i64, *e))
        .collect();
    assert_eq!(ends, want_ends, "{topic}");
    let group = broker["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == want.group)
        .unwrap_or_else(|| panic!("no group {}: {broker}", want.group));
    for ((p, end), lake) in want.parts.iter().zip(&want.ends).zip(&want.lake) {
        let row = group["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["topic"] == want.topic && r["partition"] == *p)
            .unwrap_or_else(|| panic!("no row for partition {p}: {group}"));
        assert_eq!(row["lake_offset"], *lake, "{row}");
        assert_eq!(row["end"], *end, "{row}");
        assert_eq!(row["lag"], end - lake, "{row}");
    }
    let groups_before: Vec<String> = broker["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect();
    let ingest_group_before = group.clone();

    // The tail, page by page.
    let base = format!(
        "/api/brokers/{}/topics/{}/messages?limit={limit}",
        want.broker, want.topic
    );
    let (shown, _) = page_all(port, &base, limit);
    let mut seen = Vec::new();
    for m in &shown {
        let (p, o) = (
            m["partition"].as_i64().unwrap() as i32,
            m["offset"].as_i64().unwrap(),
        );
        let valid = want
            .valid
            .get(&(p, o))
            .unwrap_or_else(|| panic!("an unexpected message {p}/{o}: {m}"));
        assert_eq!(m["validation"]["valid"], *valid, "{m}");
        if !valid {
            assert_eq!(m["validation"]["kind"], "malformed_json", "{m}");
        }
        seen.push((p, o));
    }
    let distinct: BTreeSet<(i32, i64)> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), seen.len(), "a message shown twice");
    assert_eq!(
        distinct,
        want.valid.keys().copied().collect::<BTreeSet<_>>(),
        "every message, once"
    );
    // Newest first within each partition.
    for p in &want.parts {
        let offsets: Vec<i64> = seen
            .iter()
            .filter(|(q, _)| q == p)
            .map(|(_, o)| *o)
            .collect();
        assert!(
            offsets.windows(2).all(|w| w[0] > w[1]),
            "partition {p}: {offsets:?}"
        );
    }

    // Reading joined no group and moved none.
    let (_, again) = get(port, "/api/brokers");
    let broker = again["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == want.broker)
        .unwrap();
    let groups_after: Vec<String> = broker["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect();
    // Other tests make groups on the shared broker meanwhile: only the tail's own are wrong.
    let left: Vec<&String> = groups_after
        .iter()
        .filter(|g| !groups_before.contains(g) && g.starts_with("lakepipe-lookup"))
        .collect();
    assert!(
        left.is_empty(),
        "the tail left consumer groups behind: {left:?}"
    );
    let group = broker["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == want.group)
        .unwrap();
    for (p, lake) in want.parts.iter().zip(&want.lake) {
        let row = group["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["topic"] == want.topic && r["partition"] == *p)
            .unwrap();
        assert_eq!(row["lake_offset"], *lake, "{row}");
    }
    // The ingest's group: the same members and stored offsets as before the tail.
    assert_eq!(
        *group, ingest_group_before,
        "the tail changed the ingest's group"
    );

    // Clear refusals.
    for (path, status) in [
        (format!("{base}&before=nonsense"), 400),
        (
            format!(
                "/api/brokers/{}/topics/{}/messages?limit=0",
                want.broker, want.topic
            ),
            400,
        ),
        (
            format!(
                "/api/brokers/{}/topics/{}/messages?partition=99",
                want.broker, want.topic
            ),
            404,
        ),
        (
            format!(
                "/api/brokers/{}/topics/no_such_topic_here/messages",
                want.broker
            ),
            404,
        ),
        ("/api/brokers/nowhere/topics/x/messages".to_string(), 404),
    ] {
        let (got, body) = get(port, &path);
        assert_eq!(got, status, "{path}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {body}"
        );
    }
}

/// Kafka (tansu): two partitions, one ingested and then added to, so its lag is the messages
/// added; the first page of each partition starts inside a producer's batch, which tansu
/// answers with nothing, so the tail's step back is exercised.
#[tokio::test(flavor = "multi_thread")]
async fn brokers_page_shows_lag_and_tails_every_message_once() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 2, "").await;
    let (p0, v0) = messages("a", 23);
    let (p1, v1) = messages("b", 17);
    produce_to_partition(&fx.topic, 0, &p0).await;
    produce_to_partition(&fx.topic, 1, &p1).await;
    fx.ingest_once();
    let (more, vmore) = messages("c", 6);
    produce_to_partition(&fx.topic, 1, &more).await;
    let mut valid = BTreeMap::new();
    for (p, vs) in [(0, v0), (1, [v1, vmore].concat())] {
        for (o, v) in vs.into_iter().enumerate() {
            valid.insert((p, o as i64), v);
        }
    }
    let srv = serve(&fx, &[]);
    let want = Expected {
        broker: "kafka",
        topic: &fx.topic,
        group: &fx.group,
        parts: vec![0, 1],
        ends: vec![23, 23],
        lake: vec![23, 17],
        valid,
    };
    check_page(srv.port, &want, 4);
}

/// Iggy: the same page over an Iggy server of the test's own, its offsets in the lake under
/// the Iggy source and the ingest's group.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs an Iggy server: scripts/test.sh runs the Iggy tests (`--ignored iggy`) when it could start one"]
async fn iggy_brokers_page_shows_lag_and_tails_every_message_once() {
    let iggy = crate::iggy::Iggy::start();
    let url = iggy.url();
    let fx = Fixture::new(LakeKind::Local, "transactions", 1, "").await;
    let address = lakepipe::source::iggy::IggyAddress::parse(&url).unwrap();
    let client = address.connect().await.unwrap();
    let ids = lakepipe::source::iggy::ensure_topic(&client, &address.stream, &fx.topic, 3)
        .await
        .unwrap();
    let batches = [messages("a", 23), messages("b", 17), messages("c", 5)];
    for (id, (msgs, _)) in ids.iter().zip(&batches) {
        crate::iggy::produce_to_iggy_partition(&url, &fx.topic, *id, msgs).await;
    }
    let out = fx
        .cmd("ingest")
        .args(["--once", "--trigger-interval", "500ms", "--iggy", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ingest --once --iggy failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (more, vmore) = messages("d", 6);
    crate::iggy::produce_to_iggy_partition(&url, &fx.topic, ids[1], &more).await;
    let mut valid = BTreeMap::new();
    let [(_, v0), (_, v1), (_, v2)] = batches;
    for (p, vs) in ids.iter().zip([v0, [v1, vmore].concat(), v2]) {
        for (o, v) in vs.into_iter().enumerate() {
            valid.insert((*p as i32, o as i64), v);
        }
    }
    let srv = serve(&fx, &[("LAKEPIPE_PRIMARY", url.as_str())]);
    let parts: Vec<i32> = ids.iter().map(|p| *p as i32).collect();
    let want = Expected {
        broker: "iggy",
        topic: &fx.topic,
        group: &fx.group,
        parts,
        ends: vec![23, 23, 5],
        lake: vec![23, 17, 5],
        valid,
    };
    check_page(srv.port, &want, 4);
}
