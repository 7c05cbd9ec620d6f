//! Presence (RFC 6121 §4): initial presence with probes answered from the session registry,
//! broadcast to contacts with a 'from' subscription and to the user's own resources,
//! directed presence (remembered so it is revoked on logout), and unavailable on disconnect.

use bytes::{Bytes, BytesMut};
use jid::Jid;
use std::collections::HashSet;

use crate::c2s::session::{bounce, Ctx};
use crate::roster::state::SubType;
use crate::router::Deliver;
use crate::stanza::{now_ms, Condition, StanzaError};
use crate::storage::Subscription;
use crate::xml::{self, Stanza, NS_CLIENT};

#[derive(Debug, Default)]
pub struct PresenceState {
    pub available: bool,
    /// Addresses that got directed available presence outside the roster (RFC 6121 §4.6).
    pub directed: HashSet<String>,
    /// Status text of the last unavailable presence (XEP-0012).
    pub last_status: Option<String>,
    /// XEP-0115 caps as PEP last saw them (XEP-0163 last items on coming online).
    pub caps: crate::pep::notify::SessionCaps,
}

/// Presence sent by the local user's session.
pub async fn outbound(
    ctx: &Ctx<'_>,
    ps: &mut PresenceState,
    st: &Stanza,
    to: Option<Jid>,
    out: &mut BytesMut,
) {
    if let Some(t) = &to {
        if crate::blocking::intercept(ctx, st, t, out).await {
            return; // XEP-0191: refused or dropped, the error (if any) is in `out`
        }
    }
    // XEP-0398 §3.3: available presence carries the vCard avatar hash.
    let stamped = crate::avatar::stamp(ctx, st).await;
    let st = stamped.as_ref().unwrap_or(st);
    match st.type_.as_deref() {
        None | Some("unavailable") => match to {
            Some(to) => directed(ctx, ps, st, to).await,
            None => broadcast(ctx, ps, st, out).await,
        },
        Some(t @ ("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")) => {
            let (Some(to), Some(kind)) = (to, SubType::parse(t)) else {
                return;
            };
            let contact = to.to_bare();
            // §3.1.2: subscription stanzas are stamped with the bare JID.
            let bytes = st.rewrite(Some(ctx.bare.as_str()), Some(contact.as_str()));
            crate::roster::outbound(ctx.server, ctx.bare, contact, kind, bytes).await;
        }
        // Probes are the server's business (§4.3); clients have no reason to send them.
        Some("probe") => {}
        Some("error") => {
            if let Some(to) = to {
                route(ctx, &to, st, st.rewrite(Some(ctx.jid.as_str()), None)).await;
            }
        }
        Some(_) => bounce(out, st, ctx.jid, StanzaError::new(Condition::BadRequest)),
    }
}

/// Deliver presence to a local address (bare: all available resources; full: that one), or
/// hand it to the hosted service (a MUC room) that owns the address.
async fn route(ctx: &Ctx<'_>, to: &Jid, st: &Stanza, bytes: Bytes) {
    if crate::services::dispatch(ctx.server, ctx.jid, to, st).await {
        return;
    }
    if !ctx.server.serves(to.domain().as_str()) {
        let bytes = st.rewrite(Some(ctx.jid.as_str()), Some(to.as_str()));
        return crate::federation::send::presence(ctx.server, ctx.jid, to, bytes);
    }
    if to.node().is_none() {
        return; // to a domain: nothing to do
    }
    let bare = to.to_bare();
    match to.resource() {
        Some(r) => {
            ctx.server
                .router
                .send_full(bare.as_str(), r.as_str(), Deliver::Bytes(bytes));
        }
        None => {
            ctx.server
                .router
                .send_available(bare.as_str(), &Deliver::Bytes(bytes));
        }
    }
}

async fn directed(ctx: &Ctx<'_>, ps: &mut PresenceState, st: &Stanza, to: Jid) {
    let bytes = st.rewrite(Some(ctx.jid.as_str()), None);
    route(ctx, &to, st, bytes).await;
    if st.type_.is_none() {
        if ps.directed.len() < ctx.server.config.limits.max_directed_presences {
            ps.directed.insert(to.as_str().to_string());
        }
    } else {
        ps.directed.remove(to.as_str());
    }
}

/// The priority of an available presence, checking the RFC 6121 §4.7.2 values on the way
/// (`<show/>` from the fixed set, `<priority/>` a signed byte) so nothing invalid is broadcast.
fn priority(st: &Stanza) -> Result<i8, ()> {
    let el = st.element().map_err(|_| ())?;
    for show in el.children().filter(|c| c.is("show", NS_CLIENT)) {
        if !matches!(show.text().as_str(), "away" | "chat" | "dnd" | "xa") {
            return Err(());
        }
    }
    match el.get_child("priority", NS_CLIENT) {
        None => Ok(0),
        Some(p) => p.text().trim().parse::<i8>().map_err(|_| ()),
    }
}

async fn contacts(ctx: &Ctx<'_>) -> crate::roster::Contacts {
    match crate::roster::contacts(ctx.server, ctx.user()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "roster load failed during presence broadcast");
            Default::default()
        }
    }
}

fn has_from(s: Subscription) -> bool {
    matches!(s, Subscription::From | Subscription::Both)
}

fn has_to(s: Subscription) -> bool {
    matches!(s, Subscription::To | Subscription::Both)
}

async fn broadcast(ctx: &Ctx<'_>, ps: &mut PresenceState, st: &Stanza, out: &mut BytesMut) {
    let router = &ctx.server.router;
    let (bare, resource, id) = (
        ctx.bare.as_str(),
        ctx.jid.resource().as_str(),
        ctx.handle.id,
    );
    let available = st.type_.is_none();
    let prio = if available {
        match priority(st) {
            Ok(p) => p,
            Err(()) => return bounce(out, st, ctx.jid, StanzaError::new(Condition::BadRequest)),
        }
    } else {
        0
    };
    let initial = available && !ps.available;
    if !available && !ps.available && ps.directed.is_empty() {
        return;
    }
    // The user's own resources — including this one (§4.2.2, §4.4.2) — then the contacts.
    let own: Vec<String> = router
        .resources(bare)
        .into_iter()
        .filter(|r| r.presence.is_some() || r.handle.id == id)
        .map(|r| r.resource)
        .collect();
    router.set_presence(bare, resource, id, available.then(|| (prio, st.clone())));
    ps.available = available;
    if available {
        crate::pep::notify::presence_available(ctx, &mut ps.caps, st, initial);
    } else {
        crate::pep::notify::presence_unavailable(&mut ps.caps);
    }
    for r in own {
        let to = format!("{bare}/{r}");
        router.send_full(
            bare,
            &r,
            Deliver::Bytes(st.rewrite(Some(ctx.jid.as_str()), Some(&to))),
        );
    }
    let roster = contacts(ctx).await;
    for (contact, sub) in roster.iter() {
        if has_from(*sub) && !crate::blocking::presence_blocked(ctx, contact).await {
            let bytes = st.rewrite(Some(ctx.jid.as_str()), Some(contact.as_str()));
            if ctx.server.serves(contact.domain().as_str()) {
                router.send_available(contact.as_str(), &Deliver::Bytes(bytes));
            } else {
                crate::federation::send::presence(ctx.server, ctx.jid, contact, bytes);
            }
        }
    }
    if !available {
        for to in std::mem::take(&mut ps.directed) {
            if let Ok(j) = Jid::new(&to) {
                route(ctx, &j, st, st.rewrite(Some(ctx.jid.as_str()), Some(&to))).await;
            }
        }
        ps.last_status = st
            .element()
            .ok()
            .and_then(|e| e.get_child("status", NS_CLIENT).map(|s| s.text()));
        return;
    }
    if initial {
        // §4.2.2: the new resource learns about the user's other available resources.
        for r in router.resources(bare) {
            if let (Some(p), false) = (&r.presence, r.handle.id == id) {
                let from = format!("{bare}/{}", r.resource);
                out.extend_from_slice(&p.rewrite(Some(&from), Some(ctx.jid.as_str())));
            }
        }
        // §4.2.3 probes, answered locally from the registry: contacts' current presence.
        for (contact, sub) in roster.iter() {
            if !has_to(*sub) || crate::blocking::presence_blocked(ctx, contact).await {
                continue;
            }
            if !ctx.server.serves(contact.domain().as_str()) {
                // The contact's server answers with its presence (§4.3.2).
                crate::federation::send::probe(ctx.server, ctx.bare, contact);
                continue;
            }
            for r in router.resources(contact.as_str()) {
                if let Some(p) = &r.presence {
                    let from = format!("{}/{}", contact.as_str(), r.resource);
                    out.extend_from_slice(&p.rewrite(Some(&from), Some(ctx.jid.as_str())));
                }
            }
        }
        deliver_pending_subscriptions(ctx, out).await;
        if prio >= 0 {
            crate::offline::deliver(ctx, out).await;
        }
    }
}

/// §3.1.3: subscription requests that arrived while the user was offline are re-delivered
/// on every initial presence until answered.
async fn deliver_pending_subscriptions(ctx: &Ctx<'_>, out: &mut BytesMut) {
    match ctx
        .server
        .storage
        .roster()
        .pending_in_list(ctx.user())
        .await
    {
        Ok(list) => {
            for (contact, stanza) in list {
                if crate::blocking::blocked_request(ctx, &contact).await {
                    continue; // XEP-0191: never delivered, kept in case of an unblock
                }
                out.extend_from_slice(stanza.as_bytes());
            }
        }
        Err(e) => tracing::error!(error = %e, "pending subscription load failed"),
    }
}

/// The session ended: broadcast unavailable as if the client had sent it (§4.5.2), record
/// last activity (XEP-0012).
pub async fn disconnected(ctx: &Ctx<'_>, ps: &mut PresenceState) {
    if ps.available || !ps.directed.is_empty() {
        let bytes = format!(
            "<presence type='unavailable' from='{}'/>",
            xml::escape(ctx.jid.as_str())
        );
        let ctx_ns = std::sync::Arc::new(xml::NsContext {
            default_ns: Some(NS_CLIENT.to_string()),
            prefixes: Vec::new(),
        });
        match Stanza::parse(Bytes::from(bytes), ctx_ns) {
            Ok(st) => broadcast(ctx, ps, &st, &mut BytesMut::new()).await,
            Err(e) => tracing::error!(error = %e, "could not build unavailable presence"),
        }
    }
    let status = ps.last_status.take();
    if let Err(e) = ctx
        .server
        .storage
        .accounts()
        .set_last_activity(ctx.user(), now_ms() / 1000, status.as_deref())
        .await
    {
        tracing::warn!(error = %e, "could not record last activity");
    }
}
