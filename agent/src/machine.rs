//! The agent's state machine, pure: `step(state, event, now) -> (state, actions)`.
//!
//! No IO, no clock, no randomness: the driver (`run`) feeds events in (a verified
//! directive, a finished download, the slot the system booted from, ...) and executes
//! the actions that come out (download, install, arm the boot counter, reboot, report).
//! The driver journals every new state atomically before it runs the actions, so a power
//! cut at any instant restarts from a journaled state, and [`Event::Started`] decides
//! from that state and the bootloader's view whether to resume, finish or fall back.
//!
//! One deployment is handled at a time, for the ECU this agent drives:
//!
//! ```text
//! idle → (directive verified) → waiting (preconditions) → downloading → installing
//!      → installed → rebooting → health_check → committing → idle (committed)
//!   failed / cancelled → idle        health fails or new slot never confirms → rolling_back → idle
//! ```

use ota_core::encoding::Sha256Digest;
use ota_core::metadata::Preconditions;
use ota_core::protocol::{ControlCommand, InstalledImage, ProgressPhase};
use ota_core::time::Timestamp;
use serde::{Deserialize, Serialize};

pub use crate::slots::SlotName;

/// Download attempts before a deployment fails (each retryable error counts one).
pub const MAX_DOWNLOAD_ATTEMPTS: u32 = 5;
/// Boots a new slot gets before the boot counter falls back to the active slot.
pub const DEFAULT_BOOT_TRIES: u32 = 3;
/// Least seconds between two byte-count progress updates of one deployment.
pub const BYTE_REPORT_INTERVAL_SECONDS: i64 = 2;
/// Terminal deployments remembered (to ignore a directive the server resends before it
/// processed our final event, and to keep sequences growing on a retry).
const FINISHED_MEMORY: usize = 16;
/// Seconds between precondition checks while waiting.
pub const PRECONDITION_RECHECK_SECONDS: u32 = 10;

/// What one slot holds, as far as the agent verified it.
pub type SlotImage = Option<InstalledImage>;

/// The image a verified assignment asks for (director assignment matched with targets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub deployment_id: String,
    pub name: String,
    pub version: String,
    pub length: u64,
    pub sha256: Sha256Digest,
    pub security_version: u64,
    pub image_url: String,
    pub delta: Option<DeltaSource>,
    #[serde(default)]
    pub preconditions: Preconditions,
}

/// A delta offered by the director.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaSource {
    pub source_sha256: Sha256Digest,
    pub source_length: u64,
    pub length: u64,
    pub sha256: Sha256Digest,
    pub url: String,
}

/// What is downloaded: the delta (its source is the active slot) or the full image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadKind {
    Full,
    Delta,
}

/// The bytes to download for a deployment, and what they must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub kind: PayloadKind,
    pub url: String,
    pub length: u64,
    pub sha256: Sha256Digest,
}

/// The deployment in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub target: Target,
    pub payload: Payload,
    /// The committed slot the update starts from (and falls back to).
    pub from: SlotName,
    /// The inactive slot being written.
    pub to: SlotName,
    pub next_sequence: u64,
    pub download_attempts: u32,
    pub bytes_done: u64,
    /// Unix seconds of the last byte-count report (rate limit).
    pub last_byte_report: i64,
}

/// Where the agent is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    Idle,
    /// A deployment waits for its preconditions (`unmet` names the first one not met).
    Waiting {
        unmet: String,
    },
    Downloading,
    Installing,
    Installed,
    /// The try slot is armed; the reboot is due (or happened and the agent restarted).
    Rebooting,
    HealthCheck,
    /// Health passed; confirming the slot and raising the security floor.
    Committing,
    /// Falling back to `from` after a failed health check or a server rollback of an
    /// uncommitted install.
    RollingBack {
        reason: String,
    },
    /// Server-driven rollback of a committed update: switching back to `to`.
    SwitchingBack {
        to: SlotName,
        deployment_id: Option<String>,
    },
}

impl Phase {
    /// The name reported in check-ins (`agent_state`).
    pub fn name(&self) -> String {
        match self {
            Phase::Waiting { unmet } => format!("waiting:{unmet}"),
            other => other.step_name().to_owned(),
        }
    }

    /// The step name the crash hook matches (`OTA_AGENT_CRASH_AT`).
    pub fn step_name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Waiting { .. } => "waiting",
            Phase::Downloading => "downloading",
            Phase::Installing => "installing",
            Phase::Installed => "installed",
            Phase::Rebooting => "rebooting",
            Phase::HealthCheck => "health_check",
            Phase::Committing => "committing",
            Phase::RollingBack { .. } => "rolling_back",
            Phase::SwitchingBack { .. } => "switching_back",
        }
    }

    /// Installing has started: `cancel` no longer applies.
    fn has_touched_slot(&self) -> bool {
        !matches!(
            self,
            Phase::Idle | Phase::Waiting { .. } | Phase::Downloading
        )
    }
}

/// A deployment that ended, remembered briefly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    pub deployment_id: String,
    pub outcome: ProgressPhase,
    pub next_sequence: u64,
    /// A directive without this deployment arrived since it ended: a later assignment
    /// of the same id is the server's retry, not a resend of the old one.
    pub absent_since: bool,
    /// What was downloaded for it (`None`: nothing, e.g. a server rollback).
    #[serde(default)]
    pub via: Option<PayloadKind>,
}

/// The journaled state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub format: u32,
    pub phase: Phase,
    /// The committed slot: what the firmware boots when no try is armed.
    pub active: SlotName,
    pub slot_a: SlotImage,
    pub slot_b: SlotImage,
    pub deployment: Option<Deployment>,
    pub finished: Vec<Finished>,
    /// The committed deployment the active slot came from (a server rollback names it).
    pub last_committed: Option<String>,
}

pub const STATE_FORMAT: u32 = 1;

impl AgentState {
    /// A vehicle fresh from the factory: `image` in slot `active`, nothing else.
    pub fn factory(active: SlotName, image: SlotImage) -> AgentState {
        let mut state = AgentState {
            format: STATE_FORMAT,
            phase: Phase::Idle,
            active,
            slot_a: None,
            slot_b: None,
            deployment: None,
            finished: Vec::new(),
            last_committed: None,
        };
        *state.slot_mut(active) = image;
        state
    }

    pub fn slot(&self, slot: SlotName) -> &SlotImage {
        match slot {
            SlotName::A => &self.slot_a,
            SlotName::B => &self.slot_b,
        }
    }

    fn slot_mut(&mut self, slot: SlotName) -> &mut SlotImage {
        match slot {
            SlotName::A => &mut self.slot_a,
            SlotName::B => &mut self.slot_b,
        }
    }

    /// The committed image (reported in check-ins).
    pub fn installed(&self) -> &SlotImage {
        self.slot(self.active)
    }
}

/// What the boot firmware says after a (re)start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootView {
    pub booted: SlotName,
    pub active: SlotName,
    pub trying: Option<SlotName>,
}

/// Something that happened.
// A directive's target is the large variant; events are built once and moved straight
// into `step`, so boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The agent (re)started, with the bootloader's view.
    Started {
        boot: BootView,
    },
    /// Time to check in.
    CheckInDue,
    /// A directive verified against the trust store; `assignment` is this ECU's, if any.
    Directive {
        assignment: Option<Target>,
        next_poll_seconds: u32,
    },
    /// Preconditions evaluated: `Err` names the first unmet one.
    Preconditions(Result<(), String>),
    DownloadProgress {
        bytes_done: u64,
    },
    DownloadFinished,
    DownloadFailed {
        reason: String,
        retryable: bool,
    },
    InstallFinished,
    InstallFailed {
        reason: String,
    },
    /// The try slot is armed in the bootloader.
    Armed,
    HealthPassed,
    HealthFailed {
        reason: String,
    },
    /// The slot is confirmed and the security floor raised.
    Committed,
    /// A verified control message.
    Control {
        command: ControlCommand,
        deployment_id: Option<String>,
    },
    /// A bootloader or install action failed in a way the agent cannot continue from.
    ActionFailed {
        reason: String,
    },
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a signed check-in now.
    CheckIn,
    /// Check in after this many seconds (the driver adds jitter).
    ScheduleCheckIn {
        after_seconds: u32,
    },
    /// Queue a signed progress event (durably, before the state is journaled).
    Report(Report),
    /// Evaluate `preconditions` after `after_seconds`.
    CheckPreconditions {
        preconditions: Preconditions,
        after_seconds: u32,
    },
    /// Download (or resume) the payload into the downloads directory.
    Download {
        payload: Payload,
        after_seconds: u32,
    },
    /// Stop a running download.
    StopDownload,
    /// Delete downloaded payloads.
    DiscardDownloads,
    /// Write the target image into slot `to` from the downloaded payload.
    Install {
        payload: Payload,
        from: SlotName,
        to: SlotName,
        length: u64,
        sha256: Sha256Digest,
        /// For a delta payload, the SHA-256 of the image it applies to, as the signed
        /// delta entry names it: the applier checks the source slot against it.
        base: Option<Sha256Digest>,
    },
    /// Arm a try of `slot` with the boot counter.
    ArmTry {
        slot: SlotName,
        tries: u32,
    },
    Reboot,
    RunHealthCheck,
    /// Confirm `slot` in the bootloader and raise the `security_version` floor.
    Commit {
        slot: SlotName,
        security_version: u64,
    },
    /// Clear the try and reboot into the committed slot.
    AbandonAndReboot,
    /// Make `slot` active again and reboot into it.
    ActivateAndReboot {
        slot: SlotName,
    },
}

/// A progress event to sign and send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub deployment_id: String,
    pub sequence: u64,
    pub phase: ProgressPhase,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub reason_code: Option<String>,
    pub at: Timestamp,
    /// A phase transition (QoS 1, never dropped) rather than a byte-count update.
    pub transition: bool,
}

/// Reason codes the agent sends with `failed` / `rolled_back`.
pub mod reason {
    pub const CANCELLED: &str = "cancelled";
    pub const SUPERSEDED: &str = "superseded";
    pub const DOWNLOAD_FAILED: &str = "download_failed";
    pub const INSTALL_FAILED: &str = "install_failed";
    pub const HEALTH_CHECK_FAILED: &str = "health_check_failed";
    pub const BOOT_FAILED: &str = "boot_failed";
    pub const SERVER_ROLLBACK: &str = "server_rollback";
    pub const AGENT_ERROR: &str = "agent_error";
}

struct Step {
    state: AgentState,
    actions: Vec<Action>,
    now: Timestamp,
}

impl Step {
    fn report(&mut self, phase: ProgressPhase, reason_code: Option<&str>) {
        self.report_kind(phase, reason_code, true);
    }

    fn report_kind(&mut self, phase: ProgressPhase, reason_code: Option<&str>, transition: bool) {
        let Some(d) = self.state.deployment.as_mut() else {
            return;
        };
        let sequence = d.next_sequence;
        d.next_sequence += 1;
        let bytes_total = d.payload.length;
        let bytes_done = match phase {
            ProgressPhase::Downloading => d.bytes_done,
            ProgressPhase::Failed | ProgressPhase::RolledBack => d.bytes_done,
            _ => bytes_total,
        };
        self.actions.push(Action::Report(Report {
            deployment_id: d.target.deployment_id.clone(),
            sequence,
            phase,
            bytes_done,
            bytes_total,
            reason_code: reason_code.map(str::to_owned),
            at: self.now,
            transition,
        }));
    }

    /// Ends the deployment with a terminal `outcome`, back to idle, and checks in so the
    /// server hears of the new state at once.
    fn finish(&mut self, outcome: ProgressPhase, reason_code: Option<&str>) {
        self.report(outcome, reason_code);
        if let Some(d) = self.state.deployment.take() {
            if outcome == ProgressPhase::Committed {
                self.state.last_committed = Some(d.target.deployment_id.clone());
            }
            remember(
                &mut self.state.finished,
                Finished {
                    deployment_id: d.target.deployment_id,
                    outcome,
                    next_sequence: d.next_sequence,
                    absent_since: false,
                    via: Some(d.payload.kind),
                },
            );
        }
        self.state.phase = Phase::Idle;
        self.actions.push(Action::DiscardDownloads);
        self.actions.push(Action::CheckIn);
    }

    fn download(&mut self, after_seconds: u32) {
        if let Some(d) = &self.state.deployment {
            self.actions.push(Action::Download {
                payload: d.payload.clone(),
                after_seconds,
            });
        }
    }

    fn install(&mut self) {
        if let Some(d) = &self.state.deployment {
            let base = match d.payload.kind {
                PayloadKind::Delta => d.target.delta.as_ref().map(|delta| delta.source_sha256),
                PayloadKind::Full => None,
            };
            self.actions.push(Action::Install {
                payload: d.payload.clone(),
                from: d.from,
                to: d.to,
                length: d.target.length,
                sha256: d.target.sha256,
                base,
            });
        }
    }

    fn check_preconditions(&mut self, after_seconds: u32) {
        if let Some(d) = &self.state.deployment {
            self.actions.push(Action::CheckPreconditions {
                preconditions: d.target.preconditions.clone(),
                after_seconds,
            });
        }
    }
}

fn remember(finished: &mut Vec<Finished>, entry: Finished) {
    finished.retain(|f| f.deployment_id != entry.deployment_id);
    finished.push(entry);
    if finished.len() > FINISHED_MEMORY {
        finished.remove(0);
    }
}

/// Backoff before download attempt `attempt` (1-based): 2, 4, 8, ... capped at 60 s.
pub fn download_backoff_seconds(attempt: u32) -> u32 {
    2u32.saturating_pow(attempt.min(6)).min(60)
}

/// Chooses what to download: the delta only when its source is exactly the active slot's
/// image, else the full image.
pub fn choose_payload(target: &Target, active_image: &SlotImage) -> Payload {
    if let (Some(delta), Some(active)) = (&target.delta, active_image) {
        if delta.source_sha256 == active.sha256 && delta.source_length == active.length {
            return Payload {
                kind: PayloadKind::Delta,
                url: delta.url.clone(),
                length: delta.length,
                sha256: delta.sha256,
            };
        }
    }
    Payload {
        kind: PayloadKind::Full,
        url: target.image_url.clone(),
        length: target.length,
        sha256: target.sha256,
    }
}

/// The transition function.
pub fn step(state: &AgentState, event: Event, now: Timestamp) -> (AgentState, Vec<Action>) {
    let mut s = Step {
        state: state.clone(),
        actions: Vec::new(),
        now,
    };
    match event {
        Event::Started { boot } => on_started(&mut s, boot),
        Event::CheckInDue => s.actions.push(Action::CheckIn),
        Event::Directive {
            assignment,
            next_poll_seconds,
        } => {
            s.actions.push(Action::ScheduleCheckIn {
                after_seconds: next_poll_seconds,
            });
            on_directive(&mut s, assignment);
        }
        Event::Preconditions(result) => on_preconditions(&mut s, result),
        Event::DownloadProgress { bytes_done } => {
            if s.state.phase == Phase::Downloading {
                let due = s.state.deployment.as_ref().is_some_and(|d| {
                    now.unix_seconds() - d.last_byte_report >= BYTE_REPORT_INTERVAL_SECONDS
                });
                if let Some(d) = s.state.deployment.as_mut() {
                    d.bytes_done = bytes_done;
                    if due {
                        d.last_byte_report = now.unix_seconds();
                    }
                }
                if due {
                    s.report_kind(ProgressPhase::Downloading, None, false);
                }
            }
        }
        Event::DownloadFinished => {
            if s.state.phase == Phase::Downloading {
                if let Some(d) = s.state.deployment.as_mut() {
                    d.bytes_done = d.payload.length;
                }
                s.report(ProgressPhase::Downloaded, None);
                // The payload's length and SHA-256 equal the signed director entry.
                s.report(ProgressPhase::Verified, None);
                s.report(ProgressPhase::Installing, None);
                s.state.phase = Phase::Installing;
                s.install();
            }
        }
        Event::DownloadFailed { reason, retryable } => {
            if s.state.phase == Phase::Downloading {
                let attempts = s
                    .state
                    .deployment
                    .as_ref()
                    .map_or(0, |d| d.download_attempts)
                    + 1;
                if retryable && attempts < MAX_DOWNLOAD_ATTEMPTS {
                    if let Some(d) = s.state.deployment.as_mut() {
                        d.download_attempts = attempts;
                    }
                    s.download(download_backoff_seconds(attempts));
                } else {
                    let code = format!("{}:{reason}", reason::DOWNLOAD_FAILED);
                    s.finish(ProgressPhase::Failed, Some(&code));
                }
            }
        }
        Event::InstallFinished => {
            if s.state.phase == Phase::Installing {
                if let Some(d) = s.state.deployment.clone() {
                    *s.state.slot_mut(d.to) = Some(InstalledImage {
                        version: d.target.version.clone(),
                        sha256: d.target.sha256,
                        length: d.target.length,
                    });
                    s.report(ProgressPhase::Installed, None);
                    s.state.phase = Phase::Installed;
                    s.actions.push(Action::ArmTry {
                        slot: d.to,
                        tries: DEFAULT_BOOT_TRIES,
                    });
                }
            }
        }
        Event::InstallFailed { reason } => {
            if s.state.phase == Phase::Installing {
                if let Some(to) = s.state.deployment.as_ref().map(|d| d.to) {
                    // Whatever the slot holds now is not an image we know.
                    *s.state.slot_mut(to) = None;
                }
                let code = format!("{}:{reason}", reason::INSTALL_FAILED);
                s.finish(ProgressPhase::Failed, Some(&code));
            }
        }
        Event::Armed => {
            if s.state.phase == Phase::Installed {
                s.report(ProgressPhase::Rebooting, None);
                s.state.phase = Phase::Rebooting;
                s.actions.push(Action::Reboot);
            }
        }
        Event::HealthPassed => {
            if s.state.phase == Phase::HealthCheck {
                if let Some(d) = &s.state.deployment {
                    let action = Action::Commit {
                        slot: d.to,
                        security_version: d.target.security_version,
                    };
                    s.state.phase = Phase::Committing;
                    s.actions.push(action);
                }
            }
        }
        Event::HealthFailed { reason } => {
            if s.state.phase == Phase::HealthCheck {
                let code = format!("{}:{reason}", reason::HEALTH_CHECK_FAILED);
                s.state.phase = Phase::RollingBack { reason: code };
                s.actions.push(Action::AbandonAndReboot);
            }
        }
        Event::Committed => {
            if s.state.phase == Phase::Committing {
                if let Some(to) = s.state.deployment.as_ref().map(|d| d.to) {
                    s.state.active = to;
                }
                s.finish(ProgressPhase::Committed, None);
            }
        }
        Event::Control {
            command,
            deployment_id,
        } => on_control(&mut s, command, deployment_id),
        Event::ActionFailed { reason } => on_action_failed(&mut s, reason),
    }
    (s.state, s.actions)
}

fn on_started(s: &mut Step, boot: BootView) {
    // The check-in cadence restarts with the process.
    s.actions.push(Action::CheckIn);
    match s.state.phase.clone() {
        Phase::Idle => {
            if boot.active != s.state.active && s.state.slot(boot.active).is_some() {
                // The bootloader was switched behind our back (e.g. by hand): follow it.
                s.state.active = boot.active;
            }
        }
        Phase::Waiting { .. } => s.check_preconditions(0),
        Phase::Downloading => s.download(0),
        // A half-written inactive slot: write it again from the downloaded payload.
        Phase::Installing => s.install(),
        Phase::Installed => {
            if let Some(to) = s.state.deployment.as_ref().map(|d| d.to) {
                s.actions.push(Action::ArmTry {
                    slot: to,
                    tries: DEFAULT_BOOT_TRIES,
                });
            }
        }
        Phase::Rebooting | Phase::HealthCheck | Phase::Committing => {
            let Some(d) = s.state.deployment.clone() else {
                s.state.phase = Phase::Idle;
                return;
            };
            if boot.booted == d.to {
                if s.state.phase == Phase::Rebooting {
                    s.report(ProgressPhase::HealthCheck, None);
                }
                if s.state.phase == Phase::Committing {
                    s.actions.push(Action::Commit {
                        slot: d.to,
                        security_version: d.target.security_version,
                    });
                } else {
                    s.state.phase = Phase::HealthCheck;
                    s.actions.push(Action::RunHealthCheck);
                }
            } else if s.state.phase == Phase::Rebooting && boot.trying == Some(d.to) {
                // Armed, but the reboot never happened.
                s.actions.push(Action::Reboot);
            } else {
                // The new slot did not stay booted (the boot counter ran out, or it
                // reset before confirming): the firmware is back on the old slot.
                s.finish(ProgressPhase::RolledBack, Some(reason::BOOT_FAILED));
            }
        }
        Phase::RollingBack { reason } => {
            let from = s.state.deployment.as_ref().map(|d| d.from);
            if from.is_none() || Some(boot.booted) == from {
                s.finish(ProgressPhase::RolledBack, Some(&reason));
            } else {
                s.actions.push(Action::AbandonAndReboot);
            }
        }
        Phase::SwitchingBack { to, deployment_id } => {
            if boot.booted == to {
                s.state.active = to;
                s.state.phase = Phase::Idle;
                if let Some(id) = deployment_id {
                    report_server_rollback(s, &id);
                }
            } else {
                s.actions.push(Action::ActivateAndReboot { slot: to });
            }
        }
    }
}

/// The final `rolled_back` event of a committed deployment the server rolled back.
fn report_server_rollback(s: &mut Step, deployment_id: &str) {
    let sequence = s
        .state
        .finished
        .iter()
        .find(|f| f.deployment_id == deployment_id)
        .map_or(1_000_000, |f| f.next_sequence);
    s.actions.push(Action::Report(Report {
        deployment_id: deployment_id.to_owned(),
        sequence,
        phase: ProgressPhase::RolledBack,
        bytes_done: 0,
        bytes_total: 0,
        reason_code: Some(reason::SERVER_ROLLBACK.to_owned()),
        at: s.now,
        transition: true,
    }));
    remember(
        &mut s.state.finished,
        Finished {
            deployment_id: deployment_id.to_owned(),
            outcome: ProgressPhase::RolledBack,
            next_sequence: sequence + 1,
            absent_since: false,
            via: None,
        },
    );
    if s.state.last_committed.as_deref() == Some(deployment_id) {
        s.state.last_committed = None;
    }
    s.actions.push(Action::CheckIn);
}

fn on_directive(s: &mut Step, assignment: Option<Target>) {
    let assigned_id = assignment.as_ref().map(|t| t.deployment_id.clone());
    for f in s.state.finished.iter_mut() {
        if assigned_id.as_deref() != Some(f.deployment_id.as_str()) {
            f.absent_since = true;
        }
    }
    let Some(target) = assignment else {
        // "Nothing to do" does not stop a deployment in flight: the server stops one
        // with `cancel`.
        return;
    };
    if let Some(current) = &s.state.deployment {
        if current.target.deployment_id == target.deployment_id || s.state.phase.has_touched_slot()
        {
            return;
        }
        // A different assignment replaces one that has not touched the slot yet.
        s.actions.push(Action::StopDownload);
        s.finish(ProgressPhase::Failed, Some(reason::SUPERSEDED));
    }
    if s.state.phase != Phase::Idle {
        return;
    }
    let mut next_sequence = 1;
    if let Some(f) = s
        .state
        .finished
        .iter()
        .find(|f| f.deployment_id == target.deployment_id)
    {
        if !f.absent_since || f.outcome != ProgressPhase::Failed {
            // Resent before the server heard how it ended; or it ended committed or
            // rolled back, which the server's retry policy never hands out again (a
            // rolled-back image stays off this vehicle until a new deployment).
            return;
        }
        next_sequence = f.next_sequence;
    }
    let active_image = s.state.installed().clone();
    if active_image
        .as_ref()
        .is_some_and(|i| i.sha256 == target.sha256 && i.length == target.length)
    {
        // Already running it; the next check-in tells the server.
        return;
    }
    let from = s.state.active;
    let payload = choose_payload(&target, &active_image);
    s.state.deployment = Some(Deployment {
        target,
        payload,
        from,
        to: from.other(),
        next_sequence,
        download_attempts: 0,
        bytes_done: 0,
        last_byte_report: 0,
    });
    s.state.phase = Phase::Waiting {
        unmet: "unchecked".to_owned(),
    };
    s.check_preconditions(0);
}

fn on_preconditions(s: &mut Step, result: Result<(), String>) {
    if !matches!(s.state.phase, Phase::Waiting { .. }) {
        return;
    }
    match result {
        Ok(()) => {
            s.state.phase = Phase::Downloading;
            s.report(ProgressPhase::Downloading, None);
            s.download(0);
        }
        Err(unmet) => {
            let changed = s.state.phase
                != Phase::Waiting {
                    unmet: unmet.clone(),
                };
            s.state.phase = Phase::Waiting { unmet };
            if changed {
                // The server sees the unmet condition in `agent_state` at once.
                s.actions.push(Action::CheckIn);
            }
            s.check_preconditions(PRECONDITION_RECHECK_SECONDS);
        }
    }
}

fn on_control(s: &mut Step, command: ControlCommand, deployment_id: Option<String>) {
    let current = s
        .state
        .deployment
        .as_ref()
        .map(|d| d.target.deployment_id.clone());
    let names_current = deployment_id.is_none() || deployment_id == current;
    match command {
        ControlCommand::PollNow => s.actions.push(Action::CheckIn),
        ControlCommand::Cancel => {
            if current.is_some() && names_current && !s.state.phase.has_touched_slot() {
                s.actions.push(Action::StopDownload);
                s.finish(ProgressPhase::Failed, Some(reason::CANCELLED));
            }
        }
        ControlCommand::Rollback => match s.state.phase.clone() {
            Phase::Idle => {
                let previous = s.state.active.other();
                let names_last = deployment_id.is_none() || deployment_id == s.state.last_committed;
                if names_last && s.state.slot(previous).is_some() {
                    s.state.phase = Phase::SwitchingBack {
                        to: previous,
                        deployment_id: deployment_id.or(s.state.last_committed.clone()),
                    };
                    s.actions.push(Action::ActivateAndReboot { slot: previous });
                }
            }
            Phase::Waiting { .. } | Phase::Downloading if names_current => {
                s.actions.push(Action::StopDownload);
                s.finish(ProgressPhase::Failed, Some(reason::CANCELLED));
            }
            Phase::Installing | Phase::Installed if names_current => {
                // The new slot was never booted; the firmware still boots `from`.
                if let Some(to) = s.state.deployment.as_ref().map(|d| d.to) {
                    *s.state.slot_mut(to) = None;
                }
                s.finish(ProgressPhase::RolledBack, Some(reason::SERVER_ROLLBACK));
            }
            Phase::Rebooting | Phase::HealthCheck if names_current => {
                s.state.phase = Phase::RollingBack {
                    reason: reason::SERVER_ROLLBACK.to_owned(),
                };
                s.actions.push(Action::AbandonAndReboot);
            }
            _ => {}
        },
    }
}

fn on_action_failed(s: &mut Step, why: String) {
    let code = format!("{}:{why}", reason::AGENT_ERROR);
    match s.state.phase.clone() {
        Phase::Idle => {}
        Phase::Waiting { .. } | Phase::Downloading | Phase::Installing | Phase::Installed => {
            if matches!(s.state.phase, Phase::Installing | Phase::Installed) {
                if let Some(to) = s.state.deployment.as_ref().map(|d| d.to) {
                    *s.state.slot_mut(to) = None;
                }
            }
            s.finish(ProgressPhase::Failed, Some(&code));
        }
        Phase::Rebooting | Phase::HealthCheck | Phase::Committing => {
            s.state.phase = Phase::RollingBack { reason: code };
            s.actions.push(Action::AbandonAndReboot);
        }
        // Already going back: the driver retries at the next start.
        Phase::RollingBack { .. } | Phase::SwitchingBack { .. } => {}
    }
}

#[cfg(test)]
mod tests;
