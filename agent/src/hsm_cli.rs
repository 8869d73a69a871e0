//! `ota-agent hsm ...`: provisioning and inspection of the vehicle HSM's trust anchor,
//! and the PKCS#11 options shared with `verify-metadata`.

use crate::hsm::{
    Hsm, HsmConfig, HsmError, DEFAULT_ANCHOR_LABEL, STATE_GENERATION_LABEL, STATE_KEY_LABEL,
};
use crate::trust_store::{FileTrustStore, TokenBinding};
use anyhow::{bail, Context};
use clap::Subcommand;
use ota_core::key::PublicKey;
use ota_core::trust::TrustedState;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where the vehicle's PKCS#11 token is. Without `--pkcs11-module` the file trust
/// store alone is used (development); any other PKCS#11 option (or its environment
/// variable) without a module is an error, so a vehicle configured for a token never
/// runs without it.
#[derive(Debug, Clone, clap::Args)]
pub struct HsmArgs {
    /// PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so).
    #[arg(long, env = "OTA_PKCS11_MODULE")]
    pub pkcs11_module: Option<PathBuf>,
    /// Label of the token (slots are looked up by token label, never by id)
    /// [default: ota-vehicle].
    #[arg(long, env = "OTA_PKCS11_TOKEN")]
    pub pkcs11_token: Option<String>,
    /// User PIN of the token.
    #[arg(long, env = "OTA_PKCS11_PIN", hide_env_values = true)]
    pub pkcs11_pin: Option<String>,
    /// Label of the root anchor public-key object [default: ota-root-anchor].
    #[arg(long)]
    pub anchor_label: Option<String>,
}

/// The token label used when `--pkcs11-token` is not given.
pub const DEFAULT_TOKEN_LABEL: &str = "ota-vehicle";

impl HsmArgs {
    /// The label of the root anchor object (the default unless `--anchor-label`).
    pub fn anchor_label(&self) -> &str {
        self.anchor_label.as_deref().unwrap_or(DEFAULT_ANCHOR_LABEL)
    }

    /// The token configuration, or `None` when no PKCS#11 option at all is given. A
    /// token label, PIN or anchor label without a module is refused: silently falling
    /// back to the file trust store would accept whatever `root.json` says.
    pub fn config(&self) -> anyhow::Result<Option<HsmConfig>> {
        let Some(module) = &self.pkcs11_module else {
            let given: Vec<&str> = [
                (
                    self.pkcs11_token.is_some(),
                    "--pkcs11-token (OTA_PKCS11_TOKEN)",
                ),
                (self.pkcs11_pin.is_some(), "--pkcs11-pin (OTA_PKCS11_PIN)"),
                (self.anchor_label.is_some(), "--anchor-label"),
            ]
            .into_iter()
            .filter_map(|(set, name)| set.then_some(name))
            .collect();
            if !given.is_empty() {
                bail!(
                    "{} given without --pkcs11-module (or OTA_PKCS11_MODULE): refusing to fall \
                     back to the file trust store",
                    given.join(", ")
                );
            }
            return Ok(None);
        };
        let Some(pin) = &self.pkcs11_pin else {
            bail!("--pkcs11-pin (or OTA_PKCS11_PIN) is required with --pkcs11-module");
        };
        Ok(Some(HsmConfig {
            module: module.clone(),
            token_label: self
                .pkcs11_token
                .clone()
                .unwrap_or_else(|| DEFAULT_TOKEN_LABEL.to_owned()),
            pin: pin.clone(),
        }))
    }

    /// Reads the root anchor key from the token, when one is configured.
    pub fn anchor_key(&self) -> anyhow::Result<Option<PublicKey>> {
        let Some(config) = self.config()? else {
            return Ok(None);
        };
        let hsm = Hsm::open(&config, false)?;
        Ok(Some(hsm.root_anchor(self.anchor_label())?))
    }

    /// The trust store in `dir` as these options require it: without a module the
    /// development file store; with one, anchored in the token's root anchor and bound to
    /// its state key and generation (the session stays open while the store lives).
    pub fn trust_store(&self, dir: &Path) -> anyhow::Result<FileTrustStore> {
        let Some(config) = self.config()? else {
            return Ok(FileTrustStore::new(dir));
        };
        let hsm = Hsm::open(&config, true)?;
        let anchor = hsm.root_anchor(self.anchor_label())?;
        let binding = TokenBinding::open(Arc::new(Mutex::new(hsm)))?;
        Ok(FileTrustStore::new(dir)
            .with_hardware_anchor(anchor)
            .with_hardware_binding(Arc::new(binding)))
    }
}

#[derive(Debug, Subcommand)]
pub enum HsmCommand {
    /// Provisioning: store a root key of `--root` in the token as the non-modifiable,
    /// non-destroyable trust anchor, and create the trusted state's binding (HMAC key and
    /// generation counter, as `init-state`). Refuses if any of them already exists.
    InstallAnchor {
        #[command(flatten)]
        hsm: HsmArgs,
        /// The root envelope the vehicle is provisioned with.
        #[arg(long)]
        root: PathBuf,
        /// Which of its root keys (required when the root role has several).
        #[arg(long)]
        keyid: Option<String>,
    },
    /// Print the key id of the token's root anchor.
    ShowAnchor {
        #[command(flatten)]
        hsm: HsmArgs,
    },
    /// Create the trusted state's binding on a token anchored before it existed: a
    /// non-extractable HMAC key (`ota-state-key`) and the generation counter
    /// (`ota-state-generation`, at 0). Refuses if either exists.
    InitState {
        #[command(flatten)]
        hsm: HsmArgs,
    },
    /// Print the generation of the last trusted state the token accepted.
    ShowState {
        #[command(flatten)]
        hsm: HsmArgs,
    },
}

/// The root key of the signed root at `root` that becomes the token's anchor: the one
/// named by `keyid`, or the only root key. The root must verify as an anchor.
pub fn root_anchor_key(root: &Path, keyid: Option<&str>) -> anyhow::Result<PublicKey> {
    let bytes = std::fs::read(root).with_context(|| format!("reading {}", root.display()))?;
    let state = TrustedState::from_anchor(&bytes)
        .with_context(|| format!("{} is not a valid signed root", root.display()))?;
    let root_keys = &state
        .root()
        .role_keys(ota_core::metadata::Role::Root)
        .keyids;
    let chosen = match (keyid, root_keys.as_slice()) {
        (Some(wanted), _) => root_keys
            .iter()
            .find(|id| id.as_str() == wanted)
            .with_context(|| format!("{wanted} is not a root key of {}", root.display()))?,
        (None, [only]) => only,
        (None, _) => bail!(
            "the root role has {} keys; choose one with --keyid",
            root_keys.len()
        ),
    };
    Ok(state.root().keys[chosen])
}

pub fn run(cmd: HsmCommand) -> anyhow::Result<()> {
    match cmd {
        HsmCommand::InstallAnchor { hsm, root, keyid } => {
            let key = root_anchor_key(&root, keyid.as_deref())?;
            let config = required(&hsm)?;
            let token = Hsm::open(&config, true)?;
            // Every label must be free before anything is created.
            if token.objects_labelled(hsm.anchor_label())? > 0 {
                bail!(HsmError::AnchorExists {
                    label: hsm.anchor_label().to_owned()
                });
            }
            token.refuse_existing_state_binding()?;
            token.install_root_anchor(hsm.anchor_label(), &key)?;
            token.install_state_binding()?;
            println!(
                "installed root anchor {} as {:?} and the trusted state binding on token {:?}",
                key.key_id(),
                hsm.anchor_label(),
                config.token_label
            );
        }
        HsmCommand::ShowAnchor { hsm } => {
            let key = hsm
                .anchor_key()?
                .context("--pkcs11-module (or OTA_PKCS11_MODULE) is required")?;
            println!("{}", key.key_id());
        }
        HsmCommand::InitState { hsm } => {
            let config = required(&hsm)?;
            Hsm::open(&config, true)?.install_state_binding()?;
            println!(
                "created the trusted state binding ({STATE_KEY_LABEL:?}, {STATE_GENERATION_LABEL:?} at 0) on token {:?}",
                config.token_label
            );
        }
        HsmCommand::ShowState { hsm } => {
            let token = Hsm::open(&required(&hsm)?, false)?;
            let objects = token.state_objects()?;
            println!("{}", token.state_generation(&objects)?);
        }
    }
    Ok(())
}

fn required(hsm: &HsmArgs) -> anyhow::Result<HsmConfig> {
    hsm.config()?
        .context("--pkcs11-module (or OTA_PKCS11_MODULE) is required")
}
