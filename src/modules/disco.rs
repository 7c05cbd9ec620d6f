//! XEP-0030 Service Discovery for the server and for accounts. Features are collected from
//! every registered module; XEP-0128 forms (e.g. XEP-0157 contact addresses) likewise.
use crate::stanza::BuilderExt;
use minidom::Element;

use super::{IqFuture, IqRequest, Module, Scope};
use crate::stanza::{Condition, StanzaError};
use crate::storage::Subscription;

pub const NS_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_ITEMS: &str = "http://jabber.org/protocol/disco#items";

pub struct Disco;

impl Module for Disco {
    fn name(&self) -> &'static str {
        "disco"
    }
    fn iq_namespaces(&self) -> &'static [(Scope, &'static str)] {
        &[
            (Scope::Server, NS_INFO),
            (Scope::Server, NS_ITEMS),
            (Scope::Account, NS_INFO),
            (Scope::Account, NS_ITEMS),
        ]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS_INFO, NS_ITEMS]
    }
    fn account_features(&self) -> &'static [&'static str] {
        &[NS_INFO, NS_ITEMS]
    }
    fn handle_iq<'a>(&'a self, req: IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(async move {
            if req.set {
                return Err(StanzaError::new(Condition::BadRequest));
            }
            let node = req.payload.attr("node");
            if node.is_some() {
                // No nodes yet: XEP-0030 §7 says item-not-found for unknown nodes.
                return Err(StanzaError::new(Condition::ItemNotFound));
            }
            let info = req.payload.name() == "query" && req.payload.ns() == NS_INFO;
            match req.scope {
                Scope::Server if info => Ok(Some(server_info(&req))),
                Scope::Server => Ok(Some(Element::builder("query", NS_ITEMS).build())),
                Scope::Account => {
                    account_visible(&req).await?;
                    if info {
                        Ok(Some(account_info(&req)))
                    } else {
                        Ok(Some(Element::builder("query", NS_ITEMS).build()))
                    }
                }
            }
        })
    }
}

fn identity(category: &str, type_: &str, name: Option<&str>) -> Element {
    let mut b = Element::builder("identity", NS_INFO)
        .at("category", category)
        .at("type", type_);
    if let Some(n) = name {
        b = b.at("name", n);
    }
    b.build()
}

fn with_features<'f>(mut q: minidom::ElementBuilder, features: impl Iterator<Item = &'f str>) -> minidom::ElementBuilder {
    let mut list: Vec<&str> = features.collect();
    list.sort_unstable();
    list.dedup();
    for f in list {
        q = q.append(Element::builder("feature", NS_INFO).at("var", f).build());
    }
    q
}

fn server_info(req: &IqRequest<'_>) -> Element {
    let modules = req.server.modules.all();
    let q = Element::builder("query", NS_INFO).append(identity("server", "im", Some("Starling")));
    let mut q = with_features(q, modules.iter().flat_map(|m| m.server_features().iter().copied()));
    for m in modules {
        for form in m.server_info_forms(req.server) {
            q = q.append(form);
        }
    }
    q.build()
}

fn account_info(req: &IqRequest<'_>) -> Element {
    let modules = req.server.modules.all();
    let q = Element::builder("query", NS_INFO).append(identity("account", "registered", None));
    with_features(q, modules.iter().flat_map(|m| m.account_features().iter().copied())).build()
}

/// XEP-0030 §3.1 / RFC 6121 §8.5.3.1: an account answers for itself to its owner and to
/// contacts it shares presence with; everyone else gets service-unavailable, which is also
/// what a non-existent account yields, so accounts cannot be probed.
async fn account_visible(req: &IqRequest<'_>) -> Result<(), StanzaError> {
    let hidden = StanzaError::new(Condition::ServiceUnavailable);
    if req.is_self() {
        return Ok(());
    }
    let (Some(from), Some(node)) = (req.from, req.to.node()) else {
        return Err(hidden);
    };
    let owner = (req.to.domain().as_str(), node.as_str());
    let item = req
        .server
        .storage
        .roster()
        .get(owner, from.to_bare().as_str())
        .await?;
    match item.map(|i| i.subscription) {
        Some(Subscription::From | Subscription::Both) => Ok(()),
        _ => Err(hidden),
    }
}

/// XEP-0157 contact addresses as a XEP-0128 form, when any are configured.
pub struct ContactAddresses;

pub const NS_SERVERINFO: &str = "http://jabber.org/network/serverinfo";
const NS_DATA: &str = "jabber:x:data";

impl Module for ContactAddresses {
    fn name(&self) -> &'static str {
        "contact_addresses"
    }
    fn handle_iq<'a>(&'a self, _req: IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(async { Err(StanzaError::new(Condition::ServiceUnavailable)) })
    }
    fn server_info_forms(&self, server: &crate::server::ServerState) -> Vec<Element> {
        let info = &server.config.server_info;
        let fields = [
            ("abuse-addresses", &info.abuse_addresses),
            ("admin-addresses", &info.admin_addresses),
            ("security-addresses", &info.security_addresses),
            ("support-addresses", &info.support_addresses),
        ];
        if fields.iter().all(|(_, v)| v.is_empty()) {
            return Vec::new();
        }
        let mut form = Element::builder("x", NS_DATA).at("type", "result").append(
            Element::builder("field", NS_DATA)
                .at("var", "FORM_TYPE")
                .at("type", "hidden")
                .append(Element::builder("value", NS_DATA).append(NS_SERVERINFO).build())
                .build(),
        );
        for (var, values) in fields {
            if values.is_empty() {
                continue;
            }
            let mut f = Element::builder("field", NS_DATA)
                .at("var", var)
                .at("type", "list-multi");
            for v in values {
                f = f.append(Element::builder("value", NS_DATA).append(v.as_str()).build());
            }
            form = form.append(f.build());
        }
        vec![form.build()]
    }
}
