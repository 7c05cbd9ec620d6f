//! One BOSH session: the task that owns the client end of the session's virtual stream and
//! every piece of XEP-0124 state (rid window, held requests, queued output, timers).
//!
//! Requests arrive from HTTP handlers over a channel with a oneshot for their answer. Their
//! payloads are appended to `to_server` in rid order and written into the pipe by the same
//! `select!` that reads the server's output, so a session busy writing to us never
//! deadlocks against us writing to it. The server's output is cut into elements and queued
//! until a held request can carry it. Nothing here holds a buffer while idle: the read
//! buffer lives on the stack of a poll, and the queues are empty between exchanges.

use axum::http::HeaderValue;
use bytes::{Buf, Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt, DuplexStream, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::body::{self, Request};
use super::window::{Rid, Window};
use super::{Bosh, Handle, Reply};
use crate::c2s::framing::{OutFrame, Reframer};
use crate::xml::{escape, NS_CLIENT, NS_STREAM};

/// The BOSH version implemented (XEP-0124 1.11).
const VERSION: (u32, u32) = (1, 11);
/// Shortest polling interval advertised (§7.2 'polling'); a polling session (hold 0) also
/// gets this much more inactivity (§11).
const POLLING_SECS: u64 = 2;
/// The session creation response waits this long for the stream features (XEP-0206 §5).
const CREATION_WAIT: Duration = Duration::from_secs(10);
/// After the session ends: how long the server's end of the stream is drained, and a
/// terminate body waits for a request to carry it.
const CLOSING_GRACE: Duration = Duration::from_secs(10);
/// Capacity of the in-memory pipe in each direction.
const PIPE_BUF: usize = 64 * 1024;

/// A request handed to the session, with where its answer goes.
pub(crate) struct Incoming {
    pub req: Request,
    pub reply: oneshot::Sender<Reply>,
}

/// A processed request waiting for data (or its 'wait' to pass).
struct Held {
    rid: u64,
    reply: oneshot::Sender<Reply>,
    deadline: Instant,
    /// The session creation request: its answer carries the session's attributes.
    creation: bool,
}

/// How the stream to the session core ends when the BOSH session does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Close {
    /// The client terminated: `</stream:stream>` after its last payloads.
    Clean,
    /// Inactivity, overflow, protocol violation: end of stream without a close tag, like a
    /// dropped TCP connection (XEP-0198 resumption applies).
    Drop,
    /// The server already closed its stream.
    Remote,
}

/// Negotiated session parameters.
struct Params {
    wait: Duration,
    hold: usize,
    requests: usize,
    inactivity: Duration,
    max_pause: u64,
    legacy: bool,
    content_type: Option<HeaderValue>,
    max_queue: usize,
    /// Bytes of client input not yet taken by the session core before requests wait.
    max_input: usize,
    /// Write whitespace into the stream on an empty request at most this often, so the
    /// core's idle timeout sees a client that is polling as alive.
    keepalive: Duration,
}

pub(crate) struct Actor {
    bosh: Arc<Bosh>,
    sid: String,
    p: Params,
    domain: String,
    lang: String,
    rx: mpsc::Receiver<Box<Incoming>>,
    rd: ReadHalf<DuplexStream>,
    wr: WriteHalf<DuplexStream>,
    /// Bytes for the session core, not yet written into the pipe.
    to_server: BytesMut,
    reframer: Reframer,
    window: Window,
    /// Requests that arrived ahead of a missing rid.
    early: BTreeMap<u64, Box<Incoming>>,
    held: VecDeque<Held>,
    queue: Vec<Bytes>,
    queue_bytes: usize,
    /// The creation response's attributes, until it is sent.
    creation_attrs: Option<Vec<(&'static str, String)>>,
    authid: Option<String>,
    /// Since when no request is held (for the inactivity timeout).
    idle_since: Instant,
    /// The current inactivity limit: normal, or a client's pause (§12).
    inactivity: Duration,
    last_input: Instant,
    eof: bool,
    /// Set when the session has ended: until then, the pipe is drained.
    closing: Option<Instant>,
    /// A terminate body no request was there to carry yet.
    pending_terminate: Option<Bytes>,
    done: bool,
}

/// Handle a session creation request (§7): start the stream, the task, and answer when the
/// stream features are there.
pub(crate) async fn create(bosh: Arc<Bosh>, req: Request, peer: SocketAddr, secure: bool) -> Reply {
    let state = bosh.state.clone();
    let legacy = req.ver.is_none();
    let domain = match req.to.as_deref().map(str::to_ascii_lowercase) {
        None => return Reply::terminate("improper-addressing", legacy),
        Some(d) if d.is_empty() => return Reply::terminate("improper-addressing", legacy),
        Some(d) if !state.domains.contains(&d) => return Reply::terminate("host-unknown", legacy),
        Some(d) => d,
    };
    let sid = format!(
        "{}{}",
        crate::stanza::random_id(),
        crate::stanza::random_id()
    );
    let (p, attrs) = negotiate(&state, &req, &sid, &domain);
    let (client, server) = tokio::io::duplex(PIPE_BUF);
    tokio::spawn(crate::c2s::run_virtual(state.clone(), server, peer, secure));
    let (tx, rx) = mpsc::channel(8);
    let lang = req.lang.clone().unwrap_or_else(|| "en".into());
    let mut actor = Actor::new(
        bosh.clone(),
        sid.clone(),
        p,
        domain,
        lang,
        rx,
        client,
        req.rid,
    );
    actor.creation_attrs = Some(attrs);
    actor.write_header();
    let (reply, answer) = oneshot::channel();
    actor.held.push_back(Held {
        rid: req.rid,
        reply,
        deadline: Instant::now() + CREATION_WAIT,
        creation: true,
    });
    bosh.insert(sid.clone(), Handle { tx, secure });
    tracing::debug!(%peer, sid = %sid, "BOSH session created");
    tokio::spawn(actor.run());
    answer
        .await
        .unwrap_or_else(|_| Reply::terminate("internal-server-error", legacy))
}

/// The session's parameters from the client's wishes and `[bosh]` (§7.2: 'wait' and 'hold'
/// only lowered; 'requests' is 'hold' + 1), and the creation response's attributes.
fn negotiate(
    state: &crate::server::ServerState,
    req: &Request,
    sid: &str,
    domain: &str,
) -> (Params, Vec<(&'static str, String)>) {
    let cfg = &state.config.bosh;
    let hold = req.hold.unwrap_or(1).min(cfg.max_hold);
    let wait = req.wait.unwrap_or(cfg.max_wait_secs).min(cfg.max_wait_secs);
    let requests = hold + 1;
    let inactivity = cfg.max_inactivity_secs + if hold == 0 { POLLING_SECS } else { 0 };
    let mut attrs: Vec<(&'static str, String)> = vec![
        ("sid", sid.to_owned()),
        ("wait", wait.to_string()),
        ("requests", requests.to_string()),
        ("hold", hold.to_string()),
        ("inactivity", inactivity.to_string()),
        ("polling", POLLING_SECS.to_string()),
        ("from", domain.to_owned()),
        ("xmlns:xmpp", super::NS_XBOSH.to_string()),
        ("xmpp:version", "1.0".to_string()),
        ("xmpp:restartlogic", "true".to_string()),
        ("xmlns:stream", NS_STREAM.to_string()),
    ];
    if cfg.max_pause_secs > 0 {
        attrs.push(("maxpause", cfg.max_pause_secs.to_string()));
    }
    if let Some(v) = req.ver {
        let (a, b) = v.min(VERSION);
        attrs.push(("ver", format!("{a}.{b}")));
    }
    let p = Params {
        wait: Duration::from_secs(wait),
        hold: hold as usize,
        requests: requests as usize,
        inactivity: Duration::from_secs(inactivity),
        max_pause: cfg.max_pause_secs,
        legacy: req.ver.is_none(),
        content_type: req
            .content
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok()),
        max_queue: cfg.max_queue_bytes,
        max_input: super::max_body(state),
        keepalive: Duration::from_secs((state.config.c2s.idle_timeout_secs / 2).max(1)),
    };
    (p, attrs)
}

/// Read what the session wrote into the reframer. The buffer is on the stack of one poll,
/// never part of the task's state while it waits.
async fn read_into(
    rd: &mut ReadHalf<DuplexStream>,
    reframer: &mut Reframer,
) -> std::io::Result<usize> {
    poll_fn(|cx| {
        let mut buf = [0u8; 8192];
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut *rd).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                reframer.feed(rb.filled());
                Poll::Ready(Ok(rb.filled().len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

impl Actor {
    #[allow(clippy::too_many_arguments)]
    fn new(
        bosh: Arc<Bosh>,
        sid: String,
        p: Params,
        domain: String,
        lang: String,
        rx: mpsc::Receiver<Box<Incoming>>,
        pipe: DuplexStream,
        first_rid: u64,
    ) -> Actor {
        let (rd, wr) = tokio::io::split(pipe);
        let now = Instant::now();
        Actor {
            bosh,
            sid,
            domain,
            lang,
            rx,
            rd,
            wr,
            to_server: BytesMut::new(),
            reframer: Reframer::new(),
            window: Window::new(first_rid, p.requests as u64),
            early: BTreeMap::new(),
            held: VecDeque::new(),
            queue: Vec::new(),
            queue_bytes: 0,
            creation_attrs: None,
            authid: None,
            idle_since: now,
            inactivity: p.inactivity,
            last_input: now,
            eof: false,
            closing: None,
            pending_terminate: None,
            done: false,
            p,
        }
    }

    async fn run(mut self) {
        while !self.done {
            let deadline = self.deadline();
            tokio::select! {
                // Backpressure: while the session core has not taken what earlier requests
                // carried, new requests wait in the channel (and their HTTP connections).
                inc = self.rx.recv(), if self.to_server.len() <= self.p.max_input => match inc {
                    Some(inc) => self.on_request(inc).await,
                    None => break,
                },
                r = read_into(&mut self.rd, &mut self.reframer), if !self.eof => {
                    self.on_read(r).await
                }
                r = self.wr.write(&self.to_server), if !self.to_server.is_empty() => match r {
                    Ok(n) => {
                        self.to_server.advance(n);
                        if self.to_server.is_empty() {
                            self.to_server = BytesMut::new(); // no capacity kept while idle
                        }
                    }
                    Err(_) => {
                        self.to_server = BytesMut::new();
                        self.end_with(Some("remote-connection-failed"), Close::Remote).await;
                    }
                },
                () = tokio::time::sleep_until(deadline) => self.on_timer().await,
            }
            if self.eof && self.closing.is_some() && self.pending_terminate.is_none() {
                self.done = true;
            }
        }
        self.bosh.remove(&self.sid);
        tracing::debug!(sid = %self.sid, "BOSH session ended");
    }

    fn write_header(&mut self) {
        let header = format!(
            "<stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAM}' to='{}' version='1.0' xml:lang='{}'>",
            escape(&self.domain),
            escape(&self.lang),
        );
        self.input(header.as_bytes());
    }

    fn input(&mut self, b: &[u8]) {
        self.to_server.extend_from_slice(b);
        self.last_input = Instant::now();
    }

    fn deadline(&self) -> Instant {
        let now = Instant::now();
        if let Some(c) = self.closing {
            return c;
        }
        let mut d = now + Duration::from_secs(86400);
        for h in &self.held {
            d = d.min(h.deadline);
        }
        if self.held.is_empty() {
            d = d.min(self.idle_since + self.inactivity);
        }
        d
    }

    async fn on_request(&mut self, inc: Box<Incoming>) {
        if self.closing.is_some() {
            let reply = match self.pending_terminate.take() {
                Some(b) => Reply::ok(b, self.p.content_type.clone()),
                None => Reply::terminate("item-not-found", self.p.legacy),
            };
            let _ = inc.reply.send(reply);
            return;
        }
        // §12: a pause lasts until the next request.
        self.inactivity = self.p.inactivity;
        let rid = inc.req.rid;
        match self.window.classify(rid) {
            Rid::Answered(b) => {
                let _ = inc.reply.send(Reply::ok(b, self.p.content_type.clone()));
                if self.held.is_empty() {
                    self.idle_since = Instant::now();
                }
            }
            Rid::Processed => {
                if let Some(h) = self.held.iter_mut().find(|h| h.rid == rid) {
                    // §14.3: answer the earlier copy with a recoverable error; this one is held.
                    let old = std::mem::replace(&mut h.reply, inc.reply);
                    let _ = old.send(self.recoverable());
                } else {
                    self.fail("item-not-found", inc.reply).await;
                }
            }
            Rid::Beyond => self.fail("item-not-found", inc.reply).await,
            Rid::Early => {
                if let Some(old) = self.early.remove(&rid) {
                    let _ = old.reply.send(self.recoverable());
                } else if self.too_many(&inc.req) {
                    return self.fail("policy-violation", inc.reply).await;
                }
                self.early.insert(rid, inc);
            }
            Rid::Next => {
                if self.too_many(&inc.req) {
                    return self.fail("policy-violation", inc.reply).await;
                }
                self.process(inc).await;
                while self.closing.is_none() {
                    let Some(next) = self.early.remove(&self.window.next()) else {
                        break;
                    };
                    self.process(next).await;
                }
            }
        }
    }

    fn recoverable(&self) -> Reply {
        Reply::ok(
            body::response(&[("type", "error")], &[]),
            self.p.content_type.clone(),
        )
    }

    /// §11: more unanswered requests than 'requests' (one more if this one pauses or
    /// terminates).
    fn too_many(&self, req: &Request) -> bool {
        let allowed = self.p.requests + usize::from(req.pause.is_some() || req.terminate);
        self.held.len() + self.early.len() + 1 > allowed
    }

    /// The next request in rid order: its payloads go into the stream, then it is held.
    async fn process(&mut self, inc: Box<Incoming>) {
        let Incoming { req, reply } = *inc;
        self.window.advance();
        let now = Instant::now();
        if req.restart {
            // XEP-0206 §5: payloads of a restart request are ignored.
            self.reframer.restart();
            if let Some(l) = req.lang {
                self.lang = l;
            }
            self.write_header();
        } else if req.payloads.is_empty() {
            if now >= self.last_input + self.p.keepalive {
                self.input(b" ");
            }
        } else {
            for p in &req.payloads {
                self.input(p);
            }
        }
        if req.terminate {
            self.held.push_back(Held {
                rid: req.rid,
                reply,
                deadline: now,
                creation: false,
            });
            self.input(b"</stream:stream>");
            return self.end_with(None, Close::Clean).await;
        }
        if let Some(pause) = req.pause.filter(|_| self.p.max_pause > 0) {
            return self.pause(pause, reply);
        }
        self.held.push_back(Held {
            rid: req.rid,
            reply,
            deadline: now + self.p.wait,
            creation: false,
        });
        // §8: no more than 'hold' waiting: the oldest goes back, with whatever is queued.
        while self.held.len() > self.p.hold {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            let payloads = std::mem::take(&mut self.queue);
            self.queue_bytes = 0;
            self.answer(h, &payloads);
        }
        self.pump();
    }

    /// §12: answer everything now; the pause response carries no payloads and is not
    /// remembered. The inactivity limit is the pause until the next request.
    fn pause(&mut self, secs: u64, reply: oneshot::Sender<Reply>) {
        while let Some(h) = self.held.pop_front() {
            let payloads = std::mem::take(&mut self.queue);
            self.queue_bytes = 0;
            self.answer(h, &payloads);
        }
        let _ = reply.send(Reply::ok(
            body::response(&[], &[]),
            self.p.content_type.clone(),
        ));
        self.idle_since = Instant::now();
        self.inactivity = Duration::from_secs(secs.min(self.p.max_pause));
    }

    /// Queued output goes out on the oldest held request.
    fn pump(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        if let Some(h) = self.held.pop_front() {
            let payloads = std::mem::take(&mut self.queue);
            self.queue_bytes = 0;
            self.answer(h, &payloads);
        }
    }

    fn answer(&mut self, h: Held, payloads: &[Bytes]) {
        let body = if h.creation {
            let mut attrs = self.creation_attrs.take().unwrap_or_default();
            if let Some(id) = &self.authid {
                attrs.push(("authid", id.clone()));
            }
            let refs: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            body::response(&refs, payloads)
        } else {
            body::response(&[], payloads)
        };
        self.window.answered(h.rid, body.clone());
        let _ = h.reply.send(Reply::ok(body, self.p.content_type.clone()));
        if self.held.is_empty() {
            self.idle_since = Instant::now();
        }
    }

    async fn on_read(&mut self, r: std::io::Result<usize>) {
        match r {
            Ok(n) if n > 0 => {}
            _ => {
                self.eof = true;
                if self.closing.is_none() {
                    let payloads = std::mem::take(&mut self.queue);
                    self.end(Some("remote-connection-failed"), &payloads, Close::Remote)
                        .await;
                }
                return;
            }
        }
        loop {
            let frame = match self.reframer.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(sid = %self.sid, error = %e, "BOSH: server stream unreadable");
                    self.end_with(Some("internal-server-error"), Close::Drop)
                        .await;
                    break;
                }
            };
            if self.closing.is_some() {
                continue; // drained and discarded
            }
            match frame {
                OutFrame::Open { id, .. } => self.authid = id,
                OutFrame::Element(b) if b.starts_with(b"<stream:error") => {
                    // XEP-0206 §7: the stanzas before it, then the error itself.
                    let mut payloads = std::mem::take(&mut self.queue);
                    payloads.push(b);
                    self.end(Some("remote-stream-error"), &payloads, Close::Remote)
                        .await;
                }
                OutFrame::Element(b) => {
                    self.queue_bytes += b.len();
                    self.queue.push(b);
                    if self.queue_bytes > self.p.max_queue {
                        tracing::info!(sid = %self.sid, "BOSH client not polling: queue overflow");
                        self.queue.clear();
                        self.end_with(Some("undefined-condition"), Close::Drop)
                            .await;
                    }
                }
                OutFrame::Close => {
                    let payloads = std::mem::take(&mut self.queue);
                    self.end(None, &payloads, Close::Remote).await;
                }
            }
        }
        self.reframer.shrink();
        self.pump();
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        if let Some(c) = self.closing {
            if now >= c {
                self.done = true;
            }
            return;
        }
        // §8: a request held for 'wait' goes back empty (answers stay in rid order).
        while self.held.front().is_some_and(|h| h.deadline <= now) {
            if let Some(h) = self.held.pop_front() {
                let payloads = std::mem::take(&mut self.queue);
                self.queue_bytes = 0;
                self.answer(h, &payloads);
            }
        }
        if self.held.is_empty() && now >= self.idle_since + self.inactivity {
            // §12: the client is gone; end the session without telling it.
            tracing::debug!(sid = %self.sid, "BOSH session inactive");
            self.bosh.remove(&self.sid);
            self.end_with(None, Close::Drop).await;
            self.pending_terminate = None;
        }
    }

    /// A terminal binding error caused by this request.
    async fn fail(&mut self, condition: &str, reply: oneshot::Sender<Reply>) {
        let _ = reply.send(Reply::terminate(condition, self.p.legacy));
        self.end_with(Some(condition), Close::Drop).await;
    }

    async fn end_with(&mut self, condition: Option<&str>, how: Close) {
        self.queue.clear();
        self.end(condition, &[], how).await;
    }

    /// The session ends: the oldest held request carries the terminate body (and
    /// `payloads`); other requests get an empty body after a client's terminate (§13),
    /// the terminal condition otherwise.
    async fn end(&mut self, condition: Option<&str>, payloads: &[Bytes], how: Close) {
        if self.closing.is_some() {
            return;
        }
        self.closing = Some(Instant::now() + CLOSING_GRACE);
        self.queue_bytes = 0;
        let first = body::terminate(condition, payloads);
        let rest = match how {
            Close::Clean => body::response(&[], &[]),
            _ => body::terminate(condition, &[]),
        };
        let ct = self.p.content_type.clone();
        match self.held.pop_front() {
            Some(h) => {
                let _ = h.reply.send(Reply::ok(first, ct.clone()));
            }
            None => self.pending_terminate = Some(first),
        }
        for h in self.held.drain(..) {
            let _ = h.reply.send(Reply::ok(rest.clone(), ct.clone()));
        }
        for (_, i) in std::mem::take(&mut self.early) {
            let _ = i.reply.send(Reply::ok(rest.clone(), ct.clone()));
        }
        if how == Close::Drop {
            self.to_server = BytesMut::new();
            let _ = self.wr.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    /// One of these lives per BOSH session, idle ones included (the pipe and the session
    /// core are counted by the c2s budget).
    #[test]
    fn per_session_state_stays_small() {
        let size = std::mem::size_of::<super::Actor>();
        assert!(size <= 1024, "Actor: {size} bytes");
    }
}
