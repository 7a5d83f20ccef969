#!/usr/bin/env bash
# Trained fold checkpoints -> weights/ensemble.onnx + weights/ensemble.json: a shorthand for `amf export`
# (training/export.py; options: amf export --help). AMF=... picks the command (default .venv/bin/amf, else amf).
#   ./export.sh runs/amibr-mtl --out weights --manifest ../shared/data/amibr/manifest.csv
set -euo pipefail
cd "$(dirname "$0")"
AMF="${AMF:-$( [ -x .venv/bin/amf ] && echo .venv/bin/amf || echo amf )}"
exec "$AMF" export "$@"
