//! Changing a vehicle after registration: its tags, its device key, taking it out of
//! service. Each change and its audit entry are one transaction.

use super::deployments::{record_event, Event};
use super::rollouts::deployment_from_row;
use super::{audit, Actor, DeploymentRecord, Store, StoreError, VehicleRecord};
use crate::director::DeploymentStatus;

/// A vehicle column an operator may set.
#[derive(Debug, Clone, Copy)]
enum Column {
    Tags,
    PublicKey,
}

impl Store {
    /// The vehicle as it is, or why it cannot change: not found, or decommissioned
    /// (a conflict: nothing about a vehicle out of service changes any more).
    async fn changeable(&self, id: &str) -> Result<VehicleRecord, StoreError> {
        let vehicle = self.get_vehicle(id).await?;
        match &vehicle.decommissioned_at {
            Some(at) => Err(StoreError::Conflict {
                entity: "vehicle",
                detail: format!("{id} was decommissioned at {at}"),
            }),
            None => Ok(vehicle),
        }
    }

    /// Replaces the vehicle's tags (audited with the old and new ones). Rollouts select
    /// by tag at each check-in, so the change applies from the next one.
    pub async fn retag_vehicle(
        &self,
        actor: &Actor,
        id: &str,
        tags: &[String],
    ) -> Result<VehicleRecord, StoreError> {
        let before = self.changeable(id).await?;
        let detail = serde_json::json!({ "from": before.tags, "to": tags });
        let value = serde_json::to_string(tags).unwrap_or_default();
        self.set_vehicle_column(actor, id, Column::Tags, &value, detail)
            .await
    }

    /// Replaces the device public key: from the commit on, only the new key's signatures
    /// are accepted (check-ins, progress, blob credentials).
    pub async fn rotate_vehicle_key(
        &self,
        actor: &Actor,
        id: &str,
        public_key: &str,
    ) -> Result<VehicleRecord, StoreError> {
        let before = self.changeable(id).await?;
        if before.public_key == public_key {
            return Err(StoreError::Conflict {
                entity: "vehicle",
                detail: format!("{id} already has this key"),
            });
        }
        let detail = serde_json::json!({ "from": before.public_key, "to": public_key });
        self.set_vehicle_column(actor, id, Column::PublicKey, public_key, detail)
            .await
    }

    /// Sets one column of a vehicle in service and audits it, in one transaction.
    async fn set_vehicle_column(
        &self,
        actor: &Actor,
        id: &str,
        column: Column,
        value: &str,
        detail: serde_json::Value,
    ) -> Result<VehicleRecord, StoreError> {
        let (statement, action) = match column {
            Column::Tags => (
                "UPDATE vehicles SET tags = $1 WHERE id = $2 AND decommissioned_ms IS NULL",
                "vehicle.retag",
            ),
            Column::PublicKey => (
                "UPDATE vehicles SET public_key = $1 WHERE id = $2 AND decommissioned_ms IS NULL",
                "vehicle.rotate_key",
            ),
        };
        let mut tx = self.begin().await?;
        let updated = sqlx::query(statement)
            .bind(value)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            // Decommissioned between the read and this write.
            drop(tx);
            return Err(self.changed_meanwhile(id).await);
        }
        audit::record(&mut tx, actor, action, id, detail).await?;
        tx.commit().await?;
        self.get_vehicle(id).await
    }

    /// Why a conditional vehicle write matched no row: the vehicle is gone or was
    /// decommissioned between the read and the write (what `changeable` says), else a
    /// conflict.
    async fn changed_meanwhile(&self, id: &str) -> StoreError {
        self.changeable(id)
            .await
            .err()
            .unwrap_or(StoreError::Conflict {
                entity: "vehicle",
                detail: format!("{id} changed meanwhile"),
            })
    }

    /// Takes the vehicle out of service: its messages are refused from now on, and its
    /// deployments not yet installing are cancelled (so no rollout waits for them).
    /// Returns the vehicle and the cancelled deployments.
    pub async fn decommission_vehicle(
        &self,
        actor: &Actor,
        id: &str,
        now: i64,
    ) -> Result<(VehicleRecord, Vec<DeploymentRecord>), StoreError> {
        self.changeable(id).await?;
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE vehicles SET decommissioned_ms = $1 WHERE id = $2 AND decommissioned_ms IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            drop(tx);
            return Err(self.changed_meanwhile(id).await);
        }
        let rows = sqlx::query(
            "UPDATE deployments SET status = 'cancelled', reason_code = 'decommissioned', \
             updated_ms = $1 WHERE vehicle_id = $2 AND status IN ('assigned', 'downloading') \
             RETURNING *",
        )
        .bind(now)
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let cancelled = rows
            .iter()
            .map(deployment_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        for d in &cancelled {
            let event =
                Event::new(DeploymentStatus::Cancelled, &actor.name).reason("decommissioned");
            record_event(&mut tx, &d.id, now, event).await?;
        }
        audit::record(
            &mut tx,
            actor,
            "vehicle.decommission",
            id,
            serde_json::json!({ "cancelled": cancelled.iter().map(|d| &d.id).collect::<Vec<_>>() }),
        )
        .await?;
        tx.commit().await?;
        Ok((self.get_vehicle(id).await?, cancelled))
    }
}
