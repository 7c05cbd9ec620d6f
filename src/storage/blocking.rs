//! XEP-0191 blocklists: the JIDs each account blocks, as normalized strings.

use sqlx::{Sqlite, Transaction};

use super::{Blocklist, Db, StorageError, UserRef};

impl Blocklist<'_> {
    /// The blocked JIDs, sorted.
    pub async fn list(&self, u: UserRef<'_>) -> Result<Vec<String>, StorageError> {
        let (domain, username) = u;
        Ok(match &self.s.db {
            Db::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT b.jid FROM blocklist b JOIN accounts a ON a.id = b.account_id
                     WHERE a.domain = ? AND a.username = ? ORDER BY b.jid",
                )
                .bind(domain)
                .bind(username)
                .fetch_all(pool)
                .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT b.jid FROM blocklist b JOIN accounts a ON a.id = b.account_id
                     WHERE a.domain = $1 AND a.username = $2 ORDER BY b.jid",
                )
                .bind(domain)
                .bind(username)
                .fetch_all(pool)
                .await?
            }
        })
    }

    /// Add JIDs (already blocked ones are kept once). Ok(false), with nothing added, when the
    /// list would then hold more than `max` entries; Err(NoAccount) for an unknown user. The
    /// count check and the inserts are one transaction under the account's write lock.
    pub async fn add(
        &self,
        u: UserRef<'_>,
        jids: &[String],
        max: usize,
    ) -> Result<bool, StorageError> {
        let (domain, username) = u;
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        match &self.s.db {
            Db::Sqlite(pool) => {
                let mut tx: Transaction<'_, Sqlite> = pool.begin_with("BEGIN IMMEDIATE").await?;
                let id: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM accounts WHERE domain = ? AND username = ?")
                        .bind(domain)
                        .bind(username)
                        .fetch_optional(&mut *tx)
                        .await?;
                let id = id.ok_or(StorageError::NoAccount)?;
                let mut added = 0i64;
                for j in jids {
                    added += sqlx::query(
                        "INSERT INTO blocklist (account_id, jid) VALUES (?, ?)
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(id)
                    .bind(j)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected() as i64;
                }
                let n: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM blocklist WHERE account_id = ?")
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?;
                if added > 0 && n > max {
                    return Ok(false); // dropping tx rolls back
                }
                tx.commit().await?;
                Ok(true)
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
                let mut added = 0i64;
                for j in jids {
                    added += sqlx::query(
                        "INSERT INTO blocklist (account_id, jid) VALUES ($1, $2)
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(id)
                    .bind(j)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected() as i64;
                }
                let n: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM blocklist WHERE account_id = $1")
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?;
                if added > 0 && n > max {
                    return Ok(false);
                }
                tx.commit().await?;
                Ok(true)
            }
        }
    }

    /// Remove these JIDs (unknown ones are ignored); an empty slice removes nothing.
    pub async fn remove(&self, u: UserRef<'_>, jids: &[String]) -> Result<(), StorageError> {
        let (domain, username) = u;
        for j in jids {
            match &self.s.db {
                Db::Sqlite(pool) => {
                    sqlx::query(
                        "DELETE FROM blocklist WHERE jid = ? AND account_id =
                         (SELECT id FROM accounts WHERE domain = ? AND username = ?)",
                    )
                    .bind(j)
                    .bind(domain)
                    .bind(username)
                    .execute(pool)
                    .await?;
                }
                Db::Postgres(pool) => {
                    sqlx::query(
                        "DELETE FROM blocklist WHERE jid = $1 AND account_id =
                         (SELECT id FROM accounts WHERE domain = $2 AND username = $3)",
                    )
                    .bind(j)
                    .bind(domain)
                    .bind(username)
                    .execute(pool)
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Unblock everything; returns what was blocked.
    pub async fn clear(&self, u: UserRef<'_>) -> Result<Vec<String>, StorageError> {
        let (domain, username) = u;
        let mut out: Vec<String> = match &self.s.db {
            Db::Sqlite(pool) => {
                sqlx::query_scalar(
                    "DELETE FROM blocklist WHERE account_id =
                     (SELECT id FROM accounts WHERE domain = ? AND username = ?)
                     RETURNING jid",
                )
                .bind(domain)
                .bind(username)
                .fetch_all(pool)
                .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_scalar(
                    "DELETE FROM blocklist WHERE account_id =
                     (SELECT id FROM accounts WHERE domain = $1 AND username = $2)
                     RETURNING jid",
                )
                .bind(domain)
                .bind(username)
                .fetch_all(pool)
                .await?
            }
        };
        out.sort_unstable();
        Ok(out)
    }
}
