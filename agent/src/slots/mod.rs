//! A/B slots and the bootloader that chooses between them.
//!
//! Two slots hold two complete images. One is *active*: the committed slot the boot
//! firmware falls back to. A new image goes into the other one, and the bootloader is
//! asked to *try* it for a bounded number of boots (a try-boot counter). If the new
//! system comes up healthy the agent *confirms* it and it becomes active; if it never
//! confirms, the firmware's counter runs out and the next boot is the active slot again,
//! whatever state the agent was in.
//!
//! [`firmware_boot`] is that firmware rule as a pure function. The implementations of
//! [`Bootloader`] only store the three variables the firmware reads:
//!
//! | variable    | meaning                                             |
//! |-------------|-----------------------------------------------------|
//! | `ota_active`| committed slot, `a` or `b` (unset means `a`)         |
//! | `ota_try`   | slot armed for a try, `a`/`b`, or unset/empty: none  |
//! | `ota_tries` | boots the try has left (decimal; unset means 0)     |
//!
//! Layout:
//! - `file`: [`file::FileBootloader`], an env file (JSON) for tests and the simulator; its
//!   `reboot` runs [`firmware_boot`] on the file.
//! - `uboot`: [`uboot::UBootBootloader`], `fw_printenv`/`fw_setenv`.
//! - `grub`: [`grub::GrubBootloader`], `grub-editenv`.
//! - `tool`: running the bootloader tools, parsing the variables and the kernel command
//!   line (`ota.slot=`), shared by `uboot` and `grub`.

pub mod file;
pub mod grub;
mod tool;
pub mod uboot;

pub use file::FileBootloader;
pub use grub::GrubBootloader;
pub use uboot::UBootBootloader;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotName {
    A,
    B,
}

impl SlotName {
    /// `"a"` or `"b"`: the spelling in bootloader variables and on the kernel command line.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotName::A => "a",
            SlotName::B => "b",
        }
    }

    /// The other slot.
    pub fn other(self) -> SlotName {
        match self {
            SlotName::A => SlotName::B,
            SlotName::B => SlotName::A,
        }
    }

    /// `"a"` or `"b"` exactly; anything else is `None`.
    pub fn parse(text: &str) -> Option<SlotName> {
        match text {
            "a" => Some(SlotName::A),
            "b" => Some(SlotName::B),
            _ => None,
        }
    }
}

impl fmt::Display for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bootloader's view of the slots, plus the slot the running system booted from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootState {
    /// The committed slot the firmware falls back to.
    pub active: SlotName,
    /// A one-shot try armed for this slot, if any.
    pub trying: Option<SlotName>,
    /// Boots the armed try has left.
    pub tries_left: u32,
    /// The slot the running system booted from.
    pub booted: SlotName,
}

impl BootState {
    /// A freshly provisioned board: slot `a` committed and running, nothing armed.
    pub fn initial() -> BootState {
        BootState {
            active: SlotName::A,
            trying: None,
            tries_left: 0,
            booted: SlotName::A,
        }
    }

    /// The inactive slot: where the next image goes.
    pub fn inactive(&self) -> SlotName {
        self.active.other()
    }
}

/// Bootloader control: the try-boot counter and the committed slot.
pub trait Bootloader: Send + Sync + fmt::Debug {
    fn read(&self) -> Result<BootState, SlotError>;
    /// Arm a try of `slot` with a boot counter of `tries` boots.
    fn arm_try(&self, slot: SlotName, tries: u32) -> Result<(), SlotError>;
    /// The booted try slot is good: it becomes active, the try is cleared.
    fn confirm(&self, slot: SlotName) -> Result<(), SlotError>;
    /// Give up a try: clear it, so the next boot is the active slot.
    fn abandon(&self) -> Result<(), SlotError>;
    /// Operator/server rollback: make `slot` (the previous committed slot) active again.
    fn set_active(&self, slot: SlotName) -> Result<(), SlotError>;
    /// Reboot. `file`: emulates the firmware at once (see `firmware_boot`) and returns;
    /// real boards: runs the configured reboot command.
    fn reboot(&self) -> Result<(), SlotError>;
}

/// Pure: what boot firmware with a try-boot counter does at power-on: returns the new
/// env state (with `booted` set). A try with boots left is booted and its counter
/// decremented; a try with no boots left is cleared and the active slot booted.
///
/// The active slot is never changed here: only a confirm (by a running system) moves it,
/// so a try that never confirms always ends on the slot that was active before it.
pub fn firmware_boot(state: &BootState) -> BootState {
    match state.trying {
        Some(slot) if state.tries_left > 0 => BootState {
            active: state.active,
            trying: Some(slot),
            tries_left: state.tries_left - 1,
            booted: slot,
        },
        _ => BootState {
            active: state.active,
            trying: None,
            tries_left: 0,
            booted: state.active,
        },
    }
}

/// Pure rules shared by the implementations: each returns the new env state or refuses.
/// What differs between the bootloaders: where the environment lives and how it is read
/// and written. Every [`Bootloader`] operation is the same pure [`rules`] function run
/// against it, under the backend's lock, so the three implementations cannot drift apart.
pub(crate) trait BootEnv: Send + Sync + fmt::Debug {
    /// Serialises read-modify-write cycles within this process.
    fn lock(&self) -> &std::sync::Mutex<()>;
    /// The environment as it is now.
    fn load(&self) -> Result<BootState, SlotError>;
    /// Writes `new` over `old` (only what changed, in a crash-safe order).
    fn store(&self, old: &BootState, new: &BootState) -> Result<(), SlotError>;
    /// Reboots (the file backend emulates the firmware instead).
    fn restart(&self) -> Result<(), SlotError>;
}

/// Loads, applies `change`, stores the result if it differs, all under the lock.
pub(crate) fn update_env(
    env: &impl BootEnv,
    change: impl FnOnce(&BootState) -> Result<BootState, SlotError>,
) -> Result<(), SlotError> {
    let _guard = env
        .lock()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let old = env.load()?;
    let new = change(&old)?;
    if new != old {
        env.store(&old, &new)?;
    }
    Ok(())
}

impl<T: BootEnv> Bootloader for T {
    fn read(&self) -> Result<BootState, SlotError> {
        let _guard = self
            .lock()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.load()
    }

    fn arm_try(&self, slot: SlotName, tries: u32) -> Result<(), SlotError> {
        update_env(self, |state| rules::arm_try(state, slot, tries))
    }

    fn confirm(&self, slot: SlotName) -> Result<(), SlotError> {
        update_env(self, |state| rules::confirm(state, slot))
    }

    fn abandon(&self) -> Result<(), SlotError> {
        update_env(self, |state| Ok(rules::abandon(state)))
    }

    fn set_active(&self, slot: SlotName) -> Result<(), SlotError> {
        update_env(self, |state| Ok(rules::set_active(state, slot)))
    }

    fn reboot(&self) -> Result<(), SlotError> {
        self.restart()
    }
}

pub mod rules {
    use super::{BootState, SlotError, SlotName};

    /// Arms a try of the inactive slot. Trying the active slot or zero boots is a bug in
    /// the caller, refused so that it cannot silently do nothing.
    pub fn arm_try(state: &BootState, slot: SlotName, tries: u32) -> Result<BootState, SlotError> {
        if slot == state.active {
            return Err(SlotError::TryOfActiveSlot { slot });
        }
        if tries == 0 {
            return Err(SlotError::ZeroTries { slot });
        }
        Ok(BootState {
            trying: Some(slot),
            tries_left: tries,
            ..state.clone()
        })
    }

    /// Commits the booted slot. Only the slot the system is running from can be
    /// confirmed: confirming anything else would commit an image nobody saw boot.
    /// Confirming the slot that is already active and running is a no-op (a restart
    /// after a confirm that was not yet journaled).
    pub fn confirm(state: &BootState, slot: SlotName) -> Result<BootState, SlotError> {
        if state.booted != slot {
            return Err(SlotError::ConfirmNotBooted {
                slot,
                booted: state.booted,
            });
        }
        if state.active != slot && state.trying != Some(slot) {
            return Err(SlotError::ConfirmNotTried {
                slot,
                active: state.active,
            });
        }
        Ok(BootState {
            active: slot,
            trying: None,
            tries_left: 0,
            booted: state.booted,
        })
    }

    /// Clears any armed try.
    pub fn abandon(state: &BootState) -> BootState {
        BootState {
            trying: None,
            tries_left: 0,
            ..state.clone()
        }
    }

    /// Makes `slot` the committed slot and clears any armed try.
    pub fn set_active(state: &BootState, slot: SlotName) -> BootState {
        BootState {
            active: slot,
            trying: None,
            tries_left: 0,
            booted: state.booted,
        }
    }
}

/// The two slots' devices or files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotPaths {
    pub a: PathBuf,
    pub b: PathBuf,
}

impl SlotPaths {
    pub fn path(&self, slot: SlotName) -> &Path {
        match slot {
            SlotName::A => &self.a,
            SlotName::B => &self.b,
        }
    }
}

/// Why a bootloader operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("reading the boot env file {path}")]
    ReadEnvFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the boot env file {path} is corrupt")]
    CorruptEnvFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("writing the boot env file")]
    WriteEnvFile(#[source] crate::trust_store::TrustStoreError),
    #[error("running `{command}`")]
    SpawnTool {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    ToolFailed {
        command: String,
        status: std::process::ExitStatus,
        stdout: String,
        stderr: String,
    },
    #[error("`{command}` printed output that is not `name=value` lines: {line:?}")]
    ToolOutput { command: String, line: String },
    #[error("bootloader variable {variable} holds {value:?}, expected {expected}")]
    InvalidVariable {
        variable: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("reading the kernel command line {path}")]
    ReadCmdline {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the kernel command line {path} has no valid `ota.slot=a|b` ({cmdline:?})")]
    NoBootedSlot { path: PathBuf, cmdline: String },
    #[error("refusing to arm a try of slot {slot}: it is the active slot")]
    TryOfActiveSlot { slot: SlotName },
    #[error("refusing to arm a try of slot {slot} with 0 boots")]
    ZeroTries { slot: SlotName },
    #[error("cannot confirm slot {slot}: the system booted from slot {booted}")]
    ConfirmNotBooted { slot: SlotName, booted: SlotName },
    #[error("cannot confirm slot {slot}: it is neither active ({active}) nor being tried")]
    ConfirmNotTried { slot: SlotName, active: SlotName },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slot() -> impl Strategy<Value = SlotName> {
        prop_oneof![Just(SlotName::A), Just(SlotName::B)]
    }

    fn state() -> impl Strategy<Value = BootState> {
        (slot(), proptest::option::of(slot()), 0u32..5, slot()).prop_map(
            |(active, trying, tries_left, booted)| BootState {
                active,
                trying,
                tries_left,
                booted,
            },
        )
    }

    #[test]
    fn slot_names_round_trip_and_nothing_else_parses() {
        for slot in [SlotName::A, SlotName::B] {
            assert_eq!(SlotName::parse(slot.as_str()), Some(slot));
            assert_eq!(slot.other().other(), slot);
            assert_ne!(slot.other(), slot);
            assert_eq!(
                serde_json::to_string(&slot).unwrap(),
                format!("\"{}\"", slot.as_str())
            );
        }
        for bad in ["", "A", "B", "c", "a ", " b", "ab"] {
            assert_eq!(SlotName::parse(bad), None, "{bad:?} must not parse");
        }
    }

    /// The firmware rule, one row per case.
    #[test]
    fn firmware_boot_table() {
        use SlotName::{A, B};
        let s = |active, trying, tries_left, booted| BootState {
            active,
            trying,
            tries_left,
            booted,
        };
        let rows = [
            (
                "nothing armed boots active",
                s(A, None, 0, A),
                s(A, None, 0, A),
            ),
            (
                "stale counter without try",
                s(B, None, 3, A),
                s(B, None, 0, B),
            ),
            (
                "try with boots left",
                s(A, Some(B), 2, A),
                s(A, Some(B), 1, B),
            ),
            ("last try boot", s(A, Some(B), 1, A), s(A, Some(B), 0, B)),
            (
                "try exhausted falls back",
                s(A, Some(B), 0, B),
                s(A, None, 0, A),
            ),
        ];
        for (name, before, after) in rows {
            assert_eq!(firmware_boot(&before), after, "{name}");
        }
    }

    proptest! {
        /// A try that never confirms boots the try slot exactly `tries` times, then the
        /// active slot for good; the active slot never changes on the way.
        #[test]
        fn unconfirmed_try_falls_back_after_its_tries(active in slot(), tries in 1u32..20, extra in 1usize..10) {
            let armed = rules::arm_try(&BootState { active, trying: None, tries_left: 0, booted: active }, active.other(), tries).unwrap();
            let mut state = armed;
            let mut booted = Vec::new();
            for _ in 0..(tries as usize + extra) {
                state = firmware_boot(&state);
                prop_assert_eq!(state.active, active, "firmware never moves the active slot");
                booted.push(state.booted);
            }
            let expected: Vec<SlotName> = std::iter::repeat_n(active.other(), tries as usize)
                .chain(std::iter::repeat_n(active, extra))
                .collect();
            prop_assert_eq!(booted, expected);
            prop_assert_eq!(state.trying, None);
        }

        /// From any env state and any sequence of bootloader operations and boots, the
        /// firmware boots either the active slot or an armed try with boots left, and a
        /// try ends (boots the active slot) after a bounded number of boots without any
        /// further operation.
        #[test]
        fn active_slot_is_always_the_fallback(start in state(), ops in proptest::collection::vec((0u8..5, slot(), 1u32..4), 0..30)) {
            let mut state = start;
            for (op, slot, tries) in ops {
                let next = match op {
                    0 => rules::arm_try(&state, slot, tries).ok(),
                    1 => rules::confirm(&state, slot).ok(),
                    2 => Some(rules::abandon(&state)),
                    3 => Some(rules::set_active(&state, slot)),
                    _ => Some(firmware_boot(&state)),
                };
                if let Some(next) = next {
                    if op == 4 {
                        let tried = state.trying.filter(|_| state.tries_left > 0);
                        prop_assert!(next.booted == state.active || Some(next.booted) == tried);
                    }
                    state = next;
                }
            }
            let bound = state.tries_left as usize + 1;
            for _ in 0..bound {
                state = firmware_boot(&state);
            }
            prop_assert_eq!(state.booted, state.active);
            prop_assert_eq!(state.trying, None);
        }
    }

    #[test]
    fn rules_refuse_what_would_make_no_sense() {
        let running_a = BootState::initial();
        assert!(matches!(
            rules::arm_try(&running_a, SlotName::A, 1),
            Err(SlotError::TryOfActiveSlot { slot: SlotName::A })
        ));
        assert!(matches!(
            rules::arm_try(&running_a, SlotName::B, 0),
            Err(SlotError::ZeroTries { .. })
        ));
        let armed = rules::arm_try(&running_a, SlotName::B, 1).unwrap();
        assert!(
            matches!(
                rules::confirm(&armed, SlotName::B),
                Err(SlotError::ConfirmNotBooted {
                    booted: SlotName::A,
                    ..
                })
            ),
            "a try cannot be confirmed before it booted"
        );
        let booted_b = firmware_boot(&armed);
        let confirmed = rules::confirm(&booted_b, SlotName::B).unwrap();
        assert_eq!(
            confirmed,
            BootState {
                active: SlotName::B,
                trying: None,
                tries_left: 0,
                booted: SlotName::B
            }
        );
        assert_eq!(rules::confirm(&confirmed, SlotName::B).unwrap(), confirmed);
    }
}
