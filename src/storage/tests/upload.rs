//! XEP-0363 upload slot storage on both backends.

use super::*;

fn slot<'a>(id: &'a str, size: i64, expires_at: i64) -> NewSlot<'a> {
    NewSlot {
        slot_id: id,
        filename: "a.jpg",
        size,
        content_type: Some("image/jpeg"),
        expires_at,
    }
}

both!(upload_slot_lifecycle);
async fn upload_slot_lifecycle(s: &Storage, _t: &Target) {
    let up = s.uploads();
    let u = ("d", "alice");
    let later = now_unix() + 300;
    assert!(matches!(
        up.create_slot(u, &slot("s1", 10, later), 0, 10).await,
        Err(StorageError::NoAccount)
    ));
    s.accounts().create(u, &[]).await.unwrap();
    assert_eq!(
        up.create_slot(u, &slot("s1", 10, later), 0, 10)
            .await
            .unwrap(),
        SlotGrant::Granted
    );
    let r = up.get("s1").await.unwrap().unwrap();
    assert_eq!(
        (r.domain.as_str(), r.username.as_str(), r.filename.as_str()),
        ("d", "alice", "a.jpg")
    );
    assert_eq!((r.size, r.state), (10, UploadState::Open));
    assert_eq!(r.content_type.as_deref(), Some("image/jpeg"));
    assert_eq!(r.completed_at, None);
    assert!(up.get("nope").await.unwrap().is_none());

    // One PUT wins; a failed one reopens the slot; a completed one cannot be claimed again.
    let now = now_unix();
    assert_eq!(up.claim("s1", now).await.unwrap(), Claim::Claimed);
    assert_eq!(up.claim("s1", now).await.unwrap(), Claim::Taken);
    up.release("s1").await.unwrap();
    assert_eq!(up.claim("s1", now).await.unwrap(), Claim::Claimed);
    assert!(up.complete("s1", now).await.unwrap());
    assert!(!up.complete("s1", now).await.unwrap());
    assert_eq!(up.claim("s1", now).await.unwrap(), Claim::Taken);
    let r = up.get("s1").await.unwrap().unwrap();
    assert_eq!((r.state, r.completed_at), (UploadState::Done, Some(now)));
    assert_eq!(up.claim("unknown", now).await.unwrap(), Claim::Unknown);

    // A slot past its expiry cannot be claimed.
    up.create_slot(u, &slot("s2", 1, now - 1), 0, 10)
        .await
        .unwrap();
    assert_eq!(up.claim("s2", now).await.unwrap(), Claim::Expired);
}

both!(upload_quota_and_open_slots);
async fn upload_quota_and_open_slots(s: &Storage, _t: &Target) {
    let up = s.uploads();
    let u = ("d", "bob");
    s.accounts().create(u, &[]).await.unwrap();
    s.accounts().create(("d", "other"), &[]).await.unwrap();
    let now = now_unix();
    let later = now + 300;
    assert_eq!(
        up.create_slot(u, &slot("a", 60, later), 100, 3)
            .await
            .unwrap(),
        SlotGrant::Granted
    );
    // Open slots count: 60 + 50 > 100.
    assert_eq!(
        up.create_slot(u, &slot("b", 50, later), 100, 3)
            .await
            .unwrap(),
        SlotGrant::OverQuota {
            used: 60,
            oldest: None
        }
    );
    assert_eq!(up.used_bytes(u).await.unwrap(), 60);
    // Another account has its own quota.
    assert_eq!(
        up.create_slot(("d", "other"), &slot("o", 100, later), 100, 3)
            .await
            .unwrap(),
        SlotGrant::Granted
    );
    // A stored file counts too, and is the oldest.
    assert_eq!(up.claim("a", now).await.unwrap(), Claim::Claimed);
    assert!(up.complete("a", now - 5).await.unwrap());
    assert_eq!(
        up.create_slot(u, &slot("b", 41, later), 100, 3)
            .await
            .unwrap(),
        SlotGrant::OverQuota {
            used: 60,
            oldest: Some(now - 5)
        }
    );
    assert_eq!(
        up.create_slot(u, &slot("b", 40, later), 100, 3)
            .await
            .unwrap(),
        SlotGrant::Granted
    );
    // An expired open slot no longer counts.
    up.create_slot(u, &slot("gone", 0, now - 1), 100, 3)
        .await
        .unwrap();
    assert_eq!(up.used_bytes(u).await.unwrap(), 100);
    // Open slots are capped (quota 0: none).
    up.create_slot(u, &slot("c", 0, later), 0, 3).await.unwrap();
    up.create_slot(u, &slot("d", 0, later), 0, 3).await.unwrap();
    assert_eq!(
        up.create_slot(u, &slot("e", 0, later), 0, 3).await.unwrap(),
        SlotGrant::TooManyOpen
    );
    // Two slots cannot share an id.
    assert!(up
        .create_slot(u, &slot("a", 0, later), 0, 10)
        .await
        .is_err());
}

both!(upload_expiry_and_cascade);
async fn upload_expiry_and_cascade(s: &Storage, _t: &Target) {
    let up = s.uploads();
    let u = ("d", "carol");
    s.accounts().create(u, &[]).await.unwrap();
    let now = now_unix();
    for id in ["old", "new", "open", "stale", "busy"] {
        let exp = if id == "open" || id == "stale" {
            now - 10
        } else {
            now + 300
        };
        up.create_slot(u, &slot(id, 1, exp), 0, 10).await.unwrap();
    }
    up.claim("old", now).await.unwrap();
    up.complete("old", now - 1000).await.unwrap();
    up.claim("new", now).await.unwrap();
    up.complete("new", now).await.unwrap();
    up.claim("busy", now).await.unwrap();
    // 'stale' is an upload that died with its process (uploading, slot long expired).
    exec(
        s,
        "UPDATE upload_files SET state = 'uploading' WHERE slot_id = 'stale'",
    )
    .await;
    // Files kept forever: only the unused expired slot goes.
    let mut gone = up.take_expired(None, now, now - 100, 100).await.unwrap();
    assert_eq!(gone, vec!["open".to_string()]);
    gone = up.take_expired(None, now, now, 100).await.unwrap();
    assert_eq!(gone, vec!["stale".to_string()]);
    // Retention: files completed before the cutoff; in batches.
    gone = up
        .take_expired(Some(now - 500), now, now - 100, 100)
        .await
        .unwrap();
    assert_eq!(gone, vec!["old".to_string()]);
    let ids: Vec<String> = ["old", "new", "busy", "x"].map(String::from).to_vec();
    let mut have = up.existing(&ids).await.unwrap();
    have.sort();
    assert_eq!(have, vec!["busy".to_string(), "new".to_string()]);
    assert!(up.existing(&[]).await.unwrap().is_empty());
    // Deleting the account drops its rows (its files go by the orphan sweep).
    assert!(s.accounts().delete(u).await.unwrap());
    assert_eq!(rows(s, "upload_files").await, 0);
}
