//! Envelope encryption of values (AES-256-GCM, the `aes-gcm` crate) and wrapping of data keys
//! for a node (X25519 + HKDF-SHA256 + AES-256-GCM: the DHKEM-style construction of RFC 9180,
//! written out).
//!
//! **Values.** A sealed value is `0x01 ‖ key version (u32 BE) ‖ nonce (12 bytes) ‖ ciphertext ‖
//! tag (16 bytes)`. The nonce is random from the OS for every value (2^-32 collision bound stays
//! far off at the key's lifetime: rotate before ~2^32 values). The associated data binds the
//! namespace, the key and the key version: `edgefabric-value-v1\0 ‖ ns ‖ \0 ‖ key ‖ \0 ‖
//! version (u32 BE)`, so a ciphertext moved to another key, namespace or version fails to open.
//!
//! **Time-series blocks** (a confidential namespace's series: one series' samples of one
//! write) use the same layout and keys, with associated data in their own domain:
//! `edgefabric-series-v1\0 ‖ context ‖ version (u32 BE)`, the context being what stays in clear
//! (namespace, series, time bounds, count: `tsdb::batch::SealedSeries::aad`).
//!
//! **Key wrapping.** A data key is wrapped for a node's X25519 public key: a fresh ephemeral
//! X25519 key pair, the shared secret `X25519(eph, node)`, a key-encryption key
//! `HKDF-SHA256(salt = eph_pub ‖ node_pub, ikm = shared, info = "edgefabric-wrap-v1\0" ‖ context)`
//! and AES-256-GCM over the data key with a random nonce and the context as associated data. The
//! wrapped form is `eph_pub (32) ‖ nonce (12) ‖ ciphertext+tag (48)`. The context names the
//! namespace and key version, so a wrapped key cannot be replayed for another.
//!
//! A node's X25519 key is derived from its ed25519 node key by the standard birational map
//! (RFC 7748 §4.1; libsodium's `crypto_sign_ed25519_*_to_curve25519`), so node keys stay one
//! file and the cluster map's ed25519 public keys are all a wrapper needs.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{random_bytes, Error, Identity, PublicKey, Result};

const VALUE_FORMAT: u8 = 0x01;
const NONCE: usize = 12;
const TAG: usize = 16;
/// Bytes a sealed value adds to its plaintext.
pub const SEAL_OVERHEAD: usize = 1 + 4 + NONCE + TAG;
/// Bytes of a wrapped data key.
pub const WRAPPED_LEN: usize = 32 + NONCE + 32 + TAG;

/// A namespace's data key (AES-256). Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    pub fn generate() -> Result<Self> {
        Ok(DataKey(random_bytes::<32>()?))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(bytes)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&self.0).into())
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

fn value_aad(ns: &str, key: &str, version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(24 + ns.len() + key.len());
    aad.extend_from_slice(b"edgefabric-value-v1\0");
    aad.extend_from_slice(ns.as_bytes());
    aad.push(0);
    aad.extend_from_slice(key.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// Encrypts `plaintext` as the value of `key` in namespace `ns` under data key `version`.
pub fn seal(dk: &DataKey, version: u32, ns: &str, key: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
    seal_aad(dk, version, &value_aad(ns, key, version), plaintext)
}

/// The associated data of a time-series block: its own domain (a value's ciphertext cannot
/// pass for a block, nor the reverse), the caller's context (the block's namespace, series and
/// time bounds, which stay in clear) and the key version.
fn series_aad(context: &[u8], version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + context.len());
    aad.extend_from_slice(b"edgefabric-series-v1\0");
    aad.extend_from_slice(context);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// Encrypts a time-series block (a series' samples of one batch) under data key `version`,
/// bound to `context`; the same layout as a sealed value.
pub fn seal_series(dk: &DataKey, version: u32, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    seal_aad(dk, version, &series_aad(context, version), plaintext)
}

/// Decrypts a block sealed by [`seal_series`] with the same context; anything else fails
/// with `BadCiphertext`.
pub fn open_series(dk: &DataKey, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
    let version = sealed_version(sealed)?;
    open_aad(dk, &series_aad(context, version), sealed)
}

fn seal_aad(dk: &DataKey, version: u32, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    let nonce = random_bytes::<NONCE>()?;
    let ct = dk
        .cipher()
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        .map_err(|_| Error::Invalid { what: "plaintext", message: "too long to encrypt".into() })?;
    let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
    out.push(VALUE_FORMAT);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// The key version a sealed value names (to pick the data key), or an error if it is not a
/// sealed value.
pub fn sealed_version(sealed: &[u8]) -> Result<u32> {
    if sealed.len() < SEAL_OVERHEAD || sealed[0] != VALUE_FORMAT {
        return Err(Error::Invalid {
            what: "sealed value",
            message: "not a sealed value (format or length)".into(),
        });
    }
    Ok(u32::from_be_bytes([sealed[1], sealed[2], sealed[3], sealed[4]]))
}

/// Decrypts a value sealed by [`seal`] for the same namespace, key and version; any change to
/// the ciphertext, or a different namespace, key or data key, fails with `BadCiphertext`.
pub fn open(dk: &DataKey, ns: &str, key: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    let version = sealed_version(sealed)?;
    open_aad(dk, &value_aad(ns, key, version), sealed)
}

fn open_aad(dk: &DataKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
    sealed_version(sealed)?;
    let nonce = &sealed[5..5 + NONCE];
    dk.cipher()
        .decrypt(Nonce::from_slice(nonce), Payload { msg: &sealed[5 + NONCE..], aad })
        .map_err(|_| Error::BadCiphertext)
}

// ---- key wrapping ----

/// A node's X25519 public key, derived from its ed25519 public key.
pub fn x25519_public(node: &PublicKey) -> [u8; 32] {
    node.0.to_montgomery().to_bytes()
}

/// A node's X25519 secret, derived from its ed25519 identity.
fn x25519_secret(identity: &Identity) -> x25519_dalek::StaticSecret {
    let scalar = Zeroizing::new(identity.key.to_scalar_bytes());
    x25519_dalek::StaticSecret::from(*scalar)
}

fn kek(
    shared: &[u8; 32],
    eph: &[u8; 32],
    recipient: &[u8; 32],
    context: &[u8],
) -> Result<Zeroizing<[u8; 32]>> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(eph);
    salt[32..].copy_from_slice(recipient);
    let mut info = b"edgefabric-wrap-v1\0".to_vec();
    info.extend_from_slice(context);
    hkdf32(&salt, shared, &info)
}

/// HKDF-SHA256 (RFC 5869) of `ikm` with `salt` and `info`, 32 bytes out.
fn hkdf32(salt: &[u8], ikm: &[u8], info: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(ikm);
    let info_parts = [info];
    let okm = prk
        .expand(&info_parts, ring::hkdf::HKDF_SHA256)
        .map_err(|_| Error::Invalid { what: "hkdf", message: "expand failed".into() })?;
    let mut out = Zeroizing::new([0u8; 32]);
    okm.fill(out.as_mut()).map_err(|_| Error::Invalid { what: "hkdf", message: "fill failed".into() })?;
    Ok(out)
}

/// The key two nodes share for authenticating the frames between them (`store/src/link.rs`):
/// static-static X25519 between their node keys, then HKDF-SHA256 bound to both (id, key)
/// pairs in a canonical order, so both ends derive the same key and nobody else can.
/// Refuses a peer key of small order (a shared secret of zero would be a key everyone knows).
pub fn link_key(me: &Identity, my_id: u64, peer: &PublicKey, peer_id: u64) -> Result<Zeroizing<[u8; 32]>> {
    let peer_x = x25519_dalek::PublicKey::from(x25519_public(peer));
    let shared = x25519_secret(me).diffie_hellman(&peer_x);
    if !shared.was_contributory() {
        return Err(Error::Invalid { what: "peer key", message: "of small order: no shared secret".into() });
    }
    let mine = (my_id, me.public_key().to_bytes());
    let theirs = (peer_id, peer.to_bytes());
    let (a, b) = if mine <= theirs { (mine, theirs) } else { (theirs, mine) };
    let mut info = b"edgefabric-link-v1\0".to_vec();
    for (id, key) in [a, b] {
        info.extend_from_slice(&id.to_be_bytes());
        info.extend_from_slice(&key);
    }
    hkdf32(b"edgefabric-link-v1", shared.as_bytes(), &info)
}

/// Wraps `dk` for the node with ed25519 public key `node`; `context` (e.g. namespace and key
/// version) must be given again to unwrap.
pub fn wrap(dk: &DataKey, node: &PublicKey, context: &[u8]) -> Result<Vec<u8>> {
    let recipient = x25519_public(node);
    let eph = x25519_dalek::StaticSecret::from(random_bytes::<32>()?);
    let eph_pub = x25519_dalek::PublicKey::from(&eph).to_bytes();
    let shared = Zeroizing::new(eph.diffie_hellman(&x25519_dalek::PublicKey::from(recipient)).to_bytes());
    if shared.iter().all(|b| *b == 0) {
        return Err(Error::Invalid { what: "node key", message: "a low-order X25519 key".into() });
    }
    let kek = kek(&shared, &eph_pub, &recipient, context)?;
    let nonce = random_bytes::<NONCE>()?;
    let ct = Aes256Gcm::new(kek.as_ref().into())
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: &dk.0, aad: context })
        .map_err(|_| Error::Invalid { what: "data key", message: "wrapping failed".into() })?;
    let mut out = Vec::with_capacity(WRAPPED_LEN);
    out.extend_from_slice(&eph_pub);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Unwraps a data key wrapped for this node's key with the same `context`.
pub fn unwrap(wrapped: &[u8], identity: &Identity, context: &[u8]) -> Result<DataKey> {
    if wrapped.len() != WRAPPED_LEN {
        return Err(Error::Invalid {
            what: "wrapped key",
            message: format!("{} bytes, a wrapped key is {WRAPPED_LEN}", wrapped.len()),
        });
    }
    let eph_pub: [u8; 32] = wrapped[..32].try_into().map_err(|_| Error::BadCiphertext)?;
    let secret = x25519_secret(identity);
    let recipient = x25519_public(&identity.public_key());
    let shared = Zeroizing::new(secret.diffie_hellman(&x25519_dalek::PublicKey::from(eph_pub)).to_bytes());
    if shared.iter().all(|b| *b == 0) {
        return Err(Error::BadCiphertext);
    }
    let kek = kek(&shared, &eph_pub, &recipient, context)?;
    let pt = Zeroizing::new(
        Aes256Gcm::new(kek.as_ref().into())
            .decrypt(
                Nonce::from_slice(&wrapped[32..32 + NONCE]),
                Payload { msg: &wrapped[32 + NONCE..], aad: context },
            )
            .map_err(|_| Error::BadCiphertext)?,
    );
    let key: [u8; 32] = pt.as_slice().try_into().map_err(|_| Error::BadCiphertext)?;
    Ok(DataKey(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace([' ', '\n'], "")).unwrap()
    }

    /// The GCM specification's AES-256 test cases 14 and 16 (McGrew & Viega, "The Galois/Counter
    /// Mode of Operation", appendix B), through the same `aes-gcm` cipher `seal` uses.
    #[test]
    fn nist_gcm_aes256_vectors() {
        let cipher = Aes256Gcm::new_from_slice(&[0u8; 32]).unwrap();
        let ct =
            cipher.encrypt(Nonce::from_slice(&[0u8; 12]), Payload { msg: &[0u8; 16], aad: &[] }).unwrap();
        assert_eq!(ct, h("cea7403d4d606b6e074ec5d3baf39d18 d0d1c8a799996bf0265b98b5d48ab919"));
        let key = h("feffe9928665731c6d6a8f9467308308 feffe9928665731c6d6a8f9467308308");
        let iv = h("cafebabefacedbaddecaf888");
        let pt = h("d9313225f88406e5a55909c5aff5269a 86a7a9531534f7da2e4c303d8a318a72 1c3c0c95956809532fcf0e2449a6b525 b16aedf5aa0de657ba637b39");
        let aad = h("feedfacedeadbeeffeedfacedeadbeef abaddad2");
        let cipher = Aes256Gcm::new_from_slice(&key).unwrap();
        let ct = cipher.encrypt(Nonce::from_slice(&iv), Payload { msg: &pt, aad: &aad }).unwrap();
        let want = h("522dc1f099567d07f47f37a32a84427d 643a8cdcbfe5c0c97598a2bd2555d1aa 8cb08e48590dbb3da7b08b1056828838 c5f61e6393ba7a0abcc9f662 76fc6ece0f4e1768cddf8853bb2d551b");
        assert_eq!(ct, want);
        let mut bad = ct.clone();
        bad[3] ^= 1;
        assert!(cipher.decrypt(Nonce::from_slice(&iv), Payload { msg: &bad, aad: &aad }).is_err());
    }

    /// RFC 7748 §5.2 (the first X25519 test vector) and §6.1 (Alice and Bob).
    #[test]
    fn rfc7748_x25519_vectors() {
        let k: [u8; 32] =
            h("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4").try_into().unwrap();
        let u: [u8; 32] =
            h("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c").try_into().unwrap();
        let out = x25519_dalek::x25519(k, u);
        assert_eq!(out.to_vec(), h("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"));
        let a: [u8; 32] =
            h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a").try_into().unwrap();
        let b: [u8; 32] =
            h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb").try_into().unwrap();
        let a_pub = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(a));
        let b_pub = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(b));
        assert_eq!(
            a_pub.as_bytes().to_vec(),
            h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            b_pub.as_bytes().to_vec(),
            h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let s1 = x25519_dalek::StaticSecret::from(a).diffie_hellman(&b_pub);
        let s2 = x25519_dalek::StaticSecret::from(b).diffie_hellman(&a_pub);
        assert_eq!(s1.as_bytes(), s2.as_bytes());
        assert_eq!(
            s1.as_bytes().to_vec(),
            h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
        );
    }

    /// RFC 5869 appendix A.1 (HKDF-SHA256, basic test case) through ring, as `kek` uses it.
    #[test]
    fn rfc5869_hkdf_vector() {
        let ikm = h("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
        let salt = h("000102030405060708090a0b0c");
        let info = h("f0f1f2f3f4f5f6f7f8f9");
        struct Len(usize);
        impl ring::hkdf::KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &salt).extract(&ikm);
        let info_parts = [info.as_slice()];
        let okm = prk.expand(&info_parts, Len(42)).unwrap();
        let mut out = [0u8; 42];
        okm.fill(&mut out).unwrap();
        assert_eq!(
            out.to_vec(),
            h("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
        );
    }

    #[test]
    fn the_x25519_key_matches_the_ed25519_key() {
        let id = Identity::from_seed(&[5; 32]);
        let secret = x25519_secret(&id);
        assert_eq!(x25519_dalek::PublicKey::from(&secret).to_bytes(), x25519_public(&id.public_key()));
    }

    #[test]
    fn moved_or_altered_ciphertexts_fail_cleanly() {
        let dk = DataKey::generate().unwrap();
        let sealed = seal(&dk, 3, "med", "patient/1", b"glucose 5.4").unwrap();
        assert_eq!(sealed.len(), SEAL_OVERHEAD + 11);
        assert_eq!(open(&dk, "med", "patient/1", &sealed).unwrap(), b"glucose 5.4");
        assert_eq!(sealed_version(&sealed).unwrap(), 3);
        assert!(matches!(open(&dk, "med", "patient/2", &sealed), Err(Error::BadCiphertext)));
        assert!(matches!(open(&dk, "other", "patient/1", &sealed), Err(Error::BadCiphertext)));
        assert!(matches!(
            open(&DataKey::generate().unwrap(), "med", "patient/1", &sealed),
            Err(Error::BadCiphertext)
        ));
        let mut v = sealed.clone();
        v[4] ^= 1; // another version number
        assert!(matches!(open(&dk, "med", "patient/1", &v), Err(Error::BadCiphertext)));
        let mut v = sealed.clone();
        let last = v.len() - 1;
        v[last] ^= 1;
        assert!(matches!(open(&dk, "med", "patient/1", &v), Err(Error::BadCiphertext)));
        assert!(open(&dk, "med", "patient/1", &sealed[..10]).is_err());
        assert!(open(&dk, "med", "patient/1", b"plain").is_err());
        // Two seals of one value differ (random nonces).
        assert_ne!(seal(&dk, 3, "med", "k", b"x").unwrap(), seal(&dk, 3, "med", "k", b"x").unwrap());
    }

    #[test]
    fn series_blocks_open_only_with_their_context_and_never_as_values() {
        let dk = DataKey::generate().unwrap();
        let block = seal_series(&dk, 2, b"med|temp{room=a}|100..200", b"samples").unwrap();
        assert_eq!(sealed_version(&block).unwrap(), 2);
        assert_eq!(open_series(&dk, b"med|temp{room=a}|100..200", &block).unwrap(), b"samples");
        // Moved to another series or time, or read as a value: refused.
        assert!(matches!(open_series(&dk, b"med|temp{room=b}|100..200", &block), Err(Error::BadCiphertext)));
        assert!(matches!(open_series(&dk, b"med|temp{room=a}|100..201", &block), Err(Error::BadCiphertext)));
        assert!(matches!(open(&dk, "med", "temp{room=a}", &block), Err(Error::BadCiphertext)));
        // And a value cannot pass for a block.
        let value = seal(&dk, 2, "med", "k", b"samples").unwrap();
        assert!(matches!(open_series(&dk, b"med|k", &value), Err(Error::BadCiphertext)));
        assert!(open_series(&dk, b"x", b"short").is_err());
    }

    #[test]
    fn wrapped_keys_open_only_for_their_node_and_context() {
        let dk = DataKey::generate().unwrap();
        let node = Identity::from_seed(&[1; 32]);
        let other = Identity::from_seed(&[2; 32]);
        let w = wrap(&dk, &node.public_key(), b"med\0v1").unwrap();
        assert_eq!(w.len(), WRAPPED_LEN);
        assert_eq!(unwrap(&w, &node, b"med\0v1").unwrap().0, dk.0);
        assert!(matches!(unwrap(&w, &other, b"med\0v1"), Err(Error::BadCiphertext)));
        assert!(matches!(unwrap(&w, &node, b"med\0v2"), Err(Error::BadCiphertext)));
        let mut bad = w.clone();
        bad[40] ^= 1;
        assert!(unwrap(&bad, &node, b"med\0v1").is_err());
        assert!(unwrap(&w[..50], &node, b"med\0v1").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn seal_open_round_trips(key in any::<[u8; 32]>(), version in any::<u32>(), ns in "[a-z0-9]{1,20}", k in ".{1,40}", value in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let dk = DataKey::from_bytes(key);
            let sealed = seal(&dk, version, &ns, &k, &value).unwrap();
            prop_assert_eq!(sealed.len(), value.len() + SEAL_OVERHEAD);
            prop_assert_eq!(sealed_version(&sealed).unwrap(), version);
            prop_assert_eq!(open(&dk, &ns, &k, &sealed).unwrap(), value);
            let other = format!("{k}x");
            prop_assert!(open(&dk, &ns, &other, &sealed).is_err());
        }
    }

    #[test]
    fn both_ends_derive_the_same_link_key_and_nobody_else_does() {
        let a = Identity::from_seed(&[1; 32]);
        let b = Identity::from_seed(&[2; 32]);
        let c = Identity::from_seed(&[3; 32]);
        let ab = link_key(&a, 1, &b.public_key(), 2).unwrap();
        let ba = link_key(&b, 2, &a.public_key(), 1).unwrap();
        assert_eq!(*ab, *ba);
        // A third key, or the right keys under other ids, give another key.
        assert_ne!(*link_key(&c, 1, &b.public_key(), 2).unwrap(), *ab);
        assert_ne!(*link_key(&a, 1, &b.public_key(), 3).unwrap(), *ab);
        assert_ne!(*link_key(&a, 1, &c.public_key(), 2).unwrap(), *ab);
    }
}
