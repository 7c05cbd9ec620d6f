//! The byte transport under a client stream: plaintext TCP until STARTTLS, then TLS (or TLS
//! from the first byte for XEP-0368 direct TLS), or a virtual pipe fed by an HTTP-borne
//! transport (RFC 7395 WebSocket, XEP-0206 BOSH) that translates its framing to and from a
//! plain XMPP byte stream. One enum so the session code is the same for all of them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// One end of an in-memory pipe; the other end belongs to a WebSocket or BOSH adapter.
    Virtual(Box<VirtualIo>),
    /// Transient state while the TCP stream is being handed to the TLS acceptor.
    Gone,
}

impl Transport {
    /// Whether the stream is confidential: TLS here, or an HTTP transport that its adapter
    /// vouches for (HTTPS, or loopback behind a TLS-terminating proxy). STARTTLS is never
    /// offered on a virtual transport; a non-secure one is treated like plaintext TCP
    /// (`c2s.require_tls` refuses authentication on it).
    pub fn is_tls(&self) -> bool {
        match self {
            Transport::Tls(_) => true,
            Transport::Virtual(v) => v.secure,
            _ => false,
        }
    }

    /// True for transports where STARTTLS makes sense (plain TCP).
    pub fn can_starttls(&self) -> bool {
        matches!(self, Transport::Plain(_))
    }

    /// Wait until the socket has data (or an error/EOF) to read.
    pub async fn readable(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.readable().await,
            Transport::Tls(s) => s.get_ref().0.readable().await,
            Transport::Virtual(v) => v.fill().await,
            Transport::Gone => Err(gone()),
        }
    }

    /// Read without waiting: `Some(n)` (0 at end of stream) or `None` when nothing is ready.
    /// For TLS this also returns plaintext rustls already decrypted and buffered, which no
    /// socket readiness would announce, so callers retry before waiting on [`readable`].
    ///
    /// [`readable`]: Transport::readable
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self {
            Transport::Plain(s) => match s.try_read(buf) {
                Ok(n) => Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            },
            Transport::Tls(s) => {
                // A no-op waker: the caller waits with `readable()`, which registers its own.
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut rb = ReadBuf::new(buf);
                match Pin::new(s.as_mut()).poll_read(&mut cx, &mut rb) {
                    Poll::Ready(Ok(())) => Ok(Some(rb.filled().len())),
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Ok(None),
                }
            }
            Transport::Virtual(v) => Ok(v.take_pending(buf)),
            Transport::Gone => Err(gone()),
        }
    }
}

/// The session's end of a virtual transport.
///
/// The pipe is a bounded [`tokio::io::DuplexStream`]: when the adapter stops draining it (a
/// WebSocket client not reading), the session's writes wait, and the session's idle timeout
/// closes it exactly as for a TCP client that stops reading.
pub struct VirtualIo {
    io: tokio::io::DuplexStream,
    /// Bytes read ahead by [`VirtualIo::fill`] (readiness on a pipe means reading), handed
    /// out by the next `try_read`. Empty (no allocation) while idle.
    pending: Vec<u8>,
    eof: bool,
    secure: bool,
}

impl VirtualIo {
    pub fn new(io: tokio::io::DuplexStream, secure: bool) -> VirtualIo {
        VirtualIo {
            io,
            pending: Vec::new(),
            eof: false,
            secure,
        }
    }

    /// Wait for data or end of stream. Cancel-safe: what was read is kept in `pending`.
    async fn fill(&mut self) -> io::Result<()> {
        use tokio::io::AsyncReadExt;
        if !self.pending.is_empty() || self.eof {
            return Ok(());
        }
        let mut buf = [0u8; 4096];
        let n = self.io.read(&mut buf).await?;
        if n == 0 {
            self.eof = true;
        } else {
            self.pending.extend_from_slice(&buf[..n]);
        }
        Ok(())
    }

    fn take_pending(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.pending.is_empty() {
            if self.eof {
                return Some(0);
            }
            // Nothing buffered: look without waiting.
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let mut rb = ReadBuf::new(buf);
            return match Pin::new(&mut self.io).poll_read(&mut cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        self.eof = true;
                    }
                    Some(n)
                }
                Poll::Ready(Err(_)) => Some(0),
                Poll::Pending => None,
            };
        }
        let n = self.pending.len().min(buf.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        if self.pending.is_empty() {
            self.pending = Vec::new();
        }
        Some(n)
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "transport gone")
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Virtual(v) => {
                if let Some(n) = v.take_pending(buf.initialize_unfilled()) {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Pin::new(&mut v.io).poll_read(cx, buf)
            }
            Transport::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Virtual(v) => Pin::new(&mut v.io).poll_write(cx, buf),
            Transport::Gone => Poll::Ready(Err(gone())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Virtual(v) => Pin::new(&mut v.io).poll_flush(cx),
            Transport::Gone => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Virtual(v) => Pin::new(&mut v.io).poll_shutdown(cx),
            Transport::Gone => Poll::Ready(Ok(())),
        }
    }
}
