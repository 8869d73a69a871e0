//! Integration tests of `ota-agent`, through its real binary where the CLI is the
//! interface.

mod verify_cli;
