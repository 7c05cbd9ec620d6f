//! The boundary between this server's domains and every other XMPP domain.
//!
//! Two directions, two seams:
//! - **Out**: a local handler that must deliver to a domain this server does not serve (and
//!   no hosted service owns) calls [`ServerState::send_remote`]. Whatever implements
//!   [`Remote`] (the s2s module, when enabled) queues the stanza for that domain; when the
//!   domain cannot be reached, the implementation itself bounces the stanza to the sender
//!   (RFC 6120 §8.3.3 `remote-server-not-found` / `remote-server-timeout`) through
//!   [`inbound`], so nothing vanishes.
//! - **In**: a stanza that arrives from another domain (an authenticated s2s stream, an
//!   XEP-0114 component) is handed to [`inbound`], which applies the same RFC 6121 rules a
//!   local sender's stanza gets on the receiving side (offline storage, archiving, carbons,
//!   subscription state, presence probes, IQ handling) and hands stanzas for hosted
//!   services to them.
//!
//! Why a trait and not a direct call into `crate::s2s`: the core (message, presence, MUC
//! fan-out) must not know how a remote domain is reached; tests wire two in-process servers
//! together with an in-memory `Remote`, and a server without s2s answers as before.

use bytes::Bytes;
use jid::Jid;
use std::sync::{Arc, OnceLock};

use crate::server::ServerState;
use crate::xml::Stanza;

pub mod presences;
mod receive;
pub mod send;
pub use send::session_handle;

/// Why a stanza could not even be queued for a remote domain. The caller bounces it with
/// the matching condition (requests and messages; never errors, RFC 6120 §8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// No federation on this server (s2s disabled), or the domain is refused by policy.
    #[error("remote-server-not-found")]
    NotFound,
    /// The per-domain queue is full (the domain is slow or unreachable right now).
    #[error("resource-constraint")]
    QueueFull,
}

/// Delivery to other domains. Implemented by the s2s module.
pub trait Remote: Send + Sync {
    /// Queue one stanza for `to`'s domain, sent from `from`'s domain (a domain this server
    /// serves, or one of its services/components). `stanza` is one complete top-level
    /// element with 'from' and 'to' already set; it is in the stream's default namespace
    /// (no `xmlns` attribute, or `xmlns='jabber:client'`, which the implementation
    /// rewrites to the s2s stream's `jabber:server`). Never blocks and never waits on the
    /// network: connection setup happens in the background.
    fn send(&self, from: &Jid, to: &Jid, stanza: Bytes) -> Result<(), RemoteError>;
}

/// The installed [`Remote`], if federation is enabled (set once, at startup), and what
/// this server knows of other domains' users.
#[derive(Default)]
pub struct Federation {
    remote: OnceLock<Arc<dyn Remote>>,
    /// The last available presence of each resource of another domain's contacts, as
    /// broadcast to a local user: who gets PEP notifications (XEP-0163 §4.3 decides on the
    /// XEP-0115 caps in it), as the router's registry serves for local contacts.
    pub presences: presences::RemotePresences,
}

impl Federation {
    /// Install the remote router (once; later calls are ignored and return false).
    pub fn install(&self, remote: Arc<dyn Remote>) -> bool {
        self.remote.set(remote).is_ok()
    }

    pub fn remote(&self) -> Option<&Arc<dyn Remote>> {
        self.remote.get()
    }
}

impl ServerState {
    /// True when `domain` is local: one of the served domains or a hosted service's
    /// (group chat, upload, components). Everything else is remote.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.serves(domain) || self.services.get(domain).is_some()
    }

    /// Send a stanza to a remote domain (see [`Remote::send`]).
    pub fn send_remote(&self, from: &Jid, to: &Jid, stanza: Bytes) -> Result<(), RemoteError> {
        // A hosted service that relays to another domain of its own (an XEP-0114 component)
        // is reached like a remote server, through the stream it is connected by.
        if let Some(svc) = self.services.get(to.domain().as_str()) {
            return svc.relay(stanza).map_err(|c| match c {
                crate::stanza::Condition::ResourceConstraint => RemoteError::QueueFull,
                _ => RemoteError::NotFound,
            });
        }
        match self.federation.remote() {
            Some(r) => r.send(from, to, stanza),
            None => Err(RemoteError::NotFound),
        }
    }
}

/// Process a stanza that arrived from another domain.
///
/// The caller (an s2s stream, a component connection) has already checked that `from`'s
/// domain is the one the stream authenticated, and that `to`'s domain is local
/// ([`ServerState::is_local_domain`]); `stanza` has been parsed in the `jabber:client`
/// namespace context (the caller normalises `jabber:server`), with its 'from'/'to'
/// attributes equal to `from`/`to`. Called in the stream's reader task, in the order the
/// stanzas arrived; long work (storage) is awaited here.
pub async fn inbound(server: &Arc<ServerState>, from: &Jid, to: &Jid, stanza: &Stanza) {
    receive::inbound(server, from, to, stanza).await
}
