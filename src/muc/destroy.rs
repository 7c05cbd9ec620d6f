//! XEP-0045 §10.9 room destruction (`<destroy/>` in muc#owner), with an alternate venue.
//! Filled in by the moderation work; the owner IQ handler calls [`handle_destroy`] when the
//! muc#owner query carries `<destroy/>`.

use minidom::Element;

use super::Ctx;
use crate::stanza::{Condition, StanzaError};

/// `destroy` is the `<destroy/>` child of the owner's query. The caller has checked that
/// the sender is an owner. On success the room must be gone from the registry
/// (`ctx.svc.rooms.remove`) and from storage ([`super::store::delete`]), and every
/// occupant told with an unavailable presence carrying `<destroy/>`.
pub async fn handle_destroy(
    _ctx: &Ctx<'_>,
    _room: &super::RoomRef,
    _destroy: &Element,
) -> Result<(), StanzaError> {
    Err(StanzaError::new(Condition::FeatureNotImplemented))
}
