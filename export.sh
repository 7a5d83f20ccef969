#!/usr/bin/env bash
# Trained fold checkpoints -> weights/ensemble.onnx + weights/ensemble.json (see training/export.py).
#   ./export.sh runs/amibr-mtl --out weights --manifest ../shared/data/amibr/manifest.csv --split test
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" -m training.export "$@"
