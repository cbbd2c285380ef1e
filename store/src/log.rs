//! The raft log: one append-only write-ahead file shared by every raft group of the node, with
//! group-committed `fdatasync`.
//!
//! Why not sled: sled 0.34's `flush` issues `sync_file_range`, which does not make file
//! metadata durable and is not a full `fsync` (spacejam/sled#1452), so an entry that raft has
//! acknowledged could vanish on power loss. Raft's safety needs the log and the vote durable
//! *before* a node answers, so they get their own file, as TiKV keeps its raft log apart from
//! its KV engine. One file for all groups turns many small appends into one `fdatasync`.
//!
//! Format: a sequence of frames `len: u32 LE ‖ crc32(body): u32 LE ‖ body`, body a bincoded
//! [`WalRecord`]. Replay applies records in order. A torn or corrupt frame ends the log: it and
//! everything after it are dropped (the tail after the last `fdatasync` is all that can be torn,
//! and it was never acknowledged). When the file holds mostly dead records it is rewritten from
//! the live state: new file, `fsync`, `rename`, `fsync` of the directory.
//!
//! Durability contract: `append`, `truncate`, `purge` and `save_*` only hand bytes to the kernel;
//! they are durable once a later `sync` callback (or `sync_blocking`) has reported success.
//! Records are durable in file order, so a synced record implies all earlier ones are.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Error, Result};

pub type GroupId = u64;

const FILE_NAME: &str = "raft.wal";
/// Rewrite the file when it is this large and mostly dead.
const COMPACT_MIN_BYTES: u64 = 64 << 20;

#[derive(Debug, Serialize, Deserialize)]
enum WalRecord {
    /// Entries with consecutive indexes from `first`.
    Entries {
        group: GroupId,
        first: u64,
        entries: Vec<Vec<u8>>,
    },
    /// Drop entries with index >= `since`.
    Truncate {
        group: GroupId,
        since: u64,
    },
    /// Drop entries with index <= `upto`; `log_id` is the caller's encoding of the last purged id.
    Purge {
        group: GroupId,
        upto: u64,
        log_id: Vec<u8>,
    },
    Vote {
        group: GroupId,
        data: Vec<u8>,
    },
    Committed {
        group: GroupId,
        data: Vec<u8>,
    },
}

#[derive(Default)]
struct GroupLog {
    entries: BTreeMap<u64, Vec<u8>>,
    /// Sum of the entries' lengths, kept up to date so the compaction check is O(1).
    entry_bytes: u64,
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
    purged: Option<(u64, Vec<u8>)>,
}

fn total_len(m: &BTreeMap<u64, Vec<u8>>) -> u64 {
    m.values().map(|e| e.len() as u64).sum()
}

impl GroupLog {
    fn apply(&mut self, rec: WalRecord) {
        match rec {
            WalRecord::Entries { first, entries, .. } => {
                for (i, e) in entries.into_iter().enumerate() {
                    self.entry_bytes += e.len() as u64;
                    if let Some(old) = self.entries.insert(first + i as u64, e) {
                        self.entry_bytes -= old.len() as u64;
                    }
                }
            }
            WalRecord::Truncate { since, .. } => {
                let removed = self.entries.split_off(&since);
                self.entry_bytes -= total_len(&removed);
            }
            WalRecord::Purge { upto, log_id, .. } => {
                let kept = self.entries.split_off(&(upto + 1));
                let removed = std::mem::replace(&mut self.entries, kept);
                self.entry_bytes -= total_len(&removed);
                if self.purged.as_ref().is_none_or(|(p, _)| *p <= upto) {
                    self.purged = Some((upto, log_id));
                }
            }
            WalRecord::Vote { data, .. } => self.vote = Some(data),
            WalRecord::Committed { data, .. } => self.committed = Some(data),
        }
    }

    /// Approximate bytes a rewrite of this group would take (frame overhead included).
    fn live_bytes(&self) -> u64 {
        self.entry_bytes + 16 * self.entries.len() as u64 + 256
    }
}

fn group_of(rec: &WalRecord) -> GroupId {
    match rec {
        WalRecord::Entries { group, .. }
        | WalRecord::Truncate { group, .. }
        | WalRecord::Purge { group, .. }
        | WalRecord::Vote { group, .. }
        | WalRecord::Committed { group, .. } => *group,
    }
}

fn frame(rec: &WalRecord, out: &mut Vec<u8>) -> Result<()> {
    let body = codec::encode(rec)?;
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Parses frames; returns the records and the length of the valid prefix.
fn parse(bytes: &[u8]) -> (Vec<WalRecord>, usize) {
    let mut out = vec![];
    let mut pos = 0;
    while bytes.len() - pos >= 8 {
        let len = u32::from_le_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
            as usize;
        let crc = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]);
        if len > codec::MAX_DECODE_BYTES || bytes.len() - pos - 8 < len {
            break;
        }
        let body = &bytes[pos + 8..pos + 8 + len];
        if crc32fast::hash(body) != crc {
            break;
        }
        match codec::decode::<WalRecord>(body) {
            Ok(rec) => out.push(rec),
            Err(_) => break,
        }
        pos += 8 + len;
    }
    (out, pos)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

struct Inner {
    dir: PathBuf,
    file: Arc<File>,
    file_bytes: u64,
    groups: HashMap<GroupId, GroupLog>,
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
        let mut bytes = vec![];
        if existed {
            File::open(&path)?.read_to_end(&mut bytes)?;
        }
        let (records, valid) = parse(&bytes);
        if valid < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                dropped = bytes.len() - valid,
                "raft log has a torn or corrupt tail; dropping it"
            );
        }
        let mut groups: HashMap<GroupId, GroupLog> = HashMap::new();
        for rec in records {
            groups.entry(group_of(&rec)).or_default().apply(rec);
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        if valid < bytes.len() {
            file.set_len(valid as u64)?;
            file.sync_all()?;
        }
        if !existed {
            sync_dir(dir)?;
        }
        let file = OpenOptions::new().append(true).open(&path)?;
        let inner = Arc::new(Mutex::new(Inner {
            dir: dir.to_path_buf(),
            file: Arc::new(file),
            file_bytes: valid as u64,
            groups,
        }));
        let (tx, rx) = mpsc::channel::<SyncCallback>();
        let durable = Arc::new(AtomicU64::new(valid as u64));
        let (for_syncer, durable_syncer) = (inner.clone(), durable.clone());
        std::thread::Builder::new()
            .name("raft-wal-sync".into())
            .spawn(move || syncer(for_syncer, durable_syncer, rx))?;
        Ok(LogEngine {
            inner,
            syncer: tx,
            durable,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves state that replay would rebuild; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, inner: &mut Inner, recs: Vec<WalRecord>) -> Result<()> {
        let mut buf = vec![];
        for r in &recs {
            frame(r, &mut buf)?;
        }
        (&*inner.file).write_all(&buf)?;
        inner.file_bytes += buf.len() as u64;
        for r in recs {
            inner.groups.entry(group_of(&r)).or_default().apply(r);
        }
        Ok(())
    }

    /// Appends entries `(index, bytes)` with consecutive indexes.
    pub fn append(&self, group: GroupId, entries: Vec<(u64, Vec<u8>)>) -> Result<()> {
        let Some(first) = entries.first().map(|e| e.0) else {
            return Ok(());
        };
        for (i, (idx, _)) in entries.iter().enumerate() {
            if *idx != first + i as u64 {
                return Err(Error::Internal(format!(
                    "non-consecutive log append at index {idx}"
                )));
            }
        }
        let entries = entries.into_iter().map(|e| e.1).collect();
        let mut inner = self.lock();
        self.write(
            &mut inner,
            vec![WalRecord::Entries {
                group,
                first,
                entries,
            }],
        )?;
        self.maybe_compact(&mut inner)
    }

    pub fn truncate(&self, group: GroupId, since: u64) -> Result<()> {
        let mut inner = self.lock();
        self.write(&mut inner, vec![WalRecord::Truncate { group, since }])
    }

    pub fn purge(&self, group: GroupId, upto: u64, log_id: Vec<u8>) -> Result<()> {
        let mut inner = self.lock();
        self.write(
            &mut inner,
            vec![WalRecord::Purge {
                group,
                upto,
                log_id,
            }],
        )?;
        self.maybe_compact(&mut inner)
    }

    pub fn save_vote(&self, group: GroupId, data: Vec<u8>) -> Result<()> {
        let mut inner = self.lock();
        self.write(&mut inner, vec![WalRecord::Vote { group, data }])
    }

    pub fn save_committed(&self, group: GroupId, data: Vec<u8>) -> Result<()> {
        let mut inner = self.lock();
        self.write(&mut inner, vec![WalRecord::Committed { group, data }])
    }

    pub fn vote(&self, group: GroupId) -> Option<Vec<u8>> {
        self.lock().groups.get(&group).and_then(|g| g.vote.clone())
    }

    pub fn committed(&self, group: GroupId) -> Option<Vec<u8>> {
        self.lock()
            .groups
            .get(&group)
            .and_then(|g| g.committed.clone())
    }

    pub fn purged(&self, group: GroupId) -> Option<(u64, Vec<u8>)> {
        self.lock()
            .groups
            .get(&group)
            .and_then(|g| g.purged.clone())
    }

    pub fn last_entry(&self, group: GroupId) -> Option<(u64, Vec<u8>)> {
        let inner = self.lock();
        let g = inner.groups.get(&group)?;
        g.entries.last_key_value().map(|(k, v)| (*k, v.clone()))
    }

    pub fn entries<R: RangeBounds<u64>>(&self, group: GroupId, range: R) -> Vec<(u64, Vec<u8>)> {
        let inner = self.lock();
        match inner.groups.get(&group) {
            Some(g) => g
                .entries
                .range(range)
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            None => vec![],
        }
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
        rx.recv()
            .map_err(|_| io::Error::other("raft log syncer has stopped"))?
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
        let mut buf = vec![];
        for (group, g) in &inner.groups {
            let group = *group;
            if let Some((upto, log_id)) = &g.purged {
                frame(
                    &WalRecord::Purge {
                        group,
                        upto: *upto,
                        log_id: log_id.clone(),
                    },
                    &mut buf,
                )?;
            }
            if let Some(data) = &g.vote {
                frame(
                    &WalRecord::Vote {
                        group,
                        data: data.clone(),
                    },
                    &mut buf,
                )?;
            }
            if let Some(data) = &g.committed {
                frame(
                    &WalRecord::Committed {
                        group,
                        data: data.clone(),
                    },
                    &mut buf,
                )?;
            }
            if let Some((&first, _)) = g.entries.first_key_value() {
                let entries = g.entries.values().cloned().collect();
                frame(
                    &WalRecord::Entries {
                        group,
                        first,
                        entries,
                    },
                    &mut buf,
                )?;
            }
        }
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        let path = inner.dir.join(FILE_NAME);
        std::fs::rename(&tmp, &path)?;
        sync_dir(&inner.dir)?;
        inner.file = Arc::new(OpenOptions::new().append(true).open(&path)?);
        tracing::info!(
            before = inner.file_bytes,
            after = buf.len(),
            "raft log compacted"
        );
        inner.file_bytes = buf.len() as u64;
        Ok(())
    }

    #[cfg(test)]
    fn force_compact(&self) -> Result<()> {
        let mut inner = self.lock();
        self.compact(&mut inner)
    }
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
        let (file, len) = {
            let g = inner.lock().unwrap_or_else(|p| p.into_inner());
            (g.file.clone(), g.file_bytes)
        };
        let result = file.sync_data();
        if result.is_ok() {
            durable.fetch_max(len, Ordering::SeqCst);
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
        let got: Vec<u64> = log.entries(1, ..).iter().map(|e| e.0).collect();
        assert_eq!(got, vec![4, 5, 6, 7, 8]);
        assert_eq!(log.last_entry(1).unwrap(), (8, b"new8".to_vec()));
        assert_eq!(log.purged(1), Some((3, b"id3".to_vec())));
        assert_eq!(log.vote(1), Some(b"vote".to_vec()));
        assert_eq!(log.committed(1), Some(b"c7".to_vec()));
        assert_eq!(log.entries(2, 2..).len(), 2);
        assert_eq!(log.vote(2), None);
        assert_eq!(log.entries(3, ..), vec![]);
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
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        {
            let log = LogEngine::open(dir.path()).unwrap();
            assert_eq!(log.last_entry(1).unwrap().0, 5);
            log.append(1, vec![(6, b"again".to_vec())]).unwrap();
            log.sync_blocking().unwrap();
        }
        let log = LogEngine::open(dir.path()).unwrap();
        assert_eq!(log.last_entry(1).unwrap(), (6, b"again".to_vec()));
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
        assert_eq!(
            log.entries(1, ..).iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn non_consecutive_append_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogEngine::open(dir.path()).unwrap();
        assert!(log.append(1, vec![(1, vec![]), (3, vec![])]).is_err());
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
        assert_eq!(log.entries(1, ..).len(), 12);
        assert_eq!(log.purged(1).unwrap().0, 990);
        {
            let inner = log.lock();
            let g = &inner.groups[&1];
            assert_eq!(
                g.entry_bytes,
                total_len(&g.entries),
                "incremental size matches"
            );
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
            let got = log.entries(7, ..);
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
