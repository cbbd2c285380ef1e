//! The engine's append-only files as found on disk after anything (a torn write, bit rot):
//! opening replays what is valid or fails with an error; every key it keeps can be read.
#![no_main]
use edgefabric_tsdb::logkv::LogKv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data.log");
    std::fs::write(&path, data).expect("write");
    let Ok(kv) = LogKv::open(&path) else { return };
    for item in kv.range::<std::ops::RangeFull>(..) {
        let _ = item;
    }
});
