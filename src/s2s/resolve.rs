//! Where a remote domain accepts s2s connections (RFC 6120 §3.2, XEP-0368):
//! `s2s.static_hosts`, else `_xmpps-server._tcp` and `_xmpp-server._tcp` SRV records merged
//! by priority/weight (RFC 2782), else the domain's A/AAAA on 5269.
//!
//! CONTRACT (owned by the outbound helper).

/// One address to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// XEP-0368: TLS from the first byte instead of STARTTLS.
    pub direct_tls: bool,
}
