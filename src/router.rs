//! The session registry and local delivery (RFC 6120 §10, RFC 6121 §8).
//!
//! Every bound resource registers a [`SessionHandle`]: a bounded queue of serialized stanzas
//! (the connection task is the only writer to its socket) and a control channel used to kick
//! it. The registry lock is a std `RwLock`, never held across an `.await`; delivery is a
//! `try_send` of shared `Bytes`, so a slow reader never stalls the sender — it is disconnected
//! when its queue overflows (`limits.session_queue`).

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::Notify;

use crate::xml::Stanza;

/// The account already has the most resources `limits.max_resources` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyResources;

/// Why a session is being closed from outside its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Another login took over this resource (RFC 6120 §7.7.2.2): `<conflict/>`.
    Conflict,
    /// The queue overflowed: `<policy-violation/>`.
    SlowConsumer,
    /// The account was deleted: `<not-authorized/>`.
    AccountRemoved,
    /// Server shutdown: `<system-shutdown/>`.
    Shutdown,
}

impl Kick {
    pub fn condition(self) -> &'static str {
        match self {
            Kick::Conflict => "conflict",
            Kick::SlowConsumer => "policy-violation",
            Kick::AccountRemoved => "not-authorized",
            Kick::Shutdown => "system-shutdown",
        }
    }
}

/// What the connection task receives besides raw stanzas.
#[derive(Debug, Clone)]
pub enum Deliver {
    /// Bytes ready to write into the stream.
    Bytes(Bytes),
    /// A roster push (RFC 6121 §2.1.6): only sessions that requested the roster get it; the
    /// session adds its own full JID as 'to'.
    RosterPush(Arc<minidom::Element>),
    /// A stanza whose start tag has no 'to': the session inserts ` to='<its full JID>'`
    /// after the element name. Lets a fan-out (XEP-0045 rooms) share one serialization
    /// among N recipients, the per-recipient splice happening in each recipient's task.
    ToSelf(Bytes),
}

/// `bytes` (a start tag without 'to') with ` to='jid'` inserted after the element name.
pub fn splice_to(bytes: &[u8], jid: &str) -> Bytes {
    let at = bytes
        .iter()
        .skip(1)
        .position(|&c| matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b'>' | b'/'))
        .map_or(bytes.len(), |p| p + 1);
    let jid = crate::xml::escape(jid);
    let mut v = Vec::with_capacity(bytes.len() + jid.len() + 6);
    v.extend_from_slice(&bytes[..at]);
    v.extend_from_slice(b" to='");
    v.extend_from_slice(jid.as_bytes());
    v.push(b'\'');
    v.extend_from_slice(&bytes[at..]);
    Bytes::from(v)
}

/// A bound session's inbox: what the router queues for it, and why it must close.
///
/// A plain `VecDeque` under a mutex plus two [`Notify`]s instead of a tokio mpsc channel and a
/// watch channel: an empty `VecDeque` owns no memory, whereas a bounded mpsc channel allocates
/// a 32-slot block up front, and idle sessions are most sessions (issue 7's memory budget is a
/// few KiB per session). Delivery is still non-blocking and bounded by `limits.session_queue`.
#[derive(Debug)]
pub struct Mailbox {
    inner: Mutex<MailboxInner>,
    /// Signalled when the queue goes from empty to non-empty.
    data: Notify,
    /// Signalled when a kick is set.
    kicked: Notify,
    cap: usize,
    /// Set once the client has requested its roster (RFC 6121 §2.1.6 "interested resource").
    pub interested: AtomicBool,
    /// [`INACTIVE`] and [`DETACHED`] bits, kept by the session task for others to read
    /// (e.g. push notifications: wake a client that is inactive or has no connection).
    client_state: AtomicU8,
    /// Per-session opt-ins set by IQ handlers ([`opt_in`] bits), read on the hot path with
    /// one atomic load.
    pub opt_in: AtomicU8,
}

/// Bits of [`Mailbox::opt_in`].
pub mod opt_in {
    /// XEP-0280: the session enabled Message Carbons.
    pub const CARBONS: u8 = 1 << 0;
    /// XEP-0191: the session requested the blocklist (it gets block/unblock pushes).
    pub const BLOCKLIST: u8 = 1 << 1;
}

/// XEP-0352: the client said `<inactive/>`.
pub const INACTIVE: u8 = 1;
/// XEP-0198: the connection dropped and the session waits to be resumed.
pub const DETACHED: u8 = 2;

#[derive(Debug, Default)]
struct MailboxInner {
    queue: VecDeque<Deliver>,
    kick: Option<Kick>,
    closed: bool,
}

impl Mailbox {
    pub fn new(cap: usize) -> Mailbox {
        Mailbox {
            inner: Mutex::new(MailboxInner::default()),
            data: Notify::new(),
            kicked: Notify::new(),
            cap: cap.max(1),
            interested: AtomicBool::new(false),
            client_state: AtomicU8::new(0),
            opt_in: AtomicU8::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MailboxInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue for delivery. A full queue kicks the session (slow consumer) rather than block
    /// the sender or drop silently; false when not queued.
    pub fn push(&self, d: Deliver) -> bool {
        let mut m = self.lock();
        if m.closed {
            return false;
        }
        if m.queue.len() >= self.cap {
            let first = m.kick.is_none();
            m.kick = Some(Kick::SlowConsumer);
            drop(m);
            if first {
                tracing::warn!("session queue full; disconnecting");
            }
            self.kicked.notify_one();
            return false;
        }
        m.queue.push_back(d);
        let wake = m.queue.len() == 1;
        drop(m);
        if wake {
            self.data.notify_one();
        }
        true
    }

    /// Ask the session to close with this reason (the latest reason wins).
    pub fn kick(&self, why: Kick) {
        self.lock().kick = Some(why);
        self.kicked.notify_one();
    }

    /// The pending kick, if any.
    pub fn kick_reason(&self) -> Option<Kick> {
        self.lock().kick
    }

    /// Move everything queued into `out` (the session then writes it without holding the
    /// lock) and return the pending kick, one lock for both. Releases the queue's memory when
    /// it had grown, so a burst does not stay resident in an idle session.
    pub fn drain_into(&self, out: &mut Vec<Deliver>) -> Option<Kick> {
        let mut m = self.lock();
        out.extend(m.queue.drain(..));
        if m.queue.capacity() > 16 {
            m.queue = VecDeque::new();
        }
        m.kick
    }

    /// Refuse further deliveries (the session is ending).
    pub fn close(&self) {
        let mut m = self.lock();
        m.closed = true;
        m.queue = VecDeque::new();
    }

    /// Refuse further deliveries and return what was still queued (XEP-0198: a session
    /// that ends disposes of it rather than dropping it).
    pub fn close_and_take(&self) -> Vec<Deliver> {
        let mut m = self.lock();
        m.closed = true;
        std::mem::take(&mut m.queue).into()
    }

    /// Resolves after at least one delivery was queued since the last call (or immediately
    /// if one was queued while nobody waited).
    pub async fn ready(&self) {
        self.data.notified().await
    }

    /// Wake the session task without a kick: it then looks for other work (a XEP-0198
    /// resumption handed to it). Reuses the kick signal so idle sessions wait on nothing more.
    pub fn wake(&self) {
        self.kicked.notify_one();
    }

    /// Resolves when a kick has been requested since the last call.
    pub async fn wait_kick(&self) {
        self.kicked.notified().await
    }
}

/// A handle to a bound session's task.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub id: u64,
    pub mailbox: Arc<Mailbox>,
}

impl SessionHandle {
    pub fn new(id: u64, queue_cap: usize) -> SessionHandle {
        SessionHandle {
            id,
            mailbox: Arc::new(Mailbox::new(queue_cap)),
        }
    }

    /// Queue for delivery; a full queue kicks the session rather than block or drop silently.
    pub fn send(&self, d: Deliver) -> bool {
        self.mailbox.push(d)
    }

    pub fn kick(&self, why: Kick) {
        self.mailbox.kick(why)
    }

    /// Whether the client asked for its roster (roster pushes go to those only).
    pub fn interested(&self) -> bool {
        self.mailbox.interested.load(Ordering::Relaxed)
    }

    pub fn set_interested(&self) {
        self.mailbox.interested.store(true, Ordering::Relaxed)
    }

    /// XEP-0352: the client is inactive (its stanzas may be held back).
    pub fn is_inactive(&self) -> bool {
        self.mailbox.client_state.load(Ordering::Relaxed) & INACTIVE != 0
    }

    /// XEP-0198: the session has no connection and waits to be resumed; stanzas queue up.
    pub fn is_detached(&self) -> bool {
        self.mailbox.client_state.load(Ordering::Relaxed) & DETACHED != 0
    }

    /// Inactive or detached: the client will not see a stanza soon unless woken (push).
    pub fn is_inactive_or_detached(&self) -> bool {
        self.mailbox.client_state.load(Ordering::Relaxed) != 0
    }

    /// Set or clear an [`INACTIVE`]/[`DETACHED`] bit (the session task does this).
    pub fn set_client_state(&self, bit: u8, on: bool) {
        if on {
            self.mailbox.client_state.fetch_or(bit, Ordering::Relaxed);
        } else {
            self.mailbox.client_state.fetch_and(!bit, Ordering::Relaxed);
        }
    }
    /// Whether the session opted into `flag` (an [`opt_in`] bit).
    pub fn opted_in(&self, flag: u8) -> bool {
        self.mailbox.opt_in.load(Ordering::Relaxed) & flag != 0
    }

    pub fn set_opt_in(&self, flag: u8, on: bool) {
        if on {
            self.mailbox.opt_in.fetch_or(flag, Ordering::Relaxed);
        } else {
            self.mailbox.opt_in.fetch_and(!flag, Ordering::Relaxed);
        }
    }
}

/// A resource that opted into something, as returned by [`Router::opted_in`].
#[derive(Debug, Clone)]
pub struct OptedIn {
    pub resource: String,
    pub handle: SessionHandle,
    /// Whether a message to the bare JID would reach it now (RFC 6121 §8.5.2.1.1).
    pub gets_bare_messages: bool,
}

/// One bound resource.
#[derive(Debug, Clone)]
pub struct Resource {
    pub resource: String,
    pub handle: SessionHandle,
    /// Presence priority (RFC 6121 §4.7.2.3), meaningful when `presence` is set.
    pub priority: i8,
    /// Last available presence broadcast by this resource (None: not available).
    pub presence: Option<Stanza>,
}

#[derive(Default)]
pub struct Router {
    users: RwLock<HashMap<String, Vec<Resource>>>,
    next_id: AtomicU64,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Vec<Resource>>> {
        self.users.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Vec<Resource>>> {
        self.users.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Bind a resource. An existing session on the same resource is kicked with `<conflict/>`
    /// (RFC 6120 §7.7.2.2, the policy Prosody and ejabberd default to). Err(TooManyResources) when the
    /// account already has `max` resources.
    pub fn bind(
        &self,
        bare: &str,
        resource: &str,
        handle: SessionHandle,
        max: usize,
    ) -> Result<(), TooManyResources> {
        let mut users = self.write();
        let list = users.entry(bare.to_string()).or_default();
        if let Some(pos) = list.iter().position(|r| r.resource == resource) {
            let old = list.remove(pos);
            old.handle.kick(Kick::Conflict);
        } else if list.len() >= max {
            if list.is_empty() {
                users.remove(bare);
            }
            return Err(TooManyResources);
        }
        // Most accounts have one resource: don't let Vec's growth policy reserve four.
        list.reserve_exact(1);
        list.push(Resource {
            resource: resource.to_string(),
            handle,
            priority: 0,
            presence: None,
        });
        Ok(())
    }

    /// Remove a session (only if the registered one is still this session id).
    pub fn unbind(&self, bare: &str, resource: &str, id: u64) {
        let mut users = self.write();
        if let Some(list) = users.get_mut(bare) {
            list.retain(|r| !(r.resource == resource && r.handle.id == id));
            if list.is_empty() {
                users.remove(bare);
            }
        }
    }

    /// Record the latest presence of a resource (None: unavailable).
    pub fn set_presence(
        &self,
        bare: &str,
        resource: &str,
        id: u64,
        presence: Option<(i8, Stanza)>,
    ) {
        let mut users = self.write();
        if let Some(r) = users.get_mut(bare).and_then(|l| {
            l.iter_mut()
                .find(|r| r.resource == resource && r.handle.id == id)
        }) {
            match presence {
                Some((prio, st)) => {
                    r.priority = prio;
                    r.presence = Some(st);
                }
                None => r.presence = None,
            }
        }
    }

    pub fn resources(&self, bare: &str) -> Vec<Resource> {
        self.read().get(bare).cloned().unwrap_or_default()
    }

    pub fn resource(&self, bare: &str, resource: &str) -> Option<Resource> {
        self.read()
            .get(bare)
            .and_then(|l| l.iter().find(|r| r.resource == resource).cloned())
    }

    /// Whether any resource of the account has sent available presence.
    pub fn is_available(&self, bare: &str) -> bool {
        self.read()
            .get(bare)
            .is_some_and(|l| l.iter().any(|r| r.presence.is_some()))
    }

    /// Whether the account has resources and none of them would show a message to its user
    /// now: each is XEP-0352 inactive or XEP-0198 detached (XEP-0357 push wakes them).
    pub fn all_asleep(&self, bare: &str) -> bool {
        self.read()
            .get(bare)
            .is_some_and(|l| !l.is_empty() && l.iter().all(|r| r.handle.is_inactive_or_detached()))
    }

    pub fn is_online(&self, bare: &str) -> bool {
        self.read().contains_key(bare)
    }

    /// Send to one full JID; false when there is no such resource.
    pub fn send_full(&self, bare: &str, resource: &str, d: Deliver) -> bool {
        let handle = self.read().get(bare).and_then(|l| {
            l.iter()
                .find(|r| r.resource == resource)
                .map(|r| r.handle.clone())
        });
        handle.map(|h| h.send(d)).unwrap_or(false)
    }

    /// RFC 6121 §8.5.2.1.1: deliver a message to the available resources with the highest
    /// non-negative priority. Returns how many got it (0: none available).
    pub fn send_message_bare(&self, bare: &str, bytes: &Bytes) -> usize {
        let targets: Vec<SessionHandle> = {
            let users = self.read();
            let Some(list) = users.get(bare) else {
                return 0;
            };
            let best = list
                .iter()
                .filter(|r| r.presence.is_some() && r.priority >= 0)
                .map(|r| r.priority)
                .max();
            match best {
                Some(p) => list
                    .iter()
                    .filter(|r| r.presence.is_some() && r.priority == p)
                    .map(|r| r.handle.clone())
                    .collect(),
                None => return 0,
            }
        };
        targets
            .iter()
            .filter(|h| h.send(Deliver::Bytes(bytes.clone())))
            .count()
    }

    /// The account's resources that opted into `flag`; empty (no allocation) when none did,
    /// which is the common case the hot path checks first.
    pub fn opted_in(&self, bare: &str, flag: u8) -> Vec<OptedIn> {
        let users = self.read();
        let Some(list) = users.get(bare) else {
            return Vec::new();
        };
        if !list.iter().any(|r| r.handle.opted_in(flag)) {
            return Vec::new();
        }
        let best = list
            .iter()
            .filter(|r| r.presence.is_some() && r.priority >= 0)
            .map(|r| r.priority)
            .max();
        list.iter()
            .filter(|r| r.handle.opted_in(flag))
            .map(|r| OptedIn {
                resource: r.resource.clone(),
                handle: r.handle.clone(),
                gets_bare_messages: r.presence.is_some() && Some(r.priority) == best,
            })
            .collect()
    }

    /// Deliver to every available resource (presence to a bare JID, RFC 6121 §8.5.2.1.2).
    pub fn send_available(&self, bare: &str, d: &Deliver) -> usize {
        let handles: Vec<SessionHandle> = self
            .read()
            .get(bare)
            .map(|l| {
                l.iter()
                    .filter(|r| r.presence.is_some())
                    .map(|r| r.handle.clone())
                    .collect()
            })
            .unwrap_or_default();
        handles.iter().filter(|h| h.send(d.clone())).count()
    }

    /// Deliver to every bound resource (roster pushes; the session filters on interest).
    pub fn send_all(&self, bare: &str, d: &Deliver) -> usize {
        let handles: Vec<SessionHandle> = self
            .read()
            .get(bare)
            .map(|l| l.iter().map(|r| r.handle.clone()).collect())
            .unwrap_or_default();
        handles.iter().filter(|h| h.send(d.clone())).count()
    }

    /// Kick every session of an account (deletion) or of the server (shutdown).
    pub fn kick_user(&self, bare: &str, why: Kick) {
        if let Some(l) = self.read().get(bare) {
            for r in l {
                r.handle.kick(why);
            }
        }
    }

    pub fn kick_all(&self, why: Kick) {
        for l in self.read().values() {
            for r in l {
                r.handle.kick(why);
            }
        }
    }

    pub fn session_count(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(router: &Router, cap: usize) -> (SessionHandle, Arc<Mailbox>) {
        let h = SessionHandle::new(router.next_session_id(), cap);
        let mb = h.mailbox.clone();
        (h, mb)
    }

    #[test]
    fn rebinding_a_resource_kicks_the_old_session() {
        let r = Router::new();
        let (h1, k1) = handle(&r, 4);
        let (h2, k2) = handle(&r, 4);
        r.bind("a@x", "phone", h1, 8).unwrap();
        r.bind("a@x", "phone", h2.clone(), 8).unwrap();
        assert_eq!(k1.kick_reason(), Some(Kick::Conflict));
        assert_eq!(k2.kick_reason(), None);
        assert_eq!(r.resources("a@x").len(), 1);
        // The old session's late unbind must not remove the new one.
        r.unbind("a@x", "phone", h2.id - 1);
        assert_eq!(r.resources("a@x").len(), 1);
    }

    #[test]
    fn resource_limit_is_enforced() {
        let r = Router::new();
        for i in 0..2 {
            let (h, _rx) = handle(&r, 4);
            r.bind("a@x", &format!("r{i}"), h, 2).unwrap();
        }
        let (h, _rx) = handle(&r, 4);
        assert!(r.bind("a@x", "r3", h, 2).is_err());
    }

    fn presence(prio: i8) -> Stanza {
        let ctx = Arc::new(crate::xml::NsContext {
            default_ns: Some(crate::xml::NS_CLIENT.into()),
            prefixes: Vec::new(),
        });
        let raw = format!("<presence><priority>{prio}</priority></presence>");
        Stanza::parse(Bytes::from(raw), ctx).unwrap()
    }

    /// RFC 6121 §8.5.2.1.1: highest non-negative priority wins; ties all get it; negative
    /// priorities and unavailable resources never get bare-JID messages.
    #[test]
    fn bare_messages_go_to_the_highest_non_negative_priority() {
        let r = Router::new();
        let mut rxs = Vec::new();
        for (name, prio) in [
            ("a", Some(5)),
            ("b", Some(5)),
            ("c", Some(1)),
            ("d", Some(-1)),
            ("e", None),
        ] {
            let (h, rx) = handle(&r, 8);
            let id = h.id;
            r.bind("u@x", name, h, 8).unwrap();
            r.set_presence("u@x", name, id, prio.map(|p| (p, presence(p))));
            rxs.push((name, rx));
        }
        assert_eq!(
            r.send_message_bare("u@x", &Bytes::from_static(b"<message/>")),
            2
        );
        for (name, rx) in &mut rxs {
            let mut v = Vec::new();
            rx.drain_into(&mut v);
            let got = v.len() == 1;
            assert_eq!(got, matches!(*name, "a" | "b"), "resource {name}");
        }
        // Only negative or unavailable resources: nobody gets it (offline storage instead).
        let r2 = Router::new();
        let (h, _rx) = handle(&r2, 8);
        let id = h.id;
        r2.bind("v@x", "d", h, 8).unwrap();
        r2.set_presence("v@x", "d", id, Some((-1, presence(-1))));
        assert_eq!(
            r2.send_message_bare("v@x", &Bytes::from_static(b"<message/>")),
            0
        );
        assert_eq!(
            r2.send_message_bare("nobody@x", &Bytes::from_static(b"<message/>")),
            0
        );
    }

    #[test]
    fn full_queue_kicks_instead_of_blocking() {
        let r = Router::new();
        let (h, k) = handle(&r, 1);
        assert!(h.send(Deliver::Bytes(Bytes::from_static(b"<a/>"))));
        assert!(!h.send(Deliver::Bytes(Bytes::from_static(b"<b/>"))));
        assert_eq!(k.kick_reason(), Some(Kick::SlowConsumer));
        // Draining makes room again; a closed mailbox refuses everything.
        let mut v = Vec::new();
        k.drain_into(&mut v);
        assert_eq!(v.len(), 1);
        k.close();
        assert!(!h.send(Deliver::Bytes(Bytes::from_static(b"<c/>"))));
    }
}
