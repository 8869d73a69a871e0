#!/usr/bin/env bash
# Validates deploy/ without a container runtime or a cluster (CI runs it):
#   1. deploy/compose/compose.yaml is parsed by a compose implementation (podman-compose,
#      in dry-run mode: nothing is started, no podman needed) and checked against the
#      Compose Specification's JSON schema (bundled by check-jsonschema);
#   2. deploy/kubernetes/*.yaml are checked against the Kubernetes API schemas
#      (kubernetes-validate, which bundles them), strictly: unknown fields fail;
#   3. the configuration each of them gives ota-server (the compose replicas'
#      environment; the ConfigMap's ota.toml with the Deployment's environment and the
#      example Secret) is read by the server itself (`ota-server serve --check-config`),
#      which refuses unknown keys and bad values as it would at startup.
# The tools come from PyPI, pinned, into a venv under the target dir (installed the first
# time, reused later); nothing is fetched at run time.
#
# Usage: bash deploy/validate.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PODMAN_COMPOSE_VERSION=1.6.0
CHECK_JSONSCHEMA_VERSION=0.39.0
KUBERNETES_VALIDATE_VERSION=1.37.0
# The Kubernetes version the manifests are checked against.
# The Kubernetes versions the manifests are checked against (oldest supported, newest).
KUBERNETES_VERSIONS=${OTA_KUBERNETES_VERSIONS:-1.30.0 1.37.0}

log() { printf '[validate] %s\n' "$*" >&2; }

target_dir=${CARGO_TARGET_DIR:-$PWD/target}
venv="$target_dir/deploy-venv"
pins=("podman-compose==$PODMAN_COMPOSE_VERSION" "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
  "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")
stamp="$venv/.pins"
if [ "$(cat "$stamp" 2>/dev/null)" != "${pins[*]}" ]; then
  log "installing ${pins[*]} into $venv"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
  printf '%s' "${pins[*]}" >"$stamp"
fi

failed=0

# --- compose ---------------------------------------------------------------------
compose=deploy/compose/compose.yaml
log "compose: $compose"
merged=$(mktemp --suffix=.yaml)
trap 'rm -f "$merged"' EXIT
# podman-compose resolves anchors, merge keys and interpolation as `compose up` would and
# refuses what it cannot parse; --dry-run keeps it from looking for podman.
if "$venv/bin/podman-compose" --dry-run -f "$compose" config >"$merged" 2>"$merged.err"; then
  services=$("$venv/bin/python" - "$merged" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
print(" ".join(sorted(doc["services"])))
PY
)
  log "compose services: $services"
else
  cat "$merged.err" >&2
  log "FAILED: podman-compose could not parse $compose"
  failed=1
fi
rm -f "$merged.err"
if ! "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$compose"; then
  log "FAILED: $compose does not follow the Compose Specification"
  failed=1
fi

# --- Kubernetes --------------------------------------------------------------------
for version in $KUBERNETES_VERSIONS; do
  log "kubernetes $version: deploy/kubernetes/*.yaml"
  if ! "$venv/bin/kubernetes-validate" --quiet --strict --kubernetes-version "$version" \
    deploy/kubernetes/*.yaml; then
    log "FAILED: a Kubernetes manifest does not follow the Kubernetes $version schemas"
    failed=1
  fi
done

# --- the server's own reading of that configuration ----------------------------------
# The test suite's own build (`cargo test --workspace`): building `-p ota-server` alone
# resolves other features (no dev-dependencies) and recompiles ~85 crates.
cargo build --locked -q --workspace --all-targets
server="$target_dir/debug/ota-server"
if ! "$venv/bin/python" - "$server" "$compose" deploy/kubernetes <<'PY'
import os, subprocess, sys, tempfile, yaml

server, compose, k8s = sys.argv[1:]
# Only what a container would have: no OTA_* variable of this shell leaks in.
base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tempfile.gettempdir()}
failed = False

def check(name, env):
    global failed
    run = subprocess.run([server, "serve", "--check-config"], env={**base, **env},
                         capture_output=True, text=True)
    if run.returncode == 0:
        print(f"[validate] {name}: {run.stdout.strip()}", file=sys.stderr)
    else:
        print(f"[validate] FAILED: ota-server refuses the configuration of {name}:",
              run.stdout + run.stderr, file=sys.stderr)
        failed = True

merged = subprocess.run([os.path.join(os.path.dirname(sys.executable), "podman-compose"),
                         "--dry-run", "-f", compose, "config"],
                        capture_output=True, text=True, check=True).stdout
servers = 0
for name, service in yaml.safe_load(merged)["services"].items():
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    if str(service.get("image", "")).startswith("ota-server") and any(
            k.startswith("OTA_") for k in env):
        servers += 1
        check(f"compose service {name}", {k: str(v) for k, v in env.items()})
if servers < 2:
    print(f"[validate] FAILED: {compose} runs {servers} ota-server replicas, not 2 or more",
          file=sys.stderr)
    failed = True

docs = []
for file in sorted(os.listdir(k8s)):
    if file.endswith(".yaml"):
        docs += [d for d in yaml.safe_load_all(open(os.path.join(k8s, file))) if d]
by_kind = lambda kind: {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}
config_maps, secrets = by_kind("ConfigMap"), by_kind("Secret")
for name, deployment in by_kind("Deployment").items():
    pod = deployment["spec"]["template"]["spec"]
    mounts = {v["name"]: v for v in pod.get("volumes", [])}
    for container in pod["containers"]:
        with tempfile.TemporaryDirectory() as tmp:
            env = {}
            for source in container.get("envFrom", []):
                secret = secrets[source["secretRef"]["name"]]
                env.update(secret.get("stringData", {}))
            for var in container.get("env", []):
                env[var["name"]] = var.get("value", f"placeholder-for-{var['name'].lower()}")
            # The configuration file: the ConfigMap mounted where OTA_CONFIG points.
            for mount in container.get("volumeMounts", []):
                volume = mounts[mount["name"]]
                if "configMap" in volume:
                    data = config_maps[volume["configMap"]["name"]]["data"]
                    for key, text in data.items():
                        path = os.path.join(mount["mountPath"], key)
                        if env.get("OTA_CONFIG") == path:
                            local = os.path.join(tmp, key)
                            open(local, "w").write(text)
                            env["OTA_CONFIG"] = local
            if not env.get("OTA_CONFIG", "").startswith(tmp):
                print(f"[validate] FAILED: OTA_CONFIG of deployment {name} names no mounted "
                      "ConfigMap key", file=sys.stderr)
                failed = True
                continue
            check(f"deployment {name}/{container['name']}", env)
sys.exit(1 if failed else 0)
PY
then
  failed=1
fi

if [ "$failed" -ne 0 ]; then
  exit 1
fi
log "deploy/ is valid"
