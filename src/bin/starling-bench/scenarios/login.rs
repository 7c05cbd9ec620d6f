//! `login`: sustained login rate. `--concurrency` workers each loop over complete logins —
//! connect, [STARTTLS], SASL, bind, then a clean close (`</stream:stream>`, wait for the
//! server's) — over accounts `PREFIX0 … PREFIX{N-1}` round robin, for `--secs`. Logins that
//! complete inside the measurement window (after `--warmup-secs`) give the rate, the latency
//! and the server's CPU cost per login.
//!
//! Every login binds its own resource (`R-PID-COUNTER`), so concurrent logins of one account
//! never replace each other (resource conflicts would add kicks the other servers may not do).
//!
//! SCRAM: the generator caches each account's derived keys (`ScramKeyCache`, as a real client
//! may, RFC 5802 §5.1), and logs every account in once before the timed run, so the run
//! measures the server's SCRAM cost, not the generator's PBKDF2.

use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{cpu_metrics, error_key, mib, ms, Marks, Probe, Progress, RunOpts};
use crate::client::{self, instant_at, now_ns, ClientConfig, CloseOutcome, Mech};
use crate::hist::Histogram;
use crate::report::{Json, Report};

/// How long a worker waits after a failed login before its next one.
const FAILURE_PAUSE: Duration = Duration::from_millis(10);

pub struct LoginOpts {
    /// Accounts used round robin.
    pub users: usize,
    /// Seconds of logging in, warm-up included.
    pub secs: f64,
    /// Seconds at the start excluded from the figures.
    pub warmup: Duration,
}

/// Latencies of the logins completed inside the measurement window, shared by the workers
/// (one lock per login; per-worker histograms would cost ~58 KiB × 7 × workers).
#[derive(Default)]
struct Latencies {
    /// Connect → bound.
    login: Histogram,
    /// `</stream:stream>` sent → server's close received.
    close: Histogram,
    /// Connect → server's close: one whole cycle.
    cycle: Histogram,
    connect: Histogram,
    tls: Histogram,
    auth: Histogram,
    bind: Histogram,
}

#[derive(Default)]
struct WorkerStats {
    /// Logins started.
    started: u64,
    /// Logged in and closed cleanly.
    completed: u64,
    /// … of which the close came back inside the measurement window.
    in_window: u64,
    failed: u64,
    failed_in_window: u64,
    /// Error (stage: message) -> count.
    errors: BTreeMap<String, u64>,
}

/// The resource of login number `n`: unique within the run and across runs (pid), so no
/// two sessions of one account ever ask for the same one. Empty prefix: server-generated.
fn resource_for(prefix: &str, pid: u32, n: u64) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}-{pid}-{n}")
    }
}

/// The account of login number `n` (round robin over `users`).
fn account_for(n: u64, users: usize) -> usize {
    (n % users.max(1) as u64) as usize
}

/// One login and a clean close. Ok: (session timings, close duration, end time in ns).
async fn one_login(
    cfg: &ClientConfig,
    index: usize,
    resource: &str,
    login_timeout: Duration,
    close_timeout: Duration,
) -> Result<(client::LoginTimings, Duration, u64)> {
    let mut s = client::login_as(cfg, index, resource, login_timeout).await?;
    let t = Instant::now();
    let out = client::close(&mut s.conn, close_timeout).await;
    let close = t.elapsed();
    if out != CloseOutcome::Clean {
        bail!("close: {}", out.name());
    }
    Ok((s.timings, close, now_ns()))
}

struct Worker {
    cfg: Arc<ClientConfig>,
    users: usize,
    counter: Arc<AtomicU64>,
    marks: Marks,
    login_timeout: Duration,
    close_timeout: Duration,
    latencies: Arc<Mutex<Latencies>>,
}

impl Worker {
    /// Log in and out back to back from the start mark until the end mark.
    async fn run(self) -> WorkerStats {
        let mut st = WorkerStats::default();
        let pid = std::process::id();
        tokio::time::sleep_until(instant_at(self.marks.start).into()).await;
        while now_ns() < self.marks.end {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let resource = resource_for(&self.cfg.resource, pid, n);
            let index = account_for(n, self.users);
            st.started += 1;
            let r = one_login(
                &self.cfg,
                index,
                &resource,
                self.login_timeout,
                self.close_timeout,
            )
            .await;
            match r {
                Ok((t, close, end)) => {
                    st.completed += 1;
                    if self.marks.in_window(end) {
                        st.in_window += 1;
                        let mut l = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
                        l.login.record(t.total.as_nanos() as u64);
                        l.close.record(close.as_nanos() as u64);
                        l.cycle.record((t.total + close).as_nanos() as u64);
                        l.connect.record(t.connect.as_nanos() as u64);
                        l.tls.record(t.tls.as_nanos() as u64);
                        l.auth.record(t.auth.as_nanos() as u64);
                        l.bind.record(t.bind.as_nanos() as u64);
                    }
                }
                Err(e) => {
                    st.failed += 1;
                    if self.marks.in_window(now_ns()) {
                        st.failed_in_window += 1;
                    }
                    *st.errors.entry(error_key(&e)).or_default() += 1;
                    // A refused connect fails in microseconds: pause so a down or
                    // refusing server does not turn the workers into busy loops.
                    tokio::time::sleep(FAILURE_PAUSE).await;
                }
            }
        }
        st
    }
}

/// Log every account in (and out) once, so the timed run finds its SCRAM keys cached.
/// Returns (failed, error -> count).
async fn prime(opts: &RunOpts, users: usize) -> (usize, BTreeMap<String, u64>) {
    type Done = Result<Result<(client::LoginTimings, Duration, u64)>, tokio::task::JoinError>;
    fn collect(r: Done, ok: &mut usize, failed: &mut usize, errors: &mut BTreeMap<String, u64>) {
        let key = match r {
            Ok(Ok(_)) => {
                *ok += 1;
                return;
            }
            Ok(Err(e)) => error_key(&e),
            Err(e) => format!("task failed: {e}"),
        };
        *failed += 1;
        *errors.entry(key).or_default() += 1;
    }
    let sem = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut set = JoinSet::new();
    let progress = Progress::new("prime", users);
    let pid = std::process::id();
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut errors = BTreeMap::new();
    for i in 0..users {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break; // the semaphore is never closed
        };
        let cfg = opts.client.clone();
        let (lt, ct) = (opts.login_timeout, opts.close_timeout);
        // A prefix of their own, so primed sessions never share a timed-run resource.
        let resource = if cfg.resource.is_empty() {
            String::new()
        } else {
            resource_for(&format!("{}-prime", cfg.resource), pid, i as u64)
        };
        set.spawn(async move {
            let r = one_login(&cfg, i, &resource, lt, ct).await;
            drop(permit);
            r
        });
        while let Some(r) = set.try_join_next() {
            collect(r, &mut ok, &mut failed, &mut errors);
        }
        progress.tick(ok, failed);
    }
    while let Some(r) = set.join_next().await {
        collect(r, &mut ok, &mut failed, &mut errors);
        progress.tick(ok, failed);
    }
    progress.done(ok, failed, progress.elapsed());
    (failed, errors)
}

pub async fn run(opts: &RunOpts, lo: &LoginOpts) -> Result<Report> {
    let probe = Probe::new(opts.server_pid, opts.clk_tck);
    let cfg = opts.client.clone();
    let tls = cfg.tls.is_some();
    let mut r = Report::new("login");
    r.param("users", lo.users);
    r.param("secs", lo.secs);
    r.param("warmup_secs", lo.warmup.as_secs_f64());
    r.param("concurrency", opts.concurrency);
    r.param("tls", tls);
    r.param("mech", cfg.mech.name());
    r.param("presence", cfg.presence);
    r.param("server", cfg.addr.to_string());

    let warm = lo.warmup.as_secs_f64();
    if lo.secs <= warm {
        bail!(
            "--secs ({}) must be longer than --warmup-secs ({warm})",
            lo.secs
        );
    }
    if lo.users == 0 {
        bail!("--users must be at least 1");
    }

    // SCRAM: every account's first login derives its keys (PBKDF2 on the generator); do
    // them all now so the timed run only pays HMACs.
    let mut prime_s = None;
    if cfg.mech == Mech::ScramSha256 {
        let t = Instant::now();
        let (failed, errors) = prime(opts, lo.users).await;
        prime_s = Some(t.elapsed().as_secs_f64());
        for (e, n) in &errors {
            r.problem(format!("{n} priming login(s) failed: {e}"));
        }
        if failed > 0 {
            r.section("Priming");
            r.metric("prime_failed", "Priming logins failed", failed, "");
            r.problem("not every account could log in: login run not started");
            return Ok(r);
        }
    }

    let before = probe.snap();
    let marks = Marks::from_now(Duration::from_millis(200), lo.warmup, lo.secs);
    let counter = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Latencies::default()));
    let mut workers = JoinSet::new();
    for _ in 0..opts.concurrency.max(1) {
        workers.spawn(
            Worker {
                cfg: cfg.clone(),
                users: lo.users,
                counter: counter.clone(),
                marks,
                login_timeout: opts.login_timeout,
                close_timeout: opts.close_timeout,
                latencies: latencies.clone(),
            }
            .run(),
        );
    }
    eprintln!(
        "[login] {} workers over {} accounts for {:.1}s",
        opts.concurrency, lo.users, lo.secs
    );
    tokio::time::sleep_until(instant_at(marks.measure).into()).await;
    let measure_snap = probe.snap();
    let overflows_before = crate::procstat::tcp_ext("ListenOverflows");
    tokio::time::sleep_until(instant_at(marks.end).into()).await;
    let end_snap = probe.snap();
    let overflows = match (
        overflows_before,
        crate::procstat::tcp_ext("ListenOverflows"),
    ) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    // Logins in flight at the end mark finish (bounded by the timeouts), uncounted.
    let tail = Instant::now();
    let mut total = WorkerStats::default();
    while let Some(res) = workers.join_next().await {
        let st = res.unwrap_or_else(|e| WorkerStats {
            failed: 1,
            errors: BTreeMap::from([(format!("task failed: {e}"), 1)]),
            ..Default::default()
        });
        total.started += st.started;
        total.completed += st.completed;
        total.in_window += st.in_window;
        total.failed += st.failed;
        total.failed_in_window += st.failed_in_window;
        for (k, v) in st.errors {
            *total.errors.entry(k).or_default() += v;
        }
    }
    let tail_s = tail.elapsed().as_secs_f64();
    let after = probe.snap();
    let lat = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));

    // ---- report
    let measured = marks.measured_secs();
    r.section("Logins");
    if let Some(p) = prime_s {
        r.metric(
            "prime_s",
            "Priming: every account logged in once (SCRAM keys derived)",
            p,
            "s",
        );
    }
    r.metric("logins_started", "Logins started", total.started, "");
    r.metric(
        "logins_completed",
        "Logins completed (bound, closed cleanly)",
        total.completed,
        "",
    );
    r.metric(
        "logins_in_window",
        "… completed in the measurement window",
        total.in_window,
        "",
    );
    r.metric(
        "measured_secs",
        "Measurement window (after warm-up)",
        measured,
        "s",
    );
    r.metric(
        "logins_per_s",
        "Login rate (measurement window)",
        total.in_window as f64 / measured,
        "logins/s",
    );
    r.alias("logins_per_sec", "logins_per_s");
    r.metric("logins_failed", "Logins failed", total.failed, "");
    r.alias("failed", "logins_failed");
    r.metric(
        "logins_failed_in_window",
        "… in the measurement window",
        total.failed_in_window,
        "",
    );
    r.metric(
        "tail_s",
        "Time for the logins in flight at the end to finish",
        tail_s,
        "s",
    );
    r.metric(
        "listen_overflows",
        "TCP accept-queue overflows (system-wide, measurement window)",
        overflows,
        "",
    );
    if let Some(n) = overflows.filter(|n| *n > 0) {
        r.note(format!(
            "{n} TCP accept-queue overflow(s): some connects waited for a SYN retransmission (1 s or more)"
        ));
    }

    r.section("Latency (logins completed in the window)");
    r.metric(
        "login_p50_ms",
        "Login p50 (connect → bound)",
        ms(lat.login.quantile(0.5)),
        "ms",
    );
    r.metric(
        "login_p99_ms",
        "Login p99",
        ms(lat.login.quantile(0.99)),
        "ms",
    );
    r.metric("login_max_ms", "Login max", ms(lat.login.max()), "ms");
    r.metric(
        "login_connect_p50_ms",
        "… TCP connect p50",
        ms(lat.connect.quantile(0.5)),
        "ms",
    );
    if tls {
        r.metric(
            "login_tls_p50_ms",
            "… STARTTLS + handshake p50",
            ms(lat.tls.quantile(0.5)),
            "ms",
        );
    }
    r.metric(
        "login_auth_p50_ms",
        "… stream + SASL p50",
        ms(lat.auth.quantile(0.5)),
        "ms",
    );
    r.metric(
        "login_bind_p50_ms",
        "… restart + bind p50",
        ms(lat.bind.quantile(0.5)),
        "ms",
    );
    r.metric(
        "close_p50_ms",
        "Close p50 (</stream:stream> → server's)",
        ms(lat.close.quantile(0.5)),
        "ms",
    );
    r.metric(
        "cycle_p50_ms",
        "Whole cycle p50 (connect → closed)",
        ms(lat.cycle.quantile(0.5)),
        "ms",
    );
    r.metric(
        "cycle_p99_ms",
        "Whole cycle p99",
        ms(lat.cycle.quantile(0.99)),
        "ms",
    );

    r.section("Resources (measurement window)");
    cpu_metrics(
        &mut r,
        &probe,
        &measure_snap,
        &end_snap,
        "login",
        Some((total.in_window, "login")),
    );
    r.alias("server_cpu_us_per_login", "server_cpu_per_login_us");
    r.alias("gen_cpu_percent", "generator_cpu_login_pct");
    if let (Some(b), Some(e), Some(a)) = (before.server, end_snap.server, after.server) {
        r.metric(
            "server_rss_before_mib",
            "Server RSS before",
            mib(b.rss),
            "MiB",
        );
        r.metric(
            "server_rss_end_mib",
            "Server RSS at the end mark",
            mib(e.rss),
            "MiB",
        );
        r.metric(
            "server_rss_after_mib",
            "Server RSS after",
            mib(a.rss),
            "MiB",
        );
    } else if opts.server_pid.is_none() {
        r.note("no --server-pid: server memory and CPU not measured");
    }
    if let Some(g) = end_snap.gen {
        r.metric("generator_rss_mib", "Generator RSS", mib(g.rss), "MiB");
    }
    if cfg.mech == Mech::ScramSha256 {
        r.metric(
            "generator_pbkdf2_runs",
            "Generator PBKDF2 runs (SCRAM key derivations)",
            cfg.scram_keys.derivations(),
            "",
        );
    }

    if !total.errors.is_empty() {
        let mut errs = Json::obj();
        for (e, n) in &total.errors {
            errs = errs.with(e, *n);
            r.problem(format!("{n} login(s) failed: {e}"));
        }
        r.extra("login_errors", errs);
    }
    if total.in_window == 0 {
        r.problem("no login completed in the measurement window");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_are_unique_and_accounts_round_robin() {
        assert_eq!(resource_for("bench", 42, 7), "bench-42-7");
        assert_eq!(resource_for("", 42, 7), "");
        assert_eq!(account_for(0, 3), 0);
        assert_eq!(account_for(4, 3), 1);
        assert_eq!(account_for(5, 0), 0);
        let r: std::collections::HashSet<String> =
            (0..1000).map(|n| resource_for("b", 1, n)).collect();
        assert_eq!(r.len(), 1000);
    }
}
