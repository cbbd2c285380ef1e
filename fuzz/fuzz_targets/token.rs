//! Access tokens (PASETO v4.public, `Authorization: Bearer`): any string is refused unless it
//! is a token signed by the key, without panicking.
#![no_main]
use edgefabric_crypto::{paseto, Identity};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let key = Identity::from_seed(&[7u8; 32]).public_key();
    let _ = paseto::verify(&key, token, b"", b"");
    let _ = paseto::verify(&key, token, b"footer", b"implicit");
});
