//! Progress reports applied in bulk: a pure plan of what a batch of reports does to the
//! deployments it names, then three statements for the whole batch (read the rows under
//! the write lock, one `UPDATE` of every changed row, one multi-row `INSERT` of the
//! history), instead of an `UPDATE` and an `INSERT` per report.

use super::deployments::{record_events, EventRow, VEHICLE};
use super::rollouts::{corrupt, DeploymentUpdate};
use super::{Store, StoreError};
use crate::director::DeploymentStatus;
use sqlx::{Any, Row, Transaction};
use std::collections::HashMap;

/// Deployments per `UPDATE` (4 parameters each).
const ROWS_PER_UPDATE: usize = 500;

/// What the database holds of a deployment, as far as a progress report cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Current {
    pub vehicle_id: String,
    pub status: DeploymentStatus,
    pub last_sequence: i64,
}

/// A deployment's state after the batch, for one that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Final<'a> {
    pub deployment_id: &'a str,
    pub status: DeploymentStatus,
    pub last_sequence: i64,
    pub reason_code: Option<&'a str>,
}

/// What a batch of reports does.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan<'a> {
    /// Per report, in order: whether it changed anything.
    pub changed: Vec<bool>,
    /// The changed deployments' final states, in the order each first changed.
    pub finals: Vec<Final<'a>>,
    /// The history rows, in report order: (deployment id, status, sequence, reason).
    pub events: Vec<(&'a str, DeploymentStatus, Option<i64>, Option<&'a str>)>,
}

/// Applies `updates` in order to `current`, each as the single-row rule would: a report
/// changes its deployment only if the deployment exists, belongs to the reporting
/// vehicle, is not finished (committed, failed, rolled back, cancelled) and has only
/// seen lower sequence numbers; a later report sees the earlier ones' effect.
pub(crate) fn plan<'a>(
    mut current: HashMap<String, Current>,
    updates: &[DeploymentUpdate<'a>],
) -> Plan<'a> {
    let mut plan = Plan::default();
    let mut final_index: HashMap<&'a str, usize> = HashMap::new();
    for u in updates {
        // `u64` sequences above `i64::MAX` are stored as `i64::MAX`, never wrapped.
        let sequence = i64::try_from(u.sequence).unwrap_or(i64::MAX);
        let applies = current.get(u.deployment_id).is_some_and(|row| {
            row.vehicle_id == u.vehicle_id
                && row.last_sequence < sequence
                && !row.status.is_terminal()
        });
        plan.changed.push(applies);
        if !applies {
            continue;
        }
        if let Some(row) = current.get_mut(u.deployment_id) {
            row.status = u.status;
            row.last_sequence = sequence;
        }
        let state = Final {
            deployment_id: u.deployment_id,
            status: u.status,
            last_sequence: sequence,
            reason_code: u.reason_code,
        };
        match final_index.get(u.deployment_id) {
            Some(&i) => plan.finals[i] = state,
            None => {
                final_index.insert(u.deployment_id, plan.finals.len());
                plan.finals.push(state);
            }
        }
        // A check-in proving a commit carries no sequence of its own.
        plan.events.push((
            u.deployment_id,
            u.status,
            (sequence < i64::MAX).then_some(sequence),
            u.reason_code,
        ));
    }
    plan
}

impl Store {
    /// Applies progress reports in one transaction, in order, each as
    /// [`Store::update_deployment`] would alone (a later report for the same deployment
    /// sees the earlier one's sequence). Returns, per report, whether it changed anything.
    pub async fn update_deployments(
        &self,
        updates: &[DeploymentUpdate<'_>],
        now: i64,
    ) -> Result<Vec<bool>, StoreError> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let ids = updates.iter().map(|u| u.deployment_id).collect();
        let rows = self
            .locked_by_id(
                &mut tx,
                "SELECT id, vehicle_id, status, last_sequence FROM deployments WHERE id IN",
                ids,
            )
            .await?;
        let mut current = HashMap::with_capacity(rows.len());
        for row in rows {
            let status: String = row.try_get("status")?;
            current.insert(
                row.try_get::<String, _>("id")?,
                Current {
                    vehicle_id: row.try_get("vehicle_id")?,
                    status: DeploymentStatus::parse(&status)
                        .ok_or_else(|| corrupt("deployment status", &status))?,
                    last_sequence: row.try_get("last_sequence")?,
                },
            );
        }
        let plan = plan(current, updates);
        for rows in plan.finals.chunks(ROWS_PER_UPDATE) {
            update_rows(&mut tx, rows, now).await?;
        }
        let events: Vec<EventRow<'_>> = plan
            .events
            .iter()
            .map(|(deployment_id, status, sequence, reason_code)| EventRow {
                deployment_id,
                at_ms: now,
                status: *status,
                sequence: *sequence,
                reason_code: *reason_code,
                source: VEHICLE,
            })
            .collect();
        record_events(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(plan.changed)
    }
}

/// One `UPDATE` setting each row to its final state (`UPDATE … FROM (VALUES …)`).
async fn update_rows(
    tx: &mut Transaction<'static, Any>,
    rows: &[Final<'_>],
    now: i64,
) -> Result<(), StoreError> {
    // Parameters: $1 = now, then per row: id, status, sequence, reason.
    let sql = super::update_by_id_sql(
        "deployments",
        &["status", "last_sequence", "reason_code"],
        ", updated_ms = $1",
        rows.len(),
        2,
    );
    let mut query = sqlx::query(&sql).bind(now);
    for row in rows {
        query = query
            .bind(row.deployment_id)
            .bind(row.status.as_str())
            .bind(row.last_sequence)
            .bind(row.reason_code);
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn row(vehicle: &str, status: DeploymentStatus, last: i64) -> Current {
        Current {
            vehicle_id: vehicle.to_owned(),
            status,
            last_sequence: last,
        }
    }

    fn update<'a>(
        id: &'a str,
        vehicle: &'a str,
        status: DeploymentStatus,
        sequence: u64,
    ) -> DeploymentUpdate<'a> {
        DeploymentUpdate {
            deployment_id: id,
            vehicle_id: vehicle,
            status,
            sequence,
            reason_code: None,
        }
    }

    #[test]
    fn each_report_is_judged_against_the_state_the_earlier_ones_left() {
        use DeploymentStatus::*;
        let current = HashMap::from([
            ("d1".to_owned(), row("v1", Assigned, 0)),
            ("d2".to_owned(), row("v2", Downloading, 4)),
            ("d3".to_owned(), row("v3", Committed, 1)),
        ]);
        let updates = [
            update("d1", "v1", Downloading, 1),
            update("d1", "v1", Downloading, 1), // duplicate
            update("d1", "v1", Installed, 3),
            update("d1", "v1", Downloading, 2), // older, after a newer one
            update("d2", "v1", Failed, 9),      // another vehicle's deployment
            update("d2", "v2", Failed, 4),      // not above the last sequence
            update("d2", "v2", Failed, 5),
            update("d2", "v2", Installed, 6), // d2 is finished now
            update("d3", "v3", Installed, 2), // finished before the batch
            update("d9", "v1", Installed, 1), // unknown
            update("d1", "v1", Committed, u64::MAX),
        ];
        let plan = plan(current, &updates);
        assert_eq!(
            plan.changed,
            [true, false, true, false, false, false, true, false, false, false, true]
        );
        assert_eq!(
            plan.finals,
            [
                Final {
                    deployment_id: "d1",
                    status: Committed,
                    last_sequence: i64::MAX,
                    reason_code: None
                },
                Final {
                    deployment_id: "d2",
                    status: Failed,
                    last_sequence: 5,
                    reason_code: None
                },
            ]
        );
        assert_eq!(
            plan.events,
            [
                ("d1", Downloading, Some(1), None),
                ("d1", Installed, Some(3), None),
                ("d2", Failed, Some(5), None),
                ("d1", Committed, None, None),
            ]
        );
    }

    proptest! {
        /// The batch plan equals applying the single-row rule report by report.
        #[test]
        fn a_batch_decides_as_reports_applied_one_at_a_time(
            reports in proptest::collection::vec((0usize..3, 0usize..2, 0usize..8, 0u64..6), 0..24),
        ) {
            let ids = ["d0", "d1", "d2"];
            let vehicles = ["v0", "v1"];
            let statuses = DeploymentStatus::ALL;
            let start = HashMap::from([
                ("d0".to_owned(), row("v0", DeploymentStatus::Assigned, 0)),
                ("d1".to_owned(), row("v1", DeploymentStatus::Downloading, 2)),
            ]);
            let updates: Vec<DeploymentUpdate> = reports
                .iter()
                .map(|&(d, v, s, q)| update(ids[d], vehicles[v], statuses[s % statuses.len()], q))
                .collect();
            let batch = plan(start.clone(), &updates);
            let mut state = start;
            let mut changed = Vec::new();
            for u in &updates {
                let one = plan(state.clone(), std::slice::from_ref(u));
                changed.push(one.changed[0]);
                for f in one.finals {
                    let entry = state.get_mut(f.deployment_id).unwrap();
                    entry.status = f.status;
                    entry.last_sequence = f.last_sequence;
                }
            }
            prop_assert_eq!(&batch.changed, &changed);
            for f in &batch.finals {
                let s = &state[f.deployment_id];
                prop_assert_eq!((f.status, f.last_sequence), (s.status, s.last_sequence));
            }
            prop_assert_eq!(batch.events.len(), changed.iter().filter(|c| **c).count());
        }
    }
}
