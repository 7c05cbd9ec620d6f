//! The room archive seam (XEP-0313 on rooms, and history on join from it). The core keeps
//! an in-memory ring of `history_length` messages per room ([`super::room::Room::history`]);
//! the archive work may store messages here and serve MAM queries to the room.

use bytes::Bytes;
use minidom::Element;

use super::room::Room;

use super::Ctx;
use crate::stanza::{Condition, StanzaError};

/// Called under the room's lock, before the fan-out, for a groupchat message with a body
/// in a room whose config has `logging` on: returns the bytes every occupant gets (e.g. with
/// a XEP-0359 `<stanza-id by='room@service'/>` spliced in, see
/// [`super::messages::splice_child`]) and the archive id to pass to [`archived`].
/// Default: unchanged, no id.
pub fn stamp(_room: &Room, bytes: Bytes) -> (Bytes, Option<String>) {
    (bytes, None)
}

/// A groupchat message was fanned out in a logging room (`bytes`: as occupants got it, from
/// `room@service/nick`, no 'to', after [`stamp`]). Called with the room unlocked, after the
/// fan-out. `real` is the sender's bare JID; `id` what [`stamp`] returned.
pub async fn archived(
    _ctx: &Ctx<'_>,
    _room_jid: &jid::BareJid,
    _real: &jid::BareJid,
    _bytes: &Bytes,
    _id: Option<&str>,
) {
}

/// Whether an IQ payload namespace to the room belongs to [`handle_iq`] (`urn:xmpp:mam:2`).
pub fn handles_namespace(_ns: &str) -> bool {
    false
}

/// A MAM query to the room (`payload` is the IQ's child).
pub async fn handle_iq(
    _ctx: &Ctx<'_>,
    _room: &super::RoomRef,
    _iq: &Element,
) -> Result<(), StanzaError> {
    Err(StanzaError::new(Condition::FeatureNotImplemented))
}

/// Room disco#info features the archive adds (`urn:xmpp:mam:2`, `urn:xmpp:sid:0`) when the
/// room logs.
pub fn room_features(_logging: bool) -> &'static [&'static str] {
    &[]
}
