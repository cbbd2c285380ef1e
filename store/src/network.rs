//! Node-to-node transport over tonic: the openraft network client, and helpers both sides use.
//! One HTTP/2 channel per peer address carries every RPC to that peer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::codec;
use crate::error::{Error, Result};
use crate::link::LinkAuth;
use crate::log::GroupId;
use crate::raft_store::{NodeId, TypeConfig};

pub mod pb {
    tonic::include_proto!("edgefabric.internal.v1");
}

pub use pb::internal_client::InternalClient;
pub use pb::internal_server::{Internal, InternalServer};
pub use pb::Frame;

/// Largest gRPC message either side accepts (raft batches, snapshot chunks).
pub const MAX_MESSAGE_BYTES: usize = codec::MAX_DECODE_BYTES;

/// What a node needs to call its peers over TLS: the verifier of their serving certificates
/// (the cluster's CA file, reloaded when it changes) and its own node-key certificate.
#[derive(Clone)]
pub struct PeerTls {
    verifier: Arc<edgefabric_crypto::tls::ReloadingCaVerifier>,
    identity: tonic::transport::Identity,
}

impl PeerTls {
    pub fn new(
        node_key: &edgefabric_crypto::Identity,
        verifier: Option<Arc<edgefabric_crypto::tls::ReloadingCaVerifier>>,
    ) -> Result<Option<Self>> {
        let Some(verifier) = verifier else { return Ok(None) };
        let pem = edgefabric_crypto::tls::node_key_cert(node_key)
            .map_err(|e| Error::invalid("node key certificate", e))?;
        let identity = tonic::transport::Identity::from_pem(pem.cert.as_bytes(), pem.key.as_bytes());
        Ok(Some(PeerTls { verifier, identity }))
    }
}

/// Channels by peer address, shared by raft replication and request forwarding, and the
/// link authentication every frame goes through.
#[derive(Clone)]
pub struct Channels {
    by_addr: Arc<Mutex<HashMap<String, Channel>>>,
    tls: Option<PeerTls>,
    pub(crate) auth: Arc<LinkAuth>,
    /// Test faults on outgoing links (`faults.rs`); empty unless a test sets them.
    pub(crate) faults: Arc<crate::faults::Faults>,
    /// The append-entries senders by peer (id, address): see [`Mux`].
    muxes: Arc<Mutex<HashMap<(NodeId, String), Mux>>>,
}

/// A client for one peer node, with what authenticates frames to it.
#[derive(Clone)]
pub struct Peer {
    client: InternalClient<Channel>,
    id: NodeId,
    auth: Arc<LinkAuth>,
    faults: Arc<crate::faults::Faults>,
}

impl Channels {
    pub fn new(auth: Arc<LinkAuth>, tls: Option<PeerTls>) -> Self {
        Channels {
            by_addr: Default::default(),
            tls,
            auth,
            faults: Default::default(),
            muxes: Default::default(),
        }
    }

    /// A client for node `id` at `addr`.
    pub fn client(&self, id: NodeId, addr: &str) -> Result<Peer> {
        Ok(Peer { client: self.channel(addr)?, id, auth: self.auth.clone(), faults: self.faults.clone() })
    }

    /// The append-entries sender to node `id` at `addr` (started on first use).
    fn mux(&self, id: NodeId, addr: &str) -> Result<Mux> {
        let mut map = self.muxes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = map.get(&(id, addr.to_string())) {
            if !m.tx.is_closed() {
                return Ok(m.clone());
            }
        }
        let m = Mux::start(self.client(id, addr)?);
        map.insert((id, addr.to_string()), m.clone());
        Ok(m)
    }

    fn channel(&self, addr: &str) -> Result<InternalClient<Channel>> {
        let mut map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match map.get(addr) {
            Some(c) => c.clone(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                let mut e = Endpoint::from_shared(format!("{scheme}://{addr}"))
                    .map_err(|e| Error::invalid("peer address", format!("{addr:?}: {e}")))?
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10));
                if let Some(tls) = &self.tls {
                    // The peer's certificate must be the CA's for the address's host; ours
                    // carries our node key.
                    let cfg = tonic::transport::ClientTlsConfig::new().identity(tls.identity.clone());
                    e = e
                        .tls_config_with_verifier(cfg, tls.verifier.clone())
                        .map_err(|e| Error::invalid("peer TLS", format!("{addr:?}: {e}")))?;
                }
                let c = e.connect_lazy();
                map.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(InternalClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

/// Calls one internal RPC (`name`: the rpc, as the server checks it): encodes `req` into an
/// authenticated frame, checks the reply came from the peer for this request, decodes the
/// peer's `Result<Resp, E>`. Outer error: transport failure (the peer did not answer, or not
/// authentically); inner: the peer's answer.
pub async fn call<Req, Resp, E, F, Fut>(
    peer: Peer,
    group: GroupId,
    req: &Req,
    timeout: Duration,
    name: &'static str,
    rpc: F,
) -> std::result::Result<std::result::Result<Resp, E>, TransportError>
where
    Req: Serialize,
    Resp: DeserializeOwned,
    E: DeserializeOwned,
    F: FnOnce(InternalClient<Channel>, tonic::Request<Frame>) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<tonic::Response<Frame>, tonic::Status>>,
{
    let data = codec::encode(req).map_err(|e| TransportError::Other(e.to_string()))?;
    let reply = call_raw(peer, group, data, timeout, name, rpc).await?;
    codec::decode(&reply).map_err(|e| TransportError::Other(format!("bad reply: {e}")))
}

/// `call` with the request already encoded; returns the reply's bytes.
async fn call_raw<F, Fut>(
    peer: Peer,
    group: GroupId,
    data: Vec<u8>,
    timeout: Duration,
    name: &'static str,
    rpc: F,
) -> std::result::Result<Vec<u8>, TransportError>
where
    F: FnOnce(InternalClient<Channel>, tonic::Request<Frame>) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<tonic::Response<Frame>, tonic::Status>>,
{
    match peer.faults.to(peer.id) {
        crate::faults::Fault::None => {}
        crate::faults::Fault::Drop => {
            // As a cut link looks: no answer within the call's time, then unreachable.
            tokio::time::sleep(timeout.min(Duration::from_millis(200))).await;
            return Err(TransportError::Unreachable(format!("node {}: link cut (test fault)", peer.id)));
        }
        crate::faults::Fault::Delay(d) => {
            if d >= timeout {
                tokio::time::sleep(timeout).await;
                return Err(TransportError::Timeout);
            }
            tokio::time::sleep(d).await;
        }
    }
    let frame =
        peer.auth.request(name, peer.id, group, data).map_err(|e| TransportError::Other(e.to_string()))?;
    let (to, nonce) = (frame.to, frame.nonce);
    let ticket = peer.auth.ticket(peer.id).map_err(|e| TransportError::Other(e.to_string()))?;
    let mut request = tonic::Request::new(frame);
    request.metadata_mut().insert(
        crate::link::TICKET_HEADER,
        ticket.parse().map_err(|_| TransportError::Other("call ticket: not a header value".into()))?,
    );
    let reply = match tokio::time::timeout(timeout, rpc(peer.client, request)).await {
        Err(_) => return Err(TransportError::Timeout),
        Ok(Err(status)) => return Err(TransportError::from_status(status)),
        Ok(Ok(r)) => r.into_inner(),
    };
    peer.auth
        .accept_reply(name, to, nonce, &reply)
        .map_err(|e| TransportError::Other(format!("reply from node {}: {e}", peer.id)))?;
    Ok(reply.data)
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    #[error("peer did not answer in time")]
    Timeout,
    /// The peer runs a version without this rpc.
    #[error("peer does not know this call: {0}")]
    Unimplemented(String),
    #[error("transport: {0}")]
    Other(String),
}

impl TransportError {
    fn from_status(s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::Unavailable => TransportError::Unreachable(s.message().to_string()),
            tonic::Code::DeadlineExceeded => TransportError::Timeout,
            tonic::Code::Unimplemented => TransportError::Unimplemented(s.message().to_string()),
            _ => TransportError::Other(format!("{}: {}", s.code(), s.message())),
        }
    }
}

impl From<TransportError> for Error {
    fn from(e: TransportError) -> Self {
        Error::Unavailable(e.to_string())
    }
}

/// Encodes a handler's answer to `req` (rpc `name`) into an authenticated reply frame.
pub fn reply<T: Serialize>(
    auth: &LinkAuth,
    name: &str,
    req: &Frame,
    value: &T,
) -> std::result::Result<tonic::Response<Frame>, tonic::Status> {
    let data = codec::encode(value).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(tonic::Response::new(auth.reply(name, req, data)?))
}

/// Decodes a request frame; a bad frame is the caller's error.
pub fn request<T: DeserializeOwned>(frame: &Frame) -> std::result::Result<T, tonic::Status> {
    codec::decode(&frame.data).map_err(|e| tonic::Status::invalid_argument(format!("bad frame: {e}")))
}

/// Most append-entries requests in one `AppendBatch` call, and most bytes (a request larger
/// than that on its own goes alone).
pub const BATCH_ITEMS: usize = 256;
const BATCH_BYTES: usize = 4 << 20;
/// `AppendBatch` calls in flight to one peer. While they are, the requests of every group to
/// that peer queue up and leave together in the next call: under load, many groups' raft
/// messages share one RPC (its HTTP/2 stream, TLS records, link MAC and task hand-offs), as
/// TiKV batches raft messages per store. At rest each request leaves at once.
const BATCH_IN_FLIGHT: usize = 2;

/// One group's append-entries request (encoded) waiting for a batch, and where its answer goes.
struct Item {
    group: GroupId,
    data: Vec<u8>,
    ttl: Duration,
    done: tokio::sync::oneshot::Sender<std::result::Result<Vec<u8>, TransportError>>,
}

/// The answer to one item of a batch: the group's encoded `Result<AppendEntriesResponse,
/// RaftError>`, or why the receiving node could not hand it to that group.
pub type BatchAnswer = std::result::Result<Vec<u8>, String>;

/// The per-peer sender of append-entries requests, shared by every group of this node.
#[derive(Clone)]
struct Mux {
    tx: tokio::sync::mpsc::UnboundedSender<Item>,
    peer: Peer,
    /// Calls in flight to the peer (`BATCH_IN_FLIGHT`), whoever sends them.
    slots: Arc<tokio::sync::Semaphore>,
    legacy: Legacy,
    /// Items handed to the batch task and not yet taken into a batch.
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// Since when the peer is known to lack `AppendBatch`.
type Legacy = Arc<Mutex<Option<std::time::Instant>>>;

impl Mux {
    fn start(peer: Peer) -> Mux {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mux = Mux {
            tx,
            peer,
            slots: Arc::new(tokio::sync::Semaphore::new(BATCH_IN_FLIGHT)),
            legacy: Default::default(),
            queued: Default::default(),
        };
        let task = mux.clone();
        tokio::spawn(async move { task.run(rx).await });
        mux
    }

    /// Sends `item` from the caller's task when nothing waits and a call slot is free (no
    /// hand-off to the batch task, which matters at low load), else queues it for the next
    /// batch. The answer goes to `item.done` either way.
    async fn submit(&self, item: Item) -> std::result::Result<(), Item> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.queued.load(SeqCst) == 0 {
            if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                Mux::send(self.peer.clone(), vec![item], self.legacy.clone()).await;
                drop(slot);
                return Ok(());
            }
        }
        self.queued.fetch_add(1, SeqCst);
        self.tx.send(item).map_err(|e| {
            self.queued.fetch_sub(1, SeqCst);
            e.0
        })
    }

    /// Ends when every sender is gone. The task holds a clone of the sender itself, so in
    /// practice it lives as long as the process: one per peer address.
    async fn run(self, mut rx: tokio::sync::mpsc::UnboundedReceiver<Item>) {
        use std::sync::atomic::Ordering::SeqCst;
        let (peer, slots, legacy) = (self.peer.clone(), self.slots.clone(), self.legacy.clone());
        // An item that did not fit the last batch: it opens the next one.
        let mut held: Option<Item> = None;
        loop {
            let first = match held.take() {
                Some(item) => item,
                None => match rx.recv().await {
                    Some(item) => {
                        self.queued.fetch_sub(1, SeqCst);
                        item
                    }
                    None => return,
                },
            };
            // Wait for a free slot first: what arrives meanwhile joins this batch.
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let mut bytes = first.data.len();
            let mut items = vec![first];
            while items.len() < BATCH_ITEMS {
                let next = rx.try_recv();
                if next.is_ok() {
                    self.queued.fetch_sub(1, SeqCst);
                }
                match next {
                    // Its caller gave up (openraft's timeout): nobody would read the answer.
                    Ok(item) if item.done.is_closed() => {}
                    // Over the size on its own account: the next batch starts with it.
                    Ok(item) if bytes + item.data.len() > BATCH_BYTES => {
                        held = Some(item);
                        break;
                    }
                    Ok(item) => {
                        bytes += item.data.len();
                        items.push(item);
                    }
                    Err(_) => break,
                }
            }
            items.retain(|i| !i.done.is_closed());
            if items.is_empty() {
                continue;
            }
            let (peer, legacy) = (peer.clone(), legacy.clone());
            tokio::spawn(async move {
                let _slot = slot;
                Mux::send(peer, items, legacy).await;
            });
        }
    }

    async fn send(peer: Peer, items: Vec<Item>, legacy: Legacy) {
        let ttl = items.iter().map(|i| i.ttl).max().unwrap_or(Duration::from_secs(1));
        // A peer on an earlier version (a rolling upgrade) has no `AppendBatch`: one call per
        // request, as before, and the batch is tried again a minute later.
        let unbatched =
            legacy.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|t| t.elapsed() < LEGACY_RETRY);
        if unbatched {
            return Mux::send_each(peer, items).await;
        }
        let (payload, waiters): (Vec<(GroupId, Vec<u8>)>, Vec<_>) =
            items.into_iter().map(|i| ((i.group, i.data), i.done)).unzip();
        let n = payload.len();
        let answers = call::<_, Vec<BatchAnswer>, Error, _, _>(
            peer.clone(),
            0,
            &payload,
            ttl,
            "append_batch",
            |mut c, f| async move { c.append_batch(f).await },
        )
        .await;
        if let Err(TransportError::Unimplemented(_)) = &answers {
            tracing::info!(peer = peer.id, "the peer has no batched append-entries; sending them one by one");
            *legacy.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
            let items = payload
                .into_iter()
                .zip(waiters)
                .map(|((group, data), done)| Item { group, data, ttl, done })
                .collect();
            return Mux::send_each(peer, items).await;
        }
        let answers = match answers {
            Ok(Ok(a)) if a.len() == n => Ok(a),
            Ok(Ok(a)) => Err(TransportError::Other(format!("batch of {n} answered with {} items", a.len()))),
            Ok(Err(e)) => Err(TransportError::Other(format!("batch refused: {e}"))),
            Err(e) => Err(e),
        };
        match answers {
            Ok(answers) => {
                for (done, a) in waiters.into_iter().zip(answers) {
                    let _ = done.send(a.map_err(TransportError::Unreachable));
                }
            }
            Err(e) => {
                for done in waiters {
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
    }
}

impl Mux {
    /// Each request in a call of its own (`AppendEntries`), all at once.
    async fn send_each(peer: Peer, items: Vec<Item>) {
        futures::future::join_all(items.into_iter().map(|i| {
            let peer = peer.clone();
            async move {
                let answer =
                    call_raw(peer, i.group, i.data, i.ttl, "append_entries", |mut c, f| async move {
                        c.append_entries(f).await
                    })
                    .await;
                let _ = i.done.send(answer);
            }
        }))
        .await;
    }
}

/// How long a peer that lacked `AppendBatch` is sent requests one by one before it is tried again.
const LEGACY_RETRY: Duration = Duration::from_secs(60);

/// The openraft network factory for one group.
#[derive(Clone)]
pub struct NetworkFactory {
    pub channels: Channels,
    pub group: GroupId,
    /// How far this node's copy of the group's log is durable (`raft_store::Flushed`).
    pub flushed: Arc<crate::raft_store::Flushed>,
}

pub struct Network {
    target: NodeId,
    addr: String,
    channels: Channels,
    group: GroupId,
    flushed: Arc<crate::raft_store::Flushed>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Network {
        Network {
            target,
            addr: node.addr.clone(),
            channels: self.channels.clone(),
            group: self.group,
            flushed: self.flushed.clone(),
        }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl Network {
    async fn send<Req, Resp, E, F, Fut>(
        &self,
        req: &Req,
        ttl: Duration,
        name: &'static str,
        rpc: F,
    ) -> std::result::Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: DeserializeOwned + std::error::Error,
        F: FnOnce(InternalClient<Channel>, tonic::Request<Frame>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<Frame>, tonic::Status>>,
    {
        let peer = self
            .channels
            .client(self.target, &self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        match call::<Req, Resp, RaftError<NodeId, E>, _, _>(peer, self.group, req, ttl, name, rpc).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(e @ TransportError::Unreachable(_)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> std::result::Result<AppendEntriesResponse<NodeId>, RpcErr> {
        // An entry leaves this node only once it is durable here (`raft_store::Flushed`).
        // openraft 0.9 syncs before it replicates, so this does not wait in practice.
        if let Some(last) = rpc.entries.last() {
            let index = last.log_id.index;
            if !self.flushed.covers(index) {
                tracing::debug!(
                    group = self.group,
                    index,
                    "waiting for the local sync before sending entries"
                );
                if !self.flushed.wait_for(index).await {
                    let e = Error::Unavailable(format!("entry {index} is not durable in this node's log"));
                    return Err(RPCError::Network(NetworkError::new(&e)));
                }
            }
        }
        // Through the peer's batch sender (`Mux`), not a call of its own.
        let ttl = option.hard_ttl();
        fn unreachable<E: std::error::Error + 'static>(e: &E) -> RpcErr {
            RPCError::Unreachable(Unreachable::new(e))
        }
        let data = codec::encode(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mux = self.channels.mux(self.target, &self.addr).map_err(|e| unreachable(&e))?;
        let (done, answer) = tokio::sync::oneshot::channel();
        mux.submit(Item { group: self.group, data, ttl, done })
            .await
            .map_err(|_| unreachable(&Error::Unavailable("the batch sender stopped".into())))?;
        let bytes = match tokio::time::timeout(ttl, answer).await {
            Err(_) => return Err(RPCError::Network(NetworkError::new(&TransportError::Timeout))),
            Ok(Err(_)) => return Err(unreachable(&Error::Unavailable("the batch sender stopped".into()))),
            Ok(Ok(Err(e @ TransportError::Unreachable(_)))) => return Err(unreachable(&e)),
            Ok(Ok(Err(e))) => return Err(RPCError::Network(NetworkError::new(&e))),
            Ok(Ok(Ok(bytes))) => bytes,
        };
        let answer: std::result::Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            codec::decode(&bytes).map_err(|e| {
                RPCError::Network(NetworkError::new(&TransportError::Other(format!("bad reply: {e}"))))
            })?;
        answer.map_err(|remote| RPCError::RemoteError(RemoteError::new(self.target, remote)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> std::result::Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.send(&rpc, option.hard_ttl(), "install_snapshot", |mut c, f| async move {
            c.install_snapshot(f).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> std::result::Result<VoteResponse<NodeId>, RpcErr> {
        self.send(&rpc, option.hard_ttl(), "vote", |mut c, f| async move { c.vote(f).await }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type RpcResult = std::result::Result<tonic::Response<Frame>, tonic::Status>;
    type AppendAnswer = std::result::Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>;

    /// A peer node, authenticated as a real one. With `batches` off it is an earlier version:
    /// no `AppendBatch`, and each `AppendEntries` answered with a success. With `batches` on it
    /// is slow to answer a batch (so that calls pile up) and answers each request with a vote
    /// naming the request's group (so that answers can be matched with their requests).
    struct TestPeer {
        auth: Arc<LinkAuth>,
        batches: bool,
        batch_sizes: Mutex<Vec<usize>>,
        refused_batches: AtomicUsize,
        singles: AtomicUsize,
    }

    /// The whole impl from one macro: `async_trait` must see every method expanded.
    macro_rules! test_peer {
        ($($name:ident),*) => {
            #[tonic::async_trait]
            impl Internal for TestPeer {
                async fn append_entries(&self, req: tonic::Request<Frame>) -> RpcResult {
                    self.singles.fetch_add(1, Ordering::SeqCst);
                    let f = req.into_inner();
                    self.auth
                        .accept("append_entries", &f)
                        .map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
                    let _: AppendEntriesRequest<TypeConfig> = request(&f)?;
                    let answer: AppendAnswer = Ok(AppendEntriesResponse::Success);
                    reply(&self.auth, "append_entries", &f, &answer)
                }

                async fn append_batch(&self, req: tonic::Request<Frame>) -> RpcResult {
                    if !self.batches {
                        self.refused_batches.fetch_add(1, Ordering::SeqCst);
                        return Err(tonic::Status::unimplemented("append_batch"));
                    }
                    let f = req.into_inner();
                    self.auth
                        .accept("append_batch", &f)
                        .map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
                    let items: Vec<(GroupId, Vec<u8>)> = request(&f)?;
                    self.batch_sizes.lock().unwrap().push(items.len());
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    let answers: Vec<BatchAnswer> = items
                        .iter()
                        .map(|(group, _)| {
                            let r: AppendAnswer =
                                Ok(AppendEntriesResponse::HigherVote(openraft::Vote::new(*group, 1)));
                            Ok(codec::encode(&r).unwrap())
                        })
                        .collect();
                    reply(&self.auth, "append_batch", &f, &Ok::<_, Error>(answers))
                }

                $(
                    async fn $name(&self, _: tonic::Request<Frame>) -> RpcResult {
                        Err(tonic::Status::unimplemented(stringify!($name)))
                    }
                )*
            }
        };
    }

    test_peer!(
        vote,
        install_snapshot,
        forward,
        read_index,
        status,
        sizes,
        rejoin,
        read,
        scan,
        ts_select,
        ts_series,
        change_replica,
        ledger_cosign,
        ping,
        quiesce,
        wake
    );

    /// Serves a test peer (node 2) on loopback; returns it and the batch sender to it from
    /// node 1.
    async fn peer_and_mux(batches: bool) -> (Arc<TestPeer>, Mux) {
        let a = Arc::new(edgefabric_crypto::Identity::from_seed(&[1; 32]));
        let b = Arc::new(edgefabric_crypto::Identity::from_seed(&[2; 32]));
        let keys: HashMap<NodeId, String> =
            [(1, a.public_key().to_base64()), (2, b.public_key().to_base64())].into_iter().collect();
        let peer = Arc::new(TestPeer {
            auth: Arc::new(LinkAuth::new(2, b, keys.clone())),
            batches,
            batch_sizes: Mutex::new(vec![]),
            refused_batches: AtomicUsize::new(0),
            singles: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(InternalServer::from_arc(peer.clone()))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let mux = Channels::new(Arc::new(LinkAuth::new(1, a, keys)), None).mux(2, &addr).unwrap();
        (peer, mux)
    }

    /// Submits a heartbeat of `group` from its own task (as each group's replication does);
    /// returns where its answer arrives.
    fn submit(
        mux: &Mux,
        group: GroupId,
    ) -> tokio::sync::oneshot::Receiver<std::result::Result<Vec<u8>, TransportError>> {
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![],
        };
        let (done, answer) = tokio::sync::oneshot::channel();
        let item = Item { group, data: codec::encode(&rpc).unwrap(), ttl: Duration::from_secs(5), done };
        let mux = mux.clone();
        tokio::spawn(async move { assert!(mux.submit(item).await.is_ok()) });
        answer
    }

    async fn answer_of(
        answer: tokio::sync::oneshot::Receiver<std::result::Result<Vec<u8>, TransportError>>,
    ) -> AppendAnswer {
        codec::decode(&answer.await.unwrap().expect("answered")).unwrap()
    }

    #[tokio::test]
    async fn requests_that_wait_for_a_call_slot_share_a_batch_and_get_their_own_answers() {
        let (peer, mux) = peer_and_mux(true).await;
        let answers: Vec<_> = (1..=40u64).map(|group| (group, submit(&mux, group))).collect();
        for (group, answer) in answers {
            match answer_of(answer).await {
                Ok(AppendEntriesResponse::HigherVote(v)) => assert_eq!(v.leader_id().term, group),
                other => panic!("group {group}: {other:?}"),
            }
        }
        let sizes = peer.batch_sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 40, "{sizes:?}");
        assert!(sizes.len() < 40 && sizes.iter().any(|n| *n > 1), "nothing was batched: {sizes:?}");
        assert!(sizes.iter().all(|n| *n <= BATCH_ITEMS));
        assert_eq!(peer.singles.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_peer_without_batches_gets_each_request_in_its_own_call() {
        let (peer, mux) = peer_and_mux(false).await;
        // The first batch is refused as unknown; its requests still get through, one by one.
        let answers: Vec<_> = (1..=3).map(|group| submit(&mux, group)).collect();
        for a in answers {
            let r = answer_of(a).await;
            assert!(matches!(r, Ok(AppendEntriesResponse::Success)), "{r:?}");
        }
        assert_eq!(peer.singles.load(Ordering::SeqCst), 3);
        let tried = peer.refused_batches.load(Ordering::SeqCst);
        assert!(tried >= 1);
        // From then on no batch is tried (for a while): straight to single calls.
        answer_of(submit(&mux, 4)).await.expect("answered");
        assert_eq!(peer.refused_batches.load(Ordering::SeqCst), tried);
        assert_eq!(peer.singles.load(Ordering::SeqCst), 4);
    }
}
