//! The upload URLs' signatures. A 256-bit HMAC-SHA-256 key lives in `<data_dir>/upload.key`
//! (created with mode 0600 on first start, like the FAST key; deleting it invalidates every
//! URL issued, stored files included).
//!
//! Two signatures:
//! - The slot segment of every URL is `<id><mac>`: a random 128-bit id and a MAC over it, so
//!   a URL the server never issued (guessed, or an id read from a database backup) is
//!   refused before any lookup.
//! - The PUT URL carries `?token=<mac>` over everything the slot promised (id, file name,
//!   size, type, expiry, owner). Only the slot's requester received it, so only they can
//!   upload; the GET URL, which is shared, cannot be turned into a PUT URL.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;

const KEY_FILE: &str = "upload.key";
/// Random bytes in a slot id.
const ID_BYTES: usize = 16;
/// Length of the base64url slot id.
pub const ID_LEN: usize = 22;
/// MAC bytes kept in the slot segment (128 bits).
const SEGMENT_MAC_BYTES: usize = 16;

pub struct UploadKey([u8; 32]);

impl std::fmt::Debug for UploadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UploadKey(***)")
    }
}

/// What a PUT token covers.
pub struct PutClaims<'a> {
    pub slot_id: &'a str,
    pub filename: &'a str,
    pub size: i64,
    pub content_type: Option<&'a str>,
    pub expires_at: i64,
    pub owner: &'a str,
}

impl UploadKey {
    /// Read `<data_dir>/upload.key`, creating it when missing.
    pub fn load(data_dir: &Path) -> std::io::Result<UploadKey> {
        let key = crate::keyfile::load_or_create(&data_dir.join(KEY_FILE))?;
        Ok(UploadKey(key))
    }

    #[cfg(test)]
    pub fn from_bytes(key: [u8; 32]) -> UploadKey {
        UploadKey(key)
    }

    fn mac(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        for p in parts {
            // Length-prefixed, so field boundaries cannot be shifted.
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        m
    }

    /// A fresh slot id and its URL segment.
    pub fn new_slot(&self) -> (String, String) {
        let raw: [u8; ID_BYTES] = rand::random();
        let id = URL_SAFE_NO_PAD.encode(raw);
        let segment = self.segment(&id);
        (id, segment)
    }

    fn segment(&self, id: &str) -> String {
        let tag = self.mac(&[b"slot", id.as_bytes()]).finalize().into_bytes();
        format!("{id}{}", URL_SAFE_NO_PAD.encode(&tag[..SEGMENT_MAC_BYTES]))
    }

    /// The slot id of a URL segment this key issued, or None.
    pub fn open_segment(&self, segment: &str) -> Option<String> {
        if segment.len() <= ID_LEN || !segment.is_ascii() {
            return None;
        }
        let (id, tag) = segment.split_at(ID_LEN);
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if tag.len() != SEGMENT_MAC_BYTES {
            return None;
        }
        self.mac(&[b"slot", id.as_bytes()])
            .verify_truncated_left(&tag)
            .ok()?;
        Some(id.to_string())
    }

    fn put_mac(&self, c: &PutClaims<'_>) -> Hmac<Sha256> {
        self.mac(&[
            b"put",
            c.slot_id.as_bytes(),
            c.filename.as_bytes(),
            &c.size.to_be_bytes(),
            c.content_type.unwrap_or("").as_bytes(),
            &c.expires_at.to_be_bytes(),
            c.owner.as_bytes(),
        ])
    }

    pub fn put_token(&self, c: &PutClaims<'_>) -> String {
        URL_SAFE_NO_PAD.encode(self.put_mac(c).finalize().into_bytes())
    }

    /// Constant-time check of a PUT token.
    pub fn verify_put(&self, c: &PutClaims<'_>, token: &str) -> bool {
        match URL_SAFE_NO_PAD.decode(token) {
            Ok(tag) => self.put_mac(c).verify_slice(&tag).is_ok(),
            Err(_) => false,
        }
    }
}

/// True for names the upload dir's files can have (`<id>` or `<id>.part`).
pub fn slot_file_id(name: &str) -> Option<&str> {
    let id = name.strip_suffix(".part").unwrap_or(name);
    (id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(size: i64) -> PutClaims<'static> {
        PutClaims {
            slot_id: "abc",
            filename: "a.jpg",
            size,
            content_type: Some("image/jpeg"),
            expires_at: 1000,
            owner: "alice@example.org",
        }
    }

    #[test]
    fn segments_and_tokens() {
        let k = UploadKey::from_bytes([7; 32]);
        let (id, seg) = k.new_slot();
        assert_eq!(id.len(), ID_LEN);
        assert_eq!(k.open_segment(&seg).as_deref(), Some(id.as_str()));
        assert_eq!(slot_file_id(&format!("{id}.part")), Some(id.as_str()));
        // One flipped character anywhere, or another key: refused.
        let mut bad = seg.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert!(k.open_segment(std::str::from_utf8(&bad).unwrap()).is_none());
        assert!(UploadKey::from_bytes([8; 32]).open_segment(&seg).is_none());
        assert!(k.open_segment(&id).is_none());
        assert!(k.open_segment("é").is_none());

        let t = k.put_token(&claims(5));
        assert!(k.verify_put(&claims(5), &t));
        assert!(!k.verify_put(&claims(6), &t));
        assert!(!k.verify_put(&claims(5), "nope"));
    }

    #[test]
    fn key_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = UploadKey::load(dir.path()).unwrap();
        let b = UploadKey::load(dir.path()).unwrap();
        assert_eq!(a.0, b.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        assert!(UploadKey::load(dir.path()).is_err());
    }
}
