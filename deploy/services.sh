#!/usr/bin/env bash
# Installs (when missing) and starts the services the test suite talks to, on loopback:
#   PostgreSQL   127.0.0.1:5432 (machine service; started if down)
#   Mosquitto    127.0.0.1:1883 (machine service; started if down)
#   tansu        127.0.0.1:${OTA_TEST_KAFKA_PORT:-19092}, a Kafka-protocol broker, in memory
#                (installed with `cargo install tansu --locked --features dynostore`)
#   SoftHSM2     PKCS#11 module + pkcs11-tool (Debian packages softhsm2, opensc)
#   Chromium     headless browser + chromedriver (Debian packages chromium, chromium-driver)
#   s3s-fs       an S3-protocol server (`cargo install s3s-fs`); installed only: each S3
#                blob-store test starts its own on a free loopback port ($OTA_TEST_S3S_FS)
# Source it (`. deploy/services.sh`) to get the OTA_TEST_* variables the tests read.
# Every service is checked at the end; a missing one is a hard failure.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }

port_open() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && exec 3>&- 3<&- && return 0
  return 1
}

wait_port() { # name host port seconds
  local i
  for ((i = 0; i < $4 * 10; i++)); do
    port_open "$2" "$3" && return 0
    sleep 0.1
  done
  log "$1 is not reachable on $2:$3 after $4 s"
  return 1
}

apt_updated=no
apt_install() { # packages...
  if [ "$apt_updated" = no ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=yes
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- PostgreSQL -------------------------------------------------------------------
export OTA_TEST_POSTGRES_URL=${OTA_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
if ! port_open 127.0.0.1 5432; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
  fi
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start || true
fi
wait_port PostgreSQL 127.0.0.1 5432 30

# --- Mosquitto --------------------------------------------------------------------
export OTA_TEST_MQTT_URL=${OTA_TEST_MQTT_URL:-mqtt://127.0.0.1:1883}
if ! port_open 127.0.0.1 1883; then
  command -v mosquitto >/dev/null || apt_install mosquitto
  log "starting Mosquitto"
  if [ -f /etc/mosquitto/mosquitto.conf ]; then
    mosquitto -d -c /etc/mosquitto/mosquitto.conf
  else
    mosquitto -d -p 1883
  fi
fi
wait_port Mosquitto 127.0.0.1 1883 15

# --- SoftHSM2 ---------------------------------------------------------------------
if ! command -v softhsm2-util >/dev/null || ! command -v pkcs11-tool >/dev/null; then
  apt_install softhsm2 opensc
fi
module=$(ls /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so 2>/dev/null | head -n1 || true)
if [ -z "$module" ]; then
  log "SoftHSM2's PKCS#11 module libsofthsm2.so was not found"
  exit 1
fi
export OTA_TEST_PKCS11_MODULE=${OTA_TEST_PKCS11_MODULE:-$module}

# Tools built from crates.io are test fixtures, not what is measured: build them without
# LTO and at opt-level 1 with many codegen units, which roughly halves a cold install.
cargo_install() { # args...
  CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=256 CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo cargo install "$@" >&2
}

# --- tansu (Kafka protocol) -------------------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
kafka_port=${OTA_TEST_KAFKA_PORT:-19092}
export OTA_TEST_KAFKA_BROKERS=${OTA_TEST_KAFKA_BROKERS:-127.0.0.1:$kafka_port}
if ! command -v tansu >/dev/null; then
  log "installing tansu (cargo install, takes ~10 minutes once)"
  cargo_install tansu --locked --features dynostore
fi
if ! port_open 127.0.0.1 "$kafka_port"; then
  log "starting tansu on 127.0.0.1:$kafka_port"
  mkdir -p target
  nohup tansu broker \
    --listener-url "tcp://127.0.0.1:$kafka_port" \
    --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
    --storage-engine memory://tansu/ >target/tansu.log 2>&1 &
  echo $! >target/tansu.pid
fi
wait_port tansu 127.0.0.1 "$kafka_port" 30

# --- Chromium (dashboard browser tests) --------------------------------------------
# Debian's headless Chromium and its WebDriver, driven by tests/tests/e2e/dashboard.rs.
# Nothing is downloaded at run time; the tests run it with --no-sandbox (as root).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt_install chromium chromium-driver
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  log "chromium and chromedriver are required for the dashboard tests"
  exit 1
fi
# --- end Chromium ------------------------------------------------------------------
# --- S3: s3s-fs (S3-protocol server for the blob-store tests) -----------------------
# Installed, not started: every S3 test runs its own s3s-fs on a free loopback port with
# its own directory. 0.14.1 is the newest release that builds on this rustc (1.95).
s3s_fs_version=0.14.1
if ! s3s-fs --version 2>/dev/null | grep -qw "$s3s_fs_version"; then
  log "installing s3s-fs $s3s_fs_version (cargo install, takes ~3 minutes once)"
  cargo_install s3s-fs --version "$s3s_fs_version" --features binary --locked
fi
if ! s3s-fs --version 2>/dev/null | grep -qw "$s3s_fs_version"; then
  log "s3s-fs $s3s_fs_version is not installed"
  exit 1
fi
export OTA_TEST_S3S_FS=${OTA_TEST_S3S_FS:-$(command -v s3s-fs)}
log "s3s-fs: $OTA_TEST_S3S_FS"
# --- end S3 ------------------------------------------------------------------------

log "ready: postgres=$OTA_TEST_POSTGRES_URL mqtt=$OTA_TEST_MQTT_URL kafka=$OTA_TEST_KAFKA_BROKERS pkcs11=$OTA_TEST_PKCS11_MODULE"
