//! XEP-0202 Entity Time: the server's clock in UTC (XEP-0082 format).
use minidom::Element;

use super::{get_only, IqFuture, IqRequest, Module, Scope};
use crate::stanza::{now_ms, xep82_datetime};

pub const NS: &str = "urn:xmpp:time";

pub struct EntityTime;

impl Module for EntityTime {
    fn name(&self) -> &'static str {
        "time"
    }
    fn iq_namespaces(&self) -> &'static [(Scope, &'static str)] {
        &[(Scope::Server, NS)]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn handle_iq<'a>(&'a self, req: IqRequest<'a>) -> IqFuture<'a> {
        get_only(req.set, || {
            Some(
                Element::builder("time", NS)
                    .append(Element::builder("tzo", NS).append("+00:00").build())
                    .append(
                        Element::builder("utc", NS)
                            .append(xep82_datetime(now_ms()))
                            .build(),
                    )
                    .build(),
            )
        })
    }
}
