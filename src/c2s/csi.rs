//! XEP-0352 Client State Indication: while a client says it is `<inactive/>`, stanzas it does
//! not need at once are held back (and presence coalesced: the latest per sender wins), so a
//! phone's radio is not woken for every status change. Anything important is delivered at
//! once, after the held stanzas, so order is preserved. `<active/>` flushes everything.
//!
//! "Important" follows Prosody's mod_csi_simple: presence (available/unavailable), headlines,
//! groupchat subject changes and messages carrying only chat states, receipts and similar
//! metadata can wait; messages with a body, encrypted payloads, chat markers, call proposals,
//! IQs and anything else go out immediately.

use bytes::Bytes;
use minidom::Element;
use std::collections::VecDeque;
use std::sync::Arc;

use crate::xml::{NsContext, Stanza, NS_CLIENT};

pub const NS: &str = "urn:xmpp:csi:0";

/// Payload namespaces that never make a message important on their own.
const NOISE: &[&str] = &[
    "http://jabber.org/protocol/chatstates",
    "urn:xmpp:receipts",
    "urn:xmpp:sid:0",
    "urn:xmpp:hints",
    "urn:xmpp:delay",
    "jabber:x:delay",
];

/// Payloads that are always important (they cannot be judged by a body).
const IMPORTANT: &[(&str, &str)] = &[
    ("encrypted", "eu.siacs.conversations.axolotl"),
    ("encrypted", "urn:xmpp:omemo:2"),
    ("x", "jabber:x:encrypted"),
    ("openpgp", "urn:xmpp:openpgp:0"),
    ("propose", "urn:xmpp:jingle-message:0"),
];

const NS_CARBONS: &str = "urn:xmpp:carbons:2";
const NS_FORWARD: &str = "urn:xmpp:forward:0";
const NS_MARKERS: &str = "urn:xmpp:chat-markers:0";

/// How an outgoing stanza is treated while the client is inactive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Deliver now (after flushing what is held).
    Important,
    /// Hold; a later presence from the same sender replaces it.
    Presence(String),
    /// Hold.
    Unimportant,
}

pub fn classify(bytes: &Bytes) -> Class {
    let ctx = Arc::new(NsContext {
        default_ns: Some(NS_CLIENT.into()),
        prefixes: Vec::new(),
    });
    let Ok(st) = Stanza::parse(bytes.clone(), ctx) else {
        return Class::Important;
    };
    match st.name.as_str() {
        "presence" if matches!(st.type_.as_deref(), None | Some("unavailable")) => {
            Class::Presence(st.from.unwrap_or_default())
        }
        "message" => match st.element() {
            Ok(el) if !message_is_important(&el) => Class::Unimportant,
            _ => Class::Important,
        },
        _ => Class::Important,
    }
}

fn message_is_important(el: &Element) -> bool {
    // XEP-0280 carbons: judge the copied message.
    let inner = ["sent", "received"].iter().find_map(|w| {
        el.get_child(w, NS_CARBONS)
            .and_then(|c| c.get_child("forwarded", NS_FORWARD))
            .and_then(|f| f.get_child("message", NS_CLIENT))
    });
    let el = inner.unwrap_or(el);
    match el.attr("type") {
        Some("headline") => return false,
        Some("error") => return true,
        _ => {}
    }
    if el.get_child("subject", NS_CLIENT).is_some() && el.attr("type") == Some("groupchat") {
        return false;
    }
    el.children().any(|c| {
        let ns = c.ns();
        if IMPORTANT.iter().any(|(n, s)| c.is(*n, *s)) || ns == NS_MARKERS {
            return true;
        }
        if ns == NS_CLIENT {
            return c.name() == "body" && !c.text().trim().is_empty();
        }
        !NOISE.contains(&ns.as_str())
    })
}

/// Stanzas held while the client is inactive.
#[derive(Debug, Default)]
pub struct CsiState {
    held: VecDeque<(Option<String>, Bytes)>,
}

impl CsiState {
    /// Hold an unimportant stanza; a presence replaces the held one from the same sender
    /// (moving to the back, so it stays after whatever that sender sent before it). True
    /// when the queue has reached `max` and must be flushed.
    pub fn hold(&mut self, class: Class, bytes: Bytes, max: usize) -> bool {
        let key = match class {
            Class::Presence(from) => {
                self.held
                    .retain(|(k, _)| k.as_deref() != Some(from.as_str()));
                Some(from)
            }
            _ => None,
        };
        self.held.push_back((key, bytes));
        self.held.len() >= max.max(1)
    }

    /// Everything held, in order.
    pub fn take(&mut self) -> impl Iterator<Item = Bytes> {
        std::mem::take(&mut self.held).into_iter().map(|(_, b)| b)
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> Class {
        classify(&Bytes::from(s.to_string()))
    }

    #[test]
    fn important_follows_mod_csi_simple() {
        assert_eq!(
            class("<presence from='a@x/r'/>"),
            Class::Presence("a@x/r".into())
        );
        assert_eq!(
            class("<presence from='a@x/r' type='unavailable'/>"),
            Class::Presence("a@x/r".into())
        );
        assert_eq!(
            class("<presence from='a@x' type='subscribe'/>"),
            Class::Important
        );
        assert_eq!(
            class("<message><body>hi</body></message>"),
            Class::Important
        );
        assert_eq!(
            class("<message type='groupchat'><body>hi</body></message>"),
            Class::Important
        );
        assert_eq!(
            class("<message><body> </body></message>"),
            Class::Unimportant
        );
        assert_eq!(
            class("<message type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"),
            Class::Unimportant
        );
        assert_eq!(
            class("<message><received xmlns='urn:xmpp:receipts' id='1'/></message>"),
            Class::Unimportant
        );
        assert_eq!(
            class("<message type='headline'><body>news</body></message>"),
            Class::Unimportant
        );
        assert_eq!(
            class("<message type='groupchat'><subject>t</subject></message>"),
            Class::Unimportant
        );
        assert_eq!(
            class("<message><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>"),
            Class::Important
        );
        assert_eq!(
            class("<message><displayed xmlns='urn:xmpp:chat-markers:0' id='1'/></message>"),
            Class::Important
        );
        assert_eq!(
            class("<message><reactions xmlns='urn:xmpp:reactions:0' id='1'/></message>"),
            Class::Important
        );
        assert_eq!(class("<iq type='get' id='1'/>"), Class::Important);
        let carbon = "<message><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'><active xmlns='http://jabber.org/protocol/chatstates'/></message></forwarded></received></message>";
        assert_eq!(class(carbon), Class::Unimportant);
    }

    #[test]
    fn presence_is_coalesced_per_sender_and_the_queue_is_bounded() {
        let mut c = CsiState::default();
        let b = |s: &str| Bytes::from(s.to_string());
        assert!(!c.hold(Class::Presence("a".into()), b("1"), 4));
        assert!(!c.hold(Class::Unimportant, b("2"), 4));
        assert!(!c.hold(Class::Presence("b".into()), b("3"), 4));
        assert!(!c.hold(Class::Presence("a".into()), b("4"), 4));
        assert_eq!(c.len(), 3);
        assert!(c.hold(Class::Unimportant, b("5"), 4));
        let got: Vec<Bytes> = c.take().collect();
        assert_eq!(got, vec![b("2"), b("3"), b("4"), b("5")]);
        assert!(c.is_empty());
    }
}
