//! Vehicles: provisioning (id, ECUs and hardware ids, device public key, tags), one at a
//! time or up to 10,000 in one all-or-nothing request, listing
//! with filters, and one vehicle's installed versions, last check-in and deployments.

use super::error::ApiError;
use super::extract::{AdminScope, ApiJson, ApiQuery, Authorized, Caller, JsonLimit};
use super::page::{self, Page};
use super::validate::{self, name as check_name};
use super::{AppState, Routes};
use crate::store::{DeploymentRecord, NewVehicle, VehicleListFilter, VehicleOrder, VehicleRecord};
use crate::tokens::Scope;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::routing::{get, post};
use axum::Json;
use ota_core::key::PublicKey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

pub fn routes() -> Routes {
    Routes::default()
        .add("post", "/api/v1/vehicles", post(register))
        .add(
            "post",
            "/api/v1/vehicles:bulk",
            post(register_bulk)
                // A route layer runs inside the router-wide body limit and overrides it.
                .layer(DefaultBodyLimit::max(BULK_BODY_BYTES))
                .layer(axum::middleware::from_fn(
                    |mut request: Request, next: Next| async move {
                        request.extensions_mut().insert(JsonLimit(BULK_BODY_BYTES));
                        next.run(request).await
                    },
                )),
        )
        .add("get", "/api/v1/vehicles", get(list))
        .add("get", "/api/v1/vehicles/{id}", get(get_one))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EcuSpec {
    #[schema(value_type = super::validate::schema::Name)]
    pub ecu: String,
    #[schema(value_type = super::validate::schema::Name)]
    pub hardware_id: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterVehicle {
    #[schema(value_type = super::validate::schema::VehicleId)]
    pub id: String,
    /// Hex of the raw 32-byte Ed25519 device public key.
    #[schema(value_type = super::validate::schema::PublicKeyHex)]
    pub public_key: String,
    /// Distinct ECU names.
    #[schema(min_items = 1, max_items = 32)]
    pub ecus: Vec<EcuSpec>,
    #[serde(default)]
    #[schema(schema_with = super::validate::schema::tags)]
    pub tags: Vec<String>,
}

/// A device public key: 64 lowercase hex digits of a valid, non-weak Ed25519 key.
pub fn device_key(field: &str, text: &str) -> Result<(), ApiError> {
    let raw = validate::lower_hex::<32>(
        field,
        "64 lowercase hex digits (raw Ed25519 public key)",
        text,
    )?;
    PublicKey::from_bytes(&raw)
        .map(|_| ())
        .map_err(|e| ApiError::invalid(field, "a valid, non-weak Ed25519 key", e))
}

/// Checks one registration; `at` prefixes field names (`""`, or `vehicles[3].` in a bulk
/// request) so a problem names exactly which entry and field is wrong.
fn validate(request: RegisterVehicle, at: &str) -> Result<NewVehicle, ApiError> {
    validate::vehicle_id(&format!("{at}id"), &request.id)?;
    device_key(&format!("{at}public_key"), &request.public_key)?;
    if request.ecus.is_empty() || request.ecus.len() > 32 {
        return Err(ApiError::invalid(
            format!("{at}ecus"),
            "1 to 32 ECUs",
            request.ecus.len(),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, ecu) in request.ecus.iter().enumerate() {
        check_name(&format!("{at}ecus[{i}].ecu"), &ecu.ecu)?;
        check_name(&format!("{at}ecus[{i}].hardware_id"), &ecu.hardware_id)?;
        if !seen.insert(ecu.ecu.as_str()) {
            return Err(ApiError::invalid(
                format!("{at}ecus[{i}].ecu"),
                "a name not used by another ECU",
                format!("{:?}", ecu.ecu),
            ));
        }
    }
    let mut problems = validate::Problems::default();
    problems.names(&format!("{at}tags"), &request.tags, validate::MAX_TAGS);
    problems.into_result()?;
    Ok(NewVehicle {
        id: request.id,
        public_key: request.public_key,
        tags: request.tags,
        ecus: request
            .ecus
            .into_iter()
            .map(|e| (e.ecu, e.hardware_id))
            .collect(),
    })
}

/// Provisions a vehicle: id, ECUs, device public key, tags.
#[utoipa::path(post, path = "/api/v1/vehicles", operation_id = "registerVehicle", tag = "vehicles",
    request_body = RegisterVehicle,
    responses((status = 201, description = "Registered", body = VehicleRecord)),
    security(("bearer" = ["admin"])))]
async fn register(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<AdminScope>,
    ApiJson(request): ApiJson<RegisterVehicle>,
) -> Result<(StatusCode, Json<VehicleRecord>), ApiError> {
    caller.require(Scope::Admin)?;
    let vehicle = validate(request, "")?;
    let record = state.store.insert_vehicle(&caller.actor(), vehicle).await?;
    Ok((StatusCode::CREATED, Json(record)))
}

/// Most registrations in one bulk request.
pub const MAX_BULK: usize = 10_000;
/// Body limit of a bulk request: 10,000 registrations with room for many ECUs each.
pub const BULK_BODY_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterVehicles {
    /// Distinct vehicle ids.
    #[schema(min_items = 1, max_items = 10000)]
    pub vehicles: Vec<RegisterVehicle>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BulkRegistered {
    pub registered: u64,
}

/// All or nothing: every entry is checked first (the first bad one is named by index
/// and field), then all are inserted in one transaction with one audit entry.
/// Provisions up to 10,000 vehicles in one transaction, all or nothing; a bad entry is
/// named by index and field (`vehicles[i].field`).
#[utoipa::path(post, path = "/api/v1/vehicles:bulk", operation_id = "registerVehicles", tag = "vehicles",
    request_body = RegisterVehicles,
    responses((status = 201, description = "Registered", body = BulkRegistered)),
    security(("bearer" = ["admin"])))]
async fn register_bulk(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<AdminScope>,
    ApiJson(request): ApiJson<RegisterVehicles>,
) -> Result<(StatusCode, Json<BulkRegistered>), ApiError> {
    caller.require(Scope::Admin)?;
    let count = request.vehicles.len();
    if count == 0 || count > MAX_BULK {
        return Err(ApiError::invalid(
            "vehicles",
            format!("1 to {MAX_BULK} registrations"),
            count,
        ));
    }
    let mut first_use = std::collections::HashMap::with_capacity(count);
    let mut vehicles = Vec::with_capacity(count);
    for (i, entry) in request.vehicles.into_iter().enumerate() {
        let vehicle = validate(entry, &format!("vehicles[{i}]."))?;
        if let Some(first) = first_use.insert(vehicle.id.clone(), i) {
            return Err(ApiError::invalid(
                format!("vehicles[{i}].id"),
                format!("an id not already used in this request (vehicles[{first}])"),
                format!("{:?}", vehicle.id),
            ));
        }
        vehicles.push(vehicle);
    }
    let registered = state
        .store
        .insert_vehicles(&caller.actor(), &vehicles)
        .await?;
    Ok((StatusCode::CREATED, Json(BulkRegistered { registered })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    #[param(value_type = Option<super::validate::schema::Name>)]
    hardware_id: Option<String>,
    #[param(value_type = Option<super::validate::schema::Name>)]
    tag: Option<String>,
    /// A tag set, comma-separated: vehicles carrying every one of them.
    #[param(value_type = Option<super::validate::schema::TagSet>)]
    tags: Option<String>,
    #[param(value_type = Option<super::validate::schema::Name>)]
    installed_version: Option<String>,
    #[param(value_type = Option<super::validate::schema::Limit>)]
    limit: Option<i64>,
    #[param(value_type = Option<super::validate::schema::Cursor>)]
    cursor: Option<String>,
    #[param(value_type = Option<super::validate::schema::VehicleSort>)]
    sort: Option<String>,
    #[param(value_type = Option<super::validate::schema::Order>)]
    order: Option<String>,
}

/// The vehicle list's order, and the list kind its cursors name, from `sort`, `order`
/// and `cursor` (the kind of the default order, by id ascending, is plain `vehicles`).
fn vehicle_order(
    sort: Option<&str>,
    order: Option<&str>,
    cursor: Option<&str>,
) -> Result<(VehicleOrder, String), ApiError> {
    let descending = page::descending(order)?;
    let direction = if descending { ":desc" } else { "" };
    match sort {
        None | Some("id") => {
            let kind = format!("vehicles{direction}");
            let after = cursor
                .map(|c| page::decode::<1>(&kind, c).map(|[id]| id))
                .transpose()?;
            Ok((VehicleOrder::Id { descending, after }, kind))
        }
        Some("last_seen_at") => {
            let kind = format!("vehicles:last_seen_at{direction}");
            let after = match cursor {
                None => None,
                Some(c) => {
                    let [seen, id] = page::decode::<2>(&kind, c)?;
                    Some((page::time_key(c, &seen)?, id))
                }
            };
            Ok((VehicleOrder::LastSeen { descending, after }, kind))
        }
        Some(other) => Err(ApiError::invalid(
            "sort",
            "id or last_seen_at",
            validate::shown(other),
        )),
    }
}

/// Lists vehicles by id (or by last check-in), with filters.
#[utoipa::path(get, path = "/api/v1/vehicles", operation_id = "listVehicles", tag = "vehicles",
    params(ListQuery),
    responses((status = 200, description = "Vehicles", body = Page<VehicleRecord>)),
    security(("bearer" = ["read"])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<VehicleRecord>>, ApiError> {
    caller.require(Scope::Read)?;
    let limit = validate::limit(query.limit)?;
    for (field, value) in [
        ("hardware_id", &query.hardware_id),
        ("tag", &query.tag),
        ("installed_version", &query.installed_version),
    ] {
        if let Some(value) = value {
            check_name(field, value)?;
        }
    }
    let mut tags: Vec<String> = query
        .tags
        .as_deref()
        .map(|t| t.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut problems = validate::Problems::default();
    problems.names("tags", &tags, validate::MAX_TAGS);
    problems.into_result()?;
    tags.extend(query.tag);
    let (order, kind) = vehicle_order(
        query.sort.as_deref(),
        query.order.as_deref(),
        query.cursor.as_deref(),
    )?;
    let by_last_seen = matches!(order, VehicleOrder::LastSeen { .. });
    let filter = VehicleListFilter {
        hardware_id: query.hardware_id,
        tags,
        installed_version: query.installed_version,
        order,
        limit: limit + 1,
    };
    let rows = state.store.vehicle_page(&filter).await?;
    Ok(Json(page::page(rows, limit, &kind, |v| {
        if by_last_seen {
            vec![v.last_seen_at.clone().unwrap_or_default(), v.id.clone()]
        } else {
            vec![v.id.clone()]
        }
    })))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VehicleDetail {
    #[serde(flatten)]
    pub vehicle: VehicleRecord,
    pub deployments: Vec<DeploymentRecord>,
}

/// One vehicle: installed versions, last check-in, deployment history.
#[utoipa::path(get, path = "/api/v1/vehicles/{id}", operation_id = "getVehicle", tag = "vehicles",
    params(("id" = super::validate::schema::VehicleId, Path)),
    responses((status = 200, description = "The vehicle", body = VehicleDetail)),
    security(("bearer" = ["read"])))]
pub(crate) async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<VehicleDetail>, ApiError> {
    caller.require(Scope::Read)?;
    validate::vehicle_id("vehicle id", &id)?;
    let vehicle = state.store.get_vehicle(&id).await?;
    let deployments = state.store.deployments_for_vehicle(&id).await?;
    Ok(Json(VehicleDetail {
        vehicle,
        deployments,
    }))
}
