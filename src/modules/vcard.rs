//! XEP-0054 vcard-temp: every account stores one vCard, which it replaces whole with a set
//! and anyone may read (the server answers for the account, RFC 6121 §8.5.1).
//!
//! XEP-0153 (vCard-based avatars) needs nothing more from the server than storing the PHOTO,
//! as in Prosody's mod_vcard; on every set the SHA-1 of the decoded PHOTO/BINVAL is computed
//! and stored beside the vCard ([`crate::storage::StoredVCard::photo_hash`]) so the avatar
//! features built on it (XEP-0398 conversion, presence `<x xmlns='vcard-temp:x:update'/>`
//! stamping) can read it without parsing vCards.
use base64::Engine;
use minidom::Element;
use sha1::Digest;

use super::{IqFuture, IqRequest, Module, Scope};
use crate::stanza::{Condition, StanzaError};
use crate::storage::{StorageError, StoredVCard};

pub const NS: &str = "vcard-temp";

pub struct VCardModule;

impl Module for VCardModule {
    fn name(&self) -> &'static str {
        "vcard"
    }
    fn iq_namespaces(&self) -> &'static [(Scope, &'static str)] {
        &[(Scope::Account, NS)]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn account_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn handle_iq<'a>(&'a self, req: IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(async move {
            if !req.payload.is("vCard", NS) {
                return Err(StanzaError::new(Condition::BadRequest));
            }
            let Some(node) = req.to.node() else {
                return Err(StanzaError::new(Condition::ServiceUnavailable));
            };
            let user = (req.to.domain().as_str(), node.as_str());
            if req.set {
                set(&req, user).await
            } else {
                get(&req, user).await
            }
        })
    }
}

async fn get(req: &IqRequest<'_>, user: (&str, &str)) -> Result<Option<Element>, StanzaError> {
    let Some(stored) = req.server.storage.vcard().get(user).await? else {
        // §3.1 allows item-not-found or an empty vCard for the owner's own missing vCard; the
        // empty vCard (ejabberd's answer) is what read-modify-write clients such as slixmpp's
        // XEP-0153 avatar setter expect. §3.3 (1.3.0) requires service-unavailable for
        // someone else's, whether the vCard or the whole account is missing (no harvesting).
        return if req.is_self() {
            Ok(Some(Element::builder("vCard", NS).build()))
        } else {
            Err(StanzaError::new(Condition::ServiceUnavailable))
        };
    };
    let el: Element = stored
        .xml
        .parse()
        .map_err(|_| StorageError::Corrupt("stored vCard is not XML".into()))?;
    Ok(Some(el))
}

async fn set(req: &IqRequest<'_>, user: (&str, &str)) -> Result<Option<Element>, StanzaError> {
    // §3.2 / §3.3: only the owner sets a vCard.
    if !req.is_self() {
        return Err(StanzaError::new(Condition::Forbidden));
    }
    let xml = crate::xml::to_bytes(req.payload);
    let max = req.server.config.vcard.max_bytes;
    if xml.len() > max {
        return Err(StanzaError::with_text(
            Condition::NotAcceptable,
            format!("vCard too large (the limit is {max} bytes)"),
        ));
    }
    let v = StoredVCard {
        xml: String::from_utf8_lossy(&xml).into_owned(),
        photo_hash: photo_hash(req.payload),
    };
    req.server.storage.vcard().set(user, &v).await?;
    crate::avatar::photo_changed(req.server, user, v.photo_hash);
    Ok(None)
}

/// XEP-0153 §4.1 avatar hash: hex SHA-1 of the decoded PHOTO/BINVAL; None without a photo
/// (or with one that is not valid base64, which no client could display either).
pub fn photo_hash(vcard: &Element) -> Option<String> {
    let binval = vcard
        .get_child("PHOTO", NS)?
        .get_child("BINVAL", NS)?
        .text();
    let compact: String = binval.split_ascii_whitespace().collect();
    if compact.is_empty() {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .ok()?;
    let digest = sha1::Sha1::digest(&bytes);
    Some(digest.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn photo_hash_of_binval_ignores_line_breaks() {
        // base64("hello") split over lines, as vCard encoders do.
        let v: Element = "<vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE>\
                          <BINVAL>aGVs\n bG8=</BINVAL></PHOTO></vCard>"
            .parse()
            .unwrap();
        // sha1("hello")
        assert_eq!(
            photo_hash(&v).as_deref(),
            Some("aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d")
        );
        let none: Element = "<vCard xmlns='vcard-temp'><FN>x</FN></vCard>"
            .parse()
            .unwrap();
        assert_eq!(photo_hash(&none), None);
        let bad: Element = "<vCard xmlns='vcard-temp'><PHOTO><BINVAL>!!</BINVAL></PHOTO></vCard>"
            .parse()
            .unwrap();
        assert_eq!(photo_hash(&bad), None);
    }
}
