//! Delta image builder.

pub mod cli;
