//! The agent's configuration file (TOML), written by `ota-agent provision` and read at
//! start-up.
//!
//! Parsing is strict: unknown keys are refused (`deny_unknown_fields`), and every error
//! names the key and what was wrong with it (`key.pin: ...`, `download.deadline_seconds:
//! ...`). Values are checked after parsing ([`AgentConfig::validate`]).
//!
//! ```toml
//! vehicle_id = "veh-0001"
//! server_url = "http://127.0.0.1:8080"
//! mqtt_url = "mqtt://127.0.0.1:1883"
//! state_dir = "/var/lib/ota-agent"
//! [ecu]
//! name = "main"
//! hardware_id = "hw-a"
//! [key]
//! store = "pkcs11"            # or "file" with `path` (development only)
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! token_label = "ota-vehicle"
//! pin_env = "OTA_PIN"          # or pin = "..."
//! label = "ota-device-key"
//! [anchor]
//! label = "ota-root-anchor"
//! [slots]
//! a = "/dev/disk/by-partlabel/rootfs_a"
//! b = "/dev/disk/by-partlabel/rootfs_b"
//! [bootloader]
//! kind = "file"               # or "uboot" / "grub"
//! env_path = "/var/lib/ota-agent/bootenv.json"
//! tries = 3
//! [health]
//! command = ["/usr/bin/systemctl", "is-system-running"]
//! timeout_seconds = 120
//! [vehicle_state]
//! path = "/run/vehicle-state.json"
//! [download]
//! min_bytes_per_second = 1024
//! throughput_window_seconds = 30
//! deadline_seconds = 3600
//! ```

use crate::hsm::HsmConfig;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("agent config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent config {origin}: {key}: {message}{}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Parse {
        origin: String,
        key: String,
        line: Option<usize>,
        message: String,
    },
    #[error("agent config {origin}: {key}: {reason}")]
    Value {
        origin: String,
        key: &'static str,
        reason: String,
    },
    #[error("agent config: key.pin_env: environment variable {var} is not set")]
    PinEnvUnset { var: String },
    #[error("agent config: serializing: {0}")]
    Serialize(#[from] toml::ser::Error),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The vehicle's opaque id ([`ota_core::protocol::is_valid_vehicle_id`]).
    pub vehicle_id: String,
    /// HTTP(S) base URL of the server, for blobs and metadata.
    pub server_url: String,
    /// MQTT broker URL (`mqtt://` or `mqtts://`).
    pub mqtt_url: String,
    /// Journal, downloads, outbox and the trust store (`state_dir/trust`).
    pub state_dir: PathBuf,
    pub ecu: EcuConfig,
    pub key: KeyConfig,
    /// The root anchor public-key object in the same token (absent: file trust store
    /// only, development).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<AnchorConfig>,
    pub slots: SlotsConfig,
    pub bootloader: BootloaderConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub vehicle_state: VehicleStateConfig,
    #[serde(default)]
    pub download: DownloadConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcuConfig {
    pub name: String,
    pub hardware_id: String,
    /// The image in the active slot when the vehicle left the factory: its version and
    /// length (the agent hashes that many bytes of the slot at first start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factory: Option<FactoryConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactoryConfig {
    pub version: String,
    pub length: u64,
}

/// Where the device key lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "store", rename_all = "lowercase")]
pub enum KeyConfig {
    /// In the vehicle's PKCS#11 token (production).
    Pkcs11(Pkcs11KeyConfig),
    /// A 0600 seed file (development and the simulator only).
    File(FileKeyConfig),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11KeyConfig {
    pub module: PathBuf,
    pub token_label: String,
    /// The user PIN (exactly one of `pin` and `pin_env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// The environment variable holding the user PIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_env: Option<String>,
    /// The label of the device key objects.
    pub label: String,
}

impl Pkcs11KeyConfig {
    /// The token configuration, with the PIN resolved from `pin` or `pin_env`.
    pub fn hsm_config(&self) -> Result<HsmConfig, ConfigError> {
        let pin = match (&self.pin, &self.pin_env) {
            (Some(pin), _) => pin.clone(),
            (None, Some(var)) => {
                std::env::var(var).map_err(|_| ConfigError::PinEnvUnset { var: var.clone() })?
            }
            (None, None) => {
                return Err(ConfigError::Value {
                    origin: "(in memory)".into(),
                    key: "key.pin",
                    reason: "one of pin and pin_env is required".into(),
                })
            }
        };
        Ok(HsmConfig {
            module: self.module.clone(),
            token_label: self.token_label.clone(),
            pin,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKeyConfig {
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorConfig {
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotsConfig {
    pub a: PathBuf,
    pub b: PathBuf,
}

/// The bootloader the slots layer drives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BootloaderConfig {
    /// An env file (active slot, try slot, boot counter): tests and the simulator.
    File(FileBootloaderConfig),
    /// U-Boot through `fw_printenv` / `fw_setenv`.
    Uboot(UbootConfig),
    /// GRUB through `grub-editenv`.
    Grub(GrubConfig),
}

// The tagged sections are deserialized by hand (serde's internally tagged enums buffer
// their content and lose the path of a bad field): the tag is taken out of the table and
// the rest is parsed as the variant's struct, its field path kept in the message.

impl<'de> Deserialize<'de> for KeyConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (tag, table) = tagged_table(deserializer, "store")?;
        match tag.as_str() {
            "pkcs11" => section(table).map(KeyConfig::Pkcs11),
            "file" => section(table).map(KeyConfig::File),
            other => Err(D::Error::custom(format!(
                "store: unknown key store {other:?}, expected \"pkcs11\" or \"file\""
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for BootloaderConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (tag, table) = tagged_table(deserializer, "kind")?;
        match tag.as_str() {
            "file" => section(table).map(BootloaderConfig::File),
            "uboot" => section(table).map(BootloaderConfig::Uboot),
            "grub" => section(table).map(BootloaderConfig::Grub),
            other => Err(D::Error::custom(format!(
                "kind: unknown bootloader {other:?}, expected \"file\", \"uboot\" or \"grub\""
            ))),
        }
    }
}

/// A table and its string tag `tag`, removed from it.
fn tagged_table<'de, D: Deserializer<'de>>(
    deserializer: D,
    tag: &str,
) -> Result<(String, toml::Table), D::Error> {
    let mut table = toml::Table::deserialize(deserializer)?;
    match table.remove(tag) {
        Some(toml::Value::String(value)) => Ok((value, table)),
        Some(other) => Err(D::Error::custom(format!(
            "{tag}: expected a string, got {}",
            other.type_str()
        ))),
        None => Err(D::Error::custom(format!("{tag}: missing"))),
    }
}

/// The variant's struct from the rest of the table; errors start with the field's path.
fn section<T: serde::de::DeserializeOwned, E: serde::de::Error>(
    table: toml::Table,
) -> Result<T, E> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." || path.is_empty() {
            E::custom(inner.message())
        } else {
            E::custom(format!("{path}: {}", inner.message()))
        }
    })
}

impl BootloaderConfig {
    /// How many times a new slot is tried before the boot counter falls back.
    pub fn tries(&self) -> u32 {
        match self {
            BootloaderConfig::File(c) => c.tries,
            BootloaderConfig::Uboot(c) => c.tries,
            BootloaderConfig::Grub(c) => c.tries,
        }
    }
}

fn default_tries() -> u32 {
    3
}

fn default_cmdline() -> PathBuf {
    PathBuf::from("/proc/cmdline")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBootloaderConfig {
    pub env_path: PathBuf,
    #[serde(default = "default_tries")]
    pub tries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UbootConfig {
    pub fw_printenv: PathBuf,
    pub fw_setenv: PathBuf,
    /// The kernel command line, naming the booted slot (default `/proc/cmdline`).
    #[serde(default = "default_cmdline")]
    pub cmdline: PathBuf,
    #[serde(default = "default_tries")]
    pub tries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrubConfig {
    pub grub_editenv: PathBuf,
    pub env_path: PathBuf,
    #[serde(default = "default_cmdline")]
    pub cmdline: PathBuf,
    #[serde(default = "default_tries")]
    pub tries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Program and arguments; exit status 0 = healthy. Absent: always healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default = "default_health_timeout")]
    pub timeout_seconds: u64,
}

fn default_health_timeout() -> u64 {
    120
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            command: None,
            timeout_seconds: default_health_timeout(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VehicleStateConfig {
    /// The precondition provider file (parked, state of charge, network). Absent: no
    /// provider, preconditions that need it stay unmet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadConfig {
    pub min_bytes_per_second: u64,
    pub throughput_window_seconds: u64,
    pub deadline_seconds: u64,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            min_bytes_per_second: 1024,
            throughput_window_seconds: 30,
            deadline_seconds: 3600,
        }
    }
}

impl AgentConfig {
    /// Reads, parses and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<AgentConfig, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let config: AgentConfig =
            serde_path_to_error::deserialize(deserializer).map_err(|err| {
                let key = match err.path().to_string() {
                    root if root == "." || root.is_empty() => "(top level)".to_owned(),
                    key => key,
                };
                let inner = err.into_inner();
                let line = inner
                    .span()
                    .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
                let (key, message) = join_field_path(key, inner.message());
                ConfigError::Parse {
                    origin: origin.to_owned(),
                    key,
                    line,
                    message,
                }
            })?;
        config
            .validate()
            .map_err(|(key, reason)| ConfigError::Value {
                origin: origin.to_owned(),
                key,
                reason,
            })?;
        Ok(config)
    }

    /// The TOML form (what `provision` writes); parses back to an equal config.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string(self)?)
    }

    /// The trust store directory, `state_dir/trust`.
    pub fn trust_dir(&self) -> PathBuf {
        self.state_dir.join("trust")
    }

    /// Checks values that parse but make no sense; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !ota_core::protocol::is_valid_vehicle_id(&self.vehicle_id) {
            return Err((
                "vehicle_id",
                format!(
                    "{:?} is not 1-64 characters of [A-Za-z0-9._-]",
                    self.vehicle_id
                ),
            ));
        }
        check_url("server_url", &self.server_url, &["http", "https"])?;
        check_url("mqtt_url", &self.mqtt_url, &["mqtt", "mqtts"])?;
        non_empty_path("state_dir", &self.state_dir)?;
        non_empty("ecu.name", &self.ecu.name)?;
        non_empty("ecu.hardware_id", &self.ecu.hardware_id)?;
        match &self.key {
            KeyConfig::Pkcs11(key) => {
                non_empty_path("key.module", &key.module)?;
                non_empty("key.token_label", &key.token_label)?;
                non_empty("key.label", &key.label)?;
                match (&key.pin, &key.pin_env) {
                    (Some(_), Some(_)) => {
                        return Err(("key.pin", "give either pin or pin_env, not both".into()))
                    }
                    (None, None) => {
                        return Err(("key.pin", "one of pin and pin_env is required".into()))
                    }
                    (Some(pin), None) => non_empty("key.pin", pin)?,
                    (None, Some(var)) => non_empty("key.pin_env", var)?,
                }
            }
            KeyConfig::File(key) => non_empty_path("key.path", &key.path)?,
        }
        if let Some(anchor) = &self.anchor {
            non_empty("anchor.label", &anchor.label)?;
            if !matches!(self.key, KeyConfig::Pkcs11(_)) {
                return Err((
                    "anchor",
                    "the root anchor lives in the token: it needs key.store = \"pkcs11\"".into(),
                ));
            }
        }
        non_empty_path("slots.a", &self.slots.a)?;
        non_empty_path("slots.b", &self.slots.b)?;
        if self.slots.a == self.slots.b {
            return Err(("slots.b", "slot b must differ from slot a".into()));
        }
        match &self.bootloader {
            BootloaderConfig::File(c) => non_empty_path("bootloader.env_path", &c.env_path)?,
            BootloaderConfig::Uboot(c) => {
                non_empty_path("bootloader.fw_printenv", &c.fw_printenv)?;
                non_empty_path("bootloader.fw_setenv", &c.fw_setenv)?;
                non_empty_path("bootloader.cmdline", &c.cmdline)?;
            }
            BootloaderConfig::Grub(c) => {
                non_empty_path("bootloader.grub_editenv", &c.grub_editenv)?;
                non_empty_path("bootloader.env_path", &c.env_path)?;
                non_empty_path("bootloader.cmdline", &c.cmdline)?;
            }
        }
        if !(1..=100).contains(&self.bootloader.tries()) {
            return Err((
                "bootloader.tries",
                format!("{} is not between 1 and 100", self.bootloader.tries()),
            ));
        }
        if let Some(command) = &self.health.command {
            match command.first() {
                None => return Err(("health.command", "is empty; omit it instead".into())),
                Some(program) => non_empty("health.command", program)?,
            }
        }
        positive("health.timeout_seconds", self.health.timeout_seconds)?;
        if let Some(path) = &self.vehicle_state.path {
            non_empty_path("vehicle_state.path", path)?;
        }
        positive(
            "download.min_bytes_per_second",
            self.download.min_bytes_per_second,
        )?;
        positive(
            "download.throughput_window_seconds",
            self.download.throughput_window_seconds,
        )?;
        positive("download.deadline_seconds", self.download.deadline_seconds)?;
        Ok(())
    }
}

/// `section("key", "pin: invalid type")` → `("key.pin", "invalid type")`: the field path
/// a tagged section put at the start of its message joins the section's key.
fn join_field_path(key: String, message: &str) -> (String, String) {
    if let Some((field, rest)) = message.split_once(": ") {
        let is_path = !field.is_empty()
            && field
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
        if is_path && key != "(top level)" {
            return (format!("{key}.{field}"), rest.to_owned());
        }
    }
    (key, message.to_owned())
}

fn non_empty(key: &'static str, value: &str) -> Result<(), (&'static str, String)> {
    if value.trim().is_empty() {
        return Err((key, "must not be empty".into()));
    }
    Ok(())
}

fn non_empty_path(key: &'static str, value: &Path) -> Result<(), (&'static str, String)> {
    if value.as_os_str().is_empty() {
        return Err((key, "must not be empty".into()));
    }
    Ok(())
}

fn positive(key: &'static str, value: u64) -> Result<(), (&'static str, String)> {
    if value == 0 {
        return Err((key, "must be greater than 0".into()));
    }
    Ok(())
}

fn check_url(
    key: &'static str,
    value: &str,
    schemes: &[&str],
) -> Result<(), (&'static str, String)> {
    let url = reqwest::Url::parse(value).map_err(|e| (key, format!("{value:?}: {e}")))?;
    if !schemes.contains(&url.scheme()) {
        return Err((
            key,
            format!(
                "{value:?}: scheme {:?} is not one of {schemes:?}",
                url.scheme()
            ),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err((key, format!("{value:?} has no host")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
vehicle_id = "veh-0001"
server_url = "http://127.0.0.1:8080"
mqtt_url = "mqtt://127.0.0.1:1883"
state_dir = "/var/lib/ota-agent"
[ecu]
name = "main"
hardware_id = "hw-a"
[key]
store = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "ota-vehicle"
pin = "1234"
label = "ota-device-key"
[anchor]
label = "ota-root-anchor"
[slots]
a = "/dev/disk/by-partlabel/rootfs_a"
b = "/dev/disk/by-partlabel/rootfs_b"
[bootloader]
kind = "file"
env_path = "/var/lib/ota-agent/bootenv.json"
tries = 3
[health]
command = ["/usr/bin/systemctl", "is-system-running"]
timeout_seconds = 120
[vehicle_state]
path = "/run/vehicle-state.json"
[download]
min_bytes_per_second = 1024
throughput_window_seconds = 30
deadline_seconds = 3600
"#;

    #[test]
    fn the_documented_file_parses_into_typed_fields_and_round_trips() {
        let config = AgentConfig::parse(GOOD, "good.toml").unwrap();
        assert_eq!(config.vehicle_id, "veh-0001");
        assert_eq!(
            config.trust_dir(),
            PathBuf::from("/var/lib/ota-agent/trust")
        );
        let KeyConfig::Pkcs11(key) = &config.key else {
            panic!("pkcs11 expected")
        };
        assert_eq!(key.label, "ota-device-key");
        assert_eq!(key.hsm_config().unwrap().pin, "1234");
        assert_eq!(
            config.bootloader,
            BootloaderConfig::File(FileBootloaderConfig {
                env_path: "/var/lib/ota-agent/bootenv.json".into(),
                tries: 3
            })
        );
        assert_eq!(config.anchor.as_ref().unwrap().label, "ota-root-anchor");
        assert_eq!(config.health.command.as_ref().unwrap().len(), 2);
        assert_eq!(config.download.deadline_seconds, 3600);
        let again = AgentConfig::parse(&config.to_toml().unwrap(), "round trip").unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn optional_sections_default_and_other_variants_parse() {
        let text = GOOD
            .split("[health]")
            .next()
            .unwrap()
            .replace("[anchor]\nlabel = \"ota-root-anchor\"\n", "")
            .replace(
                "store = \"pkcs11\"\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken_label = \"ota-vehicle\"\npin = \"1234\"\nlabel = \"ota-device-key\"",
                "store = \"file\"\npath = \"/tmp/device.key\"",
            )
            .replace(
                "kind = \"file\"\nenv_path = \"/var/lib/ota-agent/bootenv.json\"\ntries = 3",
                "kind = \"uboot\"\nfw_printenv = \"/usr/bin/fw_printenv\"\nfw_setenv = \"/usr/bin/fw_setenv\"",
            );
        let config = AgentConfig::parse(&text, "t").unwrap();
        assert_eq!(
            config.key,
            KeyConfig::File(FileKeyConfig {
                path: "/tmp/device.key".into()
            })
        );
        assert_eq!(config.anchor, None);
        assert_eq!(config.health, HealthConfig::default());
        assert_eq!(config.vehicle_state.path, None);
        assert_eq!(config.download, DownloadConfig::default());
        let BootloaderConfig::Uboot(uboot) = &config.bootloader else {
            panic!("uboot expected")
        };
        assert_eq!(uboot.cmdline, PathBuf::from("/proc/cmdline"));
        assert_eq!(config.bootloader.tries(), 3);
        let grub = text.replace(
            "kind = \"uboot\"\nfw_printenv = \"/usr/bin/fw_printenv\"\nfw_setenv = \"/usr/bin/fw_setenv\"",
            "kind = \"grub\"\ngrub_editenv = \"/usr/bin/grub-editenv\"\nenv_path = \"/boot/grub/grubenv\"\ncmdline = \"/tmp/cmdline\"\ntries = 2",
        );
        let config = AgentConfig::parse(&grub, "t").unwrap();
        assert!(matches!(config.bootloader, BootloaderConfig::Grub(ref g) if g.tries == 2));
        assert_eq!(
            AgentConfig::parse(&config.to_toml().unwrap(), "t").unwrap(),
            config
        );
    }

    fn error_of(text: &str) -> String {
        AgentConfig::parse(text, "bad.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn every_bad_value_names_its_key() {
        // (replace this, with that, the error must contain these)
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "vehicle_id = \"veh-0001\"",
                "vehicle_id = \"veh 1\"",
                &["vehicle_id", "veh 1"],
            ),
            (
                "vehicle_id = \"veh-0001\"",
                "vehicle_id = 7",
                &["vehicle_id", "invalid type"],
            ),
            (
                "server_url = \"http://127.0.0.1:8080\"",
                "server_url = \"ftp://x\"",
                &["server_url", "scheme"],
            ),
            (
                "server_url = \"http://127.0.0.1:8080\"",
                "server_url = \"not a url\"",
                &["server_url"],
            ),
            (
                "mqtt_url = \"mqtt://127.0.0.1:1883\"",
                "mqtt_url = \"http://127.0.0.1:1883\"",
                &["mqtt_url", "scheme"],
            ),
            (
                "hardware_id = \"hw-a\"",
                "hardware_id = \"\"",
                &["ecu.hardware_id", "empty"],
            ),
            (
                "hardware_id = \"hw-a\"",
                "",
                &["ecu", "missing field `hardware_id`"],
            ),
            (
                "store = \"pkcs11\"",
                "store = \"tpm\"",
                &["key.store: unknown key store \"tpm\""],
            ),
            ("store = \"pkcs11\"", "", &["key.store: missing"]),
            ("pin = \"1234\"", "pin = 1234", &["key.pin: invalid type"]),
            ("pin = \"1234\"", "", &["key.pin", "one of pin and pin_env"]),
            (
                "pin = \"1234\"",
                "pin = \"1\"\npin_env = \"P\"",
                &["key.pin", "not both"],
            ),
            (
                "label = \"ota-device-key\"",
                "label = \"ota-device-key\"\nlabell = \"x\"",
                &["key.labell: unknown field `labell`"],
            ),
            (
                "label = \"ota-root-anchor\"",
                "label = \"\"",
                &["anchor.label", "empty"],
            ),
            (
                "b = \"/dev/disk/by-partlabel/rootfs_b\"",
                "b = \"/dev/disk/by-partlabel/rootfs_a\"",
                &["slots.b", "differ"],
            ),
            (
                "kind = \"file\"",
                "kind = \"lilo\"",
                &["bootloader.kind: unknown bootloader \"lilo\""],
            ),
            ("tries = 3", "tries = 0", &["bootloader.tries", "between"]),
            (
                "tries = 3",
                "tries = -1",
                &["bootloader.tries: invalid value"],
            ),
            (
                "command = [\"/usr/bin/systemctl\", \"is-system-running\"]",
                "command = []",
                &["health.command", "empty"],
            ),
            (
                "timeout_seconds = 120",
                "timeout_seconds = \"soon\"",
                &["health.timeout_seconds", "invalid type"],
            ),
            (
                "deadline_seconds = 3600",
                "deadline_seconds = 0",
                &["download.deadline_seconds", "greater than 0"],
            ),
            (
                "deadline_seconds = 3600",
                "deadline_seconds = 3600\nspeed = 1",
                &["download", "unknown field `speed`"],
            ),
            (
                "vehicle_id = \"veh-0001\"",
                "vehicle_id = \"veh-0001\"\ncolour = \"red\"",
                &["colour", "unknown field `colour`"],
            ),
        ];
        for (from, to, expected) in cases {
            assert!(GOOD.contains(from), "case setup: {from}");
            let message = error_of(&GOOD.replacen(from, to, 1));
            for part in *expected {
                assert!(
                    message.contains(part),
                    "{to:?}: expected {part:?} in {message:?}"
                );
            }
            assert!(message.contains("bad.toml"), "{message}");
        }
    }

    #[test]
    fn pin_env_is_resolved_and_an_unset_variable_is_named() {
        let text = GOOD.replace(
            "pin = \"1234\"",
            "pin_env = \"OTA_CONFIG_TEST_PIN_UNSET_4711\"",
        );
        let config = AgentConfig::parse(&text, "t").unwrap();
        let KeyConfig::Pkcs11(key) = &config.key else {
            panic!("pkcs11 expected")
        };
        let err = key.hsm_config().unwrap_err().to_string();
        assert!(err.contains("OTA_CONFIG_TEST_PIN_UNSET_4711"), "{err}");
    }
}
