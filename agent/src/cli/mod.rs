//! The command-line front ends of `ota-agent` (`anyhow` lives here and nowhere below).
//!
//! - `provision`: `ota-agent provision`, a vehicle's device key, root anchor, trust
//!   store and config.
//! - `run`: `ota-agent run`, the agent on a vehicle, from its config file.

pub mod provision;
pub mod run;
