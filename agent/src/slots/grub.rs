//! GRUB: the env block is read with `grub-editenv <envfile> list` and written with
//! `grub-editenv <envfile> set name=value...`. The slot the system booted from is the
//! kernel command line's `ota.slot=` key.
//!
//! A variable the agent clears is set to the empty string, which the boot script treats
//! as unset; so every operation is a single `set` call, one write of the env block, and
//! a power cut leaves the old env or the new one. GRUB's script has no arithmetic, so
//! the counter is stepped by comparison (this script allows up to 3 tries):
//!
//! ```text
//! load_env ota_active ota_try ota_tries
//! if [ -z "${ota_active}" ]; then set ota_active=a; fi
//! set ota_boot="${ota_active}"
//! if [ -n "${ota_try}" ]; then
//!     if   [ "${ota_tries}" = 3 ]; then set ota_tries=2; set ota_boot="${ota_try}"
//!     elif [ "${ota_tries}" = 2 ]; then set ota_tries=1; set ota_boot="${ota_try}"
//!     elif [ "${ota_tries}" = 1 ]; then set ota_tries=0; set ota_boot="${ota_try}"
//!     else set ota_try=; fi
//!     save_env ota_try ota_tries
//! fi
//! linux /slot-${ota_boot}/vmlinuz root=PARTLABEL=slot_${ota_boot} ota.slot=${ota_boot}
//! ```

use super::tool::{self, EnvValues, ACTIVE, TRIES, TRY};
use super::{BootEnv, BootState, SlotError};
use std::path::PathBuf;
use std::sync::Mutex;

/// Where `grub-editenv`, the env block, the kernel command line and the reboot command are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrubConfig {
    pub grub_editenv: PathBuf,
    /// The env block (default `/boot/grub/grubenv`).
    pub env_file: PathBuf,
    /// Kernel command line holding `ota.slot=a|b` (default `/proc/cmdline`).
    pub cmdline: PathBuf,
    /// The reboot command, argv form (default `reboot`).
    pub reboot: Vec<String>,
}

impl Default for GrubConfig {
    fn default() -> Self {
        GrubConfig {
            grub_editenv: PathBuf::from("grub-editenv"),
            env_file: PathBuf::from("/boot/grub/grubenv"),
            cmdline: PathBuf::from("/proc/cmdline"),
            reboot: vec!["reboot".to_owned()],
        }
    }
}

#[derive(Debug)]
pub struct GrubBootloader {
    config: GrubConfig,
    lock: Mutex<()>,
}

impl GrubBootloader {
    pub fn new(config: GrubConfig) -> GrubBootloader {
        GrubBootloader {
            config,
            lock: Mutex::new(()),
        }
    }

    fn editenv(&self, verb: &str, rest: Vec<String>) -> Result<String, SlotError> {
        let mut args = vec![self.config.env_file.display().to_string(), verb.to_owned()];
        args.extend(rest);
        tool::run(&self.config.grub_editenv, &args)
    }

    fn load_env(&self) -> Result<BootState, SlotError> {
        let listing = self.editenv("list", Vec::new())?;
        let mut values = EnvValues::default();
        for line in listing.lines() {
            let Some((name, value)) = line.split_once('=') else {
                return Err(SlotError::ToolOutput {
                    command: tool::render(
                        &self.config.grub_editenv,
                        &[
                            self.config.env_file.display().to_string(),
                            "list".to_owned(),
                        ],
                    ),
                    line: line.to_owned(),
                });
            };
            let slot = match name {
                ACTIVE => &mut values.active,
                TRY => &mut values.trying,
                TRIES => &mut values.tries,
                _ => continue,
            };
            *slot = Some(value.to_owned());
        }
        tool::to_state(&values, tool::booted_slot(&self.config.cmdline)?)
    }

    fn store_changes(&self, old: &BootState, new: &BootState) -> Result<(), SlotError> {
        let assignments: Vec<String> = tool::changes(old, new)
            .into_iter()
            .map(|(name, value)| format!("{name}={}", value.unwrap_or_default()))
            .collect();
        if !assignments.is_empty() {
            self.editenv("set", assignments)?;
        }
        Ok(())
    }
}

impl BootEnv for GrubBootloader {
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

    /// A fake `grub-editenv` with the real CLI (`FILE create|list|set|unset`), the env
    /// block format (`# GRUB Environment Block` header, `name=value` lines, `#` padding
    /// to 1024 bytes) and its error message for a missing block. A `fail` file makes it
    /// fail as on an unreadable `/boot`.
    struct FakeGrub {
        dir: tempfile::TempDir,
    }

    impl FakeGrub {
        fn new() -> FakeGrub {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().display();
            let body = format!(
                r#"if [ -e '{d}/fail' ]; then echo "grub-editenv: error: cannot open \`$1': Input/output error." >&2; exit 1; fi
echo "$*" >> '{d}/calls'
FILE=$1; VERB=$2; shift 2
write() {{
  {{ echo '# GRUB Environment Block'; cat "$FILE.vars"; }} > "$FILE.new"
  size=$(wc -c < "$FILE.new")
  while [ "$size" -lt 1024 ]; do printf '#' >> "$FILE.new"; size=$((size + 1)); done
  mv "$FILE.new" "$FILE"; rm -f "$FILE.vars"
}}
vars() {{ grep -v '^#' "$FILE" > "$FILE.vars"; }}
case "$VERB" in
create) [ -e "$FILE" ] || {{ : > "$FILE.vars"; write; }} ;;
list|set|unset)
  if [ ! -e "$FILE" ]; then echo "grub-editenv: error: cannot open \`$FILE': No such file or directory." >&2; exit 1; fi
  vars
  case "$VERB" in
  list) cat "$FILE.vars"; rm -f "$FILE.vars" ;;
  set) for kv in "$@"; do
         case "$kv" in *=*) ;; *) echo "grub-editenv: error: invalid parameter $kv." >&2; rm -f "$FILE.vars"; exit 1 ;; esac
         grep -v "^${{kv%%=*}}=" "$FILE.vars" > "$FILE.tmp"; echo "$kv" >> "$FILE.tmp"; mv "$FILE.tmp" "$FILE.vars"
       done; write ;;
  unset) for k in "$@"; do grep -v "^$k=" "$FILE.vars" > "$FILE.tmp"; mv "$FILE.tmp" "$FILE.vars"; done; write ;;
  esac ;;
*) echo "grub-editenv: error: unrecognized command \`$VERB'." >&2; exit 1 ;;
esac
"#
            );
            let tool = dir.path().join("grub-editenv");
            std::fs::write(&tool, format!("#!/bin/sh\n{body}")).unwrap();
            std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::write(
                dir.path().join("cmdline"),
                "BOOT_IMAGE=/vmlinuz ota.slot=a\n",
            )
            .unwrap();
            let fake = FakeGrub { dir };
            fake.editenv(&["create"]);
            fake
        }

        fn editenv(&self, args: &[&str]) -> String {
            // Through the module's own runner, which retries a "Text file busy" spawn of
            // a script this process has just written.
            let mut argv = vec![self.dir.path().join("grubenv").display().to_string()];
            argv.extend(args.iter().map(|a| (*a).to_owned()));
            crate::slots::tool::run(&self.dir.path().join("grub-editenv"), &argv)
                .unwrap_or_else(|e| panic!("fake grub-editenv {args:?}: {e}"))
        }

        fn bootloader(&self) -> GrubBootloader {
            let d = self.dir.path();
            GrubBootloader::new(GrubConfig {
                grub_editenv: d.join("grub-editenv"),
                env_file: d.join("grubenv"),
                cmdline: d.join("cmdline"),
                reboot: vec!["true".to_owned()],
            })
        }

        fn sets(&self) -> Vec<String> {
            std::fs::read_to_string(self.dir.path().join("calls"))
                .unwrap()
                .lines()
                .filter_map(|line| line.split_once(" set ").map(|(_, rest)| rest.to_owned()))
                .collect()
        }

        /// What GRUB does at power-on with the script above.
        fn power_cycle(&self, boot: &GrubBootloader) {
            let next = firmware_boot(&boot.read().unwrap());
            let tries = format!("ota_tries={}", next.tries_left);
            let trying = format!("ota_try={}", next.trying.map_or("", |s| s.as_str()));
            self.editenv(&["set", &trying, &tries]);
            std::fs::write(
                self.dir.path().join("cmdline"),
                format!("BOOT_IMAGE=/vmlinuz ota.slot={}\n", next.booted),
            )
            .unwrap();
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    #[test]
    fn the_fake_keeps_grubs_block_format() {
        let fake = FakeGrub::new();
        fake.editenv(&["set", "ota_active=b", "other=x"]);
        fake.editenv(&["unset", "other"]);
        let block = std::fs::read_to_string(fake.path().join("grubenv")).unwrap();
        assert_eq!(block.len(), 1024);
        assert!(block.starts_with("# GRUB Environment Block\nota_active=b\n#"));
        assert_eq!(fake.editenv(&["list"]), "ota_active=b\n");
    }

    #[test]
    fn try_boot_confirm_cycle_in_one_set_per_operation() {
        let fake = FakeGrub::new();
        let boot = fake.bootloader();
        assert_eq!(boot.read().unwrap(), BootState::initial());
        boot.arm_try(SlotName::B, 3).unwrap();
        assert_eq!(fake.sets(), ["ota_tries=3 ota_try=b"]);

        fake.power_cycle(&boot);
        let state = boot.read().unwrap();
        assert_eq!((state.booted, state.tries_left), (SlotName::B, 2));
        boot.confirm(SlotName::B).unwrap();
        assert_eq!(
            fake.sets().last().unwrap(),
            "ota_active=b ota_try= ota_tries=0"
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
    }

    #[test]
    fn an_unconfirmed_try_falls_back_through_the_counter() {
        let fake = FakeGrub::new();
        let boot = fake.bootloader();
        boot.arm_try(SlotName::B, 2).unwrap();
        let booted: Vec<SlotName> = (0..4)
            .map(|_| {
                fake.power_cycle(&boot);
                boot.read().unwrap().booted
            })
            .collect();
        assert_eq!(booted, [SlotName::B, SlotName::B, SlotName::A, SlotName::A]);
    }

    #[test]
    fn failing_tool_and_missing_block_are_typed_errors() {
        let fake = FakeGrub::new();
        let boot = fake.bootloader();
        std::fs::remove_file(fake.path().join("grubenv")).unwrap();
        match boot.read() {
            Err(SlotError::ToolFailed { stderr, .. }) => {
                assert!(stderr.contains("No such file or directory"), "{stderr}")
            }
            other => panic!("a missing env block must be ToolFailed, got {other:?}"),
        }
        fake.editenv(&["create"]);
        std::fs::write(fake.path().join("fail"), "").unwrap();
        match boot.arm_try(SlotName::B, 1) {
            Err(SlotError::ToolFailed { stderr, .. }) => {
                assert!(stderr.contains("Input/output error"), "{stderr}")
            }
            other => panic!("a failing tool must be ToolFailed, got {other:?}"),
        }
        std::fs::remove_file(fake.path().join("fail")).unwrap();
        fake.editenv(&["set", "ota_tries=two", "ota_try=b"]);
        assert!(matches!(
            boot.read(),
            Err(SlotError::InvalidVariable {
                variable: "ota_tries",
                ..
            })
        ));
    }
}
