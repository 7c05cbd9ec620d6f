//! Configuration: one TOML file deserialized into typed sections, with every key
//! overridable by `STARLING__SECTION__KEY` environment variables (the contract scripts use).
//! Unknown keys are rejected with the key named, so a typo never silently falls back to a
//! default. Every limit the network can push against lives here with a safe default.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// One domain or a list of virtual hosts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Domains {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The XMPP domain(s) served (virtual hosts).
    pub domain: Domains,
    /// Directory for the SQLite file, the generated certificate and later uploads.
    pub data_dir: PathBuf,
    pub listen: Listen,
    pub database: Database,
    pub registration: Registration,
    pub tls: Tls,
    pub c2s: C2s,
    pub limits: LimitsConfig,
    pub offline: Offline,
    pub mam: Mam,
    pub pep: Pep,
    pub sm: StreamManagement,
    pub csi: Csi,
    pub auth: Auth,
    pub server_info: ServerInfo,
    pub log: Log,
    pub vcard: VCard,
    pub private_storage: PrivateStorage,
    pub extdisco: ExtDisco,
    pub push: Push,
    pub http: Http,
    /// XEP-0363 HTTP File Upload (`src/upload/config.rs`).
    pub upload: crate::upload::UploadConfig,
    pub websocket: WebSocket,
    pub bosh: Bosh,
    pub muc: crate::muc::MucConfig,
    pub s2s: crate::s2s::S2sConfig,
    /// XEP-0114 external components (`src/component/config.rs`).
    pub component: crate::component::ComponentConfig,
}

/// The HTTP module as a whole (the listeners are `listen.http` / `listen.https`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// The base URL clients reach the HTTP module at, when it differs from the listener
    /// (a reverse proxy on port 443): e.g. "https://chat.example.org". Empty: derived from
    /// `listen.https` (else `listen.http`) and the first domain.
    pub public_url: String,
    /// Treat XMPP streams (WebSocket, BOSH) that arrive on the plain `listen.http` listener
    /// as confidential: set this when a TLS-terminating reverse proxy on the same machine
    /// forwards to it (like Prosody's consider_websocket_secure). Off: such streams are
    /// plaintext, and `c2s.require_tls` refuses to authenticate on them.
    pub trust_plain_http: bool,
}

/// RFC 7395 XMPP over WebSocket (`/xmpp-websocket` on the HTTP listeners).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocket {
    /// Send a WebSocket Ping after this long; each Pong also counts as client activity for
    /// `c2s.idle_timeout_secs` (browsers cannot send whitespace keepalives).
    pub ping_secs: u64,
    /// Close a connection whose Pong has not arrived this long after our Ping.
    pub ping_timeout_secs: u64,
}

impl Default for WebSocket {
    fn default() -> Self {
        WebSocket {
            ping_secs: 30,
            ping_timeout_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// Client-to-server with STARTTLS (RFC 6120). Empty disables.
    pub c2s: String,
    /// Client-to-server with direct TLS (XEP-0368). Empty disables.
    pub c2s_direct_tls: String,
    /// The HTTP module over plain HTTP (upload, WebSocket, BOSH, host-meta). Empty disables.
    pub http: String,
    /// The HTTP module over HTTPS with the server's certificate. Empty disables.
    pub https: String,
    /// Server-to-server with STARTTLS (RFC 6120). Empty disables inbound federation.
    pub s2s: String,
    /// Server-to-server with direct TLS (XEP-0368). Empty disables.
    pub s2s_direct_tls: String,
    /// XEP-0114 external components. Empty disables.
    pub component: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Database {
    /// `sqlite://PATH` or `postgres://user:pass@host/db`. Empty: `sqlite://<data_dir>/starling.db`.
    pub url: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Registration {
    /// XEP-0077 in-band registration of new accounts.
    pub open: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM certificate chain; when both are empty a self-signed one is generated into data_dir.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct C2s {
    /// Refuse to authenticate before TLS. Turning this off is for loopback debugging only.
    pub require_tls: bool,
    /// Close a client connection silent for this long (whitespace keepalives count).
    pub idle_timeout_secs: u64,
    /// Time allowed from TCP accept to a bound resource.
    pub login_timeout_secs: u64,
    /// Send a whitespace keepalive after this long without outbound traffic.
    pub keepalive_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest stanza accepted, in bytes (RFC 6120 §13.12: at least 10 000).
    pub max_stanza_size: usize,
    /// Deepest element nesting inside a stanza.
    pub max_depth: usize,
    /// Most attributes on one element.
    pub max_attributes: usize,
    /// Longest attribute value, in bytes.
    pub max_attribute_len: usize,
    /// Stanzas queued for one session before it is disconnected as too slow.
    pub session_queue: usize,
    /// Most concurrent client connections.
    pub max_connections: usize,
    /// Accept queue length of each listener (the kernel caps it at net.core.somaxconn).
    pub listen_backlog: u32,
    /// Most failed authentication attempts on one stream before it is closed.
    pub max_auth_failures: u32,
    /// Most resources bound for one account at once.
    pub max_resources: usize,
    /// Most items in one roster (RFC 6121 §2.3.3 lets servers cap it: `<not-allowed/>`).
    pub max_roster_items: usize,
    /// Most addresses one session tracks for directed presence (RFC 6121 §4.6); beyond it,
    /// directed presence is still delivered but not revoked automatically at logout.
    pub max_directed_presences: usize,
    /// Most JIDs in one XEP-0191 blocklist (beyond it a block gets `<resource-constraint/>`).
    pub max_blocklist_items: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Offline {
    /// XEP-0160 per-user cap on stored messages; further messages bounce.
    pub max_messages: u32,
    /// Per-user cap on the total size of stored messages, bytes; bounds what one login loads.
    pub max_bytes: u64,
}

/// XEP-0313 message archives (see `src/mam/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mam {
    /// Results per page when a query does not say (RSM `<max/>` absent).
    pub default_page_size: u32,
    /// Most results per page; larger `<max/>` values are lowered to this.
    pub max_page_size: u32,
    /// Archived messages older than this many days are deleted; 0 keeps them forever.
    pub retention_days: u32,
    /// How often the retention task runs.
    pub expiry_interval_secs: u64,
    /// Rows deleted per statement by the retention task (bounds each transaction).
    pub expiry_batch: u32,
    /// Archive writes queued for the background writer; senders wait when it is full.
    pub write_queue: usize,
    /// Most archive rows inserted in one transaction. Large, because under load a
    /// transaction's fixed cost dominates on SQLite (measured: 256 rows per transaction held
    /// a busy server to ~6,600 archived chat messages/s, 4096 to ~21,000); a MAM query's flush
    /// waits for at most one such transaction.
    pub write_batch: usize,
}

/// XEP-0163 personal eventing (each account's pubsub service) and the XEP-0115 caps it uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pep {
    /// Most items one node keeps; `pubsub#max_items` is capped here and 'max' means this.
    pub max_items_per_node: u32,
    /// Largest item payload accepted, in bytes of serialized XML.
    pub max_payload_bytes: usize,
    /// Most nodes one account may have.
    pub max_nodes_per_user: usize,
    /// Most explicit (XEP-0060) subscriptions one node accepts; contacts need none.
    pub max_subscriptions_per_node: usize,
    /// XEP-0115 verification strings whose feature lists are remembered (shared by all users).
    pub caps_cache_size: usize,
    /// Disco#info queries the server may have outstanding to clients at once.
    pub max_pending_queries: usize,
    /// How long the server waits for a client's disco#info answer.
    pub query_timeout_secs: u64,
}

/// XEP-0198 Stream Management.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamManagement {
    /// How long a resumable session whose connection dropped stays bound (presence kept,
    /// stanzas queued) waiting to be resumed; a client may ask for less with 'max'.
    pub resume_timeout_secs: u64,
    /// Most stanzas sent and not yet acknowledged; beyond it the session is closed with
    /// `<resource-constraint/>` (not resumable) and its unacknowledged messages go to
    /// offline storage.
    pub max_unacked: usize,
    /// Request an ack (`<r/>`) once this many stanzas went out since the last request.
    pub request_ack_after: u32,
    /// Also request an ack before going idle when stanzas went out since the last request.
    pub request_ack_when_idle: bool,
}

/// XEP-0352 Client State Indication.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Csi {
    /// Most stanzas held back for an inactive client; a full queue is flushed.
    pub max_held: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// PBKDF2 iterations for new SCRAM credentials (RFC 7677 asks for at least 4096).
    pub scram_iterations: u32,
    /// XEP-0484 FAST: lifetime of a login token, seconds. A token used in its second half is
    /// rotated (a new one comes with the login's success).
    pub fast_token_lifetime_secs: u64,
    /// XEP-0484 FAST: most clients (SASL2 user-agent ids) holding tokens per account; beyond
    /// it, the client whose token expires first loses it.
    pub fast_max_clients: usize,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerInfo {
    /// XEP-0157 contact addresses, e.g. ["mailto:admin@example.org", "xmpp:admin@example.org"].
    pub admin_addresses: Vec<String>,
    pub abuse_addresses: Vec<String>,
    pub support_addresses: Vec<String>,
    pub security_addresses: Vec<String>,
    /// Answer XEP-0092 version queries with the OS name too.
    pub version_show_os: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// tracing filter, e.g. "info" or "starling=debug". RUST_LOG wins when set.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: Domains::One("localhost".into()),
            data_dir: PathBuf::from("./data"),
            listen: Listen::default(),
            database: Database::default(),
            registration: Registration::default(),
            tls: Tls::default(),
            c2s: C2s::default(),
            limits: LimitsConfig::default(),
            offline: Offline::default(),
            mam: Mam::default(),
            pep: Pep::default(),
            sm: StreamManagement::default(),
            csi: Csi::default(),
            auth: Auth::default(),
            server_info: ServerInfo::default(),
            log: Log::default(),
            vcard: VCard::default(),
            private_storage: PrivateStorage::default(),
            extdisco: ExtDisco::default(),
            push: Push::default(),
            http: Http::default(),
            upload: Default::default(),
            websocket: WebSocket::default(),
            bosh: Bosh::default(),
            muc: crate::muc::MucConfig::default(),
            s2s: crate::s2s::S2sConfig::default(),
            component: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VCard {
    /// XEP-0054: largest vCard accepted, bytes (photos included); larger sets are refused.
    pub max_bytes: usize,
}

impl Default for VCard {
    fn default() -> Self {
        VCard {
            max_bytes: 128 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivateStorage {
    /// XEP-0049: largest element stored, bytes.
    pub max_bytes: usize,
    /// XEP-0049: most distinct (namespace, element) entries per account.
    pub max_entries: u32,
}

impl Default for PrivateStorage {
    fn default() -> Self {
        PrivateStorage {
            max_bytes: 64 * 1024,
            max_entries: 100,
        }
    }
}

/// XEP-0215 external services (STUN/TURN) offered to clients. None configured: the feature
/// is not advertised.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExtDisco {
    /// Shared secret for TURN REST API credentials (coturn's `static-auth-secret`).
    pub secret: Secret,
    /// Lifetime of generated credentials, seconds.
    pub ttl_secs: u64,
    pub services: Vec<ExternalService>,
}

impl Default for ExtDisco {
    fn default() -> Self {
        ExtDisco {
            secret: Secret::default(),
            ttl_secs: 86400,
            services: Vec::new(),
        }
    }
}

/// XEP-0124/0206 BOSH at `/http-bind` (`src/http/bosh`): what a client may ask for, capped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bosh {
    /// Longest a request is held waiting for data (the client's 'wait' is lowered to this).
    pub max_wait_secs: u64,
    /// A session with no request pending for this long is dropped, like a lost TCP connection.
    pub max_inactivity_secs: u64,
    /// Most requests held at once (the client's 'hold' is lowered to this); 'requests' is one more.
    pub max_hold: u64,
    /// Longest temporary pause (XEP-0124 §12 'pause') a client may ask for; 0 disables pausing.
    pub max_pause_secs: u64,
    /// Bytes of server output queued for a client that is not polling before the session is
    /// ended as a slow consumer.
    pub max_queue_bytes: usize,
}

impl Default for Bosh {
    fn default() -> Self {
        Bosh {
            max_wait_secs: 120,
            max_inactivity_secs: 60,
            max_hold: 1,
            max_pause_secs: 120,
            max_queue_bytes: 4 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalService {
    /// Registered service type: "stun", "turn", "stuns", "turns", ...
    #[serde(rename = "type")]
    pub kind: String,
    pub host: String,
    pub port: u16,
    /// "udp" or "tcp".
    #[serde(default)]
    pub transport: String,
    /// Human-readable name.
    #[serde(default)]
    pub name: String,
    /// Needs credentials: they are derived from `extdisco.secret` for each request.
    #[serde(default)]
    pub restricted: bool,
}

/// A secret configuration value: never printed by `Debug`, so it cannot reach a log line.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Push {
    /// XEP-0357: include the message body in notifications (privacy: off, like Prosody).
    pub include_body: bool,
    /// Include the sender's JID in notifications (privacy: off, like Prosody).
    pub include_sender: bool,
    /// At most one notification per registration in this many seconds; messages in between
    /// are coalesced into the next one (its message-count says how many).
    pub min_interval_secs: u64,
    /// Most push registrations per account.
    pub max_registrations: u32,
    /// How long a notification's reply is awaited (an error reply disables the registration).
    pub response_timeout_secs: u64,
    /// Most notifications awaiting a reply, server-wide; beyond it replies are not tracked.
    pub max_pending: usize,
}

impl Default for Push {
    fn default() -> Self {
        Push {
            include_body: false,
            include_sender: false,
            min_interval_secs: 2,
            max_registrations: 16,
            response_timeout_secs: 60,
            max_pending: 10_000,
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            c2s: "127.0.0.1:5222".into(),
            c2s_direct_tls: "127.0.0.1:5223".into(),
            http: "127.0.0.1:5280".into(),
            https: "127.0.0.1:5281".into(),
            s2s: "127.0.0.1:5269".into(),
            s2s_direct_tls: "127.0.0.1:5270".into(),
            component: "127.0.0.1:5347".into(),
        }
    }
}

impl Default for C2s {
    fn default() -> Self {
        C2s {
            require_tls: true,
            idle_timeout_secs: 600,
            login_timeout_secs: 60,
            keepalive_secs: 300,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_stanza_size: 256 * 1024,
            max_depth: 32,
            max_attributes: 64,
            max_attribute_len: 8 * 1024,
            session_queue: 1024,
            max_connections: 100_000,
            listen_backlog: 1024,
            max_auth_failures: 3,
            max_resources: 32,
            max_roster_items: 5000,
            max_directed_presences: 1000,
            max_blocklist_items: 1000,
        }
    }
}

impl Default for Offline {
    fn default() -> Self {
        Offline {
            max_messages: 1000,
            max_bytes: 8 * 1024 * 1024,
        }
    }
}

impl Default for Mam {
    fn default() -> Self {
        Mam {
            default_page_size: 50,
            max_page_size: 250,
            retention_days: 365,
            expiry_interval_secs: 3600,
            expiry_batch: 10_000,
            write_queue: 4096,
            write_batch: 4096,
        }
    }
}

impl Default for Pep {
    fn default() -> Self {
        Pep {
            max_items_per_node: 256,
            max_payload_bytes: 128 * 1024,
            max_nodes_per_user: 256,
            max_subscriptions_per_node: 1000,
            caps_cache_size: 10_000,
            max_pending_queries: 1000,
            query_timeout_secs: 30,
        }
    }
}

impl Default for StreamManagement {
    fn default() -> Self {
        StreamManagement {
            resume_timeout_secs: 300,
            max_unacked: 500,
            request_ack_after: 5,
            request_ack_when_idle: true,
        }
    }
}

impl Default for Csi {
    fn default() -> Self {
        Csi { max_held: 256 }
    }
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            scram_iterations: 4096,
            fast_token_lifetime_secs: 14 * 24 * 3600,
            fast_max_clients: 32,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
        }
    }
}

const ENV_PREFIX: &str = "STARLING__";

impl Config {
    /// Load from an optional file, then apply environment overrides, then validate.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_parts(&text, std::env::vars())
    }

    /// Build from TOML text and `(name, value)` environment pairs (testable without touching
    /// the process environment).
    pub fn from_parts(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut root: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Invalid(format!("config file: {e}")))?;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            if path.iter().any(|p| p.is_empty()) {
                return Err(ConfigError::Invalid(format!("malformed variable {name}")));
            }
            set_path(&mut root, &path, env_value(&value))
                .map_err(|e| ConfigError::Invalid(format!("{name}: {e}")))?;
        }
        let config: Config = toml::Value::Table(root)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let domains = self.domains();
        if domains.is_empty() {
            return bad("domain: at least one domain is required".into());
        }
        for d in &domains {
            if jid::BareJid::new(d)
                .map(|j| j.node().is_some())
                .unwrap_or(true)
            {
                return bad(format!("domain: {d:?} is not a valid domain"));
            }
        }
        for (key, value) in [
            ("listen.c2s", &self.listen.c2s),
            ("listen.c2s_direct_tls", &self.listen.c2s_direct_tls),
            ("listen.http", &self.listen.http),
            ("listen.https", &self.listen.https),
            ("listen.s2s", &self.listen.s2s),
            ("listen.s2s_direct_tls", &self.listen.s2s_direct_tls),
            ("listen.component", &self.listen.component),
        ] {
            if !value.is_empty() && value.parse::<SocketAddr>().is_err() {
                return bad(format!("{key}: {value:?} is not an address:port"));
            }
        }
        if self.limits.max_stanza_size < 10_000 {
            return bad("limits.max_stanza_size: RFC 6120 requires at least 10000".into());
        }
        if self.limits.session_queue == 0 || self.limits.max_depth == 0 {
            return bad("limits: session_queue and max_depth must be positive".into());
        }
        if self.mam.max_page_size == 0
            || self.mam.default_page_size == 0
            || self.mam.default_page_size > self.mam.max_page_size
        {
            return bad("mam: 0 < default_page_size <= max_page_size".into());
        }
        if self.mam.write_queue == 0 || self.mam.write_batch == 0 || self.mam.expiry_batch == 0 {
            return bad("mam: write_queue, write_batch and expiry_batch must be positive".into());
        }
        if self.auth.scram_iterations < 4096 {
            return bad("auth.scram_iterations: at least 4096 (RFC 7677)".into());
        }
        if self.auth.fast_token_lifetime_secs == 0 {
            return bad("auth.fast_token_lifetime_secs: must be positive".into());
        }
        if self.tls.cert.is_empty() != self.tls.key.is_empty() {
            return bad("tls: set both cert and key, or neither".into());
        }
        if self.push.response_timeout_secs == 0 {
            return bad("push.response_timeout_secs: must be positive".into());
        }
        if self.bosh.max_wait_secs == 0 || self.bosh.max_inactivity_secs == 0 {
            return bad("bosh: max_wait_secs and max_inactivity_secs must be positive".into());
        }
        for svc in &self.extdisco.services {
            if svc.kind.is_empty() || svc.host.is_empty() {
                return bad("extdisco.services: every service needs a type and a host".into());
            }
            if svc.restricted && self.extdisco.secret.is_empty() {
                return bad(format!(
                    "extdisco.services: {} is restricted but extdisco.secret is empty",
                    svc.host
                ));
            }
        }
        self.s2s.validate().map_err(ConfigError::Invalid)?;
        self.component
            .validate(&domains)
            .map_err(ConfigError::Invalid)?;
        self.upload
            .validate(&domains)
            .map_err(ConfigError::Invalid)?;
        let url = self.database_url();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return bad(format!("database.url: unsupported scheme in {url:?}"));
        }
        Ok(())
    }

    /// Served domains, normalized to lower case.
    pub fn domains(&self) -> Vec<String> {
        let list = match &self.domain {
            Domains::One(d) => d.split(',').map(str::to_string).collect(),
            Domains::Many(v) => v.clone(),
        };
        list.into_iter()
            .map(|d| d.trim().to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect()
    }

    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("starling.db").display())
        } else {
            self.database.url.clone()
        }
    }

    pub fn xml_limits(&self) -> crate::xml::Limits {
        crate::xml::Limits {
            max_stanza_size: self.limits.max_stanza_size,
            max_depth: self.limits.max_depth,
            max_attributes: self.limits.max_attributes,
            max_attribute_len: self.limits.max_attribute_len,
        }
    }
}

/// An environment value is parsed as a TOML value when it is one (`true`, `42`, `["a"]`),
/// and taken as a string otherwise (`127.0.0.1:5222`).
fn env_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Err("empty key".into()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => set_path(t, rest, value),
                _ => Err(format!("{first} is not a section")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_serve_localhost() {
        let c = Config::from_parts("", env(&[])).unwrap();
        assert_eq!(c.domains(), vec!["localhost"]);
        assert_eq!(c.listen.c2s, "127.0.0.1:5222");
        assert!(c.c2s.require_tls);
        assert_eq!(c.database_url(), "sqlite://./data/starling.db");
    }

    #[test]
    fn env_overrides_file() {
        let c = Config::from_parts(
            "domain = \"example.org\"\n[listen]\nc2s = \"127.0.0.1:1\"\n",
            env(&[
                ("STARLING__LISTEN__C2S", "127.0.0.1:15222"),
                ("STARLING__REGISTRATION__OPEN", "true"),
                ("STARLING__C2S__REQUIRE_TLS", "false"),
                ("STARLING__DOMAIN", "a.example,b.example"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.c2s, "127.0.0.1:15222");
        assert!(c.registration.open);
        assert!(!c.c2s.require_tls);
        assert_eq!(c.domains(), vec!["a.example", "b.example"]);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::from_parts("[listen]\nc2ss = \"x\"\n", env(&[])).unwrap_err();
        assert!(e.to_string().contains("c2ss"), "{e}");
        let e = Config::from_parts("", env(&[("STARLING__NOPE__X", "1")])).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    /// The documented example must stay loadable and equal to the built-in defaults.
    #[test]
    fn example_config_is_the_defaults() {
        let c = Config::from_parts(include_str!("../starling.example.toml"), env(&[])).unwrap();
        let d = Config::from_parts("", env(&[])).unwrap();
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
    }

    /// The TURN secret never shows in Debug output (which logs and `check-config` may print),
    /// and a restricted service without a secret is refused.
    #[test]
    fn extdisco_secret_is_hidden() {
        let text = "[extdisco]\nsecret = \"hunter2\"\n[[extdisco.services]]\n\
                    type = \"turn\"\nhost = \"t.example\"\nport = 3478\nrestricted = true\n";
        let c = Config::from_parts(text, env(&[])).unwrap();
        assert_eq!(c.extdisco.secret.expose(), "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        let no_secret = text.replace("secret = \"hunter2\"", "");
        assert!(Config::from_parts(&no_secret, env(&[])).is_err());
    }

    #[test]
    fn rejects_bad_values() {
        assert!(Config::from_parts("[limits]\nmax_stanza_size = 100\n", env(&[])).is_err());
        assert!(Config::from_parts("[listen]\nc2s = \"nowhere\"\n", env(&[])).is_err());
        assert!(Config::from_parts("[tls]\ncert = \"a.pem\"\n", env(&[])).is_err());
        assert!(Config::from_parts("domain = \"user@host\"\n", env(&[])).is_err());
        assert!(Config::from_parts("[push]\nresponse_timeout_secs = 0\n", env(&[])).is_err());
    }
}
