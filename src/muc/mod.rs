//! XEP-0045 multi-user chat at `conference.<first domain>` (a [`Service`]): rooms, occupants,
//! the owner's configuration, group chat fan-out and private messages, with XEP-0421
//! occupant ids and XEP-0410 self-ping.
//!
//! Layout: [`room`] is the data model; [`occupants`] handles presence to occupant JIDs
//! (join, nick change, leave) and the role/affiliation broadcast helpers moderation uses;
//! [`messages`] groupchat fan-out, subject and private messages; [`owner`] creation and the
//! `muc#roomconfig` form; [`disco`] service and room discovery; [`iq`] IQs to rooms and
//! occupants. [`admin`], [`destroy`], [`invite`], [`archive`] and [`store`] are seams the
//! moderation/archive/storage work fills.

pub mod admin;
pub mod archive;
pub mod destroy;
pub mod disco;
pub mod form;
pub mod history;
pub mod invite;
pub mod iq;
pub mod messages;
pub mod occupant_id;
pub mod occupants;
pub mod owner;
pub mod room;
pub mod store;
#[cfg(test)]
mod tests;
pub mod voice;

use bytes::Bytes;
use jid::{FullJid, Jid};
use serde::Deserialize;
use std::sync::Arc;

use crate::server::ServerState;
use crate::services::{Inbound, Service, ServiceFuture};
use crate::stanza::{Condition, ElementExt, StanzaError};
use crate::xml::Stanza;

pub use room::{Affiliation, Role, Room, RoomConfig, RoomRef, Rooms};

pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_USER: &str = "http://jabber.org/protocol/muc#user";
pub const NS_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";

/// The `[muc]` configuration section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MucConfig {
    /// Serve XEP-0045 group chat.
    pub enabled: bool,
    /// The service's domain; empty: `conference.<first domain>`.
    pub domain: String,
    /// Above this many occupants a room is "crowded" (ejabberd's max_users_presence): the
    /// presence of non-moderators is announced only to moderators, and a joining occupant
    /// receives only the moderators' presence, so joins stay O(moderators) instead of O(N).
    /// 0: no limit beyond the one `limits.session_queue` imposes (a joiner's queue must hold
    /// every presence, the history and the subject).
    pub max_presence_broadcast: usize,
    /// Upper bound for a room's `max_occupants` (and the limit when a room sets none); 0: no
    /// limit.
    pub max_occupants: usize,
    /// Upper bound for a room's history length (messages kept for history on join).
    pub max_history: usize,
    /// Rooms in memory at most (creation beyond it is refused with resource-constraint).
    pub max_rooms: usize,
    /// Milliseconds a groupchat sender's session pauses after a message when a recipient is
    /// more than half a `limits.session_queue` behind (flow control before the slow-consumer
    /// disconnect); 0: never.
    pub sender_pause_ms: u64,
}

impl Default for MucConfig {
    fn default() -> Self {
        MucConfig {
            enabled: true,
            domain: String::new(),
            max_presence_broadcast: 500,
            max_occupants: 20_000,
            max_history: 100,
            max_rooms: 100_000,
            sender_pause_ms: 1,
        }
    }
}

/// The service.
pub struct MucService {
    pub domain: String,
    pub config: MucConfig,
    pub rooms: Arc<Rooms>,
    /// IQs forwarded between occupants awaiting their reply.
    pub pending: iq::Pending,
    /// The crowded-room threshold in effect: `max_presence_broadcast`, but never so high
    /// that a joiner's own queue (`limits.session_queue`) could overflow with the occupants'
    /// presence, history and subject pushed while its session task is busy joining.
    pub presence_limit: usize,
}

/// What a handler gets for one stanza.
pub struct Ctx<'a> {
    pub server: &'a Arc<ServerState>,
    pub svc: &'a MucService,
    /// The sender's real full JID (authenticated by its session).
    pub from: &'a FullJid,
    pub to: &'a Jid,
    pub stanza: &'a Stanza,
}

impl MucService {
    /// The service for this configuration, or None when disabled.
    pub fn from_config(config: &crate::config::Config, domains: &[String]) -> Option<MucService> {
        let c = &config.muc;
        if !c.enabled {
            return None;
        }
        let domain = if c.domain.is_empty() {
            format!("conference.{}", domains.first()?)
        } else {
            c.domain.to_ascii_lowercase()
        };
        let cap = config
            .limits
            .session_queue
            .saturating_sub(c.max_history + 16)
            .max(1);
        let presence_limit = match c.max_presence_broadcast {
            0 => cap,
            n => n.min(cap),
        };
        Some(MucService {
            presence_limit,
            domain,
            config: c.clone(),
            rooms: Arc::new(Rooms::default()),
            pending: iq::Pending::default(),
        })
    }

    /// The room for a local part: in memory, else loaded from storage (persistent rooms).
    pub async fn room(&self, server: &ServerState, name: &str) -> Option<RoomRef> {
        if let Some(r) = self.rooms.get(name) {
            return Some(r);
        }
        match store::load(server, &self.domain, name).await {
            Ok(Some(s)) => {
                let mut room = Room::from_stored(&self.domain, s)?;
                archive::seed_history(server, &mut room).await;
                Some(self.rooms.insert(room).0)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!(error = %e, room = name, "loading a room failed");
                None
            }
        }
    }

    /// Save a persistent room's snapshot (config, affiliations, subject); nothing for a
    /// temporary room. Moderation calls this after changing affiliations.
    pub async fn persist(&self, server: &ServerState, room: &RoomRef) {
        let snapshot = {
            let r = room::lock(room);
            r.config.persistent.then(|| r.stored())
        };
        if let Some(s) = snapshot {
            if let Err(e) = store::save(server, &self.domain, &s).await {
                tracing::error!(error = %e, room = s.name, "saving a room failed");
            }
        }
    }
}

impl Service for MucService {
    fn domain(&self) -> &str {
        &self.domain
    }

    fn name(&self) -> &str {
        "Chatrooms"
    }

    fn handle<'a>(&'a self, req: Inbound<'a>) -> ServiceFuture<'a> {
        Box::pin(async move {
            let ctx = Ctx {
                server: req.server,
                svc: self,
                from: req.from,
                to: req.to,
                stanza: req.stanza,
            };
            dispatch(&ctx).await;
        })
    }

    /// XEP-0045 "service-shutdown-kick" (status 332): every occupant is told it leaves the room because the service
    /// shuts down (its own unavailable presence with 110 and 332). Others' departures are not
    /// announced: everyone is leaving, and N² presences would only delay the shutdown.
    fn stopping(&self, _server: &Arc<ServerState>) {
        occupants::announce_shutdown(&self.rooms);
    }

    fn started(&self, server: &Arc<ServerState>) {
        let server = server.clone();
        let domain = self.domain.clone();
        let rooms = self.rooms.clone();
        // Persistent rooms are also loaded on demand (MucService::room); loading them all
        // up front makes the public ones show in disco#items after a restart.
        tokio::spawn(async move {
            match store::load_all(&server, &domain).await {
                Ok(list) => {
                    for s in list {
                        if let Some(mut room) = Room::from_stored(&domain, s) {
                            archive::seed_history(&server, &mut room).await;
                            rooms.insert(room);
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "loading rooms failed"),
            }
        });
    }
}

async fn dispatch(ctx: &Ctx<'_>) {
    let st = ctx.stanza;
    match (ctx.to.node(), ctx.to.resource()) {
        (None, _) => match st.name.as_str() {
            "iq" => Box::pin(iq::to_service(ctx)).await,
            // Nothing to do with messages or presence to the service itself.
            "message" if st.type_.as_deref() != Some("error") => {
                bounce(ctx, StanzaError::new(Condition::ServiceUnavailable))
            }
            _ => {}
        },
        (Some(_), None) => match st.name.as_str() {
            "iq" => Box::pin(iq::to_room(ctx)).await,
            "message" => Box::pin(messages::to_room(ctx)).await,
            // §7.2.1: entering needs a nick.
            "presence" if st.type_.is_none() => {
                bounce(ctx, StanzaError::new(Condition::JidMalformed))
            }
            _ => {}
        },
        (Some(_), Some(_)) => match st.name.as_str() {
            "presence" => Box::pin(occupants::presence(ctx)).await,
            "message" => Box::pin(messages::to_occupant(ctx)).await,
            _ => Box::pin(iq::to_occupant(ctx)).await,
        },
    }
}

/// Send bytes to the sender's session (replies, errors).
pub fn reply(ctx: &Ctx<'_>, bytes: Bytes) {
    ctx.server.route(&Jid::from(ctx.from.clone()), bytes);
}

/// An error reply to the stanza being handled, from the address it was sent to. Errors are
/// never answered with errors.
pub fn bounce(ctx: &Ctx<'_>, err: StanzaError) {
    let st = ctx.stanza;
    if st.type_.as_deref() == Some("error") {
        return;
    }
    let Ok(mut el) = st.element() else {
        return;
    };
    el.put_attr("from", ctx.from.as_str());
    el.put_attr("to", ctx.to.as_str());
    let mut reply_el = crate::stanza::error_reply(&el, &err);
    if st.name == "presence" {
        // §7.2: a refused join echoes the <x xmlns='muc'/> so the client knows what failed.
        if let Some(x) = el.get_child("x", NS_MUC) {
            reply_el.append_child(x.clone());
        }
    }
    reply(ctx, crate::xml::to_bytes(&reply_el));
}

/// A tree built or edited by a handler, as fan-out bytes: `from` set, no 'to' (each
/// recipient session adds its own, [`crate::router::Deliver::ToSelf`]).
pub fn fanout_bytes(el: &minidom::Element, from: &str) -> Bytes {
    let ctx = Arc::new(crate::xml::NsContext {
        default_ns: Some(crate::xml::NS_CLIENT.to_string()),
        prefixes: Vec::new(),
    });
    match Stanza::parse(crate::xml::to_bytes(el), ctx) {
        Ok(st) => st.rewrite(Some(from), Some("")),
        Err(_) => Bytes::new(),
    }
}
