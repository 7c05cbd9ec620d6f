//! Moving stanzas between the `jabber:component:accept` stream namespace (XEP-0114) and
//! the `jabber:client` form the core routes.
//!
//! Both namespaces are stream defaults, so a stanza that declares none is the same bytes in
//! either stream: that common case costs no second validation pass and no tree. Only a stanza
//! that declares its namespace on itself (`<message xmlns='jabber:client'>`, as trees built
//! by handlers serialize) is rebuilt.

use bytes::Bytes;
use minidom::{Element, Node};
use std::sync::{Arc, OnceLock};

use crate::xml::{to_bytes, NsContext, Stanza, NS_CLIENT};

/// XEP-0114's stream namespace for components that connect to the server.
pub const NS_ACCEPT: &str = "jabber:component:accept";

fn context(ns: &'static str) -> Arc<NsContext> {
    Arc::new(NsContext {
        default_ns: Some(ns.to_string()),
        prefixes: Vec::new(),
    })
}

fn client_ctx() -> Arc<NsContext> {
    static CTX: OnceLock<Arc<NsContext>> = OnceLock::new();
    CTX.get_or_init(|| context(NS_CLIENT)).clone()
}

fn accept_ctx() -> Arc<NsContext> {
    static CTX: OnceLock<Arc<NsContext>> = OnceLock::new();
    CTX.get_or_init(|| context(NS_ACCEPT)).clone()
}

/// A stanza the component sent, as the `jabber:client` stanza the core takes, with its
/// 'from'/'to' replaced by the normalized addresses. None if it cannot be re-read (it was
/// validated once already, so only a namespace the core cannot take would do that).
pub fn to_client(st: &Stanza, from: &str, to: &str) -> Option<Stanza> {
    let same_addresses = st.from.as_deref() == Some(from) && st.to.as_deref() == Some(to);
    if same_addresses && memchr::memmem::find(st.raw(), NS_ACCEPT.as_bytes()).is_none() {
        // The usual case: validated once by the stream's parser, addresses already normal;
        // only the default namespace changes.
        let s = st.with_default_ns(NS_CLIENT);
        return (s.ns == NS_CLIENT).then_some(s);
    }
    let s = Stanza::parse(st.rewrite(Some(from), Some(to)), client_ctx()).ok()?;
    if s.ns == NS_CLIENT {
        return Some(s);
    }
    // The stanza declared xmlns='jabber:component:accept' itself: that namespace means
    // nothing outside the component's stream, so every element in it becomes jabber:client.
    let el = swap(s.element().ok()?, NS_ACCEPT, NS_CLIENT, true);
    let s = Stanza::parse(to_bytes(&el), client_ctx()).ok()?;
    (s.ns == NS_CLIENT).then_some(s)
}

/// Bytes of a `jabber:client` stanza (one this module queued) parsed back.
pub fn parse_client(bytes: Bytes) -> Option<Stanza> {
    Stanza::parse(bytes, client_ctx()).ok()
}

/// Bytes of a `jabber:client` stanza (no namespace declared, or jabber:client declared on
/// it) as a stanza of the component's stream. Elements that are jabber:client only because
/// they are embedded (a forwarded message) keep their namespace.
pub fn to_accept(bytes: Bytes) -> Bytes {
    if memchr::memmem::find(&bytes, NS_CLIENT.as_bytes()).is_none() {
        return bytes; // declares no jabber:client: the same bytes mean the same there
    }
    match Stanza::parse(bytes.clone(), accept_ctx()) {
        Ok(s) if s.ns == NS_CLIENT => match s.element() {
            Ok(el) => to_bytes(&swap(el, NS_CLIENT, NS_ACCEPT, false)),
            Err(_) => bytes,
        },
        _ => bytes,
    }
}

/// `el` with elements in namespace `from` moved to `to`: all of them (`all`), or only the
/// top-level element and the descendants that inherit its namespace.
fn swap(mut el: Element, from: &str, to: &str, all: bool) -> Element {
    let convert = el.ns() == from;
    let ns = if convert { to.to_string() } else { el.ns() };
    let mut out = Element::builder(el.name(), ns).build();
    *out.attrs_mut() = el.attrs().clone();
    for node in el.take_nodes() {
        match node {
            Node::Element(child) if convert || all => {
                out.append_child(swap(child, from, to, all));
            }
            other => out.append_node(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{Event, Limits, StreamParser};

    fn component_stanza(xml: &str) -> Stanza {
        let mut p = StreamParser::new(Limits::default());
        p.feed(b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='gw.example.org'>");
        p.feed(xml.as_bytes());
        assert!(matches!(p.next_event(), Ok(Some(Event::Open(_)))));
        match p.next_event() {
            Ok(Some(Event::Stanza(s))) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn undeclared_stanza_keeps_its_bytes_apart_from_addresses() {
        let st =
            component_stanza("<message from='GW.example.org' to='a@b'><body>hi</body></message>");
        assert_eq!(st.ns, NS_ACCEPT);
        let c = to_client(&st, "gw.example.org", "a@b").unwrap();
        assert_eq!(c.ns, NS_CLIENT);
        assert_eq!(c.from.as_deref(), Some("gw.example.org"));
        let el = c.element().unwrap();
        assert!(el.has_child("body", NS_CLIENT));
    }

    #[test]
    fn declared_accept_namespace_becomes_client() {
        let st = component_stanza(
            "<message xmlns='jabber:component:accept' from='gw.example.org' to='a@b'><body>x</body><x xmlns='urn:x'><y xmlns='jabber:component:accept'/></x></message>",
        );
        let c = to_client(&st, "gw.example.org", "a@b").unwrap();
        assert_eq!(c.ns, NS_CLIENT);
        let el = c.element().unwrap();
        assert!(el.has_child("body", NS_CLIENT));
        let x = el.get_child("x", "urn:x").unwrap();
        assert!(x.has_child("y", NS_CLIENT));
    }

    #[test]
    fn client_trees_become_accept_but_embedded_messages_stay_client() {
        let el: Element = "<message xmlns='jabber:client' to='gw.example.org' from='a@b/c'><body>x</body><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'><body>y</body></message></forwarded></message>".parse().unwrap();
        let out = to_accept(to_bytes(&el));
        let back = Stanza::parse(out, accept_ctx()).unwrap();
        assert_eq!(back.ns, NS_ACCEPT);
        let el = back.element().unwrap();
        assert!(el.has_child("body", NS_ACCEPT));
        let fwd = el.get_child("forwarded", "urn:xmpp:forward:0").unwrap();
        assert!(fwd.has_child("message", NS_CLIENT));
        // Undeclared bytes pass through untouched.
        let raw = Bytes::from_static(b"<message to='gw.example.org'><body>z</body></message>");
        assert_eq!(to_accept(raw.clone()), raw);
    }
}
