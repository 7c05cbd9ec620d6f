//! `idle`: open N authenticated, bound sessions (with initial presence), hold them, close
//! them. Measures the server's memory per idle session, login rate and cost, and whether
//! sessions survive the hold and close cleanly.

use anyhow::Result;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{cpu_metrics, login_many, mib, Probe, RunOpts};
use crate::client::{self, stream_error_condition, CloseOutcome, Session};
use crate::report::{Json, Report};
use starling::xml::{Event, NS_STREAM};

pub struct IdleOpts {
    pub sessions: usize,
    pub hold: Duration,
    /// Sessions opened and closed before the baseline RSS is taken (0: none).
    pub warmup_sessions: usize,
    /// Pause before reading the baseline and after closing (let the server settle).
    pub settle: Duration,
}

/// How a held session ended.
enum Held {
    Closed(CloseOutcome),
    /// The server ended it during the hold (reason).
    Dropped(String),
}

/// Keep reading (keepalives, presence echoes) until told to close, then close cleanly.
async fn hold(mut s: Session, mut stop: watch::Receiver<bool>, close_timeout: Duration) -> Held {
    s.conn.shrink();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            r = s.conn.read_more() => match r {
                Ok(true) => loop {
                    match s.conn.poll_event() {
                        Ok(Some(Event::Close)) => return Held::Dropped("server closed the stream".into()),
                        Ok(Some(Event::Stanza(st))) if st.ns == NS_STREAM && st.name == "error" => {
                            return Held::Dropped(format!("stream error: {}", stream_error_condition(&st)))
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => return Held::Dropped(format!("{e:#}")),
                    }
                },
                Ok(false) => return Held::Dropped("connection closed by server".into()),
                Err(e) => return Held::Dropped(format!("read error: {e}")),
            }
        }
    }
    Held::Closed(client::close(&mut s.conn, close_timeout).await)
}

/// Close a batch of sessions concurrently; outcome name -> count.
async fn close_all(sessions: Vec<Session>, timeout: Duration) -> BTreeMap<&'static str, usize> {
    let mut set = JoinSet::new();
    for mut s in sessions {
        set.spawn(async move { client::close(&mut s.conn, timeout).await });
    }
    let mut out = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        let k = r.map(|o| o.name()).unwrap_or("task_failed");
        *out.entry(k).or_default() += 1;
    }
    out
}

pub async fn run(opts: &RunOpts, io: &IdleOpts) -> Result<Report> {
    let probe = Probe::new(opts.server_pid, opts.clk_tck);
    let tls = opts.client.tls.is_some();
    let mut r = Report::new("idle");
    r.param("sessions", io.sessions);
    r.param("hold_secs", io.hold.as_secs_f64());
    r.param("warmup_sessions", io.warmup_sessions);
    r.param("tls", tls);
    r.param("mech", opts.client.mech.name());
    r.param("presence", opts.client.presence);
    r.param("concurrency", opts.concurrency);
    r.param("server", opts.client.addr.to_string());

    if io.warmup_sessions > 0 {
        let w = login_many(opts, 0..io.warmup_sessions, "warm-up").await?;
        if w.failed > 0 {
            r.problem(format!("{} warm-up login(s) failed", w.failed));
        }
        close_all(w.sessions, opts.close_timeout).await;
    }
    tokio::time::sleep(io.settle).await;
    let before = probe.snap();

    let mut phase = login_many(opts, 0..io.sessions, "login").await?;
    let logged_in = probe.snap();
    let ok = phase.sessions.len();

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut holders = JoinSet::new();
    for s in std::mem::take(&mut phase.sessions) {
        holders.spawn(hold(s, stop_rx.clone(), opts.close_timeout));
    }
    tokio::time::sleep(io.hold).await;
    let held = probe.snap();
    let alive_before_close = probe.server_alive();

    let close_start = std::time::Instant::now();
    let _ = stop_tx.send(true);
    let mut closes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut dropped: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(res) = holders.join_next().await {
        match res {
            Ok(Held::Closed(o)) => *closes.entry(o.name()).or_default() += 1,
            Ok(Held::Dropped(why)) => *dropped.entry(why).or_default() += 1,
            Err(e) => *dropped.entry(format!("task failed: {e}")).or_default() += 1,
        }
    }
    let close_wall = close_start.elapsed();
    tokio::time::sleep(io.settle).await;
    let after_close = probe.snap();

    // ---- report
    r.section("Logins");
    phase.report(&mut r, tls);
    cpu_metrics(
        &mut r,
        &probe,
        &before,
        &logged_in,
        "login",
        Some((ok as u64, "login")),
    );

    r.section("Server memory");
    match (before.server, held.server) {
        (Some(b), Some(h)) => {
            r.metric(
                "server_rss_before_bytes",
                "Server RSS before",
                b.rss,
                "bytes",
            );
            r.metric(
                "server_rss_before_mib",
                "Server RSS before",
                mib(b.rss),
                "MiB",
            );
            r.metric(
                "server_rss_held_mib",
                "Server RSS with all sessions open",
                mib(h.rss),
                "MiB",
            );
            r.metric(
                "server_rss_held_bytes",
                "Server RSS with all sessions open",
                h.rss,
                "bytes",
            );
            let per = if ok > 0 {
                Some((h.rss as f64 - b.rss as f64) / ok as f64)
            } else {
                None
            };
            r.metric(
                "rss_per_session_bytes",
                "RSS per idle session",
                per,
                "bytes",
            );
            r.metric(
                "rss_per_session_kib",
                "RSS per idle session",
                per.map(|p| p / 1024.0),
                "KiB",
            );
            r.metric(
                "server_rss_peak_mib",
                "Server peak RSS (VmHWM)",
                mib(h.hwm.max(b.hwm)),
                "MiB",
            );
            if let Some(a) = after_close.server {
                r.metric(
                    "server_rss_after_close_mib",
                    "Server RSS after closing all",
                    mib(a.rss),
                    "MiB",
                );
                r.metric("server_threads", "Server threads", h.threads, "");
            }
        }
        _ if opts.server_pid.is_some() => r.problem("could not read the server's /proc entries"),
        _ => r.note("no --server-pid: server memory and CPU not measured"),
    }

    r.section("Hold and close");
    cpu_metrics(&mut r, &probe, &logged_in, &held, "hold", None);
    let dropped_n: usize = dropped.values().sum();
    r.metric(
        "sessions_dropped_during_hold",
        "Sessions ended by the server during the hold",
        dropped_n,
        "",
    );
    for (why, n) in &dropped {
        r.problem(format!("{n} session(s) ended during the hold: {why}"));
    }
    r.metric(
        "close_clean",
        "Closed cleanly (server answered </stream:stream>)",
        closes.get("clean").copied().unwrap_or(0),
        "",
    );
    let unclean: usize = closes
        .iter()
        .filter(|(k, _)| **k != "clean")
        .map(|(_, v)| v)
        .sum();
    r.metric(
        "close_unclean",
        "Closed otherwise (EOF, error, timeout)",
        unclean,
        "",
    );
    r.metric(
        "close_wall_s",
        "Time to close all",
        close_wall.as_secs_f64(),
        "s",
    );
    if unclean > 0 {
        let detail: Vec<String> = closes
            .iter()
            .filter(|(k, _)| **k != "clean")
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        r.problem(format!("unclean closes: {}", detail.join(", ")));
    }
    r.extra(
        "close_outcomes",
        Json::Obj(
            closes
                .iter()
                .map(|(k, v)| (k.to_string(), Json::from(*v)))
                .collect(),
        ),
    );
    if !alive_before_close {
        r.problem("the server process was gone at the end of the hold");
    }
    if let Some(g) = held.gen {
        r.metric("generator_rss_mib", "Generator RSS", mib(g.rss), "MiB");
    }
    Ok(r)
}
