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
                // XEP-0030 §4.1: the services hosted beside the server (MUC, upload).
                Scope::Server => Ok(Some(
                    Element::builder("query", NS_ITEMS)
                        .append_all(req.server.services.disco_items())
                        .build(),
                )),
                Scope::Account => {
                    account_visible(&req).await?;
                    if info {
                        Ok(Some(account_info(&req)))
                    } else {
                        account_items(&req).await.map(Some)
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

fn with_features<'f>(
    mut q: minidom::ElementBuilder,
    features: impl Iterator<Item = &'f str>,
) -> minidom::ElementBuilder {
    let mut list: Vec<&str> = features.collect();
    list.sort_unstable();
    list.dedup();
    for f in list {
        q = q.append(Element::builder("feature", NS_INFO).at("var", f).build());
    }
    q
}

fn server_info(req: &IqRequest<'_>) -> Element {
    server_info_element(req.server)
}

/// The server's disco#info result (also the input of its XEP-0115 caps hash).
pub fn server_info_element(server: &crate::server::ServerState) -> Element {
    let modules = server.modules.all();
    let q = Element::builder("query", NS_INFO).append(identity("server", "im", Some("Starling")));
    let mut q = with_features(
        q,
        modules
            .iter()
            .flat_map(|m| m.server_features().iter().copied())
            .chain(
                modules
                    .iter()
                    .flat_map(|m| m.configured_server_features(server)),
            ),
    );
    for m in modules {
        for form in m.server_info_forms(server) {
            q = q.append(form);
        }
    }
    q.build()
}

fn account_info(req: &IqRequest<'_>) -> Element {
    let modules = req.server.modules.all();
    let mut q = Element::builder("query", NS_INFO).append(identity("account", "registered", None));
    for m in modules {
        for (category, type_) in m.account_identities() {
            q = q.append(identity(category, type_, None));
        }
    }
    with_features(
        q,
        modules
            .iter()
            .flat_map(|m| m.account_features().iter().copied()),
    )
    .build()
}

async fn account_items(req: &IqRequest<'_>) -> Result<Element, StanzaError> {
    let mut q = Element::builder("query", NS_ITEMS);
    for m in req.server.modules.all() {
        for item in m.account_items(req).await? {
            q = q.append(item);
        }
    }
    Ok(q.build())
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
                .append(
                    Element::builder("value", NS_DATA)
                        .append(NS_SERVERINFO)
                        .build(),
                )
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
                f = f.append(
                    Element::builder("value", NS_DATA)
                        .append(v.as_str())
                        .build(),
                );
            }
            form = form.append(f.build());
        }
        vec![form.build()]
    }
}

pub const NS_CAPS: &str = "http://jabber.org/protocol/caps";
pub const CAPS_NODE: &str = "https://starling.im";

/// XEP-0115 §5.1 verification string over a disco#info result: identities, features and
/// extension forms, each sorted, hashed with SHA-1 and base64-encoded.
pub fn caps_ver(info: &Element) -> String {
    use base64::Engine;
    use sha1::Digest;
    let mut s = String::new();
    let mut identities: Vec<String> = info
        .children()
        .filter(|c| c.is("identity", NS_INFO))
        .map(|i| {
            format!(
                "{}/{}/{}/{}<",
                i.attr("category").unwrap_or(""),
                i.attr("type").unwrap_or(""),
                i.attr_ns(&minidom::rxml::Namespace::XML, "lang")
                    .unwrap_or(""),
                i.attr("name").unwrap_or("")
            )
        })
        .collect();
    identities.sort();
    s.extend(identities);
    let mut features: Vec<&str> = info
        .children()
        .filter(|c| c.is("feature", NS_INFO))
        .filter_map(|f| f.attr("var"))
        .collect();
    features.sort_unstable();
    for f in features {
        s.push_str(f);
        s.push('<');
    }
    let mut forms: Vec<(String, String)> = Vec::new();
    for x in info.children().filter(|c| c.is("x", NS_DATA)) {
        let mut form_type = String::new();
        let mut fields: Vec<(String, Vec<String>)> = Vec::new();
        for f in x.children().filter(|c| c.is("field", NS_DATA)) {
            let var = f.attr("var").unwrap_or("").to_string();
            let mut values: Vec<String> = f
                .children()
                .filter(|v| v.is("value", NS_DATA))
                .map(|v| v.text())
                .collect();
            if var == "FORM_TYPE" {
                form_type = values.first().cloned().unwrap_or_default();
            } else {
                values.sort();
                fields.push((var, values));
            }
        }
        fields.sort();
        let mut text = format!("{form_type}<");
        for (var, values) in fields {
            text.push_str(&var);
            text.push('<');
            for v in values {
                text.push_str(&v);
                text.push('<');
            }
        }
        forms.push((form_type, text));
    }
    forms.sort();
    for (_, text) in forms {
        s.push_str(&text);
    }
    base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(s.as_bytes()))
}

/// XEP-0115 §6.3: the server announces its own capabilities as a stream feature.
pub struct ServerCaps;

impl Module for ServerCaps {
    fn name(&self) -> &'static str {
        "caps"
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS_CAPS]
    }
    fn stream_features(
        &self,
        server: &crate::server::ServerState,
        authenticated: bool,
    ) -> Vec<Element> {
        if !authenticated {
            return Vec::new();
        }
        let info = server_info_element(server);
        vec![Element::builder("c", NS_CAPS)
            .at("hash", "sha-1")
            .at("node", CAPS_NODE)
            .at("ver", caps_ver(&info))
            .build()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XEP-0115 §5.3 complex generation example.
    #[test]
    fn caps_ver_matches_the_xep_example() {
        let info: Element = r#"<query xmlns='http://jabber.org/protocol/disco#info' node='http://psi-im.org#q07IKJEyjvHSyhy//CH0CxmKi8w='>
  <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>
  <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>
  <feature var='http://jabber.org/protocol/caps'/>
  <feature var='http://jabber.org/protocol/disco#info'/>
  <feature var='http://jabber.org/protocol/disco#items'/>
  <feature var='http://jabber.org/protocol/muc'/>
  <x xmlns='jabber:x:data' type='result'>
    <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>
    <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>
    <field var='os'><value>Mac</value></field>
    <field var='os_version'><value>10.5.1</value></field>
    <field var='software'><value>Psi</value></field>
    <field var='software_version'><value>0.11</value></field>
  </x>
</query>"#
            .parse()
            .unwrap();
        assert_eq!(caps_ver(&info), "q07IKJEyjvHSyhy//CH0CxmKi8w=");
    }
}
