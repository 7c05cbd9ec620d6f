//! XEP-0045 §7.13 voice requests and §8.6 their approval: a visitor of a moderated room
//! sends a `muc#request` form to the room; every moderator gets the approval form (role,
//! real JID, nick, `muc#request_allow`); a moderator who submits it with
//! `muc#request_allow` true grants voice (the same path as a muc#admin role change: rules,
//! announcement).

use minidom::Element;

use super::occupants::{self, ItemExtra};
use super::room::{lock, Role, RoomRef};
use super::Ctx;
use crate::stanza::{BuilderExt, Condition, StanzaError};
use crate::xml::NS_CLIENT;

pub const NS_REQUEST: &str = "http://jabber.org/protocol/muc#request";
const NS_DATA: &str = "jabber:x:data";

/// Whether a message to the room carries a `muc#request` form (`x` is its jabber:x:data).
pub fn is_request(x: &Element) -> bool {
    values(x, "FORM_TYPE").first().map(String::as_str) == Some(NS_REQUEST)
}

fn values(x: &Element, var: &str) -> Vec<String> {
    x.children()
        .filter(|f| f.is("field", NS_DATA) && f.attr("var") == Some(var))
        .flat_map(|f| f.children().filter(|v| v.is("value", NS_DATA)))
        .map(|v| v.text().trim().to_string())
        .collect()
}

fn field(var: &str, kind: &str, label: &str, value: &str) -> Element {
    let mut f = Element::builder("field", NS_DATA)
        .at("var", var)
        .at("type", kind);
    if !label.is_empty() {
        f = f.at("label", label);
    }
    f.append(Element::builder("value", NS_DATA).append(value).build())
        .build()
}

/// A `muc#request` form sent to the room: a request from a visitor, or a moderator's
/// answer to one.
pub async fn handle(ctx: &Ctx<'_>, room_ref: &RoomRef, x: &Element) -> Result<(), StanzaError> {
    if x.attr("type") != Some("submit") {
        return Err(StanzaError::new(Condition::BadRequest));
    }
    if !values(x, "muc#request_allow").is_empty() {
        return approve(ctx, room_ref, x).await;
    }
    let room = lock(room_ref);
    let Some(occ) = room.occupant_of(ctx.from) else {
        return Err(StanzaError::new(Condition::NotAcceptable));
    };
    if occ.role != Role::Visitor {
        // Only visitors lack voice; anything else has nothing to request.
        return Err(StanzaError::with_text(
            Condition::NotAllowed,
            "you have voice",
        ));
    }
    let form = Element::builder("x", NS_DATA)
        .at("type", "form")
        .append(
            Element::builder("title", NS_DATA)
                .append("Voice request")
                .build(),
        )
        .append(field("FORM_TYPE", "hidden", "", NS_REQUEST))
        .append(field(
            "muc#role",
            "list-single",
            "Requested role",
            "participant",
        ))
        .append(field("muc#jid", "jid-single", "User ID", ctx.from.as_str()))
        .append(field(
            "muc#roomnick",
            "text-single",
            "Room Nickname",
            &occ.nick,
        ))
        .append(field(
            "muc#request_allow",
            "boolean",
            "Grant voice to this person?",
            "false",
        ))
        .build();
    let msg = Element::builder("message", NS_CLIENT)
        .at("from", room.jid.as_str())
        .at("id", crate::stanza::random_id())
        .append(form)
        .build();
    let bytes = crate::xml::to_bytes(&msg);
    for nick in &room.moderators {
        if let Some(m) = room.occupants.get(nick) {
            m.push(&bytes);
        }
    }
    Ok(())
}

/// §8.6: a moderator's submitted approval form.
async fn approve(ctx: &Ctx<'_>, room_ref: &RoomRef, x: &Element) -> Result<(), StanzaError> {
    let allow = values(x, "muc#request_allow");
    if !matches!(allow.first().map(String::as_str), Some("1" | "true")) {
        return Ok(()); // denied: nothing happens
    }
    let nick = values(x, "muc#roomnick")
        .into_iter()
        .next()
        .ok_or_else(|| StanzaError::with_text(Condition::BadRequest, "muc#roomnick missing"))?;
    let mut room = lock(room_ref);
    let actor = room
        .occupant_of(ctx.from)
        .filter(|a| a.role == Role::Moderator)
        .map(|a| a.nick.clone())
        .ok_or_else(|| StanzaError::with_text(Condition::Forbidden, "only moderators approve"))?;
    match room.occupants.get(&nick).map(|o| o.role) {
        None => return Err(StanzaError::new(Condition::ItemNotFound)),
        Some(Role::Visitor) => {}
        Some(_) => return Ok(()), // already has voice
    }
    let extra = ItemExtra {
        actor: Some(&actor),
        ..Default::default()
    };
    let limit = ctx.svc.config.max_presence_broadcast;
    occupants::set_role(&mut room, &nick, Role::Participant, extra, limit);
    Ok(())
}
