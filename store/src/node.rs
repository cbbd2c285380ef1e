//! The node runtime: many raft groups over one WAL and one sled database, the internal gRPC
//! service, routing, bootstrap, linearizable reads and data-loss recovery.
//!
//! Groups: group 0 is the metadata group (every node; up to 5 voters) holding the cluster map
//! (nodes, sites, shards) and the namespaces; groups 1.. are data shards, each replicated on the
//! nodes the map names (`shard.rs` places them on distinct sites). A reconcile loop starts the
//! groups the map assigns to this node and keeps leadership on each shard's preferred replica.
//!
//! Requests: any node accepts any request and routes it by the map. A write goes to its shard's
//! leader: proposed locally if this node leads, otherwise forwarded. A forwarded write is
//! retried only when it provably was not proposed (the peer was unreachable, or answered "not
//! leader"); any other failure is `Unavailable` with the outcome unknown, as etcd does, because
//! a blind retry could apply a write twice. A batch must stay within one shard.
//!
//! Linearizable reads use the read index, not a log write: the leader confirms its leadership
//! with a quorum (`ensure_linearizable`), a follower asks the leader for that index and waits
//! until it has applied it, then reads its own replica. A node that does not host the shard
//! asks one that does.
//!
//! Bootstrap: a fresh group is initialized, with the same members on every replica (openraft
//! documents this as safe), once a majority of its members answer and none is initialized.
//!
//! Data loss: a voter that comes back with an empty group has forgotten votes and entries it
//! acknowledged; letting it vote could elect a leader missing committed writes. Each group's
//! state machine records every node that has replicated it (`Command::MarkSeen`). A fresh
//! replica does not vote until it has asked its peers; if they have seen it, it writes a
//! `REJOIN` marker (so a crash mid-way resumes), keeps refusing votes, and asks the leader to
//! demote it to learner, catch it up and promote it back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::kv::KvStore;
use crate::log::{GroupId, LogEngine};
use crate::network::{self, call, Channels, Frame, Internal, InternalServer, NetworkFactory, TransportError};
use crate::raft_store::{LogStore, NodeId, Raft, StateMachineStore};
use crate::shard::{initial_map, ClusterMap, Move, NodeInfo, LEDGER_GROUP, META_GROUP};
use crate::types::{
    validate_command, validate_key, validate_namespace, Command, NamespaceConfig, Record, Response, ScanItem,
    DEFAULT_NAMESPACE,
};

const REJOIN_MARKER: &str = "REJOIN";
/// In the data directory after a clean stop only: sled was flushed after the last apply, so
/// every group's tree holds whole applies. Removed (durably) at start, before any apply; a
/// start without it rebuilds the groups' state machines (`KvStore::apply`).
const SM_CLEAN: &str = "sm.clean";
/// `Status` for this group id answers for every hosted group.
const ALL_GROUPS: GroupId = u64::MAX;
const MAX_META_VOTERS: usize = 5;
/// The longest one step of the control loop (a proposal, a membership change, stopping a
/// group) may take before it is given up and retried: the loop that runs moves, leaves and
/// leadership balance must never wait forever on one group.
const CONTROL_STEP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub id: NodeId,
    /// The cluster's nodes at its creation (this node included).
    pub members: Vec<NodeInfo>,
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
    /// Shards created with the cluster.
    pub initial_shards: u64,
    /// Replicas per shard.
    pub replicas: usize,
    /// A shard with more keys than this splits in two.
    pub split_keys: u64,
    /// The node's key: signs its ledger entries and checkpoints.
    pub identity: Arc<edgefabric_crypto::Identity>,
    /// The ledger's checkpoint origin line (the same on every node of a cluster).
    pub ledger_origin: String,
    /// The founding members' genesis entries, when this node's configuration lists every
    /// founder's key (block 0 must then equal them).
    pub ledger_genesis: Option<Vec<edgefabric_ledger::entry::Entry>>,
    /// Re-verify the whole stored ledger at start-up, not just its head and checkpoint.
    pub verify_ledger_full: bool,
    /// Record every access in the ledger (`audit.rs`). Off only for benchmarks that measure
    /// what auditing costs.
    pub audit: bool,
    /// How often each replica computes time-series rollups and applies retention.
    pub ts_maintenance: Duration,
    /// The fault-injection admin route (`faults.rs`): test clusters only.
    pub test_faults: bool,
    /// TLS between nodes: peers' serving certificates are verified against this CA, this node
    /// presents its node-key certificate, and internal calls are taken only over TLS from the
    /// member whose node key the caller's certificate holds. `None`: plaintext (`--dev`, or an
    /// explicit `[tls] enabled = false`).
    pub peer_tls: Option<Arc<edgefabric_crypto::tls::ReloadingCaVerifier>>,
}

impl NodeOptions {
    pub fn new(
        id: NodeId,
        members: Vec<NodeInfo>,
        data_dir: PathBuf,
        identity: Arc<edgefabric_crypto::Identity>,
    ) -> Self {
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
            initial_shards: 16,
            replicas: 3,
            split_keys: 1_000_000,
            identity,
            ledger_origin: "edgefabric/ledger".into(),
            ledger_genesis: None,
            verify_ledger_full: false,
            audit: true,
            ts_maintenance: Duration::from_secs(60),
            test_faults: false,
            peer_tls: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    Linearizable,
    /// The local replica's current state, possibly behind the leader.
    Stale,
}

/// What a node says about one of its groups (internal `Status` RPC and the status API).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: GroupId,
    pub node: NodeId,
    pub initialized: bool,
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Nodes that replicated the group, with their data-directory instance.
    pub seen: Vec<(NodeId, u64)>,
    /// Rejoining after data loss: not voting yet.
    pub rejoining: bool,
    /// The reporting node's data-directory instance.
    pub instance: u64,
    /// Data keys in the group (this replica's count).
    #[serde(default)]
    pub keys: u64,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ReadRequest {
    ns: String,
    key: String,
    consistency: Consistency,
    /// The shard's hash range in the sender's map.
    range: (u64, u64),
}

/// The message of the retryable error a replica gives for a request routed by a map that does
/// not know the shard's latest split.
const WRONG_SHARD: &str = "wrong shard: the shard's range changed";

#[derive(Serialize, Deserialize)]
pub(crate) struct ScanRequest {
    ns: String,
    prefix: String,
    after: Option<String>,
    limit: usize,
    consistency: Consistency,
    range: (u64, u64),
}

/// A group's seen-members list (node, instance) and the applied index it was read at.
type SeenAt = (Option<u64>, Vec<(NodeId, u64)>);

/// One raft group hosted by this node.
pub struct Group {
    pub id: GroupId,
    pub raft: Raft,
    pub(crate) kv: Arc<KvStore>,
    pub(crate) dir: PathBuf,
    rejoining: AtomicBool,
    /// A fresh replica does not vote until it knows whether it is new or lost its data.
    deciding: AtomicBool,
    /// Times this replica saw the group get a new leader (for `/metrics`).
    leader_changes: AtomicU64,
    /// Whether the group is quiet (raft not ticking while idle: `quiesce.rs`).
    pub(crate) quiet: crate::quiesce::Quiet,
    /// `seen`'s last answer and the applied index it was read at.
    seen_cache: Mutex<Option<SeenAt>>,
}

impl Group {
    /// The members recorded as having replicated the group (`KvStore::seen`), read again only
    /// when the applied index moved: a thousand idle groups would otherwise scan sled four
    /// times a second each, for the same answer.
    pub(crate) fn seen(&self, applied: Option<u64>) -> Vec<(u64, u64)> {
        let mut cache = self.seen_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, seen)) = &*cache {
            if *at == applied {
                return seen.clone();
            }
        }
        let seen = self.kv.seen().unwrap_or_default();
        *cache = Some((applied, seen.clone()));
        seen
    }

    pub(crate) fn is_rejoining(&self) -> bool {
        self.rejoining.load(Ordering::SeqCst) || self.deciding.load(Ordering::SeqCst)
    }

    fn status(&self, node: NodeId, instance: u64) -> GroupStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        GroupStatus {
            group: self.id,
            node,
            initialized: !voters.is_empty(),
            state: format!("{:?}", m.state),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            voters,
            learners: membership.learner_ids().collect(),
            seen: self.seen(m.last_applied.map(|l| l.index)),
            rejoining: self.rejoining.load(Ordering::SeqCst),
            instance,
            keys: self.kv.key_count().unwrap_or_default(),
        }
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }
}

pub struct Node {
    pub(crate) opts: NodeOptions,
    /// Random, made with the data directory: tells this incarnation of the node's data from
    /// an earlier one that was lost (see the module comment).
    pub(crate) instance: u64,
    pub(crate) engine: LogEngine,
    pub(crate) db: sled::Db,
    config: Arc<Config>,
    pub(crate) channels: Channels,
    groups: RwLock<BTreeMap<GroupId, Arc<Group>>>,
    /// Groups being started (so two reconcile passes never open one twice).
    starting: Mutex<BTreeSet<GroupId>>,
    /// When this node last asked for leadership of a group (rate limit).
    last_elect: Mutex<BTreeMap<GroupId, Instant>>,
    /// A replica move or leave is being carried out by this node (as metadata leader).
    moving: AtomicBool,
    /// When this node (as metadata leader) last checked shard sizes for splits.
    last_split_check: Mutex<Option<Instant>>,
    /// The ledger's membership upkeep is running (as ledger leader).
    ledger_busy: AtomicBool,
    pub(crate) ledger: crate::ledger::LedgerRuntime,
    pub(crate) audit: Arc<crate::audit::AuditQueue>,
    /// Groups whose trees were here at a start that was not clean and that have not been
    /// opened (so rebuilt) since (`SM_CLEAN`).
    rebuild: Mutex<std::collections::HashSet<GroupId>>,
    /// A group may have been left applying out of sight (`drop_group` timed out): the next
    /// start must rebuild.
    unclean: AtomicBool,
    pub(crate) ts_queue: crate::ts_queue::TsQueue,
    /// Data keys of confidential namespaces this node has unwrapped.
    pub(crate) keys: crate::confidential::KeyCache,
    pub(crate) rotations: crate::confidential::Rotations,
    pub(crate) shutdown: tokio::sync::watch::Sender<bool>,
    /// How long proposals made on this node, as the group's leader, took to commit and apply.
    pub commit_latency: crate::metrics::Histogram,
    /// Peers' liveness, which quiet groups rely on (`quiesce.rs`).
    pub(crate) liveness: crate::quiesce::Liveness,
    /// The ed25519 key of each peer certificate seen (parsing X.509 on every internal call
    /// cost more than the call's own work). Keyed by the whole DER, so a different
    /// certificate is parsed anew; bounded (cleared when full).
    cert_keys: Mutex<HashMap<Vec<u8>, Option<[u8; 32]>>>,
}

impl Node {
    pub async fn start(opts: NodeOptions) -> Result<Arc<Node>> {
        if !opts.members.iter().any(|m| m.id == opts.id) {
            return Err(Error::invalid("members", format!("node {} is not among the members", opts.id)));
        }
        std::fs::create_dir_all(&opts.data_dir)?;
        let instance = load_instance(&opts.data_dir)?;
        let engine = LogEngine::open(&opts.data_dir.join("raft"))?;
        let db = sled::Config::new().path(opts.data_dir.join("sm")).open()?;
        let rebuild = groups_to_rebuild(&opts.data_dir, &db)?;
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
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let ledger_genesis = opts.ledger_genesis.clone();
        let audit = Arc::new(crate::audit::AuditQueue::open(&engine, opts.audit)?);
        let ts_queue = crate::ts_queue::TsQueue::open(&engine)?;
        let configured = opts
            .members
            .iter()
            .filter(|m| !m.public_key.is_empty())
            .map(|m| (m.id, m.public_key.clone()))
            .collect();
        let link = Arc::new(crate::link::LinkAuth::new(opts.id, opts.identity.clone(), configured));
        let peer_tls = network::PeerTls::new(&opts.identity, opts.peer_tls.clone())?;
        let node = Arc::new(Node {
            opts,
            instance,
            engine,
            db,
            config: Arc::new(config),
            channels: Channels::new(link, peer_tls),
            groups: RwLock::new(BTreeMap::new()),
            starting: Mutex::new(BTreeSet::new()),
            last_elect: Mutex::new(BTreeMap::new()),
            moving: AtomicBool::new(false),
            last_split_check: Mutex::new(None),
            ledger_busy: AtomicBool::new(false),
            ledger: crate::ledger::LedgerRuntime::new(ledger_genesis),
            audit,
            rebuild: Mutex::new(rebuild),
            unclean: AtomicBool::new(false),
            ts_queue,
            keys: Default::default(),
            rotations: Default::default(),
            shutdown,
            commit_latency: Default::default(),
            liveness: crate::quiesce::Liveness::new(),
            cert_keys: Mutex::new(HashMap::new()),
        });
        // Keys of nodes added after the cluster's creation come from the cluster map.
        let weak = Arc::downgrade(&node);
        node.channels.auth.set_directory(Box::new(move |id| {
            let map = weak.upgrade()?.map()?;
            Some(map.nodes.get(&id).map(|n| n.public_key.clone()))
        }));
        let meta_members = node.meta_voters();
        node.start_group(META_GROUP, meta_members.clone(), true).await?;
        node.start_group(LEDGER_GROUP, meta_members, true).await?;
        node.start_ledger();
        node.start_audit_shipper();
        node.start_ts_forwarder();
        node.start_ts_maintenance();
        // Data groups this node already hosts start right away (not after the first reconcile
        // pass), so a restarted node serves as soon as it can.
        if let Some(map) = node.map() {
            for shard in map.shards_of(node.opts.id) {
                node.start_shard(&map, shard).await?;
            }
        }
        let n = node.clone();
        tokio::spawn(async move { n.reconcile_loop().await });
        let n = node.clone();
        tokio::spawn(async move { n.quiesce_loop().await });
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.opts.id
    }

    /// The ed25519 key a peer's certificate is for (`edgefabric_crypto::tls::ed25519_key_of`),
    /// remembered per certificate.
    fn cert_key(&self, der: &[u8]) -> Option<[u8; 32]> {
        const MAX_CERTS: usize = 1024;
        if let Some(k) = self.cert_keys.lock().unwrap_or_else(|p| p.into_inner()).get(der) {
            return *k;
        }
        let key = edgefabric_crypto::tls::ed25519_key_of(der);
        let mut cache = self.cert_keys.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CERTS {
            cache.clear();
        }
        cache.insert(der.to_vec(), key);
        key
    }

    pub fn options(&self) -> &NodeOptions {
        &self.opts
    }

    /// The internal gRPC service, to be served on the node's gRPC port. A call from a
    /// non-member (no member's node-key certificate with TLS; no valid call ticket, always) is
    /// refused from its headers, before its body (up to `MAX_MESSAGE_BYTES`) is read or decoded.
    pub fn internal_service(
        self: &Arc<Self>,
    ) -> tonic::service::interceptor::InterceptedService<InternalServer<InternalService>, MemberCallsOnly>
    {
        let svc = InternalServer::new(InternalService { node: self.clone() })
            .max_decoding_message_size(network::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(network::MAX_MESSAGE_BYTES);
        tonic::service::interceptor::InterceptedService::new(
            svc,
            MemberCallsOnly { tls: self.opts.peer_tls.is_some(), node: self.clone() },
        )
    }

    /// Whether `key` is a member's node key: one the cluster map lists, or (before this node
    /// has a map) one its configuration lists. Decides which client certificates the gRPC port
    /// takes.
    pub fn is_member_key(&self, key: &[u8; 32]) -> bool {
        let b64 = edgefabric_crypto::PublicKey::from_bytes(key).map(|k| k.to_base64());
        let Ok(b64) = b64 else { return false };
        match self.map() {
            Some(map) => map.nodes.values().any(|n| n.public_key == b64),
            None => self.opts.members.iter().any(|m| m.public_key == b64),
        }
    }

    /// The first step of a graceful stop, before the servers stop taking requests: no group of
    /// this node starts an election any more. A draining node stops hearing its leaders (its
    /// server refuses new connections) while its groups still run; campaigning then would
    /// only depose healthy leaders and stall the very requests it is finishing.
    pub fn stop_campaigning(&self) {
        for g in self.all_groups() {
            g.raft.runtime_config().elect(false);
        }
    }

    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        // Groups being opened finish (or refuse, seeing the flag) before the list is taken.
        let deadline = Instant::now() + CONTROL_STEP_TIMEOUT;
        let mut clean = loop {
            if self.starting.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
                break true;
            }
            if Instant::now() > deadline {
                tracing::warn!("groups were still starting at shutdown");
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        for g in self.all_groups() {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(group = g.id, error = %e, "raft shutdown");
            }
            // openraft does not wait for its state-machine task: closing the store waits for
            // an apply under way and refuses any later one.
            clean &= g.kv.close();
        }
        clean &= !self.unclean.load(Ordering::SeqCst) && self.rebuild_leftovers();
        if let Err(e) = self.db.flush() {
            tracing::warn!(error = %e, "sled flush at shutdown");
            return;
        }
        if clean {
            if let Err(e) =
                sync_tree(&self.opts.data_dir.join("sm")).and_then(|_| mark_clean(&self.opts.data_dir))
            {
                tracing::warn!(error = %e, "could not mark the state machine clean");
            }
        }
    }

    /// Rebuilds (empties) the trees of groups that were to be rebuilt but never opened since
    /// the start (moved off this node meanwhile, or not started yet), so that the clean-stop
    /// marker can vouch for every tree. Whether all went well.
    fn rebuild_leftovers(&self) -> bool {
        let ids: Vec<GroupId> =
            self.rebuild.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        for id in ids {
            let dir = self.opts.data_dir.join(format!("group-{id}"));
            let emptied = if dir.exists() {
                KvStore::open(&self.db, id, &dir).and_then(|kv| {
                    kv.import(&[])?;
                    kv.close();
                    Ok(())
                })
            } else {
                // Not hosted here any more: only its tree is left.
                self.db.drop_tree(format!("group-{id}")).map(|_| ()).map_err(Error::from)
            };
            match emptied {
                Ok(()) => {
                    self.rebuild.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                }
                Err(e) => {
                    tracing::warn!(group = id, error = %e, "could not empty a group's state machine at shutdown");
                    return false;
                }
            }
        }
        true
    }

    pub(crate) fn group(&self, id: GroupId) -> Option<Arc<Group>> {
        self.groups.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// The data (shard) groups this node hosts: not the metadata or ledger group.
    /// The test faults on this node's outgoing links (`faults.rs`).
    pub fn faults(&self) -> &crate::faults::Faults {
        &self.channels.faults
    }

    /// Every group this node hosts, the metadata and ledger groups too, in id order.
    /// The hosted groups, read-locked (for passes that must not copy the list; never held
    /// across an await).
    pub(crate) fn groups_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<GroupId, Arc<Group>>> {
        self.groups.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn all_groups(&self) -> Vec<Arc<Group>> {
        self.groups.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    pub(crate) fn data_groups(&self) -> Vec<Arc<Group>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|g| g.id != META_GROUP && g.id != LEDGER_GROUP)
            .cloned()
            .collect()
    }

    pub(crate) fn meta(&self) -> Result<Arc<Group>> {
        self.group(META_GROUP).ok_or_else(|| Error::Unavailable("metadata group not started".into()))
    }

    /// The cluster map as this node's metadata replica has it.
    pub fn map(&self) -> Option<Arc<ClusterMap>> {
        self.group(META_GROUP).and_then(|g| g.kv.cluster_map().ok().flatten())
    }

    pub(crate) fn require_map(&self) -> Result<Arc<ClusterMap>> {
        self.map().ok_or_else(|| Error::Unavailable("the cluster is not initialized yet".into()))
    }

    /// The metadata group's initial voters: up to 5 members, spread over sites.
    fn meta_voters(&self) -> BTreeMap<NodeId, NodeInfo> {
        let all: BTreeMap<NodeId, NodeInfo> = self.opts.members.iter().map(|m| (m.id, m.clone())).collect();
        let ids = crate::shard::place(&all, &BTreeMap::new(), MAX_META_VOTERS, 0);
        ids.into_iter().map(|id| (id, all[&id].clone())).collect()
    }

    // ---- groups ----

    /// Starts a data shard this node is a replica of. A shard born from a split starts from
    /// the snapshot its parent's replicas wrote when they applied the split: a replica of the
    /// parent waits until it has applied it (the snapshot is there), and no replica ever
    /// initializes such a shard empty (others get it from its leader).
    async fn start_shard(self: &Arc<Self>, map: &ClusterMap, shard: &crate::shard::ShardInfo) -> Result<()> {
        if let Some(parent) = shard.parent {
            let parent_replica = map.shard(parent).is_some_and(|p| p.replicas.contains(&self.opts.id));
            let snapshot = self.opts.data_dir.join(format!("group-{}", shard.id)).join("snapshot.bin");
            if parent_replica && !snapshot.exists() && self.engine.last_entry(shard.id)?.is_none() {
                return Ok(());
            }
        }
        self.start_group(shard.id, members_of(map, &shard.replicas), shard.parent.is_none()).await
    }

    async fn start_group(
        self: &Arc<Self>,
        id: GroupId,
        members: BTreeMap<NodeId, NodeInfo>,
        may_initialize: bool,
    ) -> Result<()> {
        if self.group(id).is_some() || !self.starting.lock().unwrap_or_else(|p| p.into_inner()).insert(id) {
            return Ok(());
        }
        let r = self.open_group(id, members, may_initialize).await;
        self.starting.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        r
    }

    async fn open_group(
        self: &Arc<Self>,
        id: GroupId,
        members: BTreeMap<NodeId, NodeInfo>,
        may_initialize: bool,
    ) -> Result<()> {
        // After `shutdown` has begun no group starts: its applies would race the final flush.
        if *self.shutdown.borrow() {
            return Err(Error::Unavailable("the node is stopping".into()));
        }
        // Taken off the list only once the group runs: a failed open rebuilds again next time.
        let rebuild = self.rebuild.lock().unwrap_or_else(|p| p.into_inner()).contains(&id);
        self.open_group_inner(id, members, may_initialize, rebuild).await?;
        self.rebuild.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        Ok(())
    }

    async fn open_group_inner(
        self: &Arc<Self>,
        id: GroupId,
        members: BTreeMap<NodeId, NodeInfo>,
        may_initialize: bool,
        rebuild: bool,
    ) -> Result<()> {
        let dir = self.opts.data_dir.join(format!("group-{id}"));
        let ledger = (id == LEDGER_GROUP).then(|| self.ledger.ctx.clone());
        let sm = StateMachineStore::open_checked(&dir, &self.db, id, ledger, rebuild)?;
        let kv = sm.kv();
        let fresh = self.engine.last_entry(id)?.is_none()
            && self.engine.purged(id).is_none()
            && self.engine.vote(id).is_none()
            && kv.raft_meta()?.is_none();
        let rejoining = dir.join(REJOIN_MARKER).exists();
        // What the group's log holds is durable: the file was synced at start
        // (`AuditQueue::open`), and this sync covers entries an earlier raft of this group in
        // this process may have appended since.
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.engine.sync(move |r| {
            let _ = tx.send(r);
        });
        rx.await
            .map_err(|_| Error::Storage("the log syncer stopped".into()))?
            .map_err(|e| Error::Storage(format!("syncing the log before group {id} starts: {e}")))?;
        let flushed = crate::raft_store::Flushed::new(
            self.engine.clone(),
            self.engine.last_entry(id)?.map_or(0, |(index, _)| index),
        );
        let network = NetworkFactory { channels: self.channels.clone(), group: id, flushed: flushed.clone() };
        let log = LogStore::new(self.engine.clone(), id, flushed);
        let raft = Raft::new(self.opts.id, self.config.clone(), network, log, sm)
            .await
            .map_err(|e| Error::Internal(format!("raft start for group {id}: {e}")))?;
        if rejoining {
            // A restored (or half-rejoined) replica knows a membership in which it is a voter,
            // and its log may lack entries it acknowledged: it must not campaign either, not
            // only refuse votes, until the leader has caught it up (`rejoin`).
            raft.runtime_config().elect(false);
        }
        let group = Arc::new(Group {
            id,
            raft,
            kv,
            dir,
            rejoining: AtomicBool::new(rejoining),
            deciding: AtomicBool::new(fresh),
            leader_changes: AtomicU64::new(0),
            quiet: Default::default(),
            seen_cache: Mutex::new(None),
        });
        // Counts leader changes as this replica sees them; ends when raft stops (its metrics
        // channel closes) or the group is dropped. The server metrics change with the vote,
        // state and leader only — not with every applied entry, as the full metrics do.
        let mut watch = group.raft.server_metrics();
        let weak = Arc::downgrade(&group);
        tokio::spawn(async move {
            let mut last = watch.borrow().current_leader;
            while watch.changed().await.is_ok() {
                let (now, term) = {
                    let m = watch.borrow();
                    (m.current_leader, m.vote.leader_id().get_term())
                };
                let Some(g) = weak.upgrade() else { return };
                if now != last && now.is_some() {
                    g.leader_changes.fetch_add(1, Ordering::Relaxed);
                }
                // A quiet replica whose leader or term changed wakes at once (not at the next
                // quiesce pass): it may be leading, or following someone new, without a timer.
                g.on_view(now, term);
                last = now;
            }
        });
        self.groups.write().unwrap_or_else(|p| p.into_inner()).insert(id, group.clone());
        if fresh || rejoining {
            let n = self.clone();
            tokio::spawn(async move { n.bootstrap(group, members, fresh, may_initialize).await });
        }
        Ok(())
    }

    /// Keeps the hosted groups in line with the cluster map: starts assigned groups, installs
    /// the first map, records replicated nodes, and moves leadership to preferred replicas.
    async fn reconcile_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.reconcile().await {
                tracing::debug!(error = %e, "reconcile");
            }
        }
    }

    async fn reconcile(self: &Arc<Self>) -> Result<()> {
        let meta = self.meta()?;
        let map = match meta.kv.cluster_map()? {
            Some(map) => map,
            None => {
                if meta.is_leader() {
                    let map = initial_map(&self.opts.members, self.opts.initial_shards, self.opts.replicas);
                    self.propose_local(&meta, Command::InitCluster(map)).await?;
                }
                return Ok(());
            }
        };
        for shard in map.shards_of(self.opts.id) {
            if self.group(shard.id).is_none() {
                self.start_shard(&map, shard).await?;
            }
        }
        // The map's shards by id, once per pass (a lookup per group would be quadratic).
        let by_id: HashMap<GroupId, &crate::shard::ShardInfo> = map.all_shards().map(|s| (s.id, s)).collect();
        // Groups the committed map no longer assigns here were moved away (the map changes
        // only after the group's membership did): drop their data.
        let hosted: Vec<GroupId> =
            self.groups.read().unwrap_or_else(|p| p.into_inner()).keys().copied().collect();
        for id in hosted {
            let shard = by_id.get(&id);
            let assigned = shard.is_some_and(|s| s.replicas.contains(&self.opts.id));
            if id != META_GROUP && shard.is_some() && !assigned {
                self.drop_group(id).await?;
            }
        }
        if self.group(LEDGER_GROUP).is_some_and(|g| g.is_leader())
            && !self.ledger_busy.swap(true, Ordering::SeqCst)
        {
            let n = self.clone();
            let map = map.clone();
            tokio::spawn(async move {
                n.reconcile_ledger(&map).await;
                n.ledger_busy.store(false, Ordering::SeqCst);
            });
        }
        if meta.is_leader() && !self.moving.swap(true, Ordering::SeqCst) {
            let n = self.clone();
            tokio::spawn(async move {
                if let Err(e) = n.rebalance_step().await {
                    tracing::info!(error = %e, "rebalance step");
                }
                n.moving.store(false, Ordering::SeqCst);
            });
        }
        let groups: Vec<Arc<Group>> =
            self.groups.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for g in groups {
            let (state, leader, applied, last) = {
                let m = g.raft.metrics();
                let m = m.borrow();
                (m.state, m.current_leader, m.last_applied.map(|l| l.index), m.last_log_index)
            };
            if state == ServerState::Leader {
                // A quiet group is idle: who has replicated it cannot have changed.
                if !g.is_quiet() {
                    let m = g.raft.metrics().borrow().clone();
                    self.mark_seen(&g, &m).await;
                }
                if g.id == META_GROUP {
                    self.add_learners(&g, &map).await;
                }
            }
            // Leadership balance: the preferred replica takes its shard back once it is a
            // caught-up follower (a restarted node gets its share again).
            let preferred = by_id.get(&g.id).and_then(|s| s.replicas.first().copied());
            if preferred == Some(self.opts.id)
                && state == ServerState::Follower
                && leader.is_some()
                && applied >= last
                && !g.rejoining.load(Ordering::SeqCst)
            {
                let now = Instant::now();
                let due = {
                    let mut last = self.last_elect.lock().unwrap_or_else(|p| p.into_inner());
                    let due = last.get(&g.id).is_none_or(|t| now.duration_since(*t) > Duration::from_secs(5));
                    if due {
                        last.insert(g.id, now);
                    }
                    due
                };
                if due {
                    tracing::info!(group = g.id, "taking back leadership as the preferred replica");
                    g.wake();
                    let _ = g.raft.trigger().elect().await;
                }
            }
        }
        Ok(())
    }

    /// Records each member that has replicated the group's log (see `Command::MarkSeen`).
    async fn mark_seen(&self, g: &Group, m: &openraft::RaftMetrics<NodeId, BasicNode>) {
        let seen: BTreeMap<NodeId, u64> = g.seen(m.last_applied.map(|l| l.index)).into_iter().collect();
        let mut replicated = vec![self.opts.id];
        if let Some(rep) = &m.replication {
            replicated.extend(rep.iter().filter(|(_, matched)| matched.is_some()).map(|(id, _)| *id));
        }
        let membership = m.membership_config.membership();
        for id in replicated.into_iter().filter(|id| !seen.contains_key(id)) {
            let instance = if id == self.opts.id {
                Some(self.instance)
            } else {
                match membership.get_node(&id) {
                    Some(n) => self.peer_status(g.id, id, &n.addr).await.map(|s| s.instance),
                    None => None,
                }
            };
            if let Some(instance) = instance {
                if let Err(e) = self.propose_local(g, Command::MarkSeen { node: id, instance }).await {
                    tracing::debug!(group = g.id, error = %e, "mark seen");
                }
            }
        }
    }

    /// Members of the map that are not in a group every node replicates (metadata, ledger) yet
    /// join it as learners.
    pub(crate) async fn add_learners(&self, g: &Group, map: &ClusterMap) {
        let m = g.raft.metrics().borrow().clone();
        let known: BTreeSet<NodeId> = m.membership_config.membership().nodes().map(|(id, _)| *id).collect();
        for n in map.nodes.values().filter(|n| !known.contains(&n.id) && !map.leaving.contains(&n.id)) {
            g.wake();
            let add = g.raft.add_learner(n.id, BasicNode::new(&n.addr), false);
            match tokio::time::timeout(CONTROL_STEP_TIMEOUT, add).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(node = n.id, error = %e, "add learner"),
                Err(_) => tracing::warn!(group = g.id, node = n.id, "adding a learner timed out"),
            }
        }
    }

    /// Nodes that left the map, or are leaving it, leave the group (a voter's seat goes to a
    /// learner first). For the ledger group; the metadata group does this in `finish_leave`.
    pub(crate) async fn remove_departed(&self, g: &Group, map: &ClusterMap) {
        let membership = g.raft.metrics().borrow().membership_config.membership().clone();
        let gone = |id: &NodeId| !map.nodes.contains_key(id) || map.leaving.contains(id);
        // One change per pass: the membership read above is stale after it.
        let departed = membership.nodes().map(|(id, _)| *id).find(|id| gone(id));
        if let Some(id) = departed {
            g.wake();
            let change = |c: ChangeMembers<NodeId, BasicNode>| {
                let raft = g.raft.clone();
                async move {
                    match tokio::time::timeout(CONTROL_STEP_TIMEOUT, raft.change_membership(c, false)).await {
                        Ok(r) => r.map(|_| ()).map_err(|e| e.to_string()),
                        Err(_) => Err(format!("no answer within {CONTROL_STEP_TIMEOUT:?}")),
                    }
                }
            };
            let r = if membership.voter_ids().any(|v| v == id) {
                if let Some(l) = membership.learner_ids().find(|l| !gone(l)) {
                    if let Err(e) = change(ChangeMembers::AddVoterIds(BTreeSet::from([l]))).await {
                        tracing::debug!(group = g.id, error = %e, "promote learner");
                        return;
                    }
                }
                change(ChangeMembers::RemoveVoters(BTreeSet::from([id]))).await
            } else {
                change(ChangeMembers::RemoveNodes(BTreeSet::from([id]))).await
            };
            match r {
                Ok(()) => tracing::info!(group = g.id, node = id, "removed a departed node from the group"),
                Err(e) => tracing::warn!(group = g.id, node = id, error = %e, "remove departed node"),
            }
        }
    }

    /// Stops a group this node no longer hosts and deletes its log, state and snapshot.
    async fn drop_group(&self, id: GroupId) -> Result<()> {
        let Some(g) = self.groups.write().unwrap_or_else(|p| p.into_inner()).remove(&id) else {
            return Ok(());
        };
        tracing::info!(group = id, "dropping a group moved off this node");
        match tokio::time::timeout(CONTROL_STEP_TIMEOUT, g.raft.shutdown()).await {
            Ok(Err(e)) => tracing::warn!(group = id, error = %e, "raft shutdown"),
            Ok(Ok(())) => {}
            Err(_) => {
                // Its files may still be in use: keep them (a leak, not a corruption), and let
                // the control loop go on. Its applies may go on too, unseen by `shutdown`.
                self.unclean.store(true, Ordering::SeqCst);
                tracing::error!(group = id, "raft did not shut down in time; the group's data is kept");
                return Ok(());
            }
        }
        g.kv.close();
        self.engine.drop_group(id)?;
        self.db.drop_tree(format!("group-{id}"))?;
        if g.dir.exists() {
            std::fs::remove_dir_all(&g.dir)?;
        }
        Ok(())
    }

    /// One step of the metadata leader's rebalancing: finish or start one replica move, or
    /// complete a drained node's removal.
    async fn rebalance_step(self: &Arc<Self>) -> Result<()> {
        let map = self.require_map()?;
        if let Some(s) = map.splitting {
            return self.execute_split(s).await;
        }
        if let Some(m) = map.moving {
            return self.execute_move(m).await;
        }
        if let Some(m) = map.plan_move() {
            tracing::info!(shard = m.shard, from = m.from, to = m.to, "moving a replica");
            return self.execute_move(m).await;
        }
        let load = map.load();
        if let Some(id) = map.leaving.iter().copied().find(|id| load.get(id) == Some(&0)) {
            return self.finish_leave(id).await;
        }
        // Size split: every 2 s, a shard whose leader counts more than `split_keys` keys.
        let due = {
            let mut last = self.last_split_check.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|t| t.elapsed() > Duration::from_secs(2));
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            let big = self.oversized_shards().await.into_iter().max_by_key(|(_, keys)| *keys);
            if let Some((shard, keys)) = big {
                if let Some(split) = map.plan_split(shard) {
                    tracing::info!(shard, keys, child = split.child, "splitting a shard");
                    return self.execute_split(split).await;
                }
            }
        }
        Ok(())
    }

    /// Carries out a split in three idempotent steps, recorded in the map so a new metadata
    /// leader resumes: (1) the map records the split under way; (2) the shard's group applies
    /// `Split` (each replica writes the child's starting snapshot, drops the keys, and refuses
    /// the child's keys from then on); (3) the map gains the child shard, on the same replicas.
    async fn execute_split(self: &Arc<Self>, split: crate::shard::Split) -> Result<()> {
        let meta = self.meta()?;
        let map = self.require_map()?;
        if map.shard(split.child).is_some() {
            return Ok(());
        }
        let shard = map
            .shard(split.shard)
            .ok_or_else(|| Error::NotFound(format!("no shard {}", split.shard)))?
            .clone();
        if map.splitting != Some(split) {
            let cmd = Command::SetSplit { split, epoch: map.epoch, done: false };
            expect_map(self.propose_local(&meta, cmd).await?)?;
        }
        let cmd = Command::Split { start: shard.start, at: split.at, end: shard.end, child: split.child };
        match tokio::time::timeout(self.opts.request_timeout, self.propose_routed(split.shard, &cmd)).await {
            Ok(Ok(Response::None)) => {}
            Ok(Ok(other)) => return Err(Error::Internal(format!("split: unexpected {other:?}"))),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Error::Unavailable("split not confirmed in time".into())),
        }
        let map = self.require_map()?;
        let cmd = Command::SetSplit { split, epoch: map.epoch, done: true };
        expect_map(self.propose_local(&meta, cmd).await?)?;
        tracing::info!(shard = split.shard, child = split.child, "shard split");
        Ok(())
    }

    /// Carries out a move; every step is idempotent, so a new leader can resume it.
    async fn execute_move(self: &Arc<Self>, m: Move) -> Result<()> {
        let meta = self.meta()?;
        // 1. The map lists the target too, so it starts the group.
        let map = self.require_map()?;
        let shard =
            map.shard(m.shard).ok_or_else(|| Error::NotFound(format!("no shard {}", m.shard)))?.clone();
        if !shard.replicas.contains(&m.to) && shard.replicas.contains(&m.from) {
            let mut replicas = shard.replicas.clone();
            replicas.push(m.to);
            let cmd = Command::SetReplicas { shard: m.shard, replicas, epoch: map.epoch, moving: Some(m) };
            expect_map(self.propose_local(&meta, cmd).await?)?;
        }
        // 2. The group's leader adds the target, waits for it to catch up, removes the source.
        let map = self.require_map()?;
        let addr =
            map.nodes.get(&m.to).map(|n| n.addr.clone()).ok_or_else(|| Error::NotFound("target".into()))?;
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let r = self.on_group_leader(m.shard, &(m.to, addr.clone(), m.from)).await;
            match r {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(shard = m.shard, error = %e, "change replica; retrying");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => return Err(e),
            }
        }
        // 3. The map drops the source; the target takes its position (and so its preferred
        //    leadership).
        let map = self.require_map()?;
        let shard =
            map.shard(m.shard).ok_or_else(|| Error::NotFound(format!("no shard {}", m.shard)))?.clone();
        let mut replicas: Vec<NodeId> = shard.replicas.iter().copied().filter(|r| *r != m.to).collect();
        match replicas.iter().position(|r| *r == m.from) {
            Some(pos) => replicas[pos] = m.to,
            None => replicas.push(m.to),
        }
        let cmd = Command::SetReplicas { shard: m.shard, replicas, epoch: map.epoch, moving: None };
        expect_map(self.propose_local(&meta, cmd).await?)?;
        tracing::info!(shard = m.shard, from = m.from, to = m.to, "replica moved");
        Ok(())
    }

    /// Sends a replica change to whichever replica of the group leads it.
    async fn on_group_leader(&self, group: GroupId, req: &(NodeId, String, NodeId)) -> Result<()> {
        if let Some(g) = self.group(group) {
            if g.is_leader() {
                return self.change_replica(&g, req.0, &req.1, req.2).await;
            }
        }
        let mut last = Error::Unavailable(format!("no leader of shard {group} found"));
        // The source of the move last: once removed it may still think it leads.
        let mut replicas = self.replicas_of(group)?;
        replicas.sort_by_key(|(id, _)| *id == req.2);
        for (id, addr) in replicas {
            let client = self.channels.client(id, &addr)?;
            let r = call::<_, (), Error, _, _>(
                client,
                group,
                req,
                Duration::from_secs(150),
                "change_replica",
                |mut c, f| async move { c.change_replica(f).await },
            )
            .await;
            match r {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = e,
                Err(e) => last = e.into(),
            }
        }
        Err(last)
    }

    /// Leader side: `to` becomes a voter (learner first, caught up), `from` is removed.
    async fn change_replica(&self, g: &Group, to: NodeId, addr: &str, from: NodeId) -> Result<()> {
        if !g.is_leader() {
            return Err(Error::Unavailable("not the leader".into()));
        }
        let map_err =
            |e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| Error::Unavailable(e.to_string());
        let membership = g.raft.metrics().borrow().membership_config.membership().clone();
        // Every step is bounded: a leader that was just removed from the group still believes
        // it leads for a moment, and its proposals could never commit.
        let limit = self.opts.request_timeout;
        let timed_out = || Error::Unavailable(format!("membership change not confirmed within {limit:?}"));
        g.wake();
        if !membership.voter_ids().any(|v| v == to) {
            tokio::time::timeout(
                Duration::from_secs(120),
                g.raft.add_learner(to, BasicNode::new(addr), true),
            )
            .await
            .map_err(|_| Error::Unavailable(format!("node {to} did not catch up within 120 s")))?
            .map_err(map_err)?;
            let add = g.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([to])), false);
            tokio::time::timeout(limit, add).await.map_err(|_| timed_out())?.map_err(map_err)?;
        }
        let membership = g.raft.metrics().borrow().membership_config.membership().clone();
        if membership.get_node(&from).is_some() {
            let remove = g.raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([from])), false);
            tokio::time::timeout(limit, remove).await.map_err(|_| timed_out())?.map_err(map_err)?;
        }
        if g.is_leader() && self.opts.id != from {
            let forget = self.propose_local(g, Command::ForgetSeen(from));
            tokio::time::timeout(limit, forget).await.map_err(|_| timed_out())??;
        }
        Ok(())
    }

    /// A drained node leaves the metadata group (its voter seat goes to a learner first), then
    /// the map.
    async fn finish_leave(&self, id: NodeId) -> Result<()> {
        let meta = self.meta()?;
        let map_err =
            |e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| Error::Unavailable(e.to_string());
        let membership = meta.raft.metrics().borrow().membership_config.membership().clone();
        let map = self.require_map()?;
        // The leaving node learns that its last replicas moved away (and deletes them) from the
        // metadata log: let it catch up with it before it stops receiving that log. Bounded: a
        // node that is down cannot hold the leave up.
        if meta.is_leader() && membership.get_node(&id).is_some() {
            let target = meta.raft.metrics().borrow().last_log_index;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let matched = meta
                    .raft
                    .metrics()
                    .borrow()
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|l| l.index);
                if matched >= target || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        meta.wake();
        let change = |c: ChangeMembers<NodeId, BasicNode>| {
            let raft = meta.raft.clone();
            async move {
                tokio::time::timeout(CONTROL_STEP_TIMEOUT, raft.change_membership(c, false))
                    .await
                    .map_err(|_| {
                        Error::Unavailable(format!(
                            "membership change: no answer within {CONTROL_STEP_TIMEOUT:?}"
                        ))
                    })?
                    .map_err(map_err)
            }
        };
        if membership.voter_ids().any(|v| v == id) {
            let replacement = membership.learner_ids().find(|l| !map.leaving.contains(l));
            if let Some(l) = replacement {
                change(ChangeMembers::AddVoterIds(BTreeSet::from([l]))).await?;
            }
            change(ChangeMembers::RemoveVoters(BTreeSet::from([id]))).await?;
        } else if membership.get_node(&id).is_some() {
            change(ChangeMembers::RemoveNodes(BTreeSet::from([id]))).await?;
        }
        if meta.is_leader() {
            expect_map(self.propose_local(&meta, Command::RemoveNode(id)).await?)?;
            tracing::info!(node = id, "node left the cluster");
        }
        Ok(())
    }

    // ---- status ----

    /// Per hosted group: (group, leader changes seen, log entries kept — appended and not yet
    /// purged behind a snapshot).
    pub fn raft_log_stats(&self) -> Vec<(GroupId, u64, u64)> {
        let groups: Vec<Arc<Group>> =
            self.groups.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let mut out: Vec<(GroupId, u64, u64)> = groups
            .iter()
            .map(|g| {
                let m = g.raft.metrics().borrow().clone();
                let last = m.last_log_index.unwrap_or(0);
                let purged = m.purged.map_or(0, |l| l.index);
                (g.id, g.leader_changes.load(Ordering::Relaxed), last.saturating_sub(purged))
            })
            .collect();
        out.sort_unstable_by_key(|x| x.0);
        out
    }

    pub fn group_statuses(&self) -> Vec<GroupStatus> {
        let groups: Vec<Arc<Group>> =
            self.groups.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        groups.iter().map(|g| g.status(self.opts.id, self.instance)).collect()
    }

    /// Ready: the cluster map is installed and every group this node hosts has a leader.
    pub fn is_ready(&self) -> bool {
        let Some(map) = self.map() else { return false };
        let hosted: Vec<GroupId> =
            [META_GROUP, LEDGER_GROUP].into_iter().chain(map.shards_of(self.opts.id).map(|s| s.id)).collect();
        hosted.iter().all(|id| match self.group(*id) {
            Some(g) => {
                let m = g.raft.metrics().borrow().clone();
                m.current_leader.is_some() && !g.rejoining.load(Ordering::SeqCst)
            }
            None => false,
        })
    }

    /// Every node's view of its groups (this node's directly, the others' over the transport);
    /// `None` for a node that did not answer.
    pub async fn cluster_statuses(&self) -> BTreeMap<NodeId, Option<Vec<GroupStatus>>> {
        let mut out = BTreeMap::new();
        let nodes: Vec<NodeInfo> = match self.map() {
            Some(m) => m.nodes.values().cloned().collect(),
            None => self.opts.members.clone(),
        };
        let calls = nodes.iter().map(|n| async move {
            if n.id == self.opts.id {
                return (n.id, Some(self.group_statuses()));
            }
            let Ok(client) = self.channels.client(n.id, &n.addr) else { return (n.id, None) };
            let r = call::<_, Vec<GroupStatus>, Error, _, _>(
                client,
                ALL_GROUPS,
                &(),
                Duration::from_millis(800),
                "status",
                |mut c, f| async move { c.status(f).await },
            )
            .await;
            (n.id, r.ok().and_then(|r| r.ok()))
        });
        for (id, st) in futures::future::join_all(calls).await {
            out.insert(id, st);
        }
        out
    }

    /// Every node's led shards with more than `split_keys` keys (asked of all nodes at once;
    /// a node that does not answer counts as having none). Cheap on purpose: it runs every
    /// two seconds, and a node may lead hundreds of shards.
    async fn oversized_shards(&self) -> Vec<(GroupId, u64)> {
        let nodes: Vec<NodeInfo> = match self.map() {
            Some(m) => m.nodes.values().cloned().collect(),
            None => self.opts.members.clone(),
        };
        let over = self.opts.split_keys;
        let calls = nodes.iter().map(|n| async move {
            if n.id == self.opts.id {
                return self.led_shards_over(over);
            }
            let Ok(client) = self.channels.client(n.id, &n.addr) else { return vec![] };
            call::<_, Vec<(GroupId, u64)>, Error, _, _>(
                client,
                0,
                &over,
                Duration::from_millis(800),
                "sizes",
                |mut c, f| async move { c.sizes(f).await },
            )
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default()
        });
        futures::future::join_all(calls).await.into_iter().flatten().collect()
    }

    /// The data shards this node leads that hold more than `over` keys, with their key counts.
    fn led_shards_over(&self, over: u64) -> Vec<(GroupId, u64)> {
        self.all_groups()
            .iter()
            .filter(|g| g.id != META_GROUP && g.id != LEDGER_GROUP && g.is_leader())
            .filter_map(|g| g.kv.key_count().ok().filter(|k| *k > over).map(|k| (g.id, k)))
            .collect()
    }

    // ---- writes ----

    /// Proposes a command through consensus from any node, within the request timeout.
    pub async fn propose(&self, cmd: Command) -> Result<Response> {
        validate_command(&cmd, self.opts.max_value_bytes)?;
        // Values of confidential namespaces are sealed here, before they reach consensus.
        let cmd = match cmd {
            Command::Batch(ops) => Command::Batch(self.seal_ops(ops).await?),
            other => other,
        };
        self.propose_sealed(cmd).await
    }

    /// `propose` for a command whose values are already sealed (re-encryption).
    pub(crate) async fn propose_sealed(&self, cmd: Command) -> Result<Response> {
        let timeout = self.opts.request_timeout;
        let routed = async {
            loop {
                let group = self.route(&cmd).await?;
                match self.propose_routed(group, &cmd).await? {
                    // The shard was split and this node's map is behind: route again.
                    Response::WrongShard => tokio::time::sleep(Duration::from_millis(20)).await,
                    other => return Ok(other),
                }
            }
        };
        match tokio::time::timeout(timeout, routed).await {
            Ok(r) => r,
            Err(_) => Err(Error::Unavailable(format!(
                "the write was not confirmed by a quorum within {timeout:?}; it may or may not be applied"
            ))),
        }
    }

    /// Which group a command goes to; checks that its namespaces exist.
    async fn route(&self, cmd: &Command) -> Result<GroupId> {
        match cmd {
            Command::Batch(ops) => {
                let map = self.require_map()?;
                for op in ops {
                    self.require_namespace(op.ns()).await?;
                }
                let first = map
                    .shard_for(ops[0].ns(), ops[0].key())
                    .ok_or_else(|| Error::Internal("no shard".into()))?;
                for op in &ops[1..] {
                    let s =
                        map.shard_for(op.ns(), op.key()).ok_or_else(|| Error::Internal("no shard".into()))?;
                    if s.id != first.id {
                        return Err(Error::invalid(
                            "ops",
                            format!(
                                "a batch must stay within one shard: {:?} is in shard {}, {:?} in shard {}",
                                ops[0].key(),
                                first.id,
                                op.key(),
                                s.id
                            ),
                        ));
                    }
                }
                Ok(first.id)
            }
            Command::PutNamespace(_)
            | Command::AddNamespaceKey { .. }
            | Command::SetNamespaceKeys { .. }
            | Command::RetireNamespaceKey { .. }
            | Command::RevokeToken { .. }
            | Command::InitCluster(_)
            | Command::AddNode(_)
            | Command::SetLeaving(_)
            | Command::SetReplicas { .. }
            | Command::RemoveNode(_)
            | Command::SetSplit { .. } => Ok(META_GROUP),
            Command::Split { .. } => Err(Error::invalid("command", "internal only")),
            Command::MarkSeen { .. } | Command::ForgetSeen(_) | Command::LedgerBlock(_) => {
                Err(Error::invalid("command", "internal only"))
            }
            Command::LedgerSubmit(_) => Ok(LEDGER_GROUP),
            // Time series: the caller picked the shard (store/src/ts.rs); any shard of the
            // namespace may hold any series (queries ask them all), so a split needs no retry.
            Command::TsWrite { shard, .. }
            | Command::TsWriteSealed { shard, .. }
            | Command::TsCompactSealed { shard, .. } => Ok(*shard),
            Command::SetTsRetention { .. } => Ok(META_GROUP),
        }
    }

    /// The replicas to try for a group this node does not host, preferred leader first.
    fn replicas_of(&self, group: GroupId) -> Result<Vec<(NodeId, String)>> {
        let map = self.require_map()?;
        let shard = map.shard(group).ok_or_else(|| Error::NotFound(format!("no shard {group}")))?;
        Ok(shard.replicas.iter().filter_map(|r| map.nodes.get(r).map(|n| (n.id, n.addr.clone()))).collect())
    }

    async fn propose_routed(&self, group: GroupId, cmd: &Command) -> Result<Response> {
        let mut attempt = 0usize;
        loop {
            let target = match self.group(group) {
                // Ledger entries go to the leader's block builder, never straight into the log.
                Some(g) if matches!(cmd, Command::LedgerSubmit(_)) => {
                    if g.is_leader() {
                        Self::received_durable().await?;
                        match self.propose_local(&g, cmd.clone()).await {
                            Err(Error::Unavailable(_)) => None,
                            other => return other,
                        }
                    } else {
                        let m = g.raft.metrics().borrow().clone();
                        m.current_leader.and_then(|l| {
                            m.membership_config.membership().get_node(&l).map(|n| (l, n.addr.clone()))
                        })
                    }
                }
                // A local leader appends the entry after the received record, in the same log
                // file, and syncs both before it replicates (`Node::with_received`).
                Some(g) => match self.timed_write(&g, cmd.clone()).await {
                    Ok(resp) => return Ok(resp.data),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                        f.leader_node.map(|n| (f.leader_id.unwrap_or_default(), n.addr))
                    }
                    Err(RaftError::APIError(e)) => return Err(Error::Internal(e.to_string())),
                    Err(RaftError::Fatal(e)) => return Err(Error::Unavailable(format!("raft stopped: {e}"))),
                },
                None => {
                    let replicas = self.replicas_of(group)?;
                    replicas.get(attempt % replicas.len().max(1)).cloned()
                }
            };
            attempt += 1;
            if let Some((leader, addr)) = target {
                // The leader is elsewhere: nothing orders this request's received record
                // before the entry there, so it must be durable first (`Node::with_received`).
                Self::received_durable().await?;
                let client = self.channels.client(leader, &addr)?;
                let r = call::<_, Response, Error, _, _>(
                    client,
                    group,
                    cmd,
                    self.opts.request_timeout,
                    "forward",
                    |mut c, f| async move { c.forward(f).await },
                )
                .await;
                if r.is_err() {
                    // The leader's node did not answer: a quiet replica here must not wait for
                    // heartbeats that will not come.
                    if let Some(g) = self.group(group) {
                        g.wake();
                    }
                }
                match r {
                    Ok(Ok(resp)) => return Ok(resp),
                    // "Not leader": the peer did not propose it; safe to retry.
                    Ok(Err(Error::Unavailable(_))) | Err(TransportError::Unreachable(_)) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(e) => {
                        return Err(Error::Unavailable(format!(
                            "forwarding to node {leader}: {e}; the write may or may not be applied"
                        )))
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(if attempt < 3 { 10 } else { 50 })).await;
        }
    }

    /// Proposes only if this node leads the group (the `Forward` handler): never forwards.
    /// `client_write`, with its time in `commit_latency` when it commits here.
    async fn timed_write(
        &self,
        g: &Group,
        cmd: Command,
    ) -> std::result::Result<
        openraft::raft::ClientWriteResponse<crate::TypeConfig>,
        RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>,
    > {
        let started = std::time::Instant::now();
        g.wake();
        let r = g.raft.client_write(cmd).await;
        if r.is_ok() {
            self.commit_latency.observe(started.elapsed());
        }
        r
    }

    pub(crate) async fn propose_local(&self, g: &Group, cmd: Command) -> Result<Response> {
        validate_command(&cmd, crate::kv::APPLY_MAX_VALUE_BYTES)?;
        if let Command::LedgerSubmit(entries) = cmd {
            if g.id != LEDGER_GROUP || !g.is_leader() {
                return Err(Error::Unavailable("not the leader".into()));
            }
            return self.ledger_enqueue(entries).await;
        }
        // Bounded: the control loop (moves, leaves, mark-seen) must not wait forever on a group
        // that cannot commit. A write given up on may still commit later; every control
        // command is idempotent or guarded by the map's epoch.
        let started = std::time::Instant::now();
        g.wake();
        let write =
            tokio::time::timeout(CONTROL_STEP_TIMEOUT, g.raft.client_write(cmd)).await.map_err(|_| {
                tracing::warn!(group = g.id, "a proposal was not committed within {CONTROL_STEP_TIMEOUT:?}");
                Error::Unavailable(format!("group {}: not committed within {CONTROL_STEP_TIMEOUT:?}", g.id))
            })?;
        match write {
            Ok(resp) => {
                self.commit_latency.observe(started.elapsed());
                Ok(resp.data)
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(Error::Unavailable("not the leader".into()))
            }
            Err(RaftError::APIError(e)) => Err(Error::Internal(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(Error::Unavailable(format!("raft stopped: {e}"))),
        }
    }

    // ---- reads ----

    /// Returns once this replica of `g` has applied everything committed before the call.
    pub(crate) async fn read_barrier(&self, g: &Group) -> Result<()> {
        let timeout = self.opts.request_timeout;
        let deadline = Instant::now() + timeout;
        match tokio::time::timeout_at(deadline, self.read_barrier_inner(g, deadline)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Unavailable(format!(
                "no leader of group {} confirmed by a quorum within {timeout:?}; retry, or read with consistency=stale",
                g.id
            ))),
        }
    }

    async fn read_barrier_inner(&self, g: &Group, deadline: Instant) -> Result<()> {
        loop {
            match g.raft.ensure_linearizable().await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    if let (Some(leader_id), Some(leader)) = (f.leader_id, f.leader_node) {
                        let client = self.channels.client(leader_id, &leader.addr)?;
                        let r = call::<_, u64, Error, _, _>(
                            client,
                            g.id,
                            &(),
                            self.opts.request_timeout,
                            "read_index",
                            |mut c, f| async move { c.read_index(f).await },
                        )
                        .await;
                        if r.is_err() {
                            // The leader's node did not answer: if the group is quiet here,
                            // let its election timer run (a quiet follower hears no heartbeats).
                            g.wake();
                        }
                        if let Ok(Ok(index)) = r {
                            let left = deadline.saturating_duration_since(Instant::now());
                            g.raft
                                .wait(Some(left))
                                .applied_index_at_least(Some(index), "read index")
                                .await
                                .map_err(|e| {
                                Error::Unavailable(format!("waiting to apply index {index}: {e}"))
                            })?;
                            return Ok(());
                        }
                    }
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {}
                Err(RaftError::Fatal(e)) => return Err(Error::Unavailable(format!("raft stopped: {e}"))),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn barrier(&self, g: &Group, consistency: Consistency) -> Result<()> {
        match consistency {
            Consistency::Linearizable => self.read_barrier(g).await,
            Consistency::Stale => Ok(()),
        }
    }

    /// Creates or updates a namespace. A new confidential namespace gets its data key here
    /// (made at a key site, wrapped for every node of its key sites).
    pub async fn put_namespace(self: &Arc<Self>, mut cfg: NamespaceConfig) -> Result<Response> {
        crate::types::validate_namespace_config(&cfg)?;
        cfg.keys.clear();
        if cfg.class == crate::types::DataClass::Confidential {
            let existing = match self.namespace(&cfg.name, Consistency::Linearizable).await {
                Ok(c) => Some(c),
                Err(Error::NotFound(_)) => None,
                Err(e) => return Err(e),
            };
            match existing {
                // Key sites changed, or a node joined a key site since the keys were wrapped:
                // re-wrap (and rotate if a site was removed). The state machine keeps the keys
                // on the PutNamespace below.
                Some(old) if old.class == cfg.class => self.update_key_sites(&old, &cfg.key_sites).await?,
                Some(_) => {}
                None => cfg.keys.push(self.make_namespace_key(&cfg, 1)?),
            }
        }
        self.propose(Command::PutNamespace(cfg)).await
    }

    /// Whether an access token was revoked, as this node's metadata replica knows (a revocation
    /// reaches every node as fast as the metadata group replicates: well within seconds).
    pub fn token_revoked(&self, id: &str) -> bool {
        // Fail closed: if the metadata replica cannot be read, treat the token as revoked.
        self.meta().map(|m| m.kv.token_revoked(id).unwrap_or(true)).unwrap_or(true)
    }

    pub async fn namespace(&self, ns: &str, consistency: Consistency) -> Result<NamespaceConfig> {
        let meta = self.meta()?;
        self.barrier(&meta, consistency).await?;
        meta.kv.namespace(ns)?.ok_or_else(|| Error::NotFound(format!("namespace {ns:?} does not exist")))
    }

    pub async fn namespaces(&self, consistency: Consistency) -> Result<Vec<NamespaceConfig>> {
        let meta = self.meta()?;
        self.barrier(&meta, consistency).await?;
        meta.kv.namespaces()
    }

    /// Namespaces are only ever created, so a local hit is final; a miss is checked again
    /// after a read barrier (the namespace may have been created through another node).
    async fn require_namespace(&self, ns: &str) -> Result<()> {
        if ns == DEFAULT_NAMESPACE {
            return Ok(());
        }
        let meta = self.meta()?;
        if meta.kv.namespace(ns)?.is_some() {
            return Ok(());
        }
        self.read_barrier(&meta).await?;
        match meta.kv.namespace(ns)? {
            Some(_) => Ok(()),
            None => Err(Error::NotFound(format!("namespace {ns:?} does not exist"))),
        }
    }

    /// Reads a key; values of confidential namespaces are opened here (at a key site only).
    pub async fn get(&self, ns: &str, key: &str, consistency: Consistency) -> Result<Option<Record>> {
        validate_namespace(ns)?;
        validate_key(key)?;
        // The namespace's existence, class and site rules in one lookup.
        let cfg = self.check_readable(ns).await?;
        let r = self.get_stored(ns, key, consistency).await?;
        self.open_record(&cfg, key, r).await
    }

    /// A key's record as stored (sealed, for confidential namespaces).
    async fn get_stored(&self, ns: &str, key: &str, consistency: Consistency) -> Result<Option<Record>> {
        let deadline = Instant::now() + self.opts.request_timeout;
        loop {
            let map = self.require_map()?;
            let shard = map.shard_for(ns, key).ok_or_else(|| Error::Internal("no shard".into()))?;
            let range = (shard.start, shard.end);
            let r = match self.group(shard.id) {
                Some(g) => self.local_get(&g, ns, key, consistency, range).await,
                None => {
                    let req = ReadRequest { ns: ns.into(), key: key.into(), consistency, range };
                    self.remote(shard.id, &req, "read", |mut c, f| async move { c.read(f).await }).await
                }
            };
            match r {
                // A stale map, or a shard just created by a split and not started everywhere
                // yet: retry within the request's time.
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    async fn local_get(
        &self,
        g: &Group,
        ns: &str,
        key: &str,
        consistency: Consistency,
        range: (u64, u64),
    ) -> Result<Option<Record>> {
        self.barrier(g, consistency).await?;
        if !g.kv.owns(crate::shard::key_hash(ns, key), range)? {
            return Err(Error::Unavailable(WRONG_SHARD.into()));
        }
        g.kv.get(ns, key)
    }

    async fn local_scan(&self, g: &Group, r: &ScanRequest) -> Result<(Vec<ScanItem>, bool)> {
        self.barrier(g, r.consistency).await?;
        if g.kv.range()?.is_some_and(|own| own != r.range) {
            return Err(Error::Unavailable(WRONG_SHARD.into()));
        }
        g.kv.scan(&r.ns, &r.prefix, r.after.as_deref(), r.limit)
    }

    /// Asks the replicas of a group this node does not host, in turn, until one answers.
    pub(crate) async fn remote<Req, Resp, F, Fut>(
        &self,
        group: GroupId,
        req: &Req,
        name: &'static str,
        rpc: F,
    ) -> Result<Resp>
    where
        Req: Serialize,
        Resp: serde::de::DeserializeOwned,
        F: Fn(network::InternalClient<tonic::transport::Channel>, tonic::Request<Frame>) -> Fut + Clone,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<Frame>, tonic::Status>>,
    {
        let mut last = Error::Unavailable(format!("no replica of shard {group} answered"));
        for (id, addr) in self.replicas_of(group)? {
            let client = self.channels.client(id, &addr)?;
            match call::<_, Resp, Error, _, _>(
                client,
                group,
                req,
                self.opts.request_timeout,
                name,
                rpc.clone(),
            )
            .await
            {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) if !e.is_retryable() => return Err(e),
                Ok(Err(e)) => last = e,
                Err(e) => last = Error::Unavailable(format!("node {id}: {e}")),
            }
        }
        Err(last)
    }

    /// Keys of `ns` with `prefix` after `after`, in key order, from every shard.
    /// Scans keys by prefix; values of confidential namespaces are opened here.
    pub async fn scan(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<(Vec<ScanItem>, bool)> {
        validate_namespace(ns)?;
        if limit == 0 || limit > 10_000 {
            return Err(Error::invalid("limit", format!("{limit} must be between 1 and 10000")));
        }
        let cfg = self.check_readable(ns).await?;
        let (items, more) = self.scan_stored(ns, prefix, after, limit, consistency).await?;
        Ok((self.open_items(&cfg, items).await?, more))
    }

    pub(crate) async fn scan_stored(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<(Vec<ScanItem>, bool)> {
        let deadline = Instant::now() + self.opts.request_timeout;
        'again: loop {
            let map = self.require_map()?;
            let parts = map.shards_for_ns(ns).into_iter().map(|s| {
                let req = ScanRequest {
                    ns: ns.into(),
                    prefix: prefix.into(),
                    after: after.map(String::from),
                    limit,
                    consistency,
                    range: (s.start, s.end),
                };
                self.scan_shard(s.id, req)
            });
            let mut items = vec![];
            let mut more = false;
            for r in futures::future::join_all(parts).await {
                match r {
                    Ok((part, part_more)) => {
                        more |= part_more;
                        items.extend(part);
                    }
                    // A shard split under this scan (its map was stale), or a new shard not
                    // started everywhere yet: start again within the request's time.
                    Err(e) if e.is_retryable() && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue 'again;
                    }
                    Err(e) => return Err(e),
                }
            }
            items.sort_by(|a, b| a.key.cmp(&b.key));
            if items.len() > limit {
                items.truncate(limit);
                more = true;
            }
            return Ok((items, more));
        }
    }

    async fn scan_shard(&self, shard: GroupId, req: ScanRequest) -> Result<(Vec<ScanItem>, bool)> {
        match self.group(shard) {
            Some(g) => self.local_scan(&g, &req).await,
            None => self.remote(shard, &req, "scan", |mut c, f| async move { c.scan(f).await }).await,
        }
    }

    // ---- membership ----

    async fn peer_status(&self, group: GroupId, id: NodeId, addr: &str) -> Option<GroupStatus> {
        let client = self.channels.client(id, addr).ok()?;
        call::<_, GroupStatus, Error, _, _>(
            client,
            group,
            &(),
            Duration::from_millis(800),
            "status",
            |mut c, f| async move { c.status(f).await },
        )
        .await
        .ok()?
        .ok()
    }

    /// See the module comment: initialize (majority answering, none initialized), wait to be
    /// replicated to, or rejoin after data loss.
    async fn bootstrap(
        self: Arc<Self>,
        g: Arc<Group>,
        members: BTreeMap<NodeId, NodeInfo>,
        fresh: bool,
        may_initialize: bool,
    ) {
        let me = self.opts.id;
        let n = members.len();
        let mut shutdown = self.shutdown.subscribe();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let mut answered = 1; // this node
            let mut initialized: Vec<GroupStatus> = vec![];
            for (id, info) in &members {
                if *id == me {
                    continue;
                }
                if let Some(st) = self.peer_status(g.id, info.id, &info.addr).await {
                    answered += 1;
                    if st.initialized {
                        initialized.push(st);
                    }
                }
            }
            // Lost data: the cluster saw this node under another data-directory instance.
            let lost =
                initialized.iter().any(|s| s.seen.iter().any(|(n, i)| *n == me && *i != self.instance));
            if g.rejoining.load(Ordering::SeqCst) || (fresh && lost) {
                self.rejoin(&g, &members).await;
                return;
            }
            if !initialized.is_empty() || g.status(me, self.instance).initialized {
                tracing::debug!(
                    group = g.id,
                    "group already initialized; waiting for the leader to replicate"
                );
                g.deciding.store(false, Ordering::SeqCst);
                return;
            }
            if !may_initialize {
                // Born from a split: it exists already; its leader will send the snapshot.
                g.deciding.store(false, Ordering::SeqCst);
                return;
            }
            if members.contains_key(&me) && answered * 2 > n {
                let voters: BTreeMap<NodeId, BasicNode> =
                    members.iter().map(|(id, info)| (*id, BasicNode::new(&info.addr))).collect();
                match g.raft.initialize(voters).await {
                    Ok(()) => tracing::info!(group = g.id, members = n, "initialized group"),
                    Err(e) => tracing::debug!(group = g.id, error = %e, "initialize"),
                }
                g.deciding.store(false, Ordering::SeqCst);
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn rejoin(&self, g: &Group, members: &BTreeMap<NodeId, NodeInfo>) {
        let marker = g.dir.join(REJOIN_MARKER);
        if let Err(e) = write_marker(&marker) {
            tracing::error!(group = g.id, error = %e, "cannot write rejoin marker; refusing to continue without it");
            return;
        }
        g.rejoining.store(true, Ordering::SeqCst);
        g.raft.runtime_config().elect(false);
        if !members.keys().any(|id| *id != self.opts.id) {
            // The only replica (a site-local shard at a one-node site, a one-node cluster):
            // nobody can catch it up, and what it holds is all there is. A restore brings
            // such a group back as it was backed up.
            tracing::warn!(
                group = g.id,
                "this node is the group's only replica: serving it as restored (writes after its backup are lost)"
            );
            finish_rejoin(g, &marker);
            return;
        }
        tracing::warn!(
            group = g.id,
            "this node lost its data; rejoining as a learner before it may vote again"
        );
        let mut shutdown = self.shutdown.subscribe();
        loop {
            if *shutdown.borrow() {
                return;
            }
            // The map moved the group away meanwhile (a restored node's old map named it):
            // nothing to rejoin.
            if self.group(g.id).is_none_or(|h| !std::ptr::eq(h.as_ref(), g)) {
                tracing::info!(group = g.id, "group no longer hosted here; rejoin abandoned");
                return;
            }
            for info in members.values().filter(|m| m.id != self.opts.id) {
                let Ok(client) = self.channels.client(info.id, &info.addr) else { continue };
                let r = call::<_, (), Error, _, _>(
                    client,
                    g.id,
                    &(self.opts.id, self.instance),
                    Duration::from_secs(120),
                    "rejoin",
                    |mut c, f| async move { c.rejoin(f).await },
                )
                .await;
                match r {
                    Ok(Ok(())) => {
                        if finish_rejoin(g, &marker) {
                            tracing::info!(
                                group = g.id,
                                "rejoined the cluster: caught up, voting where it votes"
                            );
                        }
                        return;
                    }
                    Ok(Err(e)) => tracing::debug!(group = g.id, peer = info.id, error = %e, "rejoin refused"),
                    Err(e) => {
                        tracing::debug!(group = g.id, peer = info.id, error = %e, "rejoin not reachable")
                    }
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
    async fn readmit(&self, g: &Group, id: NodeId, instance: u64) -> Result<()> {
        let m = g.raft.metrics().borrow().clone();
        if m.current_leader != Some(self.opts.id) {
            return Err(Error::Unavailable("not the leader".into()));
        }
        let membership = m.membership_config.membership().clone();
        let node = membership
            .get_node(&id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("node {id} is not a member of group {}", g.id)))?;
        let map_err =
            |e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| Error::Unavailable(e.to_string());
        let was_voter = membership.voter_ids().any(|v| v == id);
        // The metadata and ledger groups seat at most MAX_META_VOTERS voters; the other nodes
        // replicate them as learners and must come back as learners. (A voter demoted by an
        // earlier attempt that did not finish left a seat free: it gets it back.)
        let capped = g.id == META_GROUP || g.id == LEDGER_GROUP;
        let promote = was_voter || !capped || membership.voter_ids().count() < MAX_META_VOTERS;
        g.wake();
        if was_voter {
            g.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), true)
                .await
                .map_err(map_err)?;
        }
        g.raft.add_learner(id, node, true).await.map_err(map_err)?;
        if promote {
            g.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(map_err)?;
        }
        self.propose_local(g, Command::MarkSeen { node: id, instance }).await?;
        let as_what = if promote { "voter" } else { "learner" };
        tracing::info!(group = g.id, node = id, as_what, "re-admitted node after data loss");
        Ok(())
    }
}

/// The group may vote and campaign again: the marker goes first (a crash before it is removed
/// only means rejoining once more). False if the marker could not be removed.
fn finish_rejoin(g: &Group, marker: &Path) -> bool {
    if let Err(e) = std::fs::remove_file(marker) {
        tracing::error!(error = %e, "cannot remove rejoin marker");
        return false;
    }
    g.rejoining.store(false, Ordering::SeqCst);
    g.deciding.store(false, Ordering::SeqCst);
    g.raft.runtime_config().elect(true);
    true
}

fn expect_map(r: Response) -> Result<()> {
    match r {
        Response::Map { .. } => Ok(()),
        Response::Rejected(m) => Err(Error::Unavailable(format!("map change refused: {m}"))),
        other => Err(Error::Internal(format!("unexpected result {other:?}"))),
    }
}

fn members_of(map: &ClusterMap, replicas: &[NodeId]) -> BTreeMap<NodeId, NodeInfo> {
    replicas.iter().filter_map(|r| map.nodes.get(r).map(|n| (*r, n.clone()))).collect()
}

/// The data directory's instance id: random, created (and fsynced) with the directory.
fn load_instance(dir: &Path) -> Result<u64> {
    let path = dir.join("INSTANCE");
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| {
            Error::Storage(format!("{} is not a number; restore it or wipe the directory", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 8];
            std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
            let id = u64::from_le_bytes(bytes);
            let tmp = dir.join("INSTANCE.tmp");
            std::fs::write(&tmp, format!("{id}\n"))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(id)
        }
        Err(e) => Err(e.into()),
    }
}

/// Marks a group directory as rejoining after data loss (a restore writes it for every group).
pub(crate) fn write_rejoin_marker(group_dir: &Path) -> std::io::Result<()> {
    write_marker(&group_dir.join(REJOIN_MARKER))
}

fn write_marker(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::File::create(path)?.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Takes the clean-stop marker (`SM_CLEAN`): removes it durably and returns the groups whose
/// trees must be rebuilt, all of them when it was not there (none on a new node).
fn groups_to_rebuild(
    data_dir: &std::path::Path,
    db: &sled::Db,
) -> Result<std::collections::HashSet<GroupId>> {
    let marker = data_dir.join(SM_CLEAN);
    if marker.exists() {
        std::fs::remove_file(&marker)?;
        std::fs::File::open(data_dir)?.sync_all()?;
        return Ok(Default::default());
    }
    Ok(db
        .tree_names()
        .iter()
        .filter_map(|n| std::str::from_utf8(n).ok()?.strip_prefix("group-")?.parse().ok())
        .collect())
}

/// `fsync`s every file and directory under `dir`: sled's own flush only hands its writes to
/// the disk with `sync_file_range`, which does not make them durable.
fn sync_tree(dir: &std::path::Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Leaves the clean-stop marker, durably, after sled's final flush.
fn mark_clean(data_dir: &std::path::Path) -> std::io::Result<()> {
    let f = std::fs::File::create(data_dir.join(SM_CLEAN))?;
    f.sync_all()?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// The internal gRPC service of a node.
pub struct InternalService {
    node: Arc<Node>,
}

type RpcResult = std::result::Result<tonic::Response<Frame>, tonic::Status>;

/// Refuses internal calls from non-members by their headers, before their bodies (up to
/// `MAX_MESSAGE_BYTES`) are read or decoded: without TLS with a member's node-key certificate
/// (the handshake already refused non-members' certificates; see `edgefabric_crypto::tls`),
/// and in every case without a valid call ticket (`LinkAuth::ticket`), which is what bounds
/// this work when TLS is off.
#[derive(Clone)]
pub struct MemberCallsOnly {
    tls: bool,
    node: Arc<Node>,
}

impl tonic::service::Interceptor for MemberCallsOnly {
    fn call(&mut self, req: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if self.tls && req.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(tonic::Status::unauthenticated(
                "internal calls need TLS with a member's node-key client certificate",
            ));
        }
        let ticket = req.metadata().get(crate::link::TICKET_HEADER).and_then(|v| v.to_str().ok());
        let Some(ticket) = ticket else {
            return Err(tonic::Status::unauthenticated(format!(
                "internal calls need a call ticket ({})",
                crate::link::TICKET_HEADER
            )));
        };
        if let Err(e) = self.node.channels.auth.check_ticket(ticket) {
            // Anyone who reaches the port can send bad tickets (in plaintext mode, without a
            // handshake first): logged at most once a second, with how many since.
            if let Some(suppressed) = REFUSED_TICKETS.allow() {
                tracing::warn!(error = %e, suppressed, "refused an internal call by its ticket");
            }
            return Err(e.into());
        }
        Ok(req)
    }
}

/// At most one log line a second for a kind of event anyone can cause.
pub(crate) struct LogBudget {
    last_ms: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

impl LogBudget {
    pub(crate) const fn new() -> Self {
        LogBudget {
            last_ms: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(events not logged since the last line)` when this one may be logged.
    pub(crate) fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self.last_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

static REFUSED_TICKETS: LogBudget = LogBudget::new();

impl InternalService {
    /// Authenticates a request frame (`link.rs`), and with TLS, that the connection's client
    /// certificate holds the key of the node the frame names as its sender; an unauthenticated
    /// one is logged and refused.
    fn accept(&self, rpc: &str, req: tonic::Request<Frame>) -> std::result::Result<Frame, tonic::Status> {
        let cert_key = req.peer_certs().and_then(|c| c.first().and_then(|c| self.node.cert_key(c)));
        let f = req.into_inner();
        if let Err(e) = self.node.channels.auth.accept(rpc, &f) {
            tracing::warn!(rpc, from = f.from, error = %e, "refused an internal request");
            return Err(e.into());
        }
        if self.node.opts.peer_tls.is_some() {
            let sender = self.node.channels.auth.peer_key_bytes(f.from);
            if cert_key.is_none() || cert_key != sender {
                tracing::warn!(
                    rpc,
                    from = f.from,
                    "refused an internal request: its TLS client certificate is not that node's key"
                );
                return Err(tonic::Status::unauthenticated(format!(
                    "the connection's client certificate is not node {}'s key",
                    f.from
                )));
            }
        }
        self.node.liveness.heard(f.from);
        Ok(f)
    }

    fn reply<T: serde::Serialize>(&self, rpc: &str, req: &Frame, value: &T) -> RpcResult {
        network::reply(&self.node.channels.auth, rpc, req, value)
    }

    fn group(&self, frame: &Frame) -> std::result::Result<Arc<Group>, tonic::Status> {
        self.node.group(frame.group).ok_or_else(|| {
            tonic::Status::unavailable(format!("group {} is not hosted here (yet)", frame.group))
        })
    }
}

#[tonic::async_trait]
impl Internal for InternalService {
    async fn append_entries(&self, req: tonic::Request<Frame>) -> RpcResult {
        const RPC: &str = "append_entries";
        let f = self.accept(RPC, req)?;
        let g = self.group(&f)?;
        let rpc: openraft::raft::AppendEntriesRequest<crate::TypeConfig> = network::request(&f)?;
        g.on_append(&rpc.vote, !rpc.entries.is_empty());
        self.reply(RPC, &f, &g.raft.append_entries(rpc).await)
    }

    async fn append_batch(&self, req: tonic::Request<Frame>) -> RpcResult {
        const RPC: &str = "append_batch";
        let f = self.accept(RPC, req)?;
        let items: Vec<(GroupId, Vec<u8>)> = network::request(&f)?;
        if items.len() > network::BATCH_ITEMS {
            return Err(tonic::Status::invalid_argument(format!(
                "append batch: {} requests, the limit is {}",
                items.len(),
                network::BATCH_ITEMS
            )));
        }
        // All at once: the groups' appends share one group-committed sync of the log.
        let answers: Vec<network::BatchAnswer> =
            futures::future::join_all(items.into_iter().map(|(group, data)| async move {
                let g = self
                    .node
                    .group(group)
                    .ok_or_else(|| format!("group {group} is not hosted here (yet)"))?;
                let rpc: openraft::raft::AppendEntriesRequest<crate::TypeConfig> =
                    crate::codec::decode(&data).map_err(|e| format!("group {group}: bad request: {e}"))?;
                g.on_append(&rpc.vote, !rpc.entries.is_empty());
                crate::codec::encode(&g.raft.append_entries(rpc).await).map_err(|e| e.to_string())
            }))
            .await;
        self.reply(RPC, &f, &Ok::<_, Error>(answers))
    }

    async fn vote(&self, req: tonic::Request<Frame>) -> RpcResult {
        const RPC: &str = "vote";
        let f = self.accept(RPC, req)?;
        let g = self.group(&f)?;
        if g.rejoining.load(Ordering::SeqCst) || g.deciding.load(Ordering::SeqCst) {
            return Err(tonic::Status::unavailable("fresh or rejoining after data loss: not voting yet"));
        }
        let rpc = network::request(&f)?;
        let answer = g.raft.vote(rpc).await;
        // Wake only for a vote given: a stale candidate (a removed replica cut off during its
        // removal, say) that is refused must not wake up-to-date followers of a quiet leader,
        // which would then campaign themselves.
        if answer.as_ref().is_ok_and(|r| r.vote_granted) {
            g.wake();
        }
        self.reply(RPC, &f, &answer)
    }

    async fn install_snapshot(&self, req: tonic::Request<Frame>) -> RpcResult {
        const RPC: &str = "install_snapshot";
        let f = self.accept(RPC, req)?;
        let g = self.group(&f)?;
        let rpc = network::request(&f)?;
        g.wake();
        self.reply(RPC, &f, &g.raft.install_snapshot(rpc).await)
    }

    async fn ping(&self, req: tonic::Request<Frame>) -> RpcResult {
        const RPC: &str = "ping";
        let f = self.accept(RPC, req)?;
        let boot: u64 = network::request(&f)?;
        self.reply(RPC, &f, &Ok::<_, Error>(self.node.on_ping(f.from, boot)))
    }

    async fn wake(&self, req: tonic::Request<Frame>) -> RpcResult {
        const RPC: &str = "wake";
        let f = self.accept(RPC, req)?;
        let groups: Vec<GroupId> = network::request(&f)?;
        self.reply(RPC, &f, &self.node.on_wake(f.from, &groups))
    }

    async fn quiesce(&self, req: tonic::Request<Frame>) -> RpcResult {
        const RPC: &str = "quiesce";
        let f = self.accept(RPC, req)?;
        let items: Vec<crate::quiesce::QuiesceItem> = network::request(&f)?;
        self.reply(RPC, &f, &self.node.on_quiesce(f.from, &items))
    }

    async fn forward(&self, req: tonic::Request<Frame>) -> RpcResult {
        const RPC: &str = "forward";
        let f = self.accept(RPC, req)?;
        let cmd: Command = network::request(&f)?;
        let r = match self.node.group(f.group) {
            Some(g) => self.node.propose_local(&g, cmd).await,
            None => Err(Error::Unavailable(format!("group {} is not hosted here", f.group))),
        };
        self.reply(RPC, &f, &r)
    }

    async fn read_index(&self, req: tonic::Request<Frame>) -> RpcResult {
        const RPC: &str = "read_index";
        let f = self.accept(RPC, req)?;
        let g = self.group(&f)?;
        let r: Result<u64> = match g.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(log_id.map(|l| l.index).unwrap_or(0)),
            Err(e) => Err(Error::Unavailable(e.to_string())),
        };
        self.reply(RPC, &f, &r)
    }

    async fn status(&self, req: tonic::Request<Frame>) -> RpcResult {
        const RPC: &str = "status";
        let f = self.accept(RPC, req)?;
        if f.group == ALL_GROUPS {
            return self.reply(RPC, &f, &Ok::<_, Error>(self.node.group_statuses()));
        }
        let g = self.group(&f)?;
        self.reply(RPC, &f, &Ok::<_, Error>(g.status(self.node.opts.id, self.node.instance)))
    }

    async fn sizes(&self, req: tonic::Request<Frame>) -> RpcResult {
        const RPC: &str = "sizes";
        let f = self.accept(RPC, req)?;
        let over: u64 = network::request(&f)?;
        self.reply(RPC, &f, &Ok::<_, Error>(self.node.led_shards_over(over)))
    }

    async fn rejoin(&self, req: tonic::Request<Frame>) -> RpcResult {
        const RPC: &str = "rejoin";
        let f = self.accept(RPC, req)?;
        let g = self.group(&f)?;
        let (id, instance): (NodeId, u64) = network::request(&f)?;
        self.reply(RPC, &f, &self.node.readmit(&g, id, instance).await)
    }

    async fn change_replica(&self, req: tonic::Request<Frame>) -> RpcResult {
        const RPC: &str = "change_replica";
        let f = self.accept(RPC, req)?;
        let g = self.group(&f)?;
        let (to, addr, from): (NodeId, String, NodeId) = network::request(&f)?;
        self.reply(RPC, &f, &self.node.change_replica(&g, to, &addr, from).await)
    }

    async fn read(&self, req: tonic::Request<Frame>) -> RpcResult {
        const RPC: &str = "read";
        let f = self.accept(RPC, req)?;
        let r: ReadRequest = network::request(&f)?;
        let out = match self.node.group(f.group) {
            Some(g) => self.node.local_get(&g, &r.ns, &r.key, r.consistency, r.range).await,
            None => Err(Error::Unavailable(format!("group {} is not hosted here", f.group))),
        };
        self.reply(RPC, &f, &out)
    }

    async fn ts_select(&self, req: tonic::Request<Frame>) -> RpcResult {
        const RPC: &str = "ts_select";
        let f = self.accept(RPC, req)?;
        let r: crate::ts::TsSelectRequest = network::request(&f)?;
        let Some(g) = self.node.group(f.group) else {
            let out: Result<()> = Err(Error::Unavailable(format!("group {} is not hosted here", f.group)));
            return self.reply(RPC, &f, &out);
        };
        match r.mode {
            crate::ts::SelectMode::Samples => self.reply(RPC, &f, &self.node.local_ts_select(&g, &r).await),
            _ => self.reply(RPC, &f, &self.node.local_ts_select_sealed(&g, &r).await),
        }
    }

    async fn ts_series(&self, req: tonic::Request<Frame>) -> RpcResult {
        const RPC: &str = "ts_series";
        let f = self.accept(RPC, req)?;
        let r: crate::ts::TsSeriesRequest = network::request(&f)?;
        let out = match self.node.group(f.group) {
            Some(g) => self.node.local_ts_series(&g, &r).await,
            None => Err(Error::Unavailable(format!("group {} is not hosted here", f.group))),
        };
        self.reply(RPC, &f, &out)
    }

    async fn ledger_cosign(&self, req: tonic::Request<Frame>) -> RpcResult {
        const RPC: &str = "ledger_cosign";
        let f = self.accept(RPC, req)?;
        let (size, root): (u64, edgefabric_ledger::Hash) = network::request(&f)?;
        self.reply(RPC, &f, &self.node.ledger_cosign(size, root).await)
    }

    async fn scan(&self, req: tonic::Request<Frame>) -> RpcResult {
        const RPC: &str = "scan";
        let f = self.accept(RPC, req)?;
        let r: ScanRequest = network::request(&f)?;
        let out = match self.node.group(f.group) {
            Some(g) => self.node.local_scan(&g, &r).await,
            None => Err(Error::Unavailable(format!("group {} is not hosted here", f.group))),
        };
        self.reply(RPC, &f, &out)
    }
}

#[cfg(test)]
mod tests {
    use super::LogBudget;

    #[test]
    fn only_a_clean_stop_spares_the_state_machines_a_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        for t in ["group-1", "group-18446744073709551615", "other"] {
            db.open_tree(t).unwrap();
        }
        let all: std::collections::HashSet<u64> = [1, u64::MAX].into();
        // No marker: every group's tree is rebuilt, and the answer stays so until a clean stop.
        assert_eq!(super::groups_to_rebuild(dir.path(), &db).unwrap(), all);
        assert_eq!(super::groups_to_rebuild(dir.path(), &db).unwrap(), all);
        super::mark_clean(dir.path()).unwrap();
        assert!(super::groups_to_rebuild(dir.path(), &db).unwrap().is_empty());
        // Taken at start: a crash after it is not a clean stop.
        assert!(!dir.path().join(super::SM_CLEAN).exists());
        assert_eq!(super::groups_to_rebuild(dir.path(), &db).unwrap(), all);
    }

    #[test]
    fn a_log_budget_lets_one_line_a_second_through_and_counts_the_rest() {
        let b = LogBudget::new();
        assert_eq!(b.allow(), Some(0));
        assert_eq!((0..5).filter_map(|_| b.allow()).count(), 0);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(b.allow(), Some(5), "the next line says how many were not logged");
    }
}
