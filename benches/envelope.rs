//! What sealing and opening a value costs (issue 5): AES-256-GCM with the namespace, key and
//! key version bound in, for 1 KiB values, beside a plain copy of the same bytes.
//!
//!   cargo bench -p edgefabric-crypto --bench envelope

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edgefabric_crypto::envelope::{self, DataKey};

fn benches(c: &mut Criterion) {
    let dk = DataKey::generate().unwrap();
    let value = vec![7u8; 1024];
    let sealed = envelope::seal(&dk, 1, "conf", "bench/00000001", &value).unwrap();
    let mut g = c.benchmark_group("envelope_1KiB");
    g.throughput(Throughput::Bytes(1024));
    g.bench_function("copy", |b| b.iter(|| std::hint::black_box(value.clone())));
    g.bench_function("seal", |b| {
        b.iter(|| envelope::seal(&dk, 1, "conf", "bench/00000001", &value).unwrap())
    });
    g.bench_function("open", |b| b.iter(|| envelope::open(&dk, "conf", "bench/00000001", &sealed).unwrap()));
    g.finish();
}

criterion_group!(group, benches);
criterion_main!(group);
