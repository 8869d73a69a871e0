//! End-to-end tests across crates: the real binaries meeting through files, and the delta
//! engine's builder and applier round-tripping real and hostile inputs.

mod agent;
mod dashboard;
mod delta;
mod fleet;
mod keys_to_agent;
mod resilience;
mod vectors;
