//! Signed checkpoints (C2SP signed notes, `/v1/ledger/checkpoint`, `--old` files) and verifier
//! keys (`--trust`): parsed and verified, or refused, without panicking.
#![no_main]
use edgefabric_crypto::Identity;
use edgefabric_ledger::note::{verify_checkpoint, Checkpoint, Note, TrustedKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let key = Identity::from_seed(&[9u8; 32]).public_key();
    let trusted = [TrustedKey { name: "edgefabric/fuzz".into(), key }];
    let _ = verify_checkpoint(text, &trusted, 1);
    if let Ok(n) = Note::parse(text) {
        let _ = n.verify(&trusted, 1);
    }
    let _ = Checkpoint::parse(text);
    let _ = TrustedKey::parse(text);
});
