#!/usr/bin/env bash
# Installed size of the runtime: a fresh venv holding one requirements file (default: the lean CPU runtime).
#   bash bench/install_size.sh [requirements-cpu.txt | requirements.txt]
set -euo pipefail
cd "$(dirname "$0")/.."
REQ="${1:-requirements-cpu.txt}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python3 -m venv "$TMP/venv"
start=$SECONDS
"$TMP/venv/bin/python" -m pip install -q -r "$REQ"
echo "$REQ: $(du -sm "$TMP/venv" | cut -f1) MB installed (the whole venv, pip included), pip install $((SECONDS - start)) s"
