//! `edgefabric demo`: a three-site cluster on loopback — three real node processes of this
//! binary — and a walk through every capability, each step checked against what the cluster
//! answers (a step that does not do what it says stops the demo with an error). The cluster is
//! left running, with the URLs to try next, until Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::client::{encode_segment, ClientOpts};
use crate::config::{cluster_init, read_token, InitSpec};

/// The walkthrough's steps, for the `[k/N]` headings.
const STEPS: usize = 8;
/// How long a node may take to become ready (a cold start elects 17 raft groups).
const READY_WITHIN: Duration = Duration::from_secs(90);

#[derive(clap::Args, Debug)]
pub struct DemoOpts {
    /// Where the nodes keep their files. A directory left by an earlier demo is replaced;
    /// any other existing directory is refused.
    #[arg(long, default_value = "edgefabric-demo")]
    pub dir: PathBuf,
    /// Node K uses gRPC port P+2(K-1) and HTTP port P+2(K-1)+1.
    #[arg(long, default_value_t = 7500)]
    pub base_port: u16,
    /// Stop the nodes and exit after the walkthrough instead of waiting for Ctrl-C.
    #[arg(long)]
    pub exit: bool,
}

/// A node process of the demo.
struct NodeProc {
    id: u64,
    site: &'static str,
    http: String,
    grpc: String,
    config: PathBuf,
    child: Option<Child>,
}

struct Demo {
    dir: PathBuf,
    http: reqwest::Client,
    token: String,
    nodes: Vec<NodeProc>,
    step: usize,
    /// The image the walkthrough registered, for the hints at the end.
    image: Option<String>,
}

/// The answer to one request: status and body.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("not JSON: {}", self.text()))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The error message of a JSON error answer, or the body.
    fn message(&self) -> String {
        self.json()
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| self.text())
    }
    fn expect(self, want: StatusCode, what: &str) -> Result<Answer> {
        if self.status != want {
            bail!("{what}: expected {want}, got {}: {}", self.status, self.message());
        }
        Ok(self)
    }
}

impl Drop for Demo {
    /// Never leave node processes behind, whatever way the demo ends.
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub async fn run(opts: DemoOpts) -> Result<i32> {
    let mut demo = Demo::start(&opts)?;
    demo.walk().await?;
    if opts.exit {
        demo.stop_all(Duration::from_secs(20));
        println!("\nThe nodes are stopped; their files are in {}.", demo.dir.display());
        return Ok(0);
    }
    // Listening before the prompt, so a Ctrl-C right after it is caught, not fatal. Ctrl-C
    // reaches the nodes too (same process group, same terminal): they shut down gracefully on
    // their own; this waits for them, and stops them if the signal came from elsewhere.
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for Ctrl-C")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    demo.try_next();
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    println!("\nStopping the nodes ...");
    demo.stop_all(Duration::from_secs(20));
    println!("Stopped. Their files stay in {}.", demo.dir.display());
    Ok(0)
}

impl Demo {
    fn start(opts: &DemoOpts) -> Result<Demo> {
        let dir = &opts.dir;
        if dir.exists() {
            if !dir.join("cluster.json").exists() || !dir.join("node1.toml").exists() {
                bail!(
                    "--dir {}: exists and is not a directory an earlier demo left; choose another",
                    dir.display()
                );
            }
            // Its nodes may still run (a demo in another terminal): never delete their files.
            let text = std::fs::read_to_string(dir.join("cluster.json")).unwrap_or_default();
            let cluster: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            for n in cluster["nodes"].as_array().into_iter().flatten() {
                let Some(Ok(addr)) = n["http"].as_str().map(str::parse::<std::net::SocketAddr>) else {
                    continue;
                };
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok() {
                    bail!(
                        "--dir {}: the demo there still runs (node {} answers at {addr}); stop it (Ctrl-C) or choose another --dir",
                        dir.display(),
                        n["id"]
                    );
                }
            }
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("removing the earlier demo's {}", dir.display()))?;
        }
        let sites = ["a", "b", "c"];
        cluster_init(&InitSpec {
            nodes: 3,
            sites: sites.iter().map(|s| s.to_string()).collect(),
            host: "127.0.0.1".into(),
            base_port: opts.base_port,
            out: dir.clone(),
        })
        .context("writing the cluster's files")?;
        let dir = dir.canonicalize().with_context(|| format!("{}", dir.display()))?;
        let token = read_token(&dir.join("admin.token"))?;
        let nodes = (1..=3u64)
            .map(|id| {
                let grpc_port = u64::from(opts.base_port) + 2 * (id - 1);
                NodeProc {
                    id,
                    site: sites[(id - 1) as usize],
                    http: format!("https://127.0.0.1:{}", grpc_port + 1),
                    grpc: format!("127.0.0.1:{grpc_port}"),
                    config: dir.join(format!("node{id}.toml")),
                    child: None,
                }
            })
            .collect();
        // Every node serves TLS under the cluster's own CA, which `cluster init` wrote.
        let http = crate::client::http_client(Some(&dir.join("ca.pem")), Some(Duration::from_secs(30)))?;
        Ok(Demo { dir, http, token, nodes, step: 0, image: None })
    }

    fn heading(&mut self, title: &str) {
        self.step += 1;
        println!("\n[{}/{STEPS}] {title}", self.step);
    }

    fn node(&self, id: u64) -> &NodeProc {
        &self.nodes[(id - 1) as usize]
    }

    async fn request(&self, id: u64, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Answer> {
        self.request_as(id, method, path, body, &self.token).await
    }

    async fn request_as(
        &self,
        id: u64,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        token: &str,
    ) -> Result<Answer> {
        let url = format!("{}{path}", self.node(id).http);
        let mut req = self.http.request(method, &url).bearer_auth(token);
        if let Some(b) = body {
            req = req.body(b);
        }
        let r = req.send().await.with_context(|| format!("node {id}: {url}"))?;
        let status = r.status();
        let body = r.bytes().await.with_context(|| format!("node {id}: reading {url}"))?.to_vec();
        Ok(Answer { status, body })
    }

    async fn put_json(&self, id: u64, path: &str, v: Value) -> Result<Answer> {
        self.request(id, Method::PUT, path, Some(v.to_string().into_bytes())).await
    }

    fn spawn(&mut self, id: u64) -> Result<()> {
        let exe = std::env::current_exe().context("finding this program to start the nodes")?;
        let log_path = self.dir.join(format!("node{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("{}", log_path.display()))?;
        let err = log.try_clone()?;
        let n = &mut self.nodes[(id - 1) as usize];
        let child = Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(&n.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        n.child = Some(child);
        Ok(())
    }

    /// Waits for `/readyz` of node `id`; a node that exits meanwhile is an error naming its log.
    async fn wait_ready(&mut self, id: u64) -> Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(a) = self.request(id, Method::GET, "/readyz", None).await {
                if a.status == StatusCode::OK {
                    return Ok(());
                }
            }
            let n = &mut self.nodes[(id - 1) as usize];
            if let Some(c) = n.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    n.child = None;
                    bail!(
                        "node {id} exited ({status}) before it was ready; its log: {}",
                        self.dir.join(format!("node{id}.log")).display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "node {id} was not ready within {READY_WITHIN:?}; its log: {}",
                    self.dir.join(format!("node{id}.log")).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// SIGTERM to every node (a graceful shutdown), then SIGKILL to any still running after
    /// `grace`.
    fn stop_all(&mut self, grace: Duration) {
        for n in &self.nodes {
            if let Some(c) = &n.child {
                if let Ok(pid) = i32::try_from(c.id()) {
                    // SAFETY: kill(2) on a child this process started and has not reaped.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
        }
        let deadline = Instant::now() + grace;
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                loop {
                    match c.try_wait() {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) if Instant::now() > deadline => {
                            let _ = c.kill();
                            let _ = c.wait();
                            break;
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            }
        }
    }

    async fn walk(&mut self) -> Result<()> {
        println!("EdgeFabric demo: a cluster of three sites on this machine");
        println!("  files: {} (configs, keys, admin token, trust.json, node logs)", self.dir.display());
        self.start_nodes().await?;
        self.namespaces().await?;
        self.kv().await?;
        self.privacy().await?;
        self.time_series().await?;
        self.images().await?;
        self.audit().await?;
        self.node_failure().await?;
        Ok(())
    }

    async fn start_nodes(&mut self) -> Result<()> {
        self.heading("Three nodes, one per site, each its own process");
        let t0 = Instant::now();
        for id in 1..=3 {
            self.spawn(id)?;
        }
        for id in 1..=3 {
            self.wait_ready(id).await?;
        }
        for n in &self.nodes {
            println!("  ✓ node {} at site {}: REST {}  gRPC {}", n.id, n.site, n.http, n.grpc);
        }
        let v = self
            .request(1, Method::GET, "/v1/cluster/status", None)
            .await?
            .expect(StatusCode::OK, "status")?;
        let v = v.json()?;
        let shards = v["shards"].as_array().map_or(0, Vec::len);
        let led: Vec<String> = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| format!("node {} leads {}", n["id"], n["leads"]))
            .collect();
        println!(
            "  ✓ ready in {:.1} s: {shards} shards, each a raft group with a replica at every site ({})",
            t0.elapsed().as_secs_f64(),
            led.join(", ")
        );
        Ok(())
    }

    async fn namespaces(&mut self) -> Result<()> {
        self.heading("Namespaces: public, confidential, site-local");
        self.put_json(
            1,
            "/v1/namespaces/patients",
            json!({"class": "confidential", "key_sites": ["a", "b"]}),
        )
        .await?
        .expect_created("creating namespace patients")?;
        println!("  ✓ patients  confidential: values sealed (AES-256-GCM) by the node that accepts them;");
        println!("              only nodes at sites a and b hold the key");
        self.put_json(1, "/v1/namespaces/factory-a", json!({"class": "site-local", "home_site": "a"}))
            .await?
            .expect_created("creating namespace factory-a")?;
        println!("  ✓ factory-a site-local at site a: its data and raft traffic never leave site a");
        println!("  ✓ default   public: replicated to every site (exists from the start)");
        Ok(())
    }

    async fn kv(&mut self) -> Result<()> {
        self.heading("Key-value: replicated, linearizable, compare-and-set");
        let a = self
            .request(1, Method::PUT, "/v1/kv/default/greeting", Some(b"hello, edge".to_vec()))
            .await?
            .expect(StatusCode::OK, "put default/greeting")?;
        let rev = a.json()?["revision"].as_u64().context("put: no revision")?;
        println!("  ✓ PUT  default/greeting = \"hello, edge\" through node 1 → revision {rev}");
        let a = self
            .request(3, Method::GET, "/v1/kv/default/greeting", None)
            .await?
            .expect(StatusCode::OK, "get default/greeting")?;
        if a.body != b"hello, edge" {
            bail!("node 3 read {:?}, not what node 1 wrote", a.text());
        }
        println!("  ✓ GET  default/greeting through node 3 (site c) → \"{}\"", a.text());
        let stale = rev.saturating_sub(1);
        let a = self
            .request(
                2,
                Method::PUT,
                &format!("/v1/kv/default/greeting?cas={stale}"),
                Some(b"overwrite".to_vec()),
            )
            .await?
            .expect(StatusCode::CONFLICT, "compare-and-set against an old revision")?;
        println!("  ✓ PUT ?cas={stale} through node 2 → 409: {}", a.message());
        Ok(())
    }

    async fn privacy(&mut self) -> Result<()> {
        self.heading("Privacy: what other sites can and cannot see");
        let secret =
            format!("heart-rate 71 bpm, demo {}", hex::encode(edgefabric_crypto::random_bytes::<4>()?));
        self.request(1, Method::PUT, "/v1/kv/patients/p-17", Some(secret.clone().into_bytes()))
            .await?
            .expect(StatusCode::OK, "put patients/p-17 at site a")?;
        println!("  ✓ PUT  patients/p-17 through node 1 (site a, a key site)");
        let a = self
            .request(2, Method::GET, "/v1/kv/patients/p-17", None)
            .await?
            .expect(StatusCode::OK, "get at b")?;
        if a.body != secret.as_bytes() {
            bail!("node 2 read {:?}, not the value written", a.text());
        }
        println!("  ✓ GET  through node 2 (site b, a key site) → \"{}\"", a.text());
        let a = self
            .request(3, Method::GET, "/v1/kv/patients/p-17", None)
            .await?
            .expect(StatusCode::FORBIDDEN, "get at site c")?;
        println!("  ✓ GET  through node 3 (site c) → 403: {}", a.message());
        // Node 3 still holds a replica of the shard: the proof is that its files never contain
        // the value. Every node's, in fact — raft logs and snapshots carry only ciphertext.
        let mut found = Vec::new();
        for id in 1..=3 {
            if contains_bytes(&self.dir.join(format!("node{id}")), secret.as_bytes())? {
                found.push(id);
            }
        }
        if !found.is_empty() {
            bail!("the confidential value's plaintext is in the files of node(s) {found:?}");
        }
        println!("  ✓ the value's plaintext is in none of the three nodes' files (they hold its ciphertext)");
        self.request(1, Method::PUT, "/v1/kv/factory-a/line-speed", Some(b"42 units/min".to_vec()))
            .await?
            .expect(StatusCode::OK, "put factory-a/line-speed at site a")?;
        println!("  ✓ PUT  factory-a/line-speed through node 1 (site a)");
        let a = self
            .request(2, Method::GET, "/v1/kv/factory-a/line-speed", None)
            .await?
            .expect(StatusCode::FORBIDDEN, "get factory-a at site b")?;
        println!("  ✓ GET  through node 2 (site b) → 403: {}", a.message());
        Ok(())
    }

    async fn time_series(&mut self) -> Result<()> {
        self.heading("Time series: line protocol in, PromQL out");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
        let mut body = String::new();
        let hosts = [("cam-1", "a"), ("cam-2", "b"), ("cam-3", "c")];
        for i in 0..40i64 {
            let t = now - (39 - i) * 15_000;
            for (k, (host, site)) in hosts.iter().enumerate() {
                let cpu = 20.0 + 10.0 * k as f64 + (i % 7) as f64 * 1.5;
                let frames = (k as i64 + 1) * 25 * 15 * i;
                body.push_str(&format!("camera,host={host},site={site} cpu={cpu:.1},frames={frames}i {t}\n"));
            }
        }
        self.request(1, Method::POST, "/v1/ts/write?ns=default&precision=ms", Some(body.into_bytes()))
            .await?
            .expect(StatusCode::NO_CONTENT, "line-protocol write")?;
        println!("  ✓ POST /v1/ts/write through node 1: 240 samples (3 cameras × cpu, frames × 10 minutes)");
        for q in ["avg by (site) (avg_over_time(camera_cpu[5m]))", "sum(rate(camera_frames[5m]))"] {
            let path = format!("/api/v1/query?query={}&time={}", encode_segment(q), now as f64 / 1000.0);
            let v = self.request(2, Method::GET, &path, None).await?.expect(StatusCode::OK, q)?.json()?;
            let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
            if result.is_empty() {
                bail!("{q}: no result: {v}");
            }
            println!("  ✓ GET /api/v1/query through node 2: {q}");
            for r in result {
                let labels: Vec<String> = r["metric"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect();
                println!("      {{{}}} {}", labels.join(", "), r["value"][1].as_str().unwrap_or("?"));
            }
        }
        println!("  (Grafana: add a Prometheus data source with the URL {})", self.node(1).http);
        Ok(())
    }

    async fn images(&mut self) -> Result<()> {
        self.heading("App images: signed, registered in the ledger, proven offline");
        let publisher = edgefabric_crypto::Identity::generate()?;
        self.request(
            1,
            Method::POST,
            "/v1/publishers",
            Some(
                json!({"id": "acme", "public_key": publisher.public_key().to_base64()})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await?
        .expect_created("registering publisher acme")?;
        println!("  ✓ publisher acme registered (its ed25519 public key)");
        let image = format!("camera-ai image bytes {}", hex::encode(edgefabric_crypto::random_bytes::<8>()?));
        let digest =
            format!("sha256:{}", hex::encode(ring::digest::digest(&ring::digest::SHA256, image.as_bytes())));
        let name = "camera-ai:2.1";
        let signature =
            STANDARD.encode(publisher.sign(&edgefabric_ledger::entry::image_message(name, &digest)));
        let body = json!({"name": name, "digest": digest, "publisher": "acme", "signature": signature});
        self.request(2, Method::POST, "/v1/images", Some(body.to_string().into_bytes()))
            .await?
            .expect_created("registering the image")?;
        println!("  ✓ {name} ({}…) signed by acme and registered through node 2", &digest[..19]);
        let forged = json!({"name": name, "digest": format!("sha256:{}", "0".repeat(64)), "publisher": "acme",
            "signature": signature});
        let a = self.request(2, Method::POST, "/v1/images", Some(forged.to_string().into_bytes())).await?;
        if a.status.is_success() {
            bail!("an image with another image's signature was accepted");
        }
        println!(
            "  ✓ the same signature on another digest is refused: {} {}",
            a.status.as_u16(),
            a.message()
        );
        // Offline proof, as a deploying node or an auditor runs it: the checkpoint must be
        // cosigned by at least two of the three pinned node keys, which takes a moment.
        println!(
            "  ✓ edgefabric image verify (the RFC 6962 proof and the cosigned checkpoint, checked here):"
        );
        let verify = || {
            crate::ledger_cli::image(crate::ledger_cli::ImageCmd::Verify {
                digest: digest.clone(),
                endpoint: self.node(3).http.clone(),
                ca_file: None,
                trust: self.dir.join("trust.json"),
                min_signatures: 2,
                name: Some(name.to_string()),
            })
        };
        retry(Duration::from_secs(30), || async {
            match verify().await? {
                0 => Ok(()),
                rc => bail!("image verify exited {rc}"),
            }
        })
        .await?;
        self.image = Some(digest);
        Ok(())
    }

    async fn audit(&mut self) -> Result<()> {
        self.heading("The audit trail: every access recorded in the ledger, verified offline");
        let body = json!({"subject": "demo-auditor", "roles": ["auditor"], "ttl_secs": 3600});
        let v = self
            .request(1, Method::POST, "/v1/tokens", Some(body.to_string().into_bytes()))
            .await?
            .expect_created("issuing an auditor token")?
            .json()?;
        let token = v["token"].as_str().context("token: missing")?.to_string();
        let token_file = self.dir.join("auditor.token");
        std::fs::write(&token_file, &token).with_context(|| format!("{}", token_file.display()))?;
        println!("  ✓ an auditor token (role auditor) in {}", token_file.display());
        // Records reach the ledger in batches: wait for the demo's own puts to be there.
        let v = retry(Duration::from_secs(30), || async {
            let a = self
                .request_as(2, Method::GET, "/v1/audit?ns=patients&limit=10", None, &token)
                .await?
                .expect(StatusCode::OK, "GET /v1/audit")?;
            let v = a.json()?;
            if v["records"].as_array().is_none_or(|r| r.len() < 3) {
                bail!("fewer than 3 records of namespace patients yet");
            }
            Ok(v)
        })
        .await?;
        println!("  ✓ GET /v1/audit?ns=patients through node 2:");
        for r in v["records"].as_array().into_iter().flatten().take(8) {
            let what = match (r["key"].as_str(), r["key_hash"].as_str()) {
                (Some(k), _) => format!("key {k}"),
                (None, Some(h)) => format!("key {}…", &h[..h.len().min(20)]),
                (None, None) => String::new(),
            };
            let outcome = match r["status"].as_u64() {
                Some(0) => "received".to_string(),
                Some(s) => format!("→ {s}"),
                None => "?".to_string(),
            };
            println!(
                "      {} node {} {:<6} {:<7} {what:<26} {outcome}",
                r["time"].as_str().unwrap_or("?"),
                r["node"],
                r["actor"].as_str().unwrap_or("?"),
                r["action"].as_str().unwrap_or("?"),
            );
        }
        println!(
            "    (a write is recorded when received, durably before it runs, and again with its outcome;"
        );
        println!("     a confidential namespace's records carry a keyed hash of the key, never the key)");
        println!("  ✓ edgefabric audit verify --ns default (each record signed by its node, in a cosigned checkpoint):");
        let rc = crate::audit::run(crate::audit::AuditCmd::Verify {
            filters: crate::audit::Filters::for_ns("default"),
            trust: self.dir.join("trust.json"),
            min_signatures: 2,
            client: ClientOpts {
                endpoint: self.node(3).http.clone(),
                token_file: token_file.clone(),
                ca_file: None,
                plaintext: false,
            },
        })
        .await?;
        if rc != 0 {
            bail!("audit verify exited {rc}");
        }
        Ok(())
    }

    async fn node_failure(&mut self) -> Result<()> {
        self.heading("A site goes down: kill -9 of node 3, and the cluster carries on");
        if let Some(mut c) = self.nodes[2].child.take() {
            c.kill().context("killing node 3")?;
            c.wait()?;
        }
        println!("  ✓ node 3 (site c) killed");
        let t0 = Instant::now();
        let rev = retry(Duration::from_secs(30), || async {
            let a = self
                .request(1, Method::PUT, "/v1/kv/default/while-c-was-down", Some(b"still writable".to_vec()))
                .await?
                .expect(StatusCode::OK, "put with node 3 down")?;
            a.json()?["revision"].as_u64().context("no revision")
        })
        .await?;
        println!(
            "  ✓ PUT default/while-c-was-down through node 1 → revision {rev} ({:.1} s after the kill: 2 of 3 replicas are a quorum)",
            t0.elapsed().as_secs_f64()
        );
        let a = self
            .request(2, Method::GET, "/v1/kv/default/while-c-was-down", None)
            .await?
            .expect(StatusCode::OK, "get with node 3 down")?;
        println!("  ✓ GET through node 2 → \"{}\"", a.text());
        let v = self
            .request(1, Method::GET, "/v1/cluster/status", None)
            .await?
            .expect(StatusCode::OK, "status")?;
        let up: Vec<String> = v.json()?["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| format!("node {} {}", n["id"], if n["up"] == true { "up" } else { "DOWN" }))
            .collect();
        println!("  ✓ cluster status: {}", up.join(", "));
        self.spawn(3)?;
        self.wait_ready(3).await?;
        // Node 3's own replica, not a forwarded read: it has caught up with what it missed.
        let a = retry(Duration::from_secs(30), || async {
            let a = self
                .request(3, Method::GET, "/v1/kv/default/while-c-was-down?consistency=stale", None)
                .await?
                .expect(StatusCode::OK, "stale read at node 3")?;
            if a.body != b"still writable" {
                bail!("node 3's replica has {:?}", a.text());
            }
            Ok(a)
        })
        .await?;
        println!("  ✓ node 3 restarted and caught up: its own replica reads \"{}\"", a.text());
        Ok(())
    }

    fn try_next(&self) {
        let t = self.dir.join("admin.token");
        let (n1, n3) = (&self.node(1).http, &self.node(3).http);
        println!("\nThe cluster is running. Try next:");
        println!("  export EDGEFABRIC_ENDPOINT={n1} EDGEFABRIC_TOKEN_FILE={}", t.display());
        println!("  edgefabric kv put default hello world && edgefabric kv get default hello");
        println!("  edgefabric cluster status");
        println!(
            "  edgefabric keygen --out backup.key && edgefabric backup --recipient backup.key.pub --out node1.efb \\\n      && edgefabric restore --from node1.efb --identity backup.key --check"
        );
        println!(
            "  edgefabric image verify --digest {} --trust {} --min-signatures 2",
            self.image.as_deref().unwrap_or("sha256:<hex>"),
            self.dir.join("trust.json").display()
        );
        let ca = self.dir.join("ca.pem");
        let ca = ca.display();
        println!("  (every node speaks TLS under this cluster's CA: {ca})");
        println!(
            "  curl --cacert {ca} -H \"Authorization: Bearer $(cat {})\" {n3}/v1/kv/default/greeting",
            t.display()
        );
        println!("  curl --cacert {ca} '{n1}/api/v1/query?query=camera_cpu'   (with the same header; Grafana: data source URL {n1})");
        println!("  curl --cacert {ca} {n1}/metrics        curl --cacert {ca} {n1}/openapi.json");
        match std::fs::read(self.dir.join("trust.json")) {
            Ok(trust) => println!(
                "  the auditor's page, with this cluster's node keys pinned (open it in a browser):\n    {n1}/ui#min=2&trust={}",
                STANDARD.encode(trust)
            ),
            Err(_) => println!("  the auditor's page: {n1}/ui"),
        }
        println!("  grpcurl -cacert {ca} {} list", self.node(1).grpc);
        println!(
            "Node logs: {}/node{{1,2,3}}.log. The README and docs/ explain each part.",
            self.dir.display()
        );
        println!("Ctrl-C stops the three nodes.");
    }
}

impl Answer {
    /// 200 or 201: creating something that an earlier step may have created.
    fn expect_created(self, what: &str) -> Result<Answer> {
        if self.status == StatusCode::CREATED {
            return Ok(self);
        }
        self.expect(StatusCode::OK, what)
    }
}

/// Runs `f` until it succeeds or `within` has passed; the last error is returned.
async fn retry<T, F, Fut>(within: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Whether any file under `dir` contains `needle`.
fn contains_bytes(dir: &Path, needle: &[u8]) -> Result<bool> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            if contains_bytes(&path, needle)? {
                return Ok(true);
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            // A file removed meanwhile (a compaction) is skipped, not an error.
            if bytes.windows(needle.len()).any(|w| w == needle) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}
