//! Test harness: real `edgefabric` processes on loopback, created by `edgefabric cluster init`
//! in a temporary directory, with `kill -9`, restart and wipe. Node logs are kept in the
//! cluster directory and printed when a test fails.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_edgefabric");

/// Picks a base port with `2 * nodes` free ports after it. Ports are spread by process id so
/// test binaries running side by side do not collide, and checked by binding. All below 32768,
/// Linux's first ephemeral port: a node restarted by a test must get its port back, and an
/// outgoing connection may take any free ephemeral port while the node is down (a restart
/// once failed with "Address already in use" on port 47384).
pub fn free_base_port(nodes: u16) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    loop {
        let slot = NEXT.fetch_add(1, Ordering::SeqCst);
        let base = 10_000 + ((std::process::id() as u16 % 200) * 110 + slot * 16) % 22_000;
        let all_free = (0..2 * nodes).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
}

pub struct Node {
    pub id: u64,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub http: String,
    pub grpc: String,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
}

/// One cluster at a time per test binary: on 2 cores, two clusters side by side starve each
/// other's elections, and the tests check durability and correctness, not starvation.
static RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

struct Slot;

impl Slot {
    fn acquire() -> Slot {
        while RUNNING.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            std::thread::sleep(Duration::from_millis(100));
        }
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::SeqCst);
    }
}

impl Node {
    /// A node of `cluster.json` (in `out`, the `cluster init` directory), not started.
    fn from_cluster_json(out: &Path, n: &serde_json::Value) -> Node {
        let id = n["id"].as_u64().unwrap();
        Node {
            id,
            config: out.join(format!("node{id}.toml")),
            data_dir: out.join(format!("node{id}")),
            http: format!("https://{}", n["http"].as_str().unwrap()),
            grpc: format!("https://{}", n["grpc"].as_str().unwrap()),
            child: None,
            log: out.join(format!("node{id}.log")),
            starts: 0,
        }
    }
}

pub struct Cluster {
    _slot: Slot,
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, Node>,
    pub token: String,
    pub client: reqwest::Client,
}

#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub body: Vec<u8>,
    pub revision: Option<u64>,
}

impl HttpReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Cluster {
    /// `cluster init` for `n` nodes over `sites`; `tweak` edits each node's TOML before start.
    pub fn init(n: u16, sites: &str, tweak: impl Fn(String) -> String) -> Cluster {
        let slot = Slot::acquire();
        let dir = tempfile::tempdir().expect("tempdir");
        let base = free_base_port(n);
        let out = dir.path().join("cluster");
        let status = Command::new(BIN)
            .args(["cluster", "init", "--nodes", &n.to_string(), "--sites", sites])
            .args(["--host", "127.0.0.1", "--base-port", &base.to_string()])
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::null())
            .status()
            .expect("run cluster init");
        assert!(status.success(), "cluster init failed");
        let cluster: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("cluster.json")).unwrap()).unwrap();
        let mut nodes = BTreeMap::new();
        for n in cluster["nodes"].as_array().unwrap() {
            let id = n["id"].as_u64().unwrap();
            let config = out.join(format!("node{id}.toml"));
            let text = std::fs::read_to_string(&config).unwrap();
            std::fs::write(&config, tweak(text)).unwrap();
            nodes.insert(id, Node::from_cluster_json(&out, n));
        }
        let token = std::fs::read_to_string(out.join("admin.token")).unwrap().trim().to_string();
        let client = tls_client(&out.join("ca.pem"), Duration::from_secs(20));
        Cluster { _slot: slot, dir, nodes, token, client }
    }

    /// A REST client that verifies the nodes against the cluster's CA (`DIR/ca.pem`).
    pub fn http_client(&self, timeout: Duration) -> reqwest::Client {
        tls_client(&self.cluster_dir().join("ca.pem"), timeout)
    }

    /// A gRPC channel to node `id`, verifying it against the cluster's CA; with `client`, the
    /// connection presents that ed25519 key's node-key certificate (as nodes do to each other).
    pub async fn grpc_channel_as(
        &self,
        id: u64,
        client: Option<&edgefabric_crypto::Identity>,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        let ca = std::fs::read(self.cluster_dir().join("ca.pem")).unwrap();
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca));
        if let Some(key) = client {
            let pem = edgefabric_crypto::tls::node_key_cert(key).unwrap();
            tls = tls.identity(tonic::transport::Identity::from_pem(pem.cert.as_bytes(), pem.key.as_bytes()));
        }
        tonic::transport::Endpoint::from_shared(self.grpc(id).to_string())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
    }

    /// A gRPC channel to node `id` as an app has one: TLS, no client certificate.
    pub async fn grpc_channel(&self, id: u64) -> tonic::transport::Channel {
        self.grpc_channel_as(id, None).await.expect("connect over TLS")
    }

    /// The directory `cluster init` wrote.
    pub fn cluster_dir(&self) -> PathBuf {
        self.dir.path().join("cluster")
    }

    pub fn token_file(&self) -> PathBuf {
        self.cluster_dir().join("admin.token")
    }

    /// Picks up nodes added to `cluster.json` (by `cluster join`).
    pub fn refresh_nodes(&mut self) {
        let out = self.cluster_dir();
        let cluster: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("cluster.json")).unwrap()).unwrap();
        for n in cluster["nodes"].as_array().unwrap() {
            let id = n["id"].as_u64().unwrap();
            self.nodes.entry(id).or_insert_with(|| Node::from_cluster_json(&out, n));
        }
    }

    /// Runs the `edgefabric` CLI; returns (success, stdout, stderr).
    pub async fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::process::Command::new(BIN).args(args).output().await.expect("run edgefabric");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn start(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("node id");
        assert!(node.child.is_none(), "node {id} already running");
        node.starts += 1;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&node.config)
            .env("EDGEFABRIC_LOG", "info,openraft=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn edgefabric");
        node.child = Some(child);
    }

    pub fn start_all(&mut self) {
        for id in self.ids() {
            self.start(id);
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("node id");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (up to `within`) for the process to exit; its exit status, or None
    /// if it had to be killed.
    pub fn terminate(&mut self, id: u64, within: Duration) -> Option<std::process::ExitStatus> {
        self.signal(id, "-TERM");
        let node = self.nodes.get_mut(&id).expect("node id");
        let mut child = node.child.take().expect("node running");
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP: the process freezes with its sockets open, as a node behind a partition looks
    /// to the others (connections hang instead of being refused).
    pub fn pause(&mut self, id: u64) {
        self.signal(id, "-STOP");
    }

    /// SIGCONT after `pause`.
    pub fn resume(&mut self, id: u64) {
        self.signal(id, "-CONT");
    }

    fn signal(&self, id: u64, sig: &str) {
        let pid = self.nodes[&id].child.as_ref().expect("node running").id();
        let ok = Command::new("kill").arg(sig).arg(pid.to_string()).status().expect("run kill").success();
        assert!(ok, "kill {sig} {pid}");
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.nodes[&id].child.is_some()
    }

    /// Deletes a stopped node's whole data directory.
    pub fn wipe(&mut self, id: u64) {
        assert!(!self.is_running(id), "stop node {id} before wiping it");
        let dir = &self.nodes[&id].data_dir;
        if dir.exists() {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    pub fn log_text(&self, id: u64) -> String {
        std::fs::read_to_string(&self.nodes[&id].log).unwrap_or_default()
    }

    pub fn data_dir(&self, id: u64) -> &Path {
        &self.nodes[&id].data_dir
    }

    pub fn http(&self, id: u64) -> &str {
        &self.nodes[&id].http
    }

    pub fn grpc(&self, id: u64) -> &str {
        &self.nodes[&id].grpc
    }

    pub async fn request(
        &self,
        id: u64,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<HttpReply, String> {
        let url = format!("{}{}", self.http(id), path);
        let mut req = self.client.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status().as_u16();
        let revision =
            resp.headers().get("x-revision").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let body = resp.bytes().await.map_err(|e| e.to_string())?.to_vec();
        Ok(HttpReply { status, body, revision })
    }

    /// An access token for `subject` with one role, issued by the admin through node 1.
    pub async fn issue_token(&self, subject: &str, role: &str) -> String {
        let token_file = self.token_file();
        let (ok, out, err) = self
            .cli(&[
                "token",
                "issue",
                "--subject",
                subject,
                "--role",
                role,
                "--endpoint",
                self.http(1),
                "--token-file",
                token_file.to_str().unwrap(),
            ])
            .await;
        assert!(ok, "token issue: {out} {err}");
        out.split_whitespace().last().unwrap().to_string()
    }

    /// A request through node `id` with `token` (none: anonymous) and an optional content type.
    pub async fn call(
        &self,
        id: u64,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
        content_type: Option<&str>,
    ) -> HttpReply {
        let url = format!("{}{}", self.http(id), path);
        let mut req = self.client.request(method, &url).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        HttpReply { status, body, revision: None }
    }

    /// A put through node `id`: Ok(revision) if acknowledged.
    pub async fn put(&self, id: u64, ns: &str, key: &str, value: &[u8]) -> Result<u64, String> {
        let r = self
            .request(id, reqwest::Method::PUT, &format!("/v1/kv/{ns}/{key}"), Some(value.to_vec()))
            .await?;
        if r.status == 200 {
            r.json()["revision"].as_u64().ok_or_else(|| format!("no revision in {}", r.text()))
        } else {
            Err(format!("{} {}", r.status, r.text()))
        }
    }

    /// A get that retries `503`s (no leader confirmed yet) for up to 30 s: for checks that an
    /// acknowledged write is still there, which is about durability, not availability.
    pub async fn read_back(&self, id: u64, ns: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.get(id, ns, key, false).await {
                Err(e) if e.starts_with("503") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    }

    /// A get through node `id`: Ok(Some(value)) / Ok(None) on 404.
    pub async fn get(&self, id: u64, ns: &str, key: &str, stale: bool) -> Result<Option<Vec<u8>>, String> {
        let q = if stale { "?consistency=stale" } else { "" };
        let r = self.request(id, reqwest::Method::GET, &format!("/v1/kv/{ns}/{key}{q}"), None).await?;
        match r.status {
            200 => Ok(Some(r.body)),
            404 => Ok(None),
            s => Err(format!("{s} {}", r.text())),
        }
    }

    pub async fn status(&self, id: u64) -> Result<serde_json::Value, String> {
        let r = self.request(id, reqwest::Method::GET, "/v1/cluster/status", None).await?;
        if r.status == 200 {
            Ok(r.json())
        } else {
            Err(format!("{} {}", r.status, r.text()))
        }
    }

    pub async fn is_ready(&self, id: u64) -> bool {
        let url = format!("{}/readyz", self.http(id));
        matches!(self.client.get(&url).timeout(Duration::from_secs(2)).send().await, Ok(r) if r.status() == 200)
    }

    /// Waits until every running node answers /readyz with 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for id in self.ids().into_iter().filter(|id| self.is_running(*id)) {
            while !self.is_ready(id).await {
                if Instant::now() > deadline {
                    self.dump_logs();
                    panic!("node {id} not ready within {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The metadata group's leader as some running node reports it.
    pub async fn leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            for id in self.ids().into_iter().filter(|id| self.is_running(*id)) {
                if let Ok(s) = self.status(id).await {
                    if let Some(l) = s["meta"]["leader"].as_u64() {
                        if self.is_running(l) {
                            return l;
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("no leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn dump_logs(&self) {
        // Keep the full logs of a failed run (the cluster directory is deleted on drop).
        let keep = std::env::temp_dir().join(format!("edgefabric-failed-{}", std::process::id()));
        if std::fs::create_dir_all(&keep).is_ok() {
            for node in self.nodes.values() {
                let _ = std::fs::copy(&node.log, keep.join(format!("node{}.log", node.id)));
            }
            eprintln!("full node logs kept in {}", keep.display());
        }
        for node in self.nodes.values() {
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for (i, l) in lines.iter().enumerate() {
                if l.contains("panicked at") {
                    eprintln!("---- node {} PANIC ----", node.id);
                    for l in &lines[i..(i + 8).min(lines.len())] {
                        eprintln!("{l}");
                    }
                }
            }
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("---- node {} log (last 40 lines, {} starts) ----", node.id, node.starts);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for id in self.ids() {
            self.kill9(id);
        }
    }
}

/// Replaces `key = value` lines in a node's TOML (for test tuning).
pub fn set_toml(text: String, settings: &[(&str, &str)]) -> String {
    text.lines()
        .map(|l| {
            for (k, v) in settings {
                if l.trim_start().starts_with(&format!("{k} =")) {
                    return format!("{k} = {v}");
                }
            }
            l.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A reqwest client that trusts only the CA certificate in `ca` (rustls).
pub fn tls_client(ca: &Path, timeout: Duration) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap_or_else(|e| panic!("{}: {e}", ca.display()));
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(timeout)
        .build()
        .unwrap()
}

/// A cloneable handle for client traffic, usable from tasks while the test kills nodes.
#[derive(Clone)]
pub struct Endpoints {
    pub http: BTreeMap<u64, String>,
    pub token: String,
    pub client: reqwest::Client,
}

impl Cluster {
    /// The shard holding `key` of `ns`.
    pub async fn shard_of(&self, ns: &str, key: &str) -> u64 {
        let r = self
            .request(
                self.ids()[0],
                reqwest::Method::GET,
                &format!("/v1/cluster/route?ns={ns}&key={key}"),
                None,
            )
            .await
            .unwrap();
        r.json()["shard"].as_u64().unwrap_or_else(|| panic!("route: {}", r.text()))
    }

    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            http: self.nodes.iter().map(|(id, n)| (*id, n.http.clone())).collect(),
            token: self.token.clone(),
            client: self.client.clone(),
        }
    }
}

impl Endpoints {
    /// Puts through `via`; Ok(revision) only if acknowledged.
    pub async fn put(&self, via: u64, ns: &str, key: &str, value: &[u8]) -> Result<u64, String> {
        let url = format!("{}/v1/kv/{ns}/{key}", self.http[&via]);
        let resp = self
            .client
            .put(&url)
            .bearer_auth(&self.token)
            .body(value.to_vec())
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        match (status, body["revision"].as_u64()) {
            (200, Some(rev)) => Ok(rev),
            _ => Err(format!("{status} {body}")),
        }
    }

    /// Writes `key` = `value`, trying nodes in turn from `first`, until one acknowledges or
    /// `deadline` passes. Retrying the same key and value is safe: the checks only need the
    /// acknowledged value to be the one read back.
    pub async fn put_until_acked(
        &self,
        first: u64,
        ns: &str,
        key: &str,
        value: &[u8],
        deadline: Instant,
    ) -> bool {
        let ids: Vec<u64> = self.http.keys().copied().collect();
        let start = ids.iter().position(|i| *i == first).unwrap_or(0);
        let mut attempt = 0;
        while Instant::now() < deadline {
            let via = ids[(start + attempt) % ids.len()];
            if self.put(via, ns, key, value).await.is_ok() {
                return true;
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// Every file under `dir` that contains `needle` (plaintext-on-disk checks).
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
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
