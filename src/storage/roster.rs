//! Roster items (with groups), roster versions (XEP-0237) and pending inbound subscription
//! requests.

use std::collections::HashMap;

use sqlx::{PgConnection, QueryBuilder, Sqlite, SqliteConnection};

use super::{col, corrupt, Db, Roster, RosterItem, StorageError, Subscription, UserRef};

/// Group names in first-seen order, duplicates dropped.
fn dedup_groups(groups: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::with_capacity(groups.len());
    for g in groups {
        if !out.contains(&g.as_str()) {
            out.push(g);
        }
    }
    out
}

fn subscription(s: &str) -> Result<Subscription, StorageError> {
    Subscription::parse(s).ok_or_else(|| corrupt(format!("bad subscription {s:?}")))
}

/// Build items from `(contact, name, subscription, ask, approved)` rows (sorted by contact)
/// and `(contact, group)` rows (sorted by contact, position).
fn assemble<R: sqlx::Row>(items: &[R], groups: &[R]) -> Result<Vec<RosterItem>, StorageError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut by_contact: HashMap<String, Vec<String>> = HashMap::new();
    for g in groups {
        by_contact
            .entry(col::<R, String>(g, 0)?)
            .or_default()
            .push(col::<R, String>(g, 1)?);
    }
    items
        .iter()
        .map(|r| {
            let contact: String = col(r, 0)?;
            let groups = by_contact.remove(&contact).unwrap_or_default();
            Ok(RosterItem {
                name: col(r, 1)?,
                subscription: subscription(&col::<R, String>(r, 2)?)?,
                ask: col(r, 3)?,
                approved: col(r, 4)?,
                groups,
                contact,
            })
        })
        .collect()
}

async fn sqlite_write_item(
    conn: &mut SqliteConnection,
    id: i64,
    item: &RosterItem,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO roster_items (account_id, contact, name, subscription, ask, approved)
         VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (account_id, contact) DO UPDATE SET
             name = excluded.name, subscription = excluded.subscription,
             ask = excluded.ask, approved = excluded.approved",
    )
    .bind(id)
    .bind(&item.contact)
    .bind(&item.name)
    .bind(item.subscription.as_str())
    .bind(item.ask)
    .bind(item.approved)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM roster_groups WHERE account_id = ? AND contact = ?")
        .bind(id)
        .bind(&item.contact)
        .execute(&mut *conn)
        .await?;
    let groups = dedup_groups(&item.groups);
    // 4 binds per group; stay far below SQLite's parameter limit.
    for (n, chunk) in groups.chunks(1000).enumerate() {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO roster_groups (account_id, contact, position, name) ",
        );
        qb.push_values(chunk.iter().enumerate(), |mut b, (i, g)| {
            b.push_bind(id)
                .push_bind(item.contact.as_str())
                .push_bind((n * 1000 + i) as i64)
                .push_bind(*g);
        });
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

async fn pg_write_item(
    conn: &mut PgConnection,
    id: i64,
    item: &RosterItem,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO roster_items (account_id, contact, name, subscription, ask, approved)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (account_id, contact) DO UPDATE SET
             name = excluded.name, subscription = excluded.subscription,
             ask = excluded.ask, approved = excluded.approved",
    )
    .bind(id)
    .bind(&item.contact)
    .bind(&item.name)
    .bind(item.subscription.as_str())
    .bind(item.ask)
    .bind(item.approved)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM roster_groups WHERE account_id = $1 AND contact = $2")
        .bind(id)
        .bind(&item.contact)
        .execute(&mut *conn)
        .await?;
    let groups = dedup_groups(&item.groups);
    if !groups.is_empty() {
        let positions: Vec<i32> = (0..groups.len() as i32).collect();
        sqlx::query(
            "INSERT INTO roster_groups (account_id, contact, position, name)
             SELECT $1, $2, p, n FROM UNNEST($3::int[], $4::text[]) AS t (p, n)",
        )
        .bind(id)
        .bind(&item.contact)
        .bind(positions)
        .bind(groups)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

impl Roster<'_> {
    /// Current roster version (XEP-0237) and all items sorted by contact.
    ///
    /// `(0, [])` for a user without an account.
    pub async fn get_all(&self, u: UserRef<'_>) -> Result<(i64, Vec<RosterItem>), StorageError> {
        let (domain, username) = u;
        match &self.s.db {
            Db::Sqlite(pool) => {
                // One read transaction: version and items from the same snapshot.
                let mut tx = pool.begin().await?;
                let acc = sqlx::query(
                    "SELECT id, roster_version FROM accounts WHERE domain = ? AND username = ?",
                )
                .bind(domain)
                .bind(username)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(acc) = acc else {
                    return Ok((0, Vec::new()));
                };
                let (id, version): (i64, i64) = (col(&acc, 0)?, col(&acc, 1)?);
                let items = sqlx::query(
                    "SELECT contact, name, subscription, ask, approved FROM roster_items
                     WHERE account_id = ? ORDER BY contact",
                )
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
                let groups = sqlx::query(
                    "SELECT contact, name FROM roster_groups
                     WHERE account_id = ? ORDER BY contact, position",
                )
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok((version, assemble(&items, &groups)?))
            }
            Db::Postgres(pool) => {
                let mut tx = pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?;
                let acc = sqlx::query(
                    "SELECT id, roster_version FROM accounts WHERE domain = $1 AND username = $2",
                )
                .bind(domain)
                .bind(username)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(acc) = acc else {
                    return Ok((0, Vec::new()));
                };
                let (id, version): (i64, i64) = (col(&acc, 0)?, col(&acc, 1)?);
                let items = sqlx::query(
                    "SELECT contact, name, subscription, ask, approved FROM roster_items
                     WHERE account_id = $1 ORDER BY contact COLLATE \"C\"",
                )
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
                let groups = sqlx::query(
                    "SELECT contact, name FROM roster_groups
                     WHERE account_id = $1 ORDER BY contact COLLATE \"C\", position",
                )
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok((version, assemble(&items, &groups)?))
            }
        }
    }

    pub async fn get(
        &self,
        u: UserRef<'_>,
        contact: &str,
    ) -> Result<Option<RosterItem>, StorageError> {
        let (domain, username) = u;
        let mut items = match &self.s.db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let items = sqlx::query(
                    "SELECT r.contact, r.name, r.subscription, r.ask, r.approved
                     FROM roster_items r JOIN accounts a ON a.id = r.account_id
                     WHERE a.domain = ? AND a.username = ? AND r.contact = ?",
                )
                .bind(domain)
                .bind(username)
                .bind(contact)
                .fetch_all(&mut *tx)
                .await?;
                let groups = sqlx::query(
                    "SELECT g.contact, g.name
                     FROM roster_groups g JOIN accounts a ON a.id = g.account_id
                     WHERE a.domain = ? AND a.username = ? AND g.contact = ?
                     ORDER BY g.position",
                )
                .bind(domain)
                .bind(username)
                .bind(contact)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                assemble(&items, &groups)?
            }
            Db::Postgres(pool) => {
                let mut tx = pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?;
                let items = sqlx::query(
                    "SELECT r.contact, r.name, r.subscription, r.ask, r.approved
                     FROM roster_items r JOIN accounts a ON a.id = r.account_id
                     WHERE a.domain = $1 AND a.username = $2 AND r.contact = $3",
                )
                .bind(domain)
                .bind(username)
                .bind(contact)
                .fetch_all(&mut *tx)
                .await?;
                let groups = sqlx::query(
                    "SELECT g.contact, g.name
                     FROM roster_groups g JOIN accounts a ON a.id = g.account_id
                     WHERE a.domain = $1 AND a.username = $2 AND g.contact = $3
                     ORDER BY g.position",
                )
                .bind(domain)
                .bind(username)
                .bind(contact)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                assemble(&items, &groups)?
            }
        };
        Ok(items.pop())
    }

    /// Insert or replace; returns the new roster version (strictly increasing per user).
    ///
    /// The version bump and the change happen in one transaction.
    /// Err(NoAccount) when the user has no account. Duplicate group names are dropped.
    pub async fn put(&self, u: UserRef<'_>, item: &RosterItem) -> Result<i64, StorageError> {
        let (domain, username) = u;
        match &self.s.db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let row = sqlx::query(
                    "UPDATE accounts SET roster_version = roster_version + 1
                     WHERE domain = ? AND username = ? RETURNING id, roster_version",
                )
                .bind(domain)
                .bind(username)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StorageError::NoAccount)?;
                let (id, version): (i64, i64) = (col(&row, 0)?, col(&row, 1)?);
                sqlite_write_item(&mut tx, id, item).await?;
                tx.commit().await?;
                Ok(version)
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                // The UPDATE row-locks the account: concurrent roster writes serialize here.
                let row = sqlx::query(
                    "UPDATE accounts SET roster_version = roster_version + 1
                     WHERE domain = $1 AND username = $2 RETURNING id, roster_version",
                )
                .bind(domain)
                .bind(username)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StorageError::NoAccount)?;
                let (id, version): (i64, i64) = (col(&row, 0)?, col(&row, 1)?);
                pg_write_item(&mut tx, id, item).await?;
                tx.commit().await?;
                Ok(version)
            }
        }
    }

    /// Remove; returns the new version, or None when there was no such item.
    pub async fn remove(&self, u: UserRef<'_>, contact: &str) -> Result<Option<i64>, StorageError> {
        let (domain, username) = u;
        match &self.s.db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let deleted = sqlx::query(
                    "DELETE FROM roster_items
                     WHERE account_id = (SELECT id FROM accounts WHERE domain = ? AND username = ?)
                       AND contact = ?",
                )
                .bind(domain)
                .bind(username)
                .bind(contact)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if deleted == 0 {
                    return Ok(None);
                }
                let version: i64 = sqlx::query_scalar(
                    "UPDATE accounts SET roster_version = roster_version + 1
                     WHERE domain = ? AND username = ? RETURNING roster_version",
                )
                .bind(domain)
                .bind(username)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Some(version))
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                // Lock the account first (same order as `put`) to avoid deadlocks.
                let id: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM accounts WHERE domain = $1 AND username = $2
                     FOR NO KEY UPDATE",
                )
                .bind(domain)
                .bind(username)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(id) = id else { return Ok(None) };
                let deleted =
                    sqlx::query("DELETE FROM roster_items WHERE account_id = $1 AND contact = $2")
                        .bind(id)
                        .bind(contact)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                if deleted == 0 {
                    return Ok(None);
                }
                let version: i64 = sqlx::query_scalar(
                    "UPDATE accounts SET roster_version = roster_version + 1
                     WHERE id = $1 RETURNING roster_version",
                )
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Some(version))
            }
        }
    }

    /// 0 for a user without an account or who never changed the roster.
    pub async fn version(&self, u: UserRef<'_>) -> Result<i64, StorageError> {
        let (domain, username) = u;
        let v: Option<i64> = match &self.s.db {
            Db::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT roster_version FROM accounts WHERE domain = ? AND username = ?",
                )
                .bind(domain)
                .bind(username)
                .fetch_optional(pool)
                .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT roster_version FROM accounts WHERE domain = $1 AND username = $2",
                )
                .bind(domain)
                .bind(username)
                .fetch_optional(pool)
                .await?
            }
        };
        Ok(v.unwrap_or(0))
    }

    /// Record an inbound subscription request (the stanza, serialized) so it survives restarts.
    ///
    /// A repeated request from the same contact replaces the stanza and keeps its place in
    /// arrival order. Err(NoAccount) when the user has no account.
    pub async fn pending_in_add(
        &self,
        u: UserRef<'_>,
        contact: &str,
        stanza: &str,
    ) -> Result<(), StorageError> {
        let (domain, username) = u;
        let n = match &self.s.db {
            Db::Sqlite(pool) => sqlx::query(
                "INSERT INTO roster_pending_in (account_id, contact, stanza)
                     SELECT id, ?, ? FROM accounts WHERE domain = ? AND username = ?
                     ON CONFLICT (account_id, contact) DO UPDATE SET stanza = excluded.stanza",
            )
            .bind(contact)
            .bind(stanza)
            .bind(domain)
            .bind(username)
            .execute(pool)
            .await?
            .rows_affected(),
            Db::Postgres(pool) => sqlx::query(
                "INSERT INTO roster_pending_in (account_id, contact, stanza)
                     SELECT id, $1, $2 FROM accounts WHERE domain = $3 AND username = $4
                     ON CONFLICT (account_id, contact) DO UPDATE SET stanza = excluded.stanza",
            )
            .bind(contact)
            .bind(stanza)
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

    /// Ok(true) when one was removed.
    pub async fn pending_in_remove(
        &self,
        u: UserRef<'_>,
        contact: &str,
    ) -> Result<bool, StorageError> {
        let (domain, username) = u;
        let n = match &self.s.db {
            Db::Sqlite(pool) => {
                sqlx::query(
                    "DELETE FROM roster_pending_in
                     WHERE account_id = (SELECT id FROM accounts WHERE domain = ? AND username = ?)
                       AND contact = ?",
                )
                .bind(domain)
                .bind(username)
                .bind(contact)
                .execute(pool)
                .await?
                .rows_affected()
            }
            Db::Postgres(pool) => {
                sqlx::query(
                    "DELETE FROM roster_pending_in
                     WHERE account_id = (SELECT id FROM accounts WHERE domain = $1 AND username = $2)
                       AND contact = $3",
                )
                .bind(domain)
                .bind(username)
                .bind(contact)
                .execute(pool)
                .await?
                .rows_affected()
            }
        };
        Ok(n > 0)
    }

    pub async fn pending_in_has(
        &self,
        u: UserRef<'_>,
        contact: &str,
    ) -> Result<bool, StorageError> {
        let (domain, username) = u;
        let found: Option<i64> =
            match &self.s.db {
                Db::Sqlite(pool) => sqlx::query_scalar(
                    "SELECT p.id FROM roster_pending_in p JOIN accounts a ON a.id = p.account_id
                     WHERE a.domain = ? AND a.username = ? AND p.contact = ?",
                )
                .bind(domain)
                .bind(username)
                .bind(contact)
                .fetch_optional(pool)
                .await?,
                Db::Postgres(pool) => sqlx::query_scalar(
                    "SELECT p.id FROM roster_pending_in p JOIN accounts a ON a.id = p.account_id
                     WHERE a.domain = $1 AND a.username = $2 AND p.contact = $3",
                )
                .bind(domain)
                .bind(username)
                .bind(contact)
                .fetch_optional(pool)
                .await?,
            };
        Ok(found.is_some())
    }

    /// (contact, stanza) in arrival order.
    pub async fn pending_in_list(
        &self,
        u: UserRef<'_>,
    ) -> Result<Vec<(String, String)>, StorageError> {
        let (domain, username) = u;
        match &self.s.db {
            Db::Sqlite(pool) => sqlx::query(
                "SELECT p.contact, p.stanza FROM roster_pending_in p
                 JOIN accounts a ON a.id = p.account_id
                 WHERE a.domain = ? AND a.username = ? ORDER BY p.id",
            )
            .bind(domain)
            .bind(username)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| Ok((col(r, 0)?, col(r, 1)?)))
            .collect(),
            Db::Postgres(pool) => sqlx::query(
                "SELECT p.contact, p.stanza FROM roster_pending_in p
                 JOIN accounts a ON a.id = p.account_id
                 WHERE a.domain = $1 AND a.username = $2 ORDER BY p.id",
            )
            .bind(domain)
            .bind(username)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| Ok((col(r, 0)?, col(r, 1)?)))
            .collect(),
        }
    }
}
