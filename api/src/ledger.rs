//! Ledger REST routes: publishers, the image registry, checkpoints, proofs, entries and blocks.
//!
//! Reads of the ledger (image status with its proof, checkpoints, proofs, entries, blocks)
//! answer without a token, as a transparency log's do: everything they return is checked by
//! the client against the node keys it pins, so they reveal nothing a verifier must not see
//! and trust nothing the server says. Writes need the admin token (issue 6 adds the
//! `publisher` role).

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use edgefabric_ledger::entry::{self, Author, Entry, EntryKind};
use edgefabric_ledger::Invalid;
use edgefabric_store::types::Admission;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::server::AppState;

type ApiResult<T> = Result<T, ApiError>;

fn path_err(e: PathRejection) -> ApiError {
    ApiError::bad_request(format!("path: {}", e.body_text()))
}

fn query_err(e: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("query: {}", e.body_text()))
}

/// An entry as JSON: its type, author, signature and fields.
pub fn entry_json(e: &Entry) -> Value {
    let author = match &e.author {
        Author::Genesis => json!("genesis"),
        Author::Node(id) => json!({"node": id}),
        Author::Publisher(p) => json!({"publisher": p}),
    };
    let mut v = json!({"type": e.kind.name(), "author": author, "signature": STANDARD.encode(&e.signature)});
    let fields = match &e.kind {
        EntryKind::NodeAdded { id, site, public_key } => {
            json!({"id": id, "site": site, "public_key": STANDARD.encode(public_key)})
        }
        EntryKind::NodeRemoved { id } => json!({"id": id}),
        EntryKind::PublisherAdded { id, public_key, by } => {
            json!({"id": id, "public_key": STANDARD.encode(public_key), "by": by})
        }
        EntryKind::PublisherRemoved { id, by } => json!({"id": id, "by": by}),
        EntryKind::ImageRegistered { name, digest, publisher } => {
            json!({"name": name, "digest": digest, "publisher": publisher})
        }
        EntryKind::ImageRevoked { digest, reason, by } => {
            json!({"digest": digest, "reason": reason, "by": by})
        }
        EntryKind::Audit(batch) => json!({"records": batch}),
    };
    if let (Some(obj), Some(f)) = (v.as_object_mut(), fields.as_object()) {
        for (k, x) in f {
            obj.insert(k.clone(), x.clone());
        }
    }
    v
}

fn hexes(hs: &[edgefabric_ledger::Hash]) -> Vec<String> {
    hs.iter().map(hex::encode).collect()
}

/// One submitted entry's fate, as the API reports it.
fn admitted(a: Vec<Admission>) -> ApiResult<u64> {
    match a.into_iter().next() {
        Some(Admission::Index(i)) => Ok(i),
        Some(Admission::Refused(reason)) => Err(refused(reason)),
        Some(Admission::Failed(why)) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why))
        }
        None => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no answer for the entry")),
    }
}

fn refused(reason: Invalid) -> ApiError {
    match reason {
        Invalid::Duplicate { message, .. } => ApiError::new(StatusCode::CONFLICT, "conflict", message),
        Invalid::UnknownAuthor { author, .. } => {
            ApiError::new(StatusCode::FORBIDDEN, "permission_denied", format!("{author} is not registered"))
        }
        Invalid::Role { author, kind, .. } => ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!("{author} may not write {kind} entries"),
        ),
        Invalid::Signature { .. } => ApiError::bad_request("signature: does not verify for this entry"),
        other => ApiError::bad_request(other.to_string()),
    }
}

fn decode_key(field: &'static str, b64: &str) -> ApiResult<[u8; 32]> {
    let k = edgefabric_crypto::PublicKey::from_base64(b64)
        .map_err(|e| ApiError::bad_request(format!("{field}: {e}")))?;
    if k.is_weak() {
        return Err(ApiError::bad_request(format!(
            "{field}: a small-order ed25519 key (signatures under it can verify for messages never signed)"
        )));
    }
    Ok(k.to_bytes())
}

fn decode_signature(b64: &str) -> ApiResult<Vec<u8>> {
    let sig = STANDARD
        .decode(b64.trim())
        .map_err(|e| ApiError::bad_request(format!("signature: not base64: {e}")))?;
    if sig.len() != 64 {
        return Err(ApiError::bad_request(format!(
            "signature: {} bytes, an ed25519 signature is 64",
            sig.len()
        )));
    }
    Ok(sig)
}

fn bad(e: edgefabric_ledger::LedgerError) -> ApiError {
    match e {
        edgefabric_ledger::LedgerError::Invalid { field, message } => {
            ApiError::bad_request(format!("{field}: {message}"))
        }
        other => ApiError::bad_request(other.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherBody {
    id: String,
    public_key: String,
}

/// Registers a publisher's key (admin); the same key again is a no-op. Returns (log index,
/// created).
pub async fn add_publisher_core(st: &AppState, id: &str, public_key: [u8; 32]) -> ApiResult<(u64, bool)> {
    entry::check_id("id", id).map_err(bad)?;
    let kind = EntryKind::PublisherAdded { id: id.to_string(), public_key, by: "admin".into() };
    let e = Entry::by_node(st.node.id(), kind, &st.node.options().identity).map_err(bad)?;
    match admitted(st.node.ledger_submit(vec![e]).await?) {
        Ok(i) => Ok((i, true)),
        // The same publisher with the same key again: done already (a retried request).
        Err(err) if err.status == StatusCode::CONFLICT => match st.node.ledger_publisher(id).await? {
            Some(p) if p.public_key == public_key => Ok((p.added_index, false)),
            _ => Err(err),
        },
        Err(err) => Err(err),
    }
}

/// `POST /v1/publishers` (admin): registers a publisher's key in the ledger.
pub(crate) async fn add_publisher(
    State(st): State<Arc<AppState>>,
    crate::http::JsonBody(b): crate::http::JsonBody<PublisherBody>,
) -> ApiResult<Response> {
    let public_key = decode_key("public_key", &b.public_key)?;
    let (i, created) = add_publisher_core(&st, &b.id, public_key).await?;
    let code = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((code, Json(json!({"id": b.id, "log_index": i}))).into_response())
}

/// `GET /v1/publishers/{id}`.
pub async fn get_publisher(
    State(st): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let Path(id) = id.map_err(path_err)?;
    entry::check_id("id", &id).map_err(bad)?;
    let p = st
        .node
        .ledger_publisher(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("publisher {id:?} is not registered")))?;
    Ok(Json(json!({"id": id, "public_key": STANDARD.encode(p.public_key), "log_index": p.added_index})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageBody {
    name: String,
    digest: String,
    publisher: String,
    signature: String,
}

/// Registers an image digest signed by its publisher. The same registration again is
/// idempotent; the digest registered differently is a conflict. Returns (log index, created).
pub async fn register_core(
    st: &AppState,
    name: &str,
    digest: &str,
    publisher: &str,
    signature: Vec<u8>,
) -> ApiResult<(u64, bool)> {
    entry::check_name(name).map_err(bad)?;
    entry::check_digest(digest).map_err(bad)?;
    entry::check_id("publisher", publisher).map_err(bad)?;
    if signature.len() != 64 {
        return Err(ApiError::bad_request(format!(
            "signature: {} bytes, an ed25519 signature is 64",
            signature.len()
        )));
    }
    let e = Entry {
        kind: EntryKind::ImageRegistered {
            name: name.into(),
            digest: digest.into(),
            publisher: publisher.into(),
        },
        author: Author::Publisher(publisher.into()),
        signature,
    };
    match admitted(st.node.ledger_submit(vec![e]).await?) {
        Ok(i) => Ok((i, true)),
        Err(err) if err.status == StatusCode::CONFLICT => match st.node.ledger_image(digest).await? {
            Some(s)
                if s.record.publisher == publisher
                    && s.record.name == name
                    && s.record.revoked_index.is_none() =>
            {
                Ok((s.record.registered_index, false))
            }
            _ => Err(err),
        },
        Err(err) => Err(err),
    }
}

/// `POST /v1/images`: registers an image digest signed by its publisher → 201. The same
/// registration again answers 200 with the original entry's index (idempotent); the digest
/// registered differently answers 409.
pub(crate) async fn register_image(
    State(st): State<Arc<AppState>>,
    crate::http::JsonBody(b): crate::http::JsonBody<ImageBody>,
) -> ApiResult<Response> {
    let signature = decode_signature(&b.signature)?;
    let (i, created) = register_core(&st, &b.name, &b.digest, &b.publisher, signature).await?;
    let code = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((code, Json(json!({"status": "registered", "digest": b.digest, "log_index": i}))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageBatchBody {
    images: Vec<ImageBody>,
}

/// `POST /v1/images/batch` `{"images": [...]}`: many registrations in one request (the app
/// store's bulk import, and the load generator). Each is checked and admitted on its own;
/// the answer lists each one's outcome in order, with its HTTP status.
pub(crate) async fn register_images(
    State(st): State<Arc<AppState>>,
    crate::http::JsonBody(b): crate::http::JsonBody<ImageBatchBody>,
) -> ApiResult<Json<Value>> {
    // 1,000 keeps a batch well inside the 1 MiB JSON body limit (and one block).
    let max = 1000;
    if b.images.is_empty() || b.images.len() > max {
        return Err(ApiError::bad_request(format!("images: give between 1 and {max}")));
    }
    let mut entries = Vec::with_capacity(b.images.len());
    for (i, img) in b.images.iter().enumerate() {
        let at = |e: ApiError| ApiError::bad_request(format!("images[{i}].{}", e.message));
        entry::check_name(&img.name).map_err(bad).map_err(at)?;
        entry::check_digest(&img.digest).map_err(bad).map_err(at)?;
        entry::check_id("publisher", &img.publisher).map_err(bad).map_err(at)?;
        entries.push(Entry {
            kind: EntryKind::ImageRegistered {
                name: img.name.clone(),
                digest: img.digest.clone(),
                publisher: img.publisher.clone(),
            },
            author: Author::Publisher(img.publisher.clone()),
            signature: decode_signature(&img.signature).map_err(at)?,
        });
    }
    let admitted = st.node.ledger_submit(entries).await?;
    let results: Vec<Value> = admitted
        .into_iter()
        .zip(&b.images)
        .map(|(a, img)| match a {
            Admission::Index(i) => json!({"digest": img.digest, "status": 201, "log_index": i}),
            Admission::Refused(r) => {
                let e = refused(r);
                json!({"digest": img.digest, "status": e.status.as_u16(), "error": {"code": e.code, "message": e.message}})
            }
            Admission::Failed(why) => {
                json!({"digest": img.digest, "status": 503, "error": {"code": "unavailable", "message": why}})
            }
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    reason: String,
    /// With `signature`: the image's publisher revokes it (signing the revocation message).
    /// Without: the admin revokes it, recorded by this node.
    #[serde(default)]
    publisher: Option<String>,
    #[serde(default)]
    signature: Option<String>,
}

impl RevokeBody {
    /// Signed by the image's publisher (else it is the admin's revocation).
    pub fn signed(&self) -> bool {
        self.signature.is_some()
    }
}

/// Revokes an image for good: by its publisher (with the publisher's signature over the
/// revocation message) or, without one, by the admin (recorded by this node). Returns the log
/// index.
pub async fn revoke_core(
    st: &AppState,
    digest: &str,
    reason: &str,
    publisher: Option<(&str, Vec<u8>)>,
) -> ApiResult<u64> {
    entry::check_digest(digest).map_err(bad)?;
    let e = match publisher {
        Some((p, signature)) => {
            entry::check_id("publisher", p).map_err(bad)?;
            Entry {
                kind: EntryKind::ImageRevoked { digest: digest.into(), reason: reason.into(), by: p.into() },
                author: Author::Publisher(p.into()),
                signature,
            }
        }
        None => {
            let kind =
                EntryKind::ImageRevoked { digest: digest.into(), reason: reason.into(), by: "admin".into() };
            Entry::by_node(st.node.id(), kind, &st.node.options().identity).map_err(bad)?
        }
    };
    e.validate_fields().map_err(bad)?;
    admitted(st.node.ledger_submit(vec![e]).await?)
}

/// `POST /v1/images/{digest}/revoke` (admin): revokes an image, for good.
pub(crate) async fn revoke_image(
    State(st): State<Arc<AppState>>,
    digest: Result<Path<String>, PathRejection>,
    crate::guard::Authorized(b): crate::guard::Authorized<RevokeBody>,
) -> ApiResult<Response> {
    let Path(digest) = digest.map_err(path_err)?;
    let by = match (&b.publisher, &b.signature) {
        (Some(p), Some(sig)) => Some((p.as_str(), decode_signature(sig)?)),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "publisher and signature: give both, or neither (admin revocation)",
            ))
        }
    };
    let i = revoke_core(&st, &digest, &b.reason, by).await?;
    Ok(Json(json!({"status": "revoked", "digest": digest, "log_index": i})).into_response())
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))], body).into_response()
}

/// One proven entry: the entry, its leaf bytes and its inclusion proof at the checkpoint.
pub struct ProvenEntry {
    pub entry: Entry,
    pub leaf: Vec<u8>,
    pub log_index: u64,
    pub hashes: Vec<edgefabric_ledger::Hash>,
}

/// What `GET /v1/images/{digest}` (and gRPC `GetImage`) answers for a known image.
pub struct ImageView {
    pub revoked: bool,
    pub name: String,
    pub publisher: String,
    /// The revocation if revoked, else the registration.
    pub latest: ProvenEntry,
    /// The registration, when `latest` is the revocation.
    pub registration: Option<ProvenEntry>,
    pub note: String,
    pub checkpoint: edgefabric_ledger::note::Checkpoint,
}

/// An image's record with inclusion proofs against the cosigned checkpoint; `None`: unknown.
pub async fn image_core(st: &AppState, digest: &str) -> ApiResult<Option<ImageView>> {
    entry::check_digest(digest).map_err(bad)?;
    let Some(status) = st.node.ledger_image(digest).await? else { return Ok(None) };
    let (note, cp) = st.node.ledger_checkpoint().await?;
    let prove = |index: u64, e: Entry| {
        // The checkpoint is of this node's applied head: no second read barrier.
        let hashes = st.node.ledger_inclusion_proof_applied(index, cp.size)?;
        let leaf = e.leaf_bytes().map_err(bad)?;
        Ok::<_, ApiError>(ProvenEntry { entry: e, leaf, log_index: index, hashes })
    };
    let registration = prove(status.record.registered_index, status.registration.clone())?;
    let (latest, registration) = match (status.revocation, status.record.revoked_index) {
        (Some(rev), Some(i)) => (prove(i, rev)?, Some(registration)),
        _ => (registration, None),
    };
    Ok(Some(ImageView {
        revoked: registration.is_some(),
        name: status.record.name,
        publisher: status.record.publisher,
        latest,
        registration,
        note,
        checkpoint: cp,
    }))
}

fn proven_json(p: &ProvenEntry, cp: &edgefabric_ledger::note::Checkpoint) -> Value {
    json!({
        "entry": entry_json(&p.entry),
        "leaf_base64": STANDARD.encode(&p.leaf),
        "inclusion_proof": {
            "log_index": p.log_index, "tree_size": cp.size, "root_hash": hex::encode(cp.root), "hashes": hexes(&p.hashes),
        },
    })
}

/// `GET /v1/images/{digest}`: the image's status, its entry and leaf, an RFC 6962 inclusion
/// proof against the checkpoint's root, and the cosigned checkpoint. For a revoked image the
/// entry is the revocation (and `registration` holds the registration with its own proof).
pub async fn get_image(
    State(st): State<Arc<AppState>>,
    digest: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(digest) = digest.map_err(path_err)?;
    let Some(v) = image_core(&st, &digest).await? else {
        let body = json!({
            "status": "unknown",
            "digest": digest,
            "error": {"code": "not_found", "message": format!("image {digest} is not registered")},
        });
        return Ok((StatusCode::NOT_FOUND, Json(body)).into_response());
    };
    let mut body = proven_json(&v.latest, &v.checkpoint);
    body["status"] = json!(if v.revoked { "revoked" } else { "registered" });
    if let Some(r) = &v.registration {
        body["registration"] = proven_json(r, &v.checkpoint);
    }
    body["digest"] = json!(digest);
    body["name"] = json!(v.name);
    body["publisher"] = json!(v.publisher);
    body["checkpoint"] = json!(v.note);
    Ok(Json(body).into_response())
}

/// `GET /v1/ledger/checkpoint`: the latest checkpoint as a C2SP signed note, with every
/// cosignature collected.
pub async fn checkpoint(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    Ok(text(st.node.ledger_checkpoint().await?.0))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    from: u64,
    to: Option<u64>,
}

/// `GET /v1/ledger/proof/consistency?from=N&to=M` (`to` defaults to the current size).
pub async fn consistency(
    State(st): State<Arc<AppState>>,
    q: Result<Query<ConsistencyQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = q.map_err(query_err)?;
    let to = match q.to {
        Some(t) => t,
        None => st.node.ledger_head().await?.log_size,
    };
    let (hashes, r1, r2) = st.node.ledger_consistency_proof(q.from, to).await?;
    Ok(Json(json!({
        "from": q.from, "to": to, "root_from": hex::encode(r1), "root_to": hex::encode(r2), "hashes": hexes(&hashes),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    index: u64,
    size: Option<u64>,
}

/// `GET /v1/ledger/proof/inclusion?index=N[&size=M]`.
pub async fn inclusion(
    State(st): State<Arc<AppState>>,
    q: Result<Query<InclusionQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = q.map_err(query_err)?;
    let size = match q.size {
        Some(s) => s,
        None => st.node.ledger_head().await?.log_size,
    };
    let hashes = st.node.ledger_inclusion_proof(q.index, size).await?;
    let r = st.node.ledger_root(size).await?;
    Ok(Json(
        json!({"log_index": q.index, "tree_size": size, "root_hash": hex::encode(r), "hashes": hexes(&hashes)}),
    ))
}

/// Who reads a ledger route that can show audit content (who accessed what): `None` without a
/// token; else the token's subject and whether it has the `auditor` role (or `admin`). A token
/// that does not verify is a 401 (it was meant to be used), recorded like any denied request.
/// Key-bound tokens must sign their requests, which these public routes do not check: they
/// read audit content through `/v1/audit`.
struct AuditReader {
    subject: String,
    auditor: bool,
}

async fn audit_reader(
    st: &AppState,
    headers: &axum::http::HeaderMap,
    source: Option<std::net::IpAddr>,
    target: &crate::auth::Target,
) -> ApiResult<Option<AuditReader>> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let who = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthenticated("Authorization header must be 'Bearer <token>'"))
        .and_then(|token| st.principal(token).map_err(|e| ApiError::unauthenticated(format!("token: {e}"))))
        .and_then(|who| {
            if who.cnf.is_some() {
                return Err(ApiError::unauthenticated(
                    "a token bound to a client key reads audit records through /v1/audit (signed)",
                ));
            }
            Ok(who)
        });
    match who {
        Ok(who) => {
            let auditor = crate::auth::allows(&who.roles, &crate::auth::Permission::Audit);
            Ok(Some(AuditReader { subject: who.subject, auditor }))
        }
        Err(refusal) => {
            record_read(st, crate::server::ANONYMOUS, target, false, refusal.status.as_u16(), source).await?;
            Err(refusal)
        }
    }
}

/// Records a read of audit content through the ledger routes (the auditor's reads leave a trace
/// here as they do through `/v1/audit`), or its refusal (counted within the denied-request
/// budget of its source, as every refusal is).
async fn record_read(
    st: &AppState,
    actor: &str,
    target: &crate::auth::Target,
    allowed: bool,
    status: u16,
    source: Option<std::net::IpAddr>,
) -> ApiResult<()> {
    if !allowed && st.denial_counted(source, actor) {
        return Ok(());
    }
    st.record(actor, vec![target.clone()], allowed, status).await
}

fn read_target(what: String) -> crate::auth::Target {
    crate::auth::Target { action: "ledger.read-audit".into(), ns: String::new(), key: Some(what) }
}

/// What a reader without the `auditor` role sees of an audit entry: that it is one, who signed
/// it, how many records it holds and its leaf hash (so the block's entry root and the log's
/// proofs can still be checked), but not one record.
fn redacted_audit_json(e: &Entry, leaf_hash: &[u8]) -> Value {
    let author = match &e.author {
        Author::Node(id) => json!({"node": id}),
        _ => json!(null),
    };
    let count = match &e.kind {
        EntryKind::Audit(batch) => batch.len(),
        _ => 0,
    };
    json!({
        "type": e.kind.name(), "author": author, "record_count": count,
        "leaf_hash": hex::encode(leaf_hash),
        "redacted": "audit records are shown to the auditor role only",
    })
}

fn forbid_audit(reader: &Option<AuditReader>) -> ApiError {
    match reader {
        None => ApiError::unauthenticated(
            "this entry holds audit records: they need a token with the role auditor",
        ),
        Some(_) => ApiError::new(StatusCode::FORBIDDEN, "permission_denied", "this needs the role auditor"),
    }
}

/// `GET /v1/ledger/entries/{index}`: public, except an entry of audit records, which needs the
/// `auditor` role.
pub async fn get_entry(
    State(st): State<Arc<AppState>>,
    parts: axum::http::request::Parts,
    index: Result<Path<u64>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let Path(index) = index.map_err(path_err)?;
    let (source, headers) = (crate::tls::peer_ip(&parts.extensions), &parts.headers);
    let target = read_target(format!("entry {index}"));
    let reader = audit_reader(&st, headers, source, &target).await?;
    let (e, leaf) = st.node.ledger_entry(index).await?;
    if matches!(e.kind, EntryKind::Audit(_)) {
        match &reader {
            Some(r) if r.auditor => record_read(&st, &r.subject, &target, true, 200, source).await?,
            _ => {
                let refusal = forbid_audit(&reader);
                let actor = reader.as_ref().map_or(crate::server::ANONYMOUS, |r| r.subject.as_str());
                record_read(&st, actor, &target, false, refusal.status.as_u16(), source).await?;
                return Err(refusal);
            }
        }
    }
    Ok(Json(json!({"log_index": index, "entry": entry_json(&e), "leaf_base64": STANDARD.encode(leaf)})))
}

/// `GET /v1/ledger/blocks/{height}`: the header and its entries.
/// Audit entries are shown in full to the `auditor` role only; others see them redacted
/// (`redacted_audit_json`).
pub async fn get_block(
    State(st): State<Arc<AppState>>,
    parts: axum::http::request::Parts,
    height: Result<Path<u64>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let Path(height) = height.map_err(path_err)?;
    let (source, headers) = (crate::tls::peer_ip(&parts.extensions), &parts.headers);
    let target = read_target(format!("block {height}"));
    let reader = audit_reader(&st, headers, source, &target).await?;
    let auditor = reader.as_ref().is_some_and(|r| r.auditor);
    let b = st.node.ledger_block(height).await?;
    if let Some(r) = reader.as_ref().filter(|r| r.auditor) {
        if b.entries.iter().any(|e| matches!(e.kind, EntryKind::Audit(_))) {
            record_read(&st, &r.subject, &target, true, 200, source).await?;
        }
    }
    let h = &b.header;
    let entries = b
        .entries
        .iter()
        .map(|e| match &e.kind {
            EntryKind::Audit(_) if !auditor => {
                let leaf = e.leaf_bytes().map_err(bad)?;
                Ok(redacted_audit_json(e, &edgefabric_ledger::merkle::leaf_hash(&leaf)))
            }
            _ => Ok(entry_json(e)),
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(json!({
        "height": h.height, "hash": hex::encode(h.hash().map_err(bad)?), "prev": hex::encode(h.prev),
        "time_ms": h.time_ms, "proposer": h.proposer, "entry_count": h.entry_count,
        "entry_root": hex::encode(h.entry_root), "log_size": h.log_size, "log_root": hex::encode(h.log_root),
        "first_index": h.first_index(),
        "entries": entries,
    })))
}

/// `GET /v1/ledger/status`: this node's view of the ledger.
pub async fn status(State(st): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let health = match st.node.ledger_health() {
        edgefabric_store::ledger::Health::Verified => json!("verified"),
        edgefabric_store::ledger::Health::Verifying => json!("verifying"),
        edgefabric_store::ledger::Health::Corrupt(why) => json!({"corrupt": why}),
    };
    let head = st.node.ledger_local_head();
    Ok(Json(json!({
        "health": health,
        "height": head.as_ref().map(|h| h.height),
        "log_size": head.as_ref().map_or(0, |h| h.log_size),
        "log_root": head.as_ref().map(|h| hex::encode(h.log_root)),
        "head_hash": head.as_ref().map(|h| hex::encode(h.hash)),
        "rejected_blocks": st.node.ledger_rejected_blocks(),
        "origin": st.node.options().ledger_origin,
    })))
}
