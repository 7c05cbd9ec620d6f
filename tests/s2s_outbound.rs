//! Outbound federation against a scripted remote server: the test plays `remote.test`
//! (accepts the TCP connection, negotiates TLS, checks the dialback key or SASL EXTERNAL)
//! and checks the stanza Starling sends to one of its users.

mod common;

use bytes::Bytes;
use common::*;
use minidom::Element;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use starling::s2s::certs::S2sTls;
use starling::xml::{Event, Limits, StreamHeader, StreamParser};

const REMOTE: &str = "remote.test";
const NS_SERVER: &str = "jabber:server";
const NS_DB: &str = "jabber:server:dialback";

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The scripted remote server's side of one connection.
struct Peer {
    io: Box<dyn Io>,
    parser: StreamParser,
    /// The certificate chain Starling presented as TLS client.
    client_chain: Vec<CertificateDer<'static>>,
    alpn: Option<Vec<u8>>,
}

impl Peer {
    async fn accept(listener: &TcpListener) -> Peer {
        let (tcp, _) = tokio::time::timeout(STEP_TIMEOUT, listener.accept())
            .await
            .expect("Starling connects to the peer")
            .expect("accept");
        Peer {
            io: Box::new(tcp),
            parser: StreamParser::new(Limits::default()),
            client_chain: Vec::new(),
            alpn: None,
        }
    }

    /// TLS as server (after `<proceed/>`, or at once for direct TLS).
    async fn tls(self, tls: &S2sTls) -> Peer {
        let stream = tokio::time::timeout(STEP_TIMEOUT, tls.acceptor().accept(self.io))
            .await
            .expect("TLS handshake in time")
            .expect("TLS handshake");
        let conn = stream.get_ref().1;
        let client_chain = conn.peer_certificates().unwrap_or_default().to_vec();
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        Peer {
            io: Box::new(stream),
            parser: StreamParser::new(Limits::default()),
            client_chain,
            alpn,
        }
    }

    async fn send(&mut self, data: &str) {
        self.io.write_all(data.as_bytes()).await.expect("write");
        self.io.flush().await.expect("flush");
    }

    /// The next event; None when Starling closed the connection.
    async fn try_event(&mut self) -> Option<Event> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if let Some(ev) = self.parser.next_event().expect("well-formed s2s stream") {
                return Some(ev);
            }
            let n = tokio::time::timeout(STEP_TIMEOUT, self.io.read(&mut buf))
                .await
                .expect("Starling writes in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.parser.feed(&buf[..n]);
        }
    }

    async fn event(&mut self) -> Event {
        self.try_event()
            .await
            .expect("Starling closed the connection")
    }

    /// Read Starling's header (a fresh stream) and answer with ours and `features`.
    async fn open(&mut self, id: &str, features: &str) -> StreamHeader {
        self.parser.reset();
        let Event::Open(h) = self.event().await else {
            panic!("expected a stream header");
        };
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
             xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
             from='{REMOTE}' to='localhost' id='{id}' version='1.0'>\
             <stream:features>{features}</stream:features>"
        ))
        .await;
        h
    }

    async fn element(&mut self) -> Element {
        match self.event().await {
            Event::Stanza(st) => st.element().expect("element"),
            other => panic!("expected an element, got {other:?}"),
        }
    }
}

/// A TLS identity for `remote.test` (self-signed: Starling must federate with it anyway,
/// `require_valid_certificates` being off by default).
fn peer_tls() -> S2sTls {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![REMOTE.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    S2sTls::build(
        vec![cert.der().clone()],
        &der,
        rustls::RootCertStore::empty(),
    )
    .unwrap()
}

async fn server_for(static_target: &str, extra: &str) -> TestServer {
    TestServer::start_with(&format!(
        "[s2s]\nstatic_hosts = {{ \"{REMOTE}\" = \"{static_target}\" }}\n{extra}"
    ))
    .await
}

fn message(id: &str, body: &str) -> Bytes {
    Bytes::from(format!(
        "<message xmlns='jabber:client' from='alice@localhost/phone' to='bob@{REMOTE}' \
         id='{id}' type='chat'><body>{body}</body></message>"
    ))
}

fn send_remote(
    server: &TestServer,
    stanza: Bytes,
) -> Result<(), starling::federation::RemoteError> {
    let from = "alice@localhost/phone".parse().unwrap();
    let to = format!("bob@{REMOTE}").parse().unwrap();
    server.running().state.send_remote(&from, &to, stanza)
}

fn assert_message(el: &Element, id: &str, body: &str) {
    assert_eq!((el.name(), el.ns().as_str()), ("message", NS_SERVER));
    assert_eq!(el.attr("id"), Some(id));
    assert_eq!(el.attr("from"), Some("alice@localhost/phone"));
    assert_eq!(el.attr("to"), Some(format!("bob@{REMOTE}").as_str()));
    assert_eq!(
        el.get_child("body", NS_SERVER).map(|b| b.text()),
        Some(body.into())
    );
}

/// STARTTLS, then XEP-0220 dialback with the XEP-0185 key; the queued message and a later
/// one arrive on the same stream, in the jabber:server namespace.
#[tokio::test]
async fn dialback_over_starttls_delivers_queued_stanzas() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = server_for(&format!("127.0.0.1:{port}"), "").await;
    send_remote(&server, message("m1", "queued")).unwrap();

    let mut peer = Peer::accept(&listener).await;
    let tls = peer_tls();
    let h = peer
        .open(
            "plain-1",
            "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>",
        )
        .await;
    assert_eq!(h.default_ns.as_deref(), Some(NS_SERVER));
    assert_eq!(
        (h.from.as_deref(), h.to.as_deref()),
        (Some("localhost"), Some(REMOTE))
    );
    let starttls = peer.element().await;
    assert_eq!(starttls.name(), "starttls");
    peer.send("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    let mut peer = peer.tls(&tls).await;
    assert_eq!(
        peer.client_chain.first(),
        Some(&server.cert()),
        "our certificate as client cert"
    );

    peer.open("tls-1", "<dialback xmlns='urn:xmpp:features:dialback'/>")
        .await;
    let result = peer.element().await;
    assert_eq!((result.name(), result.ns().as_str()), ("result", NS_DB));
    assert_eq!(result.attr("from"), Some("localhost"));
    assert_eq!(result.attr("to"), Some(REMOTE));
    let secret = std::fs::read(
        server
            .running()
            .state
            .config
            .data_dir
            .join("s2s-dialback.key"),
    )
    .expect("dialback secret in the data dir");
    let expected = starling::s2s::dialback::key(&secret, REMOTE, "localhost", "tls-1");
    assert_eq!(result.text(), expected, "XEP-0185 key for this stream id");
    peer.send(&format!(
        "<db:result from='{REMOTE}' to='localhost' type='valid'/>"
    ))
    .await;

    assert_message(&peer.element().await, "m1", "queued");
    send_remote(&server, message("m2", "later")).unwrap();
    assert_message(&peer.element().await, "m2", "later");
}

/// XEP-0368 direct TLS (ALPN xmpp-server) and XEP-0178 SASL EXTERNAL with an empty
/// authorization identity, then the restarted stream carries the message.
#[tokio::test]
async fn direct_tls_and_sasl_external() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = server_for(&format!("tls://127.0.0.1:{port}"), "").await;
    send_remote(&server, message("e1", "external")).unwrap();

    let tls = peer_tls();
    let mut peer = Peer::accept(&listener).await.tls(&tls).await;
    assert_eq!(peer.alpn.as_deref(), Some(&b"xmpp-server"[..]));
    assert_eq!(peer.client_chain.first(), Some(&server.cert()));
    peer.open(
        "ext-1",
        "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism>\
         </mechanisms><dialback xmlns='urn:xmpp:features:dialback'/>",
    )
    .await;
    let auth = peer.element().await;
    assert_eq!(auth.name(), "auth");
    assert_eq!(auth.attr("mechanism"), Some("EXTERNAL"));
    assert_eq!(auth.text(), "=");
    peer.send("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        .await;
    let h = peer.open("ext-2", "").await;
    assert_eq!(h.from.as_deref(), Some("localhost"));
    assert_message(&peer.element().await, "e1", "external");
}

/// While the stream is being set up, at most `s2s.max_queue` stanzas wait; more are refused
/// (the core bounces them with resource-constraint).
#[tokio::test]
async fn queue_is_bounded_while_connecting() {
    // Accepts (kernel backlog) but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = server_for(&format!("127.0.0.1:{port}"), "max_queue = 2\n").await;
    send_remote(&server, message("q1", "1")).unwrap();
    send_remote(&server, message("q2", "2")).unwrap();
    assert_eq!(
        send_remote(&server, message("q3", "3")),
        Err(starling::federation::RemoteError::QueueFull)
    );
    drop(listener);
}

/// A stream the peer refuses (db:result type='invalid') is not used: nothing is sent, and
/// the next stanza opens a new connection.
#[tokio::test]
async fn invalid_dialback_is_not_used() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = server_for(&format!("tls://127.0.0.1:{port}"), "").await;
    let tls = Arc::new(peer_tls());
    send_remote(&server, message("i1", "refused")).unwrap();
    let mut peer = Peer::accept(&listener).await.tls(&tls).await;
    peer.open("inv-1", "<dialback xmlns='urn:xmpp:features:dialback'/>")
        .await;
    assert_eq!(peer.element().await.name(), "result");
    peer.send(&format!(
        "<db:result from='{REMOTE}' to='localhost' type='invalid'/>"
    ))
    .await;
    // Starling closes its stream instead of sending the message.
    match peer.try_event().await {
        Some(Event::Close) | None => {}
        Some(other) => panic!("expected the stream to close, got {other:?}"),
    }
    send_remote(&server, message("i2", "again")).unwrap();
    let mut peer = Peer::accept(&listener).await.tls(&tls).await;
    peer.open("inv-2", "<dialback xmlns='urn:xmpp:features:dialback'/>")
        .await;
    assert_eq!(peer.element().await.name(), "result");
    peer.send(&format!(
        "<db:result from='{REMOTE}' to='localhost' type='valid'/>"
    ))
    .await;
    assert_message(&peer.element().await, "i2", "again");
}

/// A message a local user sends to a domain that cannot be reached comes back to the
/// sender as an error from the recipient's JID, with the body echoed (RFC 6120 §8.3.3).
async fn bounced(server: &TestServer, expected: &str) {
    server.add_user("alice", PASSWORD).await;
    let mut alice = server.login("alice", PASSWORD, "phone").await;
    alice
        .send(&format!(
            "<message to='bob@{REMOTE}' id='b1' type='chat'><body>anyone?</body></message>"
        ))
        .await;
    let err = alice.wait_for("the bounce", is_message).await;
    assert_eq!(err.attr("from"), Some(format!("bob@{REMOTE}").as_str()));
    assert_eq!(err.attr("id"), Some("b1"));
    assert_eq!(stanza_error_condition(&err), expected);
    assert_eq!(body(&err).as_deref(), Some("anyone?"));
}

#[tokio::test]
async fn refused_connection_bounces_remote_server_not_found() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let server = server_for(&format!("127.0.0.1:{port}"), "").await;
    bounced(&server, "remote-server-not-found").await;
}

#[tokio::test]
async fn silent_peer_bounces_remote_server_timeout() {
    // Accepts (kernel backlog) and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let server = server_for(&format!("127.0.0.1:{port}"), "connect_timeout_secs = 1\n").await;
    bounced(&server, "remote-server-timeout").await;
    drop(silent);
}

/// Dialback on a direct TLS stream to the scripted peer, with `features` offered after TLS.
async fn authenticated_peer(
    listener: &TcpListener,
    tls: &S2sTls,
    id: &str,
    features: &str,
) -> Peer {
    let mut peer = Peer::accept(listener).await.tls(tls).await;
    peer.open(id, features).await;
    let mut first = peer.element().await;
    if first.name() == "bidi" {
        first = peer.element().await;
    }
    assert_eq!((first.name(), first.ns().as_str()), ("result", NS_DB));
    peer.send(&format!(
        "<db:result from='{REMOTE}' to='localhost' type='valid'/>"
    ))
    .await;
    peer
}

/// XEP-0288: offered bidi is requested before dialback; the peer's stanzas on our stream
/// then go through the inbound checks: a 'from' of another domain is a stream error.
#[tokio::test]
async fn bidi_is_requested_and_peer_stanzas_are_checked() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = server_for(&format!("tls://127.0.0.1:{port}"), "").await;
    let tls = peer_tls();
    send_remote(&server, message("b1", "bidi")).unwrap();
    let mut peer = Peer::accept(&listener).await.tls(&tls).await;
    peer.open(
        "bidi-1",
        "<dialback xmlns='urn:xmpp:features:dialback'/><bidi xmlns='urn:xmpp:features:bidi'/>",
    )
    .await;
    let bidi = peer.element().await;
    assert_eq!((bidi.name(), bidi.ns().as_str()), ("bidi", "urn:xmpp:bidi"));
    assert_eq!(peer.element().await.name(), "result");
    peer.send(&format!(
        "<db:result from='{REMOTE}' to='localhost' type='valid'/>"
    ))
    .await;
    assert_message(&peer.element().await, "b1", "bidi");
    // Piggybacking another domain of the peer is refused with a dialback error.
    peer.send(&format!(
        "<db:result from='conference.{REMOTE}' to='localhost'>00</db:result>"
    ))
    .await;
    let refused = peer.element().await;
    assert_eq!((refused.name(), refused.ns().as_str()), ("result", NS_DB));
    assert_eq!(refused.attr("type"), Some("error"));
    assert_eq!(
        refused.attr("to"),
        Some(format!("conference.{REMOTE}").as_str())
    );
    // Authenticated direction (remote.test → localhost): accepted without complaint.
    peer.send(&format!(
        "<message from='bob@{REMOTE}/x' to='alice@localhost' id='r1'><body>back</body></message>"
    ))
    .await;
    // Not authenticated on this stream: refused with the RFC 6120 stream error.
    peer.send("<message from='mallory@other.test' to='alice@localhost' id='r2'/>")
        .await;
    // (Replies to r1, e.g. an error for a user who does not exist, may come first.)
    let err = loop {
        let el = peer.element().await;
        if el.name() != "message" {
            break el;
        }
    };
    assert_eq!(stream_error_condition(&err), "invalid-from");
}

/// After `s2s.idle_timeout_secs` without traffic the stream is closed; the next stanza
/// opens a new one.
#[tokio::test]
async fn idle_stream_is_closed_and_reopened_on_demand() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = server_for(
        &format!("tls://127.0.0.1:{port}"),
        "idle_timeout_secs = 1\n",
    )
    .await;
    let tls = peer_tls();
    send_remote(&server, message("d1", "first")).unwrap();
    let dialback = "<dialback xmlns='urn:xmpp:features:dialback'/>";
    let mut peer = authenticated_peer(&listener, &tls, "idle-1", dialback).await;
    assert_message(&peer.element().await, "d1", "first");
    match peer.try_event().await {
        Some(Event::Close) | None => {}
        Some(other) => panic!("expected the idle stream to close, got {other:?}"),
    }
    send_remote(&server, message("d2", "second")).unwrap();
    let mut peer = authenticated_peer(&listener, &tls, "idle-2", dialback).await;
    assert_message(&peer.element().await, "d2", "second");
}

/// With `s2s.require_valid_certificates`, a peer whose certificate does not chain to a
/// trusted root gets no authentication attempt and no stanza: a `policy-violation` stream
/// error, then the end of the stream.
#[tokio::test]
async fn untrusted_peer_certificate_is_refused_when_required() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = server_for(
        &format!("tls://127.0.0.1:{port}"),
        "require_valid_certificates = true\nuse_system_roots = false\n",
    )
    .await;
    let tls = peer_tls();
    send_remote(&server, message("c1", "secret")).unwrap();
    let mut peer = Peer::accept(&listener).await.tls(&tls).await;
    peer.open("cert-1", "<dialback xmlns='urn:xmpp:features:dialback'/>")
        .await;
    match peer.try_event().await {
        Some(Event::Stanza(st)) if st.name == "error" => {
            let raw = String::from_utf8_lossy(st.raw()).into_owned();
            assert!(raw.contains("<policy-violation"), "{raw}");
        }
        other => panic!("expected a policy-violation stream error, got {other:?}"),
    }
    match peer.try_event().await {
        Some(Event::Close) | None => {}
        Some(other) => panic!("expected the stream to end unauthenticated, got {other:?}"),
    }
}

/// XEP-0220 §2.1.2 as receiving server: a server dialing Starling with `db:result` is
/// checked by a `db:verify` over Starling's outbound stream to the authoritative server
/// (played here too), whose answer is matched by stream id.
#[tokio::test]
async fn db_verify_goes_to_the_authoritative_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = server_for(&format!("tls://127.0.0.1:{port}"), "").await;
    let tls = peer_tls();
    let inbound_addr = server
        .running()
        .s2s_addrs
        .direct_tls
        .expect("s2s direct TLS");

    // The originating server's stream to Starling.
    let tcp = tokio::net::TcpStream::connect(inbound_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tls.connector().unwrap().connect(name, tcp).await.unwrap();
    let mut origin = Peer {
        io: Box::new(stream),
        parser: StreamParser::new(Limits::default()),
        client_chain: Vec::new(),
        alpn: None,
    };
    origin
        .send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
             xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
             from='{REMOTE}' to='localhost' version='1.0'>"
        ))
        .await;
    let Event::Open(h) = origin.event().await else {
        panic!("expected Starling's stream header");
    };
    let stream_id = h.id.expect("stream id");
    let features = origin.element().await;
    assert_eq!(features.name(), "features");
    origin
        .send(&format!(
            "<db:result from='{REMOTE}' to='localhost'>c0ffee</db:result>"
        ))
        .await;

    // Starling asks the authoritative server (us again) over its own outbound stream.
    let mut auth = Peer::accept(&listener).await.tls(&tls).await;
    auth.open("auth-1", "<dialback xmlns='urn:xmpp:features:dialback'/>")
        .await;
    let verify = loop {
        let el = auth.element().await;
        if el.name() == "verify" {
            break el;
        }
    };
    assert_eq!(verify.ns(), NS_DB);
    assert_eq!(verify.attr("from"), Some("localhost"));
    assert_eq!(verify.attr("to"), Some(REMOTE));
    assert_eq!(verify.attr("id"), Some(stream_id.as_str()));
    assert_eq!(verify.text(), "c0ffee");
    // An answer for another stream id must not decide this one.
    auth.send(&format!(
        "<db:verify from='{REMOTE}' to='localhost' id='other-stream' type='invalid'/>\
         <db:verify from='{REMOTE}' to='localhost' id='{stream_id}' type='valid'/>"
    ))
    .await;

    let result = loop {
        let el = origin.element().await;
        if el.name() == "result" {
            break el;
        }
    };
    assert_eq!(result.attr("type"), Some("valid"), "{result:?}");
    assert_eq!(result.attr("from"), Some("localhost"));
    assert_eq!(result.attr("to"), Some(REMOTE));
}
