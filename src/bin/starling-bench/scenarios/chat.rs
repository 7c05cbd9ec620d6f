//! `chat`: P pairs of sessions; each pair's sender sends chat messages to its receiver's full
//! JID, either as fast as a bounded in-flight window allows (`--window`) or at a fixed total
//! rate (`--rate`, still capped by the window). Bodies carry "PAIR SEQ TIMESTAMP": the
//! receiver (same process, same monotonic clock) measures latency on parse, and checks that
//! every sequence number arrives exactly once.

use anyhow::Result;
use bytes::{BufMut, BytesMut};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::{cpu_metrics, login_many, mib, parse_body, Marks, Probe, RunOpts, Seen};
use crate::client::{
    self, instant_at, now_ns, stanza_error_condition, stream_error_condition, CloseOutcome, Reader,
    Session,
};
use crate::hist::Histogram;
use crate::report::{Json, Report};
use starling::xml::{escape, Event, Stanza, NS_STREAM};

pub struct ChatOpts {
    pub pairs: usize,
    pub secs: f64,
    pub window: u64,
    /// Total messages per second over all pairs (None: window-limited, as fast as possible).
    pub rate: Option<f64>,
    pub warmup: Duration,
    /// After sending stops, how long to wait for stragglers.
    pub drain: Duration,
    /// Extra body characters per message (payload size).
    pub body_pad: usize,
}

/// Per-pair counters shared by the sender and the receiver.
struct PairShared {
    /// Messages handed to the socket (bumped before the write, so every valid received
    /// sequence number is below it).
    sent: AtomicU64,
    /// Distinct sequence numbers received.
    delivered: AtomicU64,
    /// Wakes the sender when `delivered` moves.
    notify: Notify,
    /// The sender has stopped sending (`sent` is final).
    done: std::sync::atomic::AtomicBool,
}

// ---------------------------------------------------------------------------------------
// Receiving

#[derive(Default)]
struct RecvStats {
    latency: Histogram,
    seen: Seen,
    received: u64,
    dups: u64,
    reordered: u64,
    /// Sequence numbers never sent, or bodies we could not parse.
    invalid: u64,
    /// Messages of another pair.
    foreign: u64,
    /// type='error' messages (condition -> count).
    errors: BTreeMap<String, u64>,
    other_stanzas: u64,
    /// Received with the receive time inside the measurement window.
    in_window: u64,
    /// Messages received per second since the start mark.
    timeline: Vec<u64>,
    max_seq: Option<u64>,
    ended: Option<String>,
    close: Option<CloseOutcome>,
}

impl RecvStats {
    /// Account one stanza; returns 1 when it is a new, valid message of this pair.
    fn on_stanza(&mut self, st: &Stanza, pair: u64, shared: &PairShared, m: Marks) -> u64 {
        if st.name != "message" {
            self.other_stanzas += 1;
            return 0;
        }
        if st.type_.as_deref() == Some("error") {
            *self.errors.entry(stanza_error_condition(st)).or_default() += 1;
            return 0;
        }
        let now = now_ns();
        let Some((p, seq, ts)) = parse_body(st.raw()) else {
            self.invalid += 1;
            return 0;
        };
        if p != pair {
            self.foreign += 1;
            return 0;
        }
        if seq >= shared.sent.load(Ordering::Acquire) {
            self.invalid += 1;
            return 0;
        }
        self.received += 1;
        if m.in_window(ts) {
            self.latency.record(now.saturating_sub(ts));
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
        match self.max_seq {
            Some(mx) if seq < mx => self.reordered += 1,
            _ => self.max_seq = Some(seq),
        }
        if self.seen.insert(seq) {
            1
        } else {
            self.dups += 1;
            0
        }
    }
}

async fn receiver(
    mut s: Session,
    pair: u64,
    shared: Arc<PairShared>,
    m: Marks,
    mut stop: watch::Receiver<bool>,
    close_timeout: Duration,
) -> RecvStats {
    let mut st = RecvStats::default();
    'run: loop {
        tokio::select! {
            biased;
            r = s.conn.read_more() => match r {
                Ok(true) => {
                    let mut new = 0;
                    loop {
                        match s.conn.poll_event() {
                            Ok(Some(Event::Stanza(x))) if x.ns == NS_STREAM && x.name == "error" => {
                                st.ended = Some(format!("stream error: {}", stream_error_condition(&x)));
                                break;
                            }
                            Ok(Some(Event::Stanza(x))) => new += st.on_stanza(&x, pair, &shared, m),
                            Ok(Some(Event::Close)) => {
                                st.ended = Some("server closed the stream".into());
                                break;
                            }
                            Ok(Some(Event::Open(_))) => {}
                            Ok(None) => break,
                            Err(e) => {
                                st.ended = Some(format!("{e:#}"));
                                break;
                            }
                        }
                    }
                    if new > 0 {
                        shared.delivered.fetch_add(new, Ordering::AcqRel);
                        shared.notify.notify_one();
                    }
                    if st.ended.is_some() {
                        break 'run;
                    }
                }
                Ok(false) => {
                    st.ended = Some("connection closed by server".into());
                    break 'run;
                }
                Err(e) => {
                    st.ended = Some(format!("read error: {e}"));
                    break 'run;
                }
            },
            _ = stop.changed() => break 'run,
        }
    }
    if st.ended.is_none() {
        if s.conn.send(b"</stream:stream>").await.is_err() {
            st.close = Some(CloseOutcome::IoError);
        } else {
            let mut late = 0;
            let out = {
                let stats = &mut st;
                let sh = &shared;
                client::await_close(&mut s.conn, close_timeout, |x| {
                    late += stats.on_stanza(&x, pair, sh, m)
                })
                .await
            };
            shared.delivered.fetch_add(late, Ordering::AcqRel);
            st.close = Some(out);
            let _ = tokio::time::timeout(Duration::from_secs(1), s.conn.io.shutdown()).await;
        }
    }
    st
}

// ---------------------------------------------------------------------------------------
// Sending

#[derive(Default)]
struct SendStats {
    sent: u64,
    /// Rate mode: messages due before the end mark.
    scheduled: u64,
    /// type='error' replies (condition -> count): bounced messages.
    errors: BTreeMap<String, u64>,
    other_stanzas: u64,
    /// Rate mode: how far behind its schedule the sender was at worst (measured window).
    max_lag_ns: u64,
    ended: Option<String>,
    close: Option<CloseOutcome>,
}

/// The sender connection's incoming side: count bounces, stop at the server's close.
async fn sender_reader<R: AsyncRead + Unpin>(
    mut r: Reader<R>,
) -> (BTreeMap<String, u64>, u64, CloseOutcome) {
    let mut errors = BTreeMap::new();
    let mut other = 0u64;
    let out = client::await_close(&mut r, Duration::from_secs(u32::MAX as u64), |st| {
        if st.name == "message" && st.type_.as_deref() == Some("error") {
            *errors.entry(stanza_error_condition(&st)).or_default() += 1;
        } else {
            other += 1;
        }
    })
    .await;
    (errors, other, out)
}

struct SendPlan {
    window: u64,
    /// Rate mode: nanoseconds between this pair's messages, and this pair's phase offset.
    interval: Option<(u64, u64)>,
    pad: Arc<str>,
}

#[allow(clippy::too_many_arguments)]
async fn sender(
    s: Session,
    pair: u64,
    to: String,
    shared: Arc<PairShared>,
    m: Marks,
    plan: SendPlan,
    mut stop: watch::Receiver<bool>,
    close_timeout: Duration,
) -> SendStats {
    let mut st = SendStats::default();
    let (io, parser) = s.conn.into_parts();
    let (rh, mut wh) = tokio::io::split(io);
    let mut rtask = tokio::spawn(sender_reader(Reader::new(rh, parser)));
    let prefix = format!("<message to='{}' type='chat'><body>", escape(&to));
    let mut buf = BytesMut::with_capacity(4096);
    let mut line = String::with_capacity(64);
    let mut push = |buf: &mut BytesMut, seq: u64, ts: u64| {
        line.clear();
        let _ = write!(line, "{pair} {seq} {ts}");
        buf.put_slice(prefix.as_bytes());
        buf.put_slice(line.as_bytes());
        if !plan.pad.is_empty() {
            buf.put_u8(b' ');
            buf.put_slice(plan.pad.as_bytes());
        }
        buf.put_slice(b"</body></message>");
    };
    let end_at = instant_at(m.end);
    let mut seq = 0u64;
    let base = m.start + plan.interval.map(|(_, off)| off).unwrap_or(0);
    tokio::time::sleep_until(instant_at(base).into()).await;
    loop {
        let now = now_ns();
        // Rate mode ends with the last message due before the end mark (sent late if need be).
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
        let inflight = seq - shared.delivered.load(Ordering::Acquire);
        if inflight >= plan.window {
            tokio::select! {
                _ = shared.notify.notified() => {}
                _ = tokio::time::sleep_until(end_at.into()) => break,
            }
            continue;
        }
        let room = plan.window - inflight;
        let now = now_ns();
        let mut n = 0;
        while n < room {
            let ts = match plan.interval {
                // Stamp the actual send time: tokio's timer wakes up to 1 ms after the due
                // time, and that lateness is the generator's, not the server's. Falling
                // behind the schedule (the server or the window holding senders back) is
                // reported separately as the sender lag, so it cannot hide.
                Some((iv, _)) => {
                    let due = base + seq * iv;
                    if due > now || due >= m.end {
                        break;
                    }
                    if due >= m.measure {
                        st.max_lag_ns = st.max_lag_ns.max(now - due);
                    }
                    now
                }
                None => now_ns(),
            };
            push(&mut buf, seq, ts);
            seq += 1;
            n += 1;
        }
        shared.sent.store(seq, Ordering::Release);
        let w = async {
            wh.write_all(&buf).await?;
            wh.flush().await
        };
        if let Err(e) = w.await {
            st.ended = Some(format!("write error: {e}"));
            break;
        }
        buf.clear();
    }
    st.sent = seq;
    shared.done.store(true, Ordering::Release);
    if let Some((iv, _)) = plan.interval {
        st.scheduled = if m.end > base {
            (m.end - base).div_ceil(iv)
        } else {
            0
        };
    }
    // Hold the session open until every pair is drained, then close.
    let _ = stop.changed().await;
    if rtask.is_finished() && st.ended.is_none() {
        st.ended = Some("server ended the sender's stream early".into());
    }
    let closed = async {
        wh.write_all(b"</stream:stream>").await?;
        wh.flush().await
    };
    let wrote_close = closed.await.is_ok();
    match tokio::time::timeout(close_timeout, &mut rtask).await {
        Ok(Ok((errors, other, out))) => {
            st.errors = errors;
            st.other_stanzas = other;
            st.close = Some(if wrote_close {
                out
            } else {
                CloseOutcome::IoError
            });
        }
        Ok(Err(_)) => st.close = Some(CloseOutcome::IoError),
        Err(_) => {
            rtask.abort();
            st.close = Some(CloseOutcome::Timeout);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), wh.shutdown()).await;
    st
}

// ---------------------------------------------------------------------------------------
// The scenario

pub async fn run(opts: &RunOpts, co: &ChatOpts) -> Result<Report> {
    let probe = Probe::new(opts.server_pid, opts.clk_tck);
    let tls = opts.client.tls.is_some();
    let mut r = Report::new("chat");
    r.param("pairs", co.pairs);
    r.param("secs", co.secs);
    r.param("window", co.window);
    r.param("rate", co.rate);
    r.param("warmup_secs", co.warmup.as_secs_f64());
    r.param("drain_secs", co.drain.as_secs_f64());
    r.param("body_pad", co.body_pad);
    r.param("tls", tls);
    r.param("mech", opts.client.mech.name());
    r.param("server", opts.client.addr.to_string());

    let warm = co.warmup.as_secs_f64();
    if co.secs <= warm {
        anyhow::bail!(
            "--secs ({}) must be longer than --warmup-secs ({warm})",
            co.secs
        );
    }

    let mut phase = login_many(opts, 0..co.pairs * 2, "login").await?;
    r.section("Logins");
    phase.report(&mut r, tls);
    if phase.failed > 0 {
        r.problem("not every session logged in: chat not run");
        for s in std::mem::take(&mut phase.sessions) {
            let mut c = s.conn;
            let _ = client::close(&mut c, opts.close_timeout).await;
        }
        return Ok(r);
    }

    let before = probe.snap();
    // 200 ms for every task to be parked before the start mark.
    let m = Marks::from_now(Duration::from_millis(200), co.warmup, co.secs);
    let (stop_tx, stop_rx) = watch::channel(false);
    let pad: Arc<str> = "x".repeat(co.body_pad).into();
    let interval = co
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| (co.pairs as f64 * 1e9 / r).max(1.0) as u64);

    let mut shared = Vec::new();
    let mut senders: Vec<JoinHandle<SendStats>> = Vec::new();
    let mut receivers: Vec<JoinHandle<RecvStats>> = Vec::new();
    let mut sessions = std::mem::take(&mut phase.sessions).into_iter();
    for pair in 0..co.pairs {
        let (Some(a), Some(b)) = (sessions.next(), sessions.next()) else {
            anyhow::bail!("internal: missing sessions for pair {pair}");
        };
        let sh = Arc::new(PairShared {
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            notify: Notify::new(),
            done: Default::default(),
        });
        shared.push(sh.clone());
        let to = b.jid.clone();
        receivers.push(tokio::spawn(receiver(
            b,
            pair as u64,
            sh.clone(),
            m,
            stop_rx.clone(),
            opts.close_timeout,
        )));
        let plan = SendPlan {
            window: co.window.max(1),
            // Spread the pairs' schedules evenly over one interval.
            interval: interval.map(|iv| (iv, iv * pair as u64 / co.pairs as u64)),
            pad: pad.clone(),
        };
        senders.push(tokio::spawn(sender(
            a,
            pair as u64,
            to,
            sh,
            m,
            plan,
            stop_rx.clone(),
            opts.close_timeout,
        )));
    }
    eprintln!("[chat] {} pairs sending for {:.1}s", co.pairs, co.secs);

    tokio::time::sleep_until(instant_at(m.measure).into()).await;
    let measure_snap = probe.snap();
    tokio::time::sleep_until(instant_at(m.end).into()).await;
    let end_snap = probe.snap();

    // Stragglers: wait until every pair has received all it was sent, or the drain timeout.
    let drain_start = now_ns();
    let drained = loop {
        let pending: u64 = shared
            .iter()
            .map(|s| {
                s.sent
                    .load(Ordering::Acquire)
                    .saturating_sub(s.delivered.load(Ordering::Acquire))
            })
            .sum();
        if pending == 0 && shared.iter().all(|s| s.done.load(Ordering::Acquire)) {
            break true;
        }
        if now_ns() - drain_start >= co.drain.as_nanos() as u64 {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let drain_s = (now_ns() - drain_start) as f64 / 1e9;
    let _ = stop_tx.send(true);

    let mut send_stats = Vec::new();
    for h in senders {
        send_stats.push(h.await.unwrap_or_else(|e| SendStats {
            ended: Some(format!("task failed: {e}")),
            ..Default::default()
        }));
    }
    let mut recv_stats = Vec::new();
    for h in receivers {
        recv_stats.push(h.await.unwrap_or_else(|e| RecvStats {
            ended: Some(format!("task failed: {e}")),
            ..Default::default()
        }));
    }
    let after = probe.snap();

    // ---- aggregate
    let mut lat = Histogram::new();
    let (mut sent, mut delivered, mut in_window) = (0u64, 0u64, 0u64);
    let (mut missing, mut dups, mut reordered, mut invalid, mut foreign) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut scheduled = 0u64;
    let mut timeline: Vec<u64> = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut ended: BTreeMap<String, u64> = BTreeMap::new();
    let mut closes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut per_pair_delivered = Vec::new();
    let mut bad_pairs = Vec::new();
    for (i, (s, rcv)) in send_stats.iter().zip(recv_stats.iter()).enumerate() {
        lat.merge(&rcv.latency);
        sent += s.sent;
        scheduled += s.scheduled;
        let unique = rcv.seen.count();
        delivered += unique;
        in_window += rcv.in_window;
        let miss = s.sent.saturating_sub(unique);
        missing += miss;
        dups += rcv.dups;
        reordered += rcv.reordered;
        invalid += rcv.invalid;
        foreign += rcv.foreign;
        per_pair_delivered.push(unique);
        if miss > 0 || rcv.dups > 0 || rcv.invalid > 0 || rcv.foreign > 0 {
            bad_pairs.push(
                Json::obj()
                    .with("pair", i)
                    .with("sent", s.sent)
                    .with("received_unique", unique)
                    .with("missing", miss)
                    .with("duplicates", rcv.dups)
                    .with("invalid", rcv.invalid)
                    .with("foreign", rcv.foreign),
            );
        }
        if timeline.len() < rcv.timeline.len() {
            timeline.resize(rcv.timeline.len(), 0);
        }
        for (t, v) in timeline.iter_mut().zip(rcv.timeline.iter()) {
            *t += v;
        }
        for (k, v) in s.errors.iter().chain(rcv.errors.iter()) {
            *errors.entry(k.clone()).or_default() += v;
        }
        for e in s.ended.iter().chain(rcv.ended.iter()) {
            *ended.entry(e.clone()).or_default() += 1;
        }
        for c in s.close.iter().chain(rcv.close.iter()) {
            *closes.entry(c.name()).or_default() += 1;
        }
    }
    let measured_s = m.measured_secs();
    let whole_secs = ((m.end - m.start) / 1_000_000_000) as usize;
    let full: Vec<u64> = timeline.iter().take(whole_secs).copied().collect();
    let exactly_once = missing == 0 && dups == 0 && invalid == 0 && foreign == 0;

    r.section("Throughput");
    r.metric("messages_sent", "Messages sent", sent, "");
    if co.rate.is_some() {
        r.metric(
            "messages_scheduled",
            "Messages scheduled (rate × time)",
            scheduled,
            "",
        );
        r.metric("rate_target_per_s", "Target rate", co.rate, "msgs/s");
        let lag = send_stats.iter().map(|s| s.max_lag_ns).max().unwrap_or(0);
        r.metric(
            "sender_lag_max_ms",
            "Senders behind schedule, worst (timer slack or back-pressure)",
            lag as f64 / 1e6,
            "ms",
        );
    }
    r.metric(
        "messages_delivered",
        "Messages delivered (distinct)",
        delivered,
        "",
    );
    r.metric(
        "delivered_per_s",
        "Delivered rate (measurement window)",
        in_window as f64 / measured_s,
        "msgs/s",
    );
    r.metric(
        "measured_secs",
        "Measurement window (after warm-up)",
        measured_s,
        "s",
    );
    r.metric(
        "per_second_min",
        "Slowest whole second",
        full.iter().min().copied(),
        "msgs",
    );
    r.metric(
        "per_second_max",
        "Fastest whole second",
        full.iter().max().copied(),
        "msgs",
    );
    r.metric(
        "per_pair_delivered_min",
        "Least delivered by one pair",
        per_pair_delivered.iter().min().copied(),
        "msgs",
    );
    r.metric(
        "per_pair_delivered_max",
        "Most delivered by one pair",
        per_pair_delivered.iter().max().copied(),
        "msgs",
    );

    r.section("Latency (send → parsed by receiver, messages sent in the window)");
    super::latency_metrics(&mut r, &lat);

    r.section("Delivery guarantees");
    r.metric(
        "exactly_once",
        "Exactly once (no loss, no duplicate)",
        exactly_once,
        "",
    );
    r.metric("missing", "Lost (sent, never received)", missing, "");
    r.metric("duplicates", "Duplicates", dups, "");
    r.metric("reordered", "Out of order (within a pair)", reordered, "");
    r.metric(
        "invalid",
        "Unparsable or never-sent sequence numbers",
        invalid,
        "",
    );
    r.metric("foreign", "Delivered to the wrong pair", foreign, "");
    r.metric(
        "bounced",
        "Error replies (bounces)",
        errors.values().sum::<u64>(),
        "",
    );
    r.metric(
        "drained",
        "All stragglers arrived before the drain timeout",
        drained,
        "",
    );
    r.metric("drain_s", "Drain time", drain_s, "s");
    if !exactly_once {
        r.problem(format!(
            "exactly-once violated: {missing} lost, {dups} duplicated, {invalid} invalid, {foreign} misdelivered"
        ));
        r.extra("bad_pairs", Json::Arr(bad_pairs));
    }
    for (k, v) in &errors {
        r.problem(format!("{v} error repl(y/ies) with condition {k}"));
    }
    for (k, v) in &ended {
        r.problem(format!("{v} connection(s) ended early: {k}"));
    }
    let unclean: u64 = closes
        .iter()
        .filter(|(k, _)| **k != "clean")
        .map(|(_, v)| v)
        .sum();
    r.metric(
        "close_clean",
        "Streams closed cleanly",
        closes.get("clean").copied().unwrap_or(0),
        "",
    );
    if unclean > 0 {
        let detail: Vec<String> = closes
            .iter()
            .filter(|(k, _)| **k != "clean")
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        r.problem(format!("unclean closes: {}", detail.join(", ")));
    }
    if co.rate.is_some() && sent < scheduled {
        r.note(format!(
            "the senders fell behind the target rate ({sent} of {scheduled} messages sent): the window or the server limited them"
        ));
    }

    r.section("Resources (measurement window)");
    cpu_metrics(
        &mut r,
        &probe,
        &measure_snap,
        &end_snap,
        "chat",
        Some((in_window, "message")),
    );
    if let (Some(b), Some(e), Some(a)) = (before.server, end_snap.server, after.server) {
        r.metric(
            "server_rss_before_mib",
            "Server RSS before sending",
            mib(b.rss),
            "MiB",
        );
        r.metric(
            "server_rss_end_mib",
            "Server RSS at the end of sending",
            mib(e.rss),
            "MiB",
        );
        r.metric(
            "server_rss_after_mib",
            "Server RSS after closing",
            mib(a.rss),
            "MiB",
        );
    } else if opts.server_pid.is_none() {
        r.note("no --server-pid: server memory and CPU not measured");
    }
    r.extra("per_second_delivered", timeline);
    Ok(r)
}
