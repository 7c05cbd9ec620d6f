//! XEP-0484 FAST tokens at rest: generation, sealing and opening.
//!
//! Why sealed and not hashed: the HT-* mechanisms are an HMAC keyed with the token itself, so
//! the server needs the token to check a login; a one-way hash would not do. Tokens are
//! therefore encrypted with ChaCha20-Poly1305 under a 256-bit key kept in
//! `<data_dir>/fast.key` (created with mode 0600 the first time a token is needed; deleting it
//! invalidates every token). The associated data binds each sealed token to its account and
//! client id, so rows cannot be swapped between users.
//!
//! Threat model: a leaked database alone (a backup, a PostgreSQL replica, a read-only SQL
//! injection) yields no usable token. Someone who reads both the database and the key file
//! can log in as any user holding a token until it expires or is revoked (password change,
//! account deletion, `starling revoke-tokens`), exactly as with any server-side session
//! secret; keep data_dir private. Tokens never appear in logs.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Random bytes per token (base64url-encoded on the wire; the encoded string is the HMAC key).
const TOKEN_BYTES: usize = 32;
const KEY_FILE: &str = "fast.key";

/// The token-sealing key, loaded (or created) on first use.
pub struct TokenKeys {
    dir: PathBuf,
    key: OnceLock<Option<LessSafeKey>>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys").field("dir", &self.dir).finish()
    }
}

impl TokenKeys {
    pub fn new(data_dir: &Path) -> TokenKeys {
        TokenKeys {
            dir: data_dir.to_path_buf(),
            key: OnceLock::new(),
        }
    }

    /// The key, or None when it cannot be read or created (FAST is then not offered; the
    /// reason is logged once).
    pub fn key(&self) -> Option<&LessSafeKey> {
        self.key
            .get_or_init(|| match load_or_create(&self.dir.join(KEY_FILE)) {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::error!(error = %e, "FAST token key unavailable; FAST disabled");
                    None
                }
            })
            .as_ref()
    }
}

fn load_or_create(path: &Path) -> std::io::Result<LessSafeKey> {
    let bytes = crate::keyfile::load_or_create(path)?;
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a ChaCha20-Poly1305 key",
        )
    })?;
    Ok(LessSafeKey::new(unbound))
}

/// A new token as sent to the client (its UTF-8 bytes are the HMAC key).
pub fn new_token() -> String {
    let raw: [u8; TOKEN_BYTES] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Associated data: the token belongs to this account and client.
fn aad(domain: &str, user: &str, client_id: &str) -> Vec<u8> {
    [domain, user, client_id].join("\0").into_bytes()
}

/// nonce || ciphertext || tag.
pub fn seal(key: &LessSafeKey, domain: &str, user: &str, client_id: &str, token: &str) -> Vec<u8> {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let mut buf = token.as_bytes().to_vec();
    let ad = aad(domain, user, client_id);
    // Sealing in memory cannot fail for inputs this small.
    if key
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&ad),
            &mut buf,
        )
        .is_err()
    {
        return Vec::new();
    }
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    out
}

/// The token, or None when the row was tampered with, moved, or sealed under another key.
pub fn open(
    key: &LessSafeKey,
    domain: &str,
    user: &str,
    client_id: &str,
    sealed: &[u8],
) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (n, ct) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(n).ok()?;
    let mut buf = ct.to_vec();
    let ad = aad(domain, user, client_id);
    let plain = key.open_in_place(nonce, Aad::from(&ad), &mut buf).ok()?;
    Some(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_binding() {
        let dir = tempfile::tempdir().unwrap();
        let keys = TokenKeys::new(dir.path());
        let key = keys.key().unwrap();
        let t = new_token();
        assert_eq!(t.len(), 43);
        let sealed = seal(key, "d", "alice", "c1", &t);
        assert!(!sealed.windows(t.len()).any(|w| w == t.as_bytes()));
        assert_eq!(
            open(key, "d", "alice", "c1", &sealed).as_deref(),
            Some(t.as_bytes())
        );
        assert_eq!(open(key, "d", "bob", "c1", &sealed), None);
        assert_eq!(open(key, "d", "alice", "c2", &sealed), None);
        let mut tampered = sealed.clone();
        if let Some(b) = tampered.last_mut() {
            *b ^= 1;
        }
        assert_eq!(open(key, "d", "alice", "c1", &tampered), None);
        assert_eq!(open(key, "d", "alice", "c1", b"short"), None);

        // The key survives a restart and is private to its owner.
        let again = TokenKeys::new(dir.path());
        assert!(open(again.key().unwrap(), "d", "alice", "c1", &sealed).is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn bad_key_file_disables_fast() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), b"too short").unwrap();
        assert!(TokenKeys::new(dir.path()).key().is_none());
    }
}
