//! Persistent storage over sqlx: SQLite (embedded default) and PostgreSQL side by side,
//! one module per domain, SQL written per backend, migrations embedded from `migrations/`.
//!
//! INTERFACE CONTRACT (stub; implementation pending).

use crate::sasl::{HashAlg, ScramCredential};

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
}

/// Cheap to clone (pools are reference counted).
#[derive(Debug, Clone)]
pub struct Storage {}

impl Storage {
    /// `sqlite://path` (parent dirs and file created) or `postgres://...`; runs migrations.
    pub async fn connect(_url: &str) -> Result<Storage, StorageError> {
        unimplemented!()
    }
    pub fn backend_name(&self) -> &'static str {
        unimplemented!()
    }
    pub fn accounts(&self) -> Accounts<'_> {
        Accounts { _s: self }
    }
    pub fn roster(&self) -> Roster<'_> {
        Roster { _s: self }
    }
    pub fn offline(&self) -> Offline<'_> {
        Offline { _s: self }
    }
}

/// A bare JID split as stored: (domain, username), both already normalized (nodeprep/nameprep).
pub type UserRef<'a> = (&'a str, &'a str);

pub struct Accounts<'a> {
    _s: &'a Storage,
}

impl Accounts<'_> {
    /// Err(Conflict) when the account exists.
    pub async fn create(&self, _u: UserRef<'_>, _creds: &[ScramCredential]) -> Result<(), StorageError> {
        unimplemented!()
    }
    /// Create many in one transaction per chunk; returns the usernames (domain, username) that
    /// already existed and were left untouched.
    pub async fn create_many(
        &self,
        _items: &[(String, String, Vec<ScramCredential>)],
    ) -> Result<Vec<(String, String)>, StorageError> {
        unimplemented!()
    }
    pub async fn exists(&self, _u: UserRef<'_>) -> Result<bool, StorageError> {
        unimplemented!()
    }
    pub async fn credential(&self, _u: UserRef<'_>, _alg: HashAlg) -> Result<Option<ScramCredential>, StorageError> {
        unimplemented!()
    }
    /// Replace all credentials; Ok(false) when the account does not exist.
    pub async fn set_credentials(&self, _u: UserRef<'_>, _creds: &[ScramCredential]) -> Result<bool, StorageError> {
        unimplemented!()
    }
    /// Delete the account and everything it owns (roster, pending, offline). Ok(false) if absent.
    pub async fn delete(&self, _u: UserRef<'_>) -> Result<bool, StorageError> {
        unimplemented!()
    }
    /// (domain, username) pairs, sorted; `None` lists all domains.
    pub async fn list(&self, _domain: Option<&str>) -> Result<Vec<(String, String)>, StorageError> {
        unimplemented!()
    }
    /// XEP-0012: record logout time (unix seconds) and last unavailable status.
    pub async fn set_last_activity(&self, _u: UserRef<'_>, _unix: i64, _status: Option<&str>) -> Result<(), StorageError> {
        unimplemented!()
    }
    pub async fn last_activity(&self, _u: UserRef<'_>) -> Result<Option<(i64, Option<String>)>, StorageError> {
        unimplemented!()
    }
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
    _s: &'a Storage,
}

impl Roster<'_> {
    /// Current roster version (XEP-0237) and all items sorted by contact.
    pub async fn get_all(&self, _u: UserRef<'_>) -> Result<(i64, Vec<RosterItem>), StorageError> {
        unimplemented!()
    }
    pub async fn get(&self, _u: UserRef<'_>, _contact: &str) -> Result<Option<RosterItem>, StorageError> {
        unimplemented!()
    }
    /// Insert or replace; returns the new roster version (strictly increasing per user).
    pub async fn put(&self, _u: UserRef<'_>, _item: &RosterItem) -> Result<i64, StorageError> {
        unimplemented!()
    }
    /// Remove; returns the new version, or None when there was no such item.
    pub async fn remove(&self, _u: UserRef<'_>, _contact: &str) -> Result<Option<i64>, StorageError> {
        unimplemented!()
    }
    pub async fn version(&self, _u: UserRef<'_>) -> Result<i64, StorageError> {
        unimplemented!()
    }
    /// Record an inbound subscription request (the stanza, serialized) so it survives restarts.
    pub async fn pending_in_add(&self, _u: UserRef<'_>, _contact: &str, _stanza: &str) -> Result<(), StorageError> {
        unimplemented!()
    }
    /// Ok(true) when one was removed.
    pub async fn pending_in_remove(&self, _u: UserRef<'_>, _contact: &str) -> Result<bool, StorageError> {
        unimplemented!()
    }
    pub async fn pending_in_has(&self, _u: UserRef<'_>, _contact: &str) -> Result<bool, StorageError> {
        unimplemented!()
    }
    /// (contact, stanza) in arrival order.
    pub async fn pending_in_list(&self, _u: UserRef<'_>) -> Result<Vec<(String, String)>, StorageError> {
        unimplemented!()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineMessage {
    /// The serialized stanza as it was stored.
    pub stanza: String,
    /// When it was stored, unix milliseconds.
    pub stamp_ms: i64,
}

pub struct Offline<'a> {
    _s: &'a Storage,
}

impl Offline<'_> {
    /// Ok(false) when the user already has `max` messages stored (nothing stored).
    pub async fn store(&self, _u: UserRef<'_>, _stanza: &str, _stamp_ms: i64, _max: u32) -> Result<bool, StorageError> {
        unimplemented!()
    }
    /// All stored messages in arrival order, deleting them.
    pub async fn take_all(&self, _u: UserRef<'_>) -> Result<Vec<OfflineMessage>, StorageError> {
        unimplemented!()
    }
    pub async fn count(&self, _u: UserRef<'_>) -> Result<u32, StorageError> {
        unimplemented!()
    }
}
