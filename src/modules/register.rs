//! XEP-0077 In-Band Registration: account creation before authentication when
//! `registration.open`, and — always — password change and account removal for the logged-in
//! user.
use minidom::Element;

use super::{IqFuture, IqRequest, Module, Scope};
use crate::router::Kick;
use crate::stanza::{Condition, StanzaError};
use crate::storage::StorageError;

pub const NS: &str = "jabber:iq:register";
/// Stream feature namespace advertised before authentication when registration is open.
pub const NS_FEATURE: &str = "http://jabber.org/features/iq-register";

pub struct Register;

impl Module for Register {
    fn name(&self) -> &'static str {
        "register"
    }
    fn iq_namespaces(&self) -> &'static [(Scope, &'static str)] {
        &[(Scope::Server, NS), (Scope::Account, NS)]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn stream_features(
        &self,
        server: &crate::server::ServerState,
        authenticated: bool,
    ) -> Vec<Element> {
        if !authenticated && server.config.registration.open {
            vec![Element::builder("register", NS_FEATURE).build()]
        } else {
            Vec::new()
        }
    }
    fn handle_iq<'a>(&'a self, req: IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(async move {
            match req.from {
                None => unauthenticated(&req).await,
                // Another domain's users have no account here to manage.
                Some(_) if !req.is_local_sender() => Err(StanzaError::new(Condition::NotAllowed)),
                Some(from) => {
                    let user = from
                        .node()
                        .map(|n| n.as_str().to_string())
                        .unwrap_or_default();
                    authenticated(&req, &user, from.domain().as_str()).await
                }
            }
        })
    }
}

fn child_text(q: &Element, name: &str) -> Option<String> {
    q.get_child(name, NS).map(|e| e.text())
}

fn field(name: &str, value: Option<&str>) -> Element {
    let mut b = Element::builder(name, NS);
    if let Some(v) = value {
        b = b.append(v);
    }
    b.build()
}

async fn unauthenticated(req: &IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
    if !req.server.config.registration.open {
        return Err(StanzaError::with_text(
            if req.set {
                Condition::NotAllowed
            } else {
                Condition::ServiceUnavailable
            },
            "In-band registration is disabled on this server",
        ));
    }
    if !req.set {
        return Ok(Some(
            Element::builder("query", NS)
                .append(field(
                    "instructions",
                    Some("Choose a username and password to register with this server."),
                ))
                .append(field("username", None))
                .append(field("password", None))
                .build(),
        ));
    }
    let (Some(username), Some(password)) = (
        child_text(req.payload, "username"),
        child_text(req.payload, "password"),
    ) else {
        return Err(StanzaError::new(Condition::NotAcceptable));
    };
    if password.is_empty() {
        return Err(StanzaError::new(Condition::NotAcceptable));
    }
    let domain = req.to.domain().as_str();
    let user = normalize_username(&username, domain)
        .ok_or_else(|| StanzaError::with_text(Condition::JidMalformed, "Invalid username"))?;
    let creds = hash_password(password, req.server.config.auth.scram_iterations).await?;
    match req
        .server
        .storage
        .accounts()
        .create((domain, &user), &creds)
        .await
    {
        Ok(()) => {
            tracing::info!(user = %format!("{user}@{domain}"), "account registered in-band");
            Ok(None)
        }
        Err(StorageError::Conflict) => Err(StanzaError::new(Condition::Conflict)),
        Err(e) => Err(e.into()),
    }
}

async fn authenticated(
    req: &IqRequest<'_>,
    user: &str,
    domain: &str,
) -> Result<Option<Element>, StanzaError> {
    // Only the account itself may change or remove itself.
    if req.scope == Scope::Account && !req.is_self() {
        return Err(StanzaError::new(Condition::Forbidden));
    }
    if !req.set {
        return Ok(Some(
            Element::builder("query", NS)
                .append(field("registered", None))
                .append(field("username", Some(user)))
                .build(),
        ));
    }
    if req.payload.has_child("remove", NS) {
        req.server.storage.accounts().delete((domain, user)).await?;
        tracing::info!(user = %format!("{user}@{domain}"), "account removed in-band");
        let bare = format!("{user}@{domain}");
        // The reply goes out before the kick takes effect (the session flushes replies first).
        req.server.router.kick_user(&bare, Kick::AccountRemoved);
        return Ok(None);
    }
    let Some(password) = child_text(req.payload, "password").filter(|p| !p.is_empty()) else {
        return Err(StanzaError::new(Condition::BadRequest));
    };
    if let Some(u) = child_text(req.payload, "username") {
        if normalize_username(&u, domain).as_deref() != Some(user) {
            return Err(StanzaError::new(Condition::NotAllowed));
        }
    }
    let creds = hash_password(password, req.server.config.auth.scram_iterations).await?;
    if !req
        .server
        .storage
        .accounts()
        .set_credentials((domain, user), &creds)
        .await?
    {
        return Err(StanzaError::new(Condition::ItemNotFound));
    }
    tracing::info!(user = %format!("{user}@{domain}"), "password changed in-band");
    Ok(None)
}

/// Nodeprep a username as the localpart of `domain`; None when it is not a valid localpart.
pub fn normalize_username(username: &str, domain: &str) -> Option<String> {
    if username.is_empty() || username.contains(['@', '/']) {
        return None;
    }
    let jid = jid::BareJid::new(&format!("{username}@{domain}")).ok()?;
    jid.node().map(|n| n.as_str().to_string())
}

/// Derive SCRAM credentials off the async runtime (PBKDF2 is deliberately slow).
pub async fn hash_password(
    password: String,
    iterations: u32,
) -> Result<Vec<crate::sasl::ScramCredential>, StanzaError> {
    tokio::task::spawn_blocking(move || crate::sasl::new_credentials(&password, iterations))
        .await
        .map_err(|_| StanzaError::new(Condition::InternalServerError))?
        .map_err(|_| StanzaError::with_text(Condition::NotAcceptable, "Password not allowed"))
}
