//! Offline message queue with a per-user cap.

use super::{col, Db, Offline, OfflineMessage, StorageError, UserRef};

impl Offline<'_> {
    /// Ok(false) when storing would exceed the cap: `cap.messages` messages or `cap.bytes`
    /// bytes of stanzas for this user (nothing stored). A bare `u32` caps the count only.
    ///
    /// The cap check and the insert are atomic (one statement under SQLite's write lock; the
    /// account row is locked first on PostgreSQL). Err(NoAccount) when the user has no account.
    pub async fn store(
        &self,
        u: UserRef<'_>,
        stanza: &str,
        stamp_ms: i64,
        cap: impl Into<OfflineCap>,
    ) -> Result<bool, StorageError> {
        let (domain, username) = u;
        let cap = cap.into();
        let size = i64::try_from(stanza.len()).unwrap_or(i64::MAX);
        let max_bytes = i64::try_from(cap.bytes).unwrap_or(i64::MAX);
        match &self.s.db {
            Db::Sqlite(pool) => {
                let n = sqlx::query(
                    "INSERT INTO offline_messages (account_id, stamp_ms, stanza)
                     SELECT a.id, ?, ? FROM accounts a
                     WHERE a.domain = ? AND a.username = ?
                       AND (SELECT COUNT(*) FROM offline_messages o WHERE o.account_id = a.id) < ?
                       AND (SELECT COALESCE(SUM(LENGTH(CAST(o.stanza AS BLOB))), 0)
                              FROM offline_messages o WHERE o.account_id = a.id) <= ? - ?",
                )
                .bind(stamp_ms)
                .bind(stanza)
                .bind(domain)
                .bind(username)
                .bind(i64::from(cap.messages))
                .bind(max_bytes)
                .bind(size)
                .execute(pool)
                .await?
                .rows_affected();
                if n > 0 {
                    return Ok(true);
                }
                if self.s.accounts().exists(u).await? {
                    Ok(false)
                } else {
                    Err(StorageError::NoAccount)
                }
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let id: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM accounts WHERE domain = $1 AND username = $2
                     FOR NO KEY UPDATE",
                )
                .bind(domain)
                .bind(username)
                .fetch_optional(&mut *tx)
                .await?;
                let id = id.ok_or(StorageError::NoAccount)?;
                let (count, used): (i64, i64) = sqlx::query_as(
                    "SELECT COUNT(*), COALESCE(SUM(octet_length(stanza)), 0)::BIGINT
                     FROM offline_messages WHERE account_id = $1",
                )
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
                if count >= i64::from(cap.messages) || used > max_bytes.saturating_sub(size) {
                    return Ok(false);
                }
                sqlx::query(
                    "INSERT INTO offline_messages (account_id, stamp_ms, stanza)
                     VALUES ($1, $2, $3)",
                )
                .bind(id)
                .bind(stamp_ms)
                .bind(stanza)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(true)
            }
        }
    }

    /// All stored messages in arrival order, deleting them.
    ///
    /// One `DELETE ... RETURNING` statement, so a message is handed out exactly once.
    pub async fn take_all(&self, u: UserRef<'_>) -> Result<Vec<OfflineMessage>, StorageError> {
        let (domain, username) = u;
        let rows = match &self.s.db {
            Db::Sqlite(pool) => sqlx::query(
                "DELETE FROM offline_messages
                 WHERE account_id = (SELECT id FROM accounts WHERE domain = ? AND username = ?)
                 RETURNING id, stamp_ms, stanza",
            )
            .bind(domain)
            .bind(username)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| Ok((col(r, 0)?, col(r, 1)?, col(r, 2)?)))
            .collect::<Result<Vec<(i64, i64, String)>, StorageError>>()?,
            Db::Postgres(pool) => sqlx::query(
                "DELETE FROM offline_messages
                 WHERE account_id = (SELECT id FROM accounts WHERE domain = $1 AND username = $2)
                 RETURNING id, stamp_ms, stanza",
            )
            .bind(domain)
            .bind(username)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| Ok((col(r, 0)?, col(r, 1)?, col(r, 2)?)))
            .collect::<Result<Vec<(i64, i64, String)>, StorageError>>()?,
        };
        let mut rows = rows;
        // RETURNING order is unspecified: sort by arrival id.
        rows.sort_unstable_by_key(|(id, _, _)| *id);
        Ok(rows
            .into_iter()
            .map(|(_, stamp_ms, stanza)| OfflineMessage { stanza, stamp_ms })
            .collect())
    }

    pub async fn count(&self, u: UserRef<'_>) -> Result<u32, StorageError> {
        let (domain, username) = u;
        let n: i64 =
            match &self.s.db {
                Db::Sqlite(pool) => sqlx::query_scalar(
                    "SELECT COUNT(*) FROM offline_messages o JOIN accounts a ON a.id = o.account_id
                     WHERE a.domain = ? AND a.username = ?",
                )
                .bind(domain)
                .bind(username)
                .fetch_one(pool)
                .await?,
                Db::Postgres(pool) => sqlx::query_scalar(
                    "SELECT COUNT(*) FROM offline_messages o JOIN accounts a ON a.id = o.account_id
                     WHERE a.domain = $1 AND a.username = $2",
                )
                .bind(domain)
                .bind(username)
                .fetch_one(pool)
                .await?,
            };
        u32::try_from(n).map_err(|_| super::corrupt(format!("offline count {n} out of range")))
    }
}

/// Per-user limits of the offline store: a message count and a total size in bytes, so a
/// login never has to load more than `bytes` of stored stanzas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineCap {
    pub messages: u32,
    pub bytes: u64,
}

impl From<u32> for OfflineCap {
    /// A count-only cap.
    fn from(messages: u32) -> Self {
        OfflineCap {
            messages,
            bytes: u64::MAX,
        }
    }
}
