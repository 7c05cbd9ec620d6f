//! XEP-0402 §5.3 compatibility ("#compat", the unification XEP-0411 started): clients that
//! still keep XEP-0048 bookmarks in XEP-0049 private XML storage (`<storage
//! xmlns='storage:bookmarks'/>`) see and edit the same bookmarks as XEP-0402 clients, which
//! live in the PEP node `urn:xmpp:bookmarks:1` (one item per room, id = room JID).
//!
//! The private XML storage handler calls [`private_get`] / [`private_set`] for that one
//! element instead of storing it; the PEP node stays the only copy. URL bookmarks of
//! XEP-0048 have no XEP-0402 form and are dropped on the way in.

use jid::BareJid;
use minidom::Element;

use super::form::Options;
use super::{notify, NS_EVENT};
use crate::server::ServerState;
use crate::stanza::{BuilderExt, Condition, StanzaError};
use crate::storage::{AccessModel, SendLast};

pub const NS_BOOKMARKS: &str = "urn:xmpp:bookmarks:1";
pub const NS_LEGACY: &str = "storage:bookmarks";
/// The account feature to advertise once private storage routes through this module.
pub const FEATURE_COMPAT: &str = "urn:xmpp:bookmarks:1#compat";

/// XEP-0402 §4 / XEP-0223: the node configuration bookmarks are published with.
pub fn node_options() -> Options {
    Options {
        access_model: Some(AccessModel::Whitelist),
        max_items: Some(None),
        persist_items: Some(true),
        send_last: Some(SendLast::Never),
    }
}

fn truthy(v: Option<&str>) -> bool {
    matches!(v, Some("1" | "true"))
}

fn text_child(parent: &Element, name: &str, ns: &str) -> Option<String> {
    parent.get_child(name, ns).map(|c| c.text())
}

/// XEP-0048 conferences as (room JID, XEP-0402 `<conference/>`) pairs; the last entry for
/// a room wins, entries without a valid room JID are skipped.
pub fn legacy_to_items(storage: &Element) -> Vec<(String, Element)> {
    let mut out: Vec<(String, Element)> = Vec::new();
    for c in storage.children().filter(|c| c.is("conference", NS_LEGACY)) {
        let Some(room) = c.attr("jid").and_then(|j| BareJid::new(j).ok()) else {
            continue;
        };
        let mut b = Element::builder("conference", NS_BOOKMARKS);
        if let Some(n) = c.attr("name") {
            b = b.at("name", n);
        }
        if truthy(c.attr("autojoin")) {
            b = b.at("autojoin", "true");
        }
        for field in ["nick", "password"] {
            if let Some(t) = text_child(c, field, NS_LEGACY) {
                b = b.append(Element::builder(field, NS_BOOKMARKS).append(t).build());
            }
        }
        let id = room.to_string();
        out.retain(|(r, _)| *r != id);
        out.push((id, b.build()));
    }
    out
}

/// XEP-0402 items (room JID, `<conference/>`) as one XEP-0048 `<storage/>`.
pub fn items_to_legacy(items: &[(String, Element)]) -> Element {
    let mut storage = Element::builder("storage", NS_LEGACY);
    for (room, conf) in items {
        let mut b = Element::builder("conference", NS_LEGACY).at("jid", room.as_str());
        if let Some(n) = conf.attr("name") {
            b = b.at("name", n);
        }
        b = b.at(
            "autojoin",
            if truthy(conf.attr("autojoin")) {
                "true"
            } else {
                "false"
            },
        );
        for field in ["nick", "password"] {
            if let Some(t) = text_child(conf, field, NS_BOOKMARKS) {
                b = b.append(Element::builder(field, NS_LEGACY).append(t).build());
            }
        }
        storage = storage.append(b.build());
    }
    storage.build()
}

fn user_of(owner: &BareJid) -> Result<(&str, &str), StanzaError> {
    super::user_of(owner).ok_or_else(|| StanzaError::new(Condition::BadRequest))
}

/// The account's bookmarks as XEP-0048 `<storage xmlns='storage:bookmarks'/>`.
pub async fn private_get(server: &ServerState, owner: &BareJid) -> Result<Element, StanzaError> {
    let user = user_of(owner)?;
    let Some(node) = server.storage.pubsub().node(user, NS_BOOKMARKS).await? else {
        return Ok(items_to_legacy(&[]));
    };
    let items = server.storage.pubsub().items(node.id, &[], None).await?;
    let parsed: Vec<(String, Element)> = items
        .into_iter()
        .filter_map(|i| i.payload.parse::<Element>().ok().map(|p| (i.id, p)))
        .filter(|(_, p)| p.is("conference", NS_BOOKMARKS))
        .collect();
    Ok(items_to_legacy(&parsed))
}

/// Replace the account's bookmarks with a XEP-0048 `<storage/>`: rooms in it are published
/// to the XEP-0402 node, rooms no longer in it are retracted; XEP-0402 clients are notified.
pub async fn private_set(
    server: &ServerState,
    owner: &BareJid,
    publisher: &str,
    storage: &Element,
) -> Result<(), StanzaError> {
    let user = user_of(owner)?;
    let wanted = legacy_to_items(storage);
    let target = super::Target {
        owner,
        user,
        node: NS_BOOKMARKS,
    };
    let options = node_options();
    for (room, conf) in &wanted {
        super::publish_item(server, &target, &options, room, conf, publisher).await?;
    }
    let Some(node) = server.storage.pubsub().node(user, NS_BOOKMARKS).await? else {
        return Ok(());
    };
    let current = server.storage.pubsub().items(node.id, &[], None).await?;
    for item in current {
        if wanted.iter().any(|(r, _)| *r == item.id) {
            continue;
        }
        if server.storage.pubsub().retract(node.id, &item.id).await? {
            let ev = Element::builder("items", NS_EVENT)
                .at("node", NS_BOOKMARKS)
                .append(
                    Element::builder("retract", NS_EVENT)
                        .at("id", item.id.as_str())
                        .build(),
                )
                .build();
            notify::broadcast(server, owner, &node, ev).await;
        }
    }
    Ok(())
}

/// The private XML storage hook (see `modules::private::claimant`): `<storage
/// xmlns='storage:bookmarks'/>` reads and writes the PEP node instead of a private row.
pub struct Compat;

impl crate::modules::private::Claim for Compat {
    fn get<'a>(
        &'a self,
        req: &'a crate::modules::IqRequest<'a>,
        _requested: &'a Element,
    ) -> crate::modules::IqFuture<'a> {
        Box::pin(async move { private_get(req.server, req.to).await.map(Some) })
    }

    fn set<'a>(
        &'a self,
        req: &'a crate::modules::IqRequest<'a>,
        element: &'a Element,
    ) -> crate::modules::IqFuture<'a> {
        Box::pin(async move {
            let publisher = req.from.map(|f| f.to_string()).unwrap_or_default();
            private_set(req.server, req.to, &publisher, element).await?;
            Ok(None)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_bookmarks_round_trip_through_xep0402_items() {
        let legacy: Element = "<storage xmlns='storage:bookmarks'>\
            <conference name='Council' autojoin='1' jid='council@muc.example.org'>\
              <nick>me</nick><password>pw</password></conference>\
            <conference jid='Lobby@muc.example.org'/>\
            <conference name='no jid'/>\
            <url name='site' url='https://example.org'/>\
          </storage>"
            .parse()
            .unwrap();
        let items = legacy_to_items(&legacy);
        let ids: Vec<&str> = items.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(ids, ["council@muc.example.org", "lobby@muc.example.org"]);
        let (_, council) = &items[0];
        assert_eq!(council.attr("autojoin"), Some("true"));
        assert_eq!(council.attr("name"), Some("Council"));
        assert_eq!(
            council.get_child("nick", NS_BOOKMARKS).map(|n| n.text()),
            Some("me".to_string())
        );
        assert_eq!(items[1].1.attr("autojoin"), None);

        let back = items_to_legacy(&items);
        let again = legacy_to_items(&back);
        assert_eq!(again, items);
        let confs: Vec<&Element> = back.children().collect();
        assert_eq!(confs[0].attr("autojoin"), Some("true"));
        assert_eq!(confs[1].attr("autojoin"), Some("false"));
        assert_eq!(
            confs[0].get_child("password", NS_LEGACY).map(|n| n.text()),
            Some("pw".to_string())
        );
    }
}
