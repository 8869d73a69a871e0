//! An operator's cancel or retry of one vehicle's deployments in a rollout: pure
//! [`plan`] (what may happen, or why not with the actions that may), then
//! [`Engine::change_deployment`] persists it (one transaction with its events and audit
//! entry, conditional on the statuses it was planned from) and tells the vehicle.
//!
//! How it reaches the vehicle: an operator's cancel is final, so the director never
//! sends it again (its next directive assigns nothing from this rollout) and the agent
//! gets a signed `cancel` control message at once, stopping a download it has not
//! installed. A retried deployment goes back to `assigned` with one more attempt: the
//! director re-sends in-flight deployments on every check-in, and a `poll_now` control
//! message asks for that check-in now; the agent takes the same id again as a retry
//! because a directive without it arrived since it ended.

use super::{Engine, NowMs};
use crate::director::DeploymentStatus;
use crate::rollout::RolloutState;
use crate::store::{Actor, DeploymentChange, DeploymentRecord, RolloutRecord, StoreError};
use ota_core::protocol::ControlCommand;
use serde::Serialize;

/// What an operator may do to a vehicle's deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentAction {
    /// Stop deployments not yet installing (`assigned`, `downloading`).
    Cancel,
    /// Hand `failed` or `cancelled` deployments out again, in a running rollout.
    Retry,
}

impl DeploymentAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentAction::Cancel => "cancel",
            DeploymentAction::Retry => "retry",
        }
    }

    fn applies_to(self, rollout: RolloutState, status: DeploymentStatus) -> bool {
        match self {
            DeploymentAction::Cancel => matches!(
                status,
                DeploymentStatus::Assigned | DeploymentStatus::Downloading
            ),
            DeploymentAction::Retry => {
                rollout == RolloutState::Running
                    && matches!(
                        status,
                        DeploymentStatus::Failed | DeploymentStatus::Cancelled
                    )
            }
        }
    }

    fn target(self) -> DeploymentStatus {
        match self {
            DeploymentAction::Cancel => DeploymentStatus::Cancelled,
            DeploymentAction::Retry => DeploymentStatus::Assigned,
        }
    }
}

/// Why an operator's action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeploymentRefused {
    #[error("vehicle {vehicle_id:?} has no deployment in rollout {rollout_id}")]
    NoDeployment {
        rollout_id: String,
        vehicle_id: String,
    },
    #[error(
        "cannot {} the deployment of {vehicle_id:?} (status {}) in rollout {rollout_id} ({}); allowed actions: {}",
        action.as_str(), statuses.join(", "), rollout_state.as_str(),
        if allowed.is_empty() { "none".to_owned() } else {
            allowed.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
        }
    )]
    NotAllowed {
        action: DeploymentAction,
        rollout_id: String,
        rollout_state: RolloutState,
        vehicle_id: String,
        statuses: Vec<&'static str>,
        allowed: Vec<DeploymentAction>,
    },
}

/// The actions that would change something for these deployments now.
pub fn allowed_actions(
    rollout: RolloutState,
    deployments: &[DeploymentRecord],
) -> Vec<DeploymentAction> {
    [DeploymentAction::Cancel, DeploymentAction::Retry]
        .into_iter()
        .filter(|a| deployments.iter().any(|d| a.applies_to(rollout, d.status)))
        .collect()
}

/// Plans `action` on one vehicle's deployments in `rollout` (pure).
pub fn plan(
    rollout: &RolloutRecord,
    vehicle_id: &str,
    deployments: &[DeploymentRecord],
    action: DeploymentAction,
    now: NowMs,
) -> Result<DeploymentChange, DeploymentRefused> {
    if deployments.is_empty() {
        return Err(DeploymentRefused::NoDeployment {
            rollout_id: rollout.id.clone(),
            vehicle_id: vehicle_id.to_owned(),
        });
    }
    let chosen: Vec<(String, DeploymentStatus)> = deployments
        .iter()
        .filter(|d| action.applies_to(rollout.state, d.status))
        .map(|d| (d.id.clone(), d.status))
        .collect();
    if chosen.is_empty() {
        return Err(DeploymentRefused::NotAllowed {
            action,
            rollout_id: rollout.id.clone(),
            rollout_state: rollout.state,
            vehicle_id: vehicle_id.to_owned(),
            statuses: deployments.iter().map(|d| d.status.as_str()).collect(),
            allowed: allowed_actions(rollout.state, deployments),
        });
    }
    Ok(DeploymentChange {
        rollout_id: rollout.id.clone(),
        vehicle_id: vehicle_id.to_owned(),
        action: match action {
            DeploymentAction::Cancel => "deployment.cancel",
            DeploymentAction::Retry => "deployment.retry",
        },
        deployments: chosen,
        to: action.target(),
        now_ms: now,
    })
}

impl Engine {
    /// Cancels or retries one vehicle's deployments in a rollout: plan, persist (one
    /// transaction, audited), then the control message. A change that raced the
    /// vehicle's own report is planned again from the statuses as they are now.
    pub async fn change_deployment(
        &self,
        actor: &Actor,
        rollout_id: &str,
        vehicle_id: &str,
        action: DeploymentAction,
        now: NowMs,
    ) -> Result<Vec<DeploymentRecord>, DeploymentChangeFailed> {
        let store = &self.inner.store;
        for _ in 0..3 {
            let rollout = store.get_rollout(rollout_id).await?;
            let deployments = store.vehicle_deployments(rollout_id, vehicle_id).await?;
            let change = plan(&rollout, vehicle_id, &deployments, action, now)?;
            let Some(changed) = store.apply_deployment_change(actor, &change).await? else {
                continue;
            };
            let command = match action {
                DeploymentAction::Cancel => ControlCommand::Cancel,
                DeploymentAction::Retry => ControlCommand::PollNow,
            };
            for d in &changed {
                self.send_control(vehicle_id, command, Some(d.id.clone()), now);
            }
            return Ok(changed);
        }
        Err(DeploymentChangeFailed::Raced)
    }
}

/// Why [`Engine::change_deployment`] changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentChangeFailed {
    #[error(transparent)]
    Refused(#[from] DeploymentRefused),
    #[error("the deployment kept changing meanwhile; read it and try again")]
    Raced,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::BreakerState;
    use crate::rollout::tests::spec;

    fn rollout(state: RolloutState) -> RolloutRecord {
        RolloutRecord {
            id: "ro_1".to_owned(),
            name: "r".to_owned(),
            release_id: "rel_1".to_owned(),
            spec: spec(&[(100.0, 0)]),
            salt: "00".to_owned(),
            state,
            current_phase: 0,
            phase_started_ms: None,
            breaker_state: BreakerState::Closed,
            breaker_reason: None,
            window_start_ms: 0,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn deployment(ecu: &str, status: DeploymentStatus) -> DeploymentRecord {
        DeploymentRecord {
            id: format!("dep_{ecu}"),
            rollout_id: "ro_1".to_owned(),
            vehicle_id: "veh".to_owned(),
            ecu: ecu.to_owned(),
            phase: 0,
            status,
            attempts: 1,
            updated_ms: 0,
            from_sha256: None,
            reason_code: None,
            assigned_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn cancel_takes_only_deployments_not_yet_installing() {
        use DeploymentStatus::*;
        let r = rollout(RolloutState::Running);
        let ds = [
            deployment("a", Assigned),
            deployment("b", Downloading),
            deployment("c", Installed),
        ];
        let change = plan(&r, "veh", &ds, DeploymentAction::Cancel, 5).unwrap();
        assert_eq!(
            change.deployments,
            vec![
                ("dep_a".to_owned(), Assigned),
                ("dep_b".to_owned(), Downloading)
            ]
        );
        assert_eq!((change.to, change.action), (Cancelled, "deployment.cancel"));
        for status in [Installed, Committed, Failed, RolledBack, Cancelled] {
            let refused = plan(
                &r,
                "veh",
                &[deployment("a", status)],
                DeploymentAction::Cancel,
                5,
            );
            assert!(
                matches!(refused, Err(DeploymentRefused::NotAllowed { .. })),
                "{status:?}"
            );
        }
    }

    #[test]
    fn retry_needs_a_running_rollout_and_a_failed_or_cancelled_deployment() {
        use DeploymentStatus::*;
        let failed = [deployment("a", Failed), deployment("b", Committed)];
        let change = plan(
            &rollout(RolloutState::Running),
            "veh",
            &failed,
            DeploymentAction::Retry,
            5,
        )
        .unwrap();
        assert_eq!(change.deployments, vec![("dep_a".to_owned(), Failed)]);
        assert_eq!(change.to, Assigned);
        let refused = plan(
            &rollout(RolloutState::Paused),
            "veh",
            &failed,
            DeploymentAction::Retry,
            5,
        )
        .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "cannot retry the deployment of \"veh\" (status failed, committed) in rollout ro_1 (paused); allowed actions: none"
        );
        let refused = plan(
            &rollout(RolloutState::Running),
            "veh",
            &[deployment("a", Downloading)],
            DeploymentAction::Retry,
            5,
        )
        .unwrap_err();
        assert!(
            refused.to_string().ends_with("allowed actions: cancel"),
            "{refused}"
        );
        assert!(matches!(
            plan(
                &rollout(RolloutState::Running),
                "veh",
                &[],
                DeploymentAction::Retry,
                5
            ),
            Err(DeploymentRefused::NoDeployment { .. })
        ));
    }
}
