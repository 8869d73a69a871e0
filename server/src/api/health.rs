//! Liveness, readiness (database, blob store, and the vehicle channel: `disabled`, `ok`,
//! `disconnected` or `stalled`) and Prometheus metrics.

use super::dependencies::{state_name, Dependency};
use super::{AppState, Routes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Json;
use serde::Serialize;

/// Liveness, readiness and metrics: served outside the concurrency limit, load
/// shedding and dependency breakers (an orchestrator and a Prometheus scrape must see a
/// busy or degraded server as it is).
pub fn probes() -> Routes {
    Routes::default()
        .add("get", "/healthz", get(healthz))
        .add("get", "/readyz", get(readyz))
        .add("get", "/metrics", get(metrics))
}

/// Liveness: the process answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(pattern = "^ok$")]
    pub status: &'static str,
}

/// Readiness of the server and of each dependency.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ready {
    /// `ready` when every dependency below is.
    #[schema(pattern = "^(ready|not_ready)$")]
    pub status: &'static str,
    #[schema(pattern = "^(ok|unreachable)$")]
    pub database: &'static str,
    #[schema(pattern = "^(ok|unavailable)$")]
    pub blob_store: &'static str,
    /// The vehicle channel.
    #[schema(pattern = "^(disabled|ok|disconnected|stalled)$")]
    pub broker: &'static str,
    /// The state of each dependency breaker (`closed`, `open`, `half_open`): an open
    /// one refuses the API calls that need its dependency (503) until a probe succeeds.
    pub breakers: Breakers,
}

/// The dependency breakers' states.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Breakers {
    #[schema(pattern = "^(closed|open|half_open)$")]
    pub database: &'static str,
    #[schema(pattern = "^(closed|open|half_open)$")]
    pub blob_store: &'static str,
    /// Writes to Kafka (the durable lane); `closed` when Kafka is not in use.
    #[schema(pattern = "^(closed|open|half_open)$")]
    pub kafka: &'static str,
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)),
    security(()))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: database, blob store and vehicle channel.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Not ready (the body says which dependency); retry after Retry-After seconds",
            body = Ready, headers(("Retry-After" = u32, description = "Seconds")))),
    security(()))]

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let database = state.store.ping().await.is_ok();
    let blobs = state.blobs.ready().await;
    let broker = state.vehicle_channel.status();
    let ready = database && blobs && broker.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let retry_after =
        (!ready).then_some([(header::RETRY_AFTER, super::error::RETRY_AFTER_SECONDS)]);
    (
        status,
        retry_after,
        Json(Ready {
            status: if ready { "ready" } else { "not_ready" },
            database: if database { "ok" } else { "unreachable" },
            blob_store: if blobs { "ok" } else { "unavailable" },
            broker: broker.as_str(),
            breakers: Breakers {
                database: state_name(state.breakers.state(Dependency::Database)),
                blob_store: state_name(state.breakers.state(Dependency::BlobStore)),
                kafka: state_name(state.breakers.state(Dependency::Kafka)),
            },
        }),
    )
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations",
    responses((status = 200, description = "Metrics", body = String, content_type = "text/plain")),
    security(()))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
