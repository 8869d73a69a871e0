//! `ota-server serve` and `ota-server tokens ...`.

use crate::settings::Settings;
use crate::startup::Application;
use crate::store::{Actor, Store};
use crate::tokens::{create_expiring_token, Scope};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file; `OTA_*` environment variables override it.
    #[arg(long, short, env = "OTA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Only read and check the configuration (file and `OTA_*` variables), say whether
    /// it is valid and exit: nothing is opened, connected or started.
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a bearer token and print it (once: only its hash is stored).
    Create {
        #[arg(long, short, env = "OTA_CONFIG")]
        config: Option<PathBuf>,
        /// A name for the audit log, e.g. the person or CI job holding it.
        #[arg(long)]
        name: String,
        /// read, release:write, rollout:write or admin; repeat for several.
        #[arg(long = "scope", required = true, value_parser = Scope::parse)]
        scopes: Vec<Scope>,
        /// Print JSON instead of the bare token.
        #[arg(long)]
        json: bool,
        /// Refuse the token after this long: a whole number with a unit s, m, h or d
        /// (e.g. `90d`); default: it never expires.
        #[arg(long, value_parser = crate::tokens::parse_lifetime)]
        expires_in: Option<u64>,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn load(config: Option<&std::path::Path>) -> anyhow::Result<Settings> {
    Settings::load(config).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = load(args.config.as_deref())?;
    if args.check_config {
        let external = |set: bool| if set { "external" } else { "embedded" };
        println!(
            "configuration valid (database: {:?}, blobs: {:?}, mqtt: {}, kafka: {})",
            crate::store::Backend::from_url(&settings.database_url())?,
            settings.blobs.backend,
            external(settings.mqtt.url.is_some()),
            external(settings.kafka.brokers.is_some()),
        );
        return Ok(());
    }
    crate::telemetry::init_logging(&settings.log);
    runtime()?.block_on(async move {
        let app = Application::build(settings).await?;
        app.run_until_stopped(shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

pub fn tokens(cmd: TokensCommand) -> anyhow::Result<()> {
    match cmd {
        TokensCommand::Create {
            config,
            name,
            scopes,
            json,
            expires_in,
        } => {
            let settings = load(config.as_deref())?;
            runtime()?.block_on(async move {
                std::fs::create_dir_all(&settings.data_dir)
                    .with_context(|| format!("creating {}", settings.data_dir.display()))?;
                let store = Store::connect(&settings.database_url(), 2).await.context("opening the database")?;
                let actor = Actor {
                    name: "ota-server tokens create".to_owned(),
                    request_id: None,
                };
                let expires_ms = expires_in.map(|s| crate::store::now_ms().saturating_add((s as i64).saturating_mul(1000)));
                let (record, token) = create_expiring_token(&store, &actor, &name, &scopes, expires_ms).await?;
                if json {
                    println!("{}", serde_json::json!({ "id": record.id, "name": record.name, "scopes": record.scopes, "token": token,
                                                       "expires_at": expires_ms.map(crate::store::ms_to_rfc3339) }));
                } else {
                    println!("{token}");
                }
                store.close().await;
                Ok(())
            })
        }
    }
}
