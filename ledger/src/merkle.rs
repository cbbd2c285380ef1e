//! RFC 6962 Merkle trees (section 2.1): SHA-256, leaves hashed as `H(0x00 ‖ data)`, interior
//! nodes as `H(0x01 ‖ left ‖ right)`, the empty tree as `H("")`.
//!
//! Verification is a set of pure functions of (index or sizes, hashes, proof, root) that check
//! their preconditions first and return a typed error, so a verifier (an auditor, `image
//! verify`, the web page) can tell *why* a proof was refused. Any RFC 6962 verifier accepts the
//! proofs made here, and these functions accept any RFC 6962 proof: both are checked against
//! transparency-dev/merkle's RFC 6962 test vectors, negative cases included.
//!
//! Proof *generation* here is the RFC's recursive definition over the list of leaf hashes: the
//! reference implementation. A faster one over stored subtree hashes must agree with it.

use ring::digest::{Context, SHA256};

pub type Hash = [u8; 32];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is beyond the tree size {size}")]
    IndexBeyondSize { index: u64, size: u64 },
    #[error("{what} is {got} bytes, a SHA-256 hash is 32")]
    WrongHashSize { what: &'static str, got: usize },
    #[error("the proof has {got} hashes, a proof for these sizes has {want}")]
    WrongProofSize { got: usize, want: usize },
    #[error("size2 ({size2}) is smaller than size1 ({size1})")]
    SizesReversed { size1: u64, size2: u64 },
    #[error("the sizes are equal, so the proof must be empty")]
    ProofForEqualSizes,
    #[error("a consistency proof from the empty tree is meaningless")]
    FromEmptyTree,
    #[error("the proof is empty")]
    EmptyProof,
    #[error("the proof leads to a different root")]
    RootMismatch,
}

/// SHA-256 over the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The hash of the empty tree.
pub fn empty_root() -> Hash {
    sha256(&[])
}

pub fn leaf_hash(data: &[u8]) -> Hash {
    sha256(&[&[0x00], data])
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[0x01], left, right])
}

/// The largest power of two smaller than `n` (n >= 2).
fn split_point(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]) over leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split_point(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// PATH(m, D[n]): the inclusion proof of leaf `index`.
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Result<Vec<Hash>, ProofError> {
    let size = leaves.len() as u64;
    if index >= size {
        return Err(ProofError::IndexBeyondSize { index, size });
    }
    fn path(m: usize, d: &[Hash]) -> Vec<Hash> {
        if d.len() <= 1 {
            return vec![];
        }
        let k = split_point(d.len());
        if m < k {
            let mut p = path(m, &d[..k]);
            p.push(root(&d[k..]));
            p
        } else {
            let mut p = path(m - k, &d[k..]);
            p.push(root(&d[..k]));
            p
        }
    }
    Ok(path(index as usize, leaves))
}

/// PROOF(m, D[n]): the consistency proof from the first `size1` leaves to all of them.
pub fn consistency_proof(leaves: &[Hash], size1: u64) -> Result<Vec<Hash>, ProofError> {
    let size2 = leaves.len() as u64;
    if size1 > size2 {
        return Err(ProofError::SizesReversed { size1, size2 });
    }
    if size1 == 0 {
        return Err(ProofError::FromEmptyTree);
    }
    fn subproof(m: usize, d: &[Hash], whole: bool) -> Vec<Hash> {
        let n = d.len();
        if m == n {
            return if whole { vec![] } else { vec![root(d)] };
        }
        let k = split_point(n);
        if m <= k {
            let mut p = subproof(m, &d[..k], whole);
            p.push(root(&d[k..]));
            p
        } else {
            let mut p = subproof(m - k, &d[k..], false);
            p.push(root(&d[..k]));
            p
        }
    }
    Ok(subproof(size1 as usize, leaves, true))
}

fn as_hash(what: &'static str, b: &[u8]) -> Result<Hash, ProofError> {
    b.try_into().map_err(|_| ProofError::WrongHashSize { what, got: b.len() })
}

fn as_hashes(proof: &[Vec<u8>]) -> Result<Vec<Hash>, ProofError> {
    proof.iter().map(|h| as_hash("a proof hash", h)).collect()
}

/// Where the path to leaf `index` and the path to the last leaf `size - 1` diverge: the number
/// of proof hashes below that point ("inner") and above it, along the right border.
fn decompose(index: u64, size: u64) -> (usize, usize) {
    let inner = (u64::BITS - (index ^ (size - 1)).leading_zeros()) as usize;
    let border = shr(index, inner).count_ones() as usize;
    (inner, border)
}

/// `x >> n` with Go's meaning for `n >= 64` (0), which the reference verifier relies on: a
/// server's sizes near 2^64 must be refused, not overflow (found by fuzzing).
fn shr(x: u64, n: usize) -> u64 {
    u32::try_from(n).ok().and_then(|n| x.checked_shr(n)).unwrap_or(0)
}

fn chain_inner(mut seed: Hash, proof: &[Hash], index: u64) -> Hash {
    for (i, h) in proof.iter().enumerate() {
        seed = if shr(index, i) & 1 == 0 { node_hash(&seed, h) } else { node_hash(h, &seed) };
    }
    seed
}

/// Like `chain_inner`, using only the hashes on the path's left: the subtree as it was before.
fn chain_inner_right(mut seed: Hash, proof: &[Hash], index: u64) -> Hash {
    for (i, h) in proof.iter().enumerate() {
        if shr(index, i) & 1 == 1 {
            seed = node_hash(h, &seed);
        }
    }
    seed
}

fn chain_border_right(mut seed: Hash, proof: &[Hash]) -> Hash {
    for h in proof {
        seed = node_hash(h, &seed);
    }
    seed
}

/// The root that an inclusion proof of `leaf` at `index` in a tree of `size` leads to.
pub fn root_from_inclusion_proof(
    index: u64,
    size: u64,
    leaf: &[u8],
    proof: &[Vec<u8>],
) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::IndexBeyondSize { index, size });
    }
    let leaf = as_hash("the leaf hash", leaf)?;
    let (inner, border) = decompose(index, size);
    if proof.len() != inner + border {
        return Err(ProofError::WrongProofSize { got: proof.len(), want: inner + border });
    }
    let proof = as_hashes(proof)?;
    let r = chain_inner(leaf, &proof[..inner], index);
    Ok(chain_border_right(r, &proof[inner..]))
}

/// Checks that `leaf` (a leaf hash) is at `index` in the tree of `size` leaves with `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &[u8],
    proof: &[Vec<u8>],
    root: &[u8],
) -> Result<(), ProofError> {
    let root = as_hash("the root", root)?;
    if root_from_inclusion_proof(index, size, leaf, proof)? != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Checks that the tree of `size2` leaves with `root2` extends the tree of `size1` leaves with
/// `root1` (append-only). Requires 0 < size1 <= size2.
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    proof: &[Vec<u8>],
    root1: &[u8],
    root2: &[u8],
) -> Result<(), ProofError> {
    if size2 < size1 {
        return Err(ProofError::SizesReversed { size1, size2 });
    }
    // Nothing can be proven from the empty tree (not even to itself).
    if size1 == 0 {
        return Err(ProofError::FromEmptyTree);
    }
    // Equal sizes: nothing to compute, the roots must be the same bytes.
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(ProofError::ProofForEqualSizes);
        }
        return if root1 == root2 { Ok(()) } else { Err(ProofError::RootMismatch) };
    }
    let root1 = as_hash("root1", root1)?;
    let root2 = as_hash("root2", root2)?;
    if proof.is_empty() {
        return Err(ProofError::EmptyProof);
    }
    let (inner, border) = decompose(size1 - 1, size2);
    let shift = size1.trailing_zeros() as usize;
    let inner = inner - shift; // shift < inner when size1 < size2
    let proof = as_hashes(proof)?;
    // Unless size1 is a power of two (its root is then a node of the new tree), the proof starts
    // with the hash of the subtree of size 2^shift that the path starts from.
    let (seed, start) = if size1 == 1 << shift { (root1, 0) } else { (proof[0], 1) };
    if proof.len() != start + inner + border {
        return Err(ProofError::WrongProofSize { got: proof.len(), want: start + inner + border });
    }
    let proof = &proof[start..];
    let mask = (size1 - 1) >> shift;
    let hash1 = chain_border_right(chain_inner_right(seed, &proof[..inner], mask), &proof[inner..]);
    if hash1 != root1 {
        return Err(ProofError::RootMismatch);
    }
    let hash2 = chain_border_right(chain_inner(seed, &proof[..inner], mask), &proof[inner..]);
    if hash2 != root2 {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(format!("entry {i}").as_bytes())).collect()
    }

    fn v(p: &[Hash]) -> Vec<Vec<u8>> {
        p.iter().map(|h| h.to_vec()).collect()
    }

    #[test]
    fn sizes_near_two_to_the_64_are_refused_not_overflowed() {
        // The fuzzer's input: an index with the top bit set and a 64-hash proof.
        let leaf = [1u8; 32].to_vec();
        let proof: Vec<Vec<u8>> = (0..65u8).map(|i| vec![i; 32]).collect();
        for n in [63, 64, 65] {
            assert!(verify_inclusion(1 << 63, u64::MAX, &leaf, &proof[..n], &[0u8; 32]).is_err());
            // The last leaf of a tree of 2^64 - 1: a path of 63 border hashes, computed.
            let last = root_from_inclusion_proof(u64::MAX - 1, u64::MAX, &leaf, &proof[..n]);
            assert_eq!(last.is_ok(), n == 63, "{last:?}");
            assert!(verify_consistency(1 << 63, u64::MAX, &proof[..n], &[0u8; 32], &[1u8; 32]).is_err());
            assert!(verify_consistency(3, u64::MAX, &proof[..n], &[0u8; 32], &[1u8; 32]).is_err());
        }
        assert_eq!(shr(5, 64), 0);
        assert_eq!(shr(5, 1), 2);
    }

    #[test]
    fn known_roots() {
        // RFC 6962's test tree (transparency-dev testdata): the empty root and one leaf.
        assert_eq!(
            empty_root().iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let l = leaves(3);
        assert_eq!(root(&l), node_hash(&node_hash(&l[0], &l[1]), &l[2]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every inclusion proof made by the reference verifies; any change to it does not.
        #[test]
        fn inclusion_round_trip(n in 1usize..150, pick in any::<u64>(), flip in any::<(usize, u8)>()) {
            let l = leaves(n);
            let r = root(&l);
            let i = pick % n as u64;
            let p = inclusion_proof(&l, i).unwrap();
            prop_assert!(verify_inclusion(i, n as u64, &l[i as usize], &v(&p), &r).is_ok());
            if !p.is_empty() {
                let mut bad = p.clone();
                let k = flip.0 % bad.len();
                bad[k][flip.1 as usize % 32] ^= 1;
                prop_assert!(verify_inclusion(i, n as u64, &l[i as usize], &v(&bad), &r).is_err());
            }
            if n > 1 {
                let other = (i + 1) % n as u64;
                prop_assert!(verify_inclusion(i, n as u64, &l[other as usize], &v(&p), &r).is_err());
            }
            // (A proof can also fit a larger size against the same root: the tree size is bound
            // by the signed checkpoint, not by the proof. An index beyond the size is refused.)
            prop_assert_eq!(
                verify_inclusion(n as u64, n as u64, &l[i as usize], &v(&p), &r),
                Err(ProofError::IndexBeyondSize { index: n as u64, size: n as u64 })
            );
        }

        /// Every consistency proof made by the reference verifies; changing it, or claiming a
        /// rewritten history, does not.
        #[test]
        fn consistency_round_trip(n in 1usize..150, pick in any::<u64>(), flip in any::<(usize, u8)>()) {
            let l = leaves(n);
            let m = 1 + pick % n as u64;
            let p = consistency_proof(&l, m).unwrap();
            let (r1, r2) = (root(&l[..m as usize]), root(&l));
            prop_assert!(verify_consistency(m, n as u64, &v(&p), &r1, &r2).is_ok());
            if !p.is_empty() {
                let mut bad = p.clone();
                let k = flip.0 % bad.len();
                bad[k][flip.1 as usize % 32] ^= 1;
                prop_assert!(verify_consistency(m, n as u64, &v(&bad), &r1, &r2).is_err());
            }
            // A history in which an old entry was changed is not consistent with the new root.
            let mut forged = l.clone();
            forged[(pick as usize) % m as usize] = leaf_hash(b"rewritten");
            let forged_r1 = root(&forged[..m as usize]);
            prop_assert!(verify_consistency(m, n as u64, &v(&p), &forged_r1, &r2).is_err());
        }
    }
}
