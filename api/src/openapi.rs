//! The OpenAPI 3 document of the REST API, served at `/openapi.json`.
//!
//! One table (`PATHS`) documents every route: its operations, who may call them, parameters,
//! body and answer, with an example of each JSON body from which the schema is derived. The
//! router is built through `Routes`, which registers a path only together with its entry here,
//! and the document is made from the paths actually registered; tests check that each
//! documented method is answered by its route (not 405, not the fallback 404). So the
//! document cannot list a route the node lacks, nor miss one it has.

use std::collections::BTreeMap;

use axum::routing::MethodRouter;
use axum::Router;
use serde_json::{json, Map, Value};

/// Who may call an operation.
#[derive(Clone, Copy, Debug)]
pub enum Access {
    /// No token (health, metrics, the ledger's reads, whose answers clients verify).
    Public,
    /// A bearer token with this permission (or the admin token).
    Token(&'static str),
}

#[derive(Clone, Copy, Debug)]
pub struct Param {
    pub name: &'static str,
    pub required: bool,
    pub description: &'static str,
}

#[derive(Clone, Copy, Debug)]
pub struct Body {
    pub content_type: &'static str,
    /// A JSON example for JSON bodies (the schema is derived from it); text otherwise.
    pub example: &'static str,
    pub description: &'static str,
}

#[derive(Clone, Debug)]
pub struct Op {
    /// Lower case, as OpenAPI keys them: get, put, post, delete.
    pub method: &'static str,
    pub summary: &'static str,
    pub access: Access,
    pub query: Vec<Param>,
    pub body: Option<Body>,
    pub ok: u16,
    pub answer: Option<Body>,
}

const fn p(name: &'static str, description: &'static str) -> Param {
    Param { name, required: false, description }
}
const fn req(name: &'static str, description: &'static str) -> Param {
    Param { name, required: true, description }
}
const fn json_body(example: &'static str, description: &'static str) -> Option<Body> {
    Some(Body { content_type: "application/json", example, description })
}
const fn text(content_type: &'static str, example: &'static str, description: &'static str) -> Option<Body> {
    Some(Body { content_type, example, description })
}

const CONSISTENCY: Param =
    p("consistency", "`linearizable` (default) or `stale`: answer from this node's replica, possibly behind");
const PROM_MATCH: Param = p("match[]", "Series selectors (repeatable); with `start` and `end` in seconds");
const PROM_QUERY: &[Param] = &[
    req("query", "PromQL expression"),
    p("time", "Evaluation time: RFC 3339 or Unix seconds (default: now)"),
    p("timeout", "Evaluation timeout, e.g. `30s` (default and most: 2m; past it, 503 `timeout`)"),
    p("lookback_delta", "Lookback for instant selectors (default 5m)"),
    p("ns", "Namespace (default `default`)"),
];
const PROM_RANGE: &[Param] = &[
    req("query", "PromQL expression"),
    req("start", "RFC 3339 or Unix seconds"),
    req("end", "RFC 3339 or Unix seconds"),
    req("step", "Resolution: a duration (`15s`) or seconds"),
    p("timeout", "Evaluation timeout, e.g. `30s` (default and most: 2m; past it, 503 `timeout`)"),
    p("lookback_delta", "Lookback for instant selectors (default 5m)"),
    p("ns", "Namespace (default `default`)"),
];
const PROM_SERIES: &[Param] = &[
    PROM_MATCH,
    p("start", "Unix seconds or RFC 3339"),
    p("end", "Unix seconds or RFC 3339"),
    p("ns", "Namespace"),
];
const PROM_ANSWER: Option<Body> = json_body(
    r#"{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {"host": "a"}, "value": [1764151200, "12.5"]}]}}"#,
    "The Prometheus HTTP API's envelope",
);
const NAMESPACE: &str =
    r#"{"class": "confidential", "home_site": "a", "key_sites": ["a", "b"], "replicas": 3}"#;
const IMAGE: &str = r#"{"name": "camera-ai:2.1", "digest": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "publisher": "acme", "signature": "<base64 ed25519 signature of the canonical message>"}"#;

fn op(method: &'static str, summary: &'static str, access: Access) -> Op {
    Op { method, summary, access, query: Vec::new(), body: None, ok: 200, answer: None }
}

impl Op {
    fn query(mut self, q: &[Param]) -> Op {
        self.query = q.to_vec();
        self
    }
    fn body(mut self, b: Option<Body>) -> Op {
        self.body = b;
        self
    }
    fn answer(mut self, ok: u16, a: Option<Body>) -> Op {
        self.ok = ok;
        self.answer = a;
        self
    }
}

/// Every route and its operations. Paths use axum's syntax (`{*key}` is a rest-of-path).
pub fn paths() -> Vec<(&'static str, Vec<Op>)> {
    use Access::*;
    let admin = Token("admin");
    vec![
        ("/healthz", vec![op("get", "200 while the process serves", Public).answer(200, text("text/plain", "ok", ""))]),
        ("/readyz", vec![op("get", "200 once the node has joined and every group it hosts has a leader; 503 before", Public)]),
        ("/metrics", vec![op("get", "Metrics in the Prometheus text format", Public)
            .answer(200, text("text/plain; version=0.0.4", "edgefabric_raft_groups 17", ""))]),
        ("/openapi.json", vec![op("get", "This document", Public)]),
        ("/ui", vec![op("get", "The auditor's web page: blocks, checkpoint, image and audit lookups, verified in the browser", Public)
            .answer(200, text("text/html", "<!doctype html>…", "The page; its script and style are the two routes below"))]),
        ("/ui/app.js", vec![op("get", "The auditor's page's script (the page's CSP runs no inline script)", Public)
            .answer(200, text("text/javascript", "\"use strict\";…", ""))]),
        ("/ui/app.css", vec![op("get", "The auditor's page's style", Public)
            .answer(200, text("text/css", "body { … }", ""))]),
        ("/v1/test/faults", vec![
            op("get", "Injected transport faults (only on a node started with [test] faults = true)", admin),
            op("put", "Set injected transport faults (test builds of a cluster only)", admin)
                .body(json_body(r#"{"drop_to": [2], "delay_ms": {"3": 200}}"#, "Peers to drop messages to; per-peer delays")),
        ]),
        ("/v1/namespaces", vec![op("get", "List namespaces", Token("any valid token"))]),
        ("/v1/namespaces/{ns}", vec![
            op("put", "Create or update a namespace (class public, confidential or site-local)", Token("admin:NS"))
                .body(json_body(NAMESPACE, "`home_site` for site-local, `key_sites` for confidential"))
                .answer(201, json_body(r#"{"ns": "med", "class": "confidential"}"#, "201 when created, 200 when updated")),
            op("get", "A namespace's configuration", Token("reader:NS")),
        ]),
        ("/v1/namespaces/{ns}/rotate-key", vec![op("post", "Add a data key version; older values are re-encrypted in the background", Token("admin:NS"))]),
        ("/v1/namespaces/{ns}/rotation", vec![op("get", "Progress of the namespace's re-encryption", Token("admin:NS"))]),
        ("/v1/namespaces/{ns}/retire-key", vec![op("post", "Drop a key version no value uses any more", Token("admin:NS"))
            .body(json_body(r#"{"version": 1}"#, ""))]),
        ("/v1/namespaces/{ns}/retention", vec![
            op("put", "Set the namespace's time-series retention (raw and rollups)", Token("admin:NS"))
                .body(json_body(r#"{"raw": "15d", "rollups": "400d"}"#, "")),
            op("get", "The namespace's time-series retention", Token("admin:NS")),
        ]),
        ("/v1/kv/{ns}", vec![op("get", "Scan keys by prefix, in key order, in pages", Token("reader:NS"))
            .query(&[p("prefix", "Key prefix"), p("limit", "Items per page (default 100)"), p("after", "The previous page's `next`"), CONSISTENCY])
            .answer(200, json_body(r#"{"items": [{"key": "k", "value_base64": "aGk=", "revision": 4}], "next": null}"#, ""))]),
        ("/v1/kv/{ns}/{*key}", vec![
            op("put", "Write a value (raw body); `cas` writes only at that revision (0: only if absent), else 409", Token("writer:NS"))
                .query(&[p("cas", "Expected current revision")])
                .body(text("application/octet-stream", "hello", "The value, raw"))
                .answer(200, json_body(r#"{"revision": 4}"#, "")),
            op("get", "Read a value (raw body, revision in `X-Revision`); 404 if absent", Token("reader:NS"))
                .query(&[CONSISTENCY])
                .answer(200, text("application/octet-stream", "hello", "The value, raw")),
            op("delete", "Delete a key", Token("writer:NS")).query(&[p("cas", "Expected current revision")]),
        ]),
        ("/v1/batch", vec![op("post", "Atomic batch: all at one revision or none (409); keys within one shard", Token("writer:NS of each op"))
            .body(json_body(r#"{"ops": [{"op": "put", "ns": "default", "key": "a", "value_base64": "aGk=", "cas": 0}, {"op": "delete", "ns": "default", "key": "b"}]}"#, ""))
            .answer(200, json_body(r#"{"revision": 9}"#, ""))]),
        ("/v1/cluster/status", vec![op("get", "Nodes, sites, shards, replicas, leaders, moves under way", Token("any valid token"))]),
        ("/v1/cluster/route", vec![op("get", "The shard holding a key", Token("any valid token"))
            .query(&[req("ns", "Namespace"), req("key", "Key")])]),
        ("/v1/cluster/nodes", vec![op("post", "Add a node to the cluster map (see `edgefabric cluster join`)", admin)
            .body(json_body(r#"{"id": 4, "site": "a", "grpc": "10.0.0.4:7400", "http": "10.0.0.4:7480", "public_key": "<base64 ed25519>"}"#, ""))]),
        ("/v1/cluster/nodes/{id}", vec![op("delete", "Drain a node and remove it", admin)]),
        ("/v1/audit", vec![op("get", "Audit records, filtered, in pages, with their ledger entries' proofs", Token("auditor"))
            .query(&[p("ns", ""), p("actor", "Token subject"), p("action", "e.g. kv.put"), p("result", "allowed or denied"),
                p("from", "RFC 3339 or ms since the epoch"), p("to", "RFC 3339 or ms since the epoch"),
                p("limit", "1..=1000"), p("after", "The previous page's `next`")])]),
        ("/v1/ts/write", vec![op("post", "InfluxDB line protocol; all lines or none (400 naming line and column)", Token("writer:NS"))
            .query(&[p("ns", "Namespace (default `default`)"), p("precision", "ns (default), us, ms or s")])
            .body(text("text/plain", "cpu,host=a usage_user=12.5 1764151200000000000", "Line protocol"))
            .answer(204, None)]),
        ("/v1/ts/queue", vec![op("get", "This node's store-and-forward backlog", admin)]),
        ("/v1/ts/flush", vec![op("post", "Cut every head into chunks, snapshot, purge raft logs, compact; reports bytes", admin)]),
        ("/v1/ts/maintain", vec![op("post", "Run rollups, retention and sealed-series compaction now", admin)]),
        ("/v1/backup", vec![op("post", "A backup of this node, streamed (see `edgefabric backup`); summary in the x-edgefabric-backup header", admin)
            .answer(200, text("application/octet-stream", "", "The backup file (EFBACKUP format)"))]),
        ("/api/v1/write", vec![op("post", "Prometheus remote write (snappy-compressed protobuf)", Token("writer:NS"))
            .query(&[p("ns", "Namespace (default `default`)")])
            .body(text("application/x-protobuf", "", "snappy(WriteRequest)"))
            .answer(204, None)]),
        ("/api/v1/query", vec![
            op("get", "PromQL instant query", Token("reader:NS")).query(PROM_QUERY).answer(200, PROM_ANSWER),
            op("post", "PromQL instant query (form body)", Token("reader:NS")).query(PROM_QUERY).answer(200, PROM_ANSWER),
        ]),
        ("/api/v1/query_range", vec![
            op("get", "PromQL range query", Token("reader:NS")).query(PROM_RANGE).answer(200, PROM_ANSWER),
            op("post", "PromQL range query (form body)", Token("reader:NS")).query(PROM_RANGE).answer(200, PROM_ANSWER),
        ]),
        ("/api/v1/series", vec![
            op("get", "Series matching selectors", Token("reader:NS")).query(PROM_SERIES),
            op("post", "Series matching selectors (form body)", Token("reader:NS")).query(PROM_SERIES),
        ]),
        ("/api/v1/labels", vec![
            op("get", "Label names", Token("reader:NS")).query(PROM_SERIES),
            op("post", "Label names (form body)", Token("reader:NS")).query(PROM_SERIES),
        ]),
        ("/api/v1/label/{name}/values", vec![op("get", "A label's values", Token("reader:NS")).query(PROM_SERIES)]),
        ("/api/v1/metadata", vec![op("get", "Metric metadata (empty: not stored)", Token("reader:NS"))]),
        ("/api/v1/status/buildinfo", vec![op("get", "Build information, as Prometheus reports it", Token("reader:NS"))]),
        ("/api/v1/query_exemplars", vec![
            op("get", "Exemplars (none are stored)", Token("reader:NS")),
            op("post", "Exemplars (none are stored)", Token("reader:NS")),
        ]),
        ("/api/v1/rules", vec![op("get", "Recording and alerting rules (none)", Token("reader:NS"))]),
        ("/api/v1/alerts", vec![op("get", "Active alerts (none)", Token("reader:NS"))]),
        ("/v1/tokens", vec![op("post", "Issue an access token (PASETO v4.public)", admin)
            .body(json_body(r#"{"subject": "camera-app", "roles": ["writer:default", "reader:default"], "ttl_secs": 86400, "client_key": "<optional base64 ed25519>"}"#,
                "Roles: reader:NS, writer:NS, admin:NS, auditor, publisher, admin"))
            .answer(201, json_body(r#"{"token": "v4.public....", "subject": "camera-app", "roles": ["writer:default"], "expires": 1764237600, "id": "<token id>"}"#, ""))]),
        ("/v1/tokens/revoke", vec![op("post", "Revoke a token by id", admin).body(json_body(r#"{"id": "<token id>"}"#, ""))]),
        ("/v1/publishers", vec![op("post", "Register an image publisher's ed25519 key in the ledger", admin)
            .body(json_body(r#"{"id": "acme", "public_key": "<base64 ed25519>"}"#, ""))
            .answer(201, json_body(r#"{"id": "acme", "log_index": 12}"#, "201 when added, 200 when already there with that key"))]),
        ("/v1/images", vec![op("post", "Register an image digest, signed by its publisher", Token("publisher"))
            .body(json_body(IMAGE, "The signature is over `edgefabric-image-v1\\nname: <name>\\ndigest: <digest>\\n`"))
            .answer(201, json_body(r#"{"digest": "sha256:...", "log_index": 15}"#, ""))]),
        ("/v1/images/batch", vec![op("post", "Register several images in one block", Token("publisher"))
            .body(Some(Body { content_type: "application/json", example: r#"{"images": [{"name": "camera-ai:2.1", "digest": "sha256:...", "publisher": "acme", "signature": "..."}]}"#, description: "" }))]),
        ("/v1/images/{digest}/revoke", vec![op("post", "Revoke an image (admin, or its publisher's signature)", Token("publisher"))
            .body(json_body(r#"{"reason": "CVE-2026-0001", "publisher": "acme", "signature": "<optional base64>"}"#, ""))]),
        ("/v1/images/{digest}", vec![op("get", "An image's status, entry, leaf, RFC 6962 inclusion proof and the cosigned checkpoint", Public)
            .answer(200, json_body(r#"{"status": "registered", "entry": {}, "leaf_base64": "...", "inclusion_proof": {"log_index": 15, "tree_size": 18, "root_hash": "<hex>", "hashes": ["<hex>"]}, "checkpoint": "<signed note>"}"#, ""))]),
        ("/v1/publishers/{id}", vec![op("get", "A registered publisher's key", Public)]),
        ("/v1/ledger/checkpoint", vec![op("get", "The latest checkpoint: a C2SP signed note cosigned by the nodes that validated it", Public)
            .answer(200, text("text/plain", "edgefabric/...\n18\n<base64 root>\n\n— node-1 ...", ""))]),
        ("/v1/ledger/proof/consistency", vec![op("get", "RFC 6962 consistency proof between two tree sizes", Public)
            .query(&[req("from", "Older tree size"), p("to", "Newer tree size (default: the latest)")])]),
        ("/v1/ledger/proof/inclusion", vec![op("get", "RFC 6962 inclusion proof of a leaf", Public)
            .query(&[req("index", "Leaf index"), p("size", "Tree size (default: the latest)")])]),
        ("/v1/ledger/entries/{index}", vec![op("get", "One ledger entry and its leaf bytes", Public)]),
        ("/v1/ledger/blocks/{height}", vec![op("get", "One ledger block: header and entries", Public)]),
        ("/v1/ledger/status", vec![op("get", "This node's ledger: height, size, verification state", Public)]),
    ]
}

/// A router whose routes are registered with their documentation (see the module comment).
pub struct Routes<S> {
    router: Router<S>,
    registered: Vec<&'static str>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Routes { router: Router::new(), registered: Vec::new() }
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    /// Registers `path`; it must have an entry in `paths()` (a unit test registers the real
    /// router and checks every path against the table).
    pub fn route(mut self, path: &'static str, mr: MethodRouter<S>) -> Self {
        debug_assert!(paths().iter().any(|(p, _)| *p == path), "{path} has no entry in openapi::paths()");
        self.router = self.router.route(path, mr);
        self.registered.push(path);
        self
    }

    pub fn into_parts(self) -> (Router<S>, Vec<&'static str>) {
        (self.router, self.registered)
    }
}

/// `{*key}` (axum) → `{key}` (OpenAPI).
fn openapi_path(path: &str) -> String {
    path.replace("{*", "{")
}

fn path_params(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|s| s.trim_start_matches('*').to_string())
        .collect()
}

/// A JSON schema derived from an example value.
fn schema_of(v: &Value) -> Value {
    match v {
        Value::Null => json!({"nullable": true}),
        Value::Bool(_) => json!({"type": "boolean"}),
        Value::Number(n) if n.is_u64() || n.is_i64() => json!({"type": "integer"}),
        Value::Number(_) => json!({"type": "number"}),
        Value::String(_) => json!({"type": "string"}),
        Value::Array(a) => json!({"type": "array", "items": a.first().map_or(json!({}), schema_of)}),
        Value::Object(o) => {
            let props: Map<String, Value> = o.iter().map(|(k, v)| (k.clone(), schema_of(v))).collect();
            json!({"type": "object", "properties": props})
        }
    }
}

fn content(b: &Body) -> Value {
    let (schema, example) = match serde_json::from_str::<Value>(b.example) {
        Ok(v) if b.content_type == "application/json" => (schema_of(&v), v),
        _ => (json!({"type": "string"}), Value::String(b.example.to_string())),
    };
    json!({ b.content_type: {"schema": schema, "example": example} })
}

fn tag_of(path: &str) -> &'static str {
    match path.split('/').nth(2).unwrap_or("") {
        _ if path.starts_with("/api/v1/") => "prometheus",
        "kv" | "batch" => "kv",
        "namespaces" => "namespaces",
        "ts" => "time series",
        "cluster" => "cluster",
        "audit" => "audit",
        "tokens" => "tokens",
        "images" | "publishers" | "ledger" => "ledger",
        "test" => "testing",
        _ => "node",
    }
}

/// The document for the registered paths.
pub fn document(registered: &[&str]) -> Value {
    let table: BTreeMap<&str, Vec<Op>> = paths().into_iter().collect();
    let mut out = Map::new();
    for path in registered {
        let Some(ops) = table.get(path) else { continue };
        let mut item = Map::new();
        for o in ops {
            let mut params: Vec<Value> = path_params(path)
                .into_iter()
                .map(|n| json!({"name": n, "in": "path", "required": true, "schema": {"type": "string"}}))
                .collect();
            params.extend(o.query.iter().map(|q| {
                json!({"name": q.name, "in": "query", "required": q.required,
                       "description": q.description, "schema": {"type": "string"}})
            }));
            let mut ok = json!({"description": "success"});
            if let Some(a) = &o.answer {
                if !a.description.is_empty() {
                    ok["description"] = json!(a.description);
                }
                if !a.example.is_empty() {
                    ok["content"] = content(a);
                }
            }
            let mut operation = json!({
                "summary": o.summary,
                "operationId": format!("{}{}", o.method, openapi_path(path).replace(['/', '{', '}', '-', '.', '*'], "_")),
                "tags": [tag_of(path)],
                "parameters": params,
                "responses": {
                    o.ok.to_string(): ok,
                    "default": {"description": "an error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                },
            });
            match o.access {
                Access::Public => operation["security"] = json!([]),
                Access::Token(perm) => {
                    operation["description"] =
                        json!(format!("Needs a token granting {perm} (or the admin token)."));
                }
            }
            if let Some(b) = &o.body {
                operation["requestBody"] =
                    json!({"required": true, "description": b.description, "content": content(b)});
            }
            item.insert(o.method.to_string(), operation);
        }
        out.insert(openapi_path(path), Value::Object(item));
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "EdgeFabric REST API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The REST surface of an EdgeFabric node (docs/api.md). Any node answers any request. Errors are JSON: {\"error\": {\"code\", \"message\"}}.",
        },
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "PASETO v4.public (edgefabric token issue), or the admin token"},
            },
            "schemas": {
                "Error": schema_of(&json!({"error": {"code": "invalid_argument", "message": "what was wrong, naming the field"}})),
            },
        },
        "paths": out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_example_is_valid_json_and_paths_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for (path, ops) in paths() {
            assert!(seen.insert(path), "{path} twice");
            assert!(!ops.is_empty(), "{path}: no operations");
            let mut methods = std::collections::BTreeSet::new();
            for o in ops {
                assert!(methods.insert(o.method), "{path}: {} twice", o.method);
                assert!(["get", "put", "post", "delete"].contains(&o.method), "{path}: {}", o.method);
                for b in o.body.iter().chain(o.answer.iter()) {
                    if b.content_type == "application/json" {
                        serde_json::from_str::<Value>(b.example)
                            .unwrap_or_else(|e| panic!("{path} {}: example is not JSON: {e}", o.method));
                    }
                }
            }
        }
    }

    #[test]
    fn schemas_follow_the_examples() {
        let s = schema_of(&json!({"a": 1, "b": [{"c": "x"}], "d": 1.5, "e": null}));
        assert_eq!(s["properties"]["a"]["type"], "integer");
        assert_eq!(s["properties"]["b"]["items"]["properties"]["c"]["type"], "string");
        assert_eq!(s["properties"]["d"]["type"], "number");
        assert_eq!(path_params("/v1/kv/{ns}/{*key}"), vec!["ns", "key"]);
        assert_eq!(openapi_path("/v1/kv/{ns}/{*key}"), "/v1/kv/{ns}/{key}");
    }
}
