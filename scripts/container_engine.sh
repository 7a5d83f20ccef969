# Sourced by build.sh and test/run_container.sh: sets ENGINE to $ENGINE when given, else docker when its
# daemon answers, else podman, else buildah; fails when there is none.
if [ -z "${ENGINE:-}" ]; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then ENGINE=docker
    elif command -v podman >/dev/null 2>&1; then ENGINE=podman
    elif command -v buildah >/dev/null 2>&1; then ENGINE=buildah
    else echo "no container engine: install docker, podman or buildah" >&2; exit 1
    fi
fi
case "$ENGINE" in
docker | podman | buildah) ;;
*) echo "ENGINE=$ENGINE: expected docker, podman or buildah" >&2; exit 1 ;;
esac
