//! The director, pure: what one vehicle should do now, and the signed metadata saying so.
//!
//! [`decide`] takes a verified check-in's view of the vehicle, the active rollouts with
//! their phase, breaker, rate budget and this vehicle's existing deployments, and the
//! deltas that have been built, and returns either nothing (with the next poll interval)
//! or an assignment per ECU: the release's image and the best delta from what the ECU
//! runs now, else the full image. [`sign_directive`] turns that into director metadata
//! with the next version and a short expiry. Time, versions and keys are passed in.

use crate::breaker::BreakerState;
use crate::rollout::{Preconditions, RolloutSpec, RolloutState};
use ota_core::cohort;
use ota_core::encoding::Sha256Digest;
use ota_core::envelope::Envelope;
use ota_core::key::SigningKey;
use ota_core::metadata::{
    to_payload, Assignment, DeltaRef, DirectorMetadata, ImageRef, Role, TargetsBinding,
};
use ota_core::protocol::InstalledImage;
use ota_core::time::Timestamp;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcuView {
    pub ecu: String,
    pub hardware_id: String,
    pub installed: Option<InstalledImage>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VehicleView {
    pub id: String,
    pub tags: Vec<String>,
    pub ecus: Vec<EcuView>,
}

/// A release's image for one hardware id, as its targets metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetView {
    pub name: String,
    pub version: String,
    pub security_version: u64,
    pub length: u64,
    pub sha256: Sha256Digest,
}

/// Where one deployment of a vehicle stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    Assigned,
    Downloading,
    Installed,
    Committed,
    Failed,
    RolledBack,
    Cancelled,
}

impl DeploymentStatus {
    pub const ALL: [DeploymentStatus; 7] = [
        DeploymentStatus::Assigned,
        DeploymentStatus::Downloading,
        DeploymentStatus::Installed,
        DeploymentStatus::Committed,
        DeploymentStatus::Failed,
        DeploymentStatus::RolledBack,
        DeploymentStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Assigned => "assigned",
            DeploymentStatus::Downloading => "downloading",
            DeploymentStatus::Installed => "installed",
            DeploymentStatus::Committed => "committed",
            DeploymentStatus::Failed => "failed",
            DeploymentStatus::RolledBack => "rolled_back",
            DeploymentStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<DeploymentStatus> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DeploymentStatus::Committed
                | DeploymentStatus::Failed
                | DeploymentStatus::RolledBack
                | DeploymentStatus::Cancelled
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingDeployment {
    pub deployment_id: String,
    pub ecu: String,
    pub status: DeploymentStatus,
    /// How many times it has been handed out (retry policy).
    pub attempts: u32,
    /// When its status last changed (retry backoff).
    pub updated_unix_seconds: i64,
    /// Why it ended, for a finished one (e.g. [`STOPPED_BY_ROLLOUT`]).
    pub reason_code: Option<String>,
}

/// The reason code of deployments cancelled because their rollout stopped them (a
/// breaker opening, an abort, a rollback), as opposed to an operator's cancel of one
/// vehicle or a decommissioning. In a rollout that runs again they are handed out again.
pub const STOPPED_BY_ROLLOUT: &str = "rollout_stopped";

#[derive(Debug, Clone)]
pub struct RolloutView {
    pub id: String,
    pub state: RolloutState,
    pub breaker: BreakerState,
    pub salt: Vec<u8>,
    pub spec: RolloutSpec,
    pub current_phase: usize,
    /// Hardware id → the release's image for it.
    pub targets: BTreeMap<String, TargetView>,
    /// Vehicles newly assigned in the last 60 seconds, and the allowed rate.
    pub started_last_minute: u32,
    pub rate_per_minute: u32,
    /// This vehicle's deployments in this rollout.
    pub existing: Vec<ExistingDeployment>,
}

/// A built delta blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaBlob {
    pub length: u64,
    pub sha256: Sha256Digest,
}

#[derive(Debug, Clone)]
pub struct DirectorInput<'a> {
    pub vehicle: &'a VehicleView,
    /// In priority order (oldest first): the first that yields an assignment wins.
    pub rollouts: &'a [RolloutView],
    /// (source SHA-256, target SHA-256) → delta.
    pub deltas: &'a BTreeMap<(Sha256Digest, Sha256Digest), DeltaBlob>,
    pub now_unix_seconds: i64,
    /// e.g. `https://ota.example.com`; blob URLs are `{base}/v1/blobs/{sha256}`.
    pub blob_base_url: &'a str,
    pub poll_seconds: u32,
}

/// Why a vehicle gets nothing now (reported in logs and metrics, not to the vehicle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NothingReason {
    NoActiveRollout,
    NotSelected,
    UpToDate,
    AlreadyFinished,
    Paused,
    BreakerOpen,
    OutsideCohort,
    OutsideMaintenanceWindow,
    RateLimited,
}

/// A deployment the caller must record before sending the directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeployment {
    pub deployment_id: String,
    pub ecu: String,
    pub from_sha256: Option<Sha256Digest>,
    /// A failed (retry policy) or cancelled (breaker resumed) deployment handed out
    /// again (same id).
    pub retry: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directive {
    Nothing {
        next_poll_seconds: u32,
        reason: NothingReason,
    },
    Assign {
        rollout_id: String,
        phase: usize,
        assignments: Vec<Assignment>,
        /// Empty when re-sending assignments the vehicle already has.
        new_deployments: Vec<NewDeployment>,
        next_poll_seconds: u32,
    },
}

/// Deterministic deployment id: the same (rollout, vehicle, ECU) always gets the same id,
/// so a decision repeated after a crash or by another replica is idempotent.
pub fn deployment_id(rollout_id: &str, vehicle_id: &str, ecu: &str) -> String {
    let digest = Sha256Digest::of(format!("{rollout_id}|{vehicle_id}|{ecu}").as_bytes());
    format!("dep_{}", &digest.to_hex()[..24])
}

pub fn selector_matches(spec: &RolloutSpec, vehicle: &VehicleView) -> bool {
    let s = &spec.selector;
    (s.vehicle_ids.is_empty() || s.vehicle_ids.contains(&vehicle.id))
        && (s.hardware_ids.is_empty()
            || vehicle
                .ecus
                .iter()
                .any(|e| s.hardware_ids.contains(&e.hardware_id)))
        && s.tags.iter().all(|t| vehicle.tags.contains(t))
        && (s.current_versions.is_empty()
            || vehicle.ecus.iter().any(|e| {
                e.installed
                    .as_ref()
                    .is_some_and(|i| s.current_versions.contains(&i.version))
            }))
}

/// Whether the director would assign this rollout to the vehicle (cohort, rate and
/// state aside): it is selected, and one of its ECUs has a hardware id the release
/// targets and does not already run that target. Draft previews count exactly these.
pub fn would_assign(
    spec: &RolloutSpec,
    targets: &BTreeMap<String, TargetView>,
    vehicle: &VehicleView,
) -> bool {
    selector_matches(spec, vehicle)
        && vehicle.ecus.iter().any(|ecu| {
            targets
                .get(&ecu.hardware_id)
                .is_some_and(|t| ecu.installed.as_ref().map(|i| i.sha256) != Some(t.sha256))
        })
}

fn assignment_for(
    preconditions: &Preconditions,
    input: &DirectorInput<'_>,
    ecu: &EcuView,
    target: &TargetView,
    deployment_id: String,
) -> Assignment {
    let url = |sha: &Sha256Digest| {
        format!(
            "{}/v1/blobs/{sha}",
            input.blob_base_url.trim_end_matches('/')
        )
    };
    let delta = ecu.installed.as_ref().and_then(|installed| {
        input
            .deltas
            .get(&(installed.sha256, target.sha256))
            .map(|blob| DeltaRef {
                source_sha256: installed.sha256,
                source_length: installed.length,
                length: blob.length,
                sha256: blob.sha256,
                url: url(&blob.sha256),
            })
    });
    Assignment {
        ecu: ecu.ecu.clone(),
        hardware_id: ecu.hardware_id.clone(),
        deployment_id,
        image: ImageRef {
            name: target.name.clone(),
            version: target.version.clone(),
            length: target.length,
            sha256: target.sha256,
            url: url(&target.sha256),
        },
        delta,
        preconditions: (!preconditions.is_unconstrained()).then(|| preconditions.clone()),
    }
}

/// Why a release cannot be rolled back: previous images (`from`, what deployments
/// replaced) with a lower `security_version` than the release, which vehicles must
/// refuse. Empty = permitted. One line per (hardware id, previous version).
pub fn rollback_blockers(
    targets: &BTreeMap<String, TargetView>,
    listed: &BTreeMap<(String, Sha256Digest), TargetView>,
    from: &[Sha256Digest],
) -> Vec<String> {
    let mut blockers = Vec::new();
    for sha in from {
        for (hardware_id, release) in targets {
            if let Some(previous) = listed.get(&(hardware_id.clone(), *sha)) {
                if let Err(RollbackBlock::SecurityVersion {
                    previous: p,
                    release: r,
                }) = rollback_permitted(previous, release)
                {
                    let text = format!(
                        "{hardware_id} {} has security_version {p}, below the release's {r}",
                        previous.version
                    );
                    if !blockers.contains(&text) {
                        blockers.push(text);
                    }
                }
            }
        }
    }
    blockers
}

/// One rollout's decision for the vehicle.
fn decide_one(
    rollout: &RolloutView,
    input: &DirectorInput<'_>,
) -> Result<Directive, NothingReason> {
    let vehicle = input.vehicle;
    if !matches!(rollout.state, RolloutState::Running | RolloutState::Paused) {
        return Err(NothingReason::NoActiveRollout);
    }
    if !selector_matches(&rollout.spec, vehicle) {
        return Err(NothingReason::NotSelected);
    }
    let targeted: Vec<(&EcuView, &TargetView)> = vehicle
        .ecus
        .iter()
        .filter_map(|ecu| rollout.targets.get(&ecu.hardware_id).map(|t| (ecu, t)))
        .collect();
    // Deployments already handed out keep being re-sent until they finish, even while the
    // rollout is paused: an operator's pause stops new vehicles, it does not strand ones
    // mid-update (as AWS IoT Jobs' pause does). Abort, rollback and an opened breaker stop
    // those not yet installing through `cancel`.
    let mut retries: BTreeMap<&str, &str> = BTreeMap::new();
    if !rollout.existing.is_empty() {
        let in_flight: Vec<Assignment> = targeted
            .iter()
            .filter_map(|(ecu, target)| {
                rollout
                    .existing
                    .iter()
                    .find(|d| d.ecu == ecu.ecu && !d.status.is_terminal())
                    .map(|d| {
                        assignment_for(
                            &rollout.spec.preconditions,
                            input,
                            ecu,
                            target,
                            d.deployment_id.clone(),
                        )
                    })
            })
            .collect();
        if !in_flight.is_empty() {
            return Ok(Directive::Assign {
                rollout_id: rollout.id.clone(),
                phase: rollout.current_phase,
                assignments: in_flight,
                new_deployments: Vec::new(),
                next_poll_seconds: input.poll_seconds,
            });
        }
        // Failed deployments go out again while the retry policy allows, after its
        // backoff, through the same admission checks as a new vehicle. So do the ones the
        // rollout itself stopped: in a rollout still active only an opened breaker does
        // that (abort and rollback end the rollout), and its resume must not lose them;
        // that costs no attempt and waits for no backoff. An operator's cancel of one
        // vehicle stays final.
        let retry = &rollout.spec.retry;
        for d in &rollout.existing {
            let due = d
                .updated_unix_seconds
                .saturating_add(retry.backoff_seconds as i64)
                <= input.now_unix_seconds;
            let again = match d.status {
                DeploymentStatus::Failed => d.attempts < retry.max_attempts && due,
                DeploymentStatus::Cancelled => d.reason_code.as_deref() == Some(STOPPED_BY_ROLLOUT),
                _ => false,
            };
            if again {
                retries.insert(d.ecu.as_str(), d.deployment_id.as_str());
            }
        }
        if retries.is_empty() {
            return Err(NothingReason::AlreadyFinished);
        }
    }
    let needed: Vec<(&EcuView, &TargetView)> = targeted
        .into_iter()
        .filter(|(ecu, target)| {
            if rollout.existing.is_empty() {
                ecu.installed.as_ref().map(|i| i.sha256) != Some(target.sha256)
            } else {
                retries.contains_key(ecu.ecu.as_str())
            }
        })
        .collect();
    if needed.is_empty() {
        return Err(NothingReason::UpToDate);
    }
    if rollout.state == RolloutState::Paused {
        return Err(NothingReason::Paused);
    }
    if !rollout.breaker.admits_new_assignments() {
        return Err(NothingReason::BreakerOpen);
    }
    let percent = rollout.spec.phase_percent_millis(rollout.current_phase);
    if !cohort::admits(&rollout.salt, &vehicle.id, percent) {
        return Err(NothingReason::OutsideCohort);
    }
    if let Some(window) = &rollout.spec.maintenance_window {
        if !window.contains(input.now_unix_seconds) {
            return Err(NothingReason::OutsideMaintenanceWindow);
        }
    }
    if rollout.started_last_minute >= rollout.rate_per_minute {
        return Err(NothingReason::RateLimited);
    }
    let mut assignments = Vec::new();
    let mut new_deployments = Vec::new();
    for (ecu, target) in needed {
        let retry = retries.get(ecu.ecu.as_str()).map(|id| (*id).to_owned());
        let id = retry
            .clone()
            .unwrap_or_else(|| deployment_id(&rollout.id, &vehicle.id, &ecu.ecu));
        new_deployments.push(NewDeployment {
            deployment_id: id.clone(),
            ecu: ecu.ecu.clone(),
            from_sha256: ecu.installed.as_ref().map(|i| i.sha256),
            retry: retry.is_some(),
        });
        assignments.push(assignment_for(
            &rollout.spec.preconditions,
            input,
            ecu,
            target,
            id,
        ));
    }
    Ok(Directive::Assign {
        rollout_id: rollout.id.clone(),
        phase: rollout.current_phase,
        assignments,
        new_deployments,
        next_poll_seconds: input.poll_seconds,
    })
}

/// The decision for one vehicle: the first rollout (in the given order) that assigns
/// something wins; otherwise nothing, with the reason from the first rollout that
/// selected the vehicle (or `NoActiveRollout`).
pub fn decide(input: &DirectorInput<'_>) -> Directive {
    let mut reason = NothingReason::NoActiveRollout;
    for rollout in input.rollouts {
        match decide_one(rollout, input) {
            Ok(directive) => return directive,
            Err(why) => {
                if reason == NothingReason::NoActiveRollout
                    || (reason == NothingReason::NotSelected
                        && why != NothingReason::NoActiveRollout)
                {
                    reason = why;
                }
            }
        }
    }
    Directive::Nothing {
        next_poll_seconds: input.poll_seconds,
        reason,
    }
}

/// One ECU that a rolled-back rollout updated, and what it ran before.
#[derive(Debug, Clone)]
pub struct RollbackCandidate {
    pub deployment_id: String,
    pub ecu: String,
    /// The image the rollout installed.
    pub release: TargetView,
    /// The image the ECU ran before, as the newest targets list it (`None`: not listed,
    /// so no vehicle could verify an assignment back to it).
    pub previous: Option<TargetView>,
    pub preconditions: Preconditions,
}

/// Why an ECU is not sent back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackBlock {
    /// The release raised `security_version`: the vehicle would refuse the old image,
    /// and must (anti-rollback), so it is never offered.
    SecurityVersion { previous: u64, release: u64 },
    /// The previous image is not in the targets metadata.
    PreviousNotListed,
    /// The ECU runs neither the release's nor the previous image.
    RunsAnotherImage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackStep {
    /// The ECU runs its previous image again: the deployment is rolled back.
    Done { deployment_id: String },
    /// Send the ECU back to its previous image.
    Assign(Box<Assignment>),
    Blocked {
        deployment_id: String,
        reason: RollbackBlock,
    },
}

/// Whether going back from the release to the previous image is allowed at all: a
/// vehicle's `security_version` floor never goes down.
pub fn rollback_permitted(
    previous: &TargetView,
    release: &TargetView,
) -> Result<(), RollbackBlock> {
    if previous.security_version < release.security_version {
        return Err(RollbackBlock::SecurityVersion {
            previous: previous.security_version,
            release: release.security_version,
        });
    }
    Ok(())
}

/// What each ECU of a rolled-back rollout must do, from what the vehicle runs now.
/// The assignment back uses the best delta (release → previous) when one was built.
pub fn plan_rollback(
    input: &DirectorInput<'_>,
    candidates: &[RollbackCandidate],
) -> Vec<RollbackStep> {
    candidates
        .iter()
        .filter_map(|candidate| {
            let ecu = input.vehicle.ecus.iter().find(|e| e.ecu == candidate.ecu)?;
            let installed = ecu.installed.as_ref().map(|i| i.sha256);
            let blocked = |reason| RollbackStep::Blocked {
                deployment_id: candidate.deployment_id.clone(),
                reason,
            };
            let Some(previous) = &candidate.previous else {
                return Some(blocked(RollbackBlock::PreviousNotListed));
            };
            if installed == Some(previous.sha256) {
                return Some(RollbackStep::Done {
                    deployment_id: candidate.deployment_id.clone(),
                });
            }
            if installed != Some(candidate.release.sha256) {
                return Some(blocked(RollbackBlock::RunsAnotherImage));
            }
            if let Err(reason) = rollback_permitted(previous, &candidate.release) {
                return Some(blocked(reason));
            }
            Some(RollbackStep::Assign(Box::new(assignment_for(
                &candidate.preconditions,
                input,
                ecu,
                previous,
                candidate.deployment_id.clone(),
            ))))
        })
        .collect()
}

/// What a director document is issued as: its version for the vehicle and the targets
/// document (the newest) it is built against, which it carries as its binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectorIssue {
    pub version: u64,
    pub targets: TargetsBinding,
}

/// Signs the directive as director metadata for `vehicle_id` (nothing = no assignments).
pub fn sign_directive(
    directive: &Directive,
    vehicle_id: &str,
    issue: DirectorIssue,
    now: Timestamp,
    expiry_seconds: i64,
    director_key: &SigningKey,
) -> Envelope {
    let (assignments, poll) = match directive {
        Directive::Nothing {
            next_poll_seconds, ..
        } => (Vec::new(), *next_poll_seconds),
        Directive::Assign {
            assignments,
            next_poll_seconds,
            ..
        } => (assignments.clone(), *next_poll_seconds),
    };
    let metadata = DirectorMetadata::new(
        issue.version,
        now.plus_seconds(expiry_seconds),
        vehicle_id,
        issue.targets,
        assignments,
        poll,
    );
    Envelope::sign(
        Role::Director.payload_type(),
        to_payload(&metadata),
        &[director_key],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{
        AbortCriteria, MaintenanceWindow, PhaseSpec, Preconditions, RateLimit, RetryPolicy,
        Selector,
    };
    use proptest::prelude::*;

    fn sha(n: u8) -> Sha256Digest {
        Sha256Digest::of(&[n])
    }

    fn vehicle(id: &str, installed: Option<u8>) -> VehicleView {
        VehicleView {
            id: id.to_owned(),
            tags: vec!["eu".to_owned()],
            ecus: vec![EcuView {
                ecu: "main".to_owned(),
                hardware_id: "hw-a".to_owned(),
                installed: installed.map(|n| InstalledImage {
                    version: format!("1.{n}"),
                    sha256: sha(n),
                    length: 100,
                }),
            }],
        }
    }

    fn rollout(percent: f64) -> RolloutView {
        RolloutView {
            id: "ro_1".to_owned(),
            state: RolloutState::Running,
            breaker: BreakerState::Closed,
            salt: b"salt".to_vec(),
            spec: RolloutSpec {
                selector: Selector::default(),
                phases: vec![PhaseSpec {
                    name: "all".to_owned(),
                    percent,
                    min_soak_seconds: 0,
                    success_threshold_percent: 100.0,
                    error_threshold_percent: None,
                }],
                rate_limit: RateLimit::default(),
                abort_criteria: AbortCriteria::default(),
                preconditions: Preconditions::default(),
                maintenance_window: None,
                retry: RetryPolicy::default(),
            },
            current_phase: 0,
            targets: BTreeMap::from([(
                "hw-a".to_owned(),
                TargetView {
                    name: "hw-a-2.0".to_owned(),
                    version: "2.0".to_owned(),
                    security_version: 2,
                    length: 200,
                    sha256: sha(2),
                },
            )]),
            started_last_minute: 0,
            rate_per_minute: 100,
            existing: Vec::new(),
        }
    }

    fn run(
        vehicle: &VehicleView,
        rollouts: &[RolloutView],
        deltas: &BTreeMap<(Sha256Digest, Sha256Digest), DeltaBlob>,
    ) -> Directive {
        decide(&DirectorInput {
            vehicle,
            rollouts,
            deltas,
            now_unix_seconds: 12 * 3600,
            blob_base_url: "http://ota.test/",
            poll_seconds: 60,
        })
    }

    fn reason(d: &Directive) -> Option<NothingReason> {
        match d {
            Directive::Nothing { reason, .. } => Some(*reason),
            Directive::Assign { .. } => None,
        }
    }

    #[test]
    fn decision_table() {
        let none = BTreeMap::new();
        let v = vehicle("veh-1", Some(1));
        let mut paused = rollout(100.0);
        paused.state = RolloutState::Paused;
        let mut open = rollout(100.0);
        open.breaker = BreakerState::Open;
        let mut half_open = rollout(100.0);
        half_open.breaker = BreakerState::HalfOpen;
        let mut limited = rollout(100.0);
        limited.started_last_minute = 100;
        let mut draft = rollout(100.0);
        draft.state = RolloutState::Draft;
        let mut other_tag = rollout(100.0);
        other_tag.spec.selector.tags = vec!["us".to_owned()];
        let mut closed_window = rollout(100.0);
        closed_window.spec.maintenance_window = Some(MaintenanceWindow {
            start_utc: "01:00".into(),
            end_utc: "02:00".into(),
        });
        let mut finished = rollout(100.0);
        finished.existing = vec![ExistingDeployment {
            deployment_id: "d".into(),
            ecu: "main".into(),
            status: DeploymentStatus::Committed,
            attempts: 1,
            updated_unix_seconds: 0,
            reason_code: None,
        }];
        let cases: Vec<(&str, &VehicleView, Vec<RolloutView>, Option<NothingReason>)> = vec![
            (
                "no rollouts",
                &v,
                vec![],
                Some(NothingReason::NoActiveRollout),
            ),
            ("running, 100%", &v, vec![rollout(100.0)], None),
            (
                "draft",
                &v,
                vec![draft],
                Some(NothingReason::NoActiveRollout),
            ),
            ("paused", &v, vec![paused], Some(NothingReason::Paused)),
            (
                "breaker open",
                &v,
                vec![open],
                Some(NothingReason::BreakerOpen),
            ),
            ("breaker half-open admits probes", &v, vec![half_open], None),
            (
                "rate limited",
                &v,
                vec![limited],
                Some(NothingReason::RateLimited),
            ),
            (
                "selector misses",
                &v,
                vec![other_tag],
                Some(NothingReason::NotSelected),
            ),
            (
                "outside window",
                &v,
                vec![closed_window],
                Some(NothingReason::OutsideMaintenanceWindow),
            ),
            (
                "already committed",
                &v,
                vec![finished],
                Some(NothingReason::AlreadyFinished),
            ),
        ];
        for (name, vehicle, rollouts, expected) in cases {
            assert_eq!(
                reason(&run(vehicle, &rollouts, &none)),
                expected,
                "case {name}"
            );
        }
        let up_to_date = vehicle("veh-1", Some(2));
        assert_eq!(
            reason(&run(&up_to_date, &[rollout(100.0)], &none)),
            Some(NothingReason::UpToDate)
        );
    }

    #[test]
    fn assignment_uses_the_delta_when_one_was_built_else_the_full_image() {
        let v = vehicle("veh-1", Some(1));
        let deltas = BTreeMap::from([(
            (sha(1), sha(2)),
            DeltaBlob {
                length: 10,
                sha256: sha(9),
            },
        )]);
        let Directive::Assign {
            assignments,
            new_deployments,
            ..
        } = run(&v, &[rollout(100.0)], &deltas)
        else {
            panic!("a vehicle in a running 100% rollout must be assigned");
        };
        let delta = assignments[0]
            .delta
            .as_ref()
            .expect("the built delta must be offered");
        assert_eq!(
            (delta.source_sha256, delta.sha256, delta.source_length),
            (sha(1), sha(9), 100)
        );
        assert_eq!(delta.url, format!("http://ota.test/v1/blobs/{}", sha(9)));
        assert_eq!(assignments[0].image.sha256, sha(2));
        assert_eq!(
            new_deployments[0].deployment_id,
            deployment_id("ro_1", "veh-1", "main")
        );
        let fresh = vehicle("veh-1", None);
        let Directive::Assign { assignments, .. } = run(&fresh, &[rollout(100.0)], &deltas) else {
            panic!("an empty ECU must be assigned the full image");
        };
        assert!(
            assignments[0].delta.is_none(),
            "no delta without an installed source"
        );
    }

    #[test]
    fn rollback_plan_table() {
        let target = |n: u8, security_version: u64| TargetView {
            name: format!("img-{n}"),
            version: format!("1.{n}"),
            security_version,
            length: 100,
            sha256: sha(n),
        };
        let candidate = |previous: Option<TargetView>| RollbackCandidate {
            deployment_id: "dep_1".to_owned(),
            ecu: "main".to_owned(),
            release: target(2, 5),
            previous,
            preconditions: Preconditions::default(),
        };
        let deltas = BTreeMap::from([(
            (sha(2), sha(1)),
            DeltaBlob {
                length: 7,
                sha256: sha(8),
            },
        )]);
        let plan = |installed: Option<u8>, previous: Option<TargetView>| {
            let v = vehicle("veh-1", installed);
            let input = DirectorInput {
                vehicle: &v,
                rollouts: &[],
                deltas: &deltas,
                now_unix_seconds: 0,
                blob_base_url: "http://ota.test",
                poll_seconds: 60,
            };
            plan_rollback(&input, &[candidate(previous)])
        };
        let blocked = |reason| {
            vec![RollbackStep::Blocked {
                deployment_id: "dep_1".to_owned(),
                reason,
            }]
        };
        // Runs the release, previous listed with an equal security_version: sent back,
        // with the release → previous delta.
        let steps = plan(Some(2), Some(target(1, 5)));
        let [RollbackStep::Assign(assignment)] = steps.as_slice() else {
            panic!("must be sent back: {steps:?}");
        };
        assert_eq!(assignment.image.sha256, sha(1));
        assert_eq!(assignment.deployment_id, "dep_1");
        assert_eq!(assignment.delta.as_ref().map(|d| d.sha256), Some(sha(8)));
        // Already back.
        assert_eq!(
            plan(Some(1), Some(target(1, 5))),
            vec![RollbackStep::Done {
                deployment_id: "dep_1".to_owned()
            }]
        );
        // The release raised security_version: never offered.
        assert_eq!(
            plan(Some(2), Some(target(1, 4))),
            blocked(RollbackBlock::SecurityVersion {
                previous: 4,
                release: 5
            })
        );
        assert_eq!(
            plan(Some(2), None),
            blocked(RollbackBlock::PreviousNotListed)
        );
        assert_eq!(
            plan(Some(3), Some(target(1, 5))),
            blocked(RollbackBlock::RunsAnotherImage)
        );
    }

    #[test]
    fn the_rollouts_preconditions_travel_in_the_assignment() {
        let v = vehicle("veh-1", Some(1));
        let Directive::Assign { assignments, .. } = run(&v, &[rollout(100.0)], &BTreeMap::new())
        else {
            panic!("must be assigned");
        };
        assert_eq!(
            assignments[0].preconditions, None,
            "no preconditions, none sent"
        );
        let mut constrained = rollout(100.0);
        constrained.spec.preconditions = Preconditions {
            parked: true,
            min_state_of_charge_percent: Some(40),
            network: None,
        };
        let Directive::Assign { assignments, .. } = run(&v, &[constrained], &BTreeMap::new())
        else {
            panic!("must be assigned");
        };
        assert_eq!(
            assignments[0]
                .preconditions
                .as_ref()
                .map(|p| (p.parked, p.min_state_of_charge_percent)),
            Some((true, Some(40))),
            "the vehicle must be told what to wait for"
        );
    }

    #[test]
    fn in_flight_assignments_are_resent_while_paused_without_new_deployments() {
        let mut paused = rollout(100.0);
        paused.state = RolloutState::Paused;
        paused.existing = vec![ExistingDeployment {
            deployment_id: "dep_x".into(),
            ecu: "main".into(),
            status: DeploymentStatus::Downloading,
            attempts: 1,
            updated_unix_seconds: 0,
            reason_code: None,
        }];
        let Directive::Assign {
            assignments,
            new_deployments,
            ..
        } = run(&vehicle("v", Some(1)), &[paused], &BTreeMap::new())
        else {
            panic!("an in-flight deployment must be re-sent");
        };
        assert_eq!(assignments[0].deployment_id, "dep_x");
        assert!(new_deployments.is_empty());
    }

    #[test]
    fn failed_deployments_are_retried_within_the_policy() {
        let failed = |attempts: u32, updated: i64| ExistingDeployment {
            deployment_id: "dep_f".into(),
            ecu: "main".into(),
            status: DeploymentStatus::Failed,
            attempts,
            updated_unix_seconds: updated,
            reason_code: None,
        };
        let now = 12 * 3600;
        let cases = [
            // (attempts, max attempts, backoff, updated, retried?)
            (1, 1, 0, 0, false),
            (1, 2, 0, 0, true),
            (2, 2, 0, 0, false),
            (1, 3, 600, now - 599, false),
            (1, 3, 600, now - 600, true),
        ];
        for (attempts, max, backoff, updated, retried) in cases {
            let mut r = rollout(100.0);
            r.spec.retry.max_attempts = max;
            r.spec.retry.backoff_seconds = backoff;
            r.existing = vec![failed(attempts, updated)];
            let d = run(&vehicle("veh-1", Some(1)), &[r], &BTreeMap::new());
            match d {
                Directive::Assign {
                    new_deployments, ..
                } => {
                    assert!(
                        retried,
                        "attempt {attempts}/{max}, backoff {backoff}: must not retry"
                    );
                    assert_eq!(
                        (
                            new_deployments[0].deployment_id.as_str(),
                            new_deployments[0].retry
                        ),
                        ("dep_f", true)
                    );
                }
                Directive::Nothing { reason, .. } => {
                    assert!(
                        !retried,
                        "attempt {attempts}/{max}, backoff {backoff}: must retry"
                    );
                    assert_eq!(reason, NothingReason::AlreadyFinished);
                }
            }
        }
        let mut paused = rollout(100.0);
        paused.state = RolloutState::Paused;
        paused.spec.retry.max_attempts = 3;
        paused.existing = vec![failed(1, 0)];
        assert_eq!(
            reason(&run(
                &vehicle("veh-1", Some(1)),
                &[paused],
                &BTreeMap::new()
            )),
            Some(NothingReason::Paused),
            "retries respect pause"
        );
    }

    #[test]
    fn deployments_a_breaker_cancelled_go_out_again_when_the_rollout_runs() {
        let now = 12 * 3600;
        let cancelled = ExistingDeployment {
            deployment_id: "dep_c".into(),
            ecu: "main".into(),
            status: DeploymentStatus::Cancelled,
            // Beyond the retry policy and within its backoff: neither applies.
            attempts: 5,
            updated_unix_seconds: now,
            reason_code: Some(STOPPED_BY_ROLLOUT.to_owned()),
        };
        let mut r = rollout(100.0);
        r.spec.retry.max_attempts = 1;
        r.spec.retry.backoff_seconds = 3600;
        for final_reason in ["cancelled_by_operator", "decommissioned"] {
            let mut by_hand = r.clone();
            by_hand.existing = vec![ExistingDeployment {
                reason_code: Some(final_reason.to_owned()),
                ..cancelled.clone()
            }];
            assert_eq!(
                reason(&run(
                    &vehicle("veh-1", Some(1)),
                    &[by_hand],
                    &BTreeMap::new()
                )),
                Some(NothingReason::AlreadyFinished),
                "a deployment cancelled as {final_reason} stays final"
            );
        }
        r.existing = vec![cancelled];
        let mut paused = r.clone();
        paused.state = RolloutState::Paused;
        assert_eq!(
            reason(&run(
                &vehicle("veh-1", Some(1)),
                &[paused],
                &BTreeMap::new()
            )),
            Some(NothingReason::Paused),
            "held while the rollout is paused"
        );
        let mut open = r.clone();
        open.breaker = BreakerState::Open;
        assert_eq!(
            reason(&run(&vehicle("veh-1", Some(1)), &[open], &BTreeMap::new())),
            Some(NothingReason::BreakerOpen)
        );
        match run(&vehicle("veh-1", Some(1)), &[r], &BTreeMap::new()) {
            Directive::Assign {
                assignments,
                new_deployments,
                ..
            } => {
                assert_eq!(assignments[0].deployment_id, "dep_c");
                assert_eq!(
                    (
                        new_deployments[0].deployment_id.as_str(),
                        new_deployments[0].retry
                    ),
                    ("dep_c", true),
                    "the same deployment, handed out again"
                );
            }
            other => panic!("a resumed rollout hands the cancelled deployment out: {other:?}"),
        }
    }

    #[test]
    fn signed_directive_verifies_and_carries_version_and_expiry() {
        let key = SigningKey::from_seed(&[8u8; 32]);
        let now = Timestamp::parse("2027-01-01T00:00:00Z").unwrap();
        let directive = run(
            &vehicle("veh-1", Some(1)),
            &[rollout(100.0)],
            &BTreeMap::new(),
        );
        let targets = TargetsBinding::of_payload(3, b"targets payload");
        let issue = DirectorIssue {
            version: 7,
            targets,
        };
        let envelope = sign_directive(&directive, "veh-1", issue, now, 300, &key);
        let metadata: DirectorMetadata =
            ota_core::metadata::parse_document(&envelope.payload).unwrap();
        assert_eq!(
            (
                metadata.version,
                metadata.vehicle_id.as_str(),
                metadata.targets
            ),
            (7, "veh-1", targets)
        );
        assert_eq!(metadata.expires, now.plus_seconds(300));
        assert_eq!(metadata.assignments.len(), 1);
        let sig = ota_core::encoding::decode_base64(&envelope.signatures[0].sig).unwrap();
        assert!(key
            .public_key()
            .verify_strict(&envelope.signed_message(), &sig.try_into().unwrap()));
    }

    proptest! {
        #[test]
        fn a_vehicle_outside_the_current_phase_never_gets_a_new_assignment(
            vid in "[a-z0-9]{1,20}", percent in 0.001f64..100.0,
        ) {
            let r = rollout(percent);
            let d = run(&vehicle(&vid, Some(1)), std::slice::from_ref(&r), &BTreeMap::new());
            let admitted = cohort::admits(&r.salt, &vid, r.spec.phase_percent_millis(0));
            prop_assert_eq!(matches!(d, Directive::Assign { .. }), admitted);
        }

        #[test]
        fn paused_breaker_open_or_rate_limited_rollouts_assign_nobody(
            vid in "[a-z0-9]{1,20}", which in 0usize..3, started in 0u32..200, rate in 1u32..100,
        ) {
            let mut r = rollout(100.0);
            match which {
                0 => r.state = RolloutState::Paused,
                1 => r.breaker = BreakerState::Open,
                _ => { r.started_last_minute = started.max(rate); r.rate_per_minute = rate; }
            }
            let d = run(&vehicle(&vid, Some(1)), &[r], &BTreeMap::new());
            prop_assert!(matches!(d, Directive::Nothing { .. }), "got {:?}", d);
        }
    }
}
