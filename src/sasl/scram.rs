//! SCRAM (RFC 5802 / RFC 7677) server state machine, with channel binding
//! (RFC 5929 tls-server-end-point, RFC 9266 tls-exporter).

use super::crypto::{self, b64_decode, b64_encode, ct_eq, malformed};
use super::{saslprep, ChannelBindings, HashAlg, SaslError, ScramCredential};
use rand::RngCore;
use std::sync::OnceLock;

/// Upper bound for any single SCRAM message from the network.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Iteration count announced for unknown users.
pub const FAKE_ITERATIONS: u32 = 4096;
/// Random bytes in the server nonce part (base64-encoded on the wire).
const SERVER_NONCE_BYTES: usize = 24;

/// Channel-binding flag of a GS2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CbFlag {
    /// "n": client does not support channel binding.
    No,
    /// "y": client supports it but thinks the server does not.
    Yes,
    /// "p=<cb-name>": client requires channel binding of this type.
    Plus(String),
}

/// Parsed GS2 header plus the client-first-message-bare.
#[derive(Debug, Clone)]
pub(crate) struct ClientFirst {
    pub flag: CbFlag,
    pub authzid: Option<String>,
    /// Raw GS2 header, including the trailing ','.
    pub gs2_header: String,
    /// client-first-message-bare, verbatim.
    pub bare: String,
    /// Decoded (not yet SASLprepped) username.
    pub username: String,
    pub nonce: String,
}

fn to_str(msg: &[u8]) -> Result<&str, SaslError> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(malformed("message too long"));
    }
    std::str::from_utf8(msg).map_err(|_| malformed("invalid UTF-8"))
}

/// Decode a saslname: `=2C` → ',', `=3D` → '='; any other '=' escape, a raw ',' or NUL is
/// an error.
pub(crate) fn decode_saslname(s: &str) -> Result<String, SaslError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find(['=', ',', '\0']) {
        out.push_str(rest.get(..pos).unwrap_or_default());
        let tail = rest.get(pos..).unwrap_or_default();
        if tail.starts_with("=2C") {
            out.push(',');
        } else if tail.starts_with("=3D") {
            out.push('=');
        } else {
            return Err(malformed("invalid saslname"));
        }
        rest = tail.get(3..).unwrap_or_default();
    }
    out.push_str(rest);
    Ok(out)
}

/// Encode a saslname (inverse of [`decode_saslname`]).
pub(crate) fn encode_saslname(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

/// printable = %x21-2B / %x2D-7E
fn is_printable_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

fn is_cb_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// `attr=value` with a single-letter attribute name.
fn split_attr(part: &str) -> Result<(u8, &str), SaslError> {
    let b = part.as_bytes();
    match (b.first(), b.get(1)) {
        (Some(&a), Some(&b'=')) if a.is_ascii_alphabetic() => {
            Ok((a, part.get(2..).unwrap_or_default()))
        }
        _ => Err(malformed("invalid attribute")),
    }
}

fn expect_attr<'a>(part: Option<&'a str>, name: u8, what: &str) -> Result<&'a str, SaslError> {
    let part = part.ok_or_else(|| malformed(&format!("missing {what}")))?;
    match split_attr(part)? {
        (a, v) if a == name => Ok(v),
        (b'm', _) => Err(malformed("unsupported mandatory extension")),
        _ => Err(malformed(&format!("expected {what}"))),
    }
}

/// Parse a full client-first-message (GS2 header + bare message).
pub(crate) fn parse_client_first(msg: &[u8]) -> Result<ClientFirst, SaslError> {
    let s = to_str(msg)?;
    let mut parts = s.splitn(3, ',');
    let flag_s = parts.next().unwrap_or_default();
    let authz_s = parts
        .next()
        .ok_or_else(|| malformed("missing GS2 header"))?;
    let bare = parts
        .next()
        .ok_or_else(|| malformed("missing GS2 header"))?;
    let flag = match flag_s {
        "n" => CbFlag::No,
        "y" => CbFlag::Yes,
        _ => match flag_s.strip_prefix("p=") {
            Some(name) if is_cb_name(name) => CbFlag::Plus(name.to_string()),
            _ => return Err(malformed("invalid channel binding flag")),
        },
    };
    let authzid = if authz_s.is_empty() {
        None
    } else {
        let raw = authz_s
            .strip_prefix("a=")
            .ok_or_else(|| malformed("invalid authzid"))?;
        let decoded = decode_saslname(raw)?;
        if decoded.is_empty() {
            return Err(malformed("empty authzid"));
        }
        Some(decoded)
    };
    // gs2_header is the prefix of `s` up to (and including) the second comma.
    let gs2_len = flag_s.len() + authz_s.len() + 2;
    let gs2_header = s.get(..gs2_len).unwrap_or_default().to_string();

    let mut attrs = bare.split(',');
    let user_raw = expect_attr(attrs.next(), b'n', "username")?;
    let nonce = expect_attr(attrs.next(), b'r', "nonce")?;
    // Optional extensions: must be well-formed; 'm' is reserved/mandatory → fail.
    for ext in attrs {
        let (a, _) = split_attr(ext)?;
        if a == b'm' {
            return Err(malformed("unsupported mandatory extension"));
        }
    }
    let username = decode_saslname(user_raw)?;
    if username.is_empty() {
        return Err(malformed("empty username"));
    }
    if !is_printable_nonce(nonce) {
        return Err(malformed("invalid nonce"));
    }
    Ok(ClientFirst {
        flag,
        authzid,
        gs2_header,
        bare: bare.to_string(),
        username,
        nonce: nonce.to_string(),
    })
}

/// Parsed server-first-message (used by the client helper).
#[derive(Debug, Clone)]
pub(crate) struct ServerFirst {
    pub nonce: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
}

pub(crate) fn parse_server_first(msg: &[u8]) -> Result<ServerFirst, SaslError> {
    let s = to_str(msg)?;
    let mut attrs = s.split(',');
    let nonce = expect_attr(attrs.next(), b'r', "nonce")?;
    let salt = expect_attr(attrs.next(), b's', "salt")?;
    let iter = expect_attr(attrs.next(), b'i', "iteration count")?;
    for ext in attrs {
        split_attr(ext)?;
    }
    if !is_printable_nonce(nonce) {
        return Err(malformed("invalid nonce"));
    }
    let salt = b64_decode(salt)?;
    if salt.is_empty() {
        return Err(malformed("empty salt"));
    }
    if iter.is_empty() || !iter.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed("invalid iteration count"));
    }
    let iterations: u32 = iter
        .parse()
        .map_err(|_| malformed("invalid iteration count"))?;
    if iterations == 0 {
        return Err(malformed("invalid iteration count"));
    }
    Ok(ServerFirst {
        nonce: nonce.to_string(),
        salt,
        iterations,
    })
}

/// Parsed client-final-message.
#[derive(Debug, Clone)]
pub(crate) struct ClientFinal {
    pub cbind: Vec<u8>,
    pub nonce: String,
    /// client-final-message-without-proof, verbatim.
    pub without_proof: String,
    pub proof: Vec<u8>,
}

pub(crate) fn parse_client_final(msg: &[u8]) -> Result<ClientFinal, SaslError> {
    let s = to_str(msg)?;
    let (without_proof, proof_s) = s
        .rsplit_once(",p=")
        .ok_or_else(|| malformed("missing proof"))?;
    let mut attrs = without_proof.split(',');
    let cbind = expect_attr(attrs.next(), b'c', "channel binding")?;
    let nonce = expect_attr(attrs.next(), b'r', "nonce")?;
    for ext in attrs {
        let (a, _) = split_attr(ext)?;
        if a == b'm' {
            return Err(malformed("unsupported mandatory extension"));
        }
    }
    if proof_s.contains(',') {
        return Err(malformed("proof must be last"));
    }
    Ok(ClientFinal {
        cbind: b64_decode(cbind)?,
        nonce: nonce.to_string(),
        without_proof: without_proof.to_string(),
        proof: b64_decode(proof_s)?,
    })
}

/// Per-process random key used to derive fake salts for unknown users.
fn fake_salt_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut k);
        k
    })
}

/// Stable (per process) fake 16-byte salt for an unknown username.
pub(crate) fn fake_salt(alg: HashAlg, username: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(username.len() + 8);
    data.extend_from_slice(alg.tag().as_bytes());
    data.push(0);
    data.extend_from_slice(username.as_bytes());
    let mut out = crypto::hmac(HashAlg::Sha256, fake_salt_key(), &data).unwrap_or_default();
    out.truncate(16);
    if out.is_empty() {
        // Unreachable in practice (HMAC accepts any key); still never send an empty salt.
        out = vec![0u8; 16];
    }
    out
}

/// Random server nonce part: base64 of random bytes (printable, no ',').
pub(crate) fn random_nonce() -> String {
    let mut b = [0u8; SERVER_NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut b);
    b64_encode(&b)
}

#[derive(Debug)]
enum State {
    Initial,
    GotClientFirst {
        first: ClientFirst,
        username: String,
    },
    SentServerFirst {
        first: ClientFirst,
        server_first: String,
        combined_nonce: String,
        /// None for an unknown user (or unusable credential): always fails.
        cred: Option<ScramCredential>,
    },
    Done,
    Failed,
}

/// Server side of one SCRAM exchange.
///
/// Call order: [`client_first`](Self::client_first) → [`server_first`](Self::server_first) →
/// [`client_final`](Self::client_final). Any out-of-order call fails with
/// `MalformedRequest`; any error moves the exchange into a failed state.
#[derive(Debug)]
pub struct ScramServer {
    alg: HashAlg,
    plus: bool,
    bindings: ChannelBindings,
    server_nonce: Option<String>,
    fake_iterations: u32,
    authzid: Option<String>,
    state: State,
}

impl ScramServer {
    /// `plus`: the client chose the -PLUS mechanism. `bindings`: what this connection offers
    /// (also decides whether a "y" GS2 flag signals a downgrade).
    pub fn new(alg: HashAlg, plus: bool, bindings: ChannelBindings) -> Self {
        ScramServer {
            alg,
            plus,
            bindings,
            server_nonce: None,
            fake_iterations: FAKE_ITERATIONS,
            authzid: None,
            state: State::Initial,
        }
    }

    /// Like [`new`](Self::new) but with a fixed server nonce part (test vectors only).
    #[doc(hidden)]
    pub fn with_nonce(
        alg: HashAlg,
        plus: bool,
        bindings: ChannelBindings,
        server_nonce: &str,
    ) -> Self {
        let mut s = Self::new(alg, plus, bindings);
        s.server_nonce = Some(server_nonce.to_string());
        s
    }

    /// Iteration count announced to unknown users (default [`FAKE_ITERATIONS`]); set it to
    /// the count used for real accounts so the two cannot be told apart. 0 is ignored.
    pub fn set_fake_iterations(&mut self, iterations: u32) {
        if iterations > 0 {
            self.fake_iterations = iterations;
        }
    }

    /// The hash this exchange uses.
    pub fn alg(&self) -> HashAlg {
        self.alg
    }

    /// Parse client-first-message; returns the SASLprepped authcid to look up.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<String, SaslError> {
        if !matches!(self.state, State::Initial) {
            self.state = State::Failed;
            return Err(malformed("unexpected client-first-message"));
        }
        self.state = State::Failed;
        let first = parse_client_first(msg)?;
        self.check_flag(&first.flag)?;
        let username = saslprep(&first.username)
            .map_err(|_| malformed("invalid username"))?
            .into_owned();
        if username.is_empty() {
            return Err(malformed("empty username"));
        }
        self.authzid = first.authzid.clone();
        self.state = State::GotClientFirst {
            first,
            username: username.clone(),
        };
        Ok(username)
    }

    fn cb_data(&self, name: &str) -> Option<&[u8]> {
        match name {
            "tls-exporter" => self.bindings.tls_exporter.as_deref(),
            "tls-server-end-point" => self.bindings.tls_server_end_point.as_deref(),
            _ => None,
        }
    }

    fn check_flag(&self, flag: &CbFlag) -> Result<(), SaslError> {
        match (self.plus, flag) {
            (true, CbFlag::Plus(name)) => match name.as_str() {
                "tls-exporter" | "tls-server-end-point" => {
                    if self.cb_data(name).is_some() {
                        Ok(())
                    } else {
                        Err(SaslError::NotAuthorized)
                    }
                }
                _ => Err(malformed("unsupported channel binding type")),
            },
            (true, _) => Err(malformed("-PLUS mechanism requires channel binding")),
            (false, CbFlag::No) => Ok(()),
            (false, CbFlag::Yes) => {
                if self.bindings.any() {
                    // Client supports channel binding and believes we do not: downgrade.
                    Err(SaslError::NotAuthorized)
                } else {
                    Ok(())
                }
            }
            (false, CbFlag::Plus(_)) => Err(malformed("channel binding requires -PLUS mechanism")),
        }
    }

    /// The authzid from the GS2 header, if any.
    pub fn authzid(&self) -> Option<&str> {
        self.authzid.as_deref()
    }

    /// server-first-message. `None` (unknown user) answers with a fake but stable salt so
    /// accounts cannot be enumerated; the exchange then fails with NotAuthorized.
    ///
    /// A credential for a different hash, or with malformed keys, is treated like an unknown
    /// user. Called out of order it returns an empty message and the exchange fails.
    pub fn server_first(&mut self, cred: Option<&ScramCredential>) -> Vec<u8> {
        let (first, username) = match std::mem::replace(&mut self.state, State::Failed) {
            State::GotClientFirst { first, username } => (first, username),
            _ => return Vec::new(),
        };
        let n = self.alg.output_len();
        let cred = cred
            .filter(|c| {
                c.alg == self.alg
                    && c.iterations > 0
                    && !c.salt.is_empty()
                    && c.stored_key.len() == n
                    && c.server_key.len() == n
            })
            .cloned();
        let (salt, iterations) = match &cred {
            Some(c) => (c.salt.clone(), c.iterations),
            None => (fake_salt(self.alg, &username), self.fake_iterations),
        };
        let server_nonce = self.server_nonce.take().unwrap_or_else(random_nonce);
        let combined_nonce = format!("{}{}", first.nonce, server_nonce);
        let server_first = format!(
            "r={},s={},i={}",
            combined_nonce,
            b64_encode(&salt),
            iterations
        );
        let out = server_first.clone().into_bytes();
        self.state = State::SentServerFirst {
            first,
            server_first,
            combined_nonce,
            cred,
        };
        out
    }

    /// Verify client-final-message; on success returns server-final-message ("v=...").
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, SaslError> {
        let (first, server_first, combined_nonce, cred) =
            match std::mem::replace(&mut self.state, State::Failed) {
                State::SentServerFirst {
                    first,
                    server_first,
                    combined_nonce,
                    cred,
                } => (first, server_first, combined_nonce, cred),
                _ => return Err(malformed("unexpected client-final-message")),
            };
        let fin = parse_client_final(msg)?;

        // c= must be base64(gs2-header [ + cb data ]).
        let mut expected_cb = first.gs2_header.clone().into_bytes();
        if let CbFlag::Plus(name) = &first.flag {
            let data = self.cb_data(name).ok_or(SaslError::NotAuthorized)?;
            expected_cb.extend_from_slice(data);
        }
        if !ct_eq(&fin.cbind, &expected_cb) {
            return Err(SaslError::NotAuthorized);
        }
        if fin.nonce != combined_nonce {
            return Err(SaslError::NotAuthorized);
        }

        let auth_message = format!("{},{},{}", first.bare, server_first, fin.without_proof);
        // Unknown users run the same computation against a dummy key, then fail.
        let n = self.alg.output_len();
        let (stored_key, server_key, known) = match &cred {
            Some(c) => (c.stored_key.clone(), c.server_key.clone(), true),
            None => (vec![0u8; n], vec![0u8; n], false),
        };
        let client_sig = crypto::hmac(self.alg, &stored_key, auth_message.as_bytes())?;
        let proof_ok_len = fin.proof.len() == n;
        let client_key = crypto::xor(&fin.proof, &client_sig);
        let computed_stored = crypto::hash(self.alg, &client_key);
        let ok = ct_eq(&computed_stored, &stored_key);
        if !(known && proof_ok_len && ok) {
            return Err(SaslError::NotAuthorized);
        }
        let server_sig = crypto::hmac(self.alg, &server_key, auth_message.as_bytes())?;
        self.state = State::Done;
        Ok(format!("v={}", b64_encode(&server_sig)).into_bytes())
    }
}
