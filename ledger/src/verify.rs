//! Offline verification of an image's ledger record, trusting nothing but pinned node keys.
//!
//! What a server sends (the leaf, its index, a proof, a signed checkpoint, and claims such as
//! "status" and "root_hash") is checked, never believed:
//! 1. the checkpoint note carries at least `min` valid signatures by pinned node keys, and its
//!    origin is the pinned one;
//! 2. the proof is for the checkpoint's size and root (a `root_hash` or `tree_size` the server
//!    states separately must equal them, or the answer is refused);
//! 3. the leaf decodes to an entry about this digest, and its RFC 6962 inclusion proof leads
//!    to the checkpoint's root.
//!
//! The nodes sign only heads they validated (signatures, membership, rules), so a leaf proven
//! under a t-of-n checkpoint is an entry t nodes accepted. What this cannot show is absence: a
//! server can withhold a later revocation. Asking several nodes, or watching the log through
//! consistency proofs, narrows that; EdgeFabric does not have a verifiable map of current
//! status (yet).

use crate::entry::{AuditRecord, Author, Entry, EntryKind};
use crate::merkle::{self, Hash, ProofError};
use crate::note::{self, Checkpoint, NoteError, TrustedKey};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] NoteError),
    #[error("checkpoint origin is {got:?}, the pinned origin is {expected:?}")]
    Origin { expected: String, got: String },
    #[error("the proof is for a tree of {proof} entries, the checkpoint is of {checkpoint}")]
    TreeSize { proof: u64, checkpoint: u64 },
    #[error("the stated root hash differs from the checkpoint's root")]
    RootHash,
    #[error("the leaf does not decode as a ledger entry: {0}")]
    Leaf(String),
    #[error("the entry is a {kind} entry for {digest:?}, not a record of image {expected}")]
    NotThisImage { kind: String, digest: String, expected: String },
    #[error("the image is named {got:?}, not {expected:?}")]
    Name { expected: String, got: String },
    #[error("inclusion proof: {0}")]
    Proof(#[from] ProofError),
    #[error("the entry is a {0} entry, not an audit record")]
    NotAudit(String),
    #[error("audit record of node {node} signed by {author}")]
    AuditAuthor { node: u64, author: String },
    #[error("node {0}'s key is not pinned")]
    UnknownNode(u64),
    #[error("the audit record's signature does not verify under node {0}'s pinned key")]
    AuditSignature(u64),
}

/// The audit record at `pos` of an entry, after checking that the node it names wrote and
/// signed the entry (its key pinned in `trusted` as `node-<id>`).
pub fn audit_record<'a>(
    entry: &'a Entry,
    pos: usize,
    trusted: &[TrustedKey],
) -> Result<&'a AuditRecord, VerifyError> {
    let EntryKind::Audit(batch) = &entry.kind else {
        return Err(VerifyError::NotAudit(entry.kind.name().to_string()));
    };
    let a = batch.get(pos).ok_or_else(|| {
        VerifyError::NotAudit(format!("batch of {} audit records, without record {pos}", batch.len()))
    })?;
    if entry.author != Author::Node(a.node) {
        return Err(VerifyError::AuditAuthor { node: a.node, author: entry.author.to_string() });
    }
    let name = format!("node-{}", a.node);
    let key = trusted.iter().find(|k| k.name == name).ok_or(VerifyError::UnknownNode(a.node))?;
    let msg = entry.signed_message().map_err(|e| VerifyError::Leaf(e.to_string()))?;
    let sig: [u8; 64] =
        entry.signature.as_slice().try_into().map_err(|_| VerifyError::AuditSignature(a.node))?;
    key.key.verify(&msg, &sig).map_err(|_| VerifyError::AuditSignature(a.node))?;
    Ok(a)
}

/// What the server presented for one entry.
pub struct Presented<'a> {
    pub leaf: &'a [u8],
    pub log_index: u64,
    pub tree_size: u64,
    /// The root the server states beside the proof, if any (must equal the checkpoint's).
    pub root_hash: Option<&'a [u8]>,
    pub proof: &'a [Vec<u8>],
    pub checkpoint: &'a str,
}

/// A proven entry and the checkpoint it is proven under.
#[derive(Debug, Clone)]
pub struct Proven {
    pub entry: Entry,
    pub checkpoint: Checkpoint,
    /// Names of the pinned keys that signed the checkpoint.
    pub signers: Vec<String>,
}

/// Verifies that `p.leaf` is entry `p.log_index` of a log whose checkpoint at least `min`
/// pinned keys signed.
pub fn verify_entry(
    trusted: &[TrustedKey],
    origin: Option<&str>,
    min: usize,
    p: &Presented,
) -> Result<Proven, VerifyError> {
    let (cp, signers) = note::verify_checkpoint(p.checkpoint, trusted, min)?;
    if let Some(o) = origin {
        if cp.origin != o {
            return Err(VerifyError::Origin { expected: o.to_string(), got: cp.origin });
        }
    }
    if p.tree_size != cp.size {
        return Err(VerifyError::TreeSize { proof: p.tree_size, checkpoint: cp.size });
    }
    if let Some(r) = p.root_hash {
        if r != cp.root.as_slice() {
            return Err(VerifyError::RootHash);
        }
    }
    let entry = Entry::from_leaf(p.leaf).map_err(|e| VerifyError::Leaf(e.to_string()))?;
    let leaf_hash: Hash = merkle::leaf_hash(p.leaf);
    merkle::verify_inclusion(p.log_index, cp.size, &leaf_hash, p.proof, &cp.root)?;
    Ok(Proven { entry, checkpoint: cp, signers })
}

/// The image record an entry proves, if it is one for `digest`: `Ok(None)` for a registration,
/// `Ok(Some(reason))` for a revocation.
pub fn image_record(entry: &Entry, digest: &str, name: Option<&str>) -> Result<Option<String>, VerifyError> {
    match &entry.kind {
        EntryKind::ImageRegistered { digest: d, name: n, .. } if d == digest => {
            if let Some(want) = name {
                if n != want {
                    return Err(VerifyError::Name { expected: want.to_string(), got: n.clone() });
                }
            }
            Ok(None)
        }
        EntryKind::ImageRevoked { digest: d, reason, .. } if d == digest => Ok(Some(reason.clone())),
        other => {
            let d = match other {
                EntryKind::ImageRegistered { digest, .. } | EntryKind::ImageRevoked { digest, .. } => {
                    digest.clone()
                }
                _ => String::new(),
            };
            Err(VerifyError::NotThisImage {
                kind: other.name().to_string(),
                digest: d,
                expected: digest.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{image_message, Author};
    use edgefabric_crypto::Identity;

    struct Case {
        leaves: Vec<Vec<u8>>,
        nodes: Vec<Identity>,
        digest: String,
    }

    fn digest(i: u8) -> String {
        format!("sha256:{}", hex::encode([i; 32]))
    }

    fn case() -> Case {
        let publisher = Identity::from_seed(&[9; 32]);
        let leaves = (0..7u8)
            .map(|i| {
                let (name, d) = (format!("app{i}"), digest(i));
                Entry {
                    signature: publisher.sign(&image_message(&name, &d)).to_vec(),
                    kind: EntryKind::ImageRegistered { name, digest: d, publisher: "p".into() },
                    author: Author::Publisher("p".into()),
                }
                .leaf_bytes()
                .unwrap()
            })
            .collect();
        Case { leaves, nodes: (1..=3u8).map(|i| Identity::from_seed(&[i; 32])).collect(), digest: digest(4) }
    }

    impl Case {
        fn hashes(&self) -> Vec<Hash> {
            self.leaves.iter().map(|l| merkle::leaf_hash(l)).collect()
        }
        fn checkpoint(&self, signers: &[usize], origin: &str) -> String {
            let cp = Checkpoint {
                origin: origin.into(),
                size: 7,
                root: merkle::root(&self.hashes()),
                extensions: vec![],
            };
            let names: Vec<String> = signers.iter().map(|i| format!("node-{}", i + 1)).collect();
            let s: Vec<(&str, &Identity)> =
                signers.iter().zip(&names).map(|(i, n)| (n.as_str(), &self.nodes[*i])).collect();
            note::sign(&cp.text(), &s).unwrap()
        }
        fn trusted(&self) -> Vec<TrustedKey> {
            self.nodes
                .iter()
                .enumerate()
                .map(|(i, id)| TrustedKey { name: format!("node-{}", i + 1), key: id.public_key() })
                .collect()
        }
        fn proof(&self, index: u64) -> Vec<Vec<u8>> {
            merkle::inclusion_proof(&self.hashes(), index).unwrap().iter().map(|h| h.to_vec()).collect()
        }
    }

    #[test]
    fn an_honest_answer_verifies_and_every_lie_is_caught() {
        let c = case();
        let note = c.checkpoint(&[0, 1], "o");
        let proof = c.proof(4);
        let root = merkle::root(&c.hashes());
        let honest = Presented {
            leaf: &c.leaves[4],
            log_index: 4,
            tree_size: 7,
            root_hash: Some(&root),
            proof: &proof,
            checkpoint: &note,
        };
        let ok = verify_entry(&c.trusted(), Some("o"), 2, &honest).unwrap();
        assert_eq!(image_record(&ok.entry, &c.digest, Some("app4")), Ok(None));
        assert_eq!(ok.signers.len(), 2);

        // Too few signatures for the threshold.
        assert!(matches!(
            verify_entry(&c.trusted(), Some("o"), 3, &honest),
            Err(VerifyError::Checkpoint(NoteError::TooFewSignatures { .. }))
        ));
        // Another origin.
        assert!(matches!(
            verify_entry(&c.trusted(), Some("other"), 2, &honest),
            Err(VerifyError::Origin { .. })
        ));
        // A checkpoint signed by keys nobody pinned.
        let rogue: Vec<TrustedKey> =
            vec![TrustedKey { name: "node-1".into(), key: Identity::from_seed(&[50; 32]).public_key() }];
        assert!(verify_entry(&rogue, None, 1, &honest).is_err());
        // A forged signature under a pinned name.
        let forged = note.replacen("— node-1 ", "— node-1 A", 1);
        assert!(verify_entry(
            &c.trusted(),
            None,
            1,
            &Presented { checkpoint: &forged, ..honest_copy(&honest) }
        )
        .is_err());
        // Another leaf at the same index.
        assert!(matches!(
            verify_entry(&c.trusted(), None, 2, &Presented { leaf: &c.leaves[3], ..honest_copy(&honest) }),
            Err(VerifyError::Proof(ProofError::RootMismatch))
        ));
        // The right leaf at the wrong index.
        assert!(
            verify_entry(&c.trusted(), None, 2, &Presented { log_index: 3, ..honest_copy(&honest) }).is_err()
        );
        // A modified proof hash, a missing one, an extra one (trailing garbage).
        let mut p = proof.clone();
        p[0][0] ^= 1;
        assert!(
            verify_entry(&c.trusted(), None, 2, &Presented { proof: &p, ..honest_copy(&honest) }).is_err()
        );
        let p = proof[..proof.len() - 1].to_vec();
        assert!(
            verify_entry(&c.trusted(), None, 2, &Presented { proof: &p, ..honest_copy(&honest) }).is_err()
        );
        let mut p = proof.clone();
        p.push(vec![0; 32]);
        assert!(
            verify_entry(&c.trusted(), None, 2, &Presented { proof: &p, ..honest_copy(&honest) }).is_err()
        );
        // A tree size or root that is not the checkpoint's.
        assert!(matches!(
            verify_entry(&c.trusted(), None, 2, &Presented { tree_size: 8, ..honest_copy(&honest) }),
            Err(VerifyError::TreeSize { .. })
        ));
        let other = [7u8; 32];
        assert!(matches!(
            verify_entry(
                &c.trusted(),
                None,
                2,
                &Presented { root_hash: Some(&other), ..honest_copy(&honest) }
            ),
            Err(VerifyError::RootHash)
        ));
        // A leaf with trailing garbage.
        let mut leaf = c.leaves[4].clone();
        leaf.push(0);
        assert!(matches!(
            verify_entry(&c.trusted(), None, 2, &Presented { leaf: &leaf, ..honest_copy(&honest) }),
            Err(VerifyError::Leaf(_))
        ));
        // A genuine entry, but about another image.
        let p3 = c.proof(3);
        let v = verify_entry(
            &c.trusted(),
            None,
            2,
            &Presented { leaf: &c.leaves[3], log_index: 3, proof: &p3, ..honest_copy(&honest) },
        )
        .unwrap();
        assert!(matches!(image_record(&v.entry, &c.digest, None), Err(VerifyError::NotThisImage { .. })));
        assert!(matches!(image_record(&ok.entry, &c.digest, Some("x")), Err(VerifyError::Name { .. })));
    }

    fn honest_copy<'a>(p: &Presented<'a>) -> Presented<'a> {
        Presented {
            leaf: p.leaf,
            log_index: p.log_index,
            tree_size: p.tree_size,
            root_hash: p.root_hash,
            proof: p.proof,
            checkpoint: p.checkpoint,
        }
    }
}
