//! Integration tests of `ota-server`: the API and store on SQLite and PostgreSQL, the MQTT
//! vehicle channel against a real broker, the durable progress lane through a real Kafka
//! broker (tansu), the blob store on the local directory and on a real S3-protocol
//! server (s3s-fs), `otactl`, the key tooling and the delta builder through the real
//! binaries.

mod api;
mod blob_access;
mod blob_store;
mod delta;
mod edge;
mod helpers;
mod kafka;
mod keys;
mod mqtt;
mod otactl;
mod shutdown;
mod store;
mod vehicle_channel;
