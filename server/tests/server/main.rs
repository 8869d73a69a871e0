//! Integration tests of `ota-server`.

mod keys;
