//! `ota-core`: what the server and the agent must agree on byte for byte. Pure: no IO,
//! no clock, no RNG.

pub mod delta;
