//! Privacy-aware namespaces (issue 5) against real processes: a confidential namespace's values
//! are sealed before they are replicated, so no node's data directory holds the plaintext, and
//! nodes outside the key sites cannot read or write them.

mod common;

use std::time::Duration;

use common::Cluster;

const READY: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confidential_values_are_ciphertext_on_every_disk_and_closed_outside_key_sites() {
    // Sites a, b, c, a: nodes 1 and 4 are the key site's.
    let mut c = Cluster::init(4, "a,b,c", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    let put_ns = |body: &'static str| body.as_bytes().to_vec();
    // The key is made at a key site only.
    let body = r#"{"class":"confidential","key_sites":["a"]}"#;
    let r = c.request(2, reqwest::Method::PUT, "/v1/namespaces/med", Some(put_ns(body))).await.unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("key sites (a)"), "{}", r.text());
    let r = c.request(1, reqwest::Method::PUT, "/v1/namespaces/med", Some(put_ns(body))).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let r = c.request(1, reqwest::Method::GET, "/v1/namespaces/med", None).await.unwrap();
    assert_eq!(r.json()["class"], "confidential", "{}", r.text());
    // Its class cannot change.
    let r = c
        .request(1, reqwest::Method::PUT, "/v1/namespaces/med", Some(put_ns(r#"{"class":"public"}"#)))
        .await
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.text());

    let secret = format!("SECRET-{}", std::process::id()).into_bytes();
    let control = format!("PUBLIC-{}", std::process::id()).into_bytes();
    for i in 0..20 {
        let mut v = secret.clone();
        v.extend_from_slice(format!("-{i}").as_bytes());
        c.put(1, "med", &format!("patient/{i}"), &v).await.unwrap();
    }
    c.put(1, "default", "control", &control).await.unwrap();
    // Key site: reads open the values, scans too.
    assert_eq!(c.get(1, "med", "patient/3", false).await.unwrap().unwrap(), [&secret[..], b"-3"].concat());
    let r = c.request(1, reqwest::Method::GET, "/v1/kv/med?prefix=patient/&limit=100", None).await.unwrap();
    assert_eq!(r.json()["items"].as_array().map(Vec::len), Some(20), "{}", r.text());
    // Other sites: reads and writes refused, naming the key sites.
    for id in [2, 3] {
        let r = c.request(id, reqwest::Method::GET, "/v1/kv/med/patient/3", None).await.unwrap();
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(r.text().contains("key sites (a)"), "{}", r.text());
        let r = c.request(id, reqwest::Method::PUT, "/v1/kv/med/x", Some(b"v".to_vec())).await.unwrap();
        assert_eq!(r.status, 403, "{}", r.text());
        let r = c.request(id, reqwest::Method::GET, "/v1/kv/med?prefix=p", None).await.unwrap();
        assert_eq!(r.status, 403, "{}", r.text());
    }
    // A restarted key-site node unwraps its key again.
    c.kill9(1);
    c.start(1);
    c.wait_ready(READY).await;
    assert_eq!(c.read_back(1, "med", "patient/7").await.unwrap().unwrap(), [&secret[..], b"-7"].concat());

    // Key rotation under a write load: nothing acknowledged is lost, older values are
    // re-encrypted, and a second rotation after the load finds nothing left behind.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let api = c.endpoints();
    let (s2, secret2) = (stop.clone(), secret.clone());
    let writer = tokio::spawn(async move {
        let mut acked = vec![];
        let mut i = 0u64;
        while !s2.load(std::sync::atomic::Ordering::SeqCst) {
            let via = if i.is_multiple_of(2) { 1 } else { 4 };
            let value = [&secret2[..], format!("-load-{i}").as_bytes()].concat();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            if api.put_until_acked(via, "med", &format!("load/{i}"), &value, deadline).await {
                acked.push(i);
            }
            i += 1;
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let token = c.token_file();
    let token = token.to_str().unwrap().to_string();
    let (ok, out, err) =
        c.cli(&["ns", "rotate-key", "med", "--wait", "--endpoint", c.http(1), "--token-file", &token]).await;
    let progress: serde_json::Value = serde_json::from_str(
        out.split_once("\n{").map(|(_, rest)| format!("{{{rest}")).as_deref().unwrap_or("null"),
    )
    .unwrap_or_default();
    assert!(
        progress["reencrypted"].as_u64() > Some(20),
        "rotation did not re-encrypt: {out} {err} (ok {ok})"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked = writer.await.unwrap();
    assert!(acked.len() > 20, "the load ran: {}", acked.len());
    let (ok, out, err) =
        c.cli(&["ns", "rotate-key", "med", "--wait", "--endpoint", c.http(4), "--token-file", &token]).await;
    assert!(ok, "the second rotation left values under older keys: {out} {err}");
    let r = c.request(2, reqwest::Method::GET, "/v1/namespaces/med", None).await.unwrap();
    assert_eq!(r.json()["key_versions"], serde_json::json!([1, 2, 3]), "{}", r.text());
    for id in [1, 4] {
        for i in &acked {
            let want = [&secret[..], format!("-load-{i}").as_bytes()].concat();
            assert_eq!(
                c.read_back(id, "med", &format!("load/{i}")).await,
                Ok(Some(want)),
                "load/{i} via {id}"
            );
        }
        for i in 0..20 {
            let want = [&secret[..], format!("-{i}").as_bytes()].concat();
            assert_eq!(c.read_back(id, "med", &format!("patient/{i}")).await, Ok(Some(want)));
        }
    }
    // Retiring: version 1 is unused after the rotations; the newest cannot be retired.
    let retire = |v: u32| format!("{{\"version\":{v}}}").into_bytes();
    let r =
        c.request(1, reqwest::Method::POST, "/v1/namespaces/med/retire-key", Some(retire(3))).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    let r =
        c.request(4, reqwest::Method::POST, "/v1/namespaces/med/retire-key", Some(retire(1))).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.request(2, reqwest::Method::GET, "/v1/namespaces/med", None).await.unwrap();
    assert_eq!(r.json()["key_versions"], serde_json::json!([2, 3]), "{}", r.text());
    // Adding site b opens the namespace to node 2; removing it again closes it (and rotates).
    let ab = br#"{"class":"confidential","key_sites":["a","b"]}"#.to_vec();
    let r = c.request(1, reqwest::Method::PUT, "/v1/namespaces/med", Some(ab)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.read_back(2, "med", "patient/5").await.unwrap().unwrap(), [&secret[..], b"-5"].concat());
    let a_only = br#"{"class":"confidential","key_sites":["a"]}"#.to_vec();
    let r = c.request(4, reqwest::Method::PUT, "/v1/namespaces/med", Some(a_only)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.request(2, reqwest::Method::GET, "/v1/kv/med/patient/5", None).await.unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    let r = c.request(1, reqwest::Method::GET, "/v1/namespaces/med", None).await.unwrap();
    assert_eq!(r.json()["key_versions"], serde_json::json!([2, 3, 4]), "{}", r.text());
    assert_eq!(c.read_back(1, "med", "patient/5").await.unwrap().unwrap(), [&secret[..], b"-5"].concat());
    // Rotation is refused where the key is not, and for a public namespace.
    let r = c.request(2, reqwest::Method::POST, "/v1/namespaces/med/rotate-key", None).await.unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    let r = c.request(1, reqwest::Method::POST, "/v1/namespaces/default/rotate-key", None).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.text());

    // The control value's replicas (with 4 nodes and 3 replicas, not every node has it).
    let route =
        c.request(1, reqwest::Method::GET, "/v1/cluster/route?ns=default&key=control", None).await.unwrap();
    let control_replicas: Vec<u64> = serde_json::from_value(route.json()["replicas"].clone()).unwrap();
    assert_eq!(control_replicas.len(), 3, "{}", route.text());
    // Let sled write out its buffers, stop everything, then read every byte on every disk.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in c.ids() {
        c.kill9(id);
    }
    for id in c.ids() {
        let dir = c.data_dir(id).to_path_buf();
        // The control proves the scan sees replicated values: the public one is on the disk of
        // every replica of its shard.
        if control_replicas.contains(&id) {
            assert!(
                !common::files_containing(&dir, &control).is_empty(),
                "node {id}: the public control value is not on disk"
            );
        }
        let leaks = common::files_containing(&dir, &secret);
        assert!(leaks.is_empty(), "node {id}: confidential plaintext on disk in {leaks:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn site_local_bytes_stay_at_their_home_site() {
    // Sites a, b, c, a, b: the home site b has nodes 2 and 5.
    let mut c = Cluster::init(5, "a,b,c", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    let body = br#"{"class":"site-local","home_site":"b","replicas":3}"#.to_vec();
    let r = c.request(1, reqwest::Method::PUT, "/v1/namespaces/cams", Some(body)).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    // Its shard lives at site b only (two replicas: the site has two nodes).
    let route = c.request(3, reqwest::Method::GET, "/v1/cluster/route?ns=cams&key=any", None).await.unwrap();
    let mut replicas: Vec<u64> = serde_json::from_value(route.json()["replicas"].clone()).unwrap();
    replicas.sort();
    assert_eq!(replicas, vec![2, 5], "{}", route.text());
    // A home site with no node is refused; the home site cannot change.
    let r = c
        .request(
            1,
            reqwest::Method::PUT,
            "/v1/namespaces/nowhere",
            Some(br#"{"class":"site-local","home_site":"z"}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.json()["error"]["message"].as_str().unwrap_or_default().contains("site \"z\""), "{}", r.text());
    let r = c
        .request(
            1,
            reqwest::Method::PUT,
            "/v1/namespaces/cams",
            Some(br#"{"class":"site-local","home_site":"a"}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.text());

    let marker = format!("LOCAL-{}", std::process::id()).into_bytes();
    for i in 0..30u64 {
        let via = if i.is_multiple_of(2) { 2 } else { 5 };
        let v = [&marker[..], format!("-{i}").as_bytes()].concat();
        c.put(via, "cams", &format!("frame/{i}"), &v).await.unwrap();
    }
    assert_eq!(c.get(5, "cams", "frame/4", false).await.unwrap().unwrap(), [&marker[..], b"-4"].concat());
    let r = c.request(2, reqwest::Method::GET, "/v1/kv/cams?prefix=frame/&limit=100", None).await.unwrap();
    assert_eq!(r.json()["items"].as_array().map(Vec::len), Some(30), "{}", r.text());
    // Other sites: refused, naming the home site.
    for id in [1, 3, 4] {
        let r = c.request(id, reqwest::Method::GET, "/v1/kv/cams/frame/4", None).await.unwrap();
        assert_eq!(r.status, 403, "{}", r.text());
        let msg = r.json()["error"]["message"].as_str().unwrap_or_default().to_string();
        assert!(msg.contains("site-local to site \"b\""), "{msg}");
        let r = c.request(id, reqwest::Method::PUT, "/v1/kv/cams/x", Some(marker.clone())).await.unwrap();
        assert_eq!(r.status, 403, "{}", r.text());
        let r = c.request(id, reqwest::Method::GET, "/v1/kv/cams?prefix=f", None).await.unwrap();
        assert_eq!(r.status, 403, "{}", r.text());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in c.ids() {
        c.kill9(id);
    }
    for id in c.ids() {
        let found = common::files_containing(c.data_dir(id), &marker);
        if [2, 5].contains(&id) {
            assert!(!found.is_empty(), "node {id} (site b) should hold the namespace");
        } else {
            assert!(found.is_empty(), "node {id}: site-local bytes outside site b in {found:?}");
        }
    }
}
