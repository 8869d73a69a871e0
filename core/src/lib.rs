//! `ota-core`: what the server and the agent must agree on byte for byte, and its
//! verification. Pure: no IO, no clock, no RNG — time, seeds and bytes are passed in.
//!
//! Layout:
//! - [`encoding`]: strict JSON (no duplicate keys, no trailing bytes), hex/base64 newtypes.
//! - [`time`]: RFC 3339 UTC timestamps in the one wire form we accept.
//! - [`key`]: Ed25519 public keys (weak keys refused) and key ids.
//! - [`envelope`]: the DSSE signed envelope, PAE, signing.
//! - [`metadata`]: the role documents `root`, `targets`, `director`.
//! - [`threshold`]: counting valid signatures of distinct authorised keys.
//! - [`trust`]: trusted state, root rotation, full verification of an update.
//! - [`delta`]: the delta container (header, segments, control blocks), strictly bounded.
//! - [`cohort`]: canary cohort bucketing (SHA-256 of salt ‖ vehicle id).
//! - [`protocol`]: MQTT topics and the signed vehicle/server messages.
//! - [`credential`]: the vehicle HTTP request credential (signs method and target).
//! - [`endpoint`]: typed service addresses from configuration (the MQTT broker URL).
//! - [`error`]: the typed rejections, one variant per attack class.

pub mod cohort;
pub mod credential;
pub mod delta;
pub mod encoding;
pub mod endpoint;
pub mod envelope;
pub mod error;
pub mod key;
pub mod metadata;
pub mod protocol;
pub mod threshold;
pub mod time;
pub mod trust;

pub use error::{Error, SignatureRejection};
