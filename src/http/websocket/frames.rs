//! RFC 7395 framing, without I/O: client text messages become plain XMPP stream bytes for
//! the session core, and the server's re-framed stream ([`OutFrame`]) becomes messages.
//!
//! A client message must be exactly one complete element (§3.3.3): [`Inbound`] checks that
//! with the same incremental parser and limits the session uses, so a half element can never
//! be glued to the next message inside the core's stream. `<open/>` and `<close/>` (§3.3.2,
//! §3.6) are the only framing elements; everything else is written into the stream as it is.

use bytes::Bytes;

use crate::c2s::framing::OutFrame;
use crate::stanza::NS_STREAMS;
use crate::xml::{self, Event, Limits, StreamParser, XmlError, NS_STREAM};

pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

/// `<close/>` (RFC 7395 §3.6), sent before the server closes the WebSocket.
pub const CLOSE: &str = "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>";

/// What one client message asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// `<open/>`: bytes of the stream header to write into the pipe. `restart` says it is the
    /// restart after SASL success (RFC 7395 §3.5): reset the re-framer before writing it.
    Open { header: String, restart: bool },
    /// `<close/>`: the client ends the stream (the pipe gets `</stream:stream>`).
    Close,
    /// One stanza or nonza, written into the stream unchanged.
    Element(Bytes),
    /// Whitespace only: nothing to forward.
    Empty,
}

/// A client message that breaks RFC 7395; each maps to the RFC 6120 stream error condition
/// sent back before the stream is closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("{0}")]
    Xml(#[from] XmlError),
    #[error("a WebSocket message must hold exactly one complete XML element")]
    NotOneElement,
    #[error("the first message must be <open/>")]
    OpenExpected,
    #[error("<open/> is only allowed at the start and after SASL success")]
    UnexpectedOpen,
    #[error("binary WebSocket messages are not used by XMPP")]
    Binary,
    #[error("message larger than the stanza size limit")]
    TooLarge,
}

impl FrameError {
    pub fn condition(&self) -> &'static str {
        match self {
            FrameError::Xml(e) => e.condition(),
            FrameError::NotOneElement => "not-well-formed",
            FrameError::OpenExpected | FrameError::UnexpectedOpen => "bad-format",
            FrameError::Binary => "unsupported-encoding",
            FrameError::TooLarge => "policy-violation",
        }
    }
}

/// The client side of one WebSocket connection: validates messages and translates them.
pub struct Inbound {
    /// Parses each message inside a fixed `jabber:client` stream context, so stanzas that
    /// omit the default namespace still validate and the framing namespace resolves.
    check: StreamParser,
    opened: bool,
    /// SASL success went out: the client's next `<open/>` restarts the stream.
    restart_expected: bool,
    closed: bool,
}

impl Inbound {
    pub fn new(limits: Limits) -> Inbound {
        let mut check = StreamParser::new(limits);
        check.feed(stream_header(None, None).as_bytes());
        // The synthetic header is well-formed by construction; its event carries nothing.
        let _ = check.next_event();
        Inbound {
            check,
            opened: false,
            restart_expected: false,
            closed: false,
        }
    }

    /// Inside an open stream, between elements: where RFC 6120 whitespace may be written.
    /// Not while a restart is pending (the core is waiting for a new header then).
    pub fn whitespace_allowed(&self) -> bool {
        self.opened && !self.closed && !self.restart_expected
    }

    /// Note one element the server sent: SASL success means a stream restart comes next.
    pub fn saw_outbound(&mut self, frame: &OutFrame) {
        if let OutFrame::Element(b) = frame {
            if b.starts_with(b"<success") && memchr::memmem::find(b, NS_SASL.as_bytes()).is_some() {
                self.restart_expected = true;
            }
        }
    }

    /// Translate one client text message.
    pub fn frame(&mut self, text: &[u8]) -> Result<ClientFrame, FrameError> {
        self.check.feed(text);
        let st = match self.check.next_event()? {
            Some(Event::Stanza(st)) => st,
            Some(_) => return Err(FrameError::NotOneElement),
            None if self.check.buffered() == 0 => return Ok(ClientFrame::Empty),
            None => return Err(FrameError::NotOneElement),
        };
        if self.check.next_event()?.is_some() || self.check.buffered() != 0 {
            return Err(FrameError::NotOneElement);
        }
        // Idle WebSocket sessions should not keep their largest message's buffer.
        self.check.shrink();
        match (st.ns == NS_FRAMING, st.name.as_str()) {
            (true, "open") => {
                let restart = self.opened;
                if restart && !self.restart_expected {
                    return Err(FrameError::UnexpectedOpen);
                }
                self.opened = true;
                self.restart_expected = false;
                Ok(ClientFrame::Open {
                    header: stream_header(st.to.as_deref(), st.lang.as_deref()),
                    restart,
                })
            }
            (true, "close") => {
                self.closed = true;
                Ok(ClientFrame::Close)
            }
            _ if !self.opened => Err(FrameError::OpenExpected),
            _ => Ok(ClientFrame::Element(st.raw().clone())),
        }
    }
}

/// The RFC 6120 stream header the session core expects, for a client `<open/>`.
pub fn stream_header(to: Option<&str>, lang: Option<&str>) -> String {
    let mut h = format!(
        "<stream:stream xmlns='{}' xmlns:stream='{NS_STREAM}' version='1.0'",
        xml::NS_CLIENT
    );
    if let Some(to) = to {
        h.push_str(&format!(" to='{}'", xml::escape(to)));
    }
    if let Some(lang) = lang {
        h.push_str(&format!(" xml:lang='{}'", xml::escape(lang)));
    }
    h.push('>');
    h
}

/// The server's `<open/>` (RFC 7395 §3.3.2) for its stream header.
pub fn open(id: Option<&str>, from: Option<&str>) -> String {
    let mut o = format!("<open xmlns='{NS_FRAMING}'");
    if let Some(from) = from {
        o.push_str(&format!(" from='{}'", xml::escape(from)));
    }
    if let Some(id) = id {
        o.push_str(&format!(" id='{}'", xml::escape(id)));
    }
    o.push_str(" version='1.0' xml:lang='en'/>");
    o
}

/// A stream error raised by the adapter itself (RFC 7395 §3.6.2: the `stream` prefix is
/// declared on the element, since there is no enclosing stream header).
pub fn stream_error(condition: &str, text: &str) -> String {
    format!(
        "<stream:error xmlns:stream='{NS_STREAM}'><{condition} xmlns='{NS_STREAMS}'/>\
         <text xmlns='{NS_STREAMS}' xml:lang='en'>{}</text></stream:error>",
        xml::escape(text)
    )
}

/// What to send for one unit of the server's stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound {
    Text(Bytes),
    /// `<close/>`, then close the WebSocket.
    Close,
}

pub fn outbound(frame: OutFrame) -> Outbound {
    match frame {
        OutFrame::Open { id, from } => {
            Outbound::Text(Bytes::from(open(id.as_deref(), from.as_deref())))
        }
        OutFrame::Element(b) => Outbound::Text(b),
        OutFrame::Close => Outbound::Close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::c2s::framing::Reframer;

    fn inbound() -> Inbound {
        Inbound::new(Limits::default())
    }

    const OPEN: &[u8] =
        b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.org' version='1.0' xml:lang='fr'/>";

    #[test]
    fn open_becomes_a_stream_header() {
        let mut i = inbound();
        let ClientFrame::Open { header, restart } = i.frame(OPEN).unwrap() else {
            panic!("open expected")
        };
        assert!(!restart);
        assert!(header.starts_with(
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
        ));
        assert!(header.contains(" to='example.org'") && header.contains(" xml:lang='fr'"));
        assert!(header.ends_with('>') && !header.ends_with("/>"));
        // The header must parse as one for the session core.
        let mut p = StreamParser::new(Limits::default());
        p.feed(header.as_bytes());
        let Some(Event::Open(h)) = p.next_event().unwrap() else {
            panic!("header")
        };
        assert_eq!(h.to.as_deref(), Some("example.org"));
        assert_eq!(h.version.as_deref(), Some("1.0"));
    }

    #[test]
    fn elements_pass_through_and_close_ends() {
        let mut i = inbound();
        i.frame(OPEN).unwrap();
        let msg = b"<message xmlns='jabber:client' to='a@b'><body>x &amp; y</body></message>";
        assert_eq!(
            i.frame(msg).unwrap(),
            ClientFrame::Element(Bytes::from_static(msg))
        );
        // RFC 7395 asks for the namespace, but an element inheriting jabber:client is
        // unambiguous: it goes through too.
        assert!(matches!(
            i.frame(b"<presence/>").unwrap(),
            ClientFrame::Element(_)
        ));
        assert_eq!(i.frame(b"  \n").unwrap(), ClientFrame::Empty);
        assert_eq!(
            i.frame(b"<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>")
                .unwrap(),
            ClientFrame::Close
        );
        assert!(!i.whitespace_allowed());
    }

    #[test]
    fn a_message_must_be_one_complete_element() {
        for bad in [
            &b"<message xmlns='jabber:client'><body>"[..],
            b"<presence/><presence/>",
            b"<presence/>trailing",
        ] {
            let mut i = inbound();
            i.frame(OPEN).unwrap();
            let e = i.frame(bad).unwrap_err();
            assert_eq!(e.condition(), "not-well-formed", "{bad:?}: {e}");
        }
        let mut i = inbound();
        i.frame(OPEN).unwrap();
        let e = i.frame(b"<message><body></message>").unwrap_err();
        assert!(matches!(e, FrameError::Xml(_)), "{e}");
        let mut i = inbound();
        i.frame(OPEN).unwrap();
        assert_eq!(
            i.frame(b"<!DOCTYPE x><presence/>").unwrap_err().condition(),
            "restricted-xml"
        );
    }

    #[test]
    fn open_first_and_restart_only_after_sasl_success() {
        let mut i = inbound();
        assert_eq!(
            i.frame(b"<presence xmlns='jabber:client'/>").unwrap_err(),
            FrameError::OpenExpected
        );
        let mut i = inbound();
        i.frame(OPEN).unwrap();
        assert_eq!(i.frame(OPEN).unwrap_err(), FrameError::UnexpectedOpen);

        let mut i = inbound();
        i.frame(OPEN).unwrap();
        i.saw_outbound(&OutFrame::Element(Bytes::from_static(
            b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
        )));
        assert!(
            !i.whitespace_allowed(),
            "no keepalive whitespace while the restart is pending"
        );
        let ClientFrame::Open { restart, .. } = i.frame(OPEN).unwrap() else {
            panic!("open expected")
        };
        assert!(restart);
        assert!(i.whitespace_allowed());
        // Only once per success.
        assert_eq!(i.frame(OPEN).unwrap_err(), FrameError::UnexpectedOpen);
    }

    #[test]
    fn server_stream_becomes_rfc7395_messages() {
        let mut r = Reframer::new();
        r.feed(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='example.org' version='1.0' xml:lang='en'> ");
        r.feed(b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>");
        r.feed(b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>");
        let mut out = Vec::new();
        while let Some(f) = r.next_frame().unwrap() {
            out.push(outbound(f));
        }
        assert_eq!(out.len(), 4, "{out:?}");
        let Outbound::Text(open) = &out[0] else {
            panic!()
        };
        assert_eq!(
            open,
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' from='example.org' id='s1' version='1.0' xml:lang='en'/>"
        );
        for (i, prefix) in [(1, "<stream:features"), (2, "<stream:error")] {
            let Outbound::Text(t) = &out[i] else { panic!() };
            let t = std::str::from_utf8(t).unwrap();
            assert!(t.starts_with(prefix), "{t}");
            // §3.6.2: the stream prefix is declared on each such element.
            assert!(t.contains("xmlns:stream="), "{t}");
            t.parse::<minidom::Element>().expect("stands alone");
        }
        assert_eq!(out[3], Outbound::Close);
    }

    #[test]
    fn adapter_stream_errors_stand_alone() {
        let e = stream_error("bad-format", "a < b");
        let el: minidom::Element = e.parse().expect("parses");
        assert_eq!(el.name(), "error");
        assert_eq!(el.ns(), NS_STREAM);
        assert!(el.get_child("bad-format", NS_STREAMS).is_some());
        assert_eq!(
            el.get_child("text", NS_STREAMS).map(|t| t.text()),
            Some("a < b".to_string())
        );
    }
}
