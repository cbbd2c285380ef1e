//! Server wiring: start the node, serve gRPC (public API + node-to-node + reflection) and REST,
//! shut down gracefully on SIGINT/SIGTERM.

use std::sync::Arc;

use anyhow::{Context, Result};
use edgefabric_crypto::Identity;
use edgefabric_store::node::Node;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{read_token, NodeConfig};
use crate::grpc;

pub struct AppState {
    pub node: Arc<Node>,
    admin_token: String,
    /// Signs and checks access tokens (derived from the admin token; see `auth.rs`).
    pub token_key: edgefabric_crypto::Identity,
    /// Keys the hashes that stand for key names in audit records (`auth::audit_key_hash`).
    audit_secret: [u8; 32],
    /// Nonces of signed requests seen (anti-replay).
    pub nonces: crate::auth::NonceCache,
    /// REST requests and their latency, for `/metrics`.
    pub http_metrics: RequestMetrics,
    /// gRPC calls and their latency (status codes as HTTP's, as the audit trail records them).
    pub grpc_metrics: RequestMetrics,
    /// Time-series samples accepted through this node (line protocol and remote write).
    pub ts_samples_written: std::sync::atomic::AtomicU64,
    /// This node's listeners and links speak TLS (`/v1/cluster/status` shows it).
    pub tls: bool,
    /// Denied requests recorded one by one, per source (`DeniedLimiter`).
    pub denied: DeniedLimiter,
}

/// Bounds what denied requests cost. Each denied request is recorded durably and then enters
/// the ledger on every node, so a flood of them would be amplified many times over. Denials are
/// budgeted per source and actor: one with no valid credential (`anonymous`, free for anyone to
/// send) gets `DENIED_RATE` a second in bursts of `DENIED_BURST`; a verified principal, whose
/// every denial is the signal an auditor looks for and whose token the admin can revoke, gets
/// ten times that. A source is an IPv4 address or an IPv6 /64 (one host can pick addresses
/// from its /64 freely), and all anonymous sources together share `DENIED_ANON_RATE`, so
/// many addresses buy no more than one node-wide budget. Within the budget each denial is
/// recorded on its own; past it, each is counted, and the counts are recorded as one aggregate
/// record per (source, actor) every `DENIED_FLUSH` (`flush_denied`): nothing goes unrecorded,
/// the cost is bounded.
#[derive(Default)]
pub struct DeniedLimiter {
    state: std::sync::Mutex<Denials>,
    /// Requests counted into aggregates since start (`/metrics`).
    pub aggregated: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Denials {
    buckets: std::collections::HashMap<(std::net::IpAddr, String), Bucket>,
    /// The budget all anonymous sources share (`None` until the first anonymous denial).
    anonymous: Option<(f64, std::time::Instant)>,
    /// When the table was last swept for sources with nothing to report.
    swept: Option<std::time::Instant>,
}

struct Bucket {
    tokens: f64,
    last: std::time::Instant,
    /// Denied requests not yet recorded (waiting for the next aggregate).
    counted: u64,
}

/// Denials without a valid credential recorded one by one, per second and source.
pub const DENIED_RATE: f64 = 5.0;
pub const DENIED_BURST: f64 = 20.0;
/// Denials without a valid credential recorded one by one, per second, from all sources.
pub const DENIED_ANON_RATE: f64 = 50.0;
pub const DENIED_ANON_BURST: f64 = 200.0;
/// How many times the anonymous budget a verified principal gets.
const PRINCIPAL_FACTOR: f64 = 10.0;
pub const DENIED_FLUSH: std::time::Duration = std::time::Duration::from_secs(10);
/// Sources tracked at once; past it, sources with nothing to report are forgotten (at most once
/// a second, so a full table costs no scan per request), and while it stays full, denials from
/// new sources are counted under one overflow source (the unspecified address).
const DENIED_SOURCES: usize = 10_000;

fn refill(tokens: &mut f64, last: &mut std::time::Instant, now: std::time::Instant, rate: f64, burst: f64) {
    *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
    *last = now;
}

impl DeniedLimiter {
    /// Whether a denial of `actor` from `ip` is recorded on its own; if not, it is counted.
    pub fn record_one(&self, ip: std::net::IpAddr, actor: &str) -> bool {
        let anonymous = actor == ANONYMOUS;
        let (rate, burst) = if anonymous {
            (DENIED_RATE, DENIED_BURST)
        } else {
            (DENIED_RATE * PRINCIPAL_FACTOR, DENIED_BURST * PRINCIPAL_FACTOR)
        };
        let now = std::time::Instant::now();
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let d = &mut *guard;
        let mut key = (crate::tls::source_of(ip), actor.to_string());
        if d.buckets.len() >= DENIED_SOURCES && !d.buckets.contains_key(&key) {
            if d.swept.is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(1)) {
                d.buckets.retain(|_, b| b.counted > 0);
                d.swept = Some(now);
            }
            if d.buckets.len() >= DENIED_SOURCES {
                key.0 = std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
            }
        }
        let b = d.buckets.entry(key).or_insert(Bucket { tokens: burst, last: now, counted: 0 });
        refill(&mut b.tokens, &mut b.last, now, rate, burst);
        let mut one = b.tokens >= 1.0;
        if one && anonymous {
            let (tokens, last) = d.anonymous.get_or_insert((DENIED_ANON_BURST, now));
            refill(tokens, last, now, DENIED_ANON_RATE, DENIED_ANON_BURST);
            one = *tokens >= 1.0;
            if one {
                *tokens -= 1.0;
            }
        }
        if one {
            b.tokens -= 1.0;
            true
        } else {
            b.counted += 1;
            self.aggregated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            false
        }
    }

    /// Takes the counts to record: (source, actor, how many).
    fn take(&self) -> Vec<(std::net::IpAddr, String, u64)> {
        let mut m = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let out = m
            .buckets
            .iter()
            .filter(|(_, b)| b.counted > 0)
            .map(|((ip, actor), b)| (*ip, actor.clone(), b.counted))
            .collect();
        for b in m.buckets.values_mut() {
            b.counted = 0;
        }
        out
    }

    /// Puts counts back that could not be recorded (the next flush tries again).
    fn restore(&self, counts: &[(std::net::IpAddr, String, u64)]) {
        let mut m = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (ip, actor, n) in counts {
            let now = std::time::Instant::now();
            m.buckets
                .entry((*ip, actor.clone()))
                .or_insert(Bucket { tokens: 0.0, last: now, counted: 0 })
                .counted += n;
        }
    }
}

/// Records the denied requests counted since the last flush: one audit record per source and
/// actor, action `http.denied-aggregate`, status 429, its key saying how many and from where.
pub async fn flush_denied(st: &AppState) {
    let counts = st.denied.take();
    if counts.is_empty() {
        return;
    }
    for (i, (ip, actor, n)) in counts.iter().enumerate() {
        let from = match ip {
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => "sources past the tracking limit".to_string(),
            std::net::IpAddr::V6(v6) => format!("{v6}/64"),
            v4 => v4.to_string(),
        };
        let what = format!("{n} denied requests from {from}, over the rate of denials recorded one by one");
        let target = crate::auth::Target {
            action: "http.denied-aggregate".into(),
            ns: String::new(),
            key: Some(what),
        };
        if let Err(e) = st.record(actor, vec![target], false, 429).await {
            tracing::warn!(error = %e.message, "could not record denied-request aggregates; retrying later");
            st.denied.restore(&counts[i..]);
            return;
        }
    }
}

/// Requests by two labels and a status code, and a latency histogram per label pair: REST by
/// route template (`/v1/kv/{ns}/{*key}`, so the label set stays bounded) and method, gRPC by
/// the call's audit action (`kv.put`) and transport.
pub struct RequestMetrics {
    /// `edgefabric_<family>_requests_total`, `edgefabric_<family>_request_duration_seconds`.
    family: &'static str,
    labels: [&'static str; 2],
    what: &'static str,
    /// First label → second label → its counts and latency. Nested so that a request looks
    /// its series up by `&str` under one lock, allocating only the first time it is seen.
    series: std::sync::Mutex<std::collections::BTreeMap<String, std::collections::BTreeMap<String, Series>>>,
}

#[derive(Default)]
struct Series {
    by_status: std::collections::BTreeMap<u16, u64>,
    latency: edgefabric_store::metrics::Histogram,
}

impl RequestMetrics {
    pub fn new(family: &'static str, labels: [&'static str; 2], what: &'static str) -> Self {
        RequestMetrics { family, labels, what, series: Default::default() }
    }

    pub fn observe(&self, a: &str, b: &str, status: u16, took: std::time::Duration) {
        let Ok(mut m) = self.series.lock() else { return };
        let by_b = match m.get_mut(a) {
            Some(x) => x,
            None => m.entry(a.to_string()).or_default(),
        };
        let s = match by_b.get_mut(b) {
            Some(x) => x,
            None => by_b.entry(b.to_string()).or_default(),
        };
        *s.by_status.entry(status).or_default() += 1;
        s.latency.observe(took);
    }

    /// Both families in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let (f, [la, lb], what) = (self.family, self.labels, self.what);
        let Ok(m) = self.series.lock() else { return };
        let _ = writeln!(out, "# HELP edgefabric_{f}_requests_total {what} by {la}, {lb} and status code.");
        let _ = writeln!(out, "# TYPE edgefabric_{f}_requests_total counter");
        for (a, by_b) in m.iter() {
            for (b, s) in by_b {
                for (code, n) in &s.by_status {
                    let _ = writeln!(
                        out,
                        "edgefabric_{f}_requests_total{{{la}=\"{a}\",{lb}=\"{b}\",code=\"{code}\"}} {n}"
                    );
                }
            }
        }
        let _ =
            writeln!(out, "# HELP edgefabric_{f}_request_duration_seconds Time to answer one of the {what}.");
        let _ = writeln!(out, "# TYPE edgefabric_{f}_request_duration_seconds histogram");
        let name = format!("edgefabric_{f}_request_duration_seconds");
        for (a, by_b) in m.iter() {
            for (b, s) in by_b {
                s.latency.render(&name, &format!("{la}=\"{a}\",{lb}=\"{b}\""), out);
            }
        }
    }
}

/// Who made a request: the token's subject and roles.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: String,
    pub roles: Vec<String>,
    /// The client key the token is bound to (its requests must be signed).
    pub cnf: Option<String>,
}

/// Whether the ledger takes `s` as an audit field as it is.
fn audit_text_ok(s: &str) -> bool {
    s.len() <= edgefabric_ledger::entry::MAX_FIELD_BYTES && !s.chars().any(char::is_control)
}

/// `s` as an audit field: as it is if the ledger takes it, else escaped and cut to fit (names
/// from a refused request can be anything).
fn audit_text(s: &str) -> String {
    if audit_text_ok(s) {
        return s.to_string();
    }
    let mut out = String::new();
    for c in s.escape_debug() {
        if out.len() + c.len_utf8() > edgefabric_ledger::entry::MAX_FIELD_BYTES - 3 {
            out.push_str("...");
            break;
        }
        out.push(c);
    }
    out
}

/// The actor recorded for a request without a valid token.
pub const ANONYMOUS: &str = "anonymous";

impl AppState {
    pub fn new(node: Arc<Node>, admin_token: String) -> Self {
        let token_key = crate::auth::signing_key(&admin_token);
        let audit_secret = crate::auth::audit_hash_secret(&admin_token);
        AppState {
            node,
            admin_token,
            token_key,
            audit_secret,
            nonces: Default::default(),
            http_metrics: RequestMetrics::new("http", ["route", "method"], "REST requests"),
            grpc_metrics: RequestMetrics::new("grpc", ["action", "service"], "gRPC calls"),
            ts_samples_written: Default::default(),
            tls: false,
            denied: Default::default(),
        }
    }

    /// The `host:port` names this node answers signed requests as: its REST address from the
    /// configuration, and `localhost:PORT` when that address is loopback.
    pub fn http_names(&self) -> Vec<String> {
        let opts = self.node.options();
        let Some(me) = opts.members.iter().find(|m| m.id == opts.id) else { return vec![] };
        let mut names = vec![me.http.clone()];
        if let Ok(a) = me.http.parse::<std::net::SocketAddr>() {
            if a.ip().is_loopback() {
                names.push(format!("localhost:{}", a.port()));
            }
        }
        names
    }

    /// Whether a signed request addressed to `host` is for this node.
    pub fn answers_as(&self, host: &str) -> bool {
        self.http_names().iter().any(|n| n.eq_ignore_ascii_case(host))
    }

    pub fn check_token(&self, presented: &str) -> bool {
        edgefabric_crypto::constant_time_eq(presented.as_bytes(), self.admin_token.as_bytes())
    }

    /// The roles a bearer token carries: the admin token is `admin`; an access token, its roles
    /// (if signed by this cluster and not expired).
    pub fn principal(&self, presented: &str) -> Result<Principal, crate::auth::AuthError> {
        if self.check_token(presented) {
            return Ok(Principal { subject: "admin".into(), roles: vec!["admin".into()], cnf: None });
        }
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = crate::auth::verify(&self.token_key.public_key(), presented, now)?;
        if self.node.token_revoked(&claims.jti) {
            return Err(crate::auth::AuthError::Revoked);
        }
        Ok(Principal { subject: claims.sub, roles: claims.roles, cnf: claims.cnf })
    }

    /// Whether a denial of `actor` from `source` is past its budget and so only counted into
    /// an aggregate record (`DeniedLimiter`); the caller then records nothing of its own. Every
    /// place that records a refusal (REST guard, gRPC, the ledger's audit reads) asks here.
    pub fn denial_counted(&self, source: Option<std::net::IpAddr>, actor: &str) -> bool {
        source.is_some_and(|ip| !self.denied.record_one(ip, actor))
    }

    /// Records one request's accesses in the audit trail, durably, before its answer goes out
    /// (see `edgefabric_store::audit`). Key names of confidential and site-local namespaces are
    /// replaced by their keyed hash: the ledger is replicated to every site.
    pub async fn record(
        &self,
        actor: &str,
        targets: Vec<crate::auth::Target>,
        allowed: bool,
        status: u16,
    ) -> Result<(), crate::error::ApiError> {
        let out = self.accesses(actor, targets, allowed, status).await;
        self.node.audit(out).await.map_err(crate::error::ApiError::from)
    }

    /// Records a KV write as received, without waiting for the disk, then runs its handler
    /// `call`. The store makes the record durable before the write can take effect
    /// (`Node::with_received`); the outcome record that follows (`record`) waits for its sync,
    /// which covers this one too.
    pub async fn received_then<F: std::future::Future>(
        &self,
        actor: &str,
        targets: Vec<crate::auth::Target>,
        call: F,
    ) -> Result<F::Output, crate::error::ApiError> {
        let out = self.accesses(actor, targets, true, crate::auth::RECEIVED).await;
        let written = self.node.audit_written(out).map_err(crate::error::ApiError::from)?;
        Ok(self.node.with_received(written, call).await)
    }

    /// The audit records of one request's accesses.
    async fn accesses(
        &self,
        actor: &str,
        targets: Vec<crate::auth::Target>,
        allowed: bool,
        status: u16,
    ) -> Vec<edgefabric_store::audit::Access> {
        use edgefabric_store::types::DataClass;
        let mut out = Vec::with_capacity(targets.len());
        let mut classes: std::collections::HashMap<String, bool> = Default::default();
        for t in targets {
            let hidden = match (&t.key, classes.get(&t.ns)) {
                (None, _) => false,
                (Some(_), Some(h)) => *h,
                (Some(_), None) => {
                    let h = match self.node.namespace(&t.ns, edgefabric_store::node::Consistency::Stale).await
                    {
                        Ok(cfg) => !matches!(cfg.class, DataClass::Public),
                        Err(_) => false,
                    };
                    classes.insert(t.ns.clone(), h);
                    h
                }
            };
            // A key the ledger cannot hold as text (too long, control characters) is recorded by
            // its keyed hash too.
            let (key, key_hash) = match t.key {
                Some(k) if hidden || !audit_text_ok(&k) => {
                    (None, Some(crate::auth::audit_key_hash(&self.audit_secret, &t.ns, &k)))
                }
                k => (k, None),
            };
            out.push(edgefabric_store::audit::Access {
                actor: audit_text(actor),
                ns: audit_text(&t.ns),
                key,
                key_hash,
                action: t.action,
                allowed,
                status,
            });
        }
        out
    }
}

/// How long a stopping node waits for the requests in flight.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(15);

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The TLS configs of the REST and gRPC listeners: both serve the node's certificate (reloaded
/// when its files change); the gRPC port also asks callers for a client certificate, which only
/// a member's node-key certificate satisfies (apps and tools present none).
type ListenerTls = (Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>);

fn listener_tls(cfg: &NodeConfig, node: &Arc<Node>) -> Result<Option<ListenerTls>> {
    let Some((cert, key, _)) = cfg.tls.files() else {
        return Ok(None);
    };
    use edgefabric_crypto::tls;
    let served = Arc::new(tls::ReloadingCert::new(cert, key).context("tls.cert_file / tls.key_file")?);
    let weak = Arc::downgrade(node);
    let members: tls::MemberCheck = Arc::new(move |k| weak.upgrade().is_some_and(|n| n.is_member_key(k)));
    // REST offers HTTP/1.1 only: hyper's HTTP/2 server caps a request's headers at 16 KiB (431
    // above it) and axum::serve does not let that be raised, while PromQL clients send long
    // queries in GET URLs (Prometheus takes 1 MiB of headers). Plaintext REST was HTTP/1.1 too.
    let rest = tls::server_config(served.clone(), None, &[b"http/1.1"])?;
    let grpc =
        tls::server_config(served, Some(Arc::new(tls::NodeKeyClientVerifier::new(members))), &[b"h2"])?;
    Ok(Some((Arc::new(rest), Arc::new(grpc))))
}

/// Refuses what would put plaintext on a network: `--dev` beyond loopback. Outside `--dev`,
/// plaintext needs `[tls] enabled = false` and is logged as a warning.
fn check_transport(cfg: &NodeConfig) -> Result<()> {
    if cfg.tls.enabled {
        return Ok(());
    }
    if cfg.dev {
        for (flag, addr) in [("--http", cfg.http), ("--grpc", cfg.grpc)] {
            if !addr.ip().is_loopback() {
                anyhow::bail!(
                    "{flag} {addr}: `serve --dev` serves plaintext, so only on loopback (127.0.0.1 or ::1); \
                     for a node others reach, use `cluster init` (TLS with its own CA) or a config with [tls]"
                );
            }
        }
    } else {
        tracing::warn!(
            "TLS is OFF ([tls] enabled = false): values, tokens and node-to-node traffic cross the network in clear"
        );
    }
    Ok(())
}

pub async fn run(cfg: NodeConfig) -> Result<()> {
    check_transport(&cfg)?;
    let admin_token = read_token(&cfg.admin_token_file)?;
    let identity = Arc::new(Identity::read(&cfg.key_file).context("node key")?);
    // Bind first, so a port in use is reported before anything starts.
    let grpc_listener =
        TcpListener::bind(cfg.grpc).await.with_context(|| format!("binding gRPC {}", cfg.grpc))?;
    let http_listener =
        TcpListener::bind(cfg.http).await.with_context(|| format!("binding HTTP {}", cfg.http))?;

    crate::backup::remove_leftovers(&cfg.data_dir);
    let node = Node::start(cfg.node_options(identity.clone())?).await.context("starting the node")?;
    if !cfg.audit.enabled {
        tracing::warn!("auditing is OFF ([audit] enabled = false): accesses leave no record in the ledger");
    }
    let tls = listener_tls(&cfg, &node)?;
    let mut state = AppState::new(node.clone(), admin_token);
    state.tls = tls.is_some();
    let state = Arc::new(state);

    // REST stops first, gRPC (which carries node-to-node traffic too) after it: see below.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (grpc_stop_tx, grpc_stop_rx) = watch::channel(false);
    let wait_stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(grpc::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("gRPC reflection")?;
    let grpc_router = tonic::transport::Server::builder()
        .add_service(node.internal_service())
        .add_service(grpc::service(state.clone()))
        .add_service(grpc::cluster_service(state.clone()))
        .add_service(grpc::ledger_service(state.clone()))
        .add_service(crate::audit::service(state.clone()))
        .add_service(reflection);
    let http_router = crate::http::router(state.clone());
    type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;
    let (grpc_server, http_server, scheme): (Serving, Serving, &str) = match &tls {
        Some((rest_tls, grpc_tls)) => {
            let grpc = grpc_router.serve_with_incoming_shutdown(
                crate::tls::incoming(grpc_listener, grpc_tls.clone()),
                wait_stop(grpc_stop_rx),
            );
            let http = axum::serve(
                crate::tls::Listener::new(http_listener, rest_tls.clone())?,
                http_router.into_make_service_with_connect_info::<crate::tls::PeerAddr>(),
            )
            .with_graceful_shutdown(wait_stop(stop_rx.clone()));
            (
                Box::pin(async move { grpc.await.map_err(std::io::Error::other) }),
                Box::pin(std::future::IntoFuture::into_future(http)),
                "https",
            )
        }
        None => {
            // No Nagle: raft and client replies are small, and Nagle with delayed ACKs adds ~40 ms.
            let grpc = grpc_router.serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                wait_stop(grpc_stop_rx),
            );
            let http = axum::serve(
                crate::tls::PlainListener(http_listener),
                http_router.into_make_service_with_connect_info::<crate::tls::PeerAddr>(),
            )
            .with_graceful_shutdown(wait_stop(stop_rx.clone()));
            (
                Box::pin(async move { grpc.await.map_err(std::io::Error::other) }),
                Box::pin(std::future::IntoFuture::into_future(http)),
                "http",
            )
        }
    };

    println!(
        "EdgeFabric node {} (site {}) serving\n  REST  {scheme}://{}\n  gRPC  {scheme}://{}\n  data  {}\n  admin token in {}\n  node key {}",
        cfg.id,
        cfg.site,
        cfg.http,
        cfg.grpc,
        cfg.data_dir.display(),
        cfg.admin_token_file.display(),
        identity.public_key().to_base64(),
    );

    // Denied-request aggregates, recorded every DENIED_FLUSH (and once more at shutdown).
    let flusher = {
        let (st, mut stopped) = (state.clone(), Box::pin(wait_stop(stop_rx.clone())));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(DENIED_FLUSH);
            loop {
                tokio::select! {
                    _ = tick.tick() => flush_denied(&st).await,
                    _ = &mut stopped => break,
                }
            }
            flush_denied(&st).await;
        })
    };
    let mut grpc_task = tokio::spawn(grpc_server);
    let mut http_task = tokio::spawn(http_server);
    let mut failed = None;
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        r = &mut grpc_task => failed = Some(format!("gRPC server stopped: {r:?}")),
        r = &mut http_task => failed = Some(format!("HTTP server stopped: {r:?}")),
    }
    // Stop accepting, let the requests in flight finish, then stop the groups; bounded, so a
    // client that keeps a request open cannot hold the node up for ever. The groups run until
    // then, so a write being committed gets its answer. REST drains first while the gRPC port
    // still takes node-to-node traffic: a read waiting to apply its read index, or a write
    // waiting for its leader, needs this node to keep hearing its leaders. Elections are off
    // from the start: a node on its way out must not depose anyone.
    node.stop_campaigning();
    let _ = stop_tx.send(true);
    if failed.is_none() {
        let drained = tokio::time::timeout(SHUTDOWN_DRAIN, async {
            let _ = (&mut http_task).await;
            let _ = grpc_stop_tx.send(true);
            let _ = (&mut grpc_task).await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(after = ?SHUTDOWN_DRAIN, "requests still in flight at shutdown; stopping anyway");
        }
    }
    let _ = grpc_stop_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), flusher).await;
    node.shutdown().await;
    if let Some(f) = failed {
        anyhow::bail!(f);
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_are_budgeted_per_source_and_actor() {
        let l = DeniedLimiter::default();
        let (a, b): (std::net::IpAddr, std::net::IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        // Anonymous: the burst one by one, then counted (refill over the loop is far below 1).
        let one_by_one = (0..40).filter(|_| l.record_one(a, ANONYMOUS)).count();
        assert!((20..22).contains(&one_by_one), "{one_by_one}");
        // Another source and a verified principal from the same source have budgets of their own.
        assert!(l.record_one(b, ANONYMOUS));
        let app = (0..300).filter(|_| l.record_one(a, "app-9")).count();
        assert!((200..202).contains(&app), "{app}");
        let mut counts = l.take();
        counts.sort();
        assert_eq!(
            counts,
            vec![(a, "anonymous".to_string(), 40 - one_by_one as u64), (a, "app-9".into(), 300 - app as u64)]
        );
        assert_eq!(l.aggregated.load(std::sync::atomic::Ordering::Relaxed), (340 - one_by_one - app) as u64);
        // Taken once: nothing is reported twice; what could not be recorded comes back.
        assert!(l.take().is_empty());
        l.restore(&counts);
        assert_eq!(l.take().len(), 2);
    }

    /// Found by a hostile review of issue 18: every new address got a burst of its own, and an
    /// IPv6 host has a /64 of them.
    #[test]
    fn many_addresses_buy_no_more_than_one_budget() {
        let l = DeniedLimiter::default();
        // One /64: one source.
        let in_64 = |i: u16| std::net::IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, i, 0, 0, 1));
        let one_by_one = (0..200).filter(|&i| l.record_one(in_64(i), ANONYMOUS)).count();
        assert!((20..22).contains(&one_by_one), "{one_by_one}");
        // Many /64s (and IPv4 hosts): together no more than the node-wide anonymous budget.
        let l = DeniedLimiter::default();
        let spread = |i: u16| std::net::IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, i, 0, 0, 0, 0, 1));
        let one_by_one = (0..2000).filter(|&i| l.record_one(spread(i), ANONYMOUS)).count();
        assert!((200..205).contains(&one_by_one), "{one_by_one}");
        // A verified principal's denials are not held to the anonymous budget.
        assert!(l.record_one(spread(1), "app-9"));
        let counted: u64 = l.take().iter().map(|c| c.2).sum();
        assert_eq!(counted, 2000 - one_by_one as u64);
    }

    #[test]
    fn a_full_table_counts_new_sources_under_one_overflow_source() {
        let l = DeniedLimiter::default();
        let v4 = |i: u32| std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        // Every source with something to report, so nothing can be forgotten.
        for i in 0..DENIED_SOURCES as u32 {
            for _ in 0..25 {
                l.record_one(v4(i), ANONYMOUS);
            }
        }
        let new_counted =
            (0..100).filter(|i| !l.record_one(v4(DENIED_SOURCES as u32 + i), ANONYMOUS)).count();
        let counts = l.take();
        assert!(counts.len() <= DENIED_SOURCES + 1, "{}", counts.len());
        let overflow = counts.iter().find(|c| c.0.is_unspecified()).expect("an overflow source");
        assert_eq!(overflow.2, new_counted as u64);
        assert!(counts.iter().all(|c| c.0 < v4(DENIED_SOURCES as u32) || c.0.is_unspecified()));
        let total: u64 = counts.iter().map(|c| c.2).sum();
        assert_eq!(total, l.aggregated.load(std::sync::atomic::Ordering::Relaxed));
    }
}
