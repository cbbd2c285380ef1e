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

use edgefabric_tsdb::batch::{Labels, SeriesSamples, WriteBatch};
use edgefabric_tsdb::codec;
use edgefabric_tsdb::engine::Series;
use edgefabric_tsdb::matcher::{MatchOp, Matcher};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::log::GroupId;
use crate::node::{Consistency, Group, Node};
use crate::types::{Command, DataClass, Response, MAX_TS_BATCH_BYTES};
use crate::{Error, Result};

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
    /// Checks that time series of `ns` may be written or read at this node.
    async fn ts_namespace(&self, ns: &str) -> Result<()> {
        let cfg = self.check_readable(ns).await?;
        if cfg.class == DataClass::Confidential {
            // Sealing samples would leave other sites nothing to compress or query; until
            // confidential series have their own design, refuse rather than store plaintext.
            return Err(Error::invalid(
                "ns",
                format!("namespace {ns:?} is confidential; time series are not supported in confidential namespaces yet"),
            ));
        }
        Ok(())
    }

    /// Writes a batch: split per shard, one raft entry per part, all parts in parallel.
    /// Returns once every part is committed and applied on its leader, or durably queued on
    /// this node because its shard could not be reached (store-and-forward, `ts_queue.rs`).
    /// On an error some parts may be stored and others not; writing the same batch again is
    /// harmless (a sample's later write replaces it with the same value).
    pub async fn ts_write(&self, batch: WriteBatch) -> Result<TsWriteOutcome> {
        self.ts_namespace(&batch.ns).await?;
        let parts = self.ts_parts(batch)?;
        let attempts = parts.into_iter().map(|(shard, bytes, samples)| async move {
            if self.ts_queue.has_backlog(shard) {
                return Ok(Err((shard, bytes, samples)));
            }
            let cmd = Command::TsWrite { shard, batch: bytes.clone() };
            match tokio::time::timeout(crate::ts_queue::DIRECT_TIMEOUT, self.propose(cmd)).await {
                Ok(Ok(r)) => Ok(Ok(r)),
                // Unreachable, no quorum, or no answer in time (it may or may not be applied:
                // queueing it is safe, a second apply changes nothing).
                Ok(Err(e)) if e.is_retryable() => Ok(Err((shard, bytes, samples))),
                Err(_) => Ok(Err((shard, bytes, samples))),
                Ok(Err(e)) => Err(e),
            }
        });
        let mut out = TsWriteOutcome::default();
        let mut to_queue = Vec::new();
        for r in futures::future::join_all(attempts).await {
            match r? {
                Ok(resp) => add_response(&mut out, resp)?,
                Err(part) => {
                    out.queued += part.2;
                    to_queue.push(part);
                }
            }
        }
        self.ts_enqueue(to_queue).await?;
        Ok(out)
    }

    /// `ts_write` without the queue: every part must be applied (the forwarder re-routing a
    /// queued part whose shard is gone).
    pub(crate) async fn ts_write_direct(&self, batch: WriteBatch) -> Result<TsWriteOutcome> {
        let parts = self.ts_parts(batch)?;
        let results = futures::future::join_all(
            parts.into_iter().map(|(shard, batch, _)| self.propose(Command::TsWrite { shard, batch })),
        )
        .await;
        let mut out = TsWriteOutcome::default();
        for r in results {
            add_response(&mut out, r?)?;
        }
        Ok(out)
    }

    /// A batch split per shard and by size: (shard, encoded part, samples).
    fn ts_parts(&self, batch: WriteBatch) -> Result<Vec<(GroupId, Vec<u8>, u64)>> {
        let map = self.require_map()?;
        let mut parts: BTreeMap<GroupId, Vec<SeriesSamples>> = BTreeMap::new();
        for s in batch.series {
            let shard = map
                .shard_for(&batch.ns, &series_text(&s.labels))
                .ok_or_else(|| Error::Internal("no shard".into()))?;
            parts.entry(shard.id).or_default().push(s);
        }
        let mut out = Vec::new();
        for (shard, series) in parts {
            for (chunk, samples) in split_by_size(&batch.ns, series) {
                out.push((shard, chunk, samples));
            }
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
        self.ts_namespace(ns).await?;
        let req = TsSelectRequest {
            ns: ns.into(),
            matchers: matchers.iter().map(WireMatcher::from).collect(),
            mint,
            maxt,
            consistency,
        };
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
        // A series is normally in one shard: its samples move as they are. Only a series found
        // in several (split across shards by a shard split) is merged, sorted and deduplicated.
        let mut merged: BTreeMap<std::sync::Arc<Labels>, (Vec<codec::Sample>, bool)> = BTreeMap::new();
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
        Ok(merged
            .into_iter()
            .map(|(labels, (mut samples, several))| {
                if several {
                    samples.sort_by_key(|s| s.0);
                    samples.dedup_by_key(|s| s.0);
                }
                Series { labels, samples }
            })
            .collect())
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
        self.ts_namespace(ns).await?;
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
    pub async fn ts_maintain(&self) -> Result<()> {
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
        Ok(())
    }
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
    fn series_text_is_canonical() {
        let l = vec![
            ("__name__".to_string(), "cpu".to_string()),
            ("a".to_string(), "x\"y".to_string()),
            ("b".to_string(), "2".to_string()),
        ];
        assert_eq!(series_text(&l), r#"cpu{a="x\"y",b="2"}"#);
    }
}
