//! The time-series engine: Gorilla-style compressed chunks in its own append-only files, an
//! inverted label index, InfluxDB line-protocol parsing and a PromQL subset evaluated with
//! Prometheus's semantics.
//!
//! Plain synchronous code with no networking: the node (store/, api/) replicates write batches
//! through raft and calls in here to apply them and to answer queries.

pub mod batch;
pub mod bits;
pub mod codec;
pub mod engine;
pub mod line;
pub mod logkv;
pub mod matcher;
pub mod promql;

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Stored data that does not decode: a damaged disk or a bug, never bad client input.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// Client input that is wrong, with what and where.
    #[error("{0}")]
    Invalid(String),
    /// The disk failed (a read or a write of the engine's files).
    #[error("storage: {0}")]
    Io(String),
    /// A query ran past its deadline (`promql::Options::timeout`).
    #[error("query timed out in expression evaluation")]
    Timeout,
}
