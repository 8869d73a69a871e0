#!/usr/bin/env bash
# The whole test suite: installs and starts what the tests need when missing
# (deploy/services.sh), then runs every test of the workspace against it. With the
# services exported, the service-backed tests run for real; with CI=true they fail,
# never skip, when a service is unreachable.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/services.sh
export OTA_REQUIRE_SERVICES=1
cargo test --workspace --locked "$@"
