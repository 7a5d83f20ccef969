#!/usr/bin/env bash
# Run the built image as Grand Challenge does (no network, read-only /input, GPU when present) on
# test/input/ and compare with test/output/expected_output.json. Needs a Docker engine: ./build.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${IMAGE:-amf-mtl}"
OUT="$(mktemp -d)"
chmod 777 "$OUT"
GPU=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then GPU=(--gpus all); fi
docker run --rm --platform linux/amd64 --network none "${GPU[@]}" --shm-size 128m \
    --volume "$PWD/test/input:/input:ro" --volume "$OUT:/output" "$IMAGE"
python3 - "$OUT/multiple-mitotic-figure-classification.json" test/output/expected_output.json <<'PY'
import json, sys
got, want = (json.load(open(p)) for p in sys.argv[1:3])
assert len(got) == len(want), f"{len(got)} entries, expected {len(want)}"
for i, (g, w) in enumerate(zip(got, want)):
    assert g["class"] == w["class"], f"page {i}: class {g['class']} != {w['class']}"
    assert isinstance(g["confidence"], float) and abs(g["confidence"] - w["confidence"]) < 1e-3, f"page {i}: {g} vs {w}"
print(f"container output matches test/output/expected_output.json ({len(got)} pages)")
PY
