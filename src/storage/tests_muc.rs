//! XEP-0045 room storage and room archives, on both backends (the `both!` harness of
//! `tests.rs`).

use super::*;

fn aff(jid: &str, a: &str) -> StoredAffiliation {
    StoredAffiliation {
        jid: jid.into(),
        affiliation: a.into(),
        reason: format!("because {jid}"),
        nick: String::new(),
    }
}

fn room_msg(node: &str, n: i64, nick: &str) -> NewRoomArchived {
    NewRoomArchived {
        room: ("conference.d".into(), node.into()),
        stanza_id: format!("{node}-{n}"),
        stamp_ms: 1_000_000 + n * 1000,
        nick: nick.into(),
        origin_id: Some(format!("o{n}")),
        sender: format!("{nick}@d"),
        stanza: format!("<message type='groupchat'><body>{n}</body></message>"),
    }
}

both!(muc_rooms_and_affiliations);
async fn muc_rooms_and_affiliations(s: &Storage, _t: &Target) {
    let m = s.muc();
    let r = ("conference.d", "lobby");
    assert_eq!(m.room(r).await.unwrap(), None);
    // Affiliations of a room that is not stored are refused.
    assert!(!m
        .set_affiliation(r, "a@d", Some(&aff("a@d", "owner")))
        .await
        .unwrap());
    m.save(r, "name = 'Lobby'", 42).await.unwrap();
    m.save(("conference.d", "attic"), "x", 1).await.unwrap();
    m.save(("conference.other", "lobby"), "y", 1).await.unwrap();
    assert!(m.set_subject(r, "Hello", "alice").await.unwrap());
    // Saving again replaces the config, keeps the subject and the creation time.
    m.save(r, "name = 'Lobby 2'", 99).await.unwrap();
    let got = m.room(r).await.unwrap().unwrap();
    assert_eq!(got.config, "name = 'Lobby 2'");
    assert_eq!(got.subject, Some(("Hello".into(), "alice".into())));
    assert_eq!(got.created_ms, 42);
    let all: Vec<String> = m
        .rooms("conference.d")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.node)
        .collect();
    assert_eq!(all, ["attic", "lobby"]);

    for (j, a) in [("b@d", "member"), ("a@d", "owner"), ("evil@x", "outcast")] {
        assert!(m.set_affiliation(r, j, Some(&aff(j, a))).await.unwrap());
    }
    // Changing one replaces it; none removes it.
    assert!(m
        .set_affiliation(r, "b@d", Some(&aff("b@d", "admin")))
        .await
        .unwrap());
    assert!(m.set_affiliation(r, "evil@x", None).await.unwrap());
    assert!(matches!(
        m.set_affiliation(r, "c@d", Some(&aff("c@d", "king"))).await,
        Err(StorageError::Corrupt(_))
    ));
    let list = m.affiliations(r).await.unwrap();
    assert_eq!(list, [aff("a@d", "owner"), aff("b@d", "admin")]);
    assert!(m
        .affiliations(("conference.d", "attic"))
        .await
        .unwrap()
        .is_empty());

    // Deleting the room takes its affiliations and archive along.
    m.archive_batch(&[room_msg("lobby", 0, "alice")])
        .await
        .unwrap();
    assert!(m.delete(r).await.unwrap());
    assert!(!m.delete(r).await.unwrap());
    assert_eq!(m.room(r).await.unwrap(), None);
    assert_eq!(rows(s, "muc_affiliations").await, 0);
    assert_eq!(rows(s, "muc_archive").await, 0);
    assert!(m
        .room(("conference.other", "lobby"))
        .await
        .unwrap()
        .is_some());
}

both!(muc_room_archive);
async fn muc_room_archive(s: &Storage, _t: &Target) {
    let m = s.muc();
    let r = ("conference.d", "lobby");
    m.save(r, "c", 0).await.unwrap();
    m.save(("conference.d", "attic"), "c", 0).await.unwrap();
    let batch: Vec<_> = (0..12)
        .map(|n| room_msg("lobby", n, if n % 3 == 0 { "bob" } else { "alice" }))
        .chain([room_msg("attic", 0, "carol"), room_msg("gone", 0, "x")])
        .collect();
    // A room that is not stored (a temporary room that logs) gets a placeholder row.
    assert_eq!(m.archive_batch(&batch).await.unwrap(), 14);
    let gone = m.room(("conference.d", "gone")).await.unwrap().unwrap();
    assert!(gone.is_placeholder());
    // A placeholder is deleted with its archive; a configured room is not.
    assert!(!m.delete_placeholder(r).await.unwrap());
    assert!(m
        .delete_placeholder(("conference.d", "gone"))
        .await
        .unwrap());
    assert_eq!(m.room(("conference.d", "gone")).await.unwrap(), None);
    assert_eq!(rows(s, "muc_archive").await, 13);
    assert!(!m.room(r).await.unwrap().unwrap().is_placeholder());

    // Paged through the same queries as user archives.
    let a = s.archive();
    let room = ArchiveOwner::Room(r);
    let all = ArchiveFilter::default();
    assert_eq!(a.count(room, &all).await.unwrap(), 12);
    let first = a.page(room, &all, Direction::Forward, 5).await.unwrap();
    let ids: Vec<_> = first.iter().map(|m| m.stanza_id.as_str()).collect();
    assert_eq!(ids, ["lobby-0", "lobby-1", "lobby-2", "lobby-3", "lobby-4"]);
    let last = a.page(room, &all, Direction::Backward, 2).await.unwrap();
    assert_eq!(last[0].stanza_id, "lobby-11");
    let row = a.row_of(room, "lobby-4").await.unwrap().unwrap();
    assert_eq!(Some(row), Some(first[4].row));
    assert_eq!(a.row_of(room, "attic-0").await.unwrap(), None);
    // A user archive of the same name is another archive.
    assert_eq!(a.count(r, &all).await.unwrap(), 0);
    let since = ArchiveFilter {
        start_ms: Some(1_000_000 + 9 * 1000),
        ..all.clone()
    };
    assert_eq!(a.count(room, &since).await.unwrap(), 3);
    let by_nick = ArchiveFilter {
        with: Some(("lobby@conference.d".into(), Some("bob".into()))),
        ..all.clone()
    };
    assert_eq!(a.count(room, &by_nick).await.unwrap(), 4);
    let (oldest, newest) = a.bounds(room).await.unwrap().unwrap();
    assert_eq!(
        (oldest.stanza_id.as_str(), newest.stanza_id.as_str()),
        ("lobby-0", "lobby-11")
    );

    // Lookups for retractions, by stanza-id or origin-id, then the tombstone.
    let hit = m.archived(r, "lobby-3", false).await.unwrap().unwrap();
    assert_eq!((hit.nick.as_str(), hit.sender.as_str()), ("bob", "bob@d"));
    let hit = m.archived(r, "o5", true).await.unwrap().unwrap();
    assert_eq!(hit.stanza_id, "lobby-5");
    assert_eq!(m.archived(r, "o5", false).await.unwrap(), None);
    assert!(m
        .replace_archived(r, "lobby-5", "<tombstone/>")
        .await
        .unwrap());
    assert!(!m
        .replace_archived(r, "attic-0", "<tombstone/>")
        .await
        .unwrap());
    let only = ArchiveFilter {
        ids: vec!["lobby-5".into()],
        ..all.clone()
    };
    let got = a.page(room, &only, Direction::Forward, 10).await.unwrap();
    assert_eq!(got[0].stanza, "<tombstone/>");
}

both!(muc_room_snapshot_replace);
async fn muc_room_snapshot_replace(s: &Storage, _t: &Target) {
    let m = s.muc();
    let r = ("conference.d", "lobby");
    m.replace(
        r,
        "v1",
        None,
        &[aff("a@d", "owner"), aff("b@d", "member")],
        7,
    )
    .await
    .unwrap();
    let got = m.room(r).await.unwrap().unwrap();
    assert_eq!(
        (got.config.as_str(), got.subject.clone(), got.created_ms),
        ("v1", None, 7)
    );
    assert_eq!(m.affiliations(r).await.unwrap().len(), 2);
    m.archive_batch(&[room_msg("lobby", 0, "a")]).await.unwrap();
    // Replacing keeps the room's row (and so its archive), swaps the rest.
    m.replace(r, "v2", Some(("Topic", "a")), &[aff("c@d", "admin")], 9)
        .await
        .unwrap();
    let got = m.room(r).await.unwrap().unwrap();
    assert_eq!(got.config, "v2");
    assert_eq!(got.subject, Some(("Topic".into(), "a".into())));
    assert_eq!(got.created_ms, 7);
    assert_eq!(m.affiliations(r).await.unwrap(), [aff("c@d", "admin")]);
    assert_eq!(rows(s, "muc_archive").await, 1);
    assert!(m
        .replace(r, "v3", None, &[aff("x@d", "boss")], 9)
        .await
        .is_err());
    assert_eq!(m.room(r).await.unwrap().unwrap().config, "v2");
    // Made temporary: a placeholder keeping the archive.
    assert!(m.unstore(r).await.unwrap());
    let got = m.room(r).await.unwrap().unwrap();
    assert!(got.is_placeholder() && got.subject.is_none());
    assert!(m.affiliations(r).await.unwrap().is_empty());
    assert_eq!(rows(s, "muc_archive").await, 1);
    assert!(!m.unstore(("conference.d", "nope")).await.unwrap());
}

both!(muc_archive_expiry);
async fn muc_archive_expiry(s: &Storage, _t: &Target) {
    let m = s.muc();
    m.save(("conference.d", "lobby"), "c", 0).await.unwrap();
    let batch: Vec<_> = (0..5).map(|n| room_msg("lobby", n, "a")).collect();
    m.archive_batch(&batch).await.unwrap();
    // Stamps are 1_000_000 + n * 1000: the first three are older than 1_002_500.
    assert_eq!(m.expire(1_002_500, 2).await.unwrap(), 2);
    assert_eq!(m.expire(1_002_500, 2).await.unwrap(), 1);
    assert_eq!(m.expire(1_002_500, 2).await.unwrap(), 0);
    assert_eq!(rows(s, "muc_archive").await, 2);
}
