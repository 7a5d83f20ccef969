#!/usr/bin/env bash
# Run the built image as Grand Challenge does (its own entrypoint, user and workdir; no network, read-only
# /input, a fresh /output, the GPU when nvidia-smi works and the engine can pass it) on test/input/ and compare
# with test/output/expected_output.json: same classes, confidences within test/golden.py's tolerance (1e-4 on a CPU with VNNI), evaluator-valid entries, and
# nothing on stderr.
# Then print the image's size, user and Python, and fail if torch (or another training library) is in it, or
# if what pip installed (pip freeze) or the bill of materials (/opt/app/sbom.cdx.json) is not the image's lock.
# ENGINE=docker|podman|buildah as in ./build.sh (run ./build.sh first); IMAGE (default amf-mtl; IMAGE=amf-mtl-cpu
# for the CPU-only image of ./build.sh --cpu, whose onnxruntime has no CUDA provider: forced CUDA falls back
# to the CPU there too, the note naming the CPU build).
# buildah (no daemon; what CI uses) runs a working container with chroot isolation inside `unshare -n`: it
# applies no entrypoint, so the command is the image's ENTRYPOINT + CMD, read with its USER and WORKDIR from
# the image config. It passes no GPU (the run falls back to CPU) and shows the host's /dev.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${IMAGE:-amf-mtl}"
EXPECTED=test/output/expected_output.json
[ -f "$EXPECTED" ] || { echo "no $EXPECTED: generate it from the shipped weights first (see test/make_test_input.py)" >&2; exit 1; }

source scripts/container_engine.sh

OUT="$(mktemp -d)"
ERR="$(mktemp)"
FACTS="$(mktemp -d)"
CTR=""
cleanup() {
    rm -rf "$OUT" "$ERR" "$FACTS"
    if [ -n "$CTR" ]; then buildah rm "$CTR" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
chmod 777 "$OUT"  # the image runs as its own user (uid 1001)
VOLUMES=(--volume "$PWD/test/input:/input:ro" --volume "$OUT:/output")
HAVE_GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then HAVE_GPU=1; fi

# image_config FIELD: the image config's User, WorkingDir, or the command it runs (Entrypoint + Cmd), NUL-separated.
image_config() {
    buildah inspect --type image "$IMAGE" | python3 -c '
import json, sys
config = json.load(sys.stdin)["OCIv1"].get("config") or {}
field = sys.argv[1]
values = (config.get("Entrypoint") or []) + (config.get("Cmd") or []) if field == "command" else [config.get(field) or ""]
sys.stdout.write("".join(v + "\0" for v in values))' "$1"
}

# in_image [--gc] COMMAND...: run COMMAND in the image as Grand Challenge would (--gc: the image's own
# entrypoint and command, COMMAND empty), with the input and output mounts.
in_image() {
    local gc=0
    if [ "${1:-}" = "--gc" ]; then gc=1; shift; fi
    case "$ENGINE" in
    docker)
        local gpu=()
        [ "$HAVE_GPU" = 1 ] && gpu=(--gpus all)
        if [ "$gc" = 1 ]; then set -- "$IMAGE"; else set -- --entrypoint "$1" "$IMAGE" "${@:2}"; fi
        docker run --rm --platform linux/amd64 --network none ${gpu[@]+"${gpu[@]}"} --shm-size 128m "${VOLUMES[@]}" "$@"
        ;;
    podman)
        local gpu=()  # through CDI (nvidia-ctk cdi generate), when the host has a spec for it
        if [ "$HAVE_GPU" = 1 ] && grep -qs nvidia.com/gpu /etc/cdi/*.yaml /etc/cdi/*.json /var/run/cdi/*.yaml /var/run/cdi/*.json; then
            gpu=(--device nvidia.com/gpu=all)
        fi
        if [ "$gc" = 1 ]; then set -- "$IMAGE"; else set -- --entrypoint "$1" "$IMAGE" "${@:2}"; fi
        podman run --rm --network none ${gpu[@]+"${gpu[@]}"} --shm-size 128m "${VOLUMES[@]}" "$@"
        ;;
    buildah)
        if [ -z "$CTR" ]; then CTR="$(buildah from --pull=never "$IMAGE")"; fi
        local user workdir opts=()
        user="$(image_config User | tr -d '\0')"
        workdir="$(image_config WorkingDir | tr -d '\0')"
        [ -n "$user" ] && opts+=(--user "$user")
        [ -n "$workdir" ] && opts+=(--workingdir "$workdir")
        if [ "$gc" = 1 ]; then
            local command=()
            while IFS= read -r -d '' arg; do command+=("$arg"); done < <(image_config command)
            [ "${#command[@]}" -gt 0 ] || { echo "$IMAGE has neither ENTRYPOINT nor CMD" >&2; return 1; }
            set -- "${command[@]}"
        fi
        # chroot isolation refuses --network none: a new, empty network namespace (loopback only) instead.
        unshare --net buildah run --isolation "${BUILDAH_ISOLATION:-chroot}" ${opts[@]+"${opts[@]}"} "${VOLUMES[@]}" "$CTR" -- "$@"
        ;;
    esac
}

if [ "$HAVE_GPU" = 1 ] && [ "$ENGINE" = buildah ]; then echo "note: buildah passes no GPU: the image runs on CPU"; fi
start=$SECONDS
in_image --gc 2> "$ERR" || { cat "$ERR" >&2; exit 1; }
if [ -s "$ERR" ]; then echo "the run succeeded but wrote to stderr (Grand Challenge shows it as a warning):" >&2; cat "$ERR" >&2; exit 1; fi
echo "the image ran in $((SECONDS - start)) s ($ENGINE)"
python3 - "$OUT/multiple-mitotic-figure-classification.json" "$EXPECTED" <<'PY'
import json, sys
sys.path.insert(0, "test")
from golden import confidence_tolerance
tolerance = confidence_tolerance()
got, want = (json.load(open(p)) for p in sys.argv[1:3])
assert isinstance(got, list) and len(got) == len(want), f"{len(got)} entries, expected {len(want)}"
for i, (g, w) in enumerate(zip(got, want)):
    assert isinstance(g, dict) and set(g) == {"class", "confidence"}, f"page {i}: {g}"
    assert g["class"] in ("normal", "atypical") and g["class"] == w["class"], f"page {i}: class {g['class']} != {w['class']}"
    assert isinstance(g["confidence"], float) and abs(g["confidence"] - w["confidence"]) <= tolerance, f"page {i}: {g} vs {w}"
print(f"container output matches {sys.argv[2]} ({len(got)} pages)")
PY

# CUDA forced where no GPU is passed: the run falls back to the CPU, says why in one stdout line, stays silent.
if [ "$HAVE_GPU" = 0 ]; then
    rm -f "$OUT"/*
    note="$(in_image env AMF_DEVICE=cuda python process.py 2> "$ERR" | grep '^CUDA wanted but not used')" \
        || { cat "$ERR" >&2; echo "AMF_DEVICE=cuda without a GPU: no fallback line" >&2; exit 1; }
    if [ -s "$ERR" ]; then cat "$ERR" >&2; echo "AMF_DEVICE=cuda without a GPU wrote to stderr" >&2; exit 1; fi
    echo "AMF_DEVICE=cuda without a GPU: $note"
fi

# The image's facts: size, user, Python, and no training library in it.
case "$ENGINE" in
docker | podman)
    size="$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}')"
    user="$("$ENGINE" image inspect --format '{{.Config.User}}' "$IMAGE")"
    ;;
buildah)
    size="$(buildah images --format "{{.Size}}" "$IMAGE" | awk "NR == 1")"
    user="$(image_config User | tr -d '\0')"
    ;;
esac
echo "image $IMAGE: ${size}, user ${user:-root (none set)}, $(in_image python --version 2>&1)"
in_image python -c '
import importlib.util, sys
present = [m for m in ("torch", "torchvision", "timm", "lightning", "safetensors", "onnx") if importlib.util.find_spec(m)]
print("training libraries in the image:", ", ".join(present) if present else "none (torch absent)")
sys.exit(1 if present else 0)'

# Exactly the lock it was built from is installed, and its bill of materials lists the same.
in_image sh -c 'cat /opt/app/*.lock' > "$FACTS/lock"
in_image python -m pip freeze > "$FACTS/freeze"
in_image cat /opt/app/sbom.cdx.json > "$FACTS/sbom"
python3 scripts/locks.py image "$FACTS/lock" "$FACTS/freeze" "$FACTS/sbom"
echo "pip freeze: $(grep -c '==' "$FACTS/freeze") packages, those of the image's lock; /opt/app/sbom.cdx.json lists the same"
