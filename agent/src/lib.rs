//! `ota-agent`: the on-vehicle OTA agent.
//!
//! Layout:
//! - `hsm`: the vehicle HSM over PKCS#11: the root anchor public-key object.
//! - `hsm_cli`: `ota-agent hsm install-anchor|show-anchor` and the shared PKCS#11 options.
//! - `trust_store`: the trust store (provisioned root, root chain, trusted state), re-verified from the
//!   anchor at every load, atomic writes.
//! - `verifier`: metadata verification as run by the agent (load, verify, persist).
//! - `verify_cli`: `ota-agent verify-metadata`, offline verification through `verifier`.
//! - `delta`: streaming delta apply (CLI `ota-agent delta apply`).
//! - `identity`: the device key ([`identity::DeviceSigner`]: PKCS#11 token or dev file) and
//!   everything it signs (envelopes, blob credentials).
//! - `fetch`: downloads over a [`fetch::Transport`] (HTTP(S), files) with the signed length and
//!   digest enforced while streaming, `Range` resume of a `.part` file, slow-retrieval limits.
//! - `reporter`: the progress outbox ([`reporter::Outbox`]), buffered on disk while offline,
//!   bounded (oldest byte counts dropped first, never a transition), in order.

pub mod delta;
pub mod fetch;
pub mod hsm;
pub mod hsm_cli;
pub mod identity;
pub mod reporter;
pub mod trust_store;
pub mod verifier;
pub mod verify_cli;
