//! The data model of a XEP-0045 room: its configuration (§10.2 form fields), affiliations
//! (§5.2, long-lived, persisted) and the occupants present now with their roles (§5.1,
//! per-visit). Nothing here does I/O except pushing already-serialized bytes into the
//! occupants' session queues (each occupant caches its sessions' handles, so a fan-out is N
//! queue pushes with no registry lookup).
//!
//! Locking: the registry maps a room's local part to `Arc<Mutex<Room>>` (a std mutex: it is
//! never held across an `.await`). Holding the room's lock while fanning out is deliberate:
//! every occupant then sees the room's messages and presence in the same order.

use bytes::Bytes;
use jid::{BareJid, FullJid};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use crate::router::{Deliver, SessionHandle};

/// §5.2 affiliations, long-lived and stored with the room. `None` is never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affiliation {
    Owner,
    Admin,
    Member,
    None,
    Outcast,
}

impl Affiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Owner => "owner",
            Affiliation::Admin => "admin",
            Affiliation::Member => "member",
            Affiliation::None => "none",
            Affiliation::Outcast => "outcast",
        }
    }

    pub fn parse(s: &str) -> Option<Affiliation> {
        Some(match s {
            "owner" => Affiliation::Owner,
            "admin" => Affiliation::Admin,
            "member" => Affiliation::Member,
            "none" => Affiliation::None,
            "outcast" => Affiliation::Outcast,
            _ => return None,
        })
    }

    /// Higher is more privileged (§5.2 "owner > admin > member > none > outcast").
    pub fn rank(self) -> u8 {
        match self {
            Affiliation::Owner => 4,
            Affiliation::Admin => 3,
            Affiliation::Member => 2,
            Affiliation::None => 1,
            Affiliation::Outcast => 0,
        }
    }

    /// The role an occupant with this affiliation gets on entering (§5.1.2 table).
    pub fn default_role(self, moderated: bool) -> Role {
        match self {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            Affiliation::None if moderated => Role::Visitor,
            Affiliation::None => Role::Participant,
            Affiliation::Outcast => Role::None,
        }
    }
}

/// §5.1 roles, per visit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Moderator,
    Participant,
    Visitor,
    None,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Moderator => "moderator",
            Role::Participant => "participant",
            Role::Visitor => "visitor",
            Role::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "moderator" => Role::Moderator,
            "participant" => Role::Participant,
            "visitor" => Role::Visitor,
            "none" => Role::None,
            _ => return None,
        })
    }
}

/// `muc#roomconfig_whois`: who may see occupants' real JIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Whois {
    /// Semi-anonymous (§4.2): moderators only.
    Moderators,
    /// Non-anonymous: every occupant (status code 100 on entering).
    Anyone,
}

/// Every field of the §10.2 `muc#roomconfig` form this service honours. Serde-friendly so
/// storage can keep it as one document (unknown fields default, for forward compatibility).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomConfig {
    /// `muc#roomconfig_roomname`.
    pub name: String,
    /// `muc#roomconfig_roomdesc`.
    pub description: String,
    /// `muc#roomconfig_persistentroom`: kept (with its config and affiliations) when empty.
    pub persistent: bool,
    /// `muc#roomconfig_publicroom`: listed in the service's disco#items.
    pub public: bool,
    /// `muc#roomconfig_membersonly`.
    pub members_only: bool,
    /// `muc#roomconfig_moderatedroom`: visitors cannot speak.
    pub moderated: bool,
    /// `muc#roomconfig_roomsecret` (with `muc#roomconfig_passwordprotectedroom`); empty: none.
    pub password: String,
    /// `muc#roomconfig_maxusers`; 0: no limit beyond the service's.
    pub max_occupants: usize,
    /// `muc#roomconfig_whois`.
    pub whois: Whois,
    /// `muc#maxhistoryfetch` (Prosody's `muc#roomconfig_historylength`): messages kept for
    /// history on join.
    pub history_length: usize,
    /// `muc#roomconfig_allowpm`: private messages between occupants (anyone/none).
    pub allow_private_messages: bool,
    /// `muc#roomconfig_allowinvites`: occupants (not only admins) may invite.
    pub allow_invites: bool,
    /// `muc#roomconfig_changesubject`: participants (not only moderators) may set the subject.
    pub change_subject: bool,
    /// `muc#roomconfig_enablelogging` (also `mam` in Conversations' eyes): the room's messages
    /// are archived (XEP-0313 on the room, status code 170).
    pub logging: bool,
    /// `muc#roomconfig_getmemberlist`: occupants (not only admins) may get the member list.
    pub members_can_get_member_list: bool,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            moderated: false,
            password: String::new(),
            max_occupants: 0,
            whois: Whois::Moderators,
            history_length: 20,
            allow_private_messages: true,
            allow_invites: false,
            change_subject: false,
            logging: false,
            members_can_get_member_list: true,
        }
    }
}

/// One session (device) of an occupant: where its copies go.
#[derive(Debug, Clone)]
pub struct OccupantSession {
    pub jid: FullJid,
    pub handle: SessionHandle,
}

/// Someone in the room now: one nick, one real bare JID, one or more sessions (§7.2 allows
/// several devices of one user under one nick; the occupancy ends with the last one).
#[derive(Debug, Clone)]
pub struct Occupant {
    pub nick: String,
    pub real: BareJid,
    pub sessions: Vec<OccupantSession>,
    pub role: Role,
    pub affiliation: Affiliation,
    /// The children of the occupant's last presence (show, status, caps...), without the
    /// `muc`/`muc#user`/occupant-id payloads: what the room re-broadcasts with its own
    /// `<x xmlns='muc#user'/>`.
    pub presence: Vec<minidom::Element>,
    /// XEP-0421 id: stable per room and real bare JID.
    pub occupant_id: String,
    /// The occupant's current available presence as others receive it (no 'to'), without
    /// and with the real JID: built once per change, pushed to every joiner.
    pub cached_anon: Bytes,
    pub cached_full: Bytes,
}

impl Occupant {
    /// Push to every session of this occupant; the session adds its own 'to' (see
    /// [`Deliver::ToSelf`]). Returns how many sessions took it.
    pub fn push(&self, bytes: &Bytes) -> usize {
        self.sessions
            .iter()
            .filter(|s| s.handle.send(Deliver::ToSelf(bytes.clone())))
            .count()
    }

    pub fn has_session(&self, jid: &FullJid) -> bool {
        self.sessions.iter().any(|s| &s.jid == jid)
    }
}

/// The current subject (§8.1): who set it (a nick, or empty for the room) and the text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub nick: String,
    pub text: String,
}

/// One message kept for history on join (§7.2.15): its fan-out bytes (from the occupant,
/// no 'to') and when it was sent.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub bytes: Bytes,
    pub at_ms: i64,
}

/// A room, present in memory.
#[derive(Debug)]
pub struct Room {
    /// room@service.
    pub jid: BareJid,
    pub config: RoomConfig,
    /// Non-`none` affiliations by real bare JID.
    pub affiliations: HashMap<BareJid, Affiliation>,
    /// Occupants by nick.
    pub occupants: HashMap<String, Occupant>,
    /// Occupant session (full real JID) to nick.
    pub by_session: HashMap<FullJid, String>,
    pub subject: Option<Subject>,
    /// The in-memory history ring (`config.history_length` entries at most).
    pub history: VecDeque<HistoryEntry>,
    /// §10.1.2: created, but the owner has not yet configured it (or accepted the default
    /// config): nobody else may enter.
    pub locked: bool,
    /// Per-room secret for XEP-0421 occupant ids (kept with the room, so ids survive a
    /// restart for persistent rooms).
    pub secret: [u8; 32],
    /// Nicks of the occupants with the moderator role: crowded rooms announce presence to
    /// them only, without scanning every occupant.
    pub moderators: HashSet<String>,
    /// Taken out of the registry (emptied, cancelled, destroyed): whoever still holds a
    /// reference must look the room up again (see `occupants::forget`).
    pub removed: bool,
}

impl Room {
    pub fn new(jid: BareJid, config: RoomConfig) -> Room {
        Room {
            jid,
            config,
            affiliations: HashMap::new(),
            occupants: HashMap::new(),
            by_session: HashMap::new(),
            subject: None,
            history: VecDeque::new(),
            locked: false,
            secret: rand::random(),
            moderators: HashSet::new(),
            removed: false,
        }
    }

    /// The room's local part (its key in the registry and in storage).
    pub fn name(&self) -> &str {
        self.jid.node().map(|n| n.as_str()).unwrap_or("")
    }

    pub fn affiliation(&self, real: &BareJid) -> Affiliation {
        self.affiliations
            .get(real)
            .copied()
            .unwrap_or(Affiliation::None)
    }

    /// The occupant a real session is joined as.
    pub fn occupant_of(&self, session: &FullJid) -> Option<&Occupant> {
        self.by_session
            .get(session)
            .and_then(|n| self.occupants.get(n))
    }

    /// The nick a real bare JID currently occupies (multi-device: another session of the
    /// same user joining under this nick becomes one more session of that occupant).
    pub fn nick_of_user(&self, real: &BareJid) -> Option<&str> {
        self.occupants
            .values()
            .find(|o| &o.real == real)
            .map(|o| o.nick.as_str())
    }

    /// Change an occupant's role, keeping [`Room::moderators`] in step. Use this, never
    /// assign `role` directly.
    pub fn set_role_of(&mut self, nick: &str, role: Role) {
        if let Some(o) = self.occupants.get_mut(nick) {
            o.role = role;
            if role == Role::Moderator {
                self.moderators.insert(nick.to_string());
            } else {
                self.moderators.remove(nick);
            }
        }
    }

    /// Whether the room should be kept when its last occupant leaves.
    pub fn is_persistent(&self) -> bool {
        self.config.persistent
    }

    pub fn is_empty(&self) -> bool {
        self.occupants.is_empty()
    }

    /// Append to the history ring, keeping at most `history_length` entries.
    pub fn remember(&mut self, entry: HistoryEntry) {
        let max = self.config.history_length;
        if max == 0 {
            self.history.clear();
            return;
        }
        while self.history.len() >= max {
            self.history.pop_front();
        }
        self.history.push_back(entry);
    }

    /// The snapshot storage keeps (see [`super::store`]).
    pub fn stored(&self) -> StoredRoom {
        let mut affiliations: Vec<(String, Affiliation)> = self
            .affiliations
            .iter()
            .map(|(j, a)| (j.to_string(), *a))
            .collect();
        affiliations.sort();
        StoredRoom {
            name: self.name().to_string(),
            config: self.config.clone(),
            affiliations,
            subject: self.subject.clone(),
            secret: self.secret,
        }
    }

    /// Rebuild a room from storage (no occupants, unlocked).
    pub fn from_stored(service: &str, s: StoredRoom) -> Option<Room> {
        let jid = BareJid::new(&format!("{}@{}", s.name, service)).ok()?;
        let mut room = Room::new(jid, s.config);
        for (j, a) in s.affiliations {
            if let (Ok(j), false) = (BareJid::new(&j), a == Affiliation::None) {
                room.affiliations.insert(j, a);
            }
        }
        room.subject = s.subject;
        room.secret = s.secret;
        Some(room)
    }
}

impl PartialOrd for Affiliation {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Affiliation {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

/// What storage keeps of a room (config, affiliations, subject, occupant-id secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRoom {
    /// The room's local part.
    pub name: String,
    pub config: RoomConfig,
    /// (real bare JID, affiliation), never `none`.
    pub affiliations: Vec<(String, Affiliation)>,
    pub subject: Option<Subject>,
    pub secret: [u8; 32],
}

/// The rooms of one service, by local part.
#[derive(Default)]
pub struct Rooms {
    map: RwLock<HashMap<String, Arc<Mutex<Room>>>>,
}

pub type RoomRef = Arc<Mutex<Room>>;

/// Lock a room, surviving a poisoned lock (a panic elsewhere must not wedge the room).
pub fn lock(room: &RoomRef) -> std::sync::MutexGuard<'_, Room> {
    room.lock().unwrap_or_else(|e| e.into_inner())
}

impl Rooms {
    pub fn get(&self, name: &str) -> Option<RoomRef> {
        self.read().get(name).cloned()
    }

    /// Insert unless present; returns the room now registered under the name and whether it
    /// was inserted by this call.
    pub fn insert(&self, room: Room) -> (RoomRef, bool) {
        let name = room.name().to_string();
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = map.get(&name) {
            return (r.clone(), false);
        }
        let r = Arc::new(Mutex::new(room));
        map.insert(name, r.clone());
        (r, true)
    }

    /// Remove the room registered under `name` if it is still `room`.
    pub fn remove(&self, name: &str, room: &RoomRef) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.get(name).is_some_and(|r| Arc::ptr_eq(r, room)) {
            map.remove(name);
        }
    }

    pub fn all(&self) -> Vec<RoomRef> {
        self.read().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, RoomRef>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }
}
