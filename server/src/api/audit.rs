//! The audit log, readable by admins.

use super::error::ApiError;
use super::extract::{ApiQuery, Caller};
use super::{AppState, Routes};
use crate::store::AuditEntry;
use crate::tokens::Scope;
use axum::extract::State;
use axum::routing::get;
use axum::Json;
use serde::Deserialize;

pub fn routes() -> Routes {
    Routes::default().add("get", "/api/v1/audit", get(list))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<i64>,
    before: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    caller.require(Scope::Admin)?;
    let limit = super::validate::limit(query.limit)?;
    Ok(Json(state.store.list_audit(limit, query.before).await?))
}
