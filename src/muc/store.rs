//! The persistence seam: how the service loads and saves persistent rooms, over
//! [`crate::storage::MucRooms`]. Rooms whose config says `persistent` are saved (config,
//! affiliations, subject, occupant-id secret) after every change to those; temporary rooms
//! are never stored.
//!
//! The configuration and the occupant-id secret are one TOML document in the room row's
//! `config` column (serde, so a new config field needs no migration: missing fields take
//! their defaults); the subject and the affiliations have their own columns and rows.

use serde::{Deserialize, Serialize};

use crate::server::ServerState;
use crate::storage::{StorageError, StoredAffiliation};

use super::room::{Affiliation, RoomConfig, StoredRoom, Subject};

/// What the `config` column holds.
#[derive(Serialize, Deserialize)]
struct Doc {
    /// The XEP-0421 occupant-id secret, hex.
    secret: String,
    config: RoomConfig,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

fn decode(
    name: String,
    config: &str,
    subject: Option<(String, String)>,
    affs: Vec<StoredAffiliation>,
) -> Result<StoredRoom, StorageError> {
    let doc: Doc = toml::from_str(config)
        .map_err(|e| StorageError::Corrupt(format!("room {name} config: {e}")))?;
    let secret = unhex32(&doc.secret)
        .ok_or_else(|| StorageError::Corrupt(format!("room {name}: occupant-id secret")))?;
    Ok(StoredRoom {
        name,
        config: doc.config,
        affiliations: affs
            .into_iter()
            .filter_map(|a| Some((a.jid, Affiliation::parse(&a.affiliation)?)))
            .collect(),
        subject: subject.map(|(text, nick)| Subject { nick, text }),
        secret,
    })
}

/// Every stored room of the service (called once at start).
pub async fn load_all(
    server: &ServerState,
    service: &str,
) -> Result<Vec<StoredRoom>, StorageError> {
    let m = server.storage.muc();
    let mut out = Vec::new();
    for r in m.rooms(service).await? {
        if r.is_placeholder() {
            continue;
        }
        let affs = m.affiliations((service, &r.node)).await?;
        match decode(r.node, &r.config, r.subject, affs) {
            Ok(room) => out.push(room),
            Err(e) => tracing::error!(error = %e, "a stored room is unreadable; skipped"),
        }
    }
    Ok(out)
}

/// One stored room by local part (called when a stanza names a room not in memory).
pub async fn load(
    server: &ServerState,
    service: &str,
    name: &str,
) -> Result<Option<StoredRoom>, StorageError> {
    let m = server.storage.muc();
    let Some(r) = m
        .room((service, name))
        .await?
        .filter(|r| !r.is_placeholder())
    else {
        return Ok(None);
    };
    let affs = m.affiliations((service, name)).await?;
    decode(r.node, &r.config, r.subject, affs).map(Some)
}

/// Insert or replace a room.
pub async fn save(
    server: &ServerState,
    service: &str,
    room: &StoredRoom,
) -> Result<(), StorageError> {
    let doc = Doc {
        secret: hex(&room.secret),
        config: room.config.clone(),
    };
    let config = toml::to_string(&doc)
        .map_err(|e| StorageError::Corrupt(format!("room {} config: {e}", room.name)))?;
    let affs: Vec<StoredAffiliation> = room
        .affiliations
        .iter()
        .filter(|(_, a)| *a != Affiliation::None)
        .map(|(jid, a)| StoredAffiliation {
            jid: jid.clone(),
            affiliation: a.as_str().to_string(),
            reason: String::new(),
            nick: String::new(),
        })
        .collect();
    let subject = room
        .subject
        .as_ref()
        .map(|s| (s.text.as_str(), s.nick.as_str()));
    server
        .storage
        .muc()
        .replace(
            (service, &room.name),
            &config,
            subject,
            &affs,
            crate::stanza::now_ms(),
        )
        .await
}

/// Forget a room made temporary: its config and affiliations leave storage, its archive
/// stays while the room lives (a new room of the same name purges it, see
/// [`crate::mam::writer::Writer::forget_room`]).
pub async fn delete(server: &ServerState, service: &str, name: &str) -> Result<(), StorageError> {
    server
        .storage
        .muc()
        .unstore((service, name))
        .await
        .map(|_| ())
}

/// Delete a destroyed room with its affiliations and archive.
pub async fn destroy(server: &ServerState, service: &str, name: &str) -> Result<(), StorageError> {
    server
        .storage
        .muc()
        .delete((service, name))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_document_round_trips() {
        let config = RoomConfig {
            name: "Lobby 'quoted' \"x\"".into(),
            members_only: true,
            logging: true,
            history_length: 7,
            ..Default::default()
        };
        let doc = Doc {
            secret: hex(&[7u8; 32]),
            config: config.clone(),
        };
        let text = toml::to_string(&doc).unwrap();
        let back = decode("lobby".into(), &text, None, vec![]).unwrap();
        assert_eq!(back.config, config);
        assert_eq!(back.secret, [7u8; 32]);
        // Unknown fields are tolerated, missing ones default.
        let old = format!("secret = '{}'\n[config]\nname = 'n'\n", hex(&[1u8; 32]));
        let back = decode("x".into(), &old, None, vec![]).unwrap();
        assert_eq!(back.config.name, "n");
        assert_eq!(
            back.config.history_length,
            RoomConfig::default().history_length
        );
        assert!(decode("x".into(), "secret = 'zz'", None, vec![]).is_err());
    }
}
