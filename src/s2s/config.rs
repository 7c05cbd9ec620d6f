//! `[s2s]`: federation settings.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S2sConfig {
    /// Federation on or off (outbound routing and the `listen.s2s*` listeners).
    pub enabled: bool,
    /// Domain → "host:port" used instead of DNS (intranets, tests). A "tls://" prefix means
    /// direct TLS (XEP-0368) to that address, otherwise STARTTLS.
    pub static_hosts: BTreeMap<String, String>,
    /// The DNS server ("address:port") to look up remote domains with, instead of the
    /// system's (/etc/resolv.conf): split-horizon intranets, tests. Empty: the system's.
    pub resolver: String,
    /// Extra trust roots (PEM file) for peer certificates, on top of the system roots.
    pub ca_file: String,
    /// Trust the system's root certificates (Debian: /etc/ssl/certs) for peer certificates.
    pub use_system_roots: bool,
    /// Policy: refuse peers whose certificate is not valid for their domain. Off (the
    /// default, as Prosody's `s2s_secure_auth = false`): such peers authenticate with
    /// XEP-0220 dialback instead.
    pub require_valid_certificates: bool,
    /// Refuse s2s streams (both directions) that do not negotiate TLS.
    pub require_tls: bool,
    /// Seconds to establish an outbound connection (DNS, TCP, TLS, authentication) before the
    /// queued stanzas bounce with remote-server-timeout. Inbound: the time a peer has to
    /// authenticate a domain pair before its stream is closed.
    pub connect_timeout_secs: u64,
    /// Seconds without traffic after which an s2s stream is closed (it reopens on demand).
    pub idle_timeout_secs: u64,
    /// Stanzas waiting for one remote domain while its connection is set up; beyond, new
    /// stanzas bounce with resource-constraint.
    pub max_queue: usize,
    /// Most s2s streams (inbound plus outbound) at once.
    pub max_streams: usize,
    /// Most domain pairs one inbound stream may authenticate or have pending (XEP-0220
    /// multiplexing); beyond, dialback requests get a resource-constraint error. Bounds
    /// the verification connections one peer can make us open.
    pub max_domain_pairs: usize,
}

impl Default for S2sConfig {
    fn default() -> Self {
        S2sConfig {
            enabled: true,
            static_hosts: BTreeMap::new(),
            resolver: String::new(),
            ca_file: String::new(),
            use_system_roots: true,
            require_valid_certificates: false,
            require_tls: true,
            connect_timeout_secs: 30,
            idle_timeout_secs: 600,
            max_queue: 1000,
            max_streams: 1000,
            max_domain_pairs: 100,
        }
    }
}

impl S2sConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.connect_timeout_secs == 0 || self.idle_timeout_secs == 0 {
            return Err("s2s: connect_timeout_secs and idle_timeout_secs must be positive".into());
        }
        if self.max_queue == 0 || self.max_streams == 0 || self.max_domain_pairs == 0 {
            return Err("s2s: max_queue, max_streams and max_domain_pairs must be positive".into());
        }
        if !self.resolver.is_empty() && self.resolver.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "s2s.resolver: {:?} is not address:port",
                self.resolver
            ));
        }
        for (domain, target) in &self.static_hosts {
            let addr = target.strip_prefix("tls://").unwrap_or(target);
            if addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(format!(
                    "s2s.static_hosts: {domain} = {target:?} is not host:port"
                ));
            }
        }
        Ok(())
    }
}
