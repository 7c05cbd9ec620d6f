//! XEP-0357 Push Notifications, the user's-server side: an App Client enables (or disables)
//! a registration (push service JID, node, optional publish-options form) with an IQ set to
//! its own bare JID; registrations live in the database, so they survive restarts and work
//! while the user is offline. When a message worth waking the device for cannot be delivered
//! live, [`notify`] publishes a `urn:xmpp:push:summary` notification to every registration
//! (see `notify.rs`); an error reply to that publish disables the registration (§7.1, see
//! `pending.rs`).
//!
//! The trigger is public so that other delivery paths (CSI-inactive or SM-detached sessions)
//! can call it the same way offline storage does.
use minidom::Element;

use crate::modules::{IqFuture, IqRequest, Module, Scope};
use crate::stanza::{parse_jid, Condition, StanzaError};
use crate::storage::PushRegistration;

mod notify;
mod pending;

pub use notify::{notify, on_live_message, on_offline_message, summary_of, Summary};
pub use pending::on_iq_response;

pub const NS: &str = "urn:xmpp:push:0";
pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_DATA: &str = "jabber:x:data";
pub const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

/// Server-wide push state: coalescing windows and notifications awaiting a reply.
#[derive(Default)]
pub struct PushState {
    windows: notify::Windows,
    pending: pending::Pending,
}

pub struct PushModule;

impl Module for PushModule {
    fn name(&self) -> &'static str {
        "push"
    }
    fn iq_namespaces(&self) -> &'static [(Scope, &'static str)] {
        &[(Scope::Account, NS)]
    }
    fn account_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn handle_iq<'a>(&'a self, req: IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(async move {
            if !req.is_self() {
                return Err(StanzaError::new(Condition::Forbidden));
            }
            if !req.set {
                return Err(StanzaError::new(Condition::BadRequest));
            }
            let user = (
                req.to.domain().as_str(),
                req.to.node().map(|n| n.as_str()).unwrap_or(""),
            );
            let p = req.payload;
            let service = p
                .attr("jid")
                .ok_or_else(|| StanzaError::with_text(Condition::BadRequest, "Missing jid"))
                .and_then(|j| parse_jid(j).map_err(|_| StanzaError::new(Condition::BadRequest)))?
                .to_string();
            let push = req.server.storage.push();
            if p.is("enable", NS) {
                let reg = registration(p, service)?;
                let max = req.server.config.push.max_registrations;
                if !push.enable(user, &reg, max).await? {
                    return Err(StanzaError::with_text(
                        Condition::ResourceConstraint,
                        format!("at most {max} push registrations per account"),
                    ));
                }
                tracing::info!(user = %req.to, service = %reg.service, "push notifications enabled");
            } else if p.is("disable", NS) {
                let node = p.attr("node");
                let n = push.disable(user, &service, node).await?;
                req.server.push.forget(req.to.as_str(), &service, node);
                tracing::info!(user = %req.to, %service, removed = n, "push notifications disabled");
            } else {
                return Err(StanzaError::new(Condition::BadRequest));
            }
            Ok(None)
        })
    }
}

/// §5: `jid` and `node` (Prosody requires the node too: it is where we publish), and an
/// optional publish-options form, kept verbatim to be sent with every publish.
fn registration(enable: &Element, service: String) -> Result<PushRegistration, StanzaError> {
    let node = enable
        .attr("node")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| StanzaError::with_text(Condition::BadRequest, "Missing node"))?;
    let options = match enable.get_child("x", NS_DATA) {
        None => None,
        Some(form) if form_type(form).as_deref() == Some(PUBLISH_OPTIONS) => {
            Some(String::from_utf8_lossy(&crate::xml::to_bytes(form)).into_owned())
        }
        Some(_) => {
            return Err(StanzaError::with_text(
                Condition::BadRequest,
                "The form must be of type http://jabber.org/protocol/pubsub#publish-options",
            ))
        }
    };
    Ok(PushRegistration {
        service,
        node: node.to_string(),
        options,
    })
}

fn form_type(form: &Element) -> Option<String> {
    form.children()
        .filter(|f| f.is("field", NS_DATA) && f.attr("var") == Some("FORM_TYPE"))
        .find_map(|f| f.get_child("value", NS_DATA))
        .map(|v| v.text())
}
