//! Store-and-forward for time series: when a write cannot reach its shard (the site is cut
//! off, the shard has no quorum), the accepting node keeps it in a durable local queue and
//! forwards it when the shard is reachable again.
//!
//! Contract: a write acknowledged as queued is `fdatasync`ed in the node's write-ahead file
//! (the raft log's, under a group id no raft group uses) before the acknowledgement, so it
//! survives a crash or restart of the node during the outage (a Prometheus agent's in-memory
//! backlog would not). The forwarder proposes queued parts in order and removes them once
//! applied. A part forwarded twice (a crash between its apply and the purge) is harmless: a
//! sample written again at its timestamp replaces itself with the same value, so no sample is
//! ever stored twice.
//!
//! Ordering: while a shard has queued parts, new writes for that shard are queued behind them
//! instead of overtaking them (and instead of each waiting out the request timeout).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};

use crate::error::{Error, Result};
use crate::log::{GroupId, LogEngine};
use crate::node::Node;
use crate::ts::TsPart;
use crate::types::Response;

/// The queue's id in the write-ahead file (the audit queue is `u64::MAX - 2`).
pub const TS_QUEUE: GroupId = u64::MAX - 3;

/// The most queued parts forwarded in one proposal.
const MAX_MERGED_PARTS: usize = 512;

/// How long a write tries its shard before it is queued instead.
pub const DIRECT_TIMEOUT: Duration = Duration::from_secs(3);

/// One queued part and when it was queued.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Queued {
    part: TsPart,
    queued_ms: u64,
}

/// A part as queued before sealed parts existed (always plain). A node upgraded with parts in
/// its queue still forwards them: such an entry never decodes as `Queued` (where `Queued` has
/// its `sealed` flag, it has the first byte of `queued_ms`, a timestamp far above 250 whose
/// varint starts with 0xfd, not a bool).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct QueuedV1 {
    shard: GroupId,
    batch: Vec<u8>,
    samples: u64,
    queued_ms: u64,
}

fn decode_queued(raw: &[u8]) -> Result<Queued> {
    match crate::codec::decode::<Queued>(raw) {
        Ok(q) => Ok(q),
        Err(e) => match crate::codec::decode::<QueuedV1>(raw) {
            Ok(v1) => Ok(Queued {
                part: TsPart { shard: v1.shard, batch: v1.batch, samples: v1.samples, sealed: false },
                queued_ms: v1.queued_ms,
            }),
            Err(_) => Err(e),
        },
    }
}

/// The longest prefix of `parts` (queue index, part; one shard's, in queue order) that can
/// go in one proposal, merged, with the indices it used; None if fewer than two can. A merge
/// keeps one kind (plain or sealed) and one namespace, stays within `max_bytes`, and never
/// names a sealed series twice (the shard refuses such a sealed batch, as every replica must).
/// Series stay in order: of two samples with one timestamp the later part's wins, as it would
/// have applied after (a sealed block of a later position reads after one of an earlier
/// position of the same entry).
fn merge_parts(parts: Vec<(u64, TsPart)>, max_bytes: usize) -> Option<(TsPart, Vec<u64>)> {
    use edgefabric_tsdb::batch::{SealedBatch, WriteBatch};
    let mut merged: Option<(Merging, u64, GroupId)> = None;
    let mut used = Vec::new();
    let mut bytes = 0usize;
    for (i, p) in parts {
        if bytes + p.batch.len() > max_bytes {
            break;
        }
        let next = match p.sealed {
            false => WriteBatch::decode(&p.batch).map(Merging::Plain),
            true => SealedBatch::decode(&p.batch).map(|b| {
                let seen = b.series.iter().map(|s| s.labels.clone()).collect();
                Merging::Sealed(b, seen)
            }),
        };
        let Ok(next) = next else { break };
        match &mut merged {
            None => merged = Some((next, p.samples, p.shard)),
            Some((m, samples, shard)) => {
                if *shard != p.shard || !m.absorb(next) {
                    break;
                }
                *samples += p.samples;
            }
        }
        bytes += p.batch.len();
        used.push(i);
    }
    match merged {
        Some((m, samples, shard)) if used.len() > 1 => {
            let (batch, sealed) = match m {
                Merging::Plain(b) => (b.encode(), false),
                Merging::Sealed(b, _) => (b.encode(), true),
            };
            Some((TsPart { shard, batch, samples, sealed }, used))
        }
        _ => None,
    }
}

/// Queued parts being merged into one proposal: one kind and one namespace throughout.
enum Merging {
    Plain(edgefabric_tsdb::batch::WriteBatch),
    /// With the series it names (a sealed batch may not name one twice).
    Sealed(edgefabric_tsdb::batch::SealedBatch, std::collections::HashSet<edgefabric_tsdb::batch::Labels>),
}

impl Merging {
    /// Appends `next`'s series if it is of the same kind and namespace; false if not.
    fn absorb(&mut self, next: Merging) -> bool {
        match (self, next) {
            (Merging::Plain(m), Merging::Plain(b)) if m.ns == b.ns => m.series.extend(b.series),
            (Merging::Sealed(m, seen), Merging::Sealed(b, _))
                if m.ns == b.ns && !b.series.iter().any(|s| seen.contains(&s.labels)) =>
            {
                seen.extend(b.series.iter().map(|s| s.labels.clone()));
                m.series.extend(b.series)
            }
            _ => return false,
        }
        true
    }
}

#[derive(Default)]
struct State {
    /// The last index appended.
    last: u64,
    /// Everything up to here was forwarded and purged.
    done: u64,
    /// Queued, not yet forwarded: index → (shard, samples, queued_ms).
    pending: BTreeMap<u64, (GroupId, u64, u64)>,
}

pub(crate) struct TsQueue {
    state: Mutex<State>,
    wake: Notify,
    forwarded: AtomicU64,
    too_old: AtomicU64,
    proposals: AtomicU64,
}

/// What the queue holds (`edgefabric ts queue`, `/v1/ts/queue`, `/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TsQueueStatus {
    pub parts: u64,
    pub samples: u64,
    /// Age of the oldest queued part, in ms (0 when empty).
    pub oldest_ms: u64,
    /// Queued samples per shard.
    pub shards: BTreeMap<GroupId, u64>,
    /// Samples forwarded from the queue since the node started.
    pub forwarded: u64,
    /// Forwarded samples the shard refused as too old (they waited longer than the
    /// out-of-order window behind newer samples of their series).
    pub too_old: u64,
    /// Raft proposals that forwarded them (a shard's consecutive parts go in one).
    pub proposals: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl TsQueue {
    pub(crate) fn open(engine: &LogEngine) -> Result<TsQueue> {
        let purged = engine.purged(TS_QUEUE).map_or(0, |(i, _)| i);
        // What a killed process left may be only in the page cache: make it durable first.
        engine.sync_blocking().map_err(|e| Error::Storage(format!("syncing the log at start: {e}")))?;
        let mut st = State { last: purged, done: purged, pending: BTreeMap::new() };
        for (i, raw) in engine.entries(TS_QUEUE, purged + 1..)? {
            let q = decode_queued(&raw)?;
            st.pending.insert(i, (q.part.shard, q.part.samples, q.queued_ms));
            st.last = i;
        }
        Ok(TsQueue {
            state: Mutex::new(st),
            wake: Notify::new(),
            forwarded: AtomicU64::new(0),
            too_old: AtomicU64::new(0),
            proposals: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `shard` has parts waiting (new ones must queue behind them).
    pub(crate) fn has_backlog(&self, shard: GroupId) -> bool {
        self.lock().pending.values().any(|(s, _, _)| *s == shard)
    }
}

impl Node {
    /// Queues parts durably; returns once they are on disk.
    pub(crate) async fn ts_enqueue(&self, parts: Vec<TsPart>) -> Result<()> {
        if parts.is_empty() {
            return Ok(());
        }
        let queued_ms = now_ms();
        {
            let mut st = self.ts_queue.lock();
            let mut entries = Vec::with_capacity(parts.len());
            let mut i = st.last;
            let mut meta = Vec::with_capacity(parts.len());
            for part in parts {
                i += 1;
                meta.push((i, (part.shard, part.samples, queued_ms)));
                entries.push((i, crate::codec::encode(&Queued { part, queued_ms })?));
            }
            self.engine.append(TS_QUEUE, entries)?;
            st.last = i;
            st.pending.extend(meta);
        }
        let (tx, rx) = oneshot::channel();
        self.engine.sync(move |r| {
            let _ = tx.send(r);
        });
        rx.await
            .map_err(|_| Error::Storage("the log syncer stopped".into()))?
            .map_err(|e| Error::Storage(format!("time-series queue sync: {e}")))?;
        self.ts_queue.wake.notify_one();
        Ok(())
    }

    pub fn ts_queue_status(&self) -> TsQueueStatus {
        let st = self.ts_queue.lock();
        let mut out = TsQueueStatus {
            forwarded: self.ts_queue.forwarded.load(Ordering::Relaxed),
            too_old: self.ts_queue.too_old.load(Ordering::Relaxed),
            proposals: self.ts_queue.proposals.load(Ordering::Relaxed),
            ..Default::default()
        };
        let now = now_ms();
        for (shard, samples, at) in st.pending.values() {
            out.parts += 1;
            out.samples += samples;
            *out.shards.entry(*shard).or_default() += samples;
            out.oldest_ms = out.oldest_ms.max(now.saturating_sub(*at));
        }
        out
    }

    pub(crate) fn start_ts_forwarder(self: &Arc<Self>) {
        let n = self.clone();
        tokio::spawn(async move { n.forward_loop().await });
    }

    async fn forward_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        let mut backoff = Duration::from_millis(100);
        loop {
            let pending: Vec<(u64, GroupId)> =
                self.ts_queue.lock().pending.iter().take(256).map(|(i, (s, _, _))| (*i, *s)).collect();
            if pending.is_empty() {
                tokio::select! {
                    _ = self.ts_queue.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            let mut progress = false;
            // Shards that failed this round: their later parts wait (order per shard).
            let mut failed: Vec<GroupId> = Vec::new();
            let mut last_err = None;
            // A shard's next plain parts of one namespace go in one proposal (a long outage
            // leaves thousands of small parts; one raft round each drains them slowly). Only
            // that shard's parts are merged, in their order, so no part overtakes another.
            let mut sent: std::collections::HashSet<u64> = std::collections::HashSet::new();
            for (k, &(i, shard)) in pending.iter().enumerate() {
                if failed.contains(&shard) || sent.contains(&i) {
                    continue;
                }
                let run: Vec<u64> = pending[k..]
                    .iter()
                    .filter(|(_, s)| *s == shard)
                    .take(MAX_MERGED_PARTS)
                    .map(|(i, _)| *i)
                    .collect();
                let r = match self.merged_part(&run) {
                    Ok(Some((merged, used))) => {
                        let r = self.forward_part(merged, &used).await;
                        if r.is_ok() {
                            sent.extend(used);
                        }
                        r
                    }
                    _ => self.forward_one(i).await,
                };
                match r {
                    Ok(()) => progress = true,
                    Err(e) => {
                        failed.push(shard);
                        last_err = Some(e);
                    }
                }
            }
            if let Err(e) = self.purge_forwarded() {
                tracing::warn!(error = %e, "purging forwarded time-series parts");
            }
            if progress {
                backoff = Duration::from_millis(100);
                continue;
            }
            if let Some(e) = last_err {
                let s = self.ts_queue_status();
                if backoff >= Duration::from_secs(2) {
                    tracing::warn!(error = %e, parts = s.parts, samples = s.samples, "queued time series not forwarded yet; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// The longest run of `run`'s parts (queue indices of one shard, in order) that are all
    /// plain or all sealed, of one namespace and together within a raft entry, merged into one
    /// part; None if fewer than two qualify (send the first alone).
    fn merged_part(&self, run: &[u64]) -> Result<Option<(TsPart, Vec<u64>)>> {
        let (Some(&first), Some(&last)) = (run.first(), run.last()) else { return Ok(None) };
        let wanted: std::collections::HashSet<u64> = run.iter().copied().collect();
        let mut parts = vec![];
        for (i, raw) in self.engine.entries(TS_QUEUE, first..=last)? {
            if wanted.contains(&i) {
                parts.push((i, decode_queued(&raw)?.part));
            }
        }
        Ok(merge_parts(parts, crate::types::MAX_TS_BATCH_BYTES / 2))
    }

    /// Proposes a part (one queued part, or several merged); on success the queued parts
    /// `used` are done.
    async fn forward_part(&self, part: TsPart, used: &[u64]) -> Result<()> {
        let r = tokio::time::timeout(DIRECT_TIMEOUT, self.propose(part.command()))
            .await
            .map_err(|_| Error::Unavailable(format!("shard {} did not answer", part.shard)))?;
        match r {
            Ok(resp) => self.forwarded(&part, resp)?,
            // The shard is gone (a split or merge changed the map): any shard of the
            // namespace may hold the series, so send it to where it routes now.
            Err(Error::NotFound(_)) => {
                Box::pin(self.ts_reroute(&part)).await?;
            }
            Err(e) => return Err(e),
        }
        let mut st = self.ts_queue.lock();
        for i in used {
            st.pending.remove(i);
        }
        Ok(())
    }

    /// Counts what a forwarded part's shard answered (and says what it refused).
    fn forwarded(&self, p: &TsPart, resp: Response) -> Result<()> {
        self.ts_queue.proposals.fetch_add(1, Ordering::Relaxed);
        match resp {
            Response::TsWritten { written, too_old } => {
                self.ts_queue.forwarded.fetch_add(written, Ordering::Relaxed);
                if too_old > 0 {
                    self.ts_queue.too_old.fetch_add(too_old, Ordering::Relaxed);
                    tracing::warn!(
                        shard = p.shard,
                        too_old,
                        "queued samples arrived after the out-of-order window and were dropped"
                    );
                }
                Ok(())
            }
            Response::Rejected(why) => {
                // Deterministically refused (it will never apply): drop it, loudly.
                tracing::error!(shard = p.shard, samples = p.samples, %why, "a queued time-series part was refused; dropped");
                Ok(())
            }
            other => Err(Error::Internal(format!("unexpected response {other:?}"))),
        }
    }

    /// Proposes one queued part to its shard.
    async fn forward_one(&self, i: u64) -> Result<()> {
        let Some((_, raw)) = self.engine.entries(TS_QUEUE, i..=i)?.into_iter().next() else {
            return Err(Error::Storage(format!("time-series queue entry {i} is missing")));
        };
        self.forward_part(decode_queued(&raw)?.part, &[i]).await
    }

    /// Purges the queue's longest forwarded prefix.
    fn purge_forwarded(&self) -> Result<()> {
        let upto = {
            let mut st = self.ts_queue.lock();
            let upto = st.pending.keys().next().map_or(st.last, |first| first - 1);
            if upto <= st.done {
                return Ok(());
            }
            st.done = upto;
            upto
        };
        // Not synced on purpose: a purge lost in a crash means a harmless second forward.
        self.engine.purge(TS_QUEUE, upto, vec![])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_queued_by_an_older_version_still_decode() {
        // A real timestamp (2026), as every queued part has.
        let queued_ms = 1_795_000_000_000;
        let v1 = QueuedV1 { shard: 4, batch: vec![1, 2, 3], samples: 3, queued_ms };
        let q = decode_queued(&crate::codec::encode(&v1).unwrap()).unwrap();
        assert_eq!(q.part, TsPart { shard: 4, batch: vec![1, 2, 3], samples: 3, sealed: false });
        assert_eq!(q.queued_ms, queued_ms);

        let sealed =
            Queued { part: TsPart { shard: 5, batch: vec![9], samples: 1, sealed: true }, queued_ms };
        let q = decode_queued(&crate::codec::encode(&sealed).unwrap()).unwrap();
        assert_eq!((q.part, q.queued_ms), (sealed.part, queued_ms));

        assert!(decode_queued(b"\x01").is_err());
    }

    fn plain(ns: &str, name: &str, t: i64) -> TsPart {
        let points = vec![edgefabric_tsdb::line::Point {
            labels: vec![("__name__".into(), name.into())],
            time_ms: t,
            value: 1.0,
        }];
        let batch = edgefabric_tsdb::batch::WriteBatch::from_points(ns, points).unwrap().encode();
        TsPart { shard: 1, batch, samples: 1, sealed: false }
    }

    fn sealed(ns: &str, name: &str) -> TsPart {
        let batch = edgefabric_tsdb::batch::SealedBatch {
            ns: ns.into(),
            series: vec![edgefabric_tsdb::batch::SealedSeries {
                labels: vec![("__name__".into(), name.into())],
                min_t: 1,
                max_t: 2,
                count: 2,
                key_version: 1,
                sealed: b"ciphertext".to_vec(),
            }],
        };
        TsPart { shard: 1, batch: batch.encode(), samples: 2, sealed: true }
    }

    fn merge(parts: Vec<TsPart>, max_bytes: usize) -> Option<(TsPart, Vec<u64>)> {
        merge_parts((1..).zip(parts).collect(), max_bytes)
    }

    #[test]
    fn queued_parts_merge_by_kind_namespace_shard_and_size() {
        // Plain parts merge, a series named twice included (the engine takes that).
        let (p, used) =
            merge(vec![plain("a", "x", 1), plain("a", "x", 2), plain("a", "y", 1)], 1 << 20).unwrap();
        assert_eq!((used, p.samples, p.sealed), (vec![1, 2, 3], 3, false));
        let b = edgefabric_tsdb::batch::WriteBatch::decode(&p.batch).unwrap();
        assert_eq!(b.series.len(), 3);
        // Sealed parts of distinct series merge into a batch the shard accepts.
        let (p, used) = merge(vec![sealed("a", "x"), sealed("a", "y")], 1 << 20).unwrap();
        assert_eq!((used, p.samples, p.sealed), (vec![1, 2], 4, true));
        assert_eq!(edgefabric_tsdb::batch::SealedBatch::decode(&p.batch).unwrap().series.len(), 2);
        // A sealed series twice stops the merge: such a batch would be refused.
        let (_, used) = merge(vec![sealed("a", "x"), sealed("a", "y"), sealed("a", "x")], 1 << 20).unwrap();
        assert_eq!(used, vec![1, 2]);
        assert!(merge(vec![sealed("a", "x"), sealed("a", "x")], 1 << 20).is_none());
        // Kinds, namespaces and shards do not mix.
        assert!(merge(vec![plain("a", "x", 1), sealed("a", "y")], 1 << 20).is_none());
        assert!(merge(vec![sealed("a", "x"), plain("a", "y", 1)], 1 << 20).is_none());
        assert!(merge(vec![plain("a", "x", 1), plain("b", "x", 1)], 1 << 20).is_none());
        let mut other = plain("a", "y", 1);
        other.shard = 2;
        assert!(merge(vec![plain("a", "x", 1), other], 1 << 20).is_none());
        // The size bound holds.
        let one = plain("a", "x", 1).batch.len();
        let (_, used) =
            merge(vec![plain("a", "x", 1), plain("a", "x", 2), plain("a", "x", 3)], 2 * one + 1).unwrap();
        assert_eq!(used, vec![1, 2]);
    }
}
