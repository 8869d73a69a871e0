//! Deleting images and releases no rollout uses (release:write, audited); the blobs
//! nothing references any more are removed from the blob store after the commit.

use super::error::ApiError;
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
#[derive(Debug, Serialize)]
pub struct Deleted {
    pub id: String,
    /// SHA-256 of every blob removed from the blob store.
    pub blobs_removed: Vec<String>,
}

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
