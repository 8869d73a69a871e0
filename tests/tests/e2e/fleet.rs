//! A real `ota-server` (SQLite, the machine's Mosquitto) and real agents: the whole
//! vehicle loop. The server runs in this process through `Application` (the same code
//! as the binary); agents run through the same driver as `ota-agent run`.

use ota_agent::directive::DirectiveVerifier;
use ota_agent::fetch::{FetchLimits, HttpTransport};
use ota_agent::identity::{DeviceSigner, MemoryKey};
use ota_agent::journal::{CrashHook, Journal};
use ota_agent::machine::AgentState;
use ota_agent::reporter::Outbox;
use ota_agent::run::{
    run, vehicle_transport, AgentParts, FactoryImage, Faults, HealthCheck, RunOutcome,
};
use ota_agent::slots::file::FileBootloader;
use ota_agent::slots::SlotPaths;
use ota_agent::trust_store::FileTrustStore;
use ota_core::key::SigningKey;
use ota_server::settings::Settings;
use ota_server::startup::Application;
use ota_server::store::Actor;
use ota_server::tokens::{create_token, Scope};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Whether an environment flag's value means "on": `true` or `1`, in any case. Anything
/// else (unset, empty, `0`, `false`, `yes`) is off.
pub fn flag_is_on(value: &str) -> bool {
    let value = value.trim();
    value.eq_ignore_ascii_case("true") || value == "1"
}

/// Whether a missing service must fail the test: `CI` or `OTA_REQUIRE_SERVICES` is on.
pub fn services_required() -> bool {
    ["CI", "OTA_REQUIRE_SERVICES"]
        .into_iter()
        .any(|name| std::env::var(name).is_ok_and(|v| flag_is_on(&v)))
}

#[test]
fn service_flags_accept_true_and_one_in_any_case() {
    for on in ["true", "TRUE", "True", "tRuE", "1", " true "] {
        assert!(flag_is_on(on), "{on:?} must turn the flag on");
    }
    for off in ["", "0", "false", "FALSE", "yes", "on", "2", "truthy"] {
        assert!(!flag_is_on(off), "{off:?} must leave the flag off");
    }
}

pub fn mqtt_url() -> String {
    std::env::var("OTA_TEST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".to_owned())
}

/// Whether the broker answers; fails the test when services are required.
pub async fn require_mqtt() -> bool {
    let url = mqtt_url();
    let address = url.trim_start_matches("mqtt://").to_owned();
    let reachable = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(address.clone()),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if !reachable {
        assert!(
            !services_required(),
            "the MQTT broker at {url} is required for this test but unreachable"
        );
        eprintln!("SKIPPED: MQTT broker at {url} unreachable; run deploy/test.sh");
    }
    reachable
}

pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Waits until `check` returns `Some`, polling every 100 ms, up to `seconds`.
pub async fn wait_for<T, F, Fut>(what: &str, seconds: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {seconds} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub use ota_tests::metrics::counter;

/// A running server.
pub struct Server {
    pub url: String,
    /// The broker the server uses (`mqtt://host:port`): the machine's, or its embedded one.
    pub mqtt: String,
    pub admin: String,
    /// A token with the `read` scope only (the admin token for an attached server).
    pub reader: String,
    pub http: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    pub async fn start(poll_seconds: u32) -> Server {
        Server::start_on(poll_seconds, Some(mqtt_url())).await
    }

    /// A server with its embedded MQTT broker (rumqttd) on a free port.
    pub async fn start_embedded(poll_seconds: u32) -> Server {
        Server::start_on(poll_seconds, None).await
    }

    async fn start_on(poll_seconds: u32, broker: Option<String>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings {
            listen: "127.0.0.1:0".to_owned(),
            data_dir: dir.path().to_owned(),
            ..Settings::default()
        };
        settings.director.tick_milliseconds = 100;
        settings.director.poll_seconds = poll_seconds;
        // Starting a rollout enqueues delta builds for the whole selected fleet inside the
        // request; on a CI machine running other suites beside a simulated fleet that can
        // take longer than the 30 s default.
        settings.limits.request_timeout_seconds = 120;
        if broker.is_none() {
            let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            settings.mqtt.embedded = free.local_addr().unwrap().to_string();
        }
        settings.mqtt.url = broker.map(|url| url.parse().expect("a broker URL"));
        settings.mqtt.share_group = unique("e2e");
        settings.mqtt.client_id = Some(unique("ota-server-e2e-"));
        let app = Application::build(settings).await.expect("server builds");
        let url = format!("http://{}", app.address());
        let state = app.state().clone();
        let mqtt = state
            .settings
            .mqtt
            .url
            .as_ref()
            .expect("a broker")
            .to_string();
        let (_, admin) = create_token(&state.store, &Actor::system(), "e2e", &[Scope::Admin])
            .await
            .expect("token");
        let (_, reader) =
            create_token(&state.store, &Actor::system(), "e2e-reader", &[Scope::Read])
                .await
                .expect("token");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        let server = Server {
            url,
            mqtt,
            admin,
            reader,
            http: reqwest::Client::new(),
            _dir: Some(dir),
            shutdown: Some(tx),
            task: Some(task),
        };
        wait_for("the server's broker connection", 15, || async {
            let ready: Value = server
                .http
                .get(format!("{}/readyz", server.url))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (ready["broker"] == "ok").then_some(())
        })
        .await;
        server
    }

    /// A server running elsewhere (a child process): the same API helpers, nothing to
    /// stop.
    pub fn attach(url: &str, mqtt: &str, admin: &str) -> Server {
        Server {
            url: url.to_owned(),
            mqtt: mqtt.to_owned(),
            admin: admin.to_owned(),
            reader: admin.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            _dir: None,
            shutdown: None,
            task: None,
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
    }

    /// The Prometheus exposition text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let request = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url).json(&body.unwrap_or(json!({}))),
        };
        let response = request.bearer_auth(&self.admin).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path} must succeed: {status} {value}"
        );
        value
    }

    pub async fn upload(&self, hardware_id: &str, version: &str, bytes: Vec<u8>) -> Value {
        let response = self
            .http
            .post(format!(
                "{}/api/v1/images?hardware_id={hardware_id}&version={version}",
                self.url
            ))
            .bearer_auth(&self.admin)
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201, "upload");
        response.json().await.unwrap()
    }

    pub async fn release(&self, image: &Value, version: &str, security_version: u64) -> Value {
        self.ok(
            "POST",
            "/api/v1/releases",
            Some(json!({ "name": unique("rel-"), "version": version,
                         "security_version": security_version, "images": [image["id"]] })),
        )
        .await
    }

    /// The root metadata vehicles are provisioned with (version 1).
    pub async fn root(&self) -> Vec<u8> {
        let response = self
            .http
            .get(format!("{}/v1/metadata/root/1.json", self.url))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "root metadata");
        response.bytes().await.unwrap().to_vec()
    }

    pub async fn register(&self, id: &str, key: &SigningKey, hardware_id: &str) {
        self.ok(
            "POST",
            "/api/v1/vehicles",
            Some(json!({ "id": id, "public_key": key.public_key().to_hex(),
                         "ecus": [{ "ecu": "main", "hardware_id": hardware_id }], "tags": [] })),
        )
        .await;
    }

    /// The installed version the server recorded for `vehicle`'s main ECU.
    pub async fn installed_version(&self, vehicle: &str) -> Option<String> {
        let (_, v) = self
            .call("GET", &format!("/api/v1/vehicles/{vehicle}"), None)
            .await;
        let record = if v["vehicle"].is_object() {
            &v["vehicle"]
        } else {
            &v
        };
        record["ecus"][0]["installed_version"]
            .as_str()
            .map(str::to_owned)
    }

    /// The status of `vehicle`'s deployment in `rollout`, as the server recorded it.
    pub async fn deployment_status(&self, vehicle: &str, rollout: &str) -> Option<String> {
        let (_, v) = self
            .call("GET", &format!("/api/v1/vehicles/{vehicle}"), None)
            .await;
        v["deployments"]
            .as_array()?
            .iter()
            .find(|d| d["rollout_id"] == rollout)
            .and_then(|d| d["status"].as_str().map(str::to_owned))
    }

    /// How many vehicles of `hardware_id` the server saw running `version` (≤ 1000).
    pub async fn count_installed(&self, hardware_id: &str, version: &str) -> usize {
        let (_, list) = self
            .call(
                "GET",
                &format!("/api/v1/vehicles?hardware_id={hardware_id}&installed_version={version}&limit=1000"),
                None,
            )
            .await;
        list["items"].as_array().map_or(0, Vec::len)
    }

    /// A rollout's totals (assigned, committed, failed, rolled_back, ...).
    pub async fn totals(&self, rollout: &str) -> Value {
        let (_, status) = self
            .call("GET", &format!("/api/v1/rollouts/{rollout}/status"), None)
            .await;
        status["totals"].clone()
    }

    /// Creates and starts a rollout of `release` to every vehicle with `hardware_id`.
    pub async fn rollout(&self, release: &Value, hardware_id: &str) -> String {
        self.rollout_with(release, hardware_id, json!({})).await
    }

    /// Like [`Server::rollout`], with more of the rollout spec (`extra` is merged in).
    pub async fn rollout_with(&self, release: &Value, hardware_id: &str, extra: Value) -> String {
        let mut body = json!({ "name": unique("ro-"), "release_id": release["id"],
                               "selector": { "hardware_ids": [hardware_id] },
                               "phases": [{ "name": "all", "percent": 100 }] });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                body.insert(k.clone(), v.clone());
            }
        }
        let rollout = self.ok("POST", "/api/v1/rollouts", Some(body)).await;
        let id = rollout["id"].as_str().unwrap().to_owned();
        self.ok("POST", &format!("/api/v1/rollouts/{id}/start"), None)
            .await;
        id
    }
}

/// One vehicle's files and identity.
pub struct Vehicle {
    pub id: String,
    pub key: SigningKey,
    pub dir: PathBuf,
    pub hardware_id: String,
    pub factory_len: u64,
}

impl Vehicle {
    /// A vehicle with `factory` in slot A and the server's root as its trust anchor.
    pub fn provision(
        base: &Path,
        id: &str,
        hardware_id: &str,
        root: &[u8],
        factory: &[u8],
    ) -> Vehicle {
        let dir = base.join(id);
        std::fs::create_dir_all(dir.join("trust")).unwrap();
        std::fs::write(dir.join("trust/root.json"), root).unwrap();
        let slot_bytes = factory.len() * 2;
        let mut a = factory.to_vec();
        a.resize(slot_bytes, 0);
        std::fs::write(dir.join("slot_a"), a).unwrap();
        std::fs::write(dir.join("slot_b"), vec![0u8; slot_bytes]).unwrap();
        let mut seed = [0u8; 32];
        seed[..id.len().min(32)].copy_from_slice(&id.as_bytes()[..id.len().min(32)]);
        seed[31] ^= 0x5a;
        Vehicle {
            id: id.to_owned(),
            key: SigningKey::from_seed(&seed),
            dir,
            hardware_id: hardware_id.to_owned(),
            factory_len: factory.len() as u64,
        }
    }

    pub fn parts(
        &self,
        server: &Server,
        health: HealthCheck,
        crash: CrashHook,
    ) -> AgentParts<HttpTransport> {
        self.parts_for(&server.url, health, crash)
    }

    pub fn parts_for(
        &self,
        server_url: &str,
        health: HealthCheck,
        crash: CrashHook,
    ) -> AgentParts<HttpTransport> {
        let signer: Arc<dyn DeviceSigner> = Arc::new(MemoryKey(self.key.clone()));
        let transport = vehicle_transport(server_url, &self.id, signer.clone()).unwrap();
        AgentParts {
            vehicle_id: self.id.clone(),
            ecu: "main".to_owned(),
            hardware_id: self.hardware_id.clone(),
            signer,
            directives: DirectiveVerifier::for_ecu(
                FileTrustStore::new(self.dir.join("trust")),
                &self.id,
                "main",
                &self.hardware_id,
            ),
            transport: Arc::new(transport),
            bootloader: Arc::new(FileBootloader::new(self.dir.join("bootenv.json"))),
            simulated_reboot: true,
            boot_tries: 3,
            slots: SlotPaths {
                a: self.dir.join("slot_a"),
                b: self.dir.join("slot_b"),
            },
            state_dir: self.dir.clone(),
            outbox: Outbox::open(&self.dir.join("outbox"), 10_000).unwrap(),
            health,
            vehicle_state: Some(self.dir.join("vehicle-state.json")),
            limits: FetchLimits::default(),
            crash,
            faults: Faults::default(),
            factory: Some(FactoryImage {
                version: "1.0.0".to_owned(),
                length: self.factory_len,
            }),
            mqtt_url: mqtt_url(),
        }
    }

    pub fn journal(&self) -> Option<AgentState> {
        Journal::new(&self.dir).load().unwrap()
    }
}

/// An agent running in the background until stopped.
pub struct RunningAgent {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<RunOutcome, ota_agent::run::RunError>>,
}

impl RunningAgent {
    pub fn start(parts: AgentParts<HttpTransport>) -> RunningAgent {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(parts, async move {
            let _ = rx.await;
        }));
        RunningAgent {
            stop: Some(tx),
            task,
        }
    }

    pub async fn stop(mut self) -> RunOutcome {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.expect("agent task").expect("agent runs")
    }

    /// Waits for the agent to end by itself (the crash hook).
    pub async fn finished(self) -> RunOutcome {
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the agent ends within 60 s")
            .expect("agent task")
            .expect("agent runs")
    }
}

/// A simulated fleet running in the background until stopped.
pub struct SimFleet {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl SimFleet {
    pub async fn start(
        server: &Server,
        hardware_id: &str,
        vehicles: usize,
        factory: &[u8],
        faults: (f64, Option<&str>),
    ) -> SimFleet {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("root.json"), server.root().await).unwrap();
        std::fs::write(dir.path().join("factory.img"), factory).unwrap();
        let args = ota_agent::simulate::SimulateArgs {
            vehicles,
            server: server.url.clone(),
            mqtt: server.mqtt.clone(),
            root: dir.path().join("root.json"),
            factory_image: dir.path().join("factory.img"),
            factory_version: "1.0.0".to_owned(),
            slot_bytes: 64 * 1024,
            ecu: "main".to_owned(),
            hardware_id: hardware_id.to_owned(),
            dir: dir.path().join("fleet"),
            id_prefix: unique("sim-"),
            seed: 5,
            register_token: Some(server.admin.clone()),
            registration_file: None,
            fail_rate: 0.0,
            fail_phase: ota_agent::simulate::FailPhase::Install,
            unhealthy_rate: faults.0,
            faulty_version: faults.1.map(str::to_owned),
            duration_seconds: None,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            ota_agent::simulate::run_fleet(&args, async move {
                let _ = stop_rx.await;
            })
            .await
        });
        SimFleet {
            stop: Some(stop_tx),
            task,
            _dir: dir,
        }
    }

    /// Releases `factory` as 1.0.0, starts the fleet on it, and waits until every
    /// vehicle checked in running it.
    pub async fn on_first_release(
        server: &Server,
        hardware_id: &str,
        vehicles: usize,
        factory: &[u8],
        faults: (f64, Option<&str>),
    ) -> SimFleet {
        let image = server.upload(hardware_id, "1.0.0", factory.to_vec()).await;
        server.release(&image, "1.0.0", 1).await;
        let fleet = SimFleet::start(server, hardware_id, vehicles, factory, faults).await;
        wait_for(
            "every simulated vehicle to check in on 1.0.0",
            240,
            || async {
                (server.count_installed(hardware_id, "1.0.0").await == vehicles).then_some(())
            },
        )
        .await;
        fleet
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task
            .await
            .expect("the simulator task")
            .expect("the simulator runs");
    }
}
