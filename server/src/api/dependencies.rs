//! Infrastructure breakers (DESIGN.md §7): a tower circuit breaker
//! (`tower-resilience-circuitbreaker`) per dependency of the API — the database around
//! every API route, the blob store around the routes that read or write blobs. A broken
//! dependency then fails fast with a 503 naming it, instead of every request waiting
//! on it (a database that refuses connections costs each request the pool's 5 s
//! acquire timeout) and piling up behind the concurrency limit.
//!
//! A request counts as a failure of a dependency when its answer is that dependency's
//! 503 (`ApiError::DependencyUnavailable`, which marks the response with
//! [`DependencyFailed`]); every other answer, errors of the client included, counts
//! as a success. Over the last `window_seconds`, with at least `minimum_calls` calls, a
//! failure share of `failure_rate_percent` or more opens the breaker: calls are then
//! refused at once (503 `dependency-unavailable`, `Retry-After`) for `open_seconds`,
//! after which `half_open_calls` probes decide between closing and opening again.
//! State changes are logged and exported as `ota_dependency_breaker_state`; refusals
//! as `ota_dependency_breaker_rejections_total`.
//!
//! Kafka has a breaker of the same settings around every write of the durable lane
//! (the gateway's vehicle events, the rollout-events relay): a failed or timed-out
//! write counts as a failure (the gateway writes a batch of events as one call, failed
//! when at least `failure_rate_percent` of its records failed: [`KafkaBreaker`]); while
//! it is open, writes fail at once and their callers back off (the gateway holds the
//! MQTT message unacknowledged, the relay keeps the event in the outbox), instead of
//! every write waiting out the delivery timeout.

use super::error::ApiError;
use crate::settings::DependencyBreakerSettings;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::convert::Infallible;
use std::time::Duration;
use tower_resilience_circuitbreaker::{
    CircuitBreakerConfigBuilder, CircuitBreakerError, CircuitBreakerHandle, CircuitBreakerLayer,
    CircuitState, DefaultClassifier, FnClassifier, SlidingWindowType,
};

/// A dependency of the API with a breaker of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Dependency {
    Database,
    BlobStore,
    Kafka,
}

impl Dependency {
    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::Database => "database",
            Dependency::BlobStore => "blob_store",
            Dependency::Kafka => "kafka",
        }
    }

    /// As a person reads it, in problem details.
    pub fn described(self) -> &'static str {
        match self {
            Dependency::Database => "the database",
            Dependency::BlobStore => "the blob store",
            Dependency::Kafka => "Kafka",
        }
    }
}

/// Marks a response whose failure was its dependency's (set by
/// `ApiError::DependencyUnavailable`); what the breakers count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DependencyFailed(pub Dependency);

/// How a breaker judges one answer of the service it wraps.
pub type Classifier = FnClassifier<fn(&Result<Response, Infallible>) -> bool>;

/// The breaker layer of one dependency (a tower layer; every service it wraps shares
/// one circuit).
pub type BreakerLayer = CircuitBreakerLayer<Classifier>;

/// The Kafka breaker's layer: every error of a write is a failure.
pub type KafkaBreakerLayer = CircuitBreakerLayer<DefaultClassifier>;

/// The Kafka breaker, with the failure share (`failure_rate_percent` ÷ 100) at which a
/// batch of writes made as one call counts as a failed call
/// ([`crate::events::LaneProducer::send_many`]): a batch then stands for its records,
/// so the breaker opens at the same share of failed records as with a call per record.
#[derive(Clone)]
pub struct KafkaBreaker {
    pub layer: KafkaBreakerLayer,
    pub failure_share: f64,
}

impl std::fmt::Debug for KafkaBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBreaker")
            .field("failure_share", &self.failure_share)
            .finish_non_exhaustive()
    }
}

fn database_failed(result: &Result<Response, Infallible>) -> bool {
    failed(result, Dependency::Database)
}

fn blob_store_failed(result: &Result<Response, Infallible>) -> bool {
    failed(result, Dependency::BlobStore)
}

fn failed(result: &Result<Response, Infallible>, dependency: Dependency) -> bool {
    match result {
        Ok(response) => {
            response.extensions().get::<DependencyFailed>() == Some(&DependencyFailed(dependency))
        }
        Err(never) => match *never {},
    }
}

/// The breakers of the API's dependencies, and handles to read their state.
#[derive(Clone)]
pub struct DependencyBreakers {
    pub database: BreakerLayer,
    pub blob_store: BreakerLayer,
    pub kafka: KafkaBreaker,
    database_handle: CircuitBreakerHandle<Classifier>,
    blob_store_handle: CircuitBreakerHandle<Classifier>,
    kafka_handle: CircuitBreakerHandle<DefaultClassifier>,
    open_seconds: u64,
}

impl std::fmt::Debug for DependencyBreakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DependencyBreakers")
            .field("database", &self.state(Dependency::Database))
            .field("blob_store", &self.state(Dependency::BlobStore))
            .field("kafka", &self.state(Dependency::Kafka))
            .finish()
    }
}

/// The gauge value of a breaker state: 0 closed, 1 open, 2 half-open.
fn gauge(state: CircuitState) -> f64 {
    match state {
        CircuitState::Closed => 0.0,
        CircuitState::Open => 1.0,
        CircuitState::HalfOpen => 2.0,
    }
}

pub fn state_name(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed => "closed",
        CircuitState::Open => "open",
        CircuitState::HalfOpen => "half_open",
    }
}

/// A breaker builder with the settings, metrics and logs every dependency shares.
fn configured(
    settings: &DependencyBreakerSettings,
    dependency: Dependency,
) -> CircuitBreakerConfigBuilder<DefaultClassifier> {
    let name = dependency.as_str();
    metrics::gauge!("ota_dependency_breaker_state", "dependency" => name).set(0.0);
    CircuitBreakerLayer::builder()
        .name(name)
        .failure_rate_threshold(f64::from(settings.failure_rate_percent) / 100.0)
        .sliding_window_type(SlidingWindowType::TimeBased)
        .sliding_window_duration(Duration::from_secs(settings.window_seconds))
        .minimum_number_of_calls(settings.minimum_calls)
        .wait_duration_in_open(Duration::from_secs(settings.open_seconds))
        .permitted_calls_in_half_open(settings.half_open_calls)
        .on_state_transition(move |from, to| {
            metrics::gauge!("ota_dependency_breaker_state", "dependency" => name).set(gauge(to));
            if to == CircuitState::Open {
                tracing::warn!(
                    dependency = name,
                    from = state_name(from),
                    "dependency breaker opened: its calls fail fast until a probe succeeds"
                );
            } else {
                tracing::info!(
                    dependency = name,
                    from = state_name(from),
                    to = state_name(to),
                    "dependency breaker changed state"
                );
            }
        })
        .on_call_rejected(move || {
            metrics::counter!("ota_dependency_breaker_rejections_total", "dependency" => name)
                .increment(1);
        })
}

const CHECKED: &str = "dependency breaker settings are checked at load";

fn breaker(
    settings: &DependencyBreakerSettings,
    dependency: Dependency,
    classify: fn(&Result<Response, Infallible>) -> bool,
) -> (BreakerLayer, CircuitBreakerHandle<Classifier>) {
    configured(settings, dependency)
        .failure_classifier(classify)
        .build_with_handle()
        .expect(CHECKED)
}

impl DependencyBreakers {
    pub fn new(settings: &DependencyBreakerSettings) -> DependencyBreakers {
        let (database, database_handle) = breaker(settings, Dependency::Database, database_failed);
        let (blob_store, blob_store_handle) =
            breaker(settings, Dependency::BlobStore, blob_store_failed);
        let (kafka, kafka_handle) = configured(settings, Dependency::Kafka)
            .build_with_handle()
            .expect(CHECKED);
        DependencyBreakers {
            database,
            blob_store,
            kafka: KafkaBreaker {
                layer: kafka,
                failure_share: f64::from(settings.failure_rate_percent) / 100.0,
            },
            database_handle,
            blob_store_handle,
            kafka_handle,
            open_seconds: settings.open_seconds,
        }
    }

    pub fn state(&self, dependency: Dependency) -> CircuitState {
        match dependency {
            Dependency::Database => self.database_handle.state(),
            Dependency::BlobStore => self.blob_store_handle.state(),
            Dependency::Kafka => self.kafka_handle.state(),
        }
    }

    /// The calls in the Kafka breaker's current window and how many of them failed.
    pub async fn kafka_window(&self) -> (usize, usize) {
        let metrics = self.kafka_handle.metrics().await;
        (metrics.total_calls, metrics.failure_count)
    }

    /// The answer to a call the open breaker of `dependency` refused: 503 with
    /// `Retry-After` (the breaker's open time).
    pub fn refused(&self, dependency: Dependency) -> Response {
        ApiError::BreakerOpen {
            dependency,
            retry_after_seconds: self.open_seconds,
        }
        .into_response()
    }

    /// Whether a tower error is a breaker's refusal.
    pub fn is_refusal(err: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
        err.downcast_ref::<CircuitBreakerError<Infallible>>()
            .is_some_and(CircuitBreakerError::is_circuit_open)
    }
}

/// Whether a database error means the database itself is unavailable (connection
/// refused or lost, pool exhausted, server shutting down or out of resources), as
/// opposed to a problem with one statement.
pub fn database_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| unavailable_code(&code)),
        _ => false,
    }
}

/// PostgreSQL SQLSTATE classes 08 (connection exception), 53 (insufficient
/// resources) and 57P (operator intervention: shutdown, cannot connect now), 3D000 and
/// 55000 (what a connection attempt gets from a database that was dropped or renamed,
/// or that does not accept connections; no statement of the server raises them), and
/// SQLite's busy, locked, I/O error, full and cannot-open result codes (primary codes,
/// extended codes carry them in the low byte).
fn unavailable_code(code: &str) -> bool {
    // SQLSTATEs are five characters; SQLite result codes are decimal numbers of at most
    // four digits.
    if code.len() == 5 {
        return code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57P")
            || code == "3D000"
            || code == "55000";
    }
    code.parse::<u32>()
        .is_ok_and(|n| matches!(n & 0xff, 5 | 6 | 10 | 13 | 14))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_database_codes_are_the_connection_and_resource_ones() {
        for code in [
            "08006", "08001", "53300", "57P01", "57P03", "3D000", "55000", "5", "517", "10",
            "3338", "13", "14",
        ] {
            assert!(unavailable_code(code), "{code}");
        }
        for code in ["23505", "42P01", "40001", "22P02", "19", "2067", "1", "787"] {
            assert!(!unavailable_code(code), "{code}");
        }
    }

    #[test]
    fn only_a_response_marked_with_the_dependency_counts_as_its_failure() {
        let marked = |dependency| {
            let mut response = Response::new(axum::body::Body::empty());
            response
                .extensions_mut()
                .insert(DependencyFailed(dependency));
            Ok(response)
        };
        assert!(database_failed(&marked(Dependency::Database)));
        assert!(!database_failed(&marked(Dependency::BlobStore)));
        assert!(blob_store_failed(&marked(Dependency::BlobStore)));
        let plain = Ok(Response::new(axum::body::Body::empty()));
        assert!(!database_failed(&plain) && !blob_store_failed(&plain));
    }
}
