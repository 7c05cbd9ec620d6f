//! RFC 3921 session establishment, kept as a no-op for old clients (RFC 6121 dropped it;
//! the feature is advertised as `<optional/>`).
use super::{IqFuture, IqRequest, Module, Scope};

pub const NS: &str = "urn:ietf:params:xml:ns:xmpp-session";

pub struct LegacySession;

impl Module for LegacySession {
    fn name(&self) -> &'static str {
        "session"
    }
    fn iq_namespaces(&self) -> &'static [(Scope, &'static str)] {
        &[(Scope::Server, NS), (Scope::Account, NS)]
    }
    fn handle_iq<'a>(&'a self, _req: IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(async { Ok(None) })
    }
}
