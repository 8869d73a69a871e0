//! A rollout's deployments: a page of them (per vehicle and ECU: status, phase,
//! attempts), one vehicle's with their history, and an operator's cancel or retry of
//! one vehicle (audited; 409 naming the allowed actions when it would change nothing).

use super::error::{ApiError, Problem};
use super::extract::{parse_id, ApiQuery, Authorized, Caller, RolloutWriteScope};
use super::page::{self, Page};
use super::{validate, AppState, Routes};
use crate::director::DeploymentStatus;
use crate::engine::deployments::{
    allowed_actions, DeploymentAction, DeploymentChangeFailed, DeploymentRefused,
};
use crate::engine::wall_clock_ms;
use crate::store::{DeploymentEvent, DeploymentQuery, DeploymentRecord};
use crate::tokens::Scope;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Json;
use serde::{Deserialize, Serialize};

pub fn routes() -> Routes {
    Routes::default()
        .add("get", "/api/v1/rollouts/{id}/deployments", get(list))
        .add(
            "get",
            "/api/v1/rollouts/{id}/deployments/{vehicle}",
            get(get_one),
        )
        .add(
            "post",
            "/api/v1/rollouts/{id}/deployments/{vehicle}/cancel",
            post(cancel),
        )
        .add(
            "post",
            "/api/v1/rollouts/{id}/deployments/{vehicle}/retry",
            post(retry),
        )
}

/// The list kind named in this list's cursors.
const CURSOR_KIND: &str = "deployments";

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListDeployments {
    /// Only deployments in this status.
    #[param(value_type = Option<DeploymentStatus>)]
    pub state: Option<String>,
    /// Only deployments of this phase (its index).
    #[param(value_type = Option<super::validate::schema::PhaseIndex>)]
    pub phase: Option<i64>,
    #[param(value_type = Option<super::validate::schema::Limit>)]
    pub limit: Option<i64>,
    #[param(value_type = Option<super::validate::schema::Cursor>)]
    pub cursor: Option<String>,
}

/// A deployment with its history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeploymentDetail {
    #[serde(flatten)]
    pub deployment: DeploymentRecord,
    pub events: Vec<DeploymentEvent>,
}

/// One vehicle's deployments in a rollout, and what an operator may do now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VehicleDeployments {
    #[schema(value_type = super::validate::schema::RolloutId)]
    pub rollout_id: String,
    #[schema(value_type = super::validate::schema::VehicleId)]
    pub vehicle_id: String,
    pub allowed_actions: Vec<DeploymentAction>,
    pub deployments: Vec<DeploymentDetail>,
}

fn parse_state(text: &str) -> Result<DeploymentStatus, ApiError> {
    DeploymentStatus::parse(text).ok_or_else(|| {
        ApiError::invalid(
            "state",
            DeploymentStatus::ALL
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            validate::shown(text),
        )
    })
}

/// A page of the rollout's deployments, by vehicle and ECU: status, phase, attempts.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}/deployments", operation_id = "listDeployments", tag = "rollouts",
    params(("id" = super::validate::schema::RolloutId, Path), ListDeployments),
    responses((status = 200, description = "Deployments", body = Page<DeploymentRecord>)),
    security(("bearer" = ["read"])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ListDeployments>,
) -> Result<Json<Page<DeploymentRecord>>, ApiError> {
    caller.require(Scope::Read)?;
    let id = parse_id("rollout", "ro", &id)?;
    let limit = validate::limit(query.limit)?;
    let status = query.state.as_deref().map(parse_state).transpose()?;
    let phase = match query.phase {
        None => None,
        Some(p) => {
            let mut problems = validate::Problems::default();
            problems.range("phase", p, 0, crate::rollout::MAX_PHASES as i64 - 1);
            problems.into_result()?;
            Some(p as usize)
        }
    };
    let after = query
        .cursor
        .as_deref()
        .map(|c| page::decode::<2>(CURSOR_KIND, c).map(|[v, e]| (v, e)))
        .transpose()?;
    // 404 for a rollout that does not exist, rather than an empty page.
    state.store.get_rollout(&id).await?;
    let rows = state
        .store
        .deployment_page(
            &id,
            &DeploymentQuery {
                status,
                phase,
                after,
                limit: limit + 1,
            },
        )
        .await?;
    Ok(Json(page::page(rows, limit, CURSOR_KIND, |d| {
        vec![d.vehicle_id.clone(), d.ecu.clone()]
    })))
}

/// One vehicle's deployments in the rollout, each with its history, and the actions
/// allowed now.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}/deployments/{vehicle}", operation_id = "getVehicleDeployments", tag = "rollouts",
    params(("id" = super::validate::schema::RolloutId, Path), ("vehicle" = super::validate::schema::VehicleId, Path)),
    responses((status = 200, description = "The vehicle's deployments", body = VehicleDeployments)),
    security(("bearer" = ["read"])))]
pub(crate) async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, vehicle)): Path<(String, String)>,
) -> Result<Json<VehicleDeployments>, ApiError> {
    caller.require(Scope::Read)?;
    let id = parse_id("rollout", "ro", &id)?;
    validate::vehicle_id("vehicle", &vehicle)?;
    let rollout = state.store.get_rollout(&id).await?;
    let deployments = state.store.vehicle_deployments(&id, &vehicle).await?;
    if deployments.is_empty() {
        return Err(ApiError::NotFound {
            entity: "deployment of vehicle",
            id: vehicle,
        });
    }
    let allowed = allowed_actions(rollout.state, &deployments);
    let mut details = Vec::new();
    for deployment in deployments {
        let events = state.store.deployment_events(&deployment.id).await?;
        details.push(DeploymentDetail { deployment, events });
    }
    Ok(Json(VehicleDeployments {
        rollout_id: id,
        vehicle_id: vehicle,
        allowed_actions: allowed,
        deployments: details,
    }))
}

pub(crate) async fn act(
    state: AppState,
    caller: Caller,
    id: String,
    vehicle: String,
    action: DeploymentAction,
) -> Result<Json<Vec<DeploymentRecord>>, ApiError> {
    let id = parse_id("rollout", "ro", &id)?;
    validate::vehicle_id("vehicle", &vehicle)?;
    let changed = state
        .engine
        .change_deployment(&caller.actor(), &id, &vehicle, action, wall_clock_ms())
        .await
        .map_err(|err| match err {
            DeploymentChangeFailed::Refused(DeploymentRefused::NoDeployment { .. }) => {
                ApiError::NotFound {
                    entity: "deployment of vehicle",
                    id: vehicle.clone(),
                }
            }
            DeploymentChangeFailed::Refused(refused) => ApiError::Conflict(refused.to_string()),
            DeploymentChangeFailed::Raced => ApiError::Conflict(err.to_string()),
            DeploymentChangeFailed::Store(store) => store.into(),
        })?;
    Ok(Json(changed))
}

/// Cancels the vehicle's deployments that are not installing yet; the vehicle is told at
/// once and gets nothing more from this rollout.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/deployments/{vehicle}/cancel", operation_id = "cancelDeployment", tag = "rollouts",
    params(("id" = super::validate::schema::RolloutId, Path), ("vehicle" = super::validate::schema::VehicleId, Path)),
    responses((status = 200, description = "The deployments changed", body = Vec<DeploymentRecord>),
        (status = 409, description = "Nothing to cancel: the problem lists the allowed actions", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["rollout:write"])))]
async fn cancel(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<RolloutWriteScope>,
    Path((id, vehicle)): Path<(String, String)>,
) -> Result<Json<Vec<DeploymentRecord>>, ApiError> {
    act(state, caller, id, vehicle, DeploymentAction::Cancel).await
}

/// Hands the vehicle's failed or cancelled deployments out again (running rollouts).
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/deployments/{vehicle}/retry", operation_id = "retryDeployment", tag = "rollouts",
    params(("id" = super::validate::schema::RolloutId, Path), ("vehicle" = super::validate::schema::VehicleId, Path)),
    responses((status = 200, description = "The deployments changed", body = Vec<DeploymentRecord>),
        (status = 409, description = "Nothing to retry, or the rollout is not running: the problem lists the allowed actions", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["rollout:write"])))]
async fn retry(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<RolloutWriteScope>,
    Path((id, vehicle)): Path<(String, String)>,
) -> Result<Json<Vec<DeploymentRecord>>, ApiError> {
    act(state, caller, id, vehicle, DeploymentAction::Retry).await
}
