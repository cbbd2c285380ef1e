//! Cluster administration shared by REST and gRPC: the status view, key routing, node join and
//! leave. Handlers on both sides only parse input and shape the answer.

use std::collections::{BTreeMap, BTreeSet};

use axum::http::StatusCode;
use edgefabric_store::node::Node;
use edgefabric_store::shard::{ClusterMap, Move, NodeInfo, META_GROUP};
use edgefabric_store::types::{validate_key, validate_namespace, Command, Response};
use serde::Serialize;

use crate::error::ApiError;

#[derive(Serialize)]
pub struct ClusterView {
    /// The node that answered.
    pub node: u64,
    pub epoch: u64,
    pub meta: Option<MetaView>,
    pub nodes: Vec<NodeView>,
    pub shards: Vec<ShardView>,
    pub leaving: BTreeSet<u64>,
    pub moving: Option<Move>,
    pub splitting: Option<edgefabric_store::shard::Split>,
    /// The answering node's transport: `"tls"`, or `"plaintext"` (`--dev`, or `[tls] enabled =
    /// false`, which an operator should see at a glance).
    pub transport: &'static str,
}

#[derive(Serialize)]
pub struct MetaView {
    pub leader: Option<u64>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub term: u64,
}

#[derive(Serialize)]
pub struct NodeView {
    pub id: u64,
    pub site: String,
    pub grpc: String,
    pub http: String,
    /// Answered the status call just now.
    pub up: bool,
    pub leaving: bool,
    /// Shard replicas the map assigns to it.
    pub replicas: usize,
    /// Shards it leads.
    pub leads: usize,
}

#[derive(Serialize)]
pub struct ShardView {
    pub id: u64,
    /// First and last hash owned, hex.
    pub range: [String; 2],
    pub replicas: Vec<u64>,
    pub sites: Vec<Option<String>>,
    pub preferred_leader: Option<u64>,
    pub leader: Option<u64>,
    /// The site-local namespace this shard is pinned for (it holds all of that namespace, by
    /// name, not a hash range); absent for the shards that split the hash space.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned_ns: Option<String>,
    /// As the group's leader reports them (`None` if no leader answered).
    pub voters: Option<Vec<u64>>,
    pub learners: Option<Vec<u64>>,
}

fn require_map(node: &Node) -> Result<std::sync::Arc<ClusterMap>, ApiError> {
    node.map().ok_or_else(|| {
        ApiError::from(edgefabric_store::Error::Unavailable("the cluster is not initialized yet".into()))
    })
}

/// Nodes, sites, shards, leaders and replica placement, from the cluster map and every node's
/// report on its groups.
pub async fn view(node: &Node, tls: bool) -> Result<ClusterView, ApiError> {
    let map = require_map(node)?;
    let reports = node.cluster_statuses().await;
    // For each group, the leader as reported in the highest term any replica knows, and the
    // voters and learners as that leader reports them.
    let mut leaders: BTreeMap<u64, (u64, Option<u64>)> = BTreeMap::new();
    let mut members: BTreeMap<u64, (Vec<u64>, Vec<u64>)> = BTreeMap::new();
    let mut meta = None;
    for g in reports.values().flatten().flatten() {
        let e = leaders.entry(g.group).or_insert((0, None));
        if g.term >= e.0 && g.leader.is_some() {
            *e = (g.term, g.leader);
        }
        if g.leader == Some(g.node) {
            members.insert(g.group, (g.voters.clone(), g.learners.clone()));
            if g.group == META_GROUP {
                meta = Some(MetaView {
                    leader: g.leader,
                    voters: g.voters.clone(),
                    learners: g.learners.clone(),
                    term: g.term,
                });
            }
        }
    }
    let leader_of = |id: u64| leaders.get(&id).and_then(|l| l.1);
    let nodes = map
        .nodes
        .values()
        .map(|n| NodeView {
            id: n.id,
            site: n.site.clone(),
            grpc: n.addr.clone(),
            http: n.http.clone(),
            up: reports.get(&n.id).is_some_and(|r| r.is_some()),
            leaving: map.leaving.contains(&n.id),
            replicas: map.shards_of(n.id).count(),
            leads: map.all_shards().filter(|s| leader_of(s.id) == Some(n.id)).count(),
        })
        .collect();
    let shards = map
        .all_shards()
        .map(|s| ShardView {
            id: s.id,
            range: [format!("{:016x}", s.start), format!("{:016x}", s.end)],
            replicas: s.replicas.clone(),
            sites: s.replicas.iter().map(|r| map.nodes.get(r).map(|n| n.site.clone())).collect(),
            preferred_leader: s.replicas.first().copied(),
            leader: leader_of(s.id),
            pinned_ns: map.pinned.iter().find(|(_, p)| p.shard.id == s.id).map(|(ns, _)| ns.clone()),
            voters: members.get(&s.id).map(|m| m.0.clone()),
            learners: members.get(&s.id).map(|m| m.1.clone()),
        })
        .collect();
    Ok(ClusterView {
        node: node.id(),
        epoch: map.epoch,
        meta,
        nodes,
        shards,
        leaving: map.leaving.clone(),
        moving: map.moving,
        splitting: map.splitting,
        transport: if tls { "tls" } else { "plaintext" },
    })
}

/// The shard holding a key: (shard, replicas, map epoch).
pub fn route(node: &Node, ns: &str, key: &str) -> Result<(u64, Vec<u64>, u64), ApiError> {
    validate_namespace(ns)?;
    validate_key(key)?;
    let map = require_map(node)?;
    let shard = map.shard_for(ns, key).ok_or_else(|| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no shard owns the key")
    })?;
    Ok((shard.id, shard.replicas.clone(), map.epoch))
}

fn map_epoch(r: Response) -> Result<u64, ApiError> {
    match r {
        Response::Map { epoch } => Ok(epoch),
        Response::Rejected(m) => Err(ApiError::new(StatusCode::CONFLICT, "conflict", m)),
        other => {
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected {other:?}")))
        }
    }
}

/// A node joins the map; replicas then move onto it. Idempotent for the same node.
pub async fn add_node(
    node: &Node,
    id: u64,
    site: &str,
    grpc: &str,
    http: &str,
    public_key: &str,
) -> Result<u64, ApiError> {
    if site.is_empty() {
        return Err(ApiError::bad_request("site: must not be empty"));
    }
    for (field, addr) in [("grpc", grpc), ("http", http)] {
        addr.parse::<std::net::SocketAddr>()
            .map_err(|e| ApiError::bad_request(format!("{field}: {addr:?} is not host:port: {e}")))?;
    }
    // Nodes authenticate each other with their keys: a node without one could never speak.
    if public_key.is_empty() {
        return Err(ApiError::bad_request("public_key: required (the new node's base64 ed25519 key)"));
    }
    edgefabric_crypto::PublicKey::from_base64(public_key)
        .map_err(|e| ApiError::bad_request(format!("public_key: {e}")))?;
    let info = NodeInfo {
        id,
        site: site.into(),
        addr: grpc.into(),
        http: http.into(),
        public_key: public_key.into(),
    };
    map_epoch(node.propose(Command::AddNode(info)).await?)
}

/// Starts draining a node; it is removed once it holds no replicas.
pub async fn remove_node(node: &Node, id: u64) -> Result<u64, ApiError> {
    if !require_map(node)?.nodes.contains_key(&id) {
        return Err(ApiError::not_found(format!("node {id} is not a member")));
    }
    map_epoch(node.propose(Command::SetLeaving(id)).await?)
}
