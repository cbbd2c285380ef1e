//! The public gRPC KV service: the same operations and errors as the REST routes.

use std::sync::Arc;

use edgefabric_store::node::Consistency;
use edgefabric_store::types::{Command, Op, Response as SmResponse};
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::server::AppState;

pub mod pb {
    tonic::include_proto!("edgefabric.v1");
}

pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("edgefabric_descriptor");

pub fn service(state: Arc<AppState>) -> pb::kv_server::KvServer<KvService> {
    pb::kv_server::KvServer::new(KvService { state })
}

pub struct KvService {
    state: Arc<AppState>,
}

impl KvService {
    fn auth<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(v) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated("missing authorization: Bearer <token> metadata"));
        };
        let token = v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        match token {
            Some(t) if self.state.check_token(t) => Ok(()),
            _ => Err(Status::unauthenticated("invalid token")),
        }
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
        self.auth(&req)?;
        let r = req.into_inner();
        self.check_value(&r.value)?;
        let (revision, _) =
            self.write(vec![Op::Put { ns: r.ns, key: r.key, value: r.value, cas: r.cas }]).await?;
        Ok(Response::new(pb::PutResponse { revision }))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        self.auth(&req)?;
        let r = req.into_inner();
        let rec = self.state.node.get(&r.ns, &r.key, consistency(r.stale)).await.map_err(ApiError::from)?;
        Ok(Response::new(match rec {
            Some(rec) => pb::GetResponse { found: true, value: rec.value, revision: rec.revision },
            None => pb::GetResponse { found: false, value: vec![], revision: 0 },
        }))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        self.auth(&req)?;
        let r = req.into_inner();
        let (revision, existed) = self.write(vec![Op::Delete { ns: r.ns, key: r.key, cas: r.cas }]).await?;
        Ok(Response::new(pb::DeleteResponse { revision, deleted: existed.first().copied().unwrap_or(false) }))
    }

    async fn scan(&self, req: Request<pb::ScanRequest>) -> Result<Response<pb::ScanResponse>, Status> {
        self.auth(&req)?;
        let r = req.into_inner();
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

    async fn batch(&self, req: Request<pb::BatchRequest>) -> Result<Response<pb::BatchResponse>, Status> {
        self.auth(&req)?;
        let mut ops = vec![];
        for (i, op) in req.into_inner().ops.into_iter().enumerate() {
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
        self.kv.auth(&req)?;
        let v = crate::cluster::view(&self.kv.state.node).await?;
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
                    voters: s.voters.unwrap_or_default(),
                    learners: s.learners.unwrap_or_default(),
                })
                .collect(),
            leaving: v.leaving.into_iter().collect(),
            meta_leader: v.meta.and_then(|m| m.leader),
            moving_shard: v.moving.map(|m| m.shard),
        }))
    }

    async fn route(&self, req: Request<pb::RouteRequest>) -> Result<Response<pb::RouteResponse>, Status> {
        self.kv.auth(&req)?;
        let r = req.into_inner();
        let (shard, replicas, epoch) = crate::cluster::route(&self.kv.state.node, &r.ns, &r.key)?;
        Ok(Response::new(pb::RouteResponse { shard, replicas, epoch }))
    }

    async fn add_node(
        &self,
        req: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::AddNodeResponse>, Status> {
        self.kv.auth(&req)?;
        let r = req.into_inner();
        let epoch =
            crate::cluster::add_node(&self.kv.state.node, r.id, &r.site, &r.grpc, &r.http, &r.public_key)
                .await?;
        Ok(Response::new(pb::AddNodeResponse { epoch }))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        self.kv.auth(&req)?;
        let epoch = crate::cluster::remove_node(&self.kv.state.node, req.into_inner().id).await?;
        Ok(Response::new(pb::RemoveNodeResponse { epoch }))
    }
}
