//! Group commit of the check-in path's writes. Every check-in is one write (last seen,
//! replay guard, the director version it is answered with), and a first check-in in a
//! rollout a second one (its new deployments); written one transaction each, the
//! database waits on a WAL flush per write. Writes arriving while a batch is being
//! written queue up and go together in the next transaction: one commit for all of
//! them, and no added wait when they are few (a lone one is written at once).
//!
//! Batches are sorted by vehicle id, so two writers lock rows in the same order and
//! cannot deadlock. If a batch's transaction fails, each of its writes is made again on
//! its own, so one bad write fails only itself.
//!
//! [`GroupCommit`] is the queue and its writers; a [`BatchWrite`] says how one kind of
//! write is made alone and in a batch: [`Checkins`], [`Assignments`].

use crate::store::{AssignmentWrite, CheckinWrite, Store, StoreError};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex, OnceCell};

/// Queued writes waiting for a writer, at most.
const QUEUE: usize = 8192;

/// One kind of write the group commit batches.
pub trait BatchWrite: Send + Sync + 'static {
    type Item: Send + 'static;
    type Output: Send + 'static;
    /// The write's name in metrics (`ota_checkin_batch_size{write=...}`).
    const NAME: &'static str;
    /// The vehicle the write locks rows of (the batch's sort key).
    fn vehicle(item: &Self::Item) -> &str;
    /// Every item in one transaction, each with its own result; `Err` fails the batch.
    fn write_all(
        &self,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<Vec<Result<Self::Output, StoreError>>, StoreError>> + Send;
    /// One item alone.
    fn write_one(
        &self,
        item: &Self::Item,
    ) -> impl Future<Output = Result<Self::Output, StoreError>> + Send;
}

/// Check-in records (`Store::record_checkins`).
#[derive(Debug, Clone)]
pub struct Checkins(pub Store);

impl BatchWrite for Checkins {
    type Item = CheckinWrite;
    type Output = Option<u64>;
    const NAME: &'static str = "checkin";

    fn vehicle(item: &CheckinWrite) -> &str {
        &item.checkin.vehicle_id
    }

    async fn write_all(
        &self,
        items: &[CheckinWrite],
    ) -> Result<Vec<Result<Option<u64>, StoreError>>, StoreError> {
        self.0.record_checkins(items).await
    }

    async fn write_one(&self, w: &CheckinWrite) -> Result<Option<u64>, StoreError> {
        self.0.record_checkin(&w.checkin, &w.known, w.now).await
    }
}

/// New (or handed-out-again) deployments of a check-in's directive
/// (`Store::insert_assignments`).
#[derive(Debug, Clone)]
pub struct Assignments(pub Store);

impl BatchWrite for Assignments {
    type Item = AssignmentWrite;
    type Output = ();
    const NAME: &'static str = "assignment";

    fn vehicle(item: &AssignmentWrite) -> &str {
        &item.vehicle_id
    }

    async fn write_all(
        &self,
        items: &[AssignmentWrite],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.0.insert_assignments(items).await?;
        Ok(items.iter().map(|_| Ok(())).collect())
    }

    async fn write_one(&self, item: &AssignmentWrite) -> Result<(), StoreError> {
        self.0.insert_assignments(std::slice::from_ref(item)).await
    }
}

type Reply<B> = oneshot::Sender<Result<<B as BatchWrite>::Output, StoreError>>;
type Queue<B> = Arc<Mutex<mpsc::Receiver<(<B as BatchWrite>::Item, Reply<B>)>>>;

/// Writes items of one kind, in batches of up to `max_batch` per transaction (1: one
/// transaction each, no queue).
pub struct GroupCommit<B: BatchWrite> {
    writer: Arc<B>,
    max_batch: usize,
    writers: usize,
    /// Started on first use, so the writers run on the runtime that serves check-ins.
    queue: OnceCell<mpsc::Sender<(B::Item, Reply<B>)>>,
    /// Batches written so far.
    batches: Arc<AtomicU64>,
}

/// The check-in records' group commit.
pub type CheckinWriter = GroupCommit<Checkins>;
/// The new deployments' group commit.
pub type AssignmentWriter = GroupCommit<Assignments>;

impl<B: BatchWrite> std::fmt::Debug for GroupCommit<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("max_batch", &self.max_batch)
            .field("writers", &self.writers)
            .finish_non_exhaustive()
    }
}

impl<B: BatchWrite> GroupCommit<B> {
    pub fn new(writer: B, max_batch: usize, writers: usize) -> GroupCommit<B> {
        GroupCommit {
            writer: Arc::new(writer),
            max_batch: max_batch.max(1),
            writers: writers.max(1),
            queue: OnceCell::new(),
            batches: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many batches (transactions of several writes) were written so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Makes one write; returns once its batch committed.
    pub async fn record(&self, item: B::Item) -> Result<B::Output, StoreError> {
        if self.max_batch == 1 {
            return self.writer.write_one(&item).await;
        }
        let queue = self.queue.get_or_init(|| async { self.start() }).await;
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError((item, _))) = queue.send((item, reply)).await {
            // The writers are gone (shutting down): write it here.
            return self.writer.write_one(&item).await;
        }
        // A writer that stopped before answering (it panicked) is an unavailable
        // database to this write.
        answer
            .await
            .unwrap_or(Err(StoreError::Database(sqlx::Error::PoolClosed)))
    }

    fn start(&self) -> mpsc::Sender<(B::Item, Reply<B>)> {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let queue: Queue<B> = Arc::new(Mutex::new(receiver));
        for _ in 0..self.writers {
            tokio::spawn(write_batches(
                self.writer.clone(),
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
async fn write_batches<B: BatchWrite>(
    writer: Arc<B>,
    queue: Queue<B>,
    max_batch: usize,
    batches: Arc<AtomicU64>,
) {
    loop {
        let mut batch = Vec::with_capacity(max_batch);
        {
            let mut receiver = queue.lock().await;
            if receiver.recv_many(&mut batch, max_batch).await == 0 {
                return;
            }
        }
        batch.sort_by(|a, b| B::vehicle(&a.0).cmp(B::vehicle(&b.0)));
        let (items, replies): (Vec<B::Item>, Vec<Reply<B>>) = batch.into_iter().unzip();
        metrics::histogram!("ota_checkin_batch_size", "write" => B::NAME)
            .record(items.len() as f64);
        batches.fetch_add(1, Ordering::Relaxed);
        match writer.write_all(&items).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(err) => {
                tracing::debug!(%err, size = items.len(), "a batch of writes failed; writing each alone");
                for (reply, item) in replies.into_iter().zip(items) {
                    let _ = reply.send(writer.write_one(&item).await);
                }
            }
        }
    }
}
