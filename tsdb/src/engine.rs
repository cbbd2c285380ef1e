//! The storage engine: series, an inverted label index, a head of recent samples per series, and
//! compressed chunks, in two append-only stores of its own (`logkv`) in one directory:
//!
//! `data.log`, what stays:
//! - `s ‖ id` → `ns ‖ labels` — one key per series; ids are a hash of the series, probed
//!   forward on collision, so every replica applying the same batches assigns the same ids.
//! - `c ‖ id ‖ end` → `start ‖ chunk` — compressed samples of `[start, end]`, keyed by their
//!   end time so a range scan from `mint` finds the first chunk that overlaps.
//! - `r ‖ id ‖ res ‖ agg ‖ end` → rollup chunks; `R ‖ id` → the rollup watermark.
//!
//! - `b ‖ id ‖ max_t ‖ index ‖ position ‖ min_t` → a sealed block (a confidential
//!   namespace's series: samples the accepting node encrypted; stored and returned, never
//!   read); `B ‖ id` → the sealed series' earliest sample time. Both bounds are in the key so
//!   that planning a compaction (`sealed_compactions`) reads no block.
//!
//! `head.log`, what passes through:
//! - `w ‖ index` → write batch — the head log: the batches whose samples are (partly) still
//!   only in memory. Deleted once every sample of theirs is in a chunk.
//! - `m applied`, `m floor` — the last batch applied, the head log's deleted prefix.
//!
//! Keeping them apart means the head log's churn (every batch written, then deleted) is
//! compacted away by rewriting the few live batches, never by copying the chunks.
//!
//! Contracts:
//! - Each `apply` writes its chunk changes to `data.log` and `fdatasync`s them, then its head
//!   log entry and its index to `head.log`, `fdatasync`ed, before returning: a batch is applied
//!   once its index is durable, and everything it put in chunks is durable before that. After a
//!   crash the head is rebuilt from the head log; a batch applied again (raft re-applies entries
//!   after the state machine's last persisted index, which may be behind this engine's) is
//!   recognised by its index and skipped. A batch whose index was lost but whose chunk writes
//!   were not is applied again: its samples replace themselves.
//! - The same batches in the same order give the same series ids and the same samples on every
//!   replica. (Chunk boundaries may differ; queries do not see them.)
//! - A later write of a sample's timestamp replaces its value.
//! - A sample older than the newest sample of its series minus the out-of-order window is
//!   refused (and counted): accepting it would mean rewriting old chunks without bound. The
//!   rule depends on the samples alone, not on this replica's chunk boundaries, so every
//!   replica refuses the same ones. (One gap: the newest sample is rebuilt at open from what
//!   is stored, so for a series whose every sample has expired a restarted replica forgets it
//!   and would accept a sample the others refuse — one older than the retention.)
//!
//! The index and the series table are kept in memory (like Prometheus's head) and rebuilt at
//! open from the series keys.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use crate::batch::{get_str, put_str, Labels, SealedCompaction, WriteBatch, MAX_COMPACTED_BLOCKS};
use crate::bits::{get_varint, put_varint};
use crate::codec::{self, Sample};
use crate::logkv::{Batch, Entries, LogKv};
use crate::matcher::Matcher;
use crate::Error;

#[derive(Clone, Debug)]
pub struct Options {
    /// Samples per chunk before the head is cut.
    pub chunk_samples: usize,
    /// How far behind a series' newest sample a sample may arrive and still be stored.
    pub ooo_window_ms: i64,
    /// A head whose oldest sample came this many batches ago is cut even if not full, so the
    /// head log stays bounded when series stop receiving samples.
    pub max_head_lag: u64,
}

impl Default for Options {
    fn default() -> Self {
        // A day of out-of-order tolerance: concurrent senders of a backfill deliver batches
        // hours apart in data time (the benchmark's four senders did, and lost samples under a
        // one-hour window). The price: an hour is rolled up only once its series has samples
        // a day newer, and raw data is kept at least until then.
        Options { chunk_samples: 240, ooo_window_ms: 24 * 3_600_000, max_head_lag: 20_000 }
    }
}

/// One series and its samples in the asked range.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: Arc<Labels>,
    pub samples: Vec<Sample>,
}

/// One sealed block as stored: a series' samples of one batch, still sealed.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SealedBlock {
    /// The batch (raft index) that wrote it: of two samples with one timestamp, the later
    /// batch's wins, as for plain series.
    pub index: u64,
    /// Its series' place in that batch.
    pub position: u32,
    pub min_t: i64,
    pub max_t: i64,
    pub count: u32,
    pub key_version: u32,
    pub sealed: Vec<u8>,
}

impl SealedBlock {
    /// Where it is stored (what a compaction names it by).
    pub fn id(&self) -> BlockId {
        BlockId { max_t: self.max_t, index: self.index, position: self.position, min_t: self.min_t }
    }
}

/// Where a sealed block is: what its key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockId {
    pub max_t: i64,
    pub index: u64,
    pub position: u32,
    pub min_t: i64,
}

/// What `sealed_compactions` plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionPolicy {
    pub window_ms: i64,
    pub settled_before: i64,
    pub min_blocks: usize,
    pub reseal_below: u32,
    pub max_samples: u64,
    pub limit: usize,
}

/// A sealed series' blocks that one compaction would replace by their merge (`sealed_compactions`).
#[derive(Clone, Debug, PartialEq)]
pub struct CompactionPlan {
    pub labels: Arc<Labels>,
    /// Oldest batch first.
    pub blocks: Vec<SealedBlock>,
}

/// A sealed series and its blocks that may hold samples in the asked range, oldest batch first.
#[derive(Clone, Debug, PartialEq)]
pub struct SealedSeriesBlocks {
    pub labels: Arc<Labels>,
    pub blocks: Vec<SealedBlock>,
}

/// What an apply did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub written: usize,
    /// Samples refused: older than the out-of-order window.
    pub too_old: usize,
    /// The batch had been applied before (a replay after a crash).
    pub duplicate: bool,
}

struct SeriesState {
    ns: Arc<str>,
    labels: Arc<Labels>,
    /// Samples after the last chunk, sorted by time.
    head: Vec<Sample>,
    /// The batch that put the oldest sample now in the head.
    head_index: u64,
    last_chunk_end: Option<i64>,
    min_t: i64,
    max_t: i64,
    /// Rollup watermark: every raw sample before it is in the rollups (`i64::MIN`: none yet).
    rolled: i64,
    /// Merge watermark: chunks ending before it are merged as far as they will be.
    merged: i64,
    /// A confidential namespace's series: sealed blocks, no head, chunks or rollups.
    sealed: bool,
}

#[derive(Default)]
struct NsIndex {
    /// label name → value → series ids.
    postings: HashMap<String, BTreeMap<String, BTreeSet<u64>>>,
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct State {
    ids: FastMap<Vec<u8>, u64>,
    series: FastMap<u64, SeriesState>,
    index: HashMap<Arc<str>, NsIndex>,
    /// (head_index, id) of every non-empty head: the oldest bounds the head log.
    pending: BTreeSet<(u64, u64)>,
    floor: u64,
    applied: u64,
    /// A storage error left memory ahead of disk: refuse work until reopened.
    poisoned: bool,
}

pub struct Engine {
    /// Series, chunks, rollups.
    data: LogKv,
    /// The head log and the applied index.
    head: LogKv,
    dir: std::path::PathBuf,
    opts: Options,
    state: RwLock<State>,
    /// Bytes and samples of the chunks cut from heads since the engine opened (replay
    /// included): their ratio is what compression achieves on this data, as Prometheus's
    /// `chunk_size_bytes` and `chunk_samples` histograms tell it.
    cut_bytes: std::sync::atomic::AtomicU64,
    cut_samples: std::sync::atomic::AtomicU64,
}

/// A `checkpoint`: the two linked files' names (in the directory it was taken in) and lengths.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub data: (String, u64),
    pub head: (String, u64),
}

/// File name suffixes of a checkpoint's two links.
pub const CHECKPOINT_DATA: &str = "ts-data";
pub const CHECKPOINT_HEAD: &str = "ts-head";

impl Checkpoint {
    /// The engine's entries as the checkpoint holds them (what `export` returned then).
    pub fn read(&self, dir: &std::path::Path) -> Result<Entries, Error> {
        let mut out = crate::logkv::read_link(&dir.join(&self.data.0), self.data.1)?;
        out.extend(crate::logkv::read_link(&dir.join(&self.head.0), self.head.1)?);
        Ok(out)
    }

    /// Whether `name` is one of this checkpoint's files.
    pub fn owns(&self, name: &str) -> bool {
        name == self.data.0 || name == self.head.0
    }
}

/// Present while an import replaces the two files: an engine opened with it present is half
/// one state and half another, and starts empty (see `import`).
const IMPORTING: &str = "importing";

fn sync_dir(dir: &std::path::Path) -> Result<(), Error> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::Io(format!("{}: {e}", dir.display())))
}

const SERIES: u8 = b's';
const CHUNK: u8 = b'c';
const WAL: u8 = b'w';
const META: u8 = b'm';
const ROLLUP: u8 = b'r';
const ROLLED: u8 = b'R';
const MERGED: u8 = b'M';
/// Sealed blocks: `b ‖ id ‖ flip(max_t) ‖ index ‖ position ‖ flip(min_t)` → `count ‖ version ‖
/// sealed`.
const BLOCK: u8 = b'b';
/// A sealed series' earliest sample time (`B ‖ id` → flip(min_t)).
const SEALED_MIN: u8 = b'B';
/// Final chunks are merged up to this many times `chunk_samples` samples.
const MERGE_FACTOR: usize = 4;

/// Rollup resolutions: (key byte, name, width in ms).
pub const RESOLUTIONS: [(u8, &str, i64); 2] = [(1, "1m", 60_000), (2, "1h", 3_600_000)];
/// Rollup aggregates, in key order.
pub const AGGREGATES: [&str; 4] = ["min", "max", "sum", "count"];
const HOUR: i64 = 3_600_000;

/// `name:1m_max` → (`name`, resolution byte, aggregate index).
pub fn parse_rollup_name(name: &str) -> Option<(&str, u8, u8)> {
    let (base, suffix) = name.rsplit_once(':')?;
    let (res, agg) = suffix.split_once('_')?;
    let r = RESOLUTIONS.iter().find(|x| x.1 == res)?.0;
    let a = AGGREGATES.iter().position(|x| *x == agg)? as u8;
    (!base.is_empty()).then_some((base, r, a))
}

/// Order-preserving encoding of a signed time.
fn flip(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn unflip(b: &[u8]) -> Result<i64, Error> {
    let a: [u8; 8] = b.try_into().map_err(|_| Error::Corrupt("bad time in a key".into()))?;
    Ok((u64::from_be_bytes(a) ^ (1 << 63)) as i64)
}

/// FNV-1a: a fixed hash, the same on every build and every node.
fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3))
}

fn series_key(ns: &str, labels: &Labels) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + labels.iter().map(|(a, b)| a.len() + b.len() + 2).sum::<usize>());
    put_str(&mut k, ns);
    for (n, v) in labels {
        put_str(&mut k, n);
        put_str(&mut k, v);
    }
    k
}

fn parse_series_key(b: &[u8]) -> Result<(String, Labels), Error> {
    let mut pos = 0;
    let ns = get_str(b, &mut pos)?;
    let mut labels = Vec::new();
    while pos < b.len() {
        labels.push((get_str(b, &mut pos)?, get_str(b, &mut pos)?));
    }
    Ok((ns, labels))
}

/// A sealed block's key `b ‖ id ‖ flip(max_t) ‖ index ‖ position ‖ flip(min_t)`, parsed.
fn parse_block_key(k: &[u8]) -> Result<BlockId, Error> {
    let bad = || Error::Corrupt("sealed block key".into());
    if k.len() != 37 {
        return Err(bad());
    }
    let max_t = unflip(&k[9..17])?;
    let index = u64::from_be_bytes(k[17..25].try_into().map_err(|_| bad())?);
    let position = u32::from_be_bytes(k[25..29].try_into().map_err(|_| bad())?);
    let min_t = unflip(&k[29..37])?;
    Ok(BlockId { max_t, index, position, min_t })
}

/// Inserts into a sorted sample vector; an equal timestamp replaces the value.
fn insert_sorted(v: &mut Vec<Sample>, s: Sample) {
    match v.last() {
        Some(last) if last.0 < s.0 => v.push(s),
        None => v.push(s),
        _ => match v.binary_search_by_key(&s.0, |x| x.0) {
            Ok(i) => v[i] = s,
            Err(i) => v.insert(i, s),
        },
    }
}

impl Engine {
    /// Opens the engine stored in `dir` (created if missing), rebuilding the index and the heads.
    pub fn open(dir: &std::path::Path, opts: Options) -> Result<Engine, Error> {
        let e = Engine {
            data: LogKv::open(&dir.join("data.log"))?,
            head: LogKv::open(&dir.join("head.log"))?,
            dir: dir.to_path_buf(),
            opts,
            state: RwLock::new(State::default()),
            cut_bytes: Default::default(),
            cut_samples: Default::default(),
        };
        let marker = dir.join(IMPORTING);
        if marker.exists() {
            // An import died half-way. Its caller imports again (raft's glue re-imports when
            // its own record, written after the import, is behind the snapshot; the move out
            // of an old sled tree repeats while the tree still has the keys): start empty.
            e.data.replace_all(Vec::new())?;
            e.head.replace_all(Vec::new())?;
            std::fs::remove_file(&marker).map_err(|err| Error::Io(format!("{}: {err}", marker.display())))?;
            sync_dir(dir)?;
        }
        e.reload()?;
        Ok(e)
    }

    /// Every entry of the engine, for a raft snapshot. Keys of the two stores do not overlap
    /// (their first bytes differ), so one list carries both.
    pub fn export(&self) -> Result<Entries, Error> {
        let _st = self.state.read().map_err(|_| Error::Corrupt("engine lock poisoned".into()))?;
        let mut out = Vec::new();
        for kv in self.data.range::<std::ops::RangeFull>(..).chain(self.head.range::<std::ops::RangeFull>(..))
        {
            out.push(kv?);
        }
        Ok(out)
    }

    /// Replaces everything with an `export`ed image, durably, and reloads.
    pub fn import(&self, entries: Entries) -> Result<(), Error> {
        let mut guard = self.state.write().map_err(|_| Error::Corrupt("engine lock poisoned".into()))?;
        let (head, data): (Vec<_>, Vec<_>) =
            entries.into_iter().partition(|(k, _)| matches!(k.first(), Some(&WAL) | Some(&META)));
        // Two files cannot be replaced atomically: a durable marker brackets the two renames.
        let marker = self.dir.join(IMPORTING);
        std::fs::File::create(&marker)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::Io(format!("{}: {e}", marker.display())))?;
        sync_dir(&self.dir)?;
        self.data.replace_all(data)?;
        self.head.replace_all(head)?;
        std::fs::remove_file(&marker).map_err(|e| Error::Io(format!("{}: {e}", marker.display())))?;
        sync_dir(&self.dir)?;
        *guard = State::default();
        drop(guard);
        self.reload()
    }

    /// A copy of the engine as of now that costs no copying: both files hard-linked into `dir`
    /// as `{tag}.ts-data` and `{tag}.ts-head`, with their lengths (see `LogKv::link`). The
    /// node's raft snapshots keep this instead of a second copy of every chunk.
    pub fn checkpoint(&self, dir: &std::path::Path, tag: &str) -> Result<Checkpoint, Error> {
        // Under the state lock: no apply, rollup, expiry or flush between the two links, so
        // they are one state.
        let _st = self.state.read().map_err(|_| Error::Corrupt("engine lock poisoned".into()))?;
        let data = format!("{tag}.{CHECKPOINT_DATA}");
        let head = format!("{tag}.{CHECKPOINT_HEAD}");
        let data_len = self.data.link(&dir.join(&data))?;
        let head_len = self.head.link(&dir.join(&head))?;
        Ok(Checkpoint { data: (data, data_len), head: (head, head_len) })
    }

    fn key(&self, kind: u8, rest: &[&[u8]]) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + rest.iter().map(|r| r.len()).sum::<usize>());
        k.push(kind);
        for r in rest {
            k.extend_from_slice(r);
        }
        k
    }

    fn chunk_key(&self, id: u64, end: i64) -> Vec<u8> {
        self.key(CHUNK, &[&id.to_be_bytes(), &flip(end)])
    }

    fn read_meta(&self, name: &str) -> Result<u64, Error> {
        match self.head.get(&self.key(META, &[name.as_bytes()]))? {
            None => Ok(0),
            Some(v) => Ok(u64::from_be_bytes(
                v.as_slice().try_into().map_err(|_| Error::Corrupt(format!("tsdb meta `{name}`")))?,
            )),
        }
    }

    /// Rebuilds the in-memory state from the engine's files (at open, and after an import
    /// replaced them).
    pub fn reload(&self) -> Result<(), Error> {
        let mut st = State {
            applied: self.read_meta("applied")?,
            floor: self.read_meta("floor")?,
            ..State::default()
        };
        for kv in self.data.scan_prefix(&self.key(SERIES, &[])) {
            let (k, v) = kv?;
            let id = u64::from_be_bytes(
                k.get(1..)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| Error::Corrupt("series key".into()))?,
            );
            let (ns, labels) = parse_series_key(&v)?;
            Self::index_series(&mut st, id, v.to_vec(), Arc::from(ns), Arc::new(labels));
        }
        // Chunk bounds: the first chunk's start and the last chunk's end of each series — two
        // lookups per series, not a scan of every chunk (which would read all the data at open).
        for (&id, s) in st.series.iter_mut() {
            let range = self.chunk_key(id, i64::MIN)..=self.chunk_key(id, i64::MAX);
            let mut chunks = self.data.range(range);
            let Some(first) = chunks.next() else { continue };
            let (first_key, v) = first?;
            s.min_t = get_varint(&v, &mut 0)?;
            // The last chunk, or the first if it is the only one.
            let last_key = match chunks.next_back() {
                Some(last) => last?.0,
                None => first_key,
            };
            let end = unflip(&last_key[last_key.len() - 8..])?;
            s.last_chunk_end = Some(end);
            s.max_t = s.max_t.max(end);
        }
        // Sealed series: their bounds from their last block's key and their minimum.
        for (&id, s) in st.series.iter_mut() {
            let blocks = self.data.range(self.blocks_from(id, i64::MIN)..=self.blocks_end(id));
            if let Some(last) = blocks.keys().next_back() {
                s.sealed = true;
                s.max_t = s.max_t.max(parse_block_key(&last)?.max_t);
                if let Some(v) = self.data.get(&self.key(SEALED_MIN, &[&id.to_be_bytes()]))? {
                    s.min_t = s.min_t.min(unflip(&v)?);
                }
            }
        }
        // Rollup and merge watermarks.
        for kind in [ROLLED, MERGED] {
            let rp = self.key(kind, &[]);
            for kv in self.data.scan_prefix(&rp) {
                let (k, v) = kv?;
                let id = u64::from_be_bytes(
                    k[rp.len()..].try_into().map_err(|_| Error::Corrupt("watermark key".into()))?,
                );
                if let Some(s) = st.series.get_mut(&id) {
                    if kind == ROLLED {
                        s.rolled = unflip(&v)?;
                    } else {
                        s.merged = unflip(&v)?;
                    }
                }
            }
        }
        // The head log: samples newer than their series' last chunk are the head.
        for kv in self.head.scan_prefix(&self.key(WAL, &[])) {
            let (k, v) = kv?;
            let index = u64::from_be_bytes(
                k[k.len() - 8..].try_into().map_err(|_| Error::Corrupt("head log key".into()))?,
            );
            let batch = WriteBatch::decode(&v)?;
            let ns: Arc<str> = Arc::from(batch.ns.as_str());
            for s in batch.series {
                let key = series_key(&ns, &s.labels);
                let id = *st
                    .ids
                    .get(&key)
                    .ok_or_else(|| Error::Corrupt("head log names an unknown series".into()))?;
                let ser = st.series.get_mut(&id).ok_or_else(|| Error::Corrupt("series table".into()))?;
                let was_empty = ser.head.is_empty();
                for smp in s.samples {
                    if ser.last_chunk_end.is_some_and(|end| smp.0 <= end) {
                        continue;
                    }
                    insert_sorted(&mut ser.head, smp);
                    ser.min_t = ser.min_t.min(smp.0);
                    ser.max_t = ser.max_t.max(smp.0);
                }
                if was_empty && !ser.head.is_empty() {
                    ser.head_index = index;
                    st.pending.insert((index, id));
                }
            }
        }
        *self.state.write().map_err(|_| Error::Corrupt("engine lock poisoned".into()))? = st;
        Ok(())
    }

    fn index_series(st: &mut State, id: u64, key: Vec<u8>, ns: Arc<str>, labels: Arc<Labels>) {
        let idx = st.index.entry(ns.clone()).or_default();
        for (n, v) in labels.iter() {
            idx.postings.entry(n.clone()).or_default().entry(v.clone()).or_default().insert(id);
        }
        st.ids.insert(key, id);
        st.series.insert(
            id,
            SeriesState {
                ns,
                labels,
                head: Vec::new(),
                head_index: 0,
                last_chunk_end: None,
                min_t: i64::MAX,
                max_t: i64::MIN,
                rolled: i64::MIN,
                merged: i64::MIN,
                sealed: false,
            },
        );
    }

    /// The last batch index applied.
    pub fn applied(&self) -> u64 {
        self.state.read().map_or(0, |s| s.applied)
    }

    /// Applies a batch with raft log index `index` (strictly increasing across calls; an index
    /// at or below the last applied one is a replay and is skipped).
    pub fn apply(&self, index: u64, batch: &WriteBatch) -> Result<ApplyOutcome, Error> {
        self.apply_with(index, batch, None)
    }

    /// `apply` of a batch decoded from `encoded` (a raft entry): the head log stores those
    /// bytes instead of encoding the batch again.
    pub fn apply_encoded(
        &self,
        index: u64,
        batch: &WriteBatch,
        encoded: &[u8],
    ) -> Result<ApplyOutcome, Error> {
        self.apply_with(index, batch, Some(encoded))
    }

    fn apply_with(
        &self,
        index: u64,
        batch: &WriteBatch,
        encoded: Option<&[u8]>,
    ) -> Result<ApplyOutcome, Error> {
        self.apply_indexed(index, &batch.ns, |st, ns, b, h, out| {
            // A batch may name a series more than once (store-and-forward proposes several
            // queued parts as one batch by concatenating them). Chunks written by this apply
            // are only in `b` until it ends, so nothing may read them back meanwhile: late
            // samples are merged into chunks, and full heads are cut, once per series after
            // every entry has been seen. Late samples are merged oldest first, the later of
            // two with one timestamp winning, as in the head.
            let mut late: BTreeMap<u64, Vec<Sample>> = BTreeMap::new();
            let mut full = Vec::new();
            for s in &batch.series {
                let id = self.series_id(st, ns, &s.labels, b);
                let ser = st.series.get_mut(&id).ok_or_else(|| Error::Corrupt("series table".into()))?;
                let was_empty = ser.head.is_empty();
                for &smp in &s.samples {
                    // Refused by the series' newest sample alone, never by where this replica
                    // has cut its chunks (a local flush cuts early): every replica refuses the
                    // same samples.
                    if smp.0 < ser.max_t.saturating_sub(self.opts.ooo_window_ms) {
                        out.too_old += 1;
                        continue;
                    }
                    match ser.last_chunk_end {
                        Some(end) if smp.0 <= end => late.entry(id).or_default().push(smp),
                        _ => insert_sorted(&mut ser.head, smp),
                    }
                    out.written += 1;
                    ser.min_t = ser.min_t.min(smp.0);
                    ser.max_t = ser.max_t.max(smp.0);
                }
                if was_empty && !ser.head.is_empty() {
                    ser.head_index = index;
                    st.pending.insert((index, id));
                }
                if ser.head.len() >= self.opts.chunk_samples {
                    full.push(id);
                }
            }
            for (id, samples) in late {
                self.merge_into_chunks(id, &codec::merge_last_wins(vec![samples], i64::MIN, i64::MAX), b)?;
            }
            for id in full {
                // A series named twice may be listed twice; its second cut finds the head empty.
                if st.series.get(&id).is_some_and(|s| !s.head.is_empty()) {
                    self.cut(st, id, b)?;
                }
            }
            // Heads that have waited too long are cut, so the head log can be trimmed.
            while let Some(&(hi, id)) = st.pending.first() {
                if hi.saturating_add(self.opts.max_head_lag) > index {
                    break;
                }
                self.cut(st, id, b)?;
            }
            let floor = st.pending.first().map_or(index, |&(hi, _)| hi - 1);
            if floor < index {
                let bytes = match encoded {
                    Some(e) => e.to_vec(),
                    None => batch.encode(),
                };
                h.insert(self.key(WAL, &[&index.to_be_bytes()]), bytes);
            }
            self.trim_head_log(st, floor, h)
        })
    }

    /// The frame of every apply: under the write lock, a replayed index is skipped; `build`
    /// puts the batch's changes into `b` (data.log) and `h` (head.log); the applied index goes
    /// into `h`, and chunks are made durable before the index that vouches for them (see the
    /// contracts). A failure leaves memory ahead of disk: work is refused until reopened.
    fn apply_indexed(
        &self,
        index: u64,
        ns: &str,
        build: impl FnOnce(&mut State, &Arc<str>, &mut Batch, &mut Batch, &mut ApplyOutcome) -> Result<(), Error>,
    ) -> Result<ApplyOutcome, Error> {
        let mut guard = self.state.write().map_err(|_| Error::Corrupt("engine lock poisoned".into()))?;
        let st = &mut *guard;
        if st.poisoned {
            return Err(Error::Corrupt("an earlier storage error: reopen the engine".into()));
        }
        if index <= st.applied {
            return Ok(ApplyOutcome { duplicate: true, ..Default::default() });
        }
        let ns: Arc<str> = match st.index.get_key_value(ns) {
            Some((k, _)) => k.clone(),
            None => Arc::from(ns),
        };
        let mut out = ApplyOutcome::default();
        let (mut b, mut h) = (Batch::default(), Batch::default());
        let res = build(st, &ns, &mut b, &mut h, &mut out).and_then(|()| {
            h.insert(self.key(META, &[b"applied"]), index.to_be_bytes());
            self.data.apply(b, true)?;
            self.head.apply(h, true)
        });
        match res {
            Ok(()) => {
                st.applied = index;
                Ok(out)
            }
            Err(e) => {
                st.poisoned = true;
                Err(e)
            }
        }
    }

    fn series_id(&self, st: &mut State, ns: &Arc<str>, labels: &Labels, b: &mut Batch) -> u64 {
        let key = series_key(ns, labels);
        if let Some(&id) = st.ids.get(&key) {
            return id;
        }
        let mut id = fnv(&key);
        while st.series.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        b.insert(self.key(SERIES, &[&id.to_be_bytes()]), key.clone());
        Self::index_series(st, id, key, ns.clone(), Arc::new(labels.clone()));
        id
    }

    /// Writes a series' head as chunks of `chunk_samples` to twice that, split evenly: a head
    /// of 247 is one chunk, not 240 and a 7-sample chunk that costs more than its samples.
    fn cut(&self, st: &mut State, id: u64, b: &mut Batch) -> Result<(), Error> {
        let ser = st.series.get_mut(&id).ok_or_else(|| Error::Corrupt("series table".into()))?;
        let pieces = (ser.head.len() / self.opts.chunk_samples.max(1)).max(1);
        for piece in ser.head.chunks(ser.head.len().div_ceil(pieces).max(1)) {
            let Some(last) = piece.last() else { continue };
            let value = chunk_value(piece);
            self.cut_bytes.fetch_add(value.len() as u64, std::sync::atomic::Ordering::Relaxed);
            self.cut_samples.fetch_add(piece.len() as u64, std::sync::atomic::Ordering::Relaxed);
            b.insert(self.chunk_key(id, last.0), value);
            ser.last_chunk_end = Some(last.0);
        }
        ser.head.clear();
        st.pending.remove(&(ser.head_index, id));
        Ok(())
    }

    /// Merges late samples (in time order, each at or before the series' last chunk end, which
    /// is on disk) into the chunks that cover them.
    fn merge_into_chunks(&self, id: u64, samples: &[Sample], b: &mut Batch) -> Result<(), Error> {
        let mut rest = samples;
        let range = self.chunk_key(id, rest[0].0)..=self.chunk_key(id, i64::MAX);
        for kv in self.data.range(range) {
            let (k, v) = kv?;
            let end = unflip(&k[k.len() - 8..])?;
            let n = rest.partition_point(|s| s.0 <= end);
            let (mine, r) = rest.split_at(n);
            rest = r;
            if !mine.is_empty() {
                let mut pos = 0;
                get_varint(&v, &mut pos)?;
                let mut all = codec::decode(&v[pos..])?;
                for &s in mine {
                    insert_sorted(&mut all, s);
                }
                // The chunk's end (its key) is unchanged: every merged sample is at or before it.
                b.insert(k, chunk_value(&all));
            }
            if rest.is_empty() {
                return Ok(());
            }
        }
        Err(Error::Corrupt(format!("series {id}: no chunk covers a late sample")))
    }

    /// Series of `ns` matching every matcher (at least one of which must not match the empty
    /// string), with their samples in `[mint, maxt]`. Series without samples there are left out.
    pub fn select(&self, ns: &str, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<Series>, Error> {
        let rollup = matchers.iter().find_map(|m| {
            (m.name == "__name__" && m.op == crate::matcher::MatchOp::Eq)
                .then(|| parse_rollup_name(&m.value).map(|(b, r, a)| (m.value.clone(), b.to_string(), r, a)))
                .flatten()
        });
        if let Some((full, base, res, agg)) = rollup {
            return self.select_rollup(ns, matchers, &full, &base, res, agg, mint, maxt);
        }
        // Under the lock: the matching series, their heads, and how far their chunks went. A
        // chunk cut after this (its end beyond `chunk_end`) holds samples the head copy already
        // has, and is skipped.
        struct Found {
            id: u64,
            labels: Arc<Labels>,
            chunk_end: Option<i64>,
            head: Vec<Sample>,
        }
        let found: Vec<Found> = {
            let st = self.state.read().map_err(|_| Error::Corrupt("engine lock poisoned".into()))?;
            self.matching(&st, ns, matchers)?
                .into_iter()
                .filter_map(|id| {
                    let s = st.series.get(&id)?;
                    (s.min_t <= maxt && s.max_t >= mint).then(|| {
                        let lo = s.head.partition_point(|x| x.0 < mint);
                        let hi = s.head.partition_point(|x| x.0 <= maxt);
                        Found {
                            id,
                            labels: s.labels.clone(),
                            chunk_end: s.last_chunk_end,
                            head: s.head[lo..hi].to_vec(),
                        }
                    })
                })
                .collect()
        };
        let mut out = Vec::with_capacity(found.len());
        for Found { id, labels, chunk_end, head } in found {
            let mut samples = match chunk_end.filter(|&e| e >= mint) {
                Some(end) => {
                    self.read_chunks(self.chunk_key(id, mint)..=self.chunk_key(id, end), mint, maxt)?
                }
                None => Vec::new(),
            };
            samples.extend(head);
            if !samples.is_empty() {
                out.push(Series { labels, samples });
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }

    /// A rollup stream (`name:1m_max`, ...) of the series matching the other matchers and the
    /// base name, labelled with the rollup's name.
    #[allow(clippy::too_many_arguments)]
    fn select_rollup(
        &self,
        ns: &str,
        matchers: &[Matcher],
        full: &str,
        base: &str,
        res: u8,
        agg: u8,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, Error> {
        let ms: Vec<Matcher> = matchers
            .iter()
            .map(|m| {
                if m.name == "__name__" && m.value == full {
                    Matcher::eq("__name__", base)
                } else {
                    m.clone()
                }
            })
            .collect();
        let found: Vec<(u64, Labels)> = {
            let st = self.state.read().map_err(|_| Error::Corrupt("engine lock poisoned".into()))?;
            self.matching(&st, ns, &ms)?
                .into_iter()
                .filter_map(|id| {
                    let s = st.series.get(&id)?;
                    let mut l = (*s.labels).clone();
                    for (k, v) in l.iter_mut() {
                        if k == "__name__" {
                            *v = full.to_string();
                        }
                    }
                    Some((id, l))
                })
                .collect()
        };
        let mut out = Vec::new();
        for (id, labels) in found {
            let range = self.rollup_key(id, res, agg, mint)..=self.rollup_key(id, res, agg, i64::MAX);
            let samples = self.read_chunks(range, mint, maxt)?;
            if !samples.is_empty() {
                out.push(Series { labels: Arc::new(labels), samples });
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }

    fn block_key(&self, id: u64, b: BlockId) -> Vec<u8> {
        let (max_t, index, position, min_t) =
            (flip(b.max_t), b.index.to_be_bytes(), b.position.to_be_bytes(), flip(b.min_t));
        self.key(BLOCK, &[&id.to_be_bytes(), &max_t, &index, &position, &min_t])
    }

    /// The first key a block of series `id` ending at or after `max_t` can have.
    fn blocks_from(&self, id: u64, max_t: i64) -> Vec<u8> {
        self.block_key(id, BlockId { max_t, index: 0, position: 0, min_t: i64::MIN })
    }

    /// The last key a block of series `id` can have.
    fn blocks_end(&self, id: u64) -> Vec<u8> {
        self.block_key(id, BlockId { max_t: i64::MAX, index: u64::MAX, position: u32::MAX, min_t: i64::MAX })
    }

    /// A sealed block's value (`count ‖ version ‖ sealed`) parsed, with its key's fields.
    fn parse_block(&self, at: BlockId, v: &[u8]) -> Result<SealedBlock, Error> {
        let bad = || Error::Corrupt("sealed block".into());
        let mut pos = 0;
        let count = u32::try_from(crate::bits::get_uvarint(v, &mut pos)?).map_err(|_| bad())?;
        let key_version = u32::try_from(crate::bits::get_uvarint(v, &mut pos)?).map_err(|_| bad())?;
        Ok(SealedBlock {
            index: at.index,
            position: at.position,
            min_t: at.min_t,
            max_t: at.max_t,
            count,
            key_version,
            sealed: v[pos..].to_vec(),
        })
    }

    fn block_value(count: u32, key_version: u32, sealed: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(sealed.len() + 12);
        crate::bits::put_uvarint(&mut v, u64::from(count));
        crate::bits::put_uvarint(&mut v, u64::from(key_version));
        v.extend_from_slice(sealed);
        v
    }

    /// Applies a sealed batch (a confidential namespace's) with raft log index `index`: each
    /// series' block is stored as it came, keyed by series, end time and batch. Replays are
    /// skipped by index, as for `apply`.
    pub fn apply_sealed(&self, index: u64, batch: &crate::batch::SealedBatch) -> Result<ApplyOutcome, Error> {
        self.apply_indexed(index, &batch.ns, |st, ns, b, _, out| {
            for (position, s) in batch.series.iter().enumerate() {
                let id = self.series_id(st, ns, &s.labels, b);
                let at = BlockId { max_t: s.max_t, index, position: position as u32, min_t: s.min_t };
                b.insert(self.block_key(id, at), Self::block_value(s.count, s.key_version, &s.sealed));
                let ser = st.series.get_mut(&id).ok_or_else(|| Error::Corrupt("series table".into()))?;
                ser.sealed = true;
                if s.min_t < ser.min_t {
                    ser.min_t = s.min_t;
                    b.insert(self.key(SEALED_MIN, &[&id.to_be_bytes()]), flip(s.min_t));
                }
                ser.max_t = ser.max_t.max(s.max_t);
                out.written += s.count as usize;
            }
            Ok(())
        })
    }

    /// The sealed series of `ns` matching every matcher, with their blocks that may hold
    /// samples in `[mint, maxt]` (the caller opens them and cuts to the range).
    pub fn select_sealed(
        &self,
        ns: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<SealedSeriesBlocks>, Error> {
        let found: Vec<(u64, Arc<Labels>)> = {
            let st = self.state.read().map_err(|_| Error::Corrupt("engine lock poisoned".into()))?;
            self.matching(&st, ns, matchers)?
                .into_iter()
                .filter_map(|id| {
                    let s = st.series.get(&id)?;
                    (s.sealed && s.min_t <= maxt && s.max_t >= mint).then(|| (id, s.labels.clone()))
                })
                .collect()
        };
        let mut out = Vec::with_capacity(found.len());
        for (id, labels) in found {
            let mut blocks = Vec::new();
            // Blocks starting after `maxt` are skipped unread; the others are read from the
            // file as it was at `range`, so a compaction meanwhile (its merge in, its blocks
            // out) shows either all before it or none of it.
            let range = self.data.range(self.blocks_from(id, mint)..=self.blocks_end(id));
            let starts_in_range = |k: &[u8]| parse_block_key(k).map_or(true, |at| at.min_t <= maxt);
            for kv in range.filter_keys(starts_in_range) {
                let (k, v) = kv?;
                blocks.push(self.parse_block(parse_block_key(&k)?, &v)?);
            }
            if !blocks.is_empty() {
                blocks.sort_by_key(|b| (b.index, b.position));
                out.push(SealedSeriesBlocks { labels, blocks });
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }

    /// Plans compactions of the sealed series of `ns` (at most `limit`): in a series, the blocks
    /// starting in one `window_ms`-aligned window that ends at or before `settled_before` (no
    /// window is rewritten while it is still being written), when there are at least `min_blocks` or one is sealed under a key
    /// version below `reseal_below` (the merge is sealed under the newest: how a rotation
    /// reaches series, which it does not rewrite itself), plus every block of an older
    /// batch that overlaps them in time, and again for those (the merge takes the newest
    /// replaced batch's index, so no block left out may sit between two replaced ones in batch
    /// order and overlap them: its samples would lose to ones they beat). A plan over
    /// `max_samples` samples is skipped (it would not fit one raft entry). Only keys are
    /// scanned; the blocks of the plans are read.
    pub fn sealed_compactions(
        &self,
        ns: &str,
        policy: &CompactionPolicy,
    ) -> Result<Vec<CompactionPlan>, Error> {
        let CompactionPolicy { window_ms, settled_before, min_blocks, reseal_below, max_samples, limit } =
            *policy;
        let window_ms = window_ms.max(1);
        let series: Vec<(u64, Arc<Labels>)> = {
            let st = self.state.read().map_err(|_| Error::Corrupt("engine lock poisoned".into()))?;
            st.series
                .iter()
                .filter(|(_, s)| s.sealed && &*s.ns == ns)
                .map(|(id, s)| (*id, s.labels.clone()))
                .collect()
        };
        let mut out = Vec::new();
        for (id, labels) in series {
            if out.len() >= limit {
                break;
            }
            let all: Vec<BlockId> = self
                .data
                .range(self.blocks_from(id, i64::MIN)..=self.blocks_end(id))
                .keys()
                .map(|k| parse_block_key(&k))
                .collect::<Result<_, _>>()?;
            let mut windows: BTreeMap<i64, BTreeSet<usize>> = BTreeMap::new();
            for (i, b) in all.iter().enumerate() {
                let w = b.min_t.div_euclid(window_ms);
                if w.saturating_add(1).saturating_mul(window_ms) <= settled_before {
                    windows.entry(w).or_default().insert(i);
                }
            }
            for (_, mut chosen) in windows {
                if out.len() >= limit {
                    break;
                }
                let few = chosen.len() < min_blocks;
                // Close over older overlapping batches.
                loop {
                    let newest = chosen.iter().map(|&i| all[i].index).max().unwrap_or(0);
                    let lo = chosen.iter().map(|&i| all[i].min_t).min().unwrap_or(0);
                    let hi = chosen.iter().map(|&i| all[i].max_t).max().unwrap_or(0);
                    let extra: Vec<usize> = (0..all.len())
                        .filter(|i| !chosen.contains(i))
                        .filter(|&i| all[i].index < newest && all[i].min_t <= hi && all[i].max_t >= lo)
                        .collect();
                    if extra.is_empty() {
                        break;
                    }
                    chosen.extend(extra);
                }
                let keys: Vec<Vec<u8>> = chosen.iter().map(|&i| self.block_key(id, all[i])).collect();
                let mut blocks = Vec::with_capacity(keys.len());
                for k in keys {
                    match self.data.get(&k)? {
                        Some(v) => blocks.push(self.parse_block(parse_block_key(&k)?, &v)?),
                        // Expired meanwhile: plan again next time.
                        None => break,
                    }
                }
                let samples: u64 = blocks.iter().map(|b| u64::from(b.count)).sum();
                let old_key = blocks.iter().any(|b| b.key_version < reseal_below);
                if blocks.len() != chosen.len()
                    || samples > max_samples
                    || blocks.len() > MAX_COMPACTED_BLOCKS
                    || (few && !old_key)
                {
                    continue;
                }
                blocks.sort_by_key(|b| (b.index, b.position));
                out.push(CompactionPlan { labels: labels.clone(), blocks });
            }
        }
        Ok(out)
    }

    /// Applies a compaction with raft log index `index`: if every block it replaces is here,
    /// they are swapped for the merged block, keyed with the newest replaced batch's index
    /// (later batches still win over it, as they did over each replaced block). If one is
    /// gone (this replica's retention expired it first, or another compaction took it) the
    /// replica keeps its blocks: both hold the same samples, in other blocks. Returns the
    /// samples now in the merged block (0 if skipped).
    pub fn apply_compaction(&self, index: u64, c: &SealedCompaction) -> Result<ApplyOutcome, Error> {
        self.apply_indexed(index, &c.ns, |st, ns, b, _, out| {
            let Some(&id) = st.ids.get(&series_key(ns, &c.merged.labels)) else { return Ok(()) };
            let newest = c.replaces.iter().map(|r| r.index).max().unwrap_or(0);
            let lo = c.replaces.iter().map(|r| r.min_t).min().unwrap_or(i64::MAX);
            let hi = c.replaces.iter().map(|r| r.max_t).max().unwrap_or(i64::MIN);
            // The merge lies within what it replaces (a sealer's bug must not move samples).
            if c.merged.min_t < lo || c.merged.max_t > hi {
                return Ok(());
            }
            let keys: Vec<Vec<u8>> = c.replaces.iter().map(|r| self.block_key(id, *r)).collect();
            for k in &keys {
                if self.data.get(k)?.is_none() {
                    return Ok(());
                }
            }
            for k in keys {
                b.remove(k);
            }
            let at =
                BlockId { max_t: c.merged.max_t, index: newest, position: u32::MAX, min_t: c.merged.min_t };
            let m = &c.merged;
            b.insert(self.block_key(id, at), Self::block_value(m.count, m.key_version, &m.sealed));
            out.written = m.count as usize;
            Ok(())
        })
    }

    fn rollup_key(&self, id: u64, res: u8, agg: u8, end: i64) -> Vec<u8> {
        self.key(ROLLUP, &[&id.to_be_bytes(), &[res, agg], &flip(end)])
    }

    /// Computes rollups for every series up to its last final hour, at most `max_hours` hours
    /// per series per call (bounded work; call again to go on). A sample is final once it is
    /// in a chunk and older than the series' newest sample minus the out-of-order window: no
    /// later write can change it (the late-sample rule refuses it), so rollups are computed
    /// once, and every replica computes the same ones from the same samples. Returns the
    /// series-hours rolled up.
    pub fn rollup(&self, max_hours: i64) -> Result<usize, Error> {
        let ids: Vec<u64> = {
            let st = self.state.read().map_err(|_| Error::Corrupt("engine lock poisoned".into()))?;
            st.series.keys().copied().collect()
        };
        let mut done = 0usize;
        for id in ids {
            // Under the write lock: nothing applies to this engine meanwhile (a late sample
            // cannot land in the hours rolled up, but the chunks read must not be mid-rewrite).
            let mut st = self.state.write().map_err(|_| Error::Corrupt("engine lock poisoned".into()))?;
            let Some(s) = st.series.get(&id) else { continue };
            let Some(chunk_end) = s.last_chunk_end else { continue };
            let final_before = (chunk_end + 1).min(s.max_t.saturating_sub(self.opts.ooo_window_ms));
            let from = if s.rolled == i64::MIN { s.min_t.div_euclid(HOUR) * HOUR } else { s.rolled };
            let to = (final_before.div_euclid(HOUR) * HOUR).min(from.saturating_add(max_hours * HOUR));
            let mut b = Batch::default();
            let merged = self.merge_final_chunks(id, s.merged, final_before, &mut b)?;
            if let (Some(m), Some(s)) = (merged, st.series.get_mut(&id)) {
                s.merged = m;
            }
            if to <= from {
                // Not synced, like the rollups below.
                self.data.apply(b, false)?;
                continue;
            }
            let raw =
                self.read_chunks(self.chunk_key(id, from)..=self.chunk_key(id, i64::MAX), from, to - 1)?;
            for (res, _, width) in RESOLUTIONS {
                let streams = aggregate(&raw, width);
                for (agg, stream) in streams.iter().enumerate() {
                    if let Some(last) = stream.last() {
                        b.insert(self.rollup_key(id, res, agg as u8, last.0), chunk_value(stream));
                    }
                }
            }
            b.insert(self.key(ROLLED, &[&id.to_be_bytes()]), flip(to));
            // Not synced: a rollup lost in a crash is computed again (the watermark is lost
            // with it), and the expiry that relies on it comes later in the same file.
            self.data.apply(b, false)?;
            if let Some(s) = st.series.get_mut(&id) {
                s.rolled = to;
            }
            done += ((to - from) / HOUR) as usize;
        }
        Ok(done)
    }

    /// Merges a series' final chunks — ending before `final_before`, where no sample can
    /// land any more (the late-sample rule refuses it) — into chunks of up to `MERGE_FACTOR`
    /// times `chunk_samples`: fewer keys and headers, and steps packed over more samples
    /// (heads are cut small to bound memory). From the merge watermark `from` on, at most 64
    /// chunks a call. Returns the new watermark, if it moved: the start of the last group, so
    /// that group is looked at again with the chunks that follow it.
    fn merge_final_chunks(
        &self,
        id: u64,
        from: i64,
        final_before: i64,
        b: &mut Batch,
    ) -> Result<Option<i64>, Error> {
        // A flush merges past what is final: nothing to do until the data catches up.
        if from >= final_before {
            return Ok(None);
        }
        let limit = self.opts.chunk_samples.max(1) * MERGE_FACTOR;
        let mut groups: Vec<Vec<(Vec<u8>, Vec<u8>)>> = vec![vec![]];
        let mut in_group = 0usize;
        for kv in self.data.range(self.chunk_key(id, from)..self.chunk_key(id, final_before)).take(64) {
            let (k, v) = kv?;
            let mut pos = 0;
            get_varint(&v, &mut pos)?;
            let n = codec::count(&v[pos..])?;
            if in_group + n > limit && in_group > 0 {
                groups.push(vec![]);
                in_group = 0;
            }
            in_group += n;
            if let Some(g) = groups.last_mut() {
                g.push((k, v));
            }
        }
        let Some(last_start) = groups.last().and_then(|g| g.first()).map(|(_, v)| get_varint(v, &mut 0))
        else {
            return Ok(None);
        };
        for g in groups.iter().filter(|g| g.len() > 1) {
            let mut all = Vec::new();
            for (_, v) in g {
                let mut pos = 0;
                get_varint(v, &mut pos)?;
                codec::decode_into(&v[pos..], &mut all)?;
            }
            // Only if smaller, counting the keys and frames it saves: one width for the steps
            // of four chunks can cost more than it saves on noisy values (random walks).
            let merged = chunk_value(&all);
            let before: usize = g.iter().map(|(k, v)| k.len() + v.len() + 11).sum();
            if merged.len() + g[0].0.len() + 11 >= before {
                continue;
            }
            // Chunks of a series never overlap (a late sample goes into the chunk covering
            // it), so their samples concatenate in order. The last key (its end) is reused.
            for (k, _) in &g[..g.len() - 1] {
                b.remove(k.clone());
            }
            if let Some((k, _)) = g.last() {
                b.insert(k.clone(), merged);
            }
        }
        let watermark = last_start?;
        if watermark <= from {
            return Ok(None);
        }
        b.insert(self.key(MERGED, &[&id.to_be_bytes()]), flip(watermark));
        Ok(Some(watermark))
    }

    /// Namespaces with series in this engine.
    pub fn namespaces(&self) -> Vec<String> {
        self.state.read().map_or_else(|_| Vec::new(), |st| st.index.keys().map(|k| k.to_string()).collect())
    }

    /// Ids of the series of `ns` matching all matchers.
    fn matching(&self, st: &State, ns: &str, matchers: &[Matcher]) -> Result<Vec<u64>, Error> {
        let Some(idx) = st.index.get(ns) else { return Ok(Vec::new()) };
        let mut candidates: Option<BTreeSet<u64>> = None;
        for m in matchers.iter().filter(|m| !m.matches_empty()) {
            let mut ids = BTreeSet::new();
            if let Some(values) = idx.postings.get(&m.name) {
                match m.op {
                    crate::matcher::MatchOp::Eq => {
                        if let Some(s) = values.get(&m.value) {
                            ids.extend(s.iter().copied());
                        }
                    }
                    _ => {
                        for (v, s) in values {
                            if m.matches(v) {
                                ids.extend(s.iter().copied());
                            }
                        }
                    }
                }
            }
            candidates = Some(match candidates {
                None => ids,
                Some(c) => c.intersection(&ids).copied().collect(),
            });
        }
        let Some(candidates) = candidates else {
            return Err(Error::Invalid(
                "a selector needs at least one matcher that does not match the empty string".into(),
            ));
        };
        Ok(candidates
            .into_iter()
            .filter(|id| {
                st.series.get(id).is_some_and(|s| matchers.iter().all(|m| m.matches_labels(&s.labels)))
            })
            .collect())
    }

    /// Label sets of the series matching any of the selectors (all series of `ns` if none) with
    /// samples in `[mint, maxt]`, sorted.
    pub fn series(
        &self,
        ns: &str,
        selectors: &[Vec<Matcher>],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Arc<Labels>>, Error> {
        let st = self.state.read().map_err(|_| Error::Corrupt("engine lock poisoned".into()))?;
        let mut ids = BTreeSet::new();
        if selectors.is_empty() {
            ids.extend(st.series.iter().filter(|(_, s)| &*s.ns == ns).map(|(id, _)| *id));
        }
        for sel in selectors {
            ids.extend(self.matching(&st, ns, sel)?);
        }
        let mut out: Vec<Arc<Labels>> = ids
            .into_iter()
            .filter_map(|id| st.series.get(&id))
            .filter(|s| s.min_t <= maxt && s.max_t >= mint)
            .map(|s| s.labels.clone())
            .collect();
        out.sort();
        Ok(out)
    }

    /// Retention: deletes raw chunks of `ns` ending before `raw_before` (only once rolled up:
    /// raw data never disappears before its rollups exist), rollup chunks ending before
    /// `rollup_before`, and series left with nothing. Local to each replica (each converges to
    /// the same state); returns the chunks deleted.
    pub fn expire(&self, ns: &str, raw_before: i64, rollup_before: i64) -> Result<usize, Error> {
        let mut st = self.state.write().map_err(|_| Error::Corrupt("engine lock poisoned".into()))?;
        let ids: Vec<u64> = st.series.iter().filter(|(_, s)| &*s.ns == ns).map(|(id, _)| *id).collect();
        let mut b = Batch::default();
        let mut deleted = 0;
        let mut gone = Vec::new();
        for id in ids {
            let Some(s) = st.series.get(&id) else { continue };
            if s.sealed {
                // No rollups exist for sealed series (no replica can read them), so their
                // samples stand in for rollups too: kept as long as the namespace keeps
                // anything (the rollup retention, never shorter than the raw one).
                let before = rollup_before.min(raw_before);
                for k in self.data.range(self.blocks_from(id, i64::MIN)..self.blocks_from(id, before)).keys()
                {
                    b.remove(k);
                    deleted += 1;
                }
                if self.data.range(self.blocks_from(id, before)..=self.blocks_end(id)).keys().next().is_none()
                {
                    b.remove(self.key(SEALED_MIN, &[&id.to_be_bytes()]));
                    gone.push(id);
                }
                continue;
            }
            let raw_cut = raw_before.min(s.rolled);
            if s.min_t < raw_cut {
                for k in self.data.range(self.chunk_key(id, i64::MIN)..self.chunk_key(id, raw_cut)).keys() {
                    b.remove(k);
                    deleted += 1;
                }
            }
            let mut rollups_left = false;
            for (res, _, _) in RESOLUTIONS {
                for agg in 0..AGGREGATES.len() as u8 {
                    let old =
                        self.rollup_key(id, res, agg, i64::MIN)..self.rollup_key(id, res, agg, rollup_before);
                    for k in self.data.range(old).keys() {
                        b.remove(k);
                        deleted += 1;
                    }
                    let newer = self.rollup_key(id, res, agg, rollup_before)
                        ..=self.rollup_key(id, res, agg, i64::MAX);
                    rollups_left |= self.data.range(newer).keys().next().is_some();
                }
            }
            let next = self.data.range(self.chunk_key(id, raw_cut)..=self.chunk_key(id, i64::MAX)).next();
            let Some(s) = st.series.get_mut(&id) else { continue };
            match next {
                Some(kv) => {
                    let (_, v) = kv?;
                    if s.min_t < raw_cut {
                        s.min_t = get_varint(&v, &mut 0)?;
                    }
                }
                None if s.head.is_empty() && !rollups_left && s.max_t < raw_cut => gone.push(id),
                None => {
                    if s.min_t < raw_cut {
                        s.min_t = s.head.first().map_or(raw_cut, |x| x.0);
                    }
                }
            }
        }
        for id in gone {
            b.remove(self.key(SERIES, &[&id.to_be_bytes()]));
            b.remove(self.key(ROLLED, &[&id.to_be_bytes()]));
            b.remove(self.key(MERGED, &[&id.to_be_bytes()]));
            if let Some(s) = st.series.remove(&id) {
                st.ids.remove(&series_key(&s.ns, &s.labels));
                if let Some(idx) = st.index.get_mut(&s.ns) {
                    for (n, v) in s.labels.iter() {
                        if let Some(values) = idx.postings.get_mut(n) {
                            if let Some(set) = values.get_mut(v) {
                                set.remove(&id);
                                if set.is_empty() {
                                    values.remove(v);
                                }
                            }
                            if values.is_empty() {
                                idx.postings.remove(n);
                            }
                        }
                    }
                }
            }
        }
        // Not synced: a deletion lost in a crash is done again by the next pass.
        self.data.apply(b, false)?;
        Ok(deleted)
    }

    /// Bytes of keys and values of the raw chunks and of the rollup chunks: the compressed
    /// data itself, before the storage layer's own overhead.
    pub fn chunk_bytes(&self) -> Result<(u64, u64), Error> {
        // Sealed blocks count as raw chunks.
        let mut sizes = [0u64; 2];
        for (slot, kind) in [(0, CHUNK), (0, BLOCK), (1, ROLLUP)] {
            for (k, v) in self.data.sizes(vec![kind]..vec![kind + 1]) {
                sizes[slot] += k.len() as u64 + v;
            }
        }
        Ok((sizes[0], sizes[1]))
    }

    /// (bytes, samples) of the chunks cut from heads since the engine opened.
    pub fn cut_totals(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.cut_bytes.load(Relaxed), self.cut_samples.load(Relaxed))
    }

    /// Series count and samples still in memory (the head).
    pub fn stats(&self) -> (usize, usize) {
        self.state.read().map_or((0, 0), |s| (s.series.len(), s.series.values().map(|x| x.head.len()).sum()))
    }

    /// Cuts every head into a chunk, trims the head log, and rewrites both files without their
    /// dead bytes: before measuring storage, or before a shutdown that wants a short replay.
    pub fn flush(&self) -> Result<(), Error> {
        let mut guard = self.state.write().map_err(|_| Error::Corrupt("engine lock poisoned".into()))?;
        let st = &mut *guard;
        let mut b = Batch::default();
        let mut h = Batch::default();
        let ids: Vec<u64> = st.pending.iter().map(|&(_, id)| id).collect();
        for id in ids {
            self.cut(st, id, &mut b)?;
        }
        let floor = st.applied;
        self.trim_head_log(st, floor, &mut h)?;
        self.data.apply(b, true)?;
        self.head.apply(h, true)?;
        // Merge every series' chunks, final or not (a late sample still lands in the chunk
        // covering it, however large): what a flush before measuring or a shutdown wants.
        let ids: Vec<u64> = st.series.keys().copied().collect();
        for id in ids {
            while let Some(s) = st.series.get(&id) {
                let Some(end) = s.last_chunk_end else { break };
                let mut b = Batch::default();
                let moved = self.merge_final_chunks(id, s.merged, end.saturating_add(1), &mut b)?;
                self.data.apply(b, false)?;
                match (moved, st.series.get_mut(&id)) {
                    (Some(m), Some(s)) => s.merged = m,
                    _ => break,
                }
            }
        }
        self.data.compact_now()?;
        self.head.compact_now()
    }

    /// Deletes the head log's entries up to `floor` (every sample of theirs is in a chunk).
    fn trim_head_log(&self, st: &mut State, floor: u64, b: &mut Batch) -> Result<(), Error> {
        if floor <= st.floor {
            return Ok(());
        }
        let from = self.key(WAL, &[&(st.floor + 1).to_be_bytes()]);
        let to = self.key(WAL, &[&floor.to_be_bytes()]);
        for k in self.head.range(from..=to).keys() {
            b.remove(k);
        }
        st.floor = floor;
        b.insert(self.key(META, &[b"floor"]), floor.to_be_bytes());
        Ok(())
    }

    /// Samples in `[mint, maxt]` from the chunks with keys in `range` (a series' raw or rollup
    /// stream; keys order chunks by end time, so the scan stops at the first starting after
    /// `maxt`).
    fn read_chunks(
        &self,
        range: std::ops::RangeInclusive<Vec<u8>>,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Sample>, Error> {
        // The chunks first, to size `out` once (their headers say how many samples each has).
        let mut chunks = Vec::new();
        let mut total = 0usize;
        for kv in self.data.range(range) {
            let (_, v) = kv?;
            let mut pos = 0;
            if get_varint(&v, &mut pos)? > maxt {
                break;
            }
            total += codec::count(&v[pos..]).unwrap_or(0).min(1 << 20);
            chunks.push((v, pos));
        }
        let mut out = Vec::with_capacity(total);
        for (v, pos) in chunks {
            // Decoded straight into `out`; the chunk's samples outside the range are cut off.
            let from = out.len();
            codec::decode_into(&v[pos..], &mut out)?;
            let lo = from + out[from..].partition_point(|s| s.0 < mint);
            let hi = from + out[from..].partition_point(|s| s.0 <= maxt);
            out.truncate(hi);
            out.drain(from..lo);
        }
        Ok(out)
    }
}

/// A chunk's stored value: its first timestamp, then the encoded samples.
fn chunk_value(samples: &[Sample]) -> Vec<u8> {
    let mut v = Vec::with_capacity(samples.len() * 2 + 16);
    put_varint(&mut v, samples.first().map_or(0, |s| s.0));
    v.extend_from_slice(&codec::encode(samples));
    v
}

/// Buckets of `width` ms (timestamped at their start) over sorted samples: the min, max, sum
/// and count streams. Staleness markers are not samples and are skipped.
fn aggregate(samples: &[Sample], width: i64) -> [Vec<Sample>; 4] {
    let mut out: [Vec<Sample>; 4] = Default::default();
    let mut cur: Option<(i64, f64, f64, f64, f64)> = None;
    let emit = |c: (i64, f64, f64, f64, f64), out: &mut [Vec<Sample>; 4]| {
        out[0].push((c.0, c.1));
        out[1].push((c.0, c.2));
        out[2].push((c.0, c.3));
        out[3].push((c.0, c.4));
    };
    for &(t, v) in samples {
        if v.to_bits() == crate::promql::eval::STALE_NAN {
            continue;
        }
        let bucket = t.div_euclid(width) * width;
        match &mut cur {
            Some(c) if c.0 == bucket => {
                if v < c.1 || c.1.is_nan() {
                    c.1 = v;
                }
                if v > c.2 || c.2.is_nan() {
                    c.2 = v;
                }
                c.3 += v;
                c.4 += 1.0;
            }
            _ => {
                if let Some(c) = cur.take() {
                    emit(c, &mut out);
                }
                cur = Some((bucket, v, v, v, 1.0));
            }
        }
    }
    if let Some(c) = cur {
        emit(c, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::SeriesSamples;
    use crate::matcher::MatchOp;
    use proptest::prelude::*;

    fn labels(name: &str, extra: &[(&str, &str)]) -> Labels {
        let mut l = vec![("__name__".to_string(), name.to_string())];
        l.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        l.sort();
        l
    }

    fn batch(ns: &str, series: Vec<(Labels, Vec<Sample>)>) -> WriteBatch {
        WriteBatch {
            ns: ns.into(),
            series: series.into_iter().map(|(labels, samples)| SeriesSamples { labels, samples }).collect(),
        }
    }

    fn small() -> Options {
        Options { chunk_samples: 4, ooo_window_ms: 100, max_head_lag: 5 }
    }

    fn open(dir: &std::path::Path, opts: Options) -> Engine {
        Engine::open(dir, opts).unwrap()
    }

    fn all(e: &Engine, ns: &str) -> Vec<Series> {
        e.select(ns, &[Matcher::new("__name__", MatchOp::Re, ".+").unwrap()], i64::MIN, i64::MAX).unwrap()
    }

    #[test]
    fn select_by_matchers_and_range() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path(), small());
        let a = labels("cpu", &[("host", "a"), ("dc", "x")]);
        let b = labels("cpu", &[("host", "b")]);
        let c = labels("mem", &[("host", "a")]);
        let s: Vec<Sample> = (0..10).map(|i| (i * 10, i as f64)).collect();
        e.apply(
            1,
            &batch("ns", vec![(a.clone(), s.clone()), (b.clone(), s.clone()), (c.clone(), s.clone())]),
        )
        .unwrap();
        let sel = |ms: Vec<Matcher>, lo, hi| e.select("ns", &ms, lo, hi).unwrap();
        let r = sel(vec![Matcher::eq("__name__", "cpu")], 0, 100);
        assert_eq!(r.iter().map(|s| (*s.labels).clone()).collect::<Vec<_>>(), vec![a.clone(), b.clone()]);
        assert_eq!(r[0].samples, s);
        let r =
            sel(vec![Matcher::eq("__name__", "cpu"), Matcher::new("dc", MatchOp::Ne, "x").unwrap()], 0, 100);
        assert_eq!(r.len(), 1);
        assert_eq!(*r[0].labels, b);
        let r = sel(vec![Matcher::new("host", MatchOp::Re, "a|z").unwrap()], 25, 55);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].samples, vec![(30, 3.0), (40, 4.0), (50, 5.0)]);
        assert!(sel(vec![Matcher::eq("__name__", "cpu")], 200, 300).is_empty());
        // Other namespaces see nothing; a selector matching everything empty is refused.
        assert!(e.select("other", &[Matcher::eq("__name__", "cpu")], 0, 100).unwrap().is_empty());
        assert!(e.select("ns", &[Matcher::new("x", MatchOp::Ne, "1").unwrap()], 0, 100).is_err());
        let all = e.series("ns", &[], 0, 100).unwrap();
        let names: BTreeSet<&str> = all.iter().flat_map(|l| l.iter().map(|(k, _)| k.as_str())).collect();
        assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["__name__", "dc", "host"]);
        let cpu = e.series("ns", &[vec![Matcher::eq("__name__", "cpu")]], 0, 100).unwrap();
        let hosts: Vec<&str> =
            cpu.iter().filter_map(|l| l.iter().find(|(k, _)| k == "host").map(|(_, v)| v.as_str())).collect();
        assert_eq!(hosts, vec!["a", "b"], "{cpu:?}");
        assert_eq!(e.series("ns", &[vec![Matcher::eq("host", "a")]], 0, 100).unwrap().len(), 2);
    }

    #[test]
    fn late_samples_go_where_they_belong_or_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path(), small());
        let l = labels("m", &[]);
        let s: Vec<Sample> = (0..10).map(|i| (i * 10, i as f64)).collect();
        e.apply(1, &batch("ns", vec![(l.clone(), s)])).unwrap();
        // 0..70 are in chunks (4 + 4), 80 and 90 in the head. Late: 35 (in a chunk, within the
        // window), 85 (in the head), a rewrite of 40, and -50 (too old: 90 - 100 > -50).
        let o = e
            .apply(2, &batch("ns", vec![(l.clone(), vec![(-50, 0.0), (35, 3.5), (40, 44.0), (85, 8.5)])]))
            .unwrap();
        assert_eq!((o.written, o.too_old), (3, 1));
        let got = &all(&e, "ns")[0].samples;
        let want: Vec<Sample> = vec![
            (0, 0.0),
            (10, 1.0),
            (20, 2.0),
            (30, 3.0),
            (35, 3.5),
            (40, 44.0),
            (50, 5.0),
            (60, 6.0),
            (70, 7.0),
            (80, 8.0),
            (85, 8.5),
            (90, 9.0),
        ];
        assert_eq!(got, &want);
    }

    #[test]
    fn the_head_survives_a_reopen_and_replays_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let l = labels("m", &[("k", "v")]);
        let b1 = batch("ns", vec![(l.clone(), vec![(1, 1.0), (2, 2.0)])]);
        {
            let e = open(dir.path(), Options::default());
            e.apply(1, &b1).unwrap();
            e.apply(2, &batch("ns", vec![(l.clone(), vec![(3, 3.0)])])).unwrap();
            assert_eq!(e.stats(), (1, 3), "all in the head");
        }
        let e = open(dir.path(), Options::default());
        assert_eq!(e.applied(), 2);
        assert_eq!(all(&e, "ns")[0].samples, vec![(1, 1.0), (2, 2.0), (3, 3.0)]);
        // Raft re-applying entry 1 after a crash changes nothing.
        assert!(e.apply(1, &batch("ns", vec![(l.clone(), vec![(1, 9.0)])])).unwrap().duplicate);
        assert_eq!(all(&e, "ns")[0].samples[0], (1, 1.0));
    }

    #[test]
    fn import_replaces_everything_and_a_half_done_import_starts_empty() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (open(d1.path(), small()), open(d2.path(), small()));
        // Nine batches of three samples, heads cut at four: the last three are still in the head.
        for i in 0..9 {
            let s = (i * 3..i * 3 + 3).map(|t| (t, t as f64)).collect();
            a.apply(i as u64 + 1, &batch("ns", vec![(labels("m", &[("k", "a")]), s)])).unwrap();
        }
        b.apply(1, &batch("ns", vec![(labels("old", &[]), vec![(1, 1.0)])])).unwrap();
        let image = a.export().unwrap();
        assert!(image.iter().any(|(k, _)| k[0] == CHUNK) && image.iter().any(|(k, _)| k[0] == WAL));
        b.import(image.clone()).unwrap();
        assert_eq!(all(&b, "ns"), all(&a, "ns"));
        assert_eq!(b.applied(), 9);
        assert_eq!(b.export().unwrap(), image);
        drop(b);
        let b = open(d2.path(), small());
        assert_eq!(all(&b, "ns"), all(&a, "ns"), "durable");
        // A crash between the two files' replacement: the marker is still there.
        drop(b);
        std::fs::write(d2.path().join(IMPORTING), b"").unwrap();
        let b = open(d2.path(), small());
        assert_eq!((b.applied(), b.stats()), (0, (0, 0)), "empty, for the caller to import again");
        assert!(!d2.path().join(IMPORTING).exists());
    }

    #[test]
    fn final_chunks_are_merged_and_nothing_changes_for_queries() {
        let dir = tempfile::tempdir().unwrap();
        // Chunks of 4 samples (merged up to 16); samples 10 apart; a 100 ms late window.
        let e = open(dir.path(), small());
        let l = labels("m", &[]);
        for i in 0..30i64 {
            let s = (i * 3..i * 3 + 3).map(|j| (j * 10, j as f64 * 1.5)).collect();
            e.apply(i as u64 + 1, &batch("ns", vec![(l.clone(), s)])).unwrap();
        }
        let before = all(&e, "ns");
        let chunks = |e: &Engine| e.data.scan_prefix(&[CHUNK]).keys().count();
        let n0 = chunks(&e);
        e.rollup(1).unwrap();
        let n1 = chunks(&e);
        // Heads of 3-sample batches are cut at 6; final ones merge in pairs (12 of at most 16).
        assert!(n1 * 3 < n0 * 2, "{n0} chunks before, {n1} after");
        assert_eq!(all(&e, "ns"), before);
        // Everything final is merged: another pass changes nothing.
        e.rollup(1).unwrap();
        assert_eq!(chunks(&e), n1);
        // Merged chunks hold at most 16 samples, and the non-final ones are untouched.
        for kv in e.data.scan_prefix(&[CHUNK]) {
            let (_, v) = kv.unwrap();
            let mut pos = 0;
            get_varint(&v, &mut pos).unwrap();
            assert!(codec::count(&v[pos..]).unwrap() <= 16);
        }
        drop(e);
        let e = open(dir.path(), small());
        assert_eq!(all(&e, "ns"), before, "after a reopen");
        assert_eq!(chunks(&e), n1);
        // A late sample inside the window still lands where it belongs.
        let last = before[0].samples.last().unwrap().0;
        e.apply(31, &batch("ns", vec![(l.clone(), vec![(last - 5, 7.0)])])).unwrap();
        let with_late = all(&e, "ns");
        assert!(with_late[0].samples.contains(&(last - 5, 7.0)));
        // A flush merges the chunks that are not final too.
        e.flush().unwrap();
        assert!(chunks(&e) < n1, "{} chunks after the flush", chunks(&e));
        assert_eq!(all(&e, "ns"), with_late);
        // The flush merged past what is final: a maintenance pass after it has nothing to merge
        // (it once asked for a backwards key range: a panic).
        e.rollup(1).unwrap();
        assert_eq!(all(&e, "ns"), with_late);
    }

    /// Store-and-forward proposes queued parts as one batch that names a series once per
    /// part. Applying those entries one at a time read chunks back before they were written:
    /// a crash-loop run found a node that could not restart ("no chunk covers a late
    /// sample" on every replay of the entry), and two late merges into one chunk kept only
    /// the second.
    #[test]
    fn a_batch_naming_a_series_twice_is_applied_as_its_parts_would_be() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path(), Options { chunk_samples: 4, ooo_window_ms: 1_000, max_head_lag: 5 });
        let l = labels("m", &[]);
        let one = |s: &[(i64, f64)]| (l.clone(), s.to_vec());
        // A chunk ending at 40.
        e.apply(1, &batch("ns", vec![one(&[(10, 1.0), (20, 1.0), (30, 1.0), (40, 1.0)])])).unwrap();
        // Part 1 fills the head (a cut to 80) and has a late sample for the chunk at 40; part 2
        // has another late sample for that chunk, one for the chunk being cut (75), and
        // overwrites 60 and 15.
        let parts = batch(
            "ns",
            vec![
                one(&[(15, 2.0), (50, 2.0), (60, 2.0), (70, 2.0), (80, 2.0)]),
                one(&[(15, 3.0), (25, 3.0), (60, 3.0), (75, 3.0)]),
            ],
        );
        assert_eq!(e.apply(2, &parts).unwrap().too_old, 0);
        let want: Vec<Sample> = vec![
            (10, 1.0),
            (15, 3.0),
            (20, 1.0),
            (25, 3.0),
            (30, 1.0),
            (40, 1.0),
            (50, 2.0),
            (60, 3.0),
            (70, 2.0),
            (75, 3.0),
            (80, 2.0),
        ];
        assert_eq!(all(&e, "ns")[0].samples, want);
        // Chunks still never overlap, and a reopen (which replays nothing) reads the same.
        let mut ends = Vec::new();
        for kv in e.data.scan_prefix(&[CHUNK]) {
            let (k, v) = kv.unwrap();
            let mut pos = 0;
            let start = get_varint(&v, &mut pos).unwrap();
            ends.push((start, unflip(&k[k.len() - 8..]).unwrap()));
        }
        assert!(ends.windows(2).all(|w| w[0].1 < w[1].0), "overlapping chunks {ends:?}");
        drop(e);
        let e = open(dir.path(), small());
        assert_eq!(all(&e, "ns")[0].samples, want);
    }

    /// Two replicas apply the same batches; one was flushed (a local cut, as `POST
    /// /v1/ts/flush` does). A sample past the out-of-order window was refused by the flushed
    /// replica (it fell in a chunk) and taken into the other's head: they diverged.
    #[test]
    fn every_replica_refuses_the_same_late_samples() {
        let opts = Options { chunk_samples: 8, ooo_window_ms: 100, max_head_lag: 50 };
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (open(da.path(), opts.clone()), open(db.path(), opts));
        let l = labels("m", &[]);
        let batches =
            [vec![(0, 1.0), (10, 1.0), (20, 1.0)], vec![(300, 2.0)], vec![(150, 3.0)], vec![(250, 4.0)]];
        for (i, s) in batches.iter().enumerate() {
            let wb = batch("ns", vec![(l.clone(), s.clone())]);
            let (oa, ob) = (a.apply(i as u64 + 1, &wb).unwrap(), b.apply(i as u64 + 1, &wb).unwrap());
            assert_eq!(oa.too_old, ob.too_old, "batch {i}");
            assert_eq!(oa.too_old, usize::from(i == 2), "batch {i}: only 150 is older than 300 - 100");
            if i == 1 {
                a.flush().unwrap();
            }
        }
        assert_eq!(all(&a, "ns"), all(&b, "ns"));
        assert_eq!(all(&a, "ns")[0].samples, vec![(0, 1.0), (10, 1.0), (20, 1.0), (250, 4.0), (300, 2.0)]);
    }

    fn sealed(labels: Labels, min_t: i64, max_t: i64, bytes: &[u8]) -> crate::batch::SealedSeries {
        crate::batch::SealedSeries { labels, min_t, max_t, count: 3, key_version: 2, sealed: bytes.to_vec() }
    }

    #[test]
    fn sealed_series_are_stored_selected_and_expired_as_they_came() {
        use crate::batch::SealedBatch;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (labels("temp", &[("room", "a")]), labels("temp", &[("room", "b")]));
        {
            let e = open(dir.path(), small());
            let batch = |series| SealedBatch { ns: "secret".into(), series };
            e.apply_sealed(
                1,
                &batch(vec![sealed(a.clone(), 0, 100, b"ct-1"), sealed(b.clone(), 0, 90, b"ct-2")]),
            )
            .unwrap();
            let o = e.apply_sealed(2, &batch(vec![sealed(a.clone(), 100, 200, b"ct-3")])).unwrap();
            assert_eq!(o.written, 3);
            assert!(e.apply_sealed(2, &batch(vec![sealed(a.clone(), 0, 1, b"x")])).unwrap().duplicate);
        }
        let e = open(dir.path(), small());
        assert_eq!(e.applied(), 2);
        let room_a = [Matcher::eq("__name__", "temp"), Matcher::eq("room", "a")];
        let got = e.select_sealed("secret", &room_a, 50, 150).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(*got[0].labels, a);
        let blocks: Vec<(u64, &[u8])> =
            got[0].blocks.iter().map(|b| (b.index, b.sealed.as_slice())).collect();
        assert_eq!(blocks, vec![(1, &b"ct-1"[..]), (2, &b"ct-3"[..])], "oldest batch first");
        assert_eq!(
            (got[0].blocks[1].min_t, got[0].blocks[1].max_t, got[0].blocks[1].key_version),
            (100, 200, 2)
        );
        // Blocks outside the range are left out, on both sides.
        assert_eq!(e.select_sealed("secret", &room_a, 150, 300).unwrap()[0].blocks.len(), 1);
        assert_eq!(e.select_sealed("secret", &room_a, 0, 50).unwrap()[0].blocks.len(), 1);
        assert!(e.select_sealed("secret", &room_a, 201, 300).unwrap().is_empty());
        // Labels are in clear: the series are listed; plain selects never return ciphertext.
        assert_eq!(e.series("secret", &[], 0, 1000).unwrap().len(), 2);
        assert!(e.select("secret", &[Matcher::eq("__name__", "temp")], 0, 1000).unwrap().is_empty());
        // The image carries the blocks.
        let d2 = tempfile::tempdir().unwrap();
        let copy = open(d2.path(), small());
        copy.import(e.export().unwrap()).unwrap();
        assert_eq!(
            copy.select_sealed("secret", &room_a, 0, 300).unwrap(),
            e.select_sealed("secret", &room_a, 0, 300).unwrap()
        );
        // The raw retention alone drops nothing (there are no rollups to fall back on)...
        assert_eq!(e.expire("secret", 150, i64::MIN).unwrap(), 0);
        // ...the rollup retention drops whole blocks by their end; a series with none left
        // is gone.
        assert_eq!(e.expire("secret", 150, 150).unwrap(), 2);
        assert_eq!(e.select_sealed("secret", &room_a, 0, 300).unwrap()[0].blocks.len(), 1);
        assert_eq!(e.series("secret", &[], 0, 1000).unwrap(), vec![Arc::new(a)]);
    }

    #[test]
    fn sealed_blocks_compact_without_changing_which_write_wins() {
        use crate::batch::{SealedBatch, SealedCompaction};
        let dir = tempfile::tempdir().unwrap();
        let a = labels("temp", &[("room", "a")]);
        let all = [Matcher::eq("__name__", "temp")];
        let e = open(dir.path(), small());
        let put = |index: u64, min_t: i64, max_t: i64| {
            let s = sealed(a.clone(), min_t, max_t, format!("ct-{index}").as_bytes());
            e.apply_sealed(index, &SealedBatch { ns: "secret".into(), series: vec![s] }).unwrap();
        };
        // Windows of 1000: five blocks start in [0, 1000), batch 2 straddling into the next
        // window; batch 6 is alone in [1000, 2000), overlapping nothing of the first window's;
        // batch 7 is in [2000, 3000), not settled.
        put(1, 0, 100);
        put(2, 900, 1100);
        put(3, 200, 300);
        put(4, 250, 400);
        put(5, 500, 999);
        put(6, 1200, 1300);
        put(7, 2000, 2100);
        let plan = |settled_before: i64, min_blocks: usize, reseal_below: u32, max_samples: u64| {
            let limit = 10;
            let p = CompactionPolicy {
                window_ms: 1000,
                settled_before,
                min_blocks,
                reseal_below,
                max_samples,
                limit,
            };
            e.sealed_compactions("secret", &p).unwrap()
        };
        // Nothing settled, or too few blocks: no plan.
        assert!(plan(999, 2, 0, u64::MAX).is_empty());
        assert!(plan(3000, 6, 0, u64::MAX).is_empty());
        let plans = plan(2000, 2, 0, u64::MAX);
        assert_eq!(plans.len(), 1, "{plans:?}");
        let ids: Vec<u64> = plans[0].blocks.iter().map(|b| b.index).collect();
        // Batch 2 (older than 5, overlapping) comes along; 6 (alone, newer) does not.
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        // Too big for one entry: skipped.
        assert!(plan(2000, 2, 0, 14).is_empty());

        let replaces: Vec<BlockId> = plans[0].blocks.iter().map(SealedBlock::id).collect();
        let mut merged = sealed(a.clone(), 0, 1100, b"merged");
        merged.count = 15;
        let c = SealedCompaction { ns: "secret".into(), replaces: replaces.clone(), merged };
        assert_eq!(SealedCompaction::decode(&c.encode()).unwrap(), c);
        // A merge reaching outside what it replaces is not applied.
        let outside = SealedCompaction { merged: sealed(a.clone(), 0, 1101, b"bad"), ..c.clone() };
        assert_eq!(e.apply_compaction(8, &outside).unwrap().written, 0);
        assert_eq!(e.select_sealed("secret", &all, 0, 3000).unwrap()[0].blocks.len(), 7);
        assert_eq!(e.apply_compaction(9, &c).unwrap().written, 15);
        let blocks = |e: &Engine| -> Vec<(u64, Vec<u8>)> {
            e.select_sealed("secret", &all, 0, 3000).unwrap()[0]
                .blocks
                .iter()
                .map(|b| (b.index, b.sealed.clone()))
                .collect()
        };
        // The merge takes batch 5's place: before 6 and 7, which still win over it.
        let want = vec![(5, b"merged".to_vec()), (6, b"ct-6".to_vec()), (7, b"ct-7".to_vec())];
        assert_eq!(blocks(&e), want);
        // Its blocks are gone: the same compaction again changes nothing.
        assert_eq!(e.apply_compaction(10, &c).unwrap().written, 0);
        assert_eq!(blocks(&e), want);
        // One block in the window now: no plan, unless its key version is to be replaced
        // (all test blocks are version 2): then the lone block of [1000, 2000) too.
        assert!(plan(2000, 2, 2, u64::MAX).is_empty());
        let resealed = plan(2000, 2, 3, u64::MAX);
        let ids: Vec<Vec<u64>> =
            resealed.iter().map(|p| p.blocks.iter().map(|b| b.index).collect()).collect();
        assert_eq!(ids, vec![vec![5], vec![6]]);
        drop(e);
        let e = open(dir.path(), small());
        assert_eq!((blocks(&e), e.applied()), (want, 10));
        // Garbage is refused by the decoder.
        assert!(SealedCompaction::decode(b"\x01x").is_err());
        let none = SealedCompaction { replaces: vec![], ..c.clone() };
        assert!(SealedCompaction::decode(&none.encode()).is_err());
    }

    #[test]
    fn sealed_batches_round_trip_and_bad_ones_are_refused() {
        use crate::batch::SealedBatch;
        let good = SealedBatch {
            ns: "secret".into(),
            series: vec![sealed(labels("m", &[("k", "v")]), 5, 9, b"abc")],
        };
        let bytes = good.encode();
        assert_eq!(SealedBatch::decode(&bytes).unwrap(), good);
        for cut in 1..bytes.len() {
            assert!(SealedBatch::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(SealedBatch::decode(&trailing).is_err());
        let twice =
            SealedBatch { series: vec![good.series[0].clone(), good.series[0].clone()], ..good.clone() };
        assert!(SealedBatch::decode(&twice.encode()).unwrap_err().to_string().contains("twice"));
        let backwards = SealedBatch { series: vec![sealed(labels("m", &[]), 9, 5, b"x")], ..good.clone() };
        assert!(SealedBatch::decode(&backwards.encode()).is_err());
        // The AAD binds the clear fields: another time or series authenticates differently.
        let s = &good.series[0];
        let moved = crate::batch::SealedSeries { min_t: 6, ..s.clone() };
        assert_ne!(s.aad("secret"), moved.aad("secret"));
        assert_ne!(s.aad("secret"), s.aad("other"));
    }

    #[test]
    fn final_chunks_are_not_merged_when_that_is_larger() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path(), Options { chunk_samples: 60, ooo_window_ms: 100, max_head_lag: 1000 });
        let l = labels("m", &[]);
        // Three chunks of steps under 16 (4 bits packed each) and one of steps near 2^39: one
        // width (or prefix codes) for all four would cost more than four chunks' headers save.
        let mut x = 88172645463325252u64;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut v = 0i64;
        for c in 0..5i64 {
            let s: Vec<Sample> = (0..60)
                .map(|i| {
                    v += if c == 3 { (1 << 38) + next(1 << 38) as i64 } else { next(16) as i64 };
                    ((c * 60 + i) * 10, v as f64)
                })
                .collect();
            e.apply(c as u64 + 1, &batch("ns", vec![(l.clone(), s)])).unwrap();
        }
        let chunks = |e: &Engine| e.data.scan_prefix(&[CHUNK]).keys().count();
        let before = all(&e, "ns");
        assert_eq!(chunks(&e), 5);
        e.rollup(1).unwrap();
        assert_eq!(chunks(&e), 5, "a larger merge is skipped");
        assert_eq!(all(&e, "ns"), before);
    }

    #[test]
    fn ids_are_the_same_on_every_replica() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let e1 = open(d1.path(), small());
        let e2 = open(d2.path(), small());
        let bt =
            batch("ns", (0..50).map(|i| (labels("m", &[("i", &i.to_string())]), vec![(1, 1.0)])).collect());
        e1.apply(1, &bt).unwrap();
        e2.apply(7, &bt).unwrap();
        let ids = |e: &Engine| {
            let st = e.state.read().unwrap();
            st.ids.values().copied().collect::<BTreeSet<u64>>()
        };
        assert_eq!(ids(&e1), ids(&e2));
    }

    #[test]
    fn expiry_deletes_old_chunks_and_empty_series() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path(), small());
        let old = labels("old", &[]);
        let live = labels("live", &[]);
        e.apply(1, &batch("ns", vec![(old, (0..8).map(|i| (i, 1.0)).collect())])).unwrap();
        e.apply(2, &batch("ns", vec![(live.clone(), (0..10).map(|i| (i * 10, 1.0)).collect())])).unwrap();
        // Nothing is rolled up yet: raw data stays whatever the retention says.
        assert_eq!(e.expire("ns", 50, 50).unwrap(), 0);
        for s in e.state.write().unwrap().series.values_mut() {
            s.rolled = i64::MAX; // as if rolled up
        }
        let n = e.expire("ns", 50, i64::MIN).unwrap();
        // `live`'s ten samples were cut into two chunks of five: [0, 40] and [50, 90].
        assert_eq!(n, 3, "both chunks of `old`, the first chunk of `live`");
        let left = all(&e, "ns");
        assert_eq!(left.len(), 1);
        assert_eq!(*left[0].labels, live);
        assert_eq!(left[0].samples.first(), Some(&(50, 1.0)));
        let series = e.series("ns", &[], i64::MIN, i64::MAX).unwrap();
        assert_eq!(series, vec![Arc::new(live)], "the expired series is gone from the index too");
    }

    #[test]
    fn rollups_are_computed_once_kept_longer_and_queried_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options { chunk_samples: 60, ooo_window_ms: 60_000, max_head_lag: 1000 };
        let l = labels("m", &[("k", "v")]);
        // A sample every 10 s for 3 h 20 min: value i at t = 10 s * i.
        let n = 1200;
        let s: Vec<Sample> = (0..n).map(|i| (i * 10_000, i as f64)).collect();
        {
            let e = open(dir.path(), opts.clone());
            e.apply(1, &batch("ns", vec![(l.clone(), s.clone())])).unwrap();
            assert_eq!(e.rollup(2).unwrap(), 2, "bounded: two hours per call");
            assert_eq!(e.rollup(100).unwrap(), 1, "the third hour; the fourth is not final yet");
            assert_eq!(e.rollup(100).unwrap(), 0);
        }
        let e = open(dir.path(), opts);
        assert_eq!(e.rollup(100).unwrap(), 0, "the watermark survives a reopen: nothing twice");
        let sel = |name: &str| e.select("ns", &[Matcher::eq("__name__", name)], i64::MIN, i64::MAX).unwrap();
        let count = sel("m:1h_count");
        assert_eq!(count.len(), 1);
        assert_eq!(count[0].samples, vec![(0, 360.0), (3_600_000, 360.0), (7_200_000, 360.0)]);
        assert_eq!(count[0].labels[0], ("__name__".to_string(), "m:1h_count".to_string()));
        let sum: f64 = (0..360).map(|i| i as f64).sum();
        assert_eq!(sel("m:1h_sum")[0].samples[0], (0, sum));
        assert_eq!(sel("m:1h_max")[0].samples[1], (3_600_000, 719.0));
        let min1m = &sel("m:1m_min")[0].samples;
        assert_eq!(min1m.len(), 180);
        assert_eq!(min1m[1], (60_000, 6.0));
        // Other matchers still apply; a name that is not a rollup is a plain name.
        assert!(e
            .select("ns", &[Matcher::eq("__name__", "m:1h_max"), Matcher::eq("k", "x")], 0, i64::MAX)
            .unwrap()
            .is_empty());
        assert!(sel("m:2h_max").is_empty());
        // A late sample in a rolled-up hour is refused, so the rollup stays true.
        let o = e.apply(2, &batch("ns", vec![(l.clone(), vec![(5, 1e9)])])).unwrap();
        assert_eq!(o.too_old, 1);
        // Retention: raw data before 2 h goes, the rollups stay. The final chunks were merged
        // along the rollups (up to 4 x 60 samples, 40 minutes): whole chunks go.
        let deleted = e.expire("ns", 7_200_000, i64::MIN).unwrap();
        assert!(deleted >= 3, "{deleted}");
        let raw = &e.select("ns", &[Matcher::eq("__name__", "m")], i64::MIN, i64::MAX).unwrap()[0].samples;
        assert!(raw[0].0 >= 7_200_000 - 2_400_000 && raw[0].0 <= 7_200_000, "{:?}", raw[0]);
        assert_eq!(sel("m:1h_count")[0].samples.len(), 3);
        // Raw retention never removes what is not rolled up yet (the last 20 minutes, and the
        // rest of the chunk reaching into them).
        e.expire("ns", i64::MAX, i64::MIN).unwrap();
        let raw = &e.select("ns", &[Matcher::eq("__name__", "m")], i64::MIN, i64::MAX).unwrap()[0].samples;
        assert!(raw.iter().any(|x| x.0 >= 3 * 3_600_000) && raw[0].0 >= 3 * 3_600_000 - 2_400_000);
        // Rollup retention, a chunk at a time: the first call's chunk (hours 0 and 1) ends at
        // 1 h, the second's (hour 2) at 2 h.
        e.expire("ns", i64::MIN, 3_600_000).unwrap();
        assert_eq!(sel("m:1h_count")[0].samples.len(), 3, "a chunk goes only once it all expired");
        e.expire("ns", i64::MIN, 7_200_000).unwrap();
        assert_eq!(sel("m:1h_count")[0].samples, vec![(7_200_000, 360.0)]);
    }

    /// The model: per series, timestamp → value, with the engine's rules for late samples.
    fn model_apply(m: &mut BTreeMap<Labels, BTreeMap<i64, f64>>, b: &WriteBatch) {
        for s in &b.series {
            let e = m.entry(s.labels.clone()).or_default();
            for &(t, v) in &s.samples {
                e.insert(t, v);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        /// Any sequence of batches, with reopens in between, reads back as the model says, as
        /// long as no sample is older than the out-of-order window (the window is wide here).
        /// A batch is up to three parts concatenated, as store-and-forward proposes them, so it
        /// may name a series more than once.
        #[test]
        fn matches_a_model_across_reopens(
            batches in proptest::collection::vec(
                proptest::collection::vec(
                    (0u8..6, proptest::collection::vec((0i64..500, -1e6f64..1e6), 0..20), 0usize..3),
                    1..6),
                1..25),
            reopen_at in proptest::collection::vec(0usize..25, 0..4),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let opts = Options { chunk_samples: 5, ooo_window_ms: 10_000, max_head_lag: 3 };
            let mut e = open(dir.path(), opts.clone());
            let mut model = BTreeMap::new();
            for (i, b) in batches.iter().enumerate() {
                let mut wb = WriteBatch { ns: "ns".into(), series: Vec::new() };
                for part in 0..3 {
                    let points = b.iter().filter(|e| e.2 == part).flat_map(|(s, smp, _)| {
                        let l = labels("m", &[("s", &s.to_string())]);
                        smp.iter().map(move |&(t, v)| crate::line::Point { labels: l.clone(), time_ms: t, value: v })
                    }).collect();
                    let p = WriteBatch::from_points("ns", points).unwrap();
                    model_apply(&mut model, &p);
                    wb.series.extend(p.series);
                }
                let o = e.apply(i as u64 + 1, &wb).unwrap();
                prop_assert_eq!(o.too_old, 0);
                if reopen_at.contains(&i) {
                    drop(e);
                    e = open(dir.path(), opts.clone());
                }
            }
            let got: BTreeMap<Labels, Vec<Sample>> =
                all(&e, "ns").into_iter().map(|s| ((*s.labels).clone(), s.samples)).collect();
            let want: BTreeMap<Labels, Vec<Sample>> = model.into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(l, v)| (l, v.into_iter().collect())).collect();
            prop_assert_eq!(got, want);
            // The head log holds no more than the batches not yet cut.
            let wal = e.head.scan_prefix(&e.key(WAL, &[])).count();
            prop_assert!(wal <= opts.max_head_lag as usize + 1, "{} head log entries", wal);
        }

        /// In-order batches with merges (through `rollup`) and reopens at random points: every
        /// sample is still there, once, with its value.
        #[test]
        fn merging_final_chunks_loses_nothing(
            batches in proptest::collection::vec(
                // Small integer values: merged chunks are smaller, so merges do happen.
                proptest::collection::vec((0u8..4, 1i64..20, 0i32..5), 1..8), 1..40),
            merge_at in proptest::collection::vec(0usize..40, 0..8),
            reopen_at in proptest::collection::vec(0usize..40, 0..3),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let opts = Options { chunk_samples: 3, ooo_window_ms: 30, max_head_lag: 4 };
            let mut e = open(dir.path(), opts.clone());
            let mut model: BTreeMap<Labels, BTreeMap<i64, f64>> = BTreeMap::new();
            let mut t = 0i64;
            for (i, b) in batches.iter().enumerate() {
                // Each batch after everything before it: nothing is late, nothing refused.
                let points = b.iter().map(|&(s, step, v)| {
                    t += step;
                    let value = f64::from(v);
                    crate::line::Point { labels: labels("m", &[("s", &s.to_string())]), time_ms: t, value }
                }).collect();
                let wb = WriteBatch::from_points("ns", points).unwrap();
                prop_assert_eq!(e.apply(i as u64 + 1, &wb).unwrap().too_old, 0);
                model_apply(&mut model, &wb);
                if merge_at.contains(&i) {
                    e.rollup(1000).unwrap();
                }
                if reopen_at.contains(&i) {
                    drop(e);
                    e = open(dir.path(), opts.clone());
                }
            }
            e.rollup(1000).unwrap();
            let want: BTreeMap<Labels, Vec<Sample>> =
                model.into_iter().map(|(l, v)| (l, v.into_iter().collect())).collect();
            let got: BTreeMap<Labels, Vec<Sample>> =
                all(&e, "ns").into_iter().map(|s| ((*s.labels).clone(), s.samples)).collect();
            prop_assert_eq!(&got, &want);
            drop(e);
            let e = open(dir.path(), opts);
            let got: BTreeMap<Labels, Vec<Sample>> =
                all(&e, "ns").into_iter().map(|s| ((*s.labels).clone(), s.samples)).collect();
            prop_assert_eq!(got, want);
        }
    }
}
