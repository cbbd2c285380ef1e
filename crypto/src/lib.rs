//! EdgeFabric's cryptography: SHA-256, ed25519 node and publisher identities with key files,
//! random tokens, and (`envelope`) AES-256-GCM envelope encryption of values with data keys
//! wrapped for nodes (X25519 + HKDF-SHA256 + AES-256-GCM). Everything random comes from the OS (`ring::rand::SystemRandom`); secrets
//! are zeroized on drop.

pub mod envelope;
pub mod paseto;
pub mod sealed_file;
pub mod tls;

use std::fs;
use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ed25519_dalek::Signer;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key file {path}: {message}")]
    KeyFile { path: String, message: String },
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
    #[error("bad signature")]
    BadSignature,
    /// A sealed value or wrapped key that does not open: altered, moved to another key or
    /// namespace, or under another data key.
    #[error("the ciphertext does not decrypt with this key and context")]
    BadCiphertext,
    #[error("the system random generator failed")]
    Random,
    #[error("TLS: {what}: {message}")]
    Tls { what: String, message: String },
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    SystemRandom::new().fill(&mut out).map_err(|_| Error::Random)?;
    Ok(out)
}

/// A bearer token: 32 random bytes, base64url without padding.
pub fn random_token() -> Result<String> {
    let bytes = Zeroizing::new(random_bytes::<32>()?);
    Ok(URL_SAFE_NO_PAD.encode(bytes.as_ref()))
}

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An ed25519 identity (a node's or a publisher's). The secret is zeroized on drop by
/// ed25519-dalek's `SigningKey`.
pub struct Identity {
    key: ed25519_dalek::SigningKey,
}

/// Shows the public key only: the secret never reaches a log.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.public_key().to_base64())
    }
}

impl Identity {
    pub fn generate() -> Result<Self> {
        let seed = Zeroizing::new(random_bytes::<32>()?);
        Ok(Identity { key: ed25519_dalek::SigningKey::from_bytes(&seed) })
    }

    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Identity { key: ed25519_dalek::SigningKey::from_bytes(seed) }
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }

    /// The key as PKCS#8 (RFC 8410's one-key form), for TLS: the node key certificate.
    pub fn pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        // SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }
        let mut der = Zeroizing::new(Vec::with_capacity(48));
        der.extend_from_slice(&[
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
        ]);
        der.extend_from_slice(self.key.as_bytes());
        der
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    /// Writes the secret seed (base64, mode 0600) to `path` and the public key (base64) to
    /// `path.pub`. Refuses to overwrite an existing secret.
    pub fn write(&self, path: &Path) -> Result<()> {
        let err = |m: String| Error::KeyFile { path: path.display().to_string(), message: m };
        let seed = Zeroizing::new(STANDARD.encode(self.key.to_bytes()));
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|e| err(e.to_string()))?;
        f.write_all(format!("{}\n", seed.as_str()).as_bytes()).map_err(|e| err(e.to_string()))?;
        f.sync_all().map_err(|e| err(e.to_string()))?;
        let pub_path = pub_path(path);
        fs::write(&pub_path, format!("{}\n", self.public_key().to_base64()))
            .map_err(|e| err(e.to_string()))?;
        Ok(())
    }

    pub fn read(path: &Path) -> Result<Self> {
        let err = |m: String| Error::KeyFile { path: path.display().to_string(), message: m };
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| err(e.to_string()))?);
        let bytes =
            Zeroizing::new(STANDARD.decode(text.trim()).map_err(|e| err(format!("not base64: {e}")))?);
        let seed: &[u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| err(format!("expected a 32-byte ed25519 seed, found {} bytes", bytes.len())))?;
        Ok(Identity::from_seed(seed))
    }
}

/// The public file beside a key file: `FILE.pub`.
pub fn pub_path(path: &Path) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    s.into()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl PublicKey {
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.as_bytes())
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        *self.0.as_bytes()
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self> {
        ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map(PublicKey)
            .map_err(|e| Error::Invalid { what: "public key", message: e.to_string() })
    }

    pub fn from_base64(s: &str) -> Result<Self> {
        let bytes = STANDARD
            .decode(s.trim())
            .map_err(|e| Error::Invalid { what: "public key", message: format!("not base64: {e}") })?;
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| Error::Invalid {
            what: "public key",
            message: format!("expected 32 bytes, found {}", bytes.len()),
        })?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&arr)
            .map_err(|e| Error::Invalid { what: "public key", message: e.to_string() })?;
        Ok(PublicKey(key))
    }

    /// A small-order key: with it, a signature can "verify" for messages its holder never
    /// signed (under the cofactored equation that batch verification uses). Refused wherever a
    /// key is registered.
    pub fn is_weak(&self) -> bool {
        self.0.is_weak()
    }

    /// Strict verification (RFC 8032 with the malleability checks of `verify_strict`).
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<()> {
        let sig: [u8; 64] = sig.try_into().map_err(|_| Error::BadSignature)?;
        let sig = ed25519_dalek::Signature::from_bytes(&sig);
        self.0.verify_strict(msg, &sig).map_err(|_| Error::BadSignature)
    }
}

/// Verifies many (message, signature, key) triples at once, about twice as fast per signature
/// as one by one. All-or-nothing: on `Err` the caller finds the bad one with
/// [`PublicKey::verify`]. The batch equation is the cofactored one, so it accepts everything
/// `verify` accepts; callers that need `verify`'s strictness check new signatures with it first.
pub fn verify_batch(messages: &[&[u8]], signatures: &[[u8; 64]], keys: &[PublicKey]) -> Result<()> {
    if messages.len() != signatures.len() || messages.len() != keys.len() {
        return Err(Error::Invalid { what: "batch", message: "lengths differ".into() });
    }
    if messages.is_empty() {
        return Ok(());
    }
    let sigs: Vec<ed25519_dalek::Signature> =
        signatures.iter().map(ed25519_dalek::Signature::from_bytes).collect();
    let keys: Vec<ed25519_dalek::VerifyingKey> = keys.iter().map(|k| k.0).collect();
    ed25519_dalek::verify_batch(messages, &sigs, &keys).map_err(|_| Error::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_answer() {
        // FIPS 180-2, "abc".
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn rfc8032_test_1() {
        // RFC 8032 section 7.1, TEST 1 (empty message).
        let seed: [u8; 32] = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap()
            .try_into()
            .unwrap();
        let id = Identity::from_seed(&seed);
        assert_eq!(
            hex::encode(id.public_key().0.as_bytes()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        let sig = id.sign(b"");
        assert_eq!(
            hex::encode(sig),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
        assert!(id.public_key().verify(b"", &sig).is_ok());
        assert!(id.public_key().verify(b"x", &sig).is_err());
        let mut bad = sig;
        bad[0] ^= 1;
        assert!(id.public_key().verify(b"", &bad).is_err());
        assert!(id.public_key().verify(b"", &sig[..63]).is_err());
    }

    #[test]
    fn key_file_round_trip_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let id = Identity::generate().unwrap();
        id.write(&path).unwrap();
        let back = Identity::read(&path).unwrap();
        assert_eq!(back.public_key(), id.public_key());
        let pubtext = fs::read_to_string(pub_path(&path)).unwrap();
        assert_eq!(PublicKey::from_base64(&pubtext).unwrap(), id.public_key());
        assert!(Identity::generate().unwrap().write(&path).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn bad_key_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, "not base64!").unwrap();
        assert!(matches!(Identity::read(&path), Err(Error::KeyFile { .. })));
        fs::write(&path, STANDARD.encode([1u8; 31])).unwrap();
        let e = Identity::read(&path).err().unwrap().to_string();
        assert!(e.contains("32-byte"), "{e}");
        assert!(PublicKey::from_base64("AAAA").is_err());
    }

    #[test]
    fn tokens_are_random_and_compare_in_constant_time() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(constant_time_eq(a.as_bytes(), a.as_bytes()));
        assert!(!constant_time_eq(a.as_bytes(), b.as_bytes()));
        assert!(!constant_time_eq(b"ab", b"abc"));
    }
}
