//! The attestation ledger (issue 4): signed entries, hash-chained blocks, RFC 6962 proofs and
//! C2SP checkpoints, as plain synchronous code. Not built yet: this crate only reserves its
//! place in the workspace.
