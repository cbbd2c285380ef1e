//! The attestation ledger (issue 4), as plain synchronous code. So far: the RFC 6962 Merkle
//! tree (`merkle`) with inclusion and consistency proofs and their verification. Entries,
//! blocks, checkpoints and the chain store come next.

pub mod merkle;
pub mod note;

pub use merkle::{Hash, ProofError};
