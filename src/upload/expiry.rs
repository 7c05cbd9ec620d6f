//! The background task of the upload service: every `upload.expiry_interval_secs` it
//! deletes files older than `upload.expire_days`, slots whose PUT URL expired unused, PUTs
//! that died with an earlier process, and files whose row is gone (their account was
//! deleted: the rows go by `ON DELETE CASCADE`, the files here). Stops on shutdown.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::key::slot_file_id;
use super::Upload;
use crate::server::ServerState;
use crate::storage::{Storage, StorageError};

/// Rows deleted per statement.
const BATCH: i64 = 1000;
/// Directory entries checked against the database per query.
const SWEEP_CHUNK: usize = 500;
/// A PUT still 'uploading' this long after its slot expired died with an earlier process
/// (a live one would have finished or failed long before).
const STALE_UPLOAD_SECS: i64 = 24 * 3600;

pub fn spawn(state: Arc<ServerState>, up: Arc<Upload>) {
    tokio::spawn(async move {
        let mut shutdown = state.shutdown.clone();
        let mut tick = tokio::time::interval(Duration::from_secs(up.cfg.expiry_interval_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {}
            }
            if *shutdown.borrow() {
                break;
            }
            match run_once(&state.storage, &up).await {
                Ok(n) if n > 0 => tracing::info!(removed = n, "upload expiry"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "upload expiry failed; retrying next round"),
            }
        }
    });
}

/// One pass; returns how many files or slots were removed.
pub async fn run_once(storage: &Storage, up: &Upload) -> Result<usize, StorageError> {
    let now = crate::stanza::now_ms() / 1000;
    let done_before = up.retention_secs().map(|keep| now.saturating_sub(keep));
    let mut removed = 0;
    loop {
        let ids = storage
            .uploads()
            .take_expired(done_before, now, now - STALE_UPLOAD_SECS, BATCH)
            .await?;
        for id in &ids {
            remove_files(up, id).await;
        }
        removed += ids.len();
        if (ids.len() as i64) < BATCH {
            break;
        }
    }
    removed += sweep_orphans(storage, up).await?;
    Ok(removed)
}

async fn remove_files(up: &Upload, id: &str) {
    for path in [up.file_path(id), up.part_path(id)] {
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "upload: cannot remove file")
            }
        }
    }
}

/// Remove files of the upload dir that no row knows. Names that are not slot files are left
/// alone (the directory may be shared with something else).
async fn sweep_orphans(storage: &Storage, up: &Upload) -> Result<usize, StorageError> {
    let mut entries = match tokio::fs::read_dir(&up.dir).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(dir = %up.dir.display(), error = %e, "upload: cannot list the upload dir");
            return Ok(0);
        }
    };
    let mut ids: Vec<String> = Vec::new();
    while let Ok(Some(entry)) = entries.next_entry().await {
        if let Some(id) = entry.file_name().to_str().and_then(slot_file_id) {
            ids.push(id.to_string());
        }
    }
    ids.sort_unstable();
    ids.dedup();
    let mut removed = 0;
    for chunk in ids.chunks(SWEEP_CHUNK) {
        let known: HashSet<String> = storage
            .uploads()
            .existing(chunk)
            .await?
            .into_iter()
            .collect();
        for id in chunk.iter().filter(|id| !known.contains(*id)) {
            remove_files(up, id).await;
            removed += 1;
        }
    }
    Ok(removed)
}
