#!/usr/bin/env bash
# Runs README.md's whole-local-loop walk-through (the ```sh block after "A whole local
# loop") exactly as written, in an empty directory, with the release binaries on PATH:
# a server, a provisioned development vehicle, a release, a rollout, and the vehicle's
# commit. CI calls this after the Quickstart. Needs Mosquitto on 127.0.0.1:1883 and
# nothing on 127.0.0.1:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

log() { printf '[walkthrough] %s\n' "$*" >&2; }

script=$(awk '
  /^A whole local loop/ { in_section = 1; next }
  in_section && /^```sh/ { in_block = 1; next }
  in_block && /^```/ { exit }
  in_block { print }
' README.md)
if [ -z "$script" ]; then
  log "no walk-through block found in README.md"
  exit 1
fi

log "cargo build --release -p ota-server -p ota-agent"
cargo build --release -p ota-server -p ota-agent
target=${CARGO_TARGET_DIR:-$root/target}

work=$(mktemp -d)
log "running the walk-through in $work"
# Its own process group, so whatever it left running is stopped afterwards, even when
# it failed half-way (the block's last line stops its background jobs itself).
(
  cd "$work"
  export PATH="$target/release:$PATH"
  exec setsid bash -euo pipefail -c "$script"
) &
group=$!
status=0
wait "$group" || status=$?
kill -TERM -- "-$group" 2>/dev/null || true
if [ "$status" -ne 0 ]; then
  log "the walk-through failed (exit $status); the agent's log:"
  tail -n 40 "$work/veh/agent.log" >&2 || true
  tail -n 20 "$work/ota-data/"*.log >&2 2>/dev/null || true
  rm -rf "$work"
  exit 1
fi
rm -rf "$work"
log "README's walk-through works as written: the vehicle committed fw-2.0"
