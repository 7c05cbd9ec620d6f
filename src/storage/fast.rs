//! XEP-0484 FAST tokens: two slots per (account, client id), 'new' (issued, not used yet)
//! and 'current' (the last one the client authenticated with), as the XEP's implementation
//! notes (§6.1) suggest. Tokens are stored sealed (see `crate::fast`); this module never sees
//! them in the clear. Deleting an account drops its tokens by `ON DELETE CASCADE`; changing
//! the password drops them in the same transaction (`Accounts::set_credentials`).

use super::{col, now_unix, Db, Storage, StorageError, UserRef};

/// Which of a client's two token slots a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The token the client last authenticated with.
    Current,
    /// Issued in a `<success/>`, not used yet.
    New,
}

impl Slot {
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Current => "current",
            Slot::New => "new",
        }
    }
    fn parse(s: &str) -> Result<Slot, StorageError> {
        match s {
            "current" => Ok(Slot::Current),
            "new" => Ok(Slot::New),
            _ => Err(super::corrupt(format!("unknown FAST slot {s:?}"))),
        }
    }
}

/// One stored token (sealed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastToken {
    pub slot: Slot,
    pub mechanism: String,
    pub sealed: Vec<u8>,
    /// Unix seconds.
    pub expires_at: i64,
    /// The highest `<fast count=…/>` accepted with this token.
    pub last_count: Option<i64>,
}

pub struct Fast<'a> {
    pub(super) s: &'a Storage,
}

const ACCOUNT_SQLITE: &str = "(SELECT id FROM accounts WHERE domain = ? AND username = ?)";
const ACCOUNT_PG: &str = "(SELECT id FROM accounts WHERE domain = $1 AND username = $2)";

impl Storage {
    pub fn fast(&self) -> Fast<'_> {
        Fast { s: self }
    }
}

impl Fast<'_> {
    /// Store a freshly issued token in the client's 'new' slot (an unused earlier one is
    /// replaced: XEP-0484 §4.5 "SHOULD invalidate any tokens previously generated that have
    /// not been used"). Expired rows of the account are dropped, and beyond `max_clients`
    /// clients the ones whose tokens expire first are forgotten, so the table stays bounded
    /// however many client ids an account invents. Err(NoAccount) when the account is gone.
    pub async fn issue(
        &self,
        u: UserRef<'_>,
        client_id: &str,
        mechanism: &str,
        sealed: &[u8],
        expires_at: i64,
        max_clients: usize,
    ) -> Result<(), StorageError> {
        let (domain, username) = u;
        let now = now_unix();
        let keep = i64::try_from(max_clients.max(1)).unwrap_or(i64::MAX);
        match &self.s.db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let id: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM accounts WHERE domain = ? AND username = ?")
                        .bind(domain)
                        .bind(username)
                        .fetch_optional(&mut *tx)
                        .await?;
                let id = id.ok_or(StorageError::NoAccount)?;
                sqlx::query(
                    "INSERT INTO fast_tokens
                         (account_id, client_id, slot, mechanism, sealed, expires_at, last_count)
                     VALUES (?, ?, 'new', ?, ?, ?, NULL)
                     ON CONFLICT (account_id, client_id, slot) DO UPDATE SET
                         mechanism = excluded.mechanism, sealed = excluded.sealed,
                         expires_at = excluded.expires_at, last_count = NULL",
                )
                .bind(id)
                .bind(client_id)
                .bind(mechanism)
                .bind(sealed)
                .bind(expires_at)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM fast_tokens WHERE account_id = ? AND expires_at <= ?")
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "DELETE FROM fast_tokens WHERE account_id = ? AND client_id IN (
                         SELECT client_id FROM fast_tokens WHERE account_id = ?
                         GROUP BY client_id ORDER BY MAX(expires_at) DESC LIMIT -1 OFFSET ?)",
                )
                .bind(id)
                .bind(id)
                .bind(keep)
                .execute(&mut *tx)
                .await?;
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
                let id = id.ok_or(StorageError::NoAccount)?;
                sqlx::query(
                    "INSERT INTO fast_tokens
                         (account_id, client_id, slot, mechanism, sealed, expires_at, last_count)
                     VALUES ($1, $2, 'new', $3, $4, $5, NULL)
                     ON CONFLICT (account_id, client_id, slot) DO UPDATE SET
                         mechanism = EXCLUDED.mechanism, sealed = EXCLUDED.sealed,
                         expires_at = EXCLUDED.expires_at, last_count = NULL",
                )
                .bind(id)
                .bind(client_id)
                .bind(mechanism)
                .bind(sealed)
                .bind(expires_at)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM fast_tokens WHERE account_id = $1 AND expires_at <= $2")
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "DELETE FROM fast_tokens WHERE account_id = $1 AND client_id IN (
                         SELECT client_id FROM fast_tokens WHERE account_id = $1
                         GROUP BY client_id ORDER BY MAX(expires_at) DESC OFFSET $2)",
                )
                .bind(id)
                .bind(keep)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The client's tokens, 'new' first (the order XEP-0484 §6.1 checks them in).
    pub async fn tokens(
        &self,
        u: UserRef<'_>,
        client_id: &str,
    ) -> Result<Vec<FastToken>, StorageError> {
        let (domain, username) = u;
        let cols = "slot, mechanism, sealed, expires_at, last_count";
        let mut out = Vec::new();
        match &self.s.db {
            Db::Sqlite(pool) => {
                let rows = sqlx::query(&format!(
                    "SELECT {cols} FROM fast_tokens
                     WHERE account_id = {ACCOUNT_SQLITE} AND client_id = ? ORDER BY slot DESC"
                ))
                .bind(domain)
                .bind(username)
                .bind(client_id)
                .fetch_all(pool)
                .await?;
                for r in &rows {
                    out.push(FastToken {
                        slot: Slot::parse(&col::<_, String>(r, 0)?)?,
                        mechanism: col(r, 1)?,
                        sealed: col(r, 2)?,
                        expires_at: col(r, 3)?,
                        last_count: col(r, 4)?,
                    });
                }
            }
            Db::Postgres(pool) => {
                let rows = sqlx::query(&format!(
                    "SELECT {cols} FROM fast_tokens
                     WHERE account_id = {ACCOUNT_PG} AND client_id = $3 ORDER BY slot DESC"
                ))
                .bind(domain)
                .bind(username)
                .bind(client_id)
                .fetch_all(pool)
                .await?;
                for r in &rows {
                    out.push(FastToken {
                        slot: Slot::parse(&col::<_, String>(r, 0)?)?,
                        mechanism: col(r, 1)?,
                        sealed: col(r, 2)?,
                        expires_at: col(r, 3)?,
                        last_count: col(r, 4)?,
                    });
                }
            }
        }
        Ok(out)
    }

    /// A successful authentication with the token in `slot`. With a `count`, it must exceed
    /// every count accepted for this token before (replay protection, XEP-0484 §4.4): Ok(false)
    /// when it does not, and nothing changes. A 'new' token becomes 'current', replacing the
    /// older one (§4.5: earlier tokens die once a later one is used).
    pub async fn used(
        &self,
        u: UserRef<'_>,
        client_id: &str,
        slot: Slot,
        count: Option<i64>,
    ) -> Result<bool, StorageError> {
        let (domain, username) = u;
        match &self.s.db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                if let Some(c) = count {
                    let n = sqlx::query(&format!(
                        "UPDATE fast_tokens SET last_count = ?
                         WHERE account_id = {ACCOUNT_SQLITE} AND client_id = ? AND slot = ?
                           AND (last_count IS NULL OR last_count < ?)"
                    ))
                    .bind(c)
                    .bind(domain)
                    .bind(username)
                    .bind(client_id)
                    .bind(slot.as_str())
                    .bind(c)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n == 0 {
                        return Ok(false);
                    }
                }
                if slot == Slot::New {
                    for sql in [
                        "DELETE FROM fast_tokens WHERE account_id = {A} AND client_id = ? AND slot = 'current'",
                        "UPDATE fast_tokens SET slot = 'current' WHERE account_id = {A} AND client_id = ? AND slot = 'new'",
                    ] {
                        sqlx::query(&sql.replace("{A}", ACCOUNT_SQLITE))
                            .bind(domain)
                            .bind(username)
                            .bind(client_id)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                if let Some(c) = count {
                    let n = sqlx::query(&format!(
                        "UPDATE fast_tokens SET last_count = $4
                         WHERE account_id = {ACCOUNT_PG} AND client_id = $3 AND slot = $5
                           AND (last_count IS NULL OR last_count < $4)"
                    ))
                    .bind(domain)
                    .bind(username)
                    .bind(client_id)
                    .bind(c)
                    .bind(slot.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n == 0 {
                        return Ok(false);
                    }
                }
                if slot == Slot::New {
                    for sql in [
                        "DELETE FROM fast_tokens WHERE account_id = {A} AND client_id = $3 AND slot = 'current'",
                        "UPDATE fast_tokens SET slot = 'current' WHERE account_id = {A} AND client_id = $3 AND slot = 'new'",
                    ] {
                        sqlx::query(&sql.replace("{A}", ACCOUNT_PG))
                            .bind(domain)
                            .bind(username)
                            .bind(client_id)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await?;
            }
        }
        Ok(true)
    }

    /// Forget every token of one client (`<fast invalidate='true'/>`). Returns rows removed.
    pub async fn invalidate(&self, u: UserRef<'_>, client_id: &str) -> Result<u64, StorageError> {
        let (domain, username) = u;
        let n = match &self.s.db {
            Db::Sqlite(pool) => sqlx::query(&format!(
                "DELETE FROM fast_tokens WHERE account_id = {ACCOUNT_SQLITE} AND client_id = ?"
            ))
            .bind(domain)
            .bind(username)
            .bind(client_id)
            .execute(pool)
            .await?
            .rows_affected(),
            Db::Postgres(pool) => sqlx::query(&format!(
                "DELETE FROM fast_tokens WHERE account_id = {ACCOUNT_PG} AND client_id = $3"
            ))
            .bind(domain)
            .bind(username)
            .bind(client_id)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(n)
    }

    /// Forget every token of an account (admin revocation). Returns rows removed.
    pub async fn revoke_all(&self, u: UserRef<'_>) -> Result<u64, StorageError> {
        let (domain, username) = u;
        let n = match &self.s.db {
            Db::Sqlite(pool) => sqlx::query(&format!(
                "DELETE FROM fast_tokens WHERE account_id = {ACCOUNT_SQLITE}"
            ))
            .bind(domain)
            .bind(username)
            .execute(pool)
            .await?
            .rows_affected(),
            Db::Postgres(pool) => sqlx::query(&format!(
                "DELETE FROM fast_tokens WHERE account_id = {ACCOUNT_PG}"
            ))
            .bind(domain)
            .bind(username)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(n)
    }
}
