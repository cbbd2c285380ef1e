//! Ledger engine benchmarks (issue 4): validating and appending signed entries, proof
//! generation on a log of 1 million entries (mean from criterion, p50/p99 measured directly),
//! and full re-verification of that 1-million-entry chain.
//!
//!   cargo bench -p edgefabric-ledger --bench ledger
//!
//! The 1M-entry chain is built once into `target/ledger-bench-1m` (about a minute) and reused;
//! delete that directory to rebuild it. `LEDGER_BENCH_ENTRIES` changes its size.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use edgefabric_crypto::Identity;
use edgefabric_ledger::block::{self, Block, BlockHeader};
use edgefabric_ledger::chain::{self, Signatures};
use edgefabric_ledger::entry::{image_message, Author, Entry, EntryKind};
use edgefabric_ledger::merkle::{self, Hash};

// The allocator the node binary uses (see api/src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BLOCK: usize = 4096;

fn digest(i: u64) -> String {
    let h = merkle::sha256(&[&i.to_be_bytes()]);
    format!("sha256:{}", h.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn publisher() -> Identity {
    Identity::from_seed(&[9; 32])
}

fn node() -> Identity {
    Identity::from_seed(&[1; 32])
}

/// Image registrations `from..to`, signed on every core.
fn registrations(from: u64, to: u64) -> Vec<Entry> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let chunk = (to - from).div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let p = publisher();
                    let (a, b) = (from + t * chunk, (from + (t + 1) * chunk).min(to));
                    (a..b)
                        .map(|i| {
                            let (name, d) = (format!("app-{i}"), digest(i));
                            Entry {
                                signature: p.sign(&image_message(&name, &d)).to_vec(),
                                kind: EntryKind::ImageRegistered {
                                    name,
                                    digest: d,
                                    publisher: "acme".into(),
                                },
                                author: Author::Publisher("acme".into()),
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

fn commit(tree: &sled::Tree, writes: chain::Writes) {
    let mut batch = sled::Batch::default();
    for (k, v) in writes {
        match v {
            Some(v) => batch.insert(k, v),
            None => batch.remove(k),
        }
    }
    tree.apply_batch(batch).unwrap();
}

/// The RFC 6962 root of a growing log, from its right border (for building headers fast).
#[derive(Default)]
struct Frontier(Vec<(u64, Hash)>);

impl Frontier {
    fn push(&mut self, h: Hash) {
        self.0.push((1, h));
        while self.0.len() >= 2 && self.0[self.0.len() - 1].0 == self.0[self.0.len() - 2].0 {
            let (n, r) = self.0.pop().unwrap();
            let (_, l) = self.0.pop().unwrap();
            self.0.push((2 * n, merkle::node_hash(&l, &r)));
        }
    }
    fn root(&self) -> Hash {
        let mut it = self.0.iter().rev();
        let Some((_, mut acc)) = it.next().copied() else { return merkle::empty_root() };
        for (_, l) in it {
            acc = merkle::node_hash(l, &acc);
        }
        acc
    }
}

/// Genesis and the publisher; returns the frontier after them.
fn start_chain(tree: &sled::Tree) -> Frontier {
    let genesis = chain::genesis_entries(&[(1, "a".into(), node().public_key().to_bytes())]);
    let add = Entry::by_node(
        1,
        EntryKind::PublisherAdded {
            id: "acme".into(),
            public_key: publisher().public_key().to_bytes(),
            by: "admin".into(),
        },
        &node(),
    )
    .unwrap();
    let mut f = Frontier::default();
    for entries in [genesis, vec![add]] {
        let (b, _) = chain::build_block(tree, &entries, 0, 1).unwrap();
        let b = b.unwrap();
        for e in &b.entries {
            f.push(merkle::leaf_hash(&e.leaf_bytes().unwrap()));
        }
        commit(tree, chain::apply_block(tree, &b, None, Signatures::Batch).unwrap().0);
    }
    f
}

/// The chain of `n` registrations (plus genesis and the publisher), built once and cached.
fn big_chain(n: u64) -> (sled::Db, sled::Tree) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../target/ledger-bench-{n}"));
    let done = dir.join("DONE");
    let fresh = !done.exists();
    if fresh {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let db = sled::Config::new().path(dir.join("db")).cache_capacity(512 << 20).open().unwrap();
    let tree = db.open_tree("ledger").unwrap();
    if fresh {
        eprintln!("building a chain of {n} entries in {} (once) ...", dir.display());
        let t = Instant::now();
        let mut f = start_chain(&tree);
        let mut next = 0u64;
        while next < n {
            let to = (next + 64 * BLOCK as u64).min(n);
            let entries = registrations(next, to);
            for chunk in entries.chunks(BLOCK) {
                // Headers made here (the signatures were made here too), then the block is
                // validated (rules, roots) and stored as the node would.
                let head = chain::head(&tree).unwrap().unwrap();
                let hashes: Vec<Hash> =
                    chunk.iter().map(|e| merkle::leaf_hash(&e.leaf_bytes().unwrap())).collect();
                for h in &hashes {
                    f.push(*h);
                }
                let header = BlockHeader {
                    height: head.height + 1,
                    prev: head.hash,
                    time_ms: 0,
                    proposer: 1,
                    entry_count: chunk.len() as u32,
                    entry_root: block::entry_root(&hashes),
                    log_size: head.log_size + chunk.len() as u64,
                    log_root: f.root(),
                };
                let b = Block { header, entries: chunk.to_vec() };
                commit(&tree, chain::apply_block(&tree, &b, None, Signatures::Skip).unwrap().0);
            }
            next = to;
        }
        db.flush().unwrap();
        std::fs::write(&done, b"").unwrap();
        eprintln!("built in {:?}", t.elapsed());
    }
    (db, tree)
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn benches(c: &mut Criterion) {
    // LEDGER_BENCH_ONLY=verify runs only the full verification (for profiling it).
    let only_verify = std::env::var("LEDGER_BENCH_ONLY").is_ok_and(|v| v == "verify");
    if !only_verify {
        append_and_proofs(c);
    }
    let n: u64 = std::env::var("LEDGER_BENCH_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let (_db, big) = big_chain(n);
    let head = chain::head(&big).unwrap().unwrap();
    let size = head.log_size;
    // 3. Full verification of the whole chain (replay, every rule and signature).
    let t = Instant::now();
    let verified = chain::verify_chain(&big, None).unwrap().unwrap();
    let took = t.elapsed();
    assert_eq!(verified, head);
    eprintln!(
        "full verification of {} entries in {} blocks: {:.1} s, {:.0} entries/s",
        size,
        head.height + 1,
        took.as_secs_f64(),
        size as f64 / took.as_secs_f64()
    );
}

fn append_and_proofs(c: &mut Criterion) {
    // 1. Validate + append: blocks of 1,000 signed registrations, as a follower applies them
    //    (batch signature verification) and as the leader builds them (strict, one by one).
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let tree = db.open_tree("t").unwrap();
    start_chain(&tree);
    let pool = registrations(1_000_000_000, 1_000_000_000 + 200 * 1000);
    let mut next = 0usize;
    let mut g = c.benchmark_group("ledger_append");
    g.throughput(criterion::Throughput::Elements(1000));
    g.sample_size(20);
    g.bench_function("build_and_apply_1000", |b| {
        b.iter_batched(
            || {
                let e = pool[next % pool.len()..][..1000].to_vec();
                next += 1000;
                e
            },
            |entries| {
                let (blk, _) = chain::build_block(&tree, &entries, 0, 1).unwrap();
                let Some(blk) = blk else { return };
                let (w, _) = chain::apply_block(&tree, &blk, None, Signatures::Batch).unwrap();
                commit(&tree, w);
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    // 2. Proofs on a log of 1M entries.
    let n: u64 = std::env::var("LEDGER_BENCH_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let (_db, big) = big_chain(n);
    let head = chain::head(&big).unwrap().unwrap();
    let size = head.log_size;
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut g = c.benchmark_group("ledger_proofs");
    g.bench_function(format!("inclusion_at_{size}"), |b| {
        b.iter(|| chain::inclusion_proof(&big, rand() % size, size).unwrap())
    });
    g.bench_function(format!("consistency_to_{size}"), |b| {
        b.iter(|| chain::consistency_proof(&big, 1 + rand() % size, size).unwrap())
    });
    g.finish();
    let mut lat = vec![];
    for _ in 0..20_000 {
        let i = rand() % size;
        let t = Instant::now();
        let p = chain::inclusion_proof(&big, i, size).unwrap();
        lat.push(t.elapsed());
        assert!(!p.is_empty());
    }
    let mut clat = vec![];
    for _ in 0..20_000 {
        let m = 1 + rand() % size;
        let t = Instant::now();
        chain::consistency_proof(&big, m, size).unwrap();
        clat.push(t.elapsed());
    }
    eprintln!(
        "proofs at {size} entries, 20,000 random each: inclusion p50 {:?} p99 {:?}; consistency p50 {:?} p99 {:?}",
        percentile(lat.clone(), 0.5),
        percentile(lat, 0.99),
        percentile(clat.clone(), 0.5),
        percentile(clat, 0.99)
    );
}

criterion_group!(benches_group, benches);
criterion_main!(benches_group);
