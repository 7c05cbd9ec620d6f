//! `muc`: one multi-user chat room (XEP-0045), K occupants, S of them sending groupchat
//! messages. Every occupant — the sender included (its reflection) — must receive every
//! message exactly once.
//!
//! Flow: log in K accounts; occupant 0 joins first (creating the room, and configuring it as
//! an instant room when the server reports it created and locked: status 201); the other
//! K-1 join concurrently, nick = account name, each waiting for its self-presence; senders
//! 0..S-1 send `type='groupchat'` messages to the room with bodies "SENDER SEQ TS" (TS: send
//! time on the generator's monotonic clock, so each receiver measures latency on parse);
//! finally a room this run created is destroyed (one presence per occupant instead of the
//! K²/2 presences of everyone leaving one by one), otherwise every occupant leaves, and every
//! stream is closed.
//!
//! Scale (K = 10 000): one task per connection reads and accounts; exactly-once checking is
//! a bitset per (receiver, sender) — a bit per delivered message, no per-message allocation;
//! latencies go, in batches, into one sharded histogram; the "all delivered" test is a single
//! shared counter. Note that joining is O(K²) for the *server* whatever the client does:
//! each join is announced to every occupant already in the room.

use anyhow::{bail, Context, Result};
use bytes::{BufMut, BytesMut};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use super::{cpu_metrics, login_many, mib, ms, parse_body, Marks, Probe, Progress, RunOpts, Seen};
use crate::client::{
    self, instant_at, now_ns, stanza_error_condition, stream_error_condition, CloseOutcome, Conn,
    Session, Stream,
};
use crate::frame::{FastReader, Top};
use crate::hist::{Histogram, ShardedHistogram};
use crate::report::{Json, Report};
use starling::xml::{escape, Event, Stanza, NS_STREAM};

const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
const CONFIG_ID: &str = "bench-room-config";
const DESTROY_ID: &str = "bench-room-destroy";

pub struct MucOpts {
    /// Room local part.
    pub room: String,
    /// MUC service domain.
    pub service: String,
    pub occupants: usize,
    pub senders: usize,
    /// Seconds of sending, warm-up included.
    pub secs: f64,
    /// Messages per sender sent but not yet reflected back to it, at most.
    pub window: u64,
    /// Total messages per second over all senders (None: as fast as the window allows).
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub drain: Duration,
    pub body_pad: usize,
    /// Longest wait for the room creation and for all joins.
    pub join_timeout: Duration,
}

// ---------------------------------------------------------------------------------------
// Shared state

/// One sender's counters, read by every occupant.
#[derive(Default)]
struct SenderShared {
    /// Messages handed to the socket (bumped before the write, so every valid sequence
    /// number a receiver sees is below it).
    sent: AtomicU64,
    /// Distinct own messages reflected back to the sender: its window's acknowledgements.
    reflected: AtomicU64,
    /// Wakes the sender when `reflected` moves.
    notify: Notify,
    /// The sender stopped (`sent` is final).
    done: AtomicBool,
}

struct Shared {
    senders: Vec<SenderShared>,
    /// Distinct (receiver, sender, seq) deliveries so far, all receivers together.
    delivered: AtomicU64,
    /// Send → receive latencies of messages sent inside the measurement window.
    latency: ShardedHistogram,
    /// Set once, when sending is scheduled.
    marks: OnceLock<Marks>,
}

/// What the main task tells every occupant, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Join,
    Send,
    /// The room's creator destroys it.
    Destroy,
    /// Close the stream, after leaving the room first if it was not destroyed.
    Close {
        leave: bool,
    },
}

/// An occupant's join, reported to the main task once.
struct JoinEvent {
    sent_ns: u64,
    /// Time of the self-presence, or why the join failed.
    result: Result<u64, String>,
}

// ---------------------------------------------------------------------------------------
// Exactly-once accounting

/// Outcome of one groupchat message at one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    New,
    Duplicate,
    /// Unknown sender, or a sequence number that was never sent.
    Invalid,
}

/// Which (sender, seq) one receiver got: a bitset per sender.
struct Tally {
    seen: Vec<Seen>,
    dups: u64,
    invalid: u64,
}

impl Tally {
    fn new(senders: usize) -> Tally {
        Tally {
            seen: (0..senders).map(|_| Seen::default()).collect(),
            dups: 0,
            invalid: 0,
        }
    }

    /// Account message `seq` of `sender`; `sent(i)` is how many messages sender `i` has
    /// sent so far (valid sequence numbers are below it).
    fn record(&mut self, sender: u64, seq: u64, sent: impl Fn(usize) -> u64) -> Verdict {
        let Some(i) = usize::try_from(sender)
            .ok()
            .filter(|i| *i < self.seen.len())
        else {
            self.invalid += 1;
            return Verdict::Invalid;
        };
        if seq >= sent(i) {
            self.invalid += 1;
            return Verdict::Invalid;
        }
        if self.seen[i].insert(seq) {
            Verdict::New
        } else {
            self.dups += 1;
            Verdict::Duplicate
        }
    }

    /// Distinct messages received from each sender.
    fn unique(&self) -> Vec<u64> {
        self.seen.iter().map(Seen::count).collect()
    }
}

/// Messages sent but never received, given each sender's final count.
fn missing(unique: &[u64], sent: &[u64]) -> u64 {
    sent.iter()
        .zip(unique.iter().chain(std::iter::repeat(&0)))
        .map(|(s, u)| s.saturating_sub(*u))
        .sum()
}

/// Status codes (`<status code='…'/>`) of a MUC presence's `<x xmlns='…muc#user'/>`.
fn status_codes(el: &minidom::Element) -> Vec<u16> {
    el.children()
        .filter(|c| c.is("x", NS_MUC_USER))
        .flat_map(|x| x.children())
        .filter(|c| c.is("status", NS_MUC_USER))
        .filter_map(|s| s.attr("code").and_then(|c| c.trim().parse().ok()))
        .collect()
}

/// Whether `from` is an occupant JID (room@service/nick) of `room`.
fn is_occupant_of(from: Option<&str>, room: &str) -> bool {
    from.and_then(|f| f.strip_prefix(room))
        .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/'))
}

/// Status codes of a presence that may be our self-presence: it comes from our occupant
/// JID, or carries status 110 (which also covers a nick the service rewrote, status 210).
/// Only such candidates are parsed into a tree: the O(K) other presences every occupant gets
/// are dismissed on their `from` and a byte search.
fn self_presence_codes(st: &Stanza, me: &str) -> Option<Vec<u16>> {
    let from_me = st.from.as_deref() == Some(me);
    if !from_me && memchr::memmem::find(st.raw(), b"110").is_none() {
        return None;
    }
    let codes = st.element().map(|el| status_codes(&el)).unwrap_or_default();
    (from_me || codes.contains(&110)).then_some(codes)
}

// ---------------------------------------------------------------------------------------
// An occupant's incoming side

/// Something the main flow has to act on.
#[derive(Debug)]
enum Notice {
    Joined {
        created: bool,
    },
    JoinFailed(String),
    /// Our own unavailable presence: we are out of the room.
    Removed(String),
    /// Answer to one of our IQs: id, Ok or the error condition.
    Iq(String, Result<(), String>),
}

/// Accounting of everything one occupant receives.
struct Inbox {
    index: usize,
    /// The room's bare JID.
    room: Arc<str>,
    /// Our occupant JID, room@service/nick (as the service reports it once joined).
    me: String,
    shared: Arc<Shared>,
    joined: bool,
    tally: Tally,
    /// Latencies not yet recorded into the shared histogram.
    lat: Vec<u64>,
    /// New deliveries / own reflections not yet published to the shared counters.
    new_delivered: u64,
    new_reflected: u64,
    /// Deliveries whose receive time is inside the measurement window.
    in_window: u64,
    /// Deliveries per second since the start mark.
    timeline: Vec<u64>,
    /// Available presences from the room (one per occupant expected, ourselves included).
    presences: u64,
    /// Groupchat messages that are not the benchmark's (subject, bodiless, other text).
    other_messages: u64,
    /// type='error' messages (bounces): condition -> count.
    errors: BTreeMap<String, u64>,
    other_stanzas: u64,
}

impl Inbox {
    fn new(index: usize, room: Arc<str>, nick: &str, shared: Arc<Shared>) -> Inbox {
        let senders = shared.senders.len();
        Inbox {
            index,
            me: format!("{room}/{nick}"),
            room,
            shared,
            joined: false,
            tally: Tally::new(senders),
            lat: Vec::new(),
            new_delivered: 0,
            new_reflected: 0,
            in_window: 0,
            timeline: Vec::new(),
            presences: 0,
            other_messages: 0,
            errors: BTreeMap::new(),
            other_stanzas: 0,
        }
    }

    fn on_stanza(&mut self, st: &Stanza) -> Option<Notice> {
        match st.name.as_str() {
            "message" => {
                self.on_message(st);
                None
            }
            "presence" => self.on_presence(st),
            "iq" => {
                let id = st.id.clone().unwrap_or_default();
                match st.type_.as_deref() {
                    Some("result") => Some(Notice::Iq(id, Ok(()))),
                    Some("error") => Some(Notice::Iq(id, Err(stanza_error_condition(st)))),
                    _ => {
                        // A request to us (ping, disco): not part of the benchmark.
                        self.other_stanzas += 1;
                        None
                    }
                }
            }
            _ => {
                self.other_stanzas += 1;
                None
            }
        }
    }

    fn on_message(&mut self, st: &Stanza) {
        if st.type_.as_deref() == Some("error") {
            *self.errors.entry(stanza_error_condition(st)).or_default() += 1;
            return;
        }
        self.on_groupchat(st.raw());
    }

    /// A non-error message: one of the benchmark's (body "SENDER SEQ TS") or another.
    fn on_groupchat(&mut self, raw: &[u8]) {
        let now = now_ns();
        let Some((sender, seq, ts)) = parse_body(raw) else {
            self.other_messages += 1;
            return;
        };
        let senders = &self.shared.senders;
        let v = self
            .tally
            .record(sender, seq, |i| senders[i].sent.load(Ordering::Acquire));
        if v != Verdict::New {
            return;
        }
        self.new_delivered += 1;
        if sender == self.index as u64 {
            self.new_reflected += 1;
        }
        if let Some(m) = self.shared.marks.get() {
            if m.in_window(ts) {
                self.lat.push(now.saturating_sub(ts));
            }
            if m.in_window(now) {
                self.in_window += 1;
            }
            if now >= m.start {
                let sec = ((now - m.start) / 1_000_000_000) as usize;
                if sec >= self.timeline.len() {
                    self.timeline.resize(sec + 1, 0);
                }
                self.timeline[sec] += 1;
            }
        }
    }

    fn on_presence(&mut self, st: &Stanza) -> Option<Notice> {
        match st.type_.as_deref() {
            None => {
                if !is_occupant_of(st.from.as_deref(), &self.room) {
                    // Our own account's presence echoed by the server, or a contact's.
                    self.other_stanzas += 1;
                    return None;
                }
                self.presences += 1;
                if self.joined {
                    return None;
                }
                let codes = self_presence_codes(st, &self.me)?;
                if let Some(from) = &st.from {
                    // The service may have rewritten our nick (status 210).
                    self.me.clone_from(from);
                }
                self.joined = true;
                Some(Notice::Joined {
                    created: codes.contains(&201),
                })
            }
            Some("error") if !self.joined => Some(Notice::JoinFailed(format!(
                "presence error: {}",
                stanza_error_condition(st)
            ))),
            Some("unavailable") if self.joined => {
                let codes = self_presence_codes(st, &self.me)?;
                let why = if memchr::memmem::find(st.raw(), b"<destroy").is_some() {
                    "room destroyed".to_string()
                } else {
                    format!("unavailable self-presence, status {codes:?}")
                };
                Some(Notice::Removed(why))
            }
            _ => {
                self.other_stanzas += 1;
                None
            }
        }
    }

    /// The hot path: account a stanza from its start tag and bytes alone when that is all
    /// its handling needs (another occupant's presence, a groupchat message); false hands
    /// it to the full parse and [`Inbox::on_stanza`]. Decides exactly as `on_stanza` would.
    fn on_top(&mut self, t: &Top<'_>, raw: &[u8]) -> bool {
        match t.name {
            b"message" if t.type_ != Some(b"error") => {
                self.on_groupchat(raw);
                true
            }
            b"presence" if t.type_.is_none() => {
                if !is_occupant_of(t.from, &self.room) {
                    return false;
                }
                // Before our join completes, a self-presence candidate needs the full parse.
                if !self.joined
                    && (t.from == Some(self.me.as_str())
                        || memchr::memmem::find(raw, b"110").is_some())
                {
                    return false;
                }
                self.presences += 1;
                true
            }
            _ => false,
        }
    }

    /// Publish what the last read produced: latencies, delivery counts, window acks.
    fn flush(&mut self) {
        self.shared.latency.record_batch(self.index, &mut self.lat);
        if self.new_delivered > 0 {
            self.shared
                .delivered
                .fetch_add(self.new_delivered, Ordering::AcqRel);
            self.new_delivered = 0;
        }
        if self.new_reflected > 0 {
            if let Some(s) = self.shared.senders.get(self.index) {
                s.reflected.fetch_add(self.new_reflected, Ordering::AcqRel);
                s.notify.notify_one();
            }
            self.new_reflected = 0;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Stanzas we send

fn join_presence(occupant_jid: &str) -> String {
    format!(
        "<presence to='{}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>",
        escape(occupant_jid)
    )
}

fn owner_iq(room: &str, id: &str, payload: &str) -> String {
    format!(
        "<iq type='set' to='{}' id='{id}'><query xmlns='{NS_MUC_OWNER}'>{payload}</query></iq>",
        escape(room)
    )
}

/// The groupchat message `seq` of sender `sender`: body "SENDER SEQ TS[ PAD]".
fn push_message(buf: &mut BytesMut, prefix: &str, sender: usize, seq: u64, ts: u64, pad: &str) {
    let mut line = String::with_capacity(48);
    let _ = write!(line, "{sender} {seq} {ts}");
    buf.put_slice(prefix.as_bytes());
    buf.put_slice(line.as_bytes());
    if !pad.is_empty() {
        buf.put_u8(b' ');
        buf.put_slice(pad.as_bytes());
    }
    buf.put_slice(b"</body></message>");
}

// ---------------------------------------------------------------------------------------
// Room creation (occupant 0, before anyone else joins)

/// Join as the first occupant; configure the room as an instant room if the service created
/// it locked (status 201). Returns whether this join created the room.
async fn create_room(conn: &mut Conn, inbox: &mut Inbox, room: &str) -> Result<bool> {
    conn.send(join_presence(&inbox.me).as_bytes()).await?;
    let created = loop {
        let st = conn.next_stanza().await?;
        match inbox.on_stanza(&st) {
            Some(Notice::Joined { created }) => break created,
            Some(Notice::JoinFailed(e)) => bail!("{e}"),
            _ => {}
        }
    };
    if created {
        // Accept the default configuration (XEP-0045 §10.1.2): unlocks the room.
        let form = "<x xmlns='jabber:x:data' type='submit'/>";
        conn.send(owner_iq(room, CONFIG_ID, form).as_bytes())
            .await?;
        loop {
            let st = conn.next_stanza().await?;
            match inbox.on_stanza(&st) {
                Some(Notice::Iq(id, r)) if id == CONFIG_ID => {
                    r.map_err(|e| anyhow::anyhow!("instant room configuration refused: {e}"))?;
                    break;
                }
                Some(Notice::Removed(e)) => bail!("removed from the room: {e}"),
                _ => {}
            }
        }
    }
    Ok(created)
}

// ---------------------------------------------------------------------------------------
// Sending

#[derive(Default)]
struct SendStats {
    sent: u64,
    /// Sent with a timestamp inside the measurement window.
    sent_in_window: u64,
    /// Rate mode: messages due before the end mark.
    scheduled: u64,
    ended: Option<String>,
}

struct SendPlan {
    index: usize,
    window: u64,
    /// Rate mode: nanoseconds between this sender's messages, and its phase offset.
    interval: Option<(u64, u64)>,
    pad: Arc<str>,
    /// `<message to='room' type='groupchat'><body>`
    prefix: Arc<str>,
}

type Writer = WriteHalf<Stream>;

async fn write_flush(w: &mut Writer, data: &[u8]) -> std::io::Result<()> {
    w.write_all(data).await?;
    w.flush().await
}

/// Send from the start mark to the end mark, as the window (acknowledged by our own
/// reflections) and the rate allow. Returns the write half for the occupant to close with.
async fn sender(
    mut wh: Writer,
    shared: Arc<Shared>,
    plan: SendPlan,
    mut phase: watch::Receiver<Phase>,
) -> (Writer, SendStats) {
    let mut st = SendStats::default();
    let me = &shared.senders[plan.index];
    let go = phase
        .wait_for(|p| *p != Phase::Join)
        .await
        .map(|p| *p == Phase::Send)
        .unwrap_or(false);
    let m = match shared.marks.get() {
        Some(m) if go => *m,
        _ => {
            me.done.store(true, Ordering::Release);
            return (wh, st);
        }
    };
    let end_at = instant_at(m.end);
    let base = m.start + plan.interval.map(|(_, off)| off).unwrap_or(0);
    let mut buf = BytesMut::with_capacity(4096);
    let mut seq = 0u64;
    tokio::time::sleep_until(instant_at(base).into()).await;
    loop {
        let now = now_ns();
        if plan.interval.is_none() && now >= m.end {
            break;
        }
        if let Some((iv, _)) = plan.interval {
            let due = base + seq * iv;
            if due >= m.end {
                break;
            }
            if due > now {
                tokio::select! {
                    _ = tokio::time::sleep_until(instant_at(due).into()) => {}
                    _ = tokio::time::sleep_until(end_at.into()) => break,
                }
                continue;
            }
        }
        let inflight = seq.saturating_sub(me.reflected.load(Ordering::Acquire));
        if inflight >= plan.window {
            tokio::select! {
                _ = me.notify.notified() => {}
                _ = tokio::time::sleep_until(end_at.into()) => break,
            }
            continue;
        }
        let room = plan.window - inflight;
        let now = now_ns();
        let mut n = 0;
        while n < room {
            let ts = match plan.interval {
                // Stamp the scheduled time: a sender that falls behind shows up as latency
                // (no coordinated omission).
                Some((iv, _)) => {
                    let due = base + seq * iv;
                    if due > now || due >= m.end {
                        break;
                    }
                    due
                }
                None => now_ns(),
            };
            if m.in_window(ts) {
                st.sent_in_window += 1;
            }
            push_message(&mut buf, &plan.prefix, plan.index, seq, ts, &plan.pad);
            seq += 1;
            n += 1;
        }
        me.sent.store(seq, Ordering::Release);
        if let Err(e) = write_flush(&mut wh, &buf).await {
            st.ended = Some(format!("write error: {e}"));
            break;
        }
        buf.clear();
    }
    st.sent = seq;
    if let Some((iv, _)) = plan.interval {
        st.scheduled = if m.end > base {
            (m.end - base).div_ceil(iv)
        } else {
            0
        };
    }
    me.done.store(true, Ordering::Release);
    (wh, st)
}

// ---------------------------------------------------------------------------------------
// One occupant's task

#[derive(Default)]
struct OccStats {
    /// Distinct messages received per sender.
    unique: Vec<u64>,
    dups: u64,
    invalid: u64,
    in_window: u64,
    timeline: Vec<u64>,
    presences: u64,
    other_messages: u64,
    errors: BTreeMap<String, u64>,
    /// Removed from the room before the end (kicked, room destroyed by someone else).
    removed: Option<String>,
    /// The stream ended before we closed it.
    ended: Option<String>,
    close: Option<CloseOutcome>,
    send: Option<SendStats>,
}

struct Occupant {
    inbox: Inbox,
    reader: FastReader<ReadHalf<Stream>>,
    wh: Option<Writer>,
    /// Senders: what to send, handed with the write half to the sender task after joining.
    plan: Option<SendPlan>,
    sender: Option<JoinHandle<(Writer, SendStats)>>,
    phase: watch::Receiver<Phase>,
    /// Not yet joined: where to report the join.
    join_tx: Option<mpsc::UnboundedSender<JoinEvent>>,
    join_sent: u64,
    /// The creator: where to report the destroy IQ's answer.
    destroy_tx: Option<oneshot::Sender<Result<(), String>>>,
    close_timeout: Duration,
    st: OccStats,
}

impl Occupant {
    fn report_join(&mut self, result: Result<u64, String>) {
        if let Some(tx) = self.join_tx.take() {
            let _ = tx.send(JoinEvent {
                sent_ns: self.join_sent,
                result,
            });
        }
    }

    fn notice(&mut self, n: Notice) {
        match n {
            Notice::Joined { .. } => self.report_join(Ok(now_ns())),
            Notice::JoinFailed(e) => self.report_join(Err(e)),
            Notice::Removed(why) => {
                // Expected once we destroy the room or leave; a problem before.
                if matches!(*self.phase.borrow(), Phase::Join | Phase::Send) {
                    self.st.removed.get_or_insert(why);
                }
            }
            Notice::Iq(id, r) if id == DESTROY_ID => {
                if let Some(tx) = self.destroy_tx.take() {
                    let _ = tx.send(r);
                }
            }
            Notice::Iq(..) => {}
        }
    }

    /// Parse and account everything buffered. False when the stream ended.
    fn drain_events(&mut self) -> bool {
        let mut alive = true;
        loop {
            let inbox = &mut self.inbox;
            match self.reader.poll_event_with(|t, raw| inbox.on_top(t, raw)) {
                Ok(Some(Event::Stanza(x))) if x.ns == NS_STREAM && x.name == "error" => {
                    self.st.ended = Some(format!("stream error: {}", stream_error_condition(&x)));
                    alive = false;
                    break;
                }
                Ok(Some(Event::Stanza(x))) => {
                    if let Some(n) = self.inbox.on_stanza(&x) {
                        self.notice(n);
                    }
                }
                Ok(Some(Event::Close)) => {
                    self.st.ended = Some("server closed the stream".into());
                    alive = false;
                    break;
                }
                Ok(Some(Event::Open(_))) => {}
                Ok(None) => break,
                Err(e) => {
                    self.st.ended = Some(format!("{e:#}"));
                    alive = false;
                    break;
                }
            }
        }
        self.inbox.flush();
        alive
    }

    /// The write half, taken back from the sender task if it has it.
    async fn writer(&mut self) -> Option<&mut Writer> {
        if let Some(mut h) = self.sender.take() {
            match tokio::time::timeout(self.close_timeout, &mut h).await {
                Ok(Ok((w, s))) => {
                    self.wh = Some(w);
                    self.st.send = Some(s);
                }
                Ok(Err(e)) => {
                    self.st.send = Some(SendStats {
                        ended: Some(format!("sender task failed: {e}")),
                        ..Default::default()
                    });
                }
                Err(_) => {
                    h.abort();
                    self.st.send = Some(SendStats {
                        ended: Some("sender stuck writing at the end".into()),
                        ..Default::default()
                    });
                }
            }
        }
        self.wh.as_mut()
    }

    /// Send our join (unless we are the creator, already in), start our sender task if we
    /// are a sender. False if the join could not be sent.
    async fn start(&mut self) -> bool {
        if self.join_tx.is_some() {
            self.join_sent = now_ns();
            let join = join_presence(&self.inbox.me);
            let r = match self.wh.as_mut() {
                Some(w) => write_flush(w, join.as_bytes()).await,
                None => Err(std::io::ErrorKind::NotConnected.into()),
            };
            if let Err(e) = r {
                self.st.ended = Some(format!("write error: {e}"));
                self.report_join(Err(format!("sending the join: {e}")));
            }
        }
        if let Some(plan) = self.plan.take() {
            match self.wh.take() {
                Some(w) if self.st.ended.is_none() => {
                    let shared = self.inbox.shared.clone();
                    let task = sender(w, shared, plan, self.phase.clone());
                    self.sender = Some(tokio::spawn(task));
                }
                w => {
                    self.wh = w;
                    if let Some(s) = self.inbox.shared.senders.get(plan.index) {
                        s.done.store(true, Ordering::Release);
                    }
                }
            }
        }
        self.st.ended.is_none()
    }

    async fn run(mut self) -> OccStats {
        let leave = if self.start().await {
            self.read_loop().await
        } else {
            true
        };
        if self.join_tx.is_some() {
            let why = self
                .st
                .ended
                .clone()
                .unwrap_or_else(|| "the run ended before the join completed".into());
            self.report_join(Err(why));
        }
        if self.st.ended.is_some() {
            // Our stream is gone, but our sender (if any) finishes with the others: wait
            // for the end of the run so its figures are collected, not cut short.
            let _ = self
                .phase
                .wait_for(|p| matches!(p, Phase::Close { .. }))
                .await;
        }
        self.close(leave).await;
        let ib = self.inbox;
        OccStats {
            unique: ib.tally.unique(),
            dups: ib.tally.dups,
            invalid: ib.tally.invalid,
            in_window: ib.in_window,
            timeline: ib.timeline,
            presences: ib.presences,
            other_messages: ib.other_messages,
            errors: ib.errors,
            ..self.st
        }
    }

    /// Read and account until told to close (or the stream ends). Returns whether to leave
    /// the room before closing (false once it was destroyed).
    async fn read_loop(&mut self) -> bool {
        loop {
            tokio::select! {
                biased;
                r = self.reader.read_more() => match r {
                    Ok(true) => {
                        if !self.drain_events() {
                            return true;
                        }
                    }
                    Ok(false) => {
                        self.st.ended = Some("connection closed by server".into());
                        return true;
                    }
                    Err(e) => {
                        self.st.ended = Some(format!("read error: {e}"));
                        return true;
                    }
                },
                r = self.phase.changed() => {
                    let p = match r {
                        Ok(()) => *self.phase.borrow_and_update(),
                        Err(_) => Phase::Close { leave: true },
                    };
                    match p {
                        Phase::Join | Phase::Send => {}
                        Phase::Destroy => {
                            if self.destroy_tx.is_some() {
                                let iq = owner_iq(&self.inbox.room, DESTROY_ID, "<destroy/>");
                                let ok = match self.writer().await {
                                    Some(w) => write_flush(w, iq.as_bytes()).await.is_ok(),
                                    None => false,
                                };
                                if !ok {
                                    if let Some(tx) = self.destroy_tx.take() {
                                        let _ = tx.send(Err("could not send the destroy request".into()));
                                    }
                                }
                            }
                        }
                        Phase::Close { leave } => return leave,
                    }
                }
            }
        }
    }

    /// Leave (unless the room is gone), `</stream:stream>`, wait for the server's close while
    /// still accounting late messages.
    async fn close(&mut self, leave: bool) {
        let ended = self.st.ended.is_some();
        let mut out = String::new();
        if leave && self.inbox.joined && !ended {
            let _ = write!(
                out,
                "<presence to='{}' type='unavailable'/>",
                escape(&self.inbox.me)
            );
        }
        out.push_str("</stream:stream>");
        let Some(w) = self.writer().await else {
            self.st.close = Some(CloseOutcome::IoError);
            return;
        };
        if ended {
            let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
            return;
        }
        if write_flush(w, out.as_bytes()).await.is_err() {
            self.st.close = Some(CloseOutcome::IoError);
            return;
        }
        let inbox = &mut self.inbox;
        let outcome = client::await_close(&mut self.reader, self.close_timeout, |x| {
            let _ = inbox.on_stanza(&x);
        })
        .await;
        inbox.flush();
        self.st.close = Some(outcome);
        if let Some(w) = self.wh.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The scenario

pub async fn run(opts: &RunOpts, mo: &MucOpts) -> Result<Report> {
    let probe = Probe::new(opts.server_pid, opts.clk_tck);
    let tls = opts.client.tls.is_some();
    let k = mo.occupants;
    let s_count = mo.senders;
    let room: Arc<str> = format!("{}@{}", mo.room, mo.service).into();
    let mut r = Report::new("muc");
    r.param("room", room.as_ref());
    r.param("occupants", k);
    r.param("senders", s_count);
    r.param("secs", mo.secs);
    r.param("window", mo.window);
    r.param("rate", mo.rate);
    r.param("warmup_secs", mo.warmup.as_secs_f64());
    r.param("drain_secs", mo.drain.as_secs_f64());
    r.param("body_pad", mo.body_pad);
    r.param("tls", tls);
    r.param("mech", opts.client.mech.name());
    r.param("server", opts.client.addr.to_string());

    if mo.secs <= mo.warmup.as_secs_f64() {
        bail!(
            "--secs ({}) must be longer than --warmup-secs ({})",
            mo.secs,
            mo.warmup.as_secs_f64()
        );
    }
    if k == 0 || s_count == 0 || s_count > k {
        bail!("need 1 <= --senders ({s_count}) <= --occupants ({k})");
    }
    if mo.room.is_empty() || mo.room.contains(['@', '/']) || mo.service.contains(['@', '/']) {
        bail!("--room must be a bare local part and --service a domain");
    }

    // ---- logins
    let mut phase = login_many(opts, 0..k, "login").await?;
    r.section("Logins");
    phase.report(&mut r, tls);
    let mut sessions = std::mem::take(&mut phase.sessions);
    if phase.failed > 0 {
        r.problem("not every session logged in: muc not run");
        close_sessions(sessions, opts.close_timeout).await;
        return Ok(r);
    }

    let shared = Arc::new(Shared {
        senders: (0..s_count).map(|_| SenderShared::default()).collect(),
        delivered: AtomicU64::new(0),
        latency: ShardedHistogram::new(64),
        marks: OnceLock::new(),
    });

    // ---- room creation by occupant 0
    let before_join = probe.snap();
    let mut creator = sessions.remove(0);
    let nick = |i: usize| opts.client.username(i);
    let mut creator_inbox = Inbox::new(0, room.clone(), &nick(0), shared.clone());
    let t_create = Instant::now();
    let created = tokio::time::timeout(
        mo.join_timeout,
        create_room(&mut creator.conn, &mut creator_inbox, &room),
    )
    .await
    .unwrap_or_else(|_| Err(anyhow::anyhow!("timeout")))
    .context("creating/joining the room as occupant 0");
    let created = match created {
        Ok(c) => c,
        Err(e) => {
            r.problem(format!("{e:#}"));
            sessions.push(creator);
            close_sessions(sessions, opts.close_timeout).await;
            return Ok(r);
        }
    };
    let create_s = t_create.elapsed().as_secs_f64();
    eprintln!(
        "[muc] room {room} {} in {create_s:.3}s",
        if created {
            "created"
        } else {
            "already existed; joined"
        }
    );

    // ---- everyone else joins; every occupant gets its reading task
    let (phase_tx, phase_rx) = watch::channel(Phase::Join);
    let (join_tx, mut join_rx) = mpsc::unbounded_channel();
    let (destroy_tx, destroy_rx) = oneshot::channel();
    let mut destroy_tx = created.then_some(destroy_tx);
    let pad: Arc<str> = "x".repeat(mo.body_pad).into();
    let prefix: Arc<str> =
        format!("<message to='{}' type='groupchat'><body>", escape(&room)).into();
    let interval = mo
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| (s_count as f64 * 1e9 / r).max(1.0) as u64);
    let mut tasks: Vec<JoinHandle<OccStats>> = Vec::with_capacity(k);
    let mut creator_inbox = Some(creator_inbox);
    for (i, s) in std::iter::once(creator).chain(sessions).enumerate() {
        let (inbox, jtx) = match creator_inbox.take() {
            Some(ib) => (ib, None),
            None => (
                Inbox::new(i, room.clone(), &nick(s.index), shared.clone()),
                Some(join_tx.clone()),
            ),
        };
        let (io, parser) = s.conn.into_parts();
        let (rh, wh) = tokio::io::split(io);
        let plan = (i < s_count).then(|| SendPlan {
            index: i,
            window: mo.window.max(1),
            // Spread the senders' schedules evenly over one interval.
            interval: interval.map(|iv| (iv, iv * i as u64 / s_count as u64)),
            pad: pad.clone(),
            prefix: prefix.clone(),
        });
        let occ = Occupant {
            inbox,
            reader: FastReader::new(rh, parser),
            wh: Some(wh),
            plan,
            sender: None,
            phase: phase_rx.clone(),
            join_tx: jtx,
            join_sent: 0,
            destroy_tx: if i == 0 { destroy_tx.take() } else { None },
            close_timeout: opts.close_timeout,
            st: OccStats::default(),
        };
        tasks.push(tokio::spawn(occ.run()));
    }
    drop(join_tx);

    // Every join is reported once: self-presence, error, or the stream's end.
    let mut join_hist = Histogram::new();
    let (mut first_sent, mut last_joined) = (u64::MAX, 0u64);
    let mut join_errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut joined, mut join_failed) = (0usize, 0usize);
    let progress = Progress::new("join", k - 1);
    let deadline = tokio::time::Instant::now() + mo.join_timeout;
    let mut join_timed_out = false;
    while joined + join_failed < k - 1 {
        match tokio::time::timeout_at(deadline, join_rx.recv()).await {
            Ok(Some(ev)) => {
                first_sent = first_sent.min(ev.sent_ns);
                match ev.result {
                    Ok(t) => {
                        joined += 1;
                        last_joined = last_joined.max(t);
                        join_hist.record(t.saturating_sub(ev.sent_ns));
                    }
                    Err(e) => {
                        join_failed += 1;
                        *join_errors.entry(e).or_default() += 1;
                    }
                }
            }
            Ok(None) => break,
            Err(_) => {
                join_timed_out = true;
                break;
            }
        }
        progress.tick(joined, join_failed);
    }
    progress.done(joined, join_failed, progress.elapsed());
    let after_join = probe.snap();
    let all_joined = joined == k - 1;
    let join_all_s = if k == 1 {
        Some(0.0)
    } else if all_joined {
        Some(last_joined.saturating_sub(first_sent) as f64 / 1e9)
    } else {
        None
    };

    // ---- sending
    let mut measure_snap = None;
    let mut end_snap = None;
    let mut drain = None;
    let marks = Marks::from_now(Duration::from_millis(200), mo.warmup, mo.secs);
    if all_joined {
        let _ = shared.marks.set(marks);
        let _ = phase_tx.send(Phase::Send);
        eprintln!(
            "[muc] {s_count} sender(s), {k} occupants, sending for {:.1}s",
            mo.secs
        );
        tokio::time::sleep_until(instant_at(marks.measure).into()).await;
        measure_snap = Some(probe.snap());
        tokio::time::sleep_until(instant_at(marks.end).into()).await;
        end_snap = Some(probe.snap());
        // Stragglers: every occupant must get every message sent.
        let t = Instant::now();
        let drained = loop {
            let done = shared
                .senders
                .iter()
                .all(|s| s.done.load(Ordering::Acquire));
            let sent: u64 = shared
                .senders
                .iter()
                .map(|s| s.sent.load(Ordering::Acquire))
                .sum();
            if done && shared.delivered.load(Ordering::Acquire) >= sent * k as u64 {
                break true;
            }
            if t.elapsed() >= mo.drain {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        drain = Some((drained, t.elapsed().as_secs_f64()));
    }

    // ---- leaving: destroy the room we created (one presence per occupant), or leave
    let t_leave = Instant::now();
    let mut destroyed = false;
    if created {
        let _ = phase_tx.send(Phase::Destroy);
        match tokio::time::timeout(opts.close_timeout, destroy_rx).await {
            Ok(Ok(Ok(()))) => destroyed = true,
            Ok(Ok(Err(e))) => r.note(format!(
                "destroying the room failed ({e}): occupants left one by one"
            )),
            Ok(Err(_)) => r.note("occupant 0 ended before destroying the room"),
            Err(_) => r.note("no answer to the room destroy request: occupants left one by one"),
        }
    }
    let _ = phase_tx.send(Phase::Close { leave: !destroyed });
    let mut occs = Vec::with_capacity(k);
    for h in tasks {
        occs.push(h.await.unwrap_or_else(|e| OccStats {
            ended: Some(format!("task failed: {e}")),
            ..Default::default()
        }));
    }
    let leave_s = t_leave.elapsed().as_secs_f64();
    let after = probe.snap();

    // ---- aggregate
    let sent: Vec<u64> = shared
        .senders
        .iter()
        .map(|s| s.sent.load(Ordering::Acquire))
        .collect();
    let sent_total: u64 = sent.iter().sum();
    let lat = shared.latency.merged();
    let (mut lost, mut dups, mut invalid, mut in_window, mut other_messages) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut delivered = 0u64;
    let mut per_receiver = Vec::with_capacity(k);
    let mut presences = Vec::with_capacity(k);
    let mut timeline: Vec<u64> = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut ended: BTreeMap<String, u64> = BTreeMap::new();
    let mut removed: BTreeMap<String, u64> = BTreeMap::new();
    let mut closes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut send_stats = Vec::new();
    let mut bad = Vec::new();
    for (i, o) in occs.iter().enumerate() {
        let unique: u64 = o.unique.iter().sum();
        let miss = if all_joined {
            missing(&o.unique, &sent)
        } else {
            0
        };
        lost += miss;
        dups += o.dups;
        invalid += o.invalid;
        in_window += o.in_window;
        other_messages += o.other_messages;
        delivered += unique;
        per_receiver.push(unique);
        presences.push(o.presences);
        if (miss > 0 || o.dups > 0 || o.invalid > 0) && bad.len() < 100 {
            bad.push(
                Json::obj()
                    .with("occupant", i)
                    .with("received_unique", unique)
                    .with("missing", miss)
                    .with("duplicates", o.dups)
                    .with("invalid", o.invalid),
            );
        }
        if timeline.len() < o.timeline.len() {
            timeline.resize(o.timeline.len(), 0);
        }
        for (t, v) in timeline.iter_mut().zip(o.timeline.iter()) {
            *t += v;
        }
        for (k, v) in &o.errors {
            *errors.entry(k.clone()).or_default() += v;
        }
        let send_ended = o.send.as_ref().and_then(|s| s.ended.as_ref());
        for e in o.ended.iter().chain(send_ended) {
            *ended.entry(e.clone()).or_default() += 1;
        }
        if let Some(w) = &o.removed {
            *removed.entry(w.clone()).or_default() += 1;
        }
        if let Some(c) = o.close {
            *closes.entry(c.name()).or_default() += 1;
        }
        if let Some(s) = &o.send {
            send_stats.push(s);
        }
    }
    let sent_in_window: u64 = send_stats.iter().map(|s| s.sent_in_window).sum();
    let scheduled: u64 = send_stats.iter().map(|s| s.scheduled).sum();
    let measured_s = marks.measured_secs();
    let exactly_once = lost == 0 && dups == 0 && invalid == 0;

    // ---- report
    r.section("Room");
    r.metric("room_created", "Room created by this run", created, "");
    r.metric(
        "room_create_s",
        "Creation (join + instant configuration)",
        create_s,
        "s",
    );
    r.metric("occupants_joined", "Occupants joined", joined + 1, "");
    r.metric("joins_failed", "Joins failed", join_failed, "");
    r.metric(
        "join_all_s",
        "Join time for all occupants (first join sent → last self-presence)",
        join_all_s,
        "s",
    );
    r.alias("join_all_secs", "join_all_s");
    r.metric(
        "join_rate_per_s",
        "Join rate",
        join_all_s.filter(|s| *s > 0.0).map(|s| (k - 1) as f64 / s),
        "joins/s",
    );
    r.metric(
        "join_p50_ms",
        "Join latency p50 (join sent → own self-presence)",
        ms(join_hist.quantile(0.5)),
        "ms",
    );
    r.metric(
        "join_p99_ms",
        "Join latency p99",
        ms(join_hist.quantile(0.99)),
        "ms",
    );
    r.metric("join_max_ms", "Join latency max", ms(join_hist.max()), "ms");
    r.metric(
        "presences_min",
        "Occupant presences received, least by one occupant",
        presences.iter().min().copied(),
        "",
    );
    r.metric(
        "presences_max",
        "… most by one occupant",
        presences.iter().max().copied(),
        "",
    );
    cpu_metrics(&mut r, &probe, &before_join, &after_join, "join", None);
    for (e, n) in &join_errors {
        r.problem(format!("{n} join(s) failed: {e}"));
    }
    if join_timed_out {
        r.problem(format!(
            "{} join(s) unanswered after --join-timeout {}s",
            k - 1 - joined - join_failed,
            mo.join_timeout.as_secs_f64()
        ));
    }
    if !all_joined {
        r.problem("not every occupant joined: messages not sent");
    } else if presences.iter().any(|p| (*p as usize) < k) {
        r.note(format!(
            "some occupants received fewer than {k} occupant presences (one per occupant expected)"
        ));
    }

    r.section("Throughput");
    r.metric(
        "messages_sent",
        "Messages sent (all senders)",
        sent_total,
        "",
    );
    if mo.rate.is_some() {
        r.metric(
            "messages_scheduled",
            "Messages scheduled (rate × time)",
            scheduled,
            "",
        );
        r.metric("rate_target_per_s", "Target send rate", mo.rate, "msgs/s");
    }
    r.metric(
        "messages_per_s",
        "Send rate (measurement window)",
        sent_in_window as f64 / measured_s,
        "msgs/s",
    );
    r.metric(
        "deliveries_expected",
        "Deliveries expected (sent × occupants)",
        sent_total * k as u64,
        "",
    );
    r.metric(
        "delivered",
        "Delivered (distinct, all occupants)",
        delivered,
        "",
    );
    r.metric(
        "delivered_per_s",
        "Delivered stanzas rate (measurement window)",
        in_window as f64 / measured_s,
        "stanzas/s",
    );
    r.alias("delivered_per_sec", "delivered_per_s");
    r.metric(
        "measured_secs",
        "Measurement window (after warm-up)",
        measured_s,
        "s",
    );
    let whole = ((marks.end - marks.start) / 1_000_000_000) as usize;
    let full: Vec<u64> = timeline.iter().take(whole).copied().collect();
    r.metric(
        "per_second_min",
        "Slowest whole second",
        full.iter().min().copied(),
        "stanzas",
    );
    r.metric(
        "per_second_max",
        "Fastest whole second",
        full.iter().max().copied(),
        "stanzas",
    );
    r.metric(
        "per_occupant_delivered_min",
        "Least delivered to one occupant",
        per_receiver.iter().min().copied(),
        "msgs",
    );
    r.metric(
        "per_occupant_delivered_max",
        "Most delivered to one occupant",
        per_receiver.iter().max().copied(),
        "msgs",
    );

    r.section("Latency (send → parsed by each occupant, messages sent in the window)");
    super::latency_metrics(&mut r, &lat);

    r.section("Delivery guarantees");
    // Not applicable (null, exit status 1 rather than 2) when no message was sent.
    r.metric(
        "exactly_once",
        "Exactly once (every occupant got every message once)",
        all_joined.then_some(exactly_once),
        "",
    );
    r.metric(
        "missing",
        "Lost (sent, never received by an occupant)",
        lost,
        "",
    );
    r.alias("lost", "missing");
    r.metric("duplicates", "Duplicates", dups, "");
    r.metric(
        "invalid",
        "Unknown senders or never-sent sequence numbers",
        invalid,
        "",
    );
    r.metric(
        "other_messages",
        "Other groupchat messages (subject, …; ignored)",
        other_messages,
        "",
    );
    r.metric(
        "bounced",
        "Error replies (bounces)",
        errors.values().sum::<u64>(),
        "",
    );
    if let Some((drained, secs)) = drain {
        r.metric(
            "drained",
            "All stragglers arrived before the drain timeout",
            drained,
            "",
        );
        r.metric("drain_s", "Drain time", secs, "s");
    }
    if all_joined && !exactly_once {
        r.problem(format!(
            "exactly-once violated: {lost} lost, {dups} duplicated, {invalid} invalid"
        ));
        r.extra("bad_occupants", Json::Arr(bad));
    }
    for (c, n) in &errors {
        r.problem(format!("{n} error repl(y/ies) with condition {c}"));
    }
    for (e, n) in &removed {
        r.problem(format!("{n} occupant(s) removed from the room early: {e}"));
    }
    for (e, n) in &ended {
        r.problem(format!("{n} connection(s) ended early: {e}"));
    }
    if mo.rate.is_some() && sent_total < scheduled {
        r.note(format!(
            "the senders fell behind the target rate ({sent_total} of {scheduled} messages sent): the window or the server limited them"
        ));
    }

    r.section("Resources (measurement window)");
    if let (Some(a), Some(b)) = (&measure_snap, &end_snap) {
        cpu_metrics(&mut r, &probe, a, b, "muc", Some((in_window, "delivery")));
        r.alias("gen_cpu_percent", "generator_cpu_muc_pct");
        if let (Some(s), _) = probe.cpu(a, b) {
            r.metric(
                "delivered_per_server_core_s",
                "Delivered stanzas per second of server CPU (per core)",
                (s.cpu_s > 0.0).then(|| in_window as f64 / s.cpu_s),
                "stanzas/s",
            );
            r.alias(
                "delivered_per_server_core_sec",
                "delivered_per_server_core_s",
            );
        }
    }
    if let (Some(b), Some(a)) = (before_join.server, after.server) {
        r.metric(
            "server_rss_before_mib",
            "Server RSS before joining",
            mib(b.rss),
            "MiB",
        );
        if let Some(e) = end_snap.and_then(|s| s.server) {
            r.metric(
                "server_rss_end_mib",
                "Server RSS at the end of sending",
                mib(e.rss),
                "MiB",
            );
        }
        r.metric(
            "server_rss_after_mib",
            "Server RSS after closing",
            mib(a.rss),
            "MiB",
        );
    } else if opts.server_pid.is_none() {
        r.note("no --server-pid: server memory and CPU not measured");
    }
    if let Some(g) = after.gen {
        r.metric("generator_rss_mib", "Generator RSS", mib(g.rss), "MiB");
    }

    r.section("Leaving");
    r.metric("room_destroyed", "Room destroyed at the end", destroyed, "");
    r.metric("leave_s", "Leave and close time", leave_s, "s");
    r.metric(
        "close_clean",
        "Streams closed cleanly",
        closes.get("clean").copied().unwrap_or(0),
        "",
    );
    let unclean: u64 = closes
        .iter()
        .filter(|(c, _)| **c != "clean")
        .map(|(_, v)| v)
        .sum();
    if unclean > 0 {
        let detail: Vec<String> = closes
            .iter()
            .filter(|(c, _)| **c != "clean")
            .map(|(c, v)| format!("{v} {c}"))
            .collect();
        r.problem(format!("unclean closes: {}", detail.join(", ")));
    }
    r.extra("per_second_delivered", timeline);
    Ok(r)
}

/// Close sessions that never got an occupant task (aborted runs).
async fn close_sessions(sessions: Vec<Session>, timeout: Duration) {
    let mut set = tokio::task::JoinSet::new();
    for mut s in sessions {
        set.spawn(async move { client::close(&mut s.conn, timeout).await });
    }
    while set.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_exactly_once() {
        let sent = [3u64, 2];
        let mut t = Tally::new(2);
        let f = |i: usize| sent[i];
        assert_eq!(t.record(0, 0, f), Verdict::New);
        assert_eq!(t.record(0, 2, f), Verdict::New);
        assert_eq!(t.record(1, 1, f), Verdict::New);
        assert_eq!(t.record(0, 0, f), Verdict::Duplicate);
        // Never sent, unknown sender.
        assert_eq!(t.record(1, 2, f), Verdict::Invalid);
        assert_eq!(t.record(2, 0, f), Verdict::Invalid);
        assert_eq!(t.record(u64::MAX, 0, f), Verdict::Invalid);
        assert_eq!(t.dups, 1);
        assert_eq!(t.invalid, 3);
        let u = t.unique();
        assert_eq!(u, vec![2, 1]);
        // Sender 0 misses seq 1, sender 1 misses seq 0.
        assert_eq!(missing(&u, &sent), 2);
        assert_eq!(missing(&[3, 2], &sent), 0);
        assert_eq!(missing(&[], &sent), 5);
    }

    #[test]
    fn tally_memory_is_a_bit_per_message() {
        // 10 000 receivers × 1 sender × 1000 messages: ~128 bytes of bits per receiver.
        let mut t = Tally::new(1);
        for seq in 0..1000 {
            assert_eq!(t.record(0, seq, |_| 1000), Verdict::New);
        }
        assert_eq!(t.unique(), vec![1000]);
        assert!(t.seen[0].0.len() <= 32);
    }

    #[test]
    fn occupant_jids() {
        let room = "bench@conference.localhost";
        assert!(is_occupant_of(
            Some("bench@conference.localhost/bench3"),
            room
        ));
        assert!(!is_occupant_of(Some("bench@conference.localhost/"), room));
        assert!(!is_occupant_of(Some("bench@conference.localhost"), room));
        assert!(!is_occupant_of(Some("bench@conference.localhostx/a"), room));
        assert!(!is_occupant_of(Some("bench3@localhost/bench"), room));
        assert!(!is_occupant_of(None, room));
    }

    #[test]
    fn muc_status_codes() {
        let el: minidom::Element = "<presence xmlns='jabber:client' from='r@c/n'>\
            <x xmlns='http://jabber.org/protocol/muc#user'>\
            <item affiliation='owner' role='moderator'/>\
            <status code='110'/><status code='201'/></x></presence>"
            .parse()
            .unwrap();
        assert_eq!(status_codes(&el), vec![110, 201]);
        let el: minidom::Element = "<presence xmlns='jabber:client'>\
            <x xmlns='http://jabber.org/protocol/muc'><status code='110'/></x></presence>"
            .parse()
            .unwrap();
        assert!(status_codes(&el).is_empty());
    }

    #[test]
    fn messages_round_trip_through_the_body_parser() {
        let mut buf = BytesMut::new();
        let prefix = "<message to='bench@conference.localhost' type='groupchat'><body>";
        push_message(&mut buf, prefix, 7, 42, 123_456_789, "xx");
        assert_eq!(parse_body(&buf), Some((7, 42, 123_456_789)));
        // As reflected by a room: from the sender's occupant JID, extra payloads around.
        let reflected = b"<message from='bench@conference.localhost/bench7' type='groupchat' \
            id='x'><body>7 42 123456789 xx</body><stanza-id xmlns='urn:xmpp:sid:0' id='a'/></message>";
        assert_eq!(parse_body(reflected), Some((7, 42, 123_456_789)));
        assert!(join_presence("r@c/n&").contains("to='r@c/n&amp;'"));
        assert!(owner_iq("r@c", DESTROY_ID, "<destroy/>").contains("<destroy/></query></iq>"));
    }
}
