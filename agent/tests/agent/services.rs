//! Real services for the tests, and the rule for when one is missing: with `CI` or
//! `OTA_REQUIRE_SERVICES` set to `true` or `1` (any case; `deploy/test.sh` sets the
//! latter) the test fails; otherwise it prints a `SKIPPED:` line to stderr and returns,
//! keeping plain `cargo test` hermetic on a laptop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// PKCS#11 allows one initialization per process, and SoftHSM reads `SOFTHSM2_CONF`
/// when initialized: in-process token access is serialized through this lock (and every
/// in-process user finalizes the module before releasing it).
static IN_PROCESS_TOKEN: Mutex<()> = Mutex::new(());

/// Whether an environment flag's value means "on": `true` or `1`, in any case. Anything
/// else (unset, empty, `0`, `false`, `yes`) is off.
pub fn flag_is_on(value: &str) -> bool {
    let value = value.trim();
    value.eq_ignore_ascii_case("true") || value == "1"
}

/// Whether a missing service must fail the test: `CI` or `OTA_REQUIRE_SERVICES` is on.
pub fn services_required() -> bool {
    ["CI", "OTA_REQUIRE_SERVICES"]
        .into_iter()
        .any(|name| std::env::var(name).is_ok_and(|v| flag_is_on(&v)))
}

#[test]
fn service_flags_accept_true_and_one_in_any_case() {
    for on in ["true", "TRUE", "True", "tRuE", "1", " true "] {
        assert!(flag_is_on(on), "{on:?} must turn the flag on");
    }
    for off in ["", "0", "false", "FALSE", "yes", "on", "2", "truthy"] {
        assert!(!flag_is_on(off), "{off:?} must leave the flag off");
    }
}

/// Fails (when required) or reports a skip. Returns `None` to make the test return.
pub fn missing<T>(service: &str, why: &str) -> Option<T> {
    assert!(
        !services_required(),
        "{service} is required for this test but unavailable: {why}"
    );
    eprintln!("SKIPPED: {service} unavailable ({why}); run deploy/test.sh for the full suite");
    None
}

/// A fresh SoftHSM2 token in its own directory with its own `SOFTHSM2_CONF`.
pub struct SoftHsm {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub module: PathBuf,
}

pub const TOKEN: &str = "ota-vehicle";
pub const PIN: &str = "1234";

impl SoftHsm {
    pub fn new() -> Option<SoftHsm> {
        let module = std::env::var_os("OTA_TEST_PKCS11_MODULE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
        if !module.exists() {
            return missing("SoftHSM2", &format!("{} does not exist", module.display()));
        }
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let status = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                TOKEN,
                "--so-pin",
                "0000",
                "--pin",
                PIN,
            ])
            .output();
        match status {
            Ok(out) if out.status.success() => Some(SoftHsm { dir, conf, module }),
            Ok(out) => missing("SoftHSM2", &String::from_utf8_lossy(&out.stderr)),
            Err(err) => missing("SoftHSM2", &format!("softhsm2-util: {err}")),
        }
    }

    /// The PKCS#11 options of `ota-agent`, for this token.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--pkcs11-module".into(),
            self.module.display().to_string(),
            "--pkcs11-token".into(),
            TOKEN.into(),
            "--pkcs11-pin".into(),
            PIN.into(),
        ]
    }

    /// Exclusive in-process access to this token: the lock held, `SOFTHSM2_CONF` set.
    pub fn in_process(&self) -> MutexGuard<'static, ()> {
        let guard = IN_PROCESS_TOKEN.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_var("SOFTHSM2_CONF", &self.conf);
        guard
    }

    /// The in-process token configuration.
    pub fn config(&self) -> ota_agent::hsm::HsmConfig {
        ota_agent::hsm::HsmConfig {
            module: self.module.clone(),
            token_label: TOKEN.into(),
            pin: PIN.into(),
        }
    }

    /// A command with this token's `SOFTHSM2_CONF`.
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        let mut command = Command::new(program.as_ref());
        command.env("SOFTHSM2_CONF", &self.conf);
        command
    }
}
