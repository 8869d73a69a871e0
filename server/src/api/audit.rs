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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    #[param(value_type = Option<super::validate::schema::Limit>)]
    limit: Option<i64>,
    /// Only entries with a smaller id (the next page: the last id seen).
    #[param(value_type = Option<super::validate::schema::Counter>)]
    before: Option<i64>,
}

/// The audit log of mutating calls, newest first.
#[utoipa::path(get, path = "/api/v1/audit", operation_id = "listAudit", tag = "audit",
    params(AuditQuery),
    responses((status = 200, description = "Audit entries", body = Vec<AuditEntry>)),
    security(("bearer" = ["admin"])))]

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    caller.require(Scope::Admin)?;
    let limit = super::validate::limit(query.limit)?;
    if let Some(before) = query.before {
        let mut problems = super::validate::Problems::default();
        problems.range("before", before, 0, i64::MAX);
        problems.into_result()?;
    }
    Ok(Json(state.store.list_audit(limit, query.before).await?))
}
