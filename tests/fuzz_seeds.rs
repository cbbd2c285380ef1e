//! Writes the fuzz targets' seed corpora (`fuzz/corpus/<target>/`) from the real encoders, so
//! the fuzzers start from valid inputs of every format. Not part of the suite:
//!   cargo test -p edgefabric --test fuzz_seeds -- --ignored
//! then commit what changed under `fuzz/corpus/`.

use std::path::PathBuf;

use edgefabric_crypto::{envelope, paseto, Identity};
use edgefabric_ledger::{merkle, note};
use edgefabric_store::types::{Command, Op, Record};
use edgefabric_tsdb::batch::{SealedBatch, SealedCompaction, SealedSeries, WriteBatch};
use edgefabric_tsdb::codec;
use edgefabric_tsdb::engine::BlockId;

fn corpus(target: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn seed(target: &str, name: &str, bytes: impl AsRef<[u8]>) {
    std::fs::write(corpus(target).join(name), bytes).unwrap();
}

#[test]
#[ignore]
fn write_fuzz_seeds() {
    // Line protocol: every field type, escapes, precision, a comment, a bad line.
    for (i, body) in [
        "cpu,host=a,region=eu\\ west usage=0.5,count=3i,ok=true,name=\"x \\\"y\\\"\" 1700000000000000000\n",
        "mem free=1u\n# comment\nmem,host=b free=2u 1700000000\n",
        "weird\\,name,tag\\=k=v\\ w f=-1.5e10,g=NaN 1\n",
        "bad line without fields\n",
    ]
    .iter()
    .enumerate()
    {
        seed("line_protocol", &format!("seed-{i}"), body);
    }
    // PromQL: the golden queries, one a file.
    let golden = include_str!("../benches/golden-queries.promql");
    for (i, q) in golden.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).enumerate() {
        seed("promql", &format!("golden-{i}"), q);
        seed("promql_eval", &format!("golden-{i}"), q);
    }
    for (i, q) in [
        "histogram_quantile(0.9, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
        "max_over_time(deriv(node_load1[10m])[1h:1m] offset 5m) > bool 0",
        "label_replace(weird, \"k\", \"$1\", \"kind\", \"(s.*)\") or absent_over_time(nope[5m])",
        "sum without (cpu) (resets(node_cpu_seconds_total[1h])) @ end() * on (host) group_left node_uname_info",
    ]
    .iter()
    .enumerate()
    {
        seed("promql_eval", &format!("eval-{i}"), q);
    }
    seed("promql", "selector", r#"{__name__=~"node_.+",job!="x"}[5m] offset 1h @ 1700000000"#);
    // Chunks: regular and irregular times, integers, decimals, floats, specials.
    let sets: Vec<Vec<(i64, f64)>> = vec![
        (0..240).map(|i| (1_700_000_000_000 + i * 10_000, i as f64)).collect(),
        (0..240).map(|i| (1_700_000_000_000 + i * 10_000 + (i % 7), (i as f64 * 0.37).sin())).collect(),
        (0..100).map(|i| (i * 1000, 12.5 + i as f64 * 0.01)).collect(),
        vec![(1, f64::NAN), (2, f64::INFINITY), (3, -0.0), (4, f64::from_bits(0x7ff0_0000_0000_0002))],
    ];
    for (i, s) in sets.iter().enumerate() {
        seed("chunk_codec", &format!("encode-{i}"), codec::encode(s));
        seed("chunk_codec", &format!("fast-{i}"), codec::encode_fast(s));
        seed("chunk_codec", &format!("xor-{i}"), codec::encode_xor_only(s));
    }
    // Time-series raft entries.
    let labels =
        |n: &str| vec![("__name__".to_string(), n.to_string()), ("host".to_string(), "a".to_string())];
    let points = edgefabric_tsdb::line::parse_points(
        "cpu,host=a u=1,s=2 1000\ncpu,host=b u=3 2000\n",
        edgefabric_tsdb::line::Precision::Ms,
        0,
    )
    .unwrap();
    let batch = WriteBatch::from_points("default", points).unwrap();
    seed("ts_batches", "write", batch.encode());
    let sealed = SealedSeries {
        labels: labels("temp"),
        min_t: 1000,
        max_t: 2000,
        count: 2,
        key_version: 1,
        sealed: vec![1, 0, 0, 0, 1, 9, 9, 9],
    };
    seed("ts_batches", "sealed", SealedBatch { ns: "vault".into(), series: vec![sealed.clone()] }.encode());
    let replaces = vec![
        BlockId { max_t: 1500, index: 3, position: 0, min_t: 1000 },
        BlockId { max_t: 2000, index: 4, position: 1, min_t: 1600 },
    ];
    seed(
        "ts_batches",
        "compaction",
        SealedCompaction { ns: "vault".into(), replaces, merged: sealed }.encode(),
    );
    // The engine's file: a real one, written by the engine.
    let dir = tempfile::tempdir().unwrap();
    {
        let kv = edgefabric_tsdb::logkv::LogKv::open(&dir.path().join("data.log")).unwrap();
        let mut b = edgefabric_tsdb::logkv::Batch::default();
        b.insert(b"s1".to_vec(), b"series".to_vec());
        b.insert(b"c1".to_vec(), codec::encode(&sets[0]));
        kv.apply(b, true).unwrap();
        let mut b = edgefabric_tsdb::logkv::Batch::default();
        b.remove(b"s1".to_vec());
        kv.apply(b, true).unwrap();
    }
    seed("logkv_replay", "two-batches", std::fs::read(dir.path().join("data.log")).unwrap());
    // Tokens.
    let id = Identity::from_seed(&[7u8; 32]);
    seed("token", "valid", paseto::sign(&id, br#"{"sub":"app","roles":["reader:default"]}"#, b"", b""));
    seed("token", "footer", paseto::sign(&id, b"{}", b"footer", b"implicit"));
    // A signed checkpoint and a verifier key.
    let signer = Identity::from_seed(&[9u8; 32]);
    let root = merkle::root(&[merkle::leaf_hash(b"a"), merkle::leaf_hash(b"b")]);
    let cp = note::Checkpoint { origin: "edgefabric/fuzz".into(), size: 2, root, extensions: vec![] };
    seed("checkpoint_note", "signed", note::sign(&cp.text(), &[("edgefabric/fuzz", &signer)]).unwrap());
    // Proofs over 7 leaves: inclusion of 3, consistency 3 → 7 (the layout the target reads).
    let leaves: Vec<_> = (0..7u8).map(|i| merkle::leaf_hash(&[i])).collect();
    let mut inc = Vec::new();
    inc.extend_from_slice(&2u64.to_le_bytes()); // even: sizes folded below 64
    inc.extend_from_slice(&7u64.to_le_bytes());
    inc.push(1);
    inc.push(3);
    inc.extend_from_slice(&merkle::root(&leaves));
    inc.extend_from_slice(&merkle::root(&leaves));
    for h in merkle::inclusion_proof(&leaves, 3).unwrap() {
        inc.extend_from_slice(&h);
    }
    seed("merkle_proofs", "inclusion", inc);
    let mut con = Vec::new();
    con.extend_from_slice(&4u64.to_le_bytes());
    con.extend_from_slice(&7u64.to_le_bytes());
    con.push(0);
    con.extend_from_slice(&merkle::root(&leaves[..4]));
    con.extend_from_slice(&merkle::root(&leaves));
    for h in merkle::consistency_proof(&leaves, 4).unwrap() {
        con.extend_from_slice(&h);
    }
    seed("merkle_proofs", "consistency", con);
    // Sealed values and a wrapped key.
    let dk = envelope::DataKey::from_bytes([3u8; 32]);
    seed("sealed_values", "value", envelope::seal(&dk, 1, "ns", "key", b"secret").unwrap());
    seed("sealed_values", "block", envelope::seal_series(&dk, 2, b"context", b"samples").unwrap());
    // The write-ahead file: a real one, with entries, a vote and a purge.
    let wal = tempfile::tempdir().unwrap();
    {
        let engine = edgefabric_store::log::LogEngine::open(wal.path()).unwrap();
        engine.append(1, vec![(1, b"entry one".to_vec()), (2, b"entry two".to_vec())]).unwrap();
        engine.append(u64::MAX - 3, vec![(1, b"queued".to_vec())]).unwrap();
        engine.purge(1, 1, b"purged".to_vec()).unwrap();
        engine.save_vote(1, b"vote".to_vec()).unwrap();
        engine.sync_blocking().unwrap();
    }
    seed("raft_wal_replay", "entries", std::fs::read(wal.path().join("raft.wal")).unwrap());
    // REST bodies and query strings.
    for (i, body) in [
        r#"{"class":"confidential","key_sites":["a","b"],"replicas":3}"#,
        r#"{"class":"site-local","home_site":"a"}"#,
        r#"{"ops":[{"op":"put","ns":"default","key":"k","value_base64":"dg==","cas":0},{"op":"delete","ns":"default","key":"j"}]}"#,
        r#"{"subject":"app","roles":["reader:default"],"ttl":"1h"}"#,
        r#"{"version":1}"#,
        r#"{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","name":"app"}"#,
        "query=rate(x%5B5m%5D)&start=1700000000&end=2023-11-14T22%3A13%3A20Z&step=15s&lookback_delta=1m",
        "consistency=stale&prefix=a&after=b&limit=10",
        "actor=app&ns=default&action=kv.put&from=0&until=2026-11-27T00:00:00Z&limit=5",
        "/v1/kv/default/key",
    ]
    .iter()
    .enumerate()
    {
        seed("rest_inputs", &format!("seed-{i}"), body);
    }
    // A remote-write body, as Prometheus sends it.
    use prost::Message;
    let req = edgefabric::ts::remote::WriteRequest {
        timeseries: vec![edgefabric::ts::remote::TimeSeries {
            labels: vec![
                edgefabric::ts::remote::Label { name: "__name__".into(), value: "up".into() },
                edgefabric::ts::remote::Label { name: "job".into(), value: "node".into() },
            ],
            samples: vec![edgefabric::ts::remote::Sample { value: 1.0, timestamp: 1_700_000_000_000 }],
        }],
    };
    let body = snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).unwrap();
    seed("remote_write", "one-series", body);
    // Wire: commands and a record.
    let put = Command::Batch(vec![Op::Put {
        ns: "default".into(),
        key: "k".into(),
        value: b"v".to_vec(),
        cas: Some(3),
    }]);
    seed("wire_decode", "batch", edgefabric_store::codec::encode(&put).unwrap());
    seed(
        "wire_decode",
        "ts",
        edgefabric_store::codec::encode(&Command::TsWrite { shard: 1, batch: batch.encode() }).unwrap(),
    );
    seed(
        "wire_decode",
        "record",
        edgefabric_store::codec::encode(&Record { revision: 9, value: b"v".to_vec() }).unwrap(),
    );
    write_backup_seed();
}

/// The backup file's seed alone (it is deterministic): `cargo test -p edgefabric --test
/// fuzz_seeds write_backup_seed -- --ignored`.
#[test]
#[ignore]
fn write_backup_seed() {
    seed("backup_file", "backup", edgefabric_store::backup::sample_backup().unwrap());
}
