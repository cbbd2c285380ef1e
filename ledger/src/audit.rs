//! Auditors' queries over the audit records in the chain, served from the indexes the chain
//! builds on apply (`LaT`, `LaN`, `LaA`; see `chain`). Records come back in (time, log index,
//! position) order with the log index of the entry (batch) that holds them and their position
//! in it, so each can be proven against a checkpoint with that entry's inclusion proof.
//!
//! Cost contract: a query walks one index over its time range and stops after `limit` matches
//! or `scan_budget` index keys, whichever comes first; either way `next` says where to resume,
//! so a sparse filter never turns one request into a scan of the whole ledger.

use crate::chain::{self, audit_index_key, audit_index_prefix};
use crate::entry::{AuditRecord, Entry, EntryKind};
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
    pub entry: Entry,
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
    let mut start = audit_index_key(&prefix, q.from_ms, 0, 0);
    if let Some(c) = q.after {
        // Strictly after the cursor: its key with one more byte sorts right after it.
        let mut resume = audit_index_key(&prefix, c.time_ms, c.index, c.pos);
        resume.push(0);
        start = start.max(resume);
    }
    let end = audit_index_key(&prefix, q.to_ms, u64::MAX, u32::MAX);
    let mut page = AuditPage::default();
    if start > end {
        return Ok(page);
    }
    let mut scanned = 0usize;
    for kv in tree.range(start..=end.clone()) {
        let (k, _) = kv?;
        let cursor = cursor_of(&k, prefix.len())?;
        scanned += 1;
        let entry = chain::entry(tree, cursor.index)?.ok_or_else(|| {
            LedgerError::Storage(format!("audit index names log index {} which is not stored", cursor.index))
        })?;
        let record = match &entry.kind {
            EntryKind::Audit(batch) => batch.get(cursor.pos as usize),
            _ => None,
        };
        let Some(record) = record else {
            return Err(LedgerError::Storage(format!(
                "audit index names record {} of log index {}, which holds no such audit record",
                cursor.pos, cursor.index
            )));
        };
        let keep = q.ns.as_ref().is_none_or(|v| *v == record.ns)
            && q.actor.as_ref().is_none_or(|v| *v == record.actor)
            && q.action.as_ref().is_none_or(|v| *v == record.action)
            && q.result.as_ref().is_none_or(|v| *v == record.result);
        if keep {
            let record = record.clone();
            page.records.push(AuditHit { index: cursor.index, pos: cursor.pos, record, entry });
        }
        if page.records.len() == q.limit || scanned >= scan_budget.max(1) {
            page.next = Some(cursor);
            break;
        }
    }
    // A page that ended exactly at the range's end has nothing after it.
    if let Some(n) = page.next {
        let more = tree.range(audit_index_key(&prefix, n.time_ms, n.index, n.pos)..=end).nth(1).is_some();
        if !more {
            page.next = None;
        }
    }
    Ok(page)
}

fn cursor_of(key: &[u8], prefix_len: usize) -> Result<Cursor> {
    let rest = &key[prefix_len.min(key.len())..];
    if rest.len() != 20 {
        return Err(LedgerError::Storage(format!("audit index key of {} bytes", key.len())));
    }
    let num = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
    let pos = u32::from_be_bytes(rest[16..20].try_into().unwrap_or([0; 4]));
    Ok(Cursor { time_ms: num(&rest[..8]), index: num(&rest[8..16]), pos })
}
