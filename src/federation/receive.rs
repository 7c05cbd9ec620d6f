//! The receiving half: a stanza from another domain to a local address gets the rules a
//! local sender's stanza gets on the recipient's side (RFC 6121 §8.5 for a local user:
//! full or bare JID, XEP-0280 carbons, XEP-0313 archive, offline storage, XEP-0357 push,
//! XEP-0191 blocking; §3 and §4 for presence and subscriptions; §8.5.1 for the server's own
//! address). Answers and errors to the remote sender go back through
//! [`ServerState::send_remote`]. Nothing here trusts the input: a malformed payload is
//! answered or dropped, never unwrapped.

use jid::{BareJid, Jid};
use std::collections::VecDeque;
use std::sync::Arc;

use crate::carbons::{Delivered, Sender};
use crate::modules::{IqRequest, Scope};
use crate::roster::state::SubType;
use crate::roster::SubStanza;
use crate::router::Deliver;
use crate::server::ServerState;
use crate::stanza::{error_reply, iq_result, Condition, ElementExt, StanzaError};
use crate::storage::Subscription;
use crate::xml::{self, Stanza};

/// See [`crate::federation::inbound`].
pub async fn inbound(server: &Arc<ServerState>, from: &Jid, to: &Jid, st: &Stanza) {
    if let Some(svc) = server.services.get(to.domain().as_str()) {
        // A service that relays (an XEP-0114 component) takes any sender, bare JIDs and
        // domains included, as another server would; while it cannot, the rules below.
        if svc.relay(st.rewrite(None, None)).is_ok() {
            return;
        }
        // A service's occupants and users are full JIDs; a remote domain or bare JID
        // has no session for it to answer.
        match from.try_as_full() {
            Ok(full) => {
                crate::services::dispatch(server, full, to, st).await;
            }
            Err(_) => reply_error(server, from, to, st, Condition::ServiceUnavailable),
        }
        return;
    }
    if !server.serves(to.domain().as_str()) {
        return; // the caller checked; nothing else is ours
    }
    match st.name.as_str() {
        "message" => Box::pin(message(server, from, to, st)).await,
        "presence" => Box::pin(presence(server, from, to, st)).await,
        "iq" => Box::pin(iq(server, from, to, st)).await,
        _ => {}
    }
}

/// An error reply to a stanza from `from` (remote) to `to` (local), unless the stanza is
/// itself an error or presence (RFC 6120 §8.3.1; presence errors would only echo).
fn reply_error(server: &ServerState, from: &Jid, to: &Jid, st: &Stanza, c: Condition) {
    if st.type_.as_deref() == Some("error") || st.name == "presence" {
        return;
    }
    let Ok(mut el) = st.element() else { return };
    el.put_attr("from", from.as_str());
    el.put_attr("to", to.as_str());
    let reply = xml::to_bytes(&error_reply(&el, &StanzaError::new(c)));
    if let Err(e) = server.send_remote(to, from, reply) {
        tracing::debug!(%from, error = %e, "error reply to a remote sender not sent");
    }
}

/// XEP-0191 §3.3: whether the local user blocks the remote sender.
async fn blocked(server: &ServerState, user: &BareJid, from: &Jid) -> bool {
    match crate::blocking::filter::list_of(server, user).await {
        Ok(l) => crate::blocking::filter::matches(&l, from.as_str()),
        Err(e) => {
            tracing::error!(error = %e, "blocklist load failed; not blocking");
            false
        }
    }
}

async fn message(server: &Arc<ServerState>, from: &Jid, to: &Jid, st: &Stanza) {
    // §5.2.2: an absent or unknown type is 'normal'.
    let kind = st
        .type_
        .as_deref()
        .filter(|t| matches!(*t, "chat" | "groupchat" | "headline" | "error"))
        .unwrap_or("normal");
    if to.node().is_none() {
        return; // to the server itself: nothing here consumes messages (as for local ones)
    }
    let bare = to.to_bare();
    if blocked(server, &bare, from).await {
        if matches!(kind, "chat" | "normal") {
            reply_error(server, from, to, st, Condition::ServiceUnavailable);
        }
        return;
    }
    let stamped = crate::mam::on_remote_message(server, from, st, kind, to).await;
    let st = stamped.as_ref().unwrap_or(st);
    let router = &server.router;
    let bytes = st.rewrite(Some(from.as_str()), Some(to.as_str()));
    let from_bare = from.to_bare();
    let sender = Sender {
        jid: from,
        bare: &from_bare,
        session: 0,
    };
    if let Some(r) = to.resource() {
        if router.send_full(bare.as_str(), r.as_str(), Deliver::Bytes(bytes.clone())) {
            if !matches!(kind, "error" | "headline") {
                crate::push::on_live_message(server, from, &bare, st);
            }
            let how = Delivered::Full(r.as_str());
            return crate::carbons::copy_from(server, &sender, st, kind, &bare, how);
        }
        // §8.5.3.2.1: no such resource.
        match kind {
            "groupchat" => return reply_error(server, from, to, st, Condition::ServiceUnavailable),
            "headline" | "error" => return,
            _ => {} // chat/normal: treated as addressed to the bare JID
        }
    }
    match kind {
        "groupchat" => reply_error(server, from, to, st, Condition::ServiceUnavailable),
        "headline" | "error" => {
            router.send_message_bare(bare.as_str(), &bytes);
        }
        _ => {
            if router.send_message_bare(bare.as_str(), &bytes) > 0 {
                crate::push::on_live_message(server, from, &bare, st);
            } else {
                offline(server, from, to, &bare, st).await;
            }
            crate::carbons::copy_from(server, &sender, st, kind, &bare, Delivered::Bare);
        }
    }
}

/// §8.5.2.2: no resource took a chat/normal message: store it, or tell the sender why not.
async fn offline(server: &Arc<ServerState>, from: &Jid, to: &Jid, bare: &BareJid, st: &Stanza) {
    let Some(node) = bare.node() else { return };
    let condition = match server
        .storage
        .accounts()
        .exists((bare.domain().as_str(), node.as_str()))
        .await
    {
        Ok(true) => {
            let Ok(mut el) = st.element() else { return };
            el.put_attr("from", from.as_str());
            match crate::offline::store(server, bare, &mut el).await {
                Ok(true) => return,
                Ok(false) => Condition::ServiceUnavailable, // the offline store is full
                Err(e) => StanzaError::from(e).condition,
            }
        }
        Ok(false) => Condition::ServiceUnavailable,
        Err(e) => StanzaError::from(e).condition,
    };
    reply_error(server, from, to, st, condition);
}

async fn presence(server: &Arc<ServerState>, from: &Jid, to: &Jid, st: &Stanza) {
    if to.node().is_none() {
        return; // to the server's domain: nothing to do
    }
    let bare = to.to_bare();
    let t = st.type_.as_deref();
    let broadcast = matches!(t, None | Some("unavailable") | Some("error"));
    // Presence for a user with no session goes nowhere: no blocklist (database) read for
    // it, only the contact's departure is noted.
    if broadcast && !server.router.is_online(bare.as_str()) {
        if t == Some("unavailable") && to.resource().is_none() {
            remember(server, from, &bare, st).await;
        }
        return;
    }
    if blocked(server, &bare, from).await {
        return; // XEP-0191 §3.3: presence from a blocked JID is dropped silently
    }
    match t {
        None | Some("unavailable") | Some("error") => {
            if to.resource().is_none() && t != Some("error") {
                remember(server, from, &bare, st).await;
            }
            let bytes = st.rewrite(Some(from.as_str()), Some(to.as_str()));
            match to.resource() {
                Some(r) => {
                    server
                        .router
                        .send_full(bare.as_str(), r.as_str(), Deliver::Bytes(bytes));
                }
                None => {
                    server
                        .router
                        .send_available(bare.as_str(), &Deliver::Bytes(bytes));
                }
            }
        }
        Some("probe") => probe(server, from, &bare).await,
        Some(t) => {
            let Some(kind) = SubType::parse(t) else {
                return;
            };
            // §3: subscription state is between bare JIDs, and so are the stanzas.
            let from = from.to_bare();
            let bytes = st.rewrite(Some(from.as_str()), Some(bare.as_str()));
            let q = VecDeque::from([SubStanza {
                from,
                to: bare,
                kind,
                bytes,
            }]);
            crate::roster::deliver_inbound(server, q).await;
        }
    }
}

/// Keep (or drop) a contact's broadcast presence for PEP, and on its first available
/// presence with new caps send it the user's last items it is interested in (XEP-0163
/// §6.2), as a local contact's session gets them.
async fn remember(server: &Arc<ServerState>, from: &Jid, user: &BareJid, st: &Stanza) {
    let Ok(full) = from.try_as_full() else { return };
    let contact = full.to_bare();
    let resource = full.resource().as_str();
    let max = server.config.limits.max_resources;
    let presences = &server.federation.presences;
    if st.type_.is_some() {
        return presences.set(contact.as_str(), resource, None, max);
    }
    let Some(node) = user.node() else { return };
    let owner = (user.domain().as_str(), node.as_str());
    let sub = match crate::roster::contacts(server, owner).await {
        Ok(list) => list.iter().find(|(c, _)| *c == contact).map(|(_, s)| *s),
        Err(e) => return tracing::error!(error = %e, "roster load failed for remote presence"),
    };
    let Some(sub) = sub.filter(|s| matches!(s, Subscription::To | Subscription::Both)) else {
        return; // not a contact whose presence the user asked for
    };
    let known = presences.resources(contact.as_str());
    let same_caps = known.iter().any(|(r, p)| {
        r == resource
            && crate::caps::of_stanza(p).map(|c| c.ver) == crate::caps::of_stanza(st).map(|c| c.ver)
    });
    presences.set(contact.as_str(), resource, Some(st.clone()), max);
    if same_caps || sub != Subscription::Both {
        return; // nothing new to learn, or the contact may not see the user's items
    }
    if let Some(caps) = crate::caps::of_stanza(st) {
        let (server, full, user) = (server.clone(), full.clone(), user.clone());
        tokio::spawn(async move {
            if let Some(f) = crate::caps::resolve(&server, &full, &caps).await {
                crate::pep::notify::last_items_to_contact(&server, &user, &full, &f).await;
            }
        });
    }
}

/// RFC 6121 §4.3.2: a probe from a contact is answered with the user's current presence
/// when the contact is subscribed to it ('from'/'both'): each available resource's last
/// presence, or unavailable from the bare JID when there is none; otherwise 'unsubscribed'
/// tells the contact's server its subscription is gone (Prosody answers the same way).
async fn probe(server: &ServerState, from: &Jid, user: &BareJid) {
    let Some(node) = user.node() else { return };
    let contact = from.to_bare();
    let sub = match server
        .storage
        .roster()
        .get((user.domain().as_str(), node.as_str()), contact.as_str())
        .await
    {
        Ok(item) => item.map(|i| i.subscription),
        Err(e) => return tracing::error!(error = %e, "roster load failed answering a probe"),
    };
    let send = |from: &Jid, body: String| {
        super::send::presence(server, from, &contact, bytes::Bytes::from(body));
    };
    if !matches!(sub, Some(Subscription::From | Subscription::Both)) {
        let body = format!(
            "<presence type='unsubscribed' from='{}' to='{}'/>",
            xml::escape(user.as_str()),
            xml::escape(contact.as_str())
        );
        return send(user, body);
    }
    let mut answered = false;
    for r in server.router.resources(user.as_str()) {
        let (Some(p), Ok(full)) = (&r.presence, user.with_resource_str(&r.resource)) else {
            continue;
        };
        let bytes = p.rewrite(Some(full.as_str()), Some(from.as_str()));
        super::send::presence(server, &full, from, bytes);
        answered = true;
    }
    if !answered {
        let body = format!(
            "<presence type='unavailable' from='{}' to='{}'/>",
            xml::escape(user.as_str()),
            xml::escape(from.as_str())
        );
        send(user, body);
    }
}

async fn iq(server: &Arc<ServerState>, from: &Jid, to: &Jid, st: &Stanza) {
    let kind = st.type_.as_deref();
    let is_request = matches!(kind, Some("get" | "set"));
    if !is_request && !matches!(kind, Some("result" | "error")) || st.id.is_none() {
        return reply_error(server, from, to, st, Condition::BadRequest);
    }
    let bare = to.to_bare();
    if to.node().is_some() && blocked(server, &bare, from).await {
        if is_request {
            reply_error(server, from, to, st, Condition::ServiceUnavailable);
        }
        return;
    }
    if let Some(resource) = to.resource() {
        // To a full JID: that session, or an answer for it (§8.5.3.2.1).
        let bytes = st.rewrite(Some(from.as_str()), Some(to.as_str()));
        let delivered = to.node().is_some()
            && server
                .router
                .send_full(bare.as_str(), resource.as_str(), Deliver::Bytes(bytes));
        if !delivered && is_request {
            reply_error(server, from, to, st, Condition::ServiceUnavailable);
        }
        return;
    }
    if !is_request {
        // Answers to the server's own queries (XEP-0115 caps of remote contacts), and
        // XEP-0357 push services answering a publish sent on a user's behalf.
        let answered = match from.try_as_full() {
            Ok(full) => server.iq_out.answer(st, full),
            Err(_) => false,
        };
        if !answered {
            crate::push::on_iq_response(server, from, to, st).await;
        }
        return;
    }
    let Ok(el) = st.element() else {
        return reply_error(server, from, to, st, Condition::BadRequest);
    };
    let mut children = el.children();
    let (Some(payload), None) = (children.next(), children.next()) else {
        return reply_error(server, from, to, st, Condition::BadRequest);
    };
    let scope = if to.node().is_some() {
        Scope::Account
    } else {
        Scope::Server
    };
    let result = match server.modules.for_iq(scope, payload.ns().as_str()) {
        Some(m) => {
            m.handle_iq(IqRequest {
                server,
                from: Some(from),
                to: &bare,
                scope,
                set: kind == Some("set"),
                payload,
                session: None,
                out: None,
            })
            .await
        }
        None => Err(StanzaError::new(Condition::ServiceUnavailable)),
    };
    let reply = match result {
        Ok(p) => iq_result(
            st.id.as_deref().unwrap_or(""),
            Some(to.as_str()),
            Some(from.as_str()),
            p,
        ),
        Err(e) => {
            let mut orig = el.clone();
            orig.put_attr("from", from.as_str());
            orig.put_attr("to", to.as_str());
            error_reply(&orig, &e)
        }
    };
    if let Err(e) = server.send_remote(to, from, xml::to_bytes(&reply)) {
        tracing::debug!(%from, error = %e, "IQ answer to a remote sender not sent");
    }
}
