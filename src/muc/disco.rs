//! Service discovery (XEP-0030) on the service and its rooms (XEP-0045 §6): the service's
//! identity and features, the public rooms, and a room's features (one of each §15.2 pair)
//! with the §15.5.4 `muc#roominfo` form.

use minidom::Element;

use super::room::{lock, Room, Whois};
use super::{MucService, NS_MUC, NS_OCCUPANT_ID};
use crate::modules::disco::{NS_INFO, NS_ITEMS};
use crate::services::Service;
use crate::stanza::BuilderExt;

pub const NS_SELF_PING: &str = "http://jabber.org/protocol/muc#self-ping-optimization";
/// §7.4 (1.31): the room reflects the sender's message 'id'.
pub const NS_STABLE_ID: &str = "http://jabber.org/protocol/muc#stable_id";

fn feature(var: &str) -> Element {
    Element::builder("feature", NS_INFO).at("var", var).build()
}

fn identity(name: &str) -> Element {
    Element::builder("identity", NS_INFO)
        .at("category", "conference")
        .at("type", "text")
        .at("name", name)
        .build()
}

/// disco#info on the service's domain.
pub fn service_info(svc: &MucService) -> Element {
    Element::builder("query", NS_INFO)
        .append(identity(svc.name()))
        .append_all(
            [
                NS_INFO,
                NS_ITEMS,
                NS_MUC,
                NS_STABLE_ID,
                NS_OCCUPANT_ID,
                NS_SELF_PING,
                "urn:xmpp:ping",
            ]
            .into_iter()
            .map(feature),
        )
        .build()
}

/// disco#items on the service: the public rooms (§6.3), sorted by JID. Locked rooms (not yet
/// configured) are not listed.
pub fn service_items(svc: &MucService) -> Element {
    let mut items: Vec<(String, String)> = svc
        .rooms
        .all()
        .iter()
        .filter_map(|r| {
            let r = lock(r);
            (r.config.public && !r.locked).then(|| (r.jid.to_string(), r.config.name.clone()))
        })
        .collect();
    items.sort();
    Element::builder("query", NS_ITEMS)
        .append_all(items.into_iter().map(|(jid, name)| {
            let mut i = Element::builder("item", NS_ITEMS).at("jid", jid.as_str());
            if !name.is_empty() {
                i = i.at("name", name.as_str());
            }
            i.build()
        }))
        .build()
}

/// disco#info on a room (§6.4).
pub fn room_info(room: &Room) -> Element {
    let c = &room.config;
    let pick = |on: bool, a: &'static str, b: &'static str| if on { a } else { b };
    let mut features = vec![
        NS_INFO,
        NS_MUC,
        NS_STABLE_ID,
        NS_OCCUPANT_ID,
        NS_SELF_PING,
        pick(c.persistent, "muc_persistent", "muc_temporary"),
        pick(c.public, "muc_public", "muc_hidden"),
        pick(c.members_only, "muc_membersonly", "muc_open"),
        pick(c.moderated, "muc_moderated", "muc_unmoderated"),
        pick(
            !c.password.is_empty(),
            "muc_passwordprotected",
            "muc_unsecured",
        ),
        pick(
            c.whois == Whois::Anyone,
            "muc_nonanonymous",
            "muc_semianonymous",
        ),
    ];
    features.extend_from_slice(super::admin::room_features());
    features.extend_from_slice(super::archive::room_features(c.logging));
    let name = if c.name.is_empty() {
        room.name()
    } else {
        c.name.as_str()
    };
    let subject = room.subject.as_ref().map(|s| s.text.as_str()).unwrap_or("");
    Element::builder("query", NS_INFO)
        .append(identity(name))
        .append_all(features.into_iter().map(feature))
        .append(super::form::info_form(c, room.occupants.len(), subject))
        .build()
}

/// disco#items on a room: empty (§6.5 lets the service keep occupants private).
pub fn room_items() -> Element {
    Element::builder("query", NS_ITEMS).build()
}
