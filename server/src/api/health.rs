//! Liveness, readiness (database, blob store, and the vehicle channel: `disabled`, `ok`,
//! `disconnected` or `stalled`) and Prometheus metrics.

use super::{AppState, Routes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Json;

/// Liveness and readiness: served outside the concurrency limit and load shedding.
pub fn probes() -> Routes {
    Routes::default()
        .add("get", "/healthz", get(healthz))
        .add("get", "/readyz", get(readyz))
}

pub fn routes() -> Routes {
    Routes::default().add("get", "/metrics", get(metrics))
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

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
        Json(serde_json::json!({
            "status": if ready { "ready" } else { "not_ready" },
            "database": if database { "ok" } else { "unreachable" },
            "blob_store": if blobs { "ok" } else { "unavailable" },
            "broker": broker.as_str(),
        })),
    )
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
