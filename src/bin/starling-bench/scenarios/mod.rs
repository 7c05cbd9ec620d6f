//! Scenarios and what they share: opening many sessions with bounded concurrency, and
//! probing the server's and the generator's memory and CPU.

pub mod chat;
pub mod idle;
pub mod login;
pub mod muc;

use anyhow::Result;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{self, ClientConfig, Session};
use crate::hist::Histogram;
use crate::procstat::{self, CpuUse, Sample, Target};
use crate::report::{Json, Report};

/// Options every scenario shares (beyond the connection settings).
pub struct RunOpts {
    pub client: Arc<ClientConfig>,
    pub concurrency: usize,
    pub login_timeout: Duration,
    pub close_timeout: Duration,
    pub server_pid: Option<u32>,
    pub clk_tck: u64,
}

// ---------------------------------------------------------------------------------------
// Process probes

/// Samples of the server (when its pid is known) and of the generator, taken together.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub server: Option<Sample>,
    pub gen: Option<Sample>,
    /// Whole machine (busy, irq+softirq) ticks, all cores.
    pub machine: Option<(u64, u64)>,
}

pub struct Probe {
    pid: Option<u32>,
    pub tck: u64,
}

impl Probe {
    pub fn new(pid: Option<u32>, tck: u64) -> Probe {
        Probe { pid, tck }
    }

    pub fn snap(&self) -> Snapshot {
        Snapshot {
            server: self.pid.and_then(|p| procstat::sample(Target::Pid(p)).ok()),
            gen: procstat::sample(Target::SelfProc).ok(),
            machine: procstat::machine_cpu(),
        }
    }

    pub fn server_alive(&self) -> bool {
        self.pid
            .map(|p| procstat::sample(Target::Pid(p)).is_ok())
            .unwrap_or(true)
    }

    /// (server, generator) CPU use between two snapshots.
    pub fn cpu(&self, a: &Snapshot, b: &Snapshot) -> (Option<CpuUse>, Option<CpuUse>) {
        let s = match (a.server, b.server) {
            (Some(x), Some(y)) => Some(CpuUse::between(&x, &y, self.tck)),
            _ => None,
        };
        let g = match (a.gen, b.gen) {
            (Some(x), Some(y)) => Some(CpuUse::between(&x, &y, self.tck)),
            _ => None,
        };
        (s, g)
    }
}

/// Add "server CPU / generator CPU" rows for one phase (`what` names it in keys and labels).
/// `per`: optional (count, noun) to also report server CPU time per unit of work.
pub fn cpu_metrics(
    r: &mut Report,
    probe: &Probe,
    a: &Snapshot,
    b: &Snapshot,
    what: &str,
    per: Option<(u64, &str)>,
) {
    let (s, g) = probe.cpu(a, b);
    if let Some(s) = s {
        r.metric(
            &format!("server_cpu_{what}_s"),
            &format!("Server CPU time ({what})"),
            s.cpu_s,
            "s",
        );
        r.metric(
            &format!("server_cpu_{what}_pct"),
            &format!("Server CPU ({what}, 100% = one core)"),
            s.percent(),
            "%",
        );
        if let Some((n, noun)) = per {
            if n > 0 {
                r.metric(
                    &format!("server_cpu_per_{noun}_us"),
                    &format!("Server CPU per {noun}"),
                    s.cpu_s * 1e6 / n as f64,
                    "µs",
                );
            }
        }
    }
    // Whole-machine busy and interrupt time over the phase, % of one core.
    let machine = match (a.machine, b.machine, a.gen, b.gen) {
        (Some((b0, i0)), Some((b1, i1)), Some(g0), Some(g1)) => {
            let wall = g1.at.duration_since(g0.at).as_secs_f64();
            let pct = |t: u64| t as f64 / probe.tck as f64 / wall * 100.0;
            // Tick-granular counters: meaningless over very short phases.
            (wall >= 0.5).then(|| (pct(b1.saturating_sub(b0)), pct(i1.saturating_sub(i0))))
        }
        _ => None,
    };
    if let Some(g) = g {
        r.metric(
            &format!("generator_cpu_{what}_s"),
            &format!("Generator CPU time ({what})"),
            g.cpu_s,
            "s",
        );
        r.metric(
            &format!("generator_cpu_{what}_pct"),
            &format!("Generator CPU ({what}, 100% = one core)"),
            g.percent(),
            "%",
        );
    }
    let Some((busy, irq)) = machine else {
        return;
    };
    let server_pct = s.map(|s| s.percent()).unwrap_or(0.0);
    let gen_pct = g.map(|g| g.percent()).unwrap_or(0.0);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    r.metric(
        &format!("machine_cpu_{what}_pct"),
        &format!("Machine CPU busy ({what}, all processes)"),
        busy,
        "%",
    );
    r.metric(
        &format!("irq_cpu_{what}_pct"),
        &format!("… of which interrupts/softirq (loopback TCP) ({what})"),
        irq,
        "%",
    );
    // Softirq time may or may not also be charged to the two processes: bound it.
    let others = (busy - gen_pct - server_pct - irq).max(0.0);
    r.metric(
        &format!("other_cpu_{what}_pct"),
        &format!("… other processes ({what})"),
        others,
        "%",
    );
    if others >= 25.0 {
        r.note(format!(
            "during {what}, processes other than the server and the generator used about {others:.0}% CPU: \
             figures are disturbed; rerun on a quiet machine"
        ));
    }
    if busy >= 90.0 * cores {
        r.note(format!(
            "during {what} the machine's {cores} core(s) were saturated ({busy:.0}% busy; server {server_pct:.0}%, \
             generator {gen_pct:.0}%, interrupts {irq:.0}%): figures may be bounded by the shared machine rather than by the server"
        ));
    }
}

/// The latency rows every delivery scenario reports, under the same keys.
pub fn latency_metrics(r: &mut Report, lat: &Histogram) {
    r.metric("latency_samples", "Samples", lat.count(), "");
    r.metric("latency_min_ms", "min", ms(lat.min()), "ms");
    r.metric("latency_p50_ms", "p50", ms(lat.quantile(0.5)), "ms");
    r.metric("latency_p90_ms", "p90", ms(lat.quantile(0.9)), "ms");
    r.metric("latency_p99_ms", "p99", ms(lat.quantile(0.99)), "ms");
    r.metric("latency_p999_ms", "p99.9", ms(lat.quantile(0.999)), "ms");
    r.metric("latency_max_ms", "max", ms(lat.max()), "ms");
    r.metric("latency_mean_ms", "mean", lat.mean().map(|v| v / 1e6), "ms");
}

pub fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

pub fn ms(ns: Option<u64>) -> Option<f64> {
    ns.map(|v| v as f64 / 1e6)
}

// ---------------------------------------------------------------------------------------
// Message accounting shared by the messaging scenarios

/// A run's clock marks, in `now_ns()` nanoseconds: sending starts at `start`, figures are
/// measured from `measure` (end of the warm-up) to `end`.
#[derive(Clone, Copy, Debug)]
pub struct Marks {
    pub start: u64,
    pub measure: u64,
    pub end: u64,
}

impl Marks {
    /// Marks `lead` from now, with `warmup` and a total of `secs` of sending.
    pub fn from_now(lead: Duration, warmup: Duration, secs: f64) -> Marks {
        let start = client::now_ns() + lead.as_nanos() as u64;
        Marks {
            start,
            measure: start + warmup.as_nanos() as u64,
            end: start + (secs * 1e9) as u64,
        }
    }

    /// Whether `t` lies in the measurement window.
    pub fn in_window(&self, t: u64) -> bool {
        t >= self.measure && t < self.end
    }

    pub fn measured_secs(&self) -> f64 {
        (self.end - self.measure) as f64 / 1e9
    }
}

/// Growable bitset of received sequence numbers: one bit per message, so exactly-once
/// checking costs memory proportional to the messages, not to a per-message allocation.
#[derive(Default)]
pub struct Seen(Vec<u64>);

impl Seen {
    /// Set bit `i`; true if it was not set.
    pub fn insert(&mut self, i: u64) -> bool {
        let w = (i / 64) as usize;
        if w >= self.0.len() {
            self.0.resize(w + 1 + w / 2, 0);
        }
        let bit = 1u64 << (i % 64);
        let new = self.0[w] & bit == 0;
        self.0[w] |= bit;
        new
    }
    pub fn count(&self) -> u64 {
        self.0.iter().map(|w| w.count_ones() as u64).sum()
    }
}

/// "ID SEQ TS" (plus optional padding) out of `<body>…</body>` in the raw stanza bytes, no
/// tree built. ID is the pair (chat) or the sender (muc), TS the send time in `now_ns()`.
pub fn parse_body(raw: &[u8]) -> Option<(u64, u64, u64)> {
    let open = memchr::memmem::find(raw, b"<body")?;
    let gt = open + memchr::memchr(b'>', &raw[open..])? + 1;
    let len = memchr::memmem::find(&raw[gt..], b"</body>")?;
    let text = std::str::from_utf8(&raw[gt..gt + len]).ok()?;
    let mut it = text.split(' ');
    let id = it.next()?.parse().ok()?;
    let seq = it.next()?.parse().ok()?;
    let ts = it.next()?.parse().ok()?;
    Some((id, seq, ts))
}

// ---------------------------------------------------------------------------------------
// Opening sessions

/// What opening a batch of sessions produced.
pub struct LoginPhase {
    pub sessions: Vec<Session>,
    /// Sessions logged in (stays valid after `sessions` is taken).
    pub ok: usize,
    pub failed: usize,
    /// Error message (without per-connection details) -> count.
    pub errors: BTreeMap<String, usize>,
    pub wall: Duration,
    pub total: Histogram,
    pub connect: Histogram,
    pub tls: Histogram,
    pub auth: Histogram,
    pub bind: Histogram,
    /// System-wide TCP accept-queue overflows during the phase (SYNs dropped: 1 s+ retries).
    pub listen_overflows: Option<u64>,
}

impl LoginPhase {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Rows for the report: counts, rate, latency and its breakdown by phase.
    pub fn report(&self, r: &mut Report, tls: bool) {
        r.metric("sessions_ok", "Sessions logged in", self.ok, "");
        r.metric("sessions_failed", "Logins failed", self.failed, "");
        r.metric(
            "login_wall_s",
            "Time to open all sessions",
            self.wall.as_secs_f64(),
            "s",
        );
        r.metric("login_rate_per_s", "Login rate", self.rate(), "sessions/s");
        r.metric(
            "login_p50_ms",
            "Login latency p50 (connect→bound)",
            ms(self.total.quantile(0.5)),
            "ms",
        );
        r.metric(
            "login_p99_ms",
            "Login latency p99",
            ms(self.total.quantile(0.99)),
            "ms",
        );
        r.metric(
            "login_max_ms",
            "Login latency max",
            ms(self.total.max()),
            "ms",
        );
        r.metric(
            "login_connect_p50_ms",
            "… TCP connect p50",
            ms(self.connect.quantile(0.5)),
            "ms",
        );
        r.metric(
            "login_connect_max_ms",
            "… TCP connect max",
            ms(self.connect.max()),
            "ms",
        );
        if tls {
            r.metric(
                "login_tls_p50_ms",
                "… STARTTLS + handshake p50",
                ms(self.tls.quantile(0.5)),
                "ms",
            );
        }
        r.metric(
            "login_auth_p50_ms",
            "… stream + SASL p50",
            ms(self.auth.quantile(0.5)),
            "ms",
        );
        r.metric(
            "login_bind_p50_ms",
            "… restart + bind + presence p50",
            ms(self.bind.quantile(0.5)),
            "ms",
        );
        r.metric(
            "listen_overflows",
            "TCP accept-queue overflows (system-wide)",
            self.listen_overflows,
            "",
        );
        if let Some(n) = self.listen_overflows.filter(|n| *n > 0) {
            r.note(format!(
                "{n} TCP accept-queue overflow(s) during the logins: the server's listen backlog (or its accept loop) \
                 could not keep up, and those connects waited for a SYN retransmission (1 s or more)"
            ));
        }
        if !self.errors.is_empty() {
            let mut errs = Json::obj();
            for (e, n) in &self.errors {
                errs = errs.with(e, *n);
                r.problem(format!("{n} login(s) failed: {e}"));
            }
            r.extra("login_errors", errs);
        }
    }
}

/// Failure message as a grouping key (bounded length).
fn error_key(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s
    }
}

/// Log in accounts `indices` with at most `opts.concurrency` logins in flight. Sessions are
/// returned sorted by index; failures are counted and grouped by message.
pub async fn login_many(
    opts: &RunOpts,
    indices: std::ops::Range<usize>,
    label: &str,
) -> Result<LoginPhase> {
    let n = indices.len();
    let sem = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut set = JoinSet::new();
    let started = Instant::now();
    let mut phase = LoginPhase {
        sessions: Vec::with_capacity(n),
        ok: 0,
        failed: 0,
        errors: BTreeMap::new(),
        wall: Duration::ZERO,
        total: Histogram::new(),
        connect: Histogram::new(),
        tls: Histogram::new(),
        auth: Histogram::new(),
        bind: Histogram::new(),
        listen_overflows: None,
    };
    let overflows_before = procstat::tcp_ext("ListenOverflows");
    let progress = Progress::new(label, n);
    let collect =
        |phase: &mut LoginPhase, r: Result<Result<Session>, tokio::task::JoinError>| match r {
            Ok(Ok(s)) => {
                let t = s.timings;
                phase.total.record(t.total.as_nanos() as u64);
                phase.connect.record(t.connect.as_nanos() as u64);
                phase.tls.record(t.tls.as_nanos() as u64);
                phase.auth.record(t.auth.as_nanos() as u64);
                phase.bind.record(t.bind.as_nanos() as u64);
                phase.sessions.push(s);
            }
            Ok(Err(e)) => {
                phase.failed += 1;
                *phase.errors.entry(error_key(&e)).or_default() += 1;
            }
            Err(e) => {
                phase.failed += 1;
                *phase.errors.entry(format!("task failed: {e}")).or_default() += 1;
            }
        };
    for i in indices {
        let permit = sem.clone().acquire_owned().await?;
        let cfg = opts.client.clone();
        let timeout = opts.login_timeout;
        set.spawn(async move {
            let r = client::login(&cfg, i, timeout).await;
            drop(permit);
            r
        });
        // Collect what has finished so far (keeps the JoinSet small).
        while let Some(r) = set.try_join_next() {
            collect(&mut phase, r);
        }
        progress.tick(phase.sessions.len(), phase.failed);
    }
    while let Some(r) = set.join_next().await {
        collect(&mut phase, r);
        progress.tick(phase.sessions.len(), phase.failed);
    }
    phase.wall = started.elapsed();
    phase.listen_overflows = match (overflows_before, procstat::tcp_ext("ListenOverflows")) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    progress.done(phase.sessions.len(), phase.failed, phase.wall);
    phase.sessions.sort_by_key(|s| s.index);
    phase.ok = phase.sessions.len();
    Ok(phase)
}

/// Progress lines on stderr, at most one per second.
pub struct Progress {
    label: String,
    total: usize,
    start: Instant,
    last: std::cell::Cell<Instant>,
    tty: bool,
}

impl Progress {
    pub fn new(label: &str, total: usize) -> Progress {
        let now = Instant::now();
        Progress {
            label: label.to_string(),
            total,
            start: now,
            last: std::cell::Cell::new(now),
            tty: std::io::stderr().is_terminal(),
        }
    }

    pub fn tick(&self, ok: usize, failed: usize) {
        if self.last.get().elapsed() >= Duration::from_secs(1) {
            self.last.set(Instant::now());
            let end = if self.tty { "\r" } else { "\n" };
            eprint!(
                "[{}] {}/{} ok, {} failed, {:.1}s{end}",
                self.label,
                ok,
                self.total,
                failed,
                self.start.elapsed().as_secs_f64()
            );
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn done(&self, ok: usize, failed: usize, wall: Duration) {
        eprintln!(
            "[{}] {}/{} ok, {} failed, {:.2}s          ",
            self.label,
            ok,
            self.total,
            failed,
            wall.as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_parsing() {
        let raw =
            b"<message from='a@b/c' to='d@e/f' type='chat'><body>3 17 123456 xxxx</body></message>";
        assert_eq!(parse_body(raw), Some((3, 17, 123456)));
        let raw = b"<message><body xmlns='jabber:client'>1 2 3</body></message>";
        assert_eq!(parse_body(raw), Some((1, 2, 3)));
        assert_eq!(parse_body(b"<message><body>x</body></message>"), None);
        assert_eq!(parse_body(b"<message><body>1 2</body></message>"), None);
        assert_eq!(parse_body(b"<message><body>1 2 3"), None);
        assert_eq!(
            parse_body(b"<message><subject>1 2 3</subject></message>"),
            None
        );
        assert_eq!(parse_body(b"<message><body>-1 2 3</body></message>"), None);
    }

    #[test]
    fn seen_bits() {
        let mut s = Seen::default();
        assert!(s.insert(0));
        assert!(s.insert(1000));
        assert!(!s.insert(1000));
        assert!(s.insert(63));
        assert!(s.insert(64));
        assert_eq!(s.count(), 4);
    }

    #[test]
    fn marks_window() {
        let m = Marks {
            start: 100,
            measure: 200,
            end: 1_000_000_200,
        };
        assert!(!m.in_window(199));
        assert!(m.in_window(200));
        assert!(!m.in_window(1_000_000_200));
        assert!((m.measured_secs() - 1.0).abs() < 1e-12);
    }
}
