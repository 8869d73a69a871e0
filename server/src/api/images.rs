//! Full images: streaming upload (hashed while streaming, size-limited, stored
//! content-addressed), list, get.

use super::error::ApiError;
use super::extract::{parse_id, ApiQuery, Authorized, Caller, ReleaseWriteScope};
use super::page::{self, Page};
use super::validate::{self, name as check_name};
use super::{AppState, Routes};
use crate::blobs::BlobError;
use crate::store::{ImageFilter, ImageRecord, NewImage};
use crate::tokens::Scope;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Json;
use serde::Deserialize;
use std::time::Duration;

/// The route whose body may take longer than the request timeout: an image upload
/// is bounded by `limits.upload_idle_timeout_seconds` between bytes instead.
pub const STREAMING_UPLOAD_PATH: &str = "/api/v1/images";

/// The upload, which writes to the blob store (behind its breaker).
pub fn upload_routes() -> Routes {
    Routes::default().add("post", STREAMING_UPLOAD_PATH, post(upload))
}

pub fn routes() -> Routes {
    Routes::default()
        .add("get", "/api/v1/images", get(list))
        .add("get", "/api/v1/images/{id}", get(get_one))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct UploadQuery {
    #[param(value_type = super::validate::schema::Name)]
    hardware_id: String,
    #[param(value_type = super::validate::schema::Name)]
    version: String,
    /// The image name in targets metadata; default `<hardware_id>-<version>`.
    #[param(value_type = Option<super::validate::schema::ImageName>)]
    name: Option<String>,
}

/// Streams a full image; hashed while streaming, size-limited. The 409 for a version
/// the hardware id already has comes before the body is read.
#[utoipa::path(post, path = "/api/v1/images", operation_id = "uploadImage", tag = "images",
    params(UploadQuery),
    request_body(content = super::validate::schema::Binary, content_type = "application/octet-stream", description = "The image bytes"),
    responses((status = 201, description = "Stored", body = ImageRecord)),
    security(("bearer" = ["release:write"])))]
async fn upload(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<ReleaseWriteScope>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ImageRecord>), ApiError> {
    caller.require(Scope::ReleaseWrite)?;
    check_name("hardware_id", &query.hardware_id)?;
    check_name("version", &query.version)?;
    let name = query
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", query.hardware_id, query.version));
    check_name("name", &name)?;
    if !ota_core::metadata::is_valid_image_name(&name) {
        // Vehicles refuse targets listing it (PROTOCOL.md §4.2): refuse it here first.
        return Err(ApiError::invalid(
            "name",
            "an image name: starting with a letter or digit (PROTOCOL.md §4.2)",
            format!("{name:?}"),
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.split(';').next().unwrap_or("").trim() != "application/octet-stream" {
        return Err(ApiError::UnsupportedMediaType {
            expected: "application/octet-stream",
            got: if content_type.is_empty() {
                "no Content-Type".to_owned()
            } else {
                content_type.to_owned()
            },
        });
    }
    // A duplicate version is known before the body: refuse it without reading a byte.
    if state
        .store
        .image_version_exists(&query.hardware_id, &query.version)
        .await?
    {
        return Err(ApiError::Conflict(format!(
            "image: hardware id {:?} already has version {:?}",
            query.hardware_id, query.version
        )));
    }
    let limit = state.settings.limits.max_image_bytes;
    // Refuse a declared oversize body before reading a byte of it.
    if let Some(declared) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if declared > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
    }
    // No whole-request timeout here (a 4 GiB image takes as long as the link needs):
    // the upload ends when no byte arrives for `upload_idle_timeout_seconds`.
    let idle = Duration::from_secs(state.settings.limits.upload_idle_timeout_seconds);
    let blob = state
        .blobs
        .write_stream(body.into_data_stream(), limit, idle)
        .await
        .map_err(|err| match err {
            BlobError::TooLarge { limit } => ApiError::PayloadTooLarge { limit },
            BlobError::Body(reason) => {
                ApiError::BadRequest(format!("upload interrupted: {reason}"))
            }
            BlobError::Idle { seconds } => ApiError::UploadIdle { seconds },
            // Refused before anything was stored under the empty blob's name.
            BlobError::Empty => ApiError::invalid("body", "a non-empty image", "0 bytes"),
            err @ (BlobError::Io(_) | BlobError::ObjectStore(_)) => ApiError::blob_store(err),
        })?;
    let record = state
        .store
        .insert_image(
            &caller.actor(),
            NewImage {
                name,
                hardware_id: query.hardware_id,
                version: query.version,
                length: blob.length,
                sha256: blob.sha256.to_hex(),
            },
        )
        .await?;
    metrics::counter!("ota_image_bytes_uploaded_total").increment(blob.length);
    Ok((StatusCode::CREATED, Json(record)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    #[param(value_type = Option<super::validate::schema::Name>)]
    hardware_id: Option<String>,
    #[param(value_type = Option<super::validate::schema::Name>)]
    version: Option<String>,
    #[param(value_type = Option<super::validate::schema::Limit>)]
    limit: Option<i64>,
    #[param(value_type = Option<super::validate::schema::Cursor>)]
    cursor: Option<String>,
    #[param(value_type = Option<super::validate::schema::Order>)]
    order: Option<String>,
}

/// Lists images, newest first.
#[utoipa::path(get, path = "/api/v1/images", operation_id = "listImages", tag = "images",
    params(ListQuery),
    responses((status = 200, description = "Images", body = Page<ImageRecord>)),
    security(("bearer" = ["read"])))]

pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<ImageRecord>>, ApiError> {
    caller.require(Scope::Read)?;
    let limit = validate::limit(query.limit)?;
    for (field, value) in [
        ("hardware_id", &query.hardware_id),
        ("version", &query.version),
    ] {
        if let Some(value) = value {
            check_name(field, value)?;
        }
    }
    let (keyset, kind) = page::created_keyset(
        "images",
        query.order.as_deref(),
        query.cursor.as_deref(),
        limit,
    )?;
    let filter = ImageFilter {
        hardware_id: query.hardware_id,
        version: query.version,
    };
    let rows = state.store.image_page(&filter, &keyset).await?;
    Ok(Json(page::page(rows, limit, &kind, |i| {
        vec![i.created_at.clone(), i.id.clone()]
    })))
}

/// One image.
#[utoipa::path(get, path = "/api/v1/images/{id}", operation_id = "getImage", tag = "images",
    params(("id" = super::validate::schema::ImageId, Path)),
    responses((status = 200, description = "The image", body = ImageRecord)),
    security(("bearer" = ["read"])))]
pub(crate) async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ImageRecord>, ApiError> {
    caller.require(Scope::Read)?;
    let id = parse_id("image", "img", &id)?;
    Ok(Json(state.store.get_image(&id).await?))
}
