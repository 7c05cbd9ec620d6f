//! XEP-0045 §10.9 room destruction (`<destroy/>` in muc#owner), with an alternate venue.
//! The owner IQ handler calls [`handle_destroy`] when the muc#owner query carries
//! `<destroy/>`, having checked that the sender is an owner.
//!
//! Every occupant's sessions get an unavailable presence from their own occupant JID with
//! `<item affiliation='none' role='none'/>` and the `<destroy/>` (alternate venue `jid`,
//! `<reason/>`, `<password/>` as the owner gave them); the room leaves the registry, and its
//! row leaves storage with its affiliations and archive.

use minidom::Element;

use super::room::{lock, RoomRef};
use super::{Ctx, NS_OWNER, NS_USER};
use crate::stanza::{BuilderExt, Condition, StanzaError};
use crate::xml::NS_CLIENT;

/// The muc#user `<destroy/>` occupants get, from the owner's muc#owner one.
fn announcement(destroy: &Element) -> Result<Element, StanzaError> {
    let mut d = Element::builder("destroy", NS_USER);
    if let Some(j) = destroy.attr("jid") {
        let venue = crate::stanza::parse_jid(j)?;
        d = d.at("jid", venue.to_string());
    }
    for (name, ns) in [("reason", NS_OWNER), ("password", NS_OWNER)] {
        if let Some(c) = destroy.get_child(name, ns) {
            d = d.append(Element::builder(name, NS_USER).append(c.text()).build());
        }
    }
    Ok(d.build())
}

pub async fn handle_destroy(
    ctx: &Ctx<'_>,
    room: &RoomRef,
    destroy: &Element,
) -> Result<(), StanzaError> {
    let d = announcement(destroy)?;
    let name = {
        let mut r = lock(room);
        for occ in r.occupants.values() {
            let p = Element::builder("presence", NS_CLIENT)
                .at("type", "unavailable")
                .at("from", format!("{}/{}", r.jid, occ.nick))
                .append(
                    Element::builder("x", NS_USER)
                        .append(
                            Element::builder("item", NS_USER)
                                .at("affiliation", "none")
                                .at("role", "none")
                                .build(),
                        )
                        .append(d.clone())
                        .build(),
                )
                .build();
            occ.push(&crate::xml::to_bytes(&p));
        }
        r.occupants.clear();
        r.by_session.clear();
        r.moderators.clear();
        r.history.clear();
        // Out of the registry under the lock: a joiner that raced with us looks again.
        super::occupants::forget(ctx.svc, &mut r, room);
        r.name().to_string()
    };
    // Archive rows still queued would otherwise land after the deletion.
    ctx.server.archive.writer.flush().await;
    super::store::destroy(ctx.server, &ctx.svc.domain, &name)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, room = name, "deleting a destroyed room failed");
            StanzaError::new(Condition::InternalServerError)
        })
}
