//! One-to-one messages (RFC 6121 §5, §8.5): routing by type to full or bare JIDs, falling back
//! to offline storage for chat/normal messages when no resource can take them.

use bytes::BytesMut;
use jid::Jid;

use crate::c2s::session::{bounce, Ctx};
use crate::carbons::Delivered;
use crate::router::Deliver;
use crate::stanza::{Condition, StanzaError};
use crate::xml::Stanza;

pub async fn outbound(ctx: &Ctx<'_>, st: &Stanza, to: Option<Jid>, out: &mut BytesMut) {
    // §5.2.2: an absent or unknown type is 'normal'.
    let kind = st
        .type_
        .as_deref()
        .filter(|t| matches!(*t, "chat" | "groupchat" | "headline" | "error"))
        .unwrap_or("normal");
    let target = to.unwrap_or_else(|| Jid::from(ctx.bare.clone()));
    if !ctx.server.serves(target.domain().as_str()) {
        // Another domain (hosted services took theirs before this point).
        return Box::pin(crate::federation::send::message(
            ctx, st, kind, &target, out,
        ))
        .await;
    }
    if target.node().is_none() {
        return; // addressed to the server itself: nothing here consumes messages yet
    }
    if crate::blocking::intercept(ctx, st, &target, out).await {
        return; // XEP-0191: refused or dropped, the error (if any) is in `out`
    }
    // XEP-0313/0359: archive, stamp the recipient's stanza-id, strip spoofed ones.
    let stamped = crate::mam::on_message(ctx, st, kind, &target).await;
    let st = stamped.as_ref().unwrap_or(st);
    let router = &ctx.server.router;
    let bare = target.to_bare();
    let bytes = st.rewrite(Some(ctx.jid.as_str()), None);
    if let Some(r) = target.resource() {
        if router.send_full(bare.as_str(), r.as_str(), Deliver::Bytes(bytes.clone())) {
            if !matches!(kind, "error" | "headline") {
                crate::push::on_live_message(ctx.server, ctx.jid, &bare, st);
            }
            return crate::carbons::copy(ctx, st, kind, &bare, Delivered::Full(r.as_str()));
        }
        // §8.5.3.2.1: no such resource.
        match kind {
            "groupchat" => {
                return bounce(
                    out,
                    st,
                    ctx.jid,
                    StanzaError::new(Condition::ServiceUnavailable),
                )
            }
            "headline" | "error" => return,
            _ => {} // chat/normal: treated as addressed to the bare JID
        }
    }
    match kind {
        "groupchat" => bounce(
            out,
            st,
            ctx.jid,
            StanzaError::new(Condition::ServiceUnavailable),
        ),
        // Headlines and errors reach the best resources if any, and are never stored.
        "headline" | "error" => {
            router.send_message_bare(bare.as_str(), &bytes);
        }
        _ => {
            if router.send_message_bare(bare.as_str(), &bytes) > 0 {
                crate::push::on_live_message(ctx.server, ctx.jid, &bare, st);
            } else {
                // Boxed: the storage future is large and rarely needed; inlined, every
                // session's future would reserve room for it.
                Box::pin(crate::offline::store_or_bounce(ctx, st, &bare, out)).await;
            }
            crate::carbons::copy(ctx, st, kind, &bare, Delivered::Bare);
        }
    }
}
