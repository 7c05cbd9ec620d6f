//! The sending half of cross-domain routing: what a local session's message, IQ and
//! presence become when the address is another domain's, and the stand-in session a
//! hosted service (a MUC room) gets for an occupant of another domain.
//!
//! Each function is the remote branch of a local path (`message::outbound`, the session's
//! IQ routing, `presence`), keeping that path's sender-side rules: XEP-0191 blocking,
//! XEP-0313 archiving of the sender's copy, XEP-0280 'sent' carbons. When the stanza cannot
//! even be queued ([`ServerState::send_remote`] errs) the sender gets the bounce RFC 6120
//! §8.3.3 names (`remote-server-not-found`, or `resource-constraint` for a full queue) —
//! messages and IQ requests only: presence is never bounced, errors never answered.

use bytes::{Bytes, BytesMut};
use jid::{FullJid, Jid};
use std::sync::Arc;
use std::time::Duration;

use super::RemoteError;
use crate::c2s::session::{bounce, Ctx};
use crate::carbons::Delivered;
use crate::router::{Deliver, SessionHandle};
use crate::server::ServerState;
use crate::stanza::{Condition, StanzaError};
use crate::xml::{self, Stanza};

/// The stanza error a stanza that could not be queued for its domain bounces with.
pub fn bounce_error(e: RemoteError) -> StanzaError {
    StanzaError::new(match e {
        RemoteError::NotFound => Condition::RemoteServerNotFound,
        RemoteError::QueueFull => Condition::ResourceConstraint,
    })
}

/// A message from a local session to another domain (RFC 6121 §5, sender's server side).
pub async fn message(ctx: &Ctx<'_>, st: &Stanza, kind: &str, to: &Jid, out: &mut BytesMut) {
    if crate::blocking::intercept(ctx, st, to, out).await {
        return; // XEP-0191: refused or dropped, the error (if any) is in `out`
    }
    // The sender's archive copy (the recipient's server archives its own).
    let stamped = crate::mam::on_message(ctx, st, kind, to).await;
    let st = stamped.as_ref().unwrap_or(st);
    let bytes = st.rewrite(Some(ctx.jid.as_str()), Some(to.as_str()));
    if let Err(e) = ctx.server.send_remote(ctx.jid, to, bytes) {
        return bounce(out, st, ctx.jid, bounce_error(e));
    }
    crate::carbons::copy(ctx, st, kind, &to.to_bare(), Delivered::Bare);
}

/// An IQ from a local session to another domain: requests and answers alike go out as they
/// are (RFC 6120 §8.2.3); only a request that cannot be queued is answered here.
pub async fn iq(ctx: &Ctx<'_>, st: &Stanza, to: &Jid, out: &mut BytesMut) {
    if crate::blocking::intercept(ctx, st, to, out).await {
        return;
    }
    let bytes = st.rewrite(Some(ctx.jid.as_str()), Some(to.as_str()));
    if let Err(e) = ctx.server.send_remote(ctx.jid, to, bytes) {
        if matches!(st.type_.as_deref(), Some("get" | "set")) {
            bounce(out, st, ctx.jid, bounce_error(e));
        }
    }
}

/// Presence for another domain (broadcast, directed, probes, subscription stanzas): never
/// bounced; a failure is only logged.
pub fn presence(server: &ServerState, from: &Jid, to: &Jid, bytes: Bytes) {
    if let Err(e) = server.send_remote(from, to, bytes) {
        tracing::debug!(%from, %to, error = %e, "presence to a remote domain not sent");
    }
}

/// RFC 6121 §4.3.1: a presence probe from `from`'s bare JID to a contact of another domain.
pub fn probe(server: &ServerState, from: &jid::BareJid, to: &jid::BareJid) {
    let bytes = format!(
        "<presence type='probe' from='{}' to='{}' id='{}'/>",
        xml::escape(from.as_str()),
        xml::escape(to.as_str()),
        crate::stanza::random_id()
    );
    presence(server, from, to, Bytes::from(bytes));
}

/// The 'from' attribute of a serialized stanza (the MUC fan-out and service replies carry
/// it; the sending domain is what [`ServerState::send_remote`] needs).
pub fn from_attr(bytes: &Bytes) -> Option<Jid> {
    let ctx = Arc::new(xml::NsContext {
        default_ns: Some(xml::NS_CLIENT.to_string()),
        prefixes: Vec::new(),
    });
    let st = Stanza::parse(bytes.clone(), ctx).ok()?;
    Jid::new(st.from.as_deref()?).ok()
}

/// Send bytes a local service or module addressed to another domain's JID, taking the
/// sending address from the stanza itself. False when it could not be queued.
pub fn route(server: &ServerState, to: &Jid, bytes: Bytes) -> bool {
    let Some(from) = from_attr(&bytes) else {
        tracing::warn!(%to, "stanza for a remote domain without a usable 'from'");
        return false;
    };
    server.send_remote(&from, to, bytes).is_ok()
}

/// How often an idle stand-in session checks whether anything still holds it.
const STANDIN_CHECK: Duration = Duration::from_secs(30);

/// A session handle for a full JID: the local session's, or for another domain's JID a
/// stand-in whose queue is forwarded to that domain. Services that keep sessions (a MUC
/// room's occupants, fed through [`Deliver::ToSelf`]) then serve remote users unchanged.
/// None for a local JID without a session, or a remote one without federation.
pub fn session_handle(server: &Arc<ServerState>, jid: &FullJid) -> Option<SessionHandle> {
    if server.is_local_domain(jid.domain().as_str()) {
        let bare = jid.to_bare();
        return server
            .router
            .resource(bare.as_str(), jid.resource().as_str())
            .map(|r| r.handle);
    }
    server.federation.remote()?;
    Some(stand_in(server, jid))
}

/// A handle whose mailbox a task drains into [`ServerState::send_remote`]. The task ends
/// once nobody else holds the mailbox (the room let the occupant go), or with the server.
fn stand_in(server: &Arc<ServerState>, jid: &FullJid) -> SessionHandle {
    let handle = SessionHandle::new(
        server.router.next_session_id(),
        server.config.limits.session_queue,
    );
    let mailbox = handle.mailbox.clone();
    let weak = Arc::downgrade(server);
    let to = Jid::from(jid.clone());
    tokio::spawn(async move {
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                _ = mailbox.ready() => {}
                _ = tokio::time::sleep(STANDIN_CHECK) => {}
            }
            // A kick (its queue overflowed) has no connection to close: the overflow is
            // what was lost.
            let _ = mailbox.drain_into(&mut batch);
            let Some(server) = weak.upgrade() else { break };
            for d in batch.drain(..) {
                let bytes = match d {
                    Deliver::Bytes(b) => b,
                    Deliver::ToSelf(b) => crate::router::splice_to(&b, to.as_str()),
                    Deliver::RosterPush(_) => continue,
                };
                route(&server, &to, bytes);
            }
            if Arc::strong_count(&mailbox) == 1 {
                break;
            }
        }
        mailbox.close();
    });
    handle
}
