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
use ota_server::events::{apply_record, decode_event, Applied};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::time::Duration;

const SCHEMA: &str = include_str!("../../../docs/schemas/ota.vehicle-events.progress.v1.json");
const ROLLOUT_SCHEMA: &str =
    include_str!("../../../docs/schemas/ota.rollout-events.change.v1.json");

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(SCHEMA).expect("the schema file is JSON");
    jsonschema::validator_for(&schema).expect("the schema file is a valid JSON Schema")
}

/// Every record on `topic`, from the beginning, as (key, value); waits (at most 20 s)
/// until at least `at_least` records were read.
async fn topic_records(brokers: &str, topic: &str, at_least: usize) -> Vec<(String, Vec<u8>)> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", unique("test-reader-"))
            .set("enable.auto.commit", "false")
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
        while records.len() < at_least {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {at_least} records on {topic} within 20 s",
                records.len()
            );
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
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

async fn status_of(app: &TestApp, vid: &str, deployment: &str) -> DeploymentStatus {
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
async fn wait_status(app: &TestApp, vid: &str, deployment: &str, status: DeploymentStatus) {
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

/// Every rollout change goes to `ota.rollout-events` once committed, keyed by rollout,
/// in order, matching its published schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rollout_change_is_published_to_rollout_events() {
    let Some((app, _client, _vehicles)) = lane_with_deployments(None, None, 1).await else {
        return;
    };
    let rollouts = app.state.store.list_rollouts(None).await.unwrap();
    let id = rollouts[0].id.clone();
    for action in ["pause", "resume", "abort"] {
        let (status, body) = app
            .post(
                &format!("/api/v1/rollouts/{id}/{action}"),
                &app.admin_token,
                &json!({}),
            )
            .await;
        assert_eq!(status, 200, "{action}: {body}");
    }
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
    app.stop().await;
}
