//! Minimal SCRAM client (RFC 5802), for the server's own tests and benchmarks.
//!
//! Stateless functions:
//! ```text
//! let gs2 = gs2_header(&ClientBinding::None, None);            // "n,,"
//! let first = client_first("user", &random_nonce(), &gs2)?;     // "n,,n=user,r=..."
//! let (fin, server_sig) = client_final(alg, "pencil", &first, &server_first, &[])?;
//! verify_server_final(&server_sig, &server_final)?;
//! ```
//! or the [`ScramClient`] wrapper which keeps that state.

use super::crypto::{self, b64_encode, ct_eq, malformed};
use super::scram::{encode_saslname, parse_client_first, parse_server_first};
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
    let first = parse_client_first(client_first)?;
    let sf = parse_server_first(server_first)?;
    if sf.nonce.len() <= first.nonce.len() || !sf.nonce.starts_with(&first.nonce) {
        return Err(malformed("server nonce does not extend client nonce"));
    }
    if sf.iterations > MAX_CLIENT_ITERATIONS {
        return Err(malformed("iteration count too high"));
    }
    let password = saslprep(password)?;
    let salted = crypto::hi(alg, password.as_bytes(), &sf.salt, sf.iterations);
    let crypto::Keys {
        client_key,
        stored_key,
        server_key,
    } = crypto::keys_from_salted(alg, &salted)?;

    let mut cbind = first.gs2_header.clone().into_bytes();
    if first.gs2_header.starts_with("p=") {
        cbind.extend_from_slice(cb_data);
    }
    let without_proof = format!("c={},r={}", b64_encode(&cbind), sf.nonce);
    let server_first_s =
        std::str::from_utf8(server_first).map_err(|_| malformed("invalid UTF-8"))?;
    let auth_message = format!("{},{},{}", first.bare, server_first_s, without_proof);
    let client_sig = crypto::hmac(alg, &stored_key, auth_message.as_bytes())?;
    let proof = crypto::xor(&client_key, &client_sig);
    let server_sig = crypto::hmac(alg, &server_key, auth_message.as_bytes())?;
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
    /// The client-first-message (initial response).
    pub fn client_first(&mut self) -> Result<Vec<u8>, SaslError> {
        let gs2 = gs2_header(&self.binding, self.authzid.as_deref());
        let msg = client_first(&self.username, &self.nonce, &gs2)?;
        self.client_first = Some(msg.clone());
        Ok(msg)
    }
    /// Answer the server-first-message with the client-final-message.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, SaslError> {
        let first = self
            .client_first
            .as_deref()
            .ok_or_else(|| malformed("client_first not sent"))?;
        let (msg, sig) = client_final(
            self.alg,
            &self.password,
            first,
            server_first,
            self.binding.data(),
        )?;
        self.server_signature = Some(sig);
        Ok(msg)
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
