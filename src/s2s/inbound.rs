//! Inbound s2s streams: streams other servers open to us (RFC 6120), STARTTLS or direct TLS
//! (XEP-0368), SASL EXTERNAL (XEP-0178) or dialback (XEP-0220), XEP-0288 bidirectionality;
//! also answers `db:verify` as the authoritative server.
//!
//! CONTRACT (owned by the inbound helper; body below is a placeholder until then).

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

use super::S2s;

/// Run one inbound connection to its end.
pub async fn serve(_s2s: Arc<S2s>, _tcp: TcpStream, _peer: SocketAddr, _direct_tls: bool) {}
