//! The audit trail's node side: a durable local queue of access records, and the shipper that
//! moves them into the ledger.
//!
//! Durability contract: [`Node::audit`] returns only once its records are `fdatasync`ed in the
//! node's write-ahead file (the raft log's, under a group id no raft group uses, so one
//! group-committed sync serves raft and audit appends alike). The API layer calls it before it
//! answers, so every access a client saw answered is on this node's disk, whatever happens next.
//!
//! Exactly once: each record carries (node, data-directory instance, seq) with seq 1, 2, 3, ...
//! in queue order. The chain admits a node's records only in that order and only once
//! (`ledger::chain` refuses a repeat as a duplicate and a gap as a rule violation), so the
//! shipper can resend freely: after a crash, a lost leader or a partition it asks the ledger
//! where the sequence stands and goes on from there. Records leave the queue (are purged) only
//! once the ledger holds them. A cut-off site keeps queueing; the records follow when the
//! ledger is reachable again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgefabric_ledger::chain;
use edgefabric_ledger::entry::{AuditRecord, Author, Entry, EntryKind};
use edgefabric_ledger::Invalid;
use tokio::sync::{oneshot, Notify};

use crate::error::{Error, Result};
use crate::log::{GroupId, LogEngine};
use crate::node::{Consistency, Node};
use crate::types::Admission;

/// The queue's id in the write-ahead file (never a raft group's: shard ids count up from 1,
/// the metadata and ledger groups are `u64::MAX` and `u64::MAX - 1`).
pub const AUDIT_QUEUE: GroupId = u64::MAX - 2;

/// Records a restore brought back from an earlier data-directory instance, not yet known to
/// be in the ledger (`backup.rs`). Each keeps its own (instance, seq); the entry index is only
/// queue order. They are shipped under their old instance, where the chain's sequence rule
/// makes a resend of what the old node shipped after the backup a no-op.
pub const AUDIT_INHERITED: GroupId = u64::MAX - 4;

/// Most records shipped in one ledger submission.
const SHIP_BATCH: usize = 4096;
/// Most records in one ledger entry, and the most bytes of records (the leaf limit is 16 KiB).
const ENTRY_RECORDS: usize = 512;
const ENTRY_BYTES: usize = 14 * 1024;
/// How long the shipper waits for more records before shipping a partial batch.
const LINGER: Duration = Duration::from_millis(50);

/// One access as the API layer saw it. `key` is already replaced by `key_hash` where the
/// namespace's class requires it (the API layer holds the hashing secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub actor: String,
    pub ns: String,
    pub key: Option<String>,
    pub key_hash: Option<String>,
    pub action: String,
    pub allowed: bool,
    pub status: u16,
}

pub(crate) struct AuditQueue {
    /// Records queued until now: the next record's seq is `last + 1`. The lock also keeps file
    /// order equal to seq order.
    last: Mutex<u64>,
    /// The highest seq known durable (synced). Only durable records are shipped: a record that
    /// reached the ledger but not this disk would have its seq reused after a crash, and the
    /// chain would take the new record for a duplicate.
    durable: AtomicU64,
    /// The highest seq the ledger is known to hold (0: none, or not asked yet).
    shipped: AtomicU64,
    /// Whether `shipped` came from the ledger (after start-up it must be asked first).
    synced: std::sync::atomic::AtomicBool,
    wake: Notify,
    pub(crate) enabled: bool,
    /// Records of an earlier instance are waiting (`AUDIT_INHERITED`).
    inherited: std::sync::atomic::AtomicBool,
}

impl AuditQueue {
    pub(crate) fn open(engine: &LogEngine, enabled: bool) -> Result<AuditQueue> {
        let last_entry = engine.last_entry(AUDIT_QUEUE)?.map_or(0, |(i, _)| i);
        let purged = engine.purged(AUDIT_QUEUE).map_or(0, |(i, _)| i);
        // What survived in the file may still be only in the page cache (a killed process):
        // make it durable before any of it is shipped.
        engine.sync_blocking().map_err(|e| Error::Storage(format!("syncing the log at start: {e}")))?;
        let last = last_entry.max(purged);
        let inherited = engine.last_entry(AUDIT_INHERITED)?.is_some();
        Ok(AuditQueue {
            last: Mutex::new(last),
            durable: AtomicU64::new(last),
            shipped: AtomicU64::new(purged),
            synced: std::sync::atomic::AtomicBool::new(false),
            wake: Notify::new(),
            enabled,
            inherited: std::sync::atomic::AtomicBool::new(inherited),
        })
    }
}

tokio::task_local! {
    /// The received record of the KV write this task serves, while it may not be durable yet
    /// (`Node::with_received`).
    static RECEIVED: std::cell::RefCell<Option<Written>>;
}

/// Audit records written to the log, not yet known to be durable.
pub struct Written {
    synced: Synced,
}

enum Synced {
    /// No sync asked for yet: `durable` asks. A request that never waits leaves the records
    /// to the next sync of the file (a raft append's, or the outcome record's), which covers
    /// them: syncs cover everything written before them.
    Lazy { engine: LogEngine, queue: Arc<AuditQueue>, end: u64 },
    #[cfg(test)]
    Asked(oneshot::Receiver<std::io::Result<()>>),
}

impl Written {
    /// Returns once the records are on disk.
    pub async fn durable(self) -> Result<()> {
        let synced = match self.synced {
            Synced::Lazy { engine, queue, end } => {
                let (tx, rx) = oneshot::channel();
                engine.sync(move |r| {
                    if r.is_ok() {
                        // Syncs complete in file order: everything up to `end` is durable.
                        queue.durable.fetch_max(end, Ordering::SeqCst);
                        queue.wake.notify_one();
                    }
                    let _ = tx.send(r);
                });
                rx
            }
            #[cfg(test)]
            Synced::Asked(rx) => rx,
        };
        synced
            .await
            .map_err(|_| Error::Storage("the log syncer stopped".into()))?
            .map_err(|e| Error::Storage(format!("audit queue sync: {e}")))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Node {
    /// Records accesses durably (see the module comment); returns once they are on disk.
    /// With auditing disabled (benchmarks only) it records nothing.
    pub async fn audit(&self, accesses: Vec<Access>) -> Result<()> {
        match self.audit_written(accesses)? {
            Some(written) => written.durable().await,
            None => Ok(()),
        }
    }

    /// Writes the records to the log without syncing them: `Written::durable` syncs and waits.
    /// `None` when nothing was written (auditing disabled, or no accesses). Records nobody
    /// waits for become durable with the file's next sync, and shippable with the next audit
    /// sync (or at the next start, which syncs the file first).
    pub fn audit_written(&self, accesses: Vec<Access>) -> Result<Option<Written>> {
        if !self.audit.enabled || accesses.is_empty() {
            return Ok(None);
        }
        let time_ms = now_ms();
        let end = {
            let mut last = self.audit.last.lock().unwrap_or_else(|p| p.into_inner());
            let mut batch = Vec::with_capacity(accesses.len());
            let mut seq = *last;
            for a in accesses {
                seq += 1;
                let rec = AuditRecord {
                    actor: a.actor,
                    node: self.opts.id,
                    ns: a.ns,
                    key: a.key,
                    key_hash: a.key_hash,
                    action: a.action,
                    result: if a.allowed { "allowed" } else { "denied" }.into(),
                    status: a.status,
                    time_ms,
                    instance: self.instance,
                    seq,
                };
                // The record is checked here, not only when shipped: one the chain would refuse
                // would block every later record of this node.
                let probe = Entry {
                    kind: EntryKind::Audit(vec![rec.clone()]),
                    author: Author::Node(self.opts.id),
                    signature: vec![0; 64],
                };
                probe.validate_fields().map_err(|e| Error::invalid("audit record", e.to_string()))?;
                batch.push((seq, crate::codec::encode(&rec)?));
            }
            self.engine.append(AUDIT_QUEUE, batch)?;
            *last = seq;
            seq
        };
        // The sync is asked for only by a caller that waits (`Written::durable`). A KV write
        // proposed to a local leader does not: its raft append's sync, asked for right after,
        // covers the record, and a sync of the record alone would hold that append back by up
        // to one more `fdatasync` (the syncer would be busy with it when the append arrives).
        Ok(Some(Written {
            synced: Synced::Lazy { engine: self.engine.clone(), queue: self.audit.clone(), end },
        }))
    }

    /// Runs `call` (a KV write's handler) with its received record `written` but perhaps not
    /// yet durable. The record must be durable before the write can take effect; the write
    /// path ensures it (`received_durable`):
    /// - a proposal to a group this node leads needs no wait. The record is in this node's
    ///   log file before the entry, and openraft 0.9 (pinned) appends a leader's entries and
    ///   waits for their `fdatasync` before it replicates them: no follower has the entry, so
    ///   it cannot commit, before that sync, which covers the record too;
    /// - anything else (a forward to another node's leader) waits for the record first.
    ///
    /// Only for calls whose one effect is a proposal through [`Node::propose`]: anything that
    /// takes effect another way would not wait.
    pub async fn with_received<F: std::future::Future>(
        &self,
        written: Option<Written>,
        call: F,
    ) -> F::Output {
        RECEIVED.scope(std::cell::RefCell::new(written), call).await
    }

    /// Waits for the received record of the request being served, if `with_received` left one
    /// pending. Called before anything that could make a write take effect other than a
    /// proposal to a local leader. Later calls return at once.
    pub(crate) async fn received_durable() -> Result<()> {
        let pending = RECEIVED.try_with(|c| c.borrow_mut().take()).ok().flatten();
        match pending {
            Some(w) => w.durable().await,
            None => Ok(()),
        }
    }

    /// (records queued, records the ledger is known to hold) for this node's current instance.
    pub fn audit_backlog(&self) -> (u64, u64) {
        (
            *self.audit.last.lock().unwrap_or_else(|p| p.into_inner()),
            self.audit.shipped.load(Ordering::SeqCst),
        )
    }

    pub fn instance(&self) -> u64 {
        self.instance
    }

    pub(crate) fn start_audit_shipper(self: &Arc<Self>) {
        let n = self.clone();
        tokio::spawn(async move { n.ship_loop().await });
    }

    async fn ship_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        let mut backoff = Duration::from_millis(50);
        loop {
            let inherited = self.audit.inherited.load(Ordering::SeqCst);
            let pending = self.audit.durable.load(Ordering::SeqCst)
                > self.audit.shipped.load(Ordering::SeqCst)
                || !self.audit.synced.load(Ordering::SeqCst)
                || inherited;
            if !pending {
                tokio::select! {
                    _ = self.audit.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            // Linger a moment unless a full entry's worth is waiting: fewer, larger ledger
            // blocks (each costs a raft round and a block check on every node), at the price
            // of records reaching the ledger up to LINGER later (they are durable meanwhile).
            let waiting =
                self.audit.durable.load(Ordering::SeqCst) - self.audit.shipped.load(Ordering::SeqCst);
            if waiting < ENTRY_RECORDS as u64 {
                tokio::select! {
                    _ = tokio::time::sleep(LINGER) => {}
                    _ = shutdown.changed() => return,
                }
            }
            // Inherited records first, but never in the way of this instance's own: a run the
            // ledger keeps refusing must not stop the audit trail.
            let shipped = match inherited {
                true => match self.ship_inherited().await {
                    Ok(()) => self.ship_once().await,
                    Err(e) => self.ship_once().await.and(Err(e)),
                },
                false => self.ship_once().await,
            };
            match shipped {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(e) => {
                    // Short outages (a leader change) are routine; a failure that outlasts the
                    // backoff's growth (a cut-off site, a refusing ledger) is worth a warning.
                    let (queued, shipped) = self.audit_backlog();
                    if backoff >= Duration::from_secs(2) {
                        tracing::warn!(error = %e, queued, shipped, "audit records not shipped yet; retrying");
                    } else {
                        tracing::debug!(error = %e, "audit records not shipped yet; retrying");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Where the ledger's sequence for this node's instance stands (linearizable).
    pub async fn audit_ledger_seq(&self) -> Result<u64> {
        let g = self.ledger_readable()?;
        self.read_barrier(&g).await?;
        chain::audit_last_seq(g.kv.tree(), self.opts.id, self.instance)
            .map_err(|e| Error::Storage(e.to_string()))
    }

    /// Ships the next batch: records after what the ledger holds, in order.
    async fn ship_once(&self) -> Result<()> {
        if !self.audit.synced.load(Ordering::SeqCst) {
            let at = self.audit_ledger_seq().await?;
            self.mark_shipped(at)?;
            self.audit.synced.store(true, Ordering::SeqCst);
        }
        let from = self.audit.shipped.load(Ordering::SeqCst) + 1;
        let to = self.audit.durable.load(Ordering::SeqCst).min(from + SHIP_BATCH as u64 - 1);
        if to < from {
            return Ok(());
        }
        let queued = self.engine.entries(AUDIT_QUEUE, from..=to)?;
        if queued.is_empty() {
            return Ok(());
        }
        let mut records = Vec::with_capacity(queued.len());
        for (seq, raw) in queued {
            let rec: AuditRecord = crate::codec::decode(&raw)?;
            if rec.seq != seq {
                return Err(Error::Storage(format!("audit queue entry {seq} holds record {}", rec.seq)));
            }
            records.push((rec, raw.len()));
        }
        let entries = self.seal_entries(records).await?;
        let lasts: Vec<u64> = entries.iter().map(|(s, _)| *s).collect();
        let results = self.ledger_submit(entries.into_iter().map(|(_, e)| e).collect()).await?;
        // The longest prefix the ledger now holds.
        let mut held = from - 1;
        for (last, r) in lasts.iter().zip(&results) {
            match r {
                Admission::Index(_) => held = *last,
                Admission::Refused(why) => {
                    // Out of step with the ledger (e.g. a resend of records it already holds):
                    // ask it where the sequence stands, and go on from there.
                    self.audit.synced.store(false, Ordering::SeqCst);
                    self.mark_shipped(held)?;
                    if matches!(why, Invalid::Duplicate { .. }) {
                        return Ok(());
                    }
                    return Err(Error::Unavailable(format!("audit records up to {last} refused: {why}")));
                }
                Admission::Failed(why) => {
                    self.mark_shipped(held)?;
                    return Err(Error::Unavailable(format!(
                        "audit records up to {last} not appended: {why}"
                    )));
                }
            }
        }
        self.mark_shipped(held)
    }

    /// Signs records, in order, into ledger entries: (the last seq in the entry, the entry).
    /// Records go into the ledger as batches, one signed entry each: the signature, the leaf
    /// and its checks are paid once per batch, not per access.
    async fn seal_entries(&self, records: Vec<(AuditRecord, usize)>) -> Result<Vec<(u64, Entry)>> {
        let identity = self.opts.identity.clone();
        let id = self.opts.id;
        tokio::task::spawn_blocking(move || -> Result<Vec<(u64, Entry)>> {
            let mut out = vec![];
            let mut batch: Vec<AuditRecord> = vec![];
            let mut bytes = 0;
            let (mut lo, mut hi) = (u64::MAX, 0u64);
            let mut seal = |batch: &mut Vec<AuditRecord>| -> Result<()> {
                let last = batch.last().map_or(0, |r| r.seq);
                let e = Entry::by_node(id, EntryKind::Audit(std::mem::take(batch)), &identity)
                    .map_err(|e| Error::Internal(format!("signing audit records: {e}")))?;
                out.push((last, e));
                Ok(())
            };
            for (rec, len) in records {
                let span = hi.max(rec.time_ms) - lo.min(rec.time_ms);
                if !batch.is_empty()
                    && (batch.len() == ENTRY_RECORDS
                        || bytes + len > ENTRY_BYTES
                        || span > edgefabric_ledger::entry::AUDIT_BATCH_SPAN_MS)
                {
                    seal(&mut batch)?;
                    (bytes, lo, hi) = (0, u64::MAX, 0);
                }
                bytes += len;
                (lo, hi) = (lo.min(rec.time_ms), hi.max(rec.time_ms));
                batch.push(rec);
            }
            if !batch.is_empty() {
                seal(&mut batch)?;
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::Internal(format!("audit signer: {e}")))?
    }

    /// Ships the records a restore inherited from an earlier instance (`AUDIT_INHERITED`), one
    /// instance's run at a time, in order: asks the ledger where that instance's sequence
    /// stands, sends what follows, and drops what it holds already.
    async fn ship_inherited(&self) -> Result<()> {
        let queued = self.engine.entries(AUDIT_INHERITED, ..)?;
        let Some(&(first_index, _)) = queued.first() else {
            self.audit.inherited.store(false, Ordering::SeqCst);
            return Ok(());
        };
        let mut run: Vec<(u64, AuditRecord, usize)> = vec![];
        for (index, raw) in queued.into_iter().take(SHIP_BATCH) {
            let rec: AuditRecord = crate::codec::decode(&raw)?;
            if run.first().is_some_and(|(_, r, _)| r.instance != rec.instance) {
                break;
            }
            run.push((index, rec, raw.len()));
        }
        let instance = run[0].1.instance;
        let last_index = run.last().map_or(first_index, |(i, _, _)| *i);
        let g = self.ledger_readable()?;
        self.read_barrier(&g).await?;
        let at = chain::audit_last_seq(g.kv.tree(), self.opts.id, instance)
            .map_err(|e| Error::Storage(e.to_string()))?;
        let records: Vec<(AuditRecord, usize)> =
            run.into_iter().filter(|(_, r, _)| r.seq > at).map(|(_, r, len)| (r, len)).collect();
        if let Some((first, _)) = records.first() {
            if first.seq != at + 1 {
                // The records between are gone (lost with the earlier data directory after
                // the backup was taken); the chain can never take these after such a gap.
                tracing::error!(
                    instance,
                    ledger_holds = at,
                    first = first.seq,
                    dropped = records.len(),
                    "restored audit records cannot follow the ledger's sequence; dropped"
                );
            } else {
                let entries = self.seal_entries(records).await?;
                for r in self.ledger_submit(entries.into_iter().map(|(_, e)| e).collect()).await? {
                    match r {
                        Admission::Index(_) | Admission::Refused(Invalid::Duplicate { .. }) => {}
                        Admission::Refused(why) => {
                            return Err(Error::Unavailable(format!("restored audit records refused: {why}")))
                        }
                        Admission::Failed(why) => {
                            return Err(Error::Unavailable(format!(
                                "restored audit records not appended: {why}"
                            )))
                        }
                    }
                }
                tracing::info!(instance, through = last_index, "restored audit records shipped");
            }
        }
        self.engine.purge(AUDIT_INHERITED, last_index, vec![])?;
        if self.engine.last_entry(AUDIT_INHERITED)?.is_none() {
            self.audit.inherited.store(false, Ordering::SeqCst);
        }
        Ok(())
    }

    /// The ledger holds every record up to `seq`: they may leave the queue.
    fn mark_shipped(&self, seq: u64) -> Result<()> {
        let before = self.audit.shipped.load(Ordering::SeqCst);
        if seq > before {
            self.audit.shipped.store(seq, Ordering::SeqCst);
            // Not synced on purpose: a purge lost in a crash only means a resend, which the
            // chain's sequence rule turns into a no-op.
            self.engine.purge(AUDIT_QUEUE, seq, vec![])?;
        }
        Ok(())
    }

    /// Audit records for auditors, from the ledger's indexes (see `edgefabric_ledger::audit`).
    pub async fn audit_query(
        &self,
        q: edgefabric_ledger::audit::AuditQuery,
        consistency: Consistency,
    ) -> Result<edgefabric_ledger::audit::AuditPage> {
        let g = self.ledger_readable()?;
        if consistency == Consistency::Linearizable {
            self.read_barrier(&g).await?;
        }
        let tree = g.kv.tree().clone();
        tokio::task::spawn_blocking(move || edgefabric_ledger::audit::audit_query(&tree, &q, 100_000))
            .await
            .map_err(|e| Error::Internal(format!("audit query: {e}")))?
            .map_err(|e| match e {
                edgefabric_ledger::LedgerError::Invalid { field, message } => Error::invalid(field, message),
                other => Error::Storage(other.to_string()),
            })
    }
}

#[cfg(test)]
mod received_tests {
    use super::*;

    #[tokio::test]
    async fn a_pending_received_record_is_waited_for_once_before_an_effect() {
        // Outside a request there is nothing to wait for.
        Node::received_durable().await.unwrap();
        let (tx, rx) = oneshot::channel();
        let pending = Some(Written { synced: Synced::Asked(rx) });
        RECEIVED
            .scope(std::cell::RefCell::new(pending), async move {
                let wait = Node::received_durable();
                tokio::pin!(wait);
                assert!(
                    tokio::time::timeout(Duration::from_millis(50), &mut wait).await.is_err(),
                    "went on before the record was durable"
                );
                tx.send(Ok(())).unwrap();
                wait.await.unwrap();
                // Taken: later effects of the same request do not wait again.
                tokio::time::timeout(Duration::from_millis(50), Node::received_durable())
                    .await
                    .expect("waited twice")
                    .unwrap();
            })
            .await;
        // A failed sync is an error: the write must not go ahead.
        let (tx, rx) = oneshot::channel();
        tx.send(Err(std::io::Error::other("disk gone"))).unwrap();
        let r = RECEIVED
            .scope(
                std::cell::RefCell::new(Some(Written { synced: Synced::Asked(rx) })),
                Node::received_durable(),
            )
            .await;
        assert!(matches!(r, Err(Error::Storage(m)) if m.contains("disk gone")));
        // So is a syncer that went away without answering.
        let (tx, rx) = oneshot::channel::<std::io::Result<()>>();
        drop(tx);
        let r = RECEIVED
            .scope(
                std::cell::RefCell::new(Some(Written { synced: Synced::Asked(rx) })),
                Node::received_durable(),
            )
            .await;
        assert!(matches!(r, Err(Error::Storage(_))));
    }
}
