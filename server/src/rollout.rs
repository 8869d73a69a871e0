//! Rollouts, pure: the specification a release engineer submits, its validation, the
//! state machine and the phase-advance rule. No IO; the engine wraps these.
//!
//! Vocabulary follows what release engineers know: AWS IoT Jobs' rollout config
//! (`maximum_per_minute`, an exponential rate with an increase criterion, abort criteria
//! = failure type + threshold percentage + minimum executed) and hawkBit's per-group
//! success/error thresholds (`success_threshold_percent`, `error_threshold_percent`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Which vehicles a rollout targets. Empty lists match everything; non-empty lists
/// must all match (a vehicle needs every listed tag).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Selector {
    #[schema(schema_with = crate::api::validate::schema::selector_names)]
    pub hardware_ids: Vec<String>,
    #[schema(schema_with = crate::api::validate::schema::selector_names)]
    pub current_versions: Vec<String>,
    #[schema(schema_with = crate::api::validate::schema::selector_names)]
    pub tags: Vec<String>,
    #[schema(schema_with = crate::api::validate::schema::selector_vehicle_ids)]
    pub vehicle_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    #[schema(value_type = crate::api::validate::schema::Name)]
    pub name: String,
    /// Cumulative share of the selected fleet admitted once this phase is active.
    #[schema(exclusive_minimum = 0, maximum = 100)]
    pub percent: f64,
    /// How long the phase must run before the next may start.
    #[serde(default)]
    #[schema(value_type = crate::api::validate::schema::DurationSeconds, default = 0)]
    pub min_soak_seconds: u64,
    /// Share of the phase's assigned vehicles that must have committed to advance.
    #[serde(default = "default_success_threshold")]
    #[schema(value_type = crate::api::validate::schema::Percent, default = 100.0)]
    pub success_threshold_percent: f64,
    /// Share of failed vehicles in this phase that opens the breaker (hawkBit's error
    /// threshold); the rollout-wide abort criteria apply as well.
    #[serde(default)]
    #[schema(value_type = Option<crate::api::validate::schema::Percent>)]
    pub error_threshold_percent: Option<f64>,
}

fn default_success_threshold() -> f64 {
    100.0
}

/// AWS IoT Jobs' `exponentialRate`: start at `base_rate_per_minute` and multiply by
/// `increment_factor` every `increase_after_succeeded` successful vehicles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExponentialRate {
    #[schema(minimum = 1)]
    pub base_rate_per_minute: u32,
    #[schema(exclusive_minimum = 1, maximum = 5)]
    pub increment_factor: f64,
    #[schema(minimum = 1)]
    pub increase_after_succeeded: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    /// Most vehicles started per minute (AWS `maximumPerMinute`).
    #[schema(minimum = 1, default = 1000)]
    pub maximum_per_minute: u32,
    pub exponential: Option<ExponentialRate>,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            maximum_per_minute: 1000,
            exponential: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureType {
    /// Failed, rolled back and timed out all count.
    All,
    Failed,
    RolledBack,
    TimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerAction {
    Pause,
    Abort,
    Rollback,
}

/// The breaker policy (AWS `abortConfig.criteriaList` plus the action to take).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AbortCriteria {
    pub failure_type: FailureType,
    #[schema(value_type = crate::api::validate::schema::Percent, default = 10.0)]
    pub threshold_percentage: f64,
    #[schema(minimum = 1, default = 10)]
    pub min_number_of_executed_things: u32,
    pub action: BreakerAction,
    /// A deployment not finished this long after its assignment counts as timed out in
    /// the breaker's window (AWS IoT Jobs' `inProgressTimeoutInMinutes`); `None`: never.
    #[schema(value_type = Option<crate::api::validate::schema::DurationSeconds>)]
    pub in_progress_timeout_seconds: Option<u64>,
}

impl Default for AbortCriteria {
    fn default() -> Self {
        AbortCriteria {
            failure_type: FailureType::All,
            threshold_percentage: 10.0,
            min_number_of_executed_things: 10,
            action: BreakerAction::Pause,
            in_progress_timeout_seconds: None,
        }
    }
}

/// The vehicle conditions of a rollout, sent to vehicles in their director metadata.
pub use ota_core::metadata::Preconditions;

/// A daily window in UTC, `"HH:MM"`; `end` before `start` wraps past midnight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    #[schema(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub start_utc: String,
    #[schema(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub end_utc: String,
}

impl MaintenanceWindow {
    fn minutes(text: &str) -> Option<u32> {
        let (h, m) = text.split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    }

    /// Whether `unix_seconds` falls inside the window.
    pub fn contains(&self, unix_seconds: i64) -> bool {
        let (Some(start), Some(end)) =
            (Self::minutes(&self.start_utc), Self::minutes(&self.end_utc))
        else {
            return false;
        };
        let minute = (unix_seconds.rem_euclid(86_400) / 60) as u32;
        if start <= end {
            (start..end).contains(&minute)
        } else {
            minute >= start || minute < end
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts per vehicle, including the first.
    #[schema(minimum = 1, maximum = 10, default = 1)]
    pub max_attempts: u32,
    #[schema(value_type = crate::api::validate::schema::DurationSeconds, default = 300)]
    pub backoff_seconds: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff_seconds: 300,
        }
    }
}

/// Everything a release engineer specifies about a rollout except its release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    #[serde(default)]
    pub selector: Selector,
    #[schema(min_items = 1, max_items = 20)]
    pub phases: Vec<PhaseSpec>,
    #[serde(default)]
    pub rate_limit: RateLimit,
    #[serde(default)]
    pub abort_criteria: AbortCriteria,
    #[serde(default)]
    #[schema(value_type = crate::api::validate::schema::PreconditionsSchema)]
    pub preconditions: Preconditions,
    #[serde(default)]
    pub maintenance_window: Option<MaintenanceWindow>,
    #[serde(default)]
    pub retry: RetryPolicy,
}

/// One invalid field: where, what was expected, what was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub expected: String,
    pub got: String,
}

fn field_error(
    field: impl Into<String>,
    expected: impl Into<String>,
    got: impl fmt::Display,
) -> FieldError {
    FieldError {
        field: field.into(),
        expected: expected.into(),
        got: got.to_string(),
    }
}

fn valid_percent(p: f64) -> bool {
    p.is_finite() && (0.0..=100.0).contains(&p)
}

/// Most phases a rollout may have.
pub const MAX_PHASES: usize = 20;

impl RolloutSpec {
    /// Checks every field; returns all problems at once so a caller can fix them together.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.phases.is_empty() {
            errors.push(field_error("phases", "at least one phase", "[]"));
        }
        if self.phases.len() > MAX_PHASES {
            errors.push(field_error(
                "phases",
                format!("at most {MAX_PHASES} phases"),
                self.phases.len(),
            ));
        }
        let mut previous = 0.0f64;
        for (i, phase) in self.phases.iter().enumerate() {
            let at = |f: &str| format!("phases[{i}].{f}");
            if phase.name.trim().is_empty() {
                errors.push(field_error(at("name"), "a non-empty name", "\"\""));
            }
            if !valid_percent(phase.percent) || phase.percent <= 0.0 {
                errors.push(field_error(
                    at("percent"),
                    "a percentage in (0, 100]",
                    phase.percent,
                ));
            } else if phase.percent < previous {
                errors.push(field_error(
                    at("percent"),
                    format!("cumulative: at least the previous phase's {previous}"),
                    phase.percent,
                ));
            } else {
                previous = phase.percent;
            }
            if !valid_percent(phase.success_threshold_percent) {
                errors.push(field_error(
                    at("success_threshold_percent"),
                    "a percentage in [0, 100]",
                    phase.success_threshold_percent,
                ));
            }
            if let Some(e) = phase.error_threshold_percent {
                if !valid_percent(e) {
                    errors.push(field_error(
                        at("error_threshold_percent"),
                        "a percentage in [0, 100]",
                        e,
                    ));
                }
            }
        }
        if self.rate_limit.maximum_per_minute == 0 {
            errors.push(field_error(
                "rate_limit.maximum_per_minute",
                "at least 1",
                0,
            ));
        }
        if let Some(exp) = &self.rate_limit.exponential {
            if exp.base_rate_per_minute == 0
                || exp.base_rate_per_minute > self.rate_limit.maximum_per_minute
            {
                errors.push(field_error(
                    "rate_limit.exponential.base_rate_per_minute",
                    format!("1..={}", self.rate_limit.maximum_per_minute),
                    exp.base_rate_per_minute,
                ));
            }
            if !(exp.increment_factor.is_finite()
                && exp.increment_factor > 1.0
                && exp.increment_factor <= 5.0)
            {
                errors.push(field_error(
                    "rate_limit.exponential.increment_factor",
                    "a factor in (1, 5]",
                    exp.increment_factor,
                ));
            }
            if exp.increase_after_succeeded == 0 {
                errors.push(field_error(
                    "rate_limit.exponential.increase_after_succeeded",
                    "at least 1",
                    0,
                ));
            }
        }
        if !valid_percent(self.abort_criteria.threshold_percentage) {
            errors.push(field_error(
                "abort_criteria.threshold_percentage",
                "a percentage in [0, 100]",
                self.abort_criteria.threshold_percentage,
            ));
        }
        if self.abort_criteria.min_number_of_executed_things == 0 {
            errors.push(field_error(
                "abort_criteria.min_number_of_executed_things",
                "at least 1",
                0,
            ));
        }
        if let Some(soc) = self.preconditions.min_state_of_charge_percent {
            if soc > 100 {
                errors.push(field_error(
                    "preconditions.min_state_of_charge_percent",
                    "0..=100",
                    soc,
                ));
            }
        }
        if let Some(window) = &self.maintenance_window {
            for (name, value) in [
                ("start_utc", &window.start_utc),
                ("end_utc", &window.end_utc),
            ] {
                if MaintenanceWindow::minutes(value).is_none() {
                    errors.push(field_error(
                        format!("maintenance_window.{name}"),
                        "HH:MM (UTC)",
                        format!("{value:?}"),
                    ));
                }
            }
        }
        if self.retry.max_attempts == 0 || self.retry.max_attempts > 10 {
            errors.push(field_error(
                "retry.max_attempts",
                "1..=10",
                self.retry.max_attempts,
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// A phase's cumulative percentage in thousandths, as [`ota_core::cohort`] takes it.
    pub fn phase_percent_millis(&self, phase: usize) -> u32 {
        self.phases
            .get(phase)
            .map(|p| (p.percent * 1000.0).round().clamp(0.0, 100_000.0) as u32)
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Draft,
    Running,
    Paused,
    Aborted,
    Completed,
    RolledBack,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Draft => "draft",
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Aborted => "aborted",
            RolloutState::Completed => "completed",
            RolloutState::RolledBack => "rolled_back",
        }
    }

    pub fn parse(text: &str) -> Option<RolloutState> {
        [
            RolloutState::Draft,
            RolloutState::Running,
            RolloutState::Paused,
            RolloutState::Aborted,
            RolloutState::Completed,
            RolloutState::RolledBack,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutAction {
    Start,
    Pause,
    Resume,
    Abort,
    Rollback,
    Complete,
}

impl RolloutAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Start => "start",
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Abort => "abort",
            RolloutAction::Rollback => "rollback",
            RolloutAction::Complete => "complete",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} a rollout that is {}", action.as_str(), from.as_str())]
pub struct IllegalTransition {
    pub from: RolloutState,
    pub action: RolloutAction,
}

/// The rollout state machine. Aborted, completed and rolled back are final except that
/// an aborted rollout may still be rolled back (undoing what it installed).
pub fn transition(
    from: RolloutState,
    action: RolloutAction,
) -> Result<RolloutState, IllegalTransition> {
    use RolloutAction as A;
    use RolloutState as S;
    let to = match (from, action) {
        (S::Draft, A::Start) => S::Running,
        (S::Running, A::Pause) => S::Paused,
        (S::Paused, A::Resume) => S::Running,
        (S::Draft | S::Running | S::Paused, A::Abort) => S::Aborted,
        (S::Running | S::Paused | S::Aborted, A::Rollback) => S::RolledBack,
        (S::Running, A::Complete) => S::Completed,
        _ => return Err(IllegalTransition { from, action }),
    };
    Ok(to)
}

/// Per-phase outcome counts used to decide whether a phase may advance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseOutcomes {
    pub assigned: u64,
    pub committed: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseDecision {
    Stay,
    Advance { to: usize },
}

/// Advances when the soak time has passed and the success gate is met by real outcomes:
/// the phase has assigned vehicles, at least `abort_criteria.min_number_of_executed_things`
/// of them (and never fewer than one) finished, and the committed share of the assigned
/// reaches `success_threshold_percent`. A phase nobody was assigned in never passes —
/// a gate is never met vacuously. The last phase never advances: the rollout keeps
/// admitting newly eligible vehicles until an operator completes it.
pub fn phase_decision(
    spec: &RolloutSpec,
    current: usize,
    phase_started_ms: i64,
    now_ms: i64,
    outcomes: PhaseOutcomes,
) -> PhaseDecision {
    let Some(phase) = spec.phases.get(current) else {
        return PhaseDecision::Stay;
    };
    if current + 1 >= spec.phases.len() {
        return PhaseDecision::Stay;
    }
    let soaked = now_ms.saturating_sub(phase_started_ms)
        >= (phase.min_soak_seconds.min(i64::MAX as u64 / 1000) as i64).saturating_mul(1000);
    let executed = outcomes.committed.saturating_add(outcomes.failed);
    let min_executed = u64::from(spec.abort_criteria.min_number_of_executed_things).max(1);
    let gate = outcomes.assigned > 0
        && executed >= min_executed
        && (outcomes.committed as f64) * 100.0
            >= phase.success_threshold_percent * outcomes.assigned as f64;
    if soaked && gate {
        PhaseDecision::Advance { to: current + 1 }
    } else {
        PhaseDecision::Stay
    }
}

/// Vehicles that may start per minute now, given how many have succeeded so far.
pub fn effective_rate_per_minute(rate: &RateLimit, succeeded: u64) -> u32 {
    match &rate.exponential {
        None => rate.maximum_per_minute,
        Some(exp) => {
            let steps = succeeded / u64::from(exp.increase_after_succeeded.max(1));
            let grown = f64::from(exp.base_rate_per_minute)
                * exp.increment_factor.powi(steps.min(64) as i32);
            grown.min(f64::from(rate.maximum_per_minute)).max(1.0) as u32
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn spec(phases: &[(f64, u64)]) -> RolloutSpec {
        RolloutSpec {
            selector: Selector::default(),
            phases: phases
                .iter()
                .enumerate()
                .map(|(i, (percent, soak))| PhaseSpec {
                    name: format!("p{i}"),
                    percent: *percent,
                    min_soak_seconds: *soak,
                    success_threshold_percent: 90.0,
                    error_threshold_percent: None,
                })
                .collect(),
            rate_limit: RateLimit::default(),
            abort_criteria: AbortCriteria::default(),
            preconditions: Preconditions::default(),
            maintenance_window: None,
            retry: RetryPolicy::default(),
        }
    }

    #[test]
    fn validation_names_the_field_expected_and_got() {
        let mut s = spec(&[(10.0, 0), (5.0, 0)]);
        s.rate_limit.maximum_per_minute = 0;
        s.maintenance_window = Some(MaintenanceWindow {
            start_utc: "25:00".into(),
            end_utc: "01:00".into(),
        });
        let errors = s.validate().unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "phases[1].percent",
                "rate_limit.maximum_per_minute",
                "maintenance_window.start_utc"
            ]
        );
        assert_eq!(errors[0].got, "5");
        assert!(spec(&[(1.0, 0), (10.0, 60), (100.0, 0)]).validate().is_ok());
        assert!(spec(&[]).validate().is_err(), "no phases must be refused");
        assert!(
            spec(&[(f64::NAN, 0)]).validate().is_err(),
            "NaN must be refused"
        );
    }

    #[test]
    fn state_machine_table() {
        use RolloutAction as A;
        use RolloutState as S;
        let legal = [
            (S::Draft, A::Start, S::Running),
            (S::Running, A::Pause, S::Paused),
            (S::Paused, A::Resume, S::Running),
            (S::Running, A::Abort, S::Aborted),
            (S::Paused, A::Abort, S::Aborted),
            (S::Draft, A::Abort, S::Aborted),
            (S::Aborted, A::Rollback, S::RolledBack),
            (S::Running, A::Rollback, S::RolledBack),
            (S::Running, A::Complete, S::Completed),
        ];
        for (from, action, to) in legal {
            assert_eq!(transition(from, action), Ok(to), "{from:?} --{action:?}-->");
        }
        let illegal = [
            (S::Draft, A::Pause),
            (S::Paused, A::Pause),
            (S::Running, A::Start),
            (S::Running, A::Resume),
            (S::Aborted, A::Resume),
            (S::Completed, A::Rollback),
            (S::RolledBack, A::Start),
        ];
        for (from, action) in illegal {
            assert_eq!(
                transition(from, action),
                Err(IllegalTransition { from, action })
            );
        }
    }

    #[test]
    fn phase_advances_only_after_soak_and_success_gate() {
        let s = spec(&[(1.0, 60), (10.0, 0), (100.0, 0)]);
        let ok = PhaseOutcomes {
            assigned: 20,
            committed: 18,
            failed: 0,
        };
        let short = PhaseOutcomes {
            assigned: 20,
            committed: 17,
            failed: 2,
        };
        let cases = [
            (0, 59_999, ok, PhaseDecision::Stay),
            (0, 60_000, ok, PhaseDecision::Advance { to: 1 }),
            (0, 60_000, short, PhaseDecision::Stay),
            // Nobody assigned: never advances, however long it soaked.
            (0, 1_000_000, PhaseOutcomes::default(), PhaseDecision::Stay),
            // Fewer finished than the minimum executed count.
            (
                0,
                60_000,
                PhaseOutcomes {
                    assigned: 9,
                    committed: 9,
                    failed: 0,
                },
                PhaseDecision::Stay,
            ),
            (2, 1_000_000, ok, PhaseDecision::Stay),
        ];
        for (current, now, outcomes, expected) in cases {
            assert_eq!(
                phase_decision(&s, current, 0, now, outcomes),
                expected,
                "phase {current} at {now}"
            );
        }
    }

    #[test]
    fn maintenance_window_wraps_midnight() {
        let w = MaintenanceWindow {
            start_utc: "22:00".into(),
            end_utc: "04:00".into(),
        };
        assert!(w.contains(23 * 3600));
        assert!(w.contains(3600));
        assert!(!w.contains(12 * 3600));
        let day = MaintenanceWindow {
            start_utc: "09:00".into(),
            end_utc: "17:00".into(),
        };
        assert!(day.contains(9 * 3600) && !day.contains(17 * 3600));
    }

    proptest! {
        /// ARCHITECTURE invariant: a phase advances only on real outcomes — never with
        /// nobody assigned, never with fewer finished than the minimum executed count,
        /// never below the success ratio — whatever the soak time.
        #[test]
        fn a_phase_gate_is_never_met_vacuously(
            assigned in 0u64..1_000, committed in 0u64..1_000, failed in 0u64..1_000,
            min_executed in 1u32..50, threshold in 0.0f64..100.0, now in 0i64..i64::MAX,
        ) {
            let mut s = spec(&[(10.0, 0), (100.0, 0)]);
            s.abort_criteria.min_number_of_executed_things = min_executed;
            s.phases[0].success_threshold_percent = threshold;
            let outcomes = PhaseOutcomes { assigned, committed, failed };
            if phase_decision(&s, 0, 0, now, outcomes) == (PhaseDecision::Advance { to: 1 }) {
                prop_assert!(assigned > 0);
                prop_assert!(committed + failed >= u64::from(min_executed));
                prop_assert!(committed as f64 * 100.0 >= threshold * assigned as f64);
            }
        }

        #[test]
        fn exponential_rate_never_exceeds_maximum(max in 1u32..10_000, base in 1u32..100, succeeded in 0u64..1_000_000) {
            let rate = RateLimit {
                maximum_per_minute: max,
                exponential: Some(ExponentialRate { base_rate_per_minute: base.min(max), increment_factor: 2.0, increase_after_succeeded: 10 }),
            };
            let r = effective_rate_per_minute(&rate, succeeded);
            prop_assert!(r >= 1 && r <= max);
        }
    }

    #[test]
    fn exponential_rate_multiplies_by_its_factor_every_n_successes_up_to_the_maximum() {
        let rate = |factor: f64| RateLimit {
            maximum_per_minute: 100,
            exponential: Some(ExponentialRate {
                base_rate_per_minute: 3,
                increment_factor: factor,
                increase_after_succeeded: 10,
            }),
        };
        let doubling = rate(2.0);
        for (succeeded, expected) in [
            (0, 3),
            (9, 3),
            (10, 6),
            (19, 6),
            (20, 12),
            (30, 24),
            (40, 48),
            (50, 96),
            (60, 100),
            (u64::MAX, 100),
        ] {
            assert_eq!(
                effective_rate_per_minute(&doubling, succeeded),
                expected,
                "{succeeded} successes"
            );
        }
        // A fractional factor compounds, rounding down: 3 × 1.5² = 6.75.
        assert_eq!(effective_rate_per_minute(&rate(1.5), 20), 6);
        let flat = RateLimit {
            maximum_per_minute: 7,
            exponential: None,
        };
        assert_eq!(effective_rate_per_minute(&flat, 1_000), 7);
    }
}
