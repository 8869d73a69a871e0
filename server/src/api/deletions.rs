//! Deleting images and releases no rollout uses (release:write, audited); the blobs
//! nothing references any more are removed from the blob store after the commit.

use super::error::{ApiError, Problem};
use super::extract::{parse_id, Authorized, ReleaseWriteScope};
use super::{AppState, Routes};
use axum::extract::{Path, State};
use axum::routing::delete;
use axum::Json;
use serde::Serialize;

pub fn routes() -> Routes {
    Routes::default()
        .add("delete", "/api/v1/images/{id}", delete(delete_image))
        .add("delete", "/api/v1/releases/{id}", delete(delete_release))
}

/// What a deletion removed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    /// The image or release deleted.
    pub id: String,
    /// SHA-256 of every blob removed from the blob store.
    #[schema(value_type = Vec<super::validate::schema::Sha256Hex>)]
    pub blobs_removed: Vec<String>,
}

/// Deletes an image no release lists (audited); the blobs no image or delta references
/// any more are removed.
#[utoipa::path(delete, path = "/api/v1/images/{id}", operation_id = "deleteImage", tag = "images",
    params(("id" = super::validate::schema::ImageId, Path)),
    responses((status = 200, description = "Deleted; the blobs removed", body = Deleted),
        (status = 409, description = "Still listed by a release: the problem names the releases and their rollouts", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["release:write"])))]
async fn delete_image(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<ReleaseWriteScope>,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    let id = parse_id("image", "img", &id)?;
    let garbage = state.store.delete_image(&caller.actor(), &id).await?;
    let mut removed = Vec::new();
    for sha in garbage {
        match state.blobs.remove(&sha).await {
            Ok(_) => removed.push(sha.to_hex()),
            // The row is gone already; a file left behind is unreferenced, not served
            // as anything, and logged.
            Err(err) => tracing::warn!(%sha, %err, "removing an unreferenced blob failed"),
        }
    }
    Ok(Json(Deleted {
        id,
        blobs_removed: removed,
    }))
}

/// Deletes a release no rollout uses (audited), except the one holding the newest
/// signed targets.
#[utoipa::path(delete, path = "/api/v1/releases/{id}", operation_id = "deleteRelease", tag = "releases",
    params(("id" = super::validate::schema::ReleaseId, Path)),
    responses((status = 200, description = "Deleted", body = Deleted),
        (status = 409, description = "Used by a rollout (named), or the release holding the newest signed targets", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["release:write"])))]
async fn delete_release(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<ReleaseWriteScope>,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    let id = parse_id("release", "rel", &id)?;
    state.store.delete_release(&caller.actor(), &id).await?;
    Ok(Json(Deleted {
        id,
        blobs_removed: Vec::new(),
    }))
}
