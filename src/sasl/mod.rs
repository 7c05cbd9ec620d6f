//! SASL (RFC 6120 §6, RFC 4422): SCRAM-SHA-1/256/512 and their -PLUS variants (RFC 5802,
//! RFC 7677, RFC 9266 tls-exporter, RFC 5929 tls-server-end-point) and PLAIN (RFC 4616).
//! Sans-I/O state machines; the credential store is the caller's business.
//!
//!
//! Layout: `crypto` (hash dispatch), `scram` ([`ScramServer`]), [`ht`] (XEP-0484 HT-*), [`client`] (minimal SCRAM
//! client for tests/benchmarks); SASLprep, credentials and PLAIN live here.

use std::borrow::Cow;

use rand::RngCore;

pub mod client;
mod crypto;
pub mod ht;
mod scram;
#[cfg(test)]
mod tests;

pub use scram::{ScramServer, FAKE_ITERATIONS, MAX_MESSAGE_LEN};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlg {
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlg {
    pub const ALL: [HashAlg; 3] = [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512];
    /// Storage tag: "sha1", "sha256", "sha512".
    pub fn tag(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha512 => "sha512",
        }
    }
    pub fn from_tag(s: &str) -> Option<Self> {
        HashAlg::ALL.into_iter().find(|a| a.tag() == s)
    }
}

/// What the server stores per hash: never the password (RFC 5802 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramCredential {
    pub alg: HashAlg,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("aborted")]
    Aborted,
    #[error("incorrect encoding")]
    IncorrectEncoding,
    #[error("invalid authzid")]
    InvalidAuthzid,
    #[error("invalid mechanism")]
    InvalidMechanism,
    #[error("malformed request: {0}")]
    MalformedRequest(String),
    #[error("not authorized")]
    NotAuthorized,
    #[error("encryption required")]
    EncryptionRequired,
    #[error("temporary auth failure")]
    TemporaryAuthFailure,
    /// The credential (e.g. a XEP-0484 FAST token) is no longer valid.
    #[error("credentials expired")]
    CredentialsExpired,
}

impl SaslError {
    /// RFC 6120 §6.5 failure condition element name.
    pub fn condition(&self) -> &'static str {
        match self {
            SaslError::Aborted => "aborted",
            SaslError::IncorrectEncoding => "incorrect-encoding",
            SaslError::InvalidAuthzid => "invalid-authzid",
            SaslError::InvalidMechanism => "invalid-mechanism",
            SaslError::MalformedRequest(_) => "malformed-request",
            SaslError::NotAuthorized => "not-authorized",
            SaslError::EncryptionRequired => "encryption-required",
            SaslError::TemporaryAuthFailure => "temporary-auth-failure",
            SaslError::CredentialsExpired => "credentials-expired",
        }
    }
}

/// SASLprep (RFC 4013) of a password or username.
pub fn saslprep(s: &str) -> Result<Cow<'_, str>, SaslError> {
    stringprep::saslprep(s).map_err(|e| SaslError::MalformedRequest(format!("SASLprep: {e}")))
}

/// Derive the stored credential for one hash (applies SASLprep to the password).
pub fn derive_credential(
    alg: HashAlg,
    password: &str,
    salt: &[u8],
    iterations: u32,
) -> Result<ScramCredential, SaslError> {
    if iterations == 0 {
        return Err(SaslError::MalformedRequest(
            "iteration count must be > 0".into(),
        ));
    }
    let password = saslprep(password)?;
    let salted = crypto::hi(alg, password.as_bytes(), salt, iterations);
    let crypto::Keys {
        stored_key,
        server_key,
        ..
    } = crypto::keys_from_salted(alg, &salted)?;
    Ok(ScramCredential {
        alg,
        salt: salt.to_vec(),
        iterations,
        stored_key,
        server_key,
    })
}

/// One credential per hash in [`HashAlg::ALL`], each with a fresh random 16-byte salt.
pub fn new_credentials(password: &str, iterations: u32) -> Result<Vec<ScramCredential>, SaslError> {
    let mut rng = rand::thread_rng();
    HashAlg::ALL
        .into_iter()
        .map(|alg| {
            let mut salt = [0u8; 16];
            rng.fill_bytes(&mut salt);
            derive_credential(alg, password, &salt, iterations)
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Scram { alg: HashAlg, plus: bool },
    Plain,
}

impl Mechanism {
    /// All mechanisms in server preference order (strongest first).
    pub const ALL: [Mechanism; 7] = [
        Mechanism::Scram {
            alg: HashAlg::Sha512,
            plus: true,
        },
        Mechanism::Scram {
            alg: HashAlg::Sha256,
            plus: true,
        },
        Mechanism::Scram {
            alg: HashAlg::Sha1,
            plus: true,
        },
        Mechanism::Scram {
            alg: HashAlg::Sha512,
            plus: false,
        },
        Mechanism::Scram {
            alg: HashAlg::Sha256,
            plus: false,
        },
        Mechanism::Scram {
            alg: HashAlg::Sha1,
            plus: false,
        },
        Mechanism::Plain,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Scram {
                alg: HashAlg::Sha1,
                plus: false,
            } => "SCRAM-SHA-1",
            Mechanism::Scram {
                alg: HashAlg::Sha1,
                plus: true,
            } => "SCRAM-SHA-1-PLUS",
            Mechanism::Scram {
                alg: HashAlg::Sha256,
                plus: false,
            } => "SCRAM-SHA-256",
            Mechanism::Scram {
                alg: HashAlg::Sha256,
                plus: true,
            } => "SCRAM-SHA-256-PLUS",
            Mechanism::Scram {
                alg: HashAlg::Sha512,
                plus: false,
            } => "SCRAM-SHA-512",
            Mechanism::Scram {
                alg: HashAlg::Sha512,
                plus: true,
            } => "SCRAM-SHA-512-PLUS",
            Mechanism::Plain => "PLAIN",
        }
    }
    pub fn from_name(name: &str) -> Option<Self> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Channel-binding data of the current TLS connection (None on plaintext).
#[derive(Debug, Clone, Default)]
pub struct ChannelBindings {
    /// RFC 9266: 32 bytes exported with label "EXPORTER-Channel-Binding" (TLS 1.3 only).
    pub tls_exporter: Option<Vec<u8>>,
    /// RFC 5929: hash of the server certificate.
    pub tls_server_end_point: Option<Vec<u8>>,
}

impl ChannelBindings {
    /// The channel-binding type names available, for XEP-0440 advertisement.
    pub fn types(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.tls_exporter.is_some() {
            v.push("tls-exporter");
        }
        if self.tls_server_end_point.is_some() {
            v.push("tls-server-end-point");
        }
        v
    }
    pub fn any(&self) -> bool {
        self.tls_exporter.is_some() || self.tls_server_end_point.is_some()
    }
}

/// PLAIN (RFC 4616) message parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainMessage {
    pub authzid: Option<String>,
    pub authcid: String,
    pub password: String,
}

/// Longest accepted PLAIN authzid / authcid / password, in bytes (RFC 4616 §2).
pub const PLAIN_MAX_PART: usize = 255;

/// Parse `[authzid] NUL authcid NUL passwd` (RFC 4616). The authcid is SASLprepped; the
/// password is returned verbatim (see [`plain_verify`]). All failures are `MalformedRequest`.
pub fn plain_parse(msg: &[u8]) -> Result<PlainMessage, SaslError> {
    let bad = |m: &str| SaslError::MalformedRequest(format!("PLAIN: {m}"));
    if msg.len() > 3 * PLAIN_MAX_PART + 2 {
        return Err(bad("message too long"));
    }
    let mut parts = msg.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected exactly two NUL separators"));
    };
    if [authzid, authcid, password]
        .iter()
        .any(|p| p.len() > PLAIN_MAX_PART)
    {
        return Err(bad("field too long"));
    }
    if authcid.is_empty() || password.is_empty() {
        return Err(bad("empty authcid or password"));
    }
    let utf8 = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| bad("invalid UTF-8"))
    };
    let authzid = utf8(authzid)?;
    let authcid = utf8(authcid)?;
    let password = utf8(password)?;
    let authcid = saslprep(&authcid)
        .map_err(|_| bad("invalid authcid"))?
        .into_owned();
    if authcid.is_empty() {
        return Err(bad("empty authcid"));
    }
    Ok(PlainMessage {
        authzid: if authzid.is_empty() {
            None
        } else {
            Some(authzid)
        },
        authcid,
        password,
    })
}

/// Check a PLAIN password against a stored SCRAM credential (constant-time compare).
/// The password is SASLprepped first; any error yields `false`.
pub fn plain_verify(cred: &ScramCredential, password: &str) -> bool {
    if cred.iterations == 0 || cred.stored_key.len() != cred.alg.output_len() {
        return false;
    }
    let Ok(password) = saslprep(password) else {
        return false;
    };
    let salted = crypto::hi(cred.alg, password.as_bytes(), &cred.salt, cred.iterations);
    match crypto::keys_from_salted(cred.alg, &salted) {
        Ok(keys) => crypto::ct_eq(&keys.stored_key, &cred.stored_key),
        Err(_) => false,
    }
}
