//! XEP-0191 Blocking Command: the blocklist IQs (§3.2 get, §3.3 block, §3.4 unblock, §3.5
//! unblock all), pushes to the resources that asked for the list, and the presence side
//! effects of blocking and unblocking. Enforcement on routed stanzas lives in [`filter`].

use crate::stanza::BuilderExt;
use jid::{BareJid, Jid};
use minidom::Element;
use std::sync::Arc;

use crate::modules::{IqFuture, IqRequest, Module, Scope};
use crate::router::{opt_in, Deliver};
use crate::server::ServerState;
use crate::stanza::{parse_jid, Condition, StanzaError};
use crate::storage::{StorageError, Subscription};
use crate::xml::{self, NS_CLIENT};

pub mod filter;
pub use filter::{blocked_request, intercept, presence_blocked, BlockCache};

pub const NS: &str = "urn:xmpp:blocking";

pub struct BlockingModule;

impl Module for BlockingModule {
    fn name(&self) -> &'static str {
        "blocking"
    }
    fn iq_namespaces(&self) -> &'static [(Scope, &'static str)] {
        &[(Scope::Account, NS)]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn handle_iq<'a>(&'a self, req: IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(handle(req))
    }
}

async fn handle(req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
    if !req.is_self() {
        return Err(StanzaError::new(Condition::NotAllowed));
    }
    let me = req.to;
    match (req.set, req.payload.name()) {
        (false, "blocklist") => {
            if let Some(s) = req.session {
                s.set_opt_in(opt_in::BLOCKLIST, true);
            }
            let list = filter::list_of(req.server, me).await?;
            let mut sorted: Vec<&String> = list.iter().collect();
            sorted.sort_unstable();
            Ok(Some(items_element("blocklist", sorted)))
        }
        (true, "block") => {
            let jids = items(req.payload)?;
            if jids.is_empty() {
                return Err(StanzaError::new(Condition::BadRequest));
            }
            block(req.server, me, jids).await.map(|_| None)
        }
        (true, "unblock") => {
            let jids = items(req.payload)?;
            unblock(req.server, me, jids).await.map(|_| None)
        }
        _ => Err(StanzaError::new(Condition::BadRequest)),
    }
}

/// The normalized 'jid' of each `<item/>`, duplicates dropped.
fn items(payload: &Element) -> Result<Vec<Jid>, StanzaError> {
    let mut out: Vec<Jid> = Vec::new();
    for item in payload.children().filter(|c| c.is("item", NS)) {
        let raw = item
            .attr("jid")
            .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
        let j = parse_jid(raw)?;
        if !out.contains(&j) {
            out.push(j);
        }
    }
    Ok(out)
}

fn items_element<'a>(name: &str, jids: impl IntoIterator<Item = &'a String>) -> Element {
    let mut b = Element::builder(name, NS);
    for j in jids {
        b = b.append(Element::builder("item", NS).at("jid", j.as_str()).build());
    }
    b.build()
}

fn strings(jids: &[Jid]) -> Vec<String> {
    jids.iter().map(|j| j.as_str().to_string()).collect()
}

async fn block(server: &Arc<ServerState>, me: &BareJid, jids: Vec<Jid>) -> Result<(), StanzaError> {
    let user = filter::user_of(me).ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
    let list = strings(&jids);
    {
        let _guard = server.blocklists.locks.lock(user).await;
        let max = server.config.limits.max_blocklist_items;
        match server.storage.blocklist().add(user, &list, max).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(StanzaError::with_text(
                    Condition::ResourceConstraint,
                    "the blocklist is full",
                ))
            }
            Err(e) => return Err(e.into()),
        }
        server
            .blocklists
            .update(me.as_str(), |l| l.extend(list.iter().cloned()));
    }
    push(server, me, items_element("block", &list));
    // §3.3: contacts allowed to see our presence now see us go offline (and the blocked
    // contacts' presence no longer reaches us, so our resources see them go offline too).
    for (contact, sub) in affected(server, user, &jids).await {
        if matches!(sub, Subscription::From | Subscription::Both) {
            crate::roster::unavailable_to(server, me, &contact);
        }
        if matches!(sub, Subscription::To | Subscription::Both) {
            crate::roster::unavailable_to(server, &contact, me);
        }
    }
    Ok(())
}

async fn unblock(
    server: &Arc<ServerState>,
    me: &BareJid,
    jids: Vec<Jid>,
) -> Result<(), StanzaError> {
    let user = filter::user_of(me).ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
    let all = jids.is_empty();
    let list = strings(&jids);
    let removed: Vec<Jid> = {
        let _guard = server.blocklists.locks.lock(user).await;
        let store = server.storage.blocklist();
        let removed = if all {
            store
                .clear(user)
                .await?
                .iter()
                .filter_map(|j| Jid::new(j).ok())
                .collect()
        } else {
            store.remove(user, &list).await?;
            jids
        };
        server.blocklists.update(me.as_str(), |l| {
            if all {
                l.clear()
            } else {
                list.iter().for_each(|j| {
                    l.remove(j);
                })
            }
        });
        removed
    };
    push(server, me, items_element("unblock", &list));
    // §3.4: contacts allowed to see our presence get it again; and we get theirs, as a
    // probe would have answered.
    for (contact, sub) in affected(server, user, &removed).await {
        if matches!(sub, Subscription::From | Subscription::Both) {
            crate::roster::presence_to(server, me, &contact);
        }
        if matches!(sub, Subscription::To | Subscription::Both) {
            crate::roster::presence_to(server, &contact, me);
        }
    }
    Ok(())
}

/// Roster contacts matched by any of these blocklist entries (bare or domain entries: a
/// full-JID entry blocks one resource, whose presence is left alone).
async fn affected(
    server: &ServerState,
    user: (&str, &str),
    jids: &[Jid],
) -> Vec<(BareJid, Subscription)> {
    if jids.is_empty() {
        return Vec::new();
    }
    let contacts = match crate::roster::contacts(server, user).await {
        Ok(c) => c,
        Err(e) => {
            let e: StorageError = e;
            tracing::error!(error = %e, "roster load failed after a block change");
            return Vec::new();
        }
    };
    let set: std::collections::HashSet<String> =
        jids.iter().map(|j| j.as_str().to_string()).collect();
    contacts
        .iter()
        .filter(|(c, _)| filter::matches(&set, c.as_str()))
        .cloned()
        .collect()
}

/// §3.3/§3.4 pushes: an IQ-set to every resource that requested the blocklist.
fn push(server: &ServerState, me: &BareJid, payload: Element) {
    let targets = server.router.opted_in(me.as_str(), opt_in::BLOCKLIST);
    let id = format!("block-push-{}", crate::stanza::random_id());
    for r in targets {
        let iq = Element::builder("iq", NS_CLIENT)
            .at("type", "set")
            .at("id", id.as_str())
            .at("to", format!("{}/{}", me.as_str(), r.resource))
            .append(payload.clone())
            .build();
        r.handle.send(Deliver::Bytes(xml::to_bytes(&iq)));
    }
}
