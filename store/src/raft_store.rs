//! openraft storage glue: [`LogStore`] over the WAL in `log.rs`, [`StateMachineStore`] over the
//! KV engine in `kv.rs`. Thin by design; the engines hold the logic and are tested directly.
//!
//! Snapshots: a snapshot is the KV store's full image. It is written to `snapshot.bin` (temp
//! file, `fsync`, `rename`, directory `fsync`) *before* openraft may purge the log behind it,
//! so "snapshot file + log entries after it" always rebuilds the state machine. On open, if
//! sled is behind the snapshot (sled is not fsynced on apply), the snapshot is imported again;
//! openraft then re-applies committed entries from the log (`read_committed`).
//!
//! A snapshot this node builds keeps the tree's image in `snapshot.bin` and the time series
//! as a checkpoint of the engine's files: hard links (`*.ts-data`, `*.ts-head`) and their
//! lengths, named in `snapshot.bin`. The engine's files are append-only and compaction renames
//! new ones in, so a link's prefix is an immutable copy that costs no bytes until the engine
//! moves on. Whoever reads the snapshot (a follower being sent it, a re-import) gets the same
//! full image as before: tree entries, then the engine's under `T`. Links no snapshot names
//! (a crash between writing a new snapshot and deleting the old one's) are removed at open.

use std::fmt::{Debug, Display};
use std::io::{Cursor, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};

use edgefabric_tsdb::engine::{Checkpoint, CHECKPOINT_DATA, CHECKPOINT_HEAD};

use crate::codec;
use crate::kv::{Image, KvStore};
use crate::log::{GroupId, LogEngine};
use crate::types::{Command, Response};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The raft types of a KV group.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
type SErr = StorageError<NodeId>;

fn any(e: impl Display) -> AnyError {
    AnyError::error(e.to_string())
}

/// How far a group's log is durable on this node, as its own appends report it: the
/// transport sends a leader's entries only up to here (`Network::append_entries`).
///
/// Why: an entry must be in this node's synced log before any other node has it. openraft 0.9
/// already works that way (a leader waits for its append's sync before it replicates), and
/// the audit trail relies on it: a KV write's received record is written to the same file just
/// before the entry, unsynced, and must be durable before the write can commit anywhere
/// (`Node::with_received`). Checking it here keeps that true whatever openraft does.
pub struct Flushed {
    engine: LogEngine,
    state: std::sync::Mutex<FlushedState>,
}

struct FlushedState {
    /// Entries up to this index were synced by this node's appends.
    upto: u64,
    /// Bumped by each truncation, so that the sync of an append made before it cannot mark
    /// the entries that replaced the truncated ones as durable.
    generation: u64,
}

impl Flushed {
    /// `upto`: the last index in the log at start, which the node has synced (the audit
    /// queue's open syncs the whole file before any group starts).
    pub fn new(engine: LogEngine, upto: u64) -> Arc<Self> {
        Arc::new(Flushed { engine, state: std::sync::Mutex::new(FlushedState { upto, generation: 0 }) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FlushedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    fn synced(&self, generation: u64, last: u64) {
        let mut s = self.lock();
        if s.generation == generation {
            s.upto = s.upto.max(last);
        }
    }

    fn truncated(&self, since: u64) {
        let mut s = self.lock();
        s.generation += 1;
        s.upto = s.upto.min(since.saturating_sub(1));
    }

    /// Whether the entry at `index` is durable in this node's log.
    pub fn covers(&self, index: u64) -> bool {
        self.lock().upto >= index
    }

    /// Returns once the entry at `index` is durable here (at once when it already is);
    /// `false` if it was truncated meanwhile.
    pub async fn wait_for(&self, index: u64) -> bool {
        if self.covers(index) {
            return true;
        }
        // The append's sync was asked for before this one: when this one reports, that one's
        // callback has run.
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.engine.sync(move |r| {
            let _ = tx.send(r.is_ok());
        });
        matches!(rx.await, Ok(true)) && self.covers(index)
    }
}

/// The raft log of one group: a handle on the node's shared [`LogEngine`].
#[derive(Clone)]
pub struct LogStore {
    engine: LogEngine,
    group: GroupId,
    flushed: Arc<Flushed>,
}

impl LogStore {
    pub fn new(engine: LogEngine, group: GroupId, flushed: Arc<Flushed>) -> Self {
        LogStore { engine, group, flushed }
    }

    /// Writes encoded entries and calls `done` once they are synced, after marking them
    /// durable in `flushed`: from then on the transport may send them.
    fn write_entries(
        &self,
        batch: Vec<(u64, Vec<u8>)>,
        done: impl FnOnce(std::io::Result<()>) + Send + 'static,
    ) -> crate::Result<()> {
        let last = batch.last().map_or(0, |e| e.0);
        let generation = self.flushed.generation();
        self.engine.append(self.group, batch)?;
        let flushed = self.flushed.clone();
        self.engine.sync(move |r| {
            if r.is_ok() {
                flushed.synced(generation, last);
            }
            done(r)
        });
        Ok(())
    }

    /// Removes entries from `since` on (and from what `flushed` covers first).
    fn truncate_entries(&self, since: u64) -> crate::Result<()> {
        self.flushed.truncated(since);
        self.engine.truncate(self.group, since)
    }

    async fn sync(&self) -> Result<(), std::io::Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.engine.sync(move |r| {
            let _ = tx.send(r);
        });
        rx.await.map_err(|_| std::io::Error::other("raft log syncer has stopped"))?
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        self.engine
            .entries(self.group, range)
            .map_err(|e| StorageIOError::read_logs(any(e)))?
            .into_iter()
            .map(|(i, bytes)| {
                codec::decode(&bytes).map_err(|e| StorageIOError::read_log_at_index(i, any(e)).into())
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let last_purged_log_id: Option<LogId<NodeId>> = match self.engine.purged(self.group) {
            Some((_, bytes)) => Some(codec::decode(&bytes).map_err(|e| StorageIOError::read_logs(any(e)))?),
            None => None,
        };
        let last = self.engine.last_entry(self.group).map_err(|e| StorageIOError::read_logs(any(e)))?;
        let last_log_id = match last {
            Some((_, bytes)) => {
                let e: Entry<TypeConfig> =
                    codec::decode(&bytes).map_err(|e| StorageIOError::read_logs(any(e)))?;
                Some(e.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// Durable before it returns: raft must never forget a vote it granted.
    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        let bytes = codec::encode(vote).map_err(|e| StorageIOError::write_vote(any(e)))?;
        self.engine.save_vote(self.group, bytes).map_err(|e| StorageIOError::write_vote(any(e)))?;
        self.sync().await.map_err(|e| StorageIOError::write_vote(any(e)))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        match self.engine.vote(self.group) {
            Some(bytes) => Ok(Some(codec::decode(&bytes).map_err(|e| StorageIOError::read_vote(any(e)))?)),
            None => Ok(None),
        }
    }

    /// Not synced on its own: it is an optimization (re-apply on start), and a lost record only
    /// means re-applying less; a synced later record makes it durable too.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        let bytes = codec::encode(&committed).map_err(|e| StorageIOError::write(any(e)))?;
        self.engine.save_committed(self.group, bytes).map_err(|e| StorageIOError::write(any(e)))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        match self.engine.committed(self.group) {
            Some(bytes) => Ok(codec::decode(&bytes).map_err(|e| StorageIOError::read(any(e)))?),
            None => Ok(None),
        }
    }

    /// Written now, reported through `callback` once `fdatasync`ed (group commit).
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = vec![];
        for e in entries {
            let bytes =
                codec::encode(&e).map_err(|err| StorageIOError::write_log_entry(e.log_id, any(err)))?;
            batch.push((e.log_id.index, bytes));
        }
        self.write_entries(batch, move |r| callback.log_io_completed(r))
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        self.truncate_entries(log_id.index).map_err(|e| StorageIOError::write_logs(any(e)))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let bytes = codec::encode(&log_id).map_err(|e| StorageIOError::write_logs(any(e)))?;
        self.engine.purge(self.group, log_id.index, bytes).map_err(|e| StorageIOError::write_logs(any(e)))?;
        Ok(())
    }
}

/// What the state machine remembers about raft, stored atomically with each apply.
type RaftMeta = (Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>);

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, BasicNode>,
    /// The encoded image: the tree's entries, and the engine's too when `ts` is `None`.
    data: Vec<u8>,
    /// The time series, as a checkpoint of the engine's files in the group's directory.
    ts: Option<Checkpoint>,
}

/// `snapshot.bin` as versions before checkpoints wrote it (always a full image).
#[derive(Deserialize)]
struct SnapshotFileV1 {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

const SNAPSHOT_FILE: &str = "snapshot.bin";

fn read_snapshot_file(dir: &Path) -> Result<Option<SnapshotFile>, crate::Error> {
    let path = dir.join(SNAPSHOT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(codec::decode_snapshot(&bytes).or_else(|e| {
            codec::decode_snapshot::<SnapshotFileV1>(&bytes)
                .map(|v1| SnapshotFile { meta: v1.meta, data: v1.data, ts: None })
                .map_err(|_| e)
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The snapshot's full image, encoded: what followers are sent and what a re-import reads.
fn full_image(dir: &Path, file: &SnapshotFile) -> Result<Vec<u8>, crate::Error> {
    let Some(cp) = &file.ts else { return Ok(file.data.clone()) };
    let mut image: Image = codec::decode_snapshot(&file.data)?;
    let ts = cp.read(dir).map_err(|e| crate::Error::Storage(format!("snapshot's time series: {e}")))?;
    KvStore::append_ts(&mut image, ts);
    codec::encode(&image)
}

/// Removes checkpoint links in `dir` that `keep` does not name.
fn remove_stale_links(dir: &Path, keep: Option<&Checkpoint>) -> Result<(), crate::Error> {
    let mut removed = false;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().to_string();
        let is_link = [CHECKPOINT_DATA, CHECKPOINT_HEAD].iter().any(|s| name.ends_with(&format!(".{s}")));
        if is_link && !keep.is_some_and(|c| c.owns(&name)) {
            std::fs::remove_file(dir.join(&name))?;
            removed = true;
        }
    }
    if removed {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn write_snapshot_file(dir: &Path, file: &SnapshotFile) -> Result<(), crate::Error> {
    let bytes = codec::encode(file)?;
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// A snapshot's meta and its full image, encoded.
pub type SnapshotImage = (SnapshotMeta<NodeId, BasicNode>, Vec<u8>);

/// The group's current snapshot in `dir` as a full image: what a follower is sent, and what a
/// backup holds. Blocking (reads every chunk of the time series back).
pub fn read_snapshot_image(dir: &Path) -> Result<Option<SnapshotImage>, crate::Error> {
    let mut attempt = 0;
    loop {
        let Some(f) = read_snapshot_file(dir)? else { return Ok(None) };
        match full_image(dir, &f) {
            Ok(full) => return Ok(Some((f.meta.clone(), full))),
            // A build replaced the file and removed the links it named between the two
            // reads: read the new one.
            Err(_) if attempt < 3 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Writes `dir/snapshot.bin` from a full image (a group restored from a backup, whose reader
/// has decoded the image already). The group then opens from it as from a snapshot installed
/// by a leader: the state machine is imported, and the (empty) log starts after it.
pub fn write_snapshot_image(
    dir: &Path,
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
) -> Result<(), crate::Error> {
    std::fs::create_dir_all(dir)?;
    write_snapshot_file(dir, &SnapshotFile { meta, data, ts: None })
}

/// The state machine of one group.
pub struct StateMachineStore {
    kv: Arc<KvStore>,
    dir: PathBuf,
    snapshot_seq: u64,
}

impl StateMachineStore {
    /// Opens the state machine of `group`: its tree in the node's sled database, its snapshot at
    /// `dir/snapshot.bin`; re-imports the snapshot if sled is behind it.
    pub fn open(
        dir: &Path,
        db: &sled::Db,
        group: GroupId,
        ledger: Option<Arc<crate::kv::LedgerCtx>>,
    ) -> Result<Self, crate::Error> {
        Self::open_checked(dir, db, group, ledger, false)
    }

    /// `open`, first emptying the state machine (tree and time series) when `rebuild`: after
    /// a stop that was not clean it may hold part of an apply (`KvStore::apply`). It then
    /// comes back from the snapshot (below) and the log after it (openraft re-applies).
    pub fn open_checked(
        dir: &Path,
        db: &sled::Db,
        group: GroupId,
        ledger: Option<Arc<crate::kv::LedgerCtx>>,
        rebuild: bool,
    ) -> Result<Self, crate::Error> {
        std::fs::create_dir_all(dir)?;
        let mut kv = KvStore::open(db, group, dir)?;
        if let Some(ctx) = ledger {
            kv = kv.with_ledger(ctx);
        }
        if rebuild {
            tracing::info!(
                group,
                "not stopped cleanly: rebuilding the state machine from its snapshot and log"
            );
            kv.import(&[])?;
        }
        let kv = Arc::new(kv);
        let sm = StateMachineStore { kv, dir: dir.to_path_buf(), snapshot_seq: 0 };
        let snap = read_snapshot_file(dir)?;
        remove_stale_links(dir, snap.as_ref().and_then(|s| s.ts.as_ref()))?;
        if let Some(snap) = snap {
            let (applied, _) = sm.meta()?;
            if applied < snap.meta.last_log_id {
                tracing::info!(?applied, snapshot = ?snap.meta.last_log_id, "state machine behind snapshot; re-importing");
                sm.import(&snap.meta, &full_image(dir, &snap)?)?;
            }
        }
        Ok(sm)
    }

    /// The KV engine, for reads.
    pub fn kv(&self) -> Arc<KvStore> {
        self.kv.clone()
    }

    fn meta(&self) -> Result<RaftMeta, crate::Error> {
        match self.kv.raft_meta()? {
            Some(bytes) => codec::decode(&bytes),
            None => Ok((None, StoredMembership::default())),
        }
    }

    fn import(&self, meta: &SnapshotMeta<NodeId, BasicNode>, data: &[u8]) -> Result<(), crate::Error> {
        let mut image: Image = codec::decode_snapshot(data)?;
        // The image carries the leader's raft meta; the snapshot's meta is authoritative.
        image.retain(|(k, _)| k.as_slice() != b"mraft");
        let raft_meta: RaftMeta = (meta.last_log_id, meta.last_membership.clone());
        image.push((b"mraft".to_vec(), codec::encode(&raft_meta)?));
        self.kv.import(&image)?;
        // A ledger snapshot is a whole chain from another node: validate every block of it, as
        // if it had been applied here, before serving from it.
        if let Some(ctx) = self.kv.ledger_ctx() {
            edgefabric_ledger::chain::verify_chain(self.kv.tree(), ctx.genesis.as_deref()).map_err(|e| {
                tracing::error!(error = %e, "REFUSED a ledger snapshot that does not verify");
                crate::Error::Storage(format!("ledger snapshot: {e}"))
            })?;
        }
        Ok(())
    }
}

impl StateMachineStore {
    fn apply_segment(
        &self,
        cmds: &[(u64, Option<&Command>)],
        last: LogId<NodeId>,
        membership: &StoredMembership<NodeId, BasicNode>,
    ) -> Result<Vec<Response>, SErr> {
        let meta: RaftMeta = (Some(last), membership.clone());
        let meta = codec::encode(&meta).map_err(|e| StorageIOError::apply(last, any(e)))?;
        self.kv.apply(cmds, &meta).map_err(|e| StorageIOError::apply(last, any(e)).into())
    }

    /// Writes the starting snapshot of a child shard split off at `at` (hashes `[at, end]`):
    /// its keys, at log index `split.index` (so its revisions keep growing), with this group's
    /// voters. Written (and fsynced) before the split is applied here, so the keys are never
    /// only in memory. Skipped if the child already has a snapshot: on a replay of the split
    /// the child may have moved on, and its newer snapshot must not be replaced.
    fn write_child_snapshot(
        &self,
        split: LogId<NodeId>,
        at: u64,
        end: u64,
        child: GroupId,
        membership: &StoredMembership<NodeId, BasicNode>,
    ) -> Result<(), crate::Error> {
        let dir = self.dir.parent().unwrap_or(&self.dir).join(format!("group-{child}"));
        if dir.join(SNAPSHOT_FILE).exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&dir)?;
        if let Some(parent) = dir.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        let image = self.kv.split_image(at, end)?;
        // Term 0: the child's first leader (term >= 1) appends after it.
        let log_id = LogId::new(openraft::CommittedLeaderId::new(0, 0), split.index);
        let meta = SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: StoredMembership::new(Some(log_id), membership.membership().clone()),
            snapshot_id: format!("split-{}-{}", split.index, child),
        };
        write_snapshot_file(&dir, &SnapshotFile { meta, data: codec::encode(&image)?, ts: None })
    }
}

pub struct SnapshotBuilder {
    dir: PathBuf,
    meta: RaftMeta,
    /// The tree's image and the engine's checkpoint; Err if taking them failed: the build then
    /// fails instead of snapshotting a wrong image.
    image: Result<(Image, Checkpoint), String>,
    id: String,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let (image, cp) = self.image.as_ref().map_err(|e| StorageIOError::write_snapshot(None, any(e)))?;
        let data = codec::encode(image).map_err(|e| StorageIOError::write_snapshot(None, any(e)))?;
        let meta = SnapshotMeta {
            last_log_id: self.meta.0,
            last_membership: self.meta.1.clone(),
            snapshot_id: self.id.clone(),
        };
        let file = SnapshotFile { meta: meta.clone(), data, ts: Some(cp.clone()) };
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            // A snapshot installed from the leader while this one was being built is newer:
            // keep it (this one's links become stale and go below).
            let current = read_snapshot_file(&dir)?;
            let keep = match current {
                Some(c) if c.meta.last_log_id > file.meta.last_log_id => c.ts,
                _ => {
                    write_snapshot_file(&dir, &file)?;
                    file.ts
                }
            };
            // The snapshot file first, then the links it no longer names: a crash in between
            // leaves extra links, which the next open removes. A reader that read the old
            // file meanwhile retries (`get_current_snapshot`).
            remove_stale_links(&dir, keep.as_ref())
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, any(e)))?
        .map_err(|e| StorageIOError::write_snapshot(None, any(e)))?;
        // No data: openraft (pinned 0.9.25) keeps only the meta of a built snapshot
        // (`core/sm/worker.rs`: `Response::BuildSnapshot(snap.meta)`), and what followers are
        // sent comes from `get_current_snapshot`. Rebuilding the full image here would read
        // every chunk back at every snapshot.
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(Vec::new())) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<RaftMeta, SErr> {
        self.meta().map_err(|e| StorageIOError::read_state_machine(any(e)).into())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(vec![]);
        }
        let (_, mut membership) = self.meta().map_err(|e| StorageIOError::read_state_machine(any(e)))?;
        let mut out = Vec::with_capacity(entries.len());
        let mut cmds = Vec::with_capacity(entries.len());
        let mut seg_last = None;
        for e in &entries {
            match &e.payload {
                EntryPayload::Blank => cmds.push((e.log_id.index, None)),
                EntryPayload::Normal(Command::Split { at, end, child, .. }) => {
                    // Everything before the split first, so the child's image reflects it.
                    if let Some(l) = seg_last.take() {
                        out.extend(self.apply_segment(&cmds, l, &membership)?);
                        cmds.clear();
                    }
                    self.write_child_snapshot(e.log_id, *at, *end, *child, &membership)
                        .map_err(|err| StorageIOError::apply(e.log_id, any(err)))?;
                    let payload = match &e.payload {
                        EntryPayload::Normal(cmd) => Some(cmd),
                        _ => None,
                    };
                    out.extend(self.apply_segment(&[(e.log_id.index, payload)], e.log_id, &membership)?);
                    continue;
                }
                EntryPayload::Normal(cmd) => cmds.push((e.log_id.index, Some(cmd))),
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(e.log_id), m.clone());
                    cmds.push((e.log_id.index, None));
                }
            }
            seg_last = Some(e.log_id);
        }
        if let Some(l) = seg_last {
            out.extend(self.apply_segment(&cmds, l, &membership)?);
        }
        debug_assert_eq!(out.len(), entries.len());
        Ok(out)
    }

    /// Takes the image here, on the state-machine task, so it is consistent with `meta`; the
    /// builder then writes it to disk off this task.
    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let id = |meta: &RaftMeta| match meta.0 {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.snapshot_seq),
            None => format!("0-0-{}", self.snapshot_seq),
        };
        // Link names must not collide with the current snapshot's, also after a restart
        // (which resets `snapshot_seq`): the clock makes them unique.
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let (meta, image) = match self.meta() {
            Ok(meta) => {
                let tag = format!("snap-{}-{nanos}", id(&meta));
                let taken = self.kv.export_tree().map_err(|e| e.to_string()).and_then(|image| {
                    let cp = self.kv.ts().checkpoint(&self.dir, &tag).map_err(|e| e.to_string())?;
                    Ok((image, cp))
                });
                (meta, taken)
            }
            Err(e) => (RaftMeta::default(), Err(e.to_string())),
        };
        let id = id(&meta);
        SnapshotBuilder { dir: self.dir.clone(), meta, image, id }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let data = snapshot.into_inner();
        let sig = Some(meta.signature());
        // Validate before touching anything: a bad snapshot must not wipe the store.
        codec::decode_snapshot::<Image>(&data)
            .map_err(|e| StorageIOError::read_snapshot(sig.clone(), any(e)))?;
        let file = SnapshotFile { meta: meta.clone(), data, ts: None };
        write_snapshot_file(&self.dir, &file)
            .map_err(|e| StorageIOError::write_snapshot(sig.clone(), any(e)))?;
        self.import(meta, &file.data).map_err(|e| StorageIOError::write_snapshot(sig, any(e)))?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let dir = self.dir.clone();
        let got = tokio::task::spawn_blocking(move || read_snapshot_image(&dir))
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, any(e)))?
            .map_err(|e| StorageIOError::read_snapshot(None, any(e)))?;
        Ok(got.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes entries `range` to `log` and waits for the sync to report.
    async fn write_synced(log: &LogStore, range: std::ops::RangeInclusive<u64>) {
        let batch = range.map(|i| (i, vec![i as u8; 8])).collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        log.write_entries(batch, move |r| {
            let _ = tx.send(r);
        })
        .unwrap();
        rx.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn flushed_covers_synced_entries_only_and_forgets_truncated_ones() {
        let dir = tempfile::tempdir().unwrap();
        let engine = LogEngine::open(dir.path()).unwrap();
        let flushed = Flushed::new(engine.clone(), 0);
        let log = LogStore::new(engine.clone(), 7, flushed.clone());
        assert!(!flushed.covers(1));
        write_synced(&log, 1..=3).await;
        assert!(flushed.covers(3) && !flushed.covers(4));
        // A truncation takes the truncated entries out at once.
        log.truncate_entries(2).unwrap();
        assert!(flushed.covers(1) && !flushed.covers(2));
        // The sync of an append made before the truncation must not mark the entries that
        // replaced the truncated ones: they were written after that append's sync was asked.
        let stale = flushed.generation() - 1;
        flushed.synced(stale, 5);
        assert!(!flushed.covers(2), "a stale sync raised what is durable");
        write_synced(&log, 2..=4).await;
        assert!(flushed.covers(4));
        // Waiting: at once for what is covered, and `false` (after a sync) for what is not there.
        assert!(flushed.wait_for(4).await);
        assert!(!flushed.wait_for(9).await);
        // Another group's appends are another group's.
        let other = LogStore::new(engine.clone(), 8, Flushed::new(engine, 0));
        write_synced(&other, 1..=20).await;
        assert!(!flushed.covers(5));
    }

    fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Normal(cmd),
        }
    }

    /// Samples `from..from+n` (seconds) of series `s0`..`s2`; values that do not compress to
    /// nothing (a regular ramp would), so the image is clearly bigger than the snapshot file.
    fn ts_write(from: i64, n: i64) -> Command {
        let points = (0..3)
            .flat_map(|s| {
                (from..from + n).map(move |t| edgefabric_tsdb::line::Point {
                    labels: vec![("__name__".into(), "m".into()), ("s".into(), format!("s{s}"))],
                    time_ms: t * 1000,
                    value: (t as f64 * 0.37 + s as f64).sin(),
                })
            })
            .collect();
        let batch = edgefabric_tsdb::batch::WriteBatch::from_points("default", points).unwrap().encode();
        Command::TsWrite { shard: 0, batch }
    }

    fn links(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".ts-data") || n.ends_with(".ts-head"))
            .collect();
        v.sort();
        v
    }

    fn samples(sm: &StateMachineStore) -> Vec<usize> {
        let m = edgefabric_tsdb::matcher::Matcher::eq("__name__", "m");
        let got = sm.kv().ts().select("default", &[m], i64::MIN, i64::MAX).unwrap();
        got.iter().map(|s| s.samples.len()).collect()
    }

    /// Snapshots keep the time series as hard links of the engine's files: the snapshot file
    /// stays small, reading it gives the state as of the snapshot even after the engine moved
    /// on and compacted, old links go when a newer snapshot is written, and a store behind the
    /// snapshot re-imports from the links.
    #[tokio::test]
    async fn snapshots_link_the_time_series_instead_of_copying_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("group-1");
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut sm = StateMachineStore::open(&dir, &db, 1, None).unwrap();
        sm.apply(vec![entry(1, ts_write(0, 200)), entry(2, ts_write(200, 200))]).await.unwrap();
        assert_eq!(samples(&sm), vec![400; 3]);

        let first = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        // What followers are sent: exactly the store's image as of the snapshot.
        let at_build = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(at_build.meta, first.meta);
        let first_image: Image = codec::decode(at_build.snapshot.get_ref()).unwrap();
        assert_eq!(first_image, sm.kv().export().unwrap());
        assert!(first_image.iter().any(|(k, _)| k.starts_with(b"Tc")), "the image carries the chunks");
        let file_len = std::fs::metadata(dir.join(SNAPSHOT_FILE)).unwrap().len() as usize;
        assert!(file_len < at_build.snapshot.get_ref().len() / 4, "snapshot.bin {file_len} bytes: a copy?");
        let first_links = links(&dir);
        assert_eq!(first_links.len(), 2);

        // The engine moves on and rewrites its files; the snapshot still reads as it was.
        sm.apply(vec![entry(3, ts_write(400, 200))]).await.unwrap();
        sm.kv().ts().flush().unwrap();
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, first.meta);
        assert_eq!(current.snapshot.get_ref(), at_build.snapshot.get_ref());

        // A newer snapshot replaces the old links.
        let second = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let second_links = links(&dir);
        assert_eq!(second_links.len(), 2);
        assert!(second_links.iter().all(|l| !first_links.contains(l)), "{second_links:?}");

        // A store behind the snapshot (fresh sled) imports it from the links.
        drop(sm);
        let db2 = sled::Config::new().temporary(true).open().unwrap();
        let sm = StateMachineStore::open(&dir, &db2, 1, None).unwrap();
        assert_eq!(samples(&sm), vec![600; 3]);
        assert_eq!(sm.meta().unwrap().0, second.meta.last_log_id);

        // A damaged link is an error, never a wrong image.
        let mut sm = sm;
        let snap = read_snapshot_file(&dir).unwrap().unwrap();
        let cp = snap.ts.clone().unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(&cp.data.0))
            .unwrap()
            .set_len(cp.data.1 - 1)
            .unwrap();
        assert!(sm.get_current_snapshot().await.is_err());
    }

    /// A group past the 64 MiB message limit (66 values of 1 MiB) still snapshots, is sent to
    /// a follower and installed there, and re-imports at open: these decodes were capped at
    /// the message limit, so such a shard could never catch up a follower, and a node whose
    /// sled was behind its snapshot could not start.
    #[tokio::test]
    async fn a_snapshot_larger_than_a_message_installs_and_reimports() {
        let tmp = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut sm = StateMachineStore::open(&tmp.path().join("group-1"), &db, 1, None).unwrap();
        let big = "v".repeat(1 << 20);
        let puts: Vec<_> = (0..66u64)
            .map(|i| {
                let op = crate::types::Op::Put {
                    ns: "default".into(),
                    key: format!("k{i}"),
                    value: big.clone().into(),
                    cas: None,
                };
                entry(i + 1, Command::Batch(vec![op]))
            })
            .collect();
        sm.apply(puts).await.unwrap();
        let built = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let sent = sm.get_current_snapshot().await.unwrap().unwrap();
        assert!(sent.snapshot.get_ref().len() > codec::MAX_DECODE_BYTES);

        let db2 = sled::Config::new().temporary(true).open().unwrap();
        let dir2 = tmp.path().join("follower");
        let mut follower = StateMachineStore::open(&dir2, &db2, 1, None).unwrap();
        follower.install_snapshot(&built.meta, sent.snapshot).await.unwrap();
        assert_eq!(follower.kv().key_count().unwrap(), 66);
        drop(follower);
        // Its sled lost everything (a crash before sled flushed): it imports again at open.
        let db3 = sled::Config::new().temporary(true).open().unwrap();
        let reopened = StateMachineStore::open(&dir2, &db3, 1, None).unwrap();
        assert_eq!(reopened.kv().key_count().unwrap(), 66);
        assert_eq!(reopened.meta().unwrap().0, built.meta.last_log_id);
    }

    use crate::kv::data_key;

    fn put(i: u64) -> Entry<TypeConfig> {
        let op = crate::types::Op::Put {
            ns: "default".into(),
            key: format!("k{i}"),
            value: b"v".to_vec(),
            cas: None,
        };
        entry(i, Command::Batch(vec![op]))
    }

    #[tokio::test]
    async fn a_rebuild_drops_partial_applies_and_comes_back_from_the_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let dir = tmp.path().join("group-1");
        let mut sm = StateMachineStore::open(&dir, &db, 1, None).unwrap();
        sm.apply((1..=3).map(put).collect::<Vec<_>>()).await.unwrap();
        // What a crash in the middle of an apply can leave: a key without its count or meta.
        sm.kv().tree().insert(data_key("default", "half"), b"x".to_vec()).unwrap();
        drop(sm);
        // Opened as after a clean stop: the tree is trusted as it is.
        let same = StateMachineStore::open_checked(&dir, &db, 1, None, false).unwrap();
        assert!(same.kv().tree().get(data_key("default", "half")).unwrap().is_some());
        drop(same);
        // Not clean and no snapshot: empty, for openraft to re-apply the whole log.
        let mut rebuilt = StateMachineStore::open_checked(&dir, &db, 1, None, true).unwrap();
        assert!(rebuilt.kv().tree().get(data_key("default", "half")).unwrap().is_none());
        assert_eq!(rebuilt.meta().unwrap().0, None);
        assert_eq!(rebuilt.kv().key_count().unwrap(), 0);
        // With a snapshot: back to it exactly.
        rebuilt.apply((1..=4).map(put).collect::<Vec<_>>()).await.unwrap();
        let built = rebuilt.get_snapshot_builder().await.build_snapshot().await.unwrap();
        rebuilt.apply(vec![put(5)]).await.unwrap();
        rebuilt.kv().tree().insert(data_key("default", "half"), b"x".to_vec()).unwrap();
        drop(rebuilt);
        let back = StateMachineStore::open_checked(&dir, &db, 1, None, true).unwrap();
        assert_eq!(back.meta().unwrap().0, built.meta.last_log_id);
        assert_eq!(back.kv().key_count().unwrap(), 4);
        assert!(back.kv().get("default", "k4").unwrap().is_some());
        assert!(back.kv().get("default", "k5").unwrap().is_none(), "an apply after the snapshot survived");
        assert!(back.kv().tree().get(data_key("default", "half")).unwrap().is_none());
    }

    /// `snapshot.bin` written before checkpoints existed (no `ts` field) still reads.
    #[test]
    fn an_old_snapshot_file_still_reads() {
        #[derive(Serialize)]
        struct V1 {
            meta: SnapshotMeta<NodeId, BasicNode>,
            data: Vec<u8>,
        }
        let tmp = tempfile::tempdir().unwrap();
        let image: Image = vec![(b"k".to_vec(), b"v".to_vec())];
        let v1 = V1 { meta: SnapshotMeta::default(), data: codec::encode(&image).unwrap() };
        std::fs::write(tmp.path().join(SNAPSHOT_FILE), codec::encode(&v1).unwrap()).unwrap();
        let f = read_snapshot_file(tmp.path()).unwrap().unwrap();
        assert!(f.ts.is_none());
        assert_eq!(full_image(tmp.path(), &f).unwrap(), v1.data);
    }
}
