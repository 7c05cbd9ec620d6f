//! TLS for server-to-server streams: the configurations both directions use and the
//! RFC 6125 / RFC 7590 check of a peer's certificate against its domain.
//!
//! CONTRACT (owned by the outbound helper; bodies below are placeholders until then):
//! handshakes never fail because of the peer's certificate — its validity is checked after
//! the handshake with [`S2sTls::valid_for`], so a peer with a self-signed certificate can
//! still authenticate with dialback (unless `s2s.require_valid_certificates`).

use rustls::pki_types::CertificateDer;
use std::sync::Arc;

use crate::server::ServerState;

pub struct S2sTls {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl S2sTls {
    pub fn new(
        state: &Arc<ServerState>,
        _config: &super::S2sConfig,
    ) -> Result<S2sTls, crate::tls::TlsError> {
        Ok(S2sTls {
            acceptor: state.tls.acceptor.clone(),
        })
    }

    /// Acceptor for inbound streams (STARTTLS and direct TLS): presents our certificate
    /// and asks for, without requiring, a client certificate (for SASL EXTERNAL).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.acceptor.clone()
    }

    /// Connector for outbound streams: SNI and our certificate as client certificate.
    pub fn connector(&self) -> Option<tokio_rustls::TlsConnector> {
        None
    }

    /// Is `chain` (end-entity first, as presented) valid for `domain`: chains to a trusted
    /// root (system roots if `s2s.use_system_roots`, plus `s2s.ca_file`), is current, and
    /// names `domain` (DNS-ID, wildcard per RFC 6125 §6.4.3, or XmppAddr per RFC 6120
    /// §13.7.1.4)?
    pub fn valid_for(&self, _chain: &[CertificateDer<'static>], _domain: &str) -> bool {
        false
    }
}
