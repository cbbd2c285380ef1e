//! The node's API layer as a library — REST (axum) and gRPC (tonic) over the store, the ledger
//! and the time-series engine, configuration and `cluster init`, and the client side of the CLI
//! — so that the `edgefabric` binary (`main.rs`) and the fuzz targets (`fuzz/`) share it.

// The audited gRPC handlers nest async blocks (handler → audit wrapper → store calls) deeper
// than the default query depth allows when rustc computes their layouts.
#![recursion_limit = "256"]

pub mod audit;
pub mod auth;
pub mod backup;
pub mod client;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod grpc;
pub mod guard;
pub mod http;
pub mod kv_client;
pub mod ledger;
pub mod ledger_cli;
pub mod openapi;
pub mod server;
pub mod tls;
pub mod ts;
