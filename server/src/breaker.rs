//! Rollout circuit breaker, pure (DESIGN §7).
//!
//! Closed → open when, over the window since the breaker last closed or half-opened,
//! at least `min_number_of_executed_things` deployments finished and the share of
//! failures of the configured type exceeds the threshold. Open stays open until an
//! operator resumes, which half-opens it: the next window (a probe batch of at least
//! the minimum sample) closes it again or re-opens it.

use crate::rollout::{AbortCriteria, FailureType};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    pub fn parse(text: &str) -> Option<BreakerState> {
        match text {
            "closed" => Some(BreakerState::Closed),
            "open" => Some(BreakerState::Open),
            "half_open" => Some(BreakerState::HalfOpen),
            _ => None,
        }
    }

    /// Whether new vehicles may be assigned. Half-open admits the probe batch.
    pub fn admits_new_assignments(self) -> bool {
        !matches!(self, BreakerState::Open)
    }
}

/// Finished deployments in the breaker's window, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    pub succeeded: u64,
    pub failed: u64,
    pub rolled_back: u64,
    pub timed_out: u64,
}

impl Outcomes {
    pub fn executed(&self) -> u64 {
        self.succeeded + self.failed + self.rolled_back + self.timed_out
    }

    pub fn failures(&self, kind: FailureType) -> u64 {
        match kind {
            FailureType::All => self.failed + self.rolled_back + self.timed_out,
            FailureType::Failed => self.failed,
            FailureType::RolledBack => self.rolled_back,
            FailureType::TimedOut => self.timed_out,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub state: BreakerState,
    /// Set when this evaluation opened the breaker: why, for the audit log and status.
    pub opened_because: Option<String>,
}

/// Evaluates the breaker; `error_threshold_percent` is the current phase's own
/// threshold (hawkBit style), applied in addition to the rollout-wide criteria.
pub fn evaluate(
    criteria: &AbortCriteria,
    error_threshold_percent: Option<f64>,
    state: BreakerState,
    window: Outcomes,
) -> Verdict {
    let stay = Verdict {
        state,
        opened_because: None,
    };
    if state == BreakerState::Open {
        return stay;
    }
    let executed = window.executed();
    if executed < u64::from(criteria.min_number_of_executed_things) || executed == 0 {
        return stay;
    }
    let ratio = window.failures(criteria.failure_type) as f64 * 100.0 / executed as f64;
    let phase_ratio = window.failures(FailureType::All) as f64 * 100.0 / executed as f64;
    let reason = if ratio > criteria.threshold_percentage {
        Some(format!(
            "{ratio:.1}% of {executed} executed deployments failed ({:?}), threshold {}%",
            criteria.failure_type, criteria.threshold_percentage
        ))
    } else if error_threshold_percent.is_some_and(|limit| phase_ratio > limit) {
        Some(format!(
            "{phase_ratio:.1}% of {executed} executed deployments failed, phase error threshold {}%",
            error_threshold_percent.unwrap_or_default()
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Verdict {
            state: BreakerState::Open,
            opened_because: Some(reason),
        },
        None => Verdict {
            state: BreakerState::Closed,
            opened_because: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::BreakerAction;
    use proptest::prelude::*;

    fn criteria(threshold: f64, min: u32) -> AbortCriteria {
        AbortCriteria {
            failure_type: FailureType::All,
            threshold_percentage: threshold,
            min_number_of_executed_things: min,
            action: BreakerAction::Pause,
            in_progress_timeout_seconds: None,
        }
    }

    fn outcomes(succeeded: u64, failed: u64) -> Outcomes {
        Outcomes {
            succeeded,
            failed,
            ..Outcomes::default()
        }
    }

    #[test]
    fn breaker_table() {
        use BreakerState::*;
        let cases = [
            // below minimum sample: no change even at 100% failures
            (Closed, outcomes(0, 9), None, Closed),
            (Closed, outcomes(9, 1), None, Closed),
            (Closed, outcomes(8, 2), None, Open),
            (HalfOpen, outcomes(10, 0), None, Closed),
            (HalfOpen, outcomes(5, 5), None, Open),
            (HalfOpen, outcomes(1, 1), None, HalfOpen),
            (Open, outcomes(100, 0), None, Open),
            // phase error threshold stricter than the rollout's
            (Closed, outcomes(95, 5), Some(4.0), Open),
            (Closed, outcomes(95, 5), Some(5.0), Closed),
        ];
        for (state, window, phase, expected) in cases {
            let verdict = evaluate(&criteria(10.0, 10), phase, state, window);
            assert_eq!(
                verdict.state, expected,
                "{state:?} with {window:?}, phase {phase:?}"
            );
            assert_eq!(
                verdict.opened_because.is_some(),
                expected == Open && state != Open
            );
        }
    }

    #[test]
    fn failure_type_selects_what_counts() {
        let window = Outcomes {
            succeeded: 10,
            failed: 0,
            rolled_back: 5,
            timed_out: 0,
        };
        let mut c = criteria(10.0, 10);
        c.failure_type = FailureType::Failed;
        assert_eq!(
            evaluate(&c, None, BreakerState::Closed, window).state,
            BreakerState::Closed
        );
        c.failure_type = FailureType::RolledBack;
        assert_eq!(
            evaluate(&c, None, BreakerState::Closed, window).state,
            BreakerState::Open
        );
    }

    proptest! {
        #[test]
        fn only_legal_transitions(s in 0u64..50, f in 0u64..50, r in 0u64..50, t in 0u64..50,
                                  threshold in 0.0f64..100.0, min in 1u32..40, start in 0usize..3) {
            let state = [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen][start];
            let window = Outcomes { succeeded: s, failed: f, rolled_back: r, timed_out: t };
            let verdict = evaluate(&criteria(threshold, min), None, state, window);
            // Open never closes by itself; nothing changes below the minimum sample.
            if state == BreakerState::Open { prop_assert_eq!(verdict.state, BreakerState::Open); }
            if window.executed() < u64::from(min) { prop_assert_eq!(verdict.state, state); }
            // Never opens at or below the threshold.
            if verdict.state == BreakerState::Open && state != BreakerState::Open {
                prop_assert!(window.failures(FailureType::All) as f64 * 100.0 / window.executed() as f64 > threshold);
            }
        }
    }
}
