use super::*;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' xml:lang='en'>";

/// Compact, comparable rendering of an event.
fn show(ev: &Event) -> String {
    match ev {
        Event::Open(h) => format!(
            "open {} {:?} {:?} {:?} {:?} {:?}",
            h.name, h.stream_ns, h.default_ns, h.to, h.version, h.lang
        ),
        Event::Stanza(s) => format!(
            "stanza {} {} to={:?} from={:?} id={:?} type={:?} lang={:?} raw={}",
            s.name,
            s.ns,
            s.to,
            s.from,
            s.id,
            s.type_,
            s.lang,
            String::from_utf8_lossy(s.raw())
        ),
        Event::Close => "close".into(),
    }
}

/// Feeds `input` in chunks of `chunk` bytes, draining events after each feed.
fn run_chunked(input: &[u8], chunk: usize, limits: Limits) -> Result<Vec<String>, XmlError> {
    let mut p = StreamParser::new(limits);
    let mut out = Vec::new();
    for c in input.chunks(chunk.max(1)) {
        p.feed(c);
        while let Some(ev) = p.next_event()? {
            out.push(show(&ev));
        }
    }
    Ok(out)
}

fn run(input: &str) -> Result<Vec<String>, XmlError> {
    run_chunked(input.as_bytes(), usize::MAX, Limits::default())
}

/// Parses a header + one stanza and returns the stanza.
fn stanza(header: &str, body: &str) -> Result<Stanza, XmlError> {
    let mut p = StreamParser::new(Limits::default());
    p.feed(header.as_bytes());
    p.feed(body.as_bytes());
    match p.next_event()? {
        Some(Event::Open(_)) => {}
        other => panic!("expected open, got {other:?}"),
    }
    match p.next_event()? {
        Some(Event::Stanza(s)) => Ok(s),
        other => panic!("expected stanza, got {other:?}"),
    }
}

/// Result of feeding header + body: the first error, if any.
fn err_of(body: &str) -> Option<XmlError> {
    err_of_bytes(format!("{HEADER}{body}").as_bytes(), Limits::default())
}

fn err_of_bytes(input: &[u8], limits: Limits) -> Option<XmlError> {
    run_chunked(input, usize::MAX, limits).err()
}

fn is_nwf(e: Option<XmlError>) -> bool {
    matches!(e, Some(XmlError::NotWellFormed(_)))
}

const SESSION: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' xml:lang='en'>\n  \
    <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/> \r\n\t\
    <message to='juliet@example.com' from=\"romeo@example.net/orchard\" id='m1' type='chat' xml:lang='fr'>\
    <body>Ça va? &lt;3 &amp; &#x1F600; &#65;</body><![CDATA[<raw> & stuff]]]]></message> \
    <iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq><r xmlns='urn:xmpp:sm:3'/>\
    <presence/>   </stream:stream>";

#[test]
fn byte_by_byte_equals_all_at_once() {
    let all = run(SESSION).unwrap();
    assert_eq!(all.len(), 7, "{all:#?}");
    assert_eq!(
        all[0],
        "open stream Some(\"http://etherx.jabber.org/streams\") Some(\"jabber:client\") \
         Some(\"example.com\") Some(\"1.0\") Some(\"en\")"
    );
    assert!(all[1].starts_with("stanza starttls urn:ietf:params:xml:ns:xmpp-tls"));
    assert!(all[2].starts_with(
        "stanza message jabber:client to=Some(\"juliet@example.com\") \
         from=Some(\"romeo@example.net/orchard\") id=Some(\"m1\") type=Some(\"chat\") lang=Some(\"fr\")"
    ));
    assert!(all[3].starts_with("stanza iq jabber:client"));
    assert!(all[4].starts_with("stanza r urn:xmpp:sm:3"));
    assert!(all[5].starts_with("stanza presence jabber:client"));
    assert_eq!(all[6], "close");
    for chunk in [1, 2, 3, 7, 64] {
        let got = run_chunked(SESSION.as_bytes(), chunk, Limits::default()).unwrap();
        assert_eq!(got, all, "chunk size {chunk}");
    }
}

#[test]
fn raw_bytes_are_exact() {
    let s = stanza(HEADER, "<message id='a'>\n<body>x</body></message>").unwrap();
    assert_eq!(&s.raw()[..], b"<message id='a'>\n<body>x</body></message>");
}

#[test]
fn whitespace_keepalives_produce_no_events() {
    let mut p = StreamParser::new(Limits::default());
    p.feed(HEADER.as_bytes());
    assert!(matches!(p.next_event(), Ok(Some(Event::Open(_)))));
    for _ in 0..1000 {
        p.feed(b" \n");
        assert!(matches!(p.next_event(), Ok(None)));
    }
    // Keepalive whitespace is not accumulated.
    assert_eq!(p.buffered(), 0);
    p.feed(b"<presence/>");
    assert!(matches!(p.next_event(), Ok(Some(Event::Stanza(_)))));
    p.shrink();
    assert_eq!(p.buffered(), 0);
}

#[test]
fn split_utf8_characters() {
    let body = "<message><body>héllo → 😀 ünïcödé</body></message>";
    let input = format!("{HEADER}{body}");
    for chunk in [1, 2, 3] {
        let ev = run_chunked(input.as_bytes(), chunk, Limits::default()).unwrap();
        assert_eq!(ev.len(), 2);
        let s = stanza(HEADER, body).unwrap();
        assert_eq!(
            s.element()
                .unwrap()
                .get_child("body", NS_CLIENT)
                .unwrap()
                .text(),
            "héllo → 😀 ünïcödé"
        );
    }
}

#[test]
fn billion_laughs_is_restricted_without_expansion() {
    let lol = "<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n <!ENTITY lol \"lol\">\n \
        <!ENTITY lol2 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">\n \
        <!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\">\n]>\n\
        <stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>&lol3;";
    assert!(matches!(
        err_of_bytes(lol.as_bytes(), Limits::default()),
        Some(XmlError::RestrictedXml(_))
    ));
    // Refused as soon as "<!D" is seen: no need for the rest.
    let mut p = StreamParser::new(Limits::default());
    p.feed(b"<?xml version='1.0'?><!D");
    assert!(matches!(p.next_event(), Err(XmlError::RestrictedXml(_))));
    // DTD inside the stream too.
    assert!(matches!(
        err_of("<!DOCTYPE x>"),
        Some(XmlError::RestrictedXml(_))
    ));
    assert!(matches!(
        err_of("<message><!ENTITY x 'y'></message>"),
        Some(XmlError::RestrictedXml(_))
    ));
}

#[test]
fn comments_are_restricted() {
    assert!(matches!(
        err_of("<!-- hi -->"),
        Some(XmlError::RestrictedXml(_))
    ));
    assert!(matches!(
        err_of("<message><!-- hi --></message>"),
        Some(XmlError::RestrictedXml(_))
    ));
    let pre = "<!-- c --><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>";
    assert!(matches!(
        err_of_bytes(pre.as_bytes(), Limits::default()),
        Some(XmlError::RestrictedXml(_))
    ));
}

#[test]
fn processing_instructions_are_restricted() {
    assert!(matches!(
        err_of("<?foo bar?>"),
        Some(XmlError::RestrictedXml(_))
    ));
    assert!(matches!(
        err_of("<message><?foo bar?></message>"),
        Some(XmlError::RestrictedXml(_))
    ));
    // An XML declaration after the start is a PI too.
    assert!(matches!(
        err_of("<?xml version='1.0'?>"),
        Some(XmlError::RestrictedXml(_))
    ));
    let late =
        " <?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>";
    assert!(matches!(
        err_of_bytes(late.as_bytes(), Limits::default()),
        Some(XmlError::RestrictedXml(_))
    ));
    let pi = "<?xml-stylesheet href='a'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>";
    assert!(matches!(
        err_of_bytes(pi.as_bytes(), Limits::default()),
        Some(XmlError::RestrictedXml(_))
    ));
}

#[test]
fn encoding_declaration() {
    let utf16 = "<?xml version='1.0' encoding='UTF-16'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>";
    assert_eq!(
        err_of_bytes(utf16.as_bytes(), Limits::default()),
        Some(XmlError::UnsupportedEncoding)
    );
    let latin = "<?xml version='1.0' encoding='ISO-8859-1'?>";
    assert_eq!(
        err_of_bytes(latin.as_bytes(), Limits::default()),
        Some(XmlError::UnsupportedEncoding)
    );
    let utf8 = "\u{FEFF}<?xml version='1.0' encoding='utf-8'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>";
    assert_eq!(run(utf8).unwrap().len(), 1);
    assert_eq!(
        err_of_bytes(b"\xFF\xFE<\x00", Limits::default()),
        Some(XmlError::UnsupportedEncoding)
    );
}

#[test]
fn entities() {
    assert!(is_nwf(err_of("<message><body>&nbsp;</body></message>")));
    assert!(is_nwf(err_of("<message><body>a & b</body></message>")));
    assert!(is_nwf(err_of("<message to='&foo;'/>")));
    assert!(is_nwf(err_of("<message to='a&b'/>")));
    // Character references must denote legal characters.
    assert!(is_nwf(err_of("<message><body>&#0;</body></message>")));
    assert!(is_nwf(err_of("<message><body>&#x1;</body></message>")));
    assert!(is_nwf(err_of("<message><body>&#xD800;</body></message>")));
    assert!(is_nwf(err_of("<message><body>&#xFFFF;</body></message>")));
    assert!(is_nwf(err_of("<message><body>&#x110000;</body></message>")));
    assert!(is_nwf(err_of("<message><body>&#xZZ;</body></message>")));
    assert!(is_nwf(err_of("<message to='&#1;'/>")));
    // Raw control characters are not XML characters either.
    assert!(is_nwf(err_of("<message><body>\u{1}</body></message>")));
}

#[test]
fn character_references_and_predefined_entities() {
    let s = stanza(
        HEADER,
        "<message to='a&amp;b&#39;c' id='&#x41;&#66;'><body>&lt;&gt;&amp;&quot;&apos;&#x1F600;&#233;</body></message>",
    )
    .unwrap();
    assert_eq!(s.to.as_deref(), Some("a&b'c"));
    assert_eq!(s.id.as_deref(), Some("AB"));
    let el = s.element().unwrap();
    assert_eq!(el.attr("to"), Some("a&b'c"));
    assert_eq!(el.get_child("body", NS_CLIENT).unwrap().text(), "<>&\"'😀é");
}

#[test]
fn cdata_is_text() {
    let s = stanza(
        HEADER,
        "<message><body>a<![CDATA[<b>&amp;]]]]>c</body></message>",
    )
    .unwrap();
    let el = s.element().unwrap();
    assert_eq!(
        el.get_child("body", NS_CLIENT).unwrap().text(),
        "a<b>&amp;]]c"
    );
    // CDATA is character data: not allowed between top-level elements.
    assert!(is_nwf(err_of("<![CDATA[x]]>")));
    // "]]>" split across feeds.
    let input = format!("{HEADER}<message><body><![CDATA[x]]]><!-- --></body></message>");
    for chunk in [1, 2, 5] {
        let r = run_chunked(input.as_bytes(), chunk, Limits::default());
        assert!(matches!(r, Err(XmlError::RestrictedXml(_))), "{r:?}");
    }
}

#[test]
fn invalid_utf8() {
    let mut input = format!("{HEADER}<message><body>").into_bytes();
    input.extend_from_slice(b"\xC3\x28</body></message>");
    assert!(is_nwf(err_of_bytes(&input, Limits::default())));
    let mut hdr =
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='\xFF'>".to_vec();
    assert!(is_nwf(err_of_bytes(&hdr, Limits::default())));
    hdr.clear();
    hdr.extend_from_slice(HEADER.as_bytes());
    hdr.extend_from_slice(b" \xFF ");
    assert!(is_nwf(err_of_bytes(&hdr, Limits::default())));
}

#[test]
fn well_formedness_errors() {
    assert!(is_nwf(err_of("<message><body></message></body>")));
    assert!(is_nwf(err_of("<message></iq>")));
    assert!(is_nwf(err_of("<message to='a' to='b'/>")));
    assert!(is_nwf(err_of("<message to=a/>")));
    assert!(is_nwf(err_of("<message to/>")));
    assert!(is_nwf(err_of("<message to='a'id='b'/>")));
    assert!(is_nwf(err_of("<message><body>]]></body></message>")));
    assert!(is_nwf(err_of("<message xmlns:x=''/>")));
    assert!(is_nwf(err_of("<message to='a<b'/>")));
    assert!(is_nwf(err_of("<message><body>x</body ></message x='1'>")));
    assert!(is_nwf(err_of("<message/ >")));
    assert!(is_nwf(err_of("< message/>")));
    assert!(is_nwf(err_of("<1message/>")));
    assert!(is_nwf(err_of("hello")));
    assert!(is_nwf(err_of("<presence/>hello")));
    assert!(is_nwf(err_of("</stream:streamx>")));
    assert!(is_nwf(err_of("</stream>")));
    // Data before the header.
    assert!(is_nwf(err_of_bytes(b"hello", Limits::default())));
    assert!(is_nwf(err_of_bytes(b"</stream:stream>", Limits::default())));
    // Errors are sticky.
    let mut p = StreamParser::new(Limits::default());
    p.feed(b"junk");
    assert!(p.next_event().is_err());
    p.feed(HEADER.as_bytes());
    assert!(p.next_event().is_err());
}

#[test]
fn undeclared_prefixes() {
    assert!(is_nwf(err_of("<foo:message/>")));
    assert!(is_nwf(err_of("<message><x:y/></message>")));
    assert!(is_nwf(err_of("<message x:a='1'/>")));
    assert!(is_nwf(err_of(
        "<message><a xmlns:x='urn:x'/><x:b/></message>"
    )));
    let hdr = "<stream:stream xmlns='jabber:client'>";
    assert!(is_nwf(err_of_bytes(hdr.as_bytes(), Limits::default())));
    // Declared ones are fine.
    assert!(err_of("<message xmlns:x='urn:x' x:a='1'><x:y/></message>").is_none());
}

#[test]
fn header_fields_and_close_with_other_prefix() {
    let input = "<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:server' \
        xmlns:db='jabber:server:dialback' from='a.example' id='xyz' version='1.0'>\
        <db:result to='b' from='a'>key</db:result></s:stream >";
    let ev = run(input).unwrap();
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert!(ev[1].starts_with("stanza result jabber:server:dialback"));
    assert_eq!(ev[2], "close");
    // Header details.
    let mut p = StreamParser::new(Limits::default());
    p.feed(input.as_bytes());
    let Ok(Some(Event::Open(h))) = p.next_event() else {
        panic!()
    };
    assert_eq!(h.name, "stream");
    assert_eq!(h.stream_ns.as_deref(), Some(NS_STREAM));
    assert_eq!(h.default_ns.as_deref(), Some(NS_SERVER));
    assert_eq!(h.from.as_deref(), Some("a.example"));
    assert_eq!(h.id.as_deref(), Some("xyz"));
    assert_eq!(h.to, None);
    let ctx = p.ns_context().clone();
    assert_eq!(ctx.default_ns.as_deref(), Some(NS_SERVER));
    assert!(ctx
        .prefixes
        .contains(&("db".into(), "jabber:server:dialback".into())));
    // Wrong stream namespace is parsed, reported in stream_ns, and left to the session.
    let mut p = StreamParser::new(Limits::default());
    p.feed(b"<stream:stream xmlns:stream='urn:wrong'>");
    let Ok(Some(Event::Open(h))) = p.next_event() else {
        panic!()
    };
    assert_eq!(h.stream_ns.as_deref(), Some("urn:wrong"));
}

#[test]
fn stanza_size_limit_is_enforced_while_buffering() {
    let limits = Limits::default();
    let max = limits.max_stanza_size;
    let mut p = StreamParser::new(limits);
    p.feed(HEADER.as_bytes());
    assert!(matches!(p.next_event(), Ok(Some(Event::Open(_)))));
    p.feed(b"<message><body>");
    let chunk = vec![b'a'; 4096];
    let mut fed = 0usize;
    let err = loop {
        p.feed(&chunk);
        fed += chunk.len();
        assert!(
            p.buffered() <= max + chunk.len(),
            "buffered {}",
            p.buffered()
        );
        match p.next_event() {
            Ok(None) => {}
            Ok(Some(ev)) => panic!("unexpected {ev:?}"),
            Err(e) => break e,
        }
        assert!(fed < 1024 * 1024, "1 MiB stanza was not refused");
    };
    assert!(matches!(err, XmlError::PolicyViolation(_)));
    assert!(fed <= max + chunk.len());
    // Also when it arrives complete in one feed, and inside a single attribute value.
    let big = format!(
        "<message><body>{}</body></message>",
        "a".repeat(1024 * 1024)
    );
    assert!(matches!(err_of(&big), Some(XmlError::PolicyViolation(_))));
    let small = Limits {
        max_stanza_size: 100,
        ..Limits::default()
    };
    let tag = format!("{HEADER}<message id='{}", "a".repeat(90));
    assert!(matches!(
        run_chunked(tag.as_bytes(), 7, small.clone()),
        Err(XmlError::PolicyViolation(_))
    ));
    // Exactly at the limit is fine.
    let body = format!("<message>{}</message>", "a".repeat(100 - 19));
    assert_eq!(body.len(), 100);
    assert_eq!(
        run_chunked(format!("{HEADER}{body}").as_bytes(), 3, small)
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn header_size_limit() {
    let hdr = format!(
        "<stream:stream xmlns:stream='{NS_STREAM}' a='{}",
        "x".repeat(20_000)
    );
    let r = run_chunked(hdr.as_bytes(), 1000, Limits::default());
    assert!(matches!(r, Err(XmlError::PolicyViolation(_))), "{r:?}");
}

#[test]
fn depth_limit() {
    let limits = Limits {
        max_depth: 4,
        ..Limits::default()
    };
    let ok = format!("{HEADER}<message><a><b><c/></b></a></message>");
    assert_eq!(
        run_chunked(ok.as_bytes(), 5, limits.clone()).unwrap().len(),
        2
    );
    let deep = format!("{HEADER}<message><a><b><c><d/></c></b></a></message>");
    assert!(matches!(
        err_of_bytes(deep.as_bytes(), limits.clone()),
        Some(XmlError::PolicyViolation(_))
    ));
    // Detected before the element completes.
    let open = format!("{HEADER}<message><a><b><c><d>");
    assert!(matches!(
        err_of_bytes(open.as_bytes(), limits),
        Some(XmlError::PolicyViolation(_))
    ));
    let mut nested = String::new();
    for _ in 0..100_000 {
        nested.push_str("<a>");
    }
    assert!(matches!(
        err_of(&nested),
        Some(XmlError::PolicyViolation(_))
    ));
}

#[test]
fn attribute_limits() {
    let limits = Limits {
        max_attributes: 3,
        max_attribute_len: 10,
        ..Limits::default()
    };
    let ok = format!("{HEADER}<message a='1' b='2' c='0123456789'/>");
    assert_eq!(
        run_chunked(ok.as_bytes(), 2, limits.clone()).unwrap().len(),
        2
    );
    let many = format!("{HEADER}<message a='1' b='2' c='3' d='4'/>");
    assert!(matches!(
        err_of_bytes(many.as_bytes(), limits.clone()),
        Some(XmlError::PolicyViolation(_))
    ));
    let long = format!("{HEADER}<message><x a='01234567890'/></message>");
    assert!(matches!(
        err_of_bytes(long.as_bytes(), limits.clone()),
        Some(XmlError::PolicyViolation(_))
    ));
    let open = format!("{HEADER}<message a='01234567890");
    assert!(matches!(
        run_chunked(open.as_bytes(), 3, limits),
        Err(XmlError::PolicyViolation(_))
    ));
}

#[test]
fn element_namespace_resolution() {
    let hdr =
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
        xmlns:ext='urn:example:ext'>";
    let s = stanza(
        hdr,
        "<message to='a@b' xml:lang='de'><body>hi</body><x:data xmlns:x='jabber:x:data' x:type='form'>\
         <x:field/></x:data><ext:thing ext:a='1'><inner/></ext:thing>\
         <delay xmlns='urn:xmpp:delay'><y/></delay><plain xmlns=''/></message>",
    )
    .unwrap();
    assert_eq!(s.ns, NS_CLIENT);
    assert_eq!(s.lang.as_deref(), Some("de"));
    let el = s.element().unwrap();
    assert!(el.is("message", NS_CLIENT));
    assert_eq!(el.attr("to"), Some("a@b"));
    assert_eq!(el.attr_ns(NS_XML, "lang"), Some("de"));
    let body = el.get_child("body", NS_CLIENT).unwrap();
    assert_eq!(body.text(), "hi");
    let x = el.get_child("data", "jabber:x:data").unwrap();
    assert_eq!(x.attr_ns("jabber:x:data", "type"), Some("form"));
    assert!(x.get_child("field", "jabber:x:data").is_some());
    let ext = el.get_child("thing", "urn:example:ext").unwrap();
    assert_eq!(ext.attr_ns("urn:example:ext", "a"), Some("1"));
    // Unprefixed child of a prefixed element inherits the default namespace.
    assert!(ext.get_child("inner", NS_CLIENT).is_some());
    let delay = el.get_child("delay", "urn:xmpp:delay").unwrap();
    assert!(delay.get_child("y", "urn:xmpp:delay").is_some());
    assert!(el.get_child("plain", "").is_some());
    // Serializing gives something that parses back to the same tree.
    let bytes = to_bytes(&el);
    let back: minidom::Element = std::str::from_utf8(&bytes).unwrap().parse().unwrap();
    assert_eq!(back, el);
}

#[test]
fn rewrite_replaces_from_to_and_keeps_payload() {
    let s = stanza(
        HEADER,
        "<message type=\"chat\" to='juliet@example.com' id='x&amp;1'><body>a &amp; b</body></message>",
    )
    .unwrap();
    let out = s.rewrite(Some("o'brien&co@example.net/r"), None);
    assert_eq!(
        &out[..],
        b"<message type=\"chat\" to='juliet@example.com' id='x&amp;1' \
          from='o&apos;brien&amp;co@example.net/r'><body>a &amp; b</body></message>"
    );
    // The result is itself a valid stanza with the intended values.
    let again = Stanza::parse(out, s.ns_context().clone()).unwrap();
    assert_eq!(again.from.as_deref(), Some("o'brien&co@example.net/r"));
    assert_eq!(again.to.as_deref(), Some("juliet@example.com"));
    let out = s.rewrite(Some("a@b"), Some("c@d"));
    assert_eq!(
        &out[..],
        b"<message type=\"chat\" to='c@d' id='x&amp;1' from='a@b'><body>a &amp; b</body></message>"
    );
    // Replace an existing from, keep unchanged bytes when nothing to do.
    let s = stanza(HEADER, "<presence from='old'/>").unwrap();
    assert_eq!(&s.rewrite(Some("new"), None)[..], b"<presence from='new'/>");
    assert_eq!(s.rewrite(None, None), *s.raw());
}

#[test]
fn rewrite_declares_stream_level_prefixes() {
    let hdr =
        "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
        xmlns:db='jabber:server:dialback' xmlns:unused='urn:unused'>";
    let s = stanza(hdr, "<message to='a'><db:x/></message>").unwrap();
    let out = s.rewrite(None, None);
    assert_eq!(
        &out[..],
        b"<message to='a' xmlns:db='jabber:server:dialback'><db:x/></message>"
    );
    // The rewritten bytes stand alone in a stream that lacks the prefix.
    let plain = Arc::new(NsContext {
        default_ns: Some(NS_SERVER.into()),
        prefixes: vec![],
    });
    let alone = Stanza::parse(out, plain).unwrap();
    assert!(alone
        .element()
        .unwrap()
        .get_child("x", "jabber:server:dialback")
        .is_some());
    // A locally declared prefix is not added again.
    let s = stanza(hdr, "<message xmlns:db='urn:other'><db:x/></message>").unwrap();
    assert_eq!(s.rewrite(None, None), *s.raw());
}

#[test]
fn standalone_declares_the_default_namespace_and_prefixes() {
    let hdr =
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
        xmlns:x='urn:x'>";
    let s = stanza(hdr, "<message to='a@b'><body>hi</body><x:y/></message>").unwrap();
    let out = s.standalone(Some("c@d/r"));
    assert_eq!(
        &out[..],
        b"<message to='a@b' from='c@d/r' xmlns:x='urn:x' xmlns='jabber:client'>\
          <body>hi</body><x:y/></message>"
    );
    // It means the same inside an element of another default namespace.
    let wrapped = format!(
        "<w xmlns='urn:w'>{}</w>",
        std::str::from_utf8(&out).unwrap()
    );
    let w: minidom::Element = wrapped.parse().unwrap();
    let m = w.get_child("message", NS_CLIENT).unwrap();
    let mut expected = s.element().unwrap();
    crate::stanza::ElementExt::put_attr(&mut expected, "from", "c@d/r");
    assert_eq!(m, &expected);
    // A declared default namespace is kept as it is.
    let s = stanza(hdr, "<message xmlns='jabber:client'><body/></message>").unwrap();
    assert_eq!(&s.standalone(None)[..], s.raw().as_ref());
}

#[test]
fn with_child_splices_before_the_end_tag() {
    let hdr =
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
        xmlns:x='urn:x'>";
    let s = stanza(hdr, "<message to='a@b' type='chat'><x:y>t</x:y></message >").unwrap();
    let c = s
        .with_child("<stanza-id xmlns='urn:xmpp:sid:0' by='a@b' id='1'/>")
        .unwrap();
    assert_eq!(
        &c.raw()[..],
        b"<message to='a@b' type='chat'><x:y>t</x:y>\
          <stanza-id xmlns='urn:xmpp:sid:0' by='a@b' id='1'/></message >"
    );
    assert_eq!(
        (c.to.as_deref(), c.type_.as_deref()),
        (Some("a@b"), Some("chat"))
    );
    // As valid as a stanza parsed from those bytes, and its prefixes still declared on rewrite.
    let again = Stanza::parse(c.raw().clone(), s.ns_context().clone()).unwrap();
    assert_eq!(again.element().unwrap(), c.element().unwrap());
    let el = c.element().unwrap();
    assert_eq!(
        el.get_child("stanza-id", "urn:xmpp:sid:0")
            .unwrap()
            .attr("id"),
        Some("1")
    );
    assert!(c
        .rewrite(None, None)
        .starts_with(b"<message to='a@b' type='chat' xmlns:x='urn:x'>"));
    // Nothing to splice into a self-closing element.
    let empty = stanza(hdr, "<message to='a@b'/>").unwrap();
    assert!(empty.with_child("<z xmlns='urn:z'/>").is_none());
}

#[test]
fn reset_then_new_header() {
    let mut p = StreamParser::new(Limits::default());
    p.feed(HEADER.as_bytes());
    p.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><partial");
    assert!(matches!(p.next_event(), Ok(Some(Event::Open(_)))));
    assert!(matches!(p.next_event(), Ok(Some(Event::Stanza(_)))));
    assert!(matches!(p.next_event(), Ok(None)));
    p.reset();
    assert_eq!(p.buffered(), 0);
    p.feed(HEADER.as_bytes());
    let Ok(Some(Event::Open(h))) = p.next_event() else {
        panic!()
    };
    assert_eq!(h.to.as_deref(), Some("example.com"));
    p.feed(b"<presence/>");
    assert!(matches!(p.next_event(), Ok(Some(Event::Stanza(_)))));
    // A second header without reset is just an unclosed element inside the stream.
    p.feed(b"</stream:stream>");
    assert!(matches!(p.next_event(), Ok(Some(Event::Close))));
    assert!(matches!(p.next_event(), Ok(None)));
}

#[test]
fn escape_function() {
    assert!(matches!(
        escape("plain"),
        std::borrow::Cow::Borrowed("plain")
    ));
    assert_eq!(escape("a&b<c>d'e\"f"), "a&amp;b&lt;c&gt;d&apos;e&quot;f");
}

#[test]
fn to_bytes_roundtrip() {
    let el = minidom::Element::builder("message", NS_CLIENT)
        .attr(minidom::rxml::NcName::try_from("to").unwrap(), "a'b&c")
        .append(minidom::Element::builder("body", NS_CLIENT).append("x < y"))
        .build();
    let b = to_bytes(&el);
    let s = std::str::from_utf8(&b).unwrap();
    assert!(s.starts_with("<message"), "{s}");
    let ctx = Arc::new(NsContext {
        default_ns: Some(NS_CLIENT.into()),
        prefixes: vec![],
    });
    let st = Stanza::parse(b.clone(), ctx).unwrap();
    assert_eq!(st.to.as_deref(), Some("a'b&c"));
    assert_eq!(st.element().unwrap(), el);
}

#[test]
fn garbage_never_panics() {
    // Deterministic pseudo-random inputs, including markup-heavy ones.
    let alphabet: &[u8] = b"<>/'\"=&;![]?-x: \n\xC3\xA9\xFFabs#CDATA";
    let mut seed = 0x1234_5678u64;
    for _ in 0..2000 {
        let mut input = HEADER.as_bytes().to_vec();
        for _ in 0..64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            input.push(alphabet[(seed % alphabet.len() as u64) as usize]);
        }
        let mut p = StreamParser::new(Limits::default());
        for c in input.chunks(((seed >> 20) % 7 + 1) as usize) {
            p.feed(c);
            loop {
                match p.next_event() {
                    Ok(Some(Event::Stanza(s))) => {
                        let _ = s.element();
                        let _ = s.rewrite(Some("a"), Some("b"));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}

/// A mismatched end tag is refused as soon as it arrives, not when the element completes.
#[test]
fn mismatched_end_tag_is_refused_immediately() {
    let mut p = StreamParser::new(Limits::default());
    p.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>");
    assert!(matches!(p.next_event(), Ok(Some(Event::Open(_)))));
    p.feed(b"<message><body>x</message>");
    assert!(matches!(p.next_event(), Err(XmlError::NotWellFormed(_))));
    // Matching names, including prefixed ones, still frame normally.
    let mut p = StreamParser::new(Limits::default());
    p.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>");
    assert!(matches!(p.next_event(), Ok(Some(Event::Open(_)))));
    p.feed(b"<message xmlns:a='urn:a'><a:x><a:y/></a:x><body>1</body></message>");
    assert!(matches!(p.next_event(), Ok(Some(Event::Stanza(_)))));
}

/// Re-reading a validated s2s stanza in jabber:client (no second validation) gives what
/// parsing it in a jabber:client stream gives: inherited elements move, declared ones and
/// stream-level prefixes stay.
#[test]
fn with_default_ns_matches_a_fresh_parse() {
    let server = Arc::new(NsContext {
        default_ns: Some("jabber:server".into()),
        prefixes: vec![("db".into(), "jabber:server:dialback".into())],
    });
    let client = Arc::new(NsContext {
        default_ns: Some(NS_CLIENT.into()),
        prefixes: server.prefixes.clone(),
    });
    let raw = Bytes::from_static(
        b"<message from='a@x' to='b@y'><body>hi</body><z xmlns='urn:z'><w/></z></message>",
    );
    let moved = Stanza::parse(raw.clone(), server)
        .unwrap()
        .with_default_ns(NS_CLIENT);
    let fresh = Stanza::parse(raw, client).unwrap();
    assert_eq!(moved.ns, NS_CLIENT);
    assert_eq!(moved.element().unwrap(), fresh.element().unwrap());
    assert_eq!(
        moved.rewrite(Some("c@x"), None),
        fresh.rewrite(Some("c@x"), None)
    );
}
