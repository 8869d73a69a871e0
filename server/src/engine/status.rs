//! The rollout status read model: per-phase counts and eligible vehicles, what the API,
//! `otactl` and a dashboard show.

use super::assign::stored_view;
use super::Engine;
use crate::director::{self, TargetView, VehicleView};
use crate::rollout::RolloutSpec;
use crate::store::{PhaseCounts, RolloutRecord, StoreError};
use ota_core::cohort;
use serde::Serialize;
use std::collections::BTreeMap;

/// One phase's line in a rollout status.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PhaseStatus {
    pub index: usize,
    #[schema(value_type = crate::api::validate::schema::Name)]
    pub name: String,
    #[schema(value_type = crate::api::validate::schema::Percent)]
    pub percent: f64,
    pub active: bool,
    /// Vehicles the director would assign in this phase's cohort band: selected, with an
    /// ECU the release targets that does not run it yet (or, once assigned, counted).
    pub eligible: u64,
    #[serde(flatten)]
    pub counts: PhaseCounts,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RolloutStatus {
    pub rollout: RolloutRecord,
    pub phases: Vec<PhaseStatus>,
    pub totals: PhaseCounts,
    /// Delta builds of this rollout by status.
    pub delta_jobs: BTreeMap<String, u64>,
    /// What the rollout's built deltas saved in downloads.
    pub delta_savings: DeltaSavings,
}

/// Download bytes the rollout's built deltas saved: over the deployments that got past
/// `assigned` from a source image with a built delta to the target (the director sends
/// such a vehicle the delta), the full image's length against the delta's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DeltaSavings {
    /// Deployments that downloaded a delta.
    pub deployments: u64,
    /// What they would have downloaded as full images.
    pub full_bytes: u64,
    /// What their deltas weigh.
    pub delta_bytes: u64,
    /// `full_bytes - delta_bytes`.
    pub bytes_saved: u64,
}

/// The savings of built deltas over the deployments that downloaded (pure).
pub fn delta_savings(
    deployments: &[crate::store::DeploymentRecord],
    jobs: &[crate::store::DeltaJob],
    targets: &BTreeMap<String, TargetView>,
) -> DeltaSavings {
    use crate::director::DeploymentStatus;
    use crate::store::DeltaJobStatus;
    let full_length = |target: &str| {
        targets
            .values()
            .find(|t| t.sha256.to_hex() == target)
            .map(|t| t.length)
    };
    // Source digest (hex) -> (full image length, delta length).
    let built: BTreeMap<&str, (u64, u64)> = jobs
        .iter()
        .filter(|j| j.status == DeltaJobStatus::Done)
        .filter_map(|j| {
            Some((
                j.source_sha256.as_str(),
                (full_length(&j.target_sha256)?, j.delta_length?),
            ))
        })
        .collect();
    let mut savings = DeltaSavings::default();
    for deployment in deployments {
        if matches!(
            deployment.status,
            DeploymentStatus::Assigned | DeploymentStatus::Cancelled
        ) {
            continue;
        }
        let Some(source) = deployment.from_sha256 else {
            continue;
        };
        if let Some((full, delta)) = built.get(source.to_hex().as_str()) {
            savings.deployments += 1;
            savings.full_bytes += full;
            savings.delta_bytes += delta;
        }
    }
    savings.bytes_saved = savings.full_bytes.saturating_sub(savings.delta_bytes);
    savings
}

/// For each phase, the vehicles whose cohort bucket falls in its band (admitted by its
/// percentage, not by the previous phase's) and whom the director would assign
/// ([`director::would_assign`]), or that are in `assigned` already; in fleet order.
pub fn phase_members<'a>(
    spec: &RolloutSpec,
    salt: &[u8],
    targets: &BTreeMap<String, TargetView>,
    fleet: &'a [VehicleView],
    assigned: &std::collections::BTreeSet<String>,
) -> Vec<Vec<&'a VehicleView>> {
    let candidates: Vec<&VehicleView> = fleet
        .iter()
        .filter(|v| assigned.contains(&v.id) || director::would_assign(spec, targets, v))
        .collect();
    (0..spec.phases.len())
        .map(|index| {
            let upper = spec.phase_percent_millis(index);
            let lower = if index == 0 {
                0
            } else {
                spec.phase_percent_millis(index - 1)
            };
            candidates
                .iter()
                .copied()
                .filter(|v| {
                    cohort::admits(salt, &v.id, upper) && !cohort::admits(salt, &v.id, lower)
                })
                .collect()
        })
        .collect()
}

/// The phase lines: for each phase, the vehicles whose cohort bucket falls in its band
/// and whom the director would assign, beside the deployment counts.
pub fn phase_lines(
    spec: &RolloutSpec,
    salt: &[u8],
    current_phase: usize,
    targets: &BTreeMap<String, TargetView>,
    fleet: &[VehicleView],
    assigned: &std::collections::BTreeSet<String>,
    counts: &BTreeMap<usize, PhaseCounts>,
) -> (Vec<PhaseStatus>, PhaseCounts) {
    let members = phase_members(spec, salt, targets, fleet, assigned);
    let mut totals = PhaseCounts::default();
    let mut phases = Vec::new();
    for (index, phase) in spec.phases.iter().enumerate() {
        let eligible = members[index].len() as u64;
        let c = counts.get(&index).cloned().unwrap_or_default();
        totals.add_counts(&c);
        phases.push(PhaseStatus {
            index,
            name: phase.name.clone(),
            percent: phase.percent,
            active: index == current_phase,
            eligible,
            counts: c,
        });
    }
    (phases, totals)
}

/// Most vehicle ids a dry run lists per phase.
pub const DRY_RUN_SAMPLE: usize = 20;

/// One phase of a dry run.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DryRunPhase {
    pub index: usize,
    #[schema(value_type = crate::api::validate::schema::Name)]
    pub name: String,
    #[schema(value_type = crate::api::validate::schema::Percent)]
    pub percent: f64,
    /// Vehicles this phase would assign (those of earlier phases not counted again).
    pub vehicles: u64,
    /// The first of them by id, at most [`DRY_RUN_SAMPLE`].
    #[schema(value_type = Vec<crate::api::validate::schema::VehicleId>, max_items = 20)]
    pub sample: Vec<String>,
}

/// What a rollout spec would assign, phase by phase, with this salt.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DryRun {
    /// The cohort salt the phases were computed with; create the rollout with it to get
    /// exactly these vehicles.
    #[schema(value_type = crate::api::validate::schema::Salt)]
    pub salt: String,
    /// Vehicles the rollout would assign over all its phases.
    pub vehicles: u64,
    pub phases: Vec<DryRunPhase>,
}

/// The dry run's answer from the phase members (pure).
pub fn dry_run_of(spec: &RolloutSpec, salt_hex: &str, members: &[Vec<&VehicleView>]) -> DryRun {
    let phases: Vec<DryRunPhase> = spec
        .phases
        .iter()
        .zip(members)
        .enumerate()
        .map(|(index, (phase, vehicles))| {
            let mut ids: Vec<String> = vehicles.iter().map(|v| v.id.clone()).collect();
            ids.sort();
            ids.truncate(DRY_RUN_SAMPLE);
            DryRunPhase {
                index,
                name: phase.name.clone(),
                percent: phase.percent,
                vehicles: vehicles.len() as u64,
                sample: ids,
            }
        })
        .collect();
    DryRun {
        salt: salt_hex.to_owned(),
        vehicles: phases.iter().map(|p| p.vehicles).sum(),
        phases,
    }
}

impl Engine {
    /// The vehicles per phase a rollout of `release_id` with `spec` and `salt` (hex)
    /// would assign, from the fleet as the store holds it now, computed with the
    /// director's own rule (selector, targeted hardware not yet running the target,
    /// cohort band). Creates nothing. Not counted: vehicles busy with an older active
    /// rollout at the time they check in (the director serves the oldest first).
    pub async fn dry_run(
        &self,
        spec: &RolloutSpec,
        release_id: &str,
        salt_hex: &str,
    ) -> Result<DryRun, StoreError> {
        let store = &self.inner.store;
        let targets = self.targets_of_release(release_id).await?;
        let salt = hex::decode(salt_hex).unwrap_or_else(|_| salt_hex.as_bytes().to_vec());
        let fleet: Vec<VehicleView> = store
            .all_vehicles(i64::MAX)
            .await?
            .iter()
            .map(stored_view)
            .collect();
        let none = std::collections::BTreeSet::new();
        let members = phase_members(spec, &salt, &targets, &fleet, &none);
        Ok(dry_run_of(spec, salt_hex, &members))
    }

    /// A rollout's deployment counts over all its phases: the list's progress, without
    /// the fleet read of [`Engine::rollout_status`].
    pub async fn rollout_totals(&self, id: &str) -> Result<PhaseCounts, StoreError> {
        let mut totals = PhaseCounts::default();
        for counts in self.inner.store.phase_counts(id).await?.values() {
            totals.add_counts(counts);
        }
        Ok(totals)
    }

    pub async fn rollout_status(&self, id: &str) -> Result<RolloutStatus, StoreError> {
        let store = &self.inner.store;
        let rollout = store.get_rollout(id).await?;
        let counts = store.phase_counts(id).await?;
        let targets = self.targets_of(&rollout).await?;
        let salt = hex::decode(&rollout.salt).unwrap_or_else(|_| rollout.salt.clone().into_bytes());
        let fleet: Vec<VehicleView> = store
            .all_vehicles(i64::MAX)
            .await?
            .iter()
            .map(stored_view)
            .collect();
        let deployments = store.deployments_for_rollout(id).await?;
        let assigned = deployments.iter().map(|d| d.vehicle_id.clone()).collect();
        let (phases, totals) = phase_lines(
            &rollout.spec,
            &salt,
            rollout.current_phase,
            &targets,
            &fleet,
            &assigned,
            &counts,
        );
        let jobs = store.list_delta_jobs(Some(id)).await?;
        let mut delta_jobs = BTreeMap::new();
        for job in &jobs {
            *delta_jobs
                .entry(job.status.as_str().to_owned())
                .or_insert(0) += 1;
        }
        Ok(RolloutStatus {
            rollout,
            phases,
            totals,
            delta_jobs,
            delta_savings: delta_savings(&deployments, &jobs, &targets),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::director::EcuView;
    use crate::rollout::tests::spec;
    use ota_core::encoding::Sha256Digest;
    use ota_core::protocol::InstalledImage;

    fn vehicle(id: &str, hardware_id: &str, runs: Option<Sha256Digest>) -> VehicleView {
        VehicleView {
            id: id.to_owned(),
            tags: Vec::new(),
            ecus: vec![EcuView {
                ecu: "main".to_owned(),
                hardware_id: hardware_id.to_owned(),
                installed: runs.map(|sha256| InstalledImage {
                    version: "1".to_owned(),
                    sha256,
                    length: 1,
                }),
            }],
        }
    }

    #[test]
    fn eligible_counts_only_vehicles_the_director_would_assign() {
        let target = Sha256Digest::of(b"v2");
        let targets = BTreeMap::from([(
            "hw-a".to_owned(),
            TargetView {
                name: "img".to_owned(),
                version: "2".to_owned(),
                security_version: 0,
                length: 2,
                sha256: target,
            },
        )]);
        let fleet = vec![
            vehicle("needs-it", "hw-a", Some(Sha256Digest::of(b"v1"))),
            vehicle("other-hardware", "hw-b", Some(Sha256Digest::of(b"v1"))),
            vehicle("already-there", "hw-a", Some(target)),
        ];
        let s = spec(&[(100.0, 0)]);
        let none = std::collections::BTreeSet::new();
        let (phases, _) = phase_lines(&s, b"salt", 0, &targets, &fleet, &none, &BTreeMap::new());
        assert_eq!(phases[0].eligible, 1);
        // A vehicle assigned earlier still counts once it runs the target.
        let assigned = std::collections::BTreeSet::from(["already-there".to_owned()]);
        let (phases, _) = phase_lines(
            &s,
            b"salt",
            0,
            &targets,
            &fleet,
            &assigned,
            &BTreeMap::new(),
        );
        assert_eq!(phases[0].eligible, 2);
        // A release for hardware no vehicle has: nobody is eligible.
        let (phases, _) = phase_lines(
            &s,
            b"salt",
            0,
            &BTreeMap::new(),
            &fleet,
            &none,
            &BTreeMap::new(),
        );
        assert_eq!(phases[0].eligible, 0);
    }
}
