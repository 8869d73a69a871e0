//! The thin async driver around the pure state machine ([`crate::machine`]).
//!
//! One loop: an event comes in (MQTT directive or control, a timer, a finished download,
//! install or health check), [`step`] decides, and the driver
//! 1. signs the progress events the step produced and queues them in the outbox
//!    (durably), so none is lost whatever happens next;
//! 2. journals the new state atomically (the crash hook fires here);
//! 3. runs the actions: timers, downloads and installs as tasks that report back as
//!    events, bootloader calls inline.
//!
//! Directives and control messages are verified before the machine sees them: directives
//! through [`DirectiveVerifier`] with the agent's own vehicle identity, control messages
//! with the trusted root's director keys. The outbox drains in order whenever the broker
//! is connected; an event leaves it only after the broker acknowledged it.

use crate::directive::{DirectiveVerifier, MetadataSource, MAX_METADATA_BYTES};
use crate::fetch::{fetch_small, fetch_to_file, FetchError, FetchLimits, HttpTransport, Transport};
use crate::identity::{request_credential, sign_envelope, DeviceSigner};
use crate::install::{install_delta, install_full, slot_digest, Expected};
use crate::journal::{CrashHook, Journal};
use crate::machine::{
    step, Action, AgentState, BootView, Event, Payload, PayloadKind, Report, SlotName,
};
use crate::mqtt::{random_unit, LinkEvent, MqttLink};
use crate::reporter::{EventKind, Outbox};
use crate::slots::{Bootloader, SlotPaths};
use ota_core::encoding::Sha256Digest;
use ota_core::metadata::{Preconditions, Role};
use ota_core::protocol::{
    open_message, Channel, CheckIn, ControlMessage, EcuReport, ProgressEvent, PAYLOAD_TYPE_CHECKIN,
    PAYLOAD_TYPE_CONTROL, PAYLOAD_TYPE_PROGRESS,
};
use ota_core::time::Timestamp;
use rumqttc::QoS;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Publishes of the outbox in flight at once.
const OUTBOX_WINDOW: usize = 32;
/// Ids of check-in publishes (never in the outbox) start here.
const CHECKIN_ID_BASE: u64 = 1 << 62;
/// Longest wait at shutdown for in-flight progress events to be acknowledged.
pub const SHUTDOWN_SETTLE: Duration = Duration::from_secs(5);
/// Check-in interval before the server named one.
pub const DEFAULT_POLL_SECONDS: u32 = 60;
/// Control messages older or newer than this (against our clock) are refused as replays.
pub const CONTROL_WINDOW_SECONDS: i64 = 300;

/// How the vehicle decides it is healthy after booting a new slot.
#[derive(Debug, Clone)]
pub enum HealthCheck {
    /// No check configured: booting is enough.
    BootIsEnough,
    /// Run a command; exit 0 within the timeout means healthy.
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
}

/// Failure injection for the fleet simulator and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    pub fail_download: bool,
    pub fail_install: bool,
    pub unhealthy: bool,
    /// Inject only into updates to this image version (a bad release); `None`: every one.
    pub only_version: Option<String>,
}

impl Faults {
    /// Whether injected faults hit an update to `version`.
    pub fn hit(&self, version: Option<&str>) -> bool {
        match &self.only_version {
            None => true,
            Some(bad) => version == Some(bad.as_str()),
        }
    }
}

/// The factory image in the active slot when the agent first starts.
#[derive(Debug, Clone)]
pub struct FactoryImage {
    pub version: String,
    pub length: u64,
}

/// Why the driver stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// Shutdown requested.
    Stopped,
    /// The crash hook fired after journaling this step.
    Crashed { step: String },
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("journal: {0}")]
    Journal(#[from] crate::journal::JournalError),
    #[error("bootloader: {0}")]
    Bootloader(#[from] crate::slots::SlotError),
    #[error("progress outbox: {0}")]
    Outbox(#[from] crate::reporter::OutboxError),
    #[error("trust store: {0}")]
    TrustStore(#[from] crate::trust_store::TrustStoreError),
    #[error("device key: {0}")]
    Sign(#[from] crate::identity::SignError),
    #[error("reading the factory image from slot {slot}: {reason}")]
    Factory { slot: String, reason: String },
    #[error("MQTT: {0}")]
    Mqtt(#[from] crate::mqtt::MqttError),
}

/// Everything the driver needs, built by `cli::run` from the config file or by the
/// simulator.
#[derive(Debug)]
pub struct AgentParts<T: Transport + 'static> {
    pub vehicle_id: String,
    pub ecu: String,
    pub hardware_id: String,
    pub signer: Arc<dyn DeviceSigner>,
    pub directives: DirectiveVerifier,
    pub transport: Arc<T>,
    pub bootloader: Arc<dyn Bootloader>,
    /// The bootloader's `reboot` only emulates one and returns (file bootloader).
    pub simulated_reboot: bool,
    /// Boots a new slot gets before the counter falls back.
    pub boot_tries: u32,
    pub slots: SlotPaths,
    pub state_dir: PathBuf,
    pub outbox: Outbox,
    pub health: HealthCheck,
    pub vehicle_state: Option<PathBuf>,
    pub limits: FetchLimits,
    pub crash: CrashHook,
    pub faults: Faults,
    pub factory: Option<FactoryImage>,
    pub mqtt_url: String,
}

/// A vehicle's HTTP transport to `server_url`: every request carries a fresh request
/// credential signed by the device key over its method and target.
pub fn vehicle_transport(
    server_url: &str,
    vehicle_id: &str,
    signer: Arc<dyn DeviceSigner>,
) -> Result<HttpTransport, FetchError> {
    let vehicle_id = vehicle_id.to_owned();
    HttpTransport::new(
        server_url,
        Some(Arc::new(move |method: &str, target: &str| {
            request_credential(
                &vehicle_id,
                chrono::Utc::now().timestamp(),
                method,
                target,
                signer.as_ref(),
            )
            .map_err(FetchError::credential)
        })),
    )
}

/// Metadata over the agent's HTTP transport (the server's vehicle routes).
#[derive(Debug)]
pub struct TransportMetadata<T: Transport>(pub Arc<T>);

impl<T: Transport> MetadataSource for TransportMetadata<T> {
    async fn targets(&self) -> Result<Vec<u8>, String> {
        fetch_small(&*self.0, "/v1/metadata/targets.json", MAX_METADATA_BYTES)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the server has no targets metadata".to_owned())
    }

    async fn root(&self, version: u64) -> Result<Option<Vec<u8>>, String> {
        fetch_small(
            &*self.0,
            &format!("/v1/metadata/root/{version}.json"),
            MAX_METADATA_BYTES,
        )
        .await
        .map_err(|e| e.to_string())
    }
}

/// Aborts the tasks it holds when dropped (a stop or a simulated crash).
#[derive(Debug, Default)]
struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    fn spawn(&mut self, task: JoinHandle<()>) {
        self.0.retain(|t| !t.is_finished());
        self.0.push(task);
    }
    fn abort_all(&mut self) {
        for task in self.0.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.abort_all();
    }
}

fn now() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now())
}

/// The next check-in after `seconds`, with ±10% jitter so a fleet spreads out.
fn jittered(seconds: u32) -> Duration {
    let base = f64::from(seconds.max(1));
    Duration::from_secs_f64(base * (0.9 + 0.2 * random_unit()))
}

fn download_path(state_dir: &Path, payload: &Payload) -> PathBuf {
    state_dir
        .join("downloads")
        .join(format!("{}.part", payload.sha256.to_hex()))
}

struct Driver<T: Transport + 'static> {
    parts: AgentParts<T>,
    metadata: TransportMetadata<T>,
    journal: Journal,
    state: AgentState,
    link: MqttLink,
    connected: bool,
    events_tx: mpsc::UnboundedSender<Event>,
    download: Tasks,
    background: Tasks,
    next_checkin: Instant,
    precondition_check: Option<(Instant, Preconditions)>,
    /// Outbox ids published and not yet acknowledged, oldest first.
    sent: VecDeque<(u64, bool)>,
    checkins_sent: u64,
    /// The server's last `next_poll_seconds`: the next check-in is due after it even
    /// when a directive never comes back.
    poll_seconds: u32,
    halted: bool,
}

/// Runs the agent until `shutdown` resolves or the crash hook fires.
pub async fn run<T: Transport + 'static>(
    parts: AgentParts<T>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<RunOutcome, RunError> {
    let journal = Journal::new(&parts.state_dir);
    std::fs::create_dir_all(parts.state_dir.join("downloads")).map_err(|e| RunError::Factory {
        slot: "-".to_owned(),
        reason: format!("creating {}: {e}", parts.state_dir.display()),
    })?;
    let boot = parts.bootloader.read()?;
    let state = match journal.load()? {
        Some(state) => state,
        None => factory_state(&parts, boot.active)?,
    };
    let (link, mut link_rx) = MqttLink::start(&parts.mqtt_url, &parts.vehicle_id)?;
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let metadata = TransportMetadata(parts.transport.clone());
    let mut driver = Driver {
        parts,
        metadata,
        journal,
        state,
        link,
        connected: false,
        events_tx,
        download: Tasks::default(),
        background: Tasks::default(),
        next_checkin: Instant::now() + Duration::from_secs(3600),
        precondition_check: None,
        sent: VecDeque::new(),
        checkins_sent: 0,
        poll_seconds: DEFAULT_POLL_SECONDS,
        halted: false,
    };
    let started = Event::Started {
        boot: BootView {
            booted: boot.booted,
            active: boot.active,
            trying: boot.trying,
        },
    };
    if let Some(outcome) = driver.process(started).await? {
        return Ok(outcome);
    }
    tokio::pin!(shutdown);
    loop {
        let precondition_at = driver.precondition_check.as_ref().map(|(at, _)| *at);
        let outcome = tokio::select! {
            _ = &mut shutdown => {
                driver.settle(&mut link_rx).await?;
                driver.link.disconnect().await;
                return Ok(RunOutcome::Stopped);
            }
            Some(link_event) = link_rx.recv() => driver.on_link(link_event).await?,
            Some(event) = events_rx.recv() => driver.process(event).await?,
            _ = tokio::time::sleep_until(driver.next_checkin), if !driver.halted => {
                driver.next_checkin = Instant::now() + Duration::from_secs(3600);
                driver.process(Event::CheckInDue).await?
            }
            _ = tokio::time::sleep_until(precondition_at.unwrap_or_else(Instant::now)), if precondition_at.is_some() => {
                let required = driver.precondition_check.take().map(|(_, p)| p).unwrap_or_default();
                let result = crate::preconditions::evaluate(&required, driver.parts.vehicle_state.as_deref());
                driver.process(Event::Preconditions(result)).await?
            }
        };
        if let Some(outcome) = outcome {
            return Ok(outcome);
        }
        driver.drain_outbox().await;
    }
}

fn factory_state<T: Transport>(
    parts: &AgentParts<T>,
    active: SlotName,
) -> Result<AgentState, RunError> {
    let image = match &parts.factory {
        None => None,
        Some(factory) => {
            let path = parts.slots.path(active);
            let sha256 = slot_digest(path, factory.length).map_err(|e| RunError::Factory {
                slot: path.display().to_string(),
                reason: e.to_string(),
            })?;
            Some(ota_core::protocol::InstalledImage {
                version: factory.version.clone(),
                sha256,
                length: factory.length,
            })
        }
    };
    Ok(AgentState::factory(active, image))
}

impl<T: Transport + 'static> Driver<T> {
    async fn on_link(&mut self, event: LinkEvent) -> Result<Option<RunOutcome>, RunError> {
        match event {
            LinkEvent::Connected => {
                self.connected = true;
                // Whatever was in flight before is sent again (the server applies each
                // sequence once), and a fresh check-in tells the server where we are.
                self.sent.clear();
                self.drain_outbox().await;
                return self.process(Event::CheckInDue).await;
            }
            LinkEvent::Disconnected { reason } => {
                if self.connected {
                    eprintln!(
                        "ota-agent {}: broker connection lost: {reason}",
                        self.parts.vehicle_id
                    );
                }
                self.connected = false;
            }
            LinkEvent::Delivered(id) => {
                if let Some(entry) = self.sent.iter_mut().find(|(sent, _)| *sent == id) {
                    entry.1 = true;
                }
                while self.sent.front().is_some_and(|(_, done)| *done) {
                    if let Some((id, _)) = self.sent.pop_front() {
                        self.parts.outbox.ack(id)?;
                    }
                }
            }
            LinkEvent::Directive(bytes) => {
                match self
                    .parts
                    .directives
                    .verify(&self.metadata, &bytes, now())
                    .await
                {
                    Ok(verified) => {
                        return self
                            .process(Event::Directive {
                                assignment: verified.assignment,
                                next_poll_seconds: verified.next_poll_seconds,
                            })
                            .await;
                    }
                    // Older than the director already accepted: superseded (two check-ins
                    // answered out of order, or a replay). Refused, and nothing changes.
                    Err(err) if err.kind() == "rollback" => {}
                    Err(err) => {
                        eprintln!(
                            "ota-agent {}: directive refused ({}): {err}",
                            self.parts.vehicle_id,
                            err.kind()
                        );
                        // A fetch failure is usually passing (a busy server): check in again
                        // soon. A refused directive waits longer rather than hammering.
                        let retry = if err.kind() == "fetch" { 5 } else { 60 };
                        self.next_checkin = Instant::now() + jittered(retry);
                    }
                }
            }
            LinkEvent::Control(bytes) => match self.verify_control(&bytes) {
                Ok(control) => {
                    return self
                        .process(Event::Control {
                            command: control.command,
                            deployment_id: control.deployment_id,
                        })
                        .await;
                }
                Err(reason) => eprintln!(
                    "ota-agent {}: control message refused: {reason}",
                    self.parts.vehicle_id
                ),
            },
        }
        Ok(None)
    }

    /// On shutdown: waits (at most [`SHUTDOWN_SETTLE`]) for the broker to acknowledge
    /// the progress events in flight, so they leave the outbox now rather than being
    /// sent again at the next start.
    async fn settle(
        &mut self,
        link_rx: &mut mpsc::UnboundedReceiver<LinkEvent>,
    ) -> Result<(), RunError> {
        let deadline = Instant::now() + SHUTDOWN_SETTLE;
        while self.connected && !self.sent.is_empty() {
            match tokio::time::timeout_at(deadline, link_rx.recv()).await {
                Ok(Some(event @ (LinkEvent::Delivered(_) | LinkEvent::Disconnected { .. }))) => {
                    self.on_link(event).await?;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        Ok(())
    }

    /// A control message must be signed by a director key of the trusted root, name this
    /// vehicle and be recent.
    fn verify_control(&self, bytes: &[u8]) -> Result<ControlMessage, String> {
        let state = self
            .parts
            .directives
            .store()
            .load()
            .map_err(|e| e.to_string())?;
        let root = state.root();
        let role = root.role_keys(Role::Director);
        let mut last_error = "no director key in the trusted root".to_owned();
        for keyid in &role.keyids {
            let Some(key) = root.keys.get(keyid) else {
                continue;
            };
            match open_message::<ControlMessage>(bytes, PAYLOAD_TYPE_CONTROL, key) {
                Ok(control) => {
                    if control.vehicle_id != self.parts.vehicle_id {
                        return Err(format!("addressed to {:?}", control.vehicle_id));
                    }
                    let age = now().unix_seconds() - control.issued_at.unix_seconds();
                    if age.abs() > CONTROL_WINDOW_SECONDS {
                        return Err(format!("issued {age} s from now: replayed or stale"));
                    }
                    return Ok(control);
                }
                Err(err) => last_error = err.to_string(),
            }
        }
        Err(last_error)
    }

    /// Runs `event` and everything it causes inline; `Some` when the crash hook fired.
    async fn process(&mut self, event: Event) -> Result<Option<RunOutcome>, RunError> {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            if self.halted {
                break;
            }
            let (next, actions) = step(&self.state, event, now());
            // 1. Progress first, durably: a crash after this re-runs the step with the
            //    same sequence numbers, which the server applies once.
            for action in &actions {
                if let Action::Report(report) = action {
                    self.queue_report(report)?;
                }
            }
            // 2. The new state.
            let changed = next != self.state;
            if changed {
                self.journal.save(&next)?;
            }
            let crossed = next.phase.step_name() != self.state.phase.step_name();
            self.state = next;
            if changed && crossed && self.parts.crash.fires_at(self.state.phase.step_name()) {
                self.download.abort_all();
                self.background.abort_all();
                return Ok(Some(RunOutcome::Crashed {
                    step: self.state.phase.step_name().to_owned(),
                }));
            }
            // 3. The actions.
            for action in actions {
                self.execute(action, &mut queue).await?;
            }
        }
        Ok(None)
    }

    fn queue_report(&mut self, report: &Report) -> Result<(), RunError> {
        let event = ProgressEvent {
            vehicle_id: self.parts.vehicle_id.clone(),
            deployment_id: report.deployment_id.clone(),
            sequence: report.sequence,
            phase: report.phase,
            bytes_done: report.bytes_done,
            bytes_total: report.bytes_total,
            reason_code: report.reason_code.clone(),
            at: report.at,
        };
        let payload = serde_json::to_vec(&event).unwrap_or_default();
        let bytes = sign_envelope(PAYLOAD_TYPE_PROGRESS, payload, self.parts.signer.as_ref())?;
        let kind = if report.transition {
            EventKind::Transition
        } else {
            EventKind::ByteCount
        };
        self.parts.outbox.push(kind, bytes)?;
        Ok(())
    }

    async fn execute(
        &mut self,
        action: Action,
        queue: &mut VecDeque<Event>,
    ) -> Result<(), RunError> {
        match action {
            Action::Report(_) => {}
            Action::CheckIn => self.send_checkin().await?,
            Action::ScheduleCheckIn { after_seconds } => {
                self.poll_seconds = after_seconds.max(1);
                self.next_checkin = Instant::now() + jittered(after_seconds);
            }
            Action::CheckPreconditions {
                preconditions,
                after_seconds,
            } => {
                self.precondition_check = Some((
                    Instant::now() + Duration::from_secs(u64::from(after_seconds)),
                    preconditions,
                ));
            }
            Action::Download {
                payload,
                after_seconds,
            } => self.start_download(payload, after_seconds),
            Action::StopDownload => self.download.abort_all(),
            Action::DiscardDownloads => {
                self.download.abort_all();
                let dir = self.parts.state_dir.join("downloads");
                if let Ok(entries) = std::fs::read_dir(&dir) {
                    for entry in entries.flatten() {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
            Action::Install {
                payload,
                from,
                to,
                length,
                sha256,
                base,
            } => self.start_install(payload, from, to, length, sha256, base),
            Action::ArmTry { slot, tries } => match self.parts.bootloader.arm_try(
                slot,
                if self.parts.boot_tries > 0 {
                    self.parts.boot_tries
                } else {
                    tries
                },
            ) {
                Ok(()) => queue.push_back(Event::Armed),
                Err(err) => queue.push_back(Event::ActionFailed {
                    reason: format!("arming slot {}: {err}", slot.as_str()),
                }),
            },
            Action::Reboot => self.reboot(queue)?,
            Action::RunHealthCheck => self.start_health_check(),
            Action::Commit {
                slot,
                security_version,
            } => {
                let result = self
                    .parts
                    .bootloader
                    .confirm(slot)
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        self.parts
                            .directives
                            .raise_security_floor(&self.parts.hardware_id, security_version)
                            .map_err(|e| e.to_string())
                    });
                match result {
                    Ok(()) => queue.push_back(Event::Committed),
                    Err(reason) => queue.push_back(Event::ActionFailed {
                        reason: format!("committing slot {}: {reason}", slot.as_str()),
                    }),
                }
            }
            Action::AbandonAndReboot => {
                self.parts.bootloader.abandon()?;
                self.reboot(queue)?;
            }
            Action::ActivateAndReboot { slot } => {
                self.parts.bootloader.set_active(slot)?;
                self.reboot(queue)?;
            }
        }
        Ok(())
    }

    /// Reboots. With the file bootloader the firmware's choice is emulated at once and
    /// the agent carries on as if it had just started; on a real board the system goes
    /// down and the agent waits for it.
    fn reboot(&mut self, queue: &mut VecDeque<Event>) -> Result<(), RunError> {
        self.download.abort_all();
        self.background.abort_all();
        self.parts.bootloader.reboot()?;
        if self.parts.simulated_reboot {
            let boot = self.parts.bootloader.read()?;
            queue.push_back(Event::Started {
                boot: BootView {
                    booted: boot.booted,
                    active: boot.active,
                    trying: boot.trying,
                },
            });
        } else {
            self.halted = true;
        }
        Ok(())
    }

    async fn send_checkin(&mut self) -> Result<(), RunError> {
        // Until a directive says otherwise: a lost check-in or directive only delays the
        // next one by one interval.
        self.next_checkin = Instant::now() + jittered(self.poll_seconds);
        if !self.connected {
            return Ok(());
        }
        let trusted = self.parts.directives.trusted_versions()?;
        let mut nonce = [0u8; 16];
        let _ = getrandom::getrandom(&mut nonce);
        let checkin = CheckIn {
            vehicle_id: self.parts.vehicle_id.clone(),
            nonce: hex::encode(nonce),
            sent_at: now(),
            ecus: vec![EcuReport {
                ecu: self.parts.ecu.clone(),
                hardware_id: self.parts.hardware_id.clone(),
                installed: self.state.installed().clone(),
                active_slot: self.state.active.as_str().to_owned(),
            }],
            agent_state: self.state.phase.name(),
            trusted,
        };
        let payload = serde_json::to_vec(&checkin).unwrap_or_default();
        let bytes = sign_envelope(PAYLOAD_TYPE_CHECKIN, payload, self.parts.signer.as_ref())?;
        self.checkins_sent += 1;
        let _ = self
            .link
            .publish(
                Channel::CheckIn,
                QoS::AtLeastOnce,
                CHECKIN_ID_BASE + self.checkins_sent,
                bytes,
            )
            .await;
        Ok(())
    }

    /// Publishes outbox events, oldest first, up to the window.
    async fn drain_outbox(&mut self) {
        if !self.connected || self.sent.len() >= OUTBOX_WINDOW {
            return;
        }
        let pending = self.parts.outbox.peek(OUTBOX_WINDOW + self.sent.len());
        for event in pending {
            if self.sent.len() >= OUTBOX_WINDOW {
                break;
            }
            if self.sent.iter().any(|(id, _)| *id == event.id) {
                continue;
            }
            let qos = match event.kind {
                EventKind::Transition => QoS::AtLeastOnce,
                EventKind::ByteCount => QoS::AtMostOnce,
            };
            self.sent.push_back((event.id, false));
            if self
                .link
                .publish(Channel::Progress, qos, event.id, event.bytes)
                .await
                .is_err()
            {
                self.sent.pop_back();
                return;
            }
        }
    }

    /// Whether injected faults apply to the update in progress.
    fn faults_hit(&self) -> bool {
        let version = self
            .state
            .deployment
            .as_ref()
            .map(|d| d.target.version.as_str());
        self.parts.faults.hit(version)
    }

    fn start_download(&mut self, payload: Payload, after_seconds: u32) {
        let tx = self.events_tx.clone();
        if self.parts.faults.fail_download && self.faults_hit() {
            let _ = tx.send(Event::DownloadFailed {
                reason: "injected_fault".to_owned(),
                retryable: false,
            });
            return;
        }
        let transport = self.parts.transport.clone();
        let limits = self.parts.limits.clone();
        let dest = download_path(&self.parts.state_dir, &payload);
        self.download.abort_all();
        self.download.spawn(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(u64::from(after_seconds))).await;
            let expected = crate::fetch::Expected {
                length: payload.length,
                sha256: payload.sha256,
            };
            let progress_tx = tx.clone();
            let result = fetch_to_file(
                &*transport,
                &payload.url,
                &expected,
                &dest,
                &limits,
                move |bytes_done| {
                    let _ = progress_tx.send(Event::DownloadProgress { bytes_done });
                },
            )
            .await;
            let event = match result {
                Ok(()) => Event::DownloadFinished,
                Err(err) => Event::DownloadFailed {
                    retryable: err.is_retryable(),
                    reason: err.to_string(),
                },
            };
            let _ = tx.send(event);
        }));
    }

    fn start_install(
        &mut self,
        payload: Payload,
        from: SlotName,
        to: SlotName,
        length: u64,
        sha256: Sha256Digest,
        base: Option<Sha256Digest>,
    ) {
        let tx = self.events_tx.clone();
        if self.parts.faults.fail_install && self.faults_hit() {
            let _ = tx.send(Event::InstallFailed {
                reason: "injected_fault".to_owned(),
            });
            return;
        }
        let source = download_path(&self.parts.state_dir, &payload);
        let from_path = self.parts.slots.path(from).to_owned();
        let to_path = self.parts.slots.path(to).to_owned();
        self.background.spawn(tokio::spawn(async move {
            let result = tokio::task::spawn_blocking(move || {
                let expected = Expected { length, sha256 };
                let file = std::fs::File::open(&source)
                    .map_err(|e| format!("opening {}: {e}", source.display()))?;
                let reader = std::io::BufReader::with_capacity(256 << 10, file);
                match payload.kind {
                    PayloadKind::Full => install_full(reader, &to_path, &expected),
                    PayloadKind::Delta => {
                        install_delta(reader, &from_path, &to_path, &expected, base.as_ref())
                    }
                }
                .map(|_| ())
                .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(format!("install task: {e}")));
            let _ = tx.send(match result {
                Ok(()) => Event::InstallFinished,
                Err(reason) => Event::InstallFailed { reason },
            });
        }));
    }

    fn start_health_check(&mut self) {
        let tx = self.events_tx.clone();
        if self.parts.faults.unhealthy && self.faults_hit() {
            let _ = tx.send(Event::HealthFailed {
                reason: "injected_fault".to_owned(),
            });
            return;
        }
        let health = self.parts.health.clone();
        self.background.spawn(tokio::spawn(async move {
            let event = match health {
                HealthCheck::BootIsEnough => Event::HealthPassed,
                HealthCheck::Command { argv, timeout } => run_health_command(&argv, timeout).await,
            };
            let _ = tx.send(event);
        }));
    }
}

async fn run_health_command(argv: &[String], timeout: Duration) -> Event {
    let Some((program, args)) = argv.split_first() else {
        return Event::HealthPassed;
    };
    let mut command = tokio::process::Command::new(program);
    command.args(args).kill_on_drop(true);
    match tokio::time::timeout(timeout, command.status()).await {
        Ok(Ok(status)) if status.success() => Event::HealthPassed,
        Ok(Ok(status)) => Event::HealthFailed {
            reason: format!("exit_{}", status.code().unwrap_or(-1)),
        },
        Ok(Err(err)) => Event::HealthFailed {
            reason: format!("spawn:{}", err.kind()),
        },
        Err(_) => Event::HealthFailed {
            reason: "timeout".to_owned(),
        },
    }
}
