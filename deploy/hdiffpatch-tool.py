#!/usr/bin/env python3
"""HDiffPatch (PyPI package `hdiffpatch`, wrapping the C++ library) as a command line
tool for delta-bench: diff OLD NEW PATCH | apply OLD PATCH OUT. zstd level 19, as in
the comparison table of issue 3."""
import sys

import hdiffpatch


def main() -> None:
    mode, old_path, second, out_path = sys.argv[1:5]
    with open(old_path, "rb") as f:
        old = f.read()
    with open(second, "rb") as f:
        data = f.read()
    if mode == "diff":
        result = hdiffpatch.diff(old, data, compression=hdiffpatch.ZStdConfig(level=19))
    elif mode == "apply":
        result = hdiffpatch.apply(old, data)
    else:
        sys.exit(f"unknown mode {mode}")
    with open(out_path, "wb") as f:
        f.write(result)


if __name__ == "__main__":
    main()
