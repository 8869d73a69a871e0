//! The `file` bootloader: the boot env in a JSON file, for tests and the simulator.
//!
//! It stands in for the boot firmware too: [`Bootloader::reboot`] runs
//! [`firmware_boot`] on the file and returns, as if the machine had come back up.
//! Every change is one atomic write (write, fsync, rename, fsync directory), so a crash
//! leaves the old env or the new one.

use super::{firmware_boot, update_env, BootEnv, BootState, SlotError};
use crate::trust_store::write_atomically;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Boot env stored as JSON (`{"active":"a","trying":null,"tries_left":0,"booted":"a"}`).
#[derive(Debug)]
pub struct FileBootloader {
    path: PathBuf,
    /// Serializes read-modify-write cycles of this process.
    lock: Mutex<()>,
}

impl FileBootloader {
    /// The env file at `env_path`; created (slot `a` active and booted) on first use if
    /// it does not exist.
    pub fn new(env_path: impl Into<PathBuf>) -> FileBootloader {
        FileBootloader {
            path: env_path.into(),
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_file(&self) -> Result<BootState, SlotError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| SlotError::CorruptEnvFile {
                    path: self.path.clone(),
                    source,
                })
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let state = BootState::initial();
                self.write_file(&state)?;
                Ok(state)
            }
            Err(source) => Err(SlotError::ReadEnvFile {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn write_file(&self, state: &BootState) -> Result<(), SlotError> {
        let bytes = serde_json::to_vec(state).map_err(|source| SlotError::CorruptEnvFile {
            path: self.path.clone(),
            source,
        })?;
        write_atomically(&self.path, &bytes).map_err(SlotError::WriteEnvFile)
    }
}

impl BootEnv for FileBootloader {
    fn lock(&self) -> &Mutex<()> {
        &self.lock
    }

    fn load(&self) -> Result<BootState, SlotError> {
        self.read_file()
    }

    fn store(&self, _old: &BootState, new: &BootState) -> Result<(), SlotError> {
        self.write_file(new)
    }

    /// The firmware's choice, at once: the file is the firmware here.
    fn restart(&self) -> Result<(), SlotError> {
        update_env(self, |state| Ok(firmware_boot(state)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::{Bootloader, SlotName};

    #[test]
    fn a_new_env_file_starts_on_slot_a_and_persists_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootenv.json");
        let boot = FileBootloader::new(&path);
        assert_eq!(boot.read().unwrap(), BootState::initial());
        assert!(path.exists(), "the env file is created on first use");

        boot.arm_try(SlotName::B, 2).unwrap();
        // A second instance (an agent restart) sees the same env.
        let again = FileBootloader::new(&path);
        assert_eq!(again.read().unwrap().trying, Some(SlotName::B));
        again.reboot().unwrap();
        let state = boot.read().unwrap();
        assert_eq!((state.booted, state.tries_left), (SlotName::B, 1));
        boot.confirm(SlotName::B).unwrap();
        boot.reboot().unwrap();
        assert_eq!(
            boot.read().unwrap(),
            BootState {
                active: SlotName::B,
                trying: None,
                tries_left: 0,
                booted: SlotName::B
            }
        );
    }

    #[test]
    fn a_try_that_never_confirms_falls_back_through_the_counter() {
        let dir = tempfile::tempdir().unwrap();
        let boot = FileBootloader::new(dir.path().join("env.json"));
        boot.arm_try(SlotName::B, 3).unwrap();
        let mut booted = Vec::new();
        for _ in 0..5 {
            boot.reboot().unwrap();
            booted.push(boot.read().unwrap().booted);
        }
        use SlotName::{A, B};
        assert_eq!(booted, [B, B, B, A, A]);
        assert_eq!(boot.read().unwrap().active, A);
    }

    #[test]
    fn a_corrupt_env_file_is_a_typed_error_and_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env.json");
        std::fs::write(&path, b"{\"active\":\"c\"}").unwrap();
        let boot = FileBootloader::new(&path);
        assert!(matches!(boot.read(), Err(SlotError::CorruptEnvFile { .. })));
        assert!(matches!(
            boot.arm_try(SlotName::B, 1),
            Err(SlotError::CorruptEnvFile { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"active\":\"c\"}");
    }
}
