//! Sealed values and wrapped keys as replicas or the disk hand them back: opened only if
//! authentic, refused otherwise, without panicking.
#![no_main]
use edgefabric_crypto::envelope::{self, DataKey};
use edgefabric_crypto::Identity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dk = DataKey::from_bytes([3u8; 32]);
    let _ = envelope::sealed_version(data);
    assert!(envelope::open(&dk, "ns", "key", data).is_err(), "forged a sealed value");
    assert!(envelope::open_series(&dk, b"context", data).is_err(), "forged a sealed block");
    let identity = Identity::from_seed(&[5u8; 32]);
    let _ = envelope::unwrap(data, &identity, b"context");
});
