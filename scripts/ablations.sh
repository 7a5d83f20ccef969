#!/usr/bin/env bash
# Seed-003 options (and MTL vs single task) as ablations of the from-scratch recipe, on one LODO fold.
# Each variant trains the same fold for the same epochs and seed; then every fold model is scored on the
# AMi-Br test split. Resumable: rerun after an interruption (finished variants are skipped).
#   scripts/ablations.sh [manifest] ; env: FOLD (validation domain), EPOCHS, OUT, AMF (default .venv/bin/amf)
set -euo pipefail
cd "$(dirname "$0")/.."
MANIFEST="${1:-../shared/data/amibr/manifest.csv}"
FOLD="${FOLD:-midog21-hamamatsu-s360}"
EPOCHS="${EPOCHS:-4}"
OUT="${OUT:-runs/ablations-e$EPOCHS}"
AMF="${AMF:-.venv/bin/amf}"
declare -a NAMES=(mtl st soft-labels focal domain-aware domain-adversarial supcon st-mixup seed003-options)
declare -A ARGS=(
  [mtl]="" [st]="--single-task" [soft-labels]="--set soft_labels=1.0" [focal]="--set loss=focal"
  [domain-aware]="--set sampling=domain-aware" [domain-adversarial]="--set domain_adversarial=0.1"
  [supcon]="--set supcon_weight=0.1" [st-mixup]="--single-task --set mixup_alpha=0.2"
  [seed003-options]="--set soft_labels=1.0 --set loss=focal --set sampling=domain-aware --set domain_adversarial=0.1 --set supcon_weight=0.1"
)
for name in "${NAMES[@]}"; do
  # shellcheck disable=SC2086
  "$AMF" train --manifest "$MANIFEST" --split train --preset scratch --epochs "$EPOCHS" --folds "$FOLD" \
      --out "$OUT/$name" --resume ${ARGS[$name]}
done
runs=()
for name in "${NAMES[@]}"; do runs+=("$OUT/$name/val-$FOLD"); done
"$AMF" evaluate "${runs[@]}" --manifest "$MANIFEST" --split test --no-vote --out "reports/$(basename "$OUT")"
