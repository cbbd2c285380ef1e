//! The KV state machine: plain synchronous code over one sled tree, driven by the raft glue
//! in `raft_store.rs` and tested directly here.
//!
//! Layout (one tree, so that one `sled::Batch` makes an apply atomic):
//! - `k` ‖ len(ns) as u8 ‖ ns ‖ key → `Record { revision, value }`
//! - `n` ‖ ns → `NamespaceConfig`
//! - `m` ‖ "raft" → the raft glue's opaque state (last applied log id, membership)
//!
//! Durability contract: this store is *derived* state. It is not fsynced on apply; the raft log
//! and the snapshot file are the truth, and on start the glue re-imports the snapshot if sled is
//! behind it and re-applies committed log entries after that. So sled only has to be
//! crash-*consistent* (each apply call's batch is atomic), not durable.
//!
//! Determinism contract: `apply` computes each command's `Response` from the current state and
//! the command only. The revision of a write is the raft log index of its command, so all
//! replicas assign the same revisions.

use std::collections::HashMap;

use crate::codec;
use crate::error::{Error, Result};
use crate::types::{
    validate_command, Command, NamespaceConfig, Op, Record, Response, ScanItem, DEFAULT_NAMESPACE,
};

const META_KEY: &[u8] = b"mraft";
const CLUSTER_KEY: &[u8] = b"cmap";
/// Number of data keys (for split decisions); kept by apply.
const KEYS_KEY: &[u8] = b"mkeys";
/// The hash range this group owns, once it has been split; absent: what the map says.
const RANGE_KEY: &[u8] = b"mrange";
/// Key prefix of the time-series engine's keys (no other key of the tree starts with `T`).
const TS_PREFIX: &[u8] = b"T";

/// (ns, key) of a data key, if it is one.
fn parse_data_key(k: &[u8]) -> Option<(&str, &str)> {
    if k.first() != Some(&b'k') {
        return None;
    }
    let n = *k.get(1)? as usize;
    let ns = std::str::from_utf8(k.get(2..2 + n)?).ok()?;
    let key = std::str::from_utf8(k.get(2 + n..)?).ok()?;
    Some((ns, key))
}

/// A full image of the store: every (key, value) of the tree, in key order, then the time-series
/// engine's entries under `TS_PREFIX`.
pub type Image = Vec<(Vec<u8>, Vec<u8>)>;

pub struct KvStore {
    tree: sled::Tree,
    /// Time series of this group: their own files in the group's directory (`ts/`), carried
    /// in snapshot images under `TS_PREFIX`.
    ts: std::sync::Arc<edgefabric_tsdb::engine::Engine>,
    /// The decoded cluster map (metadata group), read on every request's routing. Outer
    /// `None`: not loaded yet. Loaded and replaced only under the write lock, so a lazy load
    /// can never store a map older than one an apply has installed.
    map_cache: std::sync::RwLock<Option<Option<std::sync::Arc<crate::shard::ClusterMap>>>>,
    /// Limit re-checked on apply; must be the same on every node (it is part of the
    /// determinism contract), so it is fixed here, not taken from node config.
    max_apply_value: usize,
    /// Set on the ledger group's store: it applies `LedgerBlock` commands.
    ledger: Option<std::sync::Arc<LedgerCtx>>,
    /// Held for writing while an apply writes its keys one by one, and for reading by client
    /// reads (`get`, `scan`): a reader sees each apply whole or not at all.
    applying: std::sync::RwLock<()>,
    /// Set (under `applying`) once the node stops this group: no write after it, so what sled
    /// flushes at the stop holds whole applies only.
    closed: std::sync::atomic::AtomicBool,
    /// An apply or import failed part-way: the tree may hold part of it until it is rebuilt.
    dirty: std::sync::atomic::AtomicBool,
    /// `temporary()`'s directory, removed with the store.
    #[cfg(test)]
    _tmp: Option<tempfile::TempDir>,
}

/// What the ledger group's state machine needs beyond its state.
pub struct LedgerCtx {
    /// The founding members' entries this node's configuration lists (block 0 must equal
    /// them), or `None` if its configuration does not carry every founder's key.
    pub genesis: Option<Vec<edgefabric_ledger::entry::Entry>>,
    /// Hashes of blocks this node built (and so already checked strictly, signatures and
    /// all): applying them skips the second signature check. Entries are removed on apply.
    built: std::sync::Mutex<std::collections::HashSet<edgefabric_ledger::Hash>>,
    /// Blocks refused on apply (they broke a rule), for /metrics.
    pub rejected: std::sync::atomic::AtomicU64,
}

impl LedgerCtx {
    pub fn new(genesis: Option<Vec<edgefabric_ledger::entry::Entry>>) -> Self {
        LedgerCtx { genesis, built: Default::default(), rejected: Default::default() }
    }

    /// Records that this node built (and validated) the block with this header hash.
    pub fn built(&self, hash: edgefabric_ledger::Hash) {
        let mut b = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() > 1024 {
            b.clear(); // Never applied (lost leadership): forget, they only cost a re-check.
        }
        b.insert(hash);
    }

    fn take_built(&self, hash: &edgefabric_ledger::Hash) -> bool {
        self.built.lock().unwrap_or_else(|p| p.into_inner()).remove(hash)
    }
}

/// The ledger's view of the state during an apply: the tree under this apply's earlier writes.
struct OverlayView<'a> {
    kv: &'a KvStore,
    overlay: &'a HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl edgefabric_ledger::chain::Store for OverlayView<'_> {
    fn get(&self, key: &[u8]) -> edgefabric_ledger::Result<Option<Vec<u8>>> {
        self.kv.read(key, self.overlay).map_err(|e| edgefabric_ledger::LedgerError::Storage(e.to_string()))
    }
}

fn ts_err(e: edgefabric_tsdb::Error) -> Error {
    Error::Storage(format!("time series: {e}"))
}

pub(crate) fn data_key(ns: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + ns.len() + key.len());
    k.push(b'k');
    k.push(ns.len() as u8);
    k.extend_from_slice(ns.as_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

fn revoked_key(id: &str) -> Vec<u8> {
    let mut k = vec![b't'];
    k.extend_from_slice(id.as_bytes());
    k
}

fn seen_key(node: u64) -> Vec<u8> {
    let mut k = vec![b's'];
    k.extend_from_slice(&node.to_be_bytes());
    k
}

/// Metadata group: a namespace's time-series retention, `(raw_ms, rollup_ms)`.
fn retention_key(ns: &str) -> Vec<u8> {
    let mut k = vec![b'R'];
    k.extend_from_slice(ns.as_bytes());
    k
}

fn ns_key(ns: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + ns.len());
    k.push(b'n');
    k.extend_from_slice(ns.as_bytes());
    k
}

/// The largest value any node will accept on apply. Nodes may configure a smaller limit at
/// the API edge; this one only guards the state machine.
pub const APPLY_MAX_VALUE_BYTES: usize = 16 << 20;

impl KvStore {
    /// Opens the store of one raft group: a tree of the node's sled database (one database
    /// per node, so many groups share its cache and flusher), and the group's time series in
    /// `dir/ts`.
    pub fn open(db: &sled::Db, group: u64, dir: &std::path::Path) -> Result<Self> {
        let tree = db.open_tree(format!("group-{group}"))?;
        let ts =
            edgefabric_tsdb::engine::Engine::open(&dir.join("ts"), Default::default()).map_err(ts_err)?;
        // Time series written by an earlier version lived in the tree under `TS_PREFIX`: move
        // them into the engine's files (the engine first, so a crash in between repeats the
        // move from the same keys).
        let old: Image = tree
            .scan_prefix(TS_PREFIX)
            .map(|kv| kv.map(|(k, v)| (k[TS_PREFIX.len()..].to_vec(), v.to_vec())))
            .collect::<std::result::Result<_, _>>()?;
        if !old.is_empty() {
            tracing::info!(group, entries = old.len(), "moving time series out of sled into their own files");
            ts.import(old).map_err(ts_err)?;
            let mut b = sled::Batch::default();
            for k in tree.scan_prefix(TS_PREFIX).keys() {
                b.remove(k?);
            }
            tree.apply_batch(b)?;
            tree.flush()?;
        }
        Ok(KvStore {
            tree,
            ts: std::sync::Arc::new(ts),
            map_cache: std::sync::RwLock::new(None),
            max_apply_value: APPLY_MAX_VALUE_BYTES,
            ledger: None,
            applying: std::sync::RwLock::new(()),
            closed: Default::default(),
            dirty: Default::default(),
            #[cfg(test)]
            _tmp: None,
        })
    }

    /// Makes this the ledger group's store.
    pub fn with_ledger(mut self, ctx: std::sync::Arc<LedgerCtx>) -> Self {
        self.ledger = Some(ctx);
        self
    }

    pub fn ledger_ctx(&self) -> Option<&std::sync::Arc<LedgerCtx>> {
        self.ledger.as_ref()
    }

    /// The group's time-series engine.
    pub fn ts(&self) -> &std::sync::Arc<edgefabric_tsdb::engine::Engine> {
        &self.ts
    }

    /// The sled tree, for the ledger's readers (proofs, lookups, verification).
    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// A throwaway store, for tests.
    #[cfg(test)]
    pub fn temporary() -> Result<Self> {
        let db = sled::Config::new().temporary(true).open()?;
        let tmp = tempfile::tempdir()?;
        let mut kv = Self::open(&db, 1, tmp.path())?;
        kv._tmp = Some(tmp);
        Ok(kv)
    }

    /// Data keys in this group.
    pub fn key_count(&self) -> Result<u64> {
        Ok(self.tree.get(KEYS_KEY)?.map(|v| codec::decode(&v)).transpose()?.unwrap_or(0))
    }

    /// The hash range this group owns since its last split, if it was split.
    pub fn range(&self) -> Result<Option<(u64, u64)>> {
        self.tree.get(RANGE_KEY)?.map(|v| codec::decode(&v)).transpose()
    }

    /// Whether a key of this hash belongs here, given the range the caller's map gives the
    /// shard: both the map and this group's own record (after a split) must agree.
    pub fn owns(&self, hash: u64, map_range: (u64, u64)) -> Result<bool> {
        let own = self.range()?.unwrap_or(map_range);
        Ok(own == map_range && (own.0..=own.1).contains(&hash))
    }

    /// What a child shard starts from when this group splits at `at`: its data keys with
    /// hashes in `[at, end]`, its key count and range.
    pub fn split_image(&self, at: u64, end: u64) -> Result<Image> {
        let mut out = vec![];
        for kv in self.tree.scan_prefix(b"k") {
            let (k, v) = kv?;
            if let Some((ns, key)) = parse_data_key(&k) {
                let h = crate::shard::key_hash(ns, key);
                if (at..=end).contains(&h) {
                    out.push((k.to_vec(), v.to_vec()));
                }
            }
        }
        out.push((KEYS_KEY.to_vec(), codec::encode(&(out.len() as u64))?));
        out.push((RANGE_KEY.to_vec(), codec::encode(&(at, end))?));
        Ok(out)
    }

    /// The cluster map (metadata group only), decoded once per change.
    pub fn cluster_map(&self) -> Result<Option<std::sync::Arc<crate::shard::ClusterMap>>> {
        if let Some(cached) = &*self.map_cache.read().unwrap_or_else(|p| p.into_inner()) {
            return Ok(cached.clone());
        }
        let mut cache = self.map_cache.write().unwrap_or_else(|p| p.into_inner());
        if cache.is_none() {
            let loaded = match self.tree.get(CLUSTER_KEY)? {
                Some(bytes) => Some(std::sync::Arc::new(codec::decode(&bytes)?)),
                None => None,
            };
            *cache = Some(loaded);
        }
        Ok(cache.clone().flatten())
    }

    /// The raft glue's opaque state saved by the last apply or import.
    pub fn raft_meta(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(META_KEY)?.map(|v| v.to_vec()))
    }

    /// Applies commands in log order, then records `raft_meta`. `cmds` holds `(log index,
    /// command)`; `None` is a raft-internal entry (blank, membership) that only advances
    /// `raft_meta`. Returns one response per element.
    ///
    /// Atomic for readers (`applying`), not on disk: the keys are written one by one, and a
    /// crash can leave part of an apply. sled 0.34 makes a batch crash-atomic by sealing and
    /// writing its log buffer twice per batch, on its I/O threads, which cost a quarter of a
    /// node's CPU under load. The node instead trusts this tree after a crash only through
    /// the clean-stop marker (`node.rs`, `SM_CLEAN`): after any other stop each group's tree
    /// is rebuilt from its snapshot and log, which always hold the whole state
    /// (`raft_store.rs`).
    pub fn apply(&self, cmds: &[(u64, Option<&Command>)], raft_meta: &[u8]) -> Result<Vec<Response>> {
        // Writes of earlier commands in this call, so later ones read their own writes.
        let mut overlay: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        let mut out = Vec::with_capacity(cmds.len());
        for (index, cmd) in cmds {
            let resp = match cmd {
                None => Response::None,
                Some(cmd) => self.apply_one(*index, cmd, &mut overlay)?,
            };
            out.push(resp);
        }
        let new_map = match overlay.get(CLUSTER_KEY) {
            Some(Some(bytes)) => Some(std::sync::Arc::new(codec::decode(bytes)?)),
            _ => None,
        };
        {
            let _whole = self.write_guard()?;
            // Keys that point at others (the ledger's head, the key count, the range, the raft
            // meta) after everything else, in a fixed order, the raft meta last: a reader that
            // does not take the guard (the ledger's) and a crash both see pointers only to
            // what is already written.
            let mut writes: Vec<_> = overlay.into_iter().collect();
            writes.sort_by_key(|(k, _)| POINTER_KEYS.iter().position(|p| *p == k.as_slice()));
            let written = writes
                .into_iter()
                .chain(std::iter::once((META_KEY.to_vec(), Some(raft_meta.to_vec()))))
                .try_for_each(|(k, v)| {
                    match v {
                        Some(v) => self.tree.insert(k, v)?,
                        None => self.tree.remove(k)?,
                    };
                    Ok::<_, sled::Error>(())
                });
            if let Err(e) = written {
                self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
                return Err(e.into());
            }
        }
        if let Some(map) = new_map {
            *self.map_cache.write().unwrap_or_else(|p| p.into_inner()) = Some(Some(map));
        }
        Ok(out)
    }

    /// Validates and appends a ledger block. An invalid block is refused identically on every
    /// node (the rules are deterministic) and logged as an error: it means a faulty or hostile
    /// proposer, or (if only this node refuses) a damaged local chain.
    fn apply_ledger_block(
        &self,
        block: &edgefabric_ledger::block::Block,
        overlay: &mut HashMap<Vec<u8>, Option<Vec<u8>>>,
    ) -> Result<Response> {
        use edgefabric_ledger::chain::{self, Signatures};
        let Some(ctx) = &self.ledger else {
            return Ok(Response::Rejected("this group does not hold the ledger".into()));
        };
        let hash = block.header.hash().map_err(|e| Error::Internal(e.to_string()))?;
        let sigs = if ctx.take_built(&hash) { Signatures::Skip } else { Signatures::Batch };
        let view = OverlayView { kv: self, overlay };
        match chain::apply_block(&view, block, ctx.genesis.as_deref(), sigs) {
            Ok((writes, head)) => {
                overlay.extend(writes);
                Ok(Response::Block { height: head.height, log_size: head.log_size })
            }
            Err(e @ edgefabric_ledger::LedgerError::InvalidBlock { .. }) => {
                ctx.rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(height = block.header.height, proposer = block.header.proposer, error = %e, "REFUSED an invalid ledger block");
                Ok(Response::Rejected(e.to_string()))
            }
            Err(e) => Err(Error::Storage(format!("ledger: {e}"))),
        }
    }

    /// Changes a confidential namespace's key configuration with `f` (an `Err` is the refusal's
    /// reason, recorded as `Rejected` on every replica).
    fn update_namespace(
        &self,
        overlay: &mut HashMap<Vec<u8>, Option<Vec<u8>>>,
        ns: &str,
        f: impl FnOnce(&mut NamespaceConfig) -> std::result::Result<(), String>,
    ) -> Result<Response> {
        let k = ns_key(ns);
        let Some(mut cfg) =
            self.read(&k, overlay)?.map(|b| codec::decode::<NamespaceConfig>(&b)).transpose()?
        else {
            return Ok(Response::Rejected(format!("namespace {ns:?} does not exist")));
        };
        if cfg.class != crate::types::DataClass::Confidential {
            return Ok(Response::Rejected(format!("namespace {ns:?} is not confidential")));
        }
        if let Err(why) = f(&mut cfg) {
            return Ok(Response::Rejected(format!("namespace {ns:?}: {why}")));
        }
        overlay.insert(k, Some(codec::encode(&cfg)?));
        Ok(Response::Namespace { created: false })
    }

    fn read(&self, key: &[u8], overlay: &HashMap<Vec<u8>, Option<Vec<u8>>>) -> Result<Option<Vec<u8>>> {
        if let Some(v) = overlay.get(key) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    fn count(&self, overlay: &HashMap<Vec<u8>, Option<Vec<u8>>>) -> Result<u64> {
        Ok(self.read(KEYS_KEY, overlay)?.map(|v| codec::decode(&v)).transpose()?.unwrap_or(0))
    }

    fn apply_one(
        &self,
        index: u64,
        cmd: &Command,
        overlay: &mut HashMap<Vec<u8>, Option<Vec<u8>>>,
    ) -> Result<Response> {
        // Re-validated here so that a malformed command that slipped past an edge is rejected
        // identically on every replica instead of corrupting state.
        if let Err(e) = validate_command(cmd, self.max_apply_value) {
            return Ok(Response::Rejected(e.to_string()));
        }
        match cmd {
            Command::InitCluster(map) => {
                if self.read(CLUSTER_KEY, overlay)?.is_none() {
                    overlay.insert(CLUSTER_KEY.to_vec(), Some(codec::encode(map)?));
                }
                Ok(Response::None)
            }
            Command::AddNode(info) => self.update_map(overlay, |map| match map.nodes.get(&info.id) {
                Some(existing) if existing == info => Ok(()),
                Some(_) => Err(format!("node {} already exists with another address or site", info.id)),
                None => {
                    map.nodes.insert(info.id, info.clone());
                    Ok(())
                }
            }),
            Command::SetLeaving(node) => self.update_map(overlay, |map| {
                if !map.nodes.contains_key(node) {
                    return Err(format!("node {node} is not a member"));
                }
                if map.nodes.len() - map.leaving.len() <= 1 && !map.leaving.contains(node) {
                    return Err("the last active node cannot leave".into());
                }
                map.leaving.insert(*node);
                Ok(())
            }),
            Command::SetReplicas { shard, replicas, epoch, moving } => self.update_map(overlay, |map| {
                if map.epoch != *epoch {
                    return Err(format!("stale map epoch {epoch}, current {}", map.epoch));
                }
                let pinned = map.pinned_site(*shard).map(str::to_string);
                if let Some(site) = &pinned {
                    if replicas.iter().any(|r| map.nodes.get(r).is_some_and(|n| n.site != *site)) {
                        return Err(format!("shard {shard} is pinned to site {site:?}"));
                    }
                }
                let s = map.shard_mut(*shard).ok_or(format!("no shard {shard}"))?;
                s.replicas = replicas.clone();
                map.moving = *moving;
                Ok(())
            }),
            Command::RemoveNode(node) => self.update_map(overlay, |map| {
                if map.all_shards().any(|s| s.replicas.contains(node)) {
                    return Err(format!("node {node} still holds replicas"));
                }
                map.nodes.remove(node);
                map.leaving.remove(node);
                Ok(())
            }),
            Command::Split { start, at, end, .. } => {
                if self
                    .read(RANGE_KEY, overlay)?
                    .is_some_and(|r| codec::decode::<(u64, u64)>(&r).is_ok_and(|(_, e)| e < *at))
                {
                    return Ok(Response::None); // applied already
                }
                let mut moved = 0u64;
                for kv in self.tree.scan_prefix(b"k") {
                    let (k, _) = kv?;
                    if let Some((ns, key)) = parse_data_key(&k) {
                        if (*at..=*end).contains(&crate::shard::key_hash(ns, key)) {
                            overlay.insert(k.to_vec(), None);
                            moved += 1;
                        }
                    }
                }
                let keys = self.count(overlay)?.saturating_sub(moved);
                overlay.insert(KEYS_KEY.to_vec(), Some(codec::encode(&keys)?));
                overlay.insert(RANGE_KEY.to_vec(), Some(codec::encode(&(*start, *at - 1))?));
                Ok(Response::None)
            }
            Command::SetSplit { split, epoch, done } => self.update_map(overlay, |map| {
                if *done {
                    map.apply_split(split)?;
                    map.splitting = None;
                    return Ok(());
                }
                if map.epoch != *epoch {
                    return Err(format!("stale map epoch {epoch}, current {}", map.epoch));
                }
                map.splitting = Some(*split);
                Ok(())
            }),
            Command::ForgetSeen(node) => {
                overlay.insert(seen_key(*node), None);
                Ok(Response::None)
            }
            Command::LedgerBlock(block) => self.apply_ledger_block(block, overlay),
            Command::RevokeToken { id, expires } => {
                overlay.insert(revoked_key(id), Some(expires.to_be_bytes().to_vec()));
                Ok(Response::None)
            }
            Command::SetNamespaceKeys { ns, key_sites, keys, expected_versions } => {
                self.update_namespace(overlay, ns, |cfg| {
                    let versions: Vec<u32> = cfg.keys.iter().map(|k| k.version).collect();
                    let given: Vec<u32> = keys.iter().map(|k| k.version).collect();
                    if versions != *expected_versions || given != versions {
                        return Err(format!("its key versions changed meanwhile (now {versions:?}); retry"));
                    }
                    cfg.key_sites = key_sites.clone();
                    cfg.keys = keys.clone();
                    Ok(())
                })
            }
            Command::RetireNamespaceKey { ns, version } => self.update_namespace(overlay, ns, |cfg| {
                let newest = cfg.keys.iter().map(|k| k.version).max().unwrap_or(0);
                if *version == newest || !cfg.keys.iter().any(|k| k.version == *version) {
                    return Err(format!("version {version} is the newest or does not exist"));
                }
                cfg.keys.retain(|k| k.version != *version);
                Ok(())
            }),
            Command::AddNamespaceKey { ns, key } => self.update_namespace(overlay, ns, |cfg| {
                let newest = cfg.keys.iter().map(|k| k.version).max().unwrap_or(0);
                if key.version != newest + 1 {
                    return Err(format!("key version {} does not follow {newest}", key.version));
                }
                cfg.keys.push(key.clone());
                Ok(())
            }),
            Command::LedgerSubmit(_) => Ok(Response::Rejected("ledger submissions are not proposed".into())),
            Command::SetTsRetention { ns, raw_ms, rollup_ms } => {
                if self.read(&ns_key(ns), overlay)?.is_none() && ns != DEFAULT_NAMESPACE {
                    return Ok(Response::Rejected(format!("namespace {ns:?} does not exist")));
                }
                overlay.insert(retention_key(ns), Some(codec::encode(&(*raw_ms, *rollup_ms))?));
                Ok(Response::Namespace { created: false })
            }
            Command::TsCompactSealed { batch, .. } => {
                match edgefabric_tsdb::batch::SealedCompaction::decode(batch) {
                    Err(e) => Ok(Response::Rejected(format!("sealed time-series compaction: {e}"))),
                    Ok(c) => {
                        let o = self.ts.apply_compaction(index, &c).map_err(ts_err)?;
                        Ok(Response::TsWritten { written: o.written as u64, too_old: 0 })
                    }
                }
            }
            Command::TsWriteSealed { batch, .. } => {
                match edgefabric_tsdb::batch::SealedBatch::decode(batch) {
                    Err(e) => Ok(Response::Rejected(format!("sealed time-series batch: {e}"))),
                    Ok(b) => {
                        let o = self.ts.apply_sealed(index, &b).map_err(ts_err)?;
                        Ok(Response::TsWritten { written: o.written as u64, too_old: o.too_old as u64 })
                    }
                }
            }
            Command::TsWrite { batch, .. } => match edgefabric_tsdb::batch::WriteBatch::decode(batch) {
                // Decoding is deterministic: every replica refuses the same batch.
                Err(e) => Ok(Response::Rejected(format!("time-series batch: {e}"))),
                Ok(b) => {
                    let o = self.ts.apply_encoded(index, &b, batch).map_err(ts_err)?;
                    Ok(Response::TsWritten { written: o.written as u64, too_old: o.too_old as u64 })
                }
            },
            Command::MarkSeen { node, instance } => {
                overlay.insert(seen_key(*node), Some(instance.to_be_bytes().to_vec()));
                Ok(Response::None)
            }
            Command::PutNamespace(cfg) => {
                let k = ns_key(&cfg.name);
                let existing: Option<NamespaceConfig> =
                    self.read(&k, overlay)?.map(|b| codec::decode(&b)).transpose()?;
                let mut cfg = cfg.clone();
                if let Some(old) = &existing {
                    // A namespace's class never changes (a public namespace made confidential
                    // would still hold plaintext), and its data keys, once set, are kept: a
                    // second creation racing the first must not replace the key values were
                    // sealed with.
                    if old.class != cfg.class {
                        return Ok(Response::Rejected(format!(
                            "namespace {:?} is {}; its class cannot change",
                            cfg.name,
                            old.class.as_str()
                        )));
                    }
                    if !old.keys.is_empty() {
                        cfg.keys = old.keys.clone();
                    }
                    if old.home_site != cfg.home_site {
                        return Ok(Response::Rejected(format!(
                            "namespace {:?}: its home site cannot change",
                            cfg.name
                        )));
                    }
                }
                // A new site-local namespace gets its own shard, pinned to its home site, in
                // the same apply: no write can ever reach a shared shard.
                if existing.is_none() && cfg.class == crate::types::DataClass::SiteLocal {
                    let site = cfg.home_site.clone().unwrap_or_default();
                    let Some(bytes) = self.read(CLUSTER_KEY, overlay)? else {
                        return Ok(Response::Rejected("the cluster map is not installed yet".into()));
                    };
                    let mut map: crate::shard::ClusterMap = codec::decode(&bytes)?;
                    if let Err(e) = map.pin_namespace(&cfg.name, &site, cfg.replicas as usize) {
                        return Ok(Response::Rejected(e));
                    }
                    overlay.insert(CLUSTER_KEY.to_vec(), Some(codec::encode(&map)?));
                }
                overlay.insert(k, Some(codec::encode(&cfg)?));
                Ok(Response::Namespace { created: existing.is_none() })
            }
            Command::Batch(ops) => {
                // Check every precondition first: the batch is all or nothing. (Namespaces live
                // in the metadata group; the node checks them before proposing.)
                if let Some(r) = self.read(RANGE_KEY, overlay)? {
                    let (start, end) = codec::decode::<(u64, u64)>(&r)?;
                    if ops
                        .iter()
                        .any(|op| !(start..=end).contains(&crate::shard::key_hash(op.ns(), op.key())))
                    {
                        return Ok(Response::WrongShard);
                    }
                }
                let mut existed = Vec::with_capacity(ops.len());
                for op in ops {
                    let current = match self.read(&data_key(op.ns(), op.key()), overlay)? {
                        Some(bytes) => Some(codec::decode::<Record>(&bytes)?.revision),
                        None => None,
                    };
                    existed.push(current.is_some());
                    if let Some(expected) = op.cas() {
                        let current = current.unwrap_or(0);
                        if current != expected {
                            return Ok(Response::Conflict { key: op.key().to_string(), expected, current });
                        }
                    }
                }
                let mut keys = self.count(overlay)? as i64;
                for op in ops {
                    let k = data_key(op.ns(), op.key());
                    let exists = self.read(&k, overlay)?.is_some();
                    match op {
                        Op::Put { value, .. } => {
                            keys += (!exists) as i64;
                            let rec = Record { revision: index, value: value.clone() };
                            overlay.insert(k, Some(codec::encode(&rec)?));
                        }
                        Op::Delete { .. } => {
                            keys -= exists as i64;
                            overlay.insert(k, None);
                        }
                    }
                }
                overlay.insert(KEYS_KEY.to_vec(), Some(codec::encode(&(keys.max(0) as u64))?));
                Ok(Response::Written { revision: index, existed })
            }
        }
    }

    /// Changes the cluster map through `f`; the result must still be a valid map. The epoch is
    /// bumped on every change. A refusal is a deterministic `Rejected`, the map unchanged.
    fn update_map(
        &self,
        overlay: &mut HashMap<Vec<u8>, Option<Vec<u8>>>,
        f: impl FnOnce(&mut crate::shard::ClusterMap) -> std::result::Result<(), String>,
    ) -> Result<Response> {
        let Some(bytes) = self.read(CLUSTER_KEY, overlay)? else {
            return Ok(Response::Rejected("the cluster map is not initialized".into()));
        };
        let mut map: crate::shard::ClusterMap = codec::decode(&bytes)?;
        if let Err(e) = f(&mut map) {
            return Ok(Response::Rejected(e));
        }
        if let Err(e) = map.validate() {
            return Ok(Response::Rejected(format!("the change would break the map: {e}")));
        }
        map.epoch += 1;
        overlay.insert(CLUSTER_KEY.to_vec(), Some(codec::encode(&map)?));
        Ok(Response::Map { epoch: map.epoch })
    }

    pub fn get(&self, ns: &str, key: &str) -> Result<Option<Record>> {
        let _whole = self.applying.read().unwrap_or_else(|p| p.into_inner());
        match self.tree.get(data_key(ns, key))? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Nodes recorded by `Command::MarkSeen`.
    /// Nodes recorded by `Command::MarkSeen`, with the data-directory instance seen.
    /// Whether the access token with this id was revoked (metadata group).
    pub fn token_revoked(&self, id: &str) -> Result<bool> {
        Ok(self.tree.get(revoked_key(id))?.is_some())
    }

    pub fn seen(&self) -> Result<Vec<(u64, u64)>> {
        let mut out = vec![];
        for kv in self.tree.scan_prefix(b"s") {
            let (k, v) = kv?;
            let id: [u8; 8] = k[1..].try_into().map_err(|_| Error::Storage("bad seen key".into()))?;
            let instance: [u8; 8] =
                v.as_ref().try_into().map_err(|_| Error::Storage("bad seen value".into()))?;
            out.push((u64::from_be_bytes(id), u64::from_be_bytes(instance)));
        }
        Ok(out)
    }

    /// A namespace's time-series retention `(raw_ms, rollup_ms)`, if set (metadata group).
    pub fn ts_retention(&self, ns: &str) -> Result<Option<(u64, u64)>> {
        self.tree.get(retention_key(ns))?.map(|v| codec::decode(&v)).transpose()
    }

    pub fn namespace(&self, ns: &str) -> Result<Option<NamespaceConfig>> {
        if let Some(bytes) = self.tree.get(ns_key(ns))? {
            return Ok(Some(codec::decode(&bytes)?));
        }
        if ns == DEFAULT_NAMESPACE {
            return Ok(Some(NamespaceConfig::default_namespace()));
        }
        Ok(None)
    }

    pub fn namespaces(&self) -> Result<Vec<NamespaceConfig>> {
        let mut out = vec![];
        for kv in self.tree.scan_prefix(b"n") {
            let (_, v) = kv?;
            out.push(codec::decode::<NamespaceConfig>(&v)?);
        }
        if !out.iter().any(|n| n.name == DEFAULT_NAMESPACE) {
            out.insert(0, NamespaceConfig::default_namespace());
        }
        Ok(out)
    }

    /// Keys of `ns` starting with `prefix`, in byte order, strictly after `after` if given, at
    /// most `limit`. Returns the items and whether more remain.
    pub fn scan(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ScanItem>, bool)> {
        let base = data_key(ns, "");
        let full_prefix = data_key(ns, prefix);
        let start = match after {
            // The smallest key strictly greater than `after` is `after` ‖ 0x00.
            Some(a) if a.as_bytes() >= prefix.as_bytes() => {
                let mut s = data_key(ns, a);
                s.push(0);
                s
            }
            _ => full_prefix.clone(),
        };
        // Under the apply lock only the walk itself (sled values are shared buffers): the
        // decoding happens after it is released, so a long scan holds up applies less.
        let (raw, more) = {
            let _whole = self.applying.read().unwrap_or_else(|p| p.into_inner());
            let mut raw = vec![];
            let mut more = false;
            for kv in self.tree.range(start..) {
                let (k, v) = kv?;
                if !k.starts_with(&full_prefix) {
                    break;
                }
                if raw.len() == limit {
                    more = true;
                    break;
                }
                raw.push((k, v));
            }
            (raw, more)
        };
        let mut items = Vec::with_capacity(raw.len());
        for (k, v) in raw {
            let key = String::from_utf8(k[base.len()..].to_vec())
                .map_err(|_| Error::Storage("non-UTF-8 key in store".into()))?;
            let rec: Record = codec::decode(&v)?;
            items.push(ScanItem { key, revision: rec.revision, value: rec.value });
        }
        Ok((items, more))
    }

    /// Every entry of the store (data, namespaces and raft meta), for a snapshot. The caller
    /// must not apply concurrently (the raft glue calls this on the state-machine task).
    pub fn export(&self) -> Result<Image> {
        let mut out = self.export_tree()?;
        Self::append_ts(&mut out, self.ts.export().map_err(ts_err)?);
        Ok(out)
    }

    /// The tree's entries alone (data, namespaces, raft meta): a snapshot keeps the time series
    /// as an engine checkpoint instead.
    pub fn export_tree(&self) -> Result<Image> {
        self.tree.iter().map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into)).collect()
    }

    /// Appends the time-series engine's entries to an image of the tree, as `export` has them.
    pub fn append_ts(image: &mut Image, ts: edgefabric_tsdb::logkv::Entries) {
        image.extend(ts.into_iter().map(|(k, v)| ([TS_PREFIX, &k].concat(), v)));
    }

    /// Replaces the whole store with an exported image, durably. The time series first: the
    /// tree carries the raft meta, and until it is replaced a crash leaves the old meta, so
    /// the caller (raft's glue) imports again.
    pub fn import(&self, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        let _whole = self.write_guard()?;
        // Dirty until it is whole: a failure part-way leaves a tree no one may trust.
        self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
        let ts: Image = entries
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(TS_PREFIX).map(|k| (k.to_vec(), v.clone())))
            .collect();
        self.ts.import(ts).map_err(ts_err)?;
        self.tree.clear()?;
        let mut batch = sled::Batch::default();
        for (k, v) in entries.iter().filter(|(k, _)| !k.starts_with(TS_PREFIX)) {
            batch.insert(k.as_slice(), v.as_slice());
        }
        self.tree.apply_batch(batch)?;
        self.tree.flush()?;
        *self.map_cache.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.dirty.store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// The guard an apply or import writes under; refused once the store is closed.
    fn write_guard(&self) -> Result<std::sync::RwLockWriteGuard<'_, ()>> {
        let guard = self.applying.write().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Unavailable("the group is stopping".into()));
        }
        Ok(guard)
    }

    /// Stops all writes to this store (waiting for one under way). Returns whether the tree
    /// holds whole applies only (no apply or import failed part-way).
    pub fn close(&self) -> bool {
        let _whole = self.applying.write().unwrap_or_else(|p| p.into_inner());
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        !self.dirty.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Keys that refer to other keys, written after them by `apply`, in this order (the raft meta
/// comes after all of them).
const POINTER_KEYS: [&[u8]; 4] = [edgefabric_ledger::chain::HEAD_KEY, KEYS_KEY, RANGE_KEY, CLUSTER_KEY];

#[cfg(test)]
mod tests {
    use super::*;

    fn put(ns: &str, key: &str, value: &str, cas: Option<u64>) -> Command {
        Command::Batch(vec![Op::Put { ns: ns.into(), key: key.into(), value: value.into(), cas }])
    }

    fn del(ns: &str, key: &str, cas: Option<u64>) -> Command {
        Command::Batch(vec![Op::Delete { ns: ns.into(), key: key.into(), cas }])
    }

    fn apply1(kv: &KvStore, index: u64, cmd: &Command) -> Response {
        kv.apply(&[(index, Some(cmd))], b"meta").unwrap().remove(0)
    }

    #[test]
    fn put_get_delete_with_revisions() {
        let kv = KvStore::temporary().unwrap();
        assert_eq!(kv.get("default", "a").unwrap(), None);
        let r = apply1(&kv, 5, &put("default", "a", "1", None));
        assert_eq!(r, Response::Written { revision: 5, existed: vec![false] });
        assert_eq!(kv.get("default", "a").unwrap(), Some(Record { revision: 5, value: b"1".to_vec() }));
        let r = apply1(&kv, 6, &put("default", "a", "2", None));
        assert_eq!(r, Response::Written { revision: 6, existed: vec![true] });
        let r = apply1(&kv, 7, &del("default", "a", None));
        assert_eq!(r, Response::Written { revision: 7, existed: vec![true] });
        assert_eq!(kv.get("default", "a").unwrap(), None);
        assert_eq!(kv.raft_meta().unwrap().as_deref(), Some(&b"meta"[..]));
    }

    #[test]
    fn a_closed_store_takes_no_more_writes() {
        let kv = KvStore::temporary().unwrap();
        apply1(&kv, 1, &put("default", "a", "1", None));
        assert!(kv.close(), "a store without failed writes is whole");
        let r = kv.apply(&[(2, Some(&put("default", "b", "2", None)))], b"meta");
        assert!(matches!(r, Err(Error::Unavailable(_))), "{r:?}");
        assert!(matches!(kv.import(&[]), Err(Error::Unavailable(_))));
        // Reads go on, and see what was there.
        assert!(kv.get("default", "a").unwrap().is_some());
        assert!(kv.get("default", "b").unwrap().is_none());
    }

    #[test]
    fn cas_semantics() {
        let kv = KvStore::temporary().unwrap();
        // cas=0: only if absent.
        assert!(matches!(apply1(&kv, 1, &put("default", "k", "a", Some(0))), Response::Written { .. }));
        assert_eq!(
            apply1(&kv, 2, &put("default", "k", "b", Some(0))),
            Response::Conflict { key: "k".into(), expected: 0, current: 1 }
        );
        assert_eq!(
            apply1(&kv, 3, &put("default", "k", "b", Some(7))),
            Response::Conflict { key: "k".into(), expected: 7, current: 1 }
        );
        assert_eq!(kv.get("default", "k").unwrap().unwrap().value, b"a");
        assert!(matches!(
            apply1(&kv, 4, &put("default", "k", "b", Some(1))),
            Response::Written { revision: 4, .. }
        ));
        assert_eq!(
            apply1(&kv, 5, &del("default", "k", Some(1))),
            Response::Conflict { key: "k".into(), expected: 1, current: 4 }
        );
        assert!(matches!(apply1(&kv, 6, &del("default", "k", Some(4))), Response::Written { .. }));
        assert_eq!(kv.get("default", "k").unwrap(), None);
    }

    #[test]
    fn batch_is_all_or_nothing() {
        let kv = KvStore::temporary().unwrap();
        apply1(&kv, 1, &put("default", "x", "1", None));
        let bad = Command::Batch(vec![
            Op::Put { ns: "default".into(), key: "y".into(), value: b"2".to_vec(), cas: None },
            Op::Put { ns: "default".into(), key: "x".into(), value: b"3".to_vec(), cas: Some(99) },
        ]);
        assert!(matches!(apply1(&kv, 2, &bad), Response::Conflict { .. }));
        assert_eq!(kv.get("default", "y").unwrap(), None);
        assert_eq!(kv.get("default", "x").unwrap().unwrap().value, b"1");
        let good = Command::Batch(vec![
            Op::Put { ns: "default".into(), key: "y".into(), value: b"2".to_vec(), cas: Some(0) },
            Op::Delete { ns: "default".into(), key: "x".into(), cas: Some(1) },
        ]);
        assert_eq!(apply1(&kv, 3, &good), Response::Written { revision: 3, existed: vec![false, true] });
        assert_eq!(kv.get("default", "y").unwrap().unwrap().revision, 3);
        assert_eq!(kv.get("default", "x").unwrap(), None);
    }

    #[test]
    fn commands_in_one_apply_see_each_other() {
        let kv = KvStore::temporary().unwrap();
        let a = put("default", "k", "1", Some(0));
        let b = put("default", "k", "2", Some(10));
        let c = put("default", "k", "3", Some(0));
        let out = kv.apply(&[(10, Some(&a)), (11, Some(&b)), (12, None), (13, Some(&c))], b"m").unwrap();
        assert!(matches!(out[0], Response::Written { revision: 10, .. }));
        assert!(matches!(out[1], Response::Written { revision: 11, .. }));
        assert_eq!(out[2], Response::None);
        assert!(matches!(out[3], Response::Conflict { current: 11, .. }));
        assert_eq!(kv.get("default", "k").unwrap().unwrap().value, b"2");
    }

    #[test]
    fn invalid_commands_are_results_not_errors() {
        let kv = KvStore::temporary().unwrap();
        assert!(matches!(apply1(&kv, 2, &put("default", "", "v", None)), Response::Rejected(_)));
        assert!(matches!(apply1(&kv, 3, &Command::Batch(vec![])), Response::Rejected(_)));
        let ns = NamespaceConfig { name: "nope".into(), ..NamespaceConfig::default_namespace() };
        assert_eq!(apply1(&kv, 4, &Command::PutNamespace(ns.clone())), Response::Namespace { created: true });
        assert_eq!(
            apply1(&kv, 5, &Command::PutNamespace(ns.clone())),
            Response::Namespace { created: false }
        );
        assert!(matches!(apply1(&kv, 6, &put("nope", "k", "v", None)), Response::Written { .. }));
        assert_eq!(kv.namespace("nope").unwrap(), Some(ns));
        assert_eq!(kv.namespaces().unwrap().len(), 2);
    }

    #[test]
    fn the_first_cluster_map_wins() {
        use crate::shard::{initial_map, NodeInfo};
        let kv = KvStore::temporary().unwrap();
        assert_eq!(kv.cluster_map().unwrap(), None);
        assert!(kv.cluster_map().unwrap().is_none(), "an absent map is cached as absent");
        let nodes: Vec<NodeInfo> = (1..=3)
            .map(|i| NodeInfo {
                id: i,
                site: format!("s{i}"),
                addr: format!("a{i}"),
                http: String::new(),
                public_key: String::new(),
            })
            .collect();
        let first = initial_map(&nodes, 4, 3);
        let second = initial_map(&nodes, 8, 3);
        apply1(&kv, 1, &Command::InitCluster(first.clone()));
        apply1(&kv, 2, &Command::InitCluster(second));
        assert_eq!(kv.cluster_map().unwrap().as_deref(), Some(&first));
        let mut broken = initial_map(&nodes, 4, 3);
        broken.shards.pop();
        assert!(matches!(apply1(&kv, 3, &Command::InitCluster(broken)), Response::Rejected(_)));
    }

    #[test]
    fn namespace_keys_and_classes_are_guarded() {
        use crate::types::{DataClass, NamespaceKey};
        let kv = KvStore::temporary().unwrap();
        let key =
            |v: u32| NamespaceKey { version: v, wrapped: [(1u64, vec![v as u8; 80])].into_iter().collect() };
        let mut med = NamespaceConfig {
            name: "med".into(),
            class: DataClass::Confidential,
            home_site: None,
            key_sites: vec!["a".into()],
            replicas: 3,
            keys: vec![key(1)],
        };
        assert_eq!(
            apply1(&kv, 1, &Command::PutNamespace(med.clone())),
            Response::Namespace { created: true }
        );
        // A second creation with another key keeps the first key; the class cannot change.
        med.keys = vec![key(9)];
        assert_eq!(
            apply1(&kv, 2, &Command::PutNamespace(med.clone())),
            Response::Namespace { created: false }
        );
        assert_eq!(kv.namespace("med").unwrap().unwrap().keys, vec![key(1)]);
        let mut public = med.clone();
        public.class = DataClass::Public;
        assert!(matches!(apply1(&kv, 3, &Command::PutNamespace(public)), Response::Rejected(_)));
        // Versions must follow each other.
        let add = |v| Command::AddNamespaceKey { ns: "med".into(), key: key(v) };
        assert!(matches!(apply1(&kv, 4, &add(3)), Response::Rejected(_)));
        assert_eq!(apply1(&kv, 5, &add(2)), Response::Namespace { created: false });
        // The newest version cannot be retired; an older one can.
        let retire = |v| Command::RetireNamespaceKey { ns: "med".into(), version: v };
        assert!(matches!(apply1(&kv, 6, &retire(2)), Response::Rejected(_)));
        assert_eq!(apply1(&kv, 7, &retire(1)), Response::Namespace { created: false });
        // Re-wrapping applies only over the versions it was made for.
        let set = |expected: Vec<u32>| Command::SetNamespaceKeys {
            ns: "med".into(),
            key_sites: vec!["a".into(), "b".into()],
            keys: vec![key(2)],
            expected_versions: expected,
        };
        assert!(matches!(apply1(&kv, 8, &set(vec![1, 2])), Response::Rejected(_)));
        assert_eq!(apply1(&kv, 9, &set(vec![2])), Response::Namespace { created: false });
        let cfg = kv.namespace("med").unwrap().unwrap();
        assert_eq!((cfg.key_sites.len(), cfg.keys.len()), (2, 1));
        // None of these apply to a public namespace.
        assert!(matches!(
            apply1(&kv, 10, &Command::AddNamespaceKey { ns: "default".into(), key: key(1) }),
            Response::Rejected(_)
        ));
    }

    #[test]
    fn a_site_local_namespace_gets_a_pinned_shard_in_the_same_apply() {
        use crate::shard::{initial_map, NodeInfo};
        use crate::types::DataClass;
        let kv = KvStore::temporary().unwrap();
        let cams = NamespaceConfig {
            name: "cams".into(),
            class: DataClass::SiteLocal,
            home_site: Some("b".into()),
            key_sites: vec![],
            replicas: 3,
            keys: vec![],
        };
        // No map yet: refused, and nothing is created.
        assert!(matches!(apply1(&kv, 1, &Command::PutNamespace(cams.clone())), Response::Rejected(_)));
        assert!(kv.namespace("cams").unwrap().is_none());
        let nodes: Vec<NodeInfo> = ["a", "b", "c", "b"]
            .iter()
            .enumerate()
            .map(|(i, s)| NodeInfo {
                id: i as u64 + 1,
                site: s.to_string(),
                addr: format!("n{i}"),
                http: String::new(),
                public_key: String::new(),
            })
            .collect();
        apply1(&kv, 2, &Command::InitCluster(initial_map(&nodes, 4, 3)));
        assert_eq!(
            apply1(&kv, 3, &Command::PutNamespace(cams.clone())),
            Response::Namespace { created: true }
        );
        let map = kv.cluster_map().unwrap().unwrap();
        let mut replicas = map.shard_for("cams", "k").unwrap().replicas.clone();
        replicas.sort();
        assert_eq!(replicas, vec![2, 4]);
        // Its home site cannot change.
        let mut moved = cams.clone();
        moved.home_site = Some("a".into());
        assert!(matches!(apply1(&kv, 4, &Command::PutNamespace(moved)), Response::Rejected(_)));
        // A home site without nodes is refused.
        let mut z = cams;
        z.name = "z".into();
        z.home_site = Some("z".into());
        assert!(matches!(apply1(&kv, 5, &Command::PutNamespace(z)), Response::Rejected(_)));
        assert!(kv.namespace("z").unwrap().is_none());
    }

    #[test]
    fn map_changes_are_checked_and_epoch_guarded() {
        use crate::shard::{initial_map, NodeInfo};
        let kv = KvStore::temporary().unwrap();
        let info = |i: u64| NodeInfo {
            id: i,
            site: format!("s{i}"),
            addr: format!("a{i}"),
            http: String::new(),
            public_key: String::new(),
        };
        let nodes: Vec<NodeInfo> = (1..=3).map(info).collect();
        assert!(matches!(apply1(&kv, 1, &Command::AddNode(info(4))), Response::Rejected(_)), "no map yet");
        apply1(&kv, 2, &Command::InitCluster(initial_map(&nodes, 2, 3)));
        assert_eq!(apply1(&kv, 3, &Command::AddNode(info(4))), Response::Map { epoch: 2 });
        assert_eq!(apply1(&kv, 4, &Command::AddNode(info(4))), Response::Map { epoch: 3 }, "idempotent");
        let mut other = info(4);
        other.addr = "elsewhere".into();
        assert!(matches!(apply1(&kv, 5, &Command::AddNode(other)), Response::Rejected(_)));
        // Compare-and-set on the epoch.
        let stale = Command::SetReplicas { shard: 1, replicas: vec![1, 2, 4], epoch: 2, moving: None };
        assert!(matches!(apply1(&kv, 6, &stale), Response::Rejected(m) if m.contains("stale")));
        let ok = Command::SetReplicas { shard: 1, replicas: vec![1, 2, 4], epoch: 3, moving: None };
        assert_eq!(apply1(&kv, 7, &ok), Response::Map { epoch: 4 });
        let unknown = Command::SetReplicas { shard: 1, replicas: vec![1, 9], epoch: 4, moving: None };
        assert!(matches!(apply1(&kv, 8, &unknown), Response::Rejected(m) if m.contains("break")));
        // A node with replicas cannot be removed; a drained one can.
        assert!(matches!(apply1(&kv, 9, &Command::RemoveNode(3)), Response::Rejected(_)));
        assert_eq!(apply1(&kv, 10, &Command::SetLeaving(3)), Response::Map { epoch: 5 });
        let map = kv.cluster_map().unwrap().unwrap();
        assert!(map.leaving.contains(&3));
        assert_eq!(map.shard(1).unwrap().replicas, vec![1, 2, 4]);
        for s in [1, 2] {
            let replicas: Vec<u64> =
                map.shard(s).unwrap().replicas.iter().map(|r| if *r == 3 { 4 } else { *r }).collect();
            let epoch = kv.cluster_map().unwrap().unwrap().epoch;
            apply1(&kv, 11 + s, &Command::SetReplicas { shard: s, replicas, epoch, moving: None });
        }
        assert!(matches!(apply1(&kv, 20, &Command::RemoveNode(3)), Response::Map { .. }));
        let map = kv.cluster_map().unwrap().unwrap();
        assert!(!map.nodes.contains_key(&3) && map.leaving.is_empty());
        // Import replaces the map the cache holds.
        let other = KvStore::temporary().unwrap();
        apply1(&other, 1, &Command::InitCluster(initial_map(&nodes, 3, 3)));
        let before = kv.cluster_map().unwrap().unwrap();
        kv.import(&other.export().unwrap()).unwrap();
        let after = kv.cluster_map().unwrap().unwrap();
        assert_ne!(before, after);
        assert_eq!(after.shards.len(), 3);
    }

    #[test]
    fn split_moves_keys_out_and_fences_the_range() {
        use crate::shard::key_hash;
        let kv = KvStore::temporary().unwrap();
        for i in 0..200 {
            apply1(&kv, i + 1, &put("default", &format!("k{i}"), "v", None));
        }
        apply1(&kv, 300, &del("default", "k0", None));
        assert_eq!(kv.key_count().unwrap(), 199);
        let at = 1u64 << 63;
        let image = kv.split_image(at, u64::MAX).unwrap();
        let moving: Vec<String> =
            (1..200).map(|i| format!("k{i}")).filter(|k| key_hash("default", k) >= at).collect();
        assert!(!moving.is_empty());
        assert_eq!(image.len(), moving.len() + 2, "data keys plus count and range");
        assert_eq!(
            apply1(&kv, 301, &Command::Split { start: 0, at, end: u64::MAX, child: 2 }),
            Response::None
        );
        assert_eq!(kv.key_count().unwrap(), 199 - moving.len() as u64);
        assert_eq!(kv.range().unwrap(), Some((0, at - 1)));
        for k in &moving {
            assert_eq!(kv.get("default", k).unwrap(), None, "{k} moved out");
            assert!(matches!(apply1(&kv, 302, &put("default", k, "x", None)), Response::WrongShard));
        }
        assert!(!kv.owns(1, (0, u64::MAX)).unwrap(), "a map that does not know the split is refused");
        assert!(kv.owns(1, (0, at - 1)).unwrap());
        // Applying the split again (a replay) changes nothing but the raft meta.
        let strip = |mut v: Image| {
            v.retain(|(k, _)| k.as_slice() != META_KEY);
            v
        };
        let before = strip(kv.export().unwrap());
        apply1(&kv, 301, &Command::Split { start: 0, at, end: u64::MAX, child: 2 });
        assert_eq!(before, strip(kv.export().unwrap()));
        // The child starts from the image.
        let child = KvStore::temporary().unwrap();
        child.import(&image).unwrap();
        assert_eq!(child.key_count().unwrap(), moving.len() as u64);
        assert_eq!(child.get("default", &moving[0]).unwrap().unwrap().value, b"v");
        assert_eq!(child.range().unwrap(), Some((at, u64::MAX)));
    }

    #[test]
    fn seen_nodes() {
        let kv = KvStore::temporary().unwrap();
        assert_eq!(kv.seen().unwrap(), vec![]);
        apply1(&kv, 1, &Command::MarkSeen { node: 3, instance: 30 });
        apply1(&kv, 2, &Command::MarkSeen { node: 1, instance: 10 });
        apply1(&kv, 3, &Command::MarkSeen { node: 3, instance: 31 });
        assert_eq!(kv.seen().unwrap(), vec![(1, 10), (3, 31)], "the latest instance counts");
        apply1(&kv, 4, &Command::ForgetSeen(3));
        assert_eq!(kv.seen().unwrap(), vec![(1, 10)]);
    }

    #[test]
    fn scan_prefix_limit_and_continuation() {
        let kv = KvStore::temporary().unwrap();
        let ns = NamespaceConfig { name: "other".into(), ..NamespaceConfig::default_namespace() };
        apply1(&kv, 1, &Command::PutNamespace(ns));
        for (i, k) in ["a/1", "a/2", "a/3", "b/1", "a"].iter().enumerate() {
            apply1(&kv, 10 + i as u64, &put("default", k, k, None));
        }
        apply1(&kv, 20, &put("other", "a/9", "x", None));
        let (items, more) = kv.scan("default", "a/", None, 2).unwrap();
        assert_eq!(items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(), ["a/1", "a/2"]);
        assert!(more);
        let (items, more) = kv.scan("default", "a/", Some("a/2"), 2).unwrap();
        assert_eq!(items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(), ["a/3"]);
        assert!(!more);
        let (items, _) = kv.scan("default", "", None, 100).unwrap();
        assert_eq!(items.len(), 5, "scan must not cross into another namespace");
        // An `after` below the prefix starts at the prefix.
        let (items, _) = kv.scan("default", "b", Some("a"), 10).unwrap();
        assert_eq!(items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(), ["b/1"]);
    }

    #[test]
    fn namespace_prefix_does_not_leak() {
        // "ab" with key "c" must not collide with "a" with key "bc": the length byte separates them.
        let kv = KvStore::temporary().unwrap();
        for n in ["a", "ab"] {
            let ns = NamespaceConfig { name: n.into(), ..NamespaceConfig::default_namespace() };
            apply1(&kv, 1, &Command::PutNamespace(ns));
        }
        apply1(&kv, 2, &put("ab", "c", "1", None));
        assert_eq!(kv.get("a", "bc").unwrap(), None);
        assert_eq!(kv.scan("a", "", None, 10).unwrap().0.len(), 0);
    }

    #[test]
    fn export_import_round_trip() {
        let a = KvStore::temporary().unwrap();
        for i in 0..50u64 {
            apply1(&a, i + 1, &put("default", &format!("k{i}"), &format!("v{i}"), None));
        }
        // Time series too: some in chunks (a head of 240 samples is cut), some still in the
        // head (the head log).
        for i in 0..3i64 {
            let points = (0..(100 + 100 * i))
                .map(|t| edgefabric_tsdb::line::Point {
                    labels: vec![("__name__".into(), "temp".into()), ("s".into(), i.to_string())],
                    time_ms: t * 1000,
                    value: (t + i) as f64,
                })
                .collect();
            let batch = edgefabric_tsdb::batch::WriteBatch::from_points("default", points).unwrap().encode();
            apply1(&a, 51 + i as u64, &Command::TsWrite { shard: 0, batch });
        }
        let image = a.export().unwrap();
        assert!(image.iter().any(|(k, _)| k.starts_with(b"Tc")), "chunks in the image");
        assert!(image.iter().any(|(k, _)| k.starts_with(b"Tw")), "the head log in the image");
        let b = KvStore::temporary().unwrap();
        apply1(&b, 1, &put("default", "stale", "x", None));
        b.import(&image).unwrap();
        assert_eq!(b.get("default", "stale").unwrap(), None);
        assert_eq!(b.export().unwrap(), image);
        assert_eq!(b.raft_meta().unwrap(), a.raft_meta().unwrap());
        let all = |kv: &KvStore| {
            let m = edgefabric_tsdb::matcher::Matcher::eq("__name__", "temp");
            kv.ts().select("default", &[m], i64::MIN, i64::MAX).unwrap()
        };
        let got = all(&b);
        assert_eq!(got.iter().map(|s| s.samples.len()).collect::<Vec<_>>(), vec![100, 200, 300]);
        assert_eq!(got, all(&a));
    }

    /// A sealed batch is stored as it came; a batch that does not decode is refused alike on
    /// every replica, and changes nothing.
    #[test]
    fn sealed_time_series_are_applied_as_ciphertext() {
        use edgefabric_tsdb::batch::{SealedBatch, SealedSeries};
        let kv = KvStore::temporary().unwrap();
        let labels = vec![("__name__".to_string(), "temp".to_string()), ("room".into(), "a".into())];
        let batch = SealedBatch {
            ns: "med".into(),
            series: vec![SealedSeries {
                labels,
                min_t: 10,
                max_t: 20,
                count: 2,
                key_version: 1,
                sealed: b"opaque".to_vec(),
            }],
        };
        let r = apply1(&kv, 1, &Command::TsWriteSealed { shard: 0, batch: batch.encode() });
        assert_eq!(r, Response::TsWritten { written: 2, too_old: 0 });
        let m = edgefabric_tsdb::matcher::Matcher::eq("__name__", "temp");
        let got = kv.ts().select_sealed("med", &[m], 0, 100).unwrap();
        assert_eq!(got[0].blocks[0].sealed, b"opaque");
        let r = apply1(&kv, 2, &Command::TsWriteSealed { shard: 0, batch: b"garbage".to_vec() });
        assert!(
            matches!(r, Response::Rejected(ref why) if why.contains("sealed time-series batch")),
            "{r:?}"
        );
    }

    /// Time series an earlier version kept in the tree move into the engine's files at open.
    #[test]
    fn time_series_in_the_tree_move_to_their_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let src = KvStore::temporary().unwrap();
        let points = (0..500)
            .map(|t| edgefabric_tsdb::line::Point {
                labels: vec![("__name__".into(), "up".into())],
                time_ms: t * 1000,
                value: 1.0,
            })
            .collect();
        let batch = edgefabric_tsdb::batch::WriteBatch::from_points("default", points).unwrap().encode();
        apply1(&src, 1, &Command::TsWrite { shard: 0, batch });
        // The old layout: the engine's entries in the group's tree under `T`.
        let tree = db.open_tree("group-7").unwrap();
        for (k, v) in src.ts().export().unwrap() {
            tree.insert([TS_PREFIX, &k].concat(), v).unwrap();
        }
        let kv = KvStore::open(&db, 7, dir.path()).unwrap();
        assert_eq!(tree.scan_prefix(TS_PREFIX).count(), 0, "moved out of the tree");
        let m = edgefabric_tsdb::matcher::Matcher::eq("__name__", "up");
        let got = kv.ts().select("default", &[m], i64::MIN, i64::MAX).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].samples.len(), 500);
        assert_eq!(kv.ts().applied(), 1);
    }
}
