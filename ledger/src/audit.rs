//! Auditors' queries over the audit records in the chain, served from the indexes the chain
//! builds on apply (`LaT`, `LaN`, `LaA`; see `chain`). Records come back in (time, log index,
//! position) order with the log index of the entry (batch) that holds them and their position
//! in it, so each can be proven against a checkpoint with that entry's inclusion proof.
//!
//! Index keys stand for a batch's records of one namespace (or actor, or all of them), at the
//! earliest of their times; a batch spans at most `AUDIT_BATCH_SPAN_MS`, so a query starts that
//! much before its range and checks each record's own time. Order: (key time, log index,
//! position), which is time order up to that span.
//!
//! Cost contract: a query walks one index over its time range and stops after `limit` matches
//! or `scan_budget` records examined, whichever comes first; either way `next` says where to
//! resume, so a sparse filter never turns one request into a scan of the whole ledger.

use crate::chain::{self, audit_index_key, audit_index_prefix};
use crate::entry::{AuditRecord, Entry, EntryKind, AUDIT_BATCH_SPAN_MS};
use crate::error::{LedgerError, Result};

/// Largest page a query returns.
pub const MAX_LIMIT: usize = 1000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub ns: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub result: Option<String>,
    /// Inclusive bounds on the record's time (ms since the Unix epoch).
    pub from_ms: u64,
    pub to_ms: u64,
    /// Resume after this (time, log index, position), the previous page's `next`.
    pub after: Option<Cursor>,
    pub limit: usize,
}

/// A position in an audit index: (time in ms, log index, position in the entry's batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub time_ms: u64,
    pub index: u64,
    pub pos: u32,
}

impl Cursor {
    /// The cursor's text form in `next`: `<time_ms>-<index>-<pos>`.
    pub fn parse(s: &str) -> Result<Cursor> {
        let bad =
            || LedgerError::invalid("after", format!("{s:?} is not a cursor from a previous page's next"));
        let mut parts = s.split('-');
        let (Some(t), Some(i), Some(p), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(Cursor {
            time_ms: t.parse().map_err(|_| bad())?,
            index: i.parse().map_err(|_| bad())?,
            pos: p.parse().map_err(|_| bad())?,
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}-{}", self.time_ms, self.index, self.pos)
    }
}

#[derive(Debug, Clone)]
pub struct AuditHit {
    /// The log index of the entry holding the record, and the record's position in it.
    pub index: u64,
    pub pos: u32,
    pub record: AuditRecord,
    /// Shared by the hits of one entry (a batch holds up to 512 records).
    pub entry: std::sync::Arc<Entry>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditPage {
    pub records: Vec<AuditHit>,
    /// Where the next page starts; `None` when the range is exhausted.
    pub next: Option<Cursor>,
}

/// Runs `q` over the chain in `tree`, reading at most `scan_budget` index keys.
pub fn audit_query(tree: &sled::Tree, q: &AuditQuery, scan_budget: usize) -> Result<AuditPage> {
    if q.limit == 0 || q.limit > MAX_LIMIT {
        return Err(LedgerError::invalid("limit", format!("must be between 1 and {MAX_LIMIT}")));
    }
    if q.from_ms > q.to_ms {
        return Err(LedgerError::invalid("from", "is after to"));
    }
    // The most selective index the filters allow.
    let prefix = match (&q.ns, &q.actor) {
        (Some(ns), _) => audit_index_prefix(b"LaN", Some(ns)),
        (None, Some(actor)) => audit_index_prefix(b"LaA", Some(actor)),
        (None, None) => audit_index_prefix(b"LaT", None),
    };
    // A key's time is its records' earliest; the rest are at most AUDIT_BATCH_SPAN_MS later.
    let mut start = audit_index_key(&prefix, q.from_ms.saturating_sub(AUDIT_BATCH_SPAN_MS), 0);
    if let Some(c) = q.after {
        start = start.max(audit_index_key(&prefix, c.time_ms, c.index));
    }
    let end = audit_index_key(&prefix, q.to_ms, u64::MAX);
    let mut page = AuditPage::default();
    if start > end {
        return Ok(page);
    }
    let mut scanned = 0usize;
    'keys: for kv in tree.range(start..=end.clone()) {
        let (k, v) = kv?;
        let (time_ms, index) = key_of(&k, prefix.len())?;
        let entry = chain::entry(tree, index)?.ok_or_else(|| {
            LedgerError::Storage(format!("audit index names log index {index} which is not stored"))
        })?;
        let entry = std::sync::Arc::new(entry);
        let EntryKind::Audit(batch) = &entry.kind else {
            return Err(LedgerError::Storage(format!(
                "audit index names log index {index}, not an audit entry"
            )));
        };
        for pos in positions(&v)? {
            let here = Cursor { time_ms, index, pos };
            if q.after.is_some_and(|c| here <= c) {
                continue;
            }
            let record = batch.get(pos as usize).ok_or_else(|| {
                LedgerError::Storage(format!(
                    "audit index names record {pos} of log index {index}, which has none"
                ))
            })?;
            scanned += 1;
            let keep = (q.from_ms..=q.to_ms).contains(&record.time_ms)
                && q.ns.as_ref().is_none_or(|v| *v == record.ns)
                && q.actor.as_ref().is_none_or(|v| *v == record.actor)
                && q.action.as_ref().is_none_or(|v| *v == record.action)
                && q.result.as_ref().is_none_or(|v| *v == record.result);
            if keep {
                page.records.push(AuditHit {
                    index,
                    pos,
                    record: record.clone(),
                    entry: std::sync::Arc::clone(&entry),
                });
            }
            if page.records.len() == q.limit || scanned >= scan_budget.max(1) {
                page.next = Some(here);
                break 'keys;
            }
        }
    }
    // A page that ended exactly at the range's end has nothing after it.
    if let Some(n) = page.next {
        let more = tree.range(audit_index_key(&prefix, n.time_ms, n.index)..=end).take(2).try_fold(
            false,
            |more, kv| -> Result<bool> {
                let (k, v) = kv?;
                let (t, i) = key_of(&k, prefix.len())?;
                Ok(more || positions(&v)?.into_iter().any(|p| Cursor { time_ms: t, index: i, pos: p } > n))
            },
        )?;
        if !more {
            page.next = None;
        }
    }
    Ok(page)
}

/// (time, log index) of an index key.
fn key_of(key: &[u8], prefix_len: usize) -> Result<(u64, u64)> {
    let rest = &key[prefix_len.min(key.len())..];
    if rest.len() != 16 {
        return Err(LedgerError::Storage(format!("audit index key of {} bytes", key.len())));
    }
    let num = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
    Ok((num(&rest[..8]), num(&rest[8..16])))
}

/// An index value: the positions (u16 BE each) of the entry's records the key stands for.
fn positions(v: &[u8]) -> Result<Vec<u32>> {
    if v.len() & 1 == 1 {
        return Err(LedgerError::Storage(format!("audit index value of {} bytes", v.len())));
    }
    Ok(v.chunks_exact(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).collect())
}
