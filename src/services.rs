//! Services hosted on their own domain: XEP-0045 group chat at `conference.<domain>`,
//! XEP-0363 upload at `upload.<domain>`, and later XEP-0114 components. Every stanza
//! addressed to a service's domain, or to any JID at it (a room, an occupant), is handed to
//! the service as it arrived; the service answers by routing stanzas itself
//! ([`ServerState::route`]).
//!
//! Why a separate registry and not a [`crate::modules::Module`]: modules answer IQs for the
//! server or an account, whereas a service owns a whole address space (rooms and occupants
//! are JIDs) and receives messages and presence too. The core knows no service by name: it
//! only asks "is this domain a service's?".

use bytes::Bytes;
use jid::{FullJid, Jid};
use minidom::Element;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::router::Deliver;
use crate::server::ServerState;
use crate::stanza::BuilderExt;
use crate::xml::Stanza;

pub type ServiceFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// One stanza for a service.
pub struct Inbound<'a> {
    pub server: &'a Arc<ServerState>,
    /// The sender's full JID, authenticated by the session (or, later, the s2s stream) it
    /// came from. The stanza's own 'from' attribute must not be trusted; use this.
    pub from: &'a FullJid,
    /// The parsed 'to' address (its domain is the service's).
    pub to: &'a Jid,
    pub stanza: &'a Stanza,
}

pub trait Service: Send + Sync {
    /// The domain the service owns, e.g. `conference.example.org`.
    fn domain(&self) -> &str;

    /// A short name for the parent domain's disco#items listing (XEP-0030 §4).
    fn name(&self) -> &str;

    /// Handle one stanza. Called in the sender's session task, in the order the session
    /// received its stanzas, so a join presence is always seen before the message that
    /// follows it. Long work (storage) is awaited here; the service must not block the thread.
    ///
    /// Presence reaches a service through the core's directed-presence tracking (RFC 6121
    /// §4.6), so when a session ends the service gets the unavailable presence a MUC needs.
    fn handle<'a>(&'a self, req: Inbound<'a>) -> ServiceFuture<'a>;

    /// Called once the server state exists, before the listeners accept: start background
    /// tasks (expiry, loading persistent state) here. They should stop when
    /// `server.shutdown` changes.
    fn started(&self, _server: &Arc<ServerState>) {}

    /// Called once when the server begins shutting down, before sessions are closed: queue
    /// what users must be told (a MUC's status 332). Sessions write what is queued before
    /// their closing stream error.
    fn stopping(&self, _server: &Arc<ServerState>) {}

    /// Take a finished stanza for an address at this service (one `jabber:client` element,
    /// 'from' and 'to' set by the server) without a session to attribute it to: answers,
    /// errors and presence the core addresses to the domain, as it would to another
    /// server's. Only a service that relays stanzas elsewhere (an XEP-0114 component)
    /// takes them; the default refuses, and the caller treats the address as unreachable.
    fn relay(&self, _stanza: Bytes) -> Result<(), crate::stanza::Condition> {
        Err(crate::stanza::Condition::ServiceUnavailable)
    }
}

/// The hosted services by domain.
#[derive(Default)]
pub struct Services {
    by_domain: HashMap<String, Arc<dyn Service>>,
}

impl Services {
    /// The services a server runs, from its configuration (each is on by default and off
    /// with an empty domain, as its config section documents).
    pub fn standard(config: &crate::config::Config, domains: &[String]) -> Services {
        let mut services = Services::default();
        services.add_opt(crate::upload::service(config));
        if let Some(muc) = crate::muc::MucService::from_config(config, domains) {
            services.add(Arc::new(muc));
        }
        services
    }

    fn add_opt(&mut self, s: Option<Arc<dyn Service>>) {
        if let Some(s) = s {
            self.add(s);
        }
    }

    pub fn add(&mut self, s: Arc<dyn Service>) {
        self.by_domain.insert(s.domain().to_ascii_lowercase(), s);
    }

    pub fn get(&self, domain: &str) -> Option<&Arc<dyn Service>> {
        self.by_domain.get(domain)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Service>> {
        self.by_domain.values()
    }

    /// disco#items entries for the server's own domain (XEP-0030 §4.1), sorted by JID.
    pub fn disco_items(&self) -> Vec<Element> {
        let mut list: Vec<&Arc<dyn Service>> = self.by_domain.values().collect();
        list.sort_by(|a, b| a.domain().cmp(b.domain()));
        list.into_iter()
            .map(|s| {
                Element::builder("item", crate::modules::disco::NS_ITEMS)
                    .at("jid", s.domain())
                    .at("name", s.name())
                    .build()
            })
            .collect()
    }
}

/// If `to` is at a service's domain, hand the stanza to it and return true.
pub async fn dispatch(
    server: &Arc<ServerState>,
    from: &FullJid,
    to: &Jid,
    stanza: &Stanza,
) -> bool {
    let Some(svc) = server.services.get(to.domain().as_str()).cloned() else {
        return false;
    };
    svc.handle(Inbound {
        server,
        from,
        to,
        stanza,
    })
    .await;
    true
}

impl ServerState {
    /// Deliver bytes to an address this server can reach: a local full JID (that session),
    /// a local bare JID (its available resources, as presence is), another domain's JID
    /// (queued for it, sent from the stanza's own 'from'). Returns false when it reached
    /// nobody.
    pub fn route(&self, to: &Jid, bytes: Bytes) -> bool {
        if let Some(svc) = self.services.get(to.domain().as_str()) {
            return svc.relay(bytes).is_ok();
        }
        if !self.is_local_domain(to.domain().as_str()) {
            return crate::federation::send::route(self, to, bytes);
        }
        if !self.serves(to.domain().as_str()) || to.node().is_none() {
            return false;
        }
        let bare = to.to_bare();
        match to.resource() {
            Some(r) => self
                .router
                .send_full(bare.as_str(), r.as_str(), Deliver::Bytes(bytes)),
            None => {
                self.router
                    .send_available(bare.as_str(), &Deliver::Bytes(bytes))
                    > 0
            }
        }
    }
}
