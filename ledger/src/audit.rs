//! Auditors' queries over the audit records in the chain, served from the indexes the chain
//! builds on apply (`LaT`, `LaN`, `LaA`; see `chain`). Records come back in (time, log index)
//! order with their log index, so each can be proven against a checkpoint with an inclusion
//! proof.
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
    /// Resume after this (time, log index), the previous page's `next`.
    pub after: Option<Cursor>,
    pub limit: usize,
}

/// A position in an audit index: (time in ms, log index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub time_ms: u64,
    pub index: u64,
}

impl Cursor {
    /// The cursor's text form in `next`: `<time_ms>-<index>`.
    pub fn parse(s: &str) -> Result<Cursor> {
        let bad =
            || LedgerError::invalid("after", format!("{s:?} is not a cursor from a previous page's next"));
        let (t, i) = s.split_once('-').ok_or_else(bad)?;
        Ok(Cursor { time_ms: t.parse().map_err(|_| bad())?, index: i.parse().map_err(|_| bad())? })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.time_ms, self.index)
    }
}

#[derive(Debug, Clone)]
pub struct AuditHit {
    pub index: u64,
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
    let mut start = audit_index_key(&prefix, q.from_ms, 0);
    if let Some(c) = q.after {
        // Strictly after the cursor.
        let resume = match c.index.checked_add(1) {
            Some(i) => audit_index_key(&prefix, c.time_ms, i),
            None => audit_index_key(&prefix, c.time_ms.saturating_add(1), 0),
        };
        start = start.max(resume);
    }
    let end = audit_index_key(&prefix, q.to_ms, u64::MAX);
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
        let EntryKind::Audit(record) = &entry.kind else {
            return Err(LedgerError::Storage(format!(
                "audit index names log index {}, not an audit record",
                cursor.index
            )));
        };
        let keep = q.ns.as_ref().is_none_or(|v| *v == record.ns)
            && q.actor.as_ref().is_none_or(|v| *v == record.actor)
            && q.action.as_ref().is_none_or(|v| *v == record.action)
            && q.result.as_ref().is_none_or(|v| *v == record.result);
        if keep {
            let record = record.clone();
            page.records.push(AuditHit { index: cursor.index, record, entry });
        }
        if page.records.len() == q.limit || scanned >= scan_budget.max(1) {
            page.next = Some(cursor);
            break;
        }
    }
    // A page that ended exactly at the range's end has nothing after it.
    if let Some(n) = page.next {
        let more = tree.range(audit_index_key(&prefix, n.time_ms, n.index)..=end).nth(1).is_some();
        if !more {
            page.next = None;
        }
    }
    Ok(page)
}

fn cursor_of(key: &[u8], prefix_len: usize) -> Result<Cursor> {
    let rest = &key[prefix_len.min(key.len())..];
    if rest.len() != 16 {
        return Err(LedgerError::Storage(format!("audit index key of {} bytes", key.len())));
    }
    let (t, i) = rest.split_at(8);
    let num = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
    Ok(Cursor { time_ms: num(t), index: num(i) })
}
