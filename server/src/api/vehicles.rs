//! Vehicles: provisioning (id, ECUs and hardware ids, device public key, tags), listing
//! with filters, and one vehicle's installed versions, last check-in and deployments.

use super::error::ApiError;
use super::extract::{AdminScope, ApiJson, ApiQuery, Authorized, Caller};
use super::images::check_name;
use super::{AppState, Routes};
use crate::store::{DeploymentRecord, NewVehicle, VehicleFilter, VehicleRecord};
use crate::tokens::Scope;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use ota_core::encoding::parse_lower_hex;
use ota_core::key::PublicKey;
use ota_core::protocol::is_valid_vehicle_id;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

pub fn routes() -> Routes {
    Routes::default()
        .add("post", "/api/v1/vehicles", post(register))
        .add("get", "/api/v1/vehicles", get(list))
        .add("get", "/api/v1/vehicles/{id}", get(get_one))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcuSpec {
    pub ecu: String,
    pub hardware_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterVehicle {
    pub id: String,
    /// Hex of the raw 32-byte Ed25519 device public key.
    pub public_key: String,
    pub ecus: Vec<EcuSpec>,
    #[serde(default)]
    pub tags: Vec<String>,
}

pub fn check_vehicle_id(id: &str) -> Result<(), ApiError> {
    if is_valid_vehicle_id(id) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "vehicle id",
            "1-64 characters of A-Z a-z 0-9 . _ -",
            format!("{id:?}"),
        ))
    }
}

async fn register(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<AdminScope>,
    ApiJson(request): ApiJson<RegisterVehicle>,
) -> Result<(StatusCode, Json<VehicleRecord>), ApiError> {
    caller.require(Scope::Admin)?;
    check_vehicle_id(&request.id).map_err(|_| {
        ApiError::invalid(
            "id",
            "1-64 characters of A-Z a-z 0-9 . _ -",
            format!("{:?}", request.id),
        )
    })?;
    let raw = parse_lower_hex::<32>(&request.public_key).map_err(|e| {
        ApiError::invalid(
            "public_key",
            "64 lowercase hex digits (raw Ed25519 public key)",
            e,
        )
    })?;
    PublicKey::from_bytes(&raw)
        .map_err(|e| ApiError::invalid("public_key", "a valid, non-weak Ed25519 key", e))?;
    if request.ecus.is_empty() || request.ecus.len() > 32 {
        return Err(ApiError::invalid(
            "ecus",
            "1 to 32 ECUs",
            request.ecus.len(),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, ecu) in request.ecus.iter().enumerate() {
        check_name(&format!("ecus[{i}].ecu"), &ecu.ecu)?;
        check_name(&format!("ecus[{i}].hardware_id"), &ecu.hardware_id)?;
        if !seen.insert(ecu.ecu.as_str()) {
            return Err(ApiError::invalid(
                format!("ecus[{i}].ecu"),
                "a name not used by another ECU",
                format!("{:?}", ecu.ecu),
            ));
        }
    }
    for (i, tag) in request.tags.iter().enumerate() {
        check_name(&format!("tags[{i}]"), tag)?;
    }
    let record = state
        .store
        .insert_vehicle(
            &caller.actor(),
            NewVehicle {
                id: request.id,
                public_key: request.public_key,
                tags: request.tags,
                ecus: request
                    .ecus
                    .into_iter()
                    .map(|e| (e.ecu, e.hardware_id))
                    .collect(),
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(record)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    hardware_id: Option<String>,
    tag: Option<String>,
    installed_version: Option<String>,
    limit: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Vec<VehicleRecord>>, ApiError> {
    caller.require(Scope::Read)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "1..=1000", limit));
    }
    for (field, value) in [
        ("hardware_id", &query.hardware_id),
        ("tag", &query.tag),
        ("installed_version", &query.installed_version),
    ] {
        if let Some(value) = value {
            check_name(field, value)?;
        }
    }
    let filter = VehicleFilter {
        hardware_id: query.hardware_id,
        tag: query.tag,
        installed_version: query.installed_version,
        limit,
    };
    Ok(Json(state.store.list_vehicles(&filter).await?))
}

#[derive(Debug, Serialize)]
pub struct VehicleDetail {
    #[serde(flatten)]
    pub vehicle: VehicleRecord,
    pub deployments: Vec<DeploymentRecord>,
}

async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<VehicleDetail>, ApiError> {
    caller.require(Scope::Read)?;
    check_vehicle_id(&id)?;
    let vehicle = state.store.get_vehicle(&id).await?;
    let deployments = state.store.deployments_for_vehicle(&id).await?;
    Ok(Json(VehicleDetail {
        vehicle,
        deployments,
    }))
}
