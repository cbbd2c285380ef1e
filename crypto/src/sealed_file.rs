//! Files sealed to a recipient's key, as age does it: a random file key wrapped for the
//! recipient (X25519 from their ed25519 key, HKDF, AES-256-GCM: `envelope::wrap`), then the
//! content in chunks of `CHUNK` bytes, each sealed with AES-256-GCM under that key. Each
//! chunk's associated data binds the header, the chunk's position and whether it is the last,
//! so a chunk cannot be altered, dropped, reordered, moved to another file, nor the file cut
//! short at a chunk boundary, without opening failing. Used for backups: only the holder of
//! the recipient's secret key (the operator, not the node) can read them.
//!
//! Layout: `MAGIC`, the recipient's ed25519 public key (32 bytes), the wrapped file key
//! (`envelope::WRAPPED_LEN` bytes), then chunks: `u32` BE length of the sealed chunk, the
//! sealed chunk (12-byte nonce, ciphertext, 16-byte tag).

use std::io::{Read, Write};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::envelope::{self, DataKey};
use crate::{random_bytes, Error, Identity, PublicKey, Result};

pub const MAGIC: &[u8; 16] = b"EFSEALED-FILE-1\n";
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 1 << 20;
const CONTEXT: &[u8] = b"edgefabric-sealed-file-v1";
const TAG: usize = 16;
const NONCE: usize = 12;

fn io(e: std::io::Error) -> Error {
    Error::Invalid { what: "sealed file", message: e.to_string() }
}

fn bad(message: impl Into<String>) -> Error {
    Error::Invalid { what: "sealed file", message: message.into() }
}

/// Whether `head` (a file's first bytes) starts a sealed file.
pub fn is_sealed(head: &[u8]) -> bool {
    head.starts_with(MAGIC)
}

fn aad(header_hash: &[u8; 32], index: u64, last: bool) -> Vec<u8> {
    let mut a = Vec::with_capacity(41);
    a.extend_from_slice(header_hash);
    a.extend_from_slice(&index.to_be_bytes());
    a.push(u8::from(last));
    a
}

/// Seals everything `src` yields into `dst` for `recipient`. Returns the plaintext length.
pub fn seal(mut src: impl Read, mut dst: impl Write, recipient: &PublicKey) -> Result<u64> {
    if recipient.is_weak() {
        return Err(bad("the recipient key is of small order"));
    }
    let dk = DataKey::generate()?;
    let mut header = MAGIC.to_vec();
    header.extend_from_slice(&recipient.to_bytes());
    header.extend_from_slice(&envelope::wrap(&dk, recipient, CONTEXT)?);
    let header_hash = crate::sha256(&header);
    dst.write_all(&header).map_err(io)?;
    let cipher = Aes256Gcm::new(dk.as_bytes().into());
    // Read one chunk ahead, so the last chunk is known when it is sealed.
    let mut cur = Zeroizing::new(read_chunk(&mut src)?);
    let (mut index, mut total) = (0u64, 0u64);
    loop {
        let next = Zeroizing::new(if cur.len() == CHUNK { read_chunk(&mut src)? } else { vec![] });
        let last = next.is_empty();
        let nonce = random_bytes::<NONCE>()?;
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: &cur, aad: &aad(&header_hash, index, last) })
            .map_err(|_| bad("sealing failed"))?;
        dst.write_all(&((NONCE + ct.len()) as u32).to_be_bytes()).map_err(io)?;
        dst.write_all(&nonce).map_err(io)?;
        dst.write_all(&ct).map_err(io)?;
        total += cur.len() as u64;
        if last {
            break;
        }
        cur = next;
        index += 1;
    }
    dst.flush().map_err(io)?;
    Ok(total)
}

fn read_chunk(src: &mut impl Read) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0;
    while n < CHUNK {
        match src.read(&mut buf[n..]).map_err(io)? {
            0 => break,
            k => n += k,
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// Opens a sealed file from `src` into `dst` with the recipient's key. Fails, naming why, on a
/// file sealed for another key, any altered, missing, reordered or extra byte, or a file cut
/// short; `dst` may then hold a prefix of the content, which the caller must discard.
pub fn open(mut src: impl Read, mut dst: impl Write, identity: &Identity) -> Result<u64> {
    let mut header = vec![0u8; MAGIC.len() + 32 + envelope::WRAPPED_LEN];
    src.read_exact(&mut header).map_err(|_| bad("too short for its header"))?;
    if !is_sealed(&header) {
        return Err(bad("not a sealed file (no EFSEALED header)"));
    }
    let key: [u8; 32] = header[MAGIC.len()..MAGIC.len() + 32].try_into().map_err(|_| bad("header"))?;
    if key != identity.public_key().to_bytes() {
        return Err(bad(format!(
            "sealed for the key {}, not this one ({})",
            PublicKey::from_bytes(&key).map(|k| k.to_base64()).unwrap_or_else(|_| "?".into()),
            identity.public_key().to_base64()
        )));
    }
    let dk = envelope::unwrap(&header[MAGIC.len() + 32..], identity, CONTEXT)
        .map_err(|_| bad("the file key does not open with this key (altered header)"))?;
    let header_hash = crate::sha256(&header);
    let cipher = Aes256Gcm::new(dk.as_bytes().into());
    let (mut index, mut total) = (0u64, 0u64);
    let mut len = [0u8; 4];
    loop {
        src.read_exact(&mut len)
            .map_err(|_| bad(format!("cut short before its last chunk (chunk {index})")))?;
        let n = u32::from_be_bytes(len) as usize;
        if !(NONCE + TAG..=NONCE + TAG + CHUNK).contains(&n) {
            return Err(bad(format!("chunk {index}: impossible length {n}")));
        }
        let mut sealed = vec![0u8; n];
        src.read_exact(&mut sealed).map_err(|_| bad(format!("chunk {index} is cut short")))?;
        let (nonce, ct) = sealed.split_at(NONCE);
        // The last flag is not stored: a chunk opens as last, or as not last, and only the
        // one the sealer chose verifies.
        let mut opened = None;
        for last in [false, true] {
            if let Ok(p) = cipher
                .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad(&header_hash, index, last) })
            {
                opened = Some((Zeroizing::new(p), last));
                break;
            }
        }
        let (plain, last) =
            opened.ok_or_else(|| bad(format!("chunk {index} does not authenticate (altered)")))?;
        dst.write_all(&plain).map_err(io)?;
        total += plain.len() as u64;
        if last {
            let mut extra = [0u8; 1];
            if src.read(&mut extra).map_err(io)? != 0 {
                return Err(bad("bytes after the last chunk"));
            }
            dst.flush().map_err(io)?;
            return Ok(total);
        }
        index += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(len: usize) {
        let id = Identity::generate().unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let mut sealed = vec![];
        assert_eq!(seal(&data[..], &mut sealed, &id.public_key()).unwrap(), len as u64);
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(16).any(|w| data.len() >= 16 && w == &data[..16]), "plaintext visible");
        let mut out = vec![];
        assert_eq!(open(&sealed[..], &mut out, &id).unwrap(), len as u64);
        assert_eq!(out, data);
    }

    #[test]
    fn sealed_files_round_trip_at_chunk_edges() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK] {
            roundtrip(len);
        }
    }

    #[test]
    fn every_tampering_is_refused() {
        let id = Identity::generate().unwrap();
        let data = vec![7u8; 2 * CHUNK + 10];
        let mut sealed = vec![];
        seal(&data[..], &mut sealed, &id.public_key()).unwrap();
        let opens = |b: &[u8]| open(b, std::io::sink(), &id).map(|_| ());
        assert!(opens(&sealed).is_ok());
        // Another key.
        let other = Identity::generate().unwrap();
        let e = open(&sealed[..], std::io::sink(), &other).unwrap_err().to_string();
        assert!(e.contains("sealed for the key"), "{e}");
        // A flipped byte anywhere (header, lengths, nonces, ciphertexts, tags).
        let step = sealed.len() / 29;
        for i in (0..sealed.len()).step_by(step.max(1)) {
            let mut t = sealed.clone();
            t[i] ^= 0x40;
            assert!(opens(&t).is_err(), "flipped byte {i} accepted");
        }
        // Cut at every chunk boundary and in the middle; an extra byte; chunks swapped.
        let first = MAGIC.len() + 32 + envelope::WRAPPED_LEN;
        let chunk_len = 4 + NONCE + CHUNK + TAG;
        for cut in [first, first + chunk_len, first + 2 * chunk_len, sealed.len() - 1, first + 10] {
            assert!(opens(&sealed[..cut]).is_err(), "cut at {cut} accepted");
        }
        let mut t = sealed.clone();
        t.push(0);
        assert!(opens(&t).is_err());
        let mut swapped = sealed[..first].to_vec();
        swapped.extend_from_slice(&sealed[first + chunk_len..first + 2 * chunk_len]);
        swapped.extend_from_slice(&sealed[first..first + chunk_len]);
        swapped.extend_from_slice(&sealed[first + 2 * chunk_len..]);
        assert!(opens(&swapped).is_err());
        // A whole chunk dropped: the next one is at the wrong position.
        let mut dropped = sealed[..first].to_vec();
        dropped.extend_from_slice(&sealed[first + chunk_len..]);
        assert!(opens(&dropped).is_err());
    }
}
