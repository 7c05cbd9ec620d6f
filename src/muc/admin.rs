//! XEP-0045 §9 (admin) and §8 (moderator) use cases over `http://jabber.org/protocol/muc#admin`:
//! kick, ban, voice, the member/admin/owner/outcast lists; and XEP-0425 message moderation.
//!
//! Filled in by the moderation work. The entry points below are what the rest of the
//! service calls; they may use [`super::occupants`]'s broadcast helpers (`remove_occupant`
//! with status 307/301/321/322, `set_role`, `set_affiliation`) to announce changes.

use minidom::Element;

use super::Ctx;
use crate::stanza::{Condition, StanzaError};

/// The admin namespace this file answers.
pub const NS_ADMIN: &str = "http://jabber.org/protocol/muc#admin";

/// An IQ get/set to the room's bare JID whose payload is `<query xmlns='muc#admin'/>`
/// (or another namespace routed here: XEP-0425 `urn:xmpp:message-moderate:*`). `payload` is
/// the IQ's first child; Ok(Some(el)) is the result payload, Ok(None) an empty result.
pub async fn handle_iq(
    _ctx: &Ctx<'_>,
    _room: &super::RoomRef,
    _iq_type: &str,
    _payload: &Element,
) -> Result<Option<Element>, StanzaError> {
    Err(StanzaError::new(Condition::FeatureNotImplemented))
}

/// Whether an IQ payload namespace belongs to [`handle_iq`].
pub fn handles_namespace(ns: &str) -> bool {
    ns == NS_ADMIN
}

/// Extra disco#info features of a room contributed by moderation (e.g. XEP-0425's
/// `urn:xmpp:message-moderate:1`).
pub fn room_features() -> &'static [&'static str] {
    &[]
}
