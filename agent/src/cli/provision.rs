//! `ota-agent provision`: makes a vehicle out of a token, a root and a few facts.
//!
//! 1. builds and validates the agent config (every bad flag is refused before anything is
//!    written);
//! 2. refuses when the config file, the trust store's `root.json`, the key file or an
//!    object with the device-key or anchor label already exists (provisioning never
//!    overwrites an identity);
//! 3. generates the device key inside the token ([`Pkcs11Key::generate`]), imports the
//!    root anchor and creates the trusted state's binding (HMAC key and generation
//!    counter) exactly as `ota-agent hsm install-anchor` does ([`root_anchor_key`] +
//!    [`Hsm::install_root_anchor`] + [`Hsm::install_state_binding`]) — or, with
//!    `--key-store file`, creates a development key file (no binding);
//! 4. installs `root.json` into `state_dir/trust` and checks the trust store loads,
//!    anchored in the token;
//! 5. writes the config (mode 0600: it may hold the PIN) and prints the vehicle id, the
//!    device public key and the `otactl vehicle register` command line.

use crate::config::{
    AgentConfig, AnchorConfig, BootloaderConfig, DownloadConfig, EcuConfig, FileBootloaderConfig,
    FileKeyConfig, GrubConfig, HealthConfig, KeyConfig, Pkcs11KeyConfig, SlotsConfig, UbootConfig,
    VehicleStateConfig,
};
use crate::hsm::{Hsm, HsmError, DEFAULT_ANCHOR_LABEL, STATE_GENERATION_LABEL, STATE_KEY_LABEL};
use crate::hsm_cli::root_anchor_key;
use crate::identity::file::FileKey;
use crate::identity::pkcs11::{Pkcs11Key, DEFAULT_DEVICE_KEY_LABEL};
use crate::identity::DeviceSigner;
use crate::trust_store::{write_atomically, FileTrustStore};
use anyhow::{bail, Context};
use ota_core::key::PublicKey;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyStore {
    /// The device key generated inside the PKCS#11 token (vehicles).
    Pkcs11,
    /// A 0600 seed file (development and the simulator only).
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Bootloader {
    File,
    Uboot,
    Grub,
}

#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {
    /// Where the device key lives.
    #[arg(long, value_enum, default_value = "pkcs11")]
    pub key_store: KeyStore,
    /// PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so); required with the pkcs11
    /// key store.
    #[arg(long)]
    pub pkcs11_module: Option<PathBuf>,
    /// Label of the vehicle's token.
    #[arg(long, default_value = "ota-vehicle")]
    pub token_label: String,
    /// User PIN of the token (written to the config).
    #[arg(long, conflicts_with = "pin_env")]
    pub pin: Option<String>,
    /// Environment variable holding the user PIN (read now; its name goes to the config).
    #[arg(long)]
    pub pin_env: Option<String>,
    /// Label of the device key objects.
    #[arg(long, default_value = DEFAULT_DEVICE_KEY_LABEL)]
    pub key_label: String,
    /// Label of the root anchor public-key object.
    #[arg(long, default_value = DEFAULT_ANCHOR_LABEL)]
    pub anchor_label: String,
    /// The device key file (with `--key-store file`).
    #[arg(long)]
    pub key_path: Option<PathBuf>,
    /// The vehicle's id (as registered with the server).
    #[arg(long)]
    pub vehicle_id: String,
    /// The ECU's hardware id.
    #[arg(long)]
    pub hardware_id: String,
    /// The ECU's name.
    #[arg(long)]
    pub ecu: String,
    /// Version of the image the active slot holds now (with `--factory-length`).
    #[arg(long, requires = "factory_length")]
    pub factory_version: Option<String>,
    /// Length in bytes of that image.
    #[arg(long, requires = "factory_version")]
    pub factory_length: Option<u64>,
    /// The signed root the vehicle trusts (becomes `state_dir/trust/root.json`).
    #[arg(long)]
    pub root: PathBuf,
    /// Which root key becomes the token's anchor (required when the root has several).
    #[arg(long)]
    pub root_keyid: Option<String>,
    /// HTTP(S) base URL of the server.
    #[arg(long)]
    pub server_url: String,
    /// MQTT broker URL.
    #[arg(long)]
    pub mqtt_url: String,
    /// The agent's state directory (journal, downloads, outbox, trust store).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Slot A (file or block device).
    #[arg(long)]
    pub slot_a: PathBuf,
    /// Slot B (file or block device).
    #[arg(long)]
    pub slot_b: PathBuf,
    /// The bootloader that switches slots.
    #[arg(long, value_enum, default_value = "file")]
    pub bootloader: Bootloader,
    /// Bootloader env file (file: default `state_dir/bootenv.json`; grub: default
    /// `/boot/grub/grubenv`).
    #[arg(long)]
    pub boot_env: Option<PathBuf>,
    /// `fw_printenv` (uboot).
    #[arg(long, default_value = "/usr/bin/fw_printenv")]
    pub fw_printenv: PathBuf,
    /// `fw_setenv` (uboot).
    #[arg(long, default_value = "/usr/bin/fw_setenv")]
    pub fw_setenv: PathBuf,
    /// `grub-editenv` (grub).
    #[arg(long, default_value = "/usr/bin/grub-editenv")]
    pub grub_editenv: PathBuf,
    /// The kernel command line naming the booted slot (uboot, grub).
    #[arg(long, default_value = "/proc/cmdline")]
    pub cmdline: PathBuf,
    /// Boot attempts of a new slot before falling back.
    #[arg(long, default_value_t = 3)]
    pub boot_tries: u32,
    /// The vehicle-state provider file (preconditions).
    #[arg(long)]
    pub vehicle_state: Option<PathBuf>,
    /// Where to write the agent config (refused if it exists).
    #[arg(long)]
    pub config: PathBuf,
}

/// The config `provision` writes for these arguments (validated).
pub fn config_for(args: &ProvisionArgs) -> anyhow::Result<AgentConfig> {
    let key = match args.key_store {
        KeyStore::Pkcs11 => {
            if args.pin.is_none() && args.pin_env.is_none() {
                bail!("--pin or --pin-env is required with --key-store pkcs11");
            }
            KeyConfig::Pkcs11(Pkcs11KeyConfig {
                module: args
                    .pkcs11_module
                    .clone()
                    .context("--pkcs11-module is required with --key-store pkcs11")?,
                token_label: args.token_label.clone(),
                pin: args.pin.clone(),
                pin_env: args.pin_env.clone(),
                label: args.key_label.clone(),
            })
        }
        KeyStore::File => KeyConfig::File(FileKeyConfig {
            path: args
                .key_path
                .clone()
                .context("--key-path is required with --key-store file")?,
        }),
    };
    let anchor = (args.key_store == KeyStore::Pkcs11).then(|| AnchorConfig {
        label: args.anchor_label.clone(),
    });
    let bootloader = match args.bootloader {
        Bootloader::File => BootloaderConfig::File(FileBootloaderConfig {
            env_path: args
                .boot_env
                .clone()
                .unwrap_or_else(|| args.state_dir.join("bootenv.json")),
            tries: args.boot_tries,
        }),
        Bootloader::Uboot => BootloaderConfig::Uboot(UbootConfig {
            fw_printenv: args.fw_printenv.clone(),
            fw_setenv: args.fw_setenv.clone(),
            cmdline: args.cmdline.clone(),
            tries: args.boot_tries,
        }),
        Bootloader::Grub => BootloaderConfig::Grub(GrubConfig {
            grub_editenv: args.grub_editenv.clone(),
            env_path: args
                .boot_env
                .clone()
                .unwrap_or_else(|| PathBuf::from("/boot/grub/grubenv")),
            cmdline: args.cmdline.clone(),
            tries: args.boot_tries,
        }),
    };
    let config = AgentConfig {
        vehicle_id: args.vehicle_id.clone(),
        server_url: args.server_url.clone(),
        mqtt_url: args.mqtt_url.clone(),
        state_dir: args.state_dir.clone(),
        ecu: EcuConfig {
            name: args.ecu.clone(),
            hardware_id: args.hardware_id.clone(),
            factory: match (&args.factory_version, args.factory_length) {
                (Some(version), Some(length)) => Some(crate::config::FactoryConfig {
                    version: version.clone(),
                    length,
                }),
                _ => None,
            },
        },
        key,
        anchor,
        slots: SlotsConfig {
            a: args.slot_a.clone(),
            b: args.slot_b.clone(),
        },
        bootloader,
        health: HealthConfig::default(),
        vehicle_state: VehicleStateConfig {
            path: args.vehicle_state.clone(),
        },
        download: DownloadConfig::default(),
    };
    if let Err((key, reason)) = config.validate() {
        bail!("{key}: {reason}");
    }
    Ok(config)
}

/// The command that registers the vehicle with the server.
pub fn register_command(config: &AgentConfig, public_key: &PublicKey) -> String {
    format!(
        "otactl vehicle register --id {} --public-key {} --ecu {}={}",
        config.vehicle_id,
        public_key.to_hex(),
        config.ecu.name,
        config.ecu.hardware_id
    )
}

fn refuse_existing(path: &Path, what: &str) -> anyhow::Result<()> {
    if path.symlink_metadata().is_ok() {
        bail!(
            "{what} {} already exists; provisioning never overwrites a vehicle's identity",
            path.display()
        );
    }
    Ok(())
}

pub fn run(args: ProvisionArgs) -> anyhow::Result<()> {
    let config = config_for(&args)?;
    let trust = FileTrustStore::new(config.trust_dir());
    refuse_existing(&args.config, "the config file")?;
    refuse_existing(&trust.anchor_path(), "the trust store root")?;
    let root_bytes =
        std::fs::read(&args.root).with_context(|| format!("reading {}", args.root.display()))?;
    let anchor_key = root_anchor_key(&args.root, args.root_keyid.as_deref())?;

    let (public_key, key_description) = match &config.key {
        KeyConfig::Pkcs11(key_config) => {
            let hsm_config = key_config.hsm_config()?;
            let hsm = Hsm::open(&hsm_config, true)?;
            let result = provision_token(&hsm, &key_config.label, &args, &anchor_key);
            let closed = hsm.close();
            let public_key = result?;
            closed?;
            (
                public_key,
                format!(
                    "generated in PKCS#11 token {:?} as {:?} (sensitive, not extractable)",
                    key_config.token_label, key_config.label
                ),
            )
        }
        KeyConfig::File(key_config) => {
            refuse_existing(&key_config.path, "the device key file")?;
            let key = FileKey::create(&key_config.path)?;
            (
                key.public_key(),
                format!(
                    "FILE key store {} (development and simulator only, NOT for vehicles)",
                    key_config.path.display()
                ),
            )
        }
    };

    std::fs::create_dir_all(trust.dir())
        .with_context(|| format!("creating {}", trust.dir().display()))?;
    write_atomically(&trust.anchor_path(), &root_bytes)?;
    let check = match config.anchor {
        Some(_) => trust.clone().with_hardware_anchor(anchor_key),
        None => trust.clone(),
    };
    check
        .load()
        .context("the installed trust store does not load")?;
    write_config(&args.config, &config.to_toml()?)?;

    println!("vehicle id: {}", config.vehicle_id);
    println!("device public key: {}", public_key.to_hex());
    println!("device key: {key_description}");
    if let Some(anchor) = &config.anchor {
        println!(
            "root anchor: {} as {:?} in the token",
            anchor_key.key_id(),
            anchor.label
        );
    }
    match config.anchor {
        Some(_) => println!(
            "trust store: {} (state bound to the token: {STATE_KEY_LABEL:?}, {STATE_GENERATION_LABEL:?})",
            trust.dir().display()
        ),
        None => println!(
            "trust store: {} (development: NO hardware binding of state.json)",
            trust.dir().display()
        ),
    }
    println!("config: {}", args.config.display());
    println!("register the vehicle with the server:");
    println!("  {}", register_command(&config, &public_key));
    Ok(())
}

/// Both labels must be free before anything is created, so that a refused provisioning
/// leaves the token as it was.
fn provision_token(
    hsm: &Hsm,
    key_label: &str,
    args: &ProvisionArgs,
    anchor_key: &PublicKey,
) -> anyhow::Result<PublicKey> {
    let count = hsm.objects_labelled(key_label)?;
    if count > 0 {
        return Err(HsmError::DeviceKeyExists {
            label: key_label.to_owned(),
            count,
        }
        .into());
    }
    if hsm.objects_labelled(&args.anchor_label)? > 0 {
        return Err(HsmError::AnchorExists {
            label: args.anchor_label.clone(),
        }
        .into());
    }
    hsm.refuse_existing_state_binding()?;
    let public_key = Pkcs11Key::generate(hsm, key_label, args.vehicle_id.as_bytes())?;
    hsm.install_root_anchor(&args.anchor_label, anchor_key)?;
    hsm.install_state_binding()?;
    Ok(public_key)
}

/// Creates the config file (never replacing one), mode 0600, synced.
fn write_config(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
