//! XEP-0313 archive storage on both backends.

use super::*;

fn msg(owner: &str, n: i64, with: &str, res: &str) -> NewArchived {
    NewArchived {
        owner: ("d".into(), owner.into()),
        stanza_id: format!("{owner}-{n}"),
        stamp_ms: 1_000_000 + n * 1000,
        with_bare: with.into(),
        with_res: res.into(),
        origin_id: Some(format!("o{n}")),
        outgoing: n % 2 == 0,
        stanza: format!("<message><body>{n}</body></message>"),
    }
}

fn ids(page: &[ArchivedMessage]) -> Vec<String> {
    page.iter().map(|m| m.stanza_id.clone()).collect()
}

both!(archive_paging_and_filters);
async fn archive_paging_and_filters(s: &Storage, _t: &Target) {
    let a = s.archive();
    s.accounts().create(("d", "u"), &[]).await.unwrap();
    s.accounts().create(("d", "v"), &[]).await.unwrap();
    let batch: Vec<NewArchived> = (0..25)
        .map(|n| {
            let with = if n % 3 == 0 { "x@d" } else { "y@d" };
            msg("u", n, with, if n % 2 == 0 { "phone" } else { "" })
        })
        .chain([msg("v", 0, "x@d", ""), msg("nobody", 0, "x@d", "")])
        .collect();
    // The row of an account that does not exist is skipped.
    assert_eq!(a.insert_batch(&batch).await.unwrap(), 26);
    let u = ("d", "u");
    let all = ArchiveFilter::default();
    assert_eq!(a.count(u, &all).await.unwrap(), 25);

    let first = a.page(u, &all, Direction::Forward, 10).await.unwrap();
    assert_eq!(ids(&first)[0], "u-0");
    assert_eq!(ids(&first)[9], "u-9");
    let next = ArchiveFilter {
        after_row: Some(first[9].row),
        ..all.clone()
    };
    assert_eq!(
        ids(&a.page(u, &next, Direction::Forward, 10).await.unwrap())[0],
        "u-10"
    );
    let last = a.page(u, &all, Direction::Backward, 10).await.unwrap();
    assert_eq!(ids(&last)[0], "u-24");
    assert_eq!(ids(&last)[9], "u-15");

    // with: bare matches every resource; full only that resource.
    let with_x = ArchiveFilter {
        with: Some(("x@d".into(), None)),
        ..all.clone()
    };
    assert_eq!(a.count(u, &with_x).await.unwrap(), 9);
    let with_x_phone = ArchiveFilter {
        with: Some(("x@d".into(), Some("phone".into()))),
        ..all.clone()
    };
    let p = a
        .page(u, &with_x_phone, Direction::Forward, 100)
        .await
        .unwrap();
    assert_eq!(ids(&p), ["u-0", "u-6", "u-12", "u-18", "u-24"]);

    // start/end are inclusive.
    let window = ArchiveFilter {
        start_ms: Some(1_000_000 + 5000),
        end_ms: Some(1_000_000 + 7000),
        ..all.clone()
    };
    assert_eq!(
        ids(&a.page(u, &window, Direction::Forward, 100).await.unwrap()),
        ["u-5", "u-6", "u-7"]
    );

    // ids and UID lookups stay within the owner's archive.
    let r3 = a.row_of(u, "u-3").await.unwrap().unwrap();
    assert_eq!(a.row_of(u, "v-0").await.unwrap(), None);
    let some = ArchiveFilter {
        ids: vec!["u-3".into(), "u-4".into(), "v-0".into()],
        ..all.clone()
    };
    assert_eq!(
        ids(&a.page(u, &some, Direction::Forward, 100).await.unwrap()),
        ["u-3", "u-4"]
    );
    let between = ArchiveFilter {
        after_row: Some(r3),
        before_row: a.row_of(u, "u-6").await.unwrap(),
        ..all.clone()
    };
    assert_eq!(
        ids(&a.page(u, &between, Direction::Forward, 100).await.unwrap()),
        ["u-4", "u-5"]
    );

    let (lo, hi) = a.bounds(u).await.unwrap().unwrap();
    assert_eq!(
        (lo.stanza_id.as_str(), hi.stanza_id.as_str()),
        ("u-0", "u-24")
    );
    assert!(a.bounds(("d", "nobody")).await.unwrap().is_none());

    // Indexes serve the query shapes.
    let plan = a
        .explain_page(u, &with_x, Direction::Backward, 50)
        .await
        .unwrap();
    assert!(plan.contains("archive_account_with"), "{plan}");

    // Deleting the account deletes its archive.
    s.accounts().delete(u).await.unwrap();
    assert_eq!(rows(s, "archive").await, 1);
}

both!(archive_expiry);
async fn archive_expiry(s: &Storage, _t: &Target) {
    let a = s.archive();
    s.accounts().create(("d", "u"), &[]).await.unwrap();
    let rows: Vec<NewArchived> = (0..10).map(|n| msg("u", n, "x@d", "")).collect();
    a.insert_batch(&rows).await.unwrap();
    // Everything stored before the 7th message's stamp, in batches of 4.
    let cutoff = 1_000_000 + 7 * 1000;
    assert_eq!(a.expire(cutoff, 4).await.unwrap(), 4);
    assert_eq!(a.expire(cutoff, 4).await.unwrap(), 3);
    assert_eq!(a.expire(cutoff, 4).await.unwrap(), 0);
    let left = a
        .page(
            ("d", "u"),
            &ArchiveFilter::default(),
            Direction::Forward,
            100,
        )
        .await
        .unwrap();
    assert_eq!(ids(&left), ["u-7", "u-8", "u-9"]);
}

both!(archive_prefs_roundtrip);
async fn archive_prefs_roundtrip(s: &Storage, _t: &Target) {
    let a = s.archive();
    s.accounts().create(("d", "u"), &[]).await.unwrap();
    assert_eq!(a.prefs_get(("d", "u")).await.unwrap(), None);
    let p = ArchivePrefs {
        default: PrefsDefault::Roster,
        always: vec!["a@d".into(), "b@d/r".into()],
        never: vec![],
    };
    a.prefs_set(("d", "u"), &p).await.unwrap();
    assert_eq!(a.prefs_get(("d", "u")).await.unwrap(), Some(p.clone()));
    let q = ArchivePrefs {
        default: PrefsDefault::Never,
        always: vec![],
        never: vec!["c@d".into()],
    };
    a.prefs_set(("d", "u"), &q).await.unwrap();
    assert_eq!(
        a.prefs_all().await.unwrap(),
        vec![(("d".to_string(), "u".to_string()), q)]
    );
    assert!(matches!(
        a.prefs_set(("d", "nobody"), &p).await,
        Err(StorageError::NoAccount)
    ));
}

both!(archive_batches_keep_their_order_across_statements);
async fn archive_batches_keep_their_order_across_statements(s: &Storage, _t: &Target) {
    let a = s.archive();
    s.accounts().create(("d", "u"), &[]).await.unwrap();
    s.accounts().create(("d", "v"), &[]).await.unwrap();
    // Several INSERT statements' worth, the owners interleaved, one without an account.
    let owners = ["v", "nobody", "u"];
    let batch: Vec<NewArchived> = (0..300)
        .map(|n| NewArchived {
            origin_id: None,
            ..msg(owners[n as usize % 3], n, "x@d", "")
        })
        .collect();
    assert_eq!(a.insert_batch(&batch).await.unwrap(), 200);
    for owner in ["u", "v"] {
        let page = a
            .page(
                ("d", owner),
                &ArchiveFilter::default(),
                Direction::Forward,
                1000,
            )
            .await
            .unwrap();
        let expected: Vec<String> = batch
            .iter()
            .filter(|m| m.owner.1 == owner)
            .map(|m| m.stanza_id.clone())
            .collect();
        assert_eq!(ids(&page), expected);
        assert!(page.windows(2).all(|w| w[0].row < w[1].row));
        let stored = &page[1];
        let sent = batch
            .iter()
            .find(|m| m.stanza_id == stored.stanza_id)
            .unwrap();
        assert_eq!(
            (stored.stamp_ms, &stored.stanza),
            (sent.stamp_ms, &sent.stanza)
        );
    }
}
