#!/usr/bin/env bash
# Build the algorithm image (linux/amd64): the GPU image (requirements.lock) by default, the CPU-only one with
# --cpu; `save` also writes IMAGE.tar.gz (a gzipped docker-archive), the file to upload to Grand Challenge, and
# IMAGE.sbom.cdx.json beside it (the image's bill of materials, /opt/app/sbom.cdx.json inside it). The image is
# labelled with its commit, source, version, build time and the weights' sha256 (scripts/image_labels.py).
# ./build.sh --help for the options. With podman and buildah the build's `pip install` gets the host's pip
# configuration (scripts/pip_build_mounts.py); docker builds without it. buildah builds daemonless with
# chroot isolation (BUILDAH_ISOLATION overrides).
set -euo pipefail
cd "$(dirname "$0")"

usage() {
    cat <<'EOF'
usage: ./build.sh [--cpu] [save] [-h|--help] [BUILD OPTION...] [-- BUILD OPTION...]

Build the algorithm image from the Dockerfile (linux/amd64).
  (default)   the GPU image: requirements.lock (onnxruntime-gpu, CUDA 12 / cuDNN 9 wheels); tag amf-mtl
  --cpu       the CPU-only image: requirements-cpu.lock (the CPU build of onnxruntime); tag amf-mtl-cpu
  save        then write IMAGE.tar.gz (gzipped docker-archive), the file to upload to Grand Challenge, and
              IMAGE.sbom.cdx.json beside it (CycloneDX: every Python package in the image, with its sha256)
  -h, --help  print this help and exit
These come in any order. Every other argument goes to the engine's build command unchanged (for example
--no-cache or --build-arg KEY=VALUE); everything after `--` does too.

Environment:
  ENGINE      docker | podman | buildah (default: docker when its daemon answers, else podman, else buildah)
  IMAGE       the tag (default amf-mtl, with --cpu amf-mtl-cpu)
  BASE_IMAGE  the Dockerfile's base (default python:3.11-slim). Offline, on the Debian stand-in base:
                .ci/stand-in-base && ENGINE=buildah BASE_IMAGE=localhost/amf-base:bookworm ./build.sh --cpu
  BUILDAH_ISOLATION  buildah's isolation (default chroot)
  SOURCE_URL  the org.opencontainers.image.source label (default: the origin remote's URL)
EOF
}

SAVE=0
CPU=0
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help) usage; exit 0 ;;
    --cpu) CPU=1 ;;
    save) SAVE=1 ;;
    --) shift; EXTRA+=("$@"); break ;;
    *) EXTRA+=("$1") ;;
    esac
    shift
done
if [ "$CPU" = 1 ]; then
    IMAGE="${IMAGE:-amf-mtl-cpu}"
    REQUIREMENTS=requirements-cpu
else
    IMAGE="${IMAGE:-amf-mtl}"
    REQUIREMENTS=requirements
fi

source scripts/container_engine.sh

ARGS=(--platform linux/amd64 --tag "$IMAGE" --build-arg "REQUIREMENTS=$REQUIREMENTS")
if [ -n "${BASE_IMAGE:-}" ]; then ARGS+=(--build-arg "BASE_IMAGE=$BASE_IMAGE"); fi
# Labels from the command line, not the Dockerfile: a new commit or build time leaves the layer cache as it is.
LABELS="$(python3 scripts/image_labels.py)"
while IFS= read -r label; do ARGS+=(--label "$label"); done <<< "$LABELS"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

case "$ENGINE" in
docker)
    docker build "${ARGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"} .
    ;;
podman | buildah)
    while IFS= read -r mount; do
        [ -n "$mount" ] && ARGS+=(--volume "$mount")
    done < <(command -v python3 >/dev/null && python3 scripts/pip_build_mounts.py "$TMP/pip")
    if [ "$ENGINE" = podman ]; then
        podman build "${ARGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"} .
    else
        # --pull=false: use a local base (the stand-in) as it is, pull only a missing one.
        buildah bud --isolation "${BUILDAH_ISOLATION:-chroot}" --layers --pull=false "${ARGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"} .
    fi
    ;;
esac

if [ "$SAVE" = 1 ]; then
    REF="$IMAGE"
    case "${IMAGE##*/}" in *:*) ;; *) REF="$IMAGE:latest" ;; esac
    case "$ENGINE" in
    docker) docker save "$IMAGE" | gzip -c > "$IMAGE.tar.gz" ;;
    podman) podman save --format docker-archive --output "$TMP/image.tar" "$REF" && gzip -c "$TMP/image.tar" > "$IMAGE.tar.gz" ;;
    buildah) buildah push --quiet "$IMAGE" "docker-archive:$TMP/image.tar:$REF" && gzip -c "$TMP/image.tar" > "$IMAGE.tar.gz" ;;
    esac
    cp "$REQUIREMENTS.cdx.json" "$IMAGE.sbom.cdx.json"
    echo "wrote $IMAGE.tar.gz ($(du -h "$IMAGE.tar.gz" | cut -f1)): upload it as the algorithm's container image"
    echo "wrote $IMAGE.sbom.cdx.json: its bill of materials (CycloneDX)"
fi
