#!/usr/bin/env bash
# Reproduce the previous shipped ensemble (docs/model-card-e25-rounds.md; the current one:
# scripts/reproduce_default.sh): train the 4 LODO folds on the AMi-Br train split (25 epochs), continue
# each fold for ROUNDS rounds of 10 epochs (warm restart at lr 1e-4), keeping per fold whichever model
# scores best on its validation domain; then evaluate on the test split, export to OUT (default
# weights-e25-rounds; the shipped weights/ stay as they are) and score that export through the container's code.
# SINGLE_TASK=1 runs the same schedule with the decoders off (the ablation) and stops after evaluating it.
# Resumable: rerun after an interruption. Env: ROUNDS, BASE, OUT, SINGLE_TASK, AMF (default .venv/bin/amf).
#   scripts/reproduce_e25_rounds.sh [path/to/amibr/manifest.csv]
set -euo pipefail
cd "$(dirname "$0")/.."
MANIFEST="${1:-../shared/data/amibr/manifest.csv}"
ROUNDS="${ROUNDS:-2}"
OUT="${OUT:-weights-e25-rounds}"
AMF="${AMF:-.venv/bin/amf}"
MODE=()
if [[ "${SINGLE_TASK:-0}" == 1 ]]; then MODE=(--single-task); fi
BASE="${BASE:-runs/amibr-$([[ ${#MODE[@]} -gt 0 ]] && echo st || echo mtl)-e25}"
"$AMF" train --manifest "$MANIFEST" --split train --preset scratch --epochs 25 --out "$BASE" --resume "${MODE[@]}"
RUN="$BASE"
for round in $(seq 1 "$ROUNDS"); do
  "$AMF" train --manifest "$MANIFEST" --split train --preset scratch --epochs 10 --lr 1e-4 \
    --init "$RUN" --out "$BASE-ft$round" --resume "${MODE[@]}"
  "$AMF" pick "$RUN" "$BASE-ft$round" --manifest "$MANIFEST" --split train --out "$BASE-pick$round"
  RUN="$BASE-pick$round"
done
"$AMF" calibrate "$RUN" --manifest "$MANIFEST" --split train --tta auto
"$AMF" evaluate "$RUN" --manifest "$MANIFEST" --split test --out "reports/$(basename "$RUN")"
if [[ ${#MODE[@]} -gt 0 ]]; then exit 0; fi
"$AMF" export "$RUN" --out "$OUT" --manifest "$MANIFEST" --split train
"$AMF" evaluate "$OUT" --manifest "$MANIFEST" --split test --out "reports/$(basename "$RUN")-onnx"
