//! One component connection (XEP-0114 §3): stream header naming the component's domain,
//! `<handshake/>` with SHA-1(stream id + secret), then stanzas both ways until either side
//! closes. One task per connection, the only writer to its socket; stanzas for the
//! component arrive through the bounded queue the [`Component`] service fills.
//!
//! Stream errors, as the XEP and Prosody's mod_component choose them: an unconfigured
//! domain is `host-unknown`; a wrong handshake `not-authorized`; a second connection for a
//! domain that is connected already `conflict` (the first one stays, Prosody's default
//! `kick_new`: a stray process must not take a working gateway's place); a stanza whose
//! 'from' is not at the component's domain `invalid-from` (XEP-0114 §3: the domain is the
//! only restriction on the addresses a component uses).

use bytes::{Bytes, BytesMut};
use jid::Jid;
use sha1::{Digest, Sha1};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::ns::{self, NS_ACCEPT};
use super::{Component, Components};
use crate::federation::RemoteError;
use crate::server::ServerState;
use crate::stanza::{error_reply, parse_jid, Condition, StanzaError};
use crate::xml::{self, Event, Stanza, StreamParser, XmlError, NS_STREAM};

/// Bytes read from the socket at once.
const READ_CHUNK: usize = 16 * 1024;
/// Queued stanzas are written in batches of about this many bytes per flush.
const WRITE_BATCH: usize = 64 * 1024;

/// Why a component stream ends.
#[derive(Debug)]
enum End {
    PeerClosed,
    Io,
    /// Close with this RFC 6120 §4.9.3 condition and optional text.
    Error(&'static str, Option<String>),
}

impl From<XmlError> for End {
    fn from(e: XmlError) -> Self {
        End::Error(e.condition(), Some(e.to_string()))
    }
}

struct Conn {
    state: Arc<ServerState>,
    tcp: TcpStream,
    parser: StreamParser,
    out: BytesMut,
    peer: SocketAddr,
    /// Our header's 'from': the component's domain once known.
    domain: String,
    header_sent: bool,
}

/// Run one component connection to its end.
pub(super) async fn serve(
    state: Arc<ServerState>,
    components: Arc<Components>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let mut c = Conn {
        parser: StreamParser::new(state.limits.clone()),
        domain: state.domains.first().cloned().unwrap_or_default(),
        state,
        tcp,
        out: BytesMut::new(),
        peer,
        header_sent: false,
    };
    let end = run(&mut c, &components).await;
    c.finish(end).await;
}

async fn run(c: &mut Conn, components: &Components) -> End {
    let limit = Duration::from_secs(c.state.config.component.handshake_timeout_secs);
    let mut shutdown = c.state.shutdown.clone();
    let authenticated = tokio::select! {
        _ = shutdown.changed() => return End::Error("system-shutdown", None),
        r = tokio::time::timeout(limit, authenticate(c, components)) => r,
    };
    let component = match authenticated {
        Err(_) => return End::Error("connection-timeout", None),
        Ok(Err(end)) => return end,
        Ok(Ok(component)) => component,
    };
    let (tx, mut rx) = mpsc::channel(c.state.config.component.max_queue);
    let Some(link) = component.attach(tx) else {
        tracing::warn!(domain = component.domain, peer = %c.peer, "component already connected; refusing the new connection");
        return End::Error("conflict", Some("component already connected".into()));
    };
    tracing::info!(domain = component.domain, peer = %c.peer, "component connected");
    c.out.extend_from_slice(b"<handshake/>");
    let end = session(c, &component, &mut rx).await;
    component.detach(link);
    tracing::info!(domain = component.domain, peer = %c.peer, "component disconnected");
    // What was queued and never written goes back to its senders.
    rx.close();
    while let Ok(bytes) = rx.try_recv() {
        bounce_queued(&c.state, bytes);
    }
    end
}

/// Stream header and handshake (XEP-0114 §3). Returns the authenticated component.
async fn authenticate(c: &mut Conn, components: &Components) -> Result<Arc<Component>, End> {
    let header = match c.next_event().await? {
        Event::Open(h) => h,
        _ => return Err(End::Error("bad-format", None)),
    };
    if let Some(to) = &header.to {
        c.domain = to.to_ascii_lowercase();
    }
    if header.name != "stream" || header.stream_ns.as_deref() != Some(NS_STREAM) {
        return Err(End::Error("invalid-namespace", None));
    }
    if header.default_ns.as_deref() != Some(NS_ACCEPT) {
        return Err(End::Error(
            "invalid-namespace",
            Some(format!("this port speaks {NS_ACCEPT}")),
        ));
    }
    let Some(component) = header
        .to
        .as_deref()
        .and_then(|to| components.get(&to.to_ascii_lowercase()))
        .cloned()
    else {
        return Err(End::Error("host-unknown", None));
    };
    let stream_id = crate::stanza::random_id();
    c.send_header(&stream_id);
    c.flush().await?;
    let st = match c.next_event().await? {
        Event::Stanza(st) if st.name == "handshake" && st.ns == NS_ACCEPT => st,
        Event::Close => return Err(End::PeerClosed),
        _ => return Err(End::Error("not-authorized", None)),
    };
    let presented = st.element().map(|el| el.text()).unwrap_or_default();
    if !handshake_ok(&stream_id, component.secret.expose(), &presented) {
        tracing::warn!(domain = component.domain, peer = %c.peer, "component handshake failed");
        return Err(End::Error("not-authorized", None));
    }
    Ok(component)
}

/// The handshake value: lowercase hex SHA-1 of the stream id followed by the secret.
pub(super) fn handshake(stream_id: &str, secret: &str) -> String {
    let digest = Sha1::new()
        .chain_update(stream_id.as_bytes())
        .chain_update(secret.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compare in constant time (a timing difference would reveal the hash byte by byte).
/// Upper-case hex is accepted: the value is the same hash.
fn handshake_ok(stream_id: &str, secret: &str, presented: &str) -> bool {
    let expected = handshake(stream_id, secret);
    let presented = presented.trim().to_ascii_lowercase();
    presented.len() == expected.len() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// The authenticated stream: the component's stanzas in, queued stanzas out.
async fn session(c: &mut Conn, component: &Component, rx: &mut mpsc::Receiver<Bytes>) -> End {
    let mut shutdown = c.state.shutdown.clone();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        loop {
            match c.parser.next_event() {
                Ok(Some(Event::Stanza(st))) => {
                    if let Err(end) = from_component(c, component, &st).await {
                        return end;
                    }
                }
                Ok(Some(Event::Close)) => return End::PeerClosed,
                Ok(Some(Event::Open(_))) => return End::Error("bad-format", None),
                Ok(None) => break,
                Err(e) => return e.into(),
            }
        }
        // A component that stops reading blocks this write; shutdown must still end it
        // (without a stream error: a write was cut short, the stream is not well-formed).
        let flushed = tokio::select! {
            _ = shutdown.changed() => return End::Io,
            r = c.flush() => r,
        };
        if let Err(end) = flushed {
            return end;
        }
        tokio::select! {
            _ = shutdown.changed() => return End::Error("system-shutdown", None),
            n = c.tcp.read(&mut buf) => match n {
                Ok(0) => return End::PeerClosed,
                Ok(n) => c.parser.feed(&buf[..n]),
                Err(_) => return End::Io,
            },
            queued = rx.recv() => {
                let Some(bytes) = queued else { return End::Error("internal-server-error", None) };
                c.out.extend_from_slice(&ns::to_accept(bytes));
                while c.out.len() < WRITE_BATCH {
                    let Ok(more) = rx.try_recv() else { break };
                    c.out.extend_from_slice(&ns::to_accept(more));
                }
            }
        }
    }
}

/// One stanza from the component: check its addresses, then deliver it locally or to its
/// remote domain.
async fn from_component(c: &mut Conn, component: &Component, st: &Stanza) -> Result<(), End> {
    if st.ns != NS_ACCEPT || !matches!(st.name.as_str(), "message" | "presence" | "iq") {
        return Err(End::Error(
            "unsupported-stanza-type",
            Some(format!("<{}/> in {}", st.name, st.ns)),
        ));
    }
    // XEP-0114 §3: 'from' and 'to' are required, and 'from' must be at the component's domain.
    let (Some(from), Some(to)) = (st.from.as_deref(), st.to.as_deref()) else {
        return Err(End::Error(
            "improper-addressing",
            Some("stanzas need 'from' and 'to'".into()),
        ));
    };
    let from = match parse_jid(from) {
        Ok(j) if j.domain().as_str() == component.domain => j,
        _ => return Err(End::Error("invalid-from", None)),
    };
    let to = match parse_jid(to) {
        Ok(j) => j,
        Err(e) => {
            reply_error(c, st, &from, None, e);
            return Ok(());
        }
    };
    let Some(client) = ns::to_client(st, from.as_str(), to.as_str()) else {
        return Err(End::Error("invalid-namespace", None));
    };
    let server = c.state.clone();
    if server.is_local_domain(to.domain().as_str()) {
        // The RFC 6121 recipient-side rules, as for another server's stanza; its answers
        // and errors come back through `send_remote`, which relays them to this component.
        crate::federation::inbound(&server, &from, &to, &client).await;
        return Ok(());
    }
    if let Err(e) = server.send_remote(&from, &to, client.raw().clone()) {
        let condition = match e {
            RemoteError::NotFound => Condition::RemoteServerNotFound,
            RemoteError::QueueFull => Condition::ResourceConstraint,
        };
        reply_error(c, st, &from, Some(&to), StanzaError::new(condition));
    }
    Ok(())
}

/// An error reply to the component's own stanza, written straight into its stream.
fn reply_error(c: &mut Conn, st: &Stanza, from: &Jid, to: Option<&Jid>, err: StanzaError) {
    if matches!(st.type_.as_deref(), Some("error" | "result")) {
        return;
    }
    let Ok(mut el) = st.element() else { return };
    crate::stanza::ElementExt::put_attr(&mut el, "from", from.as_str());
    if let Some(to) = to {
        crate::stanza::ElementExt::put_attr(&mut el, "to", to.as_str());
    }
    let reply = error_reply(&el, &err);
    c.out
        .extend_from_slice(&ns::to_accept(xml::to_bytes(&reply)));
}

/// A stanza that was queued for a component that went away: bounce it to its sender.
fn bounce_queued(server: &Arc<ServerState>, bytes: Bytes) {
    let Some(st) = ns::parse_client(bytes) else {
        return;
    };
    if super::never_bounced(&st) {
        return;
    }
    let (Ok(el), Some(Ok(sender))) = (st.element(), st.from.as_deref().map(parse_jid)) else {
        return;
    };
    let reply = error_reply(&el, &StanzaError::new(Condition::ServiceUnavailable));
    server.route(&sender, xml::to_bytes(&reply));
}

impl Conn {
    async fn next_event(&mut self) -> Result<Event, End> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(ev) = self.parser.next_event()? {
                return Ok(ev);
            }
            match self.tcp.read(&mut buf).await {
                Ok(0) => return Err(End::PeerClosed),
                Ok(n) => self.parser.feed(&buf[..n]),
                Err(_) => return Err(End::Io),
            }
        }
    }

    fn send_header(&mut self, id: &str) {
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='{NS_ACCEPT}' xmlns:stream='{NS_STREAM}' id='{id}' from='{}'>",
            xml::escape(&self.domain),
        );
        self.out.extend_from_slice(header.as_bytes());
        self.header_sent = true;
    }

    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.tcp.write_all(&self.out).await.map_err(|_| End::Io)?;
        self.out.clear();
        Ok(())
    }

    /// Close: a stream error if there is one (after our header when none was sent, RFC 6120
    /// §4.9.1.1), `</stream:stream>`, then the TCP close; bounded in time.
    async fn finish(mut self, end: End) {
        match end {
            End::Io => return,
            End::PeerClosed => {}
            End::Error(cond, text) => {
                tracing::debug!(peer = %self.peer, condition = cond, text = ?text, "component stream error");
                if !self.header_sent {
                    self.send_header(&crate::stanza::random_id());
                }
                let e = xml::stream_error(cond, None, text.as_deref());
                self.out.extend_from_slice(e.as_bytes());
            }
        }
        if self.header_sent {
            self.out.extend_from_slice(b"</stream:stream>");
        }
        let write = async {
            let _ = self.flush().await;
            let _ = self.tcp.shutdown().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XEP-0114 §3's example does not give its secret, so the value is checked against an
    /// independent SHA-1 (Python's hashlib) of "3BF96D32" + "secret".
    #[test]
    fn handshake_is_lowercase_hex_sha1_of_id_and_secret() {
        let h = handshake("3BF96D32", "secret");
        assert_eq!(h, "b09ea9b3b7f586be8a08d0a3dd7466f110aeb136");
        assert!(handshake_ok("3BF96D32", "secret", &h));
        assert!(handshake_ok("3BF96D32", "secret", &h.to_ascii_uppercase()));
        assert!(handshake_ok("3BF96D32", "secret", &format!(" {h}\n")));
        assert!(!handshake_ok("3BF96D32", "other", &h));
        assert!(!handshake_ok("3BF96D33", "secret", &h));
        assert!(!handshake_ok("3BF96D32", "secret", ""));
        assert!(!handshake_ok("3BF96D32", "secret", &h[..39]));
    }
}
