//! A backup file (`edgefabric restore --from`, `--check`), from a disk or a download: its
//! frames, digest, header, group images and queued records are read and checked, or refused
//! with an error — never a panic, a hang or an allocation beyond the input's size; what reads
//! as a backup is exactly the input's length.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = edgefabric_store::backup::check_backup_bytes(data) {
        assert_eq!(s.bytes, data.len() as u64);
    }
});
