//! Node configuration (TOML), `cluster init`, and the `--dev` embedded default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use edgefabric_crypto::Identity;
use edgefabric_store::node::NodeOptions;
use edgefabric_store::shard::NodeInfo;
use serde::{Deserialize, Serialize};

/// One node's configuration file. Relative paths are relative to the file's directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id (1..).
    pub id: u64,
    /// The edge site this node runs at.
    pub site: String,
    /// Where the node keeps its raft log, state machine and snapshots.
    pub data_dir: PathBuf,
    /// Address for gRPC: the public API and node-to-node traffic.
    pub grpc: SocketAddr,
    /// Address for REST.
    pub http: SocketAddr,
    /// The node's ed25519 key (secret; `FILE.pub` holds the public key).
    pub key_file: PathBuf,
    /// The admin bearer token.
    pub admin_token_file: PathBuf,
    /// Set by `cluster join`: this node joined a running cluster, so `members` are the nodes it
    /// first talks to (with their keys, to authenticate them), not the founders the ledger's
    /// genesis block lists.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub joined: bool,
    /// Every member of the cluster at its creation (or at this node's joining), this node
    /// included.
    pub members: Vec<Member>,
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub raft: RaftSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub ledger: LedgerSection,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub tsdb: TsdbSection,
    #[serde(default)]
    pub tls: TlsSection,
    /// `serve --dev`: plaintext on loopback is expected there (never read from a file).
    #[serde(skip)]
    pub dev: bool,
    /// Not written by `cluster init`: a test adds it.
    #[serde(default, skip_serializing_if = "TestSection::is_off")]
    pub test: TestSection,
}

/// Only for test clusters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestSection {
    /// Serve `GET|PUT /v1/test/faults` (admin): drop or delay this node's messages to chosen
    /// peers, for the fault-injection suite. Never set it in production.
    pub faults: bool,
}

impl TestSection {
    fn is_off(&self) -> bool {
        !self.faults
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TsdbSection {
    /// How often each replica computes rollups and applies retention.
    pub maintenance_interval_ms: u64,
}

impl Default for TsdbSection {
    fn default() -> Self {
        TsdbSection { maintenance_interval_ms: 60_000 }
    }
}

/// TLS on the REST and gRPC listeners and between nodes. On unless `enabled = false`, which
/// only `--dev` does by itself; then the node warns at start and `/v1/cluster/status` says so.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    pub enabled: bool,
    /// The certificate (PEM, chain first to last) this node serves on both ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The CA certificate(s) (PEM) that peers' serving certificates are verified against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection { enabled: true, cert_file: None, key_file: None, ca_file: None }
    }
}

impl TlsSection {
    /// The three files, when TLS is on (`validate` has checked they are all given).
    pub fn files(&self) -> Option<(&Path, &Path, &Path)> {
        match (self.enabled, &self.cert_file, &self.key_file, &self.ca_file) {
            (true, Some(c), Some(k), Some(ca)) => Some((c, k, ca)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// Record every access in the ledger. Turn off only to measure what auditing costs: with
    /// it off, accesses leave no trace, and the node says so at start-up.
    pub enabled: bool,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection { enabled: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerSection {
    /// The checkpoint origin line, the same on every node (`cluster init` makes a unique one;
    /// verifiers find it in trust.json).
    pub origin: String,
    /// Re-verify the whole stored ledger at start-up (always: the head and the checkpoint).
    pub verify_full_at_start: bool,
}

impl Default for LedgerSection {
    fn default() -> Self {
        LedgerSection { origin: DEFAULT_ORIGIN.into(), verify_full_at_start: false }
    }
}

pub const DEFAULT_ORIGIN: &str = "edgefabric/ledger";

/// `edgefabric config example`: every field of a node's configuration, documented. A test
/// checks that it parses, validates, and names every field `NodeConfig` has.
pub const EXAMPLE: &str = include_str!("config-example.toml");

/// How the cluster is sharded at creation. Must be the same on every node (`cluster init`
/// writes the same values everywhere): the first map is derived from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Shards created with the cluster.
    pub initial_shards: u64,
    /// Replicas per shard, placed on distinct sites where there are enough.
    pub replicas: usize,
    /// A shard holding more keys than this splits in two (TiKV splits by size the same way).
    pub split_keys: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection { initial_shards: 16, replicas: 3, split_keys: 1_000_000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: u64,
    pub site: String,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// The node's public key (base64). `cluster init` lists every founder's, and then every
    /// node checks the ledger's genesis block against them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries.
    pub snapshot_logs: u64,
    /// Log entries kept behind a snapshot for lagging followers.
    pub keep_logs: u64,
}

impl Default for RaftSection {
    fn default() -> Self {
        RaftSection {
            heartbeat_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            snapshot_logs: 20_000,
            keep_logs: 5_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// The longest a request waits for a leader or a quorum before a 503.
    pub request_timeout_ms: u64,
    /// Largest KV value accepted, in bytes.
    pub max_value_bytes: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            request_timeout_ms: 5_000,
            max_value_bytes: edgefabric_store::types::DEFAULT_MAX_VALUE_BYTES,
        }
    }
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut cfg: NodeConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let tls = [&mut cfg.tls.cert_file, &mut cfg.tls.key_file, &mut cfg.tls.ca_file];
        for p in [&mut cfg.data_dir, &mut cfg.key_file, &mut cfg.admin_token_file]
            .into_iter()
            .chain(tls.into_iter().flatten())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.validate().with_context(|| format!("in {}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.tls.enabled {
            for (field, v) in [
                ("cert_file", &self.tls.cert_file),
                ("key_file", &self.tls.key_file),
                ("ca_file", &self.tls.ca_file),
            ] {
                if v.is_none() {
                    bail!(
                        "tls.{field}: required: every listener speaks TLS (`cluster init` writes the files); \
                         plaintext only with an explicit `[tls] enabled = false`"
                    );
                }
            }
        }
        if !self.members.iter().any(|m| m.id == self.id) {
            bail!("members: this node's id {} is not listed", self.id);
        }
        let mut ids: Vec<u64> = self.members.iter().map(|m| m.id).collect();
        ids.sort();
        ids.dedup();
        if ids.len() != self.members.len() {
            bail!("members: duplicate node id");
        }
        if self.id == 0 {
            bail!("id: must be at least 1");
        }
        let r = &self.raft;
        if r.election_timeout_min_ms <= r.heartbeat_ms
            || r.election_timeout_max_ms <= r.election_timeout_min_ms
        {
            bail!("raft: need heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms");
        }
        if self.cluster.initial_shards == 0 || self.cluster.initial_shards > 4096 {
            bail!("cluster.initial_shards: must be between 1 and 4096");
        }
        if self.cluster.split_keys < 100 {
            bail!("cluster.split_keys: must be at least 100");
        }
        if self.ledger.origin.is_empty() || self.ledger.origin.chars().any(|c| c.is_control()) {
            bail!("ledger.origin: must be a non-empty line");
        }
        for m in &self.members {
            match &m.public_key {
                Some(k) => {
                    edgefabric_crypto::PublicKey::from_base64(k)
                        .with_context(|| format!("members: node {}'s public_key", m.id))?;
                }
                // Nodes authenticate every frame between them with their keys (store/src/link.rs).
                None if m.id != self.id => bail!(
                    "members: node {} has no public_key: nodes authenticate each other with their keys \
                     (`cluster init` and `cluster join` write them; trust.json lists them)",
                    m.id
                ),
                None => {}
            }
        }
        if self.cluster.replicas == 0 || self.cluster.replicas > 7 {
            bail!("cluster.replicas: must be between 1 and 7");
        }
        if self.limits.max_value_bytes == 0
            || self.limits.max_value_bytes > edgefabric_store::kv::APPLY_MAX_VALUE_BYTES
        {
            bail!(
                "limits.max_value_bytes: must be between 1 and {}",
                edgefabric_store::kv::APPLY_MAX_VALUE_BYTES
            );
        }
        Ok(())
    }

    /// The node's options; `identity` is its key (read from `key_file`).
    pub fn node_options(&self, identity: std::sync::Arc<Identity>) -> Result<NodeOptions> {
        let own_key = identity.public_key().to_base64();
        if let Some(listed) =
            self.members.iter().find(|m| m.id == self.id).and_then(|m| m.public_key.as_ref())
        {
            if *listed != own_key {
                bail!("members: node {}'s public_key is not the key in {}", self.id, self.key_file.display());
            }
        }
        let members: Vec<NodeInfo> = self
            .members
            .iter()
            .map(|m| NodeInfo {
                id: m.id,
                site: m.site.clone(),
                addr: m.grpc.to_string(),
                http: m.http.to_string(),
                public_key: if m.id == self.id {
                    own_key.clone()
                } else {
                    m.public_key.clone().unwrap_or_default()
                },
            })
            .collect();
        // A founding configuration lists every founder's key: the genesis block must match it.
        let genesis = if !self.joined && self.members.iter().all(|m| m.public_key.is_some()) {
            let founders: Vec<(u64, String, [u8; 32])> = members
                .iter()
                .map(|m| {
                    edgefabric_crypto::PublicKey::from_base64(&m.public_key)
                        .map(|k| (m.id, m.site.clone(), k.to_bytes()))
                })
                .collect::<std::result::Result<_, _>>()?;
            Some(edgefabric_ledger::chain::genesis_entries(&founders))
        } else {
            None
        };
        let mut o = NodeOptions::new(self.id, members, self.data_dir.clone(), identity);
        o.ledger_origin = self.ledger.origin.clone();
        o.ledger_genesis = genesis;
        o.verify_ledger_full = self.ledger.verify_full_at_start;
        o.audit = self.audit.enabled;
        o.ts_maintenance = Duration::from_millis(self.tsdb.maintenance_interval_ms.max(100));
        o.test_faults = self.test.faults;
        o.initial_shards = self.cluster.initial_shards;
        o.replicas = self.cluster.replicas;
        o.split_keys = self.cluster.split_keys;
        o.heartbeat = Duration::from_millis(self.raft.heartbeat_ms);
        o.election_timeout_min = Duration::from_millis(self.raft.election_timeout_min_ms);
        o.election_timeout_max = Duration::from_millis(self.raft.election_timeout_max_ms);
        o.snapshot_logs = self.raft.snapshot_logs;
        o.keep_logs = self.raft.keep_logs;
        o.request_timeout = Duration::from_millis(self.limits.request_timeout_ms);
        o.max_value_bytes = self.limits.max_value_bytes;
        if let Some((_, _, ca)) = self.tls.files() {
            let v = edgefabric_crypto::tls::ReloadingCaVerifier::new(ca).context("tls.ca_file")?;
            o.peer_tls = Some(std::sync::Arc::new(v));
        }
        Ok(o)
    }
}

#[derive(Serialize, Deserialize)]
pub struct TrustFile {
    pub nodes: Vec<TrustedNode>,
    /// The ledger's checkpoint origin, when known: a verifier refuses checkpoints of others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub struct TrustedNode {
    pub id: u64,
    pub public_key: String,
}

#[derive(Serialize, Deserialize)]
pub struct ClusterFile {
    pub nodes: Vec<ClusterNode>,
}

#[derive(Serialize, Deserialize)]
pub struct ClusterNode {
    pub id: u64,
    pub site: String,
    pub grpc: String,
    pub http: String,
}

fn write_new(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// Creates a new file readable by its owner only: mode 0600 from the moment it exists, so the
/// secret is never readable by others, not even between a write and a chmod.
fn write_secret(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f =
        opts.open(path).with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Writes the admin token file, mode 0600 from its creation.
pub fn write_token(path: &Path) -> Result<String> {
    let token = edgefabric_crypto::random_token()?;
    write_secret(path, &format!("{token}\n"))?;
    Ok(token)
}

/// The cluster CA that `cluster init` left in `dir`.
fn read_ca(dir: &Path) -> Result<edgefabric_crypto::tls::Pem> {
    Ok(edgefabric_crypto::tls::Pem {
        cert: std::fs::read_to_string(dir.join("ca.pem"))
            .with_context(|| format!("reading {} (the cluster CA)", dir.join("ca.pem").display()))?,
        key: zeroize::Zeroizing::new(
            std::fs::read_to_string(dir.join("ca.key")).with_context(|| {
                format!("reading {} (the cluster CA's key)", dir.join("ca.key").display())
            })?,
        ),
    })
}

/// `cluster cert`: a certificate for `hosts` from the CA in `dir`, written to `OUT.crt` and
/// `OUT.key` (0600). Returns both paths.
pub fn issue_cert(dir: &Path, hosts: &[String], name: &str, out: &Path) -> Result<(PathBuf, PathBuf)> {
    if hosts.iter().any(|h| h.is_empty()) {
        bail!("--host: empty name");
    }
    let ca = read_ca(dir)?;
    let pem = edgefabric_crypto::tls::issue_cert(&ca, name, hosts)?;
    let with = |ext: &str| {
        let mut s = out.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    let (crt, key) = (with(".crt"), with(".key"));
    write_new(&crt, &pem.cert)?;
    write_secret(&key, &pem.key)?;
    Ok((crt, key))
}

/// `node<K>.crt` and `node<K>.tls.key` in `dir`: node K's serving certificate for `host`,
/// issued by `ca`.
fn write_node_cert(dir: &Path, ca: &edgefabric_crypto::tls::Pem, id: u64, host: &str) -> Result<()> {
    let pem = edgefabric_crypto::tls::issue_node_cert(ca, id, &[host.to_string()])?;
    write_new(&dir.join(format!("node{id}.crt")), &pem.cert)?;
    write_secret(&dir.join(format!("node{id}.tls.key")), &pem.key)?;
    Ok(())
}

/// The `[tls]` section `cluster init` and `cluster join` write for node `id`.
fn node_tls(id: u64) -> TlsSection {
    TlsSection {
        enabled: true,
        cert_file: Some(PathBuf::from(format!("node{id}.crt"))),
        key_file: Some(PathBuf::from(format!("node{id}.tls.key"))),
        ca_file: Some(PathBuf::from("ca.pem")),
    }
}

pub fn read_token(path: &Path) -> Result<String> {
    let t =
        std::fs::read_to_string(path).with_context(|| format!("reading token file {}", path.display()))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    Ok(t)
}

pub struct InitSpec {
    pub nodes: u64,
    pub sites: Vec<String>,
    pub host: String,
    pub base_port: u16,
    pub out: PathBuf,
}

/// `edgefabric cluster init`: configs, keys, token, trust and cluster files for N local nodes.
pub fn cluster_init(spec: &InitSpec) -> Result<()> {
    if spec.nodes == 0 {
        bail!("--nodes: must be at least 1");
    }
    if spec.sites.is_empty() || spec.sites.iter().any(|s| s.is_empty()) {
        bail!("--sites: give one or more non-empty site names, comma-separated");
    }
    let last_port = spec.base_port as u64 + 2 * spec.nodes - 1;
    if last_port > u16::MAX as u64 {
        bail!("--base-port: {} nodes need ports up to {last_port}, past 65535", spec.nodes);
    }
    std::fs::create_dir_all(&spec.out).with_context(|| format!("creating {}", spec.out.display()))?;
    let origin = format!("edgefabric/{}", hex::encode(edgefabric_crypto::random_bytes::<8>()?));
    let mut members = vec![];
    for k in 1..=spec.nodes {
        let grpc_port = spec.base_port as u64 + 2 * (k - 1);
        let grpc: SocketAddr =
            format!("{}:{grpc_port}", spec.host).parse().context("--host: not an IP address")?;
        let http: SocketAddr = format!("{}:{}", spec.host, grpc_port + 1).parse().context("--host")?;
        let site = spec.sites[((k - 1) as usize) % spec.sites.len()].clone();
        members.push(Member { id: k, site, grpc, http, public_key: None });
    }
    write_token(&spec.out.join("admin.token"))?;
    // The cluster CA: ca.pem verifies every node's certificate; ca.key (the operator's, never
    // named in a node's config) issues them, here and at `cluster join`.
    let ca = edgefabric_crypto::tls::new_ca(&origin)?;
    write_new(&spec.out.join("ca.pem"), &ca.cert)?;
    write_secret(&spec.out.join("ca.key"), &ca.key)?;
    for m in &members {
        write_node_cert(&spec.out, &ca, m.id, &spec.host)?;
    }
    let mut trust = vec![];
    // Every key first: each node's config lists all founders' keys.
    for m in members.iter_mut() {
        let id = Identity::generate()?;
        id.write(&spec.out.join(format!("node{}.key", m.id)))?;
        m.public_key = Some(id.public_key().to_base64());
        trust.push(TrustedNode { id: m.id, public_key: id.public_key().to_base64() });
    }
    for m in &members {
        let key_name = format!("node{}.key", m.id);
        let cfg = NodeConfig {
            id: m.id,
            site: m.site.clone(),
            data_dir: PathBuf::from(format!("node{}", m.id)),
            grpc: m.grpc,
            http: m.http,
            key_file: PathBuf::from(key_name),
            admin_token_file: PathBuf::from("admin.token"),
            joined: false,
            members: members.clone(),
            cluster: ClusterSection::default(),
            raft: RaftSection::default(),
            limits: LimitsSection::default(),
            ledger: LedgerSection { origin: origin.clone(), ..Default::default() },
            audit: AuditSection::default(),
            tsdb: TsdbSection::default(),
            tls: node_tls(m.id),
            dev: false,
            test: TestSection::default(),
        };
        let text = format!(
            "# EdgeFabric node {} at site {:?}. Start it with: edgefabric serve --config node{}.toml\n\
             # Relative paths are relative to this file.\n{}",
            m.id,
            m.site,
            m.id,
            toml::to_string_pretty(&cfg)?
        );
        write_new(&spec.out.join(format!("node{}.toml", m.id)), &text)?;
    }
    let trust = TrustFile { nodes: trust, origin: Some(origin) };
    write_new(&spec.out.join("trust.json"), &serde_json::to_string_pretty(&trust)?)?;
    let cluster = ClusterFile {
        nodes: members
            .iter()
            .map(|m| ClusterNode {
                id: m.id,
                site: m.site.clone(),
                grpc: m.grpc.to_string(),
                http: m.http.to_string(),
            })
            .collect(),
    };
    write_new(&spec.out.join("cluster.json"), &serde_json::to_string_pretty(&cluster)?)?;
    Ok(())
}

pub struct Joined {
    pub public_key: String,
    pub id: u64,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub config: PathBuf,
}

/// `cluster join`: the next node's key and config in a `cluster init` directory; its members
/// are the ones in `cluster.json` plus itself, and both `cluster.json` and `trust.json` gain it.
pub fn prepare_join(dir: &Path, site: &str, host: &str, port: u16) -> Result<Joined> {
    if site.is_empty() {
        bail!("--site: must not be empty");
    }
    let cluster_path = dir.join("cluster.json");
    let mut cluster: ClusterFile = serde_json::from_str(
        &std::fs::read_to_string(&cluster_path)
            .with_context(|| format!("reading {}", cluster_path.display()))?,
    )
    .with_context(|| format!("parsing {}", cluster_path.display()))?;
    let id = cluster.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
    let grpc: SocketAddr = format!("{host}:{port}").parse().context("--host/--port")?;
    let http: SocketAddr = format!("{host}:{}", port.checked_add(1).context("--port: too large")?).parse()?;
    // The joining node authenticates the nodes it first talks to by their keys.
    let trust_path = dir.join("trust.json");
    let mut trust: TrustFile = serde_json::from_str(
        &std::fs::read_to_string(&trust_path)
            .with_context(|| format!("reading {} (the members' keys)", trust_path.display()))?,
    )
    .context("parsing trust.json")?;
    let mut members = vec![];
    for n in &cluster.nodes {
        let key = trust.nodes.iter().find(|t| t.id == n.id).map(|t| t.public_key.clone());
        let key = key.with_context(|| format!("trust.json: no key for node {}", n.id))?;
        members.push(Member {
            id: n.id,
            site: n.site.clone(),
            grpc: n.grpc.parse().with_context(|| format!("cluster.json: node {} grpc", n.id))?,
            http: n.http.parse().with_context(|| format!("cluster.json: node {} http", n.id))?,
            public_key: Some(key),
        });
    }
    let key_name = format!("node{id}.key");
    let identity = Identity::generate()?;
    members.push(Member {
        id,
        site: site.to_string(),
        grpc,
        http,
        public_key: Some(identity.public_key().to_base64()),
    });
    let origin = trust.origin.clone().unwrap_or_else(|| DEFAULT_ORIGIN.into());
    // The new node's certificate, from the cluster CA that `cluster init` left here.
    let ca =
        edgefabric_crypto::tls::Pem {
            cert: std::fs::read_to_string(dir.join("ca.pem"))
                .with_context(|| format!("reading {} (the cluster CA)", dir.join("ca.pem").display()))?,
            key: zeroize::Zeroizing::new(std::fs::read_to_string(dir.join("ca.key")).with_context(|| {
                format!("reading {} (the cluster CA's key)", dir.join("ca.key").display())
            })?),
        };
    write_node_cert(dir, &ca, id, host)?;
    identity.write(&dir.join(&key_name))?;
    let cfg = NodeConfig {
        id,
        site: site.to_string(),
        data_dir: PathBuf::from(format!("node{id}")),
        grpc,
        http,
        key_file: PathBuf::from(key_name),
        admin_token_file: PathBuf::from("admin.token"),
        joined: true,
        members,
        cluster: ClusterSection::default(),
        raft: RaftSection::default(),
        limits: LimitsSection::default(),
        ledger: LedgerSection { origin, ..Default::default() },
        audit: AuditSection::default(),
        tsdb: TsdbSection::default(),
        tls: node_tls(id),
        dev: false,
        test: TestSection::default(),
    };
    let config = dir.join(format!("node{id}.toml"));
    let text = format!(
        "# EdgeFabric node {id} at site {site:?}, joined with `cluster join`.\n# Relative paths are relative to this file.\n{}",
        toml::to_string_pretty(&cfg)?
    );
    write_new(&config, &text)?;
    cluster.nodes.push(ClusterNode {
        id,
        site: site.to_string(),
        grpc: grpc.to_string(),
        http: http.to_string(),
    });
    std::fs::write(&cluster_path, serde_json::to_string_pretty(&cluster)?)?;
    trust.nodes.push(TrustedNode { id, public_key: identity.public_key().to_base64() });
    std::fs::write(&trust_path, serde_json::to_string_pretty(&trust)?)?;
    Ok(Joined { id, grpc, http, config, public_key: identity.public_key().to_base64() })
}

/// `serve --dev`: a one-node cluster under `dir`, creating its key, token and trust file on
/// first start.
pub fn dev_config(dir: &Path, http: SocketAddr, grpc: SocketAddr) -> Result<NodeConfig> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key_file = dir.join("node.key");
    let trust_path = dir.join("trust.json");
    if !key_file.exists() {
        let id = Identity::generate()?;
        id.write(&key_file)?;
        let trust = TrustFile {
            nodes: vec![TrustedNode { id: 1, public_key: id.public_key().to_base64() }],
            origin: Some(format!("edgefabric/dev-{}", hex::encode(edgefabric_crypto::random_bytes::<8>()?))),
        };
        std::fs::write(&trust_path, serde_json::to_string_pretty(&trust)?)?;
    }
    let public_key = Identity::read(&key_file)?.public_key().to_base64();
    let origin = std::fs::read_to_string(&trust_path)
        .ok()
        .and_then(|t| serde_json::from_str::<TrustFile>(&t).ok())
        .and_then(|t| t.origin)
        .unwrap_or_else(|| DEFAULT_ORIGIN.into());
    let token_file = dir.join("admin.token");
    if !token_file.exists() {
        write_token(&token_file)?;
    }
    let cfg = NodeConfig {
        id: 1,
        site: "dev".into(),
        data_dir: dir.to_path_buf(),
        grpc,
        http,
        key_file,
        admin_token_file: token_file,
        joined: false,
        members: vec![Member { id: 1, site: "dev".into(), grpc, http, public_key: Some(public_key) }],
        cluster: ClusterSection::default(),
        raft: RaftSection::default(),
        limits: LimitsSection::default(),
        ledger: LedgerSection { origin, ..Default::default() },
        audit: AuditSection::default(),
        tsdb: TsdbSection::default(),
        // Plaintext on loopback, as Vault's dev server; `server::run` refuses other addresses.
        tls: TlsSection { enabled: false, ..Default::default() },
        dev: true,
        test: TestSection::default(),
    };
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table's keys, dotted, of a TOML document (arrays of tables by their first element).
    fn keys(v: &toml::Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    out.insert(name.clone());
                    keys(v, &name, out);
                }
            }
            toml::Value::Array(a) if a.first().is_some_and(toml::Value::is_table) => keys(&a[0], prefix, out),
            _ => {}
        }
    }

    #[test]
    fn the_example_config_is_valid_and_documents_every_field() {
        let cfg: NodeConfig = toml::from_str(EXAMPLE).unwrap();
        cfg.validate().unwrap();
        // Every field a full configuration has (the optional ones switched on so that they are
        // written) appears in the example, set or commented out with its default.
        let mut full = cfg.clone();
        full.joined = true;
        full.test.faults = true;
        let mut want = std::collections::BTreeSet::new();
        keys(&toml::Value::try_from(&full).unwrap(), "", &mut want);
        let mut have = std::collections::BTreeSet::new();
        keys(&toml::from_str::<toml::Value>(EXAMPLE).unwrap(), "", &mut have);
        let commented: Vec<&str> = EXAMPLE.lines().filter_map(|l| l.strip_prefix("# ")).collect();
        for k in want {
            let leaf = k.rsplit('.').next().unwrap();
            let documented = have.contains(&k)
                || commented.iter().any(|l| l.starts_with(&format!("{leaf} =")) || *l == format!("[{k}]"));
            assert!(documented, "`{k}` is not in config-example.toml");
        }
        // Defaults are what the example says they are.
        let d = |s: &str| {
            toml::from_str::<NodeConfig>(&format!("{}\n{s}", EXAMPLE.split("\n[cluster]").next().unwrap()))
        };
        let bare = d("").unwrap();
        assert_eq!(bare.cluster.initial_shards, cfg.cluster.initial_shards);
        assert_eq!(bare.raft.snapshot_logs, cfg.raft.snapshot_logs);
        assert_eq!(bare.limits.max_value_bytes, cfg.limits.max_value_bytes);
        assert_eq!(bare.tsdb.maintenance_interval_ms, cfg.tsdb.maintenance_interval_ms);
        assert_eq!(bare.audit.enabled, cfg.audit.enabled);
        // A typo is refused, naming the field.
        let err = d("[raft]\nheartbeat = 5").unwrap_err().to_string();
        assert!(err.contains("heartbeat"), "{err}");
    }

    #[test]
    fn cluster_init_writes_everything_per_contract() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("c");
        cluster_init(&InitSpec {
            nodes: 4,
            sites: vec!["a".into(), "b".into(), "c".into()],
            host: "127.0.0.1".into(),
            base_port: 9000,
            out: out.clone(),
        })
        .unwrap();
        let cluster: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("cluster.json")).unwrap()).unwrap();
        let nodes = cluster["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[0]["grpc"], "127.0.0.1:9000");
        assert_eq!(nodes[0]["http"], "127.0.0.1:9001");
        assert_eq!(nodes[3]["grpc"], "127.0.0.1:9006");
        assert_eq!(nodes[3]["http"], "127.0.0.1:9007");
        let sites: Vec<&str> = nodes.iter().map(|n| n["site"].as_str().unwrap()).collect();
        assert_eq!(sites, ["a", "b", "c", "a"]);
        let trust: TrustFile =
            serde_json::from_str(&std::fs::read_to_string(out.join("trust.json")).unwrap()).unwrap();
        assert_eq!(trust.nodes.len(), 4);
        for k in 1..=4 {
            let cfg = NodeConfig::load(&out.join(format!("node{k}.toml"))).unwrap();
            assert_eq!(cfg.id, k);
            assert_eq!(cfg.members.len(), 4);
            let key = Identity::read(&cfg.key_file).unwrap();
            let pinned = &trust.nodes[(k - 1) as usize];
            assert_eq!(key.public_key().to_base64(), pinned.public_key);
        }
        assert!(!read_token(&out.join("admin.token")).unwrap().is_empty());
        // A second init into the same directory must not overwrite keys.
        let again = cluster_init(&InitSpec {
            nodes: 1,
            sites: vec!["a".into()],
            host: "127.0.0.1".into(),
            base_port: 9000,
            out,
        });
        assert!(again.is_err());
    }

    #[test]
    fn join_writes_the_next_node_and_updates_cluster_and_trust_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("c");
        let spec = InitSpec {
            nodes: 3,
            sites: vec!["a".into(), "b".into(), "c".into()],
            host: "127.0.0.1".into(),
            base_port: 9000,
            out: out.clone(),
        };
        cluster_init(&spec).unwrap();
        assert!(prepare_join(&out, "", "127.0.0.1", 9100).is_err(), "an empty site is refused");
        assert!(prepare_join(&out, "a", "not-an-ip", 9100).is_err());
        let joined = prepare_join(&out, "a", "127.0.0.1", 9100).unwrap();
        assert_eq!((joined.id, joined.grpc.port(), joined.http.port()), (4, 9100, 9101));
        let cfg = NodeConfig::load(&joined.config).unwrap();
        assert_eq!((cfg.id, cfg.site.as_str(), cfg.members.len()), (4, "a", 4));
        let cluster: ClusterFile =
            serde_json::from_str(&std::fs::read_to_string(out.join("cluster.json")).unwrap()).unwrap();
        assert_eq!(cluster.nodes.iter().map(|n| n.id).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        let trust: TrustFile =
            serde_json::from_str(&std::fs::read_to_string(out.join("trust.json")).unwrap()).unwrap();
        let key = Identity::read(&cfg.key_file).unwrap();
        assert_eq!(
            trust.nodes.last().map(|n| (n.id, n.public_key.clone())),
            Some((4, key.public_key().to_base64()))
        );
        // The next join gets the next id.
        assert_eq!(prepare_join(&out, "b", "127.0.0.1", 9102).unwrap().id, 5);
    }

    #[test]
    fn bad_specs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spec = |nodes, sites: &[&str], host: &str, port| InitSpec {
            nodes,
            sites: sites.iter().map(|s| s.to_string()).collect(),
            host: host.into(),
            base_port: port,
            out: dir.path().join("x"),
        };
        assert!(cluster_init(&spec(0, &["a"], "127.0.0.1", 9000)).is_err());
        assert!(cluster_init(&spec(3, &[], "127.0.0.1", 9000)).is_err());
        assert!(cluster_init(&spec(3, &["a"], "127.0.0.1", 65534)).is_err());
        assert!(cluster_init(&spec(3, &["a"], "not-an-ip", 9000)).is_err());
    }

    #[test]
    fn config_rejects_unknown_fields_and_bad_timing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg =
            dev_config(dir.path(), "127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()).unwrap();
        let mut text = toml::to_string(&cfg).unwrap();
        let p = dir.path().join("n.toml");
        std::fs::write(&p, &text).unwrap();
        assert!(NodeConfig::load(&p).is_ok());
        text.push_str("\nbogus = 1\n");
        std::fs::write(&p, &text).unwrap();
        assert!(format!("{:#}", NodeConfig::load(&p).unwrap_err()).contains("bogus"));
        let mut bad = cfg.clone();
        bad.raft.election_timeout_min_ms = 50;
        assert!(bad.validate().is_err());
        let mut bad = cfg.clone();
        bad.cluster.split_keys = 99;
        assert!(format!("{:#}", bad.validate().unwrap_err()).contains("split_keys"));
        let mut bad = cfg.clone();
        bad.cluster.initial_shards = 0;
        assert!(bad.validate().is_err());
        let mut bad = cfg;
        bad.members.clear();
        assert!(bad.validate().is_err());
    }
}
