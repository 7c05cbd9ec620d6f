//! The persistence seam: how the service loads and saves persistent rooms. Rooms whose
//! config says `persistent` are saved (config, affiliations, subject, occupant-id secret)
//! after every change to those; temporary rooms are never stored.
//!
//! These default to "nothing stored" until `crate::storage::muc` exists; the storage work
//! wires them to `server.storage`. Errors are logged by the callers, never fatal to a room.

use crate::server::ServerState;
use crate::storage::StorageError;

use super::room::StoredRoom;

/// Every stored room of the service (called once at start).
pub async fn load_all(
    _server: &ServerState,
    _service: &str,
) -> Result<Vec<StoredRoom>, StorageError> {
    Ok(Vec::new())
}

/// One stored room by local part (called when a stanza names a room not in memory).
pub async fn load(
    _server: &ServerState,
    _service: &str,
    _name: &str,
) -> Result<Option<StoredRoom>, StorageError> {
    Ok(None)
}

/// Insert or replace a room.
pub async fn save(
    _server: &ServerState,
    _service: &str,
    _room: &StoredRoom,
) -> Result<(), StorageError> {
    Ok(())
}

/// Forget a room (destroyed, or made temporary).
pub async fn delete(
    _server: &ServerState,
    _service: &str,
    _name: &str,
) -> Result<(), StorageError> {
    Ok(())
}
