//! API tokens, for admins: list them (never their values) and revoke one, audited.
//! Tokens are created with `ota-server tokens create`, which prints the value once.

use super::error::ApiError;
use super::extract::{parse_id, AdminScope, ApiQuery, Authorized};
use super::{validate, AppState, Routes};
use crate::store::TokenInfo;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Json;
use serde::Deserialize;

pub fn routes() -> Routes {
    Routes::default()
        .add("get", "/api/v1/tokens", get(list))
        .add("post", "/api/v1/tokens/{id}/revoke", post(revoke))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    Authorized(_, _): Authorized<AdminScope>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    let limit = validate::limit(query.limit)?;
    Ok(Json(state.store.list_tokens(limit).await?))
}

/// Revokes a token at once: the next request with it is a 401.
async fn revoke(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<AdminScope>,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    let id = parse_id("token", "tok", &id)?;
    Ok(Json(state.store.revoke_token(&caller.actor(), &id).await?))
}
