//! Leases and membership against the local NATS JetStream server
//! (127.0.0.1:4222, started by `.ci/run`); each test uses a cluster name of
//! its own.

use std::time::{Duration, Instant};

use streamflow_cluster::{Acquired, Cluster, ClusterError, Member};

fn url() -> String {
    std::env::var("STREAMFLOW_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A cluster name no other test or run uses.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

const TTL: Duration = Duration::from_secs(2);

async fn cluster(name: &str) -> Cluster {
    Cluster::connect(&url(), name, TTL)
        .await
        .expect("connect to NATS")
}

fn member(name: &str, slots: usize) -> Member {
    Member {
        name: name.into(),
        slots,
        host: "test-host".into(),
        pid: std::process::id(),
        joined_ms: 0,
        exchange: None,
    }
}

/// Tries to take `key` until it is won or `within` has passed.
async fn take_within(
    c: &Cluster,
    key: &str,
    value: &[u8],
    within: Duration,
) -> Option<Box<streamflow_cluster::Lease>> {
    let deadline = Instant::now() + within;
    loop {
        if let Acquired::Won(lease) = c.acquire(key, value).await.expect("acquire") {
            return Some(lease);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_lease_is_exclusive_and_a_holder_paused_past_the_ttl_is_fenced() {
    let c = cluster(&unique("lease")).await;
    let Acquired::Won(mut first) = c
        .acquire("coordinator.q5", b"worker-a")
        .await
        .expect("acquire")
    else {
        panic!("a free lease is won");
    };
    // Held: a second contender is told who holds it.
    match c
        .acquire("coordinator.q5", b"worker-b")
        .await
        .expect("acquire")
    {
        Acquired::Held { value, revision } => {
            assert_eq!(&value[..], b"worker-a");
            assert_eq!(revision, first.epoch());
        }
        Acquired::Won(_) => panic!("a held lease cannot be won"),
    }
    // Renewed within the ttl, it stays held past the ttl.
    for _ in 0..4 {
        tokio::time::sleep(TTL / 3).await;
        first.renew().await.expect("renewed in time");
    }
    assert!(first.is_fresh());
    assert!(matches!(
        c.acquire("coordinator.q5", b"worker-b")
            .await
            .expect("acquire"),
        Acquired::Held { .. }
    ));
    // The holder stops renewing (a paused process): after the ttl another
    // takes it at a higher epoch …
    let second = take_within(&c, "coordinator.q5", b"worker-b", TTL * 4)
        .await
        .expect("taken over once the ttl passed");
    assert!(second.epoch() > first.epoch(), "epochs grow");
    assert!(
        !first.is_fresh(),
        "the paused holder knows it can no longer be sure"
    );
    // … and the old holder's renewal is refused: it is fenced.
    match first.renew().await {
        Err(ClusterError::LeaseLost { epoch, .. }) => assert_eq!(epoch, first.epoch()),
        other => panic!("the stale holder must be refused, got {other:?}"),
    }
    // Releasing a lease lost to another leaves the new holder's alone.
    first.release().await.expect("release");
    assert!(matches!(
        c.acquire("coordinator.q5", b"worker-c")
            .await
            .expect("acquire"),
        Acquired::Held { .. }
    ));
    // Released, it is free at once.
    second.release().await.expect("release");
    let third = take_within(
        &c,
        "coordinator.q5",
        b"worker-c",
        Duration::from_millis(500),
    )
    .await
    .expect("a released lease is free at once");
    assert!(third.epoch() > 0);
    c.dissolve().await.expect("dissolve");
}

#[tokio::test]
async fn a_kept_lease_outlives_the_ttl_until_released() {
    let c = cluster(&unique("kept")).await;
    let Acquired::Won(lease) = c.acquire("flow", b"a").await.expect("acquire") else {
        panic!("a free lease is won");
    };
    let held = lease.keep();
    tokio::time::sleep(TTL * 2).await;
    assert!(held.lost().is_none());
    assert!(matches!(
        c.acquire("flow", b"b").await.expect("acquire"),
        Acquired::Held { .. }
    ));
    held.release().await;
    assert!(
        take_within(&c, "flow", b"b", Duration::from_millis(500))
            .await
            .is_some()
    );
    c.dissolve().await.expect("dissolve");
}

#[tokio::test]
async fn members_join_and_leave_and_vanish_when_they_stop_renewing() {
    let c = cluster(&unique("members")).await;
    assert!(c.members().await.expect("members").is_empty());
    let w1 = c.join(member("w1", 2)).await.expect("join w1");
    let w2 = c.join(member("w2", 4)).await.expect("join w2");
    let names = |ms: Vec<Member>| {
        ms.into_iter()
            .map(|m| (m.name, m.slots))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(c.members().await.expect("members")),
        vec![("w1".to_string(), 2), ("w2".to_string(), 4)]
    );
    // A second worker of the same name is refused while the first lives.
    let e = c.join(member("w1", 1)).await.expect_err("duplicate name");
    assert!(e.to_string().contains("already in cluster"), "{e}");
    // Still there after several ttls: the background renewal works.
    tokio::time::sleep(TTL * 2).await;
    assert_eq!(c.members().await.expect("members").len(), 2);
    // w1 stops renewing (dropped, as a killed process): gone after the ttl.
    drop(w1);
    let deadline = Instant::now() + TTL * 4;
    while c.members().await.expect("members").len() > 1 {
        assert!(Instant::now() < deadline, "w1 expires");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        names(c.members().await.expect("members")),
        vec![("w2".to_string(), 4)]
    );
    // w2 leaves: gone at once.
    w2.leave().await;
    assert!(c.members().await.expect("members").is_empty());
    c.dissolve().await.expect("dissolve");
}

#[tokio::test]
async fn assignments_of_an_older_epoch_are_refused() {
    let c = cluster(&unique("assign")).await;
    let members = [member("w1", 4), member("w2", 2)];
    let nodes = [
        streamflow_cluster::NodeSpec {
            name: "bids".into(),
            parallelism: 2,
        },
        streamflow_cluster::NodeSpec {
            name: "window".into(),
            parallelism: 4,
        },
    ];
    assert!(c.assignment("q5").await.expect("read").is_none());
    // The coordinator at epoch 5 publishes; workers read it back.
    let at5 = streamflow_cluster::Assignment::new("q5", 5, &nodes, &members).expect("fits");
    c.publish_assignment(&at5).await.expect("publish");
    assert_eq!(c.assignment("q5").await.expect("read"), Some(at5.clone()));
    // A stale coordinator (epoch 3) is fenced; the newer one (6) replaces it.
    let at3 = streamflow_cluster::Assignment::new("q5", 3, &nodes, &members).expect("fits");
    match c.publish_assignment(&at3).await {
        Err(ClusterError::LeaseLost {
            epoch: 3, reason, ..
        }) => assert!(reason.contains("epoch 5"), "{reason}"),
        other => panic!("a stale coordinator must be refused, got {other:?}"),
    }
    let at6 =
        streamflow_cluster::Assignment::new("q5", 6, &nodes, &members[..1]).expect("fits in 2");
    c.publish_assignment(&at6).await.expect("publish");
    let read = c.assignment("q5").await.expect("read").expect("published");
    assert_eq!(read.epoch, 6);
    assert_eq!(read.workers.len(), 1, "w2 left: everything on w1");
    // Assignments do not expire with the ttl.
    tokio::time::sleep(TTL * 2).await;
    assert!(c.assignment("q5").await.expect("read").is_some());
    c.dissolve().await.expect("dissolve");
}

#[tokio::test]
async fn bad_names_and_ttls_are_refused() {
    let e = Cluster::connect(&url(), "no spaces", TTL)
        .await
        .expect_err("bad name");
    assert!(e.to_string().contains("cluster name 'no spaces'"), "{e}");
    let e = Cluster::connect(&url(), "ok", Duration::from_millis(10))
        .await
        .expect_err("bad ttl");
    assert!(e.to_string().contains("too short"), "{e}");
    let name = unique("ttl");
    let c = cluster(&name).await;
    let _w = c.join(member("w", 1)).await.expect("join");
    let other = Cluster::connect(&url(), &name, TTL * 2)
        .await
        .expect("connect");
    let e = other.members().await.expect_err("a different ttl");
    assert!(e.to_string().contains("use --ttl 2000ms"), "{e}");
    c.dissolve().await.expect("dissolve");
    let e = Cluster::connect("nats://127.0.0.1:1", "x", TTL)
        .await
        .expect_err("no server");
    assert!(
        e.to_string()
            .contains("cannot reach the cluster's NATS server at nats://127.0.0.1:1"),
        "{e}"
    );
}
