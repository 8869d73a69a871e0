//! `otactl`: the release engineer's command line over the web API. Human tables by
//! default, `--json` for scripts. URL and token come from flags, `OTACTL_URL` /
//! `OTACTL_TOKEN`, or a TOML config file (`--config`, default
//! `$XDG_CONFIG_HOME/otactl/config.toml` or `~/.config/otactl/config.toml`) with
//! `url = "..."` and `token = "..."`.

use crate::client::ApiClient;
use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use ota_core::encoding::Sha256Digest;
use ota_core::envelope::Envelope;
use ota_core::metadata::{to_payload, Role, TargetImage, TargetsMetadata};
use ota_core::time::Timestamp;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "otactl",
    version,
    about = "Command-line client of the OTA server"
)]
pub struct Cli {
    /// Server base URL, e.g. http://127.0.0.1:8080
    #[arg(long, env = "OTACTL_URL", global = true)]
    pub url: Option<String>,
    /// Bearer token (see `ota-server tokens create`).
    #[arg(long, env = "OTACTL_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Config file with `url` and `token`.
    #[arg(long, env = "OTACTL_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Full images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Releases.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Vehicles.
    #[command(subcommand)]
    Vehicle(VehicleCommand),
    /// Rollouts.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Delta builds.
    DeltaJobs {
        #[arg(long)]
        rollout: Option<String>,
    },
    /// API tokens (admin): list them, revoke one.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The audit log (admin).
    /// The audit log, newest first (following pages up to `--limit` entries).
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only entries by this token name (or `system`).
        #[arg(long)]
        actor: Option<String>,
        /// Only this action, e.g. `rollout.start`.
        #[arg(long)]
        action: Option<String>,
        /// Only entries about this id (rollout, release, token, vehicle, ...).
        #[arg(long)]
        target: Option<String>,
        /// Only entries at or after this time (YYYY-MM-DDTHH:MM:SSZ).
        #[arg(long)]
        since: Option<String>,
        /// Only entries before this time (YYYY-MM-DDTHH:MM:SSZ).
        #[arg(long)]
        until: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Every token (never its value) and whether it is revoked.
    List,
    /// Revoke a token at once (audited).
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Upload a full image (streamed).
    Upload {
        file: PathBuf,
        #[arg(long)]
        hardware_id: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        name: Option<String>,
    },
    List {
        #[arg(long)]
        hardware_id: Option<String>,
    },
    Get {
        id: String,
    },
    /// Delete an image no release lists; its blob goes when nothing references it.
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Create a release from uploaded images.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        security_version: u64,
        /// Image ids; repeat for one image per hardware id.
        #[arg(long = "image", required = true)]
        images: Vec<String>,
        /// Sign the targets metadata here with this offline targets key file; the
        /// server only verifies it.
        #[arg(long)]
        sign_key: Option<PathBuf>,
        #[arg(long, default_value_t = 365)]
        expires_in_days: u32,
    },
    List,
    Get {
        id: String,
    },
    /// Delete a release no rollout uses (not the one holding the newest targets).
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum VehicleCommand {
    /// Replace a vehicle's tags (`--tag` repeated; none clears them).
    Retag {
        id: String,
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Replace a vehicle's device key; the old key is refused from now on.
    RotateKey {
        id: String,
        #[arg(long)]
        public_key: String,
    },
    /// Take a vehicle out of service: its messages are refused from now on.
    Decommission {
        id: String,
    },
    /// Provision a vehicle.
    Register {
        #[arg(long)]
        id: String,
        /// Hex of the device's Ed25519 public key.
        #[arg(long)]
        public_key: String,
        /// `ecu=hardware_id`; repeat per ECU.
        #[arg(long = "ecu", required = true)]
        ecus: Vec<String>,
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Provision many vehicles from a file: a JSON array of registrations (each shaped
    /// like `register`'s body: id, public_key, ecus, tags), `{"vehicles": [...]}`, or
    /// JSON Lines (one registration per line). Sent 10,000 per request; each request is
    /// all or nothing, and the first refused one stops the command.
    RegisterBulk {
        #[arg(long)]
        file: PathBuf,
    },
    List {
        #[arg(long)]
        hardware_id: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        installed_version: Option<String>,
        /// `id` (default) or `last_seen_at` (never-seen vehicles first).
        #[arg(long)]
        sort: Option<String>,
        /// `asc` (default) or `desc`.
        #[arg(long)]
        order: Option<String>,
    },
    Get {
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct RolloutCreate {
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub release: String,
    /// `name:percent[:min_soak_seconds[:success_threshold_percent]]`, in order.
    #[arg(long = "phase")]
    pub phases: Vec<String>,
    /// A JSON file with any of the create-rollout fields (selector, rate_limit,
    /// abort_criteria, preconditions, maintenance_window, retry, phases); flags override.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    #[arg(long = "hardware-id")]
    pub hardware_ids: Vec<String>,
    #[arg(long = "vehicle")]
    pub vehicles: Vec<String>,
    /// Vehicles started per minute (AWS maximumPerMinute).
    #[arg(long)]
    pub max_per_minute: Option<u32>,
    /// Breaker: failure percentage that opens it.
    #[arg(long)]
    pub failure_threshold: Option<f64>,
    /// Breaker: minimum finished deployments before it may open.
    #[arg(long)]
    pub min_executed: Option<u32>,
    /// Breaker action: pause, abort or rollback.
    #[arg(long)]
    pub breaker_action: Option<String>,
    /// Cohort salt, 32 hex digits (normally random; `rollout dry-run` prints one that
    /// reproduces its cohorts).
    #[arg(long)]
    pub salt: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    Create(RolloutCreate),
    /// The vehicles per phase a rollout with these arguments would assign; creates
    /// nothing. Pass the printed salt to `create --salt` to get exactly these vehicles.
    DryRun(RolloutCreate),
    List,
    /// The rollout's deployments (every page), by vehicle and ECU.
    Deployments {
        id: String,
        /// Only deployments in this state (assigned, downloading, installed, committed,
        /// failed, rolled_back, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only deployments of this phase (0-based).
        #[arg(long)]
        phase: Option<u32>,
    },
    /// One vehicle's deployments in the rollout with their history.
    Deployment {
        id: String,
        vehicle: String,
    },
    /// Cancel a vehicle's deployments not yet installing (audited).
    CancelVehicle {
        id: String,
        vehicle: String,
    },
    /// Hand a vehicle's failed or cancelled deployments out again (audited).
    RetryVehicle {
        id: String,
        vehicle: String,
    },
    Start {
        id: String,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    Abort {
        id: String,
    },
    Rollback {
        id: String,
    },
    /// End a running rollout: no new vehicles; deployments under way finish.
    Complete {
        id: String,
    },
    /// Open the next phase without waiting for the current phase's gate (audited).
    Advance {
        id: String,
    },
    /// Per-phase progress; `--watch` redraws live progress bars.
    Status {
        id: String,
        #[arg(long)]
        watch: bool,
        #[arg(long, default_value_t = 2)]
        interval: u64,
        /// Stop watching after this many updates (default: until the rollout ends).
        #[arg(long)]
        updates: Option<u64>,
    },
    /// Wait until at least `--committed` vehicles committed the release (exit 0); fail
    /// as soon as the rollout is halted (paused, aborted, rolled back, breaker open) or
    /// when `--timeout-seconds` pass. For scripts and release pipelines.
    Wait {
        id: String,
        #[arg(long)]
        committed: u64,
        #[arg(long, default_value_t = 600)]
        timeout_seconds: u64,
        #[arg(long, default_value_t = 2)]
        interval: u64,
    },
}

/// What a rollout's status says to someone waiting for `want` commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitVerdict {
    /// At least `want` vehicles committed.
    Reached {
        committed: u64,
    },
    /// The rollout will not get there by itself: why.
    Halted(String),
    Waiting {
        committed: u64,
    },
}

/// The pure decision of `rollout wait` on one status document (`GET …/status`).
pub fn wait_verdict(status: &Value, want: u64) -> WaitVerdict {
    let committed: u64 = status["phases"]
        .as_array()
        .map(|phases| phases.iter().filter_map(|p| p["committed"].as_u64()).sum())
        .unwrap_or(0);
    if committed >= want {
        return WaitVerdict::Reached { committed };
    }
    let rollout = &status["rollout"];
    let state = rollout["state"].as_str().unwrap_or("unknown");
    if rollout["breaker_state"].as_str() == Some("open") {
        let why = rollout["breaker_reason"]
            .as_str()
            .unwrap_or("no reason given");
        return WaitVerdict::Halted(format!(
            "the breaker is open ({why}); {committed} of {want} committed"
        ));
    }
    match state {
        "draft" | "running" => WaitVerdict::Waiting { committed },
        other => WaitVerdict::Halted(format!(
            "the rollout is {other}; {committed} of {want} committed"
        )),
    }
}

impl RolloutCommand {
    /// The rollout id and API action of a state change (`start`, `pause`, ...).
    fn transition(&self) -> Option<(&str, &'static str)> {
        match self {
            RolloutCommand::Start { id } => Some((id, "start")),
            RolloutCommand::Pause { id } => Some((id, "pause")),
            RolloutCommand::Resume { id } => Some((id, "resume")),
            RolloutCommand::Abort { id } => Some((id, "abort")),
            RolloutCommand::Rollback { id } => Some((id, "rollback")),
            RolloutCommand::Complete { id } => Some((id, "complete")),
            RolloutCommand::Advance { id } => Some((id, "advance")),
            _ => None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    url: Option<String>,
    token: Option<String>,
}

fn default_config_path() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|base| base.join("otactl").join("config.toml"))
}

fn connect(cli: &Cli) -> anyhow::Result<ApiClient> {
    let file = match &cli.config {
        Some(path) => Some(path.clone()),
        None => default_config_path().filter(|p| p.exists()),
    };
    let config: ConfigFile = match &file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => ConfigFile::default(),
    };
    let url = cli
        .url
        .clone()
        .or(config.url)
        .context("no server URL: pass --url, set OTACTL_URL or url in the config file")?;
    let token = cli
        .token
        .clone()
        .or(config.token)
        .context("no token: pass --token, set OTACTL_TOKEN or token in the config file")?;
    ApiClient::new(&url, &token)
}

/// Prints rows as aligned columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(headers.iter().map(|h| h.to_uppercase()).collect());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.clone()));
        out.push('\n');
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn short(sha: &Value) -> String {
    s(sha).chars().take(12).collect()
}

fn list_of(value: &Value) -> Vec<Value> {
    value
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![value.clone()])
}

/// One table column: its header and how to show a row's value in it.
type Column = (&'static str, fn(&Value) -> String);

/// A table with one row per object of `value` (a JSON array, or one object).
fn columns(value: &Value, spec: &[Column]) -> String {
    let headers: Vec<&str> = spec.iter().map(|(header, _)| *header).collect();
    let rows: Vec<Vec<String>> = list_of(value)
        .iter()
        .map(|row| spec.iter().map(|(_, show)| show(row)).collect())
        .collect();
    table(&headers, &rows)
}

fn images_table(value: &Value) -> String {
    columns(
        value,
        &[
            ("id", |i| s(&i["id"])),
            ("name", |i| s(&i["name"])),
            ("hardware_id", |i| s(&i["hardware_id"])),
            ("version", |i| s(&i["version"])),
            ("bytes", |i| s(&i["length"])),
            ("sha256", |i| short(&i["sha256"])),
        ],
    )
}

fn releases_table(value: &Value) -> String {
    columns(
        value,
        &[
            ("id", |r| s(&r["id"])),
            ("name", |r| s(&r["name"])),
            ("version", |r| s(&r["version"])),
            ("security", |r| s(&r["security_version"])),
            ("targets_v", |r| s(&r["targets_version"])),
            ("signed_by", |r| s(&r["signed_by"])),
            ("images", |r| {
                r["images"].as_array().map_or(0, Vec::len).to_string()
            }),
        ],
    )
}

fn vehicles_table(value: &Value) -> String {
    let rows: Vec<Vec<String>> = list_of(value)
        .iter()
        .map(|v| {
            let ecus = v["ecus"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|e| {
                            format!(
                                "{}={}@{}",
                                s(&e["ecu"]),
                                s(&e["hardware_id"]),
                                s(&e["installed_version"])
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let tags = v["tags"]
                .as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            vec![s(&v["id"]), ecus, tags, s(&v["last_seen_at"])]
        })
        .collect();
    table(&["id", "ecus", "tags", "last_seen"], &rows)
}

/// Registrations per `vehicles:bulk` request (the server's maximum).
const BULK_BATCH: usize = 10_000;

fn registered_text(value: &Value) -> String {
    format!("registered {} vehicles\n", value["registered"])
}

/// A JSON array, `{"vehicles": [...]}`, or JSON Lines → the list of registrations.
pub fn parse_registrations(text: &str) -> anyhow::Result<Vec<Value>> {
    let list = match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(list)) => list,
        Ok(Value::Object(mut object)) => match object.remove("vehicles") {
            Some(Value::Array(list)) => list,
            Some(_) => anyhow::bail!("\"vehicles\" must be an array"),
            None => vec![Value::Object(object)],
        },
        Ok(_) => anyhow::bail!("expected a JSON array, an object or JSON Lines"),
        Err(_) => text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str::<Value>(line)
                    .with_context(|| format!("line {}: not a JSON value", i + 1))
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    if let Some(i) = list.iter().position(|v| !v.is_object()) {
        anyhow::bail!("entry {i} is not a JSON object");
    }
    if list.is_empty() {
        anyhow::bail!("no registrations in the file");
    }
    Ok(list)
}

fn rollouts_table(value: &Value) -> String {
    columns(
        value,
        &[
            ("id", |r| s(&r["id"])),
            ("name", |r| s(&r["name"])),
            ("release", |r| s(&r["release_id"])),
            ("state", |r| s(&r["state"])),
            ("phase", |r| s(&r["current_phase"])),
            ("breaker", |r| s(&r["breaker_state"])),
        ],
    )
}

/// A text progress bar: committed `█`, installing `▓`, downloading/assigned `▒`,
/// failed/rolled back `x`, the rest of the phase's eligible vehicles `·`.
pub fn progress_bar(phase: &Value, width: usize) -> String {
    let n = |k: &str| phase[k].as_u64().unwrap_or(0);
    let started = n("assigned")
        + n("downloading")
        + n("installed")
        + n("committed")
        + n("failed")
        + n("rolled_back")
        + n("cancelled");
    let total = n("eligible").max(started).max(1);
    let cells = |count: u64| ((count as f64 / total as f64) * width as f64).round() as usize;
    let mut bar = String::new();
    for (count, ch) in [
        (n("committed"), '█'),
        (n("installed"), '▓'),
        (n("downloading") + n("assigned"), '▒'),
        (n("failed") + n("rolled_back"), 'x'),
    ] {
        bar.extend(std::iter::repeat_n(ch, cells(count)));
    }
    let used = bar.chars().count().min(width);
    let mut bar: String = bar.chars().take(width).collect();
    bar.extend(std::iter::repeat_n('·', width - used));
    bar
}

pub fn status_text(status: &Value) -> String {
    let r = &status["rollout"];
    let mut out = format!(
        "rollout {} ({})  state: {}  phase: {}  breaker: {}{}\n",
        s(&r["id"]),
        s(&r["name"]),
        s(&r["state"]),
        s(&r["current_phase"]),
        s(&r["breaker_state"]),
        r["breaker_reason"]
            .as_str()
            .map(|why| format!(" ({why})"))
            .unwrap_or_default(),
    );
    let rows: Vec<Vec<String>> = status["phases"]
        .as_array()
        .map(|phases| {
            phases
                .iter()
                .map(|p| {
                    vec![
                        format!(
                            "{}{}",
                            if p["active"] == true { "▶ " } else { "  " },
                            s(&p["name"])
                        ),
                        format!("{}%", s(&p["percent"])),
                        progress_bar(p, 24),
                        s(&p["eligible"]),
                        s(&p["assigned"]),
                        s(&p["downloading"]),
                        s(&p["installed"]),
                        s(&p["committed"]),
                        s(&p["failed"]),
                        s(&p["rolled_back"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&table(
        &[
            "phase",
            "percent",
            "progress",
            "eligible",
            "assigned",
            "downloading",
            "installed",
            "committed",
            "failed",
            "rolled_back",
        ],
        &rows,
    ));
    out
}

fn parse_phase(text: &str) -> anyhow::Result<Value> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() < 2 || parts.len() > 4 {
        bail!("--phase {text:?}: expected name:percent[:min_soak_seconds[:success_threshold_percent]]");
    }
    let percent: f64 = parts[1]
        .parse()
        .with_context(|| format!("--phase {text:?}: percent"))?;
    let mut phase = json!({ "name": parts[0], "percent": percent });
    if let Some(soak) = parts.get(2) {
        phase["min_soak_seconds"] = json!(soak
            .parse::<u64>()
            .with_context(|| format!("--phase {text:?}: soak"))?);
    }
    if let Some(gate) = parts.get(3) {
        phase["success_threshold_percent"] = json!(gate
            .parse::<f64>()
            .with_context(|| format!("--phase {text:?}: success gate"))?);
    }
    Ok(phase)
}

/// The request body, as the server's own request type (`api::rollouts::CreateRollout`):
/// a spec file with an unknown or mistyped field is refused here, with the same message
/// the server would give, before anything is sent.
fn rollout_body(args: &RolloutCreate) -> anyhow::Result<crate::api::rollouts::CreateRollout> {
    let mut body = match &args.spec {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str::<Value>(&text)
                .with_context(|| format!("parsing {}", path.display()))?
        }
        None => json!({}),
    };
    body["name"] = json!(args.name);
    body["release_id"] = json!(args.release);
    if !args.phases.is_empty() {
        body["phases"] = Value::Array(
            args.phases
                .iter()
                .map(|p| parse_phase(p))
                .collect::<anyhow::Result<_>>()?,
        );
    }
    if body.get("phases").is_none() {
        bail!("give at least one --phase (or phases in --spec)");
    }
    for (key, values) in [
        ("tags", &args.tags),
        ("hardware_ids", &args.hardware_ids),
        ("vehicle_ids", &args.vehicles),
    ] {
        if !values.is_empty() {
            body["selector"][key] = json!(values);
        }
    }
    if let Some(n) = args.max_per_minute {
        body["rate_limit"]["maximum_per_minute"] = json!(n);
    }
    if let Some(t) = args.failure_threshold {
        body["abort_criteria"]["threshold_percentage"] = json!(t);
    }
    if let Some(m) = args.min_executed {
        body["abort_criteria"]["min_number_of_executed_things"] = json!(m);
    }
    if let Some(a) = &args.breaker_action {
        body["abort_criteria"]["action"] = json!(a);
    }
    if let Some(salt) = &args.salt {
        body["salt"] = json!(salt);
    }
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        anyhow::anyhow!("the rollout is not valid at {path}: {}", e.into_inner())
    })
}

/// Most pages `all_pages` follows (at the largest page size: a million rows).
const MAX_PAGES: usize = 1000;

/// `key=value` for a query string, the value percent-encoded.
fn query_pair(key: &str, value: &str) -> String {
    let value: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    format!("{key}={value}")
}

/// The `key=value` pairs of the given filters.
fn filters(pairs: &[(&str, &Option<String>)]) -> Vec<String> {
    pairs
        .iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| query_pair(k, v)))
        .collect()
}

/// Every item of a paginated list: GETs `path` with the `filters` (`key=value`) and
/// `limit=1000`, then each `next_cursor` until there is none.
pub async fn all_pages(
    client: &ApiClient,
    path: &str,
    filters: &[String],
) -> anyhow::Result<Value> {
    first_items(client, path, filters, usize::MAX).await
}

/// The first `max` items of a paginated list, following `next_cursor`.
pub async fn first_items(
    client: &ApiClient,
    path: &str,
    filters: &[String],
    max: usize,
) -> anyhow::Result<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let mut query = filters.to_vec();
    query.push(format!("limit={}", max.clamp(1, 1000)));
    let query = query.join("&");
    for _ in 0..MAX_PAGES {
        let mut url = format!("{path}?{query}");
        if let Some(c) = &cursor {
            url.push_str("&cursor=");
            url.push_str(c);
        }
        let page = client.get(&url).await?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        if items.len() >= max {
            items.truncate(max);
            return Ok(Value::Array(items));
        }
        match page["next_cursor"].as_str() {
            // A cursor is base64url: safe in a query string as it is.
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(Value::Array(items)),
        }
    }
    bail!("{path}: more than {MAX_PAGES} pages; narrow the query")
}

fn deleted_text(value: &Value) -> String {
    let blobs = list_of(&value["blobs_removed"]);
    format!(
        "deleted {}; blobs removed: {}\n",
        s(&value["id"]),
        if blobs.is_empty() {
            "none".to_owned()
        } else {
            blobs.iter().map(s).collect::<Vec<_>>().join(" ")
        }
    )
}

fn deployments_table(value: &Value) -> String {
    columns(
        value,
        &[
            ("vehicle", |d| s(&d["vehicle_id"])),
            ("ecu", |d| s(&d["ecu"])),
            ("phase", |d| s(&d["phase"])),
            ("status", |d| s(&d["status"])),
            ("attempts", |d| s(&d["attempts"])),
            ("reason", |d| s(&d["reason_code"])),
            ("updated_at", |d| s(&d["updated_at"])),
        ],
    )
}

fn vehicle_deployments_text(value: &Value) -> String {
    let mut text = format!(
        "{} in {}; allowed actions: {}\n",
        s(&value["vehicle_id"]),
        s(&value["rollout_id"]),
        list_of(&value["allowed_actions"])
            .iter()
            .map(s)
            .collect::<Vec<_>>()
            .join(", ")
    );
    for d in list_of(&value["deployments"]) {
        text.push_str(&format!(
            "\n{} ecu {}: {} (attempt {})\n",
            s(&d["id"]),
            s(&d["ecu"]),
            s(&d["status"]),
            s(&d["attempts"])
        ));
        text.push_str(&columns(
            &d["events"],
            &[
                ("at", |e| s(&e["at"])),
                ("status", |e| s(&e["status"])),
                ("sequence", |e| s(&e["sequence"])),
                ("reason", |e| s(&e["reason_code"])),
                ("source", |e| s(&e["source"])),
            ],
        ));
    }
    text
}

fn dry_run_text(value: &Value) -> String {
    let mut text = format!(
        "{} vehicles; salt {}\n",
        s(&value["vehicles"]),
        s(&value["salt"])
    );
    text.push_str(&columns(
        &value["phases"],
        &[
            ("phase", |p| s(&p["name"])),
            ("percent", |p| s(&p["percent"])),
            ("vehicles", |p| s(&p["vehicles"])),
            ("sample", |p| {
                list_of(&p["sample"])
                    .iter()
                    .map(s)
                    .collect::<Vec<_>>()
                    .join(" ")
            }),
        ],
    ));
    text
}

/// Builds and signs targets metadata locally with an offline targets key.
async fn sign_targets_offline(
    client: &ApiClient,
    key_file: &Path,
    image_ids: &[String],
    security_version: u64,
    expires_in_days: u32,
) -> anyhow::Result<Value> {
    let key = crate::signing::read_key_file(key_file)?;
    // Targets are cumulative: extend the current document, after checking that it really
    // is signed by this targets key (the server must not be able to slip an image into
    // what the offline key signs next).
    let has_release = client
        .get("/api/v1/releases")
        .await?
        .as_array()
        .is_some_and(|releases| !releases.is_empty());
    let (current, mut targets) = if has_release {
        let latest = client.get("/api/v1/targets").await?;
        let envelope = Envelope::parse(&serde_json::to_vec(&latest["envelope"])?)
            .map_err(|e| anyhow::anyhow!("current targets envelope: {e}"))?;
        let own = std::collections::BTreeMap::from([(key.key_id(), key.public_key())]);
        ota_core::threshold::verify_threshold(
            &envelope,
            Role::Targets,
            &own,
            &ota_core::metadata::RoleKeys {
                keyids: vec![key.key_id()],
                threshold: 1,
            },
            "this targets key",
        )
        .map_err(|e| {
            anyhow::anyhow!("refusing to extend the current targets metadata: it is not signed by this key ({e})")
        })?;
        let metadata: TargetsMetadata = ota_core::metadata::parse_document(&envelope.payload)
            .map_err(|e| anyhow::anyhow!("current targets payload: {e}"))?;
        (metadata.version, metadata.targets.0)
    } else {
        (0, std::collections::BTreeMap::new())
    };
    for id in image_ids {
        let image = client.get(&format!("/api/v1/images/{id}")).await?;
        let sha256 = Sha256Digest::parse(image["sha256"].as_str().unwrap_or_default())
            .map_err(anyhow::Error::msg)?;
        targets.insert(
            s(&image["name"]),
            TargetImage {
                hardware_id: s(&image["hardware_id"]),
                version: s(&image["version"]),
                security_version,
                length: image["length"].as_u64().unwrap_or(0),
                sha256,
            },
        );
    }
    let now = Timestamp::from_datetime(chrono::Utc::now());
    let metadata = TargetsMetadata::new(
        current + 1,
        now.plus_seconds(i64::from(expires_in_days) * 86_400),
        targets,
    );
    let envelope = Envelope::sign(Role::Targets.payload_type(), to_payload(&metadata), &[&key]);
    Ok(serde_json::from_slice(&envelope.to_json_bytes())?)
}

/// Runs one command, writing its output to `out`.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let client = connect(&cli)?;
    let json_out = cli.json;
    let (value, render): (Value, fn(&Value) -> String) = match cli.command {
        Command::Image(ImageCommand::Upload {
            file,
            hardware_id,
            version,
            name,
        }) => (
            client
                .upload_image(&file, &hardware_id, &version, name.as_deref())
                .await?,
            images_table,
        ),
        Command::Image(ImageCommand::List { hardware_id }) => {
            let query = filters(&[("hardware_id", &hardware_id)]);
            (
                all_pages(&client, "/api/v1/images", &query).await?,
                images_table,
            )
        }
        Command::Image(ImageCommand::Delete { id }) => (
            client.delete(&format!("/api/v1/images/{id}")).await?,
            deleted_text,
        ),
        Command::Release(ReleaseCommand::Delete { id }) => (
            client.delete(&format!("/api/v1/releases/{id}")).await?,
            deleted_text,
        ),
        Command::Vehicle(VehicleCommand::Retag { id, tags }) => (
            client
                .put_json(
                    &format!("/api/v1/vehicles/{id}/tags"),
                    &json!({ "tags": tags }),
                )
                .await?,
            vehicles_table,
        ),
        Command::Vehicle(VehicleCommand::RotateKey { id, public_key }) => (
            client
                .post_json(
                    &format!("/api/v1/vehicles/{id}/rotate-key"),
                    &json!({ "public_key": public_key }),
                )
                .await?,
            vehicles_table,
        ),
        Command::Vehicle(VehicleCommand::Decommission { id }) => (
            client
                .post_empty(&format!("/api/v1/vehicles/{id}/decommission"))
                .await?,
            vehicles_table,
        ),
        Command::Image(ImageCommand::Get { id }) => (
            client.get(&format!("/api/v1/images/{id}")).await?,
            images_table,
        ),
        Command::Release(ReleaseCommand::Create {
            name,
            version,
            security_version,
            images,
            sign_key,
            expires_in_days,
        }) => {
            let mut body = json!({ "name": name, "version": version, "security_version": security_version, "images": images });
            match sign_key {
                Some(key) => {
                    body["targets"] = sign_targets_offline(
                        &client,
                        &key,
                        &images,
                        security_version,
                        expires_in_days,
                    )
                    .await?
                }
                None => body["expires_in_days"] = json!(expires_in_days),
            }
            (
                client.post_json("/api/v1/releases", &body).await?,
                releases_table,
            )
        }
        Command::Release(ReleaseCommand::List) => (
            all_pages(&client, "/api/v1/releases", &[]).await?,
            releases_table,
        ),
        Command::Release(ReleaseCommand::Get { id }) => (
            client.get(&format!("/api/v1/releases/{id}")).await?,
            releases_table,
        ),
        Command::Vehicle(VehicleCommand::Register {
            id,
            public_key,
            ecus,
            tags,
        }) => {
            let ecus = ecus
                .iter()
                .map(|e| {
                    e.split_once('=')
                        .map(|(ecu, hw)| json!({ "ecu": ecu, "hardware_id": hw }))
                        .with_context(|| format!("--ecu {e:?}: expected ecu=hardware_id"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let body = json!({ "id": id, "public_key": public_key, "ecus": ecus, "tags": tags });
            (
                client.post_json("/api/v1/vehicles", &body).await?,
                vehicles_table,
            )
        }
        Command::Vehicle(VehicleCommand::RegisterBulk { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let registrations = parse_registrations(&text)
                .with_context(|| format!("parsing {}", file.display()))?;
            let mut registered = 0u64;
            for (n, batch) in registrations.chunks(BULK_BATCH).enumerate() {
                let answer = client
                    .post_json("/api/v1/vehicles:bulk", &json!({ "vehicles": batch }))
                    .await
                    .with_context(|| {
                        format!(
                            "batch {} (entries {}..{}) refused; {registered} vehicles registered before it",
                            n + 1,
                            n * BULK_BATCH,
                            n * BULK_BATCH + batch.len()
                        )
                    })?;
                registered += answer["registered"].as_u64().unwrap_or(0);
            }
            (json!({ "registered": registered }), registered_text)
        }
        Command::Vehicle(VehicleCommand::List {
            hardware_id,
            tag,
            installed_version,
            sort,
            order,
        }) => {
            let query = filters(&[
                ("hardware_id", &hardware_id),
                ("tag", &tag),
                ("installed_version", &installed_version),
                ("sort", &sort),
                ("order", &order),
            ]);
            (
                all_pages(&client, "/api/v1/vehicles", &query).await?,
                vehicles_table,
            )
        }
        Command::Vehicle(VehicleCommand::Get { id }) => (
            client.get(&format!("/api/v1/vehicles/{id}")).await?,
            vehicles_table,
        ),
        Command::Rollout(RolloutCommand::Create(args)) => (
            client
                .post_json(
                    "/api/v1/rollouts",
                    &serde_json::to_value(rollout_body(&args)?)?,
                )
                .await?,
            rollouts_table,
        ),
        Command::Rollout(RolloutCommand::DryRun(args)) => (
            client
                .post_json(
                    "/api/v1/rollouts:dry-run",
                    &serde_json::to_value(rollout_body(&args)?)?,
                )
                .await?,
            dry_run_text,
        ),
        Command::Rollout(RolloutCommand::Deployments { id, state, phase }) => {
            let mut query = Vec::new();
            if let Some(state) = state {
                query.push(query_pair("state", &state));
            }
            if let Some(phase) = phase {
                query.push(format!("phase={phase}"));
            }
            let path = format!("/api/v1/rollouts/{id}/deployments");
            (all_pages(&client, &path, &query).await?, deployments_table)
        }
        Command::Rollout(RolloutCommand::Deployment { id, vehicle }) => (
            client
                .get(&format!("/api/v1/rollouts/{id}/deployments/{vehicle}"))
                .await?,
            vehicle_deployments_text,
        ),
        Command::Rollout(RolloutCommand::CancelVehicle { id, vehicle }) => (
            client
                .post_empty(&format!(
                    "/api/v1/rollouts/{id}/deployments/{vehicle}/cancel"
                ))
                .await?,
            deployments_table,
        ),
        Command::Rollout(RolloutCommand::RetryVehicle { id, vehicle }) => (
            client
                .post_empty(&format!(
                    "/api/v1/rollouts/{id}/deployments/{vehicle}/retry"
                ))
                .await?,
            deployments_table,
        ),
        Command::Rollout(RolloutCommand::List) => (
            all_pages(&client, "/api/v1/rollouts", &[]).await?,
            rollouts_table,
        ),
        Command::Rollout(
            command @ (RolloutCommand::Start { .. }
            | RolloutCommand::Pause { .. }
            | RolloutCommand::Resume { .. }
            | RolloutCommand::Abort { .. }
            | RolloutCommand::Rollback { .. }
            | RolloutCommand::Complete { .. }
            | RolloutCommand::Advance { .. }),
        ) => {
            let (id, action) = command
                .transition()
                .context("a rollout state change has an id and an action")?;
            (
                client
                    .post_empty(&format!("/api/v1/rollouts/{id}/{action}"))
                    .await?,
                rollouts_table,
            )
        }
        Command::Rollout(RolloutCommand::Status {
            id,
            watch,
            interval,
            updates,
        }) => {
            let path = format!("/api/v1/rollouts/{id}/status");
            if !watch {
                (client.get(&path).await?, status_text)
            } else {
                let mut shown = 0u64;
                loop {
                    let status = client.get(&path).await?;
                    if json_out {
                        writeln!(out, "{}", escape_terminal(&status.to_string()))?;
                    } else {
                        // Clear the screen and redraw in place.
                        write!(
                            out,
                            "\x1b[2J\x1b[H{}",
                            escape_terminal(&status_text(&status))
                        )?;
                    }
                    out.flush()?;
                    shown += 1;
                    let finished = matches!(
                        status["rollout"]["state"].as_str(),
                        Some("aborted" | "completed" | "rolled_back")
                    );
                    if finished || updates.is_some_and(|max| shown >= max) {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_secs(interval.max(1))).await;
                }
            }
        }
        Command::Rollout(RolloutCommand::Wait {
            id,
            committed: want,
            timeout_seconds,
            interval,
        }) => {
            let path = format!("/api/v1/rollouts/{id}/status");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_seconds);
            loop {
                let status = client.get(&path).await?;
                match wait_verdict(&status, want) {
                    WaitVerdict::Reached { .. } => break (status, status_text),
                    WaitVerdict::Halted(why) => {
                        anyhow::bail!("rollout {id} will not reach {want} committed: {why}")
                    }
                    WaitVerdict::Waiting { committed } => {
                        if tokio::time::Instant::now() >= deadline {
                            anyhow::bail!(
                                "rollout {id}: {committed} of {want} committed after {timeout_seconds} s"
                            );
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(interval.max(1))).await;
            }
        }
        Command::DeltaJobs { rollout } => {
            let query = filters(&[("rollout_id", &rollout)]);
            let render: fn(&Value) -> String = |v| {
                columns(
                    v,
                    &[
                        ("id", |j| s(&j["id"])),
                        ("hardware_id", |j| s(&j["hardware_id"])),
                        ("source", |j| short(&j["source_sha256"])),
                        ("target", |j| short(&j["target_sha256"])),
                        ("status", |j| s(&j["status"])),
                        ("error", |j| s(&j["error"])),
                    ],
                )
            };
            (
                all_pages(&client, "/api/v1/delta-jobs", &query).await?,
                render,
            )
        }
        Command::Token(command) => {
            let render: fn(&Value) -> String = |v| {
                columns(
                    v,
                    &[
                        ("id", |t| s(&t["id"])),
                        ("name", |t| s(&t["name"])),
                        ("scopes", |t| {
                            t["scopes"]
                                .as_array()
                                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(" "))
                                .unwrap_or_default()
                        }),
                        ("created_at", |t| s(&t["created_at"])),
                        ("revoked_at", |t| s(&t["revoked_at"])),
                        ("expires_at", |t| s(&t["expires_at"])),
                    ],
                )
            };
            let value = match command {
                TokenCommand::List => all_pages(&client, "/api/v1/tokens", &[]).await?,
                TokenCommand::Revoke { id } => {
                    client
                        .post_empty(&format!("/api/v1/tokens/{id}/revoke"))
                        .await?
                }
            };
            (value, render)
        }
        Command::Audit {
            limit,
            actor,
            action,
            target,
            since,
            until,
        } => {
            let render: fn(&Value) -> String = |v| {
                columns(
                    v,
                    &[
                        ("id", |a| s(&a["id"])),
                        ("at", |a| s(&a["at"])),
                        ("actor", |a| s(&a["actor"])),
                        ("action", |a| s(&a["action"])),
                        ("subject", |a| s(&a["subject"])),
                    ],
                )
            };
            let query = filters(&[
                ("actor", &actor),
                ("action", &action),
                ("target", &target),
                ("since", &since),
                ("until", &until),
            ]);
            (
                first_items(&client, "/api/v1/audit", &query, limit as usize).await?,
                render,
            )
        }
    };
    if json_out {
        writeln!(
            out,
            "{}",
            escape_terminal(&serde_json::to_string_pretty(&value)?)
        )?;
    } else {
        write!(out, "{}", escape_terminal(&render(&value)))?;
    }
    Ok(())
}

/// Text from the server made safe for a terminal: every control character except line
/// feed and tab (C0, DEL, C1 — ESC and CSI start escape sequences that can clear the
/// screen, retitle the window or fake output) and the bidirectional overrides (which
/// reorder what is shown) become a visible `\uXXXX`. JSON stays valid and means the
/// same: such characters only occur inside JSON strings, where `\uXXXX` is their escape.
pub fn escape_terminal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if (c.is_control() && c != '\n' && c != '\t') || bidi {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Entry point of the `otactl` binary.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: starting the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    match runtime.block_on(run(cli, &mut stdout)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", escape_terminal(&format!("{err:#}")));
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &str, breaker: &str, committed: &[u64]) -> Value {
        json!({
            "rollout": { "state": state, "breaker_state": breaker, "breaker_reason": "3 of 10 failed" },
            "phases": committed.iter().map(|c| json!({ "committed": c })).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn waiting_for_commits_sums_the_phases_and_stops_at_a_halt() {
        assert_eq!(
            wait_verdict(&status("running", "closed", &[1, 2]), 3),
            WaitVerdict::Reached { committed: 3 }
        );
        assert_eq!(
            wait_verdict(&status("running", "half_open", &[1, 1]), 3),
            WaitVerdict::Waiting { committed: 2 }
        );
        assert_eq!(
            wait_verdict(&status("draft", "closed", &[]), 1),
            WaitVerdict::Waiting { committed: 0 }
        );
        // Enough commits count even when the rollout was halted afterwards.
        assert_eq!(
            wait_verdict(&status("paused", "open", &[5]), 5),
            WaitVerdict::Reached { committed: 5 }
        );
        let WaitVerdict::Halted(why) = wait_verdict(&status("running", "open", &[1]), 3) else {
            panic!("an open breaker halts the wait");
        };
        assert_eq!(
            why,
            "the breaker is open (3 of 10 failed); 1 of 3 committed"
        );
        for state in ["paused", "aborted", "completed", "rolled_back"] {
            assert_eq!(
                wait_verdict(&status(state, "closed", &[1]), 3),
                WaitVerdict::Halted(format!("the rollout is {state}; 1 of 3 committed"))
            );
        }
    }

    #[test]
    fn progress_bar_fills_by_status() {
        let phase = json!({ "eligible": 10, "committed": 5, "installed": 0, "downloading": 0, "assigned": 0, "failed": 1, "rolled_back": 0, "cancelled": 0 });
        let bar = progress_bar(&phase, 10);
        assert_eq!(bar, "█████x····");
        assert_eq!(
            progress_bar(&json!({}), 4),
            "····",
            "an empty phase shows an empty bar"
        );
    }

    #[test]
    fn phases_parse_from_flags() {
        assert_eq!(
            parse_phase("canary:1:60:95").unwrap(),
            json!({ "name": "canary", "percent": 1.0, "min_soak_seconds": 60, "success_threshold_percent": 95.0 })
        );
        assert!(parse_phase("canary").is_err());
        assert!(parse_phase("canary:x").is_err());
    }

    #[test]
    fn registrations_parse_from_json_or_json_lines() {
        let one = r#"{"id":"a","public_key":"00","ecus":[]}"#;
        let two = r#"{"id":"b","public_key":"00","ecus":[]}"#;
        let ids = |text: &str| -> Vec<String> {
            parse_registrations(text)
                .unwrap()
                .iter()
                .map(|v| v["id"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(ids(&format!("[{one},{two}]")), ["a", "b"]);
        assert_eq!(ids(&format!(r#"{{"vehicles":[{one},{two}]}}"#)), ["a", "b"]);
        assert_eq!(ids(&format!("{one}\n\n{two}\n")), ["a", "b"]);
        assert_eq!(ids(one), ["a"]);
        let err = parse_registrations(&format!("{one}\nnot json\n")).unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
        assert!(parse_registrations("[1]").is_err());
        assert!(parse_registrations("[]").is_err());
    }

    #[test]
    fn terminal_output_escapes_control_characters() {
        let hostile = "ok\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31m\u{7f}\u{202e}txt\n\tend";
        let shown = escape_terminal(hostile);
        assert_eq!(
            shown,
            "ok\\u001b]0;pwned\\u0007\\u001b[2J\\u009b31m\\u007f\\u202etxt\n\tend"
        );
        assert!(!shown
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'));
        let json = serde_json::to_string_pretty(&json!({ "name": "a\u{9b}b\u{7f}" })).unwrap();
        let escaped = escape_terminal(&json);
        assert_eq!(
            serde_json::from_str::<Value>(&escaped).unwrap()["name"],
            "a\u{9b}b\u{7f}",
            "escaped JSON is still JSON with the same value: {escaped}"
        );
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["id", "name"],
            &[
                vec!["a".into(), "long-name".into()],
                vec!["bbbb".into(), "x".into()],
            ],
        );
        assert_eq!(t, "ID    NAME\na     long-name\nbbbb  x\n");
    }
}
