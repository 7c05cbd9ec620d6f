//! SASL (RFC 6120 §6, RFC 4422): SCRAM-SHA-1/256/512 and their -PLUS variants (RFC 5802,
//! RFC 7677, RFC 9266 tls-exporter, RFC 5929 tls-server-end-point) and PLAIN (RFC 4616).
//! Sans-I/O state machines; the credential store is the caller's business.
//!
//! INTERFACE CONTRACT (stub; implementation pending).

use std::borrow::Cow;

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
        }
    }
}

/// SASLprep (RFC 4013) of a password or username.
pub fn saslprep(_s: &str) -> Result<Cow<'_, str>, SaslError> {
    unimplemented!()
}

/// Derive the stored credential for one hash (applies SASLprep to the password).
pub fn derive_credential(
    _alg: HashAlg,
    _password: &str,
    _salt: &[u8],
    _iterations: u32,
) -> Result<ScramCredential, SaslError> {
    unimplemented!()
}

/// One credential per hash in [`HashAlg::ALL`], each with a fresh random 16-byte salt.
pub fn new_credentials(_password: &str, _iterations: u32) -> Result<Vec<ScramCredential>, SaslError> {
    unimplemented!()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Scram { alg: HashAlg, plus: bool },
    Plain,
}

impl Mechanism {
    /// All mechanisms in server preference order (strongest first).
    pub const ALL: [Mechanism; 7] = [
        Mechanism::Scram { alg: HashAlg::Sha512, plus: true },
        Mechanism::Scram { alg: HashAlg::Sha256, plus: true },
        Mechanism::Scram { alg: HashAlg::Sha1, plus: true },
        Mechanism::Scram { alg: HashAlg::Sha512, plus: false },
        Mechanism::Scram { alg: HashAlg::Sha256, plus: false },
        Mechanism::Scram { alg: HashAlg::Sha1, plus: false },
        Mechanism::Plain,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Scram { alg: HashAlg::Sha1, plus: false } => "SCRAM-SHA-1",
            Mechanism::Scram { alg: HashAlg::Sha1, plus: true } => "SCRAM-SHA-1-PLUS",
            Mechanism::Scram { alg: HashAlg::Sha256, plus: false } => "SCRAM-SHA-256",
            Mechanism::Scram { alg: HashAlg::Sha256, plus: true } => "SCRAM-SHA-256-PLUS",
            Mechanism::Scram { alg: HashAlg::Sha512, plus: false } => "SCRAM-SHA-512",
            Mechanism::Scram { alg: HashAlg::Sha512, plus: true } => "SCRAM-SHA-512-PLUS",
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

/// Server side of one SCRAM exchange.
#[derive(Debug)]
pub struct ScramServer {
    _alg: HashAlg,
}

impl ScramServer {
    /// `plus`: the client chose the -PLUS mechanism. `bindings`: what this connection offers
    /// (also decides whether a "y" GS2 flag signals a downgrade).
    pub fn new(alg: HashAlg, _plus: bool, _bindings: ChannelBindings) -> Self {
        ScramServer { _alg: alg }
    }
    /// Parse client-first-message; returns the SASLprepped authcid to look up.
    pub fn client_first(&mut self, _msg: &[u8]) -> Result<String, SaslError> {
        unimplemented!()
    }
    /// The authzid from the GS2 header, if any.
    pub fn authzid(&self) -> Option<&str> {
        None
    }
    /// server-first-message. `None` (unknown user) answers with a fake but stable salt so
    /// accounts cannot be enumerated; the exchange then fails with NotAuthorized.
    pub fn server_first(&mut self, _cred: Option<&ScramCredential>) -> Vec<u8> {
        unimplemented!()
    }
    /// Verify client-final-message; on success returns server-final-message ("v=...").
    pub fn client_final(&mut self, _msg: &[u8]) -> Result<Vec<u8>, SaslError> {
        unimplemented!()
    }
}

/// PLAIN (RFC 4616) message parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainMessage {
    pub authzid: Option<String>,
    pub authcid: String,
    pub password: String,
}

pub fn plain_parse(_msg: &[u8]) -> Result<PlainMessage, SaslError> {
    unimplemented!()
}

/// Check a PLAIN password against a stored SCRAM credential (constant-time compare).
pub fn plain_verify(_cred: &ScramCredential, _password: &str) -> bool {
    unimplemented!()
}
