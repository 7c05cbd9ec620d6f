//! Client-to-server streams (RFC 6120): the accept loop, the per-connection [`Conn`] that
//! owns the socket, stream negotiation (`negotiate`) and the bound session loop (`session`).
//! One task per connection; it is the only writer to its socket.

use bytes::BytesMut;
use minidom::Element;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::sasl::ChannelBindings;
use crate::server::ServerState;
use crate::xml::{self, Event, StreamParser, XmlError, NS_STREAM};

pub mod csi;
pub mod fast;
pub mod framing;
mod negotiate;
mod sasl2;
pub mod session;
pub mod sm;
mod transport;

pub use transport::{Transport, VirtualIo};

/// Bytes taken from the socket per read. The buffer lives on the stack of a synchronous
/// function (never in a session's future), so an idle session holds no read buffer at all:
/// it waits for readiness first and reads only when there is something to read.
const READ_CHUNK: usize = 16 * 1024;

pub async fn accept_loop(state: Arc<ServerState>, listener: TcpListener, direct_tls: bool) {
    let what = if direct_tls { "c2s_direct_tls" } else { "c2s" };
    crate::server::accept_loop(state, listener, what, move |st, tcp, peer| {
        run_connection(st, tcp, peer, direct_tls)
    })
    .await
}

async fn run_connection(
    state: Arc<ServerState>,
    tcp: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
) {
    let io = if direct_tls {
        let timeout = Duration::from_secs(state.config.c2s.login_timeout_secs);
        match Box::pin(tokio::time::timeout(
            timeout,
            state.tls.acceptor.accept(tcp),
        ))
        .await
        {
            Ok(Ok(s)) => Transport::Tls(Box::new(s)),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => return,
        }
    } else {
        Transport::Plain(tcp)
    };
    let mut conn = Conn::new(state, io, peer);
    // Both phases are boxed: a task's future is as large as its largest state, and
    // negotiation (SASL, storage lookups) is far larger than an idle session loop. Boxing
    // frees negotiation's state once it is done instead of reserving it for the session's life.
    let end = match Box::pin(negotiate::negotiate(&mut conn)).await {
        Ok(bound) => Box::pin(session::run(&mut conn, bound)).await,
        Err(end) => end,
    };
    Box::pin(conn.finish(end)).await;
}

/// Run a client stream over a virtual transport (see [`VirtualIo`]): the HTTP module's
/// WebSocket and BOSH adapters translate their framing into plain XMPP stream bytes written
/// into `pipe`, and read the server's stream back from it. Negotiation and the session are
/// exactly the TCP ones. Holds a connection permit like a TCP connection; returns when the
/// stream ends (the adapter sees end of file on its end of the pipe).
pub async fn run_virtual(
    state: Arc<ServerState>,
    pipe: tokio::io::DuplexStream,
    peer: SocketAddr,
    secure: bool,
) {
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        tracing::warn!(%peer, "connection limit reached; refusing");
        return;
    };
    run_virtual_holding(state, pipe, peer, secure, permit).await
}

/// [`run_virtual`] for an adapter that took the connection permit itself (so it can refuse
/// before accepting, and share the permit to keep it until its own last frame is out:
/// shutdown waits for every permit). `guard` is dropped when the stream ends.
pub async fn run_virtual_holding<G: Send + 'static>(
    state: Arc<ServerState>,
    pipe: tokio::io::DuplexStream,
    peer: SocketAddr,
    secure: bool,
    guard: G,
) {
    let io = Transport::Virtual(Box::new(VirtualIo::new(pipe, secure)));
    let mut conn = Conn::new(state, io, peer);
    let end = match Box::pin(negotiate::negotiate(&mut conn)).await {
        Ok(bound) => Box::pin(session::run(&mut conn, bound)).await,
        Err(end) => end,
    };
    Box::pin(conn.finish(end)).await;
    drop(guard);
}

/// Why a stream ends.
#[derive(Debug)]
pub enum End {
    /// The peer closed the stream or the TCP connection.
    PeerClosed,
    /// We close with this RFC 6120 §4.9.3 condition and optional text.
    Error(&'static str, Option<String>),
    /// I/O failure: nothing more can be written.
    Io,
    /// A stream error with an application-specific condition element (serialized) after the
    /// defined one, e.g. XEP-0198's `<handled-count-too-high/>`.
    ErrorApp(&'static str, String, Option<String>),
    /// The connection was handed to another task (XEP-0198 resumption): not ours to close.
    Handover,
}

impl From<XmlError> for End {
    fn from(e: XmlError) -> Self {
        End::Error(e.condition(), Some(e.to_string()))
    }
}

pub struct Conn {
    pub state: Arc<ServerState>,
    pub io: Transport,
    pub parser: StreamParser,
    /// A read may find more than one chunk waiting (or TLS may hold decrypted data): try
    /// reading again before waiting for readiness.
    pub(crate) read_pending: bool,
    pub out: BytesMut,
    pub peer: SocketAddr,
    pub bindings: ChannelBindings,
    /// The domain this stream is for (from the header's 'to').
    pub domain: String,
    pub stream_id: String,
    header_sent: bool,
    pub last_read: tokio::time::Instant,
    pub last_write: tokio::time::Instant,
}

impl Conn {
    pub fn new(state: Arc<ServerState>, io: Transport, peer: SocketAddr) -> Conn {
        let parser = StreamParser::new(state.limits.clone());
        let domain = state.domains.first().cloned().unwrap_or_default();
        let mut conn = Conn {
            state,
            io,
            parser,
            // Direct TLS: the handshake may already have buffered application data.
            read_pending: true,
            out: BytesMut::new(),
            peer,
            bindings: ChannelBindings::default(),
            domain,
            stream_id: String::new(),
            header_sent: false,
            last_read: tokio::time::Instant::now(),
            last_write: tokio::time::Instant::now(),
        };
        conn.refresh_bindings();
        conn
    }

    pub fn secure(&self) -> bool {
        self.io.is_tls()
    }

    pub fn refresh_bindings(&mut self) {
        if let Transport::Tls(s) = &self.io {
            self.bindings = self.state.tls.bindings(s.get_ref().1);
        }
    }

    /// Read once from the socket into the parser. `Ok(false)`: the peer closed.
    ///
    /// Waits for readiness without holding a buffer, then reads synchronously (see
    /// [`READ_CHUNK`]). Cancel-safe: bytes read are in the parser before this returns.
    pub async fn read_some(&mut self) -> Result<bool, End> {
        loop {
            if !self.read_pending {
                self.io.readable().await.map_err(|_| End::Io)?;
            }
            match self.read_ready() {
                Ok(Some(0)) => return Ok(false),
                Ok(Some(_)) => {
                    self.read_pending = true;
                    self.last_read = tokio::time::Instant::now();
                    return Ok(true);
                }
                Ok(None) => self.read_pending = false,
                Err(_) => return Err(End::Io),
            }
        }
    }

    /// One non-blocking read into the parser: `Some(n)` bytes (0: end of stream), `None`
    /// when nothing is available yet.
    fn read_ready(&mut self) -> std::io::Result<Option<usize>> {
        let mut buf = [0u8; READ_CHUNK];
        let n = self.io.try_read(&mut buf)?;
        if let Some(n) = n {
            self.parser.feed(&buf[..n]);
        }
        Ok(n)
    }

    /// Move the live connection out (XEP-0198 resumption hands it to the session being
    /// resumed), leaving this one without a transport.
    pub fn take(&mut self) -> Conn {
        let limits = self.state.limits.clone();
        Conn {
            state: self.state.clone(),
            io: std::mem::replace(&mut self.io, Transport::Gone),
            parser: std::mem::replace(&mut self.parser, StreamParser::new(limits)),
            read_pending: self.read_pending,
            out: std::mem::take(&mut self.out),
            peer: self.peer,
            bindings: std::mem::take(&mut self.bindings),
            domain: self.domain.clone(),
            stream_id: self.stream_id.clone(),
            header_sent: std::mem::replace(&mut self.header_sent, false),
            last_read: self.last_read,
            last_write: self.last_write,
        }
    }

    /// Release idle buffers (memory per idle session matters at scale).
    pub fn shrink(&mut self) {
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = BytesMut::new();
        }
        self.parser.shrink();
    }

    /// The next parser event, reading as needed.
    pub async fn next_event(&mut self) -> Result<Event, End> {
        loop {
            if let Some(ev) = self.parser.next_event()? {
                return Ok(ev);
            }
            if !self.read_some().await? {
                return Err(End::PeerClosed);
            }
        }
    }

    /// Our stream header (RFC 6120 §4.7), with a fresh stream id.
    pub fn send_header(&mut self) {
        self.stream_id = crate::stanza::random_id();
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' id='{}' from='{}' version='1.0' xml:lang='en'>",
            xml::NS_CLIENT,
            NS_STREAM,
            self.stream_id,
            xml::escape(&self.domain),
        );
        self.out.extend_from_slice(header.as_bytes());
        self.header_sent = true;
    }

    pub fn write_el(&mut self, el: &Element) {
        self.out.extend_from_slice(&xml::to_bytes(el));
    }

    pub fn write_bytes(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    pub async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.io.write_all(&self.out).await.map_err(|_| End::Io)?;
        self.out.clear();
        self.io.flush().await.map_err(|_| End::Io)?;
        self.last_write = tokio::time::Instant::now();
        Ok(())
    }

    /// Close the stream: a stream error if there is one (preceded by our header when none was
    /// sent yet, RFC 6120 §4.9.1.1), then `</stream:stream>`, then the TCP/TLS close.
    pub async fn finish(mut self, end: End) {
        let (cond, app, text) = match end {
            End::Io | End::Handover => return,
            End::PeerClosed => (None, None, None),
            End::Error(cond, text) => (Some(cond), None, text),
            End::ErrorApp(cond, app, text) => (Some(cond), Some(app), text),
        };
        if let Some(cond) = cond {
            tracing::debug!(peer = %self.peer, condition = cond, text = ?text, "stream error");
            if !self.header_sent {
                self.send_header();
            }
            let e = xml::stream_error(cond, app.as_deref(), text.as_deref());
            self.out.extend_from_slice(e.as_bytes());
        }
        if self.header_sent {
            self.out.extend_from_slice(b"</stream:stream>");
        }
        let write = async {
            let _ = self.flush().await;
            let _ = self.io.shutdown().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
    }
}

#[cfg(test)]
mod tests {
    /// Per-session memory is a budget (issue 7: a few KiB per idle session): these structs
    /// live once per connection, so growth here multiplies by every session.
    #[test]
    fn per_session_structs_stay_within_budget() {
        use std::mem::size_of;
        assert!(
            size_of::<super::Conn>() <= 512,
            "Conn: {}",
            size_of::<super::Conn>()
        );
        assert!(size_of::<crate::router::Mailbox>() <= 192);
        assert!(size_of::<crate::router::Resource>() <= 320);
    }
}
