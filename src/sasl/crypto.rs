//! Hash/HMAC/PBKDF2 dispatch over [`HashAlg`], plus small shared helpers.

use super::{HashAlg, SaslError};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

impl HashAlg {
    /// Digest output length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha512 => 64,
        }
    }
}

fn hmac_generic<M: Mac + hmac::digest::KeyInit>(
    key: &[u8],
    data: &[u8],
) -> Result<Vec<u8>, SaslError> {
    let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key)
        .map_err(|_| SaslError::TemporaryAuthFailure)?;
    m.update(data);
    Ok(m.finalize().into_bytes().to_vec())
}

/// HMAC(key, data) with the given hash.
pub(crate) fn hmac(alg: HashAlg, key: &[u8], data: &[u8]) -> Result<Vec<u8>, SaslError> {
    match alg {
        HashAlg::Sha1 => hmac_generic::<Hmac<Sha1>>(key, data),
        HashAlg::Sha256 => hmac_generic::<Hmac<Sha256>>(key, data),
        HashAlg::Sha512 => hmac_generic::<Hmac<Sha512>>(key, data),
    }
}

/// H(data).
pub(crate) fn hash(alg: HashAlg, data: &[u8]) -> Vec<u8> {
    match alg {
        HashAlg::Sha1 => Sha1::digest(data).to_vec(),
        HashAlg::Sha256 => Sha256::digest(data).to_vec(),
        HashAlg::Sha512 => Sha512::digest(data).to_vec(),
    }
}

/// Hi(password, salt, i) = PBKDF2-HMAC-H with output length = hash length.
pub(crate) fn hi(alg: HashAlg, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; alg.output_len()];
    match alg {
        HashAlg::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out),
        HashAlg::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out),
        HashAlg::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out),
    }
    out
}

/// Keys derived from SaltedPassword.
pub(crate) struct Keys {
    pub client_key: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// ClientKey, StoredKey, ServerKey from SaltedPassword (RFC 5802 §3).
pub(crate) fn keys_from_salted(alg: HashAlg, salted: &[u8]) -> Result<Keys, SaslError> {
    let client_key = hmac(alg, salted, b"Client Key")?;
    let stored_key = hash(alg, &client_key);
    let server_key = hmac(alg, salted, b"Server Key")?;
    Ok(Keys {
        client_key,
        stored_key,
        server_key,
    })
}

/// Constant-time equality (length is not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

pub(crate) fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b.iter()).map(|(x, y)| x ^ y).collect()
}

pub(crate) fn b64_encode(data: &[u8]) -> String {
    STANDARD.encode(data)
}

pub(crate) fn b64_decode(s: &str) -> Result<Vec<u8>, SaslError> {
    STANDARD
        .decode(s)
        .map_err(|_| SaslError::MalformedRequest("invalid base64".into()))
}

pub(crate) fn malformed(msg: &str) -> SaslError {
    SaslError::MalformedRequest(msg.to_string())
}
