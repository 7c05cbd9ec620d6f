//! What every s2s stream shares, in both directions (RFC 6120 §4, §8.1; XEP-0220 §2.3):
//! the `jabber:server` stream header with the dialback prefix declared, stream errors, the
//! per-stanza address checks, and the hand-off of a received stanza to the core
//! ([`dispatch`]) after rewriting it into the `jabber:client` form the core works in.
//!
//! Used by `inbound` for streams peers open to us and by `outbound` for stanzas a peer
//! sends back over a stream we opened (XEP-0288). No I/O here: callers own their sockets.

use bytes::Bytes;
use jid::Jid;
use minidom::{Element, Node};
use std::collections::HashSet;
use std::sync::Arc;

use crate::server::ServerState;
use crate::xml::{self, NsContext, Stanza, StreamHeader, NS_CLIENT, NS_SERVER, NS_STREAM};

pub use super::dialback::{NS_DIALBACK, NS_DIALBACK_FEATURE};

/// XEP-0288: the element a connecting server sends to enable bidirectionality.
pub const NS_BIDI: &str = "urn:xmpp:bidi";
/// XEP-0288: the stream feature advertising it.
pub const NS_BIDI_FEATURE: &str = "urn:xmpp:features:bidi";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

/// A fatal stream condition (RFC 6120 §4.9.3), with optional human text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{condition}{}", .text.as_deref().map(|t| format!(": {t}")).unwrap_or_default())]
pub struct StreamError {
    /// The defined condition element name, e.g. "invalid-from".
    pub condition: &'static str,
    pub text: Option<String>,
}

impl StreamError {
    pub fn new(condition: &'static str, text: impl Into<String>) -> StreamError {
        StreamError {
            condition,
            text: Some(text.into()),
        }
    }

    /// `<stream:error>…</stream:error>` (the `stream` prefix is the one [`header`] declares).
    pub fn to_xml(&self) -> String {
        xml::stream_error(self.condition, None, self.text.as_deref())
    }
}

impl From<xml::XmlError> for StreamError {
    fn from(e: xml::XmlError) -> Self {
        StreamError::new(e.condition(), e.to_string())
    }
}

/// Our stream header (RFC 6120 §4.7) in `jabber:server`, declaring the `db` prefix so the
/// peer knows we speak dialback (XEP-0220 §2.3.1). Initiating side: `to` set, no `id`;
/// responding side: `id` set and `to` the peer's domain when it said which.
pub fn header(from: &str, to: Option<&str>, id: Option<&str>) -> String {
    let mut h = format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS_SERVER}' xmlns:stream='{NS_STREAM}' \
         xmlns:db='{NS_DIALBACK}' from='{}'",
        xml::escape(from)
    );
    if let Some(to) = to {
        h.push_str(&format!(" to='{}'", xml::escape(to)));
    }
    if let Some(id) = id {
        h.push_str(&format!(" id='{}'", xml::escape(id)));
    }
    h.push_str(" version='1.0' xml:lang='en'>");
    h
}

/// RFC 6120 §4.8–§4.9: a received header must be `<stream:stream>` in the streams namespace,
/// have `jabber:server` content and version 1.x. Addresses are the caller's business.
pub fn check_header(h: &StreamHeader) -> Result<(), StreamError> {
    if h.name != "stream" || h.stream_ns.as_deref() != Some(NS_STREAM) {
        return Err(StreamError::new(
            "invalid-namespace",
            "wrong stream namespace",
        ));
    }
    if h.default_ns.as_deref() != Some(NS_SERVER) {
        return Err(StreamError::new(
            "invalid-namespace",
            "this port serves jabber:server",
        ));
    }
    let major = h
        .version
        .as_deref()
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse::<u32>().ok());
    if major != Some(1) {
        return Err(StreamError::new(
            "unsupported-version",
            "XMPP 1.0 streams only",
        ));
    }
    Ok(())
}

/// A bare domain as a peer wrote it in a header or dialback element: lowercased, and
/// refused (None) unless it is a valid domain-only JID.
pub fn domain(s: &str) -> Option<String> {
    let s = s.trim().to_ascii_lowercase();
    match Jid::new(&s) {
        Ok(j) if j.node().is_none() && j.resource().is_none() => Some(j.domain().to_string()),
        _ => None,
    }
}

/// The domain pairs (local, remote) authenticated on one stream: stanzas from `remote`
/// to `local` may flow (XEP-0220 §2.5 multiplexing: several pairs per stream).
#[derive(Debug, Default, Clone)]
pub struct Pairs {
    set: HashSet<(String, String)>,
}

impl Pairs {
    /// Record a pair; false when it was already there.
    pub fn add(&mut self, local: &str, remote: &str) -> bool {
        self.set.insert((local.to_string(), remote.to_string()))
    }

    pub fn contains(&self, local: &str, remote: &str) -> bool {
        self.set.contains(&(local.to_string(), remote.to_string()))
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Every (local, remote) pair.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.set.iter().map(|(l, r)| (l.as_str(), r.as_str()))
    }
}

/// The checks every stanza received over s2s goes through (RFC 6120 §4.9.3.7, §4.9.3.11,
/// §8.1.1.2, XEP-0220 §4.3), returning its (from, to) on success: it is a stanza in the
/// stream's content namespace; 'from' and 'to' are present and valid JIDs
/// (`improper-addressing`); 'to' is a domain of ours (`host-unknown`); (to, from) is a pair
/// authenticated on this stream (`invalid-from`).
pub fn check_addressing(
    is_local: impl Fn(&str) -> bool,
    pairs: &Pairs,
    stanza: &Stanza,
) -> Result<(Jid, Jid), StreamError> {
    if !matches!(stanza.name.as_str(), "message" | "presence" | "iq") {
        return Err(StreamError::new(
            "unsupported-stanza-type",
            format!("<{}/> is not a stanza", stanza.name),
        ));
    }
    if stanza.ns != NS_SERVER && stanza.ns != NS_CLIENT {
        return Err(StreamError::new(
            "invalid-namespace",
            "stanzas are in jabber:server",
        ));
    }
    let parse = |attr: Option<&String>, what: &str| {
        attr.and_then(|v| Jid::new(v).ok()).ok_or_else(|| {
            StreamError::new(
                "improper-addressing",
                format!("missing or invalid '{what}'"),
            )
        })
    };
    let from = parse(stanza.from.as_ref(), "from")?;
    let to = parse(stanza.to.as_ref(), "to")?;
    if !is_local(to.domain().as_str()) {
        return Err(StreamError::new(
            "host-unknown",
            format!("{} is not served here", to.domain()),
        ));
    }
    if !pairs.contains(to.domain().as_str(), from.domain().as_str()) {
        return Err(StreamError::new(
            "invalid-from",
            format!(
                "{} is not authenticated for {} on this stream",
                from.domain(),
                to.domain()
            ),
        ));
    }
    Ok((from, to))
}

/// Deliver one stanza received over an authenticated s2s stream: [`check_addressing`],
/// then [`normalize`], then [`crate::federation::inbound`]. An `Err` is fatal for the
/// stream: the caller writes it ([`StreamError::to_xml`]) and closes. Awaited in the
/// stream's reader task so stanzas keep their order.
pub async fn dispatch(
    server: &Arc<ServerState>,
    pairs: &Pairs,
    stanza: &Stanza,
) -> Result<(), StreamError> {
    let (from, to) = check_addressing(|d| server.is_local_domain(d), pairs, stanza)?;
    let stanza = normalize(stanza)?;
    crate::federation::inbound(server, &from, &to, &stanza).await;
    Ok(())
}

/// A stanza received in a `jabber:server` stream re-read in the `jabber:client` context
/// (what [`crate::federation::inbound`] and every local handler expect): its bytes are
/// unchanged unless it declared `jabber:server` itself, in which case the tree is rebuilt
/// with those elements moved to `jabber:client`.
pub fn normalize(stanza: &Stanza) -> Result<Stanza, StreamError> {
    let raw = stanza.raw();
    if memchr::memmem::find(raw, NS_SERVER.as_bytes()).is_none() {
        // Validated once by the stream's parser; only the default namespace changes.
        return Ok(stanza.with_default_ns(NS_CLIENT));
    }
    // Rare: an explicit xmlns='jabber:server' somewhere (or the text mentions it).
    let el = client_namespace(stanza.element()?);
    let ctx = Arc::new(NsContext {
        default_ns: Some(NS_CLIENT.to_string()),
        prefixes: Vec::new(),
    });
    Ok(Stanza::parse(xml::to_bytes(&el), ctx)?)
}

/// `el` with every element in `jabber:server` moved to `jabber:client`.
fn client_namespace(mut el: Element) -> Element {
    let ns = el.ns();
    let ns = if ns == NS_SERVER {
        NS_CLIENT.to_string()
    } else {
        ns
    };
    let mut out = Element::bare(el.name(), ns);
    *out.attrs_mut() = el.attrs().clone();
    for node in el.take_nodes() {
        match node {
            Node::Element(child) => {
                out.append_child(client_namespace(child));
            }
            other => out.append_node(other),
        }
    }
    out
}

/// The opposite direction: a stanza in the core's form (no `xmlns` on the top-level
/// element, or `xmlns='jabber:client'`, see [`crate::federation::Remote::send`]) made fit
/// for a `jabber:server` stream. Only the top-level declaration changes; children that
/// declare `jabber:client` themselves (forwarded stanzas) keep it, as they must.
pub fn to_server_ns(stanza: Bytes) -> Bytes {
    let Some(end) = start_tag_len(&stanza) else {
        return stanza;
    };
    let tag = &stanza[..end];
    for decl in [
        b"xmlns='jabber:client'".as_slice(),
        b"xmlns=\"jabber:client\"".as_slice(),
    ] {
        if let Some(i) = memchr::memmem::find(tag, decl) {
            if i > 0 && matches!(tag[i - 1], b' ' | b'\t' | b'\r' | b'\n') {
                let mut v = Vec::with_capacity(stanza.len());
                v.extend_from_slice(&stanza[..i]);
                v.extend_from_slice(format!("xmlns='{NS_SERVER}'").as_bytes());
                v.extend_from_slice(&stanza[i + decl.len()..]);
                return Bytes::from(v);
            }
        }
    }
    stanza
}

/// Length of the first start tag (through its '>'), quotes respected.
fn start_tag_len(raw: &[u8]) -> Option<usize> {
    let mut quote = 0u8;
    for (i, &b) in raw.iter().enumerate() {
        match (quote, b) {
            (0, b'\'' | b'"') => quote = b,
            (0, b'>') => return Some(i + 1),
            (q, b) if q == b => quote = 0,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{Event, Limits, StreamParser};

    /// Parse `body` as the content of a jabber:server stream with the db prefix declared.
    fn server_stanza(body: &str) -> Stanza {
        let mut p = StreamParser::new(Limits::default());
        p.feed(header("a.example", Some("b.example"), Some("x")).as_bytes());
        p.feed(body.as_bytes());
        assert!(matches!(p.next_event().unwrap(), Some(Event::Open(_))));
        match p.next_event().unwrap() {
            Some(Event::Stanza(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    fn pairs() -> Pairs {
        let mut p = Pairs::default();
        p.add("local.example", "remote.example");
        p
    }

    fn local(d: &str) -> bool {
        d == "local.example" || d == "other.example"
    }

    #[test]
    fn header_declares_dialback_and_parses_back() {
        let mut p = StreamParser::new(Limits::default());
        p.feed(header("a.example", Some("b.example"), Some("id1")).as_bytes());
        let Some(Event::Open(h)) = p.next_event().unwrap() else {
            panic!()
        };
        check_header(&h).unwrap();
        assert_eq!(h.from.as_deref(), Some("a.example"));
        assert_eq!(h.to.as_deref(), Some("b.example"));
        assert_eq!(h.id.as_deref(), Some("id1"));
        assert!(p
            .ns_context()
            .prefixes
            .iter()
            .any(|(pfx, ns)| pfx == "db" && ns == NS_DIALBACK));
    }

    #[test]
    fn header_checks() {
        let mut h = StreamHeader {
            name: "stream".into(),
            stream_ns: Some(NS_STREAM.into()),
            default_ns: Some(NS_CLIENT.into()),
            version: Some("1.0".into()),
            ..Default::default()
        };
        assert_eq!(check_header(&h).unwrap_err().condition, "invalid-namespace");
        h.default_ns = Some(NS_SERVER.into());
        check_header(&h).unwrap();
        h.version = None;
        assert_eq!(
            check_header(&h).unwrap_err().condition,
            "unsupported-version"
        );
    }

    #[test]
    fn addressing_accepts_an_authenticated_pair() {
        let st = server_stanza(
            "<message from='juliet@remote.example/x' to='romeo@local.example'><body>hi</body></message>",
        );
        let (from, to) = check_addressing(local, &pairs(), &st).unwrap();
        assert_eq!(from.to_string(), "juliet@remote.example/x");
        assert_eq!(to.to_string(), "romeo@local.example");
    }

    #[test]
    fn addressing_errors_name_the_rfc6120_condition() {
        let cases = [
            ("<message to='romeo@local.example'/>", "improper-addressing"),
            ("<message from='remote.example'/>", "improper-addressing"),
            (
                "<message from='remote.example' to='@@bad'/>",
                "improper-addressing",
            ),
            (
                "<message from='remote.example' to='x@elsewhere.example'/>",
                "host-unknown",
            ),
            (
                "<message from='spoof.example' to='romeo@local.example'/>",
                "invalid-from",
            ),
            // Authenticated for local.example only, not for other.example.
            (
                "<message from='remote.example' to='romeo@other.example'/>",
                "invalid-from",
            ),
            (
                "<db:result from='remote.example' to='local.example'/>",
                "unsupported-stanza-type",
            ),
        ];
        for (body, cond) in cases {
            let st = server_stanza(body);
            let err = check_addressing(local, &pairs(), &st).unwrap_err();
            assert_eq!(err.condition, cond, "{body}");
        }
    }

    #[test]
    fn normalize_moves_default_namespace_to_client() {
        let st = server_stanza(
            "<message from='a@remote.example' to='b@local.example'><body>hi</body></message>",
        );
        assert_eq!(st.ns, NS_SERVER);
        let n = normalize(&st).unwrap();
        assert_eq!(n.ns, NS_CLIENT);
        assert_eq!(n.raw(), st.raw(), "no copy on the common path");
        let el = n.element().unwrap();
        assert!(el.get_child("body", NS_CLIENT).is_some());
    }

    #[test]
    fn normalize_rewrites_explicit_server_namespace() {
        let st = server_stanza(
            "<message xmlns='jabber:server' from='a@remote.example' to='b@local.example'>\
             <error type='cancel' xmlns='jabber:server'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
        );
        let n = normalize(&st).unwrap();
        assert_eq!(n.ns, NS_CLIENT);
        let el = n.element().unwrap();
        assert!(el.get_child("error", NS_CLIENT).is_some());
        assert_eq!(n.from.as_deref(), Some("a@remote.example"));
    }

    #[test]
    fn to_server_ns_rewrites_only_the_top_level_declaration() {
        let b = Bytes::from_static(
            b"<message xmlns='jabber:client' to='a@b'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'/></forwarded></message>",
        );
        let out = to_server_ns(b);
        assert_eq!(
            &out[..],
            &b"<message xmlns='jabber:server' to='a@b'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'/></forwarded></message>"[..]
        );
        let plain = Bytes::from_static(b"<presence to='a@b' type='x&gt;y'/>");
        assert_eq!(to_server_ns(plain.clone()), plain);
    }

    #[test]
    fn stream_error_xml() {
        let e = StreamError::new("invalid-from", "a<b");
        assert_eq!(
            e.to_xml(),
            format!("<stream:error><invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>a&lt;b</text></stream:error>")
        );
    }

    #[test]
    fn domains_are_validated_and_lowercased() {
        assert_eq!(domain("Remote.Example").as_deref(), Some("remote.example"));
        assert_eq!(domain("user@remote.example"), None);
        assert_eq!(domain(""), None);
    }
}
