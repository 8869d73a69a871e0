//! The durable lane under faults, with the real `ota-server` binary as a child process
//! (PostgreSQL, an MQTT broker, a Kafka-protocol broker) and a simulated fleet of real
//! agents: the server killed mid-rollout, Kafka unreachable for 30 s, the MQTT broker
//! restarted, and two server replicas sharing one database, broker and consumer group.
//! Every one of these tests checks that the fleet finishes and that the Kafka topic holds
//! every progress transition of every vehicle: nothing a vehicle reported was lost. One
//! more kills the MQTT broker so that it loses its sessions (and what they held): the
//! fleet still finishes and the server reports the loss.

use crate::fleet::{counter, mqtt_url, services_required, unique, wait_for, Server, SimFleet};
use ota_server::settings::{LogFormat, Settings};
use ota_tests::process::{free_port, BrokerProcess, Database, ServerProcess};
use ota_tests::synthetic;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Partitions of the test's events topic: more than one, so two replicas each get some.
const PARTITIONS: i32 = 2;

/// The transitions every vehicle that commits reports, in order (byte-count updates in
/// between are droppable and not counted).
const COMMIT_TRANSITIONS: [&str; 7] = [
    "downloading",
    "downloaded",
    "verified",
    "installing",
    "installed",
    "rebooting",
    "committed",
];

fn kafka_brokers() -> String {
    std::env::var("OTA_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".to_owned())
}

fn postgres_base() -> String {
    std::env::var("OTA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

fn reachable(address: &str) -> bool {
    address
        .parse::<std::net::SocketAddr>()
        .ok()
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok())
}

/// Whether the services these tests use are here; fails when they are required.
fn services_present(needs_shared_kafka: bool) -> bool {
    let mqtt = mqtt_url().trim_start_matches("mqtt://").to_owned();
    let postgres = postgres_base()
        .rsplit_once('@')
        .map_or("127.0.0.1:5432".to_owned(), |(_, a)| {
            a.trim_end_matches('/').to_owned()
        });
    let mut missing = Vec::new();
    if !reachable(&mqtt) {
        missing.push(format!("MQTT broker at {mqtt}"));
    }
    if !reachable(&postgres) {
        missing.push(format!("PostgreSQL at {postgres}"));
    }
    if needs_shared_kafka && !reachable(&kafka_brokers()) {
        missing.push(format!("Kafka broker at {}", kafka_brokers()));
    }
    if missing.is_empty() {
        return true;
    }
    assert!(
        !services_required(),
        "required services unreachable: {}",
        missing.join(", ")
    );
    eprintln!("SKIPPED: {}; run deploy/test.sh", missing.join(", "));
    false
}

/// Whether a test-owned broker can be started; fails when services are required.
fn own_broker(start: anyhow::Result<BrokerProcess>) -> Option<BrokerProcess> {
    match start {
        Ok(broker) => Some(broker),
        Err(err) => {
            assert!(!services_required(), "{err:#}");
            eprintln!("SKIPPED: {err:#}");
            None
        }
    }
}

/// The names one test's servers share: database, key set, MQTT share group and client
/// id, Kafka topics and consumer group.
struct Lane {
    dir: tempfile::TempDir,
    database: Database,
    mqtt: String,
    kafka: String,
    topic: String,
    share_group: String,
    group: String,
}

impl Lane {
    async fn new(mqtt: String, kafka: String) -> Lane {
        let name = unique("resilience-");
        Lane {
            dir: tempfile::tempdir().unwrap(),
            database: Database::create(&postgres_base(), &name.replace('-', "_"))
                .await
                .expect("a throwaway PostgreSQL database"),
            mqtt,
            kafka,
            topic: format!("{name}.vehicle-events"),
            share_group: name.clone(),
            group: format!("{name}-engine"),
        }
    }

    /// The settings of replica `index` (each its own port and MQTT client id; one
    /// database, data directory — blobs and the development key set, as a shared volume
    /// would hold them — share group, topic and consumer group).
    fn settings(&self, index: usize) -> Settings {
        let mut settings = Settings {
            listen: format!("127.0.0.1:{}", free_port()),
            data_dir: self.dir.path().join("data"),
            database_url: Some(self.database.url.parse().expect("a database URL")),
            ..Settings::default()
        };
        settings.mqtt.url = Some(self.mqtt.parse().expect("a broker URL"));
        settings.mqtt.share_group = self.share_group.clone();
        // A fixed client id keeps the server's MQTT session (and what the broker queued
        // for it) across a restart.
        settings.mqtt.client_id = Some(format!("{}-{index}", self.share_group));
        settings.kafka.brokers = Some(self.kafka.clone());
        settings.kafka.topic = self.topic.clone();
        settings.kafka.rollout_topic = format!("{}.rollout-events", self.share_group);
        settings.kafka.group = self.group.clone();
        settings.kafka.partitions = PARTITIONS;
        settings.director.tick_milliseconds = 100;
        settings.director.poll_seconds = 2;
        settings.limits.request_timeout_seconds = 120;
        settings.log.format = LogFormat::Text;
        settings.log.filter = "info,rumqttc=warn,librdkafka=warn".to_owned();
        settings
    }

    async fn server(&self, index: usize) -> ServerProcess {
        self.server_with(index, |_| {}).await
    }

    /// Replica `index` with its settings changed by `adjust`.
    async fn server_with(&self, index: usize, adjust: impl FnOnce(&mut Settings)) -> ServerProcess {
        let mut settings = self.settings(index);
        adjust(&mut settings);
        let mut server = ServerProcess::start(
            &ota_tests::binary("ota-server"),
            &self.dir.path().join(format!("replica-{index}")),
            &settings,
            &[],
        )
        .expect("ota-server starts");
        server
            .wait_ready(&reqwest::Client::new(), 90)
            .await
            .expect("ota-server ready");
        server
    }
}

/// A fleet of `vehicles` on 1.0.0, and a rollout of 2.0.0 to all of them at
/// `per_minute` vehicles a minute. Returns the fleet and the rollout id.
async fn fleet_and_rollout(
    api: &Server,
    hardware_id: &str,
    vehicles: usize,
    per_minute: u32,
) -> (SimFleet, String) {
    let v1 = synthetic::image(41, 16 * 1024);
    let v2 = synthetic::next_release(&v1, 42, 8);
    let fleet = SimFleet::on_first_release(api, hardware_id, vehicles, &v1, (0.0, None)).await;
    let image = api.upload(hardware_id, "2.0.0", v2).await;
    let release = api.release(&image, "2.0.0", 1).await;
    let rollout = api
        .rollout_with(
            &release,
            hardware_id,
            serde_json::json!({ "rate_limit": { "maximum_per_minute": per_minute } }),
        )
        .await;
    (fleet, rollout)
}

/// [`fleet_and_rollout`] at 30 vehicles a minute (one every 2 s, so a fault injected
/// now lands mid-rollout), once a few vehicles have committed.
async fn mid_rollout(api: &Server, hardware_id: &str, vehicles: usize) -> (SimFleet, String) {
    let (fleet, rollout) = fleet_and_rollout(api, hardware_id, vehicles, 30).await;
    wait_for("a few vehicles to commit", 120, || async {
        let totals = api.totals(&rollout).await;
        (totals["committed"].as_u64().unwrap_or(0) >= 3).then_some(())
    })
    .await;
    (fleet, rollout)
}

/// After a fault: every vehicle commits, none failed, and the events topic holds every
/// transition of every deployment.
async fn finishes_with_every_transition(
    api: &Server,
    lane: &Lane,
    hardware_id: &str,
    rollout: &str,
    vehicles: usize,
) {
    let status = wait_all_committed(api, rollout, vehicles, 240).await;
    assert_eq!(status["totals"]["failed"], 0, "{status}");
    assert_no_transition_lost(api, lane, hardware_id, rollout).await;
}

/// Waits until every one of `vehicles` deployments of `rollout` is committed.
async fn wait_all_committed(api: &Server, rollout: &str, vehicles: usize, seconds: u64) -> Value {
    wait_for("every vehicle to commit 2.0.0", seconds, || async {
        let (status, body) = api
            .call("GET", &format!("/api/v1/rollouts/{rollout}/status"), None)
            .await;
        (status == 200 && body["totals"]["committed"] == vehicles as u64).then_some(body)
    })
    .await
}

/// Every progress event on `topic`, per deployment: sequence → phase. Reads every
/// partition from the beginning until `complete` holds (at most `seconds`).
fn topic_events(
    brokers: &str,
    topic: &str,
    seconds: u64,
    complete: impl Fn(&BTreeMap<String, BTreeMap<u64, String>>) -> bool,
) -> BTreeMap<String, BTreeMap<u64, String>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("e2e-reader-"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a test consumer");
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&partitions).expect("assigning partitions");
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    let mut events: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    while !complete(&events) {
        assert!(
            std::time::Instant::now() < deadline,
            "the topic {topic} did not hold every transition within {seconds} s: {events:?}"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("reading the events topic");
            let event: Value =
                serde_json::from_slice(message.payload().unwrap_or_default()).expect("JSON");
            events
                .entry(event["deployment_id"].as_str().unwrap().to_owned())
                .or_default()
                .insert(
                    event["sequence"].as_u64().unwrap(),
                    event["phase"].as_str().unwrap().to_owned(),
                );
        }
    }
    events
}

/// Whether each of `deployments` has every commit transition on the topic, in order.
fn every_transition(
    events: &BTreeMap<String, BTreeMap<u64, String>>,
    deployments: &BTreeSet<String>,
) -> bool {
    deployments.iter().all(|deployment| {
        let Some(by_sequence) = events.get(deployment) else {
            return false;
        };
        // In sequence order, the commit transitions appear as a subsequence.
        let mut wanted = COMMIT_TRANSITIONS.iter().peekable();
        for phase in by_sequence.values() {
            if wanted.peek().is_some_and(|w| *w == phase) {
                wanted.next();
            }
        }
        wanted.peek().is_none()
    })
}

/// The deployment ids of `rollout` (one per vehicle), read through the API.
async fn deployments(api: &Server, vehicles: &[String], rollout: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for vehicle in vehicles {
        let (_, detail) = api
            .call("GET", &format!("/api/v1/vehicles/{vehicle}"), None)
            .await;
        let id = detail["deployments"]
            .as_array()
            .and_then(|all| all.iter().find(|d| d["rollout_id"] == rollout))
            .and_then(|d| d["id"].as_str())
            .unwrap_or_else(|| panic!("{vehicle} has a deployment of {rollout}: {detail}"));
        ids.insert(id.to_owned());
    }
    ids
}

/// The ids of the vehicles with `hardware_id` (at most 1,000).
async fn vehicle_ids(api: &Server, hardware_id: &str) -> Vec<String> {
    let (_, list) = api
        .call(
            "GET",
            &format!("/api/v1/vehicles?hardware_id={hardware_id}&limit=1000"),
            None,
        )
        .await;
    list["items"]
        .as_array()
        .expect("a page of vehicles")
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Checks that the topic holds every transition of every vehicle's deployment.
async fn assert_no_transition_lost(api: &Server, lane: &Lane, hardware_id: &str, rollout: &str) {
    let vehicles = vehicle_ids(api, hardware_id).await;
    let wanted = deployments(api, &vehicles, rollout).await;
    let (brokers, topic) = (lane.kafka.clone(), lane.topic.clone());
    let events = tokio::task::spawn_blocking(move || {
        topic_events(&brokers, &topic, 60, |events| {
            every_transition(events, &wanted)
        })
    })
    .await
    .expect("reading the topic");
    eprintln!(
        "the topic holds {} events of {} deployments",
        events.values().map(BTreeMap::len).sum::<usize>(),
        events.len()
    );
}

fn attach(server: &ServerProcess, mqtt: &str) -> Server {
    Server::attach(&server.url, mqtt, &server.token)
}

/// The server SIGKILLed in the middle of a rollout, then started again: the rollout
/// resumes by itself, every vehicle commits, and every transition a vehicle reported
/// (including those sent while the server was down) reaches the events topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_rollout_restarts_and_loses_no_progress_event() {
    if !services_present(true) {
        return;
    }
    let lane = Lane::new(mqtt_url(), kafka_brokers()).await;
    let mut server = lane.server(0).await;
    let api = attach(&server, &lane.mqtt);
    let hardware_id = unique("hw-kill-");
    let vehicles = 12;
    let (fleet, rollout) = mid_rollout(&api, &hardware_id, vehicles).await;
    server.kill();
    server.restart().expect("the server restarts");
    server
        .wait_ready(&reqwest::Client::new(), 90)
        .await
        .expect("the restarted server is ready");
    finishes_with_every_transition(&api, &lane, &hardware_id, &rollout, vehicles).await;
    fleet.stop().await;
    server.stop();
    lane.database.drop_now().await;
}

/// The Kafka broker paused (SIGSTOP) for 30 s in the middle of a rollout: the gateway
/// keeps the MQTT messages it could not write unacknowledged and retries, the consumer
/// reconnects, and after the broker is back every vehicle commits with every transition
/// on the topic. Nothing is restarted by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_outage_of_30_seconds_loses_no_event_and_recovers_by_itself() {
    if !services_present(false) {
        return;
    }
    let broker_dir = tempfile::tempdir().unwrap();
    let Some(kafka) = own_broker(BrokerProcess::tansu(broker_dir.path())) else {
        return;
    };
    let lane = Lane::new(mqtt_url(), kafka.address()).await;
    // A short delivery timeout, so the gateway's own retry path runs in the outage.
    let mut server = lane
        .server_with(0, |s| s.kafka.delivery_timeout_ms = 3_000)
        .await;
    let api = attach(&server, &lane.mqtt);
    let hardware_id = unique("hw-kafka-");
    let vehicles = 12;
    let (fleet, rollout) = mid_rollout(&api, &hardware_id, vehicles).await;
    kafka.pause();
    // The outage itself: its length is the scenario, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = api.metrics().await;
    kafka.resume();
    assert!(
        counter(&during, "ota_vehicle_events_produce_failures_total") > 0,
        "the gateway met the outage (its writes timed out and were retried)"
    );
    finishes_with_every_transition(&api, &lane, &hardware_id, &rollout, vehicles).await;
    fleet.stop().await;
    server.stop();
    lane.database.drop_now().await;
}

/// A rollout to 12 vehicles under way through a test-owned Mosquitto, ready for the
/// broker to be broken ([`mid_rollout`]).
struct OwnBrokerRollout {
    broker_dir: tempfile::TempDir,
    mosquitto: BrokerProcess,
    lane: Lane,
    server: ServerProcess,
    api: Server,
    hardware_id: String,
    vehicles: usize,
    fleet: SimFleet,
    rollout: String,
}

impl OwnBrokerRollout {
    /// `None` when the services (or Mosquitto) are missing and not required.
    async fn start(hardware_prefix: &str) -> Option<OwnBrokerRollout> {
        if !services_present(true) {
            return None;
        }
        let broker_dir = tempfile::tempdir().unwrap();
        let mosquitto = own_broker(BrokerProcess::mosquitto(broker_dir.path()))?;
        let lane = Lane::new(format!("mqtt://{}", mosquitto.address()), kafka_brokers()).await;
        let server = lane.server(0).await;
        let api = attach(&server, &lane.mqtt);
        let hardware_id = unique(hardware_prefix);
        let vehicles = 12;
        let (fleet, rollout) = mid_rollout(&api, &hardware_id, vehicles).await;
        Some(OwnBrokerRollout {
            broker_dir,
            mosquitto,
            lane,
            server,
            api,
            hardware_id,
            vehicles,
            fleet,
            rollout,
        })
    }

    /// Whether the broker has saved its sessions to its persistence file.
    fn broker_saved(&self) -> bool {
        self.broker_dir.path().join("mosquitto.db").is_file()
    }

    async fn stop(mut self) {
        self.fleet.stop().await;
        self.server.stop();
        self.lane.database.drop_now().await;
    }
}

/// The MQTT broker restarted in the middle of a rollout: the server and every agent
/// reconnect by themselves, the fleet finishes, and (the broker keeping its sessions
/// across a clean restart) no transition is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_mqtt_broker_is_rejoined_and_the_fleet_finishes() {
    let Some(mut run) = OwnBrokerRollout::start("hw-mqtt-").await else {
        return;
    };
    run.mosquitto.restart("TERM").expect("mosquitto restarts");
    assert!(
        run.broker_saved(),
        "mosquitto saved its sessions when it stopped: this test is about a broker that keeps them"
    );
    let (api, lane) = (&run.api, &run.lane);
    finishes_with_every_transition(api, lane, &run.hardware_id, &run.rollout, run.vehicles).await;
    run.stop().await;
}

/// The MQTT broker killed (SIGKILL: it saves nothing) in the middle of a rollout comes
/// back without the sessions it held: the server counts the lost persistent session of
/// its progress connection, and the fleet still finishes — every vehicle commits and
/// none fails (progress the broker lost, the vehicles' check-ins make up for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_lost_its_sessions_is_reported_and_the_fleet_still_finishes() {
    let Some(mut run) = OwnBrokerRollout::start("hw-mqtt-lost-").await else {
        return;
    };
    let api = &run.api;
    let before = counter(&api.metrics().await, "ota_mqtt_sessions_lost_total");
    run.mosquitto.restart("KILL").expect("mosquitto restarts");
    assert!(
        !run.broker_saved(),
        "a killed mosquitto saved nothing: it comes back without sessions"
    );
    let status = wait_all_committed(api, &run.rollout, run.vehicles, 240).await;
    assert_eq!(status["totals"]["failed"], 0, "{status}");
    let lost = wait_for("the server to count the lost session", 60, || async {
        let metrics = api.metrics().await;
        let lost = counter(&metrics, "ota_mqtt_sessions_lost_total{link=\"progress\"}");
        (lost > before).then_some(lost)
    })
    .await;
    eprintln!("lost persistent sessions counted: {lost}");
    run.stop().await;
}

/// Two replicas on one database, broker (one MQTT share group) and Kafka consumer
/// group split the fleet: both answer check-ins, both apply events, and no event is
/// applied twice (the replicas together applied at most the distinct events on the
/// topic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_split_the_fleet_and_apply_each_event_once() {
    if !services_present(true) {
        return;
    }
    let lane = Lane::new(mqtt_url(), kafka_brokers()).await;
    let mut first = lane.server(0).await;
    let mut second = lane.server(1).await;
    let api = attach(&first, &lane.mqtt);
    let other = attach(&second, &lane.mqtt);
    let hardware_id = unique("hw-replicas-");
    let vehicles = 16;
    let (fleet, rollout) = fleet_and_rollout(&api, &hardware_id, vehicles, 600).await;
    wait_all_committed(&api, &rollout, vehicles, 240).await;
    let ids = vehicle_ids(&api, &hardware_id).await;
    let wanted = deployments(&api, &ids, &rollout).await;
    let (brokers, topic) = (lane.kafka.clone(), lane.topic.clone());
    let events = tokio::task::spawn_blocking(move || {
        topic_events(&brokers, &topic, 60, |events| {
            every_transition(events, &wanted)
        })
    })
    .await
    .unwrap();
    let distinct: u64 = events.values().map(|e| e.len() as u64).sum();
    let (a, b) = (api.metrics().await, other.metrics().await);
    let checkins = |m: &str| counter(m, "ota_checkins_total{outcome=\"accepted\"}");
    let applied = |m: &str| counter(m, "ota_vehicle_events_consumed_total{outcome=\"applied\"}");
    assert!(
        checkins(&a) > 0 && checkins(&b) > 0,
        "both replicas answered check-ins: {} and {}",
        checkins(&a),
        checkins(&b)
    );
    // Every outcome counts: a check-in may already have moved a deployment past an
    // event (then `unchanged`), which still shows this replica's consumer had records.
    let consumed = |m: &str| counter(m, "ota_vehicle_events_consumed_total");
    assert!(
        consumed(&a) > 0 && consumed(&b) > 0,
        "both replicas consumed events (each holds partitions): {} and {}",
        consumed(&a),
        consumed(&b)
    );
    assert!(
        applied(&a) + applied(&b) <= distinct,
        "no event applied twice: {} + {} applied, {distinct} distinct events",
        applied(&a),
        applied(&b)
    );
    fleet.stop().await;
    first.stop();
    second.stop();
    lane.database.drop_now().await;
}
