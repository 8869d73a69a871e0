//! The web API: `/api/v1/...` for release engineers (bearer tokens with scopes),
//! `/v1/blobs/{sha256}` for vehicles, `/healthz`, `/readyz`, `/metrics`.
//!
//! Each module exposes `routes()`; [`Routes`] records every (method, path) it mounts so a
//! test can check the OpenAPI document lists exactly the routes that exist.

pub mod audit;
pub mod blobs;
pub mod deletions;
pub mod dependencies;
pub mod deployments;
pub mod error;
pub mod extract;
pub mod health;
pub mod images;
pub mod metadata;
pub mod openapi;
pub mod page;
pub mod releases;
pub mod rollouts;
pub mod tokens;
pub mod validate;
pub mod vehicle_changes;
pub mod vehicles;

use crate::blobs::BlobStore;
use crate::engine::Engine;
use crate::settings::Settings;
use crate::signing::ServerKeys;
use crate::store::Store;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Router;
use error::ApiError;
use extract::JsonLimit;
use metrics_exporter_prometheus::PrometheusHandle;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// Everything a handler may need. Cheap to clone (all shared).
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub blobs: BlobStore,
    pub keys: Arc<ServerKeys>,
    pub settings: Arc<Settings>,
    pub engine: Engine,
    /// The vehicle channel's health, owned by the MQTT gateway.
    pub vehicle_channel: Arc<crate::gateway::ChannelHealth>,
    pub metrics: PrometheusHandle,
    /// Base URL of blob downloads for vehicles.
    pub public_url: String,
    /// The breakers around the database and the blob store.
    pub breakers: dependencies::DependencyBreakers,
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// A router that remembers what it mounted.
#[derive(Debug)]
pub struct Routes {
    pub router: Router<AppState>,
    pub mounted: Vec<(&'static str, &'static str)>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            router: Router::new(),
            mounted: Vec::new(),
        }
    }
}

impl Routes {
    pub fn add(
        mut self,
        method: &'static str,
        path: &'static str,
        handler: MethodRouter<AppState>,
    ) -> Self {
        self.mounted.push((method, path));
        self.router = self.router.route(path, handler);
        self
    }

    pub fn merge(mut self, other: Routes) -> Self {
        self.mounted.extend(other.mounted);
        self.router = self.router.merge(other.router);
        self
    }
}

/// Every route of the API (before middleware), with the list of what was mounted.
pub fn routes() -> Routes {
    Routes::default()
        .merge(health::probes())
        .merge(api_routes())
}

/// Every route except the liveness and readiness probes, which [`app`] serves outside the
/// concurrency limit.
fn api_routes() -> Routes {
    store_routes().merge(blob_routes())
}

/// The routes that read or write blobs (behind the blob store's breaker too).
fn blob_routes() -> Routes {
    Routes::default()
        .merge(images::upload_routes())
        .merge(blobs::routes())
}

/// The routes that need only the database.
fn store_routes() -> Routes {
    Routes::default()
        .merge(openapi::routes())
        .merge(images::routes())
        .merge(releases::routes())
        .merge(deletions::routes())
        .merge(vehicles::routes())
        .merge(vehicle_changes::routes())
        .merge(rollouts::routes())
        .merge(deployments::routes())
        .merge(metadata::routes())
        .merge(audit::routes())
        .merge(tokens::routes())
}

async fn no_route(request: Request) -> ApiError {
    ApiError::NoRoute {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    }
}

/// Answers the errors of the tower layers (load shedding: 503) as problem+json like
/// every other error.
fn overloaded(err: tower::BoxError) -> Response {
    if err.is::<tower::load_shed::error::Overloaded>() {
        ApiError::Unavailable("server is at its concurrency limit; retry shortly".to_owned())
            .into_response()
    } else {
        ApiError::Internal(anyhow::anyhow!("middleware error: {err}")).into_response()
    }
}

/// The `method` label of request metrics: one of the methods the API serves, or
/// `other`, so a client sending made-up methods cannot grow the series without bound.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts requests and their latency by method (a known set), matched route (never by
/// raw path) and status code, every label from a bounded set.
async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("ota_http_requests_total", &labels).increment(1);
    metrics::histogram!("ota_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The whole-request timeout (408 problem+json), for every route but the image upload:
/// that one takes as long as its size needs and is bounded between bytes instead
/// (`limits.upload_idle_timeout_seconds`, in the handler).
async fn request_deadline(seconds: u64, request: Request, next: Next) -> Response {
    let streaming_upload = request.method() == axum::http::Method::POST
        && request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .is_some_and(|p| p.as_str() == images::STREAMING_UPLOAD_PATH);
    if streaming_upload {
        return next.run(request).await;
    }
    match tokio::time::timeout(Duration::from_secs(seconds), next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout { seconds }.into_response(),
    }
}

/// Method-not-allowed answers from axum have an empty body; give them a problem body.
async fn problem_for_405(request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        let allow = response.headers().get(axum::http::header::ALLOW).cloned();
        let mut problem = (
            StatusCode::METHOD_NOT_ALLOWED,
            [(axum::http::header::CONTENT_TYPE, "application/problem+json")],
            serde_json::json!({
                "type": "urn:ota:problem:method-not-allowed", "title": "Method not allowed",
                "status": 405, "detail": format!("{method} is not allowed on {path}"),
            })
            .to_string(),
        )
            .into_response();
        if let Some(allow) = allow {
            problem
                .headers_mut()
                .insert(axum::http::header::ALLOW, allow);
        }
        return problem;
    }
    response
}

/// The full application: routes, fallback, and the tower layers for request ids,
/// tracing, timeouts, body limits, concurrency limiting with load shedding, metrics.
///
/// The request-id, trace, load-shed, concurrency-limit and timeout layers wrap the whole
/// router as one service: `Router::layer` would give every route its own copy, and so
/// its own concurrency budget, which is not a server-wide limit.
pub fn app(state: AppState) -> Router {
    let limits = state.settings.limits.clone();
    let request_id = HeaderName::from_static("x-request-id");
    let json_limit = limits.max_json_bytes;
    let timeout_seconds = limits.request_timeout_seconds;
    // Liveness and readiness answer even when the API is at its concurrency limit: an
    // orchestrator must not restart a server because it is busy.
    let breakers = state.breakers.clone();
    let probes = health::probes()
        .router
        .layer(axum::middleware::from_fn(problem_for_405))
        .layer(axum::middleware::from_fn(record_metrics))
        .with_state(state.clone());
    let blob_breaker = {
        let layer = breakers.blob_store.clone();
        let breakers = breakers.clone();
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(
                move |_: tower_resilience_circuitbreaker::CircuitBreakerError<
                    std::convert::Infallible,
                >| {
                    let breakers = breakers.clone();
                    async move { breakers.refused(dependencies::Dependency::BlobStore) }
                },
            ))
            .layer(layer)
    };
    let router = store_routes()
        .router
        .merge(blob_routes().router.layer(blob_breaker))
        // The dashboard (`/ui`) shares the API's layers: limits, timeouts, metrics and
        // the database breaker.
        .merge(crate::ui::router())
        .fallback(no_route)
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| request_deadline(timeout_seconds, request, next),
        ))
        .layer(axum::middleware::from_fn(problem_for_405))
        .layer(axum::middleware::from_fn(record_metrics))
        .layer(DefaultBodyLimit::max(json_limit))
        .layer(axum::middleware::from_fn(
            move |mut request: Request, next: Next| async move {
                request.extensions_mut().insert(JsonLimit(json_limit));
                next.run(request).await
            },
        ))
        .with_state(state);
    let database_breaker = breakers.database.clone();
    let service = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let id = request
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", method = %request.method(), uri = %request.uri().path(), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(HandleErrorLayer::new(move |err: tower::BoxError| {
            let breakers = breakers.clone();
            async move {
                if dependencies::DependencyBreakers::is_refusal(err.as_ref()) {
                    breakers.refused(dependencies::Dependency::Database)
                } else {
                    overloaded(err)
                }
            }
        }))
        .load_shed()
        .concurrency_limit(limits.max_concurrent_requests)
        .layer(database_breaker)
        .service(router);
    Router::new()
        .merge(probes)
        .fallback_service(service)
        .layer(axum::middleware::from_fn(close_after_refused_body))
}

/// An error answered to a request that carried a body may leave that body unread (a
/// 401 to a 5 MB upload is answered before the upload is read). hyper then closes the
/// connection, and a client that pooled it sends its next request into a closed socket.
/// Saying `Connection: close` on such answers tells every client not to reuse it
/// (RFC 9112 §9.6).
async fn close_after_refused_body(request: Request, next: Next) -> Response {
    let has_body = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() != "0")
        || request
            .headers()
            .contains_key(axum::http::header::TRANSFER_ENCODING);
    let mut response = next.run(request).await;
    if has_body && (response.status().is_client_error() || response.status().is_server_error()) {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}
