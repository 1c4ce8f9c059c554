//! The log's operations through its public API, on a real store on disk.

use std::sync::Arc;

use streamflow_log::{Log, LogError, Record, SegmentRange, SpaceRange};

fn log() -> (tempfile::TempDir, Log) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path()).expect("open");
    (dir, log)
}

fn records(from: u64, to: u64) -> Vec<Record> {
    (from..=to)
        .map(|s| Record {
            sequence: s,
            timestamp: 1_000 + s as i64,
            payload: format!("entry {s}").into_bytes(),
            metadata: serde_json::Map::new(),
        })
        .collect()
}

fn sequences(entries: &[streamflow_log::Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.sequence).collect()
}

#[test]
fn consume_with_bounds() {
    let (_dir, log) = log();
    log.produce("s", "a", &records(1, 10)).expect("produce");
    let read = |min, max| {
        sequences(
            &log.consume_segment(
                "s",
                "a",
                SegmentRange {
                    min_sequence: min,
                    max_sequence: max,
                    ..SegmentRange::default()
                },
            )
            .expect("consume"),
        )
    };
    assert_eq!(read(0, 0), (1..=10).collect::<Vec<_>>());
    assert_eq!(read(3, 3), [3]);
    assert_eq!(read(3, 5), [3, 4, 5]);
    assert_eq!(read(11, 0), Vec::<u64>::new());
    assert_eq!(read(9, 15), [9, 10]);
    let limited = log
        .consume_segment(
            "s",
            "a",
            SegmentRange {
                limit: 4,
                min_timestamp: 1_003,
                ..SegmentRange::default()
            },
        )
        .expect("consume");
    assert_eq!(sequences(&limited), [3, 4, 5, 6]);
    assert_eq!(limited[0].payload, b"entry 3");
}

#[test]
fn gaps_statuses_peek_and_names() {
    let (_dir, log) = log();
    assert!(
        log.spaces().expect("spaces").is_empty(),
        "a fresh store lists no spaces"
    );
    let status = log.produce("s", "a", &records(1, 2)).expect("produce");
    let last = status.last().expect("a status");
    assert_eq!((last.first_sequence, last.last_sequence), (1, 2));
    assert_eq!(log.peek("s", "a").expect("peek").last_sequence, 2);
    let gap = log.produce("s", "a", &records(4, 5)).expect_err("a gap");
    assert_eq!(gap.to_string(), "sequence gap: expected 3, got 4");
    assert!(matches!(
        log.produce("", "a", &records(1, 1)),
        Err(LogError::InvalidArgs(_))
    ));
    assert!(log.produce("s", "a", &records(3, 3)).is_ok());
    let missing = log.peek("s", "nope").expect("peek");
    assert_eq!(
        (missing.last_sequence, missing.segment.as_str()),
        (0, "nope")
    );
    log.publish("t", "x", b"one".to_vec(), serde_json::Map::new())
        .expect("publish");
    assert_eq!(log.spaces().expect("spaces"), ["s", "t"]);
    assert_eq!(log.segments("s").expect("segments"), ["a"]);
}

#[test]
fn concurrent_producers_serialise_or_find_the_gap() {
    let (_dir, log) = log();
    let log = Arc::new(log);
    let producers: Vec<_> = (0..2)
        .map(|_| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || log.produce("s", "a", &records(1, 100)))
        })
        .collect();
    let outcomes: Vec<_> = producers
        .into_iter()
        .map(|p| p.join().expect("thread"))
        .collect();
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1);
    assert!(outcomes.iter().any(|o| matches!(
        o,
        Err(LogError::SequenceGap {
            expected: 101,
            got: 1
        })
    )));
    let all = log
        .consume_segment("s", "a", SegmentRange::default())
        .expect("consume");
    assert_eq!(sequences(&all), (1..=100).collect::<Vec<_>>());
}

#[test]
fn space_offsets_resume_and_a_global_limit_spans_spaces() {
    let (_dir, log) = log();
    log.produce("s", "a", &records(1, 3)).expect("a");
    log.produce("s", "b", &records(1, 2)).expect("b");
    log.produce("t", "c", &records(1, 4)).expect("c");
    let first = log
        .consume_space(
            "s",
            SpaceRange {
                limit: 2,
                ..SpaceRange::default()
            },
        )
        .expect("first");
    assert_eq!(first.iter().map(|e| e.offset).collect::<Vec<_>>(), [1, 2]);
    let rest = log
        .consume_space(
            "s",
            SpaceRange {
                offset: first[1].offset,
                ..SpaceRange::default()
            },
        )
        .expect("rest");
    let seen: Vec<(String, u64)> = rest
        .iter()
        .map(|e| (e.segment.clone(), e.sequence))
        .collect();
    assert_eq!(seen, [("a".into(), 3), ("b".into(), 1), ("b".into(), 2)]);
    let both = log.consume(&[("s", 4), ("t", 0)], 3).expect("both");
    let seen: Vec<(&str, u64)> = both
        .iter()
        .map(|e| (e.space.as_str(), e.sequence))
        .collect();
    assert_eq!(seen, [("s", 2), ("t", 1), ("t", 2)]);
}

#[test]
fn large_entries_round_trip_and_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let payloads: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 8192]).collect();
    {
        let log = Log::open(dir.path()).expect("open");
        let mut meta = serde_json::Map::new();
        meta.insert("kind".into(), serde_json::json!("blob"));
        let records: Vec<Record> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| Record {
                sequence: i as u64 + 1,
                timestamp: 7,
                payload: p.clone(),
                metadata: meta.clone(),
            })
            .collect();
        log.produce("blobs", "x", &records).expect("produce");
    }
    let log = Log::open(dir.path()).expect("reopen");
    let back = log
        .consume_segment("blobs", "x", SegmentRange::default())
        .expect("consume");
    assert_eq!(back.len(), 50);
    for (e, p) in back.iter().zip(&payloads) {
        assert_eq!(&e.payload, p);
        assert_eq!(e.metadata["kind"], "blob");
    }
}

#[test]
fn big_produces_go_in_chunks() {
    let (_dir, log) = log();
    let statuses = log.produce("s", "a", &records(1, 25_000)).expect("produce");
    let lasts: Vec<u64> = statuses.iter().map(|s| s.last_sequence).collect();
    assert_eq!(lasts, [10_000, 20_000, 25_000]);
}

#[test]
fn a_subscription_sees_the_current_status_then_each_write() {
    let (_dir, log) = log();
    let log = Arc::new(log);
    log.produce("s", "a", &records(1, 1)).expect("produce");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut one = log.subscribe("s", "a").expect("subscribe");
        let mut all = log.subscribe("s", "*").expect("subscribe");
        assert_eq!(one.next().await.expect("current").last_sequence, 1);
        assert_eq!(all.next().await.expect("current").segment, "a");
        let writer = Arc::clone(&log);
        std::thread::spawn(move || {
            for _ in 0..3 {
                writer
                    .publish("s", "a", b"x".to_vec(), serde_json::Map::new())
                    .expect("publish");
            }
            writer
                .publish("s", "b", b"y".to_vec(), serde_json::Map::new())
                .expect("publish");
        });
        let mut last = 0;
        while last < 4 {
            let s = tokio::time::timeout(std::time::Duration::from_secs(10), one.next())
                .await
                .expect("in time")
                .expect("a status");
            assert_eq!(s.segment, "a");
            last = s.last_sequence;
        }
        assert!(last >= 3);
        let mut segments = std::collections::BTreeSet::new();
        while segments.len() < 2 {
            let s = tokio::time::timeout(std::time::Duration::from_secs(10), all.next())
                .await
                .expect("in time")
                .expect("a status");
            segments.insert(s.segment);
        }
    });
}

#[test]
fn leases_are_exclusive_expire_renew_and_report_loss() {
    use std::time::Duration;
    let (_dir, log) = log();
    let log = Arc::new(log);
    // Exclusive while unexpired; the holder may renew; expired, it can be taken.
    log.acquire_lease("k", "a", Duration::from_millis(150))
        .expect("a takes it");
    assert!(matches!(
        log.acquire_lease("k", "b", Duration::from_secs(1)),
        Err(LogError::LeaseHeld { .. })
    ));
    log.acquire_lease("k", "a", Duration::from_millis(150))
        .expect("a renews");
    std::thread::sleep(Duration::from_millis(200));
    log.acquire_lease("k", "b", Duration::from_secs(60))
        .expect("expired: b takes it");
    log.release_lease("k", "b").expect("release");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Renewed while the work runs, well past the ttl.
        let held = Arc::clone(&log);
        let ttl = Duration::from_millis(300);
        let kept = streamflow_log::with_lease(Arc::clone(&log), "job", ttl, |token| async move {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let other = held.acquire_lease("job", "intruder", ttl);
            (token.is_lost(), other.is_err())
        })
        .await
        .expect("with_lease");
        assert_eq!(kept, (false, true), "renewed, and exclusive");
        // Released after the work: free for the next holder.
        log.acquire_lease("job", "next", ttl).expect("released");
        log.release_lease("job", "next").expect("release");
        // Lost: another holder takes it over; the work's token fires.
        let thief = Arc::clone(&log);
        let noticed =
            streamflow_log::with_lease(Arc::clone(&log), "job", ttl, |mut token| async move {
                thief.release_lease("job", token.holder()).expect("drop it");
                thief
                    .acquire_lease("job", "thief", Duration::from_secs(60))
                    .expect("steal");
                tokio::time::timeout(Duration::from_secs(5), token.lost())
                    .await
                    .is_ok()
            })
            .await
            .expect("with_lease");
        assert!(noticed, "the token fired when the lease was lost");
        assert!(matches!(
            log.acquire_lease("job", "other", ttl),
            Err(LogError::LeaseHeld { .. })
        ));
    });
}
