//! PEP event notifications (XEP-0163 §4.3, XEP-0060 §7.1.2) and the last published item on
//! coming online (XEP-0163 §6.2).
//!
//! Who gets an event: the owner's available resources and the available resources of
//! contacts with a 'from'/'both' subscription (when the access model lets them read), each
//! only if its XEP-0115 caps list `<node>+notify` ("filtered-notifications"). The caps of a
//! resource are read from its stored presence, resolved through the shared cache.

use bytes::Bytes;
use jid::{BareJid, FullJid};
use minidom::Element;
use std::collections::HashSet;
use std::sync::Arc;

use super::NS_EVENT;
use crate::c2s::session::Ctx;
use crate::caps::{self, Features};
use crate::router::Deliver;
use crate::server::ServerState;
use crate::stanza::{random_id, BuilderExt};
use crate::storage::{AccessModel, PepItem, PepNode, SendLast, Subscription};
use crate::xml::{self, Stanza, NS_CLIENT};

/// `<item id='…'>payload</item>` in the event namespace (None if the stored payload no
/// longer parses, which only a corrupted row could cause).
pub fn item_element(item: &PepItem) -> Option<Element> {
    item_element_ns(item, NS_EVENT)
}

pub fn item_element_ns(item: &PepItem, ns: &str) -> Option<Element> {
    let payload: Element = match item.payload.parse() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, id = %item.id, "stored PEP payload does not parse");
            return None;
        }
    };
    Some(
        Element::builder("item", ns)
            .at("id", item.id.as_str())
            .append(payload)
            .build(),
    )
}

/// `<event><child/></event>`, serialized once per notification: every recipient's copy is
/// this payload in its own `<message/>` envelope (only 'to' and 'id' differ), so a publish
/// to N resources costs one serialization and N small envelopes (see [`event_message`]).
fn event_body(child: &Element) -> Bytes {
    xml::to_bytes(
        &Element::builder("event", NS_EVENT)
            .append(child.clone())
            .build(),
    )
}

/// A headline `<message/>` carrying an already serialized `<event/>` (the stream's default
/// namespace is jabber:client, as for every stanza a session writes).
fn event_message(from: &str, to: &str, body: &Bytes) -> Bytes {
    use bytes::BufMut;
    let id = random_id();
    let mut b = bytes::BytesMut::with_capacity(body.len() + from.len() + to.len() + id.len() + 64);
    b.put_slice(b"<message from='");
    b.put_slice(xml::escape(from).as_bytes());
    b.put_slice(b"' to='");
    b.put_slice(xml::escape(to).as_bytes());
    b.put_slice(b"' type='headline' id='");
    b.put_slice(xml::escape(&id).as_bytes());
    b.put_slice(b"'>");
    b.put_slice(body);
    b.put_slice(b"</message>");
    b.freeze()
}

fn event_element(from: &str, to: &str, child: &Element) -> Element {
    Element::builder("message", NS_CLIENT)
        .at("from", from)
        .at("to", to)
        .at("type", "headline")
        .at("id", random_id())
        .append(
            Element::builder("event", NS_EVENT)
                .append(child.clone())
                .build(),
        )
        .build()
}

/// A stored item sent later (last published item): stamped with when it was published
/// (XEP-0203), so clients can tell it from a fresh event.
fn delayed_event_message(from: &str, to: &str, child: &Element, stamp_ms: i64) -> Bytes {
    let mut msg = event_element(from, to, child);
    msg.append_child(
        Element::builder("delay", "urn:xmpp:delay")
            .at("from", from)
            .at("stamp", crate::stanza::xep82_datetime(stamp_ms))
            .build(),
    );
    xml::to_bytes(&msg)
}

/// `notify` is the node's `<node>+notify` feature (built once per notification, not per
/// recipient).
fn interested(f: Option<&Arc<Features>>, notify: &str) -> bool {
    f.is_some_and(|f| f.contains(notify))
}

/// Send `child` (an `<items/>` or `<delete/>` of the event namespace) to every resource
/// entitled to and interested in events of `node`.
pub async fn broadcast(server: &ServerState, owner: &BareJid, node: &PepNode, child: Element) {
    let Some(user) = super::user_of(owner) else {
        return;
    };
    let mut targets: Vec<BareJid> = vec![owner.clone()];
    let mut remote: Vec<BareJid> = Vec::new();
    if node.config.access_model != AccessModel::Whitelist {
        match crate::roster::contacts(server, user).await {
            Ok(list) => {
                for (c, s) in list.iter() {
                    if matches!(s, Subscription::From | Subscription::Both) {
                        match server.serves(c.domain().as_str()) {
                            true => targets.push(c.clone()),
                            false => remote.push(c.clone()),
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "roster load failed for PEP notification"),
        }
    }
    let body = event_body(&child);
    let notify = format!("{}+notify", node.name);
    // Other domains' contacts: their resources as their presence told us (federation).
    for bare in remote {
        for (resource, p) in server.federation.presences.resources(bare.as_str()) {
            let features = caps::features(server, bare.as_str(), &resource, &p);
            if let (true, Ok(to)) = (
                interested(features.as_ref(), &notify),
                bare.with_resource_str(&resource),
            ) {
                let msg = event_message(owner.as_str(), to.as_str(), &body);
                crate::federation::send::notification(server, owner, &to, msg);
            }
        }
    }
    let mut sent: HashSet<String> = HashSet::new();
    for bare in targets {
        for r in server.router.resources(bare.as_str()) {
            let Some(p) = &r.presence else { continue };
            let features = caps::features(server, bare.as_str(), &r.resource, p);
            if !interested(features.as_ref(), &notify) {
                continue;
            }
            let to = format!("{}/{}", bare.as_str(), r.resource);
            r.handle
                .send(Deliver::Bytes(event_message(owner.as_str(), &to, &body)));
            sent.insert(to);
        }
    }
    // Explicit subscribers (XEP-0060 §6.1) of open nodes: those of the other models are
    // exactly the owner and the contacts, notified above.
    if node.config.access_model == AccessModel::Open {
        explicit(server, owner, node, &body, &sent).await;
    }
}

async fn explicit(
    server: &ServerState,
    owner: &BareJid,
    node: &PepNode,
    body: &Bytes,
    sent: &HashSet<String>,
) {
    let subs = match server.storage.pubsub().subscribers(node.id).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "PEP subscribers load failed");
            return;
        }
    };
    for jid in subs.iter().filter_map(|j| jid::Jid::new(j).ok()) {
        if !server.serves(jid.domain().as_str()) {
            continue;
        }
        let bare = jid.to_bare();
        for r in server.router.resources(bare.as_str()) {
            let wanted = match jid.resource() {
                Some(res) => res.as_str() == r.resource,
                None => r.presence.is_some(),
            };
            let to = format!("{}/{}", bare.as_str(), r.resource);
            if wanted && !sent.contains(&to) {
                r.handle
                    .send(Deliver::Bytes(event_message(owner.as_str(), &to, body)));
            }
        }
    }
}

/// XEP-0060 §6.1.7: the last item of a node to a new subscriber (a full JID, or every
/// available resource of a bare one), as its configuration allows.
pub async fn last_to_subscriber(
    server: &ServerState,
    owner: &BareJid,
    node: &PepNode,
    to: &jid::Jid,
) {
    if node.config.send_last == SendLast::Never {
        return;
    }
    let items = match server.storage.pubsub().items(node.id, &[], Some(1)).await {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "PEP last item load failed");
            return;
        }
    };
    let Some(first) = items.first() else {
        return;
    };
    let Some(el) = item_element(first) else {
        return;
    };
    let stamp = first.stamp_ms;
    let child = Element::builder("items", NS_EVENT)
        .at("node", node.name.as_str())
        .append(el)
        .build();
    let bare = to.to_bare();
    for r in server.router.resources(bare.as_str()) {
        let wanted = match to.resource() {
            Some(res) => res.as_str() == r.resource,
            None => r.presence.is_some(),
        };
        if wanted {
            let full = format!("{}/{}", bare.as_str(), r.resource);
            r.handle.send(Deliver::Bytes(delayed_event_message(
                owner.as_str(),
                &full,
                &child,
                stamp,
            )));
        }
    }
}

/// What a session remembers about its caps, to act once per new verification string.
#[derive(Debug, Default)]
pub struct SessionCaps {
    ver: Option<String>,
}

/// Hook for every available presence a session broadcasts: on the first one, or when the
/// caps change, resolve them and send the last items the resource is interested in.
pub fn presence_available(ctx: &Ctx<'_>, sc: &mut SessionCaps, st: &Stanza, initial: bool) {
    let caps = caps::of_stanza(st);
    let ver = caps.as_ref().map(|c| c.ver.clone());
    let changed = ver != sc.ver;
    sc.ver = ver;
    let Some(caps) = caps else { return };
    if !(initial || changed) {
        return;
    }
    let server = ctx.server.clone();
    let jid = ctx.jid.clone();
    super::spawn(async move {
        if let Some(f) = caps::resolve(&server, &jid, &caps).await {
            last_items_for(&server, &jid, &f).await;
        }
    });
}

/// The session became unavailable: the next available presence starts afresh.
pub fn presence_unavailable(sc: &mut SessionCaps) {
    sc.ver = None;
}

fn interests(f: &Features) -> HashSet<&str> {
    f.iter().filter_map(|x| x.strip_suffix("+notify")).collect()
}

/// XEP-0163 §6.2: a newly available resource gets the last item of each node it is
/// interested in: its own account's and those of contacts it receives presence from.
async fn last_items_for(server: &ServerState, jid: &FullJid, f: &Features) {
    let wanted = interests(f);
    tracing::debug!(%jid, ?wanted, "PEP: resource available with interests");
    if wanted.is_empty() {
        return;
    }
    let me = jid.to_bare();
    let Some(user) = super::user_of(&me) else {
        return;
    };
    send_last(server, &me, jid, &wanted, true, true).await;
    let contacts = match crate::roster::contacts(server, user).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "roster load failed for PEP last items");
            return;
        }
    };
    for (c, s) in contacts.iter() {
        tracing::debug!(%jid, contact = %c, ?s, "PEP: last items of contact?");
        if matches!(s, Subscription::To | Subscription::Both) && server.serves(c.domain().as_str())
        {
            send_last(server, c, jid, &wanted, false, true).await;
        }
    }
}

/// Send `owner`'s last items of the `wanted` nodes to one full JID, as its node
/// configurations allow (`send_last_published_item`: on coming online, or on subscription).
async fn send_last(
    server: &ServerState,
    owner: &BareJid,
    to: &FullJid,
    wanted: &HashSet<&str>,
    is_owner: bool,
    on_presence: bool,
) {
    let Some(user) = super::user_of(owner) else {
        return;
    };
    let last = match server.storage.pubsub().last_items(user).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "PEP last items load failed");
            return;
        }
    };
    for (node, item) in last {
        let allowed = match node.config.send_last {
            SendLast::Never => false,
            SendLast::OnSub => !on_presence,
            SendLast::OnSubAndPresence => true,
        };
        if !allowed || !wanted.contains(node.name.as_str()) {
            continue;
        }
        if !is_owner && node.config.access_model == AccessModel::Whitelist {
            continue;
        }
        let Some(el) = item_element(&item) else {
            continue;
        };
        let child = Element::builder("items", NS_EVENT)
            .at("node", node.name.as_str())
            .append(el)
            .build();
        let bytes = delayed_event_message(owner.as_str(), to.as_str(), &child, item.stamp_ms);
        if server.serves(to.domain().as_str()) {
            let bare = to.to_bare();
            let r = to.resource().as_str();
            server
                .router
                .send_full(bare.as_str(), r, Deliver::Bytes(bytes));
        } else {
            crate::federation::send::notification(server, owner, to, bytes);
        }
    }
}

/// XEP-0163 §6.2 for a contact of another domain that became available (its presence came
/// through federation): the last items of `owner`'s nodes its caps ask for.
pub async fn last_items_to_contact(
    server: &ServerState,
    owner: &BareJid,
    to: &FullJid,
    f: &Features,
) {
    let wanted = interests(f);
    if !wanted.is_empty() {
        send_last(server, owner, to, &wanted, false, true).await;
    }
}

/// `owner` approved `contact`'s presence subscription: the contact's available, interested
/// resources get the last items now (XEP-0163 §6.1, "on_sub").
pub fn subscription_approved(server: &Arc<ServerState>, owner: &BareJid, contact: &BareJid) {
    let server = server.clone();
    let (owner, contact) = (owner.clone(), contact.clone());
    super::spawn(async move {
        // A local contact's sessions, or what federation saw of a remote contact's.
        let resources: Vec<(String, Stanza)> = if server.serves(contact.domain().as_str()) {
            let local = server.router.resources(contact.as_str()).into_iter();
            local
                .filter_map(|r| Some((r.resource, r.presence?)))
                .collect()
        } else {
            server.federation.presences.resources(contact.as_str())
        };
        for (resource, p) in resources {
            let Some(f) = caps::features(&server, contact.as_str(), &resource, &p) else {
                continue;
            };
            let wanted = interests(&f);
            if wanted.is_empty() {
                continue;
            }
            if let Ok(full) = contact.with_resource_str(&resource) {
                send_last(&server, &owner, &full, &wanted, false, false).await;
            }
        }
    });
}
