//! End-to-end tests against real `edgefabric` processes on loopback (see tests/common).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{set_toml, Cluster, Endpoints};

const READY: Duration = Duration::from_secs(30);

fn value_of(i: usize) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(i % 50)).into_bytes()
}

/// Writes keys `k{from}..k{to}` with `writers` concurrent clients spread over the nodes and
/// returns the keys acknowledged. Every key is retried until acknowledged or 60 s pass.
async fn write_keys(
    api: Endpoints,
    from: usize,
    to: usize,
    writers: usize,
    progress: Arc<AtomicUsize>,
) -> Vec<usize> {
    write_keys_into(
        api,
        from,
        to,
        writers,
        progress,
        Arc::new(Mutex::new(vec![])),
    )
    .await
}

/// As `write_keys`, recording each acknowledged key in `acked` as soon as it is acknowledged.
async fn write_keys_into(
    api: Endpoints,
    from: usize,
    to: usize,
    writers: usize,
    progress: Arc<AtomicUsize>,
    acked: Arc<Mutex<Vec<usize>>>,
) -> Vec<usize> {
    let next = Arc::new(AtomicUsize::new(from));
    let ids: Vec<u64> = api.http.keys().copied().collect();
    let mut tasks = vec![];
    for w in 0..writers {
        let (api, next, acked, progress, ids) = (
            api.clone(),
            next.clone(),
            acked.clone(),
            progress.clone(),
            ids.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= to {
                    return;
                }
                let via = ids[(i + w) % ids.len()];
                let deadline = Instant::now() + Duration::from_secs(60);
                if api
                    .put_until_acked(via, "default", &format!("k{i}"), &value_of(i), deadline)
                    .await
                {
                    acked.lock().unwrap().push(i);
                    progress.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut v = acked.lock().unwrap().clone();
    v.sort();
    v
}

/// Every acknowledged key reads back its value from node `id`: linearizable, and from the
/// local replica once it has caught up.
async fn check_all_readable(c: &Cluster, id: u64, keys: &[usize]) {
    for &i in keys {
        let got = c.get(id, "default", &format!("k{i}"), false).await;
        assert_eq!(
            got,
            Ok(Some(value_of(i))),
            "linearizable read of k{i} via node {id}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for &i in keys {
        loop {
            let got = c.get(id, "default", &format!("k{i}"), true).await;
            if got == Ok(Some(value_of(i))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "stale read of k{i} on node {id} never caught up: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The issue's scenario: 1,000 keys, `kill -9` of the leader under write load, writes go on,
/// the old leader restarts, and every acknowledged write is readable from every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_leader_under_load_loses_no_acknowledged_write() {
    let mut c = Cluster::init(3, "a,b,c", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    let leader = c.leader(READY).await;

    let progress = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(write_keys(c.endpoints(), 0, 1000, 8, progress.clone()));
    while progress.load(Ordering::SeqCst) < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.kill9(leader);
    let killed_at = progress.load(Ordering::SeqCst);
    let acked = writer.await.unwrap();
    assert!(killed_at < 1000, "the kill must happen under load");
    assert_eq!(
        acked.len(),
        1000,
        "every key is eventually acknowledged by the surviving majority"
    );

    let new_leader = c.leader(READY).await;
    assert_ne!(new_leader, leader, "a new leader takes over");
    c.start(leader);
    c.wait_ready(READY).await;
    for id in c.ids() {
        check_all_readable(&c, id, &acked).await;
    }
}

/// A node whose data directory is wiped rejoins learner-first and catches up by snapshot
/// (the log behind the snapshot is purged), then is a voter again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_node_catches_up_by_snapshot() {
    let tweak = |t| set_toml(t, &[("snapshot_logs", "100"), ("keep_logs", "10")]);
    let mut c = Cluster::init(3, "a,b,c", tweak);
    c.start_all();
    c.wait_ready(READY).await;
    let leader = c.leader(READY).await;
    let victim = c.ids().into_iter().find(|id| *id != leader).unwrap();

    let acked = write_keys(c.endpoints(), 0, 300, 4, Arc::new(AtomicUsize::new(0))).await;
    c.kill9(victim);
    c.wipe(victim);
    // More writes while it is gone, so the rest of the cluster snapshots and purges past
    // anything the victim could get from the log.
    let more = write_keys(c.endpoints(), 300, 600, 4, Arc::new(AtomicUsize::new(0))).await;
    c.start(victim);
    c.wait_ready(Duration::from_secs(60)).await;

    let all: Vec<usize> = acked.into_iter().chain(more).collect();
    assert_eq!(all.len(), 600);
    check_all_readable(&c, victim, &all).await;
    let snap = c.data_dir(victim).join("group-1").join("snapshot.bin");
    assert!(
        snap.exists(),
        "the wiped node installed a snapshot at {}",
        snap.display()
    );
    let status = c.status(victim).await.unwrap();
    let voters: Vec<u64> = serde_json::from_value(status["shards"][0]["replicas"].clone()).unwrap();
    assert!(
        voters.contains(&victim),
        "node {victim} is a voter again: {status}"
    );
    assert!(
        !c.data_dir(victim).join("REJOIN").exists(),
        "rejoin finished"
    );
    let log = c.log_text(victim);
    assert!(
        log.contains("rejoining as a learner"),
        "the data-loss path ran:\n{log}"
    );
    assert!(
        log.contains("rejoined the cluster as a voter"),
        "and finished:\n{log}"
    );
}

/// `kill -9` of every node at once, then a restart: nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_all_nodes_at_once_loses_nothing() {
    let mut c = Cluster::init(3, "a,b,c", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    let progress = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(vec![]));
    let writer = tokio::spawn(write_keys_into(
        c.endpoints(),
        0,
        100_000,
        8,
        progress.clone(),
        acked.clone(),
    ));
    while progress.load(Ordering::SeqCst) < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for id in c.ids() {
        c.kill9(id);
    }
    // Every node is dead: no acknowledgement can come after this point. Stop the writers and
    // take the exact set of keys acknowledged before the kill.
    writer.abort();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 200);
    c.start_all();
    c.wait_ready(READY).await;
    for id in c.ids() {
        for &i in &acked {
            let got = c.get(id, "default", &format!("k{i}"), false).await;
            assert_eq!(
                got,
                Ok(Some(value_of(i))),
                "acknowledged k{i} lost (read via node {id})"
            );
        }
    }
}

/// Without a quorum a write is answered 503 with a message within the request timeout, never
/// a hang; once a quorum is back, writes work again and the failed one is not half-applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_quorum_is_a_clear_503_not_a_hang() {
    let tweak = |t| set_toml(t, &[("request_timeout_ms", "1500")]);
    let mut c = Cluster::init(3, "a,b,c", tweak);
    c.start_all();
    c.wait_ready(READY).await;
    c.put(1, "default", "before", b"1").await.unwrap();
    c.kill9(2);
    c.kill9(3);
    let started = Instant::now();
    let r = c
        .request(
            1,
            reqwest::Method::PUT,
            "/v1/kv/default/during",
            Some(b"2".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered in {:?}",
        started.elapsed()
    );
    let r = c
        .request(1, reqwest::Method::GET, "/v1/kv/default/before", None)
        .await
        .unwrap();
    assert_eq!(
        r.status,
        503,
        "a linearizable read without quorum is refused: {}",
        r.text()
    );
    let r = c
        .request(
            1,
            reqwest::Method::GET,
            "/v1/kv/default/before?consistency=stale",
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"1"[..]),
        "a stale read is served locally"
    );
    assert!(!c.is_ready(1).await || c.leader(Duration::from_secs(1)).await == 1);

    c.start(2);
    c.wait_ready(READY).await;
    let rev = c.put(1, "default", "after", b"3").await.unwrap();
    assert!(rev > 0);
}

/// Any node accepts any request: writes through followers are forwarded, reads through any
/// node see them, and the gRPC API agrees with REST.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_forward_and_grpc_matches_rest() {
    let mut c = Cluster::init(3, "a,b,c", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    let leader = c.leader(READY).await;
    let follower = c.ids().into_iter().find(|id| *id != leader).unwrap();

    let rev = c
        .put(follower, "default", "fwd", b"via-follower")
        .await
        .unwrap();
    for id in c.ids() {
        let r = c
            .request(id, reqwest::Method::GET, "/v1/kv/default/fwd", None)
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.revision, r.body.clone()),
            (200, Some(rev), b"via-follower".to_vec())
        );
    }
    // CAS through a follower: stale revision is a 409 naming the current one.
    let r = c
        .request(
            follower,
            reqwest::Method::PUT,
            &format!("/v1/kv/default/fwd?cas={}", rev - 1),
            Some(b"x".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains(&format!("current {rev}")), "{}", r.text());

    // gRPC, through another follower.
    let other = c
        .ids()
        .into_iter()
        .find(|id| *id != leader && *id != follower)
        .unwrap();
    let mut kv = grpc::kv_client::KvClient::connect(c.grpc(other).to_string())
        .await
        .unwrap();
    let token = c.token.clone();
    let put = kv
        .put(with_token(
            &token,
            grpc::PutRequest {
                ns: "default".into(),
                key: "g".into(),
                value: b"grpc".to_vec(),
                cas: Some(0),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let got = c
        .request(leader, reqwest::Method::GET, "/v1/kv/default/g", None)
        .await
        .unwrap();
    assert_eq!(
        (got.body, got.revision),
        (b"grpc".to_vec(), Some(put.revision))
    );
    let again = kv
        .put(with_token(
            &token,
            grpc::PutRequest {
                ns: "default".into(),
                key: "g".into(),
                value: b"no".to_vec(),
                cas: Some(0),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    let get = kv
        .get(with_token(
            &token,
            grpc::GetRequest {
                ns: "default".into(),
                key: "fwd".into(),
                stale: false,
            },
        ))
        .await
        .unwrap();
    assert_eq!(get.into_inner().value, b"via-follower");
    let unauth = kv
        .get(tonic::Request::new(grpc::GetRequest {
            ns: "default".into(),
            key: "g".into(),
            stale: false,
        }))
        .await;
    assert_eq!(unauth.unwrap_err().code(), tonic::Code::Unauthenticated);
    let bad = kv
        .get(with_token(
            &token,
            grpc::GetRequest {
                ns: "default".into(),
                key: "".into(),
                stale: false,
            },
        ))
        .await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);

    // Atomic batch over gRPC: one failing cas means nothing is written.
    let ops = vec![
        grpc::BatchOp {
            op: Some(grpc::batch_op::Op::Put(grpc::PutRequest {
                ns: "default".into(),
                key: "b1".into(),
                value: b"1".to_vec(),
                cas: None,
            })),
        },
        grpc::BatchOp {
            op: Some(grpc::batch_op::Op::Delete(grpc::DeleteRequest {
                ns: "default".into(),
                key: "g".into(),
                cas: Some(put.revision + 1000),
            })),
        },
    ];
    assert!(kv
        .batch(with_token(&token, grpc::BatchRequest { ops }))
        .await
        .is_err());
    assert_eq!(c.get(leader, "default", "b1", false).await, Ok(None));
    let mut scan_keys = BTreeMap::new();
    let page = kv
        .scan(with_token(
            &token,
            grpc::ScanRequest {
                ns: "default".into(),
                prefix: "".into(),
                limit: 1,
                after: "".into(),
                stale: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    for i in &page.items {
        scan_keys.insert(i.key.clone(), i.revision);
    }
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.next.as_deref(), Some("fwd"));
}

/// Bad input gets a 4xx JSON error naming what was wrong, from every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_a_clear_json_error() {
    let mut c = Cluster::init(3, "a,b,c", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    use reqwest::Method;
    let big = vec![b'x'; (1 << 20) + 1];
    let long_key = "k".repeat(4097);
    // (method, path, body, expected status, a word the message must contain)
    type Case = (Method, String, Option<Vec<u8>>, u16, &'static str);
    let cases: Vec<Case> = vec![
        (
            Method::PUT,
            format!("/v1/kv/default/{long_key}"),
            Some(b"v".to_vec()),
            400,
            "key",
        ),
        (
            Method::PUT,
            "/v1/kv/default/big".into(),
            Some(big),
            413,
            "value",
        ),
        (
            Method::PUT,
            "/v1/kv/nope/k".into(),
            Some(b"v".to_vec()),
            404,
            "namespace",
        ),
        (
            Method::PUT,
            "/v1/kv/default/k?cas=abc".into(),
            Some(b"v".to_vec()),
            400,
            "cas",
        ),
        (
            Method::PUT,
            "/v1/kv/default/k?cas=-1".into(),
            Some(b"v".to_vec()),
            400,
            "cas",
        ),
        (
            Method::PUT,
            "/v1/kv/BAD/k".into(),
            Some(b"v".to_vec()),
            400,
            "namespace",
        ),
        (Method::GET, "/v1/kv/default/%FF".into(), None, 400, "UTF-8"),
        (
            Method::GET,
            "/v1/kv/default/k?consistency=weird".into(),
            None,
            400,
            "consistency",
        ),
        (
            Method::GET,
            "/v1/kv/default?limit=0".into(),
            None,
            400,
            "limit",
        ),
        (
            Method::PUT,
            "/v1/namespaces/n1".into(),
            Some(b"{not json".to_vec()),
            400,
            "body",
        ),
        (
            Method::PUT,
            "/v1/namespaces/n1".into(),
            Some(br#"{"class":"public","replicas":0}"#.to_vec()),
            400,
            "replicas",
        ),
        (
            Method::POST,
            "/v1/batch".into(),
            Some(br#"{"ops":[]}"#.to_vec()),
            400,
            "ops",
        ),
        (Method::GET, "/v1/nothing-here".into(), None, 404, "route"),
    ];
    for id in c.ids() {
        for (method, path, body, status, needle) in &cases {
            let r = c
                .request(id, method.clone(), path, body.clone())
                .await
                .unwrap();
            let j = r.json();
            assert_eq!(r.status, *status, "{method} {path}: {}", r.text());
            let msg = j["error"]["message"].as_str().unwrap_or_default();
            assert!(
                j["error"]["code"].is_string(),
                "{method} {path}: error shape: {}",
                r.text()
            );
            assert!(
                msg.contains(needle),
                "{method} {path}: message {msg:?} should mention {needle:?}"
            );
        }
    }
    // Without a token, or with a wrong one: 401; health endpoints need none.
    let r = c
        .client
        .get(format!("{}/v1/kv/default/k", c.http(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .client
        .get(format!("{}/v1/kv/default/k", c.http(1)))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .client
        .get(format!("{}/healthz", c.http(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn with_token<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

mod grpc {
    tonic::include_proto!("edgefabric.v1");
}
