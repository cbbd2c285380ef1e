//! The attestation ledger end to end, against real `edgefabric` processes: the app-store flow
//! from the CLI (sign, register, verify offline with t-of-n node signatures), consistency
//! across nodes through kills and restarts, a lying server, and tampering with a stopped
//! node's store (caught by `ledger verify` and at start-up).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{Cluster, BIN};
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(30);

fn digest(i: u64) -> String {
    format!("sha256:{}", hex::encode(edgefabric_crypto::sha256(format!("image-{i}").as_bytes())))
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run edgefabric");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Polls until `f` returns Some, or panics after `timeout`.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    match client.get(url).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

async fn get_text(client: &reqwest::Client, url: &str) -> (u16, String) {
    match client.get(url).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_store_flow_and_identical_chains_on_three_nodes() {
    let mut c = Cluster::init(3, "a,b,c", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    let dir = c.cluster_dir();
    let trust = dir.join("trust.json");
    let token = c.token_file();
    let endpoints: std::collections::BTreeMap<u64, String> =
        c.ids().into_iter().map(|id| (id, c.http(id).to_string())).collect();
    let ep = |id: u64| endpoints[&id].clone();

    // Every node took part in genesis: its founders are the three node keys.
    let block0 = eventually(READY, "genesis", || async {
        let (st, v) = get_json(&c.client, &format!("{}/v1/ledger/blocks/0", ep(1))).await;
        (st == 200).then_some(v)
    })
    .await;
    assert_eq!(block0["entries"].as_array().unwrap().len(), 3);

    // The publisher's key, registered by the admin.
    let key = dir.join("acme.key");
    let (code, _, err) = run(&["keygen", "--out", s(&key)]);
    assert_eq!(code, 0, "{err}");
    let pubfile = format!("{}.pub", s(&key));
    let (code, out, err) = run(&[
        "publisher",
        "add",
        "--id",
        "acme",
        "--public-key-file",
        &pubfile,
        "--endpoint",
        &ep(1),
        "--token-file",
        s(&token),
    ]);
    assert_eq!(code, 0, "{out}{err}");

    // Register through node 2 with `image sign` + POST, and through node 3 with the CLI.
    let d1 = digest(1);
    let (code, sig, err) =
        run(&["image", "sign", "--key", s(&key), "--name", "camera-ai:2.1", "--digest", &d1]);
    assert_eq!(code, 0, "{err}");
    let body = json!({"name": "camera-ai:2.1", "digest": d1, "publisher": "acme", "signature": sig.trim()});
    let r =
        c.request(2, reqwest::Method::POST, "/v1/images", Some(body.to_string().into_bytes())).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    // The same registration again is idempotent; another name for the digest is a conflict.
    let r =
        c.request(3, reqwest::Method::POST, "/v1/images", Some(body.to_string().into_bytes())).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, sig2, _) = run(&["image", "sign", "--key", s(&key), "--name", "other", "--digest", &d1]);
    let conflict = json!({"name": "other", "digest": d1, "publisher": "acme", "signature": sig2.trim()});
    let r = c
        .request(1, reqwest::Method::POST, "/v1/images", Some(conflict.to_string().into_bytes()))
        .await
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    let d2 = digest(2);
    let (code, out, err) = run(&[
        "image",
        "register",
        "--key",
        s(&key),
        "--name",
        "gateway:1.0",
        "--digest",
        &d2,
        "--publisher",
        "acme",
        "--endpoint",
        &ep(3),
        "--token-file",
        s(&token),
    ]);
    assert_eq!(code, 0, "{out}{err}");

    // Bad input: a signature by another key, an unknown publisher, a malformed digest, no token.
    let bad = json!({"name": "x", "digest": digest(3), "publisher": "acme", "signature": sig.trim()});
    let r =
        c.request(1, reqwest::Method::POST, "/v1/images", Some(bad.to_string().into_bytes())).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("signature"), "{}", r.text());
    let unknown = json!({"name": "x", "digest": digest(3), "publisher": "nobody", "signature": sig.trim()});
    let r = c
        .request(1, reqwest::Method::POST, "/v1/images", Some(unknown.to_string().into_bytes()))
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    let malformed =
        json!({"name": "x", "digest": "sha256:xyz", "publisher": "acme", "signature": sig.trim()});
    let r = c
        .request(1, reqwest::Method::POST, "/v1/images", Some(malformed.to_string().into_bytes()))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("digest"), "{}", r.text());
    let anon = c.client.post(format!("{}/v1/images", ep(1))).body(body.to_string()).send().await.unwrap();
    assert_eq!(anon.status().as_u16(), 401);

    // Offline verification with 3-of-3 node signatures, from any node.
    for id in [1, 2, 3] {
        let (code, out, err) = run(&[
            "image",
            "verify",
            "--digest",
            &d1,
            "--endpoint",
            &ep(id),
            "--trust",
            s(&trust),
            "--min-signatures",
            "3",
        ]);
        assert_eq!(code, 0, "node {id}: {out}{err}");
        assert!(out.starts_with("OK:"), "{out}");
    }
    let (code, out, _) = run(&[
        "image",
        "verify",
        "--digest",
        &d2,
        "--endpoint",
        &ep(2),
        "--trust",
        s(&trust),
        "--name",
        "gateway:1.0",
    ]);
    assert_eq!(code, 0, "{out}");
    let (code, _, _) = run(&[
        "image",
        "verify",
        "--digest",
        &d2,
        "--endpoint",
        &ep(2),
        "--trust",
        s(&trust),
        "--name",
        "evil",
    ]);
    assert_ne!(code, 0, "a wrong name must fail");
    let (code, _, _) =
        run(&["image", "verify", "--digest", &digest(99), "--endpoint", &ep(1), "--trust", s(&trust)]);
    assert_eq!(code, 1, "an unknown image is not genuine");

    // The same over gRPC (edgefabric.v1.Ledger): the proof verifies offline with the pinned keys.
    let mut ledger = grpc::ledger_client::LedgerClient::new(c.grpc_channel(3).await);
    let img = ledger.get_image(grpc::GetImageRequest { digest: d1.clone() }).await.unwrap().into_inner();
    assert_eq!((img.status.as_str(), img.name.as_str()), ("registered", "camera-ai:2.1"));
    let e = img.entry.unwrap();
    let p = e.inclusion_proof.unwrap();
    let keys = pinned_keys(&trust);
    let proven = edgefabric_ledger::verify::verify_entry(
        &keys,
        None,
        3,
        &edgefabric_ledger::verify::Presented {
            leaf: &e.leaf,
            log_index: p.log_index,
            tree_size: p.tree_size,
            root_hash: Some(&p.root_hash),
            proof: &p.hashes,
            checkpoint: &img.checkpoint,
        },
    )
    .unwrap();
    assert_eq!(edgefabric_ledger::verify::image_record(&proven.entry, &d1, None), Ok(None));
    let missing = ledger.get_image(grpc::GetImageRequest { digest: digest(99) }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let mut unauth = grpc::RegisterImageRequest {
        name: "g".into(),
        digest: digest(4),
        publisher: "acme".into(),
        signature: vec![0; 64],
    };
    let err = ledger.register_image(unauth.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut req = tonic::Request::new(unauth.clone());
    req.metadata_mut().insert("authorization", format!("Bearer {}", c.token).parse().unwrap());
    let err = ledger.register_image(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let (_, sig4, _) = run(&["image", "sign", "--key", s(&key), "--name", "g", "--digest", &digest(4)]);
    unauth.signature =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, sig4.trim()).unwrap();
    let mut req = tonic::Request::new(unauth);
    req.metadata_mut().insert("authorization", format!("Bearer {}", c.token).parse().unwrap());
    let r = ledger.register_image(req).await.unwrap().into_inner();
    assert!(r.created);
    let cons = ledger
        .consistency_proof(grpc::ConsistencyProofRequest { from: 1, to: 0 })
        .await
        .unwrap()
        .into_inner();
    edgefabric_ledger::merkle::verify_consistency(1, cons.to, &cons.hashes, &cons.root_from, &cons.root_to)
        .unwrap();

    // A checkpoint to check consistency against later.
    let (st, old_note) = get_text(&c.client, &format!("{}/v1/ledger/checkpoint", ep(1))).await;
    assert_eq!(st, 200);
    let old_file = dir.join("old-checkpoint");
    std::fs::write(&old_file, &old_note).unwrap();
    let old_size: u64 = old_note.lines().nth(1).unwrap().parse().unwrap();

    // Kill node 2; register through the others; restart it; it catches up.
    c.kill9(2);
    for i in 10..20 {
        let (code, out, err) = run(&[
            "image",
            "register",
            "--key",
            s(&key),
            "--name",
            &format!("app-{i}"),
            "--digest",
            &digest(i),
            "--publisher",
            "acme",
            "--endpoint",
            &ep(1 + 2 * (i % 2)),
            "--token-file",
            s(&token),
        ]);
        assert_eq!(code, 0, "{out}{err}");
    }
    // With one node down, 2-of-3 still verifies; 3-of-3 cannot.
    let (code, out, err) = run(&[
        "image",
        "verify",
        "--digest",
        &digest(15),
        "--endpoint",
        &ep(3),
        "--trust",
        s(&trust),
        "--min-signatures",
        "2",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, _) = run(&[
        "image",
        "verify",
        "--digest",
        &digest(15),
        "--endpoint",
        &ep(3),
        "--trust",
        s(&trust),
        "--min-signatures",
        "3",
    ]);
    assert_ne!(code, 0, "node 2 is down: it cannot have cosigned");
    c.start(2);
    c.wait_ready(READY).await;
    // Revoke one image (as the admin) through the restarted node.
    let (code, out, err) = run(&[
        "image",
        "revoke",
        "--digest",
        &digest(12),
        "--reason",
        "CVE-2026-1234",
        "--endpoint",
        &ep(2),
        "--token-file",
        s(&token),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) =
        run(&["image", "verify", "--digest", &digest(12), "--endpoint", &ep(1), "--trust", s(&trust)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("REVOKED"), "{out}");
    // The publisher revokes its own image; a second revocation is a conflict.
    let d13 = digest(13);
    let revoke = [
        "image",
        "revoke",
        "--digest",
        &d13,
        "--reason",
        "withdrawn",
        "--key",
        s(&key),
        "--publisher",
        "acme",
    ];
    let (code, out, err) = run(&[&revoke[..], &["--endpoint", &ep(3), "--token-file", s(&token)]].concat());
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run(&[&revoke[..], &["--endpoint", &ep(1), "--token-file", s(&token)]].concat());
    assert_ne!(code, 0);
    assert!(err.contains("409"), "{err}");
    let (code, out, _) =
        run(&["image", "verify", "--digest", &d13, "--endpoint", &ep(2), "--trust", s(&trust)]);
    assert_eq!((code, out.starts_with("REVOKED")), (1, true), "{out}");

    // Every node ends with the identical chain.
    let heads = eventually(READY, "identical heads", || async {
        let mut heads = vec![];
        for id in [1, 2, 3] {
            let (st, v) = get_json(&c.client, &format!("{}/v1/ledger/status", ep(id))).await;
            if st != 200 || v["health"] != "verified" {
                return None;
            }
            heads.push((v["head_hash"].clone(), v["log_root"].clone(), v["log_size"].clone()));
        }
        (heads.iter().all(|h| *h == heads[0])).then_some(heads)
    })
    .await;
    let size = heads[0].2.as_u64().unwrap();
    assert!(size >= old_size + 11, "{size}");

    // The log only grew since the old checkpoint, by any node's proof, checked offline.
    for id in [1, 2, 3] {
        let (code, out, err) = run(&[
            "ledger",
            "consistency",
            "--old",
            s(&old_file),
            "--endpoint",
            &ep(id),
            "--trust",
            s(&trust),
            "--min-signatures",
            "3",
        ]);
        assert_eq!(code, 0, "node {id}: {out}{err}");
    }
    // And between any two sizes, the proofs any node serves verify against its roots.
    for (from, to) in [(1, size), (old_size, size), (2, old_size), (size, size)] {
        let (st, v) =
            get_json(&c.client, &format!("{}/v1/ledger/proof/consistency?from={from}&to={to}", ep(2))).await;
        assert_eq!(st, 200, "{v}");
        let hashes: Vec<Vec<u8>> = v["hashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| hex::decode(h.as_str().unwrap()).unwrap())
            .collect();
        let r1 = hex::decode(v["root_from"].as_str().unwrap()).unwrap();
        let r2 = hex::decode(v["root_to"].as_str().unwrap()).unwrap();
        edgefabric_ledger::merkle::verify_consistency(from, to, &hashes, &r1, &r2).unwrap();
    }
    let (st, _) =
        get_json(&c.client, &format!("{}/v1/ledger/proof/consistency?from=5&to={}", ep(1), size + 100)).await;
    assert_eq!(st, 400);
    let (st, _) = get_json(&c.client, &format!("{}/v1/ledger/proof/consistency?from=x", ep(1))).await;
    assert_eq!(st, 400);

    // Stopped, each node's store re-verifies from genesis to the same head.
    for id in [1, 2, 3] {
        c.kill9(id);
    }
    let mut verified = vec![];
    for id in [1, 2, 3] {
        let cfg = dir.join(format!("node{id}.toml"));
        let (code, out, err) = run(&["ledger", "verify", "--data", s(c.data_dir(id)), "--config", s(&cfg)]);
        assert_eq!(code, 0, "node {id}: {out}{err}");
        verified.push(out.split("head ").nth(1).unwrap_or_default().trim().to_string());
    }
    assert!(verified.iter().all(|h| *h == verified[0] && !h.is_empty()), "{verified:?}");
}

mod grpc {
    tonic::include_proto!("edgefabric.v1");
}

fn pinned_keys(trust: &Path) -> Vec<edgefabric_ledger::note::TrustedKey> {
    let t: Value = serde_json::from_str(&std::fs::read_to_string(trust).unwrap()).unwrap();
    t["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| edgefabric_ledger::note::TrustedKey {
            name: format!("node-{}", n["id"]),
            key: edgefabric_crypto::PublicKey::from_base64(n["public_key"].as_str().unwrap()).unwrap(),
        })
        .collect()
}

// ---- single dev nodes ----

struct Dev {
    child: Option<Child>,
    data: PathBuf,
    http: String,
    grpc: String,
    log: PathBuf,
}

impl Dev {
    fn start(data: &Path, extra: &[&str]) -> Dev {
        let base = common::free_base_port(1);
        let (grpc, http) = (format!("127.0.0.1:{base}"), format!("127.0.0.1:{}", base + 1));
        let log = data.with_extension("log");
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--dev", "--data", s(data), "--http", &http, "--grpc", &grpc])
            .args(extra)
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        Dev { child: Some(child), data: data.to_path_buf(), http: format!("http://{http}"), grpc, log }
    }

    fn token(&self) -> PathBuf {
        self.data.join("admin.token")
    }

    async fn ready(&self) {
        let client = reqwest::Client::new();
        eventually(READY, "dev node ready", || async {
            let (st, v) = get_json(&client, &format!("{}/v1/ledger/status", self.http)).await;
            (st == 200 && v["health"] != "verifying" && v["log_size"].as_u64() > Some(0)).then_some(())
        })
        .await;
    }

    /// SIGTERM, and wait: the graceful stop.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- {} ---\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = &self.grpc;
    }
}

/// An entry submitted the moment a new node answers is accepted, or the client is told to
/// retry (503) while the genesis block is still being written — never refused as malformed.
/// (`edgefabric demo` met a 400 "genesis: holds only the founding members, unsigned" there.)
#[tokio::test]
async fn entries_submitted_before_the_genesis_block_wait_instead_of_failing() {
    let root = tempfile::tempdir().unwrap();
    let dev = Dev::start(&root.path().join("data"), &[]);
    let client = reqwest::Client::new();
    let key = edgefabric_crypto::Identity::generate().unwrap().public_key().to_base64();
    let body = json!({"id": "early", "public_key": key}).to_string();
    let url = format!("{}/v1/publishers", dev.http);
    let deadline = Instant::now() + READY;
    let mut retries = 0;
    loop {
        assert!(Instant::now() < deadline, "no answer but 503 within {READY:?} ({retries} retries)");
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The admin token is written at first start.
        let Ok(token) = std::fs::read_to_string(dev.token()) else { continue };
        let sent = client
            .post(&url)
            .bearer_auth(token.trim())
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let Ok(r) = sent else { continue };
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        if status == 201 {
            break;
        }
        assert_eq!(status, 503, "{text}");
        retries += 1;
    }
    let token = std::fs::read_to_string(dev.token()).unwrap();
    let r = client
        .get(format!("{}/v1/publishers/early", dev.http))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["public_key"].as_str(), Some(key.as_str()), "{v}");
}

/// A dev node with a publisher and `n` registered images, one block each.
async fn dev_with_images(root: &Path, n: u64) -> (Dev, PathBuf) {
    let dev = Dev::start(&root.join("data"), &[]);
    dev.ready().await;
    let key = root.join("pub.key");
    assert_eq!(run(&["keygen", "--out", s(&key)]).0, 0);
    let (code, out, err) = run(&[
        "publisher",
        "add",
        "--id",
        "acme",
        "--public-key-file",
        &format!("{}.pub", s(&key)),
        "--endpoint",
        &dev.http,
        "--token-file",
        s(&dev.token()),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    for i in 0..n {
        let (code, out, err) = run(&[
            "image",
            "register",
            "--key",
            s(&key),
            "--name",
            &format!("app-{i}"),
            "--digest",
            &digest(i),
            "--publisher",
            "acme",
            "--endpoint",
            &dev.http,
            "--token-file",
            s(&dev.token()),
        ]);
        assert_eq!(code, 0, "{out}{err}");
    }
    // A checkpoint, so the node has signed (and remembers) its head.
    let (st, _) = get_text(&reqwest::Client::new(), &format!("{}/v1/ledger/checkpoint", dev.http)).await;
    assert_eq!(st, 200);
    (dev, key)
}

// Multi-threaded: the fake server runs while the test blocks on the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_server_cannot_get_a_forged_proof_accepted() {
    let root = tempfile::tempdir().unwrap();
    let (dev, _) = dev_with_images(root.path(), 6).await;
    let trust = dev.data.join("trust.json");
    let client = reqwest::Client::new();
    let (st, honest) = get_json(&client, &format!("{}/v1/images/{}", dev.http, digest(3))).await;
    assert_eq!(st, 200, "{honest}");
    let (_, other) = get_json(&client, &format!("{}/v1/images/{}", dev.http, digest(4))).await;

    // The lies a server could tell, each served to `image verify` by a fake endpoint.
    let mut lies: Vec<(&str, Value)> = vec![];
    let mut v = honest.clone();
    let mut leaf = base64_decode(v["leaf_base64"].as_str().unwrap());
    let last = leaf.len() - 1;
    leaf[last] ^= 1;
    v["leaf_base64"] = json!(base64_encode(&leaf));
    lies.push(("a flipped leaf byte", v));
    let mut v = honest.clone();
    v["leaf_base64"] = other["leaf_base64"].clone();
    lies.push(("another image's leaf", v));
    let mut v = honest.clone();
    v["leaf_base64"] = other["leaf_base64"].clone();
    v["inclusion_proof"] = other["inclusion_proof"].clone();
    lies.push(("another image's leaf with its valid proof", v));
    let mut v = honest.clone();
    let h0 = v["inclusion_proof"]["hashes"][0].as_str().unwrap().to_string();
    v["inclusion_proof"]["hashes"][0] = json!(flip_hex(&h0));
    lies.push(("a modified proof hash", v));
    let mut v = honest.clone();
    v["inclusion_proof"]["hashes"].as_array_mut().unwrap().push(json!(h0));
    lies.push(("trailing garbage in the proof", v));
    let mut v = honest.clone();
    v["inclusion_proof"]["hashes"].as_array_mut().unwrap().pop();
    lies.push(("a truncated proof", v));
    let mut v = honest.clone();
    v["inclusion_proof"]["tree_size"] = json!(v["inclusion_proof"]["tree_size"].as_u64().unwrap() + 1);
    lies.push(("a wrong tree size", v));
    let mut v = honest.clone();
    v["inclusion_proof"]["log_index"] = json!(v["inclusion_proof"]["log_index"].as_u64().unwrap() + 1);
    lies.push(("a wrong index", v));
    let mut v = honest.clone();
    let root_hex = v["inclusion_proof"]["root_hash"].as_str().unwrap().to_string();
    v["inclusion_proof"]["root_hash"] = json!(flip_hex(&root_hex));
    lies.push(("a stated root that is not the checkpoint's", v));
    let note = honest["checkpoint"].as_str().unwrap().to_string();
    let mut v = honest.clone();
    let mut lines: Vec<&str> = note.split('\n').collect();
    lines[1] = "999";
    v["checkpoint"] = json!(lines.join("\n"));
    lies.push(("a checkpoint text changed under its signature", v));
    let mut v = honest.clone();
    v["checkpoint"] = json!(note.split("\n\n").next().unwrap().to_string() + "\n\n");
    lies.push(("a checkpoint without signatures", v));
    let mut v = honest.clone();
    let forger = edgefabric_crypto::Identity::from_seed(&[66; 32]);
    let text = note.split("\n\n").next().unwrap().to_string() + "\n";
    v["checkpoint"] = json!(edgefabric_ledger::note::sign(&text, &[("node-1", &forger)]).unwrap());
    lies.push(("a checkpoint signed by a key nobody pinned", v));
    let mut v = honest.clone();
    v["status"] = json!("revoked");
    lies.push(("a status that contradicts the entry", v));

    let (fake, answer) = fake_server().await;
    for (what, lie) in lies {
        *answer.lock().unwrap() = lie;
        let (code, out, err) =
            run(&["image", "verify", "--digest", &digest(3), "--endpoint", &fake, "--trust", s(&trust)]);
        assert_ne!(code, 0, "{what} was accepted: {out}{err}");
        assert!(!out.contains("OK:"), "{what}: {out}");
    }
    // The control: the honest answer relayed by the same fake server verifies.
    *answer.lock().unwrap() = honest.clone();
    let (code, out, err) =
        run(&["image", "verify", "--digest", &digest(3), "--endpoint", &fake, "--trust", s(&trust)]);
    assert_eq!(code, 0, "{out}{err}");
    // And the pinned origin is enforced.
    let mut t: Value = serde_json::from_str(&std::fs::read_to_string(&trust).unwrap()).unwrap();
    t["origin"] = json!("edgefabric/another-cluster");
    let other_trust = root.path().join("other-trust.json");
    std::fs::write(&other_trust, t.to_string()).unwrap();
    let (code, _, err) =
        run(&["image", "verify", "--digest", &digest(3), "--endpoint", &fake, "--trust", s(&other_trust)]);
    assert_ne!(code, 0);
    assert!(err.contains("origin"), "{err}");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn flip_hex(h: &str) -> String {
    let mut b = hex::decode(h).unwrap();
    b[0] ^= 1;
    hex::encode(b)
}

/// A server that answers every request with the JSON in the returned slot.
async fn fake_server() -> (String, std::sync::Arc<std::sync::Mutex<Value>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = std::sync::Arc::new(std::sync::Mutex::new(Value::Null));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let a = answer.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let body = a.lock().unwrap().to_string();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = sock.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), answer)
}

/// Copies a stopped node's data directory (to tamper with the copy).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn ledger_tree(data: &Path) -> (sled::Db, sled::Tree) {
    let db = sled::open(data.join("sm")).unwrap();
    let tree = db.open_tree(format!("group-{}", u64::MAX - 1)).unwrap();
    (db, tree)
}

fn tamper(data: &Path, f: impl FnOnce(&sled::Tree)) {
    let (db, tree) = ledger_tree(data);
    f(&tree);
    db.flush().unwrap();
}

fn block_key(h: u64) -> Vec<u8> {
    edgefabric_ledger::chain::block_key(h)
}

#[tokio::test]
async fn tampering_with_a_stopped_node_is_caught_offline_and_at_start_up() {
    let root = tempfile::tempdir().unwrap();
    let (mut dev, _) = dev_with_images(root.path(), 5).await;
    dev.stop();
    // Genesis, the publisher, five images, and the audit trail's batches in between (shipped
    // asynchronously, so the layout varies): read it from a copy of the store.
    let (last, img, img_block) = {
        let copy = root.path().join("layout");
        copy_dir(&dev.data, &copy);
        let (_db, t) = ledger_tree(&copy);
        let head = edgefabric_ledger::chain::head(&t).unwrap().unwrap();
        let img = edgefabric_ledger::chain::image(&t, &digest(1)).unwrap().unwrap().registered_index;
        let img_block = (0..=head.height)
            .find(|h| {
                let hd = edgefabric_ledger::chain::header(&t, *h).unwrap().unwrap();
                hd.log_size > img && hd.log_size - u64::from(hd.entry_count) <= img
            })
            .unwrap();
        (head.height, img, img_block)
    };
    assert!(last >= 6 && (2..last).contains(&img_block), "{last} {img_block}");
    let (code, out, err) = run(&["ledger", "verify", "--data", s(&dev.data)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{} blocks", last + 1)), "{out}");

    let case = |name: &str, f: &dyn Fn(&sled::Tree)| -> (i32, String) {
        let copy = root.path().join(name);
        copy_dir(&dev.data, &copy);
        tamper(&copy, f);
        let (code, out, err) = run(&["ledger", "verify", "--data", s(&copy)]);
        (code, out + &err)
    };
    let flip = |key: Vec<u8>, at: usize| {
        move |t: &sled::Tree| {
            let mut v = t.get(&key).unwrap().unwrap().to_vec();
            let i = at % v.len();
            v[i] ^= 0x20;
            t.insert(&key, v).unwrap();
        }
    };
    // A flipped byte in block 3's header.
    let (code, out) = case("flip-header", &flip(block_key(3), 9));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("block 3"), "{out}");
    // A flipped byte in an image's registration entry.
    let (code, out) = case("flip-entry", &flip(edgefabric_ledger::chain::leaf_key(img), 30));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("block {img_block}")), "{out}");
    // Block 4 dropped.
    let (code, out) = case("drop", &|t: &sled::Tree| {
        t.remove(block_key(4)).unwrap();
    });
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("block 4"), "{out}");
    // Blocks 2 and 5 swapped.
    let (code, out) = case("reorder", &|t: &sled::Tree| {
        let (a, b) = (t.get(block_key(2)).unwrap().unwrap(), t.get(block_key(5)).unwrap().unwrap());
        t.insert(block_key(2), b).unwrap();
        t.insert(block_key(5), a).unwrap();
    });
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("block 2"), "{out}");
    // The last block cut off and the head rewritten to the one before: a shorter chain that is
    // consistent in itself, caught by the node's own signed checkpoint (and the debris).
    let (code, out) = case("truncate", &|t: &sled::Tree| {
        let prev = edgefabric_ledger::chain::header(t, last - 1).unwrap().unwrap();
        let gone = edgefabric_ledger::chain::header(t, last).unwrap().unwrap();
        t.remove(block_key(last)).unwrap();
        for i in prev.log_size..gone.log_size {
            t.remove(edgefabric_ledger::chain::leaf_key(i)).unwrap();
        }
        let head = edgefabric_ledger::chain::Head {
            height: last - 1,
            hash: prev.hash().unwrap(),
            log_size: prev.log_size,
            log_root: prev.log_root,
        };
        t.insert(
            edgefabric_ledger::chain::HEAD_KEY,
            bincode::serde::encode_to_vec(&head, bincode::config::standard()).unwrap(),
        )
        .unwrap();
    });
    assert_eq!(code, 1, "{out}");

    // At start-up: a rewritten tip is caught by the quick check, and the node refuses ledger
    // reads (KV keeps serving).
    let copy = root.path().join("tip");
    copy_dir(&dev.data, &copy);
    tamper(&copy, flip(block_key(last), 12));
    let node = Dev::start(&copy, &[]);
    let client = reqwest::Client::new();
    let v = eventually(READY, "the start-up verdict", || async {
        let (st, v) = get_json(&client, &format!("{}/v1/ledger/status", node.http)).await;
        (st == 200 && v["health"] != "verifying").then_some(v)
    })
    .await;
    assert!(v["health"]["corrupt"].is_string(), "{v}");
    let (st, _) = get_text(&client, &format!("{}/v1/ledger/checkpoint", node.http)).await;
    assert_eq!(st, 503);
    let (st, _) = get_json(&client, &format!("{}/v1/images/{}", node.http, digest(1))).await;
    assert_eq!(st, 503);
    drop(node);

    // A damaged middle block passes the quick check but not the full one (--verify-ledger).
    let copy = root.path().join("middle");
    copy_dir(&dev.data, &copy);
    tamper(&copy, flip(edgefabric_ledger::chain::leaf_key(img), 30));
    let node = Dev::start(&copy, &["--verify-ledger"]);
    let v = eventually(READY, "the full verdict", || async {
        let (st, v) = get_json(&client, &format!("{}/v1/ledger/status", node.http)).await;
        (st == 200 && v["health"] != "verifying").then_some(v)
    })
    .await;
    assert!(
        v["health"]["corrupt"].as_str().unwrap_or_default().contains(&format!("block {img_block}")),
        "{v}"
    );
    drop(node);

    // The untouched original still verifies and serves.
    let node = Dev::start(&dev.data, &["--verify-ledger"]);
    node.ready().await;
    let (st, v) = get_json(&client, &format!("{}/v1/ledger/status", node.http)).await;
    assert_eq!((st, v["health"].as_str()), (200, Some("verified")), "{v}");
}
