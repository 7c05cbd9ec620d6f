//! Notifications awaiting the push service's reply. XEP-0357 §7.1: an error reply disables
//! that (service, node) registration; like Prosody we keep it on `type='wait'` errors, which
//! are transient by definition (RFC 6120 §8.3.2). Entries are forgotten after
//! `push.response_timeout_secs`; at most `push.max_pending` are tracked server-wide.
use jid::Jid;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use crate::server::ServerState;
use crate::storage::PushRegistration;
use crate::xml::{Stanza, NS_CLIENT};

struct Entry {
    user: String,
    service: String,
    node: String,
    sent: Instant,
}

#[derive(Default)]
pub(super) struct Pending(Mutex<HashMap<String, Entry>>);

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remember a sent publish; false when the table is full (the reply is then ignored).
    pub(super) fn track(
        &self,
        id: &str,
        user: &str,
        reg: &PushRegistration,
        cfg: &crate::config::Push,
    ) -> bool {
        let timeout = Duration::from_secs(cfg.response_timeout_secs);
        let now = Instant::now();
        let mut m = self.lock();
        if m.len() >= cfg.max_pending {
            m.retain(|_, e| now.duration_since(e.sent) < timeout);
            if m.len() >= cfg.max_pending {
                return false;
            }
        }
        m.insert(
            id.to_string(),
            Entry {
                user: user.to_string(),
                service: reg.service.clone(),
                node: reg.node.clone(),
                sent: now,
            },
        );
        true
    }

    pub(super) fn untrack(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// An IQ result or error addressed to an account's bare JID (or the server): if it answers
/// one of our publishes, from the service it went to, settle it. Called by the IQ routing for
/// every such response; only a hash lookup unless it matches. An error is settled before this
/// returns (the registration is disabled), so the push service's next stanza sees it done.
pub async fn on_iq_response(server: &Arc<ServerState>, responder: &Jid, to: &Jid, st: &Stanza) {
    let Some(id) = st.id.as_deref() else { return };
    let entry = {
        let mut m = server.push.pending.lock();
        let ours = m.get(id).is_some_and(|e| {
            e.user == to.as_str()
                && (e.service == responder.as_str() || e.service == responder.to_bare().as_str())
        });
        if !ours {
            return;
        }
        match m.remove(id) {
            Some(e) => e,
            None => return,
        }
    };
    let timeout = Duration::from_secs(server.config.push.response_timeout_secs);
    if st.type_.as_deref() != Some("error") || entry.sent.elapsed() >= timeout {
        return;
    }
    let error_type = st.element().ok().and_then(|el| {
        el.get_child("error", NS_CLIENT)
            .and_then(|e| e.attr("type").map(str::to_string))
    });
    if error_type.as_deref() == Some("wait") {
        tracing::debug!(service = %entry.service, "push service busy; registration kept");
        return;
    }
    let Ok(user) = jid::BareJid::new(&entry.user) else {
        return;
    };
    let Some(node) = user.node() else { return };
    let user_ref = (user.domain().as_str(), node.as_str());
    match server
        .storage
        .push()
        .disable(user_ref, &entry.service, Some(&entry.node))
        .await
    {
        Ok(_) => tracing::info!(
            user = %entry.user,
            service = %entry.service,
            "push service answered with an error; registration disabled"
        ),
        Err(e) => tracing::error!(error = %e, "cannot disable push registration"),
    }
    server
        .push
        .forget(&entry.user, &entry.service, Some(&entry.node));
}
