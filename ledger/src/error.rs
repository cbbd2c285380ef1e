//! The ledger's error type. Validation failures are typed ([`Invalid`]) so callers and tests can
//! tell *which* rule a block or entry broke.

use crate::merkle::ProofError;
use crate::note::NoteError;

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// Why a block or an entry is not valid. `entry` is the entry's position within its block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Invalid {
    #[error("height {got}, expected {expected}")]
    Height { expected: u64, got: u64 },
    #[error("previous-block hash does not match block {} (the chain link is broken)", .height.saturating_sub(1))]
    PrevHash { height: u64 },
    #[error("entry root does not match the block's entries")]
    EntryRoot,
    #[error("log size {got}, expected {expected}")]
    LogSize { expected: u64, got: u64 },
    #[error("log root does not match the log with this block's entries")]
    LogRoot,
    #[error("a block must hold between 1 and {max} entries, this one holds {got}")]
    EntryCount { max: usize, got: usize },
    #[error("entry {entry}: {author} is not a current member")]
    UnknownAuthor { entry: usize, author: String },
    #[error("entry {entry}: {author} may not write {kind} entries")]
    Role { entry: usize, author: String, kind: String },
    #[error("entry {entry}: the signature does not verify")]
    Signature { entry: usize },
    #[error("entry {entry}: {message}")]
    Rule { entry: usize, message: String },
    /// The entry would record again what is already recorded (a member, an image, a
    /// revocation): a conflict, not malformed input.
    #[error("entry {entry}: {message}")]
    Duplicate { entry: usize, message: String },
    #[error("genesis: {0}")]
    Genesis(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// Bad input from a client: which field, what is wrong.
    #[error("invalid {field}: {message}")]
    Invalid { field: &'static str, message: String },
    /// A block that breaks a validation rule.
    #[error("block {height} is invalid: {reason}")]
    InvalidBlock { height: u64, reason: Invalid },
    /// A stored chain that does not verify (tampering or corruption): the first bad block.
    #[error("the stored ledger is corrupt at block {height}: {reason}")]
    Corrupt { height: u64, reason: String },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("undecodable: {0}")]
    Decode(String),
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error(transparent)]
    Note(#[from] NoteError),
    #[error("storage: {0}")]
    Storage(String),
}

impl LedgerError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        LedgerError::Invalid { field, message: message.into() }
    }
}

impl From<sled::Error> for LedgerError {
    fn from(e: sled::Error) -> Self {
        LedgerError::Storage(e.to_string())
    }
}
