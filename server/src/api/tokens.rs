//! API tokens, for admins: list them (never their values) and revoke one, audited.
//! Tokens are created with `ota-server tokens create`, which prints the value once.

use super::error::ApiError;
use super::extract::{parse_id, AdminScope, ApiQuery, Authorized};
use super::page::{self, Page};
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    #[param(value_type = Option<super::validate::schema::Limit>)]
    limit: Option<i64>,
    #[param(value_type = Option<super::validate::schema::Cursor>)]
    cursor: Option<String>,
    #[param(value_type = Option<super::validate::schema::Order>)]
    order: Option<String>,
}

/// API tokens (never their values), by creation time.
#[utoipa::path(get, path = "/api/v1/tokens", operation_id = "listTokens", tag = "tokens",
    params(ListQuery),
    responses((status = 200, description = "Tokens", body = Page<TokenInfo>)),
    security(("bearer" = ["admin"])))]

async fn list(
    State(state): State<AppState>,
    Authorized(_, _): Authorized<AdminScope>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<TokenInfo>>, ApiError> {
    let limit = validate::limit(query.limit)?;
    let (keyset, kind) = page::created_keyset(
        "tokens",
        query.order.as_deref(),
        query.cursor.as_deref(),
        limit,
    )?;
    let rows = state.store.token_page(&keyset).await?;
    Ok(Json(page::page(rows, limit, &kind, |t| {
        vec![t.created_at.clone(), t.id.clone()]
    })))
}

/// Revokes a token at once (audited): the next request with it is a 401; 409 if it is
/// already revoked.
#[utoipa::path(post, path = "/api/v1/tokens/{id}/revoke", operation_id = "revokeToken", tag = "tokens",
    params(("id" = super::validate::schema::TokenId, Path)),
    responses((status = 200, description = "The revoked token", body = TokenInfo)),
    security(("bearer" = ["admin"])))]
async fn revoke(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<AdminScope>,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    let id = parse_id("token", "tok", &id)?;
    Ok(Json(state.store.revoke_token(&caller.actor(), &id).await?))
}
