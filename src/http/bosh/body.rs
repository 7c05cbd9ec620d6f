//! The XEP-0124 §4 `<body/>` wrapper: parsing a client's request and building responses.
//!
//! The wrapper's own attributes are read with quick-xml from its start tag; its payloads are
//! framed and validated by the same incremental parser (and limits, and RFC 6120 §11
//! restricted-XML profile) that reads TCP clients, by handing it the request as if the
//! `<body>` were a stream header. Each payload comes out as standalone bytes (declaring every
//! namespace it uses), ready to be written into the session's virtual stream.

use bytes::Bytes;
use std::sync::Arc;

use crate::xml::{Event, Limits, NsContext, Stanza, StreamParser, NS_CLIENT};

pub const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
pub const NS_XBOSH: &str = "urn:xmpp:xbosh";

/// Highest rid a client may use (XEP-0124 §14.1: 2^53 - 1, exact in IEEE doubles).
const MAX_RID: u64 = (1 << 53) - 1;

/// Why a request body is refused: always the `bad-request` terminal binding condition.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad BOSH request: {0}")]
pub struct BadRequest(pub String);

fn bad(m: impl Into<String>) -> BadRequest {
    BadRequest(m.into())
}

/// A parsed client request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Request {
    pub rid: u64,
    pub sid: Option<String>,
    pub to: Option<String>,
    pub lang: Option<String>,
    pub wait: Option<u64>,
    pub hold: Option<u64>,
    /// The client's BOSH version (major, minor); absent for a legacy client (§19.1).
    pub ver: Option<(u32, u32)>,
    /// Content-Type the client wants on every response (§7.1 'content').
    pub content: Option<String>,
    pub terminate: bool,
    pub pause: Option<u64>,
    /// XEP-0206 §4 `xmpp:restart='true'`.
    pub restart: bool,
    /// Payloads, each a standalone element in the stream's `jabber:client` context.
    pub payloads: Vec<Bytes>,
}

/// Parse a request body with the stream `limits`.
pub fn parse(data: &[u8], limits: &Limits) -> Result<Request, BadRequest> {
    let text = std::str::from_utf8(data).map_err(|_| bad("not UTF-8"))?;
    let start = root_offset(text)?;
    let tag_len = start_tag_len(&text[start..]).ok_or_else(|| bad("incomplete <body> tag"))?;
    let tag = &text[start..start + tag_len];
    let mut req = parse_attributes(tag)?;
    // The parser wants a stream header with content: `<body .../>` becomes `<body ...></body>`.
    let framed = match tag.strip_suffix("/>") {
        Some(open) => {
            if !text[start + tag_len..].trim().is_empty() {
                return Err(bad("data after <body/>"));
            }
            let qname_len = open
                .find(|c: char| c.is_ascii_whitespace())
                .unwrap_or(open.len());
            let qname = &open[1..qname_len];
            std::borrow::Cow::Owned(format!("{}{open}></{qname}>", &text[..start]))
        }
        None => std::borrow::Cow::Borrowed(text),
    };
    req.payloads = payloads(&framed, limits)?;
    Ok(req)
}

/// Offset of the root element's `<`, after an optional BOM, XML declaration and whitespace
/// (the declaration itself is checked by the stream parser).
fn root_offset(text: &str) -> Result<usize, BadRequest> {
    let mut i = if text.starts_with('\u{feff}') { 3 } else { 0 };
    i += text[i..].len() - text[i..].trim_start().len();
    if text[i..].starts_with("<?") {
        let end = text[i..]
            .find("?>")
            .ok_or_else(|| bad("unterminated XML declaration"))?;
        i += end + 2;
        i += text[i..].len() - text[i..].trim_start().len();
    }
    match text.as_bytes().get(i..i + 2) {
        Some([b'<', c]) if !matches!(c, b'!' | b'?' | b'/') => Ok(i),
        _ => Err(bad("expected <body>")),
    }
}

/// Length of the start tag at the beginning of `s` (through its `>`), quotes respected.
fn start_tag_len(s: &str) -> Option<usize> {
    let mut quote = 0u8;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        match b {
            b'\'' | b'"' if quote == 0 => quote = b,
            q if q == quote => quote = 0,
            b'>' if quote == 0 => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// The wrapper's attributes, namespaces resolved: it must be `body` in the httpbind
/// namespace; `xmpp:*` attributes count only when their prefix is bound to urn:xmpp:xbosh.
fn parse_attributes(tag: &str) -> Result<Request, BadRequest> {
    let mut reader = quick_xml::Reader::from_str(tag);
    let ev = reader.read_event().map_err(|e| bad(e.to_string()))?;
    let e = match &ev {
        quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => e,
        _ => return Err(bad("expected <body>")),
    };
    let mut attrs: Vec<(String, String)> = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|e| bad(e.to_string()))?;
        let key = std::str::from_utf8(a.key.as_ref()).map_err(|_| bad("attribute name"))?;
        let value = a.unescape_value().map_err(|e| bad(e.to_string()))?;
        attrs.push((key.to_owned(), value.into_owned()));
    }
    let ns_of = |prefix: Option<&str>| -> Option<&str> {
        let key = match prefix {
            None => "xmlns".to_owned(),
            Some(p) => format!("xmlns:{p}"),
        };
        attrs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    };
    let qname = std::str::from_utf8(e.name().as_ref())
        .map_err(|_| bad("element name"))?
        .to_owned();
    let (prefix, local) = match qname.split_once(':') {
        Some((p, l)) => (Some(p), l),
        None => (None, qname.as_str()),
    };
    if local != "body" || ns_of(prefix) != Some(NS_HTTPBIND) {
        return Err(bad(format!(
            "root is <{qname}/>, not <body/> in {NS_HTTPBIND}"
        )));
    }
    let mut req = Request::default();
    let mut rid = None;
    let num = |k: &str, v: &str| -> Result<u64, BadRequest> {
        v.trim()
            .parse::<u64>()
            .map_err(|_| bad(format!("'{k}' is not a number")))
    };
    for (k, v) in &attrs {
        match k.split_once(':') {
            None => match k.as_str() {
                "rid" => rid = Some(num(k, v)?),
                "sid" => req.sid = Some(v.clone()),
                "to" => req.to = Some(v.clone()),
                "wait" => req.wait = Some(num(k, v)?),
                "hold" => req.hold = Some(num(k, v)?),
                "pause" => req.pause = Some(num(k, v)?),
                "ver" => req.ver = Some(parse_version(v)?),
                "content" => req.content = Some(v.clone()),
                "type" => req.terminate = v == "terminate",
                _ => {}
            },
            Some(("xml", "lang")) => req.lang = Some(v.clone()),
            Some(("xmlns", _)) => {}
            Some((p, "restart")) if ns_of(Some(p)) == Some(NS_XBOSH) => {
                req.restart = matches!(v.as_str(), "true" | "1");
            }
            Some(_) => {}
        }
    }
    req.rid = rid.ok_or_else(|| bad("no 'rid'"))?;
    if req.rid > MAX_RID {
        return Err(bad("'rid' above 2^53-1"));
    }
    Ok(req)
}

/// "<major>.<minor>", each an integer (§7.1).
fn parse_version(v: &str) -> Result<(u32, u32), BadRequest> {
    let (a, b) = v.trim().split_once('.').unwrap_or((v.trim(), "0"));
    match (a.parse(), b.parse()) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        _ => Err(bad("'ver' is not <major>.<minor>")),
    }
}

/// Frame the payloads with the stream parser: `<body ...>` plays the stream header and
/// `</body>` the stream close, so every check TCP input gets applies here too (the XML
/// declaration, restricted XML, stanza limits). Anything after `</body>` is refused.
fn payloads(text: &str, limits: &Limits) -> Result<Vec<Bytes>, BadRequest> {
    let text = text.trim_end();
    // Everything up to the last end tag, then that tag: it must be the one closing <body>.
    let close = text.rfind("</").ok_or_else(|| bad("incomplete body"))?;
    let mut parser = StreamParser::new(limits.clone());
    parser.feed(&text.as_bytes()[..close]);
    let mut out = Vec::new();
    // XEP-0206: payloads without their own namespace are jabber:client stanzas (they are
    // written into a jabber:client stream), as Prosody treats them.
    let mut client_ctx: Option<Arc<NsContext>> = None;
    loop {
        match parser.next_event().map_err(|e| bad(e.to_string()))? {
            Some(Event::Open(_)) => {}
            Some(Event::Stanza(st)) => {
                let bytes = if st.ns == NS_HTTPBIND {
                    let ctx = client_ctx.get_or_insert_with(|| {
                        let mut c = (**st.ns_context()).clone();
                        c.default_ns = Some(NS_CLIENT.to_owned());
                        Arc::new(c)
                    });
                    Stanza::parse(st.raw().clone(), ctx.clone())
                        .map_err(|e| bad(e.to_string()))?
                        .standalone(None)
                } else {
                    st.standalone(None)
                };
                out.push(bytes);
            }
            Some(Event::Close) => return Err(bad("data after </body>")),
            None if parser.buffered() == 0 => break,
            None => return Err(bad("incomplete payload")),
        }
    }
    parser.feed(&text.as_bytes()[close..]);
    match parser.next_event().map_err(|e| bad(e.to_string()))? {
        Some(Event::Close) => Ok(out),
        _ => Err(bad("body not closed")),
    }
}

/// Builds a response `<body/>`: attributes (values escaped here) and payloads (standalone
/// elements from the session's stream).
pub fn response(attrs: &[(&str, &str)], payloads: &[Bytes]) -> Bytes {
    let size = 64 + payloads.iter().map(Bytes::len).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(b"<body xmlns='");
    out.extend_from_slice(NS_HTTPBIND.as_bytes());
    out.push(b'\'');
    for (k, v) in attrs {
        out.push(b' ');
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"='");
        out.extend_from_slice(crate::xml::escape(v).as_bytes());
        out.push(b'\'');
    }
    if payloads.is_empty() {
        out.extend_from_slice(b"/>");
    } else {
        out.push(b'>');
        for p in payloads {
            out.extend_from_slice(p);
        }
        out.extend_from_slice(b"</body>");
    }
    Bytes::from(out)
}

/// A terminal binding error (§17.2) or, with no condition, a plain termination.
pub fn terminate(condition: Option<&str>, payloads: &[Bytes]) -> Bytes {
    let mut attrs = vec![("type", "terminate")];
    if let Some(c) = condition {
        attrs.push(("condition", c));
    }
    response(&attrs, payloads)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Request, BadRequest> {
        parse(s.as_bytes(), &Limits::default())
    }

    #[test]
    fn session_creation_request() {
        let r = p("<?xml version='1.0'?>\n<body content='text/xml; charset=utf-8' hold='1' rid='1573741820' \
             to='example.com' wait='60' ver='1.11' xml:lang='en' xmpp:version='1.0' \
             xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh'/>")
        .unwrap();
        assert_eq!(r.rid, 1573741820);
        assert_eq!(r.sid, None);
        assert_eq!(r.to.as_deref(), Some("example.com"));
        assert_eq!((r.wait, r.hold), (Some(60), Some(1)));
        assert_eq!(r.ver, Some((1, 11)));
        assert_eq!(r.lang.as_deref(), Some("en"));
        assert_eq!(r.content.as_deref(), Some("text/xml; charset=utf-8"));
        assert!(r.payloads.is_empty() && !r.restart && !r.terminate);
    }

    #[test]
    fn payloads_become_standalone_client_stanzas() {
        let r = p("<body rid='5' sid='S' xmlns='http://jabber.org/protocol/httpbind'>\n \
             <message to='a@b' xmlns='jabber:client'><body>hi &amp; bye</body></message>\
             <presence/>\
             <auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>\n</body>")
        .unwrap();
        assert_eq!(r.sid.as_deref(), Some("S"));
        let texts: Vec<&str> = r
            .payloads
            .iter()
            .map(|b| std::str::from_utf8(b).unwrap())
            .collect();
        assert_eq!(texts.len(), 3, "{texts:?}");
        assert!(texts[0].contains("hi &amp; bye") && texts[0].contains("jabber:client"));
        // No namespace of its own: jabber:client, not httpbind.
        assert!(texts[1].starts_with("<presence"), "{}", texts[1]);
        assert!(texts[1].contains("jabber:client"), "{}", texts[1]);
        assert!(!texts[1].contains("httpbind"), "{}", texts[1]);
        assert!(texts[2].contains("xmpp-sasl"));
    }

    #[test]
    fn prefixed_restart_and_terminate() {
        let r = p("<body rid='7' sid='S' x:restart='true' to='d' \
             xmlns='http://jabber.org/protocol/httpbind' xmlns:x='urn:xmpp:xbosh'/>")
        .unwrap();
        assert!(r.restart);
        // The prefix must be bound to urn:xmpp:xbosh.
        let r = p(
            "<body rid='7' sid='S' xmpp:restart='true' xmlns:xmpp='urn:other' \
             xmlns='http://jabber.org/protocol/httpbind'/>",
        )
        .unwrap();
        assert!(!r.restart);
        let r = p("<b:body rid='8' sid='S' type='terminate' xmlns:b='http://jabber.org/protocol/httpbind'>\
             <presence type='unavailable' xmlns='jabber:client'/></b:body>")
        .unwrap();
        assert!(r.terminate);
        assert_eq!(r.payloads.len(), 1);
    }

    #[test]
    fn refuses_bad_bodies() {
        for bad in [
            "",
            "<body rid='1'/>",                                           // no namespace
            "<body xmlns='http://jabber.org/protocol/httpbind'/>",       // no rid
            "<body rid='x' xmlns='http://jabber.org/protocol/httpbind'/>",
            "<body rid='9007199254740992' xmlns='http://jabber.org/protocol/httpbind'/>",
            "<stream rid='1' xmlns='http://jabber.org/protocol/httpbind'/>",
            "<body rid='1' xmlns='http://jabber.org/protocol/httpbind'><message>",
            "<body rid='1' xmlns='http://jabber.org/protocol/httpbind'><a></b></body>",
            "<body rid='1' xmlns='http://jabber.org/protocol/httpbind'>text</body>",
            "<body rid='1' xmlns='http://jabber.org/protocol/httpbind'><!-- c --></body>",
            "<!DOCTYPE body><body rid='1' xmlns='http://jabber.org/protocol/httpbind'/>",
            "<?pi x?><body rid='1' xmlns='http://jabber.org/protocol/httpbind'/>",
            "<body rid='1' xmlns='http://jabber.org/protocol/httpbind'/><x/>",
            "<body rid='1' xmlns='http://jabber.org/protocol/httpbind'><m>&ent;</m></body>",
            "<?xml version='1.0' encoding='ISO-8859-1'?><body rid='1' xmlns='http://jabber.org/protocol/httpbind'/>",
        ] {
            assert!(p(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn payload_size_limit_applies() {
        let limits = Limits {
            max_stanza_size: 100,
            ..Limits::default()
        };
        let big = format!(
            "<body rid='1' xmlns='http://jabber.org/protocol/httpbind'><message xmlns='jabber:client'><body>{}</body></message></body>",
            "x".repeat(200)
        );
        assert!(parse(big.as_bytes(), &limits).is_err());
    }

    #[test]
    fn builds_responses() {
        let b = response(&[("sid", "a'b")], &[]);
        assert_eq!(
            &b[..],
            b"<body xmlns='http://jabber.org/protocol/httpbind' sid='a&apos;b'/>"
        );
        let t = terminate(
            Some("item-not-found"),
            &[Bytes::from_static(b"<x xmlns='y'/>")],
        );
        assert_eq!(
            &t[..],
            &b"<body xmlns='http://jabber.org/protocol/httpbind' type='terminate' condition='item-not-found'><x xmlns='y'/></body>"[..]
        );
    }

    /// The network never panics the server: mangled bodies are refused, never a crash.
    #[test]
    fn mutated_bodies_never_panic() {
        use rand::{Rng, SeedableRng};
        let seed = "<?xml version='1.0'?><body rid='5' sid='S' xmpp:restart='true' \
             xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh'>\
             <message to='a@b' xmlns='jabber:client'><body>h\u{e9}llo &amp;</body></message>\
             <presence/></body>";
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet = b"<>/='\"?! :&;abx\xc3\xa9\t";
        for _ in 0..20_000 {
            let mut b = seed.as_bytes().to_vec();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..b.len());
                match rng.gen_range(0..3) {
                    0 => b[i] = alphabet[rng.gen_range(0..alphabet.len())],
                    1 => {
                        b.remove(i);
                    }
                    _ => b.truncate(i),
                }
                if b.is_empty() {
                    break;
                }
            }
            let _ = parse(&b, &Limits::default());
        }
    }
}
