//! Validation of one framed top-level element (well-formedness, restricted XML, namespaces,
//! entities), tree building for [`Stanza::element`](super::Stanza::element) and the
//! start-tag rewriting used by [`Stanza::rewrite`](super::Stanza::rewrite).
//!
//! Everything here runs on a complete, size-bounded byte slice produced by the framer.

use super::{NsContext, XmlError, NS_XML};
use quick_xml::events::{BytesStart, Event as QEvent};
use quick_xml::Reader;
use std::borrow::Cow;

const NS_XMLNS: &str = "http://www.w3.org/2000/xmlns/";

pub(crate) fn nwf(msg: impl Into<String>) -> XmlError {
    XmlError::NotWellFormed(msg.into())
}

fn qerr(e: quick_xml::Error) -> XmlError {
    nwf(e.to_string())
}

/// Legal XML 1.0 character (production [2] Char).
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// Checks a complete slice: valid UTF-8 and only legal XML characters.
pub(crate) fn check_chars(bytes: &[u8]) -> Result<&str, XmlError> {
    let s = std::str::from_utf8(bytes).map_err(|_| nwf("invalid UTF-8"))?;
    // Control characters (other than TAB, LF, CR) are not XML characters.
    if bytes
        .iter()
        .any(|&b| b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r')
    {
        return Err(nwf("illegal control character"));
    }
    // U+FFFE / U+FFFF are encoded EF BF BE / EF BF BF (surrogates are already rejected by UTF-8).
    for i in memchr::memchr_iter(0xEF, bytes) {
        if bytes.get(i + 1) == Some(&0xBF) && matches!(bytes.get(i + 2), Some(0xBE | 0xBF)) {
            return Err(nwf("illegal character U+FFFE/U+FFFF"));
        }
    }
    Ok(s)
}

/// Resolves the body of a reference (`lt`, `#65`, `#x41`): only the five predefined entities
/// and character references denoting legal XML characters are accepted.
pub(crate) fn resolve_ref(name: &str) -> Result<char, XmlError> {
    match name {
        "lt" => Ok('<'),
        "gt" => Ok('>'),
        "amp" => Ok('&'),
        "quot" => Ok('"'),
        "apos" => Ok('\''),
        _ => {
            let code = if let Some(hex) = name.strip_prefix("#x") {
                if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(nwf("bad character reference"));
                }
                u32::from_str_radix(hex, 16).ok()
            } else if let Some(dec) = name.strip_prefix('#') {
                if dec.is_empty() || !dec.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(nwf("bad character reference"));
                }
                dec.parse::<u32>().ok()
            } else {
                return Err(nwf(format!("undefined entity &{name};")));
            };
            match code.and_then(char::from_u32) {
                Some(c) if is_xml_char(c) => Ok(c),
                _ => Err(nwf("character reference to an illegal character")),
            }
        }
    }
}

/// Unescapes and normalizes (literal TAB/CR/LF become spaces) an attribute value.
pub(crate) fn unescape_attr(raw: &str) -> Result<Cow<'_, str>, XmlError> {
    let needs = raw
        .bytes()
        .any(|b| matches!(b, b'&' | b'\t' | b'\n' | b'\r' | b'<'));
    if !needs {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find(['&', '\t', '\n', '\r', '<']) {
        out.push_str(&rest[..i]);
        let b = rest.as_bytes()[i];
        rest = &rest[i + 1..];
        match b {
            b'&' => {
                let end = rest.find(';').ok_or_else(|| nwf("unescaped '&'"))?;
                out.push(resolve_ref(&rest[..end])?);
                rest = &rest[end + 1..];
            }
            b'<' => return Err(nwf("'<' in attribute value")),
            b'\r' => {
                out.push(' ');
                if let Some(r) = rest.strip_prefix('\n') {
                    rest = r;
                }
            }
            _ => out.push(' '),
        }
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

/// Checks a qualified name syntactically (QName from Namespaces in XML, loosely for non-ASCII).
pub(crate) fn check_qname(name: &[u8]) -> Result<(), XmlError> {
    fn ncname_ok(n: &[u8]) -> bool {
        match n.first() {
            None => false,
            Some(&f) => {
                !(f.is_ascii_digit() || f == b'-' || f == b'.')
                    && n.iter().all(|&b| {
                        b >= 0x80 || b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')
                    })
            }
        }
    }
    let ok = match memchr::memchr(b':', name) {
        None => ncname_ok(name),
        Some(i) => ncname_ok(&name[..i]) && ncname_ok(&name[i + 1..]),
    };
    if ok {
        Ok(())
    } else {
        Err(nwf(format!("bad name '{}'", String::from_utf8_lossy(name))))
    }
}

fn split_qname(name: &str) -> (&str, &str) {
    match name.split_once(':') {
        Some((p, l)) => (p, l),
        None => ("", name),
    }
}

/// Re-borrows `sub` (a sub-slice of `base`) with `base`'s lifetime.
fn reborrow<'a>(base: &'a str, sub: &[u8]) -> Option<&'a str> {
    let off = (sub.as_ptr() as usize).checked_sub(base.as_ptr() as usize)?;
    base.get(off..off.checked_add(sub.len())?)
}

/// Namespace scope: in-stanza declarations on top of the stream-level context.
pub(crate) struct Scope<'a> {
    ctx: &'a NsContext,
    /// (prefix, namespace); prefix "" is the default namespace; namespace "" undeclares it.
    bindings: Vec<(&'a str, Cow<'a, str>)>,
    /// (depth, bindings length before the element at that depth declared anything).
    marks: Vec<(usize, usize)>,
    /// Indices into `ctx.prefixes` that were needed.
    pub(crate) inherited: Vec<usize>,
}

impl<'a> Scope<'a> {
    pub(crate) fn new(ctx: &'a NsContext) -> Self {
        Scope {
            ctx,
            bindings: Vec::new(),
            marks: Vec::new(),
            inherited: Vec::new(),
        }
    }

    /// Namespace of `prefix` ("" = default); `Ok(None)` = no namespace (default undeclared).
    fn resolve(&mut self, prefix: &str) -> Result<Option<Cow<'a, str>>, XmlError> {
        for (p, ns) in self.bindings.iter().rev() {
            if *p == prefix {
                return Ok(if ns.is_empty() {
                    None
                } else {
                    Some(ns.clone())
                });
            }
        }
        let ctx = self.ctx;
        if prefix.is_empty() {
            return Ok(ctx.default_ns.as_deref().map(Cow::Borrowed));
        }
        if prefix == "xml" {
            return Ok(Some(Cow::Borrowed(NS_XML)));
        }
        if let Some(i) = ctx.prefixes.iter().position(|(p, _)| p == prefix) {
            if !self.inherited.contains(&i) {
                self.inherited.push(i);
            }
            return Ok(ctx
                .prefixes
                .get(i)
                .map(|(_, ns)| Cow::Borrowed(ns.as_str())));
        }
        Err(nwf(format!("undeclared namespace prefix '{prefix}'")))
    }

    /// Records the namespace declarations of a start tag at `depth`; returns whether it has
    /// other (non-declaration) prefixed attributes.
    fn declare(
        &mut self,
        src: &'a str,
        e: &BytesStart<'_>,
        depth: usize,
    ) -> Result<bool, XmlError> {
        let before = self.bindings.len();
        let mut prefixed = false;
        for attr in e.attributes().with_checks(true) {
            let attr = attr.map_err(|e| nwf(e.to_string()))?;
            let key = attr.key.as_ref();
            check_qname(key)?;
            let raw = reborrow(src, &attr.value).ok_or_else(|| nwf("attribute value"))?;
            let value = unescape_attr(raw)?;
            if key == b"xmlns" {
                if value == NS_XML || value == NS_XMLNS {
                    return Err(nwf("reserved namespace as default namespace"));
                }
                self.bindings.push(("", value));
            } else if let Some(p) = key.strip_prefix(b"xmlns:") {
                let p = reborrow(src, p).ok_or_else(|| nwf("attribute name"))?;
                if value.is_empty() {
                    return Err(nwf("empty namespace prefix declaration"));
                }
                if p == "xmlns" || (p == "xml") != (value == NS_XML) || value == NS_XMLNS {
                    return Err(nwf("reserved namespace prefix"));
                }
                self.bindings.push((p, value));
            } else if memchr::memchr(b':', key).is_some() {
                prefixed = true;
            }
        }
        if self.bindings.len() != before {
            self.marks.push((depth, before));
        }
        Ok(prefixed)
    }

    /// Leaves the element at `depth`.
    fn pop(&mut self, depth: usize) {
        if let Some(&(d, len)) = self.marks.last() {
            if d == depth {
                self.bindings.truncate(len);
                self.marks.pop();
            }
        }
    }
}

/// What validation extracts from the top-level element.
#[derive(Default)]
pub(crate) struct TopLevel {
    pub name: String,
    pub ns: String,
    pub to: Option<String>,
    pub from: Option<String>,
    pub id: Option<String>,
    pub type_: Option<String>,
    pub lang: Option<String>,
    pub inherited: Vec<usize>,
}

fn new_reader(s: &str) -> Reader<&[u8]> {
    let mut r = Reader::from_str(s);
    let c = r.config_mut();
    c.check_end_names = true;
    c.check_comments = true;
    c.expand_empty_elements = false;
    c.trim_text(false);
    c.allow_dangling_amp = false;
    c.allow_unmatched_ends = false;
    r
}

fn check_text_ref(r: &[u8]) -> Result<char, XmlError> {
    let name = std::str::from_utf8(r).map_err(|_| nwf("invalid UTF-8"))?;
    resolve_ref(name)
}

fn restricted(ev: &QEvent<'_>) -> Option<XmlError> {
    match ev {
        QEvent::Comment(_) => Some(XmlError::RestrictedXml("comments are not allowed")),
        QEvent::PI(_) | QEvent::Decl(_) => Some(XmlError::RestrictedXml(
            "processing instructions are not allowed",
        )),
        QEvent::DocType(_) => Some(XmlError::RestrictedXml("DTDs are not allowed")),
        _ => None,
    }
}

/// Validates one complete top-level element (already UTF-8 and character checked) and
/// extracts its top-level data. No tree is built.
pub(crate) fn validate(s: &str, ctx: &NsContext) -> Result<TopLevel, XmlError> {
    let mut reader = new_reader(s);
    let mut scope = Scope::new(ctx);
    let mut depth = 0usize;
    let mut roots = 0usize;
    let mut top = TopLevel::default();
    loop {
        let ev = reader.read_event().map_err(qerr)?;
        match ev {
            QEvent::Start(ref e) | QEvent::Empty(ref e) => {
                if depth == 0 {
                    roots += 1;
                    if roots > 1 {
                        return Err(nwf("more than one element"));
                    }
                }
                depth += 1;
                let name = e.name();
                let qname = name.as_ref();
                check_qname(qname)?;
                let prefixed_attrs = scope.declare(s, e, depth)?;
                let qname = reborrow(s, qname).ok_or_else(|| nwf("element name"))?;
                let (prefix, local) = split_qname(qname);
                let ns = scope.resolve(prefix)?;
                if prefix == "xmlns" {
                    return Err(nwf("element with the xmlns prefix"));
                }
                if prefixed_attrs {
                    for attr in e.attributes() {
                        let attr = attr.map_err(|e| nwf(e.to_string()))?;
                        let key = attr.key.as_ref();
                        if key.starts_with(b"xmlns:") {
                            continue;
                        }
                        if let Some(i) = memchr::memchr(b':', key) {
                            let p = std::str::from_utf8(&key[..i]).map_err(|_| nwf("name"))?;
                            scope.resolve(p)?;
                        }
                    }
                }
                if depth == 1 {
                    top.name = local.to_owned();
                    top.ns = ns.map(Cow::into_owned).unwrap_or_default();
                    for attr in e.attributes() {
                        let attr = attr.map_err(|e| nwf(e.to_string()))?;
                        let slot = match attr.key.as_ref() {
                            b"to" => &mut top.to,
                            b"from" => &mut top.from,
                            b"id" => &mut top.id,
                            b"type" => &mut top.type_,
                            b"xml:lang" => &mut top.lang,
                            _ => continue,
                        };
                        let raw = reborrow(s, &attr.value).ok_or_else(|| nwf("value"))?;
                        *slot = Some(unescape_attr(raw)?.into_owned());
                    }
                }
                if matches!(ev, QEvent::Empty(_)) {
                    scope.pop(depth);
                    depth -= 1;
                }
            }
            QEvent::End(_) => {
                if depth == 0 {
                    return Err(nwf("unexpected end tag"));
                }
                scope.pop(depth);
                depth -= 1;
            }
            QEvent::Text(ref t) => {
                if depth == 0 && !t.iter().all(|b| b.is_ascii_whitespace()) {
                    return Err(nwf("text outside the element"));
                }
                if memchr::memmem::find(t, b"]]>").is_some() {
                    return Err(nwf("']]>' in character data"));
                }
            }
            QEvent::CData(_) => {
                if depth == 0 {
                    return Err(nwf("CDATA outside the element"));
                }
            }
            QEvent::GeneralRef(ref r) => {
                if depth == 0 {
                    return Err(nwf("reference outside the element"));
                }
                check_text_ref(r)?;
            }
            QEvent::Eof => break,
            ref other => {
                return Err(restricted(other).unwrap_or_else(|| nwf("unexpected markup")));
            }
        }
    }
    if depth != 0 || roots != 1 {
        return Err(nwf("unclosed element"));
    }
    top.inherited = scope.inherited;
    Ok(top)
}

fn ncname(s: &str) -> Result<minidom::rxml::NcName, XmlError> {
    minidom::rxml::NcName::try_from(s).map_err(|_| nwf(format!("bad name '{s}'")))
}

/// Text content with XML line-end normalization (CRLF / CR to LF).
fn push_text(el: &mut minidom::Element, text: &str) {
    if text.contains('\r') {
        el.append_text(text.replace("\r\n", "\n").replace('\r', "\n"));
    } else {
        el.append_text(text);
    }
}

/// Builds a minidom tree from a complete element, resolving against `ctx`.
pub(crate) fn build_element(s: &str, ctx: &NsContext) -> Result<minidom::Element, XmlError> {
    use minidom::rxml::Namespace;
    let mut reader = new_reader(s);
    let mut scope = Scope::new(ctx);
    let mut stack: Vec<minidom::Element> = Vec::new();
    let mut root = None;
    loop {
        let ev = reader.read_event().map_err(qerr)?;
        match ev {
            QEvent::Start(ref e) | QEvent::Empty(ref e) => {
                if root.is_some() {
                    return Err(nwf("more than one element"));
                }
                let depth = stack.len() + 1;
                scope.declare(s, e, depth)?;
                let name = e.name();
                let qname = reborrow(s, name.as_ref()).ok_or_else(|| nwf("element name"))?;
                let (prefix, local) = split_qname(qname);
                let ns = scope
                    .resolve(prefix)?
                    .map(Cow::into_owned)
                    .unwrap_or_default();
                let mut el = minidom::Element::bare(local, ns);
                for attr in e.attributes() {
                    let attr = attr.map_err(|e| nwf(e.to_string()))?;
                    let key = reborrow(s, attr.key.as_ref()).ok_or_else(|| nwf("attribute"))?;
                    if key == "xmlns" || key.starts_with("xmlns:") {
                        continue;
                    }
                    let raw = reborrow(s, &attr.value).ok_or_else(|| nwf("value"))?;
                    let value = unescape_attr(raw)?.into_owned();
                    let (p, l) = split_qname(key);
                    let ans = if p.is_empty() {
                        Namespace::NONE
                    } else if p == "xml" {
                        Namespace::XML
                    } else {
                        match scope.resolve(p)? {
                            Some(ns) => Namespace::from(ns.into_owned()),
                            None => Namespace::NONE,
                        }
                    };
                    el.set_attr(ans, ncname(l)?, value);
                }
                if matches!(ev, QEvent::Empty(_)) {
                    scope.pop(depth);
                    match stack.last_mut() {
                        Some(parent) => {
                            parent.append_child(el);
                        }
                        None => root = Some(el),
                    }
                } else {
                    stack.push(el);
                }
            }
            QEvent::End(_) => {
                scope.pop(stack.len());
                let el = stack.pop().ok_or_else(|| nwf("unexpected end tag"))?;
                match stack.last_mut() {
                    Some(parent) => {
                        parent.append_child(el);
                    }
                    None => root = Some(el),
                }
            }
            QEvent::Text(ref t) => {
                if let Some(el) = stack.last_mut() {
                    let text = std::str::from_utf8(t).map_err(|_| nwf("invalid UTF-8"))?;
                    push_text(el, text);
                }
            }
            QEvent::CData(ref t) => {
                if let Some(el) = stack.last_mut() {
                    let text = std::str::from_utf8(t).map_err(|_| nwf("invalid UTF-8"))?;
                    push_text(el, text);
                }
            }
            QEvent::GeneralRef(ref r) => {
                let c = check_text_ref(r)?;
                if let Some(el) = stack.last_mut() {
                    let mut b = [0u8; 4];
                    el.append_text(&*c.encode_utf8(&mut b));
                }
            }
            QEvent::Eof => break,
            ref other => {
                return Err(restricted(other).unwrap_or_else(|| nwf("unexpected markup")));
            }
        }
    }
    match root {
        Some(el) if stack.is_empty() => Ok(el),
        _ => Err(nwf("incomplete element")),
    }
}

/// One attribute of a raw start tag: full `name='value'` span and the name.
struct RawAttr<'a> {
    span: &'a [u8],
    name: &'a [u8],
}

/// Splits a raw (validated) start tag into its name, attributes and whether it is
/// self-closing; returns the byte length of the tag. `None` on anything unexpected.
fn split_start_tag(raw: &[u8]) -> Option<(&[u8], Vec<RawAttr<'_>>, bool, usize)> {
    let ws = |b: u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    if raw.first() != Some(&b'<') {
        return None;
    }
    let mut i = 1;
    while i < raw.len() && !ws(raw[i]) && raw[i] != b'>' && raw[i] != b'/' {
        i += 1;
    }
    let name = raw.get(1..i)?;
    let mut attrs = Vec::new();
    loop {
        while i < raw.len() && ws(raw[i]) {
            i += 1;
        }
        match raw.get(i)? {
            b'>' => return Some((name, attrs, false, i + 1)),
            b'/' => {
                return (raw.get(i + 1) == Some(&b'>')).then_some((name, attrs, true, i + 2));
            }
            _ => {}
        }
        let start = i;
        while i < raw.len() && !ws(raw[i]) && raw[i] != b'=' {
            i += 1;
        }
        let aname = raw.get(start..i)?;
        while i < raw.len() && ws(raw[i]) {
            i += 1;
        }
        if raw.get(i) != Some(&b'=') {
            return None;
        }
        i += 1;
        while i < raw.len() && ws(raw[i]) {
            i += 1;
        }
        let q = *raw.get(i)?;
        if q != b'\'' && q != b'"' {
            return None;
        }
        let close = memchr::memchr(q, raw.get(i + 1..)?)? + i + 1;
        i = close + 1;
        attrs.push(RawAttr {
            span: raw.get(start..i)?,
            name: aname,
        });
    }
}

/// Re-emits the top-level start tag with `from`/`to` replaced or added and the inherited
/// stream-level prefix declarations made explicit (and, with `default_ns`, the default
/// namespace declared unless the tag declares one); the rest is copied unchanged.
pub(crate) fn rewrite(
    raw: &[u8],
    ctx: &NsContext,
    inherited: &[usize],
    from: Option<&str>,
    to: Option<&str>,
    default_ns: Option<&str>,
) -> Option<Vec<u8>> {
    let (name, attrs, empty, len) = split_start_tag(raw)?;
    let rest = raw.get(len..)?;
    let mut out = Vec::with_capacity(raw.len() + 64);
    out.push(b'<');
    out.extend_from_slice(name);
    let put = |out: &mut Vec<u8>, k: &str, v: &str| {
        out.extend_from_slice(b" ");
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"='");
        out.extend_from_slice(super::escape(v).as_bytes());
        out.push(b'\'');
    };
    let (mut from_done, mut to_done) = (from.is_none(), to.is_none());
    for a in &attrs {
        match (a.name, from, to) {
            (b"from", Some(f), _) => {
                if !from_done {
                    put(&mut out, "from", f);
                    from_done = true;
                }
            }
            (b"to", _, Some(t)) => {
                // An empty `to` removes the attribute (see Stanza::rewrite).
                if !to_done && !t.is_empty() {
                    put(&mut out, "to", t);
                    to_done = true;
                }
            }
            _ => {
                out.push(b' ');
                out.extend_from_slice(a.span);
            }
        }
    }
    if let (false, Some(f)) = (from_done, from) {
        put(&mut out, "from", f);
    }
    if let (false, Some(t)) = (to_done, to) {
        if !t.is_empty() {
            put(&mut out, "to", t);
        }
    }
    for &i in inherited {
        if let Some((p, ns)) = ctx.prefixes.get(i) {
            let key = format!("xmlns:{p}");
            if !attrs.iter().any(|a| a.name == key.as_bytes()) {
                put(&mut out, &key, ns);
            }
        }
    }
    if let Some(ns) = default_ns {
        if !attrs.iter().any(|a| a.name == b"xmlns") {
            put(&mut out, "xmlns", ns);
        }
    }
    out.extend_from_slice(if empty { b"/>" } else { b">" });
    out.extend_from_slice(rest);
    Some(out)
}

/// Parses a complete stream header start tag (`<stream:stream ...>`).
pub(crate) fn parse_header(s: &str) -> Result<(super::StreamHeader, NsContext), XmlError> {
    let empty = NsContext::default();
    let mut reader = new_reader(s);
    let ev = reader.read_event().map_err(qerr)?;
    let e = match ev {
        QEvent::Start(ref e) => e,
        QEvent::Empty(_) => return Err(XmlError::BadFormat("empty stream header".into())),
        ref other => return Err(restricted(other).unwrap_or_else(|| nwf("expected stream header"))),
    };
    let mut scope = Scope::new(&empty);
    let name = e.name();
    check_qname(name.as_ref())?;
    let prefixed = scope.declare(s, e, 1)?;
    let qname = reborrow(s, name.as_ref()).ok_or_else(|| nwf("element name"))?;
    let (prefix, local) = split_qname(qname);
    let mut hdr = super::StreamHeader {
        name: local.to_owned(),
        stream_ns: scope.resolve(prefix)?.map(Cow::into_owned),
        ..Default::default()
    };
    let mut ctx = NsContext::default();
    for attr in e.attributes() {
        let attr = attr.map_err(|e| nwf(e.to_string()))?;
        let key = attr.key.as_ref();
        let raw = reborrow(s, &attr.value).ok_or_else(|| nwf("value"))?;
        let value = unescape_attr(raw)?.into_owned();
        if prefixed {
            if let Some(i) = memchr::memchr(b':', key) {
                if !key.starts_with(b"xmlns:") {
                    let p = std::str::from_utf8(&key[..i]).map_err(|_| nwf("name"))?;
                    scope.resolve(p)?;
                }
            }
        }
        match key {
            b"to" => hdr.to = Some(value),
            b"from" => hdr.from = Some(value),
            b"id" => hdr.id = Some(value),
            b"version" => hdr.version = Some(value),
            b"xml:lang" => hdr.lang = Some(value),
            b"xmlns" => {
                hdr.default_ns = (!value.is_empty()).then(|| value.clone());
                ctx.default_ns = hdr.default_ns.clone();
            }
            _ => {
                if let Some(p) = key.strip_prefix(b"xmlns:") {
                    let p = std::str::from_utf8(p).map_err(|_| nwf("name"))?;
                    ctx.prefixes.push((p.to_owned(), value));
                }
            }
        }
    }
    Ok((hdr, ctx))
}

/// Checks an XML declaration (`<?xml ...?>`): a declaration of another encoding than UTF-8
/// is refused; any other processing instruction is restricted XML.
pub(crate) fn check_decl(s: &str) -> Result<(), XmlError> {
    let mut reader = new_reader(s);
    match reader.read_event().map_err(qerr)? {
        QEvent::Decl(d) => {
            let v = d.version().map_err(qerr)?;
            if !v.starts_with(b"1.") {
                return Err(nwf("unsupported XML version"));
            }
            if let Some(enc) = d.encoding() {
                let enc = enc.map_err(|e| nwf(e.to_string()))?;
                if !enc.eq_ignore_ascii_case(b"UTF-8") && !enc.eq_ignore_ascii_case(b"UTF8") {
                    return Err(XmlError::UnsupportedEncoding);
                }
            }
            Ok(())
        }
        _ => Err(XmlError::RestrictedXml(
            "processing instructions are not allowed",
        )),
    }
}
