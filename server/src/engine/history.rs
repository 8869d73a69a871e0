//! The failure-ratio history of a rollout, beside its status in the read model: how the
//! share of failed deployments moved against the breaker's threshold, and when the
//! breaker moved. What the dashboard plots and `GET /api/v1/rollouts/{id}/history`
//! answers.
//!
//! The ratio is the breaker's own: over the window since the breaker last closed,
//! half-opened or an operator resumed or started the rollout, the failures of the
//! configured type among the finished deployments (a deployment counted once, by the
//! latest outcome it reached). Timed-out deployments are not events, so a
//! `timed_out`-only breaker's ratio stays at zero here.

use super::Engine;
use crate::breaker::{BreakerState, Outcomes};
use crate::director::DeploymentStatus;
use crate::rollout::{AbortCriteria, FailureType};
use crate::store::{ms_to_rfc3339, AuditEntry, AuditFilter, OutcomeEvent, StoreError};
use serde::Serialize;
use std::collections::BTreeMap;

/// Most points a history answers: longer histories keep every n-th point and the last.
pub const MAX_POINTS: usize = 500;

/// Most audit entries of one rollout read for its breaker transitions.
const MAX_TRANSITIONS: i64 = 1_000;

/// The failure ratio after one outcome.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FailurePoint {
    #[schema(value_type = crate::api::validate::schema::Timestamp)]
    pub at: String,
    /// Seconds since the rollout was created.
    pub seconds: f64,
    /// Finished deployments in the breaker's window.
    pub executed: u64,
    /// Failures of the configured type among them.
    pub failures: u64,
    /// `failures / executed`, in percent.
    pub failure_percent: f64,
}

/// What moved the breaker's window: a breaker transition or an operator's start or
/// resume.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BreakerMark {
    #[schema(value_type = crate::api::validate::schema::Timestamp)]
    pub at: String,
    /// Seconds since the rollout was created.
    pub seconds: f64,
    /// The audit action (`rollout.breaker`, `rollout.start`, `rollout.resume`).
    pub action: String,
    /// The breaker's state after it (`None` for a resume of a rollout whose breaker was
    /// closed).
    pub to: Option<BreakerState>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RolloutHistory {
    #[schema(value_type = crate::api::validate::schema::RolloutId)]
    pub rollout_id: String,
    pub failure_type: FailureType,
    #[schema(value_type = crate::api::validate::schema::Percent)]
    pub threshold_percentage: f64,
    pub min_number_of_executed_things: u32,
    #[schema(max_items = 500)]
    pub points: Vec<FailurePoint>,
    pub marks: Vec<BreakerMark>,
}

/// A breaker mark from an audit entry of the rollout, if it is one (pure).
pub fn mark_of(entry: &AuditEntry, at_ms: i64, created_ms: i64) -> Option<BreakerMark> {
    let to = match entry.action.as_str() {
        "rollout.breaker" => {
            Some(serde_json::from_value::<BreakerState>(entry.detail.get("to")?.clone()).ok()?)
        }
        "rollout.start" => Some(BreakerState::Closed),
        "rollout.resume" => None,
        _ => return None,
    };
    Some(BreakerMark {
        at: entry.at.clone(),
        seconds: seconds_between(created_ms, at_ms),
        action: entry.action.clone(),
        to,
        reason: entry
            .detail
            .get("reason")
            .and_then(|r| r.as_str())
            .map(str::to_owned),
    })
}

fn seconds_between(from_ms: i64, to_ms: i64) -> f64 {
    (to_ms.saturating_sub(from_ms)).max(0) as f64 / 1000.0
}

/// Whether a mark restarts the breaker's window: every one but an opening.
fn restarts_window(mark: &BreakerMark) -> bool {
    mark.to != Some(BreakerState::Open)
}

/// The failure ratio after each outcome (pure). `marks` are `(at_ms, mark)` in time
/// order; each that restarts the window forgets the outcomes before it.
pub fn failure_points(
    criteria: &AbortCriteria,
    created_ms: i64,
    outcomes: &[OutcomeEvent],
    marks: &[(i64, BreakerMark)],
) -> Vec<FailurePoint> {
    let mut latest: BTreeMap<&str, DeploymentStatus> = BTreeMap::new();
    let mut restarts = marks
        .iter()
        .filter(|(_, m)| restarts_window(m))
        .map(|(at, _)| *at)
        .peekable();
    let mut points = Vec::with_capacity(outcomes.len());
    for event in outcomes {
        while restarts.peek().is_some_and(|&at| at <= event.at_ms) {
            restarts.next();
            latest.clear();
        }
        latest.insert(&event.deployment_id, event.status);
        let mut tally = Outcomes::default();
        for status in latest.values() {
            match status {
                DeploymentStatus::Committed => tally.succeeded += 1,
                DeploymentStatus::Failed => tally.failed += 1,
                DeploymentStatus::RolledBack => tally.rolled_back += 1,
                _ => {}
            }
        }
        let executed = tally.executed();
        let failures = tally.failures(criteria.failure_type);
        points.push(FailurePoint {
            at: ms_to_rfc3339(event.at_ms),
            seconds: seconds_between(created_ms, event.at_ms),
            executed,
            failures,
            failure_percent: if executed == 0 {
                0.0
            } else {
                failures as f64 * 100.0 / executed as f64
            },
        });
    }
    thin(points, MAX_POINTS)
}

/// At most `max` points: every n-th, and always the last.
fn thin(points: Vec<FailurePoint>, max: usize) -> Vec<FailurePoint> {
    if points.len() <= max || max < 2 {
        return points;
    }
    let step = points.len().div_ceil(max - 1);
    let last = points.len() - 1;
    points
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i == last)
        .map(|(_, p)| p)
        .collect()
}

fn rfc3339_ms(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .unwrap_or_default()
}

impl Engine {
    /// The rollout's failure-ratio history and breaker marks.
    pub async fn rollout_history(&self, id: &str) -> Result<RolloutHistory, StoreError> {
        let store = &self.inner.store;
        let rollout = store.get_rollout(id).await?;
        let created_ms = rfc3339_ms(&rollout.created_at);
        let outcomes = store.rollout_outcome_events(id).await?;
        let mut entries = store
            .audit_page(&AuditFilter {
                actor: None,
                action: None,
                target: Some(id.to_owned()),
                since_ms: None,
                until_ms: None,
                before_id: None,
                limit: MAX_TRANSITIONS,
            })
            .await?;
        entries.reverse();
        let marks: Vec<(i64, BreakerMark)> = entries
            .iter()
            .filter_map(|entry| {
                let at_ms = rfc3339_ms(&entry.at);
                mark_of(entry, at_ms, created_ms).map(|mark| (at_ms, mark))
            })
            .collect();
        let criteria = &rollout.spec.abort_criteria;
        Ok(RolloutHistory {
            rollout_id: rollout.id.clone(),
            failure_type: criteria.failure_type,
            threshold_percentage: criteria.threshold_percentage,
            min_number_of_executed_things: criteria.min_number_of_executed_things,
            points: failure_points(criteria, created_ms, &outcomes, &marks),
            marks: marks.into_iter().map(|(_, m)| m).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(id: &str, at_ms: i64, status: DeploymentStatus) -> OutcomeEvent {
        OutcomeEvent {
            deployment_id: id.to_owned(),
            at_ms,
            status,
        }
    }

    fn mark(to: Option<BreakerState>) -> BreakerMark {
        BreakerMark {
            at: String::new(),
            seconds: 0.0,
            action: "rollout.breaker".to_owned(),
            to,
            reason: None,
        }
    }

    #[test]
    fn the_ratio_counts_each_deployment_once_by_its_latest_outcome() {
        use DeploymentStatus::*;
        let criteria = AbortCriteria::default();
        let events = [
            outcome("a", 1_000, Committed),
            outcome("b", 2_000, Failed),
            // `a` is rolled back later: one deployment, now a failure.
            outcome("a", 3_000, RolledBack),
        ];
        let points = failure_points(&criteria, 0, &events, &[]);
        let shape: Vec<(u64, u64)> = points.iter().map(|p| (p.executed, p.failures)).collect();
        assert_eq!(shape, vec![(1, 0), (2, 1), (2, 2)]);
        assert_eq!(points[1].failure_percent, 50.0);
        assert_eq!(points[2].seconds, 3.0);
    }

    #[test]
    fn a_window_restart_forgets_earlier_outcomes_and_an_opening_does_not() {
        use DeploymentStatus::*;
        let criteria = AbortCriteria {
            failure_type: FailureType::Failed,
            ..AbortCriteria::default()
        };
        let events = [
            outcome("a", 1_000, Failed),
            outcome("b", 3_000, Committed),
            outcome("c", 5_000, Committed),
        ];
        let marks = [
            (2_000, mark(Some(BreakerState::Open))),
            (4_000, mark(Some(BreakerState::HalfOpen))),
        ];
        let points = failure_points(&criteria, 0, &events, &marks);
        let shape: Vec<(u64, u64)> = points.iter().map(|p| (p.executed, p.failures)).collect();
        assert_eq!(shape, vec![(1, 1), (2, 1), (1, 0)]);
    }

    #[test]
    fn long_histories_are_thinned_keeping_the_last_point() {
        let events: Vec<OutcomeEvent> = (0..2_000)
            .map(|i| outcome(&format!("d{i}"), i, DeploymentStatus::Committed))
            .collect();
        let points = failure_points(&AbortCriteria::default(), 0, &events, &[]);
        assert!(points.len() <= MAX_POINTS, "{}", points.len());
        assert_eq!(points.last().map(|p| p.executed), Some(2_000));
    }
}
