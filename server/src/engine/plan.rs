//! Every rollout change, pure: the record as read, what was asked, and `now` in; the new
//! values, the audit lines and the effects to run out. The store persists a
//! [`RolloutChange`] in one transaction (conditional on the values it was planned from),
//! and [`super::Engine::change_rollout`] runs its [`Effect`]s — the API, the breaker
//! supervisor and the event consumer all go through that one path.

use crate::breaker::BreakerState;
use crate::rollout::{transition, BreakerAction, IllegalTransition, RolloutAction, RolloutState};
use crate::store::RolloutRecord;
use serde_json::{json, Value};

/// What a caller asks of a rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum RolloutRequest {
    /// An operator's action (API, `otactl`, dashboard).
    Operator(RolloutAction),
    /// The supervisor found the current phase's gate met.
    AdvancePhase { from: usize, to: usize },
    /// The breaker moved (closed ↔ half-open ↔ open); opening applies the rollout's
    /// breaker policy in the same change.
    Breaker {
        to: BreakerState,
        reason: Option<String>,
    },
}

/// What the planner needs to know that only IO can tell.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// Why going back is not permitted (previous images below the release's
    /// `security_version`); empty when it is.
    pub rollback_blockers: Vec<String>,
}

/// Side effects of a committed change, run by the engine after the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Effect {
    /// Queue delta builds for the selected fleet's installed images.
    EnqueueDeltas,
    /// Deployments not yet installing (`assigned`, `downloading`) are marked cancelled
    /// (in the change's own transaction). In a rollout that runs again they are handed
    /// out again (`director`), so a breaker's pause loses none of them.
    CancelUnfinished,
    /// Vehicles with unfinished deployments are told to check in now (and so learn they
    /// must hold).
    PollUnfinished,
    /// Vehicles told to `cancel` what the change cancelled.
    CancelVehicles,
    /// Vehicles whose deployment the rollout stopped (cancelled when a breaker opened)
    /// are told to check in now, and so get it again from the resumed rollout.
    PollStopped,
    /// Vehicles that installed the release are told to roll back.
    RollbackInstalled,
    /// Anything cached about active rollouts is stale.
    Invalidate,
}

/// The values a change was planned from; the store applies it only if they still hold,
/// so two operators (or two replicas) racing cannot both win.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub state: RolloutState,
    pub phase: usize,
    pub breaker: BreakerState,
}

/// One audited line of a change.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditLine {
    pub action: String,
    pub detail: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutChange {
    pub rollout_id: String,
    pub expected: Expected,
    pub state: RolloutState,
    pub current_phase: usize,
    pub phase_started_ms: Option<i64>,
    pub breaker_state: BreakerState,
    pub breaker_reason: Option<String>,
    pub window_start_ms: i64,
    pub now_ms: i64,
    pub audit: Vec<AuditLine>,
    pub effects: Vec<Effect>,
}

impl RolloutChange {
    pub fn has(&self, effect: Effect) -> bool {
        self.effects.contains(&effect)
    }
}

/// Why a request changes nothing or is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("{illegal}; allowed now: {}", allowed_list(.allowed))]
    Illegal {
        illegal: IllegalTransition,
        allowed: Vec<RolloutAction>,
    },
    #[error("rollback not permitted: vehicles never install a lower security_version ({})", .0.join("; "))]
    RollbackBlocked(Vec<String>),
    /// The request is already satisfied or no longer applies (a phase already advanced,
    /// a breaker already in that state).
    #[error("nothing to change")]
    Unchanged,
}

fn allowed_list(allowed: &[RolloutAction]) -> String {
    if allowed.is_empty() {
        return "none (the rollout is final)".to_owned();
    }
    allowed
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a rollout ever ran (and so may have installed something to undo).
fn ever_started(record: &RolloutRecord) -> bool {
    record.phase_started_ms.is_some()
}

/// The operator actions that make sense from the rollout's present state.
pub fn allowed_actions(record: &RolloutRecord) -> Vec<RolloutAction> {
    [
        RolloutAction::Start,
        RolloutAction::Pause,
        RolloutAction::Resume,
        RolloutAction::Abort,
        RolloutAction::Rollback,
        RolloutAction::Complete,
    ]
    .into_iter()
    .filter(|a| operator_target(record, *a).is_ok())
    .collect()
}

fn operator_target(
    record: &RolloutRecord,
    action: RolloutAction,
) -> Result<RolloutState, IllegalTransition> {
    // A rollout that never started installed nothing: there is nothing to roll back.
    if action == RolloutAction::Rollback && !ever_started(record) {
        return Err(IllegalTransition {
            from: record.state,
            action,
        });
    }
    transition(record.state, action)
}

fn base(record: &RolloutRecord, now_ms: i64) -> RolloutChange {
    RolloutChange {
        rollout_id: record.id.clone(),
        expected: Expected {
            state: record.state,
            phase: record.current_phase,
            breaker: record.breaker_state,
        },
        state: record.state,
        current_phase: record.current_phase,
        phase_started_ms: record.phase_started_ms,
        breaker_state: record.breaker_state,
        breaker_reason: record.breaker_reason.clone(),
        window_start_ms: record.window_start_ms,
        now_ms,
        audit: Vec::new(),
        effects: vec![Effect::Invalidate],
    }
}

/// Applies a state-machine action to `change`, with its effects and audit line.
fn apply_action(
    change: &mut RolloutChange,
    record: &RolloutRecord,
    action: RolloutAction,
    facts: &Facts,
    reason: Option<&str>,
) -> Result<(), PlanError> {
    let to = operator_target(record, action).map_err(|illegal| PlanError::Illegal {
        illegal,
        allowed: allowed_actions(record),
    })?;
    if action == RolloutAction::Rollback && !facts.rollback_blockers.is_empty() {
        return Err(PlanError::RollbackBlocked(facts.rollback_blockers.clone()));
    }
    let now = change.now_ms;
    match action {
        RolloutAction::Start => {
            change.phase_started_ms = Some(now);
            change.breaker_state = BreakerState::Closed;
            change.breaker_reason = None;
            change.window_start_ms = now;
            change.effects.push(Effect::EnqueueDeltas);
        }
        // An operator resume half-opens an open breaker: a probe batch decides, starting
        // with the vehicles the breaker stopped.
        RolloutAction::Resume if record.breaker_state == BreakerState::Open => {
            change.breaker_state = BreakerState::HalfOpen;
            change.window_start_ms = now;
            change.effects.push(Effect::PollStopped);
        }
        RolloutAction::Pause => change.effects.push(Effect::PollUnfinished),
        RolloutAction::Abort => {
            change.effects.push(Effect::CancelUnfinished);
            change.effects.push(Effect::CancelVehicles);
        }
        RolloutAction::Rollback => {
            change.effects.push(Effect::CancelUnfinished);
            change.effects.push(Effect::CancelVehicles);
            change.effects.push(Effect::RollbackInstalled);
        }
        RolloutAction::Resume | RolloutAction::Complete => {}
    }
    change.state = to;
    change.audit.push(AuditLine {
        action: format!("rollout.{}", action.as_str()),
        detail: json!({ "from": record.state, "to": to, "reason": reason }),
    });
    Ok(())
}

/// Plans `request` against `record` at `now_ms`.
pub fn plan(
    record: &RolloutRecord,
    request: &RolloutRequest,
    facts: &Facts,
    now_ms: i64,
) -> Result<RolloutChange, PlanError> {
    let mut change = base(record, now_ms);
    match request {
        RolloutRequest::Operator(action) => {
            apply_action(&mut change, record, *action, facts, None)?;
        }
        RolloutRequest::AdvancePhase { from, to } => {
            if record.state != RolloutState::Running
                || record.current_phase != *from
                || *to != from + 1
                || *to >= record.spec.phases.len()
            {
                return Err(PlanError::Unchanged);
            }
            change.current_phase = *to;
            change.phase_started_ms = Some(now_ms);
            change.audit.push(AuditLine {
                action: "rollout.phase_advance".to_owned(),
                detail: json!({ "from": from, "to": to }),
            });
        }
        RolloutRequest::Breaker { to, reason } => {
            if *to == record.breaker_state
                || !matches!(record.state, RolloutState::Running | RolloutState::Paused)
            {
                return Err(PlanError::Unchanged);
            }
            change.breaker_state = *to;
            change.breaker_reason = match to {
                BreakerState::Open => reason.clone(),
                _ => None,
            };
            change.audit.push(AuditLine {
                action: "rollout.breaker".to_owned(),
                detail: json!({ "from": record.breaker_state, "to": to, "reason": reason }),
            });
            if *to == BreakerState::Open && record.state == RolloutState::Running {
                let action = breaker_policy(record, facts);
                apply_action(&mut change, record, action, facts, reason.as_deref())?;
                // Whatever the policy, vehicles not yet installing stop (DESIGN §7): a
                // pause cancels their deployments too, and a resume hands them out again.
                change.effects.retain(|e| *e != Effect::PollUnfinished);
                change.effects.push(Effect::CancelUnfinished);
                change.effects.push(Effect::CancelVehicles);
            }
        }
    }
    change.effects.sort();
    change.effects.dedup();
    Ok(change)
}

/// The action an opened breaker takes. A rollback the `security_version` floors forbid
/// degrades to a pause: the rollout stops, and an operator decides.
pub fn breaker_policy(record: &RolloutRecord, facts: &Facts) -> RolloutAction {
    match record.spec.abort_criteria.action {
        BreakerAction::Pause => RolloutAction::Pause,
        BreakerAction::Abort => RolloutAction::Abort,
        BreakerAction::Rollback if !facts.rollback_blockers.is_empty() => RolloutAction::Pause,
        BreakerAction::Rollback => RolloutAction::Rollback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{AbortCriteria, PhaseSpec, RolloutSpec};

    fn record(state: RolloutState, started: bool, action: BreakerAction) -> RolloutRecord {
        RolloutRecord {
            id: "ro-1".to_owned(),
            name: "r".to_owned(),
            release_id: "rel-1".to_owned(),
            spec: RolloutSpec {
                phases: vec![
                    PhaseSpec {
                        name: "canary".to_owned(),
                        percent: 1.0,
                        min_soak_seconds: 0,
                        success_threshold_percent: 90.0,
                        error_threshold_percent: None,
                    },
                    PhaseSpec {
                        name: "all".to_owned(),
                        percent: 100.0,
                        min_soak_seconds: 0,
                        success_threshold_percent: 90.0,
                        error_threshold_percent: None,
                    },
                ],
                abort_criteria: AbortCriteria {
                    action,
                    ..AbortCriteria::default()
                },
                ..crate::rollout::tests::spec(&[(100.0, 0)])
            },
            salt: "00".to_owned(),
            state,
            current_phase: 0,
            phase_started_ms: started.then_some(1_000),
            breaker_state: BreakerState::Closed,
            breaker_reason: None,
            window_start_ms: 1_000,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn op(r: &RolloutRecord, action: RolloutAction) -> Result<RolloutChange, PlanError> {
        plan(
            r,
            &RolloutRequest::Operator(action),
            &Facts::default(),
            5_000,
        )
    }

    #[test]
    fn start_stamps_the_phase_closes_the_breaker_and_queues_deltas() {
        let c = op(
            &record(RolloutState::Draft, false, BreakerAction::Pause),
            RolloutAction::Start,
        )
        .unwrap();
        assert_eq!(c.state, RolloutState::Running);
        assert_eq!(c.phase_started_ms, Some(5_000));
        assert_eq!(c.window_start_ms, 5_000);
        assert_eq!(c.breaker_state, BreakerState::Closed);
        assert!(c.has(Effect::EnqueueDeltas));
        assert_eq!(c.audit[0].action, "rollout.start");
        assert_eq!(c.expected.state, RolloutState::Draft);
    }

    #[test]
    fn a_rollout_that_never_started_cannot_be_rolled_back() {
        let mut r = record(RolloutState::Draft, false, BreakerAction::Pause);
        let aborted = op(&r, RolloutAction::Abort).unwrap();
        r.state = aborted.state;
        let err = op(&r, RolloutAction::Rollback).unwrap_err();
        assert!(
            matches!(&err, PlanError::Illegal { allowed, .. } if allowed.is_empty()),
            "{err:?}"
        );
        assert!(err.to_string().contains("allowed now: none"), "{err}");
        // Once started, an aborted rollout can still be undone.
        let started = record(RolloutState::Aborted, true, BreakerAction::Pause);
        assert_eq!(
            op(&started, RolloutAction::Rollback).unwrap().state,
            RolloutState::RolledBack
        );
    }

    #[test]
    fn illegal_actions_list_what_is_allowed() {
        let r = record(RolloutState::Running, true, BreakerAction::Pause);
        let err = op(&r, RolloutAction::Start).unwrap_err();
        let PlanError::Illegal { allowed, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(
            allowed,
            &[
                RolloutAction::Pause,
                RolloutAction::Abort,
                RolloutAction::Rollback,
                RolloutAction::Complete
            ]
        );
        assert!(
            err.to_string()
                .ends_with("allowed now: pause, abort, rollback, complete"),
            "{err}"
        );
    }

    #[test]
    fn resume_half_opens_an_open_breaker_and_restarts_the_window() {
        let mut r = record(RolloutState::Paused, true, BreakerAction::Pause);
        r.breaker_state = BreakerState::Open;
        let c = op(&r, RolloutAction::Resume).unwrap();
        assert_eq!(
            (c.state, c.breaker_state, c.window_start_ms),
            (RolloutState::Running, BreakerState::HalfOpen, 5_000)
        );
        assert_eq!(
            c.effects,
            [Effect::PollStopped, Effect::Invalidate],
            "the vehicles the breaker stopped are called back"
        );
        r.breaker_state = BreakerState::Closed;
        let c = op(&r, RolloutAction::Resume).unwrap();
        assert_eq!(
            (c.breaker_state, c.window_start_ms),
            (BreakerState::Closed, 1_000)
        );
        assert_eq!(c.effects, [Effect::Invalidate]);
    }

    #[test]
    fn opening_the_breaker_applies_the_policy_in_the_same_change() {
        let open = RolloutRequest::Breaker {
            to: BreakerState::Open,
            reason: Some("50% failed".to_owned()),
        };
        for (policy, state, effects) in [
            (
                BreakerAction::Pause,
                RolloutState::Paused,
                vec![
                    Effect::CancelUnfinished,
                    Effect::CancelVehicles,
                    Effect::Invalidate,
                ],
            ),
            (
                BreakerAction::Abort,
                RolloutState::Aborted,
                vec![
                    Effect::CancelUnfinished,
                    Effect::CancelVehicles,
                    Effect::Invalidate,
                ],
            ),
            (
                BreakerAction::Rollback,
                RolloutState::RolledBack,
                vec![
                    Effect::CancelUnfinished,
                    Effect::CancelVehicles,
                    Effect::RollbackInstalled,
                    Effect::Invalidate,
                ],
            ),
        ] {
            let r = record(RolloutState::Running, true, policy);
            let c = plan(&r, &open, &Facts::default(), 9_000).unwrap();
            assert_eq!(c.state, state, "{policy:?}");
            assert_eq!(c.breaker_state, BreakerState::Open);
            assert_eq!(c.breaker_reason.as_deref(), Some("50% failed"));
            assert_eq!(c.effects, effects, "{policy:?}");
            assert_eq!(c.audit.len(), 2, "breaker and action are both audited");
        }
    }

    #[test]
    fn a_forbidden_rollback_policy_pauses_instead() {
        let r = record(RolloutState::Running, true, BreakerAction::Rollback);
        let facts = Facts {
            rollback_blockers: vec!["hw 1.0 has security_version 1, below 2".to_owned()],
        };
        let open = RolloutRequest::Breaker {
            to: BreakerState::Open,
            reason: None,
        };
        let c = plan(&r, &open, &facts, 9_000).unwrap();
        assert_eq!(c.state, RolloutState::Paused);
        assert!(!c.has(Effect::RollbackInstalled));
        // And an operator's rollback is refused with the blockers named.
        let err = plan(
            &r,
            &RolloutRequest::Operator(RolloutAction::Rollback),
            &facts,
            9_000,
        )
        .unwrap_err();
        assert!(err.to_string().contains("security_version 1"), "{err}");
    }

    #[test]
    fn phase_advance_applies_only_from_the_phase_it_was_planned_for() {
        let r = record(RolloutState::Running, true, BreakerAction::Pause);
        let c = plan(
            &r,
            &RolloutRequest::AdvancePhase { from: 0, to: 1 },
            &Facts::default(),
            7_000,
        )
        .unwrap();
        assert_eq!((c.current_phase, c.phase_started_ms), (1, Some(7_000)));
        assert_eq!(c.expected.phase, 0);
        for stale in [
            RolloutRequest::AdvancePhase { from: 1, to: 2 },
            RolloutRequest::AdvancePhase { from: 0, to: 2 },
        ] {
            assert_eq!(
                plan(&r, &stale, &Facts::default(), 7_000),
                Err(PlanError::Unchanged)
            );
        }
        let paused = record(RolloutState::Paused, true, BreakerAction::Pause);
        assert_eq!(
            plan(
                &paused,
                &RolloutRequest::AdvancePhase { from: 0, to: 1 },
                &Facts::default(),
                7_000
            ),
            Err(PlanError::Unchanged)
        );
    }

    #[test]
    fn a_breaker_already_in_the_state_changes_nothing() {
        let r = record(RolloutState::Running, true, BreakerAction::Pause);
        let same = RolloutRequest::Breaker {
            to: BreakerState::Closed,
            reason: None,
        };
        assert_eq!(
            plan(&r, &same, &Facts::default(), 1),
            Err(PlanError::Unchanged)
        );
    }
}
