//! XEP-0441 archiving preferences: `<prefs default='always|never|roster'>` with `<always/>`
//! and `<never/>` JID lists, get and set, applied to every message before it is archived.
//!
//! The message path needs every sender's and recipient's preferences, so they are held in
//! memory: only users who changed the default have a row, all loaded once at startup and
//! updated on every set; everyone else archives 'always' (Prosody's default policy). The
//! 'roster' mode asks the contact cache (`state.contacts`), which only touches the database
//! for a user whose contacts are not cached yet.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use jid::BareJid;
use minidom::Element;

use super::NS_MAM;
use crate::server::ServerState;
use crate::stanza::{parse_jid, BuilderExt, Condition, StanzaError};
use crate::storage::{ArchivePrefs, PrefsDefault, Storage, StorageError};

/// Most JIDs accepted in one `<always/>` or `<never/>` list.
pub const MAX_PREFS_JIDS: usize = 1000;

/// Preferences by domain, then username: looked up with borrowed strings, so the message
/// path allocates nothing for the (usual) user without a row.
#[derive(Default)]
pub struct PrefsCache(RwLock<HashMap<String, HashMap<String, Arc<ArchivePrefs>>>>);

impl PrefsCache {
    pub async fn load(storage: &Storage) -> Result<PrefsCache, StorageError> {
        let cache = PrefsCache::default();
        for ((domain, user), p) in storage.archive().prefs_all().await? {
            cache.put((&domain, &user), p);
        }
        Ok(cache)
    }

    fn get(&self, user: (&str, &str)) -> Option<Arc<ArchivePrefs>> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.get(user.0)?.get(user.1).cloned()
    }

    fn remove(&self, user: (&str, &str)) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if let Some(users) = map.get_mut(user.0) {
            users.remove(user.1);
            if users.is_empty() {
                map.remove(user.0);
            }
        }
    }

    fn put(&self, user: (&str, &str), p: ArchivePrefs) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        map.entry(user.0.to_string())
            .or_default()
            .insert(user.1.to_string(), Arc::new(p));
    }
}

fn default_prefs() -> ArchivePrefs {
    ArchivePrefs {
        default: PrefsDefault::Always,
        always: Vec::new(),
        never: Vec::new(),
    }
}

fn user_of(j: &BareJid) -> (&str, &str) {
    (
        j.domain().as_str(),
        j.node().map(|n| n.as_str()).unwrap_or(""),
    )
}

/// Whether `owner` archives a message exchanged with `other` (bare JID and resource).
/// A JID on the never list wins over the always list (the safer reading).
pub async fn wants(server: &ServerState, owner: &BareJid, other: &BareJid, res: &str) -> bool {
    let Some(p) = server.archive.prefs.get(user_of(owner)) else {
        return true;
    };
    let full = format!("{other}/{res}");
    let listed = |l: &[String]| {
        l.iter()
            .any(|j| j == other.as_str() || (!res.is_empty() && *j == full))
    };
    if listed(&p.never) {
        return false;
    }
    if listed(&p.always) {
        return true;
    }
    match p.default {
        PrefsDefault::Always => true,
        PrefsDefault::Never => false,
        PrefsDefault::Roster => match crate::roster::contacts(server, user_of(owner)).await {
            // Any roster item counts, whatever its subscription state.
            Ok(c) => c.iter().any(|(j, _)| j == other),
            Err(e) => {
                tracing::error!(error = %e, "archive prefs: roster unavailable; not archiving");
                false
            }
        },
    }
}

fn to_element(p: &ArchivePrefs) -> Element {
    let list = |name: &str, jids: &[String]| {
        jids.iter().fold(Element::builder(name, NS_MAM), |b, j| {
            b.append(Element::builder("jid", NS_MAM).append(j.as_str()).build())
        })
    };
    Element::builder("prefs", NS_MAM)
        .at("default", p.default.as_str())
        .append(list("always", &p.always).build())
        .append(list("never", &p.never).build())
        .build()
}

fn parse_list(prefs: &Element, name: &str) -> Result<Vec<String>, StanzaError> {
    let mut out = Vec::new();
    for list in prefs.children().filter(|c| c.is(name, NS_MAM)) {
        for j in list.children().filter(|c| c.is("jid", NS_MAM)) {
            let jid = parse_jid(j.text().trim())?;
            if out.len() >= MAX_PREFS_JIDS {
                return Err(StanzaError::with_text(
                    Condition::PolicyViolation,
                    format!("at most {MAX_PREFS_JIDS} JIDs per list"),
                ));
            }
            let jid = jid.to_string();
            if !out.contains(&jid) {
                out.push(jid);
            }
        }
    }
    Ok(out)
}

/// `<prefs/>` get (the stored or default preferences) and set (replace them; the reply
/// carries the preferences as stored, XEP-0441 §2.2).
pub async fn handle(
    server: &ServerState,
    owner: &BareJid,
    set: bool,
    payload: &Element,
) -> Result<Option<Element>, StanzaError> {
    let user = user_of(owner);
    if !set {
        // From the database, refreshing the cache: an account deleted and created again
        // under the same name must not be shown (or keep applying) its predecessor's lists.
        let p = server.storage.archive().prefs_get(user).await?;
        let el = to_element(p.as_ref().unwrap_or(&default_prefs()));
        match p {
            Some(p) => server.archive.prefs.put(user, p),
            None => server.archive.prefs.remove(user),
        }
        return Ok(Some(el));
    }
    let default = payload
        .attr("default")
        .and_then(PrefsDefault::parse)
        .ok_or_else(|| {
            StanzaError::with_text(Condition::BadRequest, "default: always, never or roster")
        })?;
    let p = ArchivePrefs {
        default,
        always: parse_list(payload, "always")?,
        never: parse_list(payload, "never")?,
    };
    server.storage.archive().prefs_set(user, &p).await?;
    let el = to_element(&p);
    server.archive.prefs.put(user, p);
    Ok(Some(el))
}
