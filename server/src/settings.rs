//! Typed configuration: defaults, then an optional TOML file, then `OTA_*` environment
//! variables (nested keys with `__`, e.g. `OTA_MQTT__URL`). Bad values are reported by
//! figment with the key and where it came from (file path or variable name).

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use ota_core::endpoint::BrokerUrl;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A configuration error: figment's, which names the key, the bad value and its source
/// (file path or environment variable). Boxed: figment's error is large.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub Box<figment::Error>);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address to listen on; port 0 picks a free port (tests).
    pub listen: String,
    /// Where the SQLite file, blobs and dev keys live.
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; default `sqlite://<data_dir>/ota.db`.
    pub database_url: Option<DatabaseUrl>,
    pub database_max_connections: u32,
    /// Directory made by `ota-server keys init`; unset = dev keys under `<data_dir>/dev-keys`.
    pub key_dir: Option<PathBuf>,
    /// Base URL vehicles download blobs from; default `http://<listen address>`.
    pub public_url: Option<String>,
    pub mqtt: MqttSettings,
    /// The durable lane for progress events; `brokers` unset keeps the direct path.
    pub kafka: KafkaSettings,
    pub limits: LimitSettings,
    pub dependency_breakers: DependencyBreakerSettings,
    pub director: DirectorSettings,
    pub delta: DeltaSettings,
    /// Where images and deltas are kept: `<data_dir>/blobs` or an S3-compatible bucket.
    pub blobs: BlobSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSettings {
    /// `mqtt://host:port` of the broker. Unset: the embedded broker (`embedded`).
    pub url: Option<BrokerUrl>,
    /// With no `url`: `"auto"` (the default) runs an embedded broker (rumqttd, for
    /// development) on 127.0.0.1:1883, or on a free port when that one is taken;
    /// `"host:port"` runs it exactly there; `"off"` runs no vehicle channel at all.
    pub embedded: String,
    /// Most connections the embedded broker accepts (vehicles plus the server).
    pub embedded_max_connections: usize,
    /// MQTT client id. Unset (the default): `ota-server-<hostname>-<pid>-<random>`, unique
    /// per process, so replicas in one share group never disconnect each other.
    pub client_id: Option<String>,
    /// Shared-subscription group: replicas in one group split check-ins between them.
    pub share_group: String,
    pub keep_alive_seconds: u64,
    /// Vehicle messages handled at once (each holds a database connection while it runs).
    pub workers: usize,
    /// Vehicle messages accepted and waiting for a worker; past `workers + queue` the
    /// gateway sheds new messages (counted in `ota_vehicle_messages_shed_total`).
    pub queue: usize,
    /// Outgoing messages (directives, control) waiting for the broker connection; past
    /// this they are dropped and counted in `ota_mqtt_unsent_total`.
    pub outbox: usize,
    /// With work pending, this long without progress of the MQTT event loop or of the
    /// workers makes `/readyz` report the vehicle channel as `stalled`.
    pub stall_seconds: u64,
}

/// `[kafka]`: with `brokers` set, verified progress events go MQTT → Kafka → rollout
/// engine (see `crate::events`); unset, the gateway applies them directly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// `host:port[,host:port...]`. Unset: the in-process Kafka (`embedded`).
    pub brokers: Option<String>,
    /// With no `brokers`: `"auto"` (the default) runs an in-process Kafka (librdkafka's
    /// mock cluster, in memory, for development; see `crate::embedded_kafka`); `"off"`
    /// runs no lane and the gateway applies progress directly.
    pub embedded: String,
    /// Vehicle events (verified progress), keyed by vehicle id.
    pub topic: String,
    /// Rollout state changes (every change the engine makes), keyed by rollout id, for
    /// downstream consumers (analytics, dashboards).
    pub rollout_topic: String,
    /// Consumer group of the rollout engine.
    pub group: String,
    /// Partitions and replication of the topic when the server creates it at start-up.
    pub partitions: i32,
    pub replication_factor: i32,
    /// How long the producer retries one event before the gateway backs off and retries
    /// it again (the MQTT message stays unacknowledged meanwhile).
    pub delivery_timeout_ms: u64,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: None,
            embedded: "auto".to_owned(),
            topic: "ota.vehicle-events".to_owned(),
            rollout_topic: "ota.rollout-events".to_owned(),
            group: "ota-rollout-engine".to_owned(),
            partitions: 6,
            replication_factor: 1,
            delivery_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    pub max_image_bytes: u64,
    pub max_json_bytes: usize,
    pub request_timeout_seconds: u64,
    /// An image upload has no whole-request timeout (it takes as long as its size
    /// needs); it fails when no byte arrives for this long.
    pub upload_idle_timeout_seconds: u64,
    pub max_concurrent_requests: usize,
}

/// `[dependency_breakers]`: the breakers around the database and the blob store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DependencyBreakerSettings {
    /// Open when at least this share (1–100) of the window's calls failed.
    pub failure_rate_percent: u8,
    /// The time window the share is computed over, in seconds.
    pub window_seconds: u64,
    /// No decision before this many calls are in the window.
    pub minimum_calls: usize,
    /// How long an open breaker refuses calls before probing.
    pub open_seconds: u64,
    /// Probes let through when half-open.
    pub half_open_calls: usize,
}

impl Default for DependencyBreakerSettings {
    fn default() -> Self {
        DependencyBreakerSettings {
            failure_rate_percent: 50,
            window_seconds: 10,
            minimum_calls: 5,
            open_seconds: 5,
            half_open_calls: 2,
        }
    }
}

impl DependencyBreakerSettings {
    /// The first setting out of its range, as (key, expected, got).
    pub fn problem(&self) -> Option<(&'static str, &'static str, String)> {
        if !(1..=100).contains(&self.failure_rate_percent) {
            return Some((
                "failure_rate_percent",
                "1 to 100",
                self.failure_rate_percent.to_string(),
            ));
        }
        for (key, value) in [
            ("window_seconds", self.window_seconds),
            ("minimum_calls", self.minimum_calls as u64),
            ("open_seconds", self.open_seconds),
            ("half_open_calls", self.half_open_calls as u64),
        ] {
            if value == 0 {
                return Some((key, "at least 1", "0".to_owned()));
            }
        }
        None
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DirectorSettings {
    /// Lifetime of signed director metadata: short, so a withheld directive goes stale.
    pub expiry_seconds: i64,
    pub poll_seconds: u32,
    /// How often the engine re-evaluates breakers and phase progress.
    pub tick_milliseconds: u64,
    /// Check-ins written per database transaction at most (group commit: those that
    /// arrive while a batch is written go together in the next); 1 writes each alone.
    pub checkin_batch: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeltaSettings {
    /// Concurrent delta builds (each is CPU- and memory-heavy).
    pub workers: usize,
    /// A delta is shipped only when it is at least this many percent smaller than the
    /// full image compressed, else vehicles download the full image (0–90).
    pub min_saving_percent: u8,
    /// Whether deltas may carry diff and extra streams as LZMA2 (container algorithm 4,
    /// smaller).
    /// Turn off while the fleet still runs agents that predate algorithm 4.
    pub lzma: bool,
    /// Match-scan profiles each build tries: "auto" (every one, the smallest delta
    /// kept; a match search and a zstd pass per profile), "eager" or "steady" (one,
    /// faster).
    pub scan: crate::delta::ScanChoice,
    /// Whether a small delta may ship as one LZMA2 stream instead of segments (container
    /// algorithm 5, smaller where a release changes little; needs `lzma`).
    /// Turn off while the fleet still runs agents that predate algorithm 5.
    pub one_stream: bool,
    /// Whether builds also try ELF images with their unwind table (`.eh_frame_hdr`)
    /// delta-coded (container transform ids 3-5, smaller on every ELF pair measured).
    /// Turn off while the fleet still runs agents that predate those transform ids.
    pub eh_table: bool,
    /// Whether deltas leave their source and target SHA-256 to the signed metadata
    /// (the director's delta entry `source_sha256` and the targets entry `sha256`, which
    /// agents check them against anyway): container format version 2, a 28-byte header
    /// instead of 92. Turn off while the fleet still runs agents that predate version 2,
    /// before deltas are built: a delta already built for a source and target pair is
    /// served as it is, and such agents fail its install.
    pub detached_digests: bool,
}

/// Which blob store backend keeps images and deltas.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BlobBackendKind {
    /// `<data_dir>/blobs` on local disk: one replica only.
    Local,
    /// An S3-compatible bucket (AWS S3, MinIO, …), shared by every replica.
    S3,
}

/// `[blobs]`: the blob store. The `s3` keys are read only with `backend = "s3"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BlobSettings {
    pub backend: BlobBackendKind,
    /// s3: the bucket; it must exist.
    pub bucket: Option<String>,
    /// s3: the endpoint URL (`http://minio:9000`); unset = AWS S3 in `region`.
    pub endpoint: Option<String>,
    pub region: String,
    /// s3: static credentials (both or neither). Unset: the `AWS_*` environment
    /// (web identity, container or instance credentials) as the AWS SDKs read it.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    /// s3: allow a plain-HTTP endpoint (a private MinIO, tests).
    pub allow_http: bool,
}

impl Default for BlobSettings {
    fn default() -> Self {
        BlobSettings {
            backend: BlobBackendKind::Local,
            bucket: None,
            endpoint: None,
            region: "us-east-1".to_owned(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
        }
    }
}

/// A secret setting: read like a string, never shown by `Debug` (settings may be logged).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// `tracing` filter directives; `RUST_LOG` overrides.
    pub filter: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "127.0.0.1:8080".to_owned(),
            data_dir: PathBuf::from("ota-data"),
            database_url: None,
            database_max_connections: 10,
            key_dir: None,
            public_url: None,
            mqtt: MqttSettings::default(),
            kafka: KafkaSettings::default(),
            limits: LimitSettings::default(),
            dependency_breakers: DependencyBreakerSettings::default(),
            director: DirectorSettings::default(),
            delta: DeltaSettings::default(),
            blobs: BlobSettings::default(),
            log: LogSettings::default(),
        }
    }
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
            url: None,
            embedded: "auto".to_owned(),
            embedded_max_connections: 20_000,
            client_id: None,
            share_group: "ota-server".to_owned(),
            keep_alive_seconds: 30,
            workers: 10,
            queue: 1024,
            outbox: 4096,
            stall_seconds: 15,
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_image_bytes: 4 * 1024 * 1024 * 1024,
            max_json_bytes: 1024 * 1024,
            request_timeout_seconds: 30,
            upload_idle_timeout_seconds: 60,
            max_concurrent_requests: 512,
        }
    }
}

impl Default for DirectorSettings {
    fn default() -> Self {
        DirectorSettings {
            expiry_seconds: 600,
            poll_seconds: 300,
            tick_milliseconds: 1000,
            checkin_batch: 128,
        }
    }
}

impl Default for DeltaSettings {
    fn default() -> Self {
        DeltaSettings {
            workers: 1,
            min_saving_percent: crate::delta::builder::DEFAULT_MIN_SAVING_PERCENT,
            lzma: true,
            scan: crate::delta::ScanChoice::Auto,
            one_stream: true,
            eh_table: true,
            detached_digests: true,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            filter: "info".to_owned(),
        }
    }
}

/// `OTA_*` variables that belong to other programs of this project (the agent, the
/// simulator, the test suite) or to the command line (`OTA_CONFIG`), by prefix. Every
/// other `OTA_*` variable is a setting: an unknown one (`OTA_LISTN`) stops startup
/// with the same "unknown field" message as an unknown key in the TOML file.
const FOREIGN_ENV_PREFIXES: &[&str] = &[
    "config",
    "agent_",
    "pkcs11_",
    "test_",
    "sim_",
    "require_services",
    "token",
    "pin",
];

fn is_foreign_env(key: &str) -> bool {
    FOREIGN_ENV_PREFIXES.iter().any(|prefix| {
        key == prefix.trim_end_matches('_') || (prefix.ends_with('_') && key.starts_with(prefix))
    })
}

impl Settings {
    /// Defaults, then `file` (if given; it must exist), then the environment.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment.merge(
            Env::prefixed("OTA_")
                .filter(|key| !is_foreign_env(&key.as_str().to_ascii_lowercase()))
                .split("__"),
        )
    }

    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        let figment = Self::figment(file);
        let settings: Settings = figment.extract().map_err(|e| SettingsError(Box::new(e)))?;
        settings.check(&figment)?;
        Ok(settings)
    }

    /// Checks that serde's types cannot express. An error names the key, the bad value
    /// and where the value came from (the file, the environment variable or the default),
    /// looked up in `figment`, as figment's own type errors do.
    fn check(&self, figment: &Figment) -> Result<(), SettingsError> {
        let bad = |key: &str, msg: String| {
            Err(SettingsError(Box::new(figment::Error::from(format!(
                "{key}: {msg} ({})",
                value_source(figment, key)
            )))))
        };
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "listen",
                format!(
                    "expected host:port (e.g. 127.0.0.1:8080), got {:?}",
                    self.listen
                ),
            );
        }
        if crate::broker::EmbeddedMode::parse(&self.mqtt.embedded).is_none() {
            return bad(
                "mqtt.embedded",
                format!(
                    "expected \"auto\", \"off\" or host:port, got {:?}",
                    self.mqtt.embedded
                ),
            );
        }
        if crate::embedded_kafka::EmbeddedKafkaMode::parse(&self.kafka.embedded).is_none() {
            return bad(
                "kafka.embedded",
                format!(
                    "expected \"auto\" or \"off\", got {:?}",
                    self.kafka.embedded
                ),
            );
        }
        if self.mqtt.workers == 0 || self.mqtt.workers > 4096 {
            return bad(
                "mqtt.workers",
                format!("expected 1..=4096, got {}", self.mqtt.workers),
            );
        }
        if self.mqtt.outbox == 0 {
            return bad("mqtt.outbox", "expected at least 1, got 0".to_owned());
        }
        if self.mqtt.stall_seconds == 0 {
            return bad(
                "mqtt.stall_seconds",
                "expected at least 1, got 0".to_owned(),
            );
        }
        if self.mqtt.client_id.as_deref().is_some_and(str::is_empty) {
            return bad("mqtt.client_id", "must not be empty".to_owned());
        }
        if self
            .kafka
            .brokers
            .as_deref()
            .is_some_and(|b| b.trim().is_empty())
        {
            return bad("kafka.brokers", "must not be empty".to_owned());
        }
        if self.kafka.partitions < 1 || self.kafka.replication_factor < 1 {
            return bad(
                "kafka.partitions",
                "partitions and replication_factor must be at least 1".to_owned(),
            );
        }
        if self.delta.workers == 0 || self.delta.workers > 64 {
            return bad(
                "delta.workers",
                format!("expected 1..=64, got {}", self.delta.workers),
            );
        }
        let savings = crate::delta::builder::MIN_SAVING_PERCENT;
        if !savings.contains(&self.delta.min_saving_percent) {
            return bad(
                "delta.min_saving_percent",
                format!(
                    "expected {}..={}, got {}",
                    savings.start(),
                    savings.end(),
                    self.delta.min_saving_percent
                ),
            );
        }
        if self.director.expiry_seconds < 30 {
            return bad(
                "director.expiry_seconds",
                format!("expected at least 30, got {}", self.director.expiry_seconds),
            );
        }
        if !(1..=4096).contains(&self.director.checkin_batch) {
            return bad(
                "director.checkin_batch",
                format!("expected 1..=4096, got {}", self.director.checkin_batch),
            );
        }
        if self.blobs.backend == BlobBackendKind::S3 {
            if self.blobs.bucket.as_deref().is_none_or(str::is_empty) {
                return bad(
                    "blobs.bucket",
                    "blobs.backend = \"s3\" needs a bucket".to_owned(),
                );
            }
            if let Some(endpoint) = &self.blobs.endpoint {
                if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                    return bad(
                        "blobs.endpoint",
                        format!("expected http://... or https://..., got {endpoint:?}"),
                    );
                }
                if endpoint.starts_with("http://") && !self.blobs.allow_http {
                    return bad(
                        "blobs.endpoint",
                        format!("{endpoint:?} is plain HTTP: set blobs.allow_http = true"),
                    );
                }
            }
            if self.blobs.access_key_id.is_some() != self.blobs.secret_access_key.is_some() {
                return bad(
                    "blobs.access_key_id",
                    "access_key_id and secret_access_key are set together or not at all".to_owned(),
                );
            }
            // The upload is committed with one CopyObject, which S3 caps at 5 GiB.
            if self.limits.max_image_bytes > crate::blobs::S3_MAX_COPY_BYTES {
                return bad(
                    "limits.max_image_bytes",
                    format!(
                        "expected at most {} with blobs.backend = \"s3\", got {}",
                        crate::blobs::S3_MAX_COPY_BYTES,
                        self.limits.max_image_bytes
                    ),
                );
            }
        }
        if self.limits.max_concurrent_requests == 0 {
            return bad(
                "limits.max_concurrent_requests",
                "expected at least 1, got 0".to_owned(),
            );
        }
        for (key, seconds) in [
            (
                "limits.request_timeout_seconds",
                self.limits.request_timeout_seconds,
            ),
            (
                "limits.upload_idle_timeout_seconds",
                self.limits.upload_idle_timeout_seconds,
            ),
        ] {
            if seconds == 0 {
                return bad(key, "expected at least 1, got 0".to_owned());
            }
        }
        if let Some((key, expected, got)) = self.dependency_breakers.problem() {
            return bad(
                &format!("dependency_breakers.{key}"),
                format!("expected {expected}, got {got}"),
            );
        }
        Ok(())
    }

    pub fn database_url(&self) -> String {
        self.database_url.as_ref().map_or_else(
            || format!("sqlite://{}", self.data_dir.join("ota.db").display()),
            |url| url.as_str().to_owned(),
        )
    }
}

/// A database URL whose backend is known: `sqlite:...` or `postgres://...`
/// (`postgresql://`). Checked when the configuration is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DatabaseUrl {
    url: String,
    backend: crate::store::Backend,
}

impl DatabaseUrl {
    pub fn as_str(&self) -> &str {
        &self.url
    }

    pub fn backend(&self) -> crate::store::Backend {
        self.backend
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<DatabaseUrl, String> {
        let backend = crate::store::Backend::from_url(url).map_err(|_| {
            // Never echo a password back into a log.
            let shown = url.split('@').next_back().unwrap_or_default();
            format!("expected sqlite:... or postgres://..., got {shown:?}")
        })?;
        Ok(DatabaseUrl {
            url: url.to_owned(),
            backend,
        })
    }
}

impl TryFrom<String> for DatabaseUrl {
    type Error = String;

    fn try_from(url: String) -> Result<DatabaseUrl, String> {
        url.parse()
    }
}

impl From<DatabaseUrl> for String {
    fn from(url: DatabaseUrl) -> String {
        url.url
    }
}

/// Where the value of `key` (dotted, e.g. `mqtt.workers`) came from, for error messages:
/// `TOML file /etc/ota.toml`, `environment variable OTA_MQTT__WORKERS` or the built-in default.
fn value_source(figment: &Figment, key: &str) -> String {
    match figment.find_metadata(key) {
        Some(metadata) => match &metadata.source {
            Some(figment::Source::File(path)) => {
                format!("from {} {}", metadata.name, path.display())
            }
            _ if metadata.name.contains("environment") => format!(
                "from environment variable OTA_{}",
                key.replace('.', "__").to_ascii_uppercase()
            ),
            _ => "from the built-in default".to_owned(),
        },
        None => "from the built-in default".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // figment's Jail takes a closure returning figment's (large) error type.
    #[allow(clippy::result_large_err)]
    #[test]
    fn file_then_env_with_clear_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "ota.toml",
                "listen = \"0.0.0.0:9000\"\n[mqtt]\nurl = \"mqtt://broker:1883\"\n",
            )?;
            jail.set_env("OTA_DELTA__WORKERS", "3");
            jail.set_env("OTA_TEST_POSTGRES_URL", "ignored");
            let s = Settings::load(Some(Path::new("ota.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.listen, "0.0.0.0:9000");
            assert_eq!(s.mqtt.url, Some(BrokerUrl::new("broker", 1883)));
            assert_eq!(s.delta.workers, 3);

            jail.set_env("OTA_MQTT__URL", "broker:1883");
            let err = Settings::load(Some(Path::new("ota.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                err.to_lowercase().contains("mqtt.url")
                    && err.contains("expected mqtt://")
                    && err.contains("OTA_"),
                "a bad broker URL is refused when read, naming the key and its source: {err}"
            );
            jail.clear_env();
            jail.set_env("OTA_DATABASE_URL", "mysql://root:secret@db/ota");
            let err = Settings::load(Some(Path::new("ota.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                err.to_lowercase().contains("database_url")
                    && err.contains("expected sqlite:")
                    && !err.contains("secret"),
                "a database URL of no known backend is refused when read, without its password: {err}"
            );
            jail.clear_env();
            jail.set_env("OTA_DELTA__WORKERS", "3");

            jail.set_env("OTA_DELTA__WORKERS", "many");
            let err = Settings::load(Some(Path::new("ota.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                err.to_lowercase().contains("delta.workers")
                    && err.contains("\"many\"")
                    && err.contains("OTA_"),
                "error must name the key, the bad value and the environment as its source: {err}"
            );

            jail.set_env("OTA_DELTA__WORKERS", "1");
            jail.set_env("OTA_DELTA__MIN_SAVING_PERCENT", "95");
            let err = Settings::load(Some(Path::new("ota.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("delta.min_saving_percent") && err.contains("expected 0..=90, got 95"),
                "a delta saving above 90% is refused, naming the key and the range: {err}"
            );
            jail.set_env("OTA_DELTA__MIN_SAVING_PERCENT", "30");
            let s = Settings::load(Some(Path::new("ota.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.delta.min_saving_percent, 30);
            jail.set_env("OTA_DELTA__MIN_SAVING_PERCENT", "10");
            assert_eq!(s.delta.scan, crate::delta::ScanChoice::Auto);
            jail.set_env("OTA_DELTA__SCAN", "steady");
            let s = Settings::load(Some(Path::new("ota.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.delta.scan, crate::delta::ScanChoice::Steady);
            jail.set_env("OTA_DELTA__SCAN", "sideways");
            let err = Settings::load(Some(Path::new("ota.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("sideways") && err.contains("eager"),
                "an unknown scan profile is refused, naming the known ones: {err}"
            );
            jail.set_env("OTA_DELTA__SCAN", "auto");
            jail.set_env("OTA_LISTEN", "nowhere");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("listen"), "{err}");

            jail.set_env("OTA_LISTEN", "127.0.0.1:0");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.mqtt.client_id, None, "unset: unique per process");
            jail.set_env("OTA_MQTT__CLIENT_ID", "replica-a");
            jail.set_env("OTA_MQTT__WORKERS", "8");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                (s.mqtt.client_id.as_deref(), s.mqtt.workers),
                (Some("replica-a"), 8)
            );
            jail.set_env("OTA_MQTT__WORKERS", "0");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("mqtt.workers"), "{err}");
            jail.set_env("OTA_MQTT__WORKERS", "8");
            assert_eq!(s.kafka.brokers, None, "no [kafka]: the direct path");
            jail.set_env("OTA_KAFKA__BROKERS", "127.0.0.1:19092");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                (
                    s.kafka.brokers.as_deref(),
                    s.kafka.topic.as_str(),
                    s.kafka.group.as_str()
                ),
                (
                    Some("127.0.0.1:19092"),
                    "ota.vehicle-events",
                    "ota-rollout-engine"
                )
            );
            jail.set_env("OTA_KAFKA__BROKERS", "");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("kafka.brokers"), "{err}");
            jail.set_env("OTA_KAFKA__BROKERS", "127.0.0.1:19092");
            jail.create_file("bad.toml", "lissten = \"x\"\n")?;
            let err = Settings::load(Some(Path::new("bad.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("lissten"), "unknown keys must be named: {err}");
            let from_file = err.split(" for key").next().unwrap_or(&err).to_owned();
            // A mistyped variable stops startup with the message of an unknown TOML key.
            jail.set_env("OTA_LISSTEN", "x");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(
                err.starts_with(&from_file) && err.contains("OTA_"),
                "an unknown OTA_ variable must be refused like an unknown TOML key \
                 ({from_file}): {err}"
            );
            std::env::remove_var("OTA_LISSTEN");
            // Other programs' variables are not settings.
            for foreign in [
                "OTA_CONFIG_DIR_UNUSED",
                "OTA_AGENT_CRASH_AT",
                "OTA_PKCS11_MODULE",
                "OTA_SIM_VEHICLES",
                "OTA_REQUIRE_SERVICES",
                "OTA_TOKEN",
            ] {
                jail.set_env(foreign, "1");
            }
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("config_dir_unused"), "{err}");
            std::env::remove_var("OTA_CONFIG_DIR_UNUSED");
            Settings::load(None).map_err(|e| e.to_string())?;
            Ok(())
        });
    }

    /// `[blobs]` chooses the backend; the S3 keys are checked when S3 is chosen, and the
    /// secret never shows in `Debug` output.
    #[allow(clippy::result_large_err)]
    #[test]
    fn blob_settings_choose_the_backend_and_check_the_s3_keys() {
        figment::Jail::expect_with(|jail| {
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.blobs.backend, BlobBackendKind::Local, "local by default");
            jail.set_env("OTA_BLOBS__BACKEND", "gcs");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(
                err.to_lowercase().contains("blobs.backend") && err.contains("gcs"),
                "an unknown backend is named: {err}"
            );
            jail.set_env("OTA_BLOBS__BACKEND", "s3");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("blobs.bucket"), "s3 needs a bucket: {err}");
            jail.set_env("OTA_BLOBS__BUCKET", "ota-blobs");
            jail.set_env("OTA_BLOBS__ENDPOINT", "http://127.0.0.1:9000");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(
                err.contains("blobs.endpoint") && err.contains("allow_http"),
                "plain HTTP only when allowed: {err}"
            );
            jail.set_env("OTA_BLOBS__ALLOW_HTTP", "true");
            jail.set_env("OTA_BLOBS__ACCESS_KEY_ID", "AK");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(
                err.contains("blobs.access_key_id"),
                "both keys or neither: {err}"
            );
            jail.set_env("OTA_BLOBS__SECRET_ACCESS_KEY", "very-secret");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                (
                    s.blobs.backend,
                    s.blobs.bucket.as_deref(),
                    s.blobs.endpoint.as_deref(),
                    s.blobs.allow_http
                ),
                (
                    BlobBackendKind::S3,
                    Some("ota-blobs"),
                    Some("http://127.0.0.1:9000"),
                    true
                )
            );
            assert_eq!(
                s.blobs.secret_access_key,
                Some(Secret("very-secret".to_owned()))
            );
            assert!(
                !format!("{s:?}").contains("very-secret"),
                "the secret must not appear in Debug output"
            );
            jail.set_env("OTA_LIMITS__MAX_IMAGE_BYTES", "6000000000");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(
                err.contains("limits.max_image_bytes"),
                "S3 commits an upload with one copy (5 GiB at most): {err}"
            );
            Ok(())
        });
    }

    /// The checks serde's types cannot express name where the bad value came from too:
    /// the file (with its path) or the environment variable that set it.
    #[allow(clippy::result_large_err)]
    #[test]
    fn checked_values_name_the_file_or_variable_they_came_from() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("ota.toml", "[mqtt]\nworkers = 0\n")?;
            let err = Settings::load(Some(Path::new("ota.toml")))
                .unwrap_err()
                .to_string();
            // The path as the operator gave it (`--config ota.toml`).
            let file = Path::new("ota.toml");
            assert!(
                err.contains("mqtt.workers")
                    && err.contains("got 0")
                    && err.contains(&format!("from TOML file {}", file.display())),
                "a bad file value must name the key, the value and the file: {err}"
            );

            jail.set_env("OTA_MQTT__WORKERS", "0");
            jail.create_file("ota.toml", "[mqtt]\nworkers = 8\n")?;
            let err = Settings::load(Some(Path::new("ota.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("got 0")
                    && err.contains("from environment variable OTA_MQTT__WORKERS"),
                "the environment overrides the file and must be named as the source: {err}"
            );

            jail.clear_env();
            jail.create_file("ota.toml", "[director]\nexpiry_seconds = 5\n")?;
            jail.set_env("OTA_LISTEN", "nowhere");
            let err = Settings::load(Some(Path::new("ota.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("listen") && err.contains("from environment variable OTA_LISTEN"),
                "{err}"
            );
            jail.set_env("OTA_LISTEN", "127.0.0.1:0");
            let err = Settings::load(Some(Path::new("ota.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("director.expiry_seconds")
                    && err.contains(&format!("from TOML file {}", file.display())),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn dependency_breaker_settings_out_of_range_are_named() {
        let ok = DependencyBreakerSettings::default();
        assert_eq!(ok.problem(), None);
        let bad = DependencyBreakerSettings {
            failure_rate_percent: 0,
            ..ok.clone()
        };
        assert_eq!(bad.problem().unwrap().0, "failure_rate_percent");
        let bad = DependencyBreakerSettings {
            open_seconds: 0,
            ..ok
        };
        assert_eq!(bad.problem().unwrap().0, "open_seconds");
    }
}
