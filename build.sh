#!/usr/bin/env bash
# Build the algorithm image. `./build.sh save` also writes amf-mtl.tar.gz, the file to upload to Grand Challenge.
set -euo pipefail
cd "$(dirname "$0")"
IMAGE="${IMAGE:-amf-mtl}"
docker build --platform linux/amd64 --tag "$IMAGE" .
if [ "${1:-}" = "save" ]; then
    docker save "$IMAGE" | gzip -c > "$IMAGE.tar.gz"
    echo "wrote $IMAGE.tar.gz ($(du -h "$IMAGE.tar.gz" | cut -f1)): upload it as the algorithm's container image"
fi
