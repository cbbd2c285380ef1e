//! The time-series engine (issue 7): Gorilla-compressed chunks on sled, an inverted label
//! index, line-protocol and remote-write ingest, and a PromQL subset. Not built yet: this crate
//! only reserves its place in the workspace.
