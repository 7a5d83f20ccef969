# MIDOG 2025 Track 2 algorithm container (Grand Challenge). Build with ./build.sh (linux/amd64).
# BASE_IMAGE: CI, which reaches no registry, builds on a stand-in made from Debian packages (.ci/stand-in-base).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# NVIDIA_DRIVER_CAPABILITIES: have the NVIDIA container runtime mount the CUDA driver (libcuda), not only
# nvidia-smi, into an image that is not built on a CUDA base image. ORT_DISABLE_TELEMETRY: onnxruntime records
# and sends nothing (runtime/device.py sets it too).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    ORT_DISABLE_TELEMETRY=1

RUN groupadd --system --gid 1001 user && useradd --system --uid 1001 --gid 1001 --create-home --home-dir /home/user user

WORKDIR /opt/app

# REQUIREMENTS: the runtime installed: requirements (requirements.lock: onnxruntime-gpu + CUDA 12 wheels, the
# default) or requirements-cpu (requirements-cpu.lock: the CPU build of onnxruntime only, the lean image
# ./build.sh --cpu builds). The lock (scripts/lock.sh) pins every package with its sha256 hashes: pip installs
# exactly it, and a file of another hash or a package the lock leaves out (pip check) fails the build. Its
# CycloneDX bill of materials goes to /opt/app/sbom.cdx.json. Declared here, so that the layers above are
# shared by both images.
ARG REQUIREMENTS=requirements
COPY ${REQUIREMENTS}.lock ./
RUN python -m pip install --no-cache-dir --require-hashes --no-deps --only-binary=:all: -r "${REQUIREMENTS}.lock" \
    && python -m pip check
COPY ${REQUIREMENTS}.cdx.json ./sbom.cdx.json

# The torch-free runtime only: the training package stays out of the image.
COPY process.py ./
COPY runtime/ ./runtime/
# The runtime's byte code, compiled once here: PYTHONDONTWRITEBYTECODE keeps a job from writing it, so without it
# every job would compile runtime/ again, part of every cold start (docs/performance.md).
RUN python -m compileall -q runtime
COPY weights/ensemble.json weights/ensemble.onnx weights/ensemble.cpu.*.onnx ./weights/

USER 1001:1001

ENTRYPOINT ["python", "process.py"]
