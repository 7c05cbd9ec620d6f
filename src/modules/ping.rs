//! XEP-0199 XMPP Ping: the server answers pings addressed to it with an empty result, and
//! pings to an account's bare JID (or with no 'to', as Profanity's keepalive sends them) on
//! the account's behalf, as Prosody does: clients take an error as "ping not supported".
use super::{get_only, IqFuture, IqRequest, Module, Scope};

pub const NS: &str = "urn:xmpp:ping";

pub struct Ping;

impl Module for Ping {
    fn name(&self) -> &'static str {
        "ping"
    }
    fn iq_namespaces(&self) -> &'static [(Scope, &'static str)] {
        &[(Scope::Server, NS), (Scope::Account, NS)]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn handle_iq<'a>(&'a self, req: IqRequest<'a>) -> IqFuture<'a> {
        get_only(req.set, || None)
    }
}
