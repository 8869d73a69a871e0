//! `ota-agent run --config <file>`: the agent on a vehicle, until SIGINT/SIGTERM.

use crate::config::{AgentConfig, BootloaderConfig};
use crate::directive::DirectiveVerifier;
use crate::fetch::{FetchLimits, HttpTransport};
use crate::identity::open_identity;
use crate::journal::CrashHook;
use crate::reporter::Outbox;
use crate::run::{
    run, vehicle_transport, AgentParts, FactoryImage, Faults, HealthCheck, RunOutcome,
};
use crate::slots::file::FileBootloader;
use crate::slots::grub::{GrubBootloader, GrubConfig};
use crate::slots::uboot::{UBootBootloader, UBootConfig};
use crate::slots::{Bootloader, SlotPaths};
use crate::trust_store::NO_BINDING_WARNING;
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Most progress events kept while offline.
pub const OUTBOX_CAPACITY: usize = 10_000;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The agent's config file (written by `ota-agent provision`).
    #[arg(long, short, env = "OTA_AGENT_CONFIG")]
    pub config: PathBuf,
}

fn bootloader(config: &BootloaderConfig) -> (Arc<dyn Bootloader>, bool) {
    match config {
        BootloaderConfig::File(file) => {
            (Arc::new(FileBootloader::new(file.env_path.clone())), true)
        }
        BootloaderConfig::Uboot(uboot) => (
            Arc::new(UBootBootloader::new(UBootConfig {
                fw_printenv: uboot.fw_printenv.clone(),
                fw_setenv: uboot.fw_setenv.clone(),
                cmdline: uboot.cmdline.clone(),
                ..UBootConfig::default()
            })),
            false,
        ),
        BootloaderConfig::Grub(grub) => (
            Arc::new(GrubBootloader::new(GrubConfig {
                grub_editenv: grub.grub_editenv.clone(),
                env_file: grub.env_path.clone(),
                cmdline: grub.cmdline.clone(),
                ..GrubConfig::default()
            })),
            false,
        ),
    }
}

/// The driver's parts from a config file.
pub fn parts_from_config(config: &AgentConfig) -> anyhow::Result<AgentParts<HttpTransport>> {
    let identity = open_identity(config).context("opening the device identity")?;
    let signer = identity.signer();
    let store = identity.trust_store(config.trust_dir());
    if !store.is_hardware_bound() {
        eprintln!("{NO_BINDING_WARNING}");
    }
    // Fail at start, not at the first directive, when the trust store is unusable.
    store.load().context("loading the trust store")?;
    let transport = vehicle_transport(&config.server_url, &config.vehicle_id, signer.clone())
        .with_context(|| format!("server URL {}", config.server_url))?;
    let (bootloader, simulated_reboot) = bootloader(&config.bootloader);
    let health = match &config.health.command {
        Some(argv) if !argv.is_empty() => HealthCheck::Command {
            argv: argv.clone(),
            timeout: Duration::from_secs(config.health.timeout_seconds),
        },
        _ => HealthCheck::BootIsEnough,
    };
    let outbox = Outbox::open(&config.state_dir.join("outbox"), OUTBOX_CAPACITY)
        .context("opening the progress outbox")?;
    Ok(AgentParts {
        vehicle_id: config.vehicle_id.clone(),
        ecu: config.ecu.name.clone(),
        hardware_id: config.ecu.hardware_id.clone(),
        signer,
        directives: DirectiveVerifier::for_ecu(
            store,
            &config.vehicle_id,
            &config.ecu.name,
            &config.ecu.hardware_id,
        ),
        transport: Arc::new(transport),
        bootloader,
        simulated_reboot,
        boot_tries: config.bootloader.tries(),
        slots: SlotPaths {
            a: config.slots.a.clone(),
            b: config.slots.b.clone(),
        },
        state_dir: config.state_dir.clone(),
        outbox,
        health,
        vehicle_state: config.vehicle_state.path.clone(),
        limits: FetchLimits {
            min_bytes_per_second: config.download.min_bytes_per_second,
            throughput_window: Duration::from_secs(config.download.throughput_window_seconds),
            deadline: Duration::from_secs(config.download.deadline_seconds),
        },
        crash: CrashHook::from_env(),
        faults: Faults::default(),
        factory: config.ecu.factory.as_ref().map(|f| FactoryImage {
            version: f.version.clone(),
            length: f.length,
        }),
        mqtt_url: config.mqtt_url.clone(),
    })
}

async fn terminated() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

pub fn cli(args: RunArgs) -> anyhow::Result<()> {
    let config = AgentConfig::load(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let parts = parts_from_config(&config)?;
        eprintln!(
            "ota-agent {}: running (server {}, broker {})",
            config.vehicle_id, config.server_url, config.mqtt_url
        );
        match run(parts, terminated()).await? {
            RunOutcome::Stopped => Ok(()),
            RunOutcome::Crashed { step } => {
                eprintln!("ota-agent: crash hook fired after journaling {step}");
                // The fault hook stands for a power cut: no orderly exit.
                std::process::abort();
            }
        }
    })
}
