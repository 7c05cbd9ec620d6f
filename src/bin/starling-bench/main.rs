//! `starling-bench`: load generator for Starling (and any XMPP server: it speaks only
//! standard RFC 6120/6121 client protocol).
//!
//! Subcommands: `gen-users` (account list for `starling adduser --from-file -`), `idle`
//! (memory per idle session, login rate), `chat` (message throughput, latency, exactly-once
//! delivery), `login` (sustained login/logout rate) and `muc` (one room, many occupants:
//! join time, fan-out throughput, latency, exactly-once delivery to every occupant). Each
//! scenario prints a markdown summary on stdout and, with `--json FILE`, writes the same
//! figures as JSON. See bench/README.md.
//!
//! Exit status: 0 all good; 1 errors (failed logins, dropped sessions, unclean closes, ...);
//! 2 exactly-once delivery violated (messages lost or duplicated).

mod client;
mod frame;
mod hist;
mod procstat;
mod report;
mod scenarios;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use client::{ClientConfig, Mech};
use report::{Json, Report};
use scenarios::RunOpts;

#[derive(Parser)]
#[command(
    name = "starling-bench",
    version,
    about = "Load generator for XMPP servers (Starling, Prosody, ejabberd, ...)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print "jid password" lines for `starling adduser --from-file -`.
    GenUsers(GenUsers),
    /// Open N idle sessions, hold them, close them: memory per session, login rate.
    Idle(IdleCmd),
    /// Pairs of sessions exchanging messages: throughput, latency, exactly-once delivery.
    Chat(ChatCmd),
    /// Log in and out back to back: sustained login rate, latency, server CPU per login.
    Login(LoginCmd),
    /// One MUC room, K occupants, S senders: join time, fan-out throughput, exactly-once.
    Muc(MucCmd),
}

#[derive(Args)]
struct GenUsers {
    /// Number of accounts.
    count: usize,
    #[arg(long, default_value = "bench")]
    prefix: String,
    #[arg(long, default_value = "localhost")]
    domain: String,
    #[arg(long, default_value = "bench-pw")]
    password: String,
    /// First account number.
    #[arg(long, default_value_t = 0)]
    start: usize,
}

/// Connection and measurement options shared by every scenario.
#[derive(Args)]
struct Common {
    /// Server address (host:port) of the client-to-server listener.
    #[arg(long, default_value = "127.0.0.1:5222")]
    server: String,
    /// XMPP domain (stream 'to', JIDs, TLS server name).
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Negotiate STARTTLS (any certificate is accepted); plaintext otherwise.
    #[arg(long)]
    tls: bool,
    /// SASL mechanism.
    #[arg(long, value_enum, default_value = "plain")]
    mech: Mech,
    /// Accounts are PREFIX0 .. PREFIX{N-1} @ domain (provision them first: gen-users).
    #[arg(long, default_value = "bench")]
    users_prefix: String,
    /// Password of every account.
    #[arg(long, default_value = "bench-pw")]
    password: String,
    /// Resource to request at bind (empty: let the server pick).
    #[arg(long, default_value = "bench")]
    resource: String,
    /// Do not send initial presence after binding.
    #[arg(long)]
    no_presence: bool,
    /// Logins in flight at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Give up on one login after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    login_timeout: f64,
    /// Wait this long for the server's </stream:stream> when closing.
    #[arg(long, default_value_t = 10.0)]
    close_timeout: f64,
    /// The server's pid: read its RSS and CPU time from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Comma-separated local addresses to connect from, round robin (more than ~28k
    /// connections to one server address need several, e.g. 127.0.0.2,127.0.0.3).
    #[arg(long, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    /// Generator runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct IdleCmd {
    #[command(flatten)]
    common: Common,
    /// Sessions to open.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Seconds to hold them all open.
    #[arg(long, default_value_t = 5.0)]
    hold_secs: f64,
    /// Sessions to open and close before the baseline RSS is read.
    #[arg(long, default_value_t = 0)]
    warmup_sessions: usize,
    /// Seconds to let the server settle before the baseline and after closing.
    #[arg(long, default_value_t = 1.0)]
    settle_secs: f64,
}

/// How the senders of a delivery scenario (chat, muc) send.
#[derive(Args)]
struct Traffic {
    /// Seconds of sending (including the warm-up).
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Messages in flight per sender (sent, not yet received back) at most.
    #[arg(long, default_value_t = 16)]
    window: u64,
    /// Fixed total rate in messages/s spread over the senders (still capped by --window).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds at the start excluded from the rate and latency figures.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Seconds to wait for stragglers after sending stops.
    #[arg(long, default_value_t = 5.0)]
    drain_secs: f64,
    /// Extra body bytes per message.
    #[arg(long, default_value_t = 0)]
    body_pad: usize,
}

#[derive(Args)]
struct ChatCmd {
    #[command(flatten)]
    common: Common,
    /// Sender/receiver pairs (2 × PAIRS sessions: accounts 2i send to 2i+1).
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    #[command(flatten)]
    traffic: Traffic,
}

#[derive(Args)]
struct LoginCmd {
    #[command(flatten)]
    common: Common,
    /// Accounts PREFIX0 .. PREFIX{N-1}, used round robin.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Seconds of logging in (including the warm-up).
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Seconds at the start excluded from the figures.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Send initial presence after binding (off: connect, auth, bind, close).
    #[arg(long)]
    presence: bool,
}

#[derive(Args)]
struct MucCmd {
    #[command(flatten)]
    common: Common,
    /// Room name (local part of the room JID).
    #[arg(long, default_value = "bench")]
    room: String,
    /// MUC service domain (default: conference.DOMAIN).
    #[arg(long)]
    service: Option<String>,
    /// Occupants (accounts PREFIX0 .. PREFIX{K-1}; nick = account name).
    #[arg(long, default_value_t = 100)]
    occupants: usize,
    /// Occupants 0 .. S-1 send.
    #[arg(long, default_value_t = 1)]
    senders: usize,
    #[command(flatten)]
    traffic: Traffic,
    /// Give up on the room creation, and on the joins, after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    join_timeout: f64,
}

fn secs(v: f64, what: &str) -> Result<Duration> {
    if !(v.is_finite() && v >= 0.0) {
        bail!("{what}: {v} is not a number of seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

/// `presence`: send initial presence after binding.
fn run_opts(c: &Common, presence: bool) -> Result<RunOpts> {
    let addr: SocketAddr = c
        .server
        .to_socket_addrs()
        .with_context(|| format!("--server {}", c.server))?
        .next()
        .with_context(|| format!("--server {}: no address", c.server))?;
    let client = ClientConfig::new(
        addr,
        c.domain.trim().to_ascii_lowercase(),
        c.tls,
        c.mech,
        c.users_prefix.clone(),
        c.password.clone(),
        c.resource.clone(),
        presence,
        c.source_ips.clone(),
    )?;
    Ok(RunOpts {
        client: Arc::new(client),
        concurrency: c.concurrency.max(1),
        login_timeout: secs(c.login_timeout, "--login-timeout")?,
        close_timeout: secs(c.close_timeout, "--close-timeout")?,
        server_pid: c.server_pid,
        clk_tck: procstat::clk_tck(),
    })
}

fn runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    if let Some(n) = threads {
        b.worker_threads(n.max(1));
    }
    Ok(b.build()?)
}

/// Print the markdown, write the JSON, choose the exit status.
fn finish(r: &Report, json: Option<&PathBuf>) -> Result<i32> {
    print!("{}", r.to_markdown());
    if let Some(path) = json {
        std::fs::write(path, r.to_json().to_string_pretty())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("JSON written to {}", path.display());
    }
    Ok(
        if matches!(r.get("exactly_once"), Some(Json::Bool(false))) {
            2
        } else if !r.problems.is_empty() {
            1
        } else {
            0
        },
    )
}

fn prepare(c: &Common, connections: usize) {
    client::start_clock();
    match procstat::raise_nofile() {
        Ok((old, new)) => {
            if (new as usize) < connections + 64 {
                eprintln!(
                    "warning: open-file limit is {new} (was {old}) but {connections} connections are planned: \
                     raise it with `ulimit -n`"
                );
            }
        }
        Err(e) => eprintln!("warning: could not raise the open-file limit: {e}"),
    }
    if let Some(pid) = c.server_pid {
        if procstat::sample(procstat::Target::Pid(pid)).is_err() {
            eprintln!("warning: cannot read /proc/{pid}: server figures will be missing");
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match real_main(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("starling-bench: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn real_main(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::GenUsers(g) => {
            use std::io::Write;
            let out = std::io::stdout();
            let mut out = std::io::BufWriter::new(out.lock());
            if g.password.chars().any(char::is_whitespace) || g.password.is_empty() {
                bail!("--password must be non-empty and without whitespace");
            }
            for i in g.start..g.start + g.count {
                writeln!(out, "{}{}@{} {}", g.prefix, i, g.domain, g.password)?;
            }
            out.flush()?;
            Ok(0)
        }
        Command::Idle(cmd) => {
            prepare(&cmd.common, cmd.sessions);
            let opts = run_opts(&cmd.common, !cmd.common.no_presence)?;
            let io = scenarios::idle::IdleOpts {
                sessions: cmd.sessions,
                hold: secs(cmd.hold_secs, "--hold-secs")?,
                warmup_sessions: cmd.warmup_sessions,
                settle: secs(cmd.settle_secs, "--settle-secs")?,
            };
            let rt = runtime(cmd.common.threads)?;
            let r = rt.block_on(scenarios::idle::run(&opts, &io))?;
            finish(&r, cmd.common.json.as_ref())
        }
        Command::Chat(cmd) => {
            prepare(&cmd.common, cmd.pairs * 2);
            let opts = run_opts(&cmd.common, !cmd.common.no_presence)?;
            if cmd.pairs == 0 {
                bail!("--pairs must be at least 1");
            }
            let co = scenarios::chat::ChatOpts {
                pairs: cmd.pairs,
                secs: cmd.traffic.secs,
                window: cmd.traffic.window,
                rate: cmd.traffic.rate,
                warmup: secs(cmd.traffic.warmup_secs, "--warmup-secs")?,
                drain: secs(cmd.traffic.drain_secs, "--drain-secs")?,
                body_pad: cmd.traffic.body_pad,
            };
            secs(cmd.traffic.secs, "--secs")?;
            let rt = runtime(cmd.common.threads)?;
            let r = rt.block_on(scenarios::chat::run(&opts, &co))?;
            finish(&r, cmd.common.json.as_ref())
        }
        Command::Login(cmd) => {
            prepare(&cmd.common, cmd.common.concurrency);
            let opts = run_opts(&cmd.common, cmd.presence)?;
            secs(cmd.secs, "--secs")?;
            let lo = scenarios::login::LoginOpts {
                users: cmd.users,
                secs: cmd.secs,
                warmup: secs(cmd.warmup_secs, "--warmup-secs")?,
            };
            let rt = runtime(cmd.common.threads)?;
            let r = rt.block_on(scenarios::login::run(&opts, &lo))?;
            finish(&r, cmd.common.json.as_ref())
        }
        Command::Muc(cmd) => {
            prepare(&cmd.common, cmd.occupants);
            let opts = run_opts(&cmd.common, !cmd.common.no_presence)?;
            secs(cmd.traffic.secs, "--secs")?;
            let domain = cmd.common.domain.trim().to_ascii_lowercase();
            let mo = scenarios::muc::MucOpts {
                room: cmd.room.trim().to_string(),
                service: cmd
                    .service
                    .map(|s| s.trim().to_ascii_lowercase())
                    .unwrap_or_else(|| format!("conference.{domain}")),
                occupants: cmd.occupants,
                senders: cmd.senders,
                secs: cmd.traffic.secs,
                window: cmd.traffic.window,
                rate: cmd.traffic.rate,
                warmup: secs(cmd.traffic.warmup_secs, "--warmup-secs")?,
                drain: secs(cmd.traffic.drain_secs, "--drain-secs")?,
                body_pad: cmd.traffic.body_pad,
                join_timeout: secs(cmd.join_timeout, "--join-timeout")?,
            };
            let rt = runtime(cmd.common.threads)?;
            let r = rt.block_on(scenarios::muc::run(&opts, &mo))?;
            finish(&r, cmd.common.json.as_ref())
        }
    }
}
