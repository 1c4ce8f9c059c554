//! The log's store on redb (what `Log` uses) against fjall (an LSM tree)
//! for the log's access pattern: entries appended in batches, each batch
//! one durable transaction (fsync) writing the entries, their space-offset
//! index rows and the segment status; then every entry read back in order.
//!
//! `cargo bench -p streamflow-log --features compare-fjall --bench backends -- [entries] [payload] [batch]`

use std::time::Instant;

use streamflow_log::{Log, Record, SegmentRange};

/// Wall-clock figures (both stores run on the calling thread, fsync waits included).
fn report(what: &str, entries: u64, payload: usize, seconds: f64) {
    println!(
        "{what:>14}: {:>9.0} entries/s {:>7.1} MB/s",
        entries as f64 / seconds,
        (entries * payload as u64) as f64 / 1e6 / seconds,
    );
}

fn payload(i: u64, size: usize) -> Vec<u8> {
    let mut out = format!(
        "{{\"auction\":{},\"price\":{},\"pad\":\"",
        1000 + i % 9973,
        (i * 2_654_435_761) % 1_000_000
    )
    .into_bytes();
    let fill = size.saturating_sub(out.len() + 2);
    out.extend((0..fill).map(|k| b'a' + ((i as usize + k) % 26) as u8));
    out.extend_from_slice(b"\"}");
    out
}

fn redb(entries: u64, size: usize, batch: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path()).expect("open");
    let payloads: Vec<Vec<u8>> = (0..entries).map(|i| payload(i, size)).collect();
    let t = Instant::now();
    let mut seq = 1;
    for chunk in payloads.chunks(batch) {
        let records: Vec<Record> = chunk
            .iter()
            .map(|p| {
                let r = Record {
                    sequence: seq,
                    timestamp: seq as i64,
                    payload: p.clone(),
                    metadata: Default::default(),
                };
                seq += 1;
                r
            })
            .collect();
        log.produce("bench", "s", &records).expect("produce");
    }
    report(
        "redb produce",
        entries,
        size,
        t.elapsed().as_secs_f64(),
    );
    let t = Instant::now();
    let read = log
        .consume_segment("bench", "s", SegmentRange::default())
        .expect("read")
        .len() as u64;
    assert_eq!(read, entries);
    report(
        "redb read",
        entries,
        size,
        t.elapsed().as_secs_f64(),
    );
}

fn fjall(entries: u64, size: usize, batch: usize) {
    use fjall::{Database, KeyspaceCreateOptions, PersistMode};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::builder(dir.path()).open().expect("open");
    let data = db
        .keyspace("entries", KeyspaceCreateOptions::default)
        .expect("keyspace");
    let index = db
        .keyspace("offsets", KeyspaceCreateOptions::default)
        .expect("keyspace");
    let status = db
        .keyspace("segments", KeyspaceCreateOptions::default)
        .expect("keyspace");
    let payloads: Vec<Vec<u8>> = (0..entries).map(|i| payload(i, size)).collect();
    let key = |seq: u64| {
        let mut k = b"bench\0s\0".to_vec();
        k.extend_from_slice(&seq.to_be_bytes());
        k
    };
    let t = Instant::now();
    let mut seq = 1u64;
    for chunk in payloads.chunks(batch) {
        // As the log does per write: read the segment's status, write it back.
        let mut last: streamflow_log::SegmentStatus = match status.get(b"bench\0s").expect("get") {
            Some(v) => serde_json::from_slice(&v).expect("status"),
            None => streamflow_log::SegmentStatus::default(),
        };
        let mut b = db.batch().durability(Some(PersistMode::SyncAll));
        for p in chunk {
            // The same value layout as the redb store: header, then payload.
            let mut value = Vec::with_capacity(40 + p.len());
            value.extend_from_slice(&seq.to_le_bytes());
            value.extend_from_slice(&(seq as i64).to_le_bytes());
            value.extend_from_slice(&[0u8; 23]);
            value.extend_from_slice(p);
            b.insert(&data, key(seq), value);
            let mut off = b"bench\0".to_vec();
            off.extend_from_slice(&seq.to_be_bytes());
            b.insert(&index, off, key(seq));
            seq += 1;
        }
        last.last_sequence = seq - 1;
        b.insert(&status, b"bench\0s", serde_json::to_vec(&last).expect("status"));
        b.commit().expect("commit");
    }
    report(
        "fjall produce",
        entries,
        size,
        t.elapsed().as_secs_f64(),
    );
    let t = Instant::now();
    let mut read = 0u64;
    for item in data.range(key(1)..=key(u64::MAX)) {
        let (_, v) = item.into_inner().expect("read");
        // As the log hands entries out: the payload copied into its own Vec.
        let payload = v[31..].to_vec();
        read += u64::from(!payload.is_empty());
    }
    assert_eq!(read, entries);
    report(
        "fjall read",
        entries,
        size,
        t.elapsed().as_secs_f64(),
    );
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let entries = args.first().copied().unwrap_or(1_000_000);
    let size = args.get(1).copied().unwrap_or(100) as usize;
    let batch = args.get(2).copied().unwrap_or(1000) as usize;
    println!("{entries} entries of {size} B, {batch} per durable (fsync) transaction");
    redb(entries, size, batch);
    fjall(entries, size, batch);
}
