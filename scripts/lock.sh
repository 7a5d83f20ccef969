#!/usr/bin/env bash
# Refresh the hash-locked requirements from the human-edited sources, for linux x86_64 (glibc 2.36) CPython 3.11,
# the images' platform:
#   requirements.txt                          -> requirements.lock        the GPU image
#   requirements-cpu.txt                      -> requirements-cpu.lock    the CPU image, README command 1
#   requirements-cpu.txt + pyproject's [train,test] extras -> requirements-train.lock  an exact training environment
# and each image lock's CycloneDX bill of materials (requirements.cdx.json, requirements-cpu.cdx.json: the wheel
# pip picks for each package, with its sha256), which the image holds as /opt/app/sbom.cdx.json.
#
#   scripts/lock.sh        after editing a .txt or pyproject's extras; commit what it changed
#
# uv resolves and writes every file's sha256 of each pinned release; pip then picks the images' wheels from the
# locks (--dry-run, checking their hashes) for the bills of materials. Both tools are pinned and installed in a
# throwaway venv. uv reads no pip configuration: it asks PyPI itself, or the mirror UV_DEFAULT_INDEX names.
# test/runtime/test_locks.py fails when a lock or a bill of materials disagrees with its source.
set -euo pipefail
cd "$(dirname "$0")/.."
PLATFORM=x86_64-manylinux_2_36  # python:3.11-slim and CI's stand-in base are Debian (glibc 2.36 and later)

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python3 -m venv "$TMP/venv"
"$TMP/venv/bin/python" -m pip install -q uv==0.13.8 "cyclonedx-python-lib[json-validation]==11.12.0"
export UV_CACHE_DIR="$TMP/uv-cache"

lock() {  # lock OUTPUT SOURCE... [uv option...]
    local out="$1"
    shift
    "$TMP/venv/bin/uv" pip compile --quiet --generate-hashes --only-binary :all: --python-version 3.11 \
        --python-platform "$PLATFORM" --custom-compile-command scripts/lock.sh --output-file "$out" "$@"
    # uv writes an index address only when asked to (--emit-index-url); make sure none slipped in.
    if grep -nE '^\s*(-i|-f|--index-url|--extra-index-url|--find-links|--trusted-host)\b' "$out"; then
        echo "$out: an index or find-links line: remove it" >&2
        exit 1
    fi
}
lock requirements.lock requirements.txt
lock requirements-cpu.lock requirements-cpu.txt
lock requirements-train.lock requirements-cpu.txt pyproject.toml --extra train --extra test

for name in requirements requirements-cpu; do
    # The wheels pip installs in the image (manylinux_2_17 to 2_36, CPython 3.11), with their hashes.
    "$TMP/venv/bin/python" -m pip install -q --dry-run --ignore-installed --no-deps --require-hashes \
        --only-binary :all: --python-version 3.11 --implementation cp --abi cp311 \
        $(printf -- '--platform manylinux_2_%s_x86_64 ' $(seq 17 36)) --platform manylinux2014_x86_64 \
        --target "$TMP/target" --report "$TMP/$name.report.json" -r "$name.lock"
    "$TMP/venv/bin/python" scripts/sbom.py "$name.lock" "$TMP/$name.report.json" "$name.cdx.json"
done
echo "wrote requirements.lock, requirements-cpu.lock, requirements-train.lock, requirements.cdx.json, requirements-cpu.cdx.json"
