//! XEP-0124 BOSH with XEP-0206 XMPP over BOSH, at `/http-bind`.
//!
//! Each BOSH session is a c2s stream run by [`crate::c2s::run_virtual`] (the exact TCP
//! negotiation and session: SASL, bind, SM, ...) over an in-memory pipe, plus one task
//! ([`session::Actor`]) that owns the other end of the pipe and the BOSH state: it writes the
//! payloads of requests into the stream in rid order and answers held requests with the
//! server's output, cut into elements by [`crate::c2s::framing::Reframer`]. HTTP handlers
//! only parse the body, find the session by its sid and wait for the actor's answer, so all
//! of a session's state has one owner and no lock is held across an await.
//!
//! Errors follow XEP-0124 §17: terminal binding conditions in HTTP 200 responses, and the
//! deprecated HTTP error codes (§17.1) only for legacy clients (no 'ver' at creation).

mod body;
mod session;
mod window;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

use crate::http::{Peer, Secure};
use crate::server::ServerState;

pub use body::{NS_HTTPBIND, NS_XBOSH};

const CONTENT_TYPE: &str = "text/xml; charset=utf-8";

/// A request body may carry several stanzas: this many times `limits.max_stanza_size`.
const BODY_SIZE_FACTOR: usize = 4;

/// The `/http-bind` routes.
pub fn routes(state: Arc<ServerState>) -> Router {
    let bosh = Arc::new(Bosh {
        state,
        sessions: Mutex::default(),
    });
    Router::new()
        .route(
            "/http-bind",
            post(handle_post).get(handle_get).options(handle_options),
        )
        .route(
            "/http-bind/",
            post(handle_post).get(handle_get).options(handle_options),
        )
        .with_state(bosh)
}

/// Live sessions by sid. Shared by the HTTP and HTTPS listeners (one router).
pub(crate) struct Bosh {
    state: Arc<ServerState>,
    sessions: Mutex<HashMap<String, Handle>>,
}

/// How a handler reaches a session's actor.
#[derive(Clone)]
struct Handle {
    /// Boxed: the channel allocates its slots in blocks of 32 and keeps one per session.
    tx: mpsc::Sender<Box<session::Incoming>>,
    /// Created over a confidential connection: later requests must be too (§21.1).
    secure: bool,
}

impl Bosh {
    fn get(&self, sid: &str) -> Option<Handle> {
        self.sessions.lock().ok()?.get(sid).cloned()
    }

    fn insert(&self, sid: String, h: Handle) {
        if let Ok(mut m) = self.sessions.lock() {
            m.insert(sid, h);
        }
    }

    /// The session ended: its sid is unknown from now on (§12: answer as if it never existed).
    fn remove(&self, sid: &str) {
        if let Ok(mut m) = self.sessions.lock() {
            m.remove(sid);
        }
    }
}

/// An answer to one HTTP request.
#[derive(Debug)]
pub(crate) struct Reply {
    status: StatusCode,
    body: Bytes,
    /// The session's 'content' (§7.1), else text/xml.
    content_type: Option<HeaderValue>,
}

impl Reply {
    fn ok(body: Bytes, content_type: Option<HeaderValue>) -> Reply {
        Reply {
            status: StatusCode::OK,
            body,
            content_type,
        }
    }

    /// A terminal binding condition; with `legacy`, the HTTP code it supersedes (§17.1).
    fn terminate(condition: &str, legacy: bool) -> Reply {
        let status = match (legacy, condition) {
            (true, "bad-request") => StatusCode::BAD_REQUEST,
            (true, "policy-violation") => StatusCode::FORBIDDEN,
            (true, "item-not-found") => StatusCode::NOT_FOUND,
            _ => StatusCode::OK,
        };
        Reply {
            status,
            body: body::terminate(Some(condition), &[]),
            content_type: None,
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let ct = self
            .content_type
            .unwrap_or(HeaderValue::from_static(CONTENT_TYPE));
        with_cors((self.status, [(header::CONTENT_TYPE, ct)], self.body).into_response())
    }
}

/// CORS (browser clients served from another origin): anyone may POST XML here; the
/// session id in the body is the credential, not cookies.
fn with_cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

/// Largest request body accepted.
fn max_body(state: &ServerState) -> usize {
    state
        .config
        .limits
        .max_stanza_size
        .saturating_mul(BODY_SIZE_FACTOR)
}

async fn handle_options() -> Response {
    with_cors(StatusCode::OK.into_response())
}

/// A person opening the URL in a browser gets told what it is (as Prosody does).
async fn handle_get() -> Response {
    with_cors(
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<!DOCTYPE html>\n<html><head><title>BOSH endpoint</title></head><body>\
             <h1>BOSH endpoint</h1><p>This is an XMPP BOSH (XEP-0124, XEP-0206) endpoint: \
             point an XMPP client at this URL. It answers POST requests only.</p>\
             </body></html>\n",
        )
            .into_response(),
    )
}

async fn handle_post(
    State(bosh): State<Arc<Bosh>>,
    Extension(secure): Extension<Secure>,
    Extension(Peer(peer)): Extension<Peer>,
    body: Body,
) -> Response {
    let limit = max_body(&bosh.state);
    let data = match axum::body::to_bytes(body, limit).await {
        Ok(d) => d,
        Err(_) => {
            return with_cors(
                (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response(),
            )
        }
    };
    let req = match body::parse(&data, &bosh.state.limits) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "BOSH request refused");
            // §17.2: HTTP 200 with the binding condition. Whether the client is legacy
            // (and would want 400) cannot be known from a body that does not parse.
            return Reply::terminate("bad-request", false).into_response();
        }
    };
    let secure = secure.stream_secure(&bosh.state);
    let Some(sid) = req.sid.clone() else {
        return session::create(bosh, req, peer, secure)
            .await
            .into_response();
    };
    let handle = match bosh.get(&sid) {
        // §21.1: a session made over HTTPS is not reachable over plain HTTP.
        Some(h) if h.secure && !secure => None,
        h => h,
    };
    let Some(handle) = handle else {
        return Reply::terminate("item-not-found", false).into_response();
    };
    let (reply, rx) = oneshot::channel();
    if handle
        .tx
        .send(Box::new(session::Incoming { req, reply }))
        .await
        .is_err()
    {
        return Reply::terminate("item-not-found", false).into_response();
    }
    match rx.await {
        Ok(r) => r.into_response(),
        // The session ended without answering this request.
        Err(_) => Reply::terminate("item-not-found", false).into_response(),
    }
}
