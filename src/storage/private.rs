//! XEP-0049 private XML storage: one element per (account, namespace, element name).

use super::{Db, Storage, StorageError, UserRef};

pub struct PrivateXml<'a> {
    pub(super) s: &'a Storage,
}

impl PrivateXml<'_> {
    /// The stored element for (namespace, name), serialized.
    pub async fn get(
        &self,
        u: UserRef<'_>,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, StorageError> {
        let (domain, username) = u;
        Ok(match &self.s.db {
            Db::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT p.xml FROM private_xml p JOIN accounts a ON a.id = p.account_id
                     WHERE a.domain = ? AND a.username = ? AND p.namespace = ? AND p.name = ?",
                )
                .bind(domain)
                .bind(username)
                .bind(namespace)
                .bind(name)
                .fetch_optional(pool)
                .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT p.xml FROM private_xml p JOIN accounts a ON a.id = p.account_id
                     WHERE a.domain = $1 AND a.username = $2 AND p.namespace = $3 AND p.name = $4",
                )
                .bind(domain)
                .bind(username)
                .bind(namespace)
                .bind(name)
                .fetch_optional(pool)
                .await?
            }
        })
    }

    /// Store (or replace) the element for (namespace, name). Ok(false) when it is new and the
    /// account already stores `max_entries` elements (nothing stored); Err(NoAccount) when
    /// the account does not exist.
    pub async fn set(
        &self,
        u: UserRef<'_>,
        namespace: &str,
        name: &str,
        xml: &str,
        max_entries: u32,
    ) -> Result<bool, StorageError> {
        let (domain, username) = u;
        let max = i64::from(max_entries);
        let n = match &self.s.db {
            Db::Sqlite(pool) => sqlx::query(
                "INSERT INTO private_xml (account_id, namespace, name, xml)
                 SELECT a.id, ?1, ?2, ?3 FROM accounts a WHERE a.domain = ?4 AND a.username = ?5
                   AND ((SELECT COUNT(*) FROM private_xml p WHERE p.account_id = a.id) < ?6
                        OR EXISTS (SELECT 1 FROM private_xml p WHERE p.account_id = a.id
                                   AND p.namespace = ?1 AND p.name = ?2))
                 ON CONFLICT (account_id, namespace, name) DO UPDATE SET xml = excluded.xml",
            )
            .bind(namespace)
            .bind(name)
            .bind(xml)
            .bind(domain)
            .bind(username)
            .bind(max)
            .execute(pool)
            .await?
            .rows_affected(),
            Db::Postgres(pool) => sqlx::query(
                "INSERT INTO private_xml (account_id, namespace, name, xml)
                 SELECT a.id, $1, $2, $3 FROM accounts a WHERE a.domain = $4 AND a.username = $5
                   AND ((SELECT COUNT(*) FROM private_xml p WHERE p.account_id = a.id) < $6
                        OR EXISTS (SELECT 1 FROM private_xml p WHERE p.account_id = a.id
                                   AND p.namespace = $1 AND p.name = $2))
                 ON CONFLICT (account_id, namespace, name) DO UPDATE SET xml = excluded.xml",
            )
            .bind(namespace)
            .bind(name)
            .bind(xml)
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
}
