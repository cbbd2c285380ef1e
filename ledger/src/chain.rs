//! The chain: validation rules, the stored chain, its indexes, proofs over it, and its full
//! re-verification. Plain synchronous code over a key-value [`Store`]; the node runs it inside
//! its ledger raft group's state machine (the keys live in that group's sled tree, so raft
//! snapshots carry the chain), `ledger verify` runs it over a stopped node's sled directly.
//!
//! Layout (all keys start with `L`, so they never collide with the KV state machine's):
//! - `Lhead` → [`Head`]
//! - `Lb` ‖ height (u64 BE) → block header bytes
//! - `Ll` ‖ log index (u64 BE) → the entry's leaf bytes (block bodies are their leaves)
//! - `Lt` ‖ level (u8) ‖ index (u64 BE) → the hash of the perfect RFC 6962 subtree covering
//!   leaves `[index·2^level, (index+1)·2^level)`; level 0 holds the leaf hashes. About two
//!   hashes per entry; every proof is a handful of lookups.
//! - `Ln` ‖ node id (u64 BE) → [`NodeMember`]; `Lp` ‖ publisher id → [`PublisherRecord`];
//!   `Li` ‖ digest → [`ImageRecord`]: the current state the rules check against.
//! - `Las` ‖ node ‖ instance (u64 BE each) → the last admitted audit sequence number (u64 BE).
//! - Audit indexes, built on apply, one key per audit entry (batch) and name: `LaT` ‖ time ‖
//!   index, `LaN` ‖ namespace ‖ 0 ‖ time ‖ index, `LaA` ‖ actor ‖ 0 ‖ time ‖ index → the
//!   positions (u16 BE each) of the batch's records with that namespace / actor (all, for
//!   `LaT`); time is the earliest of those records' (ms, u64 BE), index the entry's log index;
//!   names hold no 0 byte, the field rules refuse control characters. `audit::audit_query` walks
//!   one.
//!
//! Determinism contract: [`apply_block`] decides validity from the stored state and the block
//! alone, and returns the writes instead of making them, so a rejected block changes nothing.
//! Every node runs it on every block and must come to the same answer.

use std::collections::{BTreeMap, HashMap};

use edgefabric_crypto::PublicKey;
use serde::{Deserialize, Serialize};

use crate::block::{self, Block, BlockHeader, MAX_BLOCK_ENTRIES};
use crate::entry::{self, Author, Entry, EntryKind};
use crate::error::{Invalid, LedgerError, Result};
use crate::merkle::{self, Hash, ProofError};

pub const HEAD_KEY: &[u8] = b"Lhead";

pub fn block_key(height: u64) -> Vec<u8> {
    key2(b"Lb", &height.to_be_bytes())
}

pub fn leaf_key(index: u64) -> Vec<u8> {
    key2(b"Ll", &index.to_be_bytes())
}

pub fn node_key(level: u8, index: u64) -> Vec<u8> {
    let mut k = b"Lt".to_vec();
    k.push(level);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn member_key(id: u64) -> Vec<u8> {
    key2(b"Ln", &id.to_be_bytes())
}

fn publisher_key(id: &str) -> Vec<u8> {
    key2(b"Lp", id.as_bytes())
}

fn image_key(digest: &str) -> Vec<u8> {
    key2(b"Li", digest.as_bytes())
}

fn audit_seq_key(node: u64, instance: u64) -> Vec<u8> {
    let mut k = b"Las".to_vec();
    k.extend_from_slice(&node.to_be_bytes());
    k.extend_from_slice(&instance.to_be_bytes());
    k
}

/// An audit index's key prefix: by time alone, or by a name (namespace or actor) then time.
pub(crate) fn audit_index_prefix(tag: &[u8], name: Option<&str>) -> Vec<u8> {
    let mut k = tag.to_vec();
    if let Some(n) = name {
        k.extend_from_slice(n.as_bytes());
        k.push(0);
    }
    k
}

pub(crate) fn audit_index_key(prefix: &[u8], time_ms: u64, index: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&time_ms.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The last audit sequence number admitted for a node's data-directory instance (0: none).
pub fn audit_last_seq(s: &dyn Store, node: u64, instance: u64) -> Result<u64> {
    match s.get(&audit_seq_key(node, instance))? {
        None => Ok(0),
        Some(v) => {
            let b: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| LedgerError::Storage("audit sequence: not 8 bytes".into()))?;
            Ok(u64::from_be_bytes(b))
        }
    }
}

fn key2(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(rest);
    k
}

/// Read access to the chain's keys.
pub trait Store {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
}

impl Store for sled::Tree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(sled::Tree::get(self, key)?.map(|v| v.to_vec()))
    }
}

impl Store for BTreeMap<Vec<u8>, Vec<u8>> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(BTreeMap::get(self, key).cloned())
    }
}

/// Writes to make: key → value, `None` to delete.
pub type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Per candidate entry of [`build_block`]: its log index, or why it was left out.
pub type Admission = std::result::Result<u64, LedgerError>;

/// Writes (`None`: delete) staged over a base store, read back through it.
pub struct Staged<'a> {
    base: &'a dyn Store,
    pub writes: Writes,
}

impl<'a> Staged<'a> {
    pub fn new(base: &'a dyn Store) -> Self {
        Staged { base, writes: BTreeMap::new() }
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }
}

impl Store for Staged<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }
}

/// The chain's tip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub height: u64,
    pub hash: Hash,
    pub log_size: u64,
    pub log_root: Hash,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMember {
    pub site: String,
    pub public_key: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublisherRecord {
    pub public_key: [u8; 32],
    /// Log index of the entry that added it.
    pub added_index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    pub publisher: String,
    /// Log index of the registration entry.
    pub registered_index: u64,
    /// Log index of the revocation entry, once revoked (final).
    pub revoked_index: Option<u64>,
}

fn read<T: serde::de::DeserializeOwned>(s: &dyn Store, key: &[u8], what: &str) -> Result<Option<T>> {
    s.get(key)?.map(|b| entry::decode(&b, what)).transpose()
}

pub fn head(s: &dyn Store) -> Result<Option<Head>> {
    read(s, HEAD_KEY, "head")
}

pub fn header(s: &dyn Store, height: u64) -> Result<Option<BlockHeader>> {
    s.get(&block_key(height))?.map(|b| BlockHeader::from_bytes(&b)).transpose()
}

pub fn leaf(s: &dyn Store, index: u64) -> Result<Option<Vec<u8>>> {
    s.get(&leaf_key(index))
}

pub fn entry(s: &dyn Store, index: u64) -> Result<Option<Entry>> {
    leaf(s, index)?.map(|b| Entry::from_leaf(&b)).transpose()
}

pub fn member(s: &dyn Store, id: u64) -> Result<Option<NodeMember>> {
    read(s, &member_key(id), "node member")
}

pub fn publisher(s: &dyn Store, id: &str) -> Result<Option<PublisherRecord>> {
    read(s, &publisher_key(id), "publisher")
}

pub fn image(s: &dyn Store, digest: &str) -> Result<Option<ImageRecord>> {
    read(s, &image_key(digest), "image")
}

/// The genesis entries for a cluster founded by `members` (id, site, node public key), in id
/// order. Every node derives them from its configuration and checks block 0 against them.
pub fn genesis_entries(members: &[(u64, String, [u8; 32])]) -> Vec<Entry> {
    let mut m = members.to_vec();
    m.sort_by_key(|(id, _, _)| *id);
    m.into_iter()
        .map(|(id, site, public_key)| Entry {
            kind: EntryKind::NodeAdded { id, site, public_key },
            author: Author::Genesis,
            signature: vec![],
        })
        .collect()
}

// ---- the RFC 6962 log over stored subtree hashes ----

fn node(s: &dyn Store, level: u8, index: u64) -> Result<Hash> {
    let b = s.get(&node_key(level, index))?.ok_or_else(|| {
        LedgerError::Storage(format!("log tree node (level {level}, index {index}) is missing"))
    })?;
    b.as_slice()
        .try_into()
        .map_err(|_| LedgerError::Storage(format!("log tree node ({level}, {index}) is not 32 bytes")))
}

/// Appends a leaf hash at `index` (the current size) and the perfect subtrees it completes.
fn append_leaf(st: &mut Staged, index: u64, hash: Hash) -> Result<()> {
    st.put(node_key(0, index), hash.to_vec());
    let mut h = hash;
    let mut level = 0u8;
    let mut i = index;
    while i & 1 == 1 {
        let left = node(st, level, i - 1)?;
        h = merkle::node_hash(&left, &h);
        level += 1;
        i >>= 1;
        st.put(node_key(level, i), h.to_vec());
    }
    Ok(())
}

/// MTH of leaves `[start, end)` from stored perfect subtrees.
fn subtree(s: &dyn Store, start: u64, end: u64) -> Result<Hash> {
    let n = end - start;
    if n == 0 {
        return Ok(merkle::empty_root());
    }
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return node(s, n.trailing_zeros() as u8, start >> n.trailing_zeros());
    }
    let k = split_point(n);
    Ok(merkle::node_hash(&subtree(s, start, start + k)?, &subtree(s, start + k, end)?))
}

fn split_point(n: u64) -> u64 {
    // The largest power of two smaller than n (n >= 2).
    1u64 << (63 - (n - 1).leading_zeros())
}

fn check_size(s: &dyn Store, size: u64) -> Result<()> {
    let have = head(s)?.map_or(0, |h| h.log_size);
    if size > have {
        return Err(LedgerError::invalid("size", format!("{size} is beyond the log's size {have}")));
    }
    Ok(())
}

/// The root of the log's first `size` entries.
pub fn root_at(s: &dyn Store, size: u64) -> Result<Hash> {
    check_size(s, size)?;
    subtree(s, 0, size)
}

/// RFC 6962 inclusion proof of entry `index` in the log's first `size` entries.
pub fn inclusion_proof(s: &dyn Store, index: u64, size: u64) -> Result<Vec<Hash>> {
    check_size(s, size)?;
    if index >= size {
        return Err(ProofError::IndexBeyondSize { index, size }.into());
    }
    let mut out = vec![];
    let (mut start, mut end, mut m) = (0u64, size, index);
    // PATH(m, D[start..end]), iteratively: the sibling subtrees from the top down, reversed.
    while end - start > 1 {
        let k = split_point(end - start);
        if m < k {
            out.push(subtree(s, start + k, end)?);
            end = start + k;
        } else {
            out.push(subtree(s, start, start + k)?);
            start += k;
            m -= k;
        }
    }
    out.reverse();
    Ok(out)
}

/// RFC 6962 consistency proof from the log's first `size1` entries to its first `size2`.
pub fn consistency_proof(s: &dyn Store, size1: u64, size2: u64) -> Result<Vec<Hash>> {
    check_size(s, size2)?;
    if size1 > size2 {
        return Err(ProofError::SizesReversed { size1, size2 }.into());
    }
    if size1 == 0 {
        return Err(ProofError::FromEmptyTree.into());
    }
    let mut out = vec![];
    let (mut start, mut end, mut m, mut whole) = (0u64, size2, size1, true);
    // SUBPROOF(m, D[start..end], whole), iteratively.
    loop {
        let n = end - start;
        if m == n {
            if !whole {
                out.push(subtree(s, start, end)?);
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            out.push(subtree(s, start + k, end)?);
            end = start + k;
        } else {
            out.push(subtree(s, start, start + k)?);
            start += k;
            m -= k;
            whole = false;
        }
    }
    out.reverse();
    Ok(out)
}

// ---- validation ----

/// A signature to check: (message, signature, key).
type SigCheck = (usize, Vec<u8>, [u8; 64], PublicKey);

/// A key, decompressed (an elliptic-curve square root: the costliest step of checking an entry
/// apart from its signature, so decompressed keys are kept per thread; few authors sign many
/// entries).
fn public_key(bytes: &[u8; 32], entry: usize) -> std::result::Result<PublicKey, Invalid> {
    thread_local! {
        static KEYS: std::cell::RefCell<HashMap<[u8; 32], PublicKey>> = std::cell::RefCell::new(HashMap::new());
    }
    if let Some(k) = KEYS.with(|c| c.borrow().get(bytes).copied()) {
        return Ok(k);
    }
    let k = PublicKey::from_bytes(bytes)
        .map_err(|e| Invalid::Rule { entry, message: format!("bad public key: {e}") })?;
    KEYS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= 4096 {
            c.clear();
        }
        c.insert(*bytes, k);
    });
    Ok(k)
}

/// A signature checked ahead: the key it was checked against, and whether it verified.
type Prechecked = ([u8; 32], bool);

/// Strict signature checks of many candidates, spread over the cores, against the authors'
/// keys in `s`: per candidate, the key checked against and the outcome (`None` where the author
/// is not in `s`, e.g. a publisher added earlier in the same block).
fn preverify(s: &dyn Store, candidates: &[Entry]) -> Result<Vec<Option<Prechecked>>> {
    let keys: Vec<Option<[u8; 32]>> = candidates
        .iter()
        .map(|e| {
            Ok(match &e.author {
                Author::Publisher(p) => publisher(s, p)?.map(|r| r.public_key),
                Author::Node(id) => member(s, *id)?.map(|m| m.public_key),
                Author::Genesis => None,
            })
        })
        .collect::<Result<_>>()?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let chunk = candidates.len().div_ceil(threads).max(1);
    Ok(std::thread::scope(|scope| {
        let handles: Vec<_> = candidates
            .chunks(chunk)
            .zip(keys.chunks(chunk))
            .map(|(es, ks)| {
                scope.spawn(move || {
                    es.iter()
                        .zip(ks)
                        .map(|(e, k)| {
                            let k = (*k)?;
                            let ok = match (public_key(&k, 0), e.signed_message()) {
                                (Ok(pk), Ok(msg)) => pk.verify(&msg, &e.signature).is_ok(),
                                _ => false,
                            };
                            Some((k, ok))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    }))
}

/// Checks entry `pos` of a block at `height` against the state in `st` (which includes the
/// block's earlier entries). Returns the signature to check, if any. Reads only.
fn check_entry(
    st: &dyn Store,
    height: u64,
    pos: usize,
    e: &Entry,
) -> std::result::Result<Option<SigCheck>, LedgerError> {
    let rule = |message: String| Invalid::Rule { entry: pos, message };
    let dup = |message: String| Invalid::Duplicate { entry: pos, message };
    e.validate_fields().map_err(|err| rule(err.to_string()))?;
    // Every admitted leaf must be readable back (`Entry::from_leaf` refuses larger ones).
    let size = e.leaf_bytes()?.len();
    if size > entry::MAX_LEAF_BYTES {
        return Err(rule(format!("the entry is {size} bytes, the limit is {}", entry::MAX_LEAF_BYTES)).into());
    }
    let role = |author: &Author| Invalid::Role {
        entry: pos,
        author: author.to_string(),
        kind: e.kind.name().to_string(),
    };
    let key = match &e.author {
        Author::Genesis => {
            if height != 0 {
                return Err(role(&e.author).into());
            }
            match &e.kind {
                EntryKind::NodeAdded { id, public_key: k, .. } if public_key(k, pos)?.is_weak() => {
                    return Err(Invalid::Genesis(format!(
                        "node {id}: a small-order public key proves nothing"
                    ))
                    .into())
                }
                EntryKind::NodeAdded { id, .. } if member(st, *id)?.is_none() => return Ok(None),
                EntryKind::NodeAdded { id, .. } => {
                    return Err(Invalid::Genesis(format!("node {id} is listed twice")).into())
                }
                _ => return Err(Invalid::Genesis("holds only the founding members".into()).into()),
            }
        }
        _ if height == 0 => {
            return Err(Invalid::Genesis("holds only the founding members, unsigned".into()).into())
        }
        Author::Node(id) => {
            let Some(m) = member(st, *id)? else {
                return Err(Invalid::UnknownAuthor { entry: pos, author: e.author.to_string() }.into());
            };
            match &e.kind {
                EntryKind::NodeAdded { id: new, public_key: k, .. } => {
                    if member(st, *new)?.is_some() {
                        return Err(dup(format!("node {new} is already a member")).into());
                    }
                    if public_key(k, pos)?.is_weak() {
                        return Err(
                            rule(format!("node {new}: a small-order public key proves nothing")).into()
                        );
                    }
                }
                EntryKind::NodeRemoved { id: gone } => {
                    if member(st, *gone)?.is_none() {
                        return Err(rule(format!("node {gone} is not a member")).into());
                    }
                }
                EntryKind::PublisherAdded { id: p, public_key: k, .. } => {
                    if publisher(st, p)?.is_some() {
                        return Err(dup(format!("publisher {p:?} is already registered")).into());
                    }
                    if public_key(k, pos)?.is_weak() {
                        return Err(rule(format!(
                            "publisher {p:?}: a small-order public key proves nothing"
                        ))
                        .into());
                    }
                }
                EntryKind::PublisherRemoved { id: p, .. } => {
                    if publisher(st, p)?.is_none() {
                        return Err(rule(format!("publisher {p:?} is not registered")).into());
                    }
                }
                EntryKind::ImageRevoked { digest, .. } => check_revocable(st, pos, digest, None)?,
                EntryKind::Audit(batch) => {
                    // validate_fields checked: non-empty, one node's instance, consecutive seqs.
                    let a = &batch[0];
                    if a.node != *id {
                        return Err(
                            rule(format!("an audit record of node {} written by node {id}", a.node)).into()
                        );
                    }
                    let last = audit_last_seq(st, a.node, a.instance)?;
                    if a.seq <= last {
                        return Err(dup(format!(
                            "audit record {} of node {} (instance {}) is already recorded (up to {last})",
                            a.seq, a.node, a.instance
                        ))
                        .into());
                    }
                    if a.seq != last + 1 {
                        return Err(rule(format!(
                            "audit record {} of node {} (instance {}) skips ahead: the next is {}",
                            a.seq,
                            a.node,
                            a.instance,
                            last + 1
                        ))
                        .into());
                    }
                }
                EntryKind::ImageRegistered { .. } => return Err(role(&e.author).into()),
            }
            m.public_key
        }
        Author::Publisher(p) => {
            let Some(rec) = publisher(st, p)? else {
                return Err(Invalid::UnknownAuthor { entry: pos, author: e.author.to_string() }.into());
            };
            match &e.kind {
                EntryKind::ImageRegistered { digest, publisher: named, .. } => {
                    if named != p {
                        return Err(rule(format!("signed by publisher {p:?} but names {named:?}")).into());
                    }
                    if image(st, digest)?.is_some() {
                        return Err(dup(format!("image {digest} is already registered")).into());
                    }
                }
                EntryKind::ImageRevoked { digest, .. } => check_revocable(st, pos, digest, Some(p))?,
                _ => return Err(role(&e.author).into()),
            }
            rec.public_key
        }
    };
    let sig: [u8; 64] = e.signature.as_slice().try_into().map_err(|_| Invalid::Signature { entry: pos })?;
    Ok(Some((pos, e.signed_message()?, sig, public_key(&key, pos)?)))
}

fn check_revocable(st: &dyn Store, pos: usize, digest: &str, by: Option<&str>) -> Result<()> {
    let rule = |message: String| LedgerError::from(Invalid::Rule { entry: pos, message });
    let Some(img) = image(st, digest)? else {
        return Err(rule(format!("image {digest} is not registered")));
    };
    if img.revoked_index.is_some() {
        return Err(
            Invalid::Duplicate { entry: pos, message: format!("image {digest} is already revoked") }.into()
        );
    }
    if let Some(p) = by {
        if img.publisher != p {
            return Err(rule(format!("image {digest} was registered by {:?}, not {p:?}", img.publisher)));
        }
    }
    Ok(())
}

impl From<Invalid> for LedgerError {
    /// Height unknown here; [`apply_block`] and [`build_block`] put it in.
    fn from(reason: Invalid) -> Self {
        LedgerError::InvalidBlock { height: u64::MAX, reason }
    }
}

/// Applies an entry's effects on the state and appends it to the log at `index`.
fn admit(st: &mut Staged, e: &Entry, index: u64) -> Result<Hash> {
    match &e.kind {
        EntryKind::NodeAdded { id, site, public_key } => st.put(
            member_key(*id),
            entry::encode(&NodeMember { site: site.clone(), public_key: *public_key })?,
        ),
        EntryKind::NodeRemoved { id } => st.delete(member_key(*id)),
        EntryKind::PublisherAdded { id, public_key, .. } => st.put(
            publisher_key(id),
            entry::encode(&PublisherRecord { public_key: *public_key, added_index: index })?,
        ),
        EntryKind::PublisherRemoved { id, .. } => st.delete(publisher_key(id)),
        EntryKind::ImageRegistered { name, digest, publisher } => st.put(
            image_key(digest),
            entry::encode(&ImageRecord {
                name: name.clone(),
                publisher: publisher.clone(),
                registered_index: index,
                revoked_index: None,
            })?,
        ),
        EntryKind::ImageRevoked { digest, .. } => {
            let mut img = image(st, digest)?
                .ok_or_else(|| LedgerError::Storage(format!("image {digest} vanished while revoking it")))?;
            img.revoked_index = Some(index);
            st.put(image_key(digest), entry::encode(&img)?);
        }
        EntryKind::Audit(batch) => {
            if let Some(last) = batch.last() {
                st.put(audit_seq_key(last.node, last.instance), last.seq.to_be_bytes().to_vec());
            }
            // One key per (index, name) for the whole batch, not per record: sled pays per
            // insert, and a batch holds hundreds of records of few namespaces and actors.
            let mut keys: BTreeMap<Vec<u8>, (u64, Vec<u8>)> = BTreeMap::new();
            for (pos, a) in batch.iter().enumerate() {
                for prefix in [
                    audit_index_prefix(b"LaT", None),
                    audit_index_prefix(b"LaN", Some(&a.ns)),
                    audit_index_prefix(b"LaA", Some(&a.actor)),
                ] {
                    let (time, positions) = keys.entry(prefix).or_insert((a.time_ms, vec![]));
                    *time = (*time).min(a.time_ms);
                    positions.extend_from_slice(&(pos as u16).to_be_bytes());
                }
            }
            for (prefix, (time, positions)) in keys {
                st.put(audit_index_key(&prefix, time, index), positions);
            }
        }
    }
    let leaf = e.leaf_bytes()?;
    let h = merkle::leaf_hash(&leaf);
    st.put(leaf_key(index), leaf);
    append_leaf(st, index, h)?;
    Ok(h)
}

/// What a node expects of the genesis block: the founding members' entries, when its
/// configuration lists them with keys (`None`: accept any well-formed genesis).
pub type GenesisCheck<'a> = Option<&'a [Entry]>;

/// How [`apply_block`] checks signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signatures {
    /// Batch verification (the fast path for blocks made by others).
    Batch,
    /// Already checked strictly by this node when it built the block.
    Skip,
}

/// Validates `block` as the next block of the chain in `s` and returns the writes that append
/// it and the new head. Changes nothing itself: an invalid block leaves no trace.
pub fn apply_block(
    s: &dyn Store,
    block: &Block,
    genesis: GenesisCheck,
    sigs: Signatures,
) -> Result<(Writes, Head)> {
    let (writes, head, _) = apply_block_inner(s, block, genesis, sigs == Signatures::Batch)?;
    Ok((writes, head))
}

/// `apply_block`, checking the signatures itself (`verify`) or returning them unchecked for
/// the caller to check (full verification checks them on other threads).
fn apply_block_inner(
    s: &dyn Store,
    block: &Block,
    genesis: GenesisCheck,
    verify: bool,
) -> Result<(Writes, Head, Vec<SigCheck>)> {
    let h = &block.header;
    let bad = |reason: Invalid| LedgerError::InvalidBlock { height: h.height, reason };
    let with_height = |e: LedgerError| match e {
        LedgerError::InvalidBlock { reason, .. } => bad(reason),
        other => other,
    };
    let prev = head(s)?;
    let expected = prev.as_ref().map_or(0, |p| p.height + 1);
    if h.height != expected {
        return Err(bad(Invalid::Height { expected, got: h.height }));
    }
    if h.prev != prev.as_ref().map_or([0; 32], |p| p.hash) {
        return Err(bad(Invalid::PrevHash { height: h.height }));
    }
    let n = block.entries.len();
    if n == 0 || n > MAX_BLOCK_ENTRIES || h.entry_count as usize != n {
        return Err(bad(Invalid::EntryCount { max: MAX_BLOCK_ENTRIES, got: n }));
    }
    if h.height == 0 {
        if let Some(expected) = genesis {
            if block.entries != expected {
                return Err(bad(Invalid::Genesis(
                    "the founding members differ from this node's configuration".into(),
                )));
            }
        }
    }
    let base_size = prev.as_ref().map_or(0, |p| p.log_size);
    let mut st = Staged::new(s);
    let mut checks: Vec<SigCheck> = Vec::with_capacity(n);
    let mut leaf_hashes = Vec::with_capacity(n);
    for (pos, e) in block.entries.iter().enumerate() {
        if let Some(c) = check_entry(&st, h.height, pos, e).map_err(with_height)? {
            checks.push(c);
        }
        leaf_hashes.push(admit(&mut st, e, base_size + pos as u64)?);
    }
    if verify {
        verify_signatures(&checks).map_err(bad)?;
    }
    if block::entry_root(&leaf_hashes) != h.entry_root {
        return Err(bad(Invalid::EntryRoot));
    }
    let size = base_size + n as u64;
    if h.log_size != size {
        return Err(bad(Invalid::LogSize { expected: size, got: h.log_size }));
    }
    if subtree(&st, 0, size)? != h.log_root {
        return Err(bad(Invalid::LogRoot));
    }
    let new_head = Head { height: h.height, hash: h.hash()?, log_size: size, log_root: h.log_root };
    st.put(block_key(h.height), h.to_bytes()?);
    st.put(HEAD_KEY.to_vec(), entry::encode(&new_head)?);
    Ok((st.writes, new_head, checks))
}

/// Batch-verifies; on failure, finds the first bad signature one by one (strictly).
fn verify_signatures(checks: &[SigCheck]) -> std::result::Result<(), Invalid> {
    let msgs: Vec<&[u8]> = checks.iter().map(|c| c.1.as_slice()).collect();
    let sigs: Vec<[u8; 64]> = checks.iter().map(|c| c.2).collect();
    let keys: Vec<PublicKey> = checks.iter().map(|c| c.3).collect();
    if edgefabric_crypto::verify_batch(&msgs, &sigs, &keys).is_ok() {
        return Ok(());
    }
    for (pos, msg, sig, key) in checks {
        if key.verify(msg, sig).is_err() {
            return Err(Invalid::Signature { entry: *pos });
        }
    }
    // Every signature verifies alone but the batch failed: refuse rather than guess.
    Err(Invalid::Signature { entry: checks.first().map_or(0, |c| c.0) })
}

/// Builds the next block from candidate entries, leaving out (and reporting) each that breaks
/// a rule or whose signature does not verify strictly. Returns `None` for the block if no entry
/// is valid. Results are per candidate: its log index, or why it was left out.
pub fn build_block(
    s: &dyn Store,
    candidates: &[Entry],
    time_ms: u64,
    proposer: u64,
) -> Result<(Option<Block>, Vec<Admission>)> {
    let prev = head(s)?;
    let height = prev.as_ref().map_or(0, |p| p.height + 1);
    let base_size = prev.as_ref().map_or(0, |p| p.log_size);
    let mut st = Staged::new(s);
    let mut results = Vec::with_capacity(candidates.len());
    let mut entries = vec![];
    let mut leaf_hashes = vec![];
    // The strict signature checks, in parallel first where the author's key is already known.
    let pre = if candidates.len() >= 64 { preverify(s, candidates)? } else { vec![None; candidates.len()] };
    for (i, e) in candidates.iter().enumerate() {
        if entries.len() == MAX_BLOCK_ENTRIES {
            results.push(Err(LedgerError::Storage("block full; submit again".into())));
            continue;
        }
        let pos = entries.len();
        let checked = check_entry(&st, height, pos, e).and_then(|c| match c {
            Some((_, msg, sig, key)) => {
                let ok = match pre.get(i).copied().flatten() {
                    // Checked against the same key the rules resolved now.
                    Some((k, ok)) if k == key.to_bytes() => ok,
                    _ => key.verify(&msg, &sig).is_ok(),
                };
                if ok {
                    Ok(())
                } else {
                    Err(Invalid::Signature { entry: pos }.into())
                }
            }
            None => Ok(()),
        });
        match checked {
            Ok(()) => {
                let index = base_size + pos as u64;
                leaf_hashes.push(admit(&mut st, e, index)?);
                entries.push(e.clone());
                results.push(Ok(index));
            }
            Err(LedgerError::InvalidBlock { reason, .. }) => {
                results.push(Err(LedgerError::InvalidBlock { height, reason }))
            }
            Err(other) => results.push(Err(other)),
        }
    }
    if entries.is_empty() {
        return Ok((None, results));
    }
    let size = base_size + entries.len() as u64;
    let header = BlockHeader {
        height,
        prev: prev.as_ref().map_or([0; 32], |p| p.hash),
        time_ms,
        proposer,
        entry_count: entries.len() as u32,
        entry_root: block::entry_root(&leaf_hashes),
        log_size: size,
        log_root: subtree(&st, 0, size)?,
    };
    Ok((Some(Block { header, entries }), results))
}

/// A block as stored: its header and its entries (read back from their leaves).
pub fn stored_block(s: &dyn Store, height: u64) -> Result<Option<Block>> {
    let Some(header) = header(s, height)? else { return Ok(None) };
    let first = header
        .log_size
        .checked_sub(u64::from(header.entry_count))
        .ok_or_else(|| LedgerError::Storage(format!("block {height}: entry count exceeds the log size")))?;
    let mut entries = Vec::with_capacity(header.entry_count as usize);
    for i in first..header.log_size {
        let e = entry(s, i)?.ok_or_else(|| LedgerError::Storage(format!("entry {i} is missing")))?;
        entries.push(e);
    }
    Ok(Some(Block { header, entries }))
}

// ---- verification of a stored chain ----

/// Quick start-up check: the head record, the head block's header and the stored log tree
/// agree, and the head links to the block before it. Catches a truncated or rewritten tip and
/// a damaged tree; [`verify_chain`] catches everything.
pub fn verify_head(s: &dyn Store) -> Result<Option<Head>> {
    let corrupt = |height: u64, reason: String| LedgerError::Corrupt { height, reason };
    let Some(head) = head(s).map_err(|e| corrupt(0, format!("head record: {e}")))? else {
        return Ok(None);
    };
    let h = header(s, head.height)
        .map_err(|e| corrupt(head.height, e.to_string()))?
        .ok_or_else(|| corrupt(head.height, "the head block is missing".into()))?;
    if h.hash()? != head.hash || h.log_size != head.log_size || h.log_root != head.log_root {
        return Err(corrupt(head.height, "the head block does not match the head record".into()));
    }
    let root = subtree(s, 0, head.log_size).map_err(|e| corrupt(head.height, e.to_string()))?;
    if root != head.log_root {
        return Err(corrupt(head.height, "the stored log tree does not lead to the head's root".into()));
    }
    if head.height > 0 {
        let p = header(s, head.height - 1)
            .map_err(|e| corrupt(head.height - 1, e.to_string()))?
            .ok_or_else(|| corrupt(head.height - 1, "the block is missing".into()))?;
        if p.hash()? != h.prev {
            return Err(corrupt(head.height, Invalid::PrevHash { height: head.height }.to_string()));
        }
    }
    Ok(Some(head))
}

/// Replays a stored chain block by block from genesis, re-validating every rule and signature,
/// and checks that every stored record (leaves, tree nodes, headers, head and indexes) is
/// exactly what the replay produces, with nothing extra. Returns the verified head; on the
/// first problem, [`LedgerError::Corrupt`] naming the block.
///
/// Memory: the replayed indexes (members, publishers, images) are held in memory; leaves and
/// tree nodes are read back from the store once they have been checked.
pub fn verify_chain(tree: &sled::Tree, genesis: GenesisCheck) -> Result<Option<Head>> {
    let corrupt = |height: u64, reason: String| LedgerError::Corrupt { height, reason };
    let stored_head = head(tree).map_err(|e| corrupt(0, format!("head record: {e}")))?;
    let last_block = match tree.scan_prefix(b"Lb").keys().next_back() {
        Some(k) => {
            let k = k?;
            let b: [u8; 8] = k[2..].try_into().map_err(|_| corrupt(0, "a malformed block key".into()))?;
            Some(u64::from_be_bytes(b))
        }
        None => None,
    };
    let Some(target) = [stored_head.as_ref().map(|h| h.height), last_block].into_iter().flatten().max()
    else {
        // Nothing stored. Leaves or tree nodes without blocks are debris of tampering.
        if tree.scan_prefix(b"Ll").next().is_some() || tree.scan_prefix(b"Lt").next().is_some() {
            return Err(corrupt(0, "entries are stored but no block".into()));
        }
        return Ok(None);
    };
    // Signatures are checked on worker threads while this thread replays the rules; the first
    // bad block is the lowest height either side reports.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
    let (tx, rx) = std::sync::mpsc::sync_channel::<SigBatch>(workers * 2);
    let rx = std::sync::Mutex::new(rx);
    let bad_sig: std::sync::Mutex<Option<(u64, Invalid)>> = std::sync::Mutex::new(None);
    let replayed = std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let batch = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                    Ok(b) => b,
                    Err(_) => return,
                };
                if let Some((height, reason)) = batch.first_bad() {
                    let mut b = bad_sig.lock().unwrap_or_else(|p| p.into_inner());
                    if b.as_ref().is_none_or(|(h, _)| height < *h) {
                        *b = Some((height, reason));
                    }
                }
            });
        }
        let r = replay_chain(tree, genesis, target, &tx, &bad_sig);
        drop(tx);
        r
    });
    if let Some((height, reason)) = bad_sig.into_inner().unwrap_or_else(|p| p.into_inner()) {
        let replay_height = match &replayed {
            Err(LedgerError::Corrupt { height, .. }) => *height,
            _ => u64::MAX,
        };
        if height <= replay_height {
            return Err(corrupt(height, format!("block {height} is invalid: {reason}")));
        }
    }
    replayed
}

/// Signatures to check, from consecutive blocks: (height, check).
struct SigBatch(Vec<(u64, SigCheck)>);

impl SigBatch {
    /// The first bad signature, if any (batch-verified; one by one only on failure).
    fn first_bad(&self) -> Option<(u64, Invalid)> {
        let msgs: Vec<&[u8]> = self.0.iter().map(|(_, c)| c.1.as_slice()).collect();
        let sigs: Vec<[u8; 64]> = self.0.iter().map(|(_, c)| c.2).collect();
        let keys: Vec<PublicKey> = self.0.iter().map(|(_, c)| c.3).collect();
        if edgefabric_crypto::verify_batch(&msgs, &sigs, &keys).is_ok() {
            return None;
        }
        for (height, (pos, msg, sig, key)) in &self.0 {
            if key.verify(msg, sig).is_err() {
                return Some((*height, Invalid::Signature { entry: *pos }));
            }
        }
        self.0.first().map(|(h, c)| (*h, Invalid::Signature { entry: c.0 }))
    }
}

/// Signatures per batch handed to a worker.
const SIG_BATCH: usize = 2048;

fn replay_chain(
    tree: &sled::Tree,
    genesis: GenesisCheck,
    target: u64,
    tx: &std::sync::mpsc::SyncSender<SigBatch>,
    bad_sig: &std::sync::Mutex<Option<(u64, Invalid)>>,
) -> Result<Option<Head>> {
    let mut nodes = MemTree::default();
    let replayed = replay_blocks(tree, genesis, target, tx, bad_sig, &mut nodes);
    let replay_bad = match &replayed {
        Ok(_) => None,
        Err(LedgerError::Corrupt { height, .. }) => Some(*height),
        Err(_) => return replayed,
    };
    // The stored log tree against the replay's, wherever the replay got to; the first bad
    // block is the lower of the two findings.
    if let Some((height, reason)) = nodes.compare(tree, replay_bad.is_none())? {
        if replay_bad.is_none_or(|b| height <= b) {
            return Err(LedgerError::Corrupt { height, reason });
        }
    }
    replayed
}

/// The log tree as the replay computes it: every perfect subtree hash by level (~64 MB for a
/// million entries), and where each block ends, to name the block a tree node belongs to.
#[derive(Default)]
struct MemTree {
    levels: Vec<Vec<Hash>>,
    block_ends: Vec<u64>,
}

impl MemTree {
    fn get(&self, level: u8, index: u64) -> Option<&Hash> {
        self.levels.get(level as usize)?.get(usize::try_from(index).ok()?)
    }

    fn push(&mut self, level: u8, index: u64, hash: Hash) -> Result<()> {
        let l = level as usize;
        while self.levels.len() <= l {
            self.levels.push(vec![]);
        }
        if self.levels[l].len() as u64 != index {
            return Err(LedgerError::Storage(format!(
                "log tree node ({level}, {index}) computed out of order"
            )));
        }
        self.levels[l].push(hash);
        Ok(())
    }

    /// The block that completed the node (the block holding its last leaf).
    fn block_of(&self, level: u8, index: u64) -> u64 {
        let last_leaf = ((index + 1) << level) - 1;
        self.block_ends.partition_point(|end| *end <= last_leaf) as u64
    }

    /// Compares the stored tree nodes with the computed ones (in one sequential scan). With
    /// `complete`, the stored nodes must be exactly the computed ones; otherwise only the
    /// computed ones are checked. Returns the first bad block and why.
    fn compare(&self, tree: &sled::Tree, complete: bool) -> Result<Option<(u64, String)>> {
        let mut first: Option<(u64, String)> = None;
        let mut note = |h: u64, why: String| {
            if first.as_ref().is_none_or(|(f, _)| h < *f) {
                first = Some((h, why));
            }
        };
        let mut next: Vec<u64> = vec![0; self.levels.len()];
        let last_block = self.block_ends.len().saturating_sub(1) as u64;
        for kv in tree.scan_prefix(b"Lt") {
            let (k, v) = kv?;
            let (level, index) = match (k.get(2), k.get(3..11).and_then(|b| <[u8; 8]>::try_from(b).ok())) {
                (Some(l), Some(i)) if k.len() == 11 => (*l, u64::from_be_bytes(i)),
                _ => {
                    note(last_block, format!("a malformed log tree key {}", show_key(&k)));
                    continue;
                }
            };
            match self.get(level, index) {
                Some(h) => {
                    let want = next[level as usize];
                    if index > want {
                        note(
                            self.block_of(level, want),
                            format!("log tree node (level {level}, index {want}) is missing"),
                        );
                    }
                    next[level as usize] = index + 1;
                    if h.as_slice() != v.as_ref() {
                        note(
                            self.block_of(level, index),
                            format!("stored {} differs from the replay", show_key(&k)),
                        );
                    }
                }
                None if complete => note(last_block, "records are stored beyond the chain's head".into()),
                None => {}
            }
        }
        if complete {
            for (l, hashes) in self.levels.iter().enumerate() {
                if next[l] < hashes.len() as u64 {
                    note(
                        self.block_of(l as u8, next[l]),
                        format!("log tree node (level {l}, index {}) is missing", next[l]),
                    );
                }
            }
        }
        Ok(first)
    }
}

fn replay_blocks(
    tree: &sled::Tree,
    genesis: GenesisCheck,
    target: u64,
    tx: &std::sync::mpsc::SyncSender<SigBatch>,
    bad_sig: &std::sync::Mutex<Option<(u64, Invalid)>>,
    nodes: &mut MemTree,
) -> Result<Option<Head>> {
    let corrupt = |height: u64, reason: String| LedgerError::Corrupt { height, reason };
    let mut mem: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut head_now: Option<Head> = None;
    let mut pending: Vec<(u64, SigCheck)> = Vec::with_capacity(SIG_BATCH);
    for height in 0..=target {
        // A worker found a bad signature already: everything after it is moot.
        if bad_sig.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|(h, _)| *h < height) {
            return Ok(None);
        }
        let bytes =
            tree.get(block_key(height))?.ok_or_else(|| corrupt(height, "the block is missing".into()))?;
        let header = BlockHeader::from_bytes(&bytes).map_err(|e| corrupt(height, e.to_string()))?;
        if header.height != height {
            return Err(corrupt(height, format!("holds the header of block {}", header.height)));
        }
        let base = head_now.as_ref().map_or(0, |h| h.log_size);
        if header.log_size < base || header.log_size - base != u64::from(header.entry_count) {
            return Err(corrupt(height, "the header's log size and entry count disagree".into()));
        }
        // The block's leaves, in one range scan.
        let mut leaves = Vec::with_capacity(header.entry_count as usize);
        for kv in tree.range(leaf_key(base)..leaf_key(header.log_size)) {
            let (k, v) = kv?;
            let i = base + leaves.len() as u64;
            if k.as_ref() != leaf_key(i).as_slice() {
                return Err(corrupt(height, format!("entry {i} is missing")));
            }
            leaves.push(v);
        }
        if (leaves.len() as u64) < u64::from(header.entry_count) {
            return Err(corrupt(height, format!("entry {} is missing", base + leaves.len() as u64)));
        }
        let mut entries = Vec::with_capacity(leaves.len());
        for (j, leaf) in leaves.iter().enumerate() {
            let i = base + j as u64;
            entries.push(Entry::from_leaf(leaf).map_err(|e| corrupt(height, format!("entry {i}: {e}")))?);
        }
        let block = Block { header, entries };
        let view = Replay { nodes, mem: &mem };
        let (writes, new_head, checks) =
            apply_block_inner(&view, &block, genesis, false).map_err(|e| corrupt(height, e.to_string()))?;
        pending.extend(checks.into_iter().map(|c| (height, c)));
        if pending.len() >= SIG_BATCH {
            let batch = SigBatch(std::mem::replace(&mut pending, Vec::with_capacity(SIG_BATCH)));
            if tx.send(batch).is_err() {
                return Err(LedgerError::Storage("signature workers stopped".into()));
            }
        }
        for (k, v) in writes {
            let v_ref = v.as_deref();
            if k.starts_with(b"Lt") {
                let (level, index) = (k[2], u64::from_be_bytes(k[3..11].try_into().unwrap_or_default()));
                let hash: Hash = v_ref
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| LedgerError::Storage("the replay wrote a malformed tree node".into()))?;
                nodes.push(level, index, hash)?;
            } else if k.starts_with(b"Ll") {
                let i = u64::from_be_bytes(k[2..10].try_into().unwrap_or_default());
                if leaves.get((i - base) as usize).map(|l| l.as_ref()) != v_ref {
                    return Err(corrupt(height, format!("stored entry {i} is not in canonical form")));
                }
            } else if k.starts_with(b"Lb") {
                if Some(bytes.as_ref()) != v_ref {
                    return Err(corrupt(height, "the stored header is not in canonical form".into()));
                }
            } else {
                match v {
                    Some(v) => mem.insert(k, v),
                    None => mem.remove(&k),
                };
            }
        }
        nodes.block_ends.push(new_head.log_size);
        head_now = Some(new_head);
    }
    if !pending.is_empty() && tx.send(SigBatch(pending)).is_err() {
        return Err(LedgerError::Storage("signature workers stopped".into()));
    }
    let head_now = head_now.ok_or_else(|| corrupt(0, "no block".into()))?;
    // The indexes and head must be exactly the replay's, and nothing may be stored beyond it.
    for prefix in [&b"Ln"[..], b"Lp", b"Li", HEAD_KEY] {
        let stored: Vec<(Vec<u8>, Vec<u8>)> = tree
            .scan_prefix(prefix)
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()?;
        let mut replayed: Vec<(Vec<u8>, Vec<u8>)> =
            mem.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())).collect();
        replayed.sort();
        if stored != replayed {
            return Err(corrupt(
                target,
                format!("the {} records differ from the replayed chain", show_key(prefix)),
            ));
        }
    }
    if tree.scan_prefix(b"Ll").count() as u64 != head_now.log_size {
        return Err(corrupt(target, "records are stored beyond the chain's head".into()));
    }
    Ok(Some(head_now))
}

fn show_key(k: &[u8]) -> String {
    match k.get(..2) {
        Some(b"Lb") if k.len() == 10 => {
            format!("block header {}", u64::from_be_bytes(k[2..10].try_into().unwrap_or_default()))
        }
        Some(b"Ll") if k.len() == 10 => {
            format!("entry {}", u64::from_be_bytes(k[2..10].try_into().unwrap_or_default()))
        }
        Some(b"Lt") if k.len() == 11 => format!(
            "log tree node (level {}, index {})",
            k[2],
            u64::from_be_bytes(k[3..11].try_into().unwrap_or_default())
        ),
        _ => String::from_utf8_lossy(k).into_owned(),
    }
}

/// The replay's view: the indexes and the log tree as replayed so far (in memory).
struct Replay<'a> {
    nodes: &'a MemTree,
    mem: &'a HashMap<Vec<u8>, Vec<u8>>,
}

impl Store for Replay<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if key.starts_with(b"Lt") && key.len() == 11 {
            let index = u64::from_be_bytes(key[3..11].try_into().unwrap_or_default());
            return Ok(self.nodes.get(key[2], index).map(|h| h.to_vec()));
        }
        Ok(self.mem.get(key).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn log_of(n: u64) -> (BTreeMap<Vec<u8>, Vec<u8>>, Vec<Hash>) {
        let mem: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut st = Staged::new(&mem);
        let mut leaves = vec![];
        for i in 0..n {
            let h = merkle::leaf_hash(&i.to_le_bytes());
            append_leaf(&mut st, i, h).unwrap();
            leaves.push(h);
        }
        let head = Head { height: 0, hash: [0; 32], log_size: n, log_root: [0; 32] };
        st.put(HEAD_KEY.to_vec(), entry::encode(&head).unwrap());
        let out = st.writes.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect();
        (out, leaves)
    }

    #[test]
    fn split_point_is_the_largest_smaller_power_of_two() {
        for (n, k) in [(2, 1), (3, 2), (4, 2), (5, 4), (8, 4), (9, 8), (1 << 40, 1 << 39)] {
            assert_eq!(split_point(n), k, "n = {n}");
        }
    }

    #[test]
    fn about_two_stored_hashes_per_leaf() {
        let (store, _) = log_of(1000);
        let nodes = store.keys().filter(|k| k.starts_with(b"Lt")).count();
        assert_eq!(nodes, 1994); // 1000 + 500 + 250 + 125 + 62 + 31 + 15 + 7 + 3 + 1
    }

    #[test]
    fn sizes_beyond_the_log_are_refused() {
        let (store, _) = log_of(5);
        assert!(matches!(root_at(&store, 6), Err(LedgerError::Invalid { field: "size", .. })));
        assert!(matches!(inclusion_proof(&store, 5, 5), Err(LedgerError::Proof(_))));
        assert!(matches!(consistency_proof(&store, 3, 2), Err(LedgerError::Proof(_))));
        assert!(matches!(consistency_proof(&store, 0, 2), Err(LedgerError::Proof(_))));
        assert!(inclusion_proof(&store, 0, 6).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The stored-subtree proofs are exactly the RFC's reference proofs, and they verify.
        #[test]
        fn fast_proofs_match_the_reference(n in 1u64..300, a in 0u64..300, b in 0u64..300) {
            let (store, leaves) = log_of(n);
            let size = 1 + b % n;
            let index = a % size;
            let set = &leaves[..size as usize];
            prop_assert_eq!(root_at(&store, size).unwrap(), merkle::root(set));
            let fast = inclusion_proof(&store, index, size).unwrap();
            prop_assert_eq!(&fast, &merkle::inclusion_proof(set, index).unwrap());
            let proof: Vec<Vec<u8>> = fast.iter().map(|h| h.to_vec()).collect();
            prop_assert!(merkle::verify_inclusion(index, size, &leaves[index as usize], &proof, &merkle::root(set)).is_ok());
            let size1 = 1 + a % size;
            let fast = consistency_proof(&store, size1, size).unwrap();
            prop_assert_eq!(&fast, &merkle::consistency_proof(set, size1).unwrap());
            let proof: Vec<Vec<u8>> = fast.iter().map(|h| h.to_vec()).collect();
            prop_assert!(merkle::verify_consistency(size1, size, &proof, &merkle::root(&leaves[..size1 as usize]), &merkle::root(set)).is_ok());
        }
    }
}
