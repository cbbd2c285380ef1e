//! The public gRPC KV service: the same operations and errors as the REST routes.

use std::sync::Arc;

use edgefabric_store::node::Consistency;
use edgefabric_store::types::{Command, Op, Response as SmResponse, MAX_BATCH_OPS};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::auth::{Permission, Target};
use crate::error::ApiError;
use crate::server::{AppState, ANONYMOUS};

pub mod pb {
    tonic::include_proto!("edgefabric.v1");
}

pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("edgefabric_descriptor");

pub fn service(state: Arc<AppState>) -> pb::kv_server::KvServer<KvService> {
    pb::kv_server::KvServer::new(KvService { state })
}

pub struct KvService {
    pub(crate) state: Arc<AppState>,
}

/// Who is calling: the call's metadata (its token) and the address it came from (for the
/// budget of denials recorded one by one, `server::DeniedLimiter`, as REST has).
pub(crate) struct Caller {
    meta: MetadataMap,
    source: Option<std::net::IpAddr>,
}

impl Caller {
    pub(crate) fn new(meta: MetadataMap, ext: &tonic::Extensions) -> Caller {
        use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
        let addr = ext
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .or_else(|| ext.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.get_ref().remote_addr()));
        Caller { meta, source: addr.map(|a| a.ip()) }
    }
}

impl KvService {
    pub fn new(state: Arc<AppState>) -> KvService {
        KvService { state }
    }

    /// Authenticates the call (the admin token or an access token) and checks that its roles
    /// grant every permission in `needs` — the same rules as the REST routes (`auth.rs`).
    /// Returns the subject, or the actor to record and the refusal.
    fn authorize(&self, meta: &MetadataMap, needs: &[Permission]) -> Result<String, (String, Status)> {
        let anon = |s: Status| (ANONYMOUS.to_string(), s);
        let Some(v) = meta.get("authorization") else {
            return Err(anon(Status::unauthenticated("missing authorization: Bearer <token> metadata")));
        };
        let Some(token) = v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim) else {
            return Err(anon(Status::unauthenticated("authorization must be 'Bearer <token>'")));
        };
        let who = self.state.principal(token).map_err(|e| anon(Status::unauthenticated(e.to_string())))?;
        if who.cnf.is_some() {
            // Request signing is REST-only for now; a key-bound token must not work unsigned.
            return Err((
                who.subject,
                Status::unauthenticated("this token is bound to a client key: use signed REST requests"),
            ));
        }
        for p in needs {
            if !crate::auth::allows(&who.roles, p) {
                return Err((who.subject, Status::permission_denied(format!("this needs the role {p}"))));
            }
        }
        Ok(who.subject)
    }

    /// Runs one call: authorization, then `call` if allowed, then the audit record (durable
    /// before the answer, as for REST; a call that cannot be recorded answers `unavailable`).
    /// `mutates`: the call may change state, so it is recorded as received (status 0) before
    /// it runs, as REST does.
    pub(crate) async fn audited<T, F, Fut>(
        &self,
        caller: &Caller,
        needs: &[Permission],
        targets: Vec<Target>,
        mutates: bool,
        call: F,
    ) -> Result<Response<T>, Status>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let started = std::time::Instant::now();
        let action = targets.first().map_or_else(|| "unknown".to_string(), |t| t.action.clone());
        let (actor, out, allowed) = match self.authorize(&caller.meta, needs) {
            Ok(subject) if mutates && crate::auth::is_kv_write(&targets) => {
                // A KV write's received record need not be on disk before the proposal: the
                // store orders it before the write (`AppState::received_then`).
                match self.state.received_then(&subject, targets.clone(), call(subject.clone())).await {
                    Ok(out) => (subject, out, true),
                    Err(e) => {
                        return Err(Status::unavailable(format!(
                            "the access could not be recorded in the audit trail: {}",
                            e.message
                        )))
                    }
                }
            }
            Ok(subject) => {
                if mutates {
                    if let Err(e) =
                        self.state.record(&subject, targets.clone(), true, crate::auth::RECEIVED).await
                    {
                        return Err(Status::unavailable(format!(
                            "the access could not be recorded in the audit trail: {}",
                            e.message
                        )));
                    }
                }
                (subject.clone(), call(subject).await, true)
            }
            Err((actor, refusal)) => {
                // Past its source's and actor's budget, a denial is counted into an aggregate
                // record instead of a record of its own (as REST: `DeniedLimiter`).
                if self.state.denial_counted(caller.source, &actor) {
                    return Err(refusal);
                }
                (actor, Err(refusal), false)
            }
        };
        let status = match &out {
            Ok(_) => 200,
            Err(s) => http_status(s.code()),
        };
        let service = match action.split('.').next() {
            Some("kv") => "edgefabric.v1.Kv",
            Some("cluster") => "edgefabric.v1.Cluster",
            Some("audit") => "edgefabric.v1.Audit",
            _ => "edgefabric.v1.Ledger",
        };
        self.state.grpc_metrics.observe(&action, service, status, started.elapsed());
        if let Err(e) = self.state.record(&actor, targets, allowed, status).await {
            tracing::error!(error = %e.message, "an access could not be recorded in the audit trail");
            return Err(Status::unavailable(format!(
                "the access could not be recorded in the audit trail: {}",
                e.message
            )));
        }
        out
    }

    async fn write(&self, ops: Vec<Op>) -> Result<(u64, Vec<bool>), Status> {
        match self.state.node.propose(Command::Batch(ops)).await.map_err(ApiError::from)? {
            SmResponse::Written { revision, existed } => Ok((revision, existed)),
            SmResponse::Conflict { key, expected, current } => {
                Err(ApiError::from(edgefabric_store::Error::Conflict { key, expected, current }).into())
            }
            SmResponse::Rejected(m) => Err(Status::invalid_argument(m)),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Status> {
        let max = self.state.node.options().max_value_bytes;
        edgefabric_store::types::validate_value(value, max).map_err(|e| ApiError::from(e).into())
    }
}

/// The HTTP status an audit record shows for a gRPC outcome (the REST route's for the same).
fn http_status(code: tonic::Code) -> u16 {
    use tonic::Code::*;
    match code {
        Ok => 200,
        InvalidArgument | OutOfRange => 400,
        Unauthenticated => 401,
        PermissionDenied => 403,
        NotFound => 404,
        AlreadyExists | Aborted | FailedPrecondition => 409,
        ResourceExhausted => 429,
        Cancelled => 499,
        Unimplemented => 501,
        Unavailable => 503,
        DeadlineExceeded => 504,
        _ => 500,
    }
}

fn consistency(stale: bool) -> Consistency {
    if stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Caller::new(meta, &ext);
        let targets = vec![Target::new("kv.put", &r.ns, Some(&r.key))];
        self.audited(&meta, &[Permission::Write(r.ns.clone())], targets, true, |_| async move {
            self.check_value(&r.value)?;
            let (revision, _) =
                self.write(vec![Op::Put { ns: r.ns, key: r.key, value: r.value, cas: r.cas }]).await?;
            Ok(Response::new(pb::PutResponse { revision }))
        })
        .await
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Caller::new(meta, &ext);
        let targets = vec![Target::new("kv.get", &r.ns, Some(&r.key))];
        self.audited(&meta, &[Permission::Read(r.ns.clone())], targets, false, |_| async move {
            let rec =
                self.state.node.get(&r.ns, &r.key, consistency(r.stale)).await.map_err(ApiError::from)?;
            Ok(Response::new(match rec {
                Some(rec) => pb::GetResponse { found: true, value: rec.value, revision: rec.revision },
                None => pb::GetResponse { found: false, value: vec![], revision: 0 },
            }))
        })
        .await
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Caller::new(meta, &ext);
        let targets = vec![Target::new("kv.delete", &r.ns, Some(&r.key))];
        self.audited(&meta, &[Permission::Write(r.ns.clone())], targets, true, |_| async move {
            let (revision, existed) =
                self.write(vec![Op::Delete { ns: r.ns, key: r.key, cas: r.cas }]).await?;
            Ok(Response::new(pb::DeleteResponse {
                revision,
                deleted: existed.first().copied().unwrap_or(false),
            }))
        })
        .await
    }

    async fn scan(&self, req: Request<pb::ScanRequest>) -> Result<Response<pb::ScanResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Caller::new(meta, &ext);
        let targets = vec![Target::new("kv.scan", &r.ns, None)];
        let needs = [Permission::Read(r.ns.clone())];
        self.audited(&meta, &needs, targets, false, |_| self.scan_inner(r)).await
    }

    async fn batch(&self, req: Request<pb::BatchRequest>) -> Result<Response<pb::BatchResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Caller::new(meta, &ext);
        let (mut needs, mut targets) = (vec![], vec![]);
        // As on REST: past the limit the request is refused as one record, before one audit
        // target per operation is made.
        if r.ops.len() > MAX_BATCH_OPS {
            let n = r.ops.len();
            let refusal = move |_| async move {
                Err(Status::invalid_argument(format!("ops: {n} operations, the limit is {MAX_BATCH_OPS}")))
            };
            return self
                .audited(&meta, &needs, vec![Target::new("kv.batch", "", None)], false, refusal)
                .await;
        }
        for o in &r.ops {
            let (verb, ns, key) = match &o.op {
                Some(pb::batch_op::Op::Put(p)) => ("kv.put", &p.ns, &p.key),
                Some(pb::batch_op::Op::Delete(d)) => ("kv.delete", &d.ns, &d.key),
                None => continue,
            };
            needs.push(Permission::Write(ns.clone()));
            targets.push(Target::new(verb, ns, Some(key)));
        }
        if targets.is_empty() {
            targets.push(Target::new("kv.batch", "", None));
        }
        self.audited(&meta, &needs, targets, true, |_| self.batch_inner(r)).await
    }
}

impl KvService {
    async fn scan_inner(&self, r: pb::ScanRequest) -> Result<Response<pb::ScanResponse>, Status> {
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        let after = (!r.after.is_empty()).then_some(r.after.as_str());
        let (items, more) = self
            .state
            .node
            .scan(&r.ns, &r.prefix, after, limit, consistency(r.stale))
            .await
            .map_err(ApiError::from)?;
        let next = if more { items.last().map(|i| i.key.clone()) } else { None };
        let items = items
            .into_iter()
            .map(|i| pb::KeyValue { key: i.key, value: i.value, revision: i.revision })
            .collect();
        Ok(Response::new(pb::ScanResponse { items, next }))
    }

    async fn batch_inner(&self, r: pb::BatchRequest) -> Result<Response<pb::BatchResponse>, Status> {
        let mut ops = vec![];
        for (i, op) in r.ops.into_iter().enumerate() {
            ops.push(match op.op {
                Some(pb::batch_op::Op::Put(p)) => {
                    self.check_value(&p.value)?;
                    Op::Put { ns: p.ns, key: p.key, value: p.value, cas: p.cas }
                }
                Some(pb::batch_op::Op::Delete(d)) => Op::Delete { ns: d.ns, key: d.key, cas: d.cas },
                None => return Err(Status::invalid_argument(format!("ops[{i}]: neither put nor delete"))),
            });
        }
        let (revision, _) = self.write(ops).await?;
        Ok(Response::new(pb::BatchResponse { revision }))
    }
}

pub fn cluster_service(state: Arc<AppState>) -> pb::cluster_server::ClusterServer<ClusterService> {
    pb::cluster_server::ClusterServer::new(ClusterService { kv: KvService { state } })
}

/// The gRPC face of `cluster.rs`.
pub struct ClusterService {
    kv: KvService,
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let (meta, ext, _) = req.into_parts();
        let meta = Caller::new(meta, &ext);
        let targets = vec![Target::new("cluster.status", "", None)];
        self.kv.audited(&meta, &[], targets, false, |_| self.status_inner()).await
    }

    async fn route(&self, req: Request<pb::RouteRequest>) -> Result<Response<pb::RouteResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Caller::new(meta, &ext);
        let targets = vec![Target::new("cluster.route", "", None)];
        self.kv
            .audited(&meta, &[], targets, false, |_| async move {
                let (shard, replicas, epoch) = crate::cluster::route(&self.kv.state.node, &r.ns, &r.key)?;
                Ok(Response::new(pb::RouteResponse { shard, replicas, epoch }))
            })
            .await
    }

    async fn add_node(
        &self,
        req: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::AddNodeResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Caller::new(meta, &ext);
        let targets = vec![Target::new("cluster.add-node", "", None)];
        self.kv
            .audited(&meta, &[Permission::ClusterAdmin], targets, true, |_| async move {
                let node = &self.kv.state.node;
                let epoch =
                    crate::cluster::add_node(node, r.id, &r.site, &r.grpc, &r.http, &r.public_key).await?;
                Ok(Response::new(pb::AddNodeResponse { epoch }))
            })
            .await
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Caller::new(meta, &ext);
        let targets = vec![Target::new("cluster.remove-node", "", None)];
        self.kv
            .audited(&meta, &[Permission::ClusterAdmin], targets, true, |_| async move {
                let epoch = crate::cluster::remove_node(&self.kv.state.node, r.id).await?;
                Ok(Response::new(pb::RemoveNodeResponse { epoch }))
            })
            .await
    }
}

impl ClusterService {
    async fn status_inner(&self) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let v = crate::cluster::view(&self.kv.state.node, self.kv.state.tls).await?;
        let hex = |s: &str| u64::from_str_radix(s, 16).unwrap_or_default();
        Ok(Response::new(pb::ClusterStatusResponse {
            node: v.node,
            epoch: v.epoch,
            nodes: v
                .nodes
                .into_iter()
                .map(|n| pb::NodeView {
                    id: n.id,
                    site: n.site,
                    grpc: n.grpc,
                    http: n.http,
                    up: n.up,
                    leaving: n.leaving,
                    replicas: n.replicas as u32,
                    leads: n.leads as u32,
                })
                .collect(),
            shards: v
                .shards
                .into_iter()
                .map(|s| pb::ShardView {
                    id: s.id,
                    start: hex(&s.range[0]),
                    end: hex(&s.range[1]),
                    replicas: s.replicas,
                    sites: s.sites.into_iter().map(Option::unwrap_or_default).collect(),
                    leader: s.leader,
                    pinned_ns: s.pinned_ns,
                    voters: s.voters.unwrap_or_default(),
                    learners: s.learners.unwrap_or_default(),
                })
                .collect(),
            leaving: v.leaving.into_iter().collect(),
            meta_leader: v.meta.and_then(|m| m.leader),
            moving_shard: v.moving.map(|m| m.shard),
        }))
    }
}

pub fn ledger_service(state: Arc<AppState>) -> pb::ledger_server::LedgerServer<LedgerService> {
    pb::ledger_server::LedgerServer::new(LedgerService { kv: KvService { state } })
}

/// The ledger over gRPC: thin glue over the same functions as the REST routes.
pub struct LedgerService {
    kv: KvService,
}

fn proven(p: &crate::ledger::ProvenEntry, cp: &edgefabric_ledger::note::Checkpoint) -> pb::ProvenEntry {
    pb::ProvenEntry {
        entry_json: crate::ledger::entry_json(&p.entry).to_string(),
        leaf: p.leaf.clone(),
        inclusion_proof: Some(pb::InclusionProof {
            log_index: p.log_index,
            tree_size: cp.size,
            root_hash: cp.root.to_vec(),
            hashes: p.hashes.iter().map(|h| h.to_vec()).collect(),
        }),
    }
}

#[tonic::async_trait]
impl pb::ledger_server::Ledger for LedgerService {
    async fn add_publisher(
        &self,
        req: Request<pb::AddPublisherRequest>,
    ) -> Result<Response<pb::AddPublisherResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Caller::new(meta, &ext);
        let targets = vec![Target::new("publisher.add", "", None)];
        self.kv
            .audited(&meta, &[Permission::ClusterAdmin], targets, true, |_| async move {
                let key: [u8; 32] = r
                    .public_key
                    .as_slice()
                    .try_into()
                    .map_err(|_| Status::invalid_argument("public_key: must be 32 bytes"))?;
                edgefabric_crypto::PublicKey::from_bytes(&key)
                    .map_err(|e| Status::invalid_argument(format!("public_key: {e}")))?;
                let (log_index, created) =
                    crate::ledger::add_publisher_core(&self.kv.state, &r.id, key).await?;
                Ok(Response::new(pb::AddPublisherResponse { log_index, created }))
            })
            .await
    }

    async fn register_image(
        &self,
        req: Request<pb::RegisterImageRequest>,
    ) -> Result<Response<pb::RegisterImageResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Caller::new(meta, &ext);
        let targets = vec![Target::new("image.register", "", None)];
        self.kv
            .audited(&meta, &[Permission::Publish], targets, true, |_| async move {
                let (log_index, created) = crate::ledger::register_core(
                    &self.kv.state,
                    &r.name,
                    &r.digest,
                    &r.publisher,
                    r.signature,
                )
                .await?;
                Ok(Response::new(pb::RegisterImageResponse { log_index, created }))
            })
            .await
    }

    async fn revoke_image(
        &self,
        req: Request<pb::RevokeImageRequest>,
    ) -> Result<Response<pb::RevokeImageResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Caller::new(meta, &ext);
        let targets = vec![Target::new("image.revoke", "", None)];
        // Unsigned, the node signs it as the admin's revocation: that needs `admin`.
        let needs = if r.signature.is_empty() { Permission::ClusterAdmin } else { Permission::Publish };
        self.kv
            .audited(&meta, &[needs], targets, true, |_| async move {
                let by = match (r.publisher.is_empty(), r.signature.is_empty()) {
                    (false, false) => Some((r.publisher.as_str(), r.signature)),
                    (true, true) => None,
                    _ => {
                        return Err(Status::invalid_argument(
                            "publisher and signature: give both, or neither",
                        ))
                    }
                };
                let log_index = crate::ledger::revoke_core(&self.kv.state, &r.digest, &r.reason, by).await?;
                Ok(Response::new(pb::RevokeImageResponse { log_index }))
            })
            .await
    }

    async fn get_image(
        &self,
        req: Request<pb::GetImageRequest>,
    ) -> Result<Response<pb::GetImageResponse>, Status> {
        let digest = req.into_inner().digest;
        let Some(v) = crate::ledger::image_core(&self.kv.state, &digest).await? else {
            return Err(Status::not_found(format!("image {digest} is not registered")));
        };
        Ok(Response::new(pb::GetImageResponse {
            status: if v.revoked { "revoked" } else { "registered" }.into(),
            name: v.name.clone(),
            publisher: v.publisher.clone(),
            entry: Some(proven(&v.latest, &v.checkpoint)),
            registration: v.registration.as_ref().map(|r| proven(r, &v.checkpoint)),
            checkpoint: v.note.clone(),
        }))
    }

    async fn checkpoint(
        &self,
        _req: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::CheckpointResponse>, Status> {
        let (note, _) = self.kv.state.node.ledger_checkpoint().await.map_err(ApiError::from)?;
        Ok(Response::new(pb::CheckpointResponse { note }))
    }

    async fn consistency_proof(
        &self,
        req: Request<pb::ConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProofResponse>, Status> {
        let r = req.into_inner();
        let node = &self.kv.state.node;
        let to = if r.to == 0 { node.ledger_head().await.map_err(ApiError::from)?.log_size } else { r.to };
        let (hashes, r1, r2) = node.ledger_consistency_proof(r.from, to).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::ConsistencyProofResponse {
            from: r.from,
            to,
            root_from: r1.to_vec(),
            root_to: r2.to_vec(),
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }
}
