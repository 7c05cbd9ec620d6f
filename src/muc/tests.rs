//! Room logic without a server: occupants with real session mailboxes, checking who gets
//! which presence and what moderation's helpers announce.

use bytes::Bytes;
use jid::{BareJid, FullJid};
use std::sync::Arc;

use super::occupants::{self, status, ItemExtra};
use super::room::{Affiliation, HistoryEntry, Occupant, OccupantSession, Role, Room, RoomConfig};
use crate::router::{splice_to, Deliver, Mailbox, SessionHandle};

fn room() -> Room {
    Room::new(
        BareJid::new("r@conference.x").unwrap(),
        RoomConfig::default(),
    )
}

/// Add an occupant `nick` for `nick@x/dev`, returning its mailbox.
fn add(room: &mut Room, nick: &str, aff: Affiliation) -> Arc<Mailbox> {
    let jid = FullJid::new(&format!("{nick}@x/dev")).unwrap();
    let handle = SessionHandle::new(1, 10_000);
    let mailbox = handle.mailbox.clone();
    if aff != Affiliation::None {
        room.affiliations.insert(jid.to_bare(), aff);
    }
    room.by_session.insert(jid.clone(), nick.to_string());
    room.occupants.insert(
        nick.to_string(),
        Occupant {
            nick: nick.to_string(),
            real: jid.to_bare(),
            sessions: vec![OccupantSession { jid, handle }],
            role: Role::None,
            affiliation: aff,
            presence: Vec::new(),
            occupant_id: super::occupant_id::occupant_id(&room.secret, nick),
            cached_anon: Bytes::new(),
            cached_full: Bytes::new(),
        },
    );
    room.set_role_of(nick, aff.default_role(room.config.moderated));
    occupants::refresh(room, nick);
    mailbox
}

fn take(m: &Mailbox) -> Vec<String> {
    let mut v = Vec::new();
    m.drain_into(&mut v);
    v.into_iter()
        .map(|d| match d {
            Deliver::ToSelf(b) | Deliver::Bytes(b) => String::from_utf8(b.to_vec()).unwrap(),
            Deliver::RosterPush(_) => String::new(),
        })
        .collect()
}

#[test]
fn splice_to_adds_the_recipient_after_the_name() {
    let b = splice_to(
        b"<message from='r@c/n' type='groupchat'><body/></message>",
        "u@x/a",
    );
    assert_eq!(
        &b[..],
        b"<message to='u@x/a' from='r@c/n' type='groupchat'><body/></message>"
    );
    assert_eq!(
        &splice_to(b"<presence/>", "a&b")[..],
        b"<presence to='a&amp;b'/>"
    );
}

#[test]
fn presence_reveals_real_jids_only_to_moderators_in_semi_anonymous_rooms() {
    let mut r = room();
    let owner = add(&mut r, "boss", Affiliation::Owner);
    let member = add(&mut r, "m", Affiliation::Member);
    let _ = (take(&owner), take(&member));
    add(&mut r, "new", Affiliation::None);
    occupants::announce(&mut r, "new", &[status::SELF], 0);
    let to_owner = take(&owner);
    let to_member = take(&member);
    assert_eq!((to_owner.len(), to_member.len()), (1, 1));
    assert!(to_owner[0].contains("jid='new@x/dev'"));
    assert!(!to_member[0].contains("jid="));
    assert!(to_member[0].contains("<occupant-id xmlns='urn:xmpp:occupant-id:0'"));
}

#[test]
fn crowded_rooms_announce_non_moderators_to_moderators_only() {
    let mut r = room();
    let boss = add(&mut r, "boss", Affiliation::Owner);
    let boxes: Vec<_> = (0..5)
        .map(|i| add(&mut r, &format!("u{i}"), Affiliation::None))
        .collect();
    let _ = take(&boss);
    boxes.iter().for_each(|b| drop(take(b)));
    // Limit 3 < 6 occupants: crowded.
    occupants::announce(&mut r, "u0", &[status::SELF], 3);
    assert_eq!(take(&boss).len(), 1, "moderator sees it");
    assert_eq!(take(&boxes[0]).len(), 1, "self-presence");
    assert!(boxes[1..].iter().all(|b| take(b).is_empty()));
    // A moderator's presence still goes to everyone.
    occupants::announce(&mut r, "boss", &[status::SELF], 3);
    assert!(boxes.iter().all(|b| take(b).len() == 1));
}

#[test]
fn kick_and_ban_announce_codes_and_remove_the_occupant() {
    let mut r = room();
    let boss = add(&mut r, "boss", Affiliation::Owner);
    let victim = add(&mut r, "v", Affiliation::None);
    let _ = (take(&boss), take(&victim));
    let extra = ItemExtra {
        actor: Some("boss"),
        reason: Some("spam"),
        ..Default::default()
    };
    assert!(occupants::set_role(&mut r, "v", Role::None, extra, 0));
    let own = take(&victim);
    assert!(own[0].contains("type='unavailable'") && own[0].contains("code='110'"));
    assert!(own[0].contains("code='307'") && own[0].contains("<reason>spam</reason>"));
    let seen = take(&boss);
    assert!(seen[0].contains("code='307'") && !seen[0].contains("code='110'"));
    assert!(!r.occupants.contains_key("v"));
    assert!(!r.by_session.contains_key(&FullJid::new("v@x/dev").unwrap()));

    let again = add(&mut r, "v", Affiliation::None);
    let _ = take(&again);
    let real = BareJid::new("v@x").unwrap();
    occupants::set_affiliation(&mut r, &real, Affiliation::Outcast, ItemExtra::default(), 0);
    assert!(take(&again)[0].contains("code='301'"));
    assert_eq!(r.affiliation(&real), Affiliation::Outcast);
    assert!(!r.occupants.contains_key("v"));
}

#[test]
fn voice_follows_role_changes_and_the_moderator_set() {
    let mut r = room();
    r.config.moderated = true;
    let _boss = add(&mut r, "boss", Affiliation::Owner);
    let _v = add(&mut r, "v", Affiliation::None);
    assert_eq!(r.occupants["v"].role, Role::Visitor);
    occupants::set_role(&mut r, "v", Role::Moderator, ItemExtra::default(), 0);
    assert!(r.moderators.contains("v"));
    occupants::set_role(&mut r, "v", Role::Participant, ItemExtra::default(), 0);
    assert!(!r.moderators.contains("v"));
}

#[test]
fn history_ring_keeps_the_configured_length() {
    let mut r = room();
    r.config.history_length = 3;
    for i in 0..10 {
        r.remember(HistoryEntry {
            bytes: Bytes::from(format!("<message><body>{i}</body></message>")),
            at_ms: i,
        });
    }
    let kept: Vec<i64> = r.history.iter().map(|e| e.at_ms).collect();
    assert_eq!(kept, [7, 8, 9]);
}

#[test]
fn stored_rooms_round_trip() {
    let mut r = room();
    r.config.persistent = true;
    r.config.name = "N".into();
    r.affiliations
        .insert(BareJid::new("o@x").unwrap(), Affiliation::Owner);
    r.subject = Some(super::room::Subject {
        nick: "o".into(),
        text: "t".into(),
    });
    let s = r.stored();
    let back = Room::from_stored("conference.x", s.clone()).unwrap();
    assert_eq!(back.stored(), s);
    assert_eq!(back.jid.as_str(), "r@conference.x");
}

#[test]
fn ten_thousand_joins_stay_far_from_quadratic_in_a_crowded_room() {
    let mut r = room();
    let limit = 500;
    let mut boxes = vec![add(&mut r, "boss", Affiliation::Owner)];
    occupants::announce(&mut r, "boss", &[status::SELF], limit);
    for i in 0..10_000 {
        let nick = format!("u{i}");
        boxes.push(add(&mut r, &nick, Affiliation::None));
        occupants::announce(&mut r, &nick, &[status::SELF], limit);
    }
    let queued: usize = boxes.iter().map(|b| take(b).len()).sum();
    // Up to the limit every join reaches everyone (~limit²/2); beyond it only the moderator
    // and the joiner: ~2 per join. Quadratic would be ~50 million.
    let bound = limit * limit / 2 + limit + 2 * 10_000 + 10;
    assert!(queued <= bound, "{queued} presences queued, bound {bound}");
    // And a message is one push per session.
    let msg = Bytes::from_static(b"<message type='groupchat'><body>x</body></message>");
    for o in r.occupants.values() {
        o.push(&msg);
    }
    assert!(boxes.iter().all(|b| take(b).len() == 1));
}

#[test]
fn a_mass_leave_does_not_disconnect_the_moderator_of_a_crowded_room() {
    let mut r = room();
    let boss = add(&mut r, "boss", Affiliation::Owner);
    for i in 0..3000 {
        add(&mut r, &format!("u{i}"), Affiliation::None);
    }
    // The moderator's queue holds 10 000 (see `add`); make it a small one.
    let small = SessionHandle::new(2, 100);
    let small_box = small.mailbox.clone();
    if let Some(o) = r.occupants.get_mut("boss") {
        o.sessions[0].handle = small;
    }
    let _ = take(&boss);
    for i in 0..3000 {
        occupants::remove_occupant(&mut r, &format!("u{i}"), &[], ItemExtra::default(), 500);
    }
    assert!(small_box.kick_reason().is_none(), "not disconnected");
    assert_eq!(take(&small_box).len(), 100, "as much as its queue holds");
}

#[test]
fn rewrite_with_an_empty_to_removes_it() {
    let ctx = Arc::new(crate::xml::NsContext {
        default_ns: Some(crate::xml::NS_CLIENT.into()),
        prefixes: Vec::new(),
    });
    let st = crate::xml::Stanza::parse(
        Bytes::from_static(b"<message to='r@c' type='groupchat' id='1'><body>hi</body></message>"),
        ctx,
    )
    .unwrap();
    let out = st.rewrite(Some("r@c/n"), Some(""));
    assert_eq!(
        &out[..],
        b"<message type='groupchat' id='1' from='r@c/n'><body>hi</body></message>"
    );
    let with_id = crate::xml::splice_child(&out, "<x/>").unwrap();
    assert!(with_id.ends_with(b"<body>hi</body><x/></message>"));
}
