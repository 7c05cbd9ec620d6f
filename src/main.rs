//! The `starling` binary: `serve` and the account commands. Its command line and the
//! `STARLING__SECTION__KEY` overrides are a contract scripts rely on.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use starling::config::Config;
use starling::modules::register::normalize_username;
use starling::storage::{Storage, StorageError};

#[derive(Parser)]
#[command(name = "starling", version, about = "Starling XMPP server")]
struct Cli {
    /// Configuration file (TOML). Without one, built-in defaults plus STARLING__* variables.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve,
    /// Create an account (prompts for the password when omitted).
    Adduser {
        /// user@domain
        jid: Option<String>,
        password: Option<String>,
        /// Create many accounts: one "jid password" per line; "-" reads stdin.
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// Change an account's password (prompts, or reads one line from a non-terminal stdin).
    Passwd {
        jid: String,
        password: Option<String>,
    },
    /// Delete an account and everything it owns.
    Deluser { jid: String },
    /// Revoke every XEP-0484 FAST login token of an account (its clients must log in with
    /// the password again). Changing the password does this too.
    RevokeTokens { jid: String },
    /// List accounts, optionally of one domain.
    Users { domain: Option<String> },
    /// Validate the configuration and print the effective settings.
    CheckConfig,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    init_logging(&config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve => serve(config).await,
            Command::Adduser {
                jid,
                password,
                from_file,
            } => match (from_file, jid) {
                (Some(file), None) => adduser_bulk(&config, file).await,
                (None, Some(jid)) => adduser(&config, &jid, password).await,
                _ => bail!("give either JID [PASSWORD] or --from-file FILE"),
            },
            Command::Passwd { jid, password } => passwd(&config, &jid, password).await,
            Command::Deluser { jid } => deluser(&config, &jid).await,
            Command::RevokeTokens { jid } => revoke_tokens(&config, &jid).await,
            Command::Users { domain } => users(&config, domain).await,
            Command::CheckConfig => check_config(&config).await,
        }
    })
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn serve(config: Config) -> Result<()> {
    // Handlers first: a SIGTERM that arrives while the listeners are being bound (a
    // supervisor stopping a server it just started) must still shut down cleanly rather
    // than kill the process with the default action.
    let signals = Signals::install();
    let server = starling::server::start(config).await?;
    signals.wait().await;
    server.shutdown().await;
    Ok(())
}

/// SIGTERM and SIGINT, registered before they are awaited.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn wait(self) {
        #[cfg(unix)]
        {
            async fn recv(s: Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            if self.term.is_none() && self.int.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
            tokio::select! {
                _ = recv(self.term) => {}
                _ = recv(self.int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Split and normalize "user@domain", checking the domain is one this server serves.
fn split_jid(config: &Config, jid: &str) -> Result<(String, String)> {
    let (user, domain) = jid
        .trim()
        .rsplit_once('@')
        .with_context(|| format!("{jid:?} is not user@domain"))?;
    let domain = domain.to_ascii_lowercase();
    if !config.domains().contains(&domain) {
        bail!(
            "{domain} is not a domain this server serves ({:?})",
            config.domains()
        );
    }
    let user = normalize_username(user, &domain)
        .with_context(|| format!("{user:?} is not a valid username"))?;
    Ok((domain, user))
}

fn read_password(prompt_for: &str, given: Option<String>) -> Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        let p = line.trim_end_matches(['\r', '\n']).to_string();
        if p.is_empty() {
            bail!("empty password on stdin");
        }
        return Ok(p);
    }
    let p1 = rpassword::prompt_password(format!("Password for {prompt_for}: "))?;
    let p2 = rpassword::prompt_password("Again: ")?;
    if p1 != p2 {
        bail!("passwords do not match");
    }
    if p1.is_empty() {
        bail!("empty password");
    }
    Ok(p1)
}

async fn open(config: &Config) -> Result<Storage> {
    std::fs::create_dir_all(&config.data_dir).ok();
    Ok(Storage::connect(&config.database_url()).await?)
}

async fn adduser(config: &Config, jid: &str, password: Option<String>) -> Result<()> {
    let (domain, user) = split_jid(config, jid)?;
    let password = read_password(jid, password)?;
    let storage = open(config).await?;
    let iterations = config.auth.scram_iterations;
    let creds =
        tokio::task::spawn_blocking(move || starling::sasl::new_credentials(&password, iterations))
            .await?
            .map_err(|e| anyhow::anyhow!("password not allowed: {e}"))?;
    match storage.accounts().create((&domain, &user), &creds).await {
        Ok(()) => {
            println!("created {user}@{domain}");
            Ok(())
        }
        Err(StorageError::Conflict) => bail!("{user}@{domain} already exists"),
        Err(e) => Err(e.into()),
    }
}

/// Provision many accounts: parse, hash on every core (PBKDF2 ×3 per account is the cost),
/// then insert in batches.
async fn adduser_bulk(config: &Config, file: PathBuf) -> Result<()> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
    };
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (jid, password) = line
            .split_once(char::is_whitespace)
            .with_context(|| format!("line {}: expected \"jid password\"", n + 1))?;
        let (domain, user) = split_jid(config, jid).with_context(|| format!("line {}", n + 1))?;
        entries.push((domain, user, password.trim().to_string()));
    }
    let started = std::time::Instant::now();
    let storage = open(config).await?;
    // Skip accounts that exist before paying for their hashes (re-running an import is cheap).
    let known: std::collections::HashSet<(String, String)> =
        storage.accounts().list(None).await?.into_iter().collect();
    let (mut existing, fresh): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .partition(|(d, u, _)| known.contains(&(d.clone(), u.clone())));
    let iterations = config.auth.scram_iterations;
    let hash_started = std::time::Instant::now();
    let hashed = tokio::task::spawn_blocking(move || hash_all(fresh, iterations)).await??;
    let hash_time = hash_started.elapsed();
    // Accounts created meanwhile by someone else are reported by create_many.
    let raced = storage.accounts().create_many(&hashed).await?;
    let created = hashed.len() - raced.len();
    existing.extend(raced.into_iter().map(|(d, u)| (d, u, String::new())));
    for (d, u, _) in &existing {
        eprintln!("skipped {u}@{d}: already exists");
    }
    println!(
        "created {created} accounts ({} already existed) in {:.2}s (hashing {:.2}s)",
        existing.len(),
        started.elapsed().as_secs_f64(),
        hash_time.as_secs_f64()
    );
    Ok(())
}

type Hashed = Vec<(String, String, Vec<starling::sasl::ScramCredential>)>;

fn hash_all(entries: Vec<(String, String, String)>, iterations: u32) -> Result<Hashed> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let chunk = entries.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = entries
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(d, u, p)| {
                            starling::sasl::new_credentials(p, iterations)
                                .map(|c| (d.clone(), u.clone(), c))
                                .map_err(|e| anyhow::anyhow!("{u}@{d}: {e}"))
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("hashing thread panicked"))??,
            );
        }
        Ok(out)
    })
}

async fn passwd(config: &Config, jid: &str, password: Option<String>) -> Result<()> {
    let (domain, user) = split_jid(config, jid)?;
    let storage = open(config).await?;
    if !storage.accounts().exists((&domain, &user)).await? {
        bail!("{user}@{domain} does not exist");
    }
    let password = read_password(jid, password)?;
    let iterations = config.auth.scram_iterations;
    let creds =
        tokio::task::spawn_blocking(move || starling::sasl::new_credentials(&password, iterations))
            .await?
            .map_err(|e| anyhow::anyhow!("password not allowed: {e}"))?;
    storage
        .accounts()
        .set_credentials((&domain, &user), &creds)
        .await?;
    println!("password changed for {user}@{domain}");
    Ok(())
}

async fn deluser(config: &Config, jid: &str) -> Result<()> {
    let (domain, user) = split_jid(config, jid)?;
    let storage = open(config).await?;
    if !storage.accounts().delete((&domain, &user)).await? {
        bail!("{user}@{domain} does not exist");
    }
    println!("deleted {user}@{domain}");
    Ok(())
}

async fn revoke_tokens(config: &Config, jid: &str) -> Result<()> {
    let (domain, user) = split_jid(config, jid)?;
    let storage = open(config).await?;
    if !storage.accounts().exists((&domain, &user)).await? {
        bail!("{user}@{domain} does not exist");
    }
    let n = storage.fast().revoke_all((&domain, &user)).await?;
    println!("revoked {n} FAST token(s) of {user}@{domain}");
    Ok(())
}

async fn users(config: &Config, domain: Option<String>) -> Result<()> {
    let storage = open(config).await?;
    for (d, u) in storage.accounts().list(domain.as_deref()).await? {
        println!("{u}@{d}");
    }
    Ok(())
}

async fn check_config(config: &Config) -> Result<()> {
    println!("domains:      {}", config.domains().join(", "));
    println!("data_dir:     {}", config.data_dir.display());
    println!(
        "database:     {}",
        starling::storage::redact(&config.database_url())
    );
    println!("c2s:          {}", or_off(&config.listen.c2s));
    println!("c2s (TLS):    {}", or_off(&config.listen.c2s_direct_tls));
    println!("http:         {}", or_off(&config.listen.http));
    println!("https:        {}", or_off(&config.listen.https));
    println!("require_tls:  {}", config.c2s.require_tls);
    println!(
        "registration: {}",
        if config.registration.open {
            "open"
        } else {
            "closed"
        }
    );
    println!("configuration OK");
    Ok(())
}

fn or_off(s: &str) -> &str {
    if s.is_empty() {
        "off"
    } else {
        s
    }
}
