//! Extractors that turn every malformed input into a clear 4xx `ApiError`: JSON bodies
//! (content type, size, syntax, unknown fields — with the field path), query strings,
//! ids, and the bearer-token caller.

use super::error::ApiError;
use super::AppState;
use crate::tokens::{grants, hash_token, Scope};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

/// A JSON body: `application/json` only, within the body limit, every field known.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mime != "application/json" {
            return Err(ApiError::UnsupportedMediaType {
                expected: "application/json",
                got: if content_type.is_empty() {
                    "no Content-Type".to_owned()
                } else {
                    content_type
                },
            });
        }
        let limit = req
            .extensions()
            .get::<JsonLimit>()
            .map(|l| l.0)
            .unwrap_or(1024 * 1024);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    limit: limit as u64,
                }
            } else {
                ApiError::BadRequest(format!(
                    "could not read the body: {}",
                    rejection.body_text()
                ))
            }
        })?;
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    let (expected, got) = split_serde_message(&inner.to_string());
                    ApiError::invalid(
                        if path == "." { "body".to_owned() } else { path },
                        expected,
                        got,
                    )
                }
                _ => ApiError::MalformedJson(inner.to_string()),
            }
        })?;
        deserializer.end().map_err(|e| {
            ApiError::MalformedJson(format!("trailing characters after the JSON value: {e}"))
        })?;
        Ok(ApiJson(value))
    }
}

/// The JSON body limit, put in request extensions by the router (used for the message).
#[derive(Debug, Clone, Copy)]
pub struct JsonLimit(pub usize);

/// A query string; unknown or malformed parameters are a 400 naming the problem.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query().unwrap_or("")).map(ApiQuery)
    }
}

/// A query string into `T`: a parameter with a bad value (an integer out of range, a
/// number that is not one) is a 422 naming it; anything else (an unknown parameter, a
/// missing one) is a 400.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let deserializer =
        serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let message = err.into_inner().to_string();
        if path == "." || path.is_empty() || message.starts_with("unknown field") {
            ApiError::BadRequest(format!("invalid query string: {message}"))
        } else {
            let (expected, got) = split_serde_message(&message);
            ApiError::invalid(path, expected, got)
        }
    })
}

/// Splits serde's "invalid type: string \"a\", expected u64" into the expectation and
/// what was given, so a problem says each once ("expected u64, got invalid type: …").
pub fn split_serde_message(message: &str) -> (String, String) {
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_owned();
    match message.split_once(", expected ") {
        Some((got, expected)) => (expected.to_owned(), got.to_owned()),
        None => ("a valid value".to_owned(), message),
    }
}

/// Checks an id path segment: `<prefix>_` + 16 lowercase hex digits.
pub fn parse_id(kind: &'static str, prefix: &str, id: &str) -> Result<String, ApiError> {
    let ok = id
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|hex| {
            hex.len() == 16
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
    if ok {
        Ok(id.to_owned())
    } else {
        Err(ApiError::invalid(
            format!("{kind} id"),
            format!("{prefix}_ followed by 16 lowercase hex digits"),
            format!("{id:?}"),
        ))
    }
}

/// The authenticated caller of an API call.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_name: String,
    pub scopes: Vec<Scope>,
    pub request_id: Option<String>,
}

impl Caller {
    /// The caller a live token's record stands for, in this request.
    pub fn from_record(record: crate::store::TokenRecord, parts: &Parts) -> Caller {
        Caller {
            token_name: record.name,
            scopes: record
                .scopes
                .iter()
                .filter_map(|s| Scope::parse(s).ok())
                .collect(),
            request_id: request_id(parts),
        }
    }

    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if grants(&self.scopes, scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden {
                needed: scope.as_str(),
            })
        }
    }

    pub fn actor(&self) -> crate::store::Actor {
        crate::store::Actor {
            name: self.token_name.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

pub fn request_id(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The token's record if it exists, is not revoked and has not expired (401 otherwise;
/// an expired token's answer says when it expired).
pub async fn live_token(
    state: &AppState,
    token: &str,
) -> Result<crate::store::TokenRecord, ApiError> {
    let record = state
        .store
        .find_token(&hash_token(token))
        .await?
        .ok_or(ApiError::Unauthorized)?;
    if record.expired(crate::engine::wall_clock_ms()) {
        return Err(ApiError::TokenExpired {
            at: crate::store::ms_to_rfc3339(record.expires_ms.unwrap_or_default()),
        });
    }
    Ok(record)
}

pub fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        let record = live_token(state, token).await?;
        Ok(Caller::from_record(record, parts))
    }
}

/// A scope as a type, so a handler can demand it in its signature.
pub trait RequiredScope: Send + Sync + 'static {
    const SCOPE: Scope;
}

macro_rules! scope_marker {
    ($name:ident, $scope:expr) => {
        #[derive(Debug, Clone, Copy)]
        pub struct $name;
        impl RequiredScope for $name {
            const SCOPE: Scope = $scope;
        }
    };
}
scope_marker!(AdminScope, Scope::Admin);
scope_marker!(ReleaseWriteScope, Scope::ReleaseWrite);
scope_marker!(RolloutWriteScope, Scope::RolloutWrite);

/// A caller holding scope `S`. As a request-parts extractor it runs before the body is
/// read, so an unauthorised caller gets 401/403 rather than a validation error about a
/// body they were never allowed to send.
#[derive(Debug, Clone)]
pub struct Authorized<S: RequiredScope>(pub Caller, pub std::marker::PhantomData<S>);

impl<S: RequiredScope> FromRequestParts<AppState> for Authorized<S> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require(S::SCOPE)?;
        Ok(Authorized(caller, std::marker::PhantomData))
    }
}

/// The caller of a vehicle route (`/v1/...`): a vehicle whose request credential
/// (`ota_core::credential`, PROTOCOL.md §10) authenticates this very request (method and
/// target as received), or an operator whose bearer token has the `read` scope. Every
/// refusal is counted in `ota_vehicle_requests_refused_total{reason}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VehicleRouteCaller {
    Vehicle(String),
    Reader,
}

impl FromRequestParts<AppState> for VehicleRouteCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            refused("missing");
            return Err(ApiError::Unauthorized);
        };
        if value.starts_with("Bearer ") {
            let caller = Caller::from_request_parts(parts, state).await?;
            caller.require(Scope::Read)?;
            return Ok(VehicleRouteCaller::Reader);
        }
        let value = value.to_owned();
        let now = chrono::Utc::now().timestamp();
        authenticate_vehicle(state, &value, parts, now)
            .await
            .map(VehicleRouteCaller::Vehicle)
            .inspect_err(|error| {
                if let ApiError::VehicleCredential(e) = error {
                    refused(e.kind());
                }
            })
    }
}

/// Counts a refused vehicle request by its reason.
pub fn refused(reason: &'static str) {
    metrics::counter!("ota_vehicle_requests_refused_total", "reason" => reason).increment(1);
}

/// The request target as received: path and query, before any routing rewrote it.
fn request_target(parts: &Parts) -> &str {
    let uri = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or(&parts.uri, |original| &original.0);
    uri.path_and_query()
        .map_or_else(|| uri.path(), |target| target.as_str())
}

async fn authenticate_vehicle(
    state: &AppState,
    value: &str,
    parts: &Parts,
    now_unix_seconds: i64,
) -> Result<String, ApiError> {
    use ota_core::credential::{self, CredentialError};
    let method = parts.method.as_str();
    let target = request_target(parts);
    let credential = credential::parse(value)?;
    credential.check_request(method, target, now_unix_seconds)?;
    let vehicle_id = credential.request.vehicle_id.clone();
    let vehicle = match state.store.get_vehicle(&vehicle_id).await {
        // A decommissioned vehicle's credential is refused like an unknown one's.
        Ok(vehicle) if vehicle.decommissioned_at.is_some() => {
            return Err(CredentialError::UnknownVehicle(vehicle_id).into())
        }
        Ok(vehicle) => vehicle,
        Err(crate::store::StoreError::NotFound { .. }) => {
            return Err(CredentialError::UnknownVehicle(vehicle_id).into())
        }
        Err(e) => return Err(e.into()),
    };
    let key = ota_core::encoding::parse_lower_hex::<32>(&vehicle.public_key)
        .ok()
        .and_then(|raw| ota_core::key::PublicKey::from_bytes(&raw).ok())
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "vehicle {vehicle_id}: the registered public key does not parse"
            ))
        })?;
    credential.verify(&key, method, target)?;
    Ok(vehicle_id)
}
