//! REST authorization, declared once per route: each handler is registered together with its
//! `Rule` (what it needs, what its accesses are called in the audit trail), and the middleware
//! that guards it reads that rule — never a second reading of the path. The namespace and key
//! a rule checks come from the path parameters the router matched and decoded for this very
//! request, which are the ones the handler receives; what lives in a body or a query string
//! (a batch's operations, a time-series namespace, a revocation's signature) is parsed once
//! here, with the handler's own types, and handed to the handler (`Authorized`, `AuthorizedNs`),
//! so that what was authorized and audited is what runs. The authenticated router accepts only
//! guarded handlers (`ApiRoutes`): a route cannot be added without a rule.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, MatchedPath, Path, Request, State};
use axum::handler::Handler;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};

use crate::auth::{Permission, Target};
use crate::error::ApiError;
use crate::server::{AppState, ANONYMOUS};
use edgefabric_store::types::MAX_BATCH_OPS;

/// What a route's handler needs, and the action its accesses are recorded under.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub action: &'static str,
    pub need: Need,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Any valid token.
    Token,
    /// The `admin` role.
    Admin,
    /// The `auditor` role.
    Audit,
    /// The `publisher` role.
    Publish,
    /// Reading, writing or managing the namespace in the path (`{ns}`).
    Read,
    Write,
    Manage,
    /// Reading or writing the time-series namespace: the `ns` parameter of the query string
    /// or of a form body (Prometheus clients POST queries as forms), `default` without one.
    TsRead,
    TsWrite,
    /// Writing the namespace of every operation in a `/v1/batch` body.
    Batch,
    /// An image revocation: `publisher` when the body carries the publisher's signature; the
    /// `admin` role when it does not (the node then signs the revocation as the admin's).
    Revoke,
}

pub const fn rule(action: &'static str, need: Need) -> Rule {
    Rule { action, need }
}

/// A value parsed from the request while authorizing it, handed to the handler: the handler
/// takes it from here instead of parsing the request a second time.
#[derive(Clone)]
pub struct Authorized<T>(pub T);

impl<S: Send + Sync, T: Send + Sync + 'static> FromRequestParts<S> for Authorized<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.remove::<Authorized<T>>().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the request was not authorized by its route's rule",
            )
        })
    }
}

/// A path's handlers, each with its rule (`ApiRoutes::route`).
pub struct Guarded {
    st: Arc<AppState>,
    mr: MethodRouter<Arc<AppState>>,
}

pub fn guarded(st: &Arc<AppState>) -> Guarded {
    Guarded { st: st.clone(), mr: MethodRouter::new() }
}

impl Guarded {
    fn on<H: Handler<T, Arc<AppState>>, T: 'static>(
        self,
        filter: MethodFilter,
        handler: H,
        rule: Rule,
    ) -> Self {
        let one = axum::routing::on(filter, handler)
            .route_layer(middleware::from_fn_with_state((self.st.clone(), rule), require_token));
        Guarded { st: self.st, mr: self.mr.merge(one) }
    }

    pub fn get<H: Handler<T, Arc<AppState>>, T: 'static>(self, handler: H, rule: Rule) -> Self {
        self.on(MethodFilter::GET, handler, rule)
    }

    pub fn put<H: Handler<T, Arc<AppState>>, T: 'static>(self, handler: H, rule: Rule) -> Self {
        self.on(MethodFilter::PUT, handler, rule)
    }

    pub fn post<H: Handler<T, Arc<AppState>>, T: 'static>(self, handler: H, rule: Rule) -> Self {
        self.on(MethodFilter::POST, handler, rule)
    }

    /// The same handler and rule for GET and POST (Prometheus's query API takes both).
    pub fn get_and_post<H: Handler<T, Arc<AppState>>, T: 'static>(self, handler: H, rule: Rule) -> Self {
        self.get(handler.clone(), rule).post(handler, rule)
    }

    pub fn delete<H: Handler<T, Arc<AppState>>, T: 'static>(self, handler: H, rule: Rule) -> Self {
        self.on(MethodFilter::DELETE, handler, rule)
    }
}

/// The authenticated routes: only guarded handlers can be registered.
pub struct ApiRoutes(pub crate::openapi::Routes<Arc<AppState>>);

impl ApiRoutes {
    pub fn route(self, path: &'static str, g: Guarded) -> Self {
        ApiRoutes(self.0.route(path, g.mr))
    }
}

/// Authentication (401) and authorization (403, naming the missing permission) by the rule of
/// the handler it guards. Then the audit: every request that got here, allowed or denied, is
/// recorded durably before its response leaves (`AppState::record`); if it cannot be recorded
/// the client gets 503, never an unrecorded answer.
async fn require_token(
    State((st, rule)): State<(Arc<AppState>, Rule)>,
    req: Request,
    next: Next,
) -> Response {
    let source = crate::tls::peer_ip(req.extensions());
    let method = req.method().as_str().to_string();
    let (actor, req, verdict, targets) = authorize(&st, rule, req, &method).await;
    let unrecorded = |e: ApiError| {
        tracing::error!(error = %e.message, "an access could not be recorded in the audit trail");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the access could not be recorded in the audit trail: {}", e.message),
        )
        .into_response()
    };
    let (response, allowed) = match verdict {
        Ok(()) => {
            // A request that may change state is recorded as received (status 0) before it
            // can take effect: a crash between the change and its outcome record still
            // leaves the change in the trail.
            if !crate::auth::mutates(&method) {
                (next.run(req).await, true)
            } else if crate::auth::is_kv_write(&targets) {
                // The store orders a KV write's received record before the write takes effect
                // (`AppState::received_then`): no wait for the disk here.
                match st.received_then(&actor, targets.clone(), next.run(req)).await {
                    Ok(response) => (response, true),
                    Err(e) => return unrecorded(e),
                }
            } else {
                if let Err(e) = st.record(&actor, targets.clone(), true, crate::auth::RECEIVED).await {
                    return unrecorded(e);
                }
                (next.run(req).await, true)
            }
        }
        Err(refusal) => {
            // Past its source's and actor's budget, a denied request is counted into an
            // aggregate record instead of a record of its own (`DeniedLimiter`): a flood
            // costs bounded work.
            if st.denial_counted(source, &actor) {
                return refusal;
            }
            (refusal, false)
        }
    };
    let status = response.status().as_u16();
    if let Err(e) = st.record(&actor, targets, allowed, status).await {
        return unrecorded(e);
    }
    response
}

type Verdict = (String, Request, Result<(), Response>, Vec<Target>);

/// Reads a body whole (bounded), for a rule that needs what is in it; the request keeps it.
async fn read_body(req: Request) -> Result<(Request, axum::body::Bytes), (Request, ApiError)> {
    read_at_most(req, 1 << 20).await
}

async fn read_at_most(
    req: Request,
    limit: usize,
) -> Result<(Request, axum::body::Bytes), (Request, ApiError)> {
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok((Request::from_parts(parts, Body::from(bytes.clone())), bytes)),
        Err(_) => Err((
            Request::from_parts(parts, Body::empty()),
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_argument", "body: larger than 1 MiB"),
        )),
    }
}

/// Authenticates and authorizes a request by `rule`. Returns the actor, the request (a body
/// read is put back), the verdict (a refusal is the response to send) and the audit targets.
async fn authorize(st: &AppState, rule: Rule, req: Request, method: &str) -> Verdict {
    // The path parameters as the router matched them for this request, decoded exactly as the
    // handler's `Path` decodes them (the same extractor). One that does not decode (bad UTF-8
    // after `%`) is recorded as written, and the request gets a 400.
    let (mut parts, body) = req.into_parts();
    let decoded: Result<HashMap<String, String>, HashMap<String, String>> =
        match Path::<HashMap<String, String>>::from_request_parts(&mut parts, &()).await {
            Ok(Path(m)) => Ok(m),
            Err(PathRejection::MissingPathParams(_)) => Ok(HashMap::new()),
            Err(_) => Err(parts
                .extensions
                .get::<MatchedPath>()
                .map(|m| raw_params(m.as_str(), parts.uri.path()))
                .unwrap_or_default()),
        };
    let req = Request::from_parts(parts, body);
    let param = |name: &str| -> Option<String> {
        match &decoded {
            Ok(m) | Err(m) => m.get(name).cloned(),
        }
    };
    let ns = param("ns");
    let base =
        vec![Target { action: rule.action.into(), ns: ns.clone().unwrap_or_default(), key: param("key") }];
    let whole = |req, actor: &str, refusal: ApiError, targets: Vec<Target>| -> Verdict {
        (actor.to_string(), req, Err(refusal.into_response()), targets)
    };

    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        let refusal = ApiError::unauthenticated("missing Authorization: Bearer <token> header");
        return whole(req, ANONYMOUS, refusal, base);
    };
    let Some(token) =
        value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(|t| t.trim().to_string())
    else {
        let refusal = ApiError::unauthenticated("Authorization header must be 'Bearer <token>'");
        return whole(req, ANONYMOUS, refusal, base);
    };
    let token = token.as_str();
    let who = match st.principal(token) {
        Ok(p) => p,
        Err(e @ (crate::auth::AuthError::Expired | crate::auth::AuthError::Revoked)) => {
            return whole(req, ANONYMOUS, ApiError::unauthenticated(e.to_string()), base)
        }
        Err(_) => return whole(req, ANONYMOUS, ApiError::unauthenticated("invalid token"), base),
    };
    // A token bound to a client key: the request must be signed by it, and be fresh and new.
    let req = match &who.cnf {
        None => req,
        Some(key) => match check_signature(st, req, method, token, key).await {
            Ok(req) => req,
            Err((req, refusal)) => return whole(req, &who.subject, refusal, base),
        },
    };
    // A parameter the router could not decode (bad UTF-8 after `%`): refused, the attempt
    // audited under the parameter as written.
    if let Err(raw) = &decoded {
        let seg =
            raw.values().find(|v| crate::auth::percent_decode(v).is_none()).cloned().unwrap_or_default();
        let refusal = ApiError::bad_request(format!(
            "path: segment {seg:?} does not percent-decode to UTF-8 (encode each byte of a multi-byte character as %XX)"
        ));
        return whole(req, &who.subject, refusal, base);
    }
    let in_path = |p: fn(String) -> Permission| match &ns {
        Some(ns) => p(ns.clone()),
        // A rule that names the path's namespace on a route without one: nothing is granted
        // but to the admin (a route declared wrong fails closed).
        None => Permission::ClusterAdmin,
    };
    let (req, needs, targets) = match rule.need {
        Need::Token => (req, vec![], base),
        Need::Admin => (req, vec![Permission::ClusterAdmin], base),
        Need::Audit => (req, vec![Permission::Audit], base),
        Need::Publish => (req, vec![Permission::Publish], base),
        Need::Read => (req, vec![in_path(Permission::Read)], base),
        Need::Write => (req, vec![in_path(Permission::Write)], base),
        Need::Manage => (req, vec![in_path(Permission::ManageNamespace)], base),
        Need::TsRead | Need::TsWrite => {
            let query = req.uri().query().unwrap_or("").to_string();
            let mut pairs = crate::ts::form_pairs(&query);
            let form = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
            // Only the Prometheus read routes take form bodies; a write's body is its data
            // (line protocol, remote-write), never parameters.
            let req = if method == "POST" && form && rule.need == Need::TsRead {
                match read_body(req).await {
                    Ok((req, bytes)) => {
                        pairs.extend(crate::ts::form_pairs(&String::from_utf8_lossy(&bytes)));
                        req
                    }
                    Err((req, refusal)) => return whole(req, &who.subject, refusal, base),
                }
            } else {
                req
            };
            let ns = crate::ts::ns_of(&pairs);
            let targets = vec![Target { action: rule.action.into(), ns: ns.clone(), key: None }];
            let need = if rule.need == Need::TsWrite {
                Permission::Write(ns.clone())
            } else {
                Permission::Read(ns.clone())
            };
            let mut req = req;
            req.extensions_mut().insert(crate::ts::AuthorizedNs(ns));
            (req, vec![need], targets)
        }
        Need::Batch => {
            let (req, bytes) = match read_body(req).await {
                Ok(x) => x,
                Err((req, refusal)) => return whole(req, &who.subject, refusal, base),
            };
            let body: crate::http::BatchBody = match serde_json::from_slice(&bytes) {
                Ok(b) => b,
                Err(e) => return whole(req, &who.subject, ApiError::bad_request(format!("body: {e}")), base),
            };
            // Checked before one audit target is made per operation: a megabyte of tiny ops
            // would otherwise cost tens of thousands of audit records, allowed or denied.
            if body.ops.len() > MAX_BATCH_OPS {
                let refusal = ApiError::bad_request(format!(
                    "ops: {} operations, the limit is {MAX_BATCH_OPS}",
                    body.ops.len()
                ));
                return whole(req, &who.subject, refusal, base);
            }
            let targets: Vec<Target> = body
                .ops
                .iter()
                .map(|op| {
                    let (verb, ns, key) = op.target();
                    Target { action: format!("kv.{verb}"), ns: ns.to_string(), key: Some(key.to_string()) }
                })
                .collect();
            let targets = if targets.is_empty() { base } else { targets };
            let needs = body.ops.iter().map(|op| Permission::Write(op.target().1.to_string())).collect();
            let mut req = req;
            req.extensions_mut().insert(Authorized(body));
            (req, needs, targets)
        }
        Need::Revoke => {
            let (req, bytes) = match read_body(req).await {
                Ok(x) => x,
                Err((req, refusal)) => return whole(req, &who.subject, refusal, base),
            };
            let body: crate::ledger::RevokeBody = match serde_json::from_slice(&bytes) {
                Ok(b) => b,
                Err(e) => return whole(req, &who.subject, ApiError::bad_request(format!("body: {e}")), base),
            };
            if !body.signed() && !crate::auth::allows(&who.roles, &Permission::ClusterAdmin) {
                let refusal = ApiError::new(
                    StatusCode::FORBIDDEN,
                    "permission_denied",
                    "a revocation without the publisher's signature is the admin's: this needs the role admin \
                     (a publisher revokes its own images with publisher and signature)",
                );
                return whole(req, &who.subject, refusal, base);
            }
            let mut req = req;
            req.extensions_mut().insert(Authorized(body));
            (req, vec![Permission::Publish], base)
        }
    };
    for p in needs {
        if !crate::auth::allows(&who.roles, &p) {
            let refusal =
                ApiError::new(StatusCode::FORBIDDEN, "permission_denied", format!("this needs the role {p}"));
            return whole(req, &who.subject, refusal, targets);
        }
    }
    (who.subject, req, Ok(()), targets)
}

/// Checks a request signed by the client key its token is bound to: fresh, new (nonce), for this
/// node, over this token and this body. Returns the request with its body put back.
async fn check_signature(
    st: &AppState,
    req: Request,
    method: &str,
    token: &str,
    key: &str,
) -> Result<Request, (Request, ApiError)> {
    let limit = st.node.options().max_value_bytes.max(1 << 20) + 1;
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        let refusal = ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_argument", "body: too large");
        return Err((Request::from_parts(parts, Body::empty()), refusal));
    };
    let path_and_query =
        parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_string(), |p| p.to_string());
    let header = |h: &'static str| parts.headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // The node the client addressed: HTTP/2's :authority, or HTTP/1's Host.
    let host =
        parts.uri.authority().map(|a| a.as_str().to_string()).or_else(|| header("host")).unwrap_or_default();
    let signed = crate::auth::SignedRequest {
        method,
        host: &host,
        path_and_query: &path_and_query,
        token,
        body: &bytes,
    };
    let checked = edgefabric_crypto::PublicKey::from_base64(key)
        .map_err(|_| crate::auth::SignatureError::BadSignature)
        .and_then(|k| crate::auth::check_signed(&k, &signed, header, now))
        .and_then(|nonce| {
            if st.answers_as(&host) {
                Ok(nonce)
            } else {
                Err(crate::auth::SignatureError::OtherNode(host.clone(), st.http_names().join(" or ")))
            }
        })
        .and_then(|nonce| {
            if st.nonces.first_use(key, &nonce, now) {
                Ok(())
            } else {
                Err(crate::auth::SignatureError::Replay)
            }
        });
    let req = Request::from_parts(parts, Body::from(bytes));
    match checked {
        Ok(()) => Ok(req),
        Err(e) => Err((req, ApiError::unauthenticated(e.to_string()))),
    }
}

/// A route's parameters as written in the request's path, by the route's template
/// (`/v1/kv/{ns}/{*key}`): only for the audit record of a path that does not decode.
fn raw_params(template: &str, path: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut segs = path.trim_start_matches('/').split('/');
    for t in template.trim_start_matches('/').split('/') {
        if let Some(name) = t.strip_prefix("{*").and_then(|n| n.strip_suffix('}')) {
            out.insert(name.to_string(), segs.by_ref().collect::<Vec<_>>().join("/"));
            break;
        }
        let Some(seg) = segs.next() else { break };
        if let Some(name) = t.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
            out.insert(name.to_string(), seg.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_params_follow_the_template() {
        let m = raw_params("/v1/kv/{ns}/{*key}", "/v1/kv/default/a/b%FF");
        assert_eq!(m["ns"], "default");
        assert_eq!(m["key"], "a/b%FF");
        let m = raw_params("/v1/images/{digest}/revoke", "/v1/images/sha256:%FF/revoke");
        assert_eq!(m["digest"], "sha256:%FF");
        assert!(raw_params("/v1/batch", "/v1/batch").is_empty());
    }
}
