//! Time series on a node: ingest and queries over the shards of a namespace.
//!
//! Series are sharded like KV keys: a series goes to the shard owning the hash of its canonical
//! text (`name{a="b",...}`) in its namespace, or to the namespace's pinned shard (site-local
//! namespaces), so the data-class rules of the KV store hold for series too. A write batch is
//! split per shard and each part is one raft entry (`Command::TsWrite`), applied by every
//! replica into the group's engine (`edgefabric_tsdb::engine`, in the group's sled tree).
//!
//! Queries ask every shard of the namespace (local replicas directly, others over the internal
//! `TsSelect`/`TsSeries` RPCs) and merge series with equal labels: after a shard split a
//! series' older samples stay in the parent shard while newer ones go to the child, and the
//! merge puts them back together.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use edgefabric_crypto::envelope;
use edgefabric_tsdb::batch::{
    Labels, SealedBatch, SealedCompaction, SealedSeries, SeriesSamples, WriteBatch,
};
use edgefabric_tsdb::codec;
use edgefabric_tsdb::engine::{SealedBlock, Series};
use edgefabric_tsdb::matcher::{MatchOp, Matcher};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::log::GroupId;
use crate::node::{Consistency, Group, Node};
use crate::types::{Command, DataClass, NamespaceConfig, Response, MAX_TS_BATCH_BYTES};
use crate::{Error, Result};

/// One raft entry's worth of a write: a shard's encoded batch. Also what the store-and-forward
/// queue keeps (`ts_queue.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TsPart {
    pub shard: GroupId,
    pub batch: Vec<u8>,
    pub samples: u64,
    /// A `SealedBatch` (a confidential namespace's) rather than a `WriteBatch`.
    pub sealed: bool,
}

impl TsPart {
    pub(crate) fn command(&self) -> Command {
        let (shard, batch) = (self.shard, self.batch.clone());
        if self.sealed {
            Command::TsWriteSealed { shard, batch }
        } else {
            Command::TsWrite { shard, batch }
        }
    }
}

/// A matcher as it crosses the wire (regexes are compiled again by the receiver).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireMatcher {
    name: String,
    op: u8,
    value: String,
}

impl WireMatcher {
    fn from(m: &Matcher) -> WireMatcher {
        let op = match m.op {
            MatchOp::Eq => 0,
            MatchOp::Ne => 1,
            MatchOp::Re => 2,
            MatchOp::Nre => 3,
        };
        WireMatcher { name: m.name.clone(), op, value: m.value.clone() }
    }

    fn to_matcher(&self) -> Result<Matcher> {
        let op = match self.op {
            0 => MatchOp::Eq,
            1 => MatchOp::Ne,
            2 => MatchOp::Re,
            3 => MatchOp::Nre,
            other => return Err(Error::invalid("matcher", format!("unknown operator {other}"))),
        };
        Matcher::new(&self.name, op, &self.value).map_err(|e| Error::invalid("matcher", e.to_string()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TsSelectRequest {
    ns: String,
    matchers: Vec<WireMatcher>,
    mint: i64,
    maxt: i64,
    consistency: Consistency,
    pub(crate) mode: SelectMode,
}

/// What a selection returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum SelectMode {
    /// Samples (`WireSeries`).
    Samples,
    /// A confidential namespace's sealed blocks (`WireSealed`), opened by the asking key site.
    Sealed,
    /// The same without the ciphertext: which key versions blocks use.
    Headers,
}

/// A sealed series on the wire: labels and its blocks as stored, oldest batch first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireSealed {
    labels: Labels,
    blocks: Vec<SealedBlock>,
}

/// A series on the wire: labels and its samples chunk-encoded (compressed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireSeries {
    labels: Labels,
    chunk: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TsSeriesRequest {
    ns: String,
    selectors: Vec<Vec<WireMatcher>>,
    mint: i64,
    maxt: i64,
    consistency: Consistency,
}

/// What the time series of this node's replicas take (`ts_flush`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TsStorage {
    pub series: u64,
    /// Compressed samples (keys and values of raw chunks), and the same for rollups.
    pub chunk_bytes: u64,
    pub rollup_bytes: u64,
}

/// What a write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TsWriteOutcome {
    pub written: u64,
    /// Samples refused as older than the out-of-order window.
    pub too_old: u64,
    /// Samples kept in this node's durable queue, to be forwarded when their shard is
    /// reachable (`ts_queue.rs`).
    pub queued: u64,
}

/// A series' canonical text, hashed to pick its shard.
pub fn series_text(labels: &Labels) -> String {
    let name = labels.iter().find(|(k, _)| k == "__name__").map_or("", |(_, v)| v.as_str());
    let rest: Vec<String> =
        labels.iter().filter(|(k, _)| k != "__name__").map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", rest.join(","))
}

impl Node {
    /// Writes a batch: split per shard, one raft entry per part, all parts in parallel.
    /// Returns once every part is committed and applied on its leader, or durably queued on
    /// this node because its shard could not be reached (store-and-forward, `ts_queue.rs`).
    /// On an error some parts may be stored and others not; writing the same batch again is
    /// harmless (a sample's later write replaces it with the same value).
    ///
    /// In a confidential namespace (only at its key sites) each series' samples are sealed
    /// here, before they are proposed, so raft logs, the queue and every replica hold only
    /// ciphertext (`seal_series`).
    pub async fn ts_write(&self, batch: WriteBatch) -> Result<TsWriteOutcome> {
        let cfg = self.check_readable(&batch.ns).await?;
        let parts = if cfg.class == DataClass::Confidential {
            self.sealed_parts(&cfg, batch)?
        } else {
            self.plain_parts(batch)?
        };
        let attempts = parts.into_iter().map(|part| async move {
            if self.ts_queue.has_backlog(part.shard) {
                return Ok(Err(part));
            }
            match tokio::time::timeout(crate::ts_queue::DIRECT_TIMEOUT, self.propose(part.command())).await {
                Ok(Ok(r)) => Ok(Ok(r)),
                // Unreachable, no quorum, or no answer in time (it may or may not be applied:
                // queueing it is safe, a second apply changes nothing).
                Ok(Err(e)) if e.is_retryable() => Ok(Err(part)),
                Err(_) => Ok(Err(part)),
                Ok(Err(e)) => Err(e),
            }
        });
        let mut out = TsWriteOutcome::default();
        let mut to_queue = Vec::new();
        for r in futures::future::join_all(attempts).await {
            match r? {
                Ok(resp) => add_response(&mut out, resp)?,
                Err(part) => {
                    out.queued += part.samples;
                    to_queue.push(part);
                }
            }
        }
        self.ts_enqueue(to_queue).await?;
        Ok(out)
    }

    /// A series' samples (sorted, one per timestamp) sealed under key `version` of `cfg`'s
    /// namespace, in blocks of at most `SEALED_PIECE_SAMPLES`.
    fn seal_samples(
        &self,
        cfg: &NamespaceConfig,
        version: u32,
        labels: &Labels,
        samples: &[codec::Sample],
    ) -> Result<Vec<SealedSeries>> {
        let dk = self.data_key(cfg, version)?;
        let mut out = Vec::new();
        for piece in samples.chunks(SEALED_PIECE_SAMPLES) {
            let (Some(first), Some(last)) = (piece.first(), piece.last()) else { continue };
            let mut ss = SealedSeries {
                labels: labels.clone(),
                min_t: first.0,
                max_t: last.0,
                count: piece.len() as u32,
                key_version: version,
                sealed: Vec::new(),
            };
            ss.sealed = envelope::seal_series(&dk, version, &ss.aad(&cfg.name), &codec::encode(piece))
                .map_err(|e| Error::Internal(format!("sealing samples: {e}")))?;
            out.push(ss);
        }
        Ok(out)
    }

    /// Re-routes a queued part whose shard is gone (a split or merge changed the map): its
    /// series go where they route now, each part applied or an error. A sealed part is split
    /// as it is (labels are in clear and not bound to a shard): nothing is unsealed.
    pub(crate) async fn ts_reroute(&self, part: &TsPart) -> Result<TsWriteOutcome> {
        let parts = if part.sealed {
            let b =
                SealedBatch::decode(&part.batch).map_err(|e| Error::Storage(format!("queued batch: {e}")))?;
            let mut out = Vec::new();
            for (shard, series) in self.by_shard(&b.ns, b.series, |s| &s.labels)? {
                out.extend(pack_sealed(&b.ns, shard, series));
            }
            out
        } else {
            let b =
                WriteBatch::decode(&part.batch).map_err(|e| Error::Storage(format!("queued batch: {e}")))?;
            self.plain_parts(b)?
        };
        let results = futures::future::join_all(parts.iter().map(|p| self.propose(p.command()))).await;
        let mut out = TsWriteOutcome::default();
        for r in results {
            add_response(&mut out, r?)?;
        }
        Ok(out)
    }

    /// Items grouped by the shard their series routes to in `ns`.
    fn by_shard<T>(
        &self,
        ns: &str,
        items: Vec<T>,
        labels: impl Fn(&T) -> &Labels,
    ) -> Result<BTreeMap<GroupId, Vec<T>>> {
        let map = self.require_map()?;
        let mut out: BTreeMap<GroupId, Vec<T>> = BTreeMap::new();
        for it in items {
            let shard = map
                .shard_for(ns, &series_text(labels(&it)))
                .ok_or_else(|| Error::Internal(format!("no shard for a series of {ns:?}")))?;
            out.entry(shard.id).or_default().push(it);
        }
        Ok(out)
    }

    /// A plain batch split per shard and by size.
    fn plain_parts(&self, batch: WriteBatch) -> Result<Vec<TsPart>> {
        let mut out = Vec::new();
        for (shard, series) in self.by_shard(&batch.ns, batch.series, |s| &s.labels)? {
            for (chunk, samples) in split_by_size(&batch.ns, series) {
                out.push(TsPart { shard, batch: chunk, samples, sealed: false });
            }
        }
        Ok(out)
    }

    /// A confidential namespace's batch: each series' samples chunk-encoded and sealed under
    /// the namespace's newest data key, then split per shard and by size.
    fn sealed_parts(&self, cfg: &NamespaceConfig, batch: WriteBatch) -> Result<Vec<TsPart>> {
        let ns = &cfg.name;
        let version = cfg
            .keys
            .iter()
            .map(|k| k.version)
            .max()
            .ok_or_else(|| Error::Storage(format!("confidential namespace {ns:?} has no data key")))?;
        let mut sealed = Vec::with_capacity(batch.series.len());
        for s in batch.series {
            let samples = codec::merge_last_wins(vec![s.samples], i64::MIN, i64::MAX);
            sealed.extend(self.seal_samples(cfg, version, &s.labels, &samples)?);
        }
        let mut out = Vec::new();
        for (shard, series) in self.by_shard(ns, sealed, |s| &s.labels)? {
            out.extend(pack_sealed(ns, shard, series));
        }
        Ok(out)
    }

    /// Series of `ns` matching `matchers` with their samples in `[mint, maxt]`, from every
    /// shard, sorted by labels.
    pub async fn ts_select(
        &self,
        ns: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        consistency: Consistency,
    ) -> Result<Vec<Series>> {
        let cfg = self.check_readable(ns).await?;
        let mut req = TsSelectRequest {
            ns: ns.into(),
            matchers: matchers.iter().map(WireMatcher::from).collect(),
            mint,
            maxt,
            consistency,
            mode: SelectMode::Samples,
        };
        if cfg.class == DataClass::Confidential {
            req.mode = SelectMode::Sealed;
            let sealed = self.ts_select_blocks(&req).await?;
            let parts = self.open_sealed(&cfg, sealed, mint, maxt).await?;
            return Ok(merge_shards(parts));
        }
        let node = self;
        let parts = self
            .ts_fan_out(ns, |shard| {
                let req = req.clone();
                async move {
                    match node.group(shard) {
                        // A local replica's series are used as they are (no wire encoding).
                        Some(g) => node.local_ts_series_data(&g, &req).await,
                        None => {
                            let wire: Vec<WireSeries> =
                                node.remote(shard, &req, "ts_select", |mut c, f| async move {
                                    c.ts_select(f).await
                                })
                                .await?;
                            wire.into_iter()
                                .map(|s| {
                                    let samples = codec::decode(&s.chunk)
                                        .map_err(|e| Error::Internal(format!("series from a peer: {e}")))?;
                                    Ok(Series { labels: std::sync::Arc::new(s.labels), samples })
                                })
                                .collect::<Result<Vec<_>>>()
                        }
                    }
                }
            })
            .await?;
        Ok(merge_shards(parts))
    }

    /// A confidential namespace's sealed blocks matching `req` (mode `Sealed` or `Headers`),
    /// from every shard, per shard.
    async fn ts_select_blocks(&self, req: &TsSelectRequest) -> Result<Vec<Vec<WireSealed>>> {
        self.ts_fan_out(&req.ns, |shard| {
            let req = req.clone();
            async move {
                match self.group(shard) {
                    Some(g) => self.local_ts_select_sealed(&g, &req).await,
                    None => {
                        self.remote(shard, &req, "ts_select", |mut c, f| async move { c.ts_select(f).await })
                            .await
                    }
                }
            }
        })
        .await
    }

    /// How many sealed blocks of `ns` (every series, every shard) use key version `version`:
    /// a version cannot be retired while any does.
    pub(crate) async fn count_sealed_blocks(&self, ns: &str, version: u32) -> Result<u64> {
        let all = Matcher::new("__name__", MatchOp::Re, ".+").map_err(|e| Error::Internal(e.to_string()))?;
        let req = TsSelectRequest {
            ns: ns.into(),
            matchers: vec![WireMatcher::from(&all)],
            mint: i64::MIN,
            maxt: i64::MAX,
            consistency: Consistency::Linearizable,
            mode: SelectMode::Headers,
        };
        let parts = self.ts_select_blocks(&req).await?;
        Ok(parts.iter().flatten().flat_map(|s| &s.blocks).filter(|b| b.key_version == version).count() as u64)
    }

    /// Opens sealed blocks (at a key site): each block is decrypted, checked against its clear
    /// fields (the AAD binds them: a replica that moved a block to another series, time or
    /// namespace, or changed a byte, makes it fail), decoded and cut to `[mint, maxt]`; a series'
    /// blocks merge oldest batch first, a later write of a timestamp winning.
    async fn open_sealed(
        &self,
        cfg: &NamespaceConfig,
        parts: Vec<Vec<WireSealed>>,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Vec<Series>>> {
        let versions: std::collections::BTreeSet<u32> =
            parts.iter().flatten().flat_map(|s| s.blocks.iter().map(|b| b.key_version)).collect();
        let mut keys = BTreeMap::new();
        for v in versions {
            // A version newer than this replica's config: a rotation it has not seen yet.
            let dk = if cfg.keys.iter().any(|k| k.version == v) {
                self.data_key(cfg, v)?
            } else {
                self.data_key(&self.namespace(&cfg.name, Consistency::Linearizable).await?, v)?
            };
            keys.insert(v, dk);
        }
        let ns = cfg.name.clone();
        // Decryption and decoding are CPU work: off the async workers.
        tokio::task::spawn_blocking(move || {
            parts
                .into_iter()
                .map(|part| {
                    let mut out = Vec::with_capacity(part.len());
                    for s in part {
                        let samples = open_series_blocks(&ns, &keys, &s, mint, maxt)?;
                        if !samples.is_empty() {
                            out.push(Series { labels: Arc::new(s.labels), samples });
                        }
                    }
                    Ok(out)
                })
                .collect::<Result<Vec<_>>>()
        })
        .await
        .map_err(|e| Error::Internal(format!("opening series: {e}")))?
    }

    /// Label sets of the series matching any selector (all if none) with samples in the range.
    pub async fn ts_series(
        &self,
        ns: &str,
        selectors: &[Vec<Matcher>],
        mint: i64,
        maxt: i64,
        consistency: Consistency,
    ) -> Result<Vec<Labels>> {
        self.check_readable(ns).await?;
        let req = TsSeriesRequest {
            ns: ns.into(),
            selectors: selectors.iter().map(|s| s.iter().map(WireMatcher::from).collect()).collect(),
            mint,
            maxt,
            consistency,
        };
        let parts = self
            .ts_fan_out(ns, |shard| {
                let req = req.clone();
                let node = self;
                async move {
                    match node.group(shard) {
                        Some(g) => node.local_ts_series(&g, &req).await,
                        None => {
                            node.remote(
                                shard,
                                &req,
                                "ts_series",
                                |mut c, f| async move { c.ts_series(f).await },
                            )
                            .await
                        }
                    }
                }
            })
            .await?;
        let all: std::collections::BTreeSet<Labels> = parts.into_iter().flatten().collect();
        Ok(all.into_iter().collect())
    }

    /// Runs `f` for every shard of `ns` at once, retrying all within the request's time if the
    /// map was stale (a shard split, or a new shard not started everywhere yet).
    async fn ts_fan_out<T, F, Fut>(&self, ns: &str, f: F) -> Result<Vec<T>>
    where
        F: Fn(GroupId) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + self.options().request_timeout;
        'again: loop {
            let map = self.require_map()?;
            let shards: Vec<GroupId> = map.shards_for_ns(ns).into_iter().map(|s| s.id).collect();
            let mut out = Vec::with_capacity(shards.len());
            for r in futures::future::join_all(shards.into_iter().map(&f)).await {
                match r {
                    Ok(v) => out.push(v),
                    Err(e) if e.is_retryable() && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue 'again;
                    }
                    Err(e) => return Err(e),
                }
            }
            return Ok(out);
        }
    }

    /// A selection from a local replica, for a peer: chunk-encoded (XOR only: cheap to make,
    /// and the peer decodes it once).
    pub(crate) async fn local_ts_select(&self, g: &Group, r: &TsSelectRequest) -> Result<Vec<WireSeries>> {
        let series = self.local_ts_series_data(g, r).await?;
        Ok(series
            .into_iter()
            .map(|s| WireSeries { labels: (*s.labels).clone(), chunk: codec::encode_xor_only(&s.samples) })
            .collect())
    }

    /// Sealed blocks of a confidential namespace from a local replica, as they are stored (the
    /// replica needs no key); `Headers` leaves the ciphertext out (key retirement counts).
    pub(crate) async fn local_ts_select_sealed(
        &self,
        g: &Group,
        r: &TsSelectRequest,
    ) -> Result<Vec<WireSealed>> {
        self.barrier(g, r.consistency).await?;
        let matchers = r.matchers.iter().map(WireMatcher::to_matcher).collect::<Result<Vec<_>>>()?;
        let engine = g.kv.ts().clone();
        let (ns, mint, maxt, headers) = (r.ns.clone(), r.mint, r.maxt, r.mode == SelectMode::Headers);
        let found = tokio::task::spawn_blocking(move || engine.select_sealed(&ns, &matchers, mint, maxt))
            .await
            .map_err(|e| Error::Internal(format!("select: {e}")))?
            .map_err(|e| Error::invalid("query", e.to_string()))?;
        Ok(found
            .into_iter()
            .map(|s| WireSealed {
                labels: (*s.labels).clone(),
                blocks: s
                    .blocks
                    .into_iter()
                    .map(|mut b| {
                        if headers {
                            b.sealed = Vec::new();
                        }
                        b
                    })
                    .collect(),
            })
            .collect())
    }

    async fn local_ts_series_data(&self, g: &Group, r: &TsSelectRequest) -> Result<Vec<Series>> {
        self.barrier(g, r.consistency).await?;
        let matchers = r.matchers.iter().map(WireMatcher::to_matcher).collect::<Result<Vec<_>>>()?;
        let engine = g.kv.ts().clone();
        let (ns, mint, maxt) = (r.ns.clone(), r.mint, r.maxt);
        tokio::task::spawn_blocking(move || engine.select(&ns, &matchers, mint, maxt))
            .await
            .map_err(|e| Error::Internal(format!("select: {e}")))?
            .map_err(|e| Error::invalid("query", e.to_string()))
    }

    pub(crate) async fn local_ts_series(&self, g: &Group, r: &TsSeriesRequest) -> Result<Vec<Labels>> {
        self.barrier(g, r.consistency).await?;
        let selectors = r
            .selectors
            .iter()
            .map(|s| s.iter().map(WireMatcher::to_matcher).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?;
        let out =
            g.kv.ts()
                .series(&r.ns, &selectors, r.mint, r.maxt)
                .map_err(|e| Error::invalid("match[]", e.to_string()))?;
        Ok(out.into_iter().map(|l| (*l).clone()).collect())
    }
}

/// Series from every shard, sorted by labels. A series is normally in one shard: its samples
/// move as they are. Only a series found in several (split across shards by a shard split) is
/// merged, sorted and deduplicated.
fn merge_shards(parts: Vec<Vec<Series>>) -> Vec<Series> {
    let mut merged: BTreeMap<Arc<Labels>, (Vec<codec::Sample>, bool)> = BTreeMap::new();
    for part in parts {
        for s in part {
            match merged.entry(s.labels) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert((s.samples, false));
                }
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    let (samples, several) = e.get_mut();
                    samples.extend(s.samples);
                    *several = true;
                }
            }
        }
    }
    merged
        .into_iter()
        .map(|(labels, (mut samples, several))| {
            if several {
                samples.sort_by_key(|s| s.0);
                samples.dedup_by_key(|s| s.0);
            }
            Series { labels, samples }
        })
        .collect()
}

/// One sealed series' samples in `[mint, maxt]`, its blocks opened with `keys` (by version).
fn open_series_blocks(
    ns: &str,
    keys: &BTreeMap<u32, envelope::DataKey>,
    s: &WireSealed,
    mint: i64,
    maxt: i64,
) -> Result<Vec<codec::Sample>> {
    let mut parts = Vec::with_capacity(s.blocks.len());
    for b in &s.blocks {
        let what = || format!("{ns}/{}: sealed block of batch {}", series_text(&s.labels), b.index);
        let dk = keys.get(&b.key_version).ok_or_else(|| Error::Internal(format!("{}: no key", what())))?;
        let clear = SealedSeries {
            labels: s.labels.clone(),
            min_t: b.min_t,
            max_t: b.max_t,
            count: b.count,
            key_version: b.key_version,
            sealed: Vec::new(),
        };
        let plain = envelope::open_series(dk, &clear.aad(ns), &b.sealed)
            .map_err(|e| Error::Storage(format!("{}: {e}", what())))?;
        let samples = codec::decode(&plain).map_err(|e| Error::Storage(format!("{}: {e}", what())))?;
        // Authenticated, so only a sealer's bug could make these disagree; refuse rather than
        // serve samples outside the bounds the block is indexed (and expired) by.
        let inside = samples.iter().all(|x| x.0 >= b.min_t && x.0 <= b.max_t);
        if samples.len() != b.count as usize || !inside {
            return Err(Error::Storage(format!("{}: samples disagree with its clear fields", what())));
        }
        parts.push(samples);
    }
    Ok(codec::merge_last_wins(parts, mint, maxt))
}

fn add_response(out: &mut TsWriteOutcome, r: Response) -> Result<()> {
    match r {
        Response::TsWritten { written, too_old } => {
            out.written += written;
            out.too_old += too_old;
            Ok(())
        }
        Response::Rejected(why) => Err(Error::invalid("batch", why)),
        other => Err(Error::Internal(format!("unexpected response {other:?}"))),
    }
}

/// Default retention of raw samples (Prometheus's default) and of rollups.
pub const DEFAULT_RAW_RETENTION_MS: u64 = 15 * 86_400_000;
pub const DEFAULT_ROLLUP_RETENTION_MS: u64 = 400 * 86_400_000;

impl Node {
    /// A namespace's time-series retention `(raw_ms, rollup_ms)` (the defaults if not set).
    pub fn ts_retention(&self, ns: &str) -> Result<(u64, u64)> {
        let meta = self.meta()?;
        Ok(meta.kv.ts_retention(ns)?.unwrap_or((DEFAULT_RAW_RETENTION_MS, DEFAULT_ROLLUP_RETENTION_MS)))
    }

    /// `ts_retention` for a client: after a read barrier on the metadata group by default, so
    /// a setting acknowledged through any node is what every node answers (the local replica
    /// may not have applied it yet).
    pub async fn ts_retention_read(&self, ns: &str, consistency: Consistency) -> Result<(u64, u64)> {
        let meta = self.meta()?;
        self.barrier(&meta, consistency).await?;
        self.ts_retention(ns)
    }

    /// (series, head samples) over the data-group replicas this node hosts.
    pub fn ts_local_stats(&self) -> (u64, u64) {
        self.data_groups().iter().fold((0, 0), |(s, h), g| {
            let (gs, gh) = g.kv.ts().stats();
            (s + gs as u64, h + gh as u64)
        })
    }

    /// (bytes, samples) of the chunks cut on this node's replicas since they opened (a
    /// replica dropped after a move takes its share with it).
    pub fn ts_cut_totals(&self) -> (u64, u64) {
        self.data_groups().iter().fold((0, 0), |(b, s), g| {
            let (gb, gs) = g.kv.ts().cut_totals();
            (b + gb, s + gs)
        })
    }

    /// Sets a namespace's retention (through the metadata group).
    pub async fn set_ts_retention(&self, ns: &str, raw_ms: u64, rollup_ms: u64) -> Result<()> {
        match self.propose(Command::SetTsRetention { ns: ns.into(), raw_ms, rollup_ms }).await? {
            Response::Namespace { .. } => Ok(()),
            Response::Rejected(why) => Err(Error::invalid("ns", why)),
            other => Err(Error::Internal(format!("unexpected response {other:?}"))),
        }
    }

    pub(crate) fn start_ts_maintenance(self: &Arc<Self>) {
        let n = self.clone();
        tokio::spawn(async move {
            let mut shutdown = n.shutdown.subscribe();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(n.opts.ts_maintenance) => {}
                    _ = shutdown.changed() => return,
                }
                if let Err(e) = n.ts_maintain().await {
                    tracing::warn!(error = %e, "time-series rollups and retention");
                }
            }
        });
    }

    /// Cuts every head into chunks, snapshots every data group this node hosts (so the raft log
    /// behind the snapshot can be purged) and flushes sled: what an operator runs before
    /// measuring storage, or before a planned shutdown that wants a short replay.
    pub async fn ts_flush(&self) -> Result<TsStorage> {
        let mut out = TsStorage::default();
        for g in self.data_groups() {
            let engine = g.kv.ts().clone();
            tokio::task::spawn_blocking(move || engine.flush())
                .await
                .map_err(|e| Error::Internal(format!("flush: {e}")))?
                .map_err(|e| Error::Storage(format!("flush: {e}")))?;
            // Snapshot, then purge the raft log up to it: every batch is in the state machine
            // (and in the snapshot), so the log's copies are dead weight on disk. Waits for the
            // snapshot (it is built off the apply path); a group that does not snapshot within
            // the wait keeps its log and is reported in the logs, not failed.
            let applied = g.raft.metrics().borrow().last_applied.map(|l| l.index);
            let stopped = |e: openraft::error::Fatal<u64>| Error::Unavailable(format!("raft stopped: {e}"));
            g.raft.trigger().snapshot().await.map_err(stopped)?;
            let built = g
                .raft
                .wait(Some(std::time::Duration::from_secs(60)))
                .metrics(|m| m.snapshot.map(|s| s.index) >= applied, "snapshot for ts flush")
                .await;
            match built {
                Ok(m) => {
                    if let Some(s) = m.snapshot {
                        g.raft.trigger().purge_log(s.index).await.map_err(stopped)?;
                        // Purging waits for replication to followers that still need the
                        // entries: wait a little, then go on (the purge happens later).
                        let purged = g
                            .raft
                            .wait(Some(std::time::Duration::from_secs(10)))
                            .metrics(|m| m.purged.map(|p| p.index) >= Some(s.index), "purge for ts flush")
                            .await;
                        if let Err(e) = purged {
                            tracing::info!(group = g.id, error = %e, "ts flush: log not purged yet");
                        }
                    }
                }
                Err(e) => tracing::warn!(group = g.id, error = %e, "ts flush: snapshot not built in time"),
            }
            let (series, _) = g.kv.ts().stats();
            let (raw, rollups) = g.kv.ts().chunk_bytes().map_err(|e| Error::Storage(e.to_string()))?;
            out.series += series as u64;
            out.chunk_bytes += raw;
            out.rollup_bytes += rollups;
        }
        self.db.flush_async().await.map_err(|e| Error::Storage(format!("sled flush: {e}")))?;
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.compact_if_mostly_dead())
            .await
            .map_err(|e| Error::Internal(format!("flush: {e}")))??;
        Ok(out)
    }

    /// One pass over the data groups this node hosts: rollups, then retention per namespace.
    /// Each replica does its own (the results are the same everywhere: rollups come from final
    /// samples only, and queries never see past retention sooner on one replica than another
    /// by more than a pass).
    /// One maintenance pass over this node's replicas: rollups, retention, and (at key sites)
    /// compaction of sealed blocks. Runs every `ts_maintenance`; `POST /v1/ts/maintain` runs
    /// one now.
    pub async fn ts_maintain(&self) -> Result<SealedCompactions> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for g in self.data_groups() {
            let engine = g.kv.ts().clone();
            let mut plan = Vec::new();
            for ns in engine.namespaces() {
                let (raw, rollup) = self.ts_retention(&ns)?;
                plan.push((ns, now.saturating_sub(raw as i64), now.saturating_sub(rollup as i64)));
            }
            tokio::task::spawn_blocking(move || -> std::result::Result<(), edgefabric_tsdb::Error> {
                // A week of hours per series per pass: a node that was down catches up over
                // a few passes instead of stalling one.
                engine.rollup(24 * 7)?;
                for (ns, raw_before, rollup_before) in plan {
                    engine.expire(&ns, raw_before, rollup_before)?;
                }
                Ok(())
            })
            .await
            .map_err(|e| Error::Internal(format!("time-series maintenance: {e}")))?
            .map_err(|e| Error::Storage(format!("time-series maintenance: {e}")))?;
        }
        let c = self.compact_sealed(now).await?;
        if c.merges > 0 {
            tracing::info!(
                merges = c.merges,
                blocks = c.blocks,
                samples = c.samples,
                "sealed blocks compacted"
            );
        }
        Ok(c)
    }

    /// Compacts the sealed blocks of confidential series (`Engine::sealed_compactions`): each
    /// write batch leaves one block per series — a scrape's single sample costs a key, a nonce
    /// and a tag, ~90 bytes — so a key site merges each settled window's blocks of a series,
    /// and re-seals any block under an older key version than the newest (how a key rotation
    /// reaches series). Only a key site can open blocks; of a shard's replicas at key sites,
    /// the one with the lowest id does it (two doing it would be harmless, just wasted work:
    /// the second's compaction finds its blocks gone and changes nothing).
    pub(crate) async fn compact_sealed(&self, now_ms: i64) -> Result<SealedCompactions> {
        let mut out = SealedCompactions::default();
        let map = self.require_map()?;
        let site = |id: &u64| map.nodes.get(id).map(|n| n.site.clone()).unwrap_or_default();
        for g in self.data_groups() {
            let Some(shard) = map.shard(g.id) else { continue };
            for ns in g.kv.ts().namespaces() {
                // A namespace the metadata replica does not have yet: next pass.
                let Ok(cfg) = self.namespace_config(&ns).await else { continue };
                let compactor = shard.replicas.iter().filter(|id| cfg.key_sites.contains(&site(id))).min();
                if cfg.class != DataClass::Confidential || compactor != Some(&self.id()) {
                    continue;
                }
                let newest = cfg.keys.iter().map(|k| k.version).max().unwrap_or(0);
                let policy = edgefabric_tsdb::engine::CompactionPolicy {
                    window_ms: SEALED_WINDOW_MS,
                    settled_before: now_ms.saturating_sub(SEALED_SETTLE_MS),
                    min_blocks: 4,
                    reseal_below: newest,
                    max_samples: SEALED_PIECE_SAMPLES as u64,
                    limit: 256,
                };
                let engine = g.kv.ts().clone();
                let ns2 = ns.clone();
                let plans = tokio::task::spawn_blocking(move || engine.sealed_compactions(&ns2, &policy))
                    .await
                    .map_err(|e| Error::Internal(format!("sealed compaction: {e}")))?
                    .map_err(|e| Error::Storage(format!("sealed compaction: {e}")))?;
                for plan in plans {
                    let replaces = plan.blocks.iter().map(SealedBlock::id).collect();
                    let blocks = plan.blocks.len() as u64;
                    let wire = WireSealed { labels: (*plan.labels).clone(), blocks: plan.blocks };
                    let opened = self.open_sealed(&cfg, vec![vec![wire]], i64::MIN, i64::MAX).await?;
                    let Some(series) = opened.into_iter().flatten().next() else { continue };
                    let mut merged = self.seal_samples(&cfg, newest, &series.labels, &series.samples)?;
                    let Some(merged) = merged.pop().filter(|_| merged.is_empty()) else {
                        // More than one block's worth: the plan's sample bound prevents it.
                        continue;
                    };
                    let samples = u64::from(merged.count);
                    let c = SealedCompaction { ns: ns.clone(), replaces, merged };
                    let cmd = Command::TsCompactSealed { shard: g.id, batch: c.encode() };
                    match self.propose(cmd).await? {
                        Response::TsWritten { written, .. } if written > 0 => {
                            out.merges += 1;
                            out.blocks += blocks;
                            out.samples += samples;
                        }
                        Response::TsWritten { .. } => {}
                        other => return Err(Error::Internal(format!("sealed compaction: {other:?}"))),
                    }
                }
            }
        }
        Ok(out)
    }
}

/// What `compact_sealed` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedCompactions {
    /// Compactions applied, the blocks they replaced and the samples they hold.
    pub merges: u64,
    pub blocks: u64,
    pub samples: u64,
}

/// Sealed blocks are merged per series per window of this length (Prometheus's block span)...
const SEALED_WINDOW_MS: i64 = 2 * 3_600_000;
/// ...once the window ended this long ago: late writes (a store-and-forward queue draining)
/// mostly land before, so a window is rewritten about once.
const SEALED_SETTLE_MS: i64 = 15 * 60_000;

/// The most samples one sealed block holds: with at most 18 bytes a sample encoded, a block
/// stays under half a raft entry.
const SEALED_PIECE_SAMPLES: usize = MAX_TS_BATCH_BYTES / 2 / 18;

/// A shard's sealed series packed into batches of at most `MAX_TS_BATCH_BYTES`.
fn pack_sealed(ns: &str, shard: GroupId, series: Vec<SealedSeries>) -> Vec<TsPart> {
    let budget = MAX_TS_BATCH_BYTES - ns.len() - 64;
    let mut out = Vec::new();
    let mut cur: Vec<SealedSeries> = Vec::new();
    let mut cur_bytes = 0usize;
    let flush = |cur: &mut Vec<SealedSeries>, out: &mut Vec<TsPart>| {
        if !cur.is_empty() {
            let b = SealedBatch { ns: ns.to_string(), series: std::mem::take(cur) };
            let samples = b.series.iter().map(|s| u64::from(s.count)).sum();
            out.push(TsPart { shard, batch: b.encode(), samples, sealed: true });
        }
    };
    for s in series {
        // The clear fields: labels as text plus a few varints.
        let size = s.sealed.len() + s.labels.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>() + 48;
        // A batch holds a series once (pieces of a long one are consecutive).
        let again = cur.last().is_some_and(|l| l.labels == s.labels);
        if cur_bytes + size > budget || again {
            flush(&mut cur, &mut out);
            cur_bytes = 0;
        }
        cur.push(s);
        cur_bytes += size;
    }
    flush(&mut cur, &mut out);
    out
}

/// Encodes a shard's series as batches of at most `MAX_TS_BATCH_BYTES` (a series that alone
/// exceeds it is split by time), each with its sample count.
fn split_by_size(ns: &str, series: Vec<SeriesSamples>) -> Vec<(Vec<u8>, u64)> {
    let budget = MAX_TS_BATCH_BYTES / 2;
    let mut out = Vec::new();
    let mut cur: Vec<SeriesSamples> = Vec::new();
    let mut cur_bytes = 0usize;
    let flush = |cur: &mut Vec<SeriesSamples>, out: &mut Vec<(Vec<u8>, u64)>| {
        if !cur.is_empty() {
            let b = WriteBatch { ns: ns.to_string(), series: std::mem::take(cur) };
            out.push((b.encode(), b.samples() as u64));
        }
    };
    for s in series {
        // ~2 bytes a sample compressed, 18 at worst; labels as text.
        let labels: usize = s.labels.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        for piece in s.samples.chunks(budget / 18) {
            let size = labels + piece.len() * 18;
            if cur_bytes + size > budget {
                flush(&mut cur, &mut out);
                cur_bytes = 0;
            }
            cur.push(SeriesSamples { labels: s.labels.clone(), samples: piece.to_vec() });
            cur_bytes += size;
        }
    }
    flush(&mut cur, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_batches_are_split_below_the_entry_limit() {
        let labels = vec![("__name__".to_string(), "m".to_string())];
        let samples: Vec<codec::Sample> = (0..1_000_000).map(|i| (i, i as f64 * 0.37)).collect();
        let parts = split_by_size("ns", vec![SeriesSamples { labels, samples }]);
        assert!(parts.len() > 1);
        let mut n = 0;
        for (p, samples) in &parts {
            assert!(p.len() <= MAX_TS_BATCH_BYTES);
            let d = WriteBatch::decode(p).unwrap().samples();
            assert_eq!(d as u64, *samples);
            n += d;
        }
        assert_eq!(n, 1_000_000);
    }

    #[test]
    fn sealed_batches_are_split_below_the_entry_limit() {
        let series: Vec<SealedSeries> = (0..7)
            .map(|i| SealedSeries {
                labels: vec![("__name__".to_string(), format!("m{i}"))],
                min_t: i,
                max_t: i + 10,
                count: 1000 + i as u32,
                key_version: 1,
                sealed: vec![i as u8; 3 << 20],
            })
            .collect();
        let parts = pack_sealed("ns", 9, series.clone());
        assert!(parts.len() >= 3, "{} parts", parts.len());
        let mut back = Vec::new();
        for p in &parts {
            assert!(p.batch.len() <= MAX_TS_BATCH_BYTES && p.sealed && p.shard == 9);
            let b = SealedBatch::decode(&p.batch).unwrap();
            assert_eq!(p.samples, b.series.iter().map(|s| u64::from(s.count)).sum::<u64>());
            assert!(matches!(p.command(), Command::TsWriteSealed { shard: 9, .. }));
            back.extend(b.series);
        }
        assert_eq!(back, series);
        // Pieces of one long series go to different batches (a batch holds a series once).
        let piece = |t: i64| SealedSeries { min_t: t, max_t: t, sealed: vec![1; 10], ..series[0].clone() };
        let parts = pack_sealed("ns", 9, vec![piece(1), piece(2), piece(3)]);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| SealedBatch::decode(&p.batch).is_ok()));
    }

    #[test]
    fn series_text_is_canonical() {
        let l = vec![
            ("__name__".to_string(), "cpu".to_string()),
            ("a".to_string(), "x\"y".to_string()),
            ("b".to_string(), "2".to_string()),
        ];
        assert_eq!(series_text(&l), r#"cpu{a="x\"y",b="2"}"#);
    }
}
