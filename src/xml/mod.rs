//! Streaming XML for XMPP (RFC 6120 §4, §11): frames a byte stream into a stream header,
//! top-level elements ("stanzas" and nonzas) and the stream close, enforcing the restricted
//! XML profile and configurable limits. Sans-I/O: bytes in, events out.
//!
//! Framing is a resumable O(n) byte scan (memchr); each complete top-level element is then
//! validated with quick-xml and kept as its raw bytes ([`Stanza`]); a tree is only built on
//! demand ([`Stanza::element`]).

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
    /// Indices into `ctx.prefixes` of stream-level prefixes the stanza relies on.
    inherited: Vec<usize>,
}

impl Stanza {
    /// The exact bytes received.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The stream-level namespace context this stanza was parsed in.
    pub fn ns_context(&self) -> &Arc<NsContext> {
        &self.ctx
    }

    /// Validates `raw` (one complete element) against `ctx`, as the stream parser does.
    /// Useful to build a stanza from bytes obtained elsewhere (storage, tests).
    pub fn parse(raw: Bytes, ctx: Arc<NsContext>) -> Result<Stanza, XmlError> {
        let s = validate::check_chars(&raw)?;
        let top = validate::validate(s, &ctx)?;
        Ok(Stanza {
            name: top.name,
            ns: top.ns,
            to: top.to,
            from: top.from,
            id: top.id,
            type_: top.type_,
            lang: top.lang,
            inherited: top.inherited,
            raw,
            ctx,
        })
    }

    /// The same stanza read with `default_ns` as its stream's default namespace instead of
    /// the one it was parsed with (s2s `jabber:server` and component streams to the
    /// core's `jabber:client`), without validating the bytes again: nothing validation
    /// checks depends on which namespace the default is. Only correct when the old default
    /// namespace is not written in the bytes (every element in it got it by inheritance):
    /// the caller checks that; then exactly those elements move to `default_ns`.
    pub fn with_default_ns(&self, default_ns: &str) -> Stanza {
        let old = self.ctx.default_ns.as_deref();
        let ns = if old == Some(self.ns.as_str()) {
            default_ns.to_string()
        } else {
            self.ns.clone()
        };
        Stanza {
            ns,
            ctx: Arc::new(NsContext {
                default_ns: Some(default_ns.to_string()),
                // Same prefixes, same order: `inherited` indexes stay valid.
                prefixes: self.ctx.prefixes.clone(),
            }),
            ..self.clone()
        }
    }

    /// Full tree with namespaces resolved against the stream context.
    pub fn element(&self) -> Result<minidom::Element, XmlError> {
        let s = std::str::from_utf8(&self.raw).map_err(|_| validate::nwf("invalid UTF-8"))?;
        validate::build_element(s, &self.ctx)
    }

    /// The stanza's bytes with the top-level `from`/`to` replaced (`Some`) or kept (`None`),
    /// and any stream-level prefix declarations the stanza relies on made explicit, so the
    /// result can be written into any stream whose default namespace is the same.
    /// `to: Some("")` removes the 'to' attribute (a fan-out whose recipients each add
    /// their own, [`crate::router::Deliver::ToSelf`]).
    pub fn rewrite(&self, from: Option<&str>, to: Option<&str>) -> Bytes {
        if from.is_none() && to.is_none() && self.inherited.is_empty() {
            return self.raw.clone();
        }
        match validate::rewrite(&self.raw, &self.ctx, &self.inherited, from, to, None) {
            Some(v) => Bytes::from(v),
            // Unreachable for validated input; never emit something half-rewritten.
            None => self.raw.clone(),
        }
    }

    /// Like [`Stanza::rewrite`] with only `from` replaced, and also declaring the stream's
    /// default namespace on the top-level element (unless it declares one): the result means
    /// the same wherever it is embedded, e.g. stored and later replayed inside another
    /// element (XEP-0313 results), without building and serializing a tree.
    pub fn standalone(&self, from: Option<&str>) -> Bytes {
        let ns = self.ctx.default_ns.as_deref().unwrap_or("");
        match validate::rewrite(&self.raw, &self.ctx, &self.inherited, from, None, Some(ns)) {
            Some(v) => Bytes::from(v),
            // Unreachable for validated input; the tree path is exact, if slower.
            None => self
                .element()
                .map(|mut el| {
                    if let Some(f) = from {
                        crate::stanza::ElementExt::put_attr(&mut el, "from", f);
                    }
                    to_bytes(&el)
                })
                .unwrap_or_default(),
        }
    }

    /// A copy with `child` appended as the last child of the top-level element, spliced in
    /// before the end tag instead of parsing and serializing a tree. `child` must be one
    /// complete element that declares its own namespace (`<x xmlns='...' .../>`, values
    /// escaped with [`escape`]): then the copy is as valid as this stanza, and its top-level
    /// attributes and namespace context are unchanged. None for a self-closing element.
    pub fn with_child(&self, child: &str) -> Option<Stanza> {
        Some(Stanza {
            raw: splice_child(&self.raw, child)?,
            ..self.clone()
        })
    }
}

/// `child` inserted before the end tag of `raw`, one complete element (None when it is
/// self-closing). The end tag is the last markup: '<' cannot appear in it, nor unescaped in
/// text or attribute values before it. See [`Stanza::with_child`] for what `child` must be.
pub fn splice_child(raw: &[u8], child: &str) -> Option<Bytes> {
    let end = memchr::memrchr(b'<', raw)?;
    if raw.last() != Some(&b'>') || raw.get(end + 1) != Some(&b'/') {
        return None;
    }
    let mut v = Vec::with_capacity(raw.len() + child.len());
    v.extend_from_slice(&raw[..end]);
    v.extend_from_slice(child.as_bytes());
    v.extend_from_slice(&raw[end..]);
    Some(Bytes::from(v))
}

/// Events produced by [`StreamParser`].
#[derive(Debug, Clone)]
pub enum Event {
    Open(StreamHeader),
    Stanza(Stanza),
    Close,
}

/// Upper bound for the stream header (and the XML declaration).
const MAX_HEADER: usize = 8 * 1024;
const CDATA_OPEN: &[u8] = b"[CDATA[";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the header.
    Prolog,
    /// Inside the stream, after the header.
    Stream,
    /// `</stream:stream>` seen.
    Closed,
}

#[derive(Debug, Clone, Copy)]
struct TagScan {
    end: bool,
    /// Open quote character, 0 outside attribute values.
    quote: u8,
    slash: bool,
    /// The previous byte closed an attribute value (whitespace, `/` or `>` must follow).
    after_value: bool,
    attrs: usize,
    vstart: usize,
    /// Buffer offset of the tag's qualified name (just after `<` or `</`).
    name_start: usize,
}

/// Framer state; positions are relative to the buffer, whose byte 0 is the `<` of the
/// item being scanned (preceding whitespace is discarded).
#[derive(Debug, Clone, Copy)]
enum Scan {
    /// Between items (depth 0): whitespace, then `<`.
    Idle,
    /// Character data inside a top-level element.
    Text,
    /// Just after `<`.
    Lt,
    /// After `<!`, with this many bytes of `[CDATA[` matched.
    Bang(usize),
    /// Inside a CDATA section.
    CData,
    /// Inside `<?...`, looking for `?>` (only at the start of the stream).
    Decl,
    Tag(TagScan),
}

/// Incremental parser: `feed` bytes as they arrive, then call `next_event` until `Ok(None)`.
#[derive(Debug)]
pub struct StreamParser {
    limits: Limits,
    buf: bytes::BytesMut,
    /// Next byte to examine.
    pos: usize,
    scan: Scan,
    /// Open elements inside the current top-level element.
    depth: usize,
    /// (offset, length) in `buf` of each open element's name, so a mismatched end tag is
    /// refused at once instead of swallowing the rest of the stream (bounded by max_depth).
    open: Vec<(usize, usize)>,
    phase: Phase,
    /// Nothing but possibly a BOM seen since the start/reset (XML declaration allowed).
    at_start: bool,
    ctx: Arc<NsContext>,
    /// Qualified name of the stream header, to match the closing tag.
    header_qname: Box<[u8]>,
    dead: Option<XmlError>,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

#[allow(clippy::large_enum_variant)] // short-lived, returned by value once per event
enum Step {
    /// Keep scanning.
    Continue,
    /// More bytes needed.
    More,
    /// An item is complete.
    Item(Event),
}

impl StreamParser {
    pub fn new(limits: Limits) -> Self {
        StreamParser {
            limits,
            buf: bytes::BytesMut::new(),
            pos: 0,
            scan: Scan::Idle,
            depth: 0,
            open: Vec::new(),
            phase: Phase::Prolog,
            at_start: true,
            ctx: Arc::new(NsContext::default()),
            header_qname: Box::default(),
            dead: None,
        }
    }

    /// Append received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        if self.dead.is_none() && self.phase != Phase::Closed {
            self.buf.extend_from_slice(data);
        }
    }

    /// Next complete event; `Ok(None)` means more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, XmlError> {
        if let Some(e) = &self.dead {
            return Err(e.clone());
        }
        if self.phase == Phase::Closed {
            return Ok(None);
        }
        match self.run() {
            Ok(ev) => Ok(ev),
            Err(e) => {
                self.dead = Some(e.clone());
                self.buf = bytes::BytesMut::new();
                self.pos = 0;
                Err(e)
            }
        }
    }

    /// Stream restart (after STARTTLS or SASL success): expect a new header; buffered bytes are dropped.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.scan = Scan::Idle;
        self.depth = 0;
        self.open.clear();
        self.phase = Phase::Prolog;
        self.at_start = true;
        self.ctx = Arc::new(NsContext::default());
        self.header_qname = Box::default();
        self.dead = None;
    }

    /// Release buffer capacity while idle.
    pub fn shrink(&mut self) {
        if self.buf.is_empty() {
            self.buf = bytes::BytesMut::new();
        }
    }

    /// Hand over the bytes received but not yet returned as events, leaving the parser
    /// empty. Call it only between events (right after a complete one): a reader that
    /// switches to another framing mid-stream (the load generator's trusted-input framer,
    /// `starling-bench`) continues from there.
    pub fn take_buffered(&mut self) -> bytes::BytesMut {
        self.pos = 0;
        self.scan = Scan::Idle;
        self.depth = 0;
        self.open.clear();
        std::mem::take(&mut self.buf)
    }

    /// Bytes currently buffered (received but not yet returned as an event).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The namespace context of the current stream (empty before the header).
    pub fn ns_context(&self) -> &Arc<NsContext> {
        &self.ctx
    }

    fn item_limit(&self) -> usize {
        match self.phase {
            Phase::Stream => self.limits.max_stanza_size,
            _ => MAX_HEADER,
        }
    }

    /// Per-value limit; the header is only bounded as a whole (by `MAX_HEADER`).
    fn attr_len_limit(&self) -> usize {
        match self.phase {
            Phase::Stream => self.limits.max_attribute_len,
            _ => MAX_HEADER,
        }
    }

    fn too_big(&self) -> XmlError {
        match self.phase {
            Phase::Stream => XmlError::PolicyViolation(format!(
                "stanza larger than {} bytes",
                self.limits.max_stanza_size
            )),
            _ => XmlError::PolicyViolation("stream header too large".into()),
        }
    }

    fn run(&mut self) -> Result<Option<Event>, XmlError> {
        loop {
            let step = match self.scan {
                Scan::Idle => self.step_idle()?,
                Scan::Text => self.step_text()?,
                Scan::Lt => self.step_lt()?,
                Scan::Bang(n) => self.step_bang(n)?,
                Scan::CData => self.step_cdata()?,
                Scan::Decl => self.step_decl()?,
                Scan::Tag(t) => self.step_tag(t)?,
            };
            match step {
                Step::Continue => {}
                Step::Item(ev) => return Ok(Some(ev)),
                Step::More => {
                    // Bound the incomplete item: never buffer past the limit.
                    if !matches!(self.scan, Scan::Idle) && self.buf.len() > self.item_limit() {
                        return Err(self.too_big());
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// End of the scan window: the bytes of the current item the limit allows us to look at.
    fn window(&self) -> usize {
        self.buf.len().min(self.item_limit().saturating_add(1))
    }

    fn step_idle(&mut self) -> Result<Step, XmlError> {
        if self.at_start {
            let b = &self.buf[..];
            const BOM: &[u8] = b"\xEF\xBB\xBF";
            if b.starts_with(b"\xFE\xFF")
                || b.starts_with(b"\xFF\xFE")
                || b.starts_with(b"\x00<")
                || b.starts_with(b"<\x00")
            {
                return Err(XmlError::UnsupportedEncoding);
            }
            if b.len() < BOM.len() && BOM.starts_with(b) {
                return Ok(Step::More);
            }
            if b.starts_with(BOM) {
                let _ = self.buf.split_to(BOM.len());
            }
        }
        let skip = self.buf.iter().position(|&b| !is_ws(b));
        let Some(i) = skip else {
            if !self.buf.is_empty() {
                self.at_start = false;
                self.buf.clear();
            }
            return Ok(Step::More);
        };
        if i > 0 {
            self.at_start = false;
            let _ = self.buf.split_to(i);
        }
        if self.buf.first() != Some(&b'<') {
            return Err(validate::nwf(match self.phase {
                Phase::Prolog => "data before the stream header",
                _ => "text at the top level of the stream",
            }));
        }
        self.pos = 1;
        self.scan = Scan::Lt;
        Ok(Step::Continue)
    }

    fn step_text(&mut self) -> Result<Step, XmlError> {
        let end = self.window();
        match self
            .buf
            .get(self.pos..end)
            .and_then(|s| memchr::memchr(b'<', s))
        {
            Some(i) => {
                self.pos += i + 1;
                self.scan = Scan::Lt;
                Ok(Step::Continue)
            }
            None => {
                self.pos = end;
                Ok(Step::More)
            }
        }
    }

    fn step_lt(&mut self) -> Result<Step, XmlError> {
        let Some(&b) = self.buf.get(self.pos) else {
            return Ok(Step::More);
        };
        let at_start = std::mem::replace(&mut self.at_start, false);
        match b {
            b'?' => {
                if at_start && self.phase == Phase::Prolog {
                    self.pos += 1;
                    self.scan = Scan::Decl;
                } else {
                    return Err(XmlError::RestrictedXml(
                        "processing instructions are not allowed",
                    ));
                }
            }
            b'!' => {
                self.pos += 1;
                self.scan = Scan::Bang(0);
            }
            b'/' => {
                if self.phase == Phase::Prolog {
                    return Err(validate::nwf("end tag before the stream header"));
                }
                self.pos += 1;
                self.scan = Scan::Tag(TagScan {
                    end: true,
                    quote: 0,
                    slash: false,
                    after_value: false,
                    attrs: 0,
                    vstart: 0,
                    name_start: self.pos,
                });
            }
            _ => {
                if is_ws(b) || b == b'>' || b == b'<' {
                    return Err(validate::nwf("bad tag"));
                }
                self.scan = Scan::Tag(TagScan {
                    end: false,
                    quote: 0,
                    slash: false,
                    after_value: false,
                    attrs: 0,
                    vstart: 0,
                    name_start: self.pos,
                });
            }
        }
        Ok(Step::Continue)
    }

    fn step_bang(&mut self, mut n: usize) -> Result<Step, XmlError> {
        while let Some(&b) = self.buf.get(self.pos) {
            if n == 0 {
                match b {
                    b'-' => return Err(XmlError::RestrictedXml("comments are not allowed")),
                    b'[' => {
                        if self.depth == 0 {
                            return Err(validate::nwf("CDATA at the top level of the stream"));
                        }
                    }
                    _ => {
                        return Err(XmlError::RestrictedXml(
                            "DTDs and entity declarations are not allowed",
                        ))
                    }
                }
            } else if CDATA_OPEN.get(n) != Some(&b) {
                return Err(validate::nwf("bad markup declaration"));
            }
            n += 1;
            self.pos += 1;
            if n == CDATA_OPEN.len() {
                self.scan = Scan::CData;
                return Ok(Step::Continue);
            }
        }
        self.scan = Scan::Bang(n);
        Ok(Step::More)
    }

    fn step_cdata(&mut self) -> Result<Step, XmlError> {
        let end = self.window();
        let hay = self.buf.get(self.pos..end).unwrap_or_default();
        match memchr::memmem::find(hay, b"]]>") {
            Some(i) => {
                self.pos += i + 3;
                self.scan = Scan::Text;
                Ok(Step::Continue)
            }
            None => {
                // Keep the last two bytes: they may start a "]]>" split across feeds.
                self.pos = end.saturating_sub(2).max(self.pos);
                Ok(Step::More)
            }
        }
    }

    fn step_decl(&mut self) -> Result<Step, XmlError> {
        let end = self.window();
        let hay = self.buf.get(self.pos..end).unwrap_or_default();
        match memchr::memmem::find(hay, b"?>") {
            Some(i) => {
                let stop = self.pos + i + 2;
                let decl = self.buf.split_to(stop);
                let s = validate::check_chars(&decl)?;
                validate::check_decl(s)?;
                self.pos = 0;
                self.scan = Scan::Idle;
                Ok(Step::Continue)
            }
            None => {
                self.pos = end.saturating_sub(1).max(self.pos);
                Ok(Step::More)
            }
        }
    }

    fn step_tag(&mut self, mut t: TagScan) -> Result<Step, XmlError> {
        let end = self.window();
        loop {
            if t.quote != 0 {
                let hay = self.buf.get(self.pos..end).unwrap_or_default();
                match memchr::memchr2(t.quote, b'<', hay) {
                    Some(i) => {
                        let p = self.pos + i;
                        if self.buf.get(p) == Some(&b'<') {
                            return Err(validate::nwf("'<' in attribute value"));
                        }
                        if p - t.vstart > self.attr_len_limit() {
                            return Err(XmlError::PolicyViolation(
                                "attribute value too long".into(),
                            ));
                        }
                        t.quote = 0;
                        t.after_value = true;
                        self.pos = p + 1;
                    }
                    None => {
                        if end.saturating_sub(t.vstart) > self.attr_len_limit() {
                            return Err(XmlError::PolicyViolation(
                                "attribute value too long".into(),
                            ));
                        }
                        self.pos = end;
                        self.scan = Scan::Tag(t);
                        return Ok(Step::More);
                    }
                }
                continue;
            }
            let Some(&b) = self.buf.get(self.pos..end).and_then(|s| s.first()) else {
                self.scan = Scan::Tag(t);
                return Ok(Step::More);
            };
            self.pos += 1;
            if t.slash && b != b'>' {
                return Err(validate::nwf("'/' inside a tag"));
            }
            if std::mem::take(&mut t.after_value) && !(is_ws(b) || b == b'/' || b == b'>') {
                return Err(validate::nwf("missing whitespace between attributes"));
            }
            match b {
                b'>' => return self.finish_tag(t),
                b'\'' | b'"' => {
                    if t.end {
                        return Err(validate::nwf("attribute in an end tag"));
                    }
                    t.attrs += 1;
                    if t.attrs > self.limits.max_attributes && self.phase == Phase::Stream {
                        return Err(XmlError::PolicyViolation("too many attributes".into()));
                    }
                    t.quote = b;
                    t.vstart = self.pos;
                }
                b'/' => {
                    if t.end {
                        return Err(validate::nwf("'/' inside an end tag"));
                    }
                    t.slash = true;
                }
                b'<' => return Err(validate::nwf("'<' inside a tag")),
                _ => {}
            }
        }
    }

    fn finish_tag(&mut self, t: TagScan) -> Result<Step, XmlError> {
        if self.pos > self.item_limit() {
            return Err(self.too_big());
        }
        if t.end {
            if self.depth == 0 {
                // The stream close: must match the header's name.
                let tag = self.buf.split_to(self.pos);
                let name = tag.get(2..tag.len().saturating_sub(1)).unwrap_or_default();
                let name_end = name.iter().position(|&b| is_ws(b)).unwrap_or(name.len());
                let (n, rest) = name.split_at(name_end);
                if n != &*self.header_qname || !rest.iter().all(|&b| is_ws(b)) {
                    return Err(validate::nwf("end tag does not match the stream header"));
                }
                self.pos = 0;
                self.scan = Scan::Idle;
                self.phase = Phase::Closed;
                self.buf = bytes::BytesMut::new();
                return Ok(Step::Item(Event::Close));
            }
            let matches = match self.open.last() {
                Some(&(start, len)) => self.buf.get(start..start + len) == Some(self.tag_name(&t)),
                None => false,
            };
            if !matches {
                return Err(validate::nwf("end tag does not match the open element"));
            }
            self.open.pop();
            self.depth -= 1;
            if self.depth == 0 {
                return self.complete().map(Step::Item);
            }
            self.scan = Scan::Text;
            return Ok(Step::Continue);
        }
        if self.phase == Phase::Prolog {
            let tag = self.buf.split_to(self.pos);
            self.pos = 0;
            self.scan = Scan::Idle;
            if t.slash {
                return Err(XmlError::BadFormat("empty stream header".into()));
            }
            let s = validate::check_chars(&tag)?;
            let (hdr, ctx) = validate::parse_header(s)?;
            let qlen = tag
                .iter()
                .skip(1)
                .position(|&b| is_ws(b) || b == b'>' || b == b'/')
                .unwrap_or(0);
            self.header_qname = tag.get(1..1 + qlen).unwrap_or_default().into();
            self.ctx = Arc::new(ctx);
            self.phase = Phase::Stream;
            return Ok(Step::Item(Event::Open(hdr)));
        }
        if self.depth + 1 > self.limits.max_depth {
            return Err(XmlError::PolicyViolation(
                "elements nested too deeply".into(),
            ));
        }
        if t.slash {
            if self.depth == 0 {
                return self.complete().map(Step::Item);
            }
        } else {
            let len = self.tag_name(&t).len();
            self.open.push((t.name_start, len));
            self.depth += 1;
        }
        self.scan = Scan::Text;
        Ok(Step::Continue)
    }

    /// The qualified name of the tag being finished.
    fn tag_name(&self, t: &TagScan) -> &[u8] {
        let rest = self.buf.get(t.name_start..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| is_ws(b) || b == b'>' || b == b'/')
            .unwrap_or(rest.len());
        &rest[..len]
    }

    /// The top-level element occupies `buf[..pos]`: split it off and validate it.
    fn complete(&mut self) -> Result<Event, XmlError> {
        let raw = self.buf.split_to(self.pos).freeze();
        self.open.clear();
        self.pos = 0;
        self.scan = Scan::Idle;
        Stanza::parse(raw, self.ctx.clone()).map(Event::Stanza)
    }
}

/// Serialize an element (as produced by handlers) to bytes for writing into a stream.
pub fn to_bytes(el: &minidom::Element) -> Bytes {
    let mut out = Vec::with_capacity(128);
    match el.write_to(&mut out) {
        Ok(()) => Bytes::from(out),
        Err(_) => Bytes::new(),
    }
}

/// A `<stream:error/>` (RFC 6120 §4.9) with its defined condition, an optional
/// application-specific condition element (already serialized) and an optional text, for
/// every stream kind (c2s, s2s, components): the `stream` prefix is the one their headers
/// declare.
pub fn stream_error(condition: &str, app: Option<&str>, text: Option<&str>) -> String {
    use crate::stanza::NS_STREAMS;
    let mut e = format!("<stream:error><{condition} xmlns='{NS_STREAMS}'/>");
    if let Some(a) = app {
        e.push_str(a);
    }
    if let Some(t) = text {
        e.push_str(&format!(
            "<text xmlns='{NS_STREAMS}' xml:lang='en'>{}</text>",
            escape(t)
        ));
    }
    e.push_str("</stream:error>");
    e
}

/// Escape text for use in an attribute value or character data.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    let needs = |b: u8| matches!(b, b'&' | b'<' | b'>' | b'\'' | b'"');
    let Some(first) = s.bytes().position(needs) else {
        return std::borrow::Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len() + 16);
    out.push_str(&s[..first]);
    for c in s[first..].chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests;
mod validate;
