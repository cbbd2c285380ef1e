//! End-to-end tests against real `edgefabric` processes on loopback (see tests/common).

mod common;

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
    write_keys_into(api, from, to, writers, progress, Arc::new(Mutex::new(vec![]))).await
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
        let (api, next, acked, progress, ids) =
            (api.clone(), next.clone(), acked.clone(), progress.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= to {
                    return;
                }
                let via = ids[(i + w) % ids.len()];
                let deadline = Instant::now() + Duration::from_secs(60);
                if api.put_until_acked(via, "default", &format!("k{i}"), &value_of(i), deadline).await {
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
        let got = c.read_back(id, "default", &format!("k{i}")).await;
        assert_eq!(got, Ok(Some(value_of(i))), "linearizable read of k{i} via node {id}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for &i in keys {
        loop {
            let got = c.get(id, "default", &format!("k{i}"), true).await;
            if got == Ok(Some(value_of(i))) {
                break;
            }
            assert!(Instant::now() < deadline, "stale read of k{i} on node {id} never caught up: {got:?}");
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
    assert_eq!(acked.len(), 1000, "every key is eventually acknowledged by the surviving majority");

    let new_leader = c.leader(READY).await;
    assert_ne!(new_leader, leader, "a new leader takes over");
    c.start(leader);
    c.wait_ready(READY).await;
    for id in c.ids() {
        check_all_readable(&c, id, &acked).await;
    }
}

/// A node whose data directory is wiped rejoins learner-first and catches up by snapshot
/// (the log behind the snapshot is purged), then is a voter again, in every group.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_node_catches_up_by_snapshot() {
    // Two shards, so each group sees enough entries to snapshot and purge.
    let tweak = |t| set_toml(t, &[("snapshot_logs", "100"), ("keep_logs", "10"), ("initial_shards", "2")]);
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
    for group in [1, 2] {
        let dir = c.data_dir(victim).join(format!("group-{group}"));
        let snap = dir.join("snapshot.bin");
        assert!(snap.exists(), "the wiped node installed a snapshot at {}", snap.display());
        assert!(!dir.join("REJOIN").exists(), "rejoin of group {group} finished");
    }
    let status = c.status(victim).await.unwrap();
    for shard in status["shards"].as_array().unwrap() {
        let voters: Vec<u64> = serde_json::from_value(shard["voters"].clone()).unwrap();
        assert!(voters.contains(&victim), "node {victim} is a voter again: {shard}");
    }
    let log = c.log_text(victim);
    assert!(log.contains("rejoining as a learner"), "the data-loss path ran:\n{log}");
    assert!(log.contains("rejoined the cluster: caught up"), "and finished:\n{log}");
}

/// A wiped node that replicated the metadata group as a learner (the group seats 5 voters)
/// comes back a learner: rejoining must not grow the voter set.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_metadata_learner_rejoins_as_a_learner() {
    let mut c = Cluster::init(6, "a,b,c", |t| t);
    c.start_all();
    c.wait_ready(Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let learner = loop {
        let st = c.status(1).await.unwrap();
        if let Some(l) = st["meta"]["learners"].as_array().and_then(|l| l.first()).and_then(|l| l.as_u64()) {
            assert_eq!(st["meta"]["voters"].as_array().unwrap().len(), 5, "{st}");
            break l;
        }
        assert!(Instant::now() < deadline, "no metadata learner: {st}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    c.kill9(learner);
    c.wipe(learner);
    c.start(learner);
    c.wait_ready(Duration::from_secs(90)).await;
    let log = c.log_text(learner);
    assert!(log.contains("rejoined the cluster: caught up"), "the data-loss path ran:\n{log}");
    let via = if learner == 1 { 2 } else { 1 };
    let st = c.status(via).await.unwrap();
    let voters: Vec<u64> = serde_json::from_value(st["meta"]["voters"].clone()).unwrap();
    let learners: Vec<u64> = serde_json::from_value(st["meta"]["learners"].clone()).unwrap();
    assert_eq!(voters.len(), 5, "{st}");
    assert!(learners.contains(&learner) && !voters.contains(&learner), "{st}");
}

async fn ledger_status(c: &Cluster) -> serde_json::Value {
    c.request(1, reqwest::Method::GET, "/v1/ledger/status", None).await.unwrap().json()
}

/// A one-node cluster (every group's only replica) restored from a backup comes back exactly
/// as backed up: public and confidential values (its data keys are in the restored metadata
/// group, wrapped for the node key the config still names), time series, and the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_node_cluster_comes_back_from_its_backup() {
    let mut c = Cluster::init(1, "a", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    let body = br#"{"class":"confidential","key_sites":["a"]}"#.to_vec();
    let r = c.request(1, reqwest::Method::PUT, "/v1/namespaces/vault", Some(body)).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    for i in 0..20 {
        c.put(1, "default", &format!("k{i}"), &value_of(i)).await.unwrap();
        c.put(1, "vault", &format!("s{i}"), &value_of(i)).await.unwrap();
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 120;
    let lines = format!("temp,room=a v=21.5 {}\ntemp,room=a v=22 {}\n", now * 1000, (now + 60) * 1000);
    let r = c
        .request(1, reqwest::Method::POST, "/v1/ts/write?precision=ms", Some(lines.as_bytes().to_vec()))
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
    let before = ledger_status(&c).await;
    let q = format!("/api/v1/query?query=sum_over_time(temp_v%5B5m%5D)&time={}", now + 100);
    let r = c.request(1, reqwest::Method::GET, &q, None).await.unwrap();
    assert_eq!(r.json()["data"]["result"][0]["value"][1], "43.5", "{}", r.text());

    let backup = c.cluster_dir().join("one.efb");
    let (b, t) = (backup.to_str().unwrap().to_string(), c.token_file().to_str().unwrap().to_string());
    let (op_key, op_pub) = operator_key(&c).await;
    let args = ["backup", "--endpoint", c.http(1), "--token-file", &t, "--out", &b, "--recipient", &op_pub];
    let (ok, out, err) = c.cli(&args).await;
    assert!(ok, "backup: {out} {err}");
    c.put(1, "default", "after-backup", b"x").await.unwrap();
    c.kill9(1);
    c.wipe(1);
    let cfg = c.cluster_dir().join("node1.toml");
    let (ok, out, err) =
        c.cli(&["restore", "--from", &b, "--config", cfg.to_str().unwrap(), "--identity", &op_key]).await;
    assert!(ok, "restore: {out} {err}");
    // What a crash in the middle of a backup leaves: removed when the node starts.
    let leftover = c.data_dir(1).join("backup-1.efb.tmp");
    std::fs::write(&leftover, b"partial").unwrap();
    c.start(1);
    c.wait_ready(Duration::from_secs(60)).await;
    assert!(!leftover.exists(), "a temporary backup file outlived the start");

    for i in 0..20 {
        assert_eq!(c.read_back(1, "default", &format!("k{i}")).await, Ok(Some(value_of(i))), "k{i}");
        assert_eq!(c.read_back(1, "vault", &format!("s{i}")).await, Ok(Some(value_of(i))), "s{i}");
    }
    assert_eq!(c.read_back(1, "default", "after-backup").await, Ok(None), "written after the backup");
    let r = c.request(1, reqwest::Method::GET, &q, None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["result"][0]["value"][1], "43.5", "{}", r.text());
    let after = ledger_status(&c).await;
    assert_eq!(after["health"], "verified", "{after}");
    assert!(after["log_size"].as_u64() >= before["log_size"].as_u64(), "{before} {after}");
    // And it takes writes again.
    c.put(1, "vault", "after-restore", b"y").await.unwrap();
    assert_eq!(c.read_back(1, "vault", "after-restore").await, Ok(Some(b"y".to_vec())));
}

/// SIGTERM under a load of writes and linearizable reads: the node stops taking requests,
/// answers the ones in flight (none is cut off with a 5xx: its groups run, and it keeps
/// hearing its leaders, until it has), exits 0, and everything it acknowledged is there after
/// it restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_answers_requests_in_flight_and_exits_cleanly() {
    // A request timeout above the drain bound (15 s): on a loaded machine a slow commit is
    // not taken for a request the shutdown cut off.
    let mut c = Cluster::init(3, "a,b,c", |t| set_toml(t, &[("request_timeout_ms", "25000")]));
    c.start_all();
    c.wait_ready(READY).await;
    let url = c.http(2).to_string();
    let token = c.token.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let cut_off = Arc::new(Mutex::new(Vec::new()));
    let mut writers = vec![];
    for w in 0..8 {
        let (url, token, stop, acked, cut_off) =
            (url.clone(), token.clone(), stop.clone(), acked.clone(), cut_off.clone());
        let client = c.http_client(Duration::from_secs(30));
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let key = format!("t{w}-{i}");
                // Every other request a linearizable read (of the key written just before).
                let r = match i % 2 {
                    0 => {
                        client.put(format!("{url}/v1/kv/default/{key}")).bearer_auth(&token).body(key.clone())
                    }
                    _ => client.get(format!("{url}/v1/kv/default/t{w}-{}", i - 1)).bearer_auth(&token),
                }
                .send()
                .await;
                match r {
                    Ok(r) if r.status() == 200 && i % 2 == 0 => acked.lock().unwrap().push(key),
                    Ok(r) if r.status() == 200 || r.status() == 404 => {}
                    Ok(r) if r.status().is_server_error() => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        cut_off.lock().unwrap().push(format!("{key}: {status} {text}"));
                    }
                    Ok(r) => panic!("{key}: {}", r.status()),
                    // Refused or closed before an answer: the node had stopped taking requests.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = c.terminate(2, Duration::from_secs(30));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let log = c.log_text(2);
    assert!(status.is_some_and(|s| s.success()), "exit status {status:?}:\n{log}");
    assert!(log.contains("stopped"), "{log}");
    let cut_off = cut_off.lock().unwrap().clone();
    assert!(cut_off.is_empty(), "requests in flight cut off: {cut_off:?}");
    // A clean stop vouches for the state machine: the next start trusts it as it is.
    let marker = c.data_dir(2).join("sm.clean");
    assert!(marker.exists(), "no clean-stop marker after a clean stop:\n{log}");
    c.start(2);
    c.wait_ready(READY).await;
    assert!(!marker.exists(), "the marker outlived the start");
    assert!(!c.log_text(2).contains("rebuilding the state machine"), "{}", c.log_text(2));
    let acked = acked.lock().unwrap().clone();
    for key in &acked {
        assert_eq!(c.read_back(2, "default", key).await, Ok(Some(key.as_bytes().to_vec())), "{key}");
    }
    // A kill leaves no marker: that start rebuilds every group from its snapshot and log, and
    // loses nothing.
    c.kill9(2);
    assert!(!marker.exists());
    c.start(2);
    c.wait_ready(READY).await;
    assert!(c.log_text(2).contains("rebuilding the state machine"), "{}", c.log_text(2));
    for key in &acked {
        assert_eq!(c.read_back(2, "default", key).await, Ok(Some(key.as_bytes().to_vec())), "{key}");
    }
}

/// `kill -9` of every node at once, then a restart: nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_all_nodes_at_once_loses_nothing() {
    let mut c = Cluster::init(3, "a,b,c", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    let progress = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(vec![]));
    let writer = tokio::spawn(write_keys_into(c.endpoints(), 0, 100_000, 8, progress.clone(), acked.clone()));
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
            let got = c.read_back(id, "default", &format!("k{i}")).await;
            assert_eq!(got, Ok(Some(value_of(i))), "acknowledged k{i} lost (read via node {id})");
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
    // The write is acknowledged once a quorum has it; node 1's own replica may still lag (the
    // shard's leader may be elsewhere). Wait until it has applied it, so the stale read below
    // has something local to serve.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get(1, "default", "before", true).await != Ok(Some(b"1".to_vec())) {
        assert!(Instant::now() < deadline, "node 1 never applied the acknowledged write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.kill9(2);
    c.kill9(3);
    let started = Instant::now();
    let r = c.request(1, reqwest::Method::PUT, "/v1/kv/default/during", Some(b"2".to_vec())).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "unavailable");
    assert!(started.elapsed() < Duration::from_secs(10), "answered in {:?}", started.elapsed());
    let r = c.request(1, reqwest::Method::GET, "/v1/kv/default/before", None).await.unwrap();
    assert_eq!(r.status, 503, "a linearizable read without quorum is refused: {}", r.text());
    let r =
        c.request(1, reqwest::Method::GET, "/v1/kv/default/before?consistency=stale", None).await.unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"1"[..]), "a stale read is served locally");
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

    let rev = c.put(follower, "default", "fwd", b"via-follower").await.unwrap();
    for id in c.ids() {
        let r = c.request(id, reqwest::Method::GET, "/v1/kv/default/fwd", None).await.unwrap();
        assert_eq!((r.status, r.revision, r.body.clone()), (200, Some(rev), b"via-follower".to_vec()));
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
    let other = c.ids().into_iter().find(|id| *id != leader && *id != follower).unwrap();
    let mut kv = grpc::kv_client::KvClient::new(c.grpc_channel(other).await);
    let token = c.token.clone();
    let put = kv
        .put(with_token(
            &token,
            grpc::PutRequest { ns: "default".into(), key: "g".into(), value: b"grpc".to_vec(), cas: Some(0) },
        ))
        .await
        .unwrap()
        .into_inner();
    let got = c.request(leader, reqwest::Method::GET, "/v1/kv/default/g", None).await.unwrap();
    assert_eq!((got.body, got.revision), (b"grpc".to_vec(), Some(put.revision)));
    let again = kv
        .put(with_token(
            &token,
            grpc::PutRequest { ns: "default".into(), key: "g".into(), value: b"no".to_vec(), cas: Some(0) },
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    let get = kv
        .get(with_token(&token, grpc::GetRequest { ns: "default".into(), key: "fwd".into(), stale: false }))
        .await
        .unwrap();
    assert_eq!(get.into_inner().value, b"via-follower");
    let unauth = kv
        .get(tonic::Request::new(grpc::GetRequest { ns: "default".into(), key: "g".into(), stale: false }))
        .await;
    assert_eq!(unauth.unwrap_err().code(), tonic::Code::Unauthenticated);
    let bad = kv
        .get(with_token(&token, grpc::GetRequest { ns: "default".into(), key: "".into(), stale: false }))
        .await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    // Each of those calls is counted by its action and outcome (as HTTP statuses, like the
    // audit trail), with its latency.
    let m = c.client.get(format!("{}/metrics", c.http(other))).send().await.unwrap().text().await.unwrap();
    for (action, code, n) in
        [("kv.put", 200, 1), ("kv.put", 409, 1), ("kv.get", 200, 1), ("kv.get", 401, 1), ("kv.get", 400, 1)]
    {
        let line = format!("edgefabric_grpc_requests_total{{action=\"{action}\",service=\"edgefabric.v1.Kv\",code=\"{code}\"}} {n}\n");
        assert!(m.contains(&line), "{line} missing:\n{m}");
    }
    let count =
        "edgefabric_grpc_request_duration_seconds_count{action=\"kv.get\",service=\"edgefabric.v1.Kv\"} 3\n";
    assert!(m.contains(count), "{m}");

    // The gRPC Cluster service agrees with REST.
    let mut admin = grpc::cluster_client::ClusterClient::new(c.grpc_channel(other).await);
    let st = admin.status(with_token(&token, grpc::ClusterStatusRequest {})).await.unwrap().into_inner();
    let rest = c.status(other).await.unwrap();
    assert_eq!(st.nodes.len(), 3);
    assert_eq!(st.shards.len(), rest["shards"].as_array().unwrap().len());
    assert_eq!(st.epoch, rest["epoch"].as_u64().unwrap());
    let route = admin
        .route(with_token(&token, grpc::RouteRequest { ns: "default".into(), key: "g".into() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route.shard, c.shard_of("default", "g").await);
    let shard = st.shards.iter().find(|s| s.id == route.shard).unwrap();
    assert!(shard.start <= shard.end && shard.replicas.len() == 3);
    let denied = admin.status(tonic::Request::new(grpc::ClusterStatusRequest {})).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
    let bad_addr = grpc::AddNodeRequest {
        id: 9,
        site: "a".into(),
        grpc: "nowhere".into(),
        http: "127.0.0.1:2".into(),
        public_key: String::new(),
    };
    let e = admin.add_node(with_token(&token, bad_addr)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("grpc"), "{}", e.message());
    let e = admin.remove_node(with_token(&token, grpc::RemoveNodeRequest { id: 99 })).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let bad =
        admin.route(with_token(&token, grpc::RouteRequest { ns: "Bad NS".into(), key: "g".into() })).await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);

    // Atomic batch over gRPC: one failing cas means nothing is written. The batch's keys must
    // share a shard: find a key in the shard of "g".
    let g_shard = c.shard_of("default", "g").await;
    let mut b1 = String::new();
    for i in 0.. {
        b1 = format!("b{i}");
        if c.shard_of("default", &b1).await == g_shard {
            break;
        }
    }
    let ops = vec![
        grpc::BatchOp {
            op: Some(grpc::batch_op::Op::Put(grpc::PutRequest {
                ns: "default".into(),
                key: b1.clone(),
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
    let err = kv.batch(with_token(&token, grpc::BatchRequest { ops: ops.clone() })).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(c.get(leader, "default", &b1, false).await, Ok(None));
    // The same batch with the right revision applies both ops at one revision.
    let mut ok_ops = ops.clone();
    if let Some(grpc::batch_op::Op::Delete(d)) = &mut ok_ops[1].op {
        d.cas = Some(put.revision);
    }
    let rev =
        kv.batch(with_token(&token, grpc::BatchRequest { ops: ok_ops })).await.unwrap().into_inner().revision;
    let got = c.request(leader, reqwest::Method::GET, &format!("/v1/kv/default/{b1}"), None).await.unwrap();
    assert_eq!((got.status, got.revision), (200, Some(rev)));
    assert_eq!(c.get(leader, "default", "g", false).await, Ok(None));
    // Keys of different shards cannot share a batch: a clear error, nothing written.
    let mut other = String::new();
    for i in 0.. {
        other = format!("o{i}");
        if c.shard_of("default", &other).await != g_shard {
            break;
        }
    }
    let cross = vec![
        grpc::BatchOp {
            op: Some(grpc::batch_op::Op::Put(grpc::PutRequest {
                ns: "default".into(),
                key: b1.clone(),
                value: b"2".to_vec(),
                cas: None,
            })),
        },
        grpc::BatchOp {
            op: Some(grpc::batch_op::Op::Put(grpc::PutRequest {
                ns: "default".into(),
                key: other.clone(),
                value: b"2".to_vec(),
                cas: None,
            })),
        },
    ];
    let err = kv.batch(with_token(&token, grpc::BatchRequest { ops: cross })).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("one shard"), "{}", err.message());
    assert_eq!(c.get(leader, "default", &other, false).await, Ok(None));
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
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.next.as_deref(), Some(b1.as_str()), "keys in order across shards: {b1} < fwd");
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
        (Method::PUT, format!("/v1/kv/default/{long_key}"), Some(b"v".to_vec()), 400, "key"),
        (Method::PUT, "/v1/kv/default/big".into(), Some(big), 413, "value"),
        (Method::PUT, "/v1/kv/nope/k".into(), Some(b"v".to_vec()), 404, "namespace"),
        (Method::PUT, "/v1/kv/default/k?cas=abc".into(), Some(b"v".to_vec()), 400, "cas"),
        (Method::PUT, "/v1/kv/default/k?cas=-1".into(), Some(b"v".to_vec()), 400, "cas"),
        (Method::PUT, "/v1/kv/BAD/k".into(), Some(b"v".to_vec()), 400, "namespace"),
        (Method::GET, "/v1/kv/default/%FF".into(), None, 400, "UTF-8"),
        (Method::GET, "/v1/kv/default/k?consistency=weird".into(), None, 400, "consistency"),
        (Method::GET, "/v1/kv/default?limit=0".into(), None, 400, "limit"),
        (Method::PUT, "/v1/namespaces/n1".into(), Some(b"{not json".to_vec()), 400, "body"),
        (
            Method::PUT,
            "/v1/namespaces/n1".into(),
            Some(br#"{"class":"public","replicas":0}"#.to_vec()),
            400,
            "replicas",
        ),
        (Method::POST, "/v1/batch".into(), Some(br#"{"ops":[]}"#.to_vec()), 400, "ops"),
        (Method::GET, "/v1/nothing-here".into(), None, 404, "route"),
        (Method::GET, "/v1/cluster/route?ns=default".into(), None, 400, "key"),
        (Method::GET, "/v1/cluster/route?ns=default&key=".into(), None, 400, "key"),
        (
            Method::POST,
            "/v1/cluster/nodes".into(),
            Some(br#"{"id":9,"site":"","grpc":"127.0.0.1:1","http":"127.0.0.1:2"}"#.to_vec()),
            400,
            "site",
        ),
        (
            Method::POST,
            "/v1/cluster/nodes".into(),
            Some(br#"{"id":9,"site":"a","grpc":"nowhere","http":"127.0.0.1:2"}"#.to_vec()),
            400,
            "grpc",
        ),
        (Method::DELETE, "/v1/cluster/nodes/99".into(), None, 404, "node 99"),
        (Method::DELETE, "/v1/cluster/nodes/x".into(), None, 400, "path"),
    ];
    for id in c.ids() {
        for (method, path, body, status, needle) in &cases {
            let r = c.request(id, method.clone(), path, body.clone()).await.unwrap();
            let j = r.json();
            assert_eq!(r.status, *status, "{method} {path}: {}", r.text());
            let msg = j["error"]["message"].as_str().unwrap_or_default();
            assert!(j["error"]["code"].is_string(), "{method} {path}: error shape: {}", r.text());
            assert!(msg.contains(needle), "{method} {path}: message {msg:?} should mention {needle:?}");
        }
    }
    // Without a token, or with a wrong one: 401; health endpoints need none.
    let r = c.client.get(format!("{}/v1/kv/default/k", c.http(1))).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c.client.get(format!("{}/v1/kv/default/k", c.http(1))).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c.client.get(format!("{}/healthz", c.http(1))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Nothing above changed the cluster map: no node was added or marked leaving.
    let st = c.status(1).await.unwrap();
    assert_eq!((st["nodes"].as_array().unwrap().len(), st["leaving"].as_array().unwrap().len()), (3, 0));
    // /metrics needs no token and reports the node's groups.
    // Leadership may be moving back to preferred replicas right after start-up (a group is
    // briefly without a known leader then): wait for it to settle.
    let deadline = Instant::now() + Duration::from_secs(15);
    let m = loop {
        let m = c.client.get(format!("{}/metrics", c.http(2))).send().await.unwrap().text().await.unwrap();
        if m.contains("edgefabric_raft_groups_without_leader 0") || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The metadata group, 16 shards (3 replicas on 3 nodes: every node has all) and the ledger.
    assert!(m.contains("edgefabric_raft_groups 18"), "{m}");
    assert!(m.contains("edgefabric_ledger_verified 1"), "{m}");
    assert!(m.contains("edgefabric_raft_groups_without_leader 0"), "{m}");
    assert!(m.contains("edgefabric_raft_term{group=\"0\"}"), "{m}");
}

/// A fresh operator key pair (`edgefabric keygen`), as paths: (secret, public).
async fn operator_key(c: &Cluster) -> (String, String) {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let key = c.cluster_dir().join(format!("operator-{n}.key"));
    let (ok, out, err) = c.cli(&["keygen", "--out", key.to_str().unwrap()]).await;
    assert!(ok, "keygen: {out} {err}");
    (key.to_str().unwrap().to_string(), format!("{}.pub", key.display()))
}

fn with_token<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

mod grpc {
    tonic::include_proto!("edgefabric.v1");
}

/// Every key of `default` with `prefix`, paging through `GET /v1/kv/default` via node `via`.
async fn scan_all(c: &Cluster, via: u64, prefix: &str, limit: usize) -> Vec<String> {
    let mut seen = vec![];
    let mut after: Option<String> = None;
    loop {
        let mut q = format!("/v1/kv/default?prefix={prefix}&limit={limit}");
        if let Some(a) = &after {
            q.push_str(&format!("&after={a}"));
        }
        let page = c.request(via, reqwest::Method::GET, &q, None).await.unwrap().json();
        for item in page["items"].as_array().unwrap() {
            seen.push(item["key"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return seen,
        }
    }
}

/// Every key of `default` with `prefix` and its value, via node `via` (one linearizable scan
/// per page: the same guarantee as reading each key back, in a few requests).
async fn scan_values(c: &Cluster, via: u64, prefix: &str) -> std::collections::HashMap<String, Vec<u8>> {
    use base64::Engine;
    let mut out = std::collections::HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = format!("/v1/kv/default?prefix={prefix}&limit=10000");
        if let Some(a) = &after {
            q.push_str(&format!("&after={a}"));
        }
        let page = c.request(via, reqwest::Method::GET, &q, None).await.unwrap().json();
        for item in page["items"].as_array().unwrap() {
            let v = base64::engine::general_purpose::STANDARD
                .decode(item["value_base64"].as_str().unwrap())
                .unwrap();
            out.insert(item["key"].as_str().unwrap().to_string(), v);
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return out,
        }
    }
}

/// Polls the cluster status until `ok` holds, or panics with the last status.
async fn wait_status(
    c: &Cluster,
    via: u64,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let st = c.status(via).await;
        if let Ok(st) = &st {
            if ok(st) {
                return st.clone();
            }
        }
        if Instant::now() > deadline {
            panic!("{what}: not reached; last status {st:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn all_led_by_preferred(st: &serde_json::Value) -> bool {
    st["shards"].as_array().is_some_and(|s| s.iter().all(|s| s["leader"] == s["preferred_leader"]))
}

/// Issue 3's acceptance cluster: 5 nodes over 3 sites, 16 shards. Replicas sit on distinct
/// sites, leadership is spread, every node serves every key (hosting its shard or not), a scan
/// pages through all shards in key order, and a restarted node gets its leadership back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_three_sites_spread_shards_and_leaders() {
    let mut c = Cluster::init(5, "a,b,c", |t| t);
    c.start_all();
    c.wait_ready(Duration::from_secs(60)).await;
    let st = wait_status(&c, 1, "every shard led by its preferred replica", all_led_by_preferred).await;
    let shards = st["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 16);
    for s in shards {
        let sites: std::collections::BTreeSet<&str> =
            s["sites"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
        assert_eq!(sites.len(), 3, "shard {} must span 3 sites: {s}", s["id"]);
    }
    let leads: Vec<u64> =
        st["nodes"].as_array().unwrap().iter().map(|n| n["leads"].as_u64().unwrap()).collect();
    let (min, max) = (leads.iter().min().unwrap(), leads.iter().max().unwrap());
    assert!(max - min <= 1, "leadership spread over nodes: {leads:?}");

    // Every node serves every key, including keys of shards it does not host.
    let acked = write_keys(c.endpoints(), 0, 300, 8, Arc::new(AtomicUsize::new(0))).await;
    assert_eq!(acked.len(), 300);
    for id in c.ids() {
        for &i in acked.iter().step_by(7) {
            assert_eq!(
                c.read_back(id, "default", &format!("k{i}")).await,
                Ok(Some(value_of(i))),
                "k{i} via {id}"
            );
            assert_eq!(
                c.get(id, "default", &format!("k{i}"), true).await,
                Ok(Some(value_of(i))),
                "stale k{i} via {id}"
            );
        }
    }
    // A paginated scan returns every key exactly once, in order, across all 16 shards.
    let seen = scan_all(&c, 4, "k", 37).await;
    let mut expected: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    expected.sort();
    assert_eq!(seen, expected);

    // A restarted node gets its share of leadership back.
    c.kill9(2);
    let st = wait_status(&c, 1, "node 2 leads nothing while down", |st| {
        st["shards"].as_array().is_some_and(|s| s.iter().all(|s| s["leader"] != 2 && !s["leader"].is_null()))
    })
    .await;
    assert!(st["nodes"][1]["up"] == false, "node 2 reported down: {}", st["nodes"][1]);
    c.start(2);
    c.wait_ready(Duration::from_secs(60)).await;
    let st = wait_status(&c, 1, "preferred leaders again after restart", all_led_by_preferred).await;
    let node2 = &st["nodes"][1];
    assert_eq!(node2["id"], 2);
    assert!(node2["leads"].as_u64().unwrap() >= 3, "node 2 leads its share again: {node2}");
}

/// Issue 3's "Done means": on a 5-node, 3-site cluster (8 shards here), under a running write
/// load, `cluster join` adds a node (replicas move onto it until counts are even) and
/// `cluster leave` drains and removes another, while the metadata leader, which runs the moves,
/// is killed mid-way and restarted (a new leader must finish the move it started). Every
/// acknowledged write is read back afterwards, through every remaining node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_and_leave_under_load_lose_nothing() {
    // 8 shards (not the default 16): every move is a learner catch-up and a membership change,
    // and the test's time is mostly moves.
    let mut c = Cluster::init(5, "a,b,c,a,b", |t| set_toml(t, &[("initial_shards", "8")]));
    c.start_all();
    c.wait_ready(Duration::from_secs(60)).await;
    let progress = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(vec![]));
    let writer =
        tokio::spawn(write_keys_into(c.endpoints(), 0, 1_000_000, 4, progress.clone(), acked.clone()));
    while progress.load(Ordering::SeqCst) < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Join node 6 at site c, whose only node (3) holds a replica of all 8 shards.
    let port = common::free_base_port(1).to_string();
    let dir = c.cluster_dir().display().to_string();
    let token = c.token_file().display().to_string();
    let (ok, out, err) = c
        .cli(&[
            "cluster",
            "join",
            "--dir",
            &dir,
            "--site",
            "c",
            "--port",
            &port,
            "--endpoint",
            c.http(2),
            "--token-file",
            &token,
        ])
        .await;
    assert!(ok, "cluster join failed: {out} {err}");
    assert!(out.contains("node 6 joined"), "{out}");
    c.refresh_nodes();
    c.start(6);
    // Kill the metadata leader while the first moves are under way, then bring it back.
    wait_status(&c, 2, "a move under way", |st| !st["moving"].is_null()).await;
    let meta_leader = c.leader(READY).await;
    c.kill9(meta_leader);
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.start(meta_leader);
    let via = if meta_leader == 2 { 4 } else { 2 };
    // Balanced, and every group's voters (as its leader reports them) match the map.
    wait_status(&c, via, "site c's replicas shared by nodes 3 and 6, groups matching the map", |st| {
        st["moving"].is_null()
            && st["nodes"]
                .as_array()
                .is_some_and(|n| n.len() == 6 && n[5]["replicas"] == 4 && n[2]["replicas"] == 4)
            && st["shards"].as_array().is_some_and(|shards| {
                shards.iter().all(|s| {
                    let mut replicas: Vec<u64> =
                        serde_json::from_value(s["replicas"].clone()).unwrap_or_default();
                    let mut voters: Vec<u64> =
                        serde_json::from_value(s["voters"].clone()).unwrap_or_default();
                    replicas.sort();
                    voters.sort();
                    replicas == voters
                })
            })
    })
    .await;
    let during_join = progress.load(Ordering::SeqCst);

    // Node 1 leaves: the command returns once it is drained and removed.
    let (ok, out, err) =
        c.cli(&["cluster", "leave", "--node", "1", "--endpoint", c.http(3), "--token-file", &token]).await;
    assert!(ok, "cluster leave failed: {out} {err}");
    // The drained node deletes its copies of the shards in its own control loop, after it has
    // applied the map that moved them away: give it the time a loaded machine needs before it
    // is killed (checked below).
    let ledger = format!("group-{}", u64::MAX - 1);
    let node1_dir = c.data_dir(1).to_path_buf();
    let shard_dirs = || -> Vec<String> {
        std::fs::read_dir(&node1_dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("group-") && n != "group-0" && *n != ledger)
            .collect()
    };
    let until = Instant::now() + Duration::from_secs(60);
    while !shard_dirs().is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.kill9(1);
    let st = c.status(3).await.unwrap();
    assert_eq!(st["nodes"].as_array().unwrap().len(), 5, "{st}");
    for shard in st["shards"].as_array().unwrap() {
        let replicas: Vec<u64> = serde_json::from_value(shard["replicas"].clone()).unwrap();
        assert!(!replicas.contains(&1), "shard still on node 1: {shard}");
        assert_eq!(replicas.len(), 3);
        let sites: std::collections::BTreeSet<&str> =
            shard["sites"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
        assert_eq!(sites.len(), 3, "{shard}");
    }
    // Site a's other node (4) now holds a replica of every shard.
    let node4 = st["nodes"].as_array().unwrap().iter().find(|n| n["id"] == 4).unwrap();
    assert_eq!(node4["replicas"], 8, "{st}");
    // Writes keep going after the leave, then stop.
    let after_leave = progress.load(Ordering::SeqCst);
    let until = Instant::now() + Duration::from_secs(20);
    while progress.load(Ordering::SeqCst) < after_leave + 100 {
        assert!(Instant::now() < until, "writes stalled after the leave");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    writer.abort();
    let acked = acked.lock().unwrap().clone();
    assert!(during_join > 100 && acked.len() > after_leave, "load ran throughout");
    for id in [2, 3, 4, 5, 6] {
        let stored = scan_values(&c, id, "k").await;
        for &i in &acked {
            assert_eq!(stored.get(&format!("k{i}")), Some(&value_of(i)), "k{i} via {id}");
        }
    }
    // The drained node deleted its copies of the shards. (It keeps its copies of the metadata
    // and the ledger, which every member replicates: the ledger copy is the record it attested.)
    let left = shard_dirs();
    assert!(left.is_empty(), "node 1 still has shard directories: {left:?}");

    // The ledger's membership followed the map: node 6 was added (signed by a member), node 1
    // removed, and node 6 now cosigns checkpoints.
    let deadline = Instant::now() + READY;
    loop {
        let st = c.request(3, reqwest::Method::GET, "/v1/ledger/status", None).await.map(|r| r.json());
        let size = st.as_ref().ok().and_then(|s| s["log_size"].as_u64()).unwrap_or(0);
        let mut kinds = vec![];
        for i in 0..size {
            let r = c.request(3, reqwest::Method::GET, &format!("/v1/ledger/entries/{i}"), None).await;
            if let Ok(r) = r {
                let e = r.json()["entry"].clone();
                kinds.push((
                    e["type"].as_str().unwrap_or_default().to_string(),
                    e["id"].as_u64().unwrap_or(0),
                ));
            }
        }
        let note = c.request(3, reqwest::Method::GET, "/v1/ledger/checkpoint", None).await.map(|r| r.text());
        let done = kinds.contains(&("node_added".into(), 6))
            && kinds.contains(&("node_removed".into(), 1))
            && note.as_ref().is_ok_and(|n| n.contains("\u{2014} node-6 ") && !n.contains("\u{2014} node-1 "));
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "ledger membership did not follow the map: {kinds:?} {note:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A shard that grows past `split_keys` splits in two while writes run: the split is invisible
/// to clients (every acknowledged write reads back from every node, scans see every key once),
/// and revisions keep growing for keys that moved to the new shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shards_split_under_load_invisibly() {
    let tweak = |t| set_toml(t, &[("initial_shards", "2"), ("split_keys", "300")]);
    let mut c = Cluster::init(3, "a,b,c", tweak);
    c.start_all();
    c.wait_ready(READY).await;
    let before = c.status(1).await.unwrap()["shards"].as_array().unwrap().len();
    assert_eq!(before, 2);
    // Revision of a key before any split.
    let rev_before = c.put(1, "default", "watched", b"1").await.unwrap();
    let acked = write_keys(c.endpoints(), 0, 1500, 8, Arc::new(AtomicUsize::new(0))).await;
    assert_eq!(acked.len(), 1500);
    let st = wait_status(&c, 2, "shards split", |st| {
        st["splitting"].is_null() && st["shards"].as_array().is_some_and(|s| s.len() >= 4)
    })
    .await;
    let shards = st["shards"].as_array().unwrap();
    assert!(shards.iter().any(|s| s["id"].as_u64().is_some_and(|id| id > 2)), "new shards: {st}");
    c.wait_ready(READY).await;
    for id in c.ids() {
        for &i in &acked {
            assert_eq!(
                c.read_back(id, "default", &format!("k{i}")).await,
                Ok(Some(value_of(i))),
                "k{i} via {id}"
            );
        }
    }
    // A paginated scan sees every key exactly once across the split shards.
    let seen = scan_all(&c, 3, "k", 200).await;
    let mut expected: Vec<String> = (0..1500).map(|i| format!("k{i}")).collect();
    expected.sort();
    assert_eq!(seen, expected);
    // Revisions keep growing for keys that moved into a new shard: the child's log continues
    // from the parent's index at the split (a child counting from 1 would go backwards).
    let mut checked = 0;
    for &i in &acked {
        let key = format!("k{i}");
        if c.shard_of("default", &key).await <= 2 {
            continue;
        }
        let r1 = c.request(1, reqwest::Method::GET, &format!("/v1/kv/default/{key}"), None).await.unwrap();
        let r1 = r1.revision.unwrap();
        let r2 = c.put(3, "default", &key, b"again").await.unwrap();
        assert!(r2 > r1, "{key}: revision {r2} after the split, {r1} before");
        checked += 1;
        if checked == 20 {
            break;
        }
    }
    assert_eq!(checked, 20, "keys in child shards were checked");
    let rev_after = c.put(2, "default", "watched", b"2").await.unwrap();
    assert!(rev_after > rev_before, "revision {rev_after} after the split, {rev_before} before");
    let r = c
        .request(
            1,
            reqwest::Method::PUT,
            &format!("/v1/kv/default/watched?cas={rev_after}"),
            Some(b"3".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Every audit record whose key starts with `prefix`, as the admin sees the ledger's trail.
async fn audit_keys(c: &Cluster, via: u64, prefix: &str) -> Vec<(String, u64)> {
    let mut out = vec![];
    let mut after: Option<String> = None;
    loop {
        let mut path = "/v1/audit?ns=default&action=kv.get&limit=1000".to_string();
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let r = c.request(via, reqwest::Method::GET, &path, None).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        for rec in v["records"].as_array().unwrap() {
            let key = rec["key"].as_str().unwrap_or("");
            if key.starts_with(prefix) {
                out.push((key.to_string(), rec["status"].as_u64().unwrap()));
            }
        }
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return out,
        }
    }
}

/// `edgefabric backup` of a running node, then the node's disk is lost and `edgefabric
/// restore` brings it back: replicated data catches up (the restored groups rejoin as
/// learners first), the site-local shard it alone holds comes back as backed up, audit records
/// it had not shipped reach the ledger exactly once, and new ones follow. Bad restores are
/// refused, naming what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_and_restore_a_node_after_losing_its_disk() {
    let mut c = Cluster::init(3, "a,b,c", |t| format!("{t}\n[test]\nfaults = true\n"));
    c.start_all();
    c.wait_ready(READY).await;
    let r = c
        .request(
            1,
            reqwest::Method::PUT,
            "/v1/namespaces/plant",
            Some(br#"{"class":"site-local","home_site":"a"}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    for i in 0..100 {
        c.put((i % 3 + 1) as u64, "default", &format!("k{i}"), &value_of(i)).await.unwrap();
    }
    for i in 0..30 {
        c.put(1, "plant", &format!("p{i}"), &value_of(i)).await.unwrap();
    }
    // Cut node 1 off: what it serves now is audited in its queue only.
    let cut = serde_json::json!({"drop_to": [2, 3], "delay_ms": {}});
    let r = c
        .request(1, reqwest::Method::PUT, "/v1/test/faults", Some(serde_json::to_vec(&cut).unwrap()))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    for i in 0..20 {
        // The answer does not matter (200, 404 or 503): each access is audited.
        let _ = c.get(1, "default", &format!("probe{i}"), true).await;
    }

    let dir = c.cluster_dir();
    let backup = dir.join("node1.efb");
    let (b, t) = (backup.to_str().unwrap().to_string(), c.token_file().to_str().unwrap().to_string());
    let (op_key, op_pub) = operator_key(&c).await;
    let (ok, out, err) = c
        .cli(&["backup", "--endpoint", c.http(1), "--token-file", &t, "--out", &b, "--recipient", &op_pub])
        .await;
    assert!(ok, "backup: {out} {err}");
    assert!(out.contains("backup of node 1 (site a)"), "{out}");
    // Sealed to the operator's key, readable by its owner only, with no clear value in it.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the backup file is {mode:o}");
        let bytes = std::fs::read(&backup).unwrap();
        assert!(bytes.starts_with(b"EFSEALED-FILE-1\n"));
        assert!(!bytes.windows(8).any(|w| w == b"EFBACKUP"), "the backup's own header is sealed too");
        assert!(!bytes.windows(4).any(|w| w == b"k100"), "no key name in clear");
        assert!(
            std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().contains("partial")),
            "no unsealed download left beside it"
        );
    }
    let (ok, out, err) = c
        .cli(&["backup", "--endpoint", c.http(1), "--token-file", &t, "--out", &b, "--recipient", &op_pub])
        .await;
    assert!(!ok && err.contains("exists"), "an existing --out is refused: {out} {err}");
    let (ok, _, err) = c.cli(&["restore", "--from", &b, "--check"]).await;
    assert!(!ok && err.contains("--identity"), "a sealed backup needs its key: {err}");
    let (other_key, _) = operator_key(&c).await;
    let (ok, _, err) = c.cli(&["restore", "--from", &b, "--check", "--identity", &other_key]).await;
    assert!(!ok && err.contains("sealed for the key"), "another key: {err}");
    let (ok, out, err) = c.cli(&["restore", "--from", &b, "--check", "--identity", &op_key]).await;
    assert!(ok, "restore --check: {out} {err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["node"], 1);
    assert_eq!(summary["signed"], true, "signed by its node: {summary}");
    assert!(summary["audit_records"].as_u64().unwrap() >= 20, "the probes' records are queued: {summary}");
    assert!(summary["groups"].as_array().unwrap().len() >= 3, "{summary}");

    // After the backup: a site-local write only node 1 holds (lost with its disk), and, from
    // the others, writes node 1 must catch up on.
    c.put(1, "plant", "after-backup", b"x").await.unwrap();
    // Shards node 1 led elect new leaders meanwhile (it cannot reach its followers): a write
    // may meet that with an "outcome unknown" 503, and is sent again (the same value).
    let api = c.endpoints();
    for i in 100..150 {
        let deadline = Instant::now() + Duration::from_secs(60);
        let via = (i % 2 + 2) as u64;
        assert!(api.put_until_acked(via, "default", &format!("k{i}"), &value_of(i), deadline).await, "k{i}");
    }
    // The disk is lost while node 1 is still cut off: the probes' records never left it.
    c.kill9(1);
    c.wipe(1);

    // Bad restores first: each refused, naming the problem, writing nothing.
    let cfg = dir.join("node1.toml");
    let cfg2 = dir.join("node2.toml");
    let (cfg, cfg2) = (cfg.to_str().unwrap(), cfg2.to_str().unwrap());
    let torn = dir.join("torn.efb");
    let bytes = std::fs::read(&backup).unwrap();
    std::fs::write(&torn, &bytes[..bytes.len() / 2]).unwrap();
    let id = ["--identity", op_key.as_str()];
    let (ok, _, err) =
        c.cli(&[&["restore", "--from", torn.to_str().unwrap(), "--config", cfg][..], &id].concat()).await;
    assert!(!ok && err.contains("cut short"), "a torn backup: {err}");
    assert!(!c.data_dir(1).join("raft").exists(), "nothing written from a torn backup");
    // One flipped byte in the middle: refused as altered.
    let tampered = dir.join("tampered.efb");
    let mut t2 = bytes.clone();
    let mid = t2.len() / 2;
    t2[mid] ^= 1;
    std::fs::write(&tampered, &t2).unwrap();
    let (ok, _, err) =
        c.cli(&[&["restore", "--from", tampered.to_str().unwrap(), "--config", cfg][..], &id].concat()).await;
    assert!(!ok && err.contains("does not authenticate"), "a tampered backup: {err}");
    assert!(!c.data_dir(1).join("raft").exists(), "nothing written from a tampered backup");
    let (ok, _, err) = c.cli(&[&["restore", "--from", &b, "--config", cfg2][..], &id].concat()).await;
    assert!(!ok && err.contains("the backup is of node 1"), "another node's config: {err}");
    let (ok, _, err) = c
        .cli(&[&["restore", "--from", &b, "--data", c.data_dir(2).to_str().unwrap()][..], &id].concat())
        .await;
    assert!(!ok && err.contains("already holds"), "a directory with data: {err}");
    // Checked against another key than node 1's (as a file made by someone else would be):
    // refused by its signature.
    let fresh = dir.join("fresh-data");
    let other_node = dir.join("node2.key.pub");
    let args = [
        "restore",
        "--from",
        &b,
        "--data",
        fresh.to_str().unwrap(),
        "--node-key",
        other_node.to_str().unwrap(),
    ];
    let (ok, _, err) = c.cli(&[&args[..], &id].concat()).await;
    assert!(!ok && err.contains("signature does not verify"), "another key: {err}");
    assert!(!fresh.join("raft").exists(), "nothing written from a backup that fails its signature");

    let (ok, out, err) = c.cli(&[&["restore", "--from", &b, "--config", cfg][..], &id].concat()).await;
    assert!(ok, "restore: {out} {err}");
    c.start(1);
    c.wait_ready(Duration::from_secs(90)).await;

    // Replicated data: everything, including what was written after the backup, read from
    // node 1's own replicas once they have caught up.
    for i in 0..150 {
        assert_eq!(
            c.read_back(1, "default", &format!("k{i}")).await,
            Ok(Some(value_of(i))),
            "k{i} through the restored node"
        );
    }
    // The site-local shard had no other replica: back as it was at the backup.
    for i in 0..30 {
        assert_eq!(c.read_back(1, "plant", &format!("p{i}")).await, Ok(Some(value_of(i))), "p{i}");
    }
    assert_eq!(c.read_back(1, "plant", "after-backup").await, Ok(None), "written after the backup");
    c.put(1, "plant", "after-restore", b"y").await.unwrap();
    let log = c.log_text(1);
    assert!(log.contains("rejoining as a learner"), "shared groups rejoined:\n{log}");
    assert!(log.contains("only replica"), "the site-local shard was its only copy:\n{log}");
    let status = c.status(1).await.unwrap();
    for shard in status["shards"].as_array().unwrap() {
        let voters: Vec<u64> = serde_json::from_value(shard["voters"].clone()).unwrap();
        let replicas: Vec<u64> = serde_json::from_value(shard["replicas"].clone()).unwrap_or_default();
        if replicas.contains(&1) {
            assert!(voters.contains(&1), "node 1 votes again in {shard}");
        }
    }

    // The probes' records, shipped from the restored queue under the old instance: each
    // exactly once. And the new instance's records follow.
    let _ = c.get(1, "default", "probe-after-restore", false).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let keys = audit_keys(&c, 2, "probe").await;
        let mut probes: Vec<String> =
            keys.iter().map(|(k, _)| k.clone()).filter(|k| k != "probe-after-restore").collect();
        let after = keys.iter().filter(|(k, _)| k == "probe-after-restore").count();
        probes.sort();
        let want: Vec<String> = {
            let mut w: Vec<String> = (0..20).map(|i| format!("probe{i}")).collect();
            w.sort();
            w
        };
        if probes == want && after == 1 {
            break;
        }
        assert!(probes.len() <= 20 && after <= 1, "a record twice: {keys:?}");
        if Instant::now() > deadline {
            c.dump_logs();
            panic!("audit records after the restore: {keys:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let log = c.log_text(1);
    assert!(log.contains("restored audit records shipped"), "from the restored queue:\n{log}");
    // Node 1's own (restored, then caught up) ledger replica: verified, and it answers the
    // auditor the same.
    let r = c.request(1, reqwest::Method::GET, "/v1/ledger/status", None).await.unwrap();
    assert_eq!(r.json()["health"], "verified", "{}", r.text());
    let mut via1 = audit_keys(&c, 1, "probe").await;
    let mut via2 = audit_keys(&c, 2, "probe").await;
    via1.sort();
    via2.sort();
    assert_eq!(via1, via2);
}

/// One gauge or counter summed over a node's `/metrics` lines named `name` (any labels).
async fn metric_sum(c: &Cluster, id: u64, name: &str) -> Option<u64> {
    let r = c.request(id, reqwest::Method::GET, "/metrics", None).await.ok()?;
    let text = r.text();
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (metric, value) = line.rsplit_once(' ')?;
        let bare = metric.split('{').next().unwrap_or(metric);
        if bare == name {
            *sum.get_or_insert(0) += value.parse::<f64>().ok()? as u64;
        }
    }
    sum
}

/// (quiet groups, groups) summed over the running nodes.
async fn quiet_counts(c: &Cluster) -> (u64, u64) {
    let (mut quiet, mut all) = (0, 0);
    for id in c.ids().into_iter().filter(|id| c.is_running(*id)) {
        quiet += metric_sum(c, id, "edgefabric_raft_groups_quiet").await.unwrap_or(0);
        all += metric_sum(c, id, "edgefabric_raft_groups").await.unwrap_or(0);
    }
    (quiet, all)
}

async fn wait_all_quiet(c: &Cluster, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (quiet, all) = quiet_counts(c).await;
        if all > 0 && quiet == all {
            return;
        }
        if Instant::now() > deadline {
            c.dump_logs();
            panic!("only {quiet} of {all} group replicas went quiet within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn leader_changes(c: &Cluster) -> u64 {
    let mut n = 0;
    for id in c.ids().into_iter().filter(|id| c.is_running(*id)) {
        n += metric_sum(c, id, "edgefabric_raft_leader_changes_total").await.unwrap_or(0);
    }
    n
}

/// Idle groups go quiet (raft stops ticking: no heartbeats, no timers), stay quiet without
/// spurious elections while their leaders' nodes ping, wake for a write, and still fail over:
/// a kill -9 of a quiet group's leader is noticed through node liveness and its followers
/// elect a new one, which takes writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_groups_go_quiet_wake_for_writes_and_still_fail_over() {
    let mut c = Cluster::init(3, "a,b,c", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    wait_status(&c, 1, "every shard led by its preferred replica", all_led_by_preferred).await;
    wait_all_quiet(&c, Duration::from_secs(30)).await;

    // Quiet means no elections: the followers' timers are off, and pings keep the leaders'
    // nodes known alive.
    let changes = leader_changes(&c).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(leader_changes(&c).await, changes, "a quiet cluster elects nobody");
    let (quiet, all) = quiet_counts(&c).await;
    assert_eq!(quiet, all, "and stays quiet");

    // A write wakes its group (and the ledger's, for its audit records) and is answered at
    // once, not after an election.
    let e = c.endpoints();
    let started = Instant::now();
    e.put(1, "default", "wake", b"up").await.expect("a write to a quiet group");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    let (quiet, all) = quiet_counts(&c).await;
    assert!(quiet < all, "the written group woke ({quiet} of {all} quiet)");
    assert_eq!(leader_changes(&c).await, changes, "waking elects nobody");

    // Failover of a quiet group: kill its leader's node.
    wait_all_quiet(&c, Duration::from_secs(30)).await;
    let shard = c.shard_of("default", "after-kill").await;
    let st = c.status(1).await.unwrap();
    let old = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"].as_u64() == Some(shard))
        .and_then(|s| s["leader"].as_u64())
        .unwrap_or_else(|| panic!("shard {shard} has a leader: {st}"));
    c.kill9(old);
    let mut e = c.endpoints();
    e.http.remove(&old);
    let first = *e.http.keys().next().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    assert!(
        e.put_until_acked(first, "default", "after-kill", b"v", deadline).await,
        "the quiet shard's followers elected a new leader that takes writes"
    );
    let st = c.status(first).await.unwrap();
    let new = st["shards"].as_array().unwrap().iter().find(|s| s["id"].as_u64() == Some(shard)).unwrap()
        ["leader"]
        .as_u64();
    assert!(new.is_some() && new != Some(old), "shard {shard}: leader {new:?} after killing {old}");

    // With a member down, the survivors keep their leaders, and no group with the dead node as
    // a member goes quiet (every group here has it): groups quiet before the kill may stay so,
    // but the ones woken since (those it led, the one written) stay awake, so the count never
    // grows. (Quieting such a group would mean asking the dead node, and waiting on it.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    let changes = leader_changes(&c).await;
    let (mut floor, _) = quiet_counts(&c).await;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (quiet, _) = quiet_counts(&c).await;
        assert!(quiet <= floor, "a group went quiet with node {old} down ({floor} -> {quiet} quiet)");
        floor = quiet;
    }
    assert_eq!(leader_changes(&c).await, changes, "no leadership churn while node {old} is down");

    // The killed node comes back, catches up, and the cluster goes quiet again.
    c.start(old);
    c.wait_ready(READY).await;
    for id in c.ids() {
        assert_eq!(c.read_back(id, "default", "after-kill").await, Ok(Some(b"v".to_vec())), "via {id}");
    }
    wait_all_quiet(&c, Duration::from_secs(30)).await;
}
