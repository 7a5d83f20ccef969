# MIDOG 2025 Track 2 algorithm container (Grand Challenge). Build with ./build.sh (linux/amd64).
FROM python:3.11-slim

# NVIDIA_DRIVER_CAPABILITIES: have the NVIDIA container runtime mount the CUDA driver (libcuda), not only
# nvidia-smi, into an image that is not built on a CUDA base image.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN groupadd --system --gid 1001 user && useradd --system --uid 1001 --gid 1001 --create-home --home-dir /home/user user

WORKDIR /opt/app

COPY requirements.txt ./
RUN python -m pip install --no-cache-dir -r requirements.txt

# Runtime code only: the training modules (torch) stay out of the image.
COPY process.py ./
COPY model/__init__.py model/ensemble.py model/errors.py model/grand_challenge.py model/stack.py model/vote.py ./model/
COPY weights/ensemble.json weights/ensemble.onnx ./weights/

USER 1001:1001

ENTRYPOINT ["python", "process.py"]
