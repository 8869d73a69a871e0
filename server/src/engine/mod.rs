//! The rollout engine: the IO shell around the pure [`crate::director`],
//! [`crate::breaker`], [`crate::rollout`] and [`plan`] logic, split by concern:
//!
//! - [`intake`]: verifying vehicle messages (topic, signature, freshness, replay);
//! - [`assign`]: answering a check-in with a directive, from a short-lived snapshot of
//!   the active rollouts, so a check-in costs the same at 1,000 or 50,000 vehicles;
//! - [`checkins`]: check-ins answered in batches (one read of the vehicles, one of
//!   their deployments, group-committed writes);
//! - [`supervise`]: breakers and phase gates, on every applied event and on a tick;
//! - [`status`]: the rollout status read model;
//! - [`plan`]: every rollout change, pure; [`Engine::change_rollout`] is the one path
//!   that plans, persists (one transaction) and runs a change's effects.
//!
//! Every entry point takes `now` from its caller; nothing here reads the clock.

pub mod assign;
pub mod checkins;
pub mod deployments;
pub mod group_commit;
pub mod history;
pub mod intake;
pub mod plan;
pub mod status;
pub mod supervise;

use crate::director::DeploymentStatus;
use crate::director::{self, TargetView};
use crate::gateway::Outbox;
use crate::settings::Settings;
use crate::signing::ServerKeys;
use crate::store::{Actor, ChangeError, DeploymentRecord, RolloutRecord, Store, StoreError};
use ota_core::encoding::Sha256Digest;
use ota_core::protocol::{
    self, sign_message, Channel, ControlCommand, ControlMessage, PAYLOAD_TYPE_CONTROL,
};
use ota_core::time::Timestamp;
use plan::{Effect, Facts, PlanError, RolloutChange, RolloutRequest};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use tokio::sync::Notify;

pub use crate::gateway::Outgoing;
pub use intake::Rejected;
pub use status::{DryRun, DryRunPhase, PhaseStatus, RolloutStatus};

/// A millisecond Unix time, as every engine entry point takes it.
pub type NowMs = i64;

/// The wall clock, read once at the edge (a message's arrival, a tick, a request).
pub fn wall_clock_ms() -> NowMs {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) fn timestamp(now_ms: NowMs) -> Timestamp {
    Timestamp::from_datetime(chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_default())
}

struct Inner {
    store: Store,
    keys: Arc<ServerKeys>,
    settings: Arc<Settings>,
    public_url: String,
    outbox: Outbox,
    jobs: Arc<Notify>,
    snapshot: assign::SnapshotCache,
    /// Device keys already parsed (a curve point decompression per message otherwise).
    device_keys: intake::KeyMemo,
    /// Progress messages already verified (the consumer re-opens what the gateway did).
    verified_progress: intake::VerifiedMemo,
    /// Check-in writes, batched per transaction.
    checkins: group_commit::CheckinWriter,
    assignments: group_commit::AssignmentWriter,
    /// With Kafka, every rollout change writes its event to the outbox in its own
    /// transaction and wakes the relay that publishes it to `ota.rollout-events`.
    rollout_relay: Option<crate::rollout_relay::RelayWake>,
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

/// Why a rollout change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeFailed {
    #[error(transparent)]
    Refused(#[from] PlanError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Engine {
    pub fn new(
        store: Store,
        keys: Arc<ServerKeys>,
        settings: Arc<Settings>,
        public_url: String,
        jobs: Arc<Notify>,
        outbox: Outbox,
        rollout_relay: Option<crate::rollout_relay::RelayWake>,
    ) -> Engine {
        // SQLite has one writer at a time; PostgreSQL takes a second batch while the
        // first commits.
        let writers = match store.backend() {
            crate::store::Backend::Sqlite => 1,
            crate::store::Backend::Postgres => 2,
        };
        let batch = settings.director.checkin_batch;
        let checkins =
            group_commit::CheckinWriter::new(group_commit::Checkins(store.clone()), batch, writers);
        let assignments = group_commit::AssignmentWriter::new(
            group_commit::Assignments(store.clone()),
            batch,
            writers,
        );
        Engine {
            inner: Arc::new(Inner {
                store,
                keys,
                settings,
                public_url,
                outbox,
                jobs,
                snapshot: assign::SnapshotCache::default(),
                device_keys: intake::KeyMemo::default(),
                verified_progress: intake::VerifiedMemo::default(),
                checkins,
                assignments,
                rollout_relay,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// A release was published: directors must bind to its targets from now on.
    pub fn targets_changed(&self) {
        self.inner.snapshot.invalidate();
    }

    /// Queues a message for vehicles; never waits (a full outbox drops and counts it).
    fn send_control(
        &self,
        vehicle_id: &str,
        command: ControlCommand,
        deployment_id: Option<String>,
        now: NowMs,
    ) {
        self.inner
            .outbox
            .send(self.control_message(vehicle_id, command, deployment_id, now));
    }

    fn control_message(
        &self,
        vehicle_id: &str,
        command: ControlCommand,
        deployment_id: Option<String>,
        now: NowMs,
    ) -> Outgoing {
        let message = ControlMessage {
            vehicle_id: vehicle_id.to_owned(),
            command,
            deployment_id,
            issued_at: timestamp(now),
        };
        Outgoing {
            topic: protocol::topic(vehicle_id, Channel::Control),
            payload: sign_message(PAYLOAD_TYPE_CONTROL, &message, &self.inner.keys.director),
        }
    }

    /// Sends a change's control messages in the background, in order, each waiting for
    /// room in the outbox: a fan-out to a whole fleet (a pause's `poll_now` to every
    /// vehicle mid-update) is not cut at the outbox's size, and the caller (an API
    /// request, the consumer) does not wait for the signing.
    fn send_controls(&self, controls: Vec<(String, ControlCommand, String)>, now: NowMs) {
        if controls.is_empty() {
            return;
        }
        let engine = self.clone();
        tokio::spawn(async move {
            for (vehicle_id, command, deployment_id) in controls {
                let message =
                    engine.control_message(&vehicle_id, command, Some(deployment_id), now);
                // Without a broker each fails at once, counted.
                engine.inner.outbox.send_waiting(message).await;
            }
        });
    }

    /// The one path for every rollout change (operators, breakers, phase gates, the
    /// event consumer): read, plan (pure), persist in one transaction, run the effects.
    /// A change that raced another is planned again from the rollout as it is now.
    pub async fn change_rollout(
        &self,
        actor: &Actor,
        rollout_id: &str,
        request: &RolloutRequest,
        now: NowMs,
    ) -> Result<RolloutRecord, ChangeFailed> {
        let mut record = self.inner.store.get_rollout(rollout_id).await?;
        for _ in 0..3 {
            let facts = self.facts_for(&record, request).await?;
            let change = plan::plan(&record, request, &facts, now)?;
            let event = self.inner.rollout_relay.as_ref().map(|_| {
                serde_json::to_string(&crate::events::rollout_event(&change))
                    .expect("a rollout event serialises")
            });
            match self
                .inner
                .store
                .apply_rollout_change(actor, &change, event.as_deref())
                .await
            {
                Ok((updated, cancelled)) => {
                    if let Some(relay) = &self.inner.rollout_relay {
                        relay.notify_one();
                    }
                    self.run_effects(&updated, &change, &cancelled, now).await?;
                    return Ok(updated);
                }
                Err(ChangeError::Raced(latest)) => record = *latest,
                Err(ChangeError::Store(e)) => return Err(e.into()),
            }
        }
        // Each round planned from the rollout as it was then; three races in a row
        // means others keep changing it: report that nothing was changed.
        Err(PlanError::Unchanged.into())
    }

    /// What the planner needs from IO for this request: only a rollback (asked, or the
    /// breaker policy) needs the `security_version` blockers.
    async fn facts_for(
        &self,
        record: &RolloutRecord,
        request: &RolloutRequest,
    ) -> Result<Facts, StoreError> {
        let may_roll_back = match request {
            RolloutRequest::Operator(action) => *action == crate::rollout::RolloutAction::Rollback,
            RolloutRequest::Breaker { .. } => {
                record.spec.abort_criteria.action == crate::rollout::BreakerAction::Rollback
            }
            RolloutRequest::AdvancePhase { .. } => false,
        };
        Ok(Facts {
            rollback_blockers: if may_roll_back {
                self.rollback_blockers(record).await?
            } else {
                Vec::new()
            },
        })
    }

    async fn run_effects(
        &self,
        rollout: &RolloutRecord,
        change: &RolloutChange,
        cancelled: &[DeploymentRecord],
        now: NowMs,
    ) -> Result<(), StoreError> {
        let mut controls = Vec::new();
        for effect in &change.effects {
            match effect {
                Effect::Invalidate => self.inner.snapshot.invalidate(),
                Effect::CancelUnfinished => {}
                Effect::CancelVehicles => {
                    for d in cancelled {
                        controls.push((d.vehicle_id.clone(), ControlCommand::Cancel, d.id.clone()));
                    }
                }
                Effect::EnqueueDeltas => {
                    // Queued in the background: a rollout start answers at once, and the
                    // director sends full images until a delta is built.
                    let engine = self.clone();
                    let rollout = rollout.clone();
                    tokio::spawn(async move {
                        match engine.enqueue_deltas(&rollout).await {
                            Ok(queued) if queued > 0 => engine.inner.jobs.notify_waiters(),
                            Ok(_) => {}
                            Err(err) => {
                                tracing::warn!(rollout = %rollout.id, %err, "queueing delta builds failed")
                            }
                        }
                    });
                }
                Effect::PollUnfinished | Effect::PollStopped | Effect::RollbackInstalled => {
                    for d in self
                        .inner
                        .store
                        .deployments_for_rollout(&rollout.id)
                        .await?
                    {
                        match effect {
                            Effect::PollUnfinished if !d.status.is_terminal() => {
                                controls.push((d.vehicle_id, ControlCommand::PollNow, d.id))
                            }
                            Effect::PollStopped
                                if d.status == DeploymentStatus::Cancelled
                                    && d.reason_code.as_deref()
                                        == Some(crate::director::STOPPED_BY_ROLLOUT) =>
                            {
                                controls.push((d.vehicle_id, ControlCommand::PollNow, d.id))
                            }
                            Effect::RollbackInstalled
                                if matches!(
                                    d.status,
                                    DeploymentStatus::Installed | DeploymentStatus::Committed
                                ) =>
                            {
                                controls.push((d.vehicle_id, ControlCommand::Rollback, d.id))
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        self.send_controls(controls, now);
        Ok(())
    }

    /// The release's images by hardware id, for a rollout.
    pub(crate) async fn targets_of(
        &self,
        rollout: &RolloutRecord,
    ) -> Result<BTreeMap<String, TargetView>, StoreError> {
        self.targets_of_release(&rollout.release_id).await
    }

    /// A release's images by hardware id.
    pub(crate) async fn targets_of_release(
        &self,
        release_id: &str,
    ) -> Result<BTreeMap<String, TargetView>, StoreError> {
        let release = self.inner.store.get_release(release_id).await?;
        Ok(release
            .images
            .iter()
            .map(|image| {
                (
                    image.hardware_id.clone(),
                    TargetView {
                        name: image.name.clone(),
                        version: image.version.clone(),
                        security_version: release.security_version,
                        length: image.length,
                        sha256: image.sha256,
                    },
                )
            })
            .collect())
    }

    /// The newest targets metadata's images by (hardware id, SHA-256): what any vehicle
    /// can be sent to, including back.
    pub(crate) async fn listed_images(
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

    /// Why a rollout cannot be rolled back: deployments whose previous image has a lower
    /// `security_version` than the release (vehicles must refuse it). Empty = permitted.
    pub async fn rollback_blockers(
        &self,
        rollout: &RolloutRecord,
    ) -> Result<Vec<String>, StoreError> {
        let targets = self.targets_of(rollout).await?;
        let listed = self.listed_images().await?;
        let deployments = self
            .inner
            .store
            .deployments_for_rollout(&rollout.id)
            .await?;
        Ok(director::rollback_blockers(
            &targets,
            &listed,
            &deployments
                .iter()
                .filter_map(|d| d.from_sha256)
                .collect::<Vec<_>>(),
        ))
    }

    /// Enqueues a delta build for every source image installed in the selected fleet
    /// whose bytes the server holds. Returns how many new jobs were queued.
    pub async fn enqueue_deltas(&self, rollout: &RolloutRecord) -> Result<u64, StoreError> {
        let store = &self.inner.store;
        let targets = self.targets_of(rollout).await?;
        let mut sources = std::collections::BTreeSet::new();
        for vehicle in store.all_vehicles(i64::MAX).await? {
            let view = assign::stored_view(&vehicle);
            if !director::selector_matches(&rollout.spec, &view) {
                continue;
            }
            for ecu in &view.ecus {
                if let (Some(target), Some(installed)) =
                    (targets.get(&ecu.hardware_id), &ecu.installed)
                {
                    if installed.sha256 != target.sha256 {
                        sources.insert((ecu.hardware_id.clone(), installed.sha256, target.sha256));
                    }
                }
            }
        }
        let mut queued = 0;
        for (hardware_id, source, target) in sources {
            if store.image_by_sha256(&source.to_hex()).await?.is_none() {
                continue;
            }
            if store
                .enqueue_delta(
                    &rollout.id,
                    &hardware_id,
                    &source.to_hex(),
                    &target.to_hex(),
                )
                .await?
            {
                queued += 1;
            }
        }
        Ok(queued)
    }
}
