//! The command-line front ends of `ota-agent` (`anyhow` lives here and nowhere below).
//!
//! - `provision`: `ota-agent provision`, a vehicle's device key, root anchor, trust
//!   store and config.

pub mod provision;
