//! Starling: an XMPP server.
pub mod sasl;
pub mod storage;
pub mod xml;
