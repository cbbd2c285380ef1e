//! openraft's own storage conformance suite, run against the WAL log store and the sled state
//! machine exactly as a node opens them.

use edgefabric_store::log::LogEngine;
use edgefabric_store::{LogStore, StateMachineStore, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = LogEngine::open(&dir.path().join("log")).expect("open log");
        let db = sled::open(dir.path().join("db")).expect("open sled");
        let sm = StateMachineStore::open(&dir.path().join("sm"), &db, 1, None).expect("open sm");
        let flushed = edgefabric_store::raft_store::Flushed::new(engine.clone(), 0);
        Ok((dir, LogStore::new(engine, 1, flushed), sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("openraft storage suite failed: {e}");
    }
}
