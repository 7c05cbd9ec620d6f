//! Storage tests. Every test body runs on SQLite (temp file) and on PostgreSQL (a fresh
//! database per test, created from the admin URL in `STARLING_TEST_POSTGRES_URL` and dropped
//! afterwards). Without that variable PostgreSQL is skipped loudly, unless
//! `STARLING_TEST_REQUIRE_POSTGRES=1`, which turns the skip into a failure.

use std::time::Instant;

use sqlx::{Connection, Executor};

use super::*;

const PG_ENV: &str = "STARLING_TEST_POSTGRES_URL";
const PG_REQUIRE_ENV: &str = "STARLING_TEST_REQUIRE_POSTGRES";

/// A fresh, not yet migrated database; removed when dropped (best effort).
pub(super) struct Target {
    pub(super) url: String,
    _guard: Guard,
}

pub(super) enum Guard {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin_url: String, db: String },
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Guard::Postgres { admin_url, db } = self {
            let (admin_url, db) = (admin_url.clone(), db.clone());
            // Runs even while unwinding from a failed assertion; own runtime, own thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    if let Ok(mut c) = sqlx::PgConnection::connect(&admin_url).await {
                        let _ = c
                            .execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
                            .await;
                        let _ = c.close().await;
                    }
                });
            })
            .join();
        }
    }
}

/// Replace the database name in a postgres URL.
fn pg_url_with_db(admin: &str, db: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut url = format!("{}/{}", &base[..authority_end], db);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

pub(super) async fn targets(test: &str) -> Vec<Target> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("starling.db");
    let mut out = vec![Target {
        url: format!("sqlite://{}", path.display()),
        _guard: Guard::Sqlite(dir),
    }];
    match std::env::var(PG_ENV) {
        Ok(admin_url) if !admin_url.is_empty() => {
            let db = format!("starling_t_{:016x}", rand::random::<u64>());
            let mut c = sqlx::PgConnection::connect(&admin_url)
                .await
                .unwrap_or_else(|e| panic!("{test}: cannot connect to {PG_ENV}: {e}"));
            c.execute(format!("CREATE DATABASE {db}").as_str())
                .await
                .unwrap_or_else(|e| panic!("{test}: CREATE DATABASE {db}: {e}"));
            let _ = c.close().await;
            out.push(Target {
                url: pg_url_with_db(&admin_url, &db),
                _guard: Guard::Postgres { admin_url, db },
            });
        }
        _ => {
            if std::env::var(PG_REQUIRE_ENV).as_deref() == Ok("1") {
                panic!("{test}: {PG_REQUIRE_ENV}=1 but {PG_ENV} is not set");
            }
            let msg = format!(
                "!!!!!!!! skipping PostgreSQL storage tests: {PG_ENV} not set \
                 (run scripts/pg-setup and export its URL) !!!!!!!!"
            );
            // Once per process straight to stderr (bypasses libtest's output capture).
            static LOUD: std::sync::Once = std::sync::Once::new();
            LOUD.call_once(|| {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "{msg}");
            });
            eprintln!("{test}: {msg}");
        }
    }
    out
}

/// `#[tokio::test]` that runs `$body(&Storage, &Target)` once per backend.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn run() {
                for t in super::targets(stringify!($name)).await {
                    let s = super::Storage::connect(&t.url)
                        .await
                        .unwrap_or_else(|e| panic!("connect {}: {e}", t.url));
                    eprintln!("{}: {}", stringify!($name), s.backend_name());
                    super::$name(&s, &t).await;
                    s.close().await;
                }
            }
        }
    };
}

fn cred(alg: HashAlg, seed: u8) -> ScramCredential {
    ScramCredential {
        alg,
        salt: vec![seed; 16],
        iterations: 4096 + u32::from(seed),
        stored_key: vec![seed.wrapping_add(1); 32],
        server_key: vec![seed.wrapping_add(2); 32],
    }
}

fn all_creds(seed: u8) -> Vec<ScramCredential> {
    HashAlg::ALL.iter().map(|a| cred(*a, seed)).collect()
}

fn item(contact: &str, sub: Subscription, groups: &[&str]) -> RosterItem {
    RosterItem {
        contact: contact.to_string(),
        name: Some(format!("Name of {contact}")),
        subscription: sub,
        ask: false,
        approved: false,
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

/// Rows in `table` (tests only; the name is trusted).
pub(super) async fn rows(s: &Storage, table: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM {table}");
    match &s.db {
        Db::Sqlite(p) => sqlx::query_scalar(&sql).fetch_one(p).await.unwrap(),
        Db::Postgres(p) => sqlx::query_scalar(&sql).fetch_one(p).await.unwrap(),
    }
}

async fn exec(s: &Storage, sql: &str) {
    match &s.db {
        Db::Sqlite(p) => {
            p.execute(sql).await.unwrap();
        }
        Db::Postgres(p) => {
            p.execute(sql).await.unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------

both!(migrations_idempotent);
async fn migrations_idempotent(s: &Storage, t: &Target) {
    assert_eq!(
        rows(s, "schema_migrations").await,
        migrate::SQLITE.len() as i64
    );
    s.accounts().create(("d", "keep"), &[]).await.unwrap();
    // Connecting again (and several at once) applies nothing and keeps the data.
    let (a, b, c) = tokio::join!(
        Storage::connect(&t.url),
        Storage::connect(&t.url),
        Storage::connect(&t.url)
    );
    for x in [a, b, c] {
        let x = x.unwrap();
        assert!(x.accounts().exists(("d", "keep")).await.unwrap());
        x.close().await;
    }
    assert_eq!(
        rows(s, "schema_migrations").await,
        migrate::SQLITE.len() as i64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_concurrent_fresh() {
    // Several processes-worth of pools racing to migrate an empty database.
    for t in targets("migrations_concurrent_fresh").await {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let url = t.url.clone();
            set.spawn(async move { Storage::connect(&url).await });
        }
        while let Some(r) = set.join_next().await {
            let s = r.unwrap().unwrap_or_else(|e| panic!("{}: {e}", t.url));
            assert_eq!(
                rows(&s, "schema_migrations").await,
                migrate::SQLITE.len() as i64
            );
            s.close().await;
        }
    }
}

#[tokio::test]
async fn connect_urls() {
    assert!(matches!(
        Storage::connect("mysql://u:secret@h/db").await,
        Err(StorageError::Url(m)) if !m.contains("secret")
    ));
    assert!(matches!(
        Storage::connect("nonsense").await,
        Err(StorageError::Url(_))
    ));
    assert!(matches!(
        Storage::connect("sqlite://").await,
        Err(StorageError::Url(_))
    ));

    // In-memory database: one shared connection, migrated.
    let m = Storage::connect("sqlite::memory:").await.unwrap();
    assert_eq!(m.backend_name(), "sqlite");
    m.accounts().create(("d", "u"), &[]).await.unwrap();
    assert!(m.accounts().exists(("d", "u")).await.unwrap());

    // Parent directories are created; WAL mode; foreign keys on.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/starling.db");
    let s = Storage::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert!(path.exists());
    let Db::Sqlite(p) = &s.db else { unreachable!() };
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(p)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(p)
        .await
        .unwrap();
    assert_eq!(fk, 1);
    s.close().await;

    // The same file through `sqlite:` without slashes.
    let s2 = Storage::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    assert_eq!(
        rows(&s2, "schema_migrations").await,
        migrate::SQLITE.len() as i64
    );
    s2.close().await;

    assert_eq!(
        pg_url_with_db("postgres://a:b@h:1/postgres?sslmode=disable", "x"),
        "postgres://a:b@h:1/x?sslmode=disable"
    );
    assert_eq!(pg_url_with_db("postgres://h", "x"), "postgres://h/x");
}

both!(accounts_basic);
async fn accounts_basic(s: &Storage, _t: &Target) {
    let a = s.accounts();
    let u = ("example.org", "alice");
    assert!(!a.exists(u).await.unwrap());
    assert_eq!(a.credential(u, HashAlg::Sha1).await.unwrap(), None);

    let mut creds = all_creds(1);
    creds[2].iterations = u32::MAX; // needs more than a signed 32-bit column
    a.create(u, &creds).await.unwrap();
    assert!(a.exists(u).await.unwrap());
    assert!(!a.exists(("example.org", "bob")).await.unwrap());
    assert!(!a.exists(("other.org", "alice")).await.unwrap());
    assert!(matches!(
        a.create(u, &all_creds(9)).await,
        Err(StorageError::Conflict)
    ));
    for c in &creds {
        assert_eq!(a.credential(u, c.alg).await.unwrap().as_ref(), Some(c));
    }

    // Replace: only SHA-256 afterwards.
    let new = vec![cred(HashAlg::Sha256, 7)];
    assert!(a.set_credentials(u, &new).await.unwrap());
    assert_eq!(a.credential(u, HashAlg::Sha1).await.unwrap(), None);
    assert_eq!(a.credential(u, HashAlg::Sha512).await.unwrap(), None);
    assert_eq!(
        a.credential(u, HashAlg::Sha256).await.unwrap(),
        Some(new[0].clone())
    );
    // Duplicate algorithms: the last one wins.
    assert!(a
        .set_credentials(u, &[cred(HashAlg::Sha1, 3), cred(HashAlg::Sha1, 4)])
        .await
        .unwrap());
    assert_eq!(
        a.credential(u, HashAlg::Sha1).await.unwrap(),
        Some(cred(HashAlg::Sha1, 4))
    );
    assert!(!a
        .set_credentials(("example.org", "nobody"), &new)
        .await
        .unwrap());
    assert!(!a.exists(("example.org", "nobody")).await.unwrap());

    // Account without credentials.
    a.create(("example.org", "nocreds"), &[]).await.unwrap();
    assert_eq!(
        a.credential(("example.org", "nocreds"), HashAlg::Sha256)
            .await
            .unwrap(),
        None
    );

    // Last activity.
    assert_eq!(a.last_activity(u).await.unwrap(), None);
    a.set_last_activity(u, 1_700_000_000, Some("gone fishing"))
        .await
        .unwrap();
    assert_eq!(
        a.last_activity(u).await.unwrap(),
        Some((1_700_000_000, Some("gone fishing".to_string())))
    );
    a.set_last_activity(u, 1_700_000_100, None).await.unwrap();
    assert_eq!(
        a.last_activity(u).await.unwrap(),
        Some((1_700_000_100, None))
    );
    a.set_last_activity(("example.org", "nobody"), 5, None)
        .await
        .unwrap();
    assert_eq!(
        a.last_activity(("example.org", "nobody")).await.unwrap(),
        None
    );

    // Delete.
    assert!(a.delete(u).await.unwrap());
    assert!(!a.delete(u).await.unwrap());
    assert!(!a.exists(u).await.unwrap());
    assert_eq!(a.credential(u, HashAlg::Sha256).await.unwrap(), None);
    assert_eq!(a.last_activity(u).await.unwrap(), None);
}

both!(accounts_list_sorted);
async fn accounts_list_sorted(s: &Storage, _t: &Target) {
    let a = s.accounts();
    assert_eq!(a.list(None).await.unwrap(), vec![]);
    for (d, u) in [
        ("b.org", "zed"),
        ("a.org", "mike"),
        ("b.org", "Zed"),
        ("a.org", "alice"),
        ("c.org", "x"),
        ("b.org", "amy"),
    ] {
        a.create((d, u), &[]).await.unwrap();
    }
    let own = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(d, u)| (d.to_string(), u.to_string()))
            .collect()
    };
    assert_eq!(
        a.list(None).await.unwrap(),
        own(&[
            ("a.org", "alice"),
            ("a.org", "mike"),
            ("b.org", "Zed"),
            ("b.org", "amy"),
            ("b.org", "zed"),
            ("c.org", "x"),
        ])
    );
    assert_eq!(
        a.list(Some("b.org")).await.unwrap(),
        own(&[("b.org", "Zed"), ("b.org", "amy"), ("b.org", "zed")])
    );
    assert_eq!(a.list(Some("nope.org")).await.unwrap(), vec![]);
}

both!(delete_cascades);
async fn delete_cascades(s: &Storage, _t: &Target) {
    let u = ("example.org", "carol");
    let other = ("example.org", "dave");
    for x in [u, other] {
        s.accounts().create(x, &all_creds(2)).await.unwrap();
        s.roster()
            .put(
                x,
                &item("eve@example.org", Subscription::Both, &["Friends", "Work"]),
            )
            .await
            .unwrap();
        s.roster()
            .pending_in_add(x, "mallory@evil.org", "<presence type='subscribe'/>")
            .await
            .unwrap();
        assert!(s.offline().store(x, "<message/>", 1, 10).await.unwrap());
        s.accounts()
            .set_last_activity(x, 42, Some("bye"))
            .await
            .unwrap();
    }
    let tables = [
        "accounts",
        "credentials",
        "roster_items",
        "roster_groups",
        "roster_pending_in",
        "offline_messages",
    ];
    let before: Vec<i64> = {
        let mut v = Vec::new();
        for t in tables {
            v.push(rows(s, t).await);
        }
        v
    };
    assert_eq!(before, vec![2, 6, 2, 4, 2, 2]);

    assert!(s.accounts().delete(u).await.unwrap());
    for (t, b) in tables.iter().zip(&before) {
        assert_eq!(rows(s, t).await, b / 2, "{t} after delete");
    }

    // Re-created account starts empty.
    s.accounts().create(u, &[]).await.unwrap();
    assert_eq!(s.roster().get_all(u).await.unwrap().1, vec![]);
    assert_eq!(s.roster().pending_in_list(u).await.unwrap(), vec![]);
    assert_eq!(s.offline().count(u).await.unwrap(), 0);
    assert_eq!(
        s.accounts().credential(u, HashAlg::Sha1).await.unwrap(),
        None
    );
    assert_eq!(s.accounts().last_activity(u).await.unwrap(), None);
    // The other account is untouched.
    assert_eq!(s.roster().get_all(other).await.unwrap().1.len(), 1);
    assert_eq!(s.offline().count(other).await.unwrap(), 1);
}

both!(create_many_10k);
async fn create_many_10k(s: &Storage, _t: &Target) {
    let a = s.accounts();
    a.create(("bulk.org", "user00042"), &[cred(HashAlg::Sha1, 200)])
        .await
        .unwrap();
    let items: Vec<(String, String, Vec<ScramCredential>)> = (0..10_000)
        .map(|i| {
            (
                "bulk.org".to_string(),
                format!("user{i:05}"),
                all_creds((i % 251) as u8),
            )
        })
        .collect();
    let start = Instant::now();
    let existed = a.create_many(&items).await.unwrap();
    let took = start.elapsed();
    eprintln!(
        "TIMING create_many 10000 accounts x 3 credentials on {}: {:?}",
        s.backend_name(),
        took
    );
    assert_eq!(existed, vec![("bulk.org".into(), "user00042".into())]);
    assert_eq!(rows(s, "accounts").await, 10_000);
    assert_eq!(rows(s, "credentials").await, 1 + 9_999 * 3);
    // The pre-existing account was left untouched.
    assert_eq!(
        a.credential(("bulk.org", "user00042"), HashAlg::Sha1)
            .await
            .unwrap(),
        Some(cred(HashAlg::Sha1, 200))
    );
    assert_eq!(
        a.credential(("bulk.org", "user00042"), HashAlg::Sha256)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        a.credential(("bulk.org", "user09999"), HashAlg::Sha512)
            .await
            .unwrap(),
        Some(cred(HashAlg::Sha512, (9999 % 251) as u8))
    );
    let listed = a.list(Some("bulk.org")).await.unwrap();
    assert_eq!(listed.len(), 10_000);
    assert_eq!(listed[0].1, "user00000");
    assert_eq!(listed[9_999].1, "user09999");

    // Mixed batch: existing, new, and a duplicate within the input.
    let mixed = vec![
        (
            "bulk.org".to_string(),
            "user00001".to_string(),
            all_creds(9),
        ),
        ("bulk.org".to_string(), "new1".to_string(), all_creds(9)),
        ("other.org".to_string(), "user00001".to_string(), vec![]),
        ("bulk.org".to_string(), "new1".to_string(), all_creds(10)),
        ("bulk.org".to_string(), "user09999".to_string(), vec![]),
    ];
    let existed = a.create_many(&mixed).await.unwrap();
    assert_eq!(
        existed,
        vec![
            ("bulk.org".to_string(), "user00001".to_string()),
            ("bulk.org".to_string(), "new1".to_string()),
            ("bulk.org".to_string(), "user09999".to_string()),
        ]
    );
    assert_eq!(
        a.credential(("bulk.org", "new1"), HashAlg::Sha1)
            .await
            .unwrap(),
        Some(cred(HashAlg::Sha1, 9))
    );
    assert_eq!(
        a.credential(("bulk.org", "user00001"), HashAlg::Sha1)
            .await
            .unwrap(),
        Some(cred(HashAlg::Sha1, 1))
    );
    assert!(a.exists(("other.org", "user00001")).await.unwrap());
    assert_eq!(a.create_many(&[]).await.unwrap(), vec![]);
}

both!(roster_crud_and_versions);
async fn roster_crud_and_versions(s: &Storage, _t: &Target) {
    let r = s.roster();
    let u = ("example.org", "alice");
    assert_eq!(r.get_all(u).await.unwrap(), (0, vec![]));
    assert_eq!(r.version(u).await.unwrap(), 0);
    assert!(matches!(
        r.put(u, &item("bob@example.org", Subscription::None, &[]))
            .await,
        Err(StorageError::NoAccount)
    ));
    s.accounts().create(u, &[]).await.unwrap();
    let (v0, items) = r.get_all(u).await.unwrap();
    assert!(
        items.is_empty() && v0 > 0,
        "new accounts start from the clock: {v0}"
    );

    let mut last = r.version(u).await.unwrap();
    macro_rules! bump {
        ($v:expr) => {{
            let v: i64 = $v;
            assert!(v > last, "version {v} not above {last}");
            last = v;
        }};
    }

    let bob = item("bob@example.org", Subscription::To, &["Work", "Friends"]);
    let mut zoe = item("zoe@example.net", Subscription::Both, &[]);
    zoe.name = None;
    zoe.ask = true;
    zoe.approved = true;
    let amy = item("amy@example.org", Subscription::From, &["Z", "A", "M"]);

    bump!(r.put(u, &bob).await.unwrap());
    bump!(r.put(u, &zoe).await.unwrap());
    bump!(r.put(u, &amy).await.unwrap());
    assert_eq!(
        r.get(u, "bob@example.org").await.unwrap(),
        Some(bob.clone())
    );
    assert_eq!(
        r.get(u, "zoe@example.net").await.unwrap(),
        Some(zoe.clone())
    );
    assert_eq!(r.get(u, "nobody@example.org").await.unwrap(), None);
    let (v, all) = r.get_all(u).await.unwrap();
    assert_eq!(v, last);
    assert_eq!(r.version(u).await.unwrap(), last);
    assert_eq!(all, vec![amy.clone(), bob.clone(), zoe.clone()]);

    // Replace: groups replaced (order kept, duplicates dropped), flags updated.
    let mut bob2 = bob.clone();
    bob2.subscription = Subscription::Both;
    bob2.name = Some("Robert".into());
    bob2.groups = vec!["Family".into(), "Work".into(), "Family".into()];
    bob2.ask = true;
    bump!(r.put(u, &bob2).await.unwrap());
    let got = r.get(u, "bob@example.org").await.unwrap().unwrap();
    assert_eq!(got.groups, vec!["Family".to_string(), "Work".to_string()]);
    assert_eq!(got.subscription, Subscription::Both);
    assert_eq!(got.name.as_deref(), Some("Robert"));
    assert!(got.ask);
    // Putting an identical item still bumps the version.
    bump!(r.put(u, &zoe).await.unwrap());

    // Remove.
    bump!(r.remove(u, "amy@example.org").await.unwrap().unwrap());
    let before = r.version(u).await.unwrap();
    assert_eq!(r.remove(u, "amy@example.org").await.unwrap(), None);
    assert_eq!(
        r.remove(("example.org", "ghost"), "x@y").await.unwrap(),
        None
    );
    assert_eq!(r.version(u).await.unwrap(), before);
    let (v, all) = r.get_all(u).await.unwrap();
    assert_eq!(v, last);
    assert_eq!(
        all.iter().map(|i| i.contact.as_str()).collect::<Vec<_>>(),
        vec!["bob@example.org", "zoe@example.net"]
    );
    assert_eq!(rows(s, "roster_groups").await, 2);

    // Other users are independent.
    let w = ("example.org", "walter");
    s.accounts().create(w, &[]).await.unwrap();
    let (w0, w_items) = r.get_all(w).await.unwrap();
    assert_eq!(w_items, vec![]);
    assert_eq!(r.put(w, &bob).await.unwrap(), w0 + 1);

    // Concurrent writers: every version distinct and the final one is the maximum.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let s = s.clone();
        set.spawn(async move {
            s.roster()
                .put(
                    ("example.org", "alice"),
                    &item(&format!("c{i}@x.org"), Subscription::None, &["G"]),
                )
                .await
                .unwrap()
        });
    }
    let mut versions = Vec::new();
    while let Some(v) = set.join_next().await {
        versions.push(v.unwrap());
    }
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), 20);
    assert!(versions[0] > last);
    assert_eq!(r.version(u).await.unwrap(), *versions.last().unwrap());
    assert_eq!(r.get_all(u).await.unwrap().1.len(), 22);
}

both!(pending_in);
async fn pending_in(s: &Storage, t: &Target) {
    let r = s.roster();
    let u = ("example.org", "alice");
    assert!(matches!(
        r.pending_in_add(u, "x@y", "<presence/>").await,
        Err(StorageError::NoAccount)
    ));
    s.accounts().create(u, &[]).await.unwrap();
    let v0 = r.version(u).await.unwrap();
    assert_eq!(r.pending_in_list(u).await.unwrap(), vec![]);
    assert!(!r.pending_in_has(u, "zed@a.org").await.unwrap());

    let st = |c: &str, n: u32| format!("<presence from='{c}' type='subscribe' id='{n}'/>");
    r.pending_in_add(u, "zed@a.org", &st("zed@a.org", 1))
        .await
        .unwrap();
    r.pending_in_add(u, "amy@a.org", &st("amy@a.org", 2))
        .await
        .unwrap();
    r.pending_in_add(u, "bob@a.org", &st("bob@a.org", 3))
        .await
        .unwrap();
    // Repeated request: stanza replaced, position kept.
    r.pending_in_add(u, "zed@a.org", &st("zed@a.org", 4))
        .await
        .unwrap();
    assert!(r.pending_in_has(u, "amy@a.org").await.unwrap());
    assert!(!r
        .pending_in_has(("example.org", "other"), "amy@a.org")
        .await
        .unwrap());
    let expect = vec![
        ("zed@a.org".to_string(), st("zed@a.org", 4)),
        ("amy@a.org".to_string(), st("amy@a.org", 2)),
        ("bob@a.org".to_string(), st("bob@a.org", 3)),
    ];
    assert_eq!(r.pending_in_list(u).await.unwrap(), expect);

    // Survives a reconnect.
    let s2 = Storage::connect(&t.url).await.unwrap();
    assert_eq!(s2.roster().pending_in_list(u).await.unwrap(), expect);
    assert!(s2.roster().pending_in_remove(u, "amy@a.org").await.unwrap());
    s2.close().await;

    assert!(!r.pending_in_remove(u, "amy@a.org").await.unwrap());
    assert!(!r.pending_in_has(u, "amy@a.org").await.unwrap());
    assert!(!r
        .pending_in_remove(("example.org", "ghost"), "amy@a.org")
        .await
        .unwrap());
    assert_eq!(
        r.pending_in_list(u).await.unwrap(),
        vec![expect[0].clone(), expect[2].clone()]
    );
    // Pending requests don't touch the roster version.
    assert_eq!(r.version(u).await.unwrap(), v0);
}

both!(offline_queue);
async fn offline_queue(s: &Storage, _t: &Target) {
    let o = s.offline();
    let u = ("example.org", "alice");
    assert!(matches!(
        o.store(u, "<message/>", 1, 10).await,
        Err(StorageError::NoAccount)
    ));
    assert_eq!(o.count(u).await.unwrap(), 0);
    assert_eq!(o.take_all(u).await.unwrap(), vec![]);
    s.accounts().create(u, &[]).await.unwrap();
    s.accounts()
        .create(("example.org", "bob"), &[])
        .await
        .unwrap();

    for i in 0..5 {
        // Stamps deliberately not monotonic: order is arrival order, not stamp order.
        let stamp = 1_000 - i as i64;
        assert!(o
            .store(u, &format!("<message id='{i}'/>"), stamp, 5)
            .await
            .unwrap());
    }
    assert!(!o.store(u, "<message id='over'/>", 0, 5).await.unwrap());
    assert!(!o.store(u, "<message id='over'/>", 0, 0).await.unwrap());
    assert_eq!(o.count(u).await.unwrap(), 5);
    assert!(o
        .store(("example.org", "bob"), "<message/>", 7, 5)
        .await
        .unwrap());
    // A larger cap allows more.
    assert!(o.store(u, "<message id='5'/>", 995, 6).await.unwrap());

    let got = o.take_all(u).await.unwrap();
    assert_eq!(
        got,
        (0..6)
            .map(|i| OfflineMessage {
                stanza: format!("<message id='{i}'/>"),
                stamp_ms: 1_000 - i as i64,
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(o.count(u).await.unwrap(), 0);
    assert_eq!(o.take_all(u).await.unwrap(), vec![]);
    assert_eq!(o.count(("example.org", "bob")).await.unwrap(), 1);

    // The cap holds under concurrent writers.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..24 {
        let s = s.clone();
        set.spawn(async move {
            s.offline()
                .store(("example.org", "alice"), &format!("<m{i}/>"), i, 7)
                .await
                .unwrap()
        });
    }
    let mut stored = 0;
    while let Some(ok) = set.join_next().await {
        stored += ok.unwrap() as u32;
    }
    assert_eq!(stored, 7);
    assert_eq!(o.count(u).await.unwrap(), 7);
    assert_eq!(o.take_all(u).await.unwrap().len(), 7);
}

both!(corrupt_rows_do_not_panic);
async fn corrupt_rows_do_not_panic(s: &Storage, _t: &Target) {
    let u = ("example.org", "alice");
    s.accounts().create(u, &all_creds(1)).await.unwrap();
    exec(
        s,
        "UPDATE credentials SET iterations = -1 WHERE alg = 'sha1'",
    )
    .await;
    exec(
        s,
        "UPDATE credentials SET iterations = 99999999999 WHERE alg = 'sha256'",
    )
    .await;
    exec(s, "UPDATE credentials SET alg = 'md5' WHERE alg = 'sha512'").await;
    for alg in [HashAlg::Sha1, HashAlg::Sha256] {
        assert!(matches!(
            s.accounts().credential(u, alg).await,
            Err(StorageError::Corrupt(_))
        ));
    }
    assert_eq!(
        s.accounts().credential(u, HashAlg::Sha512).await.unwrap(),
        None
    );
    if s.backend_name() == "sqlite" {
        // SQLite is dynamically typed: a text value in an integer column.
        exec(s, "UPDATE accounts SET last_logout = 'yesterday'").await;
        assert!(matches!(
            s.accounts().last_activity(u).await,
            Err(StorageError::Corrupt(_))
        ));
    }
}

/// Compile-time check: every public future can be moved into `tokio::spawn` (the server
/// spawns per-connection tasks that call into storage). Never run.
#[allow(dead_code, unused_must_use)]
fn public_futures_are_send(s: Storage, url: String) {
    tokio::spawn(async move {
        let u = ("d", "u");
        let c = cred(HashAlg::Sha1, 0);
        Storage::connect(&url).await;
        s.close().await;
        let a = s.accounts();
        a.create(u, std::slice::from_ref(&c)).await;
        a.create_many(&[]).await;
        a.exists(u).await;
        a.credential(u, HashAlg::Sha1).await;
        a.set_credentials(u, &[]).await;
        a.delete(u).await;
        a.list(None).await;
        a.set_last_activity(u, 0, None).await;
        a.last_activity(u).await;
        let r = s.roster();
        let it = item("c", Subscription::None, &[]);
        r.get_all(u).await;
        r.get(u, "c").await;
        r.put(u, &it).await;
        r.remove(u, "c").await;
        r.version(u).await;
        r.pending_in_add(u, "c", "s").await;
        r.pending_in_remove(u, "c").await;
        r.pending_in_has(u, "c").await;
        r.pending_in_list(u).await;
        let o = s.offline();
        o.store(u, "s", 0, 1).await;
        o.take_all(u).await;
        o.count(u).await;
    });
}

both!(recreated_account_never_reuses_roster_versions);
/// A client caching version N of a deleted account must not see a re-created account with
/// the same name as "up to date".
async fn recreated_account_never_reuses_roster_versions(s: &Storage, _t: &Target) {
    let r = s.roster();
    let u = ("example.org", "carol");
    s.accounts().create(u, &[]).await.unwrap();
    let mut last = 0;
    for i in 0..5 {
        last = r
            .put(
                u,
                &item(&format!("c{i}@example.org"), Subscription::None, &[]),
            )
            .await
            .unwrap();
    }
    assert!(s.accounts().delete(u).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    s.accounts().create(u, &[]).await.unwrap();
    assert!(r.version(u).await.unwrap() > last);
    s.accounts()
        .create_many(&[("example.org".into(), "dave".into(), vec![])])
        .await
        .unwrap();
    assert!(r.version(("example.org", "dave")).await.unwrap() > 0);
}

both!(offline_byte_cap);
/// The byte cap counts stanza bytes (not characters) and refuses the message that would
/// cross it, leaving earlier ones stored.
async fn offline_byte_cap(s: &Storage, _t: &Target) {
    let u = ("example.org", "erin");
    s.accounts().create(u, &[]).await.unwrap();
    let o = s.offline();
    let cap = OfflineCap {
        messages: 100,
        bytes: 30,
    };
    let msg = "<message>é</message>"; // 21 bytes, 20 characters
    assert_eq!(msg.len(), 21);
    assert!(o.store(u, msg, 1, cap).await.unwrap());
    assert!(!o.store(u, msg, 2, cap).await.unwrap(), "21 + 21 > 30");
    assert!(
        o.store(u, "<m>x</m>", 3, cap).await.unwrap(),
        "21 + 8 <= 30"
    );
    assert!(!o.store(u, "<a/>", 4, cap).await.unwrap(), "29 + 4 > 30");
    assert_eq!(o.count(u).await.unwrap(), 2);
    assert_eq!(o.take_all(u).await.unwrap().len(), 2);
    assert!(
        o.store(u, msg, 5, cap).await.unwrap(),
        "room again after delivery"
    );
}

mod archive;
#[path = "tests_blocking.rs"]
mod blocking;
/// XEP-0484 FAST token storage.
mod fast;
#[path = "tests_muc.rs"]
mod muc;
/// XEP-0363 upload slots.
mod upload;
#[path = "tests_vcard_private_push.rs"]
mod vcard_private_push;
