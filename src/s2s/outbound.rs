//! Outbound s2s streams: one per (local domain, remote domain) pair, opened on demand,
//! authenticated with SASL EXTERNAL (XEP-0178) or dialback (XEP-0220), with a bounded
//! per-domain queue while connecting; queued stanzas bounce when the domain cannot be
//! reached.
//!
//! CONTRACT (owned by the outbound helper; bodies below are placeholders until then).

use bytes::Bytes;
use jid::Jid;
use std::sync::Arc;

use super::{S2s, S2sConfig};
use crate::federation::RemoteError;

pub struct Outbound {}

/// Why a dialback verification could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("authoritative server unreachable: {0}")]
    Unreachable(String),
    #[error("timed out")]
    Timeout,
}

/// A stream another server opened to us, usable to send to it (XEP-0288).
pub struct BidiRoute {
    /// Unique per stream, to [`Outbound::forget`] exactly this one.
    pub id: u64,
    /// Bytes written as they are (complete stanzas, already in jabber:server form).
    pub tx: tokio::sync::mpsc::Sender<Bytes>,
}

impl Outbound {
    pub fn new(_config: &S2sConfig) -> Outbound {
        Outbound {}
    }

    /// [`crate::federation::Remote::send`].
    pub fn send(
        &self,
        _s2s: &Arc<S2s>,
        _from: &Jid,
        _to: &Jid,
        _stanza: Bytes,
    ) -> Result<(), RemoteError> {
        Err(RemoteError::NotFound)
    }

    /// XEP-0220 §2.1.2, as receiving server: ask the authoritative server of `remote`
    /// whether `key` is valid for the stream `stream_id` that `remote` opened to `local`
    /// (a `db:verify` over an outbound stream to `remote`, reused or new).
    pub async fn verify(
        &self,
        _s2s: &Arc<S2s>,
        _local: &str,
        _remote: &str,
        _stream_id: &str,
        _key: &str,
    ) -> Result<bool, VerifyError> {
        Err(VerifyError::Unreachable("not implemented".into()))
    }

    /// XEP-0288: an inbound stream from `remote`, authenticated for (`remote` → `local`),
    /// negotiated bidirectionality: stanzas from `local` to `remote` may go over it.
    pub fn adopt(&self, _local: &str, _remote: &str, _route: BidiRoute) {}

    /// The stream behind `route_id` ended.
    pub fn forget(&self, _local: &str, _remote: &str, _route_id: u64) {}
}
