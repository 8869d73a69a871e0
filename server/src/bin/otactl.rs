//! `otactl`: thin entry point over `ota_server::otactl`.

fn main() -> std::process::ExitCode {
    ota_server::otactl::main()
}
