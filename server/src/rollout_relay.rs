//! The rollout-events relay: publishes the transactional outbox (`store::outbox`) to
//! `ota.rollout-events`. A rollout change writes its event in the transaction of the
//! change, so an event exists if and only if its change committed; the relay sends the
//! waiting events in commit order and deletes each once Kafka acknowledged it. A crash
//! between the two re-sends it: delivery is at least once, and `event_id` (the outbox
//! row's id, increasing) lets a consumer drop a duplicate.
//!
//! One relay publishes at a time, under a lease in the database, so a rollout's events
//! keep their order when several replicas share a database; the others stand by and
//! take over once the lease lapses (or is given up at shutdown).

use crate::engine::{wall_clock_ms, NowMs};
use crate::events::{LaneError, LaneProducer};
use crate::store::{OutboxRow, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Events per round.
pub const BATCH: i64 = 100;
/// How long a relay's lease lasts; it is renewed every round.
pub const LEASE_TTL_MS: i64 = 10_000;
/// How often an idle or standing-by relay looks again (a change wakes it at once).
const POLL: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What one round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Published (and deleted) this many events.
    Published(usize),
    /// Nothing waits.
    Idle,
    /// Another relay holds the lease.
    Standby,
    /// Kafka or the database failed after `published` events: retry later.
    Failed { published: usize },
}

/// The event as published: the stored event with its `event_id` (pure). A row that is
/// not a JSON object (the database was edited by hand) is published as stored.
pub fn with_event_id(row: &OutboxRow) -> Vec<u8> {
    match serde_json::from_str::<serde_json::Value>(&row.event) {
        Ok(serde_json::Value::Object(mut event)) => {
            event.insert("event_id".to_owned(), row.id.into());
            serde_json::to_vec(&event).unwrap_or_else(|_| row.event.clone().into_bytes())
        }
        _ => row.event.clone().into_bytes(),
    }
}

/// Wakes the relay after a change committed.
pub type RelayWake = Arc<Notify>;

pub struct RolloutRelay {
    store: Store,
    producer: LaneProducer,
    topic: String,
    holder: String,
    wake: RelayWake,
}

impl std::fmt::Debug for RolloutRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolloutRelay")
            .field("topic", &self.topic)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl RolloutRelay {
    pub(crate) fn new(
        store: Store,
        producer: LaneProducer,
        topic: String,
        holder: String,
        wake: RelayWake,
    ) -> RolloutRelay {
        RolloutRelay {
            store,
            producer,
            topic,
            holder,
            wake,
        }
    }

    /// One round: when events wait, take or renew the lease, publish the oldest in
    /// order, delete those Kafka acknowledged.
    pub async fn round(&self, now: NowMs) -> Round {
        // Looked at before the lease is written: an idle relay only reads. One count per
        // round: the gauge is this count less what the round deletes.
        let pending = match self.store.outbox_pending().await {
            Ok(pending) => {
                metrics::gauge!("ota_rollout_outbox_pending").set(pending as f64);
                if pending == 0 {
                    return Round::Idle;
                }
                pending
            }
            Err(err) => {
                tracing::warn!(%err, "reading the rollout-events outbox failed");
                return Round::Failed { published: 0 };
            }
        };
        match self
            .store
            .take_outbox_lease(&self.holder, now, LEASE_TTL_MS)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Round::Standby,
            Err(err) => {
                tracing::warn!(%err, "taking the rollout-events lease failed");
                return Round::Failed { published: 0 };
            }
        }
        let rows = match self.store.outbox_batch(BATCH).await {
            Ok(rows) if rows.is_empty() => return Round::Idle,
            Ok(rows) => rows,
            Err(err) => {
                tracing::warn!(%err, "reading the rollout-events outbox failed");
                return Round::Failed { published: 0 };
            }
        };
        let mut published = Vec::with_capacity(rows.len());
        let mut failed = false;
        for row in &rows {
            match self
                .producer
                .send(&self.topic, &row.rollout_id, &with_event_id(row))
                .await
            {
                Ok(()) => published.push(row.id),
                Err(err) => {
                    match &err {
                        LaneError::BreakerOpen => tracing::debug!("rollout events wait: {err}"),
                        LaneError::Kafka(_) => {
                            tracing::warn!(%err, "publishing a rollout event failed; it stays in the outbox")
                        }
                    }
                    failed = true;
                    break;
                }
            }
        }
        match self.store.outbox_published(&published).await {
            Ok(deleted) => {
                let left = pending.saturating_sub(i64::try_from(deleted).unwrap_or(i64::MAX));
                metrics::gauge!("ota_rollout_outbox_pending").set(left as f64);
            }
            Err(err) => {
                // Published but not deleted: sent again next round (consumers drop it
                // by event_id).
                tracing::warn!(%err, "deleting published rollout events failed");
                failed = true;
            }
        }
        metrics::counter!("ota_rollout_events_published_total").increment(published.len() as u64);
        if failed {
            Round::Failed {
                published: published.len(),
            }
        } else {
            Round::Published(published.len())
        }
    }

    /// Runs rounds until `stop`: at once after a full batch, on a wake-up or every
    /// second when idle, with backoff after a failure. Gives the lease up when stopped.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_START;
        loop {
            if *stop.borrow() {
                break;
            }
            let round = self.round(wall_clock_ms()).await;
            let wait = match round {
                Round::Published(n) if n as i64 == BATCH => Duration::ZERO,
                Round::Published(_) | Round::Idle | Round::Standby => POLL,
                Round::Failed { .. } => backoff,
            };
            backoff = match round {
                Round::Failed { .. } => (backoff * 2).min(BACKOFF_MAX),
                _ => BACKOFF_START,
            };
            let woken = !matches!(round, Round::Failed { .. });
            tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => break,
                _ = self.wake.notified(), if woken => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if let Err(err) = self.store.release_outbox_lease(&self.holder).await {
            tracing::warn!(%err, "giving up the rollout-events lease failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_event_carries_the_outbox_id() {
        let row = OutboxRow {
            id: 42,
            rollout_id: "r-1".to_owned(),
            event: r#"{"schema":"ota.rollout-events.change","rollout_id":"r-1"}"#.to_owned(),
        };
        let event: serde_json::Value = serde_json::from_slice(&with_event_id(&row)).unwrap();
        assert_eq!(event["event_id"], 42);
        assert_eq!(event["rollout_id"], "r-1");
    }

    #[test]
    fn a_row_that_is_not_an_object_is_published_as_stored() {
        let row = OutboxRow {
            id: 1,
            rollout_id: "r-1".to_owned(),
            event: "not json".to_owned(),
        };
        assert_eq!(with_event_id(&row), b"not json");
    }
}
