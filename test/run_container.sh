#!/usr/bin/env bash
# Run the built image as Grand Challenge does (no network, read-only /input, a fresh /output, the GPU when
# nvidia-smi works) on test/input/ and compare with test/output/expected_output.json: same classes,
# confidences within 1e-4, evaluator-valid entries. Needs a Docker engine: ./build.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${IMAGE:-amf-mtl}"
EXPECTED=test/output/expected_output.json
[ -f "$EXPECTED" ] || { echo "no $EXPECTED: generate it from the shipped weights first (see test/make_test_input.py)" >&2; exit 1; }
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
chmod 777 "$OUT"  # the image runs as uid 1001
GPU=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then GPU=(--gpus all); fi
docker run --rm --platform linux/amd64 --network none ${GPU[@]+"${GPU[@]}"} --shm-size 128m \
    --volume "$PWD/test/input:/input:ro" --volume "$OUT:/output" "$IMAGE"
python3 - "$OUT/multiple-mitotic-figure-classification.json" "$EXPECTED" <<'PY'
import json, sys
got, want = (json.load(open(p)) for p in sys.argv[1:3])
assert isinstance(got, list) and len(got) == len(want), f"{len(got)} entries, expected {len(want)}"
for i, (g, w) in enumerate(zip(got, want)):
    assert isinstance(g, dict) and set(g) == {"class", "confidence"}, f"page {i}: {g}"
    assert g["class"] in ("normal", "atypical") and g["class"] == w["class"], f"page {i}: class {g['class']} != {w['class']}"
    assert isinstance(g["confidence"], float) and abs(g["confidence"] - w["confidence"]) <= 1e-4, f"page {i}: {g} vs {w}"
print(f"container output matches {sys.argv[2]} ({len(got)} pages)")
PY
