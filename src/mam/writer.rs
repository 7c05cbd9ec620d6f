//! The archive's background writer and retention task.
//!
//! The message path must not wait on the database for a write the user does not need yet,
//! so archive rows go through a bounded channel to one writer task, which inserts what has
//! queued up (up to `mam.write_batch` rows) in one transaction: under load, one commit (one
//! fsync on SQLite) serves many messages.
//!
//! Read-your-writes: a client that received a message and then queries its archive must see
//! it. Every query first calls [`Writer::flush`], which (only when rows are pending) sends a
//! barrier through the same FIFO channel and waits for the writer to commit everything ahead
//! of it. The message was queued before it was routed, so before the client could see it,
//! hence before the barrier.
//!
//! Full channel: senders wait (backpressure) rather than drop. An archive is the user's
//! history; silently losing messages from it under load is worse than slowing the senders
//! down to the database's pace, and the wait is bounded by the database's write rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Mam as MamConfig;
use crate::storage::{NewArchived, NewRoomArchived, Storage};

enum Op {
    Rows(Vec<NewArchived>),
    /// MUC room archive rows: the same queue, so one flush covers both kinds.
    RoomRows(Vec<NewRoomArchived>),
    /// Delete the archive of a temporary room that no longer exists (service, node), in
    /// queue order: rows queued before it are written (and deleted) first, rows queued
    /// after it (a new room of the same name) are kept.
    ForgetRoom(String, String),
    Barrier(oneshot::Sender<()>),
}

/// Handle to the writer task (cheap to clone).
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Op>,
    /// Rows queued and not yet committed (or failed). Never under-counts: it is raised before
    /// a row is queued and lowered after its transaction ends, so zero means nothing a
    /// reader could have seen delivered is still in flight.
    pending: Arc<AtomicU64>,
}

impl Writer {
    /// Spawn the writer on the current runtime. It ends when every handle is dropped.
    pub fn start(storage: Storage, cfg: &MamConfig) -> Writer {
        let (tx, rx) = mpsc::channel(cfg.write_queue.max(1));
        let pending = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(storage, rx, pending.clone(), cfg.write_batch.max(1)));
        Writer { tx, pending }
    }

    /// Queue rows; waits while the queue is full (see the module docs).
    pub async fn write(&self, rows: Vec<NewArchived>) {
        if rows.is_empty() {
            return;
        }
        let n = rows.len() as u64;
        self.pending.fetch_add(n, Ordering::SeqCst);
        if self.tx.send(Op::Rows(rows)).await.is_err() {
            self.pending.fetch_sub(n, Ordering::SeqCst);
            tracing::error!("archive writer gone; message not archived");
        }
    }

    /// Queue rows of room archives (XEP-0045 rooms that log), like [`Writer::write`].
    pub async fn write_room(&self, rows: Vec<NewRoomArchived>) {
        if rows.is_empty() {
            return;
        }
        let n = rows.len() as u64;
        self.pending.fetch_add(n, Ordering::SeqCst);
        if self.tx.send(Op::RoomRows(rows)).await.is_err() {
            self.pending.fetch_sub(n, Ordering::SeqCst);
            tracing::error!("archive writer gone; room message not archived");
        }
    }

    /// Queue the deletion of a temporary room's leftover archive (see [`Op::ForgetRoom`]).
    /// Never waits: called while a new room is being created, under no lock but in a
    /// synchronous path; a full queue hands the request to a task.
    pub fn forget_room(&self, service: &str, node: &str) {
        let op = Op::ForgetRoom(service.to_string(), node.to_string());
        // Counted like a row, so a query's flush waits for the deletion too.
        self.pending.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(op) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(op)) => {
                let (tx, pending) = (self.tx.clone(), self.pending.clone());
                tokio::spawn(async move {
                    if tx.send(op).await.is_err() {
                        pending.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.pending.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Wait until every row queued before this call is committed (or has failed).
    pub async fn flush(&self) {
        if self.pending.load(Ordering::SeqCst) == 0 {
            return;
        }
        let (done, wait) = oneshot::channel();
        if self.tx.send(Op::Barrier(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn run(
    storage: Storage,
    mut rx: mpsc::Receiver<Op>,
    pending: Arc<AtomicU64>,
    batch_max: usize,
) {
    let mut rows: Vec<NewArchived> = Vec::new();
    let mut room_rows: Vec<NewRoomArchived> = Vec::new();
    let mut barriers = Vec::new();
    let mut forget = None;
    // Stamps never decrease along rows: queries turn 'start'/'end' into row bounds
    // (storage/archive.rs). Two sessions may stamp and queue in opposite orders; the later
    // row then takes the earlier one's stamp (a few milliseconds at most).
    let mut last_stamp = i64::MIN;
    while let Some(op) = rx.recv().await {
        let mut next = Some(op);
        while let Some(op) = next.take() {
            match op {
                Op::Rows(r) => rows.extend(r),
                Op::RoomRows(r) => room_rows.extend(r),
                Op::ForgetRoom(service, node) => forget = Some((service, node)),
                Op::Barrier(b) => barriers.push(b),
            }
            // A deletion ends the batch: what follows it is written after it.
            if forget.is_none() && rows.len() + room_rows.len() < batch_max {
                next = rx.try_recv().ok();
            }
        }
        if !rows.is_empty() {
            for r in &mut rows {
                r.stamp_ms = r.stamp_ms.max(last_stamp);
                last_stamp = r.stamp_ms;
            }
            if let Err(e) = storage.archive().insert_batch(&rows).await {
                tracing::error!(error = %e, rows = rows.len(), "archive write failed");
            }
            pending.fetch_sub(rows.len() as u64, Ordering::SeqCst);
            rows.clear();
            if rows.capacity() > batch_max * 4 {
                rows = Vec::new();
            }
        }
        if !room_rows.is_empty() {
            for r in &mut room_rows {
                r.stamp_ms = r.stamp_ms.max(last_stamp);
                last_stamp = r.stamp_ms;
            }
            if let Err(e) = storage.muc().archive_batch(&room_rows).await {
                tracing::error!(error = %e, rows = room_rows.len(), "room archive write failed");
            }
            pending.fetch_sub(room_rows.len() as u64, Ordering::SeqCst);
            room_rows = Vec::new();
        }
        if let Some((service, node)) = forget.take() {
            if let Err(e) = storage.muc().delete_placeholder((&service, &node)).await {
                tracing::error!(error = %e, room = node, "deleting a room archive failed");
            }
            pending.fetch_sub(1, Ordering::SeqCst);
        }
        for b in barriers.drain(..) {
            let _ = b.send(());
        }
    }
}

/// Delete archived messages older than `mam.retention_days`, every `expiry_interval_secs`,
/// in statements of at most `expiry_batch` rows (each its own short transaction, so the
/// writer is never locked out for long), until the server shuts down.
pub fn spawn_expiry(storage: Storage, cfg: &MamConfig, mut shutdown: watch::Receiver<bool>) {
    if cfg.retention_days == 0 {
        return;
    }
    let keep_ms = i64::from(cfg.retention_days) * 86_400_000;
    let every = Duration::from_secs(cfg.expiry_interval_secs.max(1));
    let batch = cfg.expiry_batch.max(1);
    tokio::spawn(async move {
        loop {
            let cutoff = crate::stanza::now_ms() - keep_ms;
            let deleted = expire_all(&storage, cutoff, batch).await;
            if deleted > 0 {
                tracing::info!(deleted, "archive retention: expired messages deleted");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
        }
    });
}

/// Delete everything stored before `cutoff_ms`, batch by batch; returns the count.
pub async fn expire_all(storage: &Storage, cutoff_ms: i64, batch: u32) -> u64 {
    let mut total = 0;
    loop {
        let n = match storage.muc().expire(cutoff_ms, batch).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "room archive retention failed");
                break;
            }
        };
        total += n;
        if n < u64::from(batch) {
            break;
        }
        tokio::task::yield_now().await;
    }
    loop {
        match storage.archive().expire(cutoff_ms, batch).await {
            Ok(n) => {
                total += n;
                if n < u64::from(batch) {
                    return total;
                }
                tokio::task::yield_now().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "archive retention failed");
                return total;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{ArchiveFilter, Direction};

    fn row(n: i64, stamp_ms: i64) -> NewArchived {
        NewArchived {
            owner: ("d".into(), "u".into()),
            stanza_id: format!("id{n}"),
            stamp_ms,
            with_bare: "x@d".into(),
            with_res: String::new(),
            origin_id: None,
            outgoing: false,
            stanza: format!("<message xmlns='jabber:client'><body>{n}</body></message>"),
        }
    }

    async fn all(s: &Storage) -> Vec<(String, i64)> {
        s.archive()
            .page(
                ("d", "u"),
                &ArchiveFilter::default(),
                Direction::Forward,
                1000,
            )
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.stanza_id, m.stamp_ms))
            .collect()
    }

    #[tokio::test]
    async fn flush_makes_queued_rows_visible_and_stamps_monotonic() {
        let s = Storage::connect("sqlite::memory:").await.unwrap();
        s.accounts().create(("d", "u"), &[]).await.unwrap();
        let cfg = MamConfig {
            write_batch: 3,
            ..Default::default()
        };
        let w = Writer::start(s.clone(), &cfg);
        // Queued out of stamp order (two sessions racing): the later row keeps order.
        for (n, stamp) in [(0, 100), (1, 300), (2, 200), (3, 400), (4, 500)] {
            w.write(vec![row(n, stamp)]).await;
        }
        w.flush().await;
        assert_eq!(
            all(&s).await,
            [
                ("id0".into(), 100),
                ("id1".into(), 300),
                ("id2".into(), 300),
                ("id3".into(), 400),
                ("id4".into(), 500)
            ]
        );
        assert_eq!(w.pending.load(Ordering::SeqCst), 0);
        w.flush().await; // nothing pending: returns at once
    }

    #[tokio::test]
    async fn forgetting_a_room_is_ordered_with_rows_and_flushed() {
        use crate::storage::NewRoomArchived;
        let s = Storage::connect("sqlite::memory:").await.unwrap();
        let w = Writer::start(s.clone(), &MamConfig::default());
        let room_row = |id: &str| NewRoomArchived {
            room: ("conference.d".into(), "tmp".into()),
            stanza_id: id.into(),
            stamp_ms: 1,
            nick: "n".into(),
            origin_id: None,
            sender: "u@d".into(),
            stanza: "<message xmlns='jabber:client'/>".into(),
        };
        // Old incarnation's row, the purge, then the new incarnation's row.
        w.write_room(vec![room_row("old")]).await;
        w.forget_room("conference.d", "tmp");
        w.write_room(vec![room_row("new")]).await;
        w.flush().await;
        let page = s
            .archive()
            .page(
                crate::storage::ArchiveOwner::Room(("conference.d", "tmp")),
                &ArchiveFilter::default(),
                Direction::Forward,
                10,
            )
            .await
            .unwrap();
        let ids: Vec<_> = page.iter().map(|m| m.stanza_id.as_str()).collect();
        assert_eq!(ids, ["new"]);
        // A purge alone is waited for too.
        w.forget_room("conference.d", "tmp");
        w.flush().await;
        assert_eq!(w.pending.load(Ordering::SeqCst), 0);
        assert!(s
            .muc()
            .room(("conference.d", "tmp"))
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn expiry_deletes_old_rows_in_batches() {
        let s = Storage::connect("sqlite::memory:").await.unwrap();
        s.accounts().create(("d", "u"), &[]).await.unwrap();
        let rows: Vec<_> = (0..7).map(|n| row(n, n * 10)).collect();
        s.archive().insert_batch(&rows).await.unwrap();
        assert_eq!(expire_all(&s, 45, 2).await, 5);
        assert_eq!(all(&s).await, [("id5".into(), 50), ("id6".into(), 60)]);
        assert_eq!(expire_all(&s, 45, 2).await, 0);
    }
}
