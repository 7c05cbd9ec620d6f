//! XEP-0191 blocklist storage, on both backends (the `both!` harness of `tests.rs`).

use super::*;

fn jids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

both!(blocklist_add_remove_clear);
async fn blocklist_add_remove_clear(s: &Storage, _t: &Target) {
    let u = ("d", "juliet");
    let b = s.blocklist();
    assert!(matches!(
        b.add(u, &jids(&["x@y"]), 10).await,
        Err(StorageError::NoAccount)
    ));
    s.accounts().create(u, &[]).await.unwrap();
    s.accounts().create(("d", "other"), &[]).await.unwrap();
    assert!(b.list(u).await.unwrap().is_empty());
    assert!(b
        .add(u, &jids(&["romeo@m", "iago@s", "evil.example"]), 10)
        .await
        .unwrap());
    // Blocking again is idempotent; another user's list is separate.
    assert!(b.add(u, &jids(&["romeo@m", "a@b/c"]), 10).await.unwrap());
    assert!(b
        .add(("d", "other"), &jids(&["romeo@m"]), 10)
        .await
        .unwrap());
    assert_eq!(
        b.list(u).await.unwrap(),
        jids(&["a@b/c", "evil.example", "iago@s", "romeo@m"])
    );
    b.remove(u, &jids(&["iago@s", "unknown@x"])).await.unwrap();
    assert_eq!(
        b.list(u).await.unwrap(),
        jids(&["a@b/c", "evil.example", "romeo@m"])
    );
    assert_eq!(
        b.clear(u).await.unwrap(),
        jids(&["a@b/c", "evil.example", "romeo@m"])
    );
    assert!(b.list(u).await.unwrap().is_empty());
    assert_eq!(b.list(("d", "other")).await.unwrap(), jids(&["romeo@m"]));
}

both!(blocklist_cap_is_atomic);
async fn blocklist_cap_is_atomic(s: &Storage, _t: &Target) {
    let u = ("d", "capped");
    s.accounts().create(u, &[]).await.unwrap();
    let b = s.blocklist();
    assert!(b.add(u, &jids(&["a@x", "b@x"]), 3).await.unwrap());
    // Two more would make four: refused as a whole.
    assert!(!b.add(u, &jids(&["c@x", "d@x"]), 3).await.unwrap());
    assert_eq!(b.list(u).await.unwrap(), jids(&["a@x", "b@x"]));
    // Re-adding existing entries never counts against the cap.
    assert!(b.add(u, &jids(&["a@x", "c@x"]), 3).await.unwrap());
    assert!(b.add(u, &jids(&["a@x"]), 3).await.unwrap());
    assert_eq!(b.list(u).await.unwrap().len(), 3);
}

both!(blocklist_removed_with_account);
async fn blocklist_removed_with_account(s: &Storage, _t: &Target) {
    let u = ("d", "gone");
    s.accounts().create(u, &[]).await.unwrap();
    s.blocklist().add(u, &jids(&["a@x"]), 10).await.unwrap();
    assert!(s.accounts().delete(u).await.unwrap());
    assert_eq!(rows(s, "blocklist").await, 0);
    // A re-created account starts with an empty list.
    s.accounts().create(u, &[]).await.unwrap();
    assert!(s.blocklist().list(u).await.unwrap().is_empty());
}
