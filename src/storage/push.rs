//! XEP-0357 push registrations: (account, push service JID, node) with the publish-options
//! form given at enable time. Persisted so notifications work while the user is offline and
//! across restarts.

use super::{col, now_unix, Db, Storage, StorageError, UserRef};

pub struct PushRegistrations<'a> {
    pub(super) s: &'a Storage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRegistration {
    /// The XMPP Push Service (App Server) JID, normalized.
    pub service: String,
    pub node: String,
    /// The serialized `http://jabber.org/protocol/pubsub#publish-options` form, if any.
    pub options: Option<String>,
}

impl PushRegistrations<'_> {
    /// Enable (or, for an existing service and node, update the options of) a registration.
    /// Ok(false) when it is new and the account already has `max` registrations;
    /// Err(NoAccount) when the account does not exist.
    pub async fn enable(
        &self,
        u: UserRef<'_>,
        r: &PushRegistration,
        max: u32,
    ) -> Result<bool, StorageError> {
        let (domain, username) = u;
        let max = i64::from(max);
        let n = match &self.s.db {
            Db::Sqlite(pool) => sqlx::query(
                "INSERT INTO push_registrations (account_id, service, node, options, created_at)
                 SELECT a.id, ?1, ?2, ?3, ?4 FROM accounts a WHERE a.domain = ?5 AND a.username = ?6
                   AND ((SELECT COUNT(*) FROM push_registrations p WHERE p.account_id = a.id) < ?7
                        OR EXISTS (SELECT 1 FROM push_registrations p WHERE p.account_id = a.id
                                   AND p.service = ?1 AND p.node = ?2))
                 ON CONFLICT (account_id, service, node) DO UPDATE SET options = excluded.options",
            )
            .bind(&r.service)
            .bind(&r.node)
            .bind(&r.options)
            .bind(now_unix())
            .bind(domain)
            .bind(username)
            .bind(max)
            .execute(pool)
            .await?
            .rows_affected(),
            Db::Postgres(pool) => sqlx::query(
                "INSERT INTO push_registrations (account_id, service, node, options, created_at)
                 SELECT a.id, $1, $2, $3, $4 FROM accounts a WHERE a.domain = $5 AND a.username = $6
                   AND ((SELECT COUNT(*) FROM push_registrations p WHERE p.account_id = a.id) < $7
                        OR EXISTS (SELECT 1 FROM push_registrations p WHERE p.account_id = a.id
                                   AND p.service = $1 AND p.node = $2))
                 ON CONFLICT (account_id, service, node) DO UPDATE SET options = excluded.options",
            )
            .bind(&r.service)
            .bind(&r.node)
            .bind(&r.options)
            .bind(now_unix())
            .bind(domain)
            .bind(username)
            .bind(max)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        if n > 0 {
            Ok(true)
        } else if self.s.accounts().exists(u).await? {
            Ok(false)
        } else {
            Err(StorageError::NoAccount)
        }
    }

    /// Remove the registrations for `service` (only `node` when given); returns how many.
    pub async fn disable(
        &self,
        u: UserRef<'_>,
        service: &str,
        node: Option<&str>,
    ) -> Result<u64, StorageError> {
        let (domain, username) = u;
        Ok(match &self.s.db {
            Db::Sqlite(pool) => sqlx::query(
                "DELETE FROM push_registrations
                 WHERE account_id = (SELECT id FROM accounts WHERE domain = ? AND username = ?)
                   AND service = ? AND (? IS NULL OR node = ?)",
            )
            .bind(domain)
            .bind(username)
            .bind(service)
            .bind(node)
            .bind(node)
            .execute(pool)
            .await?
            .rows_affected(),
            Db::Postgres(pool) => sqlx::query(
                "DELETE FROM push_registrations
                 WHERE account_id = (SELECT id FROM accounts WHERE domain = $1 AND username = $2)
                   AND service = $3 AND ($4::TEXT IS NULL OR node = $4)",
            )
            .bind(domain)
            .bind(username)
            .bind(service)
            .bind(node)
            .execute(pool)
            .await?
            .rows_affected(),
        })
    }

    /// The account's registrations, ordered by service and node.
    pub async fn list(&self, u: UserRef<'_>) -> Result<Vec<PushRegistration>, StorageError> {
        let (domain, username) = u;
        let rows = match &self.s.db {
            Db::Sqlite(pool) => sqlx::query(
                "SELECT p.service, p.node, p.options
                 FROM push_registrations p JOIN accounts a ON a.id = p.account_id
                 WHERE a.domain = ? AND a.username = ? ORDER BY p.service, p.node",
            )
            .bind(domain)
            .bind(username)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok(PushRegistration {
                    service: col(r, 0)?,
                    node: col(r, 1)?,
                    options: col(r, 2)?,
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()?,
            Db::Postgres(pool) => sqlx::query(
                "SELECT p.service, p.node, p.options
                 FROM push_registrations p JOIN accounts a ON a.id = p.account_id
                 WHERE a.domain = $1 AND a.username = $2 ORDER BY p.service, p.node",
            )
            .bind(domain)
            .bind(username)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok(PushRegistration {
                    service: col(r, 0)?,
                    node: col(r, 1)?,
                    options: col(r, 2)?,
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()?,
        };
        Ok(rows)
    }
}
