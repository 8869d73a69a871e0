//! The transactional outbox of rollout events: written in the transaction of the change
//! it reports ([`record`]), read and deleted by the relay that publishes it to Kafka
//! (`events::RolloutRelay`), one relay at a time under a lease.

use super::{Store, StoreError};
use sqlx::{Any, Row, Transaction};

/// The lease the rollout-events relay holds while it publishes.
const ROLLOUT_EVENTS_LEASE: &str = "rollout-events";

/// One event waiting to be published: its id (the event's `event_id`), its key and the
/// event as written by the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub rollout_id: String,
    pub event: String,
}

/// Appends an event inside `tx`: it exists if and only if the change it reports does.
pub(crate) async fn record(
    tx: &mut Transaction<'static, Any>,
    rollout_id: &str,
    event: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO rollout_outbox (rollout_id, event, created_ms) VALUES ($1, $2, $3)")
        .bind(rollout_id)
        .bind(event)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Store {
    /// Takes or renews the relay lease for `holder` until `now_ms + ttl_ms`; false when
    /// another holder's lease has not lapsed yet.
    pub async fn take_outbox_lease(
        &self,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let taken = sqlx::query(
            "UPDATE outbox_leases SET holder = $1, expires_ms = $2 \
             WHERE name = $3 AND (holder = $1 OR expires_ms <= $4)",
        )
        .bind(holder)
        .bind(now_ms.saturating_add(ttl_ms))
        .bind(ROLLOUT_EVENTS_LEASE)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(taken.rows_affected() == 1)
    }

    /// Gives the lease up (at shutdown), so another replica's relay takes over at once.
    pub async fn release_outbox_lease(&self, holder: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox_leases SET holder = '', expires_ms = 0 WHERE name = $1 AND holder = $2",
        )
        .bind(ROLLOUT_EVENTS_LEASE)
        .bind(holder)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The oldest `limit` events waiting, in the order their changes committed.
    pub async fn outbox_batch(&self, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let rows =
            sqlx::query("SELECT id, rollout_id, event FROM rollout_outbox ORDER BY id LIMIT $1")
                .bind(limit)
                .fetch_all(self.pool())
                .await?;
        rows.iter()
            .map(|row| {
                Ok(OutboxRow {
                    id: row.try_get("id")?,
                    rollout_id: row.try_get("rollout_id")?,
                    event: row.try_get("event")?,
                })
            })
            .collect()
    }

    /// Deletes the published events `ids` (by id, never a range: on PostgreSQL an
    /// earlier id may commit after a later one, and must not be deleted unpublished).
    pub async fn outbox_published(&self, ids: &[i64]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "DELETE FROM rollout_outbox WHERE id IN ({})",
            super::placeholders(ids.len())
        );
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(*id);
        }
        Ok(query.execute(self.pool()).await?.rows_affected())
    }

    /// How many events wait to be published.
    pub async fn outbox_pending(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM rollout_outbox")
            .fetch_one(self.pool())
            .await?;
        Ok(row.try_get("n")?)
    }
}
