//! Messages to a room (XEP-0045 §7.4 groupchat, §8.1 subject) and to an occupant (§7.5
//! private messages).
//!
//! The groupchat path is the hot path: the sender's stanza (already validated by the stream
//! parser) is rewritten once at the byte level (`from` = the sender's occupant JID, `to`
//! removed, a XEP-0421 `<occupant-id/>` spliced before the end tag), and the resulting
//! `Bytes` is pushed to every session of every occupant as [`Deliver::ToSelf`]: each
//! recipient's session task splices its own `to` while writing (RFC 6120 clients expect a
//! `to`, and Conversations reads it), so the sender pays one rewrite plus N queue pushes and
//! the per-recipient copy happens on the recipients' tasks, in parallel. Everything in the
//! payload (bodies, XEP-0372 references, receipts, OMEMO...) passes through untouched; only a
//! spoofed `<occupant-id/>` sends the stanza through the tree path to remove it.

use bytes::Bytes;
use memchr::memmem;
use minidom::Element;

use super::room::{lock, HistoryEntry, Role, RoomRef};
use super::{bounce, Ctx, NS_OCCUPANT_ID, NS_USER};
use crate::router::Deliver;
use crate::stanza::{now_ms, BuilderExt, Condition, StanzaError};
use crate::xml::NS_CLIENT;

/// A message to the room's bare JID.
pub async fn to_room(ctx: &Ctx<'_>) {
    let Some(name) = ctx.to.node().map(|n| n.as_str().to_string()) else {
        return;
    };
    let Some(room_ref) = ctx.svc.room(ctx.server, &name).await else {
        return bounce(ctx, StanzaError::new(Condition::ItemNotFound));
    };
    match ctx.stanza.type_.as_deref() {
        Some("groupchat") => {
            if let Err(e) = groupchat(ctx, &room_ref).await {
                bounce(ctx, e);
            }
        }
        Some("error") => {}
        // §7.8.2 mediated invitations (and declines), §8.6 voice requests: muc#user payloads.
        _ => {
            let Ok(el) = ctx.stanza.element() else {
                return;
            };
            match el.get_child("x", NS_USER) {
                Some(x) => {
                    if let Err(e) = super::invite::handle_mediated(ctx, &room_ref, &el, x).await {
                        bounce(ctx, e);
                    }
                }
                None => match el.get_child("x", "jabber:x:data") {
                    Some(x) if super::voice::is_request(x) => {
                        if let Err(e) = super::voice::handle(ctx, &room_ref, x).await {
                            bounce(ctx, e);
                        }
                    }
                    _ => bounce(ctx, StanzaError::new(Condition::BadRequest)),
                },
            }
        }
    }
}

fn contains(raw: &[u8], needle: &[u8]) -> bool {
    memmem::find(raw, needle).is_some()
}

async fn groupchat(ctx: &Ctx<'_>, room_ref: &RoomRef) -> Result<(), StanzaError> {
    let raw = ctx.stanza.raw();
    let has_body = contains(raw, b"<body");
    // §8.1: a subject change is a groupchat message with a subject and no body.
    let is_subject = !has_body && contains(raw, b"<subject");
    // XEP-0424: a retraction of an archived message is checked against its author first.
    let retracts = super::archive::retraction(ctx, room_ref).await?;
    let mut deepest = 0;
    let pending = {
        let mut room = lock(room_ref);
        let Some(nick) = room.by_session.get(ctx.from) else {
            return Err(StanzaError::new(Condition::NotAcceptable));
        };
        let occ = &room.occupants[nick.as_str()];
        if occ.role == Role::Visitor || occ.role == Role::None {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        let may_set_subject = occ.role == Role::Moderator || room.config.change_subject;
        let from = format!("{}/{}", room.jid, occ.nick);
        let out = outgoing(ctx, &from, &occ.occupant_id, None)?;
        // The room's stanza-id goes into the shared bytes (fan-out, history, archive).
        let (out, pending) = if is_subject {
            (out, None)
        } else {
            super::archive::stamp(&room, &occ.nick, ctx.from, ctx.stanza, out)
        };
        if is_subject {
            if !may_set_subject {
                return Err(StanzaError::new(Condition::Forbidden));
            }
            let text = subject_text(ctx)?;
            room.subject = Some(super::room::Subject {
                nick: occ.nick.clone(),
                text,
            });
        } else if has_body {
            room.remember(HistoryEntry {
                bytes: out.clone(),
                at_ms: now_ms(),
            });
        }
        for o in room.occupants.values() {
            deepest = deepest.max(o.push_depth(&out));
        }
        pending
    };
    // Flow control: when a recipient is more than half a queue behind, the sender's session
    // pauses before reading its next stanza, so a fast sender lets slow readers catch up
    // before they reach the slow-consumer limit. A reader that stays behind is still
    // disconnected when its queue is full, which lifts the pause for everyone.
    let pause = ctx.svc.config.sender_pause_ms;
    // `deepest` is the fullest recipient queue in per mille of its capacity.
    if deepest > 500 && pause > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    }
    if is_subject {
        ctx.svc.persist(ctx.server, room_ref).await;
    }
    super::archive::archived(ctx, pending).await;
    if let Some(uid) = retracts {
        let retracted = super::archive::self_retracted(ctx.stanza.id.as_deref());
        super::archive::tombstone(ctx, room_ref, &uid, retracted).await?;
    }
    Ok(())
}

fn subject_text(ctx: &Ctx<'_>) -> Result<String, StanzaError> {
    let el = ctx
        .stanza
        .element()
        .map_err(|_| StanzaError::new(Condition::BadRequest))?;
    Ok(el
        .get_child("subject", NS_CLIENT)
        .map(|s| s.text())
        .unwrap_or_default())
}

/// The stanza as recipients get it: `from` replaced, `to` removed, `extra` (a muc#user
/// marker for private messages) and the occupant id spliced in before the end tag.
fn outgoing(
    ctx: &Ctx<'_>,
    from: &str,
    occupant_id: &str,
    extra: Option<&str>,
) -> Result<Bytes, StanzaError> {
    let st = ctx.stanza;
    let mut child = super::occupant_id::element(occupant_id);
    if let Some(e) = extra {
        child.insert_str(0, e);
    }
    if !contains(st.raw(), NS_OCCUPANT_ID.as_bytes()) {
        let base = st.rewrite(Some(from), Some(""));
        if let Some(b) = crate::xml::splice_child(&base, &child) {
            return Ok(b);
        }
    }
    // XEP-0421 §4: strip occupant ids the sender put in (or a self-closing stanza).
    let mut el = st
        .element()
        .map_err(|_| StanzaError::new(Condition::BadRequest))?;
    while el.remove_child("occupant-id", NS_OCCUPANT_ID).is_some() {}
    if extra.is_some() {
        el.append_child(Element::builder("x", NS_USER).build());
    }
    el.append_child(
        Element::builder("occupant-id", NS_OCCUPANT_ID)
            .at("id", occupant_id)
            .build(),
    );
    Ok(super::fanout_bytes(&el, from))
}

/// A message to `room@service/nick`: a private message (§7.5).
pub async fn to_occupant(ctx: &Ctx<'_>) {
    let (Some(node), Some(nick)) = (ctx.to.node(), ctx.to.resource()) else {
        return;
    };
    match ctx.stanza.type_.as_deref() {
        Some("error") => return,
        Some("groupchat") => return bounce(ctx, StanzaError::new(Condition::BadRequest)),
        _ => {}
    }
    let Some(room_ref) = ctx.svc.rooms.get(node.as_str()) else {
        return bounce(ctx, StanzaError::new(Condition::ItemNotFound));
    };
    if let Err(e) = private(ctx, &room_ref, nick.as_str()) {
        bounce(ctx, e);
    }
}

fn private(ctx: &Ctx<'_>, room_ref: &RoomRef, to_nick: &str) -> Result<(), StanzaError> {
    let room = lock(room_ref);
    let Some(sender) = room.occupant_of(ctx.from) else {
        return Err(StanzaError::new(Condition::NotAcceptable));
    };
    if sender.role == Role::None {
        return Err(StanzaError::new(Condition::Forbidden));
    }
    if !room.config.allow_private_messages && sender.role != Role::Moderator {
        return Err(StanzaError::new(Condition::NotAllowed));
    }
    let Some(target) = room.occupants.get(to_nick) else {
        return Err(StanzaError::new(Condition::ItemNotFound));
    };
    let from = format!("{}/{}", room.jid, sender.nick);
    let marker = format!("<x xmlns='{NS_USER}'/>");
    let out = outgoing(ctx, &from, &sender.occupant_id, Some(&marker))?;
    for s in &target.sessions {
        s.handle.send(Deliver::ToSelf(out.clone()));
    }
    Ok(())
}
