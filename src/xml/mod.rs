//! Streaming XML for XMPP (RFC 6120 §4, §11): frames a byte stream into a stream header,
//! top-level elements ("stanzas" and nonzas) and the stream close, enforcing the restricted
//! XML profile and configurable limits. Sans-I/O: bytes in, events out.
//!
//! INTERFACE CONTRACT (stub; implementation pending).

use bytes::Bytes;
use std::sync::Arc;

pub const NS_CLIENT: &str = "jabber:client";
pub const NS_SERVER: &str = "jabber:server";
pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";
pub const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

/// Parser limits; every one is a config key (`[limits]`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Maximum size in bytes of one top-level element (default 256 KiB).
    pub max_stanza_size: usize,
    /// Maximum element nesting depth inside a stanza (default 32).
    pub max_depth: usize,
    /// Maximum number of attributes on one element (default 64).
    pub max_attributes: usize,
    /// Maximum length of one attribute value in bytes (default 8 KiB).
    pub max_attribute_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_size: 256 * 1024,
            max_depth: 32,
            max_attributes: 64,
            max_attribute_len: 8 * 1024,
        }
    }
}

/// Every way input can be refused, each mapped to one RFC 6120 §4.9.3 stream error condition.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum XmlError {
    #[error("not well-formed: {0}")]
    NotWellFormed(String),
    #[error("restricted XML: {0}")]
    RestrictedXml(&'static str),
    #[error("policy violation: {0}")]
    PolicyViolation(String),
    #[error("invalid namespace: {0}")]
    InvalidNamespace(String),
    #[error("bad format: {0}")]
    BadFormat(String),
    #[error("unsupported encoding")]
    UnsupportedEncoding,
}

impl XmlError {
    /// The RFC 6120 stream error condition element name, e.g. "not-well-formed".
    pub fn condition(&self) -> &'static str {
        match self {
            XmlError::NotWellFormed(_) => "not-well-formed",
            XmlError::RestrictedXml(_) => "restricted-xml",
            XmlError::PolicyViolation(_) => "policy-violation",
            XmlError::InvalidNamespace(_) => "invalid-namespace",
            XmlError::BadFormat(_) => "bad-format",
            XmlError::UnsupportedEncoding => "unsupported-encoding",
        }
    }
}

/// Attributes of the `<stream:stream>` open tag.
#[derive(Debug, Clone, Default)]
pub struct StreamHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
    /// The default namespace declared on the header (`xmlns`), e.g. jabber:client.
    pub default_ns: Option<String>,
    /// The namespace the header element itself is in (must be NS_STREAM).
    pub stream_ns: Option<String>,
    /// Local name of the header element (must be "stream").
    pub name: String,
}

/// Namespace declarations in scope at stream level (inherited by every stanza).
#[derive(Debug, Clone, Default)]
pub struct NsContext {
    pub default_ns: Option<String>,
    pub prefixes: Vec<(String, String)>,
}

/// One complete top-level element, validated, kept as its exact bytes.
#[derive(Debug, Clone)]
pub struct Stanza {
    /// Local name: message, presence, iq, or a nonza (starttls, auth, r, ...).
    pub name: String,
    /// Resolved namespace of the top-level element.
    pub ns: String,
    pub to: Option<String>,
    pub from: Option<String>,
    pub id: Option<String>,
    pub type_: Option<String>,
    pub lang: Option<String>,
    raw: Bytes,
    ctx: Arc<NsContext>,
}

impl Stanza {
    /// The exact bytes received.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Full tree with namespaces resolved against the stream context.
    pub fn element(&self) -> Result<minidom::Element, XmlError> {
        let _ = &self.ctx;
        unimplemented!()
    }

    /// The stanza's bytes with the top-level `from`/`to` replaced (`Some`) or kept (`None`),
    /// and any stream-level prefix declarations the stanza relies on made explicit, so the
    /// result can be written into any stream whose default namespace is the same.
    pub fn rewrite(&self, _from: Option<&str>, _to: Option<&str>) -> Bytes {
        unimplemented!()
    }
}

/// Events produced by [`StreamParser`].
#[derive(Debug, Clone)]
pub enum Event {
    Open(StreamHeader),
    Stanza(Stanza),
    Close,
}

/// Incremental parser: `feed` bytes as they arrive, then call `next_event` until `Ok(None)`.
#[derive(Debug)]
pub struct StreamParser {
    _limits: Limits,
}

impl StreamParser {
    pub fn new(limits: Limits) -> Self {
        StreamParser { _limits: limits }
    }
    /// Append received bytes.
    pub fn feed(&mut self, _data: &[u8]) {
        unimplemented!()
    }
    /// Next complete event; `Ok(None)` means more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, XmlError> {
        unimplemented!()
    }
    /// Stream restart (after STARTTLS or SASL success): expect a new header; buffered bytes are dropped.
    pub fn reset(&mut self) {
        unimplemented!()
    }
    /// Release buffer capacity while idle.
    pub fn shrink(&mut self) {}
}

/// Serialize an element (as produced by handlers) to bytes for writing into a stream.
pub fn to_bytes(_el: &minidom::Element) -> Bytes {
    unimplemented!()
}

/// Escape text for use in an attribute value or character data.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    std::borrow::Cow::Borrowed(s)
}
