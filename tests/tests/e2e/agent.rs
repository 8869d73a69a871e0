//! The vehicle loop end to end: a real server on SQLite, the machine's Mosquitto, and
//! agents with file slots and a file bootloader. Release, rollout, delta download,
//! install into the inactive slot, reboot, health check, commit, server-driven rollback,
//! a failing health check, and a crash at every journaled step.

use crate::fleet::{
    counter, require_mqtt, unique, wait_for, RunningAgent, Server, SimFleet, Vehicle,
};
use ota_agent::journal::CrashHook;
use ota_agent::machine::{AgentState, PayloadKind, Phase, SlotName};
use ota_agent::run::{HealthCheck, RunOutcome};
use ota_agent::slots::file::FileBootloader;
use ota_agent::slots::Bootloader;
use ota_agent::trust_store::FileTrustStore;
use ota_tests::synthetic;
use serde_json::Value;
use std::time::Duration;

const IMAGE_BYTES: usize = 192 * 1024;

/// A server holding release 1.0.0 (the factory image) of a fresh hardware id.
struct Fixture {
    server: Server,
    hardware_id: String,
    v1: Vec<u8>,
    v2: Vec<u8>,
    root: Vec<u8>,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Option<Fixture> {
        if !require_mqtt().await {
            return None;
        }
        let server = Server::start(2).await;
        let hardware_id = unique("hw-");
        let v1 = synthetic::image(7, IMAGE_BYTES);
        let v2 = synthetic::next_release(&v1, 8, 40);
        let image = server.upload(&hardware_id, "1.0.0", v1.clone()).await;
        server.release(&image, "1.0.0", 1).await;
        let root = server.root().await;
        Some(Fixture {
            server,
            hardware_id,
            v1,
            v2,
            root,
            dir: tempfile::tempdir().unwrap(),
        })
    }

    async fn vehicle(&self, name: &str) -> Vehicle {
        let vehicle = Vehicle::provision(
            self.dir.path(),
            &unique(name),
            &self.hardware_id,
            &self.root,
            &self.v1,
        );
        self.server
            .register(&vehicle.id, &vehicle.key, &self.hardware_id)
            .await;
        vehicle
    }

    /// Runs the agent until the server knows it runs 1.0.0, then stops it.
    async fn first_check_in(&self, vehicle: &Vehicle) {
        let agent = RunningAgent::start(vehicle.parts(
            &self.server,
            HealthCheck::BootIsEnough,
            CrashHook::default(),
        ));
        wait_for("the first check-in to record 1.0.0", 30, || async {
            (self.server.installed_version(&vehicle.id).await.as_deref() == Some("1.0.0"))
                .then_some(())
        })
        .await;
        assert_eq!(agent.stop().await, RunOutcome::Stopped);
    }

    /// Releases 2.0.0 and starts a rollout of it; waits until its delta is built.
    async fn release_v2(&self) -> String {
        let image = self
            .server
            .upload(&self.hardware_id, "2.0.0", self.v2.clone())
            .await;
        let release = self.server.release(&image, "2.0.0", 1).await;
        let rollout = self.server.rollout(&release, &self.hardware_id).await;
        wait_for("the delta build", 60, || async {
            let (_, jobs) = self
                .server
                .call(
                    "GET",
                    &format!("/api/v1/delta-jobs?rollout_id={rollout}"),
                    None,
                )
                .await;
            let status = jobs["items"][0]["status"].as_str().map(str::to_owned);
            match status.as_deref() {
                Some("queued" | "running") | None => None,
                Some(other) => Some(other.to_owned()),
            }
        })
        .await;
        rollout
    }
}

fn slot_bytes(vehicle: &Vehicle, slot: SlotName, len: usize) -> Vec<u8> {
    let bytes = std::fs::read(vehicle.dir.join(format!("slot_{}", slot.as_str()))).unwrap();
    bytes[..len].to_vec()
}

async fn wait_for_status(server: &Server, vehicle: &Vehicle, rollout: &str, want: &str) {
    wait_for(&format!("{} to be {want}", vehicle.id), 120, || async {
        (server
            .deployment_status(&vehicle.id, rollout)
            .await
            .as_deref()
            == Some(want))
        .then_some(())
    })
    .await;
}

fn idle(state: &Option<AgentState>) -> &AgentState {
    let state = state.as_ref().expect("a journal");
    assert_eq!(state.phase, Phase::Idle, "the agent is idle: {state:?}");
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_goes_from_1_to_2_by_a_delta_commits_and_is_rolled_back_by_the_server() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let vehicle = fx.vehicle("veh-delta-").await;
    fx.first_check_in(&vehicle).await;
    let rollout = fx.release_v2().await;

    let agent = RunningAgent::start(vehicle.parts(
        &fx.server,
        HealthCheck::Command {
            argv: vec!["true".to_owned()],
            timeout: Duration::from_secs(30),
        },
        CrashHook::default(),
    ));
    wait_for_status(&fx.server, &vehicle, &rollout, "committed").await;
    wait_for("the agent to be idle on 2.0.0", 30, || async {
        vehicle
            .journal()
            .filter(|s| s.phase == Phase::Idle && s.active == SlotName::B)
            .map(|_| ())
    })
    .await;
    let state = vehicle.journal();
    let state = idle(&state);
    assert_eq!(
        state.installed().as_ref().map(|i| i.version.as_str()),
        Some("2.0.0")
    );
    let finished = state.finished.last().expect("the deployment is remembered");
    assert_eq!(
        finished.via,
        Some(PayloadKind::Delta),
        "the update must come as a delta from 1.0.0"
    );
    assert_eq!(slot_bytes(&vehicle, SlotName::B, fx.v2.len()), fx.v2);
    assert_eq!(
        slot_bytes(&vehicle, SlotName::A, fx.v1.len()),
        fx.v1,
        "the previous slot is untouched"
    );
    let boot = FileBootloader::new(vehicle.dir.join("bootenv.json"))
        .read()
        .unwrap();
    assert_eq!((boot.active, boot.trying), (SlotName::B, None));
    let floor = FileTrustStore::new(vehicle.dir.join("trust"))
        .load()
        .unwrap()
        .security_floor(&fx.hardware_id);
    assert_eq!(floor, 1, "the security floor rises on commit");
    wait_for("the server to see 2.0.0 installed", 30, || async {
        (fx.server.installed_version(&vehicle.id).await.as_deref() == Some("2.0.0")).then_some(())
    })
    .await;

    // The release engineer rolls the rollout back: the vehicle returns to slot A.
    fx.server
        .ok(
            "POST",
            &format!("/api/v1/rollouts/{rollout}/rollback"),
            None,
        )
        .await;
    wait_for_status(&fx.server, &vehicle, &rollout, "rolled_back").await;
    wait_for("the agent to be back on slot A", 30, || async {
        vehicle
            .journal()
            .filter(|s| s.phase == Phase::Idle && s.active == SlotName::A)
            .map(|_| ())
    })
    .await;
    assert_eq!(
        fx.server.installed_version(&vehicle.id).await.as_deref(),
        Some("1.0.0")
    );
    assert_eq!(agent.stop().await, RunOutcome::Stopped);
    fx.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_falls_back_to_the_old_slot_and_reports_rolled_back() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let vehicle = fx.vehicle("veh-unhealthy-").await;
    fx.first_check_in(&vehicle).await;
    let rollout = fx.release_v2().await;
    let agent = RunningAgent::start(vehicle.parts(
        &fx.server,
        HealthCheck::Command {
            argv: vec!["false".to_owned()],
            timeout: Duration::from_secs(30),
        },
        CrashHook::default(),
    ));
    wait_for_status(&fx.server, &vehicle, &rollout, "rolled_back").await;
    let state = vehicle.journal();
    let state = idle(&state);
    assert_eq!(state.active, SlotName::A, "the old slot stays active");
    assert_eq!(
        state.finished.last().map(|f| f.outcome),
        Some(ota_core::protocol::ProgressPhase::RolledBack)
    );
    assert_eq!(slot_bytes(&vehicle, SlotName::A, fx.v1.len()), fx.v1);
    let floor = FileTrustStore::new(vehicle.dir.join("trust"))
        .load()
        .unwrap()
        .security_floor(&fx.hardware_id);
    assert_eq!(floor, 0, "the floor does not rise without a commit");
    assert_eq!(agent.stop().await, RunOutcome::Stopped);
    fx.server.stop().await;
}

/// The slot the firmware would boot now holds a complete, known image.
fn assert_bootable(vehicle: &Vehicle, fx: &Fixture, step: &str) {
    let boot = FileBootloader::new(vehicle.dir.join("bootenv.json"))
        .read()
        .unwrap();
    let image = slot_bytes(vehicle, boot.active, fx.v1.len().max(fx.v2.len()));
    let holds_v1 = image[..fx.v1.len()] == fx.v1[..];
    let holds_v2 = image[..fx.v2.len()] == fx.v2[..];
    assert!(
        holds_v1 || holds_v2,
        "after a crash at {step:?} the active slot {:?} must hold a whole image",
        boot.active
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_journaled_step_resumes_to_committed_and_never_leaves_an_unbootable_slot()
{
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let steps = [
        "waiting",
        "downloading",
        "installing",
        "installed",
        "rebooting",
        "health_check",
        "committing",
        "idle",
    ];
    let mut vehicles = Vec::new();
    for step in steps {
        let vehicle = fx
            .vehicle(&format!("veh-crash-{}-", step.replace('_', "")))
            .await;
        fx.first_check_in(&vehicle).await;
        vehicles.push((step, vehicle));
    }
    let rollout = fx.release_v2().await;
    let crashes = vehicles.iter().map(|(step, vehicle)| {
        let fx = &fx;
        let rollout = &rollout;
        async move {
            let agent = RunningAgent::start(vehicle.parts(
                &fx.server,
                HealthCheck::BootIsEnough,
                CrashHook::at(step),
            ));
            let outcome = agent.finished().await;
            assert_eq!(
                outcome,
                RunOutcome::Crashed {
                    step: (*step).to_owned()
                },
                "the crash hook fires at {step}"
            );
            assert_bootable(vehicle, fx, step);
            // Restart without the hook: the agent resumes and finishes the update.
            let agent = RunningAgent::start(vehicle.parts(
                &fx.server,
                HealthCheck::BootIsEnough,
                CrashHook::default(),
            ));
            wait_for_status(&fx.server, vehicle, rollout, "committed").await;
            wait_for(&format!("{step}: idle on slot B"), 30, || async {
                vehicle
                    .journal()
                    .filter(|s| s.phase == Phase::Idle && s.active == SlotName::B)
                    .map(|_| ())
            })
            .await;
            assert_eq!(
                slot_bytes(vehicle, SlotName::B, fx.v2.len()),
                fx.v2,
                "{step}"
            );
            assert_eq!(agent.stop().await, RunOutcome::Stopped);
        }
    });
    futures_util::future::join_all(crashes).await;
    let totals: Value = fx.server.totals(&rollout).await;
    assert_eq!(totals["committed"], steps.len() as u64, "{totals}");
    fx.server.stop().await;
}

/// The fleet simulator, in this process, against the same real server: every simulated
/// vehicle checks in on 1.0.0, then a rollout of 2.0.0 reaches all of them by delta.
/// `OTA_SIM_VEHICLES` sets the fleet size (CI runs the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_simulator_takes_every_vehicle_through_a_rollout() {
    if !require_mqtt().await {
        return;
    }
    let vehicles: usize = std::env::var("OTA_SIM_VEHICLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let server = Server::start(10).await;
    let hardware_id = unique("hw-sim-");
    let v1 = synthetic::image(11, 16 * 1024);
    let v2 = synthetic::next_release(&v1, 12, 8);
    let fleet = SimFleet::on_first_release(&server, &hardware_id, vehicles, &v1, (0.0, None)).await;
    let image = server.upload(&hardware_id, "2.0.0", v2).await;
    let release = server.release(&image, "2.0.0", 1).await;
    let rollout = server
        .rollout_with(
            &release,
            &hardware_id,
            serde_json::json!({ "rate_limit": { "maximum_per_minute": 100000 } }),
        )
        .await;
    let totals = wait_for("every simulated vehicle to commit 2.0.0", 300, || async {
        let totals = server.totals(&rollout).await;
        eprintln!("rollout totals: {totals}");
        (totals["committed"] == vehicles as u64).then_some(totals)
    })
    .await;
    assert_eq!(totals["failed"], 0, "{totals}");
    fleet.stop().await;
    server.stop().await;
}

/// With no broker and no Kafka configured the server runs its own of each (rumqttd, and
/// librdkafka's mock cluster in process), and they carry all three flows: check-ins in,
/// directives out, progress in (through the durable lane). Every vehicle's 2.0.0 fails
/// its health check, so the server learns `rolled_back` only from progress events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_carries_check_ins_directives_and_progress() {
    let vehicles = 5;
    let server = Server::start_embedded(2).await;
    assert_ne!(
        server.mqtt,
        crate::fleet::mqtt_url(),
        "not the machine's broker"
    );
    let hardware_id = unique("hw-embedded-");
    let v1 = synthetic::image(31, 16 * 1024);
    let v2 = synthetic::next_release(&v1, 32, 8);
    let fleet =
        SimFleet::on_first_release(&server, &hardware_id, vehicles, &v1, (1.0, Some("2.0.0")))
            .await;
    let image = server.upload(&hardware_id, "2.0.0", v2).await;
    let release = server.release(&image, "2.0.0", 1).await;
    let rollout = server.rollout(&release, &hardware_id).await;
    wait_for(
        "every vehicle's rolled_back progress event",
        180,
        || async {
            (server.totals(&rollout).await["rolled_back"] == vehicles as u64).then_some(())
        },
    )
    .await;
    // With no Kafka configured either, progress went through the in-process Kafka: the
    // rollout engine's consumer applied it.
    let metrics = server.metrics().await;
    let applied = counter(
        &metrics,
        "ota_vehicle_events_consumed_total{outcome=\"applied\"}",
    );
    assert!(
        applied >= vehicles as u64,
        "progress was applied by the Kafka consumer ({applied} events): {metrics}"
    );
    // Gateway and consumer share the process: each event's signature was checked once,
    // by the gateway, and the consumer found that check instead of repeating it.
    let remembered = counter(
        &metrics,
        "ota_progress_signature_checks_total{outcome=\"remembered\"}",
    );
    assert!(
        remembered >= applied,
        "the consumer re-checked signatures the gateway had checked ({remembered} remembered, {applied} applied): {metrics}"
    );
    fleet.stop().await;
    server.stop().await;
}

/// The whole loop with real agents: a three-phase canary rollout advances phase by phase
/// on real outcomes to every vehicle; then a release whose new image fails its health
/// check trips the breaker in its canary, the rollout halts and is rolled back, and the
/// fleet ends on the good release with the bad one confined to the canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_rollout_completes_and_a_bad_release_is_halted_by_its_breaker() {
    if !require_mqtt().await {
        return;
    }
    let vehicles = 40;
    let server = Server::start(2).await;
    let hardware_id = unique("hw-loop-");
    let v1 = synthetic::image(21, 16 * 1024);
    let v2 = synthetic::next_release(&v1, 22, 8);
    let v3 = synthetic::next_release(&v2, 23, 8);
    // Every vehicle's 3.0.0 fails its health check: the bad release.
    let fleet =
        SimFleet::on_first_release(&server, &hardware_id, vehicles, &v1, (1.0, Some("3.0.0")))
            .await;

    let image = server.upload(&hardware_id, "2.0.0", v2).await;
    let good = server.release(&image, "2.0.0", 1).await;
    let canary = serde_json::json!({
        // Bands large enough that each holds at least the minimum executed count (a
        // phase whose band holds fewer never passes its gate: it is never vacuous).
        "phases": [{ "name": "canary", "percent": 25 }, { "name": "half", "percent": 60 },
                   { "name": "all", "percent": 100 }],
        "abort_criteria": { "min_number_of_executed_things": 2, "threshold_percentage": 20,
                            "action": "rollback" },
    });
    let rollout = server
        .rollout_with(&good, &hardware_id, canary.clone())
        .await;
    let status = wait_for(
        "every vehicle to commit 2.0.0 in the last phase",
        300,
        || async {
            let (_, status) = server
                .call("GET", &format!("/api/v1/rollouts/{rollout}/status"), None)
                .await;
            (status["totals"]["committed"] == vehicles as u64
                && status["rollout"]["current_phase"] == 2)
                .then_some(status)
        },
    )
    .await;
    for phase in status["phases"].as_array().unwrap() {
        assert!(
            phase["committed"].as_u64().unwrap() > 0,
            "every phase had vehicles of its own: {status}"
        );
    }
    assert_eq!(status["totals"]["failed"], 0, "{status}");
    let audit = server.ok("GET", "/api/v1/audit?limit=200", None).await;
    let advances = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "rollout.phase_advance" && a["subject"] == rollout.as_str())
        .count();
    assert_eq!(advances, 2, "two gates met on real outcomes: {audit}");

    let image = server.upload(&hardware_id, "3.0.0", v3).await;
    let bad = server.release(&image, "3.0.0", 1).await;
    let bad_rollout = server.rollout_with(&bad, &hardware_id, canary).await;
    let halted = wait_for("the breaker to halt the bad release", 240, || async {
        let (_, status) = server
            .call(
                "GET",
                &format!("/api/v1/rollouts/{bad_rollout}/status"),
                None,
            )
            .await;
        (status["rollout"]["state"] == "rolled_back").then_some(status)
    })
    .await;
    assert_eq!(halted["rollout"]["breaker_state"], "open", "{halted}");
    assert!(
        halted["rollout"]["breaker_reason"]
            .as_str()
            .is_some_and(|r| r.contains("failed")),
        "{halted}"
    );
    assert_eq!(
        halted["rollout"]["current_phase"], 0,
        "halted in its canary: {halted}"
    );
    let canary_band = halted["phases"][0]["eligible"].as_u64().unwrap();
    let touched: u64 = halted["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            [
                "assigned",
                "downloading",
                "installed",
                "committed",
                "failed",
                "rolled_back",
                "cancelled",
            ]
            .iter()
            .map(|k| p[k].as_u64().unwrap_or(0))
            .sum::<u64>()
        })
        .sum();
    assert!(
        touched <= canary_band && touched < vehicles as u64 / 2,
        "the bad release stayed within its canary ({canary_band} vehicles): {touched} touched: {halted}"
    );
    assert_eq!(halted["totals"]["committed"], 0, "{halted}");
    wait_for("every vehicle to run 2.0.0 again", 240, || async {
        (server.count_installed(&hardware_id, "2.0.0").await == vehicles).then_some(())
    })
    .await;
    fleet.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_slot_that_never_confirms_falls_back_through_the_boot_counter() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let vehicle = fx.vehicle("veh-counter-").await;
    fx.first_check_in(&vehicle).await;
    let rollout = fx.release_v2().await;
    // The new slot boots, then the system resets before its health check confirms it.
    let agent = RunningAgent::start(vehicle.parts(
        &fx.server,
        HealthCheck::BootIsEnough,
        CrashHook::at("health_check"),
    ));
    assert_eq!(
        agent.finished().await,
        RunOutcome::Crashed {
            step: "health_check".to_owned()
        }
    );
    let firmware = FileBootloader::new(vehicle.dir.join("bootenv.json"));
    let mut booted = Vec::new();
    for _ in 0..3 {
        // Power cycles: the firmware spends the try counter, then boots the old slot.
        firmware.reboot().unwrap();
        booted.push(firmware.read().unwrap().booted);
    }
    assert_eq!(booted, [SlotName::B, SlotName::B, SlotName::A]);
    let agent = RunningAgent::start(vehicle.parts(
        &fx.server,
        HealthCheck::BootIsEnough,
        CrashHook::default(),
    ));
    wait_for_status(&fx.server, &vehicle, &rollout, "rolled_back").await;
    let state = vehicle.journal();
    let state = idle(&state);
    assert_eq!(state.active, SlotName::A);
    assert_eq!(slot_bytes(&vehicle, SlotName::A, fx.v1.len()), fx.v1);
    assert_eq!(agent.stop().await, RunOutcome::Stopped);
    fx.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preconditions_hold_an_update_until_met_and_cancel_stops_one_that_waits() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let parked = fx.vehicle("veh-parked-").await;
    let driving = fx.vehicle("veh-driving-").await;
    for vehicle in [&parked, &driving] {
        std::fs::write(
            vehicle.dir.join("vehicle-state.json"),
            br#"{"parked": false, "state_of_charge_percent": 80}"#,
        )
        .unwrap();
        fx.first_check_in(vehicle).await;
    }
    let image = fx
        .server
        .upload(&fx.hardware_id, "2.0.0", fx.v2.clone())
        .await;
    let release = fx.server.release(&image, "2.0.0", 1).await;
    let rollout = fx
        .server
        .rollout_with(
            &release,
            &fx.hardware_id,
            serde_json::json!({ "preconditions": { "parked": true } }),
        )
        .await;
    let agents: Vec<RunningAgent> = [&parked, &driving]
        .iter()
        .map(|v| {
            RunningAgent::start(v.parts(
                &fx.server,
                HealthCheck::BootIsEnough,
                CrashHook::default(),
            ))
        })
        .collect();
    for vehicle in [&parked, &driving] {
        wait_for("the agent to report the unmet condition", 60, || async {
            let (_, v) = fx
                .server
                .call("GET", &format!("/api/v1/vehicles/{}", vehicle.id), None)
                .await;
            (v["agent_state"] == "waiting:parked").then_some(())
        })
        .await;
    }
    assert_eq!(
        slot_bytes(&driving, SlotName::B, 4096),
        vec![0u8; 4096],
        "nothing is downloaded or written while waiting"
    );
    // One vehicle parks: its update proceeds.
    std::fs::write(
        parked.dir.join("vehicle-state.json"),
        br#"{"parked": true, "state_of_charge_percent": 80}"#,
    )
    .unwrap();
    wait_for_status(&fx.server, &parked, &rollout, "committed").await;
    // The rollout is aborted: the server cancels the one still waiting.
    fx.server
        .ok("POST", &format!("/api/v1/rollouts/{rollout}/abort"), None)
        .await;
    wait_for("the waiting vehicle to cancel", 30, || async {
        driving
            .journal()
            .filter(|s| s.phase == Phase::Idle && s.deployment.is_none())
            .map(|_| ())
    })
    .await;
    let state = driving.journal();
    let finished = idle(&state).finished.last().cloned().expect("remembered");
    assert_eq!(finished.outcome, ota_core::protocol::ProgressPhase::Failed);
    assert_eq!(idle(&state).active, SlotName::A);
    assert_eq!(slot_bytes(&driving, SlotName::B, 4096), vec![0u8; 4096]);
    for agent in agents {
        assert_eq!(agent.stop().await, RunOutcome::Stopped);
    }
    fx.server.stop().await;
}

/// Progress events buffered while the vehicle had no connection are all delivered, in
/// order, when it connects, and leave the outbox only once the broker acknowledged them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_buffered_progress_events_are_delivered_in_order_after_reconnecting() {
    use ota_agent::identity::sign_envelope;
    use ota_agent::reporter::{EventKind, Outbox};
    use ota_core::protocol::{
        open_message, topic, Channel, ProgressEvent, ProgressPhase, PAYLOAD_TYPE_PROGRESS,
    };
    if !require_mqtt().await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = synthetic::image(5, 4096);
    let root = {
        use ota_core::metadata::{to_payload, Role, RoleKeys, Roles, RootMetadata};
        let key = ota_core::key::SigningKey::from_seed(&[9u8; 32]);
        let role = RoleKeys {
            keyids: vec![key.key_id()],
            threshold: 1,
        };
        let metadata = RootMetadata::new(
            1,
            ota_core::time::Timestamp::from_unix_seconds(4_102_444_800).unwrap(),
            &[key.public_key()],
            Roles {
                root: role.clone(),
                targets: role.clone(),
                director: role,
            },
        );
        ota_core::envelope::Envelope::sign(
            Role::Root.payload_type(),
            to_payload(&metadata),
            &[&key],
        )
        .to_json_bytes()
    };
    let vehicle = Vehicle::provision(dir.path(), &unique("veh-offline-"), "hw-x", &root, &image);
    // Offline: the events pile up in the outbox on disk.
    {
        let mut outbox = Outbox::open(&vehicle.dir.join("outbox"), 10_000).unwrap();
        let signer = ota_agent::identity::MemoryKey(vehicle.key.clone());
        for sequence in 1..=1000u64 {
            let event = ProgressEvent {
                vehicle_id: vehicle.id.clone(),
                deployment_id: "dep-offline".to_owned(),
                sequence,
                phase: ProgressPhase::Downloading,
                bytes_done: sequence,
                bytes_total: 1000,
                reason_code: None,
                at: ota_core::time::Timestamp::from_unix_seconds(1_800_000_000).unwrap(),
            };
            let bytes = sign_envelope(
                PAYLOAD_TYPE_PROGRESS,
                serde_json::to_vec(&event).unwrap(),
                &signer,
            )
            .unwrap();
            outbox.push(EventKind::Transition, bytes).unwrap();
        }
    }
    // A third-party subscriber on the vehicle's progress topic.
    let (host, port) = ota_agent::mqtt::parse_broker_url(&crate::fleet::mqtt_url()).unwrap();
    let options = rumqttc::MqttOptions::new(unique("observer-"), host, port);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
    client
        .subscribe(
            topic(&vehicle.id, Channel::Progress),
            rumqttc::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let observer = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    let _ = tx.send(None);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let _ = tx.send(Some(p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    assert_eq!(rx.recv().await, Some(None), "subscribed");
    // The agent connects (its server is unreachable: only the broker matters here).
    let agent = RunningAgent::start(vehicle.parts_for(
        "http://127.0.0.1:9",
        HealthCheck::BootIsEnough,
        CrashHook::default(),
    ));
    let mut sequences = Vec::new();
    while sequences.len() < 1000 {
        let payload = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("all 1,000 events arrive within 60 s")
            .expect("observer running")
            .expect("a publish");
        let event: ProgressEvent =
            open_message(&payload, PAYLOAD_TYPE_PROGRESS, &vehicle.key.public_key())
                .expect("signed by the device key");
        sequences.push(event.sequence);
    }
    assert_eq!(
        sequences,
        (1..=1000).collect::<Vec<u64>>(),
        "in order, once each"
    );
    assert_eq!(agent.stop().await, RunOutcome::Stopped);
    observer.abort();
    let outbox = Outbox::open(&vehicle.dir.join("outbox"), 10_000).unwrap();
    assert!(
        outbox.is_empty(),
        "acknowledged events leave the outbox ({} left)",
        outbox.len()
    );
}

/// The agent as a vehicle runs it: `ota-agent provision` (development key store) writes
/// the config, `ota-agent run --config` takes the vehicle from 1.0.0 to 2.0.0 against the
/// real server, and SIGTERM stops it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_provisioned_from_the_cli_installs_a_rollout() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let dir = fx.dir.path().join("binary-vehicle");
    std::fs::create_dir_all(&dir).unwrap();
    let root = dir.join("root.json");
    std::fs::write(&root, &fx.root).unwrap();
    let mut slot_a = fx.v1.clone();
    slot_a.resize(fx.v1.len() * 2, 0);
    std::fs::write(dir.join("slot_a"), &slot_a).unwrap();
    std::fs::write(dir.join("slot_b"), vec![0u8; slot_a.len()]).unwrap();
    let vehicle_id = unique("veh-bin-");
    let path = |name: &str| dir.join(name).display().to_string();
    let factory_length = fx.v1.len().to_string();
    let output = std::process::Command::new(ota_tests::binary("ota-agent"))
        .args([
            "provision",
            "--key-store",
            "file",
            "--key-path",
            &path("device.key"),
            "--vehicle-id",
            &vehicle_id,
            "--hardware-id",
            &fx.hardware_id,
            "--ecu",
            "main",
            "--factory-version",
            "1.0.0",
            "--factory-length",
            &factory_length,
            "--root",
            &path("root.json"),
            "--server-url",
            &fx.server.url,
            "--mqtt-url",
            &crate::fleet::mqtt_url(),
            "--state-dir",
            &path("state"),
            "--slot-a",
            &path("slot_a"),
            "--slot-b",
            &path("slot_b"),
            "--bootloader",
            "file",
            "--boot-env",
            &path("bootenv.json"),
            "--config",
            &path("agent.toml"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "provision: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let public_key = stdout
        .lines()
        .find_map(|l| l.strip_prefix("device public key: "))
        .expect("provision prints the device public key")
        .trim()
        .to_owned();
    fx.server
        .ok(
            "POST",
            "/api/v1/vehicles",
            Some(
                serde_json::json!({ "id": vehicle_id, "public_key": public_key,
                "ecus": [{ "ecu": "main", "hardware_id": fx.hardware_id }], "tags": [] }),
            ),
        )
        .await;
    let mut agent = tokio::process::Command::new(ota_tests::binary("ota-agent"))
        .args(["run", "--config", &path("agent.toml")])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for("the binary's first check-in", 60, || async {
        (fx.server.installed_version(&vehicle_id).await.as_deref() == Some("1.0.0")).then_some(())
    })
    .await;
    let image = fx
        .server
        .upload(&fx.hardware_id, "2.0.0", fx.v2.clone())
        .await;
    let release = fx.server.release(&image, "2.0.0", 1).await;
    let rollout = fx.server.rollout(&release, &fx.hardware_id).await;
    wait_for("the binary to commit 2.0.0", 90, || async {
        (fx.server
            .deployment_status(&vehicle_id, &rollout)
            .await
            .as_deref()
            == Some("committed"))
        .then_some(())
    })
    .await;
    let slot_b = std::fs::read(dir.join("slot_b")).unwrap();
    assert_eq!(&slot_b[..fx.v2.len()], &fx.v2[..], "slot B holds 2.0.0");
    let pid = agent.id().expect("running") as i32;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), agent.wait())
        .await
        .expect("the agent exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    fx.server.stop().await;
}
