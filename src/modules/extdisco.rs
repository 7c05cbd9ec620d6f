//! XEP-0215 External Service Discovery: the STUN/TURN services of `extdisco.services`, with
//! short-term TURN credentials derived from `extdisco.secret` the way coturn's REST API
//! (draft-uberti-behave-turn-rest) checks them: username `<expiry unix time>:<bare JID>`,
//! password `base64(HMAC-SHA1(secret, username))`. The secret itself never leaves this file
//! (and `config::Secret` keeps it out of `Debug` output).
//!
//! Restricted services carry their credentials in the `<services/>` answer already (as
//! Prosody's mod_external_services does), and `<credentials/>` answers for one host/type.
use base64::Engine;
use hmac::{Hmac, Mac};
use minidom::Element;

use super::{IqFuture, IqRequest, Module, Scope};
use crate::config::ExternalService;
use crate::server::ServerState;
use crate::stanza::{now_ms, xep82_datetime, BuilderExt, Condition, StanzaError};

pub const NS: &str = "urn:xmpp:extdisco:2";

pub struct ExternalServices;

impl Module for ExternalServices {
    fn name(&self) -> &'static str {
        "extdisco"
    }
    fn iq_namespaces(&self) -> &'static [(Scope, &'static str)] {
        &[(Scope::Server, NS)]
    }
    fn configured_server_features(&self, server: &ServerState) -> Vec<&'static str> {
        if server.config.extdisco.services.is_empty() {
            Vec::new()
        } else {
            vec![NS]
        }
    }
    fn handle_iq<'a>(&'a self, req: IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(std::future::ready(answer(&req)))
    }
}

fn answer(req: &IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
    let cfg = &req.server.config.extdisco;
    if cfg.services.is_empty() {
        return Err(StanzaError::new(Condition::ServiceUnavailable));
    }
    let (Some(from), true) = (req.from, req.is_local_sender()) else {
        return Err(StanzaError::new(Condition::Forbidden));
    };
    if req.set {
        return Err(StanzaError::new(Condition::BadRequest));
    }
    let user = from.to_bare();
    let creds = Creds {
        secret: cfg.secret.expose(),
        expiry: (now_ms() / 1000).saturating_add(i64::try_from(cfg.ttl_secs).unwrap_or(i64::MAX)),
        user: user.as_str(),
    };
    let with_creds = |s: &ExternalService| service_element(s, &creds);
    let p = req.payload;
    if p.is("services", NS) {
        let filter = p.attr("type");
        let mut out = Element::builder("services", NS);
        if let Some(t) = filter {
            out = out.at("type", t);
        }
        for s in cfg
            .services
            .iter()
            .filter(|s| filter.is_none_or(|t| t == s.kind))
        {
            out = out.append(with_creds(s));
        }
        Ok(Some(out.build()))
    } else if p.is("credentials", NS) {
        // §3.3: the <service/> names the host and type, and a port when several match.
        let Some(want) = p.get_child("service", NS) else {
            return Err(StanzaError::new(Condition::BadRequest));
        };
        let (Some(host), Some(kind)) = (want.attr("host"), want.attr("type")) else {
            return Err(StanzaError::new(Condition::BadRequest));
        };
        let port = want.attr("port");
        let matching: Vec<&ExternalService> = cfg
            .services
            .iter()
            .filter(|s| s.host == host && s.kind == kind)
            .filter(|s| port.is_none_or(|p| p == s.port.to_string()))
            .collect();
        if matching.is_empty() {
            return Err(StanzaError::new(Condition::ItemNotFound));
        }
        let mut out = Element::builder("credentials", NS);
        for s in matching {
            out = out.append(with_creds(s));
        }
        Ok(Some(out.build()))
    } else {
        Err(StanzaError::new(Condition::BadRequest))
    }
}

/// Short-lived credentials for one user, derived from the shared secret.
struct Creds<'a> {
    secret: &'a str,
    expiry: i64,
    user: &'a str,
}

fn service_element(s: &ExternalService, creds: &Creds<'_>) -> Element {
    let mut b = Element::builder("service", NS)
        .at("type", s.kind.as_str())
        .at("host", s.host.as_str())
        .at("port", s.port.to_string());
    if !s.transport.is_empty() {
        b = b.at("transport", s.transport.as_str());
    }
    if !s.name.is_empty() {
        b = b.at("name", s.name.as_str());
    }
    if s.restricted {
        let (username, password) = turn_credentials(creds.secret, creds.expiry, creds.user);
        b = b
            .at("restricted", "true")
            .at("username", username)
            .at("password", password)
            .at("expires", xep82_datetime(creds.expiry.saturating_mul(1000)));
    }
    b.build()
}

/// coturn REST API credentials: (`<expiry>:<user>`, base64(HMAC-SHA1(secret, username))).
pub fn turn_credentials(secret: &str, expiry: i64, user: &str) -> (String, String) {
    let username = format!("{expiry}:{user}");
    // HMAC accepts keys of any length; the error branch cannot happen.
    let password = match Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(username.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    (username, password)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cross-checked with coturn's documented scheme:
    /// `echo -n "1700000000:alice@example.org" | openssl dgst -sha1 -hmac secret -binary | base64`
    #[test]
    fn turn_credentials_match_the_rest_api() {
        let (u, p) = turn_credentials("secret", 1_700_000_000, "alice@example.org");
        assert_eq!(u, "1700000000:alice@example.org");
        assert_eq!(p, "ilWZzF8c6jFH+3PGJYYE0l3dlMI=");
    }
}
