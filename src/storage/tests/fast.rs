//! FAST token storage on both backends.

use super::*;

const C1: &str = "d4565fa7-4d72-4749-b3d3-740edbf87770";
const C2: &str = "0b7f5b5e-4f4b-4b43-9a3e-2f1a4a0c9e11";

fn far() -> i64 {
    now_unix() + 3600
}

async fn fast_slots_and_rotation(s: &Storage, _t: &Target) {
    let f = s.fast();
    let u = ("example.org", "alice");
    assert!(matches!(
        f.issue(u, C1, "HT-SHA-256-NONE", b"t1", far(), 8).await,
        Err(StorageError::NoAccount)
    ));
    s.accounts().create(u, &[]).await.unwrap();
    s.accounts()
        .create(("example.org", "bob"), &[])
        .await
        .unwrap();
    f.issue(u, C1, "HT-SHA-256-NONE", b"t1", far(), 8)
        .await
        .unwrap();
    let t = f.tokens(u, C1).await.unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].slot, Slot::New);
    assert_eq!(t[0].sealed, b"t1");
    assert_eq!(t[0].mechanism, "HT-SHA-256-NONE");
    assert!(f.tokens(u, C2).await.unwrap().is_empty());
    assert!(f
        .tokens(("example.org", "bob"), C1)
        .await
        .unwrap()
        .is_empty());

    // Using the new token promotes it; counts must grow.
    assert!(f.used(u, C1, Slot::New, Some(1)).await.unwrap());
    let t = f.tokens(u, C1).await.unwrap();
    assert_eq!(
        (t.len(), t[0].slot, t[0].last_count),
        (1, Slot::Current, Some(1))
    );
    assert!(!f.used(u, C1, Slot::Current, Some(1)).await.unwrap());
    assert!(f.used(u, C1, Slot::Current, Some(5)).await.unwrap());
    assert!(!f.used(u, C1, Slot::Current, Some(4)).await.unwrap());
    assert!(f.used(u, C1, Slot::Current, None).await.unwrap());

    // Rotation: a second token waits in 'new' while 'current' stays valid.
    f.issue(u, C1, "HT-SHA-256-NONE", b"t2", far(), 8)
        .await
        .unwrap();
    let t = f.tokens(u, C1).await.unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!((t[0].slot, t[0].sealed.as_slice()), (Slot::New, &b"t2"[..]));
    assert_eq!(
        (t[1].slot, t[1].sealed.as_slice()),
        (Slot::Current, &b"t1"[..])
    );
    // An unused 'new' token is replaced by the next one.
    f.issue(u, C1, "HT-SHA-256-NONE", b"t3", far(), 8)
        .await
        .unwrap();
    let t = f.tokens(u, C1).await.unwrap();
    assert_eq!(t[0].sealed, b"t3");
    assert_eq!(t[0].last_count, None);
    assert!(f.used(u, C1, Slot::New, Some(1)).await.unwrap());
    let t = f.tokens(u, C1).await.unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(
        (t[0].slot, t[0].sealed.as_slice()),
        (Slot::Current, &b"t3"[..])
    );

    assert_eq!(f.invalidate(u, C1).await.unwrap(), 1);
    assert!(f.tokens(u, C1).await.unwrap().is_empty());
}
both!(fast_slots_and_rotation);

async fn fast_revocation(s: &Storage, _t: &Target) {
    let f = s.fast();
    let u = ("example.org", "alice");
    let b = ("example.org", "bob");
    s.accounts().create(u, &all_creds(1)).await.unwrap();
    s.accounts().create(b, &all_creds(2)).await.unwrap();
    for (user, c) in [(u, C1), (u, C2), (b, C1)] {
        f.issue(user, c, "HT-SHA-256-NONE", b"x", far(), 8)
            .await
            .unwrap();
    }
    // A password change revokes the account's tokens, and only its own.
    assert!(s
        .accounts()
        .set_credentials(u, &all_creds(3))
        .await
        .unwrap());
    assert!(f.tokens(u, C1).await.unwrap().is_empty());
    assert!(f.tokens(u, C2).await.unwrap().is_empty());
    assert_eq!(f.tokens(b, C1).await.unwrap().len(), 1);

    f.issue(u, C1, "HT-SHA-256-NONE", b"x", far(), 8)
        .await
        .unwrap();
    assert_eq!(f.revoke_all(u).await.unwrap(), 1);
    assert_eq!(f.revoke_all(u).await.unwrap(), 0);

    // Account deletion cascades.
    assert!(s.accounts().delete(b).await.unwrap());
    assert_eq!(rows(s, "fast_tokens").await, 0);
}
both!(fast_revocation);

async fn fast_bounded_per_account(s: &Storage, _t: &Target) {
    let f = s.fast();
    let u = ("example.org", "alice");
    s.accounts().create(u, &[]).await.unwrap();
    let base = now_unix() + 1000;
    for i in 0..5i64 {
        f.issue(
            u,
            &format!("client-{i}"),
            "HT-SHA-256-NONE",
            b"x",
            base + i,
            3,
        )
        .await
        .unwrap();
    }
    // The three latest-expiring clients are kept.
    assert_eq!(rows(s, "fast_tokens").await, 3);
    assert!(f.tokens(u, "client-0").await.unwrap().is_empty());
    assert_eq!(f.tokens(u, "client-4").await.unwrap().len(), 1);
    // Expired tokens are dropped on the next issue.
    f.issue(u, "client-4", "HT-SHA-256-NONE", b"y", now_unix() - 1, 3)
        .await
        .unwrap();
    assert_eq!(f.tokens(u, "client-4").await.unwrap().len(), 0);
}
both!(fast_bounded_per_account);
