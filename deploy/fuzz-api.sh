#!/usr/bin/env bash
# The OpenAPI fuzz test (issue 11 item 17): schemathesis, a property-based fuzzer from
# PyPI, against a running `ota-server` on SQLite and then on PostgreSQL, authenticated
# with an admin token from `ota-server tokens create`, every check on (`--checks all`).
# Any 5xx, any response outside the document (status, content type, headers, schema) or
# any other failed check fails this script.
#
# schemathesis is installed (pinned) into a venv under the target dir the first time;
# later runs reuse it. PostgreSQL: $OTA_TEST_POSTGRES_URL (default
# postgres://postgres@127.0.0.1:5432, trust); a throwaway database is created and dropped.
#
# Usage: bash deploy/fuzz-api.sh [--seed N] [--max-examples N] [sqlite|postgres ...]
#   Without a backend, both run. Reports (JUnit) go to target/fuzz-api/.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
seed=${OTA_FUZZ_SEED:-$(date +%s)}
max_examples=${OTA_FUZZ_MAX_EXAMPLES:-25}
backends=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) seed=$2; shift 2 ;;
    --max-examples) max_examples=$2; shift 2 ;;
    sqlite | postgres) backends+=("$1"); shift ;;
    *) echo "usage: $0 [--seed N] [--max-examples N] [sqlite|postgres ...]" >&2; exit 2 ;;
  esac
done
[ ${#backends[@]} -gt 0 ] || backends=(sqlite postgres)

log() { printf '[fuzz-api] %s\n' "$*" >&2; }

target_dir=${CARGO_TARGET_DIR:-$PWD/target}
venv="$target_dir/fuzz-venv"
st="$venv/bin/st"
# --- schemathesis (pinned) ---------------------------------------------------------
if ! "$st" --version 2>/dev/null | grep -qx "st, version $SCHEMATHESIS_VERSION"; then
  log "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
"$st" --version | grep -qx "st, version $SCHEMATHESIS_VERSION" || {
  log "schemathesis $SCHEMATHESIS_VERSION is not installed in $venv"
  exit 1
}

# --- the server --------------------------------------------------------------------
# The test suite's own build (`cargo test --workspace`): building `-p ota-server` alone
# resolves other features (no dev-dependencies) and recompiles ~85 crates.
cargo build --locked -q --workspace --all-targets
server="$target_dir/debug/ota-server"
work=$(mktemp -d)
pid=""
pg_db=""
pg_url=${OTA_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [ -n "$pg_db" ]; then psql -q "$pg_url/postgres" -c "DROP DATABASE IF EXISTS $pg_db" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Stored data for the fuzzer to read and act on (lists, responses with nulls, rollouts
# to start and stop): an image, a release of it, a vehicle (RFC 8032's first test key)
# that never checked in, and a draft rollout. Every call must succeed.
seed_data() { # base_url token
  local base=$1 auth="Authorization: Bearer $2" image release
  call() { curl -fsS -H "$auth" "$@"; }
  image=$(head -c 4096 /dev/urandom | call -X POST -H 'Content-Type: application/octet-stream' \
    --data-binary @- "$base/api/v1/images?hardware_id=ecu-a&version=1.0.0")
  image=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$image")
  release=$(call -X POST -H 'Content-Type: application/json' \
    -d "{\"name\":\"r1\",\"version\":\"1.0.0\",\"security_version\":1,\"images\":[\"$image\"]}" \
    "$base/api/v1/releases")
  release=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$release")
  call -X POST -H 'Content-Type: application/json' -o /dev/null \
    -d '{"id":"car-1","public_key":"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a","ecus":[{"ecu":"main","hardware_id":"ecu-a"}],"tags":["eu"]}' \
    "$base/api/v1/vehicles"
  call -X POST -H 'Content-Type: application/json' -o /dev/null \
    -d "{\"name\":\"ro1\",\"release_id\":\"$release\",\"phases\":[{\"name\":\"canary\",\"percent\":10},{\"name\":\"all\",\"percent\":100}]}" \
    "$base/api/v1/rollouts"
}

config="$PWD/deploy/schemathesis.toml"
report_dir="$target_dir/fuzz-api"
mkdir -p "$report_dir"
summary=()
failed=0
for backend in "${backends[@]}"; do
  data="$work/$backend"
  mkdir -p "$data"
  port=$(free_port)
  export OTA_LISTEN="127.0.0.1:$port" OTA_DATA_DIR="$data" OTA_MQTT__EMBEDDED=off
  export OTA_LOG__FORMAT=text OTA_LOG__FILTER=warn
  if [ "$backend" = postgres ]; then
    pg_db="ota_fuzz_$$_$(date +%s)"
    psql -q -v ON_ERROR_STOP=1 "$pg_url/postgres" -c "CREATE DATABASE $pg_db" >/dev/null
    export OTA_DATABASE_URL="$pg_url/$pg_db"
  else
    unset OTA_DATABASE_URL
  fi
  token=$("$server" tokens create --name fuzz --scope admin)
  "$server" serve >"$data/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { log "ota-server ($backend) exited:"; cat "$data/server.log" >&2; exit 1; }
    sleep 0.1
  done
  seed_data "http://127.0.0.1:$port" "$token"
  log "$backend: schemathesis --checks all, seed $seed, $max_examples examples per operation"
  started=$(date +%s)
  set +e
  # Two passes: everything but revokeToken (its stateful links would revoke the fuzzer's
  # own token and leave the rest of the run unauthenticated), then revokeToken alone.
  status=0
  for pass in exclude include; do
    phases=examples,coverage,fuzzing,stateful
    [ "$pass" = include ] && phases=examples,coverage,fuzzing # no links within one operation
    # From the server's scratch directory: schemathesis keeps a cache in the working one.
    (cd "$data" && "$st" --config-file "$config" run "http://127.0.0.1:$port/api/v1/openapi.json" \
      "--$pass-operation-id" revokeToken --phases "$phases" --checks all --seed "$seed" --max-examples "$max_examples" --workers 1 \
      --header "Authorization: Bearer $token" \
      --generation-database none --suppress-health-check all \
      --report junit --report-junit-path "$report_dir/$backend-$pass.xml" \
      --no-color) 2>&1 | tee -a "$data/schemathesis.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  done
  set -e
  elapsed=$(($(date +%s) - started))
  requests=$(grep -Eo '[0-9,]+ generated' "$data/schemathesis.log" | tr -d , | awk '{n += $1} END {print n " test cases"}')
  if grep -q -E 'panicked|internal error answering' "$data/server.log"; then
    log "$backend: the server logged an internal error:"
    grep -E -A3 'panicked|internal error answering' "$data/server.log" >&2
    status=1
  fi
  summary+=("$backend: exit $status, ${elapsed}s, ${requests:-?}")
  [ "$status" -eq 0 ] || failed=1
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  if [ -n "$pg_db" ]; then psql -q "$pg_url/postgres" -c "DROP DATABASE IF EXISTS $pg_db" >/dev/null; pg_db=""; fi
done
for line in "${summary[@]}"; do log "$line"; done
if [ "$failed" -ne 0 ]; then
  log "FAILED (reproduce: bash deploy/fuzz-api.sh --seed $seed --max-examples $max_examples)"
  exit 1
fi
log "passed"
