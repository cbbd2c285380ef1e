//! Sealed values and wrapped keys as replicas or the disk hand them back: opened only if
//! authentic, refused otherwise, without panicking. The seeds are real seals under the key
//! used here, so the only values that may open are those seeds' (their plaintexts): any other
//! plaintext coming out would be a forgery.
#![no_main]
use edgefabric_crypto::envelope::{self, DataKey};
use edgefabric_crypto::Identity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dk = DataKey::from_bytes([3u8; 32]);
    let _ = envelope::sealed_version(data);
    if let Ok(plain) = envelope::open(&dk, "ns", "key", data) {
        assert_eq!(plain, b"secret", "forged a sealed value");
    }
    if let Ok(plain) = envelope::open_series(&dk, b"context", data) {
        assert_eq!(plain, b"samples", "forged a sealed block");
    }
    let identity = Identity::from_seed(&[5u8; 32]);
    let _ = envelope::unwrap(data, &identity, b"context");
});
