//! Accounts, SCRAM credentials and last activity.

use std::collections::HashMap;

use sqlx::{PgConnection, QueryBuilder, Sqlite, SqliteConnection};

use super::{col, credential_from_parts, now_unix, Accounts, Db, StorageError, UserRef};
use crate::sasl::{HashAlg, ScramCredential};

/// Accounts per transaction in `create_many`.
const CREATE_MANY_CHUNK: usize = 2000;
/// Rows per multi-row INSERT on SQLite (3 binds per account, 6 per credential; SQLite allows
/// 32766 bound parameters).
const SQLITE_ACCOUNT_ROWS: usize = 1000;
const SQLITE_CRED_ROWS: usize = 1000;

/// Last credential per hash algorithm wins.
fn dedup_creds(creds: &[ScramCredential]) -> Vec<&ScramCredential> {
    let mut out: Vec<&ScramCredential> = Vec::with_capacity(creds.len());
    for c in creds {
        match out.iter_mut().find(|x| x.alg == c.alg) {
            Some(slot) => *slot = c,
            None => out.push(c),
        }
    }
    out
}

async fn sqlite_insert_creds(
    conn: &mut SqliteConnection,
    rows: &[(i64, &ScramCredential)],
) -> Result<(), StorageError> {
    for chunk in rows.chunks(SQLITE_CRED_ROWS) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO credentials (account_id, alg, salt, iterations, stored_key, server_key) ",
        );
        qb.push_values(chunk, |mut b, (id, c)| {
            b.push_bind(*id)
                .push_bind(c.alg.tag())
                .push_bind(c.salt.as_slice())
                .push_bind(i64::from(c.iterations))
                .push_bind(c.stored_key.as_slice())
                .push_bind(c.server_key.as_slice());
        });
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

async fn pg_insert_creds(
    conn: &mut PgConnection,
    rows: &[(i64, &ScramCredential)],
) -> Result<(), StorageError> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
    let algs: Vec<&str> = rows.iter().map(|(_, c)| c.alg.tag()).collect();
    let salts: Vec<&[u8]> = rows.iter().map(|(_, c)| c.salt.as_slice()).collect();
    let iters: Vec<i64> = rows.iter().map(|(_, c)| i64::from(c.iterations)).collect();
    let stored: Vec<&[u8]> = rows.iter().map(|(_, c)| c.stored_key.as_slice()).collect();
    let server: Vec<&[u8]> = rows.iter().map(|(_, c)| c.server_key.as_slice()).collect();
    sqlx::query(
        "INSERT INTO credentials (account_id, alg, salt, iterations, stored_key, server_key)
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bytea[], $4::bigint[],
                              $5::bytea[], $6::bytea[])",
    )
    .bind(ids)
    .bind(algs)
    .bind(salts)
    .bind(iters)
    .bind(stored)
    .bind(server)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Given the items of one chunk and the (domain, username) -> id of the rows the INSERT
/// actually created, pair credentials with new ids and report the rest as already existing.
fn split_created<'a>(
    chunk: &'a [(String, String, Vec<ScramCredential>)],
    mut created: HashMap<(String, String), i64>,
    existed: &mut Vec<(String, String)>,
) -> Vec<(i64, &'a ScramCredential)> {
    let mut cred_rows = Vec::new();
    for (domain, username, creds) in chunk {
        // `remove`: a duplicate later in the input counts as "already existed".
        match created.remove(&(domain.clone(), username.clone())) {
            Some(id) => cred_rows.extend(dedup_creds(creds).into_iter().map(|c| (id, c))),
            None => existed.push((domain.clone(), username.clone())),
        }
    }
    cred_rows
}

impl Accounts<'_> {
    /// Err(Conflict) when the account exists.
    pub async fn create(
        &self,
        u: UserRef<'_>,
        creds: &[ScramCredential],
    ) -> Result<(), StorageError> {
        let (domain, username) = u;
        let now = now_unix();
        match &self.s.db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let id: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO accounts (domain, username, created_at, roster_version)
                     VALUES (?, ?, ?, ?)
                     ON CONFLICT (domain, username) DO NOTHING RETURNING id",
                )
                .bind(domain)
                .bind(username)
                .bind(now)
                .bind(first_roster_version())
                .fetch_optional(&mut *tx)
                .await?;
                let id = id.ok_or(StorageError::Conflict)?;
                let rows: Vec<_> = dedup_creds(creds).into_iter().map(|c| (id, c)).collect();
                sqlite_insert_creds(&mut tx, &rows).await?;
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let id: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO accounts (domain, username, created_at, roster_version)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (domain, username) DO NOTHING RETURNING id",
                )
                .bind(domain)
                .bind(username)
                .bind(now)
                .bind(first_roster_version())
                .fetch_optional(&mut *tx)
                .await?;
                let id = id.ok_or(StorageError::Conflict)?;
                let rows: Vec<_> = dedup_creds(creds).into_iter().map(|c| (id, c)).collect();
                pg_insert_creds(&mut tx, &rows).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Create many in one transaction per chunk; returns the usernames (domain, username) that
    /// already existed and were left untouched.
    ///
    /// Batched: one multi-row INSERT per 1000 accounts on SQLite, one `UNNEST` INSERT per chunk
    /// on PostgreSQL, and likewise for the credentials. A (domain, username) repeated in
    /// `items` is created once and its later occurrences are reported as existing.
    pub async fn create_many(
        &self,
        items: &[(String, String, Vec<ScramCredential>)],
    ) -> Result<Vec<(String, String)>, StorageError> {
        let now = now_unix();
        let ver0 = first_roster_version();
        let mut existed = Vec::new();
        for chunk in items.chunks(CREATE_MANY_CHUNK) {
            match &self.s.db {
                Db::Sqlite(pool) => {
                    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                    let mut created = HashMap::new();
                    for sub in chunk.chunks(SQLITE_ACCOUNT_ROWS) {
                        let mut qb = QueryBuilder::<Sqlite>::new(
                            "INSERT INTO accounts (domain, username, created_at, roster_version) ",
                        );
                        qb.push_values(sub, |mut b, (d, u, _)| {
                            b.push_bind(d.as_str())
                                .push_bind(u.as_str())
                                .push_bind(now)
                                .push_bind(ver0);
                        });
                        qb.push(
                            " ON CONFLICT (domain, username) DO NOTHING \
                              RETURNING id, domain, username",
                        );
                        for row in qb.build().fetch_all(&mut *tx).await? {
                            let id: i64 = col(&row, 0)?;
                            created.insert((col(&row, 1)?, col(&row, 2)?), id);
                        }
                    }
                    let cred_rows = split_created(chunk, created, &mut existed);
                    sqlite_insert_creds(&mut tx, &cred_rows).await?;
                    tx.commit().await?;
                }
                Db::Postgres(pool) => {
                    let mut tx = pool.begin().await?;
                    let domains: Vec<&str> = chunk.iter().map(|(d, _, _)| d.as_str()).collect();
                    let users: Vec<&str> = chunk.iter().map(|(_, u, _)| u.as_str()).collect();
                    let rows = sqlx::query(
                        "INSERT INTO accounts (domain, username, created_at, roster_version)
                         SELECT d, u, $3, $4 FROM UNNEST($1::text[], $2::text[]) AS t (d, u)
                         ON CONFLICT (domain, username) DO NOTHING
                         RETURNING id, domain, username",
                    )
                    .bind(domains)
                    .bind(users)
                    .bind(now)
                    .bind(ver0)
                    .fetch_all(&mut *tx)
                    .await?;
                    let mut created = HashMap::with_capacity(rows.len());
                    for row in rows {
                        let id: i64 = col(&row, 0)?;
                        created.insert((col(&row, 1)?, col(&row, 2)?), id);
                    }
                    let cred_rows = split_created(chunk, created, &mut existed);
                    pg_insert_creds(&mut tx, &cred_rows).await?;
                    tx.commit().await?;
                }
            }
        }
        Ok(existed)
    }

    pub async fn exists(&self, u: UserRef<'_>) -> Result<bool, StorageError> {
        let (domain, username) = u;
        let found: Option<i64> = match &self.s.db {
            Db::Sqlite(pool) => {
                sqlx::query_scalar("SELECT id FROM accounts WHERE domain = ? AND username = ?")
                    .bind(domain)
                    .bind(username)
                    .fetch_optional(pool)
                    .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_scalar("SELECT id FROM accounts WHERE domain = $1 AND username = $2")
                    .bind(domain)
                    .bind(username)
                    .fetch_optional(pool)
                    .await?
            }
        };
        Ok(found.is_some())
    }

    pub async fn credential(
        &self,
        u: UserRef<'_>,
        alg: HashAlg,
    ) -> Result<Option<ScramCredential>, StorageError> {
        let (domain, username) = u;
        macro_rules! read {
            ($row:expr) => {
                match $row {
                    None => Ok(None),
                    Some(row) => credential_from_parts(
                        &col::<_, String>(&row, 0)?,
                        col(&row, 1)?,
                        col(&row, 2)?,
                        col(&row, 3)?,
                        col(&row, 4)?,
                    )
                    .map(Some),
                }
            };
        }
        match &self.s.db {
            Db::Sqlite(pool) => {
                let row = sqlx::query(
                    "SELECT c.alg, c.salt, c.iterations, c.stored_key, c.server_key
                     FROM credentials c JOIN accounts a ON a.id = c.account_id
                     WHERE a.domain = ? AND a.username = ? AND c.alg = ?",
                )
                .bind(domain)
                .bind(username)
                .bind(alg.tag())
                .fetch_optional(pool)
                .await?;
                read!(row)
            }
            Db::Postgres(pool) => {
                let row = sqlx::query(
                    "SELECT c.alg, c.salt, c.iterations, c.stored_key, c.server_key
                     FROM credentials c JOIN accounts a ON a.id = c.account_id
                     WHERE a.domain = $1 AND a.username = $2 AND c.alg = $3",
                )
                .bind(domain)
                .bind(username)
                .bind(alg.tag())
                .fetch_optional(pool)
                .await?;
                read!(row)
            }
        }
    }

    /// Replace all credentials (and revoke FAST tokens); Ok(false) when the account does not
    /// exist.
    pub async fn set_credentials(
        &self,
        u: UserRef<'_>,
        creds: &[ScramCredential],
    ) -> Result<bool, StorageError> {
        let (domain, username) = u;
        match &self.s.db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let id: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM accounts WHERE domain = ? AND username = ?")
                        .bind(domain)
                        .bind(username)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some(id) = id else { return Ok(false) };
                sqlx::query("DELETE FROM credentials WHERE account_id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                // A new password revokes every FAST token (XEP-0484): whoever held one may be
                // the reason for the change.
                sqlx::query("DELETE FROM fast_tokens WHERE account_id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                let rows: Vec<_> = dedup_creds(creds).into_iter().map(|c| (id, c)).collect();
                sqlite_insert_creds(&mut tx, &rows).await?;
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let id: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM accounts WHERE domain = $1 AND username = $2 FOR UPDATE",
                )
                .bind(domain)
                .bind(username)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(id) = id else { return Ok(false) };
                sqlx::query("DELETE FROM credentials WHERE account_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                // A new password revokes every FAST token (XEP-0484): whoever held one may be
                // the reason for the change.
                sqlx::query("DELETE FROM fast_tokens WHERE account_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                let rows: Vec<_> = dedup_creds(creds).into_iter().map(|c| (id, c)).collect();
                pg_insert_creds(&mut tx, &rows).await?;
                tx.commit().await?;
            }
        }
        Ok(true)
    }

    /// Delete the account and everything it owns (roster, pending, offline). Ok(false) if absent.
    ///
    /// Owned rows go through `ON DELETE CASCADE` foreign keys.
    pub async fn delete(&self, u: UserRef<'_>) -> Result<bool, StorageError> {
        let (domain, username) = u;
        let res = match &self.s.db {
            Db::Sqlite(pool) => {
                sqlx::query("DELETE FROM accounts WHERE domain = ? AND username = ?")
                    .bind(domain)
                    .bind(username)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
            Db::Postgres(pool) => {
                sqlx::query("DELETE FROM accounts WHERE domain = $1 AND username = $2")
                    .bind(domain)
                    .bind(username)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
        };
        Ok(res > 0)
    }

    /// (domain, username) pairs, sorted; `None` lists all domains.
    pub async fn list(&self, domain: Option<&str>) -> Result<Vec<(String, String)>, StorageError> {
        let rows: Vec<(String, String)> = match &self.s.db {
            Db::Sqlite(pool) => {
                let q = sqlx::query(
                    "SELECT domain, username FROM accounts
                     WHERE ?1 IS NULL OR domain = ?1
                     ORDER BY domain, username",
                )
                .bind(domain)
                .fetch_all(pool)
                .await?;
                q.iter()
                    .map(|r| Ok((col(r, 0)?, col(r, 1)?)))
                    .collect::<Result<_, StorageError>>()?
            }
            Db::Postgres(pool) => {
                // COLLATE "C": byte order, the same as SQLite's default BINARY collation.
                let q = sqlx::query(
                    "SELECT domain, username FROM accounts
                     WHERE $1::text IS NULL OR domain = $1
                     ORDER BY domain COLLATE \"C\", username COLLATE \"C\"",
                )
                .bind(domain)
                .fetch_all(pool)
                .await?;
                q.iter()
                    .map(|r| Ok((col(r, 0)?, col(r, 1)?)))
                    .collect::<Result<_, StorageError>>()?
            }
        };
        Ok(rows)
    }

    /// XEP-0012: record logout time (unix seconds) and last unavailable status.
    ///
    /// A no-op when the account does not exist (e.g. deleted while online).
    pub async fn set_last_activity(
        &self,
        u: UserRef<'_>,
        unix: i64,
        status: Option<&str>,
    ) -> Result<(), StorageError> {
        let (domain, username) = u;
        match &self.s.db {
            Db::Sqlite(pool) => {
                sqlx::query(
                    "UPDATE accounts SET last_logout = ?, last_status = ?
                     WHERE domain = ? AND username = ?",
                )
                .bind(unix)
                .bind(status)
                .bind(domain)
                .bind(username)
                .execute(pool)
                .await?;
            }
            Db::Postgres(pool) => {
                sqlx::query(
                    "UPDATE accounts SET last_logout = $1, last_status = $2
                     WHERE domain = $3 AND username = $4",
                )
                .bind(unix)
                .bind(status)
                .bind(domain)
                .bind(username)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    /// `None` when the account does not exist or never logged out.
    pub async fn last_activity(
        &self,
        u: UserRef<'_>,
    ) -> Result<Option<(i64, Option<String>)>, StorageError> {
        let (domain, username) = u;
        let row: Option<(Option<i64>, Option<String>)> = match &self.s.db {
            Db::Sqlite(pool) => {
                let row = sqlx::query(
                    "SELECT last_logout, last_status FROM accounts
                     WHERE domain = ? AND username = ?",
                )
                .bind(domain)
                .bind(username)
                .fetch_optional(pool)
                .await?;
                row.map(|r| Ok::<_, StorageError>((col(&r, 0)?, col(&r, 1)?)))
                    .transpose()?
            }
            Db::Postgres(pool) => {
                let row = sqlx::query(
                    "SELECT last_logout, last_status FROM accounts
                     WHERE domain = $1 AND username = $2",
                )
                .bind(domain)
                .bind(username)
                .fetch_optional(pool)
                .await?;
                row.map(|r| Ok::<_, StorageError>((col(&r, 0)?, col(&r, 1)?)))
                    .transpose()?
            }
        };
        Ok(match row {
            Some((Some(t), status)) => Some((t, status)),
            _ => None,
        })
    }
}

/// A new account's roster version starts at the creation time in milliseconds, not 0: a
/// client that cached version N of a deleted account's roster must not find a re-created
/// account with the same name "up to date" (XEP-0237 versions are opaque to clients).
fn first_roster_version() -> i64 {
    crate::stanza::now_ms()
}
