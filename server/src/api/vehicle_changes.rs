//! Changing a vehicle after registration (admin, audited): retag, rotate its device
//! key, decommission. A decommissioned vehicle is a 409 for every change.

use super::error::{ApiError, Problem};
use super::extract::{AdminScope, ApiJson, Authorized};
use super::validate;
use super::vehicles::device_key;
use super::{AppState, Routes};
use crate::engine::wall_clock_ms;
use crate::store::VehicleRecord;
use axum::extract::{Path, State};
use axum::routing::{post, put};
use axum::Json;
use serde::Deserialize;

pub fn routes() -> Routes {
    Routes::default()
        .add("put", "/api/v1/vehicles/{id}/tags", put(retag))
        .add("post", "/api/v1/vehicles/{id}/rotate-key", post(rotate_key))
        .add(
            "post",
            "/api/v1/vehicles/{id}/decommission",
            post(decommission),
        )
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retag {
    /// The vehicle's new tags (replacing all of them).
    #[schema(schema_with = super::validate::schema::tags)]
    pub tags: Vec<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// Hex of the new raw 32-byte Ed25519 device public key.
    #[schema(value_type = super::validate::schema::PublicKeyHex)]
    pub public_key: String,
}

/// Replaces a vehicle's tags (audited); rollouts select by the new tags from its next
/// check-in.
#[utoipa::path(put, path = "/api/v1/vehicles/{id}/tags", operation_id = "retagVehicle", tag = "vehicles",
    params(("id" = super::validate::schema::VehicleId, Path)),
    request_body = Retag,
    responses((status = 200, description = "The vehicle", body = VehicleRecord),
        (status = 409, description = "The vehicle is decommissioned", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["admin"])))]
async fn retag(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<AdminScope>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<Retag>,
) -> Result<Json<VehicleRecord>, ApiError> {
    validate::vehicle_id("id", &id)?;
    let mut problems = validate::Problems::default();
    problems.names("tags", &request.tags, validate::MAX_TAGS);
    problems.into_result()?;
    Ok(Json(
        state
            .store
            .retag_vehicle(&caller.actor(), &id, &request.tags)
            .await?,
    ))
}

/// Replaces a vehicle's device key (audited): the old key's signatures are refused from
/// now on.
#[utoipa::path(post, path = "/api/v1/vehicles/{id}/rotate-key", operation_id = "rotateVehicleKey", tag = "vehicles",
    params(("id" = super::validate::schema::VehicleId, Path)),
    request_body = RotateKey,
    responses((status = 200, description = "The vehicle", body = VehicleRecord),
        (status = 409, description = "The same key again, or the vehicle is decommissioned", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["admin"])))]
async fn rotate_key(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<AdminScope>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<RotateKey>,
) -> Result<Json<VehicleRecord>, ApiError> {
    validate::vehicle_id("id", &id)?;
    device_key("public_key", &request.public_key)?;
    Ok(Json(
        state
            .store
            .rotate_vehicle_key(&caller.actor(), &id, &request.public_key)
            .await?,
    ))
}

/// Takes the vehicle out of service: its check-ins, progress and blob credentials are
/// refused from now on (counted in `ota_vehicle_messages_dropped_total{reason=
/// "decommissioned"}`), and deployments not yet installing are cancelled.
#[utoipa::path(post, path = "/api/v1/vehicles/{id}/decommission", operation_id = "decommissionVehicle", tag = "vehicles",
    params(("id" = super::validate::schema::VehicleId, Path)),
    responses((status = 200, description = "The vehicle, decommissioned", body = VehicleRecord),
        (status = 409, description = "Decommissioned already", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["admin"])))]
async fn decommission(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<AdminScope>,
    Path(id): Path<String>,
) -> Result<Json<VehicleRecord>, ApiError> {
    validate::vehicle_id("id", &id)?;
    let (vehicle, _cancelled) = state
        .store
        .decommission_vehicle(&caller.actor(), &id, wall_clock_ms())
        .await?;
    Ok(Json(vehicle))
}
