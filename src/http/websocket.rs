//! RFC 7395 XMPP over WebSocket at `/xmpp-websocket`.
//!
//! The WebSocket is only a transport: each connection runs the exact TCP c2s negotiation and
//! session ([`crate::c2s::run_virtual`]) over an in-memory pipe, and this adapter translates
//! between RFC 7395 messages and the plain stream on the pipe ([`frames`]). So SASL, SASL2,
//! bind, XEP-0198 resumption (also onto a new WebSocket) and CSI behave as on TCP.
//!
//! One task per WebSocket owns both the socket and the adapter's end of the pipe. It never
//! blocks on writing into the pipe while the session may be blocked writing back (both
//! directions stay polled), and the pipe is bounded, so a client that floods stops being
//! read and one that stops reading stalls only its own session (whose idle timeout ends it).
//! When the WebSocket goes away the pipe is dropped (the session sees end of stream: detached
//! if it is resumable); when the session ends, the adapter sees end of file and closes.
//!
//! Keepalive (§3.7 leaves it to WebSocket): we Ping every `websocket.ping_secs` and close a
//! peer whose Pong does not come within `websocket.ping_timeout_secs`. A Pong is written into
//! the stream as whitespace, the keepalive a TCP client would send, so a browser that is
//! merely quiet is not closed by `c2s.idle_timeout_secs`.

mod frames;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{timeout, Instant};

use super::{Peer, Secure};
use crate::c2s::framing::Reframer;
use crate::server::ServerState;
use frames::{ClientFrame, FrameError, Inbound, Outbound};

pub use frames::NS_FRAMING;

/// The URL path of the endpoint.
pub const PATH: &str = "/xmpp-websocket";
/// The WebSocket subprotocol (RFC 7395 §3.1).
const SUBPROTOCOL: &str = "xmpp";
/// Capacity of the pipe between adapter and session, each direction. Large enough for a
/// burst of stanzas, small enough that a stalled side holds little memory.
const PIPE_BUFFER: usize = 64 * 1024;
/// Bytes read from the pipe at once.
const READ_CHUNK: usize = 4 * 1024;
/// The WebSocket layer's read buffer, allocated per connection up front (its default,
/// 128 KiB, would dwarf an idle session's footprint); larger messages grow it as needed.
const WS_READ_BUFFER: usize = 4 * 1024;
/// How long the closing handshake may take once we have sent our Close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long a connection with unread input is kept open after our Close (see `serve`).
const LINGER: Duration = Duration::from_secs(2);

pub fn routes(state: Arc<ServerState>) -> Router {
    Router::new().route(PATH, get(upgrade)).with_state(state)
}

async fn upgrade(
    State(state): State<Arc<ServerState>>,
    Extension(secure): Extension<Secure>,
    Extension(Peer(peer)): Extension<Peer>,
    ws: WebSocketUpgrade,
) -> Response {
    let ws = ws.protocols([SUBPROTOCOL]);
    // RFC 7395 §3.2: without the xmpp subprotocol there is no XMPP connection (Prosody
    // answers such requests with 501 as well).
    if ws.selected_protocol().is_none() {
        return (
            StatusCode::NOT_IMPLEMENTED,
            "this endpoint speaks only the 'xmpp' WebSocket subprotocol (RFC 7395)\n",
        )
            .into_response();
    }
    // One connection permit for the WebSocket and its session together, held by both until
    // each is done, so shutdown waits until the last frame (`<system-shutdown/>`) is out.
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        tracing::warn!(%peer, "connection limit reached; refusing WebSocket");
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let permit = Arc::new(permit);
    let max = state.limits.max_stanza_size;
    let secure = secure.stream_secure(&state);
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| serve(state, socket, peer, secure, permit))
}

/// Why the adapter stops.
enum Stop {
    /// The session closed its stream (`<close/>` was sent) or ended without one.
    SessionEnded,
    /// The client went away (WebSocket closed or failed): nothing more can be sent.
    ClientGone,
    /// A client violation: send this stream error, then close.
    Violation(FrameError),
    /// No Pong in time, or the client did not read our messages in time.
    Timeout,
}

async fn serve(
    state: Arc<ServerState>,
    mut ws: WebSocket,
    peer: SocketAddr,
    secure: bool,
    permit: Arc<OwnedSemaphorePermit>,
) {
    let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
    tokio::spawn(crate::c2s::run_virtual_holding(
        state.clone(),
        theirs,
        peer,
        secure,
        permit.clone(),
    ));
    let (rd, wr) = tokio::io::split(ours);
    let mut adapter = Adapter {
        inbound: Inbound::new(state.limits.clone()),
        reframer: Reframer::new(),
        to_pipe: BytesMut::new(),
        sent_open: false,
        send_timeout: Duration::from_secs(state.config.c2s.idle_timeout_secs.max(1)),
        domain: state.domains.first().cloned().unwrap_or_default(),
    };
    let stop = adapter.run(&state, &mut ws, rd, wr).await;
    // The pipe halves are dropped by now: the session sees end of stream.
    match stop {
        Stop::ClientGone => {
            // A client's Close is answered by the WebSocket layer on its next read.
            let _ = timeout(CLOSE_GRACE, ws.recv()).await;
        }
        Stop::SessionEnded => close(&mut ws).await,
        Stop::Timeout => {
            tracing::debug!(%peer, "WebSocket peer unresponsive; closing");
            close(&mut ws).await;
        }
        Stop::Violation(e) => {
            tracing::debug!(%peer, error = %e, "WebSocket stream error");
            let mut out = Vec::new();
            if !adapter.sent_open {
                out.push(frames::open(
                    Some(&crate::stanza::random_id()),
                    Some(&adapter.domain),
                ));
            }
            out.push(frames::stream_error(e.condition(), &e.to_string()));
            out.push(frames::CLOSE.to_string());
            let send = async {
                for m in out {
                    ws.send(Message::Text(m.into())).await?;
                }
                Ok::<(), axum::Error>(())
            };
            if matches!(timeout(CLOSE_GRACE, send).await, Ok(Ok(()))) {
                close(&mut ws).await;
                if matches!(e, FrameError::TooLarge) {
                    // The rest of the oversized message is still unread: closing the socket
                    // now would reset the connection, and a reset can discard the error and
                    // Close we just sent before the client reads them. Give it time to.
                    tokio::time::sleep(LINGER).await;
                }
            }
        }
    }
    drop(permit);
}

/// The WebSocket closing handshake (RFC 6455 §7): our Close, then wait briefly for theirs.
async fn close(ws: &mut WebSocket) {
    let handshake = async {
        let frame = CloseFrame {
            code: 1000,
            reason: Utf8Bytes::from_static(""),
        };
        if ws.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = ws.recv().await {}
    };
    let _ = timeout(CLOSE_GRACE, handshake).await;
}

struct Adapter {
    inbound: Inbound,
    reframer: Reframer,
    /// Translated client input not yet accepted by the pipe.
    to_pipe: BytesMut,
    sent_open: bool,
    /// Bound on sending one message: a client that stops reading is closed like a TCP client
    /// that stops reading (`c2s.idle_timeout_secs`).
    send_timeout: Duration,
    domain: String,
}

impl Adapter {
    async fn run(
        &mut self,
        state: &ServerState,
        ws: &mut WebSocket,
        mut rd: ReadHalf<DuplexStream>,
        mut wr: WriteHalf<DuplexStream>,
    ) -> Stop {
        let cfg = &state.config.websocket;
        let ping_every = Duration::from_secs(cfg.ping_secs.max(1));
        let pong_within = Duration::from_secs(cfg.ping_timeout_secs.max(1));
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut pong_deadline: Option<Instant> = None;
        let mut buf = vec![0u8; READ_CHUNK];
        let mut client_done = false;
        loop {
            tokio::select! {
                // Backpressure: stop reading the client while the pipe is full.
                msg = ws.recv(), if !client_done && self.to_pipe.len() < PIPE_BUFFER => {
                    match msg {
                        Some(Ok(m)) => match self.client_message(m, &mut pong_deadline) {
                            Ok(done) => client_done = done,
                            Err(stop) => return stop,
                        },
                        Some(Err(e)) => return read_error(e),
                        None => return Stop::ClientGone,
                    }
                }
                r = wr.write_buf(&mut self.to_pipe), if !self.to_pipe.is_empty() => {
                    if r.is_err() {
                        return Stop::SessionEnded;
                    }
                }
                r = rd.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return Stop::SessionEnded,
                    Ok(n) => {
                        self.reframer.feed(&buf[..n]);
                        if let Some(stop) = self.forward(ws).await {
                            return stop;
                        }
                    }
                },
                _ = ping.tick() => {
                    if pong_deadline.is_none() {
                        pong_deadline = Some(Instant::now() + pong_within);
                        if self.send(ws, Message::Ping(Bytes::new())).await.is_err() {
                            return Stop::ClientGone;
                        }
                    }
                }
                _ = sleep_until(pong_deadline), if pong_deadline.is_some() => {
                    return Stop::Timeout;
                }
            }
        }
    }

    /// One client message. `Ok(true)`: the client sent `<close/>` and is done sending.
    fn client_message(
        &mut self,
        m: Message,
        pong_deadline: &mut Option<Instant>,
    ) -> Result<bool, Stop> {
        match m {
            Message::Text(t) => match self.inbound.frame(t.as_bytes()) {
                Ok(ClientFrame::Open { header, restart }) => {
                    if restart {
                        self.reframer.restart();
                    }
                    self.to_pipe.extend_from_slice(header.as_bytes());
                }
                Ok(ClientFrame::Element(b)) => self.to_pipe.extend_from_slice(&b),
                Ok(ClientFrame::Close) => {
                    self.to_pipe.extend_from_slice(b"</stream:stream>");
                    return Ok(true);
                }
                Ok(ClientFrame::Empty) => {}
                Err(e) => return Err(Stop::Violation(e)),
            },
            Message::Binary(_) => return Err(Stop::Violation(FrameError::Binary)),
            Message::Pong(_) => {
                *pong_deadline = None;
                // Client activity for the session's idle timeout; only between elements of
                // an open stream, where RFC 6120 allows whitespace.
                if self.inbound.whitespace_allowed() && self.to_pipe.is_empty() {
                    self.to_pipe.extend_from_slice(b" ");
                }
            }
            // Answered by the WebSocket layer (the Pong goes out on its next read).
            Message::Ping(_) => {}
            Message::Close(_) => return Err(Stop::ClientGone),
        }
        Ok(false)
    }

    /// Send every complete frame of the server's stream.
    async fn forward(&mut self, ws: &mut WebSocket) -> Option<Stop> {
        loop {
            let frame = match self.reframer.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return None,
                Err(e) => {
                    // Our own session's output: a bug, not the client's fault.
                    tracing::warn!(error = %e, "cannot re-frame the session's stream");
                    return Some(Stop::SessionEnded);
                }
            };
            self.inbound.saw_outbound(&frame);
            if matches!(frame, crate::c2s::framing::OutFrame::Open { .. }) {
                self.sent_open = true;
            }
            let text = match frames::outbound(frame) {
                frames::Outbound::Text(b) => b,
                Outbound::Close => {
                    let _ = self
                        .send(ws, Message::Text(Utf8Bytes::from_static(frames::CLOSE)))
                        .await;
                    return Some(Stop::SessionEnded);
                }
            };
            let Ok(text) = Utf8Bytes::try_from(text) else {
                tracing::warn!("session wrote invalid UTF-8");
                return Some(Stop::SessionEnded);
            };
            if let Err(stop) = self.send(ws, Message::Text(text)).await {
                return Some(stop);
            }
        }
    }

    async fn send(&self, ws: &mut WebSocket, m: Message) -> Result<(), Stop> {
        match timeout(self.send_timeout, ws.send(m)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop::ClientGone),
            Err(_) => Err(Stop::Timeout),
        }
    }
}

fn read_error(e: axum::Error) -> Stop {
    // The WebSocket layer's errors are opaque here; an oversized message is the one a
    // client gets a stream error for (RFC 6120 §4.9.3.12 policy-violation, as on TCP).
    let text = e.to_string();
    if text.contains("too long") || text.contains("too big") {
        Stop::Violation(FrameError::TooLarge)
    } else {
        Stop::ClientGone
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
