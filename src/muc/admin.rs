//! XEP-0045 §8 (moderator) and §9-§10 (admin, owner) use cases over
//! `http://jabber.org/protocol/muc#admin`: kick, voice, moderator grants (roles, by nick);
//! ban, member/admin/owner lists (affiliations, by bare JID); and XEP-0425 message
//! moderation (`urn:xmpp:message-moderate:1`).
//!
//! Who may change whom (the §5 privilege tables; the first rule that matches wins):
//! - roles need a moderator actor (forbidden); granting or revoking moderator needs an
//!   admin or owner actor (forbidden); an occupant whose affiliation is above the actor's
//!   cannot be kicked (not-allowed); an admin's or owner's voice or moderator role cannot be
//!   taken by anyone (not-allowed).
//! - affiliations need an admin or owner actor (forbidden); only owners grant or revoke
//!   owner and admin (forbidden to grant; not-allowed to change an existing admin or owner,
//!   e.g. an admin banning an owner); an admin or owner cannot ban themself (conflict); the
//!   last owner cannot step down (conflict).
//!
//! A set with several items is checked as a whole before anything is applied (§9.5: "SHOULD
//! NOT apply any of the requested changes"). Changes are announced with the occupants
//! helpers (307 kick, 301 ban, 321 removed from a members-only room) and persisted.

use jid::BareJid;
use minidom::Element;

use super::occupants::{self, ItemExtra};
use super::room::{lock, Affiliation, Role, Room, RoomRef, Whois};
use super::{Ctx, NS_OCCUPANT_ID};
use crate::stanza::{BuilderExt, Condition, StanzaError};
use crate::xml::NS_CLIENT;

/// The admin namespace this file answers.
pub const NS_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
use super::archive::{NS_MODERATE, NS_RETRACT};

fn err(c: Condition, text: &str) -> StanzaError {
    StanzaError::with_text(c, text)
}

/// An IQ get/set to the room's bare JID whose payload is `<query xmlns='muc#admin'/>`
/// or XEP-0425 `<moderate/>`. Ok(Some(el)) is the result payload, Ok(None) an empty result.
pub async fn handle_iq(
    ctx: &Ctx<'_>,
    room: &RoomRef,
    iq_type: &str,
    payload: &Element,
) -> Result<Option<Element>, StanzaError> {
    if payload.is("moderate", NS_MODERATE) {
        if iq_type != "set" {
            return Err(StanzaError::new(Condition::BadRequest));
        }
        return moderate(ctx, room, payload).await.map(|()| None);
    }
    if !payload.is("query", NS_ADMIN) {
        return Err(StanzaError::new(Condition::FeatureNotImplemented));
    }
    let items: Vec<&Element> = payload
        .children()
        .filter(|c| c.is("item", NS_ADMIN))
        .collect();
    if iq_type == "get" {
        let [item] = items.as_slice() else {
            return Err(err(Condition::BadRequest, "one <item/> naming the list"));
        };
        let room = lock(room);
        return list(ctx, &room, item).map(Some);
    }
    let changed_affiliations = {
        let mut r = lock(room);
        let changes = items
            .iter()
            .map(|i| check(ctx, &r, i))
            .collect::<Result<Vec<_>, _>>()?;
        if changes.is_empty() {
            return Err(err(Condition::BadRequest, "no <item/>"));
        }
        let limit = ctx.svc.config.max_presence_broadcast;
        let actor_nick = r.occupant_of(ctx.from).map(|o| o.nick.clone());
        let mut any_aff = false;
        for c in &changes {
            let extra = ItemExtra {
                nick: None,
                actor: actor_nick.as_deref(),
                reason: c.reason.as_deref(),
            };
            match &c.what {
                ChangeKind::Role(nick, role) => {
                    occupants::set_role(&mut r, nick, *role, extra, limit);
                }
                ChangeKind::Affiliation(jid, aff) => {
                    any_aff = true;
                    occupants::set_affiliation(&mut r, jid, *aff, extra, limit);
                }
            }
        }
        any_aff
    };
    occupants::forget_if_empty(ctx.svc, room);
    if changed_affiliations {
        ctx.svc.persist(ctx.server, room).await;
    }
    Ok(None)
}

/// Whether an IQ payload namespace belongs to [`handle_iq`].
pub fn handles_namespace(ns: &str) -> bool {
    ns == NS_ADMIN || ns == NS_MODERATE
}

/// Extra disco#info features of a room contributed by moderation: none of its own (XEP-0425
/// moderation finds messages in the room's archive, so [`super::archive::room_features`]
/// advertises it with the archive).
pub fn room_features() -> &'static [&'static str] {
    &[]
}

/// One checked item of a set.
enum ChangeKind {
    /// (nick, new role).
    Role(String, Role),
    /// (bare JID, new affiliation).
    Affiliation(BareJid, Affiliation),
}

struct Change {
    what: ChangeKind,
    reason: Option<String>,
}

/// Validate one `<item/>` of a set against the rules in the module docs.
fn check(ctx: &Ctx<'_>, room: &Room, item: &Element) -> Result<Change, StanzaError> {
    let reason = item
        .get_child("reason", NS_ADMIN)
        .map(|r| r.text())
        .filter(|r| !r.is_empty());
    let actor_aff = room.affiliation(&ctx.from.to_bare());
    match (item.attr("role"), item.attr("affiliation")) {
        (Some(_), Some(_)) => Err(err(
            Condition::BadRequest,
            "an item changes a role or an affiliation, not both",
        )),
        (Some(role), None) => {
            let role =
                Role::parse(role).ok_or_else(|| err(Condition::BadRequest, "unknown role"))?;
            let Some(actor) = room.occupant_of(ctx.from) else {
                return Err(err(Condition::Forbidden, "only moderators change roles"));
            };
            if actor.role != Role::Moderator {
                return Err(err(Condition::Forbidden, "only moderators change roles"));
            }
            let nick = item
                .attr("nick")
                .ok_or_else(|| err(Condition::BadRequest, "a role change names a nick"))?;
            let target = room
                .occupants
                .get(nick)
                .ok_or_else(|| err(Condition::ItemNotFound, "no such occupant"))?;
            let high = |a: Affiliation| a >= Affiliation::Admin;
            if (role == Role::Moderator || target.role == Role::Moderator) && !high(actor_aff) {
                return Err(err(
                    Condition::Forbidden,
                    "only admins and owners grant or revoke moderator",
                ));
            }
            if target.affiliation > actor_aff {
                return Err(err(
                    Condition::NotAllowed,
                    "the occupant's affiliation is above yours",
                ));
            }
            if role != Role::Moderator && high(target.affiliation) {
                return Err(err(
                    Condition::NotAllowed,
                    "an admin's or owner's role cannot be reduced",
                ));
            }
            Ok(Change {
                what: ChangeKind::Role(nick.to_string(), role),
                reason,
            })
        }
        (None, Some(aff)) => {
            let aff = Affiliation::parse(aff)
                .ok_or_else(|| err(Condition::BadRequest, "unknown affiliation"))?;
            if actor_aff < Affiliation::Admin {
                return Err(err(
                    Condition::Forbidden,
                    "only admins and owners change affiliations",
                ));
            }
            let jid = match (item.attr("jid"), item.attr("nick")) {
                (Some(j), _) => crate::stanza::parse_jid(j)?.to_bare(),
                (None, Some(n)) => room
                    .occupants
                    .get(n)
                    .map(|o| o.real.clone())
                    .ok_or_else(|| err(Condition::ItemNotFound, "no such occupant"))?,
                (None, None) => {
                    return Err(err(
                        Condition::BadRequest,
                        "an affiliation change names a jid",
                    ))
                }
            };
            let current = room.affiliation(&jid);
            let owner = actor_aff == Affiliation::Owner;
            if aff >= Affiliation::Admin && !owner {
                return Err(err(
                    Condition::Forbidden,
                    "only owners grant admin or owner",
                ));
            }
            if jid == ctx.from.to_bare() && aff == Affiliation::Outcast {
                return Err(err(Condition::Conflict, "you cannot ban yourself"));
            }
            if current >= Affiliation::Admin && !owner {
                return Err(err(
                    Condition::NotAllowed,
                    "only owners change an admin's or owner's affiliation",
                ));
            }
            if jid == ctx.from.to_bare() {
                let owners = room
                    .affiliations
                    .values()
                    .filter(|a| **a == Affiliation::Owner)
                    .count();
                if current == Affiliation::Owner && aff != Affiliation::Owner && owners <= 1 {
                    return Err(err(Condition::Conflict, "a room needs an owner"));
                }
            }
            Ok(Change {
                what: ChangeKind::Affiliation(jid, aff),
                reason,
            })
        }
        (None, None) => Err(err(
            Condition::BadRequest,
            "an item needs a role or affiliation",
        )),
    }
}

/// A list get (§8.5 voice list, §8.8 moderator list, §9.5 ban list, §9.5 member list,
/// §10.5 owner list, §10.8 admin list).
fn list(ctx: &Ctx<'_>, room: &Room, item: &Element) -> Result<Element, StanzaError> {
    let actor_aff = room.affiliation(&ctx.from.to_bare());
    let actor = room.occupant_of(ctx.from);
    let mut q = Element::builder("query", NS_ADMIN);
    match (item.attr("role"), item.attr("affiliation")) {
        (Some(role), None) => {
            let role =
                Role::parse(role).ok_or_else(|| err(Condition::BadRequest, "unknown role"))?;
            if !actor.is_some_and(|a| a.role == Role::Moderator) {
                return Err(err(Condition::Forbidden, "only moderators list roles"));
            }
            let mut occs: Vec<_> = room.occupants.values().filter(|o| o.role == role).collect();
            occs.sort_by(|a, b| a.nick.cmp(&b.nick));
            for o in occs {
                let mut i = Element::builder("item", NS_ADMIN)
                    .at("affiliation", o.affiliation.as_str())
                    .at("role", o.role.as_str())
                    .at("nick", o.nick.as_str());
                if let Some(s) = o.sessions.first() {
                    i = i.at("jid", s.jid.as_str());
                }
                q = q.append(i.build());
            }
        }
        (None, Some(aff)) => {
            let aff = Affiliation::parse(aff)
                .filter(|a| *a != Affiliation::None)
                .ok_or_else(|| err(Condition::BadRequest, "unknown affiliation"))?;
            let allowed = match aff {
                Affiliation::Owner | Affiliation::Admin => {
                    actor_aff == Affiliation::Owner
                        || (actor_aff == Affiliation::Admin && room.config.whois == Whois::Anyone)
                }
                Affiliation::Member => {
                    actor_aff >= Affiliation::Admin
                        || (room.config.members_can_get_member_list
                            && (actor_aff == Affiliation::Member || actor.is_some()))
                }
                _ => actor_aff >= Affiliation::Admin,
            };
            if !allowed {
                return Err(err(Condition::Forbidden, "you may not see this list"));
            }
            let mut jids: Vec<&BareJid> = room
                .affiliations
                .iter()
                .filter(|(_, a)| **a == aff)
                .map(|(j, _)| j)
                .collect();
            jids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            for j in jids {
                q = q.append(
                    Element::builder("item", NS_ADMIN)
                        .at("affiliation", aff.as_str())
                        .at("jid", j.as_str())
                        .build(),
                );
            }
        }
        _ => {
            return Err(err(
                Condition::BadRequest,
                "a list is named by role or affiliation",
            ))
        }
    }
    Ok(q.build())
}

/// XEP-0425: a moderator retracts an archived message: the retraction goes to every
/// occupant (and into the archive), the original becomes a tombstone.
async fn moderate(ctx: &Ctx<'_>, room_ref: &RoomRef, m: &Element) -> Result<(), StanzaError> {
    let uid = m
        .attr("id")
        .ok_or_else(|| err(Condition::BadRequest, "<moderate/> needs an id"))?;
    if !m.has_child("retract", NS_RETRACT) {
        return Err(err(Condition::BadRequest, "only retraction is supported"));
    }
    let reason = m
        .get_child("reason", NS_MODERATE)
        .map(|r| r.text())
        .filter(|r| !r.is_empty());
    let (by, occupant_id) = {
        let room = lock(room_ref);
        let Some(actor) = room
            .occupant_of(ctx.from)
            .filter(|a| a.role == Role::Moderator)
        else {
            return Err(err(
                Condition::Forbidden,
                "only moderators may moderate other participants' messages",
            ));
        };
        (
            format!("{}/{}", room.jid, actor.nick),
            actor.occupant_id.clone(),
        )
    };
    let moderated = || {
        Element::builder("moderated", NS_MODERATE)
            .at("by", by.as_str())
            .append(
                Element::builder("occupant-id", NS_OCCUPANT_ID)
                    .at("id", occupant_id.as_str())
                    .build(),
            )
            .build()
    };
    let reason_el = |ns: &str| {
        reason
            .as_ref()
            .map(|r| Element::builder("reason", ns).append(r.as_str()).build())
    };
    let mut retracted = super::archive::self_retracted(None);
    retracted.append_child(moderated());
    if let Some(r) = reason_el(NS_RETRACT) {
        retracted.append_child(r);
    }
    if !super::archive::tombstone(ctx, room_ref, uid, retracted).await? {
        return Err(err(
            Condition::ItemNotFound,
            "no such message in the room's archive",
        ));
    }
    // The announcement (XEP-0425 §3.1), itself archived like any retraction.
    let mut retract = Element::builder("retract", NS_RETRACT)
        .at("id", uid)
        .append(moderated());
    if let Some(r) = reason_el(NS_RETRACT) {
        retract = retract.append(r);
    }
    let room_jid = lock(room_ref).jid.to_string();
    let msg = Element::builder("message", NS_CLIENT)
        .at("type", "groupchat")
        .at("id", crate::stanza::random_id())
        .at("from", room_jid.as_str())
        .append(retract.build())
        .build();
    let bytes = crate::xml::to_bytes(&msg);
    let pending = {
        let room = lock(room_ref);
        let (out, pending) = super::archive::stamp_service(&room, bytes);
        for o in room.occupants.values() {
            o.push(&out);
        }
        pending
    };
    super::archive::archived(ctx, pending).await;
    Ok(())
}
