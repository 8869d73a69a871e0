//! `ota-server keys ...` subcommands.

use anyhow::Context;
use clap::Subcommand;
use ota_core::metadata::Role;
use ota_core::time::Timestamp;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create root, targets and director keys and a signed root v1.
    Init {
        /// Directory to create the key set in (must not already hold one).
        #[arg(long)]
        out: PathBuf,
        /// Validity of root v1, in days.
        #[arg(long, default_value_t = 365)]
        expires_days: u32,
    },
    /// Issue the next root version with a fresh key for one role, cross-signed.
    Rotate {
        /// The key directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// root, targets or director.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long, default_value_t = 365)]
        expires_days: u32,
    },
    /// Show the roles, key ids and thresholds of the newest root.
    Show {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Wrap a payload file's exact bytes in a signed envelope, after checking them with
    /// the verifier's strict parser for that role (no trailing newline, exact JSON).
    Sign {
        /// A private key file; repeat for several signatures.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// A role name (root, targets, director) or a full payload type.
        #[arg(long)]
        payload_type: String,
        /// Where to write the envelope (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The payload file, signed byte for byte (refused if a vehicle would refuse it).
        payload: PathBuf,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text)
        .ok_or_else(|| format!("{text:?} is not a role: use root, targets or director"))
}

fn now() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now())
}

pub fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Init { out, expires_days } => {
            let root = super::init(&out, now(), expires_days)?;
            println!(
                "created root v{} (expires {}) and keys in {}",
                root.version(),
                root.expires(),
                out.display()
            );
            print!("{}", super::show(&out)?);
        }
        KeysCommand::Rotate {
            dir,
            role,
            expires_days,
        } => {
            let root = super::rotate(&dir, role, now(), expires_days)?;
            println!(
                "rotated the {role} key: root v{} written to {}",
                root.version(),
                super::root_path(&dir).display()
            );
        }
        KeysCommand::Show { dir } => print!("{}", super::show(&dir)?),
        KeysCommand::Sign {
            keys,
            payload_type,
            out,
            payload,
        } => {
            let bytes = std::fs::read(&payload)
                .with_context(|| format!("reading {}", payload.display()))?;
            let envelope = super::sign_payload(&keys, &payload_type, bytes)?;
            match out {
                Some(path) => std::fs::write(&path, &envelope)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => std::io::stdout()
                    .write_all(&envelope)
                    .context("writing to standard output")?,
            }
        }
    }
    Ok(())
}
