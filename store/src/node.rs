//! The node runtime: one raft group over the WAL and the KV state machine, the internal gRPC
//! service, bootstrap, request forwarding, linearizable reads and data-loss recovery.
//!
//! Requests: any node accepts any request. Writes are proposed locally if this node leads,
//! otherwise forwarded to the leader over the internal transport. A forwarded write is retried
//! only when it provably was not proposed (the peer was unreachable, or answered "not leader");
//! any other failure is reported as `Unavailable` with the outcome unknown, as etcd does,
//! because a blind retry could apply a write twice.
//!
//! Linearizable reads use the read index, not a log write: the leader confirms its leadership
//! with a quorum (`ensure_linearizable`), a follower asks the leader for that index and waits
//! until it has applied it, then reads its own replica.
//!
//! Bootstrap: the node with the lowest id initializes the group, with every configured member,
//! once a majority of members answer and none is initialized; nodes started in any order form
//! one cluster, and no node can form a second one.
//!
//! Data loss: a voter that comes back with an empty data directory has forgotten votes and
//! entries it acknowledged; letting it vote could elect a leader missing committed writes. The
//! state machine records every node that has replicated (`Command::MarkSeen`). A fresh node the
//! cluster has seen before writes a `REJOIN` marker (so a crash mid-way resumes), refuses vote
//! requests, and asks the leader to demote it to learner, catch it up and promote it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::kv::KvStore;
use crate::log::{GroupId, LogEngine};
use crate::network::{
    self, call, Channels, Frame, Internal, InternalServer, NetworkFactory, TransportError,
};
use crate::raft_store::{LogStore, NodeId, Raft, StateMachineStore};
use crate::types::{validate_command, Command, NamespaceConfig, Record, Response, ScanItem};

/// The single KV group of this release (multi-group sharding builds on the same WAL).
pub const DATA_GROUP: GroupId = 1;
const REJOIN_MARKER: &str = "REJOIN";

#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub id: NodeId,
    /// Initial members: id → internal gRPC address (this node included).
    pub members: BTreeMap<NodeId, String>,
    pub data_dir: PathBuf,
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many applied entries.
    pub snapshot_logs: u64,
    /// Entries kept in the log behind a snapshot (lagging followers catch up from the log).
    pub keep_logs: u64,
    /// The longest a client request may wait for a leader or a quorum.
    pub request_timeout: Duration,
    /// Largest value accepted at the edge.
    pub max_value_bytes: usize,
}

impl NodeOptions {
    pub fn new(id: NodeId, members: BTreeMap<NodeId, String>, data_dir: PathBuf) -> Self {
        NodeOptions {
            id,
            members,
            data_dir,
            heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(400),
            election_timeout_max: Duration::from_millis(800),
            snapshot_logs: 20_000,
            keep_logs: 5_000,
            request_timeout: Duration::from_secs(5),
            max_value_bytes: crate::types::DEFAULT_MAX_VALUE_BYTES,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Linearizable,
    /// The local replica's current state, possibly behind the leader.
    Stale,
}

/// What a node says about itself (internal `Status` RPC and the status API).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: NodeId,
    pub initialized: bool,
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub seen: Vec<NodeId>,
    /// Rejoining after data loss: not voting yet.
    pub rejoining: bool,
}

pub struct Node {
    opts: NodeOptions,
    raft: Raft,
    kv: Arc<KvStore>,
    channels: Channels,
    rejoining: AtomicBool,
    /// A fresh node does not vote until it knows whether it is new or has lost its data.
    deciding: AtomicBool,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Node {
    pub async fn start(opts: NodeOptions) -> Result<Arc<Node>> {
        if !opts.members.contains_key(&opts.id) {
            return Err(Error::invalid(
                "members",
                format!("node {} is not among the members", opts.id),
            ));
        }
        std::fs::create_dir_all(&opts.data_dir)?;
        let engine = LogEngine::open(&opts.data_dir.join("raft"))?;
        let sm = StateMachineStore::open(&opts.data_dir.join(format!("group-{DATA_GROUP}")))?;
        let kv = sm.kv();
        let fresh = engine.last_entry(DATA_GROUP)?.is_none()
            && engine.purged(DATA_GROUP).is_none()
            && engine.vote(DATA_GROUP).is_none()
            && kv.raft_meta()?.is_none();
        let rejoining = opts.data_dir.join(REJOIN_MARKER).exists();

        let config = Config {
            cluster_name: "edgefabric".into(),
            heartbeat_interval: opts.heartbeat.as_millis() as u64,
            election_timeout_min: opts.election_timeout_min.as_millis() as u64,
            election_timeout_max: opts.election_timeout_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_logs),
            max_in_snapshot_log_to_keep: opts.keep_logs,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::invalid("raft config", e))?;

        let channels = Channels::default();
        let network = NetworkFactory {
            channels: channels.clone(),
            group: DATA_GROUP,
        };
        let raft = Raft::new(
            opts.id,
            Arc::new(config),
            network,
            LogStore::new(engine, DATA_GROUP),
            sm,
        )
        .await
        .map_err(|e| Error::Internal(format!("raft start: {e}")))?;
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let node = Arc::new(Node {
            opts,
            raft,
            kv,
            channels,
            rejoining: AtomicBool::new(rejoining),
            deciding: AtomicBool::new(fresh),
            shutdown,
        });
        if fresh || rejoining {
            let n = node.clone();
            tokio::spawn(async move { n.bootstrap(fresh).await });
        }
        let n = node.clone();
        tokio::spawn(async move { n.mark_seen_loop().await });
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.opts.id
    }

    pub fn options(&self) -> &NodeOptions {
        &self.opts
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The internal gRPC service, to be served on the node's gRPC port.
    pub fn internal_service(self: &Arc<Self>) -> InternalServer<InternalService> {
        InternalServer::new(InternalService { node: self.clone() })
            .max_decoding_message_size(network::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(network::MAX_MESSAGE_BYTES)
    }

    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    // ---- status ----

    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        NodeStatus {
            id: self.opts.id,
            initialized: !voters.is_empty(),
            state: format!("{:?}", m.state),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            voters,
            learners,
            seen: self.kv.seen().unwrap_or_default(),
            rejoining: self.rejoining.load(Ordering::SeqCst),
        }
    }

    /// Ready: a member of an initialized group that has a leader.
    pub fn is_ready(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let member = m
            .membership_config
            .membership()
            .get_node(&self.opts.id)
            .is_some();
        member && m.current_leader.is_some() && !self.rejoining.load(Ordering::SeqCst)
    }

    // ---- writes ----

    /// Proposes a command through consensus from any node, within the request timeout.
    pub async fn propose(&self, cmd: Command) -> Result<Response> {
        validate_command(&cmd, self.opts.max_value_bytes)?;
        let timeout = self.opts.request_timeout;
        match tokio::time::timeout(timeout, self.propose_routed(cmd)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Unavailable(format!(
                "the write was not confirmed by a quorum within {timeout:?}; it may or may not be applied"
            ))),
        }
    }

    async fn propose_routed(&self, cmd: Command) -> Result<Response> {
        loop {
            match self.raft.client_write(cmd.clone()).await {
                Ok(resp) => return Ok(resp.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    if let Some(leader) = f.leader_node {
                        let client = self.channels.client(&leader.addr)?;
                        let r = call::<_, Response, Error, _, _>(
                            client,
                            DATA_GROUP,
                            &cmd,
                            self.opts.request_timeout,
                            |mut c, f| async move { c.forward(f).await },
                        )
                        .await;
                        match r {
                            Ok(Ok(resp)) => return Ok(resp),
                            // "Not leader": the peer did not propose it; safe to retry.
                            Ok(Err(Error::Unavailable(_)))
                            | Err(TransportError::Unreachable(_)) => {}
                            Ok(Err(e)) => return Err(e),
                            Err(e) => {
                                return Err(Error::Unavailable(format!(
                                "forwarding to leader {}: {e}; the write may or may not be applied",
                                f.leader_id.unwrap_or_default()
                            )))
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(RaftError::APIError(e)) => return Err(Error::Internal(e.to_string())),
                Err(RaftError::Fatal(e)) => {
                    return Err(Error::Unavailable(format!("raft stopped: {e}")))
                }
            }
        }
    }

    /// Proposes only if this node leads (the `Forward` handler): never forwards again.
    async fn propose_local(&self, cmd: Command) -> Result<Response> {
        validate_command(&cmd, crate::kv::APPLY_MAX_VALUE_BYTES)?;
        match self.raft.client_write(cmd).await {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(Error::Unavailable("not the leader".into()))
            }
            Err(RaftError::APIError(e)) => Err(Error::Internal(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(Error::Unavailable(format!("raft stopped: {e}"))),
        }
    }

    // ---- reads ----

    /// Returns once this replica has applied everything committed before the call.
    pub async fn read_barrier(&self) -> Result<()> {
        let timeout = self.opts.request_timeout;
        let deadline = Instant::now() + timeout;
        match tokio::time::timeout_at(deadline, self.read_barrier_inner(deadline)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Unavailable(format!(
                "no leader confirmed by a quorum within {timeout:?}; retry, or read with consistency=stale"
            ))),
        }
    }

    async fn read_barrier_inner(&self, deadline: Instant) -> Result<()> {
        loop {
            match self.raft.ensure_linearizable().await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    if let Some(leader) = f.leader_node {
                        let client = self.channels.client(&leader.addr)?;
                        let r = call::<_, u64, Error, _, _>(
                            client,
                            DATA_GROUP,
                            &(),
                            self.opts.request_timeout,
                            |mut c, f| async move { c.read_index(f).await },
                        )
                        .await;
                        if let Ok(Ok(index)) = r {
                            let left = deadline.saturating_duration_since(Instant::now());
                            self.raft
                                .wait(Some(left))
                                .applied_index_at_least(Some(index), "read index")
                                .await
                                .map_err(|e| {
                                    Error::Unavailable(format!(
                                        "waiting to apply index {index}: {e}"
                                    ))
                                })?;
                            return Ok(());
                        }
                    }
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {}
                Err(RaftError::Fatal(e)) => {
                    return Err(Error::Unavailable(format!("raft stopped: {e}")))
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn barrier(&self, consistency: Consistency) -> Result<()> {
        match consistency {
            Consistency::Linearizable => self.read_barrier().await,
            Consistency::Stale => Ok(()),
        }
    }

    pub async fn namespace(&self, ns: &str, consistency: Consistency) -> Result<NamespaceConfig> {
        self.barrier(consistency).await?;
        self.kv
            .namespace(ns)?
            .ok_or_else(|| Error::NotFound(format!("namespace {ns:?} does not exist")))
    }

    pub async fn get(
        &self,
        ns: &str,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<Record>> {
        crate::types::validate_namespace(ns)?;
        crate::types::validate_key(key)?;
        self.barrier(consistency).await?;
        self.require_namespace(ns)?;
        self.kv.get(ns, key)
    }

    pub async fn scan(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<(Vec<ScanItem>, bool)> {
        crate::types::validate_namespace(ns)?;
        if limit == 0 || limit > 10_000 {
            return Err(Error::invalid(
                "limit",
                format!("{limit} must be between 1 and 10000"),
            ));
        }
        self.barrier(consistency).await?;
        self.require_namespace(ns)?;
        self.kv.scan(ns, prefix, after, limit)
    }

    pub async fn namespaces(&self, consistency: Consistency) -> Result<Vec<NamespaceConfig>> {
        self.barrier(consistency).await?;
        self.kv.namespaces()
    }

    /// Which members answer the internal status RPC right now (this node always does).
    pub async fn members_up(&self) -> BTreeMap<NodeId, bool> {
        let mut out = BTreeMap::new();
        for (id, addr) in &self.opts.members {
            let up = *id == self.opts.id || self.peer_status(addr).await.is_some();
            out.insert(*id, up);
        }
        out
    }

    fn require_namespace(&self, ns: &str) -> Result<()> {
        match self.kv.namespace(ns)? {
            Some(_) => Ok(()),
            None => Err(Error::NotFound(format!("namespace {ns:?} does not exist"))),
        }
    }

    // ---- membership ----

    async fn peer_status(&self, addr: &str) -> Option<NodeStatus> {
        let client = self.channels.client(addr).ok()?;
        call::<_, NodeStatus, Error, _, _>(
            client,
            DATA_GROUP,
            &(),
            Duration::from_millis(800),
            |mut c, f| async move { c.status(f).await },
        )
        .await
        .ok()?
        .ok()
    }

    /// See the module comment: initialize (lowest id, majority answering, none initialized),
    /// wait to be replicated to, or rejoin after data loss.
    async fn bootstrap(self: Arc<Self>, fresh: bool) {
        let me = self.opts.id;
        let n = self.opts.members.len();
        let lowest = self.opts.members.keys().next().copied() == Some(me);
        let mut shutdown = self.shutdown.subscribe();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let mut answered = 1; // this node
            let mut initialized: Vec<NodeStatus> = vec![];
            for (id, addr) in &self.opts.members {
                if *id == me {
                    continue;
                }
                if let Some(st) = self.peer_status(addr).await {
                    answered += 1;
                    if st.initialized {
                        initialized.push(st);
                    }
                }
            }
            if self.rejoining.load(Ordering::SeqCst)
                || (fresh && initialized.iter().any(|s| s.seen.contains(&me)))
            {
                self.rejoin().await;
                return;
            }
            if !initialized.is_empty() {
                tracing::info!("cluster already initialized; waiting for the leader to replicate");
                self.deciding.store(false, Ordering::SeqCst);
                return;
            }
            if lowest && answered * 2 > n {
                let members: BTreeMap<NodeId, BasicNode> = self
                    .opts
                    .members
                    .iter()
                    .map(|(id, a)| (*id, BasicNode::new(a)))
                    .collect();
                match self.raft.initialize(members).await {
                    Ok(()) => tracing::info!(members = n, "initialized the cluster"),
                    Err(e) => tracing::info!(error = %e, "initialize"),
                }
                self.deciding.store(false, Ordering::SeqCst);
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn rejoin(&self) {
        let marker = self.opts.data_dir.join(REJOIN_MARKER);
        if let Err(e) = write_marker(&marker) {
            tracing::error!(error = %e, "cannot write rejoin marker; refusing to continue without it");
            return;
        }
        self.rejoining.store(true, Ordering::SeqCst);
        tracing::warn!("this node lost its data; rejoining as a learner before it may vote again");
        let mut shutdown = self.shutdown.subscribe();
        loop {
            if *shutdown.borrow() {
                return;
            }
            for addr in self
                .opts
                .members
                .iter()
                .filter(|(id, _)| **id != self.opts.id)
                .map(|(_, a)| a)
            {
                let Ok(client) = self.channels.client(addr) else {
                    continue;
                };
                let r = call::<_, (), Error, _, _>(
                    client,
                    DATA_GROUP,
                    &self.opts.id,
                    Duration::from_secs(120),
                    |mut c, f| async move { c.rejoin(f).await },
                )
                .await;
                match r {
                    Ok(Ok(())) => {
                        if let Err(e) = std::fs::remove_file(&marker) {
                            tracing::error!(error = %e, "cannot remove rejoin marker");
                            return;
                        }
                        self.rejoining.store(false, Ordering::SeqCst);
                        self.deciding.store(false, Ordering::SeqCst);
                        tracing::info!("rejoined the cluster as a voter");
                        return;
                    }
                    Ok(Err(e)) => tracing::info!(peer = addr, error = %e, "rejoin refused"),
                    Err(e) => tracing::debug!(peer = addr, error = %e, "rejoin not reachable"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Leader side of `rejoin`: demote to learner (its vote no longer counts), wait until it has
    /// caught up, promote back.
    async fn readmit(&self, id: NodeId) -> Result<()> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(self.opts.id) {
            return Err(Error::Unavailable("not the leader".into()));
        }
        let membership = m.membership_config.membership().clone();
        let node = membership
            .get_node(&id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("node {id} is not a member")))?;
        let map_err = |e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| {
            Error::Unavailable(e.to_string())
        };
        if membership.voter_ids().any(|v| v == id) {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), true)
                .await
                .map_err(map_err)?;
        }
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(map_err)?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(map_err)?;
        tracing::info!(node = id, "re-admitted node as voter after data loss");
        Ok(())
    }

    /// While leading, records each member that has replicated the log (see `Command::MarkSeen`).
    async fn mark_seen_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => return,
            }
            let m = self.raft.metrics().borrow().clone();
            if m.state != ServerState::Leader {
                continue;
            }
            let seen: BTreeSet<NodeId> = self.kv.seen().unwrap_or_default().into_iter().collect();
            let mut replicated = vec![self.opts.id];
            if let Some(rep) = &m.replication {
                replicated.extend(
                    rep.iter()
                        .filter(|(_, matched)| matched.is_some())
                        .map(|(id, _)| *id),
                );
            }
            for id in replicated {
                if !seen.contains(&id) {
                    if let Err(e) = self.propose_local(Command::MarkSeen(id)).await {
                        tracing::debug!(error = %e, "mark seen");
                    }
                }
            }
        }
    }
}

fn write_marker(path: &Path) -> std::io::Result<()> {
    std::fs::File::create(path)?.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The internal gRPC service of a node.
pub struct InternalService {
    node: Arc<Node>,
}

type RpcResult = std::result::Result<tonic::Response<Frame>, tonic::Status>;

#[tonic::async_trait]
impl Internal for InternalService {
    async fn append_entries(&self, req: tonic::Request<Frame>) -> RpcResult {
        let rpc = network::request(req.get_ref())?;
        network::reply(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: tonic::Request<Frame>) -> RpcResult {
        if self.node.rejoining.load(Ordering::SeqCst) || self.node.deciding.load(Ordering::SeqCst) {
            return Err(tonic::Status::unavailable(
                "fresh or rejoining after data loss: not voting yet",
            ));
        }
        let rpc = network::request(req.get_ref())?;
        network::reply(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: tonic::Request<Frame>) -> RpcResult {
        let rpc = network::request(req.get_ref())?;
        network::reply(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn forward(&self, req: tonic::Request<Frame>) -> RpcResult {
        let cmd: Command = network::request(req.get_ref())?;
        network::reply(&self.node.propose_local(cmd).await)
    }

    async fn read_index(&self, _req: tonic::Request<Frame>) -> RpcResult {
        let r: Result<u64> = match self.node.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(log_id.map(|l| l.index).unwrap_or(0)),
            Err(e) => Err(Error::Unavailable(e.to_string())),
        };
        network::reply(&r)
    }

    async fn status(&self, _req: tonic::Request<Frame>) -> RpcResult {
        network::reply(&Ok::<_, Error>(self.node.status()))
    }

    async fn rejoin(&self, req: tonic::Request<Frame>) -> RpcResult {
        let id: NodeId = network::request(req.get_ref())?;
        network::reply(&self.node.readmit(id).await)
    }
}
