//! A rollout's deployments as operators see them: pages of them, one vehicle's with its
//! history (`deployment_events`, one row per status a deployment took, written in the
//! same transaction as the status), and operator cancel and retry.

use super::rollouts::{corrupt, deployment_from_row};
use super::window_now;
use super::{audit, ms_to_rfc3339, Actor, DeploymentRecord, Store, StoreError};
use crate::director::DeploymentStatus;
use serde::Serialize;
use sqlx::{Any, Row, Transaction};

/// `source` of a vehicle's own report (progress event, or a check-in proving a commit).
pub(crate) const VEHICLE: &str = "vehicle";
/// `source` of the director's assignments, retries under the policy and rollbacks.
pub(crate) const DIRECTOR: &str = "director";

/// One status a deployment took.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DeploymentEvent {
    #[schema(value_type = crate::api::validate::schema::Timestamp)]
    pub at: String,
    pub status: DeploymentStatus,
    /// The vehicle's progress sequence number, for its own reports.
    #[schema(value_type = Option<crate::api::validate::schema::Counter>)]
    pub sequence: Option<i64>,
    pub reason_code: Option<String>,
    /// `vehicle`, `director`, or the API token's name for an operator's action.
    pub source: String,
}

/// An outcome a deployment reached, at a time (the failure-ratio history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeEvent {
    pub deployment_id: String,
    pub at_ms: i64,
    pub status: DeploymentStatus,
}

/// An event about to be recorded.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub status: DeploymentStatus,
    pub sequence: Option<i64>,
    pub reason_code: Option<String>,
    pub source: String,
}

impl Event {
    pub fn new(status: DeploymentStatus, source: &str) -> Event {
        Event {
            status,
            sequence: None,
            reason_code: None,
            source: source.to_owned(),
        }
    }

    pub fn reason(mut self, reason: &str) -> Event {
        self.reason_code = Some(reason.to_owned());
        self
    }
}

/// Appends one event inside the transaction that changed the deployment.
pub(crate) async fn record_event(
    tx: &mut Transaction<'static, Any>,
    deployment_id: &str,
    now: i64,
    event: Event,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO deployment_events (deployment_id, at_ms, status, sequence, reason_code, source) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(deployment_id)
    .bind(now)
    .bind(event.status.as_str())
    .bind(event.sequence)
    .bind(event.reason_code)
    .bind(event.source)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One history row for [`record_events`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventRow<'a> {
    pub deployment_id: &'a str,
    pub at_ms: i64,
    pub status: DeploymentStatus,
    pub sequence: Option<i64>,
    pub reason_code: Option<&'a str>,
    pub source: &'a str,
}

/// History rows per multi-row `INSERT` (6 parameters each).
const EVENTS_PER_INSERT: usize = 500;

/// Appends history rows, in order, with one multi-row `INSERT` per
/// [`EVENTS_PER_INSERT`], inside the transaction that changed the deployments.
pub(crate) async fn record_events(
    tx: &mut Transaction<'static, Any>,
    events: &[EventRow<'_>],
) -> Result<(), StoreError> {
    for chunk in events.chunks(EVENTS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO deployment_events (deployment_id, at_ms, status, sequence, reason_code, source) \
             VALUES {}",
            super::values_rows(chunk.len(), 6)
        );
        let mut query = sqlx::query(&sql);
        for e in chunk {
            query = query
                .bind(e.deployment_id)
                .bind(e.at_ms)
                .bind(e.status.as_str())
                .bind(e.sequence)
                .bind(e.reason_code)
                .bind(e.source);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Which deployments of a rollout a page holds.
#[derive(Debug, Clone, Default)]
pub struct DeploymentQuery {
    pub status: Option<DeploymentStatus>,
    pub phase: Option<usize>,
    /// Only deployments after this (vehicle id, ECU), the sort key.
    pub after: Option<(String, String)>,
    pub limit: i64,
}

/// One operator change to deployments, planned by `engine::deployments::plan`: each
/// deployment moves from the status it was planned from to `to`.
#[derive(Debug, Clone)]
pub struct DeploymentChange {
    pub rollout_id: String,
    pub vehicle_id: String,
    /// `deployment.cancel` or `deployment.retry`.
    pub action: &'static str,
    /// (deployment id, status planned from).
    pub deployments: Vec<(String, DeploymentStatus)>,
    pub to: DeploymentStatus,
    pub now_ms: i64,
}

impl Store {
    /// A page of a rollout's deployments, ordered by (vehicle id, ECU).
    pub async fn deployment_page(
        &self,
        rollout_id: &str,
        query: &DeploymentQuery,
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        let (after_vehicle, after_ecu) = query.after.clone().unwrap_or_default();
        let rows = sqlx::query(
            "SELECT * FROM deployments WHERE rollout_id = $1 \
             AND ($2 = '' OR status = $2) AND ($3 < 0 OR phase_index = $3) \
             AND (vehicle_id > $4 OR (vehicle_id = $4 AND ecu > $5)) \
             ORDER BY vehicle_id, ecu LIMIT $6",
        )
        .bind(rollout_id)
        .bind(query.status.map(|s| s.as_str()).unwrap_or(""))
        .bind(query.phase.map_or(-1, |p| p.min(i64::MAX as usize) as i64))
        .bind(after_vehicle)
        .bind(after_ecu)
        .bind(query.limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    /// One vehicle's deployments in a rollout (one per ECU the rollout updates).
    pub async fn vehicle_deployments(
        &self,
        rollout_id: &str,
        vehicle_id: &str,
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM deployments WHERE rollout_id = $1 AND vehicle_id = $2 ORDER BY ecu",
        )
        .bind(rollout_id)
        .bind(vehicle_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    /// A deployment's history, oldest first.
    pub async fn deployment_events(
        &self,
        deployment_id: &str,
    ) -> Result<Vec<DeploymentEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT at_ms, status, sequence, reason_code, source FROM deployment_events \
             WHERE deployment_id = $1 ORDER BY id",
        )
        .bind(deployment_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                Ok(DeploymentEvent {
                    at: ms_to_rfc3339(row.try_get("at_ms")?),
                    status: DeploymentStatus::parse(&status)
                        .ok_or_else(|| corrupt("deployment event status", &status))?,
                    sequence: row.try_get("sequence")?,
                    reason_code: row.try_get("reason_code")?,
                    source: row.try_get("source")?,
                })
            })
            .collect()
    }

    /// A rollout's outcome events (committed, failed, rolled back), in the order they
    /// were recorded: the failure-ratio history of the rollout status read model. One
    /// row per outcome a deployment reached, read by the deployments' rollout index.
    pub async fn rollout_outcome_events(
        &self,
        rollout_id: &str,
    ) -> Result<Vec<OutcomeEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT e.deployment_id, e.at_ms, e.status FROM deployment_events e \
             JOIN deployments d ON d.id = e.deployment_id \
             WHERE d.rollout_id = $1 AND e.status IN ('committed', 'failed', 'rolled_back') \
             ORDER BY e.id",
        )
        .bind(rollout_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                Ok(OutcomeEvent {
                    deployment_id: row.try_get("deployment_id")?,
                    at_ms: row.try_get("at_ms")?,
                    status: DeploymentStatus::parse(&status)
                        .ok_or_else(|| corrupt("deployment event status", &status))?,
                })
            })
            .collect()
    }

    /// Persists an operator's cancel or retry in one transaction: each deployment only if
    /// it still has the status the change was planned from (else nothing is written and
    /// `Ok(None)` says to plan again), its event, and the audit entry. Returns the
    /// deployments as they are now.
    pub async fn apply_deployment_change(
        &self,
        actor: &Actor,
        change: &DeploymentChange,
    ) -> Result<Option<Vec<DeploymentRecord>>, StoreError> {
        let now = change.now_ms;
        let mut tx = self.begin().await?;
        let mut changed = Vec::new();
        for (id, from) in &change.deployments {
            let statement = match change.to {
                // A retry is a new attempt: progress sequences start over (the agent
                // numbers each attempt on from the last), the backoff and the in-progress
                // timeout count from now.
                DeploymentStatus::Assigned => {
                    concat!(
                        "UPDATE deployments SET status = 'assigned', attempts = attempts + 1, \
                         last_sequence = 0, reason_code = NULL, assigned_ms = $1, updated_ms = $1, ",
                        window_now!(),
                        " WHERE id = $2 AND status = $3 RETURNING *"
                    )
                }
                _ => {
                    "UPDATE deployments SET status = $4, reason_code = 'cancelled_by_operator', \
                     updated_ms = $1 WHERE id = $2 AND status = $3 RETURNING *"
                }
            };
            let mut query = sqlx::query(statement)
                .bind(now)
                .bind(id)
                .bind(from.as_str());
            if change.to != DeploymentStatus::Assigned {
                query = query.bind(change.to.as_str());
            }
            let Some(row) = query.fetch_optional(&mut *tx).await? else {
                // Its status moved meanwhile (a vehicle's report, another operator).
                return Ok(None);
            };
            let record = deployment_from_row(&row)?;
            let mut event = Event::new(change.to, &actor.name);
            event.reason_code = record.reason_code.clone();
            record_event(&mut tx, id, now, event).await?;
            changed.push(record);
        }
        audit::record(
            &mut tx,
            actor,
            change.action,
            &change.rollout_id,
            serde_json::json!({
                "vehicle_id": change.vehicle_id,
                "deployments": changed.iter().map(|d| serde_json::json!({
                    "id": d.id, "ecu": d.ecu, "attempts": d.attempts,
                })).collect::<Vec<_>>(),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(changed))
    }
}
