//! `ota-demo`: the whole loop in one command, on embedded defaults.
//!
//! Starts `ota-server` in process (SQLite, blob directory, the embedded MQTT broker on a
//! free port) and a simulated fleet (`ota_agent::simulate`: real agents with file slots,
//! real signatures, real deltas), then, through the HTTP API as a release engineer would:
//! uploads 1.0.0 (the factory image), 2.0.0 and 3.0.0; runs a three-phase canary rollout
//! of 2.0.0 (1% → 10% → 100%) to completion; then rolls out 3.0.0, whose new image fails
//! its health check on every vehicle (`--faulty-version`): its breaker opens in the
//! canary, the rollout halts and is rolled back. Prints live progress and a summary
//! measured from the server's own records.

use anyhow::{bail, Context};
use clap::Parser;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use indicatif::{ProgressBar, ProgressStyle};
use ota_server::director::DeploymentStatus;
use ota_server::settings::Settings;
use ota_server::startup::Application;
use ota_server::store::{Actor, Store};
use ota_server::tokens::{create_token, Scope};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    about = "The OTA loop end to end: canary rollout, then a bad release halted by its breaker"
)]
struct Args {
    /// Simulated vehicles.
    #[arg(long, default_value_t = 1000)]
    vehicles: usize,
    /// How often vehicles check in (the server's suggested interval).
    #[arg(long, default_value_t = 5)]
    poll_seconds: u32,
    /// Size of each firmware image.
    #[arg(long, default_value_t = 64 * 1024)]
    image_bytes: usize,
    /// Give up on a step after this long.
    #[arg(long, default_value_t = 300)]
    step_timeout_seconds: u64,
}

const HARDWARE_ID: &str = "demo-ecu";
/// The breaker's minimum sample and every phase gate's minimum finished count.
const MIN_EXECUTED: u32 = 3;

/// The release engineer's side: the HTTP API with an admin token.
struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{method} {path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn release(&self, version: &str, bytes: Vec<u8>) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(format!(
                "{}/api/v1/images?hardware_id={HARDWARE_ID}&version={version}",
                self.base
            ))
            .bearer_auth(&self.token)
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await?;
        if response.status().as_u16() != 201 {
            bail!("uploading {version}: {}", response.text().await?);
        }
        let image: Value = response.json().await?;
        self.post(
            "/api/v1/releases",
            json!({ "name": format!("demo-{version}"), "version": version,
                    "security_version": 1, "images": [image["id"]] }),
        )
        .await
    }

    /// Creates and starts a three-phase canary rollout. A phase never passes its gate
    /// with fewer finished vehicles than the minimum executed count, and cohorts come from
    /// a random salt: a draft whose canary band is smaller than that is aborted and drawn
    /// again (said on the terminal), so the demo never waits on an impossible gate.
    async fn rollout(
        &self,
        name: &str,
        release: &Value,
        vehicles: usize,
        soak: u32,
    ) -> anyhow::Result<String> {
        let canary = (1000.0 / vehicles.max(1) as f64).clamp(1.0, 50.0);
        let early = (canary * 10.0).clamp(10.0, 90.0);
        for _ in 0..10 {
            let rollout = self
                .post(
                    "/api/v1/rollouts",
                    json!({
                        "name": name, "release_id": release["id"],
                        "selector": { "hardware_ids": [HARDWARE_ID] },
                        // Each phase soaks two check-in intervals, so most of its band
                        // is assigned before the next one opens.
                        "phases": [{ "name": "canary", "percent": canary, "min_soak_seconds": soak },
                                   { "name": "early", "percent": early, "min_soak_seconds": soak },
                                   { "name": "fleet", "percent": 100 }],
                        "rate_limit": { "maximum_per_minute": 100000 },
                        "abort_criteria": { "failure_type": "all", "threshold_percentage": 20,
                                            "min_number_of_executed_things": MIN_EXECUTED,
                                            "action": "rollback" },
                    }),
                )
                .await?;
            let id = rollout["id"].as_str().context("rollout id")?.to_owned();
            let status = self.get(&format!("/api/v1/rollouts/{id}/status")).await?;
            let band = status["phases"][0]["eligible"].as_u64().unwrap_or(0);
            if band < u64::from(MIN_EXECUTED) {
                println!("{name}: canary band holds {band} vehicles, fewer than {MIN_EXECUTED}: drawing another salt");
                self.post(&format!("/api/v1/rollouts/{id}/abort"), json!({}))
                    .await?;
                continue;
            }
            self.post(&format!("/api/v1/rollouts/{id}/start"), json!({}))
                .await?;
            return Ok(id);
        }
        bail!("no salt gave a canary band of {MIN_EXECUTED} vehicles in 10 draws")
    }
}

/// A live progress line: a bar on a terminal; elsewhere (CI, a pipe) one plain line
/// every few seconds, so a log still shows what is happening.
fn bar(len: u64, prefix: &str) -> ProgressBar {
    use std::io::IsTerminal;
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(len)
    } else {
        ProgressBar::with_draw_target(
            Some(len),
            indicatif::ProgressDrawTarget::term_like_with_hz(Box::new(PlainLines::default()), 1),
        )
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{elapsed_precise}] {bar:40.cyan/blue} {pos:>5}/{len} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_owned());
    bar
}

/// Draws each refresh as a plain line, at most every 5 s.
#[derive(Debug, Default)]
struct PlainLines {
    last: std::sync::Mutex<Option<Instant>>,
}

impl indicatif::TermLike for PlainLines {
    fn width(&self) -> u16 {
        120
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, line: &str) -> std::io::Result<()> {
        self.write_str(line)
    }
    fn write_str(&self, text: &str) -> std::io::Result<()> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if text.trim().is_empty() || last.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
            return Ok(());
        }
        *last = Some(Instant::now());
        eprintln!("{}", text.trim_end());
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits until `check` yields, or fails after `timeout`.
async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("gave up after {} s waiting for {what}", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn phase_line(status: &Value) -> String {
    let r = &status["rollout"];
    let phase = r["current_phase"].as_u64().unwrap_or(0) as usize;
    let name = status["phases"][phase]["name"].as_str().unwrap_or("?");
    format!(
        "phase {name}, {} committed, {} failed, {} rolled back, breaker {}, {}",
        status["totals"]["committed"],
        status["totals"]["failed"],
        status["totals"]["rolled_back"],
        r["breaker_state"].as_str().unwrap_or("?"),
        r["state"].as_str().unwrap_or("?"),
    )
}

fn served_bytes(metrics: &str, kind: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("ota_blob_bytes_served_total") && l.contains(&format!("kind=\"{kind}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn phase_table(title: &str, status: &Value) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        title,
        "percent",
        "eligible",
        "assigned",
        "committed",
        "failed",
        "rolled back",
        "cancelled",
    ]);
    for p in status["phases"].as_array().cloned().unwrap_or_default() {
        let touched: u64 = [
            "assigned",
            "downloading",
            "installed",
            "committed",
            "failed",
            "rolled_back",
            "cancelled",
        ]
        .iter()
        .map(|k| p[k].as_u64().unwrap_or(0))
        .sum();
        table.add_row(vec![
            p["name"].as_str().unwrap_or("").to_owned(),
            format!("{:.1}%", p["percent"].as_f64().unwrap_or_default()),
            p["eligible"].to_string(),
            touched.to_string(),
            p["committed"].to_string(),
            p["failed"].to_string(),
            p["rolled_back"].to_string(),
            p["cancelled"].to_string(),
        ]);
    }
    table
}

/// When the breaker opened (its audit entry), and the last failure recorded before it:
/// the event that crossed the threshold.
async fn halt_timing(store: &Store, rollout: &str) -> anyhow::Result<Option<(i64, i64)>> {
    let audit = store.list_audit(1000, None).await?;
    let Some(opened) = audit.iter().find(|a| {
        a.subject == rollout && a.action == "rollout.breaker" && a.detail["to"] == "open"
    }) else {
        return Ok(None);
    };
    let opened_ms = chrono::DateTime::parse_from_rfc3339(&opened.at)?.timestamp_millis();
    let crossing = store
        .deployments_for_rollout(rollout)
        .await?
        .into_iter()
        .filter(|d| {
            matches!(
                d.status,
                DeploymentStatus::Failed | DeploymentStatus::RolledBack
            )
        })
        .map(|d| d.updated_ms)
        .filter(|at| *at <= opened_ms)
        .max();
    Ok(crossing.map(|c| (c, opened_ms)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,rumqttd=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let started = Instant::now();
    let step = Duration::from_secs(args.step_timeout_seconds);
    let dir = tempfile::tempdir().context("a working directory")?;

    // The server, on embedded defaults: SQLite, a blob directory, rumqttd on a free port.
    let mut settings = Settings {
        listen: "127.0.0.1:0".to_owned(),
        data_dir: dir.path().join("server"),
        ..Settings::default()
    };
    let free = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    settings.mqtt.embedded = free.to_string();
    settings.mqtt.embedded_max_connections = args.vehicles + 100;
    settings.director.poll_seconds = args.poll_seconds;
    settings.director.tick_milliseconds = 200;
    let app = Application::build(settings)
        .await
        .context("starting ota-server")?;
    let state = app.state().clone();
    let base = format!("http://{}", app.address());
    let mqtt = state
        .settings
        .mqtt
        .url
        .as_ref()
        .context("a broker")?
        .to_string();
    let (_, token) = create_token(&state.store, &Actor::system(), "demo", &[Scope::Admin]).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));
    let api = Api {
        base: base.clone(),
        token,
        http: reqwest::Client::new(),
    };
    println!(
        "ota-server at {base}, embedded MQTT broker at {mqtt}, SQLite + blobs in {}",
        dir.path().display()
    );

    // Three releases of one ECU's firmware; 3.0.0 is the bad one.
    let v1 = ota_tests::synthetic::image(1, args.image_bytes);
    let v2 = ota_tests::synthetic::next_release(&v1, 2, 16);
    let v3 = ota_tests::synthetic::next_release(&v2, 3, 16);
    api.release("1.0.0", v1.clone()).await?;

    // The fleet: every vehicle runs 1.0.0 from the factory; 3.0.0 fails its health check.
    std::fs::write(dir.path().join("root.json"), {
        let response = reqwest::Client::new()
            .get(format!("{base}/v1/metadata/root/1.json"))
            .bearer_auth(&api.token)
            .send()
            .await?;
        response.bytes().await?.to_vec()
    })?;
    std::fs::write(dir.path().join("factory.img"), &v1)?;
    let sim = ota_agent::simulate::SimulateArgs {
        vehicles: args.vehicles,
        server: base.clone(),
        mqtt: mqtt.clone(),
        root: dir.path().join("root.json"),
        factory_image: dir.path().join("factory.img"),
        factory_version: "1.0.0".to_owned(),
        slot_bytes: (args.image_bytes as u64) * 2,
        ecu: "main".to_owned(),
        hardware_id: HARDWARE_ID.to_owned(),
        dir: dir.path().join("fleet"),
        id_prefix: "veh-".to_owned(),
        seed: 1,
        register_token: Some(api.token.clone()),
        registration_file: None,
        fail_rate: 0.0,
        fail_phase: ota_agent::simulate::FailPhase::Install,
        unhealthy_rate: 1.0,
        faulty_version: Some("3.0.0".to_owned()),
        duration_seconds: None,
    };
    let (fleet_stop, fleet_stopped) = tokio::sync::oneshot::channel::<()>();
    let fleet = tokio::spawn(async move {
        ota_agent::simulate::run_fleet(&sim, async move {
            let _ = fleet_stopped.await;
        })
        .await
    });
    let n = args.vehicles as u64;
    let online = bar(n, "online");
    until("the fleet to check in on 1.0.0", step, || async {
        let count = state.store.count_installed(HARDWARE_ID, "1.0.0").await?;
        online.set_position(count);
        Ok((count >= n).then_some(()))
    })
    .await?;
    online.finish_with_message("vehicles checked in on 1.0.0");

    // A good release, canary first.
    let metrics_before = state.metrics.render();
    let good = api.release("2.0.0", v2).await?;
    let good_rollout = api
        .rollout("demo-2.0.0", &good, args.vehicles, 2 * args.poll_seconds)
        .await?;
    let progress = bar(n, "2.0.0");
    let good_status = until("2.0.0 to reach the whole fleet", step * 2, || async {
        let status = api
            .get(&format!("/api/v1/rollouts/{good_rollout}/status"))
            .await?;
        progress.set_position(status["totals"]["committed"].as_u64().unwrap_or(0));
        progress.set_message(phase_line(&status));
        if status["rollout"]["state"] != "running" {
            bail!("the 2.0.0 rollout stopped: {}", phase_line(&status));
        }
        Ok((status["totals"]["committed"].as_u64() == Some(n)).then_some(status))
    })
    .await?;
    progress.finish_with_message(phase_line(&good_status));
    let metrics_after = state.metrics.render();
    let delta_bytes =
        served_bytes(&metrics_after, "delta") - served_bytes(&metrics_before, "delta");
    let image_bytes =
        served_bytes(&metrics_after, "image") - served_bytes(&metrics_before, "image");

    // A bad release: its canary fails health checks, the breaker halts it.
    let bad = api.release("3.0.0", v3).await?;
    let bad_rollout = api
        .rollout("demo-3.0.0", &bad, args.vehicles, 2 * args.poll_seconds)
        .await?;
    let progress = bar(n, "3.0.0");
    let bad_status = until("the breaker to halt 3.0.0", step, || async {
        let status = api
            .get(&format!("/api/v1/rollouts/{bad_rollout}/status"))
            .await?;
        progress.set_position(status["totals"]["committed"].as_u64().unwrap_or(0));
        progress.set_message(phase_line(&status));
        Ok((status["rollout"]["state"] != "running").then_some(status))
    })
    .await?;
    progress.finish_with_message(phase_line(&bad_status));
    let back = bar(n, "on 2.0.0");
    until("every vehicle to run 2.0.0 again", step, || async {
        let count = state.store.count_installed(HARDWARE_ID, "2.0.0").await?;
        back.set_position(count);
        Ok((count >= n).then_some(()))
    })
    .await?;
    back.finish_with_message("vehicles on the good release");

    // The summary, from the server's own records.
    println!();
    println!("{}", phase_table("2.0.0 (good)", &good_status));
    println!("{}", phase_table("3.0.0 (bad)", &bad_status));
    let full_equivalent = n * args.image_bytes as u64;
    println!(
        "bytes sent for 2.0.0: {} as deltas + {} as full images, against {} had every vehicle downloaded the full image ({:.1}% saved)",
        mib(delta_bytes),
        mib(image_bytes),
        mib(full_equivalent),
        100.0 * (1.0 - (delta_bytes + image_bytes) as f64 / full_equivalent.max(1) as f64)
    );
    let deployments = state.store.deployments_for_rollout(&bad_rollout).await?;
    let installed_bad = deployments
        .iter()
        .filter(|d| {
            matches!(
                d.status,
                DeploymentStatus::Installed
                    | DeploymentStatus::Committed
                    | DeploymentStatus::RolledBack
            )
        })
        .count();
    let cancelled = deployments
        .iter()
        .filter(|d| d.status == DeploymentStatus::Cancelled)
        .count();
    println!(
        "3.0.0: rollout {} with breaker {} ({}); blast radius {} of {} vehicles installed it ({} assigned, {} cancelled before installing)",
        bad_status["rollout"]["state"].as_str().unwrap_or("?"),
        bad_status["rollout"]["breaker_state"].as_str().unwrap_or("?"),
        bad_status["rollout"]["breaker_reason"].as_str().unwrap_or("-"),
        installed_bad,
        n,
        deployments.len(),
        cancelled,
    );
    match halt_timing(&state.store, &bad_rollout).await? {
        Some((crossing, opened)) => println!(
            "threshold-crossing event recorded → breaker open and rollout halted: {} ms",
            opened - crossing
        ),
        None => println!("the breaker did not open"),
    }
    println!("done in {:.0} s", started.elapsed().as_secs_f64());

    let _ = fleet_stop.send(());
    fleet.await.context("the simulator task")??;
    // Our handle on the server's state (and its Kafka clients) goes first.
    drop(state);
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
    if bad_status["rollout"]["breaker_state"] != "open" {
        bail!("the bad release was not halted by its breaker");
    }
    Ok(())
}
