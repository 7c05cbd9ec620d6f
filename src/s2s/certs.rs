//! TLS for server-to-server streams: the configurations both directions use and the
//! RFC 6125 / RFC 6120 §13.7.2 check of a peer's certificate against its domain.
//!
//! Handshakes never fail because of the peer's certificate: its validity is decided after
//! the handshake with [`S2sTls::valid_for`], so a peer with a self-signed certificate can
//! still authenticate with dialback (unless `s2s.require_valid_certificates`), which is how
//! Prosody and ejabberd federate by default. The handshake signatures ARE checked, so a
//! certificate the peer presented is one whose key it holds.
//!
//! The peer's chain is read from the connection after the handshake
//! (`peer_certificates()`), so the verifiers below keep nothing.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

use crate::server::ServerState;
use crate::tls::{der_item, TlsError};

/// ALPN protocol of XEP-0368 direct TLS server-to-server connections.
pub const ALPN_XMPP_SERVER: &[u8] = b"xmpp-server";

pub struct S2sTls {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
    roots: RootCertStore,
    provider: Arc<CryptoProvider>,
}

impl S2sTls {
    pub fn new(state: &Arc<ServerState>, config: &super::S2sConfig) -> Result<S2sTls, TlsError> {
        let roots = load_roots(config)?;
        let tls = &state.tls;
        Self::build(tls.chain.clone(), &tls.key, roots)
    }

    /// The configurations for our `chain`/`key`, checking peers against `roots`.
    pub fn build(
        chain: Vec<CertificateDer<'static>>,
        key: &rustls::pki_types::PrivateKeyDer<'static>,
        roots: RootCertStore,
    ) -> Result<S2sTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let accept_any = Arc::new(AcceptAny(provider.clone()));
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(accept_any.clone())
            .with_single_cert(chain.clone(), key.clone_key())?;
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.alpn_protocols = vec![ALPN_XMPP_SERVER.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(accept_any)
            .with_client_auth_cert(chain, key.clone_key())?;
        client.alpn_protocols = vec![ALPN_XMPP_SERVER.to_vec()];
        Ok(S2sTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            roots,
            provider,
        })
    }

    /// Acceptor for inbound streams (STARTTLS and direct TLS): presents our certificate
    /// and asks for, without requiring, a client certificate (for SASL EXTERNAL).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.acceptor.clone()
    }

    /// Connector for outbound streams: our certificate as client certificate, ALPN
    /// `xmpp-server`; the caller gives the remote domain as SNI. Always `Some` (kept an
    /// Option in the contract for a server without a certificate).
    pub fn connector(&self) -> Option<tokio_rustls::TlsConnector> {
        Some(self.connector.clone())
    }

    /// Is `chain` (end-entity first, as presented) valid for `domain`: chains to a trusted
    /// root (system roots if `s2s.use_system_roots`, plus `s2s.ca_file`), is current, and
    /// names `domain` (DNS-ID, wildcard per RFC 6125 §6.4.3, XmppAddr per RFC 6120
    /// §13.7.1.4, or an `_xmpp-server` SRV-ID per RFC 6125 §6.5.1)?
    pub fn valid_for(&self, chain: &[CertificateDer<'static>], domain: &str) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        if self.roots.is_empty() {
            return false;
        }
        let Ok(parsed) = rustls::server::ParsedCertificate::try_from(leaf) else {
            return false;
        };
        let algs = self.provider.signature_verification_algorithms.all;
        if let Err(e) = rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            UnixTime::now(),
            algs,
        ) {
            tracing::debug!(domain, error = %e, "s2s peer certificate not trusted");
            return false;
        }
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Ok(name) = ServerName::try_from(domain.clone()) {
            if rustls::client::verify_server_name(&parsed, &name).is_ok() {
                return true;
            }
        }
        other_name_domains(leaf.as_ref())
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&domain))
    }
}

/// `s2s.ca_file` plus, when `s2s.use_system_roots`, the system's roots.
fn load_roots(config: &super::S2sConfig) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    if config.use_system_roots {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "s2s: reading the system trust roots");
        }
        roots.add_parsable_certificates(found.certs);
    }
    if !config.ca_file.is_empty() {
        let path = Path::new(&config.ca_file);
        let io = |source| TlsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let data = std::fs::read(path).map_err(io)?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
            .collect::<Result<_, _>>()
            .map_err(io)?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(TlsError::NoCert(path.to_path_buf()));
        }
    }
    Ok(roots)
}

/// Both verifiers: any certificate passes (checked later by `valid_for`), handshake
/// signatures are verified.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl AcceptAny {
    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for AcceptAny {
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
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

/// DER of the OID id-on-xmppAddr (1.3.6.1.5.5.7.8.5, RFC 6120 §13.7.1.4).
const ID_ON_XMPPADDR: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x05];
/// DER of the OID id-on-dnsSRV (1.3.6.1.5.5.7.8.7, RFC 4985).
const ID_ON_DNSSRV: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x07];
/// DER of the OID id-ce-subjectAltName (2.5.29.17).
const ID_CE_SAN: &[u8] = &[0x55, 0x1d, 0x11];

/// The domains the certificate names in otherName form: XmppAddr (RFC 6120 §13.7.1.4, a
/// UTF8String) and SRV-ID for `_xmpp-server` (RFC 6125 §6.5.1, RFC 4985: an IA5String
/// `_xmpp-server.<domain>`). A minimal DER walk: rustls-webpki only matches DNS and IP
/// names; never panics on garbage.
fn other_name_domains(cert: &[u8]) -> Vec<String> {
    san_entries(cert)
        .into_iter()
        .filter(|(tag, _)| *tag == 0xa0)
        .filter_map(|(_, value)| other_name_domain(value))
        .collect()
}

/// The domain in one otherName (its contents: type-id, then `[0]` value), if it is an
/// XmppAddr or an `_xmpp-server` SRV-ID.
fn other_name_domain(value: &[u8]) -> Option<String> {
    let (t, oid, rest) = der_item(value)?;
    let (e, explicit, _) = der_item(rest)?;
    let (u, s, _) = der_item(explicit)?;
    let s = std::str::from_utf8(s).ok()?;
    match (t, oid, e, u) {
        (0x06, ID_ON_XMPPADDR, 0xa0, 0x0c) => Some(s.to_owned()),
        (0x06, ID_ON_DNSSRV, 0xa0, 0x16) => s.strip_prefix("_xmpp-server.").map(str::to_owned),
        _ => None,
    }
}

/// (tag, contents) of every GeneralName in the subjectAltName extension.
fn san_entries(cert: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let Some(extensions) = extensions(cert) else {
        return out;
    };
    let mut rest = extensions;
    while let Some((_, ext, next)) = der_item(rest) {
        rest = next;
        let Some((0x06, oid, mut fields)) = der_item(ext) else {
            continue;
        };
        if oid != ID_CE_SAN {
            continue;
        }
        // Skip the optional `critical` BOOLEAN to the OCTET STRING.
        while let Some((tag, value, next)) = der_item(fields) {
            fields = next;
            if tag != 0x04 {
                continue;
            }
            let Some((0x30, mut names, _)) = der_item(value) else {
                break;
            };
            while let Some((tag, name, next)) = der_item(names) {
                out.push((tag, name));
                names = next;
            }
        }
    }
    out
}

/// The contents of tbsCertificate's `[3] Extensions` SEQUENCE.
fn extensions(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, cert, _) = der_item(cert)? else {
        return None;
    };
    let (0x30, mut tbs, _) = der_item(cert)? else {
        return None;
    };
    while let Some((tag, value, next)) = der_item(tbs) {
        if tag == 0xa3 {
            let (0x30, exts, _) = der_item(value)? else {
                return None;
            };
            return Some(exts);
        }
        tbs = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, OtherNameValue, SanType,
    };

    struct Ca {
        params: CertificateParams,
        key: KeyPair,
        cert: rcgen::Certificate,
    }

    fn ca() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Starling test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { params, key, cert }
    }

    fn leaf(ca: &Ca, sans: Vec<SanType>, expired: bool) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
        params.signed_by(&key, &issuer).unwrap().der().clone()
    }

    fn dns(name: &str) -> SanType {
        SanType::DnsName(name.try_into().unwrap())
    }

    fn tls_trusting(ca: &Ca) -> S2sTls {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert.der().clone()).unwrap();
        let key = KeyPair::generate().unwrap();
        let own = CertificateParams::new(vec!["us.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        S2sTls::build(vec![own.der().clone()], &der, roots).unwrap()
    }

    #[test]
    fn dns_id_chained_to_a_trusted_root() {
        let ca = ca();
        let tls = tls_trusting(&ca);
        let cert = leaf(&ca, vec![dns("remote.test")], false);
        assert!(tls.valid_for(std::slice::from_ref(&cert), "remote.test"));
        assert!(tls.valid_for(std::slice::from_ref(&cert), "REMOTE.test."));
        assert!(
            !tls.valid_for(std::slice::from_ref(&cert), "other.test"),
            "wrong name"
        );
        assert!(!tls.valid_for(&[cert], "sub.remote.test"));
        assert!(!tls.valid_for(&[], "remote.test"));
    }

    #[test]
    fn wildcard_matches_one_leftmost_label() {
        let ca = ca();
        let tls = tls_trusting(&ca);
        let cert = leaf(&ca, vec![dns("*.remote.test")], false);
        assert!(tls.valid_for(std::slice::from_ref(&cert), "conference.remote.test"));
        assert!(!tls.valid_for(std::slice::from_ref(&cert), "remote.test"));
        assert!(!tls.valid_for(&[cert], "a.b.remote.test"));
    }

    #[test]
    fn xmpp_addr_other_name() {
        let ca = ca();
        let tls = tls_trusting(&ca);
        let cert = leaf(
            &ca,
            vec![SanType::OtherName((
                vec![1, 3, 6, 1, 5, 5, 7, 8, 5],
                OtherNameValue::Utf8String("xmpp.remote.test".into()),
            ))],
            false,
        );
        assert_eq!(other_name_domains(cert.as_ref()), vec!["xmpp.remote.test"]);
        assert!(tls.valid_for(std::slice::from_ref(&cert), "xmpp.remote.test"));
        assert!(!tls.valid_for(&[cert], "remote.test"));
    }

    #[test]
    fn srv_id_other_name() {
        let ca = ca();
        let tls = tls_trusting(&ca);
        let srv = |name: &str| {
            SanType::OtherName((
                vec![1, 3, 6, 1, 5, 5, 7, 8, 7],
                OtherNameValue::Utf8String(name.into()),
            ))
        };
        // rcgen writes otherName values as UTF8String; RFC 4985 wants IA5String, so only
        // the parser's refusal of the wrong string type is checked with rcgen...
        let cert = leaf(&ca, vec![srv("_xmpp-server.srv.remote.test")], false);
        assert!(!tls.valid_for(std::slice::from_ref(&cert), "srv.remote.test"));
        // ...and the IA5String form with a hand-made otherName.
        let other_name = |oid: &[u8], tag: u8, value: &[u8]| {
            let mut v = vec![0x06, oid.len() as u8];
            v.extend_from_slice(oid);
            v.extend_from_slice(&[0xa0, value.len() as u8 + 2, tag, value.len() as u8]);
            v.extend_from_slice(value);
            v
        };
        let ia5 = other_name(ID_ON_DNSSRV, 0x16, b"_xmpp-server.srv.remote.test");
        assert_eq!(other_name_domain(&ia5).as_deref(), Some("srv.remote.test"));
        let client = other_name(ID_ON_DNSSRV, 0x16, b"_xmpp-client.srv.remote.test");
        assert_eq!(
            other_name_domain(&client),
            None,
            "only the s2s service counts"
        );
        let xmpp = other_name(ID_ON_XMPPADDR, 0x0c, b"x.remote.test");
        assert_eq!(other_name_domain(&xmpp).as_deref(), Some("x.remote.test"));
        assert_eq!(other_name_domain(&ia5[..ia5.len() - 3]), None, "truncated");
    }

    #[test]
    fn untrusted_or_expired_certificates_are_not_valid() {
        let ca = ca();
        let tls = tls_trusting(&ca);
        let other_ca = self::ca();
        let foreign = leaf(&other_ca, vec![dns("remote.test")], false);
        assert!(!tls.valid_for(&[foreign], "remote.test"), "unknown issuer");
        let key = KeyPair::generate().unwrap();
        let selfsigned = CertificateParams::new(vec!["remote.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(!tls.valid_for(&[selfsigned.der().clone()], "remote.test"));
        let expired = leaf(&ca, vec![dns("remote.test")], true);
        assert!(!tls.valid_for(&[expired], "remote.test"));
    }

    #[test]
    fn garbage_is_not_valid() {
        let ca = ca();
        let tls = tls_trusting(&ca);
        assert!(!tls.valid_for(&[CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])], "x"));
        assert!(other_name_domains(&[0x30, 0x84, 0xff]).is_empty());
    }

    /// Handshake between the acceptor and connector of two servers with self-signed
    /// certificates: neither fails, and each side sees the other's certificate.
    #[tokio::test]
    async fn handshake_never_fails_on_untrusted_peers() {
        let ca = ca();
        let a = tls_trusting(&ca);
        let b = tls_trusting(&ca);
        let (ca_io, cb_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move { a.acceptor().accept(ca_io).await });
        let name = ServerName::try_from("us.test").unwrap();
        let client = b.connector().unwrap().connect(name, cb_io).await.unwrap();
        let server = server.await.unwrap().unwrap();
        assert_eq!(
            server.get_ref().1.peer_certificates().map(|c| c.len()),
            Some(1)
        );
        assert_eq!(
            client.get_ref().1.peer_certificates().map(|c| c.len()),
            Some(1)
        );
        assert_eq!(server.get_ref().1.alpn_protocol(), Some(ALPN_XMPP_SERVER));
    }
}
