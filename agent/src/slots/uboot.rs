//! U-Boot: the env is read with `fw_printenv -n <var>` and written with
//! `fw_setenv <var> <value>` (`fw_setenv <var>` deletes), from u-boot-tools or
//! libubootenv. The slot the system booted from is the kernel command line's
//! `ota.slot=` key.
//!
//! The boot script that goes with it (U-Boot's `test` compares numbers with `-gt`;
//! `setexpr` prints hex, which equals decimal for the agent's counts below 10):
//!
//! ```text
//! if test -z "${ota_active}"; then setenv ota_active a; fi
//! setenv ota_boot ${ota_active}
//! if test -n "${ota_try}"; then
//!     if test ${ota_tries} -gt 0; then
//!         setexpr ota_tries ${ota_tries} - 1; setenv ota_boot ${ota_try}
//!     else
//!         setenv ota_try
//!     fi
//!     saveenv
//! fi
//! setenv bootargs "${bootargs} ota.slot=${ota_boot}"
//! ```
//!
//! `fw_setenv` writes one variable per call (each call is atomic with a redundant env),
//! so the calls of one operation are ordered such that a power cut between two of them
//! boots the old choice or the new one (see `tool::changes`).

use super::tool::{self, EnvValues, ACTIVE, TRIES, TRY};
use super::{BootEnv, BootState, SlotError};
use std::path::PathBuf;
use std::sync::Mutex;

/// Where the U-Boot env tools, the kernel command line and the reboot command are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UBootConfig {
    pub fw_printenv: PathBuf,
    pub fw_setenv: PathBuf,
    /// Kernel command line holding `ota.slot=a|b` (default `/proc/cmdline`).
    pub cmdline: PathBuf,
    /// The reboot command, argv form (default `reboot`).
    pub reboot: Vec<String>,
}

impl Default for UBootConfig {
    fn default() -> Self {
        UBootConfig {
            fw_printenv: PathBuf::from("fw_printenv"),
            fw_setenv: PathBuf::from("fw_setenv"),
            cmdline: PathBuf::from("/proc/cmdline"),
            reboot: vec!["reboot".to_owned()],
        }
    }
}

#[derive(Debug)]
pub struct UBootBootloader {
    config: UBootConfig,
    lock: Mutex<()>,
}

impl UBootBootloader {
    pub fn new(config: UBootConfig) -> UBootBootloader {
        UBootBootloader {
            config,
            lock: Mutex::new(()),
        }
    }

    /// One variable; `None` when it is not defined. u-boot-tools report an undefined
    /// variable on stderr with a non-zero exit, libubootenv with an empty line: both
    /// mean unset. Any other failure is the tool's.
    fn get(&self, name: &str) -> Result<Option<String>, SlotError> {
        let args = ["-n".to_owned(), name.to_owned()];
        match tool::run(&self.config.fw_printenv, &args) {
            Ok(stdout) => {
                let value = stdout.strip_suffix('\n').unwrap_or(&stdout);
                Ok((!value.is_empty()).then(|| value.to_owned()))
            }
            Err(SlotError::ToolFailed { stderr, .. }) if is_not_defined(&stderr, name) => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn load_env(&self) -> Result<BootState, SlotError> {
        let values = EnvValues {
            active: self.get(ACTIVE)?,
            trying: self.get(TRY)?,
            tries: self.get(TRIES)?,
        };
        tool::to_state(&values, tool::booted_slot(&self.config.cmdline)?)
    }

    fn store_changes(&self, old: &BootState, new: &BootState) -> Result<(), SlotError> {
        for (name, value) in tool::changes(old, new) {
            let mut args = vec![name.to_owned()];
            args.extend(value);
            tool::run(&self.config.fw_setenv, &args)?;
        }
        Ok(())
    }
}

/// u-boot-tools' message for an undefined variable: `## Error: "<name>" not defined`.
fn is_not_defined(stderr: &str, name: &str) -> bool {
    stderr
        .lines()
        .any(|line| line.trim() == format!("## Error: \"{name}\" not defined"))
}

impl BootEnv for UBootBootloader {
    fn lock(&self) -> &Mutex<()> {
        &self.lock
    }

    fn load(&self) -> Result<BootState, SlotError> {
        self.load_env()
    }

    fn store(&self, old: &BootState, new: &BootState) -> Result<(), SlotError> {
        self.store_changes(old, new)
    }

    fn restart(&self) -> Result<(), SlotError> {
        tool::run_argv(&self.config.reboot).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::firmware_boot;
    use crate::slots::{Bootloader, SlotName};
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    /// Fakes of u-boot-tools' `fw_printenv`/`fw_setenv` over a `name=value` file, with
    /// their CLI, output and error messages; a `fail` file in the directory makes both
    /// fail as they do when the env device cannot be opened. Every call is logged.
    struct FakeUBoot {
        dir: tempfile::TempDir,
    }

    impl FakeUBoot {
        fn new() -> FakeUBoot {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().display();
            let fail = format!(
                "if [ -e '{d}/fail' ]; then echo 'Cannot access MTD device /dev/mtd1: No such file or directory' >&2; exit 1; fi\n\
                 echo \"$0 $*\" >> '{d}/calls'\n\
                 ENV='{d}/uboot.env'; touch \"$ENV\"\n"
            );
            script(
                &dir.path().join("fw_printenv"),
                &format!(
                    "{fail}\
                     if [ \"$1\" = -n ]; then\n\
                       shift\n\
                       if [ $# -ne 1 ]; then echo \"## Error: \\`-n' option requires exactly one argument\" >&2; exit 1; fi\n\
                     fi\n\
                     if [ $# -eq 0 ]; then cat \"$ENV\"; exit 0; fi\n\
                     line=$(grep -m1 \"^$1=\" \"$ENV\") || {{ echo \"## Error: \\\"$1\\\" not defined\" >&2; exit 1; }}\n\
                     printf '%s\\n' \"${{line#*=}}\"\n"
                ),
            );
            script(
                &dir.path().join("fw_setenv"),
                &format!(
                    "{fail}\
                     if [ $# -lt 1 ]; then echo 'Usage: fw_setenv [OPTION]... NAME [VALUE]' >&2; exit 1; fi\n\
                     name=$1; shift\n\
                     grep -v \"^$name=\" \"$ENV\" > \"$ENV.new\"\n\
                     if [ $# -gt 0 ]; then printf '%s=%s\\n' \"$name\" \"$*\" >> \"$ENV.new\"; fi\n\
                     mv \"$ENV.new\" \"$ENV\"\n"
                ),
            );
            script(
                &dir.path().join("reboot"),
                &format!("{fail}echo rebooted >> '{d}/reboots'\n"),
            );
            std::fs::write(
                dir.path().join("cmdline"),
                "console=ttyS0 ota.slot=a rootwait\n",
            )
            .unwrap();
            FakeUBoot { dir }
        }

        fn bootloader(&self) -> UBootBootloader {
            let d = self.dir.path();
            UBootBootloader::new(UBootConfig {
                fw_printenv: d.join("fw_printenv"),
                fw_setenv: d.join("fw_setenv"),
                cmdline: d.join("cmdline"),
                reboot: vec![d.join("reboot").display().to_string()],
            })
        }

        fn env(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("uboot.env")).unwrap_or_default()
        }

        fn calls(&self) -> Vec<String> {
            std::fs::read_to_string(self.dir.path().join("calls"))
                .unwrap_or_default()
                .lines()
                .filter(|line| line.contains("fw_setenv"))
                .map(|line| line.split_once(' ').unwrap().1.to_owned())
                .collect()
        }

        /// What U-Boot does at power-on with the boot script above: the env after the
        /// script, and `ota.slot=` on the kernel command line.
        fn power_cycle(&self, boot: &UBootBootloader) {
            let next = firmware_boot(&boot.read().unwrap());
            let mut env = format!("ota_active={}\n", next.active);
            if let Some(slot) = next.trying {
                env.push_str(&format!("ota_try={slot}\n"));
            }
            env.push_str(&format!("ota_tries={}\n", next.tries_left));
            std::fs::write(self.dir.path().join("uboot.env"), env).unwrap();
            std::fs::write(
                self.dir.path().join("cmdline"),
                format!("console=ttyS0 ota.slot={} rootwait\n", next.booted),
            )
            .unwrap();
        }
    }

    fn script(path: &Path, body: &str) {
        std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn an_empty_env_reads_as_slot_a() {
        let fake = FakeUBoot::new();
        assert_eq!(fake.bootloader().read().unwrap(), BootState::initial());
    }

    #[test]
    fn try_boot_confirm_cycle_through_the_tools() {
        let fake = FakeUBoot::new();
        let boot = fake.bootloader();
        boot.arm_try(SlotName::B, 2).unwrap();
        assert_eq!(
            fake.calls(),
            ["ota_tries 2", "ota_try b"],
            "counter before slot"
        );
        assert_eq!(fake.env(), "ota_tries=2\nota_try=b\n");

        fake.power_cycle(&boot);
        let state = boot.read().unwrap();
        assert_eq!(
            (state.booted, state.trying, state.tries_left),
            (SlotName::B, Some(SlotName::B), 1)
        );
        boot.confirm(SlotName::B).unwrap();
        assert_eq!(
            fake.calls()[2..],
            ["ota_active b", "ota_try", "ota_tries 0"],
            "active before the try is cleared"
        );
        fake.power_cycle(&boot);
        assert_eq!(
            boot.read().unwrap(),
            BootState {
                active: SlotName::B,
                trying: None,
                tries_left: 0,
                booted: SlotName::B
            }
        );
        // Server rollback to the previous slot.
        boot.set_active(SlotName::A).unwrap();
        fake.power_cycle(&boot);
        assert_eq!(boot.read().unwrap().booted, SlotName::A);
    }

    #[test]
    fn an_unconfirmed_try_falls_back_and_abandon_clears_it() {
        let fake = FakeUBoot::new();
        let boot = fake.bootloader();
        boot.arm_try(SlotName::B, 1).unwrap();
        fake.power_cycle(&boot);
        assert_eq!(boot.read().unwrap().booted, SlotName::B);
        fake.power_cycle(&boot);
        assert_eq!(
            boot.read().unwrap().booted,
            SlotName::A,
            "the counter ran out"
        );

        boot.arm_try(SlotName::B, 3).unwrap();
        boot.abandon().unwrap();
        assert!(
            !fake.env().contains("ota_try="),
            "abandon deletes ota_try: {}",
            fake.env()
        );
        fake.power_cycle(&boot);
        assert_eq!(boot.read().unwrap().booted, SlotName::A);
    }

    #[test]
    fn failing_tools_and_bad_values_are_typed_errors() {
        let fake = FakeUBoot::new();
        let boot = fake.bootloader();
        std::fs::write(fake.dir.path().join("uboot.env"), "ota_active=x\n").unwrap();
        assert!(matches!(
            boot.read(),
            Err(SlotError::InvalidVariable {
                variable: "ota_active",
                ..
            })
        ));

        std::fs::write(fake.dir.path().join("uboot.env"), "").unwrap();
        std::fs::write(fake.dir.path().join("fail"), "").unwrap();
        for (what, result) in [
            ("read", boot.read().map(drop)),
            ("arm", boot.arm_try(SlotName::B, 1)),
            ("reboot", boot.reboot()),
        ] {
            match result {
                Err(SlotError::ToolFailed {
                    command, stderr, ..
                }) => {
                    assert!(
                        stderr.contains("Cannot access MTD device"),
                        "{what}: {stderr}"
                    );
                    assert!(
                        command.contains(fake.dir.path().to_str().unwrap()),
                        "{what}: {command}"
                    );
                }
                other => panic!("{what}: a failing tool must be ToolFailed, got {other:?}"),
            }
        }
        assert_eq!(fake.env(), "", "nothing was written");

        let missing = UBootBootloader::new(UBootConfig {
            fw_printenv: fake.dir.path().join("no-such-tool"),
            ..UBootConfig::default()
        });
        assert!(matches!(missing.read(), Err(SlotError::SpawnTool { .. })));
    }

    #[test]
    fn reboot_runs_the_configured_command() {
        let fake = FakeUBoot::new();
        fake.bootloader().reboot().unwrap();
        assert_eq!(
            std::fs::read_to_string(fake.dir.path().join("reboots")).unwrap(),
            "rebooted\n"
        );
    }

    #[test]
    fn a_missing_ota_slot_on_the_command_line_is_an_error() {
        let fake = FakeUBoot::new();
        std::fs::write(fake.dir.path().join("cmdline"), "console=ttyS0\n").unwrap();
        assert!(matches!(
            fake.bootloader().read(),
            Err(SlotError::NoBootedSlot { .. })
        ));
    }
}
