//! `ota-agent`: the on-vehicle OTA agent.
//!
//! Layout:
//! - `machine`: the pure state machine, `step(state, event, now) -> (state, actions)`.
//! - `run`: the thin async driver that runs the machine's actions (MQTT, downloads,
//!   installs, bootloader, health check) and journals every transition.
//! - `journal`: the journaled agent state (atomic writes) and the crash hook.
//! - `directive`: directives verified with the vehicle's own identity (targets and root
//!   chain fetched and cached).
//! - `mqtt`: the vehicle's MQTT link (persistent session, own topics, delivery tracking).
//! - `fetch`: downloads with length/digest/resume/slow-retrieval rules, behind a
//!   `Transport` trait (HTTP, file).
//! - `reporter`: the progress outbox, buffered on disk, bounded, in order.
//! - `preconditions`: assignment preconditions against the vehicle-state provider.
//! - `slots`: A/B slots and the [`slots::Bootloader`] trait (try-boot counter), with its
//!   `file`, U-Boot and GRUB implementations and the pure firmware rule.
//! - `install`: streaming a full image or a delta into the inactive slot in place, bounded
//!   by the signed length and checked against the signed SHA-256.
//! - `identity`: the device key ([`identity::DeviceSigner`]: PKCS#11 token or dev file) and
//!   everything it signs (envelopes, blob credentials); `identity::pkcs11` (token key,
//!   `CKM_EDDSA`), `identity::file` (development key file).
//! - `config`: the agent's TOML config file (`AgentConfig`), strict, errors name the key.
//! - `simulate`: the fleet simulator (N agents in one process, same machine and driver).
//! - `cli`: command-line front ends (`provision`, `run`).
//! - `hsm`: the vehicle HSM over PKCS#11: the root anchor public-key object.
//! - `hsm_cli`: `ota-agent hsm install-anchor|show-anchor` and the shared PKCS#11 options.
//! - `trust_store`: the trust store (provisioned root, root chain, trusted state),
//!   re-verified from the anchor at every load, atomic writes.
//! - `verifier`: metadata verification as run by the agent (load, verify, persist).
//! - `verify_cli`: `ota-agent verify-metadata`, offline verification through `verifier`.
//! - `delta`: streaming delta apply (CLI `ota-agent delta apply`).

pub mod cli;
pub mod config;
pub mod delta;
pub mod directive;
pub mod fetch;
pub mod hsm;
pub mod hsm_cli;
pub mod identity;
pub mod install;
pub mod journal;
pub mod machine;
pub mod mqtt;
pub mod preconditions;
pub mod reporter;
pub mod run;
pub mod simulate;
pub mod slots;
pub mod trust_store;
pub mod verifier;
pub mod verify_cli;
