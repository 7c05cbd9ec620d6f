//! XEP-0388 Extensible SASL Profile (SASL2) with its inline features: XEP-0386 Bind 2
//! (resource binding plus XEP-0198 enable, XEP-0352 state and module features such as
//! carbons, all before the first stanza), XEP-0198 resumption inside `<authenticate/>`, and
//! XEP-0484 FAST (HT-SHA-256-* token logins, token issue, rotation and invalidation).
//!
//! The password mechanisms are the RFC 6120 ones (`negotiate::run_mechanism`, same SCRAM and
//! PLAIN engine, same failure limit); only the framing differs. Unlike RFC 6120 there is no
//! stream restart: `<success/>` is followed directly by the new stream features. Offered on
//! TLS streams only (XEP-0388 §7).

use base64::Engine;
use jid::{BareJid, FullJid};
use minidom::Element;

use super::negotiate::{
    authenticated_features, bound_features, decode_b64, new_handle, offered_mechanisms, route_jid,
    run_mechanism, sasl_failure, Bound, Profile,
};
use super::session::{failed_el, new_sm, try_resume};
use super::{csi, fast, sm, Conn, End};
use crate::sasl::ht::{self, HtMech};
use crate::sasl::{Mechanism, SaslError};
use crate::stanza::BuilderExt;
use crate::storage::UserRef;
use crate::xml::Stanza;

pub const NS: &str = "urn:xmpp:sasl:2";
pub const NS_BIND2: &str = "urn:xmpp:bind:0";
pub const NS_FAST: &str = "urn:xmpp:fast:0";

/// Longest Bind 2 `<tag/>` used in a resource; longer ones are dropped.
const MAX_TAG_LEN: usize = 64;
/// Longest SASL2 `<user-agent id=…/>` accepted (a UUID is 36 characters).
const MAX_CLIENT_ID_LEN: usize = 128;

/// How an `<authenticate/>` ended.
pub enum Outcome {
    /// `<failure/>` sent; the client may try again (counted against the failure limit).
    Failed,
    /// `<success/>` and the authenticated features sent; the client binds the RFC 6120 way.
    Authenticated(String),
    /// Bound with Bind 2; `<success/>` and features are on the wire.
    Bound(Box<Bound>),
    /// Resumed inline: the connection now belongs to the resumed session's task.
    Handover,
}

/// The `<authentication/>` stream feature, with its inline features.
pub fn feature(conn: &Conn) -> Option<Element> {
    let mechs = offered_mechanisms(conn);
    if !conn.secure() || mechs.is_empty() {
        return None;
    }
    let mut auth = Element::builder("authentication", NS);
    for m in mechs {
        auth = auth.append(Element::builder("mechanism", NS).append(m.name()).build());
    }
    let mut vars = Element::builder("inline", NS_BIND2);
    for var in bind2_vars(conn) {
        vars = vars.append(Element::builder("feature", NS_BIND2).at("var", var).build());
    }
    let mut inline = Element::builder("inline", NS)
        .append(
            Element::builder("bind", NS_BIND2)
                .append(vars.build())
                .build(),
        )
        .append(Element::builder("sm", sm::NS).build());
    if conn.state.fast_keys.key().is_some() {
        let mut f = Element::builder("fast", NS_FAST);
        for m in HtMech::offered(&conn.bindings) {
            f = f.append(
                Element::builder("mechanism", NS_FAST)
                    .append(m.name())
                    .build(),
            );
        }
        inline = inline.append(f.build());
    }
    Some(auth.append(inline.build()).build())
}

/// Bind 2 inline features: the session's own (SM, CSI) and whatever modules register.
fn bind2_vars(conn: &Conn) -> Vec<&'static str> {
    let mut v = vec![sm::NS, csi::NS];
    for m in conn.state.modules.all() {
        v.extend_from_slice(m.bind2_features());
    }
    v
}

/// `<fast/>` in an `<authenticate/>`.
struct FastRequest {
    count: Option<i64>,
    invalidate: bool,
}

/// A parsed `<authenticate/>`.
struct Request {
    mechanism: String,
    initial: Option<Result<Vec<u8>, SaslError>>,
    /// `<user-agent id=…/>`: the client installation (FAST tokens are bound to it).
    client_id: Option<String>,
    bind: Option<Element>,
    resume: Option<Element>,
    request_token: Option<String>,
    fast: Option<FastRequest>,
}

impl Request {
    fn parse(el: &Element) -> Result<Request, SaslError> {
        let mechanism = el
            .attr("mechanism")
            .ok_or(SaslError::InvalidMechanism)?
            .to_string();
        let initial = el
            .get_child("initial-response", NS)
            .map(|i| decode_b64(&i.text()));
        let client_id = el
            .get_child("user-agent", NS)
            .and_then(|u| u.attr("id"))
            .map(str::trim)
            .filter(|id| !id.is_empty() && id.len() <= MAX_CLIENT_ID_LEN)
            .map(str::to_string);
        let fast = match el.get_child("fast", NS_FAST) {
            None => None,
            Some(f) => Some(FastRequest {
                count: match f.attr("count") {
                    None => None,
                    Some(c) => Some(c.trim().parse::<u32>().map(i64::from).map_err(|_| {
                        SaslError::MalformedRequest("FAST count must be a positive integer".into())
                    })?),
                },
                invalidate: matches!(f.attr("invalidate"), Some("true" | "1")),
            }),
        };
        Ok(Request {
            mechanism,
            initial,
            client_id,
            bind: el.get_child("bind", NS_BIND2).cloned(),
            resume: el.get_child("resume", sm::NS).cloned(),
            request_token: el
                .get_child("request-token", NS_FAST)
                .and_then(|r| r.attr("mechanism"))
                .map(str::to_string),
            fast,
        })
    }
}

/// A successful mechanism run.
struct Authed {
    user: String,
    additional: Option<Vec<u8>>,
    /// Set for a FAST login: the token's mechanism and expiry (for rotation).
    fast: Option<(HtMech, i64)>,
}

fn internal(e: crate::storage::StorageError) -> End {
    tracing::error!(error = %e, "FAST token storage failed");
    End::Error("internal-server-error", None)
}

/// Handle one `<authenticate/>` (on a TLS stream, before authentication).
pub async fn authenticate(conn: &mut Conn, st: &Stanza) -> Result<Outcome, End> {
    let el = st.element()?;
    let result = match Request::parse(&el) {
        Ok(mut req) => run(conn, &mut req).await?.map(|a| (req, a)),
        Err(e) => Err(e),
    };
    let (req, authed) = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(peer = %conn.peer, condition = e.condition(), "SASL2 authentication failed");
            // XEP-0388 §2.6.2: a failed request's inline features are not processed.
            sasl_failure(conn, Profile::Sasl2, &e);
            return Ok(Outcome::Failed);
        }
    };
    let bare = BareJid::new(&format!("{}@{}", authed.user, conn.domain))
        .map_err(|_| End::Error("internal-server-error", None))?;
    tracing::info!(peer = %conn.peer, user = %bare, mechanism = %req.mechanism, "authenticated (SASL2)");
    let mut success = Element::builder("success", NS).build();
    if let Some(d) = &authed.additional {
        success.append_child(
            Element::builder("additional-data", NS)
                .append(base64::engine::general_purpose::STANDARD.encode(d))
                .build(),
        );
    }
    if let Some(token) = Box::pin(token_for_success(conn, &req, &authed)).await? {
        success.append_child(token);
    }
    // XEP-0386 §3.2: resumption first; when it works, the bind request is ignored.
    if let Some(resume) = &req.resume {
        success.append_child(identifier(bare.as_str()));
        let inline = Box::new(sm::InlineResume {
            success,
            features: bound_features(conn),
        });
        match try_resume(conn, Some(resume), &authed.user, Some(inline)) {
            Ok(()) => return Ok(Outcome::Handover),
            Err((back, condition)) => {
                let Some(back) = back else {
                    return Err(End::Error("internal-server-error", None));
                };
                success = back.success;
                success.remove_child("authorization-identifier", NS);
                success.append_child(failed_el(condition));
            }
        }
    }
    let bound = match &req.bind {
        Some(b) => bind2(conn, &bare, req.client_id.as_deref(), b, &mut success),
        None => None,
    };
    match bound {
        Some(b) => {
            success.append_child(identifier(b.jid.as_str()));
            conn.write_el(&success);
            let features = bound_features(conn);
            conn.write_bytes(&features);
            // Flushed here: the session counts (XEP-0198) what is in the buffer when it starts.
            conn.flush().await?;
            tracing::info!(peer = %conn.peer, jid = %b.jid, "resource bound (Bind 2)");
            Ok(Outcome::Bound(Box::new(b)))
        }
        None => {
            success.append_child(identifier(bare.as_str()));
            conn.write_el(&success);
            let features = authenticated_features(conn);
            conn.write_bytes(&features);
            Ok(Outcome::Authenticated(authed.user))
        }
    }
}

fn identifier(jid: &str) -> Element {
    Element::builder("authorization-identifier", NS)
        .append(jid)
        .build()
}

/// Run the requested mechanism: a FAST HT-* one, or a password mechanism.
async fn run(conn: &mut Conn, req: &mut Request) -> Result<Result<Authed, SaslError>, End> {
    let fast_offered = conn.state.fast_keys.key().is_some()
        && HtMech::offered(&conn.bindings)
            .iter()
            .any(|m| m.name() == req.mechanism);
    if let (true, Some(m)) = (fast_offered, HtMech::from_name(&req.mechanism)) {
        return fast_login(conn, req, m).await;
    }
    let mech =
        Mechanism::from_name(&req.mechanism).filter(|m| offered_mechanisms(conn).contains(m));
    let Some(m) = mech else {
        return Ok(Err(SaslError::InvalidMechanism));
    };
    let r = run_mechanism(conn, Profile::Sasl2, m, req.initial.take()).await?;
    Ok(r.map(|(user, additional)| Authed {
        user,
        additional,
        fast: None,
    }))
}

/// XEP-0484 §4.4: one message, `authcid NUL HMAC(token, "Initiator" || cb-data)`, checked
/// against the client's 'new' then 'current' token (§6.1), bound to the mechanism it was
/// issued for, unexpired, and with a growing 'count' when one is given.
async fn fast_login(
    conn: &mut Conn,
    req: &mut Request,
    mech: HtMech,
) -> Result<Result<Authed, SaslError>, End> {
    let Some(key) = conn.state.fast_keys.key() else {
        return Ok(Err(SaslError::TemporaryAuthFailure));
    };
    let msg = match req.initial.take() {
        Some(Ok(m)) => m,
        Some(Err(e)) => return Ok(Err(e)),
        None => {
            return Ok(Err(SaslError::MalformedRequest(
                "HT mechanisms need an initial response".into(),
            )))
        }
    };
    let (authcid, proof) = match ht::parse(&msg) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let user = crate::modules::register::normalize_username(&authcid, &conn.domain);
    let (Some(user), Some(client_id), Some(cb)) =
        (user, req.client_id.as_deref(), mech.cb_data(&conn.bindings))
    else {
        return Ok(Err(SaslError::NotAuthorized));
    };
    let domain = conn.domain.clone();
    let u: UserRef<'_> = (&domain, &user);
    let store = conn.state.storage.fast();
    let tokens = store.tokens(u, client_id).await.map_err(internal)?;
    let now = crate::stanza::now_ms() / 1000;
    for t in tokens {
        if t.mechanism != mech.name() {
            continue; // §4.4: a token only works with the mechanism it was issued for
        }
        let Some(token) = fast::open(key, &domain, &user, client_id, &t.sealed) else {
            continue;
        };
        if !ht::verify(&token, &cb, &proof) {
            continue;
        }
        if t.expires_at <= now {
            return Ok(Err(SaslError::CredentialsExpired));
        }
        let count = req.fast.as_ref().and_then(|f| f.count);
        if !store
            .used(u, client_id, t.slot, count)
            .await
            .map_err(internal)?
        {
            tracing::info!(peer = %conn.peer, "FAST count replayed");
            return Ok(Err(SaslError::NotAuthorized));
        }
        let Ok(additional) = ht::responder_hash(&token, &cb) else {
            return Ok(Err(SaslError::TemporaryAuthFailure));
        };
        return Ok(Ok(Authed {
            user,
            additional: Some(additional),
            fast: Some((mech, t.expires_at)),
        }));
    }
    Ok(Err(SaslError::NotAuthorized))
}

/// XEP-0484 §4.2/§4.5/§4.6 after a successful login: invalidate on request, then issue a
/// token when one was requested (for an offered mechanism), or rotate one used in the
/// second half of its life. The `<token/>` for `<success/>`, if any.
async fn token_for_success(
    conn: &mut Conn,
    req: &Request,
    authed: &Authed,
) -> Result<Option<Element>, End> {
    let Some(client_id) = req.client_id.as_deref() else {
        return Ok(None); // tokens are per client installation
    };
    let domain = conn.domain.clone();
    let u: UserRef<'_> = (&domain, &authed.user);
    let store = conn.state.storage.fast();
    let invalidate = req.fast.as_ref().is_some_and(|f| f.invalidate);
    if invalidate && authed.fast.is_some() {
        store.invalidate(u, client_id).await.map_err(internal)?;
    }
    let cfg = &conn.state.config.auth;
    let lifetime = i64::try_from(cfg.fast_token_lifetime_secs).unwrap_or(i64::MAX / 2);
    let now = crate::stanza::now_ms() / 1000;
    let offered = HtMech::offered(&conn.bindings);
    let mech = match (&req.request_token, authed.fast) {
        (Some(m), _) => offered.into_iter().find(|o| o.name() == m),
        (None, Some((m, expires))) if !invalidate && expires - now < lifetime / 2 => Some(m),
        _ => None,
    };
    let (Some(mech), Some(key)) = (mech, conn.state.fast_keys.key()) else {
        return Ok(None);
    };
    let token = fast::new_token();
    let sealed = fast::seal(key, &domain, &authed.user, client_id, &token);
    let expires = now.saturating_add(lifetime);
    store
        .issue(
            u,
            client_id,
            mech.name(),
            &sealed,
            expires,
            cfg.fast_max_clients,
        )
        .await
        .map_err(internal)?;
    Ok(Some(
        Element::builder("token", NS_FAST)
            .at(
                "expiry",
                crate::stanza::xep82_datetime(expires.saturating_mul(1000)),
            )
            .at("token", token)
            .build(),
    ))
}

/// The server-generated part of a Bind 2 resource. With a `<user-agent id/>` it is stable per
/// (account, client installation): XEP-0386 §3.2.1 allows stable identifiers, and binding the
/// same resource again ends the client's earlier session (`<conflict/>`), which is what the
/// XEP asks for ("SHOULD terminate any earlier sessions from the same client"). The id itself
/// is not exposed: only 72 bits of a SHA-256 over it (a UUID v4 has 122 random bits).
fn resource_suffix(bare: &BareJid, client_id: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    match client_id {
        Some(id) => {
            let digest = Sha256::new()
                .chain_update(b"starling bind2 resource\0")
                .chain_update(bare.as_str().as_bytes())
                .chain_update(b"\0")
                .chain_update(id.as_bytes())
                .finalize();
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..9])
        }
        None => crate::stanza::random_id(),
    }
}

/// XEP-0386 §3.2: bind `tag/suffix` and enable the requested inline features. The
/// `<bound/>` answer goes into `success`. None when the account has too many resources
/// (authentication still succeeds; the client may bind the RFC 6120 way and get the error).
fn bind2(
    conn: &Conn,
    bare: &BareJid,
    client_id: Option<&str>,
    req: &Element,
    success: &mut Element,
) -> Option<Bound> {
    let suffix = resource_suffix(bare, client_id);
    let tag = req
        .get_child("tag", NS_BIND2)
        .map(|t| t.text().trim().to_string())
        .filter(|t| !t.is_empty() && t.len() <= MAX_TAG_LEN);
    let jid: FullJid = tag
        .and_then(|t| bare.with_resource_str(&format!("{t}/{suffix}")).ok())
        .or_else(|| bare.with_resource_str(&suffix).ok())?;
    // Module features (e.g. carbons) are set on the handle before the router can reach it,
    // so no stanza routed to the new resource misses them (XEP-0386 §1: atomic set-up).
    let handle = new_handle(conn);
    let mut bound = Element::builder("bound", NS_BIND2).build();
    let mut sm_request = None;
    let mut inactive = false;
    for child in req.children() {
        match (child.ns().as_str(), child.name()) {
            (NS_BIND2, _) => {}
            (sm::NS, "enable") => sm_request = sm_request.or(Some(child)),
            (csi::NS, "inactive") => inactive = true,
            (csi::NS, "active") => inactive = false,
            (ns, _) => {
                for m in conn.state.modules.all() {
                    if m.bind2_features().contains(&ns) {
                        if let Some(r) = m.bind2_enable(&conn.state, &jid, &handle, child) {
                            bound.append_child(r);
                        }
                    }
                }
            }
        }
    }
    if !route_jid(conn, &jid, &handle) {
        return None;
    }
    // After binding: an SM-ID is registered only for a session that exists.
    let sm_state = sm_request.map(|r| {
        let (state, enabled) = new_sm(&conn.state, bare, &handle.mailbox, Some(r));
        bound.append_child(enabled);
        state
    });
    success.append_child(bound);
    Some(Bound {
        jid,
        handle,
        sm: sm_state,
        inactive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Result<Request, SaslError> {
        let el: Element = xml.parse().unwrap();
        Request::parse(&el)
    }

    #[test]
    fn parses_authenticate() {
        let r = parse(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'>\
             <initial-response>YWxpY2U=</initial-response>\
             <user-agent id=' d4565fa7-4d72-4749-b3d3-740edbf87770 '><software>x</software></user-agent>\
             <bind xmlns='urn:xmpp:bind:0'><tag>T</tag></bind>\
             <resume xmlns='urn:xmpp:sm:3' previd='p' h='3'/>\
             <request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-EXPR'/>\
             <fast xmlns='urn:xmpp:fast:0' count='7' invalidate='1'/></authenticate>",
        )
        .unwrap();
        assert_eq!(r.mechanism, "HT-SHA-256-NONE");
        assert_eq!(r.initial, Some(Ok(b"alice".to_vec())));
        assert_eq!(
            r.client_id.as_deref(),
            Some("d4565fa7-4d72-4749-b3d3-740edbf87770")
        );
        assert!(r.bind.is_some() && r.resume.is_some());
        assert_eq!(r.request_token.as_deref(), Some("HT-SHA-256-EXPR"));
        let f = r.fast.unwrap();
        assert_eq!((f.count, f.invalidate), (Some(7), true));

        // No initial response is not an empty one; an empty one is.
        let r = parse("<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'/>").unwrap();
        assert!(r.initial.is_none() && r.client_id.is_none() && r.fast.is_none());
        let r = parse(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response/></authenticate>",
        )
        .unwrap();
        assert_eq!(r.initial, Some(Ok(Vec::new())));
    }

    #[test]
    fn rejects_bad_authenticate() {
        assert!(matches!(
            parse("<authenticate xmlns='urn:xmpp:sasl:2'/>"),
            Err(SaslError::InvalidMechanism)
        ));
        for count in ["-1", "x", "99999999999"] {
            let xml = format!(
                "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'>\
                 <fast xmlns='urn:xmpp:fast:0' count='{count}'/></authenticate>"
            );
            assert!(matches!(parse(&xml), Err(SaslError::MalformedRequest(_))));
        }
        let long = "a".repeat(MAX_CLIENT_ID_LEN + 1);
        let r = parse(&format!(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><user-agent id='{long}'/></authenticate>"
        ))
        .unwrap();
        assert!(r.client_id.is_none());
    }

    #[test]
    fn resource_suffix_is_stable_per_client_and_hides_the_id() {
        let a = BareJid::new("alice@example.org").unwrap();
        let b = BareJid::new("bob@example.org").unwrap();
        let id = "d4565fa7-4d72-4749-b3d3-740edbf87770";
        let s = resource_suffix(&a, Some(id));
        assert_eq!(s, resource_suffix(&a, Some(id)));
        assert_ne!(
            s,
            resource_suffix(&a, Some("0b7f5b5e-4f4b-4b43-9a3e-2f1a4a0c9e11"))
        );
        assert_ne!(s, resource_suffix(&b, Some(id)));
        assert!(!s.contains("d4565fa7"));
        assert_eq!(s.len(), 12);
        assert_ne!(resource_suffix(&a, None), resource_suffix(&a, None));
    }
}
