//! The audit log: one row per mutating call, written inside the caller's transaction.

use super::{ms_to_rfc3339, now_ms, Actor, Store, StoreError};
use serde::Serialize;
use sqlx::{Any, Row, Transaction};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    #[schema(minimum = 1)]
    pub id: i64,
    #[schema(value_type = crate::api::validate::schema::Timestamp)]
    pub at: String,
    pub actor: String,
    pub action: String,
    pub subject: String,
    /// What changed (depends on the action).
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    /// The `x-request-id` of the call; null for changes the server made itself.
    pub request_id: Option<String>,
}

/// Appends an audit entry inside `tx`, so the entry exists if and only if the change does.
pub(crate) async fn record(
    tx: &mut Transaction<'static, Any>,
    actor: &Actor,
    action: &str,
    subject: &str,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (at_ms, actor, action, subject, detail, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(now_ms())
    .bind(&actor.name)
    .bind(action)
    .bind(subject)
    .bind(detail.to_string())
    .bind(actor.request_id.clone())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// The newest entries first, at most `limit`, optionally only those older than `before`.
    pub async fn list_audit(
        &self,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at_ms, actor, action, subject, detail, request_id FROM audit_log \
             WHERE id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(audit_from_row)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}

pub(super) fn audit_from_row(row: &sqlx::any::AnyRow) -> Result<AuditEntry, sqlx::Error> {
    let detail: String = row.try_get("detail")?;
    Ok(AuditEntry {
        id: row.try_get("id")?,
        at: ms_to_rfc3339(row.try_get("at_ms")?),
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        subject: row.try_get("subject")?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
        request_id: row.try_get("request_id")?,
    })
}
