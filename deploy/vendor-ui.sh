#!/usr/bin/env bash
# Vendors the dashboard's JavaScript and CSS from the npm registry, at exact versions,
# into server/src/ui/vendor/ (committed; `ota-server` embeds them with include_bytes!,
# so nothing is fetched at run time). Run it again after changing a version below.
set -euo pipefail

cd "$(dirname "$0")/.."
out=server/src/ui/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# package@version  file inside the package  name in the vendor directory
packages=(
  "htmx.org@2.0.11 dist/htmx.min.js htmx.min.js"
  "chart.js@4.5.1 dist/chart.umd.js chart.umd.js"
  "chartjs-plugin-annotation@3.1.0 dist/chartjs-plugin-annotation.min.js chartjs-plugin-annotation.min.js"
  "@picocss/pico@2.1.1 css/pico.classless.min.css pico.classless.min.css"
)

mkdir -p "$out"
: >"$work/VERSIONS"
for line in "${packages[@]}"; do
  read -r spec file name <<<"$line"
  (cd "$work" && npm pack --silent "$spec" >"$work/tarball")
  tarball="$work/$(tail -n1 "$work/tarball")"
  mkdir -p "$work/unpack"
  tar -xzf "$tarball" -C "$work/unpack"
  cp "$work/unpack/package/$file" "$out/$name"
  [ -f "$work/unpack/package/LICENSE" ] && cp "$work/unpack/package/LICENSE" "$out/$name.LICENSE"
  [ -f "$work/unpack/package/LICENSE.md" ] && cp "$work/unpack/package/LICENSE.md" "$out/$name.LICENSE"
  printf '%s %s %s\n' "$spec" "$file" "$(sha256sum "$out/$name" | cut -d' ' -f1)" >>"$work/VERSIONS"
  rm -rf "$work/unpack" "$tarball"
done
cp "$work/VERSIONS" "$out/VERSIONS"
cat "$out/VERSIONS"
