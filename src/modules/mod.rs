//! Handler registry. Each protocol area is a [`Module`] that declares the IQ payload
//! namespaces it serves (per addressing scope) and the disco features it contributes; the
//! core dispatches by namespace and knows no XEP by name (Prosody's `module:hook` shape).

use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::router::SessionHandle;
use crate::server::ServerState;
use crate::stanza::StanzaError;

pub mod disco;
pub mod extdisco;
pub mod last;
pub mod ping;
pub mod private;
pub mod register;
pub mod session;
pub mod time;
pub mod vcard;
pub mod version;

/// Who an IQ is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The server's domain (`to='example.org'`).
    Server,
    /// An account's bare JID (`to='user@example.org'`, or no `to` at all: the sender's own).
    Account,
}

pub type IqFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Element>, StanzaError>> + Send + 'a>>;
pub type ItemsFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Element>, StanzaError>> + Send + 'a>>;

/// One IQ get/set for a handler.
pub struct IqRequest<'a> {
    pub server: &'a Arc<ServerState>,
    /// The authenticated sender; None before authentication (XEP-0077 registration). A
    /// local session's full JID, or any JID of another domain (`federation::inbound`:
    /// remote servers query from their bare domain too).
    pub from: Option<&'a Jid>,
    /// The addressed domain or account.
    pub to: &'a BareJid,
    pub scope: Scope,
    /// type='set' (true) or 'get' (false).
    pub set: bool,
    /// The single child element of the IQ.
    pub payload: &'a Element,
    /// The requesting session, when it has one.
    pub session: Option<&'a SessionHandle>,
    /// The requesting session's output, for stanzas that must reach it before the IQ reply
    /// (XEP-0313 results precede their `<fin/>`); None outside a bound session.
    pub out: Option<&'a mut bytes::BytesMut>,
}

impl IqRequest<'_> {
    /// True when an account addresses itself (its own bare JID or no `to`).
    pub fn is_self(&self) -> bool {
        self.from.map(|f| f.to_bare() == *self.to).unwrap_or(false)
    }

    /// True when the sender is an account of this server (not another domain's user or
    /// server): what account management and credentials are limited to.
    pub fn is_local_sender(&self) -> bool {
        self.from
            .is_some_and(|f| f.node().is_some() && self.server.serves(f.domain().as_str()))
    }
}

pub trait Module: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// (scope, payload namespace) pairs this module answers.
    fn iq_namespaces(&self) -> &'static [(Scope, &'static str)] {
        &[]
    }
    /// Features listed in the server's disco#info.
    fn server_features(&self) -> &'static [&'static str] {
        &[]
    }
    /// Server features that depend on the configuration (e.g. XEP-0215 only when services are
    /// configured), listed next to [`Module::server_features`].
    fn configured_server_features(&self, _server: &ServerState) -> Vec<&'static str> {
        Vec::new()
    }
    /// Features listed in an account's disco#info.
    fn account_features(&self) -> &'static [&'static str] {
        &[]
    }
    /// (category, type) identities an account's disco#info adds (XEP-0163: pubsub/pep).
    fn account_identities(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }
    /// XEP-0030 `<item/>`s an account's disco#items lists for the requester (XEP-0163: the
    /// PEP nodes it may read).
    fn account_items<'a>(&'a self, _req: &'a IqRequest<'a>) -> ItemsFuture<'a> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
    /// XEP-0128 extension forms for the server's disco#info.
    fn server_info_forms(&self, _server: &ServerState) -> Vec<Element> {
        Vec::new()
    }
    /// Stream features this module adds (RFC 6120 §4.3.2), before or after authentication.
    fn stream_features(&self, _server: &ServerState, _authenticated: bool) -> Vec<Element> {
        Vec::new()
    }
    /// XEP-0386 Bind 2 inline features this module can enable at bind time (announced as
    /// `<feature var=…/>` in the SASL2 bind feature); requests in these namespaces inside
    /// `<bind xmlns='urn:xmpp:bind:0'>` go to [`Module::bind2_enable`].
    fn bind2_features(&self) -> &'static [&'static str] {
        &[]
    }
    /// Enable an inline feature for the session being bound (e.g. XEP-0280 carbons: set the
    /// session's flag on `session`). The returned element, if any, goes inside `<bound/>`.
    /// Runs before the session's first stanza, so nothing can slip in between.
    fn bind2_enable(
        &self,
        _server: &ServerState,
        _jid: &FullJid,
        _session: &SessionHandle,
        _request: &Element,
    ) -> Option<Element> {
        None
    }
    /// Answer a get/set: Ok(Some(payload)) or Ok(None) for an empty result. Modules that
    /// only contribute features or forms keep the default, which is never reached because
    /// they register no namespace.
    fn handle_iq<'a>(&'a self, _req: IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(std::future::ready(Err(StanzaError::new(
            crate::stanza::Condition::ServiceUnavailable,
        ))))
    }
}

/// Informational queries (ping, version, time) are get-only: a get is answered with
/// `payload()`, a set with bad-request.
pub fn get_only(set: bool, payload: impl FnOnce() -> Option<Element>) -> IqFuture<'static> {
    Box::pin(std::future::ready(if set {
        Err(StanzaError::new(crate::stanza::Condition::BadRequest))
    } else {
        Ok(payload())
    }))
}

#[derive(Default)]
pub struct Modules {
    list: Vec<Arc<dyn Module>>,
    by_ns: HashMap<(Scope, &'static str), usize>,
}

impl Modules {
    pub fn add(&mut self, m: Arc<dyn Module>) {
        let idx = self.list.len();
        for &(scope, ns) in m.iq_namespaces() {
            if self.by_ns.insert((scope, ns), idx).is_some() {
                tracing::warn!(ns, module = m.name(), "IQ namespace registered twice");
            }
        }
        self.list.push(m);
    }

    pub fn for_iq(&self, scope: Scope, ns: &str) -> Option<&Arc<dyn Module>> {
        self.by_ns.get(&(scope, ns)).and_then(|&i| self.list.get(i))
    }

    pub fn all(&self) -> &[Arc<dyn Module>] {
        &self.list
    }

    /// The standard set of modules every server runs.
    pub fn standard() -> Modules {
        let mut m = Modules::default();
        m.add(Arc::new(disco::Disco));
        m.add(Arc::new(ping::Ping));
        m.add(Arc::new(version::Version));
        m.add(Arc::new(time::EntityTime));
        m.add(Arc::new(last::LastActivity));
        m.add(Arc::new(register::Register));
        m.add(Arc::new(session::LegacySession));
        m.add(Arc::new(crate::roster::RosterModule));
        m.add(Arc::new(crate::offline::OfflineModule));
        m.add(Arc::new(crate::carbons::CarbonsModule));
        m.add(Arc::new(crate::blocking::BlockingModule));
        m.add(Arc::new(crate::mam::Mam));
        m.add(Arc::new(crate::pep::Pep));
        m.add(Arc::new(disco::ContactAddresses));
        m.add(Arc::new(disco::ServerCaps));
        m.add(Arc::new(vcard::VCardModule));
        m.add(Arc::new(crate::avatar::AvatarConversion));
        m.add(Arc::new(private::PrivateStorage));
        m.add(Arc::new(extdisco::ExternalServices));
        m.add(Arc::new(crate::push::PushModule));
        m.add(Arc::new(crate::c2s::sm::StreamFeatures));
        m
    }
}
