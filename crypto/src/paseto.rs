//! PASETO v4.public tokens (paseto.io, version 4, purpose `public`): Ed25519 signatures over
//! the pre-authentication encoding (PAE) of the header, the payload, the footer and an
//! implicit assertion. The format EdgeFabric's access tokens use (issue 6).
//!
//! `v4.public.` ‖ base64url(payload ‖ signature) [‖ `.` ‖ base64url(footer)], unpadded;
//! signature = Ed25519(PAE("v4.public.", payload, footer, implicit)). Verification is strict:
//! the exact header, canonical unpadded base64url, a 64-byte signature, the footer compared,
//! and the signature checked with `verify_strict` before the payload is returned.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::{Error, Identity, PublicKey, Result};

const HEADER: &str = "v4.public.";
/// Longest token accepted (bounds the work a hostile one can cause).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// PAE(pieces): LE64(count) ‖ for each piece LE64(len) ‖ piece (LE64 with the top bit clear).
fn pae(pieces: &[&[u8]]) -> Vec<u8> {
    let le64 = |n: usize| ((n as u64) & (u64::MAX >> 1)).to_le_bytes();
    let mut out = le64(pieces.len()).to_vec();
    for p in pieces {
        out.extend_from_slice(&le64(p.len()));
        out.extend_from_slice(p);
    }
    out
}

/// Signs `payload` (with `footer` and the `implicit` assertion, which is not in the token).
pub fn sign(identity: &Identity, payload: &[u8], footer: &[u8], implicit: &[u8]) -> String {
    let sig = identity.sign(&pae(&[HEADER.as_bytes(), payload, footer, implicit]));
    let mut body = payload.to_vec();
    body.extend_from_slice(&sig);
    let mut token = format!("{HEADER}{}", URL_SAFE_NO_PAD.encode(body));
    if !footer.is_empty() {
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(footer));
    }
    token
}

fn invalid(message: &str) -> Error {
    Error::Invalid { what: "token", message: message.into() }
}

/// Verifies a token against `key` and the expected `footer` and `implicit` assertion; returns
/// the payload.
pub fn verify(key: &PublicKey, token: &str, footer: &[u8], implicit: &[u8]) -> Result<Vec<u8>> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(invalid("longer than 8 KiB"));
    }
    let rest = token.strip_prefix(HEADER).ok_or_else(|| invalid("not a v4.public token"))?;
    let (body, given_footer) = match rest.split_once('.') {
        Some((b, f)) => {
            (b, URL_SAFE_NO_PAD.decode(f).map_err(|_| invalid("the footer is not unpadded base64url"))?)
        }
        None => (rest, vec![]),
    };
    if given_footer != footer {
        return Err(invalid("unexpected footer"));
    }
    let body = URL_SAFE_NO_PAD.decode(body).map_err(|_| invalid("the body is not unpadded base64url"))?;
    if body.len() < 64 {
        return Err(invalid("too short to hold a signature"));
    }
    let (payload, sig) = body.split_at(body.len() - 64);
    key.verify(&pae(&[HEADER.as_bytes(), payload, footer, implicit]), sig)
        .map_err(|_| Error::BadSignature)?;
    Ok(payload.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The PASETO specification's v4 test vectors (4-S-1, 4-S-2, 4-S-3).
    const SEED: &str = "b4cbfb43df4ce210727d953e4a713307fa19bb7d9f85041438d9e11b942a3774";
    const PUBLIC: &str = "1eb9dbbbbc047c03fd70604e0071f0987e16b28b757225c11f00415d0e20b1a2";
    const PAYLOAD: &str = r#"{"data":"this is a signed message","exp":"2022-01-01T00:00:00+00:00"}"#;
    const FOOTER: &str = r#"{"kid":"zVhMiPBP9fRf2snEcT7gFTioeA9COcNy9DfgL1W60haN"}"#;
    const S1: &str = "v4.public.eyJkYXRhIjoidGhpcyBpcyBhIHNpZ25lZCBtZXNzYWdlIiwiZXhwIjoiMjAyMi0wMS0wMVQwMDowMDowMCswMDowMCJ9bg_XBBzds8lTZShVlwwKSgeKpLT3yukTw6JUz3W4h_ExsQV-P0V54zemZDcAxFaSeef1QlXEFtkqxT1ciiQEDA";
    const S2: &str = "v4.public.eyJkYXRhIjoidGhpcyBpcyBhIHNpZ25lZCBtZXNzYWdlIiwiZXhwIjoiMjAyMi0wMS0wMVQwMDowMDowMCswMDowMCJ9v3Jt8mx_TdM2ceTGoqwrh4yDFn0XsHvvV_D0DtwQxVrJEBMl0F2caAdgnpKlt4p7xBnx1HcO-SPo8FPp214HDw.eyJraWQiOiJ6VmhNaVBCUDlmUmYyc25FY1Q3Z0ZUaW9lQTlDT2NOeTlEZmdMMVc2MGhhTiJ9";

    fn keys() -> (Identity, PublicKey) {
        let seed: [u8; 32] = hex::decode(SEED).unwrap().try_into().unwrap();
        let id = Identity::from_seed(&seed);
        assert_eq!(hex::encode(id.public_key().to_bytes()), PUBLIC);
        let pk = id.public_key();
        (id, pk)
    }

    #[test]
    fn official_vectors_sign_and_verify() {
        let (id, pk) = keys();
        assert_eq!(sign(&id, PAYLOAD.as_bytes(), b"", b""), S1);
        assert_eq!(verify(&pk, S1, b"", b"").unwrap(), PAYLOAD.as_bytes());
        assert_eq!(sign(&id, PAYLOAD.as_bytes(), FOOTER.as_bytes(), b""), S2);
        assert_eq!(verify(&pk, S2, FOOTER.as_bytes(), b"").unwrap(), PAYLOAD.as_bytes());
    }

    #[test]
    fn every_alteration_is_refused() {
        let (id, pk) = keys();
        let other = Identity::from_seed(&[3; 32]).public_key();
        assert!(verify(&other, S1, b"", b"").is_err(), "another key");
        assert!(verify(&pk, S2, b"", b"").is_err(), "footer not expected");
        assert!(verify(&pk, S1, FOOTER.as_bytes(), b"").is_err(), "footer missing");
        assert!(verify(&pk, S1, b"", b"ctx").is_err(), "another implicit assertion");
        assert!(verify(&pk, &S1.replace("v4.public.", "v4.local."), b"", b"").is_err());
        assert!(verify(&pk, &S1.replace("v4.public.", "v3.public."), b"", b"").is_err());
        // A flipped character anywhere in the body.
        for i in [12usize, 40, 100, S1.len() - 2] {
            let mut t: Vec<u8> = S1.bytes().collect();
            t[i] = if t[i] == b'A' { b'B' } else { b'A' };
            assert!(verify(&pk, std::str::from_utf8(&t).unwrap(), b"", b"").is_err(), "byte {i}");
        }
        assert!(verify(&pk, &format!("{S1}="), b"", b"").is_err(), "padding");
        assert!(verify(&pk, "v4.public.AAAA", b"", b"").is_err(), "too short");
        assert!(verify(&pk, &format!("v4.public.{}", "A".repeat(9000)), b"", b"").is_err(), "too long");
        // With an implicit assertion, it must be given again.
        let t = sign(&id, b"{}", b"", b"node-7");
        assert_eq!(verify(&pk, &t, b"", b"node-7").unwrap(), b"{}");
        assert!(verify(&pk, &t, b"", b"").is_err());
    }

    #[test]
    fn pae_matches_the_specification_examples() {
        assert_eq!(pae(&[]), hex::decode("0000000000000000").unwrap());
        assert_eq!(pae(&[b""]), hex::decode("01000000000000000000000000000000").unwrap());
        assert_eq!(pae(&[b"test"]), hex::decode("0100000000000000040000000000000074657374").unwrap());
    }
}
