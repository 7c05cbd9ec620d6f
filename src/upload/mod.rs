//! XEP-0363 HTTP File Upload: a service at `upload.<domain>` grants slots (a PUT URL and a
//! GET URL) over XMPP, and the HTTP module stores and serves the files.
//!
//! - [`service`]: the XMPP side: disco#info (with the XEP-0128 `max-file-size` form) and
//!   slot requests checked against the size limit, the user's quota and the type policy.
//! - [`http`]: `PUT`/`GET`/`HEAD`/`OPTIONS` under `/upload/`, with CORS for web clients.
//! - [`key`]: the HMAC signatures that make URLs unforgeable and PUTs owner-only.
//! - [`policy`]: media types, file names, what a browser may render inline.
//! - [`expiry`]: the background task deleting expired files and slots and orphaned files.
//!
//! Files live flat in the upload directory, named by their random slot id (never by the
//! client's file name, which only appears in the URL): `<id>.part` while a PUT streams in,
//! renamed to `<id>` once complete, so a file that exists under its final name is whole.
//! Slot and file metadata are rows of `upload_files` (see `crate::storage::Uploads`).

pub mod config;
pub mod expiry;
pub mod http;
pub mod key;
pub mod policy;
pub mod service;

pub use config::UploadConfig;

use std::path::PathBuf;
use std::sync::Arc;

use key::UploadKey;

/// XEP-0363's namespace.
pub const NS: &str = "urn:xmpp:http:upload:0";

/// What both sides (the XMPP service and the HTTP routes) need. Each builds its own from the
/// configuration; they agree because the key is one file.
#[derive(Debug)]
pub struct Upload {
    pub cfg: UploadConfig,
    pub domain: String,
    pub dir: PathBuf,
    pub key: UploadKey,
}

impl Upload {
    /// None when the service is off, there is no HTTP listener to upload to, or the key or
    /// the directory cannot be set up (logged).
    pub fn from_config(config: &crate::config::Config) -> Option<Arc<Upload>> {
        let cfg = &config.upload;
        let domain = cfg.service_domain(&config.domains())?;
        if config.listen.http.is_empty() && config.listen.https.is_empty() {
            tracing::warn!("upload: no HTTP listener (listen.http, listen.https); service off");
            return None;
        }
        let dir = cfg.dir(&config.data_dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::error!(dir = %dir.display(), error = %e, "upload: cannot create the upload directory; service off");
            return None;
        }
        let key = match UploadKey::load(&config.data_dir) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "upload: signing key unavailable; service off");
                return None;
            }
        };
        Some(Arc::new(Upload {
            cfg: cfg.clone(),
            domain,
            dir,
            key,
        }))
    }

    /// Where a stored file lives.
    pub fn file_path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Where a file is written while its PUT streams in.
    pub fn part_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.part"))
    }

    /// Seconds a stored file is kept (None: forever).
    pub fn retention_secs(&self) -> Option<i64> {
        (self.cfg.expire_days > 0.0).then(|| (self.cfg.expire_days * 86_400.0).max(1.0) as i64)
    }

    /// The GET URL of a slot.
    pub fn get_url(&self, base: &str, segment: &str, filename: &str) -> String {
        format!(
            "{base}/upload/{segment}/{}",
            policy::encode_segment(filename)
        )
    }
}

/// The upload service, if configured (for `Services::standard`).
pub fn service(config: &crate::config::Config) -> Option<Arc<dyn crate::services::Service>> {
    Upload::from_config(config).map(|u| Arc::new(service::UploadService::new(u)) as _)
}

/// The HTTP routes (empty when the service is off).
pub fn routes(state: Arc<crate::server::ServerState>) -> axum::Router {
    let listen = &state.config.listen;
    if listen.http.is_empty() && listen.https.is_empty() {
        // Nothing serves these routes; `service` has already said why upload is off.
        return axum::Router::new();
    }
    match Upload::from_config(&state.config) {
        Some(up) => http::routes(state, up),
        None => axum::Router::new(),
    }
}
