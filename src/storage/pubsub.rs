//! PEP nodes and items (XEP-0163 on the XEP-0060 subset it needs): one virtual pubsub
//! service per account, its nodes with their configuration, and each node's items in publish
//! order (a re-published item id moves to the end, so "last published" is the highest row id).

use super::{col, corrupt, Db, StorageError, UserRef};

/// XEP-0060 §4.5 access models this service implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessModel {
    Open,
    /// Contacts with a 'from' or 'both' presence subscription (the PEP default).
    Presence,
    /// The owner only (no affiliation management yet).
    Whitelist,
}

impl AccessModel {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessModel::Open => "open",
            AccessModel::Presence => "presence",
            AccessModel::Whitelist => "whitelist",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(AccessModel::Open),
            "presence" => Some(AccessModel::Presence),
            "whitelist" => Some(AccessModel::Whitelist),
            _ => None,
        }
    }
}

/// `pubsub#send_last_published_item`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendLast {
    Never,
    OnSub,
    OnSubAndPresence,
}

impl SendLast {
    pub fn as_str(self) -> &'static str {
        match self {
            SendLast::Never => "never",
            SendLast::OnSub => "on_sub",
            SendLast::OnSubAndPresence => "on_sub_and_presence",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "never" => Some(SendLast::Never),
            "on_sub" => Some(SendLast::OnSub),
            "on_sub_and_presence" => Some(SendLast::OnSubAndPresence),
            _ => None,
        }
    }
}

/// A node's configuration (the `pubsub#node_config` fields this service knows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeConfig {
    pub access_model: AccessModel,
    /// None: "max", i.e. the server's per-node cap.
    pub max_items: Option<u32>,
    pub persist_items: bool,
    pub send_last: SendLast,
}

impl Default for NodeConfig {
    /// XEP-0163 §4.1 defaults: presence access, last item on subscription and presence.
    fn default() -> Self {
        NodeConfig {
            access_model: AccessModel::Presence,
            max_items: Some(1),
            persist_items: true,
            send_last: SendLast::OnSubAndPresence,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PepNode {
    pub id: i64,
    pub name: String,
    pub config: NodeConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PepItem {
    pub id: String,
    /// Full JID of the publishing resource.
    pub publisher: String,
    pub stamp_ms: i64,
    /// The serialized payload element.
    pub payload: String,
}

pub struct Pubsub<'a> {
    pub(super) s: &'a super::Storage,
}

const NODE_COLS: &str = "id, node, access_model, max_items, persist_items, send_last";
const ITEM_COLS: &str = "item_id, publisher, stamp_ms, payload";

fn node_row<R: sqlx::Row>(r: &R) -> Result<PepNode, StorageError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let access: String = col(r, 2)?;
    let send_last: String = col(r, 5)?;
    let max: Option<i64> = col(r, 3)?;
    Ok(PepNode {
        id: col(r, 0)?,
        name: col(r, 1)?,
        config: NodeConfig {
            access_model: AccessModel::parse(&access)
                .ok_or_else(|| corrupt(format!("bad access model {access:?}")))?,
            max_items: max
                .map(|m| u32::try_from(m).map_err(|_| corrupt(format!("bad max_items {m}"))))
                .transpose()?,
            persist_items: col(r, 4)?,
            send_last: SendLast::parse(&send_last)
                .ok_or_else(|| corrupt(format!("bad send_last {send_last:?}")))?,
        },
    })
}

fn item_row<R: sqlx::Row>(r: &R, at: usize) -> Result<PepItem, StorageError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(PepItem {
        id: col(r, at)?,
        publisher: col(r, at + 1)?,
        stamp_ms: col(r, at + 2)?,
        payload: col(r, at + 3)?,
    })
}

fn max_param(c: &NodeConfig) -> Option<i64> {
    c.max_items.map(i64::from)
}

impl Pubsub<'_> {
    pub async fn node(&self, u: UserRef<'_>, name: &str) -> Result<Option<PepNode>, StorageError> {
        let (domain, username) = u;
        match &self.s.db {
            Db::Sqlite(pool) => {
                let q = format!(
                    "SELECT {NODE_COLS} FROM pep_nodes WHERE node = ? AND account_id =
                     (SELECT id FROM accounts WHERE domain = ? AND username = ?)"
                );
                let row = sqlx::query(&q)
                    .bind(name)
                    .bind(domain)
                    .bind(username)
                    .fetch_optional(pool)
                    .await?;
                row.as_ref().map(node_row).transpose()
            }
            Db::Postgres(pool) => {
                let q = format!(
                    "SELECT {NODE_COLS} FROM pep_nodes WHERE node = $1 AND account_id =
                     (SELECT id FROM accounts WHERE domain = $2 AND username = $3)"
                );
                let row = sqlx::query(&q)
                    .bind(name)
                    .bind(domain)
                    .bind(username)
                    .fetch_optional(pool)
                    .await?;
                row.as_ref().map(node_row).transpose()
            }
        }
    }

    /// All nodes of an account, by name.
    pub async fn nodes(&self, u: UserRef<'_>) -> Result<Vec<PepNode>, StorageError> {
        let (domain, username) = u;
        match &self.s.db {
            Db::Sqlite(pool) => {
                let q = format!(
                    "SELECT {NODE_COLS} FROM pep_nodes WHERE account_id =
                     (SELECT id FROM accounts WHERE domain = ? AND username = ?) ORDER BY node"
                );
                let rows = sqlx::query(&q)
                    .bind(domain)
                    .bind(username)
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(node_row).collect()
            }
            Db::Postgres(pool) => {
                let q = format!(
                    "SELECT {NODE_COLS} FROM pep_nodes WHERE account_id =
                     (SELECT id FROM accounts WHERE domain = $1 AND username = $2)
                     ORDER BY node COLLATE \"C\""
                );
                let rows = sqlx::query(&q)
                    .bind(domain)
                    .bind(username)
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(node_row).collect()
            }
        }
    }

    /// Create a node. Ok(None) when the account already has `max_nodes` nodes;
    /// Err(Conflict) when the node exists, Err(NoAccount) without an account. The count and
    /// the insert are atomic (SQLite's write lock; the account row lock on PostgreSQL).
    pub async fn create_node(
        &self,
        u: UserRef<'_>,
        name: &str,
        config: &NodeConfig,
        max_nodes: usize,
    ) -> Result<Option<PepNode>, StorageError> {
        let (domain, username) = u;
        let max_nodes = i64::try_from(max_nodes).unwrap_or(i64::MAX);
        let id: i64 = match &self.s.db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let acc: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM accounts WHERE domain = ? AND username = ?")
                        .bind(domain)
                        .bind(username)
                        .fetch_optional(&mut *tx)
                        .await?;
                let acc = acc.ok_or(StorageError::NoAccount)?;
                let n: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM pep_nodes WHERE account_id = ?")
                        .bind(acc)
                        .fetch_one(&mut *tx)
                        .await?;
                if n >= max_nodes {
                    return Ok(None);
                }
                let id: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO pep_nodes
                         (account_id, node, access_model, max_items, persist_items, send_last)
                     VALUES (?, ?, ?, ?, ?, ?)
                     ON CONFLICT (account_id, node) DO NOTHING RETURNING id",
                )
                .bind(acc)
                .bind(name)
                .bind(config.access_model.as_str())
                .bind(max_param(config))
                .bind(config.persist_items)
                .bind(config.send_last.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                let id = id.ok_or(StorageError::Conflict)?;
                tx.commit().await?;
                id
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let acc: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM accounts WHERE domain = $1 AND username = $2
                     FOR NO KEY UPDATE",
                )
                .bind(domain)
                .bind(username)
                .fetch_optional(&mut *tx)
                .await?;
                let acc = acc.ok_or(StorageError::NoAccount)?;
                let n: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM pep_nodes WHERE account_id = $1")
                        .bind(acc)
                        .fetch_one(&mut *tx)
                        .await?;
                if n >= max_nodes {
                    return Ok(None);
                }
                let id: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO pep_nodes
                         (account_id, node, access_model, max_items, persist_items, send_last)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (account_id, node) DO NOTHING RETURNING id",
                )
                .bind(acc)
                .bind(name)
                .bind(config.access_model.as_str())
                .bind(max_param(config))
                .bind(config.persist_items)
                .bind(config.send_last.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                let id = id.ok_or(StorageError::Conflict)?;
                tx.commit().await?;
                id
            }
        };
        Ok(Some(PepNode {
            id,
            name: name.to_string(),
            config: *config,
        }))
    }

    /// Replace a node's configuration and drop the oldest items beyond `keep`.
    pub async fn configure(
        &self,
        node_id: i64,
        config: &NodeConfig,
        keep: u32,
    ) -> Result<(), StorageError> {
        match &self.s.db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::query(
                    "UPDATE pep_nodes SET access_model = ?, max_items = ?, persist_items = ?,
                         send_last = ? WHERE id = ?",
                )
                .bind(config.access_model.as_str())
                .bind(max_param(config))
                .bind(config.persist_items)
                .bind(config.send_last.as_str())
                .bind(node_id)
                .execute(&mut *tx)
                .await?;
                sqlite_trim(&mut tx, node_id, keep).await?;
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "UPDATE pep_nodes SET access_model = $1, max_items = $2, persist_items = $3,
                         send_last = $4 WHERE id = $5",
                )
                .bind(config.access_model.as_str())
                .bind(max_param(config))
                .bind(config.persist_items)
                .bind(config.send_last.as_str())
                .bind(node_id)
                .execute(&mut *tx)
                .await?;
                pg_trim(&mut tx, node_id, keep).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Delete a node and its items; false when it did not exist.
    pub async fn delete_node(&self, u: UserRef<'_>, name: &str) -> Result<bool, StorageError> {
        let (domain, username) = u;
        let n = match &self.s.db {
            Db::Sqlite(pool) => sqlx::query(
                "DELETE FROM pep_nodes WHERE node = ? AND account_id =
                 (SELECT id FROM accounts WHERE domain = ? AND username = ?)",
            )
            .bind(name)
            .bind(domain)
            .bind(username)
            .execute(pool)
            .await?
            .rows_affected(),
            Db::Postgres(pool) => sqlx::query(
                "DELETE FROM pep_nodes WHERE node = $1 AND account_id =
                 (SELECT id FROM accounts WHERE domain = $2 AND username = $3)",
            )
            .bind(name)
            .bind(domain)
            .bind(username)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(n > 0)
    }

    /// Store an item (replacing one with the same id, which then counts as the newest) and
    /// keep only the newest `keep` items of the node.
    pub async fn publish(
        &self,
        node_id: i64,
        item: &PepItem,
        keep: u32,
    ) -> Result<(), StorageError> {
        match &self.s.db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::query("DELETE FROM pep_items WHERE node_id = ? AND item_id = ?")
                    .bind(node_id)
                    .bind(&item.id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO pep_items (node_id, item_id, publisher, stamp_ms, payload)
                     VALUES (?, ?, ?, ?, ?)",
                )
                .bind(node_id)
                .bind(&item.id)
                .bind(&item.publisher)
                .bind(item.stamp_ms)
                .bind(&item.payload)
                .execute(&mut *tx)
                .await?;
                sqlite_trim(&mut tx, node_id, keep).await?;
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("DELETE FROM pep_items WHERE node_id = $1 AND item_id = $2")
                    .bind(node_id)
                    .bind(&item.id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO pep_items (node_id, item_id, publisher, stamp_ms, payload)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(node_id)
                .bind(&item.id)
                .bind(&item.publisher)
                .bind(item.stamp_ms)
                .bind(&item.payload)
                .execute(&mut *tx)
                .await?;
                pg_trim(&mut tx, node_id, keep).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Remove every item of a node (XEP-0060 §8.5 purge).
    pub async fn purge(&self, node_id: i64) -> Result<(), StorageError> {
        match &self.s.db {
            Db::Sqlite(pool) => {
                sqlx::query("DELETE FROM pep_items WHERE node_id = ?")
                    .bind(node_id)
                    .execute(pool)
                    .await?;
            }
            Db::Postgres(pool) => {
                sqlx::query("DELETE FROM pep_items WHERE node_id = $1")
                    .bind(node_id)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Remove one item; false when there was no such item.
    pub async fn retract(&self, node_id: i64, item_id: &str) -> Result<bool, StorageError> {
        let n = match &self.s.db {
            Db::Sqlite(pool) => {
                sqlx::query("DELETE FROM pep_items WHERE node_id = ? AND item_id = ?")
                    .bind(node_id)
                    .bind(item_id)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
            Db::Postgres(pool) => {
                sqlx::query("DELETE FROM pep_items WHERE node_id = $1 AND item_id = $2")
                    .bind(node_id)
                    .bind(item_id)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
        };
        Ok(n > 0)
    }

    /// Items of a node in publish order: all of them, the newest `last`, or those with the
    /// given ids (ids win when both are given).
    pub async fn items(
        &self,
        node_id: i64,
        ids: &[String],
        last: Option<u32>,
    ) -> Result<Vec<PepItem>, StorageError> {
        let limit = last.map(i64::from).unwrap_or(i64::MAX);
        let mut items = match &self.s.db {
            Db::Sqlite(pool) => {
                let q = format!(
                    "SELECT {ITEM_COLS} FROM pep_items WHERE node_id = ? ORDER BY id DESC LIMIT ?"
                );
                let rows = sqlx::query(&q)
                    .bind(node_id)
                    .bind(if ids.is_empty() { limit } else { i64::MAX })
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(|r| item_row(r, 0))
                    .collect::<Result<Vec<_>, _>>()?
            }
            Db::Postgres(pool) => {
                let q = format!(
                    "SELECT {ITEM_COLS} FROM pep_items WHERE node_id = $1 ORDER BY id DESC LIMIT $2"
                );
                let rows = sqlx::query(&q)
                    .bind(node_id)
                    .bind(if ids.is_empty() { limit } else { i64::MAX })
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(|r| item_row(r, 0))
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        if !ids.is_empty() {
            items.retain(|i| ids.contains(&i.id));
        }
        items.reverse();
        Ok(items)
    }

    /// The last published item of each of the account's nodes that has one.
    pub async fn last_items(
        &self,
        u: UserRef<'_>,
    ) -> Result<Vec<(PepNode, PepItem)>, StorageError> {
        let (domain, username) = u;
        let cols = "n.id, n.node, n.access_model, n.max_items, n.persist_items, n.send_last,
                    i.item_id, i.publisher, i.stamp_ms, i.payload";
        let from = "FROM pep_nodes n JOIN pep_items i ON i.node_id = n.id
                    AND i.id = (SELECT MAX(id) FROM pep_items WHERE node_id = n.id)";
        match &self.s.db {
            Db::Sqlite(pool) => {
                let q = format!(
                    "SELECT {cols} {from} WHERE n.account_id =
                     (SELECT id FROM accounts WHERE domain = ? AND username = ?)"
                );
                let rows = sqlx::query(&q)
                    .bind(domain)
                    .bind(username)
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(|r| Ok((node_row(r)?, item_row(r, 6)?)))
                    .collect()
            }
            Db::Postgres(pool) => {
                let q = format!(
                    "SELECT {cols} {from} WHERE n.account_id =
                     (SELECT id FROM accounts WHERE domain = $1 AND username = $2)"
                );
                let rows = sqlx::query(&q)
                    .bind(domain)
                    .bind(username)
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(|r| Ok((node_row(r)?, item_row(r, 6)?)))
                    .collect()
            }
        }
    }
}

impl Pubsub<'_> {
    /// Add an explicit subscription. Ok(false) when the node already has `max` subscribers
    /// (an existing subscription is kept and counts as success).
    pub async fn subscribe(
        &self,
        node_id: i64,
        jid: &str,
        max: usize,
    ) -> Result<bool, StorageError> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let n = match &self.s.db {
            Db::Sqlite(pool) => sqlx::query(
                "INSERT INTO pep_subscriptions (node_id, jid)
                 SELECT ?1, ?2 WHERE (SELECT COUNT(*) FROM pep_subscriptions WHERE node_id = ?1) < ?3
                 ON CONFLICT (node_id, jid) DO UPDATE SET jid = excluded.jid",
            )
            .bind(node_id)
            .bind(jid)
            .bind(max)
            .execute(pool)
            .await?
            .rows_affected(),
            Db::Postgres(pool) => sqlx::query(
                "INSERT INTO pep_subscriptions (node_id, jid)
                 SELECT $1, $2 WHERE (SELECT COUNT(*) FROM pep_subscriptions WHERE node_id = $1) < $3
                 ON CONFLICT (node_id, jid) DO UPDATE SET jid = excluded.jid",
            )
            .bind(node_id)
            .bind(jid)
            .bind(max)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        if n > 0 {
            return Ok(true);
        }
        // Full: fine if this subscription already exists.
        Ok(self.subscribers(node_id).await?.iter().any(|j| j == jid))
    }

    /// Remove an explicit subscription; false when there was none.
    pub async fn unsubscribe(&self, node_id: i64, jid: &str) -> Result<bool, StorageError> {
        let n = match &self.s.db {
            Db::Sqlite(pool) => {
                sqlx::query("DELETE FROM pep_subscriptions WHERE node_id = ? AND jid = ?")
                    .bind(node_id)
                    .bind(jid)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
            Db::Postgres(pool) => {
                sqlx::query("DELETE FROM pep_subscriptions WHERE node_id = $1 AND jid = $2")
                    .bind(node_id)
                    .bind(jid)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
        };
        Ok(n > 0)
    }

    /// The explicit subscribers of a node.
    pub async fn subscribers(&self, node_id: i64) -> Result<Vec<String>, StorageError> {
        Ok(match &self.s.db {
            Db::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT jid FROM pep_subscriptions WHERE node_id = ? ORDER BY jid",
                )
                .bind(node_id)
                .fetch_all(pool)
                .await?
            }
            Db::Postgres(pool) => sqlx::query_scalar(
                "SELECT jid FROM pep_subscriptions WHERE node_id = $1 ORDER BY jid COLLATE \"C\"",
            )
            .bind(node_id)
            .fetch_all(pool)
            .await?,
        })
    }
}

async fn sqlite_trim(
    tx: &mut sqlx::SqliteConnection,
    node_id: i64,
    keep: u32,
) -> Result<(), StorageError> {
    sqlx::query(
        "DELETE FROM pep_items WHERE node_id = ? AND id NOT IN
         (SELECT id FROM pep_items WHERE node_id = ? ORDER BY id DESC LIMIT ?)",
    )
    .bind(node_id)
    .bind(node_id)
    .bind(i64::from(keep))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn pg_trim(tx: &mut sqlx::PgConnection, node_id: i64, keep: u32) -> Result<(), StorageError> {
    sqlx::query(
        "DELETE FROM pep_items WHERE node_id = $1 AND id NOT IN
         (SELECT id FROM pep_items WHERE node_id = $1 ORDER BY id DESC LIMIT $2)",
    )
    .bind(node_id)
    .bind(i64::from(keep))
    .execute(&mut *tx)
    .await?;
    Ok(())
}
