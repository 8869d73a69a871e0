//! The check-in intake: accepted check-ins are answered in batches
//! ([`Engine::handle_checkins`](crate::engine::Engine::handle_checkins)), one batch per
//! worker.
//!
//! A worker per check-in paid the database round trips of one check-in each (a read of
//! the vehicle, a read of its deployments, its writes), and with 10 workers at most 10
//! could share a group commit. Here one task waits for a free worker, then takes
//! whatever has arrived meanwhile (up to [`CHECKIN_BATCH`]) and hands it to that worker
//! as one batch. Under light load a batch is the one check-in that just arrived, so
//! nothing waits to be batched; under load the batches grow as the workers fall
//! behind, which is when batching pays. What waits here is bounded by the connection's
//! acceptance slots (each queued check-in holds one).
//!
//! Outcomes, per check-in: answered (directive into the outbox) or dropped and counted
//! (`ota_vehicle_messages_dropped_total`). Check-ins are never redelivered: a vehicle
//! whose answer is lost checks in again at its poll interval.

use super::{ChannelHealth, Lane, Outgoing};
use crate::ack_order::Ticket;
use crate::engine::wall_clock_ms;
use ota_core::protocol::{topic, Channel};
use rumqttc::Publish;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Most check-ins answered together.
pub(super) const CHECKIN_BATCH: usize = 128;

/// A check-in the gateway accepted, waiting for a worker.
pub(super) struct Accepted {
    /// Set when the connection acknowledges by hand (a check-in on the progress
    /// connection, from a filter its persistent session kept): acknowledged as taken.
    pub(super) ticket: Option<Ticket>,
    /// The vehicle its topic names.
    pub(super) vehicle: String,
    pub(super) publish: Publish,
    /// The gateway's acceptance slot, released once the check-in is answered.
    pub(super) slot: OwnedSemaphorePermit,
}

/// Runs until `lane.stop` or until the workers close; check-ins still queued then are
/// dropped unanswered.
pub(super) async fn run(
    lane: Lane,
    health: Arc<ChannelHealth>,
    workers: Arc<Semaphore>,
    mut intake: mpsc::UnboundedReceiver<Accepted>,
) {
    let mut batch: Vec<Accepted> = Vec::with_capacity(CHECKIN_BATCH);
    loop {
        let first = tokio::select! {
            biased;
            _ = lane.stop.cancelled() => break,
            first = intake.recv() => match first {
                Some(first) => first,
                None => break,
            },
        };
        batch.push(first);
        // Waiting for a worker lets the batch grow with what arrives meanwhile.
        let worker = tokio::select! {
            biased;
            _ = lane.stop.cancelled() => break,
            worker = workers.clone().acquire_owned() => match worker {
                Ok(worker) => worker,
                Err(_) => break,
            },
        };
        while batch.len() < CHECKIN_BATCH {
            match intake.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let taken = std::mem::replace(&mut batch, Vec::with_capacity(CHECKIN_BATCH));
        let (lane, health) = (lane.clone(), health.clone());
        tokio::spawn(async move {
            answer(&lane, &health, taken).await;
            drop(worker);
        });
    }
    // Shutdown: what no worker took is dropped unanswered.
    intake.close();
    while let Ok(accepted) = intake.try_recv() {
        batch.push(accepted);
    }
    for accepted in batch {
        if let Some(ticket) = accepted.ticket {
            lane.acks.order().finish(ticket, None);
        }
        health.pending_in.fetch_sub(1, Ordering::Relaxed);
        drop(accepted.slot);
    }
}

/// Answers one batch: each directive into the outbox, each rejection counted.
async fn answer(lane: &Lane, health: &ChannelHealth, batch: Vec<Accepted>) {
    let mut acknowledged = false;
    for accepted in &batch {
        if let Some(ticket) = accepted.ticket {
            lane.acks
                .order()
                .finish(ticket, Some(accepted.publish.clone()));
            acknowledged = true;
        }
    }
    if acknowledged {
        lane.acks.flush(&lane.client, &lane.stop).await;
    }
    let messages: Vec<(&str, &[u8])> = batch
        .iter()
        .map(|accepted| (accepted.vehicle.as_str(), &accepted.publish.payload[..]))
        .collect();
    let answers = lane
        .engine
        .handle_checkins(&messages, wall_clock_ms())
        .await;
    for (accepted, answer) in batch.iter().zip(answers) {
        match answer {
            Ok(directive) => {
                metrics::counter!("ota_checkins_total", "outcome" => "accepted").increment(1);
                lane.outbox.send(Outgoing {
                    topic: topic(&accepted.vehicle, Channel::Directive),
                    payload: directive,
                });
            }
            Err(rejected) => {
                metrics::counter!("ota_vehicle_messages_dropped_total", "reason" => rejected.label())
                    .increment(1);
                tracing::debug!(%rejected, "check-in dropped");
            }
        }
    }
    let answered = batch.len();
    health.handled.fetch_add(answered as u64, Ordering::Relaxed);
    health.workers_progressed();
    health.pending_in.fetch_sub(answered, Ordering::Relaxed);
    // The acceptance slots go with the batch.
    drop(batch);
}
