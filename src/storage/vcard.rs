//! XEP-0054 vCards, one per account, replaced whole on every set. The XEP-0153 photo hash
//! is computed by the handler and stored next to the vCard so avatar consumers (XEP-0153
//! presence updates, XEP-0398 PEP/vCard conversion) read it without parsing the vCard.

use super::{col, now_unix, Db, Storage, StorageError, UserRef};

pub struct VCards<'a> {
    pub(super) s: &'a Storage,
}

/// A stored vCard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVCard {
    /// The serialized `<vCard xmlns='vcard-temp'/>` element as the user set it.
    pub xml: String,
    /// Lower-case hex SHA-1 of the decoded PHOTO/BINVAL (XEP-0153 §4.1), if there is a photo.
    pub photo_hash: Option<String>,
}

impl VCards<'_> {
    pub async fn get(&self, u: UserRef<'_>) -> Result<Option<StoredVCard>, StorageError> {
        let (domain, username) = u;
        let row: Option<(String, Option<String>)> = match &self.s.db {
            Db::Sqlite(pool) => sqlx::query(
                "SELECT v.vcard, v.photo_hash FROM vcards v JOIN accounts a ON a.id = v.account_id
                     WHERE a.domain = ? AND a.username = ?",
            )
            .bind(domain)
            .bind(username)
            .fetch_optional(pool)
            .await?
            .map(|r| Ok::<_, StorageError>((col(&r, 0)?, col(&r, 1)?)))
            .transpose()?,
            Db::Postgres(pool) => sqlx::query(
                "SELECT v.vcard, v.photo_hash FROM vcards v JOIN accounts a ON a.id = v.account_id
                     WHERE a.domain = $1 AND a.username = $2",
            )
            .bind(domain)
            .bind(username)
            .fetch_optional(pool)
            .await?
            .map(|r| Ok::<_, StorageError>((col(&r, 0)?, col(&r, 1)?)))
            .transpose()?,
        };
        Ok(row.map(|(xml, photo_hash)| StoredVCard { xml, photo_hash }))
    }

    /// Replace the account's vCard. Err(NoAccount) when the account does not exist.
    pub async fn set(&self, u: UserRef<'_>, v: &StoredVCard) -> Result<(), StorageError> {
        let (domain, username) = u;
        let n = match &self.s.db {
            Db::Sqlite(pool) => sqlx::query(
                "INSERT INTO vcards (account_id, vcard, photo_hash, updated_at)
                 SELECT id, ?, ?, ? FROM accounts WHERE domain = ? AND username = ?
                 ON CONFLICT (account_id) DO UPDATE
                 SET vcard = excluded.vcard, photo_hash = excluded.photo_hash,
                     updated_at = excluded.updated_at",
            )
            .bind(&v.xml)
            .bind(&v.photo_hash)
            .bind(now_unix())
            .bind(domain)
            .bind(username)
            .execute(pool)
            .await?
            .rows_affected(),
            Db::Postgres(pool) => sqlx::query(
                "INSERT INTO vcards (account_id, vcard, photo_hash, updated_at)
                 SELECT id, $1, $2, $3 FROM accounts WHERE domain = $4 AND username = $5
                 ON CONFLICT (account_id) DO UPDATE
                 SET vcard = excluded.vcard, photo_hash = excluded.photo_hash,
                     updated_at = excluded.updated_at",
            )
            .bind(&v.xml)
            .bind(&v.photo_hash)
            .bind(now_unix())
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

    /// The XEP-0153 photo hash alone: Ok(None) when there is no vCard or it has no photo.
    pub async fn photo_hash(&self, u: UserRef<'_>) -> Result<Option<String>, StorageError> {
        Ok(self.get(u).await?.and_then(|v| v.photo_hash))
    }
}
