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
//! - `config`: the agent's TOML config file (`AgentConfig`), strict, errors name the key.
//! - `cli`: command-line front ends (`provision`).
//! - `identity`: the device key ([`identity::DeviceSigner`]: PKCS#11 token or dev file) and
//!   everything it signs (envelopes, blob credentials); `identity::pkcs11` (token key,
//!   `CKM_EDDSA`), `identity::file` (development key file).

pub mod cli;
pub mod config;
pub mod delta;
pub mod hsm;
pub mod hsm_cli;
pub mod identity;
pub mod trust_store;
pub mod verifier;
pub mod verify_cli;
