//! The raft log: one append-only write-ahead file shared by every raft group of the node, with
//! group-committed `fdatasync`.
//!
//! Why not sled: sled 0.34's `flush` issues `sync_file_range`, which does not make file
//! metadata durable and is not a full `fsync` (spacejam/sled#1452), so an entry that raft has
//! acknowledged could vanish on power loss. Raft's safety needs the log and the vote durable
//! *before* a node answers, so they get their own file, as TiKV keeps its raft log apart from
//! its KV engine. One file for all groups turns many small appends into one `fdatasync`.
//!
//! Format: a sequence of frames `len: u32 LE ‖ crc32(body): u32 LE ‖ body`, with
//! `body = kind: u8 ‖ group: u64 LE ‖ fields`. An entry frame is `index: u64 LE ‖ payload`, so
//! the payload sits at a known offset: memory holds only an index of (offset, length) per entry,
//! and entries are read back with `pread` (recent ones come from the page cache). Replay applies
//! frames in order. A torn or corrupt frame ends the log: it and everything after it are dropped
//! (only the tail after the last `fdatasync` can be torn, and it was never acknowledged). When
//! the file holds mostly dead frames it is rewritten from the live state: new file, `fsync`,
//! `rename`, `fsync` of the directory.
//!
//! Durability contract: `append`, `truncate`, `purge` and `save_*` only hand bytes to the kernel;
//! they are durable once a later `sync` callback (or `sync_blocking`) has reported success.
//! Frames are durable in file order, so a synced frame implies all earlier ones are.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::codec;
use crate::error::{Error, Result};

pub type GroupId = u64;

const FILE_NAME: &str = "raft.wal";
/// Rewrite the file when it is this large and mostly dead.
const COMPACT_MIN_BYTES: u64 = 64 << 20;
const FRAME_HEADER: u64 = 8;
/// kind ‖ group ‖ index before an entry's payload.
const ENTRY_PREFIX: u64 = 1 + 8 + 8;

const KIND_ENTRY: u8 = 1;
const KIND_TRUNCATE: u8 = 2;
const KIND_PURGE: u8 = 3;
const KIND_VOTE: u8 = 4;
const KIND_COMMITTED: u8 = 5;
/// Forget everything about a group (the node no longer hosts it).
const KIND_DROP: u8 = 6;

/// One decoded frame; entry payloads are not copied, only located.
enum Record<'a> {
    Entry { index: u64, payload: &'a [u8] },
    Truncate { since: u64 },
    Purge { upto: u64, log_id: &'a [u8] },
    Vote(&'a [u8]),
    Committed(&'a [u8]),
    Drop,
}

fn put_frame(out: &mut Vec<u8>, kind: u8, group: GroupId, fields: &[&[u8]]) -> Result<()> {
    let body_len: usize = 1 + 8 + fields.iter().map(|f| f.len()).sum::<usize>();
    if body_len > codec::MAX_DECODE_BYTES {
        return Err(Error::invalid(
            "log record",
            format!("{body_len} bytes, the limit is {}", codec::MAX_DECODE_BYTES),
        ));
    }
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    out.extend_from_slice(&group.to_le_bytes());
    for f in fields {
        out.extend_from_slice(f);
    }
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn decode_body(body: &[u8]) -> Option<(GroupId, Record<'_>)> {
    let kind = *body.first()?;
    let group = u64_at(body, 1)?;
    let rest = &body[9..];
    let rec = match kind {
        KIND_ENTRY => Record::Entry { index: u64_at(rest, 0)?, payload: &rest[8..] },
        KIND_TRUNCATE if rest.len() == 8 => Record::Truncate { since: u64_at(rest, 0)? },
        KIND_PURGE => Record::Purge { upto: u64_at(rest, 0)?, log_id: &rest[8..] },
        KIND_VOTE => Record::Vote(rest),
        KIND_COMMITTED => Record::Committed(rest),
        KIND_DROP if rest.is_empty() => Record::Drop,
        _ => return None,
    };
    Some((group, rec))
}

/// Where an entry's payload is: (file offset, length).
type Loc = (u64, u32);

#[derive(Default)]
struct GroupLog {
    /// index → where its payload is.
    entries: BTreeMap<u64, Loc>,
    /// Sum of the payload lengths, kept up to date so the compaction check is O(1).
    entry_bytes: u64,
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
    purged: Option<(u64, Vec<u8>)>,
}

fn total_len(m: &BTreeMap<u64, Loc>) -> u64 {
    m.values().map(|(_, len)| *len as u64).sum()
}

impl GroupLog {
    /// Applies a decoded frame whose body starts at `body_offset` in the file.
    fn apply(&mut self, rec: Record<'_>, body_offset: u64) {
        match rec {
            Record::Entry { index, payload } => {
                let len = payload.len() as u32;
                self.entry_bytes += len as u64;
                if let Some((_, old)) = self.entries.insert(index, (body_offset + ENTRY_PREFIX, len)) {
                    self.entry_bytes -= old as u64;
                }
            }
            Record::Truncate { since } => {
                let removed = self.entries.split_off(&since);
                self.entry_bytes -= total_len(&removed);
            }
            Record::Purge { upto, log_id } => {
                let kept = self.entries.split_off(&(upto.saturating_add(1)));
                let removed = std::mem::replace(&mut self.entries, kept);
                self.entry_bytes -= total_len(&removed);
                if self.purged.as_ref().is_none_or(|(p, _)| *p <= upto) {
                    self.purged = Some((upto, log_id.to_vec()));
                }
            }
            Record::Vote(data) => self.vote = Some(data.to_vec()),
            Record::Committed(data) => self.committed = Some(data.to_vec()),
            Record::Drop => *self = GroupLog::default(),
        }
    }

    /// Approximate bytes a rewrite of this group would take (frame overhead included).
    fn live_bytes(&self) -> u64 {
        self.entry_bytes + (FRAME_HEADER + ENTRY_PREFIX) * self.entries.len() as u64 + 256
    }
}

/// Reads frames from `r` into `groups`; returns the length of the valid prefix.
fn replay(r: impl Read, groups: &mut HashMap<GroupId, GroupLog>) -> io::Result<u64> {
    let mut r = BufReader::with_capacity(1 << 20, r);
    let mut pos = 0u64;
    let mut body = vec![];
    loop {
        let mut header = [0u8; 8];
        if read_full(&mut r, &mut header)? < 8 {
            return Ok(pos);
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > codec::MAX_DECODE_BYTES {
            return Ok(pos);
        }
        body.resize(len, 0);
        if read_full(&mut r, &mut body)? < len || crc32fast::hash(&body) != crc {
            return Ok(pos);
        }
        let Some((group, rec)) = decode_body(&body) else {
            return Ok(pos);
        };
        groups.entry(group).or_default().apply(rec, pos + FRAME_HEADER);
        pos += FRAME_HEADER + len as u64;
    }
}

/// Like `read_exact`, but reports how much was read at end of file instead of failing.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

struct Inner {
    dir: PathBuf,
    file: Arc<File>,
    file_bytes: u64,
    groups: HashMap<GroupId, GroupLog>,
    /// Set by a failed write or sync. A partial write leaves garbage that would hide every
    /// later frame from replay, and after a failed `fdatasync` the kernel may have dropped
    /// dirty pages while a retry reports success (fsyncgate); so the log refuses all further
    /// work and the node stops (openraft treats storage errors as fatal). Restart recovers
    /// from the file.
    poisoned: Option<String>,
}

type SyncCallback = Box<dyn FnOnce(io::Result<()>) + Send>;

/// A handle on the node's raft log; cheap to clone.
#[derive(Clone)]
pub struct LogEngine {
    inner: Arc<Mutex<Inner>>,
    syncer: mpsc::Sender<SyncCallback>,
    /// File length known to be on stable storage (for metrics and power-cut tests).
    durable: Arc<AtomicU64>,
}

impl LogEngine {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let existed = path.exists();
        let file = OpenOptions::new().create(true).read(true).write(true).truncate(false).open(&path)?;
        let total = file.metadata()?.len();
        let mut groups: HashMap<GroupId, GroupLog> = HashMap::new();
        let valid = replay(&file, &mut groups)?;
        if valid < total {
            tracing::warn!(
                path = %path.display(),
                dropped = total - valid,
                "raft log has a torn or corrupt tail; dropping it"
            );
            file.set_len(valid)?;
            file.sync_all()?;
        }
        if !existed {
            sync_dir(dir)?;
        }
        let file = OpenOptions::new().read(true).append(true).open(&path)?;
        let inner = Arc::new(Mutex::new(Inner {
            dir: dir.to_path_buf(),
            file: Arc::new(file),
            file_bytes: valid,
            groups,
            poisoned: None,
        }));
        let (tx, rx) = mpsc::channel::<SyncCallback>();
        let durable = Arc::new(AtomicU64::new(valid));
        let (for_syncer, durable_syncer) = (inner.clone(), durable.clone());
        std::thread::Builder::new()
            .name("raft-wal-sync".into())
            .spawn(move || syncer(for_syncer, durable_syncer, rx))?;
        Ok(LogEngine { inner, syncer: tx, durable })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves state that replay would rebuild; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes encoded frames and applies them to the in-memory index.
    fn write(&self, inner: &mut Inner, buf: Vec<u8>) -> Result<()> {
        if let Some(why) = &inner.poisoned {
            return Err(Error::Storage(format!("raft log unusable after an earlier failure: {why}")));
        }
        let start = inner.file_bytes;
        if let Err(e) = (&*inner.file).write_all(&buf) {
            inner.poisoned = Some(format!("write: {e}"));
            return Err(e.into());
        }
        inner.file_bytes += buf.len() as u64;
        // Re-read our own frames from the buffer to index them exactly as replay would.
        let mut pos = 0usize;
        while pos < buf.len() {
            let len = u32::from_le_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
            let body = &buf[pos + 8..pos + 8 + len];
            let (group, rec) =
                decode_body(body).ok_or_else(|| Error::Internal("bad frame written".into()))?;
            inner.groups.entry(group).or_default().apply(rec, start + pos as u64 + FRAME_HEADER);
            pos += 8 + len;
        }
        Ok(())
    }

    /// Appends entries `(index, bytes)` with consecutive indexes.
    pub fn append(&self, group: GroupId, entries: Vec<(u64, Vec<u8>)>) -> Result<()> {
        let Some(first) = entries.first().map(|e| e.0) else {
            return Ok(());
        };
        let mut buf = Vec::with_capacity(entries.iter().map(|e| e.1.len() + 32).sum());
        for (i, (idx, data)) in entries.iter().enumerate() {
            if *idx != first + i as u64 {
                return Err(Error::Internal(format!("non-consecutive log append at index {idx}")));
            }
            put_frame(&mut buf, KIND_ENTRY, group, &[&idx.to_le_bytes(), data])?;
        }
        let mut inner = self.lock();
        self.write(&mut inner, buf)?;
        self.maybe_compact(&mut inner)
    }

    pub fn truncate(&self, group: GroupId, since: u64) -> Result<()> {
        let mut buf = vec![];
        put_frame(&mut buf, KIND_TRUNCATE, group, &[&since.to_le_bytes()])?;
        self.write(&mut self.lock(), buf)
    }

    pub fn purge(&self, group: GroupId, upto: u64, log_id: Vec<u8>) -> Result<()> {
        let mut buf = vec![];
        put_frame(&mut buf, KIND_PURGE, group, &[&upto.to_le_bytes(), &log_id])?;
        let mut inner = self.lock();
        self.write(&mut inner, buf)?;
        self.maybe_compact(&mut inner)
    }

    pub fn save_vote(&self, group: GroupId, data: Vec<u8>) -> Result<()> {
        let mut buf = vec![];
        put_frame(&mut buf, KIND_VOTE, group, &[&data])?;
        self.write(&mut self.lock(), buf)
    }

    pub fn save_committed(&self, group: GroupId, data: Vec<u8>) -> Result<()> {
        let mut buf = vec![];
        put_frame(&mut buf, KIND_COMMITTED, group, &[&data])?;
        self.write(&mut self.lock(), buf)
    }

    /// Forgets a group entirely: entries, vote, committed index, purge point.
    pub fn drop_group(&self, group: GroupId) -> Result<()> {
        let mut buf = vec![];
        put_frame(&mut buf, KIND_DROP, group, &[])?;
        let mut inner = self.lock();
        self.write(&mut inner, buf)?;
        inner.groups.remove(&group);
        Ok(())
    }

    pub fn vote(&self, group: GroupId) -> Option<Vec<u8>> {
        self.lock().groups.get(&group).and_then(|g| g.vote.clone())
    }

    pub fn committed(&self, group: GroupId) -> Option<Vec<u8>> {
        self.lock().groups.get(&group).and_then(|g| g.committed.clone())
    }

    pub fn purged(&self, group: GroupId) -> Option<(u64, Vec<u8>)> {
        self.lock().groups.get(&group).and_then(|g| g.purged.clone())
    }

    pub fn last_entry(&self, group: GroupId) -> Result<Option<(u64, Vec<u8>)>> {
        let (file, loc) = {
            let inner = self.lock();
            let loc =
                inner.groups.get(&group).and_then(|g| g.entries.last_key_value().map(|(k, v)| (*k, *v)));
            (inner.file.clone(), loc)
        };
        match loc {
            Some((index, (offset, len))) => Ok(Some((index, read_at(&file, offset, len)?))),
            None => Ok(None),
        }
    }

    /// Entries in `range`, read from the file outside the lock (the `Arc<File>` stays valid
    /// even if a compaction renames a new file into place meanwhile).
    pub fn entries<R: RangeBounds<u64>>(&self, group: GroupId, range: R) -> Result<Vec<(u64, Vec<u8>)>> {
        let (file, locs): (Arc<File>, Vec<(u64, Loc)>) = {
            let inner = self.lock();
            let locs = match inner.groups.get(&group) {
                Some(g) => g.entries.range(range).map(|(k, v)| (*k, *v)).collect(),
                None => vec![],
            };
            (inner.file.clone(), locs)
        };
        locs.into_iter().map(|(i, (off, len))| Ok((i, read_at(&file, off, len)?))).collect()
    }

    /// Calls `done` once every record written before this call is durable (one `fdatasync` may
    /// serve many callers). `done` runs on the syncer thread: it must not block.
    pub fn sync(&self, done: impl FnOnce(io::Result<()>) + Send + 'static) {
        if let Err(mpsc::SendError(done)) = self.syncer.send(Box::new(done)) {
            done(Err(io::Error::other("raft log syncer has stopped")));
        }
    }

    /// Blocks until everything written so far is durable. Not for async contexts.
    pub fn sync_blocking(&self) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        self.sync(move |r| {
            let _ = tx.send(r);
        });
        rx.recv().map_err(|_| io::Error::other("raft log syncer has stopped"))?
    }

    /// Size of the WAL file in bytes (for metrics and tests).
    pub fn file_bytes(&self) -> u64 {
        self.lock().file_bytes
    }

    /// How much of the file is known durable: everything a power cut cannot take.
    pub fn durable_bytes(&self) -> u64 {
        self.durable.load(Ordering::SeqCst)
    }

    fn maybe_compact(&self, inner: &mut Inner) -> Result<()> {
        let live: u64 = inner.groups.values().map(GroupLog::live_bytes).sum();
        if inner.file_bytes < COMPACT_MIN_BYTES.max(live * 4) {
            return Ok(());
        }
        self.compact(inner)
    }

    /// Rewrites the file from the live state. Atomic: the rename either happened or not.
    fn compact(&self, inner: &mut Inner) -> Result<()> {
        let tmp = inner.dir.join(format!("{FILE_NAME}.tmp"));
        let mut out = io::BufWriter::new(File::create(&tmp)?);
        let mut new_groups: HashMap<GroupId, GroupLog> = HashMap::new();
        let mut pos = 0u64;
        let mut buf = vec![];
        for (group, g) in &inner.groups {
            let group = *group;
            let mut frames: Vec<Vec<u8>> = vec![];
            if let Some((upto, log_id)) = &g.purged {
                let mut f = vec![];
                put_frame(&mut f, KIND_PURGE, group, &[&upto.to_le_bytes(), log_id])?;
                frames.push(f);
            }
            if let Some(data) = &g.vote {
                let mut f = vec![];
                put_frame(&mut f, KIND_VOTE, group, &[data])?;
                frames.push(f);
            }
            if let Some(data) = &g.committed {
                let mut f = vec![];
                put_frame(&mut f, KIND_COMMITTED, group, &[data])?;
                frames.push(f);
            }
            let ng = new_groups.entry(group).or_default();
            for f in frames {
                let (_, rec) = decode_body(&f[8..]).ok_or_else(|| Error::Internal("bad frame".into()))?;
                ng.apply(rec, pos + FRAME_HEADER);
                out.write_all(&f)?;
                pos += f.len() as u64;
            }
            for (index, (off, len)) in &g.entries {
                let data = read_at(&inner.file, *off, *len)?;
                buf.clear();
                put_frame(&mut buf, KIND_ENTRY, group, &[&index.to_le_bytes(), &data])?;
                ng.apply(Record::Entry { index: *index, payload: &data }, pos + FRAME_HEADER);
                out.write_all(&buf)?;
                pos += buf.len() as u64;
            }
        }
        let f = out.into_inner().map_err(|e| Error::Storage(format!("io: {e}")))?;
        f.sync_all()?;
        drop(f);
        let path = inner.dir.join(FILE_NAME);
        std::fs::rename(&tmp, &path)?;
        sync_dir(&inner.dir)?;
        inner.file = Arc::new(OpenOptions::new().read(true).append(true).open(&path)?);
        tracing::info!(before = inner.file_bytes, after = pos, "raft log compacted");
        inner.file_bytes = pos;
        inner.groups = new_groups;
        self.durable.store(pos, Ordering::SeqCst);
        Ok(())
    }

    #[cfg(test)]
    fn entries_ok<R: RangeBounds<u64>>(&self, group: GroupId, range: R) -> Vec<(u64, Vec<u8>)> {
        self.entries(group, range).unwrap()
    }

    #[cfg(test)]
    fn last_entry_ok(&self, group: GroupId) -> Option<(u64, Vec<u8>)> {
        self.last_entry(group).unwrap()
    }

    #[cfg(test)]
    fn force_compact(&self) -> Result<()> {
        let mut inner = self.lock();
        self.compact(&mut inner)
    }

    /// Rewrites the file if at least half of it is dead, whatever its size (the automatic
    /// compaction waits for 64 MiB): for an operator's flush before measuring storage.
    pub fn compact_if_mostly_dead(&self) -> Result<()> {
        let mut inner = self.lock();
        let live: u64 = inner.groups.values().map(GroupLog::live_bytes).sum();
        if inner.file_bytes < 2 * live {
            return Ok(());
        }
        self.compact(&mut inner)
    }
}

fn read_at(file: &File, offset: u64, len: u32) -> Result<Vec<u8>> {
    let mut data = vec![0u8; len as usize];
    file.read_exact_at(&mut data, offset)?;
    Ok(data)
}

/// Group commit: take every waiting callback, then one `fdatasync` covers all their writes
/// (each was written before its callback was queued). The file handle is read *after* the
/// drain, so a compaction in between is covered: it fsynced everything it copied.
fn syncer(inner: Arc<Mutex<Inner>>, durable: Arc<AtomicU64>, rx: mpsc::Receiver<SyncCallback>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let (file, len, poisoned) = {
            let g = inner.lock().unwrap_or_else(|p| p.into_inner());
            (g.file.clone(), g.file_bytes, g.poisoned.clone())
        };
        let result = match poisoned {
            Some(why) => Err(io::Error::other(format!("raft log unusable after an earlier failure: {why}"))),
            None => file.sync_data(),
        };
        match &result {
            Ok(()) => {
                durable.fetch_max(len, Ordering::SeqCst);
            }
            Err(e) => {
                let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
                g.poisoned.get_or_insert_with(|| format!("fdatasync: {e}"));
            }
        }
        for done in batch {
            done(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
        range.map(|i| (i, format!("e{i}").into_bytes())).collect()
    }

    #[test]
    fn replay_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = LogEngine::open(dir.path()).unwrap();
            log.append(1, entries(1..11)).unwrap();
            log.append(2, entries(1..4)).unwrap();
            log.truncate(1, 8).unwrap();
            log.append(1, vec![(8, b"new8".to_vec())]).unwrap();
            log.purge(1, 3, b"id3".to_vec()).unwrap();
            log.save_vote(1, b"vote".to_vec()).unwrap();
            log.save_committed(1, b"c7".to_vec()).unwrap();
            log.sync_blocking().unwrap();
        }
        let log = LogEngine::open(dir.path()).unwrap();
        let got: Vec<u64> = log.entries_ok(1, ..).iter().map(|e| e.0).collect();
        assert_eq!(got, vec![4, 5, 6, 7, 8]);
        assert_eq!(log.last_entry_ok(1).unwrap(), (8, b"new8".to_vec()));
        assert_eq!(log.purged(1), Some((3, b"id3".to_vec())));
        assert_eq!(log.vote(1), Some(b"vote".to_vec()));
        assert_eq!(log.committed(1), Some(b"c7".to_vec()));
        assert_eq!(log.entries_ok(2, 2..).len(), 2);
        assert_eq!(log.vote(2), None);
        assert_eq!(log.entries_ok(3, ..), vec![]);
    }

    #[test]
    fn a_dropped_group_is_gone_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = LogEngine::open(dir.path()).unwrap();
            log.append(1, entries(1..5)).unwrap();
            log.append(2, entries(1..3)).unwrap();
            log.save_vote(1, b"v".to_vec()).unwrap();
            log.drop_group(1).unwrap();
            assert_eq!(log.entries_ok(1, ..), vec![]);
            log.sync_blocking().unwrap();
        }
        let log = LogEngine::open(dir.path()).unwrap();
        assert_eq!((log.entries_ok(1, ..), log.vote(1)), (vec![], None));
        assert_eq!(log.entries_ok(2, ..).len(), 2);
        log.append(1, entries(1..2)).unwrap();
        assert_eq!(log.last_entry_ok(1).unwrap().0, 1, "a dropped group can start again");
    }

    #[test]
    fn torn_tail_is_dropped_and_log_stays_appendable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = LogEngine::open(dir.path()).unwrap();
            log.append(1, entries(1..6)).unwrap();
            log.append(1, entries(6..7)).unwrap();
            log.sync_blocking().unwrap();
        }
        let path = dir.path().join(FILE_NAME);
        let len = std::fs::metadata(&path).unwrap().len();
        // Tear the last frame in half, as a power cut during a write would.
        OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 3).unwrap();
        {
            let log = LogEngine::open(dir.path()).unwrap();
            assert_eq!(log.last_entry_ok(1).unwrap().0, 5);
            log.append(1, vec![(6, b"again".to_vec())]).unwrap();
            log.sync_blocking().unwrap();
        }
        let log = LogEngine::open(dir.path()).unwrap();
        assert_eq!(log.last_entry_ok(1).unwrap(), (6, b"again".to_vec()));
    }

    #[test]
    fn corrupt_byte_ends_the_log_there() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = LogEngine::open(dir.path()).unwrap();
            for i in 1..=3 {
                log.append(1, vec![(i, vec![i as u8; 100])]).unwrap();
            }
            log.sync_blocking().unwrap();
        }
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let second_frame_body = (bytes.len() / 3) + 20;
        bytes[second_frame_body] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let log = LogEngine::open(dir.path()).unwrap();
        assert_eq!(log.entries_ok(1, ..).iter().map(|e| e.0).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn a_failed_write_poisons_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogEngine::open(dir.path()).unwrap();
        log.append(1, entries(1..3)).unwrap();
        // Swap the file for a read-only handle so the next write fails.
        log.lock().file = Arc::new(File::open(dir.path().join(FILE_NAME)).unwrap());
        assert!(log.append(1, entries(3..4)).is_err());
        log.lock().file = Arc::new(OpenOptions::new().append(true).open(dir.path().join(FILE_NAME)).unwrap());
        let e = log.append(1, entries(3..4)).unwrap_err().to_string();
        assert!(e.contains("earlier failure"), "{e}");
        assert!(log.sync_blocking().is_err(), "no sync may succeed after a failure");
    }

    #[test]
    fn non_consecutive_append_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogEngine::open(dir.path()).unwrap();
        assert!(log.append(1, vec![(1, vec![]), (3, vec![])]).is_err());
    }

    #[test]
    fn compact_if_mostly_dead_compacts_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogEngine::open(dir.path()).unwrap();
        log.append(1, entries(1..101)).unwrap();
        // All live: nothing to gain, nothing done (the size check of `maybe_compact` waits for
        // 64 MiB; this one does not, but needs half the file dead).
        let before = log.file_bytes();
        log.compact_if_mostly_dead().unwrap();
        assert_eq!(log.file_bytes(), before);
        log.purge(1, 90, b"p".to_vec()).unwrap();
        log.compact_if_mostly_dead().unwrap();
        assert!(log.file_bytes() < before / 5, "{} of {before} bytes", log.file_bytes());
        assert_eq!(log.entries_ok(1, ..).len(), 10);
    }

    #[test]
    fn compaction_keeps_live_state() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = LogEngine::open(dir.path()).unwrap();
            log.append(1, entries(1..1001)).unwrap();
            log.purge(1, 990, b"p".to_vec()).unwrap();
            log.save_vote(1, b"v".to_vec()).unwrap();
            let before = log.file_bytes();
            log.force_compact().unwrap();
            assert!(log.file_bytes() < before / 10);
            log.append(1, entries(1001..1003)).unwrap();
            log.sync_blocking().unwrap();
        }
        let log = LogEngine::open(dir.path()).unwrap();
        assert_eq!(log.entries_ok(1, ..).len(), 12);
        assert_eq!(log.purged(1).unwrap().0, 990);
        {
            let inner = log.lock();
            let g = &inner.groups[&1];
            assert_eq!(g.entry_bytes, total_len(&g.entries), "incremental size matches");
        }
        assert_eq!(log.vote(1), Some(b"v".to_vec()));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// A power cut keeps the fsynced prefix of the file and an arbitrary part of the rest,
        /// possibly damaged. Every record synced before the cut must survive, and what is
        /// recovered must be a consecutive prefix of what was written.
        #[test]
        fn power_cut_keeps_every_synced_record(
            batches in proptest::collection::vec((1usize..20, proptest::bool::ANY), 1..12),
            keep_frac in 0.0f64..1.0,
            damage in proptest::option::of(0usize..10_000),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut next = 1u64;
            let mut synced_upto = 0u64;
            let durable;
            {
                let log = LogEngine::open(dir.path()).unwrap();
                for (n, sync) in &batches {
                    let batch: Vec<(u64, Vec<u8>)> =
                        (next..next + *n as u64).map(|i| (i, i.to_le_bytes().repeat(3))).collect();
                    next += *n as u64;
                    log.append(7, batch).unwrap();
                    if *sync {
                        log.sync_blocking().unwrap();
                        synced_upto = next - 1;
                    }
                }
                durable = log.durable_bytes();
            }
            let path = dir.path().join(FILE_NAME);
            let bytes = std::fs::read(&path).unwrap();
            proptest::prop_assert!(durable as usize <= bytes.len());
            let tail = bytes.len() - durable as usize;
            let cut = durable as usize + (tail as f64 * keep_frac) as usize;
            let mut kept = bytes[..cut].to_vec();
            if let (Some(d), true) = (damage, cut > durable as usize) {
                let at = durable as usize + d % (cut - durable as usize);
                kept[at] ^= 0x5a;
            }
            std::fs::write(&path, &kept).unwrap();
            let log = LogEngine::open(dir.path()).unwrap();
            let got = log.entries_ok(7, ..);
            for (k, (i, data)) in got.iter().enumerate() {
                proptest::prop_assert_eq!(*i, k as u64 + 1, "recovered entries are a prefix");
                proptest::prop_assert_eq!(data, &i.to_le_bytes().repeat(3));
            }
            proptest::prop_assert!(got.len() as u64 >= synced_upto, "lost synced entries: {} < {}", got.len(), synced_upto);
        }
    }

    #[test]
    fn group_commit_serves_many_waiters() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogEngine::open(dir.path()).unwrap();
        let (tx, rx) = mpsc::channel();
        for i in 1..=100 {
            log.append(1, vec![(i, vec![0; 10])]).unwrap();
            let tx = tx.clone();
            log.sync(move |r| tx.send(r.is_ok()).unwrap());
        }
        for _ in 0..100 {
            assert!(rx.recv().unwrap());
        }
    }
}
