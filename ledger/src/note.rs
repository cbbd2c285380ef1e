//! Signed notes (c2sp.org/signed-note) and transparency-log checkpoints (c2sp.org/tlog-checkpoint).
//!
//! A checkpoint is the text `origin\nsize\nbase64(root)\n` (plus optional extension lines); a
//! signed note is that text, a blank line, and one line per signature:
//! `— <key name> base64(key ID ‖ Ed25519 signature over the text)`, where
//! key ID = SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key)[:4].
//!
//! Verification trusts only the keys the caller pins: signatures by unknown keys are ignored
//! (they may be other witnesses'), a signature by a pinned key that does not verify rejects the
//! whole note, and at least `min` distinct pinned keys must have signed. Parsing is strict and
//! bounded (size and signature count), so a hostile server cannot smuggle a second text or
//! exhaust memory.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use edgefabric_crypto::{Identity, PublicKey};

use crate::merkle::Hash;

/// Largest note accepted, and most signature lines (C2SP asks to accept at least 16).
pub const MAX_NOTE_BYTES: usize = 64 * 1024;
pub const MAX_SIGNATURES: usize = 100;

const ED25519: u8 = 0x01;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed note: {0}")]
    Malformed(String),
    #[error("malformed checkpoint: {0}")]
    Checkpoint(String),
    #[error("the signature by {name} does not verify")]
    BadSignature { name: String },
    #[error("{got} valid signatures from trusted keys, {want} required")]
    TooFewSignatures { got: usize, want: usize },
    #[error("invalid key name {0:?}: it must be non-empty, without spaces or '+'")]
    KeyName(String),
}

/// The key ID of an Ed25519 key under `name`.
pub fn key_id(name: &str, key: &PublicKey) -> [u8; 4] {
    let mut input = Vec::with_capacity(name.len() + 34);
    input.extend_from_slice(name.as_bytes());
    input.push(b'\n');
    input.push(ED25519);
    input.extend_from_slice(&key.to_bytes());
    let h = edgefabric_crypto::sha256(&input);
    [h[0], h[1], h[2], h[3]]
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+') {
        return Err(NoteError::KeyName(name.to_string()));
    }
    Ok(())
}

/// A key a verifier trusts.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    pub name: String,
    pub key: PublicKey,
}

impl TrustedKey {
    /// Parses the `name+hexid+base64(0x01 ‖ key)` verifier-key form (golang.org/x/mod's note).
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::Malformed("verifier key must be name+id+key".into()));
        };
        check_name(name)?;
        let raw = STANDARD.decode(b64).map_err(|e| NoteError::Malformed(format!("verifier key: {e}")))?;
        let (&ty, key) = raw.split_first().ok_or(NoteError::Malformed("empty verifier key".into()))?;
        let key: [u8; 32] =
            key.try_into().map_err(|_| NoteError::Malformed("verifier key: not an Ed25519 key".into()))?;
        if ty != ED25519 {
            return Err(NoteError::Malformed(format!("verifier key type {ty:#04x} is not Ed25519")));
        }
        let key = PublicKey::from_bytes(&key).map_err(|e| NoteError::Malformed(e.to_string()))?;
        let want = u32::from_str_radix(id, 16).map_err(|_| NoteError::Malformed("verifier key id".into()))?;
        if u32::from_be_bytes(key_id(name, &key)) != want {
            return Err(NoteError::Malformed("verifier key id does not match the key".into()));
        }
        Ok(TrustedKey { name: name.to_string(), key })
    }
}

/// Signs `text` (which must end in a newline) as `name`; returns the signature line.
pub fn signature_line(text: &str, name: &str, identity: &Identity) -> Result<String, NoteError> {
    check_name(name)?;
    if !text.ends_with('\n') {
        return Err(NoteError::Malformed("note text must end in a newline".into()));
    }
    let mut blob = key_id(name, &identity.public_key()).to_vec();
    blob.extend_from_slice(&identity.sign(text.as_bytes()));
    Ok(format!("\u{2014} {name} {}\n", STANDARD.encode(blob)))
}

/// `text` signed by every (name, identity).
pub fn sign(text: &str, signers: &[(&str, &Identity)]) -> Result<String, NoteError> {
    let mut out = format!("{text}\n");
    for (name, id) in signers {
        out.push_str(&signature_line(text, name, id)?);
    }
    Ok(out)
}

/// A parsed, not yet verified, signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub text: String,
    pub signatures: Vec<Signature>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub name: String,
    pub key_id: [u8; 4],
    pub sig: Vec<u8>,
}

impl Note {
    pub fn parse(note: &str) -> Result<Note, NoteError> {
        let bad = |m: &str| NoteError::Malformed(m.to_string());
        if note.len() > MAX_NOTE_BYTES {
            return Err(bad("note too large"));
        }
        if note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(bad("control characters other than newline"));
        }
        // The signature block follows the last blank line.
        let split = note.rfind("\n\n").ok_or(bad("no blank line before the signatures"))?;
        let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
        if sigs.is_empty() || !sigs.ends_with('\n') {
            return Err(bad("the signatures must end in a newline"));
        }
        let mut signatures = vec![];
        for line in sigs[..sigs.len() - 1].split('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(bad("too many signatures"));
            }
            let rest = line.strip_prefix("\u{2014} ").ok_or(bad("a signature line must start with '— '"))?;
            let (name, b64) =
                rest.split_once(' ').ok_or(bad("a signature line needs a name and a signature"))?;
            check_name(name)?;
            let blob = STANDARD.decode(b64).map_err(|_| bad("a signature is not base64"))?;
            if blob.len() < 5 {
                return Err(bad("a signature is too short"));
            }
            signatures.push(Signature {
                name: name.to_string(),
                key_id: [blob[0], blob[1], blob[2], blob[3]],
                sig: blob[4..].to_vec(),
            });
        }
        Ok(Note { text: text.to_string(), signatures })
    }

    /// Verifies against the pinned keys; returns the names of the trusted keys that signed.
    /// Signatures count by key: one key pinned under two names (a copy-paste slip in a trust
    /// file, or a node registered twice) is one signer, so it cannot meet a threshold of two
    /// alone.
    pub fn verify(&self, trusted: &[TrustedKey], min: usize) -> Result<Vec<String>, NoteError> {
        let mut signed: Vec<String> = vec![];
        let mut keys: Vec<[u8; 32]> = vec![];
        for s in &self.signatures {
            let Some(k) = trusted.iter().find(|k| k.name == s.name && key_id(&k.name, &k.key) == s.key_id)
            else {
                continue; // an unknown key: ignored
            };
            if k.key.verify(self.text.as_bytes(), &s.sig).is_err() {
                return Err(NoteError::BadSignature { name: s.name.clone() });
            }
            let key = k.key.to_bytes();
            if !keys.contains(&key) {
                keys.push(key);
                signed.push(s.name.clone());
            }
        }
        if keys.len() < min.max(1) {
            return Err(NoteError::TooFewSignatures { got: keys.len(), want: min.max(1) });
        }
        Ok(signed)
    }
}

/// A transparency-log checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The note text.
    pub fn text(&self) -> String {
        let mut t = format!("{}\n{}\n{}\n", self.origin, self.size, STANDARD.encode(self.root));
        for e in &self.extensions {
            t.push_str(e);
            t.push('\n');
        }
        t
    }

    pub fn parse(text: &str) -> Result<Checkpoint, NoteError> {
        let bad = |m: &str| NoteError::Checkpoint(m.to_string());
        let body = text.strip_suffix('\n').ok_or(bad("must end in a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().filter(|o| !o.is_empty()).ok_or(bad("missing origin"))?;
        let size = lines.next().ok_or(bad("missing size"))?;
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(bad("size must be a decimal number without leading zeros"));
        }
        let size: u64 = size.parse().map_err(|_| bad("size out of range"))?;
        let root = STANDARD
            .decode(lines.next().ok_or(bad("missing root"))?)
            .map_err(|_| bad("root is not base64"))?;
        let root: Hash = root.as_slice().try_into().map_err(|_| bad("root is not 32 bytes"))?;
        let extensions: Vec<String> = lines.map(String::from).collect();
        if extensions.iter().any(|e| e.is_empty()) {
            return Err(bad("empty extension line"));
        }
        Ok(Checkpoint { origin: origin.to_string(), size, root, extensions })
    }
}

/// Parses a signed checkpoint and verifies it with at least `min` pinned keys.
pub fn verify_checkpoint(
    note: &str,
    trusted: &[TrustedKey],
    min: usize,
) -> Result<(Checkpoint, Vec<String>), NoteError> {
    let n = Note::parse(note)?;
    let signers = n.verify(trusted, min)?;
    Ok((Checkpoint::parse(&n.text)?, signers))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_SKEY_B64: &str = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_SIG: &str =
        "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=";

    fn go_identity() -> Identity {
        let raw = STANDARD.decode(GO_SKEY_B64).unwrap();
        assert_eq!(raw[0], ED25519);
        Identity::from_seed(raw[1..].try_into().unwrap())
    }

    /// golang.org/x/mod/sumdb/note's published example, byte for byte: same key ID, same
    /// signature line, and it verifies with the published verifier key.
    #[test]
    fn go_sumdb_note_known_answer() {
        let id = go_identity();
        let trusted = TrustedKey::parse(GO_VKEY).unwrap();
        assert_eq!(trusted.key, id.public_key());
        assert_eq!(key_id("PeterNeumann", &id.public_key()), [0xc7, 0x4f, 0x20, 0xa3]);
        let signed = sign(GO_TEXT, &[("PeterNeumann", &id)]).unwrap();
        assert_eq!(signed, format!("{GO_TEXT}\n\u{2014} PeterNeumann {GO_SIG}\n"));
        let note = Note::parse(&signed).unwrap();
        assert_eq!(note.text, GO_TEXT);
        assert_eq!(note.verify(&[trusted], 1).unwrap(), vec!["PeterNeumann".to_string()]);
    }

    #[test]
    fn one_key_pinned_under_two_names_is_one_signer() {
        let id = go_identity();
        let a = TrustedKey { name: "node-1".into(), key: id.public_key() };
        let b = TrustedKey { name: "node-2".into(), key: id.public_key() };
        let signed = sign(GO_TEXT, &[("node-1", &id), ("node-2", &id)]).unwrap();
        let note = Note::parse(&signed).unwrap();
        assert_eq!(note.verify(&[a.clone(), b.clone()], 1).unwrap(), vec!["node-1".to_string()]);
        assert!(matches!(note.verify(&[a, b], 2), Err(NoteError::TooFewSignatures { got: 1, want: 2 })));
    }

    #[test]
    fn tampering_and_untrusted_keys_are_refused() {
        let id = go_identity();
        let trusted = vec![TrustedKey::parse(GO_VKEY).unwrap()];
        let signed = sign(GO_TEXT, &[("PeterNeumann", &id)]).unwrap();
        let tampered = signed.replacen("cryptography", "cryptographY", 1);
        assert_eq!(
            Note::parse(&tampered).unwrap().verify(&trusted, 1),
            Err(NoteError::BadSignature { name: "PeterNeumann".into() })
        );
        // Signed by a key nobody pinned, even under the same name: ignored, so too few.
        let other = Identity::from_seed(&[7; 32]);
        let forged = sign(GO_TEXT, &[("PeterNeumann", &other)]).unwrap();
        assert_eq!(
            Note::parse(&forged).unwrap().verify(&trusted, 1),
            Err(NoteError::TooFewSignatures { got: 0, want: 1 })
        );
        // Malformed notes.
        for bad in [
            GO_TEXT.to_string(),
            format!("{GO_TEXT}\n- PeterNeumann {GO_SIG}\n"),
            format!("{GO_TEXT}\n\u{2014} PeterNeumann {GO_SIG}"),
            format!("{GO_TEXT}\n\u{2014} PeterNeumann !!!\n"),
            format!("{GO_TEXT}\n\u{2014} Peter+Neumann {GO_SIG}\n"),
            format!("{}\n\n\u{2014} PeterNeumann {GO_SIG}\n", "x\u{7}y"),
        ] {
            assert!(Note::parse(&bad).is_err(), "accepted {bad:?}");
        }
        assert!(
            TrustedKey::parse("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").is_err()
        );
    }

    #[test]
    fn checkpoints_need_t_of_n_pinned_signatures() {
        let ids: Vec<Identity> = (1..=3).map(|i| Identity::from_seed(&[i; 32])).collect();
        let names = ["node1.edgefabric", "node2.edgefabric", "node3.edgefabric"];
        let trusted: Vec<TrustedKey> = ids
            .iter()
            .zip(names)
            .map(|(id, n)| TrustedKey { name: n.into(), key: id.public_key() })
            .collect();
        let cp = Checkpoint {
            origin: "edgefabric.example/ledger".into(),
            size: 42,
            root: [9; 32],
            extensions: vec![],
        };
        let text = cp.text();
        assert_eq!(Checkpoint::parse(&text).unwrap(), cp);
        let two = sign(&text, &[(names[0], &ids[0]), (names[2], &ids[2])]).unwrap();
        let (got, signers) = verify_checkpoint(&two, &trusted, 2).unwrap();
        assert_eq!((got, signers.len()), (cp, 2));
        assert_eq!(
            verify_checkpoint(&two, &trusted, 3).unwrap_err(),
            NoteError::TooFewSignatures { got: 2, want: 3 }
        );
        // The same signature twice counts once.
        let dup = format!("{two}{}", signature_line(&text, names[0], &ids[0]).unwrap());
        assert!(verify_checkpoint(&dup, &trusted, 3).is_err());
        // Checkpoint bodies are strict.
        for bad in [
            "o\n42\n",
            "o\n042\nAA==\n",
            "\n1\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n",
            "o\n1\nAAAA\n",
            "o\n-1\nAA==\n",
        ] {
            assert!(Checkpoint::parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
