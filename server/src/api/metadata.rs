//! Signed metadata for vehicles and operators.
//!
//! - `GET /v1/metadata/targets.json`: the newest targets envelope, byte for byte as signed
//!   (vehicles verify director assignments against it);
//! - `GET /v1/metadata/root/{version}.json`: root version N, for vehicles walking the
//!   root chain one version at a time;
//! - `GET /api/v1/targets`: the same targets for operators, with its decoded payload, so
//!   that an offline signer (`otactl release create --sign-key`) can extend it.
//!
//! The vehicle routes take the vehicle request credential (or a read token): signed
//! metadata is the same for every vehicle, so any registered vehicle may read it.

use super::error::ApiError;
use super::extract::{Caller, VehicleRouteCaller};
use super::releases::stored_targets;
use super::{AppState, Routes};
use crate::tokens::Scope;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde_json::Value;

pub fn routes() -> Routes {
    Routes::default()
        .add("get", "/api/v1/targets", get(current_targets))
        .add("get", "/v1/metadata/targets.json", get(vehicle_targets))
        .add("get", "/v1/metadata/root/{version}", get(vehicle_root))
}

async fn latest(state: &AppState) -> Result<(u64, String), ApiError> {
    state
        .store
        .latest_targets()
        .await?
        .ok_or_else(|| ApiError::NotFound {
            entity: "targets metadata",
            id: "latest (no release yet)".to_owned(),
        })
}

fn signed_json(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// The newest targets metadata, decoded and as its envelope.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Targets {
    #[schema(value_type = super::validate::schema::Counter)]
    pub version: u64,
    #[schema(value_type = super::validate::schema::Timestamp)]
    pub expires: ota_core::time::Timestamp,
    /// Image name → hardware id, version, security_version, length, sha256.
    #[schema(value_type = Object)]
    pub targets: ota_core::encoding::StrictMap<String, ota_core::metadata::TargetImage>,
    /// The DSSE envelope (PROTOCOL.md), as signed.
    #[schema(value_type = Object)]
    pub envelope: Value,
}

/// The newest signed targets metadata (cumulative: every released image), decoded and
/// as an envelope; 404 before the first release.
#[utoipa::path(get, path = "/api/v1/targets", operation_id = "getTargets", tag = "releases",
    responses((status = 200, description = "The newest targets", body = Targets)),
    security(("bearer" = ["read"])))]
async fn current_targets(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Targets>, ApiError> {
    caller.require(Scope::Read)?;
    let (version, envelope) = latest(&state).await?;
    let metadata = stored_targets(&envelope)?;
    let envelope: Value =
        serde_json::from_str(&envelope).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Json(Targets {
        version,
        expires: metadata.expires,
        targets: metadata.targets,
        envelope,
    }))
}

/// The newest targets envelope, byte for byte as signed.
#[utoipa::path(get, path = "/v1/metadata/targets.json", operation_id = "getVehicleTargets", tag = "vehicles",
    responses((status = 200, description = "The signed envelope", body = Object)),
    security(("vehicle" = []), ("bearer" = ["read"])))]
async fn vehicle_targets(
    State(state): State<AppState>,
    _caller: VehicleRouteCaller,
) -> Result<Response, ApiError> {
    let (_, envelope) = latest(&state).await?;
    Ok(signed_json(envelope.into_bytes()))
}

/// Root metadata version N (`{version}` = `N.json`), for walking the root chain.
#[utoipa::path(get, path = "/v1/metadata/root/{version}", operation_id = "getVehicleRoot", tag = "vehicles",
    params(("version" = String, Path, pattern = "^[1-9][0-9]{0,18}\\.json$", description = "`N.json`, N ≥ 1")),
    responses((status = 200, description = "The signed envelope", body = Object)),
    security(("vehicle" = []), ("bearer" = ["read"])))]
async fn vehicle_root(
    State(state): State<AppState>,
    _caller: VehicleRouteCaller,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let version = file
        .strip_suffix(".json")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v >= 1)
        .ok_or_else(|| ApiError::invalid("version", "<N>.json with N ≥ 1", &file))?;
    let bytes = state
        .keys
        .root_version(version)
        .ok_or_else(|| ApiError::NotFound {
            entity: "root metadata",
            id: version.to_string(),
        })?;
    Ok(signed_json(bytes))
}
