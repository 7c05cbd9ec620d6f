//! Outbound s2s streams: one per (local domain, remote domain) pair, opened on demand,
//! authenticated with SASL EXTERNAL (XEP-0178) or dialback (XEP-0220), with a bounded
//! per-pair queue while connecting; queued stanzas bounce when the domain cannot be
//! reached (RFC 6120 §8.3.3).
//!
//! Each pair is one task owning its socket, reached through two bounded channels: stanzas
//! (`s2s.max_queue`, drained only once the stream is authenticated) and `db:verify`
//! requests (served as soon as the stream can carry them, see `out_stream`). The task
//! removes its pair from the map before it stops reading the channels, so a stanza is
//! either taken by it or finds the channel closed and starts a new pair: none is lost
//! while queued (stanzas already written to a stream that then breaks are, as s2s has no
//! acknowledgements). A second local domain (e.g. `conference.<d>`) to the same remote
//! gets its own stream (XEP-0220 §4.3 allows that instead of multiplexing over one).
//!
//! XEP-0288: an inbound stream the peer made bidirectional is used for (local, remote)
//! while it lasts ([`Outbound::adopt`]); our own streams ask for bidi when offered, and
//! the peer's stanzas on them go through [`super::stream::dispatch`].

use bytes::Bytes;
use jid::Jid;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::dialback::NS_DIALBACK;
use super::out_stream::{establish, Conn, Method, OutError, Verify};
use super::resolve::Resolver;
use super::stream::{dispatch, to_server_ns, Pairs};
use super::{S2s, S2sConfig};
use crate::federation::RemoteError;
use crate::stanza::{Condition, StanzaError, NS_STANZAS};
use crate::xml::{escape, Event, NsContext, Stanza, NS_CLIENT};

type PairKey = (String, String);

pub struct Outbound {
    pub(super) config: S2sConfig,
    resolver: Resolver,
    pairs: Mutex<HashMap<PairKey, Pair>>,
    bidi: Mutex<HashMap<PairKey, BidiRoute>>,
}

/// The handles of one pair's task.
#[derive(Clone)]
struct Pair {
    stanzas: mpsc::Sender<Bytes>,
    control: mpsc::Sender<Verify>,
}

/// Why a dialback verification could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("authoritative server unreachable: {0}")]
    Unreachable(String),
    #[error("timed out")]
    Timeout,
}

/// A stream another server opened to us, usable to send to it (XEP-0288).
pub struct BidiRoute {
    /// Unique per stream, to [`Outbound::forget`] exactly this one.
    pub id: u64,
    /// Bytes written as they are (complete stanzas, already in jabber:server form).
    pub tx: tokio::sync::mpsc::Sender<Bytes>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Outbound {
    pub fn new(config: &S2sConfig) -> Outbound {
        Outbound {
            config: config.clone(),
            resolver: Resolver::default(),
            pairs: Mutex::new(HashMap::new()),
            bidi: Mutex::new(HashMap::new()),
        }
    }

    /// [`crate::federation::Remote::send`].
    pub fn send(
        &self,
        s2s: &Arc<S2s>,
        from: &Jid,
        to: &Jid,
        stanza: Bytes,
    ) -> Result<(), RemoteError> {
        let key = (from.domain().to_string(), to.domain().to_string());
        if let Some(route) = lock(&self.bidi).get(&key) {
            match route.tx.try_send(to_server_ns(stanza.clone())) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => return Err(RemoteError::QueueFull),
                Err(mpsc::error::TrySendError::Closed(_)) => {} // ending: use our own stream
            }
        }
        let mut stanza = stanza;
        // Twice at most: a pair found closing (idle) is replaced by a new one.
        for _ in 0..2 {
            match self.pair(s2s, &key).stanzas.try_send(stanza) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => return Err(RemoteError::QueueFull),
                Err(mpsc::error::TrySendError::Closed(s)) => stanza = s,
            }
        }
        Err(RemoteError::QueueFull)
    }

    /// The live pair for `key`, started when there is none.
    fn pair(&self, s2s: &Arc<S2s>, key: &PairKey) -> Pair {
        let mut pairs = lock(&self.pairs);
        if let Some(p) = pairs.get(key) {
            if !p.stanzas.is_closed() {
                return p.clone();
            }
        }
        let (stanzas, stanzas_rx) = mpsc::channel(self.config.max_queue);
        let (control, control_rx) = mpsc::channel(self.config.max_queue);
        let pair = Pair { stanzas, control };
        pairs.insert(key.clone(), pair.clone());
        let task = PairTask {
            s2s: s2s.clone(),
            key: key.clone(),
            me: pair.stanzas.clone(),
            stanzas: stanzas_rx,
            control: control_rx,
        };
        tokio::spawn(task.run());
        pair
    }

    /// Forget `key`'s pair if it is still the one whose sender is `me`.
    fn remove(&self, key: &PairKey, me: &mpsc::Sender<Bytes>) {
        let mut pairs = lock(&self.pairs);
        if pairs.get(key).is_some_and(|p| p.stanzas.same_channel(me)) {
            pairs.remove(key);
        }
    }

    /// XEP-0220 §2.1.2, as receiving server: ask the authoritative server of `remote`
    /// whether `key` is valid for the stream `stream_id` that `remote` opened to `local`
    /// (a `db:verify` over an outbound stream to `remote`, reused or new).
    pub async fn verify(
        &self,
        s2s: &Arc<S2s>,
        local: &str,
        remote: &str,
        stream_id: &str,
        key: &str,
    ) -> Result<bool, VerifyError> {
        let (reply, answer) = oneshot::channel();
        let v = Verify {
            stream_id: stream_id.to_owned(),
            key: key.to_owned(),
            reply,
        };
        let pair = self.pair(s2s, &(local.to_owned(), remote.to_owned()));
        pair.control
            .try_send(v)
            .map_err(|_| VerifyError::Unreachable("verification queue full".into()))?;
        match tokio::time::timeout(self.connect_timeout(), answer).await {
            Ok(Ok(valid)) => Ok(valid),
            Ok(Err(_)) => Err(VerifyError::Unreachable("stream ended".into())),
            Err(_) => Err(VerifyError::Timeout),
        }
    }

    /// XEP-0288: an inbound stream from `remote`, authenticated for (`remote` → `local`),
    /// negotiated bidirectionality: stanzas from `local` to `remote` may go over it.
    pub fn adopt(&self, local: &str, remote: &str, route: BidiRoute) {
        lock(&self.bidi).insert((local.to_owned(), remote.to_owned()), route);
    }

    /// The stream behind `route_id` ended.
    pub fn forget(&self, local: &str, remote: &str, route_id: u64) {
        let mut bidi = lock(&self.bidi);
        let key = (local.to_owned(), remote.to_owned());
        if bidi.get(&key).is_some_and(|r| r.id == route_id) {
            bidi.remove(&key);
        }
    }

    fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.config.connect_timeout_secs)
    }
}

/// One pair's task: connect, authenticate, carry stanzas until idle or lost.
struct PairTask {
    s2s: Arc<S2s>,
    key: PairKey,
    me: mpsc::Sender<Bytes>,
    stanzas: mpsc::Receiver<Bytes>,
    control: mpsc::Receiver<Verify>,
}

/// How an authenticated stream ended.
enum End {
    Idle,
    Lost(OutError),
}

impl PairTask {
    async fn run(mut self) {
        let Some(server) = self.s2s.server.upgrade() else {
            return;
        };
        let s2s = self.s2s.clone();
        let out = &s2s.outbound;
        let (local, remote) = (self.key.0.clone(), self.key.1.clone());
        let limits = server.config.xml_limits();
        drop(server);
        let Ok(_slot) = s2s.streams.clone().try_acquire_owned() else {
            return self.fail(OutError::TooManyStreams).await;
        };
        let connecting = self.connect(&local, &remote, limits);
        let established = match tokio::time::timeout(out.connect_timeout(), connecting).await {
            Ok(r) => r,
            Err(_) => Err(OutError::Timeout),
        };
        let (mut conn, method) = match established {
            Ok(c) => c,
            Err(e) => return self.fail(e).await,
        };
        tracing::info!(
            direction = "out",
            local = %local,
            remote = %remote,
            method = method.name(),
            tls = conn.tls,
            "s2s stream authenticated"
        );
        let end = self.carry(&mut conn).await;
        self.stop();
        let rest = self.drain().await;
        match end {
            End::Idle => {
                for st in rest {
                    if conn.write(&to_server_ns(st)).await.is_err() {
                        break;
                    }
                }
                tracing::debug!(%local, %remote, "s2s: closing idle outbound stream");
                conn.close().await;
            }
            End::Lost(e) => {
                tracing::info!(%local, %remote, error = %e, "s2s: outbound stream lost");
                conn.close().await;
                // Stanzas not yet written go to a fresh stream (or bounce if it is full).
                let mut refused = Vec::new();
                for st in rest {
                    if let Err(e) = out.pair(&s2s, &self.key).stanzas.try_send(st) {
                        refused.push(e.into_inner());
                    }
                }
                let text = "s2s queue full";
                bounce(&s2s, refused, Condition::ResourceConstraint, text).await;
            }
        }
    }

    /// Try each target of `remote` in order until one authenticates.
    async fn connect(
        &mut self,
        local: &str,
        remote: &str,
        limits: crate::xml::Limits,
    ) -> Result<(Conn, Method), OutError> {
        let s2s = self.s2s.clone();
        let out = &s2s.outbound;
        let targets = out.resolver.targets(&out.config, remote).await;
        let mut last = OutError::NoService;
        for t in &targets {
            let attempt = establish(&s2s, limits.clone(), local, remote, t, &mut self.control);
            match attempt.await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    let (host, port) = (&t.host, t.port);
                    tracing::debug!(local, remote, %host, port, error = %e, "s2s: attempt failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// The authenticated stream: write stanzas and `db:verify`s, read what the peer sends,
    /// close after `idle_timeout_secs` without traffic.
    async fn carry(&mut self, conn: &mut Conn) -> End {
        let idle = Duration::from_secs(self.s2s.outbound.config.idle_timeout_secs);
        let mut deadline = Instant::now() + idle;
        let mut pairs = Pairs::default();
        pairs.add(&conn.local, &conn.remote);
        loop {
            loop {
                match conn.poll_event() {
                    Ok(None) => break,
                    Ok(Some(Event::Stanza(st))) => {
                        if let Err(e) = self.received(conn, &pairs, &st).await {
                            return End::Lost(e);
                        }
                    }
                    Ok(Some(_)) => {
                        return End::Lost(OutError::Protocol("unexpected header".into()))
                    }
                    Err(e) => return End::Lost(e),
                }
            }
            let r = tokio::select! {
                r = conn.read_more() => r,
                st = self.stanzas.recv() => match st {
                    Some(st) => conn.write(&to_server_ns(st)).await,
                    None => return End::Idle,
                },
                Some(v) = self.control.recv() => conn.verify(v).await,
                _ = tokio::time::sleep_until(deadline) => return End::Idle,
            };
            if let Err(e) = r {
                return End::Lost(e);
            }
            deadline = Instant::now() + idle;
        }
    }

    /// An element the peer sent on the authenticated stream: with XEP-0288, its stanzas
    /// (from `remote` to `local`) go to the core like those of an inbound stream; other
    /// elements are ignored (dialback for other domain pairs is not offered this way).
    async fn received(&self, conn: &mut Conn, pairs: &Pairs, st: &Stanza) -> Result<(), OutError> {
        if st.ns == NS_DIALBACK && st.name == "result" && st.type_.is_none() {
            // XEP-0288 §2.2 lets the peer piggyback its other domains on a bidi stream;
            // we do not (no stream id of ours to bind a key to): a dialback error tells
            // it to open its own stream instead of waiting.
            let answer = format!(
                "<db:result from='{}' to='{}' type='error'><error type='cancel'>\
                 <feature-not-implemented xmlns='{NS_STANZAS}'/></error></db:result>",
                escape(st.to.as_deref().unwrap_or_default()),
                escape(st.from.as_deref().unwrap_or_default()),
            );
            return conn.write(answer.as_bytes()).await;
        }
        if !conn.bidi || !matches!(st.name.as_str(), "message" | "presence" | "iq") {
            let (name, remote) = (&st.name, &conn.remote);
            tracing::debug!(%name, %remote, "s2s: ignoring element on outbound stream");
            return Ok(());
        }
        let Some(server) = self.s2s.server.upgrade() else {
            return Err(OutError::Closed);
        };
        if let Err(e) = dispatch(&server, pairs, st).await {
            conn.write(e.to_xml().as_bytes()).await?;
            return Err(OutError::Protocol(e.to_string()));
        }
        Ok(())
    }

    /// The stream could not be set up: every queued stanza bounces.
    async fn fail(mut self, e: OutError) {
        let (local, remote) = (&self.key.0, &self.key.1);
        tracing::info!(%local, %remote, error = %e, "s2s: outbound stream failed");
        let condition = match e {
            OutError::Timeout => Condition::RemoteServerTimeout,
            OutError::TooManyStreams => Condition::ResourceConstraint,
            _ => Condition::RemoteServerNotFound,
        };
        self.stop();
        let pending = self.drain().await;
        bounce(&self.s2s, pending, condition, &e.to_string()).await;
    }

    /// Leave the map and stop accepting: later sends start a new pair.
    fn stop(&mut self) {
        self.s2s.outbound.remove(&self.key, &self.me);
        self.stanzas.close();
        self.control.close();
    }

    /// What was queued and not taken (after [`PairTask::stop`]).
    async fn drain(&mut self) -> Vec<Bytes> {
        while self.control.recv().await.is_some() {} // dropped: their callers see an error
        let mut out = Vec::new();
        while let Some(st) = self.stanzas.recv().await {
            out.push(st);
        }
        out
    }
}

/// RFC 6120 §8.3.1: each undeliverable stanza goes back to its local sender as an error
/// from the remote JID — never for errors (no loops) and IQ results, as Prosody does.
async fn bounce(s2s: &S2s, stanzas: Vec<Bytes>, condition: Condition, text: &str) {
    let Some(server) = s2s.server.upgrade() else {
        return;
    };
    let ctx = Arc::new(NsContext {
        default_ns: Some(NS_CLIENT.to_owned()),
        prefixes: Vec::new(),
    });
    let err = StanzaError::with_text(condition, text);
    for raw in stanzas {
        let Ok(el) = Stanza::parse(raw, ctx.clone()).and_then(|s| s.element()) else {
            continue;
        };
        if matches!(el.attr("type"), Some("error") | Some("result")) {
            continue;
        }
        let reply = crate::stanza::error_reply(&el, &err);
        let (Some(from), Some(to)) = (reply.attr("from"), reply.attr("to")) else {
            continue;
        };
        let (Ok(from), Ok(to)) = (from.parse::<Jid>(), to.parse::<Jid>()) else {
            continue;
        };
        let Ok(reply) = Stanza::parse(crate::xml::to_bytes(&reply), ctx.clone()) else {
            continue;
        };
        crate::federation::inbound(&server, &from, &to, &reply).await;
    }
}
