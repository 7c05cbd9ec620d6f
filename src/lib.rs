//! Starling: an XMPP server (RFC 6120/6121).
//!
//! Layout follows the protocol areas: `xml` frames streams, `c2s` negotiates and runs client
//! sessions, `router` holds the session registry, `roster`/`presence`/`message`/`offline`
//! implement RFC 6121, `modules` holds IQ handlers that declare their namespaces and disco
//! features, `storage` persists per domain over SQLite or PostgreSQL.
pub mod avatar;
pub mod blocking;
pub mod c2s;
pub mod caps;
pub mod carbons;
pub mod component;
pub mod config;
pub mod federation;
pub mod http;
pub mod iq_out;
pub mod keyfile;
pub mod mam;
pub mod message;
pub mod modules;
pub mod muc;
pub mod offline;
pub mod pep;
pub mod presence;
pub mod push;
pub mod roster;
pub mod router;
pub mod s2s;
pub mod sasl;
pub mod server;
pub mod services;
pub mod stanza;
pub mod storage;
pub mod tls;
pub mod upload;
pub mod xml;
