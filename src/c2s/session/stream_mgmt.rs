//! The session side of XEP-0198 (Stream Management) and XEP-0352 (Client State Indication):
//! their nonzas, stanza counting on everything the session writes, detaching a resumable
//! session when its connection drops, resumption and takeover, and what happens to stanzas
//! that were never acknowledged. The protocol state lives in `c2s::sm` / `c2s::csi`; this
//! file is the glue to [`Session`], kept apart so the session loop stays readable.
//!
//! Counting: every stanza the session writes must be counted (the client's 'h' counts all it
//! receives), but handlers append serialized bytes to the output buffer. Routed stanzas are
//! counted as they are written; handler output is split into stanzas (`sm::split_stanzas`)
//! just before anything else is written or the buffer is flushed, using a mark of how much of
//! the buffer is already counted. Nonzas are written after that accounting, so never counted.

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

use super::Session;
use crate::c2s::csi::{self, Class};
use crate::c2s::sm::{self, Handoff, SmState};
use crate::c2s::{Conn, End, Transport};
use crate::router::{Deliver, DETACHED, INACTIVE};
use crate::stanza::{error_reply, BuilderExt, Condition, StanzaError};
use crate::xml::{self, NsContext, Stanza, NS_CLIENT};

fn failed(condition: &str) -> String {
    format!(
        "<failed xmlns='{}'><{condition} xmlns='{}'/></failed>",
        sm::NS,
        crate::stanza::NS_STANZAS
    )
}

/// `<resume/>` on a new, authenticated stream (before binding): hand the connection to the
/// session it names. True when handed over (the caller's task must then leave it alone);
/// otherwise `<failed/>` is queued and the client may bind normally.
pub fn request_resume(conn: &mut Conn, st: &Stanza, user: &str) -> bool {
    let el = st.element().ok();
    match try_resume(conn, el.as_ref(), user, None) {
        Ok(()) => true,
        Err((_, condition)) => {
            conn.write_bytes(failed(condition).as_bytes());
            false
        }
    }
}

/// Hand the connection to the session a `<resume/>` names. On failure the connection stays
/// here and the XEP-0198 `<failed/>` condition is returned with the inline state.
#[allow(clippy::type_complexity)]
pub(crate) fn try_resume(
    conn: &mut Conn,
    el: Option<&minidom::Element>,
    user: &str,
    inline: Option<Box<sm::InlineResume>>,
) -> Result<(), (Option<Box<sm::InlineResume>>, &'static str)> {
    let previd = el.and_then(|e| e.attr("previd")).map(str::to_string);
    let h = el
        .and_then(|e| e.attr("h"))
        .and_then(|h| h.parse::<u32>().ok());
    let owner = jid::BareJid::new(&format!("{user}@{}", conn.domain));
    let (Some(previd), Some(h), Ok(owner)) = (previd, h, owner) else {
        return Err((inline, "bad-request"));
    };
    let state = conn.state.clone();
    let handoff = Box::new(Handoff {
        conn: Box::new(conn.take()),
        h,
        inline,
    });
    match state.sm.hand_over(&previd, owner.as_str(), handoff) {
        Ok(()) => Ok(()),
        Err(back) => {
            let back = *back;
            *conn = *back.conn;
            Err((back.inline, "item-not-found"))
        }
    }
}

/// The XEP-0198 `<failed/>` nonza for a condition, as an element (XEP-0386 puts it inside
/// `<bound/>` or SASL2 `<success/>`).
pub(crate) fn failed_el(condition: &str) -> minidom::Element {
    minidom::Element::builder("failed", sm::NS)
        .append(minidom::Element::builder(condition, crate::stanza::NS_STANZAS).build())
        .build()
}

/// Enable stream management for a session of `bare` (`<enable/>` attributes in `el`):
/// the new state and the `<enabled/>` answer.
pub(crate) fn new_sm(
    server: &crate::server::ServerState,
    bare: &jid::BareJid,
    mailbox: &std::sync::Arc<crate::router::Mailbox>,
    el: Option<&minidom::Element>,
) -> (Box<SmState>, minidom::Element) {
    let attr = |name: &str| el.and_then(|e| e.attr(name)).map(str::to_string);
    let wants_resume = matches!(attr("resume").as_deref(), Some("true" | "1"));
    let cfg = &server.config.sm;
    let max = attr("max")
        .and_then(|m| m.parse::<u64>().ok())
        .map_or(cfg.resume_timeout_secs, |m| m.min(cfg.resume_timeout_secs));
    let resume =
        (wants_resume && max > 0).then(|| server.sm.register(bare.as_str(), mailbox.clone()));
    let enabled = match &resume {
        Some(r) => minidom::Element::builder("enabled", sm::NS)
            .at("id", r.id.as_str())
            .at("resume", "true")
            .at("max", max.to_string())
            .build(),
        None => minidom::Element::builder("enabled", sm::NS).build(),
    };
    let mut state = Box::new(SmState::new(resume));
    state.timeout_secs = max;
    (state, enabled)
}

/// Before binding, `<enable/>` is out of order (§3) and nothing else of ours applies.
pub fn preauth_nonza(conn: &mut Conn) {
    conn.write_bytes(failed("unexpected-request").as_bytes());
}

impl Session<'_> {
    /// An SM or CSI nonza from the client.
    pub(super) fn nonza(&mut self, st: &Stanza) -> Result<(), End> {
        match (st.ns.as_str(), st.name.as_str()) {
            (sm::NS, "enable") => self.enable(st),
            (sm::NS, "r") => {
                let answer = match self.sm.as_deref() {
                    Some(sm) => format!("<a xmlns='{}' h='{}'/>", sm::NS, sm.inbound),
                    None => failed("unexpected-request"),
                };
                self.write_nonza(&answer);
            }
            (sm::NS, "a") => {
                let h = st
                    .element()
                    .ok()
                    .and_then(|e| e.attr("h").and_then(|h| h.parse::<u32>().ok()));
                let Some(h) = h else {
                    return Err(End::Error(
                        "bad-format",
                        Some("<a/> without a valid h".into()),
                    ));
                };
                self.account();
                if let Some(sm) = self.sm.as_deref_mut() {
                    sm.ack(h).map_err(|e| {
                        End::ErrorApp("undefined-condition", e.element(), Some(e.text()))
                    })?;
                }
            }
            (sm::NS, "resume") => self.write_nonza(&failed("unexpected-request")),
            (csi::NS, "inactive") => {
                if self.csi.is_none() {
                    self.csi = Some(Box::default());
                    self.handle.set_client_state(INACTIVE, true);
                }
            }
            (csi::NS, "active") => self.csi_active(),
            _ => {
                return Err(End::Error(
                    "unsupported-stanza-type",
                    Some(format!("<{}/> in {}", st.name, st.ns)),
                ))
            }
        }
        Ok(())
    }

    fn enable(&mut self, st: &Stanza) {
        if self.sm.is_some() {
            return self.write_nonza(&failed("unexpected-request"));
        }
        let el = st.element().ok();
        let (mut state, enabled) = new_sm(
            &self.conn.state,
            &self.bare,
            &self.handle.mailbox,
            el.as_ref(),
        );
        self.write_nonza(&String::from_utf8_lossy(&xml::to_bytes(&enabled)));
        state.counted = self.conn.out.len();
        self.sm = Some(state);
    }

    /// Count what handlers appended to the output since the last mark.
    pub(super) fn account(&mut self) {
        let Some(sm) = self.sm.as_deref_mut() else {
            return;
        };
        let out = &self.conn.out;
        if sm.counted < out.len() {
            for st in sm::split_stanzas(&out[sm.counted..]) {
                sm.sent(st);
            }
        }
        sm.counted = out.len();
    }

    fn write_nonza(&mut self, s: &str) {
        self.account();
        self.conn.write_bytes(s.as_bytes());
        if let Some(sm) = self.sm.as_deref_mut() {
            sm.counted = self.conn.out.len();
        }
    }

    /// A stanza from the client is being handled (it counts towards our 'h').
    pub(super) fn handled(&mut self) {
        if let Some(sm) = self.sm.as_deref_mut() {
            sm.handled();
        }
    }

    /// A routed stanza for the client: held while inactive unless important, counted.
    pub(super) fn emit(&mut self, b: Bytes) {
        if let Some(c) = self.csi.as_deref_mut() {
            let class = csi::classify(&b);
            if class != Class::Important {
                let max = self.conn.state.config.csi.max_held;
                if c.hold(class, b, max) {
                    self.csi_flush();
                }
                return;
            }
            self.csi_flush();
        }
        self.write_stanza(b);
    }

    fn write_stanza(&mut self, b: Bytes) {
        self.account();
        self.conn.write_bytes(&b);
        if let Some(sm) = self.sm.as_deref_mut() {
            sm.sent(b);
            sm.counted = self.conn.out.len();
        }
    }

    fn csi_flush(&mut self) {
        let held: Vec<Bytes> = match self.csi.as_deref_mut() {
            Some(c) => c.take().collect(),
            None => return,
        };
        for b in held {
            self.write_stanza(b);
        }
    }

    /// `<active/>`, or a new stream (XEP-0352 §5: resumption does not restore the state).
    fn csi_active(&mut self) {
        self.csi_flush();
        self.csi = None;
        self.handle.set_client_state(INACTIVE, false);
    }

    /// Before a flush: count, enforce the unacked limit, request an ack when due.
    pub(super) fn before_flush(&mut self) -> Result<(), End> {
        self.account();
        let cfg = &self.conn.state.config.sm;
        let Some(sm) = self.sm.as_deref_mut() else {
            return Ok(());
        };
        if sm.unacked.len() > cfg.max_unacked {
            // Not resumable any more: the session ends and its unacked messages go offline.
            if let Some(r) = sm.resume.take() {
                self.conn.state.sm.remove(&r.id);
            }
            return Err(End::Error(
                "resource-constraint",
                Some("too many unacknowledged stanzas".into()),
            ));
        }
        if sm.since_request >= cfg.request_ack_after.max(1) {
            self.request_ack();
        }
        Ok(())
    }

    fn request_ack(&mut self) {
        self.write_nonza(&format!("<r xmlns='{}'/>", sm::NS));
        if let Some(sm) = self.sm.as_deref_mut() {
            sm.since_request = 0;
        }
    }

    /// The output went out: the counted mark restarts with the empty buffer.
    pub(super) fn flushed(&mut self) {
        if let Some(sm) = self.sm.as_deref_mut() {
            sm.counted = 0;
        }
    }

    /// About to go idle: request an ack for what went out since the last request. True
    /// when something was written (the caller flushes it first).
    pub(super) fn before_idle(&mut self) -> bool {
        let when_idle = self.conn.state.config.sm.request_ack_when_idle;
        match self.sm.as_deref() {
            Some(sm) if when_idle && sm.since_request > 0 && !sm.unacked.is_empty() => {
                self.request_ack();
                true
            }
            _ => false,
        }
    }

    /// A resumption handed to this session while it is connected (§5 takeover): kept for
    /// `after_loop`. Polled when the session is woken (see `sm::Registry::hand_over`), so
    /// an idle session waits on nothing more than before.
    pub(super) fn take_handoff(&mut self) -> bool {
        let Some(sm) = self.sm.as_deref_mut() else {
            return false;
        };
        match sm.resume.as_mut().map(|r| r.rx.try_recv()) {
            Some(Ok(h)) => {
                sm.takeover = Some(h);
                true
            }
            _ => false,
        }
    }

    /// A resumption for a detached session; pending forever without a resumable session.
    async fn next_handoff(sm: &mut Option<Box<SmState>>) -> Box<Handoff> {
        if let Some(r) = sm.as_deref_mut().and_then(|s| s.resume.as_mut()) {
            if let Some(h) = r.rx.recv().await {
                return h;
            }
        }
        std::future::pending().await
    }

    /// The session loop ended. Ok: the session was resumed on a new connection and goes on;
    /// Err: it is over, for this reason. A resumable session whose connection dropped (no
    /// `</stream>`) waits here, bound and queueing, for a resumption or its timeout.
    pub(super) async fn after_loop(&mut self, end: End) -> Result<(), End> {
        let Some(sm) = self.sm.as_deref_mut() else {
            return Err(end);
        };
        if let Some(h) = sm.takeover.take() {
            return self.resume(h).await;
        }
        let dropped = matches!(end, End::PeerClosed | End::Io)
            || matches!(end, End::Error("connection-timeout", _));
        if sm.resume.is_none() || self.closed_cleanly || !dropped {
            return Err(end);
        }
        self.account();
        self.conn.out.clear();
        self.flushed();
        self.conn.io = Transport::Gone;
        self.handle.set_client_state(DETACHED, true);
        tracing::info!(jid = %self.jid, "connection lost; session kept for resumption");
        let r = self.wait_detached().await;
        self.handle.set_client_state(DETACHED, false);
        self.resume(r?).await
    }

    async fn wait_detached(&mut self) -> Result<Box<Handoff>, End> {
        let secs = self.sm.as_deref().map_or(0, |s| s.timeout_secs);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mailbox = self.handle.mailbox.clone();
        let mut shutdown = self.conn.state.shutdown.clone();
        loop {
            if let Some(k) = mailbox.kick_reason() {
                return Err(End::Error(k.condition(), None));
            }
            if *shutdown.borrow() {
                return Err(End::Error("system-shutdown", None));
            }
            tokio::select! {
                biased;
                _ = mailbox.wait_kick() => {}
                _ = shutdown.changed() => return Err(End::Error("system-shutdown", None)),
                h = Self::next_handoff(&mut self.sm) => return Ok(h),
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::info!(jid = %self.jid, "resumption timed out");
                    return Err(End::Io);
                }
            }
        }
    }

    /// Swap the new connection in (closing the old one if it was still open), answer
    /// `<resumed/>` and re-send what the client has not acknowledged (§5).
    async fn resume(&mut self, h: Box<Handoff>) -> Result<(), End> {
        let Handoff { conn, h, inline } = *h;
        self.account();
        let mut old = std::mem::replace(self.conn, *conn);
        old.out.clear();
        self.flushed();
        if !matches!(old.io, Transport::Gone) {
            // §5: the old stream is still open; it gets a conflict stream error.
            tokio::spawn(old.finish(End::Error(
                "conflict",
                Some("replaced by a resumed stream".into()),
            )));
        }
        self.closed_cleanly = false;
        let Some(sm) = self.sm.as_deref_mut() else {
            return Err(End::Error("internal-server-error", None));
        };
        sm.ack(h)
            .map_err(|e| End::ErrorApp("undefined-condition", e.element(), Some(e.text())))?;
        let id = sm.resume.as_ref().map(|r| r.id.clone()).unwrap_or_default();
        let resumed = minidom::Element::builder("resumed", sm::NS)
            .at("h", sm.inbound.to_string())
            .at("previd", id)
            .build();
        match inline {
            // XEP-0388: inside the SASL2 success (naming the resumed full JID), then features.
            Some(i) => {
                let sm::InlineResume {
                    mut success,
                    features,
                } = *i;
                let ns = success.ns();
                success.remove_child("authorization-identifier", ns.as_str());
                success.append_child(
                    minidom::Element::builder("authorization-identifier", ns.as_str())
                        .append(self.jid.to_string())
                        .build(),
                );
                success.append_child(resumed);
                self.conn.write_el(&success);
                self.conn.write_bytes(&features);
            }
            None => self.conn.write_el(&resumed),
        }
        for b in &sm.unacked {
            self.conn.out.extend_from_slice(b);
        }
        sm.since_request = u32::try_from(sm.unacked.len()).unwrap_or(u32::MAX);
        sm.counted = self.conn.out.len();
        self.csi_active();
        tracing::info!(jid = %self.jid, peer = %self.conn.peer, resent = sm_len(&self.sm), "session resumed");
        Ok(())
    }

    /// The session is over: what it never got acknowledged (and what was still queued or
    /// held for it) is treated like a stanza to an unavailable resource (§4): chat/normal
    /// messages with a body (or an encrypted payload) go to offline storage, other messages
    /// that matter and IQ requests are bounced, the rest (presence, chat states, receipts,
    /// results, errors) is dropped as it would be for an offline user.
    pub(super) async fn dispose_undelivered(&mut self, leftover: Vec<Deliver>) {
        let mut pending: Vec<Bytes> = Vec::new();
        let had_sm = self.sm.is_some();
        if let Some(mut sm) = self.sm.take() {
            if let Some(mut r) = sm.resume.take() {
                self.conn.state.sm.remove(&r.id);
                r.rx.close();
                while let Ok(h) = r.rx.try_recv() {
                    reject(*h);
                }
            }
            pending.extend(sm.unacked.drain(..));
        }
        if let Some(mut c) = self.csi.take() {
            pending.extend(c.take());
            self.handle.set_client_state(INACTIVE, false);
        }
        // Queued but never written (e.g. while detached). Without SM the session keeps its
        // old behaviour: what is queued for a closing stream goes with it.
        if had_sm {
            pending.extend(leftover.into_iter().filter_map(|d| match d {
                Deliver::Bytes(b) => Some(b),
                Deliver::ToSelf(b) => Some(crate::router::splice_to(&b, self.jid.as_str())),
                Deliver::RosterPush(_) => None,
            }));
        }
        let mut stored = 0usize;
        for b in pending {
            stored += usize::from(Box::pin(self.dispose_one(b)).await);
        }
        if stored > 0 {
            tracing::info!(jid = %self.jid, stored, "unacknowledged messages moved to offline storage");
        }
    }

    /// True when stored offline.
    async fn dispose_one(&self, b: Bytes) -> bool {
        let ctx = Arc::new(NsContext {
            default_ns: Some(NS_CLIENT.into()),
            prefixes: Vec::new(),
        });
        let Ok(st) = Stanza::parse(b, ctx) else {
            return false;
        };
        let Ok(mut el) = st.element() else {
            return false;
        };
        let kind = st.type_.as_deref();
        let state = &self.conn.state;
        // What a user would miss: a body, or what CSI would deliver at once (encrypted
        // payloads, markers...). Chat states and receipts alone are dropped, as they would
        // be for an offline user's client.
        let matters =
            st.name == "message" && (has_body(&el) || csi::classify(st.raw()) == Class::Important);
        match st.name.as_str() {
            "message" if matches!(kind, None | Some("normal" | "chat")) && matters => {
                match crate::offline::store(state, &self.bare, &mut el).await {
                    Ok(true) => return true,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "offline store of an unacked message failed")
                    }
                }
                self.bounce_to_sender(&el);
                false
            }
            "message" if matters && !matches!(kind, Some("error" | "headline")) => {
                self.bounce_to_sender(&el);
                false
            }
            "iq" if matches!(kind, Some("get" | "set")) => {
                self.bounce_to_sender(&el);
                false
            }
            _ => false,
        }
    }

    /// Return `service-unavailable` to a local sender (the recipient is gone).
    fn bounce_to_sender(&self, el: &minidom::Element) {
        let Some(from) = el.attr("from").and_then(|f| jid::Jid::new(f).ok()) else {
            return;
        };
        if from.node().is_none() || from.to_bare() == self.bare {
            return; // from the server or from the user's own account
        }
        let err = error_reply(el, &StanzaError::new(Condition::ServiceUnavailable));
        let bytes = xml::to_bytes(&err);
        let router = &self.conn.state.router;
        let bare = from.to_bare();
        match from.resource() {
            Some(r) => {
                router.send_full(bare.as_str(), r.as_str(), Deliver::Bytes(bytes));
            }
            None => {
                router.send_message_bare(bare.as_str(), &bytes);
            }
        }
    }
}

fn sm_len(sm: &Option<Box<SmState>>) -> usize {
    sm.as_deref().map_or(0, |s| s.unacked.len())
}

fn has_body(el: &minidom::Element) -> bool {
    el.children()
        .any(|c| c.is("body", NS_CLIENT) && !c.text().trim().is_empty())
}

/// A resumption that raced with the session's end: tell the client, and close.
fn reject(h: Handoff) {
    let mut conn = *h.conn;
    conn.write_bytes(failed("item-not-found").as_bytes());
    tokio::spawn(conn.finish(End::PeerClosed));
}
