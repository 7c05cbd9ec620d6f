//! XEP-0199 XMPP Ping: the server answers pings addressed to it.
use super::{IqFuture, IqRequest, Module, Scope};

pub const NS: &str = "urn:xmpp:ping";

pub struct Ping;

impl Module for Ping {
    fn name(&self) -> &'static str {
        "ping"
    }
    fn iq_namespaces(&self) -> &'static [(Scope, &'static str)] {
        &[(Scope::Server, NS)]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn handle_iq<'a>(&'a self, req: IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(async move {
            // XEP-0199 §4: a ping is an IQ get; the pong is an empty result.
            if req.set {
                Err(crate::stanza::StanzaError::new(
                    crate::stanza::Condition::BadRequest,
                ))
            } else {
                Ok(None)
            }
        })
    }
}
