//! Stream negotiation up to a bound resource (RFC 6120 §4–§7): header checks, features,
//! STARTTLS, SASL, in-band registration before authentication, and resource binding. SASL2
//! (XEP-0388) with Bind 2 and FAST lives in `sasl2`, sharing the mechanisms run here.

use crate::stanza::BuilderExt;
use base64::Engine;
use jid::{BareJid, FullJid};
use minidom::Element;
use std::sync::Arc;
use std::time::Duration;

use super::{Conn, End, Transport};
use crate::modules::{IqRequest, Scope};
use crate::router::SessionHandle;
use crate::sasl::{self, Mechanism, SaslError, ScramServer};
use crate::stanza::{error_reply, Condition, StanzaError};
use crate::xml::{Event, Stanza, StreamHeader, NS_CLIENT, NS_STREAM};

pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_SASL_CB: &str = "urn:xmpp:sasl-cb:0";

/// A session that has bound a resource.
pub struct Bound {
    pub jid: FullJid,
    pub handle: SessionHandle,
    /// XEP-0198 already enabled inline (XEP-0386 Bind 2): the session starts with it.
    pub sm: Option<Box<super::sm::SmState>>,
    /// XEP-0352 `<inactive/>` requested inline: the session starts inactive.
    pub inactive: bool,
}

/// Which SASL profile an exchange runs under: RFC 6120 §6 or XEP-0388 (SASL2). Both share
/// the mechanisms; only the element names and the empty-data encoding differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Profile {
    Rfc6120,
    Sasl2,
}

impl Profile {
    fn ns(self) -> &'static str {
        match self {
            Profile::Rfc6120 => NS_SASL,
            Profile::Sasl2 => super::sasl2::NS,
        }
    }
}

pub async fn negotiate(conn: &mut Conn) -> Result<Bound, End> {
    let timeout = Duration::from_secs(conn.state.config.c2s.login_timeout_secs);
    let mut shutdown = conn.state.shutdown.clone();
    if *shutdown.borrow() {
        return Err(End::Error("system-shutdown", None));
    }
    tokio::select! {
        r = tokio::time::timeout(timeout, negotiate_inner(conn)) => match r {
            Ok(r) => r,
            Err(_) => Err(End::Error("connection-timeout", Some("login took too long".into()))),
        },
        // Connections still negotiating are told about shutdown too.
        _ = shutdown.changed() => Err(End::Error("system-shutdown", None)),
    }
}

async fn negotiate_inner(conn: &mut Conn) -> Result<Bound, End> {
    let mut user: Option<String> = None;
    let mut failures = 0u32;
    loop {
        // Whatever ended the previous stream (<proceed/>, <success/>) must be on the wire
        // before we wait for the client's restarted header.
        conn.flush().await?;
        // A (re)started stream: header, our header, features.
        let header = match conn.next_event().await? {
            Event::Open(h) => h,
            _ => {
                return Err(End::Error(
                    "bad-format",
                    Some("expected a stream header".into()),
                ))
            }
        };
        check_header(conn, &header)?;
        conn.send_header();
        let features = features(conn, user.is_some());
        conn.write_bytes(b"<stream:features>");
        for f in &features {
            conn.write_el(f);
        }
        conn.write_bytes(b"</stream:features>");
        conn.flush().await?;
        // Stanzas until something restarts the stream or binds.
        loop {
            let st = match conn.next_event().await? {
                Event::Stanza(st) => st,
                Event::Close => return Err(End::PeerClosed),
                Event::Open(_) => {
                    return Err(End::Error(
                        "bad-format",
                        Some("unexpected stream header".into()),
                    ))
                }
            };
            match (st.ns.as_str(), st.name.as_str(), &user) {
                (NS_TLS, "starttls", None) if conn.io.can_starttls() => {
                    starttls(conn).await?;
                    break;
                }
                (NS_SASL, "auth", None) => {
                    if let Some(u) = sasl_exchange(conn, &st).await? {
                        user = Some(u);
                        conn.parser.reset();
                        break;
                    }
                    failures += 1;
                    if failures >= conn.state.config.limits.max_auth_failures {
                        return Err(End::Error(
                            "policy-violation",
                            Some("too many failed authentication attempts".into()),
                        ));
                    }
                }
                (super::sasl2::NS, "authenticate", None) if conn.secure() => {
                    // XEP-0388: no stream restart; the outcome's features are already queued.
                    match Box::pin(super::sasl2::authenticate(conn, &st)).await? {
                        super::sasl2::Outcome::Authenticated(u) => user = Some(u),
                        super::sasl2::Outcome::Bound(b) => return Ok(*b),
                        super::sasl2::Outcome::Handover => return Err(End::Handover),
                        super::sasl2::Outcome::Failed => {
                            failures += 1;
                            if failures >= conn.state.config.limits.max_auth_failures {
                                return Err(End::Error(
                                    "policy-violation",
                                    Some("too many failed authentication attempts".into()),
                                ));
                            }
                        }
                    }
                }
                (NS_CLIENT, "iq", None) => preauth_iq(conn, &st).await?,
                (NS_CLIENT, "iq", Some(u)) => {
                    if let Some(bound) = bind(conn, &st, u).await? {
                        return Ok(bound);
                    }
                }
                (super::sm::NS, "resume", Some(u)) => {
                    if super::session::request_resume(conn, &st, u) {
                        return Err(End::Handover);
                    }
                }
                (super::sm::NS, _, _) => super::session::preauth_nonza(conn),
                (NS_CLIENT, _, _) => {
                    return Err(End::Error(
                        "not-authorized",
                        Some("authenticate and bind first".into()),
                    ))
                }
                _ => return Err(End::Error("unsupported-stanza-type", None)),
            }
            conn.flush().await?;
        }
    }
}

fn check_header(conn: &mut Conn, h: &StreamHeader) -> Result<(), End> {
    let requested = h.to.as_deref().map(|t| t.trim().to_ascii_lowercase());
    if let Some(d) = requested.as_deref().filter(|d| conn.state.serves(d)) {
        conn.domain = d.to_string();
    }
    if h.name != "stream" || h.stream_ns.as_deref() != Some(NS_STREAM) {
        return Err(End::Error(
            "invalid-namespace",
            Some("wrong stream namespace".into()),
        ));
    }
    if h.default_ns.as_deref() != Some(NS_CLIENT) {
        return Err(End::Error(
            "invalid-namespace",
            Some("this port serves jabber:client".into()),
        ));
    }
    let major = h
        .version
        .as_deref()
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse::<u32>().ok());
    if major != Some(1) {
        return Err(End::Error(
            "unsupported-version",
            Some("XMPP 1.0 streams only".into()),
        ));
    }
    match requested {
        Some(d) if !conn.state.serves(&d) => Err(End::Error(
            "host-unknown",
            Some(format!("{d} is not served here")),
        )),
        _ => Ok(()),
    }
}

/// The children of `<stream:features/>` for the current stage.
fn features(conn: &Conn, authenticated: bool) -> Vec<Element> {
    let mut f = Vec::new();
    let tls_required = conn.state.config.c2s.require_tls;
    if authenticated {
        f.push(Element::builder("bind", NS_BIND).build());
        f.push(
            Element::builder("session", crate::modules::session::NS)
                .append(Element::builder("optional", crate::modules::session::NS).build())
                .build(),
        );
    } else {
        if conn.io.can_starttls() {
            let mut st = Element::builder("starttls", NS_TLS);
            if tls_required {
                st = st.append(Element::builder("required", NS_TLS).build());
            }
            f.push(st.build());
        }
        if conn.secure() || !tls_required {
            let mut mechs = Element::builder("mechanisms", NS_SASL);
            for m in offered_mechanisms(conn) {
                mechs = mechs.append(
                    Element::builder("mechanism", NS_SASL)
                        .append(m.name())
                        .build(),
                );
            }
            f.push(mechs.build());
            if let Some(sasl2) = super::sasl2::feature(conn) {
                f.push(sasl2);
            }
            let types = conn.bindings.types();
            if !types.is_empty() {
                let mut cb = Element::builder("sasl-channel-binding", NS_SASL_CB);
                for t in types {
                    cb = cb.append(
                        Element::builder("channel-binding", NS_SASL_CB)
                            .at("type", t)
                            .build(),
                    );
                }
                f.push(cb.build());
            }
        }
    }
    if authenticated || conn.secure() || !tls_required {
        for m in conn.state.modules.all() {
            for el in m.stream_features(&conn.state, authenticated) {
                f.push(el);
            }
        }
    }
    f
}

/// Stream features after XEP-0386 binding or resumption: what the modules offer a bound
/// session (no resource binding any more).
pub(super) fn bound_features(conn: &Conn) -> Vec<u8> {
    let mut out = b"<stream:features>".to_vec();
    for m in conn.state.modules.all() {
        for el in m.stream_features(&conn.state, true) {
            out.extend_from_slice(&crate::xml::to_bytes(&el));
        }
    }
    out.extend_from_slice(b"</stream:features>");
    out
}

/// The authenticated stream's features, serialized (after a SASL2 success without binding).
pub(super) fn authenticated_features(conn: &Conn) -> Vec<u8> {
    let mut out = b"<stream:features>".to_vec();
    for el in features(conn, true) {
        out.extend_from_slice(&crate::xml::to_bytes(&el));
    }
    out.extend_from_slice(b"</stream:features>");
    out
}

pub(super) fn offered_mechanisms(conn: &Conn) -> Vec<Mechanism> {
    if !conn.secure() && conn.state.config.c2s.require_tls {
        return Vec::new(); // RFC 6120 §5.3.1: TLS first when it is mandatory
    }
    let cb = conn.bindings.any();
    Mechanism::ALL
        .into_iter()
        .filter(|m| match m {
            Mechanism::Scram { plus, .. } => !plus || cb,
            // RFC 6120 §6.4.1 / RFC 4616 §4: never PLAIN over an unprotected stream unless the
            // operator explicitly turned TLS off.
            Mechanism::Plain => conn.secure() || !conn.state.config.c2s.require_tls,
        })
        .collect()
}

async fn starttls(conn: &mut Conn) -> Result<(), End> {
    conn.write_el(&Element::builder("proceed", NS_TLS).build());
    conn.flush().await?;
    let Transport::Plain(tcp) = std::mem::replace(&mut conn.io, Transport::Gone) else {
        return Err(End::Io);
    };
    match conn.state.tls.acceptor.accept(tcp).await {
        Ok(s) => {
            conn.io = Transport::Tls(Box::new(s));
            // The handshake may have pulled the client's next bytes into rustls already.
            conn.read_pending = true;
            conn.refresh_bindings();
            conn.parser.reset();
            Ok(())
        }
        Err(e) => {
            tracing::debug!(peer = %conn.peer, error = %e, "STARTTLS handshake failed");
            Err(End::Io)
        }
    }
}

fn sasl_el(p: Profile, name: &str, data: Option<&[u8]>) -> Element {
    let mut b = Element::builder(name, p.ns());
    if let Some(d) = data {
        // RFC 6120 §6.4.2 writes empty data as "="; XEP-0388 as an empty element.
        b = b.append(match (d.is_empty(), p) {
            (true, Profile::Rfc6120) => "=".to_string(),
            (true, Profile::Sasl2) => String::new(),
            (false, _) => base64::engine::general_purpose::STANDARD.encode(d),
        });
    }
    b.build()
}

pub(super) fn sasl_failure(conn: &mut Conn, p: Profile, e: &SaslError) {
    let mut f = Element::builder("failure", p.ns())
        .append(Element::builder(e.condition(), NS_SASL).build());
    if let SaslError::MalformedRequest(t) = e {
        f = f.append(
            Element::builder("text", p.ns())
                .at("xml:lang", "en")
                .append(t.as_str())
                .build(),
        );
    }
    conn.write_el(&f.build());
}

pub(super) fn decode_b64(text: &str) -> Result<Vec<u8>, SaslError> {
    let t = text.trim();
    if t.is_empty() || t == "=" {
        return Ok(Vec::new());
    }
    base64::engine::general_purpose::STANDARD
        .decode(t)
        .map_err(|_| SaslError::IncorrectEncoding)
}

/// Wait for the client's `<response/>` (or `<abort/>`).
async fn sasl_response(conn: &mut Conn, p: Profile) -> Result<Result<Vec<u8>, SaslError>, End> {
    conn.flush().await?;
    match conn.next_event().await? {
        Event::Stanza(st) if st.ns == p.ns() && st.name == "response" => {
            let el = st.element()?;
            Ok(decode_b64(&el.text()))
        }
        Event::Stanza(st) if st.ns == p.ns() && st.name == "abort" => Ok(Err(SaslError::Aborted)),
        Event::Close => Err(End::PeerClosed),
        _ => Err(End::Error(
            "not-authorized",
            Some("SASL exchange interrupted".into()),
        )),
    }
}

/// Run one SASL exchange. Ok(Some(localpart)) on success (after `<success/>` is queued),
/// Ok(None) after a `<failure/>`.
async fn sasl_exchange(conn: &mut Conn, auth: &Stanza) -> Result<Option<String>, End> {
    let el = auth.element()?;
    let mech = el
        .attr("mechanism")
        .and_then(Mechanism::from_name)
        .filter(|m| offered_mechanisms(conn).contains(m));
    let result = match mech {
        None if conn.state.config.c2s.require_tls && !conn.secure() => {
            Err(SaslError::EncryptionRequired)
        }
        None => Err(SaslError::InvalidMechanism),
        Some(m) => {
            let text = el.text();
            let initial = if text.trim().is_empty() {
                None
            } else {
                Some(decode_b64(&text))
            };
            run_mechanism(conn, Profile::Rfc6120, m, initial).await?
        }
    };
    match result {
        Ok((user, additional)) => {
            conn.write_el(&sasl_el(Profile::Rfc6120, "success", additional.as_deref()));
            tracing::info!(peer = %conn.peer, user = %format!("{user}@{}", conn.domain), mechanism = mech.map(|m| m.name()).unwrap_or(""), "authenticated");
            Ok(Some(user))
        }
        Err(e) => {
            tracing::info!(peer = %conn.peer, condition = e.condition(), "authentication failed");
            sasl_failure(conn, Profile::Rfc6120, &e);
            Ok(None)
        }
    }
}

/// The authenticated localpart and the mechanism's additional data for `<success/>`.
pub(super) type SaslOutcome = Result<(String, Option<Vec<u8>>), SaslError>;

/// Run a password mechanism (SCRAM or PLAIN) under either profile.
pub(super) async fn run_mechanism(
    conn: &mut Conn,
    p: Profile,
    m: Mechanism,
    initial: Option<Result<Vec<u8>, SaslError>>,
) -> Result<SaslOutcome, End> {
    match m {
        Mechanism::Plain => plain(conn, p, initial).await,
        Mechanism::Scram { alg, plus } => scram(conn, p, initial, alg, plus).await,
    }
}

async fn initial_or_prompt(
    conn: &mut Conn,
    p: Profile,
    initial: Option<Result<Vec<u8>, SaslError>>,
) -> Result<Result<Vec<u8>, SaslError>, End> {
    match initial {
        Some(r) => Ok(r),
        None => {
            conn.write_el(&sasl_el(p, "challenge", Some(&[])));
            sasl_response(conn, p).await
        }
    }
}

/// The authzid, if any, must name the authenticated account itself (RFC 6120 §6.3.8).
fn check_authzid(authzid: Option<&str>, user: &str, domain: &str) -> Result<(), SaslError> {
    match authzid {
        None => Ok(()),
        Some(a) => match BareJid::new(a) {
            Ok(j)
                if j.node().map(|n| n.as_str()) == Some(user) && j.domain().as_str() == domain =>
            {
                Ok(())
            }
            _ => Err(SaslError::InvalidAuthzid),
        },
    }
}

async fn plain(
    conn: &mut Conn,
    p: Profile,
    initial: Option<Result<Vec<u8>, SaslError>>,
) -> Result<SaslOutcome, End> {
    let msg = match initial_or_prompt(conn, p, initial).await? {
        Ok(m) => m,
        Err(e) => return Ok(Err(e)),
    };
    let parsed = match sasl::plain_parse(&msg) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let Some(user) = crate::modules::register::normalize_username(&parsed.authcid, &conn.domain)
    else {
        return Ok(Err(SaslError::NotAuthorized));
    };
    if let Err(e) = check_authzid(parsed.authzid.as_deref(), &user, &conn.domain) {
        return Ok(Err(e));
    }
    let cred = conn
        .state
        .storage
        .accounts()
        .credential((&conn.domain, &user), sasl::HashAlg::Sha256)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "credential lookup failed");
            End::Error("internal-server-error", None)
        })?;
    let Some(cred) = cred else {
        return Ok(Err(SaslError::NotAuthorized));
    };
    let password = parsed.password;
    let ok = {
        let _permit = conn.state.hashing.acquire().await;
        tokio::task::spawn_blocking(move || sasl::plain_verify(&cred, &password))
            .await
            .unwrap_or(false)
    };
    Ok(if ok {
        Ok((user, None))
    } else {
        Err(SaslError::NotAuthorized)
    })
}

async fn scram(
    conn: &mut Conn,
    p: Profile,
    initial: Option<Result<Vec<u8>, SaslError>>,
    alg: sasl::HashAlg,
    plus: bool,
) -> Result<SaslOutcome, End> {
    let mut server = ScramServer::new(alg, plus, conn.bindings.clone());
    // Unknown users must look like real ones, down to the iteration count.
    server.set_fake_iterations(conn.state.config.auth.scram_iterations);
    let first = match initial_or_prompt(conn, p, initial).await? {
        Ok(m) => m,
        Err(e) => return Ok(Err(e)),
    };
    let authcid = match server.client_first(&first) {
        Ok(u) => u,
        Err(e) => return Ok(Err(e)),
    };
    let user = crate::modules::register::normalize_username(&authcid, &conn.domain);
    let cred = match &user {
        Some(u) => conn
            .state
            .storage
            .accounts()
            .credential((&conn.domain, u), alg)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "credential lookup failed");
                End::Error("internal-server-error", None)
            })?,
        None => None,
    };
    let server_first = server.server_first(cred.as_ref());
    conn.write_el(&sasl_el(p, "challenge", Some(&server_first)));
    let fin = match sasl_response(conn, p).await? {
        Ok(m) => m,
        Err(e) => return Ok(Err(e)),
    };
    let verified = server.client_final(&fin);
    let (Some(user), Ok(server_final)) = (user, verified) else {
        return Ok(Err(SaslError::NotAuthorized));
    };
    if cred.is_none() {
        return Ok(Err(SaslError::NotAuthorized));
    }
    if let Err(e) = check_authzid(server.authzid(), &user, &conn.domain) {
        return Ok(Err(e));
    }
    Ok(Ok((user, Some(server_final))))
}

/// IQs before authentication: only XEP-0077 registration, and only on a protected stream.
async fn preauth_iq(conn: &mut Conn, st: &Stanza) -> Result<(), End> {
    if conn.state.config.c2s.require_tls && !conn.secure() {
        return Err(End::Error("not-authorized", Some("STARTTLS first".into())));
    }
    let el = st.element()?;
    let payload = el.children().next();
    let is_register = payload
        .map(|p| p.ns() == crate::modules::register::NS)
        .unwrap_or(false);
    if !is_register {
        return Err(End::Error(
            "not-authorized",
            Some("authenticate first".into()),
        ));
    }
    let reply = match (st.type_.as_deref(), payload) {
        (Some(t @ ("get" | "set")), Some(payload)) if el.children().count() == 1 => {
            let domain = BareJid::new(&conn.domain)
                .map_err(|_| End::Error("internal-server-error", None))?;
            let module = conn
                .state
                .modules
                .for_iq(Scope::Server, crate::modules::register::NS)
                .cloned();
            let state: Arc<_> = conn.state.clone();
            let r = match module {
                Some(m) => {
                    m.handle_iq(IqRequest {
                        server: &state,
                        from: None,
                        to: &domain,
                        scope: Scope::Server,
                        set: t == "set",
                        payload,
                        session: None,
                        out: None,
                    })
                    .await
                }
                None => Err(StanzaError::new(Condition::ServiceUnavailable)),
            };
            match r {
                Ok(p) => crate::stanza::iq_result(st.id.as_deref().unwrap_or(""), None, None, p),
                Err(e) => error_reply(&el, &e),
            }
        }
        _ => error_reply(&el, &StanzaError::new(Condition::BadRequest)),
    };
    conn.write_el(&reply);
    Ok(())
}

/// RFC 6120 §7: bind a resource (client-chosen or generated). Ok(None) after an IQ error.
async fn bind(conn: &mut Conn, st: &Stanza, user: &str) -> Result<Option<Bound>, End> {
    let el = st.element()?;
    let Some(bind) = el
        .get_child("bind", NS_BIND)
        .filter(|_| st.type_.as_deref() == Some("set"))
    else {
        return Err(End::Error(
            "not-authorized",
            Some("bind a resource first".into()),
        ));
    };
    let bare = BareJid::new(&format!("{user}@{}", conn.domain))
        .map_err(|_| End::Error("internal-server-error", None))?;
    let requested = bind
        .get_child("resource", NS_BIND)
        .map(|r| r.text())
        .filter(|r| !r.trim().is_empty());
    let jid = match requested {
        Some(r) => match bare.with_resource_str(r.trim()) {
            Ok(j) => j,
            Err(_) => {
                conn.write_el(&error_reply(&el, &StanzaError::new(Condition::BadRequest)));
                return Ok(None);
            }
        },
        None => bare
            .with_resource_str(&crate::stanza::random_id())
            .map_err(|_| End::Error("internal-server-error", None))?,
    };
    let Some(handle) = bind_jid(conn, &jid) else {
        conn.write_el(&error_reply(
            &el,
            &StanzaError::with_text(Condition::ResourceConstraint, "too many resources"),
        ));
        return Ok(None);
    };
    let payload = Element::builder("bind", NS_BIND)
        .append(
            Element::builder("jid", NS_BIND)
                .append(jid.to_string())
                .build(),
        )
        .build();
    conn.write_el(&crate::stanza::iq_result(
        st.id.as_deref().unwrap_or(""),
        None,
        None,
        Some(payload),
    ));
    conn.flush().await?;
    tracing::info!(peer = %conn.peer, jid = %jid, "resource bound");
    Ok(Some(Bound {
        jid,
        handle,
        sm: None,
        inactive: false,
    }))
}

/// Register `jid` with the router (RFC 6120 §7): None when the account has too many
/// resources already.
fn bind_jid(conn: &Conn, jid: &FullJid) -> Option<SessionHandle> {
    let handle = new_handle(conn);
    route_jid(conn, jid, &handle).then_some(handle)
}

/// A session handle not yet reachable through the router (XEP-0386 sets its flags first).
pub(super) fn new_handle(conn: &Conn) -> SessionHandle {
    SessionHandle::new(
        conn.state.router.next_session_id(),
        conn.state.config.limits.session_queue,
    )
}

/// Make `handle` reachable as `jid`; false when the account has too many resources.
pub(super) fn route_jid(conn: &Conn, jid: &FullJid, handle: &SessionHandle) -> bool {
    let max = conn.state.config.limits.max_resources;
    let bare = jid.to_bare();
    conn.state
        .router
        .bind(bare.as_str(), jid.resource().as_str(), handle.clone(), max)
        .is_ok()
}
