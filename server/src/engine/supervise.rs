//! Supervision: breakers and phase gates. [`review`] is the pure decision (a rollout,
//! its breaker window and its phase counts in; at most one request out); the engine runs
//! it after every applied event and on a periodic tick, and sends what it asks for
//! through [`Engine::change_rollout`].

use super::plan::{PlanError, RolloutRequest};
use super::{ChangeFailed, Engine, NowMs};
use crate::breaker::{self, Outcomes};
use crate::rollout::{phase_decision, PhaseDecision, PhaseOutcomes, RolloutState};
use crate::store::{Actor, PhaseCounts, RolloutRecord, StoreError};
use std::collections::BTreeMap;

/// What a running rollout needs now: a breaker transition first (it may halt the
/// rollout), otherwise a phase advance when the current phase's gate is met.
pub fn review(
    rollout: &RolloutRecord,
    window: Outcomes,
    counts: &BTreeMap<usize, PhaseCounts>,
    now: NowMs,
) -> Option<RolloutRequest> {
    if rollout.state != RolloutState::Running {
        return None;
    }
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
    if verdict.state != rollout.breaker_state {
        return Some(RolloutRequest::Breaker {
            to: verdict.state,
            reason: verdict.opened_because,
        });
    }
    if !verdict.state.admits_new_assignments() {
        return None;
    }
    let current = counts
        .get(&rollout.current_phase)
        .cloned()
        .unwrap_or_default();
    let outcomes = PhaseOutcomes {
        assigned: current.total() - current.cancelled,
        committed: current.committed,
        failed: current.failed + current.rolled_back,
    };
    match phase_decision(
        &rollout.spec,
        rollout.current_phase,
        rollout.phase_started_ms.unwrap_or(now),
        now,
        outcomes,
    ) {
        PhaseDecision::Advance { to } => Some(RolloutRequest::AdvancePhase {
            from: rollout.current_phase,
            to,
        }),
        PhaseDecision::Stay => None,
    }
}

/// Deployments assigned before this instant and still unfinished have timed out
/// (`abort_criteria.in_progress_timeout_seconds`); `None` when no timeout is set.
pub fn overdue_before(rollout: &RolloutRecord, now: NowMs) -> Option<NowMs> {
    rollout
        .spec
        .abort_criteria
        .in_progress_timeout_seconds
        .map(|t| now.saturating_sub((t.min(i64::MAX as u64 / 1000) as i64) * 1000))
}

impl Engine {
    /// Reviews one rollout and makes the change it needs, if any.
    pub async fn supervise(&self, rollout_id: &str, now: NowMs) -> Result<(), StoreError> {
        let store = &self.inner.store;
        let rollout = store.get_rollout(rollout_id).await?;
        if rollout.state != RolloutState::Running {
            return Ok(());
        }
        // One read of the rollout's tallies (and of its overdue deployments when a
        // timeout is set): nothing here grows with the fleet.
        let aggregates = store
            .supervision_aggregates(
                &rollout.id,
                rollout.window_start_ms,
                overdue_before(&rollout, now),
            )
            .await?;
        let Some(request) = review(&rollout, aggregates.window, &aggregates.phases, now) else {
            return Ok(());
        };
        match self
            .change_rollout(&Actor::system(), &rollout.id, &request, now)
            .await
        {
            Ok(updated) => {
                match &request {
                    RolloutRequest::Breaker { to, reason } => {
                        metrics::counter!("ota_breaker_transitions_total", "to" => to.as_str())
                            .increment(1);
                        tracing::warn!(rollout = %rollout.id, to = to.as_str(), ?reason, state = updated.state.as_str(), "breaker moved");
                    }
                    RolloutRequest::AdvancePhase { to, .. } => {
                        tracing::info!(rollout = %rollout.id, phase = to, "phase advanced");
                    }
                    RolloutRequest::Operator(_) => {}
                }
                Ok(())
            }
            // Someone changed the rollout meanwhile; their change stands.
            Err(ChangeFailed::Refused(PlanError::Unchanged | PlanError::Illegal { .. })) => Ok(()),
            Err(ChangeFailed::Refused(PlanError::RollbackBlocked(_))) => Ok(()),
            Err(ChangeFailed::Store(e)) => Err(e),
        }
    }

    /// Reviews every running rollout (breakers and phase progress).
    pub async fn tick(&self, now: NowMs) -> Result<(), StoreError> {
        for rollout in self
            .inner
            .store
            .list_rollouts(Some(RolloutState::Running))
            .await?
        {
            self.supervise(&rollout.id, now).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::BreakerState;
    use crate::rollout::tests::spec;

    fn running(phases: &[(f64, u64)]) -> RolloutRecord {
        RolloutRecord {
            id: "ro-1".to_owned(),
            name: "r".to_owned(),
            release_id: "rel-1".to_owned(),
            spec: spec(phases),
            salt: "00".to_owned(),
            state: RolloutState::Running,
            current_phase: 0,
            phase_started_ms: Some(0),
            breaker_state: BreakerState::Closed,
            breaker_reason: None,
            window_start_ms: 0,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn counts(committed: u64, failed: u64, assigned: u64) -> BTreeMap<usize, PhaseCounts> {
        BTreeMap::from([(
            0,
            PhaseCounts {
                committed,
                failed,
                assigned,
                ..PhaseCounts::default()
            },
        )])
    }

    #[test]
    fn a_failing_window_opens_the_breaker_before_any_phase_advance() {
        let r = running(&[(10.0, 0), (100.0, 0)]);
        let window = Outcomes {
            succeeded: 5,
            failed: 5,
            ..Outcomes::default()
        };
        let request = review(&r, window, &counts(5, 5, 0), 1_000).unwrap();
        assert!(
            matches!(
                &request,
                RolloutRequest::Breaker {
                    to: BreakerState::Open,
                    reason: Some(_)
                }
            ),
            "{request:?}"
        );
    }

    #[test]
    fn a_met_gate_advances_and_an_unsoaked_phase_waits() {
        let r = running(&[(10.0, 60), (100.0, 0)]);
        let ok = Outcomes {
            succeeded: 10,
            ..Outcomes::default()
        };
        assert_eq!(review(&r, ok, &counts(10, 0, 0), 59_000), None);
        assert_eq!(
            review(&r, ok, &counts(10, 0, 0), 60_000),
            Some(RolloutRequest::AdvancePhase { from: 0, to: 1 })
        );
    }

    #[test]
    fn an_empty_phase_never_passes_its_gate() {
        let r = running(&[(10.0, 0), (100.0, 0)]);
        assert_eq!(
            review(&r, Outcomes::default(), &BTreeMap::new(), 1_000_000),
            None
        );
        // Assigned but nothing finished yet: still waiting on real outcomes.
        assert_eq!(
            review(&r, Outcomes::default(), &counts(0, 0, 5), 1_000_000),
            None
        );
    }

    #[test]
    fn timed_out_deployments_open_the_breaker() {
        let mut r = running(&[(10.0, 0), (100.0, 0)]);
        assert_eq!(overdue_before(&r, 10_000_000), None, "no timeout set");
        r.spec.abort_criteria.in_progress_timeout_seconds = Some(600);
        assert_eq!(overdue_before(&r, 10_000_000), Some(9_400_000));
        r.spec.abort_criteria.in_progress_timeout_seconds = Some(u64::MAX);
        assert!(overdue_before(&r, 10_000_000).is_some(), "no overflow");
        let window = Outcomes {
            succeeded: 5,
            timed_out: 5,
            ..Outcomes::default()
        };
        assert!(matches!(
            review(
                &running(&[(10.0, 0), (100.0, 0)]),
                window,
                &counts(5, 0, 5),
                1
            ),
            Some(RolloutRequest::Breaker {
                to: BreakerState::Open,
                ..
            })
        ));
    }

    #[test]
    fn nothing_is_reviewed_unless_running() {
        let mut r = running(&[(10.0, 0), (100.0, 0)]);
        r.state = RolloutState::Paused;
        let window = Outcomes {
            failed: 50,
            ..Outcomes::default()
        };
        assert_eq!(review(&r, window, &counts(0, 50, 0), 1), None);
    }
}
