//! The `[upload]` configuration section (XEP-0363 HTTP File Upload). Kept beside the module
//! it configures; `crate::config::Config` holds it as `upload`.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Run the upload service (it also needs `listen.http` or `listen.https`).
    pub enabled: bool,
    /// The service's JID. Empty: `upload.<first domain>`.
    pub domain: String,
    /// Directory for uploaded files. Empty: `<data_dir>/upload`.
    pub path: String,
    /// Largest file accepted, bytes (advertised in disco as `max-file-size`). 100 MiB: a
    /// few minutes of phone video fits (ejabberd's default too); larger files belong on
    /// storage built for them, and one user cannot fill a disk with a handful of requests.
    pub max_file_size: u64,
    /// Per-user quota, bytes: stored files plus slots granted and not yet expired. 0: none.
    pub quota_bytes: u64,
    /// Most slots one user may hold granted and not yet uploaded.
    pub max_open_slots: u32,
    /// Content types accepted in slot requests, e.g. ["image/*", "video/mp4"]. Empty: any
    /// (downloads are served safely whatever the type).
    pub allowed_types: Vec<String>,
    /// How long a PUT URL stays valid, seconds (XEP-0363 §4 recommends about 300).
    pub slot_ttl_secs: u64,
    /// Files are deleted this many days after upload (fractions allowed); 0 keeps them.
    pub expire_days: f64,
    /// How often the expiry task runs (expired files and slots, orphaned files).
    pub expiry_interval_secs: u64,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            enabled: true,
            domain: String::new(),
            path: String::new(),
            max_file_size: 100 * 1024 * 1024,
            quota_bytes: 1024 * 1024 * 1024,
            max_open_slots: 10,
            allowed_types: Vec::new(),
            slot_ttl_secs: 300,
            expire_days: 30.0,
            expiry_interval_secs: 3600,
        }
    }
}

impl UploadConfig {
    /// Checks `crate::config::Config::validate` runs (`domains`: the served domains).
    pub fn validate(&self, domains: &[String]) -> Result<(), String> {
        let own = self.domain.trim().to_ascii_lowercase();
        if domains.contains(&own) {
            return Err(format!(
                "upload.domain: {own:?} is a served domain; the service needs its own (e.g. upload.{own})"
            ));
        }
        if !own.is_empty() && jid::BareJid::new(&own).map_or(true, |j| j.node().is_some()) {
            return Err(format!("upload.domain: {own:?} is not a valid domain"));
        }
        if self.slot_ttl_secs == 0 || self.expiry_interval_secs == 0 {
            return Err("upload: slot_ttl_secs and expiry_interval_secs must be positive".into());
        }
        if !self.expire_days.is_finite() || self.expire_days < 0.0 {
            return Err("upload.expire_days: a non-negative number".into());
        }
        if i64::try_from(self.max_file_size).is_err() || i64::try_from(self.quota_bytes).is_err() {
            return Err("upload: max_file_size and quota_bytes must fit in 63 bits".into());
        }
        for t in &self.allowed_types {
            if !super::policy::valid_pattern(t) {
                return Err(format!(
                    "upload.allowed_types: {t:?} is not a media type pattern"
                ));
            }
        }
        Ok(())
    }

    /// The service's domain for the given served domains (None: disabled or no domain).
    pub fn service_domain(&self, domains: &[String]) -> Option<String> {
        if !self.enabled {
            return None;
        }
        if !self.domain.is_empty() {
            return Some(self.domain.trim().to_ascii_lowercase());
        }
        domains.first().map(|d| format!("upload.{d}"))
    }

    /// The upload directory.
    pub fn dir(&self, data_dir: &std::path::Path) -> std::path::PathBuf {
        if self.path.is_empty() {
            data_dir.join("upload")
        } else {
            std::path::PathBuf::from(&self.path)
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::from_parts(text, Vec::new())
    }

    #[test]
    fn upload_section() {
        let c = load("domain = \"example.org\"\n").unwrap();
        assert_eq!(
            c.upload.service_domain(&c.domains()).as_deref(),
            Some("upload.example.org")
        );
        let c = load("[upload]\nenabled = false\n").unwrap();
        assert_eq!(c.upload.service_domain(&c.domains()), None);
        let c = load("[upload]\nexpire_days = 0.5\ndomain = \"Files.Example\"\n").unwrap();
        assert_eq!(c.upload.expire_days, 0.5);
        assert_eq!(
            c.upload.service_domain(&c.domains()).as_deref(),
            Some("files.example")
        );
        for bad in [
            "[upload]\ndomain = \"localhost\"\n",
            "[upload]\ndomain = \"a@b\"\n",
            "[upload]\nexpire_days = -1\n",
            "[upload]\nslot_ttl_secs = 0\n",
            "[upload]\nallowed_types = [\"image\"]\n",
            "[upload]\nmax_file_size = 18446744073709551615\n",
        ] {
            assert!(load(bad).is_err(), "{bad}");
        }
    }
}
