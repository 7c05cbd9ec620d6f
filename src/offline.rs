//! XEP-0160 offline messages: chat/normal messages for an account with no available resource
//! are stored with a XEP-0203 delay stamp and delivered on the next initial presence with a
//! non-negative priority. Per-user caps (`offline.max_messages`, `offline.max_bytes`); beyond
//! them, the sender gets service-unavailable rather than a silent drop.

use crate::stanza::{BuilderExt, ElementExt};
use bytes::BytesMut;
use jid::BareJid;
use minidom::Element;

use crate::c2s::session::{bounce, Ctx};
use crate::modules::Module;
use crate::stanza::{now_ms, xep82_datetime, Condition, StanzaError};
use crate::xml::{self, Stanza};

pub const NS_DELAY: &str = "urn:xmpp:delay";
pub const FEATURE: &str = "msgoffline";

pub struct OfflineModule;

impl Module for OfflineModule {
    fn name(&self) -> &'static str {
        "offline"
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[FEATURE]
    }
}

/// Store a message for an offline account, or bounce it when the account does not exist
/// (RFC 6121 §8.5.2.2.1) or its store is full.
pub async fn store_or_bounce(ctx: &Ctx<'_>, st: &Stanza, to: &BareJid, out: &mut BytesMut) {
    let Some(node) = to.node() else { return };
    let user = (to.domain().as_str(), node.as_str());
    let storage = &ctx.server.storage;
    match storage.accounts().exists(user).await {
        Ok(true) => {}
        Ok(false) => {
            return bounce(
                out,
                st,
                ctx.jid,
                StanzaError::new(Condition::ServiceUnavailable),
            )
        }
        Err(e) => return bounce(out, st, ctx.jid, e.into()),
    }
    let Ok(mut el) = st.element() else { return };
    el.put_attr("from", ctx.jid.as_str());
    match store(ctx.server, to, &mut el).await {
        Ok(true) => {}
        Ok(false) => bounce(
            out,
            st,
            ctx.jid,
            StanzaError::with_text(
                Condition::ServiceUnavailable,
                "The recipient's offline storage is full",
            ),
        ),
        Err(e) => bounce(out, st, ctx.jid, e.into()),
    }
}

/// Store `el` (a message whose `from` is set) for `to`: stamped with a XEP-0203 delay unless
/// this server already stamped it (a message that went through offline storage before), within
/// the per-user caps, and announced to the user's XEP-0357 push services. Ok(false): the
/// store is full. Used for messages to offline accounts and for what a session never got
/// acknowledged (XEP-0198).
pub async fn store(
    server: &std::sync::Arc<crate::server::ServerState>,
    to: &BareJid,
    el: &mut Element,
) -> Result<bool, crate::storage::StorageError> {
    let Some(node) = to.node() else {
        return Ok(false);
    };
    let domain = to.domain().as_str();
    let stamp = now_ms();
    let stamped = el
        .children()
        .any(|c| c.is("delay", NS_DELAY) && c.attr("from") == Some(domain));
    if !stamped {
        el.append_child(
            Element::builder("delay", NS_DELAY)
                .at("from", domain)
                .at("stamp", xep82_datetime(stamp))
                .append("Offline Storage")
                .build(),
        );
    }
    let text = String::from_utf8_lossy(&xml::to_bytes(el)).into_owned();
    let cap = crate::storage::OfflineCap {
        messages: server.config.offline.max_messages,
        bytes: server.config.offline.max_bytes,
    };
    let stored = server
        .storage
        .offline()
        .store((domain, node.as_str()), &text, stamp, cap)
        .await?;
    if stored {
        crate::push::on_offline_message(server, to, el);
    }
    Ok(stored)
}

/// Flush stored messages into the session's output, oldest first.
pub async fn deliver(ctx: &Ctx<'_>, out: &mut BytesMut) {
    match ctx.server.storage.offline().take_all(ctx.user()).await {
        Ok(list) => {
            for m in list {
                out.extend_from_slice(m.stanza.as_bytes());
            }
        }
        Err(e) => tracing::error!(error = %e, "offline delivery failed"),
    }
}
