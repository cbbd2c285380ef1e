//! Backup and restore of one node's data.
//!
//! A backup is taken from a running node: every raft group it hosts is snapshotted and its
//! snapshot's full image written out (the same image a lagging follower is sent), followed by
//! the node's local queues — audit records not yet known to be in the ledger, and time-series
//! parts waiting to be forwarded (store-and-forward). Each group is consistent at its own
//! applied index; groups are not frozen together, and need not be: see below.
//!
//! Restore writes a new data directory from a backup, offline, for the same node id:
//! - each group gets the image as its `snapshot.bin` and a `REJOIN` marker. The restored
//!   replica is behind what it once acknowledged, so it may neither vote nor campaign until
//!   the group's leader has demoted it, caught it up and promoted it again (`node.rs`,
//!   "Data loss") — unless it is the group's only replica (a site-local shard at a one-node
//!   site, a one-node cluster): then the group comes back as backed up, and writes to it after
//!   the backup are lost, as with any restore of the only copy;
//! - the directory gets a new instance id (the node makes one when it starts), so groups
//!   assigned to the node after the backup are recognised as lost too, and its new audit
//!   records start a new sequence in the ledger;
//! - the queued audit records keep their old (instance, seq) and are shipped under the old
//!   instance (`audit.rs`, `AUDIT_INHERITED`): whatever the old node shipped after the backup
//!   is a duplicate the chain ignores, so each record is in the ledger once;
//! - the queued time-series parts are queued again; a part the old node forwarded after the
//!   backup is written again at the same timestamps, which replaces a sample with itself
//!   (unless a newer write replaced it meanwhile: that write is then undone).
//!
//! Not in a backup: the node's key, configuration and admin token (they are secrets or
//! configuration, kept apart from data; `dev` mode keeps them in the data directory, and a
//! restore leaves them there), and the ledger checkpoint the node last signed (it signs again).
//!
//! The file: `EFBACKUP`, a format version (u32 LE), then frames `kind (u8) ‖ length (u64 LE)
//! ‖ payload`, ending with a frame holding the SHA-256 of every byte before it. Since version 2
//! the frame before that end frame is the node's ed25519 signature over `SIGNING_CONTEXT` and
//! the SHA-256 of every byte before the signature frame: a backup is the node's statement of
//! its data, so a file an attacker put in the backup store (sealed to the operator's public
//! key, which anyone can do) is refused by a restore that checks it against the node's key. A
//! restore reads the whole file and checks digest and signature before it writes anything.

use std::io::{Read, Write};
use std::path::Path;

use openraft::{BasicNode, SnapshotMeta};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::log::{GroupId, LogEngine};
use crate::node::Node;
use crate::raft_store::NodeId;

const MAGIC: &[u8; 8] = b"EFBACKUP";
/// The version written. Version 1 (no signature) is still read; whether an unsigned backup
/// may be restored is the caller's decision (`Signature`).
const VERSION: u32 = 2;
const KIND_SIGNATURE: u8 = 6;
/// What a backup's signature is over, besides the digest: so that no other signature of the
/// node key (ledger entries, checkpoints, link frames) can pass for one.
const SIGNING_CONTEXT: &[u8] = b"edgefabric backup v2\n";
const KIND_HEADER: u8 = 1;
const KIND_GROUP: u8 = 2;
const KIND_IMAGE: u8 = 3;
const KIND_AUDIT: u8 = 4;
const KIND_TS_QUEUE: u8 = 5;
const KIND_END: u8 = 255;

/// What a backup says about itself (its first frame).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    pub node: NodeId,
    pub site: String,
    /// The data-directory instance it was taken from.
    pub instance: u64,
    pub created_ms: u64,
    /// The groups it holds, in order.
    pub groups: Vec<GroupId>,
    /// The binary that wrote it (`CARGO_PKG_VERSION` of the store).
    pub software: String,
}

/// What a backup holds, as `restore --check` and the backup command report it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    pub node: NodeId,
    pub site: String,
    pub instance: u64,
    pub created_ms: u64,
    /// (group, last log index in its snapshot, image bytes).
    pub groups: Vec<(GroupId, u64, u64)>,
    pub audit_records: u64,
    pub ts_parts: u64,
    pub bytes: u64,
    /// Whether the node signed it (version 2); a restore checks the signature against the
    /// node's key when it has that key.
    #[serde(default)]
    pub signed: bool,
}

/// Writes frames and the running digest.
struct ArchiveWriter<W: Write> {
    w: W,
    digest: ring::digest::Context,
    bytes: u64,
}

impl<W: Write> ArchiveWriter<W> {
    fn new(w: W) -> Result<Self> {
        let mut a = ArchiveWriter { w, digest: ring::digest::Context::new(&ring::digest::SHA256), bytes: 0 };
        a.raw(MAGIC)?;
        a.raw(&VERSION.to_le_bytes())?;
        Ok(a)
    }

    fn raw(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b)?;
        self.digest.update(b);
        self.bytes += b.len() as u64;
        Ok(())
    }

    fn frame(&mut self, kind: u8, payload: &[u8]) -> Result<()> {
        self.raw(&[kind])?;
        self.raw(&(payload.len() as u64).to_le_bytes())?;
        self.raw(payload)
    }

    /// Ends the file: the signature frame (with a signer), then the digest frame.
    fn finish(mut self, signer: Option<&edgefabric_crypto::Identity>) -> Result<(W, u64)> {
        if let Some(id) = signer {
            let sum = self.digest.clone().finish();
            let sig = id.sign(&[SIGNING_CONTEXT, sum.as_ref()].concat());
            self.frame(KIND_SIGNATURE, &sig)?;
        }
        let sum = self.digest.clone().finish();
        self.frame(KIND_END, sum.as_ref())?;
        self.w.flush()?;
        Ok((self.w, self.bytes))
    }
}

/// Reads frames, checking the digest at the end frame.
struct ArchiveReader<R: Read> {
    r: R,
    digest: ring::digest::Context,
    /// Bytes left in the file (a frame can never claim more).
    left: u64,
    ended: bool,
    /// At a signature frame: the digest it signs.
    signed: Option<Vec<u8>>,
}

fn bad(message: impl std::fmt::Display) -> Error {
    Error::invalid("backup", message)
}

impl<R: Read> ArchiveReader<R> {
    fn new(mut r: R, len: u64) -> Result<Self> {
        let mut head = [0u8; 12];
        r.read_exact(&mut head).map_err(|_| bad("too short to be a backup"))?;
        if &head[..8] != MAGIC {
            return Err(bad("not an EdgeFabric backup (no EFBACKUP magic)"));
        }
        let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if version != 1 && version != VERSION {
            return Err(bad(format!("format version {version}; this binary reads versions 1 to {VERSION}")));
        }
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        digest.update(&head);
        Ok(ArchiveReader { r, digest, left: len.saturating_sub(12), ended: false, signed: None })
    }

    /// The next frame, or None after the end frame (whose digest has then been checked).
    fn next(&mut self) -> Result<Option<(u8, Vec<u8>)>> {
        if self.ended {
            return Ok(None);
        }
        let mut h = [0u8; 9];
        self.r.read_exact(&mut h).map_err(|_| bad("truncated: the file ends inside a frame header"))?;
        self.left = self.left.saturating_sub(9);
        let len = u64::from_le_bytes([h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]]);
        if len > self.left {
            return Err(bad(format!("truncated: a frame of {len} bytes with {} bytes left", self.left)));
        }
        let mut payload = vec![0u8; len as usize];
        self.r.read_exact(&mut payload).map_err(|_| bad("truncated: the file ends inside a frame"))?;
        self.left -= len;
        if h[0] == KIND_SIGNATURE {
            // What the signature is over: every byte before this frame.
            self.signed = Some(self.digest.clone().finish().as_ref().to_vec());
        }
        if h[0] == KIND_END {
            let want = self.digest.clone().finish();
            if payload != want.as_ref() {
                return Err(bad("checksum mismatch: the file is damaged"));
            }
            let mut extra = [0u8; 1];
            if self.r.read(&mut extra)? != 0 {
                return Err(bad("bytes after the end of the backup"));
            }
            self.ended = true;
            return Ok(None);
        }
        self.digest.update(&h);
        self.digest.update(&payload);
        Ok(Some((h[0], payload)))
    }
}

/// One group's frame (its image follows in a `KIND_IMAGE` frame).
#[derive(Serialize, Deserialize)]
struct GroupFrame {
    id: GroupId,
    meta: SnapshotMeta<NodeId, BasicNode>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Node {
    /// Writes a backup of this node to `path` (created; fsynced). See the module comment for
    /// what a backup holds.
    pub async fn backup_to(&self, path: &Path) -> Result<BackupSummary> {
        let groups = self.all_groups();
        let header = BackupHeader {
            node: self.opts.id,
            site: self
                .opts
                .members
                .iter()
                .find(|m| m.id == self.opts.id)
                .map(|m| m.site.clone())
                .unwrap_or_default(),
            instance: self.instance,
            created_ms: now_ms(),
            groups: groups.iter().map(|g| g.id).collect(),
            software: env!("CARGO_PKG_VERSION").into(),
        };
        // Readable by the node's user only: it holds every value of the node in clear until
        // the client seals it.
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let file = opts.open(path)?;
        let mut w = ArchiveWriter::new(std::io::BufWriter::new(file))?;
        w.frame(KIND_HEADER, &crate::codec::encode(&header)?)?;
        let mut summary = BackupSummary {
            node: header.node,
            site: header.site.clone(),
            instance: header.instance,
            created_ms: header.created_ms,
            ..Default::default()
        };
        for g in groups {
            // A snapshot of everything this replica has applied: taken now, unless one as
            // recent exists.
            let applied = g.raft.metrics().borrow().last_applied.map(|l| l.index);
            if applied.is_some() {
                let stopped =
                    |e: openraft::error::Fatal<u64>| Error::Unavailable(format!("raft stopped: {e}"));
                g.raft.trigger().snapshot().await.map_err(stopped)?;
                g.raft
                    .wait(Some(std::time::Duration::from_secs(60)))
                    .metrics(|m| m.snapshot.map(|s| s.index) >= applied, "snapshot for backup")
                    .await
                    .map_err(|e| {
                        Error::Unavailable(format!("group {}: no snapshot for the backup: {e}", g.id))
                    })?;
            }
            // Reading the image back and writing it are blocking file work: off the runtime.
            let (dir, id) = (g.dir.clone(), g.id);
            let (back, done) = tokio::task::spawn_blocking(move || -> Result<_> {
                // A group that never applied anything (not initialized yet) has nothing to keep.
                let Some((meta, image)) = crate::raft_store::read_snapshot_image(&dir)? else {
                    return Ok((w, None));
                };
                let last = meta.last_log_id.map_or(0, |l| l.index);
                w.frame(KIND_GROUP, &crate::codec::encode(&GroupFrame { id, meta })?)?;
                w.frame(KIND_IMAGE, &image)?;
                Ok((w, Some((id, last, image.len() as u64))))
            })
            .await
            .map_err(|e| Error::Internal(format!("backup: {e}")))??;
            w = back;
            summary.groups.extend(done);
        }
        // Every record still queued (some may be in the ledger already: a restore asks).
        let mut audit: Vec<Vec<u8>> =
            self.engine.entries(crate::audit::AUDIT_INHERITED, ..)?.into_iter().map(|(_, r)| r).collect();
        audit.extend(self.engine.entries(crate::audit::AUDIT_QUEUE, ..)?.into_iter().map(|(_, r)| r));
        summary.audit_records = audit.len() as u64;
        write_chunked(&mut w, KIND_AUDIT, audit)?;
        let parts: Vec<Vec<u8>> =
            self.engine.entries(crate::ts_queue::TS_QUEUE, ..)?.into_iter().map(|(_, r)| r).collect();
        summary.ts_parts = parts.len() as u64;
        write_chunked(&mut w, KIND_TS_QUEUE, parts)?;
        let (buf, bytes) = w.finish(Some(&self.opts.identity))?;
        summary.signed = true;
        let file = buf.into_inner().map_err(|e| Error::Storage(format!("writing the backup: {e}")))?;
        file.sync_all()?;
        summary.bytes = bytes;
        Ok(summary)
    }
}

/// The most bytes of queue entries in one frame: a long backlog (a site cut off for days)
/// spans several frames, each well within what a reader decodes (`codec::MAX_DECODE_BYTES`).
const QUEUE_FRAME_BYTES: usize = 16 << 20;

/// Writes `items` as frames of `kind`, each an encoded list of at most `QUEUE_FRAME_BYTES`;
/// at least one frame, so a reader can tell an empty queue from a missing one.
fn write_chunked<W: Write>(w: &mut ArchiveWriter<W>, kind: u8, items: Vec<Vec<u8>>) -> Result<()> {
    let mut chunk: Vec<Vec<u8>> = vec![];
    let mut bytes = 0;
    let mut wrote = false;
    for item in items {
        if !chunk.is_empty() && bytes + item.len() > QUEUE_FRAME_BYTES {
            w.frame(kind, &crate::codec::encode(&std::mem::take(&mut chunk))?)?;
            (bytes, wrote) = (0, true);
        }
        bytes += item.len() + 8;
        chunk.push(item);
    }
    if !chunk.is_empty() || !wrote {
        w.frame(kind, &crate::codec::encode(&chunk)?)?;
    }
    Ok(())
}

/// What a backup file holds besides its images, read and checked (digest, frame order, every
/// image decoded).
struct Contents {
    header: BackupHeader,
    /// (group frame, image bytes).
    groups: Vec<(GroupFrame, u64)>,
    audit: Vec<Vec<u8>>,
    ts_parts: Vec<Vec<u8>>,
    bytes: u64,
    /// The node's signature and the digest it signs (`None`: a version-1 backup).
    signature: Option<(Vec<u8>, Vec<u8>)>,
}

/// Reads and checks a backup, handing each group's image to `on_group` as it is read (one
/// image in memory at a time); an error from it stops the read.
fn read_backup(path: &Path, on_group: impl FnMut(&GroupFrame, Vec<u8>) -> Result<()>) -> Result<Contents> {
    let file = std::fs::File::open(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let len = file.metadata()?.len();
    read_backup_from(std::io::BufReader::new(file), len, on_group)
}

/// `read_backup` over any reader of `len` bytes.
fn read_backup_from<R: Read>(
    r: R,
    len: u64,
    mut on_group: impl FnMut(&GroupFrame, Vec<u8>) -> Result<()>,
) -> Result<Contents> {
    let mut r = ArchiveReader::new(r, len)?;
    let header: BackupHeader = match r.next()? {
        Some((KIND_HEADER, p)) => crate::codec::decode(&p).map_err(|e| bad(format!("header: {e}")))?,
        _ => return Err(bad("the first frame is not the header")),
    };
    let mut c =
        Contents { header, groups: vec![], audit: vec![], ts_parts: vec![], bytes: len, signature: None };
    let (mut audit, mut ts) = (false, false);
    while let Some((kind, payload)) = r.next()? {
        if c.signature.is_some() {
            return Err(bad("a frame after the signature"));
        }
        match kind {
            KIND_SIGNATURE => {
                let signed = r.signed.take().ok_or_else(|| bad("signature frame"))?;
                if payload.len() != 64 {
                    return Err(bad(format!("a signature of {} bytes", payload.len())));
                }
                c.signature = Some((payload, signed));
            }
            KIND_GROUP => {
                let g: GroupFrame =
                    crate::codec::decode(&payload).map_err(|e| bad(format!("group frame: {e}")))?;
                if !c.header.groups.contains(&g.id) || c.groups.iter().any(|(o, _)| o.id == g.id) {
                    return Err(bad(format!("group {} is not in the header, or twice", g.id)));
                }
                let image = match r.next()? {
                    Some((KIND_IMAGE, image)) => image,
                    _ => return Err(bad(format!("group {}: its image does not follow", g.id))),
                };
                crate::codec::decode_snapshot::<crate::kv::Image>(&image)
                    .map_err(|e| bad(format!("group {}: image: {e}", g.id)))?;
                let len = image.len() as u64;
                on_group(&g, image)?;
                c.groups.push((g, len));
            }
            KIND_AUDIT => {
                let more: Vec<Vec<u8>> =
                    crate::codec::decode(&payload).map_err(|e| bad(format!("audit records: {e}")))?;
                c.audit.extend(more);
                audit = true;
            }
            KIND_TS_QUEUE => {
                let more: Vec<Vec<u8>> =
                    crate::codec::decode(&payload).map_err(|e| bad(format!("time-series queue: {e}")))?;
                c.ts_parts.extend(more);
                ts = true;
            }
            other => return Err(bad(format!("unexpected frame kind {other}"))),
        }
    }
    if !audit {
        return Err(bad("no audit frame"));
    }
    if !ts {
        return Err(bad("no time-series queue frame"));
    }
    for raw in &c.audit {
        let rec: edgefabric_ledger::entry::AuditRecord =
            crate::codec::decode(raw).map_err(|e| bad(format!("audit record: {e}")))?;
        if rec.node != c.header.node {
            return Err(bad(format!(
                "an audit record of node {} in node {}'s backup",
                rec.node, c.header.node
            )));
        }
    }
    Ok(c)
}

impl Contents {
    fn summary(&self) -> BackupSummary {
        BackupSummary {
            node: self.header.node,
            site: self.header.site.clone(),
            instance: self.header.instance,
            created_ms: self.header.created_ms,
            groups: self
                .groups
                .iter()
                .map(|(g, bytes)| (g.id, g.meta.last_log_id.map_or(0, |l| l.index), *bytes))
                .collect(),
            audit_records: self.audit.len() as u64,
            ts_parts: self.ts_parts.len() as u64,
            bytes: self.bytes,
            signed: self.signature.is_some(),
        }
    }
}

/// How a restore treats the node's signature.
pub enum Signature<'a> {
    /// It must be there and verify under this key (the node's own).
    Key(&'a edgefabric_crypto::PublicKey),
    /// Not checked: the caller has no key to check it with (and says so to the person).
    Unchecked,
}

impl Contents {
    /// Checks the node's signature as `policy` says; an unsigned (version-1) backup passes
    /// only with `allow_unsigned`.
    fn check_signature(&self, policy: &Signature, allow_unsigned: bool) -> Result<()> {
        let Some((sig, digest)) = &self.signature else {
            if allow_unsigned {
                return Ok(());
            }
            return Err(bad(
                "it is not signed by its node (made before backups were signed); restoring it needs --allow-unsigned",
            ));
        };
        if let Signature::Key(key) = policy {
            key.verify(&[SIGNING_CONTEXT, digest].concat(), sig).map_err(|_| {
                bad(format!(
                    "its signature does not verify under node {}'s key: made or altered by someone else",
                    self.header.node
                ))
            })?;
        }
        Ok(())
    }
}

/// Reads and checks a backup without restoring it (its signature is reported, not checked).
pub fn check_backup(path: &Path) -> Result<BackupSummary> {
    Ok(read_backup(path, |_, _| Ok(()))?.summary())
}

/// `check_backup` of bytes in memory (the fuzz target's entry).
pub fn check_backup_bytes(bytes: &[u8]) -> Result<BackupSummary> {
    Ok(read_backup_from(bytes, bytes.len() as u64, |_, _| Ok(()))?.summary())
}

/// A small valid backup (one group, one queued audit record and time-series part), written by
/// the real writer: the fuzz target's seed. Not an API.
#[doc(hidden)]
pub fn sample_backup() -> Result<Vec<u8>> {
    use openraft::{CommittedLeaderId, LogId, Membership, StoredMembership};
    let header = BackupHeader {
        node: 1,
        site: "a".into(),
        instance: 7,
        created_ms: 1_795_000_000_000,
        groups: vec![1],
        software: env!("CARGO_PKG_VERSION").into(),
    };
    let log_id = LogId::new(CommittedLeaderId::new(2, 1), 5);
    let membership = Membership::new(vec![std::collections::BTreeSet::from([1u64, 2, 3])], None);
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), membership),
        snapshot_id: "2-5-1".into(),
    };
    let image: crate::kv::Image = vec![(b"k-default-greeting".to_vec(), b"hello".to_vec())];
    let record = edgefabric_ledger::entry::AuditRecord {
        actor: "app".into(),
        node: 1,
        ns: "default".into(),
        key: Some("greeting".into()),
        key_hash: None,
        action: "kv.get".into(),
        result: "allowed".into(),
        status: 200,
        time_ms: 1_795_000_000_000,
        instance: 7,
        seq: 3,
    };
    let mut w = ArchiveWriter::new(Vec::new())?;
    w.frame(KIND_HEADER, &crate::codec::encode(&header)?)?;
    w.frame(KIND_GROUP, &crate::codec::encode(&GroupFrame { id: 1, meta })?)?;
    w.frame(KIND_IMAGE, &crate::codec::encode(&image)?)?;
    write_chunked(&mut w, KIND_AUDIT, vec![crate::codec::encode(&record)?])?;
    write_chunked(&mut w, KIND_TS_QUEUE, vec![b"part".to_vec()])?;
    Ok(w.finish(Some(&edgefabric_crypto::Identity::from_seed(&[1; 32])))?.0)
}

/// What a data directory must not hold for a restore into it: a node's data. (A `dev` node's
/// key, trust file and admin token may stay.)
fn node_data_in(dir: &Path) -> Result<Vec<String>> {
    let mut found = vec![];
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                let name = e?.file_name().to_string_lossy().to_string();
                if ["raft", "sm", "INSTANCE"].contains(&name.as_str()) || name.starts_with("group-") {
                    found.push(name);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    found.sort();
    Ok(found)
}

/// Restores a backup into `data_dir` (offline: no node may run on it). Refuses a directory
/// that holds a node's data, and a backup of another node than `expect_node`. `progress` is
/// told each group as it is written. Everything written is fsynced before it returns.
pub fn restore(
    path: &Path,
    data_dir: &Path,
    expect_node: Option<NodeId>,
    signature: Signature,
    allow_unsigned: bool,
    mut progress: impl FnMut(GroupId),
) -> Result<BackupSummary> {
    // First the whole file is read and checked, images dropped as they go; only then is
    // anything written, by a second read (so one image at a time is in memory).
    let c = read_backup(path, |_, _| Ok(()))?;
    if let Some(want) = expect_node {
        if c.header.node != want {
            return Err(Error::invalid(
                "config",
                format!("the backup is of node {}, the configuration is node {want}", c.header.node),
            ));
        }
    }
    c.check_signature(&signature, allow_unsigned)?;
    let present = node_data_in(data_dir)?;
    if !present.is_empty() {
        return Err(Error::invalid(
            "data",
            format!(
                "{} already holds a node's data ({}); restore only into an empty directory",
                data_dir.display(),
                present.join(", ")
            ),
        ));
    }
    let summary = c.summary();
    std::fs::create_dir_all(data_dir)?;
    let checked = c.signature.clone();
    drop(c);
    let written = write_restore(path, data_dir, checked, &mut progress);
    if written.is_err() {
        // Nothing of a node was there before: leave nothing half-written.
        for name in node_data_in(data_dir).unwrap_or_default() {
            let p = data_dir.join(name);
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
    }
    written.map(|()| summary)
}

/// The second read of a checked backup: writes each group as it is read, then the votes and
/// the queues.
fn write_restore(
    path: &Path,
    data_dir: &Path,
    checked: Option<(Vec<u8>, Vec<u8>)>,
    progress: &mut impl FnMut(GroupId),
) -> Result<()> {
    let mut votes = vec![];
    let c = read_backup(path, |g, image| {
        if let Some(l) = g.meta.last_log_id.filter(|l| l.leader_id.term > 0) {
            votes.push((g.id, l.leader_id.term, l.leader_id.node_id));
        }
        let dir = data_dir.join(format!("group-{}", g.id));
        crate::raft_store::write_snapshot_image(&dir, g.meta.clone(), image)?;
        crate::node::write_rejoin_marker(&dir)?;
        progress(g.id);
        Ok(())
    })?;
    // The file read twice must be the file checked once (the caller removes what was written).
    if c.signature != checked {
        return Err(bad("the file changed between its check and the restore"));
    }
    let engine = LogEngine::open(&data_dir.join("raft"))?;
    // Each group's vote starts at its snapshot's term. Without it the vote would be term 0,
    // and the first election the group held (its only replica's, or one after a rejoin)
    // would be for term 1: a leader whose entries follow entries of a higher term, which
    // raft's log order forbids. (A restored replica never voted in a later term than the
    // one it saw last, as far as it can know; a rejoining one does not vote at all.)
    for (id, term, leader) in &votes {
        let vote = openraft::Vote::<NodeId>::new(*term, *leader);
        engine.save_vote(*id, crate::codec::encode(&vote)?)?;
    }
    if !c.audit.is_empty() {
        let n = c.audit.len() as u64;
        engine.append(crate::audit::AUDIT_INHERITED, (1..=n).zip(c.audit).collect())?;
    }
    if !c.ts_parts.is_empty() {
        let n = c.ts_parts.len() as u64;
        engine.append(crate::ts_queue::TS_QUEUE, (1..=n).zip(c.ts_parts).collect())?;
    }
    engine.sync_blocking()?;
    drop(engine);
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The key of the node the test backups are of.
    fn node_key() -> edgefabric_crypto::Identity {
        edgefabric_crypto::Identity::from_seed(&[2; 32])
    }

    fn signed_by(frames: &[(u8, Vec<u8>)], signer: Option<&edgefabric_crypto::Identity>) -> Vec<u8> {
        let mut a = ArchiveWriter::new(Vec::new()).unwrap();
        for (k, p) in frames {
            a.frame(*k, p).unwrap();
        }
        a.finish(signer).unwrap().0
    }

    fn write_archive(frames: &[(u8, Vec<u8>)]) -> Vec<u8> {
        signed_by(frames, Some(&node_key()))
    }

    fn by_node() -> edgefabric_crypto::PublicKey {
        node_key().public_key()
    }

    fn header(node: NodeId) -> Vec<u8> {
        let h = BackupHeader {
            node,
            site: "b".into(),
            instance: 7,
            created_ms: 1,
            groups: vec![1],
            software: "test".into(),
        };
        crate::codec::encode(&h).unwrap()
    }

    fn sample() -> Vec<u8> {
        sample_signed_by(Some(&node_key()))
    }

    fn sample_signed_by(signer: Option<&edgefabric_crypto::Identity>) -> Vec<u8> {
        let image: crate::kv::Image = vec![(b"k".to_vec(), b"v".to_vec())];
        let log_id = openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 42);
        let meta = SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: Default::default(),
            snapshot_id: "s".into(),
        };
        let rec = edgefabric_ledger::entry::AuditRecord {
            actor: "a".into(),
            node: 2,
            ns: "default".into(),
            key: Some("k".into()),
            key_hash: None,
            action: "get".into(),
            result: "allowed".into(),
            status: 200,
            time_ms: 5,
            instance: 7,
            seq: 3,
        };
        signed_by(
            &[
                (KIND_HEADER, header(2)),
                (KIND_GROUP, crate::codec::encode(&GroupFrame { id: 1, meta }).unwrap()),
                (KIND_IMAGE, crate::codec::encode(&image).unwrap()),
                (KIND_AUDIT, crate::codec::encode(&vec![crate::codec::encode(&rec).unwrap()]).unwrap()),
                (KIND_TS_QUEUE, crate::codec::encode(&Vec::<Vec<u8>>::new()).unwrap()),
            ],
            signer,
        )
    }

    /// A file an attacker made (sealing it to the operator's public key is open to anyone) is
    /// refused by a restore that checks the node's signature (found by a hostile review of
    /// issue 18); so is one without a signature, unless the person allows it.
    #[test]
    fn restore_takes_only_what_the_node_signed() {
        let dir = tempfile::tempdir().unwrap();
        let attempt = |bytes: Vec<u8>, policy: Signature, allow_unsigned: bool| {
            let p = dir.path().join(format!("b{}.efb", rand_suffix()));
            std::fs::write(&p, bytes).unwrap();
            let data = dir.path().join(format!("data{}", rand_suffix()));
            let r = restore(&p, &data, Some(2), policy, allow_unsigned, |_| {});
            (r.map_err(|e| e.to_string()), data.join("group-1").exists())
        };
        let forger = edgefabric_crypto::Identity::from_seed(&[66; 32]);
        let (r, written) = attempt(sample_signed_by(Some(&forger)), Signature::Key(&by_node()), false);
        assert!(r.unwrap_err().contains("does not verify under node 2's key"));
        assert!(!written, "nothing written from a forged backup");
        let (r, written) = attempt(sample_signed_by(None), Signature::Key(&by_node()), false);
        assert!(r.unwrap_err().contains("--allow-unsigned"));
        assert!(!written);
        // A signature from elsewhere: the same node key's signature over another digest.
        let mut b = sample();
        let n = b.len();
        let sig_at = n - (1 + 8 + 32) - 64;
        b[sig_at] ^= 1;
        let (r, _) = attempt(b, Signature::Key(&by_node()), false);
        // (The end digest covers the signature too: an altered one is refused either way.)
        assert!(r.is_err());
        // The genuine one, and an unsigned one when allowed.
        let (r, written) = attempt(sample(), Signature::Key(&by_node()), false);
        assert!(r.unwrap().signed);
        assert!(written);
        let (r, _) = attempt(sample_signed_by(None), Signature::Key(&by_node()), true);
        assert!(!r.unwrap().signed);
        // Unchecked (no key at hand): a signed file is taken, and says it was signed.
        let (r, _) = attempt(sample_signed_by(Some(&forger)), Signature::Unchecked, false);
        assert!(r.is_ok());
        // Version 1 (before signatures) still reads.
        let mut v1 = sample_signed_by(None);
        v1[8] = 1;
        let fixed = {
            // Re-make its end digest over the changed version field.
            let body = &v1[..v1.len() - (1 + 8 + 32)];
            let sum = ring::digest::digest(&ring::digest::SHA256, body);
            let mut f = body.to_vec();
            f.push(KIND_END);
            f.extend_from_slice(&32u64.to_le_bytes());
            f.extend_from_slice(sum.as_ref());
            f
        };
        assert!(!check_bytes(&fixed).unwrap().signed);
        // Nothing may follow the signature but the end.
        let mut a = ArchiveWriter::new(Vec::new()).unwrap();
        a.frame(KIND_HEADER, &header(2)).unwrap();
        a.frame(KIND_SIGNATURE, &[0; 64]).unwrap();
        a.frame(KIND_AUDIT, &crate::codec::encode(&Vec::<Vec<u8>>::new()).unwrap()).unwrap();
        let b = a.finish(None).unwrap().0;
        assert!(check_bytes(&b).unwrap_err().to_string().contains("after the signature"));
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::SeqCst)
    }

    fn check_bytes(bytes: &[u8]) -> Result<BackupSummary> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.efb");
        std::fs::write(&p, bytes).unwrap();
        check_backup(&p)
    }

    #[test]
    fn the_fuzz_seed_is_a_good_backup() {
        let s = check_backup_bytes(&sample_backup().unwrap()).unwrap();
        assert_eq!((s.node, s.groups.len(), s.audit_records, s.ts_parts), (1, 1, 1, 1));
    }

    #[test]
    fn a_good_backup_reads_back() {
        let s = check_bytes(&sample()).unwrap();
        assert_eq!((s.node, s.instance, s.audit_records, s.ts_parts), (2, 7, 1, 0));
        assert_eq!(s.groups.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(), vec![(1, 42)]);
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let good = sample();
        for cut in 0..good.len() {
            let e = check_bytes(&good[..cut]).unwrap_err().to_string();
            assert!(e.contains("backup"), "cut at {cut}: {e}");
        }
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x40;
            assert!(check_bytes(&b).is_err(), "flipped byte {i} was accepted");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(check_bytes(&longer).unwrap_err().to_string().contains("after the end"));
    }

    #[test]
    fn wrong_magic_version_and_frame_order_are_named() {
        let mut b = sample();
        b[0] = b'X';
        assert!(check_bytes(&b).unwrap_err().to_string().contains("EFBACKUP"));
        let mut b = sample();
        b[8] = 9;
        assert!(check_bytes(&b).unwrap_err().to_string().contains("version 9"));
        // A well-formed file whose image does not follow its group frame.
        let meta =
            SnapshotMeta { last_log_id: None, last_membership: Default::default(), snapshot_id: "s".into() };
        let b = write_archive(&[
            (KIND_HEADER, header(1)),
            (KIND_GROUP, crate::codec::encode(&GroupFrame { id: 1, meta }).unwrap()),
            (KIND_AUDIT, crate::codec::encode(&Vec::<Vec<u8>>::new()).unwrap()),
        ]);
        assert!(check_bytes(&b).unwrap_err().to_string().contains("image does not follow"));
        let b = write_archive(&[(KIND_HEADER, header(1))]);
        assert!(check_bytes(&b).unwrap_err().to_string().contains("no audit frame"));
    }

    #[test]
    fn restore_refuses_a_directory_with_data_and_another_node() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.efb");
        std::fs::write(&p, sample()).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("raft")).unwrap();
        let e =
            restore(&p, &data, Some(2), Signature::Key(&by_node()), false, |_| {}).unwrap_err().to_string();
        assert!(e.contains("already holds") && e.contains("raft"), "{e}");
        let fresh = dir.path().join("fresh");
        let e =
            restore(&p, &fresh, Some(3), Signature::Key(&by_node()), false, |_| {}).unwrap_err().to_string();
        assert!(e.contains("node 2") && e.contains("node 3"), "{e}");
        assert!(!fresh.join("group-1").exists(), "nothing written for the wrong node");
    }

    #[test]
    fn restore_writes_snapshots_markers_and_the_inherited_queue() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.efb");
        std::fs::write(&p, sample()).unwrap();
        let data = dir.path().join("data");
        // A dev node's key files may stay.
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("node.key"), b"x").unwrap();
        let mut seen = vec![];
        let s = restore(&p, &data, Some(2), Signature::Key(&by_node()), false, |g| seen.push(g)).unwrap();
        assert_eq!(seen, vec![1]);
        assert_eq!(s.audit_records, 1);
        assert!(data.join("group-1").join("REJOIN").exists());
        assert!(!data.join("INSTANCE").exists(), "the node makes a new instance when it starts");
        let (meta, image) = crate::raft_store::read_snapshot_image(&data.join("group-1")).unwrap().unwrap();
        assert_eq!(meta.last_log_id.map(|l| l.index), Some(42));
        let image: crate::kv::Image = crate::codec::decode(&image).unwrap();
        assert_eq!(image, vec![(b"k".to_vec(), b"v".to_vec())]);
        let engine = LogEngine::open(&data.join("raft")).unwrap();
        let queued = engine.entries(crate::audit::AUDIT_INHERITED, ..).unwrap();
        assert_eq!(queued.len(), 1);
        let rec: edgefabric_ledger::entry::AuditRecord = crate::codec::decode(&queued[0].1).unwrap();
        assert_eq!((rec.instance, rec.seq), (7, 3));
        // The group's vote is at its snapshot's term (3, by node 1), not term 0.
        let vote: openraft::Vote<NodeId> = crate::codec::decode(&engine.vote(1).unwrap()).unwrap();
        assert_eq!(vote, openraft::Vote::new(3, 1));
        drop(engine);
        // And a second restore into it is refused.
        assert!(restore(&p, &data, Some(2), Signature::Key(&by_node()), false, |_| {}).is_err());
    }

    /// A restored group that is its own only voter elects itself in a term after its
    /// snapshot's, so its new entries follow the old ones in log order (with a vote of term 0
    /// it would lead term 1 after entries of term 5).
    #[tokio::test]
    async fn a_restored_only_replica_leads_a_term_after_its_snapshot() {
        use openraft::{CommittedLeaderId, LogId, Membership, StoredMembership};
        let dir = tempfile::tempdir().unwrap();
        let log_id = LogId::new(CommittedLeaderId::new(5, 1), 10);
        let membership = Membership::new(vec![std::collections::BTreeSet::from([1u64])], None);
        let meta = SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: StoredMembership::new(Some(log_id), membership),
            snapshot_id: "s".into(),
        };
        let image: crate::kv::Image = vec![];
        let file = write_archive(&[
            (KIND_HEADER, header(1)),
            (KIND_GROUP, crate::codec::encode(&GroupFrame { id: 1, meta }).unwrap()),
            (KIND_IMAGE, crate::codec::encode(&image).unwrap()),
            (KIND_AUDIT, crate::codec::encode(&Vec::<Vec<u8>>::new()).unwrap()),
            (KIND_TS_QUEUE, crate::codec::encode(&Vec::<Vec<u8>>::new()).unwrap()),
        ]);
        let path = dir.path().join("b.efb");
        std::fs::write(&path, file).unwrap();
        let data = dir.path().join("data");
        restore(&path, &data, Some(1), Signature::Unchecked, false, |_| {}).unwrap();

        let engine = LogEngine::open(&data.join("raft")).unwrap();
        let db = sled::Config::new().path(data.join("sm")).open().unwrap();
        let sm = crate::raft_store::StateMachineStore::open(&data.join("group-1"), &db, 1, None).unwrap();
        let identity = Arc::new(edgefabric_crypto::Identity::generate().unwrap());
        let link = Arc::new(crate::link::LinkAuth::new(1, identity, Default::default()));
        let last = engine.last_entry(1).unwrap().map_or(0, |(i, _)| i);
        let flushed = crate::raft_store::Flushed::new(engine.clone(), last);
        let network = crate::network::NetworkFactory {
            channels: crate::network::Channels::new(link, None),
            group: 1,
            flushed: flushed.clone(),
        };
        let config = Arc::new(openraft::Config::default().validate().unwrap());
        let raft =
            crate::raft_store::Raft::new(1, config, network, crate::LogStore::new(engine, 1, flushed), sm)
                .await
                .unwrap();
        raft.wait(Some(std::time::Duration::from_secs(10))).current_leader(1, "elected").await.unwrap();
        let put = crate::types::Command::MarkSeen { node: 1, instance: 9 };
        let r = raft.client_write(put).await.unwrap();
        assert!(r.log_id.leader_id.term > 5, "{:?} follows entries of term 5", r.log_id);
        assert!(r.log_id.index > 10);
        raft.shutdown().await.unwrap();
    }

    /// A long queue spans several frames, each small enough for a reader to decode, and
    /// reads back whole and in order.
    #[test]
    fn long_queues_span_frames_and_read_back_in_order() {
        let items: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 7 << 20]).collect();
        let mut w = ArchiveWriter::new(Vec::new()).unwrap();
        w.frame(KIND_HEADER, &header(1)).unwrap();
        write_chunked(&mut w, KIND_AUDIT, vec![]).unwrap();
        write_chunked(&mut w, KIND_TS_QUEUE, items.clone()).unwrap();
        let bytes = w.finish(None).unwrap().0;
        let mut r = ArchiveReader::new(&bytes[..], bytes.len() as u64).unwrap();
        let mut kinds = vec![];
        while let Some((kind, payload)) = r.next().unwrap() {
            assert!(payload.len() <= crate::codec::MAX_DECODE_BYTES);
            kinds.push(kind);
        }
        assert_eq!(kinds, vec![KIND_HEADER, KIND_AUDIT, KIND_TS_QUEUE, KIND_TS_QUEUE, KIND_TS_QUEUE]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.efb");
        std::fs::write(&p, &bytes).unwrap();
        let c = read_backup(&p, |_, _| Ok(())).unwrap();
        assert!(c.audit.is_empty());
        assert_eq!(c.ts_parts, items);
    }
}
