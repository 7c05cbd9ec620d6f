//! Re-framing the server's side of a client stream for HTTP-borne transports.
//!
//! The session core writes one continuous XMPP stream (header, features, stanzas, close).
//! RFC 7395 WebSocket wants one complete element per message and `<open/>`/`<close/>`
//! instead of the stream header and end tag; XEP-0124/0206 BOSH wants complete elements
//! inside `<body/>` wrappers. [`Reframer`] parses the server's output back into top-level
//! elements (with the stream's namespaces declared on each, so every element stands alone)
//! so both adapters share one way of cutting the stream.
//!
//! The cost is one extra scan of outbound bytes for these transports only; TCP sessions are
//! untouched. The parser is the same incremental framer that reads clients, with limits
//! sized for server output (which can be larger than what a client may send).

use bytes::Bytes;

use crate::xml::{Event, Limits, StreamParser, XmlError};

/// One unit of the server's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutFrame {
    /// The server's stream header: its id and 'from' domain (for RFC 7395 `<open/>` or the
    /// BOSH session creation response).
    Open {
        id: Option<String>,
        from: Option<String>,
    },
    /// One complete top-level element that declares every namespace it uses
    /// (`<message xmlns='jabber:client' ...>`, `<stream:features xmlns:stream='...'>`).
    Element(Bytes),
    /// `</stream:stream>`.
    Close,
}

pub struct Reframer {
    parser: StreamParser,
}

impl Default for Reframer {
    fn default() -> Self {
        Self::new()
    }
}

impl Reframer {
    pub fn new() -> Reframer {
        Reframer {
            parser: StreamParser::new(Limits {
                // Server output: MAM pages and rosters can exceed what clients may send.
                max_stanza_size: 64 * 1024 * 1024,
                max_depth: 256,
                max_attributes: 1024,
                max_attribute_len: 1024 * 1024,
            }),
        }
    }

    /// Bytes the session wrote.
    pub fn feed(&mut self, data: &[u8]) {
        self.parser.feed(data);
    }

    /// The next complete frame, if the bytes fed so far hold one.
    pub fn next_frame(&mut self) -> Result<Option<OutFrame>, XmlError> {
        Ok(match self.parser.next_event()? {
            None => None,
            Some(Event::Open(h)) => Some(OutFrame::Open {
                id: h.id,
                from: h.from,
            }),
            Some(Event::Stanza(st)) => Some(OutFrame::Element(st.standalone(None))),
            Some(Event::Close) => Some(OutFrame::Close),
        })
    }

    /// Release buffer capacity while nothing is buffered (idle sessions are the many).
    pub fn shrink(&mut self) {
        self.parser.shrink();
    }

    /// The client restarted the stream (after SASL success): the server's next output is a
    /// new header. Call when the client's restart request arrives: the server answers only
    /// after it, so everything before it was already framed.
    pub fn restart(&mut self) {
        self.parser.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_a_stream_into_standalone_elements() {
        let mut r = Reframer::new();
        r.feed(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='abc' from='example.org' version='1.0'>");
        r.feed(b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features><message to='a@b'><bo");
        assert_eq!(
            r.next_frame().unwrap(),
            Some(OutFrame::Open {
                id: Some("abc".into()),
                from: Some("example.org".into())
            })
        );
        let OutFrame::Element(f) = r.next_frame().unwrap().unwrap() else {
            panic!("features expected")
        };
        let f = std::str::from_utf8(&f).unwrap();
        assert!(f.starts_with("<stream:features"), "{f}");
        assert!(
            f.contains("xmlns:stream='http://etherx.jabber.org/streams'")
                || f.contains("xmlns:stream=\"http://etherx.jabber.org/streams\""),
            "{f}"
        );
        assert_eq!(r.next_frame().unwrap(), None);
        r.feed(b"dy>hi</body></message></stream:stream>");
        let OutFrame::Element(m) = r.next_frame().unwrap().unwrap() else {
            panic!("message expected")
        };
        let m = std::str::from_utf8(&m).unwrap();
        assert!(
            m.contains("jabber:client") && m.contains("<body>hi</body>"),
            "{m}"
        );
        assert_eq!(r.next_frame().unwrap(), Some(OutFrame::Close));
    }

    #[test]
    fn restart_accepts_a_new_header() {
        let mut r = Reframer::new();
        r.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='1'><success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
        assert!(matches!(
            r.next_frame().unwrap(),
            Some(OutFrame::Open { .. })
        ));
        assert!(matches!(
            r.next_frame().unwrap(),
            Some(OutFrame::Element(_))
        ));
        r.restart();
        r.feed(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='2'>");
        assert_eq!(
            r.next_frame().unwrap(),
            Some(OutFrame::Open {
                id: Some("2".into()),
                from: None
            })
        );
    }
}
