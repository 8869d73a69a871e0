//! The fleet simulator: N independent agents in one process, each with its own id, device
//! key, trust store, journal, file slots and boot environment, all driven by the same
//! state machine and driver as a real vehicle ([`crate::run`]), against a real server
//! and broker. For demos and load tests; failure injection per vehicle.
//!
//! Device keys are derived from `--seed` and the vehicle index and held in memory: this
//! is a development key store, never one for a vehicle. Likewise each trust store is the
//! development file store, without hardware binding of its state.

use crate::directive::DirectiveVerifier;
use crate::fetch::{FetchLimits, HttpTransport};
use crate::identity::{DeviceSigner, MemoryKey};
use crate::journal::{CrashHook, Journal};
use crate::reporter::Outbox;
use crate::run::{
    run, vehicle_transport, AgentParts, FactoryImage, Faults, HealthCheck, RunOutcome,
};
use crate::slots::file::FileBootloader;
use crate::slots::SlotPaths;
use crate::trust_store::FileTrustStore;
use anyhow::Context;
use ota_core::key::SigningKey;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Which step an injected failure hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailPhase {
    Download,
    Install,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// How many vehicles to run.
    #[arg(long, default_value_t = 10)]
    pub vehicles: usize,
    /// The server's base URL (blobs and metadata).
    #[arg(long)]
    pub server: String,
    /// The MQTT broker, mqtt://host:port.
    #[arg(long)]
    pub mqtt: String,
    /// The root metadata every vehicle is provisioned with.
    #[arg(long)]
    pub root: PathBuf,
    /// The image every vehicle runs from the factory (written to slot A).
    #[arg(long)]
    pub factory_image: PathBuf,
    #[arg(long, default_value = "1.0.0")]
    pub factory_version: String,
    /// Size of each slot file; at least the largest image.
    #[arg(long, default_value_t = 1 << 20)]
    pub slot_bytes: u64,
    #[arg(long, default_value = "main")]
    pub ecu: String,
    #[arg(long)]
    pub hardware_id: String,
    /// Where the vehicles' state lives (one folder each); a tmpfs keeps it in memory.
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value = "sim-")]
    pub id_prefix: String,
    /// Seed of the vehicles' device keys (the same seed gives the same fleet).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Register the vehicles through the API with this admin token.
    #[arg(long, env = "OTA_TOKEN")]
    pub register_token: Option<String>,
    /// Write the registrations (one JSON object per line) here instead.
    #[arg(long)]
    pub registration_file: Option<PathBuf>,
    /// Share of vehicles whose update fails (0.0–1.0).
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    #[arg(long, value_enum, default_value_t = FailPhase::Install)]
    pub fail_phase: FailPhase,
    /// Share of vehicles whose new image fails its health check (0.0–1.0).
    #[arg(long, default_value_t = 0.0)]
    pub unhealthy_rate: f64,
    /// Inject the faults above only into updates to this version (a bad release);
    /// without it, into every update.
    #[arg(long)]
    pub faulty_version: Option<String>,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub duration_seconds: Option<u64>,
}

/// One simulated vehicle's identity.
#[derive(Debug, Clone)]
pub struct SimVehicle {
    pub id: String,
    pub key: SigningKey,
    pub faults: Faults,
    pub dir: PathBuf,
}

/// A number in [0, 1) from the seed, the vehicle index and a purpose, stable across runs.
fn draw(seed: u64, index: usize, purpose: &str) -> f64 {
    let digest = Sha256::new()
        .chain_update(seed.to_le_bytes())
        .chain_update((index as u64).to_le_bytes())
        .chain_update(purpose.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_le_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// The fleet `args` describes (ids, keys, injected faults), without touching disk.
pub fn fleet(args: &SimulateArgs) -> Vec<SimVehicle> {
    (0..args.vehicles)
        .map(|index| {
            let seed: [u8; 32] = Sha256::new()
                .chain_update(b"ota-sim-device-key")
                .chain_update(args.seed.to_le_bytes())
                .chain_update((index as u64).to_le_bytes())
                .finalize()
                .into();
            let fails = draw(args.seed, index, "fail") < args.fail_rate;
            let id = format!("{}{index:05}", args.id_prefix);
            SimVehicle {
                dir: args.dir.join(&id),
                id,
                key: SigningKey::from_seed(&seed),
                faults: Faults {
                    fail_download: fails && args.fail_phase == FailPhase::Download,
                    fail_install: fails && args.fail_phase == FailPhase::Install,
                    unhealthy: draw(args.seed, index, "unhealthy") < args.unhealthy_rate,
                    only_version: args.faulty_version.clone(),
                },
            }
        })
        .collect()
}

/// The registration body of `POST /api/v1/vehicles`.
pub fn registration(vehicle: &SimVehicle, args: &SimulateArgs) -> serde_json::Value {
    serde_json::json!({
        "id": vehicle.id,
        "public_key": vehicle.key.public_key().to_hex(),
        "ecus": [{ "ecu": args.ecu, "hardware_id": args.hardware_id }],
        "tags": ["simulated"],
    })
}

/// Registers the fleet (API or file).
pub async fn register(fleet: &[SimVehicle], args: &SimulateArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.registration_file {
        let mut lines = String::new();
        for vehicle in fleet {
            lines.push_str(&registration(vehicle, args).to_string());
            lines.push('\n');
        }
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    let Some(token) = &args.register_token else {
        return Ok(());
    };
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/vehicles", args.server.trim_end_matches('/'));
    for vehicle in fleet {
        let response = client
            .post(&url)
            .bearer_auth(token)
            .json(&registration(vehicle, args))
            .send()
            .await
            .with_context(|| format!("registering {}", vehicle.id))?;
        let status = response.status();
        // 409: registered by an earlier run with the same seed, which is the same key.
        if !status.is_success() && status != reqwest::StatusCode::CONFLICT {
            let body = response.text().await.unwrap_or_default();
            anyhow::bail!("registering {} failed: {status}: {body}", vehicle.id);
        }
    }
    Ok(())
}

/// Prepares one vehicle's folder: slots, boot environment, trust store anchor.
fn prepare(
    vehicle: &SimVehicle,
    args: &SimulateArgs,
    root: &[u8],
    factory: &[u8],
) -> anyhow::Result<()> {
    let trust = vehicle.dir.join("trust");
    std::fs::create_dir_all(&trust).with_context(|| format!("creating {}", trust.display()))?;
    let anchor = trust.join("root.json");
    if !anchor.exists() {
        std::fs::write(&anchor, root)?;
    }
    for (name, content) in [("slot_a", factory), ("slot_b", &[][..])] {
        let path = vehicle.dir.join(name);
        if !path.exists() {
            let mut bytes = content.to_vec();
            bytes.resize(args.slot_bytes.max(factory.len() as u64) as usize, 0);
            std::fs::write(&path, bytes)?;
        }
    }
    Ok(())
}

/// Builds the driver parts of one simulated vehicle.
pub fn parts(
    vehicle: &SimVehicle,
    args: &SimulateArgs,
    factory_len: u64,
) -> anyhow::Result<AgentParts<HttpTransport>> {
    let signer: Arc<dyn DeviceSigner> = Arc::new(MemoryKey(vehicle.key.clone()));
    let transport = vehicle_transport(&args.server, &vehicle.id, signer.clone())
        .with_context(|| format!("HTTP transport for {}", args.server))?;
    let store = FileTrustStore::new(vehicle.dir.join("trust"));
    Ok(AgentParts {
        vehicle_id: vehicle.id.clone(),
        ecu: args.ecu.clone(),
        hardware_id: args.hardware_id.clone(),
        signer,
        directives: DirectiveVerifier::for_ecu(store, &vehicle.id, &args.ecu, &args.hardware_id),
        transport: Arc::new(transport),
        bootloader: Arc::new(FileBootloader::new(vehicle.dir.join("bootenv.json"))),
        simulated_reboot: true,
        boot_tries: 3,
        slots: SlotPaths {
            a: vehicle.dir.join("slot_a"),
            b: vehicle.dir.join("slot_b"),
        },
        state_dir: vehicle.dir.clone(),
        outbox: Outbox::in_memory(10_000),
        health: HealthCheck::BootIsEnough,
        vehicle_state: None,
        limits: FetchLimits::default(),
        crash: CrashHook::default(),
        faults: vehicle.faults.clone(),
        factory: Some(FactoryImage {
            version: args.factory_version.clone(),
            length: factory_len,
        }),
        mqtt_url: args.mqtt.clone(),
    })
}

/// Counts of vehicles by the phase their journal holds (and the committed version).
pub fn census(fleet: &[SimVehicle]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for vehicle in fleet {
        let key = match Journal::new(&vehicle.dir).load() {
            Ok(Some(state)) if state.phase == crate::machine::Phase::Idle => {
                let version = state
                    .installed()
                    .as_ref()
                    .map_or("none", |i| i.version.as_str());
                format!("idle@{version}")
            }
            Ok(Some(state)) => state.phase.step_name().to_owned(),
            Ok(None) => "starting".to_owned(),
            Err(_) => "unreadable".to_owned(),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// Runs the whole fleet until `shutdown` resolves.
pub async fn run_fleet(
    args: &SimulateArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let root =
        std::fs::read(&args.root).with_context(|| format!("reading {}", args.root.display()))?;
    let factory = std::fs::read(&args.factory_image)
        .with_context(|| format!("reading {}", args.factory_image.display()))?;
    anyhow::ensure!(
        (factory.len() as u64) <= args.slot_bytes,
        "the factory image ({} bytes) is larger than --slot-bytes {}",
        factory.len(),
        args.slot_bytes
    );
    let vehicles = fleet(args);
    for vehicle in &vehicles {
        prepare(vehicle, args, &root, &factory)?;
    }
    register(&vehicles, args).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for (index, vehicle) in vehicles.iter().enumerate() {
        let parts = parts(vehicle, args, factory.len() as u64)?;
        let mut stop = stop_rx.clone();
        let id = vehicle.id.clone();
        tasks.spawn(async move {
            // Spread the fleet's first connections over a second.
            tokio::time::sleep(Duration::from_millis((index % 1000) as u64)).await;
            let outcome = run(parts, async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            })
            .await;
            if let Err(err) = &outcome {
                eprintln!("{id}: the agent stopped with an error: {err}");
            }
            (id, outcome)
        });
    }
    eprintln!("{}", crate::trust_store::NO_BINDING_WARNING);
    eprintln!(
        "simulating {} vehicles ({} with injected failures, {} unhealthy)",
        vehicles.len(),
        vehicles
            .iter()
            .filter(|v| v.faults.fail_download || v.faults.fail_install)
            .count(),
        vehicles.iter().filter(|v| v.faults.unhealthy).count()
    );
    let deadline = args.duration_seconds.map(Duration::from_secs);
    let started = tokio::time::Instant::now();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                eprintln!("{:?}", census(&vehicles));
                if deadline.is_some_and(|d| started.elapsed() >= d) {
                    break;
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    let mut failed = 0usize;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(RunOutcome::Stopped))) => {}
            Ok((id, Ok(outcome))) => eprintln!("{id}: {outcome:?}"),
            Ok((_, Err(_))) => failed += 1,
            Err(err) => eprintln!("a vehicle task failed: {err}"),
        }
    }
    eprintln!("final: {:?}", census(&vehicles));
    anyhow::ensure!(
        failed == 0,
        "{failed} simulated agents stopped with an error"
    );
    Ok(())
}

/// `ota-agent simulate`.
pub fn cli(args: SimulateArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        run_fleet(&args, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    })
}
