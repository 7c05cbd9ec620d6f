//! Persistent storage over sqlx: SQLite (embedded default) and PostgreSQL side by side,
//! one module per domain, SQL written per backend, migrations embedded from `migrations/`.
//!
//! Layout:
//! - [`migrate`]: embedded numbered migrations and the tiny migrator (`schema_migrations`).
//! - [`accounts`]: accounts, SCRAM credentials, last activity (XEP-0012).
//! - [`roster`]: roster items with groups, versions (XEP-0237), pending inbound subscriptions.
//! - [`offline`]: offline message queue with a per-user cap.
//! - [`vcard`], [`private`], [`push`]: XEP-0054 vCards, XEP-0049 private XML, XEP-0357 push
//!   registrations.
//! - [`blocking`]: XEP-0191 blocklists.
//! - [`archive`]: XEP-0313 message archives and XEP-0441 preferences.
//! - [`pubsub`]: PEP nodes and items (XEP-0163, XEP-0223).
//! - [`fast`]: XEP-0484 FAST tokens (sealed), two slots per client.
//! - [`upload`]: XEP-0363 upload slots and stored files (the bytes are on disk).
//! - [`muc`]: XEP-0045 persistent rooms, affiliations and room archives.
//!
//! Every operation matches on the backend and runs SQL written for it (placeholders `?`/`$n`,
//! types, upserts); nothing goes through `sqlx::Any`.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

use crate::sasl::{HashAlg, ScramCredential};

mod accounts;
mod archive;
mod blocking;
pub use archive::{
    ArchiveFilter, ArchiveOwner, ArchivePrefs, ArchivedMessage, Direction, NewArchived,
    PrefsDefault,
};
mod fast;
pub use fast::{Fast, FastToken, Slot};
mod migrate;
mod muc;
pub use muc::{MucRooms, NewRoomArchived, RoomArchivedRef, StoredAffiliation, StoredRoom};
mod offline;
pub use offline::OfflineCap;
mod private;
mod push;
pub use private::PrivateXml;
pub use push::{PushRegistration, PushRegistrations};
mod pubsub;
pub use pubsub::{AccessModel, NodeConfig, PepItem, PepNode, Pubsub, SendLast};
mod roster;
mod upload;
pub use upload::{Claim, NewSlot, SlotGrant, UploadRecord, UploadState, Uploads};
#[cfg(test)]
#[macro_use]
mod tests;
mod vcard;
pub use vcard::{StoredVCard, VCards};
#[cfg(test)]
mod tests_pubsub;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("already exists")]
    Conflict,
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(String),
    #[error("bad database url: {0}")]
    Url(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A per-user write (roster, pending subscription, offline message) for a user that has no
    /// account.
    #[error("no such account")]
    NoAccount,
}

/// Cheap to clone (pools are reference counted).
#[derive(Debug, Clone)]
pub struct Storage {
    db: Db,
}

#[derive(Debug, Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// How long a SQLite connection waits for another writer (e.g. the CLI while the server runs).
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl Storage {
    /// `sqlite://path` (parent dirs and file created) or `postgres://...`; runs migrations.
    ///
    /// Accepted forms: `sqlite://relative/path.db`, `sqlite:///absolute/path.db`,
    /// `sqlite:path.db`, `sqlite::memory:` (one private in-memory database),
    /// `postgres://...` and `postgresql://...`.
    pub async fn connect(url: &str) -> Result<Storage, StorageError> {
        let db = if let Some(rest) = url.strip_prefix("sqlite:") {
            Db::Sqlite(connect_sqlite(rest).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Db::Postgres(connect_postgres(url).await?)
        } else {
            return Err(StorageError::Url(format!(
                "unsupported scheme in {:?} (expected sqlite:// or postgres://)",
                redact(url)
            )));
        };
        let storage = Storage { db };
        migrate::run(&storage.db).await?;
        Ok(storage)
    }

    pub fn backend_name(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Close the pool; waits for checked-out connections to be returned.
    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
        }
    }

    pub fn accounts(&self) -> Accounts<'_> {
        Accounts { s: self }
    }
    pub fn roster(&self) -> Roster<'_> {
        Roster { s: self }
    }
    pub fn offline(&self) -> Offline<'_> {
        Offline { s: self }
    }
    /// XEP-0054 vCards (also the XEP-0153 photo hash, for avatar consumers).
    pub fn vcard(&self) -> VCards<'_> {
        VCards { s: self }
    }
    /// XEP-0049 private XML storage.
    pub fn private_xml(&self) -> PrivateXml<'_> {
        PrivateXml { s: self }
    }
    /// XEP-0357 push registrations.
    pub fn push(&self) -> PushRegistrations<'_> {
        PushRegistrations { s: self }
    }
    pub fn blocklist(&self) -> Blocklist<'_> {
        Blocklist { s: self }
    }
    pub fn archive(&self) -> Archive<'_> {
        Archive { s: self }
    }
    pub fn pubsub(&self) -> Pubsub<'_> {
        Pubsub { s: self }
    }
    /// XEP-0045 persistent rooms, affiliations and room archives.
    pub fn muc(&self) -> MucRooms<'_> {
        MucRooms { s: self }
    }
}

/// Hide a password in a database URL (error messages, `check-config`).
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &userinfo[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// SQLite's page cache per pooled connection, in KiB (SQLite's default is 2000 KiB). The
/// pool holds up to eight connections, each caching the pages it touched, so the default
/// would let the cache grow to ~16 MiB as logins read accounts and rosters; the OS page cache
/// behind it keeps repeat reads cheap, so a small per-connection cache costs little.
const SQLITE_CACHE_KIB: u32 = 256;

async fn connect_sqlite(rest: &str) -> Result<SqlitePool, StorageError> {
    let memory = matches!(rest, ":memory:" | "//:memory:");
    let opts = if memory {
        SqliteConnectOptions::from_str("sqlite::memory:")?
    } else {
        // `sqlite://rel/x.db` -> "rel/x.db", `sqlite:///abs/x.db` -> "/abs/x.db", `sqlite:x.db`.
        let path = rest.strip_prefix("//").unwrap_or(rest);
        let path = path.split('?').next().unwrap_or(path);
        if path.is_empty() {
            return Err(StorageError::Url("sqlite URL without a path".into()));
        }
        let path = Path::new(path);
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StorageError::Url(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
        }
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
    }
    .foreign_keys(true)
    .busy_timeout(SQLITE_BUSY_TIMEOUT)
    .pragma("cache_size", format!("-{SQLITE_CACHE_KIB}"));

    let pool = if memory {
        // Every connection to :memory: is its own database: keep exactly one, forever.
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await?
    } else {
        // Switching a fresh file to WAL needs an exclusive lock, and SQLite returns
        // SQLITE_BUSY for it without running the busy handler: processes (or pools) opening
        // a new database together can fail here. The switch is persistent, so once one of
        // them has made it the others go through; retry for about the busy timeout.
        let mut attempt = 0u32;
        loop {
            match SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(opts.clone())
                .await
            {
                Ok(pool) => break pool,
                Err(e) if sqlite_busy(&e) && attempt < 100 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt.min(10))))
                        .await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    Ok(pool)
}

/// SQLITE_BUSY, whatever its extended code (the primary code is the low byte).
fn sqlite_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .code()
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|c| c & 0xff == 5),
        _ => false,
    }
}

async fn connect_postgres(url: &str) -> Result<PgPool, StorageError> {
    let opts = PgConnectOptions::from_str(url)
        .map_err(|e| StorageError::Url(format!("{}: {e}", redact(url))))?;
    Ok(PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(opts)
        .await?)
}

/// Read column `idx` of a row, reporting type/NULL mismatches as [`StorageError::Corrupt`].
fn col<'r, R, T>(row: &'r R, idx: usize) -> Result<T, StorageError>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    row.try_get::<T, usize>(idx)
        .map_err(|e| StorageError::Corrupt(format!("column {idx}: {e}")))
}

fn corrupt(what: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(what.to_string())
}

fn now_unix() -> i64 {
    crate::stanza::now_ms() / 1000
}

/// A bare JID split as stored: (domain, username), both already normalized (nodeprep/nameprep).
pub type UserRef<'a> = (&'a str, &'a str);

pub struct Accounts<'a> {
    s: &'a Storage,
}

/// RFC 6121 subscription value of a roster item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    None,
    To,
    From,
    Both,
}

impl Subscription {
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Subscription::None),
            "to" => Some(Subscription::To),
            "from" => Some(Subscription::From),
            "both" => Some(Subscription::Both),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterItem {
    /// Contact bare JID (normalized).
    pub contact: String,
    pub name: Option<String>,
    pub subscription: Subscription,
    /// Pending outbound subscription request ("ask='subscribe'").
    pub ask: bool,
    /// Subscription pre-approved by the user (RFC 6121 §3.4).
    pub approved: bool,
    pub groups: Vec<String>,
}

pub struct Roster<'a> {
    s: &'a Storage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineMessage {
    /// The serialized stanza as it was stored.
    pub stanza: String,
    /// When it was stored, unix milliseconds.
    pub stamp_ms: i64,
}

pub struct Offline<'a> {
    s: &'a Storage,
}

pub struct Blocklist<'a> {
    s: &'a Storage,
}

pub struct Archive<'a> {
    s: &'a Storage,
}

/// Convert a stored credential row into a [`ScramCredential`].
fn credential_from_parts(
    alg: &str,
    salt: Vec<u8>,
    iterations: i64,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
) -> Result<ScramCredential, StorageError> {
    let alg = HashAlg::from_tag(alg).ok_or_else(|| corrupt(format!("unknown hash alg {alg:?}")))?;
    let iterations = u32::try_from(iterations)
        .map_err(|_| corrupt(format!("iteration count {iterations} out of range")))?;
    Ok(ScramCredential {
        alg,
        salt,
        iterations,
        stored_key,
        server_key,
    })
}
