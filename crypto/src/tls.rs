//! TLS for every listener and every node-to-node link: rustls with the ring provider (no
//! OpenSSL), TLS 1.3, and 1.2 only for clients that cannot do better.
//!
//! Two kinds of certificate, for two questions:
//! - **Which host am I talking to?** Each node serves a certificate for its host (ECDSA P-256,
//!   so browsers, curl and grpcurl take it), issued by the cluster's CA (`cluster init` makes
//!   one) or by the operator's own CA (`[tls] cert_file`, `key_file`, `ca_file`). Clients and
//!   peers verify it against the CA file.
//! - **Which member is calling?** A node calling another presents a client certificate whose
//!   key *is* its ed25519 node key (self-signed, made in memory at start: [`node_key_cert`]).
//!   The TLS handshake proves the caller holds that key; the receiver takes the call only if
//!   the key is a member's, per the cluster map ([`NodeKeyClientVerifier`]), and only for frames
//!   that member sent. So the cluster map stays the one source of who is a member: no CA
//!   decides it, and removing a node from the map is enough.
//!
//! Reloading (as etcd does, per connection): the served certificate and the CA file that
//! verifies peers are looked at on every new handshake (two `stat`s) and re-read when their
//! modification time or size changed; a file that fails to load keeps the last good one in
//! use and the failure is logged. Established connections keep the keys they were made with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use zeroize::Zeroizing;

use crate::{Error, Identity, Result};

fn tls_err(what: impl Into<String>, message: impl std::fmt::Display) -> Error {
    Error::Tls { what: what.into(), message: message.to_string() }
}

/// The crypto provider every TLS config here uses (ring). rustls 0.23.48 deprecates ring's
/// provider for lacking post-quantum key exchange (X25519MLKEM768 is aws-lc-rs only); ring is
/// the project's chosen library, and X25519 is what etcd and our peers' clients use today.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and its private key, PEM.
pub struct Pem {
    pub cert: String,
    pub key: Zeroizing<String>,
}

fn validity(years: i64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    // A day back: a node whose clock is a little behind the issuer's still takes the cert.
    (now - time::Duration::days(1), now + time::Duration::days(365 * years))
}

/// A new cluster CA (ECDSA P-256, 10 years) named after `label` (the cluster's origin).
pub fn new_ca(label: &str) -> Result<Pem> {
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| tls_err("CA key", e))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| tls_err("CA", e))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "EdgeFabric");
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("EdgeFabric cluster CA {label}"));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    (params.not_before, params.not_after) = validity(10);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&crate::random_bytes::<16>()?));
    let cert = params.self_signed(&key).map_err(|e| tls_err("CA", e))?;
    Ok(Pem { cert: cert.pem(), key: Zeroizing::new(key.serialize_pem()) })
}

/// A node's serving certificate (ECDSA P-256, 2 years) for `hosts` (IP addresses or DNS
/// names, the SANs), issued by `ca`. Usable as server and as client certificate.
pub fn issue_node_cert(ca: &Pem, node_id: u64, hosts: &[String]) -> Result<Pem> {
    issue_cert(ca, &format!("edgefabric node {node_id}"), hosts)
}

/// A certificate named `name` for `hosts`, issued by `ca` (as [`issue_node_cert`]).
pub fn issue_cert(ca: &Pem, name: &str, hosts: &[String]) -> Result<Pem> {
    if hosts.is_empty() {
        return Err(tls_err("node certificate", "needs at least one host name or address"));
    }
    let ca_key = rcgen::KeyPair::from_pem(&ca.key).map_err(|e| tls_err("CA key", e))?;
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(|e| tls_err("CA certificate", e))?;
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| tls_err("node key", e))?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec()).map_err(|e| tls_err("node host", e))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "EdgeFabric");
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    (params.not_before, params.not_after) = validity(2);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&crate::random_bytes::<16>()?));
    let cert = params.signed_by(&key, &issuer).map_err(|e| tls_err("node certificate", e))?;
    Ok(Pem { cert: cert.pem(), key: Zeroizing::new(key.serialize_pem()) })
}

/// The client certificate a node presents to its peers: self-signed with its ed25519 node key,
/// so the key in it is the node key the cluster map lists. Made in memory at every start.
pub fn node_key_cert(identity: &Identity) -> Result<Pem> {
    let der = identity.pkcs8_der();
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(der.as_slice()),
        &rcgen::PKCS_ED25519,
    )
    .map_err(|e| tls_err("node key", e))?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| tls_err("node key", e))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "edgefabric node key");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    (params.not_before, params.not_after) = validity(1);
    let cert = params.self_signed(&key).map_err(|e| tls_err("node key certificate", e))?;
    Ok(Pem { cert: cert.pem(), key: Zeroizing::new(key.serialize_pem()) })
}

/// The ed25519 public key a certificate is for, if it is an ed25519 certificate.
pub fn ed25519_key_of(cert_der: &[u8]) -> Option<[u8; 32]> {
    let (rest, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let spki = cert.public_key();
    if spki.algorithm.algorithm.to_id_string() != "1.3.101.112" || spki.algorithm.parameters.is_some() {
        return None;
    }
    spki.subject_public_key.data.as_ref().try_into().ok()
}

/// Every certificate in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path).map_err(|e| tls_err(path.display().to_string(), e))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| tls_err(path.display().to_string(), format!("not PEM certificates: {e:?}")))?;
    if certs.is_empty() {
        return Err(tls_err(path.display().to_string(), "holds no certificate (expected PEM)"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| tls_err(path.display().to_string(), e))?);
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| tls_err(path.display().to_string(), format!("no PEM private key: {e:?}")))
}

/// What identifies a version of a file: its modification time and size.
type Stamp = (Option<SystemTime>, u64);

fn stamp(path: &Path) -> Stamp {
    match std::fs::metadata(path) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    }
}

/// The certificate a listener serves, from `cert_file` and `key_file`, re-read when either
/// changes (checked at each handshake).
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<(Stamp, Stamp, Arc<CertifiedKey>)>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReloadingCert({})", self.cert_file.display())
    }
}

impl ReloadingCert {
    /// Loads both files now: a node does not start with a certificate it cannot serve.
    pub fn new(cert_file: &Path, key_file: &Path) -> Result<Self> {
        let provider = provider();
        let (sc, sk) = (stamp(cert_file), stamp(key_file));
        let key = Self::load(&provider, cert_file, key_file)?;
        Ok(ReloadingCert {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider,
            state: Mutex::new((sc, sk, key)),
        })
    }

    fn load(provider: &CryptoProvider, cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>> {
        let certs = read_certs(cert_file)?;
        let key = read_key(key_file)?;
        let signer = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| tls_err(key_file.display().to_string(), e))?;
        let ck = CertifiedKey::new(certs, signer);
        ck.keys_match().map_err(|e| {
            tls_err(
                cert_file.display().to_string(),
                format!("does not match the key in {}: {e}", key_file.display()),
            )
        })?;
        Ok(Arc::new(ck))
    }

    /// The certificate to serve now, re-read first if a file changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let (sc, sk) = (stamp(&self.cert_file), stamp(&self.key_file));
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.0 != sc || state.1 != sk {
            match Self::load(&self.provider, &self.cert_file, &self.key_file) {
                Ok(key) => {
                    tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                    *state = (sc, sk, key);
                }
                Err(e) => {
                    // A half-written pair (cert replaced, key not yet) lands here: keep serving
                    // the last good one, and try again at the next handshake.
                    tracing::warn!(error = %e, "TLS certificate changed but does not load; serving the previous one");
                }
            }
        }
        state.2.clone()
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Says whether an ed25519 key is a member's node key (from the cluster map).
pub type MemberCheck = Arc<dyn Fn(&[u8; 32]) -> bool + Send + Sync>;

/// Asks every client of the gRPC port for a certificate without requiring one (apps and tools
/// have none); one that is presented must be a node-key certificate of a member.
pub struct NodeKeyClientVerifier {
    is_member: MemberCheck,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for NodeKeyClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKeyClientVerifier")
    }
}

impl NodeKeyClientVerifier {
    pub fn new(is_member: MemberCheck) -> Self {
        NodeKeyClientVerifier { is_member, provider: provider() }
    }
}

impl ClientCertVerifier for NodeKeyClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        // Possession of the key is proven by the handshake's signature, checked below with the
        // same certificate; what is decided here is only whose key it is.
        let key = ed25519_key_of(end_entity).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(tls_err(
                "client certificate",
                "client certificates are for member nodes only (an ed25519 node-key certificate)",
            )))),
        ))?;
        if !(self.is_member)(&key) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Verifies servers against the CA certificates in `ca_file`, re-read when the file changes.
pub struct ReloadingCaVerifier {
    ca_file: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<(Stamp, Arc<rustls::client::WebPkiServerVerifier>)>,
}

impl std::fmt::Debug for ReloadingCaVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReloadingCaVerifier({})", self.ca_file.display())
    }
}

impl ReloadingCaVerifier {
    pub fn new(ca_file: &Path) -> Result<Self> {
        let provider = provider();
        let s = stamp(ca_file);
        let v = Self::load(&provider, ca_file)?;
        Ok(ReloadingCaVerifier { ca_file: ca_file.to_path_buf(), provider, state: Mutex::new((s, v)) })
    }

    fn load(
        provider: &Arc<CryptoProvider>,
        ca_file: &Path,
    ) -> Result<Arc<rustls::client::WebPkiServerVerifier>> {
        let mut roots = rustls::RootCertStore::empty();
        for c in read_certs(ca_file)? {
            roots.add(c).map_err(|e| tls_err(ca_file.display().to_string(), e))?;
        }
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| tls_err(ca_file.display().to_string(), e))
    }

    fn current(&self) -> Arc<rustls::client::WebPkiServerVerifier> {
        let s = stamp(&self.ca_file);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.0 != s {
            match Self::load(&self.provider, &self.ca_file) {
                Ok(v) => {
                    tracing::info!(ca = %self.ca_file.display(), "TLS CA file reloaded");
                    *state = (s, v);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS CA file changed but does not load; using the previous one")
                }
            }
        }
        state.1.clone()
    }
}

impl ServerCertVerifier for ReloadingCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.current().verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A server config: TLS 1.3 and 1.2, the reloading certificate, `alpn` protocols, and client
/// certificates checked by `clients` (none asked for without it).
pub fn server_config(
    cert: Arc<ReloadingCert>,
    clients: Option<Arc<dyn ClientCertVerifier>>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls_err("server config", e))?;
    let builder = match clients {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_key_certificates_carry_the_node_key_and_nothing_else_does() {
        let id = Identity::generate().unwrap();
        let pem = node_key_cert(&id).unwrap();
        let der = CertificateDer::from_pem_slice(pem.cert.as_bytes()).unwrap();
        assert_eq!(ed25519_key_of(&der), Some(id.public_key().to_bytes()));
        // A CA-issued ECDSA certificate is no node-key certificate.
        let ca = new_ca("test").unwrap();
        let node = issue_node_cert(&ca, 1, &["127.0.0.1".into()]).unwrap();
        let der = CertificateDer::from_pem_slice(node.cert.as_bytes()).unwrap();
        assert_eq!(ed25519_key_of(&der), None);
        // Garbage and trailing bytes are refused.
        assert_eq!(ed25519_key_of(b"\x30\x03\x02\x01\x00"), None);
        let mut der = CertificateDer::from_pem_slice(pem.cert.as_bytes()).unwrap().to_vec();
        der.push(0);
        assert_eq!(ed25519_key_of(&der), None);
    }

    #[test]
    fn issued_certificates_verify_against_their_ca_only() {
        let ca = new_ca("test").unwrap();
        let node = issue_node_cert(&ca, 3, &["127.0.0.1".into(), "edge-a.example".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.cert).unwrap();
        let v = ReloadingCaVerifier::new(&ca_file).unwrap();
        let der = CertificateDer::from_pem_slice(node.cert.as_bytes()).unwrap();
        let now = UnixTime::now();
        for host in ["127.0.0.1", "edge-a.example"] {
            let name = ServerName::try_from(host).unwrap();
            assert!(v.verify_server_cert(&der, &[], &name, &[], now).is_ok(), "{host}");
        }
        let other = ServerName::try_from("127.0.0.2").unwrap();
        assert!(v.verify_server_cert(&der, &[], &other, &[], now).is_err(), "wrong host accepted");
        // Another CA's certificate is refused, until the CA file is replaced by that CA: the
        // verifier picks the new file up without being rebuilt.
        let ca2 = new_ca("other").unwrap();
        let node2 = issue_node_cert(&ca2, 3, &["127.0.0.1".into()]).unwrap();
        let der2 = CertificateDer::from_pem_slice(node2.cert.as_bytes()).unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        assert!(v.verify_server_cert(&der2, &[], &name, &[], now).is_err());
        std::fs::write(&ca_file, format!("{}\n", ca2.cert)).unwrap();
        assert!(v.verify_server_cert(&der2, &[], &name, &[], now).is_ok());
        assert!(v.verify_server_cert(&der, &[], &name, &[], now).is_err());
        // A file that stops parsing keeps the last good CA.
        std::fs::write(&ca_file, "not a certificate").unwrap();
        assert!(v.verify_server_cert(&der2, &[], &name, &[], now).is_ok());
    }

    #[test]
    fn the_served_certificate_reloads_when_its_files_change() {
        let ca = new_ca("test").unwrap();
        let a = issue_node_cert(&ca, 1, &["127.0.0.1".into()]).unwrap();
        let b = issue_node_cert(&ca, 1, &["127.0.0.1".into(), "node-b.example".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cf, kf) = (dir.path().join("n.crt"), dir.path().join("n.key"));
        std::fs::write(&cf, &a.cert).unwrap();
        std::fs::write(&kf, a.key.as_bytes()).unwrap();
        let r = ReloadingCert::new(&cf, &kf).unwrap();
        let first = r.current().cert[0].clone();
        // Only the certificate replaced: it does not match the key, so the old pair stays.
        std::fs::write(&cf, &b.cert).unwrap();
        assert_eq!(r.current().cert[0], first);
        std::fs::write(&kf, b.key.as_bytes()).unwrap();
        let second = r.current().cert[0].clone();
        assert_ne!(second, first);
        assert_eq!(second.as_ref(), CertificateDer::from_pem_slice(b.cert.as_bytes()).unwrap().as_ref());
        // A node does not start with files that do not load.
        std::fs::write(&kf, "junk").unwrap();
        assert!(ReloadingCert::new(&cf, &kf).is_err());
        assert!(ReloadingCert::new(&dir.path().join("absent"), &kf).is_err());
    }
}
