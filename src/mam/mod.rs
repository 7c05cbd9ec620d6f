//! XEP-0313 Message Archive Management for user archives, with XEP-0359 stanza ids,
//! XEP-0441 preferences and XEP-0059 paging.
//!
//! - [`on_message`] is the one hook on the message path (`crate::message`): it strips
//!   `<stanza-id/>` elements that claim to come from the recipient's server (XEP-0359 §7,
//!   spoofing), decides whether the message is archived (XEP-0313 §7.1.1 and Prosody's
//!   `should_store`: chat/normal with a body or an encrypted payload, never errors, headlines
//!   or groupchat, honouring XEP-0334 `<no-store/>`/`<no-permanent-store/>`), queues a row
//!   for the sender's archive (outgoing) and the recipient's (incoming), and stamps the
//!   recipient's copy with `<stanza-id by='recipient' id='UID'/>`, the UID of its archive row.
//!   Offline messages take the same path, so they are archived too.
//! - [`writer`]: the background writer (batched inserts) and the retention task.
//! - [`query`]: queries, form discovery, metadata; [`prefs`]: XEP-0441.

use bytes::Bytes;
use jid::{BareJid, Jid};
use minidom::Element;

use crate::c2s::session::Ctx;
use crate::modules::{IqFuture, IqRequest, Module, Scope};
use crate::server::ServerState;
use crate::stanza::{BuilderExt, Condition, ElementExt, StanzaError};
use crate::storage::{NewArchived, Storage, StorageError};
use crate::xml::{self, Stanza};

pub mod prefs;
pub mod query;
pub mod writer;

pub const NS_MAM: &str = "urn:xmpp:mam:2";
pub const NS_MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";
pub const NS_SID: &str = "urn:xmpp:sid:0";
pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";
const NS_HINTS: &str = "urn:xmpp:hints";

/// The archive's shared state (in `ServerState`).
pub struct ArchiveState {
    pub writer: writer::Writer,
    pub prefs: prefs::PrefsCache,
}

impl ArchiveState {
    /// Load the preferences and start the writer and the retention task.
    pub async fn start(
        storage: &Storage,
        cfg: &crate::config::Mam,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<ArchiveState, StorageError> {
        let prefs = prefs::PrefsCache::load(storage).await?;
        writer::spawn_expiry(storage.clone(), cfg, shutdown);
        Ok(ArchiveState {
            writer: writer::Writer::start(storage.clone(), cfg),
            prefs,
        })
    }
}

pub struct Mam;

impl Module for Mam {
    fn name(&self) -> &'static str {
        "mam"
    }
    fn iq_namespaces(&self) -> &'static [(Scope, &'static str)] {
        &[(Scope::Account, NS_MAM)]
    }
    fn account_features(&self) -> &'static [&'static str] {
        &[NS_MAM, NS_MAM_EXTENDED, NS_SID]
    }
    fn handle_iq<'a>(&'a self, req: IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(handle(req))
    }
}

async fn handle(req: IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
    // XEP-0313 §8.1: a user archive is the user's only.
    let (true, Some(Ok(from))) = (req.is_self(), req.from.map(Jid::try_as_full)) else {
        return Err(StanzaError::new(Condition::Forbidden));
    };
    let p = req.payload;
    match (p.name(), req.set) {
        ("query", false) => Ok(Some(query::form())),
        ("query", true) => {
            let q = query::parse(p)?;
            let Some(out) = req.out else {
                return Err(StanzaError::new(Condition::ServiceUnavailable));
            };
            let fin = query::run(req.server, req.to, from, q, out).await?;
            Ok(Some(fin))
        }
        ("metadata", false) => Ok(Some(query::metadata(req.server, req.to).await?)),
        ("prefs", set) => prefs::handle(req.server, req.to, set, p).await,
        _ => Err(StanzaError::new(Condition::BadRequest)),
    }
}

/// XEP-0334 hints and payloads that make a message worth archiving (Prosody's rules).
pub(crate) fn worth_archiving(el: &Element) -> bool {
    if el.has_child("no-store", NS_HINTS) || el.has_child("no-permanent-store", NS_HINTS) {
        return false;
    }
    if el.has_child("store", NS_HINTS) || el.has_child("body", xml::NS_CLIENT) {
        return true;
    }
    el.children().any(|c| {
        c.is("encryption", "urn:xmpp:eme:0")
            || c.is("encrypted", "eu.siacs.conversations.axolotl")
            || c.is("encrypted", "urn:xmpp:omemo:2")
            || c.is("openpgp", "urn:xmpp:openpgp:0")
            || c.is("x", "jabber:x:encrypted")
            || c.is("x", "jabber:x:conference")
            || c.ns() == "urn:xmpp:chat-markers:0" && c.name() != "markable"
    })
}

/// Remove `<stanza-id/>` elements whose `by` is the recipient (only its server may add
/// those). True when something was removed.
fn strip_spoofed(el: &mut Element, recipient: &BareJid) -> bool {
    let spoofed = |c: &Element| {
        c.is("stanza-id", NS_SID)
            && c.attr("by")
                .and_then(|b| Jid::new(b).ok())
                .is_some_and(|b| b == *recipient)
    };
    if !el.children().any(spoofed) {
        return false;
    }
    for node in el.take_nodes() {
        if !matches!(&node, minidom::Node::Element(c) if spoofed(c)) {
            el.append_node(node);
        }
    }
    true
}

/// A fresh archive UID: a 48-bit millisecond timestamp then 80 random bits, in lowercase hex.
/// The random part keeps UIDs unguessable (a UID cannot be used to probe an archive); the
/// time prefix makes them sort by creation, so inserting into the per-account unique index
/// appends at the end of the account's range instead of touching a random B-tree page per
/// row (with fully random UIDs, that index was most of an archive write's cost on SQLite).
pub(crate) fn new_uid() -> String {
    use std::fmt::Write;
    let ms = u64::try_from(crate::stanza::now_ms()).unwrap_or(0) & 0xffff_ffff_ffff;
    let rnd: [u8; 10] = rand::random();
    let mut s = String::with_capacity(32);
    let _ = write!(s, "{ms:012x}");
    for b in rnd {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The message hook (see the module docs). `kind` is the RFC 6121 message type, `to` the
/// account addressed. Returns the stanza to route instead of `st` when it changed
/// (stamped with a stanza-id or stripped of a spoofed one), None to route `st` as it is.
pub async fn on_message(ctx: &Ctx<'_>, st: &Stanza, kind: &str, to: &Jid) -> Option<Stanza> {
    let sender = Sender {
        server: ctx.server,
        jid: ctx.jid,
        bare: ctx.bare,
    };
    on_message_from(&sender, st, kind, to).await
}

/// [`on_message`] for a message from another domain (`federation::inbound`): only the local
/// recipient's archive gets a row.
pub async fn on_remote_message(
    server: &ServerState,
    from: &Jid,
    st: &Stanza,
    kind: &str,
    to: &Jid,
) -> Option<Stanza> {
    let bare = from.to_bare();
    let sender = Sender {
        server,
        jid: from,
        bare: &bare,
    };
    on_message_from(&sender, st, kind, to).await
}

/// Who sent a message being archived: a local session or another domain's JID. Only the
/// parties this server serves get archive rows.
struct Sender<'a> {
    server: &'a ServerState,
    jid: &'a Jid,
    bare: &'a BareJid,
}

async fn on_message_from(ctx: &Sender<'_>, st: &Stanza, kind: &str, to: &Jid) -> Option<Stanza> {
    let archivable = matches!(kind, "chat" | "normal");
    let has_sid = memchr::memmem::find(st.raw(), NS_SID.as_bytes()).is_some();
    if !archivable && !has_sid {
        return None;
    }
    // Boxed: rarely large, but kept out of every session's future.
    if has_sid {
        Box::pin(archive_tree(ctx, st, archivable, to)).await
    } else {
        Box::pin(archive_bytes(ctx, st, to)).await
    }
}

/// The common case, a message without any `<stanza-id/>` (so nothing to strip): the archive
/// text is the received bytes with their start tag rewritten, and the stamp is spliced in
/// before the end tag, instead of serializing a tree twice and parsing the result again.
/// The tree is only read, to decide whether the message is archived at all.
async fn archive_bytes(ctx: &Sender<'_>, st: &Stanza, to: &Jid) -> Option<Stanza> {
    let el = st.element().ok()?;
    if !worth_archiving(&el) {
        return None;
    }
    let text = st.standalone(Some(ctx.jid.as_str()));
    let text = String::from_utf8_lossy(&text).into_owned();
    let uid = queue_rows(ctx, to, &el, text).await?;
    let stamp = format!(
        "<stanza-id xmlns='{NS_SID}' by='{}' id='{}'/>",
        xml::escape(to.to_bare().as_str()),
        xml::escape(&uid)
    );
    st.with_child(&stamp).or_else(|| {
        tracing::error!("archived message has no end tag; routed unstamped");
        None
    })
}

/// Messages carrying a `<stanza-id/>`: spoofed ones are removed from the tree, which is then
/// serialized (rare: only clients that forward or replay stanzas send these).
async fn archive_tree(ctx: &Sender<'_>, st: &Stanza, archivable: bool, to: &Jid) -> Option<Stanza> {
    let mut el = st.element().ok()?;
    let stripped = strip_spoofed(&mut el, &to.to_bare());
    if !(archivable && worth_archiving(&el)) {
        return if stripped { reparse(st, &el) } else { None };
    }
    el.put_attr("from", ctx.jid.as_str());
    let text = String::from_utf8_lossy(&xml::to_bytes(&el)).into_owned();
    match queue_rows(ctx, to, &el, text).await {
        Some(uid) => {
            el.append_child(
                Element::builder("stanza-id", NS_SID)
                    .at("by", to.to_bare().as_str())
                    .at("id", uid)
                    .build(),
            );
            reparse(st, &el)
        }
        None if stripped => reparse(st, &el),
        None => None,
    }
}

/// Queue the archive rows of a message worth archiving (`el`, its archive `text`) for the
/// sender and the recipient as their preferences say. Returns the UID of the recipient's
/// row (its `<stanza-id/>`) when the recipient archives it.
async fn queue_rows(ctx: &Sender<'_>, to: &Jid, el: &Element, text: String) -> Option<String> {
    let server = ctx.server;
    let recipient = to.to_bare();
    let stamp_ms = crate::stanza::now_ms();
    let origin_id = el
        .get_child("origin-id", NS_SID)
        .and_then(|o| o.attr("id"))
        .map(str::to_string);
    let to_res = to.resource().map(|r| r.as_str()).unwrap_or_default();
    let from_res = ctx.jid.resource().map(|r| r.as_str()).unwrap_or_default();
    let user = |j: &BareJid| {
        (
            j.domain().to_string(),
            j.node().map(|n| n.to_string()).unwrap_or_default(),
        )
    };
    let row = |owner: &BareJid, with: &BareJid, res: &str, outgoing: bool| NewArchived {
        owner: user(owner),
        stanza_id: new_uid(),
        stamp_ms,
        with_bare: with.to_string(),
        with_res: res.to_string(),
        origin_id: origin_id.clone(),
        outgoing,
        stanza: text.clone(),
    };
    let mut rows = Vec::with_capacity(2);
    let to_self = recipient == *ctx.bare;
    // Across domains, each server archives for its own users (XEP-0313 §5).
    let local = |j: &BareJid| j.node().is_some() && server.serves(j.domain().as_str());
    if !to_self && local(ctx.bare) && prefs::wants(server, ctx.bare, &recipient, to_res).await {
        rows.push(row(ctx.bare, &recipient, to_res, true));
    }
    // A message to oneself is stored once, as the recipient's copy.
    let mut uid = None;
    if local(&recipient) && prefs::wants(server, &recipient, ctx.bare, from_res).await {
        let r = row(&recipient, ctx.bare, from_res, to_self);
        uid = Some(r.stanza_id.clone());
        rows.push(r);
    }
    server.archive.writer.write(rows).await;
    uid
}

/// A routable [`Stanza`] from a modified element (its namespace declared on the top level).
fn reparse(st: &Stanza, el: &Element) -> Option<Stanza> {
    let bytes: Bytes = xml::to_bytes(el);
    match Stanza::parse(bytes, st.ns_context().clone()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "archived message does not re-parse; routed unstamped");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(s: &str) -> Element {
        s.parse().unwrap()
    }

    #[test]
    fn what_is_archived() {
        let m = |inner: &str| el(&format!("<message xmlns='jabber:client'>{inner}</message>"));
        assert!(worth_archiving(&m("<body>hi</body>")));
        assert!(worth_archiving(&m(
            "<encrypted xmlns='eu.siacs.conversations.axolotl'/>"
        )));
        assert!(worth_archiving(&m(
            "<displayed xmlns='urn:xmpp:chat-markers:0' id='x'/>"
        )));
        assert!(worth_archiving(&m("<store xmlns='urn:xmpp:hints'/>")));
        assert!(!worth_archiving(&m(
            "<active xmlns='http://jabber.org/protocol/chatstates'/>"
        )));
        assert!(!worth_archiving(&m(
            "<body>hi</body><no-store xmlns='urn:xmpp:hints'/>"
        )));
        assert!(!worth_archiving(&m(
            "<body>hi</body><no-permanent-store xmlns='urn:xmpp:hints'/>"
        )));
    }

    #[test]
    fn strips_only_the_recipients_stanza_ids() {
        let mut m = el("<message xmlns='jabber:client'><body>x</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='Bob@Example.org' id='forged'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='room@muc.example.org' id='keep'/>\
             </message>");
        let bob = BareJid::new("bob@example.org").unwrap();
        assert!(strip_spoofed(&mut m, &bob));
        let ids: Vec<_> = m
            .children()
            .filter(|c| c.is("stanza-id", NS_SID))
            .filter_map(|c| c.attr("id"))
            .collect();
        assert_eq!(ids, ["keep"]);
        assert!(m.has_child("body", xml::NS_CLIENT));
        assert!(!strip_spoofed(&mut m, &bob));
    }

    #[test]
    fn uids_are_unique_and_opaque() {
        let a = new_uid();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let b = new_uid();
        assert_ne!(a, b);
        // Time-ordered: a later UID never sorts before an earlier one's millisecond.
        assert!(b[..12] >= a[..12]);
    }
}
