//! Blocks: a header that links to the previous block and commits to the block's entries (a
//! merkle-cbt root) and to the whole log so far (an RFC 6962 size and root).
//!
//! Two trees, two jobs. The per-block entry root is a merkle-cbt complete binary tree over the
//! block's leaf hashes (with the entry count bound in), so a client can be handed a compact multi-proof for several entries of
//! one block. The log tree is RFC 6962 over every entry ever appended, because only that tree
//! has consistency proofs (append-only between two checkpoints) and standard verifiers.
//!
//! A block's hash is SHA-256 over `edgefabric-block-v1\n` ‖ the header's bincode; the next
//! block's `prev` is that hash. The genesis block (height 0) has `prev` all zeros.

use merkle_cbt::merkle_tree::Merge;
use merkle_cbt::{MerkleProof, CBMT};
use serde::{Deserialize, Serialize};

use crate::entry::{self, Entry};
use crate::error::{LedgerError, Result};
use crate::merkle::{self, Hash};

/// Most entries in one block (bounds the work of validating one raft entry).
pub const MAX_BLOCK_ENTRIES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    pub height: u64,
    pub prev: Hash,
    /// When the proposer made the block (ms since the Unix epoch). Informational: rules do not
    /// depend on it, so clock skew cannot make a block invalid.
    pub time_ms: u64,
    /// The node that proposed the block.
    pub proposer: u64,
    pub entry_count: u32,
    /// merkle-cbt root over the entries' leaf hashes.
    pub entry_root: Hash,
    /// The RFC 6962 log after this block: its size and root.
    pub log_size: u64,
    pub log_root: Hash,
}

impl BlockHeader {
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        entry::encode(self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        entry::decode(bytes, "block header")
    }

    pub fn hash(&self) -> Result<Hash> {
        Ok(merkle::sha256(&[b"edgefabric-block-v1\n", &self.to_bytes()?]))
    }

    /// Index of the block's first entry in the log.
    pub fn first_index(&self) -> u64 {
        self.log_size.saturating_sub(u64::from(self.entry_count))
    }
}

/// A header with its entries: what the leader proposes through raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub header: BlockHeader,
    pub entries: Vec<Entry>,
}

/// merkle-cbt's node merge: RFC 6962's interior-node hash (0x01 prefix), so a leaf hash and an
/// interior hash can never be confused.
pub struct Sha256Merge;

impl Merge for Sha256Merge {
    type Item = Hash;
    fn merge(left: &Hash, right: &Hash) -> Hash {
        merkle::node_hash(left, right)
    }
}

/// The entry root of a block whose entries have these leaf hashes: SHA-256(0x02 ‖ entry count
/// (u32 BE) ‖ merkle-cbt root). merkle-cbt's root alone does not commit to the number of
/// leaves (the same node indices name other positions in a bigger tree), so the count is
/// bound in here.
pub fn entry_root(leaf_hashes: &[Hash]) -> Hash {
    bind_count(leaf_hashes.len() as u32, &CBMT::<Hash, Sha256Merge>::build_merkle_root(leaf_hashes))
}

fn bind_count(count: u32, cbmt_root: &Hash) -> Hash {
    merkle::sha256(&[&[0x02], &count.to_be_bytes(), cbmt_root])
}

/// A merkle-cbt multi-proof that several entries belong to one block: the sibling hashes
/// ("lemmas") that merkle-cbt needs beside the proven leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiProof {
    pub lemmas: Vec<Hash>,
}

fn node_index(entry_count: u32, position: u32) -> u32 {
    entry_count - 1 + position
}

/// Proves the entries at `positions` (within the block) against its entry root.
pub fn multi_proof(leaf_hashes: &[Hash], positions: &[u32]) -> Result<MultiProof> {
    let n = leaf_hashes.len();
    if positions.is_empty() {
        return Err(LedgerError::invalid("positions", "at least one entry is needed"));
    }
    if let Some(p) = positions.iter().find(|p| **p as usize >= n) {
        return Err(LedgerError::invalid("positions", format!("{p} is beyond the block's {n} entries")));
    }
    let mut sorted = positions.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != positions.len() {
        return Err(LedgerError::invalid("positions", "duplicate position"));
    }
    let proof = CBMT::<Hash, Sha256Merge>::build_merkle_proof(leaf_hashes, positions)
        .ok_or_else(|| LedgerError::invalid("positions", "no proof for these positions"))?;
    Ok(MultiProof { lemmas: proof.lemmas().to_vec() })
}

/// Checks that each `(position, leaf hash)` is that entry of a block of `entry_count` entries
/// with entry root `root`. The node indices are derived here from the claimed positions and
/// the (signed) entry count, never taken from the proof: merkle-cbt's own proof carries
/// indices but its root computation does not bind them to the tree's size, so a proof for one
/// position would otherwise pass for another. Preconditions (checked, typed error): at least
/// one leaf, distinct positions inside the block, and no more lemmas than tree levels per leaf.
pub fn verify_multi_proof(
    root: &Hash,
    entry_count: u32,
    proven: &[(u32, Hash)],
    proof: &MultiProof,
) -> Result<()> {
    if entry_count == 0 || proven.is_empty() {
        return Err(LedgerError::invalid("proof", "at least one leaf of a non-empty block is needed"));
    }
    let mut positions: Vec<u32> = proven.iter().map(|(p, _)| *p).collect();
    positions.sort_unstable();
    positions.dedup();
    if positions.len() != proven.len() {
        return Err(LedgerError::invalid("proof", "a position appears twice"));
    }
    if let Some(p) = positions.iter().find(|p| **p >= entry_count) {
        return Err(LedgerError::invalid(
            "proof",
            format!("position {p} is beyond the block's {entry_count} entries"),
        ));
    }
    let depth = (u32::BITS - entry_count.leading_zeros()) as usize + 1;
    if proof.lemmas.len() > depth * proven.len() {
        return Err(LedgerError::invalid("proof", "too many lemmas"));
    }
    // merkle-cbt pairs leaves (sorted by value) with indices in the proof's order, so order the
    // indices by their leaves' values.
    let mut pairs: Vec<(Hash, u32)> = proven.iter().map(|(p, h)| (*h, node_index(entry_count, *p))).collect();
    pairs.sort();
    let indices = pairs.iter().map(|(_, i)| *i).collect();
    let leaves: Vec<Hash> = pairs.iter().map(|(h, _)| *h).collect();
    let p = MerkleProof::<Hash, Sha256Merge>::new(indices, proof.lemmas.clone());
    match p.root(&leaves) {
        Some(r) if bind_count(entry_count, &r) == *root => Ok(()),
        _ => Err(LedgerError::Proof(crate::merkle::ProofError::RootMismatch)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| merkle::leaf_hash(&(i as u64).to_be_bytes())).collect()
    }

    #[test]
    fn entry_root_shapes() {
        let l = leaves(3);
        // merkle-cbt's complete tree for 3 leaves: root = H(H(l1, l2), l0).
        let cbmt = merkle::node_hash(&merkle::node_hash(&l[1], &l[2]), &l[0]);
        assert_eq!(entry_root(&l), bind_count(3, &cbmt));
        assert_eq!(entry_root(&l[..1]), bind_count(1, &l[0]));
    }

    #[test]
    fn multi_proof_rejects_wrong_leaves_and_bad_positions() {
        let l = leaves(10);
        let root = entry_root(&l);
        let p = multi_proof(&l, &[2, 7]).unwrap();
        verify_multi_proof(&root, 10, &[(2, l[2]), (7, l[7])], &p).unwrap();
        verify_multi_proof(&root, 10, &[(7, l[7]), (2, l[2])], &p).unwrap();
        assert!(verify_multi_proof(&root, 10, &[(2, l[2]), (7, l[6])], &p).is_err());
        assert!(verify_multi_proof(&root, 10, &[(2, l[7]), (7, l[2])], &p).is_err());
        assert!(verify_multi_proof(&root, 10, &[(2, l[2])], &p).is_err());
        // The same node indices in a bigger tree are other positions: refused.
        assert!(verify_multi_proof(&root, 11, &[(2, l[2]), (7, l[7])], &p).is_err());
        assert!(verify_multi_proof(&root, 11, &[(1, l[2]), (6, l[7])], &p).is_err());
        assert!(matches!(
            verify_multi_proof(&root, 10, &[(2, l[2]), (10, l[7])], &p),
            Err(LedgerError::Invalid { .. })
        ));
        assert!(matches!(
            verify_multi_proof(&root, 10, &[(2, l[2]), (2, l[2])], &p),
            Err(LedgerError::Invalid { .. })
        ));
        let mut bad = p.clone();
        bad.lemmas[0][0] ^= 1;
        assert!(verify_multi_proof(&root, 10, &[(2, l[2]), (7, l[7])], &bad).is_err());
        let mut bad = p.clone();
        bad.lemmas.push([0; 32]);
        assert!(verify_multi_proof(&root, 10, &[(2, l[2]), (7, l[7])], &bad).is_err());
        assert!(multi_proof(&l, &[10]).is_err());
        assert!(multi_proof(&l, &[1, 1]).is_err());
        assert!(multi_proof(&l, &[]).is_err());
    }

    #[test]
    fn header_hash_changes_with_every_field() {
        let h = BlockHeader {
            height: 1,
            prev: [1; 32],
            time_ms: 5,
            proposer: 2,
            entry_count: 1,
            entry_root: [2; 32],
            log_size: 3,
            log_root: [3; 32],
        };
        let base = h.hash().unwrap();
        let mut variants = vec![];
        let mut v = h.clone();
        v.height = 2;
        variants.push(v);
        let mut v = h.clone();
        v.prev[0] = 0;
        variants.push(v);
        let mut v = h.clone();
        v.log_root[31] = 0;
        variants.push(v);
        let mut v = h.clone();
        v.entry_count = 2;
        variants.push(v);
        for v in variants {
            assert_ne!(v.hash().unwrap(), base);
        }
        assert_eq!(BlockHeader::from_bytes(&h.to_bytes().unwrap()).unwrap(), h);
    }

    proptest! {
        #[test]
        fn multi_proofs_verify_for_any_subset(n in 1usize..40, picks in proptest::collection::btree_set(0u32..40, 1..6)) {
            let l = leaves(n);
            let positions: Vec<u32> = picks.into_iter().filter(|p| (*p as usize) < n).collect();
            prop_assume!(!positions.is_empty());
            let p = multi_proof(&l, &positions).unwrap();
            let proven: Vec<(u32, Hash)> = positions.iter().map(|i| (*i, l[*i as usize])).collect();
            prop_assert!(verify_multi_proof(&entry_root(&l), n as u32, &proven, &p).is_ok());
        }
    }
}
