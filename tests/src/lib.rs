//! End-to-end test helpers: locating the workspace's real binaries, real services as
//! child processes (`process`), reading `/metrics` (`metrics`), and synthetic
//! firmware-like image pairs (`synthetic`) for delta tests and benchmarks.
//!
//! Integration tests of this crate drive `ota-server`, `otactl` and `ota-agent` as a
//! user would. Cargo builds another package's binaries only for that package's own
//! tests, so [`binary`] runs `cargo build --bins` for the workspace once per test
//! process (a no-op when they are fresh) and returns the path in the target directory.

pub mod delta_report;
pub mod metrics;
pub mod process;
pub mod synthetic;
pub mod vectors;

use std::path::PathBuf;
use std::sync::OnceLock;

/// The directory holding the workspace's binaries for this build profile.
fn bin_dir() -> PathBuf {
    // A test executable lives in `<target>/<profile>/deps/`, a binary of this crate (the
    // benchmarks) in `<target>/<profile>/`.
    let exe = std::env::current_exe().expect("the executable has a path");
    let dir = exe
        .parent()
        .expect("executables live in <target>/<profile>[/deps]");
    if dir.file_name().is_some_and(|d| d == "deps") {
        dir.parent()
            .expect("test executables live in <target>/<profile>/deps")
            .to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary, built fresh on first use.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut command = std::process::Command::new(cargo);
        // From the workspace, so a benchmark started from elsewhere builds the right one.
        command.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        command.args(["build", "--bins", "-p", "ota-server", "-p", "ota-agent"]);
        if bin_dir().file_name().is_some_and(|p| p == "release") {
            command.arg("--release");
        }
        let status = command.status().expect("running cargo build");
        assert!(status.success(), "building the workspace binaries failed");
    });
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}
