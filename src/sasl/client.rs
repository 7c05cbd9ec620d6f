//! Minimal SCRAM client (RFC 5802), for the server's own tests and benchmarks.
//!
//! Stateless functions:
//! ```text
//! let gs2 = gs2_header(&ClientBinding::None, None);            // "n,,"
//! let first = client_first("user", &random_nonce(), &gs2)?;     // "n,,n=user,r=..."
//! let (fin, server_sig) = client_final(alg, "pencil", &first, &server_first, &[])?;
//! verify_server_final(&server_sig, &server_final)?;
//! ```
//! or the [`ScramClient`] wrapper which keeps that state. A [`ScramKeyCache`] shared by many
//! [`ScramClient`]s lets repeated logins of one account skip PBKDF2.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::crypto::{self, b64_encode, ct_eq, malformed};
use super::scram::{
    encode_saslname, parse_client_first, parse_server_first, ClientFirst, ServerFirst,
};
use super::{saslprep, HashAlg, SaslError};

/// Highest iteration count the client accepts from a server (DoS guard).
pub const MAX_CLIENT_ITERATIONS: u32 = 10_000_000;

/// The client's channel-binding choice (GS2 cbind-flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientBinding {
    /// "n": client does not support channel binding.
    None,
    /// "y": client supports channel binding but believes the server does not.
    Unsupported,
    /// "p=<cb_type>": channel binding of this type with this data.
    Plus { cb_type: String, data: Vec<u8> },
}

impl ClientBinding {
    /// The channel-binding data to append in `c=` (empty unless `Plus`).
    pub fn data(&self) -> &[u8] {
        match self {
            ClientBinding::Plus { data, .. } => data,
            _ => &[],
        }
    }
}

/// GS2 header, e.g. `"n,,"`, `"y,,"`, `"p=tls-exporter,a=admin@example.org,"`.
pub fn gs2_header(binding: &ClientBinding, authzid: Option<&str>) -> String {
    let flag = match binding {
        ClientBinding::None => "n".to_string(),
        ClientBinding::Unsupported => "y".to_string(),
        ClientBinding::Plus { cb_type, .. } => format!("p={cb_type}"),
    };
    match authzid {
        Some(a) => format!("{flag},a={},", encode_saslname(a)),
        None => format!("{flag},,"),
    }
}

/// A fresh random client nonce (printable, no ',').
pub fn random_nonce() -> String {
    super::scram::random_nonce()
}

/// client-first-message = gs2_header + "n=" saslname(SASLprep(username)) + ",r=" nonce.
pub fn client_first(username: &str, nonce: &str, gs2_header: &str) -> Result<Vec<u8>, SaslError> {
    let user = saslprep(username)?;
    if user.is_empty() {
        return Err(malformed("empty username"));
    }
    if nonce.is_empty()
        || !nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(malformed("invalid nonce"));
    }
    Ok(format!("{gs2_header}n={},r={nonce}", encode_saslname(&user)).into_bytes())
}

/// Given our client-first-message and the server-first-message, produce the
/// client-final-message and the expected ServerSignature (for [`verify_server_final`]).
/// `cb_data` is the channel-binding data for a `p=` header (ignored otherwise).
pub fn client_final(
    alg: HashAlg,
    password: &str,
    client_first: &[u8],
    server_first: &[u8],
    cb_data: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), SaslError> {
    let (first, sf) = parse_first_messages(client_first, server_first)?;
    let keys = derive_keys(alg, password, &sf.salt, sf.iterations)?;
    final_with_keys(alg, &keys, &first, &sf, server_first, cb_data)
}

/// Parse and check both first messages (before any key derivation: a bad server-first must
/// not cost a PBKDF2 run).
fn parse_first_messages(
    client_first: &[u8],
    server_first: &[u8],
) -> Result<(ClientFirst, ServerFirst), SaslError> {
    let first = parse_client_first(client_first)?;
    let sf = parse_server_first(server_first)?;
    if sf.nonce.len() <= first.nonce.len() || !sf.nonce.starts_with(&first.nonce) {
        return Err(malformed("server nonce does not extend client nonce"));
    }
    if sf.iterations > MAX_CLIENT_ITERATIONS {
        return Err(malformed("iteration count too high"));
    }
    Ok((first, sf))
}

/// SaltedPassword = Hi(SASLprep(password), salt, i), and the keys derived from it: the
/// expensive step of a SCRAM exchange.
fn derive_keys(
    alg: HashAlg,
    password: &str,
    salt: &[u8],
    iterations: u32,
) -> Result<crypto::Keys, SaslError> {
    let password = saslprep(password)?;
    let salted = crypto::hi(alg, password.as_bytes(), salt, iterations);
    crypto::keys_from_salted(alg, &salted)
}

/// client-final-message and expected ServerSignature from already derived keys: only HMACs
/// and a hash.
fn final_with_keys(
    alg: HashAlg,
    keys: &crypto::Keys,
    first: &ClientFirst,
    sf: &ServerFirst,
    server_first: &[u8],
    cb_data: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), SaslError> {
    let mut cbind = first.gs2_header.clone().into_bytes();
    if first.gs2_header.starts_with("p=") {
        cbind.extend_from_slice(cb_data);
    }
    let without_proof = format!("c={},r={}", b64_encode(&cbind), sf.nonce);
    let server_first_s =
        std::str::from_utf8(server_first).map_err(|_| malformed("invalid UTF-8"))?;
    let auth_message = format!("{},{},{}", first.bare, server_first_s, without_proof);
    let client_sig = crypto::hmac(alg, &keys.stored_key, auth_message.as_bytes())?;
    let proof = crypto::xor(&keys.client_key, &client_sig);
    let server_sig = crypto::hmac(alg, &keys.server_key, auth_message.as_bytes())?;
    let msg = format!("{without_proof},p={}", b64_encode(&proof)).into_bytes();
    Ok((msg, server_sig))
}

/// Check server-final-message (`v=<base64>`) against the expected ServerSignature.
/// `e=<error>` or a mismatch yields `NotAuthorized`.
pub fn verify_server_final(server_signature: &[u8], server_final: &[u8]) -> Result<(), SaslError> {
    let s = std::str::from_utf8(server_final).map_err(|_| malformed("invalid UTF-8"))?;
    let v = s.split(',').next().unwrap_or_default();
    if v.starts_with("e=") {
        return Err(SaslError::NotAuthorized);
    }
    let v = v
        .strip_prefix("v=")
        .ok_or_else(|| malformed("missing verifier"))?;
    let sig = crypto::b64_decode(v)?;
    if ct_eq(&sig, server_signature) {
        Ok(())
    } else {
        Err(SaslError::NotAuthorized)
    }
}

/// Identifies one derivation: the same password with the same salt and iteration count
/// always yields the same keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    alg: HashAlg,
    username: String,
    salt: Vec<u8>,
    iterations: u32,
}

/// Derived SCRAM keys (ClientKey, StoredKey, ServerKey) per (hash, username, salt,
/// iteration count), shared by many [`ScramClient`]s so that re-authenticating an account
/// costs a few HMACs instead of a PBKDF2 run. RFC 5802 §5.1 allows exactly this: the server
/// keeps announcing the same salt, so a client may cache ClientKey/ServerKey. A changed
/// salt or iteration count (new password on the server) is a different entry.
///
/// The cache assumes each username's password stays the same while cached (the password is
/// not part of the key, and is not stored). Entries are never evicted: it is meant for
/// tests and load generators with a bounded set of accounts. Two clients missing the same
/// entry at once both derive it; the result is identical.
#[derive(Default)]
pub struct ScramKeyCache {
    entries: Mutex<HashMap<CacheKey, Arc<crypto::Keys>>>,
    derivations: AtomicU64,
}

impl std::fmt::Debug for ScramKeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("ScramKeyCache")
            .field("entries", &self.len())
            .field("derivations", &self.derivations())
            .finish()
    }
}

impl ScramKeyCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of cached derivations.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times PBKDF2 ran through this cache (cache misses).
    pub fn derivations(&self) -> u64 {
        self.derivations.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Arc<crypto::Keys>>> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts).
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, key: &CacheKey) -> Option<Arc<crypto::Keys>> {
        self.lock().get(key).cloned()
    }

    /// The cached keys, or derive (outside the lock) and insert them.
    fn get_or_derive(&self, key: CacheKey, password: &str) -> Result<Arc<crypto::Keys>, SaslError> {
        if let Some(k) = self.get(&key) {
            return Ok(k);
        }
        let keys = Arc::new(derive_keys(key.alg, password, &key.salt, key.iterations)?);
        self.derivations.fetch_add(1, Ordering::Relaxed);
        Ok(self.lock().entry(key).or_insert(keys).clone())
    }
}

/// Stateful convenience wrapper around the functions above.
#[derive(Debug, Clone)]
pub struct ScramClient {
    alg: HashAlg,
    username: String,
    password: String,
    authzid: Option<String>,
    binding: ClientBinding,
    nonce: String,
    client_first: Option<Vec<u8>>,
    server_signature: Option<Vec<u8>>,
    key_cache: Option<Arc<ScramKeyCache>>,
}

impl ScramClient {
    /// New client with a random nonce.
    pub fn new(alg: HashAlg, username: &str, password: &str, binding: ClientBinding) -> Self {
        ScramClient {
            alg,
            username: username.to_string(),
            password: password.to_string(),
            authzid: None,
            binding,
            nonce: random_nonce(),
            client_first: None,
            server_signature: None,
            key_cache: None,
        }
    }
    /// Use a fixed client nonce (test vectors).
    pub fn with_nonce(mut self, nonce: &str) -> Self {
        self.nonce = nonce.to_string();
        self
    }
    /// Request authorization as `authzid` (GS2 `a=`).
    pub fn with_authzid(mut self, authzid: &str) -> Self {
        self.authzid = Some(authzid.to_string());
        self
    }
    /// Take derived keys from `cache` (and add them there): repeated logins of this account
    /// then skip PBKDF2 as long as the server announces the same salt and iteration count.
    pub fn with_key_cache(mut self, cache: Arc<ScramKeyCache>) -> Self {
        self.key_cache = Some(cache);
        self
    }
    /// The client-first-message (initial response).
    pub fn client_first(&mut self) -> Result<Vec<u8>, SaslError> {
        let gs2 = gs2_header(&self.binding, self.authzid.as_deref());
        let msg = client_first(&self.username, &self.nonce, &gs2)?;
        self.client_first = Some(msg.clone());
        Ok(msg)
    }
    /// Answer the server-first-message with the client-final-message.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, SaslError> {
        let client_first = self
            .client_first
            .as_deref()
            .ok_or_else(|| malformed("client_first not sent"))?;
        let (first, sf) = parse_first_messages(client_first, server_first)?;
        let keys = match &self.key_cache {
            Some(cache) => cache.get_or_derive(self.cache_key(&sf), &self.password)?,
            None => Arc::new(derive_keys(
                self.alg,
                &self.password,
                &sf.salt,
                sf.iterations,
            )?),
        };
        let (msg, sig) = final_with_keys(
            self.alg,
            &keys,
            &first,
            &sf,
            server_first,
            self.binding.data(),
        )?;
        self.server_signature = Some(sig);
        Ok(msg)
    }
    /// Whether answering this server-first-message will run PBKDF2 (no cached keys for its
    /// salt and iteration count), so that an async caller can move that call off its I/O
    /// threads. A malformed message reports false: answering it fails without deriving.
    pub fn needs_derivation(&self, server_first: &[u8]) -> bool {
        let Ok(sf) = parse_server_first(server_first) else {
            return false;
        };
        match &self.key_cache {
            Some(cache) => cache.get(&self.cache_key(&sf)).is_none(),
            None => true,
        }
    }
    fn cache_key(&self, sf: &ServerFirst) -> CacheKey {
        CacheKey {
            alg: self.alg,
            username: self.username.clone(),
            salt: sf.salt.clone(),
            iterations: sf.iterations,
        }
    }
    /// Verify the server-final-message (mutual authentication).
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), SaslError> {
        let sig = self
            .server_signature
            .as_deref()
            .ok_or_else(|| malformed("client_final not sent"))?;
        verify_server_final(sig, server_final)
    }
}
