//! Integration tests of `ota-agent`, through its real binary where the CLI is the
//! interface, against a real PKCS#11 token (SoftHSM2) where the HSM is involved.

mod delta;
mod directive;
mod fetch;
mod hsm;
mod identity;
mod install;
mod services;
mod state_binding;
mod trust_store;
mod verify_cli;
