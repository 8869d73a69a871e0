//! One error type for the whole API, rendered as RFC 9457 `application/problem+json`.
//! Client errors say what to fix (field, expected, got); server errors are generic to the
//! client and logged in full.

use crate::rollout::FieldError;
use crate::store::StoreError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// `Retry-After` of every 503: the server is busy or not ready yet, not gone.
pub const RETRY_AFTER_SECONDS: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request: {} problem(s)", .0.len())]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    BadRequest(String),
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("unsupported content type: expected {expected}, got {got}")]
    UnsupportedMediaType { expected: &'static str, got: String },
    #[error("request body exceeds the {limit}-byte limit")]
    PayloadTooLarge { limit: u64 },
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("the bearer token expired at {at}")]
    TokenExpired { at: String },
    #[error("this call needs the {needed} scope")]
    Forbidden { needed: &'static str },
    /// A vehicle credential that does not authenticate this request (PROTOCOL.md §10).
    #[error("vehicle credential refused: {0}")]
    VehicleCredential(#[from] ota_core::credential::CredentialError),
    /// An authenticated vehicle asked for a blob none of its current or recent
    /// directives names.
    #[error("no current or recent directive of vehicle {vehicle_id:?} names blob {sha256}")]
    BlobNotNamed { vehicle_id: String, sha256: String },
    #[error("{entity} {id:?} not found")]
    NotFound { entity: &'static str, id: String },
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("{0}")]
    Conflict(String),
    #[error("requested range not satisfiable (blob is {length} bytes)")]
    RangeNotSatisfiable { length: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("the request took longer than {seconds} s (limits.request_timeout_seconds)")]
    Timeout { seconds: u64 },
    /// A dependency failed this request (the breaker of that dependency counts it).
    #[error("{} is unavailable; retry shortly", .0.described())]
    DependencyUnavailable(super::dependencies::Dependency),
    /// The dependency's breaker is open: refused without trying it.
    #[error("{} failed repeatedly, so the server refuses calls needing it for up to {retry_after_seconds} s (circuit breaker open)", .dependency.described())]
    BreakerOpen {
        dependency: super::dependencies::Dependency,
        retry_after_seconds: u64,
    },
    #[error("no upload bytes arrived for {seconds} s (limits.upload_idle_timeout_seconds); nothing was stored")]
    UploadIdle { seconds: u64 },
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A blob store read or write failed (a missing blob is a 404 before this).
    pub fn blob_store(err: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %err, "the blob store failed");
        ApiError::DependencyUnavailable(super::dependencies::Dependency::BlobStore)
    }
}

/// An RFC 9457 problem, the body of every error (`application/problem+json`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:ota:problem:<slug>`.
    #[serde(rename = "type")]
    #[schema(pattern = "^urn:ota:problem:[a-z-]+$")]
    pub type_: String,
    pub title: &'static str,
    /// The HTTP status.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    pub detail: String,
    /// Every invalid field (422 only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Why a vehicle credential was refused (`vehicle-credential` problems only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<CredentialRefusal>)]
    pub reason: Option<&'static str>,
}

/// Why a vehicle credential was refused (`ota_core::credential::CredentialError::kind`):
/// `missing` (no credential), `malformed`, `retired_version` (the v1 `Vehicle` scheme),
/// `wrong_method` / `wrong_target` (signed for another request), `outside_window` (the
/// signed time is more than the allowed skew away), `unknown_vehicle`, `bad_signature`.
#[derive(Debug, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum CredentialRefusal {
    Missing,
    Malformed,
    RetiredVersion,
    WrongMethod,
    WrongTarget,
    OutsideWindow,
    UnknownVehicle,
    BadSignature,
}

impl ApiError {
    pub fn invalid(
        field: impl Into<String>,
        expected: impl Into<String>,
        got: impl std::fmt::Display,
    ) -> ApiError {
        ApiError::Invalid(vec![FieldError {
            field: field.into(),
            expected: expected.into(),
            got: got.to_string(),
        }])
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::Invalid(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Request failed validation",
            ),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            ApiError::MalformedJson(_) => {
                (StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON")
            }
            ApiError::UnsupportedMediaType { .. } => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::TokenExpired { .. } => {
                (StatusCode::UNAUTHORIZED, "token-expired", "Token expired")
            }
            ApiError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::VehicleCredential(_) => (
                StatusCode::UNAUTHORIZED,
                "vehicle-credential",
                "Vehicle credential refused",
            ),
            ApiError::BlobNotNamed { .. } => (
                StatusCode::FORBIDDEN,
                "blob-not-named",
                "Blob not named by the vehicle's directives",
            ),
            ApiError::NotFound { .. } => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::NoRoute { .. } => (StatusCode::NOT_FOUND, "no-route", "No such route"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::RangeNotSatisfiable { .. } => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range-not-satisfiable",
                "Range not satisfiable",
            ),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            ApiError::Timeout { .. } => (
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "Request timeout",
            ),
            ApiError::UploadIdle { .. } => {
                (StatusCode::REQUEST_TIMEOUT, "upload-idle", "Upload stalled")
            }
            ApiError::DependencyUnavailable(_) | ApiError::BreakerOpen { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "dependency-unavailable",
                "Dependency unavailable",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound { entity, id } => ApiError::NotFound { entity, id },
            StoreError::Conflict { entity, detail } => {
                ApiError::Conflict(format!("{entity}: {detail}"))
            }
            StoreError::OutOfRange { field, value } => {
                ApiError::invalid(field, format!("an integer in 0..={}", i64::MAX), value)
            }
            StoreError::Database(err) if super::dependencies::database_unavailable(&err) => {
                tracing::error!(error = %err, "the database is unavailable");
                ApiError::DependencyUnavailable(super::dependencies::Dependency::Database)
            }
            other => ApiError::Internal(anyhow::Error::new(other)),
        }
    }
}

impl ApiError {
    /// The problem this error answers (also what the dashboard shows); an internal
    /// error's chain is logged here and replaced by a generic detail.
    pub fn problem(&self) -> Problem {
        let (status, slug, title) = self.parts();
        let detail = match self {
            ApiError::Internal(err) => {
                tracing::error!(error = ?err, "internal error answering a request");
                "the server failed to handle the request; see its log".to_owned()
            }
            ApiError::Invalid(errors) => errors
                .iter()
                .map(|e| format!("{}: expected {}, got {}", e.field, e.expected, e.got))
                .collect::<Vec<_>>()
                .join("; "),
            other => other.to_string(),
        };
        let errors = match self {
            ApiError::Invalid(errors) => errors.clone(),
            _ => Vec::new(),
        };
        Problem {
            type_: format!("urn:ota:problem:{slug}"),
            title,
            status: status.as_u16(),
            detail,
            errors,
            reason: match self {
                ApiError::VehicleCredential(e) => Some(e.kind()),
                _ => None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.parts();
        let body = self.problem();
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            serde_json::to_vec(&body).unwrap_or_default(),
        )
            .into_response();
        if let ApiError::RangeNotSatisfiable { length } = self {
            if let Ok(v) = format!("bytes */{length}").parse() {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        if matches!(
            self,
            ApiError::Unavailable(_) | ApiError::DependencyUnavailable(_)
        ) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        if let ApiError::BreakerOpen {
            retry_after_seconds,
            ..
        } = self
        {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(retry_after_seconds),
            );
        }
        if let ApiError::DependencyUnavailable(dependency) = self {
            response
                .extensions_mut()
                .insert(super::dependencies::DependencyFailed(dependency));
        }
        if matches!(self, ApiError::Unauthorized | ApiError::TokenExpired { .. }) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if matches!(self, ApiError::VehicleCredential(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(ota_core::credential::SCHEME),
            );
        }
        response
    }
}
