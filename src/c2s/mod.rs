//! Client-to-server streams (RFC 6120): the accept loop, the per-connection [`Conn`] that
//! owns the socket, stream negotiation (`negotiate`) and the bound session loop (`session`).
//! One task per connection; it is the only writer to its socket.

use bytes::{Bytes, BytesMut};
use minidom::Element;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::sasl::ChannelBindings;
use crate::server::ServerState;
use crate::stanza::NS_STREAMS;
use crate::xml::{self, Event, StreamParser, XmlError, NS_STREAM};

mod negotiate;
pub mod session;
mod transport;

pub use transport::Transport;

/// Read chunk size: large enough for typical stanzas in one read, small enough to keep idle
/// sessions cheap (the buffer is released when the parser has consumed it).
const READ_CHUNK: usize = 4096;

pub async fn accept_loop(state: Arc<ServerState>, listener: TcpListener, direct_tls: bool) {
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "connection limit reached; refusing");
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let st = state.clone();
                    tokio::spawn(async move {
                        run_connection(st, tcp, peer, direct_tls).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn run_connection(
    state: Arc<ServerState>,
    tcp: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
) {
    let io = if direct_tls {
        let timeout = Duration::from_secs(state.config.c2s.login_timeout_secs);
        match tokio::time::timeout(timeout, state.tls.acceptor.accept(tcp)).await {
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
    match negotiate::negotiate(&mut conn).await {
        Ok(bound) => session::run(conn, bound).await,
        Err(end) => conn.finish(end).await,
    }
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
    rbuf: BytesMut,
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
            rbuf: BytesMut::new(),
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
    pub async fn read_some(&mut self) -> Result<bool, End> {
        self.rbuf.reserve(READ_CHUNK);
        let n = self
            .io
            .read_buf(&mut self.rbuf)
            .await
            .map_err(|_| End::Io)?;
        if n == 0 {
            return Ok(false);
        }
        self.parser.feed(&self.rbuf[..n]);
        self.rbuf.clear();
        self.last_read = tokio::time::Instant::now();
        Ok(true)
    }

    /// Release idle buffers (memory per idle session matters at scale).
    pub fn shrink(&mut self) {
        if self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
        }
        if self.out.is_empty() && self.out.capacity() > READ_CHUNK {
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
        let data: Bytes = self.out.split().freeze();
        self.io.write_all(&data).await.map_err(|_| End::Io)?;
        self.io.flush().await.map_err(|_| End::Io)?;
        self.last_write = tokio::time::Instant::now();
        Ok(())
    }

    /// Close the stream: a stream error if there is one (preceded by our header when none was
    /// sent yet, RFC 6120 §4.9.1.1), then `</stream:stream>`, then the TCP/TLS close.
    pub async fn finish(mut self, end: End) {
        match &end {
            End::Io => return,
            End::PeerClosed => {}
            End::Error(cond, text) => {
                tracing::debug!(peer = %self.peer, condition = cond, text = ?text, "stream error");
                if !self.header_sent {
                    self.send_header();
                }
                let mut e = format!("<stream:error><{cond} xmlns='{NS_STREAMS}'/>");
                if let Some(t) = text {
                    e.push_str(&format!(
                        "<text xmlns='{NS_STREAMS}' xml:lang='en'>{}</text>",
                        xml::escape(t)
                    ));
                }
                e.push_str("</stream:error>");
                self.out.extend_from_slice(e.as_bytes());
            }
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
