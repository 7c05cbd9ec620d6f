//! Server assembly: shared state, listeners and shutdown. `start` binds everything and
//! returns a handle with the bound addresses, so tests run the real server on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::modules::Modules;
use crate::router::{Kick, Router};
use crate::storage::Storage;
use crate::tls::TlsContext;

/// Everything a connection or handler needs, shared behind one `Arc`.
pub struct ServerState {
    pub config: Config,
    pub domains: Vec<String>,
    pub storage: Storage,
    pub router: Router,
    pub tls: TlsContext,
    pub modules: Modules,
    pub started: Instant,
    pub limits: crate::xml::Limits,
    pub shutdown: watch::Receiver<bool>,
    pub connections: Arc<Semaphore>,
    /// Password hashing (PBKDF2 for PLAIN logins and registrations) runs on the blocking
    /// pool, at most one job per core: more threads cannot hash faster, and a login burst
    /// would otherwise start hundreds of threads whose stacks and malloc arenas stay
    /// resident long after the burst.
    pub hashing: Semaphore,
    /// Serializes subscription state changes per roster owner.
    pub roster_locks: crate::roster::RosterLocks,
    /// Contact lists of online users (presence broadcast without a database query).
    pub contacts: crate::roster::ContactCache,
    /// XEP-0357 push: coalescing windows and publishes awaiting a reply.
    pub push: crate::push::PushState,
    /// XEP-0191 blocklists of online users (stanza routing without a database query).
    pub blocklists: crate::blocking::BlockCache,
    /// XEP-0398 vCard photo hashes of online users (presence stamping without a query).
    pub avatars: crate::avatar::PhotoCache,
    /// XEP-0313 archive writer and preferences.
    pub archive: crate::mam::ArchiveState,
    /// PEP (XEP-0163): the shared XEP-0115 caps cache and per-account write locks.
    pub pep: crate::pep::PepState,
    /// IQs the server sent to clients and awaits answers for.
    pub iq_out: crate::iq_out::PendingIqs,
    /// XEP-0198 resumable sessions by SM-ID.
    pub sm: crate::c2s::sm::Registry,
    /// XEP-0484 FAST: the key sealing tokens at rest (loaded on first use).
    pub fast_keys: crate::c2s::fast::TokenKeys,
    /// Services on their own domains (group chat, upload), by domain.
    pub services: crate::services::Services,
    /// The base URL of the HTTP module as clients see it (`http.public_url`, or derived
    /// from the listeners), without a trailing slash.
    pub http_base: String,
    /// Delivery to other domains (server-to-server), when federation is enabled.
    pub federation: crate::federation::Federation,
}

impl ServerState {
    pub fn serves(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d == domain)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot create data dir {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error("s2s: {0}")]
    S2s(#[from] crate::s2s::S2sStartError),
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
}

/// A running server.
pub struct RunningServer {
    pub state: Arc<ServerState>,
    pub c2s_addr: Option<SocketAddr>,
    pub c2s_direct_tls_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub https_addr: Option<SocketAddr>,
    /// Bound s2s listeners (STARTTLS, direct TLS), when federation is enabled.
    pub s2s_addrs: crate::s2s::S2sAddrs,
    /// Bound XEP-0114 component listener, when components are configured.
    pub component_addr: Option<SocketAddr>,
    shutdown_tx: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

pub async fn start(config: Config) -> Result<RunningServer, StartError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| StartError::DataDir(config.data_dir.display().to_string(), e))?;
    let domains = config.domains();
    let storage = Storage::connect(&config.database_url()).await?;
    let tls = TlsContext::load(
        &config.tls.cert,
        &config.tls.key,
        &config.data_dir,
        &domains,
    )?;
    if !config.c2s.require_tls {
        tracing::warn!(
            "!!! c2s.require_tls is OFF: clients may authenticate in PLAINTEXT. \
             Use this only on loopback for debugging or benchmarking !!!"
        );
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Before the listeners: once a port accepts, the server is ready (and has logged so).
    let archive =
        crate::mam::ArchiveState::start(&storage, &config.mam, shutdown_rx.clone()).await?;
    let backlog = config.limits.listen_backlog;
    let c2s = bind(&config.listen.c2s, backlog).await?;
    let c2s_tls = bind(&config.listen.c2s_direct_tls, backlog).await?;
    let http = bind(&config.listen.http, backlog).await?;
    let https = bind(&config.listen.https, backlog).await?;
    let (s2s, s2s_tls) = if config.s2s.enabled {
        (
            bind(&config.listen.s2s, backlog).await?,
            bind(&config.listen.s2s_direct_tls, backlog).await?,
        )
    } else {
        (None, None)
    };
    // Only with components configured: nothing could authenticate on it otherwise.
    let component = if config.component.secrets.is_empty() {
        None
    } else {
        bind(&config.listen.component, backlog).await?
    };
    let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    let https_addr = https.as_ref().and_then(|l| l.local_addr().ok());
    let http_base = crate::http::public_url(&config, https_addr, http_addr);
    let mut services = crate::services::Services::standard(&config, &domains);
    let components = crate::component::Components::new(&config.component, &mut services);
    let state = Arc::new(ServerState {
        limits: config.xml_limits(),
        connections: Arc::new(Semaphore::new(config.limits.max_connections)),
        hashing: Semaphore::new(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        ),
        roster_locks: Default::default(),
        contacts: Default::default(),
        push: Default::default(),
        blocklists: Default::default(),
        avatars: Default::default(),
        archive,
        pep: Default::default(),
        iq_out: Default::default(),
        sm: Default::default(),
        fast_keys: crate::c2s::fast::TokenKeys::new(&config.data_dir),
        domains,
        storage,
        router: Router::new(),
        tls,
        modules: Modules::standard(),
        services,
        http_base,
        federation: Default::default(),
        started: Instant::now(),
        shutdown: shutdown_rx,
        config,
    });
    for svc in state.services.all() {
        svc.started(&state);
    }
    let mut tasks = JoinSet::new();
    let c2s_addr = spawn_listener(&mut tasks, &state, c2s, false, "c2s");
    let c2s_direct_tls_addr = spawn_listener(&mut tasks, &state, c2s_tls, true, "c2s_direct_tls");
    let app = crate::http::router(&state);
    let http_addr = spawn_http(&mut tasks, &state, http, false, &app);
    let https_addr = spawn_http(&mut tasks, &state, https, true, &app);
    let s2s_addrs = crate::s2s::start(&state, s2s, s2s_tls, &mut tasks)?;
    let component_addr = crate::component::start(&state, components, component, &mut tasks);
    tracing::info!(domains = ?state.domains, backend = state.storage.backend_name(), "Starling started");
    Ok(RunningServer {
        state,
        c2s_addr,
        c2s_direct_tls_addr,
        http_addr,
        https_addr,
        s2s_addrs,
        component_addr,
        shutdown_tx,
        tasks,
    })
}

/// Accept connections until shutdown, one task each, every connection holding a permit of
/// `limits.max_connections` for its whole life (XMPP and HTTP alike, so neither can starve
/// the other of file descriptors unnoticed). `what` names the listener in logs.
pub async fn accept_loop<F, Fut>(
    state: Arc<ServerState>,
    listener: TcpListener,
    what: &'static str,
    handle: F,
) where
    F: Fn(Arc<ServerState>, tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, what, "connection limit reached; refusing");
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let conn = handle(state.clone(), tcp, peer);
                    tokio::spawn(async move {
                        conn.await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, what, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Bind with an explicit accept backlog: the OS default (128) drops connections when a few
/// hundred clients reconnect at once (after a restart or a network blip).
async fn bind(addr: &str, backlog: u32) -> Result<Option<TcpListener>, StartError> {
    if addr.is_empty() {
        return Ok(None);
    }
    let err = |e| StartError::Bind(addr.to_string(), e);
    let sa: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| err(std::io::Error::other("not an address:port")))?;
    let socket = if sa.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(sa).map_err(err)?;
    socket.listen(backlog).map(Some).map_err(err)
}

fn spawn_listener(
    tasks: &mut JoinSet<()>,
    state: &Arc<ServerState>,
    listener: Option<TcpListener>,
    direct_tls: bool,
    what: &'static str,
) -> Option<SocketAddr> {
    let listener = listener?;
    let addr = listener.local_addr().ok();
    if let Some(a) = addr {
        tracing::info!("listening for {what} on {a}");
    }
    tasks.spawn(crate::c2s::accept_loop(state.clone(), listener, direct_tls));
    addr
}

fn spawn_http(
    tasks: &mut JoinSet<()>,
    state: &Arc<ServerState>,
    listener: Option<TcpListener>,
    tls: bool,
    app: &axum::Router,
) -> Option<SocketAddr> {
    let listener = listener?;
    let addr = listener.local_addr().ok();
    if let Some(a) = addr {
        let what = if tls { "https" } else { "http" };
        tracing::info!("listening for {what} on {a}");
    }
    tasks.spawn(crate::http::accept_loop(
        state.clone(),
        listener,
        tls,
        app.clone(),
    ));
    addr
}

impl RunningServer {
    /// Stop accepting, send `<system-shutdown/>` to every session and wait (bounded) for
    /// their tasks to finish writing it.
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down");
        // Services queue their goodbyes (MUC status 332) before sessions are told to close;
        // a kicked session writes what is queued before its stream error.
        for svc in self.state.services.all() {
            svc.stopping(&self.state);
        }
        let _ = self.shutdown_tx.send(true);
        self.state.router.kick_all(Kick::Shutdown);
        let max = self.state.config.limits.max_connections as u32;
        // Every connection holds a permit; all permits back means all connections closed.
        let all_closed = self.state.connections.acquire_many(max);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), all_closed).await;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        // Archive rows still queued are written before the pool closes.
        self.state.archive.writer.flush().await;
        self.state.storage.close().await;
    }
}
