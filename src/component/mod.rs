//! XEP-0114 external components (the `jabber:component:accept` protocol): a gateway or bot
//! connects to `listen.component`, names its domain in the stream header, proves the shared
//! secret of `component.secrets` with `<handshake/>`, and from then on owns every address
//! at that domain.
//!
//! Each configured domain is a hosted [`Service`] from startup, connected or not: local
//! users' stanzas reach it through `services::dispatch` like any service's, disco#items of
//! the server lists it, and [`ServerState::is_local_domain`] counts it, so remote servers'
//! stanzas for it are accepted. While no component is connected, requests bounce with
//! service-unavailable (as Prosody's mod_component does). The connection task (`stream`)
//! is the only writer to the socket; the service hands it stanzas through a bounded queue.
//!
//! The component's own stanzas are another domain's to the core: local addressees get
//! them through [`crate::federation::inbound`], other domains through `send_remote`, and
//! whatever the core sends back to the component's domain (IQ answers, errors, presence)
//! reaches the queue through [`Service::relay`], as it would reach a remote server.
//!
//! [`ServerState::is_local_domain`]: crate::server::ServerState::is_local_domain

use bytes::Bytes;
use jid::Jid;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::Secret;
use crate::server::ServerState;
use crate::services::{Inbound, Service, ServiceFuture, Services};
use crate::stanza::{error_reply, Condition, ElementExt, StanzaError};
use crate::xml::{to_bytes, Stanza};

mod config;
pub mod ns;
mod stream;

pub use config::ComponentConfig;

/// One configured component domain and, while one is connected, its connection's queue.
pub struct Component {
    domain: String,
    secret: Secret,
    /// The connected component's queue, if any. A std mutex: held for a `try_send` only,
    /// never across an await.
    link: Mutex<Option<Link>>,
}

struct Link {
    /// Which connection holds the link (a late detach must not drop a newer one's).
    id: u64,
    tx: mpsc::Sender<Bytes>,
}

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

impl Component {
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Attach a freshly authenticated connection; None when one is connected already.
    fn attach(&self, tx: mpsc::Sender<Bytes>) -> Option<u64> {
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        if link.as_ref().is_some_and(|l| !l.tx.is_closed()) {
            return None;
        }
        let id = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
        *link = Some(Link { id, tx });
        Some(id)
    }

    fn detach(&self, id: u64) {
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        if link.as_ref().is_some_and(|l| l.id == id) {
            *link = None;
        }
    }

    /// Queue a stanza (jabber:client bytes, 'from' set) for the connected component.
    fn offer(&self, bytes: Bytes) -> Result<(), Condition> {
        let link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        let Some(l) = link.as_ref() else {
            return Err(Condition::ServiceUnavailable);
        };
        l.tx.try_send(bytes).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Condition::ResourceConstraint,
            mpsc::error::TrySendError::Closed(_) => Condition::ServiceUnavailable,
        })
    }
}

/// Stanzas that get no error reply when they cannot be delivered: errors and results
/// (RFC 6120 §8.3.1), and unavailable presence (a departing user's, nobody to tell).
fn never_bounced(st: &Stanza) -> bool {
    matches!(st.type_.as_deref(), Some("error" | "result"))
        || (st.name == "presence" && st.type_.as_deref() == Some("unavailable"))
}

impl Service for Component {
    fn domain(&self) -> &str {
        &self.domain
    }

    fn name(&self) -> &str {
        &self.domain
    }

    /// Answers, errors and presence the core addresses to the component's domain as to
    /// another server's (`send_remote`, `route`): queued like any stanza for it.
    fn relay(&self, stanza: Bytes) -> Result<(), Condition> {
        self.offer(stanza)
    }

    fn handle<'a>(&'a self, req: Inbound<'a>) -> ServiceFuture<'a> {
        Box::pin(async move {
            let from = req.from.as_str();
            // Queued in jabber:client form (the writer converts): a stanza still queued
            // when the component goes away bounces like any other.
            let bytes = req.stanza.rewrite(Some(from), Some(req.to.as_str()));
            let Err(condition) = self.offer(bytes) else {
                return;
            };
            if never_bounced(req.stanza) {
                return;
            }
            // Built on the tree: bounces are rare, and the error must echo the stanza.
            let Ok(mut el) = req.stanza.element() else {
                return;
            };
            el.put_attr("from", from);
            el.put_attr("to", req.to.as_str());
            let reply = error_reply(&el, &StanzaError::new(condition));
            req.server
                .route(&Jid::from(req.from.clone()), to_bytes(&reply));
        })
    }
}

/// The configured components by domain; the listener looks them up by the stream's 'to'.
#[derive(Default)]
pub struct Components {
    by_domain: HashMap<String, Arc<Component>>,
}

impl Components {
    /// One [`Component`] per `component.secrets` entry, each registered in `services` (a
    /// domain another service already owns is refused with an error in the log).
    pub fn new(config: &ComponentConfig, services: &mut Services) -> Components {
        let mut by_domain = HashMap::new();
        for (domain, secret) in &config.secrets {
            let domain = domain.to_ascii_lowercase();
            if services.get(&domain).is_some() {
                tracing::error!(%domain, "component domain is another service's; ignored");
                continue;
            }
            let c = Arc::new(Component {
                domain: domain.clone(),
                secret: secret.clone(),
                link: Mutex::new(None),
            });
            services.add(c.clone());
            by_domain.insert(domain, c);
        }
        Components { by_domain }
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    fn get(&self, domain: &str) -> Option<&Arc<Component>> {
        self.by_domain.get(domain)
    }
}

/// Serve the component listener (already bound; None when `listen.component` is empty)
/// when components are configured. Returns the bound address.
pub fn start(
    state: &Arc<ServerState>,
    components: Components,
    listener: Option<TcpListener>,
    tasks: &mut JoinSet<()>,
) -> Option<SocketAddr> {
    let listener = listener?;
    if components.is_empty() {
        return None; // the listener is dropped: nothing could authenticate on it
    }
    let addr = listener.local_addr().ok();
    if let Some(a) = addr {
        tracing::info!("listening for components on {a}");
    }
    let components = Arc::new(components);
    tasks.spawn(crate::server::accept_loop(
        state.clone(),
        listener,
        "component",
        move |state, tcp, peer| stream::serve(state, components.clone(), tcp, peer),
    ));
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component() -> Component {
        Component {
            domain: "gw.example.org".into(),
            secret: Secret::default(),
            link: Mutex::new(None),
        }
    }

    #[test]
    fn queue_policy() {
        let c = component();
        let st = Bytes::from_static(b"<message/>");
        assert_eq!(c.offer(st.clone()), Err(Condition::ServiceUnavailable));
        let (tx, mut rx) = mpsc::channel(1);
        let id = c.attach(tx).expect("first connection attaches");
        let (tx2, _rx2) = mpsc::channel(1);
        assert!(c.attach(tx2).is_none(), "a second connection is refused");
        assert_eq!(c.offer(st.clone()), Ok(()));
        assert_eq!(c.offer(st.clone()), Err(Condition::ResourceConstraint));
        assert_eq!(rx.try_recv().ok(), Some(st.clone()));
        c.detach(id + 1);
        assert_eq!(
            c.offer(st.clone()),
            Ok(()),
            "a stale detach leaves the link"
        );
        c.detach(id);
        assert_eq!(c.offer(st.clone()), Err(Condition::ServiceUnavailable));
        // A connection whose task ended without detaching does not block the next one.
        let (tx3, rx3) = mpsc::channel(1);
        c.attach(tx3).expect("attaches");
        drop(rx3);
        let (tx4, _rx4) = mpsc::channel(1);
        assert!(c.attach(tx4).is_some());
    }
}
