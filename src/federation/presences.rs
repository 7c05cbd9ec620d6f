//! What this server knows of other domains' users' resources: the last available presence
//! each sent to a local contact (RFC 6121 §4.4.3), kept while available so PEP (XEP-0163)
//! can address its notifications to the resources whose XEP-0115 caps ask for them, the
//! way the router's registry serves local contacts.
//!
//! Bounded: only presence from a JID in the recipient's roster with a subscription to it
//! is kept (so the rosters bound the accounts), and at most `limits.max_resources`
//! resources per account (a local account's own bound).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::xml::Stanza;

#[derive(Default)]
pub struct RemotePresences(Mutex<HashMap<String, Vec<(String, Stanza)>>>);

impl RemotePresences {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(String, Stanza)>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record (Some) or forget (None) the presence of `bare/resource`.
    pub fn set(&self, bare: &str, resource: &str, presence: Option<Stanza>, max: usize) {
        let mut map = self.lock();
        let list = map.entry(bare.to_string()).or_default();
        list.retain(|(r, _)| r != resource);
        if let Some(p) = presence {
            if list.len() < max.max(1) {
                list.push((resource.to_string(), p));
            }
        }
        if list.is_empty() {
            map.remove(bare);
        }
    }

    /// The available resources of `bare` with their last presence.
    pub fn resources(&self, bare: &str) -> Vec<(String, Stanza)> {
        self.lock().get(bare).cloned().unwrap_or_default()
    }
}
