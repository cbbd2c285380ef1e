//! RFC 6962 inclusion and consistency proofs from a server (`/v1/ledger/proof/*`): any sizes,
//! indices, hashes and proof lengths are checked without panicking or overflowing.
#![no_main]
use edgefabric_ledger::merkle::{root_from_inclusion_proof, verify_consistency, verify_inclusion};
use libfuzzer_sys::fuzz_target;

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (a, b) = data.split_at(n);
    *data = b;
    a
}

fn u64_of(data: &mut &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let t = take(data, 8);
    b[..t.len()].copy_from_slice(t);
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let mut d = data;
    let (a, b) = (u64_of(&mut d), u64_of(&mut d));
    // Sizes are often small in real proofs: fold half the inputs into a small range.
    let (a, b) = if a & 1 == 0 { (a % 64, b % 64) } else { (a, b) };
    let leaf_len = take(&mut d, 1).first().copied().unwrap_or(0) as usize;
    let leaf = take(&mut d, leaf_len).to_vec();
    let root1 = take(&mut d, 32).to_vec();
    let root2 = take(&mut d, 32).to_vec();
    // Proof hashes of 32 bytes, the last maybe short (a malformed proof).
    let proof: Vec<Vec<u8>> = d.chunks(32).map(|c| c.to_vec()).collect();
    let _ = root_from_inclusion_proof(a, b, &leaf, &proof);
    let _ = verify_inclusion(a, b, &leaf, &proof, &root1);
    let _ = verify_consistency(a, b, &proof, &root1, &root2);
});
