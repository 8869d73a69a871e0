//! Shared by the U-Boot and GRUB bootloaders: running their env tools, turning the
//! three variables into a [`BootState`] and back, reading `ota.slot=` from the kernel
//! command line.

use super::{BootState, SlotError, SlotName};
use std::path::Path;
use std::process::Command;

pub(super) const ACTIVE: &str = "ota_active";
pub(super) const TRY: &str = "ota_try";
pub(super) const TRIES: &str = "ota_tries";

/// The env variables' values as the tool reports them; `None` is unset.
#[derive(Debug, Default)]
pub(super) struct EnvValues {
    pub active: Option<String>,
    pub trying: Option<String>,
    pub tries: Option<String>,
}

/// The env as a [`BootState`]. Unset or empty `ota_active` is `a` (a fresh board's
/// default env; the boot script treats it the same way), unset or empty `ota_try` is no
/// try, unset or empty `ota_tries` is 0. Any other value that is not exactly valid is
/// refused rather than guessed at.
pub(super) fn to_state(values: &EnvValues, booted: SlotName) -> Result<BootState, SlotError> {
    let slot = |variable: &'static str, value: &Option<String>| match value.as_deref() {
        None | Some("") => Ok(None),
        Some(text) => SlotName::parse(text)
            .map(Some)
            .ok_or_else(|| SlotError::InvalidVariable {
                variable,
                value: text.to_owned(),
                expected: "`a` or `b`",
            }),
    };
    let active = slot(ACTIVE, &values.active)?.unwrap_or(SlotName::A);
    let trying = slot(TRY, &values.trying)?;
    let tries_left = match values.tries.as_deref() {
        None | Some("") => 0,
        Some(text) => parse_decimal(text).ok_or_else(|| SlotError::InvalidVariable {
            variable: TRIES,
            value: text.to_owned(),
            expected: "a decimal boot count",
        })?,
    };
    Ok(BootState {
        active,
        trying,
        tries_left,
        booted,
    })
}

fn parse_decimal(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// One variable change: `Some(value)` sets, `None` clears.
pub(super) type Change = (&'static str, Option<String>);

/// The variable changes that take the env from `old` to `new`, in a crash-safe order for
/// tools that write one variable per call:
/// - the counter before the try slot, so a half-written arm is a counter without a try,
///   which the firmware ignores;
/// - the active slot before the try is cleared, so a half-written confirm boots the
///   new slot either way (active, or a try of it);
/// - but a try is cleared before the active slot moves to another slot (a rollback), so
///   a half-written rollback never tries a slot the agent gave up on.
pub(super) fn changes(old: &BootState, new: &BootState) -> Vec<Change> {
    let active = (new.active != old.active).then(|| (ACTIVE, Some(new.active.as_str().to_owned())));
    let trying =
        (new.trying != old.trying).then(|| (TRY, new.trying.map(|slot| slot.as_str().to_owned())));
    let tries =
        (new.tries_left != old.tries_left).then(|| (TRIES, Some(new.tries_left.to_string())));
    let order = if new.trying.is_some() {
        [tries, trying, active]
    } else if old.trying == Some(new.active) {
        [active, trying, tries]
    } else {
        [trying, tries, active]
    };
    order.into_iter().flatten().collect()
}

/// Runs a tool and returns its stdout; a non-zero exit is [`SlotError::ToolFailed`]
/// with both outputs.
pub(super) fn run(program: &Path, args: &[String]) -> Result<String, SlotError> {
    let command = render(program, args);
    let output = spawn_output(program, args).map_err(|source| SlotError::SpawnTool {
        command: command.clone(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(SlotError::ToolFailed {
            command,
            status: output.status,
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr)
                .trim_end()
                .to_owned(),
        });
    }
    Ok(stdout)
}

/// Spawns `program` and collects its output. "Text file busy" (`ETXTBSY`) is transient:
/// the executable was just written (a tool update, or another thread of this process
/// forked while holding it open for writing), so it is retried a few times.
fn spawn_output(program: &Path, args: &[String]) -> std::io::Result<std::process::Output> {
    let mut attempt = 0;
    loop {
        match Command::new(program).args(args).output() {
            Err(err) if err.kind() == std::io::ErrorKind::ExecutableFileBusy && attempt < 20 => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            other => return other,
        }
    }
}

/// Runs a configured command line (argv), e.g. the reboot command.
pub(super) fn run_argv(argv: &[String]) -> Result<String, SlotError> {
    match argv.split_first() {
        Some((program, args)) => run(Path::new(program), args),
        None => Err(SlotError::SpawnTool {
            command: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
        }),
    }
}

pub(super) fn render(program: &Path, args: &[String]) -> String {
    std::iter::once(program.display().to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The slot the running system booted from: the `ota.slot=` key of the kernel command
/// line, which the boot script passes.
pub(super) fn booted_slot(cmdline_path: &Path) -> Result<SlotName, SlotError> {
    let cmdline =
        std::fs::read_to_string(cmdline_path).map_err(|source| SlotError::ReadCmdline {
            path: cmdline_path.to_owned(),
            source,
        })?;
    let mut found = None;
    for word in cmdline.split_ascii_whitespace() {
        if let Some(value) = word.strip_prefix("ota.slot=") {
            // The kernel honours the last occurrence of a parameter; so do we.
            found = Some(SlotName::parse(value));
        }
    }
    match found {
        Some(Some(slot)) => Ok(slot),
        _ => Err(SlotError::NoBootedSlot {
            path: cmdline_path.to_owned(),
            cmdline: cmdline.trim_end().to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::{firmware_boot, rules};

    fn apply(state: &BootState, changes: &[Change]) -> BootState {
        let mut values = EnvValues {
            active: Some(state.active.as_str().to_owned()),
            trying: state.trying.map(|s| s.as_str().to_owned()),
            tries: Some(state.tries_left.to_string()),
        };
        for (name, value) in changes {
            let slot = match *name {
                ACTIVE => &mut values.active,
                TRY => &mut values.trying,
                _ => &mut values.tries,
            };
            *slot = value.clone();
        }
        to_state(&values, state.booted).unwrap()
    }

    /// Every prefix of every operation's changes (a power cut between two tool calls)
    /// boots either the old or the new intended slot, never a slot nobody chose.
    #[test]
    fn every_partial_write_boots_the_old_or_the_new_choice() {
        use SlotName::{A, B};
        let running_a = BootState::initial();
        let armed = rules::arm_try(&running_a, B, 3).unwrap();
        let booted_b = firmware_boot(&armed);
        let committed_b = rules::confirm(&booted_b, B).unwrap();
        let cases = [
            ("arm", running_a.clone(), armed.clone()),
            ("confirm", booted_b.clone(), committed_b.clone()),
            ("abandon", booted_b.clone(), rules::abandon(&booted_b)),
            (
                "rollback",
                committed_b.clone(),
                rules::set_active(&committed_b, A),
            ),
            (
                "rollback during try",
                booted_b.clone(),
                rules::set_active(&booted_b, A),
            ),
        ];
        for (name, old, new) in cases {
            let changes = changes(&old, &new);
            assert_eq!(
                apply(&old, &changes),
                new,
                "{name}: all changes give the new state"
            );
            let old_boot = firmware_boot(&old).booted;
            let new_boot = firmware_boot(&new).booted;
            for cut in 0..changes.len() {
                let partial = apply(&old, &changes[..cut]);
                let boot = firmware_boot(&partial).booted;
                assert!(
                    boot == old_boot || boot == new_boot,
                    "{name}: cut after {cut} changes boots {boot}, neither {old_boot} nor {new_boot}"
                );
            }
        }
    }

    #[test]
    fn env_values_are_parsed_strictly() {
        let booted = SlotName::A;
        let v = |a: Option<&str>, t: Option<&str>, n: Option<&str>| EnvValues {
            active: a.map(str::to_owned),
            trying: t.map(str::to_owned),
            tries: n.map(str::to_owned),
        };
        assert_eq!(
            to_state(&v(None, None, None), booted).unwrap(),
            BootState::initial()
        );
        assert_eq!(
            to_state(&v(Some("b"), Some(""), Some("")), booted)
                .unwrap()
                .active,
            SlotName::B
        );
        for (values, variable) in [
            (v(Some("c"), None, None), ACTIVE),
            (v(None, Some("B"), None), TRY),
            (v(None, Some("a"), Some("-1")), TRIES),
            (v(None, Some("a"), Some("3x")), TRIES),
            (v(None, Some("a"), Some("99999999999")), TRIES),
        ] {
            match to_state(&values, booted) {
                Err(SlotError::InvalidVariable { variable: v, .. }) => assert_eq!(v, variable),
                other => panic!("{values:?} must be refused for {variable}, got {other:?}"),
            }
        }
    }

    #[test]
    fn booted_slot_comes_from_the_last_ota_slot_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cmdline");
        let rows = [
            (
                "console=ttyS0 ota.slot=b root=/dev/mmcblk0p3\n",
                Some(SlotName::B),
            ),
            ("ota.slot=a ota.slot=b", Some(SlotName::B)),
            ("ota.slot=a", Some(SlotName::A)),
            ("console=ttyS0 root=/dev/sda2", None),
            ("ota.slot=c", None),
            ("xota.slot=a", None),
        ];
        for (cmdline, expected) in rows {
            std::fs::write(&path, cmdline).unwrap();
            match (booted_slot(&path), expected) {
                (Ok(slot), Some(expected)) => assert_eq!(slot, expected, "{cmdline:?}"),
                (Err(SlotError::NoBootedSlot { .. }), None) => {}
                (other, _) => panic!("{cmdline:?}: unexpected {other:?}"),
            }
        }
    }
}
