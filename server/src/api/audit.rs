//! The audit log, readable by admins.

use super::error::ApiError;
use super::extract::{ApiQuery, Caller};
use super::page::{self, Page};
use super::{AppState, Routes};
use crate::store::{AuditEntry, AuditFilter};
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
pub(crate) struct AuditQuery {
    #[param(value_type = Option<super::validate::schema::Limit>)]
    limit: Option<i64>,
    #[param(value_type = Option<super::validate::schema::Cursor>)]
    cursor: Option<String>,
    #[param(value_type = Option<super::validate::schema::AuditFilterText>)]
    actor: Option<String>,
    #[param(value_type = Option<super::validate::schema::AuditFilterText>)]
    action: Option<String>,
    /// The id of what was changed (the entry's subject).
    #[param(value_type = Option<super::validate::schema::AuditFilterText>)]
    target: Option<String>,
    /// `since <= at < until`, each `YYYY-MM-DDTHH:MM:SSZ`.
    #[param(value_type = Option<super::validate::schema::UtcSecond>)]
    since: Option<String>,
    #[param(value_type = Option<super::validate::schema::UtcSecond>)]
    until: Option<String>,
}

/// The list kind named in the audit log's cursors (newest first, by id).
const CURSOR_KIND: &str = "audit";

/// Longest actor, action or target filter, in characters: what the audit log holds is
/// at most this.
pub const MAX_FILTER_LEN: usize = 256;

fn time(field: &str, text: &str) -> Result<i64, ApiError> {
    ota_core::time::Timestamp::parse(text)
        .map(|t| t.unix_seconds().saturating_mul(1000))
        .map_err(|_| {
            ApiError::invalid(
                field,
                "a time as YYYY-MM-DDTHH:MM:SSZ",
                super::validate::shown(text),
            )
        })
}

/// The audit log of mutating calls, newest first.
#[utoipa::path(get, path = "/api/v1/audit", operation_id = "listAudit", tag = "audit",
    params(AuditQuery),
    responses((status = 200, description = "Audit entries", body = Page<AuditEntry>)),
    security(("bearer" = ["admin"])))]

pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    caller.require(Scope::Admin)?;
    let limit = super::validate::limit(query.limit)?;
    let mut problems = super::validate::Problems::default();
    for (field, value) in [
        ("actor", &query.actor),
        ("action", &query.action),
        ("target", &query.target),
    ] {
        if let Some(value) = value {
            if value.is_empty()
                || value.chars().count() > MAX_FILTER_LEN
                || value.chars().any(char::is_control)
            {
                problems.push(
                    field,
                    format!("1-{MAX_FILTER_LEN} characters, no control characters"),
                    super::validate::shown(value),
                );
            }
        }
    }
    problems.into_result()?;
    let before_id = query
        .cursor
        .as_deref()
        .map(|c| {
            let [id] = page::decode::<1>(CURSOR_KIND, c)?;
            id.parse::<i64>().map_err(|_| page::refused(c))
        })
        .transpose()?;
    let filter = AuditFilter {
        actor: query.actor,
        action: query.action,
        target: query.target,
        since_ms: query
            .since
            .as_deref()
            .map(|t| time("since", t))
            .transpose()?,
        until_ms: query
            .until
            .as_deref()
            .map(|t| time("until", t))
            .transpose()?,
        before_id,
        limit: limit + 1,
    };
    let rows = state.store.audit_page(&filter).await?;
    Ok(Json(page::page(rows, limit, CURSOR_KIND, |a| {
        vec![a.id.to_string()]
    })))
}
