//! The room archive seam (XEP-0313 on rooms, and history on join from it). The core keeps
//! an in-memory ring of `history_length` messages per room ([`super::room::Room::history`]);
//! the archive work may store messages here and serve MAM queries to the room.

use minidom::Element;

use super::Ctx;
use crate::stanza::{Condition, StanzaError};

/// A groupchat message was accepted for fan-out (`bytes`: the stanza as occupants get it,
/// from `room@service/nick`, with no 'to'). Called with the room unlocked, after the
/// fan-out, only when the room's config has `logging` on. `real` is the sender's bare JID.
pub async fn archived(
    _ctx: &Ctx<'_>,
    _room_jid: &jid::BareJid,
    _real: &jid::BareJid,
    _bytes: &bytes::Bytes,
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
