//! Access tokens and roles (issue 6, first part): PASETO
//! v4.public tokens signed by the cluster's admin key, carrying a subject, roles, an expiry, an
//! issue time and a token id; and the rules of what each role allows, as pure functions.
//!
//! Roles (CONTRACT.md): `reader:NS`, `writer:NS`, `admin:NS`, `auditor`, `publisher`, `admin`.
//! `admin` allows everything; `admin:NS` ⊇ `writer:NS` ⊇ `reader:NS` within one namespace;
//! `auditor` reads the audit log, `publisher` registers images.

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

/// The permission a REST request needs, from its method and path (`None`: any valid token).
/// `batch_namespaces` are the namespaces of a `/v1/batch` body's operations.
pub fn permission_for(method: &str, path: &str, batch_namespaces: &[String]) -> Vec<Permission> {
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let write = matches!(method, "PUT" | "POST" | "DELETE");
    match seg.as_slice() {
        ["v1", "kv", ns, ..] => {
            let ns = ns.to_string();
            vec![if write { Permission::Write(ns) } else { Permission::Read(ns) }]
        }
        ["v1", "batch"] => batch_namespaces.iter().map(|ns| Permission::Write(ns.clone())).collect(),
        ["v1", "namespaces"] => vec![],
        ["v1", "namespaces", ns] if !write => vec![Permission::Read(ns.to_string())],
        ["v1", "namespaces", ns, ..] => vec![Permission::ManageNamespace(ns.to_string())],
        ["v1", "images", ..] => vec![Permission::Publish],
        ["v1", "audit"] => vec![Permission::Audit],
        ["v1", "cluster", "status" | "route"] => vec![],
        // Cluster membership, publishers, tokens, and anything not listed: the admin.
        _ => vec![Permission::ClusterAdmin],
    }
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

/// The audit targets of a REST call: one per key a batch touches (`batch_ops`: (op, ns, key)),
/// else one. Paths are matched as `permission_for` does; keys are percent-decoded.
pub fn targets_for(method: &str, path: &str, batch_ops: &[(String, String, String)]) -> Vec<Target> {
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let verb = match method {
        "GET" | "HEAD" => "get",
        "PUT" => "put",
        "DELETE" => "delete",
        _ => "post",
    };
    let one = |action: String, ns: &str, key: Option<String>| vec![Target { action, ns: ns.into(), key }];
    match seg.as_slice() {
        ["v1", "kv", ns] => one("kv.scan".into(), &percent_decode(ns), None),
        ["v1", "kv", ns, key @ ..] => {
            let key = percent_decode(&key.join("/"));
            one(format!("kv.{verb}"), &percent_decode(ns), Some(key))
        }
        ["v1", "batch"] if !batch_ops.is_empty() => batch_ops
            .iter()
            .map(|(op, ns, key)| Target {
                action: format!("kv.{op}"),
                ns: ns.clone(),
                key: Some(key.clone()),
            })
            .collect(),
        ["v1", "batch"] => one("kv.batch".into(), "", None),
        ["v1", "namespaces"] => one("ns.list".into(), "", None),
        ["v1", "namespaces", ns] => one(format!("ns.{verb}"), &percent_decode(ns), None),
        ["v1", "namespaces", ns, what, ..] => one(format!("ns.{what}"), &percent_decode(ns), None),
        ["v1", "tokens"] => one("token.issue".into(), "", None),
        ["v1", "tokens", "revoke"] => one("token.revoke".into(), "", None),
        ["v1", "cluster", "nodes"] => one("cluster.add-node".into(), "", None),
        ["v1", "cluster", "nodes", _] => one("cluster.remove-node".into(), "", None),
        ["v1", "cluster", what] => one(format!("cluster.{what}"), "", None),
        ["v1", "publishers"] => one("publisher.add".into(), "", None),
        ["v1", "images"] => one("image.register".into(), "", None),
        ["v1", "images", "batch"] => one("image.register-batch".into(), "", None),
        ["v1", "images", _, "revoke"] => one("image.revoke".into(), "", None),
        ["v1", "audit"] => one("audit.query".into(), "", None),
        ["v1", area, ..] => one(format!("{area}.{verb}"), "", None),
        _ => one(format!("http.{verb}"), "", None),
    }
}

/// `%XX` sequences decoded; anything malformed is kept as written.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
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

    fn claims(roles: &[&str], exp: u64) -> Claims {
        Claims {
            sub: "app-1".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            iat: 100,
            exp,
            jti: "t1".into(),
        }
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
