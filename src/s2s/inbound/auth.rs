//! Authentication on an inbound stream: SASL EXTERNAL (XEP-0178 §3, server-to-server
//! flow), dialback as receiving server (XEP-0220 §2.2.1) and as authoritative server
//! (§2.2.2), with the dialback error conditions of §2.4.

use base64::Engine;
use subtle::ConstantTimeEq;

use super::{End, Inbound, Verified, Wire};
use crate::s2s::dialback;
use crate::s2s::outbound::VerifyError;
use crate::s2s::stream::{self, NS_SASL};
use crate::xml::{self, Stanza};

/// The error conditions XEP-0220 §2.4 names, with the RFC 6120 §8.3.2 type each gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DbError {
    ItemNotFound,
    RemoteServerNotFound,
    RemoteServerTimeout,
    PolicyViolation,
    NotAuthorized,
    ResourceConstraint,
}

impl DbError {
    fn condition(self) -> (&'static str, &'static str) {
        match self {
            DbError::ItemNotFound => ("item-not-found", "cancel"),
            DbError::RemoteServerNotFound => ("remote-server-not-found", "cancel"),
            DbError::RemoteServerTimeout => ("remote-server-timeout", "wait"),
            DbError::PolicyViolation => ("policy-violation", "modify"),
            DbError::NotAuthorized => ("not-authorized", "auth"),
            DbError::ResourceConstraint => ("resource-constraint", "wait"),
        }
    }
}

/// What a dialback answer says.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Valid,
    Invalid,
    Error(DbError),
}

/// `<db:result/>` or `<db:verify/>` answer: 'from'/'to' swapped from the request by the
/// caller, `id` copied for verify.
fn db_answer(kind: &str, from: &str, to: &str, id: Option<&str>, answer: Answer) -> String {
    let mut s = format!(
        "<db:{kind} from='{}' to='{}'",
        xml::escape(from),
        xml::escape(to)
    );
    if let Some(id) = id {
        s.push_str(&format!(" id='{}'", xml::escape(id)));
    }
    match answer {
        Answer::Valid => s.push_str(" type='valid'/>"),
        Answer::Invalid => s.push_str(" type='invalid'/>"),
        Answer::Error(e) => {
            let (cond, etype) = e.condition();
            s.push_str(&format!(
                " type='error'><error type='{etype}'><{cond} xmlns='{}'/></error></db:{kind}>",
                crate::stanza::NS_STANZAS
            ));
        }
    }
    s
}

/// 'from', 'to' and the key of a dialback request; a missing or malformed address is a
/// stream error (XEP-0220 §2.2: both MUST be present).
fn db_request(st: &Stanza) -> Result<(String, String, String), End> {
    let addr = |v: Option<&String>, what: &str| {
        v.and_then(|v| stream::domain(v)).ok_or_else(|| {
            End::err(
                "improper-addressing",
                format!("dialback request without a valid '{what}'"),
            )
        })
    };
    let from = addr(st.from.as_ref(), "from")?;
    let to = addr(st.to.as_ref(), "to")?;
    let key = st.element().map_err(|e| End::Error(e.into()))?.text();
    Ok((from, to, key.trim().to_string()))
}

impl Inbound {
    /// XEP-0178 §3 steps 10–11: `<auth mechanism='EXTERNAL'>` with an empty ("=") or
    /// the-same-domain authorization identity succeeds when the peer's certificate is
    /// valid for its header's 'from'; the peer then restarts the stream.
    pub(super) fn sasl_auth(&mut self, wire: &mut Wire, st: &Stanza) -> Result<(), End> {
        if self.external.is_some() {
            return Err(End::err("policy-violation", "already authenticated"));
        }
        let el = st.element().map_err(|e| End::Error(e.into()))?;
        if el.attr("mechanism") != Some("EXTERNAL") {
            self.sasl_failure(wire, "invalid-mechanism");
            return self.count_failure();
        }
        if !self.tls {
            self.sasl_failure(wire, "encryption-required");
            return self.count_failure();
        }
        let text = el.text();
        let text = text.trim();
        // As Prosody: no initial response at all is malformed ("=" is the empty one).
        let authzid = match text {
            "" => {
                self.sasl_failure(wire, "malformed-request");
                return self.count_failure();
            }
            "=" => None,
            t => match base64::engine::general_purpose::STANDARD.decode(t) {
                Ok(b) => Some(String::from_utf8_lossy(&b).to_ascii_lowercase()),
                Err(_) => {
                    self.sasl_failure(wire, "incorrect-encoding");
                    return self.count_failure();
                }
            },
        };
        let Some(remote) = self.remote.clone() else {
            self.sasl_failure(wire, "not-authorized");
            return self.count_failure();
        };
        if authzid.is_some_and(|a| a != remote) {
            self.sasl_failure(wire, "invalid-authzid");
            return self.count_failure();
        }
        if !self.s2s.tls.valid_for(&self.chain, &remote) {
            self.sasl_failure(wire, "not-authorized");
            return self.count_failure();
        }
        wire.write(format!("<success xmlns='{NS_SASL}'/>").as_bytes());
        self.external = Some(remote.clone());
        let local = self.local.clone();
        self.authenticated(&local, &remote, "external");
        wire.restart();
        Ok(())
    }

    pub(super) fn sasl_failure(&mut self, wire: &mut Wire, condition: &str) {
        wire.write(format!("<failure xmlns='{NS_SASL}'><{condition}/></failure>").as_bytes());
    }

    /// `limits.max_auth_failures` failed attempts close the stream, as for clients.
    fn count_failure(&mut self) -> Result<(), End> {
        self.auth_failures += 1;
        if self.auth_failures >= self.server.config.limits.max_auth_failures {
            return Err(End::err(
                "policy-violation",
                "too many failed authentication attempts",
            ));
        }
        Ok(())
    }

    /// XEP-0220 §2.2.1: the peer asks to send from 'from' to 'to', proving it with a key
    /// its authoritative server must confirm.
    pub(super) fn db_result(&mut self, wire: &mut Wire, st: &Stanza) -> Result<(), End> {
        if st.type_.is_some() {
            // An answer to a request of ours: those travel on our outbound streams (or on
            // this one with bidi, where the outbound side owns them). Unsolicited answers
            // must never authenticate anything (XEP-0220 §3.1).
            tracing::debug!(peer = %self.peer, "s2s: ignoring a typed db:result on an inbound stream");
            return Ok(());
        }
        let (remote, local, key) = db_request(st)?;
        if self.server.is_local_domain(&remote) {
            return Err(End::err("invalid-from", "that domain is served here"));
        }
        let reply = |wire: &mut Wire, a: Answer| {
            wire.write(db_answer("result", &local, &remote, None, a).as_bytes());
        };
        let config = &self.server.config.s2s;
        if !self.server.is_local_domain(&local) {
            reply(wire, Answer::Error(DbError::ItemNotFound));
            return Ok(());
        }
        if config.require_tls && !self.tls {
            reply(wire, Answer::Error(DbError::PolicyViolation));
            return Ok(());
        }
        let pair = (local.clone(), remote.clone());
        if self.pairs.contains(&local, &remote) {
            reply(wire, Answer::Valid);
            return Ok(());
        }
        if self.pending.contains(&pair) {
            return Ok(()); // the first request's answer will come
        }
        let cert_valid = self.tls && self.s2s.tls.valid_for(&self.chain, &remote);
        if config.require_valid_certificates && !cert_valid {
            reply(wire, Answer::Error(DbError::NotAuthorized));
            return Ok(());
        }
        if self.pairs.len() + self.pending.len() >= config.max_domain_pairs {
            reply(wire, Answer::Error(DbError::ResourceConstraint));
            return Ok(());
        }
        if cert_valid {
            // The certificate already proves the peer speaks for `remote`: no need to ask
            // its authoritative server (as Prosody does with a valid certificate).
            reply(wire, Answer::Valid);
            self.authenticated(&local, &remote, "dialback");
            return Ok(());
        }
        self.pending.insert(pair);
        let s2s = self.s2s.clone();
        let id = self.stream_id.clone();
        // Guard in case the verifier's own timeout does not fire.
        let guard = std::time::Duration::from_secs(config.connect_timeout_secs.saturating_mul(2));
        self.verifications.spawn(async move {
            let verify = s2s.outbound.verify(&s2s, &local, &remote, &id, &key);
            let result = match tokio::time::timeout(guard, verify).await {
                Ok(r) => r,
                Err(_) => Err(VerifyError::Timeout),
            };
            (local, remote, result)
        });
        Ok(())
    }

    /// XEP-0220 §2.2.1 step 4: the authoritative server answered (or could not be asked).
    pub(super) fn verified(&mut self, wire: &mut Wire, done: Verified) -> Result<(), End> {
        let (local, remote, result) = done;
        self.pending.remove(&(local.clone(), remote.clone()));
        let answer = match &result {
            Ok(true) => Answer::Valid,
            Ok(false) => Answer::Invalid,
            Err(VerifyError::Unreachable(why)) => {
                tracing::info!(%remote, reason = %why, "s2s: dialback: authoritative server unreachable");
                Answer::Error(DbError::RemoteServerNotFound)
            }
            Err(VerifyError::Timeout) => Answer::Error(DbError::RemoteServerTimeout),
        };
        wire.write(db_answer("result", &local, &remote, None, answer).as_bytes());
        match answer {
            Answer::Valid => self.authenticated(&local, &remote, "dialback"),
            Answer::Invalid => {
                tracing::warn!(peer = %self.peer, %remote, %local, "s2s: dialback key invalid");
                // §2.2.1: with nothing else authenticated here the stream MUST close.
                if self.pairs.is_empty() && self.pending.is_empty() {
                    return Err(End::err("not-authorized", "dialback key invalid"));
                }
            }
            Answer::Error(_) => {}
        }
        Ok(())
    }

    /// XEP-0220 §2.2.2: as authoritative server, say whether a key we (as initiating
    /// server) generated is genuine. No authentication needed: the key is the proof.
    pub(super) fn db_verify(&mut self, wire: &mut Wire, st: &Stanza) -> Result<(), End> {
        if st.type_.is_some() {
            tracing::debug!(peer = %self.peer, "s2s: ignoring a typed db:verify on an inbound stream");
            return Ok(());
        }
        let (receiving, originating, key) = db_request(st)?;
        let id = st
            .id
            .clone()
            .ok_or_else(|| End::err("bad-format", "db:verify without an 'id'"))?;
        let answer = if !self.server.is_local_domain(&originating) {
            Answer::Error(DbError::ItemNotFound)
        } else if self.server.config.s2s.require_tls && !self.tls {
            Answer::Error(DbError::PolicyViolation)
        } else {
            let expected = dialback::key(&self.s2s.secret, &receiving, &originating, &id);
            if bool::from(expected.as_bytes().ct_eq(key.as_bytes())) {
                Answer::Valid
            } else {
                Answer::Invalid
            }
        };
        let reply = db_answer("verify", &originating, &receiving, Some(&id), answer);
        wire.write(reply.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialback_answers_follow_xep0220_examples() {
        assert_eq!(
            db_answer(
                "result",
                "montague.example",
                "capulet.example",
                None,
                Answer::Valid
            ),
            "<db:result from='montague.example' to='capulet.example' type='valid'/>"
        );
        assert_eq!(
            db_answer(
                "verify",
                "montague.example",
                "capulet.example",
                Some("417GAF25"),
                Answer::Error(DbError::ItemNotFound)
            ),
            "<db:verify from='montague.example' to='capulet.example' id='417GAF25' type='error'>\
             <error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:verify>"
        );
    }
}
