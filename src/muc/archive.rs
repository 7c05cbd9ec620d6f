//! XEP-0313 on rooms (§5 of XEP-0313, with XEP-0359 stanza ids), XEP-0424 retractions of
//! one's own room messages, and the room archive behind history on join.
//!
//! - [`stamp`]: with the room locked, before the fan-out, a message worth archiving gets the
//!   room's `<stanza-id by='room@service'/>` spliced into the one shared serialization (every
//!   occupant, the in-memory history ring and the archive get the same bytes), and a row is
//!   prepared; [`archived`] queues it on the archive's background writer once the room is
//!   unlocked (the fan-out never waits on the database).
//! - [`handle_iq`]: `urn:xmpp:mam:2` queries to the room's bare JID, answered by
//!   [`crate::mam::query::run_on`] over the room's archive (same paging, filters and UIDs as
//!   user archives). Who may read: XEP-0313 §5 "has the right to enter it": never an outcast;
//!   in a members-only room only members, admins and owners.
//! - [`retraction`] / [`tombstone`]: a groupchat `<retract/>` (XEP-0424) is checked against
//!   the archived original (only its author may retract it: forbidden otherwise), fanned out
//!   and archived like any message, then the original is replaced by a tombstone in the
//!   archive and in the history ring. XEP-0425 moderation ([`super::admin`]) uses the same
//!   tombstone path.
//! - [`seed_history`]: a logging room loaded from storage (after a restart) refills its
//!   history ring from the archive's tail, so history on join is served from the archive.

use bytes::{Bytes, BytesMut};
use jid::BareJid;
use memchr::memmem;
use minidom::Element;

use super::room::{lock, HistoryEntry, Room, RoomRef};
use super::{reply, Ctx, NS_OCCUPANT_ID, NS_USER};
use crate::mam::{NS_MAM, NS_SID};
use crate::stanza::{now_ms, xep82_datetime, Condition, StanzaError};
use crate::storage::{ArchiveFilter, ArchiveOwner, Direction, NewRoomArchived};
use crate::xml::{self, NS_CLIENT};

pub const NS_RETRACT: &str = "urn:xmpp:message-retract:1";
pub const NS_MODERATE: &str = "urn:xmpp:message-moderate:1";

/// A row prepared under the room lock, queued by [`archived`] after the fan-out.
pub struct Pending(NewRoomArchived);

fn contains(raw: &[u8], needle: &[u8]) -> bool {
    memmem::find(raw, needle).is_some()
}

/// Whether a groupchat message goes into the room archive (XEP-0313 §5: messages with a
/// body; also retractions, which XEP-0424 requires archived, and encrypted payloads).
/// Bytes first: only a message carrying XEP-0334 hints is parsed.
fn worth_archiving(st: &xml::Stanza) -> bool {
    let raw = st.raw();
    if contains(raw, b"urn:xmpp:hints") {
        return st.element().is_ok_and(|el| {
            crate::mam::worth_archiving(&el) || el.has_child("retract", NS_RETRACT)
        });
    }
    contains(raw, b"<body")
        || contains(raw, NS_RETRACT.as_bytes())
        || contains(raw, b"eu.siacs.conversations.axolotl")
        || contains(raw, b"urn:xmpp:omemo:2")
}

/// `bytes` with the stream's default namespace declared on the top element (the archive
/// stores self-contained stanzas: results splice them inside `<forwarded/>`).
fn standalone(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let head_end = text.find('>').unwrap_or(text.len());
    if text[..head_end].contains(" xmlns=") {
        return text.into_owned();
    }
    let at = text[1..]
        .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
        .map_or(text.len(), |p| p + 1);
    format!("{} xmlns='{NS_CLIENT}'{}", &text[..at], &text[at..])
}

/// With the room locked, before the fan-out: `<stanza-id/>`s claiming to be the room's are
/// removed (XEP-0359 §7: only the room assigns those); then, when the room logs and the
/// message is worth archiving, `out` (the shared fan-out bytes) gets the room's stanza-id
/// and a row is prepared. Otherwise `out` is returned as it is.
pub fn stamp(
    room: &Room,
    nick: &str,
    sender: &jid::FullJid,
    st: &xml::Stanza,
    out: Bytes,
) -> (Bytes, Option<Pending>) {
    let out = strip_spoofed_ids(room, out);
    if !room.config.logging || !worth_archiving(st) {
        return (out, None);
    }
    let has_origin = contains(st.raw(), b"origin-id");
    let origin_id = has_origin
        .then(|| st.element().ok())
        .flatten()
        .and_then(|el| {
            el.get_child("origin-id", NS_SID)
                .and_then(|o| o.attr("id"))
                .map(str::to_string)
        });
    prepare(room, nick, sender.to_bare().as_str(), origin_id, out)
}

/// [`stamp`] for a message the room itself sends (`from` the room's bare JID: XEP-0425
/// moderation announcements), always archived when the room logs.
pub fn stamp_service(room: &Room, out: Bytes) -> (Bytes, Option<Pending>) {
    if !room.config.logging {
        return (out, None);
    }
    prepare(room, "", room.jid.as_str(), None, out)
}

fn prepare(
    room: &Room,
    nick: &str,
    sender: &str,
    origin_id: Option<String>,
    out: Bytes,
) -> (Bytes, Option<Pending>) {
    let uid = crate::mam::new_uid();
    let sid = format!(
        "<stanza-id xmlns='{NS_SID}' by='{}' id='{uid}'/>",
        xml::escape(room.jid.as_str())
    );
    let Some(stamped) = crate::xml::splice_child(&out, &sid) else {
        return (out, None);
    };
    let row = NewRoomArchived {
        room: (room.jid.domain().to_string(), room.name().to_string()),
        stanza_id: uid,
        stamp_ms: now_ms(),
        nick: nick.to_string(),
        origin_id,
        sender: sender.to_string(),
        stanza: archive_text(&stamped),
    };
    (stamped, Some(Pending(row)))
}

/// Rebuild `el` without the children `drop` selects; None when there were none.
fn without(mut el: Element, drop: impl Fn(&Element) -> bool) -> Option<Element> {
    if !el.children().any(&drop) {
        return None;
    }
    for node in el.take_nodes() {
        if !matches!(&node, minidom::Node::Element(c) if drop(c)) {
            el.append_node(node);
        }
    }
    Some(el)
}

/// The fan-out bytes without stanza-ids `by` the room that the sender put in (rare: only
/// clients replaying stanzas send these, so only they pay for a parse).
fn strip_spoofed_ids(room: &Room, out: Bytes) -> Bytes {
    if !contains(&out, NS_SID.as_bytes()) {
        return out;
    }
    let Ok(el) = standalone(&out).parse::<Element>() else {
        return out;
    };
    let spoofed = |c: &Element| {
        c.is("stanza-id", NS_SID)
            && c.attr("by")
                .and_then(|b| BareJid::new(b).ok())
                .is_some_and(|b| b == room.jid)
    };
    match without(el, spoofed) {
        Some(clean) => xml::to_bytes(&clean),
        None => out,
    }
}

/// The archive's copy: self-contained, and without any `<x xmlns='muc#user'/>` the sender
/// put in (XEP-0313 §5.1.2: the archive MUST strip those, they could spoof a real JID).
fn archive_text(stamped: &[u8]) -> String {
    let text = standalone(stamped);
    if !text.contains(NS_USER) {
        return text;
    }
    let Ok(el) = text.parse::<Element>() else {
        return text;
    };
    match without(el, |c| c.is("x", NS_USER)) {
        Some(clean) => String::from_utf8_lossy(&xml::to_bytes(&clean)).into_owned(),
        None => text,
    }
}

/// After the fan-out: queue the row on the archive writer.
pub async fn archived(ctx: &Ctx<'_>, pending: Option<Pending>) {
    if let Some(Pending(row)) = pending {
        ctx.server.archive.writer.write_room(vec![row]).await;
    }
}

/// Whether an IQ payload namespace to the room belongs to [`handle_iq`].
pub fn handles_namespace(ns: &str) -> bool {
    ns == NS_MAM
}

/// XEP-0313 §5: who may read a room's archive now ("has the right to enter it"): never an
/// outcast; in a members-only or password-protected room, members, admins, owners and
/// whoever is in the room now (they got in: with the password, or invited).
fn may_read(room: &Room, requester: &jid::FullJid) -> bool {
    use super::room::Affiliation;
    let aff = room.affiliation(&requester.to_bare());
    if aff == Affiliation::Outcast {
        return false;
    }
    let restricted = room.config.members_only || !room.config.password.is_empty();
    !restricted || aff >= Affiliation::Member || room.occupant_of(requester).is_some()
}

/// Whether results show senders' real JIDs to this requester: everyone in a non-anonymous
/// room; in a semi-anonymous one, those who see them live (moderators) and admins/owners.
fn sees_real_jids(room: &Room, requester: &jid::FullJid) -> bool {
    use super::room::{Affiliation, Role, Whois};
    room.config.whois == Whois::Anyone
        || room.affiliation(&requester.to_bare()) >= Affiliation::Admin
        || room
            .occupant_of(requester)
            .is_some_and(|o| o.role == Role::Moderator)
}

/// A MAM query (or form/metadata request) to the room. Replies itself: the result messages
/// first, then the IQ result with the `<fin/>`.
pub async fn handle_iq(ctx: &Ctx<'_>, room_ref: &RoomRef, iq: &Element) -> Result<(), StanzaError> {
    let payload = iq
        .children()
        .next()
        .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
    let (room_jid, real_jids) = {
        let room = lock(room_ref);
        if !room.config.logging {
            return Err(StanzaError::with_text(
                Condition::FeatureNotImplemented,
                "this room does not keep an archive",
            ));
        }
        if !may_read(&room, ctx.from) {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        (room.jid.clone(), sees_real_jids(&room, ctx.from))
    };
    let of = ArchiveOwner::Room((
        room_jid.domain().as_str(),
        room_jid.node().map(|n| n.as_str()).unwrap_or(""),
    ));
    let set = iq.attr("type") == Some("set");
    let result = match (payload.name(), set) {
        ("query", false) => Some(crate::mam::query::form()),
        ("query", true) => {
            let q = crate::mam::query::parse(payload)?;
            let mut out = BytesMut::new();
            let fin = crate::mam::query::run_on(
                ctx.server, of, &room_jid, ctx.from, q, real_jids, &mut out,
            )
            .await?;
            if !out.is_empty() {
                reply(ctx, out.freeze());
            }
            Some(fin)
        }
        ("metadata", false) => Some(crate::mam::query::metadata_on(ctx.server, of).await?),
        _ => return Err(StanzaError::new(Condition::BadRequest)),
    };
    let res = crate::stanza::iq_result(
        iq.attr("id").unwrap_or(""),
        Some(room_jid.as_str()),
        Some(ctx.from.as_str()),
        result,
    );
    reply(ctx, xml::to_bytes(&res));
    Ok(())
}

/// Room disco#info features the archive adds when the room logs.
pub fn room_features(logging: bool) -> &'static [&'static str] {
    if logging {
        &[
            NS_MAM,
            crate::mam::NS_MAM_EXTENDED,
            NS_SID,
            NS_RETRACT,
            "urn:xmpp:message-retract:1#tombstone",
            NS_MODERATE,
        ]
    } else {
        &[]
    }
}

/// (service, node) of a room JID.
fn room_key(jid: &BareJid) -> (&str, &str) {
    (
        jid.domain().as_str(),
        jid.node().map(|n| n.as_str()).unwrap_or(""),
    )
}

/// A XEP-0424 retraction in a groupchat message, checked before the fan-out: Ok(Some(uid))
/// is the archived message it retracts (its author is the sender), Ok(None) a message
/// without a retraction (or one naming nothing archived: passed through untouched),
/// Err(forbidden) a retraction of someone else's message.
pub async fn retraction(ctx: &Ctx<'_>, room_ref: &RoomRef) -> Result<Option<String>, StanzaError> {
    if !contains(ctx.stanza.raw(), NS_RETRACT.as_bytes()) {
        return Ok(None);
    }
    let Ok(el) = ctx.stanza.element() else {
        return Ok(None);
    };
    let Some(id) = el
        .get_child("retract", NS_RETRACT)
        .and_then(|r| r.attr("id"))
    else {
        return Ok(None);
    };
    let (room_jid, logging) = {
        let r = lock(room_ref);
        (r.jid.clone(), r.config.logging)
    };
    if !logging {
        return Ok(None);
    }
    ctx.server.archive.writer.flush().await;
    let m = ctx.server.storage.muc();
    let key = room_key(&room_jid);
    let found = match m.archived(key, id, false).await? {
        Some(f) => Some(f),
        None => m.archived(key, id, true).await?,
    };
    let Some(found) = found else {
        return Ok(None);
    };
    if found.sender != ctx.from.to_bare().as_str() {
        return Err(StanzaError::with_text(
            Condition::Forbidden,
            "only the author of a message may retract it",
        ));
    }
    Ok(Some(found.stanza_id))
}

/// Replace an archived message by a tombstone: its top-level attributes and occupant id are
/// kept, its content replaced by `retracted` (a `<retracted/>` element, XEP-0424 §4 /
/// XEP-0425 §5). The history ring's copy is replaced too, so later joiners never see the
/// original. Ok(false) when the room has no such archived message.
pub async fn tombstone(
    ctx: &Ctx<'_>,
    room_ref: &RoomRef,
    uid: &str,
    retracted: Element,
) -> Result<bool, StanzaError> {
    let room_jid = lock(room_ref).jid.clone();
    ctx.server.archive.writer.flush().await;
    let m = ctx.server.storage.muc();
    let key = room_key(&room_jid);
    let Some(found) = m.archived(key, uid, false).await? else {
        return Ok(false);
    };
    let mut tomb: Element = found
        .stanza
        .parse()
        .map_err(|_| StanzaError::new(Condition::InternalServerError))?;
    for node in tomb.take_nodes() {
        if let minidom::Node::Element(c) = &node {
            if c.is("occupant-id", NS_OCCUPANT_ID) || c.is("stanza-id", NS_SID) {
                tomb.append_node(node);
            }
        }
    }
    tomb.append_child(retracted);
    let text = String::from_utf8_lossy(&xml::to_bytes(&tomb)).into_owned();
    m.replace_archived(key, uid, &text).await?;
    let mut room = lock(room_ref);
    let room_jid = room.jid.clone();
    for e in room.history.iter_mut() {
        // Only the entry whose own stanza-id is `uid` (a retraction names it too).
        if contains(&e.bytes, uid.as_bytes())
            && stanza_id_of(&e.bytes, &room_jid).as_deref() == Some(uid)
        {
            e.bytes = Bytes::from(text.clone());
        }
    }
    Ok(true)
}

/// The room's stanza-id of a message, read from its bytes.
fn stanza_id_of(bytes: &[u8], room: &BareJid) -> Option<String> {
    let el: Element = standalone(bytes).parse().ok()?;
    el.children()
        .filter(|c| c.is("stanza-id", NS_SID))
        .find(|c| {
            c.attr("by")
                .and_then(|b| BareJid::new(b).ok())
                .is_some_and(|b| b == *room)
        })
        .and_then(|c| c.attr("id"))
        .map(str::to_string)
}

/// The `<retracted/>` of a XEP-0424 self-retraction tombstone.
pub fn self_retracted(retraction_id: Option<&str>) -> Element {
    let mut b = Element::builder("retracted", NS_RETRACT).attr(
        minidom::rxml::NcName::try_from("stamp").expect("static name"),
        xep82_datetime(now_ms()),
    );
    if let Some(id) = retraction_id {
        b = crate::stanza::BuilderExt::at(b, "id", id);
    }
    b.build()
}

/// A logging room loaded from storage: refill its history ring from the archive's newest
/// `history_length` messages, so history on join survives a restart.
pub async fn seed_history(server: &crate::server::ServerState, room: &mut Room) {
    if !room.config.logging || room.config.history_length == 0 {
        return;
    }
    let jid = room.jid.clone();
    let max = u32::try_from(room.config.history_length).unwrap_or(u32::MAX);
    let page = server
        .storage
        .archive()
        .page(
            ArchiveOwner::Room(room_key(&jid)),
            &ArchiveFilter::default(),
            Direction::Backward,
            max,
        )
        .await;
    match page {
        Ok(mut rows) => {
            rows.reverse();
            for m in rows {
                room.remember(HistoryEntry {
                    bytes: Bytes::from(m.stanza),
                    at_ms: m.stamp_ms,
                });
            }
        }
        Err(e) => tracing::error!(error = %e, room = %jid, "loading room history failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::room::RoomConfig;
    use super::*;

    fn room() -> Room {
        Room::new(
            BareJid::new("lobby@conference.d").unwrap(),
            RoomConfig::default(),
        )
    }

    #[test]
    fn who_may_read_the_archive() {
        use super::super::room::Affiliation;
        let jid = |s: &str| jid::FullJid::new(s).unwrap();
        let (member, stranger, banned) = (jid("m@d/x"), jid("s@d/x"), jid("b@d/x"));
        let mut r = room();
        r.affiliations.insert(member.to_bare(), Affiliation::Member);
        r.affiliations
            .insert(banned.to_bare(), Affiliation::Outcast);
        assert!(may_read(&r, &member) && may_read(&r, &stranger) && !may_read(&r, &banned));
        r.config.members_only = true;
        assert!(may_read(&r, &member) && !may_read(&r, &stranger));
        r.config.members_only = false;
        r.config.password = "pw".into();
        assert!(may_read(&r, &member) && !may_read(&r, &stranger));
    }

    #[test]
    fn standalone_declares_the_default_namespace_once() {
        assert_eq!(
            standalone(b"<message from='a'><body>x</body></message>"),
            "<message xmlns='jabber:client' from='a'><body>x</body></message>"
        );
        let declared = "<message xmlns='jabber:client' from='a'/>";
        assert_eq!(standalone(declared.as_bytes()), declared);
    }

    #[test]
    fn spoofed_room_stanza_ids_are_stripped() {
        let r = room();
        let out = Bytes::from_static(
            b"<message from='lobby@conference.d/n' type='groupchat'><body>x</body>\
              <stanza-id xmlns='urn:xmpp:sid:0' by='Lobby@conference.d' id='forged'/>\
              <stanza-id xmlns='urn:xmpp:sid:0' by='other@x' id='keep'/></message>",
        );
        let clean = strip_spoofed_ids(&r, out);
        let text = std::str::from_utf8(&clean).unwrap();
        assert!(!text.contains("forged") && text.contains("keep") && text.contains("<body>x"));
        let plain = Bytes::from_static(b"<message><body>y</body></message>");
        assert_eq!(strip_spoofed_ids(&r, plain.clone()), plain);
    }

    #[test]
    fn stanza_id_of_reads_the_rooms_own_id() {
        let r = BareJid::new("lobby@conference.d").unwrap();
        let retraction = b"<message from='lobby@conference.d/n'>\
            <retract xmlns='urn:xmpp:message-retract:1' id='aaa'/>\
            <stanza-id xmlns='urn:xmpp:sid:0' by='lobby@conference.d' id='bbb'/></message>";
        assert_eq!(stanza_id_of(retraction, &r).as_deref(), Some("bbb"));
        assert_eq!(stanza_id_of(b"<message/>", &r), None);
    }

    #[test]
    fn archive_copy_drops_sender_muc_user_payloads() {
        let text = archive_text(
            b"<message from='r@c/n'><body>x</body><x xmlns='http://jabber.org/protocol/muc#user'>\
              <item jid='boss@example.org'/></x></message>",
        );
        assert!(!text.contains("boss@example.org"), "{text}");
        assert!(text.contains("<body>x</body>"));
    }
}
