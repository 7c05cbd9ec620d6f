//! XEP-0049 private XML storage (`jabber:iq:private`): an account stores one element per
//! (namespace, element name) and reads it back; nobody else can do either.
//!
//! Some namespaces have a better home elsewhere (XEP-0411: `storage:bookmarks` mirrored to
//! XEP-0402 PEP bookmarks). A module that takes over a namespace implements [`Claim`] and is
//! listed in [`claimant`]; everything unclaimed is stored in the database.
use minidom::Element;

use super::{IqFuture, IqRequest, Module, Scope};
use crate::stanza::{Condition, StanzaError};
use crate::storage::StorageError;

pub const NS: &str = "jabber:iq:private";

/// Namespaces no stored element may use: stanza namespaces and this protocol's own
/// (XEP-0049 §2.3 lets servers refuse reserved namespaces with not-acceptable).
const REFUSED: &[&str] = &["jabber:client", "jabber:server", NS];

/// Another module's handling of one private-storage element, instead of the database.
pub trait Claim: Send + Sync {
    /// Answer a get: the stored element, or None when there is nothing (the requested empty
    /// element is then echoed).
    fn get<'a>(&'a self, req: &'a IqRequest<'a>, requested: &'a Element) -> IqFuture<'a>;
    /// Store one element.
    fn set<'a>(&'a self, req: &'a IqRequest<'a>, element: &'a Element) -> IqFuture<'a>;
}

/// Which module, if any, has claimed (namespace, element name). None: stored here.
/// The place to hook XEP-0411 (`("storage:bookmarks", "storage")` → PEP bookmarks) later.
pub fn claimant(ns: &str, name: &str) -> Option<&'static dyn Claim> {
    match (ns, name) {
        // XEP-0402 §5.3 (#compat): XEP-0048 bookmarks live in the PEP bookmarks node.
        (crate::pep::bookmarks::NS_LEGACY, "storage") => Some(&crate::pep::bookmarks::Compat),
        _ => None,
    }
}

pub struct PrivateStorage;

impl Module for PrivateStorage {
    fn name(&self) -> &'static str {
        "private"
    }
    fn iq_namespaces(&self) -> &'static [(Scope, &'static str)] {
        &[(Scope::Account, NS)]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn handle_iq<'a>(&'a self, req: IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(async move {
            // §2.3: forbidden for anyone but the owner.
            if !req.is_self() {
                return Err(StanzaError::new(Condition::Forbidden));
            }
            if !req.payload.is("query", NS) {
                return Err(StanzaError::new(Condition::BadRequest));
            }
            let children: Vec<&Element> = req.payload.children().collect();
            // §2.3: at least one child, and a get asks for exactly one.
            if children.is_empty() || (!req.set && children.len() > 1) {
                return Err(StanzaError::new(Condition::NotAcceptable));
            }
            for c in &children {
                if REFUSED.contains(&c.ns().as_str()) {
                    return Err(StanzaError::with_text(
                        Condition::NotAcceptable,
                        format!("namespace {} cannot be stored", c.ns()),
                    ));
                }
            }
            if req.set {
                set(&req, &children).await
            } else {
                get(&req, children[0]).await
            }
        })
    }
}

fn user<'a>(req: &'a IqRequest<'_>) -> (&'a str, &'a str) {
    (
        req.to.domain().as_str(),
        req.to.node().map(|n| n.as_str()).unwrap_or(""),
    )
}

async fn get(req: &IqRequest<'_>, requested: &Element) -> Result<Option<Element>, StanzaError> {
    let ns = requested.ns();
    let name = requested.name();
    let found = match claimant(&ns, name) {
        Some(c) => c.get(req, requested).await?,
        None => match req
            .server
            .storage
            .private_xml()
            .get(user(req), &ns, name)
            .await?
        {
            Some(xml) => Some(
                xml.parse::<Element>()
                    .map_err(|_| StorageError::Corrupt("stored private XML is not XML".into()))?,
            ),
            None => None,
        },
    };
    // §2.3: nothing stored yet answers with the requested (empty) element.
    let el = found.unwrap_or_else(|| requested.clone());
    Ok(Some(Element::builder("query", NS).append(el).build()))
}

async fn set(req: &IqRequest<'_>, children: &[&Element]) -> Result<Option<Element>, StanzaError> {
    let cfg = &req.server.config.private_storage;
    // Check everything before storing anything, so a refused set changes nothing.
    let mut serialized = Vec::with_capacity(children.len());
    for c in children {
        let xml = crate::xml::to_bytes(c);
        if xml.len() > cfg.max_bytes {
            return Err(StanzaError::with_text(
                Condition::NotAcceptable,
                format!("element too large (the limit is {} bytes)", cfg.max_bytes),
            ));
        }
        serialized.push(String::from_utf8_lossy(&xml).into_owned());
    }
    for (c, xml) in children.iter().zip(&serialized) {
        let ns = c.ns();
        if let Some(claim) = claimant(&ns, c.name()) {
            claim.set(req, c).await?;
            continue;
        }
        let stored = req
            .server
            .storage
            .private_xml()
            .set(user(req), &ns, c.name(), xml, cfg.max_entries)
            .await?;
        if !stored {
            return Err(StanzaError::with_text(
                Condition::ResourceConstraint,
                format!(
                    "private storage is full ({} namespaces at most)",
                    cfg.max_entries
                ),
            ));
        }
    }
    Ok(None)
}
