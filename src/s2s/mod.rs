//! Server-to-server federation (RFC 6120 §4–§9 for s2s, XEP-0220 dialback, XEP-0178 SASL
//! EXTERNAL, XEP-0288 bidirectional streams, XEP-0368 direct TLS).
//!
//! Layout, as Prosody splits mod_s2s: `inbound` accepts streams other servers open to us
//! (and answers dialback verification as the authoritative server); `outbound` opens streams
//! to other domains (DNS or `s2s.static_hosts`, TLS, EXTERNAL or dialback), queues stanzas
//! per domain while connecting and bounces them when it fails; `certs` builds the TLS
//! configurations and checks peer certificates (RFC 6125); `resolve` finds where a domain
//! listens; `dialback` holds the XEP-0185 key scheme both directions use. The core reaches
//! all of it only through [`crate::federation::Remote`].

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::federation::{Remote, RemoteError};
use crate::server::ServerState;

pub mod certs;
mod config;
pub mod dialback;
pub mod inbound;
pub mod out_stream;
pub mod outbound;
pub mod resolve;
pub mod stream;

pub use config::S2sConfig;

/// State shared by every s2s stream of one server.
pub struct S2s {
    /// Weak: the server state owns us (through its `Federation`).
    pub server: Weak<ServerState>,
    pub tls: certs::S2sTls,
    pub outbound: outbound::Outbound,
    /// XEP-0185 dialback secret (random, kept in the data dir so keys stay valid across a
    /// restart while a peer still verifies an old stream).
    pub secret: [u8; 32],
    /// `s2s.max_streams`: one permit per live s2s stream, inbound or outbound.
    pub streams: Arc<tokio::sync::Semaphore>,
}

/// The [`Remote`] the core sees.
struct S2sRemote(Arc<S2s>);

impl Remote for S2sRemote {
    fn send(
        &self,
        from: &jid::Jid,
        to: &jid::Jid,
        stanza: bytes::Bytes,
    ) -> Result<(), RemoteError> {
        self.0.outbound.send(&self.0, from, to, stanza)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum S2sStartError {
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("dialback secret: {0}")]
    Secret(std::io::Error),
}

/// Addresses the s2s listeners are bound to.
#[derive(Debug, Default, Clone, Copy)]
pub struct S2sAddrs {
    pub starttls: Option<SocketAddr>,
    pub direct_tls: Option<SocketAddr>,
}

/// Install federation into a freshly built server: the outbound router as the server's
/// [`Remote`], and the inbound listeners (already bound) as tasks. Does nothing when
/// `s2s.enabled` is off.
pub fn start(
    state: &Arc<ServerState>,
    starttls: Option<TcpListener>,
    direct_tls: Option<TcpListener>,
    tasks: &mut JoinSet<()>,
) -> Result<S2sAddrs, S2sStartError> {
    let config = &state.config.s2s;
    if !config.enabled {
        return Ok(S2sAddrs::default());
    }
    let secret = crate::keyfile::load_or_create(&state.config.data_dir.join("s2s-dialback.key"))
        .map_err(S2sStartError::Secret)?;
    let s2s = Arc::new(S2s {
        server: Arc::downgrade(state),
        tls: certs::S2sTls::new(state, config)?,
        outbound: outbound::Outbound::new(config),
        secret,
        streams: Arc::new(tokio::sync::Semaphore::new(config.max_streams)),
    });
    state.federation.install(Arc::new(S2sRemote(s2s.clone())));
    let mut addrs = S2sAddrs::default();
    for (listener, direct, slot) in [
        (starttls, false, &mut addrs.starttls),
        (direct_tls, true, &mut addrs.direct_tls),
    ] {
        let Some(listener) = listener else { continue };
        *slot = listener.local_addr().ok();
        if let Some(a) = *slot {
            tracing::info!(
                "listening for s2s{} on {a}",
                if direct { " (direct TLS)" } else { "" }
            );
        }
        let s2s = s2s.clone();
        let what = if direct { "s2s_direct_tls" } else { "s2s" };
        tasks.spawn(crate::server::accept_loop(
            state.clone(),
            listener,
            what,
            move |_state, tcp, peer| inbound::serve(s2s.clone(), tcp, peer, direct),
        ));
    }
    Ok(addrs)
}
