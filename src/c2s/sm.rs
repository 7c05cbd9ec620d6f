//! XEP-0198 Stream Management: the per-stream state (counters and the queue of unacknowledged
//! stanzas) without any I/O, and the registry of resumable sessions.
//!
//! The state is boxed in an `Option` on the session so a stream that never enables stream
//! management pays one pointer for it. Counters are `u32` and wrap at 2^32 as §4 requires; all
//! comparisons go through `wrapping_sub` so the wrap is invisible to the arithmetic.
//!
//! Resumption (§5) hands the *new* connection over to the task that still owns the old
//! session: the registry maps an unguessable SM-ID (bound to the account that enabled it) to a
//! channel into that task, which swaps the new transport in and carries on. The session's
//! state therefore never moves between tasks, and a session that is still connected when it is
//! resumed (its old TCP connection not yet noticed dead) is taken over the same way.

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::mpsc;

use super::Conn;
use crate::router::Mailbox;
use std::sync::Arc;

pub const NS: &str = "urn:xmpp:sm:3";

/// Advertises `<sm/>` (XEP-0198) and `<csi/>` (XEP-0352) once the client is authenticated.
pub struct StreamFeatures;

impl crate::modules::Module for StreamFeatures {
    fn name(&self) -> &'static str {
        "stream management and client state indication"
    }
    fn stream_features(
        &self,
        _server: &crate::server::ServerState,
        authenticated: bool,
    ) -> Vec<minidom::Element> {
        if !authenticated {
            return Vec::new();
        }
        vec![
            minidom::Element::builder("sm", NS).build(),
            minidom::Element::builder("csi", super::csi::NS).build(),
        ]
    }
}

/// The peer acknowledged more stanzas than it was sent (§6: handled-count-too-high).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooHigh {
    pub h: u32,
    pub sent: u32,
}

impl TooHigh {
    /// The application-specific condition for the `undefined-condition` stream error.
    pub fn element(&self) -> String {
        format!(
            "<handled-count-too-high xmlns='{NS}' h='{}' send-count='{}'/>",
            self.h, self.sent
        )
    }

    pub fn text(&self) -> String {
        format!(
            "You acknowledged {} stanzas, but I only sent you {} so far.",
            self.h, self.sent
        )
    }
}

/// A new connection asking to resume the session that owns this handoff's receiver.
pub struct Handoff {
    /// The authenticated connection, parser and all; its old task no longer touches it.
    pub conn: Box<Conn>,
    /// The client's 'h' from `<resume/>`.
    pub h: u32,
    /// Set when the resumption was requested inside a SASL2 `<authenticate/>`.
    pub inline: Option<Box<InlineResume>>,
}

/// XEP-0388/XEP-0198 inline resumption: `<resumed/>` goes inside this SASL2 `<success/>`,
/// which the resumed session writes, followed by the stream features (no stream restart).
pub struct InlineResume {
    pub success: minidom::Element,
    pub features: Vec<u8>,
}

/// What a resumable session keeps: its SM-ID and the receiving end of its handoff channel.
pub struct Resumable {
    pub id: String,
    pub rx: mpsc::Receiver<Box<Handoff>>,
}

/// Stream management state of one session.
pub struct SmState {
    /// Stanzas received from the client since `<enable/>`: the 'h' we report.
    pub inbound: u32,
    /// Stanzas sent since `<enabled/>` (acknowledged or not).
    pub sent: u32,
    /// The last 'h' the client acknowledged.
    pub acked: u32,
    /// Sent but not yet acknowledged, oldest first: `sent - acked == unacked.len()`.
    pub unacked: VecDeque<Bytes>,
    /// Stanzas sent since our last `<r/>`.
    pub since_request: u32,
    /// How much of the connection's output buffer is already counted: bytes past this mark
    /// were written by handlers and are split into stanzas before they go out.
    pub counted: usize,
    pub resume: Option<Resumable>,
    /// Resumption timeout granted in `<enabled max=…/>`, seconds.
    pub timeout_secs: u64,
    /// A resumption that arrived while the session was still connected (takeover).
    pub takeover: Option<Box<Handoff>>,
}

impl SmState {
    pub fn new(resume: Option<Resumable>) -> SmState {
        SmState {
            inbound: 0,
            sent: 0,
            acked: 0,
            unacked: VecDeque::new(),
            since_request: 0,
            counted: 0,
            resume,
            timeout_secs: 0,
            takeover: None,
        }
    }

    /// A stanza from the client was handled.
    pub fn handled(&mut self) {
        self.inbound = self.inbound.wrapping_add(1);
    }

    /// A stanza goes out to the client.
    pub fn sent(&mut self, stanza: Bytes) {
        self.unacked.push_back(stanza);
        self.sent = self.sent.wrapping_add(1);
        self.since_request = self.since_request.saturating_add(1);
    }

    /// Apply an 'h' from `<a/>` or `<resume/>`: drop what it acknowledges. An 'h' behind the
    /// last one (a stale ack) changes nothing; one beyond what was sent is an error.
    pub fn ack(&mut self, h: u32) -> Result<(), TooHigh> {
        let newly = h.wrapping_sub(self.acked);
        if newly as usize <= self.unacked.len() {
            self.unacked.drain(..newly as usize);
            self.acked = h;
            return Ok(());
        }
        // Within half the counter space behind: an old value, not an overflow.
        if self.acked.wrapping_sub(h) <= u32::MAX / 2 {
            return Ok(());
        }
        Err(TooHigh { h, sent: self.sent })
    }
}

/// Live resumable sessions by SM-ID.
#[derive(Default)]
pub struct Registry {
    map: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    /// The bare JID that enabled the session: only it may resume.
    owner: String,
    tx: mpsc::Sender<Box<Handoff>>,
    /// Woken after a handoff is queued (the session polls its channel then).
    mailbox: Arc<Mailbox>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh SM-ID for `owner`: 128 random bits, so it cannot be guessed.
    pub fn register(&self, owner: &str, mailbox: Arc<Mailbox>) -> Resumable {
        use base64::Engine;
        let id =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
        let (tx, rx) = mpsc::channel(1);
        self.lock().insert(
            id.clone(),
            Entry {
                owner: owner.to_string(),
                tx,
                mailbox,
            },
        );
        Resumable { id, rx }
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Hand a connection to the session `id` if `owner` enabled it. Gives the handoff back
    /// when there is no such session (unknown, expired, another account's, or busy).
    pub fn hand_over(&self, id: &str, owner: &str, h: Box<Handoff>) -> Result<(), Box<Handoff>> {
        let (tx, mailbox) = match self.lock().get(id) {
            Some(e) if e.owner == owner => (e.tx.clone(), e.mailbox.clone()),
            _ => return Err(h),
        };
        tx.try_send(h).map_err(|e| match e {
            mpsc::error::TrySendError::Full(h) | mpsc::error::TrySendError::Closed(h) => h,
        })?;
        mailbox.wake();
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Split serialized top-level elements (what handlers append to a session's output) into one
/// `Bytes` per stanza, skipping whitespace between them. The input is our own well-formed
/// output, but it may carry raw client bytes, so quotes, comments and CDATA are respected.
pub fn split_stanzas(buf: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < buf.len() {
        if buf[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let mut depth = 0usize;
        loop {
            let Some(lt) = buf[i..].iter().position(|&c| c == b'<') else {
                i = buf.len();
                break;
            };
            i += lt;
            let rest = &buf[i..];
            if rest.starts_with(b"<!--") {
                i = skip_past(buf, i, b"-->");
                continue;
            }
            if rest.starts_with(b"<![CDATA[") {
                i = skip_past(buf, i, b"]]>");
                continue;
            }
            if rest.starts_with(b"<?") {
                i = skip_past(buf, i, b"?>");
                continue;
            }
            let closing = rest.starts_with(b"</");
            let end = tag_end(buf, i);
            let empty = end >= 2 && buf[end - 2] == b'/';
            i = end;
            if closing {
                depth = depth.saturating_sub(1);
            } else if !empty {
                depth += 1;
            }
            if depth == 0 || i >= buf.len() {
                break;
            }
        }
        out.push(Bytes::copy_from_slice(&buf[start..i]));
    }
    out
}

/// Index just past `pat` at or after `from` (or the end).
fn skip_past(buf: &[u8], from: usize, pat: &[u8]) -> usize {
    buf[from..]
        .windows(pat.len())
        .position(|w| w == pat)
        .map(|p| from + p + pat.len())
        .unwrap_or(buf.len())
}

/// Index just past the `>` closing the tag that starts at `from`, ignoring quoted `>`.
fn tag_end(buf: &[u8], from: usize) -> usize {
    let mut quote = None;
    for (k, &c) in buf[from..].iter().enumerate() {
        match (quote, c) {
            (None, b'"' | b'\'') => quote = Some(c),
            (Some(q), _) if q == c => quote = None,
            (None, b'>') => return from + k + 1,
            _ => {}
        }
    }
    buf.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(n: u32) -> Bytes {
        Bytes::from(format!("<message id='{n}'/>"))
    }

    #[test]
    fn acks_drop_what_they_acknowledge() {
        let mut s = SmState::new(None);
        for n in 0..5 {
            s.sent(st(n));
        }
        assert_eq!(s.ack(2), Ok(()));
        assert_eq!(s.unacked.len(), 3);
        assert_eq!(s.unacked[0], st(2));
        // A repeated or stale ack changes nothing.
        assert_eq!(s.ack(2), Ok(()));
        assert_eq!(s.ack(1), Ok(()));
        assert_eq!(s.unacked.len(), 3);
        assert_eq!(s.ack(6), Err(TooHigh { h: 6, sent: 5 }));
        assert_eq!(s.ack(5), Ok(()));
        assert!(s.unacked.is_empty());
    }

    #[test]
    fn counters_wrap_at_2_pow_32() {
        let mut s = SmState::new(None);
        s.sent = u32::MAX - 1;
        s.acked = u32::MAX - 1;
        s.inbound = u32::MAX;
        s.handled();
        assert_eq!(s.inbound, 0);
        for n in 0..4 {
            s.sent(st(n));
        }
        assert_eq!(s.sent, 2);
        assert_eq!(s.ack(u32::MAX), Ok(()));
        assert_eq!(s.unacked.len(), 3);
        assert_eq!(s.ack(1), Ok(()));
        assert_eq!(s.unacked.len(), 1);
        assert_eq!(s.unacked[0], st(3));
        assert_eq!(s.ack(3), Err(TooHigh { h: 3, sent: 2 }));
        assert_eq!(s.ack(2), Ok(()));
        assert!(s.unacked.is_empty());
    }

    #[test]
    fn splits_handler_output_into_stanzas() {
        let buf = b" <iq id='1' type='result'/><message a='x>y' b=\"/>\"><body>a &lt; b<![CDATA[</message>]]></body><!-- </message> --></message>\n<presence><x><y/></x></presence> ";
        let parts = split_stanzas(buf);
        let parts: Vec<&[u8]> = parts.iter().map(|b| b.as_ref()).collect();
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert_eq!(parts[0], b"<iq id='1' type='result'/>");
        assert!(parts[1].starts_with(b"<message a='x>y'"));
        assert!(parts[1].ends_with(b"--></message>"));
        assert_eq!(parts[2], b"<presence><x><y/></x></presence>");
        assert!(split_stanzas(b"  ").is_empty());
    }

    /// The API other features (push) read: inactive (CSI) or detached (SM) sessions.
    #[test]
    fn client_state_flags() {
        use crate::router::{SessionHandle, DETACHED, INACTIVE};
        let h = SessionHandle::new(1, 4);
        assert!(!h.is_inactive_or_detached());
        h.set_client_state(INACTIVE, true);
        h.set_client_state(DETACHED, true);
        assert!(h.is_inactive() && h.is_detached());
        h.set_client_state(INACTIVE, false);
        assert!(!h.is_inactive() && h.is_detached() && h.is_inactive_or_detached());
        h.set_client_state(DETACHED, false);
        assert!(!h.is_inactive_or_detached());
    }

    #[test]
    fn only_the_owner_can_resume() {
        let r = Registry::default();
        let mb = Arc::new(Mailbox::new(4));
        let res = r.register("a@x", mb.clone());
        assert_eq!(res.id.len(), 22);
        let other = r.register("a@x", mb);
        assert_ne!(res.id, other.id);
        r.remove(&other.id);
        assert_eq!(r.len(), 1);
        drop(res.rx);
        assert!(r.lock().get(&res.id).is_some_and(|e| e.owner == "a@x"));
    }
}
