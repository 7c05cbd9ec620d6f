//! Inbound server-to-server streams (RFC 6120 §4–§6 as receiving server, XEP-0220 dialback,
//! XEP-0178 SASL EXTERNAL, XEP-0288, XEP-0368), driven by a scripted peer speaking raw XML
//! over TCP to the real server's s2s listeners.

mod common;

use common::*;
use minidom::Element;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

use starling::xml::{Event, Limits, StreamHeader, StreamParser};

const NS_DB: &str = "jabber:server:dialback";
const NS_DB_FEATURE: &str = "urn:xmpp:features:dialback";
const NS_BIDI_FEATURE: &str = "urn:xmpp:features:bidi";
const NS_SERVER: &str = "jabber:server";

/// Plaintext federation allowed (the peer here is a script without TLS unless it asks).
const PLAINTEXT: &str = "[s2s]\nrequire_tls = false\n";

/// The header a remote server sends (RFC 6120 §4.7, XEP-0220 §2.3.1).
fn s2s_header(from: &str, to: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
         from='{from}' to='{to}' version='1.0'>"
    )
}

fn s2s_addr(server: &TestServer) -> SocketAddr {
    server
        .running()
        .s2s_addrs
        .starttls
        .expect("s2s listener bound")
}

/// Send our header; return the server's header and features.
async fn open(c: &mut RawClient, from: &str, to: &str) -> (StreamHeader, Element) {
    c.send(&s2s_header(from, to)).await;
    let deadline = Instant::now() + STEP_TIMEOUT;
    let h = match c.next_event_until(deadline).await {
        Ok(Event::Open(h)) => h,
        other => panic!("expected the server's stream header, got {other:?}"),
    };
    assert_eq!(h.default_ns.as_deref(), Some(NS_SERVER));
    assert_eq!(h.from.as_deref(), Some(to));
    assert_eq!(h.to.as_deref(), Some(from));
    assert!(h.id.as_deref().is_some_and(|i| !i.is_empty()), "stream id");
    let f = c.next_element().await;
    assert!(
        f.name() == "features" && f.ns() == NS_STREAM,
        "expected features, got {}",
        describe(&f)
    );
    (h, f)
}

/// The server's dialback secret (XEP-0185), read from its data directory.
fn server_secret(server: &TestServer) -> [u8; 32] {
    let dir = &server.running().state.config.data_dir;
    starling::keyfile::load_or_create(&dir.join("s2s-dialback.key")).expect("dialback secret")
}

fn is_db(kind: &'static str) -> impl Fn(&Element) -> bool {
    move |e| e.is(kind, NS_DB)
}

/// The stanza error condition inside a dialback error answer.
fn db_error_condition(e: &Element) -> String {
    assert_eq!(e.attr("type"), Some("error"), "{}", describe(e));
    let err = e
        .get_child("error", NS_SERVER)
        .unwrap_or_else(|| panic!("no <error/> in {}", describe(e)));
    err.children()
        .find(|c| c.ns() == NS_STANZAS)
        .map(|c| c.name().to_string())
        .unwrap_or_else(|| panic!("no condition in {}", describe(e)))
}

#[tokio::test]
async fn client_namespace_is_refused_with_invalid_namespace() {
    let server = TestServer::start_with(PLAINTEXT).await;
    let mut c = RawClient::connect(s2s_addr(&server)).await;
    c.send(&stream_header(DOMAIN)).await;
    assert_eq!(c.expect_stream_error().await, "invalid-namespace");
}

#[tokio::test]
async fn unknown_target_domain_is_host_unknown() {
    let server = TestServer::start_with(PLAINTEXT).await;
    let mut c = RawClient::connect(s2s_addr(&server)).await;
    c.send(&s2s_header("remote.test", "nowhere.test")).await;
    assert_eq!(c.expect_stream_error().await, "host-unknown");
}

/// A peer claiming to be one of our own domains, in its header or in a dialback request.
#[tokio::test]
async fn peer_claiming_a_local_domain_is_invalid_from() {
    let server = TestServer::start_with(PLAINTEXT).await;
    let mut c = RawClient::connect(s2s_addr(&server)).await;
    c.send(&s2s_header(DOMAIN, DOMAIN)).await;
    assert_eq!(c.expect_stream_error().await, "invalid-from");

    let mut c = RawClient::connect(s2s_addr(&server)).await;
    open(&mut c, "remote.test", DOMAIN).await;
    c.send(&format!(
        "<db:result from='{DOMAIN}' to='{DOMAIN}'>00</db:result>"
    ))
    .await;
    assert_eq!(c.expect_stream_error().await, "invalid-from");
}

#[tokio::test]
async fn tls_is_required_before_dialback_by_default() {
    let server = TestServer::start().await;
    let mut c = RawClient::connect(s2s_addr(&server)).await;
    let (_, f) = open(&mut c, "remote.test", DOMAIN).await;
    let tls = f
        .get_child("starttls", NS_TLS)
        .unwrap_or_else(|| panic!("no starttls: {}", describe(&f)));
    assert!(
        tls.get_child("required", NS_TLS).is_some(),
        "{}",
        describe(&f)
    );
    assert!(f.get_child("dialback", NS_DB_FEATURE).is_none());
    // XEP-0220 §2.4: policy-violation when dialback is attempted without the required TLS;
    // a dialback error, not fatal for the stream.
    c.send(&format!(
        "<db:result from='remote.test' to='{DOMAIN}'>abcd</db:result>"
    ))
    .await;
    let r = c.wait_for("db:result", is_db("result")).await;
    assert_eq!(db_error_condition(&r), "policy-violation");
    // Stanzas before any authentication end the stream.
    c.send(&format!(
        "<message from='a@remote.test' to='b@{DOMAIN}'><body>x</body></message>"
    ))
    .await;
    assert_eq!(c.expect_stream_error().await, "not-authorized");
}

#[tokio::test]
async fn starttls_then_dialback_and_bidi_are_offered() {
    let server = TestServer::start().await;
    let mut c = RawClient::connect(s2s_addr(&server)).await;
    let (h1, _) = open(&mut c, "remote.test", DOMAIN).await;
    c.starttls(server.tls_config()).await;
    let (h2, f) = open(&mut c, "remote.test", DOMAIN).await;
    assert_ne!(h1.id, h2.id, "a new stream id after the restart");
    assert!(
        f.get_child("starttls", NS_TLS).is_none(),
        "{}",
        describe(&f)
    );
    let db = f
        .get_child("dialback", NS_DB_FEATURE)
        .unwrap_or_else(|| panic!("no dialback feature: {}", describe(&f)));
    assert!(db.get_child("errors", NS_DB_FEATURE).is_some());
    assert!(f.get_child("bidi", NS_BIDI_FEATURE).is_some());
    // The test peer presents no certificate: no EXTERNAL, and asking for it fails
    // (XEP-0178 §3 step 11) without ending the stream.
    assert!(
        f.get_child("mechanisms", NS_SASL).is_none(),
        "{}",
        describe(&f)
    );
    c.send(&format!(
        "<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>=</auth>"
    ))
    .await;
    let fail = c.next_element().await;
    assert!(fail.is("failure", NS_SASL), "{}", describe(&fail));
    assert!(fail.get_child("not-authorized", NS_SASL).is_some());
    // The authoritative role still works on this stream.
    let secret = server_secret(&server);
    let key = starling::s2s::dialback::key(&secret, "remote.test", DOMAIN, "s1");
    c.send(&format!(
        "<db:verify from='remote.test' to='{DOMAIN}' id='s1'>{key}</db:verify>"
    ))
    .await;
    let v = c.wait_for("db:verify", is_db("verify")).await;
    assert_eq!(v.attr("type"), Some("valid"), "{}", describe(&v));
}

#[tokio::test]
async fn direct_tls_streams_skip_starttls() {
    let server = TestServer::start().await;
    let addr = server
        .running()
        .s2s_addrs
        .direct_tls
        .expect("direct TLS s2s listener");
    let mut c = RawClient::connect_direct_tls(addr, server.tls_config()).await;
    let (_, f) = open(&mut c, "remote.test", DOMAIN).await;
    assert!(
        f.get_child("starttls", NS_TLS).is_none(),
        "{}",
        describe(&f)
    );
    assert!(f.get_child("dialback", NS_DB_FEATURE).is_some());
}

/// XEP-0220 §2.2.2: as authoritative server, Starling confirms keys it generated (XEP-0185
/// over its own secret) and only those.
#[tokio::test]
async fn authoritative_server_answers_db_verify() {
    let server = TestServer::start_with(PLAINTEXT).await;
    let secret = server_secret(&server);
    let mut c = RawClient::connect(s2s_addr(&server)).await;
    open(&mut c, "remote.test", DOMAIN).await;

    let good = starling::s2s::dialback::key(&secret, "remote.test", DOMAIN, "D60000229F");
    c.send(&format!(
        "<db:verify from='remote.test' to='{DOMAIN}' id='D60000229F'>{good}</db:verify>"
    ))
    .await;
    let v = c.wait_for("db:verify", is_db("verify")).await;
    assert_eq!(v.attr("type"), Some("valid"), "{}", describe(&v));
    assert_eq!(v.attr("from"), Some(DOMAIN));
    assert_eq!(v.attr("to"), Some("remote.test"));
    assert_eq!(v.attr("id"), Some("D60000229F"));

    // Same key for another stream id: invalid.
    c.send(&format!(
        "<db:verify from='remote.test' to='{DOMAIN}' id='other'>{good}</db:verify>"
    ))
    .await;
    let v = c.wait_for("db:verify", is_db("verify")).await;
    assert_eq!(v.attr("type"), Some("invalid"), "{}", describe(&v));
    assert_eq!(v.attr("id"), Some("other"));

    // A domain we do not host: item-not-found, and the stream stays up.
    c.send("<db:verify from='remote.test' to='elsewhere.test' id='x'>00</db:verify>")
        .await;
    let v = c.wait_for("db:verify", is_db("verify")).await;
    assert_eq!(db_error_condition(&v), "item-not-found");
    assert_eq!(v.attr("from"), Some("elsewhere.test"));

    c.send(&format!(
        "<db:verify from='remote.test' to='{DOMAIN}' id='D60000229F'>{good}</db:verify>"
    ))
    .await;
    let v = c.wait_for("db:verify", is_db("verify")).await;
    assert_eq!(v.attr("type"), Some("valid"));
    c.close().await;
}

/// XEP-0220 §2.4: dialback errors as receiving server, none fatal for the stream.
#[tokio::test]
async fn receiving_server_reports_dialback_errors() {
    // Port 1 on loopback refuses connections: the authoritative server is unreachable.
    let server = TestServer::start_with(
        "[s2s]\nrequire_tls = false\nconnect_timeout_secs = 5\n\
         static_hosts = { \"unreachable.test\" = \"127.0.0.1:1\" }\n",
    )
    .await;
    let mut c = RawClient::connect(s2s_addr(&server)).await;
    open(&mut c, "unreachable.test", DOMAIN).await;

    c.send("<db:result from='unreachable.test' to='elsewhere.test'>00</db:result>")
        .await;
    let r = c.wait_for("db:result", is_db("result")).await;
    assert_eq!(db_error_condition(&r), "item-not-found");
    assert_eq!(r.attr("from"), Some("elsewhere.test"));
    assert_eq!(r.attr("to"), Some("unreachable.test"));

    c.send(&format!(
        "<db:result from='unreachable.test' to='{DOMAIN}'>00</db:result>"
    ))
    .await;
    let r = c.wait_for("db:result", is_db("result")).await;
    assert_eq!(db_error_condition(&r), "remote-server-not-found");
    assert_eq!(r.attr("from"), Some(DOMAIN));

    // Not authenticated: a stanza now is refused with a stream error.
    c.send(&format!(
        "<message from='a@unreachable.test' to='b@{DOMAIN}'><body>x</body></message>"
    ))
    .await;
    assert_eq!(c.expect_stream_error().await, "not-authorized");
}

#[tokio::test]
async fn bidi_request_is_accepted() {
    let server = TestServer::start_with(PLAINTEXT).await;
    let mut c = RawClient::connect(s2s_addr(&server)).await;
    let (_, f) = open(&mut c, "remote.test", DOMAIN).await;
    assert!(
        f.get_child("bidi", NS_BIDI_FEATURE).is_some(),
        "{}",
        describe(&f)
    );
    c.send("<bidi xmlns='urn:xmpp:bidi'/>").await;
    // The stream continues: a db:verify is still answered.
    let key = starling::s2s::dialback::key(&server_secret(&server), "remote.test", DOMAIN, "b");
    c.send(&format!(
        "<db:verify from='remote.test' to='{DOMAIN}' id='b'>{key}</db:verify>"
    ))
    .await;
    let v = c.wait_for("db:verify", is_db("verify")).await;
    assert_eq!(v.attr("type"), Some("valid"));
}

#[tokio::test]
async fn max_streams_refuses_with_resource_constraint() {
    let server = TestServer::start_with("[s2s]\nrequire_tls = false\nmax_streams = 1\n").await;
    let mut first = RawClient::connect(s2s_addr(&server)).await;
    open(&mut first, "remote.test", DOMAIN).await;
    let mut second = RawClient::connect(s2s_addr(&server)).await;
    assert_eq!(second.expect_stream_error().await, "resource-constraint");
    // Once the first stream ends, its slot is free again.
    first.close().await;
    let mut third = RawClient::connect(s2s_addr(&server)).await;
    let mut tries = 0;
    loop {
        third.send(&s2s_header("remote.test", DOMAIN)).await;
        match third.next_event_until(Instant::now() + STEP_TIMEOUT).await {
            Ok(Event::Open(_)) => match third.next_element().await {
                f if f.name() == "features" => break,
                e if e.is("error", NS_STREAM) && tries < 20 => {
                    // The first stream's task may still be finishing its close.
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    third = RawClient::connect(s2s_addr(&server)).await;
                }
                e => panic!("unexpected {}", describe(&e)),
            },
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn idle_streams_are_closed() {
    let server =
        TestServer::start_with("[s2s]\nrequire_tls = false\nidle_timeout_secs = 1\n").await;
    let mut c = RawClient::connect(s2s_addr(&server)).await;
    open(&mut c, "remote.test", DOMAIN).await;
    // No stream error: an idle close is a normal end (RFC 6120 §4.4).
    c.expect_closed().await;
    assert!(c.stream_closed, "closed with </stream:stream>");
    assert!(c.backlog().is_empty(), "{:?}", c.backlog());
}

/// A stream that authenticates nothing within `connect_timeout_secs` is closed, even when
/// it keeps sending (here: db:verify requests, which need no authentication).
#[tokio::test]
async fn unauthenticated_streams_do_not_stay() {
    let server =
        TestServer::start_with("[s2s]\nrequire_tls = false\nconnect_timeout_secs = 1\n").await;
    let mut c = RawClient::connect(s2s_addr(&server)).await;
    open(&mut c, "remote.test", DOMAIN).await;
    c.send(&format!(
        "<db:verify from='remote.test' to='{DOMAIN}' id='x'>00</db:verify>"
    ))
    .await;
    let v = c.wait_for("db:verify", is_db("verify")).await;
    assert_eq!(v.attr("type"), Some("invalid"));
    assert_eq!(c.expect_stream_error().await, "connection-timeout");
}

#[tokio::test]
async fn malformed_dialback_request_is_a_stream_error() {
    let server = TestServer::start_with(PLAINTEXT).await;
    let mut c = RawClient::connect(s2s_addr(&server)).await;
    open(&mut c, "remote.test", DOMAIN).await;
    c.send(&format!("<db:result to='{DOMAIN}'>00</db:result>"))
        .await;
    assert_eq!(c.expect_stream_error().await, "improper-addressing");
}

// ---------------------------------------------------------------------------------------
// Full dialback: needs the outbound side (`Outbound::verify`, s2s-out branch) and
// `federation::inbound` (routing branch). Enable after merging both.
// ---------------------------------------------------------------------------------------

/// A minimal authoritative server for `remote.test`: accepts one connection (Starling's
/// verification stream), answers its header, and confirms `db:verify` requests whose key
/// matches `secret`.
async fn fake_authoritative(listener: TcpListener, secret: &'static [u8]) {
    let (mut tcp, _) = listener.accept().await.expect("accept");
    let mut parser = StreamParser::new(Limits::default());
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let ev = loop {
            match parser.next_event().expect("Starling's output parses") {
                Some(ev) => break ev,
                None => {
                    let n = tcp.read(&mut buf).await.expect("read");
                    if n == 0 {
                        return;
                    }
                    parser.feed(&buf[..n]);
                }
            }
        };
        let reply = match ev {
            Event::Open(h) => format!(
                "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
                 xmlns:stream='http://etherx.jabber.org/streams' \
                 xmlns:db='jabber:server:dialback' from='remote.test' to='{}' id='auth1' \
                 version='1.0'><stream:features><dialback xmlns='urn:xmpp:features:dialback'>\
                 <errors/></dialback></stream:features>",
                h.from.unwrap_or_default()
            ),
            Event::Close => return,
            Event::Stanza(st) => {
                let el = st.element().expect("element");
                let (from, to) = (
                    el.attr("from").unwrap_or_default().to_string(),
                    el.attr("to").unwrap_or_default().to_string(),
                );
                if el.is("verify", NS_DB) {
                    let id = el.attr("id").unwrap_or_default();
                    let ok =
                        el.text().trim() == starling::s2s::dialback::key(secret, &from, &to, id);
                    let t = if ok { "valid" } else { "invalid" };
                    format!("<db:verify from='{to}' to='{from}' id='{id}' type='{t}'/>")
                } else if el.is("result", NS_DB) {
                    // Starling authenticating its own stream to us: accept.
                    format!("<db:result from='{to}' to='{from}' type='valid'/>")
                } else {
                    continue;
                }
            }
        };
        tcp.write_all(reply.as_bytes()).await.expect("write");
    }
}

#[tokio::test]
async fn dialback_then_stanzas_reach_a_local_user() {
    const PEER_SECRET: &[u8] = b"remote.test dialback secret";
    let auth = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let auth_addr = auth.local_addr().expect("addr");
    tokio::spawn(fake_authoritative(auth, PEER_SECRET));
    let server = TestServer::start_with(&format!(
        "[s2s]\nrequire_tls = false\nstatic_hosts = {{ \"remote.test\" = \"{auth_addr}\" }}\n"
    ))
    .await;
    server.add_user("romeo", PASSWORD).await;
    let mut romeo = server.login("romeo", PASSWORD, "r").await;
    romeo.available().await;

    let mut c = RawClient::connect(s2s_addr(&server)).await;
    let (h, _) = open(&mut c, "remote.test", DOMAIN).await;
    let id = h.id.expect("stream id");
    let key = starling::s2s::dialback::key(PEER_SECRET, DOMAIN, "remote.test", &id);
    c.send(&format!(
        "<db:result from='remote.test' to='{DOMAIN}'>{key}</db:result>"
    ))
    .await;
    let r = c.wait_for("db:result", is_db("result")).await;
    assert_eq!(r.attr("type"), Some("valid"), "{}", describe(&r));

    c.send(&format!(
        "<message from='juliet@remote.test/balcony' to='romeo@{DOMAIN}' type='chat' id='m1'>\
         <body>wherefore</body></message>"
    ))
    .await;
    let m = romeo.wait_for("message from remote.test", is_message).await;
    assert_eq!(m.attr("from"), Some("juliet@remote.test/balcony"));
    assert_eq!(body(&m).as_deref(), Some("wherefore"));

    // A pair that was not authenticated on this stream: invalid-from.
    c.send(&format!(
        "<message from='iago@spoof.test' to='romeo@{DOMAIN}'><body>x</body></message>"
    ))
    .await;
    assert_eq!(c.expect_stream_error().await, "invalid-from");
}

/// XEP-0220 §2.4 resource-constraint: one stream may not make us run more than
/// `s2s.max_domain_pairs` verifications at once.
#[tokio::test]
async fn domain_pairs_per_stream_are_bounded() {
    // An "authoritative server" that accepts and never answers: verifications stay pending.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let server = TestServer::start_with(&format!(
        "[s2s]\nrequire_tls = false\nmax_domain_pairs = 1\nconnect_timeout_secs = 30\n\
         static_hosts = {{ \"a.test\" = \"{silent_addr}\", \"b.test\" = \"{silent_addr}\" }}\n"
    ))
    .await;
    let mut c = RawClient::connect(s2s_addr(&server)).await;
    open(&mut c, "a.test", DOMAIN).await;
    c.send(&format!(
        "<db:result from='a.test' to='{DOMAIN}'>00</db:result>"
    ))
    .await;
    c.send(&format!(
        "<db:result from='b.test' to='{DOMAIN}'>00</db:result>"
    ))
    .await;
    let r = c.wait_for("db:result", is_db("result")).await;
    assert_eq!(r.attr("to"), Some("b.test"), "{}", describe(&r));
    assert_eq!(db_error_condition(&r), "resource-constraint");
}
