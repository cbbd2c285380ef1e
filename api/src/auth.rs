//! Access tokens and roles (issue 6, first part): PASETO
//! v4.public tokens signed by the cluster's admin key, carrying a subject, roles, an expiry, an
//! issue time and a token id; and the rules of what each role allows, as pure functions.
//!
//! Roles (docs/api.md): `reader:NS`, `writer:NS`, `admin:NS`, `auditor`, `publisher`, `admin`.
//! `admin` allows everything; `admin:NS` ⊇ `writer:NS` ⊇ `reader:NS` within one namespace;
//! `auditor` reads the audit log, `publisher` registers images.

use std::collections::HashSet;

use edgefabric_crypto::{paseto, Identity, PublicKey};
use serde::{Deserialize, Serialize};

/// The implicit assertion every EdgeFabric token is bound to (not carried in the token), so a
/// PASETO made for another purpose with the same key cannot pass as an access token.
const IMPLICIT: &[u8] = b"edgefabric-access-token-v1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The token's subject (who the audit log names).
    pub sub: String,
    pub roles: Vec<String>,
    /// Issued at and expires at, seconds since the Unix epoch.
    pub iat: u64,
    pub exp: u64,
    /// Token id, for revocation.
    pub jti: String,
    /// The client key (base64 ed25519) the token is bound to, if any: then every request made
    /// with it must be signed by that key (`request_message`), so a token lifted off the wire
    /// is useless on its own, and a signed request cannot be replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<String>,
}

/// Header: when a signed request was made, ms since the Unix epoch.
pub const SIG_DATE: &str = "x-ef-date";
/// Header: a fresh random value per signed request (16 to 64 of `[A-Za-z0-9_-]`).
pub const SIG_NONCE: &str = "x-ef-nonce";
/// Header: base64 ed25519 signature over `request_message`.
pub const SIG_SIGNATURE: &str = "x-ef-signature";
/// How far a signed request's date may be from the node's clock.
pub const SIG_WINDOW_MS: u64 = 30_000;

/// What a client bound to a key signs for each request (README, "Signed requests"):
/// `edgefabric-request-v2\n<METHOD>\n<host>\n<path and query>\n<date>\n<nonce>\n<hex sha256 of
/// the token>\n<hex sha256 of body>\n`. The host (the node addressed, as `host:port`) binds the
/// request to one node: nonces are remembered per node, so without it a request could be
/// replayed once to every other node within the window. The token's hash binds it to the
/// token it was sent with.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path_and_query: &'a str,
    pub token: &'a str,
    pub body: &'a [u8],
}

pub fn request_message(r: &SignedRequest<'_>, date: &str, nonce: &str) -> Vec<u8> {
    format!(
        "edgefabric-request-v2\n{}\n{}\n{}\n{date}\n{nonce}\n{}\n{}\n",
        r.method,
        r.host,
        r.path_and_query,
        hex::encode(edgefabric_crypto::sha256(r.token.as_bytes())),
        hex::encode(edgefabric_crypto::sha256(r.body))
    )
    .into_bytes()
}

/// Why a signed request was refused (each a 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("this token is bound to a client key: the request must be signed (headers {SIG_DATE}, {SIG_NONCE}, {SIG_SIGNATURE}); {0} is missing")]
    Missing(&'static str),
    #[error("{0}: {1}")]
    Malformed(&'static str, String),
    #[error(
        "{SIG_DATE}: the request was signed {0} ms away from this node's clock (allowed: {SIG_WINDOW_MS} ms)"
    )]
    Stale(i64),
    #[error("{SIG_SIGNATURE}: does not verify under the token's client key for this request")]
    BadSignature,
    #[error("replayed request: this nonce was already used")]
    Replay,
    #[error(
        "Host: {0:?} is not this node (a signed request names the node it is for; this one answers as {1})"
    )]
    OtherNode(String, String),
}

/// Checks a signed request's headers and signature (not the nonce's freshness: `NonceCache`).
pub fn check_signed(
    key: &PublicKey,
    req: &SignedRequest<'_>,
    header: impl Fn(&'static str) -> Option<String>,
    now_ms: u64,
) -> Result<String, SignatureError> {
    let get = |h: &'static str| header(h).ok_or(SignatureError::Missing(h));
    let (date, nonce, sig) = (get(SIG_DATE)?, get(SIG_NONCE)?, get(SIG_SIGNATURE)?);
    let t: u64 =
        date.parse().map_err(|_| SignatureError::Malformed(SIG_DATE, "not ms since the epoch".into()))?;
    if !(16..=64).contains(&nonce.len())
        || !nonce.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(SignatureError::Malformed(SIG_NONCE, "16 to 64 of [A-Za-z0-9_-]".into()));
    }
    let skew = now_ms as i64 - t as i64;
    if skew.unsigned_abs() > SIG_WINDOW_MS {
        return Err(SignatureError::Stale(skew));
    }
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(sig.trim())
        .map_err(|_| SignatureError::Malformed(SIG_SIGNATURE, "not base64".into()))?;
    let sig: [u8; 64] =
        raw.try_into().map_err(|_| SignatureError::Malformed(SIG_SIGNATURE, "not 64 bytes".into()))?;
    key.verify(&request_message(req, &date, &nonce), &sig).map_err(|_| SignatureError::BadSignature)?;
    Ok(nonce)
}

/// Nonces of signed requests this node accepted, remembered for longer than a request stays
/// acceptable (two generations of `2 * SIG_WINDOW_MS`). Per node: a request is bound to its
/// date, so a copy replayed to another node is refused there once the window has passed.
#[derive(Default)]
pub struct NonceCache {
    inner: std::sync::Mutex<Generations>,
}

/// (current generation, previous generation, when the current one started in ms).
type Generations = (HashSet<(String, String)>, HashSet<(String, String)>, u64);

impl NonceCache {
    /// Records (client key, nonce); false if it was seen already.
    pub fn first_use(&self, key: &str, nonce: &str, now_ms: u64) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (current, previous, since) = &mut *g;
        if now_ms.saturating_sub(*since) > 2 * SIG_WINDOW_MS {
            *previous = std::mem::take(current);
            *since = now_ms;
        }
        let id = (key.to_string(), nonce.to_string());
        !previous.contains(&id) && current.insert(id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Reader(String),
    Writer(String),
    NsAdmin(String),
    Auditor,
    Publisher,
    Admin,
}

/// What an operation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permission {
    Read(String),
    Write(String),
    /// Create or change the namespace, rotate its keys.
    ManageNamespace(String),
    /// For `/v1/audit` (issue 6, next).
    #[allow(dead_code)]
    Audit,
    Publish,
    /// Cluster membership, publishers, tokens.
    ClusterAdmin,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Permission::Read(ns) => write!(f, "reader:{ns}"),
            Permission::Write(ns) => write!(f, "writer:{ns}"),
            Permission::ManageNamespace(ns) => write!(f, "admin:{ns}"),
            Permission::Audit => f.write_str("auditor"),
            Permission::Publish => f.write_str("publisher"),
            Permission::ClusterAdmin => f.write_str("admin"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("invalid role {0:?}: use reader:NS, writer:NS, admin:NS, auditor, publisher or admin")]
    BadRole(String),
    #[error("the token is malformed or not signed by this cluster")]
    BadToken,
    #[error("the token expired")]
    Expired,
    #[error("the token was revoked")]
    Revoked,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, AuthError> {
        let bad = || AuthError::BadRole(s.to_string());
        let ns = |n: &str| -> Result<String, AuthError> {
            edgefabric_store::types::validate_namespace(n).map_err(|_| bad())?;
            Ok(n.to_string())
        };
        match s.split_once(':') {
            Some(("reader", n)) => Ok(Role::Reader(ns(n)?)),
            Some(("writer", n)) => Ok(Role::Writer(ns(n)?)),
            Some(("admin", n)) => Ok(Role::NsAdmin(ns(n)?)),
            None if s == "auditor" => Ok(Role::Auditor),
            None if s == "publisher" => Ok(Role::Publisher),
            None if s == "admin" => Ok(Role::Admin),
            _ => Err(bad()),
        }
    }

    /// Whether this role alone grants `p`.
    pub fn grants(&self, p: &Permission) -> bool {
        match (self, p) {
            (Role::Admin, _) => true,
            (
                Role::NsAdmin(a),
                Permission::Read(b) | Permission::Write(b) | Permission::ManageNamespace(b),
            ) => a == b,
            (Role::Writer(a), Permission::Read(b) | Permission::Write(b)) => a == b,
            (Role::Reader(a), Permission::Read(b)) => a == b,
            (Role::Auditor, Permission::Audit) => true,
            (Role::Publisher, Permission::Publish) => true,
            _ => false,
        }
    }
}

/// Whether any of `roles` grants `p` (unparseable roles grant nothing).
pub fn allows(roles: &[String], p: &Permission) -> bool {
    roles.iter().filter_map(|r| Role::parse(r).ok()).any(|r| r.grants(p))
}

/// The cluster's token-signing key, derived from the admin token every node holds (the root
/// credential already: whoever has it is admin), so every node can issue and check tokens
/// without another secret to distribute.
pub fn signing_key(admin_token: &str) -> Identity {
    let seed =
        edgefabric_crypto::sha256(format!("edgefabric-token-signing-key-v1\0{admin_token}").as_bytes());
    Identity::from_seed(&seed)
}

/// The status of the audit record a state-changing request gets once authorized and before it
/// can take effect; its outcome follows in a second record with the final status.
pub const RECEIVED: u16 = 0;

/// Whether a REST method may change state (and so is recorded before it runs, too).
pub fn mutates(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS")
}

/// Whether a request's every target is a KV write (`kv.put`, `kv.delete`, `kv.batch`): the
/// handlers whose one effect is a proposal through `Node::propose`, so their received record
/// may be ordered by the store instead of waited for (`AppState::received_then`).
pub fn is_kv_write(targets: &[Target]) -> bool {
    !targets.is_empty()
        && targets.iter().all(|t| matches!(t.action.as_str(), "kv.put" | "kv.delete" | "kv.batch"))
}

/// What one access touched, for its audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `kv.put`, `kv.get`, `ns.put`, `token.issue`, ... (`<area>.<verb>`).
    pub action: String,
    /// Empty for operations outside any namespace.
    pub ns: String,
    pub key: Option<String>,
}

impl Target {
    pub fn new(action: &str, ns: &str, key: Option<&str>) -> Target {
        Target { action: action.into(), ns: ns.into(), key: key.map(Into::into) }
    }
}

/// A path segment percent-decoded exactly as axum's `Path` extractor decodes it (the same
/// crate, the same call), so that what is authorized and audited is what the handler serves:
/// `%` followed by two hex digits is a byte, anything else is kept as written, and the result
/// must be UTF-8. `None` when it is not (the request is refused with a 400 naming the path).
pub fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode(s.as_bytes()).decode_utf8().ok().map(|c| c.into_owned())
}

/// The keyed hash that stands for a key in the audit records of namespaces whose key names must
/// not travel in clear (confidential and site-local: the ledger is replicated everywhere).
/// HMAC-SHA256 under a cluster secret, so whoever holds the secret can check whether a given
/// key was accessed, and nobody else can test guesses.
pub fn audit_key_hash(secret: &[u8; 32], ns: &str, key: &str) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&k);
    ctx.update(ns.as_bytes());
    ctx.update(&[0]);
    ctx.update(key.as_bytes());
    format!("hmac-sha256:{}", hex::encode(ctx.sign().as_ref()))
}

/// The audit key-hash secret, derived from the admin token (every node holds it).
pub fn audit_hash_secret(admin_token: &str) -> [u8; 32] {
    edgefabric_crypto::sha256(
        &[b"edgefabric audit key-hash v1\0".as_slice(), admin_token.as_bytes()].concat(),
    )
}

/// Issues a token for `claims`, signed by the cluster's admin key.
pub fn issue(admin: &Identity, claims: &Claims) -> Result<String, AuthError> {
    for r in &claims.roles {
        Role::parse(r)?;
    }
    let payload = serde_json::to_vec(claims).map_err(|_| AuthError::BadToken)?;
    Ok(paseto::sign(admin, &payload, b"", IMPLICIT))
}

/// Verifies a token and its expiry at `now` (seconds since the epoch); returns its claims.
pub fn verify(admin: &PublicKey, token: &str, now: u64) -> Result<Claims, AuthError> {
    let payload = paseto::verify(admin, token, b"", IMPLICIT).map_err(|_| AuthError::BadToken)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| AuthError::BadToken)?;
    if now >= claims.exp {
        return Err(AuthError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_decode_as_the_router_decodes_them_and_never_panic() {
        // Raw UTF-8 right after `%` (this panicked: a byte slice cut inside '€').
        assert_eq!(percent_decode("%€"), Some("%€".into()));
        // `%+0` is not an escape (a sign is no hex digit): kept as written, as axum keeps it.
        assert_eq!(percent_decode("%+0"), Some("%+0".into()));
        assert_eq!(percent_decode("a%2Fb%20c"), Some("a/b c".into()));
        assert_eq!(percent_decode("%e2%82%ac"), Some("€".into()));
        assert_eq!(percent_decode("%zz%4"), Some("%zz%4".into()));
        // Bytes that are no UTF-8: refused.
        assert_eq!(percent_decode("%FF"), None);
        assert_eq!(percent_decode("ok%FFx"), None);
    }

    fn claims(roles: &[&str], exp: u64) -> Claims {
        Claims {
            sub: "app-1".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            iat: 100,
            exp,
            jti: "t1".into(),
            cnf: None,
        }
    }

    #[test]
    fn signed_requests_verify_once_within_the_window() {
        use base64::Engine;
        let client = Identity::from_seed(&[5; 32]);
        let key = client.public_key();
        let nonce = "abcdefghijklmnop";
        let req = |method, host, path, token, body| SignedRequest {
            method,
            host,
            path_and_query: path,
            token,
            body,
        };
        let good = req("PUT", "10.0.0.1:7480", "/v1/kv/med/k?cas=0", "tok-a", b"v");
        let sign = |date: &str, r: &SignedRequest<'_>| {
            base64::engine::general_purpose::STANDARD.encode(client.sign(&request_message(r, date, nonce)))
        };
        let now = 1_000_000u64;
        let sig = sign("1000000", &good);
        let headers = |date: &str, sig: &str| {
            let (date, sig) = (date.to_string(), sig.to_string());
            move |h: &'static str| match h {
                SIG_DATE => Some(date.clone()),
                SIG_NONCE => Some(nonce.to_string()),
                SIG_SIGNATURE => Some(sig.clone()),
                _ => None,
            }
        };
        let ok = check_signed(&key, &good, headers("1000000", &sig), now);
        assert_eq!(ok.as_deref(), Ok(nonce));
        // Another body, path, method, node, token or date: the signature no longer fits.
        for other in [
            req("PUT", "10.0.0.1:7480", "/v1/kv/med/k?cas=0", "tok-a", b"w"),
            req("PUT", "10.0.0.1:7480", "/v1/kv/med/j?cas=0", "tok-a", b"v"),
            req("GET", "10.0.0.1:7480", "/v1/kv/med/k?cas=0", "tok-a", b"v"),
            req("PUT", "10.0.0.2:7480", "/v1/kv/med/k?cas=0", "tok-a", b"v"),
            req("PUT", "10.0.0.1:7480", "/v1/kv/med/k?cas=0", "tok-b", b"v"),
        ] {
            let r = check_signed(&key, &other, headers("1000000", &sig), now);
            assert_eq!(
                r,
                Err(SignatureError::BadSignature),
                "{} {} {}",
                other.method,
                other.host,
                other.path_and_query
            );
        }
        assert_eq!(
            check_signed(&key, &good, headers("1000001", &sig), now),
            Err(SignatureError::BadSignature)
        );
        // Too old (or too far ahead), even when correctly signed.
        let old = sign("900000", &good);
        assert!(matches!(
            check_signed(&key, &good, headers("900000", &old), now),
            Err(SignatureError::Stale(_))
        ));
        // Missing headers name the header.
        let none = |_: &'static str| None;
        let empty = req("PUT", "h:1", "/", "t", b"");
        assert_eq!(check_signed(&key, &empty, none, now), Err(SignatureError::Missing(SIG_DATE)));
        // A nonce counts once.
        let cache = NonceCache::default();
        assert!(cache.first_use("k", nonce, now));
        assert!(!cache.first_use("k", nonce, now + 1));
        assert!(cache.first_use("other-key", nonce, now + 1));
        // Still remembered after the window has rolled once.
        assert!(!cache.first_use("k", nonce, now + 2 * SIG_WINDOW_MS + 1));
    }

    #[test]
    fn roles_parse_strictly() {
        assert_eq!(Role::parse("reader:med"), Ok(Role::Reader("med".into())));
        assert_eq!(Role::parse("admin"), Ok(Role::Admin));
        assert_eq!(Role::parse("admin:med"), Ok(Role::NsAdmin("med".into())));
        for bad in ["", "reader", "reader:", "reader:Bad NS", "root", "auditor:med", "writer:a:b"] {
            assert!(Role::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// The matrix of roles × permissions × namespaces.
    #[test]
    fn what_each_role_allows() {
        use Permission::*;
        let perms = |ns: &str| {
            vec![Read(ns.into()), Write(ns.into()), ManageNamespace(ns.into()), Audit, Publish, ClusterAdmin]
        };
        let table: [(&str, [bool; 6]); 6] = [
            ("reader:med", [true, false, false, false, false, false]),
            ("writer:med", [true, true, false, false, false, false]),
            ("admin:med", [true, true, true, false, false, false]),
            ("auditor", [false, false, false, true, false, false]),
            ("publisher", [false, false, false, false, true, false]),
            ("admin", [true, true, true, true, true, true]),
        ];
        for (role, want) in table {
            for (p, w) in perms("med").iter().zip(want) {
                assert_eq!(allows(&[role.to_string()], p), w, "{role} for {p}");
            }
            // Namespace roles do not reach another namespace.
            if role.contains(':') {
                for p in perms("other").iter().take(3) {
                    assert!(!allows(&[role.to_string()], p), "{role} for {p}");
                }
            }
        }
        assert!(!allows(&["bogus".to_string()], &Read("med".into())));
        assert!(allows(&["bogus".to_string(), "reader:med".to_string()], &Read("med".into())));
    }

    #[test]
    fn tokens_verify_until_they_expire_and_only_under_the_cluster_key() {
        let admin = Identity::from_seed(&[1; 32]);
        let t = issue(&admin, &claims(&["writer:med"], 1000)).unwrap();
        assert!(t.starts_with("v4.public."));
        assert_eq!(verify(&admin.public_key(), &t, 999).unwrap(), claims(&["writer:med"], 1000));
        assert_eq!(verify(&admin.public_key(), &t, 1000), Err(AuthError::Expired));
        let other = Identity::from_seed(&[2; 32]).public_key();
        assert_eq!(verify(&other, &t, 10), Err(AuthError::BadToken));
        // A PASETO by the same key without the access-token assertion is not a token.
        let plain = paseto::sign(&admin, &serde_json::to_vec(&claims(&["admin"], 1000)).unwrap(), b"", b"");
        assert_eq!(verify(&admin.public_key(), &plain, 10), Err(AuthError::BadToken));
        assert!(matches!(issue(&admin, &claims(&["root"], 1000)), Err(AuthError::BadRole(_))));
    }
}
