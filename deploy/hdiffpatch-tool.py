#!/usr/bin/env python3
"""HDiffPatch (PyPI package `hdiffpatch`, wrapping the C++ library) as a command line
tool for delta-bench: diff OLD NEW PATCH | apply OLD PATCH OUT [zstd|lzma2]. zstd level
19, as in the comparison table of issue 3; or LZMA2 level 9 with an 8 MiB dictionary,
the backend that matches our algorithm 4 containers' LZMA2 diff streams."""
import sys

import hdiffpatch


def main() -> None:
    mode, old_path, second, out_path = sys.argv[1:5]
    backend = sys.argv[5] if len(sys.argv) > 5 else "zstd"
    if backend == "zstd":
        compression = hdiffpatch.ZStdConfig(level=19)
    elif backend == "lzma2":
        compression = hdiffpatch.Lzma2Config(level=9, window=23)
    else:
        sys.exit(f"unknown backend {backend}")
    with open(old_path, "rb") as f:
        old = f.read()
    with open(second, "rb") as f:
        data = f.read()
    if mode == "diff":
        result = hdiffpatch.diff(old, data, compression=compression)
    elif mode == "apply":
        result = hdiffpatch.apply(old, data)
    else:
        sys.exit(f"unknown mode {mode}")
    with open(out_path, "wb") as f:
        f.write(result)


if __name__ == "__main__":
    main()
