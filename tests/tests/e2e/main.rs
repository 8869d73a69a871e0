//! End-to-end tests across crates, through the real binaries.

mod keys_to_agent;
