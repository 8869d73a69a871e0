//! The rollout engine: the IO shell around the pure [`crate::director`],
//! [`crate::breaker`] and [`crate::rollout`] logic. It applies verified check-ins and
//! progress events to the store, decides and signs directives, evaluates breakers and
//! phase progress (on every event and on a periodic tick), and emits control messages.

use crate::breaker::{self, BreakerState};
use crate::director::{
    self, DeltaBlob, DeploymentStatus, Directive, DirectorInput, EcuView, ExistingDeployment,
    RollbackBlock, RollbackCandidate, RollbackStep, RolloutView, TargetView, VehicleView,
};
use crate::rollout::{
    effective_rate_per_minute, phase_decision, BreakerAction, PhaseOutcomes, RolloutAction,
    RolloutState,
};
use crate::settings::Settings;
use crate::signing::ServerKeys;
use crate::store::{Actor, PhaseCounts, RolloutRecord, Store, StoreError, VehicleRecord};
use ota_core::cohort;
use ota_core::encoding::{parse_lower_hex, Sha256Digest};
use ota_core::key::PublicKey;
use ota_core::protocol::{
    self, claimed_vehicle_id, open_message, sign_message, Channel, CheckIn, ControlCommand,
    ControlMessage, InstalledImage, MessageError, ProgressEvent, ProgressPhase,
    PAYLOAD_TYPE_CHECKIN, PAYLOAD_TYPE_CONTROL, PAYLOAD_TYPE_PROGRESS,
};
use ota_core::time::Timestamp;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use tokio::sync::Notify;

use crate::gateway::Outbox;
pub use crate::gateway::Outgoing;

/// Why a vehicle message was dropped (each is counted in metrics).
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("vehicle {0:?} is not registered")]
    UnknownVehicle(String),
    #[error("topic names vehicle {topic:?} but the message claims {claimed:?}")]
    TopicMismatch { topic: String, claimed: String },
    #[error("bad message: {0}")]
    Message(#[from] MessageError),
    #[error("deployment {0:?} is not this vehicle's")]
    UnknownDeployment(String),
    #[error("message sent at {sent_at}, more than {window_seconds} s from the server's clock")]
    Stale {
        sent_at: Timestamp,
        window_seconds: i64,
    },
    #[error("check-in replayed: not newer than the last accepted one (nonce {nonce:?})")]
    Replayed { nonce: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Rejected {
    pub fn label(&self) -> &'static str {
        match self {
            Rejected::UnknownVehicle(_) => "unknown_vehicle",
            Rejected::TopicMismatch { .. } => "topic_mismatch",
            Rejected::Message(MessageError::BadSignature) => "bad_signature",
            Rejected::Message(_) => "malformed",
            Rejected::UnknownDeployment(_) => "unknown_deployment",
            Rejected::Stale { .. } => "stale",
            Rejected::Replayed { .. } => "replayed",
            Rejected::Store(_) => "store_error",
        }
    }
}

struct Inner {
    store: Store,
    keys: Arc<ServerKeys>,
    settings: Arc<Settings>,
    public_url: String,
    outbox: Outbox,
    jobs: Arc<Notify>,
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

/// One phase's line in a rollout status.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseStatus {
    pub index: usize,
    pub name: String,
    pub percent: f64,
    pub active: bool,
    /// Selected vehicles whose cohort bucket falls in this phase's band.
    pub eligible: u64,
    #[serde(flatten)]
    pub counts: PhaseCounts,
}

#[derive(Debug, Clone, Serialize)]
pub struct RolloutStatus {
    pub rollout: RolloutRecord,
    pub phases: Vec<PhaseStatus>,
    pub totals: PhaseCounts,
    pub delta_jobs: BTreeMap<String, u64>,
}

fn now_timestamp() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now())
}

fn installed_from_record(vehicle: &VehicleRecord) -> Vec<EcuView> {
    vehicle
        .ecus
        .iter()
        .map(|e| EcuView {
            ecu: e.ecu.clone(),
            hardware_id: e.hardware_id.clone(),
            installed: match (
                &e.installed_version,
                &e.installed_sha256,
                e.installed_length,
            ) {
                (Some(version), Some(sha), Some(length)) => {
                    Sha256Digest::parse(sha).ok().map(|sha256| InstalledImage {
                        version: version.clone(),
                        sha256,
                        length,
                    })
                }
                _ => None,
            },
        })
        .collect()
}

fn progress_status(phase: ProgressPhase) -> DeploymentStatus {
    match phase {
        ProgressPhase::Downloading | ProgressPhase::Downloaded | ProgressPhase::Verified => {
            DeploymentStatus::Downloading
        }
        ProgressPhase::Installing
        | ProgressPhase::Installed
        | ProgressPhase::Rebooting
        | ProgressPhase::HealthCheck => DeploymentStatus::Installed,
        ProgressPhase::Committed => DeploymentStatus::Committed,
        ProgressPhase::Failed => DeploymentStatus::Failed,
        ProgressPhase::RolledBack => DeploymentStatus::RolledBack,
    }
}

impl Engine {
    pub fn new(
        store: Store,
        keys: Arc<ServerKeys>,
        settings: Arc<Settings>,
        public_url: String,
        jobs: Arc<Notify>,
        outbox: Outbox,
    ) -> Engine {
        Engine {
            inner: Arc::new(Inner {
                store,
                keys,
                settings,
                public_url,
                outbox,
                jobs,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Queues a message for vehicles; never waits (a full outbox drops and counts it).
    fn publish(&self, outgoing: Outgoing) {
        self.inner.outbox.send(outgoing);
    }

    fn send_control(
        &self,
        vehicle_id: &str,
        command: ControlCommand,
        deployment_id: Option<String>,
    ) {
        let message = ControlMessage {
            vehicle_id: vehicle_id.to_owned(),
            command,
            deployment_id,
            issued_at: now_timestamp(),
        };
        self.publish(Outgoing {
            topic: protocol::topic(vehicle_id, Channel::Control),
            payload: sign_message(PAYLOAD_TYPE_CONTROL, &message, &self.inner.keys.director),
        });
    }

    async fn vehicle_key(&self, vehicle_id: &str) -> Result<(VehicleRecord, PublicKey), Rejected> {
        let vehicle = match self.inner.store.get_vehicle(vehicle_id).await {
            Ok(v) => v,
            Err(StoreError::NotFound { .. }) => {
                return Err(Rejected::UnknownVehicle(vehicle_id.to_owned()))
            }
            Err(e) => return Err(e.into()),
        };
        let key = parse_lower_hex::<32>(&vehicle.public_key)
            .ok()
            .and_then(|raw| PublicKey::from_bytes(&raw).ok())
            .ok_or(Rejected::Message(MessageError::BadSignature))?;
        Ok((vehicle, key))
    }

    fn check_topic(topic_vehicle: &str, bytes: &[u8]) -> Result<(), Rejected> {
        let claimed = claimed_vehicle_id(bytes).ok_or(Rejected::Message(
            MessageError::Malformed("no vehicle_id".to_owned()),
        ))?;
        if claimed != topic_vehicle {
            return Err(Rejected::TopicMismatch {
                topic: topic_vehicle.to_owned(),
                claimed,
            });
        }
        Ok(())
    }

    /// The release's images by hardware id, for a rollout.
    async fn targets_of(
        &self,
        rollout: &RolloutRecord,
    ) -> Result<BTreeMap<String, TargetView>, StoreError> {
        let release = self.inner.store.get_release(&rollout.release_id).await?;
        Ok(release
            .images
            .iter()
            .filter_map(|image| {
                Sha256Digest::parse(&image.sha256).ok().map(|sha256| {
                    (
                        image.hardware_id.clone(),
                        TargetView {
                            name: image.name.clone(),
                            version: image.version.clone(),
                            security_version: release.security_version,
                            length: image.length,
                            sha256,
                        },
                    )
                })
            })
            .collect())
    }

    /// Verifies and applies a check-in; returns the signed directive's wire bytes.
    pub async fn handle_checkin(
        &self,
        topic_vehicle: &str,
        bytes: &[u8],
    ) -> Result<Vec<u8>, Rejected> {
        Self::check_topic(topic_vehicle, bytes)?;
        let (vehicle, key) = self.vehicle_key(topic_vehicle).await?;
        let checkin: CheckIn = open_message(bytes, PAYLOAD_TYPE_CHECKIN, &key)?;
        // A captured check-in replayed much later must not move the vehicle's recorded
        // state backwards; the window matches the directive lifetime.
        let window_seconds = self.inner.settings.director.expiry_seconds;
        if (checkin.sent_at.unix_seconds() - now_timestamp().unix_seconds()).abs() > window_seconds
        {
            return Err(Rejected::Stale {
                sent_at: checkin.sent_at,
                window_seconds,
            });
        }
        if checkin.vehicle_id != vehicle.id {
            return Err(Rejected::TopicMismatch {
                topic: vehicle.id,
                claimed: checkin.vehicle_id,
            });
        }
        if !self.inner.store.record_checkin(&checkin).await? {
            return Err(Rejected::Replayed {
                nonce: checkin.nonce,
            });
        }
        let ecus: Vec<EcuView> = vehicle
            .ecus
            .iter()
            .map(|e| EcuView {
                ecu: e.ecu.clone(),
                hardware_id: e.hardware_id.clone(),
                installed: checkin
                    .ecus
                    .iter()
                    .find(|r| r.ecu == e.ecu)
                    .and_then(|r| r.installed.clone()),
            })
            .collect();
        let view = VehicleView {
            id: vehicle.id.clone(),
            tags: vehicle.tags.clone(),
            ecus,
        };
        let directive = self.decide_and_record(&view).await?;
        let version = self
            .inner
            .store
            .next_director_version(&vehicle.id, checkin.trusted.director)
            .await?;
        let envelope = director::sign_directive(
            &directive,
            &vehicle.id,
            version,
            now_timestamp(),
            self.inner.settings.director.expiry_seconds,
            &self.inner.keys.director,
        );
        let outcome = match &directive {
            Directive::Nothing { .. } => "nothing",
            Directive::Assign {
                new_deployments, ..
            } if new_deployments.is_empty() => "resent",
            Directive::Assign { .. } => "assigned",
        };
        metrics::counter!("ota_directives_total", "outcome" => outcome).increment(1);
        Ok(envelope.to_json_bytes())
    }

    /// Builds the director's inputs for one vehicle, decides, and records new deployments
    /// (and commits that the check-in proves: the ECU now runs the target image).
    pub async fn decide_and_record(&self, vehicle: &VehicleView) -> Result<Directive, StoreError> {
        let store = &self.inner.store;
        let mut deployments = store.deployments_for_vehicle(&vehicle.id).await?;
        let deltas: BTreeMap<(Sha256Digest, Sha256Digest), DeltaBlob> = store
            .built_deltas()
            .await?
            .into_iter()
            .filter_map(|(source, target, delta, length)| {
                Some((
                    (
                        Sha256Digest::parse(&source).ok()?,
                        Sha256Digest::parse(&target).ok()?,
                    ),
                    DeltaBlob {
                        length,
                        sha256: Sha256Digest::parse(&delta).ok()?,
                    },
                ))
            })
            .collect();
        // Vehicles updated by a rolled-back rollout are sent home before anything else.
        if let Some(directive) = self
            .rollback_directive(vehicle, &deployments, &deltas)
            .await?
        {
            return Ok(directive);
        }
        let active = store.active_rollouts().await?;
        let mut views = Vec::with_capacity(active.len());
        let minute_ago = chrono::Utc::now().timestamp_millis() - 60_000;
        for rollout in active {
            let targets = self.targets_of(&rollout).await?;
            for d in deployments
                .iter_mut()
                .filter(|d| d.rollout_id == rollout.id && !d.status.is_terminal())
            {
                let runs_target = vehicle.ecus.iter().any(|e| {
                    e.ecu == d.ecu
                        && targets.get(&e.hardware_id).map(|t| t.sha256)
                            == e.installed.as_ref().map(|i| i.sha256)
                });
                if runs_target
                    && store
                        .update_deployment(
                            &d.id,
                            &vehicle.id,
                            DeploymentStatus::Committed,
                            u64::MAX,
                            None,
                        )
                        .await?
                {
                    d.status = DeploymentStatus::Committed;
                }
            }
            let succeeded: u64 = store
                .phase_counts(&rollout.id)
                .await?
                .values()
                .map(|c| c.committed)
                .sum();
            let rate = effective_rate_per_minute(&rollout.spec.rate_limit, succeeded);
            let started = store
                .vehicles_started_since(&rollout.id, minute_ago)
                .await?;
            views.push(RolloutView {
                id: rollout.id.clone(),
                state: rollout.state,
                breaker: rollout.breaker_state,
                salt: hex::decode(&rollout.salt)
                    .unwrap_or_else(|_| rollout.salt.clone().into_bytes()),
                current_phase: rollout.current_phase,
                targets,
                started_last_minute: started.min(u64::from(u32::MAX)) as u32,
                rate_per_minute: rate,
                existing: deployments
                    .iter()
                    .filter(|d| d.rollout_id == rollout.id)
                    .map(|d| ExistingDeployment {
                        deployment_id: d.id.clone(),
                        ecu: d.ecu.clone(),
                        status: d.status,
                        attempts: d.attempts,
                        updated_unix_seconds: d.updated_ms / 1000,
                    })
                    .collect(),
                spec: rollout.spec,
            });
        }
        let directive = director::decide(&DirectorInput {
            vehicle,
            rollouts: &views,
            deltas: &deltas,
            now_unix_seconds: chrono::Utc::now().timestamp(),
            blob_base_url: &self.inner.public_url,
            poll_seconds: self.inner.settings.director.poll_seconds,
        });
        if let Directive::Assign {
            rollout_id,
            phase,
            new_deployments,
            ..
        } = &directive
        {
            if !new_deployments.is_empty() {
                store
                    .insert_deployments(rollout_id, &vehicle.id, *phase, new_deployments)
                    .await?;
            }
        }
        Ok(directive)
    }

    /// The newest targets metadata's images by (hardware id, SHA-256): what any vehicle
    /// can be sent to, including back.
    async fn listed_images(
        &self,
    ) -> Result<BTreeMap<(String, Sha256Digest), TargetView>, StoreError> {
        let Some((_, envelope)) = self.inner.store.latest_targets().await? else {
            return Ok(BTreeMap::new());
        };
        let metadata = ota_core::envelope::Envelope::parse(envelope.as_bytes())
            .ok()
            .and_then(|e| {
                ota_core::metadata::parse_document::<ota_core::metadata::TargetsMetadata>(
                    &e.payload,
                )
                .ok()
            });
        Ok(metadata
            .map(|m| {
                m.targets
                    .0
                    .into_iter()
                    .map(|(name, t)| {
                        (
                            (t.hardware_id.clone(), t.sha256),
                            TargetView {
                                name,
                                version: t.version,
                                security_version: t.security_version,
                                length: t.length,
                                sha256: t.sha256,
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The rollback candidates among `deployments`: installed or committed deployments of
    /// rolled-back rollouts that know the image they replaced.
    async fn rollback_candidates(
        &self,
        ecus: &[(String, String)],
        deployments: &[crate::store::DeploymentRecord],
    ) -> Result<Vec<(RollbackCandidate, String, usize)>, StoreError> {
        let store = &self.inner.store;
        let relevant: Vec<_> = deployments
            .iter()
            .filter(|d| {
                matches!(
                    d.status,
                    DeploymentStatus::Installed | DeploymentStatus::Committed
                ) && d.from_sha256.is_some()
            })
            .collect();
        if relevant.is_empty() {
            return Ok(Vec::new());
        }
        let mut rollouts: BTreeMap<String, (RolloutRecord, BTreeMap<String, TargetView>)> =
            BTreeMap::new();
        let listed = self.listed_images().await?;
        let mut candidates = Vec::new();
        for d in relevant {
            if !rollouts.contains_key(&d.rollout_id) {
                let rollout = store.get_rollout(&d.rollout_id).await?;
                let targets = self.targets_of(&rollout).await?;
                rollouts.insert(d.rollout_id.clone(), (rollout, targets));
            }
            let (rollout, targets) = &rollouts[&d.rollout_id];
            if rollout.state != RolloutState::RolledBack {
                continue;
            }
            let Some((_, hardware_id)) = ecus.iter().find(|(ecu, _)| *ecu == d.ecu) else {
                continue;
            };
            let Some(release) = targets.get(hardware_id) else {
                continue;
            };
            let previous = d
                .from_sha256
                .as_deref()
                .and_then(|sha| Sha256Digest::parse(sha).ok())
                .and_then(|sha| listed.get(&(hardware_id.clone(), sha)).cloned());
            candidates.push((
                RollbackCandidate {
                    deployment_id: d.id.clone(),
                    ecu: d.ecu.clone(),
                    release: release.clone(),
                    previous,
                    preconditions: rollout.spec.preconditions.clone(),
                },
                rollout.id.clone(),
                d.phase,
            ));
        }
        Ok(candidates)
    }

    /// Sends a vehicle back to the images it ran before a rolled-back rollout, and marks
    /// deployments rolled back once the vehicle runs them again.
    async fn rollback_directive(
        &self,
        vehicle: &VehicleView,
        deployments: &[crate::store::DeploymentRecord],
        deltas: &BTreeMap<(Sha256Digest, Sha256Digest), DeltaBlob>,
    ) -> Result<Option<Directive>, StoreError> {
        let ecus: Vec<(String, String)> = vehicle
            .ecus
            .iter()
            .map(|e| (e.ecu.clone(), e.hardware_id.clone()))
            .collect();
        let candidates = self.rollback_candidates(&ecus, deployments).await?;
        if candidates.is_empty() {
            return Ok(None);
        }
        let origin: BTreeMap<String, (String, usize)> = candidates
            .iter()
            .map(|(c, rollout, phase)| (c.deployment_id.clone(), (rollout.clone(), *phase)))
            .collect();
        let candidates: Vec<RollbackCandidate> =
            candidates.into_iter().map(|(c, _, _)| c).collect();
        let input = DirectorInput {
            vehicle,
            rollouts: &[],
            deltas,
            now_unix_seconds: chrono::Utc::now().timestamp(),
            blob_base_url: &self.inner.public_url,
            poll_seconds: self.inner.settings.director.poll_seconds,
        };
        let mut assignments = Vec::new();
        let mut first = None;
        for step in director::plan_rollback(&input, &candidates) {
            match step {
                RollbackStep::Done { deployment_id } => {
                    self.inner
                        .store
                        .mark_rolled_back(&deployment_id, &vehicle.id)
                        .await?;
                }
                RollbackStep::Assign(assignment) => {
                    if first.is_none() {
                        first = origin.get(&assignment.deployment_id).cloned();
                    }
                    assignments.push(*assignment);
                }
                RollbackStep::Blocked {
                    deployment_id,
                    reason,
                } => {
                    tracing::debug!(vehicle = %vehicle.id, deployment = %deployment_id, ?reason, "not rolled back");
                }
            }
        }
        Ok(first.map(|(rollout_id, phase)| Directive::Assign {
            rollout_id,
            phase,
            assignments,
            new_deployments: Vec::new(),
            next_poll_seconds: input.poll_seconds,
        }))
    }

    /// Why a rollout cannot be rolled back: deployments whose previous image has a lower
    /// `security_version` than the release (vehicles must refuse it). Empty = permitted.
    pub async fn rollback_blockers(
        &self,
        rollout: &RolloutRecord,
    ) -> Result<Vec<String>, StoreError> {
        let store = &self.inner.store;
        let targets = self.targets_of(rollout).await?;
        let listed = self.listed_images().await?;
        let mut blockers = Vec::new();
        for d in store.deployments_for_rollout(&rollout.id).await? {
            let Some(from) = d
                .from_sha256
                .as_deref()
                .and_then(|s| Sha256Digest::parse(s).ok())
            else {
                continue;
            };
            for (hardware_id, release) in &targets {
                if let Some(previous) = listed.get(&(hardware_id.clone(), from)) {
                    if let Err(RollbackBlock::SecurityVersion {
                        previous: p,
                        release: r,
                    }) = director::rollback_permitted(previous, release)
                    {
                        let text = format!(
                            "{} {} has security_version {p}, below the release's {r}",
                            hardware_id, previous.version
                        );
                        if !blockers.contains(&text) {
                            blockers.push(text);
                        }
                    }
                }
            }
        }
        Ok(blockers)
    }

    /// Verifies and applies a progress event, then re-evaluates that rollout at once so a
    /// breaker opens within the event's handling, not at the next tick.
    pub async fn handle_progress(
        &self,
        topic_vehicle: &str,
        bytes: &[u8],
    ) -> Result<bool, Rejected> {
        Self::check_topic(topic_vehicle, bytes)?;
        let (vehicle, key) = self.vehicle_key(topic_vehicle).await?;
        let event: ProgressEvent = open_message(bytes, PAYLOAD_TYPE_PROGRESS, &key)?;
        let deployments = self
            .inner
            .store
            .deployments_for_vehicle(&vehicle.id)
            .await?;
        let deployment = deployments
            .iter()
            .find(|d| d.id == event.deployment_id)
            .ok_or_else(|| Rejected::UnknownDeployment(event.deployment_id.clone()))?;
        let changed = self
            .inner
            .store
            .update_deployment(
                &deployment.id,
                &vehicle.id,
                progress_status(event.phase),
                event.sequence,
                event.reason_code.as_deref(),
            )
            .await?;
        if changed {
            let rollout = self.inner.store.get_rollout(&deployment.rollout_id).await?;
            self.evaluate(&rollout).await?;
        }
        Ok(changed)
    }

    /// Re-evaluates every running rollout (breakers and phase progress).
    pub async fn tick(&self) -> Result<(), StoreError> {
        for rollout in self
            .inner
            .store
            .list_rollouts(Some(RolloutState::Running))
            .await?
        {
            self.evaluate(&rollout).await?;
        }
        Ok(())
    }

    async fn evaluate(&self, rollout: &RolloutRecord) -> Result<(), StoreError> {
        if rollout.state != RolloutState::Running {
            return Ok(());
        }
        let store = &self.inner.store;
        let window = store
            .outcomes_since(&rollout.id, rollout.window_start_ms)
            .await?;
        let phase_threshold = rollout
            .spec
            .phases
            .get(rollout.current_phase)
            .and_then(|p| p.error_threshold_percent);
        let verdict = breaker::evaluate(
            &rollout.spec.abort_criteria,
            phase_threshold,
            rollout.breaker_state,
            window,
        );
        let system = Actor::system();
        if verdict.state != rollout.breaker_state {
            store
                .set_breaker(
                    &system,
                    &rollout.id,
                    rollout.breaker_state,
                    verdict.state,
                    verdict.opened_because.as_deref(),
                )
                .await?;
            metrics::counter!("ota_breaker_transitions_total", "to" => verdict.state.as_str())
                .increment(1);
        }
        if verdict.state == BreakerState::Open {
            if rollout.breaker_state != BreakerState::Open {
                let action = match rollout.spec.abort_criteria.action {
                    BreakerAction::Pause => RolloutAction::Pause,
                    BreakerAction::Abort => RolloutAction::Abort,
                    // A rollback the security_version floors forbid degrades to a pause:
                    // the rollout stops, and an operator decides.
                    BreakerAction::Rollback
                        if !self.rollback_blockers(rollout).await?.is_empty() =>
                    {
                        tracing::warn!(rollout = %rollout.id, "rollback policy not permitted by security_version; pausing instead");
                        RolloutAction::Pause
                    }
                    BreakerAction::Rollback => RolloutAction::Rollback,
                };
                tracing::warn!(rollout = %rollout.id, reason = ?verdict.opened_because, action = action.as_str(), "breaker opened");
                match store
                    .transition_rollout(
                        &system,
                        &rollout.id,
                        action,
                        verdict.opened_because.as_deref(),
                    )
                    .await
                {
                    Ok(updated) => self.after_transition(&updated, action).await?,
                    Err(crate::store::TransitionError::Store(e)) => return Err(e),
                    // Someone changed the state meanwhile; their action stands.
                    Err(crate::store::TransitionError::Illegal(_)) => {}
                }
            }
            return Ok(());
        }
        let counts = store.phase_counts(&rollout.id).await?;
        let current = counts
            .get(&rollout.current_phase)
            .cloned()
            .unwrap_or_default();
        let outcomes = PhaseOutcomes {
            assigned: current.total() - current.cancelled,
            committed: current.committed,
            failed: current.failed + current.rolled_back,
        };
        let started = rollout.phase_started_ms.unwrap_or(0);
        if let crate::rollout::PhaseDecision::Advance { to } = phase_decision(
            &rollout.spec,
            rollout.current_phase,
            started,
            chrono::Utc::now().timestamp_millis(),
            outcomes,
        ) {
            if store
                .advance_phase(&system, &rollout.id, rollout.current_phase, to)
                .await?
            {
                tracing::info!(rollout = %rollout.id, phase = to, "phase advanced");
            }
        }
        Ok(())
    }

    /// Side effects of an operator's (or breaker's) state change.
    pub async fn after_transition(
        &self,
        rollout: &RolloutRecord,
        action: RolloutAction,
    ) -> Result<(), StoreError> {
        let store = &self.inner.store;
        match action {
            RolloutAction::Start => {
                let queued = self.enqueue_deltas(rollout).await?;
                if queued > 0 {
                    self.inner.jobs.notify_waiters();
                }
            }
            RolloutAction::Pause => {
                for d in store.deployments_for_rollout(&rollout.id).await? {
                    if !d.status.is_terminal() {
                        self.send_control(
                            &d.vehicle_id,
                            ControlCommand::PollNow,
                            Some(d.id.clone()),
                        );
                    }
                }
            }
            RolloutAction::Abort => {
                for d in store.cancel_unfinished(&rollout.id).await? {
                    self.send_control(&d.vehicle_id, ControlCommand::Cancel, Some(d.id.clone()));
                }
            }
            RolloutAction::Rollback => {
                for d in store.cancel_unfinished(&rollout.id).await? {
                    self.send_control(&d.vehicle_id, ControlCommand::Cancel, Some(d.id.clone()));
                }
                for d in store.deployments_for_rollout(&rollout.id).await? {
                    if matches!(
                        d.status,
                        DeploymentStatus::Installed | DeploymentStatus::Committed
                    ) {
                        self.send_control(
                            &d.vehicle_id,
                            ControlCommand::Rollback,
                            Some(d.id.clone()),
                        );
                    }
                }
            }
            RolloutAction::Resume | RolloutAction::Complete => {}
        }
        Ok(())
    }

    /// Enqueues a delta build for every source image installed in the selected fleet
    /// whose bytes the server holds. Returns how many new jobs were queued.
    pub async fn enqueue_deltas(&self, rollout: &RolloutRecord) -> Result<u64, StoreError> {
        let store = &self.inner.store;
        let targets = self.targets_of(rollout).await?;
        let mut queued = 0;
        for vehicle in store.all_vehicles(100_000).await? {
            let view = VehicleView {
                id: vehicle.id.clone(),
                tags: vehicle.tags.clone(),
                ecus: installed_from_record(&vehicle),
            };
            if !director::selector_matches(&rollout.spec, &view) {
                continue;
            }
            for ecu in &view.ecus {
                let (Some(target), Some(installed)) =
                    (targets.get(&ecu.hardware_id), &ecu.installed)
                else {
                    continue;
                };
                if installed.sha256 == target.sha256
                    || store
                        .image_by_sha256(&installed.sha256.to_hex())
                        .await?
                        .is_none()
                {
                    continue;
                }
                if store
                    .enqueue_delta(
                        &rollout.id,
                        &ecu.hardware_id,
                        &installed.sha256.to_hex(),
                        &target.sha256.to_hex(),
                    )
                    .await?
                {
                    queued += 1;
                }
            }
        }
        Ok(queued)
    }

    pub async fn rollout_status(&self, id: &str) -> Result<RolloutStatus, StoreError> {
        let store = &self.inner.store;
        let rollout = store.get_rollout(id).await?;
        let counts = store.phase_counts(id).await?;
        let salt = hex::decode(&rollout.salt).unwrap_or_else(|_| rollout.salt.clone().into_bytes());
        let fleet: Vec<VehicleView> = store
            .all_vehicles(100_000)
            .await?
            .iter()
            .map(|v| VehicleView {
                id: v.id.clone(),
                tags: v.tags.clone(),
                ecus: installed_from_record(v),
            })
            .filter(|v| director::selector_matches(&rollout.spec, v))
            .collect();
        let mut phases = Vec::new();
        let mut totals = PhaseCounts::default();
        for (index, phase) in rollout.spec.phases.iter().enumerate() {
            let upper = rollout.spec.phase_percent_millis(index);
            let lower = if index == 0 {
                0
            } else {
                rollout.spec.phase_percent_millis(index - 1)
            };
            let eligible = fleet
                .iter()
                .filter(|v| {
                    cohort::admits(&salt, &v.id, upper) && !cohort::admits(&salt, &v.id, lower)
                })
                .count() as u64;
            let c = counts.get(&index).cloned().unwrap_or_default();
            totals.assigned += c.assigned;
            totals.downloading += c.downloading;
            totals.installed += c.installed;
            totals.committed += c.committed;
            totals.failed += c.failed;
            totals.rolled_back += c.rolled_back;
            totals.cancelled += c.cancelled;
            phases.push(PhaseStatus {
                index,
                name: phase.name.clone(),
                percent: phase.percent,
                active: index == rollout.current_phase,
                eligible,
                counts: c,
            });
        }
        let mut delta_jobs = BTreeMap::new();
        for job in store.list_delta_jobs(Some(id)).await? {
            *delta_jobs
                .entry(job.status.as_str().to_owned())
                .or_insert(0) += 1;
        }
        Ok(RolloutStatus {
            rollout,
            phases,
            totals,
            delta_jobs,
        })
    }
}
