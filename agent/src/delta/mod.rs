//! Streaming delta apply.
//!
//! Layout:
//! - `apply`: delta stream + source slot → target, bounded memory, typed errors.
//! - `cli`: `ota-agent delta apply`.

pub mod apply;
pub mod cli;

pub use apply::{apply_delta, apply_delta_known, ApplyError, ApplyReport, ImageId};
