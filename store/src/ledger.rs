//! The ledger's runtime on a node: the block builder (on the ledger group's leader), the
//! ledger's membership kept in line with the cluster map, checkpoint cosigning, reads with
//! proofs, and the start-up verification of the stored chain.
//!
//! Ordering: entries from any node are routed to the ledger group's leader (like writes to a
//! shard). Its builder takes everything queued, validates each entry strictly against the
//! applied chain (signature, author's membership and role, rules), builds the next block from
//! the valid ones and proposes it; it builds the next block only once that one is applied, so
//! every block extends the chain it was built on. Every node validates every block again as
//! it applies it (`kv.rs` → `ledger::chain::apply_block`).
//!
//! Checkpoints: a node signs a checkpoint only for a log size and root it has itself validated
//! and stored, and asks every other node to cosign the same (size, root); each checks the root
//! against its own validated chain before it signs. The collected note is what
//! `GET /v1/ledger/checkpoint` serves. Each node keeps the latest checkpoint it signed in
//! `ledger-checkpoint` (fsynced), so a chain truncated behind its back is caught at start-up.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use edgefabric_crypto::{Identity, PublicKey};
use edgefabric_ledger::chain::{self, Head, ImageRecord};
use edgefabric_ledger::entry::{Author, Entry, EntryKind};
use edgefabric_ledger::note::{self, Checkpoint, TrustedKey};
use edgefabric_ledger::{Hash, LedgerError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::kv::LedgerCtx;
use crate::network::call;
use crate::node::{Group, Node};
use crate::shard::{ClusterMap, LEDGER_GROUP};
use crate::types::{Admission, Command, Response};

const CHECKPOINT_FILE: &str = "ledger-checkpoint";

/// The name a node's key signs checkpoints under: `node-<id>`.
pub fn key_name(id: u64) -> String {
    format!("node-{id}")
}

/// Whether this node's stored chain may be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The start-up check has not finished.
    Verifying,
    Verified,
    /// The check failed: ledger reads are refused until an operator repairs the store.
    Corrupt(String),
}

pub(crate) struct Submission {
    entries: Vec<Entry>,
    reply: oneshot::Sender<Result<Vec<Admission>>>,
}

/// The node's ledger state that is not in the state machine.
pub struct LedgerRuntime {
    pub(crate) ctx: Arc<LedgerCtx>,
    health: RwLock<Health>,
    tx: mpsc::Sender<Submission>,
    rx: Mutex<Option<mpsc::Receiver<Submission>>>,
    /// The last collected checkpoint note: (log size, note, number of signatures, when).
    cache: Mutex<Option<(u64, String, usize, Instant)>>,
    /// Serializes writes of the checkpoint file.
    file: Mutex<()>,
    /// The chain has its genesis block (once true, always: blocks are never removed), so the
    /// builder stops looking for it.
    genesis_seen: std::sync::atomic::AtomicBool,
}

impl LedgerRuntime {
    pub(crate) fn new(genesis: Option<Vec<Entry>>) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        LedgerRuntime {
            ctx: Arc::new(LedgerCtx::new(genesis)),
            health: RwLock::new(Health::Verifying),
            tx,
            rx: Mutex::new(Some(rx)),
            cache: Mutex::new(None),
            file: Mutex::new(()),
            genesis_seen: Default::default(),
        }
    }

    pub fn health(&self) -> Health {
        self.health.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_health(&self, h: Health) {
        *self.health.write().unwrap_or_else(|p| p.into_inner()) = h;
    }

    pub fn rejected_blocks(&self) -> u64 {
        self.ctx.rejected.load(Ordering::Relaxed)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn ledger_err(e: LedgerError) -> Error {
    match e {
        LedgerError::Invalid { field, message } => Error::invalid(field, message),
        LedgerError::NotFound(m) => Error::NotFound(m),
        LedgerError::Proof(p) => Error::invalid("proof", p.to_string()),
        LedgerError::Storage(m) => Error::Storage(m),
        other => Error::Internal(other.to_string()),
    }
}

/// An image's ledger record with the entries that made it.
#[derive(Debug, Clone)]
pub struct ImageStatus {
    pub record: ImageRecord,
    pub registration: Entry,
    pub revocation: Option<Entry>,
}

impl Node {
    fn ledger_group(&self) -> Result<Arc<Group>> {
        self.group(crate::shard::LEDGER_GROUP)
            .ok_or_else(|| Error::Unavailable("the ledger group is not started".into()))
    }

    /// Starts the block builder (it acts only while this node leads the ledger group).
    pub(crate) fn start_ledger(self: &Arc<Self>) {
        if let Some(rx) = self.ledger.rx.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let n = self.clone();
            tokio::spawn(async move { n.builder_loop(rx).await });
        }
        let n = self.clone();
        tokio::spawn(async move { n.verify_ledger_at_start().await });
    }

    /// Submits entries for the ledger from any node; returns what became of each.
    pub async fn ledger_submit(&self, entries: Vec<Entry>) -> Result<Vec<Admission>> {
        match self.propose(Command::LedgerSubmit(entries)).await? {
            Response::Admitted(a) => Ok(a),
            other => Err(Error::Internal(format!("unexpected ledger response {other:?}"))),
        }
    }

    /// On the leader: queues entries for the builder and waits for the block.
    pub(crate) async fn ledger_enqueue(&self, entries: Vec<Entry>) -> Result<Response> {
        let (reply, rx) = oneshot::channel();
        self.ledger
            .tx
            .send(Submission { entries, reply })
            .await
            .map_err(|_| Error::Unavailable("the ledger builder has stopped".into()))?;
        let admitted =
            rx.await.map_err(|_| Error::Unavailable("the ledger builder dropped the request".into()))??;
        Ok(Response::Admitted(admitted))
    }

    async fn builder_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Submission>) {
        let mut shutdown = self.shutdown.subscribe();
        let mut carry: Option<Submission> = None;
        loop {
            let first = match carry.take() {
                Some(s) => s,
                None => tokio::select! {
                    s = rx.recv() => match s { Some(s) => s, None => return },
                    _ = shutdown.changed() => return,
                },
            };
            let mut count = first.entries.len();
            let mut batch = vec![first];
            while let Ok(s) = rx.try_recv() {
                if count + s.entries.len() > edgefabric_ledger::block::MAX_BLOCK_ENTRIES {
                    carry = Some(s);
                    break;
                }
                count += s.entries.len();
                batch.push(s);
            }
            let entries: Vec<Entry> = batch.iter().flat_map(|s| s.entries.iter().cloned()).collect();
            match self.build_and_propose(entries).await {
                Ok(mut results) => {
                    for s in batch {
                        let rest = results.split_off(s.entries.len().min(results.len()));
                        let _ = s.reply.send(Ok(results));
                        results = rest;
                    }
                }
                Err(e) => {
                    for s in batch {
                        let _ = s.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    async fn build_and_propose(&self, entries: Vec<Entry>) -> Result<Vec<Admission>> {
        let g = self.ledger_group()?;
        if !g.is_leader() {
            return Err(Error::Unavailable("not the leader".into()));
        }
        // Build on everything this leader has in its log (a new leader may still be applying
        // its predecessor's blocks).
        let last = g.raft.metrics().borrow().last_log_index;
        g.raft
            .wait(Some(self.opts.request_timeout))
            .applied_index_at_least(last, "ledger builder catch-up")
            .await
            .map_err(|e| Error::Unavailable(format!("ledger leader catching up: {e}")))?;
        let tree = g.kv.tree().clone();
        let id = self.opts.id;
        let n = entries.len();
        // Until the genesis block exists (the reconcile loop writes it as soon as this group
        // has a leader) only the founders' entries can go in a block. Anything else submitted
        // in that first moment waits — a retryable failure — instead of being refused by the
        // genesis rule as if it were malformed.
        let before_genesis = !self.ledger.genesis_seen.load(Ordering::Relaxed) && {
            let none = chain::head(&tree).map_err(ledger_err)?.is_none();
            self.ledger.genesis_seen.store(!none, Ordering::Relaxed);
            none
        };
        let waits: Vec<bool> =
            entries.iter().map(|e| before_genesis && !matches!(e.author, Author::Genesis)).collect();
        let admissible: Vec<Entry> =
            entries.into_iter().zip(&waits).filter(|(_, w)| !**w).map(|(e, _)| e).collect();
        let (block, results) =
            tokio::task::spawn_blocking(move || chain::build_block(&tree, &admissible, now_ms(), id))
                .await
                .map_err(|e| Error::Internal(format!("block builder: {e}")))?
                .map_err(ledger_err)?;
        let mut results = results.into_iter();
        let mut out: Vec<Admission> = Vec::with_capacity(n);
        for w in waits {
            if w {
                out.push(Admission::Failed("the ledger has no genesis block yet; retry in a moment".into()));
                continue;
            }
            out.push(match results.next() {
                Some(Ok(i)) => Admission::Index(i),
                Some(Err(LedgerError::InvalidBlock { reason, .. })) => Admission::Refused(reason),
                Some(Err(e)) => Admission::Failed(e.to_string()),
                None => Admission::Failed("the block builder gave no answer".into()),
            });
        }
        let Some(block) = block else { return Ok(out) };
        self.ledger.ctx.built(block.header.hash().map_err(ledger_err)?);
        match self.propose_local(&g, Command::LedgerBlock(block)).await? {
            Response::Block { .. } => {}
            Response::Rejected(why) => {
                for a in out.iter_mut().filter(|a| matches!(a, Admission::Index(_))) {
                    *a = Admission::Failed(format!("the block was refused: {why}"));
                }
            }
            other => return Err(Error::Internal(format!("unexpected response to a block: {other:?}"))),
        }
        debug_assert_eq!(out.len(), n);
        Ok(out)
    }

    /// Run by the reconcile loop on every node; acts on the ledger group's leader: every node
    /// of the map replicates the ledger (learners beyond the voters), nodes that left are
    /// removed, the chain starts with the genesis block, and its node membership follows the
    /// map's (NodeAdded / NodeRemoved entries signed by this node).
    pub(crate) async fn reconcile_ledger(self: &Arc<Self>, map: &ClusterMap) {
        let Ok(g) = self.ledger_group() else { return };
        if !g.is_leader() {
            return;
        }
        self.add_learners(&g, map).await;
        self.remove_departed(&g, map).await;
        let tree = g.kv.tree().clone();
        let head = match chain::head(&tree) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "reading the ledger head");
                return;
            }
        };
        let mut entries = vec![];
        if head.is_none() {
            entries = match &self.ledger.ctx.genesis {
                Some(g) => g.clone(),
                None => {
                    let founders: Vec<(u64, String, [u8; 32])> = self
                        .opts
                        .members
                        .iter()
                        .filter_map(|m| {
                            PublicKey::from_base64(&m.public_key)
                                .ok()
                                .map(|k| (m.id, m.site.clone(), k.to_bytes()))
                        })
                        .collect();
                    chain::genesis_entries(&founders)
                }
            };
            if entries.is_empty() {
                return;
            }
        } else {
            for n in map.nodes.values().filter(|n| !map.leaving.contains(&n.id)) {
                let Ok(key) = PublicKey::from_base64(&n.public_key) else { continue };
                if matches!(chain::member(&tree, n.id), Ok(None)) {
                    let kind =
                        EntryKind::NodeAdded { id: n.id, site: n.site.clone(), public_key: key.to_bytes() };
                    if let Ok(e) = Entry::by_node(self.opts.id, kind, &self.opts.identity) {
                        entries.push(e);
                    }
                }
            }
            for id in ledger_members(&tree) {
                if !map.nodes.contains_key(&id) && id != self.opts.id {
                    if let Ok(e) =
                        Entry::by_node(self.opts.id, EntryKind::NodeRemoved { id }, &self.opts.identity)
                    {
                        entries.push(e);
                    }
                }
            }
        }
        if entries.is_empty() {
            return;
        }
        match self.ledger_enqueue(entries).await {
            Ok(Response::Admitted(a)) => {
                for x in a.iter().filter(|x| !matches!(x, Admission::Index(_))) {
                    tracing::debug!(result = ?x, "ledger membership entry");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "ledger membership entries"),
        }
    }

    // ---- reads ----

    pub(crate) fn ledger_readable(&self) -> Result<Arc<Group>> {
        match self.ledger.health() {
            Health::Verified => self.ledger_group(),
            Health::Verifying => Err(Error::Unavailable("the ledger store is still being verified".into())),
            Health::Corrupt(why) => {
                Err(Error::Unavailable(format!("this node's ledger store failed verification: {why}")))
            }
        }
    }

    /// The ledger group after a read barrier: reads see every block committed before the call.
    async fn ledger_read(&self) -> Result<Arc<Group>> {
        let g = self.ledger_readable()?;
        self.read_barrier(&g).await?;
        Ok(g)
    }

    pub fn ledger_health(&self) -> Health {
        self.ledger.health()
    }

    pub fn ledger_rejected_blocks(&self) -> u64 {
        self.ledger.rejected_blocks()
    }

    /// This node's head (no barrier), for metrics and status.
    pub fn ledger_local_head(&self) -> Option<Head> {
        self.ledger_group().ok().and_then(|g| chain::head(g.kv.tree()).ok().flatten())
    }

    pub async fn ledger_head(&self) -> Result<Head> {
        let g = self.ledger_read().await?;
        chain::head(g.kv.tree())
            .map_err(ledger_err)?
            .ok_or_else(|| Error::Unavailable("the ledger has no genesis block yet".into()))
    }

    pub async fn ledger_entry(&self, index: u64) -> Result<(Entry, Vec<u8>)> {
        let g = self.ledger_read().await?;
        let leaf = chain::leaf(g.kv.tree(), index)
            .map_err(ledger_err)?
            .ok_or_else(|| Error::NotFound(format!("no ledger entry {index}")))?;
        Ok((Entry::from_leaf(&leaf).map_err(ledger_err)?, leaf))
    }

    pub async fn ledger_image(&self, digest: &str) -> Result<Option<ImageStatus>> {
        let g = self.ledger_read().await?;
        let tree = g.kv.tree();
        let Some(record) = chain::image(tree, digest).map_err(ledger_err)? else { return Ok(None) };
        let get = |i: u64| -> Result<Entry> {
            chain::entry(tree, i)
                .map_err(ledger_err)?
                .ok_or_else(|| Error::Storage(format!("ledger entry {i} is missing")))
        };
        let registration = get(record.registered_index)?;
        let revocation = record.revoked_index.map(get).transpose()?;
        Ok(Some(ImageStatus { record, registration, revocation }))
    }

    pub async fn ledger_publisher(&self, id: &str) -> Result<Option<chain::PublisherRecord>> {
        let g = self.ledger_read().await?;
        chain::publisher(g.kv.tree(), id).map_err(ledger_err)
    }

    pub async fn ledger_inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        let g = self.ledger_read().await?;
        chain::inclusion_proof(g.kv.tree(), index, size).map_err(ledger_err)
    }

    /// An inclusion proof for a size this node has already applied (e.g. that of a checkpoint
    /// it just made): no read barrier, the log is append-only up to that size.
    pub fn ledger_inclusion_proof_applied(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        let g = self.ledger_readable()?;
        chain::inclusion_proof(g.kv.tree(), index, size).map_err(ledger_err)
    }

    pub async fn ledger_consistency_proof(&self, from: u64, to: u64) -> Result<(Vec<Hash>, Hash, Hash)> {
        let g = self.ledger_read().await?;
        let tree = g.kv.tree();
        let proof = chain::consistency_proof(tree, from, to).map_err(ledger_err)?;
        Ok((
            proof,
            chain::root_at(tree, from).map_err(ledger_err)?,
            chain::root_at(tree, to).map_err(ledger_err)?,
        ))
    }

    pub async fn ledger_root(&self, size: u64) -> Result<Hash> {
        let g = self.ledger_read().await?;
        chain::root_at(g.kv.tree(), size).map_err(ledger_err)
    }

    pub async fn ledger_block(&self, height: u64) -> Result<edgefabric_ledger::block::Block> {
        let g = self.ledger_read().await?;
        chain::stored_block(g.kv.tree(), height)
            .map_err(ledger_err)?
            .ok_or_else(|| Error::NotFound(format!("no ledger block {height}")))
    }

    // ---- checkpoints ----

    /// The checkpoint of the current head, signed by this node and cosigned by every other
    /// node that answers and has validated the same (size, root). Returns (note, checkpoint).
    pub async fn ledger_checkpoint(&self) -> Result<(String, Checkpoint)> {
        let head = self.ledger_head().await?;
        let nodes = self.map().map_or(1, |m| m.nodes.len());
        if let Some((size, note, sigs, at)) =
            self.ledger.cache.lock().unwrap_or_else(|p| p.into_inner()).clone()
        {
            // Re-collect a partly signed note at most once a second.
            if size == head.log_size && (sigs >= nodes || at.elapsed() < Duration::from_secs(1)) {
                return Ok((note, self.checkpoint_of(&head)));
            }
        }
        let cp = self.checkpoint_of(&head);
        let text = cp.text();
        let own = self.sign_checkpoint(&cp)?;
        let mut lines: BTreeMap<u64, String> = BTreeMap::new();
        lines.insert(self.opts.id, own);
        let peers: Vec<crate::shard::NodeInfo> = self
            .map()
            .map(|m| m.nodes.values().filter(|n| n.id != self.opts.id).cloned().collect())
            .unwrap_or_default();
        let calls = peers.iter().map(|n| async move {
            let Ok(client) = self.channels.client(n.id, &n.addr) else { return None };
            let r = call::<_, String, Error, _, _>(
                client,
                LEDGER_GROUP,
                &(head.log_size, head.log_root),
                Duration::from_millis(1500),
                "ledger_cosign",
                |mut c, f| async move { c.ledger_cosign(f).await },
            )
            .await;
            match r {
                Ok(Ok(line)) => Some((n.clone(), line)),
                Ok(Err(e)) => {
                    tracing::debug!(node = n.id, error = %e, "cosign refused");
                    None
                }
                Err(e) => {
                    tracing::debug!(node = n.id, error = %e, "cosign unreachable");
                    None
                }
            }
        });
        for (n, line) in futures::future::join_all(calls).await.into_iter().flatten() {
            // Keep only a line that verifies under the node's key for this very text.
            if verify_line(&text, &line, n.id, &n.public_key) {
                lines.insert(n.id, line);
            } else {
                tracing::warn!(node = n.id, "a cosignature does not verify; left out");
            }
        }
        let mut note = format!("{text}\n");
        for l in lines.values() {
            note.push_str(l);
        }
        *self.ledger.cache.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((head.log_size, note.clone(), lines.len(), Instant::now()));
        Ok((note, cp))
    }

    fn checkpoint_of(&self, head: &Head) -> Checkpoint {
        Checkpoint {
            origin: self.opts.ledger_origin.clone(),
            size: head.log_size,
            root: head.log_root,
            extensions: vec![],
        }
    }

    /// Signs a checkpoint this node has validated, and remembers the largest one it signed.
    fn sign_checkpoint(&self, cp: &Checkpoint) -> Result<String> {
        let text = cp.text();
        let line = note::signature_line(&text, &key_name(self.opts.id), &self.opts.identity)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let _guard = self.ledger.file.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.opts.data_dir.join(CHECKPOINT_FILE);
        let stored = read_own_checkpoint(&path, self.opts.id, &self.opts.identity).ok().flatten();
        if stored.is_none_or(|s| s.size < cp.size) {
            // The chain first: sled is not flushed on apply, and a checkpoint file ahead of
            // the stored chain would read as truncation to `ledger verify` after a crash.
            self.db.flush()?;
            write_durably(&path, format!("{text}\n{line}").as_bytes())?;
        }
        Ok(line)
    }

    /// A peer asks this node to cosign (size, root): only if this node's own validated chain
    /// has that root at that size.
    pub(crate) async fn ledger_cosign(&self, size: u64, root: Hash) -> Result<String> {
        let g = self.ledger_readable()?;
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let have = chain::head(g.kv.tree()).map_err(ledger_err)?.map_or(0, |h| h.log_size);
            if have >= size {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Unavailable(format!(
                    "this node has validated {have} entries, not {size} yet"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mine = chain::root_at(g.kv.tree(), size).map_err(ledger_err)?;
        if mine != root {
            tracing::error!(size, "asked to cosign a root that differs from this node's validated log");
            return Err(Error::invalid("root", format!("differs from this node's log at size {size}")));
        }
        let cp = Checkpoint { origin: self.opts.ledger_origin.clone(), size, root, extensions: vec![] };
        self.sign_checkpoint(&cp)
    }

    // ---- start-up verification ----

    async fn verify_ledger_at_start(self: Arc<Self>) {
        let health = self.verify_ledger_inner().await;
        match &health {
            Health::Corrupt(why) => {
                tracing::error!(reason = %why, "LEDGER STORE FAILED VERIFICATION: ledger reads are refused")
            }
            _ => tracing::info!(full = self.opts.verify_ledger_full, "ledger store verified"),
        }
        self.ledger.set_health(health);
    }

    async fn verify_ledger_inner(&self) -> Health {
        let Ok(g) = self.ledger_group() else {
            return Health::Corrupt("the ledger group did not start".into());
        };
        let tree = g.kv.tree().clone();
        let genesis = self.ledger.ctx.genesis.clone();
        let full = self.opts.verify_ledger_full;
        let r = tokio::task::spawn_blocking(move || {
            if full {
                chain::verify_chain(&tree, genesis.as_deref())
            } else {
                chain::verify_head(&tree)
            }
        })
        .await;
        let head = match r {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return Health::Corrupt(e.to_string()),
            Err(e) => return Health::Corrupt(format!("verification task: {e}")),
        };
        // The latest checkpoint this node signed: the chain must still have its root (a chain
        // cut short or rewritten behind the node's back fails here). The state machine may be
        // behind after a crash (it is not fsynced on apply) until raft has re-applied the log,
        // so wait for it to reach the checkpoint's size before judging.
        let path = self.opts.data_dir.join(CHECKPOINT_FILE);
        let cp = match read_own_checkpoint(&path, self.opts.id, &self.opts.identity) {
            Ok(Some(cp)) => cp,
            Ok(None) => return Health::Verified,
            Err(e) => return Health::Corrupt(format!("{}: {e}", path.display())),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut size = head.map_or(0, |h| h.log_size);
        while size < cp.size {
            if Instant::now() > deadline || *self.shutdown.borrow() {
                return Health::Corrupt(format!(
                    "the chain holds {size} entries, but this node signed a checkpoint of {}",
                    cp.size
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            size = chain::head(g.kv.tree()).ok().flatten().map_or(0, |h| h.log_size);
        }
        match chain::root_at(g.kv.tree(), cp.size) {
            Ok(root) if root == cp.root => Health::Verified,
            Ok(_) => Health::Corrupt(format!(
                "the chain's root at size {} differs from the checkpoint this node signed",
                cp.size
            )),
            Err(e) => Health::Corrupt(e.to_string()),
        }
    }
}

/// Whether `line` is a valid signature by node `id` (key `public_key`, base64) over `text`.
fn verify_line(text: &str, line: &str, id: u64, public_key: &str) -> bool {
    let Ok(key) = PublicKey::from_base64(public_key) else { return false };
    let trusted = [TrustedKey { name: key_name(id), key }];
    match note::Note::parse(&format!("{text}\n{line}")) {
        Ok(n) => n.verify(&trusted, 1).is_ok(),
        Err(_) => false,
    }
}

/// The checkpoint in `path`, if any, after checking this node's own signature on it.
pub fn read_own_checkpoint(
    path: &std::path::Path,
    id: u64,
    identity: &Identity,
) -> Result<Option<Checkpoint>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let trusted = [TrustedKey { name: key_name(id), key: identity.public_key() }];
    let (cp, _) = note::verify_checkpoint(&text, &trusted, 1)
        .map_err(|e| Error::Storage(format!("the stored checkpoint does not verify: {e}")))?;
    Ok(Some(cp))
}

fn write_durably(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The node ids that are current members of the ledger.
fn ledger_members(tree: &sled::Tree) -> Vec<u64> {
    tree.scan_prefix(b"Ln")
        .keys()
        .filter_map(|k| k.ok())
        .filter_map(|k| k.get(2..10).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes))
        .collect()
}
