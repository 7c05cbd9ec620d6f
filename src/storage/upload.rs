//! XEP-0363 upload slots and the files behind them (see `crate::upload`). One row per slot:
//! granted ('open'), held by a PUT in progress ('uploading'), stored ('done'). The quota
//! check and the insert of a new slot are one transaction per account, so two concurrent
//! requests cannot both squeeze under the quota. Deleting an account drops its rows by
//! `ON DELETE CASCADE`; the files are then removed by the upload expiry task's orphan sweep.

use super::{now_unix, Db, Storage, StorageError, UserRef};

/// Where a slot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadState {
    Open,
    Uploading,
    Done,
}

impl UploadState {
    fn parse(s: &str) -> Result<UploadState, StorageError> {
        match s {
            "open" => Ok(UploadState::Open),
            "uploading" => Ok(UploadState::Uploading),
            "done" => Ok(UploadState::Done),
            _ => Err(super::corrupt(format!("unknown upload state {s:?}"))),
        }
    }
}

/// A slot as requested (already checked against the size limit and type policy).
#[derive(Debug, Clone)]
pub struct NewSlot<'a> {
    pub slot_id: &'a str,
    pub filename: &'a str,
    pub size: i64,
    pub content_type: Option<&'a str>,
    /// Unix seconds: the PUT must start before this.
    pub expires_at: i64,
}

/// The answer to a slot request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotGrant {
    Granted,
    /// Live files plus open slots plus this one would exceed the quota. `oldest` is when
    /// the account's oldest stored file was completed (it frees space first when it expires).
    OverQuota {
        used: i64,
        oldest: Option<i64>,
    },
    /// The account already holds the maximum number of slots not yet uploaded.
    TooManyOpen,
}

/// One stored slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub slot_id: String,
    pub domain: String,
    pub username: String,
    pub filename: String,
    pub size: i64,
    pub content_type: Option<String>,
    pub state: UploadState,
    pub created_at: i64,
    pub expires_at: i64,
    pub completed_at: Option<i64>,
}

/// The outcome of taking a slot for a PUT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The slot is now 'uploading' and belongs to the caller until `complete` or `release`.
    Claimed,
    /// No such slot (never issued, swept, or its account was deleted).
    Unknown,
    /// The slot's PUT URL expired before it was used.
    Expired,
    /// A PUT already holds it or has completed it.
    Taken,
}

pub struct Uploads<'a> {
    s: &'a Storage,
}

impl Storage {
    /// XEP-0363 upload slots and files.
    pub fn uploads(&self) -> Uploads<'_> {
        Uploads { s: self }
    }
}

type Row = (
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    String,
    i64,
    i64,
    Option<i64>,
);

const SELECT: &str = "SELECT u.slot_id, a.domain, a.username, u.filename, u.size, \
     u.content_type, u.state, u.created_at, u.expires_at, u.completed_at \
     FROM upload_files u JOIN accounts a ON a.id = u.account_id";

fn record(r: Row) -> Result<UploadRecord, StorageError> {
    Ok(UploadRecord {
        slot_id: r.0,
        domain: r.1,
        username: r.2,
        filename: r.3,
        size: r.4,
        content_type: r.5,
        state: UploadState::parse(&r.6)?,
        created_at: r.7,
        expires_at: r.8,
        completed_at: r.9,
    })
}

/// Bytes an account holds: stored files, PUTs in progress and open slots not yet expired.
const USED_WHERE: &str = "account_id = {id} AND (state <> 'open' OR expires_at > {now})";

impl Uploads<'_> {
    /// Grant a slot if the account stays within `quota` bytes (0: no quota) and below
    /// `max_open` open slots. Err(NoAccount) when the account is gone.
    pub async fn create_slot(
        &self,
        u: UserRef<'_>,
        slot: &NewSlot<'_>,
        quota: i64,
        max_open: i64,
    ) -> Result<SlotGrant, StorageError> {
        let (domain, username) = u;
        let now = now_unix();
        match &self.s.db {
            Db::Sqlite(pool) => {
                // IMMEDIATE: the write lock is held from the quota check to the insert.
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let id: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM accounts WHERE domain = ? AND username = ?")
                        .bind(domain)
                        .bind(username)
                        .fetch_optional(&mut *tx)
                        .await?;
                let id = id.ok_or(StorageError::NoAccount)?;
                let used_sql = format!(
                    "SELECT COALESCE(SUM(size), 0), \
                            COALESCE(SUM(CASE WHEN state = 'open' THEN 1 ELSE 0 END), 0), \
                            MIN(completed_at) \
                     FROM upload_files WHERE {}",
                    USED_WHERE.replace("{id}", "?").replace("{now}", "?")
                );
                let (used, open, oldest): (i64, i64, Option<i64>) = sqlx::query_as(&used_sql)
                    .bind(id)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                if let Some(refusal) = refuse(used, open, oldest, slot.size, quota, max_open) {
                    return Ok(refusal);
                }
                sqlx::query(
                    "INSERT INTO upload_files (slot_id, account_id, filename, size, content_type, \
                         state, created_at, expires_at, completed_at) \
                     VALUES (?, ?, ?, ?, ?, 'open', ?, ?, NULL)",
                )
                .bind(slot.slot_id)
                .bind(id)
                .bind(slot.filename)
                .bind(slot.size)
                .bind(slot.content_type)
                .bind(now)
                .bind(slot.expires_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                // Locking the account row serializes this account's slot requests.
                let id: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM accounts WHERE domain = $1 AND username = $2 FOR UPDATE",
                )
                .bind(domain)
                .bind(username)
                .fetch_optional(&mut *tx)
                .await?;
                let id = id.ok_or(StorageError::NoAccount)?;
                let used_sql = format!(
                    "SELECT COALESCE(SUM(size), 0)::BIGINT, \
                            COUNT(*) FILTER (WHERE state = 'open'), \
                            MIN(completed_at) \
                     FROM upload_files WHERE {}",
                    USED_WHERE.replace("{id}", "$1").replace("{now}", "$2")
                );
                let (used, open, oldest): (i64, i64, Option<i64>) = sqlx::query_as(&used_sql)
                    .bind(id)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                if let Some(refusal) = refuse(used, open, oldest, slot.size, quota, max_open) {
                    return Ok(refusal);
                }
                sqlx::query(
                    "INSERT INTO upload_files (slot_id, account_id, filename, size, content_type, \
                         state, created_at, expires_at, completed_at) \
                     VALUES ($1, $2, $3, $4, $5, 'open', $6, $7, NULL)",
                )
                .bind(slot.slot_id)
                .bind(id)
                .bind(slot.filename)
                .bind(slot.size)
                .bind(slot.content_type)
                .bind(now)
                .bind(slot.expires_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
        }
        Ok(SlotGrant::Granted)
    }

    /// Bytes the account holds (files, uploads in progress, open slots).
    pub async fn used_bytes(&self, u: UserRef<'_>) -> Result<i64, StorageError> {
        let (domain, username) = u;
        let now = now_unix();
        let sql = |sum: &str, p: [&str; 3]| {
            let id = format!(
                "(SELECT id FROM accounts WHERE domain = {} AND username = {})",
                p[0], p[1]
            );
            let filter = USED_WHERE.replace("{id}", &id).replace("{now}", p[2]);
            format!("SELECT {sum} FROM upload_files WHERE {filter}")
        };
        Ok(match &self.s.db {
            Db::Sqlite(pool) => {
                sqlx::query_scalar(&sql("COALESCE(SUM(size), 0)", ["?", "?", "?"]))
                    .bind(domain)
                    .bind(username)
                    .bind(now)
                    .fetch_one(pool)
                    .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_scalar(&sql("COALESCE(SUM(size), 0)::BIGINT", ["$1", "$2", "$3"]))
                    .bind(domain)
                    .bind(username)
                    .bind(now)
                    .fetch_one(pool)
                    .await?
            }
        })
    }

    pub async fn get(&self, slot_id: &str) -> Result<Option<UploadRecord>, StorageError> {
        let row: Option<Row> = match &self.s.db {
            Db::Sqlite(pool) => {
                sqlx::query_as(&format!("{SELECT} WHERE u.slot_id = ?"))
                    .bind(slot_id)
                    .fetch_optional(pool)
                    .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_as(&format!("{SELECT} WHERE u.slot_id = $1"))
                    .bind(slot_id)
                    .fetch_optional(pool)
                    .await?
            }
        };
        row.map(record).transpose()
    }

    /// Take an open, unexpired slot for a PUT (atomically: of two PUTs, one wins).
    pub async fn claim(&self, slot_id: &str, now: i64) -> Result<Claim, StorageError> {
        let (taken, state): (u64, Option<(String, i64)>) = match &self.s.db {
            Db::Sqlite(pool) => {
                let n = sqlx::query(
                    "UPDATE upload_files SET state = 'uploading' \
                     WHERE slot_id = ? AND state = 'open' AND expires_at > ?",
                )
                .bind(slot_id)
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected();
                let st =
                    sqlx::query_as("SELECT state, expires_at FROM upload_files WHERE slot_id = ?")
                        .bind(slot_id)
                        .fetch_optional(pool)
                        .await?;
                (n, st)
            }
            Db::Postgres(pool) => {
                let n = sqlx::query(
                    "UPDATE upload_files SET state = 'uploading' \
                     WHERE slot_id = $1 AND state = 'open' AND expires_at > $2",
                )
                .bind(slot_id)
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected();
                let st =
                    sqlx::query_as("SELECT state, expires_at FROM upload_files WHERE slot_id = $1")
                        .bind(slot_id)
                        .fetch_optional(pool)
                        .await?;
                (n, st)
            }
        };
        Ok(match (taken, state) {
            (1.., _) => Claim::Claimed,
            (0, None) => Claim::Unknown,
            (0, Some((s, _))) if s != "open" => Claim::Taken,
            (0, Some(_)) => Claim::Expired,
        })
    }

    /// A PUT failed (short body, size or type mismatch, client gone): the slot is open
    /// again, so the client may retry before it expires.
    pub async fn release(&self, slot_id: &str) -> Result<(), StorageError> {
        self.set_state(slot_id, "uploading", "open", None).await?;
        Ok(())
    }

    /// The file is in place: the slot becomes a stored file. False when the row vanished
    /// meanwhile (account deleted): the caller removes the file.
    pub async fn complete(&self, slot_id: &str, now: i64) -> Result<bool, StorageError> {
        self.set_state(slot_id, "uploading", "done", Some(now))
            .await
    }

    async fn set_state(
        &self,
        slot_id: &str,
        from: &str,
        to: &str,
        completed_at: Option<i64>,
    ) -> Result<bool, StorageError> {
        let n = match &self.s.db {
            Db::Sqlite(pool) => sqlx::query(
                "UPDATE upload_files SET state = ?, completed_at = ? \
                 WHERE slot_id = ? AND state = ?",
            )
            .bind(to)
            .bind(completed_at)
            .bind(slot_id)
            .bind(from)
            .execute(pool)
            .await?
            .rows_affected(),
            Db::Postgres(pool) => sqlx::query(
                "UPDATE upload_files SET state = $1, completed_at = $2 \
                 WHERE slot_id = $3 AND state = $4",
            )
            .bind(to)
            .bind(completed_at)
            .bind(slot_id)
            .bind(from)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(n == 1)
    }

    /// Delete up to `limit` rows that are due: stored files completed before
    /// `done_before` (None: files are kept), open slots expired before `now`, and
    /// 'uploading' rows whose slot expired before `stale_before` (a PUT that died with the
    /// process). Returns the deleted slot ids, whose files (if any) the caller removes.
    pub async fn take_expired(
        &self,
        done_before: Option<i64>,
        now: i64,
        stale_before: i64,
        limit: i64,
    ) -> Result<Vec<String>, StorageError> {
        let done_before = done_before.unwrap_or(i64::MIN);
        Ok(match &self.s.db {
            Db::Sqlite(pool) => {
                sqlx::query_scalar(
                    "DELETE FROM upload_files WHERE slot_id IN ( \
                         SELECT slot_id FROM upload_files \
                         WHERE (state = 'done' AND completed_at < ?) \
                            OR (state = 'open' AND expires_at <= ?) \
                            OR (state = 'uploading' AND expires_at < ?) \
                         LIMIT ?) \
                     RETURNING slot_id",
                )
                .bind(done_before)
                .bind(now)
                .bind(stale_before)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_scalar(
                    "DELETE FROM upload_files WHERE slot_id IN ( \
                         SELECT slot_id FROM upload_files \
                         WHERE (state = 'done' AND completed_at < $1) \
                            OR (state = 'open' AND expires_at <= $2) \
                            OR (state = 'uploading' AND expires_at < $3) \
                         LIMIT $4) \
                     RETURNING slot_id",
                )
                .bind(done_before)
                .bind(now)
                .bind(stale_before)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
        })
    }

    /// Which of `ids` have a row (the orphan sweep keeps those files).
    pub async fn existing(&self, ids: &[String]) -> Result<Vec<String>, StorageError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(match &self.s.db {
            Db::Sqlite(pool) => {
                let marks = vec!["?"; ids.len()].join(", ");
                let sql = format!("SELECT slot_id FROM upload_files WHERE slot_id IN ({marks})");
                let mut q = sqlx::query_scalar(&sql);
                for id in ids {
                    q = q.bind(id);
                }
                q.fetch_all(pool).await?
            }
            Db::Postgres(pool) => {
                sqlx::query_scalar("SELECT slot_id FROM upload_files WHERE slot_id = ANY($1)")
                    .bind(ids)
                    .fetch_all(pool)
                    .await?
            }
        })
    }
}

fn refuse(
    used: i64,
    open: i64,
    oldest: Option<i64>,
    size: i64,
    quota: i64,
    max_open: i64,
) -> Option<SlotGrant> {
    if open >= max_open {
        return Some(SlotGrant::TooManyOpen);
    }
    if quota > 0 && used.saturating_add(size) > quota {
        return Some(SlotGrant::OverQuota { used, oldest });
    }
    None
}
