//! Assignment: a verified check-in in, a signed directive out.
//!
//! A check-in's cost must not grow with the fleet. What every check-in needs about the
//! rollouts (the active ones with their targets, built deltas, committed counts for the
//! exponential rate, recent starts for the rate limit, rolled-back rollouts and the
//! images vehicles can be sent back to) is read into a [`Snapshot`] at most once per
//! [`SNAPSHOT_MS`] and at once after any rollout change this engine makes; a check-in
//! then costs the vehicle's own rows: one read of the vehicle, one read of its
//! deployments, one write (check-in plus director version), and a write only when it is
//! assigned something or proves a commit. Other replicas' changes are seen within
//! [`SNAPSHOT_MS`].

use super::{Engine, NowMs};
use crate::director::{
    self, DeltaBlob, DeploymentStatus, Directive, DirectorInput, EcuView, ExistingDeployment,
    RollbackCandidate, RollbackStep, RolloutView, TargetView, VehicleView,
};
use crate::rollout::{effective_rate_per_minute, RolloutState};
use crate::store::{AssignmentWrite, DeploymentRecord, RolloutRecord, StoreError, VehicleRecord};
use ota_core::encoding::Sha256Digest;
use ota_core::metadata::TargetsBinding;
use ota_core::protocol::CheckIn;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How long a snapshot of the rollouts serves check-ins before it is read again.
pub const SNAPSHOT_MS: i64 = 1_000;

/// One active (running or paused) rollout as check-ins see it.
#[derive(Debug)]
pub struct ActiveRollout {
    pub record: RolloutRecord,
    pub targets: BTreeMap<String, TargetView>,
    /// Committed deployments when the snapshot was read (exponential rate).
    pub committed: u64,
    /// Vehicles started in the minute before the snapshot was read.
    pub started_last_minute: u64,
    /// Vehicles this engine started since the snapshot was read.
    pub started_since: AtomicU64,
}

/// What every check-in needs about the rollouts.
#[derive(Debug)]
pub struct Snapshot {
    pub read_at_ms: i64,
    /// Running and paused rollouts, oldest first (the director's priority order).
    pub active: Vec<ActiveRollout>,
    /// Rolled-back rollouts with their targets: vehicles they updated are sent home.
    pub rolled_back: BTreeMap<String, (RolloutRecord, BTreeMap<String, TargetView>)>,
    pub deltas: BTreeMap<(Sha256Digest, Sha256Digest), DeltaBlob>,
    /// The newest targets' images by (hardware id, SHA-256).
    pub listed: BTreeMap<(String, Sha256Digest), TargetView>,
    /// The newest targets document, which every director is bound to (PROTOCOL.md §4.3).
    pub targets: TargetsBinding,
}

/// The current snapshot, shared by concurrent check-ins; reloaded by one of them.
#[derive(Debug, Default)]
pub struct SnapshotCache {
    current: Mutex<Option<Arc<Snapshot>>>,
    reload: tokio::sync::Mutex<()>,
}

impl SnapshotCache {
    fn fresh(&self, now: NowMs) -> Option<Arc<Snapshot>> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current
            .as_ref()
            .filter(|s| now.saturating_sub(s.read_at_ms) < SNAPSHOT_MS && s.read_at_ms <= now)
            .cloned()
    }

    /// Forgets the snapshot: the next check-in reads the rollouts (and the newest
    /// targets) again.
    pub fn invalidate(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// A vehicle as the store last recorded it.
pub fn stored_view(vehicle: &VehicleRecord) -> VehicleView {
    VehicleView {
        id: vehicle.id.clone(),
        tags: vehicle.tags.clone(),
        ecus: vehicle
            .ecus
            .iter()
            .map(|e| EcuView {
                ecu: e.ecu.clone(),
                hardware_id: e.hardware_id.clone(),
                installed: e.installed_image(),
            })
            .collect(),
    }
}

/// A vehicle as its check-in reports it: the registered ECUs, with what they run now.
pub fn reported_view(vehicle: &VehicleRecord, checkin: &CheckIn) -> VehicleView {
    VehicleView {
        id: vehicle.id.clone(),
        tags: vehicle.tags.clone(),
        ecus: vehicle
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
            .collect(),
    }
}

/// Unfinished deployments of active rollouts that the check-in proves committed: the
/// ECU now runs the rollout's target image.
pub fn proven_commits<'a>(
    vehicle: &VehicleView,
    deployments: &'a [DeploymentRecord],
    active: &[ActiveRollout],
) -> Vec<&'a DeploymentRecord> {
    deployments
        .iter()
        .filter(|d| !d.status.is_terminal())
        .filter(|d| {
            active.iter().any(|r| {
                r.record.id == d.rollout_id
                    && vehicle.ecus.iter().any(|e| {
                        e.ecu == d.ecu
                            && r.targets.get(&e.hardware_id).map(|t| t.sha256)
                                == e.installed.as_ref().map(|i| i.sha256)
                    })
            })
        })
        .collect()
}

/// The vehicle's installed or committed deployments of rolled-back rollouts that know
/// the image they replaced: each with its rollout id and phase.
pub fn rollback_candidates(
    vehicle: &VehicleView,
    deployments: &[DeploymentRecord],
    snapshot: &Snapshot,
) -> Vec<(RollbackCandidate, String, usize)> {
    deployments
        .iter()
        .filter(|d| {
            matches!(
                d.status,
                DeploymentStatus::Installed | DeploymentStatus::Committed
            )
        })
        .filter_map(|d| {
            let from = d.from_sha256?;
            let (rollout, targets) = snapshot.rolled_back.get(&d.rollout_id)?;
            let ecu = vehicle.ecus.iter().find(|e| e.ecu == d.ecu)?;
            let release = targets.get(&ecu.hardware_id)?;
            Some((
                RollbackCandidate {
                    deployment_id: d.id.clone(),
                    ecu: d.ecu.clone(),
                    release: release.clone(),
                    previous: snapshot
                        .listed
                        .get(&(ecu.hardware_id.clone(), from))
                        .cloned(),
                    preconditions: rollout.spec.preconditions.clone(),
                },
                rollout.id.clone(),
                d.phase,
            ))
        })
        .collect()
}

/// The director's view of each active rollout, with this vehicle's deployments in it.
pub fn rollout_views(snapshot: &Snapshot, deployments: &[DeploymentRecord]) -> Vec<RolloutView> {
    snapshot
        .active
        .iter()
        .map(|r| {
            let rollout = &r.record;
            let started = r
                .started_last_minute
                .saturating_add(r.started_since.load(Ordering::Relaxed));
            RolloutView {
                id: rollout.id.clone(),
                state: rollout.state,
                breaker: rollout.breaker_state,
                salt: hex::decode(&rollout.salt)
                    .unwrap_or_else(|_| rollout.salt.clone().into_bytes()),
                current_phase: rollout.current_phase,
                targets: r.targets.clone(),
                started_last_minute: started.min(u64::from(u32::MAX)) as u32,
                rate_per_minute: effective_rate_per_minute(&rollout.spec.rate_limit, r.committed),
                existing: deployments
                    .iter()
                    .filter(|d| d.rollout_id == rollout.id)
                    .map(|d| ExistingDeployment {
                        deployment_id: d.id.clone(),
                        ecu: d.ecu.clone(),
                        status: d.status,
                        attempts: d.attempts,
                        updated_unix_seconds: d.updated_ms / 1000,
                        reason_code: d.reason_code.clone(),
                    })
                    .collect(),
                spec: rollout.spec.clone(),
            }
        })
        .collect()
}

impl Engine {
    /// The rollouts as check-ins see them: the cached snapshot, or a fresh read.
    pub async fn snapshot(&self, now: NowMs) -> Result<Arc<Snapshot>, StoreError> {
        let cache = &self.inner.snapshot;
        if let Some(snapshot) = cache.fresh(now) {
            return Ok(snapshot);
        }
        let _reloading = cache.reload.lock().await;
        if let Some(snapshot) = cache.fresh(now) {
            return Ok(snapshot);
        }
        let snapshot = Arc::new(self.read_snapshot(now).await?);
        *cache.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(snapshot.clone());
        Ok(snapshot)
    }

    async fn read_snapshot(&self, now: NowMs) -> Result<Snapshot, StoreError> {
        let store = &self.inner.store;
        let mut snapshot = Snapshot {
            read_at_ms: now,
            active: Vec::new(),
            rolled_back: BTreeMap::new(),
            deltas: BTreeMap::new(),
            listed: BTreeMap::new(),
            targets: store.targets_binding().await?,
        };
        let mut target_digests = Vec::new();
        for record in store.active_rollouts().await? {
            let targets = self.targets_of(&record).await?;
            target_digests.extend(targets.values().map(|t| t.sha256));
            let committed = store
                .phase_counts(&record.id)
                .await?
                .values()
                .map(|c| c.committed)
                .sum();
            let started_last_minute = store
                .vehicles_started_since(&record.id, now - 60_000)
                .await?;
            snapshot.active.push(ActiveRollout {
                record,
                targets,
                committed,
                started_last_minute,
                started_since: AtomicU64::new(0),
            });
        }
        for record in store.list_rollouts(Some(RolloutState::RolledBack)).await? {
            let targets = self.targets_of(&record).await?;
            snapshot
                .rolled_back
                .insert(record.id.clone(), (record, targets));
        }
        target_digests.sort();
        target_digests.dedup();
        snapshot.deltas = store
            .built_deltas_to(&target_digests)
            .await?
            .into_iter()
            .map(|d| {
                (
                    (d.source, d.target),
                    DeltaBlob {
                        length: d.length,
                        sha256: d.sha256,
                    },
                )
            })
            .collect();
        if !snapshot.rolled_back.is_empty() {
            snapshot.listed = self.listed_images().await?;
        }
        Ok(snapshot)
    }

    /// Decides for one vehicle, given its deployments, and records what the decision
    /// implies about them: deployments committed (the vehicle runs the target) and
    /// rolled back (it runs its previous image again). New deployments are returned to
    /// be recorded (with others, [`Engine::handle_checkins`]); they already count
    /// against their rollout's rate limit.
    pub(super) async fn decide(
        &self,
        vehicle: &VehicleView,
        mut deployments: Vec<DeploymentRecord>,
        snapshot: &Snapshot,
        now: NowMs,
    ) -> Result<(Directive, Option<AssignmentWrite>), StoreError> {
        let store = &self.inner.store;
        let poll_seconds = self.inner.settings.director.poll_seconds;
        let input = |rollouts| DirectorInput {
            vehicle,
            rollouts,
            deltas: &snapshot.deltas,
            now_unix_seconds: now.div_euclid(1000),
            blob_base_url: &self.inner.public_url,
            poll_seconds,
        };
        // Vehicles updated by a rolled-back rollout are sent home before anything else.
        let candidates = rollback_candidates(vehicle, &deployments, snapshot);
        if !candidates.is_empty() {
            let mut assignments = Vec::new();
            let mut first = None;
            let plain: Vec<RollbackCandidate> =
                candidates.iter().map(|(c, _, _)| c.clone()).collect();
            for step in director::plan_rollback(&input(&[]), &plain) {
                match step {
                    RollbackStep::Done { deployment_id } => {
                        store
                            .mark_rolled_back(&deployment_id, &vehicle.id, now)
                            .await?;
                    }
                    RollbackStep::Assign(assignment) => {
                        if first.is_none() {
                            first = candidates
                                .iter()
                                .find(|(c, _, _)| c.deployment_id == assignment.deployment_id)
                                .map(|(_, rollout, phase)| (rollout.clone(), *phase));
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
            if let Some((rollout_id, phase)) = first {
                let directive = Directive::Assign {
                    rollout_id,
                    phase,
                    assignments,
                    new_deployments: Vec::new(),
                    next_poll_seconds: poll_seconds,
                };
                return Ok((directive, None));
            }
        }
        let proven: Vec<String> = proven_commits(vehicle, &deployments, &snapshot.active)
            .into_iter()
            .map(|d| d.id.clone())
            .collect();
        for id in proven {
            if store
                .update_deployment(
                    &id,
                    &vehicle.id,
                    DeploymentStatus::Committed,
                    u64::MAX,
                    None,
                    now,
                )
                .await?
            {
                if let Some(d) = deployments.iter_mut().find(|d| d.id == id) {
                    d.status = DeploymentStatus::Committed;
                }
            }
        }
        let views = rollout_views(snapshot, &deployments);
        let directive = director::decide(&input(&views));
        let assignment = match &directive {
            Directive::Assign {
                rollout_id,
                phase,
                new_deployments,
                ..
            } if !new_deployments.is_empty() => {
                // Counted now, so the next vehicle of the batch sees it.
                if let Some(r) = snapshot.active.iter().find(|r| &r.record.id == rollout_id) {
                    r.started_since.fetch_add(1, Ordering::Relaxed);
                }
                Some(AssignmentWrite {
                    rollout_id: rollout_id.clone(),
                    vehicle_id: vehicle.id.clone(),
                    phase: *phase,
                    new: new_deployments.clone(),
                    now,
                })
            }
            _ => None,
        };
        Ok((directive, assignment))
    }
}
