//! The loop on the fakes where the broker deleted offsets (retention, DeleteRecords): what was
//! read is kept, what was not is a stop under `on_data_loss = "fail"` or a recorded skip under
//! `skip`.

use super::*;

/// Hole 3: retention moves the log start past the rows held in the open batch. They are
/// committed first (the broker no longer has them), then the run stops, naming the gap.
#[tokio::test(start_paused = true)]
async fn rows_read_before_a_retention_gap_are_committed_then_the_run_stops() {
    let (broker, member, tables) = one_partition(100);
    let cfg = Config {
        trigger_interval: "10s".into(),
        ..config(1_000)
    };
    let retention = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        broker.produce(&tp(0), (100..200).map(|i| valid(&format!("k{i}"))));
        broker.expire(&tp(0), 150);
    };
    let mut pipe = pipeline(&cfg, false, &member, &tables);
    let (r, ()) = tokio::join!(pipe.run(), retention);
    match r {
        Err(IngestError::Source(crate::source::SourceError::OutOfRange { reason, .. })) => {
            assert!(reason.contains("100"), "{reason}")
        }
        other => panic!("the run must stop on the gap: {other:?}"),
    }
    let store = tables.0.lock().unwrap();
    assert_eq!(
        store.offsets.get(&tp(0)),
        Some(&100),
        "the rows read before the gap are committed"
    );
    assert_eq!(store.rows[TOPIC].len(), 100);
}

/// A step back after a gap goes no lower than the log start as listed. If retention moves the
/// log start past it in the moment before the fetch, the broker refuses the offset, and
/// librdkafka stops fetching the partition: the run stops, naming the step back (every stored
/// offset is inside the log), and commits nothing it did not read.
#[tokio::test(start_paused = true)]
async fn a_step_back_that_retention_overtakes_stops_the_run_naming_it() {
    let (broker, tables) = stored_inside_a_large_batch();
    // The first step back seeks to 4476; retention moves the log start to 4600 as it does.
    broker.0.lock().unwrap().expire_at_seek = Some((tp(0), 4476, 4600));
    let member = broker.member();
    member.assign(&[tp(0)]);
    match run_once(&config(1_000), &member, &tables).await {
        Err(IngestError::Source(crate::source::SourceError::OutOfRange { reason, .. })) => {
            assert!(
                reason.contains("user_events/0: the read again from offset 4476")
                    && reason.contains("run again"),
                "{reason}"
            )
        }
        other => panic!("the run must stop on the refused offset: {other:?}"),
    }
    assert_eq!(
        tables.0.lock().unwrap().offsets.get(&tp(0)),
        Some(&5500),
        "nothing committed past what was read"
    );
}

/// `on_data_loss = "skip"`: offsets the broker deleted before they were read (the stored
/// offset below the log start) are moved past: the run ends at the log end, the commit
/// records the range, and the rows after it are all there. The default stops, naming them.
#[tokio::test(start_paused = true)]
async fn once_skips_offsets_deleted_before_they_were_read_only_when_told_to() {
    let (broker, member, tables) = one_partition(100);
    tables
        .0
        .lock()
        .unwrap()
        .commit_as_other(&tp(0), rows_of(&broker, &tp(0), 0..20), 20);
    broker.expire(&tp(0), 60);
    // Assigned after the expiry, at the lake's offset (as the Kafka source's rebalance does).
    member.assign(&[tp(0)]);
    match run_once(&config(1_000), &member, &tables).await {
        Err(IngestError::Source(crate::source::SourceError::OutOfRange { reason, .. })) => {
            assert!(
                reason.contains("user_events/0") && reason.contains("offsets 20..60 were deleted"),
                "{reason}"
            )
        }
        other => panic!("the default must stop on the loss: {other:?}"),
    }
    assert_eq!(
        tables.0.lock().unwrap().offsets.get(&tp(0)),
        Some(&20),
        "nothing committed past the loss"
    );
    let cfg = Config {
        on_data_loss: crate::config::OnDataLoss::Skip,
        ..config(1_000)
    };
    let summary = run_once(&cfg, &member, &tables)
        .await
        .expect("--once with skip");
    assert_eq!(summary.skipped_offsets, 40);
    let store = tables.0.lock().unwrap();
    assert_eq!(
        store.skipped,
        vec![(tp(0), 20, 60)],
        "the commit records the range"
    );
    assert_eq!(store.offsets.get(&tp(0)), Some(&100));
    let offsets: Vec<i64> = store.rows[TOPIC].iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets,
        (0..20).chain(60..100).collect::<Vec<_>>(),
        "each row after the range, once"
    );
}

/// Hole 3 under `on_data_loss = "skip"`: retention moves the log start past the rows held in
/// the open batch; they are kept, the deleted range after them is skipped and recorded, and
/// the run goes on with the rest of the log.
#[tokio::test(start_paused = true)]
async fn a_retention_gap_while_reading_is_skipped_and_recorded_and_the_run_goes_on() {
    let (broker, member, tables) = one_partition(100);
    let cfg = Config {
        trigger_interval: "10s".into(),
        on_data_loss: crate::config::OnDataLoss::Skip,
        ..config(1_000)
    };
    let retention = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        broker.produce(&tp(0), (100..200).map(|i| valid(&format!("k{i}"))));
        broker.expire(&tp(0), 150);
        tokio::time::sleep(Duration::from_secs(1)).await;
        broker.produce(&tp(0), (200..230).map(|i| valid(&format!("k{i}"))));
    };
    let mut pipe = pipeline(&cfg, false, &member, &tables);
    let (r, ()) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(60), pipe.run()),
        retention
    );
    assert!(r.is_err(), "a continuous run goes on: {r:?}");
    let store = tables.0.lock().unwrap();
    assert_eq!(store.skipped, vec![(tp(0), 100, 150)]);
    assert_eq!(store.offsets.get(&tp(0)), Some(&230));
    let offsets: Vec<i64> = store.rows[TOPIC].iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..100).chain(150..230).collect::<Vec<_>>());
}

/// Found by the model test: a partition re-read from its log start (a stall, or a step back
/// that reached it) whose first message comes after offsets retention deleted unread took that
/// message as after a normal gap (markers, compaction), and the commit moved past the deleted
/// range before the periodic check confirmed it: rows lost without an error. The gap's first
/// message is now judged against the log start at once: under `fail` nothing more of the
/// partition is taken and the run stops naming the range; under `skip` the range is recorded.
#[tokio::test(start_paused = true)]
async fn a_gap_that_begins_below_the_log_start_is_data_loss_not_a_normal_gap() {
    use crate::config::OnDataLoss;
    use crate::ingest::partitions::PartState;
    use crate::source::RawMessage;
    let (broker, member, tables) = one_partition(14);
    broker.expire(&tp(0), 5);
    for (mode, taken) in [(OnDataLoss::Fail, false), (OnDataLoss::Skip, true)] {
        let cfg = Config {
            on_data_loss: mode,
            ..config(1_000)
        };
        let mut pipe = pipeline(&cfg, false, &member, &tables);
        // Stored at 2, re-read from the log start, which retention moved to 5.
        let state = PartState {
            start: Some(2),
            listed: Some((0, 14)),
            rewound: true,
            gap_checked: true,
            ..Default::default()
        };
        pipe.parts.insert(tp(0), state);
        let msg = RawMessage {
            partition: 0,
            offset: 5,
            key: None,
            payload: Some(b"{}".to_vec()),
            timestamp_ms: Some(0),
        };
        let chunk = pipe.pool.submit(vec![(std::sync::Arc::from(TOPIC), msg)]);
        let r = crate::ingest::batch::MsgRef::all(chunk).next().unwrap();
        assert_eq!(pipe.take(r), taken, "{mode:?}");
        let s = &pipe.parts[&tp(0)];
        match mode {
            OnDataLoss::Fail => {
                assert_eq!((s.lost_unread, s.next), (Some((2, 5)), None));
                match pipe.stop_on_deleted().await {
                    Err(IngestError::Source(crate::source::SourceError::OutOfRange {
                        reason,
                        ..
                    })) => {
                        assert!(reason.contains("user_events/0: the lake's offset 2 (read to 2) is below the log start 5: offsets 2..5 were deleted"), "{reason}")
                    }
                    other => panic!("the run must stop on the loss: {other:?}"),
                }
            }
            OnDataLoss::Skip => assert_eq!((s.skipped.clone(), s.next), (vec![(2, 5)], Some(6))),
        }
    }
}
