//! The auditors' surface: `GET /v1/audit` (role `auditor`), the gRPC `Audit` service, and the
//! `audit query` / `audit verify` commands.
//!
//! Every record comes with its signed ledger entry (the leaf) and an inclusion proof against
//! the checkpoint in the same answer, so an auditor can check each one offline against the
//! node keys it pins: `audit verify` trusts nothing the server states beside those proofs.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::Subcommand;
use edgefabric_ledger::audit::{AuditQuery, Cursor, MAX_LIMIT};
use edgefabric_ledger::entry::AuditRecord;
use edgefabric_ledger::verify::{self, Presented};
use edgefabric_store::node::Consistency;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};
use tonic::{Request, Response, Status};

use crate::auth::{Permission, Target};
use crate::client::{encode_segment, Client, ClientOpts};
use crate::error::ApiError;
use crate::grpc::{pb, KvService};
use crate::server::AppState;

/// Default page size.
const DEFAULT_LIMIT: usize = 100;

/// A record and where it sits: the ledger entry (a batch of the node's records) and its place there.
pub struct FoundRecord {
    pub log_index: u64,
    pub position: u32,
    pub record: AuditRecord,
}

/// A ledger entry with what proves it: its leaf bytes and an inclusion proof against the answer's
/// checkpoint. A page carries each entry once, however many of its records the page lists (a
/// batch holds up to hundreds of records; repeating its leaf and proof per record made pages
/// of a thousand records megabytes long).
pub struct ProvenEntry {
    pub log_index: u64,
    pub leaf: Vec<u8>,
    pub proof: Vec<edgefabric_ledger::Hash>,
}

pub struct AuditAnswer {
    pub records: Vec<FoundRecord>,
    /// In log order, one per distinct `log_index` of `records`.
    pub entries: Vec<ProvenEntry>,
    pub next: Option<String>,
    pub checkpoint_note: String,
    pub checkpoint: edgefabric_ledger::note::Checkpoint,
}

/// Runs a query and proves each record against one checkpoint, taken after the query (so it
/// covers every record returned).
pub async fn query_core(st: &AppState, q: AuditQuery) -> Result<AuditAnswer, ApiError> {
    let page = st.node.audit_query(q, Consistency::Linearizable).await?;
    let (note, cp) = st.node.ledger_checkpoint().await?;
    let mut records = Vec::with_capacity(page.records.len());
    // Hits of one batch share its entry: encode and prove each entry once.
    let mut entries = std::collections::BTreeMap::new();
    for hit in page.records {
        if let std::collections::btree_map::Entry::Vacant(slot) = entries.entry(hit.index) {
            let proof = st.node.ledger_inclusion_proof_applied(hit.index, cp.size)?;
            let leaf = hit.entry.leaf_bytes().map_err(|e| {
                ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("encoding entry {}: {e}", hit.index),
                )
            })?;
            slot.insert(ProvenEntry { log_index: hit.index, leaf, proof });
        }
        records.push(FoundRecord { log_index: hit.index, position: hit.pos, record: hit.record });
    }
    Ok(AuditAnswer {
        records,
        entries: entries.into_values().collect(),
        next: page.next.map(|c| c.to_string()),
        checkpoint_note: note,
        checkpoint: cp,
    })
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: u64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// A time bound: RFC 3339 (`2026-11-26T10:00:00Z`) or milliseconds since the Unix epoch.
fn parse_time(field: &str, s: &str) -> Result<u64, ApiError> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|e| {
        ApiError::bad_request(format!(
            "{field}: {s:?} is neither RFC 3339 nor milliseconds since the epoch: {e}"
        ))
    })?;
    u64::try_from(t.timestamp_millis()).map_err(|_| ApiError::bad_request(format!("{field}: before 1970")))
}

fn bad_filter(field: &str, v: &Option<String>) -> Result<Option<String>, ApiError> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) if s.len() > 256 || s.chars().any(char::is_control) => {
            Err(ApiError::bad_request(format!("{field}: at most 256 characters, no control characters")))
        }
        Some(s) => Ok(Some(s.to_string())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    ns: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    result: Option<String>,
    from: Option<String>,
    to: Option<String>,
    /// Text, so that an empty `limit=` means the default like the other empty parameters.
    limit: Option<String>,
    /// The previous page's `next`.
    after: Option<String>,
}

fn build_query(p: AuditParams) -> Result<AuditQuery, ApiError> {
    let result = bad_filter("result", &p.result)?;
    if let Some(r) = &result {
        if r != "allowed" && r != "denied" {
            return Err(ApiError::bad_request(format!("result: {r:?} is not \"allowed\" or \"denied\"")));
        }
    }
    let limit = match p.limit.as_deref() {
        None | Some("") => DEFAULT_LIMIT,
        Some(s) => s.parse().map_err(|_| ApiError::bad_request(format!("limit: {s:?} is not a number")))?,
    };
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!("limit: must be between 1 and {MAX_LIMIT}")));
    }
    // Empty parameters (`?ns=&from=`, as docs/api.md writes the route) mean "not given".
    let given = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_string);
    let from_ms = given(&p.from).map(|s| parse_time("from", &s)).transpose()?.unwrap_or(0);
    let to_ms = given(&p.to).map(|s| parse_time("to", &s)).transpose()?.unwrap_or(u64::MAX);
    if from_ms > to_ms {
        return Err(ApiError::bad_request("from: is after to"));
    }
    let after = match p.after.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Cursor::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?),
    };
    Ok(AuditQuery {
        ns: p.ns.filter(|s| !s.is_empty()),
        actor: bad_filter("actor", &p.actor)?,
        action: bad_filter("action", &p.action)?,
        result,
        from_ms,
        to_ms,
        after,
        limit,
    })
}

/// One record as REST shows it (docs/api.md); its proof is in the page's `entries`.
fn record_json(r: &FoundRecord) -> Value {
    let a = &r.record;
    let mut v = json!({
        "actor": a.actor, "node": a.node, "ns": a.ns, "action": a.action, "result": a.result,
        "status": a.status, "time": rfc3339(a.time_ms), "log_index": r.log_index, "position": r.position,
        "instance": a.instance, "seq": a.seq,
    });
    if let Some(k) = &a.key {
        v["key"] = json!(k);
    }
    if let Some(h) = &a.key_hash {
        v["key_hash"] = json!(h);
    }
    v
}

/// `GET /v1/audit?ns=&actor=&action=&result=&from=&to=&limit=&after=` (role `auditor`).
pub async fn query(
    State(st): State<Arc<AppState>>,
    q: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = q.map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))?;
    let a = query_core(&st, build_query(p)?).await?;
    let records: Vec<Value> = a.records.iter().map(record_json).collect();
    // Keyed by log index (as text: JSON keys are strings), each with the leaf and the proof every
    // record at that index is verified with.
    let entries: serde_json::Map<String, Value> = a
        .entries
        .iter()
        .map(|e| {
            let v = json!({
                "leaf_base64": STANDARD.encode(&e.leaf),
                "inclusion_proof": {
                    "log_index": e.log_index, "tree_size": a.checkpoint.size,
                    "root_hash": hex::encode(a.checkpoint.root),
                    "hashes": e.proof.iter().map(hex::encode).collect::<Vec<_>>(),
                },
            });
            (e.log_index.to_string(), v)
        })
        .collect();
    Ok(Json(json!({
        "records": records, "entries": entries, "next": a.next, "checkpoint": a.checkpoint_note,
    })))
}

pub fn service(state: Arc<AppState>) -> pb::audit_server::AuditServer<AuditService> {
    pb::audit_server::AuditServer::new(AuditService { kv: KvService::new(state) })
}

pub struct AuditService {
    kv: KvService,
}

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    async fn query(
        &self,
        req: Request<pb::AuditQueryRequest>,
    ) -> Result<Response<pb::AuditQueryResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = crate::grpc::Caller::new(meta, &ext);
        let targets = vec![Target::new("audit.query", "", None)];
        self.kv
            .audited(&meta, &[Permission::Audit], targets, false, |_| async move {
                let opt = |s: String| (!s.is_empty()).then_some(s);
                let q = build_query(AuditParams {
                    ns: opt(r.ns),
                    actor: opt(r.actor),
                    action: opt(r.action),
                    result: opt(r.result),
                    from: (r.from_ms != 0).then(|| r.from_ms.to_string()),
                    to: (r.to_ms != 0).then(|| r.to_ms.to_string()),
                    limit: (r.limit != 0).then(|| r.limit.to_string()),
                    after: opt(r.after),
                })?;
                let a = query_core(&self.kv.state, q).await?;
                let cp = &a.checkpoint;
                let records = a
                    .records
                    .into_iter()
                    .map(|p| pb::AuditRecordView {
                        actor: p.record.actor,
                        node: p.record.node,
                        ns: p.record.ns,
                        key: p.record.key,
                        key_hash: p.record.key_hash,
                        action: p.record.action,
                        result: p.record.result,
                        status: u32::from(p.record.status),
                        time: rfc3339(p.record.time_ms),
                        log_index: p.log_index,
                        position: p.position,
                        instance: p.record.instance,
                        seq: p.record.seq,
                    })
                    .collect();
                let entries = a
                    .entries
                    .into_iter()
                    .map(|e| pb::AuditEntry {
                        log_index: e.log_index,
                        leaf: e.leaf,
                        inclusion_proof: Some(pb::InclusionProof {
                            log_index: e.log_index,
                            tree_size: cp.size,
                            root_hash: cp.root.to_vec(),
                            hashes: e.proof.iter().map(|h| h.to_vec()).collect(),
                        }),
                    })
                    .collect();
                Ok(Response::new(pb::AuditQueryResponse {
                    records,
                    entries,
                    next: a.next,
                    checkpoint: a.checkpoint_note,
                }))
            })
            .await
    }
}

#[derive(clap::Args, Clone)]
pub struct Filters {
    #[arg(long)]
    ns: Option<String>,
    /// A token subject.
    #[arg(long)]
    actor: Option<String>,
    /// e.g. kv.put, kv.get, kv.delete, kv.scan, ns.put, token.issue.
    #[arg(long)]
    action: Option<String>,
    /// allowed or denied.
    #[arg(long)]
    result: Option<String>,
    /// RFC 3339 or milliseconds since the epoch (inclusive).
    #[arg(long)]
    from: Option<String>,
    #[arg(long)]
    to: Option<String>,
    /// Records per request (1..=1000).
    #[arg(long, default_value_t = 500)]
    page: usize,
    /// Stop after this many records (default: all that match).
    #[arg(long)]
    max: Option<usize>,
}

impl Filters {
    /// Every record of one namespace, in pages of 500.
    pub fn for_ns(ns: &str) -> Filters {
        Filters {
            ns: Some(ns.to_string()),
            actor: None,
            action: None,
            result: None,
            from: None,
            to: None,
            page: 500,
            max: None,
        }
    }

    fn path(&self, after: Option<&str>) -> String {
        let mut q = vec![format!("limit={}", self.page)];
        for (k, v) in [
            ("ns", &self.ns),
            ("actor", &self.actor),
            ("action", &self.action),
            ("result", &self.result),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if let Some(v) = v {
                q.push(format!("{k}={}", encode_segment(v)));
            }
        }
        if let Some(a) = after {
            q.push(format!("after={}", encode_segment(a)));
        }
        format!("/v1/audit?{}", q.join("&"))
    }
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// List audit records (role auditor), one JSON object per line, following pages.
    Query {
        #[command(flatten)]
        filters: Filters,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List and verify audit records offline: each one's entry is signed by the node it names
    /// and included in a checkpoint signed by at least --min-signatures pinned node keys, and
    /// what the server states about it matches the signed entry. Exits 0 only if all verify.
    Verify {
        #[command(flatten)]
        filters: Filters,
        /// trust.json: the node keys to pin.
        #[arg(long)]
        trust: PathBuf,
        #[arg(long, default_value_t = 1)]
        min_signatures: usize,
        #[command(flatten)]
        client: ClientOpts,
    },
}

pub async fn run(cmd: AuditCmd) -> Result<i32> {
    // Without an end, the range ends now: the listing's own requests are audited too, and must
    // not keep adding pages to it.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let fix = |mut f: Filters| {
        f.to.get_or_insert_with(|| now.to_string());
        f
    };
    let cmd = match cmd {
        AuditCmd::Query { filters, client } => AuditCmd::Query { filters: fix(filters), client },
        AuditCmd::Verify { filters, trust, min_signatures, client } => {
            AuditCmd::Verify { filters: fix(filters), trust, min_signatures, client }
        }
    };
    match cmd {
        AuditCmd::Query { filters, client } => {
            let c = Client::new(&client)?;
            let mut n = 0usize;
            each_page(&c, &filters, |page| {
                for r in page["records"].as_array().into_iter().flatten() {
                    println!("{r}");
                    n += 1;
                }
                Ok(filters.max.is_none_or(|m| n < m))
            })
            .await?;
            eprintln!("{n} records");
            Ok(0)
        }
        AuditCmd::Verify { filters, trust, min_signatures, client } => {
            let (keys, origin) = crate::ledger_cli::load_trust(&trust)?;
            if min_signatures == 0 || min_signatures > keys.len() {
                bail!(
                    "--min-signatures: must be between 1 and the {} keys pinned in {}",
                    keys.len(),
                    trust.display()
                );
            }
            let c = Client::new(&client)?;
            let (mut n, mut bad) = (0usize, 0usize);
            let mut sizes = std::collections::BTreeSet::new();
            each_page(&c, &filters, |page| {
                let note = page["checkpoint"].as_str().context("checkpoint: missing")?;
                // Each entry's signatures and proof are checked once per page, whatever the
                // number of its records listed.
                let mut checked = std::collections::HashMap::new();
                for r in page["records"].as_array().into_iter().flatten() {
                    n += 1;
                    match verify_one(r, page, note, &keys, origin.as_deref(), min_signatures, &mut checked) {
                        Ok(size) => {
                            sizes.insert(size);
                        }
                        Err(e) => {
                            bad += 1;
                            println!("FAILED: record at log index {}: {e:#}", r["log_index"]);
                        }
                    }
                }
                Ok(filters.max.is_none_or(|m| n < m))
            })
            .await?;
            if bad > 0 {
                println!("FAILED: {bad} of {n} audit records did not verify");
                return Ok(1);
            }
            println!(
                "OK: {n} audit records verified (signed by their nodes, included in checkpoints of size {})",
                sizes.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
            );
            Ok(0)
        }
    }
}

/// Fetches pages until `next` is null or `f` says stop.
async fn each_page(c: &Client, filters: &Filters, mut f: impl FnMut(&Value) -> Result<bool>) -> Result<()> {
    let mut after: Option<String> = None;
    loop {
        let page = c.json(Method::GET, &filters.path(after.as_deref()), None).await?;
        if !f(&page)? {
            return Ok(());
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return Ok(()),
        }
    }
}

/// Verifies one record against its entry in the page's `entries`; returns the checkpoint size
/// it is proven under. `checked` caches the entries of this page already proven.
fn verify_one(
    r: &Value,
    page: &Value,
    note: &str,
    keys: &[edgefabric_ledger::note::TrustedKey],
    origin: Option<&str>,
    min: usize,
    checked: &mut std::collections::HashMap<u64, verify::Proven>,
) -> Result<u64> {
    let index = r["log_index"].as_u64().context("log_index: missing")?;
    let proven = match checked.entry(index) {
        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(verify_entry_of(page, index, note, keys, origin, min)?)
        }
    };
    let pos = r["position"].as_u64().context("position: missing")?;
    let a = verify::audit_record(&proven.entry, usize::try_from(pos).context("position")?, keys)?;
    // What the server states must be what the node signed.
    let stated = [
        ("actor", json!(a.actor)),
        ("node", json!(a.node)),
        ("ns", json!(a.ns)),
        ("action", json!(a.action)),
        ("result", json!(a.result)),
        ("status", json!(a.status)),
        ("time", json!(rfc3339(a.time_ms))),
        ("seq", json!(a.seq)),
        ("instance", json!(a.instance)),
        ("key", a.key.as_ref().map_or(Value::Null, |k| json!(k))),
        ("key_hash", a.key_hash.as_ref().map_or(Value::Null, |k| json!(k))),
    ];
    for (field, signed) in stated {
        if r[field] != signed {
            bail!("{field}: the server says {} but the signed entry says {signed}", r[field]);
        }
    }
    Ok(proven.checkpoint.size)
}

/// Checks the signatures and the inclusion proof of the entry at `index` in a page's `entries`.
fn verify_entry_of(
    page: &Value,
    index: u64,
    note: &str,
    keys: &[edgefabric_ledger::note::TrustedKey],
    origin: Option<&str>,
    min: usize,
) -> Result<verify::Proven> {
    let e = &page["entries"][index.to_string()];
    if e.is_null() {
        bail!("entries[\"{index}\"]: missing");
    }
    let leaf =
        STANDARD.decode(e["leaf_base64"].as_str().context("leaf_base64: missing")?).context("leaf_base64")?;
    let p = &e["inclusion_proof"];
    let hex32 = |v: &Value, what: &str| -> Result<Vec<u8>> {
        hex::decode(v.as_str().with_context(|| format!("{what}: missing"))?)
            .with_context(|| format!("{what}: not hex"))
    };
    let hashes = p["hashes"]
        .as_array()
        .context("inclusion_proof.hashes: missing")?
        .iter()
        .map(|h| hex32(h, "inclusion_proof.hashes[]"))
        .collect::<Result<Vec<_>>>()?;
    let root = hex32(&p["root_hash"], "inclusion_proof.root_hash")?;
    if p["log_index"].as_u64() != Some(index) {
        bail!("the proof is for another log index");
    }
    let presented = Presented {
        leaf: &leaf,
        log_index: index,
        tree_size: p["tree_size"].as_u64().context("inclusion_proof.tree_size: missing")?,
        root_hash: Some(&root),
        proof: &hashes,
        checkpoint: note,
    };
    Ok(verify::verify_entry(keys, origin, min, &presented)?)
}
