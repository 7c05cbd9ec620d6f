//! XEP-0398 User Avatar to vCard-Based Avatars Conversion.
//!
//! Modern clients publish their avatar with XEP-0084 (PEP) while MUC participants and older
//! clients read XEP-0153 vCard avatars. The server bridges the two:
//! - PEP → vCard (§3.2, MUST): a metadata publication copies the referenced image from the
//!   owner's `urn:xmpp:avatar:data` node into the vCard PHOTO ([`on_publish`], called from
//!   the PEP publish IQ). Only when the data node is world-readable (§6 SHOULD), since
//!   vCards are readable by anyone.
//! - presence hash (§3.3, MUST): every available presence the user sends carries the
//!   XEP-0153 `<x xmlns='vcard-temp:x:update'><photo>hash</photo></x>` ([`stamp`]). The hash
//!   of each online user is cached ([`PhotoCache`]) so a presence costs no database query.
//!
//! vCard → PEP (§3.2, MAY) is not implemented.
use std::collections::HashMap;
use std::sync::RwLock;

use base64::Engine;
use bytes::Bytes;
use minidom::Element;
use sha1::Digest;

use crate::c2s::session::Ctx;
use crate::modules::Module;
use crate::server::ServerState;
use crate::storage::{AccessModel, StorageError, StoredVCard};
use crate::xml::{Stanza, NS_CLIENT};

pub const FEATURE: &str = "urn:xmpp:pep-vcard-conversion:0";
pub const NODE_METADATA: &str = "urn:xmpp:avatar:metadata";
pub const NODE_DATA: &str = "urn:xmpp:avatar:data";
pub const NS_UPDATE: &str = "vcard-temp:x:update";
const NS_VCARD: &str = crate::modules::vcard::NS;

/// Advertises the conversion on account disco#info (§2); handles no IQ of its own.
pub struct AvatarConversion;

impl Module for AvatarConversion {
    fn name(&self) -> &'static str {
        "avatar-conversion"
    }
    fn account_features(&self) -> &'static [&'static str] {
        &[FEATURE]
    }
}

/// The vCard photo hash of online users, by bare JID: `None` inside means "no photo".
/// An absent entry is loaded from the database on the user's next presence.
#[derive(Default)]
pub struct PhotoCache(RwLock<HashMap<String, Option<String>>>);

impl PhotoCache {
    fn get(&self, bare: &str) -> Option<Option<String>> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.get(bare).cloned()
    }

    /// A value loaded from the database: never overwrites one set meanwhile by [`Self::set`].
    fn fill(&self, bare: &str, hash: Option<String>) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        map.entry(bare.to_string()).or_insert(hash);
    }

    fn set(&self, bare: &str, hash: Option<String>) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        map.insert(bare.to_string(), hash);
    }

    /// The user's last resource went away (the cache holds online users only).
    pub fn evict(&self, bare: &str) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        map.remove(bare);
    }
}

fn bare_of(user: (&str, &str)) -> String {
    format!("{}@{}", user.1, user.0)
}

/// The vCard of `user` was replaced: remember its photo hash while the user is online.
pub fn photo_changed(server: &ServerState, user: (&str, &str), hash: Option<String>) {
    let bare = bare_of(user);
    if server.router.is_online(&bare) {
        server.avatars.set(&bare, hash);
    }
}

async fn current_hash(ctx: &Ctx<'_>) -> Option<String> {
    let bare = ctx.bare.as_str();
    if let Some(h) = ctx.server.avatars.get(bare) {
        return h;
    }
    match ctx.server.storage.vcard().photo_hash(ctx.user()).await {
        Ok(h) => {
            ctx.server.avatars.fill(bare, h.clone());
            h
        }
        Err(e) => {
            tracing::warn!(error = %e, "vCard photo hash load failed");
            None
        }
    }
}

/// §3.3: the available presence `st` with the user's photo hash put in, or None to send it
/// as it is (not available, no photo, the hash already there, or an empty `<photo/>`: the
/// client says it has not loaded its avatar yet).
pub async fn stamp(ctx: &Ctx<'_>, st: &Stanza) -> Option<Stanza> {
    if st.type_.is_some() {
        return None;
    }
    let hash = current_hash(ctx).await?;
    let mut el = st.element().ok()?;
    if !stamp_element(&mut el, &hash) {
        return None;
    }
    let ctx_ns = std::sync::Arc::new(crate::xml::NsContext {
        default_ns: Some(NS_CLIENT.to_string()),
        prefixes: Vec::new(),
    });
    match Stanza::parse(crate::xml::to_bytes(&el), ctx_ns) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "could not stamp presence with the avatar hash");
            None
        }
    }
}

/// Put `hash` into the presence `el`; false when it is to be sent unchanged (§3.3).
fn stamp_element(el: &mut Element, hash: &str) -> bool {
    if let Some(x) = el.get_child("x", NS_UPDATE) {
        match x.get_child("photo", NS_UPDATE).map(|p| p.text()) {
            Some(p) if p.trim().is_empty() || p.trim() == hash => return false,
            // Absent (MUST overwrite) or another hash (MAY: the server's is authoritative).
            _ => {}
        }
    }
    while el.remove_child("x", NS_UPDATE).is_some() {}
    let photo = Element::builder("photo", NS_UPDATE).append(hash).build();
    el.append_child(Element::builder("x", NS_UPDATE).append(photo).build());
    true
}

/// Why a metadata publication was not converted (logged at debug level only: the PEP
/// publication itself succeeded and the client is not told).
#[derive(Debug, thiserror::Error)]
enum Skip {
    #[error("no metadata payload")]
    NotMetadata,
    #[error("no info without a url")]
    NoLocalInfo,
    #[error("data node missing or not open")]
    NotOpen,
    #[error("no data item with the info's id")]
    NoData,
    #[error("data is not base64 or does not match its SHA-1 id")]
    BadData,
    #[error("resulting vCard exceeds the size limit")]
    TooLarge,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// §3.2 PEP → vCard, after the owner published `payload` to `node`. Awaited by the publish
/// IQ (a database write, off the message path); failures are logged, never returned.
pub async fn on_publish(server: &ServerState, user: (&str, &str), node: &str, payload: &Element) {
    if node != NODE_METADATA {
        return;
    }
    if let Err(e) = convert(server, user, payload).await {
        match e {
            Skip::Storage(e) => tracing::warn!(error = %e, "avatar conversion failed"),
            other => tracing::debug!(reason = %other, "avatar not converted to vCard"),
        }
    }
}

async fn convert(server: &ServerState, user: (&str, &str), payload: &Element) -> Result<(), Skip> {
    if !payload.is("metadata", NODE_METADATA) {
        return Err(Skip::NotMetadata);
    }
    let infos: Vec<&Element> = payload
        .children()
        .filter(|c| c.is("info", NODE_METADATA))
        .collect();
    if infos.is_empty() {
        // XEP-0084 §4.2: empty metadata disables the avatar; the vCard follows.
        return update_vcard(server, user, None).await;
    }
    let info = infos
        .into_iter()
        .find(|i| i.attr("url").is_none())
        .ok_or(Skip::NoLocalInfo)?;
    let id = info.attr("id").ok_or(Skip::NoData)?;
    let data_node = server
        .storage
        .pubsub()
        .node(user, NODE_DATA)
        .await?
        .filter(|n| n.config.access_model == AccessModel::Open)
        .ok_or(Skip::NotOpen)?;
    let items = server
        .storage
        .pubsub()
        .items(data_node.id, &[id.to_string()], None)
        .await?;
    let item = items.into_iter().find(|i| i.id == id).ok_or(Skip::NoData)?;
    let data: Element = item.payload.parse().map_err(|_| Skip::BadData)?;
    if !data.is("data", NODE_DATA) {
        return Err(Skip::BadData);
    }
    let compact: String = data.text().split_ascii_whitespace().collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| Skip::BadData)?;
    if bytes.is_empty() || !hex(&sha1::Sha1::digest(&bytes)).eq_ignore_ascii_case(id) {
        return Err(Skip::BadData);
    }
    let mime = info.attr("type").unwrap_or("image/png");
    update_vcard(server, user, Some((mime, &bytes))).await
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Replace (or with None remove) the PHOTO of the user's vCard, keeping its other fields.
async fn update_vcard(
    server: &ServerState,
    user: (&str, &str),
    photo: Option<(&str, &[u8])>,
) -> Result<(), Skip> {
    let stored = server.storage.vcard().get(user).await?;
    let mut vcard = match &stored {
        Some(v) => v
            .xml
            .parse::<Element>()
            .map_err(|_| StorageError::Corrupt("stored vCard is not XML".into()))?,
        None if photo.is_none() => return Ok(()),
        None => Element::builder("vCard", NS_VCARD).build(),
    };
    let had_photo = vcard.get_child("PHOTO", NS_VCARD).is_some();
    while vcard.remove_child("PHOTO", NS_VCARD).is_some() {}
    if let Some((mime, bytes)) = photo {
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        vcard.append_child(
            Element::builder("PHOTO", NS_VCARD)
                .append(Element::builder("TYPE", NS_VCARD).append(mime).build())
                .append(Element::builder("BINVAL", NS_VCARD).append(b64).build())
                .build(),
        );
    } else if !had_photo {
        return Ok(());
    }
    let xml: Bytes = crate::xml::to_bytes(&vcard);
    if xml.len() > server.config.vcard.max_bytes {
        return Err(Skip::TooLarge);
    }
    let hash = crate::modules::vcard::photo_hash(&vcard);
    let v = StoredVCard {
        xml: String::from_utf8_lossy(&xml).into_owned(),
        photo_hash: hash.clone(),
    };
    server.storage.vcard().set(user, &v).await?;
    photo_changed(server, user, hash);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photos(el: &Element) -> Vec<String> {
        el.children()
            .filter(|c| c.is("x", NS_UPDATE))
            .map(|x| {
                x.get_child("photo", NS_UPDATE)
                    .map(|p| p.text())
                    .unwrap_or_default()
            })
            .collect()
    }

    #[test]
    fn stamping_follows_the_business_rules() {
        let h = "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d";
        let parse = |s: &str| -> Element { s.parse().unwrap() };
        // No x: added.
        let mut el = parse("<presence xmlns='jabber:client'><show>away</show></presence>");
        assert!(stamp_element(&mut el, h));
        assert_eq!(photos(&el), [h]);
        assert_eq!(
            el.get_child("show", NS_CLIENT).map(|s| s.text()).as_deref(),
            Some("away")
        );
        // x without photo: overwritten (MUST); another hash: replaced (MAY).
        for x in [
            "<x xmlns='vcard-temp:x:update'/>",
            "<x xmlns='vcard-temp:x:update'><photo>0123</photo></x>",
        ] {
            let mut el = parse(&format!("<presence xmlns='jabber:client'>{x}</presence>"));
            assert!(stamp_element(&mut el, h));
            assert_eq!(photos(&el), [h]);
        }
        // Empty photo (not ready) or the same hash: unchanged.
        for p in ["<photo/>".to_string(), format!("<photo>{h}</photo>")] {
            let mut el = parse(&format!(
                "<presence xmlns='jabber:client'><x xmlns='vcard-temp:x:update'>{p}</x></presence>"
            ));
            assert!(!stamp_element(&mut el, h));
        }
    }
}
