//! XEP-0092 Software Version for the server.
use minidom::Element;

use super::{IqFuture, IqRequest, Module, Scope};
use crate::stanza::{Condition, StanzaError};

pub const NS: &str = "jabber:iq:version";

pub struct Version;

impl Module for Version {
    fn name(&self) -> &'static str {
        "version"
    }
    fn iq_namespaces(&self) -> &'static [(Scope, &'static str)] {
        &[(Scope::Server, NS)]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn handle_iq<'a>(&'a self, req: IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(async move {
            if req.set {
                return Err(StanzaError::new(Condition::BadRequest));
            }
            let mut q = Element::builder("query", NS)
                .append(Element::builder("name", NS).append("Starling").build())
                .append(
                    Element::builder("version", NS)
                        .append(env!("CARGO_PKG_VERSION"))
                        .build(),
                );
            if req.server.config.server_info.version_show_os {
                q = q.append(
                    Element::builder("os", NS)
                        .append(std::env::consts::OS)
                        .build(),
                );
            }
            Ok(Some(q.build()))
        })
    }
}
