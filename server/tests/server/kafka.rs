//! The durable progress lane against real brokers: progress published over MQTT is
//! written to Kafka (tansu) by the gateway, consumed by the rollout engine's consumer
//! group and applied to the database; every record on the topic matches the JSON Schema
//! in `docs/schemas`; a redelivered or stale event changes nothing.

use crate::helpers::{
    checkin, device_key, signed_checkin, spawn_app_with, unique, Backend, Options, TestApp,
};
use crate::mqtt::{director_metadata, progress, wait_ready, VehicleClient};
use ota_core::key::SigningKey;
use ota_core::protocol::{topic, Channel, ProgressPhase};
use ota_server::director::DeploymentStatus;
use ota_server::events::{apply_record, decode_event, progress_event, record_events, Applied};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::time::Duration;

const SCHEMA: &str = include_str!("../../../docs/schemas/ota.vehicle-events.progress.v1.json");
const ROLLOUT_SCHEMA: &str =
    include_str!("../../../docs/schemas/ota.rollout-events.change.v2.json");

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(SCHEMA).expect("the schema file is JSON");
    jsonschema::validator_for(&schema).expect("the schema file is a valid JSON Schema")
}

/// Every record on `topic`, from the beginning, as (key, value); waits (at most 20 s)
/// until at least `at_least` records were read, then reads on to the end of the
/// partition (so a count checks that nothing more was written).
async fn topic_records(brokers: &str, topic: &str, at_least: usize) -> Vec<(String, Vec<u8>)> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", unique("test-reader-"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .expect("test consumer");
        let mut partitions = TopicPartitionList::new();
        partitions
            .add_partition_offset(&topic, 0, Offset::Beginning)
            .unwrap();
        consumer
            .assign(&partitions)
            .expect("assigning the partition");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut records = Vec::new();
        let mut at_end = false;
        while records.len() < at_least || !at_end {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {at_least} records on {topic} within 20 s",
                records.len()
            );
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                if let Err(rdkafka::error::KafkaError::PartitionEOF(_)) = message {
                    at_end = true;
                    continue;
                }
                at_end = false;
                let message = message.expect("reading the topic");
                records.push((
                    String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                    message.payload().unwrap_or_default().to_vec(),
                ));
            }
        }
        records
    })
    .await
    .unwrap()
}

/// Waits (at most 30 s) until the engine's consumer group has committed every record
/// on the topic: everything produced so far has been applied.
async fn wait_consumed(app: &TestApp) {
    let kafka = app.state.settings.kafka.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka.brokers.as_deref().unwrap())
            .set("group.id", &kafka.group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("group reader");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, high) = consumer
                .fetch_watermarks(&kafka.topic, 0, Duration::from_secs(5))
                .expect("watermarks");
            let mut partitions = TopicPartitionList::new();
            partitions.add_partition(&kafka.topic, 0);
            let committed = consumer
                .committed_offsets(partitions, Duration::from_secs(5))
                .ok()
                .and_then(|list| list.find_partition(&kafka.topic, 0)?.offset().to_raw());
            // At or past the high watermark (brokers differ on where offsets start).
            if high > 0 && committed.is_some_and(|c| c >= high) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the engine's group committed {committed:?} of {high} records within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap()
}

pub(crate) async fn status_of(app: &TestApp, vid: &str, deployment: &str) -> DeploymentStatus {
    app.state
        .store
        .deployments_for_vehicle(vid)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.id == deployment)
        .expect("the deployment exists")
        .status
}

/// Waits (at most 30 s) until the deployment has `status`.
pub(crate) async fn wait_status(
    app: &TestApp,
    vid: &str,
    deployment: &str,
    status: DeploymentStatus,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = status_of(app, vid, deployment).await;
        if now == status {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deployment {deployment} is {now:?}, not {status:?}, after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An app on the test MQTT broker with the durable lane on `kafka` (None: the shared
/// test broker), ready, with `count` vehicles registered and assigned a running rollout.
async fn lane_with_deployments(
    kafka: Option<String>,
    delivery_timeout_ms: Option<u64>,
    count: usize,
) -> Option<(TestApp, VehicleClient, Vec<(String, SigningKey, String)>)> {
    let app = spawn_app_with(
        Backend::Sqlite,
        Options {
            mqtt: true,
            kafka: kafka.is_none(),
            kafka_brokers_unchecked: kafka,
            kafka_delivery_timeout_ms: delivery_timeout_ms,
            ..Options::default()
        },
    )
    .await?;
    wait_ready(&app).await;
    let hardware = unique("hw-k");
    let vehicles: Vec<(String, SigningKey)> =
        (0..count).map(|_| (unique("veh-"), device_key())).collect();
    for (vid, key) in &vehicles {
        app.register_vehicle(vid, key, &hardware, &[]).await;
    }
    let ids: Vec<&str> = vehicles.iter().map(|(v, _)| v.as_str()).collect();
    let mut client = VehicleClient::connect(&ids).await;
    let (_, _, rollout) = app
        .release_and_rollout(&hardware, json!([{ "name": "all", "percent": 100 }]))
        .await;
    let (status, body) = app
        .post(
            &format!("/api/v1/rollouts/{}/start", rollout["id"].as_str().unwrap()),
            &app.admin_token,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut assigned = Vec::new();
    for (vid, key) in vehicles {
        let c = signed_checkin(&key, &checkin(&vid, Some(("1.0.0", b"old")), 0));
        let directive = client
            .expect(
                &topic(&vid, Channel::Directive),
                Some((&vid, Channel::CheckIn, &c)),
            )
            .await;
        let deployment = director_metadata(&app, &directive).assignments[0]
            .deployment_id
            .clone();
        assigned.push((vid, key, deployment));
    }
    Some((app, client, assigned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reaches_the_database_through_kafka_as_schema_valid_events() {
    let Some((app, client, vehicles)) = lane_with_deployments(None, None, 1).await else {
        return;
    };
    let (vid, key, deployment) = &vehicles[0];
    let sent = progress(key, vid, deployment, 1, ProgressPhase::Installed);
    client.publish(vid, Channel::Progress, sent.clone()).await;
    wait_status(&app, vid, deployment, DeploymentStatus::Installed).await;

    let kafka = &app.state.settings.kafka;
    let records = topic_records(kafka.brokers.as_deref().unwrap(), &kafka.topic, 1).await;
    assert_eq!(records.len(), 1, "one event on the topic: {records:?}");
    let (record_key, value) = &records[0];
    assert_eq!(record_key, vid, "events are keyed by vehicle id");
    let document: Value = serde_json::from_slice(value).expect("events are JSON");
    let validator = validator();
    let errors: Vec<String> = validator
        .iter_errors(&document)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "the event must match docs/schemas: {errors:?}\n{document}"
    );
    let (event, message) = decode_event(value).unwrap();
    assert_eq!(message, sent, "the signed message travels as received");
    assert_eq!(
        (
            event.schema.as_str(),
            event.schema_version,
            event.deployment_id.as_str(),
            event.sequence,
            event.phase.as_str()
        ),
        (
            "ota.vehicle-events.progress",
            1,
            deployment.as_str(),
            1,
            "installed"
        )
    );
    // The schema is a contract, not a formality: a record without its version fails it.
    let mut unversioned = document.clone();
    unversioned
        .as_object_mut()
        .unwrap()
        .remove("schema_version");
    assert!(!validator.is_valid(&unversioned));
    app.stop().await;
}

/// Progress from many vehicles arriving together is verified as a batch by the gateway:
/// each good message is written to Kafka exactly once, under its own vehicle, and each
/// forged or foreign one in the same batch is dropped without taking a good one with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_arriving_together_is_written_once_each_and_forgeries_are_dropped() {
    const VEHICLES: usize = 12;
    let Some((app, client, vehicles)) = lane_with_deployments(None, None, VEHICLES).await else {
        return;
    };
    let mut expected = std::collections::BTreeSet::new();
    for (i, (vid, key, deployment)) in vehicles.iter().enumerate() {
        // Interleaved with the good ones: a forgery (another key) and a message about
        // the next vehicle's deployment.
        let forged = progress(&device_key(), vid, deployment, 5, ProgressPhase::Failed);
        client.publish(vid, Channel::Progress, forged).await;
        let (_, _, foreign) = &vehicles[(i + 1) % VEHICLES];
        let misdirected = progress(key, vid, foreign, 6, ProgressPhase::Failed);
        client.publish(vid, Channel::Progress, misdirected).await;
        let good = progress(key, vid, deployment, 1, ProgressPhase::Installed);
        client.publish(vid, Channel::Progress, good).await;
        expected.insert((
            vid.clone(),
            deployment.clone(),
            1u64,
            "installed".to_owned(),
        ));
    }
    for (vid, _, deployment) in &vehicles {
        wait_status(&app, vid, deployment, DeploymentStatus::Installed).await;
    }
    // Every record on the topic is applied: forgeries, had any been written, are too.
    wait_consumed(&app).await;
    let kafka = &app.state.settings.kafka;
    let records = topic_records(kafka.brokers.as_deref().unwrap(), &kafka.topic, VEHICLES).await;
    let written: Vec<(String, String, u64, String)> = records
        .iter()
        .map(|(key, value)| {
            let (event, _) = decode_event(value).expect("a valid record");
            assert_eq!(key, &event.vehicle_id, "keyed by its own vehicle");
            (
                event.vehicle_id,
                event.deployment_id,
                event.sequence,
                event.phase,
            )
        })
        .collect();
    assert_eq!(
        written.len(),
        VEHICLES,
        "each good message once, no forgery: {written:?}"
    );
    assert_eq!(
        written
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>(),
        expected
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_and_stale_events_change_nothing() {
    let Some((app, client, vehicles)) = lane_with_deployments(None, None, 1).await else {
        return;
    };
    let (vid, key, deployment) = &vehicles[0];
    let first = progress(key, vid, deployment, 1, ProgressPhase::Downloading);
    let second = progress(key, vid, deployment, 2, ProgressPhase::Installed);
    client.publish(vid, Channel::Progress, first.clone()).await;
    client.publish(vid, Channel::Progress, second.clone()).await;
    wait_status(&app, vid, deployment, DeploymentStatus::Installed).await;
    // A redelivery of the newest event and a stale one arriving late: both reach Kafka
    // (the gateway cannot know) and the consumer applies neither.
    client.publish(vid, Channel::Progress, second).await;
    client.publish(vid, Channel::Progress, first).await;
    let kafka = &app.state.settings.kafka;
    let records = topic_records(kafka.brokers.as_deref().unwrap(), &kafka.topic, 4).await;
    wait_consumed(&app).await;
    assert_eq!(
        status_of(&app, vid, deployment).await,
        DeploymentStatus::Installed,
        "a stale event must not move the deployment back"
    );
    // The consumer's own path, record by record: applying any of them again is a no-op.
    for (_, value) in &records {
        let applied = apply_record(
            &app.state.engine,
            value,
            ota_server::engine::wall_clock_ms(),
        )
        .await
        .unwrap();
        assert_eq!(applied, Applied::Unchanged);
    }
    assert_eq!(
        status_of(&app, vid, deployment).await,
        DeploymentStatus::Installed
    );
    app.stop().await;
}

/// The consumer's batch: records applied together get, one by one, what each would get
/// alone, in order (a duplicate or an older event after a newer one in the same batch
/// changes nothing; forged, foreign and unknown ones are skipped with their reason), and
/// applying the batch again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_records_applies_each_as_it_would_alone() {
    let Some((app, _client, vehicles)) = lane_with_deployments(None, None, 2).await else {
        return;
    };
    let (a, a_key, a_dep) = &vehicles[0];
    let (b, b_key, b_dep) = &vehicles[1];
    let rollout = app.state.store.list_rollouts(None).await.unwrap()[0]
        .id
        .clone();
    let record = |key: &SigningKey, vid: &str, deployment: &str, sequence, phase| {
        let signed = progress(key, vid, deployment, sequence, phase);
        let event = crate::mqtt::progress_event(vid, deployment, sequence, phase);
        serde_json::to_vec(&progress_event(&event, &signed, 1)).unwrap()
    };
    let stranger = unique("veh-");
    let records = [
        record(a_key, a, a_dep, 1, ProgressPhase::Downloading),
        record(a_key, a, a_dep, 1, ProgressPhase::Downloading),
        record(b_key, b, b_dep, 2, ProgressPhase::Installed),
        record(b_key, b, b_dep, 1, ProgressPhase::Downloading),
        record(a_key, a, b_dep, 3, ProgressPhase::Failed),
        record(&device_key(), a, a_dep, 4, ProgressPhase::Failed),
        record(&device_key(), &stranger, a_dep, 1, ProgressPhase::Failed),
        b"not an event".to_vec(),
        record(a_key, a, a_dep, 2, ProgressPhase::Installed),
    ];
    let values: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    let now = ota_server::engine::wall_clock_ms();
    let applied = record_events(&app.state.engine, &values, now)
        .await
        .unwrap();
    let changed = (Applied::Changed, Some(rollout.clone()));
    let unchanged = (Applied::Unchanged, None);
    let skipped = |reason| (Applied::Skipped(reason), None);
    assert_eq!(
        applied,
        [
            changed.clone(),
            unchanged.clone(),
            changed.clone(),
            unchanged.clone(),
            skipped("unknown_deployment"),
            skipped("bad_signature"),
            skipped("unknown_vehicle"),
            skipped("malformed_event"),
            changed,
        ]
    );
    for (vid, deployment) in [(a, a_dep), (b, b_dep)] {
        assert_eq!(
            status_of(&app, vid, deployment).await,
            DeploymentStatus::Installed
        );
    }
    let again = record_events(&app.state.engine, &values, now)
        .await
        .unwrap();
    assert!(
        again
            .iter()
            .all(|(applied, _)| *applied != Applied::Changed),
        "a batch applied again changes nothing: {again:?}"
    );
    app.stop().await;
}

/// Every rollout change goes to `ota.rollout-events` once committed, keyed by rollout,
/// in order, matching its published schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rollout_change_is_published_to_rollout_events() {
    let Some((app, _client, _vehicles)) = lane_with_deployments(None, None, 1).await else {
        return;
    };
    let rollouts = app.state.store.list_rollouts(None).await.unwrap();
    let id = rollouts[0].id.clone();
    app.act(&id, &["pause", "resume", "abort"]).await;
    let kafka = &app.state.settings.kafka;
    let records = topic_records(kafka.brokers.as_deref().unwrap(), &kafka.rollout_topic, 4).await;
    let schema: Value = serde_json::from_str(ROLLOUT_SCHEMA).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut actions = Vec::new();
    for (key, value) in &records {
        assert_eq!(key, &id, "rollout events are keyed by rollout id");
        let event: Value = serde_json::from_slice(value).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&event)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{event}: {errors:?}");
        actions.push(event["actions"][0].as_str().unwrap().to_owned());
    }
    assert_eq!(
        actions,
        [
            "rollout.start",
            "rollout.pause",
            "rollout.resume",
            "rollout.abort"
        ],
        "every change, in order"
    );
    assert_increasing_event_ids(&records);
    wait_outbox_empty(&app).await;
    app.stop().await;
}

fn assert_increasing_event_ids(records: &[(String, Vec<u8>)]) {
    let ids: Vec<i64> = records
        .iter()
        .map(|(_, value)| {
            let event: Value = serde_json::from_slice(value).unwrap();
            event["event_id"].as_i64().expect("every event has an id")
        })
        .collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "event ids increase in commit order: {ids:?}"
    );
}

/// Waits (at most 30 s) until the relay has published and deleted every outbox row.
async fn wait_outbox_empty(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pending = app.state.store.outbox_pending().await.unwrap();
        if pending == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pending} rollout events still in the outbox after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/readyz`'s report of the Kafka breaker.
async fn kafka_breaker(app: &TestApp) -> String {
    let response = app.http.get(app.url("/readyz")).send().await.unwrap();
    let body: Value = response.json().await.unwrap();
    body["breakers"]["kafka"].as_str().unwrap().to_owned()
}

async fn wait_kafka_breaker(app: &TestApp, state: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = kafka_breaker(app).await;
        if now == state {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Kafka breaker is {now}, not {state}, after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback port that refuses connections until `up`, then forwards them to the test
/// Kafka (whose metadata then points clients at the broker itself): a Kafka that is
/// unreachable at first and comes back, without touching the shared broker.
struct KafkaProxy {
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl KafkaProxy {
    async fn reserve() -> KafkaProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        KafkaProxy { port, task: None }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn up(&mut self, target: String) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("the proxy's port is still free");
        self.task = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }
}

impl Drop for KafkaProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The transactional outbox: rollout changes made while Kafka is unreachable commit
/// (the API answers 200) and their events wait in the outbox; the Kafka breaker opens
/// and `/readyz` says so; once Kafka is back the relay publishes every held event, in
/// order with increasing ids, the outbox empties and the breaker closes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_events_wait_in_the_outbox_while_kafka_is_down() {
    let brokers = crate::helpers::kafka_brokers();
    if !crate::helpers::require_service("kafka (tansu)", &brokers).await {
        return;
    }
    let mut proxy = KafkaProxy::reserve().await;
    let Some(app) = spawn_app_with(
        Backend::Sqlite,
        Options {
            kafka_brokers_unchecked: Some(proxy.address()),
            kafka_delivery_timeout_ms: Some(1000),
            breaker_open_seconds: Some(1),
            breaker_minimum_calls: Some(2),
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let (_, _, rollout) = app
        .release_and_rollout(&unique("hw-o"), json!([{ "name": "all", "percent": 100 }]))
        .await;
    let id = rollout["id"].as_str().unwrap().to_owned();
    // Each commits (200) while Kafka is down.
    app.act(&id, &["start", "pause", "resume"]).await;
    wait_kafka_breaker(&app, "open").await;
    assert_eq!(
        app.state.store.outbox_pending().await.unwrap(),
        3,
        "nothing was published, nothing lost"
    );
    // Kafka comes back (the topic is created on the broker itself: the server's own
    // attempt at start-up found no broker).
    let kafka = ota_server::settings::KafkaSettings {
        brokers: Some(brokers.clone()),
        ..app.state.settings.kafka.clone()
    };
    ota_server::events::ensure_topic(&kafka, &kafka.rollout_topic)
        .await
        .unwrap();
    proxy.up(brokers.clone()).await;
    wait_outbox_empty(&app).await;
    let records = topic_records(&brokers, &kafka.rollout_topic, 3).await;
    let actions: Vec<String> = records
        .iter()
        .map(|(key, value)| {
            assert_eq!(key, &id);
            let event: Value = serde_json::from_slice(value).unwrap();
            event["actions"][0].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        actions,
        ["rollout.start", "rollout.pause", "rollout.resume"],
        "every held event, once each, in order"
    );
    assert_increasing_event_ids(&records);
    wait_kafka_breaker(&app, "closed").await;
    app.stop().await;
}

/// Kafka unreachable while a vehicle sends more progress than the broker lets one client
/// hold unacknowledged (20 on Mosquitto): the progress waits, and check-ins are still
/// answered, since they arrive on a connection of their own. Once Kafka is back every
/// held event is written once and applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_ins_are_answered_while_progress_waits_for_an_unreachable_kafka() {
    const HELD: u64 = 60;
    let brokers = crate::helpers::kafka_brokers();
    if !crate::helpers::require_service("kafka (tansu)", &brokers).await {
        return;
    }
    let mut proxy = KafkaProxy::reserve().await;
    let Some((app, mut client, vehicles)) =
        lane_with_deployments(Some(proxy.address()), None, 1).await
    else {
        return;
    };
    let (vid, key, deployment) = &vehicles[0];
    // The topic exists (as after any earlier run); only the broker is out of reach.
    let kafka = ota_server::settings::KafkaSettings {
        brokers: Some(brokers.clone()),
        ..app.state.settings.kafka.clone()
    };
    ota_server::events::ensure_topic(&kafka, &kafka.topic)
        .await
        .unwrap();
    let received = app.state.vehicle_channel.counts().received;
    for sequence in 1..=HELD {
        let phase = if sequence == HELD {
            ProgressPhase::Installed
        } else {
            ProgressPhase::Downloading
        };
        let message = progress(key, vid, deployment, sequence, phase);
        client.publish(vid, Channel::Progress, message).await;
    }
    // The server holds a full window of progress it cannot write.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while app.state.vehicle_channel.counts().received < received + 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server received {} progress messages within 30 s",
            app.state.vehicle_channel.counts().received - received
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status_of(&app, vid, deployment).await,
        DeploymentStatus::Assigned,
        "nothing reached the database while Kafka is unreachable"
    );
    // A check-in now is answered (`expect` fails after 15 s).
    let again = signed_checkin(key, &checkin(vid, Some(("1.0.0", b"old")), 0));
    client
        .expect(
            &topic(vid, Channel::Directive),
            Some((vid, Channel::CheckIn, &again)),
        )
        .await;

    proxy.up(brokers.clone()).await;
    wait_status(&app, vid, deployment, DeploymentStatus::Installed).await;
    // Batches retried apart may land in any order: read until all of them are there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let sequences = loop {
        let records = topic_records(&brokers, &kafka.topic, 1).await;
        let mut sequences: Vec<u64> = records
            .iter()
            .filter(|(record_key, _)| record_key == vid)
            .map(|(_, value)| decode_event(value).expect("a valid record").0.sequence)
            .collect();
        sequences.sort_unstable();
        if sequences.len() >= HELD as usize || tokio::time::Instant::now() > deadline {
            break sequences;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        sequences,
        (1..=HELD).collect::<Vec<_>>(),
        "every held event written once"
    );
    app.stop().await;
}
