//! Rosters (RFC 6121 §2) with versioning (XEP-0237) and pre-approval (§3.4), and the I/O
//! half of subscription handling (§3): load state, apply [`state`], persist, push, route.

use crate::stanza::BuilderExt;
use bytes::Bytes;
use jid::BareJid;
use minidom::Element;
use std::collections::VecDeque;
use std::sync::Arc;

use crate::modules::{IqFuture, IqRequest, Module, Scope};
use crate::router::Deliver;
use crate::server::ServerState;
use crate::stanza::{Condition, StanzaError};
use crate::storage::{RosterItem, StorageError, Subscription};
use crate::xml::{self, NS_CLIENT};

pub mod state;
use state::{SubState, SubType};

pub const NS: &str = "jabber:iq:roster";
pub const NS_VER: &str = "urn:xmpp:features:rosterver";
pub const NS_PREAPPROVAL: &str = "urn:xmpp:features:pre-approval";
/// Longest group name accepted (RFC 6121 §2.1.2.2 lets servers limit it).
const MAX_GROUP_LEN: usize = 1023;

pub struct RosterModule;

impl Module for RosterModule {
    fn name(&self) -> &'static str {
        "roster"
    }
    fn iq_namespaces(&self) -> &'static [(Scope, &'static str)] {
        &[(Scope::Account, NS)]
    }
    fn stream_features(&self, _server: &ServerState, authenticated: bool) -> Vec<Element> {
        if authenticated {
            vec![
                Element::builder("ver", NS_VER).build(),
                Element::builder("sub", NS_PREAPPROVAL).build(),
            ]
        } else {
            Vec::new()
        }
    }
    fn handle_iq<'a>(&'a self, req: IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(async move {
            if !req.is_self() {
                return Err(StanzaError::new(Condition::Forbidden));
            }
            let owner = owner_of(req.to)?;
            if req.set {
                set(&req, &owner).await.map(|_| None)
            } else {
                get(&req, &owner).await
            }
        })
    }
}

/// (domain, localpart) of a bare JID with a localpart.
pub fn owner_of(jid: &BareJid) -> Result<(String, String), StanzaError> {
    let node = jid
        .node()
        .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
    Ok((jid.domain().as_str().to_string(), node.as_str().to_string()))
}

fn item_element(item: &RosterItem) -> Element {
    let mut b = Element::builder("item", NS)
        .at("jid", item.contact.as_str())
        .at("subscription", item.subscription.as_str());
    if let Some(n) = &item.name {
        b = b.at("name", n.as_str());
    }
    if item.ask {
        b = b.at("ask", "subscribe");
    }
    if item.approved {
        b = b.at("approved", "true");
    }
    for g in &item.groups {
        b = b.append(Element::builder("group", NS).append(g.as_str()).build());
    }
    b.build()
}

async fn get(
    req: &IqRequest<'_>,
    owner: &(String, String),
) -> Result<Option<Element>, StanzaError> {
    if let Some(s) = req.session {
        s.set_interested();
    }
    let (ver, items) = req
        .server
        .storage
        .roster()
        .get_all((&owner.0, &owner.1))
        .await?;
    let client_ver = req.payload.attr("ver");
    if client_ver == Some(ver.to_string().as_str()) {
        // XEP-0237 / RFC 6121 §2.6.3: up to date, empty result.
        return Ok(None);
    }
    let mut q = Element::builder("query", NS);
    if client_ver.is_some() {
        q = q.at("ver", ver.to_string());
    }
    for item in &items {
        q = q.append(item_element(item));
    }
    Ok(Some(q.build()))
}

async fn set(req: &IqRequest<'_>, owner: &(String, String)) -> Result<(), StanzaError> {
    let bad = |c| Err(StanzaError::new(c));
    let mut items = req.payload.children().filter(|c| c.is("item", NS));
    let (Some(item), None) = (items.next(), items.next()) else {
        return bad(Condition::BadRequest);
    };
    let Some(contact) = item.attr("jid").and_then(|j| jid::Jid::new(j).ok()) else {
        return bad(Condition::BadRequest);
    };
    let contact = contact.to_bare();
    let user = (owner.0.as_str(), owner.1.as_str());
    if item.attr("subscription") == Some("remove") {
        return remove(req.server, user, &contact).await;
    }
    let mut groups: Vec<String> = Vec::new();
    for g in item.children().filter(|c| c.is("group", NS)) {
        let name = g.text();
        if name.is_empty() || name.len() > MAX_GROUP_LEN {
            return bad(Condition::NotAcceptable);
        }
        if groups.contains(&name) {
            return bad(Condition::BadRequest);
        }
        groups.push(name);
    }
    let name = item
        .attr("name")
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let storage = &req.server.storage;
    let _guard = req.server.roster_locks.lock(user).await;
    let existing = storage.roster().get(user, contact.as_str()).await?;
    if existing.is_none() {
        let (_, items) = storage.roster().get_all(user).await?;
        if items.len() >= req.server.config.limits.max_roster_items {
            return Err(StanzaError::with_text(
                Condition::NotAllowed,
                "roster is full",
            ));
        }
    }
    let updated = match existing {
        Some(e) => RosterItem { name, groups, ..e },
        None => RosterItem {
            contact: contact.as_str().to_string(),
            name,
            subscription: Subscription::None,
            ask: false,
            approved: false,
            groups,
        },
    };
    let ver = storage.roster().put(user, &updated).await?;
    req.server.contacts.invalidate(user);
    push(req.server, user, &updated, ver);
    Ok(())
}

/// RFC 6121 §2.5: removing an item also cancels subscriptions in both directions.
async fn remove(
    server: &Arc<ServerState>,
    user: (&str, &str),
    contact: &BareJid,
) -> Result<(), StanzaError> {
    let storage = &server.storage;
    let guard = server.roster_locks.lock(user).await;
    let Some(existing) = storage.roster().get(user, contact.as_str()).await? else {
        return Err(StanzaError::new(Condition::ItemNotFound));
    };
    let pending_in = storage
        .roster()
        .pending_in_remove(user, contact.as_str())
        .await?;
    let me = BareJid::new(&format!("{}@{}", user.1, user.0))
        .map_err(|_| StanzaError::new(Condition::InternalServerError))?;
    let mut queue = VecDeque::new();
    if matches!(existing.subscription, Subscription::To | Subscription::Both) || existing.ask {
        queue.push_back(generated(&me, contact, SubType::Unsubscribe));
    }
    if matches!(
        existing.subscription,
        Subscription::From | Subscription::Both
    ) || pending_in
    {
        queue.push_back(generated(&me, contact, SubType::Unsubscribed));
        unavailable_to(server, &me, contact);
    }
    if let Some(ver) = storage.roster().remove(user, contact.as_str()).await? {
        server.contacts.invalidate(user);
        let removed = RosterItem {
            contact: contact.as_str().to_string(),
            name: None,
            subscription: Subscription::None,
            ask: false,
            approved: false,
            groups: Vec::new(),
        };
        push_removed(server, user, &removed, ver);
    }
    drop(guard);
    deliver_inbound(server, queue).await;
    Ok(())
}

/// Send a roster push for one item to every interested resource of the user.
pub fn push(server: &ServerState, user: (&str, &str), item: &RosterItem, ver: i64) {
    send_push(server, user, item_element(item), ver);
}

fn push_removed(server: &ServerState, user: (&str, &str), item: &RosterItem, ver: i64) {
    let el = Element::builder("item", NS)
        .at("jid", item.contact.as_str())
        .at("subscription", "remove")
        .build();
    send_push(server, user, el, ver);
}

fn send_push(server: &ServerState, user: (&str, &str), item: Element, ver: i64) {
    let iq = Element::builder("iq", NS_CLIENT)
        .at("type", "set")
        .at("id", format!("push-{}", crate::stanza::random_id()))
        .append(
            Element::builder("query", NS)
                .at("ver", ver.to_string())
                .append(item)
                .build(),
        )
        .build();
    let bare = format!("{}@{}", user.1, user.0);
    server
        .router
        .send_all(&bare, &Deliver::RosterPush(Arc::new(iq)));
}

/// A subscription stanza travelling from one bare JID to another.
pub struct SubStanza {
    pub from: BareJid,
    pub to: BareJid,
    pub kind: SubType,
    pub bytes: Bytes,
}

fn generated(from: &BareJid, to: &BareJid, kind: SubType) -> SubStanza {
    let bytes = format!(
        "<presence from='{}' to='{}' type='{}'/>",
        xml::escape(from.as_str()),
        xml::escape(to.as_str()),
        kind.as_str()
    );
    SubStanza {
        from: from.clone(),
        to: to.clone(),
        kind,
        bytes: Bytes::from(bytes),
    }
}

async fn load_state(
    server: &ServerState,
    user: (&str, &str),
    contact: &str,
) -> Result<(Option<RosterItem>, SubState), StorageError> {
    let item = server.storage.roster().get(user, contact).await?;
    let pending_in = server
        .storage
        .roster()
        .pending_in_has(user, contact)
        .await?;
    let s = match &item {
        Some(i) => SubState {
            sub: i.subscription,
            pending_out: i.ask,
            pending_in,
            approved: i.approved,
        },
        None => SubState {
            pending_in,
            ..SubState::NONE
        },
    };
    Ok((item, s))
}

/// Persist a new state: pending-in row, roster item (created when the state needs one), push.
async fn save_state(
    server: &ServerState,
    user: (&str, &str),
    contact: &str,
    item: Option<RosterItem>,
    old: SubState,
    new: SubState,
    pending_stanza: Option<&Bytes>,
) -> Result<Option<Push>, StorageError> {
    let roster = server.storage.roster();
    if new.pending_in && !old.pending_in {
        let text = pending_stanza
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        roster.pending_in_add(user, contact, &text).await?;
    } else if !new.pending_in && old.pending_in {
        roster.pending_in_remove(user, contact).await?;
    }
    let needs_item = new.sub != Subscription::None || new.pending_out || new.approved;
    let changed =
        (old.sub, old.pending_out, old.approved) != (new.sub, new.pending_out, new.approved);
    if !changed || (item.is_none() && !needs_item) {
        return Ok(None);
    }
    if item.is_none()
        && roster.get_all(user).await?.1.len() >= server.config.limits.max_roster_items
    {
        tracing::info!(user = %format!("{}@{}", user.1, user.0), "roster full; subscription item not created");
        return Ok(None);
    }
    let mut it = item.unwrap_or(RosterItem {
        contact: contact.to_string(),
        name: None,
        subscription: Subscription::None,
        ask: false,
        approved: false,
        groups: Vec::new(),
    });
    it.subscription = new.sub;
    it.ask = new.pending_out;
    it.approved = new.approved;
    let ver = roster.put(user, &it).await?;
    server.contacts.invalidate(user);
    Ok(Some(Push {
        owner: (user.0.to_string(), user.1.to_string()),
        item: it,
        ver,
    }))
}

/// A roster push decided while the state was saved, sent once the stanza that caused it has
/// been delivered (RFC 6121 §3.1.6 orders the two).
struct Push {
    owner: (String, String),
    item: RosterItem,
    ver: i64,
}

impl Push {
    fn send(self, server: &ServerState) {
        push(server, (&self.owner.0, &self.owner.1), &self.item, self.ver);
    }
}

/// Subscription state is read, decided and written per (owner, contact) pair by whichever
/// session task handles a stanza; a striped lock per owner keeps two of them (a request and
/// its immediate approval, say) from interleaving their read and write.
pub struct RosterLocks([tokio::sync::Mutex<()>; 64]);

impl Default for RosterLocks {
    fn default() -> Self {
        RosterLocks(std::array::from_fn(|_| tokio::sync::Mutex::new(())))
    }
}

impl RosterLocks {
    pub async fn lock(&self, owner: (&str, &str)) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        owner.hash(&mut h);
        self.0[(h.finish() % 64) as usize].lock().await
    }
}

fn user_of(j: &BareJid) -> Option<(&str, &str)> {
    j.node().map(|n| (j.domain().as_str(), n.as_str()))
}

/// A subscription stanza sent by a local user (RFC 6121 §3, "user's server" side).
pub async fn outbound(
    server: &Arc<ServerState>,
    me: &BareJid,
    contact: BareJid,
    kind: SubType,
    bytes: Bytes,
) {
    if let Err(e) = outbound_inner(server, me, contact, kind, bytes).await {
        tracing::error!(error = %e, "subscription processing failed");
    }
}

async fn outbound_inner(
    server: &Arc<ServerState>,
    me: &BareJid,
    contact: BareJid,
    kind: SubType,
    bytes: Bytes,
) -> Result<(), StorageError> {
    let Some(user) = user_of(me) else {
        return Ok(());
    };
    if contact == *me || contact.node().is_none() {
        return Ok(());
    }
    let guard = server.roster_locks.lock(user).await;
    let (item, old) = load_state(server, user, contact.as_str()).await?;
    let o = state::outbound(old, kind);
    let pushed = save_state(server, user, contact.as_str(), item, old, o.state, None).await?;
    drop(guard);
    if let Some(p) = pushed {
        p.send(server);
    }
    if !o.route {
        return Ok(());
    }
    // The subscription stanza first, then what it entails (§3.1.5, §3.2.2: the subscriber
    // sees 'subscribed' before the contact's presence, 'unsubscribed' before unavailable).
    let mut q = VecDeque::new();
    q.push_back(SubStanza {
        from: me.clone(),
        to: contact.clone(),
        kind,
        bytes,
    });
    deliver_inbound(server, q).await;
    match kind {
        // §3.1.5: after approving, the contact's current presence goes to the new subscriber.
        SubType::Subscribed => {
            presence_to(server, me, &contact);
            crate::pep::notify::subscription_approved(server, me, &contact);
        }
        // §3.2.2: after cancelling, the subscriber learns we are gone.
        SubType::Unsubscribed => unavailable_to(server, me, &contact),
        _ => {}
    }
    Ok(())
}

/// Process subscription stanzas arriving for local users (RFC 6121 §3, "contact's server"
/// side), including the automatic replies they cause, iteratively.
pub async fn deliver_inbound(server: &Arc<ServerState>, mut queue: VecDeque<SubStanza>) {
    let mut budget = 8; // auto-replies cannot loop, but bound the work anyway
    while let Some(s) = queue.pop_front() {
        budget -= 1;
        if budget == 0 {
            break;
        }
        if let Err(e) = inbound_one(server, s, &mut queue).await {
            tracing::error!(error = %e, "inbound subscription processing failed");
        }
    }
}

async fn inbound_one(
    server: &Arc<ServerState>,
    s: SubStanza,
    queue: &mut VecDeque<SubStanza>,
) -> Result<(), StorageError> {
    if !server.serves(s.to.domain().as_str()) {
        // Another domain's contact: its server applies the contact-side rules. A hosted
        // service's domain is reached the same way (an XEP-0114 gateway takes it; others
        // refuse, and send_remote's error is only logged).
        crate::federation::send::presence(server, &s.from, &s.to, s.bytes);
        return Ok(());
    }
    let Some(user) = user_of(&s.to) else {
        return Ok(());
    };
    if !server.storage.accounts().exists(user).await? {
        // §3.1.3: a request to an account that does not exist is answered 'unsubscribed'.
        if s.kind == SubType::Subscribe {
            queue.push_back(generated(&s.to, &s.from, SubType::Unsubscribed));
        }
        return Ok(());
    }
    let guard = server.roster_locks.lock(user).await;
    let (item, old) = load_state(server, user, s.from.as_str()).await?;
    let i = state::inbound(old, s.kind);
    // Persist before delivering (an immediate answer must find the pending request), and
    // deliver before the roster push (§3.1.6).
    let pushed = save_state(
        server,
        user,
        s.from.as_str(),
        item,
        old,
        i.state,
        Some(&s.bytes),
    )
    .await?;
    drop(guard);
    if i.deliver {
        server
            .router
            .send_available(s.to.as_str(), &Deliver::Bytes(s.bytes.clone()));
    }
    if let Some(p) = pushed {
        p.send(server);
    }
    if i.auto_subscribed {
        queue.push_back(generated(&s.to, &s.from, SubType::Subscribed));
        if old.approved || i.state.sub != old.sub {
            presence_to(server, &s.to, &s.from);
            crate::pep::notify::subscription_approved(server, &s.to, &s.from);
        }
    }
    if s.kind == SubType::Unsubscribe && i.state.sub != old.sub {
        // §3.3.3: the former subscriber gets unavailable presence from our resources.
        unavailable_to(server, &s.to, &s.from);
    }
    Ok(())
}

/// Send `me`'s current presence (every available resource) to `contact`'s resources.
pub fn presence_to(server: &ServerState, me: &BareJid, contact: &BareJid) {
    // A hosted service's domain counts as remote: send_remote reaches a component there.
    let remote = !server.serves(contact.domain().as_str());
    for r in server.router.resources(me.as_str()) {
        if let Some(p) = &r.presence {
            let from = format!("{}/{}", me.as_str(), r.resource);
            let bytes = p.rewrite(Some(&from), Some(contact.as_str()));
            send_presence(server, me, &r.resource, contact, bytes, remote);
        }
    }
}

/// Presence from one of `me`'s resources to `contact`'s available resources, or to its
/// domain when it is another server's.
fn send_presence(
    server: &ServerState,
    me: &BareJid,
    resource: &str,
    contact: &BareJid,
    bytes: Bytes,
    remote: bool,
) {
    if !remote {
        server
            .router
            .send_available(contact.as_str(), &Deliver::Bytes(bytes));
    } else if let Ok(from) = me.with_resource_str(resource) {
        crate::federation::send::presence(server, &from, contact, bytes);
    }
}

/// Send unavailable presence from each of `me`'s available resources to `contact`.
pub fn unavailable_to(server: &ServerState, me: &BareJid, contact: &BareJid) {
    // A hosted service's domain counts as remote: send_remote reaches a component there.
    let remote = !server.serves(contact.domain().as_str());
    for r in server.router.resources(me.as_str()) {
        if r.presence.is_some() {
            let bytes = format!(
                "<presence from='{}/{}' to='{}' type='unavailable'/>",
                xml::escape(me.as_str()),
                xml::escape(&r.resource),
                xml::escape(contact.as_str())
            );
            send_presence(server, me, &r.resource, contact, Bytes::from(bytes), remote);
        }
    }
}

/// A contact and the subscription between the user and it.
pub type Contacts = Arc<Vec<(BareJid, Subscription)>>;

/// The contact lists of online users, so presence broadcasts do not query the database.
/// Entries are filled under the owner's roster lock and invalidated by every roster write
/// (which holds the same lock), so a fill can never store a list older than a write; the
/// session evicts its user's entry when the user's last resource goes away.
#[derive(Default)]
pub struct ContactCache(std::sync::RwLock<std::collections::HashMap<(String, String), Contacts>>);

impl ContactCache {
    fn get(&self, user: (&str, &str)) -> Option<Contacts> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.get(&(user.0.to_string(), user.1.to_string())).cloned()
    }

    pub fn invalidate(&self, user: (&str, &str)) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        map.remove(&(user.0.to_string(), user.1.to_string()));
    }
}

/// The user's contacts with their subscription state, from the cache or the database.
pub async fn contacts(server: &ServerState, user: (&str, &str)) -> Result<Contacts, StorageError> {
    if let Some(c) = server.contacts.get(user) {
        return Ok(c);
    }
    let _guard = server.roster_locks.lock(user).await;
    if let Some(c) = server.contacts.get(user) {
        return Ok(c);
    }
    let (_, items) = server.storage.roster().get_all(user).await?;
    let list: Contacts = Arc::new(
        items
            .into_iter()
            .filter_map(|i| BareJid::new(&i.contact).ok().map(|j| (j, i.subscription)))
            .collect(),
    );
    server
        .contacts
        .0
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert((user.0.to_string(), user.1.to_string()), list.clone());
    Ok(list)
}
