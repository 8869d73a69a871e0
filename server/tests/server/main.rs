//! Integration tests of `ota-server`: the API and store on SQLite and PostgreSQL, the MQTT
//! vehicle channel against a real broker, `otactl` and the key tooling through the real
//! binaries.

mod api;
mod helpers;
mod keys;
mod mqtt;
mod otactl;
mod store;
