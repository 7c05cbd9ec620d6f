//! XEP-0163 Personal Eventing Protocol: a XEP-0060 pubsub service on every account's bare
//! JID, with the subset of XEP-0060 that PEP clients use (Conversations, Gajim, Monal,
//! slixmpp): publish with auto-create and publish-options (§7.1), retract (§7.2), item
//! retrieval (§6.5), node creation, configuration and deletion (§8.1, §8.2, §8.4).
//!
//! Subscriptions are implicit (XEP-0163 §4.3 "auto-subscribe"): contacts with a presence
//! subscription to the owner get notifications, filtered by the `+notify` features of their
//! XEP-0115 caps ([`crate::caps`]); see [`notify`]. Explicit XEP-0060 subscriptions (§6.1)
//! serve everyone else on open nodes (e.g. OMEMO peers that are not contacts). Items are stored in [`crate::storage::Pubsub`],
//! which makes XEP-0223 private storage and XEP-0402 bookmarks plain PEP nodes with
//! `access_model=whitelist`.

use jid::BareJid;
use minidom::Element;

use crate::modules::{IqFuture, IqRequest, ItemsFuture, Module, Scope};
use crate::server::ServerState;
use crate::stanza::{BuilderExt, Condition, StanzaError};
use crate::storage::{AccessModel, NodeConfig, PepItem, PepNode, StorageError, Subscription};

pub mod bookmarks;
pub mod form;
pub mod notify;

pub const NS: &str = "http://jabber.org/protocol/pubsub";
pub const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";

/// Per-server PEP state: the shared caps cache and per-account write locks.
#[derive(Default)]
pub struct PepState {
    pub caps: crate::caps::CapsCache,
    locks: crate::roster::RosterLocks,
}

pub struct Pep;

impl Module for Pep {
    fn name(&self) -> &'static str {
        "pep"
    }
    fn iq_namespaces(&self) -> &'static [(Scope, &'static str)] {
        &[(Scope::Account, NS), (Scope::Account, NS_OWNER)]
    }
    fn account_identities(&self) -> &'static [(&'static str, &'static str)] {
        &[("pubsub", "pep")]
    }
    fn account_features(&self) -> &'static [&'static str] {
        &[
            NS,
            bookmarks::FEATURE_COMPAT,
            "http://jabber.org/protocol/pubsub#access-open",
            "http://jabber.org/protocol/pubsub#access-presence",
            "http://jabber.org/protocol/pubsub#access-whitelist",
            "http://jabber.org/protocol/pubsub#auto-create",
            "http://jabber.org/protocol/pubsub#auto-subscribe",
            "http://jabber.org/protocol/pubsub#config-node",
            "http://jabber.org/protocol/pubsub#create-and-configure",
            "http://jabber.org/protocol/pubsub#create-nodes",
            "http://jabber.org/protocol/pubsub#delete-nodes",
            "http://jabber.org/protocol/pubsub#filtered-notifications",
            "http://jabber.org/protocol/pubsub#item-ids",
            "http://jabber.org/protocol/pubsub#last-published",
            "http://jabber.org/protocol/pubsub#multi-items",
            "http://jabber.org/protocol/pubsub#persistent-items",
            "http://jabber.org/protocol/pubsub#purge-nodes",
            "http://jabber.org/protocol/pubsub#publish",
            "http://jabber.org/protocol/pubsub#publish-options",
            "http://jabber.org/protocol/pubsub#retract-items",
            "http://jabber.org/protocol/pubsub#retrieve-items",
            "http://jabber.org/protocol/pubsub#subscribe",
        ]
    }
    fn account_items<'a>(&'a self, req: &'a IqRequest<'a>) -> ItemsFuture<'a> {
        Box::pin(disco_items(req))
    }
    fn handle_iq<'a>(&'a self, req: IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(async move {
            let owner_ns = req.payload.ns() == NS_OWNER;
            if req.payload.name() != "pubsub" {
                return Err(StanzaError::new(Condition::BadRequest));
            }
            let owner = crate::roster::owner_of(req.to)?;
            let user = (owner.0.as_str(), owner.1.as_str());
            let mut children = req.payload.children();
            let Some(op) = children.next() else {
                return Err(StanzaError::new(Condition::BadRequest));
            };
            match (owner_ns, req.set, op.name()) {
                (false, true, "publish") => {
                    let opts = req.payload.get_child("publish-options", NS);
                    publish(&req, user, op, opts).await
                }
                (false, true, "retract") => retract(&req, user, op).await,
                (false, true, "create") => {
                    let conf = req.payload.get_child("configure", NS);
                    create(&req, user, op, conf).await
                }
                (false, false, "items") => items(&req, user, op).await,
                (false, true, "subscribe") => subscribe(&req, user, op).await,
                (false, true, "unsubscribe") => unsubscribe(&req, user, op).await,
                (false, _, "subscriptions" | "options" | "affiliations") => Err(unsupported()),
                (true, false, "configure") => configure_get(&req, user, op).await,
                (true, true, "configure") => configure_set(&req, user, op).await,
                (true, true, "delete") => delete(&req, user, op).await,
                (true, true, "purge") => purge(&req, user, op).await,
                _ => Err(StanzaError::new(Condition::FeatureNotImplemented)),
            }
        })
    }
}

/// XEP-0060 §5.x/§6.x "not supported": `<feature-not-implemented/>` (the pubsub#errors
/// `<unsupported/>` element would need a 'feature' attribute stanza errors do not carry).
fn unsupported() -> StanzaError {
    StanzaError::new(Condition::FeatureNotImplemented)
}

fn app(c: Condition, name: &'static str) -> StanzaError {
    StanzaError::new(c).with_app(name, NS_ERRORS)
}

fn node_name(op: &Element) -> Result<&str, StanzaError> {
    match op.attr("node") {
        Some(n) if !n.is_empty() => Ok(n),
        _ => Err(app(Condition::BadRequest, "nodeid-required")),
    }
}

fn require_owner(req: &IqRequest<'_>) -> Result<(), StanzaError> {
    if req.is_self() {
        Ok(())
    } else {
        Err(StanzaError::new(Condition::Forbidden))
    }
}

async fn existing(
    server: &ServerState,
    user: (&str, &str),
    node: &str,
) -> Result<PepNode, StanzaError> {
    server
        .storage
        .pubsub()
        .node(user, node)
        .await?
        .ok_or_else(|| StanzaError::new(Condition::ItemNotFound))
}

/// How many items a node keeps: its max_items, bounded by the server's cap ('max' = cap).
fn keep(server: &ServerState, c: &NodeConfig) -> u32 {
    let cap = server.config.pep.max_items_per_node.max(1);
    c.max_items.unwrap_or(cap).clamp(1, cap)
}

async fn new_node(
    server: &ServerState,
    user: (&str, &str),
    name: &str,
    config: &NodeConfig,
) -> Result<PepNode, StanzaError> {
    match server
        .storage
        .pubsub()
        .create_node(user, name, config, server.config.pep.max_nodes_per_user)
        .await
    {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err(StanzaError::with_text(
            Condition::NotAllowed,
            "too many nodes",
        )),
        Err(StorageError::Conflict) => Err(StanzaError::new(Condition::Conflict)),
        Err(StorageError::NoAccount) => Err(StanzaError::new(Condition::ItemNotFound)),
        Err(e) => Err(e.into()),
    }
}

fn publish_options(opts: Option<&Element>) -> Result<form::Options, StanzaError> {
    let Some(x) = opts.and_then(|o| o.get_child("x", form::NS_DATA)) else {
        return Ok(form::Options::default());
    };
    match form::parse(x, form::FORM_PUBLISH_OPTIONS, true) {
        Ok(Some(o)) => Ok(o),
        Ok(None) => Err(app(Condition::BadRequest, "invalid-options")),
        // §7.1.5: unknown fields reject the publication.
        Err(_) => Err(form::precondition_not_met()),
    }
}

/// XEP-0060 §7.1 publish (XEP-0163 §4.2: auto-create; §7.1.5 publish-options).
async fn publish(
    req: &IqRequest<'_>,
    user: (&str, &str),
    op: &Element,
    opts: Option<&Element>,
) -> Result<Option<Element>, StanzaError> {
    require_owner(req)?;
    let name = node_name(op)?;
    let mut items = op.children().filter(|c| c.is("item", NS));
    let (Some(item), None) = (items.next(), items.next()) else {
        return Err(app(Condition::BadRequest, "item-required"));
    };
    let mut payloads = item.children();
    let (Some(payload), None) = (payloads.next(), payloads.next()) else {
        return Err(app(Condition::BadRequest, "invalid-payload"));
    };
    let options = publish_options(opts)?;
    let id = match item.attr("id") {
        Some(i) if !i.is_empty() => i.to_string(),
        _ => crate::stanza::random_id(),
    };
    let publisher = req.from.map(|f| f.to_string()).unwrap_or_default();
    let target = Target {
        owner: req.to,
        user,
        node: name,
    };
    publish_item(req.server, &target, &options, &id, payload, &publisher).await?;
    crate::avatar::on_publish(req.server, user, name, payload).await;
    Ok(Some(
        Element::builder("pubsub", NS)
            .append(
                Element::builder("publish", NS)
                    .at("node", name)
                    .append(Element::builder("item", NS).at("id", id).build())
                    .build(),
            )
            .build(),
    ))
}

/// Where an item goes: an account's node.
pub struct Target<'a> {
    pub owner: &'a BareJid,
    pub user: (&'a str, &'a str),
    pub node: &'a str,
}

/// Store an item (auto-creating the node with `options`, or checking them as preconditions)
/// and notify. Shared by the publish IQ and server-side writers (XEP-0402 compat).
pub async fn publish_item(
    server: &ServerState,
    t: &Target<'_>,
    options: &form::Options,
    id: &str,
    payload: &Element,
    publisher: &str,
) -> Result<(), StanzaError> {
    let payload = crate::xml::to_bytes(payload);
    if payload.len() > server.config.pep.max_payload_bytes {
        return Err(app(Condition::NotAcceptable, "payload-too-big"));
    }
    let stored = PepItem {
        id: id.to_string(),
        publisher: publisher.to_string(),
        stamp_ms: crate::stanza::now_ms(),
        payload: String::from_utf8_lossy(&payload).into_owned(),
    };
    let node = {
        let _guard = server.pep.locks.lock(t.user).await;
        let node = match server.storage.pubsub().node(t.user, t.node).await? {
            Some(n) if options.met_by(&n.config) => n,
            Some(_) => return Err(form::precondition_not_met()),
            None => {
                new_node(
                    server,
                    t.user,
                    t.node,
                    &options.apply(NodeConfig::default()),
                )
                .await?
            }
        };
        server
            .storage
            .pubsub()
            .publish(node.id, &stored, keep(server, &node.config))
            .await?;
        node
    };
    if let Some(el) = notify::item_element(&stored) {
        let event = Element::builder("items", NS_EVENT)
            .at("node", t.node)
            .append(el)
            .build();
        notify::broadcast(server, t.owner, &node, event).await;
    }
    Ok(())
}

/// XEP-0060 §7.2 retract, with notification when asked (`notify='true'`).
async fn retract(
    req: &IqRequest<'_>,
    user: (&str, &str),
    op: &Element,
) -> Result<Option<Element>, StanzaError> {
    require_owner(req)?;
    let name = node_name(op)?;
    let node = existing(req.server, user, name).await?;
    let ids: Vec<&str> = op
        .children()
        .filter(|c| c.is("item", NS))
        .filter_map(|c| c.attr("id"))
        .collect();
    if ids.is_empty() {
        return Err(app(Condition::BadRequest, "item-required"));
    }
    let mut removed = Vec::new();
    for id in ids {
        if req.server.storage.pubsub().retract(node.id, id).await? {
            removed.push(id);
        }
    }
    if removed.is_empty() {
        return Err(StanzaError::new(Condition::ItemNotFound));
    }
    if matches!(op.attr("notify"), Some("1" | "true")) {
        let mut ev = Element::builder("items", NS_EVENT).at("node", name);
        for id in removed {
            ev = ev.append(Element::builder("retract", NS_EVENT).at("id", id).build());
        }
        notify::broadcast(req.server, req.to, &node, ev.build()).await;
    }
    Ok(None)
}

/// XEP-0060 §8.1 create (with §8.1.3 configure).
async fn create(
    req: &IqRequest<'_>,
    user: (&str, &str),
    op: &Element,
    conf: Option<&Element>,
) -> Result<Option<Element>, StanzaError> {
    require_owner(req)?;
    let name = match op.attr("node") {
        Some(n) if !n.is_empty() => n,
        // PEP has no instant nodes (XEP-0163 §7: node names are namespaces).
        _ => return Err(app(Condition::NotAcceptable, "nodeid-required")),
    };
    let mut config = NodeConfig::default();
    if let Some(x) = conf.and_then(|c| c.get_child("x", form::NS_DATA)) {
        match form::parse(x, form::FORM_NODE_CONFIG, false) {
            Ok(Some(o)) => config = o.apply(config),
            Ok(None) => {}
            Err(_) => return Err(StanzaError::new(Condition::NotAcceptable)),
        }
    }
    let _guard = req.server.pep.locks.lock(user).await;
    new_node(req.server, user, name, &config).await?;
    Ok(None)
}

/// May `from` read the owner's node? XEP-0060 §6.5.x errors per access model.
pub async fn can_read(
    server: &ServerState,
    owner: &BareJid,
    from: &BareJid,
    config: &NodeConfig,
) -> Result<(), StanzaError> {
    if owner == from {
        return Ok(());
    }
    match config.access_model {
        AccessModel::Open => Ok(()),
        AccessModel::Whitelist => Err(app(Condition::NotAllowed, "closed-node")),
        AccessModel::Presence => {
            let user = crate::roster::owner_of(owner)?;
            let item = server
                .storage
                .roster()
                .get((&user.0, &user.1), from.as_str())
                .await?;
            match item.map(|i| i.subscription) {
                Some(Subscription::From | Subscription::Both) => Ok(()),
                _ => Err(app(
                    Condition::NotAuthorized,
                    "presence-subscription-required",
                )),
            }
        }
    }
}

/// XEP-0060 §6.5 retrieve items: all, the newest `max_items`, or by id.
async fn items(
    req: &IqRequest<'_>,
    user: (&str, &str),
    op: &Element,
) -> Result<Option<Element>, StanzaError> {
    let name = node_name(op)?;
    let node = existing(req.server, user, name).await?;
    let from = req
        .from
        .map(|f| f.to_bare())
        .ok_or_else(|| StanzaError::new(Condition::Forbidden))?;
    can_read(req.server, req.to, &from, &node.config).await?;
    let last = match op.attr("max_items") {
        None => None,
        Some(m) => Some(
            m.trim()
                .parse::<u32>()
                .map_err(|_| StanzaError::new(Condition::BadRequest))?,
        ),
    };
    let ids: Vec<String> = op
        .children()
        .filter(|c| c.is("item", NS))
        .filter_map(|c| c.attr("id").map(str::to_string))
        .collect();
    let found = req
        .server
        .storage
        .pubsub()
        .items(node.id, &ids, last)
        .await?;
    let mut out = Element::builder("items", NS).at("node", name);
    for it in &found {
        if let Some(el) = notify::item_element_ns(it, NS) {
            out = out.append(el);
        }
    }
    Ok(Some(
        Element::builder("pubsub", NS).append(out.build()).build(),
    ))
}

/// The subscriber address of a subscribe/unsubscribe: the sender's own bare or full JID
/// (XEP-0060 §6.1.3.1 invalid-jid otherwise).
fn subscriber(req: &IqRequest<'_>, op: &Element) -> Result<jid::Jid, StanzaError> {
    let from = req
        .from
        .ok_or_else(|| StanzaError::new(Condition::Forbidden))?;
    let jid = op
        .attr("jid")
        .and_then(|j| jid::Jid::new(j).ok())
        .ok_or_else(|| app(Condition::BadRequest, "jid-required"))?;
    if jid.to_bare() != from.to_bare() {
        return Err(app(Condition::BadRequest, "invalid-jid"));
    }
    Ok(jid)
}

/// XEP-0060 §6.1 explicit subscription (non-contacts of open nodes, e.g. OMEMO peers).
async fn subscribe(
    req: &IqRequest<'_>,
    user: (&str, &str),
    op: &Element,
) -> Result<Option<Element>, StanzaError> {
    let name = node_name(op)?;
    let jid = subscriber(req, op)?;
    let node = existing(req.server, user, name).await?;
    can_read(req.server, req.to, &jid.to_bare(), &node.config).await?;
    let max = req.server.config.pep.max_subscriptions_per_node;
    if !req
        .server
        .storage
        .pubsub()
        .subscribe(node.id, jid.as_str(), max)
        .await?
    {
        return Err(StanzaError::with_text(
            Condition::NotAllowed,
            "too many subscriptions",
        ));
    }
    notify::last_to_subscriber(req.server, req.to, &node, &jid).await;
    Ok(Some(
        Element::builder("pubsub", NS)
            .append(
                Element::builder("subscription", NS)
                    .at("node", name)
                    .at("jid", jid.as_str())
                    .at("subscription", "subscribed")
                    .build(),
            )
            .build(),
    ))
}

/// XEP-0060 §6.2 unsubscribe.
async fn unsubscribe(
    req: &IqRequest<'_>,
    user: (&str, &str),
    op: &Element,
) -> Result<Option<Element>, StanzaError> {
    let name = node_name(op)?;
    let jid = subscriber(req, op)?;
    let node = existing(req.server, user, name).await?;
    if !req
        .server
        .storage
        .pubsub()
        .unsubscribe(node.id, jid.as_str())
        .await?
    {
        return Err(app(Condition::UnexpectedRequest, "not-subscribed"));
    }
    Ok(None)
}

async fn configure_get(
    req: &IqRequest<'_>,
    user: (&str, &str),
    op: &Element,
) -> Result<Option<Element>, StanzaError> {
    require_owner(req)?;
    let name = node_name(op)?;
    let node = existing(req.server, user, name).await?;
    Ok(Some(
        Element::builder("pubsub", NS_OWNER)
            .append(
                Element::builder("configure", NS_OWNER)
                    .at("node", name)
                    .append(form::node_config_form(&node.config))
                    .build(),
            )
            .build(),
    ))
}

/// XEP-0060 §8.2.4: submit a new configuration (only the fields we implement).
async fn configure_set(
    req: &IqRequest<'_>,
    user: (&str, &str),
    op: &Element,
) -> Result<Option<Element>, StanzaError> {
    require_owner(req)?;
    let name = node_name(op)?;
    let Some(x) = op.get_child("x", form::NS_DATA) else {
        return Err(StanzaError::new(Condition::BadRequest));
    };
    let server = req.server;
    let _guard = server.pep.locks.lock(user).await;
    let node = existing(server, user, name).await?;
    let options = match form::parse(x, form::FORM_NODE_CONFIG, false) {
        Ok(Some(o)) => o,
        Ok(None) => return Ok(None),
        Err(_) => return Err(StanzaError::new(Condition::NotAcceptable)),
    };
    let config = options.apply(node.config);
    server
        .storage
        .pubsub()
        .configure(node.id, &config, keep(server, &config))
        .await?;
    Ok(None)
}

/// XEP-0060 §8.4 delete, notifying interested subscribers.
async fn delete(
    req: &IqRequest<'_>,
    user: (&str, &str),
    op: &Element,
) -> Result<Option<Element>, StanzaError> {
    require_owner(req)?;
    let name = node_name(op)?;
    let node = existing(req.server, user, name).await?;
    req.server.storage.pubsub().delete_node(user, name).await?;
    let ev = Element::builder("delete", NS_EVENT)
        .at("node", name)
        .build();
    notify::broadcast(req.server, req.to, &node, ev).await;
    Ok(None)
}

/// XEP-0060 §8.5 purge: remove every item, notifying interested subscribers.
async fn purge(
    req: &IqRequest<'_>,
    user: (&str, &str),
    op: &Element,
) -> Result<Option<Element>, StanzaError> {
    require_owner(req)?;
    let name = node_name(op)?;
    let server = req.server;
    let node = existing(server, user, name).await?;
    server.storage.pubsub().purge(node.id).await?;
    let ev = Element::builder("purge", NS_EVENT).at("node", name).build();
    notify::broadcast(server, req.to, &node, ev).await;
    Ok(None)
}

/// XEP-0163 §7 / XEP-0060 §5.2: the nodes the requester may read, as disco items.
async fn disco_items(req: &IqRequest<'_>) -> Result<Vec<Element>, StanzaError> {
    let (Some(user), Some(from)) = (user_of(req.to), req.from) else {
        return Ok(Vec::new());
    };
    let from = from.to_bare();
    let mut out = Vec::new();
    for node in req.server.storage.pubsub().nodes(user).await? {
        if can_read(req.server, req.to, &from, &node.config)
            .await
            .is_ok()
        {
            out.push(
                Element::builder("item", crate::modules::disco::NS_ITEMS)
                    .at("jid", req.to.as_str())
                    .at("node", node.name.as_str())
                    .build(),
            );
        }
    }
    Ok(out)
}

/// The account's bare JID as (domain, localpart) for storage calls.
pub fn user_of(j: &BareJid) -> Option<(&str, &str)> {
    j.node().map(|n| (j.domain().as_str(), n.as_str()))
}

/// Background work after a stanza was answered (caps queries, last items): never on the
/// sender's path.
pub(crate) fn spawn<F>(f: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(f);
}
