//! Test harness shared by the integration tests: an in-process Starling on port 0 with its
//! own temporary data directory, a raw-XML client (plain TCP, STARTTLS, direct TLS, SASL
//! PLAIN / SCRAM / SCRAM-PLUS, resource binding) and helpers for tokio-xmpp clients.
//!
//! Every test starts its own server, so tests in different files (which run in parallel)
//! never share ports, databases or certificates.
#![allow(dead_code)]

use base64::Engine;
use minidom::Element;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use starling::sasl::client::{ClientBinding, ScramClient};
use starling::sasl::HashAlg;
use starling::server::RunningServer;
use starling::xml::{Event, Limits, StreamParser};

pub use futures::StreamExt;

pub const DOMAIN: &str = "localhost";
pub const PASSWORD: &str = "correct horse battery staple";

pub const NS_CLIENT: &str = "jabber:client";
pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";
pub const NS_STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_SASL_CB: &str = "urn:xmpp:sasl-cb:0";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_ROSTER: &str = "jabber:iq:roster";
pub const NS_DELAY: &str = "urn:xmpp:delay";

/// How long any single expected reply may take before the test fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The stream header a client sends (RFC 6120 §4.7).
pub fn stream_header(to: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{to}' version='1.0' xml:lang='en'>"
    )
}

fn init_tracing() {
    // RUST_LOG=starling=debug cargo test ... shows the server's log for a failing test.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

// ---------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------

pub struct TestServer {
    /// None once shut down.
    running: Option<RunningServer>,
    c2s: SocketAddr,
    direct_tls: SocketAddr,
    leaf: rustls::pki_types::CertificateDer<'static>,
    /// The served domain ([`DOMAIN`] unless started with [`TestServer::start_domain`]).
    domain: String,
    // Dropped last: the database and certificate live here.
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Default configuration: TLS required, in-band registration open.
    pub async fn start() -> TestServer {
        Self::start_with("").await
    }

    /// Plaintext allowed (`[c2s] require_tls = false`), for tokio-xmpp and raw-socket tests.
    pub async fn start_plaintext() -> TestServer {
        Self::start_with("[c2s]\nrequire_tls = false\n").await
    }

    /// `extra` is appended to the base TOML; it may add any section except `[listen]` and
    /// `[registration]`.
    pub async fn start_with(extra: &str) -> TestServer {
        Self::start_domain(DOMAIN, extra).await
    }

    /// [`TestServer::start_with`] serving `domain` instead of [`DOMAIN`] (two servers of
    /// different domains in one test: federation).
    pub async fn start_domain(domain: &str, extra: &str) -> TestServer {
        init_tracing();
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = format!(
            "domain = \"{domain}\"\ndata_dir = \"{}\"\n\
             [listen]\nc2s = \"127.0.0.1:0\"\nc2s_direct_tls = \"127.0.0.1:0\"\n\
             http = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n\
             s2s = \"127.0.0.1:0\"\ns2s_direct_tls = \"127.0.0.1:0\"\ncomponent = \"\"\n\
             [registration]\nopen = true\n{extra}",
            dir.path().display()
        );
        let config = starling::config::Config::from_parts(&toml, std::iter::empty())
            .expect("test configuration is valid");
        let running = starling::server::start(config)
            .await
            .expect("server starts");
        let c2s = running.c2s_addr.expect("c2s listener bound");
        let direct_tls = running
            .c2s_direct_tls_addr
            .expect("direct TLS listener bound");
        assert!(c2s.ip().is_loopback() && direct_tls.ip().is_loopback());
        let leaf = running.state.tls.leaf.clone();
        TestServer {
            running: Some(running),
            c2s,
            direct_tls,
            leaf,
            domain: domain.to_string(),
            _dir: dir,
        }
    }

    pub fn running(&self) -> &RunningServer {
        self.running.as_ref().expect("server is running")
    }

    /// The STARTTLS (RFC 6120) port.
    pub fn addr(&self) -> SocketAddr {
        self.c2s
    }

    /// The XEP-0368 direct TLS port.
    pub fn tls_addr(&self) -> SocketAddr {
        self.direct_tls
    }

    /// The server's (self-signed) leaf certificate.
    pub fn cert(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.leaf.clone()
    }

    /// A rustls client configuration trusting only this server's certificate.
    pub fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert())
            .expect("server certificate is a usable trust anchor");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(cfg)
    }

    /// Create an account directly in storage.
    pub async fn add_user(&self, name: &str, password: &str) {
        let creds = starling::sasl::new_credentials(password, 4096).expect("credentials");
        self.running()
            .state
            .storage
            .accounts()
            .create((self.domain.as_str(), name), &creds)
            .await
            .expect("account created");
    }

    /// Stop the server the way SIGTERM does.
    pub async fn shutdown(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// Log in with the raw client over STARTTLS + SCRAM-SHA-256 and bind `resource`.
    pub async fn login(&self, user: &str, password: &str, resource: &str) -> RawClient {
        RawClient::login(self, user, password, Some(resource)).await
    }
}

// ---------------------------------------------------------------------------------------
// Raw XML client
// ---------------------------------------------------------------------------------------

type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

enum Io {
    Plain(TcpStream),
    Tls(Box<ClientTls>),
    /// Read half only (after [`RawClient::split`]).
    ReadOnly(Box<dyn AsyncRead + Send + Unpin>),
    Gone,
}

/// Why reading did not produce what was expected.
#[derive(Debug)]
pub enum ReadError {
    Timeout,
    /// The connection was closed (EOF, reset, TLS close) with nothing (more) to parse.
    Closed,
    /// The server's output could not be parsed.
    Parse(String),
}

/// A client speaking raw XML, parsing the server's output with Starling's own framer.
pub struct RawClient {
    io: Io,
    parser: StreamParser,
    /// Elements read while looking for something else.
    backlog: VecDeque<Element>,
    /// The server's `</stream:stream>` was seen.
    pub stream_closed: bool,
    eof: bool,
    /// Our full JID once bound.
    pub jid: Option<String>,
    next_id: u64,
}

fn client_limits() -> Limits {
    Limits {
        max_stanza_size: 64 * 1024 * 1024,
        max_depth: 1024,
        max_attributes: 1024,
        max_attribute_len: 1024 * 1024,
    }
}

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn unb64(text: &str) -> Vec<u8> {
    let t = text.trim();
    if t.is_empty() || t == "=" {
        return Vec::new();
    }
    base64::engine::general_purpose::STANDARD
        .decode(t)
        .unwrap_or_else(|e| panic!("server sent invalid base64 {t:?}: {e}"))
}

/// `<name xmlns='ns'/>` style description for messages.
pub fn describe(el: &Element) -> String {
    String::from_utf8_lossy(&starling::xml::to_bytes(el)).into_owned()
}

/// The single defined condition of a stream error (`<stream:error>`), checking its namespace.
pub fn stream_error_condition(el: &Element) -> String {
    assert!(
        el.name() == "error" && el.ns() == NS_STREAM,
        "not a stream error: {}",
        describe(el)
    );
    let conds: Vec<&Element> = el.children().filter(|c| c.name() != "text").collect();
    assert_eq!(
        conds.len(),
        1,
        "exactly one condition expected in {}",
        describe(el)
    );
    assert_eq!(
        conds[0].ns(),
        NS_STREAMS,
        "condition in the wrong namespace: {}",
        describe(el)
    );
    conds[0].name().to_string()
}

/// The defined condition of a stanza error (`<error type='...'><cond xmlns=stanzas/>`).
pub fn stanza_error_condition(st: &Element) -> String {
    assert_eq!(
        st.attr("type"),
        Some("error"),
        "not an error stanza: {}",
        describe(st)
    );
    let err = st
        .get_child("error", NS_CLIENT)
        .unwrap_or_else(|| panic!("no <error/> child in {}", describe(st)));
    let cond = err
        .children()
        .find(|c| c.ns() == NS_STANZAS && c.name() != "text")
        .unwrap_or_else(|| panic!("no defined condition in {}", describe(st)));
    cond.name().to_string()
}

impl RawClient {
    fn new(io: Io) -> RawClient {
        RawClient {
            io,
            parser: StreamParser::new(client_limits()),
            backlog: VecDeque::new(),
            stream_closed: false,
            eof: false,
            jid: None,
            next_id: 0,
        }
    }

    /// Plain TCP to the STARTTLS port.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let tcp = TcpStream::connect(addr).await.expect("TCP connect");
        tcp.set_nodelay(true).ok();
        RawClient::new(Io::Plain(tcp))
    }

    /// TLS from the first byte (XEP-0368).
    pub async fn connect_direct_tls(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> RawClient {
        let tcp = TcpStream::connect(addr).await.expect("TCP connect");
        tcp.set_nodelay(true).ok();
        let name = rustls::pki_types::ServerName::try_from(DOMAIN).unwrap();
        let tls = tokio::time::timeout(
            STEP_TIMEOUT,
            tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
        )
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake with the direct TLS port");
        RawClient::new(Io::Tls(Box::new(tls)))
    }

    pub fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        format!("t{}", self.next_id)
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.io, Io::Tls(_))
    }

    /// The negotiated TLS version, if any.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        match &self.io {
            Io::Tls(s) => s.get_ref().1.protocol_version(),
            _ => None,
        }
    }

    /// RFC 9266 tls-exporter channel-binding data of this connection.
    pub fn tls_exporter(&self) -> Vec<u8> {
        match &self.io {
            Io::Tls(s) => s
                .get_ref()
                .1
                .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
                .expect("keying material export"),
            _ => panic!("no TLS"),
        }
    }

    /// Write bytes; panics on failure.
    pub async fn send_bytes(&mut self, data: &[u8]) {
        self.try_send_bytes(data).await.expect("write to server");
    }

    pub async fn send(&mut self, data: &str) {
        self.send_bytes(data.as_bytes()).await
    }

    /// Write bytes, reporting failure (the server may legitimately have closed).
    pub async fn try_send_bytes(&mut self, data: &[u8]) -> io::Result<()> {
        let fut = async {
            match &mut self.io {
                Io::Plain(s) => {
                    s.write_all(data).await?;
                    s.flush().await
                }
                Io::Tls(s) => {
                    s.write_all(data).await?;
                    s.flush().await
                }
                _ => Err(io::Error::new(io::ErrorKind::NotConnected, "no writer")),
            }
        };
        match tokio::time::timeout(STEP_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
        }
    }

    async fn read_more(&mut self, deadline: Instant) -> Result<(), ReadError> {
        if self.eof {
            return Err(ReadError::Closed);
        }
        let mut buf = vec![0u8; 16 * 1024];
        let read = async {
            match &mut self.io {
                Io::Plain(s) => s.read(&mut buf).await,
                Io::Tls(s) => s.read(&mut buf).await,
                Io::ReadOnly(s) => s.read(&mut buf).await,
                Io::Gone => Ok(0),
            }
        };
        let n = match tokio::time::timeout_at(deadline, read).await {
            Err(_) => return Err(ReadError::Timeout),
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                return Err(ReadError::Closed);
            }
            Ok(Ok(n)) => n,
        };
        self.parser.feed(&buf[..n]);
        Ok(())
    }

    /// Next framing event from the server (header, element or stream close).
    pub async fn next_event_until(&mut self, deadline: Instant) -> Result<Event, ReadError> {
        loop {
            match self.parser.next_event() {
                Ok(Some(Event::Close)) => {
                    self.stream_closed = true;
                    return Ok(Event::Close);
                }
                Ok(Some(ev)) => return Ok(ev),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Parse(e.to_string())),
            }
            if self.stream_closed {
                // Nothing can follow </stream:stream> but the connection close.
                return match self.read_more(deadline).await {
                    Err(e) => Err(e),
                    Ok(()) => Err(ReadError::Parse("data after </stream:stream>".into())),
                };
            }
            self.read_more(deadline).await?;
        }
    }

    /// Next top-level element (headers are skipped), within `timeout`.
    pub async fn try_next_element(&mut self, timeout: Duration) -> Result<Element, ReadError> {
        if let Some(el) = self.backlog.pop_front() {
            return Ok(el);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_event_until(deadline).await? {
                Event::Open(_) => continue,
                Event::Close => return Err(ReadError::Closed),
                Event::Stanza(st) => {
                    return st.element().map_err(|e| ReadError::Parse(e.to_string()));
                }
            }
        }
    }

    pub async fn next_element(&mut self) -> Element {
        match self.try_next_element(STEP_TIMEOUT).await {
            Ok(el) => el,
            Err(e) => panic!("expected an element from the server, got {e:?}"),
        }
    }

    /// Wait for an element matching `pred`; others are kept for later calls.
    pub async fn try_wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Element) -> bool,
    ) -> Result<Element, ReadError> {
        if let Some(pos) = self.backlog.iter().position(&pred) {
            return Ok(self.backlog.remove(pos).unwrap());
        }
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        let result = loop {
            match self.next_event_until(deadline).await {
                Ok(Event::Open(_)) => continue,
                Ok(Event::Close) => break Err(ReadError::Closed),
                Ok(Event::Stanza(st)) => match st.element() {
                    Ok(el) if pred(&el) => break Ok(el),
                    Ok(el) => skipped.push(el),
                    Err(e) => break Err(ReadError::Parse(e.to_string())),
                },
                Err(e) => break Err(e),
            }
        };
        self.backlog.extend(skipped);
        result
    }

    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
        match self.try_wait_for(STEP_TIMEOUT, pred).await {
            Ok(el) => el,
            Err(e) => panic!(
                "{}: waiting for {what}: {e:?}; other elements received: [{}]",
                self.jid.as_deref().unwrap_or("client"),
                self.backlog
                    .iter()
                    .map(describe)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Assert that nothing matching `pred` arrives within `dur`.
    pub async fn expect_none(
        &mut self,
        dur: Duration,
        what: &str,
        pred: impl Fn(&Element) -> bool,
    ) {
        match self.try_wait_for(dur, pred).await {
            Ok(el) => panic!("unexpected {what}: {}", describe(&el)),
            Err(ReadError::Timeout) => {}
            Err(e) => panic!("connection failed while checking for absence of {what}: {e:?}"),
        }
    }

    /// Elements received but not consumed yet.
    pub fn backlog(&self) -> &VecDeque<Element> {
        &self.backlog
    }

    pub fn clear_backlog(&mut self) {
        self.backlog.clear();
    }

    /// Send a stream header and return the server's `<stream:features/>`.
    pub async fn open(&mut self) -> Element {
        self.send(&stream_header(DOMAIN)).await;
        let deadline = Instant::now() + STEP_TIMEOUT;
        match self.next_event_until(deadline).await {
            Ok(Event::Open(h)) => {
                assert_eq!(h.stream_ns.as_deref(), Some(NS_STREAM));
                assert_eq!(h.default_ns.as_deref(), Some(NS_CLIENT));
                assert_eq!(h.from.as_deref(), Some(DOMAIN), "server header 'from'");
                assert_eq!(h.version.as_deref(), Some("1.0"));
                assert!(h.id.as_deref().is_some_and(|i| !i.is_empty()), "stream id");
            }
            other => panic!("expected the server's stream header, got {other:?}"),
        }
        let f = self.next_element().await;
        assert!(
            f.name() == "features" && f.ns() == NS_STREAM,
            "expected <stream:features/>, got {}",
            describe(&f)
        );
        f
    }

    /// `<starttls/>`, `<proceed/>`, TLS handshake; the caller reopens the stream.
    pub async fn starttls(&mut self, cfg: Arc<rustls::ClientConfig>) {
        self.send(&format!("<starttls xmlns='{NS_TLS}'/>")).await;
        let p = self.next_element().await;
        assert!(
            p.is("proceed", NS_TLS),
            "expected <proceed/>, got {}",
            describe(&p)
        );
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::Gone) else {
            panic!("STARTTLS on a non-plain connection");
        };
        let name = rustls::pki_types::ServerName::try_from(DOMAIN).unwrap();
        let tls = tokio::time::timeout(
            STEP_TIMEOUT,
            tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
        )
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake after STARTTLS");
        self.io = Io::Tls(Box::new(tls));
        self.parser.reset();
    }

    /// The outcome of one SASL exchange: Ok(additional data) or Err(failure condition).
    async fn sasl_outcome(&mut self) -> Result<Vec<u8>, String> {
        let el = self.next_element().await;
        if el.is("success", NS_SASL) {
            self.parser.reset();
            return Ok(unb64(&el.text()));
        }
        if el.is("failure", NS_SASL) {
            let cond = el
                .children()
                .find(|c| c.name() != "text")
                .map(|c| c.name().to_string())
                .unwrap_or_default();
            return Err(cond);
        }
        if el.is("error", NS_STREAM) {
            return Err(format!("stream-error:{}", stream_error_condition(&el)));
        }
        panic!("unexpected SASL reply {}", describe(&el));
    }

    /// SASL PLAIN with an initial response.
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Result<(), String> {
        let msg = format!("\0{user}\0{password}");
        self.send(&format!(
            "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{}</auth>",
            b64(msg.as_bytes())
        ))
        .await;
        self.sasl_outcome().await.map(|_| ())
    }

    /// SCRAM-SHA-* (optionally -PLUS) with mutual authentication checked.
    pub async fn auth_scram(
        &mut self,
        mechanism: &str,
        user: &str,
        password: &str,
        binding: ClientBinding,
    ) -> Result<(), String> {
        let alg = if mechanism.starts_with("SCRAM-SHA-512") {
            HashAlg::Sha512
        } else if mechanism.starts_with("SCRAM-SHA-256") {
            HashAlg::Sha256
        } else {
            HashAlg::Sha1
        };
        let mut scram = ScramClient::new(alg, user, password, binding);
        let first = scram.client_first().expect("client-first-message");
        self.send(&format!(
            "<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{}</auth>",
            b64(&first)
        ))
        .await;
        let ch = self.next_element().await;
        if !ch.is("challenge", NS_SASL) {
            if ch.is("failure", NS_SASL) {
                let cond = ch
                    .children()
                    .find(|c| c.name() != "text")
                    .map(|c| c.name().to_string());
                return Err(cond.unwrap_or_default());
            }
            if ch.is("error", NS_STREAM) {
                return Err(format!("stream-error:{}", stream_error_condition(&ch)));
            }
            panic!("expected a SCRAM challenge, got {}", describe(&ch));
        }
        let server_first = unb64(&ch.text());
        let fin = scram
            .client_final(&server_first)
            .expect("client-final-message");
        self.send(&format!(
            "<response xmlns='{NS_SASL}'>{}</response>",
            b64(&fin)
        ))
        .await;
        let additional = self.sasl_outcome().await?;
        scram
            .verify_server_final(&additional)
            .map_err(|e| format!("server signature did not verify: {e}"))?;
        Ok(())
    }

    /// Bind a resource (server-generated when None); returns the full JID.
    pub async fn bind(&mut self, resource: Option<&str>) -> String {
        let r = self.try_bind(resource).await;
        let el = r.unwrap_or_else(|e| panic!("bind failed: {}", describe(&e)));
        self.jid = Some(el.clone());
        el
    }

    /// Ok(full JID) or Err(the IQ error).
    pub async fn try_bind(&mut self, resource: Option<&str>) -> Result<String, Element> {
        let id = self.fresh_id();
        let res = resource
            .map(|r| format!("<resource>{r}</resource>"))
            .unwrap_or_default();
        self.send(&format!(
            "<iq type='set' id='{id}'><bind xmlns='{NS_BIND}'>{res}</bind></iq>"
        ))
        .await;
        let el = self
            .wait_for("bind result", |e| {
                e.name() == "iq" && e.attr("id") == Some(id.as_str())
            })
            .await;
        if el.attr("type") != Some("result") {
            return Err(el);
        }
        let jid = el
            .get_child("bind", NS_BIND)
            .and_then(|b| b.get_child("jid", NS_BIND))
            .map(|j| j.text())
            .unwrap_or_else(|| panic!("bind result without <jid/>: {}", describe(&el)));
        Ok(jid)
    }

    /// STARTTLS (when offered), SCRAM-SHA-256, bind.
    pub async fn login(
        server: &TestServer,
        user: &str,
        password: &str,
        resource: Option<&str>,
    ) -> RawClient {
        let mut c = RawClient::connect(server.addr()).await;
        let mut f = c.open().await;
        if f.get_child("starttls", NS_TLS).is_some() {
            c.starttls(server.tls_config()).await;
            f = c.open().await;
        }
        assert!(
            f.get_child("mechanisms", NS_SASL).is_some(),
            "no mechanisms: {}",
            describe(&f)
        );
        c.auth_scram("SCRAM-SHA-256", user, password, ClientBinding::None)
            .await
            .unwrap_or_else(|e| panic!("login of {user} failed: {e}"));
        let f = c.open().await;
        assert!(
            f.get_child("bind", NS_BIND).is_some(),
            "no bind feature: {}",
            describe(&f)
        );
        c.bind(resource).await;
        c
    }

    /// Our bound full JID.
    pub fn full_jid(&self) -> String {
        self.jid.clone().expect("bound")
    }

    pub fn bare_jid(&self) -> String {
        let j = self.full_jid();
        j.split('/').next().unwrap().to_string()
    }

    /// Send an IQ (the `{id}` placeholder is replaced by a fresh id) and return its reply.
    pub async fn iq(&mut self, template: &str) -> Element {
        let id = self.fresh_id();
        let xml = template.replace("{id}", &id);
        assert!(xml.contains(&id), "IQ template needs an {{id}} placeholder");
        self.send(&xml).await;
        self.wait_for(&format!("reply to IQ {id}"), |e| {
            e.name() == "iq"
                && e.attr("id") == Some(id.as_str())
                && matches!(e.attr("type"), Some("result" | "error"))
        })
        .await
    }

    /// Send initial presence.
    pub async fn available(&mut self) {
        self.send("<presence/>").await;
        let me = self.full_jid();
        // Our own presence is reflected back to us (RFC 6121 §4.2.2).
        self.wait_for("own presence reflection", |e| {
            e.name() == "presence"
                && e.attr("type").is_none()
                && e.attr("from") == Some(me.as_str())
        })
        .await;
    }

    /// Fetch the roster (also marks this resource as interested in pushes).
    pub async fn roster(&mut self) -> Element {
        let r = self
            .iq(&format!(
                "<iq type='get' id='{{id}}'><query xmlns='{NS_ROSTER}'/></iq>"
            ))
            .await;
        assert_eq!(
            r.attr("type"),
            Some("result"),
            "roster get: {}",
            describe(&r)
        );
        r
    }

    /// Read until a stream error; return its condition. Then require the connection to close.
    pub async fn expect_stream_error(&mut self) -> String {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(pos) = self.backlog.iter().position(|e| e.is("error", NS_STREAM)) {
                let el = self.backlog.remove(pos).unwrap();
                let cond = stream_error_condition(&el);
                self.expect_closed().await;
                return cond;
            }
            match self.next_event_until(deadline).await {
                Ok(Event::Open(_)) => {}
                Ok(Event::Stanza(st)) => match st.element() {
                    Ok(el) => self.backlog.push_back(el),
                    Err(e) => panic!("unparsable element from server: {e}"),
                },
                Ok(Event::Close) => panic!(
                    "stream closed without a stream error; received: [{}]",
                    self.backlog
                        .iter()
                        .map(describe)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Err(e) => panic!(
                    "expected a stream error, got {e:?}; received: [{}]",
                    self.backlog
                        .iter()
                        .map(describe)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    }

    /// The server closes the stream (`</stream:stream>` optional) and the TCP connection.
    pub async fn expect_closed(&mut self) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match self.next_event_until(deadline).await {
                Ok(Event::Close) => {}
                Ok(Event::Stanza(st)) => {
                    // Allowed only before the close; keep it visible in failures.
                    if let Ok(el) = st.element() {
                        self.backlog.push_back(el);
                    }
                }
                Ok(Event::Open(_)) => panic!("new stream header while waiting for close"),
                Err(ReadError::Closed) => return,
                // Data after </stream:stream> is a protocol error, but the point here is
                // whether the connection goes away.
                Err(ReadError::Parse(e)) if self.stream_closed => panic!("{e}"),
                Err(ReadError::Parse(e)) => {
                    panic!("unparsable output while waiting for close: {e}")
                }
                Err(ReadError::Timeout) => panic!("server did not close the connection"),
            }
        }
    }

    /// Close our side of the stream politely.
    pub async fn close(mut self) {
        let _ = self.try_send_bytes(b"</stream:stream>").await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while self
                .next_event_until(Instant::now() + Duration::from_secs(2))
                .await
                .is_ok()
            {}
        })
        .await;
    }

    /// Split into a reading client (parser state and backlog kept) and a raw writer, so a
    /// test can write and read concurrently.
    pub fn split(mut self) -> (RawClient, Box<dyn AsyncWrite + Send + Unpin>) {
        let (r, w): (
            Box<dyn AsyncRead + Send + Unpin>,
            Box<dyn AsyncWrite + Send + Unpin>,
        ) = match std::mem::replace(&mut self.io, Io::Gone) {
            Io::Plain(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Io::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (Box::new(r), Box::new(w))
            }
            _ => panic!("cannot split"),
        };
        self.io = Io::ReadOnly(r);
        (self, w)
    }
}

/// True for `<message/>` elements.
pub fn is_message(e: &Element) -> bool {
    e.name() == "message" && e.ns() == NS_CLIENT
}

pub fn body(e: &Element) -> Option<String> {
    e.get_child("body", NS_CLIENT).map(|b| b.text())
}

/// A roster push (`<iq type='set'><query xmlns='jabber:iq:roster'>`) for `contact`.
pub fn is_roster_push_for(e: &Element, contact: &str) -> bool {
    e.name() == "iq"
        && e.attr("type") == Some("set")
        && e.get_child("query", NS_ROSTER)
            .and_then(|q| q.get_child("item", NS_ROSTER))
            .is_some_and(|i| i.attr("jid") == Some(contact))
}

/// The roster item for `contact` in a roster result or push.
pub fn roster_item<'a>(iq: &'a Element, contact: &str) -> Option<&'a Element> {
    iq.get_child("query", NS_ROSTER)?
        .children()
        .find(|i| i.is("item", NS_ROSTER) && i.attr("jid") == Some(contact))
}

/// A fresh client logs in, exchanges a message with itself, and gets a server reply.
pub async fn assert_still_serving(server: &TestServer, user: &str, password: &str) {
    let mut c = server.login(user, password, "probe").await;
    let me = c.full_jid();
    c.send(&format!(
        "<message type='chat' to='{me}' id='alive'><body>still alive</body></message>"
    ))
    .await;
    let m = c
        .wait_for("message to self", |e| {
            is_message(e) && e.attr("id") == Some("alive")
        })
        .await;
    assert_eq!(body(&m).as_deref(), Some("still alive"));
    let r = c
        .iq("<iq type='get' id='{id}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    assert_eq!(
        r.attr("type"),
        Some("result"),
        "disco#info after abuse: {}",
        describe(&r)
    );
    c.close().await;
}

// ---------------------------------------------------------------------------------------
// tokio-xmpp clients
// ---------------------------------------------------------------------------------------
//
// tokio-xmpp 6 is built here without its `starttls`/`direct-tls` features (they pull in DNS
// crates). A custom `ServerConnector` cannot be written outside tokio-xmpp either: the trait
// returns `sasl::common::ChannelBinding`, which tokio-xmpp does not re-export and `sasl` is
// not a dependency of this crate. So tokio-xmpp clients use its own `TcpServerConnector`
// with a fixed address (`DnsConfig::Addr`) against a server running with
// `require_tls = false`; TLS paths are covered by the raw client.

pub use tokio_xmpp::parsers::jid::Jid;
pub use tokio_xmpp::{Client, Event as XmppEvent, Stanza as XmppStanza};

/// A tokio-xmpp client to a plaintext-enabled test server.
pub fn xmpp_client(server: &TestServer, jid: &str, password: &str) -> Client {
    let jid = Jid::new(jid).expect("valid JID");
    Client::new_plaintext(
        jid,
        password,
        tokio_xmpp::connect::DnsConfig::addr(&server.addr().to_string()),
        tokio_xmpp::xmlstream::Timeouts::tight(),
    )
}

/// Wait for the client to come online; returns the bound JID.
pub async fn wait_online(client: &mut Client) -> Jid {
    let fut = async {
        loop {
            match client.next().await {
                Some(XmppEvent::Online { bound_jid, .. }) => return bound_jid,
                Some(XmppEvent::Disconnected(e)) => panic!("disconnected before online: {e}"),
                Some(XmppEvent::Stanza(_)) => continue,
                None => panic!("client stream ended before online"),
            }
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, fut)
        .await
        .expect("tokio-xmpp client did not come online in time")
}

/// Next stanza satisfying `pred` (others are dropped).
pub async fn next_stanza(
    client: &mut Client,
    what: &str,
    pred: impl Fn(&XmppStanza) -> bool,
) -> XmppStanza {
    let fut = async {
        loop {
            match client.next().await {
                Some(XmppEvent::Stanza(s)) if pred(&s) => return s,
                Some(XmppEvent::Stanza(_)) | Some(XmppEvent::Online { .. }) => continue,
                Some(XmppEvent::Disconnected(e)) => {
                    panic!("disconnected while waiting for {what}: {e}")
                }
                None => panic!("client stream ended while waiting for {what}"),
            }
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}
