//! Storage tests for XEP-0054 vCards, XEP-0049 private XML and XEP-0357 push registrations,
//! on both backends (see `tests.rs` for the harness).

use super::*;

both!(vcard_set_get_replace);
async fn vcard_set_get_replace(s: &Storage, _t: &Target) {
    let u = ("d", "vc");
    assert_eq!(s.vcard().get(u).await.unwrap(), None);
    // No account: nothing stored.
    let v = StoredVCard {
        xml: "<vCard xmlns='vcard-temp'><FN>A</FN></vCard>".into(),
        photo_hash: None,
    };
    assert!(matches!(
        s.vcard().set(u, &v).await,
        Err(StorageError::NoAccount)
    ));
    s.accounts().create(u, &[]).await.unwrap();
    s.vcard().set(u, &v).await.unwrap();
    assert_eq!(s.vcard().get(u).await.unwrap(), Some(v));
    assert_eq!(s.vcard().photo_hash(u).await.unwrap(), None);
    let v2 = StoredVCard {
        xml: "<vCard xmlns='vcard-temp'><FN>B</FN></vCard>".into(),
        photo_hash: Some("0123abcd".into()),
    };
    s.vcard().set(u, &v2).await.unwrap();
    assert_eq!(s.vcard().get(u).await.unwrap(), Some(v2));
    assert_eq!(
        s.vcard().photo_hash(u).await.unwrap().as_deref(),
        Some("0123abcd")
    );
    // Another account on another domain is separate.
    assert_eq!(s.vcard().get(("e", "vc")).await.unwrap(), None);
}

both!(private_set_get_cap);
async fn private_set_get_cap(s: &Storage, _t: &Target) {
    let u = ("d", "priv");
    let p = s.private_xml();
    assert!(matches!(
        p.set(u, "a:ns", "x", "<x xmlns='a:ns'/>", 2).await,
        Err(StorageError::NoAccount)
    ));
    s.accounts().create(u, &[]).await.unwrap();
    assert!(p
        .set(u, "a:ns", "x", "<x xmlns='a:ns'>1</x>", 2)
        .await
        .unwrap());
    assert!(p.set(u, "a:ns", "y", "<y xmlns='a:ns'/>", 2).await.unwrap());
    // Full: a third entry is refused, replacing an existing one is not.
    assert!(!p.set(u, "b:ns", "x", "<x xmlns='b:ns'/>", 2).await.unwrap());
    assert!(p
        .set(u, "a:ns", "x", "<x xmlns='a:ns'>2</x>", 2)
        .await
        .unwrap());
    assert_eq!(
        p.get(u, "a:ns", "x").await.unwrap().as_deref(),
        Some("<x xmlns='a:ns'>2</x>")
    );
    assert_eq!(p.get(u, "b:ns", "x").await.unwrap(), None);
    assert_eq!(p.get(("d", "other"), "a:ns", "x").await.unwrap(), None);
}

fn reg(service: &str, node: &str, options: Option<&str>) -> PushRegistration {
    PushRegistration {
        service: service.into(),
        node: node.into(),
        options: options.map(str::to_string),
    }
}

both!(push_enable_disable_list);
async fn push_enable_disable_list(s: &Storage, _t: &Target) {
    let u = ("d", "pusher");
    let p = s.push();
    assert!(matches!(
        p.enable(u, &reg("push.x", "n1", None), 4).await,
        Err(StorageError::NoAccount)
    ));
    s.accounts().create(u, &[]).await.unwrap();
    assert!(p.enable(u, &reg("push.x", "n1", None), 2).await.unwrap());
    assert!(p
        .enable(u, &reg("push.x", "n2", Some("<x/>")), 2)
        .await
        .unwrap());
    assert!(!p.enable(u, &reg("push.y", "n1", None), 2).await.unwrap());
    // Re-enabling keeps one row and takes the latest options (XEP-0357 §5).
    assert!(p
        .enable(u, &reg("push.x", "n1", Some("<y/>")), 2)
        .await
        .unwrap());
    assert_eq!(
        p.list(u).await.unwrap(),
        vec![
            reg("push.x", "n1", Some("<y/>")),
            reg("push.x", "n2", Some("<x/>"))
        ]
    );
    assert_eq!(p.disable(u, "push.x", Some("n2")).await.unwrap(), 1);
    assert_eq!(p.disable(u, "push.x", Some("n2")).await.unwrap(), 0);
    assert!(p.enable(u, &reg("push.x", "n3", None), 4).await.unwrap());
    // Without a node, every node of the service goes.
    assert_eq!(p.disable(u, "push.x", None).await.unwrap(), 2);
    assert!(p.list(u).await.unwrap().is_empty());
}

both!(account_deletion_removes_vcard_private_push);
async fn account_deletion_removes_vcard_private_push(s: &Storage, _t: &Target) {
    let u = ("d", "gone");
    s.accounts().create(u, &[]).await.unwrap();
    let v = StoredVCard {
        xml: "<vCard xmlns='vcard-temp'/>".into(),
        photo_hash: None,
    };
    s.vcard().set(u, &v).await.unwrap();
    s.private_xml()
        .set(u, "a:ns", "x", "<x xmlns='a:ns'/>", 8)
        .await
        .unwrap();
    s.push()
        .enable(u, &reg("push.x", "n", None), 8)
        .await
        .unwrap();
    assert!(s.accounts().delete(u).await.unwrap());
    for table in ["vcards", "private_xml", "push_registrations"] {
        assert_eq!(rows(s, table).await, 0, "{table}");
    }
    // A new account with the same name starts empty.
    s.accounts().create(u, &[]).await.unwrap();
    assert_eq!(s.vcard().get(u).await.unwrap(), None);
    assert!(s.push().list(u).await.unwrap().is_empty());
}
