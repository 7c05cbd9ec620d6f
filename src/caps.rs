//! XEP-0115 Entity Capabilities as the server consumes them: what a client's available
//! presence says it supports, used by PEP to filter notifications (XEP-0163 §4.3.2: a
//! resource gets a node's events when it lists `<node>+notify`).
//!
//! Feature lists are cached by verification string, shared by every user (one Conversations
//! version has one ver). An unknown ver is resolved by asking the client (disco#info on
//! `node#ver`, through [`crate::iq_out`]); the answer is cached only when it hashes to that
//! ver (§5.4), so one client cannot poison what others are assumed to support. Only SHA-1 is
//! verified (what clients use for XEP-0115); other hash names are not resolved.

use jid::FullJid;
use minidom::Element;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;

use crate::modules::disco::{caps_ver, NS_CAPS, NS_INFO};
use crate::server::ServerState;
use crate::stanza::BuilderExt;
use crate::xml::{Stanza, NS_CLIENT};

pub type Features = HashSet<String>;

/// The `<c/>` element of a presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    pub hash: String,
    pub node: String,
    pub ver: String,
}

impl Caps {
    pub fn of(presence: &Element) -> Option<Caps> {
        let c = presence.get_child("c", NS_CAPS)?;
        Some(Caps {
            hash: c.attr("hash")?.to_string(),
            node: c.attr("node").unwrap_or("").to_string(),
            ver: c.attr("ver")?.to_string(),
        })
    }
}

#[derive(Default)]
pub struct CapsCache {
    known: RwLock<HashMap<String, Arc<Features>>>,
    /// Verification strings being resolved: later resources with the same ver wait for the
    /// first query instead of sending their own.
    querying: Mutex<HashMap<String, watch::Receiver<()>>>,
}

impl CapsCache {
    pub fn get(&self, ver: &str) -> Option<Arc<Features>> {
        self.known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(ver)
            .cloned()
    }

    fn insert(&self, ver: &str, f: Arc<Features>, cap: usize) {
        let mut map = self.known.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= cap.max(1) && !map.contains_key(ver) {
            // Bounded: drop an arbitrary entry; it is re-resolved if a client uses it again.
            if let Some(k) = map.keys().next().cloned() {
                map.remove(&k);
            }
        }
        map.insert(ver.to_string(), f);
    }

    pub fn len(&self) -> usize {
        self.known.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The features a stored available presence of `bare`/`resource` advertises, when its caps
/// are resolved: verified ones shared by every entity with that hash, or that resource's
/// own (see [`unverified_key`], built only when the shared lookup misses: this runs per
/// recipient resource of every PEP notification).
pub fn features(
    server: &ServerState,
    bare: &str,
    resource: &str,
    presence: &Stanza,
) -> Option<Arc<Features>> {
    let el = presence.element().ok()?;
    let caps = Caps::of(&el)?;
    let cache = &server.pep.caps;
    cache
        .get(&caps.ver)
        .or_else(|| cache.get(&unverified_key(&caps.ver, &format!("{bare}/{resource}"))))
}

/// Where the features of a client whose disco#info does not hash to the `ver` it advertised
/// are kept: under its own full JID, never under the `ver` other entities share (XEP-0115
/// §5.4: a mismatched result must not be cached globally, or a client could poison the
/// features of every entity claiming that hash). The client itself still gets the
/// notifications its real features ask for, as Prosody's mod_pep does: clients in the wild
/// (Profanity 0.13 among them) advertise a stale hash, and ignoring them would silently cut
/// them off from OMEMO device-list and avatar updates. `\0` cannot occur in a JID.
fn unverified_key(ver: &str, jid: &str) -> String {
    format!("{ver}\0{jid}")
}

/// The features behind `caps` of the resource `jid`: from the cache, or by asking the
/// client. None when they cannot be learnt or verified.
pub async fn resolve(
    server: &Arc<ServerState>,
    jid: &FullJid,
    caps: &Caps,
) -> Option<Arc<Features>> {
    let cache = &server.pep.caps;
    if let Some(f) = cache
        .get(&caps.ver)
        .or_else(|| cache.get(&unverified_key(&caps.ver, jid.as_str())))
    {
        return Some(f);
    }
    if caps.hash != "sha-1" {
        return None;
    }
    // Either wait for the query already under way, or become the one that asks.
    let (waiting, mine) = {
        let mut q = cache.querying.lock().unwrap_or_else(|e| e.into_inner());
        match q.get(&caps.ver) {
            Some(rx) => (Some(rx.clone()), None),
            None => {
                let (tx, rx) = watch::channel(());
                q.insert(caps.ver.clone(), rx);
                (None, Some(tx))
            }
        }
    };
    if let Some(tx) = mine {
        return ask_as_querier(server, jid, caps, tx).await;
    }
    if let Some(mut rx) = waiting {
        // Resolves when the querying task drops its sender; then look again (and ask
        // ourselves if that query failed).
        let _ = rx.changed().await;
        if let Some(f) = cache.get(&caps.ver) {
            return Some(f);
        }
    }
    ask(server, jid, caps).await
}

async fn ask_as_querier(
    server: &Arc<ServerState>,
    jid: &FullJid,
    caps: &Caps,
    tx: watch::Sender<()>,
) -> Option<Arc<Features>> {
    let found = ask(server, jid, caps).await;
    server
        .pep
        .caps
        .querying
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&caps.ver);
    drop(tx); // wakes the waiters
    found
}

async fn ask(server: &Arc<ServerState>, jid: &FullJid, caps: &Caps) -> Option<Arc<Features>> {
    let q = Element::builder("query", NS_INFO)
        .at("node", format!("{}#{}", caps.node, caps.ver))
        .build();
    let reply = match crate::iq_out::query(server, jid, q).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%jid, error = %e, "caps disco#info query failed");
            return None;
        }
    };
    let info = reply.get_child("query", NS_INFO)?;
    let f: Arc<Features> = Arc::new(
        info.children()
            .filter(|c| c.is("feature", NS_INFO))
            .filter_map(|c| c.attr("var").map(str::to_string))
            .collect(),
    );
    let key = if caps_ver(info) == caps.ver {
        caps.ver.clone()
    } else {
        tracing::debug!(%jid, ver = %caps.ver, "caps hash does not match disco#info; features kept for this resource only");
        unverified_key(&caps.ver, jid.as_str())
    };
    server
        .pep
        .caps
        .insert(&key, f.clone(), server.config.pep.caps_cache_size);
    Some(f)
}

/// Caps of a presence stanza received from a client, if it carries any.
pub fn of_stanza(st: &Stanza) -> Option<Caps> {
    let el = st.element().ok()?;
    if !el.is("presence", NS_CLIENT) {
        return None;
    }
    Caps::of(&el)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_read_from_presence() {
        let p: Element =
            "<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps' \
             hash='sha-1' node='https://example.org' ver='abc='/></presence>"
                .parse()
                .unwrap();
        assert_eq!(
            Caps::of(&p),
            Some(Caps {
                hash: "sha-1".into(),
                node: "https://example.org".into(),
                ver: "abc=".into()
            })
        );
        // Legacy caps (no hash) are not verifiable and not used.
        let legacy: Element =
            "<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps' \
             node='n' ver='1.0'/></presence>"
                .parse()
                .unwrap();
        assert_eq!(Caps::of(&legacy), None);
    }

    #[test]
    fn the_cache_is_bounded() {
        let c = CapsCache::default();
        for i in 0..5 {
            c.insert(&format!("v{i}"), Arc::new(Features::new()), 3);
        }
        assert_eq!(c.len(), 3);
        assert!(c.get("v4").is_some(), "the newest entry is kept");
        c.insert("v4", Arc::new(Features::from(["x".to_string()])), 3);
        assert_eq!(c.len(), 3, "replacing does not evict");
    }
}
