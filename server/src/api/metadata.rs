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
use serde_json::{json, Value};

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

async fn current_targets(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Read)?;
    let (version, envelope) = latest(&state).await?;
    let metadata = stored_targets(&envelope)?;
    let envelope: Value =
        serde_json::from_str(&envelope).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Json(json!({
        "version": version,
        "expires": metadata.expires,
        "targets": metadata.targets,
        "envelope": envelope,
    })))
}

async fn vehicle_targets(
    State(state): State<AppState>,
    _caller: VehicleRouteCaller,
) -> Result<Response, ApiError> {
    let (_, envelope) = latest(&state).await?;
    Ok(signed_json(envelope.into_bytes()))
}

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
