//! The HTTP module: one axum router served on `listen.http` (plain) and `listen.https`
//! (TLS with the server's certificate). Each protocol area contributes its routes: XEP-0363
//! upload, RFC 7395 WebSocket, XEP-0206 BOSH, XEP-0156 host-meta.
//!
//! Why our own accept loop rather than `axum::serve`: HTTPS uses the same rustls acceptor as
//! c2s (one certificate, one reload path), and connections count against
//! `limits.max_connections` like XMPP ones, so an HTTP flood cannot starve client logins of
//! file descriptors unnoticed.

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

use crate::server::ServerState;

pub mod bosh;
pub mod hostmeta;
pub mod websocket;

/// Whether a request reached us over TLS (HTTPS listener). Inserted as a request extension
/// so handlers (WebSocket, BOSH) can tell their session whether the stream is confidential.
#[derive(Debug, Clone, Copy)]
pub struct Secure(pub bool);

impl Secure {
    /// Whether an XMPP stream carried by this request is confidential: it came over HTTPS,
    /// or over plain HTTP from a proxy the configuration trusts (`http.trust_plain_http`).
    pub fn stream_secure(self, state: &ServerState) -> bool {
        self.0 || state.config.http.trust_plain_http
    }
}

/// The peer's socket address, as a request extension.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// All HTTP routes. Each protocol area adds its own with `.merge(...)`.
pub fn router(state: &Arc<ServerState>) -> Router {
    Router::new()
        .merge(crate::upload::routes(state.clone()))
        .merge(websocket::routes(state.clone()))
        .merge(hostmeta::routes(state.clone()))
        .merge(bosh::routes(state.clone()))
}

/// The base URL clients use to reach this server's HTTP module (no trailing slash):
/// `http.public_url` when set (a reverse proxy in front), else the HTTPS listener (or the
/// plain one) on the first domain.
pub fn public_url(
    config: &crate::config::Config,
    https: Option<SocketAddr>,
    http: Option<SocketAddr>,
) -> String {
    let configured = config.http.public_url.trim_end_matches('/');
    if !configured.is_empty() {
        return configured.to_string();
    }
    let domains = config.domains();
    let host = domains.first().map(String::as_str).unwrap_or("localhost");
    match (https, http) {
        (Some(a), _) => format!("https://{host}:{}", a.port()),
        (None, Some(a)) => format!("http://{host}:{}", a.port()),
        (None, None) => format!("https://{host}"),
    }
}

pub async fn accept_loop(state: Arc<ServerState>, listener: TcpListener, tls: bool, app: Router) {
    let what = if tls { "https" } else { "http" };
    crate::server::accept_loop(state, listener, what, move |st, tcp, peer| {
        serve_connection(st, tcp, peer, tls, app.clone())
    })
    .await
}

async fn serve_connection(
    state: Arc<ServerState>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: bool,
    app: Router,
) {
    let app = app
        .layer(axum::Extension(Secure(tls)))
        .layer(axum::Extension(Peer(peer)));
    let service = TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Slowloris: a client gets this long to send its request headers.
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(
            state.config.c2s.login_timeout_secs.max(1),
        ));
    if tls {
        let timeout = Duration::from_secs(state.config.c2s.login_timeout_secs.max(1));
        let stream = match tokio::time::timeout(timeout, state.tls.acceptor.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "HTTPS handshake failed");
                return;
            }
            Err(_) => return,
        };
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        if let Err(e) = conn.await {
            tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
        }
    } else {
        let conn = builder
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        if let Err(e) = conn.await {
            tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
        }
    }
}
