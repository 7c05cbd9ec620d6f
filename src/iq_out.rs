//! IQs the server itself sends to local clients (RFC 6120 §8.2.3), e.g. the XEP-0115
//! disco#info query that resolves an unknown caps verification string.
//!
//! Each request waits on a oneshot channel registered under its id; the client's result or
//! error comes back through the session's IQ path, which hands it to [`PendingIqs::answer`].
//! The map is bounded (`pep.max_pending_queries`), every wait is bounded
//! (`pep.query_timeout_secs`), and a waiter that goes away (timeout, cancelled task) removes
//! its own entry, so nothing accumulates.

use jid::FullJid;
use minidom::Element;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;

use crate::router::Deliver;
use crate::server::ServerState;
use crate::stanza::BuilderExt;
use crate::xml::{self, Stanza, NS_CLIENT};

#[derive(Debug, thiserror::Error)]
pub enum IqOutError {
    #[error("too many outstanding server queries")]
    Busy,
    #[error("the addressee is not online")]
    Undeliverable,
    #[error("no answer in time")]
    Timeout,
    #[error("the client answered with an error")]
    Error,
}

struct Waiter {
    /// Only an answer from the queried address counts (ids are guessable on the wire).
    to: String,
    tx: oneshot::Sender<Result<Element, IqOutError>>,
}

#[derive(Default)]
pub struct PendingIqs {
    map: Mutex<HashMap<String, Waiter>>,
}

/// Removes the entry when the waiting future ends, however it ends.
struct Registered<'a> {
    pending: &'a PendingIqs,
    id: String,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
    }
}

impl PendingIqs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiter>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A result or error IQ addressed to the server (or to the sender's own bare JID) from
    /// `from`; true when it answered one of our queries (it is consumed then).
    pub fn answer(&self, st: &Stanza, from: &FullJid) -> bool {
        let Some(id) = st.id.as_deref() else {
            return false;
        };
        let waiter = {
            let mut map = self.lock();
            match map.get(id) {
                Some(w) if w.to == from.as_str() => map.remove(id),
                _ => None,
            }
        };
        let Some(w) = waiter else {
            return false;
        };
        let outcome = match (st.type_.as_deref(), st.element()) {
            (Some("result"), Ok(el)) => Ok(el),
            _ => Err(IqOutError::Error),
        };
        let _ = w.tx.send(outcome);
        true
    }
}

/// Send `payload` in an IQ get from the server's domain to a full JID (a local session, or
/// another domain's, through federation) and wait for the answer (the whole `<iq/>`
/// element of the result).
pub async fn query(
    server: &ServerState,
    to: &FullJid,
    payload: Element,
) -> Result<Element, IqOutError> {
    let pending = &server.iq_out;
    let id = format!("s-{}", crate::stanza::random_id());
    let (tx, rx) = oneshot::channel();
    {
        let mut map = pending.lock();
        if map.len() >= server.config.pep.max_pending_queries {
            return Err(IqOutError::Busy);
        }
        map.insert(
            id.clone(),
            Waiter {
                to: to.as_str().to_string(),
                tx,
            },
        );
    }
    let _guard = Registered {
        pending,
        id: id.clone(),
    };
    // Another domain's JID (a remote contact's client) is asked from our primary domain.
    let local = server.serves(to.domain().as_str());
    let from = match local {
        true => to.domain().as_str(),
        false => server
            .domains
            .first()
            .map(String::as_str)
            .unwrap_or_default(),
    };
    let iq = Element::builder("iq", NS_CLIENT)
        .at("type", "get")
        .at("id", id.as_str())
        .at("from", from)
        .at("to", to.as_str())
        .append(payload)
        .build();
    let bytes = xml::to_bytes(&iq);
    let sent = if local {
        let bare = to.to_bare();
        server
            .router
            .send_full(bare.as_str(), to.resource().as_str(), Deliver::Bytes(bytes))
    } else {
        jid::Jid::new(from).is_ok_and(|f| server.send_remote(&f, to, bytes).is_ok())
    };
    if !sent {
        return Err(IqOutError::Undeliverable);
    }
    let wait = Duration::from_secs(server.config.pep.query_timeout_secs.max(1));
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(IqOutError::Error),
        Err(_) => Err(IqOutError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn stanza(raw: &str) -> Stanza {
        let ctx = std::sync::Arc::new(crate::xml::NsContext {
            default_ns: Some(NS_CLIENT.into()),
            prefixes: Vec::new(),
        });
        Stanza::parse(Bytes::from(raw.to_string()), ctx).unwrap()
    }

    /// Only the queried address can answer a query, and only once; errors are errors.
    #[test]
    fn answers_are_matched_by_id_and_sender() {
        let p = PendingIqs::default();
        let (tx, mut rx) = oneshot::channel();
        p.lock().insert(
            "q1".into(),
            Waiter {
                to: "a@x/phone".into(),
                tx,
            },
        );
        let result = stanza("<iq type='result' id='q1'><query xmlns='urn:x'/></iq>");
        let other: FullJid = "mallory@x/r".parse().unwrap();
        let queried: FullJid = "a@x/phone".parse().unwrap();
        assert!(!p.answer(&result, &other), "a different sender is ignored");
        assert!(rx.try_recv().is_err());
        assert!(p.answer(&result, &queried));
        assert!(matches!(rx.try_recv(), Ok(Ok(el)) if el.attr("id") == Some("q1")));
        assert!(!p.answer(&result, &queried), "answered once");
        assert!(p.is_empty());

        let (tx, mut rx) = oneshot::channel();
        p.lock().insert(
            "q2".into(),
            Waiter {
                to: "a@x/phone".into(),
                tx,
            },
        );
        assert!(p.answer(&stanza("<iq type='error' id='q2'/>"), &queried));
        assert!(matches!(rx.try_recv(), Ok(Err(IqOutError::Error))));
    }
}
