//! `GET /v1/blobs/{sha256}` for vehicles: Range and If-Range support so interrupted
//! downloads resume. Vehicles authenticate each request with their device key
//! (`ota_core::credential`, signing this request's method and path) and may fetch only
//! the blobs their current or recent directives name (`crate::blob_access`), else 403;
//! operators may use a bearer token with the read scope.

use super::error::{ApiError, Problem};
use super::extract::{refused, VehicleRouteCaller};
use super::{AppState, Routes};
use crate::blob_access::{named_blob, NamedBlob, RECENT_MS};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ota_core::encoding::Sha256Digest;

pub fn routes() -> Routes {
    Routes::default().add("get", "/v1/blobs/{sha256}", get(download))
}

/// Parses a single `bytes=` range against `length`. `Ok(None)` = serve everything (no
/// header, or a multi-range request, which we may answer with the full body).
fn parse_range(value: &str, length: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(spec) = value.strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (start, end) = spec
        .split_once('-')
        .ok_or(ApiError::RangeNotSatisfiable { length })?;
    let unsatisfiable = ApiError::RangeNotSatisfiable { length };
    let (first, last) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix
                .parse()
                .map_err(|_| ApiError::RangeNotSatisfiable { length })?;
            if n == 0 || length == 0 {
                return Err(unsatisfiable);
            }
            (length.saturating_sub(n), length - 1)
        }
        (start, "") => {
            let s: u64 = start
                .parse()
                .map_err(|_| ApiError::RangeNotSatisfiable { length })?;
            (s, length.saturating_sub(1))
        }
        (start, end) => {
            let s: u64 = start
                .parse()
                .map_err(|_| ApiError::RangeNotSatisfiable { length })?;
            let e: u64 = end
                .parse()
                .map_err(|_| ApiError::RangeNotSatisfiable { length })?;
            if e < s {
                return Err(unsatisfiable);
            }
            (s, e.min(length.saturating_sub(1)))
        }
    };
    if first >= length {
        return Err(unsatisfiable);
    }
    Ok(Some((first, last)))
}

/// May `caller` fetch `digest`? A vehicle only a blob its directives name (the kind is
/// known then); an operator with `read` any blob.
async fn permitted(
    state: &AppState,
    caller: &VehicleRouteCaller,
    digest: &Sha256Digest,
    now_ms: i64,
) -> Result<Option<NamedBlob>, ApiError> {
    let VehicleRouteCaller::Vehicle(vehicle_id) = caller else {
        return Ok(None);
    };
    let deployments = state
        .store
        .deployment_blobs(vehicle_id, now_ms - RECENT_MS)
        .await?;
    let mut named = named_blob(&deployments, *digest, &[], now_ms);
    if named.is_none() {
        let deltas = state.store.delta_pairs_of(digest).await?;
        named = named_blob(&deployments, *digest, &deltas, now_ms);
    }
    match named {
        Some(kind) => Ok(Some(kind)),
        None => {
            refused("blob_not_named");
            Err(ApiError::BlobNotNamed {
                vehicle_id: vehicle_id.clone(),
                sha256: digest.to_hex(),
            })
        }
    }
}

/// Downloads a blob (an image or a delta), with `Range` and `If-Range`.
#[utoipa::path(get, path = "/v1/blobs/{sha256}", operation_id = "getBlob", tag = "vehicles",
    params(("sha256" = super::validate::schema::Sha256Hex, Path),
        ("Range" = Option<String>, Header, description = "One `bytes=` range"),
        ("If-Range" = Option<String>, Header, description = "The blob's ETag")),
    responses(
        (status = 200, description = "The blob", body = super::validate::schema::Binary, content_type = "application/octet-stream"),
        (status = 206, description = "Partial content (Range)", body = super::validate::schema::Binary, content_type = "application/octet-stream"),
        (status = 403, description = "A token without the read scope (`urn:ota:problem:forbidden`), or a vehicle asking for a blob none of its current or recent directives names (`urn:ota:problem:blob-not-named`)", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "Range not satisfiable", body = Problem, content_type = "application/problem+json")),
    security(("vehicle" = []), ("bearer" = ["read"])))]
async fn download(
    State(state): State<AppState>,
    caller: VehicleRouteCaller,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let digest = Sha256Digest(super::validate::lower_hex::<32>(
        "sha256",
        "64 lowercase hex digits",
        &sha256,
    )?);
    let named = permitted(&state, &caller, &digest, crate::engine::wall_clock_ms()).await?;
    let not_found = || ApiError::NotFound {
        entity: "blob",
        id: digest.to_hex(),
    };
    let length = state
        .blobs
        .length_of(&digest)
        .await
        .map_err(ApiError::blob_store)?
        .ok_or_else(not_found)?;
    // Blobs are immutable and named by content, so the digest is a perfect strong ETag.
    let etag = format!("\"{}\"", digest.to_hex());
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let if_range_matches = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v == etag);
    let range = match range_header {
        Some(value) if if_range_matches => parse_range(value, length)?,
        _ => None,
    };
    let sent = range.map_or(length, |(first, last)| last - first + 1);
    let kind = match named {
        Some(kind) => kind.as_str(),
        None => match state.store.is_delta_blob(&digest.to_hex()).await {
            Ok(true) => "delta",
            Ok(false) => "image",
            Err(_) => "unknown",
        },
    };
    metrics::counter!("ota_blob_bytes_served_total", "kind" => kind).increment(sent);
    let common = [
        (header::ACCEPT_RANGES, "bytes".to_owned()),
        (header::ETAG, etag),
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (
            header::CACHE_CONTROL,
            "private, max-age=31536000, immutable".to_owned(),
        ),
    ];
    let read_range = match range {
        Some((first, last)) => first..last + 1,
        None => 0..length,
    };
    // Blobs are never deleted while a deployment names them; one deleted meanwhile
    // (an unused image) is a 404 like any other.
    let bytes = state
        .blobs
        .read(&digest, read_range)
        .await
        .map_err(ApiError::blob_store)?
        .ok_or_else(not_found)?;
    let body = Body::from_stream(bytes);
    match range {
        None => Ok((
            StatusCode::OK,
            common,
            [(header::CONTENT_LENGTH, length.to_string())],
            body,
        )
            .into_response()),
        Some((first, last)) => Ok((
            StatusCode::PARTIAL_CONTENT,
            common,
            [
                (header::CONTENT_LENGTH, (last - first + 1).to_string()),
                (
                    header::CONTENT_RANGE,
                    format!("bytes {first}-{last}/{length}"),
                ),
            ],
            body,
        )
            .into_response()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_table() {
        // None: refused (416); Some(None): whole blob; Some(Some(range)): partial.
        type Expected = Option<Option<(u64, u64)>>;
        let cases: [(&str, Expected); 9] = [
            ("bytes=0-9", Some(Some((0, 9)))),
            ("bytes=90-", Some(Some((90, 99)))),
            ("bytes=-10", Some(Some((90, 99)))),
            ("bytes=95-200", Some(Some((95, 99)))),
            ("bytes=0-1,5-6", Some(None)),
            ("items=0-1", Some(None)),
            ("bytes=100-", None),
            ("bytes=9-1", None),
            ("bytes=x-1", None),
        ];
        for (header, expected) in cases {
            let got = parse_range(header, 100).ok();
            assert_eq!(got, expected, "{header}");
        }
    }
}
