//! The log's operations through its public client, each run twice: on a
//! store opened in process, and on a store of a WebSocket server (the
//! crate's own server side, `node`, behind a real socket on loopback).

use std::sync::Arc;
use std::time::Duration;

use streamflow_log::auth::{self, Scope};
use streamflow_log::node::{Stores, serve_connection};
use streamflow_log::{Entry, LogClient, LogError, Record, SegmentRange, SpaceRange};

/// A store, and what keeps it alive.
struct Fixture {
    _dir: tempfile::TempDir,
    log: LogClient,
}

fn local() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = LogClient::open(dir.path()).expect("open");
    Fixture { _dir: dir, log }
}

const SECRET: &[u8] = b"test secret";

/// A WebSocket server on loopback serving the stores under `dir`: a
/// connection needs a JWT signed with [`SECRET`], which scopes it.
async fn server(dir: &std::path::Path) -> String {
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    let stores = Stores::new(dir.to_path_buf(), "test");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let stores = Arc::clone(&stores);
            tokio::spawn(async move {
                let scope = Arc::new(std::sync::Mutex::new(None));
                let seen = Arc::clone(&scope);
                let check =
                    move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                        let token = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("Bearer "))
                            .unwrap_or_default();
                        match auth::verify(SECRET, token) {
                            Ok(s) => {
                                *seen.lock().expect("lock") = Some(s);
                                Ok(resp)
                            }
                            Err(_) => {
                                let mut refusal = ErrorResponse::new(Some("bad token".into()));
                                *refusal.status_mut() =
                                    tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED;
                                Err(refusal)
                            }
                        }
                    };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, check).await else {
                    return;
                };
                let scope: Scope = scope
                    .lock()
                    .expect("lock")
                    .clone()
                    .unwrap_or(Scope::Stores(vec![]));
                use futures::{SinkExt, StreamExt};
                use tokio_tungstenite::tungstenite::Message;
                let (mut write, mut read) = ws.split();
                let (in_tx, in_rx) = tokio::sync::mpsc::channel(64);
                let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(256);
                tokio::spawn(serve_connection(stores, scope, in_rx, out_tx));
                tokio::spawn(async move {
                    while let Some(frame) = out_rx.recv().await {
                        if write.send(Message::Binary(frame.into())).await.is_err() {
                            break;
                        }
                    }
                });
                while let Some(Ok(message)) = read.next().await {
                    if let Message::Binary(bytes) = message
                        && in_tx.send(bytes.to_vec()).await.is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    format!("ws://{addr}")
}

async fn remote() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = server(dir.path()).await;
    let token = auth::issue(
        SECRET,
        "test",
        &["default".into()],
        Duration::from_secs(600),
    )
    .expect("token");
    let log = LogClient::connect(&url, "default", Some(token))
        .await
        .expect("connect");
    Fixture { _dir: dir, log }
}

/// Runs `case` over both transports.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_process() {
                let f = super::local();
                super::$name(f.log.clone()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn websocket() {
                let f = super::remote().await;
                super::$name(f.log.clone()).await;
            }
        }
    };
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

fn sequences(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.sequence).collect()
}

both!(consume_with_bounds);
async fn consume_with_bounds(log: LogClient) {
    log.produce("s", "a", records(1, 10))
        .await
        .expect("produce");
    let read = |min, max| {
        let log = log.clone();
        async move {
            let range = SegmentRange {
                min_sequence: min,
                max_sequence: max,
                ..SegmentRange::default()
            };
            sequences(&log.consume_segment("s", "a", range).await.expect("consume"))
        }
    };
    assert_eq!(read(0, 0).await, (1..=10).collect::<Vec<_>>());
    assert_eq!(read(3, 3).await, [3]);
    assert_eq!(read(3, 5).await, [3, 4, 5]);
    assert_eq!(read(11, 0).await, Vec::<u64>::new());
    assert_eq!(read(9, 15).await, [9, 10]);
    let range = SegmentRange {
        limit: 4,
        min_timestamp: 1_003,
        ..SegmentRange::default()
    };
    let limited = log.consume_segment("s", "a", range).await.expect("consume");
    assert_eq!(sequences(&limited), [3, 4, 5, 6]);
    assert_eq!(limited[0].payload, b"entry 3");
    // Entries name the write that made them.
    assert_eq!(limited[0].trx.number, 2);
    assert_eq!(limited[0].trx.id, limited[3].trx.id);
}

both!(gaps_statuses_peek_and_names);
async fn gaps_statuses_peek_and_names(log: LogClient) {
    assert!(
        log.spaces().await.expect("spaces").is_empty(),
        "a fresh store lists no spaces"
    );
    let status = log.produce("s", "a", records(1, 2)).await.expect("produce");
    let last = status.last().expect("a status");
    assert_eq!((last.first_sequence, last.last_sequence), (1, 2));
    assert_eq!(log.peek("s", "a").await.expect("peek").last_sequence, 2);
    let gap = log
        .produce("s", "a", records(4, 5))
        .await
        .expect_err("a gap");
    assert_eq!(gap.to_string(), "sequence gap: expected 3, got 4");
    assert!(matches!(
        log.produce("", "a", records(1, 1)).await,
        Err(LogError::InvalidArgs(_))
    ));
    assert!(log.produce("s", "a", records(3, 3)).await.is_ok());
    let missing = log.peek("s", "nope").await.expect("peek");
    assert_eq!(
        (missing.last_sequence, missing.segment.as_str()),
        (0, "nope")
    );
    log.publish("t", "x", b"one".to_vec(), serde_json::Map::new())
        .await
        .expect("publish");
    assert_eq!(log.spaces().await.expect("spaces"), ["s", "t"]);
    assert_eq!(log.segments("s").await.expect("segments"), ["a"]);
    log.delete_segment("t", "x").await.expect("delete");
    assert!(log.segments("t").await.expect("segments").is_empty());
    assert_eq!(log.peek("t", "x").await.expect("peek").last_sequence, 0);
}

both!(concurrent_producers_serialise_or_find_the_gap);
async fn concurrent_producers_serialise_or_find_the_gap(log: LogClient) {
    let producers: Vec<_> = (0..2)
        .map(|_| {
            let log = log.clone();
            tokio::spawn(async move { log.produce("s", "a", records(1, 100)).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for p in producers {
        outcomes.push(p.await.expect("task"));
    }
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
        .await
        .expect("consume");
    assert_eq!(sequences(&all), (1..=100).collect::<Vec<_>>());
}

both!(space_offsets_resume_and_a_global_limit_spans_spaces);
async fn space_offsets_resume_and_a_global_limit_spans_spaces(log: LogClient) {
    log.produce("s", "a", records(1, 3)).await.expect("a");
    log.produce("s", "b", records(1, 2)).await.expect("b");
    log.produce("t", "c", records(1, 4)).await.expect("c");
    let first = log
        .consume_space(
            "s",
            SpaceRange {
                limit: 2,
                ..SpaceRange::default()
            },
        )
        .await
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
        .await
        .expect("rest");
    let seen: Vec<(String, u64)> = rest
        .iter()
        .map(|e| (e.segment.clone(), e.sequence))
        .collect();
    assert_eq!(seen, [("a".into(), 3), ("b".into(), 1), ("b".into(), 2)]);
    assert_eq!(log.last_offset("s").await.expect("last"), 5);
    let both = log
        .consume(vec![("s".into(), 4), ("t".into(), 0)], 3)
        .await
        .expect("both");
    let seen: Vec<(&str, u64)> = both
        .iter()
        .map(|e| (e.space.as_str(), e.sequence))
        .collect();
    assert_eq!(seen, [("s", 2), ("t", 1), ("t", 2)]);
}

both!(large_entries_round_trip);
async fn large_entries_round_trip(log: LogClient) {
    let payloads: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 8192]).collect();
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
    log.produce("blobs", "x", records).await.expect("produce");
    let back = log
        .consume_segment("blobs", "x", SegmentRange::default())
        .await
        .expect("consume");
    assert_eq!(back.len(), 50);
    for (e, p) in back.iter().zip(&payloads) {
        assert_eq!(&e.payload, p);
        assert_eq!(e.metadata["kind"], "blob");
    }
}

both!(big_produces_go_in_chunks);
async fn big_produces_go_in_chunks(log: LogClient) {
    let statuses = log
        .produce("s", "a", records(1, 25_000))
        .await
        .expect("produce");
    let lasts: Vec<u64> = statuses.iter().map(|s| s.last_sequence).collect();
    assert_eq!(lasts, [10_000, 20_000, 25_000]);
}

async fn next(s: &mut streamflow_log::Subscription) -> streamflow_log::SegmentStatus {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("in time")
        .expect("a status")
}

both!(a_subscription_sees_the_current_status_then_each_write);
async fn a_subscription_sees_the_current_status_then_each_write(log: LogClient) {
    log.produce("s", "a", records(1, 1)).await.expect("produce");
    let mut one = log.subscribe("s", "a").await.expect("subscribe");
    let mut all = log.subscribe("s", "*").await.expect("subscribe");
    assert_eq!(next(&mut one).await.last_sequence, 1);
    assert_eq!(next(&mut all).await.segment, "a");
    for _ in 0..3 {
        log.publish("s", "a", b"x".to_vec(), serde_json::Map::new())
            .await
            .expect("publish");
    }
    log.publish("s", "b", b"y".to_vec(), serde_json::Map::new())
        .await
        .expect("publish");
    let mut last = 0;
    while last < 4 {
        let s = next(&mut one).await;
        assert_eq!(s.segment, "a");
        last = s.last_sequence;
    }
    assert!(last >= 3);
    let mut segments = std::collections::BTreeSet::new();
    while segments.len() < 2 {
        segments.insert(next(&mut all).await.segment);
    }
}

both!(leases_are_exclusive_expire_renew_and_report_loss);
async fn leases_are_exclusive_expire_renew_and_report_loss(log: LogClient) {
    // Exclusive while unexpired; the holder may renew; expired, it can be taken.
    log.acquire_lease("k", "a", Duration::from_millis(150))
        .await
        .expect("a takes it");
    assert!(matches!(
        log.acquire_lease("k", "b", Duration::from_secs(1)).await,
        Err(LogError::LeaseHeld { .. })
    ));
    log.acquire_lease("k", "a", Duration::from_millis(150))
        .await
        .expect("a renews");
    tokio::time::sleep(Duration::from_millis(200)).await;
    log.acquire_lease("k", "b", Duration::from_secs(60))
        .await
        .expect("expired: b takes it");
    log.release_lease("k", "b").await.expect("release");

    // Renewed while the work runs, well past the ttl.
    let held = log.clone();
    let ttl = Duration::from_millis(300);
    let kept = streamflow_log::with_lease(&log, "job", ttl, |token| async move {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let other = held.acquire_lease("job", "intruder", ttl).await;
        (token.is_lost(), other.is_err())
    })
    .await
    .expect("with_lease");
    assert_eq!(kept, (false, true), "renewed, and exclusive");
    // Released after the work: free for the next holder.
    log.acquire_lease("job", "next", ttl)
        .await
        .expect("released");
    log.release_lease("job", "next").await.expect("release");
    // Lost: another holder takes it over; the work's token fires.
    let thief = log.clone();
    let noticed = streamflow_log::with_lease(&log, "job", ttl, |mut token| async move {
        thief
            .release_lease("job", token.holder())
            .await
            .expect("drop it");
        thief
            .acquire_lease("job", "thief", Duration::from_secs(60))
            .await
            .expect("steal");
        tokio::time::timeout(Duration::from_secs(5), token.lost())
            .await
            .is_ok()
    })
    .await
    .expect("with_lease");
    assert!(noticed, "the token fired when the lease was lost");
    assert!(matches!(
        log.acquire_lease("job", "other", ttl).await,
        Err(LogError::LeaseHeld { .. })
    ));
}

both!(retention_trims_the_oldest_entries);
async fn retention_trims_the_oldest_entries(log: LogClient) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    // Ten old entries, then ten fresh ones.
    let mut rs = records(1, 20);
    for r in &mut rs {
        r.timestamp = if r.sequence <= 10 {
            now - 3_600_000
        } else {
            now
        };
    }
    log.produce("s", "a", rs).await.expect("produce");
    log.set_retention(
        "s",
        streamflow_log::Retention {
            max_age: Some(Duration::from_secs(60)),
            max_bytes: None,
        },
    )
    .await
    .expect("retention");
    let removed = match &log {
        LogClient::Local(l) => l.enforce_retention().expect("enforce"),
        // The server applies it on its own schedule; this test's server is
        // driven directly for the local case only.
        LogClient::Remote(_) => return,
    };
    assert_eq!(removed, 10);
    let left = log
        .consume_segment("s", "a", SegmentRange::default())
        .await
        .expect("consume");
    assert_eq!(sequences(&left), (11..=20).collect::<Vec<_>>());
    let status = log.peek("s", "a").await.expect("peek");
    assert_eq!((status.first_sequence, status.last_sequence), (11, 20));
    // The segment goes on where it was.
    log.produce("s", "a", records(21, 21))
        .await
        .expect("continues");
}

#[test]
fn retention_by_size_keeps_the_newest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = streamflow_log::Log::open(dir.path()).expect("open");
    log.produce("s", "a", &records(1, 100)).expect("produce");
    let one = log
        .consume_segment(
            "s",
            "a",
            SegmentRange {
                limit: 1,
                ..SegmentRange::default()
            },
        )
        .expect("consume")[0]
        .payload
        .len() as u64;
    log.set_retention(
        "s",
        streamflow_log::Retention {
            max_age: None,
            max_bytes: Some(30 * (one + 40)),
        },
    )
    .expect("retention");
    let removed = log.enforce_retention().expect("enforce");
    assert!(removed > 0 && removed < 100, "removed {removed}");
    let left = log
        .consume_segment("s", "a", SegmentRange::default())
        .expect("consume");
    assert_eq!(left.last().map(|e| e.sequence), Some(100), "newest kept");
    assert_eq!(left.len() as u64, 100 - removed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_scoped_to_another_store_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = server(dir.path()).await;
    let other =
        auth::issue(SECRET, "test", &["other".into()], Duration::from_secs(600)).expect("token");
    let log = LogClient::connect(&url, "default", Some(other))
        .await
        .expect("the token is valid");
    let refused = log.spaces().await.expect_err("not its store");
    assert!(matches!(refused, LogError::Unauthorized(_)), "{refused}");
    let forged =
        auth::issue(b"wrong", "test", &["*".into()], Duration::from_secs(600)).expect("token");
    let denied = LogClient::connect(&url, "default", Some(forged))
        .await
        .expect_err("a forged token");
    assert!(matches!(denied, LogError::Unauthorized(_)), "{denied}");
}

#[test]
fn a_local_store_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = streamflow_log::Log::open(dir.path()).expect("open");
        log.produce("s", "a", &records(1, 5)).expect("produce");
    }
    let log = streamflow_log::Log::open(dir.path()).expect("reopen");
    let back = log
        .consume_segment("s", "a", SegmentRange::default())
        .expect("consume");
    assert_eq!(sequences(&back), [1, 2, 3, 4, 5]);
}

#[test]
fn a_store_that_keeps_failing_to_open_is_refused_for_a_while() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A file where the store's directory would go: it cannot be opened.
    std::fs::write(dir.path().join("broken"), b"not a directory").expect("write");
    let stores = Stores::new(dir.path().to_path_buf(), "test");
    for _ in 0..3 {
        let e = stores.get("broken").err().expect("cannot open");
        assert!(matches!(e, LogError::Store(_)), "{e}");
    }
    let refused = stores.get("broken").err().expect("refused");
    assert!(
        matches!(refused, LogError::Unavailable { retry_in_ms, .. } if retry_in_ms > 25_000),
        "{refused}"
    );
    // Other stores are not affected; bad names are refused outright.
    assert!(stores.get("fine").is_ok());
    assert!(matches!(
        stores.get("../escape"),
        Err(LogError::InvalidArgs(_))
    ));
    // Idle stores nobody holds are closed, and reopen on use.
    stores.evict_idle(Duration::ZERO);
    assert!(stores.get("fine").is_ok());
}
