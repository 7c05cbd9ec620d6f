//! `[component]`: XEP-0114 external components (the listener is `listen.component`).

use serde::Deserialize;
use std::collections::BTreeMap;

use crate::config::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComponentConfig {
    /// Component domain → shared secret, e.g. `{ "gw.example.org" = "s3cret" }`. Each
    /// domain becomes a hosted service of this server; the listener runs only when this is
    /// not empty.
    pub secrets: BTreeMap<String, Secret>,
    /// Stanzas waiting to be written to one connected component; beyond, new stanzas for it
    /// bounce with resource-constraint (a component that stops reading cannot grow memory).
    pub max_queue: usize,
    /// Seconds a new connection has to send its stream header and a valid handshake.
    pub handshake_timeout_secs: u64,
}

impl Default for ComponentConfig {
    fn default() -> Self {
        ComponentConfig {
            secrets: BTreeMap::new(),
            max_queue: 10000,
            handshake_timeout_secs: 30,
        }
    }
}

impl ComponentConfig {
    /// `domains`: the served domains (a component cannot take one over).
    pub fn validate(&self, domains: &[String]) -> Result<(), String> {
        if self.max_queue == 0 || self.handshake_timeout_secs == 0 {
            return Err("component: max_queue and handshake_timeout_secs must be positive".into());
        }
        for (domain, secret) in &self.secrets {
            let valid = jid::BareJid::new(domain)
                .map(|j| j.node().is_none() && j.as_str() == domain.as_str())
                .unwrap_or(false);
            if !valid {
                return Err(format!(
                    "component.secrets: {domain:?} is not a valid, normalized domain"
                ));
            }
            if domains.iter().any(|d| d == domain) {
                return Err(format!(
                    "component.secrets: {domain} is a domain this server serves"
                ));
            }
            if secret.is_empty() {
                return Err(format!("component.secrets: {domain} has an empty secret"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ComponentConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn secrets_are_hidden_and_checked() {
        let served = vec!["example.org".to_string()];
        let c = parse("secrets = { \"gw.example.org\" = \"s3cret\" }");
        assert_eq!(c.secrets["gw.example.org"].expose(), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(c.validate(&served).is_ok());
        for bad in [
            "secrets = { \"example.org\" = \"x\" }",
            "secrets = { \"gw.example.org\" = \"\" }",
            "secrets = { \"user@gw.example.org\" = \"x\" }",
            "secrets = { \"GW.example.org\" = \"x\" }",
            "max_queue = 0",
            "handshake_timeout_secs = 0",
        ] {
            assert!(parse(bad).validate(&served).is_err(), "{bad}");
        }
        assert!(toml::from_str::<ComponentConfig>("secret = {}").is_err());
    }
}
