//! A KV client for Rust apps (and the load generator) that sends each request straight to the
//! node leading the key's shard, as TiKV's client does, instead of to any node (which then
//! forwards a write to the leader, or asks the leader for a read index: one more hop, and its
//! TLS, framing and scheduling, on two of three requests in a 3-node cluster).
//!
//! It learns the shard map (hash ranges, leaders, node addresses) from `Cluster/Status`, hashes
//! each key as the nodes do (`edgefabric_store::shard::key_hash`), and refreshes the map in the
//! background. A stale map costs only speed, never correctness: a node that does not lead the
//! shard still forwards the request, exactly as it does for a client that does not route.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let opts = edgefabric::kv_client::Options::new(vec!["https://10.0.0.1:7400".into()], "TOKEN");
//! let kv = edgefabric::kv_client::Client::connect(opts).await?;
//! let rev = kv.put("default", "greeting", b"hello".to_vec()).await?;
//! let got = kv.get("default", "greeting").await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::grpc::pb;

/// How to reach the cluster.
#[derive(Clone, Debug)]
pub struct Options {
    /// gRPC endpoints to learn the cluster from (`https://host:port`, or `http://` for a
    /// plaintext cluster); the nodes' own addresses come from the map.
    pub endpoints: Vec<String>,
    pub token: String,
    /// The cluster CA (PEM) for https:// endpoints.
    pub ca_file: Option<PathBuf>,
    /// HTTP/2 connections per node (each carries many concurrent requests).
    pub connections_per_node: usize,
    /// How often the shard map is fetched again (leaders move).
    pub refresh: Duration,
}

impl Options {
    pub fn new(endpoints: Vec<String>, token: &str) -> Self {
        Options {
            endpoints,
            token: token.to_string(),
            ca_file: None,
            connections_per_node: 1,
            refresh: Duration::from_secs(2),
        }
    }
}

/// One shard as the client routes by it.
#[derive(Clone, Debug)]
struct Route {
    start: u64,
    end: u64,
    /// Where requests go: the leader if known, else the first replica.
    node: u64,
}

struct State {
    /// The hash-range shards, sorted by `start`.
    routes: Vec<Route>,
    /// Site-local namespaces' pinned shards: namespace → node.
    pinned: HashMap<String, u64>,
    nodes: HashMap<u64, Vec<Channel>>,
}

/// A routing KV client; cheap to clone (one connection pool behind it).
#[derive(Clone)]
pub struct Client {
    opts: Arc<Options>,
    auth: MetadataValue<Ascii>,
    state: Arc<RwLock<State>>,
    /// Connections to the endpoints given, for when the map names no usable node.
    seeds: Arc<Vec<Channel>>,
    next: Arc<std::sync::atomic::AtomicUsize>,
}

async fn channel(opts: &Options, addr: &str) -> Result<Channel> {
    let mut ep = Endpoint::from_shared(addr.to_string())
        .with_context(|| format!("endpoint {addr:?}"))?
        .tcp_nodelay(true);
    if addr.starts_with("https://") {
        let ca = opts.ca_file.as_ref().context("https:// endpoints need the cluster's CA file")?;
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem));
        ep = ep.tls_config(tls)?;
    }
    ep.connect().await.with_context(|| format!("connecting to {addr}"))
}

impl Client {
    /// Connects to the endpoints given, learns the map, and connects to every node in it.
    pub async fn connect(opts: Options) -> Result<Client> {
        if opts.endpoints.is_empty() {
            bail!("endpoints: give at least one");
        }
        let auth: MetadataValue<Ascii> = format!("Bearer {}", opts.token.trim()).parse().context("token")?;
        let mut seeds = vec![];
        for e in &opts.endpoints {
            seeds.push(channel(&opts, e).await?);
        }
        let client = Client {
            opts: Arc::new(opts),
            auth,
            state: Arc::new(RwLock::new(State {
                routes: vec![],
                pinned: HashMap::new(),
                nodes: HashMap::new(),
            })),
            seeds: Arc::new(seeds),
            next: Default::default(),
        };
        client.refresh().await?;
        // Leaders move (elections, rebalancing): keep the map fresh while the client lives.
        let weak = Arc::downgrade(&client.state);
        let c = client.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(c.opts.refresh).await;
                if weak.strong_count() <= 1 {
                    return; // only this task's clone is left
                }
                if let Err(e) = c.refresh().await {
                    tracing::debug!(error = %e, "refreshing the shard map");
                }
            }
        });
        Ok(client)
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert("authorization", self.auth.clone());
        r
    }

    /// Fetches the map from any node and connects to nodes not yet connected.
    pub async fn refresh(&self) -> Result<()> {
        let mut last = None;
        let mut status = None;
        for ch in self.seeds.iter().chain(self.any_node_channels().iter()) {
            let mut c = pb::cluster_client::ClusterClient::new(ch.clone());
            match c.status(self.request(pb::ClusterStatusRequest {})).await {
                Ok(r) => {
                    status = Some(r.into_inner());
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(st) = status else {
            bail!("no node answered Cluster/Status: {last:?}");
        };
        let known: Vec<u64> =
            self.state.read().unwrap_or_else(|p| p.into_inner()).nodes.keys().copied().collect();
        let scheme = if self.opts.endpoints[0].starts_with("https://") { "https" } else { "http" };
        let mut added = HashMap::new();
        for n in st.nodes.iter().filter(|n| !known.contains(&n.id)) {
            let addr = format!("{scheme}://{}", n.grpc);
            let mut chans = vec![];
            for _ in 0..self.opts.connections_per_node.max(1) {
                match channel(&self.opts, &addr).await {
                    Ok(ch) => chans.push(ch),
                    Err(e) => tracing::debug!(node = n.id, error = %e, "connecting"),
                }
            }
            if !chans.is_empty() {
                added.insert(n.id, chans);
            }
        }
        let pinned: HashMap<String, u64> = st
            .shards
            .iter()
            .filter_map(|s| Some((s.pinned_ns.clone()?, s.leader.or_else(|| s.replicas.first().copied())?)))
            .collect();
        let mut routes: Vec<Route> = st
            .shards
            .iter()
            .filter(|s| s.pinned_ns.is_none())
            .filter_map(|s| {
                let node = s.leader.or_else(|| s.replicas.first().copied())?;
                Some(Route { start: s.start, end: s.end, node })
            })
            .collect();
        routes.sort_by_key(|r| r.start);
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        state.nodes.extend(added);
        state.routes = routes;
        state.pinned = pinned;
        Ok(())
    }

    fn any_node_channels(&self) -> Vec<Channel> {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        st.nodes.values().filter_map(|c| c.first().cloned()).collect()
    }

    /// The channel for a key: its shard's leader's, else any endpoint's.
    fn channel_for(&self, ns: &str, key: &str) -> Channel {
        let h = edgefabric_store::shard::key_hash(ns, key);
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        let node = match st.pinned.get(ns) {
            Some(node) => Some(*node),
            None => route_of(&st.routes, h),
        };
        let routed = node
            .and_then(|node| st.nodes.get(&node))
            .and_then(|chans| chans.get(n % chans.len().max(1)).cloned());
        routed.unwrap_or_else(|| self.seeds[n % self.seeds.len()].clone())
    }

    /// Puts a value; returns its revision. Acknowledged means committed by a quorum.
    pub async fn put(&self, ns: &str, key: &str, value: Vec<u8>) -> Result<u64, tonic::Status> {
        let mut c = pb::kv_client::KvClient::new(self.channel_for(ns, key));
        let req = self.request(pb::PutRequest { ns: ns.into(), key: key.into(), value, cas: None });
        Ok(c.put(req).await?.into_inner().revision)
    }

    /// A linearizable read: the value and its revision, or `None`.
    pub async fn get(&self, ns: &str, key: &str) -> Result<Option<(Vec<u8>, u64)>, tonic::Status> {
        let mut c = pb::kv_client::KvClient::new(self.channel_for(ns, key));
        let r = c.get(self.request(pb::GetRequest { ns: ns.into(), key: key.into(), stale: false })).await?;
        let r = r.into_inner();
        Ok(r.found.then_some((r.value, r.revision)))
    }
}

/// The node a hash routes to: the range holding it (ranges are inclusive at both ends).
fn route_of(routes: &[Route], h: u64) -> Option<u64> {
    let i = routes.partition_point(|r| r.start <= h).checked_sub(1)?;
    routes.get(i).filter(|r| r.end >= h).map(|r| r.node)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client's routing must agree with the nodes' sharding: the same hash, ranges
    /// inclusive at both ends, the top range owning `u64::MAX`.
    #[test]
    fn routes_cover_the_hash_space_as_the_nodes_shard_it() {
        use edgefabric_store::shard::{initial_map, key_hash, NodeInfo};
        let nodes: Vec<NodeInfo> = (1..=3)
            .map(|id| NodeInfo {
                id,
                site: format!("s{id}"),
                addr: String::new(),
                http: String::new(),
                public_key: String::new(),
            })
            .collect();
        let map = initial_map(&nodes, 16, 3);
        // Routed by shard id here, to check the range lookup itself.
        let mut routes: Vec<Route> =
            map.shards.iter().map(|s| Route { start: s.start, end: s.end, node: s.id }).collect();
        routes.sort_by_key(|r| r.start);
        for i in 0..2000u64 {
            let key = format!("bench/{i:08}");
            let want = map.shard_for("default", &key).unwrap().id;
            assert_eq!(route_of(&routes, key_hash("default", &key)), Some(want), "{key}");
        }
        for h in [0, 1, u64::MAX - 1, u64::MAX] {
            assert_eq!(route_of(&routes, h), Some(map.shard_for_hash(h).unwrap().id), "{h:x}");
        }
    }

    #[tokio::test]
    async fn bad_options_are_named() {
        let e = Client::connect(Options::new(vec![], "t")).await.err().unwrap().to_string();
        assert!(e.contains("endpoints"), "{e}");
        let e = Client::connect(Options::new(vec!["https://127.0.0.1:1".into()], "t")).await.err().unwrap();
        assert!(e.to_string().contains("CA file"), "{e}");
        let e = Client::connect(Options::new(vec!["not a url".into()], "t")).await.err().unwrap();
        assert!(e.to_string().contains("endpoint"), "{e}");
        let e = Client::connect(Options::new(vec!["http://127.0.0.1:1".into()], "bad\ntoken"))
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("token"), "{e}");
    }
}
