//! The durable lane's progress intake: progress messages verified in batches, written to
//! Kafka concurrently, each acknowledged to the broker only once Kafka acknowledged it.
//!
//! A worker per message that waits for its own Kafka acknowledgement holds the worker
//! for the whole round trip (the producer's linger, the broker's replication), so the
//! lane's rate was `workers / round trip` however idle the CPU. Here one task takes
//! whatever has arrived (up to [`PROGRESS_BATCH`]), verifies it with two store reads in
//! all ([`Engine::verify_progress_batch`](crate::engine::Engine::verify_progress_batch)),
//! and hands the verified events to a task per batch that enqueues them in arrival
//! order, as one call through the Kafka breaker, and acknowledges those Kafka wrote
//! once the batch's writes have all answered (those that failed go again together after
//! a backoff); meanwhile the next batch is already being verified. What is outstanding
//! is bounded by the gateway's acceptance slots and, in practice, by the broker's
//! in-flight window for this client (the acknowledgement leaves only after Kafka's).
//!
//! Outcomes, per message: verified → written → acknowledged; rejected (unknown vehicle,
//! bad signature, not its deployment…) → dropped, counted and acknowledged; a store
//! failure while verifying → the whole batch retried with backoff; shutdown first →
//! never acknowledged (a persistent session redelivers it).

use super::{ChannelHealth, Lane, BACKOFF_MAX, BACKOFF_START};
use crate::ack_order::Ticket;
use crate::engine::{wall_clock_ms, Rejected};
use crate::events::{progress_event, EventProducer, LaneError, VehicleEvent};
use ota_core::protocol::ProgressEvent;
use rumqttc::Publish;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

/// Most progress messages verified together.
pub(super) const PROGRESS_BATCH: usize = 256;

/// A progress message the gateway accepted, waiting to be verified.
pub(super) struct Accepted {
    pub(super) ticket: Ticket,
    /// The vehicle its topic names.
    pub(super) vehicle: String,
    pub(super) publish: Publish,
    /// The gateway's acceptance slot, released once the message is finished.
    pub(super) slot: OwnedSemaphorePermit,
}

/// What becomes of one verified message.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Disposition {
    /// Written to Kafka, acknowledged after Kafka's acknowledgement.
    Produce(VehicleEvent),
    /// Dropped for this reason (a metrics label) and acknowledged: redelivery would not
    /// change the answer.
    Drop(&'static str),
}

/// The pure rule from a message's verification to what the lane does with it.
pub(super) fn disposition(
    verified: Result<ProgressEvent, Rejected>,
    signed: &[u8],
    received_at_ms: i64,
) -> Disposition {
    match verified {
        Ok(event) => Disposition::Produce(progress_event(&event, signed, received_at_ms)),
        Err(rejected) => Disposition::Drop(rejected.label()),
    }
}

/// Runs until `lane.stop`; messages still queued then are never acknowledged.
pub(super) async fn run(
    lane: Lane,
    events: EventProducer,
    health: Arc<ChannelHealth>,
    mut intake: mpsc::UnboundedReceiver<Accepted>,
) {
    let mut batch: Vec<Accepted> = Vec::with_capacity(PROGRESS_BATCH);
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
        while batch.len() < PROGRESS_BATCH {
            match intake.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let received_at = wall_clock_ms();
        let Some(verified) = verify(&lane, &batch).await else {
            break;
        };
        health.workers_progressed();
        let mut sends = Vec::with_capacity(batch.len());
        for (accepted, verified) in batch.drain(..).zip(verified) {
            match disposition(verified, &accepted.publish.payload, received_at) {
                Disposition::Produce(event) => sends.push((accepted, event)),
                Disposition::Drop(reason) => {
                    metrics::counter!("ota_vehicle_messages_dropped_total", "reason" => reason)
                        .increment(1);
                    tracing::debug!(reason, "progress event dropped");
                    finish(&lane, &health, accepted, true);
                }
            }
        }
        if !sends.is_empty() {
            tokio::spawn(produce(lane.clone(), events.clone(), health.clone(), sends));
        }
        lane.acks.flush(&lane.client, &lane.stop).await;
    }
    // Shutdown: what was never verified stays unacknowledged.
    intake.close();
    while let Ok(accepted) = intake.try_recv() {
        batch.push(accepted);
    }
    for accepted in batch {
        finish(&lane, &health, accepted, false);
    }
}

/// Verifies a batch, retrying store failures with backoff; `None` when shutdown came
/// first.
async fn verify(lane: &Lane, batch: &[Accepted]) -> Option<Vec<Result<ProgressEvent, Rejected>>> {
    let messages: Vec<(&str, &[u8])> = batch
        .iter()
        .map(|accepted| (accepted.vehicle.as_str(), &accepted.publish.payload[..]))
        .collect();
    let mut backoff = BACKOFF_START;
    loop {
        match lane.engine.verify_progress_batch(&messages).await {
            Ok(verified) => {
                return Some(
                    verified
                        .into_iter()
                        .map(|one| one.map(|(event, _)| event))
                        .collect(),
                )
            }
            Err(err) => {
                tracing::warn!(%err, retry_in = ?backoff, messages = batch.len(), "verifying progress events failed");
                tokio::select! {
                    _ = lane.stop.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Writes a verified batch to Kafka in rounds until every event is written or `stop` is
/// set: each round is one call through the Kafka breaker for the events not yet written
/// (enqueued in arrival order); the written ones are acknowledged, the others wait a
/// backoff (0.2 s doubling to 10 s) and go again together. While the breaker is open a
/// round tries nothing and only waits. At shutdown what is not written is never
/// acknowledged (a persistent session redelivers it).
async fn produce(
    lane: Lane,
    events: EventProducer,
    health: Arc<ChannelHealth>,
    sends: Vec<(Accepted, VehicleEvent)>,
) {
    let mut pending = sends;
    let mut backoff = crate::events::BACKOFF_START;
    loop {
        let outcomes = tokio::select! {
            biased;
            _ = lane.stop.cancelled() => None,
            outcomes = events.send_many(pending.iter().map(|(_, event)| event)) => Some(outcomes),
        };
        let Some(outcomes) = outcomes else {
            break;
        };
        let mut failed = Vec::new();
        let mut kafka_error = None;
        for ((accepted, event), outcome) in pending.into_iter().zip(outcomes) {
            match outcome {
                Ok(()) => {
                    metrics::counter!("ota_vehicle_events_produced_total").increment(1);
                    finish(&lane, &health, accepted, true);
                }
                Err(err) => {
                    let reason = match err {
                        LaneError::BreakerOpen => "breaker_open",
                        LaneError::Kafka(err) => {
                            kafka_error.get_or_insert(err);
                            "kafka"
                        }
                    };
                    metrics::counter!("ota_vehicle_events_produce_failures_total", "reason" => reason)
                        .increment(1);
                    failed.push((accepted, event));
                }
            }
        }
        lane.acks.flush(&lane.client, &lane.stop).await;
        pending = failed;
        if pending.is_empty() {
            return;
        }
        if let Some(err) = kafka_error {
            tracing::warn!(%err, events = pending.len(), retry_in = ?backoff, "writing vehicle events to Kafka failed");
        }
        // Kafka is failing (or known to be, with the breaker open): wait, the MQTT
        // messages unacknowledged meanwhile.
        tokio::select! {
            _ = lane.stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(crate::events::BACKOFF_MAX);
    }
    for (accepted, _) in pending {
        finish(&lane, &health, accepted, false);
    }
}

/// Records a message's outcome (acknowledge it or never) and releases its slot.
fn finish(lane: &Lane, health: &ChannelHealth, accepted: Accepted, acknowledge: bool) {
    let Accepted {
        ticket,
        publish,
        slot,
        ..
    } = accepted;
    lane.acks
        .order()
        .finish(ticket, acknowledge.then_some(publish));
    if acknowledge {
        health.handled.fetch_add(1, Ordering::Relaxed);
        health.workers_progressed();
    }
    health.pending_in.fetch_sub(1, Ordering::Relaxed);
    drop(slot);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_core::protocol::MessageError;

    #[test]
    fn a_verified_event_is_produced_with_its_signed_bytes() {
        let event = ProgressEvent {
            vehicle_id: "v1".into(),
            deployment_id: "d1".into(),
            sequence: 3,
            phase: ota_core::protocol::ProgressPhase::Downloading,
            bytes_done: 0,
            bytes_total: 10,
            reason_code: None,
            at: ota_core::time::Timestamp::from_unix_seconds(1_700_000_000).unwrap(),
        };
        let Disposition::Produce(produced) = disposition(Ok(event), b"signed", 42) else {
            panic!("a verified event must be produced");
        };
        assert_eq!(
            (
                produced.vehicle_id.as_str(),
                produced.sequence,
                produced.received_at_ms
            ),
            ("v1", 3, 42)
        );
        let (_, signed) = crate::events::decode_event(&serde_json::to_vec(&produced).unwrap())
            .expect("a valid record");
        assert_eq!(signed, b"signed");
    }

    #[test]
    fn a_rejected_message_is_dropped_with_its_reason() {
        assert_eq!(
            disposition(Err(Rejected::Message(MessageError::BadSignature)), b"x", 0),
            Disposition::Drop("bad_signature")
        );
        assert_eq!(
            disposition(Err(Rejected::UnknownVehicle("v9".into())), b"x", 0),
            Disposition::Drop("unknown_vehicle")
        );
    }
}
