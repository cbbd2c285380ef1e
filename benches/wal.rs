//! Why the raft log is its own WAL and not sled: durable appends per second, side by side in
//! one run. Each "append" is one small raft entry made durable before it counts.
//!
//! - `wal_fdatasync/1`: one append, one `fdatasync` (a single client).
//! - `wal_fdatasync/16`: 16 appends then one group-committed `fdatasync` (16 clients).
//! - `sled_flush/1`, `sled_flush/16`: the same with sled `insert` + `flush`, which on Linux
//!   is `sync_file_range`, *not* a full fsync (spacejam/sled#1452): even the fast path would
//!   not give the durability raft needs.
//!
//! Run: `cargo bench -p edgefabric-store --bench wal`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgefabric_store::log::LogEngine;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("durable_append");
    g.sample_size(20);
    let entry = vec![7u8; 300];
    for batch in [1usize, 16] {
        g.throughput(Throughput::Elements(batch as u64));
        let dir = tempfile::tempdir().unwrap();
        let log = LogEngine::open(dir.path()).unwrap();
        let mut next = 1u64;
        g.bench_with_input(BenchmarkId::new("wal_fdatasync", batch), &batch, |b, &batch| {
            b.iter(|| {
                for _ in 0..batch {
                    log.append(1, vec![(next, entry.clone())]).unwrap();
                    next += 1;
                }
                log.sync_blocking().unwrap();
            })
        });
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let mut k = 0u64;
        g.bench_with_input(BenchmarkId::new("sled_flush", batch), &batch, |b, &batch| {
            b.iter(|| {
                for _ in 0..batch {
                    db.insert(k.to_be_bytes(), entry.as_slice()).unwrap();
                    k += 1;
                }
                db.flush().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
