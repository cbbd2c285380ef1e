//! EdgeFabric's replicated store: the raft log (`log`), the KV state machine (`kv`), the
//! openraft glue (`raft_store`), the node-to-node transport (`network`), the node runtime
//! that ties them together (`node`), idle groups' quiescence (`quiesce`), the ledger's runtime on a node (`ledger`), and the audit
//! trail's durable queue and shipper (`audit`).

// openraft's `StorageError` is large and is the error type its traits require; boxing it at
// every call site would only add allocations.
#![allow(clippy::result_large_err)]

pub mod audit;
pub mod backup;
pub mod codec;
pub mod confidential;
mod error;
pub mod faults;
pub mod fuzzing;
pub mod kv;
pub mod ledger;
pub mod link;
pub mod log;
pub mod metrics;
pub mod network;
pub mod node;
pub mod quiesce;
pub mod raft_store;
pub mod shard;
pub mod ts;
pub mod ts_queue;
pub mod types;

pub use error::{Error, Result};
pub use raft_store::{LogStore, NodeId, Raft, StateMachineStore, TypeConfig};
