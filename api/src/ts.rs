//! Time-series routes: `POST /v1/ts/write` (InfluxDB line protocol) and the Prometheus HTTP API
//! (`/api/v1/query`, `query_range`, `series`, `labels`, `label/{name}/values`) that Grafana's
//! Prometheus data source speaks. The namespace is the `ns` parameter (default `default`); in
//! Grafana, set it under "Custom query parameters" (`ns=metrics`) and the token as an
//! `Authorization: Bearer` header.
//!
//! Prometheus routes answer in Prometheus's shapes, errors included
//! (`{"status":"error","errorType":"bad_data","error":"..."}`), so its clients understand them.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use edgefabric_store::node::Consistency;
use edgefabric_tsdb::batch::WriteBatch;
use edgefabric_tsdb::engine::Series;
use edgefabric_tsdb::line::{self, Precision};
use edgefabric_tsdb::matcher::Matcher;
use edgefabric_tsdb::promql::{self, eval::format_float, QueryResult, Queryable};

use crate::error::ApiError;
use crate::server::AppState;

/// The most a write body may hold.
pub const MAX_WRITE_BYTES: usize = 32 << 20;

/// Decoded `application/x-www-form-urlencoded` pairs (query string or POST body).
pub fn form_pairs(s: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(s.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// The namespace the authorization layer checked the token against (`guard::authorize` reads
/// it once, from the query string and a form body, and hands it on in the request's
/// extensions). Time-series handlers take their namespace from here and nowhere else, so what
/// was authorized and audited is what is written or read.
#[derive(Clone, Debug)]
pub struct AuthorizedNs(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for AuthorizedNs {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<AuthorizedNs>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "no namespace was authorized for this request",
            )
        })
    }
}

/// The namespace a time-series request names (`ns=`, default `default`).
pub fn ns_of(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .find(|(k, _)| k == "ns")
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "default".into())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// `POST /v1/ts/write?ns=NS&precision=ns|us|ms|s` — line protocol; 204, or 400 naming the line
/// and column of the first bad line (and nothing of the batch is written).
pub async fn write(
    State(st): State<Arc<AppState>>,
    AuthorizedNs(ns): AuthorizedNs,
    RawQuery(q): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let pairs = form_pairs(q.as_deref().unwrap_or(""));
    for (k, _) in &pairs {
        if !matches!(k.as_str(), "ns" | "precision" | "db" | "org" | "bucket") {
            return Err(ApiError::bad_request(format!("query: unknown parameter `{k}`")));
        }
    }
    let precision = match pairs.iter().find(|(k, _)| k == "precision") {
        Some((_, p)) => Precision::parse(p).map_err(|e| ApiError::bad_request(e.to_string()))?,
        None => Precision::Ns,
    };
    let body = axum::body::to_bytes(body, MAX_WRITE_BYTES).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_argument",
            format!("body: larger than the limit of {MAX_WRITE_BYTES} bytes; split the batch"),
        )
    })?;
    let text =
        std::str::from_utf8(&body).map_err(|e| ApiError::bad_request(format!("body: not UTF-8: {e}")))?;
    let points =
        line::parse_points(text, precision, now_ms()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if points.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let batch = WriteBatch::from_points(&ns, points).map_err(|e| ApiError::bad_request(e.to_string()))?;
    stored(&st, st.node.ts_write(batch).await?)
}

/// The answer to a write: 204 (with `X-EdgeFabric-Queued: N` when N samples wait in this node's
/// durable queue for their shard), or a partial-write error naming what was dropped.
fn stored(st: &AppState, o: edgefabric_store::ts::TsWriteOutcome) -> Result<Response, ApiError> {
    st.ts_samples_written.fetch_add(o.written, std::sync::atomic::Ordering::Relaxed);
    if o.too_old > 0 {
        // As InfluxDB reports a partial write: the rest of the batch is stored.
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "partial_write",
            format!(
                "{} samples were older than their series' newest sample minus the out-of-order window and were dropped; {} written",
                o.too_old, o.written
            ),
        ));
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    if o.queued > 0 {
        r.headers_mut().insert("x-edgefabric-queued", axum::http::HeaderValue::from(o.queued));
    }
    Ok(r)
}

/// Prometheus remote write 1.0 (`prometheus.WriteRequest`, snappy block-compressed protobuf).
pub mod remote {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRequest {
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(double, tag = "1")]
        pub value: f64,
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }
}

/// `POST /api/v1/write?ns=NS` — Prometheus remote write 1.0: 204, or 400 naming the series.
pub async fn remote_write(
    State(st): State<Arc<AppState>>,
    AuthorizedNs(ns): AuthorizedNs,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = axum::body::to_bytes(body, MAX_WRITE_BYTES).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_argument",
            format!("body: larger than {MAX_WRITE_BYTES} bytes"),
        )
    })?;
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("snappy");
    if !encoding.eq_ignore_ascii_case("snappy") {
        return Err(ApiError::bad_request(format!("Content-Encoding: `{encoding}` is not snappy")));
    }
    let points = remote_write_points(&body)?;
    if points.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let batch = WriteBatch::from_points(&ns, points).map_err(|e| ApiError::bad_request(e.to_string()))?;
    stored(&st, st.node.ts_write(batch).await?)
}

/// A remote-write body (snappy-compressed `prometheus.WriteRequest`) as points; bad bytes are a
/// 400 naming what was wrong, and the decompressed size is bounded before decompressing.
pub fn remote_write_points(body: &[u8]) -> Result<Vec<line::Point>, ApiError> {
    use prost::Message;
    let len = snap::raw::decompress_len(body)
        .map_err(|e| ApiError::bad_request(format!("body: not snappy: {e}")))?;
    if len > 8 * MAX_WRITE_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_argument",
            "body: decompresses to too much",
        ));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| ApiError::bad_request(format!("body: not snappy: {e}")))?;
    let req = remote::WriteRequest::decode(raw.as_slice())
        .map_err(|e| ApiError::bad_request(format!("body: not a prometheus.WriteRequest: {e}")))?;
    let mut points = Vec::new();
    for (i, ts) in req.timeseries.into_iter().enumerate() {
        let labels: Vec<(String, String)> = ts.labels.into_iter().map(|l| (l.name, l.value)).collect();
        if !labels.iter().any(|(k, v)| k == "__name__" && !v.is_empty()) {
            return Err(ApiError::bad_request(format!("timeseries[{i}]: no __name__ label")));
        }
        for s in ts.samples {
            points.push(line::Point { labels: labels.clone(), time_ms: s.timestamp, value: s.value });
        }
    }
    Ok(points)
}

/// For the `rest_inputs` fuzz target only: the Prometheus API's parameter parsing (query string
/// and form body, times, durations, the lookback).
#[doc(hidden)]
pub fn fuzz_params(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut headers = HeaderMap::new();
    headers
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/x-www-form-urlencoded"));
    let p = params(&Method::POST, &headers, Some(&text), data);
    for (k, v) in &p {
        let _ = parse_time(k, v);
        let _ = parse_duration(k, v);
    }
    let _ = lookback(&p);
}

/// `PUT /v1/namespaces/{ns}/retention` `{"raw": "15d", "rollups": "400d"}` (role `admin:NS`):
/// how long the namespace keeps raw samples and its 1-minute and 1-hour rollups.
pub async fn put_retention(
    State(st): State<Arc<AppState>>,
    Path(ns): Path<String>,
    body: Body,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let body = axum::body::to_bytes(body, 64 << 10).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_argument", "body: larger than 64 KiB")
    })?;
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: not JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| ApiError::bad_request("body: must be an object"))?;
    for k in obj.keys() {
        if k != "raw" && k != "rollups" {
            return Err(ApiError::bad_request(format!("body: unknown field `{k}` (raw, rollups)")));
        }
    }
    let dur = |field: &str| -> Result<u64, ApiError> {
        let s = v[field]
            .as_str()
            .ok_or_else(|| ApiError::bad_request(format!("{field}: missing (a duration such as \"15d\")")))?;
        match promql::lexer::duration(s) {
            Some((ms, n)) if n == s.len() && ms > 0 => Ok(ms as u64),
            _ => Err(ApiError::bad_request(format!("{field}: `{s}` is not a duration such as 15d or 12h"))),
        }
    };
    let (raw, rollups) = (dur("raw")?, dur("rollups")?);
    st.node.set_ts_retention(&ns, raw, rollups).await?;
    Ok(axum::Json(serde_json::json!({"ns": ns, "raw_ms": raw, "rollups_ms": rollups})))
}

/// `GET /v1/namespaces/{ns}/retention`.
pub async fn get_retention(
    State(st): State<Arc<AppState>>,
    Path(ns): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let (raw, rollups) = st.node.ts_retention_read(&ns, Consistency::Linearizable).await?;
    Ok(axum::Json(serde_json::json!({"ns": ns, "raw_ms": raw, "rollups_ms": rollups})))
}

/// `POST /v1/ts/flush` (admin) — cut heads into chunks, snapshot the groups, flush to disk;
/// answers what the compressed data takes on this node's replicas.
pub async fn flush(State(st): State<Arc<AppState>>) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let s = st.node.ts_flush().await?;
    Ok(axum::Json(serde_json::json!({
        "series": s.series, "chunk_bytes": s.chunk_bytes, "rollup_bytes": s.rollup_bytes,
    })))
}

/// `POST /v1/ts/maintain` (admin) — one maintenance pass now (rollups, retention, compaction
/// of confidential series' sealed blocks at key sites); answers what the compaction did.
pub async fn maintain(State(st): State<Arc<AppState>>) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let c = st.node.ts_maintain().await?;
    Ok(axum::Json(serde_json::json!({
        "sealed_merges": c.merges, "sealed_blocks_replaced": c.blocks, "sealed_samples": c.samples,
    })))
}

/// `GET /v1/ts/queue` — this node's store-and-forward backlog.
pub async fn queue(State(st): State<Arc<AppState>>) -> axum::Json<serde_json::Value> {
    let s = st.node.ts_queue_status();
    axum::Json(serde_json::json!({
        "parts": s.parts,
        "samples": s.samples,
        "oldest_ms": s.oldest_ms,
        "shards": s.shards,
        "forwarded": s.forwarded,
        "too_old": s.too_old,
        "proposals": s.proposals,
    }))
}

/// A Prometheus API error.
struct PromError {
    status: StatusCode,
    kind: &'static str,
    msg: String,
}

impl PromError {
    fn bad(msg: impl Into<String>) -> PromError {
        PromError { status: StatusCode::BAD_REQUEST, kind: "bad_data", msg: msg.into() }
    }
}

impl From<edgefabric_store::Error> for PromError {
    fn from(e: edgefabric_store::Error) -> PromError {
        let api: ApiError = e.into();
        let kind = match api.status {
            StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND => "bad_data",
            StatusCode::FORBIDDEN => "bad_data",
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => "unavailable",
            _ => "internal",
        };
        let status = if api.status == StatusCode::NOT_FOUND { StatusCode::BAD_REQUEST } else { api.status };
        PromError { status, kind, msg: api.message }
    }
}

impl IntoResponse for PromError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"status": "error", "errorType": self.kind, "error": self.msg});
        (self.status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    }
}

fn success(data: String) -> Response {
    let body = format!(r#"{{"status":"success","data":{data}}}"#);
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A form body, bounded.
async fn read_form(body: Body) -> Result<Bytes, PromError> {
    axum::body::to_bytes(body, 1 << 20).await.map_err(|_| PromError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        kind: "bad_data",
        msg: "body: larger than 1 MiB".into(),
    })
}

/// Parameters from the query string and, for a form POST, the body (Prometheus reads both).
fn params(method: &Method, headers: &HeaderMap, q: Option<&str>, body: &[u8]) -> Vec<(String, String)> {
    let mut p = form_pairs(q.unwrap_or(""));
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if *method == Method::POST && form {
        p.extend(form_pairs(&String::from_utf8_lossy(body)));
    }
    p
}

fn get<'a>(p: &'a [(String, String)], k: &str) -> Option<&'a str> {
    p.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// A time: RFC 3339 or Unix seconds (fractions allowed), as Prometheus accepts.
pub fn parse_time(field: &str, s: &str) -> Result<i64, String> {
    // Within the bound PromQL's `@` has, so that no time the evaluator computes overflows.
    const MAX_SECS: f64 = promql::parser::MAX_TIME_MS as f64 / 1000.0;
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs.abs() <= MAX_SECS {
            return Ok((secs * 1000.0).round() as i64);
        }
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| format!("invalid parameter \"{field}\": cannot parse \"{s}\" to a valid timestamp"))
}

/// A duration: Prometheus's syntax (`5m`, `1h30m`) or seconds.
fn parse_duration(field: &str, s: &str) -> Result<i64, String> {
    // At most a query's longest duration (Prometheus's, about 292 years).
    const MAX_MS: i64 = promql::parser::MAX_DURATION_MS;
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs.abs() * 1000.0 <= MAX_MS as f64 {
            return Ok((secs * 1000.0).round() as i64);
        }
    }
    match promql::lexer::duration(s) {
        Some((ms, n)) if n == s.len() && ms <= MAX_MS => Ok(ms),
        _ => Err(format!("invalid parameter \"{field}\": cannot parse \"{s}\" to a valid duration")),
    }
}

/// Reads of one namespace through the node (every shard, linearizable).
struct NodeQuerier<'a> {
    st: &'a AppState,
    ns: &'a str,
    handle: tokio::runtime::Handle,
    /// The node's first error: the evaluator only passes on its text, and the client needs its
    /// status (403 outside a confidential namespace's key sites, 503 for an unreachable shard).
    failed: std::sync::Mutex<Option<edgefabric_store::Error>>,
}

impl Queryable for NodeQuerier<'_> {
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, edgefabric_tsdb::Error> {
        // The evaluator is synchronous; it runs on a blocking thread and waits here for the
        // node's (async) fan-out.
        self.handle
            .block_on(self.st.node.ts_select(self.ns, matchers, mint, maxt, Consistency::Linearizable))
            .map_err(|e| {
                let msg = ApiError::from(e.clone()).message;
                self.failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                edgefabric_tsdb::Error::Invalid(msg)
            })
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn fmt_time(ms: i64) -> String {
    if ms < 0 {
        return format!("-{}", fmt_time(ms.checked_neg().unwrap_or(i64::MAX)));
    }
    let (s, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        format!("{s}")
    } else {
        let f = format!("{frac:03}");
        format!("{s}.{}", f.trim_end_matches('0'))
    }
}

fn fmt_metric(labels: &[(String, String)]) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{}:{}", json_str(k), json_str(v))).collect();
    format!("{{{}}}", inner.join(","))
}

fn result_json(r: &QueryResult) -> String {
    let point = |t: i64, v: f64| format!("[{},{}]", fmt_time(t), json_str(&format_float(v)));
    match r {
        QueryResult::Scalar(t, v) => format!(r#"{{"resultType":"scalar","result":{}}}"#, point(*t, *v)),
        QueryResult::String(t, s) => {
            format!(r#"{{"resultType":"string","result":[{},{}]}}"#, fmt_time(*t), json_str(s))
        }
        QueryResult::Vector(rows) => {
            let items: Vec<String> = rows
                .iter()
                .map(|(l, t, v)| format!(r#"{{"metric":{},"value":{}}}"#, fmt_metric(l), point(*t, *v)))
                .collect();
            format!(r#"{{"resultType":"vector","result":[{}]}}"#, items.join(","))
        }
        QueryResult::Matrix(series) => {
            let items: Vec<String> = series
                .iter()
                .map(|(l, pts)| {
                    let p: Vec<String> = pts.iter().map(|(t, v)| point(*t, *v)).collect();
                    format!(r#"{{"metric":{},"values":[{}]}}"#, fmt_metric(l), p.join(","))
                })
                .collect();
            format!(r#"{{"resultType":"matrix","result":[{}]}}"#, items.join(","))
        }
    }
}

fn lookback(p: &[(String, String)]) -> Result<promql::Options, PromError> {
    let mut o = promql::Options::default();
    if let Some(lb) = get(p, "lookback_delta") {
        o.lookback_ms = parse_duration("lookback_delta", lb).map_err(PromError::bad)?;
        if o.lookback_ms <= 0 {
            return Err(PromError::bad("invalid parameter \"lookback_delta\": must be positive"));
        }
    }
    // Prometheus's `timeout`: shorter than the node's (2 minutes) if asked, never longer.
    if let Some(t) = get(p, "timeout").filter(|t| !t.is_empty()) {
        let ms = parse_duration("timeout", t).map_err(PromError::bad)?;
        if ms <= 0 {
            return Err(PromError::bad("invalid parameter \"timeout\": must be positive"));
        }
        let asked = std::time::Duration::from_millis(ms as u64);
        o.timeout = Some(o.timeout.map_or(asked, |max| max.min(asked)));
    }
    Ok(o)
}

async fn run_query(
    st: Arc<AppState>,
    ns: String,
    expr: promql::ast::Expr,
    range: Option<(i64, i64, i64)>,
    t: i64,
    opts: promql::Options,
) -> Result<QueryResult, PromError> {
    let handle = tokio::runtime::Handle::current();
    let out = tokio::task::spawn_blocking(move || {
        let q = NodeQuerier { st: &st, ns: &ns, handle, failed: std::sync::Mutex::new(None) };
        let r = match range {
            Some((a, b, s)) => promql::range_query(&q, &expr, a, b, s, &opts),
            None => promql::instant_query(&q, &expr, t, &opts),
        };
        r.map_err(|e| match q.failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(node_err) => PromError::from(node_err),
            None if matches!(e, edgefabric_tsdb::Error::Timeout) => {
                PromError { status: StatusCode::SERVICE_UNAVAILABLE, kind: "timeout", msg: e.to_string() }
            }
            None => {
                PromError { status: StatusCode::UNPROCESSABLE_ENTITY, kind: "execution", msg: e.to_string() }
            }
        })
    })
    .await
    .map_err(|e| PromError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        kind: "internal",
        msg: e.to_string(),
    })?;
    out
}

/// `GET|POST /api/v1/query`.
pub async fn query(
    State(st): State<Arc<AppState>>,
    AuthorizedNs(ns): AuthorizedNs,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> Response {
    let inner = async {
        let body = read_form(body).await?;
        let p = params(&method, &headers, q.as_deref(), &body);
        let text = get(&p, "query").ok_or_else(|| PromError::bad("invalid parameter \"query\": missing"))?;
        let expr =
            promql::parse(text).map_err(|e| PromError::bad(format!("invalid parameter \"query\": {e}")))?;
        let t = match get(&p, "time") {
            Some(s) if !s.is_empty() => parse_time("time", s).map_err(PromError::bad)?,
            _ => now_ms(),
        };
        let opts = lookback(&p)?;
        let r = run_query(st, ns, expr, None, t, opts).await?;
        Ok::<_, PromError>(success(result_json(&r)))
    };
    inner.await.unwrap_or_else(IntoResponse::into_response)
}

/// `GET|POST /api/v1/query_range`.
pub async fn query_range(
    State(st): State<Arc<AppState>>,
    AuthorizedNs(ns): AuthorizedNs,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> Response {
    let inner = async {
        let body = read_form(body).await?;
        let p = params(&method, &headers, q.as_deref(), &body);
        let text = get(&p, "query").ok_or_else(|| PromError::bad("invalid parameter \"query\": missing"))?;
        let need =
            |k: &str| get(&p, k).ok_or_else(|| PromError::bad(format!("invalid parameter \"{k}\": missing")));
        let start = parse_time("start", need("start")?).map_err(PromError::bad)?;
        let end = parse_time("end", need("end")?).map_err(PromError::bad)?;
        if end < start {
            return Err(PromError::bad(
                "invalid parameter \"end\": end timestamp must not be before start time",
            ));
        }
        let step = parse_duration("step", need("step")?).map_err(PromError::bad)?;
        if step <= 0 {
            return Err(PromError::bad(
                "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        if (end - start) / step > 11_000 {
            return Err(PromError::bad(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
            ));
        }
        let expr =
            promql::parse(text).map_err(|e| PromError::bad(format!("invalid parameter \"query\": {e}")))?;
        let opts = lookback(&p)?;
        let r = run_query(st, ns, expr, Some((start, end, step)), 0, opts).await?;
        Ok::<_, PromError>(success(result_json(&r)))
    };
    inner.await.unwrap_or_else(IntoResponse::into_response)
}

/// `match[]` selectors and the optional time range of the metadata routes.
fn selection(p: &[(String, String)], required: bool) -> Result<(Vec<Vec<Matcher>>, i64, i64), PromError> {
    let mut sels = Vec::new();
    for (k, v) in p {
        if k == "match[]" {
            sels.push(
                promql::parse_selector(v)
                    .map_err(|e| PromError::bad(format!("invalid parameter \"match[]\": {e}")))?,
            );
        }
    }
    if required && sels.is_empty() {
        return Err(PromError::bad("no match[] parameter provided"));
    }
    let start = match get(p, "start") {
        Some(s) if !s.is_empty() => parse_time("start", s).map_err(PromError::bad)?,
        _ => i64::MIN / 2,
    };
    let end = match get(p, "end") {
        Some(s) if !s.is_empty() => parse_time("end", s).map_err(PromError::bad)?,
        _ => i64::MAX / 2,
    };
    Ok((sels, start, end))
}

/// `GET /api/v1/metadata`: EdgeFabric keeps no metric metadata (types, help texts), so the
/// answer is an empty map — Grafana's metric browser then shows names without descriptions.
pub async fn metadata() -> Response {
    success("{}".into())
}

/// `GET|POST /api/v1/query_exemplars`: EdgeFabric stores no exemplars, so always none (what
/// Prometheus answers for series without any), instead of a 404 that Grafana shows as an error
/// when a panel has exemplars switched on.
pub async fn query_exemplars() -> Response {
    success("[]".into())
}

/// `GET /api/v1/rules` and `GET /api/v1/alerts`: EdgeFabric evaluates no rules; empty lists, as
/// a Prometheus without rule files answers (Grafana asks when listing data-source alerts).
pub async fn rules() -> Response {
    success(r#"{"groups":[]}"#.into())
}

pub async fn alerts() -> Response {
    success(r#"{"alerts":[]}"#.into())
}

/// `GET /api/v1/status/buildinfo`.
pub async fn buildinfo() -> Response {
    success(format!(
        r#"{{"application":"EdgeFabric","version":{},"revision":"","branch":"","buildUser":"","buildDate":"","goVersion":""}}"#,
        json_str(env!("CARGO_PKG_VERSION"))
    ))
}

/// The label sets the metadata routes answer from: the request's `match[]` selectors (required
/// for `/series`) and time range, in its namespace.
async fn matching_series(
    st: &AppState,
    ns: &str,
    method: &Method,
    headers: &HeaderMap,
    q: Option<&str>,
    body: Body,
    required: bool,
) -> Result<Vec<edgefabric_tsdb::batch::Labels>, PromError> {
    let body = read_form(body).await?;
    let p = params(method, headers, q, &body);
    let (sels, start, end) = selection(&p, required)?;
    Ok(st.node.ts_series(ns, &sels, start, end, Consistency::Linearizable).await?)
}

fn json_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Response {
    success(format!("[{}]", items.into_iter().map(json_str).collect::<Vec<_>>().join(",")))
}

/// `GET|POST /api/v1/series`.
pub async fn series(
    State(st): State<Arc<AppState>>,
    AuthorizedNs(ns): AuthorizedNs,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> Response {
    match matching_series(&st, &ns, &method, &headers, q.as_deref(), body, true).await {
        Ok(all) => success(format!("[{}]", all.iter().map(|l| fmt_metric(l)).collect::<Vec<_>>().join(","))),
        Err(e) => e.into_response(),
    }
}

/// `GET|POST /api/v1/labels`.
pub async fn labels(
    State(st): State<Arc<AppState>>,
    AuthorizedNs(ns): AuthorizedNs,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> Response {
    match matching_series(&st, &ns, &method, &headers, q.as_deref(), body, false).await {
        Ok(all) => {
            let names: std::collections::BTreeSet<&str> =
                all.iter().flat_map(|l| l.iter().map(|(k, _)| k.as_str())).collect();
            json_list(names)
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /api/v1/label/{name}/values`.
pub async fn label_values(
    State(st): State<Arc<AppState>>,
    AuthorizedNs(ns): AuthorizedNs,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> Response {
    match matching_series(&st, &ns, &method, &headers, q.as_deref(), body, false).await {
        Ok(all) => {
            let values: std::collections::BTreeSet<&str> = all
                .iter()
                .filter_map(|l| l.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str()))
                .collect();
            json_list(values)
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations() {
        assert_eq!(parse_time("time", "1700000000.5"), Ok(1_700_000_000_500));
        assert_eq!(parse_time("time", "2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert!(parse_time("time", "yesterday").unwrap_err().contains("\"time\""));
        assert_eq!(parse_duration("step", "15s"), Ok(15_000));
        assert_eq!(parse_duration("step", "0.5"), Ok(500));
        assert!(parse_duration("step", "fast").is_err());
        assert_eq!(fmt_time(1_700_000_000_500), "1700000000.5");
        assert_eq!(fmt_time(1_700_000_000_000), "1700000000");
        assert_eq!(fmt_time(-1), "-0.001");
        assert_eq!(fmt_time(-1500), "-1.5");
    }
}

/// `edgefabric ts ...`.
#[derive(clap::Subcommand)]
pub enum TsCmd {
    /// This node's store-and-forward backlog: samples waiting for an unreachable shard.
    Queue {
        #[command(flatten)]
        client: crate::client::ClientOpts,
    },
    /// Write InfluxDB line protocol from a file (`-`: standard input).
    Write {
        #[arg(long, default_value = "default")]
        ns: String,
        /// Timestamp precision: ns, us, ms or s.
        #[arg(long, default_value = "ns")]
        precision: String,
        file: std::path::PathBuf,
        #[command(flatten)]
        client: crate::client::ClientOpts,
    },
}

pub async fn run(cmd: TsCmd) -> anyhow::Result<i32> {
    use anyhow::Context;
    match cmd {
        TsCmd::Queue { client } => {
            let c = crate::client::Client::new(&client)?;
            let v = c.json(reqwest::Method::GET, "/v1/ts/queue", None).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        TsCmd::Write { ns, precision, file, client } => {
            let body = if file.as_os_str() == "-" {
                let mut s = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut s)?;
                s
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let c = crate::client::Client::new(&client)?;
            let path = format!(
                "/v1/ts/write?ns={}&precision={precision}",
                form_urlencoded::byte_serialize(ns.as_bytes()).collect::<String>()
            );
            let (_, headers, _) = c.send(reqwest::Method::POST, &path, Some(body), false, &[]).await?;
            match headers.get("x-edgefabric-queued").and_then(|v| v.to_str().ok()) {
                Some(n) => println!("written; {n} samples queued on the node until their shard is reachable"),
                None => println!("written"),
            }
            Ok(0)
        }
    }
}
