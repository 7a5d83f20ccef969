#!/usr/bin/env bash
# Reproduce the shipped ensemble: train the 4 LODO folds on the AMi-Br train split, evaluate them on the
# test split, export to weights/, refresh test/output/expected_output.json, and score the exported
# ensemble through the container's code path. Resumable: rerun after an interruption.
#   scripts/reproduce_default.sh [path/to/amibr/manifest.csv]
set -euo pipefail
cd "$(dirname "$0")/.."
MANIFEST="${1:-../shared/data/amibr/manifest.csv}"
RUN="${RUN:-runs/amibr-mtl-e25}"
PY="${PYTHON:-.venv/bin/python}"
"$PY" -m model.train --manifest "$MANIFEST" --split train --preset scratch --epochs 25 --out "$RUN" --resume
"$PY" -m model.evaluate "$RUN" --manifest "$MANIFEST" --split test --out "reports/$(basename "$RUN")"
PYTHON="$PY" ./export.sh "$RUN" --out weights --manifest "$MANIFEST" --split test
tmp="$(mktemp -d)"
"$PY" process.py --input test/input --output "$tmp" --weights weights
mkdir -p test/output
cp "$tmp/multiple-mitotic-figure-classification.json" test/output/expected_output.json
"$PY" bench/score_ensemble.py --manifest "$MANIFEST" --split test --weights weights --out "reports/$(basename "$RUN")-onnx"
