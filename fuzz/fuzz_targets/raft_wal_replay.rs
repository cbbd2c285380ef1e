//! The node's write-ahead file (`raft/raft.wal`: every group's raft log, votes, purges, the
//! store-and-forward and audit queues) as found on disk after anything: opening replays what
//! is valid and cuts the rest, or fails with an error; what it kept can be read.
#![no_main]
use edgefabric_store::log::LogEngine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("raft.wal"), data).expect("write");
    let Ok(engine) = LogEngine::open(dir.path()) else { return };
    for group in [0, 1, 2, 3, u64::MAX, u64::MAX - 1, u64::MAX - 2, u64::MAX - 3] {
        let _ = engine.entries(group, ..);
        let _ = engine.last_entry(group);
        let _ = engine.vote(group);
        let _ = engine.purged(group);
    }
});
