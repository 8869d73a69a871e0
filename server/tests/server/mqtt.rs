//! The vehicle channel against the machine's MQTT broker: signed check-ins in, signed
//! directives and control messages out, bad messages dropped and counted, progress
//! events driving the breaker. Each test uses its own vehicle ids and share group.

use crate::helpers::{
    checkin, device_key, mqtt_url, signed_checkin, spawn_app_with, unique, Backend, Options,
    TestApp,
};
use crate::kafka::{status_of, wait_status};
use ota_core::envelope::Envelope;
use ota_core::key::SigningKey;
use ota_core::metadata::{parse_document, DirectorMetadata, TargetsBinding};
use ota_core::protocol::{
    open_message, sign_message, topic, Channel, ControlCommand, ControlMessage, ProgressEvent,
    ProgressPhase, PAYLOAD_TYPE_CONTROL, PAYLOAD_TYPE_PROGRESS,
};
use ota_core::time::Timestamp;
use ota_server::director::DeploymentStatus;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use std::time::Duration;
use tokio::sync::mpsc;

/// A vehicle-side MQTT client collecting what arrives on its subscriptions.
pub(crate) struct VehicleClient {
    client: AsyncClient,
    inbox: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
}

impl VehicleClient {
    pub(crate) async fn connect(vehicle_ids: &[&str]) -> VehicleClient {
        let url: ota_core::endpoint::BrokerUrl = mqtt_url().parse().expect("broker url");
        let (host, port) = (url.host().to_owned(), url.port());
        let mut options = MqttOptions::new(unique("vehicle-test-"), host, port);
        options.set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, inbox) = mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                match event {
                    Event::Incoming(Packet::Publish(p)) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Event::Incoming(Packet::SubAck(_)) => {
                        let _ = subscribed_tx.send(());
                    }
                    _ => {}
                }
            }
        });
        let mut count = 0;
        for vid in vehicle_ids {
            for channel in [Channel::Directive, Channel::Control] {
                client
                    .subscribe(topic(vid, channel), QoS::AtLeastOnce)
                    .await
                    .unwrap();
                count += 1;
            }
        }
        for _ in 0..count {
            tokio::time::timeout(Duration::from_secs(10), subscribed.recv())
                .await
                .expect("SUBACK from the broker");
        }
        VehicleClient { client, inbox }
    }

    pub(crate) async fn publish(&self, vid: &str, channel: Channel, payload: Vec<u8>) {
        self.client
            .publish(topic(vid, channel), QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// Waits for a message on `topic_name`, re-sending `retry` every second meanwhile
    /// (the server may still be subscribing when the test starts).
    pub(crate) async fn expect(
        &mut self,
        topic_name: &str,
        retry: Option<(&str, Channel, &[u8])>,
    ) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some((vid, channel, payload)) = retry {
                self.publish(vid, channel, payload.to_vec()).await;
            }
            let wait = tokio::time::timeout(Duration::from_secs(1), async {
                loop {
                    match self.inbox.recv().await {
                        Some((t, payload)) if t == topic_name => return payload,
                        Some(_) => continue,
                        None => panic!("vehicle client disconnected"),
                    }
                }
            })
            .await;
            if let Ok(payload) = wait {
                return payload;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nothing arrived on {topic_name} within 15 s"
            );
        }
    }

    /// Asserts nothing arrives on `topic_name` for `duration`.
    async fn expect_silence(&mut self, topic_name: &str, duration: Duration) {
        let end = tokio::time::Instant::now() + duration;
        while let Ok(Some((t, _))) = tokio::time::timeout_at(end, self.inbox.recv()).await {
            assert_ne!(t, topic_name, "nothing must be published on {topic_name}");
        }
    }
}

async fn mqtt_app() -> Option<TestApp> {
    mqtt_app_with(Options::default()).await
}

/// A SQLite app on the test broker (`mqtt: true` is implied), once `/readyz` says the
/// broker is `ok`.
pub(crate) async fn mqtt_app_with(options: Options) -> Option<TestApp> {
    let app = spawn_app_with(
        Backend::Sqlite,
        Options {
            mqtt: true,
            ..options
        },
    )
    .await?;
    wait_ready(&app).await;
    Some(app)
}

/// Waits until `/readyz` says the broker is `ok`.
pub(crate) async fn wait_ready(app: &TestApp) {
    wait_broker(app, "ok", Duration::from_secs(20)).await;
}

/// Waits (polling every 100 ms, at most `within`) until `/readyz` reports the vehicle
/// channel as `status`; panics with the last answer otherwise.
pub(crate) async fn wait_broker(app: &TestApp, status: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        // Not `app.get`: /readyz answers 503 with its JSON status document while the
        // broker connection is down, which is not a problem document.
        let ready: serde_json::Value = app
            .http
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ready["broker"] == status {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz did not report the broker as {status:?} within {within:?}: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn director_metadata(app: &TestApp, bytes: &[u8]) -> DirectorMetadata {
    let envelope = Envelope::parse(bytes).expect("a directive is a DSSE envelope");
    let director = app.state.keys.director.public_key();
    let sig = ota_core::encoding::decode_base64(&envelope.signatures[0].sig).unwrap();
    assert!(
        director.verify_strict(&envelope.signed_message(), &sig.try_into().unwrap()),
        "directives are signed by the director key"
    );
    parse_document(&envelope.payload).expect("director metadata")
}

pub(crate) fn control(app: &TestApp, bytes: &[u8]) -> ControlMessage {
    open_message(
        bytes,
        PAYLOAD_TYPE_CONTROL,
        &app.state.keys.director.public_key(),
    )
    .expect("control messages are signed by the director key")
}

pub(crate) fn progress(
    key: &SigningKey,
    vid: &str,
    deployment: &str,
    sequence: u64,
    phase: ProgressPhase,
) -> Vec<u8> {
    sign_message(
        PAYLOAD_TYPE_PROGRESS,
        &progress_event(vid, deployment, sequence, phase),
        key,
    )
}

/// The progress event [`progress`] signs, sent now.
pub(crate) fn progress_event(
    vid: &str,
    deployment: &str,
    sequence: u64,
    phase: ProgressPhase,
) -> ProgressEvent {
    ProgressEvent {
        vehicle_id: vid.to_owned(),
        deployment_id: deployment.to_owned(),
        sequence,
        phase,
        bytes_done: 0,
        bytes_total: 0,
        reason_code: Some("health_check_failed".to_owned()),
        at: Timestamp::from_datetime(chrono::Utc::now()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkins_get_signed_directives_and_bad_ones_are_dropped() {
    let Some(app) = mqtt_app().await else { return };
    let vid = unique("veh-");
    let key = device_key();
    app.register_vehicle(&vid, &key, "hw-m", &[]).await;
    let mut vehicle = VehicleClient::connect(&[&vid]).await;
    let directive_topic = topic(&vid, Channel::Directive);

    // No rollout yet: a signed "nothing to do".
    let first = signed_checkin(&key, &checkin(&vid, Some(("1.0.0", b"old")), 0));
    let nothing = director_metadata(
        &app,
        &vehicle
            .expect(&directive_topic, Some((&vid, Channel::CheckIn, &first)))
            .await,
    );
    assert!(nothing.assignments.is_empty());
    assert_eq!(
        (nothing.vehicle_id.as_str(), nothing.next_poll_seconds),
        (vid.as_str(), 30)
    );

    let (_, _, rollout) = app
        .release_and_rollout("hw-m", json!([{ "name": "all", "percent": 100 }]))
        .await;
    let (status, _) = app
        .post(
            &format!("/api/v1/rollouts/{}/start", rollout["id"].as_str().unwrap()),
            &app.admin_token,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let again = signed_checkin(
        &key,
        &checkin(&vid, Some(("1.0.0", b"old")), nothing.version),
    );
    let assigned = director_metadata(
        &app,
        &vehicle
            .expect(&directive_topic, Some((&vid, Channel::CheckIn, &again)))
            .await,
    );
    assert_eq!(
        assigned.assignments.len(),
        1,
        "a vehicle in a running 100% rollout is assigned"
    );
    assert!(
        assigned.version > nothing.version,
        "director versions only grow"
    );
    // Freshness: each director carries the binding to the newest targets document (and
    // before any release, version 0, which no targets document has).
    assert_eq!(nothing.targets.version, 0, "no targets yet");
    let (_, newest) = app.state.store.latest_targets().await.unwrap().unwrap();
    assert_eq!(
        assigned.targets,
        TargetsBinding::of_envelope(newest.as_bytes()).unwrap(),
        "the director is bound to the newest targets"
    );
    assert!(assigned.assignments[0].image.url.ends_with(&format!(
        "/v1/blobs/{}",
        assigned.assignments[0].image.sha256
    )));

    // Forged, malformed and unknown-vehicle check-ins are dropped (no directive) and
    // counted by reason. The counters are process-wide and other tests drop messages
    // too, so each reason is waited on to rise from its value before the sends.
    let reasons = ["bad_signature", "malformed", "unknown_vehicle"];
    let before = dropped_counts(&app, &reasons).await;
    let forged = signed_checkin(&device_key(), &checkin(&vid, None, 0));
    vehicle.publish(&vid, Channel::CheckIn, forged).await;
    vehicle
        .publish(&vid, Channel::CheckIn, b"not an envelope".to_vec())
        .await;
    let stranger = unique("veh-unregistered-");
    let unknown = signed_checkin(&device_key(), &checkin(&stranger, None, 0));
    vehicle.publish(&stranger, Channel::CheckIn, unknown).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = dropped_counts(&app, &reasons).await;
        let risen: Vec<bool> = now.iter().zip(&before).map(|(n, b)| n > b).collect();
        if risen.iter().all(|r| *r) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "each drop must be counted under its reason {reasons:?}: before {before:?}, now {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    vehicle
        .expect_silence(&directive_topic, Duration::from_millis(500))
        .await;
    let (_, detail) = app
        .get(&format!("/api/v1/vehicles/{vid}"), &app.read_token)
        .await;
    assert!(
        detail["last_seen_at"].is_string(),
        "check-ins record last seen"
    );
    app.stop().await;
}

/// Registers `count` vehicles of a new hardware id, starts a rollout of a new release
/// to all of them, and has each check in once: returns the vehicles (id, key), their
/// client, the rollout id and each vehicle's assigned deployment.
async fn assigned_fleet(
    app: &TestApp,
    count: usize,
) -> (
    Vec<(String, SigningKey)>,
    VehicleClient,
    String,
    Vec<String>,
) {
    let hardware = unique("hw-f");
    let fleet: Vec<(String, SigningKey)> =
        (0..count).map(|_| (unique("veh-"), device_key())).collect();
    for (vid, key) in &fleet {
        app.register_vehicle(vid, key, &hardware, &[]).await;
    }
    let ids: Vec<&str> = fleet.iter().map(|(v, _)| v.as_str()).collect();
    let mut vehicles = VehicleClient::connect(&ids).await;
    let (_, _, rollout) = app
        .release_and_rollout(&hardware, json!([{ "name": "all", "percent": 100 }]))
        .await;
    let id = rollout["id"].as_str().unwrap().to_owned();
    app.act(&id, &["start"]).await;
    let mut deployments = Vec::new();
    for (vid, key) in &fleet {
        let c = signed_checkin(key, &checkin(vid, Some(("1.0.0", b"old")), 0));
        let d = director_metadata(
            app,
            &vehicles
                .expect(
                    &topic(vid, Channel::Directive),
                    Some((vid, Channel::CheckIn, &c)),
                )
                .await,
        );
        assert_eq!(d.assignments.len(), 1, "{vid} is assigned");
        deployments.push(d.assignments[0].deployment_id.clone());
    }
    (fleet, vehicles, id, deployments)
}

/// A pause's `poll_now` goes to every vehicle mid-update, however many: the fan-out
/// waits for room in the outbox (here 2 messages) instead of dropping what does not fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_reaches_every_vehicle_mid_update_beyond_the_outbox_size() {
    let Some(app) = mqtt_app_with(Options {
        mqtt_outbox: Some(2),
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let (fleet, mut vehicles, id, _) = assigned_fleet(&app, 12).await;
    app.act(&id, &["pause"]).await;
    for (vid, _) in &fleet {
        let poll = control(
            &app,
            &vehicles.expect(&topic(vid, Channel::Control), None).await,
        );
        assert_eq!(
            (poll.command, poll.vehicle_id.as_str()),
            (ControlCommand::PollNow, vid.as_str())
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_abort_send_control_and_failures_open_the_breaker() {
    let Some(app) = mqtt_app().await else { return };
    let (fleet, mut vehicles, id, deployments) = assigned_fleet(&app, 2).await;
    let [(v1, k1), (v2, k2)] = [fleet[0].clone(), fleet[1].clone()];
    app.act(&id, &["pause"]).await;
    let poll = control(
        &app,
        &vehicles.expect(&topic(&v1, Channel::Control), None).await,
    );
    assert_eq!(
        (poll.command, poll.vehicle_id.as_str()),
        (ControlCommand::PollNow, v1.as_str())
    );
    app.post(
        &format!("/api/v1/rollouts/{id}/resume"),
        &app.admin_token,
        &json!({}),
    )
    .await;

    // Both vehicles fail: 100% failures over the minimum of 2 opens the breaker, which
    // pauses the rollout (the default action).
    vehicles
        .publish(
            &v1,
            Channel::Progress,
            progress(&k1, &v1, &deployments[0], 1, ProgressPhase::Failed),
        )
        .await;
    vehicles
        .publish(
            &v2,
            Channel::Progress,
            progress(&k2, &v2, &deployments[1], 1, ProgressPhase::Failed),
        )
        .await;
    let mut last = serde_json::Value::Null;
    for _ in 0..50 {
        let (_, status) = app
            .get(&format!("/api/v1/rollouts/{id}/status"), &app.read_token)
            .await;
        if status["rollout"]["breaker_state"] == "open" {
            last = status;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        last["rollout"]["breaker_state"], "open",
        "two failures must open the breaker within 5 s: {last}"
    );
    assert_eq!(last["rollout"]["state"], "paused");
    assert_eq!(last["phases"][0]["failed"], 2);
    let (_, audit) = app.get("/api/v1/audit?limit=50", &app.admin_token).await;
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "rollout.breaker" && a["actor"] == "system"),
        "breaker transitions are audited"
    );

    // Abort: vehicles not yet installing are told to cancel.
    let v3 = unique("veh-");
    let k3 = device_key();
    app.register_vehicle(&v3, &k3, "hw-n", &[]).await;
    let (_, _, second) = app
        .release_and_rollout("hw-n", json!([{ "name": "all", "percent": 100 }]))
        .await;
    let second = second["id"].as_str().unwrap().to_owned();
    app.post(
        &format!("/api/v1/rollouts/{id}/abort"),
        &app.admin_token,
        &json!({}),
    )
    .await;
    app.post(
        &format!("/api/v1/rollouts/{second}/start"),
        &app.admin_token,
        &json!({}),
    )
    .await;
    let mut v3_client = VehicleClient::connect(&[&v3]).await;
    let c = signed_checkin(&k3, &checkin(&v3, None, 0));
    let d = director_metadata(
        &app,
        &v3_client
            .expect(
                &topic(&v3, Channel::Directive),
                Some((&v3, Channel::CheckIn, &c)),
            )
            .await,
    );
    assert_eq!(d.assignments.len(), 1);
    app.post(
        &format!("/api/v1/rollouts/{second}/abort"),
        &app.admin_token,
        &json!({}),
    )
    .await;
    let cancel = control(
        &app,
        &v3_client.expect(&topic(&v3, Channel::Control), None).await,
    );
    assert_eq!(cancel.command, ControlCommand::Cancel);
    assert_eq!(
        cancel.deployment_id.as_deref(),
        Some(d.assignments[0].deployment_id.as_str())
    );
    app.stop().await;
}

/// A breaker that opens with the `pause` policy stops the vehicles not yet installing
/// (DESIGN §7): their deployments are cancelled and they are told `cancel`; a vehicle
/// already installing is left to finish. The operator's resume tells each stopped
/// vehicle `poll_now` and hands its deployment out again, same id, without spending an
/// attempt of the retry policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_pause_cancels_vehicles_not_yet_installing_and_resume_hands_them_out_again() {
    let Some(app) = mqtt_app().await else { return };
    let (fleet, mut vehicles, id, deployments) = assigned_fleet(&app, 4).await;
    let publish = |i: usize, sequence, phase| {
        let (vid, key) = &fleet[i];
        (
            vid.clone(),
            progress(key, vid, &deployments[i], sequence, phase),
        )
    };
    let (installing, report) = publish(2, 1, ProgressPhase::Installing);
    vehicles
        .publish(&installing, Channel::Progress, report)
        .await;
    wait_status(
        &app,
        &installing,
        &deployments[2],
        DeploymentStatus::Installed,
    )
    .await;
    for i in [0, 1] {
        let (vid, report) = publish(i, 1, ProgressPhase::Failed);
        vehicles.publish(&vid, Channel::Progress, report).await;
    }
    let (waiting, waiting_key) = fleet[3].clone();
    let cancel = control(
        &app,
        &vehicles
            .expect(&topic(&waiting, Channel::Control), None)
            .await,
    );
    assert_eq!(
        (cancel.command, cancel.deployment_id.as_deref()),
        (ControlCommand::Cancel, Some(deployments[3].as_str())),
        "the breaker tells the vehicle not yet installing to cancel"
    );
    vehicles
        .expect_silence(
            &topic(&installing, Channel::Control),
            Duration::from_millis(500),
        )
        .await;
    let rollout = app.state.store.get_rollout(&id).await.unwrap();
    assert_eq!(
        (rollout.state.as_str(), rollout.breaker_state.as_str()),
        ("paused", "open")
    );
    assert_eq!(
        status_of(&app, &waiting, &deployments[3]).await,
        DeploymentStatus::Cancelled
    );
    assert_eq!(
        status_of(&app, &installing, &deployments[2]).await,
        DeploymentStatus::Installed,
        "a vehicle installing is not cancelled"
    );

    app.act(&id, &["resume"]).await;
    let poll = control(
        &app,
        &vehicles
            .expect(&topic(&waiting, Channel::Control), None)
            .await,
    );
    assert_eq!(
        (poll.command, poll.deployment_id.as_deref()),
        (ControlCommand::PollNow, Some(deployments[3].as_str())),
        "the resume calls the stopped vehicle back"
    );
    let c = signed_checkin(&waiting_key, &checkin(&waiting, Some(("1.0.0", b"old")), 1));
    let d = director_metadata(
        &app,
        &vehicles
            .expect(
                &topic(&waiting, Channel::Directive),
                Some((&waiting, Channel::CheckIn, &c)),
            )
            .await,
    );
    assert_eq!(
        d.assignments
            .iter()
            .map(|a| a.deployment_id.as_str())
            .collect::<Vec<_>>(),
        [deployments[3].as_str()],
        "the resumed rollout hands the cancelled deployment out again"
    );
    let again = app
        .state
        .store
        .deployments_for_vehicle(&waiting)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.id == deployments[3])
        .unwrap();
    assert_eq!(
        (again.status, again.attempts),
        (DeploymentStatus::Assigned, 1),
        "assigned again, no attempt spent"
    );
    app.stop().await;
}

/// `ota_vehicle_messages_dropped_total{reason=...}` from `/metrics`, per reason (0 when
/// the series does not exist yet).
pub(crate) async fn dropped_counts(app: &TestApp, reasons: &[&str]) -> Vec<u64> {
    crate::helpers::counts_by_reason(app, "ota_vehicle_messages_dropped_total", reasons).await
}

/// An operator's cancel of one vehicle reaches it as a signed `cancel` naming the
/// deployment; a retry as `poll_now`, and the check-in that follows carries the same
/// deployment again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_cancel_and_retry_of_one_vehicle_reach_it() {
    let Some(app) = mqtt_app().await else { return };
    let vid = unique("veh-");
    let key = device_key();
    app.register_vehicle(&vid, &key, "hw-o", &[]).await;
    let mut vehicle = VehicleClient::connect(&[&vid]).await;
    let (_, _, rollout) = app
        .release_and_rollout("hw-o", json!([{ "name": "all", "percent": 100 }]))
        .await;
    let id = rollout["id"].as_str().unwrap().to_owned();
    app.post(
        &format!("/api/v1/rollouts/{id}/start"),
        &app.rollout_token,
        &json!({}),
    )
    .await;
    let checkin_bytes = || signed_checkin(&key, &checkin(&vid, Some(("1.0.0", b"old")), 0));
    let c = checkin_bytes();
    let d = director_metadata(
        &app,
        &vehicle
            .expect(
                &topic(&vid, Channel::Directive),
                Some((&vid, Channel::CheckIn, &c)),
            )
            .await,
    );
    let deployment = d.assignments[0].deployment_id.clone();
    let (status, body) = app
        .post(
            &format!("/api/v1/rollouts/{id}/deployments/{vid}/cancel"),
            &app.rollout_token,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let cancel = control(
        &app,
        &vehicle.expect(&topic(&vid, Channel::Control), None).await,
    );
    assert_eq!(cancel.command, ControlCommand::Cancel);
    assert_eq!(cancel.deployment_id.as_deref(), Some(deployment.as_str()));
    let (status, body) = app
        .post(
            &format!("/api/v1/rollouts/{id}/deployments/{vid}/retry"),
            &app.rollout_token,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let poll = control(
        &app,
        &vehicle.expect(&topic(&vid, Channel::Control), None).await,
    );
    assert_eq!(poll.command, ControlCommand::PollNow);
    assert_eq!(poll.deployment_id.as_deref(), Some(deployment.as_str()));
    let c = checkin_bytes();
    let d = director_metadata(
        &app,
        &vehicle
            .expect(
                &topic(&vid, Channel::Directive),
                Some((&vid, Channel::CheckIn, &c)),
            )
            .await,
    );
    assert_eq!(d.assignments.len(), 1);
    assert_eq!(d.assignments[0].deployment_id, deployment);
    app.stop().await;
}

/// A decommissioned vehicle's check-ins are dropped, unanswered, and counted under
/// `reason="decommissioned"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommissioned_vehicles_checkins_are_refused_and_counted() {
    let Some(app) = mqtt_app().await else { return };
    let vid = unique("veh-");
    let key = device_key();
    app.register_vehicle(&vid, &key, "hw-dc", &[]).await;
    let mut vehicle = VehicleClient::connect(&[&vid]).await;
    let directive_topic = topic(&vid, Channel::Directive);
    let c = signed_checkin(&key, &checkin(&vid, None, 0));
    vehicle
        .expect(&directive_topic, Some((&vid, Channel::CheckIn, &c)))
        .await;
    let (status, body) = app
        .post(
            &format!("/api/v1/vehicles/{vid}/decommission"),
            &app.admin_token,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let reasons = ["decommissioned"];
    let before = dropped_counts(&app, &reasons).await;
    let c = signed_checkin(&key, &checkin(&vid, None, 0));
    vehicle.publish(&vid, Channel::CheckIn, c).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while dropped_counts(&app, &reasons).await[0] <= before[0] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refused check-in must be counted under reason=decommissioned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    vehicle
        .expect_silence(&directive_topic, Duration::from_millis(500))
        .await;
    app.stop().await;
}
