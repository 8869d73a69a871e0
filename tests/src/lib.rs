//! End-to-end test helpers.
//!
//! Layout:
//! - `synthetic`: deterministic firmware-like image pairs for delta tests and benchmarks.

pub mod synthetic;
