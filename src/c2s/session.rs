//! The life of a bound client session: read stanzas, stamp and check addresses (RFC 6120
//! §8.1.2), dispatch them to the message/presence/IQ handling, write what the router queues
//! for us, keep the connection alive, and clean up (unavailable presence, unbind) at the end.

use crate::stanza::ElementExt;
use bytes::BytesMut;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use std::sync::Arc;
use std::time::Duration;

use super::negotiate::Bound;
use super::{Conn, End};
use crate::modules::{IqRequest, Scope};
use crate::router::{Deliver, SessionHandle};
use crate::server::ServerState;
use crate::stanza::{error_reply, iq_result, parse_jid, Condition, StanzaError};
use crate::xml::{self, Event, Stanza, NS_CLIENT};

mod stream_mgmt;
pub(crate) use stream_mgmt::{failed_el, new_sm, preauth_nonza, request_resume, try_resume};

/// What stanza handling needs to know about the sending session.
pub struct Ctx<'a> {
    pub server: &'a Arc<ServerState>,
    pub jid: &'a FullJid,
    pub bare: &'a BareJid,
    pub handle: &'a SessionHandle,
}

fn ctx_user(bare: &BareJid) -> (&str, &str) {
    (
        bare.domain().as_str(),
        bare.node().map(|n| n.as_str()).unwrap_or(""),
    )
}

impl Ctx<'_> {
    /// (domain, localpart) for storage calls.
    pub fn user(&self) -> (&str, &str) {
        ctx_user(self.bare)
    }
}

/// Append a serialized element to a session's own output.
pub fn push_el(out: &mut BytesMut, el: &Element) {
    out.extend_from_slice(&xml::to_bytes(el));
}

/// Answer a stanza with an error, sent back to the session that sent it.
pub fn bounce(out: &mut BytesMut, st: &Stanza, from: &FullJid, err: StanzaError) {
    if st.type_.as_deref() == Some("error") {
        return; // never answer an error with an error (RFC 6120 §8.3.1)
    }
    if let Ok(mut el) = st.element() {
        el.put_attr("from", from.as_str());
        out.extend_from_slice(&xml::to_bytes(&error_reply(&el, &err)));
    }
}

struct Session<'c> {
    /// Borrowed from the connection task, which owns it (and closes it after we return):
    /// owning it here would reserve its space twice in the task's memory.
    conn: &'c mut Conn,
    jid: FullJid,
    bare: BareJid,
    handle: SessionHandle,
    presence: crate::presence::PresenceState,
    /// XEP-0198 state once enabled; boxed so sessions without it pay one pointer.
    sm: Option<Box<crate::c2s::sm::SmState>>,
    /// XEP-0352: Some while the client is inactive (what is held back for it).
    csi: Option<Box<crate::c2s::csi::CsiState>>,
    /// The client ended its stream with `</stream>`: never kept for resumption.
    closed_cleanly: bool,
}

/// Run a bound session until it ends; returns why, for the caller to close the stream.
pub async fn run(conn: &mut Conn, b: Bound) -> End {
    let bare = b.jid.to_bare();
    let mut s = Session {
        conn,
        jid: b.jid,
        bare,
        handle: b.handle,
        presence: Default::default(),
        // XEP-0386 Bind 2 may have enabled these inline.
        sm: b.sm,
        csi: b.inactive.then(Box::default),
        closed_cleanly: false,
    };
    if b.inactive {
        s.handle.set_client_state(crate::router::INACTIVE, true);
    }
    // A resumable session outlives its connection (XEP-0198 §5): it goes round again on
    // the connection that resumed it.
    let end = loop {
        let end = s.main_loop().await;
        match Box::pin(s.after_loop(end)).await {
            Ok(()) => continue,
            Err(end) => break end,
        }
    };
    // Boxed, like everything that runs rarely: inline, their state would be reserved in the
    // session's future for its whole life (see `c2s::run_connection`).
    Box::pin(s.cleanup()).await;
    tracing::info!(jid = %s.jid, reason = ?end, "session ended");
    end
}

impl Session<'_> {
    async fn main_loop(&mut self) -> End {
        let cfg = &self.conn.state.config.c2s;
        let idle = Duration::from_secs(cfg.idle_timeout_secs.max(1));
        let keepalive = Duration::from_secs(cfg.keepalive_secs.max(1));
        let mut shutdown = self.conn.state.shutdown.clone();
        if *shutdown.borrow() {
            return End::Error("system-shutdown", None);
        }
        let mailbox = self.handle.mailbox.clone();
        let mut batch = Vec::new();
        loop {
            if self.take_handoff() {
                return End::Handover; // XEP-0198 §5: resumed elsewhere, this one is replaced
            }
            if let Err(e) = self.drain_parser().await {
                return e;
            }
            // Everything queued goes out in one write. A kicked session still writes what was
            // queued before the kick (ahead of its stream error): a MUC's shutdown presence,
            // or messages that would otherwise be neither delivered nor disposed of (with
            // XEP-0198 they stay unacked and are handled like any unacked stanza).
            if let Some(k) = mailbox.drain_into(&mut batch) {
                for d in batch.drain(..) {
                    self.deliver(d);
                }
                return End::Error(k.condition(), None);
            }
            for d in batch.drain(..) {
                self.deliver(d);
            }
            if batch.capacity() > 64 {
                batch = Vec::new();
            }
            // A client that stops reading must not pin this task: the write is bounded by the
            // idle timeout and abandoned when the session is kicked (e.g. its queue overflowed).
            if !self.conn.out.is_empty() {
                if let Err(e) = self.before_flush() {
                    return e;
                }
                let written = {
                    let write = tokio::time::timeout(idle, self.conn.flush());
                    tokio::pin!(write);
                    loop {
                        tokio::select! {
                            biased;
                            // A wake without a kick (a XEP-0198 handoff) must not cut a
                            // write short: the rest of the buffer would be written twice.
                            _ = mailbox.wait_kick() => {
                                if let Some(k) = mailbox.kick_reason() {
                                    return End::Error(k.condition(), None);
                                }
                            }
                            r = &mut write => break r,
                        }
                    }
                };
                match written {
                    Ok(Ok(())) => self.flushed(),
                    Ok(Err(e)) => return e,
                    Err(_) => return End::Error("connection-timeout", Some("not reading".into())),
                }
                // More may have been queued while writing.
                continue;
            }
            if self.before_idle() {
                continue;
            }
            self.conn.shrink();
            let deadline = (self.conn.last_read + idle).min(self.conn.last_write + keepalive);
            tokio::select! {
                biased;
                // A kick is handled at the top of the loop, which first writes what was
                // queued before it.
                _ = mailbox.wait_kick() => {}
                _ = shutdown.changed() => {
                    // What services queued for the goodbye (MUC status 332) goes out first.
                    mailbox.drain_into(&mut batch);
                    for d in batch.drain(..) {
                        self.deliver(d);
                    }
                    return End::Error("system-shutdown", None);
                }
                _ = mailbox.ready() => {}
                r = self.conn.read_some() => match r {
                    Ok(true) => {}
                    Ok(false) => return End::PeerClosed,
                    Err(e) => return e,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    let now = tokio::time::Instant::now();
                    if now >= self.conn.last_read + idle {
                        return End::Error("connection-timeout", Some("idle for too long".into()));
                    }
                    // RFC 6120 §4.6.1: whitespace keepalive.
                    self.conn.write_bytes(b" ");
                }
            }
        }
    }

    async fn drain_parser(&mut self) -> Result<(), End> {
        loop {
            match self.conn.parser.next_event()? {
                // Boxed per stanza: stanza handling's state is several times that of an
                // idle session, and idle sessions are the many.
                Some(Event::Stanza(st))
                    if st.ns == crate::c2s::sm::NS || st.ns == crate::c2s::csi::NS =>
                {
                    self.nonza(&st)?
                }
                Some(Event::Stanza(st)) => Box::pin(self.handle_stanza(st)).await?,
                Some(Event::Close) => {
                    self.closed_cleanly = true;
                    return Err(End::PeerClosed);
                }
                Some(Event::Open(_)) => {
                    return Err(End::Error(
                        "bad-format",
                        Some("unexpected stream header".into()),
                    ))
                }
                None => return Ok(()),
            }
        }
    }

    fn deliver(&mut self, d: Deliver) {
        match d {
            Deliver::Bytes(b) => self.emit(b),
            Deliver::ToSelf(b) => self.emit(crate::router::splice_to(&b, self.jid.as_str())),
            Deliver::RosterPush(el) => {
                if self.handle.interested() {
                    let mut el = (*el).clone();
                    el.put_attr("to", self.jid.as_str());
                    self.emit(xml::to_bytes(&el));
                }
            }
        }
    }

    async fn handle_stanza(&mut self, st: Stanza) -> Result<(), End> {
        if st.ns != NS_CLIENT || !matches!(st.name.as_str(), "message" | "presence" | "iq") {
            return Err(End::Error(
                "unsupported-stanza-type",
                Some(format!("<{}/> in {}", st.name, st.ns)),
            ));
        }
        self.handled();
        // RFC 6120 §8.1.2.1: a 'from' must be this session's own address.
        if let Some(from) = st.from.as_deref() {
            match parse_jid(from) {
                Ok(j) if j == self.jid || j == self.bare => {}
                _ => return Err(End::Error("invalid-from", None)),
            }
        }
        let to = match st.to.as_deref().map(parse_jid) {
            None => None,
            Some(Ok(j)) => Some(j),
            Some(Err(e)) => {
                bounce(&mut self.conn.out, &st, &self.jid, e);
                return Ok(());
            }
        };
        let ctx = Ctx {
            server: &self.conn.state,
            jid: &self.jid,
            bare: &self.bare,
            handle: &self.handle,
        };
        // A hosted service's domain (group chat, upload): the service takes it. Presence
        // goes through presence handling first, which tracks it as directed presence.
        if let (Some(t), false) = (&to, st.name == "presence") {
            if crate::services::dispatch(&self.conn.state, &self.jid, t, &st).await {
                return Ok(());
            }
        }
        match st.name.as_str() {
            "message" => crate::message::outbound(&ctx, &st, to, &mut self.conn.out).await,
            // Boxed: their futures (storage queries, module handlers) are large, and an
            // inline await would reserve that space in every session for its whole life.
            "presence" => {
                Box::pin(crate::presence::outbound(
                    &ctx,
                    &mut self.presence,
                    &st,
                    to,
                    &mut self.conn.out,
                ))
                .await
            }
            _ => Box::pin(iq(&ctx, &st, to, &mut self.conn.out)).await?,
        }
        Ok(())
    }

    async fn cleanup(&mut self) {
        let leftover = self.handle.mailbox.close_and_take();
        Box::pin(self.dispose_undelivered(leftover)).await;
        let ctx = Ctx {
            server: &self.conn.state,
            jid: &self.jid,
            bare: &self.bare,
            handle: &self.handle,
        };
        crate::presence::disconnected(&ctx, &mut self.presence).await;
        let state = &self.conn.state;
        state.router.unbind(
            self.bare.as_str(),
            self.jid.resource().as_str(),
            self.handle.id,
        );
        if !state.router.is_online(self.bare.as_str()) {
            // The cache holds online users only; it is refilled on the next login.
            state.contacts.invalidate(ctx_user(&self.bare));
            state.blocklists.evict(&self.bare).await;
            state.avatars.evict(self.bare.as_str());
        }
    }
}

/// RFC 6120 §8.2.3 / RFC 6121 §8.5: IQ routing and local handling.
async fn iq(ctx: &Ctx<'_>, st: &Stanza, to: Option<Jid>, out: &mut BytesMut) -> Result<(), End> {
    let kind = st.type_.as_deref();
    let is_request = matches!(kind, Some("get" | "set"));
    if !is_request && !matches!(kind, Some("result" | "error")) || st.id.is_none() {
        bounce(out, st, ctx.jid, StanzaError::new(Condition::BadRequest));
        return Ok(());
    }
    let target = to.unwrap_or_else(|| Jid::from(ctx.bare.clone()));
    let domain = target.domain().as_str();
    if !ctx.server.serves(domain) {
        crate::federation::send::iq(ctx, st, &target, out).await;
        return Ok(());
    }
    if crate::blocking::intercept(ctx, st, &target, out).await {
        return Ok(()); // XEP-0191: refused or dropped, the error (if any) is in `out`
    }
    if let Some(resource) = target.resource() {
        // To a full JID: route to that resource, or answer for it (RFC 6121 §8.5.3.2.1).
        let bare = target.to_bare();
        let bytes = st.rewrite(Some(ctx.jid.as_str()), None);
        let delivered = target.node().is_some()
            && ctx
                .server
                .router
                .send_full(bare.as_str(), resource.as_str(), Deliver::Bytes(bytes));
        if !delivered && is_request {
            bounce(
                out,
                st,
                ctx.jid,
                StanzaError::new(Condition::ServiceUnavailable),
            );
        }
        return Ok(());
    }
    if !is_request {
        // Answers to the server's own queries (XEP-0115 caps, XEP-0357 publishes); other
        // results end here.
        if !ctx.server.iq_out.answer(st, ctx.jid) {
            let responder = Jid::from(ctx.jid.clone());
            crate::push::on_iq_response(ctx.server, &responder, &target, st).await;
        }
        return Ok(());
    }
    let el = st.element()?;
    let mut children = el.children();
    let (Some(payload), None) = (children.next(), children.next()) else {
        bounce(out, st, ctx.jid, StanzaError::new(Condition::BadRequest));
        return Ok(());
    };
    let scope = if target.node().is_some() {
        Scope::Account
    } else {
        Scope::Server
    };
    let bare_target = target.to_bare();
    let result = match ctx.server.modules.for_iq(scope, payload.ns().as_str()) {
        Some(m) => {
            m.handle_iq(IqRequest {
                server: ctx.server,
                from: Some(ctx.jid),
                to: &bare_target,
                scope,
                set: kind == Some("set"),
                payload,
                session: Some(ctx.handle),
                out: Some(&mut *out),
            })
            .await
        }
        None => Err(StanzaError::new(Condition::ServiceUnavailable)),
    };
    let reply_from = st.to.as_ref().map(|_| target.as_str());
    let reply = match result {
        Ok(p) => iq_result(
            st.id.as_deref().unwrap_or(""),
            reply_from,
            Some(ctx.jid.as_str()),
            p,
        ),
        Err(e) => {
            let mut orig = el.clone();
            orig.put_attr("from", ctx.jid.as_str());
            error_reply(&orig, &e)
        }
    };
    push_el(out, &reply);
    Ok(())
}
