//! The attestation ledger (issue 4), as plain synchronous code with no networking:
//! - `merkle`: the RFC 6962 log tree: hashes, reference proofs, proof verification;
//! - `note`: C2SP signed notes and tlog checkpoints;
//! - `entry`: typed, signed entries and their canonical encodings;
//! - `block`: block headers, the per-block merkle-cbt entry root and its multi-proofs;
//! - `chain`: validation rules, the chain store and its indexes, fast proofs over stored
//!   subtree hashes, and full re-verification of a stored chain (tamper detection);
//! - `audit`: auditors' queries over the audit records, from the chain's indexes.
//!
//! The node's replication runtime (store/) orders blocks with raft and calls
//! [`chain::apply_block`] on every node; the API crate serves proofs and checkpoints.

pub mod audit;
pub mod block;
pub mod chain;
pub mod entry;
pub mod error;
pub mod merkle;
pub mod note;
pub mod verify;

pub use error::{Invalid, LedgerError, Result};
pub use merkle::{Hash, ProofError};
