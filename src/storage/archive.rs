//! XEP-0313 user message archives and XEP-0441 archiving preferences.
//!
//! Rows are ordered by an internal integer (`archive.id`, assigned at insert); the public
//! UID is the XEP-0359 `stanza_id`, an opaque random string, resolved to its row once per
//! query ([`Archive::row_of`]) so paging is a range scan on `(account_id, id)` or
//! `(account_id, with_bare, id)` whatever the UID looks like. Queries are built from an
//! [`ArchiveFilter`] into one statement per backend; every shape is served by an index
//! (see `migrations/*/0002_archive.sql`).

use super::{col, corrupt, Archive, Db, StorageError, UserRef};

/// One message to archive in one user's archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewArchived {
    /// The archive owner (domain, username).
    pub owner: (String, String),
    pub stanza_id: String,
    pub stamp_ms: i64,
    /// The other party's bare JID and resource ('' when none).
    pub with_bare: String,
    pub with_res: String,
    pub origin_id: Option<String>,
    pub outgoing: bool,
    pub stanza: String,
}

/// One archived message as returned by a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedMessage {
    /// Internal order key (for paging; never shown to clients).
    pub row: i64,
    pub stanza_id: String,
    pub stamp_ms: i64,
    pub stanza: String,
    /// A room archive's sender real bare JID (XEP-0313 §5.1.2 shows it to those who may
    /// see real JIDs); empty in user archives.
    pub sender: String,
}

/// What a query selects, before paging. Row bounds are exclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveFilter {
    /// Bare JID of the other party, and its resource when only that full JID matches.
    pub with: Option<(String, Option<String>)>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub after_row: Option<i64>,
    pub before_row: Option<i64>,
    /// Only these UIDs (XEP-0313 'ids'); empty means no restriction.
    pub ids: Vec<String>,
}

/// Which end of the selection a page is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Oldest first.
    Forward,
    /// Newest first (RSM `<before/>`).
    Backward,
}

/// XEP-0441 default archiving mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefsDefault {
    Always,
    Never,
    Roster,
}

impl PrefsDefault {
    pub fn as_str(self) -> &'static str {
        match self {
            PrefsDefault::Always => "always",
            PrefsDefault::Never => "never",
            PrefsDefault::Roster => "roster",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "always" => Some(PrefsDefault::Always),
            "never" => Some(PrefsDefault::Never),
            "roster" => Some(PrefsDefault::Roster),
            _ => None,
        }
    }
}

/// XEP-0441 preferences of one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivePrefs {
    pub default: PrefsDefault,
    pub always: Vec<String>,
    pub never: Vec<String>,
}

/// A bound value for a dynamically built statement.
enum Arg {
    I(i64),
    S(String),
}

/// `?` (SQLite) or `$n` (PostgreSQL) placeholders, numbered as they are appended.
struct Sql {
    pg: bool,
    text: String,
    args: Vec<Arg>,
}

impl Sql {
    fn new(pg: bool, text: &str) -> Sql {
        Sql {
            pg,
            text: text.to_string(),
            args: Vec::new(),
        }
    }
    /// Append `fragment`, each `#` becoming the next placeholder, and bind `args` in order.
    fn push(&mut self, fragment: &str, args: impl IntoIterator<Item = Arg>) {
        let mut n = self.args.len();
        for c in fragment.chars() {
            if c != '#' {
                self.text.push(c);
            } else if self.pg {
                n += 1;
                self.text.push_str(&format!("${n}"));
            } else {
                self.text.push('?');
            }
        }
        self.args.extend(args);
    }
}

macro_rules! bind_all {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Arg::I(v) => q.bind(v),
                Arg::S(v) => q.bind(v),
            };
        }
        q
    }};
}

/// Whose archive a query reads: a user's (XEP-0313 §4, table `archive`) or a MUC room's
/// (§5, table `muc_archive`, same shape, owned by a `muc_rooms` row). A [`UserRef`] converts
/// into the user's, so user-archive callers pass `(domain, username)` as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveOwner<'a> {
    User(UserRef<'a>),
    /// (service domain, room node).
    Room(UserRef<'a>),
}

impl<'a> From<UserRef<'a>> for ArchiveOwner<'a> {
    fn from(u: UserRef<'a>) -> Self {
        ArchiveOwner::User(u)
    }
}

impl ArchiveOwner<'_> {
    /// The column read as [`ArchivedMessage::sender`].
    fn sender(&self) -> &'static str {
        match self {
            ArchiveOwner::User(_) => "''",
            ArchiveOwner::Room(_) => "sender",
        }
    }
    fn table(&self) -> &'static str {
        match self {
            ArchiveOwner::User(_) => "archive",
            ArchiveOwner::Room(_) => "muc_archive",
        }
    }
    /// `owner_col = (subquery of the owner's id)`, two placeholders.
    fn owner_is(&self, alias: &str) -> String {
        match self {
            ArchiveOwner::User(_) => format!(
                "{alias}account_id = (SELECT id FROM accounts WHERE domain = # AND username = #)"
            ),
            ArchiveOwner::Room(_) => format!(
                "{alias}room_id = (SELECT id FROM muc_rooms WHERE service = # AND node = #)"
            ),
        }
    }
    fn args(&self) -> [Arg; 2] {
        let (ArchiveOwner::User(u) | ArchiveOwner::Room(u)) = self;
        [Arg::S(u.0.to_string()), Arg::S(u.1.to_string())]
    }
}

/// `<owner> = <its id>` plus the filter's conditions.
fn where_clause(sql: &mut Sql, o: ArchiveOwner<'_>, f: &ArchiveFilter) {
    let table = o.table();
    sql.push(&format!(" WHERE {}", o.owner_is("")), o.args());
    if let Some((bare, res)) = &f.with {
        sql.push(" AND with_bare = #", [Arg::S(bare.clone())]);
        if let Some(r) = res {
            sql.push(" AND with_res = #", [Arg::S(r.clone())]);
        }
    }
    // Time bounds become row bounds: stamps never decrease along rows (the writer keeps
    // them so), so the first row at or after 'start' is one descent of the
    // (account_id, stamp_ms, id) index, and the page is still a range scan in row order
    // (filtering on stamp_ms directly would make the planner sort every matching row).
    if let Some(v) = f.start_ms {
        sql.push(
            &format!(
                " AND id >= COALESCE((SELECT s.id FROM {table} s WHERE {}
               AND s.stamp_ms >= # ORDER BY s.stamp_ms ASC, s.id ASC LIMIT 1),
               9223372036854775807)",
                o.owner_is("s.")
            ),
            o.args().into_iter().chain([Arg::I(v)]),
        );
    }
    if let Some(v) = f.end_ms {
        sql.push(
            &format!(
                " AND id <= COALESCE((SELECT s.id FROM {table} s WHERE {}
               AND s.stamp_ms <= # ORDER BY s.stamp_ms DESC, s.id DESC LIMIT 1), -1)",
                o.owner_is("s.")
            ),
            o.args().into_iter().chain([Arg::I(v)]),
        );
    }
    if let Some(v) = f.after_row {
        sql.push(" AND id > #", [Arg::I(v)]);
    }
    if let Some(v) = f.before_row {
        sql.push(" AND id < #", [Arg::I(v)]);
    }
    if !f.ids.is_empty() {
        let marks = vec!["#"; f.ids.len()].join(", ");
        sql.push(
            &format!(" AND stanza_id IN ({marks})"),
            f.ids.iter().map(|s| Arg::S(s.clone())),
        );
    }
}

fn split_jids(s: &str) -> Vec<String> {
    s.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Rows per INSERT statement: 10 parameters each, well under SQLite's oldest limit (999).
const INSERT_CHUNK: usize = 64;

/// `INSERT ... SELECT` of `rows` rows given as a VALUES list (placeholder `i` from `param`),
/// joined to their owners' accounts; rows without an account yield nothing.
fn insert_sql(rows: usize, param: impl Fn(usize) -> String) -> String {
    const COLS: usize = 10;
    let mut sql = String::with_capacity(400 + rows * COLS * 6);
    sql.push_str(
        "WITH v (seq, stanza_id, stamp_ms, with_bare, with_res, origin_id, outgoing, stanza,
                 domain, username) AS (VALUES ",
    );
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..COLS {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&param(r * COLS + c));
        }
        sql.push(')');
    }
    sql.push_str(
        ") INSERT INTO archive (account_id, stanza_id, stamp_ms, with_bare, with_res, origin_id,
                                outgoing, stanza)
          SELECT a.id, v.stanza_id, v.stamp_ms, v.with_bare, v.with_res, v.origin_id,
                 v.outgoing, v.stanza
          FROM v JOIN accounts a ON a.domain = v.domain AND a.username = v.username
          ORDER BY v.seq",
    );
    sql
}

impl Archive<'_> {
    /// Append messages (possibly to many archives) in one transaction. Rows whose owner has
    /// no account are skipped (the recipient of a message may not exist). Returns how many
    /// were stored.
    ///
    /// Several rows per statement ([`INSERT_CHUNK`]): the per-statement cost (a round trip
    /// to the SQLite worker thread or the PostgreSQL server) was most of the writer's time,
    /// and the writer's pace bounds the archived message rate. `ORDER BY seq` keeps the
    /// archive order (ids are assigned in the order rows are inserted) whatever join order
    /// the planner picks.
    pub async fn insert_batch(&self, rows: &[NewArchived]) -> Result<u64, StorageError> {
        let mut n = 0;
        match &self.s.db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                for chunk in rows.chunks(INSERT_CHUNK) {
                    let sql = insert_sql(chunk.len(), |_| "?".to_string());
                    let mut q = sqlx::query(&sql);
                    for (seq, r) in chunk.iter().enumerate() {
                        q = q
                            .bind(seq as i64)
                            .bind(&r.stanza_id)
                            .bind(r.stamp_ms)
                            .bind(&r.with_bare)
                            .bind(&r.with_res)
                            .bind(&r.origin_id)
                            .bind(r.outgoing)
                            .bind(&r.stanza)
                            .bind(&r.owner.0)
                            .bind(&r.owner.1);
                    }
                    n += q.execute(&mut *tx).await?.rows_affected();
                }
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for chunk in rows.chunks(INSERT_CHUNK) {
                    let sql = insert_sql(chunk.len(), |i| format!("${}", i + 1));
                    let mut q = sqlx::query(&sql);
                    for (seq, r) in chunk.iter().enumerate() {
                        q = q
                            .bind(seq as i64)
                            .bind(&r.stanza_id)
                            .bind(r.stamp_ms)
                            .bind(&r.with_bare)
                            .bind(&r.with_res)
                            .bind(&r.origin_id)
                            .bind(r.outgoing)
                            .bind(&r.stanza)
                            .bind(&r.owner.0)
                            .bind(&r.owner.1);
                    }
                    n += q.execute(&mut *tx).await?.rows_affected();
                }
                tx.commit().await?;
            }
        }
        Ok(n)
    }

    /// The internal row of a UID in the user's archive.
    pub async fn row_of<'u>(
        &self,
        u: impl Into<ArchiveOwner<'u>>,
        stanza_id: &str,
    ) -> Result<Option<i64>, StorageError> {
        let o = u.into();
        let pg = matches!(self.s.db, Db::Postgres(_));
        let mut sql = Sql::new(pg, &format!("SELECT id FROM {}", o.table()));
        sql.push(&format!(" WHERE {}", o.owner_is("")), o.args());
        sql.push(" AND stanza_id = #", [Arg::S(stanza_id.to_string())]);
        let Sql { text, args, .. } = sql;
        Ok(match &self.s.db {
            Db::Sqlite(pool) => {
                bind_all!(sqlx::query_scalar(&text), args)
                    .fetch_optional(pool)
                    .await?
            }
            Db::Postgres(pool) => {
                bind_all!(sqlx::query_scalar(&text), args)
                    .fetch_optional(pool)
                    .await?
            }
        })
    }

    /// Up to `limit` matching messages from one end of the selection, in the order taken
    /// (oldest first for [`Direction::Forward`], newest first for [`Direction::Backward`]).
    pub async fn page<'u>(
        &self,
        u: impl Into<ArchiveOwner<'u>>,
        f: &ArchiveFilter,
        dir: Direction,
        limit: u32,
    ) -> Result<Vec<ArchivedMessage>, StorageError> {
        let pg = matches!(self.s.db, Db::Postgres(_));
        let o = u.into();
        let mut sql = Sql::new(
            pg,
            &format!(
                "SELECT id, stanza_id, stamp_ms, stanza, {} FROM {}",
                o.sender(),
                o.table()
            ),
        );
        where_clause(&mut sql, o, f);
        let order = match dir {
            Direction::Forward => "ASC",
            Direction::Backward => "DESC",
        };
        sql.push(
            &format!(" ORDER BY id {order} LIMIT #"),
            [Arg::I(i64::from(limit))],
        );
        let Sql { text, args, .. } = sql;
        let rows = match &self.s.db {
            Db::Sqlite(pool) => bind_all!(sqlx::query(&text), args)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(ArchivedMessage {
                        row: col(r, 0)?,
                        stanza_id: col(r, 1)?,
                        stamp_ms: col(r, 2)?,
                        stanza: col(r, 3)?,
                        sender: col(r, 4)?,
                    })
                })
                .collect::<Result<Vec<_>, StorageError>>()?,
            Db::Postgres(pool) => bind_all!(sqlx::query(&text), args)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(ArchivedMessage {
                        row: col(r, 0)?,
                        stanza_id: col(r, 1)?,
                        stamp_ms: col(r, 2)?,
                        stanza: col(r, 3)?,
                        sender: col(r, 4)?,
                    })
                })
                .collect::<Result<Vec<_>, StorageError>>()?,
        };
        Ok(rows)
    }

    /// How many messages the filter selects (RSM `<count/>`).
    pub async fn count<'u>(
        &self,
        u: impl Into<ArchiveOwner<'u>>,
        f: &ArchiveFilter,
    ) -> Result<u64, StorageError> {
        let pg = matches!(self.s.db, Db::Postgres(_));
        let o = u.into();
        let mut sql = Sql::new(pg, &format!("SELECT COUNT(*) FROM {}", o.table()));
        where_clause(&mut sql, o, f);
        let Sql { text, args, .. } = sql;
        let n: i64 = match &self.s.db {
            Db::Sqlite(pool) => {
                bind_all!(sqlx::query_scalar(&text), args)
                    .fetch_one(pool)
                    .await?
            }
            Db::Postgres(pool) => {
                bind_all!(sqlx::query_scalar(&text), args)
                    .fetch_one(pool)
                    .await?
            }
        };
        u64::try_from(n).map_err(|_| corrupt(format!("archive count {n}")))
    }

    /// The query plan of [`Archive::page`] (EXPLAIN), for the benchmark's index check.
    pub async fn explain_page(
        &self,
        u: UserRef<'_>,
        f: &ArchiveFilter,
        dir: Direction,
        limit: u32,
    ) -> Result<String, StorageError> {
        let pg = matches!(self.s.db, Db::Postgres(_));
        let prefix = if pg {
            "EXPLAIN SELECT id, stanza_id, stamp_ms, stanza FROM archive"
        } else {
            "EXPLAIN QUERY PLAN SELECT id, stanza_id, stamp_ms, stanza FROM archive"
        };
        let mut sql = Sql::new(pg, prefix);
        where_clause(&mut sql, u.into(), f);
        let order = match dir {
            Direction::Forward => "ASC",
            Direction::Backward => "DESC",
        };
        sql.push(
            &format!(" ORDER BY id {order} LIMIT #"),
            [Arg::I(i64::from(limit))],
        );
        let Sql { text, args, .. } = sql;
        let lines: Vec<String> = match &self.s.db {
            Db::Sqlite(pool) => bind_all!(sqlx::query(&text), args)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| col::<_, String>(r, 3))
                .collect::<Result<_, _>>()?,
            Db::Postgres(pool) => bind_all!(sqlx::query(&text), args)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| col::<_, String>(r, 0))
                .collect::<Result<_, _>>()?,
        };
        Ok(lines.join("\n"))
    }

    /// The oldest and newest messages of the archive (XEP-0313 metadata), None when empty.
    pub async fn bounds<'u>(
        &self,
        u: impl Into<ArchiveOwner<'u>>,
    ) -> Result<Option<(ArchivedMessage, ArchivedMessage)>, StorageError> {
        let u = u.into();
        let f = ArchiveFilter::default();
        let first = self.page(u, &f, Direction::Forward, 1).await?;
        let last = self.page(u, &f, Direction::Backward, 1).await?;
        Ok(first.into_iter().next().zip(last.into_iter().next()))
    }

    /// Delete up to `batch` messages (of any archive) stored before `before_ms`; returns how
    /// many were deleted, so the caller repeats while a full batch went.
    pub async fn expire(&self, before_ms: i64, batch: u32) -> Result<u64, StorageError> {
        let batch = i64::from(batch);
        Ok(match &self.s.db {
            Db::Sqlite(pool) => sqlx::query(
                "DELETE FROM archive WHERE id IN
                     (SELECT id FROM archive WHERE stamp_ms < ? LIMIT ?)",
            )
            .bind(before_ms)
            .bind(batch)
            .execute(pool)
            .await?
            .rows_affected(),
            Db::Postgres(pool) => sqlx::query(
                "DELETE FROM archive WHERE id IN
                     (SELECT id FROM archive WHERE stamp_ms < $1 LIMIT $2)",
            )
            .bind(before_ms)
            .bind(batch)
            .execute(pool)
            .await?
            .rows_affected(),
        })
    }

    /// Stored preferences of one user, None when never set.
    pub async fn prefs_get(&self, u: UserRef<'_>) -> Result<Option<ArchivePrefs>, StorageError> {
        let (domain, username) = u;
        let row: Option<(String, String, String)> = match &self.s.db {
            Db::Sqlite(pool) => {
                sqlx::query_as(
                    "SELECT p.default_mode, p.always_jids, p.never_jids
                     FROM archive_prefs p JOIN accounts a ON a.id = p.account_id
                     WHERE a.domain = ? AND a.username = ?",
                )
                .bind(domain)
                .bind(username)
                .fetch_optional(pool)
                .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT p.default_mode, p.always_jids, p.never_jids
                     FROM archive_prefs p JOIN accounts a ON a.id = p.account_id
                     WHERE a.domain = $1 AND a.username = $2",
                )
                .bind(domain)
                .bind(username)
                .fetch_optional(pool)
                .await?
            }
        };
        row.map(prefs_from_row).transpose()
    }

    /// Every user's stored preferences (loaded once at startup: only users who changed the
    /// defaults have a row).
    pub async fn prefs_all(&self) -> Result<Vec<((String, String), ArchivePrefs)>, StorageError> {
        let sql = "SELECT a.domain, a.username, p.default_mode, p.always_jids, p.never_jids
                   FROM archive_prefs p JOIN accounts a ON a.id = p.account_id";
        let rows: Vec<(String, String, String, String, String)> = match &self.s.db {
            Db::Sqlite(pool) => sqlx::query_as(sql).fetch_all(pool).await?,
            Db::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await?,
        };
        rows.into_iter()
            .map(|(d, u, m, a, n)| Ok(((d, u), prefs_from_row((m, a, n))?)))
            .collect()
    }

    /// Replace a user's preferences. Err(NoAccount) when the user has no account.
    pub async fn prefs_set(&self, u: UserRef<'_>, p: &ArchivePrefs) -> Result<(), StorageError> {
        let (domain, username) = u;
        let (always, never) = (p.always.join("\n"), p.never.join("\n"));
        let n = match &self.s.db {
            Db::Sqlite(pool) => sqlx::query(
                "INSERT INTO archive_prefs (account_id, default_mode, always_jids, never_jids)
                 SELECT id, ?, ?, ? FROM accounts WHERE domain = ? AND username = ?
                 ON CONFLICT (account_id) DO UPDATE SET default_mode = excluded.default_mode,
                     always_jids = excluded.always_jids, never_jids = excluded.never_jids",
            )
            .bind(p.default.as_str())
            .bind(always)
            .bind(never)
            .bind(domain)
            .bind(username)
            .execute(pool)
            .await?
            .rows_affected(),
            Db::Postgres(pool) => sqlx::query(
                "INSERT INTO archive_prefs (account_id, default_mode, always_jids, never_jids)
                 SELECT id, $1, $2, $3 FROM accounts WHERE domain = $4 AND username = $5
                 ON CONFLICT (account_id) DO UPDATE SET default_mode = excluded.default_mode,
                     always_jids = excluded.always_jids, never_jids = excluded.never_jids",
            )
            .bind(p.default.as_str())
            .bind(always)
            .bind(never)
            .bind(domain)
            .bind(username)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        if n == 0 {
            return Err(StorageError::NoAccount);
        }
        Ok(())
    }
}

fn prefs_from_row(
    (mode, always, never): (String, String, String),
) -> Result<ArchivePrefs, StorageError> {
    Ok(ArchivePrefs {
        default: PrefsDefault::parse(&mode)
            .ok_or_else(|| corrupt(format!("archive default mode {mode:?}")))?,
        always: split_jids(&always),
        never: split_jids(&never),
    })
}
