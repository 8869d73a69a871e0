//! Real services as child processes, for tests and benchmarks that must kill, pause or
//! restart them: `ota-server` (the real binary, configured through a TOML file written
//! from [`Settings`]), a throwaway PostgreSQL database, a test-owned Mosquitto and a
//! test-owned `tansu` Kafka-protocol broker. Every child is stopped when dropped.

use anyhow::{bail, Context, Result};
use ota_server::settings::Settings;
use serde_json::Value;
use std::fmt;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A free TCP port on loopback (bound once and released: good enough for a test-owned
/// listener started right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Sends `signal` (`KILL`, `TERM`, `STOP`, `CONT`) to a process.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

fn tail(path: &Path, lines: usize) -> String {
    let Ok(file) = std::fs::File::open(path) else {
        return String::new();
    };
    let all: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How a child process ended when asked to stop.
#[derive(Debug, Clone)]
pub enum StopOutcome {
    Clean(Duration),
    Exited(String),
    Killed,
    AlreadyStopped,
}

impl fmt::Display for StopOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopOutcome::Clean(d) => write!(f, "clean exit {:.1} s after SIGTERM", d.as_secs_f64()),
            StopOutcome::Exited(s) => write!(f, "exited with {s}"),
            StopOutcome::Killed => f.write_str("no exit within 30 s of SIGTERM: killed"),
            StopOutcome::AlreadyStopped => f.write_str("already stopped"),
        }
    }
}

/// SIGTERM, then up to 30 s for a clean exit, then SIGKILL.
fn terminate(child: &mut Child) -> StopOutcome {
    if let Ok(Some(status)) = child.try_wait() {
        return StopOutcome::Exited(status.to_string());
    }
    let started = Instant::now();
    signal(child.id(), "TERM");
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(status)) = child.try_wait() {
            return if status.success() {
                StopOutcome::Clean(started.elapsed())
            } else {
                StopOutcome::Exited(status.to_string())
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    StopOutcome::Killed
}

/// The real `ota-server` binary, configured by a TOML file written from [`Settings`]
/// (so a field renamed in the server is a compile error here, not a silent default).
#[derive(Debug)]
pub struct ServerProcess {
    bin: PathBuf,
    config: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    pub url: String,
    /// An admin token created with `ota-server tokens create` before the first start.
    pub token: String,
    pub log: PathBuf,
}

impl ServerProcess {
    /// Writes `settings` to `dir/ota.toml`, creates an admin token and starts `serve`.
    /// `settings.listen` must name a fixed port (see [`free_port`]): a restarted server
    /// listens where the first one did.
    pub fn start(
        bin: &Path,
        dir: &Path,
        settings: &Settings,
        env: &[(String, String)],
    ) -> Result<ServerProcess> {
        let port = settings
            .listen
            .rsplit_once(':')
            .map(|(_, p)| p)
            .filter(|p| *p != "0")
            .context("settings.listen must name a fixed port")?
            .to_owned();
        std::fs::create_dir_all(dir)?;
        let config = dir.join("ota.toml");
        std::fs::write(
            &config,
            toml::to_string(settings).context("writing the server settings as TOML")?,
        )?;
        let mut server = ServerProcess {
            bin: bin.to_owned(),
            config,
            env: env.to_vec(),
            child: None,
            url: format!("http://127.0.0.1:{port}"),
            token: String::new(),
            log: dir.join("server.log"),
        };
        let output = server
            .command(&["tokens", "create", "--name", "e2e", "--scope", "admin"])
            .output()
            .with_context(|| format!("running {} tokens create", bin.display()))?;
        if !output.status.success() {
            bail!(
                "ota-server tokens create failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        server.token = String::from_utf8(output.stdout)?.trim().to_owned();
        server.spawn()?;
        Ok(server)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .arg("--config")
            .arg(&self.config)
            .env_remove("OTA_CONFIG")
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = self
            .command(&["serve"])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {} serve", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits (`seconds` at most) for `/readyz` to report `ready` (database, blobs,
    /// broker and, when configured, Kafka).
    pub async fn wait_ready(&mut self, http: &reqwest::Client, seconds: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "ota-server exited ({status}) before it was ready:\n{}",
                    self.log_tail()
                );
            }
            let ready = async {
                let body: Value = http
                    .get(format!("{}/readyz", self.url))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (body["broker"] == "ok").then_some(())
            };
            if ready.await.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "ota-server not ready (broker ok) within {seconds} s:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 60)
    }

    /// SIGKILL: no shutdown path runs, as in a power cut or an OOM kill.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "KILL");
            let _ = child.wait();
        }
    }

    /// Starts `serve` again with the same configuration (after [`ServerProcess::kill`]).
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the server is still running");
        }
        self.spawn()
    }

    pub fn stop(&mut self) -> StopOutcome {
        match self.child.take() {
            Some(mut child) => terminate(&mut child),
            None => StopOutcome::AlreadyStopped,
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failing test shows what the server said before its files are removed.
            eprintln!(
                "ota-server log ({}):\n{}",
                self.log.display(),
                self.log_tail()
            );
        }
        if self.child.is_some() {
            eprintln!("stopping ota-server: {}", self.stop());
        }
    }
}

/// A throwaway PostgreSQL database, dropped at the end (also when a run is interrupted
/// or a test panics).
#[derive(Debug)]
pub struct Database {
    admin_url: String,
    name: String,
    pub url: String,
    dropped: AtomicBool,
}

impl Database {
    /// Creates `<prefix>_<n>` on the server at `base` (`postgres://user@host:port`).
    pub async fn create(base: &str, prefix: &str) -> Result<Database> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = base.trim_end_matches('/');
        let name = format!("{prefix}_{}", COUNTER.fetch_add(1, Ordering::Relaxed))
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            .to_ascii_lowercase();
        let admin_url = format!("{base}/postgres");
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
            .await
            .with_context(|| format!("connecting to {admin_url}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .context("creating a throwaway database")?;
        Ok(Database {
            url: format!("{base}/{name}"),
            admin_url,
            name,
            dropped: AtomicBool::new(false),
        })
    }

    pub async fn drop_now(&self) {
        if self.dropped.swap(true, Ordering::SeqCst) {
            return;
        }
        let result = async {
            let mut conn =
                <sqlx::PgConnection as sqlx::Connection>::connect(&self.admin_url).await?;
            sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await?;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        if let Err(err) = result {
            eprintln!("warning: dropping database {}: {err}", self.name);
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if self.dropped.load(Ordering::SeqCst) {
            return;
        }
        // Dropped without `drop_now` (an error, a panic or Ctrl-C), maybe inside a
        // runtime: drop it from a thread with its own.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            let database = Database {
                admin_url,
                name,
                url: String::new(),
                dropped: AtomicBool::new(false),
            };
            runtime.block_on(database.drop_now());
            database.dropped.store(true, Ordering::SeqCst);
            Some(())
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: could not drop database {}", self.name);
        }
    }
}

/// A broker process owned by one test, on its own loopback port, that the test may
/// pause (SIGSTOP), resume or restart.
#[derive(Debug)]
pub struct BrokerProcess {
    what: &'static str,
    program: PathBuf,
    args: Vec<String>,
    pub port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl BrokerProcess {
    /// Mosquitto on `127.0.0.1:<free port>`, anonymous, persisting its sessions and
    /// queued messages in `dir` when it stops cleanly, and only then (`autosave_interval
    /// 0`): a SIGKILL loses everything it held.
    pub fn mosquitto(dir: &Path) -> Result<BrokerProcess> {
        let program = which("mosquitto", &["/usr/sbin/mosquitto"])
            .context("mosquitto is not installed (deploy/services.sh installs it)")?;
        let port = free_port();
        let config = dir.join("mosquitto.conf");
        // Started as root, mosquitto drops to the `mosquitto` user, which cannot write
        // its persistence file in a test's private directory: it would lose every session
        // on a restart. It keeps the user that owns the directory instead.
        let stay = if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir)?) == 0 {
            "user root\n"
        } else {
            ""
        };
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nautosave_interval 0\nmax_queued_messages 100000\n{stay}",
                dir.display()
            ),
        )?;
        BrokerProcess::start(
            "mosquitto",
            program,
            vec!["-c".to_owned(), config.display().to_string()],
            port,
            dir.join("mosquitto.log"),
        )
    }

    /// The `tansu` Kafka-protocol broker on `127.0.0.1:<free port>`, in memory.
    pub fn tansu(dir: &Path) -> Result<BrokerProcess> {
        let home = std::env::var("HOME").unwrap_or_default();
        let program = which("tansu", &[&format!("{home}/.cargo/bin/tansu")])
            .context("tansu is not installed (deploy/services.sh installs it)")?;
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        BrokerProcess::start(
            "tansu",
            program,
            vec![
                "broker".to_owned(),
                "--listener-url".to_owned(),
                url.clone(),
                "--advertised-listener-url".to_owned(),
                url,
                "--storage-engine".to_owned(),
                "memory://tansu/".to_owned(),
            ],
            port,
            dir.join("tansu.log"),
        )
    }

    fn start(
        what: &'static str,
        program: PathBuf,
        args: Vec<String>,
        port: u16,
        log: PathBuf,
    ) -> Result<BrokerProcess> {
        let mut broker = BrokerProcess {
            what,
            program,
            args,
            port,
            log,
            child: None,
        };
        broker.spawn()?;
        Ok(broker)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on 127.0.0.1:{} within 30 s:\n{}",
                    self.what,
                    self.port,
                    tail(&self.log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGSTOP: the process keeps its sockets and state but answers nothing, as a
    /// broker behind a network partition.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            signal(child.id(), "STOP");
        }
    }

    /// SIGCONT after [`BrokerProcess::pause`].
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            signal(child.id(), "CONT");
        }
    }

    /// Stops the process with `how` (`TERM` for a clean restart, `KILL` for a crash)
    /// and starts a new one on the same port.
    pub fn restart(&mut self, how: &str) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), how);
            let _ = child.wait();
        }
        self.spawn()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused process ignores SIGTERM until continued.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `name` on `PATH`, or the first of `fallbacks` that exists.
fn which(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|path| path.is_file())
}
