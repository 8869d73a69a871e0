//! `ota-agent`: the on-vehicle OTA agent.
//!
//! Layout:
//! - `trust_store`: the file trust store (anchor root, persisted trusted state), atomic writes.
//! - `verifier`: metadata verification as run by the agent (load, verify, persist).
//! - `verify_cli`: `ota-agent verify-metadata`, offline verification through `verifier`.
//! - `delta`: streaming delta apply (CLI `ota-agent delta apply`).

pub mod delta;
pub mod trust_store;
pub mod verifier;
pub mod verify_cli;
