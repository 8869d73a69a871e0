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

pub fn routes() -> Routes {
    Routes::default()
        .add("post", "/api/v1/images", post(upload))
        .add("get", "/api/v1/images", get(list))
        .add("get", "/api/v1/images/{id}", get(get_one))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    hardware_id: String,
    version: String,
    name: Option<String>,
}

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
    let blob = state
        .blobs
        .write_stream(body.into_data_stream(), limit)
        .await
        .map_err(|err| match err {
            BlobError::TooLarge { limit } => ApiError::PayloadTooLarge { limit },
            BlobError::Body(reason) => {
                ApiError::BadRequest(format!("upload interrupted: {reason}"))
            }
            BlobError::Io(io) => ApiError::Internal(io.into()),
        })?;
    if blob.length == 0 {
        return Err(ApiError::invalid("body", "a non-empty image", "0 bytes"));
    }
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    hardware_id: Option<String>,
    version: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
    order: Option<String>,
}

async fn list(
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

async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ImageRecord>, ApiError> {
    caller.require(Scope::Read)?;
    let id = parse_id("image", "img", &id)?;
    Ok(Json(state.store.get_image(&id).await?))
}
