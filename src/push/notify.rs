//! Publishing notifications (XEP-0357 §7): what makes a message worth a push, the
//! `urn:xmpp:push:summary` form, and coalescing per registration (`push.min_interval_secs`:
//! one publish per window, with the messages that arrived meanwhile counted in the trailing
//! publish at the window's end).
use jid::{BareJid, Jid};
use minidom::Element;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use super::{NS, NS_DATA, NS_PUBSUB};
use crate::router::Deliver;
use crate::server::ServerState;
use crate::stanza::{random_id, BuilderExt, ElementExt};
use crate::storage::PushRegistration;
use crate::xml::NS_CLIENT;

pub const PUSH_SUMMARY: &str = "urn:xmpp:push:summary";

/// Encrypted payloads that make a body-less message worth a notification (as Prosody's
/// mod_cloud_notify): OMEMO (legacy and :2), OpenPGP for XMPP, legacy PGP.
const ENCRYPTED: &[(&str, &str)] = &[
    ("encrypted", "eu.siacs.conversations.axolotl"),
    ("encrypted", "urn:xmpp:omemo:2"),
    ("openpgp", "urn:xmpp:openpgp:0"),
    ("x", "jabber:x:encrypted"),
];

/// What a notification may tell about the message that triggered it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// The sender's JID as stamped by the server.
    pub sender: Option<String>,
    pub body: Option<String>,
}

/// The summary of a message worth a push (a body, or an encrypted payload); None otherwise
/// (chat states, receipts, markers wake no device).
pub fn summary_of(message: &Element) -> Option<Summary> {
    let body = message
        .get_child("body", NS_CLIENT)
        .map(|b| b.text())
        .filter(|t| !t.is_empty());
    let encrypted = ENCRYPTED.iter().any(|&(n, ns)| message.has_child(n, ns));
    if body.is_none() && !encrypted {
        return None;
    }
    Some(Summary {
        sender: message.attr("from").map(str::to_string),
        body,
    })
}

/// The hook where a message went to offline storage for `to`.
pub fn on_offline_message(server: &Arc<ServerState>, to: &BareJid, message: &Element) {
    if let Some(s) = summary_of(message) {
        notify(server, to, s);
    }
}

/// The hook where a message was delivered live to `to`: if every session of the account is
/// inactive (XEP-0352) or waiting for resumption (XEP-0198), the user will not see it until
/// woken, so the push services are told (Prosody's mod_cloud_notify does the same for
/// hibernating sessions). One read lock when nobody sleeps; the stanza is parsed only then.
pub fn on_live_message(
    server: &Arc<ServerState>,
    from: &jid::Jid,
    to: &BareJid,
    message: &crate::xml::Stanza,
) {
    if !server.router.all_asleep(to.as_str()) {
        return;
    }
    let Ok(mut el) = message.element() else {
        return;
    };
    el.put_attr("from", from.as_str());
    if let Some(s) = summary_of(&el) {
        notify(server, to, s);
    }
}

/// Notify every push registration of `user` about a message it could not get live. Returns
/// at once: the registrations are read and the publishes sent from a spawned task.
pub fn notify(server: &Arc<ServerState>, user: &BareJid, summary: Summary) {
    let server = server.clone();
    let user = user.clone();
    tokio::spawn(async move {
        let Some(node) = user.node() else { return };
        let regs = match server
            .storage
            .push()
            .list((user.domain().as_str(), node.as_str()))
            .await
        {
            Ok(r) => r,
            Err(e) => return tracing::error!(error = %e, "cannot read push registrations"),
        };
        for reg in regs {
            dispatch(&server, &user, reg, &summary);
        }
    });
}

type Key = (String, String, String);

/// Coalescing windows per (user, service, node).
#[derive(Default)]
pub(super) struct Windows(Mutex<HashMap<Key, Window>>);

struct Window {
    last_sent: Instant,
    /// Messages since `last_sent`, to be announced at the window's end.
    coalesced: u32,
    last: Summary,
}

impl Windows {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Window>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl super::PushState {
    /// Drop coalescing state of disabled registrations (all nodes of `service` when `node`
    /// is None), so no trailing notification goes out for them.
    pub fn forget(&self, user: &str, service: &str, node: Option<&str>) {
        self.windows
            .lock()
            .retain(|(u, s, n), _| !(u == user && s == service && node.is_none_or(|x| x == n)));
    }
}

fn dispatch(server: &Arc<ServerState>, user: &BareJid, reg: PushRegistration, summary: &Summary) {
    let interval = Duration::from_secs(server.config.push.min_interval_secs);
    let now = Instant::now();
    let key = (user.to_string(), reg.service.clone(), reg.node.clone());
    {
        let mut map = server.push.windows.lock();
        map.retain(|_, w| w.coalesced > 0 || now.duration_since(w.last_sent) < interval);
        if let Some(w) = map.get_mut(&key) {
            w.coalesced += 1;
            w.last = summary.clone();
            if w.coalesced == 1 {
                let at = w.last_sent + interval;
                tokio::spawn(trailing(server.clone(), user.clone(), key, at));
            }
            return;
        }
        map.insert(
            key,
            Window {
                last_sent: now,
                coalesced: 0,
                last: Summary::default(),
            },
        );
    }
    send(server, user, &reg, 1, summary);
}

/// The end of a window in which messages were coalesced: one publish counting them all,
/// if the registration still exists.
async fn trailing(server: Arc<ServerState>, user: BareJid, key: Key, at: Instant) {
    tokio::time::sleep_until(at).await;
    let (count, summary) = {
        let mut map = server.push.windows.lock();
        let Some(w) = map.get_mut(&key) else { return };
        w.last_sent = Instant::now();
        (
            std::mem::take(&mut w.coalesced),
            std::mem::take(&mut w.last),
        )
    };
    let Some(node) = user.node() else { return };
    let user_ref = (user.domain().as_str(), node.as_str());
    let reg = match server.storage.push().list(user_ref).await {
        Ok(list) => list
            .into_iter()
            .find(|r| r.service == key.1 && r.node == key.2),
        Err(e) => return tracing::error!(error = %e, "cannot read push registrations"),
    };
    if let (Some(reg), true) = (reg, count > 0) {
        send(&server, &user, &reg, count, &summary);
    }
}

/// Send one publish (XEP-0357 §7) from the user's bare JID to the push service: a local
/// full JID (a connected client acting as App Server) directly, any other domain's service
/// over server-to-server (where the Conversations and Monal app servers are).
fn send(
    server: &Arc<ServerState>,
    user: &BareJid,
    reg: &PushRegistration,
    count: u32,
    s: &Summary,
) {
    let Ok(to) = Jid::new(&reg.service) else {
        return;
    };
    let local = server.is_local_domain(to.domain().as_str());
    if local && (to.resource().is_none() || !server.serves(to.domain().as_str())) {
        tracing::debug!(service = %reg.service, "push service unreachable (not a client)");
        return;
    }
    let id = random_id();
    let iq = publish_iq(&id, user.as_str(), reg, count, s, &server.config.push);
    let bytes = crate::xml::to_bytes(&iq);
    // Tracked before sending, so that even an immediate reply finds it.
    let tracked = server
        .push
        .pending
        .track(&id, user.as_str(), reg, &server.config.push);
    let sent = match to.resource() {
        Some(resource) if local => server.router.send_full(
            to.to_bare().as_str(),
            resource.as_str(),
            Deliver::Bytes(bytes),
        ),
        _ => server
            .send_remote(&Jid::from(user.clone()), &to, bytes)
            .is_ok(),
    };
    if !sent {
        tracing::debug!(service = %reg.service, "push service not reachable");
        if tracked {
            server.push.pending.untrack(&id);
        }
    }
}

fn field(var: &str, value: &str) -> Element {
    Element::builder("field", NS_DATA)
        .at("var", var)
        .append(Element::builder("value", NS_DATA).append(value).build())
        .build()
}

/// §7 example 8/9: the publish of one notification, with the registration's publish-options.
pub(super) fn publish_iq(
    id: &str,
    from: &str,
    reg: &PushRegistration,
    count: u32,
    s: &Summary,
    cfg: &crate::config::Push,
) -> Element {
    let mut form = Element::builder("x", NS_DATA)
        .at("type", "submit")
        .append(
            Element::builder("field", NS_DATA)
                .at("var", "FORM_TYPE")
                .at("type", "hidden")
                .append(
                    Element::builder("value", NS_DATA)
                        .append(PUSH_SUMMARY)
                        .build(),
                )
                .build(),
        )
        .append(field("message-count", &count.to_string()));
    if let (true, Some(sender)) = (cfg.include_sender, &s.sender) {
        form = form.append(field("last-message-sender", sender));
    }
    if let (true, Some(body)) = (cfg.include_body, &s.body) {
        form = form.append(field("last-message-body", body));
    }
    let item = Element::builder("item", NS_PUBSUB)
        .append(
            Element::builder("notification", NS)
                .append(form.build())
                .build(),
        )
        .build();
    let mut pubsub = Element::builder("pubsub", NS_PUBSUB).append(
        Element::builder("publish", NS_PUBSUB)
            .at("node", reg.node.as_str())
            .append(item)
            .build(),
    );
    if let Some(options) = reg
        .options
        .as_deref()
        .and_then(|o| o.parse::<Element>().ok())
    {
        pubsub = pubsub.append(
            Element::builder("publish-options", NS_PUBSUB)
                .append(options)
                .build(),
        );
    }
    Element::builder("iq", NS_CLIENT)
        .at("type", "set")
        .at("id", id)
        .at("from", from)
        .at("to", reg.service.as_str())
        .append(pubsub.build())
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn only_bodies_and_encrypted_payloads_are_worth_a_push() {
        let chat = msg("<message xmlns='jabber:client' from='a@x/r'><body>hi</body></message>");
        assert_eq!(
            summary_of(&chat),
            Some(Summary {
                sender: Some("a@x/r".into()),
                body: Some("hi".into())
            })
        );
        let state = msg("<message xmlns='jabber:client'><active \
                         xmlns='http://jabber.org/protocol/chatstates'/></message>");
        assert_eq!(summary_of(&state), None);
        let omemo = msg("<message xmlns='jabber:client'><encrypted \
                         xmlns='eu.siacs.conversations.axolotl'/></message>");
        assert_eq!(summary_of(&omemo).map(|s| s.body), Some(None));
    }

    #[test]
    fn body_and_sender_only_when_configured() {
        let reg = PushRegistration {
            service: "push@x/app".into(),
            node: "n1".into(),
            options: Some(
                "<x xmlns='jabber:x:data' type='submit'><field var='secret'>\
                 <value>s3</value></field></x>"
                    .into(),
            ),
        };
        let s = Summary {
            sender: Some("a@x/r".into()),
            body: Some("secret words".into()),
        };
        let mut cfg = crate::config::Push::default();
        let text = |cfg: &crate::config::Push| {
            String::from_utf8(
                crate::xml::to_bytes(&publish_iq("i", "u@x", &reg, 3, &s, cfg)).to_vec(),
            )
            .unwrap()
        };
        let quiet = text(&cfg);
        assert!(
            quiet.contains("urn:xmpp:push:summary") && quiet.contains(">3<"),
            "{quiet}"
        );
        assert!(
            !quiet.contains("secret words") && !quiet.contains("a@x/r"),
            "{quiet}"
        );
        assert!(
            quiet.contains("publish-options") && quiet.contains("s3"),
            "{quiet}"
        );
        cfg.include_body = true;
        cfg.include_sender = true;
        let loud = text(&cfg);
        assert!(
            loud.contains("secret words") && loud.contains("a@x/r"),
            "{loud}"
        );
    }
}
