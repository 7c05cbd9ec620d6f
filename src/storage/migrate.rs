//! A tiny migrator: numbered SQL files embedded at compile time (one set per backend, same
//! numbers), applied in order, each in its own transaction together with its row in
//! `schema_migrations(version, applied_at)`.
//!
//! Concurrency: two processes may start at once. On SQLite each version is applied inside a
//! `BEGIN IMMEDIATE` transaction (the write lock is taken before the "already applied?" check,
//! and the other process waits on busy_timeout). On PostgreSQL a session advisory lock is held
//! for the whole run on a dedicated connection.

use sqlx::{Connection, Executor};

use super::{now_unix, Db, StorageError};

pub(super) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub(super) const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "archive",
        sql: include_str!("../../migrations/sqlite/0002_archive.sql"),
    },
    Migration {
        version: 3,
        name: "blocking",
        sql: include_str!("../../migrations/sqlite/0003_blocking.sql"),
    },
    Migration {
        version: 4,
        name: "pep",
        sql: include_str!("../../migrations/sqlite/0004_pep.sql"),
    },
    Migration {
        version: 5,
        name: "vcard_private_push",
        sql: include_str!("../../migrations/sqlite/0005_vcard_private_push.sql"),
    },
    Migration {
        version: 6,
        name: "fast",
        sql: include_str!("../../migrations/sqlite/0006_fast.sql"),
    },
    Migration {
        version: 7,
        name: "upload",
        sql: include_str!("../../migrations/sqlite/0007_upload.sql"),
    },
    Migration {
        version: 8,
        name: "muc",
        sql: include_str!("../../migrations/sqlite/0008_muc.sql"),
    },
];

pub(super) const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "archive",
        sql: include_str!("../../migrations/postgres/0002_archive.sql"),
    },
    Migration {
        version: 3,
        name: "blocking",
        sql: include_str!("../../migrations/postgres/0003_blocking.sql"),
    },
    Migration {
        version: 4,
        name: "pep",
        sql: include_str!("../../migrations/postgres/0004_pep.sql"),
    },
    Migration {
        version: 5,
        name: "vcard_private_push",
        sql: include_str!("../../migrations/postgres/0005_vcard_private_push.sql"),
    },
    Migration {
        version: 6,
        name: "fast",
        sql: include_str!("../../migrations/postgres/0006_fast.sql"),
    },
    Migration {
        version: 7,
        name: "upload",
        sql: include_str!("../../migrations/postgres/0007_upload.sql"),
    },
    Migration {
        version: 8,
        name: "muc",
        sql: include_str!("../../migrations/postgres/0008_muc.sql"),
    },
];

/// Arbitrary constant key for `pg_advisory_lock` ("starling" in ASCII, truncated).
const PG_LOCK_KEY: i64 = 0x5354_4152_4c49_4e47;

fn err(version: i64, name: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Migrate(format!("{version:04}_{name}: {e}"))
}

pub(super) async fn run(db: &Db) -> Result<(), StorageError> {
    check_sorted(SQLITE)?;
    check_sorted(POSTGRES)?;
    match db {
        Db::Sqlite(pool) => {
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version    INTEGER PRIMARY KEY,
                     applied_at INTEGER NOT NULL
                 )",
            )
            .execute(pool)
            .await
            .map_err(|e| err(0, "schema_migrations", e))?;
            for m in SQLITE {
                let mut tx = pool
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(|e| err(m.version, m.name, e))?;
                let applied: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = ?")
                        .bind(m.version)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(|e| err(m.version, m.name, e))?;
                if applied.is_some() {
                    continue; // dropping tx rolls back
                }
                tx.execute(m.sql)
                    .await
                    .map_err(|e| err(m.version, m.name, e))?;
                sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)")
                    .bind(m.version)
                    .bind(now_unix())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| err(m.version, m.name, e))?;
                tx.commit().await.map_err(|e| err(m.version, m.name, e))?;
            }
            Ok(())
        }
        Db::Postgres(pool) => {
            // Detached: if anything fails, the connection is closed on drop, which also
            // releases the session advisory lock (it never goes back into the pool).
            let mut conn = pool
                .acquire()
                .await
                .map_err(|e| err(0, "connect", e))?
                .detach();
            let result = run_postgres(&mut conn).await;
            if result.is_ok() {
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(PG_LOCK_KEY)
                    .execute(&mut conn)
                    .await;
            }
            let _ = conn.close().await;
            result
        }
    }
}

async fn run_postgres(conn: &mut sqlx::PgConnection) -> Result<(), StorageError> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(PG_LOCK_KEY)
        .execute(&mut *conn)
        .await
        .map_err(|e| err(0, "advisory lock", e))?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    BIGINT PRIMARY KEY,
             applied_at BIGINT NOT NULL
         )",
    )
    .execute(&mut *conn)
    .await
    .map_err(|e| err(0, "schema_migrations", e))?;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations")
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| err(0, "schema_migrations", e))?;
    for m in POSTGRES {
        if applied.contains(&m.version) {
            continue;
        }
        let mut tx = conn.begin().await.map_err(|e| err(m.version, m.name, e))?;
        tx.execute(m.sql)
            .await
            .map_err(|e| err(m.version, m.name, e))?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(m.version)
            .bind(now_unix())
            .execute(&mut *tx)
            .await
            .map_err(|e| err(m.version, m.name, e))?;
        tx.commit().await.map_err(|e| err(m.version, m.name, e))?;
    }
    Ok(())
}

fn check_sorted(ms: &[Migration]) -> Result<(), StorageError> {
    if ms.windows(2).all(|w| w[0].version < w[1].version) {
        Ok(())
    } else {
        Err(StorageError::Migrate(
            "embedded migrations are not strictly ordered".into(),
        ))
    }
}
