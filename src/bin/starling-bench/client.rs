//! A minimal XMPP client (RFC 6120) that speaks only standard protocol, so it can drive any
//! server: TCP, optional STARTTLS (any certificate accepted: loopback benchmark), SASL PLAIN
//! or SCRAM-SHA-256, resource binding, the legacy session IQ when a server requires it, and
//! initial presence. Server output is framed with `starling::xml::StreamParser`.

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use bytes::BytesMut;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use starling::sasl::client::{ClientBinding, ScramClient, ScramKeyCache};
use starling::sasl::HashAlg;
use starling::xml::{escape, Event, Limits, Stanza, StreamParser, NS_CLIENT, NS_STREAM};

pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const NS_STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

const READ_CHUNK: usize = 4096;

// ---------------------------------------------------------------------------------------
// Monotonic clock shared by every task (message timestamps are nanoseconds since start).

static START: OnceLock<Instant> = OnceLock::new();

pub fn start_clock() {
    let _ = START.get_or_init(Instant::now);
}

/// Monotonic nanoseconds since the process started its clock.
pub fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The `Instant` corresponding to a `now_ns()` value.
pub fn instant_at(ns: u64) -> Instant {
    *START.get_or_init(Instant::now) + Duration::from_nanos(ns)
}

// ---------------------------------------------------------------------------------------
// Configuration

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mech {
    Plain,
    #[value(name = "scram-sha-256")]
    ScramSha256,
}

impl Mech {
    pub fn name(&self) -> &'static str {
        match self {
            Mech::Plain => "PLAIN",
            Mech::ScramSha256 => "SCRAM-SHA-256",
        }
    }
}

/// Everything a login needs; shared by all connections of a run.
pub struct ClientConfig {
    pub addr: SocketAddr,
    pub domain: String,
    /// Some: do STARTTLS with this rustls config.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub mech: Mech,
    pub prefix: String,
    pub password: String,
    pub resource: String,
    pub presence: bool,
    /// Local addresses to spread connections over (more ephemeral ports); empty: the OS picks.
    pub source_ips: Vec<IpAddr>,
    next_source: AtomicUsize,
    /// SCRAM keys derived so far: an account's first SCRAM login runs PBKDF2, its later
    /// logins (same salt and iteration count) only HMACs, as a real client caching its keys.
    pub scram_keys: Arc<ScramKeyCache>,
}

impl ClientConfig {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        addr: SocketAddr,
        domain: String,
        tls: bool,
        mech: Mech,
        prefix: String,
        password: String,
        resource: String,
        presence: bool,
        source_ips: Vec<IpAddr>,
    ) -> Result<ClientConfig> {
        Ok(ClientConfig {
            addr,
            domain,
            tls: if tls {
                Some(insecure_tls_config()?)
            } else {
                None
            },
            mech,
            prefix,
            password,
            resource,
            presence,
            source_ips,
            next_source: AtomicUsize::new(0),
            scram_keys: Arc::new(ScramKeyCache::new()),
        })
    }

    pub fn username(&self, index: usize) -> String {
        format!("{}{}", self.prefix, index)
    }
}

// ---------------------------------------------------------------------------------------
// TLS: accept any certificate (it is a loopback benchmark), but still check the handshake
// signatures so the handshake costs what a real client's would.

#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn insecure_tls_config() -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    // Every login pays a full handshake, like a fleet of distinct clients would.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

// ---------------------------------------------------------------------------------------
// Transport

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Transient, while the TCP stream is handed to the TLS connector.
    Gone,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "transport gone")
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// The incoming half of an XMPP stream: bytes from any reader into stanzas.
pub struct Reader<R> {
    pub io: R,
    pub parser: StreamParser,
    rbuf: BytesMut,
    pub bytes_in: u64,
}

pub fn new_parser() -> StreamParser {
    StreamParser::new(Limits::default())
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(io: R, parser: StreamParser) -> Self {
        Reader {
            io,
            parser,
            rbuf: BytesMut::new(),
            bytes_in: 0,
        }
    }

    pub fn into_parts(self) -> (R, StreamParser) {
        (self.io, self.parser)
    }

    /// Read once into the parser. `Ok(false)`: end of stream. Cancel-safe.
    pub async fn read_more(&mut self) -> io::Result<bool> {
        self.rbuf.reserve(READ_CHUNK);
        let n = self.io.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            return Ok(false);
        }
        self.bytes_in += n as u64;
        self.parser.feed(&self.rbuf[..n]);
        self.rbuf.clear();
        Ok(true)
    }

    /// Release the read buffer (idle sessions).
    pub fn shrink(&mut self) {
        self.rbuf = BytesMut::new();
        self.parser.shrink();
    }

    /// Next parsed event without reading (None: more bytes needed).
    pub fn poll_event(&mut self) -> Result<Option<Event>> {
        self.parser
            .next_event()
            .map_err(|e| anyhow!("XML from server: {e}"))
    }

    /// Next event, reading as needed. End of stream is an error.
    pub async fn next_event(&mut self) -> Result<Event> {
        loop {
            if let Some(ev) = self.poll_event()? {
                return Ok(ev);
            }
            if !self.read_more().await? {
                bail!("server closed the connection");
            }
        }
    }
}

/// A whole connection: the stream and its incoming parser.
pub type Conn = Reader<Stream>;

impl Conn {
    pub async fn send(&mut self, data: &[u8]) -> Result<()> {
        self.io.write_all(data).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// The next top-level element; a stream error or close is an error.
    pub async fn next_stanza(&mut self) -> Result<Stanza> {
        match self.next_event().await? {
            Event::Stanza(st) if st.ns == NS_STREAM && st.name == "error" => {
                bail!("stream error: {}", stream_error_condition(&st))
            }
            Event::Stanza(st) => Ok(st),
            Event::Close => bail!("server closed the stream"),
            Event::Open(_) => bail!("unexpected stream header"),
        }
    }
}

/// The defined condition of a `<stream:error/>` (or "unknown").
pub fn stream_error_condition(st: &Stanza) -> String {
    st.element()
        .ok()
        .and_then(|el| {
            el.children()
                .find(|c| c.ns() == NS_STREAMS)
                .map(|c| c.name().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The defined condition of a stanza `<error/>` (or "unknown").
pub fn stanza_error_condition(st: &Stanza) -> String {
    st.element()
        .ok()
        .and_then(|el| {
            el.children().find(|c| c.name() == "error").and_then(|e| {
                e.children()
                    .find(|c| c.ns() == NS_STANZAS)
                    .map(|c| c.name().to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

// ---------------------------------------------------------------------------------------
// Login

/// Where one login spent its time.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoginTimings {
    pub connect: Duration,
    /// STARTTLS request to the end of the TLS handshake.
    pub tls: Duration,
    /// From the stream header (after TLS) through SASL success.
    pub auth: Duration,
    /// Stream restart, bind (and session), presence sent.
    pub bind: Duration,
    pub total: Duration,
}

/// A logged-in, bound session.
pub struct Session {
    pub conn: Conn,
    pub index: usize,
    pub jid: String,
    pub timings: LoginTimings,
}

fn header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAM}' to='{}' version='1.0'>",
        escape(domain)
    )
}

fn b64(data: &[u8]) -> String {
    if data.is_empty() {
        "=".into()
    } else {
        base64::engine::general_purpose::STANDARD.encode(data)
    }
}

fn unb64(text: &str) -> Result<Vec<u8>> {
    let t = text.trim();
    if t.is_empty() || t == "=" {
        return Ok(Vec::new());
    }
    base64::engine::general_purpose::STANDARD
        .decode(t)
        .context("bad base64 from server")
}

/// Send our header, read the server's, return `<stream:features/>`.
async fn open_stream(conn: &mut Conn, domain: &str) -> Result<minidom::Element> {
    conn.send(header(domain).as_bytes()).await?;
    match conn.next_event().await? {
        Event::Open(_) => {}
        _ => bail!("expected a stream header"),
    }
    let st = conn.next_stanza().await?;
    if st.ns != NS_STREAM || st.name != "features" {
        bail!("expected stream features, got <{}/>", st.name);
    }
    st.element().map_err(|e| anyhow!("features: {e}"))
}

async fn connect(cfg: &ClientConfig) -> Result<TcpStream> {
    let tcp = if cfg.source_ips.is_empty() {
        TcpStream::connect(cfg.addr).await?
    } else {
        let i = cfg.next_source.fetch_add(1, Ordering::Relaxed) % cfg.source_ips.len();
        let ip = cfg.source_ips[i];
        let sock = if ip.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        sock.bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}"))?;
        sock.connect(cfg.addr).await?
    };
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

async fn starttls(conn: &mut Conn, tls: &Arc<rustls::ClientConfig>, domain: &str) -> Result<()> {
    conn.send(format!("<starttls xmlns='{NS_TLS}'/>").as_bytes())
        .await?;
    let st = conn.next_stanza().await?;
    match (st.ns.as_str(), st.name.as_str()) {
        (NS_TLS, "proceed") => {}
        (NS_TLS, "failure") => bail!("server refused STARTTLS"),
        _ => bail!("unexpected <{}/> after <starttls/>", st.name),
    }
    let Stream::Plain(tcp) = std::mem::replace(&mut conn.io, Stream::Gone) else {
        bail!("STARTTLS on a stream that is not plaintext");
    };
    let name = rustls::pki_types::ServerName::try_from(domain.to_string())
        .map_err(|e| anyhow!("server name {domain:?}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let stream = connector
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    conn.io = Stream::Tls(Box::new(stream));
    conn.parser.reset();
    Ok(())
}

fn sasl_failure(st: &Stanza) -> String {
    st.element()
        .ok()
        .and_then(|el| {
            el.children()
                .find(|c| c.name() != "text")
                .map(|c| c.name().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

async fn sasl(
    conn: &mut Conn,
    cfg: &ClientConfig,
    features: &minidom::Element,
    user: &str,
) -> Result<()> {
    let offered: Vec<String> = features
        .get_child("mechanisms", NS_SASL)
        .map(|m| {
            m.children()
                .filter(|c| c.name() == "mechanism")
                .map(|c| c.text())
                .collect()
        })
        .unwrap_or_default();
    let mech = cfg.mech.name();
    if !offered.iter().any(|m| m.trim() == mech) {
        bail!("server does not offer {mech} (offers {offered:?})");
    }
    match cfg.mech {
        Mech::Plain => {
            let mut msg = Vec::with_capacity(user.len() + cfg.password.len() + 2);
            msg.push(0);
            msg.extend_from_slice(user.as_bytes());
            msg.push(0);
            msg.extend_from_slice(cfg.password.as_bytes());
            let auth = format!(
                "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{}</auth>",
                b64(&msg)
            );
            conn.send(auth.as_bytes()).await?;
            let st = conn.next_stanza().await?;
            match st.name.as_str() {
                "success" if st.ns == NS_SASL => Ok(()),
                "failure" => bail!("SASL failure: {}", sasl_failure(&st)),
                other => bail!("unexpected <{other}/> during PLAIN"),
            }
        }
        Mech::ScramSha256 => {
            let mut client =
                ScramClient::new(HashAlg::Sha256, user, &cfg.password, ClientBinding::None)
                    .with_key_cache(cfg.scram_keys.clone());
            let first = client.client_first().map_err(|e| anyhow!("SCRAM: {e}"))?;
            let auth = format!(
                "<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>{}</auth>",
                b64(&first)
            );
            conn.send(auth.as_bytes()).await?;
            let st = conn.next_stanza().await?;
            let server_first = match st.name.as_str() {
                "challenge" if st.ns == NS_SASL => unb64(&st.element()?.text())?,
                "failure" => bail!("SASL failure: {}", sasl_failure(&st)),
                other => bail!("unexpected <{other}/> during SCRAM"),
            };
            let fin = if client.needs_derivation(&server_first) {
                // PBKDF2 is the expensive part: keep it off the I/O workers.
                let (c, fin) = tokio::task::spawn_blocking(move || {
                    let r = client.client_final(&server_first);
                    (client, r)
                })
                .await?;
                client = c;
                fin
            } else {
                // Cached keys: a few HMACs, cheaper than a thread hand-off.
                client.client_final(&server_first)
            };
            let fin = fin.map_err(|e| anyhow!("SCRAM: {e}"))?;
            conn.send(format!("<response xmlns='{NS_SASL}'>{}</response>", b64(&fin)).as_bytes())
                .await?;
            loop {
                let st = conn.next_stanza().await?;
                match st.name.as_str() {
                    "success" if st.ns == NS_SASL => {
                        let data = unb64(&st.element()?.text())?;
                        if !data.is_empty() {
                            client
                                .verify_server_final(&data)
                                .map_err(|_| anyhow!("SCRAM: server signature mismatch"))?;
                        }
                        return Ok(());
                    }
                    // Servers that send server-final in a challenge (RFC 6120 §6.3.10 allows
                    // either): verify, answer empty, expect success.
                    "challenge" if st.ns == NS_SASL => {
                        let data = unb64(&st.element()?.text())?;
                        client
                            .verify_server_final(&data)
                            .map_err(|_| anyhow!("SCRAM: server signature mismatch"))?;
                        conn.send(format!("<response xmlns='{NS_SASL}'/>").as_bytes())
                            .await?;
                    }
                    "failure" => bail!("SASL failure: {}", sasl_failure(&st)),
                    other => bail!("unexpected <{other}/> during SCRAM"),
                }
            }
        }
    }
}

/// Wait for the IQ answering `id`; other stanzas are skipped.
async fn iq_reply(conn: &mut Conn, id: &str) -> Result<Stanza> {
    loop {
        let st = conn.next_stanza().await?;
        if st.name == "iq" && st.id.as_deref() == Some(id) {
            match st.type_.as_deref() {
                Some("result") => return Ok(st),
                Some("error") => bail!("IQ error: {}", stanza_error_condition(&st)),
                t => bail!("unexpected IQ type {t:?}"),
            }
        }
    }
}

async fn bind(conn: &mut Conn, resource: &str, features: &minidom::Element) -> Result<String> {
    if features.get_child("bind", NS_BIND).is_none() {
        bail!("server does not offer resource binding");
    }
    let resource = if resource.is_empty() {
        String::new()
    } else {
        format!("<resource>{}</resource>", escape(resource))
    };
    conn.send(
        format!("<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'>{resource}</bind></iq>")
            .as_bytes(),
    )
    .await?;
    let st = iq_reply(conn, "bind1").await?;
    let el = st.element()?;
    let jid = el
        .get_child("bind", NS_BIND)
        .and_then(|b| b.get_child("jid", NS_BIND))
        .map(|j| j.text().trim().to_string())
        .filter(|j| !j.is_empty())
        .ok_or_else(|| anyhow!("bind result without a JID"))?;
    // RFC 3921 session establishment, only when the server still requires it.
    if let Some(s) = features.get_child("session", NS_SESSION) {
        if s.get_child("optional", NS_SESSION).is_none() {
            conn.send(
                format!("<iq type='set' id='sess1'><session xmlns='{NS_SESSION}'/></iq>")
                    .as_bytes(),
            )
            .await?;
            iq_reply(conn, "sess1").await?;
        }
    }
    Ok(jid)
}

async fn login_inner(
    cfg: &ClientConfig,
    index: usize,
    resource: &str,
    t: &mut LoginTimings,
) -> Result<Session> {
    let t0 = Instant::now();
    let tcp = connect(cfg).await.context("connect")?;
    t.connect = t0.elapsed();
    let mut conn: Conn = Reader::new(Stream::Plain(tcp), new_parser());
    let mut features = open_stream(&mut conn, &cfg.domain)
        .await
        .context("stream")?;
    if let Some(tls) = &cfg.tls {
        let t1 = Instant::now();
        if features.get_child("starttls", NS_TLS).is_none() {
            bail!("stream: server does not offer STARTTLS");
        }
        starttls(&mut conn, tls, &cfg.domain)
            .await
            .context("starttls")?;
        t.tls = t1.elapsed();
        features = open_stream(&mut conn, &cfg.domain)
            .await
            .context("stream after TLS")?;
    }
    let t2 = Instant::now();
    let user = cfg.username(index);
    sasl(&mut conn, cfg, &features, &user)
        .await
        .context("auth")?;
    t.auth = t2.elapsed();
    let t3 = Instant::now();
    conn.parser.reset();
    let features = open_stream(&mut conn, &cfg.domain)
        .await
        .context("stream after auth")?;
    let jid = bind(&mut conn, resource, &features).await.context("bind")?;
    if cfg.presence {
        conn.send(b"<presence/>").await.context("presence")?;
    }
    t.bind = t3.elapsed();
    t.total = t0.elapsed();
    Ok(Session {
        conn,
        index,
        jid,
        timings: *t,
    })
}

/// Connect and log in account `index` (`{prefix}{index}`) with the configured resource,
/// within `timeout`.
pub async fn login(cfg: &ClientConfig, index: usize, timeout: Duration) -> Result<Session> {
    login_as(cfg, index, &cfg.resource, timeout).await
}

/// [`login`] requesting `resource` at bind (empty: the server picks one).
pub async fn login_as(
    cfg: &ClientConfig,
    index: usize,
    resource: &str,
    timeout: Duration,
) -> Result<Session> {
    let mut t = LoginTimings::default();
    match tokio::time::timeout(timeout, login_inner(cfg, index, resource, &mut t)).await {
        Ok(r) => r,
        Err(_) => bail!("timeout: login took over {}s", timeout.as_secs_f64()),
    }
}

// ---------------------------------------------------------------------------------------
// Close

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseOutcome {
    /// The server answered `</stream:stream>`.
    Clean,
    /// The server closed TCP without closing the stream.
    Eof,
    /// A stream error arrived instead.
    StreamError,
    Timeout,
    IoError,
}

impl CloseOutcome {
    pub fn name(&self) -> &'static str {
        match self {
            CloseOutcome::Clean => "clean",
            CloseOutcome::Eof => "eof",
            CloseOutcome::StreamError => "stream_error",
            CloseOutcome::Timeout => "timeout",
            CloseOutcome::IoError => "io_error",
        }
    }
}

/// Where parsed events come from: the full parser ([`Reader`]) or the trusted-input framer
/// (`frame::FastReader`).
pub trait EventSource {
    fn poll_event(&mut self) -> Result<Option<Event>>;
    #[allow(async_fn_in_trait)] // used in this binary only, never across threads generically
    async fn read_more(&mut self) -> io::Result<bool>;
}

impl<R: AsyncRead + Unpin> EventSource for Reader<R> {
    fn poll_event(&mut self) -> Result<Option<Event>> {
        Reader::poll_event(self)
    }

    async fn read_more(&mut self) -> io::Result<bool> {
        Reader::read_more(self).await
    }
}

/// After our `</stream:stream>` was sent: read until the server's close (events other than
/// the close are handed to `on_stanza`), then shut the transport down.
pub async fn await_close<S: EventSource>(
    r: &mut S,
    timeout: Duration,
    mut on_stanza: impl FnMut(Stanza),
) -> CloseOutcome {
    let wait = async {
        loop {
            match r.poll_event() {
                Ok(Some(Event::Close)) => return CloseOutcome::Clean,
                Ok(Some(Event::Stanza(st))) if st.ns == NS_STREAM && st.name == "error" => {
                    return CloseOutcome::StreamError
                }
                Ok(Some(Event::Stanza(st))) => on_stanza(st),
                Ok(Some(Event::Open(_))) => {}
                Ok(None) => match r.read_more().await {
                    Ok(true) => {}
                    Ok(false) => return CloseOutcome::Eof,
                    Err(_) => return CloseOutcome::IoError,
                },
                Err(_) => return CloseOutcome::IoError,
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or(CloseOutcome::Timeout)
}

/// Close a whole connection cleanly: `</stream:stream>`, wait for the server's, shut down.
pub async fn close(conn: &mut Conn, timeout: Duration) -> CloseOutcome {
    if conn.send(b"</stream:stream>").await.is_err() {
        return CloseOutcome::IoError;
    }
    let out = await_close(conn, timeout, |_| {}).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.io.shutdown()).await;
    out
}
