//! Metadata keys: generation, root rotation, signing.

pub mod cli;
