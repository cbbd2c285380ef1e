//! Ledger entries: typed, each signed by its author, and their canonical encodings.
//!
//! An entry's *leaf bytes* (what the RFC 6962 log commits to, `leaf_base64` in the REST API)
//! are [`Entry::leaf_bytes`]: bincode 2 (standard configuration: little-endian varints) of the
//! [`Entry`] struct. The encoding is deterministic and strictly decoded (no trailing bytes), so
//! one entry has exactly one leaf.
//!
//! What each author signs:
//! - a publisher registering an image signs [`image_message`] (what `edgefabric image sign`
//!   prints the signature of); revoking one, [`revocation_message`];
//! - a node signs [`node_message`]: a domain tag and the bincode of (kind, author).
//!
//! The genesis block's entries are unsigned: they are the cluster's founding members, which
//! every node checks against its own configuration (the trust root, like a Fabric channel's
//! genesis block).

use serde::{Deserialize, Serialize};

use crate::error::{LedgerError, Result};

/// Longest image name, publisher id, reason or audit field accepted (bytes).
pub const MAX_FIELD_BYTES: usize = 512;
/// Largest leaf accepted when decoding.
pub const MAX_LEAF_BYTES: usize = 16 * 1024;

/// Who wrote an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Author {
    /// The cluster's founding configuration (genesis block only).
    Genesis,
    /// A node, by id, signing with its node key.
    Node(u64),
    /// A registered publisher, by id, signing with its publisher key.
    Publisher(String),
}

impl std::fmt::Display for Author {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Author::Genesis => write!(f, "genesis"),
            Author::Node(id) => write!(f, "node {id}"),
            Author::Publisher(p) => write!(f, "publisher {p:?}"),
        }
    }
}

/// Most records in one audit entry.
pub const MAX_AUDIT_BATCH: usize = 1024;
/// Most time between the earliest and the latest record of one audit entry (the indexes rely
/// on it to find a batch's records by time).
pub const AUDIT_BATCH_SPAN_MS: u64 = 60_000;

/// One storage access, as recorded for auditors (issue 6 writes these). A node writes them in
/// batches (`EntryKind::Audit`): one signature and one leaf for many accesses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The token subject that made the request.
    pub actor: String,
    /// The node that served it (must be the entry's author).
    pub node: u64,
    pub ns: String,
    /// The key, or for confidential namespaces `None` and `key_hash` set instead.
    pub key: Option<String>,
    pub key_hash: Option<String>,
    pub action: String,
    /// "allowed" or "denied".
    pub result: String,
    /// The answer's HTTP status; 0 for "received": a state-changing request, authorized and
    /// about to take effect (its outcome follows in a second record).
    pub status: u16,
    /// Milliseconds since the Unix epoch, at the serving node.
    pub time_ms: u64,
    /// The serving node's data-directory instance: a node whose disk was replaced starts a new
    /// sequence.
    pub instance: u64,
    /// Position in the serving node's audit queue for this instance: 1, 2, 3, ... The chain
    /// admits each (node, instance) sequence in order and without gaps, so a record cannot be
    /// recorded twice, and a missing one would stop the node's later records (never silently
    /// skipped).
    pub seq: u64,
}

/// The `result` of an access that was served.
pub const AUDIT_ALLOWED: &str = "allowed";
/// The `result` of an access that was refused (authentication or authorization).
pub const AUDIT_DENIED: &str = "denied";

/// What an entry records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    NodeAdded {
        id: u64,
        site: String,
        public_key: [u8; 32],
    },
    NodeRemoved {
        id: u64,
    },
    /// `by`: the admin's token subject, for the record.
    PublisherAdded {
        id: String,
        public_key: [u8; 32],
        by: String,
    },
    PublisherRemoved {
        id: String,
        by: String,
    },
    ImageRegistered {
        name: String,
        digest: String,
        publisher: String,
    },
    /// By the image's publisher (signing [`revocation_message`]) or by a node for an admin
    /// (`by` names the admin).
    ImageRevoked {
        digest: String,
        reason: String,
        by: String,
    },
    /// A batch of one node's audit records: consecutive seqs of one (node, instance).
    Audit(Vec<AuditRecord>),
}

impl EntryKind {
    /// The kind's name, as the REST API shows it.
    pub fn name(&self) -> &'static str {
        match self {
            EntryKind::NodeAdded { .. } => "node_added",
            EntryKind::NodeRemoved { .. } => "node_removed",
            EntryKind::PublisherAdded { .. } => "publisher_added",
            EntryKind::PublisherRemoved { .. } => "publisher_removed",
            EntryKind::ImageRegistered { .. } => "image_registered",
            EntryKind::ImageRevoked { .. } => "image_revoked",
            EntryKind::Audit(_) => "audit",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: EntryKind,
    pub author: Author,
    /// Ed25519 over the author's message (see the module comment); empty for genesis.
    pub signature: Vec<u8>,
}

/// What decoding one leaf may allocate. bincode's limit counts the memory a decode claims
/// (in-memory sizes of the containers it reads), not input bytes: a 16 KiB leaf holding 1,024
/// audit records claims about 200 KiB. The input itself is bounded by `MAX_LEAF_BYTES` first.
const DECODE_CLAIM_BYTES: usize = 1 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ DECODE_CLAIM_BYTES }>()
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(v, bincode::config::standard())
        .map_err(|e| LedgerError::Storage(format!("encoding: {e}")))
}

/// Strict decode: the whole input, nothing after it.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    let (v, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| LedgerError::Decode(format!("{what}: {e}")))?;
    if used != bytes.len() {
        return Err(LedgerError::Decode(format!("{what}: {} trailing bytes", bytes.len() - used)));
    }
    Ok(v)
}

impl Entry {
    pub fn leaf_bytes(&self) -> Result<Vec<u8>> {
        encode(self)
    }

    /// Decodes a leaf, bounded in size and strict (no trailing bytes).
    pub fn from_leaf(bytes: &[u8]) -> Result<Entry> {
        if bytes.len() > MAX_LEAF_BYTES {
            return Err(LedgerError::Decode(format!(
                "leaf of {} bytes exceeds {MAX_LEAF_BYTES}",
                bytes.len()
            )));
        }
        let (v, used) = bincode::serde::decode_from_slice(bytes, config())
            .map_err(|e| LedgerError::Decode(format!("entry: {e}")))?;
        if used != bytes.len() {
            return Err(LedgerError::Decode(format!("entry: {} trailing bytes", bytes.len() - used)));
        }
        Ok(v)
    }

    /// The message the author signed.
    pub fn signed_message(&self) -> Result<Vec<u8>> {
        match (&self.author, &self.kind) {
            (Author::Publisher(_), EntryKind::ImageRegistered { name, digest, .. }) => {
                Ok(image_message(name, digest))
            }
            (Author::Publisher(_), EntryKind::ImageRevoked { digest, reason, .. }) => {
                Ok(revocation_message(digest, reason))
            }
            (author, kind) => node_message(kind, author),
        }
    }

    /// A node's entry, signed with its key.
    pub fn by_node(node: u64, kind: EntryKind, identity: &edgefabric_crypto::Identity) -> Result<Entry> {
        let author = Author::Node(node);
        let signature = identity.sign(&node_message(&kind, &author)?).to_vec();
        Ok(Entry { kind, author, signature })
    }

    /// Checks the fields' shapes (not the signature or the rules, which need the ledger's state).
    pub fn validate_fields(&self) -> Result<()> {
        let check = |field: &'static str, v: &str| check_text(field, v);
        match &self.kind {
            EntryKind::NodeAdded { site, .. } => check("site", site)?,
            EntryKind::NodeRemoved { .. } => {}
            EntryKind::PublisherAdded { id, by, .. } | EntryKind::PublisherRemoved { id, by } => {
                check_id("publisher id", id)?;
                check("by", by)?;
            }
            EntryKind::ImageRegistered { name, digest, publisher } => {
                check_name(name)?;
                check_digest(digest)?;
                check_id("publisher", publisher)?;
            }
            EntryKind::ImageRevoked { digest, reason, by } => {
                check_digest(digest)?;
                check("reason", reason)?;
                check("by", by)?;
            }
            EntryKind::Audit(batch) => {
                let Some(first) = batch.first() else {
                    return Err(LedgerError::invalid("audit", "an audit entry holds at least one record"));
                };
                if batch.len() > MAX_AUDIT_BATCH {
                    return Err(LedgerError::invalid(
                        "audit",
                        format!("more than {MAX_AUDIT_BATCH} records"),
                    ));
                }
                for (i, a) in batch.iter().enumerate() {
                    if a.node != first.node
                        || a.instance != first.instance
                        || Some(a.seq) != first.seq.checked_add(i as u64)
                    {
                        return Err(LedgerError::invalid(
                            "audit",
                            "records of one entry are consecutive seqs of one node's instance",
                        ));
                    }
                    check_audit_record(a)?;
                }
                let (lo, hi) =
                    batch.iter().fold((u64::MAX, 0), |(lo, hi), a| (lo.min(a.time_ms), hi.max(a.time_ms)));
                if hi - lo > AUDIT_BATCH_SPAN_MS {
                    return Err(LedgerError::invalid(
                        "audit",
                        format!("records of one entry span more than {AUDIT_BATCH_SPAN_MS} ms"),
                    ));
                }
            }
        }
        match &self.author {
            Author::Genesis => {
                if !self.signature.is_empty() {
                    return Err(LedgerError::invalid("signature", "genesis entries carry no signature"));
                }
            }
            Author::Publisher(p) => {
                check_id("author", p)?;
                if self.signature.len() != 64 {
                    return Err(LedgerError::invalid("signature", "must be 64 bytes"));
                }
            }
            Author::Node(_) => {
                if self.signature.len() != 64 {
                    return Err(LedgerError::invalid("signature", "must be 64 bytes"));
                }
            }
        }
        Ok(())
    }
}

fn check_audit_record(a: &AuditRecord) -> Result<()> {
    for (field, v) in [("actor", &a.actor), ("ns", &a.ns), ("action", &a.action), ("result", &a.result)] {
        check_text(field, v)?;
    }
    for (field, v) in [("key", &a.key), ("key_hash", &a.key_hash)] {
        if let Some(v) = v {
            check_text(field, v)?;
        }
    }
    if a.key.is_some() && a.key_hash.is_some() {
        return Err(LedgerError::invalid("key_hash", "a record names the key or its hash, not both"));
    }
    if a.result != AUDIT_ALLOWED && a.result != AUDIT_DENIED {
        return Err(LedgerError::invalid("result", "must be \"allowed\" or \"denied\""));
    }
    if a.status == 0 && a.result != AUDIT_ALLOWED {
        return Err(LedgerError::invalid("status", "0 (received) is for allowed requests only"));
    }
    if a.seq == 0 {
        return Err(LedgerError::invalid("seq", "audit sequences start at 1"));
    }
    Ok(())
}

fn check_text(field: &'static str, v: &str) -> Result<()> {
    if v.len() > MAX_FIELD_BYTES {
        return Err(LedgerError::invalid(field, format!("longer than {MAX_FIELD_BYTES} bytes")));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(LedgerError::invalid(field, "must not contain control characters or newlines"));
    }
    Ok(())
}

/// Publisher ids: 1..=64 of `[A-Za-z0-9._-]`.
pub fn check_id(field: &'static str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 64 {
        return Err(LedgerError::invalid(field, "must be 1 to 64 characters"));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return Err(LedgerError::invalid(field, "may contain only letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

/// Image names: non-empty, at most 512 bytes, no control characters.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(LedgerError::invalid("name", "must not be empty"));
    }
    check_text("name", name)
}

/// Digests: `sha256:` and 64 lowercase hex digits (the OCI form).
pub fn check_digest(digest: &str) -> Result<()> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| LedgerError::invalid("digest", "must start with \"sha256:\""))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(LedgerError::invalid("digest", "must be \"sha256:\" and 64 lowercase hex digits"));
    }
    Ok(())
}

/// What a publisher signs to register an image:
/// `edgefabric-image-v1\nname: <name>\ndigest: <digest>\n` (UTF-8).
pub fn image_message(name: &str, digest: &str) -> Vec<u8> {
    format!("edgefabric-image-v1\nname: {name}\ndigest: {digest}\n").into_bytes()
}

/// What a publisher signs to revoke an image:
/// `edgefabric-image-revocation-v1\ndigest: <digest>\nreason: <reason>\n`.
pub fn revocation_message(digest: &str, reason: &str) -> Vec<u8> {
    format!("edgefabric-image-revocation-v1\ndigest: {digest}\nreason: {reason}\n").into_bytes()
}

/// What a node signs: `edgefabric-ledger-entry-v1\n` ‖ bincode((kind, author)).
pub fn node_message(kind: &EntryKind, author: &Author) -> Result<Vec<u8>> {
    let mut m = b"edgefabric-ledger-entry-v1\n".to_vec();
    m.extend(encode(&(kind, author))?);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefabric_crypto::Identity;

    fn digest() -> String {
        format!("sha256:{}", "ab".repeat(32))
    }

    #[test]
    fn leaf_round_trip_is_strict() {
        let id = Identity::from_seed(&[7; 32]);
        let e = Entry::by_node(3, EntryKind::NodeRemoved { id: 9 }, &id).unwrap();
        let leaf = e.leaf_bytes().unwrap();
        assert_eq!(Entry::from_leaf(&leaf).unwrap(), e);
        let mut longer = leaf.clone();
        longer.push(0);
        assert!(matches!(Entry::from_leaf(&longer), Err(LedgerError::Decode(_))));
        assert!(Entry::from_leaf(&leaf[..leaf.len() - 1]).is_err());
        assert!(Entry::from_leaf(&[]).is_err());
    }

    #[test]
    fn node_signature_covers_kind_and_author() {
        let id = Identity::from_seed(&[7; 32]);
        let e = Entry::by_node(3, EntryKind::NodeRemoved { id: 9 }, &id).unwrap();
        let pk = id.public_key();
        pk.verify(&e.signed_message().unwrap(), &e.signature).unwrap();
        let mut other = e.clone();
        other.kind = EntryKind::NodeRemoved { id: 10 };
        assert!(pk.verify(&other.signed_message().unwrap(), &other.signature).is_err());
        let mut other = e.clone();
        other.author = Author::Node(4);
        assert!(pk.verify(&other.signed_message().unwrap(), &other.signature).is_err());
    }

    #[test]
    fn image_message_is_the_documented_text() {
        assert_eq!(
            image_message("nginx:1.27", &digest()),
            format!("edgefabric-image-v1\nname: nginx:1.27\ndigest: {}\n", digest()).into_bytes()
        );
    }

    #[test]
    fn field_checks() {
        assert!(check_digest(&digest()).is_ok());
        for bad in ["", "sha256:", "sha512:ab", &format!("sha256:{}", "AB".repeat(32)), &digest()[..70]] {
            assert!(check_digest(bad).is_err(), "{bad}");
        }
        assert!(check_name("").is_err());
        assert!(check_name("a\nb").is_err());
        assert!(check_id("publisher", "acme-store_1.x").is_ok());
        assert!(check_id("publisher", "acme store").is_err());
        let e = Entry {
            kind: EntryKind::ImageRegistered { name: "x".into(), digest: digest(), publisher: "p".into() },
            author: Author::Publisher("p".into()),
            signature: vec![0; 63],
        };
        assert!(matches!(e.validate_fields(), Err(LedgerError::Invalid { field: "signature", .. })));
    }
}
