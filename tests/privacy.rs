//! Privacy-aware namespaces (issue 5) against real processes: a confidential namespace's values
//! are sealed before they are replicated, so no node's data directory holds the plaintext, and
//! nodes outside the key sites cannot read or write them.

mod common;

use std::path::Path;
use std::time::Duration;

use common::Cluster;

const READY: Duration = Duration::from_secs(30);

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    out.push(p.display().to_string());
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confidential_values_are_ciphertext_on_every_disk_and_closed_outside_key_sites() {
    let mut c = Cluster::init(3, "a,b,c", |t| t);
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

    // Let sled write out its buffers, stop everything, then read every byte on every disk.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in c.ids() {
        c.kill9(id);
    }
    for id in c.ids() {
        let dir = c.data_dir(id).to_path_buf();
        // The control proves the scan sees replicated values: the public one is on every disk.
        assert!(
            !files_containing(&dir, &control).is_empty(),
            "node {id}: the public control value is not on disk"
        );
        let leaks = files_containing(&dir, &secret);
        assert!(leaks.is_empty(), "node {id}: confidential plaintext on disk in {leaks:?}");
    }
}
