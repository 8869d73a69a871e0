//! Streaming delta apply.

pub mod cli;
