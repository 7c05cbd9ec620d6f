//! XEP-0191 enforcement: the blocklists of online users cached in memory (the hot path never
//! waits on the database for them) and the checks every routed stanza goes through.
//!
//! §3.3 rules: a stanza from a blocked JID is not delivered (messages of type chat/normal
//! and IQ get/set are answered with `<service-unavailable/>`, so the user appears offline;
//! presence and everything else is dropped silently); a stanza to a blocked JID is refused
//! with `<not-acceptable/>` plus `<blocked xmlns='urn:xmpp:blocking:errors'/>`. Stanzas
//! between a user's own resources are never blocked (§5, note).

use bytes::BytesMut;
use jid::{BareJid, Jid};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use crate::c2s::session::{bounce, push_el, Ctx};
use crate::server::ServerState;
use crate::stanza::{error_reply, Condition, ElementExt, StanzaError};
use crate::storage::StorageError;
use crate::xml::{Stanza, NS_CLIENT};

pub const NS_ERRORS: &str = "urn:xmpp:blocking:errors";

/// One account's blocked JIDs, normalized strings (bare, full, domain or domain/resource).
pub type List = Arc<HashSet<String>>;

/// Blocklists of online users by bare JID. Filled on first use (in practice the user's
/// initial presence) under a per-user lock that block/unblock also take, so a fill never
/// stores a list older than a write; evicted when the user's last resource goes.
#[derive(Default)]
pub struct BlockCache {
    lists: RwLock<HashMap<String, List>>,
    pub(super) locks: crate::roster::RosterLocks,
}

impl BlockCache {
    fn get(&self, bare: &str) -> Option<List> {
        let map = self.lists.read().unwrap_or_else(|e| e.into_inner());
        map.get(bare).cloned()
    }

    pub(super) fn put(&self, bare: &str, list: List) {
        let mut map = self.lists.write().unwrap_or_else(|e| e.into_inner());
        map.insert(bare.to_string(), list);
    }

    /// Replace a cached list (block/unblock); a user with no entry is loaded on next use.
    pub(super) fn update(&self, bare: &str, f: impl FnOnce(&mut HashSet<String>)) {
        let mut map = self.lists.write().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = map.get_mut(bare) {
            f(Arc::make_mut(l));
        }
    }

    /// The user's last resource went away. Under the user's lock, so a fill that began
    /// while the user was online cannot re-insert the entry after this (fills insert only
    /// while the user is online, checked under the same lock).
    pub async fn evict(&self, bare: &BareJid) {
        let Some(user) = user_of(bare) else { return };
        let _guard = self.locks.lock(user).await;
        let mut map = self.lists.write().unwrap_or_else(|e| e.into_inner());
        map.remove(bare.as_str());
    }
}

pub(super) fn user_of(j: &BareJid) -> Option<(&str, &str)> {
    j.node().map(|n| (j.domain().as_str(), n.as_str()))
}

/// The user's list, from the cache or the database (cached only while the user is online).
pub async fn list_of(server: &ServerState, bare: &BareJid) -> Result<List, StorageError> {
    if let Some(l) = server.blocklists.get(bare.as_str()) {
        return Ok(l);
    }
    let Some(user) = user_of(bare) else {
        return Ok(List::default());
    };
    let _guard = server.blocklists.locks.lock(user).await;
    if let Some(l) = server.blocklists.get(bare.as_str()) {
        return Ok(l);
    }
    let list: List = Arc::new(
        server
            .storage
            .blocklist()
            .list(user)
            .await?
            .into_iter()
            .collect(),
    );
    if server.router.is_online(bare.as_str()) {
        server.blocklists.put(bare.as_str(), list.clone());
    }
    Ok(list)
}

/// §6 JID matching: full JID, bare JID, domain/resource, domain. `jid` is a normalized JID
/// string (as the jid crate prints it), split here without allocating: the hot path calls
/// this for every routed stanza whose parties have a non-empty list.
pub fn matches(list: &HashSet<String>, jid: &str) -> bool {
    if list.is_empty() {
        return false;
    }
    if list.contains(jid) {
        return true;
    }
    // Neither a localpart nor a domain contains '/', so the first one starts the resource.
    let (bare, resource) = match jid.split_once('/') {
        Some((b, r)) => (b, Some(r)),
        None => (jid, None),
    };
    let (node, domain) = match bare.split_once('@') {
        Some((n, d)) => (Some(n), d),
        None => (None, bare),
    };
    // A full JID also matches its bare JID; `domain/resource` entries only match themselves,
    // which the exact lookup covered.
    list.contains(domain) || (node.is_some() && resource.is_some() && list.contains(bare))
}

/// The bare part of a normalized JID string.
fn bare_part(jid: &str) -> &str {
    jid.split_once('/').map_or(jid, |(b, _)| b)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    /// The sender blocks the recipient.
    Outbound,
    /// The recipient blocks the sender.
    Inbound,
}

/// Whether the stanza, undelivered, would be kept for an offline recipient (chat/normal
/// messages go to offline storage, subscription requests are kept pending): only then does
/// an offline recipient's list matter, and only then is it read from the database.
fn kept_offline(st: &Stanza) -> bool {
    let t = st.type_.as_deref();
    match st.name.as_str() {
        "message" => matches!(t, None | Some("chat" | "normal")),
        "presence" => matches!(t, Some("subscribe" | "subscribed")),
        _ => false,
    }
}

/// Stanzas that may still go to a JID the sender blocks: cancelling a subscription only
/// tears state down, and a user who blocks a contact often removes it next.
fn exempt_outbound(st: &Stanza) -> bool {
    st.name == "presence" && matches!(st.type_.as_deref(), Some("unsubscribe" | "unsubscribed"))
}

fn decide(sender: &List, recipient: Option<&List>, from: &str, st: &Stanza, to: &Jid) -> Verdict {
    if !exempt_outbound(st) && matches(sender, to.as_str()) {
        Verdict::Outbound
    } else if recipient.is_some_and(|l| matches(l, from)) {
        Verdict::Inbound
    } else {
        Verdict::Pass
    }
}

/// The verdict from the cache alone; None when a list must be loaded first.
fn cached(ctx: &Ctx<'_>, st: &Stanza, to: &Jid, to_bare: &str) -> Option<Verdict> {
    let cache = &ctx.server.blocklists;
    let sender = cache.get(ctx.bare.as_str())?;
    let local = ctx.server.serves(to.domain().as_str());
    let recipient = match cache.get(to_bare) {
        Some(l) => Some(l),
        None if !local => None,
        None if ctx.server.router.is_online(to_bare) || kept_offline(st) => return None,
        None => None, // offline and dropped anyway: no need to look
    };
    Some(decide(
        &sender,
        recipient.as_ref(),
        ctx.jid.as_str(),
        st,
        to,
    ))
}

async fn loaded(ctx: &Ctx<'_>, st: &Stanza, to: &Jid) -> Verdict {
    let server = ctx.server;
    let load = |j: BareJid| async move {
        list_of(server, &j).await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "blocklist load failed; not blocking");
            List::default()
        })
    };
    let sender = load(ctx.bare.clone()).await;
    let recipient = if server.serves(to.domain().as_str()) {
        Some(load(to.to_bare()).await)
    } else {
        None
    };
    decide(&sender, recipient.as_ref(), ctx.jid.as_str(), st, to)
}

/// XEP-0191 check for a stanza a local session sends to `to`. True when it must not be
/// routed; the error reply, if the rules call for one, is already in `out`.
pub async fn intercept(ctx: &Ctx<'_>, st: &Stanza, to: &Jid, out: &mut BytesMut) -> bool {
    let to_bare = bare_part(to.as_str());
    if to.node().is_none() || to_bare == ctx.bare.as_str() {
        return false;
    }
    let verdict = match cached(ctx, st, to, to_bare) {
        Some(v) => v,
        // Boxed: loading is rare, and inline its state would enlarge every caller's future.
        None => Box::pin(loaded(ctx, st, to)).await,
    };
    let t = st.type_.as_deref();
    match verdict {
        Verdict::Pass => return false,
        Verdict::Outbound => {
            if !(t == Some("error") || st.name == "iq" && t == Some("result")) {
                refuse_blocked(ctx, st, out);
            }
        }
        Verdict::Inbound => {
            let answer = match st.name.as_str() {
                "message" => matches!(t, None | Some("chat" | "normal")),
                "iq" => matches!(t, Some("get" | "set")),
                _ => false,
            };
            if answer {
                bounce(
                    out,
                    st,
                    ctx.jid,
                    StanzaError::new(Condition::ServiceUnavailable),
                );
            }
        }
    }
    true
}

/// §3.3: `<not-acceptable/>` with the `<blocked/>` application condition.
fn refuse_blocked(ctx: &Ctx<'_>, st: &Stanza, out: &mut BytesMut) {
    let Ok(mut el) = st.element() else { return };
    el.put_attr("from", ctx.jid.as_str());
    let mut reply = error_reply(&el, &StanzaError::new(Condition::NotAcceptable));
    if let Some(err) = reply.get_child_mut("error", NS_CLIENT) {
        err.put_attr("type", "cancel");
        err.append_child(minidom::Element::builder("blocked", NS_ERRORS).build());
    }
    push_el(out, &reply);
}

/// Whether presence between the session's user and a contact (a roster broadcast or a
/// probe answer) must not flow because either blocks the other. The contact's list is
/// consulted only when cached: a contact who is not online gets nothing anyway.
pub async fn presence_blocked(ctx: &Ctx<'_>, contact: &BareJid) -> bool {
    let own = own_list(ctx).await;
    if matches(&own, contact.as_str()) {
        return true;
    }
    ctx.server
        .blocklists
        .get(contact.as_str())
        .is_some_and(|l| matches(&l, ctx.jid.as_str()))
}

/// The session's own list (cached from its first use on).
async fn own_list(ctx: &Ctx<'_>) -> List {
    match ctx.server.blocklists.get(ctx.bare.as_str()) {
        Some(l) => l,
        None => Box::pin(list_of(ctx.server, ctx.bare))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "blocklist load failed; not blocking");
                List::default()
            }),
    }
}

/// Whether a stored subscription request comes from a JID the user blocks.
pub async fn blocked_request(ctx: &Ctx<'_>, from: &str) -> bool {
    let own = own_list(ctx).await;
    !own.is_empty() && Jid::new(from).is_ok_and(|j| matches(&own, j.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> HashSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn j(s: &str) -> String {
        Jid::new(s).unwrap().as_str().to_string()
    }

    #[test]
    fn jid_matching_follows_section_6() {
        let full = list(&["romeo@m/orchard"]);
        assert!(matches(&full, &j("romeo@m/orchard")));
        assert!(!matches(&full, &j("romeo@m/garden")));
        assert!(!matches(&full, &j("romeo@m")));

        let bare = list(&["romeo@m"]);
        assert!(matches(&bare, &j("romeo@m/any")));
        assert!(matches(&bare, &j("romeo@m")));
        assert!(!matches(&bare, &j("benvolio@m/any")));

        let dom_res = list(&["m/orchard"]);
        assert!(matches(&dom_res, &j("m/orchard")));
        assert!(!matches(&dom_res, &j("romeo@m/orchard")));

        let dom = list(&["m"]);
        assert!(matches(&dom, &j("romeo@m/garden")));
        assert!(matches(&dom, &j("romeo@m")));
        assert!(matches(&dom, &j("m/x")));
        assert!(!matches(&dom, &j("romeo@other")));

        assert!(!matches(&HashSet::new(), &j("romeo@m")));
    }

    fn stanza(xml: &str) -> Stanza {
        let ctx = Arc::new(crate::xml::NsContext {
            default_ns: Some(NS_CLIENT.into()),
            prefixes: Vec::new(),
        });
        Stanza::parse(bytes::Bytes::from(xml.to_string()), ctx).unwrap()
    }

    #[test]
    fn verdicts_by_direction_and_stanza() {
        let juliet: List = Arc::new(list(&["romeo@m"]));
        let romeo: List = Arc::new(list(&["tybalt@c"]));
        let none = List::default();
        let to = Jid::new("romeo@m/garden").unwrap();
        let msg = stanza("<message to='romeo@m/garden'><body>x</body></message>");
        assert_eq!(
            decide(&juliet, None, "juliet@c/b", &msg, &to),
            Verdict::Outbound
        );
        assert_eq!(
            decide(&none, Some(&romeo), "juliet@c/b", &msg, &to),
            Verdict::Pass
        );
        assert_eq!(
            decide(&none, Some(&romeo), "tybalt@c/x", &msg, &to),
            Verdict::Inbound
        );
        // Cancelling a subscription still reaches a blocked contact.
        let unsub = stanza("<presence to='romeo@m' type='unsubscribed'/>");
        assert_eq!(
            decide(&juliet, None, "juliet@c/b", &unsub, &to),
            Verdict::Pass
        );
        // Only what would be kept for an offline user needs an offline user's list.
        assert!(kept_offline(&msg));
        assert!(kept_offline(&stanza("<presence type='subscribe'/>")));
        assert!(!kept_offline(&stanza("<presence/>")));
        assert!(!kept_offline(&stanza("<message type='headline'/>")));
        assert!(!kept_offline(&stanza("<iq type='get' id='1'/>")));
    }
}
