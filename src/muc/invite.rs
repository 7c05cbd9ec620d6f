//! XEP-0045 §7.8.2 mediated invitations (and declines) sent to the room in a message with
//! `<x xmlns='muc#user'><invite/></x>`. Filled in by the invitations work; the message
//! handler calls [`handle_mediated`] for every non-groupchat message to the room's bare JID
//! carrying a muc#user payload. XEP-0249 direct invitations go client to client and never
//! reach the service.

use minidom::Element;

use super::Ctx;
use crate::stanza::{Condition, StanzaError};

/// `x` is the message's `<x xmlns='muc#user'/>`.
pub async fn handle_mediated(
    _ctx: &Ctx<'_>,
    _room: &super::RoomRef,
    _message: &Element,
    _x: &Element,
) -> Result<(), StanzaError> {
    Err(StanzaError::new(Condition::FeatureNotImplemented))
}
