//! `fleet-bench`: the server's vehicle channel driven from outside, as a third-party load
//! generator would: the real `ota-server` binary as a child process, vehicles registered
//! through `POST /api/v1/vehicles:bulk`, Ed25519-signed check-ins over MQTT (QoS 1,
//! several connections), every directive verified against the served root.
//!
//! For every configuration (backend × fleet size × rollout off/on) it starts a fresh
//! server on a fresh database (SQLite in a temp dir, or a throwaway PostgreSQL database),
//! registers the fleet, optionally starts a rollout of a new image to the whole fleet,
//! then runs a closed-loop phase at maximum rate (`--window` check-ins in flight) and one
//! open-loop phase per `--rate`. Before the configurations it measures the broker alone:
//! plain messages of check-in size, publisher to subscriber, through the same number of
//! connections and the same window. With `--progress`, `--pause-trials` or
//! `--breaker-trials`, configurations with a rollout also measure the durable lane
//! (`durable`): progress events ingested end to end, the breaker's reaction and a pause's
//! reach. See `docs/fleet-bench.md`.

mod ceiling;
mod durable;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use ota_core::encoding::Sha256Digest;
use ota_core::envelope::Envelope;
use ota_core::key::SigningKey;
use ota_core::metadata::{parse_document, DirectorMetadata, Role, Root};
use ota_core::protocol::{
    sign_message, topic, CheckIn, EcuReport, InstalledImage, TrustedVersions, PAYLOAD_TYPE_CHECKIN,
};
use ota_core::threshold::verify_threshold;
use ota_core::time::Timestamp;
use ota_server::settings::{LogFormat, Settings};
use ota_tests::process::{free_port, BrokerProcess, Database, ServerProcess, StopOutcome};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

const HARDWARE_ID: &str = "hw-fleet-bench";
const FACTORY: &[u8] = b"fleet-bench factory image 1.0.0";
/// Most registrations in one bulk request (the API's limit).
const BULK: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    Off,
    On,
}

/// Check-in benchmark of ota-server's vehicle channel (see docs/fleet-bench.md).
#[derive(Debug, Parser)]
#[command(name = "fleet-bench")]
struct Args {
    /// Database backends to run, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    backends: Vec<Backend>,
    /// Fleet sizes, comma separated (e.g. 1000,10000,50000).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    vehicles: Vec<usize>,
    /// Whether a rollout of a new image to the whole fleet is running: off, on or off,on.
    #[arg(long, value_delimiter = ',', default_value = "off,on")]
    rollout: Vec<OnOff>,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10)]
    duration_seconds: u64,
    /// Seconds of load before each phase's measurement starts (not counted).
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// Open-loop rates in check-ins per second, comma separated; each is one more phase
    /// after the maximum-rate phase.
    #[arg(long, value_delimiter = ',')]
    rate: Vec<u32>,
    /// Skip the closed-loop maximum-rate phase (only the --rate phases run).
    #[arg(long)]
    no_max: bool,
    /// MQTT connections the load is spread over (each publishes and subscribes).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Messages in flight in the maximum-rate phase (closed loop).
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// A check-in not answered within this many seconds counts as a timeout.
    #[arg(long, default_value_t = 10)]
    timeout_seconds: u64,
    /// Skip verifying directive signatures against the served root (saves client CPU).
    #[arg(long)]
    no_verify: bool,
    /// The MQTT broker, `mqtt://HOST:PORT`, or `own`: a test-owned Mosquitto for the run
    /// that queues up to 100,000 messages per client (the default of 1,000 drops part of
    /// a large fan-out of control messages to the benchmark's connections).
    #[arg(
        long,
        env = "OTA_TEST_MQTT_URL",
        default_value = "mqtt://127.0.0.1:1883"
    )]
    mqtt_url: String,
    /// PostgreSQL server (user with CREATEDB); a throwaway database is created and dropped.
    #[arg(
        long,
        env = "OTA_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    postgres_url: String,
    /// The ota-server binary to run. Default: build the workspace's (release when this
    /// binary is a release build) and use the one next to this binary.
    #[arg(long, env = "FLEET_BENCH_SERVER_BIN")]
    server_bin: Option<PathBuf>,
    /// Extra environment for the server, e.g. OTA_MQTT__WORKERS=32 (repeatable).
    #[arg(long = "server-env", value_name = "KEY=VALUE")]
    server_env: Vec<String>,
    /// The server's Kafka: `own` (a test-owned tansu per configuration, fresh topics),
    /// `embedded` (the server's in-process Kafka), or `HOST:PORT` of a running broker
    /// (topics and consumer group named after the run).
    #[arg(long, default_value = "own")]
    kafka: String,
    /// Durable lane: every vehicle of the fleet reports the eight transitions of a
    /// committed deployment; events applied per second end to end (rollout on only).
    #[arg(long)]
    progress: bool,
    /// How many of the fleet's vehicles report progress with --progress (default: all).
    #[arg(long)]
    progress_vehicles: Option<usize>,
    /// Progress events published and not yet taken by the gateway, at most (the
    /// broker's queue for the server is bounded: Mosquitto's default is 1,000).
    #[arg(long, default_value_t = 500)]
    progress_window: usize,
    /// Durable lane: this many pauses of the fleet rollout, each until every vehicle got
    /// its `poll_now` control message, then a resume (rollout on only).
    #[arg(long, default_value_t = 0)]
    pause_trials: usize,
    /// Durable lane: this many breaker trials, each a rollout over `--breaker-slice`
    /// vehicles of their own whose canary fails (rollout on only).
    #[arg(long, default_value_t = 0)]
    breaker_trials: usize,
    /// Vehicles in each breaker trial's rollout.
    #[arg(long, default_value_t = 50)]
    breaker_slice: usize,
    /// Failures that open the breaker (`min_number_of_executed_things`; threshold 50 %):
    /// the last of them is the threshold-crossing event.
    #[arg(long, default_value_t = 5)]
    breaker_failures: usize,
    /// What the breaker trials' rollouts do when their breaker opens (the cancels to
    /// vehicles not yet installing come first whatever it is).
    #[arg(long, value_enum, default_value_t = durable::BreakerAction::Abort)]
    breaker_action: durable::BreakerAction,
}

impl Args {
    fn durable(&self) -> bool {
        self.progress || self.pause_trials > 0 || self.breaker_trials > 0
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let server_bin = match &args.server_bin {
        Some(path) => path.clone(),
        None => ota_tests::binary("ota-server"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        tokio::select! {
            result = run(&args, &server_bin) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Dropping the runtime drops whatever `run` held: the server child and the database
    // are cleaned up by their `Drop`s.
    drop(runtime);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args, server_bin: &Path) -> Result<()> {
    if args.connections == 0 || args.window == 0 {
        bail!("--connections and --window must be at least 1");
    }
    if args.durable() && !args.rollout.contains(&OnOff::On) {
        bail!("--progress, --pause-trials and --breaker-trials need --rollout on");
    }
    if args.durable() && args.kafka == "embedded" {
        bail!("the durable lane is measured with a real Kafka: --kafka own or HOST:PORT");
    }
    if args.breaker_trials > 0
        && (args.breaker_failures == 0 || args.breaker_failures >= args.breaker_slice)
    {
        bail!("--breaker-failures must be at least 1 and below --breaker-slice");
    }
    // `--mqtt-url own`: a test-owned Mosquitto for the whole run, queueing up to 100,000
    // messages per client (the machine's default of 1,000 drops a large fan-out of
    // control messages to the benchmark's few connections).
    let own_mqtt_dir = tempfile::Builder::new()
        .prefix("fleet-bench-mqtt-")
        .tempdir()?;
    let own_mqtt = match args.mqtt_url.as_str() {
        "own" => Some(BrokerProcess::mosquitto(own_mqtt_dir.path()).context("--mqtt-url own")?),
        _ => None,
    };
    let mqtt_url = match &own_mqtt {
        Some(broker) => format!("mqtt://{}", broker.address()),
        None => args.mqtt_url.clone(),
    };
    let url: ota_core::endpoint::BrokerUrl = mqtt_url.parse().context("--mqtt-url")?;
    let broker = BrokerAddress {
        host: url.host(),
        port: url.port(),
    };
    let run_id = format!("fb{}", std::process::id());
    eprintln!(
        "fleet-bench: server {}, broker {}, {} connections, window {}, {} s (+{} s warm-up) per phase",
        server_bin.display(),
        mqtt_url,
        args.connections,
        args.window,
        args.duration_seconds,
        args.warmup_seconds
    );

    // The signatures alone, before anything else loads the machine.
    let sample_key = vehicle_key(&run_id, 0);
    let sample_vehicle = vehicle_id(&run_id, 0);
    let sample = checkin_bytes(&sample_key, &sample_vehicle, 0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let signatures = ceiling::SignatureCost::measure(&sample_key, || {
        checkin_bytes(&sample_key, &sample_vehicle, 1)
    })?;
    let signature_line = signatures_line(&signatures, cores);
    eprintln!("{signature_line}");

    // The broker alone, same connections and window, messages of check-in size.
    let largest_fleet = args.vehicles.iter().copied().max().unwrap_or(1000);
    let broker_workload = Workload::Broker {
        run_id: run_id.clone(),
        payload: vec![b'x'; sample.len()],
        topics: largest_fleet,
    };
    eprintln!(
        "broker alone: {} B messages over {} topics",
        sample.len(),
        largest_fleet
    );
    let broker_result = drive(args, &broker, Arc::new(broker_workload), Mode::Max).await?;
    let broker_rate = broker_result.answered_per_second;
    print_table(
        "Broker alone (publish → subscribe, plain messages of check-in size)",
        &[Row {
            configuration: "mosquitto".to_owned(),
            phase: broker_result,
            ratio: None,
        }],
    );

    let mut rows = Vec::new();
    let mut durables: Vec<(String, durable::Durable)> = Vec::new();
    for &backend in &args.backends {
        for &vehicles in &args.vehicles {
            for &rollout in &args.rollout {
                let name = format!(
                    "{backend} {vehicles} vehicles rollout {}",
                    if rollout == OnOff::On { "on" } else { "off" }
                );
                eprintln!("== {name}");
                let (results, durable) = configuration(
                    args,
                    server_bin,
                    &broker,
                    &run_id,
                    backend,
                    vehicles,
                    rollout == OnOff::On,
                )
                .await
                .with_context(|| name.clone())?;
                let table_rows: Vec<Row> = results
                    .into_iter()
                    .map(|phase| Row {
                        configuration: name.clone(),
                        ratio: Some(phase.answered_per_second / broker_rate.max(1e-9)),
                        phase,
                    })
                    .collect();
                print_table(&name, &table_rows);
                rows.extend(table_rows);
                if let Some(durable) = durable {
                    print_durable(&[(name.clone(), &durable)]);
                    durables.push((name.clone(), durable));
                }
            }
        }
    }
    print_table(
        &format!(
            "Summary (broker alone: {broker_rate:.0} msgs/s; ratio = check-ins answered/s ÷ broker msgs/s; a check-in is two messages)"
        ),
        &rows,
    );
    println!("{signature_line}");
    if !durables.is_empty() {
        let all: Vec<(String, &durable::Durable)> =
            durables.iter().map(|(n, d)| (n.clone(), d)).collect();
        print_durable(&all);
    }
    let incomplete: Vec<&str> = durables
        .iter()
        .filter(|(_, d)| d.pause.as_ref().is_some_and(|p| !p.complete()))
        .map(|(n, _)| n.as_str())
        .collect();
    if !incomplete.is_empty() {
        bail!(
            "pause: some vehicles never got their poll_now control message ({})",
            incomplete.join("; ")
        );
    }
    Ok(())
}

/// `--server-env KEY=VALUE` pairs.
fn server_env(args: &Args) -> Result<Vec<(String, String)>> {
    args.server_env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--server-env {kv:?}: expected KEY=VALUE"))
        })
        .collect()
}

/// One configuration: a fresh server and database, the fleet, the phases.
async fn configuration(
    args: &Args,
    server_bin: &Path,
    broker: &BrokerAddress<'_>,
    run_id: &str,
    backend: Backend,
    vehicles: usize,
    rollout: bool,
) -> Result<(Vec<PhaseResult>, Option<durable::Durable>)> {
    let dir = tempfile::Builder::new().prefix("fleet-bench-").tempdir()?;
    // Declared before the server: dropped after it.
    let own_kafka = match args.kafka.as_str() {
        "own" => Some(BrokerProcess::tansu(dir.path()).context("--kafka own")?),
        _ => None,
    };
    let database = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            Some(Database::create(&args.postgres_url, &format!("fleet_bench_{run_id}")).await?)
        }
    };
    let mut settings = Settings {
        listen: format!("127.0.0.1:{}", free_port()),
        data_dir: dir.path().join("data"),
        database_url: database
            .as_ref()
            .map(|d| d.url.parse())
            .transpose()
            .map_err(anyhow::Error::msg)?,
        ..Settings::default()
    };
    settings.mqtt.url = Some(
        format!("mqtt://{}:{}", broker.host, broker.port)
            .parse()
            .context("--mqtt-url")?,
    );
    settings.mqtt.share_group = format!("{run_id}-{backend}-{vehicles}");
    match (&own_kafka, args.kafka.as_str()) {
        (Some(kafka), _) => settings.kafka.brokers = Some(kafka.address()),
        (None, "embedded") => {}
        (None, address) => {
            let name = format!("{run_id}-{backend}-{vehicles}-{}", u8::from(rollout));
            settings.kafka.brokers = Some(address.to_owned());
            settings.kafka.topic = format!("{name}.vehicle-events");
            settings.kafka.rollout_topic = format!("{name}.rollout-events");
            settings.kafka.group = format!("{name}-engine");
        }
    }
    settings.limits.request_timeout_seconds = 900;
    settings.log.format = LogFormat::Text;
    settings.log.filter = "warn".to_owned();
    let mut server = ServerProcess::start(server_bin, dir.path(), &settings, &server_env(args)?)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(900))
        .build()?;
    server.wait_ready(&http, 60).await?;
    let api = Api {
        http,
        url: server.url.clone(),
        token: server.token.clone(),
    };

    // The fleet: deterministic keys, registered in bulk.
    let keys: Vec<SigningKey> = (0..vehicles).map(|i| vehicle_key(run_id, i)).collect();
    let started = Instant::now();
    for first in (0..vehicles).step_by(BULK) {
        let batch: Vec<Value> = (first..(first + BULK).min(vehicles))
            .map(|i| {
                json!({ "id": vehicle_id(run_id, i), "public_key": keys[i].public_key().to_hex(),
                        "ecus": [{ "ecu": "main", "hardware_id": HARDWARE_ID }], "tags": [] })
            })
            .collect();
        api.post("/api/v1/vehicles:bulk", json!({ "vehicles": batch }))
            .await
            .context("bulk registration")?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "registered {vehicles} vehicles in {elapsed:.1} s ({:.0}/s)",
        vehicles as f64 / elapsed
    );
    let fleet_rollout = if rollout {
        let started = Instant::now();
        let (rollout, image_length) = api.rollout_to_fleet().await.context("starting a rollout")?;
        eprintln!(
            "rollout {rollout} running over the whole fleet (set up in {:.1} s)",
            started.elapsed().as_secs_f64()
        );
        Some((rollout, image_length))
    } else {
        None
    };
    let director = if args.no_verify {
        None
    } else {
        Some(Box::new(api.director_keys().await?))
    };

    let workload = Arc::new(Workload::Server {
        run_id: run_id.to_owned(),
        keys,
        director,
        nonce: AtomicU64::new(0),
    });
    let mut modes: Vec<Mode> = Vec::new();
    if !args.no_max {
        modes.push(Mode::Max);
    }
    modes.extend(args.rate.iter().map(|&r| Mode::Open(r)));
    let phases = async {
        let phases = drive_phases(args, broker, workload, &modes).await?;
        let durable =
            match &fleet_rollout {
                Some((rollout, image_length)) if args.durable() => {
                    eprintln!("  durable lane");
                    let setup = durable::Setup {
                        api: &api,
                        broker,
                        run_id,
                        connections: args.connections,
                        window: args.window,
                        vehicles,
                        rollout,
                        image_length: *image_length,
                        progress: args.progress,
                        progress_vehicles: args.progress_vehicles.unwrap_or(vehicles),
                        pause_trials: args.pause_trials,
                        breaker_trials: args.breaker_trials,
                        breaker_slice: args.breaker_slice,
                        breaker_failures: args.breaker_failures,
                        breaker_action: args.breaker_action,
                        progress_window: args.progress_window,
                    };
                    Some(durable::run(&setup).await.with_context(|| {
                        format!("durable lane (server log: {})", server.log_tail())
                    })?)
                }
                _ => None,
            };
        Ok::<_, anyhow::Error>((phases, durable))
    }
    .await;
    let stop = server.stop();
    eprintln!("server: {stop}");
    if let Some(database) = database {
        database.drop_now().await;
    }
    drop(own_kafka);
    let (mut phases, durable) = phases?;
    for phase in &mut phases {
        phase.server_stop = Some(stop.clone());
    }
    Ok((phases, durable))
}

// ---------------------------------------------------------------------------------------
// The HTTP API, as an operator uses it.

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> Result<Value> {
        let response = request.bearer_auth(&self.token).send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{what}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.url)), path)
            .await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.send(
            self.http.post(format!("{}{path}", self.url)).json(&body),
            path,
        )
        .await
    }

    /// Uploads a new image, releases it and starts a rollout to every vehicle of the
    /// benchmark's hardware id (one phase at 100 %, no effective rate limit). Returns the
    /// rollout id and the image's length.
    async fn rollout_to_fleet(&self) -> Result<(String, u64)> {
        let image = self
            .send(
                self.http
                    .post(format!(
                        "{}/api/v1/images?hardware_id={HARDWARE_ID}&version=2.0.0",
                        self.url
                    ))
                    .header("content-type", "application/octet-stream")
                    .body(b"fleet-bench firmware 2.0.0 ".repeat(256)),
                "image upload",
            )
            .await?;
        let release = self
            .post(
                "/api/v1/releases",
                json!({ "name": "fleet-bench-2.0.0", "version": "2.0.0",
                        "security_version": 2, "images": [image["id"]] }),
            )
            .await?;
        let rollout = self
            .post(
                "/api/v1/rollouts",
                json!({ "name": "fleet-bench", "release_id": release["id"],
                        "selector": { "hardware_ids": [HARDWARE_ID] },
                        "phases": [{ "name": "all", "percent": 100 }],
                        "rate_limit": { "maximum_per_minute": 4_000_000_000u32 } }),
            )
            .await?;
        let id = rollout["id"]
            .as_str()
            .context("rollout without an id")?
            .to_owned();
        self.post(&format!("/api/v1/rollouts/{id}/start"), json!({}))
            .await?;
        Ok((id, image["length"].as_u64().unwrap_or(0)))
    }

    /// The director keys of the served root (version 1), to verify directives with.
    async fn director_keys(&self) -> Result<Root> {
        let bytes = self
            .http
            .get(format!("{}/v1/metadata/root/1.json", self.url))
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        let envelope = Envelope::parse(&bytes).context("root envelope")?;
        Root::from_payload(&envelope.payload).context("root metadata")
    }
}

// ---------------------------------------------------------------------------------------
// Workloads: what is published, and what answers it.

enum Workload {
    /// Signed check-ins to the server; answered by the vehicle's directive.
    Server {
        run_id: String,
        keys: Vec<SigningKey>,
        director: Option<Box<Root>>,
        nonce: AtomicU64,
    },
    /// Plain messages to the broker; answered by their own delivery.
    Broker {
        run_id: String,
        payload: Vec<u8>,
        topics: usize,
    },
}

/// A message that was not a good answer.
enum Answer {
    /// A good answer for vehicle (topic) `index`; `assigned` when it carries an assignment.
    Good { index: usize, assigned: bool },
    /// Someone else's traffic on the shared broker (another server's vehicles).
    Foreign,
    /// Ours, but the directive failed verification.
    Bad,
}

impl Workload {
    fn size(&self) -> usize {
        match self {
            Workload::Server { keys, .. } => keys.len(),
            Workload::Broker { topics, .. } => *topics,
        }
    }

    fn subscription(&self) -> String {
        match self {
            Workload::Server { run_id, .. } => format!("$share/{run_id}/ota/v1/+/directive"),
            Workload::Broker { run_id, .. } => {
                format!("$share/{run_id}b/fleet-bench/{run_id}/+/m")
            }
        }
    }

    fn message(&self, index: usize) -> (String, Vec<u8>) {
        match self {
            Workload::Server {
                run_id,
                keys,
                nonce,
                ..
            } => {
                let vid = vehicle_id(run_id, index);
                let n = nonce.fetch_add(1, Ordering::Relaxed);
                let bytes = checkin_bytes(&keys[index], &vid, n);
                (topic(&vid, ota_core::protocol::Channel::CheckIn), bytes)
            }
            Workload::Broker {
                run_id, payload, ..
            } => (format!("fleet-bench/{run_id}/{index}/m"), payload.clone()),
        }
    }

    fn answer(&self, topic: &str, payload: &[u8]) -> Answer {
        match self {
            Workload::Server {
                run_id, director, ..
            } => {
                let Some(index) = topic
                    .strip_prefix("ota/v1/")
                    .and_then(|t| t.strip_suffix("/directive"))
                    .and_then(|vid| vid.strip_prefix(run_id.as_str()))
                    .and_then(|n| n.strip_prefix('-'))
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    return Answer::Foreign;
                };
                match directive(director.as_deref(), payload) {
                    Some(d) if d.vehicle_id == vehicle_id(run_id, index) => Answer::Good {
                        index,
                        assigned: !d.assignments.is_empty(),
                    },
                    _ => Answer::Bad,
                }
            }
            Workload::Broker { run_id, .. } => topic
                .strip_prefix("fleet-bench/")
                .and_then(|t| t.strip_prefix(run_id.as_str()))
                .and_then(|t| t.strip_prefix('/'))
                .and_then(|t| t.strip_suffix("/m"))
                .and_then(|n| n.parse::<usize>().ok())
                .map_or(Answer::Foreign, |index| Answer::Good {
                    index,
                    assigned: false,
                }),
        }
    }
}

/// The directive's document, verified against the root's director keys when given.
fn directive(root: Option<&Root>, bytes: &[u8]) -> Option<DirectorMetadata> {
    let envelope = Envelope::parse(bytes).ok()?;
    if envelope.payload_type != Role::Director.payload_type() {
        return None;
    }
    if let Some(root) = root {
        verify_threshold(
            &envelope,
            Role::Director,
            &root.keys,
            root.role_keys(Role::Director),
            "director",
        )
        .ok()?;
    }
    parse_document(&envelope.payload).ok()
}

/// The signatures' cost and the rates it caps, as printed before and after the run.
fn signatures_line(cost: &ceiling::SignatureCost, cores: usize) -> String {
    let (checkins_here, checkins_apart) = cost.checkin_ceilings(cores);
    let (progress_here, progress_apart) = cost.progress_ceilings(cores);
    format!(
        "Signatures alone (Ed25519, one thread, median): per check-in the server {:.1} µs \
         (check it, sign the directive) and the vehicle {:.1} µs (sign it, check the \
         directive); per progress event the server {:.1} µs, the vehicle {:.1} µs.\n\
         On {cores} cores that caps check-ins at {checkins_here:.0}/s with the simulated \
         vehicles on the same machine ({checkins_apart:.0}/s if they ran elsewhere), and \
         progress events at {progress_apart:.0}/s (signed before the clock starts, as \
         by vehicles elsewhere; {progress_here:.0}/s with the signing on these cores), \
         before any other work.",
        cost.server_checkin_us,
        cost.vehicle_checkin_us,
        cost.server_progress_us,
        cost.vehicle_progress_us,
    )
}

fn vehicle_id(run_id: &str, index: usize) -> String {
    format!("{run_id}-{index}")
}

fn vehicle_key(run_id: &str, index: usize) -> SigningKey {
    let seed: [u8; 32] = Sha256::digest(format!("fleet-bench|{run_id}|{index}")).into();
    SigningKey::from_seed(&seed)
}

/// A signed check-in as an idle agent running the factory image sends it.
fn checkin_bytes(key: &SigningKey, vehicle_id: &str, nonce: u64) -> Vec<u8> {
    let checkin = CheckIn {
        vehicle_id: vehicle_id.to_owned(),
        nonce: format!("fb-{nonce:016x}"),
        sent_at: Timestamp::from_datetime(chrono::Utc::now()),
        ecus: vec![EcuReport {
            ecu: "main".to_owned(),
            hardware_id: HARDWARE_ID.to_owned(),
            installed: Some(InstalledImage {
                version: "1.0.0".to_owned(),
                sha256: Sha256Digest::of(FACTORY),
                length: FACTORY.len() as u64,
            }),
            active_slot: "a".to_owned(),
        }],
        agent_state: "idle".to_owned(),
        trusted: TrustedVersions {
            root: 1,
            targets: 0,
            director: 0,
        },
    };
    sign_message(PAYLOAD_TYPE_CHECKIN, &checkin, key)
}

// ---------------------------------------------------------------------------------------
// The load driver.

#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Closed loop: `--window` messages in flight, the next sent as one is answered.
    Max,
    /// Open loop: this many messages per second whatever the answers.
    Open(u32),
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Max => f.write_str("max"),
            Mode::Open(rate) => write!(f, "open {rate}/s"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct BrokerAddress<'a> {
    host: &'a str,
    port: u16,
}

/// What one phase measured.
#[derive(Debug, Clone)]
struct PhaseResult {
    mode: Mode,
    /// Messages sent during the measured interval.
    sent: u64,
    /// Answers received during the measured interval, per second.
    answered_per_second: f64,
    /// Latency of messages sent in the measured interval, in ms.
    p50_ms: f64,
    p99_ms: f64,
    /// Of the messages sent in the measured interval: no answer within the timeout.
    timeouts: u64,
    /// Answers that failed verification, answers with nothing outstanding, publish and
    /// connection errors (over the whole phase).
    bad: u64,
    late: u64,
    errors: u64,
    /// Share of good answers carrying an assignment.
    assigned: f64,
    server_stop: Option<StopOutcome>,
}

/// Per-phase bookkeeping, shared by the senders and the connections' event loops.
struct Ledger {
    /// Send instants of the messages each vehicle (topic) has in flight, oldest first.
    outstanding: Vec<VecDeque<Instant>>,
    in_flight: usize,
    measure_from: Instant,
    measure_until: Instant,
    sent: u64,
    answered: u64,
    assigned: u64,
    good: u64,
    latencies_us: Vec<u64>,
    timeouts: u64,
    bad: u64,
    late: u64,
    errors: u64,
}

impl Ledger {
    fn new(size: usize) -> Ledger {
        let now = Instant::now();
        Ledger {
            outstanding: vec![VecDeque::new(); size],
            in_flight: 0,
            measure_from: now,
            measure_until: now,
            sent: 0,
            answered: 0,
            assigned: 0,
            good: 0,
            latencies_us: Vec::new(),
            timeouts: 0,
            bad: 0,
            late: 0,
            errors: 0,
        }
    }

    fn measured(&self, at: Instant) -> bool {
        at >= self.measure_from && at < self.measure_until
    }

    fn sent(&mut self, index: usize, at: Instant) {
        self.outstanding[index].push_back(at);
        self.in_flight += 1;
        if self.measured(at) {
            self.sent += 1;
        }
    }

    /// Returns whether a message was outstanding (a window slot is freed).
    fn answered(&mut self, index: usize, assigned: bool, at: Instant) -> bool {
        let Some(sent) = self
            .outstanding
            .get_mut(index)
            .and_then(VecDeque::pop_front)
        else {
            self.late += 1;
            return false;
        };
        self.in_flight -= 1;
        self.good += 1;
        if assigned {
            self.assigned += 1;
        }
        if self.measured(at) {
            self.answered += 1;
        }
        if sent >= self.measure_from && sent < self.measure_until {
            self.latencies_us
                .push(at.saturating_duration_since(sent).as_micros() as u64);
        }
        true
    }

    /// Drops what has waited longer than `timeout`; returns how many.
    fn expire(&mut self, now: Instant, timeout: Duration) -> usize {
        let mut expired = 0;
        for queue in &mut self.outstanding {
            while queue
                .front()
                .is_some_and(|sent| now.saturating_duration_since(*sent) > timeout)
            {
                let sent = queue.pop_front().expect("front exists");
                if sent >= self.measure_from && sent < self.measure_until {
                    self.timeouts += 1;
                }
                expired += 1;
            }
        }
        self.in_flight -= expired;
        expired
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Connections {
    clients: Vec<AsyncClient>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ledger: Arc<Mutex<Ledger>>,
    window: Arc<Semaphore>,
}

impl Drop for Connections {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A client of the broker (3.1.1, clean session, 1,000 in flight, `TCP_NODELAY`) with a
/// process-unique id.
fn mqtt_options(broker: &BrokerAddress<'_>, tag: &str) -> (AsyncClient, EventLoop) {
    static CLIENT: AtomicU64 = AtomicU64::new(0);
    let id = format!(
        "fleet-bench-{}-{tag}-{}",
        std::process::id(),
        CLIENT.fetch_add(1, Ordering::Relaxed)
    );
    let mut options = MqttOptions::new(id, broker.host, broker.port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(1000)
        .set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(options, 10_000);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    (client, eventloop)
}

/// Opens `--connections` connections, each subscribed to the workload's answers through
/// one shared subscription (each answer reaches exactly one of them).
async fn connect(
    args: &Args,
    broker: &BrokerAddress<'_>,
    workload: &Arc<Workload>,
) -> Result<Connections> {
    let ledger = Arc::new(Mutex::new(Ledger::new(workload.size())));
    let window = Arc::new(Semaphore::new(0));
    let (subscribed_tx, mut subscribed) = tokio::sync::mpsc::channel(args.connections);
    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let (client, mut eventloop) = mqtt_options(broker, "load");
        let subscription = workload.subscription();
        let (client2, workload, ledger, window, subscribed_tx) = (
            client.clone(),
            workload.clone(),
            ledger.clone(),
            window.clone(),
            subscribed_tx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        // Never `subscribe().await` here: only this loop drains the
                        // request channel it would wait on.
                        if client2
                            .try_subscribe(subscription.clone(), QoS::AtLeastOnce)
                            .is_err()
                        {
                            ledger.lock().expect("ledger").errors += 1;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let at = Instant::now();
                        let answer = workload.answer(&publish.topic, &publish.payload);
                        let mut ledger = ledger.lock().expect("ledger");
                        match answer {
                            Answer::Good { index, assigned } => {
                                if ledger.answered(index, assigned, at) {
                                    window.add_permits(1);
                                }
                            }
                            Answer::Bad => ledger.bad += 1,
                            Answer::Foreign => {}
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        ledger.lock().expect("ledger").errors += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }));
        clients.push(client);
    }
    for _ in 0..args.connections {
        tokio::time::timeout(Duration::from_secs(15), subscribed.recv())
            .await
            .context("the broker did not acknowledge the subscriptions within 15 s")?;
    }
    Ok(Connections {
        clients,
        tasks,
        ledger,
        window,
    })
}

async fn drive(
    args: &Args,
    broker: &BrokerAddress<'_>,
    workload: Arc<Workload>,
    mode: Mode,
) -> Result<PhaseResult> {
    let mut results = drive_phases(args, broker, workload, &[mode]).await?;
    Ok(results.remove(0))
}

/// Runs the phases one after the other over one set of connections.
async fn drive_phases(
    args: &Args,
    broker: &BrokerAddress<'_>,
    workload: Arc<Workload>,
    modes: &[Mode],
) -> Result<Vec<PhaseResult>> {
    let connections = connect(args, broker, &workload).await?;
    let mut results = Vec::new();
    for &mode in modes {
        let result = phase(args, &connections, &workload, mode).await;
        eprintln!(
            "  {mode}: sent {}, answered {:.0}/s, p50 {:.1} ms, p99 {:.1} ms, timeouts {}, bad {}, late {}, errors {}",
            result.sent,
            result.answered_per_second,
            result.p50_ms,
            result.p99_ms,
            result.timeouts,
            result.bad,
            result.late,
            result.errors
        );
        results.push(result);
    }
    for client in &connections.clients {
        let _ = client.try_disconnect();
    }
    Ok(results)
}

async fn phase(
    args: &Args,
    connections: &Connections,
    workload: &Arc<Workload>,
    mode: Mode,
) -> PhaseResult {
    let timeout = Duration::from_secs(args.timeout_seconds);
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup_seconds);
    let measure_until = measure_from + Duration::from_secs(args.duration_seconds);
    {
        let mut ledger = connections.ledger.lock().expect("ledger");
        let size = ledger.outstanding.len();
        *ledger = Ledger::new(size);
        ledger.measure_from = measure_from;
        ledger.measure_until = measure_until;
    }
    // Closed loop: the window starts full; answers and timeouts give slots back.
    let window = &connections.window;
    if let Ok(stale) = window.try_acquire_many(window.available_permits() as u32) {
        stale.forget();
    }
    if matches!(mode, Mode::Max) {
        window.add_permits(args.window);
    }

    // The sweeper turns what waited too long into timeouts.
    let sweeper = {
        let (ledger, window) = (connections.ledger.clone(), window.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let expired = ledger
                    .lock()
                    .expect("ledger")
                    .expire(Instant::now(), timeout);
                if matches!(mode, Mode::Max) && expired > 0 {
                    window.add_permits(expired);
                }
            }
        })
    };

    // One sender per connection, each over its own share of the vehicles.
    let senders = connections.clients.len();
    let mut tasks = Vec::new();
    for (c, client) in connections.clients.iter().enumerate() {
        let (client, workload, ledger, window) = (
            client.clone(),
            workload.clone(),
            connections.ledger.clone(),
            window.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let size = workload.size();
            let mine: Vec<usize> = (c..size).step_by(senders).collect();
            if mine.is_empty() {
                return;
            }
            let mut next = 0usize;
            let mut sent_here = 0u64;
            let per_second = match mode {
                Mode::Max => 0.0,
                Mode::Open(rate) => f64::from(rate) / senders as f64,
            };
            loop {
                let now = Instant::now();
                if now >= measure_until {
                    break;
                }
                match mode {
                    Mode::Max => {
                        match tokio::time::timeout(
                            measure_until.saturating_duration_since(now),
                            window.acquire(),
                        )
                        .await
                        {
                            Ok(Ok(permit)) => permit.forget(),
                            _ => break,
                        }
                    }
                    Mode::Open(_) => {
                        // Send what is due by now; sleep 1 ms when nothing is.
                        let due = (now.duration_since(start).as_secs_f64() * per_second) as u64;
                        if sent_here >= due {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            continue;
                        }
                    }
                }
                // The next of this sender's vehicles with nothing in flight (open loop:
                // the next one whatever it has in flight).
                let mut index = mine[next % mine.len()];
                next += 1;
                if matches!(mode, Mode::Max) {
                    let ledger = ledger.lock().expect("ledger");
                    for _ in 0..mine.len() {
                        if ledger.outstanding[index].is_empty() {
                            break;
                        }
                        index = mine[next % mine.len()];
                        next += 1;
                    }
                }
                let (topic, payload) = workload.message(index);
                ledger.lock().expect("ledger").sent(index, Instant::now());
                sent_here += 1;
                if client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    ledger.lock().expect("ledger").errors += 1;
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    // Let what is in flight be answered or time out.
    let drain_until = Instant::now() + timeout + Duration::from_millis(500);
    while Instant::now() < drain_until {
        if connections.ledger.lock().expect("ledger").in_flight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sweeper.abort();
    let mut ledger = connections.ledger.lock().expect("ledger");
    ledger.expire(Instant::now() + timeout * 2, timeout);
    ledger.latencies_us.sort_unstable();
    let seconds = measure_until.duration_since(measure_from).as_secs_f64();
    PhaseResult {
        mode,
        sent: ledger.sent,
        answered_per_second: ledger.answered as f64 / seconds,
        p50_ms: percentile(&ledger.latencies_us, 50.0) as f64 / 1000.0,
        p99_ms: percentile(&ledger.latencies_us, 99.0) as f64 / 1000.0,
        timeouts: ledger.timeouts,
        bad: ledger.bad,
        late: ledger.late,
        errors: ledger.errors,
        assigned: if ledger.good == 0 {
            0.0
        } else {
            ledger.assigned as f64 / ledger.good as f64
        },
        server_stop: None,
    }
}

// ---------------------------------------------------------------------------------------
// Output.

struct Row {
    configuration: String,
    phase: PhaseResult,
    ratio: Option<f64>,
}

fn print_table(title: &str, rows: &[Row]) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "configuration",
        "load",
        "sent",
        "answered/s",
        "p50 ms",
        "p99 ms",
        "timeouts",
        "bad",
        "late",
        "errors",
        "assigned",
        "÷ broker",
        "server stop",
    ]);
    for row in rows {
        let p = &row.phase;
        let number = |s: String| Cell::new(s).set_alignment(CellAlignment::Right);
        table.add_row(vec![
            Cell::new(&row.configuration),
            Cell::new(p.mode.to_string()),
            number(p.sent.to_string()),
            number(format!("{:.0}", p.answered_per_second)),
            number(format!("{:.1}", p.p50_ms)),
            number(format!("{:.1}", p.p99_ms)),
            number(p.timeouts.to_string()),
            number(p.bad.to_string()),
            number(p.late.to_string()),
            number(p.errors.to_string()),
            number(format!("{:.0} %", p.assigned * 100.0)),
            number(row.ratio.map_or("-".to_owned(), |r| format!("{r:.3}"))),
            Cell::new(
                p.server_stop
                    .as_ref()
                    .map_or("-".to_owned(), ToString::to_string),
            ),
        ]);
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\n{title}\n{table}");
    let _ = out.flush();
}

/// The durable lane's tables: progress ingestion, pause reach, breaker reaction.
fn print_durable(rows: &[(String, &durable::Durable)]) {
    let number = |s: String| Cell::new(s).set_alignment(CellAlignment::Right);
    let mut out = std::io::stdout().lock();
    let mut progress = Table::new();
    progress.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "configuration",
        "vehicles",
        "events",
        "into Kafka/s",
        "applied/s (end to end)",
        "seconds",
        "applied",
        "unchanged",
        "committed",
    ]);
    let mut trials = Table::new();
    trials.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "configuration",
        "measure",
        "trials",
        "received / expected",
        "per vehicle p50 ms",
        "p99 ms",
        "last vehicle p50 ms",
        "p99 ms",
        "max ms",
        "API answered p50 ms",
        "unsent",
    ]);
    let (mut any_progress, mut any_trials) = (false, false);
    for (name, d) in rows {
        if let Some(p) = &d.progress {
            any_progress = true;
            progress.add_row(vec![
                Cell::new(name),
                number(p.vehicles.to_string()),
                number(p.events.to_string()),
                number(format!("{:.0}", p.into_kafka_per_second)),
                number(format!("{:.0}", p.applied_per_second)),
                number(format!("{:.1}", p.seconds)),
                number(p.applied.to_string()),
                number(p.unchanged.to_string()),
                number(p.committed.to_string()),
            ]);
        }
        for (measure, t) in [
            ("pause → poll_now", &d.pause),
            ("breaker → cancel", &d.breaker),
        ] {
            let Some(t) = t else { continue };
            any_trials = true;
            trials.add_row(vec![
                Cell::new(name),
                Cell::new(measure),
                number(t.trials.to_string()),
                number(format!("{} / {}", t.received, t.expected)),
                number(durable::ms(&t.per_vehicle_us, 50.0)),
                number(durable::ms(&t.per_vehicle_us, 99.0)),
                number(durable::ms(&t.per_trial_last_us, 50.0)),
                number(durable::ms(&t.per_trial_last_us, 99.0)),
                number(durable::ms(&t.per_trial_last_us, 100.0)),
                number(durable::ms(&t.answered_us, 50.0)),
                number(t.unsent.to_string()),
            ]);
        }
    }
    if any_progress {
        let _ = writeln!(
            out,
            "\nDurable lane: progress events, MQTT → gateway → Kafka → consumer → database\n{progress}"
        );
    }
    if any_trials {
        let _ = writeln!(
            out,
            "\nDurable lane: reaction times (from the request / the threshold-crossing event's publish)\n{trials}"
        );
    }
    let _ = out.flush();
}
