//! IQs to the service, to a room and to an occupant (XEP-0045 §6 discovery, §10 owner, §9
//! admin via [`super::admin`]; XEP-0410 self-ping answered by the service; other IQs to an
//! occupant forwarded to one of its sessions, with the reply routed back).

use jid::FullJid;
use minidom::Element;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::room::lock;
use super::{bounce, reply, Ctx, NS_OWNER};
use crate::modules::disco::{NS_INFO, NS_ITEMS};
use crate::router::Deliver;
use crate::stanza::{iq_result, Condition, ElementExt, StanzaError};

const NS_PING: &str = "urn:xmpp:ping";
const NS_VCARD: &str = "vcard-temp";

/// The request's first child, or None for a result/error or an unparsable IQ.
fn request(ctx: &Ctx<'_>) -> Option<(String, Element)> {
    let t = ctx.stanza.type_.as_deref()?;
    if t != "get" && t != "set" {
        return None;
    }
    let el = ctx.stanza.element().ok()?;
    let payload = el.children().next()?.clone();
    Some((t.to_string(), payload))
}

fn answer(ctx: &Ctx<'_>, payload: Option<Element>) {
    let id = ctx.stanza.id.as_deref().unwrap_or("");
    let r = iq_result(id, Some(ctx.to.as_str()), Some(ctx.from.as_str()), payload);
    reply(ctx, crate::xml::to_bytes(&r));
}

fn respond(ctx: &Ctx<'_>, r: Result<Option<Element>, StanzaError>) {
    match r {
        Ok(p) => answer(ctx, p),
        Err(e) => bounce(ctx, e),
    }
}

/// An IQ to the service's own domain.
pub async fn to_service(ctx: &Ctx<'_>) {
    let Some((t, p)) = request(ctx) else {
        return;
    };
    let r = match (t.as_str(), p.ns().as_str()) {
        ("get", NS_INFO) if p.attr("node").is_none() => {
            Ok(Some(super::disco::service_info(ctx.svc)))
        }
        ("get", NS_ITEMS) if p.attr("node").is_none() => {
            Ok(Some(super::disco::service_items(ctx.svc)))
        }
        ("get", NS_PING) => Ok(None),
        _ => Err(StanzaError::new(Condition::ServiceUnavailable)),
    };
    respond(ctx, r);
}

/// An IQ to a room's bare JID.
pub async fn to_room(ctx: &Ctx<'_>) {
    let Some((t, p)) = request(ctx) else {
        return;
    };
    let Some(name) = ctx.to.node().map(|n| n.as_str().to_string()) else {
        return;
    };
    let Some(room_ref) = ctx.svc.room(ctx.server, &name).await else {
        return bounce(ctx, StanzaError::new(Condition::ItemNotFound));
    };
    let ns = p.ns();
    let r = match (t.as_str(), ns.as_str()) {
        ("get", NS_INFO) => {
            let room = lock(&room_ref);
            let is_owner = room.affiliation(&ctx.from.to_bare()) == super::Affiliation::Owner;
            if room.locked && !is_owner {
                Err(StanzaError::new(Condition::ItemNotFound))
            } else {
                Ok(Some(super::disco::room_info(&room)))
            }
        }
        ("get", NS_ITEMS) => Ok(Some(super::disco::room_items())),
        ("get", NS_PING) => Ok(None),
        (_, NS_OWNER) => super::owner::handle(ctx, &room_ref, &t, &p).await,
        (_, ns) if super::admin::handles_namespace(ns) => {
            super::admin::handle_iq(ctx, &room_ref, &t, &p).await
        }
        (_, ns) if super::archive::handles_namespace(ns) => {
            let Ok(el) = ctx.stanza.element() else {
                return;
            };
            // The archive answers (results then the IQ result) itself.
            match super::archive::handle_iq(ctx, &room_ref, &el).await {
                Ok(()) => return,
                Err(e) => Err(e),
            }
        }
        _ => Err(StanzaError::new(Condition::ServiceUnavailable)),
    };
    respond(ctx, r);
}

/// IQs forwarded between occupants, awaiting their reply: the id the target saw -> (the
/// requester's real full JID, its original id). Bounded; stale entries go after a minute.
#[derive(Default)]
pub struct Pending {
    map: Mutex<HashMap<String, (FullJid, String, Instant)>>,
}

const PENDING_MAX: usize = 10_000;
const PENDING_TTL: Duration = Duration::from_secs(60);

impl Pending {
    fn insert(&self, requester: FullJid, id: String) -> Option<String> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= PENDING_MAX {
            let now = Instant::now();
            m.retain(|_, v| now.duration_since(v.2) < PENDING_TTL);
            if m.len() >= PENDING_MAX {
                return None;
            }
        }
        let key = crate::stanza::random_id();
        m.insert(key.clone(), (requester, id, Instant::now()));
        Some(key)
    }

    fn take(&self, key: &str) -> Option<(FullJid, String)> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(key).map(|(j, id, _)| (j, id))
    }
}

/// An IQ to `room@service/nick`.
pub async fn to_occupant(ctx: &Ctx<'_>) {
    let (Some(node), Some(nick)) = (ctx.to.node(), ctx.to.resource()) else {
        return;
    };
    let Some(room_ref) = ctx.svc.rooms.get(node.as_str()) else {
        return bounce(ctx, StanzaError::new(Condition::ItemNotFound));
    };
    let t = ctx.stanza.type_.as_deref().unwrap_or("");
    if t == "result" || t == "error" {
        return reply_back(ctx, &room_ref, nick.as_str());
    }
    let Ok(mut el) = ctx.stanza.element() else {
        return;
    };
    let target = {
        let room = lock(&room_ref);
        let Some(sender) = room.occupant_of(ctx.from) else {
            // XEP-0410: a self-ping from a non-occupant learns it is not joined.
            return bounce(ctx, StanzaError::new(Condition::NotAcceptable));
        };
        let is_ping = el.get_child("ping", NS_PING).is_some() && t == "get";
        if is_ping && sender.nick == nick.as_str() {
            drop(room);
            return answer(ctx, None); // XEP-0410 §3.2 self-ping optimization
        }
        let Some(target) = room.occupants.get(nick.as_str()) else {
            return bounce(ctx, StanzaError::new(Condition::ItemNotFound));
        };
        let from = format!("{}/{}", room.jid, sender.nick);
        let vcard = t == "get" && el.get_child("vCard", NS_VCARD).is_some();
        if vcard {
            Err(target.real.clone())
        } else {
            Ok(target.sessions.first().map(|s| (s.handle.clone(), from)))
        }
    };
    let (handle, from) = match target {
        Ok(Some(t)) => t,
        Ok(None) => return bounce(ctx, StanzaError::new(Condition::ItemNotFound)),
        Err(real) => return vcard(ctx, &real).await,
    };
    let id = ctx.stanza.id.clone().unwrap_or_default();
    let Some(key) = ctx.svc.pending.insert(ctx.from.clone(), id) else {
        return bounce(ctx, StanzaError::new(Condition::ResourceConstraint));
    };
    el.put_attr("id", key.as_str());
    handle.send(Deliver::ToSelf(super::fanout_bytes(&el, &from)));
}

/// A result/error from an occupant to `room@service/nick` answering a forwarded IQ.
fn reply_back(ctx: &Ctx<'_>, room_ref: &super::RoomRef, nick: &str) {
    let Some(key) = ctx.stanza.id.as_deref() else {
        return;
    };
    let Some((requester, id)) = ctx.svc.pending.take(key) else {
        return;
    };
    let from = {
        let room = lock(room_ref);
        let Some(responder) = room.occupant_of(ctx.from) else {
            return;
        };
        // The reply must come back to the occupant the request was addressed as from.
        if room.by_session.get(&requester).map(String::as_str) != Some(nick) {
            return;
        }
        format!("{}/{}", room.jid, responder.nick)
    };
    let Ok(mut el) = ctx.stanza.element() else {
        return;
    };
    el.put_attr("from", from.as_str());
    el.put_attr("to", requester.as_str());
    el.put_attr("id", id.as_str());
    ctx.server
        .route(&jid::Jid::from(requester), crate::xml::to_bytes(&el));
}

/// A vCard request to an occupant is about the user, not a device: answered from the
/// occupant's stored vCard (as Prosody routes it to the real bare JID), so clients show
/// occupants' avatars (XEP-0153) without any of the occupant's clients answering.
async fn vcard(ctx: &Ctx<'_>, real: &jid::BareJid) {
    let Some(node) = real.node() else {
        return bounce(ctx, StanzaError::new(Condition::ServiceUnavailable));
    };
    if !ctx.server.serves(real.domain().as_str()) {
        return bounce(ctx, StanzaError::new(Condition::ServiceUnavailable));
    }
    let user = (real.domain().as_str(), node.as_str());
    match ctx.server.storage.vcard().get(user).await {
        Ok(Some(v)) => match v.xml.parse::<Element>() {
            Ok(el) => answer(ctx, Some(el)),
            Err(_) => bounce(ctx, StanzaError::new(Condition::InternalServerError)),
        },
        // As for anyone else's missing vCard (XEP-0054 §3.3).
        Ok(None) => bounce(ctx, StanzaError::new(Condition::ServiceUnavailable)),
        Err(e) => bounce(ctx, e.into()),
    }
}
