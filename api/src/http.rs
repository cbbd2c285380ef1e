//! REST routes (docs/api.md). Handlers parse and check input, call the node, shape the answer;
//! every failure, extractor rejections included, becomes the JSON error shape.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use edgefabric_store::node::Consistency;
use edgefabric_store::types::{Command, DataClass, NamespaceConfig, Op, Response as SmResponse};
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::ledger;
use crate::server::AppState;

type ApiResult<T> = Result<T, ApiError>;

pub fn router(state: Arc<AppState>) -> Router {
    use crate::guard::{guarded, rule, ApiRoutes, Need::*};
    let g = || guarded(&state);
    let mut api = ApiRoutes(crate::openapi::Routes::default());
    if state.node.options().test_faults {
        api = api.route(
            "/v1/test/faults",
            g().get(get_faults, rule("test.get", Admin)).put(put_faults, rule("test.put", Admin)),
        );
    }
    // Each handler with its rule: what it needs, and its action in the audit trail.
    let api = api
        .route("/v1/namespaces", g().get(list_namespaces, rule("ns.list", Token)))
        .route(
            "/v1/namespaces/{ns}",
            g().put(put_namespace, rule("ns.put", Manage)).get(get_namespace, rule("ns.get", Read)),
        )
        .route("/v1/namespaces/{ns}/rotate-key", g().post(rotate_key, rule("ns.rotate-key", Manage)))
        .route("/v1/namespaces/{ns}/rotation", g().get(rotation, rule("ns.rotation", Manage)))
        .route("/v1/namespaces/{ns}/retire-key", g().post(retire_key, rule("ns.retire-key", Manage)))
        .route(
            "/v1/namespaces/{ns}/retention",
            g().put(crate::ts::put_retention, rule("ns.retention", Manage))
                .get(crate::ts::get_retention, rule("ns.retention", Manage)),
        )
        .route("/v1/kv/{ns}", g().get(scan, rule("kv.scan", Read)))
        .route(
            "/v1/kv/{ns}/{*key}",
            g().put(kv_put, rule("kv.put", Write))
                .get(kv_get, rule("kv.get", Read))
                .delete(kv_delete, rule("kv.delete", Write)),
        )
        .route("/v1/batch", g().post(batch, rule("kv.batch", Batch)))
        .route("/v1/cluster/status", g().get(cluster_status, rule("cluster.status", Token)))
        .route("/v1/cluster/route", g().get(cluster_route, rule("cluster.route", Token)))
        .route("/v1/cluster/nodes", g().post(add_node, rule("cluster.add-node", Admin)))
        .route("/v1/cluster/nodes/{id}", g().delete(remove_node, rule("cluster.remove-node", Admin)))
        .route("/v1/audit", g().get(crate::audit::query, rule("audit.query", Audit)))
        .route("/v1/ts/write", g().post(crate::ts::write, rule("ts.write", TsWrite)))
        .route("/v1/ts/queue", g().get(crate::ts::queue, rule("ts.get", Admin)))
        .route("/v1/ts/flush", g().post(crate::ts::flush, rule("ts.post", Admin)))
        .route("/v1/ts/maintain", g().post(crate::ts::maintain, rule("ts.post", Admin)))
        .route("/v1/backup", g().post(crate::backup::take, rule("backup.post", Admin)));
    let api = api
        .route("/api/v1/write", g().post(crate::ts::remote_write, rule("ts.remote-write", TsWrite)))
        .route("/api/v1/query", g().get_and_post(crate::ts::query, rule("ts.query", TsRead)))
        .route(
            "/api/v1/query_range",
            g().get_and_post(crate::ts::query_range, rule("ts.query_range", TsRead)),
        )
        .route("/api/v1/series", g().get_and_post(crate::ts::series, rule("ts.series", TsRead)))
        .route("/api/v1/labels", g().get_and_post(crate::ts::labels, rule("ts.labels", TsRead)))
        .route(
            "/api/v1/label/{name}/values",
            g().get(crate::ts::label_values, rule("ts.label-values", TsRead)),
        )
        .route("/api/v1/metadata", g().get(crate::ts::metadata, rule("ts.metadata", TsRead)))
        .route("/api/v1/status/buildinfo", g().get(crate::ts::buildinfo, rule("ts.status", TsRead)))
        .route(
            "/api/v1/query_exemplars",
            g().get_and_post(crate::ts::query_exemplars, rule("ts.query_exemplars", TsRead)),
        )
        .route("/api/v1/rules", g().get(crate::ts::rules, rule("ts.rules", TsRead)))
        .route("/api/v1/alerts", g().get(crate::ts::alerts, rule("ts.alerts", TsRead)))
        .route("/v1/tokens", g().post(issue_token, rule("token.issue", Admin)))
        .route("/v1/tokens/revoke", g().post(revoke_token, rule("token.revoke", Admin)))
        .route("/v1/publishers", g().post(ledger::add_publisher, rule("publisher.add", Admin)))
        .route("/v1/images", g().post(ledger::register_image, rule("image.register", Publish)))
        .route("/v1/images/batch", g().post(ledger::register_images, rule("image.register-batch", Publish)))
        .route("/v1/images/{digest}/revoke", g().post(ledger::revoke_image, rule("image.revoke", Revoke)));
    let (api, mut registered) = api.0.into_parts();
    // Ledger reads need no token: what they return is verified by the client against the
    // node keys it pins (see ledger.rs).
    let (ledger_reads, more) = crate::openapi::Routes::default()
        .route("/v1/images/{digest}", get(ledger::get_image))
        .route("/v1/publishers/{id}", get(ledger::get_publisher))
        .route("/v1/ledger/checkpoint", get(ledger::checkpoint))
        .route("/v1/ledger/proof/consistency", get(ledger::consistency))
        .route("/v1/ledger/proof/inclusion", get(ledger::inclusion))
        .route("/v1/ledger/entries/{index}", get(ledger::get_entry))
        .route("/v1/ledger/blocks/{height}", get(ledger::get_block))
        .route("/v1/ledger/status", get(ledger::status))
        .into_parts();
    registered.extend(more);
    let (public, more) = crate::openapi::Routes::default()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/ui", get(ui))
        .route("/ui/app.js", get(ui_script))
        .route("/ui/app.css", get(ui_style))
        .into_parts();
    registered.extend(more);
    // Built once: the document is a function of the routes this node registered.
    let doc = Arc::new(crate::openapi::document(&registered).to_string());
    public
        .layer(axum::Extension(doc))
        .merge(api)
        .merge(ledger_reads)
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), track))
        // Bodies are read with our own limit so that an oversized one gets the JSON error.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Counts every REST request by its route template and times it (`/metrics`). Requests that
/// match no route count as `route="unmatched"`, so a scanner cannot grow the label set.
async fn track(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().as_str().to_string();
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    st.http_metrics.observe(&route, &method, response.status().as_u16(), started.elapsed());
    response
}

/// The auditor's page's policy: its script and style come only from this node, as files of
/// their own, and no inline script, style or event handler runs — so markup that ever slipped
/// into the page could not act. It loads nothing from elsewhere and cannot be framed.
const UI_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
    img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn ui_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, UI_CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// `GET /ui`: the auditor's page (no token; it asks for one only for the audit log). No
/// external resources: it verifies checkpoints, proofs and signatures in the browser.
async fn ui() -> Response {
    ui_file("text/html; charset=utf-8", include_str!("ui/index.html"))
}

/// `GET /ui/app.js`: the page's script.
async fn ui_script() -> Response {
    ui_file("text/javascript; charset=utf-8", include_str!("ui/app.js"))
}

/// `GET /ui/app.css`: the page's style.
async fn ui_style() -> Response {
    ui_file("text/css; charset=utf-8", include_str!("ui/app.css"))
}

/// `GET /openapi.json`: the OpenAPI 3 document of the routes this node serves (no token).
async fn openapi(axum::Extension(doc): axum::Extension<Arc<String>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], doc.as_str().to_string()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    subject: String,
    roles: Vec<String>,
    /// Seconds until it expires (default one day).
    #[serde(default)]
    ttl_secs: Option<u64>,
    /// Bind the token to this client key (base64 ed25519): requests with it must be signed.
    #[serde(default)]
    client_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeTokenBody {
    id: String,
}

/// `POST /v1/tokens/revoke` `{"id": "..."}` (admin): the token stops working on every node.
async fn revoke_token(
    State(st): State<Arc<AppState>>,
    JsonBody(b): JsonBody<RevokeTokenBody>,
) -> ApiResult<Json<serde_json::Value>> {
    // Kept for at most the longest lifetime a token can have.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    st.node.propose(Command::RevokeToken { id: b.id.clone(), expires: now + 366 * 86_400 }).await?;
    Ok(Json(json!({"revoked": b.id})))
}

/// `POST /v1/tokens` (admin): an access token for `subject` with `roles`.
async fn issue_token(
    State(st): State<Arc<AppState>>,
    JsonBody(b): JsonBody<TokenBody>,
) -> ApiResult<Response> {
    if b.subject.is_empty() || b.subject.len() > 256 || b.subject.chars().any(char::is_control) {
        return Err(ApiError::bad_request("subject: 1 to 256 characters, no control characters"));
    }
    if b.roles.is_empty() {
        return Err(ApiError::bad_request("roles: give at least one"));
    }
    let ttl = b.ttl_secs.unwrap_or(86_400);
    if ttl == 0 || ttl > 366 * 86_400 {
        return Err(ApiError::bad_request("ttl_secs: between 1 and 366 days"));
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let jti = edgefabric_crypto::random_token()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    if let Some(k) = &b.client_key {
        edgefabric_crypto::PublicKey::from_base64(k)
            .map_err(|e| ApiError::bad_request(format!("client_key: {e}")))?;
    }
    let claims = crate::auth::Claims {
        sub: b.subject.clone(),
        roles: b.roles.clone(),
        iat: now,
        exp: now + ttl,
        jti: jti.clone(),
        cnf: b.client_key.clone(),
    };
    let token = crate::auth::issue(&st.token_key, &claims)
        .map_err(|e| ApiError::bad_request(format!("roles: {e}")))?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"token": token, "subject": b.subject, "roles": b.roles, "expires": now + ttl, "id": jti}),
        ),
    )
        .into_response())
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let ready = st.node.is_ready();
    let groups = st.node.group_statuses();
    let without_leader: Vec<u64> = groups.iter().filter(|g| g.leader.is_none()).map(|g| g.group).collect();
    let body = json!({"ready": ready, "groups": groups.len(), "groups_without_leader": without_leader});
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let groups = st.node.group_statuses();
    let me = st.node.id();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, v: u64| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"));
    };
    gauge("edgefabric_raft_groups", "Raft groups hosted by this node.", groups.len() as u64);
    gauge(
        "edgefabric_raft_groups_led",
        "Raft groups this node leads.",
        groups.iter().filter(|g| g.leader == Some(me)).count() as u64,
    );
    gauge(
        "edgefabric_raft_groups_without_leader",
        "Hosted raft groups with no known leader.",
        groups.iter().filter(|g| g.leader.is_none()).count() as u64,
    );
    let mut per_group = String::new();
    per_group.push_str("# HELP edgefabric_raft_last_applied_index Last applied raft log index per group.\n");
    per_group.push_str("# TYPE edgefabric_raft_last_applied_index gauge\n");
    for g in &groups {
        per_group.push_str(&format!(
            "edgefabric_raft_last_applied_index{{group=\"{}\"}} {}\n",
            g.group,
            g.last_applied.unwrap_or(0)
        ));
    }
    per_group.push_str(
        "# HELP edgefabric_raft_term Current raft term per group.\n# TYPE edgefabric_raft_term gauge\n",
    );
    for g in &groups {
        per_group.push_str(&format!("edgefabric_raft_term{{group=\"{}\"}} {}\n", g.group, g.term));
    }
    out.push_str(&per_group);
    let head = st.node.ledger_local_head();
    let mut gauge = |name: &str, help: &str, v: u64| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"));
    };
    gauge(
        "edgefabric_ledger_height",
        "Height of this node's ledger head block.",
        head.as_ref().map_or(0, |h| h.height),
    );
    gauge(
        "edgefabric_ledger_entries",
        "Entries in this node's ledger.",
        head.as_ref().map_or(0, |h| h.log_size),
    );
    gauge(
        "edgefabric_ledger_verified",
        "1 if this node's stored ledger passed its start-up verification.",
        u64::from(st.node.ledger_health() == edgefabric_store::ledger::Health::Verified),
    );
    let tsq = st.node.ts_queue_status();
    gauge(
        "edgefabric_ts_queued_samples",
        "Time-series samples in this node's store-and-forward queue, waiting for their shard.",
        tsq.samples,
    );
    gauge(
        "edgefabric_ts_queued_parts",
        "Parts (one per shard and request) in the store-and-forward queue.",
        tsq.parts,
    );
    gauge(
        "edgefabric_ts_queue_oldest_seconds",
        "Age of the oldest part in the store-and-forward queue (0 when empty).",
        tsq.oldest_ms / 1000,
    );
    gauge(
        "edgefabric_ts_forwarded_samples",
        "Samples forwarded from the store-and-forward queue since this node started.",
        tsq.forwarded,
    );
    let (series, head) = st.node.ts_local_stats();
    gauge("edgefabric_ts_series", "Time series in the shard replicas this node hosts.", series);
    gauge(
        "edgefabric_ts_head_samples",
        "Samples in memory not yet cut into chunks, over this node's replicas (the head log holds them).",
        head,
    );
    gauge(
        "edgefabric_raft_groups_quiet",
        "Raft groups hosted here that are quiet: idle, not ticking or heartbeating until they wake.",
        st.node.quiet_groups() as u64,
    );
    let (queued, shipped) = st.node.audit_backlog();
    gauge(
        "edgefabric_audit_records_queued",
        "Audit records this node has recorded durably (this data directory's sequence).",
        queued,
    );
    gauge(
        "edgefabric_audit_records_pending",
        "Audit records recorded here and not yet known to be in the ledger.",
        queued.saturating_sub(shipped),
    );
    out.push_str(
        "# HELP edgefabric_raft_leader_changes_total Times this replica saw its group get a new leader.\n\
         # TYPE edgefabric_raft_leader_changes_total counter\n",
    );
    let logs = st.node.raft_log_stats();
    for (g, changes, _) in &logs {
        out.push_str(&format!("edgefabric_raft_leader_changes_total{{group=\"{g}\"}} {changes}\n"));
    }
    out.push_str(
        "# HELP edgefabric_raft_log_entries Raft log entries kept per group (not yet purged behind a snapshot).\n\
         # TYPE edgefabric_raft_log_entries gauge\n",
    );
    for (g, _, entries) in &logs {
        out.push_str(&format!("edgefabric_raft_log_entries{{group=\"{g}\"}} {entries}\n"));
    }
    out.push_str(
        "# HELP edgefabric_raft_commit_duration_seconds Time from proposing on this node (as leader) to the entry applied.\n\
         # TYPE edgefabric_raft_commit_duration_seconds histogram\n",
    );
    st.node.commit_latency.render("edgefabric_raft_commit_duration_seconds", "", &mut out);
    out.push_str(&format!(
        "# HELP edgefabric_ts_samples_written_total Time-series samples accepted through this node.\n\
         # TYPE edgefabric_ts_samples_written_total counter\nedgefabric_ts_samples_written_total {}\n",
        st.ts_samples_written.load(std::sync::atomic::Ordering::Relaxed)
    ));
    out.push_str(&format!(
        "# HELP edgefabric_http_denied_aggregated_total Denied REST requests past their source's rate, recorded in \
         aggregate audit records (http.denied-aggregate) rather than one by one.\n\
         # TYPE edgefabric_http_denied_aggregated_total counter\nedgefabric_http_denied_aggregated_total {}\n",
        st.denied.aggregated.load(std::sync::atomic::Ordering::Relaxed)
    ));
    let (cut_bytes, cut_samples) = st.node.ts_cut_totals();
    out.push_str(&format!(
        "# HELP edgefabric_ts_chunk_bytes_total Bytes of the chunks cut from in-memory heads on this node's replicas \
         (bytes per sample: divide by edgefabric_ts_chunk_samples_total).\n\
         # TYPE edgefabric_ts_chunk_bytes_total counter\nedgefabric_ts_chunk_bytes_total {cut_bytes}\n\
         # HELP edgefabric_ts_chunk_samples_total Samples in the chunks cut from in-memory heads on this node's replicas.\n\
         # TYPE edgefabric_ts_chunk_samples_total counter\nedgefabric_ts_chunk_samples_total {cut_samples}\n"
    ));
    st.http_metrics.render(&mut out);
    st.grpc_metrics.render(&mut out);
    out.push_str(&format!(
        "# HELP edgefabric_ledger_rejected_blocks_total Ledger blocks this node refused as invalid.\n\
         # TYPE edgefabric_ledger_rejected_blocks_total counter\nedgefabric_ledger_rejected_blocks_total {}\n",
        st.node.ledger_rejected_blocks()
    ));
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], out).into_response()
}

fn path_err(e: PathRejection) -> ApiError {
    ApiError::bad_request(format!("path: {}", e.body_text()))
}

fn query_err(e: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("query: {}", e.body_text()))
}

/// A JSON body, parsed whatever its Content-Type says (curl's `-d` sends a form type), with
/// serde's message (field, line, column) in the 400.
pub(crate) struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        // JSON bodies are small documents; 1 MiB is far above any valid one.
        let bytes = axum::body::to_bytes(req.into_body(), 1 << 20).await.map_err(|_| {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_argument", "body: larger than 1 MiB")
        })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| ApiError::bad_request(format!("body: {e}")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceBody {
    class: DataClass,
    home_site: Option<String>,
    #[serde(default)]
    key_sites: Vec<String>,
    replicas: Option<u32>,
}

async fn put_namespace(
    State(st): State<Arc<AppState>>,
    ns: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody<NamespaceBody>,
) -> ApiResult<Response> {
    let Path(ns) = ns.map_err(path_err)?;
    let cfg = NamespaceConfig {
        name: ns,
        class: body.class,
        home_site: body.home_site,
        key_sites: body.key_sites,
        replicas: body.replicas.unwrap_or(3),
        keys: vec![],
    };
    match st.node.put_namespace(cfg.clone()).await? {
        SmResponse::Namespace { created } => {
            let code = if created { StatusCode::CREATED } else { StatusCode::OK };
            // As stored (with its key versions), not as sent.
            let stored = st.node.namespace(&cfg.name, Consistency::Linearizable).await.unwrap_or(cfg);
            Ok((code, Json(namespace_json(&stored))).into_response())
        }
        SmResponse::Rejected(why) => Err(ApiError::new(StatusCode::CONFLICT, "conflict", why)),
        other => Err(unexpected(other)),
    }
}

/// `GET /v1/test/faults` (admin; only with `[test] faults = true`): the faults in force on this
/// node's outgoing links.
async fn get_faults(State(st): State<Arc<AppState>>) -> Json<edgefabric_store::faults::FaultState> {
    Json(st.node.faults().get())
}

/// `PUT /v1/test/faults` `{"drop_to": [2, 3], "delay_ms": {"4": 300}}` (admin; only with `[test]
/// faults = true`): replaces them (`{}` heals every link).
async fn put_faults(
    State(st): State<Arc<AppState>>,
    JsonBody(body): JsonBody<edgefabric_store::faults::FaultState>,
) -> Json<edgefabric_store::faults::FaultState> {
    tracing::warn!(faults = ?body, "test faults set");
    st.node.faults().set(body);
    Json(st.node.faults().get())
}

/// `POST /v1/namespaces/{ns}/rotate-key`: a confidential namespace's next data key version;
/// new writes use it at once, and this node re-encrypts older values in the background
/// (`GET /v1/namespaces/{ns}/rotation` on the same node shows the progress).
async fn rotate_key(
    State(st): State<Arc<AppState>>,
    ns: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(ns) = ns.map_err(path_err)?;
    edgefabric_store::types::validate_namespace(&ns)?;
    let version = st.node.rotate_key(&ns).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"namespace": ns, "key_version": version, "reencrypting": true})))
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetireBody {
    version: u32,
}

/// `POST /v1/namespaces/{ns}/retire-key` `{"version": N}`: drops a key version once no value
/// uses it (403 while some still do; never the newest).
async fn retire_key(
    State(st): State<Arc<AppState>>,
    ns: Result<Path<String>, PathRejection>,
    JsonBody(b): JsonBody<RetireBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let Path(ns) = ns.map_err(path_err)?;
    edgefabric_store::types::validate_namespace(&ns)?;
    st.node.retire_key(&ns, b.version).await?;
    Ok(Json(json!({"namespace": ns, "retired": b.version})))
}

/// `GET /v1/namespaces/{ns}/rotation`: the progress of the last key rotation this node ran.
async fn rotation(
    State(st): State<Arc<AppState>>,
    ns: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Path(ns) = ns.map_err(path_err)?;
    let r = st
        .node
        .rotation(&ns)
        .ok_or_else(|| ApiError::not_found(format!("no key rotation of {ns:?} was run by this node")))?;
    Ok(Json(serde_json::to_value(r).unwrap_or_default()))
}

fn namespace_json(cfg: &NamespaceConfig) -> serde_json::Value {
    json!({
        "name": cfg.name,
        "class": cfg.class.as_str(),
        "home_site": cfg.home_site,
        "key_sites": cfg.key_sites,
        "replicas": cfg.replicas,
        // The versions only: the keys themselves are wrapped for the key sites' nodes.
        "key_versions": cfg.keys.iter().map(|k| k.version).collect::<Vec<_>>(),
    })
}

fn unexpected(r: SmResponse) -> ApiError {
    match r {
        SmResponse::Conflict { key, expected, current } => {
            edgefabric_store::Error::Conflict { key, expected, current }.into()
        }
        SmResponse::Rejected(m) => ApiError::bad_request(m),
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("unexpected result {other:?}"),
        ),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    consistency: Option<String>,
}

fn consistency(c: Option<&str>) -> ApiResult<Consistency> {
    match c {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("stale") => Ok(Consistency::Stale),
        Some(other) => Err(ApiError::bad_request(format!(
            "consistency: {other:?} is not one of \"linearizable\", \"stale\""
        ))),
    }
}

async fn get_namespace(
    State(st): State<Arc<AppState>>,
    ns: Result<Path<String>, PathRejection>,
    q: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Path(ns) = ns.map_err(path_err)?;
    let Query(q) = q.map_err(query_err)?;
    edgefabric_store::types::validate_namespace(&ns)?;
    let cfg = st.node.namespace(&ns, consistency(q.consistency.as_deref())?).await?;
    Ok(Json(namespace_json(&cfg)))
}

async fn list_namespaces(State(st): State<Arc<AppState>>) -> ApiResult<Json<serde_json::Value>> {
    let list = st.node.namespaces(Consistency::Linearizable).await?;
    Ok(Json(json!({"namespaces": list.iter().map(namespace_json).collect::<Vec<_>>()})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteParams {
    cas: Option<u64>,
}

/// Reads a body up to the node's value limit; larger gets a 413 in the JSON shape.
async fn read_value(st: &AppState, body: Body) -> ApiResult<Bytes> {
    let max = st.node.options().max_value_bytes;
    axum::body::to_bytes(body, max).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_argument",
            format!("value: larger than the limit of {max} bytes"),
        )
    })
}

fn written(r: SmResponse) -> ApiResult<(u64, Vec<bool>)> {
    match r {
        SmResponse::Written { revision, existed } => Ok((revision, existed)),
        other => Err(unexpected(other)),
    }
}

async fn kv_put(
    State(st): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<WriteParams>, QueryRejection>,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let Path((ns, key)) = path.map_err(path_err)?;
    let Query(q) = q.map_err(query_err)?;
    let value = read_value(&st, body).await?;
    let cmd = Command::Batch(vec![Op::Put { ns, key, value: value.to_vec(), cas: q.cas }]);
    let (revision, _) = written(st.node.propose(cmd).await?)?;
    Ok(Json(json!({"revision": revision})))
}

async fn kv_get(
    State(st): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult<Response> {
    let Path((ns, key)) = path.map_err(path_err)?;
    let Query(q) = q.map_err(query_err)?;
    match st.node.get(&ns, &key, consistency(q.consistency.as_deref())?).await? {
        Some(rec) => {
            let mut headers = HeaderMap::new();
            headers.insert("x-revision", HeaderValue::from(rec.revision));
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            Ok((headers, rec.value).into_response())
        }
        None => Err(ApiError::not_found(format!("key {key:?} not found in namespace {ns:?}"))),
    }
}

async fn kv_delete(
    State(st): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<WriteParams>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Path((ns, key)) = path.map_err(path_err)?;
    let Query(q) = q.map_err(query_err)?;
    let cmd = Command::Batch(vec![Op::Delete { ns, key, cas: q.cas }]);
    let (revision, existed) = written(st.node.propose(cmd).await?)?;
    Ok(Json(json!({"revision": revision, "deleted": existed.first().copied().unwrap_or(false)})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanParams {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    after: Option<String>,
    consistency: Option<String>,
}

async fn scan(
    State(st): State<Arc<AppState>>,
    ns: Result<Path<String>, PathRejection>,
    q: Result<Query<ScanParams>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Path(ns) = ns.map_err(path_err)?;
    let Query(q) = q.map_err(query_err)?;
    let limit = q.limit.unwrap_or(100);
    let c = consistency(q.consistency.as_deref())?;
    let (items, more) = st.node.scan(&ns, &q.prefix, q.after.as_deref(), limit, c).await?;
    let next = if more { items.last().map(|i| i.key.clone()) } else { None };
    let items: Vec<_> = items
        .into_iter()
        .map(|i| json!({"key": i.key, "value_base64": STANDARD.encode(&i.value), "revision": i.revision}))
        .collect();
    Ok(Json(json!({"items": items, "next": next})))
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchBody {
    pub(crate) ops: Vec<BatchOp>,
}

#[derive(Clone, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum BatchOp {
    Put { ns: String, key: String, value_base64: String, cas: Option<u64> },
    Delete { ns: String, key: String, cas: Option<u64> },
}

impl BatchOp {
    /// (verb, namespace, key): what the operation is authorized and audited as.
    pub(crate) fn target(&self) -> (&'static str, &str, &str) {
        match self {
            BatchOp::Put { ns, key, .. } => ("put", ns, key),
            BatchOp::Delete { ns, key, .. } => ("delete", ns, key),
        }
    }
}

/// `POST /v1/batch` `{"ops": [{"op": "put", "ns", "key", "value_base64", "cas"?}, {"op":
/// "delete", "ns", "key", "cas"?}]}` → `{"revision": N}`: all at one revision, or none (409).
async fn batch(
    State(st): State<Arc<AppState>>,
    crate::guard::Authorized(body): crate::guard::Authorized<BatchBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let mut ops = Vec::with_capacity(body.ops.len());
    for (i, op) in body.ops.into_iter().enumerate() {
        ops.push(match op {
            BatchOp::Put { ns, key, value_base64, cas } => {
                let value = STANDARD
                    .decode(value_base64.as_bytes())
                    .map_err(|e| ApiError::bad_request(format!("ops[{i}].value_base64: {e}")))?;
                Op::Put { ns, key, value, cas }
            }
            BatchOp::Delete { ns, key, cas } => Op::Delete { ns, key, cas },
        });
    }
    let (revision, _) = written(st.node.propose(Command::Batch(ops)).await?)?;
    Ok(Json(json!({"revision": revision})))
}

/// `GET /v1/cluster/status`: nodes, sites, shards, leaders and replica placement.
async fn cluster_status(State(st): State<Arc<AppState>>) -> ApiResult<Json<crate::cluster::ClusterView>> {
    Ok(Json(crate::cluster::view(&st.node, st.tls).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteParams {
    ns: String,
    key: String,
}

/// `GET /v1/cluster/route?ns=&key=`: which shard holds a key, and its replicas.
async fn cluster_route(
    State(st): State<Arc<AppState>>,
    q: Result<Query<RouteParams>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Query(q) = q.map_err(query_err)?;
    let (shard, replicas, epoch) = crate::cluster::route(&st.node, &q.ns, &q.key)?;
    Ok(Json(json!({"shard": shard, "replicas": replicas, "epoch": epoch})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNodeBody {
    id: u64,
    site: String,
    grpc: String,
    http: String,
    #[serde(default)]
    public_key: String,
}

/// `POST /v1/cluster/nodes` `{"id", "site", "grpc", "http", "public_key"}`: the node joins the cluster map;
/// replicas then move onto it until replica counts are even. Idempotent.
async fn add_node(
    State(st): State<Arc<AppState>>,
    JsonBody(b): JsonBody<AddNodeBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let epoch = crate::cluster::add_node(&st.node, b.id, &b.site, &b.grpc, &b.http, &b.public_key).await?;
    Ok(Json(json!({"epoch": epoch})))
}

/// `DELETE /v1/cluster/nodes/{id}`: start draining the node; `GET /v1/cluster/status` shows
/// it until it is gone (`edgefabric cluster leave` waits for that).
async fn remove_node(
    State(st): State<Arc<AppState>>,
    id: Result<Path<u64>, PathRejection>,
) -> ApiResult<Response> {
    let Path(id) = id.map_err(path_err)?;
    let epoch = crate::cluster::remove_node(&st.node, id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"epoch": epoch, "draining": id}))).into_response())
}

/// For the `rest_inputs` fuzz target only: every JSON body and query string the `/v1` routes of
/// this module parse, and the checks that follow (a namespace config is validated as the store
/// validates it; a batch's base64 values decoded).
#[doc(hidden)]
pub fn fuzz_inputs(data: &[u8]) {
    fn json<T: serde::de::DeserializeOwned>(data: &[u8]) -> Option<T> {
        serde_json::from_slice(data).ok()
    }
    if let Some(b) = json::<NamespaceBody>(data) {
        let cfg = NamespaceConfig {
            name: "fuzz".into(),
            class: b.class,
            home_site: b.home_site,
            key_sites: b.key_sites,
            replicas: b.replicas.unwrap_or(3),
            keys: vec![],
        };
        let _ = edgefabric_store::types::validate_namespace_config(&cfg);
    }
    if let Some(b) = json::<BatchBody>(data) {
        for op in b.ops {
            if let BatchOp::Put { value_base64, .. } = op {
                let _ = STANDARD.decode(value_base64);
            }
        }
    }
    let _ = json::<TokenBody>(data);
    let _ = json::<RevokeTokenBody>(data);
    let _ = json::<RetireBody>(data);
    let _ = json::<AddNodeBody>(data);
    let _ = json::<crate::ledger::PublisherBody>(data);
    let _ = json::<crate::ledger::ImageBody>(data);
    let _ = json::<crate::ledger::ImageBatchBody>(data);
    let _ = json::<crate::ledger::RevokeBody>(data);
    // Query strings, as axum's `Query` parses them.
    let Ok(uri) = format!("/x?{}", String::from_utf8_lossy(data)).parse::<axum::http::Uri>() else { return };
    let _ = Query::<ReadParams>::try_from_uri(&uri);
    let _ = Query::<WriteParams>::try_from_uri(&uri);
    let _ = Query::<ScanParams>::try_from_uri(&uri);
    let _ = Query::<RouteParams>::try_from_uri(&uri);
    let _ = Query::<crate::audit::AuditParams>::try_from_uri(&uri);
    let _ = Query::<crate::ledger::ConsistencyQuery>::try_from_uri(&uri);
    let _ = Query::<crate::ledger::InclusionQuery>::try_from_uri(&uri);
    let _ = crate::auth::Role::parse(&String::from_utf8_lossy(data));
    // Path segments, as authorization decodes them (`%` before raw UTF-8 once panicked in a
    // decoder of our own: defect b of issue 18).
    for seg in String::from_utf8_lossy(data).split('/') {
        let _ = crate::auth::percent_decode(seg);
    }
}
