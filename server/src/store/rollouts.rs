//! Rollouts and their deployments (one row per vehicle ECU assigned).

use super::deployments::{record_event, record_events, Event, EventRow, DIRECTOR};
use super::window_now;
use super::{
    audit, ms_to_rfc3339, new_id, now_ms, optional_digest, parse_json, Actor, Store, StoreError,
};
use crate::blob_access::DeploymentBlobs;
use crate::breaker::BreakerState;
use crate::director::{DeploymentStatus, NewDeployment, STOPPED_BY_ROLLOUT};
use crate::engine::plan::{Effect, RolloutChange};
use crate::rollout::{RolloutSpec, RolloutState};
use ota_core::encoding::Sha256Digest;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Rollout)]
pub struct RolloutRecord {
    #[schema(value_type = crate::api::validate::schema::RolloutId)]
    pub id: String,
    #[schema(value_type = crate::api::validate::schema::Name)]
    pub name: String,
    #[schema(value_type = crate::api::validate::schema::ReleaseId)]
    pub release_id: String,
    pub spec: RolloutSpec,
    /// Hex of the cohort salt (DESIGN §7): publishing it lets anyone reproduce cohorts.
    pub salt: String,
    pub state: RolloutState,
    pub current_phase: usize,
    #[serde(skip)]
    pub phase_started_ms: Option<i64>,
    pub breaker_state: BreakerState,
    pub breaker_reason: Option<String>,
    #[serde(skip)]
    pub window_start_ms: i64,
    #[schema(value_type = crate::api::validate::schema::Timestamp)]
    pub created_at: String,
    #[schema(value_type = crate::api::validate::schema::Timestamp)]
    pub updated_at: String,
}

/// A directive's new deployments to record ([`Store::insert_assignments`]).
#[derive(Debug, Clone)]
pub struct AssignmentWrite {
    pub rollout_id: String,
    pub vehicle_id: String,
    pub phase: usize,
    pub new: Vec<NewDeployment>,
    pub now: i64,
}

/// A progress report to apply to a deployment ([`Store::update_deployments`]).
#[derive(Debug, Clone, Copy)]
pub struct DeploymentUpdate<'a> {
    pub deployment_id: &'a str,
    /// The reporting vehicle: a report for another vehicle's deployment changes nothing.
    pub vehicle_id: &'a str,
    pub status: DeploymentStatus,
    pub sequence: u64,
    pub reason_code: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct NewRollout {
    pub name: String,
    pub release_id: String,
    pub spec: RolloutSpec,
    pub salt: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Deployment)]
pub struct DeploymentRecord {
    pub id: String,
    #[schema(value_type = crate::api::validate::schema::RolloutId)]
    pub rollout_id: String,
    #[schema(value_type = crate::api::validate::schema::VehicleId)]
    pub vehicle_id: String,
    #[schema(value_type = crate::api::validate::schema::Name)]
    pub ecu: String,
    pub phase: usize,
    pub status: DeploymentStatus,
    pub attempts: u32,
    #[serde(skip)]
    pub updated_ms: i64,
    #[schema(value_type = Option<crate::api::validate::schema::Sha256Hex>)]
    pub from_sha256: Option<Sha256Digest>,
    pub reason_code: Option<String>,
    #[schema(value_type = crate::api::validate::schema::Timestamp)]
    pub assigned_at: String,
    #[schema(value_type = crate::api::validate::schema::Timestamp)]
    pub updated_at: String,
}

/// Deployment counts of one phase, by status.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PhaseCounts {
    pub assigned: u64,
    pub downloading: u64,
    pub installed: u64,
    pub committed: u64,
    pub failed: u64,
    pub rolled_back: u64,
    pub cancelled: u64,
}

impl PhaseCounts {
    pub(super) fn add(&mut self, status: DeploymentStatus, n: u64) {
        match status {
            DeploymentStatus::Assigned => self.assigned += n,
            DeploymentStatus::Downloading => self.downloading += n,
            DeploymentStatus::Installed => self.installed += n,
            DeploymentStatus::Committed => self.committed += n,
            DeploymentStatus::Failed => self.failed += n,
            DeploymentStatus::RolledBack => self.rolled_back += n,
            DeploymentStatus::Cancelled => self.cancelled += n,
        }
    }

    /// Adds another phase's counts (rollout totals).
    pub fn add_counts(&mut self, other: &PhaseCounts) {
        self.assigned += other.assigned;
        self.downloading += other.downloading;
        self.installed += other.installed;
        self.committed += other.committed;
        self.failed += other.failed;
        self.rolled_back += other.rolled_back;
        self.cancelled += other.cancelled;
    }

    /// Every deployment ever started in the phase, whatever its status now.
    pub fn total(&self) -> u64 {
        self.assigned
            + self.downloading
            + self.installed
            + self.committed
            + self.failed
            + self.rolled_back
            + self.cancelled
    }
}

pub(super) fn corrupt(what: &'static str, got: &str) -> StoreError {
    StoreError::Corrupt {
        what,
        reason: format!("unknown value {got:?}"),
    }
}

pub(super) fn rollout_from_row(row: &AnyRow) -> Result<RolloutRecord, StoreError> {
    let state: String = row.try_get("state")?;
    let breaker: String = row.try_get("breaker_state")?;
    let spec: String = row.try_get("spec")?;
    Ok(RolloutRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        release_id: row.try_get("release_id")?,
        spec: parse_json("rollout spec", &spec)?,
        salt: row.try_get("salt")?,
        state: RolloutState::parse(&state).ok_or_else(|| corrupt("rollout state", &state))?,
        current_phase: row.try_get::<i64, _>("current_phase")?.max(0) as usize,
        phase_started_ms: row.try_get("phase_started_ms")?,
        breaker_state: BreakerState::parse(&breaker)
            .ok_or_else(|| corrupt("breaker state", &breaker))?,
        breaker_reason: row.try_get("breaker_reason")?,
        window_start_ms: row.try_get("window_start_ms")?,
        created_at: ms_to_rfc3339(row.try_get("created_ms")?),
        updated_at: ms_to_rfc3339(row.try_get("updated_ms")?),
    })
}

pub(super) fn deployment_from_row(row: &AnyRow) -> Result<DeploymentRecord, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(DeploymentRecord {
        id: row.try_get("id")?,
        rollout_id: row.try_get("rollout_id")?,
        vehicle_id: row.try_get("vehicle_id")?,
        ecu: row.try_get("ecu")?,
        phase: row.try_get::<i64, _>("phase_index")?.max(0) as usize,
        status: DeploymentStatus::parse(&status)
            .ok_or_else(|| corrupt("deployment status", &status))?,
        attempts: row.try_get::<i64, _>("attempts")?.clamp(0, u32::MAX as i64) as u32,
        updated_ms: row.try_get("updated_ms")?,
        from_sha256: optional_digest("deployment from_sha256", row.try_get("from_sha256")?)?,
        reason_code: row.try_get("reason_code")?,
        assigned_at: ms_to_rfc3339(row.try_get("assigned_ms")?),
        updated_at: ms_to_rfc3339(row.try_get("updated_ms")?),
    })
}

/// Why a planned rollout change was not persisted.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The rollout no longer holds the values the change was planned from; here it is
    /// as it is now, to plan again.
    #[error("rollout {} changed meanwhile (now {})", .0.id, .0.state.as_str())]
    Raced(Box<RolloutRecord>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ChangeError {
    fn from(err: sqlx::Error) -> Self {
        ChangeError::Store(err.into())
    }
}

impl Store {
    pub async fn insert_rollout(
        &self,
        actor: &Actor,
        rollout: NewRollout,
    ) -> Result<RolloutRecord, StoreError> {
        let id = new_id("ro");
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO rollouts (id, name, release_id, spec, salt, state, created_ms, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, 'draft', $6, $6)",
        )
        .bind(&id)
        .bind(&rollout.name)
        .bind(&rollout.release_id)
        .bind(serde_json::to_string(&rollout.spec).unwrap_or_default())
        .bind(&rollout.salt)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            actor,
            "rollout.create",
            &id,
            serde_json::json!({ "name": rollout.name, "release_id": rollout.release_id, "spec": rollout.spec }),
        )
        .await?;
        tx.commit().await?;
        self.get_rollout(&id).await
    }

    pub async fn get_rollout(&self, id: &str) -> Result<RolloutRecord, StoreError> {
        let row = sqlx::query("SELECT * FROM rollouts WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                entity: "rollout",
                id: id.to_owned(),
            })?;
        rollout_from_row(&row)
    }

    pub async fn list_rollouts(
        &self,
        state: Option<RolloutState>,
    ) -> Result<Vec<RolloutRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM rollouts WHERE ($1 = '' OR state = $1) ORDER BY created_ms, id",
        )
        .bind(state.map(|s| s.as_str()).unwrap_or(""))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(rollout_from_row).collect()
    }

    /// Running and paused rollouts, oldest first (the director's priority order).
    pub async fn active_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM rollouts WHERE state IN ('running', 'paused') ORDER BY created_ms, id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(rollout_from_row).collect()
    }

    /// Persists a planned change in one transaction: the rollout row (only if it still
    /// holds the values the change was planned from), its audit lines, and — when the
    /// change cancels unfinished deployments — those deployments, which are returned.
    /// A change planned from stale values is refused with [`ChangeError::Raced`], so two
    /// operators (or two replicas) cannot both win a race. With `event`, the change's
    /// rollout event goes to the outbox in the same transaction, so the event exists
    /// if and only if the change does.
    pub async fn apply_rollout_change(
        &self,
        actor: &Actor,
        change: &RolloutChange,
        event: Option<&str>,
    ) -> Result<(RolloutRecord, Vec<DeploymentRecord>), ChangeError> {
        let now = change.now_ms;
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE rollouts SET state = $1, current_phase = $2, phase_started_ms = $3, \
             breaker_state = $4, breaker_reason = $5, window_start_ms = $6, updated_ms = $7 \
             WHERE id = $8 AND state = $9 AND current_phase = $10 AND breaker_state = $11",
        )
        .bind(change.state.as_str())
        .bind(change.current_phase as i64)
        .bind(change.phase_started_ms)
        .bind(change.breaker_state.as_str())
        .bind(change.breaker_reason.as_deref())
        .bind(change.window_start_ms)
        .bind(now)
        .bind(&change.rollout_id)
        .bind(change.expected.state.as_str())
        .bind(change.expected.phase as i64)
        .bind(change.expected.breaker.as_str())
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            drop(tx);
            // Not found, or someone else changed it between our read and write.
            let latest = self.get_rollout(&change.rollout_id).await?;
            return Err(ChangeError::Raced(Box::new(latest)));
        }
        for line in &change.audit {
            audit::record(
                &mut tx,
                actor,
                &line.action,
                &change.rollout_id,
                line.detail.clone(),
            )
            .await?;
        }
        if let Some(event) = event {
            super::outbox::record(&mut tx, &change.rollout_id, event, now).await?;
        }
        let mut cancelled = Vec::new();
        if change.has(Effect::CancelUnfinished) {
            let rows = sqlx::query(
                "UPDATE deployments SET status = 'cancelled', reason_code = $3, updated_ms = $1 \
                 WHERE rollout_id = $2 AND status IN ('assigned', 'downloading') RETURNING *",
            )
            .bind(now)
            .bind(&change.rollout_id)
            .bind(STOPPED_BY_ROLLOUT)
            .fetch_all(&mut *tx)
            .await?;
            cancelled = rows
                .iter()
                .map(deployment_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            for d in &cancelled {
                let event = Event::new(DeploymentStatus::Cancelled, &actor.name);
                record_event(&mut tx, &d.id, now, event.reason(STOPPED_BY_ROLLOUT)).await?;
            }
        }
        tx.commit().await?;
        Ok((self.get_rollout(&change.rollout_id).await?, cancelled))
    }

    pub async fn deployments_for_vehicle(
        &self,
        vehicle_id: &str,
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        self.deployments_where(
            "SELECT * FROM deployments WHERE vehicle_id = $1 ORDER BY assigned_ms, id",
            vehicle_id,
        )
        .await
    }

    /// The deployments of each of `vehicle_ids` (absent: none), in one query, each
    /// vehicle's in the order of [`Store::deployments_for_vehicle`].
    pub async fn deployments_for_vehicles(
        &self,
        vehicle_ids: &[&str],
    ) -> Result<HashMap<String, Vec<DeploymentRecord>>, StoreError> {
        let rows = self
            .fetch_in("SELECT * FROM deployments WHERE vehicle_id IN", vehicle_ids)
            .await?;
        let mut sorted = Vec::with_capacity(rows.len());
        for row in &rows {
            sorted.push((
                row.try_get::<i64, _>("assigned_ms")?,
                deployment_from_row(row)?,
            ));
        }
        sorted.sort_by(|(a_ms, a), (b_ms, b)| (a_ms, &a.id).cmp(&(b_ms, &b.id)));
        let mut out: HashMap<String, Vec<DeploymentRecord>> = HashMap::new();
        for (_, d) in sorted {
            out.entry(d.vehicle_id.clone()).or_default().push(d);
        }
        Ok(out)
    }

    pub async fn deployments_for_rollout(
        &self,
        rollout_id: &str,
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        self.deployments_where(
            "SELECT * FROM deployments WHERE rollout_id = $1 ORDER BY assigned_ms, id",
            rollout_id,
        )
        .await
    }

    /// The vehicle's deployments that may still name blobs (unfinished, of a rolled-back
    /// rollout, or updated since `since_ms`), each with the release image for its ECU and
    /// the ECU's installed image: what `blob_access::named_blob` decides from. One read
    /// by the `deployments_by_vehicle` index; the joins are primary-key lookups.
    pub async fn deployment_blobs(
        &self,
        vehicle_id: &str,
        since_ms: i64,
    ) -> Result<Vec<DeploymentBlobs>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.status, d.updated_ms, r.state AS rollout_state, i.sha256 AS target_sha256, \
                    d.from_sha256, e.installed_sha256 \
             FROM deployments d \
             JOIN rollouts r ON r.id = d.rollout_id \
             JOIN vehicle_ecus e ON e.vehicle_id = d.vehicle_id AND e.ecu = d.ecu \
             JOIN release_images ri ON ri.release_id = r.release_id AND ri.hardware_id = e.hardware_id \
             JOIN images i ON i.id = ri.image_id \
             WHERE d.vehicle_id = $1 \
               AND (d.status NOT IN ($2, $3, $4, $5) OR r.state = $6 OR d.updated_ms >= $7)",
        )
        .bind(vehicle_id)
        .bind(DeploymentStatus::Committed.as_str())
        .bind(DeploymentStatus::Failed.as_str())
        .bind(DeploymentStatus::RolledBack.as_str())
        .bind(DeploymentStatus::Cancelled.as_str())
        .bind(RolloutState::RolledBack.as_str())
        .bind(since_ms)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                let rollout_state: String = row.try_get("rollout_state")?;
                Ok(DeploymentBlobs {
                    status: DeploymentStatus::parse(&status)
                        .ok_or_else(|| corrupt("deployment status", &status))?,
                    updated_ms: row.try_get("updated_ms")?,
                    rolled_back: rollout_state == RolloutState::RolledBack.as_str(),
                    target: super::digest(
                        "image sha256",
                        &row.try_get::<String, _>("target_sha256")?,
                    )?,
                    from: optional_digest("deployment from_sha256", row.try_get("from_sha256")?)?,
                    installed: optional_digest(
                        "ECU installed_sha256",
                        row.try_get("installed_sha256")?,
                    )?,
                })
            })
            .collect()
    }

    /// Deployments selected by `query`, whose one parameter is `key`.
    async fn deployments_where(
        &self,
        query: &'static str,
        key: &str,
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        let rows = sqlx::query(query).bind(key).fetch_all(self.pool()).await?;
        rows.iter().map(deployment_from_row).collect()
    }

    /// Records new deployments; an id that exists already is left as it is (idempotent).
    pub async fn insert_deployments(
        &self,
        rollout_id: &str,
        vehicle_id: &str,
        phase: usize,
        new: &[NewDeployment],
        now: i64,
    ) -> Result<(), StoreError> {
        self.insert_assignments(&[AssignmentWrite {
            rollout_id: rollout_id.to_owned(),
            vehicle_id: vehicle_id.to_owned(),
            phase,
            new: new.to_vec(),
            now,
        }])
        .await
    }

    /// [`Store::insert_deployments`] for many directives, in one transaction: the new
    /// deployments in one multi-row `INSERT … RETURNING` per [`NEW_PER_INSERT`], the
    /// history of those inserted in one more.
    pub async fn insert_assignments(&self, writes: &[AssignmentWrite]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for w in writes {
            retry_deployments_in(&mut tx, w).await?;
        }
        let new: Vec<(&AssignmentWrite, &NewDeployment)> = writes
            .iter()
            .flat_map(|w| w.new.iter().filter(|d| !d.retry).map(move |d| (w, d)))
            .collect();
        let mut inserted: HashSet<String> = HashSet::new();
        for chunk in new.chunks(NEW_PER_INSERT) {
            let values: Vec<String> = (0..chunk.len())
                .map(|k| {
                    let p = |i: usize| format!("${}", 7 * k + i);
                    format!(
                        "({}, {}, {}, {}, {}, 'assigned', {}, {}, {}, \
                         (SELECT window_start_ms FROM rollouts WHERE id = {}))",
                        p(1),
                        p(2),
                        p(3),
                        p(4),
                        p(5),
                        p(6),
                        p(7),
                        p(7),
                        p(2)
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO deployments (id, rollout_id, vehicle_id, ecu, phase_index, status, \
                 from_sha256, assigned_ms, updated_ms, window_ms) VALUES {} ON CONFLICT DO NOTHING RETURNING id",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for (w, d) in chunk {
                query = query
                    .bind(&d.deployment_id)
                    .bind(&w.rollout_id)
                    .bind(&w.vehicle_id)
                    .bind(&d.ecu)
                    .bind(w.phase as i64)
                    .bind(d.from_sha256.map(|s| s.to_hex()))
                    .bind(w.now);
            }
            for row in query.fetch_all(&mut *tx).await? {
                inserted.insert(row.try_get("id")?);
            }
        }
        // History for what was inserted (an id that existed already is left alone).
        let events: Vec<EventRow<'_>> = new
            .iter()
            .filter(|(_, d)| inserted.remove(&d.deployment_id))
            .map(|(w, d)| EventRow {
                deployment_id: &d.deployment_id,
                at_ms: w.now,
                status: DeploymentStatus::Assigned,
                sequence: None,
                reason_code: None,
                source: DIRECTOR,
            })
            .collect();
        record_events(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Vehicles newly assigned in this rollout since `since_ms` (rate limiting).
    pub async fn vehicles_started_since(
        &self,
        rollout_id: &str,
        since_ms: i64,
    ) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(DISTINCT vehicle_id) AS n FROM deployments WHERE rollout_id = $1 AND assigned_ms >= $2",
        )
        .bind(rollout_id)
        .bind(since_ms)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get::<i64, _>("n")?.max(0) as u64)
    }

    /// Applies a progress report to a deployment of `vehicle_id`. Reports with a sequence
    /// at or below the last applied one are ignored, so redelivery is harmless.
    /// Returns whether anything changed.
    pub async fn update_deployment(
        &self,
        deployment_id: &str,
        vehicle_id: &str,
        status: DeploymentStatus,
        sequence: u64,
        reason_code: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let update = DeploymentUpdate {
            deployment_id,
            vehicle_id,
            status,
            sequence,
            reason_code,
        };
        Ok(self.update_deployments(&[update], now).await?[0])
    }

    /// The deployments with these ids (in no particular order; unknown ids are absent).
    pub async fn deployments_by_ids(
        &self,
        ids: &[&str],
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        self.fetch_in("SELECT * FROM deployments WHERE id IN", ids)
            .await?
            .iter()
            .map(deployment_from_row)
            .collect()
    }

    /// Marks a deployment whose vehicle runs its previous image again as rolled back.
    /// Only an installed or committed deployment can be rolled back.
    pub async fn mark_rolled_back(
        &self,
        deployment_id: &str,
        vehicle_id: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE deployments SET status = 'rolled_back', reason_code = 'rollback', updated_ms = $1 \
             WHERE id = $2 AND vehicle_id = $3 AND status IN ('installed', 'committed')",
        )
        .bind(now)
        .bind(deployment_id)
        .bind(vehicle_id)
        .execute(&mut *tx)
        .await?;
        let changed = updated.rows_affected() > 0;
        if changed {
            let event = Event::new(DeploymentStatus::RolledBack, DIRECTOR).reason("rollback");
            record_event(&mut tx, deployment_id, now, event).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }
}

/// New deployments per multi-row `INSERT` (7 parameters each).
const NEW_PER_INSERT: usize = 500;

/// One directive's deployments handed out again, inside `tx`.
async fn retry_deployments_in(
    tx: &mut Transaction<'static, Any>,
    write: &AssignmentWrite,
) -> Result<(), StoreError> {
    let (new, now) = (&write.new, write.now);
    for d in new.iter().filter(|d| d.retry) {
        // Handed out again, the deployment goes back to assigned and its progress
        // sequences start over. A failed one (the retry policy) costs one more
        // attempt; one its rollout stopped (a breaker's pause, resumed) costs none.
        let stopped = format!("status = 'cancelled' AND reason_code = '{STOPPED_BY_ROLLOUT}'");
        for (from, attempts, reason) in [
            ("status = 'failed'", "attempts + 1", "retry_policy"),
            (stopped.as_str(), "attempts", "resumed"),
        ] {
            let again = sqlx::query(&format!(
                "UPDATE deployments SET status = 'assigned', attempts = {attempts}, last_sequence = 0, \
                 reason_code = NULL, assigned_ms = $1, updated_ms = $1, {} \
                 WHERE id = $2 AND {from}",
                window_now!()
            ))
            .bind(now)
            .bind(&d.deployment_id)
            .execute(&mut **tx)
            .await?;
            if again.rows_affected() > 0 {
                let event = Event::new(DeploymentStatus::Assigned, DIRECTOR).reason(reason);
                record_event(tx, &d.deployment_id, now, event).await?;
                break;
            }
        }
    }
    Ok(())
}
