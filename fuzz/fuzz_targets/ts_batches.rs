//! Time-series raft entries (from the log on disk or a peer): plain and sealed write batches and
//! sealed compactions decode or are refused; what decodes encodes back to the same value.
#![no_main]
use edgefabric_tsdb::batch::{SealedBatch, SealedCompaction, WriteBatch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = WriteBatch::decode(data) {
        let back = WriteBatch::decode(&b.encode()).expect("re-encoded batch decodes");
        assert_eq!(back.series.len(), b.series.len());
    }
    if let Ok(b) = SealedBatch::decode(data) {
        assert_eq!(SealedBatch::decode(&b.encode()).expect("re-encoded sealed batch"), b);
    }
    if let Ok(c) = SealedCompaction::decode(data) {
        assert_eq!(SealedCompaction::decode(&c.encode()).expect("re-encoded compaction"), c);
    }
});
