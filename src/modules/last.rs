//! XEP-0012 Last Activity: server uptime, and for accounts the time since their last logout
//! (0 while online), visible to the owner and to contacts with a presence subscription.
use crate::stanza::BuilderExt;
use minidom::Element;

use super::{IqFuture, IqRequest, Module, Scope};
use crate::stanza::{now_ms, Condition, StanzaError};
use crate::storage::Subscription;

pub const NS: &str = "jabber:iq:last";

pub struct LastActivity;

impl Module for LastActivity {
    fn name(&self) -> &'static str {
        "last"
    }
    fn iq_namespaces(&self) -> &'static [(Scope, &'static str)] {
        &[(Scope::Server, NS), (Scope::Account, NS)]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn account_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn handle_iq<'a>(&'a self, req: IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(async move {
            if req.set {
                return Err(StanzaError::new(Condition::BadRequest));
            }
            let query = |secs: u64, status: Option<String>| {
                let mut b = Element::builder("query", NS).at("seconds", secs.to_string());
                if let Some(s) = status {
                    b = b.append(s);
                }
                Some(b.build())
            };
            match req.scope {
                Scope::Server => Ok(query(req.server.started.elapsed().as_secs(), None)),
                Scope::Account => {
                    let node = req
                        .to
                        .node()
                        .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
                    let owner = (req.to.domain().as_str(), node.as_str());
                    if !req.is_self() {
                        let from = req
                            .from
                            .ok_or_else(|| StanzaError::new(Condition::Forbidden))?;
                        let item = req
                            .server
                            .storage
                            .roster()
                            .get(owner, from.to_bare().as_str())
                            .await?;
                        if !matches!(
                            item.map(|i| i.subscription),
                            Some(Subscription::From | Subscription::Both)
                        ) {
                            return Err(StanzaError::new(Condition::Forbidden));
                        }
                    }
                    if req.server.router.is_available(req.to.as_str()) {
                        return Ok(query(0, None));
                    }
                    match req.server.storage.accounts().last_activity(owner).await? {
                        Some((t, status)) => {
                            let secs = (now_ms() / 1000 - t).max(0) as u64;
                            Ok(query(secs, status))
                        }
                        None => Err(StanzaError::new(Condition::ServiceUnavailable)),
                    }
                }
            }
        })
    }
}
