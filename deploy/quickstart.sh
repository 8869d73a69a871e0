#!/usr/bin/env bash
# Runs the commands of README.md's Quickstart exactly as written, so the first thing a
# user meets cannot break unnoticed (CI calls this after the test suite).
#   - a `serve` command runs in the background until http://127.0.0.1:8080/healthz
#     answers, then is stopped with Ctrl-C (SIGINT) and must exit cleanly;
#   - `bash deploy/test.sh` is CI's own test command, run just before: not run twice;
#   - every other command runs in the foreground and must succeed.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[quickstart] %s\n' "$*" >&2; }

# The first ```sh block after "## Quickstart", comments stripped.
mapfile -t commands < <(awk '
  /^## Quickstart/ { in_section = 1; next }
  in_section && /^## / { exit }
  in_section && /^```sh/ { in_block = 1; next }
  in_block && /^```/ { exit }
  in_block { sub(/[[:space:]]+#.*$/, ""); if (length($0)) print }
' README.md)
if [ "${#commands[@]}" -eq 0 ]; then
  log "no commands found in README.md's Quickstart"
  exit 1
fi

for command in "${commands[@]}"; do
  case "$command" in
    "bash deploy/test.sh")
      log "skipping '$command' (CI's test command, already run)"
      ;;
    *" serve"*)
      log "running '$command' until it answers"
      workdir=$(mktemp -d)
      # `cargo run` replaces itself with the program, so $! is the server.
      bash -c "exec $command" >"$workdir/serve.log" 2>&1 &
      pid=$!
      ok=no
      for _ in $(seq 1 1800); do
        if curl -fsS http://127.0.0.1:8080/healthz >/dev/null 2>&1; then ok=yes; break; fi
        if ! kill -0 "$pid" 2>/dev/null; then break; fi
        sleep 0.5
      done
      if [ "$ok" != yes ]; then
        log "'$command' did not answer on http://127.0.0.1:8080/healthz:"
        tail -n 40 "$workdir/serve.log" >&2
        kill -KILL "$pid" 2>/dev/null || true
        exit 1
      fi
      log "answered; stopping it with Ctrl-C (SIGINT)"
      kill -INT "$pid"
      if ! wait "$pid"; then
        log "'$command' did not exit cleanly after Ctrl-C:"
        tail -n 40 "$workdir/serve.log" >&2
        exit 1
      fi
      rm -rf ota-data "$workdir"
      ;;
    *)
      log "running '$command'"
      bash -c "$command"
      ;;
  esac
done
log "every Quickstart command works as written"
