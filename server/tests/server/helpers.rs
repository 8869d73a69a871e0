//! Test harness: `spawn_app` on port 0 with a fresh database (a SQLite file in a temp
//! dir, or a fresh PostgreSQL database per test), tokens, signed-message helpers, and
//! `require_service`, which fails under `CI=true` and skips with a message elsewhere.

use ota_core::key::SigningKey;
use ota_core::protocol::{
    sign_message, CheckIn, EcuReport, InstalledImage, TrustedVersions, PAYLOAD_TYPE_CHECKIN,
};
use ota_core::time::Timestamp;
use ota_server::settings::Settings;
use ota_server::startup::Application;
use ota_server::store::{Actor, Store};
use ota_server::tokens::{create_token, Scope};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub const POSTGRES_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432";
pub const MQTT_DEFAULT: &str = "mqtt://127.0.0.1:1883";
pub const KAFKA_DEFAULT: &str = "127.0.0.1:19092";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 4];
    getrandom::getrandom(&mut bytes).expect("random bytes");
    format!(
        "{prefix}{}{}",
        hex::encode(bytes),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn host_port(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// Whether a test service is reachable. When `CI` or `OTA_REQUIRE_SERVICES` is `true`
/// or `1` (any case; `deploy/test.sh` sets the latter) an unreachable service is a
/// failure; elsewhere the test prints a `SKIPPED:` line to stderr and returns, so plain
/// `cargo test` stays hermetic.
pub async fn require_service(name: &str, url: &str) -> bool {
    let address = host_port(url);
    let reachable = matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(&address)
        )
        .await,
        Ok(Ok(_))
    );
    if reachable {
        return true;
    }
    if services_required() {
        panic!("{name} is not reachable at {address} and services are required (CI): it must be running");
    }
    eprintln!("SKIPPED: {name} is not reachable at {address}; run deploy/test.sh for the full suite (CI=true makes this a failure)");
    false
}

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

/// A program a test runs (a test service started per test, like `s3s-fs`): its path,
/// or, when it is missing, `None` after a `SKIPPED:` line — or a failure when services
/// are required (CI), exactly as [`require_service`] does for a server.
pub fn require_program(name: &str, variable: &str) -> Option<std::path::PathBuf> {
    let mut candidates: Vec<std::path::PathBuf> = Vec::new();
    candidates.extend(std::env::var_os(variable).map(std::path::PathBuf::from));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join(name)));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(std::path::Path::new(&home).join(".cargo/bin").join(name));
    }
    let found = candidates.into_iter().find(|path| path.is_file());
    if found.is_none() {
        if services_required() {
            panic!("{name} is not installed (not in ${variable}, PATH or ~/.cargo/bin) and services are required (CI): deploy/services.sh installs it");
        }
        eprintln!("SKIPPED: {name} is not installed; run deploy/services.sh (CI=true makes this a failure)");
    }
    found
}

/// Access key and secret of every test S3 server.
pub const S3_ACCESS_KEY: &str = "ota-test-access";
pub const S3_SECRET_KEY: &str = "ota-test-secret-key";
pub const S3_BUCKET: &str = "ota-blobs";

/// A real S3-protocol server for one test: `s3s-fs` (installed by `deploy/services.sh`)
/// on a free loopback port, serving a temporary directory whose `ota-blobs`
/// subdirectory is the bucket. Killed when dropped.
#[derive(Debug)]
pub struct S3Server {
    pub endpoint: String,
    /// The directory s3s-fs keeps everything in (objects and multipart parts).
    pub root: std::path::PathBuf,
    child: Option<tokio::process::Child>,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// None = skipped (s3s-fs missing outside CI).
    pub async fn start() -> Option<S3Server> {
        let program = require_program("s3s-fs", "OTA_TEST_S3S_FS")?;
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join(S3_BUCKET)).expect("bucket directory");
        // A free port can be taken between our probe and the child's bind: try again.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let log = std::fs::File::create(dir.path().join("s3s-fs.log")).expect("log file");
            let mut child = tokio::process::Command::new(&program)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
                .arg(&root)
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .expect("starting s3s-fs");
            let address = format!("127.0.0.1:{port}");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                if tokio::net::TcpStream::connect(&address).await.is_ok() {
                    return Some(S3Server {
                        endpoint: format!("http://{address}"),
                        root,
                        child: Some(child),
                        _dir: dir,
                    });
                }
                if child.try_wait().expect("s3s-fs status").is_some() {
                    break; // exited (the port was taken): another port
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "s3s-fs did not listen on {address} within 30 s: {}",
                    std::fs::read_to_string(dir.path().join("s3s-fs.log")).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!(
            "s3s-fs exited at start five times: {}",
            std::fs::read_to_string(dir.path().join("s3s-fs.log")).unwrap_or_default()
        );
    }

    /// The server's `[blobs]` settings for this S3 server.
    pub fn settings(&self) -> ota_server::settings::BlobSettings {
        ota_server::settings::BlobSettings {
            backend: ota_server::settings::BlobBackendKind::S3,
            bucket: Some(S3_BUCKET.to_owned()),
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".to_owned(),
            access_key_id: Some(S3_ACCESS_KEY.to_owned()),
            secret_access_key: Some(ota_server::settings::Secret(S3_SECRET_KEY.to_owned())),
            allow_http: true,
        }
    }

    /// Stops the server (the object store becomes unreachable).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

pub fn postgres_url() -> String {
    std::env::var("OTA_TEST_POSTGRES_URL").unwrap_or_else(|_| POSTGRES_DEFAULT.to_owned())
}

/// The test Kafka broker (tansu, started by `deploy/services.sh`).
pub fn kafka_brokers() -> String {
    std::env::var("OTA_TEST_KAFKA_BROKERS").unwrap_or_else(|_| KAFKA_DEFAULT.to_owned())
}

pub fn mqtt_url() -> String {
    std::env::var("OTA_TEST_MQTT_URL").unwrap_or_else(|_| MQTT_DEFAULT.to_owned())
}

/// A fresh PostgreSQL database, dropped by [`TestDatabase::drop_now`].
#[derive(Debug)]
pub struct TestDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> Option<TestDatabase> {
        let base = postgres_url();
        if !require_service("postgres", &base).await {
            return None;
        }
        sqlx::any::install_default_drivers();
        let admin_url = format!("{}/postgres", base.trim_end_matches('/'));
        let name = unique("ota_test_");
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url)
            .await
            .expect("connecting to PostgreSQL as admin");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("creating a test database");
        let url = format!("{}/{name}", base.trim_end_matches('/'));
        Some(TestDatabase {
            admin_url,
            name,
            url,
        })
    }

    /// Lets the database accept connections, or refuses them and ends the open ones
    /// (a database outage as the server sees it).
    pub async fn allow_connections(&self, allow: bool) {
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&self.admin_url)
            .await
            .expect("connecting to PostgreSQL as admin");
        sqlx::query(&format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {allow}",
            self.name
        ))
        .execute(&mut conn)
        .await
        .expect("changing ALLOW_CONNECTIONS");
        if !allow {
            sqlx::query(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
                self.name
            ))
            .execute(&mut conn)
            .await
            .expect("ending the database's connections");
        }
    }

    pub async fn drop_now(&self) {
        if let Ok(mut conn) =
            <sqlx::AnyConnection as sqlx::Connection>::connect(&self.admin_url).await
        {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
        }
    }
}

/// A store on a fresh database of the given backend (None = skipped, see above).
pub async fn fresh_store(
    backend: Backend,
) -> Option<(Store, Option<TestDatabase>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("temp dir");
    match backend {
        Backend::Sqlite => {
            let url = format!("sqlite://{}", dir.path().join("ota.db").display());
            Some((
                Store::connect(&url, 5).await.expect("sqlite store"),
                None,
                dir,
            ))
        }
        Backend::Postgres => {
            let db = TestDatabase::create().await?;
            let store = Store::connect(&db.url, 5).await.expect("postgres store");
            Some((store, Some(db), dir))
        }
    }
}

#[derive(Debug)]
pub struct TestApp {
    pub address: String,
    pub admin_token: String,
    pub read_token: String,
    pub rollout_token: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    /// The running server's state: the same engine the MQTT gateway drives.
    pub state: ota_server::api::AppState,
    /// The S3 server holding the blobs (`Options::s3`), kept alive with the server.
    _s3: Option<S3Server>,
    database: Option<TestDatabase>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub mqtt: bool,
    /// A broker URL used as is, without checking reachability (for failure tests).
    pub mqtt_url_unchecked: Option<String>,
    pub max_image_bytes: Option<u64>,
    pub max_json_bytes: Option<usize>,
    pub max_concurrent_requests: Option<usize>,
    pub request_timeout_seconds: Option<u64>,
    pub upload_idle_timeout_seconds: Option<u64>,
    /// `dependency_breakers.open_seconds`.
    pub breaker_open_seconds: Option<u64>,
    /// `dependency_breakers.minimum_calls`.
    pub breaker_minimum_calls: Option<usize>,
    /// `mqtt.workers` and `mqtt.queue` (the gateway's concurrency and backlog).
    pub mqtt_workers: Option<usize>,
    pub mqtt_queue: Option<usize>,
    /// `mqtt.outbox` (directives and control messages waiting for the broker).
    pub mqtt_outbox: Option<usize>,
    /// The durable lane on the test Kafka broker, with a topic and group of its own.
    pub kafka: bool,
    /// Kafka brokers used as is (a test-owned broker), with a topic and group of its own.
    pub kafka_brokers_unchecked: Option<String>,
    pub kafka_delivery_timeout_ms: Option<u64>,
    /// Blobs in a test-owned S3 server (s3s-fs) instead of the data directory.
    pub s3: bool,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Backend::Sqlite, Options::default())
        .await
        .expect("sqlite never skips")
}

pub async fn spawn_app_with(backend: Backend, options: Options) -> Option<TestApp> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings {
        listen: "127.0.0.1:0".to_owned(),
        data_dir: dir.path().to_owned(),
        ..Settings::default()
    };
    settings.director.tick_milliseconds = 100;
    settings.director.poll_seconds = 30;
    // No vehicle channel unless a test asks for the machine's broker below.
    settings.mqtt.embedded = "off".to_owned();
    // Progress applied directly unless a test asks for Kafka (tansu) below: the direct
    // path is tested here, the in-process Kafka in the e2e suite.
    settings.kafka.embedded = "off".to_owned();
    if let Some(max) = options.max_image_bytes {
        settings.limits.max_image_bytes = max;
    }
    if let Some(seconds) = options.request_timeout_seconds {
        settings.limits.request_timeout_seconds = seconds;
    }
    if let Some(seconds) = options.upload_idle_timeout_seconds {
        settings.limits.upload_idle_timeout_seconds = seconds;
    }
    if let Some(seconds) = options.breaker_open_seconds {
        settings.dependency_breakers.open_seconds = seconds;
    }
    if let Some(calls) = options.breaker_minimum_calls {
        settings.dependency_breakers.minimum_calls = calls;
    }
    if let Some(max) = options.max_concurrent_requests {
        settings.limits.max_concurrent_requests = max;
    }
    if let Some(max) = options.max_json_bytes {
        settings.limits.max_json_bytes = max;
    }
    let database = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(TestDatabase::create().await?),
    };
    if let Some(db) = &database {
        settings.database_url = Some(db.url.parse().expect("a database URL"));
    }
    if options.mqtt {
        let url = mqtt_url();
        if !require_service("mosquitto", &url).await {
            if let Some(db) = &database {
                db.drop_now().await;
            }
            return None;
        }
        settings.mqtt.url = Some(url.parse().expect("a broker URL"));
        // A share group and client id of its own: tests run in parallel against one
        // broker, and each server must receive every check-in meant for it.
        settings.mqtt.share_group = unique("g");
        settings.mqtt.client_id = Some(unique("ota-server-test-"));
    }
    if let Some(url) = options.mqtt_url_unchecked {
        settings.mqtt.url = Some(url.parse().expect("a broker URL"));
        settings.mqtt.share_group = unique("g");
        settings.mqtt.client_id = Some(unique("ota-server-test-"));
    }
    let kafka = match options.kafka_brokers_unchecked {
        Some(brokers) => Some(brokers),
        None if options.kafka => {
            let brokers = kafka_brokers();
            if !require_service("kafka (tansu)", &brokers).await {
                if let Some(db) = &database {
                    db.drop_now().await;
                }
                return None;
            }
            Some(brokers)
        }
        None => None,
    };
    if let Some(brokers) = kafka {
        settings.kafka.brokers = Some(brokers);
        settings.kafka.topic = unique("ota.vehicle-events.test-");
        settings.kafka.rollout_topic = unique("ota.rollout-events.test-");
        settings.kafka.group = unique("ota-rollout-engine-test-");
        settings.kafka.partitions = 1;
    }
    if let Some(timeout) = options.kafka_delivery_timeout_ms {
        settings.kafka.delivery_timeout_ms = timeout;
    }
    if let Some(workers) = options.mqtt_workers {
        settings.mqtt.workers = workers;
    }
    let s3 = if options.s3 {
        let Some(s3) = S3Server::start().await else {
            if let Some(db) = &database {
                db.drop_now().await;
            }
            return None;
        };
        settings.blobs = s3.settings();
        Some(s3)
    } else {
        None
    };
    if let Some(outbox) = options.mqtt_outbox {
        settings.mqtt.outbox = outbox;
    }
    if let Some(queue) = options.mqtt_queue {
        settings.mqtt.queue = queue;
    }
    let app = Application::build(settings)
        .await
        .expect("application builds");
    let address = format!("http://{}", app.address());
    let store = app.state().store.clone();
    let state = app.state().clone();
    let system = Actor::system();
    let (_, admin_token) = create_token(&store, &system, "test-admin", &[Scope::Admin])
        .await
        .expect("token");
    let (_, read_token) = create_token(&store, &system, "test-reader", &[Scope::Read])
        .await
        .expect("token");
    let (_, rollout_token) = create_token(&store, &system, "test-rollouts", &[Scope::RolloutWrite])
        .await
        .expect("token");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    Some(TestApp {
        address,
        admin_token,
        read_token,
        rollout_token,
        http: reqwest::Client::new(),
        dir,
        state,
        _s3: s3,
        database,
        shutdown: Some(tx),
        server: Some(server),
    })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// The throwaway PostgreSQL database (None on SQLite).
    pub fn database(&self) -> Option<&TestDatabase> {
        self.database.as_ref()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Signals shutdown (SIGINT/SIGTERM in production) without waiting for the server.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for the server to exit after [`TestApp::signal_stop`], asserting a clean
    /// exit; the database and data directory stay for the test to read.
    pub async fn wait_stopped(&mut self) {
        if let Some(server) = self.server.take() {
            let result = tokio::time::timeout(Duration::from_secs(30), server).await;
            assert!(
                matches!(result, Ok(Ok(Ok(())))),
                "server must shut down cleanly: {result:?}"
            );
        }
    }

    /// The database the server uses (SQLite in the data directory or the test's own
    /// PostgreSQL database).
    pub fn database_url(&self) -> String {
        match &self.database {
            Some(db) => db.url.clone(),
            None => format!("sqlite://{}", self.dir.path().join("ota.db").display()),
        }
    }

    /// Stops the server gracefully and drops the test database.
    pub async fn stop(mut self) {
        self.signal_stop();
        self.wait_stopped().await;
        if let Some(db) = &self.database {
            db.drop_now().await;
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        decode(response).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request");
        decode(response).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        token: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        decode(response).await
    }

    pub async fn upload(&self, hardware_id: &str, version: &str, bytes: Vec<u8>) -> Value {
        let (status, body) = self
            .post_raw(
                &format!("/api/v1/images?hardware_id={hardware_id}&version={version}"),
                &self.admin_token,
                "application/octet-stream",
                bytes,
            )
            .await;
        assert_eq!(status, 201, "upload must succeed: {body}");
        body
    }

    /// `GET target` as vehicle `vehicle_id`, with a credential signed for it.
    pub async fn vehicle_get(
        &self,
        vehicle_id: &str,
        key: &SigningKey,
        target: &str,
    ) -> reqwest::Response {
        self.http
            .get(self.url(target))
            .header(
                "authorization",
                vehicle_credential(vehicle_id, key, "GET", target),
            )
            .send()
            .await
            .expect("request")
    }

    pub async fn register_vehicle(
        &self,
        id: &str,
        key: &SigningKey,
        hardware_id: &str,
        tags: &[&str],
    ) -> Value {
        let body = serde_json::json!({
            "id": id, "public_key": key.public_key().to_hex(),
            "ecus": [{ "ecu": "main", "hardware_id": hardware_id }], "tags": tags,
        });
        let (status, body) = self
            .post("/api/v1/vehicles", &self.admin_token, &body)
            .await;
        assert_eq!(status, 201, "registering must succeed: {body}");
        body
    }

    /// Operator actions on rollout `id`, in order; each must answer 200.
    pub async fn act(&self, id: &str, actions: &[&str]) {
        for action in actions {
            let (status, body) = self
                .post(
                    &format!("/api/v1/rollouts/{id}/{action}"),
                    &self.admin_token,
                    &serde_json::json!({}),
                )
                .await;
            assert_eq!(status, 200, "{action}: {body}");
        }
    }

    /// Uploads one image, creates a server-signed release and a draft rollout of it.
    pub async fn release_and_rollout(
        &self,
        hardware_id: &str,
        phases: Value,
    ) -> (Value, Value, Value) {
        let version = unique("2.0.");
        let image = self
            .upload(
                hardware_id,
                &version,
                b"new firmware image bytes".repeat(100),
            )
            .await;
        let (status, release) = self
            .post(
                "/api/v1/releases",
                &self.admin_token,
                &serde_json::json!({ "name": unique("rel-"), "version": version, "security_version": 2, "images": [image["id"]] }),
            )
            .await;
        assert_eq!(status, 201, "release: {release}");
        let (status, rollout) = self
            .post(
                "/api/v1/rollouts",
                &self.admin_token,
                &serde_json::json!({ "name": "r", "release_id": release["id"], "phases": phases,
                                     "abort_criteria": { "threshold_percentage": 50, "min_number_of_executed_things": 2 } }),
            )
            .await;
        assert_eq!(status, 201, "rollout: {rollout}");
        (image, release, rollout)
    }
}

pub async fn decode(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = response.bytes().await.expect("body");
    if status >= 400 {
        assert_eq!(
            content_type, "application/problem+json",
            "error {status} must be problem+json: {bytes:?}"
        );
    }
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

/// `<counter>{reason=...}` from `/metrics`, per reason (0 when the series does not exist
/// yet).
pub async fn counts_by_reason(app: &TestApp, counter: &str, reasons: &[&str]) -> Vec<u64> {
    let metrics = app.metrics_text().await;
    let series = format!("{counter}{{");
    reasons
        .iter()
        .map(|reason| {
            let label = format!("reason=\"{reason}\"");
            metrics
                .lines()
                .filter(|line| line.starts_with(&series) && line.contains(&label))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .map(|value| value as u64)
                .sum()
        })
        .collect()
}

/// A vehicle request credential (PROTOCOL.md §10) for `method` and `target`, now.
pub fn vehicle_credential(
    vehicle_id: &str,
    key: &SigningKey,
    method: &str,
    target: &str,
) -> String {
    ota_core::credential::SignedRequest::new(
        vehicle_id,
        chrono::Utc::now().timestamp(),
        method,
        target,
    )
    .expect("a well-formed request")
    .sign(key)
}

pub fn device_key() -> SigningKey {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).expect("random seed");
    SigningKey::from_seed(&seed)
}

pub fn checkin(
    vehicle_id: &str,
    installed: Option<(&str, &[u8])>,
    director_version: u64,
) -> CheckIn {
    CheckIn {
        vehicle_id: vehicle_id.to_owned(),
        nonce: unique("n"),
        sent_at: Timestamp::from_datetime(chrono::Utc::now()),
        ecus: vec![EcuReport {
            ecu: "main".to_owned(),
            hardware_id: "ignored-server-uses-provisioning".to_owned(),
            installed: installed.map(|(version, bytes)| InstalledImage {
                version: version.to_owned(),
                sha256: ota_core::encoding::Sha256Digest::of(bytes),
                length: bytes.len() as u64,
            }),
            active_slot: "a".to_owned(),
        }],
        agent_state: "idle".to_owned(),
        trusted: TrustedVersions {
            root: 1,
            targets: 0,
            director: director_version,
        },
    }
}

pub fn signed_checkin(key: &SigningKey, checkin: &CheckIn) -> Vec<u8> {
    sign_message(PAYLOAD_TYPE_CHECKIN, checkin, key)
}

/// Runs `body` against SQLite and, when reachable, PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body($crate::helpers::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body($crate::helpers::Backend::Postgres).await;
            }
        }
    };
}
