//! XEP-0092 Software Version for the server.
use minidom::Element;

use super::{get_only, IqFuture, IqRequest, Module, Scope};

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
        let show_os = req.server.config.server_info.version_show_os;
        get_only(req.set, || {
            let field = |name: &str, value: &str| Element::builder(name, NS).append(value).build();
            let mut q = Element::builder("query", NS)
                .append(field("name", "Starling"))
                .append(field("version", env!("CARGO_PKG_VERSION")));
            if show_os {
                q = q.append(field("os", std::env::consts::OS));
            }
            Some(q.build())
        })
    }
}
