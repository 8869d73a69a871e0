//! The durable lane for progress events (`../shared/DESIGN.md` §6): the gateway
//! produces each verified progress message to Kafka (`ota.vehicle-events`, keyed by
//! vehicle id, idempotent producer, `acks=all`) and acknowledges the MQTT message only
//! after Kafka acknowledged the write; the rollout engine's consumer (group
//! `ota-rollout-engine`) re-verifies each event (a signature the gateway of the same
//! process checked is remembered, not checked again: `engine::intake::VerifiedMemo`),
//! applies it idempotently and commits
//! its offset only after the database write. Check-ins stay on the MQTT fast path.
//!
//! The event is a versioned JSON envelope ([`VehicleEvent`]) whose contract is the JSON
//! Schema `docs/schemas/ota.vehicle-events.progress.v1.json`: the signed message as
//! received (base64), so any consumer can verify it with the device key, beside
//! informational copies of its fields.

use crate::api::dependencies::KafkaBreaker;
use crate::engine::plan::RolloutChange;
use crate::engine::{wall_clock_ms, Engine, NowMs};
use crate::settings::KafkaSettings;
use base64::Engine as _;
use ota_core::protocol::ProgressEvent;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tower::{Layer as _, Service as _, ServiceExt as _};
use tower_resilience_circuitbreaker::CircuitBreakerError;

/// The schema name and version every progress event carries.
pub const PROGRESS_SCHEMA: &str = "ota.vehicle-events.progress";
pub const PROGRESS_SCHEMA_VERSION: u32 = 1;

/// Retrying a Kafka write or a database write of the consumer: 0.2 s doubling to 10 s,
/// so a Kafka back from an outage is written to within 10 s.
pub(crate) const BACKOFF_START: Duration = Duration::from_millis(200);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The longest pause after a read error. librdkafka reports broker errors as events and
/// reconnects by itself; a long pause per reported error would only delay the consumer's
/// return after an outage (up to 10 s per queued error).
const READ_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// One event on `ota.vehicle-events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VehicleEvent {
    pub schema: String,
    pub schema_version: u32,
    /// The vehicle the MQTT topic named (and the message claims): the Kafka key.
    pub vehicle_id: String,
    pub deployment_id: String,
    pub sequence: u64,
    /// The progress phase, as in the signed message.
    pub phase: String,
    /// When the gateway received the message, milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// The signed message (a DSSE envelope) exactly as received, base64.
    pub message: String,
}

/// Why a record on the topic is not an event this server applies.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("not a vehicle event: {0}")]
    Malformed(String),
    #[error("unsupported schema {schema:?} version {version}")]
    Unsupported { schema: String, version: u32 },
}

impl EventError {
    pub fn label(&self) -> &'static str {
        match self {
            EventError::Malformed(_) => "malformed_event",
            EventError::Unsupported { .. } => "unsupported_schema",
        }
    }
}

/// The envelope for a verified progress message.
pub fn progress_event(event: &ProgressEvent, signed: &[u8], received_at_ms: NowMs) -> VehicleEvent {
    VehicleEvent {
        schema: PROGRESS_SCHEMA.to_owned(),
        schema_version: PROGRESS_SCHEMA_VERSION,
        vehicle_id: event.vehicle_id.clone(),
        deployment_id: event.deployment_id.clone(),
        sequence: event.sequence,
        phase: event.phase.as_str().to_owned(),
        received_at_ms,
        message: base64::engine::general_purpose::STANDARD.encode(signed),
    }
}

/// Parses a record's value; returns the event and the signed message's bytes.
pub fn decode_event(bytes: &[u8]) -> Result<(VehicleEvent, Vec<u8>), EventError> {
    #[derive(Deserialize)]
    struct Header {
        schema: String,
        schema_version: u32,
    }
    let header: Header =
        serde_json::from_slice(bytes).map_err(|e| EventError::Malformed(e.to_string()))?;
    if header.schema != PROGRESS_SCHEMA || header.schema_version != PROGRESS_SCHEMA_VERSION {
        return Err(EventError::Unsupported {
            schema: header.schema,
            version: header.schema_version,
        });
    }
    let event: VehicleEvent =
        serde_json::from_slice(bytes).map_err(|e| EventError::Malformed(e.to_string()))?;
    let signed = base64::engine::general_purpose::STANDARD
        .decode(&event.message)
        .map_err(|e| EventError::Malformed(format!("message: {e}")))?;
    Ok((event, signed))
}

fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set(
            "bootstrap.servers",
            settings.brokers.as_deref().unwrap_or_default(),
        )
        .set("client.id", "ota-server")
        // A broker back from an outage is found within 2 s.
        .set("reconnect.backoff.max.ms", "2000")
        .set("socket.keepalive.enable", "true");
    config
}

/// An idempotent producer with `acks=all`: a write is acknowledged once every in-sync
/// replica has it, and a retried write is never duplicated.
fn producer(settings: &KafkaSettings) -> Result<FutureProducer, KafkaError> {
    client_config(settings)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set(
            "message.timeout.ms",
            settings.delivery_timeout_ms.max(1000).to_string(),
        )
        .create()
}

/// Errors after which an idempotent producer never writes again (seen with tansu after a
/// 30 s outage: every later write `ProducerFenced`): its producer id or epoch is gone.
fn lost_producer_state(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::UnknownProducerId
            | RDKafkaErrorCode::InvalidProducerIdMapping
            | RDKafkaErrorCode::OutOfOrderSequenceNumber
    )
}

/// The lane's producer, replaced by a new one after a fatal error. An idempotent
/// producer that hits one (e.g. `ProducerFenced` when a broker back from an outage has
/// forgotten its producer id) refuses every later write for good; the replacement gets a
/// new producer id. Records the old one had not written are sent again by the callers'
/// retries, so the topic may hold a duplicate, which the consumer ignores by sequence.
///
/// Every write goes through the Kafka dependency breaker (`api::dependencies`): while it
/// is open, writes fail at once with [`LaneError::BreakerOpen`].
#[derive(Clone)]
pub(crate) struct LaneProducer {
    settings: KafkaSettings,
    current: Arc<std::sync::RwLock<(u64, FutureProducer)>>,
    breaker: KafkaBreaker,
}

/// A batch ([`LaneProducer::send_many`]) that counts as a failed call: every record's
/// outcome, in order.
struct PartlyWritten(Vec<Result<(), KafkaError>>);

/// Whether a batch of writes counts as a failed call: at least `failure_share` of its
/// records failed (pure). A batch of one fails exactly when its record failed.
fn batch_failed<T, E>(results: &[Result<T, E>], failure_share: f64) -> bool {
    let failed = results.iter().filter(|r| r.is_err()).count();
    failed > 0 && failed as f64 >= failure_share * results.len() as f64
}

/// Why a write to Kafka did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The Kafka breaker is open: the write was not tried.
    #[error("the Kafka breaker is open: the write was not tried")]
    BreakerOpen,
}

impl LaneProducer {
    pub(crate) fn new(
        settings: &KafkaSettings,
        breaker: KafkaBreaker,
    ) -> Result<LaneProducer, KafkaError> {
        Ok(LaneProducer {
            settings: settings.clone(),
            current: Arc::new(std::sync::RwLock::new((0, producer(settings)?))),
            breaker,
        })
    }

    /// Writes one record through the breaker ([`LaneProducer::send_many`] of one).
    pub(crate) async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
    ) -> Result<(), LaneError> {
        let mut results = self
            .send_many(topic, vec![(key.to_owned(), payload.to_vec())])
            .await?;
        results.pop().unwrap_or(Ok(())).map_err(LaneError::Kafka)
    }

    /// Writes many records to `topic` as one call through the breaker, each `(key,
    /// value)`: every record's outcome, in order, or [`LaneError::BreakerOpen`] when the
    /// breaker refused the call (nothing was tried). The call counts as one failure for
    /// the breaker when the share of its records that failed reaches the breaker's
    /// failure share ([`KafkaBreaker`]), else as one success.
    ///
    /// One call per batch rather than per record: the breaker's time window keeps one
    /// entry per call and scans them all on every call, which at thousands of records a
    /// second cost about a sixth of the server's CPU (docs/fleet-bench.md, session 15).
    pub(crate) async fn send_many(
        &self,
        topic: &str,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<Result<(), KafkaError>>, LaneError> {
        let lane = self.clone();
        let topic = topic.to_owned();
        let failure_share = self.breaker.failure_share;
        let write = tower::service_fn(move |records: Vec<(String, Vec<u8>)>| {
            let (lane, topic) = (lane.clone(), topic.clone());
            async move {
                let writes = records
                    .iter()
                    .map(|(key, payload)| lane.write(&topic, key, payload));
                let results = futures_util::future::join_all(writes).await;
                if batch_failed(&results, failure_share) {
                    Err(PartlyWritten(results))
                } else {
                    Ok(results)
                }
            }
        });
        let mut guarded = self.breaker.layer.layer(write);
        let written = match guarded.ready().await {
            Ok(ready) => ready.call(records).await,
            Err(err) => Err(err),
        };
        match written {
            Ok(results) => Ok(results),
            Err(CircuitBreakerError::Inner(PartlyWritten(results))) => Ok(results),
            Err(CircuitBreakerError::OpenCircuit) => Err(LaneError::BreakerOpen),
        }
    }

    async fn write(&self, topic: &str, key: &str, payload: &[u8]) -> Result<(), KafkaError> {
        let (generation, producer) = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let record = FutureRecord::to(topic).key(key).payload(payload);
        let sent = producer.send(record, Timeout::Never).await;
        match sent {
            Ok(_) => Ok(()),
            Err((err, _)) => {
                if let Some((code, reason)) = producer.client().fatal_error() {
                    self.replace(generation, code, &reason);
                } else if let Some(code) =
                    err.rdkafka_error_code().filter(|c| lost_producer_state(*c))
                {
                    self.replace(generation, code, "the broker no longer knows this producer");
                }
                Err(err)
            }
        }
    }

    /// Replaces producer `generation` (unless another caller already did).
    fn replace(&self, generation: u64, code: RDKafkaErrorCode, reason: &str) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.0 != generation {
            return;
        }
        match producer(&self.settings) {
            Ok(fresh) => {
                metrics::counter!("ota_kafka_producers_replaced_total").increment(1);
                tracing::warn!(
                    ?code,
                    reason,
                    "the Kafka producer hit a fatal error; replaced by a new one"
                );
                *current = (generation + 1, fresh);
            }
            Err(err) => tracing::error!(%err, "replacing the failed Kafka producer failed"),
        }
    }
}

/// The gateway's producer: idempotent, `acks=all`.
#[derive(Clone)]
pub struct EventProducer {
    producer: LaneProducer,
    topic: String,
}

impl std::fmt::Debug for EventProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventProducer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl EventProducer {
    pub fn new(
        settings: &KafkaSettings,
        breaker: KafkaBreaker,
    ) -> Result<EventProducer, KafkaError> {
        Ok(EventProducer {
            producer: LaneProducer::new(settings, breaker)?,
            topic: settings.topic.clone(),
        })
    }

    /// The producer itself, shared with the rollout-events relay (one idempotent
    /// producer and one Kafka breaker per process).
    pub(crate) fn lane(&self) -> LaneProducer {
        self.producer.clone()
    }

    /// Writes one event and waits until Kafka acknowledged it (or the delivery timeout,
    /// or at once while the Kafka breaker is open).
    pub async fn send(&self, event: &VehicleEvent) -> Result<(), LaneError> {
        let payload = serde_json::to_vec(event).unwrap_or_default();
        self.producer
            .send(&self.topic, &event.vehicle_id, &payload)
            .await
    }

    /// Writes many events in one call through the Kafka breaker ([`LaneProducer::send_many`]):
    /// each event's outcome, in order. While the breaker is open every event gets
    /// [`LaneError::BreakerOpen`] (nothing was tried).
    pub async fn send_many<'a>(
        &self,
        events: impl IntoIterator<Item = &'a VehicleEvent>,
    ) -> Vec<Result<(), LaneError>> {
        let records: Vec<(String, Vec<u8>)> = events
            .into_iter()
            .map(|event| {
                (
                    event.vehicle_id.clone(),
                    serde_json::to_vec(event).unwrap_or_default(),
                )
            })
            .collect();
        let count = records.len();
        match self.producer.send_many(&self.topic, records).await {
            Ok(results) => results
                .into_iter()
                .map(|result| result.map_err(LaneError::Kafka))
                .collect(),
            Err(_) => (0..count).map(|_| Err(LaneError::BreakerOpen)).collect(),
        }
    }
}

/// Creates the events topic if it does not exist (brokers such as tansu do not create
/// topics on first use).
pub async fn ensure_topic(settings: &KafkaSettings, name: &str) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(settings).create()?;
    let topic = NewTopic::new(
        name,
        settings.partitions,
        TopicReplication::Fixed(settings.replication_factor),
    );
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    for result in admin.create_topics([&topic], &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(())
}

/// The schema name and version of every rollout event.
pub const ROLLOUT_SCHEMA: &str = "ota.rollout-events.change";
/// Version 2 added `event_id`, when events moved to the transactional outbox.
pub const ROLLOUT_SCHEMA_VERSION: u32 = 2;

/// A rollout's state as a rollout event reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSide {
    pub state: String,
    pub phase: usize,
    pub breaker: String,
}

/// One event on `ota.rollout-events`: a committed rollout change (operator action,
/// phase advance, breaker move), keyed by rollout id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutEvent {
    pub schema: String,
    pub schema_version: u32,
    /// Increasing in commit order across all rollouts (the outbox row's id): a
    /// consumer that has seen an id drops the event as a duplicate (delivery is at least
    /// once).
    pub event_id: i64,
    pub rollout_id: String,
    /// The audited actions of the change, e.g. `["rollout.breaker", "rollout.rollback"]`.
    pub actions: Vec<String>,
    pub from: RolloutSide,
    pub to: RolloutSide,
    /// Why the breaker opened, when it did.
    pub breaker_reason: Option<String>,
    /// When the change was made, milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// The event for a change (pure); `event_id` is 0 until the relay publishes it with
/// its outbox id (`rollout_relay::with_event_id`).
pub fn rollout_event(change: &RolloutChange) -> RolloutEvent {
    RolloutEvent {
        schema: ROLLOUT_SCHEMA.to_owned(),
        schema_version: ROLLOUT_SCHEMA_VERSION,
        event_id: 0,
        rollout_id: change.rollout_id.clone(),
        actions: change.audit.iter().map(|a| a.action.clone()).collect(),
        from: RolloutSide {
            state: change.expected.state.as_str().to_owned(),
            phase: change.expected.phase,
            breaker: change.expected.breaker.as_str().to_owned(),
        },
        to: RolloutSide {
            state: change.state.as_str().to_owned(),
            phase: change.current_phase,
            breaker: change.breaker_state.as_str().to_owned(),
        },
        breaker_reason: change.breaker_reason.clone(),
        at_ms: change.now_ms,
    }
}

/// What the consumer did with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Changed,
    /// A duplicate or out-of-order event: nothing to do.
    Unchanged,
    /// Not applicable (malformed, unknown schema, no longer verifying): skipped, counted.
    Skipped(&'static str),
}

/// Re-verifies (keys may have been rotated since the gateway checked) and applies one
/// record's value, then supervises its rollout. `Err` only for a database failure: the
/// record must be retried.
pub async fn apply_record(
    engine: &Engine,
    value: &[u8],
    now: NowMs,
) -> Result<Applied, crate::store::StoreError> {
    let (applied, rollout) = record_event(engine, value, now).await?;
    if let Some(rollout) = rollout {
        engine.supervise(&rollout, now).await?;
    }
    Ok(applied)
}

/// [`apply_record`] without the supervision: also returns the rollout the event
/// changed, which the caller supervises (once for many events).
pub async fn record_event(
    engine: &Engine,
    value: &[u8],
    now: NowMs,
) -> Result<(Applied, Option<String>), crate::store::StoreError> {
    Ok(record_events(engine, &[value], now).await?.remove(0))
}

/// Applies many records' values as [`record_event`] applies each alone, in order, with
/// two reads and one transaction for all of them: the consumer's batch. `Err` only for a
/// database failure, after which nothing of the batch was written (retry it whole; the
/// writes are idempotent).
pub async fn record_events(
    engine: &Engine,
    values: &[&[u8]],
    now: NowMs,
) -> Result<Vec<(Applied, Option<String>)>, crate::store::StoreError> {
    let decoded: Vec<Result<(VehicleEvent, Vec<u8>), EventError>> =
        values.iter().map(|value| decode_event(value)).collect();
    let messages: Vec<(&str, &[u8])> = decoded
        .iter()
        .filter_map(|d| d.as_ref().ok())
        .map(|(event, signed)| (event.vehicle_id.as_str(), signed.as_slice()))
        .collect();
    let mut verified = engine.verify_progress_batch(&messages).await?.into_iter();
    // Per record: skipped, or the index of its verified event in `accepted`.
    let mut outcomes: Vec<Result<usize, &'static str>> = Vec::with_capacity(values.len());
    let mut accepted = Vec::new();
    for d in &decoded {
        outcomes.push(match d {
            Err(err) => Err(err.label()),
            Ok(_) => match verified.next() {
                Some(Ok(event)) => {
                    accepted.push(event);
                    Ok(accepted.len() - 1)
                }
                Some(Err(crate::engine::Rejected::Store(err))) => return Err(err),
                Some(Err(rejected)) => Err(rejected.label()),
                None => unreachable!("one verification per decoded record"),
            },
        });
    }
    let changed = engine.record_progress_batch(&accepted, now).await?;
    Ok(outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Err(reason) => (Applied::Skipped(reason), None),
            Ok(i) if changed[i] => (Applied::Changed, Some(accepted[i].1.rollout_id.clone())),
            Ok(_) => (Applied::Unchanged, None),
        })
        .collect())
}

/// Records the consumer applies in one database transaction, at most.
pub const CONSUME_BATCH: usize = 256;

/// Records applied before the rollouts they touched are supervised, at most.
pub const SUPERVISE_EVERY_RECORDS: usize = 256;
/// Time from the first unsupervised change to its rollout's supervision, at most
/// (while records keep arriving; when none is waiting, supervision runs at once).
pub const SUPERVISE_WITHIN: Duration = Duration::from_millis(100);

/// The rollout engine's group consumer: no auto-commit (offsets are committed after
/// the database write), from the earliest record when the group has no offset yet.
pub(crate) fn engine_consumer(settings: &KafkaSettings) -> Result<StreamConsumer, KafkaError> {
    client_config(settings)
        .set("group.id", &settings.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // A topic created after the consumer subscribed is found within 10 s, not 5 min.
        .set("topic.metadata.refresh.interval.ms", "10000")
        .create()
}

/// The rollout engine's consumer: runs until `shutdown`, reconnecting by itself (the
/// client library retries brokers). It takes every record already waiting, up to
/// [`CONSUME_BATCH`], applies them in one database transaction, and commits their
/// offsets only after that; a database failure retries the same batch.
pub async fn run_consumer(
    settings: KafkaSettings,
    engine: Engine,
    mut shutdown: watch::Receiver<bool>,
) {
    let consumer = match engine_consumer(&settings) {
        Ok(consumer) => consumer,
        Err(err) => {
            tracing::error!(%err, "creating the Kafka consumer failed; vehicle events are not applied");
            return;
        }
    };
    if let Err(err) = consumer.subscribe(&[&settings.topic]) {
        tracing::error!(%err, "subscribing to the events topic failed");
        return;
    }
    tracing::info!(
        topic = settings.topic,
        group = settings.group,
        "rollout engine consuming vehicle events"
    );
    let (mut backoff, mut read_backoff) = (BACKOFF_START, BACKOFF_START);
    let mut supervision = Supervision::default();
    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            message = consumer.recv() => message,
        };
        let mut batch = match first {
            Ok(message) => vec![message],
            Err(err) => {
                tracing::warn!(%err, retry_in = ?read_backoff, "reading vehicle events failed");
                tokio::select! {
                    _ = shutdown.wait_for(|stopped| *stopped) => return,
                    _ = tokio::time::sleep(read_backoff) => {}
                }
                read_backoff = (read_backoff * 2).min(READ_BACKOFF_MAX);
                continue;
            }
        };
        read_backoff = BACKOFF_START;
        // Whatever is already waiting joins the batch; a read error ends it (the next
        // round reports it).
        while batch.len() < CONSUME_BATCH {
            match futures_util::FutureExt::now_or_never(consumer.recv()) {
                Some(Ok(message)) => batch.push(message),
                _ => break,
            }
        }
        let drained = batch.len() < CONSUME_BATCH;
        let values: Vec<&[u8]> = batch
            .iter()
            .map(|m| m.payload().unwrap_or_default())
            .collect();
        // The same records until they are applied: committing later offsets would skip
        // them.
        let applied = loop {
            match record_events(&engine, &values, wall_clock_ms()).await {
                Ok(applied) => break applied,
                Err(err) => {
                    tracing::warn!(%err, retry_in = ?backoff, records = values.len(), "applying vehicle events failed");
                    tokio::select! {
                        _ = shutdown.wait_for(|stopped| *stopped) => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        };
        backoff = BACKOFF_START;
        for (applied, rollout) in applied {
            let outcome = match applied {
                Applied::Changed => "applied",
                Applied::Unchanged => "unchanged",
                Applied::Skipped(reason) => {
                    tracing::debug!(reason, "vehicle event skipped");
                    reason
                }
            };
            metrics::counter!("ota_vehicle_events_consumed_total", "outcome" => outcome)
                .increment(1);
            supervision.touched(rollout, tokio::time::Instant::now());
        }
        if let Err(err) = consumer.commit(&next_offsets(&batch), CommitMode::Async) {
            // Not fatal: the next commit covers these offsets; a restart re-applies the
            // records, which is idempotent.
            tracing::warn!(%err, "committing vehicle events' offsets failed");
        }
        drop(batch);
        if supervision.due(drained, tokio::time::Instant::now()) {
            supervise_all(&engine, supervision.take()).await;
        }
    }
}

/// The offsets to commit after `batch`: per partition, one past its last record.
fn next_offsets<M: Message>(batch: &[M]) -> TopicPartitionList {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for m in batch {
        let offset = next.entry((m.topic(), m.partition())).or_insert(0);
        *offset = (*offset).max(m.offset() + 1);
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        // Only fails for an invalid offset, which `offset + 1` of a record never is.
        let _ = list.add_partition_offset(topic, partition, Offset::Offset(offset));
    }
    list
}

/// When the rollouts that applied records touched get supervised (pure, `now` passed
/// in): at once when no record is waiting, else after [`SUPERVISE_EVERY_RECORDS`]
/// records or [`SUPERVISE_WITHIN`] since the first unsupervised change, whichever comes
/// first, so one aggregate read serves many events without delaying a breaker.
#[derive(Debug, Default)]
struct Supervision {
    rollouts: BTreeSet<String>,
    records: usize,
    since: Option<tokio::time::Instant>,
}

impl Supervision {
    /// One applied record, with the rollout it changed, if any.
    fn touched(&mut self, rollout: Option<String>, now: tokio::time::Instant) {
        self.records += 1;
        if let Some(rollout) = rollout {
            self.since.get_or_insert(now);
            self.rollouts.insert(rollout);
        }
    }

    /// Whether to supervise now; `drained`: no record is waiting.
    fn due(&self, drained: bool, now: tokio::time::Instant) -> bool {
        let Some(since) = self.since else {
            return false;
        };
        drained
            || self.records >= SUPERVISE_EVERY_RECORDS
            || now.saturating_duration_since(since) >= SUPERVISE_WITHIN
    }

    /// The rollouts to supervise; starts over.
    fn take(&mut self) -> BTreeSet<String> {
        self.records = 0;
        self.since = None;
        std::mem::take(&mut self.rollouts)
    }
}

/// Supervises every rollout in `rollouts`. A failure is logged: the
/// engine's tick supervises every active rollout again within a second.
async fn supervise_all(engine: &Engine, rollouts: BTreeSet<String>) {
    for rollout in rollouts {
        if let Err(err) = engine.supervise(&rollout, wall_clock_ms()).await {
            tracing::warn!(%err, rollout, "supervising after vehicle events failed; the tick retries");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_core::protocol::ProgressPhase;
    use ota_core::time::Timestamp;

    /// The gateway writes a batch of progress as one call through the Kafka breaker: one
    /// entry in its window however many records, a failure when any record failed (each
    /// record's own outcome still returned), and once open every record of a batch is
    /// refused without being tried. Kafka here is a loopback port nothing listens on.
    #[tokio::test]
    async fn a_batch_is_one_call_through_the_kafka_breaker() {
        use crate::api::dependencies::{Dependency, DependencyBreakers};
        use tower_resilience_circuitbreaker::CircuitState;
        let breakers = DependencyBreakers::new(&crate::settings::DependencyBreakerSettings {
            minimum_calls: 2,
            open_seconds: 600,
            ..Default::default()
        });
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = unused.local_addr().unwrap().to_string();
        drop(unused);
        let settings = KafkaSettings {
            brokers: Some(address),
            delivery_timeout_ms: 1000,
            ..KafkaSettings::default()
        };
        let lane = LaneProducer::new(&settings, breakers.kafka.clone()).unwrap();
        let batch =
            || -> Vec<(String, Vec<u8>)> { (0..5u8).map(|i| (format!("v{i}"), vec![i])).collect() };
        let first = lane.send_many("t", batch()).await.expect("tried");
        assert_eq!(first.len(), 5, "an outcome per record");
        assert!(first.iter().all(Result::is_err), "nothing was written");
        assert_eq!(
            breakers.kafka_window().await,
            (1, 1),
            "five records, one failed call"
        );
        assert_eq!(breakers.state(Dependency::Kafka), CircuitState::Closed);
        lane.send_many("t", batch()).await.expect("tried");
        assert_eq!(
            breakers.state(Dependency::Kafka),
            CircuitState::Open,
            "two failed calls of the two needed"
        );
        assert!(matches!(
            lane.send_many("t", batch()).await,
            Err(LaneError::BreakerOpen)
        ));
        let events = EventProducer {
            producer: lane,
            topic: "t".to_owned(),
        };
        let one = progress_event(&progress(), b"signed", 0);
        let refused = events.send_many([&one, &one]).await;
        assert!(
            refused
                .iter()
                .all(|r| matches!(r, Err(LaneError::BreakerOpen))),
            "every event of a refused batch is refused"
        );
    }

    #[test]
    fn a_batch_is_a_failed_call_from_the_breakers_failure_share_of_its_records() {
        let (ok, err) = (Ok::<(), ()>(()), Err::<(), ()>(()));
        for (results, share, failed) in [
            (vec![], 0.5, false),
            (vec![ok], 0.5, false),
            (vec![err], 0.5, true),
            (vec![err], 1.0, true),
            (vec![ok, err], 0.5, true),
            (vec![ok, ok, err], 0.5, false),
            (vec![ok, ok, err], 0.3, true),
            (vec![ok, err], 1.0, false),
            (vec![err, err], 1.0, true),
            (vec![ok, ok, ok, err], 0.01, true),
        ] {
            assert_eq!(
                batch_failed(&results, share),
                failed,
                "{results:?} at a failure share of {share}"
            );
        }
    }

    fn progress() -> ProgressEvent {
        ProgressEvent {
            vehicle_id: "veh-1".to_owned(),
            deployment_id: "dep-1".to_owned(),
            sequence: 3,
            phase: ProgressPhase::RolledBack,
            bytes_done: 0,
            bytes_total: 0,
            reason_code: None,
            at: Timestamp::parse("2027-01-01T00:00:00Z").unwrap(),
        }
    }

    #[test]
    fn rollout_events_match_the_published_schema() {
        use crate::breaker::BreakerState;
        use crate::engine::plan::{plan, Facts, RolloutRequest};
        use crate::rollout::{RolloutAction, RolloutState};
        let schema: serde_json::Value = serde_json::from_str(include_str!(
            "../../docs/schemas/ota.rollout-events.change.v2.json"
        ))
        .unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let mut record = crate::store::RolloutRecord {
            id: "ro_1".to_owned(),
            name: "r".to_owned(),
            release_id: "rel_1".to_owned(),
            spec: crate::rollout::tests::spec(&[(10.0, 0), (100.0, 0)]),
            salt: "00".to_owned(),
            state: RolloutState::Draft,
            current_phase: 0,
            phase_started_ms: None,
            breaker_state: BreakerState::Closed,
            breaker_reason: None,
            window_start_ms: 0,
            created_at: String::new(),
            updated_at: String::new(),
        };
        let start = plan(
            &record,
            &RolloutRequest::Operator(RolloutAction::Start),
            &Facts::default(),
            5,
        )
        .unwrap();
        let event = rollout_event(&start);
        assert_eq!(
            (event.from.state.as_str(), event.to.state.as_str()),
            ("draft", "running")
        );
        assert_eq!(event.actions, ["rollout.start"]);
        record.state = RolloutState::Running;
        record.phase_started_ms = Some(5);
        let open = plan(
            &record,
            &RolloutRequest::Breaker {
                to: BreakerState::Open,
                reason: Some("30% failed".to_owned()),
            },
            &Facts::default(),
            9,
        )
        .unwrap();
        let event = rollout_event(&open);
        assert_eq!(event.actions, ["rollout.breaker", "rollout.pause"]);
        assert_eq!(event.breaker_reason.as_deref(), Some("30% failed"));
        for (id, change) in [(1, &start), (2, &open)] {
            // As the relay publishes it: the stored event with its outbox id.
            let stored = crate::store::OutboxRow {
                id,
                rollout_id: change.rollout_id.clone(),
                event: serde_json::to_string(&rollout_event(change)).unwrap(),
            };
            assert!(
                !validator.is_valid(&serde_json::from_str(&stored.event).unwrap()),
                "an event without its outbox id is not publishable"
            );
            let published = crate::rollout_relay::with_event_id(&stored);
            let value: serde_json::Value = serde_json::from_slice(&published).unwrap();
            assert_eq!(
                serde_json::from_value::<RolloutEvent>(value.clone())
                    .unwrap()
                    .event_id,
                id
            );
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{value}: {errors:?}");
        }
        let mut wrong = serde_json::to_value(rollout_event(&open)).unwrap();
        wrong["event_id"] = serde_json::json!(3);
        wrong["to"]["state"] = serde_json::json!("exploded");
        assert!(
            !validator.is_valid(&wrong),
            "the schema must refuse an unknown state"
        );
    }

    #[test]
    fn offsets_committed_are_one_past_each_partitions_last_record() {
        use rdkafka::message::{OwnedMessage, Timestamp as KafkaTimestamp};
        let record = |topic: &str, partition, offset| {
            OwnedMessage::new(
                None,
                None,
                topic.to_owned(),
                KafkaTimestamp::NotAvailable,
                partition,
                offset,
                None,
            )
        };
        let batch = [
            record("events", 0, 7),
            record("events", 1, 3),
            record("events", 0, 9),
            record("events", 0, 8),
            record("other", 0, 2),
        ];
        let list = next_offsets(&batch);
        let mut committed: Vec<(String, i32, Offset)> = list
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition(), e.offset()))
            .collect();
        committed.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        assert_eq!(
            committed,
            [
                ("events".to_owned(), 0, Offset::Offset(10)),
                ("events".to_owned(), 1, Offset::Offset(4)),
                ("other".to_owned(), 0, Offset::Offset(3)),
            ]
        );
    }

    #[test]
    fn supervision_waits_for_a_drained_queue_a_record_count_or_a_deadline() {
        let start = tokio::time::Instant::now();
        let mut s = Supervision::default();
        s.touched(None, start);
        assert!(!s.due(true, start), "nothing changed: nothing to supervise");
        s.touched(Some("ro-1".to_owned()), start);
        assert!(s.due(true, start), "nothing waiting: supervise at once");
        assert!(!s.due(false, start), "records waiting: keep applying");
        let almost = start + SUPERVISE_WITHIN - Duration::from_millis(1);
        assert!(!s.due(false, almost));
        assert!(s.due(false, start + SUPERVISE_WITHIN), "the deadline");
        for _ in 3..SUPERVISE_EVERY_RECORDS {
            s.touched(None, start);
        }
        assert!(!s.due(false, start), "one record short of the count");
        s.touched(Some("ro-2".to_owned()), start);
        assert!(s.due(false, start), "the record count");
        assert_eq!(
            s.take().into_iter().collect::<Vec<_>>(),
            ["ro-1", "ro-2"],
            "each touched rollout once"
        );
        assert!(!s.due(true, start), "taken: starts over");
        s.touched(Some("ro-3".to_owned()), start + SUPERVISE_WITHIN);
        assert!(
            !s.due(false, start + SUPERVISE_WITHIN),
            "the deadline counts from the first change after the last supervision"
        );
    }

    #[test]
    fn events_round_trip_with_the_signed_bytes_exactly() {
        let signed = b"{\"payloadType\":\"x\"}\n\xff".to_vec();
        let event = progress_event(&progress(), &signed, 1_700_000_000_000);
        assert_eq!(
            (
                event.phase.as_str(),
                event.schema.as_str(),
                event.schema_version
            ),
            ("rolled_back", PROGRESS_SCHEMA, 1)
        );
        let bytes = serde_json::to_vec(&event).unwrap();
        let (decoded, message) = decode_event(&bytes).unwrap();
        assert_eq!((decoded, message), (event, signed));
    }

    #[test]
    fn produced_events_match_the_published_schema_for_every_phase() {
        let schema: serde_json::Value = serde_json::from_str(include_str!(
            "../../docs/schemas/ota.vehicle-events.progress.v1.json"
        ))
        .unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let phases = [
            ProgressPhase::Downloading,
            ProgressPhase::Downloaded,
            ProgressPhase::Verified,
            ProgressPhase::Installing,
            ProgressPhase::Installed,
            ProgressPhase::Rebooting,
            ProgressPhase::HealthCheck,
            ProgressPhase::Committed,
            ProgressPhase::Failed,
            ProgressPhase::RolledBack,
        ];
        for phase in phases {
            let event = progress_event(
                &ProgressEvent {
                    phase,
                    ..progress()
                },
                b"signed",
                1,
            );
            let document = serde_json::to_value(&event).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&document)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{phase:?}: {errors:?}");
        }
        let mut document = serde_json::to_value(progress_event(&progress(), b"m", 1)).unwrap();
        document["phase"] = "exploded".into();
        assert!(
            !validator.is_valid(&document),
            "an unknown phase breaks the contract"
        );
    }

    #[test]
    fn other_schemas_and_versions_are_refused() {
        let mut event = progress_event(&progress(), b"m", 0);
        event.schema_version = 2;
        let err = decode_event(&serde_json::to_vec(&event).unwrap()).unwrap_err();
        assert_eq!(err.label(), "unsupported_schema");
        event.schema_version = 1;
        event.schema = "ota.vehicle-events.checkin".to_owned();
        let err = decode_event(&serde_json::to_vec(&event).unwrap()).unwrap_err();
        assert_eq!(err.label(), "unsupported_schema");
        assert_eq!(
            decode_event(b"nope").unwrap_err().label(),
            "malformed_event"
        );
        event.schema = PROGRESS_SCHEMA.to_owned();
        event.message = "***".to_owned();
        let err = decode_event(&serde_json::to_vec(&event).unwrap()).unwrap_err();
        assert_eq!(err.label(), "malformed_event");
    }
}
