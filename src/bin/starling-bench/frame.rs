//! Cheap framing of a server's stream for the load generator's hot receive path.
//!
//! Why: in a 500-occupant room join, every occupant receives the presence of every other
//! one (XEP-0045 §7.2.3), 250,000 presences in all; fully validating each (what the
//! server's own `StreamParser` does with untrusted input) kept the generator's core busy
//! longer than the server spent on the joins, so the benchmark measured the generator. The
//! generator trusts the server under test to send well-formed XML (a malformed stream is
//! still noticed: framing fails or a fully parsed stanza does not parse). It only needs to
//! find where each top-level element ends and read a few attributes of its start tag; every
//! stanza it acts on beyond counting is still parsed in full. The same framing is used for
//! every server compared, so the comparison stays fair.

use bytes::{Bytes, BytesMut};
use memchr::{memchr, memchr3, memmem};

/// One framing step.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete top-level element, exactly as received.
    Element(Bytes),
    /// The stream's closing tag.
    Close,
}

/// Incremental framer for the inside of an XMPP stream (after the stream header).
#[derive(Default)]
pub struct Framer {
    buf: BytesMut,
    /// Next byte to examine.
    pos: usize,
    /// Open elements of the current top-level element (0: between top-level elements).
    depth: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("not well-formed at byte {0} of the buffered input")]
pub struct FrameError(usize);

impl Framer {
    /// Start with bytes received but not yet parsed (handed over by the full parser).
    pub fn new(buffered: BytesMut) -> Framer {
        Framer {
            buf: buffered,
            pos: 0,
            depth: 0,
        }
    }

    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The next complete item; `Ok(None)`: more bytes needed.
    pub fn next(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if self.depth == 0 {
                // Between elements: whitespace keepalives are skipped.
                let skip = self.buf[self.pos..]
                    .iter()
                    .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                    .unwrap_or(self.buf.len() - self.pos);
                let _ = self.buf.split_to(self.pos + skip);
                self.pos = 0;
                if self.buf.is_empty() {
                    return Ok(None);
                }
                if self.buf[0] != b'<' {
                    return Err(FrameError(0));
                }
            }
            let Some(rel) = memchr(b'<', &self.buf[self.pos..]) else {
                self.pos = self.buf.len();
                return Ok(None);
            };
            let lt = self.pos + rel;
            let rest = &self.buf[lt..];
            let (end, kind) = match rest.get(1) {
                None => return Ok(None),
                Some(b'/') => match memchr(b'>', rest) {
                    Some(i) => (lt + i + 1, Tag::End),
                    None => return Ok(None),
                },
                Some(b'!') => {
                    let term: &[u8] = if rest.starts_with(b"<![CDATA[") {
                        b"]]>"
                    } else if rest.starts_with(b"<!--") {
                        b"-->"
                    } else if rest.len() < 9 {
                        return Ok(None); // not yet known which
                    } else {
                        return Err(FrameError(lt));
                    };
                    match memmem::find(rest, term) {
                        Some(i) => (lt + i + term.len(), Tag::Other),
                        None => return Ok(None),
                    }
                }
                Some(b'?') => match memmem::find(rest, b"?>") {
                    Some(i) => (lt + i + 2, Tag::Other),
                    None => return Ok(None),
                },
                Some(_) => match start_tag_end(rest) {
                    Some((i, empty)) => (lt + i + 1, if empty { Tag::Empty } else { Tag::Start }),
                    None => return Ok(None),
                },
            };
            self.pos = end;
            match kind {
                Tag::Start => self.depth += 1,
                Tag::Empty if self.depth > 0 => {}
                Tag::Empty => return Ok(Some(Frame::Element(self.take()))),
                Tag::End if self.depth == 0 => {
                    let _ = self.buf.split_to(end);
                    self.pos = 0;
                    return Ok(Some(Frame::Close));
                }
                Tag::End => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return Ok(Some(Frame::Element(self.take())));
                    }
                }
                Tag::Other => {}
            }
        }
    }

    fn take(&mut self) -> Bytes {
        let el = self.buf.split_to(self.pos).freeze();
        self.pos = 0;
        el
    }
}

enum Tag {
    Start,
    Empty,
    End,
    Other,
}

/// Offset of the '>' ending the start tag at the beginning of `s`, and whether it is an
/// empty-element tag. Attribute values may contain '>' (and '/'), so quotes are skipped.
fn start_tag_end(s: &[u8]) -> Option<(usize, bool)> {
    let mut i = 1;
    loop {
        let j = i + memchr3(b'>', b'\'', b'"', &s[i..])?;
        match s[j] {
            b'>' => return Some((j, s[j - 1] == b'/')),
            q => i = j + 1 + memchr(q, &s[j + 1..])? + 1,
        }
    }
}

/// The local name and the `from` and `type` attributes of a top-level element's start tag,
/// when they can be read without unescaping (no prefix, no entity in those values); None
/// otherwise (the caller then parses the element in full).
pub struct Top<'a> {
    pub name: &'a [u8],
    pub from: Option<&'a str>,
    pub type_: Option<&'a [u8]>,
}

pub fn top(raw: &[u8]) -> Option<Top<'_>> {
    let (end, _) = start_tag_end(raw)?;
    let tag = &raw[1..end];
    let name_end = tag
        .iter()
        .position(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'/'))
        .unwrap_or(tag.len());
    let name = &tag[..name_end];
    if name.contains(&b':') {
        return None;
    }
    let mut t = Top {
        name,
        from: None,
        type_: None,
    };
    let mut rest = &tag[name_end..];
    loop {
        let Some(eq) = memchr(b'=', rest) else {
            return Some(t);
        };
        let key = rest[..eq].trim_ascii();
        let after = rest[eq + 1..].trim_ascii_start();
        let q = *after.first()?;
        if q != b'\'' && q != b'"' {
            return None;
        }
        let close = memchr(q, &after[1..])?;
        let value = &after[1..1 + close];
        rest = &after[close + 2..];
        match key {
            b"from" | b"type" if value.contains(&b'&') => return None,
            b"from" => t.from = Some(std::str::from_utf8(value).ok()?),
            b"type" => t.type_ = Some(value),
            _ => {}
        }
    }
}

/// A reader that frames with [`Framer`] and parses in full only what a hook does not
/// consume from its start tag alone.
pub struct FastReader<R> {
    pub io: R,
    framer: Framer,
    ctx: std::sync::Arc<starling::xml::NsContext>,
    pub bytes_in: u64,
}

impl<R: tokio::io::AsyncRead + Unpin> FastReader<R> {
    /// Continue a stream the full parser has read up to an element boundary.
    pub fn new(io: R, mut parser: starling::xml::StreamParser) -> Self {
        FastReader {
            io,
            ctx: parser.ns_context().clone(),
            framer: Framer::new(parser.take_buffered()),
            bytes_in: 0,
        }
    }

    /// Read once. `Ok(false)`: end of stream. Cancel-safe.
    pub async fn read_more(&mut self) -> std::io::Result<bool> {
        use tokio::io::AsyncReadExt;
        let buf = self.framer.buffer();
        buf.reserve(16 * 1024);
        let n = self.io.read_buf(buf).await?;
        self.bytes_in += n as u64;
        Ok(n > 0)
    }

    /// The next event that `fast` did not handle. `fast` sees each element's start-tag
    /// summary (when readable without unescaping) and its bytes, and returns true when it
    /// fully accounted for it.
    pub fn poll_event_with(
        &mut self,
        mut fast: impl FnMut(&Top<'_>, &[u8]) -> bool,
    ) -> anyhow::Result<Option<starling::xml::Event>> {
        use starling::xml::{Event, Stanza};
        loop {
            match self.framer.next()? {
                None => return Ok(None),
                Some(Frame::Close) => return Ok(Some(Event::Close)),
                Some(Frame::Element(raw)) => {
                    if top(&raw).is_some_and(|t| fast(&t, &raw)) {
                        continue;
                    }
                    let st = Stanza::parse(raw, self.ctx.clone())
                        .map_err(|e| anyhow::anyhow!("XML from server: {e}"))?;
                    return Ok(Some(Event::Stanza(st)));
                }
            }
        }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> crate::client::EventSource for FastReader<R> {
    fn poll_event(&mut self) -> anyhow::Result<Option<starling::xml::Event>> {
        self.poll_event_with(|_, _| false)
    }

    async fn read_more(&mut self) -> std::io::Result<bool> {
        FastReader::read_more(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(chunks: &[&str]) -> Vec<Frame> {
        let mut f = Framer::default();
        let mut out = Vec::new();
        for c in chunks {
            f.buffer().extend_from_slice(c.as_bytes());
            while let Some(x) = f.next().unwrap() {
                out.push(x);
            }
        }
        out
    }

    fn el(s: &str) -> Frame {
        Frame::Element(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn frames_elements_split_anywhere() {
        let stream = "<presence from='r@c/a&apos;b' x='>/'/> <message type=\"groupchat\"><body>1 &lt; 2 > 0</body>\
                      <x><![CDATA[</message><a>]]></x><!-- </message> --></message>\n<iq id='1'/></stream:stream>";
        let want = vec![
            el("<presence from='r@c/a&apos;b' x='>/'/>"),
            el("<message type=\"groupchat\"><body>1 &lt; 2 > 0</body><x><![CDATA[</message><a>]]></x><!-- </message> --></message>"),
            el("<iq id='1'/>"),
            Frame::Close,
        ];
        assert_eq!(frames(&[stream]), want);
        // Every split point gives the same frames.
        for i in 1..stream.len() {
            if stream.is_char_boundary(i) {
                assert_eq!(frames(&[&stream[..i], &stream[i..]]), want, "split at {i}");
            }
        }
    }

    #[test]
    fn garbage_between_elements_is_an_error() {
        let mut f = Framer::new(BytesMut::from(&b"text<a/>"[..]));
        assert!(f.next().is_err());
    }

    #[test]
    fn top_attributes() {
        let t = top(
            b"<presence xmlns='jabber:client' from=\"r@c/n\" type='unavailable'><x/></presence>",
        )
        .unwrap();
        assert_eq!(
            (t.name, t.from, t.type_),
            (&b"presence"[..], Some("r@c/n"), Some(&b"unavailable"[..]))
        );
        let t = top(b"<message from='r@c/n'/>").unwrap();
        assert_eq!((t.name, t.type_), (&b"message"[..], None));
        assert!(top(b"<presence from='r@c/a&amp;b'/>").is_none());
        assert!(top(b"<stream:error><x/></stream:error>").is_none());
    }
}
