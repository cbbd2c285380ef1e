//! A small ordered key-value store in one append-only file: the time-series engine's storage.
//!
//! Why not sled: the engine writes each batch once (the head log), deletes it once its samples
//! are in chunks, and writes each chunk once. sled 0.34 rewrites whole tree nodes as they change
//! and reclaims the dead space lazily, so a day of node-exporter-like data (16 MB of compressed
//! chunks) took 194 MB of sled file. Here every byte is written once and the dead bytes are
//! dropped by a rewrite of the live ones when they dominate the file.
//!
//! Format: frames `len: u32 LE ‖ crc32(body): u32 LE ‖ body`, `body = kind: u8 ‖ …`:
//! - put: `1 ‖ key_len: u16 LE ‖ key ‖ value`,
//! - delete: `2 ‖ key_len: u16 LE ‖ key`,
//! - commit: `3`.
//!
//! A batch is its frames followed by a commit frame, written with one `write`. Replay applies
//! a batch only once its commit frame is read, and stops at the first torn or corrupt frame;
//! the file is truncated there, so a batch is applied entirely or not at all.
//!
//! Memory holds the keys in order with where each value lies in the file (small values are kept
//! in memory too); values are read back with `pread`, mostly from the page cache.
//!
//! Durability contract: `apply(batch, true)` returns after `fdatasync`: the batch, and every
//! batch before it, survive a crash. `apply(batch, false)` is durable at the next synced apply.
//! A compaction writes the live entries to a new file, `fsync`s it, renames it over the old one
//! and `fsync`s the directory: it either happened or not.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::Error;

const FRAME_HEADER: u64 = 8;
const PUT: u8 = 1;
const DELETE: u8 = 2;
const COMMIT: u8 = 3;
/// Values up to this size are kept in memory as well as in the file.
const INLINE: usize = 64;
/// The largest frame replay accepts: a length beyond it is corruption, not an allocation.
const MAX_FRAME: u32 = 64 << 20;

#[derive(Clone)]
struct Loc {
    offset: u64,
    len: u32,
    inline: Option<Arc<[u8]>>,
}

struct Inner {
    path: PathBuf,
    file: Arc<File>,
    file_bytes: u64,
    /// Bytes of the live entries' frames: what a compaction would keep.
    live_bytes: u64,
    map: BTreeMap<Vec<u8>, Loc>,
    compact_min_bytes: u64,
    /// A failed write left the file in an unknown state: refuse writes until reopened.
    poisoned: bool,
    /// Files installed by compactions and replacements since open (each was `fsync`ed whole).
    rewrites: u64,
    /// After a failed compaction: the file size at which to try again.
    retry_compact_at: u64,
}

/// (key, value) pairs: an engine's whole contents, for snapshots.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A freshly written file: the file, where each value lies, its length.
type Written = (File, BTreeMap<Vec<u8>, Loc>, u64);

/// Changes applied together.
#[derive(Default)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), Some(value.into())));
    }

    pub fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), None));
    }
}

pub struct LogKv {
    inner: Mutex<Inner>,
}

fn io_err(path: &Path, e: io::Error) -> Error {
    Error::Io(format!("{}: {e}", path.display()))
}

/// Bytes of a put frame of this key and value length.
fn frame_len(key: &[u8], value_len: u32) -> u64 {
    FRAME_HEADER + 1 + 2 + key.len() as u64 + value_len as u64
}

/// Appends a frame; returns the offset of its value relative to `out`'s start.
fn put_frame(out: &mut Vec<u8>, key: &[u8], value: Option<&[u8]>) -> Result<usize, Error> {
    let key_len: u16 = key
        .len()
        .try_into()
        .map_err(|_| Error::Invalid(format!("storage key of {} bytes (the limit is 65535)", key.len())))?;
    let body_len = 1 + 2 + key.len() + value.map_or(0, |v| v.len());
    if body_len > MAX_FRAME as usize {
        return Err(Error::Invalid(format!("storage value of {body_len} bytes (the limit is {MAX_FRAME})")));
    }
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(if value.is_some() { PUT } else { DELETE });
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(key);
    let value_at = out.len();
    if let Some(v) = value {
        out.extend_from_slice(v);
    }
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(value_at)
}

fn put_commit(out: &mut Vec<u8>) {
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&[COMMIT]).to_le_bytes());
    out.push(COMMIT);
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))
}

impl LogKv {
    /// Opens (or creates) the store at `path`, replaying it; a torn tail is cut off.
    pub fn open(path: &Path) -> Result<LogKv, Error> {
        Self::open_with(path, 16 << 20)
    }

    /// `open`, compacting only once the file reaches `compact_min_bytes` (tests use a small one).
    pub fn open_with(path: &Path, compact_min_bytes: u64) -> Result<LogKv, Error> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        // A compaction that died before its rename leaves a temporary file: it is not the store.
        let _ = std::fs::remove_file(path.with_extension("tmp"));
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        let mut map = BTreeMap::new();
        let mut live_bytes = 0;
        let end = replay(&file, &mut map, &mut live_bytes).map_err(|e| io_err(path, e))?;
        let len = file.metadata().map_err(|e| io_err(path, e))?.len();
        if len > end {
            // Only a batch never acknowledged can be torn: cut it off so appends follow the
            // last complete one.
            file.set_len(end).map_err(|e| io_err(path, e))?;
            file.sync_all().map_err(|e| io_err(path, e))?;
        }
        Ok(LogKv {
            inner: Mutex::new(Inner {
                path: path.to_path_buf(),
                file: Arc::new(file),
                file_bytes: end,
                live_bytes,
                map,
                compact_min_bytes,
                poisoned: false,
                rewrites: 0,
                retry_compact_at: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `batch` atomically; with `sync`, durably before returning.
    pub fn apply(&self, batch: Batch, sync: bool) -> Result<(), Error> {
        if batch.ops.is_empty() {
            return Ok(());
        }
        let mut inner = self.lock();
        if inner.poisoned {
            return Err(Error::Io(format!("{}: an earlier write failed; reopen", inner.path.display())));
        }
        let mut buf = Vec::with_capacity(
            batch.ops.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()) + 16).sum(),
        );
        let mut placed = Vec::with_capacity(batch.ops.len());
        for (k, v) in &batch.ops {
            placed.push(put_frame(&mut buf, k, v.as_deref())?);
        }
        put_commit(&mut buf);
        let base = inner.file_bytes;
        // The file is opened for appending: the write lands at its end.
        let res =
            (&*inner.file).write_all(&buf).and_then(|_| if sync { inner.file.sync_data() } else { Ok(()) });
        if let Err(e) = res {
            inner.poisoned = true;
            return Err(io_err(&inner.path, e));
        }
        inner.file_bytes += buf.len() as u64;
        let Inner { map, live_bytes, .. } = &mut *inner;
        for ((k, v), at) in batch.ops.into_iter().zip(placed) {
            let loc = v.map(|v| Loc {
                offset: base + at as u64,
                len: v.len() as u32,
                inline: (v.len() <= INLINE).then(|| Arc::from(v.as_slice())),
            });
            account(map, live_bytes, k, loc);
        }
        if inner.file_bytes >= inner.compact_min_bytes.max(inner.retry_compact_at)
            && inner.file_bytes >= 2 * inner.live_bytes
        {
            // The batch is written and durable as asked: a failed compaction (a full disk)
            // is not its failure. The old file stays in use; try again once it has grown by
            // half, not on every apply.
            if Self::compact(&mut inner).is_err() {
                let _ = std::fs::remove_file(inner.path.with_extension("tmp"));
                inner.retry_compact_at = inner.file_bytes + inner.file_bytes / 2;
            }
        }
        Ok(())
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let (file, loc) = {
            let inner = self.lock();
            match inner.map.get(key) {
                None => return Ok(None),
                Some(loc) => (inner.file.clone(), loc.clone()),
            }
        };
        read(&file, &loc).map(Some)
    }

    /// The entries with keys in `range`, in key order; values are read as the iterator is
    /// consumed (from the file as it was when `range` was called, even if compacted since).
    pub fn range<R: RangeBounds<Vec<u8>>>(&self, range: R) -> Iter {
        let inner = self.lock();
        // An empty range (start after end) is empty, not a panic as in `BTreeMap::range`.
        use std::ops::Bound::{Excluded, Included};
        let empty = match (range.start_bound(), range.end_bound()) {
            (Included(s) | Excluded(s), Included(e) | Excluded(e)) if s > e => true,
            (Excluded(s), Excluded(e)) => s == e,
            _ => false,
        };
        if empty {
            return Iter { file: inner.file.clone(), items: Vec::new().into_iter() };
        }
        let items: Vec<(Vec<u8>, Loc)> =
            inner.map.range(range).map(|(k, l)| (k.clone(), l.clone())).collect();
        Iter { file: inner.file.clone(), items: items.into_iter() }
    }

    pub fn scan_prefix(&self, prefix: &[u8]) -> Iter {
        let mut end = prefix.to_vec();
        // The smallest key after every key with this prefix (a prefix of all 0xff bytes has no
        // such key: scan to the end).
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return self.range(prefix.to_vec()..end);
            }
        }
        self.range(prefix.to_vec()..)
    }

    /// Keys in `range` and their value sizes, without reading any value.
    pub fn sizes<R: RangeBounds<Vec<u8>>>(&self, range: R) -> Vec<(Vec<u8>, u64)> {
        self.lock().map.range(range).map(|(k, l)| (k.clone(), l.len as u64)).collect()
    }

    /// Replaces the whole contents with `entries` (sorted or not), durably.
    pub fn replace_all(&self, entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Result<(), Error> {
        // The old contents stay, in memory and on disk, until the new file is in place.
        let mut inner = self.lock();
        let tmp = inner.path.with_extension("tmp");
        let (file, map, live) = write_file(&tmp, entries.into_iter().map(|(k, v)| (k, Src::Value(v))), None)?;
        install(&mut inner, &tmp, file, map, live)
    }

    /// Rewrites the file with only the live entries, now.
    pub fn compact_now(&self) -> Result<(), Error> {
        Self::compact(&mut self.lock())
    }

    fn compact(inner: &mut Inner) -> Result<(), Error> {
        let tmp = inner.path.with_extension("tmp");
        let entries: Vec<(Vec<u8>, Loc)> = inner.map.iter().map(|(k, l)| (k.clone(), l.clone())).collect();
        let old = inner.file.clone();
        let (file, map, live) =
            write_file(&tmp, entries.into_iter().map(|(k, l)| (k, Src::Old(l))), Some(&old))?;
        install(inner, &tmp, file, map, live)
    }

    /// Hard-links the file at `to` after making it durable, and returns its length: the first
    /// that many bytes of the link are this store as of now, and never change — the file is
    /// only appended to, and a compaction renames a new file in instead of rewriting this one.
    /// Read it back with `read_link`.
    pub fn link(&self, to: &Path) -> Result<u64, Error> {
        let inner = self.lock();
        if inner.poisoned {
            return Err(Error::Io(format!("{}: an earlier write failed; reopen", inner.path.display())));
        }
        inner.file.sync_data().map_err(|e| io_err(&inner.path, e))?;
        std::fs::hard_link(&inner.path, to).map_err(|e| io_err(to, e))?;
        sync_dir(to.parent().unwrap_or(Path::new(".")))?;
        Ok(inner.file_bytes)
    }

    /// How many times the file was rewritten (compacted or replaced) since open.
    pub fn rewrites(&self) -> u64 {
        self.lock().rewrites
    }

    /// Bytes of the file, and of the live entries in it.
    pub fn bytes(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.file_bytes, inner.live_bytes)
    }
}

/// The entries of a store as its first `len` bytes hold them (a `link`ed copy), read-only. A
/// copy whose committed batches do not end exactly at `len` is damaged: an error, not a guess.
pub fn read_link(path: &Path, len: u64) -> Result<Entries, Error> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let mut map = BTreeMap::new();
    let mut live = 0;
    let end = replay((&file).take(len), &mut map, &mut live).map_err(|e| io_err(path, e))?;
    if end != len {
        return Err(Error::Corrupt(format!(
            "{}: committed batches end at byte {end}, the snapshot says {len}",
            path.display()
        )));
    }
    map.into_iter().map(|(k, l)| read(&file, &l).map(|v| (k, v))).collect()
}

/// A live entry to copy: from memory, or from the old file.
enum Src {
    Value(Vec<u8>),
    Old(Loc),
}

/// Writes `entries` as one committed batch to a new file at `tmp`, `fsync`ed.
fn write_file(
    tmp: &Path,
    entries: impl Iterator<Item = (Vec<u8>, Src)>,
    old: Option<&File>,
) -> Result<Written, Error> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .truncate(false)
        .open(tmp)
        .map_err(|e| io_err(tmp, e))?;
    file.set_len(0).map_err(|e| io_err(tmp, e))?;
    let mut map = BTreeMap::new();
    let mut pos = 0u64;
    let mut buf = Vec::with_capacity(1 << 20);
    for (k, src) in entries {
        let value = match src {
            Src::Value(v) => v,
            Src::Old(l) => match old {
                Some(f) => read(f, &l)?,
                None => return Err(Error::Corrupt("compaction without its source file".into())),
            },
        };
        let at = put_frame(&mut buf, &k, Some(&value))?;
        map.insert(
            k,
            Loc {
                offset: pos + at as u64,
                len: value.len() as u32,
                inline: (value.len() <= INLINE).then(|| Arc::from(value.as_slice())),
            },
        );
        if buf.len() >= 1 << 20 {
            file.write_all(&buf).map_err(|e| io_err(tmp, e))?;
            pos += buf.len() as u64;
            buf.clear();
        }
    }
    put_commit(&mut buf);
    file.write_all(&buf).map_err(|e| io_err(tmp, e))?;
    pos += buf.len() as u64;
    file.sync_all().map_err(|e| io_err(tmp, e))?;
    Ok((file, map, pos))
}

/// Renames the new file over the store's and switches to it.
fn install(
    inner: &mut Inner,
    tmp: &Path,
    file: File,
    map: BTreeMap<Vec<u8>, Loc>,
    bytes: u64,
) -> Result<(), Error> {
    // A failed rename changed nothing: the old file is still the store.
    std::fs::rename(tmp, &inner.path).map_err(|e| io_err(&inner.path, e))?;
    // From here the new file is the one at the path: switch to it whatever follows, or
    // appends would go to the unlinked old one.
    inner.live_bytes = map.iter().map(|(k, l)| frame_len(k, l.len)).sum();
    inner.file = Arc::new(file);
    // The commit frame is not live.
    inner.file_bytes = bytes;
    inner.map = map;
    inner.rewrites += 1;
    // Until the rename is durable a crash may bring the old file back, without what is
    // appended from now on: refuse writes rather than acknowledge them.
    if let Err(e) = sync_dir(inner.path.parent().unwrap_or(Path::new("."))) {
        inner.poisoned = true;
        return Err(e);
    }
    inner.poisoned = false;
    Ok(())
}

fn read(file: &File, loc: &Loc) -> Result<Vec<u8>, Error> {
    if let Some(v) = &loc.inline {
        return Ok(v.to_vec());
    }
    let mut buf = vec![0; loc.len as usize];
    file.read_exact_at(&mut buf, loc.offset).map_err(|e| Error::Io(format!("read: {e}")))?;
    Ok(buf)
}

/// Puts (`Some`) or deletes (`None`) `key` in `map`, keeping `live` (the bytes of the live
/// entries' frames) up to date: the one rule for appends and for replay.
fn account(map: &mut BTreeMap<Vec<u8>, Loc>, live: &mut u64, key: Vec<u8>, loc: Option<Loc>) {
    if let Some(loc) = &loc {
        *live += frame_len(&key, loc.len);
    }
    let old = match loc {
        Some(loc) => map.insert(key.clone(), loc),
        None => map.remove(&key),
    };
    if let Some(old) = old {
        *live -= frame_len(&key, old.len);
    }
}

/// Replays the file into `map`; returns where the last complete batch ends.
fn replay(file: impl Read, map: &mut BTreeMap<Vec<u8>, Loc>, live: &mut u64) -> io::Result<u64> {
    let mut r = io::BufReader::with_capacity(1 << 20, file);
    let mut pos = 0u64;
    let mut committed = 0u64;
    let mut pending: Vec<(Vec<u8>, Option<Loc>)> = vec![];
    let mut header = [0u8; 8];
    let mut body = vec![];
    loop {
        if !read_full(&mut r, &mut header)? {
            break;
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len > MAX_FRAME {
            break;
        }
        body.resize(len as usize, 0);
        if !read_full(&mut r, &mut body)? || crc32fast::hash(&body) != crc {
            break;
        }
        let body_at = pos + FRAME_HEADER;
        pos += FRAME_HEADER + len as u64;
        match body[0] {
            COMMIT if len == 1 => {
                for (k, loc) in pending.drain(..) {
                    account(map, live, k, loc);
                }
                committed = pos;
            }
            kind @ (PUT | DELETE) if len >= 3 => {
                let key_len = u16::from_le_bytes([body[1], body[2]]) as usize;
                let Some(key) = body.get(3..3 + key_len) else { break };
                let loc = (kind == PUT).then(|| {
                    let v = &body[3 + key_len..];
                    Loc {
                        offset: body_at + 3 + key_len as u64,
                        len: v.len() as u32,
                        inline: (v.len() <= INLINE).then(|| Arc::from(v)),
                    }
                });
                pending.push((key.to_vec(), loc));
            }
            _ => break,
        }
    }
    Ok(committed)
}

/// Fills `buf`; false at a clean or torn end of file.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => return Ok(false),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Entries of a range, values read on demand.
pub struct Iter {
    file: Arc<File>,
    items: std::vec::IntoIter<(Vec<u8>, Loc)>,
}

impl Iterator for Iter {
    type Item = Result<(Vec<u8>, Vec<u8>), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let (k, l) = self.items.next()?;
        Some(read(&self.file, &l).map(|v| (k, v)))
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Self::Item> {
        let (k, l) = self.items.next_back()?;
        Some(read(&self.file, &l).map(|v| (k, v)))
    }
}

impl Iter {
    /// The entries whose keys pass `keep`, values still read from the same file (a snapshot).
    pub fn filter_keys(self, mut keep: impl FnMut(&[u8]) -> bool) -> Iter {
        let items: Vec<(Vec<u8>, Loc)> = self.items.filter(|(k, _)| keep(k)).collect();
        Iter { file: self.file, items: items.into_iter() }
    }

    /// The keys only, without reading values.
    pub fn keys(self) -> impl DoubleEndedIterator<Item = Vec<u8>> {
        self.items.map(|(k, _)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(kv: &LogKv) -> Vec<(Vec<u8>, Vec<u8>)> {
        kv.range::<std::ops::RangeFull>(..).map(|r| r.unwrap()).collect()
    }

    fn put(kv: &LogKv, pairs: &[(&str, &str)]) {
        let mut b = Batch::default();
        for (k, v) in pairs {
            b.insert(k.as_bytes(), v.as_bytes());
        }
        kv.apply(b, true).unwrap();
    }

    fn kvs(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn reopen_replays_puts_and_deletes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        {
            let kv = LogKv::open(&path).unwrap();
            let big = "x".repeat(1000);
            put(&kv, &[("a", "1"), ("b", &big), ("c", "3")]);
            let mut b = Batch::default();
            b.remove("c");
            b.insert("a", "2");
            kv.apply(b, true).unwrap();
            assert_eq!(kv.get(b"b").unwrap().unwrap().len(), 1000);
        }
        let kv = LogKv::open(&path).unwrap();
        assert_eq!(all(&kv), kvs(&[("a", "2"), ("b", &"x".repeat(1000))]));
        assert_eq!(kv.get(b"c").unwrap(), None);
        assert_eq!(kv.scan_prefix(b"b").keys().collect::<Vec<_>>(), vec![b"b".to_vec()]);
        // Backwards or empty ranges are empty (`BTreeMap::range` would panic).
        assert_eq!(kv.range(b"b".to_vec()..b"a".to_vec()).count(), 0);
        assert_eq!(kv.range(b"b".to_vec()..=b"a".to_vec()).count(), 0);
        assert_eq!(kv.range(b"a".to_vec()..b"a".to_vec()).count(), 0);
        assert_eq!(kv.range(b"a".to_vec()..=b"a".to_vec()).count(), 1);
        use std::ops::Bound::Excluded;
        assert_eq!(kv.range((Excluded(b"a".to_vec()), Excluded(b"a".to_vec()))).count(), 0);
    }

    #[test]
    fn an_uncommitted_or_torn_batch_is_dropped_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        {
            let kv = LogKv::open(&path).unwrap();
            put(&kv, &[("a", "1")]);
            put(&kv, &[("b", "2"), ("c", "3")]);
        }
        // Cut the second batch anywhere before its commit frame ends: neither b nor c survives.
        let full = std::fs::metadata(&path).unwrap().len();
        for cut in [full - 1, full - 9, full - 20] {
            let tmp = dir.path().join(format!("cut{cut}.log"));
            std::fs::copy(&path, &tmp).unwrap();
            OpenOptions::new().write(true).open(&tmp).unwrap().set_len(cut).unwrap();
            let kv = LogKv::open(&tmp).unwrap();
            assert_eq!(all(&kv), kvs(&[("a", "1")]), "cut at {cut}");
            // The log stays appendable after the cut.
            put(&kv, &[("d", "4")]);
            drop(kv);
            assert_eq!(all(&LogKv::open(&tmp).unwrap()), kvs(&[("a", "1"), ("d", "4")]));
        }
        // A flipped byte inside the second batch ends the log there too.
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 12] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(all(&LogKv::open(&path).unwrap()), kvs(&[("a", "1")]));
    }

    #[test]
    fn compaction_keeps_the_live_entries_and_open_iterators_keep_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let kv = LogKv::open_with(&path, 4096).unwrap();
        let v = "v".repeat(200);
        for i in 0..50 {
            put(&kv, &[(&format!("k{:03}", i % 5), &format!("{v}{i}"))]);
        }
        // 50 writes of 5 keys: the file was compacted along the way and stays small.
        let (file, live) = kv.bytes();
        assert!(file < 4096 + 2 * live, "file {file}, live {live}");
        let it = kv.range::<std::ops::RangeFull>(..);
        kv.compact_now().unwrap();
        let got: Vec<_> = it.map(|r| r.unwrap()).collect();
        assert_eq!(got.len(), 5);
        assert_eq!(got[4], (b"k004".to_vec(), format!("{v}49").into_bytes()));
        drop(kv);
        let kv = LogKv::open(&path).unwrap();
        assert_eq!(all(&kv), got);
        assert_eq!(kv.bytes().0, kv.bytes().1 + FRAME_HEADER + 1, "only live frames and one commit");
    }

    #[test]
    fn a_failed_compaction_does_not_fail_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let kv = LogKv::open_with(&path, 1024).unwrap();
        // Something in the way of the compaction's temporary file (a full disk behaves alike).
        std::fs::create_dir(path.with_extension("tmp")).unwrap();
        let v = "v".repeat(300);
        for i in 0..20 {
            put(&kv, &[("k", &format!("{v}{i}"))]);
        }
        assert_eq!(kv.rewrites(), 0, "no compaction could run");
        assert_eq!(all(&kv), kvs(&[("k", &format!("{v}19"))]));
        // Out of the way again: the next compaction runs, and nothing was lost.
        std::fs::remove_dir(path.with_extension("tmp")).unwrap();
        for i in 20..40 {
            put(&kv, &[("k", &format!("{v}{i}"))]);
        }
        assert!(kv.rewrites() > 0);
        drop(kv);
        assert_eq!(all(&LogKv::open(&path).unwrap()), kvs(&[("k", &format!("{v}39"))]));
    }

    #[test]
    fn a_failed_replacement_keeps_the_old_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let kv = LogKv::open(&path).unwrap();
        put(&kv, &[("a", "1")]);
        std::fs::create_dir(path.with_extension("tmp")).unwrap();
        assert!(kv.replace_all(kvs(&[("b", "2")])).is_err());
        assert_eq!(all(&kv), kvs(&[("a", "1")]), "in memory");
        put(&kv, &[("c", "3")]);
        drop(kv);
        std::fs::remove_dir(path.with_extension("tmp")).unwrap();
        assert_eq!(all(&LogKv::open(&path).unwrap()), kvs(&[("a", "1"), ("c", "3")]), "on disk");
    }

    #[test]
    fn replace_all_swaps_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let kv = LogKv::open(&path).unwrap();
        put(&kv, &[("a", "1"), ("b", "2")]);
        kv.replace_all(kvs(&[("c", "3")])).unwrap();
        assert_eq!(all(&kv), kvs(&[("c", "3")]));
        put(&kv, &[("d", "4")]);
        drop(kv);
        assert_eq!(all(&LogKv::open(&path).unwrap()), kvs(&[("c", "3"), ("d", "4")]));
    }

    #[test]
    fn oversized_keys_are_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let kv = LogKv::open(&dir.path().join("t.log")).unwrap();
        let mut b = Batch::default();
        b.insert(vec![0u8; 70_000], b"v".to_vec());
        let err = kv.apply(b, true).unwrap_err().to_string();
        assert!(err.contains("storage key of 70000 bytes"), "{err}");
        assert!(all(&kv).is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Random batches, a power cut after any of them (the file cut anywhere after the last
        /// synced batch), reopen: exactly the synced batches, and maybe some unsynced ones whole.
        #[test]
        fn matches_a_model_across_power_cuts(
            batches in proptest::collection::vec(
                (proptest::collection::vec((0u8..8, proptest::option::of(0usize..300)), 1..6), any::<bool>()),
                1..30),
            cut in any::<prop::sample::Index>(),
            compact_min in prop_oneof![Just(512u64), Just(1 << 20)],
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.log");
            let kv = LogKv::open_with(&path, compact_min).unwrap();
            let mut rewrites = 0;
            // The model after each batch, and the file length when it was last synced.
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut states = vec![model.clone()];
            let (mut synced_state, mut synced_len) = (0, 0);
            for (i, (ops, sync)) in batches.iter().enumerate() {
                let mut b = Batch::default();
                for (k, v) in ops {
                    match v {
                        Some(n) => {
                            let val = vec![i as u8; *n];
                            b.insert(vec![*k], val.clone());
                            model.insert(vec![*k], val);
                        }
                        None => {
                            b.remove(vec![*k]);
                            model.remove(&vec![*k]);
                        }
                    }
                }
                kv.apply(b, *sync).unwrap();
                states.push(model.clone());
                let len = kv.bytes().0;
                // A synced apply, or a compaction during it (the new file was fsynced whole).
                if *sync || kv.rewrites() > rewrites {
                    synced_state = states.len() - 1;
                    synced_len = len;
                }
                rewrites = kv.rewrites();
            }
            prop_assert_eq!(all(&kv), model.clone().into_iter().collect::<Vec<_>>());
            let len = kv.bytes().0;
            drop(kv);
            // The power cut loses some of what was not synced: a tail after `synced_len`.
            let at = synced_len + cut.index((len - synced_len) as usize + 1) as u64;
            OpenOptions::new().write(true).open(&path).unwrap().set_len(at).unwrap();
            let got: BTreeMap<Vec<u8>, Vec<u8>> = all(&LogKv::open(&path).unwrap()).into_iter().collect();
            prop_assert!(
                states[synced_state..].contains(&got),
                "lost a synced batch or kept part of one: {:?}", got
            );
            if at == len {
                prop_assert_eq!(&got, states.last().unwrap());
            }
        }
    }
}
