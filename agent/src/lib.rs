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
//! - `slots`: A/B slots and the [`slots::Bootloader`] trait (try-boot counter), with its
//!   `file`, U-Boot and GRUB implementations and the pure firmware rule.
//! - `install`: streaming a full image or a delta into the inactive slot in place, bounded
//!   by the signed length and checked against the signed SHA-256.

pub mod delta;
pub mod hsm;
pub mod hsm_cli;
pub mod directive;
pub mod identity;
pub mod install;
pub mod journal;
pub mod machine;
pub mod mqtt;
pub mod preconditions;
pub mod slots;
pub mod trust_store;
pub mod verifier;
pub mod verify_cli;
