//! Inbound s2s streams: streams other servers open to us (RFC 6120 §4–§6 as receiving
//! server), STARTTLS or direct TLS (XEP-0368), SASL EXTERNAL (XEP-0178) or dialback
//! (XEP-0220) per domain pair, XEP-0288 bidirectionality; also answers `db:verify` as the
//! authoritative server. Authentication lives in `inbound/auth.rs`.
//!
//! One task per connection, the only writer to its socket. The task does not wait for a
//! dialback verification (which opens a connection of its own to the peer's authoritative
//! server, possibly the very server at the other end of this stream): verifications run as
//! tasks whose results the loop picks up, so stanzas for pairs already authenticated and
//! `db:verify` requests keep flowing meanwhile (XEP-0220 §2.2.1).

use bytes::{Bytes, BytesMut};
use rustls::pki_types::CertificateDer;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::outbound::{BidiRoute, VerifyError};
use super::stream::{self, Pairs, StreamError, NS_BIDI, NS_BIDI_FEATURE, NS_DIALBACK};
use super::stream::{NS_DIALBACK_FEATURE, NS_SASL, NS_TLS};
use super::S2s;
use crate::c2s::Transport;
use crate::server::ServerState;
use crate::xml::{Event, Stanza, StreamHeader, StreamParser, NS_CLIENT, NS_SERVER};

mod auth;

/// Bytes taken from the socket per read (on the stack of a synchronous function, as c2s).
const READ_CHUNK: usize = 16 * 1024;
/// Upper bound on writing the final bytes of a closing stream.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a stream ends.
#[derive(Debug)]
pub(crate) enum End {
    /// The peer closed the stream or the connection.
    PeerClosed,
    /// No traffic for `s2s.idle_timeout_secs`: a plain close, the peer reopens on demand.
    Idle,
    /// We close with this stream error.
    Error(StreamError),
    /// Nothing more can be written.
    Io,
}

impl End {
    fn err(condition: &'static str, text: impl Into<String>) -> End {
        End::Error(StreamError::new(condition, text))
    }
}

/// Run one inbound connection to its end.
pub async fn serve(s2s: Arc<S2s>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
    let Some(server) = s2s.server.upgrade() else {
        return;
    };
    let Ok(_slot) = s2s.streams.clone().try_acquire_owned() else {
        tracing::warn!(%peer, "s2s: max_streams reached; refusing an inbound stream");
        if !direct_tls {
            let wire = Wire::new(Transport::Plain(tcp), &server);
            let local = server.domains.first().cloned().unwrap_or_default();
            let end = End::err("resource-constraint", "too many s2s streams");
            wire.finish(&local, end).await;
        }
        return;
    };
    let io = if direct_tls {
        let timeout = Duration::from_secs(server.config.s2s.connect_timeout_secs);
        match tokio::time::timeout(timeout, s2s.tls.acceptor().accept(tcp)).await {
            Ok(Ok(tls)) => Transport::Tls(Box::new(tls)),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "s2s: TLS handshake failed");
                return;
            }
            Err(_) => return,
        }
    } else {
        Transport::Plain(tcp)
    };
    let mut wire = Wire::new(io, &server);
    let mut stream = Inbound::new(s2s, server, peer, &wire);
    let end = Box::pin(stream.run(&mut wire)).await;
    stream.forget_routes();
    tracing::debug!(%peer, local = %stream.local, end = ?end, "s2s inbound stream ends");
    wire.finish(&stream.local, end).await;
}

/// The socket, the parser and the output buffer of one stream.
pub(crate) struct Wire {
    io: Transport,
    parser: StreamParser,
    /// Try reading before waiting for readiness (TLS may hold decrypted bytes).
    read_pending: bool,
    out: BytesMut,
    /// Our header for the current (re)started stream is written.
    header_sent: bool,
    last_activity: Instant,
}

impl Wire {
    fn new(io: Transport, server: &ServerState) -> Wire {
        Wire {
            io,
            parser: StreamParser::new(server.limits.clone()),
            read_pending: true,
            out: BytesMut::new(),
            header_sent: false,
            last_activity: Instant::now(),
        }
    }

    /// Read once into the parser; `Ok(false)` at end of stream. Cancel-safe: waits for
    /// readiness, then reads synchronously.
    async fn read_some(&mut self) -> Result<bool, End> {
        loop {
            if !self.read_pending {
                self.io.readable().await.map_err(|_| End::Io)?;
            }
            let mut buf = [0u8; READ_CHUNK];
            match self.io.try_read(&mut buf) {
                Ok(Some(0)) => return Ok(false),
                Ok(Some(n)) => {
                    self.parser.feed(&buf[..n]);
                    self.read_pending = true;
                    self.last_activity = Instant::now();
                    return Ok(true);
                }
                Ok(None) => self.read_pending = false,
                Err(_) => return Err(End::Io),
            }
        }
    }

    pub(crate) fn write(&mut self, data: &[u8]) {
        self.out.extend_from_slice(data);
    }

    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.io.write_all(&self.out).await.map_err(|_| End::Io)?;
        self.io.flush().await.map_err(|_| End::Io)?;
        self.out.clear();
        self.last_activity = Instant::now();
        Ok(())
    }

    /// The peer restarts the stream (after `<proceed/>` or SASL `<success/>`).
    fn restart(&mut self) {
        self.parser.reset();
        self.header_sent = false;
        self.read_pending = true;
    }

    /// The peer's certificate chain, end-entity first (empty without TLS or certificate).
    fn peer_chain(&self) -> Vec<CertificateDer<'static>> {
        match &self.io {
            Transport::Tls(s) => s
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Close: our header if none was sent yet (RFC 6120 §4.9.1.1), the stream error if
    /// any, `</stream:stream>`, then the connection.
    async fn finish(mut self, local: &str, end: End) {
        let error = match end {
            End::Io => return,
            End::PeerClosed | End::Idle => None,
            End::Error(e) => Some(e),
        };
        if let Some(e) = error {
            if !self.header_sent {
                let id = crate::stanza::random_id();
                self.write(stream::header(local, None, Some(&id)).as_bytes());
                self.header_sent = true;
            }
            self.write(e.to_xml().as_bytes());
        }
        // Without a header of ours (the peer never sent one) there is no stream to close.
        if self.header_sent {
            self.write(b"</stream:stream>");
        }
        let close = async {
            let _ = self.flush().await;
            let _ = self.io.shutdown().await;
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
    }
}

/// XEP-0288: this stream carries our stanzas to the peer too.
struct Bidi {
    id: u64,
    tx: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
}

/// A finished dialback verification: (local, remote, outcome).
type Verified = (String, String, Result<bool, VerifyError>);

/// Negotiation and authentication state of one inbound stream.
pub(crate) struct Inbound {
    s2s: Arc<S2s>,
    server: Arc<ServerState>,
    peer: SocketAddr,
    /// Our domain: the 'to' of the peer's latest header.
    local: String,
    /// The peer's domain as its header's 'from' says (optional in RFC 6120).
    remote: Option<String>,
    stream_id: String,
    tls: bool,
    chain: Vec<CertificateDer<'static>>,
    pairs: Pairs,
    /// Pairs whose dialback verification is running.
    pending: HashSet<(String, String)>,
    verifications: JoinSet<Verified>,
    /// The domain SASL EXTERNAL authenticated (then the stream's header may not change it).
    external: Option<String>,
    auth_failures: u32,
    bidi: Option<Bidi>,
}

impl Inbound {
    fn new(s2s: Arc<S2s>, server: Arc<ServerState>, peer: SocketAddr, wire: &Wire) -> Inbound {
        let local = server.domains.first().cloned().unwrap_or_default();
        Inbound {
            s2s,
            server,
            peer,
            local,
            remote: None,
            stream_id: String::new(),
            tls: wire.io.is_tls(),
            chain: wire.peer_chain(),
            pairs: Pairs::default(),
            pending: HashSet::new(),
            verifications: JoinSet::new(),
            external: None,
            auth_failures: 0,
            bidi: None,
        }
    }

    async fn run(&mut self, wire: &mut Wire) -> End {
        let mut shutdown = self.server.shutdown.clone();
        if *shutdown.borrow() {
            return End::err("system-shutdown", "server shutting down");
        }
        let idle = Duration::from_secs(self.server.config.s2s.idle_timeout_secs);
        // A stream that authenticates nothing (a peer that only keeps a socket, or only
        // asks db:verify) may not hold one of `max_streams` for longer than it takes to
        // authenticate; legitimate verify-only streams reconnect when they need to.
        let unauthenticated_until =
            Instant::now() + Duration::from_secs(self.server.config.s2s.connect_timeout_secs);
        loop {
            loop {
                let ev = match wire.parser.next_event() {
                    Ok(Some(ev)) => ev,
                    Ok(None) => break,
                    Err(e) => return End::Error(e.into()),
                };
                if let Err(end) = self.event(wire, ev).await {
                    return end;
                }
            }
            if let Err(end) = wire.flush().await {
                return end;
            }
            // Our stanzas (bidi) only go out inside a stream we have answered.
            let can_send = wire.header_sent;
            let deadline = wire.last_activity + idle;
            let woke = tokio::select! {
                r = wire.read_some() => match r {
                    Ok(true) => Wake::Read,
                    Ok(false) => return End::PeerClosed,
                    Err(end) => return end,
                },
                Some(done) = self.verifications.join_next(), if !self.verifications.is_empty() => {
                    Wake::Verified(done)
                }
                Some(bytes) = recv_bidi(&mut self.bidi), if can_send => Wake::Send(bytes),
                _ = tokio::time::sleep_until(deadline) => return End::Idle,
                _ = tokio::time::sleep_until(unauthenticated_until),
                    if self.pairs.is_empty() && self.pending.is_empty() => {
                    return End::err("connection-timeout", "no domain authenticated in time")
                }
                _ = shutdown.changed() => {
                    return End::err("system-shutdown", "server shutting down")
                }
            };
            match woke {
                Wake::Read => {}
                Wake::Send(bytes) => wire.write(&bytes),
                Wake::Verified(Ok(done)) => {
                    if let Err(end) = self.verified(wire, done) {
                        return end;
                    }
                }
                Wake::Verified(Err(e)) => {
                    tracing::warn!(error = %e, "s2s: dialback verification task failed");
                    return End::err("internal-server-error", "verification failed");
                }
            }
        }
    }

    async fn event(&mut self, wire: &mut Wire, ev: Event) -> Result<(), End> {
        match ev {
            Event::Open(h) if !wire.header_sent => self.open(wire, &h),
            Event::Open(_) => Err(End::err("bad-format", "unexpected stream header")),
            Event::Close => Err(End::PeerClosed),
            Event::Stanza(st) => self.element(wire, &st).await,
        }
    }

    /// A (re)started stream: check the header, answer with ours and the features.
    fn open(&mut self, wire: &mut Wire, h: &StreamHeader) -> Result<(), End> {
        stream::check_header(h).map_err(End::Error)?;
        let to =
            h.to.as_deref()
                .ok_or_else(|| End::err("improper-addressing", "no 'to' in the stream header"))?;
        let local = stream::domain(to)
            .filter(|d| self.server.is_local_domain(d))
            .ok_or_else(|| End::err("host-unknown", format!("{to} is not served here")))?;
        let remote = match h.from.as_deref() {
            None => None,
            Some(f) => Some(
                stream::domain(f)
                    .ok_or_else(|| End::err("invalid-from", format!("{f} is not a domain")))?,
            ),
        };
        if remote
            .as_deref()
            .is_some_and(|r| self.server.is_local_domain(r))
        {
            return Err(End::err("invalid-from", "that domain is served here"));
        }
        if let Some(authed) = &self.external {
            if remote.as_ref() != Some(authed) || local != self.local {
                return Err(End::err(
                    "invalid-from",
                    "the restarted stream names other domains than the authenticated one",
                ));
            }
        }
        self.local = local;
        self.remote = remote;
        self.stream_id = crate::stanza::random_id();
        let header = stream::header(&self.local, self.remote.as_deref(), Some(&self.stream_id));
        wire.write(header.as_bytes());
        wire.header_sent = true;
        let features = self.features(wire);
        wire.write(features.as_bytes());
        Ok(())
    }

    fn features(&self, wire: &Wire) -> String {
        let config = &self.server.config.s2s;
        let mut f = String::from("<stream:features>");
        if wire.io.can_starttls() {
            let required = if config.require_tls {
                "<required/>"
            } else {
                ""
            };
            f.push_str(&format!("<starttls xmlns='{NS_TLS}'>{required}</starttls>"));
        }
        if self.bidi.is_none() {
            f.push_str(&format!("<bidi xmlns='{NS_BIDI_FEATURE}'/>"));
        }
        if self.external_allowed() {
            f.push_str(&format!(
                "<mechanisms xmlns='{NS_SASL}'><mechanism>EXTERNAL</mechanism></mechanisms>"
            ));
        }
        if self.tls || !config.require_tls {
            f.push_str(&format!(
                "<dialback xmlns='{NS_DIALBACK_FEATURE}'><errors/></dialback>"
            ));
        }
        f.push_str("</stream:features>");
        f
    }

    /// XEP-0178: EXTERNAL is offered when the certificate the peer presented is valid for
    /// the domain its header claims.
    fn external_allowed(&self) -> bool {
        self.tls
            && self.external.is_none()
            && self
                .remote
                .as_deref()
                .is_some_and(|r| self.s2s.tls.valid_for(&self.chain, r))
    }

    /// One top-level element inside the stream.
    async fn element(&mut self, wire: &mut Wire, st: &Stanza) -> Result<(), End> {
        match (st.ns.as_str(), st.name.as_str()) {
            (NS_TLS, "starttls") if wire.io.can_starttls() => self.starttls(wire).await,
            (NS_TLS, _) => Err(End::err("policy-violation", "TLS already negotiated")),
            (NS_SASL, "auth") => self.sasl_auth(wire, st),
            (NS_SASL, "abort") => {
                self.sasl_failure(wire, "aborted");
                Ok(())
            }
            (NS_SASL, _) => Err(End::err("unsupported-stanza-type", "no SASL exchange")),
            (NS_BIDI, "bidi") => {
                self.enable_bidi();
                Ok(())
            }
            (NS_DIALBACK, "result") => self.db_result(wire, st),
            (NS_DIALBACK, "verify") => self.db_verify(wire, st),
            (NS_SERVER | NS_CLIENT, "message" | "presence" | "iq") => {
                if self.pairs.is_empty() {
                    return Err(End::err(
                        "not-authorized",
                        "authenticate (SASL EXTERNAL or dialback) first",
                    ));
                }
                stream::dispatch(&self.server, &self.pairs, st)
                    .await
                    .map_err(End::Error)
            }
            _ => Err(End::err(
                "unsupported-stanza-type",
                format!("<{}/> in {}", st.name, st.ns),
            )),
        }
    }

    /// RFC 6120 §5.4: `<proceed/>`, handshake, and the peer restarts the stream.
    async fn starttls(&mut self, wire: &mut Wire) -> Result<(), End> {
        wire.write(format!("<proceed xmlns='{NS_TLS}'/>").as_bytes());
        wire.flush().await?;
        let Transport::Plain(tcp) = std::mem::replace(&mut wire.io, Transport::Gone) else {
            return Err(End::Io);
        };
        let timeout = Duration::from_secs(self.server.config.s2s.connect_timeout_secs);
        match tokio::time::timeout(timeout, self.s2s.tls.acceptor().accept(tcp)).await {
            Ok(Ok(tls)) => wire.io = Transport::Tls(Box::new(tls)),
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer, error = %e, "s2s: STARTTLS handshake failed");
                return Err(End::Io);
            }
            Err(_) => return Err(End::Io),
        }
        self.tls = true;
        self.chain = wire.peer_chain();
        wire.restart();
        Ok(())
    }

    /// XEP-0288 §2.2: the peer may receive our stanzas over this stream, for every pair
    /// it authenticated (now or later).
    fn enable_bidi(&mut self) {
        if self.bidi.is_some() {
            return;
        }
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let (tx, rx) = mpsc::channel(self.server.config.s2s.max_queue);
        self.bidi = Some(Bidi {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            tx,
            rx,
        });
        let pairs: Vec<(String, String)> = self
            .pairs
            .iter()
            .map(|(l, r)| (l.to_string(), r.to_string()))
            .collect();
        for (l, r) in pairs {
            self.adopt(&l, &r);
        }
    }

    fn adopt(&self, local: &str, remote: &str) {
        if let Some(b) = &self.bidi {
            let route = BidiRoute {
                id: b.id,
                tx: b.tx.clone(),
            };
            self.s2s.outbound.adopt(local, remote, route);
        }
    }

    /// The stream ends: the outbound side must stop using it.
    fn forget_routes(&mut self) {
        if let Some(b) = &self.bidi {
            for (l, r) in self.pairs.iter() {
                self.s2s.outbound.forget(l, r, b.id);
            }
        }
        self.verifications.abort_all();
    }

    /// A pair is authenticated: record it, log it once, offer it to the outbound side.
    fn authenticated(&mut self, local: &str, remote: &str, method: &'static str) {
        if !self.pairs.add(local, remote) {
            return;
        }
        tracing::info!(
            direction = "in",
            local = %local,
            remote = %remote,
            method,
            tls = self.tls,
            "s2s stream authenticated"
        );
        self.adopt(local, remote);
    }
}

enum Wake {
    Read,
    Send(Bytes),
    Verified(Result<Verified, tokio::task::JoinError>),
}

/// The next stanza for the peer over a bidi stream (never, without bidi).
async fn recv_bidi(bidi: &mut Option<Bidi>) -> Option<Bytes> {
    match bidi {
        Some(b) => b.rx.recv().await,
        None => std::future::pending().await,
    }
}
