//! The owner's side of a room (XEP-0045 §10): the configuration form (get/submit), instant
//! rooms (an empty submit unlocks a newly created room, §10.1.2), cancelling the initial
//! configuration (§10.1.3: the room goes away) and destruction (handed to [`super::destroy`]).

use minidom::Element;

use super::form::{self, NS_DATA};
use super::occupants::{self, status, ItemExtra};
use super::room::{lock, Affiliation, Room, RoomConfig, RoomRef, Whois};
use super::{Ctx, NS_OWNER, NS_USER};
use crate::stanza::BuilderExt;
use crate::stanza::{Condition, StanzaError};
use crate::xml::NS_CLIENT;

/// An IQ with `<query xmlns='muc#owner'/>` to the room. Ok(Some) is the result's payload.
pub async fn handle(
    ctx: &Ctx<'_>,
    room_ref: &RoomRef,
    iq_type: &str,
    query: &Element,
) -> Result<Option<Element>, StanzaError> {
    let real = ctx.from.to_bare();
    if lock(room_ref).affiliation(&real) != Affiliation::Owner {
        return Err(StanzaError::new(Condition::Forbidden));
    }
    if iq_type == "get" {
        let room = lock(room_ref);
        let form = form::config_form(&room.config, room.jid.as_str());
        return Ok(Some(
            Element::builder("query", NS_OWNER).append(form).build(),
        ));
    }
    if let Some(d) = query.get_child("destroy", NS_OWNER) {
        super::destroy::handle_destroy(ctx, room_ref, d).await?;
        return Ok(None);
    }
    let Some(x) = query.get_child("x", NS_DATA) else {
        return Err(StanzaError::new(Condition::BadRequest));
    };
    match x.attr("type") {
        Some("cancel") => {
            let mut room = lock(room_ref);
            if room.locked {
                // §10.1.3: cancelling the initial configuration destroys the room.
                let nicks: Vec<String> = room.occupants.keys().cloned().collect();
                for n in nicks {
                    occupants::remove_occupant(&mut room, &n, &[], ItemExtra::default(), 0);
                }
                occupants::forget(ctx.svc, &mut room, room_ref);
            }
            Ok(None)
        }
        Some("submit") => {
            submit(ctx, room_ref, x).await?;
            Ok(None)
        }
        _ => Err(StanzaError::new(Condition::BadRequest)),
    }
}

async fn submit(ctx: &Ctx<'_>, room_ref: &RoomRef, x: &Element) -> Result<(), StanzaError> {
    let limit = ctx.svc.presence_limit;
    let was_persistent = {
        let mut room = lock(room_ref);
        let cfg = form::apply(
            &room.config,
            x,
            ctx.svc.config.max_occupants,
            ctx.svc.config.max_history,
        )?;
        let was_persistent = room.config.persistent;
        let codes = change_codes(&room.config, &cfg);
        let became_members_only = cfg.members_only && !room.config.members_only;
        let moderated_changed = cfg.moderated != room.config.moderated;
        room.config = cfg;
        let was_locked = std::mem::replace(&mut room.locked, false);
        while room.history.len() > room.config.history_length {
            room.history.pop_front();
        }
        if became_members_only {
            // §9.4 / §10.2: non-members are removed with status 322.
            let out: Vec<String> = room
                .occupants
                .values()
                .filter(|o| o.affiliation < Affiliation::Member)
                .map(|o| o.nick.clone())
                .collect();
            for n in out {
                occupants::remove_occupant(
                    &mut room,
                    &n,
                    &[status::MEMBERS_ONLY],
                    ItemExtra::default(),
                    limit,
                );
            }
        }
        if moderated_changed {
            // Roles follow the defaults of the new setting for occupants with no affiliation.
            let moderated = room.config.moderated;
            let nicks: Vec<String> = room
                .occupants
                .values()
                .filter(|o| o.affiliation == Affiliation::None)
                .map(|o| o.nick.clone())
                .collect();
            for n in nicks {
                room.set_role_of(&n, Affiliation::None.default_role(moderated));
                occupants::announce(&mut room, &n, &[status::SELF], limit);
            }
        }
        if !was_locked && !codes.is_empty() {
            announce_change(&room, &codes);
        }
        was_persistent
    };
    let persistent = lock(room_ref).config.persistent;
    if persistent {
        ctx.svc.persist(ctx.server, room_ref).await;
    } else if was_persistent {
        let name = lock(room_ref).name().to_string();
        if let Err(e) = super::store::delete(ctx.server, &ctx.svc.domain, &name).await {
            tracing::error!(error = %e, room = name, "deleting a room failed");
        }
        occupants::forget_if_empty(ctx.svc, room_ref);
    }
    Ok(())
}

/// §10.2.1 status codes for a configuration change: 104 (changed), 170/171 (logging on/off),
/// 172/173 (non-anonymous/semi-anonymous). Empty when nothing changed.
fn change_codes(old: &RoomConfig, new: &RoomConfig) -> Vec<u16> {
    if old == new {
        return Vec::new();
    }
    let mut codes = vec![104];
    if old.logging != new.logging {
        codes.push(if new.logging { 170 } else { 171 });
    }
    if old.whois != new.whois {
        codes.push(if new.whois == Whois::Anyone { 172 } else { 173 });
    }
    codes
}

/// Tell every occupant the configuration changed (a message from the room's bare JID).
fn announce_change(room: &Room, codes: &[u16]) {
    let mut x = Element::builder("x", NS_USER);
    for c in codes {
        x = x.append(
            Element::builder("status", NS_USER)
                .at("code", c.to_string())
                .build(),
        );
    }
    let m = Element::builder("message", NS_CLIENT)
        .at("type", "groupchat")
        .at("id", crate::stanza::random_id())
        .append(x.build())
        .build();
    let bytes = super::fanout_bytes(&m, room.jid.as_str());
    for o in room.occupants.values() {
        o.push(&bytes);
    }
}
