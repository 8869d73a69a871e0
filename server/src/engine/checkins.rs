//! Group commit of check-in writes. Every check-in is one write (last seen, replay
//! guard, the director version it is answered with); written one transaction each, the
//! database waits on a WAL flush per check-in. Check-ins arriving while a batch is
//! being written queue up and go together in the next transaction: one commit for all
//! of them, and no added wait when check-ins are few (a lone one is written at once).
//!
//! Batches are sorted by vehicle id, so two writers lock rows in the same order and
//! cannot deadlock. If a batch's transaction fails, each of its check-ins is written
//! again on its own, so one bad write fails only its own check-in.

use crate::store::{CheckinWrite, Store, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex, OnceCell};

type Reply = oneshot::Sender<Result<Option<u64>, StoreError>>;
type Queue = Arc<Mutex<mpsc::Receiver<(CheckinWrite, Reply)>>>;

/// Queued check-in writes waiting for a writer, at most.
const QUEUE: usize = 8192;

/// Writes check-ins, in batches of up to `max_batch` per transaction (1: one
/// transaction each, no queue).
pub struct CheckinWriter {
    store: Store,
    max_batch: usize,
    writers: usize,
    /// Started on first use, so the writers run on the runtime that serves check-ins.
    queue: OnceCell<mpsc::Sender<(CheckinWrite, Reply)>>,
    /// Batches written so far.
    batches: Arc<AtomicU64>,
}

impl std::fmt::Debug for CheckinWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckinWriter")
            .field("max_batch", &self.max_batch)
            .field("writers", &self.writers)
            .finish_non_exhaustive()
    }
}

impl CheckinWriter {
    pub fn new(store: Store, max_batch: usize, writers: usize) -> CheckinWriter {
        CheckinWriter {
            store,
            max_batch: max_batch.max(1),
            writers: writers.max(1),
            queue: OnceCell::new(),
            batches: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many batches (transactions of several check-ins) were written so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Records one check-in (see `Store::record_checkin`); returns once its batch
    /// committed.
    pub async fn record(&self, write: CheckinWrite) -> Result<Option<u64>, StoreError> {
        if self.max_batch == 1 {
            return self
                .store
                .record_checkin(&write.checkin, &write.known, write.now)
                .await;
        }
        let queue = self.queue.get_or_init(|| async { self.start() }).await;
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError((write, _))) = queue.send((write, reply)).await {
            // The writers are gone (shutting down): write it here.
            return self
                .store
                .record_checkin(&write.checkin, &write.known, write.now)
                .await;
        }
        // A writer that stopped before answering (it panicked) is an unavailable
        // database to this check-in.
        answer
            .await
            .unwrap_or(Err(StoreError::Database(sqlx::Error::PoolClosed)))
    }

    fn start(&self) -> mpsc::Sender<(CheckinWrite, Reply)> {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let queue: Queue = Arc::new(Mutex::new(receiver));
        for _ in 0..self.writers {
            tokio::spawn(write_batches(
                self.store.clone(),
                queue.clone(),
                self.max_batch,
                self.batches.clone(),
            ));
        }
        sender
    }
}

/// Takes what waits (up to `max_batch`, at least one), writes it in one transaction,
/// answers each; until every sender is gone.
async fn write_batches(store: Store, queue: Queue, max_batch: usize, batches: Arc<AtomicU64>) {
    loop {
        let mut batch = Vec::with_capacity(max_batch);
        {
            let mut receiver = queue.lock().await;
            if receiver.recv_many(&mut batch, max_batch).await == 0 {
                return;
            }
        }
        batch.sort_by(|a, b| a.0.checkin.vehicle_id.cmp(&b.0.checkin.vehicle_id));
        let (writes, replies): (Vec<CheckinWrite>, Vec<Reply>) = batch.into_iter().unzip();
        metrics::histogram!("ota_checkin_batch_size").record(writes.len() as f64);
        batches.fetch_add(1, Ordering::Relaxed);
        match store.record_checkins(&writes).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(err) => {
                tracing::debug!(%err, size = writes.len(), "a check-in batch failed; writing each alone");
                for (reply, write) in replies.into_iter().zip(writes) {
                    let result = store
                        .record_checkin(&write.checkin, &write.known, write.now)
                        .await;
                    let _ = reply.send(result);
                }
            }
        }
    }
}
