//! Commands that go through consensus and what applying them returns.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Key size limit (bytes). etcd's is 1.5 MiB for a request; ours is tighter for keys, which are
/// indexed and repeated in audit records.
pub const MAX_KEY_BYTES: usize = 4096;
/// Default value size limit; nodes may configure another.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
/// The namespace that exists from the start.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataClass {
    Public,
    Confidential,
    SiteLocal,
}

impl DataClass {
    pub fn as_str(&self) -> &'static str {
        match self {
            DataClass::Public => "public",
            DataClass::Confidential => "confidential",
            DataClass::SiteLocal => "site-local",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceConfig {
    pub name: String,
    pub class: DataClass,
    pub home_site: Option<String>,
    pub key_sites: Vec<String>,
    pub replicas: u32,
    /// Confidential namespaces: the data key's versions, each wrapped for every node of the key
    /// sites (never stored in the clear). Set once when the namespace is created; the state
    /// machine keeps the existing keys when a namespace is updated.
    #[serde(default)]
    pub keys: Vec<NamespaceKey>,
}

/// One version of a namespace's data key, wrapped for each node that may hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceKey {
    pub version: u32,
    /// node id → the data key wrapped for that node's key (`edgefabric_crypto::envelope`).
    pub wrapped: std::collections::BTreeMap<u64, Vec<u8>>,
}

/// The context a namespace's data key version is wrapped under: `ns ‖ 0 ‖ version (u32 BE)`.
pub fn key_context(ns: &str, version: u32) -> Vec<u8> {
    let mut c = ns.as_bytes().to_vec();
    c.push(0);
    c.extend_from_slice(&version.to_be_bytes());
    c
}

impl NamespaceConfig {
    pub fn default_namespace() -> Self {
        NamespaceConfig {
            name: DEFAULT_NAMESPACE.to_string(),
            class: DataClass::Public,
            home_site: None,
            key_sites: vec![],
            replicas: 3,
            keys: vec![],
        }
    }
}

/// One write inside a command. `cas`: `Some(0)` means "only if absent", `Some(r)` "only if the
/// key's current revision is r".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put { ns: String, key: String, value: Vec<u8>, cas: Option<u64> },
    Delete { ns: String, key: String, cas: Option<u64> },
}

impl Op {
    pub fn ns(&self) -> &str {
        match self {
            Op::Put { ns, .. } | Op::Delete { ns, .. } => ns,
        }
    }
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } => key,
        }
    }
    pub fn cas(&self) -> Option<u64> {
        match self {
            Op::Put { cas, .. } | Op::Delete { cas, .. } => *cas,
        }
    }
}

/// What is proposed to consensus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// All ops apply atomically at one revision, or none do (if any `cas` fails).
    Batch(Vec<Op>),
    PutNamespace(NamespaceConfig),
    /// Records that a node has replicated this group's log, and which incarnation of its data
    /// directory (`instance`, random, made with the directory) did. A node seen under another
    /// instance than its current one has lost acknowledged state ("amnesia") and must rejoin
    /// learner-first instead of voting (see `node.rs`).
    MarkSeen {
        node: u64,
        instance: u64,
    },
    /// Metadata group: install the first cluster map (ignored if one exists, so any node may
    /// propose it; all propose the same map, derived from the same configuration).
    InitCluster(crate::shard::ClusterMap),
    /// Metadata group: a node joins the map (idempotent for the same node).
    AddNode(crate::shard::NodeInfo),
    /// Metadata group: start draining a node.
    SetLeaving(u64),
    /// Metadata group: a shard's replicas, applied only if the map is still at `epoch`
    /// (compare-and-set, so a planner acting on a stale map changes nothing).
    SetReplicas {
        shard: u64,
        replicas: Vec<u64>,
        epoch: u64,
        moving: Option<crate::shard::Move>,
    },
    /// Metadata group: remove a drained node (it must hold no replicas).
    RemoveNode(u64),
    /// Forget that a node replicated this group (it was removed from it), so that if it is
    /// added again later it joins as a new replica, not as one that lost its data.
    ForgetSeen(u64),
    /// Data group: give up hashes `[at, end]` to a child shard; this group keeps
    /// `[start, at - 1]` and refuses keys outside it from then on. (The raft glue writes the
    /// child's starting snapshot before applying this.)
    Split {
        start: u64,
        at: u64,
        end: u64,
        child: u64,
    },
    /// Metadata group: record the split under way (compare-and-set on the epoch), or finish it
    /// (`done`: the map gains the child shard).
    SetSplit {
        split: crate::shard::Split,
        epoch: u64,
        done: bool,
    },
    /// Metadata group: a confidential namespace's next data key version (its number must be
    /// one more than the newest).
    AddNamespaceKey {
        ns: String,
        key: NamespaceKey,
    },
    /// Metadata group: a confidential namespace's key sites and the wrapped copies of its key
    /// versions (re-wrapped for the new set of nodes), applied only if its versions are still
    /// `expected_versions` (a rotation in between makes the wrapping stale).
    SetNamespaceKeys {
        ns: String,
        key_sites: Vec<String>,
        keys: Vec<NamespaceKey>,
        expected_versions: Vec<u32>,
    },
    /// Metadata group: revoke an access token by its id (`expires`: when it would have
    /// expired anyway, so the entry can be forgotten after).
    RevokeToken {
        id: String,
        expires: u64,
    },
    /// Metadata group: drop a key version nothing uses any more (never the newest).
    RetireNamespaceKey {
        ns: String,
        version: u32,
    },
    /// Ledger group: append this block. Every node validates it as it applies it and refuses
    /// (a `Rejected` response, logged as an error) one that breaks a rule.
    LedgerBlock(edgefabric_ledger::block::Block),
    /// Ledger group: entries for the leader's next block. Never proposed as such: the leader's
    /// block builder takes them, and answers with `Admitted`.
    LedgerSubmit(Vec<edgefabric_ledger::entry::Entry>),
    /// Time-series samples for the series of `shard` (an encoded `edgefabric_tsdb::batch::
    /// WriteBatch`: compressed, so one raft entry carries thousands of samples).
    TsWrite {
        shard: u64,
        batch: Vec<u8>,
    },
    /// Metadata group: how long a namespace keeps raw samples and rollups (ms).
    SetTsRetention {
        ns: String,
        raw_ms: u64,
        rollup_ms: u64,
    },
    /// A confidential namespace's samples for the series of `shard` (an encoded
    /// `edgefabric_tsdb::batch::SealedBatch`: labels and time bounds in clear, samples sealed
    /// by the accepting key-site node, so replicas and the raft log hold only ciphertext).
    TsWriteSealed {
        shard: u64,
        batch: Vec<u8>,
    },
    /// A key site's merge of sealed blocks of one series of `shard` (an encoded
    /// `edgefabric_tsdb::batch::SealedCompaction`): replicas swap the blocks for the merge.
    TsCompactSealed {
        shard: u64,
        batch: Vec<u8>,
    },
}

/// What became of one submitted ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Admission {
    /// Appended at this log index (committed and applied on the leader).
    Index(u64),
    /// Refused by a ledger rule.
    Refused(edgefabric_ledger::Invalid),
    /// Not appended for another reason (e.g. the block was not committed); may be retried.
    Failed(String),
}

/// The result of applying a command. Determinism contract: the outcome depends only on the
/// state machine's state and the command, so every replica computes the same one; a failed
/// precondition is a *result* here (recorded identically everywhere), never a storage error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Response {
    #[default]
    None,
    /// Applied at this revision (the raft log index of the command).
    Written { revision: u64, existed: Vec<bool> },
    /// A `cas` failed; nothing was written.
    Conflict { key: String, expected: u64, current: u64 },
    /// Namespace created (`created`: true) or updated.
    Namespace { created: bool },
    /// The command was malformed or refused (validated again on apply, deterministically).
    Rejected(String),
    /// The cluster map changed to this epoch.
    Map { epoch: u64 },
    /// A key of the batch is outside this shard's range (it was split): route again.
    WrongShard,
    /// A ledger block was appended: its height and the log's size after it.
    Block { height: u64, log_size: u64 },
    /// Per submitted ledger entry, in order.
    Admitted(Vec<Admission>),
    /// Time-series samples stored, and refused as older than the out-of-order window.
    TsWritten { written: u64, too_old: u64 },
}

/// A stored value with its revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub revision: u64,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanItem {
    pub key: String,
    pub revision: u64,
    pub value: Vec<u8>,
}

/// Namespace names: 1..=63 of `[a-z0-9_.-]`, starting with a letter or digit.
pub fn validate_namespace(ns: &str) -> Result<()> {
    let ok_first = ns.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest =
        ns.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'));
    if ns.is_empty() || ns.len() > 63 || !ok_first || !ok_rest {
        return Err(Error::invalid(
            "namespace",
            format!(
                "{ns:?} must be 1-63 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit"
            ),
        ));
    }
    Ok(())
}

pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("key", "must not be empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::invalid("key", format!("is {} bytes, the limit is {MAX_KEY_BYTES}", key.len())));
    }
    Ok(())
}

pub fn validate_value(value: &[u8], max: usize) -> Result<()> {
    if value.len() > max {
        return Err(Error::invalid("value", format!("is {} bytes, the limit is {max}", value.len())));
    }
    Ok(())
}

/// Validates a whole command as the API edge and the state machine both see it.
/// The largest encoded time-series batch one raft entry may carry (compressed: ~1-2 bytes per
/// sample, so millions of samples). Ingest splits bigger requests.
pub const MAX_TS_BATCH_BYTES: usize = 8 << 20;

/// The most operations one atomic batch may carry. The API edge checks it before it builds
/// one audit target per operation, so a request's audit cost is bounded too.
pub const MAX_BATCH_OPS: usize = 1024;

pub fn validate_command(cmd: &Command, max_value: usize) -> Result<()> {
    match cmd {
        Command::Batch(ops) => {
            if ops.is_empty() {
                return Err(Error::invalid("ops", "a batch needs at least one operation"));
            }
            if ops.len() > MAX_BATCH_OPS {
                return Err(Error::invalid(
                    "ops",
                    format!("{} operations, the limit is {MAX_BATCH_OPS}", ops.len()),
                ));
            }
            for op in ops {
                validate_namespace(op.ns())?;
                validate_key(op.key())?;
                if let Op::Put { value, .. } = op {
                    validate_value(value, max_value)?;
                }
            }
            Ok(())
        }
        Command::PutNamespace(cfg) => validate_namespace_config(cfg),
        Command::SetNamespaceKeys { ns, key_sites, keys, .. } => {
            validate_namespace(ns)?;
            if key_sites.is_empty() || key_sites.iter().any(|s| s.is_empty()) {
                return Err(Error::invalid("key_sites", "must name at least one site"));
            }
            if keys.is_empty() {
                return Err(Error::invalid("keys", "at least one key version"));
            }
            Ok(())
        }
        Command::RetireNamespaceKey { ns, .. } => validate_namespace(ns),
        Command::RevokeToken { id, .. } => {
            if id.is_empty() || id.len() > 128 {
                return Err(Error::invalid("id", "a token id is 1 to 128 characters"));
            }
            Ok(())
        }
        Command::AddNamespaceKey { ns, key } => {
            validate_namespace(ns)?;
            if key.wrapped.is_empty() {
                return Err(Error::invalid("key", "must be wrapped for at least one node"));
            }
            Ok(())
        }
        Command::LedgerSubmit(entries) => {
            let max = edgefabric_ledger::block::MAX_BLOCK_ENTRIES;
            if entries.is_empty() || entries.len() > max {
                return Err(Error::invalid("entries", format!("submit between 1 and {max} entries")));
            }
            for e in entries {
                e.validate_fields().map_err(|e| Error::invalid("entry", e.to_string()))?;
            }
            Ok(())
        }
        Command::LedgerBlock(b) if b.entries.len() > edgefabric_ledger::block::MAX_BLOCK_ENTRIES => {
            Err(Error::invalid("block", "too many entries"))
        }
        Command::MarkSeen { .. } => Ok(()),
        Command::SetTsRetention { ns, raw_ms, rollup_ms } => {
            validate_namespace(ns)?;
            // Raw samples are never deleted before they are rolled up (once older than the
            // out-of-order window), whatever the setting; below an hour it means nothing.
            if *raw_ms < 3_600_000 {
                return Err(Error::invalid("raw", "must be at least 1h"));
            }
            if rollup_ms < raw_ms {
                return Err(Error::invalid("rollups", "must be at least as long as raw"));
            }
            Ok(())
        }
        Command::TsWrite { batch, .. }
        | Command::TsWriteSealed { batch, .. }
        | Command::TsCompactSealed { batch, .. }
            if batch.is_empty() || batch.len() > MAX_TS_BATCH_BYTES =>
        {
            Err(Error::invalid(
                "batch",
                format!(
                    "{} bytes encoded; a time-series batch is 1 byte to {MAX_TS_BATCH_BYTES}",
                    batch.len()
                ),
            ))
        }
        Command::InitCluster(map) => map.validate().map_err(|e| Error::invalid("cluster map", e)),
        Command::AddNode(n) => {
            if n.id == 0 || n.site.is_empty() || n.addr.is_empty() {
                return Err(Error::invalid("node", "needs an id >= 1, a site and an address"));
            }
            Ok(())
        }
        Command::SetReplicas { replicas, .. } if replicas.is_empty() => {
            Err(Error::invalid("replicas", "a shard needs at least one replica"))
        }
        Command::Split { start, at, end, .. } if !(start < at && at <= end) => {
            Err(Error::invalid("split", "needs start < at <= end"))
        }
        Command::SetLeaving(_)
        | Command::SetReplicas { .. }
        | Command::RemoveNode(_)
        | Command::ForgetSeen(_)
        | Command::Split { .. }
        | Command::SetSplit { .. }
        | Command::TsWrite { .. }
        | Command::TsWriteSealed { .. }
        | Command::TsCompactSealed { .. }
        | Command::LedgerBlock(_) => Ok(()),
    }
}

pub fn validate_namespace_config(cfg: &NamespaceConfig) -> Result<()> {
    validate_namespace(&cfg.name)?;
    if cfg.replicas == 0 || cfg.replicas > 7 {
        return Err(Error::invalid("replicas", format!("{} must be between 1 and 7", cfg.replicas)));
    }
    match cfg.class {
        DataClass::SiteLocal if cfg.home_site.as_deref().is_none_or(str::is_empty) => {
            Err(Error::invalid("home_site", "is required for class site-local"))
        }
        DataClass::Confidential if cfg.key_sites.is_empty() => {
            Err(Error::invalid("key_sites", "must name at least one site for class confidential"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names() {
        assert!(validate_namespace("default").is_ok());
        assert!(validate_namespace("a.b_c-9").is_ok());
        for bad in ["", "A", "-x", "a b", "ä", &"x".repeat(64)] {
            assert!(validate_namespace(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn key_limits() {
        assert!(validate_key("k").is_ok());
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(matches!(validate_key(""), Err(Error::InvalidInput { field, .. }) if field == "key"));
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
    }

    #[test]
    fn namespace_config_rules() {
        let mut cfg = NamespaceConfig::default_namespace();
        assert!(validate_namespace_config(&cfg).is_ok());
        cfg.class = DataClass::SiteLocal;
        assert!(validate_namespace_config(&cfg).is_err());
        cfg.home_site = Some("a".into());
        assert!(validate_namespace_config(&cfg).is_ok());
        cfg.replicas = 0;
        assert!(validate_namespace_config(&cfg).is_err());
    }
}
