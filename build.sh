#!/usr/bin/env bash
# Build the algorithm image. `./build.sh save` also writes amf-mtl.tar.gz (a gzipped docker-archive), the file
# to upload to Grand Challenge.
#   ./build.sh [save] [extra build options...]
# ENGINE=docker|podman|buildah picks the engine (default: docker when its daemon answers, else podman, else
# buildah); IMAGE (default amf-mtl) the tag; BASE_IMAGE the Dockerfile's base (default python:3.11-slim; CI
# uses the stand-in that .ci/stand-in-base builds). buildah builds daemonless with chroot isolation
# (BUILDAH_ISOLATION overrides). With podman and buildah the build's `pip install` gets the host's pip
# configuration (scripts/pip_build_mounts.py); docker builds without it.
set -euo pipefail
cd "$(dirname "$0")"
IMAGE="${IMAGE:-amf-mtl}"
SAVE=0
if [ "${1:-}" = "save" ]; then SAVE=1; shift; fi

source scripts/container_engine.sh

ARGS=(--platform linux/amd64 --tag "$IMAGE")
if [ -n "${BASE_IMAGE:-}" ]; then ARGS+=(--build-arg "BASE_IMAGE=$BASE_IMAGE"); fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

case "$ENGINE" in
docker)
    docker build "${ARGS[@]}" "$@" .
    ;;
podman | buildah)
    while IFS= read -r mount; do
        [ -n "$mount" ] && ARGS+=(--volume "$mount")
    done < <(command -v python3 >/dev/null && python3 scripts/pip_build_mounts.py "$TMP/pip")
    if [ "$ENGINE" = podman ]; then
        podman build "${ARGS[@]}" "$@" .
    else
        # --pull=false: use a local base (the stand-in) as it is, pull only a missing one.
        buildah bud --isolation "${BUILDAH_ISOLATION:-chroot}" --layers --pull=false "${ARGS[@]}" "$@" .
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
    echo "wrote $IMAGE.tar.gz ($(du -h "$IMAGE.tar.gz" | cut -f1)): upload it as the algorithm's container image"
fi
