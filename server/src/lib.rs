//! `ota-server`: the orchestration server of the OTA system.
//!
//! Layout:
//! - `keys`: metadata key generation, root rotation, offline signing (CLI `ota-server keys`).
//! - `delta`: the delta builder (CLI `ota-server delta`).

pub mod delta;
pub mod keys;
