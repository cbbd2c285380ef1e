//! Confidential namespaces on a node: values are sealed (AES-256-GCM, `edgefabric_crypto::
//! envelope`) by the node that accepts the write, *before* the write is proposed, so raft logs,
//! snapshots and every replica hold only ciphertext. Only nodes at the namespace's key sites
//! hold the data key (wrapped for each of them in the namespace's config, in the metadata
//! group) and can seal or open values; other nodes refuse reads and writes of the namespace
//! with `Forbidden`, naming the key sites.
//!
//! Keys (the names) are not encrypted: they route writes to shards. Only values are.
//!
//! Site-local namespaces are gated here too: served only by nodes at their home site (their
//! shard's placement is in `shard.rs`, `ClusterMap::pin_namespace`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use edgefabric_crypto::envelope::{self, DataKey};
use edgefabric_crypto::PublicKey;

use crate::error::{Error, Result};
use crate::node::{Consistency, Node};
use crate::types::{key_context, DataClass, NamespaceConfig, NamespaceKey, Op, Record, ScanItem};

/// Data keys this node has unwrapped, by (namespace, version). Zeroized on drop.
#[derive(Default)]
pub struct KeyCache(Mutex<BTreeMap<(String, u32), DataKey>>);

/// A key rotation's re-encryption, as the node running it reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rotation {
    /// The key version values are re-encrypted to.
    pub version: u32,
    pub scanned: u64,
    pub reencrypted: u64,
    /// Values rewritten by clients meanwhile (already under a newer key) or deleted.
    pub skipped: u64,
    /// Once done: values still under an older version (0 unless writes with an older key
    /// raced the job; rotate again to finish them).
    pub remaining_old: u64,
    pub done: bool,
    pub error: Option<String>,
}

/// Rotations run (or last run) by this node, by namespace.
#[derive(Default)]
pub struct Rotations(pub(crate) Mutex<BTreeMap<String, Rotation>>);

impl Node {
    /// This node's site, as the cluster map (or its configuration) has it.
    pub fn site(&self) -> String {
        self.map()
            .and_then(|m| m.nodes.get(&self.id()).map(|n| n.site.clone()))
            .or_else(|| self.options().members.iter().find(|m| m.id == self.id()).map(|m| m.site.clone()))
            .unwrap_or_default()
    }

    /// Site-local namespaces are served only at their home site: a request elsewhere would
    /// carry the namespace's bytes off the site (the value in, or out).
    fn require_home_site(&self, cfg: &NamespaceConfig) -> Result<()> {
        let home = cfg.home_site.as_deref().unwrap_or_default();
        let site = self.site();
        if site == home {
            return Ok(());
        }
        Err(Error::Forbidden(format!(
            "namespace {:?} is site-local to site {home:?}: send its requests to a node at site {home:?} (this node is at site {site:?})",
            cfg.name
        )))
    }

    fn require_key_site(&self, cfg: &NamespaceConfig) -> Result<()> {
        let site = self.site();
        if cfg.key_sites.contains(&site) {
            return Ok(());
        }
        Err(Error::Forbidden(format!(
            "namespace {:?} is confidential: only nodes at its key sites ({}) can read or write its values; this node is at site {site:?}",
            cfg.name,
            cfg.key_sites.join(", ")
        )))
    }

    /// A data key version for a confidential namespace, wrapped for every node of its key
    /// sites. Made only at a key site: the key never exists in the clear anywhere else.
    pub(crate) fn make_namespace_key(&self, cfg: &NamespaceConfig, version: u32) -> Result<NamespaceKey> {
        self.require_key_site(cfg)?;
        let map =
            self.map().ok_or_else(|| Error::Unavailable("the cluster is not initialized yet".into()))?;
        let dk = DataKey::generate().map_err(|e| Error::Internal(e.to_string()))?;
        let context = key_context(&cfg.name, version);
        let mut wrapped = BTreeMap::new();
        for n in map.nodes.values().filter(|n| cfg.key_sites.contains(&n.site)) {
            let pk = PublicKey::from_base64(&n.public_key).map_err(|_| {
                Error::Unavailable(format!("node {}'s public key is not known yet; retry shortly", n.id))
            })?;
            let w = envelope::wrap(&dk, &pk, &context).map_err(|e| Error::Internal(e.to_string()))?;
            wrapped.insert(n.id, w);
        }
        if !wrapped.contains_key(&self.id()) {
            return Err(Error::Unavailable("this node is not in the cluster map yet".into()));
        }
        // Cached now: this node made it, and is about to use it.
        self.keys.0.lock().unwrap_or_else(|p| p.into_inner()).insert((cfg.name.clone(), version), dk);
        Ok(NamespaceKey { version, wrapped })
    }

    /// Adds the next data key version to a confidential namespace (new writes use it at once)
    /// and starts re-encrypting the values under older versions in the background; progress in
    /// [`Node::rotation`]. Only at a key site.
    pub async fn rotate_key(self: &std::sync::Arc<Self>, ns: &str) -> Result<u32> {
        let cfg = self.confidential_config(ns).await?;
        if self.rotation(ns).is_some_and(|r| !r.done) {
            return Err(Error::Unavailable(format!(
                "a key rotation of {ns:?} is still re-encrypting; retry when it is done"
            )));
        }
        let version = cfg.keys.iter().map(|k| k.version).max().unwrap_or(0) + 1;
        let key = self.make_namespace_key(&cfg, version)?;
        match self.propose(crate::types::Command::AddNamespaceKey { ns: ns.into(), key }).await? {
            crate::types::Response::Namespace { .. } => {}
            crate::types::Response::Rejected(why) => {
                return Err(Error::Unavailable(format!("the key version was not added: {why}")))
            }
            other => return Err(Error::Internal(format!("unexpected {other:?}"))),
        }
        self.rotations
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ns.into(), Rotation { version, ..Default::default() });
        let node = self.clone();
        let ns = ns.to_string();
        tokio::spawn(async move {
            let r = node.reencrypt(&ns, version).await;
            node.progress(&ns, |p| {
                match r {
                    Ok(remaining) => p.remaining_old = remaining,
                    Err(e) => p.error = Some(e.to_string()),
                }
                p.done = true;
            });
        });
        Ok(version)
    }

    /// Re-wraps every key version of `old` for the nodes now at `new_sites` (adding a site opens
    /// the namespace to it; a node that joined a key site later gets the keys), then, if a site
    /// was removed, rotates so that later data is closed to it (its nodes may still hold the
    /// older versions). Run at a node of a site in both the old and the new key sites.
    pub(crate) async fn update_key_sites(
        self: &std::sync::Arc<Self>,
        old: &NamespaceConfig,
        new_sites: &[String],
    ) -> Result<()> {
        let map =
            self.map().ok_or_else(|| Error::Unavailable("the cluster is not initialized yet".into()))?;
        let targets: Vec<&crate::shard::NodeInfo> =
            map.nodes.values().filter(|n| new_sites.contains(&n.site)).collect();
        let complete = old.keys.iter().all(|k| targets.iter().all(|n| k.wrapped.contains_key(&n.id)))
            && old.keys.iter().all(|k| k.wrapped.keys().all(|id| targets.iter().any(|n| n.id == *id)));
        if old.key_sites == new_sites && complete {
            return Ok(());
        }
        self.require_key_site(old)?;
        let new_cfg = NamespaceConfig { key_sites: new_sites.to_vec(), ..old.clone() };
        self.require_key_site(&new_cfg)?;
        let mut keys = Vec::with_capacity(old.keys.len());
        for k in &old.keys {
            let dk = self.data_key(old, k.version)?;
            let context = key_context(&old.name, k.version);
            let mut wrapped = BTreeMap::new();
            for n in &targets {
                let pk = PublicKey::from_base64(&n.public_key).map_err(|_| {
                    Error::Unavailable(format!("node {}'s public key is not known yet; retry shortly", n.id))
                })?;
                wrapped.insert(
                    n.id,
                    envelope::wrap(&dk, &pk, &context).map_err(|e| Error::Internal(e.to_string()))?,
                );
            }
            keys.push(NamespaceKey { version: k.version, wrapped });
        }
        let expected_versions = old.keys.iter().map(|k| k.version).collect();
        let cmd = crate::types::Command::SetNamespaceKeys {
            ns: old.name.clone(),
            key_sites: new_sites.to_vec(),
            keys,
            expected_versions,
        };
        match self.propose(cmd).await? {
            crate::types::Response::Namespace { .. } => {}
            crate::types::Response::Rejected(why) => return Err(Error::Unavailable(why)),
            other => return Err(Error::Internal(format!("unexpected {other:?}"))),
        }
        if old.key_sites.iter().any(|s| !new_sites.contains(s)) {
            self.rotate_key(&old.name).await?;
        }
        Ok(())
    }

    /// Drops key version `version` of `ns` once no stored value uses it (never the newest).
    pub async fn retire_key(&self, ns: &str, version: u32) -> Result<()> {
        let cfg = self.confidential_config(ns).await?;
        let versions: Vec<u32> = cfg.keys.iter().map(|k| k.version).collect();
        let newest = versions.iter().copied().max().unwrap_or(0);
        if version == newest || !versions.contains(&version) {
            return Err(Error::invalid(
                "version",
                format!("{version} is the newest version or does not exist (versions {versions:?})"),
            ));
        }
        let in_use = self.count_stored(ns, |v| v == version).await?;
        if in_use > 0 {
            return Err(Error::Forbidden(format!(
                "{in_use} values of {ns:?} still use key version {version}; rotate to re-encrypt them first"
            )));
        }
        // Time series are not re-encrypted by a rotation (blocks are immutable; re-sealing
        // every sample would rewrite the whole store): their old blocks keep the version alive
        // until raw retention deletes them.
        let blocks = self.count_sealed_blocks(ns, version).await?;
        if blocks > 0 {
            return Err(Error::Forbidden(format!(
                "{blocks} time-series blocks of {ns:?} still use key version {version}; they keep it until raw retention deletes them"
            )));
        }
        match self.propose(crate::types::Command::RetireNamespaceKey { ns: ns.into(), version }).await? {
            crate::types::Response::Namespace { .. } => Ok(()),
            crate::types::Response::Rejected(why) => Err(Error::invalid("version", why)),
            other => Err(Error::Internal(format!("unexpected {other:?}"))),
        }
    }

    /// A confidential namespace's config, read linearizably, at a key site only.
    async fn confidential_config(&self, ns: &str) -> Result<NamespaceConfig> {
        let cfg = self.namespace(ns, Consistency::Linearizable).await?;
        if cfg.class != DataClass::Confidential {
            return Err(Error::invalid(
                "namespace",
                format!("{ns:?} is {}, not confidential", cfg.class.as_str()),
            ));
        }
        self.require_key_site(&cfg)?;
        Ok(cfg)
    }

    /// How many stored values of `ns` are sealed under a key version matching `which`.
    async fn count_stored(&self, ns: &str, which: impl Fn(u32) -> bool) -> Result<u64> {
        let mut count = 0;
        let mut after: Option<String> = None;
        loop {
            let (items, more) =
                self.scan_stored(ns, "", after.as_deref(), 1000, Consistency::Linearizable).await?;
            count += items.iter().filter(|it| envelope::sealed_version(&it.value).is_ok_and(&which)).count()
                as u64;
            match (more, items.last()) {
                (true, Some(last)) => after = Some(last.key.clone()),
                _ => break,
            }
        }
        Ok(count)
    }

    /// The rotation this node last ran for `ns`.
    pub fn rotation(&self, ns: &str) -> Option<Rotation> {
        self.rotations.0.lock().unwrap_or_else(|p| p.into_inner()).get(ns).cloned()
    }

    fn progress(&self, ns: &str, f: impl FnOnce(&mut Rotation)) {
        if let Some(p) = self.rotations.0.lock().unwrap_or_else(|p| p.into_inner()).get_mut(ns) {
            f(p);
        }
    }

    /// Re-seals every value of `ns` under a version older than `version`, each with a
    /// compare-and-set on the revision it read (so a client's newer write always wins), then
    /// counts what is left under older versions.
    async fn reencrypt(&self, ns: &str, version: u32) -> Result<u64> {
        let cfg = self.namespace(ns, Consistency::Linearizable).await?;
        let new_key = self.data_key(&cfg, version)?;
        let mut after: Option<String> = None;
        loop {
            let (items, more) =
                self.scan_stored(ns, "", after.as_deref(), 500, Consistency::Linearizable).await?;
            for it in &items {
                self.progress(ns, |p| p.scanned += 1);
                let old = envelope::sealed_version(&it.value).map_err(|e| Error::Storage(e.to_string()))?;
                if old >= version {
                    continue;
                }
                let plain = self.open_value(&cfg, &it.key, it.value.clone()).await?;
                let sealed = envelope::seal(&new_key, version, ns, &it.key, &plain)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                let op =
                    Op::Put { ns: ns.into(), key: it.key.clone(), value: sealed, cas: Some(it.revision) };
                match self.propose_sealed(crate::types::Command::Batch(vec![op])).await? {
                    crate::types::Response::Written { .. } => self.progress(ns, |p| p.reencrypted += 1),
                    crate::types::Response::Conflict { .. } => self.progress(ns, |p| p.skipped += 1),
                    other => return Err(Error::Internal(format!("unexpected {other:?}"))),
                }
            }
            match (more, items.last()) {
                (true, Some(last)) => after = Some(last.key.clone()),
                _ => break,
            }
        }
        // What is left under older versions (only writes that raced the key change).
        let remaining = self.count_stored(ns, |v| v < version).await?;
        Ok(remaining)
    }

    /// The namespace's config, from this node's metadata replica (a barrier only if it is not
    /// there yet: class and keys never change once set).
    pub(crate) async fn namespace_config(&self, ns: &str) -> Result<NamespaceConfig> {
        match self.namespace(ns, Consistency::Stale).await {
            Ok(cfg) => Ok(cfg),
            Err(Error::NotFound(_)) => self.namespace(ns, Consistency::Linearizable).await,
            Err(e) => Err(e),
        }
    }

    pub(crate) fn data_key(&self, cfg: &NamespaceConfig, version: u32) -> Result<DataKey> {
        let cache_key = (cfg.name.clone(), version);
        if let Some(k) = self.keys.0.lock().unwrap_or_else(|p| p.into_inner()).get(&cache_key) {
            return Ok(k.clone());
        }
        let entry = cfg.keys.iter().find(|k| k.version == version).ok_or_else(|| {
            Error::Storage(format!("namespace {:?} has no data key version {version}", cfg.name))
        })?;
        let wrapped = entry.wrapped.get(&self.id()).ok_or_else(|| {
            Error::Forbidden(format!(
                "namespace {:?}: no data key is wrapped for node {} (it joined its key site after the key was made)",
                cfg.name,
                self.id()
            ))
        })?;
        let dk = envelope::unwrap(wrapped, &self.options().identity, &key_context(&cfg.name, version))
            .map_err(|e| {
                Error::Storage(format!("namespace {:?}: unwrapping data key {version}: {e}", cfg.name))
            })?;
        self.keys.0.lock().unwrap_or_else(|p| p.into_inner()).insert(cache_key, dk.clone());
        Ok(dk)
    }

    /// Seals the values of puts into confidential namespaces (refusing them away from the key
    /// sites); other ops pass through.
    pub(crate) async fn seal_ops(&self, ops: Vec<Op>) -> Result<Vec<Op>> {
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            let cfg = self.namespace_config(op.ns()).await?;
            if cfg.class == DataClass::SiteLocal {
                self.require_home_site(&cfg)?;
            }
            if cfg.class != DataClass::Confidential {
                out.push(op);
                continue;
            }
            self.require_key_site(&cfg)?;
            match op {
                Op::Put { ns, key, value, cas } => {
                    let current = cfg.keys.iter().map(|k| k.version).max().ok_or_else(|| {
                        Error::Storage(format!("confidential namespace {ns:?} has no data key"))
                    })?;
                    let dk = self.data_key(&cfg, current)?;
                    let sealed = envelope::seal(&dk, current, &ns, &key, &value)
                        .map_err(|e| Error::Internal(e.to_string()))?;
                    out.push(Op::Put { ns, key, value: sealed, cas });
                }
                other => out.push(other),
            }
        }
        Ok(out)
    }

    /// Opens a value read from a namespace whose access `check_readable` granted (public and
    /// site-local values are stored as they are).
    pub(crate) async fn open_value(
        &self,
        cfg: &NamespaceConfig,
        key: &str,
        sealed: Vec<u8>,
    ) -> Result<Vec<u8>> {
        if cfg.class != DataClass::Confidential {
            return Ok(sealed);
        }
        let ns = &cfg.name;
        let version = envelope::sealed_version(&sealed)
            .map_err(|e| Error::Storage(format!("{ns}/{key}: stored value is not sealed: {e}")))?;
        // A version newer than this replica's config: a rotation it has not seen yet.
        let dk = if cfg.keys.iter().any(|k| k.version == version) {
            self.data_key(cfg, version)?
        } else {
            self.data_key(&self.namespace(ns, Consistency::Linearizable).await?, version)?
        };
        envelope::open(&dk, ns, key, &sealed).map_err(|e| Error::Storage(format!("{ns}/{key}: {e}")))
    }

    /// The namespace's config if this node may serve its reads: confidential ones only at key
    /// sites, site-local ones only at the home site (an error naming them otherwise).
    pub(crate) async fn check_readable(&self, ns: &str) -> Result<NamespaceConfig> {
        let cfg = self.namespace_config(ns).await?;
        match cfg.class {
            DataClass::Confidential => self.require_key_site(&cfg)?,
            DataClass::SiteLocal => self.require_home_site(&cfg)?,
            DataClass::Public => {}
        }
        Ok(cfg)
    }

    pub(crate) async fn open_record(
        &self,
        cfg: &NamespaceConfig,
        key: &str,
        r: Option<Record>,
    ) -> Result<Option<Record>> {
        match r {
            Some(mut rec) => {
                rec.value = self.open_value(cfg, key, rec.value).await?;
                Ok(Some(rec))
            }
            None => Ok(None),
        }
    }

    pub(crate) async fn open_items(
        &self,
        cfg: &NamespaceConfig,
        items: Vec<ScanItem>,
    ) -> Result<Vec<ScanItem>> {
        if cfg.class != DataClass::Confidential {
            return Ok(items);
        }
        let mut out = Vec::with_capacity(items.len());
        for mut it in items {
            it.value = self.open_value(cfg, &it.key, it.value).await?;
            out.push(it);
        }
        Ok(out)
    }
}
