//! The HT-* SASL mechanisms (draft-schmaus-kitten-sasl-ht) used by XEP-0484 FAST: the
//! client proves it holds a server-issued token in a single message,
//! `authcid NUL HMAC(token, "Initiator" || cb-data)`, and the server proves it too with
//! `HMAC(token, "Responder" || cb-data)` (sent as SASL2 additional data). Only SHA-256 is
//! offered. The channel-binding suffix names where cb-data comes from: NONE (empty),
//! ENDP (RFC 5929 tls-server-end-point), EXPR (RFC 9266 tls-exporter); UNIQ (tls-unique)
//! does not exist on TLS 1.3 and rustls does not expose it, so it is never offered.

use super::crypto::{ct_eq, hmac};
use super::{ChannelBindings, HashAlg, SaslError};

/// Where an HT mechanism takes its channel-binding data from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HtBinding {
    None,
    Endp,
    Expr,
}

/// One HT-SHA-256-* mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HtMech(pub HtBinding);

impl HtMech {
    /// Preference order: channel binding first (XEP-0484 §7: clients MUST prefer it).
    pub const ALL: [HtMech; 3] = [
        HtMech(HtBinding::Expr),
        HtMech(HtBinding::Endp),
        HtMech(HtBinding::None),
    ];

    pub fn name(self) -> &'static str {
        match self.0 {
            HtBinding::None => "HT-SHA-256-NONE",
            HtBinding::Endp => "HT-SHA-256-ENDP",
            HtBinding::Expr => "HT-SHA-256-EXPR",
        }
    }

    pub fn from_name(name: &str) -> Option<HtMech> {
        HtMech::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The channel-binding data of this connection, or None when it has none of this type
    /// (then the mechanism is not offered).
    pub fn cb_data(self, b: &ChannelBindings) -> Option<Vec<u8>> {
        match self.0 {
            HtBinding::None => Some(Vec::new()),
            HtBinding::Endp => b.tls_server_end_point.clone(),
            HtBinding::Expr => b.tls_exporter.clone(),
        }
    }

    /// The mechanisms this connection can offer.
    pub fn offered(b: &ChannelBindings) -> Vec<HtMech> {
        HtMech::ALL
            .into_iter()
            .filter(|m| m.cb_data(b).is_some())
            .collect()
    }
}

/// HMAC-SHA-256(token, label || cb-data).
fn ht_hmac(token: &[u8], label: &[u8], cb: &[u8]) -> Result<Vec<u8>, SaslError> {
    let mut data = Vec::with_capacity(label.len() + cb.len());
    data.extend_from_slice(label);
    data.extend_from_slice(cb);
    hmac(HashAlg::Sha256, token, &data)
}

/// What the client must send after the NUL.
pub fn initiator_hash(token: &[u8], cb: &[u8]) -> Result<Vec<u8>, SaslError> {
    ht_hmac(token, b"Initiator", cb)
}

/// The server's proof, returned as additional data on success.
pub fn responder_hash(token: &[u8], cb: &[u8]) -> Result<Vec<u8>, SaslError> {
    ht_hmac(token, b"Responder", cb)
}

/// The client message split into (authcid, initiator hash).
pub fn parse(msg: &[u8]) -> Result<(String, Vec<u8>), SaslError> {
    let bad = |m: &str| SaslError::MalformedRequest(format!("HT: {m}"));
    let nul = msg
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| bad("no NUL separator"))?;
    let (user, rest) = msg.split_at(nul);
    let hash = rest.get(1..).unwrap_or_default();
    if user.is_empty() || user.len() > super::PLAIN_MAX_PART || hash.len() != 32 {
        return Err(bad("bad authcid or hash length"));
    }
    let user = std::str::from_utf8(user).map_err(|_| bad("invalid UTF-8"))?;
    Ok((user.to_string(), hash.to_vec()))
}

/// Constant-time check of a client's initiator hash against a candidate token.
pub fn verify(token: &[u8], cb: &[u8], client_hash: &[u8]) -> bool {
    initiator_hash(token, cb).is_ok_and(|h| ct_eq(&h, client_hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Vectors computed independently with Python's hmac module:
    /// `hmac.new(token, b"Initiator" + cb, hashlib.sha256).hexdigest()`.
    #[test]
    fn known_vectors() {
        let token = b"WXZzciBwYmFmdmZnZiBqdmd1IGp2eXFhcmZm";
        assert_eq!(
            initiator_hash(token, b"").unwrap(),
            unhex("9097787461a184e0fa84ec00c1381190b6c4d16a8ec4453c7b2ac5e7fcf935ed")
        );
        assert_eq!(
            responder_hash(token, b"").unwrap(),
            unhex("4e513409631474863b986c9f3e8c1e27ca29d1d7ab9ed4097e7afd6007bf9c62")
        );
        let cb: Vec<u8> = (0u8..32).collect();
        assert_eq!(
            initiator_hash(token, &cb).unwrap(),
            unhex("0c5745576afeea711960549186a31a65c9f328205ee38b66825b3d4c872b395c")
        );
        assert!(verify(token, &cb, &initiator_hash(token, &cb).unwrap()));
        assert!(!verify(token, b"", &initiator_hash(token, &cb).unwrap()));
        assert!(!verify(b"other", &cb, &initiator_hash(token, &cb).unwrap()));
    }

    #[test]
    fn parses_and_rejects() {
        let mut msg = b"alice\0".to_vec();
        msg.extend_from_slice(&[7u8; 32]);
        assert_eq!(parse(&msg).unwrap(), ("alice".to_string(), vec![7u8; 32]));
        assert!(parse(b"alice").is_err());
        assert!(parse(b"\0abc").is_err());
        assert!(parse(b"alice\0short").is_err());
        let mut bad = vec![0xff, 0];
        bad.extend_from_slice(&[1u8; 32]);
        assert!(parse(&bad).is_err());
    }

    #[test]
    fn names_and_offers() {
        for m in HtMech::ALL {
            assert_eq!(HtMech::from_name(m.name()), Some(m));
        }
        assert_eq!(HtMech::from_name("HT-SHA-256-UNIQ"), None);
        let none = ChannelBindings::default();
        assert_eq!(HtMech::offered(&none), vec![HtMech(HtBinding::None)]);
        let both = ChannelBindings {
            tls_exporter: Some(vec![1]),
            tls_server_end_point: Some(vec![2]),
        };
        assert_eq!(HtMech::offered(&both).len(), 3);
    }
}
