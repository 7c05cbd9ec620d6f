//! XEP-0280 Message Carbons (with the XEP-0334 `<no-copy/>` hint): sessions opt in with an
//! enable/disable IQ (a bit on their mailbox, so the hot path costs one atomic load per
//! resource), and eligible one-to-one messages are copied, wrapped in XEP-0297
//! `<forwarded/>`, to the sender's other opted-in resources (`<sent/>`, §8) and to the
//! recipient's opted-in resources that did not get the original (`<received/>`, §7).
//!
//! Both ends are local (no server-to-server yet), so one hook after routing does both sides.
//! The forwarded original is serialized once per message; each copy only adds its own
//! `<message from='bare' to='full'>` envelope, because §7 requires the copy's 'to' to be the
//! receiving resource.
//!
//! `<private/>` is left in the delivered message: version 1.0.1 (§9) lifted the old requirement
//! to strip it, since stripping let a sender silently change how a message was delivered.
//!
//! Forgery (§11): the server stamps every client stanza with the sender's full JID, so a
//! `<sent/>`/`<received/>` injected by a client never arrives from a bare JID, which is what
//! clients check; messages already carrying a carbon are never copied again.

use crate::stanza::ElementExt;
use bytes::{BufMut, Bytes, BytesMut};
use jid::{BareJid, Jid};
use minidom::Element;

use crate::c2s::session::Ctx;
use crate::modules::{IqFuture, IqRequest, Module, Scope};
use crate::router::{opt_in, Deliver, OptedIn};
use crate::server::ServerState;
use crate::stanza::{Condition, StanzaError};
use crate::xml::{self, Stanza, NS_CLIENT};

pub const NS: &str = "urn:xmpp:carbons:2";
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
pub const NS_HINTS: &str = "urn:xmpp:hints";
const NS_RECEIPTS: &str = "urn:xmpp:receipts";
const NS_CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
const NS_MARKERS: &str = "urn:xmpp:chat-markers:0";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// XEP-0249 direct MUC invitations.
const NS_CONFERENCE: &str = "jabber:x:conference";

pub struct CarbonsModule;

impl Module for CarbonsModule {
    fn name(&self) -> &'static str {
        "carbons"
    }
    fn iq_namespaces(&self) -> &'static [(Scope, &'static str)] {
        &[(Scope::Account, NS)]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn handle_iq<'a>(&'a self, req: IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(std::future::ready(toggle(&req)))
    }
    fn bind2_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    /// XEP-0280 §4 inside XEP-0386 Bind 2: `<enable/>` in `<bind/>` turns carbons on before
    /// the resource can receive anything, so no message slips by uncopied.
    fn bind2_enable(
        &self,
        _server: &crate::server::ServerState,
        _jid: &jid::FullJid,
        session: &crate::router::SessionHandle,
        request: &Element,
    ) -> Option<Element> {
        if request.is("enable", NS) {
            session.set_opt_in(opt_in::CARBONS, true);
        }
        None
    }
}

/// §4/§5: enable or disable for the requesting session; repeats just succeed (§10.1).
fn toggle(req: &IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
    if !req.is_self() {
        return Err(StanzaError::new(Condition::NotAllowed));
    }
    if !req.set {
        return Err(StanzaError::new(Condition::BadRequest));
    }
    let on = match req.payload.name() {
        "enable" => true,
        "disable" => false,
        _ => return Err(StanzaError::new(Condition::BadRequest)),
    };
    let session = req
        .session
        .ok_or_else(|| StanzaError::new(Condition::NotAllowed))?;
    session.set_opt_in(opt_in::CARBONS, on);
    Ok(None)
}

/// Where the original of a message went on the recipient's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered<'a> {
    /// To this one full JID's resource.
    Full(&'a str),
    /// To the bare JID: the highest-priority available resources got it (or it was stored).
    Bare,
}

/// Send the carbon copies of a message a local session just routed to a local account
/// (`to`, delivered as `how`). `kind` is the RFC 6121 message type after defaulting.
pub fn copy(ctx: &Ctx<'_>, st: &Stanza, kind: &str, to: &BareJid, how: Delivered<'_>) {
    let from = Sender {
        jid: ctx.jid,
        bare: ctx.bare,
        session: ctx.handle.id,
    };
    copy_from(ctx.server, &from, st, kind, to, how)
}

/// Who sent a message being copied: a local session, or another domain's JID (then
/// `session` is 0, which no session has, and only 'received' copies can result).
pub struct Sender<'a> {
    pub jid: &'a Jid,
    pub bare: &'a BareJid,
    pub session: u64,
}

/// [`copy`] for any sender (`federation::inbound` delivers remote messages with it).
pub fn copy_from(
    server: &ServerState,
    ctx: &Sender<'_>,
    st: &Stanza,
    kind: &str,
    to: &BareJid,
    how: Delivered<'_>,
) {
    if !matches!(kind, "chat" | "normal") {
        return; // errors, groupchat and headlines are never copied (§6.1)
    }
    let router = &server.router;
    let own_id = ctx.session;
    let mut sent: Vec<OptedIn> = Vec::new();
    if to != ctx.bare {
        sent = router.opted_in(ctx.bare.as_str(), opt_in::CARBONS);
        sent.retain(|r| r.handle.id != own_id);
    }
    let mut received = router.opted_in(to.as_str(), opt_in::CARBONS);
    received.retain(|r| {
        r.handle.id != own_id
            && match how {
                Delivered::Full(res) => r.resource != res,
                Delivered::Bare => !r.gets_bare_messages,
            }
    });
    if sent.is_empty() && received.is_empty() {
        return;
    }
    // Only now is the stanza parsed: most messages have nobody to copy to.
    let Ok(mut el) = st.element() else { return };
    match eligible(&el, kind) {
        Copies::None => return,
        Copies::SentOnly if sent.is_empty() => return,
        Copies::SentOnly => received.clear(),
        Copies::Both => {}
    }
    el.put_attr("from", ctx.jid.as_str());
    let forwarded = xml::to_bytes(&Element::builder("forwarded", NS_FORWARD).append(el).build());
    let type_attr = st.type_.as_deref();
    for (owner, list, wrapper) in [(ctx.bare, &sent, "sent"), (to, &received, "received")] {
        for r in list {
            let full = format!("{}/{}", owner.as_str(), r.resource);
            let bytes = envelope(owner.as_str(), &full, type_attr, wrapper, &forwarded);
            r.handle.send(Deliver::Bytes(bytes));
        }
    }
}

/// Which copies a message gets under §6.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copies {
    None,
    /// A private message to a MUC occupant: the sender's resources get `<sent/>` copies,
    /// but the room already replicates what its occupants receive.
    SentOnly,
    Both,
}

/// §6.1 eligibility (the part that depends on content): IM payloads, no opt-out, and not
/// already a carbon.
fn eligible(el: &Element, kind: &str) -> Copies {
    let (mut im, mut muc) = (kind == "chat", false);
    for c in el.children() {
        let ns = c.ns();
        match (ns.as_str(), c.name()) {
            (NS, "private" | "sent" | "received") | (NS_HINTS, "no-copy") => return Copies::None,
            // A mediated MUC invitation is IM traffic; other MUC payloads mark a MUC PM.
            (NS_MUC_USER, _) if c.get_child("invite", NS_MUC_USER).is_none() => muc = true,
            (NS_CLIENT, "body")
            | (NS_RECEIPTS, _)
            | (NS_CHATSTATES, _)
            | (NS_MARKERS, _)
            | (NS_CONFERENCE, _)
            | (NS_MUC_USER, _) => im = true,
            _ => {}
        }
    }
    match (im, muc) {
        (false, _) => Copies::None,
        (true, true) => Copies::SentOnly,
        (true, false) => Copies::Both,
    }
}

/// `<message from='bare' to='full' [type]><sent|received xmlns=carbons>FORWARDED</…></message>`.
fn envelope(bare: &str, full: &str, kind: Option<&str>, wrapper: &str, fwd: &Bytes) -> Bytes {
    let mut b = BytesMut::with_capacity(fwd.len() + bare.len() + full.len() + 96);
    b.put_slice(b"<message from='");
    b.put_slice(xml::escape(bare).as_bytes());
    b.put_slice(b"' to='");
    b.put_slice(xml::escape(full).as_bytes());
    b.put_slice(b"'");
    if let Some(t) = kind {
        b.put_slice(b" type='");
        b.put_slice(xml::escape(t).as_bytes());
        b.put_slice(b"'");
    }
    b.put_slice(b"><");
    b.put_slice(wrapper.as_bytes());
    b.put_slice(b" xmlns='");
    b.put_slice(NS.as_bytes());
    b.put_slice(b"'>");
    b.put_slice(fwd);
    b.put_slice(b"</");
    b.put_slice(wrapper.as_bytes());
    b.put_slice(b"></message>");
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn eligibility_follows_section_6_1() {
        let chat = "<message xmlns='jabber:client' type='chat'><body>x</body></message>";
        assert_eq!(eligible(&el(chat), "chat"), Copies::Both);
        let state = "<message xmlns='jabber:client'><active xmlns='http://jabber.org/protocol/chatstates'/></message>";
        assert_eq!(eligible(&el(state), "normal"), Copies::Both);
        let empty = "<message xmlns='jabber:client'><x xmlns='jabber:x:oob'/></message>";
        assert_eq!(eligible(&el(empty), "normal"), Copies::None);
        let private = "<message xmlns='jabber:client' type='chat'><body>x</body><private xmlns='urn:xmpp:carbons:2'/></message>";
        assert_eq!(eligible(&el(private), "chat"), Copies::None);
        let nocopy = "<message xmlns='jabber:client' type='chat'><body>x</body><no-copy xmlns='urn:xmpp:hints'/></message>";
        assert_eq!(eligible(&el(nocopy), "chat"), Copies::None);
        let carbon = "<message xmlns='jabber:client' type='chat'><received xmlns='urn:xmpp:carbons:2'/></message>";
        assert_eq!(eligible(&el(carbon), "chat"), Copies::None);
        let invite =
            "<message xmlns='jabber:client'><x xmlns='jabber:x:conference' jid='r@muc'/></message>";
        assert_eq!(eligible(&el(invite), "normal"), Copies::Both);
        let mediated = "<message xmlns='jabber:client'><x xmlns='http://jabber.org/protocol/muc#user'><invite to='a@b'/></x></message>";
        assert_eq!(eligible(&el(mediated), "normal"), Copies::Both);
        let muc = "<message xmlns='jabber:client' type='chat'><body>x</body><x xmlns='http://jabber.org/protocol/muc#user'/></message>";
        assert_eq!(eligible(&el(muc), "chat"), Copies::SentOnly);
    }

    #[test]
    fn envelope_is_well_formed_and_addressed() {
        let fwd = xml::to_bytes(
            &Element::builder("forwarded", NS_FORWARD)
                .append(el(
                    "<message xmlns='jabber:client' from='a@x/r' to='b@x'><body>&lt;hi</body></message>",
                ))
                .build(),
        );
        let out = envelope("a@x", "a@x/o", Some("chat"), "sent", &fwd);
        let parsed: Element = std::str::from_utf8(&out)
            .unwrap()
            .replacen("<message ", "<message xmlns='jabber:client' ", 1)
            .parse()
            .unwrap();
        assert_eq!(parsed.attr("to"), Some("a@x/o"));
        let inner = parsed
            .get_child("sent", NS)
            .and_then(|s| s.get_child("forwarded", NS_FORWARD))
            .and_then(|f| f.get_child("message", NS_CLIENT))
            .unwrap();
        assert_eq!(inner.get_child("body", NS_CLIENT).unwrap().text(), "<hi");
    }

    /// Who counts as having received a bare-JID message (and so gets no `<received/>` copy):
    /// exactly the resources RFC 6121 delivery picks.
    #[test]
    fn opted_in_marks_the_bare_jid_recipients() {
        use crate::router::{Router, SessionHandle};
        let ctx = std::sync::Arc::new(crate::xml::NsContext {
            default_ns: Some(NS_CLIENT.into()),
            prefixes: Vec::new(),
        });
        let pres = || Stanza::parse(Bytes::from_static(b"<presence/>"), ctx.clone()).unwrap();
        let r = Router::new();
        assert!(r.opted_in("u@x", opt_in::CARBONS).is_empty());
        for (name, prio, carbons) in [
            ("top", Some(5), true),
            ("low", Some(1), true),
            ("off", Some(5), false),
            ("silent", None, true),
        ] {
            let h = SessionHandle::new(r.next_session_id(), 8);
            h.set_opt_in(opt_in::CARBONS, carbons);
            r.bind("u@x", name, h.clone(), 8).unwrap();
            r.set_presence("u@x", name, h.id, prio.map(|p| (p, pres())));
        }
        let mut got: Vec<(String, bool)> = r
            .opted_in("u@x", opt_in::CARBONS)
            .into_iter()
            .map(|o| (o.resource, o.gets_bare_messages))
            .collect();
        got.sort();
        let want = [("low", false), ("silent", false), ("top", true)];
        assert_eq!(
            got,
            want.map(|(n, b)| (n.to_string(), b)).to_vec(),
            "only opted-in resources, flagged when they get bare-JID messages"
        );
        assert!(r.opted_in("u@x", opt_in::BLOCKLIST).is_empty());
    }
}
