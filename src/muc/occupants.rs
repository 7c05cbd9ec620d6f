//! Presence to an occupant JID (XEP-0045 §7.2 entering, §7.6 nick change, §7.7 presence
//! update, §7.14 exit) and the presence broadcast helpers moderation reuses
//! ([`remove_occupant`], [`set_role`], [`set_affiliation`]).
//!
//! Every occupant's presence is serialized once per change into two cached variants
//! (with and without the real JID, per `whois`), so a joiner receives N cached byte strings
//! and a broadcast is N queue pushes. Rooms above `muc.max_presence_broadcast` occupants are
//! "crowded": non-moderators' presence then goes to moderators only (ejabberd's
//! max_users_presence does the same; Prosody has no occupant-count limit, only the per-room
//! choice of which roles' presence is broadcast), which keeps joining a 10 000-occupant room
//! O(moderators) instead of O(N). Others' presence is best effort: an occupant whose queue
//! is full (a mass join or leave) misses some rather than being disconnected.

use bytes::Bytes;
use jid::BareJid;
use minidom::Element;

use super::history;
use super::room::{lock, Affiliation, Occupant, OccupantSession, Role, Room, RoomRef, Whois};
use super::{bounce, reply, Ctx, NS_MUC, NS_OCCUPANT_ID, NS_USER};
use crate::router::Deliver;
use crate::stanza::{BuilderExt, Condition, StanzaError};
use crate::xml::NS_CLIENT;

/// Status codes (§15.6).
pub mod status {
    pub const NON_ANONYMOUS: u16 = 100;
    pub const SELF: u16 = 110;
    pub const LOGGING: u16 = 170;
    pub const CREATED: u16 = 201;
    pub const NICK_MODIFIED: u16 = 210;
    pub const BANNED: u16 = 301;
    pub const NEW_NICK: u16 = 303;
    pub const KICKED: u16 = 307;
    pub const AFFILIATION_CHANGE: u16 = 321;
    pub const MEMBERS_ONLY: u16 = 322;
    pub const SHUTDOWN: u16 = 332;
}

/// Extra detail in a presence's `<item/>`: the new nick (303), the actor and reason
/// (kick/ban, §8.2, §9.1).
#[derive(Debug, Default, Clone, Copy)]
pub struct ItemExtra<'a> {
    pub nick: Option<&'a str>,
    pub actor: Option<&'a str>,
    pub reason: Option<&'a str>,
}

/// One presence about `occ` as the room sends it (no 'to': each session adds its own).
pub fn presence_bytes(
    room: &Room,
    occ: &Occupant,
    with_jid: bool,
    unavailable: bool,
    codes: &[u16],
    extra: ItemExtra<'_>,
) -> Bytes {
    let from = format!("{}/{}", room.jid, occ.nick);
    let mut p = Element::builder("presence", NS_CLIENT).at("from", from.as_str());
    if unavailable {
        // §7.14: the leave's own status text goes with it.
        p = p.at("type", "unavailable").append_all(
            occ.presence
                .iter()
                .filter(|c| c.is("status", NS_CLIENT))
                .cloned(),
        );
    } else {
        p = p.append_all(occ.presence.iter().cloned());
    }
    let role = if unavailable { Role::None } else { occ.role };
    let mut item = Element::builder("item", NS_USER)
        .at("affiliation", occ.affiliation.as_str())
        .at("role", role.as_str());
    if with_jid {
        if let Some(s) = occ.sessions.first() {
            item = item.at("jid", s.jid.as_str());
        }
    }
    if let Some(n) = extra.nick {
        item = item.at("nick", n);
    }
    if let Some(a) = extra.actor {
        item = item.append(Element::builder("actor", NS_USER).at("nick", a).build());
    }
    if let Some(r) = extra.reason {
        item = item.append(Element::builder("reason", NS_USER).append(r).build());
    }
    let mut x = Element::builder("x", NS_USER).append(item.build());
    for c in codes {
        x = x.append(
            Element::builder("status", NS_USER)
                .at("code", c.to_string())
                .build(),
        );
    }
    p = p.append(x.build());
    p = p.append(
        Element::builder("occupant-id", NS_OCCUPANT_ID)
            .at("id", occ.occupant_id.as_str())
            .build(),
    );
    crate::xml::to_bytes(&p.build())
}

/// Rebuild an occupant's cached presence variants after a change.
pub fn refresh(room: &mut Room, nick: &str) {
    let Some(occ) = room.occupants.get(nick) else {
        return;
    };
    let anon = presence_bytes(room, occ, false, false, &[], ItemExtra::default());
    let full = presence_bytes(room, occ, true, false, &[], ItemExtra::default());
    if let Some(o) = room.occupants.get_mut(nick) {
        o.cached_anon = anon;
        o.cached_full = full;
    }
}

/// Whether presence of non-moderators is limited to moderators (see the module doc).
pub fn crowded(room: &Room, limit: usize) -> bool {
    limit != 0 && room.occupants.len() > limit
}

/// Whether `viewer` sees real JIDs (§4.2: moderators in semi-anonymous rooms, everyone in
/// non-anonymous ones).
pub fn sees_jids(room: &Room, viewer: &Occupant) -> bool {
    room.config.whois == Whois::Anyone || viewer.role == Role::Moderator
}

/// Push a presence about `about` to every other occupant (moderators only when the room is
/// crowded and `about` is not a moderator): `anon`/`full` by what each may see.
pub fn fan_out(room: &Room, about: &str, anon: &Bytes, full: &Bytes, limit: usize) {
    let about_is_mod = room.moderators.contains(about);
    let pick = |o: &Occupant| if sees_jids(room, o) { full } else { anon };
    // Best effort (offer, not push): a burst of joins or leaves must not disconnect an
    // occupant whose queue is full; messages still do (the core's slow-consumer policy).
    if crowded(room, limit) && !about_is_mod {
        for n in &room.moderators {
            if let Some(o) = room.occupants.get(n).filter(|o| o.nick != about) {
                o.offer(pick(o));
            }
        }
    } else {
        for o in room.occupants.values().filter(|o| o.nick != about) {
            o.offer(pick(o));
        }
    }
}

/// Announce an occupant's (new or changed) available presence to the others and to itself
/// (with 110 and `self_codes`) on all its sessions.
pub fn announce(room: &mut Room, nick: &str, self_codes: &[u16], limit: usize) {
    refresh(room, nick);
    let Some(occ) = room.occupants.get(nick) else {
        return;
    };
    fan_out(room, nick, &occ.cached_anon, &occ.cached_full, limit);
    let own = presence_bytes(room, occ, true, false, self_codes, ItemExtra::default());
    occ.push(&own);
}

/// Remove an occupant (kick 307, ban 301, affiliation change 321, members-only 322, system
/// shutdown 332): every session gets an unavailable presence with 110 and `codes`, the others
/// one with `codes`. Returns the occupant, or None if no such nick. The caller drops the
/// room if it became empty and is temporary ([`forget_if_empty`]).
pub fn remove_occupant(
    room: &mut Room,
    nick: &str,
    codes: &[u16],
    extra: ItemExtra<'_>,
    limit: usize,
) -> Option<Occupant> {
    let occ = room.occupants.get(nick)?;
    let anon = presence_bytes(room, occ, false, true, codes, extra);
    let full = presence_bytes(room, occ, true, true, codes, extra);
    let mut own_codes = vec![status::SELF];
    own_codes.extend_from_slice(codes);
    let own = presence_bytes(room, occ, true, true, &own_codes, extra);
    fan_out(room, nick, &anon, &full, limit);
    occ.push(&own);
    detach(room, nick)
}

/// Take an occupant out of the room's maps without telling anyone.
fn detach(room: &mut Room, nick: &str) -> Option<Occupant> {
    let occ = room.occupants.remove(nick)?;
    room.moderators.remove(nick);
    for s in &occ.sessions {
        room.by_session.remove(&s.jid);
    }
    Some(occ)
}

/// Change an occupant's role and announce it (§8.4 voice, §8.6 moderator). `Role::None` is a
/// kick (307). False when no such nick.
pub fn set_role(
    room: &mut Room,
    nick: &str,
    role: Role,
    extra: ItemExtra<'_>,
    limit: usize,
) -> bool {
    if !room.occupants.contains_key(nick) {
        return false;
    }
    if role == Role::None {
        remove_occupant(room, nick, &[status::KICKED], extra, limit);
        return true;
    }
    room.set_role_of(nick, role);
    announce(room, nick, &[status::SELF], limit);
    true
}

/// Change a user's affiliation (§9, §10) and apply it to the occupants of that user: an
/// outcast is removed (301), a non-member of a members-only room too (321); otherwise their
/// role follows the new affiliation and the change is announced. Callers persist the room.
pub fn set_affiliation(
    room: &mut Room,
    real: &BareJid,
    aff: Affiliation,
    extra: ItemExtra<'_>,
    limit: usize,
) {
    if aff == Affiliation::None {
        room.affiliations.remove(real);
    } else {
        room.affiliations.insert(real.clone(), aff);
    }
    let nicks: Vec<String> = room
        .occupants
        .values()
        .filter(|o| &o.real == real)
        .map(|o| o.nick.clone())
        .collect();
    for nick in nicks {
        if let Some(o) = room.occupants.get_mut(&nick) {
            o.affiliation = aff;
        }
        if aff == Affiliation::Outcast {
            remove_occupant(room, &nick, &[status::BANNED], extra, limit);
        } else if room.config.members_only && aff < Affiliation::Member {
            remove_occupant(room, &nick, &[status::AFFILIATION_CHANGE], extra, limit);
        } else {
            let role = aff.default_role(room.config.moderated);
            room.set_role_of(&nick, role);
            announce(room, &nick, &[status::SELF], limit);
        }
    }
}

/// Drop a room that became empty unless persistent (§10.1.3: a temporary room is destroyed
/// when the last occupant exits).
pub fn forget_if_empty(svc: &super::MucService, room_ref: &RoomRef) {
    let mut r = lock(room_ref);
    if r.is_empty() && !r.is_persistent() {
        forget(svc, &mut r, room_ref);
    }
}

/// Take a room out of the registry, marking it [`Room::removed`] under its lock so a joiner
/// that looked it up just before retries with a fresh lookup instead of entering a room
/// nobody can reach. Lock order: a room's lock, then the registry's (never the reverse).
pub fn forget(svc: &super::MucService, room: &mut Room, room_ref: &RoomRef) {
    room.removed = true;
    svc.rooms.remove(room.name(), room_ref);
}

// ---------------------------------------------------------------------------------------
// Presence handling

/// Presence to `room@service/nick`.
pub async fn presence(ctx: &Ctx<'_>) {
    let (Some(node), Some(nick)) = (ctx.to.node(), ctx.to.resource()) else {
        return;
    };
    let (name, nick) = (node.as_str().to_string(), nick.as_str().to_string());
    match ctx.stanza.type_.as_deref() {
        None => available(ctx, &name, &nick).await,
        Some("unavailable") => unavailable(ctx, &name).await,
        // Errors from an occupant's client (a bounced presence): that session is gone.
        Some("error") => unavailable(ctx, &name).await,
        _ => {}
    }
}

/// The payload of a client presence the room re-broadcasts (everything but MUC's own
/// elements and spoofable ids).
fn payload(el: &Element) -> Vec<Element> {
    el.children()
        .filter(|c| {
            !(c.is("x", NS_MUC) || c.is("x", NS_USER) || c.is("occupant-id", NS_OCCUPANT_ID))
        })
        .cloned()
        .collect()
}

async fn available(ctx: &Ctx<'_>, name: &str, nick: &str) {
    let Ok(el) = ctx.stanza.element() else {
        return;
    };
    let limit = ctx.svc.presence_limit;
    // A room removed (emptied, destroyed) between the lookup and the lock: look again.
    for _ in 0..3 {
        let room_ref = match ctx.svc.room(ctx.server, name).await {
            Some(r) => r,
            None => match create(ctx, name) {
                Ok(r) => r,
                Err(e) => return bounce(ctx, e),
            },
        };
        // Already in the room under this or another nick: a presence update or nick change.
        let current = {
            let room = lock(&room_ref);
            if room.removed {
                continue;
            }
            room.by_session.get(ctx.from).cloned()
        };
        let res = match current {
            Some(cur) if cur == nick => {
                let mut room = lock(&room_ref);
                if let Some(o) = room.occupants.get_mut(nick) {
                    o.presence = payload(&el);
                }
                announce(&mut room, nick, &[status::SELF], limit);
                Ok(true)
            }
            Some(cur) => change_nick(ctx, &room_ref, &cur, nick, &el, limit).map(|()| true),
            None => join(ctx, &room_ref, nick, &el, limit),
        };
        match res {
            Ok(true) => return,
            Ok(false) => continue,
            Err(e) => {
                bounce(ctx, e);
                return forget_if_empty(ctx.svc, &room_ref);
            }
        }
    }
    bounce(ctx, StanzaError::new(Condition::ServiceUnavailable));
}

/// §10.1.1: entering a room that does not exist creates it, locked, with the sender as owner.
fn create(ctx: &Ctx<'_>, name: &str) -> Result<RoomRef, StanzaError> {
    if ctx.svc.rooms.len() >= ctx.svc.config.max_rooms {
        return Err(StanzaError::new(Condition::ResourceConstraint));
    }
    let jid = BareJid::new(&format!("{}@{}", name, ctx.svc.domain))
        .map_err(|_| StanzaError::new(Condition::JidMalformed))?;
    let mut room = Room::new(jid, super::RoomConfig::default());
    room.config.history_length = room.config.history_length.min(ctx.svc.config.max_history);
    room.locked = true;
    room.affiliations
        .insert(ctx.from.to_bare(), Affiliation::Owner);
    // A new room never sees the archive of an earlier temporary room of the same name.
    ctx.server.archive.writer.forget_room(&ctx.svc.domain, name);
    Ok(ctx.svc.rooms.insert(room).0)
}

/// Enter the room (§7.2): checks, the occupant (or one more session of it), the others'
/// presence, self-presence, history, subject. Ok(false): the room was removed meanwhile.
fn join(
    ctx: &Ctx<'_>,
    room_ref: &RoomRef,
    nick: &str,
    el: &Element,
    limit: usize,
) -> Result<bool, StanzaError> {
    let real = ctx.from.to_bare();
    // A local session, or a stand-in forwarding to an occupant of another domain.
    let handle = crate::federation::session_handle(ctx.server, ctx.from)
        .ok_or_else(|| StanzaError::new(Condition::ServiceUnavailable))?;
    let x = el.get_child("x", NS_MUC);
    let mut room = lock(room_ref);
    if room.removed {
        return Ok(false);
    }
    let aff = room.affiliation(&real);
    let is_new_room = room.locked && room.occupants.is_empty() && aff == Affiliation::Owner;
    check_entry(ctx, &room, nick, &real, aff, x)?;
    let session = OccupantSession {
        jid: ctx.from.clone(),
        handle: handle.clone(),
    };
    room.by_session.insert(ctx.from.clone(), nick.to_string());
    let crowded_now = crowded(&room, limit);
    // Another device of an occupant already present: one more session, no broadcast.
    if let Some(o) = room.occupants.get_mut(nick) {
        o.sessions.push(session);
        o.presence = payload(el);
        refresh(&mut room, nick);
    } else {
        let role = aff.default_role(room.config.moderated);
        let occupant_id = super::occupant_id::occupant_id(&room.secret, real.as_str());
        room.occupants.insert(
            nick.to_string(),
            Occupant {
                nick: nick.to_string(),
                real,
                sessions: vec![session],
                role: Role::None,
                affiliation: aff,
                presence: payload(el),
                occupant_id,
                cached_anon: Bytes::new(),
                cached_full: Bytes::new(),
            },
        );
        room.set_role_of(nick, role);
        refresh(&mut room, nick);
        let occ = &room.occupants[nick];
        fan_out(&room, nick, &occ.cached_anon, &occ.cached_full, limit);
    }
    // §7.2.3: the others' presence first (moderators only in a crowded room).
    let viewer = &room.occupants[nick];
    let full = sees_jids(&room, viewer);
    let send = |o: &Occupant| {
        if o.nick != nick {
            handle.send(Deliver::ToSelf(if full {
                o.cached_full.clone()
            } else {
                o.cached_anon.clone()
            }));
        }
    };
    if crowded_now {
        for n in &room.moderators {
            if let Some(o) = room.occupants.get(n) {
                send(o);
            }
        }
    } else {
        room.occupants.values().for_each(send);
    }
    // Then self-presence with the status codes.
    let mut codes = vec![status::SELF];
    if room.config.whois == Whois::Anyone {
        codes.push(status::NON_ANONYMOUS);
    }
    if room.config.logging {
        codes.push(status::LOGGING);
    }
    if is_new_room {
        codes.push(status::CREATED);
    }
    let own = presence_bytes(&room, viewer, true, false, &codes, ItemExtra::default());
    handle.send(Deliver::ToSelf(own));
    // §7.2.15 history, then §7.2.16 the subject (always: it marks the end of history).
    history::send(&room, x, &handle);
    handle.send(Deliver::ToSelf(subject_bytes(&room)));
    Ok(true)
}

/// The §7.2 entry checks, in the order the spec lists them.
fn check_entry(
    ctx: &Ctx<'_>,
    room: &Room,
    nick: &str,
    real: &BareJid,
    aff: Affiliation,
    x: Option<&Element>,
) -> Result<(), StanzaError> {
    // §10.1.1: a locked room admits only its owner.
    if room.locked && aff != Affiliation::Owner {
        return Err(StanzaError::new(Condition::ItemNotFound));
    }
    if aff == Affiliation::Outcast {
        return Err(StanzaError::new(Condition::Forbidden));
    }
    if room.config.members_only && aff < Affiliation::Member {
        return Err(StanzaError::new(Condition::RegistrationRequired));
    }
    if let Some(o) = room.occupants.get(nick) {
        if &o.real != real {
            return Err(StanzaError::new(Condition::Conflict));
        }
        return Ok(()); // another device of the same user: the remaining checks passed before
    }
    if !room.config.password.is_empty() && aff < Affiliation::Admin {
        let given = x
            .and_then(|x| x.get_child("password", NS_MUC))
            .map(|p| p.text());
        if given.as_deref() != Some(room.config.password.as_str()) {
            return Err(StanzaError::new(Condition::NotAuthorized));
        }
    }
    let max = match (room.config.max_occupants, ctx.svc.config.max_occupants) {
        (0, s) => s,
        (r, 0) => r,
        (r, s) => r.min(s),
    };
    if max != 0 && room.occupants.len() >= max && aff < Affiliation::Admin {
        return Err(StanzaError::new(Condition::ServiceUnavailable));
    }
    Ok(())
}

/// The subject message sent after history (§7.2.16): the current subject from whoever set
/// it, or an empty `<subject/>` from the room.
pub fn subject_bytes(room: &Room) -> Bytes {
    let (from, text) = match &room.subject {
        Some(s) if !s.nick.is_empty() => (format!("{}/{}", room.jid, s.nick), s.text.as_str()),
        Some(s) => (room.jid.to_string(), s.text.as_str()),
        None => (room.jid.to_string(), ""),
    };
    let mut subject = Element::builder("subject", NS_CLIENT);
    if !text.is_empty() {
        subject = subject.append(text);
    }
    let m = Element::builder("message", NS_CLIENT)
        .at("from", from.as_str())
        .at("type", "groupchat")
        .at("id", crate::stanza::random_id())
        .append(subject.build())
        .build();
    crate::xml::to_bytes(&m)
}

/// §7.6: the occupant (all its sessions) takes another nick: unavailable with 303 and the new
/// nick from the old one, then available from the new one.
fn change_nick(
    ctx: &Ctx<'_>,
    room_ref: &RoomRef,
    old: &str,
    new: &str,
    el: &Element,
    limit: usize,
) -> Result<(), StanzaError> {
    let mut room = lock(room_ref);
    if let Some(o) = room.occupants.get(new) {
        if o.real != ctx.from.to_bare() {
            return Err(StanzaError::new(Condition::Conflict));
        }
        // Same user under both nicks (two devices that joined separately): not merged.
        return Err(StanzaError::new(Condition::NotAcceptable));
    }
    let Some(occ) = room.occupants.get(old) else {
        return Ok(());
    };
    let extra = ItemExtra {
        nick: Some(new),
        ..Default::default()
    };
    let codes = [status::NEW_NICK];
    let anon = presence_bytes(&room, occ, false, true, &codes, extra);
    let full = presence_bytes(&room, occ, true, true, &codes, extra);
    let own = presence_bytes(
        &room,
        occ,
        true,
        true,
        &[status::NEW_NICK, status::SELF],
        extra,
    );
    fan_out(&room, old, &anon, &full, limit);
    occ.push(&own);
    let was_mod = room.moderators.remove(old);
    let Some(mut occ) = room.occupants.remove(old) else {
        return Ok(());
    };
    occ.nick = new.to_string();
    occ.presence = payload(el);
    for s in &occ.sessions {
        room.by_session.insert(s.jid.clone(), new.to_string());
    }
    room.occupants.insert(new.to_string(), occ);
    if was_mod {
        room.moderators.insert(new.to_string());
    }
    announce(&mut room, new, &[status::SELF], limit);
    Ok(())
}

/// §7.14: a session leaves (or ended: the core sends its unavailable presence). Only the
/// last session of an occupant ends the occupancy; an earlier one just gets its own
/// unavailable presence back.
async fn unavailable(ctx: &Ctx<'_>, name: &str) {
    let Some(room_ref) = ctx.svc.rooms.get(name) else {
        return;
    };
    let limit = ctx.svc.presence_limit;
    {
        let mut room = lock(&room_ref);
        let Some(nick) = room.by_session.get(ctx.from).cloned() else {
            return;
        };
        let Some(occ) = room.occupants.get(&nick) else {
            return;
        };
        if occ.sessions.len() > 1 {
            let own = presence_bytes(
                &room,
                occ,
                true,
                true,
                &[status::SELF],
                ItemExtra::default(),
            );
            reply(ctx, crate::router::splice_to(&own, ctx.from.as_str()));
            room.by_session.remove(ctx.from);
            if let Some(o) = room.occupants.get_mut(&nick) {
                o.sessions.retain(|s| &s.jid != ctx.from);
            }
        } else {
            // The leave's own status text goes with the unavailable presence.
            if let Ok(el) = ctx.stanza.element() {
                if let Some(o) = room.occupants.get_mut(&nick) {
                    o.presence = payload(&el);
                }
            }
            remove_occupant(&mut room, &nick, &[], ItemExtra::default(), limit);
        }
    }
    forget_if_empty(ctx.svc, &room_ref);
}
