//! `ota-server`: the orchestration server of the OTA system.
//!
//! Layout:
//! - `keys`: metadata key generation, root rotation, offline signing (CLI `ota-server keys`).
//! - `delta`: the delta builder (CLI `ota-server delta`).
//! - [`settings`]: typed configuration from a file and `OTA_*` environment variables.
//! - [`startup`]: `Application::build` (binds, reports its port) and `run_until_stopped`.
//! - [`store`]: sqlx storage over SQLite or PostgreSQL, migrations, audit log.
//! - [`blobs`]: the content-addressed blob store behind [`blobs::BlobBackend`]: a local
//!   directory or S3-compatible object storage (streaming both ways, hashed on the way in).
//! - [`signing`]: the server's targets/director keys (key directory or dev ephemeral set).
//! - [`api`]: the axum web API under `/api/v1`, problem+json errors, OpenAPI document.
//! - pure logic, no IO: [`rollout`] (spec, state machine, phases), [`breaker`],
//!   [`director`] (who gets what), tested with tables and property tests.
//! - [`engine`]: intake, assignment, supervision and status, split by concern; every
//!   rollout change goes through one planner.
//! - [`gateway`]: the MQTT fast lane (check-ins in, directives and control out), acking
//!   in arrival order ([`ack_order`]);
//!   [`broker`]: the embedded MQTT broker (rumqttd) when none is configured.
//! - [`events`]: the durable lane: verified progress → Kafka → the rollout engine's consumer;
//!   [`embedded_kafka`]: the in-process Kafka (librdkafka mock cluster) when none is configured.
//! - [`jobs`]: the durable delta-build queue and its workers.
//! - [`tokens`]: API bearer tokens and scopes.
//! - [`ui`]: the dashboard under `/ui`, server-rendered HTML over the API's handlers.
//! - [`cli`]: the `serve` and `tokens` subcommands of `ota-server`.
//! - [`client`]: the HTTP client `otactl` uses; [`otactl`]: its commands and output.

pub mod ack_order;
pub mod api;
pub mod blob_access;
pub mod blobs;
pub mod breaker;
pub mod broker;
pub mod cli;
pub mod client;
pub mod delta;
pub mod director;
pub mod embedded_kafka;
pub mod engine;
pub mod events;
pub mod gateway;
pub mod jobs;
pub mod keys;
pub mod otactl;
pub mod rollout;
pub mod rollout_relay;
pub mod settings;
pub mod signing;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tokens;
pub mod ui;
