//! One outbound s2s stream, as initiating server (RFC 6120 §4–§6): connect to one target,
//! STARTTLS or direct TLS (XEP-0368), then SASL EXTERNAL (XEP-0178) when offered, else
//! dialback (XEP-0220 §2.1.1, `db:result`), and afterwards the authenticated stream that
//! carries stanzas.
//!
//! `db:verify` requests (we as receiving server asking the authoritative server, §2.1.2)
//! travel on the same stream and are sent as soon as the stream's final features arrive,
//! before our own `db:result` is answered: two servers dialing each other at once each
//! wait for the other's verification, so holding them until authentication would
//! deadlock until the timeout.

use std::collections::HashMap;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::dialback::{self, NS_DIALBACK, NS_DIALBACK_FEATURE};
use super::resolve::Target;
use super::stream::{NS_BIDI_FEATURE, NS_SASL, NS_TLS};
use super::S2s;
use crate::xml::{escape, Event, Limits, Stanza, StreamParser, XmlError, NS_STREAM};

/// Any byte stream a connection runs over (TCP, TLS over TCP).
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why an outbound stream could not be set up or ended.
#[derive(Debug, thiserror::Error)]
pub enum OutError {
    #[error("the domain offers no s2s service")]
    NoService,
    #[error("connect {0}: {1}")]
    Connect(String, io::Error),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("xml: {0}")]
    Xml(#[from] XmlError),
    #[error("TLS required (s2s.require_tls) but not offered")]
    TlsRequired,
    #[error("peer certificate not valid for the domain (s2s.require_valid_certificates)")]
    BadCertificate,
    #[error("stream error from peer: {0}")]
    StreamError(String),
    #[error("stream closed by peer")]
    Closed,
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("authentication refused: {0}")]
    Refused(String),
    #[error("timed out")]
    Timeout,
    #[error("too many s2s streams (s2s.max_streams)")]
    TooManyStreams,
}

/// How the stream authenticated, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    External,
    Dialback,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::External => "external",
            Method::Dialback => "dialback",
        }
    }
}

/// A `db:verify` to send, answered through `reply`.
pub(super) struct Verify {
    pub stream_id: String,
    pub key: String,
    pub reply: oneshot::Sender<bool>,
}

pub(super) struct Conn {
    io: Box<dyn Io>,
    parser: StreamParser,
    buf: Box<[u8]>,
    pub local: String,
    pub remote: String,
    /// The id of the receiving server's current stream header.
    pub stream_id: String,
    pub tls: bool,
    /// XEP-0288 requested: the peer sends its stanzas to us over this stream too.
    pub bidi: bool,
    /// The certificate chain the peer presented in the TLS handshake.
    pub peer_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Answers awaited for our `db:verify`s, by the verified stream's id.
    pending: HashMap<String, Vec<oneshot::Sender<bool>>>,
    /// `db:verify`s asked for before the stream could carry them.
    held: Vec<Verify>,
    can_verify: bool,
    write_timeout: Duration,
}

impl Conn {
    fn new(io: Box<dyn Io>, limits: Limits, local: &str, remote: &str, tls: bool) -> Conn {
        Conn {
            io,
            parser: StreamParser::new(limits),
            buf: vec![0u8; 16 * 1024].into_boxed_slice(),
            local: local.to_owned(),
            remote: remote.to_owned(),
            stream_id: String::new(),
            tls,
            bidi: false,
            peer_chain: Vec::new(),
            pending: HashMap::new(),
            held: Vec::new(),
            can_verify: false,
            write_timeout: Duration::from_secs(30),
        }
    }

    /// Write and flush; a peer that stops reading for `connect_timeout_secs` is dropped
    /// (the idle timer cannot fire while the task is blocked in a write).
    pub async fn write(&mut self, data: &[u8]) -> Result<(), OutError> {
        let io = &mut self.io;
        let write = async {
            io.write_all(data).await?;
            io.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(OutError::Timeout),
        }
    }

    /// Open (or restart) our stream and read the peer's header.
    async fn open(&mut self, control: &mut mpsc::Receiver<Verify>) -> Result<(), OutError> {
        self.parser.reset();
        let header = super::stream::header(&self.local, Some(&self.remote), None);
        self.write(header.as_bytes()).await?;
        match self.next_raw(control).await? {
            Event::Open(h) => {
                super::stream::check_header(&h).map_err(|e| OutError::Protocol(e.to_string()))?;
                self.stream_id = h.id.unwrap_or_default();
                Ok(())
            }
            Event::Stanza(st) => Err(OutError::Protocol(format!("<{}/> before header", st.name))),
            Event::Close => Err(OutError::Closed),
        }
    }

    /// Read one more chunk into the parser. Cancel-safe (used in `select!`).
    pub async fn read_more(&mut self) -> Result<(), OutError> {
        let n = self.io.read(&mut self.buf).await?;
        if n == 0 {
            return Err(OutError::Closed);
        }
        self.parser.feed(&self.buf[..n]);
        Ok(())
    }

    /// The next parsed event, if the bytes read so far complete one. `db:verify` answers
    /// and stream errors are handled here.
    pub fn poll_event(&mut self) -> Result<Option<Event>, OutError> {
        loop {
            let Some(ev) = self.parser.next_event()? else {
                return Ok(None);
            };
            match ev {
                Event::Stanza(st) if st.ns == NS_DIALBACK && st.name == "verify" => {
                    let id = st.id.clone().unwrap_or_default();
                    let valid = st.type_.as_deref() == Some("valid");
                    for reply in self.pending.remove(&id).unwrap_or_default() {
                        let _ = reply.send(valid);
                    }
                }
                Event::Stanza(st) if st.ns == NS_STREAM && st.name == "error" => {
                    let cond = st
                        .element()
                        .ok()
                        .and_then(|e| e.children().next().map(|c| c.name().to_owned()))
                        .unwrap_or_default();
                    return Err(OutError::StreamError(cond));
                }
                Event::Close => return Err(OutError::Closed),
                ev => return Ok(Some(ev)),
            }
        }
    }

    /// The next event, serving `db:verify` requests meanwhile.
    async fn next_raw(&mut self, control: &mut mpsc::Receiver<Verify>) -> Result<Event, OutError> {
        loop {
            if let Some(ev) = self.poll_event()? {
                return Ok(ev);
            }
            tokio::select! {
                r = self.read_more() => r?,
                Some(v) = control.recv() => self.verify(v).await?,
            }
        }
    }

    /// The next top-level element of the current stream.
    async fn next_stanza(
        &mut self,
        control: &mut mpsc::Receiver<Verify>,
    ) -> Result<Stanza, OutError> {
        match self.next_raw(control).await? {
            Event::Stanza(st) => Ok(st),
            Event::Open(_) => Err(OutError::Protocol("second stream header".into())),
            Event::Close => Err(OutError::Closed),
        }
    }

    /// Send a `db:verify` now, or hold it until the stream can carry it.
    pub async fn verify(&mut self, v: Verify) -> Result<(), OutError> {
        if !self.can_verify {
            self.held.push(v);
            return Ok(());
        }
        let req = format!(
            "<db:verify from='{}' to='{}' id='{}'>{}</db:verify>",
            escape(&self.local),
            escape(&self.remote),
            escape(&v.stream_id),
            escape(&v.key)
        );
        self.pending.entry(v.stream_id).or_default().push(v.reply);
        self.write(req.as_bytes()).await
    }

    /// The stream reached its final features: send the held `db:verify`s.
    async fn enable_verify(&mut self) -> Result<(), OutError> {
        self.can_verify = true;
        for v in std::mem::take(&mut self.held) {
            self.verify(v).await?;
        }
        Ok(())
    }

    /// Upgrade to TLS (after `<proceed/>`, or at once for direct TLS).
    async fn tls(self, s2s: &S2s) -> Result<Conn, OutError> {
        let io = tls_connect(s2s, &self.remote, self.io).await?;
        let peer_chain = io.get_ref().1.peer_certificates().map(<[_]>::to_vec);
        Ok(Conn {
            io: Box::new(io),
            tls: true,
            peer_chain: peer_chain.unwrap_or_default(),
            ..self
        })
    }

    /// End the stream because of a policy we apply (RFC 6120 §4.9: say why, then close)
    /// rather than dropping the TCP connection on the peer.
    async fn fail(&mut self, condition: &str, text: &str) {
        let e = crate::xml::stream_error(condition, None, Some(text));
        let _ = self.write(e.as_bytes()).await;
        self.close().await;
    }

    /// Close our stream (the peer closes its side; we do not wait for it).
    pub async fn close(&mut self) {
        let _ = self.write(b"</stream:stream>").await;
        let _ = self.io.shutdown().await;
    }
}

async fn tls_connect(
    s2s: &S2s,
    remote: &str,
    io: Box<dyn Io>,
) -> Result<tokio_rustls::client::TlsStream<Box<dyn Io>>, OutError> {
    let connector = s2s
        .tls
        .connector()
        .ok_or_else(|| OutError::Protocol("no TLS client configuration".into()))?;
    let name = rustls::pki_types::ServerName::try_from(remote.to_owned())
        .map_err(|_| OutError::Protocol(format!("{remote} is not a valid TLS server name")))?;
    Ok(connector.connect(name, io).await?)
}

/// Connect to `target` and authenticate the (`local`, `remote`) pair.
pub(super) async fn establish(
    s2s: &S2s,
    limits: Limits,
    local: &str,
    remote: &str,
    target: &Target,
    control: &mut mpsc::Receiver<Verify>,
) -> Result<(Conn, Method), OutError> {
    let config = &s2s.outbound.config;
    let addr = format!("{}:{}", target.host, target.port);
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| OutError::Connect(addr, e))?;
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn::new(Box::new(tcp), limits, local, remote, false);
    conn.write_timeout = Duration::from_secs(config.connect_timeout_secs);
    if target.direct_tls {
        conn = conn.tls(s2s).await?;
    }
    let mut authenticated = false;
    let mut tried_external = false;
    loop {
        conn.open(control).await?;
        let features = conn.next_stanza(control).await?;
        if features.ns != NS_STREAM || features.name != "features" {
            return Err(OutError::Protocol(format!(
                "expected features, got <{}/>",
                features.name
            )));
        }
        let features = features.element()?;
        let has = |name: &str, ns: &str| features.get_child(name, ns).is_some();
        if !conn.tls {
            if has("starttls", NS_TLS) {
                conn.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                    .await?;
                let answer = conn.next_stanza(control).await?;
                if answer.ns != NS_TLS || answer.name != "proceed" {
                    return Err(OutError::Refused(format!("STARTTLS: <{}/>", answer.name)));
                }
                conn = conn.tls(s2s).await?;
                continue;
            }
            if config.require_tls {
                conn.fail("policy-violation", "TLS is required").await;
                return Err(OutError::TlsRequired);
            }
        }
        if authenticated {
            conn.enable_verify().await?;
            return Ok((conn, Method::External));
        }
        if config.require_valid_certificates
            && !(conn.tls && s2s.tls.valid_for(&conn.peer_chain, remote))
        {
            let why = format!("certificate not valid for {remote}");
            conn.fail("policy-violation", &why).await;
            return Err(OutError::BadCertificate);
        }
        if !conn.bidi && has("bidi", NS_BIDI_FEATURE) {
            // XEP-0288 §2.2: before authentication; the peer may then send to us over it.
            conn.write(b"<bidi xmlns='urn:xmpp:bidi'/>").await?;
            conn.bidi = true;
        }
        let external = conn.tls
            && features.get_child("mechanisms", NS_SASL).is_some_and(|m| {
                m.children()
                    .any(|c| c.name() == "mechanism" && c.text().trim() == "EXTERNAL")
            });
        if external && !tried_external {
            tried_external = true;
            conn.write(
                b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>",
            )
            .await?;
            let answer = conn.next_stanza(control).await?;
            if answer.ns == NS_SASL && answer.name == "success" {
                authenticated = true;
                continue;
            }
            // XEP-0178 §3 (1.2): fall back to dialback when EXTERNAL fails.
            tracing::debug!(local, remote, "s2s: SASL EXTERNAL refused, trying dialback");
        }
        if !has("dialback", NS_DIALBACK_FEATURE) {
            // Servers predating the feature (XEP-0220 §2.4) may still do dialback: try.
            tracing::debug!(
                local,
                remote,
                "s2s: dialback not advertised, trying it anyway"
            );
        }
        conn.enable_verify().await?;
        dialback_result(&mut conn, s2s, control).await?;
        return Ok((conn, Method::Dialback));
    }
}

/// XEP-0220 §2.1.1: send `db:result` with our key and wait for the receiving server's
/// verdict (it asks our authoritative server, i.e. us, on another stream meanwhile).
async fn dialback_result(
    conn: &mut Conn,
    s2s: &S2s,
    control: &mut mpsc::Receiver<Verify>,
) -> Result<(), OutError> {
    let key = dialback::key(&s2s.secret, &conn.remote, &conn.local, &conn.stream_id);
    let req = format!(
        "<db:result from='{}' to='{}'>{key}</db:result>",
        escape(&conn.local),
        escape(&conn.remote)
    );
    conn.write(req.as_bytes()).await?;
    loop {
        let st = conn.next_stanza(control).await?;
        if st.ns != NS_DIALBACK || st.name != "result" {
            tracing::debug!(name = %st.name, "s2s: ignoring element while awaiting db:result");
            continue;
        }
        return match st.type_.as_deref() {
            Some("valid") => Ok(()),
            other => {
                conn.close().await;
                Err(OutError::Refused(format!(
                    "db:result type={}",
                    other.unwrap_or("(none)")
                )))
            }
        };
    }
}
