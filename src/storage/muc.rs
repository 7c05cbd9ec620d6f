//! XEP-0045 persistent rooms: the room row (configuration, subject), its affiliation list,
//! and the room's XEP-0313 archive (`muc_archive`, the same shape as a user's `archive`; it
//! is queried through [`super::Archive`] with [`super::ArchiveOwner::Room`]).
//!
//! The configuration is stored as text the MUC service serializes (its own format): SQL
//! never looks inside it, and a new config option needs no migration. Deleting a room
//! deletes its affiliations and archive with it (`ON DELETE CASCADE`).

use super::{Db, StorageError, UserRef};

/// Statements whose text differs between backends only in placeholders: both texts side by
/// side, the same binds, one terminal (`fetch_all`, `execute`, ...), and an optional mapping
/// of the result (the backends' result types differ for `execute`).
macro_rules! per_backend {
    ($db:expr, $kind:ident, $lite:expr, $pg:expr, [$($b:expr),* $(,)?], $fin:ident $(, $map:expr)?) => {
        match $db {
            Db::Sqlite(pool) => {
                let r = sqlx::$kind($lite)$(.bind($b))*.$fin(pool).await?;
                $(let r = $map(r);)?
                r
            }
            Db::Postgres(pool) => {
                let r = sqlx::$kind($pg)$(.bind($b))*.$fin(pool).await?;
                $(let r = $map(r);)?
                r
            }
        }
    };
}

/// A room as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRoom {
    pub node: String,
    /// The service's serialized room configuration.
    pub config: String,
    /// The subject and the nick that set it (None when never set).
    pub subject: Option<(String, String)>,
    pub created_ms: i64,
}

impl StoredRoom {
    /// A row created only to own the archive of a temporary room that logs (no config):
    /// not a room to restore.
    pub fn is_placeholder(&self) -> bool {
        self.config.is_empty()
    }
}

/// One entry of a room's affiliation list (`affiliation` is owner/admin/member/outcast).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAffiliation {
    pub jid: String,
    pub affiliation: String,
    pub reason: String,
    pub nick: String,
}

/// One groupchat message to append to a room's archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRoomArchived {
    /// (service domain, room node).
    pub room: (String, String),
    pub stanza_id: String,
    pub stamp_ms: i64,
    /// The sender's nick (the archive's `with` resource; `with_bare` is the room).
    pub nick: String,
    pub origin_id: Option<String>,
    /// The sender's real bare JID: who may retract it (XEP-0424).
    pub sender: String,
    pub stanza: String,
}

/// An archived room message looked up for a retraction or moderation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomArchivedRef {
    pub stanza_id: String,
    pub nick: String,
    pub sender: String,
    pub stamp_ms: i64,
    /// The archived stanza (or its tombstone).
    pub stanza: String,
}

pub struct MucRooms<'a> {
    pub(super) s: &'a Storage,
}

use super::Storage;

const AFFILIATIONS: [&str; 4] = ["owner", "admin", "member", "outcast"];

impl MucRooms<'_> {
    /// Every stored room of one service (loaded once at startup).
    pub async fn rooms(&self, service: &str) -> Result<Vec<StoredRoom>, StorageError> {
        let rows: Vec<(String, String, Option<String>, String, i64)> = per_backend!(
            &self.s.db,
            query_as,
            "SELECT node, config, subject, subject_by, created_ms FROM muc_rooms
             WHERE service = ? ORDER BY node",
            "SELECT node, config, subject, subject_by, created_ms FROM muc_rooms
             WHERE service = $1 ORDER BY node",
            [service],
            fetch_all
        );
        Ok(rows.into_iter().map(room_from_row).collect())
    }

    pub async fn room(&self, r: UserRef<'_>) -> Result<Option<StoredRoom>, StorageError> {
        let row: Option<(String, String, Option<String>, String, i64)> = per_backend!(
            &self.s.db,
            query_as,
            "SELECT node, config, subject, subject_by, created_ms FROM muc_rooms
             WHERE service = ? AND node = ?",
            "SELECT node, config, subject, subject_by, created_ms FROM muc_rooms
             WHERE service = $1 AND node = $2",
            [r.0, r.1],
            fetch_optional
        );
        Ok(row.map(room_from_row))
    }

    /// Create the room or replace its configuration (the subject and creation time stay).
    pub async fn save(
        &self,
        r: UserRef<'_>,
        config: &str,
        created_ms: i64,
    ) -> Result<(), StorageError> {
        per_backend!(
            &self.s.db,
            query,
            "INSERT INTO muc_rooms (service, node, config, created_ms) VALUES (?, ?, ?, ?)
             ON CONFLICT (service, node) DO UPDATE SET config = excluded.config",
            "INSERT INTO muc_rooms (service, node, config, created_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (service, node) DO UPDATE SET config = excluded.config",
            [r.0, r.1, config, created_ms],
            execute,
            rows_affected
        );
        Ok(())
    }

    /// Store a whole room in one transaction: create it or replace its configuration and
    /// subject, and replace its affiliation list with `affiliations` (the MUC service saves
    /// a snapshot after every change; the creation time of an existing room stays).
    pub async fn replace(
        &self,
        r: UserRef<'_>,
        config: &str,
        subject: Option<(&str, &str)>,
        affiliations: &[StoredAffiliation],
        created_ms: i64,
    ) -> Result<(), StorageError> {
        if let Some(a) = affiliations
            .iter()
            .find(|a| !AFFILIATIONS.contains(&a.affiliation.as_str()))
        {
            return Err(StorageError::Corrupt(format!(
                "affiliation {:?}",
                a.affiliation
            )));
        }
        let (subject, subject_by) = match subject {
            Some((s, by)) => (Some(s), by),
            None => (None, ""),
        };
        match &self.s.db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO muc_rooms (service, node, config, subject, subject_by, created_ms)
                     VALUES (?, ?, ?, ?, ?, ?)
                     ON CONFLICT (service, node) DO UPDATE SET config = excluded.config,
                         subject = excluded.subject, subject_by = excluded.subject_by
                     RETURNING id",
                )
                .bind(r.0)
                .bind(r.1)
                .bind(config)
                .bind(subject)
                .bind(subject_by)
                .bind(created_ms)
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM muc_affiliations WHERE room_id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                for a in affiliations {
                    sqlx::query(
                        "INSERT INTO muc_affiliations (room_id, jid, affiliation, reason, nick)
                         VALUES (?, ?, ?, ?, ?)",
                    )
                    .bind(id)
                    .bind(&a.jid)
                    .bind(&a.affiliation)
                    .bind(&a.reason)
                    .bind(&a.nick)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO muc_rooms (service, node, config, subject, subject_by, created_ms)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (service, node) DO UPDATE SET config = excluded.config,
                         subject = excluded.subject, subject_by = excluded.subject_by
                     RETURNING id",
                )
                .bind(r.0)
                .bind(r.1)
                .bind(config)
                .bind(subject)
                .bind(subject_by)
                .bind(created_ms)
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM muc_affiliations WHERE room_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                for a in affiliations {
                    sqlx::query(
                        "INSERT INTO muc_affiliations (room_id, jid, affiliation, reason, nick)
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(id)
                    .bind(&a.jid)
                    .bind(&a.affiliation)
                    .bind(&a.reason)
                    .bind(&a.nick)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Record the subject. Ok(false) when the room is not stored.
    pub async fn set_subject(
        &self,
        r: UserRef<'_>,
        subject: &str,
        by_nick: &str,
    ) -> Result<bool, StorageError> {
        let n = per_backend!(
            &self.s.db,
            query,
            "UPDATE muc_rooms SET subject = ?, subject_by = ? WHERE service = ? AND node = ?",
            "UPDATE muc_rooms SET subject = $1, subject_by = $2 WHERE service = $3 AND node = $4",
            [subject, by_nick, r.0, r.1],
            execute,
            rows_affected
        );
        Ok(n > 0)
    }

    /// Delete the room with its affiliations and archive. Ok(false) when it was not stored.
    pub async fn delete(&self, r: UserRef<'_>) -> Result<bool, StorageError> {
        let n = per_backend!(
            &self.s.db,
            query,
            "DELETE FROM muc_rooms WHERE service = ? AND node = ?",
            "DELETE FROM muc_rooms WHERE service = $1 AND node = $2",
            [r.0, r.1],
            execute,
            rows_affected
        );
        Ok(n > 0)
    }

    /// Turn a stored room into a placeholder (see [`MucRooms::archive_batch`]): its config,
    /// subject and affiliations go, its archive stays (a persistent room made temporary
    /// keeps its history while it lives). Ok(false) when the room was not stored.
    pub async fn unstore(&self, r: UserRef<'_>) -> Result<bool, StorageError> {
        let n = match &self.s.db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "DELETE FROM muc_affiliations WHERE room_id =
                         (SELECT id FROM muc_rooms WHERE service = ? AND node = ?)",
                )
                .bind(r.0)
                .bind(r.1)
                .execute(&mut *tx)
                .await?;
                let n = sqlx::query(
                    "UPDATE muc_rooms SET config = '', subject = NULL, subject_by = ''
                     WHERE service = ? AND node = ?",
                )
                .bind(r.0)
                .bind(r.1)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                n
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "DELETE FROM muc_affiliations WHERE room_id =
                         (SELECT id FROM muc_rooms WHERE service = $1 AND node = $2)",
                )
                .bind(r.0)
                .bind(r.1)
                .execute(&mut *tx)
                .await?;
                let n = sqlx::query(
                    "UPDATE muc_rooms SET config = '', subject = NULL, subject_by = ''
                     WHERE service = $1 AND node = $2",
                )
                .bind(r.0)
                .bind(r.1)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                n
            }
        };
        Ok(n > 0)
    }

    /// Delete a placeholder room row (see [`MucRooms::archive_batch`]) with its archive;
    /// a configured (persistent) room is left alone. Ok(false) when nothing was deleted.
    pub async fn delete_placeholder(&self, r: UserRef<'_>) -> Result<bool, StorageError> {
        let n = per_backend!(
            &self.s.db,
            query,
            "DELETE FROM muc_rooms WHERE service = ? AND node = ? AND config = ''",
            "DELETE FROM muc_rooms WHERE service = $1 AND node = $2 AND config = ''",
            [r.0, r.1],
            execute,
            rows_affected
        );
        Ok(n > 0)
    }

    /// Delete up to `batch` room-archive messages (of any room) stored before `before_ms`
    /// (`mam.retention_days` covers room archives too); returns how many went.
    pub async fn expire(&self, before_ms: i64, batch: u32) -> Result<u64, StorageError> {
        let batch = i64::from(batch);
        Ok(per_backend!(
            &self.s.db,
            query,
            "DELETE FROM muc_archive WHERE id IN
                 (SELECT id FROM muc_archive WHERE stamp_ms < ? LIMIT ?)",
            "DELETE FROM muc_archive WHERE id IN
                 (SELECT id FROM muc_archive WHERE stamp_ms < $1 LIMIT $2)",
            [before_ms, batch],
            execute,
            rows_affected
        ))
    }

    /// The room's affiliation list, sorted by JID.
    pub async fn affiliations(
        &self,
        r: UserRef<'_>,
    ) -> Result<Vec<StoredAffiliation>, StorageError> {
        let rows: Vec<(String, String, String, String)> = per_backend!(
            &self.s.db,
            query_as,
            "SELECT f.jid, f.affiliation, f.reason, f.nick FROM muc_affiliations f
             JOIN muc_rooms r ON r.id = f.room_id WHERE r.service = ? AND r.node = ?
             ORDER BY f.jid",
            "SELECT f.jid, f.affiliation, f.reason, f.nick FROM muc_affiliations f
             JOIN muc_rooms r ON r.id = f.room_id WHERE r.service = $1 AND r.node = $2
             ORDER BY f.jid COLLATE \"C\"",
            [r.0, r.1],
            fetch_all
        );
        Ok(rows
            .into_iter()
            .map(|(jid, affiliation, reason, nick)| StoredAffiliation {
                jid,
                affiliation,
                reason,
                nick,
            })
            .collect())
    }

    /// Set one JID's affiliation; `None` removes it (affiliation "none"). Ok(false) when the
    /// room is not stored. An affiliation outside owner/admin/member/outcast is refused.
    pub async fn set_affiliation(
        &self,
        r: UserRef<'_>,
        jid: &str,
        a: Option<&StoredAffiliation>,
    ) -> Result<bool, StorageError> {
        let Some(a) = a else {
            per_backend!(
                &self.s.db,
                query,
                "DELETE FROM muc_affiliations WHERE jid = ? AND room_id =
                     (SELECT id FROM muc_rooms WHERE service = ? AND node = ?)",
                "DELETE FROM muc_affiliations WHERE jid = $1 AND room_id =
                     (SELECT id FROM muc_rooms WHERE service = $2 AND node = $3)",
                [jid, r.0, r.1],
                execute,
                rows_affected
            );
            return Ok(self.room(r).await?.is_some());
        };
        if !AFFILIATIONS.contains(&a.affiliation.as_str()) {
            return Err(StorageError::Corrupt(format!(
                "affiliation {:?}",
                a.affiliation
            )));
        }
        let n = per_backend!(
            &self.s.db,
            query,
            "INSERT INTO muc_affiliations (room_id, jid, affiliation, reason, nick)
             SELECT id, ?, ?, ?, ? FROM muc_rooms WHERE service = ? AND node = ?
             ON CONFLICT (room_id, jid) DO UPDATE SET affiliation = excluded.affiliation,
                 reason = excluded.reason, nick = excluded.nick",
            "INSERT INTO muc_affiliations (room_id, jid, affiliation, reason, nick)
             SELECT id, $1, $2, $3, $4 FROM muc_rooms WHERE service = $5 AND node = $6
             ON CONFLICT (room_id, jid) DO UPDATE SET affiliation = excluded.affiliation,
                 reason = excluded.reason, nick = excluded.nick",
            [jid, &a.affiliation, &a.reason, &a.nick, r.0, r.1],
            execute,
            rows_affected
        );
        Ok(n > 0)
    }

    /// Append messages to room archives in one transaction (the archive writer's batch);
    /// returns how many were stored. A temporary room that logs has no row yet: one is
    /// created with an empty config (a placeholder owning the archive, which
    /// [`MucRooms::rooms`] callers skip: see [`StoredRoom::is_placeholder`]).
    pub async fn archive_batch(&self, rows: &[NewRoomArchived]) -> Result<u64, StorageError> {
        let mut n = 0;
        let mut rooms: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.room.0.as_str(), r.room.1.as_str()))
            .collect();
        rooms.sort_unstable();
        rooms.dedup();
        let now = crate::stanza::now_ms();
        match &self.s.db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                for (service, node) in &rooms {
                    sqlx::query(
                        "INSERT INTO muc_rooms (service, node, config, created_ms)
                         VALUES (?, ?, '', ?) ON CONFLICT (service, node) DO NOTHING",
                    )
                    .bind(service)
                    .bind(node)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                for r in rows {
                    n += sqlx::query(
                        "INSERT INTO muc_archive (room_id, stanza_id, stamp_ms, with_bare,
                             with_res, origin_id, sender, stanza)
                         SELECT id, ?, ?, node || '@' || service, ?, ?, ?, ?
                         FROM muc_rooms WHERE service = ? AND node = ?",
                    )
                    .bind(&r.stanza_id)
                    .bind(r.stamp_ms)
                    .bind(&r.nick)
                    .bind(&r.origin_id)
                    .bind(&r.sender)
                    .bind(&r.stanza)
                    .bind(&r.room.0)
                    .bind(&r.room.1)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for (service, node) in &rooms {
                    sqlx::query(
                        "INSERT INTO muc_rooms (service, node, config, created_ms)
                         VALUES ($1, $2, '', $3) ON CONFLICT (service, node) DO NOTHING",
                    )
                    .bind(service)
                    .bind(node)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                for r in rows {
                    n += sqlx::query(
                        "INSERT INTO muc_archive (room_id, stanza_id, stamp_ms, with_bare,
                             with_res, origin_id, sender, stanza)
                         SELECT id, $1, $2, node || '@' || service, $3, $4, $5, $6
                         FROM muc_rooms WHERE service = $7 AND node = $8",
                    )
                    .bind(&r.stanza_id)
                    .bind(r.stamp_ms)
                    .bind(&r.nick)
                    .bind(&r.origin_id)
                    .bind(&r.sender)
                    .bind(&r.stanza)
                    .bind(&r.room.0)
                    .bind(&r.room.1)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                tx.commit().await?;
            }
        }
        Ok(n)
    }

    /// An archived message of the room by its stanza-id, or (when `by_origin`) by the
    /// origin-id its sender gave it (XEP-0424 retractions may name either).
    pub async fn archived(
        &self,
        r: UserRef<'_>,
        id: &str,
        by_origin: bool,
    ) -> Result<Option<RoomArchivedRef>, StorageError> {
        let row: Option<(String, String, String, i64, String)> = if by_origin {
            per_backend!(
                &self.s.db,
                query_as,
                "SELECT stanza_id, with_res, sender, stamp_ms, stanza FROM muc_archive WHERE room_id =
                     (SELECT id FROM muc_rooms WHERE service = ? AND node = ?)
                   AND origin_id = ? ORDER BY id DESC LIMIT 1",
                "SELECT stanza_id, with_res, sender, stamp_ms, stanza FROM muc_archive WHERE room_id =
                     (SELECT id FROM muc_rooms WHERE service = $1 AND node = $2)
                   AND origin_id = $3 ORDER BY id DESC LIMIT 1",
                [r.0, r.1, id],
                fetch_optional
            )
        } else {
            per_backend!(
                &self.s.db,
                query_as,
                "SELECT stanza_id, with_res, sender, stamp_ms, stanza FROM muc_archive WHERE room_id =
                     (SELECT id FROM muc_rooms WHERE service = ? AND node = ?)
                   AND stanza_id = ?",
                "SELECT stanza_id, with_res, sender, stamp_ms, stanza FROM muc_archive WHERE room_id =
                     (SELECT id FROM muc_rooms WHERE service = $1 AND node = $2)
                   AND stanza_id = $3",
                [r.0, r.1, id],
                fetch_optional
            )
        };
        Ok(row.map(
            |(stanza_id, nick, sender, stamp_ms, stanza)| RoomArchivedRef {
                stanza_id,
                nick,
                sender,
                stamp_ms,
                stanza,
            },
        ))
    }

    /// Replace an archived message's stanza (a XEP-0425/XEP-0424 tombstone). Ok(false) when
    /// the room has no such message.
    pub async fn replace_archived(
        &self,
        r: UserRef<'_>,
        stanza_id: &str,
        stanza: &str,
    ) -> Result<bool, StorageError> {
        let n = per_backend!(
            &self.s.db,
            query,
            "UPDATE muc_archive SET stanza = ? WHERE stanza_id = ? AND room_id =
                 (SELECT id FROM muc_rooms WHERE service = ? AND node = ?)",
            "UPDATE muc_archive SET stanza = $1 WHERE stanza_id = $2 AND room_id =
                 (SELECT id FROM muc_rooms WHERE service = $3 AND node = $4)",
            [stanza, stanza_id, r.0, r.1],
            execute,
            rows_affected
        );
        Ok(n > 0)
    }
}

/// `rows_affected` of either backend's result.
fn rows_affected<R: RowsAffected>(r: R) -> u64 {
    r.rows()
}

trait RowsAffected {
    fn rows(&self) -> u64;
}
impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}
impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

fn room_from_row(
    (node, config, subject, subject_by, created_ms): (String, String, Option<String>, String, i64),
) -> StoredRoom {
    StoredRoom {
        node,
        config,
        subject: subject.map(|s| (s, subject_by)),
        created_ms,
    }
}
