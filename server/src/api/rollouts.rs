//! Rollouts: create, start, pause, resume, abort, rollback; status with per-phase
//! counts and breaker state; the delta builds a rollout started.

use super::error::ApiError;
use super::extract::{parse_id, ApiJson, ApiQuery, Authorized, Caller, RolloutWriteScope};
use super::page::{self, Page};
use super::validate;
use super::{AppState, Routes};
use crate::engine::history::RolloutHistory;
use crate::engine::plan::{PlanError, RolloutRequest};
use crate::engine::{wall_clock_ms, ChangeFailed};
use crate::engine::{DryRun, RolloutStatus};
use crate::rollout::{
    AbortCriteria, MaintenanceWindow, PhaseSpec, Preconditions, RateLimit, RetryPolicy,
    RolloutAction, RolloutSpec, RolloutState, Selector,
};
use crate::store::{DeltaJob, DeltaJobStatus, NewRollout, RolloutRecord, StoreError};
use crate::tokens::Scope;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use serde::{Deserialize, Serialize};

pub fn routes() -> Routes {
    Routes::default()
        .add("post", "/api/v1/rollouts", post(create))
        .add("post", "/api/v1/rollouts:dry-run", post(dry_run))
        .add("get", "/api/v1/rollouts", get(list))
        .add("get", "/api/v1/rollouts/{id}", get(get_one))
        .add("get", "/api/v1/rollouts/{id}/status", get(status))
        .add("get", "/api/v1/rollouts/{id}/history", get(history))
        .add("post", "/api/v1/rollouts/{id}/start", post(start))
        .add("post", "/api/v1/rollouts/{id}/pause", post(pause))
        .add("post", "/api/v1/rollouts/{id}/resume", post(resume))
        .add("post", "/api/v1/rollouts/{id}/abort", post(abort))
        .add("post", "/api/v1/rollouts/{id}/rollback", post(rollback))
        .add("post", "/api/v1/rollouts/{id}/complete", post(complete))
        .add("post", "/api/v1/rollouts/{id}/advance", post(advance))
        .add("get", "/api/v1/delta-jobs", get(delta_jobs))
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    #[schema(value_type = super::validate::schema::Name)]
    pub name: String,
    #[schema(value_type = super::validate::schema::ReleaseId)]
    pub release_id: String,
    #[serde(default)]
    pub selector: Selector,
    #[schema(min_items = 1, max_items = 20)]
    pub phases: Vec<PhaseSpec>,
    #[serde(default)]
    pub rate_limit: RateLimit,
    #[serde(default)]
    pub abort_criteria: AbortCriteria,
    #[serde(default)]
    #[schema(value_type = super::validate::schema::PreconditionsSchema)]
    pub preconditions: Preconditions,
    #[serde(default)]
    pub maintenance_window: Option<MaintenanceWindow>,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// The cohort salt, hex (normally random; a dry run's salt reproduces its cohorts).
    #[serde(default)]
    #[schema(value_type = Option<super::validate::schema::Salt>)]
    pub salt: Option<String>,
}

/// The edge rules for a rollout's text, lists and integers (the spec's own rules are in
/// [`RolloutSpec::validate`]): every name, selector entry and the network precondition
/// follow the one name rule (no control characters reach a terminal, a log or the
/// database), lists are bounded, durations fit the database.
fn edge_problems(request: &CreateRollout) -> validate::Problems {
    let mut problems = validate::Problems::default();
    problems.name("name", &request.name);
    let selector = &request.selector;
    let max = validate::MAX_SELECTOR_VALUES;
    problems.names("selector.hardware_ids", &selector.hardware_ids, max);
    problems.names("selector.current_versions", &selector.current_versions, max);
    problems.names("selector.tags", &selector.tags, max);
    problems.vehicle_ids(
        "selector.vehicle_ids",
        &selector.vehicle_ids,
        validate::MAX_SELECTOR_VEHICLES,
    );
    for (i, phase) in request.phases.iter().enumerate() {
        problems.name(format!("phases[{i}].name"), &phase.name);
        problems.range(
            format!("phases[{i}].min_soak_seconds"),
            phase.min_soak_seconds,
            0,
            validate::MAX_DURATION_SECONDS,
        );
    }
    if let Some(network) = &request.preconditions.network {
        problems.name("preconditions.network", network);
    }
    if let Some(timeout) = request.abort_criteria.in_progress_timeout_seconds {
        problems.range(
            "abort_criteria.in_progress_timeout_seconds",
            timeout,
            0,
            validate::MAX_DURATION_SECONDS,
        );
    }
    problems.range(
        "retry.backoff_seconds",
        request.retry.backoff_seconds,
        0,
        validate::MAX_DURATION_SECONDS,
    );
    problems
}

fn random_salt() -> Result<String, ApiError> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("random salt: {e}")))?;
    Ok(hex::encode(salt))
}

/// Length of a cohort salt in bytes (hex: twice as many digits).
pub const SALT_BYTES: usize = 16;

/// A create (or dry-run) request checked: every edge rule, the spec's own rules, the
/// release exists. Returns the name, release id, spec and salt (hex; random unless
/// given).
async fn checked(
    state: &AppState,
    request: CreateRollout,
) -> Result<(String, String, RolloutSpec, String), ApiError> {
    let mut problems = edge_problems(&request);
    if let Some(salt) = &request.salt {
        if let Err(ApiError::Invalid(errors)) =
            validate::lower_hex::<SALT_BYTES>("salt", "32 lowercase hex digits (16 bytes)", salt)
        {
            problems.0.extend(errors);
        }
    }
    let release_id = parse_id("release", "rel", &request.release_id);
    if release_id.is_err() {
        problems.push(
            "release_id",
            "a release id (rel_ + 16 hex digits)",
            validate::shown(&request.release_id),
        );
    }
    let spec = RolloutSpec {
        selector: request.selector,
        phases: request.phases,
        rate_limit: request.rate_limit,
        abort_criteria: request.abort_criteria,
        preconditions: request.preconditions,
        maintenance_window: request.maintenance_window,
        retry: request.retry,
    };
    if let Err(errors) = spec.validate() {
        problems.0.extend(errors);
    }
    problems.into_result()?;
    let release_id = release_id?;
    match state.store.get_release(&release_id).await {
        Ok(_) => {}
        Err(StoreError::NotFound { .. }) => {
            return Err(ApiError::invalid(
                "release_id",
                "an existing release",
                format!("{release_id:?}"),
            ))
        }
        Err(other) => return Err(other.into()),
    }
    let salt = match request.salt {
        Some(salt) => salt,
        None => random_salt()?,
    };
    Ok((request.name, release_id, spec, salt))
}

/// Creates a rollout (draft).
#[utoipa::path(post, path = "/api/v1/rollouts", operation_id = "createRollout", tag = "rollouts",
    request_body = CreateRollout,
    responses((status = 201, description = "Created", body = RolloutRecord)),
    security(("bearer" = ["rollout:write"])))]
async fn create(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<RolloutWriteScope>,
    ApiJson(request): ApiJson<CreateRollout>,
) -> Result<(StatusCode, Json<RolloutRecord>), ApiError> {
    let (name, release_id, spec, salt) = checked(&state, request).await?;
    let record = state
        .store
        .insert_rollout(
            &caller.actor(),
            NewRollout {
                name,
                release_id,
                spec,
                salt,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(record)))
}

/// The vehicles per phase a rollout with this spec would assign, computed with the
/// director's own rule over the fleet as it is now; creates nothing. Give the answer's
/// `salt` to create to get exactly these vehicles.
#[utoipa::path(post, path = "/api/v1/rollouts:dry-run", operation_id = "dryRunRollout", tag = "rollouts",
    request_body = CreateRollout,
    responses((status = 200, description = "The vehicles each phase would assign: counts and a sample of ids", body = DryRun)),
    security(("bearer" = ["rollout:write"])))]
async fn dry_run(
    State(state): State<AppState>,
    Authorized(_, _): Authorized<RolloutWriteScope>,
    ApiJson(request): ApiJson<CreateRollout>,
) -> Result<Json<DryRun>, ApiError> {
    let (_, release_id, spec, salt) = checked(&state, request).await?;
    Ok(Json(state.engine.dry_run(&spec, &release_id, &salt).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    #[param(value_type = Option<RolloutState>)]
    state: Option<String>,
    #[param(value_type = Option<super::validate::schema::ReleaseId>)]
    release_id: Option<String>,
    #[param(value_type = Option<super::validate::schema::Limit>)]
    limit: Option<i64>,
    #[param(value_type = Option<super::validate::schema::Cursor>)]
    cursor: Option<String>,
    #[param(value_type = Option<super::validate::schema::Order>)]
    order: Option<String>,
}

/// Lists rollouts.
#[utoipa::path(get, path = "/api/v1/rollouts", operation_id = "listRollouts", tag = "rollouts",
    params(ListQuery),
    responses((status = 200, description = "Rollouts", body = Page<RolloutRecord>)),
    security(("bearer" = ["read"])))]

pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<RolloutRecord>>, ApiError> {
    caller.require(Scope::Read)?;
    let limit = validate::limit(query.limit)?;
    let filter = match query.state.as_deref() {
        None => None,
        Some(s) => Some(RolloutState::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "state",
                "draft, running, paused, aborted, completed or rolled_back",
                validate::shown(s),
            )
        })?),
    };
    let release = match &query.release_id {
        Some(id) => Some(parse_id("release", "rel", id)?),
        None => None,
    };
    let (keyset, kind) = page::created_keyset(
        "rollouts",
        query.order.as_deref(),
        query.cursor.as_deref(),
        limit,
    )?;
    let rows = state
        .store
        .rollout_page(filter, release.as_deref(), &keyset)
        .await?;
    Ok(Json(page::page(rows, limit, &kind, |r| {
        vec![r.created_at.clone(), r.id.clone()]
    })))
}

/// One rollout.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}", operation_id = "getRollout", tag = "rollouts",
    params(("id" = super::validate::schema::RolloutId, Path)),
    responses((status = 200, description = "The rollout", body = RolloutRecord)),
    security(("bearer" = ["read"])))]
pub(crate) async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutRecord>, ApiError> {
    caller.require(Scope::Read)?;
    let id = parse_id("rollout", "ro", &id)?;
    Ok(Json(state.store.get_rollout(&id).await?))
}

/// Per-phase counts and breaker state.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}/status", operation_id = "getRolloutStatus", tag = "rollouts",
    params(("id" = super::validate::schema::RolloutId, Path)),
    responses((status = 200, description = "The rollout's status", body = RolloutStatus)),
    security(("bearer" = ["read"])))]
pub(crate) async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutStatus>, ApiError> {
    caller.require(Scope::Read)?;
    let id = parse_id("rollout", "ro", &id)?;
    Ok(Json(state.engine.rollout_status(&id).await?))
}

/// The failure ratio over time against the breaker's threshold, and the breaker's
/// transitions (what the dashboard plots).
#[utoipa::path(get, path = "/api/v1/rollouts/{id}/history", operation_id = "getRolloutHistory", tag = "rollouts",
    params(("id" = super::validate::schema::RolloutId, Path)),
    responses((status = 200, description = "The rollout's failure-ratio history", body = RolloutHistory)),
    security(("bearer" = ["read"])))]
pub(crate) async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutHistory>, ApiError> {
    caller.require(Scope::Read)?;
    let id = parse_id("rollout", "ro", &id)?;
    Ok(Json(state.engine.rollout_history(&id).await?))
}

pub(crate) async fn act(
    state: AppState,
    caller: Caller,
    id: String,
    action: RolloutAction,
) -> Result<Json<RolloutRecord>, ApiError> {
    caller.require(Scope::RolloutWrite)?;
    let id = parse_id("rollout", "ro", &id)?;
    let record = state
        .engine
        .change_rollout(
            &caller.actor(),
            &id,
            &RolloutRequest::Operator(action),
            wall_clock_ms(),
        )
        .await
        .map_err(|err| match err {
            ChangeFailed::Refused(
                refused @ (PlanError::Illegal { .. } | PlanError::RollbackBlocked(_)),
            ) => ApiError::Conflict(refused.to_string()),
            ChangeFailed::Refused(PlanError::Unchanged) => ApiError::Conflict(
                "the rollout changed meanwhile; read it and try again".to_owned(),
            ),
            ChangeFailed::Store(store) => store.into(),
        })?;
    Ok(Json(record))
}

/// Starts a draft rollout (enqueues delta builds).
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/start", operation_id = "startRollout", tag = "rollouts",
    params(("id" = super::validate::schema::RolloutId, Path)),
    responses((status = 200, description = "The rollout after the change", body = RolloutRecord)),
    security(("bearer" = ["rollout:write"])))]
async fn start(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutRecord>, ApiError> {
    act(s, c, id, RolloutAction::Start).await
}
/// Pauses: no new vehicles.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/pause", operation_id = "pauseRollout", tag = "rollouts",
    params(("id" = super::validate::schema::RolloutId, Path)),
    responses((status = 200, description = "The rollout after the change", body = RolloutRecord)),
    security(("bearer" = ["rollout:write"])))]
async fn pause(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutRecord>, ApiError> {
    act(s, c, id, RolloutAction::Pause).await
}
/// Completes a running rollout: no new vehicles; deployments under way finish.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/complete", operation_id = "completeRollout", tag = "rollouts",
    params(("id" = super::validate::schema::RolloutId, Path)),
    responses((status = 200, description = "The rollout after the change", body = RolloutRecord)),
    security(("bearer" = ["rollout:write"])))]
async fn complete(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutRecord>, ApiError> {
    act(s, c, id, RolloutAction::Complete).await
}

/// An operator opens the next phase without waiting for the current phase's gate
/// (hawkBit's "trigger next group"): for a phase whose cohort band holds fewer vehicles
/// than the minimum executed count, or a decision taken on other evidence. Audited with
/// the operator as actor; refused (409) unless the rollout is running before its last
/// phase.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/advance", operation_id = "advanceRollout", tag = "rollouts",
    params(("id" = super::validate::schema::RolloutId, Path)),
    responses((status = 200, description = "The rollout after the change", body = RolloutRecord)),
    security(("bearer" = ["rollout:write"])))]
async fn advance(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutRecord>, ApiError> {
    caller.require(Scope::RolloutWrite)?;
    let id = parse_id("rollout", "ro", &id)?;
    let record = state.store.get_rollout(&id).await?;
    let request = RolloutRequest::AdvancePhase {
        from: record.current_phase,
        to: record.current_phase + 1,
    };
    state
        .engine
        .change_rollout(&caller.actor(), &id, &request, wall_clock_ms())
        .await
        .map_err(|err| match err {
            ChangeFailed::Refused(_) => ApiError::Conflict(format!(
                "only a running rollout before its last phase can advance (it is {}, phase {} of {})",
                record.state.as_str(),
                record.current_phase + 1,
                record.spec.phases.len()
            )),
            ChangeFailed::Store(store) => store.into(),
        })
        .map(Json)
}

/// Resumes (half-opens an open breaker).
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/resume", operation_id = "resumeRollout", tag = "rollouts",
    params(("id" = super::validate::schema::RolloutId, Path)),
    responses((status = 200, description = "The rollout after the change", body = RolloutRecord)),
    security(("bearer" = ["rollout:write"])))]
async fn resume(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutRecord>, ApiError> {
    act(s, c, id, RolloutAction::Resume).await
}
/// Aborts: cancels vehicles not yet installing.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/abort", operation_id = "abortRollout", tag = "rollouts",
    params(("id" = super::validate::schema::RolloutId, Path)),
    responses((status = 200, description = "The rollout after the change", body = RolloutRecord)),
    security(("bearer" = ["rollout:write"])))]
async fn abort(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutRecord>, ApiError> {
    act(s, c, id, RolloutAction::Abort).await
}
/// Refused (409) when a vehicle would have to go below the `security_version` floor the
/// release gave it: the agent must refuse such an image, so none is ever sent.
/// Rolls back: tells updated vehicles to return to their previous image.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/rollback", operation_id = "rollbackRollout", tag = "rollouts",
    params(("id" = super::validate::schema::RolloutId, Path)),
    responses((status = 200, description = "The rollout after the change", body = RolloutRecord)),
    security(("bearer" = ["rollout:write"])))]
async fn rollback(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutRecord>, ApiError> {
    act(s, c, id, RolloutAction::Rollback).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct JobsQuery {
    #[param(value_type = Option<super::validate::schema::RolloutId>)]
    rollout_id: Option<String>,
    #[param(value_type = Option<DeltaJobStatus>)]
    status: Option<String>,
    #[param(value_type = Option<super::validate::schema::Limit>)]
    limit: Option<i64>,
    #[param(value_type = Option<super::validate::schema::Cursor>)]
    cursor: Option<String>,
    #[param(value_type = Option<super::validate::schema::Order>)]
    order: Option<String>,
}

/// Delta builds and their progress.
#[utoipa::path(get, path = "/api/v1/delta-jobs", operation_id = "listDeltaJobs", tag = "rollouts",
    params(JobsQuery),
    responses((status = 200, description = "Delta jobs", body = Page<DeltaJob>)),
    security(("bearer" = ["read"])))]

pub(crate) async fn delta_jobs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<JobsQuery>,
) -> Result<Json<Page<DeltaJob>>, ApiError> {
    caller.require(Scope::Read)?;
    let limit = validate::limit(query.limit)?;
    let rollout = match query.rollout_id {
        Some(id) => Some(parse_id("rollout", "ro", &id)?),
        None => None,
    };
    let status = match query.status.as_deref() {
        None => None,
        Some(s) => Some(DeltaJobStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "status",
                "queued, running, done, skipped or failed",
                validate::shown(s),
            )
        })?),
    };
    let (keyset, kind) = page::created_keyset(
        "delta-jobs",
        query.order.as_deref(),
        query.cursor.as_deref(),
        limit,
    )?;
    let rows = state
        .store
        .delta_job_page(rollout.as_deref(), status, &keyset)
        .await?;
    Ok(Json(page::page(rows, limit, &kind, |j| {
        vec![j.created_at.clone(), j.id.clone()]
    })))
}
