//! Releases: a set of images (one per hardware id) with version and security_version,
//! whose targets metadata is signed here (dev) or uploaded pre-signed and verified
//! against the trusted root before it is accepted.

use super::error::ApiError;
use super::extract::{parse_id, ApiJson, ApiQuery, Authorized, Caller, ReleaseWriteScope};
use super::page::{self, Page};
use super::validate;
use super::{AppState, Routes};
use crate::store::{NewRelease, ReleaseRecord};
use crate::tokens::Scope;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use ota_core::encoding::Sha256Digest;
use ota_core::metadata::{TargetImage, TargetsMetadata};
use ota_core::time::Timestamp;
use serde::Deserialize;
use std::collections::BTreeMap;

pub fn routes() -> Routes {
    Routes::default()
        .add("post", "/api/v1/releases", post(create))
        .add("get", "/api/v1/releases", get(list))
        .add("get", "/api/v1/releases/{id}", get(get_one))
}

/// Most images in one release (one per hardware id).
pub const MAX_IMAGES: usize = 64;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRelease {
    #[schema(value_type = super::validate::schema::Name)]
    pub name: String,
    #[schema(value_type = super::validate::schema::Name)]
    pub version: String,
    #[schema(value_type = super::validate::schema::Counter)]
    pub security_version: u64,
    /// Image ids, at most one per hardware id.
    #[schema(value_type = Vec<super::validate::schema::ImageId>, min_items = 1, max_items = 64)]
    pub images: Vec<String>,
    /// A targets envelope signed offline (e.g. `otactl release create --sign-key`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub targets: Option<serde_json::Value>,
    /// Expiry of server-signed targets metadata.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_in_days: Option<u32>,
}

/// Creates a release; its targets are signed by the server or uploaded pre-signed and
/// verified against the trusted root.
#[utoipa::path(post, path = "/api/v1/releases", operation_id = "createRelease", tag = "releases",
    request_body = CreateRelease,
    responses((status = 201, description = "Created", body = ReleaseRecord)),
    security(("bearer" = ["release:write"])))]
async fn create(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<ReleaseWriteScope>,
    ApiJson(request): ApiJson<CreateRelease>,
) -> Result<(StatusCode, Json<ReleaseRecord>), ApiError> {
    caller.require(Scope::ReleaseWrite)?;
    let mut problems = validate::Problems::default();
    problems.name("name", &request.name);
    problems.name("version", &request.version);
    problems.range(
        "security_version",
        request.security_version,
        0,
        validate::MAX_COUNTER,
    );
    if let Some(days) = request.expires_in_days {
        let (min, max) = validate::EXPIRES_IN_DAYS;
        problems.range("expires_in_days", days, min, max);
    }
    if request.images.is_empty() || request.images.len() > MAX_IMAGES {
        problems.push(
            "images",
            format!("1 to {MAX_IMAGES} image ids"),
            request.images.len(),
        );
    }
    problems.into_result()?;
    // Targets are cumulative: every image released so far stays listed (a vehicle can only
    // be sent back to an image its newest trusted targets still list), and this
    // release's images are added or, for the same image, updated.
    let latest = state.store.latest_targets().await?;
    let (current, mut expected) = match &latest {
        Some((version, envelope)) => (*version, stored_targets(envelope)?.targets.0),
        None => (0, BTreeMap::new()),
    };
    let mut by_hardware: BTreeMap<String, String> = BTreeMap::new();
    for (i, id) in request.images.iter().enumerate() {
        let id = parse_id("image", "img", id).map_err(|_| {
            ApiError::invalid(
                format!("images[{i}]"),
                "an image id (img_ + 16 hex digits)",
                format!("{id:?}"),
            )
        })?;
        let image = state.store.get_image(&id).await.map_err(|e| match e {
            crate::store::StoreError::NotFound { .. } => ApiError::invalid(
                format!("images[{i}]"),
                "an existing image",
                format!("{id:?}"),
            ),
            other => other.into(),
        })?;
        if let Some(previous) = by_hardware.insert(image.hardware_id.clone(), id.clone()) {
            return Err(ApiError::invalid(
                format!("images[{i}]"),
                format!(
                    "one image per hardware id ({} already has {previous})",
                    image.hardware_id
                ),
                format!("{id:?}"),
            ));
        }
        let sha256 = Sha256Digest::parse(&image.sha256)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored image digest: {e}")))?;
        let entry = TargetImage {
            hardware_id: image.hardware_id.clone(),
            version: image.version.clone(),
            security_version: request.security_version,
            length: image.length,
            sha256,
        };
        if let Some(listed) = expected.get(&image.name) {
            if (listed.sha256, listed.length) != (entry.sha256, entry.length) {
                return Err(ApiError::Conflict(format!(
                    "image name {:?} is already released with other content (sha256 {})",
                    image.name, listed.sha256
                )));
            }
        }
        expected.insert(image.name.clone(), entry);
    }
    let (envelope, version, signed_by) = match &request.targets {
        Some(value) => {
            let bytes = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.into()))?;
            let metadata = state.keys.verify_targets(&bytes).map_err(|e| {
                ApiError::invalid(
                    "targets",
                    "targets metadata signed by a threshold of the root's targets keys",
                    e,
                )
            })?;
            if metadata.targets.0 != expected {
                return Err(ApiError::invalid(
                    "targets.targets",
                    "every image of the current targets plus the release's images with this security_version (GET /api/v1/targets)",
                    "a different image list",
                ));
            }
            if metadata.version > validate::MAX_COUNTER {
                return Err(ApiError::invalid(
                    "targets.version",
                    format!("an integer in {}..={}", current + 1, validate::MAX_COUNTER),
                    metadata.version,
                ));
            }
            if metadata.version <= current {
                return Err(ApiError::invalid(
                    "targets.version",
                    format!("greater than {current}"),
                    metadata.version,
                ));
            }
            (
                String::from_utf8_lossy(&bytes).into_owned(),
                metadata.version,
                "offline",
            )
        }
        None => {
            let days = i64::from(request.expires_in_days.unwrap_or(365));
            let now = Timestamp::from_datetime(chrono::Utc::now());
            let metadata =
                TargetsMetadata::new(current + 1, now.plus_seconds(days * 86_400), expected);
            let envelope = state.keys.sign_targets(&metadata).ok_or_else(|| {
                ApiError::invalid(
                    "targets",
                    "a pre-signed targets envelope (this server holds no targets key)",
                    "none",
                )
            })?;
            (
                String::from_utf8_lossy(&envelope.to_json_bytes()).into_owned(),
                current + 1,
                "server",
            )
        }
    };
    let record = state
        .store
        .insert_release(
            &caller.actor(),
            NewRelease {
                name: request.name,
                version: request.version,
                security_version: request.security_version,
                targets_version: version,
                targets_envelope: envelope,
                signed_by: signed_by.to_owned(),
                images: by_hardware.into_iter().collect(),
            },
        )
        .await?;
    // Directors answer with a binding to the newest targets (here, at once; other
    // replicas within their snapshot's second, and agents re-fetch once on a mismatch).
    state.engine.targets_changed();
    Ok((StatusCode::CREATED, Json(record)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    #[param(value_type = Option<super::validate::schema::Name>)]
    version: Option<String>,
    #[param(value_type = Option<super::validate::schema::Limit>)]
    limit: Option<i64>,
    #[param(value_type = Option<super::validate::schema::Cursor>)]
    cursor: Option<String>,
    #[param(value_type = Option<super::validate::schema::Order>)]
    order: Option<String>,
}

/// Lists releases, newest first.
#[utoipa::path(get, path = "/api/v1/releases", operation_id = "listReleases", tag = "releases",
    params(ListQuery),
    responses((status = 200, description = "Releases", body = Page<ReleaseRecord>)),
    security(("bearer" = ["read"])))]

pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<ReleaseRecord>>, ApiError> {
    caller.require(Scope::Read)?;
    let limit = validate::limit(query.limit)?;
    if let Some(version) = &query.version {
        validate::name("version", version)?;
    }
    let (keyset, kind) = page::created_keyset(
        "releases",
        query.order.as_deref(),
        query.cursor.as_deref(),
        limit,
    )?;
    let rows = state
        .store
        .release_page(query.version.as_deref(), &keyset)
        .await?;
    Ok(Json(page::page(rows, limit, &kind, |r| {
        vec![r.created_at.clone(), r.id.clone()]
    })))
}

/// One release with its signed targets envelope.
#[utoipa::path(get, path = "/api/v1/releases/{id}", operation_id = "getRelease", tag = "releases",
    params(("id" = super::validate::schema::ReleaseId, Path)),
    responses((status = 200, description = "The release", body = ReleaseRecord)),
    security(("bearer" = ["read"])))]
pub(crate) async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ReleaseRecord>, ApiError> {
    caller.require(Scope::Read)?;
    let id = parse_id("release", "rel", &id)?;
    Ok(Json(state.store.get_release(&id).await?))
}

/// Parses a targets envelope this server stored after verifying it.
pub(super) fn stored_targets(envelope: &str) -> Result<TargetsMetadata, ApiError> {
    let envelope = ota_core::envelope::Envelope::parse(envelope.as_bytes())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored targets envelope: {e}")))?;
    ota_core::metadata::parse_document(&envelope.payload)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored targets payload: {e}")))
}
