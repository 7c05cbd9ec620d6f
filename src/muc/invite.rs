//! XEP-0045 §7.8.2 mediated invitations (and declines) sent to the room in a message with
//! `<x xmlns='muc#user'><invite/></x>`. The message handler calls [`handle_mediated`] for
//! every non-groupchat message to the room's bare JID carrying a muc#user payload. XEP-0249
//! direct invitations go client to client and never reach the service.
//!
//! An occupant invites; in a members-only room only admins and owners may, unless the room
//! allows invites (`muc#roomconfig_allowinvites`), and the invitee is then added to the
//! member list (§7.8.2: "the room SHOULD add the invitee to the member list"). In an open
//! room any occupant with a role may invite. The room sends each invitee
//! `<invite from='inviter'/>` (with the room's password when it has one); a decline from the
//! invitee goes to the inviter named in it as `<decline from='invitee'/>`.

use jid::Jid;
use minidom::Element;

use super::occupants::{self, ItemExtra};
use super::room::{lock, Affiliation, Role, RoomRef};
use super::{Ctx, NS_USER};
use crate::stanza::{parse_jid, BuilderExt, Condition, StanzaError};
use crate::xml::NS_CLIENT;

/// `x` is the message's `<x xmlns='muc#user'/>`.
pub async fn handle_mediated(
    ctx: &Ctx<'_>,
    room: &RoomRef,
    _message: &Element,
    x: &Element,
) -> Result<(), StanzaError> {
    let invites: Vec<&Element> = x.children().filter(|c| c.is("invite", NS_USER)).collect();
    if let Some(decline) = x.get_child("decline", NS_USER) {
        return forward_decline(ctx, room, decline);
    }
    if invites.is_empty() {
        return Err(StanzaError::new(Condition::BadRequest));
    }
    let (room_jid, password, added) = {
        let mut r = lock(room);
        let Some(inviter) = r.occupant_of(ctx.from) else {
            return Err(StanzaError::with_text(
                Condition::NotAcceptable,
                "only occupants invite",
            ));
        };
        let inviter_aff = inviter.affiliation;
        if inviter.role == Role::None || inviter.role == Role::Visitor && r.config.moderated {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        let admin = inviter_aff >= Affiliation::Admin;
        if r.config.members_only && !admin && !r.config.allow_invites {
            return Err(StanzaError::with_text(
                Condition::Forbidden,
                "only admins invite to this members-only room",
            ));
        }
        let mut targets = Vec::new();
        for i in &invites {
            let to = i.attr("to").ok_or_else(|| {
                StanzaError::with_text(Condition::BadRequest, "invite without 'to'")
            })?;
            targets.push(parse_jid(to)?);
        }
        let mut added = false;
        if r.config.members_only {
            let limit = ctx.svc.config.max_presence_broadcast;
            for t in &targets {
                let bare = t.to_bare();
                if r.affiliation(&bare) == Affiliation::None {
                    occupants::set_affiliation(
                        &mut r,
                        &bare,
                        Affiliation::Member,
                        ItemExtra::default(),
                        limit,
                    );
                    added = true;
                }
            }
        }
        (r.jid.clone(), r.config.password.clone(), added)
    };
    if added {
        ctx.svc.persist(ctx.server, room).await;
    }
    for i in invites {
        let Some(Ok(to)) = i.attr("to").map(parse_jid) else {
            continue;
        };
        let mut inv = Element::builder("invite", NS_USER).at("from", ctx.from.as_str());
        if let Some(r) = i.get_child("reason", NS_USER) {
            inv = inv.append(r.clone());
        }
        let mut ux = Element::builder("x", NS_USER).append(inv.build());
        if !password.is_empty() {
            ux = ux.append(
                Element::builder("password", NS_USER)
                    .append(password.as_str())
                    .build(),
            );
        }
        let msg = Element::builder("message", NS_CLIENT)
            .at("from", room_jid.as_str())
            .at("to", to.as_str())
            .at("id", crate::stanza::random_id())
            .append(ux.build())
            .build();
        ctx.server.route(&to, crate::xml::to_bytes(&msg));
    }
    Ok(())
}

/// §7.8.2 "Declining an invitation": the room passes the decline to the inviter.
fn forward_decline(ctx: &Ctx<'_>, room: &RoomRef, decline: &Element) -> Result<(), StanzaError> {
    let to: Jid = decline
        .attr("to")
        .map(parse_jid)
        .transpose()?
        .ok_or_else(|| StanzaError::with_text(Condition::BadRequest, "decline without 'to'"))?;
    let room_jid = lock(room).jid.clone();
    let mut d = Element::builder("decline", NS_USER).at("from", ctx.from.to_bare().as_str());
    if let Some(r) = decline.get_child("reason", NS_USER) {
        d = d.append(r.clone());
    }
    let msg = Element::builder("message", NS_CLIENT)
        .at("from", room_jid.as_str())
        .at("to", to.as_str())
        .at("id", crate::stanza::random_id())
        .append(Element::builder("x", NS_USER).append(d.build()).build())
        .build();
    ctx.server.route(&to, crate::xml::to_bytes(&msg));
    Ok(())
}
