//! The store's one error type. Callers branch on the variant: `InvalidInput`, `NotFound`,
//! `Conflict`, `Forbidden` and `Unsupported` are the client's fault and final; `Unavailable`
//! is retryable (no leader, no quorum, timeout); `Storage` and `Internal` are the node's fault.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum Error {
    /// A request field is malformed: `field` names it, `message` says what is wrong.
    #[error("invalid {field}: {message}")]
    InvalidInput { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    /// A compare-and-swap precondition failed; `current` is the key's revision (0: absent).
    #[error("revision mismatch on key {key:?}: expected {expected}, current {current}")]
    Conflict { key: String, expected: u64, current: u64 },
    #[error("{0}")]
    Unsupported(String),
    /// Not allowed here: e.g. a confidential namespace at a node outside its key sites.
    #[error("{0}")]
    Forbidden(String),
    /// No leader, no quorum, or no answer within the deadline. Retryable. For writes, the
    /// outcome is unknown: the write may still be applied later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, message: impl fmt::Display) -> Self {
        Error::InvalidInput { field: field.into(), message: message.to_string() }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Storage(format!("sled: {e}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Storage(format!("io: {e}"))
    }
}

impl From<bincode::error::EncodeError> for Error {
    fn from(e: bincode::error::EncodeError) -> Self {
        Error::Internal(format!("encode: {e}"))
    }
}

impl From<bincode::error::DecodeError> for Error {
    fn from(e: bincode::error::DecodeError) -> Self {
        Error::Storage(format!("decode: {e}"))
    }
}
