#!/usr/bin/env bash
# Installs the delta tools delta-bench compares against (issue 3): Debian bsdiff/bspatch,
# xdelta3, zstd, GNU time (for peak RSS), and HDiffPatch through its PyPI wrapper.
# qbsdiff is linked into delta-bench itself (crate qbsdiff 1.4.4).
# Usage: bash deploy/bench-tools.sh
set -euo pipefail
missing=()
for tool in bsdiff bspatch xdelta3 zstd; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${missing[@]}" | sed 's/^bspatch$/bsdiff/' | sort -u | tr '\n' ' ')
  apt-get update -qq && apt-get install -y -qq $pkgs
fi
python3 -c 'import hdiffpatch' 2>/dev/null || python3 -m pip install --quiet hdiffpatch
echo "bench tools: $(bsdiff 2>&1 | head -1 | tr -d '\n') / $(xdelta3 -V 2>&1 | head -1) / $(zstd -V) / hdiffpatch $(python3 -c 'import importlib.metadata as m; print(m.version("hdiffpatch"))')"
